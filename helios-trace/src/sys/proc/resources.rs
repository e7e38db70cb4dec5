//! What a leaking process runs out of: its descriptor limit (RLIMIT_NOFILE, from
//! /proc/PID/limits), its memory (RSS, from /proc/PID/statm) and its cgroup's memory limit
//! (cgroup v2 memory.max/memory.current, or v1 memory.limit_in_bytes/memory.usage_in_bytes).
//! When it runs out at the rate it is going is model/resources.rs's projection. Parsers are
//! pure; readers take the roots.
use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::model::resources::CgroupMemory;

/// Where the cgroup hierarchy is mounted.
pub(crate) const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The soft "Max open files" of /proc/PID/limits; None for "unlimited" or when absent.
pub(crate) fn parse_nofile_soft(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

pub(crate) fn fd_limit(proc_root: &Path, pid: u32) -> Option<u64> {
    parse_nofile_soft(&fs::read_to_string(proc_root.join(pid.to_string()).join("limits")).ok()?)
}

/// Resident set size from /proc/PID/statm (its second field, in pages).
pub(crate) fn parse_statm_rss_pages(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

pub(crate) fn rss_bytes(proc_root: &Path, pid: u32) -> Option<u64> {
    let pages =
        parse_statm_rss_pages(&fs::read_to_string(proc_root.join(pid.to_string()).join("statm")).ok()?)?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(1) as u64)
}

/// Where a process's memory is accounted: its cgroup's directory, v2 or v1 memory controller.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum MemoryCgroup {
    /// cgroup v2 (unified): `<root>/<path>/memory.{current,max}`.
    V2(PathBuf),
    /// cgroup v1 memory controller: `<root>/memory/<path>/memory.{usage,limit}_in_bytes`.
    V1(PathBuf),
}

/// From /proc/PID/cgroup ("0::/path" for v2, "N:memory:/path" for v1): the memory cgroup,
/// preferring the v1 memory controller where one is mounted (a hybrid host's "0::" line then
/// names a cgroup without memory control).
pub(crate) fn parse_memory_cgroup(cgroup: &str) -> Option<MemoryCgroup> {
    let mut unified = None;
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let path = PathBuf::from(path.trim_start_matches('/'));
        if controllers.split(',').any(|c| c == "memory") {
            return Some(MemoryCgroup::V1(path));
        }
        if id == "0" && controllers.is_empty() {
            unified = Some(MemoryCgroup::V2(path));
        }
    }
    unified
}

/// v1 reports "no limit" as PAGE_COUNTER_MAX (a huge page-aligned number), v2 as "max".
fn parse_limit(text: &str) -> Option<u64> {
    let text = text.trim();
    if text == "max" {
        return None;
    }
    text.parse::<u64>().ok().filter(|v| *v < 1 << 62)
}

pub(crate) fn cgroup_memory(cgroup_root: &Path, cgroup: &MemoryCgroup) -> Option<CgroupMemory> {
    let read = |dir: PathBuf, file: &str| fs::read_to_string(dir.join(file)).ok();
    let (current, limit) = match cgroup {
        MemoryCgroup::V2(path) => {
            let dir = cgroup_root.join(path);
            // A hybrid host mounts the unified tree under unified/.
            let dir = if dir.join("memory.current").exists() {
                dir
            } else {
                cgroup_root.join("unified").join(path)
            };
            (read(dir.clone(), "memory.current")?, read(dir, "memory.max")?)
        }
        MemoryCgroup::V1(path) => {
            let dir = cgroup_root.join("memory").join(path);
            (read(dir.clone(), "memory.usage_in_bytes")?, read(dir, "memory.limit_in_bytes")?)
        }
    };
    Some(CgroupMemory { current: current.trim().parse().ok()?, limit: parse_limit(&limit) })
}

pub(crate) fn process_cgroup_memory(proc_root: &Path, cgroup_root: &Path, pid: u32) -> Option<CgroupMemory> {
    let cgroup = parse_memory_cgroup(&crate::sys::proc::cgroup(proc_root, pid)?)?;
    cgroup_memory(cgroup_root, &cgroup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nofile_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_nofile_soft(limits), Some(1024));
        assert_eq!(parse_nofile_soft("Max open files  unlimited unlimited files\n"), None);
        assert_eq!(parse_nofile_soft(""), None);
    }

    #[test]
    fn statm() {
        assert_eq!(parse_statm_rss_pages("2519 841 640 186 0 231 0\n"), Some(841));
        assert_eq!(parse_statm_rss_pages("x"), None);
    }

    #[test]
    fn memory_cgroups() {
        assert_eq!(
            parse_memory_cgroup("0::/system.slice/app.service\n"),
            Some(MemoryCgroup::V2("system.slice/app.service".into()))
        );
        let hybrid = "9:name=systemd:/\n4:memory:/process_api/4140\n1:cpu:/\n0::/\n";
        assert_eq!(parse_memory_cgroup(hybrid), Some(MemoryCgroup::V1("process_api/4140".into())));
        assert_eq!(parse_memory_cgroup("garbage"), None);
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("536870912\n"), Some(536870912));
    }

    #[test]
    fn reads_v1_and_v2_trees() {
        let root = tempfile::tempdir().unwrap();
        let v2 = root.path().join("kubepods/pod1");
        fs::create_dir_all(&v2).unwrap();
        fs::write(v2.join("memory.current"), "1000\n").unwrap();
        fs::write(v2.join("memory.max"), "5000\n").unwrap();
        assert_eq!(
            cgroup_memory(root.path(), &MemoryCgroup::V2("kubepods/pod1".into())),
            Some(CgroupMemory { current: 1000, limit: Some(5000) })
        );
        let v1 = root.path().join("memory/app");
        fs::create_dir_all(&v1).unwrap();
        fs::write(v1.join("memory.usage_in_bytes"), "300\n").unwrap();
        fs::write(v1.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        assert_eq!(
            cgroup_memory(root.path(), &MemoryCgroup::V1("app".into())),
            Some(CgroupMemory { current: 300, limit: None })
        );
    }
}
