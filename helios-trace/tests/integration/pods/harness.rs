//! Pods the way a container runtime makes them, with no cluster (ARCHITECTURE.md, Tests).
//!
//! [`Pod::start`] runs a workload:
//! - first placed in a cgroup leaf of the kubelet's systemd-driver shape,
//!   `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<UID with _>.slice/cri-containerd-<64 hex>.scope`
//!   under the cgroup v2 mount (a random pod UID and container id per pod);
//! - then in new pid, network, mount, uts, ipc and cgroup namespaces (util-linux `unshare`,
//!   whose forked child is the pod's pid 1), loopback up inside;
//! - in its own root filesystem: the root's sources are copied into a tmpfs mounted only in the
//!   pod's mount namespace over an empty host directory, with /proc of the pod's pid namespace,
//!   a minimal /dev and a /tmp, pivoted into as a runtime does (pivot_root(2) with new and old
//!   root the same, the old one then detached: its man page's recipe), so the host's root is
//!   gone from the pod and /proc/PID/exe and maps show the pod's own paths. The host sees an
//!   empty directory at the mountpoint, and nothing at the paths the workload sees (/app/...).
//!
//! Dropping the pod kills it (killing a pid namespace's init kills everything in it) and removes
//! its cgroups, also when the test failed.
use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use crate::support::*;

/// Where `cargo xtask setup --tests` keeps the roots of other distributions (xtask/src/roots.rs).
pub fn cached_root(name: &str) -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME is set");
    let root = PathBuf::from(home).join(".local/share/helios-trace/roots").join(name);
    assert!(
        root.join(".helios-trace-root").is_file(),
        "no {name} root at {}: run `cargo xtask setup --tests`",
        root.display()
    );
    root
}

/// What a pod's root filesystem is assembled from: directories copied, in order, into its tmpfs.
pub struct Root {
    layers: Vec<PathBuf>,
    staging: Option<tempfile::TempDir>,
}

impl Root {
    /// Debian sid's own glibc and CPython 3.14 (xtask's roots), plus `extra` files.
    pub fn sid(extra: &[(&Path, &str)]) -> Root {
        Root::cached("sid-python3.14", extra)
    }

    /// A cached root of another distribution plus `extra` (host file, path inside) files.
    pub fn cached(name: &str, extra: &[(&Path, &str)]) -> Root {
        let base = cached_root(name);
        let staging = staging_dir();
        for (file, inside) in extra {
            place(file, staging.path(), inside);
        }
        Root { layers: vec![base, staging.path().to_path_buf()], staging: Some(staging) }
    }

    /// The host's /usr/bin/python3 (as /usr/bin/python3.X, and python3 linking to it) with the libraries `ldd` names (of it and of its extension
    /// modules) and its standard library, plus `extra` files.
    pub fn copied_python(extra: &[(&Path, &str)]) -> Root {
        let python = fs::canonicalize("/usr/bin/python3").unwrap();
        let version = python.file_name().unwrap().to_str().unwrap().to_string(); // python3.11
        let stdlib = PathBuf::from("/usr/lib").join(&version);
        let staging = staging_dir();
        let mut binaries = vec![python.clone()];
        binaries.extend(fs::read_dir(stdlib.join("lib-dynload")).unwrap().map(|e| e.unwrap().path()));
        for binary in &binaries {
            for library in ldd(binary) {
                place(&library, staging.path(), library.to_str().unwrap());
            }
        }
        // As images lay it out (Debian's, the python:3.x images): the versioned file and a
        // `python3` link to it. The tracer recognises a CPython by that versioned name.
        place(&python, staging.path(), &format!("/usr/bin/{version}"));
        std::os::unix::fs::symlink(&version, staging.path().join("usr/bin/python3")).unwrap();
        let status =
            Command::new("cp").arg("-a").arg(&stdlib).arg(staging.path().join("usr/lib")).status().unwrap();
        assert!(status.success(), "copying {}", stdlib.display());
        for (file, inside) in extra {
            place(file, staging.path(), inside);
        }
        merged_usr_links(staging.path());
        Root { layers: vec![staging.path().to_path_buf()], staging: Some(staging) }
    }

    /// `file` at `inside` too.
    pub fn add(&mut self, file: &Path, inside: &str) {
        let staging = self.staging.as_ref().expect("a root staged here").path();
        place(file, staging, inside);
    }

    /// Only the directory `dir` at `inside` (`add_tree`).
    pub fn tree(dir: &Path, inside: &str) -> Root {
        let staging = staging_dir();
        let mut root = Root { layers: vec![staging.path().to_path_buf()], staging: Some(staging) };
        root.add_tree(dir, inside);
        root
    }

    /// The directory `dir` at `inside`, with the libraries `ldd` names for each of its
    /// executables and shared objects (a runtime laid out as images ship one: a JDK's home).
    pub fn add_tree(&mut self, dir: &Path, inside: &str) {
        let staging = self.staging.as_ref().expect("a root staged here").path().to_path_buf();
        let target = staging.join(inside.trim_start_matches('/'));
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        let status = Command::new("cp").arg("-a").arg(dir).arg(&target).status().unwrap();
        assert!(status.success(), "copying {}", dir.display());
        let out = Command::new("find")
            .arg(dir)
            .args(["-type", "f", "(", "-perm", "-u+x", "-o", "-name", "*.so", ")"])
            .output()
            .unwrap();
        for binary in String::from_utf8_lossy(&out.stdout).lines() {
            for library in ldd(Path::new(binary)).into_iter().filter(|l| !l.starts_with(dir)) {
                place(&library, &staging, library.to_str().unwrap());
            }
        }
        merged_usr_links(&staging);
    }

    /// `binary` at `inside` with the libraries `ldd` names (none for a static one).
    pub fn native(binary: &Path, inside: &str) -> Root {
        let staging = staging_dir();
        for library in ldd(binary) {
            place(&library, staging.path(), library.to_str().unwrap());
        }
        place(binary, staging.path(), inside);
        merged_usr_links(staging.path());
        Root { layers: vec![staging.path().to_path_buf()], staging: Some(staging) }
    }
}

/// tests/workloads/podinit.c, static: it pivots into the pod's root and becomes the workload.
fn podinit_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| compile_c("podinit.c", "podinit", &["-static", "-O2", "-Wall"]))
}

/// A host directory the roots are staged in (the test target's scratch space).
fn staging_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("pod-root-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// Copy `file` into `root` at the absolute path `inside`.
fn place(file: &Path, root: &Path, inside: &str) {
    let target = root.join(inside.trim_start_matches('/'));
    fs::create_dir_all(target.parent().unwrap()).unwrap();
    fs::copy(file, &target)
        .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", file.display(), target.display()));
}

/// The files a dynamically linked binary loads, as `ldd` resolves them (the dynamic loader
/// included); none for a static binary.
fn ldd(binary: &Path) -> BTreeSet<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            // The directory resolved (/lib -> /usr/lib on merged /usr), the name kept: it is
            // the soname the loader looks for (libz.so.1, a link to libz.so.1.2.13).
            let path = Path::new(path);
            let dir = fs::canonicalize(path.parent()?).ok()?;
            path.starts_with("/").then(|| dir.join(path.file_name().unwrap()))
        })
        .chain(
            // The loader as the binary names it (PT_INTERP), e.g. /lib64/ld-linux-x86-64.so.2.
            text.lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|p| p.starts_with('/') && p.contains("ld-linux"))
                .map(PathBuf::from),
        )
        .collect()
}

/// /lib, /lib64, /bin as links into /usr, as Debian's merged /usr has them: `ldd` names libraries
/// under /lib/x86_64-linux-gnu while canonical paths are under /usr/lib. Again on a root that
/// has them: what was staged under a real /lib since is moved, the links kept.
fn merged_usr_links(root: &Path) {
    for dir in ["lib", "lib64", "bin"] {
        let real = root.join("usr").join(dir);
        let link = root.join(dir);
        if link.is_dir() && fs::symlink_metadata(&link).is_ok_and(|m| !m.file_type().is_symlink()) {
            // Staged under /lib64 (the loader's PT_INTERP path): move it under /usr.
            fs::create_dir_all(&real).unwrap();
            let status =
                Command::new("cp").arg("-a").arg(format!("{}/.", link.display())).arg(&real).status();
            assert!(status.unwrap().success());
            fs::remove_dir_all(&link).unwrap();
        }
        fs::create_dir_all(&real).unwrap();
        if fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("usr/{dir}"), &link).unwrap();
        }
    }
}

pub struct PodSpec {
    pub root: Root,
    /// The workload's command line as the pod sees it (paths inside its root).
    pub command: Vec<String>,
}

/// A running pod whose workload speaks fdwork's protocol ("ready", then "ok ..." per command).
pub struct Pod {
    /// `unshare`, on the host (its child is the pod's init, the workload).
    runtime: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// The workload's pid as the host (and the tracer) sees it.
    pub pid: u32,
    pub pod_uid: String,
    pub container_id: String,
    /// The container's cgroup leaf (on the host's cgroup v2 mount).
    pub cgroup: PathBuf,
    /// The host directory the pod's tmpfs is mounted over, in the pod's mount namespace only.
    pub mountpoint: tempfile::TempDir,
    _root: Root,
}

/// The cgroup v2 mount (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts such as
/// these machines).
pub fn cgroup2_mount() -> PathBuf {
    static MOUNT: OnceLock<PathBuf> = OnceLock::new();
    MOUNT
        .get_or_init(|| {
            // The host's own, under /sys/fs/cgroup: a root's bind mounts of /sys may repeat it
            // in the table for a while, elsewhere.
            let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
            mountinfo
                .lines()
                .filter(|l| l.contains(" - cgroup2 "))
                .filter_map(|l| l.split(' ').nth(4))
                .find(|point| point.starts_with("/sys/fs/cgroup"))
                .expect("a cgroup2 mount under /sys/fs/cgroup")
                .into()
        })
        .clone()
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf)).unwrap();
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the pod's init does before it becomes the workload: it runs in the new namespaces
/// (pid 1 of the new pid namespace), with the host's root and tools until podinit pivots (see
/// tests/workloads/podinit.c); `$1` is podinit, `$2` the mountpoint, `$3` the hostname, `$4` the
/// number of layers, then the layers, then the workload's command.
const POD_INIT: &str = r#"set -e
init=$1; mnt=$2; host=$3; n=$4; shift 4
mount -t tmpfs -o mode=0755 helios-pod "$mnt"
while [ "$n" -gt 0 ]; do cp -a "$1"/. "$mnt"/; shift; n=$((n - 1)); done
mkdir -p "$mnt/proc" "$mnt/dev" "$mnt/tmp"
mount -t proc proc "$mnt/proc"
mount -t tmpfs -o mode=1777 tmp "$mnt/tmp"
mount -t tmpfs -o mode=0755 dev "$mnt/dev"
for d in null zero random urandom; do touch "$mnt/dev/$d"; mount --bind "/dev/$d" "$mnt/dev/$d"; done
ip link set lo up
hostname "$host"
cd "$mnt"
exec "$init" "$@"
"#;

impl Pod {
    pub fn start(spec: PodSpec) -> Pod {
        let uid = {
            let h = random_hex(16);
            format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
        };
        let container_id = random_hex(32);
        let pod_slice = cgroup2_mount()
            .join("kubepods.slice/kubepods-burstable.slice")
            .join(format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_")));
        let cgroup = pod_slice.join(format!("cri-containerd-{container_id}.scope"));
        fs::create_dir_all(&cgroup).unwrap_or_else(|e| panic!("mkdir {}: {e}", cgroup.display()));
        let mountpoint =
            tempfile::Builder::new().prefix("pod-mnt-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        fs::set_permissions(mountpoint.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let hostname = format!("pod-{}", &container_id[..12]);
        // The host-side shell joins the cgroup leaf first, then becomes `unshare`: the cgroup
        // namespace is rooted at the leaf, as a runtime does it.
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && exec unshare --pid --net --mount --uts --ipc --cgroup --fork --kill-child --propagation private -- sh -c "$@""#)
            .arg(&cgroup)
            .arg(POD_INIT)
            .arg("pod-init")
            .arg(podinit_bin())
            .arg(mountpoint.path())
            .arg(&hostname)
            .arg(spec.root.layers.len().to_string())
            .args(&spec.root.layers)
            .args(&spec.command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut runtime = command.spawn().expect("sh and unshare start");
        let stdin = runtime.stdin.take().unwrap();
        let mut stdout = BufReader::new(runtime.stdout.take().unwrap());
        let guard = CgroupGuard(pod_slice.clone(), cgroup.clone());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(line.starts_with("ready"), "the pod's workload said {line:?} ({:?})", spec.command);
        let runtime_pid = runtime.id();
        let pid = wait_for("the pod's init", Duration::from_secs(10), || {
            let children =
                fs::read_to_string(format!("/proc/{runtime_pid}/task/{runtime_pid}/children")).ok()?;
            children.split_whitespace().next()?.parse().ok()
        });
        // unshare had to be in the leaf when it made the cgroup namespace (whose root is the
        // cgroup it was made in); now it leaves, as a runtime's shim lives outside the
        // container's cgroup: the workload is the leaf's only process.
        let own = fs::read_to_string("/proc/self/cgroup").unwrap();
        let own =
            own.lines().find_map(|l| l.strip_prefix("0::")).unwrap().trim_start_matches('/').to_string();
        fs::write(cgroup2_mount().join(own).join("cgroup.procs"), runtime_pid.to_string()).unwrap();
        std::mem::forget(guard);
        Pod { runtime, stdin, stdout, pid, pod_uid: uid, container_id, cgroup, mountpoint, _root: spec.root }
    }

    /// Run one command of the workload's protocol; the numbers of its "ok" answer.
    pub fn run(&mut self, command: &str) -> Vec<i64> {
        self.ask(command).split_whitespace().map(|n| n.parse().unwrap()).collect()
    }

    /// Run one command; the words of its "ok" answer.
    pub fn ask(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let line = line.trim();
        let rest = line.strip_prefix("ok").unwrap_or_else(|| panic!("pod: `{command}` -> {line:?}"));
        rest.trim().to_string()
    }

    /// `program args` run in the pod's network namespace (from the host's files), e.g. `ss`.
    pub fn in_net_namespace(&self, program: &str, args: &[&str]) -> String {
        let out = Command::new("nsenter")
            .args(["-t", &self.pid.to_string(), "-n", program])
            .args(args)
            .output()
            .expect("nsenter runs");
        assert!(out.status.success(), "nsenter {program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The cgroup path as /proc/PID/cgroup says it on the host (relative to the v2 mount).
    pub fn cgroup_path(&self) -> String {
        format!("/{}", self.cgroup.strip_prefix(cgroup2_mount()).unwrap().display())
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // --kill-child: unshare's death kills the pod's init, and with it its pid namespace.
        let _ = self.runtime.kill();
        let _ = self.runtime.wait();
        signal(self.pid, libc::SIGKILL);
        drop(CgroupGuard(self.cgroup.parent().unwrap().to_path_buf(), self.cgroup.clone()));
    }
}

/// Removes a pod's cgroups (the leaf, then the pod's slice; the shared slices above are left to
/// whoever uses them), once the processes have left.
struct CgroupGuard(PathBuf, PathBuf);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        for _ in 0..100 {
            let empty =
                fs::read_to_string(self.1.join("cgroup.procs")).map(|p| p.trim().is_empty()).unwrap_or(true);
            if empty {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = fs::remove_dir(&self.1);
        let _ = fs::remove_dir(&self.0);
    }
}

/// The namespace inode of `pid`'s `kind` namespace (/proc/PID/ns/KIND is a link "kind:[inode]").
pub fn namespace(pid: u32, kind: &str) -> String {
    fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap().to_string_lossy().into_owned()
}

#[test]
fn a_pod_has_its_own_namespaces_cgroup_and_root() {
    if !require_bpf() {
        return; // root: namespaces, mounts, cgroups
    }
    let podleak = super::podleak_bin();
    let mut pod = Pod::start(PodSpec {
        root: Root::native(podleak, "/app/podleak"),
        command: vec!["/app/podleak".into()],
    });
    let me = std::process::id();
    for kind in ["pid", "net", "mnt", "uts", "ipc", "cgroup"] {
        assert_ne!(namespace(pod.pid, kind), namespace(me, kind), "{kind} namespace");
    }
    // pid 1 inside: the pod's init is the workload.
    let status = fs::read_to_string(format!("/proc/{}/status", pod.pid)).unwrap();
    let nspid = status.lines().find_map(|l| l.strip_prefix("NSpid:")).unwrap();
    assert_eq!(nspid.split_whitespace().collect::<Vec<_>>(), [pod.pid.to_string().as_str(), "1"]);
    // The cgroup leaf of the kubelet's systemd driver, seen whole from the host.
    let cgroup = fs::read_to_string(format!("/proc/{}/cgroup", pod.pid)).unwrap();
    let v2 = cgroup.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    assert_eq!(v2, pod.cgroup_path());
    assert!(v2.starts_with("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"), "{v2}");
    assert!(v2.ends_with(&format!("/cri-containerd-{}.scope", pod.container_id)), "{v2}");
    assert!(v2.contains(&pod.pod_uid.replace('-', "_")), "{v2}");
    assert_eq!(fs::read_to_string(pod.cgroup.join("cgroup.procs")).unwrap().trim(), pod.pid.to_string());
    // The root: the binary is at /app/podleak for the pod, nothing is there for the host, and the
    // directory the pod's tmpfs covers is empty on the host.
    let exe = fs::read_link(format!("/proc/{}/exe", pod.pid)).unwrap();
    assert_eq!(exe, Path::new("/app/podleak"));
    assert!(!exe.exists(), "the host has no {}", exe.display());
    assert_eq!(fs::read_dir(pod.mountpoint.path()).unwrap().count(), 0, "the pod's root is not the host's");
    assert!(
        fs::metadata(format!("/proc/{}/root/app/podleak", pod.pid)).is_ok(),
        "reachable through /proc/PID/root"
    );
    // Loopback is up inside and the pod's sockets are its own.
    let accepted = pod.run("accept 2");
    assert_eq!(accepted.len(), 2);
    let ss = pod.in_net_namespace("ss", &["-tnH", "state", "established"]);
    assert_eq!(ss.lines().count(), 4, "two connections, both ends: {ss}");
    let host_ss =
        String::from_utf8(Command::new("ss").args(["-tnH", "state", "established"]).output().unwrap().stdout)
            .unwrap();
    let local: Vec<&str> = ss.lines().filter_map(|l| l.split_whitespace().nth(2)).collect();
    assert!(local.iter().all(|a| !host_ss.contains(a)), "the host does not see them: {host_ss}");
    let cgroup_dir = pod.cgroup.clone();
    drop(pod);
    assert!(!cgroup_dir.exists(), "the pod's cgroup is removed");
}
