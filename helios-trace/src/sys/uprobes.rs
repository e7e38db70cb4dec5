//! Uprobes made after the tracer gave up the capability for them: by a process of its own that
//! keeps that one capability and does nothing else (ARCHITECTURE.md, "Handles").
//!
//! Making a uprobe perf event needs CAP_SYS_ADMIN since Linux 6.16 ("perf: Revert to requiring
//! CAP_SYS_ADMIN for uprobes", also in the stable kernels), CAP_PERFMON from 5.8 before it
//! (kernel/events/core.c, `perf_uprobe_event_init`). The tracer drops both once attached
//! (sys/privileges.rs), yet Node.js files are found all session long (a pod started since runs a
//! node of its own), and each needs libuv's uprobes (helios-trace-ebpf/src/libuv.rs). So before
//! the programs load, the tracer starts itself again as the **uprobe maker**
//! (`helios-trace uprobe-maker`, hidden): a process that keeps only CAP_SYS_ADMIN and
//! CAP_PERFMON (of those it has), sets no_new_privs, leaves the terminal's process group (a
//! Ctrl-C that `run` passes on to its command must not end it), dies with the tracer, and
//! answers one kind of request on a Unix socket pair: a file's descriptor and an offset in it →
//! a uprobe perf event's descriptor (or an errno). The tracer itself gives the event its program
//! (`attach_program`: PERF_EVENT_IOC_SET_BPF needs no capability beyond holding both
//! descriptors, kernel/events/core.c `perf_ioctl`), and holds the events: they go when it exits,
//! as its other links do.
//!
//! Threat model: the maker reads two sysfs files and nothing of the traced processes; its input
//! is 16 bytes and a descriptor per request, from the tracer alone: it serves a socket whose peer
//! is its parent running the same executable (so a user given a file-capable copy cannot start
//! one for themselves). The tracer could make it put uprobes — breakpoints — in any file it can
//! pass, at any offset: enough to crash processes running that file (a breakpoint inside an
//! instruction). What it buys is CAP_SYS_ADMIN kept out of the process that parses binaries and
//! reads other processes' memory; an attacker with code execution in the tracer is not stopped
//! by it (the tracer's CAP_SYS_PTRACE reaches the maker, as any process).
//!
//! Written by hand on rustix and aya-obj's kernel bindings: aya makes uprobes from a program it
//! loaded itself in the same process, which the maker has not.
use std::{
    ffi::CString,
    fs,
    io::{self, IoSlice, IoSliceMut},
    mem::MaybeUninit,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::process::CommandExt as _,
    },
    path::Path,
    process::{Child, Command, ExitCode, Stdio},
};

use aya_obj::generated::{
    PERF_EVENT_IOC_ENABLE, PERF_EVENT_IOC_SET_BPF, PERF_FLAG_FD_CLOEXEC, perf_event_attr,
};
use caps::Capability;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType, recvmsg, sendmsg, socketpair,
};

/// The hidden subcommand that runs the maker (cli/mod.rs).
pub const MAKER_COMMAND: &str = "uprobe-maker";

/// What the maker keeps of its capabilities: what making a uprobe needs, on kernels before
/// and since 6.16.
const MAKER_CAPABILITIES: [Capability; 2] = [Capability::CAP_SYS_ADMIN, Capability::CAP_PERFMON];

/// A request: the probe's offset in the file (u64), 1 for a return probe (u8), padding.
const REQUEST_LEN: usize = 16;

/// What the maker says once it holds only what it keeps, before its first request.
const READY: [u8; 1] = [1];

/// The maker, seen from the tracer.
pub(crate) struct UprobeMaker {
    socket: OwnedFd,
    child: Child,
}

impl UprobeMaker {
    /// Start the maker: this executable again (`/proc/self/exe`, whatever it is named or
    /// wherever it was moved), its stdin the other end of a socket pair, in a process group of
    /// its own; returns once it says it is ready. Before privileges are dropped: it inherits
    /// what the tracer has.
    pub(crate) fn spawn() -> io::Result<UprobeMaker> {
        let (ours, theirs) =
            socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?;
        let child = Command::new("/proc/self/exe")
            .arg0("helios-trace")
            .arg(MAKER_COMMAND)
            .process_group(0)
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .spawn()?;
        let mut maker = UprobeMaker { socket: ours, child };
        let mut ready = [0u8; READY.len()];
        match receive(maker.socket.as_fd(), &mut ready)? {
            (1, None) if ready == READY => Ok(maker),
            _ => {
                let status = maker.child.wait()?;
                Err(io::Error::other(format!("the uprobe maker ended at its start ({status})")))
            }
        }
    }

    /// Its pid, which the programs never trace (as the tracer's own).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A uprobe perf event on `file` (any descriptor of it, O_PATH too) at `offset`, a return
    /// probe when `retprobe`: enabled at once, with no program until the tracer gives it one.
    pub(crate) fn make(&self, file: BorrowedFd<'_>, offset: u64, retprobe: bool) -> io::Result<OwnedFd> {
        request(self.socket.as_fd(), file, offset, retprobe)
    }
}

/// Ask the maker at the other end of `socket` for a uprobe perf event (`UprobeMaker::make`).
fn request(socket: BorrowedFd<'_>, file: BorrowedFd<'_>, offset: u64, retprobe: bool) -> io::Result<OwnedFd> {
    let mut request = [0u8; REQUEST_LEN];
    request[..8].copy_from_slice(&offset.to_le_bytes());
    request[8] = u8::from(retprobe);
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let files = [file];
    if !control.push(SendAncillaryMessage::ScmRights(&files)) {
        return Err(io::Error::other("control message too large"));
    }
    sendmsg(socket, &[IoSlice::new(&request)], &mut control, SendFlags::NOSIGNAL)?;
    let mut reply = [0u8; 4];
    let (len, event) = receive(socket, &mut reply)?;
    if len != reply.len() {
        return Err(io::Error::other("the uprobe maker has gone"));
    }
    match (i32::from_le_bytes(reply), event) {
        (0, Some(event)) => Ok(event),
        (0, None) => Err(io::Error::other("the uprobe maker sent no event")),
        (errno, _) => Err(io::Error::from_raw_os_error(errno)),
    }
}

impl Drop for UprobeMaker {
    /// It holds nothing of its own (the events are the tracer's): ended and reaped.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Give a uprobe perf event its program and enable it (include/uapi/linux/perf_event.h).
pub(crate) fn attach_program(event: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: ioctls on a descriptor we hold, with an int argument (the program's descriptor)
    // and none.
    let set = unsafe { libc::ioctl(event.as_raw_fd(), PERF_EVENT_IOC_SET_BPF as _, program.as_raw_fd()) };
    if set < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::ioctl(event.as_raw_fd(), PERF_EVENT_IOC_ENABLE as _, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One message and the descriptor it carries, if any.
fn receive(socket: BorrowedFd<'_>, buffer: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let message = recvmsg(socket, &mut [IoSliceMut::new(buffer)], &mut control, RecvFlags::CMSG_CLOEXEC)?;
    let mut received = None;
    for part in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = part {
            for fd in fds {
                received.get_or_insert(fd);
            }
        }
    }
    Ok((message.bytes, received))
}

/// The maker's process: `helios-trace uprobe-maker`, its stdin the socket.
pub fn serve() -> ExitCode {
    match maker() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("helios-trace uprobe maker: {err}");
            ExitCode::FAILURE
        }
    }
}

fn maker() -> io::Result<()> {
    // Gone with the tracer (its socket's end says so too, should it go before this is set);
    // `keep_only` sets no_new_privs (it execs nothing anyway).
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    let _ = rustix::thread::set_name(c"helios-uprobes");
    // SAFETY: the tracer started us with the socket as stdin (UprobeMaker::spawn); we own it.
    let socket = unsafe { OwnedFd::from_raw_fd(0) };
    started_by_the_tracer(socket.as_fd())?;
    crate::sys::privileges::keep_only(&MAKER_CAPABILITIES).map_err(io::Error::other)?;
    sendmsg(&socket, &[IoSlice::new(&READY)], &mut SendAncillaryBuffer::default(), SendFlags::NOSIGNAL)?;
    let pmu = UprobePmu::read(Path::new("/sys/bus/event_source/devices/uprobe"));
    answer_requests(socket.as_fd(), &|file, offset, retprobe| match &pmu {
        Ok(pmu) => pmu.open(file, offset, retprobe),
        Err(err) => Err(io::Error::from_raw_os_error(err.raw_os_error().unwrap_or(libc::ENOENT))),
    })
}

/// The socket's other end is our parent's, and our parent runs this executable: a tracer that
/// started us (`UprobeMaker::spawn`), not a user who ran the hidden subcommand themselves
/// (with a copy of the binary given file capabilities, say). A socket pair's peer credentials
/// are its creator's (net/unix/af_unix.c, `unix_socketpair`).
fn started_by_the_tracer(socket: BorrowedFd<'_>) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let parent = rustix::process::getppid();
    let peer = rustix::net::sockopt::socket_peercred(socket)
        .map_err(|e| io::Error::other(format!("not started by helios-trace: stdin is not its socket ({e})")))?
        .pid;
    let same_file = |a: fs::Metadata, b: fs::Metadata| a.dev() == b.dev() && a.ino() == b.ino();
    let exe = |pid: &str| fs::metadata(format!("/proc/{pid}/exe"));
    let ours = match parent {
        Some(parent) if parent == peer => same_file(exe("self")?, exe(&parent.as_raw_nonzero().to_string())?),
        _ => false,
    };
    if ours {
        Ok(())
    } else {
        Err(io::Error::other(
            "not started by helios-trace: the uprobe maker serves only the tracer that starts it",
        ))
    }
}

/// Answer each request on `socket` with what `open` makes of it, until the other end closes.
fn answer_requests(
    socket: BorrowedFd<'_>,
    open: &dyn Fn(BorrowedFd<'_>, u64, bool) -> io::Result<OwnedFd>,
) -> io::Result<()> {
    loop {
        let mut request = [0u8; REQUEST_LEN];
        let (len, file) = receive(socket, &mut request)?;
        if len == 0 {
            return Ok(()); // the tracer closed its end
        }
        let made = match file {
            Some(file) if len == REQUEST_LEN => {
                let offset = u64::from_le_bytes(request[..8].try_into().expect("8 bytes"));
                open(file.as_fd(), offset, request[8] == 1)
            }
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        let (errno, event) = match &made {
            Ok(event) => (0, Some(event.as_fd())),
            Err(err) => (err.raw_os_error().unwrap_or(libc::EIO), None),
        };
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        let events: Vec<BorrowedFd<'_>> = event.into_iter().collect();
        if !events.is_empty() {
            control.push(SendAncillaryMessage::ScmRights(&events));
        }
        sendmsg(socket, &[IoSlice::new(&errno.to_le_bytes())], &mut control, SendFlags::NOSIGNAL)?;
    }
}

/// The kernel's uprobe PMU: its perf type and the config bit of a return probe, as sysfs
/// publishes them (kernel/events/core.c, `perf_uprobe` and its `format/retprobe`).
struct UprobePmu {
    perf_type: u32,
    retprobe_bit: u32,
}

impl UprobePmu {
    fn read(dir: &Path) -> io::Result<UprobePmu> {
        let perf_type = fs::read_to_string(dir.join("type"))?.trim().parse().map_err(io::Error::other)?;
        // "config:0"
        let format = fs::read_to_string(dir.join("format/retprobe"))?;
        let retprobe_bit = format
            .trim()
            .strip_prefix("config:")
            .and_then(|bit| bit.parse().ok())
            .ok_or_else(|| io::Error::other(format!("uprobe retprobe format {format:?}")))?;
        Ok(UprobePmu { perf_type, retprobe_bit })
    }

    /// perf_event_open(2) of a uprobe on every process (pid -1, CPU 0: a uprobe fires on any
    /// CPU, the event's CPU only says where its counts are kept) of the file `file` refers to.
    fn open(&self, file: BorrowedFd<'_>, offset: u64, retprobe: bool) -> io::Result<OwnedFd> {
        // The kernel resolves the path when the probe is made: our own link to the file.
        let path = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).expect("no NUL");
        // SAFETY: perf_event_attr is plain data; all zero is its default.
        let mut attr: perf_event_attr = unsafe { std::mem::zeroed() };
        attr.size = size_of::<perf_event_attr>() as u32;
        attr.type_ = self.perf_type;
        attr.config = if retprobe { 1 << self.retprobe_bit } else { 0 };
        attr.__bindgen_anon_3.config1 = path.as_ptr() as u64; // uprobe_path
        attr.__bindgen_anon_4.config2 = offset; // probe_offset
        let (pid, cpu, group): (libc::c_int, libc::c_int, libc::c_int) = (-1, 0, -1);
        let flags = libc::c_ulong::from(PERF_FLAG_FD_CLOEXEC);
        // SAFETY: the attr and the path it points to live across the call.
        let fd = unsafe {
            libc::syscall(libc::SYS_perf_event_open, &attr as *const perf_event_attr, pid, cpu, group, flags)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor the kernel just gave us.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    /// A request carries the file's descriptor, the offset and the kind of probe; the answer
    /// brings back the event's descriptor, or the errno that refused it. (The maker's
    /// perf_event_open is the kernel tests': here a stand-in answers with the file itself.)
    #[test]
    fn a_request_carries_the_file_and_offset_and_brings_back_the_event_or_the_errno() {
        let (ours, theirs) =
            socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None).unwrap();
        let maker = std::thread::spawn(move || {
            let asked = std::sync::Mutex::new(Vec::new());
            let answered = answer_requests(theirs.as_fd(), &|file, offset, retprobe| {
                asked.lock().unwrap().push((offset, retprobe));
                match offset {
                    0xbad => Err(io::Error::from_raw_os_error(libc::EACCES)),
                    _ => Ok(rustix::io::fcntl_dupfd_cloexec(file, 0)?),
                }
            });
            (answered.map_err(|e| e.to_string()), asked.into_inner().unwrap())
        });
        let file = tempfile::tempfile().unwrap();
        let event = request(ours.as_fd(), file.as_fd(), 0x1234_5678_9abc, true).unwrap();
        let (event, file) = (std::fs::File::from(event), &file);
        assert_eq!(event.metadata().unwrap().ino(), file.metadata().unwrap().ino(), "the file went there");
        let refused = request(ours.as_fd(), file.as_fd(), 0xbad, false).unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::EACCES));
        drop(ours);
        let (answered, asked) = maker.join().unwrap();
        assert_eq!(answered, Ok(()), "the maker ends when the tracer's end closes");
        assert_eq!(asked, [(0x1234_5678_9abc, true), (0xbad, false)]);
    }

    #[test]
    fn the_uprobe_pmu_is_read_as_sysfs_publishes_it() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("format")).unwrap();
        fs::write(dir.path().join("type"), "9\n").unwrap();
        fs::write(dir.path().join("format/retprobe"), "config:0\n").unwrap();
        let pmu = UprobePmu::read(dir.path()).unwrap();
        assert_eq!((pmu.perf_type, pmu.retprobe_bit), (9, 0));
        fs::write(dir.path().join("format/retprobe"), "config1:0-63\n").unwrap();
        assert!(UprobePmu::read(dir.path()).is_err(), "not a config bit");
    }
}
