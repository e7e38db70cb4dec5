//! Python frames at the open site (issue 5): CPython workloads (tests/workloads/pyleaks.py)
//! leak from functions of known names, on every CPython 3.10+ of the machine (Debian's
//! /usr/bin/python3 and pyenv's), from the main thread, another thread, and while another
//! thread spins in Python; the report must name each leaking function, file and line, agree
//! with /proc/PID/fd, and show the clean function with nothing open. An unsupported
//! interpreter gets native frames and one warning.
mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use support::{Tracer, Workload, proc_fds, process, reported_fds, require_bpf};

const PYENV: &str = "/root/.pyenv/versions";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/pyleaks.py")
}

/// Debian's interpreter (required), then every pyenv CPython 3.10+ installed.
fn interpreters() -> Vec<PathBuf> {
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
fn site_of<'a>(report: &'a Value, pid: u32, fd: i64) -> &'a Value {
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
fn assert_named(report: &Value, leaks: &Leaks, fd: i64, qualname: &'static str, line: i64, outer: &'static str) {
    let pid = leaks.workload.pid;
    let site = site_of(report, pid, fd);
    // 3.10 code objects have no qualified name (co_qualname is 3.11+).
    let short = |q: &'static str| if leaks.minor == 10 { q.rsplit('.').next().unwrap() } else { q };
    let name = short(qualname);
    let outer = short(outer);
    let what = format!("{} fd {fd}: {site:#}", leaks.python.display());
    assert_eq!(site["frame"], format!("pyleaks.py:{name}:{line}"), "{what}");
    let frames = python_frames(site);
    let own = frames.iter().find(|f| f["symbol"] == name).unwrap_or_else(|| panic!("no {name} frame: {what}"));
    assert_eq!(own["file"], script().to_string_lossy().as_ref(), "{what}");
    assert_eq!(own["line"], line, "{what}");
    assert!(own["address"].is_null() && own["module"].is_null(), "{what}");
    // Innermost first: the caller is further out, and native frames stay native.
    let main = frames.iter().position(|f| f["symbol"] == outer).unwrap_or_else(|| panic!("no {outer}: {what}"));
    assert!(frames.iter().position(|f| f["symbol"] == name).unwrap() < main, "{what}");
    assert!(site["frames"].as_array().unwrap().iter().any(|f| f["language"] == "native"), "{what}");
}

#[test]
fn python_leaks_are_named_by_function_file_and_line() {
    if !require_bpf() {
        return;
    }
    let started = std::time::Instant::now();
    let pythons = interpreters();
    let workloads: Vec<(Workload, PathBuf)> = pythons.iter().map(|p| (spawn(p), p.clone())).collect();
    let mut args = Vec::new();
    for (w, _) in &workloads {
        args.push("--pid".to_string());
        args.push(w.pid.to_string());
    }
    let mut tracer = Tracer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let all: Vec<Leaks> = workloads.into_iter().map(|(w, p)| run_leaks(w, p)).collect();
    let report = tracer.snapshot();
    for leaks in &all {
        let pid = leaks.workload.pid;
        assert_eq!(reported_fds(&report, pid), proc_fds(pid), "{}: the report and /proc", leaks.python.display());
        let line = |i: usize| leaks.lines[i];
        for fd in &leaks.accepted {
            assert_named(&report, leaks, *fd, "ChatHandler.on_connect", line(0), "main");
            // The accept itself happened in the standard library's socket.py, further in.
            let site = site_of(&report, pid, *fd);
            let frames = python_frames(site);
            assert!(frames[0]["file"].as_str().unwrap().ends_with("/socket.py"), "{site:#}");
        }
        assert_named(&report, leaks, leaks.traceback, "load_config", line(1), "main");
        assert_named(&report, leaks, leaks.dict, "cache_handle", line(2), "main");
        // Another thread's own stack: it ends at the thread's bootstrap, not at main.
        assert_named(&report, leaks, leaks.thread, "worker_leak", line(4), "Thread.run");
        assert!(!python_frames(site_of(&report, leaks.workload.pid, leaks.thread)).iter().any(|f| f["symbol"] == "main"));
        assert_named(&report, leaks, leaks.gil, "leak_under_contention", line(5), "main");
        // The clean function opened 20 times and has nothing open.
        let label = format!("pyleaks.py:read_clean:{}", line(3));
        let p = process(&report, pid).unwrap();
        let clean: Vec<&Value> = p["sites"].as_array().unwrap().iter().filter(|s| s["frame"] == label).collect();
        assert!(!clean.is_empty(), "{}: no {label} site: {p:#}", leaks.python.display());
        assert_eq!(clean.iter().map(|s| s["open"].as_u64().unwrap()).sum::<u64>(), 0);
        assert!(clean.iter().map(|s| s["opened"].as_u64().unwrap()).sum::<u64>() >= 20);
        // The same call path is one site: the three accepts share theirs.
        let sites: std::collections::BTreeSet<String> =
            leaks.accepted.iter().map(|fd| site_of(&report, pid, *fd)["site"].to_string()).collect();
        assert_eq!(sites.len(), 1, "{}", leaks.python.display());
    }
    drop(tracer);
    eprintln!("{} interpreters checked in {:?}", all.len(), started.elapsed());
}
