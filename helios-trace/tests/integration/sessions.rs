//! Kernel tests of an ad-hoc session: the real programs trace a workload of our own, and the
//! report must match what the kernel itself says in /proc/PID/fd, exactly.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{pods::harness::cgroup2_mount, support::*};

fn site_open(process: &serde_json::Value, kind: &str, pred: impl Fn(&serde_json::Value) -> bool) -> u64 {
    process["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == kind && pred(s))
        .map(|s| s["open"].as_u64().unwrap())
        .sum()
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn open_counts_match_the_workload_and_proc_exactly() {
    if !require_bpf() {
        return;
    }
    let mut work = Workload::spawn();
    let tracer = Tracer::start(&["--pid", &work.pid.to_string(), "--reconcile-interval", "0"]);

    let files = work.run("files 10");
    let sockets = work.run("sockets 5");
    // accept 4: [listener, client, accepted, client, accepted, ...]
    let accepted_set = work.run("accept 4");
    let accepted: Vec<i64> = accepted_set.iter().skip(2).step_by(2).copied().collect();
    assert_eq!(accepted.len(), 4);
    for fd in &files[..3] {
        work.run(&format!("close {fd}"));
    }
    for fd in &sockets[..2] {
        work.run(&format!("close {fd}"));
    }
    for fd in &accepted[..2] {
        work.run(&format!("close {fd}"));
    }
    // What the workload itself holds: 7 files; 3 + (1 listener + 4 clients + 2 accepted) sockets.
    let (own_files, own_sockets) = (7u64, 10u64);

    let truth = proc_fds(work.pid);
    let report = tracer.stop();
    let process = process(&report, work.pid).expect("the workload is reported");

    assert_eq!(reported_fds(&report, work.pid), truth, "fd-by-fd, the table equals /proc/{}/fd", work.pid);
    assert_eq!(process["open_fds"].as_u64().unwrap(), truth.len() as u64);
    let by_kind: std::collections::BTreeMap<String, u64> =
        serde_json::from_value(process["by_kind"].clone()).unwrap();
    assert_eq!(by_kind, kind_counts(&truth));
    // Opened under tracing (not before-trace): exactly what the workload holds.
    let traced = |s: &serde_json::Value| s["site"] != "before-trace";
    assert_eq!(site_open(process, "file", traced), own_files);
    assert_eq!(site_open(process, "socket", traced), own_sockets);
    // Every traced site carries the user stack that opened it.
    for site in process["sites"].as_array().unwrap().iter().filter(|s| traced(s)) {
        assert!(!site["frames"].as_array().unwrap().is_empty(), "site without frames: {site:#}");
        assert!(site["frames"][0]["address"].as_str().unwrap().starts_with("0x"));
    }
    // The files site counts 10 opened, 3 closed, by close().
    let file_site =
        process["sites"].as_array().unwrap().iter().find(|s| s["kind"] == "file" && traced(s)).unwrap();
    assert_eq!((file_site["opened"].as_u64(), file_site["closed"].as_u64()), (Some(10), Some(3)));
    assert_eq!(file_site["closed_by"]["close"], 3);
    assert_eq!(report["events"]["lost"], 0);
    assert_eq!(report["helios_trace_report"], 1);
    work.exit();
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn an_exited_process_leaves_the_table() {
    if !require_bpf() {
        return;
    }
    let mut leaver = Workload::spawn();
    let mut stayer = Workload::spawn();
    let mut tracer = Tracer::start(&[
        "--pid",
        &leaver.pid.to_string(),
        "--pid",
        &stayer.pid.to_string(),
        "--reconcile-interval",
        "0",
    ]);
    leaver.run("files 3");
    stayer.run("files 2");
    let before = tracer.snapshot();
    assert_eq!(reported_fds(&before, leaver.pid), proc_fds(leaver.pid), "present while it runs");
    let leaver_pid = leaver.pid;
    leaver.exit();
    let truth = proc_fds(stayer.pid);
    let report = tracer.stop();
    assert!(process(&report, leaver_pid).is_none(), "exited pid {leaver_pid} still reported: {report:#}");
    assert_eq!(reported_fds(&report, stayer.pid), truth);
    stayer.exit();
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn a_timed_session_prints_a_json_report() {
    if !require_bpf() {
        return;
    }
    // Activity of our own during the session, so the report cannot be empty by accident.
    let mut work = Workload::spawn();
    // Its pid only: tests beside this one flood a node-wide session's ring buffer (a lost
    // record is counted, but this test's four opens could be among them).
    let mut child = Command::new(helios_trace_bin())
        .args(["--duration", "2s", "--format", "json", "--pid", &work.pid.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The duration counts from the attach, which takes its time on a loaded machine.
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    while !said.contains("attached") {
        let read = std::io::BufRead::read_line(&mut stderr, &mut said).unwrap();
        assert!(read > 0, "helios-trace ended before attaching: {said}");
    }
    work.run("files 4");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{said}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON report");
    assert_eq!(report["helios_trace_report"], 1);
    let duration = report["duration_seconds"].as_f64().unwrap();
    assert!((1.9..4.0).contains(&duration), "duration {duration}");
    assert!(report["events"]["received"].as_u64().unwrap() > 0);
    let process = process(&report, work.pid).expect("our workload was active and is reported");
    assert_eq!(site_open(process, "file", |s| s["site"] != "before-trace"), 4, "the workload opened 4 files");
    work.exit();
}

/// README, "Using it": without a terminal, one summary line per `--interval` goes to stderr;
/// `--view quiet` writes nothing until the report.
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn without_a_terminal_a_summary_line_per_interval_goes_to_stderr() {
    if !require_bpf() {
        return;
    }
    let w = Workload::spawn();
    let pid = w.pid.to_string();
    let summaries = |tracer: &mut Tracer| {
        let lines = tracer.stderr_lines();
        let summary =
            |l: &&String| l.starts_with("helios-trace ") && l.contains(" open, ") && l.contains(" events (");
        lines.iter().filter(summary).count()
    };
    // The lines come with the once-a-second sampling, so within a second of their interval.
    let mut counted = Vec::new();
    for interval in ["1s", "3s"] {
        let mut tracer = Tracer::start(&["--pid", &pid, "--interval", interval]);
        summaries(&mut tracer);
        std::thread::sleep(Duration::from_millis(6500));
        counted.push(summaries(&mut tracer));
        tracer.stop();
    }
    assert!((5..=7).contains(&counted[0]), "--interval 1s: {} summary lines in 6.5 s", counted[0]);
    assert!((2..=3).contains(&counted[1]), "--interval 3s: {} summary lines in 6.5 s", counted[1]);
    let mut quiet = Tracer::start(&["--pid", &pid, "--view", "quiet"]);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(summaries(&mut quiet), 0, "--view quiet");
    quiet.stop();
}

fn run_cli(args: &[&str]) -> (i32, String) {
    let out = Command::new(helios_trace_bin()).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The hidden `uprobe-maker` serves only a tracer that started it: run by anyone else (here
/// the test, its socket's peer and parent, but not helios-trace), it refuses in one line before
/// it keeps any capability, and without a socket too.
#[test]
fn the_uprobe_maker_refuses_to_serve_anyone_but_its_tracer() {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    for stdin in [Stdio::from(std::os::fd::OwnedFd::from(theirs)), Stdio::null()] {
        let out = Command::new(helios_trace_bin()).arg("uprobe-maker").stdin(stdin).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("helios-trace uprobe maker: "), "{stderr}");
    }
    drop(ours);
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let (code, stderr) = run_cli(&["--pid", "2147483646", "--duration", "1s"]);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.trim(), "helios-trace: no process with pid 2147483646");
    let (code, stderr) = run_cli(&["--duration", "soon"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("'soon' is not a duration"), "{stderr}");
    let (code, _) = run_cli(&["--format", "yaml"]);
    assert_eq!(code, 2);
    let (code, stderr) = run_cli(&["--cgroup", "/tmp", "--duration", "1s"]);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--cgroup /tmp is not a cgroup v2 directory"), "{stderr}");
}

/// Run helios-trace as an unprivileged user (nobody) with only `caps` as ambient capabilities.
fn run_unprivileged(caps: &str) -> (i32, String) {
    let mut command = Command::new("setpriv");
    command.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
    if !caps.is_empty() {
        command.arg(format!("--inh-caps={caps}")).arg(format!("--ambient-caps={caps}"));
    }
    let out = command.arg(helios_trace_bin()).args(["--duration", "1s"]).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn a_missing_privilege_names_the_capability() {
    if !require_bpf() {
        return; // setpriv needs root to change users
    }
    let (code, stderr) = run_unprivileged("");
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("helios-trace: missing capability CAP_BPF and CAP_PERFMON:"), "{stderr}");
    let (code, stderr) = run_unprivileged("+bpf");
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.starts_with("helios-trace: missing capability CAP_PERFMON:"), "{stderr}");
    // Each of the four missing alone, the others held: the one missing is named.
    ensure_host_tracefs();
    let tracefs = std::fs::metadata("/sys/kernel/tracing").unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&tracefs.permissions()) & 0o777,
        0o700,
        "tracefs as the kernel mounts it"
    );
    for (caps, named) in [
        ("+perfmon,+sys_ptrace,+dac_read_search", "CAP_BPF"),
        ("+bpf,+sys_ptrace,+dac_read_search", "CAP_PERFMON"),
        ("+bpf,+perfmon,+sys_ptrace", "CAP_DAC_READ_SEARCH"),
    ] {
        let (code, stderr) = run_unprivileged(caps);
        assert_eq!((code, stderr.lines().count()), (1, 1), "{caps}: {stderr}");
        assert!(
            stderr.starts_with(&format!("helios-trace: missing capability {named}:")),
            "{caps}: {stderr}"
        );
    }
    // Without CAP_SYS_PTRACE it traces, and warns what it cannot read.
    let (code, stderr) = run_unprivileged("+bpf,+perfmon,+dac_read_search");
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains(
            "without CAP_SYS_PTRACE, descriptors of other users' processes cannot be read from /proc"
        ),
        "{stderr}"
    );
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn works_as_nobody_with_exactly_four_capabilities_and_keeps_three() {
    if !require_bpf() {
        return; // setpriv needs root to change users
    }
    // Not root: user nobody, with CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH
    // as its only capabilities (ambient, so they survive the exec), tracing a root process.
    ensure_host_tracefs();
    let mut work = Workload::spawn();
    let caps = "+bpf,+perfmon,+sys_ptrace,+dac_read_search";
    let mut setpriv = Command::new("setpriv");
    setpriv
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--inh-caps={caps}"))
        .arg(format!("--ambient-caps={caps}"))
        .arg(format!("--bounding-set=-all,{caps}"))
        .arg(helios_trace_bin());
    let tracer = Tracer::start_with(setpriv, &["--pid", &work.pid.to_string()]);
    // Attached: CAP_PERFMON (only needed to attach) is gone from every thread.
    for (effective, permitted) in thread_capabilities(tracer.pid()) {
        assert_eq!(
            (effective, permitted),
            (KEPT_CAPABILITIES, KEPT_CAPABILITIES),
            "{effective:x}/{permitted:x}"
        );
    }
    work.run("files 3");
    work.run("sockets 2");
    let truth = proc_fds(work.pid);
    let report = tracer.stop();
    assert_eq!(reported_fds(&report, work.pid), truth, "fd-by-fd, the table equals /proc/{}/fd", work.pid);
    work.exit();
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn as_root_it_keeps_only_three_capabilities_once_attached() {
    if !require_bpf() {
        return;
    }
    let work = Workload::spawn();
    let tracer = Tracer::start(&["--pid", &work.pid.to_string()]);
    let threads = thread_capabilities(tracer.pid());
    assert!(threads.len() > 1, "the runtime's threads are there too: {threads:?}");
    for (effective, permitted) in threads {
        assert_eq!(
            (effective, permitted),
            (KEPT_CAPABILITIES, KEPT_CAPABILITIES),
            "{effective:x}/{permitted:x}"
        );
    }
    let inheritable = std::fs::read_to_string(format!("/proc/{}/status", tracer.pid())).unwrap();
    assert!(inheritable.lines().any(|l| l == "CapInh:\t0000000000000000"), "{inheritable}");
    assert!(inheritable.lines().any(|l| l == "CapAmb:\t0000000000000000"), "{inheritable}");
    // Nothing it might exec would gain what it gave up (as root, the whole bounding set).
    assert!(inheritable.lines().any(|l| l == "NoNewPrivs:\t1"), "{inheritable}");
    tracer.stop();
    work.exit();
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn beyond_max_stacks_descriptors_are_tracked_under_site_limit() {
    if !require_bpf() {
        return;
    }
    let mut work = Workload::spawn();
    let tracer = Tracer::start(&["--pid", &work.pid.to_string(), "--max-stacks", "1"]);
    work.run("files 3"); // the one site remembered
    work.run("sockets 2"); // a second site: beyond the limit
    let truth = proc_fds(work.pid);
    let report = tracer.stop();
    let process = process(&report, work.pid).expect("the workload is reported");
    assert_eq!(reported_fds(&report, work.pid), truth, "every descriptor is still tracked");
    assert_eq!(site_open(process, "file", |s| s["site"] != "before-trace"), 3);
    assert_eq!(site_open(process, "socket", |s| s["site"] == "site-limit"), 2);
    assert!(report["events"]["sites_dropped"].as_u64().unwrap() >= 1, "{:#}", report["events"]);
    work.exit();
}

/// A cgroup of the test's own, removed (after its processes left) when dropped.
struct TestCgroup(std::path::PathBuf);

impl TestCgroup {
    fn new(parent: &std::path::Path, name: &str) -> TestCgroup {
        let dir = parent.join(name);
        std::fs::create_dir(&dir).unwrap();
        TestCgroup(dir)
    }

    fn enter(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn cgroup_traces_its_processes_and_those_below_it_only() {
    if !require_bpf() {
        return; // creating cgroups needs root
    }
    let service = TestCgroup::new(&cgroup2_mount(), &format!("helios-trace-test-{}", std::process::id()));
    let worker = TestCgroup::new(&service.0, "worker");
    let mut before = Workload::spawn(); // in the cgroup before the start: from the /proc baseline
    worker.enter(before.pid);
    let mut outside = Workload::spawn();
    let tracer = Tracer::start(&["--cgroup", service.0.to_str().unwrap()]);
    let mut later = Workload::spawn(); // moves in after the start
    service.enter(later.pid);
    before.run("files 2");
    later.run("sockets 3");
    outside.run("files 4");
    let truths = [(before.pid, proc_fds(before.pid)), (later.pid, proc_fds(later.pid))];
    let report = tracer.stop();
    for (pid, truth) in truths {
        assert_eq!(reported_fds(&report, pid), truth, "pid {pid} in the cgroup: exactly /proc");
    }
    assert_eq!(site_open(process(&report, before.pid).unwrap(), "file", |s| s["site"] != "before-trace"), 2);
    assert!(process(&report, outside.pid).is_none(), "a process outside the cgroup is not traced");
    for w in [before, later, outside] {
        w.exit();
    }
    drop(worker);
}

/// A tracer inside the cgroup it traces finds itself and its uprobe maker there at the start,
/// and traces neither: they are ours (sys/uprobes.rs), so neither is in the report, which lists
/// every traced process. A Node.js in the cgroup makes the maker work once the programs are
/// attached (libuv's uprobes for its file), so the programs' own exclusion is tried too.
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn a_tracer_in_the_cgroup_it_traces_leaves_itself_and_its_uprobe_maker_out() {
    if !require_bpf() {
        return; // creating cgroups needs root
    }
    let service = TestCgroup::new(&cgroup2_mount(), &format!("helios-trace-self-{}", std::process::id()));
    let mut inside = Workload::spawn();
    service.enter(inside.pid);
    let mut node = Command::new("node").args(["-e", "setTimeout(() => {}, 120000)"]).spawn().unwrap();
    service.enter(node.id());
    let mut enter_then_trace = Command::new("sh");
    let procs = service.0.join("cgroup.procs");
    enter_then_trace.arg("-c").arg(format!("echo $$ > {} && exec \"$0\" \"$@\"", procs.display()));
    enter_then_trace.arg(helios_trace_bin());
    let tracer = Tracer::start_with(enter_then_trace, &["--cgroup", service.0.to_str().unwrap()]);
    let maker = uprobe_maker_of(tracer.pid());
    let members = std::fs::read_to_string(&procs).unwrap();
    for pid in [tracer.pid(), maker, inside.pid] {
        assert!(members.lines().any(|l| l == pid.to_string()), "{pid} in the cgroup: {members}");
    }
    inside.run("files 2");
    let truth = proc_fds(inside.pid);
    let tracer_pid = tracer.pid();
    let report = tracer.stop();
    assert_eq!(reported_fds(&report, inside.pid), truth, "the workload beside it: exactly /proc");
    assert!(process(&report, tracer_pid).is_none(), "the tracer is not traced");
    assert!(process(&report, maker).is_none(), "its uprobe maker is not traced");
    assert!(process(&report, node.id()).is_some(), "the Node.js beside it is");
    node.kill().unwrap();
    node.wait().unwrap();
    inside.exit();
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn redact_paths_hides_every_path() {
    if !require_bpf() {
        return;
    }
    let mut work = Workload::spawn();
    let tracer = Tracer::start(&["--pid", &work.pid.to_string(), "--redact-paths"]);
    let secret = work.path("customer-4711-invoices.db");
    work.run(&format!("open {secret} 0"));
    let report = tracer.stop();
    let text = report.to_string();
    assert!(!text.contains("customer-4711"), "a path leaked into the report: {text}");
    assert!(!text.contains(work.scratch.path().to_str().unwrap()), "{text}");
    assert!(text.contains("[path redacted]"), "{text}");
    work.exit();
}

/// A Python workload whose directory, arguments, file and memfd names carry `SECRET`. It
/// holds raw descriptors (fd 3 the file, fd 4 the memfd): a file object would be closed by
/// the interpreter's finalization before the exit the report describes.
const SECRET: &str = "s3cr3t-4711";
const SECRET_WORKLOAD: &str = r#"
import os, sys, time
time.sleep(1)
here = os.path.dirname(os.path.abspath(__file__))
held = [os.open(os.path.join(here, "data-s3cr3t-4711.txt"), os.O_WRONLY | os.O_CREAT)]
held.append(os.memfd_create("memfd-s3cr3t-4711"))
print("ready", flush=True)
sys.stdin.readline()
"#;

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn redact_paths_leaves_no_secret_in_any_output() {
    if !require_bpf() {
        return;
    }
    let dir = tempfile::Builder::new().prefix(&format!("helios-{SECRET}-")).tempdir_in("/tmp").unwrap();
    let script = dir.path().join("leaky.py");
    std::fs::write(&script, SECRET_WORKLOAD).unwrap();
    let script = script.to_str().unwrap();
    let token = format!("--token={SECRET}");
    let assert_clean = |what: &str, text: &str| {
        assert!(!text.contains(SECRET), "{what} shows the secret:\n{text}");
    };
    // `run`: the text report on stdout, what it says on stderr, the JSON report, the flame graph.
    let json = dir.path().join("report.json");
    let svg = dir.path().join("open.svg");
    for format in ["text", "json"] {
        let mut command = Command::new(helios_trace_bin());
        command.args(["run", "--redact-paths", "--list-fds", "--view", "lines", "--format", format]);
        if format == "json" {
            command.arg("-o").arg(&json).arg("--flamegraph").arg(&svg);
        }
        let out =
            command.args(["--", "/usr/bin/python3", script, &token]).stdin(Stdio::null()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_clean(&format!("run --format {format}: stdout"), &stdout);
        assert_clean(&format!("run --format {format}: stderr"), &String::from_utf8_lossy(&out.stderr));
        if format == "text" {
            assert!(stdout.contains("command `python3 [arguments redacted]`"), "{stdout}");
            // Every descriptor with a path or name (/dev/null, the file, the memfd) shows it redacted.
            for fd in ["fd 0 ", "fd 3 ", "fd 4 "] {
                let line = stdout.lines().map(str::trim_start).find(|l| l.starts_with(fd));
                let detail = line.and_then(|l| l.split_once("): ")).map(|(_, detail)| detail);
                assert_eq!(detail, Some("[path redacted]"), "{fd}in {stdout}");
            }
        }
    }
    let report = std::fs::read_to_string(&json).unwrap();
    assert_clean("the JSON report", &report);
    assert!(report.contains("[path redacted]") && report.contains("[arguments redacted]"), "{report}");
    assert_clean("the flame graph", &std::fs::read_to_string(&svg).unwrap());
    // `serve`: every endpoint while the workload holds its descriptors.
    let serve = Serve::start(&["--redact-paths"]);
    let mut workload = Command::new("/usr/bin/python3")
        .args([script, &token])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(workload.stdout.as_mut().unwrap()), &mut ready)
        .unwrap();
    assert_eq!(ready, "ready\n");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = serve.metrics();
        if metrics.lines().any(|l| {
            l.starts_with("helios_trace_open_fds{") && l.contains("kind=\"memfd\"") && l.contains("python3")
        }) {
            assert_clean("/metrics", &metrics);
            break;
        }
        assert!(Instant::now() < deadline, "the workload's memfd never showed: {metrics}");
        std::thread::sleep(Duration::from_millis(500));
    }
    for path in ["/sites", "/flamegraph.svg"] {
        let (status, body) = serve.get(path);
        assert_eq!(status, 200);
        assert_clean(path, &body);
    }
    drop(workload.stdin.take());
    workload.wait().unwrap();
}
