//! The time series of every site's open count, sampled once a second from the FdTable and the
//! site counters; [`super::trend`] judges them. Also, per active process, its descriptor count
//! and memory (RSS, cgroup usage), from which the report projects when it runs out.
//! Memory is bounded: at most [`MAX_SERIES`] site series and [`MAX_PROCESS_SERIES`] process
//! series of at most [`super::trend::MAX_POINTS`] samples each.
use std::collections::{HashMap, hash_map::Entry};

use crate::model::{
    fd::{FdKind, SiteId},
    fdtable::FdTable,
    sites::SiteStats,
    trend::{Point, Series},
};

/// (process, kind, site): the unit a report line and a verdict are about.
pub(crate) type SiteKey = (u32, FdKind, SiteId);

/// Beyond this many sites, new ones are not sampled (they get no verdict).
pub(crate) const MAX_SERIES: usize = 20_000;
/// Beyond this many processes, new ones get no resource series (no exhaustion projection).
pub(crate) const MAX_PROCESS_SERIES: usize = 2_000;

/// A process's resources at one sample, read by the caller (from /proc and the cgroup tree).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ProcessSample {
    pub(crate) rss_bytes: Option<u64>,
    pub(crate) cgroup_memory_bytes: Option<u64>,
}

/// A process over the session. In every series, a point's `open` is the sampled quantity:
/// descriptors for `fds`, bytes for the memory series.
#[derive(Clone, Debug, Default)]
pub(crate) struct ProcessSeries {
    pub(crate) fds: Series,
    pub(crate) rss: Series,
    pub(crate) cgroup_memory: Series,
}

#[derive(Debug, Default)]
pub(crate) struct History {
    series: HashMap<SiteKey, Series>,
    processes: HashMap<u32, ProcessSeries>,
}

impl History {
    /// Sample every site of every live process at `now_ns`. A process no longer in the table
    /// loses its series unless `keep(tgid)` (an exited process a report still shows).
    /// `before-trace` sites are skipped: they can only shrink. Processes with any other site
    /// also get their descriptor count and `resources(tgid)` sampled.
    pub(crate) fn sample(
        &mut self,
        now_ns: u64,
        table: &FdTable,
        stats: &SiteStats,
        keep: impl Fn(u32) -> bool,
        mut resources: impl FnMut(u32) -> ProcessSample,
    ) {
        let mut open: HashMap<SiteKey, u64> = HashMap::new();
        for (tgid, process) in table.processes() {
            for entry in process.fds.values().filter(|e| e.site != SiteId::BeforeTrace) {
                *open.entry((tgid, entry.kind, entry.site)).or_default() += 1;
            }
            // Sites with nothing open now still have a count: zero.
            for ((kind, site), counters) in stats.process(tgid).into_iter().flatten() {
                if counters.opened > 0 {
                    open.entry((tgid, *kind, *site)).or_default();
                }
            }
        }
        self.series
            .retain(|key, _| open.contains_key(key) || (table.process(key.0).is_none() && keep(key.0)));
        let active: std::collections::HashSet<u32> = open.keys().map(|(tgid, _, _)| *tgid).collect();
        self.processes
            .retain(|tgid, _| active.contains(tgid) || (table.process(*tgid).is_none() && keep(*tgid)));
        for tgid in active {
            let Some(process) = table.process(tgid) else { continue };
            if !self.processes.contains_key(&tgid) && self.processes.len() >= MAX_PROCESS_SERIES {
                continue;
            }
            let sample = resources(tgid);
            let series = self.processes.entry(tgid).or_default();
            let point = |value: u64| Point { t_ns: now_ns, open: value, opened: 0 };
            series.fds.push(point(process.fds.len() as u64));
            if let Some(rss) = sample.rss_bytes {
                series.rss.push(point(rss));
            }
            if let Some(memory) = sample.cgroup_memory_bytes {
                series.cgroup_memory.push(point(memory));
            }
        }
        for (key @ (tgid, kind, site), open) in open {
            let point = Point { t_ns: now_ns, open, opened: stats.get(tgid, kind, site).opened };
            let room = self.series.len() < MAX_SERIES;
            match self.series.entry(key) {
                Entry::Occupied(series) => series.into_mut().push(point),
                Entry::Vacant(slot) if room => slot.insert(Series::default()).push(point),
                // No room: no series, no verdict (MAX_SERIES).
                Entry::Vacant(_) => {}
            }
        }
    }

    pub(crate) fn series(&self, tgid: u32, kind: FdKind, site: SiteId) -> Option<&Series> {
        self.series.get(&(tgid, kind, site))
    }

    pub(crate) fn process(&self, tgid: u32) -> Option<&ProcessSeries> {
        self.processes.get(&tgid)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.series.len()
    }
}

#[cfg(test)]
mod tests {
    use smallvec::smallvec;

    use super::*;
    use crate::model::{
        event::{Event, Op, StackIds},
        fd::FdDetail,
        fdtable::Transition,
    };

    const SITE: SiteId = SiteId::Stack(0x51);

    fn apply(table: &mut FdTable, stats: &mut SiteStats, tgid: u32, ts_ns: u64, op: Op) {
        let mut out: Vec<Transition> = Vec::new();
        table.apply(&mut Event { tgid, tid: tgid, ts_ns, stacks: StackIds::default(), op }, SITE, &mut out);
        for t in &out {
            stats.observe(t, 0);
        }
    }

    fn open(fd: i32) -> Op {
        Op::Open {
            fds: smallvec![fd],
            kind: FdKind::File,
            detail: FdDetail::None,
            cloexec: false,
            dirfd: None,
        }
    }

    #[test]
    fn samples_open_counts_per_site() {
        let (mut table, mut stats, mut history) = (FdTable::new(), SiteStats::default(), History::default());
        for t in 0..5u64 {
            apply(&mut table, &mut stats, 7, t, open(10 + t as i32));
            // Churn at the same site: opened and closed between samples.
            apply(&mut table, &mut stats, 7, t, open(100));
            apply(&mut table, &mut stats, 7, t, Op::Close { fd: 100, number_taken: false });
            history.sample(
                t * 1_000_000_000,
                &table,
                &stats,
                |_| false,
                |_| ProcessSample { rss_bytes: Some(1000 * (t + 1)), cgroup_memory_bytes: None },
            );
        }
        let window = history.series(7, FdKind::File, SITE).unwrap().window();
        let opens: Vec<u64> = window.iter().map(|p| p.open).collect();
        assert_eq!(opens, vec![1, 2, 3, 4, 5]);
        assert_eq!(window.last().unwrap().opened, 10);
        assert_eq!(history.len(), 1);
        let process = history.process(7).unwrap();
        let fds: Vec<u64> = process.fds.window().iter().map(|p| p.open).collect();
        assert_eq!(fds, vec![1, 2, 3, 4, 5]);
        assert_eq!(process.rss.window().last().unwrap().open, 5000);
        assert!(process.cgroup_memory.window().is_empty());
    }

    #[test]
    fn a_site_with_nothing_open_samples_zero_and_exited_processes_go() {
        let (mut table, mut stats, mut history) = (FdTable::new(), SiteStats::default(), History::default());
        apply(&mut table, &mut stats, 7, 0, open(3));
        apply(&mut table, &mut stats, 7, 0, Op::Close { fd: 3, number_taken: false });
        apply(&mut table, &mut stats, 8, 0, open(3));
        history.sample(1, &table, &stats, |_| false, |_| ProcessSample::default());
        assert_eq!(history.series(7, FdKind::File, SITE).unwrap().window()[0].open, 0);
        apply(&mut table, &mut stats, 7, 1, Op::Exit);
        apply(&mut table, &mut stats, 8, 1, Op::Exit);
        history.sample(2, &table, &stats, |tgid| tgid == 8, |_| ProcessSample::default());
        assert!(history.series(7, FdKind::File, SITE).is_none(), "forgotten with its process");
        assert_eq!(history.series(8, FdKind::File, SITE).unwrap().window().len(), 1, "kept, frozen");
    }
}
