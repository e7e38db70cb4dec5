//! Probing a new image at its exec, beside the reader (ARCHITECTURE.md, Data flow 2).
//!
//! The reader handles records in order, and resolving them can keep it tens of milliseconds
//! behind (the first stack of a binary reads its symbols and unwind tables: a pod starting is
//! a burst of new binaries). A CPython runs its first Python code about 10 ms after its exec;
//! probed at the exec record, behind that backlog, its first lines ran unwalked. So each exec
//! also leaves a notice in a ring of its own (`EXEC_NOTICES`), which the exec lane's thread
//! (observe/exec_lane.rs) reads at once: it probes the process here, tells the kernel its
//! offsets, and keeps what it found for the reader, which takes it when it reaches the exec
//! record (`settle`) instead of probing again.
//!
//! The two agree on an exec by (process, the exec record's time). Once the reader settled an
//! exec it decides for that process alone (a check that fails takes the offsets back from the
//! kernel), so the lane tells the kernel nothing about an exec already settled: it looks,
//! and tells, under the same lock the reader settles under.
use std::{
    collections::HashMap,
    path::Path,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
};

use helios_trace_common::PythonOffsets;

use super::{
    FAST_RETRY_NS, FAST_WINDOW_NS,
    interpreter::{Interpreter, probe},
};
use crate::sys::clock;

/// What the lane found for an exec, handed to the reader.
pub(super) struct Found {
    pub(super) interpreter: Interpreter,
    /// Descriptors opened until then without walked frames were opened before any Python
    /// code ran: when the runtime had not started once the kernel had the offsets, the time
    /// of that read; when it had not started at the probe only, the probe's time; 0 when it
    /// had started at the probe already (every unwalked descriptor is then counted missed).
    pub(super) quiet_until_ns: u64,
}

/// What `settle` answers.
pub(super) enum Lane {
    Found(Box<Found>),
    /// Ask again: the interpreter may not be mapped yet.
    Looking,
    /// The lane has nothing for this exec: the reader probes it itself.
    Left,
    /// The process exec'd again since (the lane has that exec's notice): what it is now is
    /// not this image, whose record decides nothing.
    Superseded,
}

enum Slot {
    /// Looking (again at `next_ns`: the interpreter may not be mapped yet) since `since_ns`.
    Looking { since_ns: u64, next_ns: u64 },
    /// Found, and the kernel has its offsets.
    Found(Box<Found>),
    /// No CPython the lane could use (none mapped, not supported, gone): the reader probes
    /// at the exec record as before.
    Done,
    /// The reader reached the exec record.
    Settled,
}

/// Between looks at an interpreter whose runtime is not mapped yet, during the first
/// `TIGHT_WINDOW_NS` after the notice: a CPython built as a shared library (pyenv's) maps it
/// about a millisecond after its exec and creates its runtime's interpreter a fraction of a
/// millisecond later (seen here: found not started at 1.2 ms, started at 1.2 ms); from then on
/// Python code may run, and what it opens before the kernel walks it is counted missed. Only
/// CPython executables without a runtime of their own are looked at this often, and only
/// briefly; the lane then goes on at the reader's pace (`FAST_RETRY_NS`).
const TIGHT_RETRY_NS: u64 = 100_000;
const TIGHT_WINDOW_NS: u64 = 20_000_000;

/// At most this many execs are remembered; beyond it the oldest go (a notice whose exec record
/// never reached the reader: lost with a full ring).
const MAX_SLOTS: usize = 4096;

/// The execs the lane looks at and what it found, per process: (exec record time, slot).
#[derive(Default)]
pub(crate) struct ExecProbes {
    slots: Mutex<HashMap<u32, (u64, Slot)>>,
    /// A lane runs (`started`): without one the reader probes every exec itself.
    active: AtomicBool,
}

impl ExecProbes {
    fn lock(&self) -> MutexGuard<'_, HashMap<u32, (u64, Slot)>> {
        self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The lane's thread runs from now on.
    pub(crate) fn started(&self) {
        self.active.store(true, Ordering::Relaxed);
    }

    /// The lane: `pid` exec'd at `exec_ns` (a notice). Ignored when the reader got there first.
    /// Offsets the lane gave the kernel for an image the reader never took (the process exec'd
    /// again, or the oldest slot makes room) are taken back: `untell`.
    pub(crate) fn noticed(&self, pid: u32, exec_ns: u64, now_ns: u64, untell: &dyn Fn(u32)) {
        let mut slots = self.lock();
        if slots.get(&pid).is_some_and(|(at, _)| *at >= exec_ns) {
            return;
        }
        if slots.len() >= MAX_SLOTS
            && let Some(oldest) = slots.iter().min_by_key(|(_, (at, _))| *at).map(|(pid, _)| *pid)
            && let Some((_, Slot::Found(_))) = slots.remove(&oldest)
        {
            untell(oldest);
        }
        if let Some((_, Slot::Found(_))) =
            slots.insert(pid, (exec_ns, Slot::Looking { since_ns: now_ns, next_ns: now_ns }))
        {
            untell(pid);
        }
    }

    /// The lane: when it has something to look at next, if ever.
    pub(crate) fn next_due(&self) -> Option<u64> {
        self.lock()
            .values()
            .filter_map(|(_, slot)| match slot {
                Slot::Looking { next_ns, .. } => Some(*next_ns),
                _ => None,
            })
            .min()
    }

    /// The lane: look at every exec due at `now_ns`: probe it (`probe` in real use, a fake in
    /// tests) and, when a CPython is found, `tell` the kernel its offsets.
    pub(crate) fn look_due(&self, proc_root: &Path, now_ns: u64, tell: &dyn Fn(u32, &PythonOffsets) -> bool) {
        self.look_due_with(now_ns, &|pid| probe(proc_root, pid), tell)
    }

    fn look_due_with(
        &self,
        now_ns: u64,
        probe: &dyn Fn(u32) -> Option<(String, Result<Interpreter, super::PythonError>)>,
        tell: &dyn Fn(u32, &PythonOffsets) -> bool,
    ) {
        let due: Vec<(u32, u64)> = self
            .lock()
            .iter()
            .filter(|(_, (_, slot))| matches!(slot, Slot::Looking { next_ns, .. } if *next_ns <= now_ns))
            .map(|(pid, (at, _))| (*pid, *at))
            .collect();
        for (pid, exec_ns) in due {
            // Probed without the lock: the reader must not wait on a probe.
            let looked_ns = now_ns;
            let probed = probe(pid);
            let mut slots = self.lock();
            let Some((at, slot)) = slots.get_mut(&pid) else { continue };
            let Slot::Looking { since_ns, .. } = *slot else { continue };
            if *at != exec_ns {
                continue;
            }
            *slot = match probed {
                Some((path, Ok(interpreter))) => {
                    if tell(pid, &interpreter.offsets) {
                        // Not started at the probe, and still not once the kernel walks it: no
                        // Python code ran unwalked (read again, now that the kernel has it).
                        let quiet_until_ns = match (interpreter.started, interpreter.runtime_started()) {
                            (true, _) => 0,
                            (false, true) => looked_ns,
                            (false, false) => clock::boot_ns(),
                        };
                        let after_us = looked_ns.saturating_sub(exec_ns) / 1000;
                        log::debug!("process {pid}: CPython ({path}) probed {after_us} µs after its exec");
                        Slot::Found(Box::new(Found { interpreter, quiet_until_ns }))
                    } else {
                        Slot::Done
                    }
                }
                Some((_, Err(err))) if err.retry() && now_ns < since_ns.saturating_add(FAST_WINDOW_NS) => {
                    let wait =
                        if now_ns < since_ns + TIGHT_WINDOW_NS { TIGHT_RETRY_NS } else { FAST_RETRY_NS };
                    Slot::Looking { since_ns, next_ns: now_ns + wait }
                }
                Some((path, Err(err))) => {
                    log::debug!("process {pid}: {path} not probed at its exec notice: {err}");
                    Slot::Done
                }
                None => Slot::Done,
            };
        }
    }

    /// The reader, at `pid`'s exec record of `exec_ns`: what the lane found, or that it
    /// still looks (asked again until `give_up`). An exec whose notice the lane has not read
    /// yet (the reader was first) is the lane's to look at: its notice is on the way, and a
    /// lost one is looked at when the lane next wakes. Once the lane has ended (found, or
    /// left it to the reader) the exec is the reader's, and the lane keeps out of it.
    pub(super) fn settle(&self, pid: u32, exec_ns: u64, give_up: bool) -> Lane {
        if !self.active.load(Ordering::Relaxed) {
            return Lane::Left;
        }
        let mut slots = self.lock();
        match slots.get(&pid) {
            // A later exec of the process (chroot(1) exec'ing the interpreter) is the lane's
            // still: the reader settles it at its own record.
            Some((at, _)) if *at > exec_ns => return Lane::Superseded,
            Some((at, Slot::Looking { .. })) if *at == exec_ns && !give_up => return Lane::Looking,
            Some((at, _)) if *at == exec_ns => {}
            _ if !give_up => {
                slots.insert(pid, (exec_ns, Slot::Looking { since_ns: exec_ns, next_ns: 0 }));
                return Lane::Looking;
            }
            _ => {}
        }
        match slots.insert(pid, (exec_ns, Slot::Settled)) {
            Some((at, Slot::Found(found))) if at == exec_ns => Lane::Found(found),
            _ => Lane::Left,
        }
    }

    /// The reader: whether `pid` exec'd after `ts_ns` (the lane has its notice): what the
    /// process is now is not what it was at `ts_ns`.
    pub(super) fn execs_after(&self, pid: u32, ts_ns: u64) -> bool {
        self.lock().get(&pid).is_some_and(|(at, _)| *at > ts_ns)
    }

    /// The reader: `pid` exited at `exit_ns`. True when the lane had told the kernel about it
    /// and the reader never took it (the kernel's entry is the reader's to remove). A slot of a
    /// later exec is another process's, which took the pid since.
    pub(super) fn forget(&self, pid: u32, exit_ns: u64) -> bool {
        let mut slots = self.lock();
        if slots.get(&pid).is_some_and(|(at, _)| *at > exit_ns) {
            return false;
        }
        matches!(slots.remove(&pid), Some((_, Slot::Found(_))))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::resolve::python::PythonError;

    fn not_mapped() -> Option<(String, Result<Interpreter, PythonError>)> {
        Some(("/usr/bin/python3.12".into(), Err(PythonError::NotMapped { path: "libpython3.12.so".into() })))
    }

    fn lane() -> ExecProbes {
        let probes = ExecProbes::default();
        probes.started();
        probes
    }

    fn left(lane: Lane) -> bool {
        matches!(lane, Lane::Left)
    }

    fn looking(lane: Lane) -> bool {
        matches!(lane, Lane::Looking)
    }

    const NEVER: &dyn Fn(u32, &PythonOffsets) -> bool = &|_, _| panic!("nothing found, nothing told");
    const NO_UNTELL: &dyn Fn(u32) = &|_| panic!("nothing told, nothing to take back");

    #[test]
    fn an_interpreter_not_mapped_yet_is_looked_at_often_then_left_to_the_reader() {
        let probes = lane();
        probes.noticed(7, 1_000, 5_000, NO_UNTELL);
        assert_eq!(probes.next_due(), Some(5_000));
        let looks = RefCell::new(0);
        let probe = |_pid: u32| {
            *looks.borrow_mut() += 1;
            not_mapped()
        };
        probes.look_due_with(5_000, &probe, NEVER);
        assert_eq!(probes.next_due(), Some(5_000 + TIGHT_RETRY_NS));
        // The reader reaches the exec record meanwhile: it waits for the lane.
        assert!(looking(probes.settle(7, 1_000, false)));
        // Not due yet: not looked at.
        probes.look_due_with(5_000 + TIGHT_RETRY_NS - 1, &probe, NEVER);
        assert_eq!(*looks.borrow(), 1);
        // Then every millisecond.
        probes.look_due_with(5_000 + TIGHT_WINDOW_NS, &probe, NEVER);
        assert_eq!(probes.next_due(), Some(5_000 + TIGHT_WINDOW_NS + FAST_RETRY_NS));
        // Past the window: done, the reader probes the process itself.
        probes.look_due_with(5_000 + FAST_WINDOW_NS, &probe, NEVER);
        assert_eq!((*looks.borrow(), probes.next_due()), (3, None));
        assert!(left(probes.settle(7, 1_000, false)));
        assert!(!probes.forget(7, u64::MAX), "the kernel was told nothing");
    }

    #[test]
    fn no_cpython_is_done_at_once_and_left_to_the_reader() {
        let probes = lane();
        probes.noticed(8, 1_000, 5_000, NO_UNTELL);
        probes.look_due_with(5_000, &|_| None, NEVER);
        assert_eq!(probes.next_due(), None);
        assert!(left(probes.settle(8, 1_000, false)));
        probes.forget(8, u64::MAX);
        assert_eq!(probes.len(), 0);
    }

    #[test]
    fn an_exec_the_reader_reaches_before_its_notice_is_still_looked_at_by_the_lane() {
        let probes = lane();
        assert!(looking(probes.settle(9, 1_000, false)));
        assert_eq!(probes.next_due(), Some(0), "due at once");
        // Its notice, read late, changes nothing; an older exec's neither.
        probes.noticed(9, 1_000, 5_000, NO_UNTELL);
        probes.noticed(9, 900, 5_000, NO_UNTELL);
        assert_eq!(probes.next_due(), Some(0));
        // The reader gives up waiting: from then on the exec is the reader's alone.
        assert!(left(probes.settle(9, 1_000, true)));
        assert_eq!(probes.next_due(), None);
        probes.noticed(9, 1_000, 5_000, NO_UNTELL);
        assert_eq!(probes.next_due(), None, "the reader decides for an exec it took");
        // The process's next exec is looked at.
        probes.noticed(9, 2_000, 6_000, NO_UNTELL);
        assert_eq!(probes.next_due(), Some(6_000));
    }

    #[test]
    fn without_a_lane_the_reader_probes_every_exec_itself() {
        let probes = ExecProbes::default();
        assert!(left(probes.settle(12, 1_000, false)));
        assert_eq!((probes.next_due(), probes.len()), (None, 0));
    }

    #[test]
    fn settling_an_exec_leaves_the_lane_a_later_exec_of_the_process() {
        let probes = lane();
        // chroot exec'd (1_000), then exec'd the interpreter (2_000), before the reader read
        // either record.
        probes.noticed(11, 1_000, 5_000, NO_UNTELL);
        probes.look_due_with(5_000, &|_| None, NEVER);
        probes.noticed(11, 2_000, 5_100, NO_UNTELL);
        assert!(matches!(probes.settle(11, 1_000, false), Lane::Superseded));
        assert_eq!(probes.next_due(), Some(5_100), "the interpreter's exec is still looked at");
        probes.look_due_with(5_100, &|_| not_mapped(), NEVER);
        assert!(looking(probes.settle(11, 2_000, false)));
        assert_eq!(probes.next_due(), Some(5_100 + TIGHT_RETRY_NS));
        assert!(probes.execs_after(11, 1_999) && !probes.execs_after(11, 2_000));
    }

    #[test]
    fn a_process_gone_while_the_lane_probes_is_not_told_to_the_kernel() {
        let probes = lane();
        probes.noticed(10, 1_000, 5_000, NO_UNTELL);
        // The reader reads the process's exit while the lane probes (without the lock).
        let probe = |pid: u32| {
            assert!(!probes.forget(pid, u64::MAX));
            not_mapped()
        };
        probes.look_due_with(5_000, &probe, NEVER);
        assert_eq!((probes.next_due(), probes.len()), (None, 0));
    }

    #[test]
    fn execs_whose_record_never_came_are_bounded() {
        let probes = lane();
        for pid in 0..MAX_SLOTS as u32 + 10 {
            probes.noticed(pid, u64::from(pid) + 1, 0, NO_UNTELL);
        }
        // An exec of a reused pid, noticed before the reader read the old process's exit: the
        // exit takes nothing of the new one.
        assert!(!probes.forget(MAX_SLOTS as u32 + 9, MAX_SLOTS as u64));
        assert!(probes.lock().contains_key(&(MAX_SLOTS as u32 + 9)));
        assert_eq!(probes.len(), MAX_SLOTS);
        // The oldest went first.
        assert!(!probes.lock().contains_key(&0) && probes.lock().contains_key(&(MAX_SLOTS as u32 + 9)));
    }
}
