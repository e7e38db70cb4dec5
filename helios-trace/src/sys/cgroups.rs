//! `--cgroup DIR`: trace the processes of a cgroup v2 directory and of every cgroup below it,
//! those that start there later included. The kernel programs compare the ids of each task's
//! cgroup ancestors with the targets' ids (sys/loader.rs fills the map), so this only resolves
//! a directory to its id and lists the processes already there for the /proc baseline.
use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// A `--cgroup` target, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TargetCgroup {
    pub(crate) path: PathBuf,
    /// The cgroup's id, which on cgroup v2 is its directory's inode number (kernfs node id:
    /// what `bpf_get_current_ancestor_cgroup_id` returns).
    pub(crate) id: u64,
}

/// Resolve a cgroup v2 directory; the error is one line for the user.
pub(crate) fn resolve(path: &Path) -> Result<TargetCgroup, String> {
    let shown = path.display();
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("--cgroup {shown}: not a path"))?;
    let mut fs_info: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statfs buffer of the right type.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut fs_info) } != 0 {
        return Err(format!("--cgroup {shown}: {}", std::io::Error::last_os_error()));
    }
    if fs_info.f_type != libc::CGROUP2_SUPER_MAGIC {
        return Err(format!(
            "--cgroup {shown} is not a cgroup v2 directory (e.g. /sys/fs/cgroup/system.slice/NAME.service)"
        ));
    }
    let metadata = fs::metadata(path).map_err(|e| format!("--cgroup {shown}: {e}"))?;
    if !metadata.is_dir() {
        return Err(format!("--cgroup {shown} is a file; give its directory"));
    }
    Ok(TargetCgroup { path: path.to_path_buf(), id: metadata.ino() })
}

/// The processes in `dir` and in every cgroup below it, now.
pub(crate) fn processes(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(parse_procs(&text));
        }
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        pending
            .extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// cgroup.procs: one pid per line.
fn parse_procs(text: &str) -> impl Iterator<Item = u32> + '_ {
    text.lines().filter_map(|line| line.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procs_lines_are_pids() {
        assert_eq!(parse_procs("12\n7\n\nnot-a-pid\n").collect::<Vec<_>>(), vec![12, 7]);
    }

    #[test]
    fn a_directory_that_is_not_a_cgroup_is_refused_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let error = resolve(dir.path()).unwrap_err();
        assert!(error.contains("is not a cgroup v2 directory"), "{error}");
        assert!(!error.contains('\n'));
        assert!(resolve(Path::new("/no/such/cgroup")).unwrap_err().contains("No such file"));
    }
}
