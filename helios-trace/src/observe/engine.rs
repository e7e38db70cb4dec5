//! The userspace pipeline between the ring buffer and the outputs: decode a record, resolve its
//! stack to a site, apply it to the FdTable, count it per site; plus the /proc baseline at
//! start and the periodic reconciliation that heals lost events. The ad-hoc session and the
//! exporter both drive one Engine; neither touches the table directly.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
};

use log::debug;

use crate::{
    model::{
        counts::EventCounts,
        event::{Event, Op, StackSample},
        exited::ExitedProcess,
        fd::{FdKind, SiteId},
        fdtable::{Corrections, FdTable, ObservedFd, Process, TableLimits, Transition},
        kept::Kept,
        sites::SiteStats,
    },
    resolve::{python::PythonProcesses, stacks::StackRegistry},
    sys::{
        decode::{self, Decoded, PythonFrames},
        proc::{self, SocketTables},
        syscalls::SyscallTable,
    },
};

/// Where captured stacks are read from (the kernel's stack map, or a test's table).
pub trait StackSource {
    fn read_stack(&self, stack_id: u32) -> Option<Vec<u64>>;
}

impl StackSource for crate::sys::Tracer {
    fn read_stack(&self, stack_id: u32) -> Option<Vec<u64>> {
        crate::sys::Tracer::read_stack(self, stack_id)
    }
}

/// A reconciliation pass between reading /proc and comparing: events that arrive in between
/// touch descriptors whose two views may honestly differ, so those are left alone.
struct PendingReconcile {
    started_ns: u64,
    observed: HashMap<u32, BTreeMap<i32, ObservedFd>>,
    touched: HashMap<u32, HashSet<i32>>,
}

pub struct Engine {
    pub table: FdTable,
    pub stats: SiteStats,
    pub stacks: StackRegistry,
    /// CPython processes: where their frames are, and the names of walked frames.
    pub python: PythonProcesses,
    /// The Python frames of the descriptor record that comes next.
    walked: Option<PythonFrames>,
    syscalls: SyscallTable,
    proc_root: PathBuf,
    cmdlines: HashMap<u32, Option<String>>,
    counts: EventCounts,
    /// Decoded records by [`Op::index`], and those that changed nothing tracked.
    by_type: [u64; Op::NAMES.len()],
    untracked: u64,
    corrections: Corrections,
    pending: Option<PendingReconcile>,
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
    pub fn new(proc_root: impl Into<PathBuf>, limits: TableLimits) -> Engine {
        let proc_root = proc_root.into();
        Engine {
            table: FdTable::with_limits(limits),
            stats: SiteStats::default(),
            stacks: StackRegistry::new(&proc_root),
            python: PythonProcesses::new(&proc_root),
            walked: None,
            syscalls: SyscallTable::native(),
            proc_root,
            cmdlines: HashMap::new(),
            counts: EventCounts::default(),
            by_type: [0; Op::NAMES.len()],
            untracked: 0,
            corrections: Corrections::default(),
            pending: None,
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
    pub fn retain_exited(&mut self, limit: usize) {
        self.retain_exited = limit;
    }

    /// Forget call sites that nothing has held for `retention_ns` (`--retention`).
    pub fn set_retention(&mut self, retention_ns: u64) {
        self.retention_ns = retention_ns;
    }

    /// Forget the call sites nothing held for the retention, as of `now_ns`: their frames and
    /// sums here, their series in the exporter (`Kept::Forgotten`). Once a second.
    pub fn expire_sites(&mut self, now_ns: u64) -> usize {
        let expired = self.stats.expire(now_ns, self.retention_ns);
        for site in &expired {
            self.stacks.forget_site(*site);
            if self.keep_transitions {
                self.kept.push(Kept::Forgotten { site: *site });
            }
        }
        expired.len()
    }

    /// Exited processes kept by `retain_exited`, oldest first.
    pub fn exited(&self) -> &[ExitedProcess] {
        &self.exited
    }

    pub fn proc_root(&self) -> &Path {
        &self.proc_root
    }

    pub fn counts(&self) -> EventCounts {
        self.counts
    }

    pub fn corrections(&self) -> Corrections {
        self.corrections
    }

    /// Records received, by event type (`untracked`: decoded but changing nothing tracked,
    /// such as a failed call; `undecodable`: short or unknown). They add up to `received`.
    pub fn events_by_type(&self) -> Vec<(&'static str, u64)> {
        let mut counts: Vec<(&'static str, u64)> = Op::NAMES.iter().copied().zip(self.by_type).collect();
        counts.push(("untracked", self.untracked));
        counts.push(("undecodable", self.counts.undecodable));
        counts
    }

    /// Keep every transition for `take_transitions` (the exporter aggregates them).
    pub fn keep_transitions(&mut self) {
        self.keep_transitions = true;
    }

    /// Transitions kept since the last `take_transitions`.
    pub fn pending_transitions(&self) -> usize {
        self.kept.len()
    }

    pub fn take_transitions(&mut self) -> Vec<Kept> {
        std::mem::take(&mut self.kept)
    }

    /// One ring-buffer record.
    pub fn handle_record(&mut self, bytes: &[u8], stacks: &dyn StackSource) {
        let decoded = decode::decode(bytes, &self.syscalls);
        if let Ok(Decoded::Python(frames)) = decoded {
            // Part of the descriptor record that follows, not a record of its own.
            self.walked = Some(frames);
            return;
        }
        self.counts.received += 1;
        match decoded {
            Ok(Decoded::Event(event)) => {
                self.by_type[event.op.index()] += 1;
                // decode checked the record's length, so its stack sample reads.
                let sample = decode::user_stack(bytes).ok().flatten();
                self.handle_event(&event, sample.as_ref(), stacks)
            }
            Ok(Decoded::Nothing | Decoded::Python(_)) => self.untracked += 1,
            Err(err) => {
                self.counts.undecodable += 1;
                debug!("undecodable record: {err}");
            }
        }
    }

    /// One event; `sample` is the user stack a `--stacks dwarf` record carried.
    pub fn handle_event(
        &mut self,
        event: &Event,
        sample: Option<&StackSample<'_>>,
        stacks: &dyn StackSource,
    ) {
        let site = match event.op {
            Op::Open { .. } | Op::Accept { .. } | Op::Dup { .. } | Op::GetFd { .. } | Op::Receive { .. } => {
                let native = self.stacks.site(event.tgid, event.stacks, sample, &|id| stacks.read_stack(id));
                // With Python frames, the native site is a step to the site: remembered too
                // (what Python sites are made from), so it must be forgotten in its turn.
                self.stats.made(native, event.ts_ns);
                match self.walked.take().filter(|w| w.tid == event.tid && w.ts_ns == event.ts_ns) {
                    Some(walked) => self.python.site(event.tgid, native, &walked.frames, &mut self.stacks),
                    None => native,
                }
            }
            _ => SiteId::NoStack,
        };
        self.stats.made(site, event.ts_ns);
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        if matches!(event.op, Op::Exit) {
            self.before_removal(event.tgid);
        }
        // A process neither in the baseline nor forked under our eyes (it moved into a --cgroup
        // target, or its fork was lost): what it already holds is only in /proc.
        let first_sight = self.table.process(event.tgid).is_none() && !matches!(event.op, Op::Exit);
        self.table.apply(event, site, &mut out);
        // (Not when the table refused it, at --max-processes: that would read /proc per event.)
        if first_sight && self.table.process(event.tgid).is_some() {
            self.load_missing(event.tgid, event.ts_ns, &mut out);
        }
        if let Op::Receive { fds, .. } = &event.op {
            // Received descriptors can be anything; only /proc knows, and only now.
            for &fd in fds {
                if let Some(o) = proc::observe_fd(&self.proc_root, event.tgid, fd, None) {
                    self.table.set_kind(event.tgid, fd, o.kind, o.detail);
                }
            }
        }
        self.after(&out, event.ts_ns);
        self.scratch = out;
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
                    if let Some(pending) = self.pending.as_mut().filter(|p| ts_ns >= p.started_ns) {
                        pending.touched.entry(*tgid).or_default().insert(*fd);
                    }
                }
                Transition::ProcessStarted { tgid, parent: Some(parent) } => {
                    self.stacks.inherit_maps(*parent, *tgid);
                    self.python.forked(*parent, *tgid, ts_ns);
                    if let Some(cmdline) = self.cmdlines.get(parent).cloned() {
                        self.cmdlines.insert(*tgid, cmdline);
                    }
                }
                Transition::ProcessStarted { tgid, parent: None } => self.python.first_sight(*tgid, ts_ns),
                Transition::ProcessExec { tgid } => {
                    // New image: old stack ids mean other code now. Capture the maps while the
                    // process surely runs, so a short-lived one still resolves.
                    self.stacks.forget(*tgid);
                    self.stacks.capture_maps(*tgid);
                    self.python.seen(*tgid, ts_ns);
                    self.cmdlines.insert(*tgid, proc::cmdline(&self.proc_root, *tgid));
                }
                Transition::ProcessExited { tgid } => {
                    self.stacks.forget(*tgid);
                    self.python.forget(*tgid);
                    self.cmdlines.remove(tgid);
                    if let Some(pending) = &mut self.pending {
                        pending.observed.remove(tgid);
                    }
                }
            }
        }
        if self.keep_transitions {
            for t in transitions {
                self.kept.push(Kept::Transition(t.clone()));
                if let Transition::ProcessStarted { tgid, .. } | Transition::ProcessExec { tgid } = t {
                    let comm = self.table.process(*tgid).map(|p| p.comm.clone()).unwrap_or_default();
                    self.kept.push(Kept::Named { tgid: *tgid, comm });
                }
            }
        }
    }

    /// Load what /proc shows open now for `pids`, under `before-trace`. Call after the programs
    /// are attached and before the first record is handled (see FdTable::insert_observed).
    pub fn load_baseline(&mut self, pids: &[u32], now_ns: u64) -> usize {
        let mut sockets = SocketTables::new(&self.proc_root);
        let mut loaded = 0;
        let mut out = Vec::new();
        for &pid in pids {
            let Ok(fds) = proc::observe_fds(&self.proc_root, pid, Some(sockets.for_process(pid))) else {
                continue;
            };
            let comm = proc::comm(&self.proc_root, pid).unwrap_or_default();
            self.cmdlines.insert(pid, proc::cmdline(&self.proc_root, pid));
            self.stacks.capture_maps(pid);
            loaded += fds.len();
            self.table.insert_observed(pid, &comm, fds, SiteId::BeforeTrace, now_ns, &mut out);
        }
        self.after(&out, now_ns);
        loaded
    }

    /// Add what /proc shows `tgid` holding that the table does not have (under `before-trace`);
    /// what events already said stays.
    fn load_missing(&mut self, tgid: u32, now_ns: u64, out: &mut Vec<Transition>) {
        let Ok(fds) = proc::observe_fds(&self.proc_root, tgid, None) else { return };
        let known = self.table.process(tgid).map(|p| p.fds.keys().copied().collect::<HashSet<i32>>());
        let missing = fds.into_iter().filter(|(fd, _)| !known.as_ref().is_some_and(|k| k.contains(fd)));
        let comm = proc::comm(&self.proc_root, tgid).unwrap_or_default();
        self.table.insert_observed(tgid, &comm, missing, SiteId::BeforeTrace, now_ns, out);
        self.stacks.capture_maps(tgid);
        self.cmdlines.entry(tgid).or_insert_with(|| proc::cmdline(&self.proc_root, tgid));
    }

    /// First half of reconciliation: read /proc for every tracked process.
    pub fn begin_reconcile(&mut self, now_ns: u64) {
        let pids: Vec<u32> = self.table.processes().map(|(tgid, _)| tgid).collect();
        let mut observed = HashMap::new();
        for pid in pids {
            if let Ok(fds) = proc::observe_fds(&self.proc_root, pid, None) {
                observed.insert(pid, fds);
            } else if !proc::exists(&self.proc_root, pid) {
                // Gone without an exit event (lost): forget it.
                self.before_removal(pid);
                let mut out = Vec::new();
                self.table.remove_process(pid, &mut out);
                self.after(&out, now_ns);
            }
        }
        self.pending = Some(PendingReconcile { started_ns: now_ns, observed, touched: HashMap::new() });
    }

    /// Second half, after the ring buffer was drained: correct what still differs.
    pub fn finish_reconcile(&mut self, now_ns: u64) -> Corrections {
        let Some(pending) = self.pending.take() else { return Corrections::default() };
        let mut total = Corrections::default();
        let no_skip = HashSet::new();
        for (pid, observed) in &pending.observed {
            let skip = pending.touched.get(pid).unwrap_or(&no_skip);
            let mut out = Vec::new();
            let c = self.table.reconcile(*pid, observed, skip, now_ns, &mut out);
            self.after(&out, now_ns);
            total.added += c.added;
            total.removed += c.removed;
        }
        self.corrections.added += total.added;
        self.corrections.removed += total.removed;
        total
    }

    /// The command line of a tracked process (cached; read from /proc on first use).
    pub fn cmdline(&mut self, tgid: u32) -> Option<String> {
        let root = self.proc_root.clone();
        self.cmdlines.entry(tgid).or_insert_with(|| proc::cmdline(&root, tgid)).clone()
    }

    /// Fill in comm for processes first seen through an event, from /proc.
    pub fn refresh_names(&mut self) {
        let unnamed: Vec<u32> =
            self.table.processes().filter(|(_, p)| p.comm.is_empty()).map(|(t, _)| t).collect();
        for tgid in unnamed {
            if let Some(comm) = proc::comm(&self.proc_root, tgid) {
                self.table.set_comm(tgid, comm);
            }
        }
    }
}

/// Kinds by fd of what a process has open, as the kernel says: the ground truth tests compare
/// the table against.
pub fn proc_kinds(proc_root: &Path, pid: u32) -> std::io::Result<BTreeMap<i32, FdKind>> {
    Ok(proc::observe_fds(proc_root, pid, None)?.into_iter().map(|(fd, o)| (fd, o.kind)).collect())
}
