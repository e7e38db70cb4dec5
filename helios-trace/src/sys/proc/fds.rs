//! The descriptors a process has open, from /proc/PID/fd and fdinfo: for the baseline at
//! start, for reconciliation, for descriptors received through SCM_RIGHTS and for reports.
use std::{collections::BTreeMap, fs, io, path::Path};

use procfs::process::{FDTarget, Process};

use super::sockets::SocketTable;
use crate::model::{
    fd::{FdDetail, FdKind},
    fdtable::ObservedFd,
};

/// The kind of a descriptor from its /proc/PID/fd link target; `stat_mode` gives the target's
/// st_mode for path targets (a path can name a directory, device, FIFO or socket file).
pub(crate) fn classify(target: &FDTarget, stat_mode: impl FnOnce() -> Option<u32>) -> FdKind {
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
pub(crate) fn cloexec(root: &Path, pid: u32, fd: i32) -> bool {
    let path = root.join(pid.to_string()).join("fdinfo").join(fd.to_string());
    fs::read_to_string(path).is_ok_and(|text| parse_fdinfo_cloexec(&text))
}

pub(crate) fn parse_fdinfo_cloexec(fdinfo: &str) -> bool {
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("flags:"))
        .and_then(|flags| u64::from_str_radix(flags.trim(), 8).ok())
        .is_some_and(|flags| flags & libc::O_CLOEXEC as u64 != 0)
}

/// Every open descriptor of `pid` with its kind, detail and close-on-exec flag.
/// `sockets` supplies family/type/protocol by inode, when known.
pub(crate) fn observe_fds(
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
pub(crate) fn observe_fd(
    root: &Path,
    pid: u32,
    fd: i32,
    sockets: Option<&SocketTable>,
) -> Option<ObservedFd> {
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

/// Bytes allocated to the file behind a descriptor (st_blocks): what a memfd or a deleted file
/// pins while it stays open.
pub(crate) fn allocated_bytes(root: &Path, pid: u32, fd: i32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let metadata = fs::metadata(root.join(pid.to_string()).join("fd").join(fd.to_string())).ok()?;
    Some(metadata.blocks() * 512)
}

/// The inode behind a socket descriptor (for joining with the socket tables at report time).
pub(crate) fn socket_inode(root: &Path, pid: u32, fd: i32) -> Option<u64> {
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

#[cfg(test)]
mod tests {
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
}
