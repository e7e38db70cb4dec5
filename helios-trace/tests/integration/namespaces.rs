//! Processes in namespaces of their own (unshare(1)), as on a Kubernetes node: socket memory
//! and TCP states from the process's network namespace, its memory cgroup read through the
//! host's mount from a tracer in a cgroup namespace of its own, a fact that cannot be had said
//! and counted, and the tracer the way the DaemonSet runs it. Ground truth comes from inside
//! the namespaces (`nsenter -n ss -tmHn`, the cgroup's own files).
use std::{
    collections::BTreeMap,
    ffi::CString,
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::support::*;

/// A TCP server that accepts 10 connections from itself, each sent 4 KiB it never reads, then
/// the peers of 4 of them close (CLOSE_WAIT on the server's side). It prints its pid as the
/// tracer's /proc knows it (`/proc/self` of a procfs of the host's pid namespace).
const SERVER: &str = r#"
import os, socket, sys, time
server = socket.socket()
server.bind(("127.0.0.1", 9999))
server.listen(64)
print("listening", os.readlink("/proc/self"), flush=True)
sys.stdin.readline()
clients, accepted = [], []
def serve():
    for _ in range(10):
        client = socket.create_connection(("127.0.0.1", 9999))
        client.sendall(b"x" * 4096)
        clients.append(client)
        connection, _ = server.accept()
        accepted.append(connection)
serve()
for client in clients[:4]:
    client.close()
print("ready", flush=True)
held = []
for line in sys.stdin:
    if line.strip() != "grow":
        break
    # 2 MiB more every 100 ms for 4 s, touched: charged to the memory cgroup.
    for _ in range(40):
        held.append(bytearray(b"m" * (2 << 20)))
        time.sleep(0.1)
    print("grown", flush=True)
"#;

/// The server, started in new namespaces (`unshare_flags`) with loopback up.
struct NsServer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// The python process's pid in the host's pid namespace.
    pid: u32,
    _script: tempfile::NamedTempFile,
}

impl NsServer {
    /// `wrap`: what runs python (e.g. setpriv and its options), after loopback is up.
    fn start(unshare_flags: &[&str], wrap: &[&str], cgroup: Option<&Path>) -> NsServer {
        let mut script = tempfile::NamedTempFile::new().unwrap();
        script.write_all(SERVER.as_bytes()).unwrap();
        let mut command = Command::new("unshare");
        command
            .args(unshare_flags)
            .args(["--", "sh", "-c", r#"ip link set lo up && exec "$@""#, "sh"])
            .args(wrap)
            .arg("python3")
            .arg(script.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some(dir) = cgroup {
            join_cgroup_at_exec(&mut command, dir);
        }
        let mut child = command.spawn().expect("unshare starts");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let pid = line
            .strip_prefix("listening ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("the server said {line:?}"));
        NsServer { child, stdin, stdout, pid, _script: script }
    }

    /// Grow by 80 MiB over 4 s; returns once grown.
    fn grow(&mut self) {
        writeln!(self.stdin, "grow").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "grown");
    }

    /// Make the connections; returns once they are there.
    fn connect(&mut self) {
        writeln!(self.stdin, "go").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
    }
}

impl Drop for NsServer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "exit");
        wait_or_kill(&mut self.child);
    }
}

/// Wait up to 5 s for our own child, then kill it (by its pid).
fn wait_or_kill(child: &mut Child) {
    for _ in 0..50 {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Move the child into cgroup `dir` between fork and exec (writing 0 to cgroup.procs moves
/// the writer, v1 and v2 alike); only async-signal-safe calls in the child.
fn join_cgroup_at_exec(command: &mut Command, dir: &Path) {
    let procs = CString::new(dir.join("cgroup.procs").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: open, write and close are async-signal-safe; the path was allocated before fork.
    unsafe {
        command.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let error = std::io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                return Err(error);
            }
            Ok(())
        });
    }
}

/// What `ss -tmHn` run inside the network namespace of `pid` says of the sockets the server
/// accepted (local port 9999, not the listener): their states, and the memory sock_diag
/// charges them (skmem r + w + f + o: received, queued to send, forward allocated, options).
fn accepted_in_namespace(pid: u32) -> (BTreeMap<String, u64>, u64) {
    sockets_in_namespace(pid, true)
}

/// The same of the namespace's sockets that a descriptor holds (`accepted`: only the
/// accepted ones); those closed and waiting for their peer have none (FIN-WAIT-2,
/// TIME-WAIT).
fn sockets_in_namespace(pid: u32, accepted: bool) -> (BTreeMap<String, u64>, u64) {
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "ss", "-tmHn", "state", "all"])
        .output()
        .expect("nsenter runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (mut states, mut memory) = (BTreeMap::new(), 0);
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let skmem = lines.next_if(|l| l.trim_start().starts_with("skmem:")).unwrap_or_default();
        if fields.len() < 4 || ["FIN-WAIT-2", "TIME-WAIT"].contains(&fields[0]) {
            continue;
        }
        if accepted && (!fields[3].ends_with(":9999") || fields[0] == "LISTEN") {
            continue;
        }
        let state = match fields[0] {
            "ESTAB" => "ESTABLISHED".to_string(),
            other => other.replace('-', "_"),
        };
        *states.entry(state).or_default() += 1;
        let inner = skmem.trim().trim_start_matches("skmem:(").trim_end_matches(')');
        for field in inner.split(',') {
            let (name, value) =
                field.split_at(field.find(|c: char| c.is_ascii_digit()).unwrap_or(field.len()));
            if ["r", "w", "f", "o"].contains(&name) {
                memory += value.parse::<u64>().unwrap();
            }
        }
    }
    (states, memory)
}

/// The site of the server's accepted sockets: the socket site with 10 open, 4 in CLOSE_WAIT.
fn accept_site(report: &Value, pid: u32) -> Value {
    let process = process(report, pid).unwrap_or_else(|| panic!("pid {pid} is reported: {report}"));
    let sites = process["sites"].as_array().unwrap();
    sites
        .iter()
        .find(|s| s["kind"] == "socket" && s["open"] == 10 && s["close_wait"] == 4)
        .unwrap_or_else(|| panic!("no site of 10 accepted sockets, 4 in CLOSE_WAIT: {sites:#?}"))
        .clone()
}

fn within_10_percent(seen: u64, truth: u64) -> bool {
    truth > 0 && seen.abs_diff(truth) as f64 <= truth as f64 * 0.10
}

fn assert_within_10_percent(seen: u64, truth: u64, what: &str) {
    assert!(within_10_percent(seen, truth), "{what}: helios-trace {seen}, ground truth {truth}");
}

/// A process in its own network namespace: its sockets' memory is what sock_diag says inside
/// that namespace (not 0: the tracer's own namespace does not have them), its TCP states and
/// CLOSE_WAIT are that namespace's.
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn socket_memory_and_tcp_states_come_from_the_process_network_namespace() {
    if !require_bpf() {
        return;
    }
    ensure_host_tracefs();
    let mut server = NsServer::start(&["--net"], &[], None);
    let tracer = Tracer::start(&["--pid", &server.pid.to_string()]);
    server.connect();
    let report = tracer.stop();
    let (states, memory) = accepted_in_namespace(server.pid);
    assert_eq!(states, BTreeMap::from([("CLOSE_WAIT".to_string(), 4), ("ESTABLISHED".to_string(), 6)]));
    let site = accept_site(&report, server.pid);
    let reported: BTreeMap<String, u64> = serde_json::from_value(site["tcp_states"].clone()).unwrap();
    assert_eq!(reported, states, "TCP states of the process's namespace");
    assert!(site["socket_memory_unavailable"].is_null(), "{site}");
    let bytes = site["socket_memory_bytes"].as_u64().expect("socket memory is known");
    // 10 sockets with 4 KiB unread each: at least that much is charged.
    assert!(bytes >= 40_960, "{bytes}");
    assert_within_10_percent(bytes, memory, "socket memory of the accepting site");
    assert_eq!(report["facts_unavailable"]["socket_memory"], 0);
}

/// A memory cgroup of our own making under the test's own, v1 or v2 as the host has it.
struct MemoryCgroup {
    dir: PathBuf,
    /// The directory this test made below its own cgroup (removed with the last leaf).
    top: PathBuf,
    v1: bool,
}

impl MemoryCgroup {
    /// `top/sub` below the test process's own memory cgroup; `limit` set when given.
    fn create(top: &str, sub: &str, limit: Option<u64>) -> MemoryCgroup {
        let own = fs::read_to_string("/proc/self/cgroup").unwrap();
        let v1 = own.lines().find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()));
        let (base, v1) = match v1 {
            Some(path) => (Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/')), true),
            None => {
                let path = own.lines().find_map(|l| l.strip_prefix("0::")).expect("a cgroup v2 line");
                (Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/')), false)
            }
        };
        let dir = base.join(top).join(sub);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        if let Some(limit) = limit {
            let file = if v1 { "memory.limit_in_bytes" } else { "memory.max" };
            fs::write(dir.join(file), limit.to_string()).unwrap_or_else(|e| panic!("{file}: {e}"));
        }
        MemoryCgroup { dir, top: base.join(top), v1 }
    }

    fn current(&self) -> u64 {
        let file = if self.v1 { "memory.usage_in_bytes" } else { "memory.current" };
        fs::read_to_string(self.dir.join(file)).unwrap().trim().parse().unwrap()
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Its processes have exited by now (a leaf empties as they are reaped).
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Then the directories above it that the test made, once empty.
        let mut dir = self.dir.parent();
        while let Some(parent) = dir.filter(|d| d.starts_with(&self.top)) {
            let _ = fs::remove_dir(parent);
            dir = parent.parent();
        }
    }
}

/// A pod-like process (own pid and network namespaces, a kubelet-like leaf with a memory
/// limit) traced by a tracer in a cgroup namespace of its own, rooted in another leaf: the
/// process's /proc/PID/cgroup reads `/../pod/ctr` to it, resolved through the host's mount
/// to the pod's memory use and limit; its socket memory and states from its namespace.
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn a_pods_memory_cgroup_is_read_from_a_tracer_in_its_own_cgroup_namespace() {
    if !require_bpf() {
        return;
    }
    ensure_host_tracefs();
    let name = format!("helios-ns-{}", std::process::id());
    let limit = 256 << 20;
    let pod = MemoryCgroup::create(&name, "pod/ctr", Some(limit));
    let tracer_cgroup = MemoryCgroup::create(&name, "tracer", None);
    let mut server = NsServer::start(&["--pid", "--net", "--fork"], &[], Some(&pod.dir));
    let mut command = Command::new("unshare");
    command.args(["--cgroup", "--", helios_trace_bin()]);
    join_cgroup_at_exec(&mut command, &tracer_cgroup.dir);
    let mut tracer = Tracer::start_with(command, &["--pid", &server.pid.to_string()]);
    let seen = fs::read_to_string(format!("/proc/{}/cgroup", tracer.pid())).unwrap();
    let from_tracer = Command::new("nsenter")
        .args(["-t", &tracer.pid().to_string(), "-C", "cat"])
        .arg(format!("/proc/{}/cgroup", server.pid))
        .output()
        .unwrap();
    let from_tracer = String::from_utf8_lossy(&from_tracer.stdout).into_owned();
    assert!(
        from_tracer.contains("/../pod/ctr"),
        "the tracer sees the pod outside its namespace: {from_tracer} ({seen})"
    );
    server.connect();
    server.grow();
    // Until the tracer's samples show the growth (polled, not a fixed wait).
    wait_for("the pod's growth measured", Duration::from_secs(20), || {
        let report = tracer.snapshot();
        let growth = process(&report, server.pid)?["resources"]["memory_growth_bytes_per_hour"].as_f64()?;
        (growth > 5e6 * 3600.0).then_some(())
    });
    let report = tracer.stop();
    let truth = pod.current();
    let resources = &process(&report, server.pid).expect("the server is reported")["resources"];
    assert_eq!(resources["memory_limit_bytes"], limit, "{resources}");
    let current = resources["memory_current_bytes"].as_u64().unwrap_or_else(|| panic!("{resources}"));
    assert_within_10_percent(current, truth, "the pod's memory use");
    assert!(resources.get("unavailable").is_none(), "{resources}");
    // The pod grew ~20 MB/s: its projection against the pod's limit, from the same numbers.
    let growth = resources["memory_growth_bytes_per_hour"].as_f64().unwrap_or_else(|| panic!("{resources}"));
    assert!(growth > 5e6 * 3600.0, "{resources}");
    let exhaustion = resources["memory_exhaustion_seconds"].as_f64().unwrap_or_else(|| panic!("{resources}"));
    let expected = (limit - current) as f64 / (growth / 3600.0);
    assert!((exhaustion - expected).abs() <= expected * 0.01 && exhaustion > 0.0, "{resources}");
    assert!(
        resources["fd_limit"].as_u64().is_some() && resources["rss_bytes"].as_u64().is_some(),
        "{resources}"
    );
    let (_, memory) = accepted_in_namespace(server.pid);
    let site = accept_site(&report, server.pid);
    assert_within_10_percent(site["socket_memory_bytes"].as_u64().unwrap_or(0), memory, "socket memory");
    drop(server);
    drop(tracer_cgroup);
}

/// A socket the tracer may read about in /proc but may not duplicate (its real uid is not the
/// process's, and it lacks CAP_SYS_PTRACE: pidfd_getfd's ptrace check uses real ids, /proc's
/// the filesystem ids): the site says why its memory is unknown, the report counts it, and the
/// rest (descriptors, TCP states, limits) is all there.
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn a_socket_memory_that_cannot_be_had_is_explained_and_counted() {
    if !require_bpf() {
        return;
    }
    ensure_host_tracefs();
    // The server: root, without any capability (so a tracer holding fewer than all may read
    // its /proc entries: the capability check of ptrace access compares permitted sets).
    let mut server =
        NsServer::start(&["--net"], &["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--"], None);
    let mut command = Command::new("setpriv");
    command.args(["--ruid=65534", "--bounding-set=-sys_ptrace", "--", helios_trace_bin()]);
    let tracer = Tracer::start_with(command, &["--pid", &server.pid.to_string()]);
    server.connect();
    let report = tracer.stop();
    let site = accept_site(&report, server.pid);
    assert!(site["socket_memory_bytes"].is_null(), "{site}");
    let why = site["socket_memory_unavailable"].as_str().unwrap_or_else(|| panic!("{site}"));
    assert!(
        why.starts_with("10 of 10 open sockets not measured: a socket of network namespace net:["),
        "{why}"
    );
    assert!(why.contains("pidfd_getfd") && why.contains("Operation not permitted"), "{why}");
    assert!(
        report["facts_unavailable"]["socket_memory"].as_u64().unwrap() >= 10,
        "{}",
        report["facts_unavailable"]
    );
    let process = process(&report, server.pid).unwrap();
    assert!(process["resources"]["unavailable"]["socket_memory_bytes"].is_string(), "{process}");
    assert!(process["resources"]["fd_limit"].as_u64().is_some(), "{process}");
    let (states, _) = accepted_in_namespace(server.pid);
    let reported: BTreeMap<String, u64> = serde_json::from_value(site["tcp_states"].clone()).unwrap();
    assert_eq!(reported, states);
    assert_eq!(reported_fds(&report, server.pid), proc_fds(server.pid), "the table equals /proc");
}

/// The tracer the way the DaemonSet runs it: `serve --proc-root /host/proc` in mount and cgroup
/// namespaces of its own, with the DaemonSet's capabilities only, the host's /proc
/// bind-mounted at the proc root and a procfs of its own mounted at /proc (as a runtime mounts
/// one; with hostPID, of the host's pid namespace: the kernel reports host pids); the
/// workload in its own pid and network namespaces. The exported open descriptors and socket
/// memory of the workload are its own.
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn serve_with_the_hosts_proc_root_exports_a_pods_sockets() {
    if !require_bpf() {
        return;
    }
    ensure_host_tracefs();
    let mut server = NsServer::start(&["--pid", "--net", "--fork"], &[], None);
    // The DaemonSet's capabilities only (no CAP_SYS_ADMIN: no entering namespaces), taken
    // after the mounts a runtime would make.
    let manifest =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/daemonset.yaml"))
            .unwrap();
    let list = manifest.lines().find_map(|l| l.trim().strip_prefix("add: ")).expect("capabilities.add");
    let caps: Vec<String> = serde_json::from_str(list).unwrap();
    let bounding: Vec<String> = caps.iter().map(|c| format!("+{}", c.to_lowercase())).collect();
    let bounding = format!("--bounding-set=-all,{}", bounding.join(","));
    // The host's /proc at a directory of the test's (the DaemonSet's /host/proc).
    let host_proc = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let script = r#"H=$1; shift; mount --rbind /proc "$H" && mount -t proc proc /proc && exec setpriv "$@""#;
    let mut command = Command::new("unshare");
    command.args(["--mount", "--cgroup", "--propagation", "private", "--", "sh", "-c", script, "sh"]);
    command.arg(host_proc.path()).args([&bounding, "--"]).arg(helios_trace_bin());
    let proc_root = host_proc.path().to_str().unwrap();
    let serve = Serve::start_with(command, &["--proc-root", proc_root, "--pid", &server.pid.to_string()]);
    server.connect();
    let truth = proc_fds(server.pid).len() as f64;
    let python = |series: BTreeMap<String, f64>| -> f64 {
        series.iter().filter(|(k, _)| k.contains(r#"comm="python3""#)).map(|(_, v)| v).sum()
    };
    let metrics = wait_for("the exporter to see the pod's descriptors", Duration::from_secs(15), || {
        let metrics = serve.metrics();
        (python(exposition_series(&metrics, "helios_trace_open_fds")) == truth).then_some(metrics)
    });
    // Socket memory settles after the connections (forward allocations are given back): the
    // exported snapshot and `ss` read at about the same time, until they agree (15 s).
    let mut seen = Vec::new();
    for _ in 0..15 {
        let exported =
            python(exposition_series(&serve.metrics(), "helios_trace_site_socket_memory_bytes")) as u64;
        // Every socket of the process (its namespace holds no other's).
        let (_, memory) = sockets_in_namespace(server.pid, false);
        seen.push((exported, memory));
        if memory >= 40_960 && within_10_percent(exported, memory) {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let (exported, memory) = *seen.last().unwrap();
    assert!(memory >= 40_960, "{seen:?}");
    assert_within_10_percent(
        exported,
        memory,
        &format!("exported socket memory of the pod's process ({seen:?})"),
    );
    let unavailable = exposition_series(&metrics, "helios_trace_facts_unavailable_total");
    assert_eq!(unavailable[r#"{fact="socket_memory"}"#], 0.0, "{unavailable:?}");
    drop(server);
    assert!(serve.stop().success());
}
