//! Every syscall that creates, duplicates, passes, re-flags or closes descriptors, with its
//! native number on this architecture and what the kernel programs must capture for it.
//!
//! The kernel programs are generic (helios-trace-ebpf/src/syscalls.rs); this table is where the
//! architecture's numbering and each call's argument layout live. Calls that only exist on
//! some architectures (x86_64 keeps open, creat, pipe, dup2 ...; aarch64 has only the *at and
//! *2 forms) have no number elsewhere and are simply not attached there.
use helios_trace_common::spec;

/// The calls we understand. `close` is absent: it has its own, cheaper program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Call {
    Open,
    Creat,
    OpenAt,
    OpenAt2,
    OpenByHandleAt,
    Socket,
    SocketPair,
    Accept,
    Accept4,
    Pipe,
    Pipe2,
    Dup,
    Dup2,
    Dup3,
    Fcntl,
    Ioctl,
    EventFd,
    EventFd2,
    EpollCreate,
    EpollCreate1,
    TimerfdCreate,
    Signalfd,
    Signalfd4,
    InotifyInit,
    InotifyInit1,
    FanotifyInit,
    MemfdCreate,
    PidfdOpen,
    PidfdGetfd,
    Userfaultfd,
    PerfEventOpen,
    IoUringSetup,
    RecvMsg,
    RecvMmsg,
    CloseRange,
}

impl Call {
    pub(crate) const ALL: [Call; 35] = [
        Call::Open,
        Call::Creat,
        Call::OpenAt,
        Call::OpenAt2,
        Call::OpenByHandleAt,
        Call::Socket,
        Call::SocketPair,
        Call::Accept,
        Call::Accept4,
        Call::Pipe,
        Call::Pipe2,
        Call::Dup,
        Call::Dup2,
        Call::Dup3,
        Call::Fcntl,
        Call::Ioctl,
        Call::EventFd,
        Call::EventFd2,
        Call::EpollCreate,
        Call::EpollCreate1,
        Call::TimerfdCreate,
        Call::Signalfd,
        Call::Signalfd4,
        Call::InotifyInit,
        Call::InotifyInit1,
        Call::FanotifyInit,
        Call::MemfdCreate,
        Call::PidfdOpen,
        Call::PidfdGetfd,
        Call::Userfaultfd,
        Call::PerfEventOpen,
        Call::IoUringSetup,
        Call::RecvMsg,
        Call::RecvMmsg,
        Call::CloseRange,
    ];

    /// The syscall's name as in the tracepoint names `syscalls/sys_{enter,exit}_<name>`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Call::Open => "open",
            Call::Creat => "creat",
            Call::OpenAt => "openat",
            Call::OpenAt2 => "openat2",
            Call::OpenByHandleAt => "open_by_handle_at",
            Call::Socket => "socket",
            Call::SocketPair => "socketpair",
            Call::Accept => "accept",
            Call::Accept4 => "accept4",
            Call::Pipe => "pipe",
            Call::Pipe2 => "pipe2",
            Call::Dup => "dup",
            Call::Dup2 => "dup2",
            Call::Dup3 => "dup3",
            Call::Fcntl => "fcntl",
            Call::Ioctl => "ioctl",
            Call::EventFd => "eventfd",
            Call::EventFd2 => "eventfd2",
            Call::EpollCreate => "epoll_create",
            Call::EpollCreate1 => "epoll_create1",
            Call::TimerfdCreate => "timerfd_create",
            Call::Signalfd => "signalfd",
            Call::Signalfd4 => "signalfd4",
            Call::InotifyInit => "inotify_init",
            Call::InotifyInit1 => "inotify_init1",
            Call::FanotifyInit => "fanotify_init",
            Call::MemfdCreate => "memfd_create",
            Call::PidfdOpen => "pidfd_open",
            Call::PidfdGetfd => "pidfd_getfd",
            Call::Userfaultfd => "userfaultfd",
            Call::PerfEventOpen => "perf_event_open",
            Call::IoUringSetup => "io_uring_setup",
            Call::RecvMsg => "recvmsg",
            Call::RecvMmsg => "recvmmsg",
            Call::CloseRange => "close_range",
        }
    }

    /// The native syscall number on the architecture this binary was built for.
    pub(crate) fn number(self) -> Option<u32> {
        let nr: libc::c_long = match self {
            #[cfg(target_arch = "x86_64")]
            Call::Open => libc::SYS_open,
            #[cfg(target_arch = "x86_64")]
            Call::Creat => libc::SYS_creat,
            Call::OpenAt => libc::SYS_openat,
            Call::OpenAt2 => libc::SYS_openat2,
            Call::OpenByHandleAt => libc::SYS_open_by_handle_at,
            Call::Socket => libc::SYS_socket,
            Call::SocketPair => libc::SYS_socketpair,
            Call::Accept => libc::SYS_accept,
            Call::Accept4 => libc::SYS_accept4,
            #[cfg(target_arch = "x86_64")]
            Call::Pipe => libc::SYS_pipe,
            Call::Pipe2 => libc::SYS_pipe2,
            Call::Dup => libc::SYS_dup,
            #[cfg(target_arch = "x86_64")]
            Call::Dup2 => libc::SYS_dup2,
            Call::Dup3 => libc::SYS_dup3,
            Call::Fcntl => libc::SYS_fcntl,
            Call::Ioctl => libc::SYS_ioctl,
            #[cfg(target_arch = "x86_64")]
            Call::EventFd => libc::SYS_eventfd,
            Call::EventFd2 => libc::SYS_eventfd2,
            #[cfg(target_arch = "x86_64")]
            Call::EpollCreate => libc::SYS_epoll_create,
            Call::EpollCreate1 => libc::SYS_epoll_create1,
            Call::TimerfdCreate => libc::SYS_timerfd_create,
            #[cfg(target_arch = "x86_64")]
            Call::Signalfd => libc::SYS_signalfd,
            Call::Signalfd4 => libc::SYS_signalfd4,
            #[cfg(target_arch = "x86_64")]
            Call::InotifyInit => libc::SYS_inotify_init,
            Call::InotifyInit1 => libc::SYS_inotify_init1,
            Call::FanotifyInit => libc::SYS_fanotify_init,
            Call::MemfdCreate => libc::SYS_memfd_create,
            Call::PidfdOpen => libc::SYS_pidfd_open,
            Call::PidfdGetfd => libc::SYS_pidfd_getfd,
            Call::Userfaultfd => libc::SYS_userfaultfd,
            Call::PerfEventOpen => libc::SYS_perf_event_open,
            Call::IoUringSetup => libc::SYS_io_uring_setup,
            Call::RecvMsg => libc::SYS_recvmsg,
            Call::RecvMmsg => libc::SYS_recvmmsg,
            Call::CloseRange => libc::SYS_close_range,
            #[allow(unreachable_patterns)]
            _ => return None,
        };
        u32::try_from(nr).ok()
    }

    /// What the kernel programs capture for this call (helios_trace_common::spec).
    pub(crate) fn spec(self) -> u32 {
        use spec::*;
        let creates = TRACED | STACK;
        // One new descriptor, the call's result, whose record may be kept in the kernel and
        // matched there with its close (helios-trace-ebpf/src/pairs.rs): not a pair, not
        // received descriptors, not a copy of another's (dup, pidfd_getfd), not signalfd, which
        // may return the descriptor it was given.
        let one = creates | PAIRABLE;
        // What a path or handle names is known by the installed file's mode.
        let opens = one | INODE_MODE;
        match self {
            Call::Open | Call::Creat => opens | with_arg(PATH_ARG_SHIFT, 0),
            Call::OpenAt => opens | with_arg(PATH_ARG_SHIFT, 1),
            // open_how.flags is the first u64 of struct open_how (include/uapi/linux/openat2.h).
            Call::OpenAt2 => opens | with_arg(PATH_ARG_SHIFT, 1) | with_arg(DEREF_ARG_SHIFT, 2),
            Call::OpenByHandleAt => opens,
            Call::MemfdCreate => one | with_arg(PATH_ARG_SHIFT, 0),
            Call::Pipe | Call::Pipe2 => creates | with_arg(FD_PAIR_ARG_SHIFT, 0),
            Call::SocketPair => creates | with_arg(FD_PAIR_ARG_SHIFT, 3),
            Call::Fcntl => creates | FCNTL_FILTER,
            Call::Ioctl => TRACED | IOCTL_FILTER,
            Call::RecvMsg => creates | MSGHDR,
            Call::RecvMmsg => creates | MMSGHDR,
            Call::CloseRange => TRACED,
            Call::Dup | Call::Dup2 | Call::Dup3 | Call::PidfdGetfd | Call::Signalfd | Call::Signalfd4 => {
                creates
            }
            Call::Socket
            | Call::Accept
            | Call::Accept4
            | Call::EventFd
            | Call::EventFd2
            | Call::EpollCreate
            | Call::EpollCreate1
            | Call::TimerfdCreate
            | Call::InotifyInit
            | Call::InotifyInit1
            | Call::FanotifyInit
            | Call::PidfdOpen
            | Call::Userfaultfd
            | Call::PerfEventOpen
            | Call::IoUringSetup => one,
        }
    }

    #[cfg(test)]
    pub(crate) fn by_number(nr: u32) -> Option<Call> {
        Call::ALL.iter().copied().find(|call| call.number() == Some(nr))
    }
}

/// Native number → call, built once: the decoder looks calls up per event.
pub(crate) struct SyscallTable {
    by_nr: Vec<Option<Call>>,
}

impl SyscallTable {
    pub(crate) fn native() -> SyscallTable {
        let size = helios_trace_common::MAX_SYSCALL_NR as usize;
        let mut by_nr = vec![None; size];
        for call in Call::ALL {
            if let Some(nr) = call.number() {
                by_nr[nr as usize] = Some(call);
            }
        }
        SyscallTable { by_nr }
    }

    pub(crate) fn call(&self, nr: u32) -> Option<Call> {
        self.by_nr.get(nr as usize).copied().flatten()
    }

    /// (number, spec) pairs for the kernel's SYSCALL_SPECS array.
    pub(crate) fn specs(&self) -> impl Iterator<Item = (u32, Call, u32)> + '_ {
        self.by_nr.iter().enumerate().filter_map(|(nr, call)| call.map(|c| (nr as u32, c, c.spec())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel test `lifecycle::every_call_issued_raw_*` issues each call of rawcalls.c's
    /// `CALLS` table by its own number; a call added here without a command there would be a
    /// decode arm no real syscall reaches.
    #[test]
    fn every_call_in_the_table_has_a_raw_workload_command() {
        let source = include_str!("../../tests/workloads/rawcalls.c");
        let table = source.split("CALLS[] = {").nth(1).and_then(|t| t.split("};").next()).unwrap();
        let commands: Vec<&str> = table.split("{\"").skip(1).filter_map(|c| c.split('"').next()).collect();
        let names: Vec<&str> = Call::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(commands, names, "rawcalls.c's CALLS, in the table's order");
    }

    #[test]
    fn numbers_are_unique_and_fit_the_spec_array() {
        let mut seen = std::collections::HashSet::new();
        for call in Call::ALL {
            if let Some(nr) = call.number() {
                assert!(nr < helios_trace_common::MAX_SYSCALL_NR, "{call:?}");
                assert!(seen.insert(nr), "{call:?} shares a number");
                assert_eq!(Call::by_number(nr), Some(call));
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x86_64_numbers() {
        // arch/x86/entry/syscalls/syscall_64.tbl
        assert_eq!(Call::Open.number(), Some(2));
        assert_eq!(Call::OpenAt.number(), Some(257));
        assert_eq!(Call::Socket.number(), Some(41));
        assert_eq!(Call::Accept4.number(), Some(288));
        assert_eq!(Call::CloseRange.number(), Some(436));
    }

    #[test]
    fn specs_name_the_right_arguments() {
        use spec::*;
        assert_eq!(arg_at(Call::OpenAt.spec(), PATH_ARG_SHIFT), Some(1));
        assert_eq!(arg_at(Call::OpenAt2.spec(), DEREF_ARG_SHIFT), Some(2));
        assert_eq!(arg_at(Call::SocketPair.spec(), FD_PAIR_ARG_SHIFT), Some(3));
        assert_eq!(arg_at(Call::Socket.spec(), PATH_ARG_SHIFT), None);
        assert_ne!(Call::Accept.spec() & STACK, 0);
        assert_eq!(Call::CloseRange.spec() & STACK, 0);
        assert_eq!(Call::Ioctl.spec() & STACK, 0);
    }

    #[test]
    fn table_round_trips() {
        let table = SyscallTable::native();
        for (nr, call, spec) in table.specs() {
            assert_eq!(table.call(nr), Some(call));
            assert_ne!(spec & spec::TRACED, 0);
        }
        assert_eq!(table.call(u32::MAX), None);
    }
}
