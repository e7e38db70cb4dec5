//! Holders (ARCHITECTURE.md, "Holders"): which Python objects keep a site's open descriptors
//! alive, and the census of the heap by type — read from the process's memory from outside
//! (/proc/PID/mem, under the capabilities the tracer holds), injecting nothing, stopping
//! nothing. The heap is read while the process runs: every pointer and type is checked, an
//! object that does not read is counted as unknown, and the walk is bounded (walk.rs's
//! `Budget`) and says what it did not cover.
//!
//! Here: per-version offsets (layout.rs), the paged reader of the process (memory.rs), types
//! and containers (objects.rs), the GC-list walk, roots and frames (walk.rs). The graph and
//! its shortest chains are pure (model/holders.rs), as is the census (model/census.rs).
//!
//! Supported: CPython 3.10, 3.11 (Debian's /usr/bin/python3 and pyenv's 3.11), 3.12, 3.13 and 3.14. Other
//! versions are reported as not supported by the walk.
use std::path::Path;

use thiserror::Error;

mod layout;
mod memory;
mod objects;
mod walk;

pub(crate) use walk::{Budget, DEFAULT_BUDGET, Walk};

use crate::{
    resolve::python,
    sys::{self, proc::image::ProcessMemory},
};

#[derive(Debug, Error)]
pub(crate) enum HoldersError {
    #[error("not a CPython process")]
    NotPython,
    #[error("CPython 3.{minor}: the heap walk knows CPython 3.10 to 3.14 only")]
    Version { minor: u32 },
    #[error("{0}")]
    Python(#[from] python::PythonError),
    #[error("cannot open the process's memory: {0}")]
    Memory(#[from] std::io::Error),
    #[error("CPython 3.{minor}: its _Py_DebugOffsets do not match the heap walk's layout")]
    Layout { minor: u32 },
    #[error("the interpreter state does not read (not initialized, or exited)")]
    NoInterpreter,
}

/// Walk the heap of process `pid`; with `pause`, stopped while its memory is read
/// (sys/proc/pause.rs) — once it is known to be a CPython the walk reads, so no other process is
/// stopped, and continued before the search for chains, which needs no reads.
pub(crate) fn walk_process(
    proc_root: &Path,
    pid: u32,
    budget: &Budget,
    pause: bool,
) -> Result<Walk, HoldersError> {
    // The handle first: the pid cannot be another process's by the time it is signalled.
    let pidfd = pause.then(|| sys::proc::pidfd(pid));
    let (runtime, minor) = python::runtime_of(proc_root, pid).ok_or(HoldersError::NotPython)??;
    let layout = layout::heap_layout(minor).ok_or(HoldersError::Version { minor })?;
    let mut memory = memory::Paged::new(ProcessMemory::open(proc_root, pid)?, budget.cache_bytes);
    if minor >= 13 {
        check_debug_offsets(&mut memory, runtime, &layout)?;
    }
    let (mut paused, pause_error) = match pidfd.map(|fd| sys::proc::pause::pause(proc_root, pid, fd?)) {
        Some(Ok(paused)) => (Some(paused), None),
        Some(Err(e)) => (None, Some(format!("cannot stop the process: {e}"))),
        None => (None, None),
    };
    // A stopped process's lists read the same every time: listed once.
    let budget = Budget { listings: if paused.is_some() { 1 } else { budget.listings }, ..*budget };
    let mut paused_seconds = None;
    let read_done = || paused_seconds = paused.take().and_then(sys::proc::pause::Paused::resume);
    let mut walk =
        walk::walk(memory, layout, runtime, &budget, read_done).ok_or(HoldersError::NoInterpreter)?;
    walk.paused_seconds = paused_seconds;
    walk.pause_error = pause_error;
    Ok(walk)
}

/// Walk an image of memory whose first bytes are `_PyRuntime` (the fuzz target: no pointer in
/// it may crash the walk, loop it past its budget or name what is not there), with a small
/// budget; the holders of descriptors 0 to 7 and the census are computed too.
pub(crate) fn walk_image(minor: u32, base: u64, bytes: &[u8]) -> Option<usize> {
    let layout = layout::heap_layout(minor)?;
    let budget = Budget {
        time: std::time::Duration::from_secs(1),
        max_objects: 4096,
        cache_bytes: 1 << 16,
        listings: 1,
    };
    let walk = walk::walk(memory::Flat { base, bytes }, layout, base, &budget, || {})?;
    let lines: usize = walk.holders(&[0, 1, 2, 3, 4, 5, 6, 7]).iter().map(|h| h.line().len()).sum();
    Some(lines + walk.census.entries(None, 8).len())
}

/// 3.13+ describe their own layout at the start of `_PyRuntime` (`_Py_DebugOffsets`,
/// Include/internal/pycore_runtime.h: the cookie "xdebugpy", the version, then sizes and
/// offsets; word 5 is `runtime_state.interpreters_head`, word 9 `interpreter_state.threads_head`):
/// a build whose layout differs from the table (a debug build, another patch level that moved
/// them) is refused rather than misread.
fn check_debug_offsets(
    memory: &mut memory::Paged,
    runtime: u64,
    layout: &layout::HeapLayout,
) -> Result<(), HoldersError> {
    use memory::Memory as _;
    let mut cookie = [0u8; 8];
    let word = |m: &mut memory::Paged, i: u64| m.u64(runtime + 8 * i);
    let matches = memory.read(runtime, &mut cookie)
        && &cookie == b"xdebugpy"
        && word(memory, 5) == Some(layout.interpreters_head)
        && word(memory, 9) == Some(layout.interp_threads_head);
    if matches { Ok(()) } else { Err(HoldersError::Layout { minor: layout.minor }) }
}

#[cfg(test)]
mod tests;
