//! Ring-buffer records → typed events. Every record is length-checked before it is read; a
//! short, unknown or meaningless record is an error the caller counts, never a panic.
use std::{
    borrow::Cow,
    mem::{offset_of, size_of},
    ops::Range,
};

use helios_trace_common::{
    CloseEvent, EventHeader, ExecEvent, ExitEvent, HandleEvent, LearnedChain, MAX_AUX_FDS, MAX_CHAIN_FRAMES,
    NewTaskEvent, PATH_LEN, PYTHON_STACK_FRAMES_OFFSET, PythonFrame, PythonStack, STACK_NOT_CAPTURED,
    SyscallEvent, UserStack, chain_flags, close_flags, kind, syscall_flags,
};
use thiserror::Error;
use zerocopy::{FromBytes, Immutable, KnownLayout};

use crate::{
    model::{
        event::{Event, FdList, Op, StackIds, StackSample},
        fd::{FdDetail, FdKind, TRUNCATED_MARKER},
    },
    sys::syscalls::{Call, SyscallTable},
};

#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum DecodeError {
    #[error("record of {len} bytes is shorter than the {need}-byte {what}")]
    Short { what: &'static str, len: usize, need: usize },
    #[error("unknown record kind {kind}")]
    UnknownKind { kind: u32 },
    #[error("record for syscall number {nr}, which is not traced")]
    UnknownSyscall { nr: u32 },
}

/// Why a well-formed record produced no event (not an error: e.g. dup2(fd, fd)).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded<'a> {
    /// An event and the user stack its record carried, read once with it.
    Event(Event, RecordStack<'a>),
    Nothing,
    /// The Python frames of the descriptor record that follows (same tid and ts_ns).
    Python(PythonFrames),
    /// `--learned-chains shadow`: the chain the kernel walked for the descriptor record that
    /// follows with its stack window (same tid and ts_ns).
    Shadow(ShadowChain),
    /// A libuv TCP handle's step (helios-trace-ebpf/src/libuv.rs), with the stack its
    /// creation record carried.
    Handle(HandleRecord, RecordStack<'a>),
}

/// A `kind::LIBUV_*` record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HandleRecord {
    pub(crate) tgid: u32,
    pub(crate) tid: u32,
    pub(crate) ts_ns: u64,
    pub(crate) handle: u64,
    pub(crate) step: HandleStep,
    /// A frame-pointer stack's id (`kind::LIBUV_TCP_HANDLE`).
    pub(crate) stack_id: Option<i32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HandleStep {
    /// `uv_tcp_init` or `uv_tcp_init_ex`: the handle was made here.
    Created,
    /// `uv_tcp_connect` entered: the thread's next socket until it returns is the handle's.
    Connecting,
    /// `uv_tcp_connect` returned.
    Connected,
}

/// The user stack a descriptor record carried with `--stacks dwarf` (`None` otherwise: a
/// frame-pointer stack is an id in the event's `StackIds`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RecordStack<'a> {
    None,
    Window(StackSample<'a>),
    Chain(RecordChain<'a>),
}

/// The chain of a `kind::FD_SYSCALL_CHAIN` record ([`LearnedChain`]): its flags
/// (`chain_flags`), and its addresses up to its depth, borrowed from the record where the
/// record is 8-aligned (every record of the ring emptier's chunks, sys/ring.rs `Memory`),
/// copied where not (a test's bytes may not be). A copy of the whole chain, 520 bytes, and its
/// moves with the decoded record were a tenth of the engine's time per record (BENCHMARKS.md,
/// "The daemon's cost per record").
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RecordChain<'a> {
    pub(crate) flags: u32,
    pub(crate) addresses: Cow<'a, [u64]>,
    /// With `chain_flags::PAIRED`: the calls exactly like the record's whose descriptors the
    /// kernel matched with their closes before it sent the record (helios-trace-ebpf/src/pairs.rs).
    pub(crate) pairs: u32,
    /// With `chain_flags::PAIRS_AT_ONE_FD`: the number every pair was at.
    pub(crate) pairs_fd: Option<i32>,
}

/// A `kind::FD_SYSCALL_CHAIN` record with `chain_flags::SHADOW`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ShadowChain {
    pub(crate) tid: u32,
    pub(crate) ts_ns: u64,
    pub(crate) addresses: Vec<u64>,
    /// The kernel took the rules past the first frame from a taught chain
    /// (`chain_flags::CACHED`).
    pub(crate) cached: bool,
}

/// A `kind::PYTHON_STACK` record: (code object, instruction) pairs, innermost first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PythonFrames {
    pub(crate) tid: u32,
    pub(crate) ts_ns: u64,
    pub(crate) frames: Vec<PythonFrame>,
    /// helios_trace_common::python_flags.
    pub(crate) flags: u32,
}

fn read<T: FromBytes>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    T::read_from_prefix(bytes).map(|(record, _)| record).map_err(|_| DecodeError::Short {
        what,
        len: bytes.len(),
        need: size_of::<T>(),
    })
}

/// The `T` at the start of `bytes`: borrowed where they are aligned for it (every record of the
/// ring emptier's chunks, sys/ring.rs `Memory`), else read into `copy` (a test's bytes may not
/// be). Not copied always: a descriptor record's `SyscallEvent` is 440 bytes, and its copy was a
/// `memcpy` of 392 of them (the rest moved in registers) for every descriptor record (BENCHMARKS.md, "The decoded record made
/// small").
fn view<'b, T: FromBytes + KnownLayout + Immutable>(
    bytes: &'b [u8],
    what: &'static str,
    copy: &'b mut Option<T>,
) -> Result<&'b T, DecodeError> {
    match T::ref_from_prefix(bytes) {
        Ok((record, _)) => Ok(record),
        Err(_) => Ok(copy.insert(read(bytes, what)?)),
    }
}

pub(crate) fn decode<'a>(bytes: &'a [u8], table: &SyscallTable) -> Result<Decoded<'a>, DecodeError> {
    let header: EventHeader = read(bytes, "event header")?;
    let event = |stacks: StackIds, op: Op| Event {
        tgid: header.tgid,
        tid: header.tid,
        ts_ns: header.ts_ns,
        stacks,
        op,
    };
    match header.kind {
        kind::FD_SYSCALL | kind::FD_SYSCALL_USER_STACK | kind::FD_SYSCALL_CHAIN => {
            let mut copy = None;
            let record: &SyscallEvent = view(bytes, "syscall record", &mut copy)?;
            let stack = match (learned_chain(bytes)?, user_stack(bytes)?) {
                (Some(chain), _) if chain.flags & chain_flags::SHADOW != 0 => {
                    let addresses = chain.addresses.into_owned();
                    return Ok(Decoded::Shadow(ShadowChain {
                        tid: header.tid,
                        ts_ns: header.ts_ns,
                        addresses,
                        cached: chain.flags & chain_flags::CACHED != 0,
                    }));
                }
                (Some(chain), _) => RecordStack::Chain(chain),
                (None, Some(window)) => RecordStack::Window(window),
                (None, None) => RecordStack::None,
            };
            let call = table.call(record.nr).ok_or(DecodeError::UnknownSyscall { nr: record.nr })?;
            let stacks = StackIds {
                user: stack_id(record.stack_id),
                creator: (record.creator_pc != 0).then_some(record.creator_pc),
                at_entry: false,
            };
            Ok(match syscall_op(call, record) {
                Some(op) => Decoded::Event(event(stacks, op), stack),
                None => Decoded::Nothing,
            })
        }
        kind::CLOSE => {
            let record: CloseEvent = read(bytes, "close record")?;
            Ok(Decoded::Event(
                event(
                    StackIds::default(),
                    Op::Close { fd: record.fd, number_taken: record.flags & close_flags::NUMBER_TAKEN != 0 },
                ),
                RecordStack::None,
            ))
        }
        kind::NEW_TASK => {
            let record: NewTaskEvent = read(bytes, "new-task record")?;
            let op = Op::NewTask {
                child: record.child_tid,
                thread: record.clone_flags & libc::CLONE_THREAD as u64 != 0,
                comm: c_string(&record.comm),
            };
            Ok(Decoded::Event(event(StackIds::default(), op), RecordStack::None))
        }
        kind::EXEC => {
            let record: ExecEvent = read(bytes, "exec record")?;
            let len = (record.filename_len as usize).min(record.filename.len());
            let op = Op::Exec {
                old_tid: record.old_tid,
                filename: record.filename[..len].to_vec(),
                comm: c_string(&record.comm),
            };
            Ok(Decoded::Event(event(StackIds::default(), op), RecordStack::None))
        }
        kind::PYTHON_STACK => {
            // Sent up to its frames only (PythonStack): the rest of the array reads as zeros.
            let mut whole = [0u8; size_of::<PythonStack>()];
            let len = bytes.len().min(whole.len());
            whole[..len].copy_from_slice(&bytes[..len]);
            let record: PythonStack = read(&whole, "Python stack record")?;
            let count = (record.frame_count as usize).min(record.frames.len());
            let need = PYTHON_STACK_FRAMES_OFFSET + count * size_of::<PythonFrame>();
            if bytes.len() < need {
                return Err(DecodeError::Short { what: "Python stack record", len: bytes.len(), need });
            }
            Ok(Decoded::Python(PythonFrames {
                tid: header.tid,
                ts_ns: header.ts_ns,
                frames: record.frames[..count].to_vec(),
                flags: record.flags,
            }))
        }
        kind::LIBUV_TCP_HANDLE
        | kind::LIBUV_TCP_HANDLE_USER_STACK
        | kind::LIBUV_TCP_CONNECT
        | kind::LIBUV_TCP_CONNECT_RETURN => {
            let record: HandleEvent = read(bytes, "handle record")?;
            let step = match header.kind {
                kind::LIBUV_TCP_CONNECT => HandleStep::Connecting,
                kind::LIBUV_TCP_CONNECT_RETURN => HandleStep::Connected,
                _ => HandleStep::Created,
            };
            let stack = match user_stack(bytes)? {
                Some(window) => RecordStack::Window(window),
                None => RecordStack::None,
            };
            let handle = HandleRecord {
                tgid: header.tgid,
                tid: header.tid,
                ts_ns: header.ts_ns,
                handle: record.handle,
                step,
                stack_id: stack_id(record.stack_id),
            };
            Ok(Decoded::Handle(handle, stack))
        }
        kind::EXIT => {
            let _: ExitEvent = read(bytes, "exit record")?;
            Ok(Decoded::Event(event(StackIds::default(), Op::Exit), RecordStack::None))
        }
        kind => Err(DecodeError::UnknownKind { kind }),
    }
}

/// An `EXEC_NOTICES` record: the process that exec'd and its exec record's time (the key
/// the exec lane and the engine agree on, resolve/python/early.rs).
pub(crate) fn exec_notice(bytes: &[u8]) -> Result<(u32, u64), DecodeError> {
    let header: EventHeader = read(bytes, "exec notice")?;
    if header.kind != kind::EXEC {
        return Err(DecodeError::UnknownKind { kind: header.kind });
    }
    Ok((header.tgid, header.ts_ns))
}

/// The user stack a `kind::FD_SYSCALL_USER_STACK` record carries after its SyscallEvent, or a
/// `kind::LIBUV_TCP_HANDLE_USER_STACK` after its HandleEvent (None for every other record),
/// borrowed from the record.
pub(crate) fn user_stack(bytes: &[u8]) -> Result<Option<StackSample<'_>>, DecodeError> {
    let header: EventHeader = read(bytes, "event header")?;
    let event_len = match header.kind {
        kind::FD_SYSCALL_USER_STACK => size_of::<SyscallEvent>(),
        kind::LIBUV_TCP_HANDLE_USER_STACK => size_of::<HandleEvent>(),
        _ => return Ok(None),
    };
    let tail = bytes.get(event_len..).unwrap_or_default();
    let mut copy = None;
    let stack: &UserStack = view(tail, "user stack", &mut copy)?;
    let data = &tail[size_of::<UserStack>()..];
    let len = stack.stack_len as usize;
    let Some(window) = data.get(..len) else {
        return Err(DecodeError::Short { what: "user stack window", len: data.len(), need: len });
    };
    Ok(Some(StackSample::new(&stack.regs, window, stack.flags)))
}

/// The chain a `kind::FD_SYSCALL_CHAIN` record carries after its SyscallEvent (None for every
/// other record).
pub(crate) fn learned_chain(bytes: &[u8]) -> Result<Option<RecordChain<'_>>, DecodeError> {
    let header: EventHeader = read(bytes, "event header")?;
    if header.kind != kind::FD_SYSCALL_CHAIN {
        return Ok(None);
    }
    let tail = bytes.get(size_of::<SyscallEvent>()..).unwrap_or_default();
    let pairs = |flags: u32| if flags & chain_flags::PAIRED != 0 { header.reserved } else { 0 };
    let pairs_fd = |flags: u32| -> Result<Option<i32>, DecodeError> {
        let both = chain_flags::PAIRED | chain_flags::PAIRS_AT_ONE_FD;
        if flags & both != both {
            return Ok(None);
        }
        let at = bytes.get(offset_of!(SyscallEvent, aux_fds)..).unwrap_or_default();
        Ok(Some(read::<i32>(at, "pairs' number")?))
    };
    Ok(Some(match LearnedChain::ref_from_prefix(tail) {
        Ok((chain, _)) => RecordChain {
            flags: chain.flags,
            addresses: Cow::Borrowed(chain.chain()),
            pairs: pairs(chain.flags),
            pairs_fd: pairs_fd(chain.flags)?,
        },
        Err(_) => {
            let chain: LearnedChain = read(tail, "learned chain")?;
            RecordChain {
                flags: chain.flags,
                addresses: Cow::Owned(chain.chain().to_vec()),
                pairs: pairs(chain.flags),
                pairs_fd: pairs_fd(chain.flags)?,
            }
        }
    }))
}

/// The parts of a record its kernel program wrote, within `record`: everything but the
/// unused end of a descriptor record's path and of what follows it (a learned chain's
/// addresses past its depth, a stack window past its length). The rest of a reservation is what
/// an earlier record left in the ring (kernel/bpf/ringbuf.c, `__bpf_ringbuf_reserve` does not
/// clear it), which `decode` never reads (it reads the path up to `path_len`, a chain up to its
/// `depth`, a window up to `stack_len`), so the ring's emptier copies only these two spans
/// (sys/ring.rs, `Chunk::push`): a learned chain's record is 960 bytes, of which a short chain
/// and path fill about 250, and the rest were reads of memory last written a ring ago
/// (BENCHMARKS.md, "The daemon's cost per record"). Other records are one whole span.
pub(crate) fn written_spans(record: &[u8]) -> [Range<usize>; 2] {
    const PATH: usize = offset_of!(SyscallEvent, path);
    let whole = [0..record.len(), record.len()..record.len()];
    let word = |at: usize| record.get(at..at + 4).map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")));
    let Some(kind) = word(offset_of!(EventHeader, kind)) else { return whole };
    let after_event = size_of::<SyscallEvent>();
    let end = match kind {
        kind::FD_SYSCALL => after_event,
        kind::FD_SYSCALL_CHAIN => match word(after_event + offset_of!(LearnedChain, depth)) {
            Some(depth) => {
                let depth = (depth as usize).min(MAX_CHAIN_FRAMES);
                after_event + offset_of!(LearnedChain, addresses) + depth * size_of::<u64>()
            }
            None => return whole,
        },
        kind::FD_SYSCALL_USER_STACK => match word(after_event + offset_of!(UserStack, stack_len)) {
            Some(len) => (after_event + size_of::<UserStack>()).saturating_add(len as usize),
            None => return whole,
        },
        _ => return whole,
    };
    let Some(path_len) = word(offset_of!(SyscallEvent, path_len)) else { return whole };
    let path_end = PATH + (path_len as usize).min(PATH_LEN);
    let end = end.min(record.len());
    [0..path_end.min(end), (PATH + PATH_LEN).min(end)..end]
}

/// The kind of a file opened by path or handle: from the mode of the file the open installed,
/// which the kernel read at its exit (`SyscallEvent::mode`; a stat from here would race with
/// the process). Where it could not (no BTF offsets, the number closed again by then), a guess
/// from the path and open flags: O_DIRECTORY means a directory (opendir and friends pass it);
/// /dev is devices, except the tmpfs of POSIX shared memory.
fn kind_of_opened_path(path: &[u8], open_flags: u64, mode: u32) -> FdKind {
    if let Some(kind) = super::proc::fds::kind_of_mode(mode) {
        kind
    } else if open_flags & libc::O_DIRECTORY as u64 != 0 {
        FdKind::Dir
    } else if path.starts_with(b"/dev/") && !path.starts_with(b"/dev/shm/") {
        FdKind::Device
    } else {
        FdKind::File
    }
}

fn stack_id(raw: i32) -> Option<i32> {
    (raw != STACK_NOT_CAPTURED).then_some(raw)
}

/// A fixed-size, NUL-padded kernel string (comm) as text.
/// A NUL-terminated name from the kernel (a command name: anyone can set theirs to anything,
/// newlines included), made printable.
pub(crate) fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    crate::model::fd::printable(&bytes[..end], bytes.len())
}

// Flags the kernel headers define but libc does not export for every target.
const CLOSE_RANGE_CLOEXEC: u64 = 1 << 2; // include/uapi/linux/close_range.h
const FAN_CLOEXEC: u64 = 0x1; // include/uapi/linux/fanotify.h
const PERF_FLAG_FD_CLOEXEC: u64 = 1 << 3; // include/uapi/linux/perf_event.h
const SOCK_TYPE_MASK: u64 = 0xf; // include/linux/net.h

fn flag(value: u64, mask: impl Into<i64>) -> bool {
    value & mask.into() as u64 != 0
}

/// The meaning of one successful descriptor syscall; `None` when it changed nothing we track.
fn syscall_op(call: Call, record: &SyscallEvent) -> Option<Op> {
    let a = record.args;
    let fd = record.ret as i32;
    let one = |fd: i32| -> FdList { smallvec::smallvec![fd] };
    let open = |kind: FdKind, detail: FdDetail, cloexec: bool| Op::Open {
        fds: one(fd),
        kind,
        detail,
        cloexec,
        dirfd: None,
    };
    // The path (memfd_create's name) as the kernel read it; None where it could not read it at
    // the call's exit (its memory unmapped by then, `counter::PATH_UNREADABLE`): no path, not
    // an empty one, nor one relative to a directory, but `FdDetail::Unread`, which /proc names
    // at the report (observe/procfs.rs, `describe_fd`).
    let path = || -> Option<Vec<u8>> {
        if record.flags & syscall_flags::PATH_UNREADABLE != 0 {
            return None;
        }
        let len = (record.path_len as usize).min(PATH_LEN);
        let mut path = record.path[..len].to_vec();
        // The kernel copied only the first PATH_LEN bytes: say so, never pass a prefix off as
        // the path.
        if record.flags & syscall_flags::PATH_TRUNCATED != 0 {
            path.extend_from_slice(TRUNCATED_MARKER.as_bytes());
        }
        Some(path)
    };
    let open_path = |flags: u64, dirfd: u64| {
        let path = path();
        let named = path.as_deref().unwrap_or_default();
        let relative = path.as_ref().is_some_and(|path| !path.starts_with(b"/"));
        let dirfd = dirfd as i32;
        Op::Open {
            fds: one(fd),
            kind: kind_of_opened_path(named, flags, record.mode),
            cloexec: flag(flags, libc::O_CLOEXEC),
            dirfd: (relative && dirfd != libc::AT_FDCWD).then_some(dirfd),
            detail: path.map_or(FdDetail::Unread, |path| FdDetail::Path(path.into_boxed_slice())),
        }
    };
    let pair = || -> Option<FdList> {
        (record.aux_count >= 2).then(|| smallvec::smallvec![record.aux_fds[0], record.aux_fds[1]])
    };
    let socket = |family: u64, sock_type: u64, protocol: u64| FdDetail::Socket {
        family: family as u16,
        sock_type: (sock_type & SOCK_TYPE_MASK) as u16,
        protocol: protocol as u16,
    };
    let dup =
        |old: u64, cloexec: bool, replaces: bool| Op::Dup { old: old as i32, new: fd, cloexec, replaces };
    Some(match call {
        Call::Open => open_path(a[1], libc::AT_FDCWD as u64),
        Call::Creat => {
            open_path((libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC) as u64, libc::AT_FDCWD as u64)
        }
        Call::OpenAt => open_path(a[2], a[0]),
        Call::OpenAt2 => {
            let flags = if record.flags & syscall_flags::DEREF_VALID != 0 { record.deref } else { 0 };
            open_path(flags, a[0])
        }
        // No path: the kind from the mode, or else the flags (a handle of a directory opened
        // with O_DIRECTORY).
        Call::OpenByHandleAt => {
            open(kind_of_opened_path(b"", a[2], record.mode), FdDetail::Unread, flag(a[2], libc::O_CLOEXEC))
        }
        Call::Socket => open(FdKind::Socket, socket(a[0], a[1], a[2]), flag(a[1], libc::SOCK_CLOEXEC)),
        Call::SocketPair => Op::Open {
            fds: pair()?,
            kind: FdKind::Socket,
            detail: socket(a[0], a[1], a[2]),
            cloexec: flag(a[1], libc::SOCK_CLOEXEC),
            dirfd: None,
        },
        Call::Accept => Op::Accept { fd, listener: a[0] as i32, cloexec: false },
        Call::Accept4 => Op::Accept { fd, listener: a[0] as i32, cloexec: flag(a[3], libc::SOCK_CLOEXEC) },
        Call::Pipe | Call::Pipe2 => Op::Open {
            fds: pair()?,
            kind: FdKind::Pipe,
            detail: FdDetail::None,
            cloexec: call == Call::Pipe2 && flag(a[1], libc::O_CLOEXEC),
            dirfd: None,
        },
        Call::Dup => dup(a[0], false, false),
        // dup2(fd, fd) checks fd and changes nothing.
        Call::Dup2 if a[0] == a[1] => return None,
        Call::Dup2 => dup(a[0], false, true),
        Call::Dup3 => dup(a[0], flag(a[2], libc::O_CLOEXEC), true),
        Call::Fcntl => match a[1] as i32 {
            libc::F_DUPFD => dup(a[0], false, false),
            libc::F_DUPFD_CLOEXEC => dup(a[0], true, false),
            libc::F_SETFD => Op::SetCloexec { fd: a[0] as i32, cloexec: flag(a[2], libc::FD_CLOEXEC) },
            _ => return None,
        },
        Call::Ioctl => match a[1] as u32 as u64 {
            x if x == libc::FIOCLEX => Op::SetCloexec { fd: a[0] as i32, cloexec: true },
            x if x == libc::FIONCLEX => Op::SetCloexec { fd: a[0] as i32, cloexec: false },
            _ => return None,
        },
        Call::EventFd => open(FdKind::Eventfd, FdDetail::None, false),
        Call::EventFd2 => open(FdKind::Eventfd, FdDetail::None, flag(a[1], libc::EFD_CLOEXEC)),
        Call::EpollCreate => open(FdKind::Epoll, FdDetail::None, false),
        Call::EpollCreate1 => open(FdKind::Epoll, FdDetail::None, flag(a[0], libc::EPOLL_CLOEXEC)),
        Call::TimerfdCreate => open(FdKind::Timerfd, FdDetail::None, flag(a[1], libc::TFD_CLOEXEC)),
        // signalfd with an existing fd only changes its mask.
        Call::Signalfd | Call::Signalfd4 if a[0] as i32 != -1 => return None,
        Call::Signalfd => open(FdKind::Signalfd, FdDetail::None, false),
        Call::Signalfd4 => open(FdKind::Signalfd, FdDetail::None, flag(a[3], libc::SFD_CLOEXEC)),
        Call::InotifyInit => open(FdKind::Inotify, FdDetail::None, false),
        Call::InotifyInit1 => open(FdKind::Inotify, FdDetail::None, flag(a[0], libc::IN_CLOEXEC)),
        Call::FanotifyInit => open(FdKind::Other, FdDetail::None, a[0] & FAN_CLOEXEC != 0),
        Call::MemfdCreate => open(
            FdKind::Memfd,
            path().map_or(FdDetail::Unread, |name| FdDetail::Name(name.into_boxed_slice())),
            flag(a[1], libc::MFD_CLOEXEC as i64),
        ),
        // pidfd_open, pidfd_getfd and io_uring_setup always set O_CLOEXEC
        // (kernel/pid.c, kernel/pid.c pidfd_getfd, io_uring/io_uring.c io_uring_install_fd).
        Call::PidfdOpen => open(FdKind::Pidfd, FdDetail::Pid(a[0] as u32), true),
        Call::PidfdGetfd => Op::GetFd { pidfd: a[0] as i32, target_fd: a[1] as i32, new: fd },
        Call::Userfaultfd => open(FdKind::Other, FdDetail::None, flag(a[0], libc::O_CLOEXEC)),
        Call::PerfEventOpen => open(FdKind::Other, FdDetail::None, a[4] & PERF_FLAG_FD_CLOEXEC != 0),
        Call::IoUringSetup => open(FdKind::IoUring, FdDetail::None, true),
        Call::RecvMsg | Call::RecvMmsg => {
            // recvmsg(fd, msg, flags); recvmmsg(fd, msgvec, vlen, flags, timeout).
            let flags = if call == Call::RecvMsg { a[2] } else { a[3] };
            let truncated = record.flags & syscall_flags::AUX_TRUNCATED != 0;
            let count = (record.aux_count as usize).min(MAX_AUX_FDS);
            if count == 0 && !truncated {
                return None;
            }
            Op::Receive {
                socket: a[0] as i32,
                fds: record.aux_fds[..count].iter().copied().collect(),
                cloexec: flag(flags, libc::MSG_CMSG_CLOEXEC),
                truncated,
            }
        }
        Call::CloseRange => Op::CloseRange {
            first: a[0] as u32,
            last: a[1] as u32,
            cloexec_only: a[2] & CLOSE_RANGE_CLOEXEC != 0,
        },
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Bytes of a record as the kernel program writes them.
    pub(crate) fn bytes_of<T: zerocopy::IntoBytes + zerocopy::Immutable>(record: &T) -> Vec<u8> {
        record.as_bytes().to_vec()
    }

    pub(crate) fn header(kind: u32) -> EventHeader {
        EventHeader { kind, tgid: 100, tid: 101, reserved: 0, ts_ns: 5_000 }
    }

    pub(crate) fn syscall(call: Call, ret: i64, args: [u64; 6]) -> SyscallEvent {
        SyscallEvent {
            header: header(kind::FD_SYSCALL),
            nr: call.number().expect("call exists on this arch"),
            stack_id: 7,
            ret,
            args,
            deref: 0,
            aux_fds: [0; MAX_AUX_FDS],
            aux_count: 0,
            path_len: 0,
            flags: 0,
            mode: 0,
            path: [0; PATH_LEN],
            creator_pc: 0,
        }
    }

    pub(crate) fn with_path(mut record: SyscallEvent, path: &[u8]) -> SyscallEvent {
        record.path[..path.len()].copy_from_slice(path);
        record.path_len = path.len() as u32;
        record
    }

    fn op_of(record: &SyscallEvent) -> Option<Op> {
        match decode(&bytes_of(record), &SyscallTable::native()).unwrap() {
            Decoded::Event(event, _) => Some(event.op),
            Decoded::Nothing | Decoded::Python(_) | Decoded::Shadow(_) | Decoded::Handle(..) => None,
        }
    }

    #[test]
    fn kind_of_opened_path() {
        // Without the mode, a guess from the path and flags.
        assert_eq!(super::kind_of_opened_path(b"/etc/passwd", 0, 0), FdKind::File);
        assert_eq!(super::kind_of_opened_path(b"/tmp", libc::O_DIRECTORY as u64, 0), FdKind::Dir);
        assert_eq!(super::kind_of_opened_path(b"/dev/null", 0, 0), FdKind::Device);
        assert_eq!(super::kind_of_opened_path(b"/dev/shm/x", 0, 0), FdKind::File);
        assert_eq!(super::kind_of_opened_path(b"relative", 0, 0), FdKind::File);
        // With it, what the path named, whatever the path and flags say.
        assert_eq!(super::kind_of_opened_path(b"/tmp", 0, libc::S_IFDIR | 0o1777), FdKind::Dir);
        assert_eq!(super::kind_of_opened_path(b"/tmp/fifo", 0, libc::S_IFIFO | 0o600), FdKind::Pipe);
        assert_eq!(super::kind_of_opened_path(b"/dev/stdin", 0, libc::S_IFIFO | 0o600), FdKind::Pipe);
        assert_eq!(super::kind_of_opened_path(b"/dev/shm/x", 0, libc::S_IFREG | 0o600), FdKind::File);
        assert_eq!(super::kind_of_opened_path(b"/home/tty", 0, libc::S_IFCHR | 0o620), FdKind::Device);
        // A mode without a type (an anonymous inode's 0600): the guess.
        assert_eq!(super::kind_of_opened_path(b"/x", 0, 0o600), FdKind::File);
    }

    #[test]
    fn python_stack_keeps_its_valid_frames() {
        let mut record = PythonStack {
            header: EventHeader { tid: 7, ts_ns: 99, ..header(kind::PYTHON_STACK) },
            frame_count: 2,
            flags: 0,
            frames: [PythonFrame::default(); helios_trace_common::MAX_PYTHON_FRAMES],
        };
        record.frames[0] = PythonFrame { code: 0x1000, instr: 0x1040 };
        record.frames[1] = PythonFrame { code: 0x2000, instr: 0x2010 };
        let Decoded::Python(walked) = decode(&bytes_of(&record), &SyscallTable::native()).unwrap() else {
            panic!("not a Python stack")
        };
        assert_eq!((walked.tid, walked.ts_ns, walked.frames.len()), (7, 99, 2));
        assert_eq!(walked.frames[1].instr, 0x2010);
        // As the kernel sends it: up to its frames; one byte fewer is short.
        let sent = PYTHON_STACK_FRAMES_OFFSET + 2 * size_of::<PythonFrame>();
        let Decoded::Python(walked) = decode(&bytes_of(&record)[..sent], &SyscallTable::native()).unwrap()
        else {
            panic!("not a Python stack")
        };
        assert_eq!(walked.frames, record.frames[..2].to_vec());
        assert!(decode(&bytes_of(&record)[..sent - 1], &SyscallTable::native()).is_err());
        // A count beyond the array is cut to it; a short record is an error.
        record.frame_count = 1000;
        let Decoded::Python(walked) = decode(&bytes_of(&record), &SyscallTable::native()).unwrap() else {
            panic!("not a Python stack")
        };
        assert_eq!(walked.frames.len(), helios_trace_common::MAX_PYTHON_FRAMES);
        assert!(decode(&bytes_of(&record)[..100], &SyscallTable::native()).is_err());
    }

    #[test]
    fn a_goroutine_creator_the_kernel_read_comes_with_the_stack() {
        let mut record = syscall(Call::OpenAt, 5, [libc::AT_FDCWD as u64, 0, 0, 0, 0, 0]);
        let decoded =
            |record: &SyscallEvent| match decode(&bytes_of(record), &SyscallTable::native()).unwrap() {
                Decoded::Event(e, _) => e.stacks,
                other => panic!("{other:?}"),
            };
        assert_eq!(decoded(&record).creator, None, "0: not read");
        record.creator_pc = 0x64a296;
        assert_eq!(decoded(&record), StackIds { user: Some(7), creator: Some(0x64a296), at_entry: false });
    }

    #[test]
    fn a_learned_chain_is_the_stack_of_its_record_and_a_shadow_chain_waits_for_its_window() {
        let mut record = syscall(Call::OpenAt, 5, [libc::AT_FDCWD as u64, 0, 0, 0, 0, 0]);
        record.header.kind = kind::FD_SYSCALL_CHAIN;
        let mut chain =
            LearnedChain { depth: 3, flags: 0, addresses: [0; helios_trace_common::MAX_CHAIN_FRAMES] };
        chain.addresses[..3].copy_from_slice(&[0x7f00_0000_1234, 0x55d0_c0a0_1010, 0x7f00_0000_5678]);
        let bytes = |chain: &LearnedChain| [bytes_of(&record), bytes_of(chain)].concat();
        let table = SyscallTable::native();
        let record_bytes = bytes(&chain);
        let Ok(Decoded::Event(_, RecordStack::Chain(read))) = decode(&record_bytes, &table) else {
            panic!("not a chain")
        };
        assert_eq!(*read.addresses, chain.addresses[..3]);
        assert_eq!(*learned_chain(&bytes(&chain)).unwrap().unwrap().addresses, chain.addresses[..3]);
        assert_eq!(user_stack(&bytes(&chain)), Ok(None));
        // Shadow: not an event, the chain of the window record that follows.
        for (flags, cached) in
            [(chain_flags::SHADOW, false), (chain_flags::SHADOW | chain_flags::CACHED, true)]
        {
            chain.flags = flags;
            let expected = ShadowChain {
                tid: record.header.tid,
                ts_ns: record.header.ts_ns,
                addresses: chain.chain().to_vec(),
                cached,
            };
            assert_eq!(decode(&bytes(&chain), &table), Ok(Decoded::Shadow(expected)));
        }
        // A depth beyond the array reads as the whole array; a cut record is short.
        chain.depth = 1000;
        assert_eq!(
            learned_chain(&bytes(&chain)).unwrap().unwrap().addresses.len(),
            helios_trace_common::MAX_CHAIN_FRAMES
        );
        let cut = &bytes(&chain)[..size_of::<SyscallEvent>() + 100];
        assert!(matches!(decode(cut, &table), Err(DecodeError::Short { what: "learned chain", .. })));
    }

    /// What the kernel kept of a call (helios-trace-ebpf/src/pairs.rs): the pairs matched before
    /// it are counted in the header's reserved word, read only with `chain_flags::PAIRED`.
    #[test]
    fn a_chain_record_carries_the_pairs_the_kernel_matched_before_it() {
        let mut record =
            syscall(Call::Socket, 5, [libc::AF_INET as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0]);
        record.header.kind = kind::FD_SYSCALL_CHAIN;
        record.header.reserved = 4;
        let mut chain = LearnedChain { depth: 1, flags: 0, addresses: [0; MAX_CHAIN_FRAMES] };
        chain.addresses[0] = 0x7f00_0000_1234;
        record.aux_fds[0] = 9;
        let pairs = |chain: &LearnedChain| {
            let bytes = [bytes_of(&record), bytes_of(chain)].concat();
            let read = learned_chain(&bytes).unwrap().unwrap();
            (read.pairs, read.pairs_fd)
        };
        assert_eq!(pairs(&chain), (0, None), "not without the flag");
        chain.flags = chain_flags::PAIRED | chain_flags::PAIRS_ONLY;
        assert_eq!(pairs(&chain), (4, None), "their numbers not told");
        chain.flags |= chain_flags::PAIRS_AT_ONE_FD;
        assert_eq!(pairs(&chain), (4, Some(9)), "all at aux_fds[0]");
    }

    /// A record is read in place where its bytes are aligned (the emptier's chunks) and copied
    /// where not: the two decode alike.
    #[test]
    fn a_record_decodes_alike_in_place_and_copied() {
        let table = SyscallTable::native();
        let mut record =
            with_path(syscall(Call::OpenAt, 5, [libc::AT_FDCWD as u64, 0, 0, 0, 0, 0]), b"/srv/a");
        let window = with_user_stack(record, 0x7ffd_0000, &[1, 2, 3, 4, 5, 6, 7, 8]);
        record.header.kind = kind::FD_SYSCALL_CHAIN;
        let mut chain = LearnedChain { depth: 2, flags: 0, addresses: [0; MAX_CHAIN_FRAMES] };
        chain.addresses[..2].copy_from_slice(&[0x7f00_0000_1234, 0x55d0_c0a0_1010]);
        let chained = [bytes_of(&record), bytes_of(&chain)].concat();
        for bytes in [&window, &chained] {
            // Two 8-aligned buffers: the record at the start of one, one byte in in the other.
            let (mut words, mut other) = (vec![0u64; bytes.len() / 8 + 2], vec![0u64; bytes.len() / 8 + 2]);
            let aligned = &mut zerocopy::IntoBytes::as_mut_bytes(&mut words[..])[..bytes.len()];
            aligned.copy_from_slice(bytes);
            let shifted = &mut zerocopy::IntoBytes::as_mut_bytes(&mut other[..])[1..=bytes.len()];
            shifted.copy_from_slice(bytes);
            let (mut in_place, mut copied) = (None, None);
            view::<SyscallEvent>(aligned, "syscall record", &mut in_place).unwrap();
            view::<SyscallEvent>(shifted, "syscall record", &mut copied).unwrap();
            assert!(in_place.is_none() && copied.is_some(), "read in place, and copied");
            let decoded = decode(aligned, &table).unwrap();
            assert!(matches!(decoded, Decoded::Event(..)), "{decoded:?}");
            assert_eq!(decode(shifted, &table).unwrap(), decoded);
        }
    }

    /// A descriptor record as the ring holds it: the written parts, and `garbage` where its
    /// kernel program wrote nothing (the path's end, a chain past its depth, a window past its
    /// length, up to what the program reserved).
    fn as_in_the_ring(
        kind: u32,
        call: Call,
        path_len: usize,
        depth: u32,
        window: (u32, usize),
        garbage: &[u8],
    ) -> Vec<u8> {
        let mut junk = garbage.iter().copied().cycle();
        let mut record = syscall(call, 5, [libc::AT_FDCWD as u64, 0x1234, 0x80000, 0, 0, 0]);
        record.header.kind = kind;
        record.aux_count = 2;
        record.aux_fds[..2].copy_from_slice(&[7, 8]);
        record.path.iter_mut().for_each(|b| *b = junk.next().unwrap());
        record.path[..path_len].iter_mut().for_each(|b| *b = b'a' + (*b % 26));
        record.path_len = path_len as u32;
        record.creator_pc = 0x64a296;
        let mut bytes = bytes_of(&record);
        match kind {
            kind::FD_SYSCALL_CHAIN => {
                let mut chain = LearnedChain { depth, flags: 0, addresses: [0; MAX_CHAIN_FRAMES] };
                for (i, address) in chain.addresses.iter_mut().enumerate() {
                    *address = if i < depth as usize {
                        0x55d0_c0a0_1000 + i as u64
                    } else {
                        junk.next().unwrap().into()
                    };
                }
                bytes.extend(bytes_of(&chain));
            }
            kind::FD_SYSCALL_USER_STACK => {
                let (stack_len, reserved) = window;
                let header =
                    UserStack { regs: [3; helios_trace_common::USER_REGS_WORDS], stack_len, flags: 0 };
                bytes.extend(bytes_of(&header));
                bytes.extend(
                    (0..reserved)
                        .map(|i| if i < stack_len as usize { i as u8 } else { junk.next().unwrap() }),
                );
            }
            _ => {}
        }
        bytes
    }

    mod copied_by_spans {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// The ring's emptier copies only `written_spans` into memory that held other records:
            /// every record decodes as it would have from the ring, cut ones too.
            #[test]
            fn a_record_copied_by_its_written_spans_decodes_as_the_whole(
                kind in proptest::sample::select(vec![kind::FD_SYSCALL, kind::FD_SYSCALL_CHAIN, kind::FD_SYSCALL_USER_STACK]),
                call in proptest::sample::select(vec![Call::OpenAt, Call::Socket, Call::Accept4, Call::Pipe2, Call::RecvMsg]),
                path_len in 0..=PATH_LEN,
                depth in 0u32..80,
                (stack_len, reserved) in (0u32..600).prop_flat_map(|len| (Just(len), len as usize..700)),
                garbage in proptest::collection::vec(proptest::num::u8::ANY, 1..64),
                other in proptest::collection::vec(proptest::num::u8::ANY, 1..64),
                cut in proptest::option::of(0usize..2000),
            ) {
                let mut ring = as_in_the_ring(kind, call, path_len, depth, (stack_len, reserved), &garbage);
                if let Some(cut) = cut {
                    ring.truncate(cut);
                }
                let mut copied: Vec<u8> = other.iter().copied().cycle().take(ring.len()).collect();
                let spans = written_spans(&ring);
                for span in spans.clone() {
                    copied[span.clone()].copy_from_slice(&ring[span]);
                }
                let table = SyscallTable::native();
                prop_assert_eq!(decode(&copied, &table), decode(&ring, &table));
                // And less than the whole is copied wherever the path or what follows is short.
                let written: usize = spans.iter().map(ExactSizeIterator::len).sum();
                let unwritten = (PATH_LEN - path_len)
                    + match kind {
                        kind::FD_SYSCALL_CHAIN => (MAX_CHAIN_FRAMES - (depth as usize).min(MAX_CHAIN_FRAMES)) * 8,
                        kind::FD_SYSCALL_USER_STACK => reserved - stack_len as usize,
                        _ => 0,
                    };
                if cut.is_none() {
                    prop_assert_eq!(written, ring.len() - unwritten);
                }
            }
        }
    }

    #[test]
    fn records_without_unwritten_parts_are_one_span() {
        let close = bytes_of(&CloseEvent { header: header(kind::CLOSE), fd: 3, flags: 0 });
        assert_eq!(written_spans(&close), [0..32, 32..32]);
        assert_eq!(written_spans(&close[..3]), [0..3, 3..3]);
    }

    #[test]
    fn openat_with_path_and_cloexec() {
        let record = with_path(
            syscall(Call::OpenAt, 5, [libc::AT_FDCWD as u64, 0, libc::O_CLOEXEC as u64, 0, 0, 0]),
            b"/etc/hosts",
        );
        let event = match decode(&bytes_of(&record), &SyscallTable::native()).unwrap() {
            Decoded::Event(e, _) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!((event.tgid, event.tid, event.ts_ns), (100, 101, 5_000));
        assert_eq!(event.stacks, StackIds { user: Some(7), creator: None, at_entry: false });
        assert_eq!(
            event.op,
            Op::Open {
                fds: smallvec::smallvec![5],
                kind: FdKind::File,
                detail: FdDetail::Path(b"/etc/hosts".to_vec().into_boxed_slice()),
                cloexec: true,
                dirfd: None,
            }
        );
    }

    #[test]
    fn a_path_the_kernel_cut_is_marked() {
        let mut record =
            with_path(syscall(Call::OpenAt, 5, [libc::AT_FDCWD as u64, 0, 0, 0, 0, 0]), b"/long/pre");
        record.flags |= syscall_flags::PATH_TRUNCATED;
        match op_of(&record) {
            Some(Op::Open { detail: FdDetail::Path(path), .. }) => {
                assert_eq!(&*path, "/long/pre…[truncated]".as_bytes())
            }
            other => panic!("{other:?}"),
        }
    }

    /// An unreadable path (unmapped by the call's exit) is no path, and no directory's either:
    /// one to read from /proc.
    #[test]
    fn a_path_the_kernel_could_not_read_is_unread() {
        let mut record = syscall(Call::OpenAt, 6, [3, 0, libc::O_CLOEXEC as u64, 0, 0, 0]);
        record.flags |= syscall_flags::PATH_UNREADABLE;
        match op_of(&record) {
            Some(Op::Open { detail, dirfd, kind, cloexec, .. }) => {
                assert_eq!((detail, dirfd, kind, cloexec), (FdDetail::Unread, None, FdKind::File, true))
            }
            other => panic!("{other:?}"),
        }
        let mut memfd = syscall(Call::MemfdCreate, 7, [0, libc::MFD_CLOEXEC as u64, 0, 0, 0, 0]);
        memfd.flags |= syscall_flags::PATH_UNREADABLE;
        match op_of(&memfd) {
            Some(Op::Open { detail, kind, .. }) => {
                assert_eq!((detail, kind), (FdDetail::Unread, FdKind::Memfd))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn relative_openat_keeps_its_dirfd() {
        let record = with_path(syscall(Call::OpenAt, 6, [3, 0, 0, 0, 0, 0]), b"child.txt");
        match op_of(&record) {
            Some(Op::Open { dirfd, .. }) => assert_eq!(dirfd, Some(3)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn socket_type_flags_are_split() {
        let sock_type = libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
        let record = syscall(Call::Socket, 4, [libc::AF_INET as u64, sock_type as u64, 6, 0, 0, 0]);
        match op_of(&record) {
            Some(Op::Open { kind, detail, cloexec, .. }) => {
                assert_eq!(kind, FdKind::Socket);
                assert!(cloexec);
                assert_eq!(
                    detail,
                    FdDetail::Socket { family: libc::AF_INET as u16, sock_type: 1, protocol: 6 }
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pipe2_yields_both_ends() {
        let mut record = syscall(Call::Pipe2, 0, [0x1000, libc::O_CLOEXEC as u64, 0, 0, 0, 0]);
        record.aux_fds[0] = 8;
        record.aux_fds[1] = 9;
        record.aux_count = 2;
        match op_of(&record) {
            Some(Op::Open { fds, kind: FdKind::Pipe, cloexec: true, .. }) => {
                assert_eq!(fds.as_slice(), [8, 9])
            }
            other => panic!("{other:?}"),
        }
        // A pair that could not be read gives nothing rather than invented descriptors.
        record.aux_count = 0;
        assert_eq!(op_of(&record), None);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn dup2_onto_itself_is_nothing() {
        assert_eq!(op_of(&syscall(Call::Dup2, 4, [4, 4, 0, 0, 0, 0])), None);
        assert_eq!(
            op_of(&syscall(Call::Dup2, 1, [4, 1, 0, 0, 0, 0])),
            Some(Op::Dup { old: 4, new: 1, cloexec: false, replaces: true })
        );
    }

    #[test]
    fn fcntl_commands() {
        let fcntl =
            |cmd: i32, arg: u64, ret: i64| op_of(&syscall(Call::Fcntl, ret, [3, cmd as u64, arg, 0, 0, 0]));
        assert_eq!(
            fcntl(libc::F_DUPFD_CLOEXEC, 10, 10),
            Some(Op::Dup { old: 3, new: 10, cloexec: true, replaces: false })
        );
        assert_eq!(
            fcntl(libc::F_SETFD, libc::FD_CLOEXEC as u64, 0),
            Some(Op::SetCloexec { fd: 3, cloexec: true })
        );
        assert_eq!(fcntl(libc::F_SETFD, 0, 0), Some(Op::SetCloexec { fd: 3, cloexec: false }));
        assert_eq!(fcntl(libc::F_GETFL, 0, 2), None);
    }

    #[test]
    fn signalfd4_on_existing_fd_is_nothing() {
        assert_eq!(op_of(&syscall(Call::Signalfd4, 5, [5, 0, 8, 0, 0, 0])), None);
        let created = op_of(&syscall(Call::Signalfd4, 6, [u64::MAX, 0, 8, libc::SFD_CLOEXEC as u64, 0, 0]));
        assert!(matches!(created, Some(Op::Open { kind: FdKind::Signalfd, cloexec: true, .. })));
    }

    #[test]
    fn scm_rights_and_empty_recvmsg() {
        let mut record = syscall(Call::RecvMsg, 1, [3, 0x2000, libc::MSG_CMSG_CLOEXEC as u64, 0, 0, 0]);
        assert_eq!(op_of(&record), None, "a recvmsg without descriptors changes nothing");
        record.aux_fds[..3].copy_from_slice(&[11, 12, 13]);
        record.aux_count = 3;
        assert_eq!(
            op_of(&record),
            Some(Op::Receive {
                socket: 3,
                fds: smallvec::smallvec![11, 12, 13],
                cloexec: true,
                truncated: false
            })
        );
    }

    /// recvmmsg's flags are its fourth argument; its third is the vector's length.
    #[test]
    fn recvmmsg_reads_its_flags_not_its_vector_length() {
        let cloexec = libc::MSG_CMSG_CLOEXEC as u64;
        for (vlen, flags, expected) in [(1, cloexec, true), (cloexec, 0, false)] {
            let mut record = syscall(Call::RecvMmsg, 1, [3, 0x2000, vlen, flags, 0, 0]);
            record.aux_fds[0] = 11;
            record.aux_count = 1;
            assert_eq!(
                op_of(&record),
                Some(Op::Receive {
                    socket: 3,
                    fds: smallvec::smallvec![11],
                    cloexec: expected,
                    truncated: false
                }),
                "vlen {vlen:#x}, flags {flags:#x}"
            );
        }
    }

    #[test]
    fn close_range_cloexec_only_marks() {
        assert_eq!(
            op_of(&syscall(Call::CloseRange, 0, [3, u32::MAX as u64, CLOSE_RANGE_CLOEXEC, 0, 0, 0])),
            Some(Op::CloseRange { first: 3, last: u32::MAX, cloexec_only: true })
        );
    }

    #[test]
    fn short_unknown_and_untraced_records_are_errors() {
        let table = SyscallTable::native();
        assert!(matches!(decode(&[0u8; 10], &table), Err(DecodeError::Short { .. })));
        let close = bytes_of(&CloseEvent { header: header(kind::CLOSE), fd: 3, flags: 0 });
        assert!(matches!(decode(&close[..28], &table), Err(DecodeError::Short { .. })));
        assert_eq!(decode(&bytes_of(&header(99)), &table), Err(DecodeError::UnknownKind { kind: 99 }));
        let mut record = syscall(Call::Socket, 3, [0; 6]);
        record.nr = 999;
        assert_eq!(decode(&bytes_of(&record), &table), Err(DecodeError::UnknownSyscall { nr: 999 }));
        let full = bytes_of(&record);
        assert!(matches!(decode(&full[..100], &table), Err(DecodeError::Short { .. })));
    }

    /// A close's record says whether its number was taken again by its exit; a number not
    /// read is taken as free (`Op::Close`'s doc says why).
    #[test]
    fn a_close_record_says_whether_its_number_was_taken_again() {
        let table = SyscallTable::native();
        for (flags, number_taken) in
            [(0, false), (close_flags::NUMBER_TAKEN, true), (close_flags::NUMBER_UNREAD, false)]
        {
            let close = bytes_of(&CloseEvent { header: header(kind::CLOSE), fd: 3, flags });
            let Ok(Decoded::Event(event, _)) = decode(&close, &table) else { panic!("{flags}") };
            assert_eq!(event.op, Op::Close { fd: 3, number_taken }, "{flags}");
        }
    }

    /// A `FD_SYSCALL_USER_STACK` record as the kernel program writes it.
    pub(crate) fn with_user_stack(mut record: SyscallEvent, sp: u64, stack: &[u8]) -> Vec<u8> {
        record.header.kind = kind::FD_SYSCALL_USER_STACK;
        record.stack_id = STACK_NOT_CAPTURED;
        let mut regs = [0u64; helios_trace_common::USER_REGS_WORDS];
        #[cfg(target_arch = "x86_64")]
        let fp = helios_trace_common::regs_x86_64::BP;
        #[cfg(target_arch = "aarch64")]
        let fp = helios_trace_common::regs_aarch64::FP;
        regs[fp] = 0xabcd;
        let header = UserStack { regs, stack_len: stack.len() as u32, flags: 0 };
        let mut bytes = bytes_of(&record);
        bytes.extend(bytes_of(&header));
        bytes.extend_from_slice(stack);
        let sp_word = if cfg!(target_arch = "aarch64") { 31 } else { 19 };
        let offset = size_of::<SyscallEvent>() + sp_word * 8;
        bytes[offset..offset + 8].copy_from_slice(&sp.to_le_bytes());
        bytes
    }

    #[test]
    fn user_stack_records() {
        let table = SyscallTable::native();
        let record =
            with_path(syscall(Call::OpenAt, 5, [libc::AT_FDCWD as u64, 0, 0, 0, 0, 0]), b"/etc/hosts");
        let bytes = with_user_stack(record, 0x7ffd_0000, &[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        match decode(&bytes, &table).unwrap() {
            Decoded::Event(event, RecordStack::Window(_)) => {
                assert!(matches!(event.op, Op::Open { .. }));
                assert_eq!(event.stacks, StackIds { user: None, creator: None, at_entry: false });
            }
            other => panic!("{other:?}"),
        }
        let sample = user_stack(&bytes).unwrap().unwrap();
        assert_eq!(sample.stack, [1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!((sample.regs.fp, sample.sp()), (0xabcd, 0x7ffd_0000));
        assert_eq!(user_stack(&bytes_of(&record)).unwrap(), None, "plain records carry no stack");
        // A window longer than the record, or a cut header, is an error, not a panic.
        let cut = &bytes[..bytes.len() - 1];
        assert!(matches!(user_stack(cut), Err(DecodeError::Short { what: "user stack window", .. })));
        assert!(matches!(decode(cut, &table), Err(DecodeError::Short { .. })));
        let headless = &bytes[..size_of::<SyscallEvent>() + 10];
        assert!(matches!(user_stack(headless), Err(DecodeError::Short { what: "user stack", .. })));
    }

    #[test]
    fn libuv_handle_records() {
        let table = SyscallTable::native();
        let record =
            |kind, handle, stack_id| HandleEvent { header: header(kind), handle, stack_id, reserved: 0 };
        let decoded = |bytes: &[u8]| match decode(bytes, &table) {
            Ok(Decoded::Handle(record, stack)) => (record, matches!(stack, RecordStack::Window(_))),
            other => panic!("{other:?}"),
        };
        let (created, window) = decoded(&bytes_of(&record(kind::LIBUV_TCP_HANDLE, 0x55aa_0000, 12)));
        assert_eq!(
            (created.step, created.handle, created.stack_id, created.tid, window),
            (HandleStep::Created, 0x55aa_0000, Some(12), 101, false)
        );
        let (connecting, _) =
            decoded(&bytes_of(&record(kind::LIBUV_TCP_CONNECT, 0x55aa_0000, STACK_NOT_CAPTURED)));
        assert_eq!((connecting.step, connecting.stack_id), (HandleStep::Connecting, None));
        let (connected, _) =
            decoded(&bytes_of(&record(kind::LIBUV_TCP_CONNECT_RETURN, 0, STACK_NOT_CAPTURED)));
        assert_eq!(connected.step, HandleStep::Connected);
        // With its stack window (`--stacks dwarf`), after the 40-byte HandleEvent.
        let mut bytes = bytes_of(&record(kind::LIBUV_TCP_HANDLE_USER_STACK, 0x55aa_0000, STACK_NOT_CAPTURED));
        let flags = helios_trace_common::user_stack_flags::AT_ENTRY;
        bytes.extend(bytes_of(&UserStack {
            regs: [0; helios_trace_common::USER_REGS_WORDS],
            stack_len: 3,
            flags,
        }));
        bytes.extend_from_slice(&[7, 8, 9]);
        match decode(&bytes, &table).unwrap() {
            Decoded::Handle(record, RecordStack::Window(sample)) => {
                assert_eq!(
                    (record.step, sample.stack, sample.flags),
                    (HandleStep::Created, &[7u8, 8, 9][..], flags)
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(decode(&bytes[..bytes.len() - 1], &table), Err(DecodeError::Short { .. })));
        assert!(matches!(
            decode(&bytes[..30], &table),
            Err(DecodeError::Short { what: "handle record", .. })
        ));
    }

    #[test]
    fn process_records() {
        let table = SyscallTable::native();
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"bash");
        let task = NewTaskEvent {
            header: header(kind::NEW_TASK),
            child_tid: 200,
            reserved: 0,
            clone_flags: libc::CLONE_THREAD as u64 | libc::CLONE_VM as u64,
            comm,
        };
        match decode(&bytes_of(&task), &table).unwrap() {
            Decoded::Event(Event { op: Op::NewTask { child: 200, thread: true, comm }, .. }, _) => {
                assert_eq!(comm, "bash")
            }
            other => panic!("{other:?}"),
        }
        let mut exec = ExecEvent {
            header: header(kind::EXEC),
            old_tid: 101,
            filename_len: 9,
            comm,
            filename: [0; helios_trace_common::EXEC_FILENAME_LEN],
        };
        exec.filename[..9].copy_from_slice(b"/bin/bash");
        match decode(&bytes_of(&exec), &table).unwrap() {
            Decoded::Event(Event { op: Op::Exec { old_tid: 101, filename, .. }, .. }, _) => {
                assert_eq!(filename, b"/bin/bash")
            }
            other => panic!("{other:?}"),
        }
        // A length field larger than the buffer is clamped, not trusted.
        exec.filename_len = 100_000;
        assert!(decode(&bytes_of(&exec), &table).is_ok());
    }
}
