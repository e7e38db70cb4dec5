//! What the exporter is handed (ARCHITECTURE.md, "Data flow" 7): the engine's transitions fed
//! to the aggregator (output/metrics), and once a second a snapshot of the series with what
//! only /proc and sock_diag know (names, workloads, socket memory, time to fd exhaustion) and
//! the tracer's own numbers, published for the HTTP handlers (output/http).
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::watch;

use crate::{
    model::{
        fd::FdKind, fdtable::FdTable, holders::Holder, resources::exhaustion_seconds, trend::theil_sen,
        workload::Workload,
    },
    observe::{procfs::SocketJoin, session::Tracing},
    output::{
        http::Snapshot,
        metrics::{
            aggregate::{Aggregator, ExportConfig, Identify},
            exposition::SelfMetrics,
        },
    },
    sys::{
        clock,
        proc::{self, resources},
    },
};

/// The exporter's side of the tracing loop: the engine's transitions aggregated per workload,
/// and a snapshot of the series published once a second for the HTTP handlers.
pub(crate) struct Exporter {
    aggregator: Aggregator,
    proc_root: PathBuf,
    /// Open sockets whose memory could not be had, counted at every snapshot.
    unavailable_socket_memory: u64,
    /// Processes whose descriptor limit could not be read when a projection needed it.
    unavailable_fd_limit: u64,
    /// Holders for /sites (None: `--holders-interval 0`).
    holders: Option<HolderExport>,
}

/// The holder lines /sites shows, looked for every [`HOLDERS_CHECK`] (or the interval, when
/// shorter); the heap walks behind them are bounded by the session (observe/holders.rs).
struct HolderExport {
    check_every: Duration,
    next: Instant,
    by_site: HashMap<String, Vec<Holder>>,
}

/// How often serve looks for sites newly suspected or in CLOSE_WAIT in CPython processes (a
/// report of those processes; their heaps are walked at most once per `--holders-interval`).
const HOLDERS_CHECK: Duration = Duration::from_secs(5);

/// Transitions the engine keeps before the exporter takes them in between two snapshots: under
/// a flood a second's worth would be millions (and memory the allocator keeps afterwards).
/// Looked at after each chunk of records (`Tick::Drained`), so about this and one chunk's
/// worth are kept (under 17,000, 700 KB, in a flood), plus what a reconciliation or the sites'
/// expiry adds between chunks: after a drain only, it was a ring and the emptier's hold at
/// once, 157,000 seen.
const MAX_PENDING_TRANSITIONS: usize = 16_384;

impl Exporter {
    /// An exporter for a `Tracing` started with `TraceSettings::keep_transitions`, so that
    /// the engine keeps every transition for it from the first record on.
    pub(crate) fn new(config: ExportConfig, proc_root: &Path) -> Exporter {
        Exporter {
            aggregator: Aggregator::new(config),
            proc_root: proc_root.to_path_buf(),
            unavailable_socket_memory: 0,
            unavailable_fd_limit: 0,
            holders: None,
        }
    }

    /// Walk heaps for /sites' holders: at least `holders_interval` apart for a process (zero:
    /// no holders).
    pub(crate) fn walk_holders(&mut self, tracing: &mut Tracing, holders_interval: Duration) {
        tracing.set_holders_interval(holders_interval);
        self.holders = (!holders_interval.is_zero()).then(|| HolderExport {
            check_every: holders_interval.min(HOLDERS_CHECK),
            next: Instant::now(),
            by_site: HashMap::new(),
        });
    }

    /// Take in what happened since the last call (counters only; no snapshot).
    fn observe(&mut self, tracing: &mut Tracing, now_ns: u64) {
        let kept = tracing.engine.take_transitions();
        let mut who = ProcIdentify { table: tracing.engine.table(), proc_root: &self.proc_root };
        self.aggregator.observe(&kept, &mut who, now_ns);
        tracing.engine.reuse_transitions(kept);
    }

    /// After a drain of the ring buffer: take the transitions in when they pile up.
    pub(crate) fn observe_if_many(&mut self, tracing: &mut Tracing) {
        if tracing.engine.pending_transitions() >= MAX_PENDING_TRANSITIONS {
            self.observe(tracing, clock::boot_ns());
        }
    }

    /// Take in what happened since the last call and publish the new state.
    pub(crate) fn publish(&mut self, tracing: &mut Tracing, publish: &watch::Sender<Option<Arc<Snapshot>>>) {
        let now_ns = clock::boot_ns();
        tracing.engine.refresh_names();
        self.observe(tracing, now_ns);
        if let Some(holders) = self.holders.as_mut().filter(|h| Instant::now() >= h.next) {
            holders.by_site = tracing.site_holders();
            holders.next = Instant::now() + holders.check_every;
        }
        let (memory, unmeasured) = tracing.socket_memory();
        self.unavailable_socket_memory += unmeasured;
        let tracing = &*tracing;
        let engine = &tracing.engine;
        let mut who = ProcIdentify { table: engine.table(), proc_root: &self.proc_root };
        let frames = |site| engine.frames(site).cloned();
        let mut socket_memory = |tgid: u32, fd: i32, _: &_| memory.get(&(tgid, fd)).copied();
        let unavailable_fd_limit = std::cell::Cell::new(0u64);
        let exhaustion = |tgid: u32| {
            let (seconds, readable) = tracing.fd_exhaustion_seconds(tgid);
            unavailable_fd_limit.set(unavailable_fd_limit.get() + u64::from(!readable));
            seconds
        };
        let mut exported = self.aggregator.snapshot(
            engine.table(),
            &frames,
            &mut who,
            &mut socket_memory,
            &exhaustion,
            now_ns,
        );
        self.unavailable_fd_limit += unavailable_fd_limit.get();
        // Goroutine creators and listeners, as in the report.
        let redact = self.aggregator.redacts_paths();
        for (id, site) in exported.sites.iter_mut() {
            let origin = engine.origin(*id);
            site.origin = if redact { crate::output::redact::origin(&origin) } else { origin };
        }
        if let Some(holders) = &self.holders {
            for site in exported.sites.values_mut() {
                site.holders = holders.by_site.get(&site.site).cloned();
            }
        }
        let counts = tracing.event_counts();
        let own = SelfMetrics {
            events_by_type: engine.events_by_type(),
            events_lost: counts.lost,
            sites_dropped: counts.sites_dropped,
            stack_errors: counts.stack_errors,
            tracked_processes: engine.table().process_count() as u64,
            tracked_fds: engine.table().fd_count() as u64,
            tracked_sites: engine.site_count() as u64,
            corrections: tracing.corrections(),
            dropped: engine.table().dropped(),
            usage: proc::usage(&self.proc_root, std::process::id()),
            programs: if proc::bpf_stats_enabled(&self.proc_root) {
                tracing.program_runs()
            } else {
                Vec::new()
            },
            unavailable_socket_memory: self.unavailable_socket_memory,
            unavailable_fd_limit: self.unavailable_fd_limit,
            heap_walks: tracing.heap_walks(),
        };
        publish.send_replace(Some(Arc::new(Snapshot::new(exported, own, Instant::now()))));
    }
}

/// Names from the table (events carry them), else /proc; workloads from /proc/PID/cgroup.
struct ProcIdentify<'a> {
    table: &'a FdTable,
    proc_root: &'a Path,
}

impl Identify for ProcIdentify<'_> {
    fn comm(&mut self, tgid: u32) -> String {
        self.table
            .process(tgid)
            .map(|p| p.comm.clone())
            .filter(|c| !c.is_empty())
            .or_else(|| proc::comm(self.proc_root, tgid))
            .unwrap_or_default()
    }

    fn workload(&mut self, tgid: u32) -> Option<Workload> {
        proc::cgroup(self.proc_root, tgid).map(|text| Workload::from_proc_cgroup(&text))
    }
}

impl Tracing {
    /// Kernel memory charged to every open socket, by (process, fd), as `SocketJoin` measures
    /// it (observe/procfs.rs: one by one, past 2,048 sockets the tracer's own network namespace
    /// in one sock_diag dump), socket inodes cached across calls; and how many could not be
    /// measured (logged once each, by process).
    fn socket_memory(&mut self) -> (HashMap<(u32, i32), u64>, u64) {
        let proc_root = self.proc_root.clone();
        let mut join =
            SocketJoin::new(&proc_root, std::mem::take(&mut self.socket_inodes), self.redact_paths);
        let mut memory = HashMap::new();
        let mut unmeasured = 0;
        for (tgid, process) in self.engine.table().processes() {
            for (fd, entry) in process.fds.iter().filter(|(_, e)| e.kind == FdKind::Socket) {
                match join.socket_memory(tgid, fd, entry) {
                    Ok(Some(bytes)) => {
                        memory.insert((tgid, fd), bytes);
                    }
                    Ok(None) => {}
                    Err(why) => {
                        unmeasured += 1;
                        if self.unmeasured_logged.insert(tgid) {
                            log::warn!("socket memory of pid {tgid} not measured: {why}");
                        }
                    }
                }
            }
        }
        self.socket_inodes = join.seen;
        let table = self.engine.table();
        self.unmeasured_logged.retain(|tgid| table.process(*tgid).is_some());
        (memory, unmeasured)
    }

    /// Seconds until `tgid` reaches its descriptor limit at the growth of its open count over
    /// the session (None when it is not growing or has no limit), and whether the limit could
    /// be read when it was needed.
    fn fd_exhaustion_seconds(&self, tgid: u32) -> (Option<f64>, bool) {
        let Some(series) = self.history.process(tgid) else { return (None, true) };
        let window = series.fds.window();
        let Some(rate) = theil_sen(&window).filter(|r| *r > 0.0 && window.len() >= 3) else {
            return (None, true);
        };
        let Some(process) = self.engine.table().process(tgid) else { return (None, true) };
        match resources::read_fd_limit(&self.proc_root, tgid) {
            Ok(limit) => (exhaustion_seconds(limit, process.fds.len() as u64, Some(rate)), true),
            Err(_) => (None, false),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The exporter's pipeline as the daemon runs it: the real engine fed synthetic events
    //! (engine/testing.rs), its transitions aggregated, the series rendered.
    use std::{
        collections::HashMap,
        ops::{Deref, DerefMut},
    };

    use super::*;
    use crate::{
        model::{event::Op, fd::SiteId, fdtable::OpenFd},
        observe::engine::testing::{Feed, PARENT, SEC},
        output::metrics::{
            aggregate::{Exported, SiteSeries},
            exposition::{registry, render, tests::series},
        },
    };

    /// Every open socket's memory, as the test's sock_diag says.
    const SOCKET_BYTES: u64 = 4096;

    /// Answers from maps the test fills, as /proc would.
    #[derive(Default)]
    struct Known {
        comms: HashMap<u32, String>,
        workloads: HashMap<u32, Workload>,
    }
    impl Identify for Known {
        fn comm(&mut self, tgid: u32) -> String {
            self.comms.get(&tgid).cloned().unwrap_or_default()
        }
        fn workload(&mut self, tgid: u32) -> Option<Workload> {
            self.workloads.get(&tgid).cloned()
        }
    }

    /// The engine fed synthetic events, and an aggregator fed the engine's transitions, as the
    /// daemon does.
    struct World {
        feed: Feed,
        aggregator: Aggregator,
        who: Known,
    }

    impl Deref for World {
        type Target = Feed;
        fn deref(&self) -> &Feed {
            &self.feed
        }
    }

    impl DerefMut for World {
        fn deref_mut(&mut self) -> &mut Feed {
            &mut self.feed
        }
    }

    impl World {
        fn new(max_sites: usize, pid_label: bool) -> World {
            let config = ExportConfig { max_sites, retention_ns: 60 * SEC, pid_label, redact_paths: false };
            let mut world =
                World { feed: Feed::new(), aggregator: Aggregator::new(config), who: Known::default() };
            world.spawn_root(PARENT, "server", unit("app.service"));
            world
        }

        fn spawn_root(&mut self, tgid: u32, comm: &str, workload: Workload) {
            self.who.comms.insert(tgid, comm.to_string());
            self.who.workloads.insert(tgid, workload);
            self.feed.found(tgid, comm);
        }

        fn tick(&mut self) -> Exported {
            let kept = self.feed.engine.take_transitions();
            self.aggregator.observe(&kept, &mut self.who, self.feed.now);
            let engine = &self.feed.engine;
            let frames = |site| engine.frames(site).cloned();
            let mut memory = |_: u32, _: i32, _: &OpenFd| Some(SOCKET_BYTES);
            let exhaustion = |tgid: u32| (tgid == PARENT).then_some(3600.0);
            self.aggregator.snapshot(
                engine.table(),
                &frames,
                &mut self.who,
                &mut memory,
                &exhaustion,
                self.feed.now,
            )
        }

        fn text(&mut self) -> String {
            let exported = self.tick();
            let own =
                SelfMetrics { events_by_type: self.feed.engine.events_by_type(), ..SelfMetrics::default() };
            render(&registry(&exported, &own).unwrap()).unwrap()
        }
    }

    fn unit(name: &str) -> Workload {
        Workload { unit: Some(name.to_string()), ..Workload::default() }
    }

    fn total_series(text: &str) -> usize {
        text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).count()
    }

    fn sites_of(exported: &Exported, comm: &str, kind: FdKind) -> Vec<SiteSeries> {
        exported
            .groups
            .iter()
            .filter(|g| g.key.comm == comm)
            .flat_map(|g| g.sites.iter().filter(|s| s.kind == kind).cloned())
            .collect()
    }

    #[test]
    fn series_follow_the_contract() {
        let mut world = World::new(20, false);
        let files = world.open(PARENT, FdKind::File, 1, 3);
        world.open(PARENT, FdKind::Socket, 2, 2);
        world.close(PARENT, files[0]);
        let opened_at = world.now;
        world.now += 5 * SEC;
        let text = world.text();

        let labels = |kind: &str| {
            format!(r#"comm="server",container_id="",kind="{kind}",pod_uid="",unit="app.service""#)
        };
        let open = series(&text, "helios_trace_open_fds");
        assert_eq!(open.get(&format!("{{{}}}", labels("file"))), Some(&2.0), "{text}");
        assert_eq!(open.get(&format!("{{{}}}", labels("socket"))), Some(&2.0));
        let file_site = world.engine.table().process(PARENT).unwrap().fds[&files[1]].site;
        let site_labels = format!(
            r#"{{{},site="{}",frame="server+{:#x}"}}"#,
            labels("file").replace(r#",kind="file""#, ""),
            file_site.label(),
            0x10
        );
        // Labels come out sorted by name: rebuild the expected key the same way.
        let key = |text: &str| {
            let mut parts: Vec<&str> = text.trim_matches(|c| c == '{' || c == '}').split(',').collect();
            parts.push(r#"kind="file""#);
            parts.sort();
            format!("{{{}}}", parts.join(","))
        };
        let site_key = key(&site_labels);
        assert_eq!(series(&text, "helios_trace_site_open_fds").get(&site_key), Some(&2.0), "{text}");
        assert_eq!(series(&text, "helios_trace_site_opened_total").get(&site_key), Some(&3.0));
        assert_eq!(series(&text, "helios_trace_site_closed_total").get(&site_key), Some(&1.0));
        let socket_site = series(&text, "helios_trace_site_socket_memory_bytes");
        assert_eq!(socket_site.len(), 1, "only socket sites carry memory: {socket_site:?}");
        assert_eq!(socket_site.values().sum::<f64>(), 2.0 * SOCKET_BYTES as f64, "two open sockets");
        let exhaustion = series(&text, "helios_trace_process_fd_exhaustion_seconds");
        assert_eq!(
            exhaustion.get(&format!("{{{}}}", labels("x").replace(r#",kind="x""#, ""))),
            Some(&3600.0)
        );
        let oldest = series(&text, "helios_trace_site_oldest_open_seconds")[&site_key];
        let expected = (world.now - (opened_at - 3000)) as f64 / 1e9;
        assert!((oldest - expected).abs() < 1e-6, "oldest {oldest}, expected {expected}");
        for (name, kind) in [
            ("helios_trace_open_fds", "gauge"),
            ("helios_trace_site_open_fds", "gauge"),
            ("helios_trace_site_socket_memory_bytes", "gauge"),
            ("helios_trace_process_fd_exhaustion_seconds", "gauge"),
            ("helios_trace_site_opened_total", "counter"),
            ("helios_trace_site_closed_total", "counter"),
            ("helios_trace_site_oldest_open_seconds", "gauge"),
            ("helios_trace_events_total", "counter"),
            ("helios_trace_events_lost_total", "counter"),
            ("helios_trace_tracked_processes", "gauge"),
            ("helios_trace_tracked_fds", "gauge"),
            ("helios_trace_tracked_sites", "gauge"),
            ("helios_trace_reconcile_corrections_total", "counter"),
            ("helios_trace_dropped_total", "counter"),
        ] {
            assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name} is a {kind}: {text}");
        }
        assert!(!text.contains("pid="), "no pid label by default");
    }

    /// The calls the kernel matched with their closes (helios-trace-ebpf/src/pairs.rs) are
    /// counted at their site's series as each pair would be, from the one item the engine hands
    /// over for all but the first of a record's pairs (`Kept::Pairs`).
    #[test]
    fn pairs_the_kernel_matched_are_counted_at_their_sites_series() {
        use crate::{
            model::kept::Kept,
            observe::engine::testing::{DistinctStacks, kept_socket},
        };
        let mut world = World::new(20, false);
        // The record's own open kept at fd 5, then a record of 1,000 pairs alone.
        world.feed.engine.handle_record(&kept_socket(PARENT, SEC, 5, 0, false), &DistinctStacks);
        world.feed.engine.handle_record(&kept_socket(PARENT, 2 * SEC, 6, 1_000, true), &DistinctStacks);
        let kept = world.feed.engine.take_transitions();
        let pairs: Vec<u64> = kept
            .iter()
            .filter_map(|k| match k {
                Kept::Pairs { pairs, .. } => Some(*pairs),
                _ => None,
            })
            .collect();
        assert_eq!((pairs, kept.len()), (vec![999], 4), "fd 5's open, the first pair, the rest: {kept:?}");
        world.aggregator.observe(&kept, &mut world.who, world.feed.now);
        let exported = world.tick();
        let sites = sites_of(&exported, "server", FdKind::Socket);
        let counted: Vec<(u64, u64, u64)> = sites.iter().map(|s| (s.open, s.opened, s.closed)).collect();
        assert_eq!(counted, [(1, 1_001, 1_000)], "{sites:#?}");
    }

    #[test]
    fn the_most_open_sites_are_exported_and_the_rest_fold_into_other() {
        let mut world = World::new(3, false);
        // Sites 1..=5 with 5, 4, 3, 2, 1 open; site 6 opened 7 and closed them all.
        for stack in 1..=5 {
            world.open(PARENT, FdKind::File, stack, 6 - stack as usize);
        }
        for fd in world.open(PARENT, FdKind::File, 6, 7) {
            world.close(PARENT, fd);
        }
        let exported = world.tick();
        let sites = sites_of(&exported, "server", FdKind::File);
        let opens: Vec<(Option<u64>, u64)> = sites.iter().map(|s| (s.site.map(|_| s.open), s.open)).collect();
        assert_eq!(opens, [(Some(5), 5), (Some(4), 4), (Some(3), 3), (None, 3)], "{sites:#?}");
        let other = sites.iter().find(|s| s.site.is_none()).unwrap();
        assert_eq!((other.opened, other.closed), (2 + 1 + 7, 7));
        assert_eq!(exported.groups[0].open_by_kind[&FdKind::File], 15);
        assert_eq!(exported.sites.len(), 3, "/sites lists the exported sites only");
    }

    #[test]
    fn other_only_grows_and_ties_keep_the_exported_site() {
        let mut world = World::new(1, false);
        let a = world.open(PARENT, FdKind::File, 1, 2);
        world.open(PARENT, FdKind::File, 2, 1);
        let first = world.tick();
        let site_a = world.engine.table().process(PARENT).unwrap().fds[&a[0]].site;
        assert_eq!(sites_of(&first, "server", FdKind::File)[0].site, Some(site_a));
        // B catches up: a tie, A stays.
        world.open(PARENT, FdKind::File, 2, 1);
        let tie = world.tick();
        assert_eq!(sites_of(&tie, "server", FdKind::File)[0].site, Some(site_a));
        let other_before = sites_of(&tie, "server", FdKind::File)[1].opened;
        // B overtakes: B is exported, A folds; other's counters do not drop.
        world.open(PARENT, FdKind::File, 2, 1);
        let overtaken = world.tick();
        let sites = sites_of(&overtaken, "server", FdKind::File);
        assert_ne!(sites[0].site, Some(site_a));
        assert_eq!(sites[0].opened, 3, "an exported site shows its whole history");
        assert!(sites[1].opened >= other_before, "other never decreases");
        // A opens more while folded: other counts that, and only that.
        world.open(PARENT, FdKind::File, 1, 1);
        let later = world.tick();
        assert_eq!(sites_of(&later, "server", FdKind::File)[1].opened, sites[1].opened + 1);
    }

    #[test]
    fn a_hundred_thousand_call_sites_stay_within_max_sites() {
        const SITES: i32 = 100_000;
        let mut world = World::new(20, false);
        let baseline = total_series(&world.text());
        world.open(PARENT, FdKind::Socket, 0, 50);
        let fds: Vec<i32> =
            (1..=SITES).flat_map(|stack| world.open(PARENT, FdKind::File, stack, 1)).collect();
        assert_eq!(world.engine.stacks().site_count(), SITES as usize + 1, "every call site is distinct");
        let text = world.text();
        // Per metric: file sites ≤ 20 + other, socket 1 site; one open_fds series per kind.
        let site_series = series(&text, "helios_trace_site_open_fds");
        assert_eq!(site_series.len(), 21 + 1, "{}", site_series.len());
        assert_eq!(site_series.values().sum::<f64>(), f64::from(SITES) + 50.0, "nothing is lost by folding");
        // 22 sites x 4 site metrics, the socket site's memory, 2 kinds, the group's exhaustion.
        assert!(total_series(&text) <= baseline + 22 * 4 + 1 + 2 + 1, "{} series", total_series(&text));
        let other = site_series.iter().find(|(k, _)| k.contains(r#"site="other""#)).unwrap();
        assert_eq!(*other.1, f64::from(SITES - 20));
        // Once they are closed, the folded sites are forgotten: state is bounded too.
        for fd in fds {
            world.close(PARENT, fd);
        }
        let text = world.text();
        assert_eq!(series(&text, "helios_trace_site_open_fds").len(), 22);
        assert!(world.aggregator.site_state_count() <= 21 + 1, "{}", world.aggregator.site_state_count());
        let closed = series(&text, "helios_trace_site_closed_total");
        assert_eq!(closed.values().sum::<f64>(), f64::from(SITES));
    }

    #[test]
    fn ten_thousand_short_lived_processes_are_one_group_without_pid_label() {
        let mut world = World::new(20, false);
        world.fork_exec_exit(1000, "job", Some(7));
        let after_one = world.text();
        for child in 1001..11_000 {
            world.fork_exec_exit(child, "job", Some(7));
        }
        let after_all = world.text();
        assert_eq!(total_series(&after_all), total_series(&after_one), "{after_all}");
        let opened = series(&after_all, "helios_trace_site_opened_total");
        let job: Vec<f64> =
            opened.iter().filter(|(k, _)| k.contains(r#"comm="job""#)).map(|(_, v)| *v).collect();
        assert_eq!(job, [10_000.0], "the jobs' opens add up in one series, under their own name");
        // The children ran in the parent's service (inherited at fork).
        assert!(opened.keys().any(|k| k.contains(r#"comm="job""#) && k.contains(r#"unit="app.service""#)));
        assert_eq!(world.aggregator.group_count(), 2, "server and job");
    }

    #[test]
    fn with_pid_label_exited_processes_go_after_the_retention() {
        let mut world = World::new(20, true);
        let baseline = world.text();
        for child in 1000..11_000 {
            world.fork_exec_exit(child, "job", Some(7));
        }
        let during = world.text();
        assert!(series(&during, "helios_trace_site_opened_total").len() >= 10_000, "one series per pid");
        assert!(during.contains(r#"pid="1000""#));
        world.now += 60 * SEC;
        let after = world.text();
        assert_eq!(after, baseline, "back to the series before the jobs");
        assert_eq!(world.aggregator.group_count(), 1);
    }

    #[test]
    fn an_exited_workload_keeps_its_series_for_the_retention_only() {
        let mut world = World::new(20, false);
        world.spawn_root(200, "worker", unit("worker.service"));
        world.open(200, FdKind::Socket, 3, 4);
        assert!(world.text().contains(r#"unit="worker.service""#));
        world.event(200, Op::Exit, None);
        let exited = world.tick();
        let sites = sites_of(&exited, "worker", FdKind::Socket);
        assert_eq!((sites[0].open, sites[0].closed), (0, 4), "open drops to 0, the closes are counted");
        world.now += 59 * SEC;
        assert!(world.text().contains(r#"unit="worker.service""#), "kept within the retention");
        world.now += SEC;
        assert!(!world.text().contains(r#"unit="worker.service""#), "dropped after it");
    }

    #[test]
    fn sites_of_gone_jobs_are_forgotten_after_the_retention_and_a_new_leak_is_named() {
        let mut world = World::new(20, false);
        world.engine.set_retention(60 * SEC);
        world.engine.limit_sites(1500);
        // The server holds a leak of its own, and keeps its workload live throughout.
        world.open(PARENT, FdKind::Socket, 1, 3);
        // A thousand jobs, each opening (and closing at its exit) at a call site of its own.
        for job in 0..1000 {
            world.fork_exec_exit(1000 + job, "job", Some(100 + job as i32));
        }
        let exported = world.tick();
        let jobs = sites_of(&exported, "job", FdKind::File);
        assert_eq!(jobs.iter().filter(|s| s.site.is_some()).count(), 20, "exported up to --max-sites");
        assert_eq!(world.engine.stacks().site_count(), 1001);
        // Within the retention nothing goes; after it, every job's site does, everywhere.
        world.now += 59 * SEC;
        assert_eq!(world.feed.engine.expire_sites(world.feed.now), 0);
        world.now += SEC;
        assert_eq!(world.feed.engine.expire_sites(world.feed.now), 1000);
        let exported = world.tick();
        assert_eq!(world.engine.stacks().site_count(), 1, "the server's leak only");
        assert_eq!(world.aggregator.site_state_count(), 1);
        let jobs = sites_of(&exported, "job", FdKind::File);
        assert!(jobs.iter().all(|s| s.site.is_none()), "only `other` stays: {jobs:?}");
        let leak = &sites_of(&exported, "server", FdKind::Socket)[0];
        assert_eq!((leak.open, leak.site.is_some()), (3, true), "the leak is never forgotten");
        // Another thousand: the registry (1,500 sites) never fills, so a new leak is named.
        for job in 0..1000 {
            world.fork_exec_exit(3000 + job, "job", Some(2000 + job as i32));
        }
        world.now += 60 * SEC;
        world.feed.engine.expire_sites(world.feed.now);
        world.open(PARENT, FdKind::Socket, 9999, 2);
        let exported = world.tick();
        let new_leak = sites_of(&exported, "server", FdKind::Socket);
        assert!(
            new_leak.iter().any(|s| s.open == 2 && matches!(s.site, Some(SiteId::Stack(_)))),
            "{new_leak:?}"
        );
        assert_eq!(world.engine.stack_counts().sites_dropped, 0);
    }

    #[test]
    fn exec_moves_a_process_to_its_new_name_and_cgroup() {
        let mut world = World::new(20, false);
        world.event(PARENT, Op::NewTask { child: 300, thread: false, comm: "server".into() }, None);
        world.open(300, FdKind::Pipe, 4, 1);
        let forked = world.tick();
        assert_eq!(
            forked.groups.iter().find(|g| g.key.comm == "server").unwrap().open_by_kind[&FdKind::Pipe],
            1
        );
        let container = Workload { container_id: Some("c".repeat(64)), ..Workload::default() };
        world.who.workloads.insert(300, container.clone());
        world.event(
            300,
            Op::Exec { old_tid: 300, filename: b"/usr/bin/python3".to_vec(), comm: "python3".into() },
            None,
        );
        let exported = world.tick();
        let group = exported.groups.iter().find(|g| g.key.comm == "python3").unwrap();
        assert_eq!(group.key.workload, container);
        assert_eq!(group.open_by_kind[&FdKind::Pipe], 1, "its descriptors moved with it");
        let server = exported.groups.iter().find(|g| g.key.comm == "server").unwrap();
        assert_eq!(server.open_by_kind.get(&FdKind::Pipe).copied().unwrap_or(0), 0);
    }
}
