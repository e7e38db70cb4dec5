//! The userspace pipeline between the ring buffer and the outputs (ARCHITECTURE.md, "Data
//! flow" 3-5, 8): decode a record, resolve its stack to a site, apply it to the FdTable, count
//! it per site; plus the /proc baseline at start and the periodic reconciliation that heals
//! lost events. The ad-hoc session and the exporter both drive one Engine; neither touches the
//! table directly.
//!
//! The engine reads nothing itself: what /proc says comes through a [`ProcSource`] and
//! captured stacks through a [`StackSource`], so its tests need no procfs and no kernel.
use std::{collections::BTreeMap, io, path::Path, sync::Arc};

use foldhash::{HashMap, HashMapExt as _, HashSet, HashSetExt as _};
use helios_trace_common::{GoOffsets, PythonOffsets, chain_flags};

use log::debug;

use crate::{
    model::{
        counts::EventCounts,
        event::{CapturedStack, Event, Op, PAIRED_FD, StackIds, WalkedChain},
        exited::ExitedProcess,
        fd::{CloseReason, FdDetail, FdKind, SiteId},
        fdtable::{Corrections, FdChange, FdChunk, FdTable, ObservedFd, Process, TableLimits, Transition},
        frame::{self, Frame, SiteOrigin},
        handles::TcpHandles,
        kept::Kept,
        sites::SiteStats,
    },
    resolve::{
        goroutines::{GoImage, GoProcesses},
        modules::{
            libuv::{self, LibuvFiles, LibuvTarget},
            maps::FileKey,
        },
        python::PythonProcesses,
        stacks::{StackCounts, StackRegistry, Teach},
    },
    sys::{
        decode::{self, Decoded, HandleRecord, HandleStep, PythonFrames, RecordStack, ShadowChain},
        syscalls::SyscallTable,
    },
};

/// Where captured stacks are read from (the kernel's stack map, or a test's table).
pub(crate) trait StackSource {
    fn read_stack(&self, stack_id: u32) -> Option<Vec<u64>>;
    /// The time of the process's last exec the kernel keeps (`EXEC_TIMES`), 0 for none: what it
    /// keys the image's Go offsets and unwind rules by.
    fn exec_time(&self, tgid: u32) -> u64;
}

#[cfg(test)]
pub(crate) mod testing;

/// Every descriptor a process has open, as /proc shows it, by fd.
pub(crate) type OpenFds = BTreeMap<i32, ObservedFd>;

/// What the engine asks /proc (ARCHITECTURE.md, "Data flow" 8): the baseline, what a process
/// first seen through an event already holds, descriptors received through SCM_RIGHTS, names,
/// and reconciliation. The daemon answers from the procfs (observe/procfs.rs), tests from
/// tables of their own.
pub(crate) trait ProcSource {
    /// The descriptors `tgid` has open numbered `from` or above, up to `max` of them (an error
    /// when it is gone or cannot be read), the close-on-exec flag read only where
    /// `flag_wanted(fd)` (false elsewhere; the rest is cheap beside it).
    fn open_fds(
        &mut self,
        tgid: u32,
        from: i32,
        max: usize,
        flag_wanted: &dyn Fn(i32) -> bool,
    ) -> io::Result<FdChunk>;
    /// A reader for the baseline: like [`Self::open_fds`] with every flag read (`tgid`, `from`,
    /// `max`), with what the socket tables of the process's network namespace say of its
    /// sockets (each namespace's read once while the reader lives).
    fn baseline(&self) -> Box<BaselineReader>;
    /// One descriptor of `tgid`, if it is open.
    fn open_fd(&mut self, tgid: u32, fd: i32) -> Option<ObservedFd>;
    fn exists(&mut self, tgid: u32) -> bool;
    /// It exists and is neither a zombie nor dead.
    fn alive(&mut self, tgid: u32) -> bool;
    /// The command name, printable.
    fn comm(&mut self, tgid: u32) -> Option<String>;
    /// The command line, printable; `None` for kernel threads and zombies.
    fn cmdline(&mut self, tgid: u32) -> Option<String>;
}

/// What [`ProcSource::baseline`] gives: the chunk of `tgid`'s descriptors from `from`, `max` at most.
pub(crate) type BaselineReader = dyn FnMut(u32, i32, usize) -> io::Result<FdChunk>;

/// The baseline while it is read (`Engine::start_baseline` to `Engine::end_baseline`).
struct Baseline {
    /// Its reader, with the socket tables it keeps.
    read: Box<BaselineReader>,
    /// The session's start: what the baseline finds is stamped with it.
    found_ns: u64,
}

/// A reconciliation pass over one process, from the start of its /proc read to the comparison:
/// events that arrive meanwhile touch descriptors whose two views may honestly differ, so
/// those are left alone.
struct PendingReconcile {
    tgid: u32,
    started_ns: u64,
    /// What /proc showed so far; `None` once the process is gone or its read failed (a read
    /// cut short would look like closes): nothing is corrected then.
    observed: Option<OpenFds>,
    /// The descriptor number the read goes on from; `None` once it is complete.
    next_fd: Option<i32>,
    touched: HashSet<i32>,
    /// The descriptors whose close-on-exec flag was read (the table lacked them at the read).
    flag_read: HashSet<i32>,
    /// A baseline read (`Engine::begin_baseline`): each chunk's finds are added at once under
    /// `before-trace`, stamped with the baseline's start (`Baseline::found_ns`); nothing is
    /// removed and nothing counts as a correction.
    baseline: bool,
    /// Pairs the kernel matched at several numbers came for the process during the pass
    /// (`Engine::handle_pairs`): their numbers are not known (they are applied at `PAIRED_FD`),
    /// so none can be marked touched, and a number /proc showed may have been one of theirs:
    /// the pass adds nothing. (Pairs all at one number mark it touched instead.)
    paired: bool,
}

/// Threads with walked Python frames whose descriptor record has not come yet, before the
/// ones older than a second are dropped (their descriptor record was lost).
const MAX_WALKED_PENDING: usize = 4096;

pub(crate) struct Engine {
    table: FdTable,
    stats: SiteStats,
    stacks: StackRegistry,
    /// CPython processes: where their frames are, and the names of walked frames.
    python: PythonProcesses,
    /// The Python frames of each thread's descriptor record still to come, by tid. Keyed, not
    /// one slot: the kernel submits the two records one after the other, but another CPU's
    /// records can land between them in the shared ring buffer.
    walked: HashMap<u32, PythonFrames>,
    /// `--learned-chains shadow`: the kernel's chain of each thread's window record that
    /// follows, by thread, as `walked` is kept (a test mode: when full, all are dropped).
    shadows: HashMap<u32, ShadowChain>,
    /// When the records being handled were taken from the ring (`records_taken`): later than
    /// each was submitted. A close's record has no time of its own (`CLOSE_NOT_TIMED`).
    batch_taken_ns: u64,
    /// Go programs whose goroutines' creators the kernel reads.
    go: GoProcesses,
    /// libuv's TCP handles, and the sockets made for them on a later tick (Node.js).
    handles: TcpHandles,
    /// Files with libuv, for the kernel's uprobes.
    libuv: LibuvFiles,
    syscalls: SyscallTable,
    proc: Box<dyn ProcSource>,
    cmdlines: HashMap<u32, Option<String>>,
    counts: EventCounts,
    /// Decoded records by [`Op::index`], and those that changed nothing tracked.
    by_type: [u64; Op::NAMES.len()],
    untracked: u64,
    corrections: Corrections,
    pending: Option<PendingReconcile>,
    /// The baseline while it is read: from `start_baseline` to `end_baseline`.
    baseline: Option<Baseline>,
    /// Processes the table holds only in part while the baseline is read, to be read in their
    /// turn (`begin_baseline`): seen first through a record, or forked by such a process or by
    /// the one being read (they copied a table read in part).
    unread: HashSet<u32>,
    /// Processes with a receive cut short since `take_cut_short`.
    cut_short: HashSet<u32>,
    /// Reused across events to avoid an allocation per record.
    scratch: Vec<Transition>,
    /// Everything that happened since the last `take_transitions` (for the exporter).
    keep_transitions: bool,
    kept: Vec<Kept>,
    /// Keep at most this many exited processes (oldest dropped first); 0: none.
    retain_exited: usize,
    /// How long a call site nothing holds is remembered (`--retention`).
    retention_ns: u64,
    exited: Vec<ExitedProcess>,
    /// The table of a process about to be removed, until its ProcessExited transition.
    exiting: Option<(u32, Process)>,
}

impl Engine {
    /// `proc_root`: where resolve/ reads the traced processes' maps, binaries and memory;
    /// `proc`: what the engine itself asks /proc.
    pub(crate) fn new(proc_root: &Path, proc: Box<dyn ProcSource>, limits: TableLimits) -> Engine {
        Engine {
            table: FdTable::with_limits(limits),
            stats: SiteStats::default(),
            stacks: StackRegistry::new(proc_root),
            python: PythonProcesses::new(proc_root),
            walked: HashMap::new(),
            shadows: HashMap::new(),
            batch_taken_ns: 0,
            go: GoProcesses::default(),
            handles: TcpHandles::default(),
            libuv: LibuvFiles::default(),
            syscalls: SyscallTable::native(),
            proc,
            cmdlines: HashMap::new(),
            counts: EventCounts::default(),
            by_type: [0; Op::NAMES.len()],
            untracked: 0,
            corrections: Corrections::default(),
            pending: None,
            baseline: None,
            unread: HashSet::new(),
            cut_short: HashSet::new(),
            scratch: Vec::new(),
            keep_transitions: false,
            kept: Vec::new(),
            retain_exited: 0,
            retention_ns: u64::MAX,
            exited: Vec::new(),
            exiting: None,
        }
    }

    /// Keep up to `limit` exited processes with what they had open at their exit.
    pub(crate) fn retain_exited(&mut self, limit: usize) {
        self.retain_exited = limit;
    }

    /// Teach `teacher` (the kernel) the rules of the call chains unwound here
    /// (`--learned-chains`), each the moment it is learned (resolve/stacks.rs, `Teach`).
    pub(crate) fn learn_chains(&mut self, teacher: Box<dyn Teach>) {
        self.stacks.learn_chains(teacher);
    }

    /// Remember the frames of at most `max_sites` call sites at once (`--max-stacks`).
    pub(crate) fn limit_sites(&mut self, max_sites: usize) {
        self.stacks.limit_sites(max_sites);
    }

    /// Look for CPython processes and name their walked frames (`--python-frames auto`, with
    /// user stacks).
    pub(crate) fn enable_python(&mut self, on: bool) {
        self.python.enable(on);
    }

    /// What the exec lane fills (observe/exec_lane.rs): CPython processes probed at their
    /// exec notices, taken at their exec records.
    pub(crate) fn exec_probes(&self) -> std::sync::Arc<crate::resolve::python::ExecProbes> {
        self.python.exec_probes()
    }

    /// `pid`, held before its exec, is about to exec `program` (resolve/python,
    /// `before_exec`).
    pub(crate) fn python_before_exec(&mut self, pid: u32, program: &std::path::Path) {
        self.python.before_exec(pid, program);
    }

    /// When the Python probe has a retry due (a CPython whose runtime is not mapped yet, or not
    /// checked yet), boot-clock ns.
    pub(crate) fn python_next_due(&self) -> Option<u64> {
        self.python.next_due()
    }

    /// Whether the Python probe has offsets for the kernel, or a retry due by `now_ns()`.
    pub(crate) fn python_waiting(&self, now_ns: impl FnOnce() -> u64) -> bool {
        self.python.waiting(now_ns)
    }

    /// Descriptors opened by running CPython processes that got no Python frames
    /// (resolve/python `missed`).
    pub(crate) fn python_missed(&self) -> u64 {
        self.python.missed()
    }

    /// What the kernel's `PYTHON_PROCS` map must learn since the last call (CPython processes
    /// found or gone), after probing again those whose interpreter was still starting.
    pub(crate) fn python_updates(&mut self, now_ns: u64) -> Vec<(u32, Option<PythonOffsets>)> {
        self.python.retry_pending(now_ns);
        self.python.take_updates()
    }

    /// What the kernel's `GO_PROCS` map must learn since the last call (Go programs found,
    /// or left by an exec).
    pub(crate) fn go_updates(&mut self) -> Vec<(u32, Option<GoOffsets>)> {
        self.go.take_updates()
    }

    /// Files with libuv found since the last call, for the kernel's uprobes.
    pub(crate) fn libuv_updates(&mut self) -> Vec<LibuvTarget> {
        self.libuv.take()
    }

    /// `run`'s command, before its exec: its executable, if it has libuv, to be attached
    /// while the tracer still may (sys/loader.rs, `attach_libuv`).
    pub(crate) fn libuv_before_exec(&mut self, program: &Path) {
        use std::os::unix::fs::MetadataExt as _;
        let Ok(metadata) = std::fs::metadata(program) else { return };
        let dev = metadata.dev();
        let key = FileKey {
            dev: (u64::from(libc::major(dev)) << 32) | u64::from(libc::minor(dev)),
            inode: metadata.ino(),
        };
        match libuv::entries_of_file(program) {
            Ok(Some(entries)) => self.libuv.before_exec(program, key, entries),
            Ok(None) => {}
            Err(err) => debug!("{}: {err}", program.display()),
        }
    }

    /// Read `tgid`'s maps while it surely runs (a short-lived process still resolves), whether
    /// it is a Go program whose goroutines' creators the kernel can read, and whether it has
    /// libuv (Node.js). `exec_ns`: the time of the exec record of the image read (0 for one
    /// exec'd before tracing began).
    fn capture(&mut self, tgid: u32, exec_ns: u64) {
        self.stacks.capture_maps(tgid);
        self.stacks.set_image_time(tgid, exec_ns);
        let module = self.stacks.executable(tgid);
        let go = module.as_ref().and_then(|m| m.go.as_ref());
        let go = go.map(|table| GoImage { version: table.version(), offsets: table.goroutine_offsets() });
        self.go.seen(tgid, exec_ns, go);
        for module in module.into_iter().chain(self.stacks.libuv_libraries(tgid)) {
            self.libuv.seen(&module);
        }
    }

    /// A libuv TCP handle's step (model/handles.rs).
    fn handle_libuv(&mut self, record: HandleRecord, stack: &RecordStack<'_>, stacks: &dyn StackSource) {
        match record.step {
            HandleStep::Created => {
                let stack = match stack {
                    RecordStack::Window(sample) => Some(CapturedStack::Window { sample, shadow: None }),
                    RecordStack::Chain(_) | RecordStack::None => None,
                };
                let ids = StackIds { user: record.stack_id, creator: None, at_entry: true };
                let site = self.stacks.site(record.tgid, ids, stack.as_ref(), &|id| stacks.read_stack(id));
                // Remembered while the handle waits for its socket (`--retention`, as any site).
                self.stats.made(site, record.ts_ns);
                self.handles.created(record.tgid, record.handle, site);
            }
            HandleStep::Connecting => self.handles.connecting(record.tgid, record.tid, record.handle),
            HandleStep::Connected => self.handles.connected(record.tid),
        }
    }

    /// What a site's frames cannot say of where its descriptors came from: the goroutines'
    /// creator (resolve/goroutines.rs), the listener (resolve/stacks.rs, `accepted_through`).
    pub(crate) fn origin(&self, site: SiteId) -> SiteOrigin {
        self.stacks.origin(site)
    }

    pub(crate) fn table(&self) -> &FdTable {
        &self.table
    }

    pub(crate) fn stats(&self) -> &SiteStats {
        &self.stats
    }

    /// A call site's frames, while it is remembered.
    pub(crate) fn frames(&self, site: SiteId) -> Option<&Arc<[Frame]>> {
        self.stacks.frames(site)
    }

    /// Call sites whose frames are remembered now.
    pub(crate) fn site_count(&self) -> usize {
        self.stacks.site_count()
    }

    pub(crate) fn stack_counts(&self) -> StackCounts {
        self.stacks.counts()
    }

    #[cfg(test)]
    pub(crate) fn stacks(&self) -> &StackRegistry {
        &self.stacks
    }

    /// Forget call sites that nothing has held for `retention_ns` (`--retention`).
    pub(crate) fn set_retention(&mut self, retention_ns: u64) {
        self.retention_ns = retention_ns;
    }

    /// Forget the call sites nothing held for the retention, as of `now_ns`: their frames and
    /// sums here, their series in the exporter (`Kept::Forgotten`). Once a second.
    pub(crate) fn expire_sites(&mut self, now_ns: u64) -> usize {
        let expired = self.stats.expire(now_ns, self.retention_ns);
        for site in &expired {
            self.stacks.forget_site(*site);
            if self.keep_transitions {
                self.kept.push(Kept::Forgotten { site: *site });
            }
        }
        expired.len()
    }

    /// Take for lost the closes held for longer than `CLOSE_HOLD_NS` (model/fdtable.rs,
    /// `Closing`). Once a second, before `expire_sites`: a site such a close releases may be
    /// forgotten in the same pass.
    pub(crate) fn expire_held_closes(&mut self, now_ns: u64) {
        let mut out = Vec::new();
        self.table.expire_held_closes(now_ns, &mut out);
        self.after(&out, now_ns);
    }

    /// Exited processes kept by `retain_exited`, oldest first.
    pub(crate) fn exited(&self) -> &[ExitedProcess] {
        &self.exited
    }

    pub(crate) fn counts(&self) -> EventCounts {
        self.counts
    }

    pub(crate) fn corrections(&self) -> Corrections {
        self.corrections
    }

    /// Records received, by event type (`untracked`: decoded but changing nothing tracked,
    /// such as a failed call; `undecodable`: short or unknown). They add up to `received`.
    pub(crate) fn events_by_type(&self) -> Vec<(&'static str, u64)> {
        let mut counts: Vec<(&'static str, u64)> = Op::NAMES.iter().copied().zip(self.by_type).collect();
        counts.push(("untracked", self.untracked));
        counts.push(("undecodable", self.counts.undecodable));
        counts
    }

    /// Keep every transition for `take_transitions` (the exporter aggregates them).
    pub(crate) fn keep_transitions(&mut self) {
        self.keep_transitions = true;
    }

    /// Transitions kept since the last `take_transitions`.
    pub(crate) fn pending_transitions(&self) -> usize {
        self.kept.len()
    }

    /// The transitions kept since the last call. Hand the vector back once read
    /// (`reuse_transitions`).
    pub(crate) fn take_transitions(&mut self) -> Vec<Kept> {
        std::mem::take(&mut self.kept)
    }

    /// The vector `take_transitions` gave, read: its room holds the next transitions. The
    /// exporter takes them in batches of a bounded size (observe/export.rs), so after the first
    /// batches they cost no allocation: the largest room a batch needed (about 1 MB in a flood)
    /// is kept, not freed and grown again each time.
    pub(crate) fn reuse_transitions(&mut self, mut read: Vec<Kept>) {
        if self.kept.is_empty() && read.capacity() > self.kept.capacity() {
            read.clear();
            self.kept = read;
        }
    }

    /// The records handled next were taken from the ring by `now_ns`: a close's record is
    /// stamped with it. Later than the close, by up to the reader's lag, which is what a
    /// close's time allows: reconciliation takes a close stamped after its pass began for one
    /// that may have come after its read of /proc, and leaves its descriptor to the next pass
    /// (`touched_by`); a site's idle time starts that much late. Nothing else reads it.
    pub(crate) fn records_taken(&mut self, now_ns: u64) {
        self.batch_taken_ns = now_ns;
    }

    /// One ring-buffer record.
    pub(crate) fn handle_record(&mut self, bytes: &[u8], stacks: &dyn StackSource) {
        let decoded = decode::decode(bytes, &self.syscalls);
        if let Ok(Decoded::Python(frames)) = decoded {
            // Part of the thread's descriptor record that follows, not a record of its own.
            if self.walked.len() >= MAX_WALKED_PENDING {
                // Records whose descriptor record never came (lost): keep the recent ones.
                let horizon = frames.ts_ns.saturating_sub(1_000_000_000);
                self.walked.retain(|_, w| w.ts_ns >= horizon);
                if self.walked.len() >= MAX_WALKED_PENDING {
                    self.walked.clear();
                }
            }
            self.walked.insert(frames.tid, frames);
            return;
        }
        if let Ok(Decoded::Shadow(shadow)) = decoded {
            // Part of the thread's window record that follows, as a Python stack is.
            if self.shadows.len() >= MAX_WALKED_PENDING {
                self.shadows.clear();
            }
            self.shadows.insert(shadow.tid, shadow);
            return;
        }
        // A record of pairs alone stands for no call of its own (`calls_paired` counts its
        // calls): not received, so that received + lost + 2 × calls_paired counts every call.
        let pairs_only = matches!(&decoded, Ok(Decoded::Event(_, RecordStack::Chain(chain)))
            if chain.flags & chain_flags::PAIRS_ONLY != 0);
        if !pairs_only {
            self.counts.received += 1;
        }
        if let Ok(Decoded::Handle(record, stack)) = &decoded {
            // Not a descriptor event: counted with the records that changed nothing tracked.
            self.untracked += 1;
            self.handle_libuv(*record, stack, stacks);
            return;
        }
        match decoded {
            Ok(Decoded::Event(mut event, stack)) => {
                if matches!(event.op, Op::Close { .. }) {
                    event.ts_ns = self.batch_taken_ns;
                }
                let (pairs, pairs_fd, pairs_only) = match &stack {
                    RecordStack::Chain(chain) => {
                        (chain.pairs, chain.pairs_fd, chain.flags & chain_flags::PAIRS_ONLY != 0)
                    }
                    _ => (0, None, false),
                };
                if !pairs_only {
                    self.by_type[event.op.index()] += 1;
                }
                let shadow = match stack {
                    RecordStack::Window(_) => {
                        self.shadows.remove(&event.tid).filter(|s| s.ts_ns == event.ts_ns)
                    }
                    RecordStack::Chain(_) | RecordStack::None => None,
                };
                let stack = match &stack {
                    RecordStack::Chain(chain) => Some(CapturedStack::Chain(WalkedChain {
                        addresses: &chain.addresses,
                        cached: chain.flags & chain_flags::CACHED != 0,
                    })),
                    RecordStack::Window(sample) => Some(CapturedStack::Window {
                        sample,
                        shadow: shadow
                            .as_ref()
                            .map(|s| WalkedChain { addresses: &s.addresses, cached: s.cached }),
                    }),
                    RecordStack::None => None,
                };
                // The record's own open first: a process first seen at this record is then read
                // from /proc with it in the table (the pairs meet nothing of it, whatever the
                // order).
                let paired = (pairs > 0).then(|| event.clone());
                if !pairs_only {
                    self.handle_event(&mut event, stack.as_ref(), stacks)
                }
                if let Some(paired) = paired {
                    self.handle_pairs(&paired, pairs, pairs_fd, stack.as_ref(), stacks);
                }
            }
            Ok(Decoded::Nothing | Decoded::Python(_) | Decoded::Shadow(_) | Decoded::Handle(..)) => {
                self.untracked += 1
            }
            Err(err) => {
                self.counts.undecodable += 1;
                debug!("undecodable record: {err}");
            }
        }
    }

    /// `count` calls like `event` whose descriptors the kernel matched with their closes
    /// (helios-trace-ebpf/src/pairs.rs): each opened, then closed, at `PAIRED_FD`, a number no
    /// descriptor has, so that they change nothing else of the table, whatever the kernel let
    /// come ahead of them (a pair it counted while another thread's record went past its
    /// slot); the closes at the time the record was taken, as every close's.
    ///
    /// Not one pair at a time: a loop of ~200,000 open+close a second had the daemon spend
    /// 456 ns a pair on them, and `serve` 591 (BENCHMARKS.md, "Pairs applied at once"). A pair takes the whole
    /// path (its site resolved, the table's transitions); when the table opened and closed
    /// `PAIRED_FD` at one site and did nothing else there, it is back as it was at that number,
    /// so each pair after it would do the same: their counts are added at once
    /// (`repeat_pairs`). A pair that may make or take what the next would find otherwise
    /// takes the whole path alone first: the process's first sight (what /proc has is read
    /// in, its Python state is made after the pair's site), a libuv connect's handle or a
    /// thread's walked Python frames (each taken by one call). Where the table did anything
    /// else (full, at `--max-fds` or `--max-processes`), each pair takes the whole path.
    ///
    /// A reconciliation pass of the process under way learns the number the pairs touched
    /// (`at`, when the kernel says they were all at one) and leaves it alone, as it does a
    /// number a close record touched; when the kernel does not say, it adds nothing
    /// (`PendingReconcile::paired`).
    fn handle_pairs(
        &mut self,
        event: &Event,
        count: u32,
        at: Option<i32>,
        stack: Option<&CapturedStack<'_>>,
        stacks: &dyn StackSource,
    ) {
        let Some(op) = event.op.renumbered(PAIRED_FD) else {
            // Not a call the kernel keeps: a record it did not make.
            self.counts.undecodable += 1;
            return;
        };
        let open = Event { op, ..event.clone() };
        self.by_type[open.op.index()] += u64::from(count);
        self.by_type[Op::Close { fd: PAIRED_FD, number_taken: false }.index()] += u64::from(count);
        let mut left = count;
        let takes = self.table.process(open.tgid).is_none()
            || self.handles.in_connect(open.tid)
            || self.walked.get(&open.tid).is_some_and(|w| w.ts_ns == open.ts_ns);
        if takes {
            self.handle_pair(&open, stack, stacks, 1);
            left -= 1;
        }
        if left > 0 {
            // This pair counts them all where calls are counted (a CPython's descriptors opened
            // without Python frames): the ones after it would each meet the same state.
            let at_one_site = self.handle_pair(&open, stack, stacks, left);
            match (at_one_site, stack) {
                (Some((kind, site)), Some(CapturedStack::Chain(chain))) => {
                    let pairs = u64::from(left - 1);
                    self.repeat_pairs(event.tgid, (kind, site), pairs, chain.cached)
                }
                _ => {
                    for _ in 1..left {
                        self.handle_pair(&open, stack, stacks, 0);
                    }
                }
            }
        }
        self.counts.calls_paired += u64::from(count);
        if let Some(pending) = self.pending.as_mut().filter(|p| p.tgid == event.tgid && !p.baseline) {
            match at {
                Some(fd) => {
                    pending.touched.insert(fd);
                }
                None => pending.paired = true,
            }
        }
    }

    /// One pair like `open` (at `PAIRED_FD`): `open`, then its close. `calls`: how many calls
    /// its open is counted as where calls are counted (`creation_site`; 0 when a pair before
    /// it counted them). The (kind, site) it was counted at when the table opened and closed
    /// it and did nothing else at `PAIRED_FD`.
    fn handle_pair(
        &mut self,
        open: &Event,
        stack: Option<&CapturedStack<'_>>,
        stacks: &dyn StackSource,
        calls: u32,
    ) -> Option<(FdKind, SiteId)> {
        // What an event did to the table: `scratch` holds it until the next event.
        let at_paired_fd = |engine: &Self| -> Option<(FdKind, SiteId, FdChange)> {
            let mut changes = engine.scratch.iter().filter_map(|t| match *t {
                Transition::Fd { tgid, fd, kind, site, change } if tgid == open.tgid && fd == PAIRED_FD => {
                    Some((kind, site, change))
                }
                _ => None,
            });
            match (changes.next(), changes.next()) {
                (Some(only), None) => Some(only),
                _ => None,
            }
        };
        let mut opened = open.clone();
        self.handle_calls(&mut opened, stack, stacks, calls);
        let opened = at_paired_fd(self);
        let mut close = Event {
            ts_ns: self.batch_taken_ns,
            stacks: StackIds::default(),
            op: Op::Close { fd: PAIRED_FD, number_taken: false },
            ..*open
        };
        self.handle_calls(&mut close, None, stacks, 1);
        match (opened, at_paired_fd(self)) {
            (Some((kind, site, FdChange::Opened)), Some(closed))
                if closed == (kind, site, FdChange::Closed(CloseReason::Close)) =>
            {
                Some((kind, site))
            }
            _ => None,
        }
    }

    /// `pairs` more pairs like the one just handled, which the table opened and closed at
    /// (kind, site) of `tgid`, their chain walked by the kernel (`cached`: with taught rules
    /// alone): what each would have done. The table and the site's holders end as that pair
    /// left them; only the counts grow.
    fn repeat_pairs(&mut self, tgid: u32, (kind, site): (FdKind, SiteId), pairs: u64, cached: bool) {
        if pairs == 0 {
            return;
        }
        self.stacks.count_chains(pairs, cached);
        self.stats.add_pairs(tgid, kind, site, pairs);
        if self.keep_transitions {
            self.kept.push(Kept::Pairs { tgid, kind, site, pairs });
        }
    }

    /// One event; `stack` is the user stack a `--stacks dwarf` record carried. The table takes
    /// an open's detail out of it (`FdTable::apply`).
    pub(crate) fn handle_event(
        &mut self,
        event: &mut Event,
        stack: Option<&CapturedStack<'_>>,
        stacks: &dyn StackSource,
    ) {
        self.handle_calls(event, stack, stacks, 1)
    }

    /// `handle_event`, its creation counted as `calls` calls where calls are counted
    /// (`creation_site`).
    fn handle_calls(
        &mut self,
        event: &mut Event,
        stack: Option<&CapturedStack<'_>>,
        stacks: &dyn StackSource,
        calls: u32,
    ) {
        let site = match event.op {
            Op::Open { .. } | Op::Accept { .. } | Op::Dup { .. } | Op::GetFd { .. } | Op::Receive { .. } => {
                self.creation_site(event, stack, stacks, calls)
            }
            _ => SiteId::NoStack,
        };
        if let Some(creator_pc) = event.stacks.creator {
            self.stacks.note_creator(event.tgid, site, creator_pc);
        }
        self.stats.made(site, event.ts_ns);
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        if matches!(event.op, Op::Exit) {
            self.before_removal(event.tgid);
        }
        // A process neither in the baseline nor forked under our eyes (it moved into a --cgroup
        // target, or its fork was lost): what it already holds is only in /proc.
        let first_sight = self.table.process(event.tgid).is_none() && !matches!(event.op, Op::Exit);
        self.read_ahead_of_the_baseline(event, first_sight, &mut out);
        self.touched_by(event);
        self.table.apply(event, site, &mut out);
        // (Not when the table refused it, at --max-processes: that would read /proc per event.)
        let reading_baseline = self.baseline.is_some();
        if first_sight && self.table.process(event.tgid).is_some() {
            if reading_baseline {
                // Read in its turn, in chunks: not whole, here, with records waiting.
                self.first_seen(event.tgid, stacks.exec_time(event.tgid));
                self.unread.insert(event.tgid);
            } else {
                self.load_missing(event.tgid, event.ts_ns, stacks.exec_time(event.tgid), &mut out);
            }
        }
        if let Op::NewTask { child, thread: false, .. } = &event.op
            && self.table.process(*child).is_some()
        {
            // A child of a process the table held in part, or not at all, copied that.
            let reading = |p: &PendingReconcile| p.tgid == event.tgid && p.baseline;
            if reading_baseline
                && (first_sight
                    || self.unread.contains(&event.tgid)
                    || self.pending.as_ref().is_some_and(reading))
            {
                self.unread.insert(*child);
            } else if first_sight {
                self.add_missing(*child, event.ts_ns, &mut out);
            }
        }
        if let Op::Receive { socket, fds, truncated, .. } = &event.op {
            // Received descriptors can be anything; only /proc knows, and only now.
            for &fd in fds {
                if let Some(o) = self.proc.open_fd(event.tgid, fd) {
                    self.table.set_kind(event.tgid, fd, o.kind, o.detail);
                }
            }
            if *truncated && self.may_pass_descriptors(event.tgid, *socket) {
                self.counts.receives_cut_short += 1;
                // (Handed over only while the table tracks it: `take_cut_short`.)
                self.cut_short.insert(event.tgid);
            }
        }
        self.after(&out, event.ts_ns);
        self.scratch = out;
    }

    /// Whether `tgid`'s `socket` may have passed descriptors: only a Unix socket carries
    /// SCM_RIGHTS (net/core/scm.c, `__scm_send` refuses them from any other family). A socket
    /// whose family the table does not know (one received, or found by reconciliation) may be
    /// one. The kernel makes no record of a recvmmsg larger than its walk on a socket it reads
    /// is not a Unix one (syscalls.rs, `received_nothing`); where it cannot read the family (a
    /// kernel without BTF), a UDP server's recvmmsg of many datagrams is still not taken for a
    /// receive cut short here.
    fn may_pass_descriptors(&self, tgid: u32, socket: i32) -> bool {
        match self.table.lookup(tgid, socket).map(|entry| &entry.detail) {
            Some(FdDetail::Socket { family, .. }) => *family == libc::AF_UNIX as u16,
            _ => true,
        }
    }

    /// The processes still tracked whose receives were cut short
    /// (`EventCounts::receives_cut_short`) since the last call: to reconcile, so that what the
    /// kernel could not list is in the table.
    pub(crate) fn take_cut_short(&mut self) -> Vec<u32> {
        let table = &self.table;
        self.cut_short.drain().filter(|&tgid| table.process(tgid).is_some()).collect()
    }

    /// The site of a descriptor-creating call: its native stack's, or what names it better: the
    /// libuv handle the socket was made for, the Python frames walked with it, the listener it
    /// was accepted through.
    ///
    /// `calls`: how many calls it is counted as in the count of a CPython's descriptors opened
    /// without Python frames (`handle_pairs`: the pairs of a record; 0 when counted already).
    fn creation_site(
        &mut self,
        event: &Event,
        stack: Option<&CapturedStack<'_>>,
        stacks: &dyn StackSource,
        calls: u32,
    ) -> SiteId {
        let native = self.stacks.site(event.tgid, event.stacks, stack, &|id| stacks.read_stack(id));
        // With Python frames, the native site is a step to the site: remembered too (what
        // Python sites are made from), so it must be forgotten in its turn.
        self.stats.made(native, event.ts_ns);
        // Only its own: a record the kernel kept may come between a thread's Python record and
        // its descriptor's (helios-trace-ebpf/src/pairs.rs).
        let walked = match self.walked.get(&event.tid) {
            Some(w) if w.ts_ns == event.ts_ns => self.walked.remove(&event.tid),
            _ => None,
        };
        let site = match (self.handle_site(event), walked) {
            (Some(site), _) => site,
            (None, Some(walked)) => {
                self.python.site(event.tgid, native, &walked.frames, walked.flags, &mut self.stacks)
            }
            (None, None) => {
                let stacks = &self.stacks;
                let may_run = || stacks.frames(native).is_none_or(|f| frame::python_may_run(f));
                self.python.not_walked(event.tgid, event.ts_ns, u64::from(calls), may_run);
                native
            }
        };
        self.accepted_site(event, site)
    }

    /// A socket libuv makes for a handle on a later tick: the handle's site says which call
    /// asked for it (model/handles.rs). Only an inet stream socket(2) is one; anything else the
    /// thread makes leaves the bracket as it is.
    fn handle_site(&mut self, event: &Event) -> Option<SiteId> {
        let site = match &event.op {
            Op::Open { kind: FdKind::Socket, detail: FdDetail::Socket { family, sock_type, .. }, .. }
                if matches!(i32::from(*family), libc::AF_INET | libc::AF_INET6)
                    && i32::from(*sock_type) == libc::SOCK_STREAM =>
            {
                self.handles.socket_made(event.tgid, event.tid)
            }
            _ => None,
        };
        site.filter(|site| self.stacks.knows(*site))
    }

    /// A runtime's loop accepts every server's connections with one stack: told apart by the
    /// listener's site. (A listener's number that holds no socket: a record was lost; the
    /// accept keeps its own site.)
    fn accepted_site(&mut self, event: &Event, site: SiteId) -> SiteId {
        let Op::Accept { listener, .. } = event.op else { return site };
        let Some(open) = self.table.lookup(event.tgid, listener).filter(|open| open.kind == FdKind::Socket)
        else {
            return site;
        };
        let through = self.stacks.accepted_through(site, open.site);
        if through != site {
            // The accepting stack's site (a Python one too) is a step to this one: remembered,
            // so that it is forgotten in its turn.
            self.stats.made(site, event.ts_ns);
        }
        through
    }

    /// Remember the table of a process about to go, when exited processes are kept.
    fn before_removal(&mut self, tgid: u32) {
        if self.retain_exited > 0 {
            self.exiting = self.table.process(tgid).map(|p| (tgid, p.clone()));
        }
    }

    /// Keep an exited process (its counters before the stats drop them).
    fn retire(&mut self, tgid: u32, ts_ns: u64) {
        let Some((_, process)) = self.exiting.take().filter(|(pid, _)| *pid == tgid) else { return };
        if self.exited.len() >= self.retain_exited {
            let dropped = self.exited.remove(0);
            for site in dropped.sites() {
                self.stats.unpin(site, ts_ns);
            }
        }
        let exited = ExitedProcess {
            tgid,
            comm: process.comm,
            cmdline: self.cmdlines.get(&tgid).cloned().flatten(),
            exited_ns: ts_ns,
            fds: process.fds,
            counters: self.stats.process(tgid).cloned().unwrap_or_default(),
        };
        // The report shows its sites: their frames stay while it is kept.
        for site in exited.sites() {
            self.stats.pin(site);
        }
        self.exited.push(exited);
    }

    fn after(&mut self, transitions: &[Transition], ts_ns: u64) {
        for t in transitions {
            if let Transition::ProcessExited { tgid } = t {
                self.retire(*tgid, ts_ns);
            }
            self.stats.observe(t, ts_ns);
            match t {
                Transition::Fd { tgid, fd, .. } => {
                    // (Not for a baseline: nothing of it is compared, and it finds a million.)
                    if let Some(pending) = self
                        .pending
                        .as_mut()
                        .filter(|p| p.tgid == *tgid && ts_ns >= p.started_ns && !p.baseline)
                    {
                        pending.touched.insert(*fd);
                    }
                }
                Transition::ProcessStarted { tgid, parent: Some(parent) } => {
                    self.stacks.inherit_maps(*parent, *tgid);
                    self.python.forked(*parent, *tgid, ts_ns);
                    if let Some(cmdline) = self.cmdlines.get(parent).cloned() {
                        self.cmdlines.insert(*tgid, cmdline);
                    }
                }
                // A process first seen at its exec is probed at the exec (ProcessExec, next),
                // through the exec lane: a probe now would race the lane's.
                Transition::ProcessStarted { tgid, parent: None }
                    if !transitions
                        .iter()
                        .any(|t| matches!(t, Transition::ProcessExec { tgid: t } if t == tgid)) =>
                {
                    self.python.first_sight(*tgid, ts_ns)
                }
                Transition::ProcessStarted { parent: None, .. } => {}
                Transition::ProcessExec { tgid } => {
                    // New image: old stack ids mean other code now. Capture the maps while the
                    // process surely runs, so a short-lived one still resolves.
                    self.stacks.forget(*tgid);
                    self.handles.forget(*tgid);
                    self.capture(*tgid, ts_ns);
                    self.python.exec(*tgid, ts_ns);
                    let cmdline = self.proc.cmdline(*tgid);
                    self.cmdlines.insert(*tgid, cmdline);
                }
                Transition::ProcessExited { tgid } => {
                    self.stacks.forget(*tgid);
                    self.handles.forget(*tgid);
                    self.go.exited(*tgid);
                    self.python.forget(*tgid, ts_ns);
                    self.cmdlines.remove(tgid);
                    if let Some(pending) = self.pending.as_mut().filter(|p| p.tgid == *tgid) {
                        (pending.observed, pending.next_fd) = (None, None);
                    }
                }
            }
        }
        if self.keep_transitions {
            for t in transitions {
                // What /proc showed opens nothing: the exporter counts it as open from the
                // table, not as opened (a baseline finds a million on a large node).
                if let Transition::Fd { change: FdChange::Found, .. } = t {
                    continue;
                }
                self.kept.push(Kept::Transition(t.clone()));
                if let Transition::ProcessStarted { tgid, .. } | Transition::ProcessExec { tgid } = t {
                    let comm = self.table.process(*tgid).map(|p| p.comm.clone()).unwrap_or_default();
                    self.kept.push(Kept::Named { tgid: *tgid, comm });
                }
            }
        }
    }

    /// Begin reading what `tgid` held before tracing began from /proc, in chunks as a
    /// reconciliation pass reads (`read_reconcile`, then `finish_reconcile`), so that records
    /// are handled between the chunks (ARCHITECTURE.md, "Data flow" 8): its table is made
    /// empty now, each chunk's finds go into it at once under `before-trace`, stamped
    /// `found_ns` (the session's start), and records apply as they come. Each chunk is to its
    /// records what the whole baseline was to the first records before (FdTable::insert_observed:
    /// what a record did wins). A process records made the table hold in part (`next_unread`)
    /// is read the same way. False when there is nothing to read: it was read already, it is
    /// gone, or the table holds as many processes as it may.
    pub(crate) fn begin_baseline(&mut self, tgid: u32, now_ns: u64) -> bool {
        debug_assert!(self.pending.is_none(), "one at a time");
        let Some(found_ns) = self.baseline.as_ref().map(|b| b.found_ns) else {
            debug_assert!(false, "start_baseline first");
            return false;
        };
        let unread = self.unread.remove(&tgid);
        if self.table.process(tgid).is_some() && !unread {
            return false;
        }
        if self.table.process(tgid).is_none() {
            let Some(comm) = self.proc.comm(tgid) else { return false };
            let cmdline = self.proc.cmdline(tgid);
            self.cmdlines.insert(tgid, cmdline);
            self.capture(tgid, 0);
            let mut out = Vec::new();
            self.table.insert_observed(tgid, &comm, [], SiteId::BeforeTrace, found_ns, &mut out);
            self.after(&out, now_ns);
            if self.table.process(tgid).is_none() {
                return false;
            }
        }
        self.begin_reconcile(tgid, now_ns);
        if let Some(pending) = self.pending.as_mut() {
            pending.baseline = true;
        }
        true
    }

    /// The baseline is about to be read, what it finds stamped `found_ns` (the session's
    /// start): records about a process the table lacks leave it to be read in its turn
    /// (`next_unread`), not whole at once.
    pub(crate) fn start_baseline(&mut self, found_ns: u64) {
        self.baseline = Some(Baseline { read: self.proc.baseline(), found_ns });
    }

    /// A process the table holds in part, to be read (`begin_baseline`) before the baseline
    /// ends.
    pub(crate) fn next_unread(&self) -> Option<u32> {
        self.unread.iter().next().copied()
    }

    /// Every process's baseline is read: its reader goes, and the socket tables it kept.
    pub(crate) fn end_baseline(&mut self) {
        debug_assert!(self.unread.is_empty(), "read before the end: {:?}", self.unread);
        self.baseline = None;
        self.unread.clear();
    }

    /// The end of one process's baseline read (`begin_baseline`): a process whose read failed
    /// and that no longer runs (a zombie, or gone) leaves the table, as the whole read skipped
    /// it; a live one keeps what was read and what records said.
    fn finish_baseline(&mut self, pending: PendingReconcile, now_ns: u64) {
        if pending.observed.is_none() && !self.proc.alive(pending.tgid) {
            let mut out = Vec::new();
            self.before_removal(pending.tgid);
            self.table.remove_process(pending.tgid, &mut out);
            self.after(&out, now_ns);
        }
    }

    /// Add what /proc shows `tgid` holding that the table does not have (under
    /// `before-trace`, stamped `found_ns`); what events already said stays. Nothing when the
    /// table does not track it; false when /proc could not be read.
    fn add_missing(&mut self, tgid: u32, found_ns: u64, out: &mut Vec<Transition>) -> bool {
        let Some(known) = self.table.process(tgid).map(|p| &p.fds) else { return true };
        let Ok(chunk) = self.proc.open_fds(tgid, 0, usize::MAX, &|fd| !known.contains_key(&fd)) else {
            return false;
        };
        let missing: Vec<(i32, ObservedFd)> =
            chunk.fds.into_iter().filter(|(fd, _)| !known.contains_key(fd)).collect();
        self.table.insert_observed(tgid, "", missing, SiteId::BeforeTrace, found_ns, out);
        true
    }

    /// What /proc shows `tgid` holding, which a record shows first: `add_missing`, and
    /// `first_seen`.
    fn load_missing(&mut self, tgid: u32, now_ns: u64, exec_ns: u64, out: &mut Vec<Transition>) {
        if self.add_missing(tgid, now_ns, out) {
            self.first_seen(tgid, exec_ns);
        }
    }

    /// What is known of a process at its first sight: its name (where no record gave it),
    /// its maps and image, its command line.
    fn first_seen(&mut self, tgid: u32, exec_ns: u64) {
        if self.table.process(tgid).is_some_and(|p| p.comm.is_empty())
            && let Some(comm) = self.proc.comm(tgid)
        {
            self.table.set_comm(tgid, comm);
        }
        // Seen first now, not at its exec: it exec'd before tracing began (0), or while it was
        // not traced, or its exec record was lost. The kernel's time of its image, whichever.
        self.capture(tgid, exec_ns);
        let proc = &mut self.proc;
        self.cmdlines.entry(tgid).or_insert_with(|| proc.cmdline(tgid));
    }

    /// A descriptor a record copies (the old one of a dup, the listener of an accept) that its
    /// process held before tracing began and the table lacks because /proc was not read there
    /// yet: its baseline chunk is still to come, or the process is first seen through this
    /// record. Read from /proc now, as its chunk would read it, so that the copy takes its kind
    /// and detail; otherwise it would be `other` (an accepted socket without its family and
    /// type) until reconciliation corrected the kind, and the detail never. Once found it is in
    /// the table. (What /proc shows now may already be a later open under the same number: the
    /// original then takes that file's kind and detail, and so does the copy, which the close
    /// and open records that follow do not correct; reconciliation corrects the kind. So it was
    /// when the whole baseline was read before the first record.) Not for a process the table
    /// refuses (at `--max-processes`): that would read /proc at each of its records.
    fn read_ahead_of_the_baseline(&mut self, event: &Event, first_sight: bool, out: &mut Vec<Transition>) {
        let (tgid, copied) = match event.op {
            Op::Dup { old, new, .. } if old != new => (event.tgid, old),
            Op::Accept { listener, .. } => (event.tgid, listener),
            _ => return,
        };
        if self.table.process(tgid).is_some_and(|p| p.fds.contains_key(&copied))
            || !self.table.has_room_for(tgid)
        {
            return;
        }
        let reading = |p: &PendingReconcile| {
            p.tgid == tgid && p.baseline && p.next_fd.is_some_and(|next| copied >= next)
        };
        let not_read =
            first_sight || self.unread.contains(&tgid) || self.pending.as_ref().is_some_and(reading);
        if !not_read {
            return;
        }
        let (found, found_ns) = match self.baseline.as_mut() {
            // The baseline's reader, for what the socket tables say of a socket.
            Some(baseline) => {
                let chunk = (baseline.read)(tgid, copied, 1);
                (chunk.ok().and_then(|mut chunk| chunk.fds.remove(&copied)), baseline.found_ns)
            }
            // A first sight after the baseline: as `load_missing` reads the rest.
            None => (self.proc.open_fd(tgid, copied), event.ts_ns),
        };
        if let Some(found) = found {
            self.table.insert_observed(tgid, "", [(copied, found)], SiteId::BeforeTrace, found_ns, out);
        }
    }

    /// What a record stamped during a reconciliation pass over its process touches beyond the
    /// table's own changes (`after` marks those): a close of a descriptor the table lacks (its
    /// open lost) changes nothing in the table, though /proc may have shown it open; a
    /// close_range or an exec can close many such. The first is left alone; after the others
    /// nothing of the pass is trusted, and the next pass compares again.
    fn touched_by(&mut self, event: &Event) {
        // A baseline's chunks are in the table as they come: records act on them there.
        let Some(pending) = self.pending.as_mut().filter(|p| p.tgid == event.tgid && !p.baseline) else {
            return;
        };
        if event.ts_ns < pending.started_ns {
            return;
        }
        match &event.op {
            Op::Close { fd, .. } => {
                pending.touched.insert(*fd);
            }
            Op::CloseRange { .. } | Op::Exec { .. } => (pending.observed, pending.next_fd) = (None, None),
            _ => {}
        }
    }

    /// The processes to reconcile: every tracked one. The session reconciles them one at a time,
    /// each read in chunks, and handles records in between (observe/session.rs, `reconcile`).
    pub(crate) fn reconcile_targets(&self) -> Vec<u32> {
        self.table.processes().map(|(tgid, _)| tgid).collect()
    }

    /// Start reconciling `tgid`: records stamped from `now_ns` on mark what they touch.
    pub(crate) fn begin_reconcile(&mut self, tgid: u32, now_ns: u64) {
        self.pending = Some(PendingReconcile {
            tgid,
            started_ns: now_ns,
            observed: Some(OpenFds::new()),
            next_fd: Some(0),
            touched: HashSet::new(),
            flag_read: HashSet::new(),
            baseline: false,
            paired: false,
        });
    }

    /// Read up to `max` more of the process's descriptors from /proc; true once its read is
    /// complete (or failed, or the process is gone).
    pub(crate) fn read_reconcile(&mut self, max: usize, now_ns: u64) -> bool {
        let Some(pending) = self.pending.as_mut() else { return true };
        let (Some(from), Some(observed)) = (pending.next_fd, pending.observed.as_mut()) else { return true };
        let tgid = pending.tgid;
        // The flag only of what the table lacks: the rest is compared by kind (and
        // `finish_reconcile` reads again whole what it would add without its flag).
        let tracked = self.table.process(tgid).map(|p| &p.fds);
        let untracked = |fd: i32| !tracked.is_some_and(|t| t.contains_key(&fd));
        // A baseline's reader reads every flag, and what the socket tables say of sockets.
        let baseline = self.baseline.as_mut().filter(|_| pending.baseline);
        let found_ns = baseline.as_ref().map(|b| b.found_ns);
        let read = match baseline {
            Some(baseline) => (baseline.read)(tgid, from, max),
            None => self.proc.open_fds(tgid, from, max, &untracked),
        };
        match (read, found_ns) {
            (Ok(chunk), Some(found_ns)) => {
                pending.next_fd = chunk.next;
                let done = chunk.next.is_none();
                // Into the table at once, but what records made it hold already: a record
                // handled next may dup or close what this chunk found.
                let missing: Vec<(i32, ObservedFd)> =
                    chunk.fds.into_iter().filter(|(fd, _)| untracked(*fd)).collect();
                if tracked.is_some() {
                    let mut out = Vec::new();
                    self.table.insert_observed(tgid, "", missing, SiteId::BeforeTrace, found_ns, &mut out);
                    self.after(&out, now_ns);
                }
                done
            }
            (Ok(chunk), None) => {
                pending.flag_read.extend(chunk.fds.keys().copied().filter(|fd| untracked(*fd)));
                observed.extend(chunk.fds);
                pending.next_fd = chunk.next;
                chunk.next.is_none()
            }
            (Err(_), _) => {
                (pending.observed, pending.next_fd) = (None, None);
                if !self.proc.exists(tgid) {
                    // Gone without an exit event (lost): forget it.
                    self.before_removal(tgid);
                    let mut out = Vec::new();
                    self.table.remove_process(tgid, &mut out);
                    self.after(&out, now_ns);
                }
                true
            }
        }
    }

    /// Finish, after the ring buffer was drained: correct what still differs.
    pub(crate) fn finish_reconcile(&mut self, now_ns: u64) -> Corrections {
        let Some(pending) = self.pending.take() else { return Corrections::default() };
        if pending.baseline {
            self.finish_baseline(pending, now_ns);
            return Corrections::default();
        }
        let Some(mut observed) = pending.observed.filter(|_| pending.next_fd.is_none()) else {
            return Corrections::default();
        };
        let (pid, skip) = (pending.tgid, &pending.touched);
        if pending.paired {
            // Nothing added (`PendingReconcile::paired`); what the table has and /proc no
            // longer shows is removed as ever.
            let tracked = self.table.process(pid).map(|p| &p.fds);
            observed.retain(|fd, _| tracked.is_some_and(|t| t.contains_key(fd)));
        }
        // What the table had at the read and has lost since to a record stamped before the
        // pass (another CPU's close_range or exec, late, its reopening lost; a close is stamped
        // when it left the ring, after the pass began) is about to be added with a flag never
        // read: looked at again, whole.
        let tracked = self.table.process(pid).map(|p| &p.fds);
        let unread: Vec<i32> = observed
            .keys()
            .copied()
            .filter(|fd| !pending.flag_read.contains(fd) && !skip.contains(fd))
            .filter(|fd| !tracked.is_some_and(|t| t.contains_key(fd)))
            .collect();
        for fd in unread {
            match self.proc.open_fd(pid, fd) {
                Some(now) => observed.insert(fd, now),
                None => observed.remove(&fd),
            };
        }
        let mut out = Vec::new();
        let fixed = self.table.reconcile(pid, &observed, skip, now_ns, &mut out);
        self.after(&out, now_ns);
        self.corrections.added += fixed.added;
        self.corrections.removed += fixed.removed;
        fixed
    }

    /// The command line of a tracked process (cached; read from /proc on first use).
    pub(crate) fn cmdline(&mut self, tgid: u32) -> Option<String> {
        let proc = &mut self.proc;
        self.cmdlines.entry(tgid).or_insert_with(|| proc.cmdline(tgid)).clone()
    }

    /// Fill in comm for processes first seen through an event, from /proc.
    pub(crate) fn refresh_names(&mut self) {
        let unnamed: Vec<u32> =
            self.table.processes().filter(|(_, p)| p.comm.is_empty()).map(|(t, _)| t).collect();
        for tgid in unnamed {
            if let Some(comm) = self.proc.comm(tgid) {
                self.table.set_comm(tgid, comm);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, rc::Rc};

    use smallvec::smallvec;

    use super::{
        testing::{DistinctStacks, Feed, PARENT, SEC, kept_socket, kept_socket_at},
        *,
    };
    use crate::model::{
        fd::{CloseReason, FdDetail, FdKind},
        fdtable::FdChange,
    };

    /// One process as the test's /proc shows it.
    #[derive(Clone, Default)]
    struct Shown {
        fds: OpenFds,
        comm: Option<String>,
        cmdline: Option<String>,
        /// Its descriptor directory cannot be read (though the process exists).
        unreadable: bool,
        /// It exited and is not reaped yet.
        zombie: bool,
    }

    /// /proc as the test says it is, changed by the test while the engine runs; no procfs.
    #[derive(Clone, Default)]
    struct FakeProc(Rc<RefCell<HashMap<u32, Shown>>>);

    impl FakeProc {
        fn show(&self, tgid: u32, shown: Shown) {
            self.0.borrow_mut().insert(tgid, shown);
        }

        fn get(&self, tgid: u32) -> Option<Shown> {
            self.0.borrow().get(&tgid).cloned()
        }
    }

    impl ProcSource for FakeProc {
        fn open_fds(
            &mut self,
            tgid: u32,
            from: i32,
            max: usize,
            flag_wanted: &dyn Fn(i32) -> bool,
        ) -> io::Result<FdChunk> {
            let shown = self.get(tgid).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
            if shown.unreadable {
                return Err(io::ErrorKind::PermissionDenied.into());
            }
            let mut rest = shown.fds.range(from..);
            let mut fds: OpenFds = rest.by_ref().take(max).map(|(fd, o)| (*fd, o.clone())).collect();
            for (fd, observed) in &mut fds {
                observed.cloexec &= flag_wanted(*fd);
            }
            Ok(FdChunk { fds, next: rest.next().map(|(fd, _)| *fd) })
        }

        fn baseline(&self) -> Box<BaselineReader> {
            let mut this = self.clone();
            Box::new(move |tgid, from, max| this.open_fds(tgid, from, max, &|_| true))
        }

        fn open_fd(&mut self, tgid: u32, fd: i32) -> Option<ObservedFd> {
            self.get(tgid)?.fds.get(&fd).cloned()
        }

        fn exists(&mut self, tgid: u32) -> bool {
            self.get(tgid).is_some()
        }

        fn alive(&mut self, tgid: u32) -> bool {
            self.get(tgid).is_some_and(|shown| !shown.zombie)
        }

        fn comm(&mut self, tgid: u32) -> Option<String> {
            self.get(tgid)?.comm
        }

        fn cmdline(&mut self, tgid: u32) -> Option<String> {
            self.get(tgid)?.cmdline
        }
    }

    fn observed(kind: FdKind) -> ObservedFd {
        ObservedFd { kind, detail: FdDetail::None, cloexec: false }
    }

    fn feed() -> (Feed, FakeProc) {
        let proc = FakeProc::default();
        let shared = proc.clone();
        (Feed::with_proc(move |_| Box::new(shared)), proc)
    }

    /// The first half of a reconciliation pass over `tgid`, its /proc read in one.
    fn read_whole(engine: &mut Engine, tgid: u32, now_ns: u64) {
        engine.begin_reconcile(tgid, now_ns);
        assert!(engine.read_reconcile(usize::MAX, now_ns));
    }

    fn kinds(engine: &Engine, tgid: u32) -> Vec<(i32, FdKind, SiteId)> {
        let process = engine.table().process(tgid).expect("tracked");
        process.fds.iter().map(|(fd, e)| (fd, e.kind, e.site)).collect()
    }

    /// The baseline as the session reads it (`Tracing::load_baseline`), in chunks of `chunk`
    /// with nothing handled between them.
    fn load_baseline(engine: &mut Engine, pids: &[u32], found_ns: u64, now_ns: u64, chunk: usize) {
        engine.start_baseline(found_ns);
        let mut listed = pids.iter().copied();
        while let Some(pid) = listed.next().or_else(|| engine.next_unread()) {
            if engine.begin_baseline(pid, now_ns) {
                while !engine.read_reconcile(chunk, now_ns) {}
                assert_eq!(engine.finish_reconcile(now_ns), Corrections::default());
            }
        }
        engine.end_baseline();
    }

    fn fds_of(engine: &Engine, tgid: u32) -> Vec<i32> {
        engine.table().process(tgid).unwrap_or_else(|| panic!("{tgid} tracked")).fds.keys().collect()
    }

    fn open_at(feed: &mut Feed, tgid: u32, fd: i32, stack: i32) {
        let op = Op::Open {
            fds: smallvec![fd],
            kind: FdKind::File,
            detail: FdDetail::None,
            cloexec: false,
            dirfd: None,
        };
        feed.event(tgid, op, Some(stack));
    }

    #[test]
    fn the_baseline_loads_what_proc_shows_under_before_trace() {
        for chunk in [1, usize::MAX] {
            let (mut feed, proc) = feed();
            let fds = OpenFds::from([(0, observed(FdKind::Device)), (4, observed(FdKind::Socket))]);
            proc.show(
                200,
                Shown {
                    fds,
                    comm: Some("worker".into()),
                    cmdline: Some("worker --serve".into()),
                    ..Shown::default()
                },
            );
            load_baseline(&mut feed.engine, &[200, 201], 5, 9, chunk);
            assert_eq!(
                kinds(&feed.engine, 200),
                [(0, FdKind::Device, SiteId::BeforeTrace), (4, FdKind::Socket, SiteId::BeforeTrace)]
            );
            let process = feed.engine.table().process(200).unwrap();
            assert_eq!(process.comm, "worker");
            assert!(process.fds.values().all(|e| e.opened_ns == 5), "stamped with the session's start");
            assert_eq!(feed.engine.cmdline(200).as_deref(), Some("worker --serve"));
            assert!(feed.engine.table().process(201).is_none(), "201 is gone: skipped");
            assert_eq!(feed.engine.corrections(), Corrections::default(), "a baseline corrects nothing");
        }
    }

    /// The session handles records between the chunks of a baseline read: each view is right
    /// as of its time, so what records touched is theirs, and what the read found and no
    /// record touched is `before-trace`. A child forked meanwhile copied the part read so far,
    /// and gets the rest of what it holds.
    #[test]
    fn a_baseline_read_in_chunks_keeps_what_records_did_between_them() {
        let (mut feed, proc) = feed();
        let files = |fds: &[i32]| fds.iter().map(|fd| (*fd, observed(FdKind::File))).collect::<OpenFds>();
        let mut shown = files(&[3, 4, 5, 6, 7, 8]);
        proc.show(PARENT, Shown { fds: shown.clone(), comm: Some("server".into()), ..Shown::default() });
        feed.engine.start_baseline(5);
        assert!(feed.engine.begin_baseline(PARENT, feed.now));
        assert!(!feed.engine.read_reconcile(3, feed.now), "3, 4 and 5 read; 6 next");
        // Between the chunks: 4 (read) and 7 (not read yet) closed, 9 opened, and a child
        // forked holding what the parent then held.
        feed.close(PARENT, 4);
        feed.close(PARENT, 7);
        open_at(&mut feed, PARENT, 9, 2);
        feed.event(PARENT, Op::NewTask { child: 600, thread: false, comm: "server".into() }, None);
        for fd in [4, 7] {
            shown.remove(&fd);
        }
        shown.insert(9, observed(FdKind::File));
        proc.show(PARENT, Shown { fds: shown.clone(), comm: Some("server".into()), ..Shown::default() });
        proc.show(600, Shown { fds: shown, comm: Some("server".into()), ..Shown::default() });
        assert!(feed.engine.read_reconcile(3, feed.now), "6, 8 and 9, the last");
        assert_eq!(feed.engine.finish_reconcile(feed.now), Corrections::default());
        assert!(!feed.engine.begin_baseline(PARENT, feed.now), "read once");
        // The child copied what was read so far: it is read in its turn.
        assert_eq!(feed.engine.next_unread(), Some(600));
        assert!(feed.engine.begin_baseline(600, feed.now));
        while !feed.engine.read_reconcile(3, feed.now) {}
        assert_eq!(feed.engine.finish_reconcile(feed.now), Corrections::default());
        assert_eq!(feed.engine.next_unread(), None);
        feed.engine.end_baseline();
        let table = kinds(&feed.engine, PARENT);
        let sites: Vec<(i32, SiteId)> = table.iter().map(|(fd, _, site)| (*fd, *site)).collect();
        let opened = sites.iter().find(|(fd, _)| *fd == 9).unwrap().1;
        assert!(!matches!(opened, SiteId::BeforeTrace), "9's site is its record's");
        let before = SiteId::BeforeTrace;
        assert_eq!(sites, [(3, before), (5, before), (6, before), (8, before), (9, opened)]);
        assert_eq!(fds_of(&feed.engine, 600), [3, 5, 6, 8, 9], "the child holds what /proc shows it holding");
        assert_eq!(feed.engine.corrections(), Corrections::default());
    }

    /// A record that copies a descriptor the baseline has not read yet (a dup of it, an
    /// accept on it) finds it read ahead of its chunk: the copy takes its kind and detail, as
    /// when the whole baseline was read before the first record. So does a process first seen
    /// through such a record, during the baseline and after it.
    #[test]
    fn a_descriptor_a_record_copies_is_read_ahead_of_its_baseline_chunk() {
        let tcp = FdDetail::Socket {
            family: libc::AF_INET as u16,
            sock_type: libc::SOCK_STREAM as u16,
            protocol: 6,
        };
        let listener = ObservedFd { kind: FdKind::Socket, detail: tcp.clone(), cloexec: false };
        let shown = || {
            let mut fds = OpenFds::from([(3, observed(FdKind::File)), (4, observed(FdKind::File))]);
            fds.insert(7, observed(FdKind::Pipe));
            fds.insert(8, listener.clone());
            Shown { fds, comm: Some("server".into()), ..Shown::default() }
        };
        let copies = |engine: &Engine, tgid: u32| {
            let process = engine.table().process(tgid).expect("tracked");
            [20, 21].map(|fd| process.fds.get(&fd).map(|e| (e.kind, e.detail.clone())))
        };
        let expected = [Some((FdKind::Pipe, FdDetail::None)), Some((FdKind::Socket, tcp.clone()))];
        let dup_and_accept = |feed: &mut Feed, tgid: u32| {
            feed.event(tgid, Op::Dup { old: 7, new: 20, cloexec: false, replaces: false }, Some(1));
            feed.event(tgid, Op::Accept { fd: 21, listener: 8, cloexec: true }, Some(2));
        };

        // In the middle of a process's baseline read: 3 and 4 read, 7 and 8 not yet.
        let (mut feed, proc) = feed();
        proc.show(PARENT, shown());
        feed.engine.start_baseline(5);
        assert!(feed.engine.begin_baseline(PARENT, feed.now));
        assert!(!feed.engine.read_reconcile(2, feed.now));
        dup_and_accept(&mut feed, PARENT);
        // A process first seen through such a record while the baseline is read.
        proc.show(700, shown());
        dup_and_accept(&mut feed, 700);
        while !feed.engine.read_reconcile(2, feed.now) {}
        assert_eq!(feed.engine.finish_reconcile(feed.now), Corrections::default());
        while let Some(tgid) = feed.engine.next_unread() {
            assert!(feed.engine.begin_baseline(tgid, feed.now));
            while !feed.engine.read_reconcile(2, feed.now) {}
            feed.engine.finish_reconcile(feed.now);
        }
        feed.engine.end_baseline();
        for tgid in [PARENT, 700] {
            assert_eq!(copies(&feed.engine, tgid), expected, "process {tgid}");
            let process = feed.engine.table().process(tgid).unwrap();
            let originals = [7, 8].map(|fd| process.fds.get(&fd).map(|e| (e.site, e.opened_ns)));
            assert_eq!(originals, [Some((SiteId::BeforeTrace, 5)); 2], "found at the start, once");
            assert_eq!(fds_of(&feed.engine, tgid), [3, 4, 7, 8, 20, 21]);
        }

        // A process first seen through such a record after the baseline.
        proc.show(701, shown());
        dup_and_accept(&mut feed, 701);
        assert_eq!(copies(&feed.engine, 701), expected);
        assert_eq!(fds_of(&feed.engine, 701), [3, 4, 7, 8, 20, 21]);
        assert_eq!(feed.engine.corrections(), Corrections::default());
    }

    /// A process the table refuses (at `--max-processes`) is not read ahead at its records:
    /// each is one dropped process, and nothing of it is read from /proc.
    #[test]
    fn a_process_the_table_refuses_is_not_read_ahead() {
        let (mut feed, proc) = feed();
        feed.engine.table = FdTable::with_limits(TableLimits { max_processes: 1, max_fds: 100 });
        feed.found(PARENT, "server");
        let fds = OpenFds::from([(7, observed(FdKind::Pipe))]);
        proc.show(700, Shown { fds, comm: Some("other".into()), ..Shown::default() });
        feed.event(700, Op::Dup { old: 7, new: 20, cloexec: false, replaces: false }, Some(1));
        assert!(feed.engine.table().process(700).is_none());
        assert_eq!(feed.engine.table().dropped().processes, 1, "one record, one dropped process");
    }

    /// A baseline's chunks are in the table as soon as they are read: an exec between two
    /// closes what the first found close-on-exec, and the second reads what the new image holds.
    #[test]
    fn an_exec_during_a_baseline_read_closes_what_it_found_close_on_exec() {
        let (mut feed, proc) = feed();
        let fd = |cloexec: bool| ObservedFd { cloexec, ..observed(FdKind::File) };
        let shown = OpenFds::from([(3, fd(true)), (4, fd(false)), (5, fd(true)), (6, fd(false))]);
        proc.show(PARENT, Shown { fds: shown, comm: Some("server".into()), ..Shown::default() });
        feed.engine.start_baseline(5);
        assert!(feed.engine.begin_baseline(PARENT, feed.now));
        assert!(!feed.engine.read_reconcile(2, feed.now), "3 and 4 read");
        feed.event(
            PARENT,
            Op::Exec { old_tid: PARENT, filename: b"/bin/server".to_vec(), comm: "server".into() },
            None,
        );
        let shown = OpenFds::from([(4, fd(false)), (6, fd(false))]);
        proc.show(PARENT, Shown { fds: shown, comm: Some("server".into()), ..Shown::default() });
        assert!(feed.engine.read_reconcile(2, feed.now), "6, the last");
        assert_eq!(feed.engine.finish_reconcile(feed.now), Corrections::default());
        let fds: Vec<i32> = feed.engine.table().process(PARENT).unwrap().fds.keys().collect();
        assert_eq!(fds, [4, 6]);
    }

    /// A process whose baseline read fails and that no longer runs (a zombie at the start, or
    /// one that exited and is not reaped) leaves the table, as the whole read skipped it; one
    /// that runs keeps what was read.
    #[test]
    fn a_baseline_read_that_fails_leaves_a_zombie_out() {
        let files = |fds: &[i32]| fds.iter().map(|fd| (*fd, observed(FdKind::File))).collect::<OpenFds>();
        for zombie in [true, false] {
            let (mut feed, proc) = feed();
            proc.show(
                PARENT,
                Shown { fds: files(&[3, 4, 5]), comm: Some("server".into()), ..Shown::default() },
            );
            feed.engine.start_baseline(5);
            assert!(feed.engine.begin_baseline(PARENT, feed.now));
            assert!(!feed.engine.read_reconcile(1, feed.now));
            let shown = Shown { fds: files(&[3, 4, 5]), unreadable: true, zombie, ..Shown::default() };
            proc.show(PARENT, shown);
            assert!(feed.engine.read_reconcile(1, feed.now), "failed: done");
            assert_eq!(feed.engine.finish_reconcile(feed.now), Corrections::default());
            feed.engine.end_baseline();
            match zombie {
                true => assert!(feed.engine.table().process(PARENT).is_none()),
                false => assert_eq!(fds_of(&feed.engine, PARENT), [3]),
            }
        }
    }

    /// During the baseline, a process a record shows first is not read whole at that record
    /// (records would wait): it is read in chunks in its turn, and so is a child it forks
    /// before then, and that child's child.
    #[test]
    fn during_the_baseline_a_process_first_seen_is_read_in_its_turn() {
        let (mut feed, proc) = feed();
        let files = |fds: &[i32]| fds.iter().map(|fd| (*fd, observed(FdKind::File))).collect::<OpenFds>();
        // 9 is what the record opened; the children hold what their parent held.
        for tgid in [PARENT, 600, 700] {
            proc.show(
                tgid,
                Shown { fds: files(&[3, 4, 5, 9]), comm: Some("server".into()), ..Shown::default() },
            );
        }
        feed.engine.start_baseline(5);
        open_at(&mut feed, PARENT, 9, 2);
        assert_eq!(fds_of(&feed.engine, PARENT), [9], "not read at the record");
        feed.event(PARENT, Op::NewTask { child: 600, thread: false, comm: "server".into() }, None);
        feed.event(600, Op::NewTask { child: 700, thread: false, comm: "server".into() }, None);
        let mut read = Vec::new();
        while let Some(tgid) = feed.engine.next_unread() {
            assert!(feed.engine.begin_baseline(tgid, feed.now));
            while !feed.engine.read_reconcile(2, feed.now) {}
            assert_eq!(feed.engine.finish_reconcile(feed.now), Corrections::default());
            read.push(tgid);
        }
        feed.engine.end_baseline();
        read.sort_unstable();
        assert_eq!(read, [PARENT, 600, 700]);
        for tgid in [PARENT, 600, 700] {
            assert_eq!(fds_of(&feed.engine, tgid), [3, 4, 5, 9], "{tgid}");
        }
    }

    /// A process first seen through its fork (in no baseline yet): the child holds what /proc
    /// shows, not a copy of a table that lacked everything.
    #[test]
    fn a_child_of_a_process_first_seen_at_its_fork_holds_what_proc_shows() {
        let (mut feed, proc) = feed();
        let files = |fds: &[i32]| fds.iter().map(|fd| (*fd, observed(FdKind::File))).collect::<OpenFds>();
        proc.show(PARENT, Shown { fds: files(&[3, 4]), comm: Some("server".into()), ..Shown::default() });
        proc.show(600, Shown { fds: files(&[3, 4]), comm: Some("server".into()), ..Shown::default() });
        feed.event(PARENT, Op::NewTask { child: 600, thread: false, comm: "server".into() }, None);
        let fds: Vec<i32> = feed.engine.table().process(600).unwrap().fds.keys().collect();
        assert_eq!(fds, [3, 4]);
    }

    #[test]
    fn a_process_first_seen_through_an_event_brings_what_it_already_holds() {
        let (mut feed, proc) = feed();
        let fds = OpenFds::from([(0, observed(FdKind::File)), (3, observed(FdKind::File))]);
        proc.show(
            300,
            Shown { fds, comm: Some("moved".into()), cmdline: Some("moved in".into()), ..Shown::default() },
        );
        // Its first event opens fd 3: what the event says stays, /proc adds the rest.
        let opened = feed.open(300, FdKind::Pipe, 7, 1);
        assert_eq!(opened, [3]);
        let site = feed.engine.table().process(300).unwrap().fds[&3].site;
        assert!(matches!(site, SiteId::Stack(_)));
        assert_eq!(
            kinds(&feed.engine, 300),
            [(0, FdKind::File, SiteId::BeforeTrace), (3, FdKind::Pipe, site)]
        );
        assert_eq!(feed.engine.table().process(300).unwrap().comm, "moved");
        assert_eq!(feed.engine.cmdline(300).as_deref(), Some("moved in"));
    }

    #[test]
    fn received_descriptors_take_their_kind_from_proc() {
        let (mut feed, proc) = feed();
        feed.found(PARENT, "server");
        let fds = OpenFds::from([(
            9,
            ObservedFd {
                kind: FdKind::Socket,
                detail: FdDetail::Socket { family: 1, sock_type: 1, protocol: 0 },
                cloexec: false,
            },
        )]);
        proc.show(PARENT, Shown { fds, ..Shown::default() });
        feed.event(
            PARENT,
            Op::Receive { socket: 4, fds: smallvec![9, 10], cloexec: true, truncated: false },
            Some(1),
        );
        let table = feed.engine.table().process(PARENT).unwrap();
        assert_eq!(table.fds[&9].kind, FdKind::Socket);
        assert_eq!(table.fds[&9].detail, FdDetail::Socket { family: 1, sock_type: 1, protocol: 0 });
        assert_eq!(table.fds[&10].kind, FdKind::Other, "not in /proc (closed since): unknown");
        assert!(table.fds[&9].cloexec);
    }

    /// A receive the kernel could not list whole is counted, and its process handed to the
    /// session to reconcile, on a Unix socket or one the table does not know; not on a socket
    /// of a family that cannot pass descriptors (a UDP server's recvmmsg of many datagrams).
    #[test]
    fn a_receive_cut_short_on_a_socket_that_can_pass_descriptors_asks_for_reconciliation() {
        let (mut feed, _proc) = feed();
        feed.found(PARENT, "server");
        let socket = |feed: &mut Feed, family: i32| {
            feed.event(
                PARENT,
                Op::Open {
                    fds: smallvec![20 + family],
                    kind: FdKind::Socket,
                    detail: FdDetail::Socket { family: family as u16, sock_type: 2, protocol: 0 },
                    cloexec: false,
                    dirfd: None,
                },
                Some(1),
            );
            20 + family
        };
        let (unix, inet) = (socket(&mut feed, libc::AF_UNIX), socket(&mut feed, libc::AF_INET));
        let receive = |feed: &mut Feed, socket: i32, truncated: bool| {
            feed.event(PARENT, Op::Receive { socket, fds: smallvec![], cloexec: false, truncated }, Some(2));
        };
        let cut_short = |feed: &Feed| feed.engine.counts().receives_cut_short;
        receive(&mut feed, unix, false);
        receive(&mut feed, inet, true);
        assert_eq!((cut_short(&feed), feed.engine.take_cut_short()), (0, Vec::<u32>::new()));
        receive(&mut feed, unix, true);
        receive(&mut feed, 99, true);
        assert_eq!((cut_short(&feed), feed.engine.take_cut_short()), (2, vec![PARENT]));
        assert_eq!(feed.engine.take_cut_short(), Vec::<u32>::new(), "handed over once");
        // Nor one that exited since.
        receive(&mut feed, unix, true);
        feed.event(PARENT, Op::Exit, None);
        assert_eq!((cut_short(&feed), feed.engine.take_cut_short()), (3, Vec::<u32>::new()));
    }

    #[test]
    fn reconciliation_corrects_the_table_and_leaves_descriptors_touched_meanwhile_alone() {
        let (mut feed, proc) = feed();
        feed.found(PARENT, "server");
        let fds = feed.open(PARENT, FdKind::File, 1, 2);
        assert_eq!(fds, [3, 4]);
        // The kernel says: 3 is open, 4 is not (its close was lost), 7 is (its open was lost).
        let shown = OpenFds::from([(3, observed(FdKind::File)), (7, observed(FdKind::Pipe))]);
        proc.show(PARENT, Shown { fds: shown, ..Shown::default() });
        assert_eq!(feed.engine.reconcile_targets(), [PARENT]);
        read_whole(&mut feed.engine, PARENT, feed.now);
        // Opened after /proc was read: not in its view, and left alone.
        feed.open(PARENT, FdKind::File, 2, 1);
        let fixed = feed.engine.finish_reconcile(feed.now);
        assert_eq!(fixed, Corrections { added: 1, removed: 1 });
        assert_eq!(feed.engine.corrections(), fixed, "summed over the session");
        let table = &feed.engine.table().process(PARENT).unwrap().fds;
        assert_eq!(table.keys().collect::<Vec<_>>(), [3, 5, 7]);
        assert_eq!((table[&7].kind, table[&7].site), (FdKind::Pipe, SiteId::UnknownOrigin));
        let counters = feed.engine.stats().get(PARENT, FdKind::File, table[&3].site);
        assert_eq!(counters.closed_by[CloseReason::Reconcile.index()], 1);
        // Nothing pending: a second finish changes nothing.
        assert_eq!(feed.engine.finish_reconcile(feed.now), Corrections::default());
    }

    /// A close's record has no time of its own (`CLOSE_NOT_TIMED`): it is stamped with the time
    /// its batch was taken from the ring (`records_taken`), later than the close. Here /proc is
    /// read while 3 is open, and its close comes in a batch taken after the pass began: the pass
    /// leaves 3 alone, as it must for a close that may have come after its read. Stamped with
    /// the record's 0, the close would be taken for one from before the pass, and the pass
    /// would add the closed descriptor back.
    #[test]
    fn a_close_record_is_stamped_with_the_time_it_was_taken_from_the_ring() {
        use helios_trace_common::{CLOSE_NOT_TIMED, CloseEvent, EventHeader, kind};
        use zerocopy::IntoBytes as _;
        let (mut feed, proc) = feed();
        feed.found(PARENT, "server");
        assert_eq!(feed.open(PARENT, FdKind::File, 1, 1), [3]);
        proc.show(PARENT, Shown { fds: OpenFds::from([(3, observed(FdKind::File))]), ..Shown::default() });
        read_whole(&mut feed.engine, PARENT, feed.now);
        let header =
            EventHeader { kind: kind::CLOSE, tgid: PARENT, tid: PARENT, reserved: 0, ts_ns: CLOSE_NOT_TIMED };
        let close = CloseEvent { header, fd: 3, flags: 0 };
        feed.engine.records_taken(feed.now + 1);
        feed.engine.handle_record(close.as_bytes(), &DistinctStacks);
        assert_eq!(feed.engine.finish_reconcile(feed.now + 2), Corrections::default());
        assert!(feed.engine.table().process(PARENT).unwrap().fds.is_empty());
    }

    #[test]
    fn reconciliation_reads_the_flag_of_what_it_adds_though_the_table_had_it_at_the_read() {
        let (mut feed, proc) = feed();
        feed.found(PARENT, "server");
        assert_eq!(feed.open(PARENT, FdKind::File, 1, 1), [3]);
        // The kernel: 3 is open, close-on-exec.
        let shown = OpenFds::from([(3, ObservedFd { cloexec: true, ..observed(FdKind::File) })]);
        proc.show(PARENT, Shown { fds: shown, ..Shown::default() });
        // The pass reads /proc (3 tracked: its flag not read), then handles a close_range of 3
        // stamped before the pass (another CPU's record, late), its reopening lost.
        read_whole(&mut feed.engine, PARENT, feed.now + SEC);
        feed.event(PARENT, Op::CloseRange { first: 3, last: 3, cloexec_only: false }, None);
        assert_eq!(feed.engine.finish_reconcile(feed.now + SEC), Corrections { added: 1, removed: 0 });
        let table = &feed.engine.table().process(PARENT).unwrap().fds;
        assert!(table[&3].cloexec, "the flag as /proc has it, not assumed");
    }

    #[test]
    fn a_process_gone_without_its_exit_is_forgotten_at_reconciliation() {
        let (mut feed, proc) = feed();
        feed.found(PARENT, "server");
        feed.found(400, "gone");
        feed.open(400, FdKind::Socket, 3, 2);
        proc.show(PARENT, Shown::default());
        feed.engine.take_transitions();
        let mut targets = feed.engine.reconcile_targets();
        targets.sort_unstable();
        assert_eq!(targets, [PARENT, 400]);
        for pid in targets {
            read_whole(&mut feed.engine, pid, feed.now);
        }
        assert!(feed.engine.table().process(400).is_none());
        assert!(feed.engine.table().process(PARENT).is_some());
        let kept = feed.engine.take_transitions();
        assert!(kept.contains(&Kept::Transition(Transition::ProcessExited { tgid: 400 })), "{kept:?}");
    }

    #[test]
    fn a_process_read_in_chunks_is_corrected_around_the_records_handled_between_them() {
        let (mut feed, proc) = feed();
        feed.found(PARENT, "server");
        assert_eq!(feed.open(PARENT, FdKind::File, 1, 6), [3, 4, 5, 6, 7, 8]);
        let files = |fds: &[i32]| fds.iter().map(|fd| (*fd, observed(FdKind::File))).collect::<OpenFds>();
        // The kernel: 4 and 7 closed (their closes lost), 20 and 21 open (their opens lost).
        let mut shown = files(&[3, 5, 6, 8]);
        shown.extend([(20, observed(FdKind::Pipe)), (21, observed(FdKind::Pipe))]);
        proc.show(PARENT, Shown { fds: shown.clone(), ..Shown::default() });
        feed.engine.begin_reconcile(PARENT, feed.now);
        assert!(!feed.engine.read_reconcile(4, feed.now), "3, 5, 6 and 8 read; 20 next");
        // Records handled between the chunks: 3 and 8 (read open) closed, 9 (below where the
        // read goes on, never read) opened. Each view is right as of its time: left alone.
        feed.close(PARENT, 3);
        feed.close(PARENT, 8);
        assert_eq!(feed.open(PARENT, FdKind::File, 2, 1), [9]);
        for fd in [3, 8] {
            shown.remove(&fd);
        }
        shown.insert(9, observed(FdKind::File));
        proc.show(PARENT, Shown { fds: shown, ..Shown::default() });
        assert!(feed.engine.read_reconcile(4, feed.now), "20 and 21, the last");
        let fixed = feed.engine.finish_reconcile(feed.now);
        assert_eq!(fixed, Corrections { added: 2, removed: 2 }, "20 and 21 added, 4 and 7 removed");
        let table = &feed.engine.table().process(PARENT).unwrap().fds;
        assert_eq!(table.keys().collect::<Vec<_>>(), [5, 6, 9, 20, 21]);
        assert_eq!((table[&20].kind, table[&20].site), (FdKind::Pipe, SiteId::UnknownOrigin));
    }

    #[test]
    fn a_close_the_table_could_not_apply_during_a_pass_is_left_alone() {
        let (mut feed, proc) = feed();
        feed.found(PARENT, "server");
        // 7's open was lost: /proc has it, the table does not.
        proc.show(PARENT, Shown { fds: OpenFds::from([(7, observed(FdKind::File))]), ..Shown::default() });
        read_whole(&mut feed.engine, PARENT, feed.now);
        // Closed since the read: the table has nothing to remove, and /proc's view is stale.
        feed.close(PARENT, 7);
        assert_eq!(feed.engine.finish_reconcile(feed.now), Corrections::default());
        assert!(feed.engine.table().process(PARENT).unwrap().fds.is_empty());
        // An exec during the pass (it may close any such): nothing of the pass is trusted.
        read_whole(&mut feed.engine, PARENT, feed.now);
        feed.event(
            PARENT,
            Op::Exec { old_tid: PARENT, filename: b"/bin/server".to_vec(), comm: "server".into() },
            None,
        );
        assert_eq!(feed.engine.finish_reconcile(feed.now), Corrections::default());
        // /proc still shows 7 (reopened, say, that open lost too): the next pass adds it.
        read_whole(&mut feed.engine, PARENT, feed.now);
        assert_eq!(feed.engine.finish_reconcile(feed.now), Corrections { added: 1, removed: 0 });
    }

    #[test]
    fn a_read_that_fails_part_way_corrects_nothing() {
        let (mut feed, proc) = feed();
        feed.found(PARENT, "server");
        assert_eq!(feed.open(PARENT, FdKind::File, 1, 3), [3, 4, 5]);
        let shown = OpenFds::from([(3, observed(FdKind::File)), (9, observed(FdKind::File))]);
        proc.show(PARENT, Shown { fds: shown.clone(), ..Shown::default() });
        feed.engine.begin_reconcile(PARENT, feed.now);
        assert!(!feed.engine.read_reconcile(1, feed.now));
        // The rest cannot be read: what was read is no view of the process (4 and 5 would
        // look closed).
        proc.show(PARENT, Shown { fds: shown, unreadable: true, ..Shown::default() });
        assert!(feed.engine.read_reconcile(1, feed.now));
        assert_eq!(feed.engine.finish_reconcile(feed.now), Corrections::default());
        let table = &feed.engine.table().process(PARENT).unwrap().fds;
        assert_eq!(table.keys().collect::<Vec<_>>(), [3, 4, 5], "still tracked");
    }

    #[test]
    fn transitions_handed_back_hold_the_next_ones_in_their_room() {
        let (mut feed, _proc) = feed();
        feed.found(PARENT, "server");
        feed.open(PARENT, FdKind::File, 2, 40);
        let kept = feed.engine.take_transitions();
        let (room, at) = (kept.capacity(), kept.as_ptr());
        assert!(kept.len() >= 40, "{kept:?}");
        feed.engine.reuse_transitions(kept);
        feed.open(PARENT, FdKind::File, 2, 1);
        let kept = feed.engine.take_transitions();
        assert_eq!((kept.len(), kept.capacity(), kept.as_ptr()), (1, room, at), "{kept:?}");
        // Transitions kept meanwhile are not thrown away for the room.
        feed.open(PARENT, FdKind::File, 2, 1);
        feed.engine.reuse_transitions(Vec::with_capacity(room * 2));
        assert_eq!(feed.engine.take_transitions().len(), 1);
    }

    #[test]
    fn exited_processes_are_kept_as_of_their_exit_when_asked() {
        let (mut feed, _proc) = feed();
        feed.engine.retain_exited(1);
        feed.found(PARENT, "server");
        for child in [500, 501] {
            feed.event(PARENT, Op::NewTask { child, thread: false, comm: "server".into() }, None);
            feed.open(child, FdKind::File, 5, 2);
            feed.event(child, Op::Exit, None);
        }
        let exited = feed.engine.exited();
        assert_eq!(exited.len(), 1, "at most one kept: the oldest went");
        assert_eq!((exited[0].tgid, exited[0].fds.len()), (501, 2));
        let site = exited[0].fds[&3].site;
        let counters = exited[0].counters[&(FdKind::File, site)];
        assert_eq!((counters.opened, counters.closed_by[CloseReason::Exit.index()]), (2, 2));
        assert!(feed.engine.stats().held(site), "the report shows its site: held");
    }

    #[test]
    fn records_are_counted_by_type_and_undecodable_ones_too() {
        let (mut feed, _proc) = feed();
        feed.engine.handle_record(&[1, 2, 3], &DistinctStacks);
        assert_eq!((feed.engine.counts().received, feed.engine.counts().undecodable), (1, 1));
        feed.found(PARENT, "server");
        let fd = feed.open(PARENT, FdKind::File, 1, 1)[0];
        feed.close(PARENT, fd);
        let by_type: HashMap<&str, u64> = feed.engine.events_by_type().into_iter().collect();
        assert_eq!(
            (by_type["undecodable"], by_type["open"], by_type["close"]),
            (1, 0, 0),
            "events are not records"
        );
        let kept = feed.engine.take_transitions();
        assert!(kept.iter().any(|k| matches!(
            k,
            Kept::Transition(Transition::Fd { change: FdChange::Closed(CloseReason::Close), .. })
        )));
    }

    #[test]
    fn calls_the_kernel_matched_are_opened_and_closed_at_their_site_and_leave_the_table_alone() {
        let (mut feed, _proc) = feed();
        feed.found(PARENT, "server");
        let counted = |feed: &Feed| {
            let process = feed.engine.table().process(PARENT).unwrap();
            let fds: Vec<i32> = process.fds.iter().map(|(fd, _)| fd).collect();
            let site = process.fds.iter().next().map(|(_, open)| open.site).unwrap();
            let counters = feed.engine.stats().get(PARENT, FdKind::Socket, site);
            (fds, counters.opened, counters.closed_by[CloseReason::Close.index()])
        };
        // Three pairs, then the record's own open, kept: fd 5 open.
        feed.engine.handle_record(&kept_socket(PARENT, 2 * SEC, 5, 3, false), &DistinctStacks);
        assert_eq!(counted(&feed), (vec![5], 4, 3));
        // Two pairs alone: fd 5 still the only one open, at the same site.
        feed.engine.handle_record(&kept_socket(PARENT, 3 * SEC, 6, 2, true), &DistinctStacks);
        assert_eq!(counted(&feed), (vec![5], 6, 5));
        // A plain record: one open, no pair.
        feed.engine.handle_record(&kept_socket(PARENT, 4 * SEC, 6, 0, false), &DistinctStacks);
        assert_eq!(counted(&feed), (vec![5, 6], 7, 5));
        let counts = feed.engine.counts();
        assert_eq!(
            (counts.received, counts.calls_paired, counts.undecodable),
            (2, 5, 0),
            "pairs alone: no call"
        );
        let by_type: HashMap<&str, u64> = feed.engine.events_by_type().into_iter().collect();
        assert_eq!((by_type["open"], by_type["close"]), (7, 5), "each pair is an open and a close");
    }

    /// A record of `n` pairs does what `n` records of one pair each do (the naive model: each
    /// pair its own open and close), whether the table takes the pairs or is full, and whether
    /// the process was seen before or is first seen at the pairs: the table, the site's
    /// counters and holders, what the exporter is handed, the counts by type, of chains, of
    /// held closes and of what was dropped. And it hands the exporter a few items, not two a
    /// pair.
    #[test]
    fn a_record_of_many_pairs_does_what_as_many_records_of_one_pair_do() {
        let summed = |kept: &[Kept]| {
            let mut sums: BTreeMap<(u32, FdKind, SiteId), [u64; 2]> = BTreeMap::new();
            for item in kept {
                let (tgid, kind, site, counts) = match *item {
                    Kept::Transition(Transition::Fd { tgid, kind, site, change, .. }) => match change {
                        FdChange::Opened => (tgid, kind, site, [1, 0]),
                        FdChange::Closed(CloseReason::Close) => (tgid, kind, site, [0, 1]),
                        other => panic!("{other:?}: not a pair's"),
                    },
                    Kept::Pairs { tgid, kind, site, pairs } => (tgid, kind, site, [pairs, pairs]),
                    _ => continue,
                };
                let sum = sums.entry((tgid, kind, site)).or_default();
                (sum[0], sum[1]) = (sum[0] + counts[0], sum[1] + counts[1]);
            }
            sums
        };
        // `seen`: the process is in the table, and its own open at fd 5 came first.
        let run = |records: &[Vec<u8>], seen: bool, limits: TableLimits| {
            let (mut feed, _proc) = feed();
            feed.engine.table = FdTable::with_limits(limits);
            feed.engine.keep_transitions();
            if seen {
                feed.found(PARENT, "server");
                feed.engine.handle_record(&kept_socket(PARENT, SEC, 5, 0, false), &DistinctStacks);
            }
            for record in records {
                feed.engine.handle_record(record, &DistinctStacks);
            }
            let kept = feed.engine.take_transitions();
            let engine = &feed.engine;
            let counters: BTreeMap<(FdKind, SiteId), crate::model::sites::SiteCounters> =
                engine.stats().process(PARENT).into_iter().flatten().map(|(k, c)| (*k, *c)).collect();
            let held: Vec<bool> = counters.keys().map(|(_, site)| engine.stats().held(*site)).collect();
            let by_type: BTreeMap<&str, u64> = engine.events_by_type().into_iter().collect();
            let fds = engine.table().process(PARENT).map(|_| fds_of(engine, PARENT));
            let table = (fds, engine.table().dropped(), engine.table().held_closes());
            let done = (
                table,
                (counters, held, engine.stats().site_count()),
                summed(&kept),
                (by_type, engine.counts(), engine.stack_counts()),
            );
            (done, kept.len())
        };
        let room = TableLimits { max_processes: 10, max_fds: 100 };
        let setups = [
            (true, room),
            (true, TableLimits { max_fds: 1, ..room }),
            (false, room),
            (false, TableLimits { max_processes: 0, ..room }),
        ];
        for n in [1, 2, 7, 1000] {
            for (seen, limits) in setups {
                let at_once = run(&[kept_socket(PARENT, 2 * SEC, 6, n, true)], seen, limits);
                let one_by_one: Vec<Vec<u8>> =
                    (0..n).map(|_| kept_socket(PARENT, 2 * SEC, 6, 1, true)).collect();
                let one_by_one = run(&one_by_one, seen, limits);
                assert_eq!(at_once.0, one_by_one.0, "{n} pairs, seen {seen}, {limits:?}");
                assert!(at_once.1 <= 8, "{} items handed over for {n} pairs", at_once.1);
            }
        }
        // What the two agree on is the pairs counted, at the site of fd 5's open.
        let ((_, (counters, held, _), sums, (_, counts, chains)), _) =
            run(&[kept_socket(PARENT, 2 * SEC, 6, 1000, true)], true, room);
        let (&(kind, site), counters) = counters.iter().next().expect("fd 5's site");
        assert_eq!(
            (kind, counters.opened, counters.closed_by[CloseReason::Close.index()]),
            (FdKind::Socket, 1001, 1000)
        );
        assert_eq!((held, sums[&(PARENT, kind, site)]), (vec![true], [1001, 1000]));
        assert_eq!((counts.calls_paired, chains.chains_learned), (1000, 1001));
    }

    /// Pairs the kernel matched while /proc was read (helios-trace-ebpf/src/pairs.rs): a number
    /// /proc showed open may have been one of theirs, closed since. Told the number, the pass
    /// leaves it alone, as it does one a close record touched; not told, it adds nothing.
    #[test]
    fn a_reconciliation_pass_adds_no_number_of_pairs_matched_meanwhile() {
        for (told, added, left) in [(Some(5), 1, vec![7]), (None, 0, vec![])] {
            let (mut feed, proc) = feed();
            feed.found(PARENT, "server");
            // 5: a kept open at the read, matched with its close since; 7: an open lost.
            let shown = OpenFds::from([(5, observed(FdKind::Socket)), (7, observed(FdKind::Pipe))]);
            proc.show(PARENT, Shown { fds: shown, ..Shown::default() });
            read_whole(&mut feed.engine, PARENT, feed.now);
            feed.engine.handle_record(&kept_socket_at(PARENT, feed.now, 5, 2, true, told), &DistinctStacks);
            let fixed = feed.engine.finish_reconcile(feed.now);
            assert_eq!(fixed, Corrections { added, removed: 0 }, "told {told:?}");
            assert_eq!(fds_of(&feed.engine, PARENT), left, "told {told:?}");
        }
    }

    #[test]
    fn a_kept_call_sent_between_a_threads_python_record_and_its_descriptor_leaves_the_python_record() {
        use helios_trace_common::{EventHeader, PythonStack, kind};
        use zerocopy::{FromZeros as _, IntoBytes as _};
        let (mut feed, _proc) = feed();
        feed.found(PARENT, "server");
        let mut python = PythonStack::new_zeroed();
        python.header =
            EventHeader { kind: kind::PYTHON_STACK, tgid: PARENT, tid: 101, reserved: 0, ts_ns: 9 * SEC };
        let len = helios_trace_common::PYTHON_STACK_FRAMES_OFFSET;
        feed.engine.handle_record(&python.as_bytes()[..len], &DistinctStacks);
        // The same thread's kept call, sent by the next record of the process.
        feed.engine.handle_record(&kept_socket(101, 8 * SEC, 5, 1, false), &DistinctStacks);
        assert_eq!(feed.engine.walked.get(&101).map(|w| w.ts_ns), Some(9 * SEC), "not the kept call's");
        feed.engine.handle_record(&kept_socket(101, 9 * SEC, 6, 0, false), &DistinctStacks);
        assert!(feed.engine.walked.is_empty(), "taken by its own descriptor's record");
    }

    /// A libuv handle record (helios-trace-ebpf/src/libuv.rs) of PARENT's main thread, with a
    /// frame-pointer stack id.
    fn handle_record(kind: u32, handle: u64, stack_id: i32) -> Vec<u8> {
        use zerocopy::IntoBytes as _;
        let header =
            helios_trace_common::EventHeader { kind, tgid: PARENT, tid: PARENT, reserved: 0, ts_ns: 1 };
        let record = helios_trace_common::HandleEvent { header, handle, stack_id, reserved: 0 };
        record.as_bytes().to_vec()
    }

    #[test]
    fn a_socket_made_inside_uv_tcp_connect_takes_the_site_of_its_handle() {
        use helios_trace_common::{STACK_NOT_CAPTURED, kind};
        let (mut feed, _proc) = feed();
        feed.found(PARENT, "node");
        let (handle_stack, tick_stack) = (7, 9);
        let records = |feed: &mut Feed, records: &[Vec<u8>]| {
            for record in records {
                feed.engine.handle_record(record, &DistinctStacks);
            }
        };
        // socket(AF_INET, SOCK_STREAM, 0) as fd `fd`, from call site `stack`.
        let tcp_socket = |feed: &mut Feed, fd: i32, stack: i32| {
            let detail = FdDetail::Socket {
                family: libc::AF_INET as u16,
                sock_type: libc::SOCK_STREAM as u16,
                protocol: 0,
            };
            let op =
                Op::Open { fds: smallvec![fd], kind: FdKind::Socket, detail, cloexec: true, dirfd: None };
            feed.event(PARENT, op, Some(stack));
            fd
        };
        records(
            &mut feed,
            &[
                handle_record(kind::LIBUV_TCP_HANDLE, 0x1000, handle_stack),
                handle_record(kind::LIBUV_TCP_CONNECT, 0x1000, STACK_NOT_CAPTURED),
            ],
        );
        // Something else the thread makes inside the bracket (a file) is not the handle's.
        let file = feed.open(PARENT, FdKind::File, tick_stack, 1)[0];
        let inside = tcp_socket(&mut feed, 20, tick_stack);
        records(&mut feed, &[handle_record(kind::LIBUV_TCP_CONNECT_RETURN, 0, STACK_NOT_CAPTURED)]);
        // Outside the bracket, and a second connect of a handle already used: its own stack.
        let outside = tcp_socket(&mut feed, 21, tick_stack);
        records(&mut feed, &[handle_record(kind::LIBUV_TCP_CONNECT, 0x1000, STACK_NOT_CAPTURED)]);
        let again = tcp_socket(&mut feed, 22, tick_stack);
        records(&mut feed, &[handle_record(kind::LIBUV_TCP_CONNECT_RETURN, 0, STACK_NOT_CAPTURED)]);
        let site = |fd| kinds(&feed.engine, PARENT).into_iter().find(|(f, ..)| *f == fd).unwrap().2;
        // The handle's site: not the tick's, which the others keep.
        assert!(matches!((site(inside), site(outside)), (SiteId::Stack(_), SiteId::Stack(_))));
        assert_ne!(site(inside), site(outside));
        assert_eq!(site(file), site(outside));
        assert_eq!(site(again), site(outside));
        // ...the site of the handle's own stack: its frame is the uprobe's pc, a function's
        // first byte (carried one past, looked up at itself).
        let frames = feed.engine.frames(site(inside)).unwrap();
        assert_eq!(frames[0].address, Some(0x40_0000 + handle_stack as u64 * 16 + 1));
    }

    #[test]
    fn names_and_command_lines_come_from_proc_once() {
        let (mut feed, proc) = feed();
        feed.event(PARENT, Op::NewTask { child: 600, thread: false, comm: "server".into() }, None);
        proc.show(
            600,
            Shown { comm: Some("job".into()), cmdline: Some("/bin/job --once".into()), ..Shown::default() },
        );
        feed.event(600, Op::Exec { old_tid: 600, filename: b"/bin/job".to_vec(), comm: String::new() }, None);
        assert_eq!(feed.engine.cmdline(600).as_deref(), Some("/bin/job --once"));
        proc.show(600, Shown { cmdline: Some("changed".into()), ..Shown::default() });
        assert_eq!(feed.engine.cmdline(600).as_deref(), Some("/bin/job --once"), "cached");
        feed.engine.refresh_names();
        assert_eq!(feed.engine.table().process(600).unwrap().comm, "", "no comm in /proc now");
        proc.show(600, Shown { comm: Some("job".into()), ..Shown::default() });
        feed.engine.refresh_names();
        assert_eq!(feed.engine.table().process(600).unwrap().comm, "job");
    }
}
