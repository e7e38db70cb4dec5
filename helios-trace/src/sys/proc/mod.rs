//! What /proc says: the descriptors a process has open (for the baseline at start and for
//! reconciliation), socket tables by inode, and process names. Every function takes the procfs
//! root as a parameter so tests can point it at a directory of their own.
use std::{
    collections::{BTreeMap, HashMap},
    fs, io,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use procfs::process::{FDTarget, Process};

pub mod resources;

use crate::model::{
    fd::{FdDetail, FdKind, printable},
    fdtable::ObservedFd,
    resources::Usage,
};

/// Numeric entries of the procfs root: the pids.
pub fn pids(root: &Path) -> Vec<u32> {
    let Ok(entries) = fs::read_dir(root) else { return Vec::new() };
    let mut pids: Vec<u32> = entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    pids.sort_unstable();
    pids
}

/// The thread ids of a process (/proc/PID/task); empty when it is gone.
pub fn tids(root: &Path, pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir(root.join(pid.to_string()).join("task")) else { return Vec::new() };
    entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

pub fn exists(root: &Path, pid: u32) -> bool {
    root.join(pid.to_string()).is_dir()
}

/// The command name, printable (a process sets its own: newlines and invalid UTF-8 included).
pub fn comm(root: &Path, pid: u32) -> Option<String> {
    let text = fs::read(root.join(pid.to_string()).join("comm")).ok()?;
    let name = text.strip_suffix(b"\n").unwrap_or(&text);
    Some(printable(name, COMM_CHARS))
}

/// Command names are at most 15 bytes (TASK_COMM_LEN - 1).
const COMM_CHARS: usize = 15;
/// Command lines can be as long as the arguments allow: cut (with a marker) for reports.
const CMDLINE_CHARS: usize = 1024;

/// The command line, arguments joined by spaces, printable and cut at `CMDLINE_CHARS`; `None`
/// for kernel threads and zombies.
pub fn cmdline(root: &Path, pid: u32) -> Option<String> {
    let raw = fs::read(root.join(pid.to_string()).join("cmdline")).ok()?;
    let args: Vec<&[u8]> = raw.split(|&b| b == 0).filter(|a| !a.is_empty()).collect();
    (!args.is_empty()).then(|| printable(&args.join(&b' '), CMDLINE_CHARS))
}

/// The kind of a descriptor from its /proc/PID/fd link target; `stat_mode` gives the target's
/// st_mode for path targets (a path can name a directory, device, FIFO or socket file).
pub fn classify(target: &FDTarget, stat_mode: impl FnOnce() -> Option<u32>) -> FdKind {
    match target {
        FDTarget::Socket(_) => FdKind::Socket,
        FDTarget::Pipe(_) => FdKind::Pipe,
        FDTarget::MemFD(_) => FdKind::Memfd,
        FDTarget::AnonInode(name) => match name.trim_matches(|c| c == '[' || c == ']') {
            "eventfd" => FdKind::Eventfd,
            "eventpoll" => FdKind::Epoll,
            "timerfd" => FdKind::Timerfd,
            "signalfd" => FdKind::Signalfd,
            "inotify" => FdKind::Inotify,
            "pidfd" => FdKind::Pidfd,
            "io_uring" => FdKind::IoUring,
            _ => FdKind::Other,
        },
        // Since Linux 6.9 pidfds live in pidfs: "pidfd:[inode]".
        FDTarget::Other(name, _) if name == "pidfd" => FdKind::Pidfd,
        FDTarget::Path(path) => {
            // memfd targets that procfs did not recognise still carry the prefix.
            if path.as_os_str().as_encoded_bytes().starts_with(b"/memfd:") {
                return FdKind::Memfd;
            }
            match stat_mode().map(|mode| mode & libc::S_IFMT) {
                Some(libc::S_IFDIR) => FdKind::Dir,
                Some(libc::S_IFCHR | libc::S_IFBLK) => FdKind::Device,
                Some(libc::S_IFIFO) => FdKind::Pipe,
                Some(libc::S_IFSOCK) => FdKind::Socket,
                _ => FdKind::File,
            }
        }
        _ => FdKind::Other,
    }
}

fn stat_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).ok().map(|m| m.mode())
}

/// The close-on-exec flag from /proc/PID/fdinfo/FD ("flags:\t02100002", octal).
pub fn cloexec(root: &Path, pid: u32, fd: i32) -> bool {
    let path = root.join(pid.to_string()).join("fdinfo").join(fd.to_string());
    fs::read_to_string(path).is_ok_and(|text| parse_fdinfo_cloexec(&text))
}

pub fn parse_fdinfo_cloexec(fdinfo: &str) -> bool {
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("flags:"))
        .and_then(|flags| u64::from_str_radix(flags.trim(), 8).ok())
        .is_some_and(|flags| flags & libc::O_CLOEXEC as u64 != 0)
}

/// Every open descriptor of `pid` with its kind, detail and close-on-exec flag.
/// `sockets` supplies family/type/protocol by inode, when known.
pub fn observe_fds(
    root: &Path,
    pid: u32,
    sockets: Option<&SocketTable>,
) -> io::Result<BTreeMap<i32, ObservedFd>> {
    let process = Process::new_with_root(root.join(pid.to_string())).map_err(to_io)?;
    let mut observed = BTreeMap::new();
    for info in process.fd().map_err(to_io)? {
        // A descriptor closed while we list is simply not there.
        let Ok(info) = info else { continue };
        observed.insert(info.fd, observe(root, pid, info.fd, &info.target, sockets));
    }
    Ok(observed)
}

/// One descriptor of `pid`, if it is open.
pub fn observe_fd(root: &Path, pid: u32, fd: i32, sockets: Option<&SocketTable>) -> Option<ObservedFd> {
    let link = fs::read_link(root.join(pid.to_string()).join("fd").join(fd.to_string())).ok()?;
    let target: FDTarget = link.to_str()?.parse().ok()?;
    Some(observe(root, pid, fd, &target, sockets))
}

fn observe(root: &Path, pid: u32, fd: i32, target: &FDTarget, sockets: Option<&SocketTable>) -> ObservedFd {
    let link = root.join(pid.to_string()).join("fd").join(fd.to_string());
    let kind = classify(target, || stat_mode(&link));
    let detail = match target {
        FDTarget::Path(path) if matches!(kind, FdKind::File | FdKind::Dir | FdKind::Device) => {
            FdDetail::Path(path.as_os_str().as_encoded_bytes().to_vec().into_boxed_slice())
        }
        FDTarget::MemFD(name) => FdDetail::Name(name.as_bytes().to_vec().into_boxed_slice()),
        FDTarget::Socket(inode) => sockets
            .and_then(|s| s.get(*inode))
            .map(|s| FdDetail::Socket { family: s.family, sock_type: s.sock_type, protocol: s.protocol })
            .unwrap_or_default(),
        _ => FdDetail::None,
    };
    ObservedFd { kind, detail, cloexec: cloexec(root, pid, fd) }
}

/// `/proc/PID/cgroup`: one `hierarchy-id:controllers:path` line per hierarchy (see
/// cgroups(7)); workload.rs reads the workload out of it.
pub fn cgroup(root: &Path, pid: u32) -> Option<String> {
    fs::read_to_string(root.join(pid.to_string()).join("cgroup")).ok()
}

/// What a process costs now (the exporter's own `process_*` metrics).
pub fn usage(root: &Path, pid: u32) -> Option<Usage> {
    let process = Process::new_with_root(root.join(pid.to_string())).ok()?;
    let stat = process.stat().ok()?;
    Some(Usage {
        // proc_pid_stat(5): utime and stime are in clock ticks, rss in pages.
        cpu_seconds: (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64,
        resident_bytes: stat.rss * procfs::page_size(),
        virtual_bytes: stat.vsize,
        open_fds: process.fd_count().ok()? as u64,
    })
}

/// Bytes allocated to the file behind a descriptor (st_blocks): what a memfd or a deleted file
/// pins while it stays open.
pub fn allocated_bytes(root: &Path, pid: u32, fd: i32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let metadata = fs::metadata(root.join(pid.to_string()).join("fd").join(fd.to_string())).ok()?;
    Some(metadata.blocks() * 512)
}

/// Open the file `pid` maps at `start..end`, as the process sees it: through
/// /proc/PID/map_files, the mapped file itself even when it was deleted or replaced since and
/// whatever mount namespace the process is in (needs CAP_SYS_ADMIN: fs/proc/base.c,
/// proc_map_files_get_link); else through the process's root directory (/proc/PID/root: its
/// mount namespace), accepted only if it still is the same inode.
pub fn open_mapped_file(
    root: &Path,
    pid: u32,
    start: u64,
    end: u64,
    path: &str,
    inode: u64,
) -> io::Result<fs::File> {
    use std::os::unix::fs::MetadataExt;
    let process = root.join(pid.to_string());
    // fs/proc/base.c names the links "%lx-%lx".
    if let Ok(file) = fs::File::open(process.join("map_files").join(format!("{start:x}-{end:x}"))) {
        return Ok(file);
    }
    let file = fs::File::open(process.join("root").join(path.trim_start_matches('/')))?;
    if file.metadata()?.ino() != inode {
        return Err(io::Error::other(format!("{path} was replaced since process {pid} mapped it")));
    }
    Ok(file)
}

/// The inode behind a socket descriptor (for joining with the socket tables at report time).
pub fn socket_inode(root: &Path, pid: u32, fd: i32) -> Option<u64> {
    let link = fs::read_link(root.join(pid.to_string()).join("fd").join(fd.to_string())).ok()?;
    let link = link.to_str()?;
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

fn to_io(e: procfs::ProcError) -> io::Error {
    match e {
        procfs::ProcError::NotFound(_) => io::Error::new(io::ErrorKind::NotFound, e.to_string()),
        procfs::ProcError::PermissionDenied(_) => {
            io::Error::new(io::ErrorKind::PermissionDenied, e.to_string())
        }
        other => io::Error::other(other.to_string()),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketInfo {
    pub family: u16,
    pub sock_type: u16,
    pub protocol: u16,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    /// TCP state name (e.g. "ESTABLISHED", "CLOSE_WAIT"); unix: "connected"/"listening"...
    pub state: Option<String>,
    /// Bound path of a unix socket.
    pub path: Option<String>,
}

impl SocketInfo {
    /// `TCP 127.0.0.1:8443 <-> 127.0.0.1:51234 ESTABLISHED`, `UNIX /run/app.sock`.
    pub fn describe(&self) -> String {
        let proto = match (self.family as i32, self.protocol as i32, self.sock_type as i32) {
            (libc::AF_UNIX, ..) => "UNIX",
            (_, libc::IPPROTO_TCP, _) | (_, 0, libc::SOCK_STREAM) => "TCP",
            (_, libc::IPPROTO_UDP, _) | (_, 0, libc::SOCK_DGRAM) => "UDP",
            _ => "SOCKET",
        };
        let mut text = proto.to_string();
        if let Some(path) = &self.path {
            text.push(' ');
            text.push_str(path);
        }
        if let Some(local) = self.local {
            text.push_str(&format!(" {local}"));
        }
        if let Some(remote) = self.remote.filter(|r| !r.ip().is_unspecified() || r.port() != 0) {
            text.push_str(&format!(" <-> {remote}"));
        }
        if let Some(state) = &self.state {
            text.push(' ');
            text.push_str(state);
        }
        text
    }
}

/// Sockets of one network namespace by inode, from /proc/PID/net/{tcp,tcp6,udp,udp6,unix}.
#[derive(Clone, Debug, Default)]
pub struct SocketTable {
    by_inode: HashMap<u64, SocketInfo>,
}

impl SocketTable {
    pub fn read(root: &Path, pid: u32) -> SocketTable {
        let mut table = SocketTable::default();
        let Ok(process) = Process::new_with_root(root.join(pid.to_string())) else { return table };
        let tcp = [(libc::AF_INET, process.tcp()), (libc::AF_INET6, process.tcp6())];
        for (family, entries) in tcp {
            for e in entries.into_iter().flatten() {
                table.by_inode.insert(
                    e.inode,
                    SocketInfo {
                        family: family as u16,
                        sock_type: libc::SOCK_STREAM as u16,
                        protocol: libc::IPPROTO_TCP as u16,
                        local: Some(e.local_address),
                        remote: Some(e.remote_address),
                        state: Some(tcp_state_name(e.state.to_u8())),
                        path: None,
                    },
                );
            }
        }
        let udp = [(libc::AF_INET, process.udp()), (libc::AF_INET6, process.udp6())];
        for (family, entries) in udp {
            for e in entries.into_iter().flatten() {
                table.by_inode.insert(
                    e.inode,
                    SocketInfo {
                        family: family as u16,
                        sock_type: libc::SOCK_DGRAM as u16,
                        protocol: libc::IPPROTO_UDP as u16,
                        local: Some(e.local_address),
                        remote: Some(e.remote_address),
                        state: None,
                        path: None,
                    },
                );
            }
        }
        for e in process.unix().into_iter().flatten() {
            table.by_inode.insert(
                e.inode,
                SocketInfo {
                    family: libc::AF_UNIX as u16,
                    sock_type: e.socket_type,
                    protocol: 0,
                    local: None,
                    remote: None,
                    state: None,
                    path: e.path.map(|p| p.to_string_lossy().into_owned()),
                },
            );
        }
        table
    }

    pub fn get(&self, inode: u64) -> Option<&SocketInfo> {
        self.by_inode.get(&inode)
    }

    pub fn len(&self) -> usize {
        self.by_inode.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_inode.is_empty()
    }
}

/// include/net/tcp_states.h
pub fn tcp_state_name(state: u8) -> String {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
    .to_string()
}

/// Socket tables keyed by network namespace, read at most once per namespace per use.
#[derive(Default)]
pub struct SocketTables {
    root: PathBuf,
    by_netns: HashMap<u64, SocketTable>,
}

impl SocketTables {
    pub fn new(root: &Path) -> SocketTables {
        SocketTables { root: root.to_path_buf(), by_netns: HashMap::new() }
    }

    pub fn for_process(&mut self, pid: u32) -> &SocketTable {
        let netns = netns_inode(&self.root, pid).unwrap_or(0);
        let root = self.root.clone();
        self.by_netns.entry(netns).or_insert_with(|| SocketTable::read(&root, pid))
    }
}

fn netns_inode(root: &Path, pid: u32) -> Option<u64> {
    let link = fs::read_link(root.join(pid.to_string()).join("ns/net")).ok()?;
    let link = link.to_str()?;
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn classifies_link_targets() {
        let never = || -> Option<u32> { panic!("no stat for non-path targets") };
        assert_eq!(classify(&FDTarget::Socket(1), never), FdKind::Socket);
        assert_eq!(classify(&FDTarget::Pipe(1), never), FdKind::Pipe);
        for (name, kind) in [
            ("[eventfd]", FdKind::Eventfd),
            ("[eventpoll]", FdKind::Epoll),
            ("[timerfd]", FdKind::Timerfd),
            ("[signalfd]", FdKind::Signalfd),
            ("inotify", FdKind::Inotify),
            ("[pidfd]", FdKind::Pidfd),
            ("[io_uring]", FdKind::IoUring),
            ("[perf_event]", FdKind::Other),
        ] {
            assert_eq!(classify(&FDTarget::AnonInode(name.into()), never), kind, "{name}");
        }
        assert_eq!(classify(&FDTarget::Other("pidfd".into(), 5), never), FdKind::Pidfd);
        let path = FDTarget::Path("/srv".into());
        assert_eq!(classify(&path, || Some(libc::S_IFDIR | 0o755)), FdKind::Dir);
        assert_eq!(classify(&path, || Some(libc::S_IFCHR)), FdKind::Device);
        assert_eq!(classify(&path, || Some(libc::S_IFIFO)), FdKind::Pipe);
        assert_eq!(classify(&path, || Some(libc::S_IFREG)), FdKind::File);
        assert_eq!(classify(&path, || None), FdKind::File, "a deleted file is still a file");
        assert_eq!(classify(&FDTarget::Path("/memfd:x (deleted)".into()), || None), FdKind::Memfd);
    }

    #[test]
    fn fdinfo_cloexec_flag() {
        assert!(parse_fdinfo_cloexec("pos:\t0\nflags:\t02100002\nmnt_id:\t25\n"));
        assert!(!parse_fdinfo_cloexec("pos:\t0\nflags:\t0100002\nmnt_id:\t25\n"));
        assert!(!parse_fdinfo_cloexec("garbage"));
    }

    /// A fake procfs with one process whose fd directory holds links like the kernel's.
    fn fake_proc() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("77");
        fs::create_dir_all(p.join("fd")).unwrap();
        fs::create_dir_all(p.join("fdinfo")).unwrap();
        fs::create_dir_all(p.join("net")).unwrap();
        let data = dir.path().join("data.txt");
        fs::write(&data, "x").unwrap();
        symlink(&data, p.join("fd/3")).unwrap();
        symlink(dir.path(), p.join("fd/4")).unwrap();
        symlink("socket:[4242]", p.join("fd/5")).unwrap();
        symlink("pipe:[99]", p.join("fd/6")).unwrap();
        symlink("anon_inode:[eventfd]", p.join("fd/7")).unwrap();
        for fd in [3, 4, 5, 6, 7] {
            let flags = if fd == 3 { "02100000" } else { "02" };
            fs::write(p.join(format!("fdinfo/{fd}")), format!("pos:\t0\nflags:\t{flags}\n")).unwrap();
        }
        fs::write(p.join("comm"), "leaky\n").unwrap();
        fs::write(p.join("cmdline"), b"python3\0-m\0app\0").unwrap();
        fs::write(
            p.join("net/tcp"),
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:20FB 0100007F:C822 08 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 20 4 30 10 -1\n",
        )
        .unwrap();
        for name in ["tcp6", "udp", "udp6"] {
            fs::write(p.join("net").join(name), "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n").unwrap();
        }
        fs::write(p.join("net/unix"), "Num       RefCount Protocol Flags    Type St Inode Path\n").unwrap();
        dir
    }

    #[test]
    fn observes_a_fake_process() {
        let dir = fake_proc();
        let root = dir.path();
        assert_eq!(pids(root), vec![77]);
        assert_eq!(comm(root, 77).as_deref(), Some("leaky"));
        assert_eq!(cmdline(root, 77).as_deref(), Some("python3 -m app"));
        let sockets = SocketTable::read(root, 77);
        let info = sockets.get(4242).expect("tcp entry by inode");
        assert_eq!(info.describe(), "TCP 127.0.0.1:8443 <-> 127.0.0.1:51234 CLOSE_WAIT");
        let fds = observe_fds(root, 77, Some(&sockets)).unwrap();
        let kinds: Vec<(i32, FdKind)> = fds.iter().map(|(fd, o)| (*fd, o.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (3, FdKind::File),
                (4, FdKind::Dir),
                (5, FdKind::Socket),
                (6, FdKind::Pipe),
                (7, FdKind::Eventfd)
            ]
        );
        assert!(fds[&3].cloexec);
        assert!(!fds[&4].cloexec);
        assert_eq!(
            fds[&5].detail,
            FdDetail::Socket {
                family: libc::AF_INET as u16,
                sock_type: libc::SOCK_STREAM as u16,
                protocol: 6
            }
        );
        assert_eq!(socket_inode(root, 77, 5), Some(4242));
        assert_eq!(observe_fd(root, 77, 4, None).map(|o| o.kind), Some(FdKind::Dir));
        assert_eq!(observe_fd(root, 77, 9, None), None);
        assert!(observe_fds(root, 78, None).is_err());
    }

    #[test]
    fn mapped_files_open_through_map_files_or_the_process_root() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // Process 5 lives in its own root (a container): /srv/app is only there.
        let container = root.join("5/root/srv");
        fs::create_dir_all(&container).unwrap();
        fs::write(container.join("app"), b"app v1").unwrap();
        let inode = fs::metadata(container.join("app")).unwrap().ino();
        let read = |file: fs::File| std::io::read_to_string(file).unwrap();
        assert_eq!(read(open_mapped_file(root, 5, 0x1000, 0x2000, "/srv/app", inode).unwrap()), "app v1");
        // Replaced since it was mapped (another inode at the path): refused, not misnamed.
        assert!(open_mapped_file(root, 5, 0x1000, 0x2000, "/srv/app", inode + 1).is_err());
        // map_files, when there, is the mapped file itself, whatever the path says now.
        fs::create_dir_all(root.join("5/map_files")).unwrap();
        fs::write(root.join("v0"), b"app v0").unwrap();
        symlink(root.join("v0"), root.join("5/map_files/1000-2000")).unwrap();
        assert_eq!(read(open_mapped_file(root, 5, 0x1000, 0x2000, "/srv/app", 0).unwrap()), "app v0");
        assert!(open_mapped_file(root, 6, 0x1000, 0x2000, "/srv/app", inode).is_err());
    }
}
