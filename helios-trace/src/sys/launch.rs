//! Starting the command of `helios-trace run` so that it is traced from its first instruction:
//! the child is forked, tells us its pid, and waits at a gate (a pipe) before it execs. The
//! session puts the pid in the kernel's target map and attaches the programs, then opens the
//! gate: the exec and everything after it is traced. Under sudo, the command runs as the user
//! who invoked sudo (SUDO_UID, SUDO_GID, SUDO_USER), not as root.
use std::{
    ffi::{CString, OsStr, OsString},
    fs::File,
    io::{self, Read as _, Write as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
};

use anyhow::{Context as _, Result, anyhow};
use tokio::sync::{oneshot, watch};

/// The program a command names: a path (with a slash) or a name looked up in PATH.
pub(crate) fn resolve(program: &OsStr) -> Result<PathBuf, String> {
    which::which(program).map_err(|_| format!("cannot run {}: no such command", program.to_string_lossy()))
}

/// The executable the kernel will run for `program`: `program` itself, or for a script, the
/// interpreter of its `#!` line (one level, as the kernel's binfmt_script reads it: the first
/// word, then at most one argument), with `#!/usr/bin/env NAME` looked up in PATH. For
/// `helios-trace run -- app.py` or `-- gunicorn …` (a console script) that is the Python
/// interpreter the session can know before the exec (resolve/python, `offsets_before_exec`).
pub(crate) fn executable_image(program: &Path) -> PathBuf {
    let mut head = [0u8; 256];
    let read = File::open(program).and_then(|mut f| f.read(&mut head)).unwrap_or(0);
    match shebang(&head[..read]) {
        Some(Interpreter::Path(path)) => path,
        Some(Interpreter::Search(name)) => which::which(name).unwrap_or_else(|_| program.to_path_buf()),
        None => program.to_path_buf(),
    }
}

/// A script's interpreter, as its `#!` line names it.
#[derive(Debug, PartialEq, Eq)]
enum Interpreter {
    Path(PathBuf),
    /// `env NAME`: NAME, found in PATH.
    Search(OsString),
}

/// The interpreter of a script whose file starts with `head`, if it starts with `#!`.
fn shebang(head: &[u8]) -> Option<Interpreter> {
    let line = head.strip_prefix(b"#!")?;
    // The kernel reads the line up to its end or the end of the first 256 bytes.
    let line = &line[..line.iter().position(|&b| b == b'\n').unwrap_or(line.len())];
    let mut words = line.split(|&b| b == b' ' || b == b'\t').filter(|w| !w.is_empty());
    let interpreter = Path::new(OsStr::from_bytes(words.next()?));
    if interpreter.file_name() != Some(OsStr::new("env")) {
        return Some(Interpreter::Path(interpreter.to_path_buf()));
    }
    // env's options (-S splits the rest into words) and NAME=value assignments come first.
    let name = words.find(|w| !w.starts_with(b"-") && !w.contains(&b'='))?;
    Some(Interpreter::Search(OsStr::from_bytes(name).to_os_string()))
}

/// The user to run the command as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Supplementary groups.
    pub(crate) groups: Vec<u32>,
    /// HOME, USER and LOGNAME for the command.
    pub(crate) env: Vec<(OsString, OsString)>,
}

/// Under sudo (we are root, SUDO_UID/SUDO_GID name someone else), the invoking user.
pub(crate) fn invoking_user(
    var: impl Fn(&str) -> Option<String>,
    euid: u32,
) -> Option<(u32, u32, Option<String>)> {
    if euid != 0 {
        return None;
    }
    let uid: u32 = var("SUDO_UID")?.parse().ok()?;
    let gid: u32 = var("SUDO_GID")?.parse().ok()?;
    (uid != 0).then(|| (uid, gid, var("SUDO_USER").filter(|u| !u.is_empty())))
}

impl Identity {
    /// The invoking user of a sudo session, with the groups and home the system gives them.
    pub(crate) fn from_sudo() -> Option<Identity> {
        // SAFETY: no arguments.
        let euid = unsafe { libc::geteuid() };
        let (uid, gid, user) = invoking_user(|name| std::env::var(name).ok(), euid)?;
        let groups = user.as_deref().map(|u| group_list(u, gid)).unwrap_or_else(|| vec![gid]);
        let mut env = Vec::new();
        if let Some((name, home)) = passwd_entry(uid) {
            env.push(("HOME".into(), home));
            env.push(("USER".into(), name.clone()));
            env.push(("LOGNAME".into(), name));
        }
        Some(Identity { uid, gid, groups, env })
    }
}

/// getgrouplist(3): the user's supplementary groups (gid included).
fn group_list(user: &str, gid: u32) -> Vec<u32> {
    let Ok(name) = CString::new(user) else { return vec![gid] };
    let mut count: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; count as usize];
        let asked = count;
        // SAFETY: `groups` has room for `count` entries; the call updates `count`.
        let n = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        if n >= 0 {
            groups.truncate(n as usize);
            return groups;
        }
        if count <= asked {
            return vec![gid];
        }
    }
}

/// The user's name and home directory from the passwd database.
fn passwd_entry(uid: u32) -> Option<(OsString, OsString)> {
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value to be overwritten.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: valid pointers; the strings point into `buffer`, read before it is dropped.
    let rc = unsafe { libc::getpwuid_r(uid, &mut entry, buffer.as_mut_ptr(), buffer.len(), &mut result) };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded: both are NUL-terminated strings in `buffer`.
    let (name, home) =
        unsafe { (std::ffi::CStr::from_ptr(entry.pw_name), std::ffi::CStr::from_ptr(entry.pw_dir)) };
    Some((OsStr::from_bytes(name.to_bytes()).into(), OsStr::from_bytes(home.to_bytes()).into()))
}

/// A forked command waiting at the gate.
pub(crate) struct Gated {
    pid: u32,
    gate: File,
    spawned: oneshot::Receiver<io::Result<()>>,
    status: watch::Receiver<Option<ExitStatus>>,
}

/// The command, running (it has exec'd).
#[derive(Clone)]
pub(crate) struct Running {
    pid: u32,
    status: watch::Receiver<Option<ExitStatus>>,
}

/// Fork `argv` (with `program` resolved) and leave it waiting before exec.
pub(crate) fn start_gated(program: PathBuf, argv: &[OsString], identity: Option<Identity>) -> Result<Gated> {
    let (pid_read, pid_write) = pipe().context("cannot create a pipe for the command")?;
    let (gate_read, gate_write) = pipe().context("cannot create a pipe for the command")?;
    let mut command = Command::new(program);
    command.arg0(&argv[0]).args(&argv[1..]);
    if let Some(identity) = &identity {
        command.envs(identity.env.iter().map(|(k, v)| (k, v)));
    }
    let gate_write_fd = gate_write.as_raw_fd();
    let pid_read_fd = pid_read.as_raw_fd();
    let pre_exec = move || -> io::Result<()> {
        // In the child, between fork and exec: async-signal-safe calls only.
        // Our copies of the parent's ends would keep the pipes open: closing them makes a
        // parent that dies before opening the gate an end of file, not a hang.
        // SAFETY: plain syscalls on descriptors this process owns; the buffers are valid.
        unsafe {
            libc::close(gate_write_fd);
            libc::close(pid_read_fd);
            let pid = libc::getpid().to_ne_bytes();
            if libc::write(pid_write.as_raw_fd(), pid.as_ptr().cast(), pid.len()) != pid.len() as isize {
                return Err(io::Error::last_os_error());
            }
            let mut byte = 0u8;
            if libc::read(gate_read.as_raw_fd(), (&raw mut byte).cast(), 1) != 1 {
                // The gate closed unopened: tracing could not start. (No allocation here.)
                return Err(io::Error::from_raw_os_error(libc::ECANCELED));
            }
            if let Some(id) = &identity
                && (libc::setgroups(id.groups.len(), id.groups.as_ptr()) != 0
                    || libc::setgid(id.gid) != 0
                    || libc::setuid(id.uid) != 0)
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the closure only makes async-signal-safe calls (see above).
    unsafe { command.pre_exec(pre_exec) };
    let (spawned_tx, spawned) = oneshot::channel();
    let (status_tx, status) = watch::channel(None);
    // Command::spawn returns only once the child has exec'd (or failed to), which is after we
    // open the gate: it runs on a thread of its own, which then waits for the exit.
    std::thread::Builder::new()
        .name("command".into())
        .spawn(move || match command.spawn() {
            Ok(mut child) => {
                // The child exec'd (with what it needed to change user); waiting needs nothing.
                crate::sys::privileges::drop_all_on_this_thread();
                let _ = spawned_tx.send(Ok(()));
                drop(command);
                if let Ok(exit) = child.wait() {
                    let _ = status_tx.send(Some(exit));
                }
            }
            Err(e) => {
                let _ = spawned_tx.send(Err(e));
            }
        })
        .context("cannot start a thread for the command")?;
    let mut pid = [0u8; 4];
    let mut pid_read = File::from(pid_read);
    pid_read.read_exact(&mut pid).context("the command did not start")?;
    Ok(Gated { pid: i32::from_ne_bytes(pid) as u32, gate: File::from(gate_write), spawned, status })
}

impl Gated {
    /// The command's pid (the same after exec).
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Let the command exec; fails when it cannot (then it has exited).
    pub(crate) async fn release(mut self) -> Result<Running> {
        self.gate.write_all(&[1]).context("cannot start the command")?;
        drop(self.gate);
        match self.spawned.await {
            Ok(Ok(())) => Ok(Running { pid: self.pid, status: self.status }),
            Ok(Err(e)) => Err(anyhow!("cannot run the command: {e}")),
            Err(_) => Err(anyhow!("cannot run the command")),
        }
    }
}

impl Running {
    /// Completes when the command has exited.
    pub(crate) async fn exited(mut self) -> ExitStatus {
        match self.status.wait_for(Option::is_some).await {
            Ok(status) => status.expect("waited for Some"),
            // The waiting thread is gone without a status: wait(2) failed, which only happens
            // if the child was reaped elsewhere. Nothing to wait for.
            Err(_) => std::future::pending().await,
        }
    }

    pub(crate) fn status(&self) -> Option<ExitStatus> {
        *self.status.borrow()
    }

    /// Send `signal` unless it has been reaped (its pid may then be someone else's).
    pub(crate) fn signal(&self, signal: i32) {
        if self.status().is_none() {
            // SAFETY: plain syscall.
            unsafe { libc::kill(self.pid as i32, signal) };
        }
    }
}

/// The exit code a shell would give: the status, or 128 + the signal that ended it.
pub(crate) fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.saturating_add(signal as u8),
        (None, None) => 1,
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: valid array of two; O_CLOEXEC so the command's image never sees them.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn the_invoking_user_comes_from_sudo() {
        let sudo = [("SUDO_UID", "1000"), ("SUDO_GID", "1001"), ("SUDO_USER", "alice")];
        assert_eq!(invoking_user(env(&sudo), 0), Some((1000, 1001, Some("alice".into()))));
        assert_eq!(invoking_user(env(&sudo), 1000), None, "not root: nothing to switch");
        assert_eq!(invoking_user(env(&[]), 0), None, "root without sudo stays root");
        assert_eq!(invoking_user(env(&[("SUDO_UID", "0"), ("SUDO_GID", "0")]), 0), None);
        assert_eq!(invoking_user(env(&[("SUDO_UID", "x"), ("SUDO_GID", "1")]), 0), None);
        assert_eq!(invoking_user(env(&[("SUDO_UID", "5"), ("SUDO_GID", "6")]), 0), Some((5, 6, None)));
    }

    #[test]
    fn exit_codes_like_a_shell() {
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGKILL)), 137);
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
    }

    #[test]
    fn a_script_runs_the_interpreter_its_shebang_names() {
        let path = |p: &str| Some(Interpreter::Path(PathBuf::from(p)));
        let search = |n: &str| Some(Interpreter::Search(OsString::from(n)));
        assert_eq!(shebang(b"#!/usr/bin/python3\nimport os\n"), path("/usr/bin/python3"));
        assert_eq!(shebang(b"#! /usr/bin/python3.11 -u\n"), path("/usr/bin/python3.11"));
        assert_eq!(shebang(b"#!/usr/bin/env python3\n"), search("python3"));
        assert_eq!(shebang(b"#!/usr/bin/env -S PYTHONUNBUFFERED=1 python3 -u\n"), search("python3"));
        assert_eq!(shebang(b"\x7fELF\x02\x01"), None, "a binary is run itself");
        assert_eq!(shebang(b"#!/usr/bin/env\n"), None);
        assert_eq!(shebang(b"#!/usr/bin/python3"), path("/usr/bin/python3"), "a file of one line");
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("app");
        std::fs::write(&script, "#!/usr/bin/env sh\necho\n").unwrap();
        assert_eq!(executable_image(&script), resolve(OsStr::new("sh")).unwrap());
        assert_eq!(executable_image(Path::new("/bin/sh")), Path::new("/bin/sh"));
    }

    #[test]
    fn commands_resolve_through_path() {
        assert!(resolve(OsStr::new("sh")).unwrap().is_absolute());
        assert_eq!(
            resolve(OsStr::new("no-such-command-here")).unwrap_err(),
            "cannot run no-such-command-here: no such command"
        );
    }

    #[test]
    fn a_gated_command_runs_only_once_released() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let marker = dir.path().join("ran");
            let argv: Vec<OsString> =
                ["sh", "-c", &format!("touch {}; exit 7", marker.display())].map(OsString::from).to_vec();
            let gated = start_gated(resolve(OsStr::new("sh")).unwrap(), &argv, None).unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            assert!(!marker.exists(), "ran before the gate opened");
            assert!(std::path::Path::new(&format!("/proc/{}", gated.pid)).exists());
            let running = gated.release().await.unwrap();
            assert_eq!(exit_code(running.exited().await), 7);
            assert!(marker.exists());
            // Dropping the gate without opening it: the command never runs.
            let gated = start_gated(resolve(OsStr::new("sh")).unwrap(), &argv, None).unwrap();
            std::fs::remove_file(&marker).unwrap();
            let Gated { gate, spawned, .. } = gated;
            drop(gate);
            assert!(spawned.await.unwrap().is_err());
            assert!(!marker.exists());
        });
    }
}
