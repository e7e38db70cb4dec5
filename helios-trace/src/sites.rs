//! Per-site counters: how many descriptors each (process, kind, call site) opened and closed
//! during the session, and how they closed. What is open *now* comes from the FdTable itself,
//! so the two can never drift apart.
use std::collections::HashMap;

use crate::{
    fd::{CloseReason, FdKind, SiteId},
    fdtable::{FdChange, Transition},
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SiteCounters {
    pub opened: u64,
    pub closed: u64,
    /// Closes by [`CloseReason::index`].
    pub closed_by: [u64; CloseReason::ALL.len()],
}

impl SiteCounters {
    pub fn record(&mut self, change: FdChange) {
        match change {
            FdChange::Opened => self.opened += 1,
            FdChange::Inherited | FdChange::Found => {}
            FdChange::Closed(reason) => {
                self.closed += 1;
                self.closed_by[reason.index()] += 1;
            }
        }
    }
}

/// Counters of live processes, keyed by process then (kind, site).
#[derive(Debug, Default)]
pub struct SiteStats {
    by_process: HashMap<u32, HashMap<(FdKind, SiteId), SiteCounters>>,
}

impl SiteStats {
    pub fn observe(&mut self, transition: &Transition) {
        match transition {
            Transition::Fd { tgid, kind, site, change, .. } => {
                self.by_process.entry(*tgid).or_default().entry((*kind, *site)).or_default().record(*change);
            }
            // An exited process is no longer reported; its closes were counted just before.
            Transition::ProcessExited { tgid } => {
                self.by_process.remove(tgid);
            }
            Transition::ProcessStarted { .. } | Transition::ProcessExec { .. } => {}
        }
    }

    pub fn process(&self, tgid: u32) -> Option<&HashMap<(FdKind, SiteId), SiteCounters>> {
        self.by_process.get(&tgid)
    }

    pub fn get(&self, tgid: u32, kind: FdKind, site: SiteId) -> SiteCounters {
        self.process(tgid).and_then(|p| p.get(&(kind, site))).copied().unwrap_or_default()
    }

    /// Whether the process did anything under tracing (opened or closed a descriptor).
    pub fn active(&self, tgid: u32) -> bool {
        self.process(tgid).is_some_and(|sites| sites.values().any(|c| c.opened + c.closed > 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd(tgid: u32, site: SiteId, change: FdChange) -> Transition {
        Transition::Fd { tgid, fd: 3, kind: FdKind::Socket, site, change }
    }

    #[test]
    fn counts_opens_closes_and_reasons() {
        let site = SiteId::Stack(7);
        let mut stats = SiteStats::default();
        assert!(!stats.active(1));
        stats.observe(&fd(1, site, FdChange::Opened));
        stats.observe(&fd(1, site, FdChange::Opened));
        stats.observe(&fd(1, site, FdChange::Inherited));
        stats.observe(&fd(1, site, FdChange::Closed(CloseReason::Exec)));
        let c = stats.get(1, FdKind::Socket, site);
        assert_eq!((c.opened, c.closed), (2, 1));
        assert_eq!(c.closed_by[CloseReason::Exec.index()], 1);
        assert!(stats.active(1));
        stats.observe(&Transition::ProcessExited { tgid: 1 });
        assert_eq!(stats.get(1, FdKind::Socket, site), SiteCounters::default());
    }
}
