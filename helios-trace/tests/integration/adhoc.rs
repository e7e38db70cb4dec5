//! Kernel tests of the ad-hoc session people reach for (issue 8): `run -- CMD`, leak verdicts
//! on real workloads, CLOSE_WAIT sockets, and the live view in a real terminal (tmux).
use std::{
    fs,
    io::Write as _,
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::support::*;
use serde_json::Value;

fn sites(process: &Value) -> &Vec<Value> {
    process["sites"].as_array().unwrap()
}

fn suspected(process: &Value) -> Vec<&Value> {
    sites(process).iter().filter(|s| s["suspected_leak"] == true).collect()
}

/// A path of our own (tests run in parallel).
fn scratch_file(name: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}-{n}", std::process::id()))
}

/// `helios-trace run` with the report in a JSON file; stdin feeds the command.
fn run(args: &[&str], env: &[(&str, &str)], stdin: &str) -> (i32, Value, String) {
    // Under sudo the report is written as the invoking user: somewhere they may write.
    let user_dir =
        env.iter().find(|(k, _)| *k == "SUDO_UID").map(|(_, uid)| directory_of_user(uid.parse().unwrap()));
    let report = match &user_dir {
        Some(dir) => dir.path().join("run-report.json"),
        None => scratch_file("run-report.json"),
    };
    let mut command = Command::new(helios_trace_bin());
    command
        .args(["run", "--format", "json", "--view", "quiet", "-o"])
        .arg(&report)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    // A test run through sudo must not switch users unless the test says so.
    for var in ["SUDO_UID", "SUDO_GID", "SUDO_USER"] {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    let mut child = command.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = fs::read_to_string(&report).unwrap();
    let _ = fs::remove_file(&report);
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("report is not JSON ({e}): {text:?}"));
    (out.status.code().unwrap_or(-1), json, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A fresh directory under /tmp (traversable by everyone, wherever the checkout is) that only
/// `uid` may enter and write.
fn directory_of_user(uid: u32) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("helios-user-").tempdir_in("/tmp").unwrap();
    std::os::unix::fs::chown(dir.path(), Some(uid), Some(uid)).unwrap();
    fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    dir
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn under_sudo_files_are_written_as_the_invoking_user() {
    use std::os::unix::fs::MetadataExt as _;
    if !require_bpf() {
        return;
    }
    let sudo = [("SUDO_UID", "65534"), ("SUDO_GID", "65534"), ("SUDO_USER", "nobody")];
    let home = directory_of_user(65534);
    let workload = Workload::spawn();
    // `helios-trace [run] OPTIONS -o REPORT [-- CMD]`
    let helios = |args: &[&str], report: &Path| {
        let (options, cmd) = args.split_at(args.iter().position(|a| *a == "--").unwrap_or(args.len()));
        let mut command = Command::new(helios_trace_bin());
        command.args(options).args(["--format", "json", "--view", "quiet", "-o"]).arg(report).args(cmd);
        command.envs(sudo).output().unwrap()
    };
    // The ad-hoc session and `run`: root cannot create files in that directory once it has
    // dropped its capabilities (no CAP_DAC_OVERRIDE); the user can, and owns the report.
    let pid = workload.pid.to_string();
    let session = home.path().join("session.json");
    let out = helios(
        &["--pid", &pid, "--duration", "1s", "--flamegraph", &home.path().join("open.svg").to_string_lossy()],
        &session,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let under_run = home.path().join("run.json");
    let out = helios(&["run", "--", "true"], &under_run);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for file in [&session, &under_run, &home.path().join("open.svg")] {
        let meta = fs::metadata(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "{}", file.display());
    }
    let report: Value = serde_json::from_str(&fs::read_to_string(&session).unwrap()).unwrap();
    assert!(process(&report, workload.pid).is_some(), "the report is whole");
    // One second is too short for any verdict, and the report says so rather than "no leak".
    assert_eq!(
        (report["judged"].as_bool(), report["judge_after_seconds"].as_f64()),
        (Some(false), Some(9.0))
    );
    assert_eq!(fs::read_dir(home.path()).unwrap().count(), 3, "no probe or temporary file left");
    // Where the user may not write, the start-up check says so before tracing (exit 2), even
    // though root could write there now.
    let root_only = tempfile::tempdir_in("/tmp").unwrap();
    fs::set_permissions(root_only.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let refused = root_only.path().join("r.json");
    let out = helios(&["--pid", &pid, "--duration", "1s"], &refused);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said = format!("helios-trace: cannot write the report to {}: Permission denied", refused.display());
    assert!(stderr.starts_with(&said) && stderr.trim().lines().count() == 1, "{stderr}");
    assert!(!refused.exists());
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn run_names_the_leaking_site_and_passes_the_exit_status_through() {
    if !require_bpf() {
        return;
    }
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let fdwork = fdwork_bin().to_str().unwrap();
    // The command opens five files, keeps them, and exits with status 3.
    let (code, report, stdout) =
        run(&["--", fdwork, scratch.path().to_str().unwrap()], &[], "files 5\nexit 3\n");
    assert_eq!(code, 3, "helios-trace exits with the command's status; its output: {stdout}");
    assert_eq!(report["command"]["exit_code"], 3);
    let pid = report["command"]["pid"].as_u64().unwrap();
    assert!(stdout.starts_with(&format!("ready {pid}")), "the command ran with our stdio: {stdout}");
    let process =
        process(&report, pid as u32).unwrap_or_else(|| panic!("the command is reported: {report:#}"));
    assert_eq!(process["exited"], true);
    // Ranked first: the site that still held the five files when the command exited.
    let site = &sites(process)[0];
    assert_eq!((site["kind"].as_str(), site["open"].as_u64()), (Some("file"), Some(5)), "{site:#}");
    assert_eq!(site["opened"], 5);
    assert_eq!(site["closed_by"]["exit"], 5, "the exit closed them");
    assert_eq!(site["closed_only_at_exit"], true);
    assert!(!site["frames"].as_array().unwrap().is_empty(), "the site names its stack: {site:#}");
    assert_ne!(site["frame"], "no-stack");
    // Traced from its first instruction: the exec itself closed the gate's descriptors.
    let before = sites(process).iter().find(|s| s["site"] == "before-trace" && s["kind"] == "pipe").unwrap();
    assert!(before["closed_by"]["exec"].as_u64().unwrap() >= 1, "{before:#}");
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn run_switches_to_the_sudo_user_and_reports_signals() {
    if !require_bpf() {
        return;
    }
    let sudo = [("SUDO_UID", "65534"), ("SUDO_GID", "65534"), ("SUDO_USER", "nobody")];
    // Their uid, gid, supplementary groups (nobody's is 65534 alone: root's 0 would show
    // had they been kept) and HOME, from the password database.
    let script = "id -u; id -g; id -G; echo $HOME";
    let (code, report, stdout) = run(&["--", "sh", "-c", script], &sudo, "");
    assert_eq!((code, stdout.as_str()), (0, "65534\n65534\n65534\n/nonexistent\n"));
    assert_eq!(report["command"]["argv"], serde_json::json!(["sh", "-c", script]));
    let (code, report, _) = run(&["--", "sh", "-c", "kill -TERM $$"], &[], "");
    assert_eq!(code, 128 + libc::SIGTERM);
    assert_eq!(report["command"]["signal"], libc::SIGTERM);
    // --duration ends the command the way timeout(1) does.
    let started = Instant::now();
    let (code, report, _) = run(&["--duration", "1s", "--", "sleep", "60"], &[], "");
    assert_eq!(
        (code, report["command"]["signal"].as_i64()),
        (128 + libc::SIGTERM, Some(libc::SIGTERM as i64))
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    let out = Command::new(helios_trace_bin()).args(["run", "--", "no-such-command-here"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "helios-trace: cannot run no-such-command-here: no such command"
    );
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn slow_growth_among_churn_is_suspected_and_a_steady_site_never() {
    if !require_bpf() {
        return;
    }
    let mut steady = Workload::spawn();
    let mut leaker = Workload::spawn();
    let mut tracer = Tracer::start(&["--pid", &steady.pid.to_string(), "--pid", &leaker.pid.to_string()]);
    let started = Instant::now();
    // Both open and close ~300 files a second at one call site. The steady one also keeps a
    // pool of 20 open from the start (old descriptors, a level count); the leaker keeps one
    // more each second.
    steady.run("churn-bg 300 0 20");
    leaker.run("churn-bg 300 1000 0");
    let mut found: Option<(Duration, Value)> = None;
    while found.is_none() || started.elapsed() < Duration::from_secs(20) {
        assert!(started.elapsed() < Duration::from_secs(60), "no suspected leak within a minute");
        std::thread::sleep(Duration::from_secs(2));
        let report = tracer.snapshot();
        let steady_process = process(&report, steady.pid).unwrap();
        assert!(suspected(steady_process).is_empty(), "a steady site is never suspected: {steady_process:#}");
        // 20 held, plus at most one being opened and closed at that instant.
        let pool = sites(steady_process)
            .iter()
            .find(|s| s["kind"] == "file" && (20..=21).contains(&s["open"].as_u64().unwrap()));
        assert!(
            pool.is_some_and(|s| s["opened"].as_u64().unwrap() > 100),
            "the pool site churns too: {steady_process:#}"
        );
        let leaker_process = process(&report, leaker.pid).unwrap();
        if found.is_none()
            && let Some(site) = suspected(leaker_process).first()
        {
            found = Some((started.elapsed(), (*site).clone()));
        }
    }
    let (after, site) = found.unwrap();
    eprintln!("suspected after {after:?}: {}", site["why"]);
    // One descriptor a second is kept, among hundreds opened and closed at the same site.
    let (open, opened) = (site["open"].as_u64().unwrap(), site["opened"].as_u64().unwrap());
    assert!(open >= 10 && opened >= 30 * open, "open {open} of {opened} opened");
    let growth = site["growth_per_minute"].as_f64().unwrap();
    assert!((40.0..=80.0).contains(&growth), "about 60/min: {growth}");
    assert!(site["trend"]["p_value"].as_f64().unwrap() < 0.001);
    assert!(site["why"].as_str().unwrap().contains("older than 10s"), "{site:#}");
    tracer.stop();
    steady.exit();
    leaker.exit();
}

/// Issue 24: `run`'s final report keeps what /proc said of a process while it ran. The
/// command leaves a socket in CLOSE_WAIT (its peer hung up, it never closed it) and exits: after
/// its exit /proc has nothing of it, yet the report shows the CLOSE_WAIT, the socket's details
/// and memory and the process's resources, as read at most a couple of seconds before the exit.
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn run_keeps_the_last_facts_of_a_command_that_exited() {
    if !require_bpf() {
        return;
    }
    let script = "import os, socket, time\n\
                  server = socket.socket()\n\
                  server.bind(('127.0.0.1', 0))\n\
                  server.listen()\n\
                  client = socket.create_connection(server.getsockname())\n\
                  accepted, _ = server.accept()\n\
                  client.close()\n\
                  time.sleep(3)\n\
                  os._exit(0)\n";
    let out = Command::new(helios_trace_bin())
        .args(["run", "--format", "json", "--view", "quiet", "--", "/usr/bin/python3", "-c", script])
        .env_remove("SUDO_UID")
        .env_remove("SUDO_GID")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pid = report["command"]["pid"].as_u64().unwrap() as u32;
    let p = process(&report, pid).unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(p["exited"], true);
    let before_exit = p["facts_before_exit_seconds"].as_f64().unwrap_or_else(|| panic!("{p:#}"));
    assert!((0.0..=2.5).contains(&before_exit), "read {before_exit} s before the exit");
    assert!(p["resources"]["rss_bytes"].as_u64().is_some_and(|rss| rss > 0), "{:#}", p["resources"]);
    let close_wait: u64 = sites(p).iter().map(|s| s["close_wait"].as_u64().unwrap()).sum();
    assert_eq!(close_wait, 1, "the accepted socket: {p:#}");
    let accepted = sites(p).iter().find(|s| s["close_wait"] == 1).unwrap();
    assert!(accepted["socket_memory_bytes"].is_u64(), "{accepted:#}");
    let detail = accepted["examples"][0]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("127.0.0.1"), "the socket's addresses, read while it ran: {accepted:#}");
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn sockets_a_server_never_closed_after_the_peer_hung_up_are_close_wait_at_their_site() {
    if !require_bpf() {
        return;
    }
    let mut server = Workload::spawn();
    let mut tracer = Tracer::start(&["--pid", &server.pid.to_string()]);
    let port = server.run("serve-bg")[0] as u16;
    for _ in 0..5 {
        // Connect and hang up at once: the server's accepted socket gets our FIN.
        drop(TcpStream::connect(("127.0.0.1", port)).unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let site = loop {
        let report = tracer.snapshot();
        let process = process(&report, server.pid).unwrap().clone();
        if let Some(site) = sites(&process).iter().find(|s| s["close_wait"].as_u64() == Some(5)) {
            break site.clone();
        }
        assert!(Instant::now() < deadline, "no site with 5 sockets in CLOSE_WAIT: {process:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(site["kind"], "socket");
    assert_eq!(site["open"], 5);
    assert_eq!(site["tcp_states"], serde_json::json!({"CLOSE_WAIT": 5}));
    assert_ne!(site["site"], "before-trace");
    let example = site["examples"][0]["detail"].as_str().unwrap();
    assert!(example.starts_with("TCP 127.0.0.1:") && example.ends_with("CLOSE_WAIT"), "{example}");
    tracer.stop();
    server.exit();
}

/// A tmux server of our own, with one detached session of a fixed size (holders.rs drives
/// the live view too: one server per test).
pub(crate) struct Tmux {
    socket: String,
}

impl Tmux {
    pub(crate) fn start(command: &str) -> Tmux {
        static SERVERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SERVERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmux = Tmux { socket: format!("helios-trace-test-{}-{n}", std::process::id()) };
        let status = tmux
            .command()
            .args(["new-session", "-d", "-x", "200", "-y", "45", command])
            .env("TERM", "xterm-256color")
            .status()
            .expect("tmux runs (cargo xtask setup --tests installs it)");
        assert!(status.success());
        tmux
    }

    fn command(&self) -> Command {
        let mut command = Command::new("tmux");
        command.args(["-L", &self.socket, "-f", "/dev/null"]);
        command
    }

    pub(crate) fn screen(&self) -> String {
        let out = self.command().args(["capture-pane", "-p"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub(crate) fn keys(&self, keys: &str) {
        assert!(self.command().args(["send-keys", keys]).status().unwrap().success());
    }

    /// The screen once it shows `what`.
    pub(crate) fn wait_for(&self, what: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if screen.contains(what) {
                return screen;
            }
            assert!(Instant::now() < deadline, "the screen never showed {what:?}:\n{screen}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // The server is gone already when its last session ended.
        let _ = self.command().arg("kill-server").stderr(Stdio::null()).status();
    }
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn the_live_view_shows_the_leaking_site_and_quits_on_q() {
    if !require_bpf() {
        return;
    }
    let mut work = Workload::spawn();
    work.run("churn-bg 100 200 0"); // keeps five a second
    let report_path = scratch_file("live-report.json");
    let status_path = scratch_file("live-status");
    let _ = fs::remove_file(&status_path);
    let tmux = Tmux::start(&format!(
        "{} -p {} --interval 1s --min-age 2s --format json -o {}; echo $? > {}",
        helios_trace_bin(),
        work.pid,
        report_path.display(),
        status_path.display()
    ));
    let sites_screen = tmux.wait_for("LEAK?", Duration::from_secs(40));
    assert!(sites_screen.contains("1 suspected leak"), "{sites_screen}");
    assert!(sites_screen.contains("fdwork"), "{sites_screen}");
    tmux.keys("v");
    let processes_screen = tmux.wait_for("TOP SITE", Duration::from_secs(5));
    assert!(processes_screen.contains(&work.pid.to_string()), "{processes_screen}");
    tmux.keys("p");
    tmux.wait_for("[PAUSED]", Duration::from_secs(5));
    tmux.keys("q");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Ok(status) = fs::read_to_string(&status_path) {
            break status;
        }
        assert!(Instant::now() < deadline, "helios-trace did not quit on q:\n{}", tmux.screen());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.trim(), "0");
    let report: Value = serde_json::from_str(&fs::read_to_string(&report_path).unwrap()).unwrap();
    let _ = fs::remove_file(&report_path);
    let _ = fs::remove_file(&status_path);
    let leak = suspected(process(&report, work.pid).unwrap())[0].clone();
    let frame = leak["frame"].as_str().unwrap();
    assert!(sites_screen.contains(frame), "the live view named the site {frame}:\n{sites_screen}");
    work.exit();
}

/// `-o FILE` replaces an earlier report whole at the end, and only then: a start that fails and a
/// session killed before its end leave the earlier report as it was.
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn an_earlier_report_survives_a_failed_start_and_a_killed_session() {
    if !require_bpf() {
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let report = dir.path().join("report.json");
    let earlier = "{\"helios_trace_report\": 1, \"earlier\": true}\n";
    fs::write(&report, earlier).unwrap();
    // A usage error (an unknown pid) after the output was checked.
    let failed = Command::new(helios_trace_bin())
        .args(["--pid", "999999999", "--format", "json", "-o"])
        .arg(&report)
        .output()
        .unwrap();
    assert_eq!(failed.status.code(), Some(2), "{}", String::from_utf8_lossy(&failed.stderr));
    assert_eq!(fs::read_to_string(&report).unwrap(), earlier, "a failed start leaves it");
    // Attached and tracing, then killed.
    let mut command = Command::new(helios_trace_bin());
    command.args(["--view", "quiet", "-o"]).arg(&report);
    let tracer = Tracer::start_with(command, &[]);
    assert_eq!(fs::read_to_string(&report).unwrap(), earlier, "tracing leaves it");
    signal(tracer.pid(), libc::SIGKILL);
    drop(tracer);
    assert_eq!(fs::read_to_string(&report).unwrap(), earlier, "a killed session leaves it");
    let names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["report.json"], "no temporary file left behind");
    // A session that ends replaces it whole.
    let done = Command::new(helios_trace_bin())
        .args(["--pid", &std::process::id().to_string(), "--duration", "1s", "--view", "quiet"])
        .args(["--format", "json", "-o"])
        .arg(&report)
        .output()
        .unwrap();
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    let json: Value = serde_json::from_str(&fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["helios_trace_report"], 1);
    assert!(json.get("earlier").is_none());
}

/// `--flamegraph FILE`: an SVG of what is open, by the stack that opened it; the leaking
/// function of a native leaker is in it, as wide as what it leaked.
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn the_flame_graph_names_the_leaking_function() {
    if !require_bpf() {
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let svg = dir.path().join("open.svg");
    let mut leaker = Workload::spawn_command(Command::new(leaker_bin()));
    let mut command = Command::new(helios_trace_bin());
    command.args(["--view", "quiet", "--pid", &leaker.pid.to_string(), "--flamegraph"]).arg(&svg);
    let tracer = Tracer::start_with(command, &[]);
    assert_eq!(leaker.run("files 7").len(), 7);
    let report = tracer.stop();
    assert!(process(&report, leaker.pid).is_some(), "{report}");
    let text = fs::read_to_string(&svg).unwrap();
    assert!(text.contains("</svg>"), "a whole SVG");
    assert!(text.contains("leak_file"), "the leaking function is named: {text}");
    assert!(text.contains("7 descriptors"), "as wide as what it leaked");
    leaker.exit();
}

/// JSON on stdout is one report per line (JSON Lines, README "Using it"): the SIGUSR1 snapshots
/// and the final report alike, so a reader that takes a report per line reads them all.
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn json_on_stdout_is_one_report_per_line_snapshots_and_the_final_one() {
    if !require_bpf() {
        return;
    }
    let own = std::process::id().to_string();
    let mut tracer = Tracer::start(&["--pid", &own]);
    let snapshot = tracer.snapshot();
    assert!(snapshot["processes"].is_array(), "{snapshot:#}");
    let text = tracer.stop_text();
    assert_eq!(text.lines().count(), 1, "the final report is not one line:\n{text}");
    let report: Value = serde_json::from_str(text.trim_end()).unwrap();
    assert!(report["processes"].is_array(), "{report:#}");
}
