//! Per-site counters: how many descriptors each (process, kind, call site) opened and closed
//! during the session, and how they closed. What is open *now* comes from the FdTable itself,
//! so the two can never drift apart. What exited processes did is summed per (kind, site):
//! a site whose descriptors only ever close when their process exits is a leak that restarts
//! were hiding, and only the processes that came and went can show it.
//!
//! It also knows when a call site is no longer needed: a site is *held* by each descriptor open
//! there, by each live process that used it (its counters are still reported) and by each
//! exited process a report still shows ([`SiteStats::pin`]). A site that nobody holds for the
//! retention is forgotten ([`SiteStats::expire`]): its frames, its sums, its series. Without
//! this, a node that churns short-lived jobs adds call sites for ever (issue 17: every job's
//! own script is new Python frames), and the daemon grows until it is killed.
use std::collections::hash_map::Entry;

use foldhash::HashMap;

use crate::model::{
    fd::{CloseReason, FdKind, SiteId},
    fdtable::{FdChange, Transition},
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SiteCounters {
    pub(crate) opened: u64,
    pub(crate) closed: u64,
    /// Closes by [`CloseReason::index`].
    pub(crate) closed_by: [u64; CloseReason::ALL.len()],
}

impl SiteCounters {
    pub(crate) fn record(&mut self, change: FdChange) {
        match change {
            FdChange::Opened => self.opened += 1,
            FdChange::Inherited | FdChange::Found => {}
            FdChange::Closed(reason) => {
                self.closed += 1;
                self.closed_by[reason.index()] += 1;
            }
        }
    }

    pub(crate) fn merge(&mut self, other: &SiteCounters) {
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
    pub(crate) fn closed_only_at_exit(&self, processes: u64) -> bool {
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
pub(crate) const EXIT_ONLY_PER_PROCESS: u64 = 3;

/// What exited processes did at one site, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Retired {
    pub(crate) processes: u64,
    pub(crate) counters: SiteCounters,
}

/// Beyond this many (kind, site) pairs, exited processes' sites are not summed.
pub(crate) const MAX_RETIRED_SITES: usize = 65_536;

/// Who holds a call site, and since when nobody does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Life {
    holders: u64,
    idle_since_ns: Option<u64>,
}

/// One process's counters, by (kind, site).
pub(crate) type ProcessCounters = HashMap<(FdKind, SiteId), SiteCounters>;

/// Counters of live processes, keyed by process then (kind, site); sums of exited ones by
/// (kind, site); who holds each call site.
#[derive(Debug, Default)]
pub(crate) struct SiteStats {
    by_process: HashMap<u32, ProcessCounters>,
    retired: HashMap<(FdKind, SiteId), Retired>,
    lives: HashMap<SiteId, Life>,
}

impl SiteStats {
    /// Take in one transition of the table, which happened at `ts_ns` (a close: by then).
    pub(crate) fn observe(&mut self, transition: &Transition, ts_ns: u64) {
        match transition {
            Transition::Fd { tgid, kind, site, change, .. } => {
                let sites = self.by_process.entry(*tgid).or_default();
                let counters = match sites.entry((*kind, *site)) {
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(e) => {
                        // The process holds the site from its first use until it exits.
                        hold(&mut self.lives, *site);
                        e.insert(SiteCounters::default())
                    }
                };
                counters.record(*change);
                match change {
                    FdChange::Opened | FdChange::Inherited | FdChange::Found => hold(&mut self.lives, *site),
                    FdChange::Closed(_) => release(&mut self.lives, *site, ts_ns),
                }
            }
            // An exited process is no longer reported; its closes were counted just before.
            Transition::ProcessExited { tgid } => {
                for ((kind, site), counters) in self.by_process.remove(tgid).into_iter().flatten() {
                    self.retire(kind, site, &counters);
                    release(&mut self.lives, site, ts_ns);
                }
            }
            Transition::ProcessStarted { .. } | Transition::ProcessExec { .. } => {}
        }
    }

    /// `pairs` more descriptors of `tgid` opened at (`kind`, `site`) and closed by `close`,
    /// like the pair just observed: its open made the counters (when they were not) and held
    /// the site, its close released it, so only the counts are left to grow.
    pub(crate) fn add_pairs(&mut self, tgid: u32, kind: FdKind, site: SiteId, pairs: u64) {
        let counters = self.by_process.entry(tgid).or_default().entry((kind, site)).or_default();
        counters.opened += pairs;
        counters.closed += pairs;
        counters.closed_by[CloseReason::Close.index()] += pairs;
    }

    /// A call site was made or used at `ts_ns` (its frames are remembered): it is forgotten after
    /// the retention unless something holds it by then. (A site can be made without a
    /// descriptor ever being tracked there: the table was full, or the call failed.)
    pub(crate) fn made(&mut self, site: SiteId, ts_ns: u64) {
        if matches!(site, SiteId::Stack(_)) {
            let life = self.lives.entry(site).or_insert(Life { holders: 0, idle_since_ns: Some(ts_ns) });
            // Used again (by a call that left nothing tracked, or as the native step of a
            // Python site): its retention starts anew.
            if life.holders == 0 {
                life.idle_since_ns = Some(ts_ns);
            }
        }
    }

    /// Hold a site for an exited process that a report still shows; [`Self::unpin`] ends it.
    pub(crate) fn pin(&mut self, site: SiteId) {
        hold(&mut self.lives, site);
    }

    pub(crate) fn unpin(&mut self, site: SiteId, ts_ns: u64) {
        release(&mut self.lives, site, ts_ns);
    }

    /// Whether anything holds the site now.
    #[cfg(test)]
    pub(crate) fn held(&self, site: SiteId) -> bool {
        self.lives.get(&site).is_some_and(|life| life.holders > 0)
    }

    /// Forget the call sites nobody has held for `retention_ns` as of `now_ns` (their sums of
    /// exited processes too), and name them so that what else was kept of them goes as well.
    pub(crate) fn expire(&mut self, now_ns: u64, retention_ns: u64) -> Vec<SiteId> {
        let expired: Vec<SiteId> = self
            .lives
            .iter()
            .filter(|(_, life)| {
                life.idle_since_ns.is_some_and(|since| now_ns.saturating_sub(since) >= retention_ns)
            })
            .map(|(site, _)| *site)
            .collect();
        if expired.is_empty() {
            return expired;
        }
        for site in &expired {
            self.lives.remove(site);
        }
        self.retired.retain(|(_, site), _| self.lives.contains_key(site));
        expired
    }

    /// Call sites known (held, or idle within the retention).
    #[cfg(test)]
    pub(crate) fn site_count(&self) -> usize {
        self.lives.len()
    }

    pub(crate) fn process(&self, tgid: u32) -> Option<&ProcessCounters> {
        self.by_process.get(&tgid)
    }

    pub(crate) fn get(&self, tgid: u32, kind: FdKind, site: SiteId) -> SiteCounters {
        self.process(tgid).and_then(|p| p.get(&(kind, site))).copied().unwrap_or_default()
    }

    /// Sum of what exited processes did at this site.
    pub(crate) fn retired(&self, kind: FdKind, site: SiteId) -> Option<&Retired> {
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
    pub(crate) fn active(&self, tgid: u32) -> bool {
        self.process(tgid).is_some_and(|sites| sites.values().any(|c| c.opened + c.closed > 0))
    }
}

fn hold(lives: &mut HashMap<SiteId, Life>, site: SiteId) {
    if matches!(site, SiteId::Stack(_)) {
        let life = lives.entry(site).or_default();
        life.holders += 1;
        life.idle_since_ns = None;
    }
}

fn release(lives: &mut HashMap<SiteId, Life>, site: SiteId, ts_ns: u64) {
    if let Some(life) = lives.get_mut(&site) {
        debug_assert!(life.holders > 0, "{site:?} released more often than held");
        life.holders = life.holders.saturating_sub(1);
        if life.holders == 0 {
            life.idle_since_ns = Some(ts_ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl SiteStats {
        fn observe_now(&mut self, t: &Transition) {
            self.observe(t, 0);
        }
    }

    fn fd(tgid: u32, site: SiteId, change: FdChange) -> Transition {
        Transition::Fd { tgid, fd: 3, kind: FdKind::Socket, site, change }
    }

    #[test]
    fn counts_opens_closes_and_reasons() {
        let site = SiteId::Stack(7);
        let mut stats = SiteStats::default();
        assert!(!stats.active(1));
        stats.observe_now(&fd(1, site, FdChange::Opened));
        stats.observe_now(&fd(1, site, FdChange::Opened));
        stats.observe_now(&fd(1, site, FdChange::Inherited));
        stats.observe_now(&fd(1, site, FdChange::Closed(CloseReason::Exec)));
        let c = stats.get(1, FdKind::Socket, site);
        assert_eq!((c.opened, c.closed), (2, 1));
        assert_eq!(c.closed_by[CloseReason::Exec.index()], 1);
        assert!(stats.active(1));
        stats.observe_now(&Transition::ProcessExited { tgid: 1 });
        assert_eq!(stats.get(1, FdKind::Socket, site), SiteCounters::default());
    }

    #[test]
    fn exited_processes_are_summed_per_site() {
        let site = SiteId::Stack(7);
        let mut stats = SiteStats::default();
        // Two generations of a worker, each leaking two descriptors until it exits.
        for tgid in [1, 2] {
            stats.observe_now(&fd(tgid, site, FdChange::Opened));
            stats.observe_now(&fd(tgid, site, FdChange::Opened));
            stats.observe_now(&fd(tgid, site, FdChange::Closed(CloseReason::Exit)));
            stats.observe_now(&fd(tgid, site, FdChange::Closed(CloseReason::Exit)));
            stats.observe_now(&Transition::ProcessExited { tgid });
        }
        // A child that only inherited the site's descriptor and dropped it at exit.
        stats.observe_now(&fd(3, site, FdChange::Inherited));
        stats.observe_now(&fd(3, site, FdChange::Closed(CloseReason::Exit)));
        stats.observe_now(&Transition::ProcessExited { tgid: 3 });
        let retired = *stats.retired(FdKind::Socket, site).unwrap();
        assert_eq!((retired.processes, retired.counters.opened, retired.counters.closed), (2, 4, 4));
        assert!(!retired.counters.closed_only_at_exit(retired.processes), "two per process: long-lived ones");
        assert!(retired.counters.closed_only_at_exit(1));
        // The live generation closes one explicitly: no longer "only at exit".
        stats.observe_now(&fd(4, site, FdChange::Opened));
        stats.observe_now(&fd(4, site, FdChange::Closed(CloseReason::Close)));
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

    #[test]
    fn a_site_nobody_holds_is_forgotten_after_the_retention_only() {
        const SEC: u64 = 1_000_000_000;
        let (leak, job) = (SiteId::Stack(1), SiteId::Stack(2));
        let mut stats = SiteStats::default();
        // A job opens and closes at its own site, then exits at 10 s.
        stats.made(job, 0);
        stats.observe(&fd(2, job, FdChange::Opened), 0);
        stats.observe(&fd(2, job, FdChange::Closed(CloseReason::Close)), SEC);
        assert!(stats.held(job), "its live process still reports it");
        stats.observe(&Transition::ProcessExited { tgid: 2 }, 10 * SEC);
        assert!(!stats.held(job));
        // A leak stays open for ever; the special sites are never forgotten nor counted.
        stats.made(leak, 0);
        stats.observe(&fd(1, leak, FdChange::Opened), 0);
        stats.observe(&fd(1, SiteId::NoStack, FdChange::Opened), 0);
        assert!(stats.expire(29 * SEC, 20 * SEC).is_empty(), "idle for 19 s only");
        assert!(stats.retired(FdKind::Socket, job).is_some());
        assert_eq!(stats.expire(30 * SEC, 20 * SEC), [job]);
        assert!(stats.retired(FdKind::Socket, job).is_none(), "its sums go with it");
        assert!(stats.expire(3600 * SEC, 20 * SEC).is_empty(), "the open descriptor holds the leak");
        // A site made but never used (the table was full) goes too.
        let unused = SiteId::Stack(3);
        stats.made(unused, 100 * SEC);
        assert_eq!(stats.expire(120 * SEC, 20 * SEC), [unused]);
        // Used again before the retention: held again, the clock starts anew at its release.
        stats.made(job, 200 * SEC);
        stats.observe(&fd(3, job, FdChange::Opened), 210 * SEC);
        stats.observe(&fd(3, job, FdChange::Closed(CloseReason::Close)), 211 * SEC);
        stats.observe(&Transition::ProcessExited { tgid: 3 }, 212 * SEC);
        assert!(stats.expire(225 * SEC, 20 * SEC).is_empty());
        // An exited process that a report still shows pins its sites.
        stats.pin(job);
        assert!(stats.expire(1000 * SEC, 20 * SEC).is_empty());
        stats.unpin(job, 1000 * SEC);
        assert_eq!(stats.expire(1020 * SEC, 20 * SEC), [job]);
        assert_eq!(stats.site_count(), 1, "the leak only");
    }

    mod model {
        use std::collections::BTreeSet;

        use proptest::prelude::*;

        use super::*;
        use crate::model::{
            event::{Event, Op, StackIds},
            fd::FdDetail,
            fdtable::FdTable,
        };

        #[derive(Clone, Debug)]
        enum Step {
            Open { pid: u32, fd: i32, site: u64 },
            Close { pid: u32, fd: i32 },
            Fork { parent: u32, child: u32 },
            Exit { pid: u32 },
        }

        fn step() -> impl Strategy<Value = Step> {
            let pid = 1u32..4;
            prop_oneof![
                (pid.clone(), 0i32..5, 0u64..4).prop_map(|(pid, fd, site)| Step::Open { pid, fd, site }),
                (pid.clone(), 0i32..5).prop_map(|(pid, fd)| Step::Close { pid, fd }),
                (pid.clone(), pid.clone()).prop_map(|(parent, child)| Step::Fork { parent, child }),
                pid.prop_map(|pid| Step::Exit { pid }),
            ]
        }

        fn apply(table: &mut FdTable, stats: &mut SiteStats, step: &Step, ts_ns: u64) {
            let (tgid, op, site) = match step.clone() {
                Step::Open { pid, fd, site } => {
                    let fds = smallvec::smallvec![fd];
                    let open = Op::Open {
                        fds,
                        kind: FdKind::File,
                        detail: FdDetail::None,
                        cloexec: false,
                        dirfd: None,
                    };
                    (pid, open, SiteId::Stack(site))
                }
                Step::Close { pid, fd } => (pid, Op::Close { fd, number_taken: false }, SiteId::NoStack),
                Step::Fork { parent, child } => (
                    parent,
                    Op::NewTask { child, thread: parent == child, comm: String::new() },
                    SiteId::NoStack,
                ),
                Step::Exit { pid } => (pid, Op::Exit, SiteId::NoStack),
            };
            stats.made(site, ts_ns);
            let mut event = Event { tgid, tid: tgid, ts_ns, stacks: StackIds::default(), op };
            let mut out = Vec::new();
            table.apply(&mut event, site, &mut out);
            for t in &out {
                stats.observe(t, ts_ns);
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
            /// A site is held exactly while a descriptor is open there or a live process used
            /// it (the naive view, from the table and the counters), and it is forgotten
            /// exactly when it has not been held for the retention.
            #[test]
            fn held_matches_the_table_and_expiry_follows(steps in prop::collection::vec(step(), 1..80)) {
                const RETENTION: u64 = 5;
                let mut table = FdTable::new();
                let mut stats = SiteStats::default();
                // Known sites (made and not forgotten since), and since when nothing holds them.
                let mut known: BTreeSet<u64> = BTreeSet::new();
                let mut idle_since: HashMap<u64, u64> = HashMap::default();
                for (i, step) in steps.iter().enumerate() {
                    let now = i as u64;
                    apply(&mut table, &mut stats, step, now);
                    if let Step::Open { site, .. } = step {
                        known.insert(*site);
                    }
                    for site in 0..4 {
                        let open = table.processes().any(|(_, p)| p.fds.values().any(|e| e.site == SiteId::Stack(site)));
                        let used = table.processes().any(|(tgid, _)| {
                            stats.process(tgid).is_some_and(|c| c.keys().any(|(_, s)| *s == SiteId::Stack(site)))
                        });
                        prop_assert_eq!(stats.held(SiteId::Stack(site)), open || used, "site {} after {:?}", site, step);
                        if open || used {
                            idle_since.remove(&site);
                        } else if known.contains(&site) {
                            idle_since.entry(site).or_insert(now);
                        }
                    }
                    let expired: BTreeSet<u64> = stats
                        .expire(now, RETENTION)
                        .into_iter()
                        .map(|s| match s { SiteId::Stack(n) => n, other => panic!("{other:?} expired") })
                        .collect();
                    let due: BTreeSet<u64> = idle_since
                        .iter()
                        .filter(|(_, since)| now - **since >= RETENTION)
                        .map(|(site, _)| *site)
                        .collect();
                    prop_assert_eq!(&expired, &due, "at {}", now);
                    for site in &expired {
                        known.remove(site);
                        idle_since.remove(site);
                    }
                }
            }
        }
    }
}
