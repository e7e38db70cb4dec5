//! Per-site counters: how many descriptors each (process, kind, call site) opened and closed
//! during the session, and how they closed. What is open *now* comes from the FdTable itself,
//! so the two can never drift apart. What exited processes did is summed per (kind, site):
//! a site whose descriptors only ever close when their process exits is a leak that restarts
//! were hiding, and only the processes that came and went can show it.
use std::collections::{HashMap, hash_map::Entry};

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

    pub fn merge(&mut self, other: &SiteCounters) {
        self.opened += other.opened;
        self.closed += other.closed;
        for (mine, theirs) in self.closed_by.iter_mut().zip(other.closed_by) {
            *mine += theirs;
        }
    }

    /// Every close was the exit of the process (reconciliation's corrections aside), over
    /// `processes` processes: at least [`EXIT_ONLY_PER_PROCESS`] each (a log file or a listener
    /// held for a process's life is no leak), and no more closes than opens (copies a forked
    /// child inherited and dropped at its exit are not the site's own).
    pub fn closed_only_at_exit(&self, processes: u64) -> bool {
        let exit = self.closed_by[CloseReason::Exit.index()];
        let corrected = self.closed_by[CloseReason::Reconcile.index()];
        exit > 0
            && exit + corrected == self.closed
            && exit <= self.opened
            && exit >= EXIT_ONLY_PER_PROCESS * processes.max(1)
    }
}

/// Fewer descriptors than this per process, all held until exit, are a process's own long-lived
/// ones (pipe pairs included), not a leak.
pub const EXIT_ONLY_PER_PROCESS: u64 = 3;

/// What exited processes did at one site, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retired {
    pub processes: u64,
    pub counters: SiteCounters,
}

/// Beyond this many (kind, site) pairs, exited processes' sites are not summed.
pub const MAX_RETIRED_SITES: usize = 65_536;

/// Counters of live processes, keyed by process then (kind, site); sums of exited ones by
/// (kind, site).
#[derive(Debug, Default)]
pub struct SiteStats {
    by_process: HashMap<u32, HashMap<(FdKind, SiteId), SiteCounters>>,
    retired: HashMap<(FdKind, SiteId), Retired>,
}

impl SiteStats {
    pub fn observe(&mut self, transition: &Transition) {
        match transition {
            Transition::Fd { tgid, kind, site, change, .. } => {
                self.by_process.entry(*tgid).or_default().entry((*kind, *site)).or_default().record(*change);
            }
            // An exited process is no longer reported; its closes were counted just before.
            Transition::ProcessExited { tgid } => {
                for ((kind, site), counters) in self.by_process.remove(tgid).into_iter().flatten() {
                    self.retire(kind, site, &counters);
                }
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

    /// Sum of what exited processes did at this site.
    pub fn retired(&self, kind: FdKind, site: SiteId) -> Option<&Retired> {
        self.retired.get(&(kind, site))
    }

    /// Only call sites, and only where the process opened something itself: the special
    /// sites gather unrelated code, and a site a child only inherited is its parent's.
    fn retire(&mut self, kind: FdKind, site: SiteId, counters: &SiteCounters) {
        if !matches!(site, SiteId::Stack(_)) || counters.opened == 0 {
            return;
        }
        let room = self.retired.len() < MAX_RETIRED_SITES;
        let retired = match self.retired.entry((kind, site)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) if room => e.insert(Retired::default()),
            Entry::Vacant(_) => return,
        };
        retired.processes += 1;
        retired.counters.merge(counters);
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

    #[test]
    fn exited_processes_are_summed_per_site() {
        let site = SiteId::Stack(7);
        let mut stats = SiteStats::default();
        // Two generations of a worker, each leaking two descriptors until it exits.
        for tgid in [1, 2] {
            stats.observe(&fd(tgid, site, FdChange::Opened));
            stats.observe(&fd(tgid, site, FdChange::Opened));
            stats.observe(&fd(tgid, site, FdChange::Closed(CloseReason::Exit)));
            stats.observe(&fd(tgid, site, FdChange::Closed(CloseReason::Exit)));
            stats.observe(&Transition::ProcessExited { tgid });
        }
        // A child that only inherited the site's descriptor and dropped it at exit.
        stats.observe(&fd(3, site, FdChange::Inherited));
        stats.observe(&fd(3, site, FdChange::Closed(CloseReason::Exit)));
        stats.observe(&Transition::ProcessExited { tgid: 3 });
        let retired = *stats.retired(FdKind::Socket, site).unwrap();
        assert_eq!((retired.processes, retired.counters.opened, retired.counters.closed), (2, 4, 4));
        assert!(!retired.counters.closed_only_at_exit(retired.processes), "two per process: long-lived ones");
        assert!(retired.counters.closed_only_at_exit(1));
        // The live generation closes one explicitly: no longer "only at exit".
        stats.observe(&fd(4, site, FdChange::Opened));
        stats.observe(&fd(4, site, FdChange::Closed(CloseReason::Close)));
        let mut all = retired.counters;
        all.merge(&stats.get(4, FdKind::Socket, site));
        assert!(!all.closed_only_at_exit(1));
        assert!(stats.retired(FdKind::Socket, SiteId::NoStack).is_none());
    }

    #[test]
    fn inherited_copies_dropped_at_exit_are_not_the_sites_leak() {
        let mut c = SiteCounters::default();
        c.record(FdChange::Opened);
        for _ in 0..3 {
            c.record(FdChange::Closed(CloseReason::Exit));
        }
        assert!(!c.closed_only_at_exit(1), "more exit closes than opens: copies");
        let mut d = SiteCounters::default();
        for _ in 0..3 {
            d.record(FdChange::Opened);
            d.record(FdChange::Closed(CloseReason::Reconcile));
        }
        assert!(!d.closed_only_at_exit(1), "no exit close at all");
    }
}
