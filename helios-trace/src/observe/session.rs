//! A tracing run: attach, load the /proc baseline, then read the ring buffer into the Engine
//! until told to stop, reconciling with /proc on a timer and sampling every site's open count
//! once a second. The ad-hoc session (adhoc.rs) reports at the end; the exporter (serve.rs)
//! drives the same loop and publishes metrics.
use std::{
    cell::RefCell,
    collections::HashMap,
    future::Future,
    path::{Path, PathBuf},
    pin::pin,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    time::{Instant, MissedTickBehavior, interval, interval_at},
};

use crate::{
    model::{
        counts::EventCounts,
        fd::{FdDetail, FdKind, printable},
        fdtable::{Corrections, OpenFd, TableLimits},
        history::{History, ProcessSample},
        resources::exhaustion_seconds,
    },
    observe::engine::Engine,
    output::report::{self, FdFacts, ProcessFacts, Report, ReportInput},
    sys::{
        TraceConfig, Tracer,
        cgroups::{self, TargetCgroup},
        checks, clock,
        proc::{self, SocketTables, resources},
        sockdiag,
    },
};

/// How often the ring buffer is drained even without a wake-up (the kernel batches wake-ups
/// under load, see WAKEUP_BYTES).
const DRAIN_INTERVAL: Duration = Duration::from_millis(50);
/// Wake the reader once this much is waiting; below it, the drain timer picks records up.
const WAKEUP_BYTES: u64 = 256 * 1024;

pub struct Tracing {
    pub engine: Engine,
    tracer: Tracer,
    ring: Ring,
    pub targets: Vec<u32>,
    pub target_cgroups: Vec<PathBuf>,
    pub started_at: SystemTime,
    pub started: Instant,
    reconcile_interval: Duration,
    /// Every site's open count, once a second.
    pub history: History,
    /// How old a growing site's descriptors must be for it to be a suspected leak.
    pub min_age: Duration,
    /// Socket inodes by (process, fd, opened_ns), so a report reads each socket's link once.
    socket_inodes: HashMap<(u32, i32, u64), u64>,
    /// `--redact-paths`.
    redact_paths: bool,
}

/// After a burst (a flood's records, thousands of short-lived processes, a scrape of many
/// series) glibc keeps the freed memory in its heaps and the tracer's resident memory would stay
/// at its peak for good: hand it back. Once a second; measured here (bpftrace on malloc_trim,
/// tracing every process) it takes 32–512 µs.
fn give_back_freed_memory() {
    // SAFETY: malloc_trim only releases free memory of the allocator's own heaps.
    unsafe { libc::malloc_trim(0) };
}

/// Why `run_until` calls back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tick {
    /// Records were read from the ring buffer (often: keep it cheap).
    Drained,
    /// A second passed and the sites were sampled.
    Second,
}

/// The ring buffer: as attached, then registered with the runtime's reactor for polling.
enum Ring {
    Attached(RingBuf<MapData>),
    Polled(AsyncFd<RingBuf<MapData>>),
    /// Only while `poll` swaps the two.
    Moving,
}

impl Ring {
    /// Register with the reactor of the runtime we run in (once).
    fn poll(&mut self) -> Result<()> {
        if let Ring::Attached(_) = self {
            let Ring::Attached(ring) = std::mem::replace(self, Ring::Moving) else { unreachable!() };
            // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, for its whole
            // life, which the AsyncFd now owns.
            match unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) } {
                Ok(polled) => *self = Ring::Polled(polled),
                Err(e) => {
                    let (ring, error) = e.into_parts();
                    *self = Ring::Attached(ring);
                    return Err(error).context("cannot poll the ring buffer");
                }
            }
        }
        Ok(())
    }

    async fn readable(
        &mut self,
    ) -> std::io::Result<tokio::io::unix::AsyncFdReadyMutGuard<'_, RingBuf<MapData>>> {
        match self {
            Ring::Polled(polled) => polled.readable_mut().await,
            _ => std::future::pending().await,
        }
    }
}

/// The default of `--min-age`.
pub const DEFAULT_MIN_AGE: Duration = Duration::from_secs(10);

/// What a tracing run is asked to do: the command line's tracing options as the commands turn
/// them into settings (commands/mod.rs).
#[derive(Clone, Debug)]
pub struct TraceSettings {
    /// Only these processes, and the children they fork after the start.
    pub pids: Vec<u32>,
    /// Only processes in or below these cgroup v2 directories.
    pub cgroups: Vec<PathBuf>,
    /// How the kernel captures user stacks: `helios_trace_common::stack_mode`.
    pub user_stack_mode: u32,
    /// Bytes of user stack per call with `stack_mode::DWARF`.
    pub stack_window: u32,
    pub kernel_stacks: bool,
    /// Walk the Python frames of the CPython processes recognised.
    pub python_frames: bool,
    /// Compare the tables with /proc this often (zero: never).
    pub reconcile_interval: Duration,
    pub ring_buffer_bytes: u32,
    /// `--redact-paths`.
    pub redact_paths: bool,
    pub limits: TableLimits,
    /// Call sites whose frames are kept at once (`--max-stacks`).
    pub max_stacks: usize,
    /// How long a call site nothing holds is remembered (`--retention`).
    pub retention: Duration,
}

impl Tracing {
    /// Attach the programs and load what is already open.
    pub fn start(args: &TraceSettings, proc_root: &Path) -> Result<Tracing> {
        let cgroups: Vec<TargetCgroup> = args
            .cgroups
            .iter()
            .map(|dir| cgroups::resolve(dir))
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)?;
        let config = TraceConfig {
            targets: args.pids.clone(),
            target_cgroups: cgroups.iter().map(|c| c.id).collect(),
            user_stack_mode: args.user_stack_mode,
            stack_window: args.stack_window,
            kernel_stacks: args.kernel_stacks,
            ring_buffer_bytes: args.ring_buffer_bytes,
            wakeup_bytes: WAKEUP_BYTES.min(args.ring_buffer_bytes as u64 / 4),
        };
        let (mut tracer, ring) = Tracer::start(&config)?;
        let missing = checks::missing_proc_capabilities(checks::own_capabilities());
        if !missing.is_empty() {
            log::warn!(
                "without {}, descriptors of other users' processes cannot be read from /proc",
                missing.join(" and ")
            );
        }
        if let Err(err) = crate::resolve::modules::raise_open_files_limit() {
            log::warn!("cannot raise the open files limit ({err}): stacks of many processes may go unnamed");
        }
        let started_at = SystemTime::now();
        let start_ns = clock::boot_ns();
        let mut engine = Engine::new(proc_root, args.limits);
        engine.stacks.limit_sites(args.max_stacks);
        engine.set_retention(args.retention.as_nanos().try_into().unwrap_or(u64::MAX));
        engine.python.enable(args.python_frames);
        // Attach first, then scan: every descriptor is either in the scan or in an event after
        // it (FdTable::insert_observed explains why the overlap is harmless).
        let own = std::process::id();
        let pids: Vec<u32> = if args.pids.is_empty() && cgroups.is_empty() {
            proc::pids(proc_root).into_iter().filter(|p| *p != own).collect()
        } else {
            let mut pids = args.pids.clone();
            pids.extend(cgroups.iter().flat_map(|c| cgroups::processes(&c.path)).filter(|p| *p != own));
            pids.sort_unstable();
            pids.dedup();
            pids
        };
        engine.load_baseline(&pids, start_ns);
        apply_python_updates(&mut engine, &mut tracer);
        // Polled from the runtime once `run_until` runs: attaching needs no runtime, so it can
        // happen before the runtime's threads exist and privileges can be dropped for all.
        let ring = Ring::Attached(ring);
        Ok(Tracing {
            engine,
            tracer,
            ring,
            targets: args.pids.clone(),
            target_cgroups: args.cgroups.clone(),
            started_at,
            started: Instant::now(),
            reconcile_interval: args.reconcile_interval,
            history: History::default(),
            min_age: DEFAULT_MIN_AGE,
            socket_inodes: HashMap::new(),
            redact_paths: args.redact_paths,
        })
    }

    /// How old a growing site's descriptors must be for it to be a suspected leak (`--min-age`).
    pub fn set_min_age(&mut self, min_age: Duration) {
        self.min_age = min_age;
    }

    /// Keep up to `limit` exited processes for the report, with what they had open at their
    /// exit (`run`, whose command has exited by the time of the report).
    pub fn retain_exited(&mut self, limit: usize) {
        self.engine.retain_exited(limit);
    }

    /// What is traced, for the "attached" line: "all processes", "pid 12, 14", "cgroup DIR".
    pub fn describe_targets(&self) -> String {
        let mut parts = Vec::new();
        if !self.targets.is_empty() {
            let pids: Vec<String> = self.targets.iter().map(u32::to_string).collect();
            parts.push(format!("pid {}", pids.join(", ")));
        }
        for dir in &self.target_cgroups {
            parts.push(format!("cgroup {}", dir.display()));
        }
        if parts.is_empty() { "all processes".to_string() } else { parts.join("; ") }
    }

    /// Sample every site's open count now (once a second, from `run_until`).
    pub fn sample(&mut self) {
        let exited: Vec<u32> = self.engine.exited().iter().map(|e| e.tgid).collect();
        let proc_root = self.engine.proc_root().to_path_buf();
        let resources = |tgid: u32| ProcessSample {
            rss_bytes: resources::rss_bytes(&proc_root, tgid),
            cgroup_memory_bytes: resources::process_cgroup_memory(
                &proc_root,
                Path::new(resources::CGROUP_ROOT),
                tgid,
            )
            .map(|m| m.current),
        };
        self.history.sample(
            clock::boot_ns(),
            &self.engine.table,
            &self.engine.stats,
            |tgid| exited.contains(&tgid),
            resources,
        );
    }

    pub fn attached(&self) -> &[String] {
        &self.tracer.attached
    }

    /// Handle every record waiting in the ring buffer.
    pub fn drain(&mut self) {
        let ring = match &mut self.ring {
            Ring::Attached(ring) => ring,
            Ring::Polled(polled) => polled.get_mut(),
            Ring::Moving => unreachable!("the ring is only moving inside poll()"),
        };
        while let Some(record) = ring.next() {
            self.engine.handle_record(&record, &self.tracer);
        }
        apply_python_updates(&mut self.engine, &mut self.tracer);
    }

    /// Run until `stop` completes; `on_tick` runs after every drain of the ring buffer
    /// (`Tick::Drained`) and once a second after the sites were sampled (`Tick::Second`: the
    /// exporter publishes its snapshot there). Ends with a final drain.
    pub async fn run_until(
        &mut self,
        stop: impl Future<Output = ()>,
        mut on_tick: impl FnMut(&mut Tracing, Tick),
    ) -> Result<()> {
        self.ring.poll()?;
        let mut stop = pin!(stop);
        let mut drain_timer = interval(DRAIN_INTERVAL);
        drain_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut second = interval(Duration::from_secs(1));
        second.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let reconcile_every = if self.reconcile_interval.is_zero() {
            Duration::from_secs(365 * 24 * 3600)
        } else {
            self.reconcile_interval
        };
        let mut reconcile = interval_at(Instant::now() + reconcile_every, reconcile_every);
        reconcile.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = &mut stop => break,
                // Timers before the ring buffer: under sustained load the ring is always
                // readable, and a biased select would never get to them.
                _ = second.tick() => {
                    self.drain();
                    self.engine.expire_sites(clock::boot_ns());
                    self.sample();
                    on_tick(self, Tick::Second);
                    give_back_freed_memory();
                }
                _ = reconcile.tick(), if !self.reconcile_interval.is_zero() => self.reconcile(),
                guard = self.ring.readable() => {
                    let mut guard = guard.context("polling the ring buffer")?;
                    guard.clear_ready();
                    self.drain();
                    on_tick(self, Tick::Drained);
                }
                _ = drain_timer.tick() => {
                    self.drain();
                    on_tick(self, Tick::Drained);
                }
            }
        }
        self.drain();
        Ok(())
    }

    /// Compare with /proc and correct; events read in between are accounted for.
    pub fn reconcile(&mut self) {
        self.drain();
        self.engine.begin_reconcile(clock::boot_ns());
        self.drain();
        let fixed = self.engine.finish_reconcile(clock::boot_ns());
        if fixed.added + fixed.removed > 0 {
            log::info!("reconciliation corrected {} added, {} removed", fixed.added, fixed.removed);
        }
    }

    pub fn event_counts(&self) -> EventCounts {
        let kernel = self.tracer.counters();
        EventCounts {
            lost: kernel.lost(),
            stack_errors: kernel.stack_collisions + kernel.stack_errors + kernel.user_stack_unreadable,
            stacks_truncated: self.engine.stacks.counts().truncated,
            stacks_unresolved: self.engine.stacks.counts().unresolved,
            sites_dropped: self.engine.stacks.counts().sites_dropped,
            ..self.engine.counts()
        }
    }

    pub fn corrections(&self) -> Corrections {
        self.engine.corrections()
    }

    pub fn report(&mut self, list_fds: bool) -> Report {
        self.engine.refresh_names();
        let events = self.event_counts();
        let corrections = self.corrections();
        let proc_root: PathBuf = self.engine.proc_root().to_path_buf();
        let filtered = !self.targets.is_empty() || !self.target_cgroups.is_empty();
        let mut cmdlines = std::collections::HashMap::new();
        let tgids: Vec<u32> = self.engine.table.processes().map(|(t, _)| t).collect();
        for tgid in tgids {
            if let Some(cmdline) = self.engine.cmdline(tgid) {
                let cmdline = if self.redact_paths { redact_cmdline(&cmdline) } else { cmdline };
                cmdlines.insert(tgid, cmdline);
            }
        }
        let engine = &self.engine;
        let join = RefCell::new(SocketJoin::new(
            &proc_root,
            std::mem::take(&mut self.socket_inodes),
            self.redact_paths,
        ));
        let mut describe = |tgid: u32, fd: i32, entry: &OpenFd| join.borrow_mut().describe(tgid, fd, entry);
        let mut inspect = |tgid: u32, fd: i32, entry: &OpenFd| join.borrow_mut().facts(tgid, fd, entry);
        let mut process_facts = |tgid: u32| ProcessFacts {
            fd_limit: resources::fd_limit(&proc_root, tgid),
            rss_bytes: resources::rss_bytes(&proc_root, tgid),
            cgroup: resources::process_cgroup_memory(&proc_root, Path::new(resources::CGROUP_ROOT), tgid),
        };
        let frames = |site| engine.stacks.frames(site).map(|f| f.to_vec()).unwrap_or_default();
        let include = |tgid: u32| filtered || engine.stats.active(tgid);
        let report = report::build(ReportInput {
            started_at: self.started_at,
            duration: self.started.elapsed(),
            now_ns: clock::boot_ns(),
            events,
            corrections,
            table: &engine.table,
            stats: &engine.stats,
            frames: &frames,
            include: &include,
            cmdline: &|tgid| cmdlines.get(&tgid).cloned(),
            describe: &mut describe,
            inspect: &mut inspect,
            process_facts: &mut process_facts,
            list_fds,
            exited: engine.exited(),
            history: &self.history,
            min_age: self.min_age,
        });
        // Only the sockets still open stay cached.
        self.socket_inodes = join.into_inner().seen;
        report
    }
}

impl Tracing {
    /// Kernel memory charged to every open socket, by (process, fd): one sock_diag dump, with
    /// socket inodes cached across calls.
    pub fn socket_memory(&mut self) -> HashMap<(u32, i32), u64> {
        let proc_root = self.engine.proc_root().to_path_buf();
        let mut join =
            SocketJoin::new(&proc_root, std::mem::take(&mut self.socket_inodes), self.redact_paths);
        let mut memory = HashMap::new();
        for (tgid, process) in self.engine.table.processes() {
            for (fd, entry) in process.fds.iter().filter(|(_, e)| e.kind == FdKind::Socket) {
                if let Some(bytes) = join.socket_memory(tgid, *fd, entry) {
                    memory.insert((tgid, *fd), bytes);
                }
            }
        }
        self.socket_inodes = join.seen;
        memory
    }

    /// Seconds until `tgid` reaches its descriptor limit at the growth of its open count over
    /// the session; None when it is not growing or has no limit.
    pub fn fd_exhaustion_seconds(&self, tgid: u32) -> Option<f64> {
        let window = self.history.process(tgid)?.fds.window();
        let rate = crate::model::trend::theil_sen(&window).filter(|r| *r > 0.0 && window.len() >= 3)?;
        let open = self.engine.table.process(tgid)?.fds.len() as u64;
        exhaustion_seconds(resources::fd_limit(self.engine.proc_root(), tgid), open, Some(rate))
    }
}

/// Tell the kernel which CPython processes to walk (found or gone since the last call).
fn apply_python_updates(engine: &mut Engine, tracer: &mut Tracer) {
    engine.python.retry_pending(clock::boot_ns());
    for (pid, offsets) in engine.python.take_updates() {
        if let Err(err) = tracer.set_python(pid, offsets) {
            log::warn!("process {pid}: {err:#}: native frames only");
        }
    }
}

/// Open sockets joined with the socket tables of their network namespace, and with their
/// memory from sock_diag, by inode.
struct SocketJoin<'a> {
    proc_root: &'a Path,
    tables: SocketTables,
    known: HashMap<(u32, i32, u64), u64>,
    seen: HashMap<(u32, i32, u64), u64>,
    /// Socket memory by inode: dumped once per report, on the first socket asked about.
    memory: Option<HashMap<u64, sockdiag::SocketMemory>>,
    /// `--redact-paths`: file paths and memfd names are not shown.
    redact_paths: bool,
}

/// What `--redact-paths` shows instead of a path.
pub const REDACTED: &str = "[path redacted]";

/// A command line without its arguments (which are often paths): the program's name only.
pub fn redact_cmdline(cmdline: &str) -> String {
    let program = cmdline.split(' ').next().unwrap_or_default();
    format!("{} [arguments redacted]", program.rsplit('/').next().unwrap_or(program))
}

impl<'a> SocketJoin<'a> {
    /// `known`: socket inodes cached by the last join (`seen` of it).
    fn new(proc_root: &'a Path, known: HashMap<(u32, i32, u64), u64>, redact_paths: bool) -> SocketJoin<'a> {
        SocketJoin {
            proc_root,
            tables: SocketTables::new(proc_root),
            known,
            seen: HashMap::new(),
            memory: None,
            redact_paths,
        }
    }

    fn inode(&mut self, tgid: u32, fd: i32, entry: &OpenFd) -> Option<u64> {
        // The descriptor's open time tells a reused fd number from the socket we cached.
        let key = (tgid, fd, entry.opened_ns);
        let inode = match self.known.get(&key).or_else(|| self.seen.get(&key)) {
            Some(inode) => *inode,
            None => proc::socket_inode(self.proc_root, tgid, fd)?,
        };
        self.seen.insert(key, inode);
        Some(inode)
    }

    fn socket_memory(&mut self, tgid: u32, fd: i32, entry: &OpenFd) -> Option<u64> {
        let inode = self.inode(tgid, fd, entry)?;
        let memory = self.memory.get_or_insert_with(|| {
            sockdiag::dump()
                .inspect_err(|e| log::warn!("socket memory (sock_diag) unavailable: {e}"))
                .unwrap_or_default()
        });
        memory.get(&inode).map(|m| m.buffer_bytes())
    }

    fn socket(&mut self, tgid: u32, fd: i32, entry: &OpenFd) -> Option<&proc::SocketInfo> {
        if entry.kind != FdKind::Socket {
            return None;
        }
        let inode = self.inode(tgid, fd, entry)?;
        self.tables.for_process(tgid).get(inode)
    }

    fn describe(&mut self, tgid: u32, fd: i32, entry: &OpenFd) -> Option<String> {
        if self.redact_paths && matches!(entry.detail, FdDetail::Path(_) | FdDetail::Name(_)) {
            return Some(REDACTED.to_string());
        }
        describe_fd(self.proc_root, &mut self.tables, tgid, fd, entry)
    }

    fn facts(&mut self, tgid: u32, fd: i32, entry: &OpenFd) -> FdFacts {
        match entry.kind {
            FdKind::Socket => {
                let tcp_state = self.socket(tgid, fd, entry).and_then(|s| s.state.clone());
                let socket_memory = self.socket_memory(tgid, fd, entry);
                FdFacts { tcp_state, socket_memory, pinned_bytes: None }
            }
            FdKind::Memfd => FdFacts {
                pinned_bytes: proc::allocated_bytes(self.proc_root, tgid, fd),
                ..FdFacts::default()
            },
            _ => FdFacts::default(),
        }
    }
}

/// Longest path or name shown for one descriptor.
const DETAIL_CHARS: usize = 512;

/// What a person wants to see of one open descriptor: its path, or its socket's addresses.
pub fn describe_fd(
    proc_root: &Path,
    sockets: &mut SocketTables,
    tgid: u32,
    fd: i32,
    entry: &OpenFd,
) -> Option<String> {
    match &entry.detail {
        FdDetail::Path(path) => Some(printable(path, DETAIL_CHARS)),
        FdDetail::Name(name) => Some(format!("memfd:{}", printable(name, DETAIL_CHARS))),
        FdDetail::Pid(pid) => Some(format!("pid {pid}")),
        FdDetail::Socket { .. } | FdDetail::None if entry.kind == crate::model::fd::FdKind::Socket => {
            let inode = proc::socket_inode(proc_root, tgid, fd)?;
            sockets.for_process(tgid).get(inode).map(|s| s.describe())
        }
        _ => None,
    }
}
