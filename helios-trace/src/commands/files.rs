//! The files a session writes — the report (`--output`), its SIGUSR1 snapshots and the flame
//! graph — each replaced atomically, and under sudo written **as the invoking user**: in a
//! directory that user may write, owned by them, as `run` already runs CMD as them
//! (README.md, "Using it").
//!
//! Why a process of its own: the capabilities kept after attaching (sys/privileges.rs) do not
//! include CAP_DAC_OVERRIDE, so root can no longer create a file in, say, the user's home
//! directory at the end of a session; and switching the file-system uid of one thread
//! (setfsuid(2)) would need CAP_SETUID for the whole run. Instead, before anything else runs
//! (a single thread: fork(2) copies only the caller), a child is forked that becomes the
//! invoking user for good (setgroups, setgid, setuid) and writes what it is sent over a socket
//! pair. The start-up check of `-o` asks that child, so a check that passes means the end will
//! too. Without sudo (root itself, or a user holding the capabilities) files are written here.
//!
//! The protocol is private to the two halves of this process: a request is an operation byte
//! (probe or write), the path (u32 length, bytes) and the contents (u64 length, bytes); the
//! answer is one byte (0 done, 1 failed) and the error text (u32 length, bytes).
use std::{
    ffi::OsString,
    io::{self, Read, Write},
    os::unix::{ffi::OsStringExt as _, fs::PermissionsExt as _, net::UnixStream},
    path::{Path, PathBuf},
    sync::Mutex,
};

use crate::sys::launch::Identity;

const PROBE: u8 = 0;
const WRITE: u8 = 1;

/// Where files are written from.
pub(crate) enum Files {
    /// By this process, with its own credentials.
    Here,
    /// By a child that is the invoking user (sudo).
    AsUser { user: u32, writer: Mutex<UnixStream> },
}

impl Files {
    /// Under sudo, fork the writer that runs as `identity`; else write here. Must be called
    /// while this process has one thread (before the runtime or the loader start any).
    pub(crate) fn start(identity: Option<Identity>) -> io::Result<Files> {
        let Some(identity) = identity else { return Ok(Files::Here) };
        let (parent, child) = UnixStream::pair()?;
        // SAFETY: called while single-threaded (see above), so the child is a whole copy of
        // this process and may allocate; it never returns from this function.
        match unsafe { libc::fork() } {
            -1 => Err(io::Error::last_os_error()),
            0 => {
                drop(parent);
                let code = match become_user(&identity) {
                    Ok(()) => serve(child).map_or(1, |()| 0),
                    Err(e) => {
                        // The parent hears of it at its first request (end of file).
                        eprintln!("helios-trace: the file writer cannot become uid {}: {e}", identity.uid);
                        1
                    }
                };
                // SAFETY: ends the child without running the parent's exit handlers twice.
                unsafe { libc::_exit(code) }
            }
            _ => {
                drop(child);
                Ok(Files::AsUser { user: identity.uid, writer: Mutex::new(parent) })
            }
        }
    }

    /// Can `path` be written at the end? Creates (and removes) a probe file beside it, as the
    /// user who will write it.
    pub(crate) fn check(&self, path: &Path) -> io::Result<()> {
        if path.is_dir() {
            return Err(io::Error::other("it is a directory"));
        }
        self.request(PROBE, path, &[])
    }

    /// Replace `path` with `bytes` atomically.
    pub(crate) fn write(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.request(WRITE, path, bytes)
    }

    fn request(&self, op: u8, path: &Path, bytes: &[u8]) -> io::Result<()> {
        match self {
            Files::Here => perform(op, path, bytes),
            Files::AsUser { user, writer } => {
                let mut stream = writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let gone =
                    |e: io::Error| io::Error::other(format!("the file writer (uid {user}) is gone: {e}"));
                let path = path.as_os_str().as_encoded_bytes();
                let mut message = Vec::with_capacity(13 + path.len() + bytes.len());
                message.push(op);
                message.extend_from_slice(&(path.len() as u32).to_le_bytes());
                message.extend_from_slice(path);
                message.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
                message.extend_from_slice(bytes);
                stream.write_all(&message).map_err(gone)?;
                let mut status = [0u8; 1];
                stream.read_exact(&mut status).map_err(gone)?;
                let error = read_block(&mut *stream, 4).map_err(gone)?;
                match status[0] {
                    0 => Ok(()),
                    _ => Err(io::Error::other(String::from_utf8_lossy(&error).into_owned())),
                }
            }
        }
    }
}

/// The child's loop: one request, one answer, until the parent closes its end.
fn serve(mut stream: UnixStream) -> io::Result<()> {
    loop {
        let mut op = [0u8; 1];
        match stream.read_exact(&mut op) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            other => other?,
        }
        let path = PathBuf::from(OsString::from_vec(read_block(&mut stream, 4)?));
        let bytes = read_block(&mut stream, 8)?;
        let (status, error) = match perform(op[0], &path, &bytes) {
            Ok(()) => (0u8, String::new()),
            Err(e) => (1u8, e.to_string()),
        };
        let mut answer = vec![status];
        answer.extend_from_slice(&(error.len() as u32).to_le_bytes());
        answer.extend_from_slice(error.as_bytes());
        stream.write_all(&answer)?;
    }
}

/// A block prefixed by its length in `width` (4 or 8) little-endian bytes.
fn read_block(stream: &mut impl Read, width: usize) -> io::Result<Vec<u8>> {
    let mut length = [0u8; 8];
    stream.read_exact(&mut length[..width])?;
    let mut block = vec![0u8; u64::from_le_bytes(length) as usize];
    stream.read_exact(&mut block)?;
    Ok(block)
}

fn perform(op: u8, path: &Path, bytes: &[u8]) -> io::Result<()> {
    match op {
        PROBE => {
            tempfile::Builder::new().prefix(".helios-trace-probe.").tempfile_in(directory_of(path)).map(drop)
        }
        WRITE => write_atomically(path, bytes),
        _ => Err(io::Error::other("unknown request")),
    }
}

/// For good: supplementary groups, then the group, then the user (the order setuid(2) needs).
fn become_user(identity: &Identity) -> io::Result<()> {
    // SAFETY: plain syscalls with valid buffers.
    let failed = unsafe {
        libc::setgroups(identity.groups.len(), identity.groups.as_ptr()) != 0
            || libc::setgid(identity.gid) != 0
            || libc::setuid(identity.uid) != 0
    };
    if failed { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Write beside the file, then rename over it: a reader never sees half a report, and an earlier
/// one is whole until then. The temporary file has a random name and is created exclusively (a
/// symlink planted in the directory is not followed, which matters as root); it is removed if
/// anything fails before the rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut file = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        // What File::create gave reports before (0666 less the usual umask).
        .permissions(std::fs::Permissions::from_mode(0o644))
        .tempfile_in(directory_of(path))?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Where the file's temporary file goes: beside it, so that the rename stays within one file
/// system.
fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        let files = Files::Here;
        files.write(&path, b"{\"first\": 1}\n").unwrap();
        files.write(&path, b"{\"second\": 2}\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"second\": 2}\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    }

    #[test]
    fn the_check_creates_nothing_and_refuses_directories_and_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::Here;
        files.check(&dir.path().join("r.json")).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the probe is removed");
        assert_eq!(files.check(dir.path()).unwrap_err().to_string(), "it is a directory");
        assert!(files.check(Path::new("/nonexistent-dir/report.json")).is_err());
    }

    #[test]
    fn blocks_read_back_as_written() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(b"abc");
        bytes.extend_from_slice(&2u64.to_le_bytes());
        bytes.extend_from_slice(b"de");
        let mut reader = &bytes[..];
        assert_eq!(read_block(&mut reader, 4).unwrap(), b"abc");
        assert_eq!(read_block(&mut reader, 8).unwrap(), b"de");
        assert!(read_block(&mut reader, 4).is_err(), "end of input");
    }
}
