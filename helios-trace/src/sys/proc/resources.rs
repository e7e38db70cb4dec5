//! What a leaking process runs out of: its descriptor limit (RLIMIT_NOFILE, from
//! /proc/PID/limits), its memory (RSS, from /proc/PID/statm) and its cgroup's memory limit
//! (cgroup v2 memory.max/memory.current, or v1 memory.limit_in_bytes/memory.usage_in_bytes).
//! When it runs out at the rate it is going is model/resources.rs's projection. Parsers are
//! pure; readers take the roots.
//!
//! A process in a pod is read the way the node sees it: its limits and RSS from the procfs
//! root (`--proc-root`), its memory cgroup through the host's cgroup mount ([`CgroupMounts`]),
//! found in the mount table of the procfs root's pid 1. A tracer in a cgroup namespace of its
//! own (a container's) reads every /proc/PID/cgroup and every mount's root relative to its
//! namespace's root (kernel/cgroup/cgroup.c proc_cgroup_show and cgroup_show_path both call
//! cgroup_path_ns with the reader's namespace): a process outside it shows as `/../../x/y`.
//! Such a path is resolved against the directory of the tracer's namespace root in the host's
//! mount, found once as the cgroup whose `cgroup.procs` lists the tracer.
use std::{
    collections::HashMap,
    fs,
    path::{Component, Path, PathBuf},
    sync::OnceLock,
};

use crate::model::resources::CgroupMemory;

/// Where the cgroup hierarchy is mounted.
pub(crate) const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The soft "Max open files" of /proc/PID/limits; None for "unlimited" or when absent.
pub(crate) fn parse_nofile_soft(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// The soft descriptor limit (None: unlimited), or why it could not be read.
pub(crate) fn read_fd_limit(proc_root: &Path, pid: u32) -> Result<Option<u64>, String> {
    let path = proc_root.join(pid.to_string()).join("limits");
    let text = fs::read_to_string(&path).map_err(|e| format!("{} unreadable: {e}", path.display()))?;
    Ok(parse_nofile_soft(&text))
}

/// Resident set size from /proc/PID/statm (its second field, in pages).
pub(crate) fn parse_statm_rss_pages(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

pub(crate) fn rss_bytes(proc_root: &Path, pid: u32) -> Option<u64> {
    read_rss_bytes(proc_root, pid).ok()
}

/// The resident set size, or why it could not be read.
pub(crate) fn read_rss_bytes(proc_root: &Path, pid: u32) -> Result<u64, String> {
    let path = proc_root.join(pid.to_string()).join("statm");
    let text = fs::read_to_string(&path).map_err(|e| format!("{} unreadable: {e}", path.display()))?;
    let pages = parse_statm_rss_pages(&text).ok_or_else(|| format!("{} has no RSS field", path.display()))?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Ok(pages * page.max(1) as u64)
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

#[cfg(test)]
pub(crate) fn cgroup_memory(cgroup_root: &Path, cgroup: &MemoryCgroup) -> Option<CgroupMemory> {
    let dir = match cgroup {
        MemoryCgroup::V2(path) => {
            let dir = cgroup_root.join(path);
            // A hybrid host mounts the unified tree under unified/.
            if dir.join("memory.current").exists() { dir } else { cgroup_root.join("unified").join(path) }
        }
        MemoryCgroup::V1(path) => cgroup_root.join("memory").join(path),
    };
    read_memory(&dir, matches!(cgroup, MemoryCgroup::V1(_))).ok()
}

/// memory.current and memory.max (v2) or memory.usage_in_bytes and memory.limit_in_bytes (v1)
/// of a cgroup's directory.
fn read_memory(dir: &Path, v1: bool) -> Result<CgroupMemory, String> {
    let (current, limit) = if v1 {
        ("memory.usage_in_bytes", "memory.limit_in_bytes")
    } else {
        ("memory.current", "memory.max")
    };
    let read = |file: &str| {
        let path = dir.join(file);
        fs::read_to_string(&path).map_err(|e| format!("{} unreadable: {e}", path.display()))
    };
    let text = read(current)?;
    let current = text.trim().parse().map_err(|_| format!("{current} is not a number: {:?}", text.trim()))?;
    Ok(CgroupMemory { current, limit: parse_limit(&read(limit)?) })
}

/// A path of /proc/PID/cgroup or of a cgroup mount's root, relative to the reader's cgroup
/// namespace root: `ups` steps above it (`..`), then `names` down.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct NsPath {
    ups: usize,
    names: Vec<String>,
}

impl NsPath {
    /// `/../../kubepods/pod1` (a leading `..` only goes above the root; one after a name
    /// would be a path the kernel never writes, and is refused).
    pub(crate) fn parse(path: &str) -> Option<NsPath> {
        let mut parsed = NsPath::default();
        for component in Path::new(path).components() {
            match component {
                Component::RootDir | Component::CurDir => {}
                Component::ParentDir if parsed.names.is_empty() => parsed.ups += 1,
                Component::Normal(name) => parsed.names.push(name.to_str()?.to_string()),
                _ => return None,
            }
        }
        Some(parsed)
    }
}

/// One cgroup hierarchy as mounted: the directory of its root, and which cgroup that root is,
/// relative to the tracer's cgroup namespace root (the mount table's root field).
#[derive(Debug)]
pub(crate) struct CgroupMount {
    dir: PathBuf,
    root: NsPath,
    /// The path below `dir` of the tracer's namespace root, when the mount's root is above it:
    /// found once.
    ns_root: OnceLock<Result<PathBuf, String>>,
}

impl CgroupMount {
    pub(crate) fn new(dir: PathBuf, root: NsPath) -> CgroupMount {
        CgroupMount { dir, root, ns_root: OnceLock::new() }
    }

    /// The directory of the cgroup `path` (as /proc/PID/cgroup shows it to the tracer).
    /// `own`: the tracer's own cgroup in this hierarchy and its pid, as the tracer sees them
    /// (to find its namespace root in the mount when the mount's root is above it).
    pub(crate) fn resolve(
        &self,
        path: &NsPath,
        own: &dyn Fn() -> Option<(NsPath, u32)>,
    ) -> Result<PathBuf, String> {
        let shown = || format!("/{}{}", "../".repeat(path.ups), path.names.join("/"));
        if self.root.ups == 0 {
            // The mount's root is the namespace root or a cgroup below it.
            let below = path.names.strip_prefix(self.root.names.as_slice()).filter(|_| path.ups == 0);
            let Some(below) = below else {
                return Err(format!(
                    "cgroup {} is outside the hierarchy mounted at {}",
                    shown(),
                    self.dir.display()
                ));
            };
            return Ok(below.iter().fold(self.dir.clone(), |dir, name| dir.join(name)));
        }
        if !self.root.names.is_empty() {
            return Err(format!(
                "the cgroup mount at {} is rooted beside the tracer's cgroup namespace",
                self.dir.display()
            ));
        }
        // The mount's root is `root.ups` levels above the namespace root: which cgroups lie in
        // between is what the mount shows as the directory, that many levels down, holding us.
        let ns_root = self.ns_root.get_or_init(|| self.find_ns_root(own)).as_ref().map_err(Clone::clone)?;
        let parts: Vec<&std::ffi::OsStr> = ns_root.iter().collect();
        let Some(kept) = parts.len().checked_sub(path.ups) else {
            return Err(format!(
                "cgroup {} is above the hierarchy mounted at {}",
                shown(),
                self.dir.display()
            ));
        };
        let dir = parts[..kept].iter().fold(self.dir.clone(), |dir, name| dir.join(name));
        Ok(path.names.iter().fold(dir, |dir, name| dir.join(name)))
    }

    fn find_ns_root(&self, own: &dyn Fn() -> Option<(NsPath, u32)>) -> Result<PathBuf, String> {
        let Some((own_path, pid)) = own().filter(|(p, _)| p.ups == 0) else {
            return Err("the tracer's own cgroup is unreadable".to_string());
        };
        let mut level = vec![PathBuf::new()];
        for _ in 0..self.root.ups {
            level = level
                .iter()
                .flat_map(|dir| {
                    fs::read_dir(self.dir.join(dir))
                        .into_iter()
                        .flatten()
                        .flatten()
                        .filter_map(|e| e.file_type().ok()?.is_dir().then(|| dir.join(e.file_name())))
                })
                .collect();
        }
        let holds_us = |candidate: &PathBuf| {
            let procs =
                own_path.names.iter().fold(self.dir.join(candidate), |d, n| d.join(n)).join("cgroup.procs");
            fs::read_to_string(procs).is_ok_and(|text| text.lines().any(|l| l.trim() == pid.to_string()))
        };
        let found: Vec<PathBuf> = level.into_iter().filter(holds_us).collect();
        match found.as_slice() {
            [one] => Ok(one.clone()),
            [] => {
                Err(format!("the tracer's cgroup namespace root is not found under {}", self.dir.display()))
            }
            _ => Err(format!("the tracer's cgroup namespace root is ambiguous under {}", self.dir.display())),
        }
    }
}

/// The memory hierarchies the node mounts (v1 memory controller, v2 unified), found in the
/// mount table of the procfs root's pid 1 and reached through its root (`PID/root`: the host's
/// mounts, from a DaemonSet's mount namespace too), else in the tracer's own mount table.
#[derive(Debug, Default)]
pub(crate) struct CgroupMounts {
    v1_memory: Option<CgroupMount>,
    v2: Option<CgroupMount>,
    /// The procfs root, whose `self` gives the tracer's own cgroup.
    proc_root: PathBuf,
}

impl CgroupMounts {
    pub(crate) fn find(proc_root: &Path) -> CgroupMounts {
        let init = proc_root.join("1");
        let candidates = [
            (init.join("mountinfo"), init.join("root")),
            (PathBuf::from("/proc/self/mountinfo"), PathBuf::from("/")),
        ];
        for (mountinfo, root) in candidates {
            let Ok(text) = fs::read_to_string(&mountinfo) else { continue };
            let mut mounts = parse_mountinfo(&text, &root);
            // The host's mount must be reachable through PID/root (ptrace access to pid 1).
            let reachable = |m: &Option<CgroupMount>| m.as_ref().is_some_and(|m| m.dir.is_dir());
            if reachable(&mounts.v1_memory) || reachable(&mounts.v2) {
                mounts.proc_root = proc_root.to_path_buf();
                log::debug!("cgroup mounts from {}: {mounts:?}", mountinfo.display());
                return mounts;
            }
        }
        log::debug!("no cgroup mount found in a mount table: using {CGROUP_ROOT}");
        let root = Path::new(CGROUP_ROOT);
        CgroupMounts {
            v1_memory: Some(CgroupMount::new(root.join("memory"), NsPath::default())),
            v2: Some(CgroupMount::new(
                if root.join("unified").is_dir() { root.join("unified") } else { root.to_path_buf() },
                NsPath::default(),
            )),
            proc_root: proc_root.to_path_buf(),
        }
    }

    /// The memory use and limit of `pid`'s memory cgroup, or why they cannot be had.
    pub(crate) fn memory(&self, pid: u32) -> Result<CgroupMemory, String> {
        let text = crate::sys::proc::cgroup(&self.proc_root, pid)
            .ok_or_else(|| format!("{}/{pid}/cgroup unreadable", self.proc_root.display()))?;
        let cgroup = parse_memory_cgroup(&text).ok_or_else(|| format!("no memory cgroup in {text:?}"))?;
        let (mount, path, v1) = match &cgroup {
            MemoryCgroup::V1(path) => (&self.v1_memory, path, true),
            MemoryCgroup::V2(path) => (&self.v2, path, false),
        };
        let mount = mount.as_ref().ok_or_else(|| {
            format!("no cgroup {} hierarchy is mounted", if v1 { "v1 memory" } else { "v2" })
        })?;
        let path = NsPath::parse(&format!("/{}", path.display()))
            .ok_or_else(|| format!("cgroup path {} not understood", path.display()))?;
        let own = || {
            // Our own procfs's `self` first: under --proc-root the root's pid namespace may
            // not hold us. cgroup.procs lists pids of the reader's pid namespace: getpid's.
            let text = fs::read_to_string("/proc/self/cgroup")
                .or_else(|_| fs::read_to_string(self.proc_root.join("self/cgroup")))
                .ok()?;
            let own = match (parse_memory_cgroup(&text)?, v1) {
                (MemoryCgroup::V1(p), true) | (MemoryCgroup::V2(p), false) => p,
                _ => return None,
            };
            Some((NsPath::parse(&format!("/{}", own.display()))?, std::process::id()))
        };
        read_memory(&mount.resolve(&path, &own)?, v1)
    }
}

/// The memory hierarchies of a mount table (proc_pid_mountinfo(5): `id parent major:minor root
/// mountpoint options [optional...] - fstype source super-options`), their directories under
/// `prefix` (the root they are seen from).
fn parse_mountinfo(text: &str, prefix: &Path) -> CgroupMounts {
    let mut found = HashMap::new();
    for line in text.lines() {
        let Some((mount, fs)) = line.split_once(" - ") else { continue };
        let fields: Vec<&str> = mount.split(' ').collect();
        let fs: Vec<&str> = fs.split(' ').collect();
        let (Some(root), Some(point), Some(fstype)) = (fields.get(3), fields.get(4), fs.first()) else {
            continue;
        };
        let key = match *fstype {
            "cgroup2" => "v2",
            "cgroup" if fs.get(2).is_some_and(|o| o.split(',').any(|o| o == "memory")) => "v1",
            _ => continue,
        };
        let (Some(root), Some(point)) = (NsPath::parse(&unescape(root)), Some(unescape(point))) else {
            continue;
        };
        // The first mount of a hierarchy wins (later ones are bind mounts of parts of it).
        found
            .entry(key)
            .or_insert_with(|| CgroupMount::new(prefix.join(point.trim_start_matches('/')), root));
    }
    CgroupMounts { v1_memory: found.remove("v1"), v2: found.remove("v2"), proc_root: PathBuf::new() }
}

/// Mount tables escape space, tab, newline and backslash as octal (`\040`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal =
            bytes.get(i + 1..i + 4).and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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

    fn ns(path: &str) -> NsPath {
        NsPath::parse(path).unwrap()
    }

    #[test]
    fn namespace_relative_paths() {
        assert_eq!(ns("/"), NsPath::default());
        assert_eq!(
            ns("/../../kubepods/pod1"),
            NsPath { ups: 2, names: vec!["kubepods".into(), "pod1".into()] }
        );
        assert_eq!(NsPath::parse("/a/../b"), None, "the kernel writes `..` only first");
    }

    /// A mount table as a DaemonSet's reads it (its own cgroup namespace: the host's mounts are
    /// rooted above it), and paths as /proc/PID/cgroup shows them to it.
    #[test]
    fn mount_tables_and_paths_outside_the_tracers_cgroup_namespace() {
        let host = tempfile::tempdir().unwrap();
        let mountinfo = "\
24 1 0:22 / / rw,relatime - ext4 /dev/root rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 /../.. /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 /../.. /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
60 31 0:32 / /mnt/my\\040cgroup rw - cgroup cgroup rw,memory
";
        let mounts = parse_mountinfo(mountinfo, host.path());
        let v1 = mounts.v1_memory.as_ref().unwrap();
        assert_eq!(v1.dir, host.path().join("sys/fs/cgroup/memory"));
        assert_eq!(v1.root, ns("/../.."));
        assert_eq!(mounts.v2.as_ref().unwrap().dir, host.path().join("sys/fs/cgroup/unified"));
        assert_eq!(unescape("/mnt/my\\040cgroup"), "/mnt/my cgroup");

        // The hierarchy: the tracer's namespace root is kubepods/tracer-pod/tracer (two below
        // the mount's root... and one more), the workload's kubepods/pod1/ctr.
        let mount = CgroupMount::new(host.path().join("sys/fs/cgroup/memory"), ns("/../.."));
        let tracer = mount.dir.join("kubepods/tracer-pod");
        let workload = mount.dir.join("kubepods/pod1/ctr");
        for dir in [&tracer, &workload, &mount.dir.join("kubepods/other-pod")] {
            fs::create_dir_all(dir).unwrap();
        }
        fs::write(tracer.join("cgroup.procs"), "1\n7\n").unwrap();
        fs::write(mount.dir.join("kubepods/other-pod/cgroup.procs"), "8\n").unwrap();
        let own = || Some((NsPath::default(), 7));
        assert_eq!(mount.resolve(&ns("/../pod1/ctr"), &own), Ok(workload.clone()));
        assert_eq!(mount.resolve(&ns("/"), &own), Ok(tracer.clone()), "the tracer's own");
        assert_eq!(mount.resolve(&ns("/../../kubepods/pod1/ctr"), &own), Ok(workload.clone()));
        assert!(mount.resolve(&ns("/../../../x"), &own).unwrap_err().contains("above the hierarchy"));
        // Not found (nothing lists us): said, not guessed.
        let lost = CgroupMount::new(mount.dir.clone(), ns("/../.."));
        let error = lost.resolve(&ns("/../pod1/ctr"), &|| Some((NsPath::default(), 99))).unwrap_err();
        assert!(error.contains("namespace root is not found"), "{error}");

        // A mount rooted at the namespace root (the host, or a container's own mount) takes the
        // path as it is; one rooted below it takes what is below its root only.
        let plain = CgroupMount::new(mount.dir.clone(), NsPath::default());
        assert_eq!(plain.resolve(&ns("/kubepods/pod1/ctr"), &own), Ok(workload.clone()));
        assert!(plain.resolve(&ns("/../x"), &own).unwrap_err().contains("outside the hierarchy"));
        let below = CgroupMount::new(mount.dir.join("kubepods"), ns("/kubepods"));
        assert_eq!(below.resolve(&ns("/kubepods/pod1/ctr"), &own), Ok(workload.clone()));
        assert!(below.resolve(&ns("/system.slice"), &own).is_err());

        fs::write(workload.join("memory.usage_in_bytes"), "4096\n").unwrap();
        fs::write(workload.join("memory.limit_in_bytes"), "1048576\n").unwrap();
        assert_eq!(read_memory(&workload, true), Ok(CgroupMemory { current: 4096, limit: Some(1_048_576) }));
        assert!(read_memory(&tracer, true).unwrap_err().contains("memory.usage_in_bytes unreadable"));
    }
}
