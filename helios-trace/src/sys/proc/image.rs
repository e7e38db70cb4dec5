//! A process's image as /proc shows it: its memory map (/proc/PID/maps), the files it maps
//! (map_files, or its root directory), and its memory (/proc/PID/mem). resolve/ reads stacks
//! and CPython's state through these.
use std::{
    fs, io,
    os::{fd::RawFd, unix::fs::FileExt as _},
    path::{Path, PathBuf},
};

/// A path that opens the very file behind one of our own descriptors, whatever happened to its
/// name since (the /proc/self/fd magic link).
pub(crate) fn own_fd_path(fd: RawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{fd}"))
}

/// The text of /proc/PID/maps; `None` when the process is gone or cannot be read.
pub(crate) fn maps(root: &Path, pid: u32) -> Option<String> {
    fs::read_to_string(root.join(pid.to_string()).join("maps")).ok()
}

/// Open the file `pid` maps at `start..end`, as the process sees it: through
/// /proc/PID/map_files, the mapped file itself even when it was deleted or replaced since and
/// whatever mount namespace the process is in (needs CAP_SYS_ADMIN: fs/proc/base.c,
/// proc_map_files_get_link); else through the process's root directory (/proc/PID/root: its
/// mount namespace), accepted only if it still is the same inode.
pub(crate) fn open_mapped_file(
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
    // The kernel names a mapped file from the reader's root when it can (d_path in
    // fs/proc/task_mmu.c): a chrooted process of our mount namespace has it under its root's
    // path, which is the path as named here, not under /proc/PID/root.
    let file = fs::File::open(process.join("root").join(path.trim_start_matches('/')))
        .or_else(|_| fs::File::open(path))?;
    if file.metadata()?.ino() != inode {
        return Err(io::Error::other(format!("{path} was replaced since process {pid} mapped it")));
    }
    Ok(file)
}

/// Another process's memory, read through /proc/PID/mem (CAP_SYS_PTRACE is kept after the
/// privilege drop for this).
pub(crate) struct ProcessMemory {
    file: fs::File,
}

impl ProcessMemory {
    pub(crate) fn open(root: &Path, pid: u32) -> io::Result<ProcessMemory> {
        Ok(ProcessMemory { file: fs::File::open(root.join(pid.to_string()).join("mem"))? })
    }

    /// Fill `buf` from `address` of the process's memory.
    pub(crate) fn read(&self, address: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, address)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

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
