//! Python frames at the open site (issue 5): CPython workloads (tests/workloads/pyleaks.py)
//! leak from functions of known names, on every CPython 3.10+ of the machine (Debian's
//! /usr/bin/python3 and pyenv's), from the main thread, another thread, and while another
//! thread spins in Python; the report must name each leaking function, file and line, agree
//! with /proc/PID/fd, and show the clean function with nothing open. An unsupported
//! interpreter gets native frames and one warning.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::support::{Tracer, Workload, proc_fds, process, reported_fds, require_bpf};
use serde_json::Value;

const PYENV: &str = "/root/.pyenv/versions";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/pyleaks.py")
}

/// Debian's interpreter (required), then every pyenv CPython 3.10+ installed.
pub(crate) fn interpreters() -> Vec<PathBuf> {
    let system = PathBuf::from("/usr/bin/python3");
    assert!(system.exists(), "/usr/bin/python3 is missing (cargo xtask setup --tests installs python3)");
    let mut found = vec![system];
    let mut versions: Vec<PathBuf> = std::fs::read_dir(PYENV)
        .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default();
    versions.sort();
    for dir in versions {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let minor: Option<u32> = name.strip_prefix("3.").and_then(|r| r.split('.').next()?.parse().ok());
        if minor.is_some_and(|m| m >= 10) && dir.join("bin/python3").exists() {
            found.push(dir.join("bin/python3"));
        }
    }
    found
}

fn spawn(python: &Path) -> Workload {
    let mut command = Command::new(python);
    command.arg(script());
    Workload::spawn_command(command)
}

/// The report's site entry of `fd` of `pid`.
fn site_of(report: &Value, pid: u32, fd: i64) -> &Value {
    let p = process(report, pid).unwrap();
    let listing = p["fds"].as_array().unwrap().iter().find(|e| e["fd"] == fd);
    let site = listing.unwrap_or_else(|| panic!("fd {fd} of {pid} not listed"))["site"].clone();
    p["sites"].as_array().unwrap().iter().find(|s| s["site"] == site).unwrap()
}

fn python_frames(site: &Value) -> Vec<&Value> {
    site["frames"].as_array().unwrap().iter().filter(|f| f["language"] == "python").collect()
}

struct Leaks {
    workload: Workload,
    python: PathBuf,
    minor: i64,
    lines: Vec<i64>,
    accepted: Vec<i64>,
    traceback: i64,
    dict: i64,
    thread: i64,
    gil: i64,
}

fn run_leaks(mut workload: Workload, python: PathBuf) -> Leaks {
    let minor = workload.run("version")[1];
    let lines = workload.run("lines");
    let accepted = workload.run("accept 3");
    let traceback = workload.run("traceback")[0];
    let dict = workload.run("dict cached.txt")[0];
    workload.run("clean 20");
    let thread = workload.run("thread threaded.txt")[0];
    let gil = workload.run("gil contended.txt")[0];
    Leaks { workload, python, minor, lines, accepted, traceback, dict, thread, gil }
}

/// The site of `fd` is named by `function` at `line` of the workload (its `frame` label and a
/// Python frame), past the standard library.
/// `outer` is a caller further out (main, or the thread's Thread.run).
fn assert_named(
    report: &Value,
    leaks: &Leaks,
    fd: i64,
    qualname: &'static str,
    line: i64,
    outer: &'static str,
) {
    let pid = leaks.workload.pid;
    let site = site_of(report, pid, fd);
    // 3.10 code objects have no qualified name (co_qualname is 3.11+).
    let short = |q: &'static str| if leaks.minor == 10 { q.rsplit('.').next().unwrap() } else { q };
    let name = short(qualname);
    let outer = short(outer);
    let what = format!("{} fd {fd}: {site:#}", leaks.python.display());
    assert_eq!(site["frame"], format!("pyleaks.py:{name}:{line}"), "{what}");
    let frames = python_frames(site);
    let own =
        frames.iter().find(|f| f["symbol"] == name).unwrap_or_else(|| panic!("no {name} frame: {what}"));
    assert_eq!(own["file"], script().to_string_lossy().as_ref(), "{what}");
    assert_eq!(own["line"], line, "{what}");
    assert!(own["address"].is_null() && own["module"].is_null(), "{what}");
    // Innermost first: the caller is further out, and native frames stay native.
    let main =
        frames.iter().position(|f| f["symbol"] == outer).unwrap_or_else(|| panic!("no {outer}: {what}"));
    assert!(frames.iter().position(|f| f["symbol"] == name).unwrap() < main, "{what}");
    assert!(site["frames"].as_array().unwrap().iter().any(|f| f["language"] == "native"), "{what}");
}

/// Everything the report must say of one workload's leaks.
fn check_named(report: &Value, leaks: &Leaks) {
    let pid = leaks.workload.pid;
    assert_eq!(reported_fds(report, pid), proc_fds(pid), "{}: the report and /proc", leaks.python.display());
    let line = |i: usize| leaks.lines[i];
    for fd in &leaks.accepted {
        assert_named(report, leaks, *fd, "ChatHandler.on_connect", line(0), "main");
        // The accept itself happened in the standard library's socket.py, further in.
        let site = site_of(report, pid, *fd);
        assert!(python_frames(site)[0]["file"].as_str().unwrap().ends_with("/socket.py"), "{site:#}");
    }
    assert_named(report, leaks, leaks.traceback, "load_config", line(1), "main");
    assert_named(report, leaks, leaks.dict, "cache_handle", line(2), "main");
    // Another thread's own stack: it ends at the thread's bootstrap, not at main.
    assert_named(report, leaks, leaks.thread, "worker_leak", line(4), "Thread.run");
    assert!(!python_frames(site_of(report, pid, leaks.thread)).iter().any(|f| f["symbol"] == "main"));
    assert_named(report, leaks, leaks.gil, "leak_under_contention", line(5), "main");
    // The clean function opened 20 times and has nothing open.
    let label = format!("pyleaks.py:read_clean:{}", line(3));
    let p = process(report, pid).unwrap();
    let clean: Vec<&Value> = p["sites"].as_array().unwrap().iter().filter(|s| s["frame"] == label).collect();
    assert!(!clean.is_empty(), "{}: no {label} site: {p:#}", leaks.python.display());
    assert_eq!(clean.iter().map(|s| s["open"].as_u64().unwrap()).sum::<u64>(), 0);
    assert!(clean.iter().map(|s| s["opened"].as_u64().unwrap()).sum::<u64>() >= 20);
    // The same call path is one site: the three accepts share theirs.
    let sites: std::collections::BTreeSet<String> =
        leaks.accepted.iter().map(|fd| site_of(report, pid, *fd)["site"].to_string()).collect();
    assert_eq!(sites.len(), 1, "{}", leaks.python.display());
}

fn pid_args(workloads: &[(Workload, PathBuf)]) -> Vec<String> {
    workloads.iter().flat_map(|(w, _)| ["--pid".to_string(), w.pid.to_string()]).collect()
}

/// Interpreters already running when the tracer starts (found at the /proc baseline).
#[test]
fn python_leaks_are_named_by_function_file_and_line() {
    if !require_bpf() {
        return;
    }
    let started = std::time::Instant::now();
    let workloads: Vec<(Workload, PathBuf)> = interpreters().iter().map(|p| (spawn(p), p.clone())).collect();
    let args = pid_args(&workloads);
    let mut tracer = Tracer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let all: Vec<Leaks> = workloads.into_iter().map(|(w, p)| run_leaks(w, p)).collect();
    let report = tracer.snapshot();
    for leaks in &all {
        check_named(&report, leaks);
    }
    // Every interpreter was recognised: no warning.
    let warnings: Vec<String> =
        tracer.stderr_lines().into_iter().filter(|l| l.contains("no Python frames")).collect();
    assert!(warnings.is_empty(), "{warnings:?}");
    eprintln!("{} interpreters checked in {:?}", all.len(), started.elapsed());
}

/// Interpreters started after the tracer (found at their exec, walked once initialized).
#[test]
fn python_started_after_the_tracer_is_named_too() {
    if !require_bpf() {
        return;
    }
    // Trace this test process: the workloads it forks from now on are followed.
    let own = std::process::id().to_string();
    let mut tracer = Tracer::start(&["--pid", &own]);
    let all: Vec<Leaks> = interpreters()
        .iter()
        .map(|p| {
            let mut workload = spawn(p);
            // Until the tracer found the interpreter (its startup over), opens have native
            // frames only: wait until one has Python frames.
            let pid = workload.pid;
            crate::support::wait_for(
                "Python frames of a new interpreter",
                std::time::Duration::from_secs(10),
                || {
                    workload.run("clean 1");
                    let report = tracer.snapshot();
                    let p = process(&report, pid)?;
                    p["sites"]
                        .as_array()?
                        .iter()
                        .any(|s| s["frame"].as_str().is_some_and(|f| f.starts_with("pyleaks.py:")))
                        .then_some(())
                },
            );
            run_leaks(workload, p.clone())
        })
        .collect();
    let report = tracer.snapshot();
    for leaks in &all {
        check_named(&report, leaks);
    }
}

/// Interpreters older than 3.10 (pyenv's 3.8 and 3.9 here): native frames, one warning each.
#[test]
fn unsupported_interpreter_gets_native_frames_and_one_warning() {
    if !require_bpf() {
        return;
    }
    let old: Vec<PathBuf> = ["3.9.18", "3.8.18"]
        .iter()
        .map(|v| Path::new(PYENV).join(v).join("bin/python3"))
        .filter(|p| p.exists())
        .collect();
    if old.is_empty() {
        let required = std::env::var("HELIOS_TRACE_REQUIRE_BPF").is_ok_and(|v| v == "1");
        assert!(!required, "no CPython 3.8 or 3.9 under {PYENV} to test an unsupported interpreter with");
        eprintln!("skipping: no CPython 3.8 or 3.9 under {PYENV}");
        return;
    }
    let workloads: Vec<(Workload, PathBuf)> = old.iter().map(|p| (spawn(p), p.clone())).collect();
    let args = pid_args(&workloads);
    let mut tracer = Tracer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let all: Vec<Leaks> = workloads.into_iter().map(|(w, p)| run_leaks(w, p)).collect();
    let report = tracer.snapshot();
    let lines = tracer.stderr_lines();
    for leaks in &all {
        let pid = leaks.workload.pid;
        assert_eq!(reported_fds(&report, pid), proc_fds(pid));
        for fd in leaks.accepted.iter().chain([&leaks.traceback, &leaks.dict, &leaks.thread, &leaks.gil]) {
            let site = site_of(&report, pid, *fd);
            assert!(python_frames(site).is_empty(), "{site:#}");
            assert!(!site["frames"].as_array().unwrap().is_empty(), "native frames stay: {site:#}");
            assert!(!site["frame"].as_str().unwrap().contains("pyleaks.py"), "{site:#}");
        }
        let warnings =
            lines.iter().filter(|l| l.contains(&format!("process {pid}: no Python frames"))).count();
        assert_eq!(warnings, 1, "{}: {lines:#?}", leaks.python.display());
    }
}
