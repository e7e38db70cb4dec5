//! What /proc says (ARCHITECTURE.md, "Where each stage lives"): process ids, names, cgroups and
//! usage here; the descriptors a process has open (fds.rs), socket tables (sockets.rs), limits
//! and memory (resources.rs), and a process's image: its maps, the files it maps, its memory
//! (image.rs). Every function takes the procfs root as a parameter so tests can point it at a
//! directory of their own.
use std::{fs, path::Path};

use procfs::process::Process;

use crate::model::{fd::printable, resources::Usage};

pub(crate) mod fds;
pub(crate) mod image;
pub(crate) mod pause;
pub(crate) mod resources;
pub(crate) mod sockets;

/// A handle on a process (pidfd_open(2)) that no later process with its pid can be taken for:
/// for duplicating its descriptors (sys/sockdiag.rs) and signalling it (pause.rs). The pid is
/// of the tracer's pid namespace, which under a DaemonSet is the host's: `hostPID`.
pub(crate) fn pidfd(pid: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: pidfd_open takes a pid and flags, and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created and is ours alone.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Numeric entries of the procfs root: the pids.
pub(crate) fn pids(root: &Path) -> Vec<u32> {
    let Ok(entries) = fs::read_dir(root) else { return Vec::new() };
    let mut pids: Vec<u32> = entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    pids.sort_unstable();
    pids
}

/// The thread ids of a process (/proc/PID/task); empty when it is gone.
pub(crate) fn tids(root: &Path, pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir(root.join(pid.to_string()).join("task")) else { return Vec::new() };
    entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

/// The thread ids of a process as its own pid namespace numbers them: the last `NSpid` entry
/// of /proc/PID/task/TID/status (fs/proc/array.c, task_state: one id per pid namespace from
/// the procfs mount's down to the task's own). Empty when the process is gone.
pub(crate) fn ns_tids(root: &Path, pid: u32) -> Vec<u32> {
    let task = root.join(pid.to_string()).join("task");
    tids(root, pid)
        .into_iter()
        .filter_map(|tid| own_ns_id(&fs::read_to_string(task.join(tid.to_string()).join("status")).ok()?))
        .collect()
}

/// A process's id in its own pid namespace (the last `NSpid` entry of /proc/PID/status).
pub(crate) fn ns_pid(root: &Path, pid: u32) -> Option<u32> {
    own_ns_id(&fs::read_to_string(root.join(pid.to_string()).join("status")).ok()?)
}

/// The innermost id of a status file's `NSpid` line.
fn own_ns_id(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().next_back()?.parse().ok()
}

/// The pid namespace of a process: the device and inode of /proc/PID/ns/pid, the device in
/// the kernel's own `dev_t` encoding (`MAJOR << 20 | MINOR`, include/linux/kdev_t.h), which is
/// what bpf_get_ns_current_pid_tgid compares (ns_match in fs/nsfs.c); stat(2) answers the
/// userspace encoding.
pub(crate) fn pid_namespace(root: &Path, pid: u32) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = fs::metadata(root.join(pid.to_string()).join("ns/pid")).ok()?;
    Some((kernel_dev(meta.dev()), meta.ino()))
}

/// A stat(2) device number in the kernel's internal encoding.
fn kernel_dev(dev: u64) -> u64 {
    ((libc::major(dev) as u64) << 20) | libc::minor(dev) as u64
}

pub(crate) fn exists(root: &Path, pid: u32) -> bool {
    root.join(pid.to_string()).is_dir()
}

/// Whether `pid` still runs: its /proc entry is there and it is not a zombie (`Z`) or dead
/// (`X`): what /proc says of it is then about the live process, not the remains of an exit.
pub(crate) fn alive(root: &Path, pid: u32) -> bool {
    fs::read_to_string(root.join(pid.to_string()).join("stat"))
        .ok()
        .and_then(|stat| pause::state_of(&stat))
        .is_some_and(|state| !matches!(state, 'Z' | 'X'))
}

/// The command name, printable (a process sets its own: newlines and invalid UTF-8 included).
pub(crate) fn comm(root: &Path, pid: u32) -> Option<String> {
    let text = fs::read(root.join(pid.to_string()).join("comm")).ok()?;
    let name = text.strip_suffix(b"\n").unwrap_or(&text);
    Some(printable(name, COMM_CHARS))
}

/// The processes whose name (their main thread's, raw bytes as /proc/PID/comm has them) is one
/// of `comms` (`helios_trace_common::comm_key`) or whose real uid is one of `uids`: the
/// `--comm` and `--uid` targets already running at the start.
pub(crate) fn matching(root: &Path, comms: &[[u8; 16]], uids: &[u32]) -> Vec<u32> {
    if comms.is_empty() && uids.is_empty() {
        return Vec::new();
    }
    let named = |pid: u32| {
        let Ok(text) = fs::read(root.join(pid.to_string()).join("comm")) else { return false };
        let name = text.strip_suffix(b"\n").unwrap_or(&text);
        helios_trace_common::comm_key(name).is_some_and(|key| comms.contains(&key))
    };
    let user = |pid: u32| {
        let Ok(status) = fs::read_to_string(root.join(pid.to_string()).join("status")) else { return false };
        // `Uid:` real, effective, saved, filesystem (fs/proc/array.c, task_state).
        let real =
            status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|ids| ids.split_whitespace().next());
        real.and_then(|uid| uid.parse().ok()).is_some_and(|uid: u32| uids.contains(&uid))
    };
    pids(root).into_iter().filter(|&pid| named(pid) || user(pid)).collect()
}

/// Command names are at most 15 bytes (TASK_COMM_LEN - 1).
const COMM_CHARS: usize = 15;
/// Command lines can be as long as the arguments allow: cut (with a marker) for reports.
const CMDLINE_CHARS: usize = 1024;

/// The command line, arguments joined by spaces, printable and cut at `CMDLINE_CHARS`; `None`
/// for kernel threads and zombies.
pub(crate) fn cmdline(root: &Path, pid: u32) -> Option<String> {
    let raw = fs::read(root.join(pid.to_string()).join("cmdline")).ok()?;
    let args: Vec<&[u8]> = raw.split(|&b| b == 0).filter(|a| !a.is_empty()).collect();
    (!args.is_empty()).then(|| printable(&args.join(&b' '), CMDLINE_CHARS))
}

/// `/proc/PID/cgroup`: one `hierarchy-id:controllers:path` line per hierarchy (see
/// cgroups(7)); model/workload.rs reads the workload out of it.
pub(crate) fn cgroup(root: &Path, pid: u32) -> Option<String> {
    fs::read_to_string(root.join(pid.to_string()).join("cgroup")).ok()
}

/// Whether the kernel counts its BPF programs' runs and run time (`sysctl kernel.bpf_stats_enabled`,
/// off by default: it costs a little per run of every program).
pub(crate) fn bpf_stats_enabled(root: &Path) -> bool {
    std::fs::read_to_string(root.join("sys/kernel/bpf_stats_enabled")).is_ok_and(|v| v.trim() == "1")
}

/// What a process costs now (the exporter's own `process_*` metrics).
pub(crate) fn usage(root: &Path, pid: u32) -> Option<Usage> {
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    #[test]
    fn a_zombie_or_a_reaped_process_is_not_alive() {
        let root = tempfile::tempdir().unwrap();
        for (pid, stat) in [(10, "10 (a (b) c) S 1 10"), (11, "11 (python3) Z 1 11"), (12, "12 (x) X 1 12")] {
            std::fs::create_dir(root.path().join(pid.to_string())).unwrap();
            std::fs::write(root.path().join(pid.to_string()).join("stat"), stat).unwrap();
        }
        let alive = |pid| super::alive(root.path(), pid);
        assert_eq!((alive(10), alive(11), alive(12), alive(13)), (true, false, false, false));
        assert!(super::alive(std::path::Path::new("/proc"), std::process::id()));
    }

    #[test]
    fn processes_match_by_name_and_by_real_uid() {
        let root = std::path::Path::new("/proc");
        let own = std::process::id();
        let name = std::fs::read(format!("/proc/{own}/comm")).unwrap();
        let key = helios_trace_common::comm_key(name.strip_suffix(b"\n").unwrap()).unwrap();
        assert!(super::matching(root, &[key], &[]).contains(&own));
        // SAFETY: no arguments.
        let uid = unsafe { libc::getuid() };
        assert!(super::matching(root, &[], &[uid]).contains(&own));
        let nobody = helios_trace_common::comm_key(b"no-such-name").unwrap();
        assert!(!super::matching(root, &[nobody], &[]).contains(&own));
        assert!(super::matching(root, &[], &[]).is_empty(), "no filter: no targets");
    }

    use super::{
        fds::{ALL_FDS, observe_fd, observe_fds, socket_inode},
        sockets::SocketTable,
        *,
    };
    use std::collections::BTreeMap;

    use crate::model::{
        fd::{FdDetail, FdKind},
        fdtable::{FdChunk, ObservedFd},
    };

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
        fs::write(p.join("stat"), "77 (leaky) S 1 77 77 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0\n").unwrap();
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
        let fds = observe_fds(root, 77, Some(&sockets), ALL_FDS, &|_| true).unwrap().fds;
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
        assert!(observe_fds(root, 78, None, ALL_FDS, &|_| true).is_err());
        // The flag read only where asked for (reconciliation: what it would add).
        let unread = observe_fds(root, 77, None, ALL_FDS, &|fd| fd != 3).unwrap().fds;
        assert!(!unread[&3].cloexec);
        assert_eq!(unread[&3].kind, FdKind::File);
        assert_eq!(observe_fd(root, 77, 3, None).map(|o| o.cloexec), Some(true));
        // A zombie's listing (empty, or cut short at its reaping) is no view of what it holds.
        fs::write(root.join("77/stat"), "77 (leaky) Z 1 77 77 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0\n")
            .unwrap();
        assert!(observe_fds(root, 77, None, ALL_FDS, &|_| true).is_err());
    }

    /// The real procfs, read in chunks: every descriptor once, in order, as a whole read has
    /// them (the directory's position is a descriptor number: fs/proc/fd.c).
    #[test]
    fn a_process_read_in_chunks_is_read_whole() {
        let root = Path::new("/proc");
        let own = std::process::id();
        // A few dozen descriptors of a file of the test's own, with holes.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("held");
        fs::write(&path, "x").unwrap();
        let opened: Vec<fs::File> = (0..40).map(|_| fs::File::open(&path).unwrap()).collect();
        let _held: Vec<fs::File> =
            opened.into_iter().enumerate().filter(|(i, _)| i % 3 != 0).map(|(_, f)| f).collect();
        // Other tests' threads open and close meanwhile: compared where the test's own are.
        let detail = FdDetail::Path(path.as_os_str().as_encoded_bytes().to_vec().into_boxed_slice());
        let held = |fds: &BTreeMap<i32, ObservedFd>| {
            fds.iter().filter(|(_, o)| o.detail == detail).map(|(fd, _)| *fd).collect::<Vec<i32>>()
        };
        let whole = observe_fds(root, own, None, ALL_FDS, &|_| true).unwrap();
        assert_eq!(whole.next, None);
        assert_eq!(held(&whole.fds).len(), 26);
        for max in [1, 7, 26] {
            let (mut read, mut from) = (BTreeMap::new(), Some(0));
            while let Some(at) = from {
                let FdChunk { fds: chunk, next } =
                    observe_fds(root, own, None, (at, max), &|_| true).unwrap();
                assert!(chunk.len() <= max);
                assert!(chunk.keys().all(|fd| *fd >= at && next.is_none_or(|next| fd < &next)));
                read.extend(chunk);
                from = next;
            }
            assert_eq!(held(&read), held(&whole.fds), "chunks of {max}");
        }
    }

    #[test]
    fn thread_ids_of_the_process_own_pid_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let task = dir.path().join("900/task");
        // A process two namespaces down (host 900 and 901, 12 and 13 one level down, 1 and 2
        // in its own), as fs/proc/array.c writes NSpid.
        for (tid, ns) in [(900, "900\t12\t1"), (901, "901\t13\t2")] {
            fs::create_dir_all(task.join(tid.to_string())).unwrap();
            let status = format!("Name:\tpython3\nTgid:\t900\nNSpid:\t{ns}\nNSsid:\t0\n");
            fs::write(task.join(tid.to_string()).join("status"), status).unwrap();
        }
        let mut ids = ns_tids(dir.path(), 900);
        ids.sort_unstable();
        assert_eq!(ids, vec![1, 2]);
        // On the host, one entry: the id itself.
        assert_eq!(own_ns_id("Pid:\t5\nNSpid:\t5\n"), Some(5));
        assert_eq!(own_ns_id("Pid:\t5\n"), None);
        assert!(ns_tids(dir.path(), 901).is_empty());
    }

    #[test]
    fn namespace_devices_in_the_kernel_encoding() {
        // nsfs is (0, 4) here: the same in both encodings; a device past 255 minors is not.
        assert_eq!(kernel_dev(libc::makedev(0, 4)), 4);
        assert_eq!(kernel_dev(libc::makedev(8, 300)), (8 << 20) | 300);
        // The running process's own namespace reads.
        let (dev, ino) = pid_namespace(Path::new("/proc"), std::process::id()).unwrap();
        assert!(ino > 0 && dev > 0);
    }
}
