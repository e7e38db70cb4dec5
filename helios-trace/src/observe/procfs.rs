//! /proc as the engine and the outputs are handed it (ARCHITECTURE.md, "Data flow" 7-8): the
//! engine's [`ProcSource`] read from a procfs root, and what a report says of open descriptors
//! that only /proc and sock_diag know (paths, socket addresses, TCP states, socket memory,
//! memfd sizes), with `--redact-paths` applied.
use std::{
    collections::HashMap,
    io,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

use crate::{
    model::{
        fd::{FdDetail, FdKind, printable},
        fdtable::{FdChunk, ObservedFd, OpenFd},
    },
    observe::engine::{BaselineReader, ProcSource},
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
    fn open_fds(
        &mut self,
        tgid: u32,
        from: i32,
        max: usize,
        flag_wanted: &dyn Fn(i32) -> bool,
    ) -> io::Result<FdChunk> {
        proc::fds::observe_fds(&self.root, tgid, None, (from, max), flag_wanted)
    }

    fn baseline(&self) -> Box<BaselineReader> {
        let root = self.root.clone();
        let mut sockets = SocketTables::new(&root);
        Box::new(move |tgid, from, max| {
            let sockets = Some(sockets.for_process(tgid));
            proc::fds::observe_fds(&root, tgid, sockets, (from, max), &|_| true)
        })
    }

    fn open_fd(&mut self, tgid: u32, fd: i32) -> Option<ObservedFd> {
        proc::fds::observe_fd(&self.root, tgid, fd, None)
    }

    fn exists(&mut self, tgid: u32) -> bool {
        proc::exists(&self.root, tgid)
    }

    fn alive(&mut self, tgid: u32) -> bool {
        proc::alive(&self.root, tgid)
    }

    fn comm(&mut self, tgid: u32) -> Option<String> {
        proc::comm(&self.root, tgid)
    }

    fn cmdline(&mut self, tgid: u32) -> Option<String> {
        proc::cmdline(&self.root, tgid)
    }
}

/// Up to this many sockets are measured one by one (sys/sockdiag.rs `socket_memory`: five
/// system calls, about 2 µs a socket here), more in one sock_diag dump of the tracer's network
/// namespace. A dump costs what the namespace holds, not what is asked: the kernel walks every
/// bucket of its TCP hash for IPv4 and again for IPv6 (net/ipv4/inet_diag.c
/// `inet_diag_dump_icsk`), 262,144 of them on this machine of 24 GiB (the table grows with the
/// node's memory: `alloc_large_system_hash` in `tcp_init`), 7 ms a dump here. `serve` measures
/// every open socket once a second: a dump a second was 70% of its CPU on an idle node.
const ONE_BY_ONE_UP_TO: usize = 2_048;

/// Open sockets joined with the socket tables of their network namespace, and with their
/// memory from sock_diag, by inode.
pub(super) struct SocketJoin<'a> {
    proc_root: &'a Path,
    tables: SocketTables,
    known: HashMap<(u32, i32, u64), u64>,
    pub(super) seen: HashMap<(u32, i32, u64), u64>,
    /// Few sockets to measure (`ONE_BY_ONE_UP_TO`): each on its own first, the dump only for
    /// one that cannot be (its process does not allow the duplicate).
    one_by_one: bool,
    /// Socket memory of the tracer's network namespace by inode: dumped once per report, on
    /// the first socket asked about that needs it.
    memory: Option<HashMap<u64, sockdiag::SocketMemory>>,
    /// Processes whose sockets are measured one by one (few sockets, or not in the dump: another
    /// network namespace's): a pidfd each (sys/sockdiag.rs), or why there is none.
    pidfds: HashMap<u32, Result<OwnedFd, String>>,
    /// `--redact-paths`: file paths and memfd names are not shown.
    redact_paths: bool,
}

impl<'a> SocketJoin<'a> {
    /// `known`: socket inodes cached by the last join (`seen` of it); `sockets`: how many open
    /// sockets the caller may ask about, which decides how their memory is measured.
    pub(super) fn new(
        proc_root: &'a Path,
        known: HashMap<(u32, i32, u64), u64>,
        sockets: usize,
        redact_paths: bool,
    ) -> SocketJoin<'a> {
        SocketJoin {
            proc_root,
            tables: SocketTables::new(proc_root),
            known,
            seen: HashMap::new(),
            one_by_one: sockets <= ONE_BY_ONE_UP_TO,
            memory: None,
            pidfds: HashMap::new(),
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

    /// The kernel memory of an open socket: `Ok(None)` when it is no longer open, `Err` with
    /// why when it could not be had. Few sockets are measured each on its own; many, those of
    /// the tracer's own network namespace in one sock_diag dump, and a socket not in it (a
    /// pod's) on its own.
    pub(super) fn socket_memory(
        &mut self,
        tgid: u32,
        fd: i32,
        entry: &OpenFd,
    ) -> Result<Option<u64>, String> {
        let Some(inode) = self.inode(tgid, fd, entry) else { return Ok(None) };
        let alone = if self.one_by_one {
            match self.alone(tgid, fd, inode) {
                Ok(bytes) => return Ok(bytes),
                Err(why) => Some(why),
            }
        } else {
            None
        };
        let memory = self.memory.get_or_insert_with(|| {
            sockdiag::dump()
                .inspect_err(|e| log::warn!("socket memory (sock_diag) unavailable: {e}"))
                .unwrap_or_default()
        });
        if let Some(m) = memory.get(&inode) {
            return Ok(Some(m.buffer_bytes()));
        }
        match alone {
            Some(why) => Err(why),
            None => self.alone(tgid, fd, inode),
        }
    }

    /// One socket measured through a duplicate of its descriptor (sys/sockdiag.rs), whatever
    /// network namespace it is in: `Ok(None)` when the descriptor is no longer that socket.
    fn alone(&mut self, tgid: u32, fd: i32, inode: u64) -> Result<Option<u64>, String> {
        let proc_root = self.proc_root;
        let pidfd = self.pidfds.entry(tgid).or_insert_with(|| {
            proc::pidfd(tgid).map_err(|e| match e.raw_os_error() {
                Some(libc::ESRCH) => String::new(),
                _ => format!("no pidfd of the process (pidfd_open: {e})"),
            })
        });
        let pidfd = match pidfd {
            Ok(pidfd) => pidfd,
            // The process is gone, and its sockets with it.
            Err(why) if why.is_empty() => return Ok(None),
            Err(why) => return Err(why.clone()),
        };
        match sockdiag::socket_memory(pidfd, fd, inode) {
            Ok(m) => Ok(Some(m.buffer_bytes())),
            Err(sockdiag::SocketMemoryError::Gone) => Ok(None),
            Err(e) => Err(format!("{}: {e}", network_namespace(proc_root, tgid))),
        }
    }

    fn socket(&mut self, tgid: u32, fd: i32, entry: &OpenFd) -> Option<&proc::sockets::SocketInfo> {
        if entry.kind != FdKind::Socket {
            return None;
        }
        let inode = self.inode(tgid, fd, entry)?;
        self.tables.for_process(tgid).get(inode)
    }

    pub(super) fn describe(&mut self, tgid: u32, fd: i32, entry: &OpenFd) -> Option<String> {
        let named = matches!(entry.detail, FdDetail::Path(_) | FdDetail::Name(_) | FdDetail::Unread);
        if self.redact_paths && named {
            return Some(crate::output::redact::REDACTED.to_string());
        }
        describe_fd(self.proc_root, &mut self.tables, tgid, fd, entry)
    }

    pub(super) fn facts(&mut self, tgid: u32, fd: i32, entry: &OpenFd) -> FdFacts {
        match entry.kind {
            FdKind::Socket => {
                let tcp_state = self.socket(tgid, fd, entry).and_then(|s| s.state.clone());
                let (socket_memory, socket_memory_unavailable) = match self.socket_memory(tgid, fd, entry) {
                    Ok(bytes) => (bytes, None),
                    Err(why) => (None, Some(why)),
                };
                FdFacts { tcp_state, socket_memory, pinned_bytes: None, socket_memory_unavailable }
            }
            FdKind::Memfd => FdFacts {
                pinned_bytes: proc::fds::allocated_bytes(self.proc_root, tgid, fd),
                ..FdFacts::default()
            },
            _ => FdFacts::default(),
        }
    }
}

/// Which network namespace a process's sockets are in, for a sentence saying why they could
/// not be measured: `network namespace net:[4026532290]`, or why even that is unknown.
fn network_namespace(proc_root: &Path, tgid: u32) -> String {
    let link = proc_root.join(tgid.to_string()).join("ns/net");
    match std::fs::read_link(&link) {
        Ok(ns) => format!("a socket of network namespace {}", ns.display()),
        Err(e) => format!("a socket of a network namespace that cannot be named ({}: {e})", link.display()),
    }
}

/// Longest path or name shown for one descriptor.
const DETAIL_CHARS: usize = 512;

/// A path, a memfd's name or a pidfd's process, as a person reads it.
fn describe_detail(detail: &FdDetail) -> Option<String> {
    match detail {
        FdDetail::Path(path) => Some(printable(path, DETAIL_CHARS)),
        FdDetail::Name(name) => Some(format!("memfd:{}", printable(name, DETAIL_CHARS))),
        FdDetail::Pid(pid) => Some(format!("pid {pid}")),
        FdDetail::Socket { .. } | FdDetail::None | FdDetail::Unread => None,
    }
}

/// What a person wants to see of one open descriptor: its path, or its socket's addresses.
pub(crate) fn describe_fd(
    proc_root: &Path,
    sockets: &mut SocketTables,
    tgid: u32,
    fd: i32,
    entry: &OpenFd,
) -> Option<String> {
    match &entry.detail {
        FdDetail::Path(_) | FdDetail::Name(_) | FdDetail::Pid(_) => describe_detail(&entry.detail),
        // What the event that opened it could not name (`FdDetail::Unread`: sys/decode.rs), a
        // file, directory, device, FIFO or memfd: as /proc names it now, redacted as a path
        // (`describe`).
        FdDetail::Unread => describe_detail(&proc::fds::detail_now(proc_root, tgid, fd)?),
        FdDetail::Socket { .. } | FdDetail::None if entry.kind == FdKind::Socket => {
            let inode = proc::fds::socket_inode(proc_root, tgid, fd)?;
            sockets.for_process(tgid).get(inode).map(|s| s.describe())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fd::SiteId;

    fn entry(kind: FdKind, detail: FdDetail) -> OpenFd {
        OpenFd { kind, detail, site: SiteId::NoStack, opened_ns: 0, cloexec: false, inherited: false }
    }

    /// What the opening event could not name (`FdDetail::Unread`) is named as /proc names it
    /// now, and redacted as a path; what it named is its own name, and what has no name (an
    /// anonymous pipe's `None`) is not looked for there, nor shown redacted.
    #[test]
    fn what_the_event_could_not_name_is_named_from_proc() {
        let procfs = tempfile::tempdir().unwrap();
        let fd_dir = procfs.path().join("7/fd");
        std::fs::create_dir_all(&fd_dir).unwrap();
        std::os::unix::fs::symlink("/srv/x\n", fd_dir.join("3")).unwrap();
        std::os::unix::fs::symlink("/memfd:cache (deleted)", fd_dir.join("4")).unwrap();
        std::os::unix::fs::symlink("/run/queue", fd_dir.join("6")).unwrap();
        // Were /proc read for a descriptor with no name, this would name it.
        std::os::unix::fs::symlink("/srv/anonymous", fd_dir.join("8")).unwrap();
        let path = |p: &[u8]| FdDetail::Path(p.to_vec().into());
        for redact in [false, true] {
            let mut join = SocketJoin::new(procfs.path(), HashMap::new(), 0, redact);
            let mut describe = |fd, kind, detail| join.describe(7, fd, &entry(kind, detail));
            let shown =
                |name: &str| Some(if redact { crate::output::redact::REDACTED } else { name }.to_string());
            assert_eq!(describe(3, FdKind::File, FdDetail::Unread), shown("/srv/x\\n"));
            // As the baseline names memfds found open (`observe`).
            assert_eq!(describe(4, FdKind::Memfd, FdDetail::Unread), shown("memfd:cache (deleted)"));
            // A FIFO whose path the kernel could not read.
            assert_eq!(describe(6, FdKind::Pipe, FdDetail::Unread), shown("/run/queue"));
            assert_eq!(describe(3, FdKind::File, path(b"/a")), shown("/a"));
            assert_eq!(describe(8, FdKind::Pipe, FdDetail::None), None);
            assert_eq!(describe(8, FdKind::Eventfd, FdDetail::None), None);
            if !redact {
                assert_eq!(describe(5, FdKind::File, FdDetail::Unread), None, "not open");
            }
        }
    }

    /// Few sockets are measured each on its own, without a dump of the network namespace; many
    /// in one dump. Both give a socket of this process the same memory.
    #[test]
    fn few_sockets_are_measured_without_a_dump() {
        use std::{io::Write as _, os::fd::AsRawFd as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.write_all(&[7u8; 50_000]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let (me, fd) = (std::process::id(), server.as_raw_fd());
        let socket = entry(FdKind::Socket, FdDetail::None);
        let mut few = SocketJoin::new(Path::new("/proc"), HashMap::new(), 2, false);
        let alone = few.socket_memory(me, fd, &socket).unwrap().expect("open");
        assert!(few.memory.is_none(), "a dump for two sockets");
        let mut many = SocketJoin::new(Path::new("/proc"), HashMap::new(), ONE_BY_ONE_UP_TO + 1, false);
        let dumped = many.socket_memory(me, fd, &socket).unwrap().expect("open");
        assert!(many.memory.is_some(), "no dump for many sockets");
        assert!(alone >= 50_000, "{alone} bytes for 50,000 unread");
        assert_eq!(alone, dumped);
    }
}
