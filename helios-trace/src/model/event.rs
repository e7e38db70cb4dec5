//! Typed events: what one ring-buffer record means for the descriptor tables, independent of
//! the syscall that produced it, and the user stack a record may carry. Built by sys/decode.rs,
//! consumed by fdtable.rs (the events) and resolve/unwind.rs (the stacks).
#[cfg(target_arch = "aarch64")]
use helios_trace_common::regs_aarch64 as saved;
#[cfg(target_arch = "x86_64")]
use helios_trace_common::regs_x86_64 as saved;
use helios_trace_common::{USER_REGS_WORDS, user_stack_flags};
use smallvec::SmallVec;

use crate::model::fd::{FdDetail, FdKind};

/// Descriptors produced by one call: one for most, two for pipe/socketpair, a few for
/// SCM_RIGHTS. Inline for the common cases.
pub(crate) type FdList = SmallVec<[i32; 2]>;

/// The number a pair the kernel matched is opened and closed at (observe/engine.rs,
/// `handle_pairs`): one no descriptor has (`sysctl_nr_open` is at most `sysctl_nr_open_max`,
/// 2,147,483,584 on 64-bit: fs/file.c), so that the pair meets nothing of the table.
pub(crate) const PAIRED_FD: i32 = i32::MAX;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Event {
    pub(crate) tgid: u32,
    pub(crate) tid: u32,
    /// CLOCK_BOOTTIME nanoseconds: the kernel's, but for a close, which has none of its own and
    /// is stamped when it left the ring (`Engine::records_taken`).
    pub(crate) ts_ns: u64,
    pub(crate) stacks: StackIds,
    pub(crate) op: Op,
}

/// The stack id the kernel program captured (`--stacks fp`), if any (negative: capture failed
/// with -errno).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct StackIds {
    pub(crate) user: Option<i32>,
    /// In a Go process: where the calling goroutine was created (`gopc`, the kernel read it at
    /// the call: helios-trace-ebpf/src/goroutines.rs), if it was read.
    pub(crate) creator: Option<u64>,
    /// Taken at a function's first byte (a uprobe: a libuv handle, model/handles.rs), so the
    /// first address is the function's own, not a return address (resolve/stacks.rs).
    pub(crate) at_entry: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Op {
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
    Accept { fd: i32, listener: i32, cloexec: bool },
    /// dup, dup2, dup3, F_DUPFD[_CLOEXEC]: `new` refers to what `old` refers to. `replaces`:
    /// the call closes whatever `new` was (dup2/dup3 semantics).
    Dup { old: i32, new: i32, cloexec: bool, replaces: bool },
    /// pidfd_getfd: `new` is a copy of `target_fd` of the process `pidfd` refers to.
    GetFd { pidfd: i32, target_fd: i32, new: i32 },
    /// Descriptors received through SCM_RIGHTS on `socket`; their kind is only known from
    /// /proc. `truncated`: the kernel could not list them all (helios-trace-ebpf/src/syscalls.rs,
    /// `received_nothing`), and what the call received may be more than `fds`.
    Receive { socket: i32, fds: FdList, cloexec: bool, truncated: bool },
    /// A close that closed `fd`, seen at its exit: `number_taken` when a descriptor was at
    /// the number again by then (another thread's, whose record may have come first: the
    /// table holds what that open replaced for this close; model/fdtable.rs). False when the
    /// kernel could not tell (no offsets of its descriptor tables, a read that failed): a
    /// dup2 onto a number then closed is far more common than a close racing an open, and
    /// "taken" would make that close miss the dup.
    Close { fd: i32, number_taken: bool },
    /// close_range(first, last, flags); with CLOSE_RANGE_CLOEXEC only marks close-on-exec.
    CloseRange { first: u32, last: u32, cloexec_only: bool },
    /// fcntl(F_SETFD) or ioctl(FIOCLEX/FIONCLEX).
    SetCloexec { fd: i32, cloexec: bool },
    /// A task was created by `tgid`; `thread` when it shares the thread group.
    NewTask { child: u32, thread: bool, comm: String },
    /// `tgid` exec'd: close-on-exec descriptors are gone.
    Exec { old_tid: u32, filename: Vec<u8>, comm: String },
    /// The thread group `tgid` is gone.
    Exit,
}

impl Op {
    /// The event types: the `event` label of `helios_trace_events_total`, by [`Op::index`].
    pub(crate) const NAMES: [&'static str; 11] = [
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

    pub(crate) fn index(&self) -> usize {
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

    /// The same call, its one new descriptor at `fd`: for the calls the kernel may keep and
    /// match with their closes (an open of one descriptor, an accept); None for any other.
    pub(crate) fn renumbered(&self, fd: i32) -> Option<Op> {
        match self {
            Op::Open { fds, kind, detail, cloexec, dirfd } if fds.len() == 1 => Some(Op::Open {
                fds: smallvec::smallvec![fd],
                kind: *kind,
                detail: detail.clone(),
                cloexec: *cloexec,
                dirfd: *dirfd,
            }),
            Op::Accept { listener, cloexec, .. } => {
                Some(Op::Accept { fd, listener: *listener, cloexec: *cloexec })
            }
            _ => None,
        }
    }
}

/// The user stack a descriptor record carried (`--stacks dwarf`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CapturedStack<'a> {
    /// Registers and a window of the stack, to unwind here. `shadow`: the chain the kernel
    /// walked for the same call with learned rules (`--learned-chains shadow`), to compare.
    Window { sample: &'a StackSample<'a>, shadow: Option<WalkedChain<'a>> },
    /// The chain the kernel walked with learned rules (resolve/chains.rs).
    Chain(WalkedChain<'a>),
}

/// A chain the kernel walked with learned rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WalkedChain<'a> {
    /// The instruction pointer, then return addresses, innermost first.
    pub(crate) addresses: &'a [u64],
    /// The rule of every frame past the first came from a taught chain
    /// (helios_trace_common::chain_flags::CACHED).
    pub(crate) cached: bool,
}

/// The user state of a thread at a syscall, as the kernel program captured it (`--stacks
/// dwarf`): the registers an unwind starts from and a window of the stack, borrowed from the
/// record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StackSample<'a> {
    pub(crate) regs: StartRegs,
    /// The stack from `sp()` upward.
    pub(crate) stack: &'a [u8],
    /// helios_trace_common::user_stack_flags.
    pub(crate) flags: u32,
}

/// The registers an unwind starts from, picked from the saved user registers a record carries
/// (`UserStack::regs`, 272 bytes, of which the unwinder reads three or four). Not the whole
/// array: a sample is part of every decoded record (sys/decode.rs, `RecordStack`), whose
/// every move was then a `memcpy` of 304 bytes, a learned chain's record's too, about seven
/// a record (BENCHMARKS.md, "The decoded record made small").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StartRegs {
    /// The instruction pointer: just after the syscall instruction.
    pub(crate) pc: u64,
    pub(crate) sp: u64,
    /// The frame pointer (x86_64's rbp, aarch64's x29).
    pub(crate) fp: u64,
    /// aarch64's link register (x30); 0 on x86_64, which has none.
    pub(crate) lr: u64,
}

impl StartRegs {
    /// From the saved user registers, in the kernel's order for the running architecture
    /// (helios_trace_common::regs_x86_64, regs_aarch64).
    pub(crate) fn of(regs: &[u64; USER_REGS_WORDS]) -> StartRegs {
        #[cfg(target_arch = "x86_64")]
        let (pc, fp, lr) = (regs[saved::IP], regs[saved::BP], 0);
        #[cfg(target_arch = "aarch64")]
        let (pc, fp, lr) = (regs[saved::PC], regs[saved::FP], regs[saved::LR]);
        StartRegs { pc, sp: regs[saved::SP], fp, lr }
    }
}

impl<'a> StackSample<'a> {
    /// A sample of the saved user registers `regs` and the stack window `stack`.
    pub(crate) fn new(regs: &[u64; USER_REGS_WORDS], stack: &'a [u8], flags: u32) -> StackSample<'a> {
        StackSample { regs: StartRegs::of(regs), stack, flags }
    }

    pub(crate) fn sp(&self) -> u64 {
        self.regs.sp
    }

    /// The user instruction pointer: just after the syscall instruction.
    pub(crate) fn pc(&self) -> u64 {
        self.regs.pc
    }

    /// The 8 bytes of stack at `address`, if the window holds them.
    pub(crate) fn read(&self, address: u64) -> Result<u64, ()> {
        let start = usize::try_from(address.checked_sub(self.sp()).ok_or(())?).map_err(|_| ())?;
        let bytes = self.stack.get(start..start.checked_add(8).ok_or(())?).ok_or(())?;
        Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| ())?))
    }

    /// Whether a read at `address` failed because the window was too small (rather than
    /// because the stack ended before it, or the unwinder went astray below sp).
    pub(crate) fn beyond_window(&self, address: u64) -> bool {
        self.flags & user_stack_flags::SHORT == 0
            && address >= self.sp().saturating_add(self.stack.len() as u64)
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use helios_trace_common::regs_x86_64;

    use super::*;

    #[test]
    fn reads_only_inside_the_window() {
        let mut regs = [0u64; USER_REGS_WORDS];
        regs[regs_x86_64::SP] = 0x1000;
        let stack: Vec<u8> = (0..16).collect();
        let sample = StackSample::new(&regs, &stack, 0);
        assert_eq!(sample.read(0x1000), Ok(u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7])));
        assert_eq!(sample.read(0x1008), Ok(u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15])));
        assert_eq!(sample.read(0x1009), Err(()));
        assert_eq!(sample.read(0xff8), Err(()));
        assert_eq!(sample.read(u64::MAX), Err(()));
        assert!(sample.beyond_window(0x1010));
        assert!(!sample.beyond_window(0x1008));
    }
}
