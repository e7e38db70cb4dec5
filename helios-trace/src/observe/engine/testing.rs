//! The engine fed synthetic events, for the engine's own tests and the exporter's
//! (observe/export.rs): the real engine, pure with a procfs root of its own (holding the
//! server's memory map, so that its stacks resolve to module + offset), every stack id its own
//! call site, time moving a microsecond per event.
use std::{collections::HashMap, path::Path};

use smallvec::smallvec;

use super::{Engine, ProcSource, StackSource};
use crate::{
    model::{
        event::{Event, Op, StackIds},
        fd::{FdDetail, FdKind, SiteId},
        fdtable::TableLimits,
    },
    observe::procfs::Procfs,
};

pub(crate) const SEC: u64 = 1_000_000_000;
/// The server: found at start, parent of the jobs.
pub(crate) const PARENT: u32 = 100;

/// Every stack id is its own call site: one frame at an address of its own.
pub(crate) struct DistinctStacks;
impl StackSource for DistinctStacks {
    fn read_stack(&self, stack_id: u32) -> Option<Vec<u64>> {
        Some(vec![0x40_0000 + u64::from(stack_id) * 16])
    }

    fn exec_time(&self, _tgid: u32) -> u64 {
        0
    }
}

pub(crate) struct Feed {
    pub(crate) engine: Engine,
    /// CLOCK_BOOTTIME ns of the last event.
    pub(crate) now: u64,
    next_fd: HashMap<u32, i32>,
    /// Holds the procfs root while the engine reads it.
    _root: tempfile::TempDir,
}

impl Feed {
    /// The engine asking the procfs root what /proc knows, keeping its transitions (as the
    /// exporter has it).
    pub(crate) fn new() -> Feed {
        Feed::with_proc(|root| Box::new(Procfs::new(root)))
    }

    /// The engine asking `proc` what /proc knows (given the procfs root).
    pub(crate) fn with_proc(proc: impl FnOnce(&Path) -> Box<dyn ProcSource>) -> Feed {
        let root = tempfile::tempdir().unwrap();
        // The server's memory map, so its stacks resolve to module + offset (call sites
        // of a process whose maps are unknown are bounded as unresolved).
        let maps = root.path().join(PARENT.to_string());
        std::fs::create_dir_all(&maps).unwrap();
        std::fs::write(maps.join("maps"), "00400000-7fffffff r-xp 00000000 fd:01 1234 /srv/app/bin/server\n")
            .unwrap();
        let mut engine = Engine::new(root.path(), proc(root.path()), TableLimits::default());
        engine.keep_transitions();
        Feed { engine, now: SEC, next_fd: HashMap::new(), _root: root }
    }

    /// A process found at start with nothing open: what the baseline does.
    pub(crate) fn found(&mut self, tgid: u32, comm: &str) {
        let mut out = Vec::new();
        self.engine.table.insert_observed(tgid, comm, [], SiteId::BeforeTrace, self.now, &mut out);
    }

    pub(crate) fn event(&mut self, tgid: u32, op: Op, stack: Option<i32>) {
        self.now += 1000;
        let mut event = Event {
            tgid,
            tid: tgid,
            ts_ns: self.now,
            stacks: StackIds { user: stack, creator: None, at_entry: false },
            op,
        };
        self.engine.handle_event(&mut event, None, &DistinctStacks);
    }

    /// Open `n` files from call site `stack`; their fds.
    pub(crate) fn open(&mut self, tgid: u32, kind: FdKind, stack: i32, n: usize) -> Vec<i32> {
        (0..n)
            .map(|_| {
                let next = self.next_fd.entry(tgid).or_insert(3);
                let fd = *next;
                *next += 1;
                let op = Op::Open {
                    fds: smallvec![fd],
                    kind,
                    detail: FdDetail::None,
                    cloexec: false,
                    dirfd: None,
                };
                self.event(tgid, op, Some(stack));
                fd
            })
            .collect()
    }

    pub(crate) fn close(&mut self, tgid: u32, fd: i32) {
        self.event(tgid, Op::Close { fd, number_taken: false }, None);
    }

    /// PARENT forks `child`, which execs as `comm`, opens a file at `open_from` and exits.
    pub(crate) fn fork_exec_exit(&mut self, child: u32, comm: &str, open_from: Option<i32>) {
        self.event(PARENT, Op::NewTask { child, thread: false, comm: "server".into() }, None);
        self.event(
            child,
            Op::Exec { old_tid: child, filename: b"/bin/job".to_vec(), comm: comm.into() },
            None,
        );
        if let Some(stack) = open_from {
            self.open(child, FdKind::File, stack, 1);
        }
        self.event(child, Op::Exit, None);
        self.next_fd.remove(&child);
    }
}

/// A `kind::FD_SYSCALL_CHAIN` record of PARENT's thread `tid` at `ts_ns`: socket(AF_INET,
/// SOCK_STREAM) that returned `fd`, its chain in the server, with what the kernel kept of
/// it (helios-trace-ebpf/src/pairs.rs): `pairs` matched before it, `pairs_only` when its own
/// open was closed too.
pub(crate) fn kept_socket(tid: u32, ts_ns: u64, fd: i64, pairs: u32, pairs_only: bool) -> Vec<u8> {
    kept_socket_at(tid, ts_ns, fd, pairs, pairs_only, None)
}

/// `kept_socket`, its pairs all at number `at` when told (`chain_flags::PAIRS_AT_ONE_FD`).
pub(crate) fn kept_socket_at(
    tid: u32,
    ts_ns: u64,
    fd: i64,
    pairs: u32,
    pairs_only: bool,
    at: Option<i32>,
) -> Vec<u8> {
    use helios_trace_common::{
        ChainRecord, EventHeader, LearnedChain, MAX_CHAIN_FRAMES, STACK_NOT_CAPTURED, chain_flags, kind,
    };
    use zerocopy::IntoBytes as _;

    use crate::sys::{decode::tests::syscall, syscalls::Call};
    let mut chain = LearnedChain { depth: 2, flags: 0, addresses: [0; MAX_CHAIN_FRAMES] };
    chain.addresses[..2].copy_from_slice(&[0x40_1000, 0x40_2000]);
    if pairs > 0 {
        chain.flags |= chain_flags::PAIRED;
    }
    if pairs_only {
        chain.flags |= chain_flags::PAIRS_ONLY;
    }
    if at.is_some() {
        chain.flags |= chain_flags::PAIRS_AT_ONE_FD;
    }
    let mut event = syscall(Call::Socket, fd, [libc::AF_INET as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0]);
    event.aux_fds[0] = at.unwrap_or(0);
    event.header = EventHeader { kind: kind::FD_SYSCALL_CHAIN, tgid: PARENT, tid, reserved: pairs, ts_ns };
    event.stack_id = STACK_NOT_CAPTURED;
    ChainRecord { event, chain }.as_bytes().to_vec()
}
