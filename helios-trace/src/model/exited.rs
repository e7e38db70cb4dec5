//! A process as the report shows it after its exit (ARCHITECTURE.md, "Contracts: Report":
//! `exited`): what it had open and what it counted, as of its exit.
use crate::model::{fd::SiteId, fdmap::FdMap, fdtable::OpenFd, sites::ProcessCounters};

/// A process as it was when it exited (kept for `helios-trace run`, whose command has exited
/// by the time of the report).
#[derive(Clone, Debug)]
pub(crate) struct ExitedProcess {
    pub(crate) tgid: u32,
    pub(crate) comm: String,
    pub(crate) cmdline: Option<String>,
    /// CLOCK_BOOTTIME ns of the exit.
    pub(crate) exited_ns: u64,
    /// What was open at the exit.
    pub(crate) fds: FdMap<OpenFd>,
    /// Its site counters, the closes by exit included.
    pub(crate) counters: ProcessCounters,
}

impl ExitedProcess {
    /// Every site it had open at its exit or counted, once per (descriptor or counter).
    pub(crate) fn sites(&self) -> impl Iterator<Item = SiteId> + '_ {
        self.fds.values().map(|fd| fd.site).chain(self.counters.keys().map(|(_, site)| *site))
    }
}
