//! /proc as the engine and the outputs are handed it (ARCHITECTURE.md, "Data flow" 7-8): the
//! engine's [`ProcSource`] read from a procfs root, and what a report says of open descriptors
//! that only /proc and sock_diag know (paths, socket addresses, TCP states, socket memory,
//! memfd sizes), with `--redact-paths` applied.
use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
};

use crate::{
    model::{
        fd::{FdDetail, FdKind, printable},
        fdtable::{ObservedFd, OpenFd},
    },
    observe::engine::{OpenFds, ProcSource},
    output::report::build::FdFacts,
    sys::{
        proc::{self, sockets::SocketTables},
        sockdiag,
    },
};

/// The engine's view of /proc, read under a procfs root.
pub(crate) struct Procfs {
    root: PathBuf,
}

impl Procfs {
    pub(crate) fn new(root: &Path) -> Procfs {
        Procfs { root: root.to_path_buf() }
    }
}

impl ProcSource for Procfs {
    fn open_fds(&mut self, tgid: u32) -> io::Result<OpenFds> {
        proc::fds::observe_fds(&self.root, tgid, None)
    }

    fn baseline(&self) -> Box<dyn FnMut(u32) -> io::Result<OpenFds>> {
        let root = self.root.clone();
        let mut sockets = SocketTables::new(&root);
        Box::new(move |tgid| proc::fds::observe_fds(&root, tgid, Some(sockets.for_process(tgid))))
    }

    fn open_fd(&mut self, tgid: u32, fd: i32) -> Option<ObservedFd> {
        proc::fds::observe_fd(&self.root, tgid, fd, None)
    }

    fn exists(&mut self, tgid: u32) -> bool {
        proc::exists(&self.root, tgid)
    }

    fn comm(&mut self, tgid: u32) -> Option<String> {
        proc::comm(&self.root, tgid)
    }

    fn cmdline(&mut self, tgid: u32) -> Option<String> {
        proc::cmdline(&self.root, tgid)
    }
}

/// Open sockets joined with the socket tables of their network namespace, and with their
/// memory from sock_diag, by inode.
pub(super) struct SocketJoin<'a> {
    proc_root: &'a Path,
    tables: SocketTables,
    known: HashMap<(u32, i32, u64), u64>,
    pub(super) seen: HashMap<(u32, i32, u64), u64>,
    /// Socket memory by inode: dumped once per report, on the first socket asked about.
    memory: Option<HashMap<u64, sockdiag::SocketMemory>>,
    /// `--redact-paths`: file paths and memfd names are not shown.
    redact_paths: bool,
}

impl<'a> SocketJoin<'a> {
    /// `known`: socket inodes cached by the last join (`seen` of it).
    pub(super) fn new(
        proc_root: &'a Path,
        known: HashMap<(u32, i32, u64), u64>,
        redact_paths: bool,
    ) -> SocketJoin<'a> {
        SocketJoin {
            proc_root,
            tables: SocketTables::new(proc_root),
            known,
            seen: HashMap::new(),
            memory: None,
            redact_paths,
        }
    }

    fn inode(&mut self, tgid: u32, fd: i32, entry: &OpenFd) -> Option<u64> {
        // The descriptor's open time tells a reused fd number from the socket we cached.
        let key = (tgid, fd, entry.opened_ns);
        let inode = match self.known.get(&key).or_else(|| self.seen.get(&key)) {
            Some(inode) => *inode,
            None => proc::fds::socket_inode(self.proc_root, tgid, fd)?,
        };
        self.seen.insert(key, inode);
        Some(inode)
    }

    pub(super) fn socket_memory(&mut self, tgid: u32, fd: i32, entry: &OpenFd) -> Option<u64> {
        let inode = self.inode(tgid, fd, entry)?;
        let memory = self.memory.get_or_insert_with(|| {
            sockdiag::dump()
                .inspect_err(|e| log::warn!("socket memory (sock_diag) unavailable: {e}"))
                .unwrap_or_default()
        });
        memory.get(&inode).map(|m| m.buffer_bytes())
    }

    fn socket(&mut self, tgid: u32, fd: i32, entry: &OpenFd) -> Option<&proc::sockets::SocketInfo> {
        if entry.kind != FdKind::Socket {
            return None;
        }
        let inode = self.inode(tgid, fd, entry)?;
        self.tables.for_process(tgid).get(inode)
    }

    pub(super) fn describe(&mut self, tgid: u32, fd: i32, entry: &OpenFd) -> Option<String> {
        if self.redact_paths && matches!(entry.detail, FdDetail::Path(_) | FdDetail::Name(_)) {
            return Some(crate::output::redact::REDACTED.to_string());
        }
        describe_fd(self.proc_root, &mut self.tables, tgid, fd, entry)
    }

    pub(super) fn facts(&mut self, tgid: u32, fd: i32, entry: &OpenFd) -> FdFacts {
        match entry.kind {
            FdKind::Socket => {
                let tcp_state = self.socket(tgid, fd, entry).and_then(|s| s.state.clone());
                let socket_memory = self.socket_memory(tgid, fd, entry);
                FdFacts { tcp_state, socket_memory, pinned_bytes: None }
            }
            FdKind::Memfd => FdFacts {
                pinned_bytes: proc::fds::allocated_bytes(self.proc_root, tgid, fd),
                ..FdFacts::default()
            },
            _ => FdFacts::default(),
        }
    }
}

/// Longest path or name shown for one descriptor.
const DETAIL_CHARS: usize = 512;

/// What a person wants to see of one open descriptor: its path, or its socket's addresses.
pub(crate) fn describe_fd(
    proc_root: &Path,
    sockets: &mut SocketTables,
    tgid: u32,
    fd: i32,
    entry: &OpenFd,
) -> Option<String> {
    match &entry.detail {
        FdDetail::Path(path) => Some(printable(path, DETAIL_CHARS)),
        FdDetail::Name(name) => Some(format!("memfd:{}", printable(name, DETAIL_CHARS))),
        FdDetail::Pid(pid) => Some(format!("pid {pid}")),
        FdDetail::Socket { .. } | FdDetail::None if entry.kind == FdKind::Socket => {
            let inode = proc::fds::socket_inode(proc_root, tgid, fd)?;
            sockets.for_process(tgid).get(inode).map(|s| s.describe())
        }
        _ => None,
    }
}
