//! Typed events: what one ring-buffer record means for the descriptor tables, independent of
//! the syscall that produced it. Built by decode.rs, consumed by fdtable.rs.
use smallvec::SmallVec;

use crate::model::fd::{FdDetail, FdKind};

/// Descriptors produced by one call: one for most, two for pipe/socketpair, a few for
/// SCM_RIGHTS. Inline for the common cases.
pub type FdList = SmallVec<[i32; 2]>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub tgid: u32,
    pub tid: u32,
    /// CLOCK_BOOTTIME nanoseconds.
    pub ts_ns: u64,
    pub stacks: StackIds,
    pub op: Op,
}

/// Stack ids captured by the kernel program, if any (negative: capture failed with -errno).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackIds {
    pub user: Option<i32>,
    pub kernel: Option<i32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// New descriptors whose kind the call itself tells.
    Open {
        fds: FdList,
        kind: FdKind,
        detail: FdDetail,
        cloexec: bool,
        /// For a relative path: the directory descriptor it is relative to (openat's dirfd),
        /// when it is not the working directory.
        dirfd: Option<i32>,
    },
    /// accept/accept4: a socket like the listener's.
    Accept {
        fd: i32,
        listener: i32,
        cloexec: bool,
    },
    /// dup, dup2, dup3, F_DUPFD[_CLOEXEC]: `new` refers to what `old` refers to. `replaces`:
    /// the call closes whatever `new` was (dup2/dup3 semantics).
    Dup {
        old: i32,
        new: i32,
        cloexec: bool,
        replaces: bool,
    },
    /// pidfd_getfd: `new` is a copy of `target_fd` of the process `pidfd` refers to.
    GetFd {
        pidfd: i32,
        target_fd: i32,
        new: i32,
    },
    /// Descriptors received through SCM_RIGHTS; their kind is only known from /proc.
    Receive {
        fds: FdList,
        cloexec: bool,
        truncated: bool,
    },
    Close {
        fd: i32,
    },
    /// close_range(first, last, flags); with CLOSE_RANGE_CLOEXEC only marks close-on-exec.
    CloseRange {
        first: u32,
        last: u32,
        cloexec_only: bool,
    },
    /// fcntl(F_SETFD) or ioctl(FIOCLEX/FIONCLEX).
    SetCloexec {
        fd: i32,
        cloexec: bool,
    },
    /// A task was created by `tgid`; `thread` when it shares the thread group.
    NewTask {
        child: u32,
        thread: bool,
        comm: String,
    },
    /// `tgid` exec'd: close-on-exec descriptors are gone.
    Exec {
        old_tid: u32,
        filename: Vec<u8>,
        comm: String,
    },
    /// The thread group `tgid` is gone.
    Exit,
}

impl Op {
    /// The event types: the `event` label of `helios_trace_events_total`, by [`Op::index`].
    pub const NAMES: [&'static str; 11] = [
        "open",
        "accept",
        "dup",
        "getfd",
        "receive",
        "close",
        "close_range",
        "set_cloexec",
        "new_task",
        "exec",
        "exit",
    ];

    pub fn index(&self) -> usize {
        match self {
            Op::Open { .. } => 0,
            Op::Accept { .. } => 1,
            Op::Dup { .. } => 2,
            Op::GetFd { .. } => 3,
            Op::Receive { .. } => 4,
            Op::Close { .. } => 5,
            Op::CloseRange { .. } => 6,
            Op::SetCloexec { .. } => 7,
            Op::NewTask { .. } => 8,
            Op::Exec { .. } => 9,
            Op::Exit => 10,
        }
    }
}
