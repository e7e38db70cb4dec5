//! A process stopped while its heap is read (`--holders-pause`; ARCHITECTURE.md, "Holders"): a
//! consistent snapshot of its references, at the price of the process standing still for the
//! reads. SIGSTOP goes through a pidfd (pidfd_send_signal(2)) opened before the process was
//! looked at, so the signals reach that process and never one that took its pid since; the
//! stop is complete when every thread is in the stopped state (`T` in /proc/PID/task/TID/stat:
//! a group stop stops each thread as it next returns to user space, fs/proc/array.c
//! `get_task_state`; a zombie thread counts as stopped). A stop not complete within
//! [`STOP_WAIT`] (a thread in uninterruptible sleep) is undone and said, and the heap is read
//! running. SIGCONT follows when the reads are done, also when the walk panics ([`Paused`]'s
//! drop). A process stopped already (a debugger, job control) is left as it was: neither
//! stopped nor continued by us (one stopped by someone else between our look and our SIGSTOP
//! is continued: the window is a /proc read wide).
//!
//! What a stop does besides: the parent is told (SIGCHLD, CLD_STOPPED) — a shell reports a
//! foreground job "Stopped" and takes the terminal back, so after SIGCONT the job runs in the
//! background. Hence off by default.
use std::{
    fs, io,
    os::fd::{AsRawFd as _, OwnedFd},
    path::Path,
    time::{Duration, Instant},
};

use super::tids;

/// How long to wait for every thread to stop before the stop is given up (and undone).
const STOP_WAIT: Duration = Duration::from_millis(200);

/// The process state letter of a `stat` line (the field after the command name, which is in
/// parentheses and may itself hold parentheses and spaces: the last `)` ends it).
pub(crate) fn state_of(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn all_stopped(proc_root: &Path, pid: u32) -> bool {
    let tids = tids(proc_root, pid);
    !tids.is_empty()
        && tids.iter().all(|tid| {
            fs::read_to_string(proc_root.join(format!("{pid}/task/{tid}/stat")))
                .ok()
                .and_then(|s| state_of(&s))
                .is_some_and(|state| matches!(state, 'T' | 't' | 'Z' | 'X'))
        })
}

/// A process we stopped; continued when resumed or dropped.
pub(crate) struct Paused {
    /// None: it was stopped already, and is left so.
    pidfd: Option<OwnedFd>,
    since: Instant,
}

/// Stop the process of `pidfd` (`pid` in the procfs root's pid namespace: the tracer's) and
/// wait, up to [`STOP_WAIT`], until all its threads have stopped; an error if it could not be
/// stopped, or not wholly (then it is continued again).
pub(crate) fn pause(proc_root: &Path, pid: u32, pidfd: OwnedFd) -> io::Result<Paused> {
    let since = Instant::now();
    if all_stopped(proc_root, pid) {
        return Ok(Paused { pidfd: None, since });
    }
    send(&pidfd, libc::SIGSTOP)?;
    let mut paused = Paused { pidfd: Some(pidfd), since };
    while !all_stopped(proc_root, pid) {
        if since.elapsed() >= STOP_WAIT {
            drop(paused);
            return Err(io::Error::other(format!(
                "not every thread stopped within {} ms",
                STOP_WAIT.as_millis()
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // Stood still from here: what `resume` says.
    paused.since = Instant::now();
    Ok(paused)
}

impl Paused {
    /// Continue the process; how long it stood still, every thread stopped (None: not stopped
    /// by us). Taken before SIGCONT is sent: after it, a tracer preempted between the send and
    /// the clock read (2 CPUs, a busy node) counted time the process already ran again.
    pub(crate) fn resume(mut self) -> Option<f64> {
        let pidfd = self.pidfd.take()?;
        let stood = self.since.elapsed().as_secs_f64();
        let _ = send(&pidfd, libc::SIGCONT);
        Some(stood)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        if let Some(pidfd) = self.pidfd.take() {
            let _ = send(&pidfd, libc::SIGCONT);
        }
    }
}

fn send(pidfd: &OwnedFd, signal: i32) -> io::Result<()> {
    // SAFETY: pidfd_send_signal takes a pidfd, a signal, no siginfo (NULL) and no flags.
    let r = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), signal, std::ptr::null::<()>(), 0)
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_follows_the_last_parenthesis() {
        assert_eq!(state_of("4242 (python3) S 1 4242"), Some('S'));
        assert_eq!(state_of("4242 (a) T (b)) T 1 4242"), Some('T'));
        assert_eq!(state_of("4242 (worker) t 1"), Some('t'));
        assert_eq!(state_of("garbage"), None);
    }
}
