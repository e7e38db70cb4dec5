//! The exec lane (ARCHITECTURE.md, "Data flow" 2): a thread of its own that reads the exec
//! notices the kernel leaves beside each exec record and probes each new image for a CPython
//! at once, telling the kernel its offsets before the interpreter runs Python code — while the
//! reader may still be resolving the records ahead of the exec's (resolve/python/early.rs says
//! why, and how the reader takes what the lane found).
//!
//! A std thread, not a task of the runtime: the runtime's thread is the reader, the very
//! thread that may be busy. Started after privileges were dropped (sys/privileges.rs: the
//! thread inherits the reduced sets). It ends within `IDLE_WAIT` of the lane being dropped.
use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::{
    resolve::python::ExecProbes,
    sys::{clock, loader::PythonMap, own, ring::Notices},
};

/// How long the thread waits for a notice when nothing is due (and so how late it notices
/// that the session ended).
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// The lane's time slice: the smallest the kernel takes (0.1 ms), so that it runs soon after
/// a notice wakes it even when every CPU is busy (sys/own.rs, `prefer_short_slices`).
const SLICE: Duration = Duration::from_micros(100);

/// The running lane; dropping it stops the thread.
pub(crate) struct ExecLane {
    stop: Arc<AtomicBool>,
}

impl ExecLane {
    pub(crate) fn start(
        mut notices: Notices,
        probes: Arc<ExecProbes>,
        kernel: PythonMap,
        proc_root: PathBuf,
    ) -> Result<ExecLane> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let lane = Arc::clone(&probes);
        std::thread::Builder::new()
            .name("exec-lane".into())
            .spawn(move || {
                if let Err(err) = own::prefer_short_slices(SLICE) {
                    log::debug!("the exec lane keeps the default time slice: {err}");
                }
                let tell = |pid: u32, offsets: &helios_trace_common::PythonOffsets| {
                    kernel
                        .set(pid, Some(*offsets))
                        .map_err(|err| log::debug!("process {pid}: the exec lane's offsets: {err:#}"))
                        .is_ok()
                };
                let untell = |pid: u32| {
                    if let Err(err) = kernel.set(pid, None) {
                        log::debug!("process {pid}: the exec lane's offsets stay: {err:#}");
                    }
                };
                let probes = lane;
                while !stopped.load(Ordering::Relaxed) {
                    let now_ns = clock::boot_ns();
                    let wait = probes
                        .next_due()
                        .map_or(IDLE_WAIT, |due| Duration::from_nanos(due.saturating_sub(now_ns)))
                        .min(IDLE_WAIT);
                    notices.wait(wait);
                    while let Some((pid, exec_ns)) = notices.next() {
                        probes.noticed(pid, exec_ns, clock::boot_ns(), &untell);
                    }
                    probes.look_due(&proc_root, clock::boot_ns(), &tell);
                }
            })
            .context("cannot start the exec lane's thread")?;
        // Only now: the reader waits for a lane that is looking, and one that never ran would
        // keep it waiting for nothing.
        probes.started();
        Ok(ExecLane { stop })
    }
}

impl Drop for ExecLane {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
