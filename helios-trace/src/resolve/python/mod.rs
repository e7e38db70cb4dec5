//! CPython frames at descriptor calls: find each CPython process's runtime state, tell the
//! kernel where its thread states and frames are (the `PYTHON_PROCS` map), and name the
//! (code object, instruction) pairs the kernel walked — function, file and line — from the
//! process's memory.
//!
//! Supported: CPython 3.10 to 3.13 (x86_64 and aarch64 layouts are the same: LP64). The
//! version comes from the name of the mapped interpreter (`python3.X`, `libpython3.X.so`);
//! `_PyRuntime` from its ELF symbols. 3.13 describes its own layout in `_Py_DebugOffsets` at
//! the start of `_PyRuntime`; for 3.10 to 3.12 the offsets are a table (layout.rs). Whatever the
//! source, the offsets are checked against the live process (a thread state must carry one of
//! its thread ids) before the kernel is told; an interpreter that fails, or an unsupported
//! version, gets native frames only and one warning.
//!
//! Here: the state of each process (probed, retried while its interpreter starts, walked or
//! not); layouts and versions (layout.rs); line tables (lines.rs); reading Python objects from
//! the process's memory (memory.rs); a recognised interpreter and its caches (interpreter.rs).
use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
};

use helios_trace_common::{PythonFrame, PythonOffsets};
use thiserror::Error;

use crate::{
    model::{fd::SiteId, frame::Frame},
    resolve::stacks::StackRegistry,
};

mod interpreter;
pub(crate) mod layout;
pub(crate) mod lines;
mod memory;

/// For the heap walk (resolve/holders): `_PyRuntime` and the minor version of a process.
pub(crate) use interpreter::runtime_of;
use interpreter::{Interpreter, probe};

#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum PythonError {
    #[error("CPython 3.{minor} is not supported (3.10 to 3.13 are)")]
    Version { minor: u32 },
    #[error("CPython 2 is not supported (3.10 to 3.13 are)")]
    Python2,
    #[error("{path} has no _PyRuntime symbol")]
    NoRuntime { path: String },
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
}

impl PythonError {
    /// Worth trying again later: the interpreter was still starting, or its libpython was
    /// not loaded yet (right after exec only the executable and the loader are mapped).
    fn retry(&self) -> bool {
        matches!(
            self,
            PythonError::NotReady
                | PythonError::NoThread
                | PythonError::Memory { .. }
                | PythonError::NoRuntime { .. }
        )
    }
}

/// What is known of one process.
enum State {
    /// Not probed yet, or the interpreter was still starting: tried again (retry_pending).
    Pending {
        attempts: u32,
        next_ns: u64,
    },
    /// No CPython, or one that is not supported (warned once).
    Native,
    Python(Box<Interpreter>),
}

/// Probes per process before giving up on an interpreter that never looks initialized, and
/// the time between them.
const MAX_ATTEMPTS: u32 = 20;
const RETRY_NS: u64 = 100_000_000;

/// CPython processes and their walked frames.
pub(crate) struct PythonProcesses {
    proc_root: PathBuf,
    enabled: bool,
    processes: HashMap<u32, State>,
    /// Those of `processes` in State::Pending.
    pending: HashSet<u32>,
    /// Changes for the kernel's `PYTHON_PROCS` map, applied by the session.
    updates: Vec<(u32, Option<PythonOffsets>)>,
}

impl PythonProcesses {
    pub(crate) fn new(proc_root: impl Into<PathBuf>) -> PythonProcesses {
        PythonProcesses {
            proc_root: proc_root.into(),
            enabled: false,
            processes: HashMap::new(),
            pending: HashSet::new(),
            updates: Vec::new(),
        }
    }

    /// Look for CPython processes from now on (`--python-frames auto` with stacks on).
    pub(crate) fn enable(&mut self, on: bool) {
        self.enabled = on;
    }

    /// A process seen for the first time (baseline), or a new image (exec): probe it.
    pub(crate) fn seen(&mut self, pid: u32, now_ns: u64) {
        if !self.enabled {
            return;
        }
        self.forget(pid);
        self.processes.insert(pid, State::Pending { attempts: 0, next_ns: 0 });
        self.try_probe(pid, now_ns);
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
        if matches!(self.processes.get(&parent), Some(State::Python(_))) {
            self.seen(child, now_ns);
        }
    }

    /// The process is gone or replaced its image.
    pub(crate) fn forget(&mut self, pid: u32) {
        self.pending.remove(&pid);
        if let Some(State::Python(_)) = self.processes.remove(&pid) {
            self.updates.push((pid, None));
        }
    }

    /// Probe again the processes whose interpreter was still starting (every RETRY_NS at
    /// most; the session calls this at each drain of the ring buffer, so a CPython started
    /// after the tracer gets its frames walked from about when its startup ends).
    pub(crate) fn retry_pending(&mut self, now_ns: u64) {
        let due: Vec<u32> = self
            .pending
            .iter()
            .filter(|pid| matches!(self.processes.get(pid), Some(State::Pending { next_ns, .. }) if *next_ns <= now_ns))
            .copied()
            .collect();
        for pid in due {
            self.try_probe(pid, now_ns);
        }
    }

    fn try_probe(&mut self, pid: u32, now_ns: u64) {
        let Some(State::Pending { attempts, .. }) = self.processes.get(&pid) else { return };
        let attempts = attempts + 1;
        let state = match probe(&self.proc_root, pid) {
            None => State::Native,
            Some(Ok(interpreter)) => {
                log::info!(
                    "process {pid}: CPython 3.{}, Python frames on (runtime state at {:#x})",
                    interpreter.layout.minor,
                    interpreter.offsets.interpreters_head - interpreter.layout.interpreters_head
                );
                self.updates.push((pid, Some(interpreter.offsets)));
                State::Python(Box::new(interpreter))
            }
            Some(Err(err)) if err.retry() && attempts < MAX_ATTEMPTS => {
                log::debug!("process {pid}: CPython not ready ({err}), trying again");
                State::Pending { attempts, next_ns: now_ns + RETRY_NS }
            }
            Some(Err(err)) => {
                log::warn!("process {pid}: no Python frames, native frames only: {err}");
                State::Native
            }
        };
        if matches!(state, State::Pending { .. }) {
            self.pending.insert(pid);
        } else {
            self.pending.remove(&pid);
        }
        self.processes.insert(pid, state);
    }

    /// Changes for the kernel's map since the last call.
    pub(crate) fn take_updates(&mut self) -> Vec<(u32, Option<PythonOffsets>)> {
        std::mem::take(&mut self.updates)
    }

    /// The site of a descriptor opened with the native site `native` and these Python frames
    /// (innermost first) walked by the kernel: the native frames with the Python frames
    /// merged in (StackRegistry::with_python).
    pub(crate) fn site(
        &mut self,
        pid: u32,
        native: SiteId,
        raw: &[PythonFrame],
        stacks: &mut StackRegistry,
    ) -> SiteId {
        let Some(State::Python(interpreter)) = self.processes.get_mut(&pid) else { return native };
        if raw.is_empty() {
            return native;
        }
        let key = (native, Box::from(raw));
        // A site forgotten since (stacks.forget_site) is made again, frames and all.
        if let Some(site) = interpreter.sites.get(&key).copied().filter(|site| stacks.knows(*site)) {
            return site;
        }
        let frames: Vec<Frame> = raw.iter().filter_map(|r| interpreter.frame(*r)).collect();
        let complete = frames.len() == raw.len();
        let site = if frames.is_empty() { native } else { stacks.with_python(native, frames) };
        // A stack with a frame that did not read is not remembered: the next one may read.
        if complete {
            interpreter.sites.put(key, site);
        }
        site
    }
}
