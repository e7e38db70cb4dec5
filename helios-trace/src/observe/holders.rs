//! Holders at report time (ARCHITECTURE.md, "Holders"): for each CPython process with a site
//! that needs them — suspected leaks and sites with CLOSE_WAIT sockets, or every site with
//! `--holders` — one walk of its heap (resolve/holders), the holder lines of each such site
//! from its open descriptors, and the census with its growth since the previous walk.
//!
//! Reports that come often (the live view, serve's `/sites`) take a process's lines from its
//! last walk while that is younger than the minimum interval: a process is walked at most once
//! per interval, and once more only for a site that became wanted since (a suspected site gets
//! its holders without waiting an interval). The end-of-session report and SIGUSR1 snapshots
//! walk afresh.
use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use crate::{
    model::{
        census::Census,
        fd::FdKind,
        frame::Language,
        holders::{self as lines, Holder},
    },
    observe::session::Tracing,
    output::report::{HeapReport, ProcessReport, Report, SiteReport},
    resolve::holders::{self, DEFAULT_BUDGET, HoldersError},
};

/// Types shown in a process's census (plus any that grew as fast as the fastest).
const CENSUS_TYPES: usize = 12;

/// Between two walks of one process for reports that take cached lines (the live view; serve's
/// `--holders-interval` sets its own).
pub(crate) const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(60);

/// Whether a report may take a process's holders from its last walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// Walk every process that needs it now (end-of-session report, snapshots).
    Fresh,
    /// Within the minimum interval, the last walk's lines (live view, serve).
    Cached,
    /// No holders (the summary lines show none).
    Off,
}

/// What the session keeps between walks.
#[derive(Debug)]
pub(crate) struct HolderWalks {
    /// `--holders`: every site, not only the suspected ones and those with CLOSE_WAIT.
    all: bool,
    /// Between two walks of one process when lines may be cached.
    min_interval: Duration,
    /// The previous census of each process walked.
    previous: HashMap<u32, Census>,
    /// The last walk of each process: when, and what it gave.
    last: HashMap<u32, LastWalk>,
    /// Heap walks done in the session (`helios_trace_heap_walks_total`).
    walks: u64,
    /// `--holders-pause`: stop a process while its heap is walked (sys/proc/pause.rs).
    pause: bool,
}

impl Default for HolderWalks {
    fn default() -> HolderWalks {
        HolderWalks {
            all: false,
            min_interval: DEFAULT_MIN_INTERVAL,
            previous: HashMap::new(),
            last: HashMap::new(),
            walks: 0,
            pause: false,
        }
    }
}

/// A site as the cache knows it.
type SiteKey = (FdKind, String);

#[derive(Debug)]
struct LastWalk {
    at: Instant,
    /// None: not a CPython process (nothing to show, nothing to retry within the interval).
    heap: Option<HeapReport>,
    /// The holder lines of every site wanted at the walk (what `ownable` says an object can
    /// own).
    sites: HashMap<SiteKey, Vec<Holder>>,
}

fn wanted(all: bool, site: &SiteReport) -> bool {
    site.open > 0 && (all || site.suspected_leak || site.close_wait > 0)
}

/// Only what a Python object the walk knows can own: sockets (`socket.socket`), what
/// `io.FileIO` opens or wraps — files, devices, pipes (subprocess's `Popen.stdout`), and
/// memfds (`open(os.memfd_create(...), "wb")`, or a memfd opened again through its
/// `/proc/self/fd` link) — and the duplicate an `mmap.mmap` keeps of what it maps (a file, a
/// device or a memfd).
fn ownable(kind: FdKind) -> bool {
    matches!(kind, FdKind::Socket | FdKind::File | FdKind::Device | FdKind::Pipe | FdKind::Memfd)
}

impl Tracing {
    /// `--holders`: holders of every site.
    pub(crate) fn set_all_holders(&mut self, all: bool) {
        self.holders.all = all;
    }

    /// `--holders-pause`: stop each process while its heap is walked.
    pub(crate) fn set_holders_pause(&mut self, pause: bool) {
        self.holders.pause = pause;
    }

    /// At most one walk of a process per `interval` for reports that take cached lines.
    pub(crate) fn set_holders_interval(&mut self, interval: Duration) {
        self.holders.min_interval = interval;
    }

    /// Heap walks done so far.
    pub(crate) fn heap_walks(&self) -> u64 {
        self.holders.walks
    }

    /// serve's `/sites`: the holder lines of each site (by its label) wanted in a CPython
    /// process, over every process where it has them; a process walked at most once per
    /// interval (and once more for a site newly wanted). Only processes with a site of Python
    /// frames are reported on: a report of every process would read /proc for nothing.
    pub(crate) fn site_holders(&mut self) -> HashMap<String, Vec<Holder>> {
        let engine = &self.engine;
        let python = |site| {
            engine.frames(site).is_some_and(|frames| frames.iter().any(|f| f.language == Language::Python))
        };
        let pids: HashSet<u32> = engine
            .table()
            .processes()
            .filter(|(_, p)| p.fds.values().any(|e| python(e.site)))
            .map(|(tgid, _)| tgid)
            .collect();
        let mut by_site: HashMap<String, Vec<Holder>> = HashMap::new();
        if pids.is_empty() {
            return by_site;
        }
        let report = self.report_with(false, Freshness::Cached, Some(&pids));
        for site in report.processes.iter().flat_map(|p| &p.sites) {
            if let Some(holders) = &site.holders {
                lines::merge(by_site.entry(site.site.clone()).or_default(), holders.clone());
            }
        }
        by_site
    }

    /// Walk the heaps of the report's processes that need it and add holders and census.
    pub(super) fn attach_holders(&mut self, report: &mut Report, freshness: Freshness) {
        if freshness == Freshness::Off {
            return;
        }
        let all = self.holders.all;
        for process in report.processes.iter_mut().filter(|p| !p.exited) {
            let keys: HashSet<SiteKey> = process
                .sites
                .iter()
                .filter(|s| wanted(all, s) && ownable(s.kind))
                .map(|s| (s.kind, s.site.clone()))
                .collect();
            if !process.sites.iter().any(|s| wanted(all, s)) {
                continue;
            }
            let due = match self.holders.last.get(&process.pid) {
                None => true,
                Some(_) if freshness == Freshness::Fresh => true,
                Some(last) if last.at.elapsed() >= self.holders.min_interval => true,
                // A site wanted since the walk gets its lines now; not one a failed walk or a
                // native process could not give.
                Some(last) => {
                    last.heap.as_ref().is_some_and(|h| h.error.is_none())
                        && keys.iter().any(|k| !last.sites.contains_key(k))
                }
            };
            if due {
                let last = self.walk(process, &keys);
                self.holders.last.insert(process.pid, last);
            }
            let last = &self.holders.last[&process.pid];
            let Some(heap) = &last.heap else { continue };
            let mut heap = heap.clone();
            heap.age_seconds = last.at.elapsed().as_secs_f64();
            process.heap = Some(heap);
            for site in process.sites.iter_mut().filter(|s| wanted(all, s) && ownable(s.kind)) {
                site.holders = last.sites.get(&(site.kind, site.site.clone())).cloned();
            }
        }
        let live = |pid: &u32| report.processes.iter().any(|p| p.pid == *pid && !p.exited);
        self.holders.previous.retain(|pid, _| live(pid));
        self.holders.last.retain(|pid, _| live(pid));
    }

    /// One walk of a process's heap: the lines of the sites `keys`, the census.
    fn walk(&mut self, process: &ProcessReport, keys: &HashSet<SiteKey>) -> LastWalk {
        let at = Instant::now();
        let pause = self.holders.pause;
        let walk = match holders::walk_process(&self.proc_root, process.pid, &DEFAULT_BUDGET, pause) {
            Ok(walk) => walk,
            Err(HoldersError::NotPython) => return LastWalk { at, heap: None, sites: HashMap::new() },
            Err(err) => {
                log::info!("process {}: no holders: {err}", process.pid);
                let heap = HeapReport::not_walked(err.to_string());
                return LastWalk { at, heap: Some(heap), sites: HashMap::new() };
            }
        };
        self.holders.walks += 1;
        let mut sites = HashMap::new();
        if let Some(table) = self.engine.table().process(process.pid) {
            let mut fds: HashMap<SiteKey, Vec<i32>> = keys.iter().map(|k| (k.clone(), Vec::new())).collect();
            for (fd, entry) in table.fds.iter() {
                if let Some(list) = fds.get_mut(&(entry.kind, entry.site.label())) {
                    list.push(fd);
                }
            }
            for (key, fds) in fds {
                let lines = walk.holders(&fds);
                sites.insert(key, lines);
            }
        }
        let previous = self.holders.previous.get(&process.pid);
        let heap = HeapReport {
            python: Some(format!("3.{}", walk.minor)),
            error: None,
            objects: walk.objects() as u64,
            unknown_objects: walk.unknown,
            cut_short: walk.cut_short,
            stopped: walk.stopped.clone(),
            walk_seconds: walk.elapsed.as_secs_f64(),
            paused_seconds: walk.paused_seconds,
            pause_error: walk.pause_error.clone(),
            age_seconds: 0.0,
            census: walk.census.entries(previous, CENSUS_TYPES),
        };
        self.holders.previous.insert(process.pid, walk.census);
        LastWalk { at, heap: Some(heap), sites }
    }
}
