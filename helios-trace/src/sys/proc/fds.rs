//! The descriptors a process has open, from /proc/PID/fd and fdinfo: for the baseline at
//! start, for reconciliation, for descriptors received through SCM_RIGHTS and for reports.
use std::{collections::BTreeMap, fs, io, os::fd::OwnedFd, path::Path, str::FromStr as _};

use procfs::process::FDTarget;
use rustix::fs::{Dir, Mode, OFlags};

use super::sockets::SocketTable;
use crate::model::{
    fd::{FdDetail, FdKind},
    fdtable::{FdChunk, ObservedFd},
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
            stat_mode().and_then(kind_of_mode).unwrap_or(FdKind::File)
        }
        _ => FdKind::Other,
    }
}

/// The kind of a file reached by a path, from its mode's type (`st_mode`, or the inode's
/// `i_mode` the kernel read at an open: include/uapi/linux/stat.h); None when the mode has no
/// type.
pub(crate) fn kind_of_mode(mode: u32) -> Option<FdKind> {
    Some(match mode & libc::S_IFMT {
        0 => return None,
        libc::S_IFDIR => FdKind::Dir,
        libc::S_IFCHR | libc::S_IFBLK => FdKind::Device,
        libc::S_IFIFO => FdKind::Pipe,
        libc::S_IFSOCK => FdKind::Socket,
        _ => FdKind::File,
    })
}

fn stat_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).ok().map(|m| m.mode())
}

/// The close-on-exec flag from /proc/PID/fdinfo/FD ("flags:\t02100002", octal).
fn cloexec(root: &Path, pid: u32, fd: i32) -> bool {
    let path = root.join(pid.to_string()).join("fdinfo").join(fd.to_string());
    rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).is_ok_and(read_cloexec)
}

/// The close-on-exec flag from an open fdinfo file, in one read: the kernel writes `pos`, then
/// `flags` (fs/proc/fd.c, `seq_show`), both within the first 64 bytes; whatever follows
/// (an epoll's every watched descriptor, an inotify's every watch) is not copied out, though
/// the kernel still formats it.
fn read_cloexec(fdinfo: OwnedFd) -> bool {
    let mut head = [0u8; 128];
    let Ok(read) = rustix::io::read(&fdinfo, &mut head) else { return false };
    let complete_lines = head[..read].iter().rposition(|b| *b == b'\n').map_or(0, |end| end + 1);
    std::str::from_utf8(&head[..complete_lines]).is_ok_and(parse_fdinfo_cloexec)
}

pub(crate) fn parse_fdinfo_cloexec(fdinfo: &str) -> bool {
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("flags:"))
        .and_then(|flags| u64::from_str_radix(flags.trim(), 8).ok())
        .is_some_and(|flags| flags & libc::O_CLOEXEC as u64 != 0)
}

/// Every open descriptor of `pid` numbered `from` or above, up to `max` of them, with its kind,
/// detail and close-on-exec flag, and the number to read on from (`None`: none is left).
/// `sockets` supplies family/type/protocol by inode, when known. The flag is read only where
/// `flag_wanted(fd)` (false elsewhere): its fdinfo (an open, a read and a close) is most of
/// what a descriptor costs, and reconciliation needs it only for the descriptors it adds.
pub(crate) fn observe_fds(
    root: &Path,
    pid: u32,
    sockets: Option<&SocketTable>,
    (from, max): (i32, usize),
    flag_wanted: &dyn Fn(i32) -> bool,
) -> io::Result<FdChunk> {
    debug_assert!(max > 0, "a read of none never ends");
    let process = root.join(pid.to_string());
    let (targets, next) = link_targets(&process.join("fd"), from, max)?;
    // A listing ends early, as if complete, when the process is reaped meanwhile (getdents'
    // ENOENT is the end to rustix's Dir) and is empty while its main thread is a zombie (the
    // others may still hold descriptors: fs/proc/fd.c reads the leader's files, gone at its
    // exit). Neither is a view of what the process holds.
    if next.is_none() && !super::alive(root, pid) {
        return Err(io::ErrorKind::NotFound.into());
    }
    let mut fdinfo = None;
    let mut observed = BTreeMap::new();
    for (fd, target) in targets {
        let mut observed_fd = observe(root, pid, fd, &target, sockets);
        if flag_wanted(fd) {
            if fdinfo.is_none() {
                fdinfo = Some(rustix::fs::open(process.join("fdinfo"), DIRECTORY, Mode::empty())?);
            }
            observed_fd.cloexec = fdinfo.as_ref().is_some_and(|dir| {
                rustix::fs::openat(dir, fd.to_string(), OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
                    .is_ok_and(read_cloexec)
            });
        }
        observed.insert(fd, observed_fd);
    }
    Ok(FdChunk { fds: observed, next })
}

/// All of a process's descriptors, for [`observe_fds`].
#[cfg(test)]
pub(crate) const ALL_FDS: (i32, usize) = (0, usize::MAX);

/// Descriptors and their links' targets, by number.
type LinkTargets = Vec<(i32, FDTarget)>;

/// How /proc's directories are opened to read relative to them.
const DIRECTORY: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::CLOEXEC);

/// The descriptors numbered `from` or above in a /proc/PID/fd directory, up to `max` of them,
/// each with its link's target (one readlinkat each, relative to the directory), and the
/// number to read on from. procfs lists a process's descriptors in increasing order and takes
/// the directory's position as the next number to list plus 2 (fs/proc/fd.c,
/// `proc_readfd_common`): a read that starts at `from` seeks there, so a process is read in
/// chunks, each from a directory opened anew, and no descriptor is read twice or skipped for
/// the chunks. (procfs's `Process::fd` also opens, stats and closes each link, for a mode we
/// do not use: four system calls where one does.) A descriptor closed while the directory is
/// read is simply not there. The listing owns the directory's descriptor (`Dir::new`; its
/// `read_from` would open the directory a second time) and the links are read relative to it:
/// readlinkat does not move the listing's position.
fn link_targets(dir: &Path, from: i32, max: usize) -> io::Result<(LinkTargets, Option<i32>)> {
    let mut entries = Dir::new(rustix::fs::open(dir, DIRECTORY, Mode::empty())?)?;
    if from > 0 {
        entries.seek(i64::from(from) + 2)?;
    }
    let mut targets = Vec::new();
    let mut listed = 0;
    while let Some(entry) = entries.read() {
        let entry = entry?;
        let Some(fd) = entry.file_name().to_str().ok().and_then(|name| name.parse::<i32>().ok()) else {
            continue;
        };
        // procfs lists from the position sought (above): nothing below it comes again.
        debug_assert!(fd >= from, "fd {fd} listed again from {from}");
        if listed == max {
            return Ok((targets, Some(fd)));
        }
        listed += 1;
        let Ok(link) = rustix::fs::readlinkat(entries.fd()?, entry.file_name(), Vec::new()) else { continue };
        // As procfs reads it: a path that is not UTF-8 lossily.
        let Ok(target) = FDTarget::from_str(&link.to_string_lossy()) else { continue };
        targets.push((fd, target));
    }
    Ok((targets, None))
}

/// `/proc/PID/fd/FD` under `root`.
fn fd_path(root: &Path, pid: u32, fd: i32) -> std::path::PathBuf {
    root.join(pid.to_string()).join("fd").join(fd.to_string())
}

/// One descriptor of `pid`, if it is open.
pub(crate) fn observe_fd(
    root: &Path,
    pid: u32,
    fd: i32,
    sockets: Option<&SocketTable>,
) -> Option<ObservedFd> {
    let link = fs::read_link(fd_path(root, pid, fd)).ok()?;
    let target: FDTarget = link.to_str()?.parse().ok()?;
    let observed = observe(root, pid, fd, &target, sockets);
    Some(ObservedFd { cloexec: cloexec(root, pid, fd), ..observed })
}

/// A descriptor's kind and detail from its link (the flag left false).
fn observe(root: &Path, pid: u32, fd: i32, target: &FDTarget, sockets: Option<&SocketTable>) -> ObservedFd {
    let link = fd_path(root, pid, fd);
    let kind = classify(target, || stat_mode(&link));
    let detail = match target {
        // Whatever a path reached (a file, directory, device, FIFO, a socket file held by an
        // O_PATH descriptor), as an open of it seen under tracing is named; but a memfd procfs
        // did not recognise (`classify`), whose path is its name.
        FDTarget::Path(path) if kind != FdKind::Memfd => {
            FdDetail::Path(path.as_os_str().as_encoded_bytes().to_vec().into_boxed_slice())
        }
        FDTarget::MemFD(name) => FdDetail::Name(name.as_bytes().to_vec().into_boxed_slice()),
        FDTarget::Socket(inode) => sockets
            .and_then(|s| s.get(*inode))
            .map(|s| FdDetail::Socket { family: s.family, sock_type: s.sock_type, protocol: s.protocol })
            .unwrap_or_default(),
        _ => FdDetail::None,
    };
    ObservedFd { kind, detail, cloexec: false }
}

/// Bytes allocated to the file behind a descriptor (st_blocks): what a memfd or a deleted file
/// pins while it stays open.
pub(crate) fn allocated_bytes(root: &Path, pid: u32, fd: i32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let metadata = fs::metadata(fd_path(root, pid, fd)).ok()?;
    Some(metadata.blocks() * 512)
}

/// What a descriptor of `pid` names now, as /proc gives it: a path (as the reader's root sees
/// it, its bytes as they are) or a memfd's name; None for anything else.
pub(crate) fn detail_now(root: &Path, pid: u32, fd: i32) -> Option<FdDetail> {
    use std::os::unix::ffi::OsStringExt as _;
    let link = fs::read_link(fd_path(root, pid, fd)).ok()?;
    match FDTarget::from_str(&link.to_string_lossy()).ok()? {
        FDTarget::MemFD(name) => Some(FdDetail::Name(name.into_bytes().into_boxed_slice())),
        FDTarget::Path(_) => Some(FdDetail::Path(link.into_os_string().into_vec().into_boxed_slice())),
        _ => None,
    }
}

/// The inode behind a socket descriptor (for joining with the socket tables at report time).
pub(crate) fn socket_inode(root: &Path, pid: u32, fd: i32) -> Option<u64> {
    let link = fs::read_link(fd_path(root, pid, fd)).ok()?;
    let link = link.to_str()?;
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
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

    /// A FIFO open in this process, as /proc shows it: a pipe, named by its path.
    #[test]
    fn a_fifo_is_a_pipe_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("queue");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, Mode::RUSR | Mode::WUSR, 0)
            .unwrap();
        // Read and write: the open does not wait for a writer.
        let file = fs::OpenOptions::new().read(true).write(true).open(&fifo).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        let observed = observe_fd(Path::new("/proc"), std::process::id(), fd, None).unwrap();
        assert_eq!(observed.kind, FdKind::Pipe);
        let path = fifo.as_os_str().as_encoded_bytes().to_vec().into_boxed_slice();
        assert_eq!(observed.detail, FdDetail::Path(path));
    }

    /// A socket file held by an O_PATH descriptor, as /proc shows it: a socket, named by its
    /// path, as the open seen under tracing names it (sys/decode.rs).
    #[test]
    fn a_socket_file_held_by_o_path_is_a_socket_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("control.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let held = rustix::fs::open(&socket, OFlags::PATH | OFlags::CLOEXEC, Mode::empty()).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&held);
        let observed = observe_fd(Path::new("/proc"), std::process::id(), fd, None).unwrap();
        assert_eq!(observed.kind, FdKind::Socket);
        let path = socket.as_os_str().as_encoded_bytes().to_vec().into_boxed_slice();
        assert_eq!(observed.detail, FdDetail::Path(path));
    }

    #[test]
    fn fdinfo_cloexec_flag() {
        assert!(parse_fdinfo_cloexec("pos:\t0\nflags:\t02100002\nmnt_id:\t25\n"));
        assert!(!parse_fdinfo_cloexec("pos:\t0\nflags:\t0100002\nmnt_id:\t25\n"));
        assert!(!parse_fdinfo_cloexec("garbage"));
    }

    #[test]
    fn the_flag_is_read_from_the_head_of_a_long_fdinfo() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("9/fdinfo")).unwrap();
        // An epoll's fdinfo: a line per watched descriptor after the flags.
        let watched: String =
            (0..500).map(|fd| format!("tfd: {fd:8} events:       19 data: {fd:16x}\n")).collect();
        let head = "pos:\t18446744073709551615\nflags:\t02000002\nmnt_id:\t16\nino:\t1057\n";
        fs::write(dir.path().join("9/fdinfo/4"), format!("{head}{watched}")).unwrap();
        fs::write(dir.path().join("9/fdinfo/5"), format!("pos:\t0\nflags:\t02\n{watched}")).unwrap();
        assert!(cloexec(dir.path(), 9, 4));
        assert!(!cloexec(dir.path(), 9, 5));
        assert!(!cloexec(dir.path(), 9, 6), "none: not open");
    }
}
