//! CPython frames at descriptor calls: find each CPython process's runtime state, tell the
//! kernel where its thread states and frames are (the `PYTHON_PROCS` map), and name the
//! (code object, instruction) pairs the kernel walked — function, file and line — from the
//! process's memory.
//!
//! Supported: CPython 3.10 to 3.14, GIL builds (x86_64 and aarch64 layouts are the same:
//! LP64). The version comes from the name of the mapped interpreter (`python3.X`,
//! `libpython3.X.so`); `_PyRuntime` from its ELF symbols. 3.13 and 3.14 describe their own
//! layout in `_Py_DebugOffsets` at the start of `_PyRuntime`; for 3.10 to 3.12 the offsets are
//! a table (layout.rs).
//!
//! No startup gap: the kernel is told as soon as the runtime is mapped (a static interpreter at
//! its exec, a libpython once ld.so mapped it, looked for every millisecond meanwhile), before
//! the runtime starts: until `interpreters.head` is set the kernel walks nothing, and no Python
//! code has run. The offsets are then checked against the live process (a thread state must
//! carry one of its thread ids, in its own pid namespace); an interpreter that fails is taken
//! back from the kernel and gets native frames only, with a warning; an unsupported version
//! gets one warning per interpreter file. Descriptors a CPython opened while its runtime ran
//! but before the kernel walked it are counted (`missed`): their Python frames cannot be known.
//!
//! Here: the state of each process (probed, retried while its interpreter is mapped and starts,
//! walked or not); layouts and versions (layout.rs); line tables (lines.rs); reading Python
//! objects from the process's memory (memory.rs); a recognised interpreter and its caches
//! (interpreter.rs).
use std::{path::PathBuf, sync::Arc};

use foldhash::{HashMap, HashMapExt as _, HashSet, HashSetExt as _};
use helios_trace_common::{PythonFrame, PythonOffsets, python_flags};
use thiserror::Error;

use crate::{
    model::{fd::SiteId, frame::Frame},
    resolve::stacks::StackRegistry,
    sys::clock,
};

mod early;
mod interpreter;
pub(crate) mod layout;
pub(crate) mod lines;
mod memory;

/// The execs probed beside the reader (observe/exec_lane.rs drives it).
pub(crate) use early::ExecProbes;
use early::Lane;
/// For `run`'s command, a CPython known before its exec (`before_exec`).
pub(crate) use interpreter::offsets_before_exec;
/// For the heap walk (resolve/holders): `_PyRuntime` and the minor version of a process.
pub(crate) use interpreter::runtime_of;
use interpreter::{Interpreter, probe};

#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum PythonError {
    #[error("CPython 3.{minor} is not supported (3.10 to 3.14 are)")]
    Version { minor: u32 },
    #[error("CPython 2 is not supported (3.10 to 3.14 are)")]
    Python2,
    #[error("free-threaded CPython builds are not supported")]
    FreeThreaded,
    #[error("{path} has no _PyRuntime symbol")]
    NoRuntime { path: String },
    #[error("_PyRuntime of {path} is not mapped yet")]
    NotMapped { path: String },
    #[error("cannot read {path}: {reason}")]
    Elf { path: String, reason: String },
    #[error("cannot read the process's memory at {address:#x}: {reason}")]
    Memory { address: u64, reason: String },
    #[error("_Py_DebugOffsets: {0}")]
    DebugOffsets(String),
    #[error("no thread state carries a thread id of the process (offsets check failed)")]
    NoThread,
    #[error("the interpreter is not initialized yet")]
    NotReady,
    #[error("the frame fields lie beyond what the kernel reads of a frame")]
    Layout,
    #[error("the process is gone")]
    Gone,
}

impl PythonError {
    /// The same for every process of the interpreter: said once per interpreter file.
    fn of_the_interpreter(&self) -> bool {
        matches!(self, PythonError::Version { .. } | PythonError::Python2 | PythonError::FreeThreaded)
    }

    /// Worth trying again later: the interpreter was still starting, or its libpython was
    /// not loaded yet (right after exec only the executable and the loader are mapped).
    fn retry(&self) -> bool {
        matches!(
            self,
            PythonError::NotReady
                | PythonError::NoThread
                | PythonError::Memory { .. }
                | PythonError::NoRuntime { .. }
                | PythonError::NotMapped { .. }
        )
    }
}

/// When to try again, and since when we try.
#[derive(Clone, Copy, Debug)]
struct Retry {
    next_ns: u64,
    since_ns: u64,
}

/// What is known of one process.
enum State {
    /// No interpreter runtime mapped yet (right after exec only the executable and the loader
    /// are): looked for again. `unwalked`: descriptors it opened meanwhile. `lane`: the exec
    /// (its record's time) the exec lane is still looking at: asked, not probed, until it ends.
    Pending { retry: Retry, unwalked: u64, lane: Option<u64> },
    /// No CPython, or one that is not supported (warned).
    Native,
    /// The kernel walks its frames; `check` until its thread states were seen to hold its
    /// thread ids. Descriptors opened without walked frames after `quiet_until_ns` (when the
    /// runtime was seen not started; 0 when it had) are missed.
    Python { interpreter: Box<Interpreter>, check: Option<Retry>, quiet_until_ns: u64 },
}

/// How long to look for an interpreter and wait for its runtime to start (and its offsets to
/// check) before giving up on it.
const GIVE_UP_NS: u64 = 2_000_000_000;
/// Between looks for a runtime not mapped yet during the first `FAST_WINDOW_NS` after exec: ld.so
/// maps libpython about a millisecond after exec, the interpreter runs Python code some 10 ms
/// later (measured with strace on 3.11 and 3.13 here); looking every millisecond tells the
/// kernel in between.
const FAST_RETRY_NS: u64 = 1_000_000;
const FAST_WINDOW_NS: u64 = 200_000_000;
/// Between looks otherwise, and between checks.
const RETRY_NS: u64 = 100_000_000;

/// CPython processes and their walked frames.
pub(crate) struct PythonProcesses {
    proc_root: PathBuf,
    enabled: bool,
    processes: HashMap<u32, State>,
    /// Those of `processes` with a retry (State::Pending, or State::Python not checked yet).
    pending: HashSet<u32>,
    /// Changes for the kernel's `PYTHON_PROCS` map, applied by the session.
    updates: Vec<(u32, Option<PythonOffsets>)>,
    /// Interpreter files already warned about (unsupported version or build).
    warned: HashSet<String>,
    /// Descriptors opened by a running CPython before the kernel walked its frames.
    missed: u64,
    /// Processes the kernel may hold offsets for that their state does not show, until their
    /// next exec record decides: given offsets before their exec (`before_exec`), or holding
    /// an earlier image's while a later exec is the lane's (`Lane::Superseded`).
    before_exec: HashSet<u32>,
    /// What the exec lane found at exec notices (early.rs).
    exec_probes: Arc<ExecProbes>,
}

impl PythonProcesses {
    pub(crate) fn new(proc_root: impl Into<PathBuf>) -> PythonProcesses {
        PythonProcesses {
            proc_root: proc_root.into(),
            enabled: false,
            processes: HashMap::new(),
            pending: HashSet::new(),
            updates: Vec::new(),
            warned: HashSet::new(),
            missed: 0,
            before_exec: HashSet::new(),
            exec_probes: Arc::default(),
        }
    }

    /// What the exec lane fills, for its thread (observe/exec_lane.rs).
    pub(crate) fn exec_probes(&self) -> Arc<ExecProbes> {
        Arc::clone(&self.exec_probes)
    }

    /// Look for CPython processes from now on (`--python-frames auto` with stacks on).
    pub(crate) fn enable(&mut self, on: bool) {
        self.enabled = on;
    }

    /// `pid` exec'd (its record, of `ts_ns`): take what the exec lane found for it, or probe.
    pub(crate) fn exec(&mut self, pid: u32, ts_ns: u64) {
        if !self.enabled {
            return;
        }
        self.look(pid, ts_ns, Some(ts_ns));
    }

    /// A process seen for the first time (baseline), or forked: probe it.
    pub(crate) fn seen(&mut self, pid: u32, now_ns: u64) {
        if !self.enabled {
            return;
        }
        self.look(pid, now_ns, None);
    }

    /// A new image or a new process: asked of the exec lane (`lane`: the exec's time), or
    /// probed now.
    fn look(&mut self, pid: u32, now_ns: u64, lane: Option<u64>) {
        // Not forget(): an exec read late finds the image of a later exec, and the next exec's
        // record probes it again; the kernel's entry is replaced in one update, never removed
        // in between (a walk would be missed).
        self.pending.remove(&pid);
        let given_before_exec = self.before_exec.remove(&pid);
        let was_python =
            matches!(self.processes.remove(&pid), Some(State::Python { .. })) || given_before_exec;
        if lane.is_none() && self.exec_probes.execs_after(pid, now_ns) {
            // Seen at an event older than an exec the lane already noticed (the reader lags):
            // a probe now would find the later image and count this one's opens as its
            // misses. Its exec's record decides.
            self.set(pid, State::Native);
        } else {
            let retry = Retry { next_ns: 0, since_ns: now_ns };
            self.processes.insert(pid, State::Pending { retry, unwalked: 0, lane });
            self.try_probe(pid, now_ns);
        }
        if was_python
            && !matches!(self.processes.get(&pid), Some(State::Python { .. }))
            && !self.before_exec.contains(&pid)
        {
            self.updates.push((pid, None));
        }
    }

    /// A process first seen (the baseline, or its first event): probe it unless known.
    pub(crate) fn first_sight(&mut self, pid: u32, now_ns: u64) {
        if !self.processes.contains_key(&pid) {
            self.seen(pid, now_ns);
        }
    }

    /// A forked child runs its parent's interpreter: probe it too (its addresses are the
    /// parent's, its threads its own).
    pub(crate) fn forked(&mut self, parent: u32, child: u32, now_ns: u64) {
        if matches!(self.processes.get(&parent), Some(State::Python { .. })) {
            self.seen(child, now_ns);
        }
    }

    /// The process is gone (its exit's record, of `ts_ns`).
    pub(crate) fn forget(&mut self, pid: u32, ts_ns: u64) {
        // The pid taken since by a process the lane already looked at: the kernel's entry is
        // that one's (the kernel removed this process's at its exit).
        let taken = self.exec_probes.execs_after(pid, ts_ns);
        let told_by_lane = self.exec_probes.forget(pid, ts_ns);
        self.pending.remove(&pid);
        let before_exec = self.before_exec.remove(&pid);
        let was_python = matches!(self.processes.remove(&pid), Some(State::Python { .. }));
        if (was_python || before_exec || told_by_lane) && !taken {
            self.updates.push((pid, None));
        }
    }

    /// `pid` (held before its exec: `helios-trace run`'s command) is about to exec `program`:
    /// when that is a CPython whose runtime's address is known before it runs
    /// (`offsets_before_exec`), the kernel gets its offsets now and walks its frames from its
    /// first Python code (no startup gap, no race). Its exec's record probes it as usual and
    /// replaces them, or takes them back if it exec'd something else.
    pub(crate) fn before_exec(&mut self, pid: u32, program: &std::path::Path) {
        if !self.enabled {
            return;
        }
        let Some(pidns) = crate::sys::proc::pid_namespace(&self.proc_root, pid) else { return };
        match offsets_before_exec(program, pidns) {
            Ok(Some(offsets)) => {
                log::info!("process {pid}: CPython ({}) known before its exec", program.display());
                self.before_exec.insert(pid);
                self.updates.push((pid, Some(offsets)));
            }
            Ok(None) => {}
            Err(err) => log::debug!("process {pid}: {} not known before its exec: {err}", program.display()),
        }
    }

    /// Probe again the processes whose interpreter was not mapped yet, and check those whose
    /// runtime was starting (the session calls this at each drain of the ring buffer, and at
    /// `next_due`).
    pub(crate) fn retry_pending(&mut self, now_ns: u64) {
        let due: Vec<u32> = self
            .pending
            .iter()
            .filter(|pid| self.retry_of(**pid).is_some_and(|r| r.next_ns <= now_ns))
            .copied()
            .collect();
        for pid in due {
            match self.processes.get(&pid) {
                Some(State::Pending { .. }) => self.try_probe(pid, now_ns),
                Some(State::Python { .. }) => self.try_check(pid, now_ns),
                _ => {}
            }
        }
    }

    /// When `retry_pending` has something to do next (boot-clock ns), if ever.
    pub(crate) fn next_due(&self) -> Option<u64> {
        self.pending.iter().filter_map(|pid| self.retry_of(*pid)).map(|r| r.next_ns).min()
    }

    /// Offsets for the kernel, or a retry due by `now_ns()`, the clock read only when a retry
    /// is pending: the session asks after every record, and a clock read there was 4% of the
    /// daemon's CPU (BENCHMARKS.md, "The daemon's cost per record").
    pub(crate) fn waiting(&self, now_ns: impl FnOnce() -> u64) -> bool {
        !self.updates.is_empty() || self.next_due().is_some_and(|due| due <= now_ns())
    }

    fn retry_of(&self, pid: u32) -> Option<Retry> {
        match self.processes.get(&pid)? {
            State::Pending { retry, .. } => Some(*retry),
            State::Python { check, .. } => *check,
            State::Native => None,
        }
    }

    /// Descriptors opened by running CPython processes without Python frames: opened before
    /// the kernel walked them, walked with none found where a read failed, or walked but with
    /// none of their code objects readable when handled (the process had exited: `site`).
    /// Their sites have native frames only.
    pub(crate) fn missed(&self) -> u64 {
        self.missed
    }

    /// A descriptor of `pid` opened at `ts_ns` without Python frames walked; `python_may_run`:
    /// its native stack may have run Python code (`model::frame::python_may_run`: not the
    /// loader's or the interpreter's C start-up, which have no Python frames to miss).
    /// `calls`: how many such descriptors the record stands for (the pairs the kernel matched
    /// of one call, `Engine::handle_pairs`).
    pub(crate) fn not_walked(&mut self, pid: u32, ts_ns: u64, calls: u64, python_may_run: impl Fn() -> bool) {
        match self.processes.get_mut(&pid) {
            Some(State::Pending { unwalked, .. }) if python_may_run() => *unwalked += calls,
            // Found, but the kernel had not been told yet (the map is updated after the drain).
            Some(State::Python { quiet_until_ns, .. }) if ts_ns > *quiet_until_ns && python_may_run() => {
                self.missed += calls
            }
            _ => {}
        }
    }

    fn try_probe(&mut self, pid: u32, now_ns: u64) {
        let Some(State::Pending { retry, unwalked, lane }) = self.processes.get(&pid) else { return };
        let (since_ns, unwalked, lane) = (retry.since_ns, *unwalked, *lane);
        if let Some(exec_ns) = lane {
            // The lane gets as long as the reader would have looked for a runtime.
            let give_up = now_ns >= since_ns.saturating_add(FAST_WINDOW_NS);
            match self.exec_probes.settle(pid, exec_ns, give_up) {
                Lane::Found(found) => {
                    log::info!(
                        "process {pid}: CPython 3.{} ({}), Python frames on since its exec notice{}",
                        found.interpreter.layout.minor,
                        found.interpreter.path,
                        if found.quiet_until_ns > 0 { ", before its runtime started" } else { "" }
                    );
                    return self.found(pid, now_ns, found.interpreter, found.quiet_until_ns);
                }
                Lane::Looking => {
                    // The reader looks too: whichever finds the runtime first (a CPython given
                    // its offsets before its exec, `before_exec`, is found at once).
                    if let Some((path, Ok(interpreter))) = probe(&self.proc_root, pid) {
                        let read_ns = clock::boot_ns();
                        if let Lane::Found(found) = self.exec_probes.settle(pid, exec_ns, true) {
                            return self.found(pid, now_ns, found.interpreter, found.quiet_until_ns);
                        }
                        log::info!(
                            "process {pid}: CPython 3.{} ({path}), Python frames on",
                            interpreter.layout.minor
                        );
                        let quiet_until_ns = if interpreter.started { 0 } else { read_ns };
                        return self.found(pid, now_ns, interpreter, quiet_until_ns);
                    }
                    let retry = Retry { next_ns: now_ns + FAST_RETRY_NS, since_ns };
                    return self.set(pid, State::Pending { retry, unwalked, lane });
                }
                Lane::Left => {}
                Lane::Superseded => {
                    // The kernel's entry, if any, is left to that later exec's record: the lane
                    // may have replaced it already with the later image's.
                    self.before_exec.insert(pid);
                    return self.set(pid, State::Native);
                }
            }
        }
        let state = match probe(&self.proc_root, pid) {
            None => State::Native,
            Some((path, Ok(interpreter))) => {
                log::info!(
                    "process {pid}: CPython 3.{} ({path}), Python frames on (runtime state at {:#x}{})",
                    interpreter.layout.minor,
                    interpreter.offsets.interpreters_head - interpreter.layout.interpreters_head,
                    if interpreter.started { "" } else { ", not started yet" }
                );
                // Opened before the runtime started: no Python code had run, nothing to miss
                // (`now_ns` may be the exec's time: the runtime was read just now).
                let quiet_until_ns = if interpreter.started { 0 } else { clock::boot_ns() };
                return self.found(pid, now_ns, interpreter, quiet_until_ns);
            }
            Some((_, Err(err))) if err.retry() && now_ns < since_ns.saturating_add(GIVE_UP_NS) => {
                log::debug!("process {pid}: CPython not ready ({err}), trying again");
                let wait =
                    if now_ns < since_ns.saturating_add(FAST_WINDOW_NS) { FAST_RETRY_NS } else { RETRY_NS };
                State::Pending { retry: Retry { next_ns: now_ns + wait, since_ns }, unwalked, lane: None }
            }
            Some((path, Err(err))) => {
                self.warn(pid, &path, &err);
                State::Native
            }
        };
        self.set(pid, state);
    }

    /// A pending process is `interpreter`'s: the kernel walks it from now on, and its offsets
    /// are checked once its runtime runs. Descriptors it opened unwalked after
    /// `quiet_until_ns` (0: any) may have been opened by Python code: missed.
    fn found(&mut self, pid: u32, now_ns: u64, interpreter: Interpreter, quiet_until_ns: u64) {
        if quiet_until_ns == 0
            && let Some(State::Pending { unwalked, .. }) = self.processes.get(&pid)
        {
            self.missed += unwalked;
        }
        self.updates.push((pid, Some(interpreter.offsets)));
        let check = Some(Retry { next_ns: now_ns, since_ns: now_ns });
        let started = interpreter.started;
        self.set(pid, State::Python { interpreter: Box::new(interpreter), check, quiet_until_ns });
        if started {
            self.try_check(pid, now_ns);
        }
    }

    /// Check a found interpreter against its process once its runtime runs; one that never
    /// checks is taken back from the kernel.
    fn try_check(&mut self, pid: u32, now_ns: u64) {
        let Some(State::Python { interpreter, check: Some(retry), .. }) = self.processes.get_mut(&pid) else {
            return;
        };
        let err = match interpreter.check(&self.proc_root, pid) {
            Ok(changed) => {
                log::debug!("process {pid}: CPython's thread states hold its thread ids");
                if changed {
                    self.updates.push((pid, Some(interpreter.offsets)));
                }
                if let Some(State::Python { check, .. }) = self.processes.get_mut(&pid) {
                    *check = None;
                }
                self.pending.remove(&pid);
                return;
            }
            Err(err) if err.retry() && now_ns < retry.since_ns.saturating_add(GIVE_UP_NS) => {
                retry.next_ns = now_ns + RETRY_NS;
                return;
            }
            Err(err) => err,
        };
        let path = interpreter.path.clone();
        self.updates.push((pid, None));
        self.warn(pid, &path, &err);
        self.set(pid, State::Native);
    }

    fn set(&mut self, pid: u32, state: State) {
        let due = match &state {
            State::Pending { .. } => true,
            State::Python { check, .. } => check.is_some(),
            State::Native => false,
        };
        if due {
            self.pending.insert(pid);
        } else {
            self.pending.remove(&pid);
        }
        self.processes.insert(pid, state);
    }

    /// Say why a process gets native frames only: once per interpreter file when the reason
    /// is the interpreter's (an unsupported version is the same for all its processes).
    fn warn(&mut self, pid: u32, path: &str, err: &PythonError) {
        if !err.of_the_interpreter() {
            log::warn!("process {pid}: no Python frames, native frames only: {err}");
        } else if self.warned.insert(path.to_string()) {
            log::warn!(
                "process {pid}: no Python frames, native frames only: {err} ({path}; said once for it)"
            );
        } else {
            log::debug!("process {pid}: no Python frames: {err} ({path})");
        }
    }

    /// Changes for the kernel's map since the last call.
    pub(crate) fn take_updates(&mut self) -> Vec<(u32, Option<PythonOffsets>)> {
        std::mem::take(&mut self.updates)
    }

    /// The site of a descriptor opened with the native site `native` and these Python frames
    /// (innermost first) walked by the kernel, with its `python_flags`: the native frames with
    /// the Python frames merged in (StackRegistry::with_python).
    ///
    /// Counted as missed when the site gets native frames only: the kernel's walk found no
    /// frame because a read failed or the thread's namespace was unknown, or none of the walked
    /// frames' code objects reads any more — names are read from the process's memory when
    /// the record is handled, and a process that exited in between has none. A walk cut short
    /// with some frames read keeps those and is not counted. A thread CPython does not know
    /// (`NO_THREAD`) and a runtime not started yet (`NOT_STARTED`, which includes a runtime
    /// whose page does not read: helios-trace-ebpf/src/python.rs) have no Python frames to miss.
    pub(crate) fn site(
        &mut self,
        pid: u32,
        native: SiteId,
        raw: &[PythonFrame],
        flags: u32,
        stacks: &mut StackRegistry,
    ) -> SiteId {
        // Walked by the kernel while the reader waits for the lane: the lane told the kernel
        // (or `run` did, before the exec); take what it found now rather than lose the walk.
        if matches!(self.processes.get(&pid), Some(State::Pending { lane: Some(_), .. })) {
            self.try_probe(pid, clock::boot_ns());
        }
        let Some(State::Python { interpreter, .. }) = self.processes.get_mut(&pid) else { return native };
        if raw.is_empty() {
            if flags & (python_flags::READ_FAILED | python_flags::NAMESPACE) != 0 {
                self.missed += 1;
            }
            return native;
        }
        // 3.14's code references carry tag bits: the same code object is one frame.
        let tag = interpreter.layout.code_tag_bits;
        let raw: Box<[PythonFrame]> =
            raw.iter().map(|f| PythonFrame { code: f.code & !tag, instr: f.instr }).collect();
        let key = (native, raw.clone());
        // A site forgotten since (stacks.forget_site) is made again, frames and all.
        if let Some(site) = interpreter.sites.get(&key).copied().filter(|site| stacks.knows(*site)) {
            return site;
        }
        let read: Vec<Option<Frame>> = raw.iter().filter_map(|r| interpreter.frame(*r)).collect();
        let complete = read.len() == raw.len();
        // Shim frames (interpreter::is_init_shim) are left out.
        let frames: Vec<Frame> = read.into_iter().flatten().collect();
        let none_read = frames.is_empty();
        let site = if none_read { native } else { stacks.with_python(native, frames) };
        // A stack with a frame that did not read is not remembered: the next one may read.
        if complete {
            interpreter.sites.put(key, site);
        } else if none_read {
            self.missed += 1;
        }
        site
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake procfs whose processes map `path` as their executable.
    fn proc_mapping(pids: &[u32], path: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for pid in pids {
            std::fs::create_dir_all(dir.path().join(pid.to_string())).unwrap();
            let maps = format!("00400000-00401000 r-xp 00000000 08:01 4242 {path}\n");
            std::fs::write(dir.path().join(pid.to_string()).join("maps"), maps).unwrap();
        }
        dir
    }

    #[test]
    fn an_unsupported_interpreter_is_said_once_per_file() {
        let proc = proc_mapping(&[10, 11, 12], "/opt/python/bin/python3.9");
        let mut python = PythonProcesses::new(proc.path());
        python.enable(true);
        for pid in [10, 11, 12] {
            python.seen(pid, 1);
            assert!(matches!(python.processes.get(&pid), Some(State::Native)));
        }
        assert_eq!(python.warned.iter().collect::<Vec<_>>(), vec!["/opt/python/bin/python3.9"]);
        assert!(python.take_updates().is_empty() && python.next_due().is_none());
        // Another file of the same version is said again.
        let other = proc_mapping(&[13], "/usr/bin/python3.9");
        python.proc_root = other.path().to_path_buf();
        python.seen(13, 1);
        assert_eq!(python.warned.len(), 2);
    }

    #[test]
    fn no_interpreter_mapped_is_native_and_walks_nothing() {
        let proc = proc_mapping(&[20], "/usr/bin/bash");
        let mut python = PythonProcesses::new(proc.path());
        python.enable(true);
        python.seen(20, 1);
        python.not_walked(20, 2, 1, || true);
        assert!(matches!(python.processes.get(&20), Some(State::Native)));
        assert_eq!((python.missed(), python.warned.len()), (0, 0));
        // A process gone before its probe: nothing to look at, nothing said.
        python.seen(21, 1);
        assert!(python.warned.is_empty() && python.next_due().is_none());
    }

    #[test]
    fn a_process_seen_before_an_exec_the_lane_noticed_waits_for_that_exec() {
        let proc = proc_mapping(&[30], "/usr/bin/python3.12");
        let mut python = PythonProcesses::new(proc.path());
        python.enable(true);
        python.exec_probes.started();
        // The lane read the notice of an exec at 2_000; the reader is still at 1_000.
        python.exec_probes.noticed(30, 2_000, 2_100, &|_| {});
        python.seen(30, 1_000);
        python.not_walked(30, 1_500, 1, || true);
        assert!(matches!(python.processes.get(&30), Some(State::Native)));
        assert_eq!((python.missed(), python.take_updates().len()), (0, 0));
        // At the exec record the reader waits for the lane, which is still looking.
        python.exec(30, 2_000);
        assert!(matches!(python.processes.get(&30), Some(State::Pending { lane: Some(2_000), .. })));
        assert!(python.next_due().is_some());
        // An earlier exec's record, read late, decides nothing: the later one is the lane's.
        python.exec(30, 1_800);
        assert!(matches!(python.processes.get(&30), Some(State::Native)));
    }

    #[test]
    fn errors_of_the_interpreter_and_of_the_process() {
        assert!(PythonError::Version { minor: 9 }.of_the_interpreter());
        assert!(PythonError::FreeThreaded.of_the_interpreter());
        assert!(!PythonError::NoThread.of_the_interpreter());
        // Not mapped yet and not started yet are waited for; a bad layout is not.
        assert!(PythonError::NotMapped { path: "x".into() }.retry());
        assert!(PythonError::NotReady.retry() && !PythonError::Layout.retry());
    }
}
