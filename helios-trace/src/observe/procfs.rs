//! /proc as the engine and the outputs are handed it (ARCHITECTURE.md, "Data flow" 7-8): the
//! engine's [`ProcSource`] read from a procfs root, and what a report says of open descriptors
//! that only /proc and sock_diag know (paths, socket addresses, TCP states, socket memory,
//! memfd sizes), with `--redact-paths` applied.
use std::{
    collections::HashMap,
    io,
    os::{fd::OwnedFd, unix::fs::MetadataExt as _},
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

/// How many sockets a join measures one by one (sys/sockdiag.rs `socket_memory`: five system
/// calls, about 2 µs a socket here) before it takes the rest of the tracer's own network
/// namespace from one sock_diag dump. A dump costs what the node holds, not what is asked: the
/// kernel walks every bucket of the TCP hash, for IPv4 and again for IPv6 (net/ipv4/tcp_diag.c
/// `tcp_diag_dump`; inet_diag.c `inet_diag_dump_icsk` in older kernels), the node's shared
/// table unless `tcp_child_ehash_entries` gave the namespace its own: 262,144 buckets on this
/// machine of 24 GiB (`alloc_large_system_hash` in `tcp_init` sizes it by memory), 7 ms a dump
/// here, as long as 3,500 sockets one by one. 2,048 stays under that where each duplicate costs more (an
/// LSM's check of it). `serve` measures every open socket once a second; a dump a second was
/// 70% of an idle `serve`'s CPU.
const ONE_BY_ONE_UP_TO: usize = 2_048;

/// Open sockets joined with the socket tables of their network namespace, and with their
/// memory, by inode.
pub(super) struct SocketJoin<'a> {
    proc_root: &'a Path,
    tables: SocketTables,
    known: HashMap<(u32, i32, u64), u64>,
    pub(super) seen: HashMap<(u32, i32, u64), u64>,
    /// Sockets measured one by one so far (`ONE_BY_ONE_UP_TO`).
    measured_alone: usize,
    /// Socket memory of the tracer's network namespace by inode: dumped at most once per join,
    /// when it is needed.
    memory: Option<HashMap<u64, sockdiag::SocketMemory>>,
    /// The tracer's own network namespace (the inode of /proc/self/ns/net), read when needed.
    own_namespace: Option<Option<u64>>,
    /// Whether each process asked about is in the tracer's network namespace, which the dump
    /// lists. A DaemonSet's pod has a namespace of its own (no `hostNetwork`): the dump lists
    /// none of the sockets it traces.
    in_own_namespace: HashMap<u32, bool>,
    /// Processes whose sockets were measured one by one: a pidfd each (sys/sockdiag.rs), or why
    /// there is none.
    pidfds: HashMap<u32, Result<OwnedFd, String>>,
    /// Whether a socket's descriptor may be duplicated without changing the socket
    /// (`duplicates_keep_sockets`), read when needed: why not, if not.
    may_duplicate: Option<Result<(), String>>,
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
            measured_alone: 0,
            memory: None,
            own_namespace: None,
            in_own_namespace: HashMap::new(),
            pidfds: HashMap::new(),
            may_duplicate: None,
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
    /// why when it could not be had. Each socket is measured on its own, up to
    /// `ONE_BY_ONE_UP_TO` of them; past that, those of the tracer's own network namespace come
    /// from one sock_diag dump. A socket whose descriptor the tracer may not duplicate is looked
    /// for in the dump too (a socket of another namespace has no other way). Measured on its own, a socket whose process or descriptor is gone is
    /// `Ok(None)`, even where a copy of it lives on in another process (a dump would list it).
    pub(super) fn socket_memory(
        &mut self,
        tgid: u32,
        fd: i32,
        entry: &OpenFd,
    ) -> Result<Option<u64>, String> {
        let Some(inode) = self.inode(tgid, fd, entry) else { return Ok(None) };
        let many = self.measured_alone >= ONE_BY_ONE_UP_TO;
        if many
            && self.listed_by_dump(tgid)
            && let Some(bytes) = self.dumped(inode)
        {
            return Ok(Some(bytes));
        }
        self.measured_alone += 1;
        match self.alone(tgid, fd, inode) {
            // A process that does not let its descriptor be duplicated (a ptrace attach check),
            // or a node where none may be (`duplicates_keep_sockets`).
            Err(why) if !many && self.listed_by_dump(tgid) => self.dumped(inode).map(Some).ok_or(why),
            measured => measured,
        }
    }

    /// The memory the dump of the tracer's network namespace gives socket `inode`, if it lists it
    /// (the dump taken the first time).
    fn dumped(&mut self, inode: u64) -> Option<u64> {
        let memory = self.memory.get_or_insert_with(|| {
            sockdiag::dump()
                .inspect_err(|e| log::warn!("socket memory (sock_diag) unavailable: {e}"))
                .unwrap_or_default()
        });
        memory.get(&inode).map(|m| m.buffer_bytes())
    }

    /// Whether `tgid` is in the tracer's own network namespace, whose sockets a dump lists (no
    /// when either cannot be read).
    fn listed_by_dump(&mut self, tgid: u32) -> bool {
        let namespace = |path: &Path| std::fs::metadata(path).map(|m| m.ino()).ok();
        let own = *self.own_namespace.get_or_insert_with(|| namespace(Path::new("/proc/self/ns/net")));
        let proc_root = self.proc_root;
        *self.in_own_namespace.entry(tgid).or_insert_with(|| {
            own.is_some() && namespace(&proc_root.join(tgid.to_string()).join("ns/net")) == own
        })
    }

    /// One socket measured through a duplicate of its descriptor (sys/sockdiag.rs), whatever
    /// network namespace it is in: `Ok(None)` when the descriptor is no longer that socket.
    fn alone(&mut self, tgid: u32, fd: i32, inode: u64) -> Result<Option<u64>, String> {
        let proc_root = self.proc_root;
        let may = self.may_duplicate.get_or_insert_with(|| {
            match std::fs::read_to_string(proc_root.join("cgroups")) {
                Ok(cgroups) if duplicates_keep_sockets(&cgroups) => Ok(()),
                Ok(_) => Err("not duplicated: on this node (cgroup v1 net_cls or net_prio mounted) \
                              the socket would take the tracer's class id and priority"
                    .to_string()),
                Err(e) => Err(format!("not duplicated: cgroup controllers unknown ({e})")),
            }
        });
        if let Err(why) = may {
            return Err(format!("{}: {why}", network_namespace(proc_root, tgid)));
        }
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

/// Whether a descriptor of a socket can be duplicated into the tracer without changing the
/// socket, given /proc/cgroups (`#subsys_name hierarchy num_cgroups enabled`). A received socket
/// takes the receiver's cgroup v1 net_cls class id and net_prio index (net/core/sock.c
/// `__receive_sock`, `sock_update_classid`, `sock_update_netprioidx`): where either controller
/// is mounted (a hierarchy other than 0), traffic classified by them would change for the
/// traced program. Unmounted, every task's id and index are the root's, as every socket's are.
fn duplicates_keep_sockets(cgroups: &str) -> bool {
    cgroups.lines().all(|line| {
        let mut fields = line.split_whitespace();
        match (fields.next(), fields.next()) {
            (Some("net_cls" | "net_prio"), Some(hierarchy)) => hierarchy == "0",
            _ => true,
        }
    })
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
            let mut join = SocketJoin::new(procfs.path(), HashMap::new(), redact);
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

    #[test]
    fn sockets_are_duplicated_only_where_no_v1_net_cls_or_net_prio_is_mounted() {
        let cgroups = |net_cls: u32, net_prio: u32| {
            format!(
                "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t1\t1\t1\n\
                 net_cls\t{net_cls}\t295\t1\nperf_event\t0\t295\t1\nnet_prio\t{net_prio}\t295\t1\n"
            )
        };
        assert!(duplicates_keep_sockets(&cgroups(0, 0)));
        assert!(!duplicates_keep_sockets(&cgroups(9, 0)));
        assert!(!duplicates_keep_sockets(&cgroups(0, 9)));
        assert!(duplicates_keep_sockets("#subsys_name\thierarchy\tnum_cgroups\tenabled\nmemory\t0\t60\t1\n"));
    }

    /// Sockets are measured each on its own, without a dump of the network namespace, up to
    /// `ONE_BY_ONE_UP_TO`; past that, a socket of the tracer's own namespace comes from one
    /// dump. Either way this process's socket holds the data it has not read.
    #[test]
    fn sockets_are_measured_one_by_one_then_from_a_dump() {
        use std::{io::Write as _, os::fd::AsRawFd as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.write_all(&[7u8; 50_000]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let (me, fd) = (std::process::id(), server.as_raw_fd());
        let socket = entry(FdKind::Socket, FdDetail::None);
        let mut join = SocketJoin::new(Path::new("/proc"), HashMap::new(), false);
        for _ in 0..ONE_BY_ONE_UP_TO {
            let alone = join.socket_memory(me, fd, &socket).unwrap().expect("open");
            assert!(alone >= 50_000, "{alone} bytes for 50,000 unread");
        }
        assert!(join.memory.is_none(), "a dump within {ONE_BY_ONE_UP_TO} sockets");
        let dumped = join.socket_memory(me, fd, &socket).unwrap().expect("open");
        assert!(join.memory.is_some(), "no dump past {ONE_BY_ONE_UP_TO} sockets");
        assert!(dumped >= 50_000, "{dumped} bytes for 50,000 unread");
    }
}
