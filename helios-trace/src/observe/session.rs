//! A tracing run (ARCHITECTURE.md, "Data flow" 2, 8): attach, load the /proc baseline, then
//! read the ring buffer into the Engine until told to stop, reconciling with /proc on a timer
//! and sampling every site's open count once a second. What the outputs are handed is built
//! beside it: the report's input (report_input.rs) and the exporter's snapshots (export.rs).
use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    path::{Path, PathBuf},
    pin::pin,
    time::{Duration, SystemTime},
};

use anyhow::Result;
use bytes::Bytes;
use helios_trace_common::{
    ChainKey, ChainRules, FirstFrameHint, FrameRule, FrameRuleKey, learned_chains, stack_mode,
};
use tokio::time::{Instant, Interval, MissedTickBehavior, interval, interval_at, sleep};

use crate::{
    model::{
        counts::{EventCounts, ProgramRuns},
        fdtable::{Corrections, TableLimits},
        history::{History, ProcessSample},
    },
    observe::{
        engine::{Engine, StackSource},
        exec_lane::ExecLane,
        procfs::Procfs,
    },
    output::report::build::LastKnown,
    resolve::stacks::Teach,
    sys::{
        cgroups::{self, TargetCgroup},
        checks, clock,
        loader::{LearnedRules, TraceConfig, Tracer},
        own::{give_back_freed_memory, raise_open_files_limit},
        proc::{
            self,
            resources::{self, CgroupMounts},
        },
        ring::{self, Ring},
    },
};

/// How often the engine takes records when no emptier does: after it ended (a panic;
/// `run_until` starts it before its loop, sys/ring.rs). While it runs, the emptier hands the
/// engine what each of its looks took (`Ring::taken`), while its hold has room at most 20 ms
/// after the kernel submitted it (sys/ring.rs `next_look`), and when full once the engine has
/// handled a chunk (`Ring::resume`): a drain of the engine's own on a timer found nothing
/// more, and an idle tracer woke four times at each (the timer's thread, the engine, the
/// emptier for its look, the engine again): BENCHMARKS.md, "The idle tracer's wake-ups".
const DRAIN_INTERVAL: Duration = Duration::from_millis(50);
/// The kernel wakes the emptier once this much is waiting (a quarter of a smaller ring).
/// The emptier's paced looks take about a quarter of it each, so under a steady load the ring
/// never holds this much and the traced calls pay for no wake-up: at 256 KiB each wake-up was
/// an interrupt on a traced call's CPU every ~270 open+close of a tight loop, 960 a second
/// (BENCHMARKS.md, "The reader paced by the rate").
const WAKEUP_BYTES: u64 = 1024 * 1024;
/// The descriptors reconciliation reads from one process's /proc before it handles the records
/// that came meanwhile: ~6 ms of reading at ~6 µs each (BENCHMARKS.md, "Reading /proc"), a
/// small part of what the ring and the emptier hold for a busy node.
const RECONCILE_CHUNK: usize = 1024;

/// Attached programs, the ring buffer and the engine they feed; dropping it detaches.
pub(crate) struct Tracing {
    pub(super) engine: Engine,
    tracer: Tracer,
    ring: Ring,
    /// Probes CPython processes at their exec notices, started with the first `run_until`
    /// (after privileges were dropped); None without Python frames.
    exec_lane: Option<ExecLane>,
    python_frames: bool,
    /// Where /proc is (the host's, for a DaemonSet).
    pub(super) proc_root: PathBuf,
    pub(super) targets: Vec<u32>,
    pub(super) target_cgroups: Vec<PathBuf>,
    /// `--comm` names and `--uid` ids, for the "attached" line.
    pub(super) target_comms: Vec<[u8; 16]>,
    pub(super) target_uids: Vec<u32>,
    pub(super) started_at: SystemTime,
    pub(super) started: Instant,
    reconcile_interval: Duration,
    /// Every site's open count, once a second.
    pub(super) history: History,
    /// How old a growing site's descriptors must be for it to be a suspected leak.
    pub(super) min_age: Duration,
    /// Socket inodes by (process, fd, opened_ns), so a report reads each socket's link once.
    pub(super) socket_inodes: HashMap<(u32, i32, u64), u64>,
    /// The node's memory cgroup hierarchies, seen from the procfs root's pid 1.
    pub(super) cgroups: CgroupMounts,
    /// Processes whose unmeasured sockets the exporter has logged (once each).
    pub(super) unmeasured_logged: std::collections::HashSet<u32>,
    /// `--redact-paths`.
    pub(super) redact_paths: bool,
    /// Heap walks for holders (observe/holders.rs).
    pub(super) holders: super::holders::HolderWalks,
    /// The drain, sampling and reconcile timers, made at the first `run_until` and kept
    /// across its calls: a caller that stops it for a moment (a SIGUSR1 snapshot) must not
    /// restart them, or snapshots more frequent than the reconcile interval would never let a
    /// reconcile come, and each would add a sample to the once-a-second history.
    timers: Option<Timers>,
    /// What was last read of each process while it ran (`run`: `remember_facts`).
    pub(super) last_known: HashMap<u32, LastKnown>,
    /// Read it once a second (`run`, whose report shows processes that exited), or less often
    /// when a read takes long: not before this instant.
    remember_facts: Option<Instant>,
    /// When the processes of receives cut short may be reconciled again (`reconcile_cut_short`).
    cut_short_due: Instant,
}

struct Timers {
    drain: Interval,
    second: Interval,
    reconcile: Interval,
}

impl Timers {
    fn new(reconcile_interval: Duration) -> Timers {
        let mut drain = interval(DRAIN_INTERVAL);
        drain.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut second = interval(crate::model::trend::SAMPLE_EVERY);
        second.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // 0 is off: the branch is disabled, the timer only has to exist.
        let every = if reconcile_interval.is_zero() {
            Duration::from_secs(365 * 24 * 3600)
        } else {
            reconcile_interval
        };
        let mut reconcile = interval_at(Instant::now() + every, every);
        reconcile.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Timers { drain, second, reconcile }
    }
}

impl Teach for LearnedRules {
    fn teach(&mut self, key: FrameRuleKey, rule: Option<FrameRule>) {
        if let Err(err) = self.set(key, rule) {
            // The kernel then keeps sending this chain's window (unless the chain, taught whole
            // in CHAIN_RULES, gives this frame's rule): slower, not wrong.
            log::debug!("process {}: {err:#}", key.tgid);
        }
    }

    fn teach_chain(&mut self, key: ChainKey, chain: Option<&ChainRules>) {
        if let Err(err) = self.set_chain(key, chain) {
            // The kernel then walks this chain with a rule lookup per frame: slower, not wrong.
            log::debug!("process {}: {err:#}", key.tgid);
        }
    }

    fn teach_hint(&mut self, hint: FirstFrameHint) {
        if let Err(err) = self.set_hint(hint) {
            // The kernel then looks this frame's rule up and copies its chains' stack by the
            // page: slower, not wrong.
            log::debug!("process {}: {err:#}", hint.first.tgid);
        }
    }
}

impl StackSource for Tracer {
    fn read_stack(&self, stack_id: u32) -> Option<Vec<u64>> {
        Tracer::read_stack(self, stack_id)
    }

    fn exec_time(&self, tgid: u32) -> u64 {
        Tracer::exec_time(self, tgid)
    }
}

/// Why `run_until` calls back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tick {
    /// A chunk of records was handled (the emptier's chunks, sys/ring.rs: 256 KiB of records,
    /// or one larger record; often: keep it cheap). Within a drain, not only after it: one
    /// drain may handle a whole ring and the emptier's hold (32 MiB by default), and what a
    /// command keeps of them must be taken in as they come (`drain_then`).
    Drained,
    /// A second passed and the sites were sampled.
    Second,
}

/// The default of `--min-age`.
pub(crate) const DEFAULT_MIN_AGE: Duration = Duration::from_secs(10);

/// What a tracing run is asked to do: the command line's tracing options as the commands turn
/// them into settings (commands/mod.rs).
#[derive(Clone, Debug)]
pub(crate) struct TraceSettings {
    /// Only these processes, and the children they fork after the start.
    pub(crate) pids: Vec<u32>,
    /// Only processes in or below these cgroup v2 directories.
    pub(crate) cgroups: Vec<PathBuf>,
    /// Only processes with these names (`helios_trace_common::comm_key`), running as these
    /// users (real uids), and what they fork: matched at the start, then at each record.
    pub(crate) comms: Vec<[u8; 16]>,
    pub(crate) uids: Vec<u32>,
    /// How the kernel captures user stacks: `helios_trace_common::stack_mode`.
    pub(crate) user_stack_mode: u32,
    /// Bytes of user stack per call with `stack_mode::DWARF`.
    pub(crate) stack_window: u32,
    /// With `stack_mode::DWARF`: `helios_trace_common::learned_chains`.
    pub(crate) learned_chains: u32,
    /// Walk the Python frames of the CPython processes recognised.
    pub(crate) python_frames: bool,
    /// Compare the tables with /proc this often (zero: never).
    pub(crate) reconcile_interval: Duration,
    pub(crate) ring_buffer_bytes: u32,
    /// `--redact-paths`.
    pub(crate) redact_paths: bool,
    pub(crate) limits: TableLimits,
    /// Call sites whose frames are kept at once (`--max-stacks`).
    pub(crate) max_stacks: usize,
    /// How long a call site nothing holds is remembered (`--retention`).
    pub(crate) retention: Duration,
    /// Keep the engine's transitions for an exporter (`serve`) from the first record on: the
    /// baseline already handles records.
    pub(crate) keep_transitions: bool,
}

/// When a task that began at `started`, with this thread's CPU time at `cpu`, may run again:
/// a second after it began at the soonest, and so that it takes at most 5% of a CPU (20 times
/// the CPU time it took). CPU time, not wall time: on a busy machine the task waits for a CPU,
/// and counting the wait would delay the next beyond what it costs.
fn paced(started: Instant, cpu: Duration) -> Instant {
    started + (clock::thread_cpu().saturating_sub(cpu) * 20).max(Duration::from_secs(1))
}

impl Tracing {
    /// Attach the programs and load what is already open (`load_baseline`); `after_chunk` runs
    /// after each chunk of records handled meanwhile (as `run_until`'s `Tick::Drained`). Before
    /// privileges are dropped: a process's first sight reads its modules through
    /// /proc/PID/map_files (CAP_SYS_ADMIN) and puts uprobes on its libuv.
    pub(crate) fn start(
        args: &TraceSettings,
        proc_root: &Path,
        after_chunk: &mut dyn FnMut(&mut Tracing),
    ) -> Result<Tracing> {
        let cgroups: Vec<TargetCgroup> = args
            .cgroups
            .iter()
            .map(|dir| cgroups::resolve(dir))
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)?;
        // Those already running: targets by pid from the start, their other threads (whatever
        // their names) and children included, as the kernel makes those it matches later.
        let matched = proc::matching(proc_root, &args.comms, &args.uids);
        let own = std::process::id();
        let targets: Vec<u32> =
            args.pids.iter().chain(matched.iter().filter(|p| **p != own)).copied().collect();
        let config = TraceConfig {
            targets: targets.clone(),
            target_cgroups: cgroups.iter().map(|c| c.id).collect(),
            target_comms: args.comms.clone(),
            target_uids: args.uids.clone(),
            user_stack_mode: args.user_stack_mode,
            stack_window: args.stack_window,
            ring_buffer_bytes: args.ring_buffer_bytes,
            wakeup_bytes: WAKEUP_BYTES.min(args.ring_buffer_bytes as u64 / 4),
            learned_chains: args.learned_chains,
        };
        let (mut tracer, ring) = Tracer::start(&config)?;
        // Ours too, and never traced: not in the baseline either.
        let maker = tracer.uprobe_maker_pid();
        let ours = |pid: &u32| *pid == own || Some(*pid) == maker;
        let missing = checks::missing_proc_capabilities(checks::own_capabilities());
        if !missing.is_empty() {
            log::warn!(
                "without {}, descriptors of other users' processes cannot be read from /proc",
                missing.join(" and ")
            );
        }
        if let Err(err) = raise_open_files_limit() {
            log::warn!("cannot raise the open files limit ({err}): stacks of many processes may go unnamed");
        }
        let started_at = SystemTime::now();
        let start_ns = clock::boot_ns();
        let mut engine = Engine::new(proc_root, Box::new(Procfs::new(proc_root)), args.limits);
        engine.limit_sites(args.max_stacks);
        if args.user_stack_mode == stack_mode::DWARF
            && args.learned_chains != learned_chains::OFF
            && let Some(rules) = tracer.take_learned_rules()
        {
            engine.learn_chains(Box::new(rules));
        }
        engine.set_retention(args.retention.as_nanos().try_into().unwrap_or(u64::MAX));
        engine.enable_python(args.python_frames);
        if args.keep_transitions {
            engine.keep_transitions();
        }
        // Attach first, then scan: every descriptor is either in the scan or in an event after
        // it (FdTable::insert_observed explains why the overlap is harmless).
        let everything =
            args.pids.is_empty() && cgroups.is_empty() && args.comms.is_empty() && args.uids.is_empty();
        let pids: Vec<u32> = if everything {
            proc::pids(proc_root).into_iter().filter(|p| !ours(p)).collect()
        } else {
            let mut pids = targets;
            pids.extend(cgroups.iter().flat_map(|c| cgroups::processes(&c.path)).filter(|p| !ours(p)));
            pids.sort_unstable();
            pids.dedup();
            pids
        };
        // Emptied by a thread of its own once `run_until` runs (after privileges were dropped,
        // which attaching before any thread exists allows), holding as much again as the ring
        // (sys/ring.rs; model/sizing.rs counts both); until then by the engine alone.
        let ring = Ring::new(ring, args.ring_buffer_bytes as usize, config.wakeup_bytes as usize)?
            .keeping_pairs(config.keeps_pairs());
        let mut tracing = Tracing {
            engine,
            tracer,
            ring,
            exec_lane: None,
            python_frames: args.python_frames,
            proc_root: proc_root.to_path_buf(),
            targets: args.pids.clone(),
            target_cgroups: args.cgroups.clone(),
            target_comms: args.comms.clone(),
            target_uids: args.uids.clone(),
            started_at,
            started: Instant::now(),
            reconcile_interval: args.reconcile_interval,
            history: History::default(),
            min_age: DEFAULT_MIN_AGE,
            socket_inodes: HashMap::new(),
            cgroups: CgroupMounts::find(proc_root),
            unmeasured_logged: Default::default(),
            redact_paths: args.redact_paths,
            holders: Default::default(),
            timers: None,
            last_known: HashMap::new(),
            remember_facts: None,
            cut_short_due: Instant::now(),
        };
        tracing.load_baseline(&pids, start_ns, after_chunk);
        Ok(tracing)
    }

    /// What `pids` held before tracing began, read from /proc one process at a time in
    /// chunks of `RECONCILE_CHUNK` descriptors (as reconciliation reads them), the records that
    /// came meanwhile handled after each chunk (ARCHITECTURE.md, "Data flow" 8): the ring has
    /// to hold only what comes during one chunk, where a node's read whole (seconds, with a
    /// million descriptors) overflowed it. A process a record shows first, and a child that
    /// copied a table held in part, are read so in their turn too (`Engine::next_unread`).
    /// Found descriptors are stamped `start_ns`; `after_chunk` runs after each chunk of
    /// records handled meanwhile.
    fn load_baseline(&mut self, pids: &[u32], start_ns: u64, after_chunk: &mut dyn FnMut(&mut Tracing)) {
        self.engine.start_baseline(start_ns);
        let mut listed = pids.iter().copied();
        while let Some(pid) = listed.next().or_else(|| self.engine.next_unread()) {
            if !self.engine.begin_baseline(pid, clock::boot_ns()) {
                continue;
            }
            while !self.engine.read_reconcile(RECONCILE_CHUNK, clock::boot_ns()) {
                self.drain_then(after_chunk);
            }
            self.drain_then(after_chunk);
            self.engine.finish_reconcile(clock::boot_ns());
        }
        self.engine.end_baseline();
        apply_runtime_updates(&mut self.engine, &mut self.tracer);
    }

    /// How old a growing site's descriptors must be for it to be a suspected leak (`--min-age`).
    pub(crate) fn set_min_age(&mut self, min_age: Duration) {
        self.min_age = min_age;
    }

    /// Keep up to `limit` exited processes for the report, with what they had open at their
    /// exit (`run`, whose command has exited by the time of the report).
    pub(crate) fn retain_exited(&mut self, limit: usize) {
        self.engine.retain_exited(limit);
        self.remember_facts = (limit > 0).then(Instant::now);
    }

    /// What is traced, for the "attached" line: "all processes", "pid 12, 14", "cgroup DIR",
    /// "comm NAME", "uid UID".
    pub(crate) fn describe_targets(&self) -> String {
        let mut parts = Vec::new();
        if !self.targets.is_empty() {
            let pids: Vec<String> = self.targets.iter().map(u32::to_string).collect();
            parts.push(format!("pid {}", pids.join(", ")));
        }
        for dir in &self.target_cgroups {
            parts.push(format!("cgroup {}", dir.display()));
        }
        for comm in &self.target_comms {
            let name = comm.split(|b| *b == 0).next().unwrap_or_default();
            parts.push(format!("comm {}", String::from_utf8_lossy(name)));
        }
        for uid in &self.target_uids {
            parts.push(format!("uid {uid}"));
        }
        if parts.is_empty() { "all processes".to_string() } else { parts.join("; ") }
    }

    /// Sample every site's open count now (once a second, from `run_until`).
    pub(crate) fn sample(&mut self) {
        let exited: Vec<u32> = self.engine.exited().iter().map(|e| e.tgid).collect();
        let proc_root = &self.proc_root;
        let cgroups = &self.cgroups;
        let resources = |tgid: u32| ProcessSample {
            rss_bytes: resources::rss_bytes(proc_root, tgid),
            cgroup_memory_bytes: cgroups.memory(tgid).ok().map(|m| m.current),
        };
        self.history.sample(
            clock::boot_ns(),
            self.engine.table(),
            self.engine.stats(),
            |tgid| exited.contains(&tgid),
            resources,
        );
    }

    /// What the caps kept out so far: (processes, descriptors, new call sites).
    pub(crate) fn dropped(&self) -> (u64, u64, u64) {
        let dropped = self.engine.table().dropped();
        (dropped.processes, dropped.fds, self.engine.stack_counts().sites_dropped)
    }

    pub(crate) fn attached(&self) -> &[String] {
        self.tracer.attached()
    }

    /// `pid`, held at its gate (`helios-trace run`'s command), is about to exec `program`:
    /// a CPython known before it runs has its frames walked from its first line.
    pub(crate) fn before_exec(&mut self, pid: u32, program: &std::path::Path) {
        self.engine.python_before_exec(pid, program);
        self.engine.libuv_before_exec(program);
        apply_runtime_updates(&mut self.engine, &mut self.tracer);
    }

    /// Handle every record submitted so far.
    pub(crate) fn drain(&mut self) {
        self.drain_then(&mut |_| {});
    }

    /// `drain`, calling `after_chunk` after each chunk of records. The exporter takes in the
    /// engine's transitions there: after the engine's thread had waited (for a CPU), one drain
    /// handled a ring and the emptier's hold, and the transitions kept until its end reached
    /// 157,000 (a 6 MB vector, grown by doubling) in a flood; memory stayed 7 and 8 MB up after
    /// it in two CI runs (`the_exporter_answers_scrapes_through_a_flood_and_heals`,
    /// tests/integration/robustness.rs).
    fn drain_then(&mut self, after_chunk: &mut dyn FnMut(&mut Tracing)) {
        let chunks = self.ring.take();
        self.handle_then(chunks, after_chunk);
    }

    /// `drain_then` for what the kernel sent, not the calls it keeps (`Ring::take_sent`): the
    /// short timers' drains (every millisecond while a CPython starts; every 50 ms without an
    /// emptier), whose asks would send the kept opens of every process 20 times a second and
    /// more, each then no longer matched with its close in the kernel.
    fn drain_sent_then(&mut self, after_chunk: &mut dyn FnMut(&mut Tracing)) {
        let chunks = self.ring.take_sent();
        self.handle_then(chunks, after_chunk);
    }

    /// Handle `chunks` as `drain_then` does: what the ring's emptier took (sys/ring.rs), and, by
    /// `drain_then`, what was still in the ring.
    fn handle_then(&mut self, chunks: VecDeque<Bytes>, after_chunk: &mut dyn FnMut(&mut Tracing)) {
        // Chunk by chunk: each goes back to the emptier's memory once handled. The time after
        // the take is later than every record in it was submitted (Engine::records_taken).
        self.engine.records_taken(clock::boot_ns());
        for chunk in chunks {
            for record in ring::records(&chunk) {
                self.engine.handle_record(record, &self.tracer);
                // A CPython just exec'd must reach the kernel before it runs Python code, not
                // at the end of a drain that may resolve many stacks first (resolve/python).
                if self.engine.python_waiting(clock::boot_ns) {
                    apply_runtime_updates(&mut self.engine, &mut self.tracer);
                }
            }
            drop(chunk);
            // Its room back to the emptier at once, when it paused with its hold full (a
            // drain at the tick, a report or a reconciliation may take a ring and the hold).
            self.ring.resume();
            after_chunk(self);
        }
        apply_runtime_updates(&mut self.engine, &mut self.tracer);
    }

    /// Start the threads that read beside the engine: the ring's emptier (sys/ring.rs) and the
    /// exec lane (observe/exec_lane.rs), unless they run. After privileges were dropped (the threads
    /// inherit the reduced sets), and before a command says it is attached: `run_until` started
    /// them at its first poll, and a snapshot (SIGUSR1) that came before that poll was served and
    /// tracing went on without an emptier for as long as the engine was held up (a CI run lost
    /// 215 records in `lifecycle::a_busy_engine_loses_nothing_that_the_ring_and_its_emptier_can_hold`).
    pub(crate) fn start_readers(&mut self) -> Result<()> {
        self.ring.start_emptier()?;
        if self.python_frames
            && self.exec_lane.is_none()
            && let Some(notices) = self.tracer.take_exec_notices()
        {
            let (probes, kernel) = (self.engine.exec_probes(), self.tracer.python_map());
            self.exec_lane = Some(ExecLane::start(notices, probes, kernel, self.proc_root.clone())?);
        }
        Ok(())
    }

    /// Run until `stop` completes; `on_tick` runs after each chunk of records a drain handled
    /// (`Tick::Drained`) and once a second after the sites were sampled (`Tick::Second`: the
    /// exporter publishes its snapshot there). Ends with a final drain.
    pub(crate) async fn run_until(
        &mut self,
        stop: impl Future<Output = ()>,
        mut on_tick: impl FnMut(&mut Tracing, Tick),
    ) -> Result<()> {
        self.start_readers()?;
        let mut stop = pin!(stop);
        loop {
            let timers = self.timers.get_or_insert_with(|| Timers::new(self.reconcile_interval));
            let python_due = self
                .engine
                .python_next_due()
                .map(|due| Duration::from_nanos(due.saturating_sub(clock::boot_ns())));
            tokio::select! {
                biased;
                () = &mut stop => break,
                // Timers before the ring buffer: under sustained load the ring is always
                // readable, and a biased select would never get to them.
                _ = timers.second.tick() => {
                    self.drain_then(&mut |t| on_tick(t, Tick::Drained));
                    self.reconcile_cut_short(&mut |t| on_tick(t, Tick::Drained));
                    self.engine.expire_held_closes(clock::boot_ns());
                    self.engine.expire_sites(clock::boot_ns());
                    self.sample();
                    if let Some(due) = self.remember_facts
                        && Instant::now() >= due
                    {
                        // A command with many descriptors makes each read long (a readlink and
                        // a socket lookup per descriptor): paced to 5% of a CPU. CPU time, not
                        // wall time: counting the wait for a CPU put the next read past a short
                        // command's exit.
                        let (started, cpu) = (Instant::now(), clock::thread_cpu());
                        self.remember_facts();
                        self.remember_facts = Some(paced(started, cpu));
                    }
                    on_tick(self, Tick::Second);
                    give_back_freed_memory();
                }
                _ = timers.reconcile.tick(), if !self.reconcile_interval.is_zero() => {
                    let every = self.engine.reconcile_targets();
                    self.reconcile(every, &mut |t| on_tick(t, Tick::Drained));
                }
                // Only what the emptier took: asking it for another look each time would
                // have it look without pause under load instead of at its paced looks.
                () = self.ring.taken() => {
                    let chunks = self.ring.take_taken();
                    self.handle_then(chunks, &mut |t| on_tick(t, Tick::Drained));
                }
                _ = timers.drain.tick(), if !self.ring.emptied() => {
                    self.drain_sent_then(&mut |t| on_tick(t, Tick::Drained));
                }
                // A CPython exec'd moments ago whose runtime is not mapped yet is looked for
                // every millisecond (resolve/python: no startup gap), not at the drain timer.
                _ = sleep(python_due.unwrap_or_default()), if python_due.is_some() => {
                    self.drain_sent_then(&mut |t| on_tick(t, Tick::Drained));
                }
            }
        }
        self.drain();
        Ok(())
    }

    /// Compare `pids` with /proc and correct; events read in between are accounted for (and
    /// `after_chunk` called as `drain_then` does). One process at a time, each read in chunks
    /// of `RECONCILE_CHUNK` descriptors, handling the records that came meanwhile after each:
    /// /proc costs microseconds a descriptor (BENCHMARKS.md, "Reading /proc": 1.5 million once
    /// took 50 s, one process's million ~6 s), and a read that long kept the ring waiting past
    /// what the emptier holds, and lost what came meanwhile.
    fn reconcile(&mut self, pids: Vec<u32>, after_chunk: &mut dyn FnMut(&mut Tracing)) {
        self.drain_then(after_chunk);
        let (mut added, mut removed) = (0, 0);
        for pid in pids {
            self.engine.begin_reconcile(pid, clock::boot_ns());
            while !self.engine.read_reconcile(RECONCILE_CHUNK, clock::boot_ns()) {
                self.drain_then(after_chunk);
            }
            self.drain_then(after_chunk);
            let fixed = self.engine.finish_reconcile(clock::boot_ns());
            (added, removed) = (added + fixed.added, removed + fixed.removed);
        }
        if added + removed > 0 {
            log::info!("reconciliation corrected {added} added, {removed} removed");
        }
    }

    /// What receives cut short did not list (model/counts.rs, `receives_cut_short`): their
    /// processes reconciled at a once-a-second tick, paced to 5% of a CPU (`paced`: the records
    /// handled between a pass's chunks counted in its time). A Unix datagram server whose
    /// batches are larger than the kernel walks is flagged at each one, having passed
    /// descriptors or not, and a process can hold a million (~6 s a pass). With reconciliation
    /// off they are dropped, so that none is kept.
    fn reconcile_cut_short(&mut self, after_chunk: &mut dyn FnMut(&mut Tracing)) {
        if self.reconcile_interval.is_zero() {
            self.engine.take_cut_short();
            return;
        }
        if Instant::now() < self.cut_short_due {
            return;
        }
        let cut_short = self.engine.take_cut_short();
        if cut_short.is_empty() {
            return;
        }
        let (started, cpu) = (Instant::now(), clock::thread_cpu());
        self.reconcile(cut_short, after_chunk);
        self.cut_short_due = paced(started, cpu);
    }

    /// Runs and run time of each kernel program (counted while the kernel's BPF statistics
    /// are on).
    pub(crate) fn program_runs(&self) -> Vec<ProgramRuns> {
        self.tracer.program_runs()
    }

    pub(crate) fn event_counts(&self) -> EventCounts {
        let kernel = self.tracer.counters();
        EventCounts {
            lost: kernel.lost(),
            stack_errors: kernel.stack_collisions + kernel.stack_errors,
            stacks_truncated: self.engine.stack_counts().truncated,
            stacks_unresolved: self.engine.stack_counts().unresolved,
            chains_learned: self.engine.stack_counts().chains_learned,
            chains_cached: self.engine.stack_counts().chains_cached,
            chains_checked: self.engine.stack_counts().chains_checked,
            chains_mismatched: self.engine.stack_counts().chains_mismatched,
            sites_dropped: self.engine.stack_counts().sites_dropped,
            python_frames_missed: self.engine.python_missed(),
            closes_late: self.engine.table().held_closes().resolved,
            closes_taken_for_lost: self.engine.table().held_closes().lost,
            kernel: kernel.shown,
            ..self.engine.counts()
        }
    }

    pub(crate) fn corrections(&self) -> Corrections {
        self.engine.corrections()
    }
}

/// Tell the kernel which CPython processes to walk, the unwind rules learned, and which Go
/// programs' goroutine creators to read (found or gone since the last call).
fn apply_runtime_updates(engine: &mut Engine, tracer: &mut Tracer) {
    for (pid, offsets) in engine.python_updates(clock::boot_ns()) {
        if let Err(err) = tracer.set_python(pid, offsets) {
            log::warn!("process {pid}: {err:#}: native frames only");
        }
    }
    for (pid, offsets) in engine.go_updates() {
        log::debug!("process {pid}: goroutine creators {offsets:?}");
        if let Err(err) = tracer.set_go(pid, offsets) {
            log::warn!("process {pid}: {err:#}: its goroutines' creators are not read");
        }
    }
    for target in engine.libuv_updates() {
        match tracer.attach_libuv(&target.path, &target.entries.init, target.entries.connect) {
            Ok(true) => log::debug!("libuv uprobes on {}", target.path.display()),
            Ok(false) => {}
            // Without the capability for uprobes (sys/loader.rs, `attach_libuv`): said once a
            // session, each file at debug level.
            Err(err) => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    log::warn!(
                        "cannot put libuv's uprobes on a Node.js ({err:#}; they need CAP_SYS_ADMIN, CAP_PERFMON before Linux 6.16): the TCP connections it makes are told by node:net, not by the call that asked for them (README, \"Node.js\")"
                    )
                });
                log::debug!("{err:#}");
            }
        }
    }
}
