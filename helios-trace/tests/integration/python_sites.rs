//! One site per Python call path (issue 21): the same Python line called from a loop — first
//! the generic instructions, then the specialized ones of CPython's adaptive interpreter,
//! whose native glue between the Python frames differs — is one site holding every
//! descriptor it leaked, on every interpreter of the machine on its own root (python.rs `host_interpreters()`).
use std::{
    collections::BTreeSet,
    io::Write as _,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::{
    python::host_interpreters,
    support::{
        Tracer, Workload, helios_trace_bin, proc_fds, process, reported_fds, require_bpf, signal, wait_for,
    },
};

/// More than 8 calls (3.11 quickens a code object after 8 runs) and more than 50 (the
/// back-off of an instruction whose specialization failed): generic and specialized calls.
const CALLS: usize = 60;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/warmup.py")
}

fn spawn(python: &Path) -> Workload {
    let mut command = Command::new(python);
    command.arg(script());
    Workload::spawn_command(command)
}

/// The sites of `pid` with a Python frame at `line` of warmup.py.
fn sites_of_line(report: &Value, pid: u32, line: i64) -> Vec<&Value> {
    let p = process(report, pid).unwrap();
    p["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            s["frames"].as_array().unwrap().iter().any(|f| {
                f["language"] == "python"
                    && f["line"] == line
                    && f["file"].as_str().is_some_and(|file| file.ends_with("/warmup.py"))
            })
        })
        .collect()
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn a_warm_python_line_is_one_site_with_every_descriptor() {
    if !require_bpf() {
        return;
    }
    let pythons = host_interpreters();
    let mut workloads: Vec<Workload> = pythons.iter().map(|p| spawn(p)).collect();
    let args: Vec<String> = workloads.iter().flat_map(|w| ["--pid".to_string(), w.pid.to_string()]).collect();
    let mut tracer = Tracer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut runs = Vec::new();
    for workload in &mut workloads {
        let minor = workload.run("version")[1];
        let lines = workload.run("lines");
        let opened = workload.run(&format!("open {CALLS}"));
        let accepted = workload.run(&format!("accept {CALLS}"));
        runs.push((minor, lines, opened, accepted));
    }
    let report = tracer.snapshot();
    for ((workload, python), (minor, lines, opened, accepted)) in workloads.iter().zip(&pythons).zip(&runs) {
        let pid = workload.pid;
        let what = python.display();
        assert_eq!(reported_fds(&report, pid), proc_fds(pid), "{what}: the report and /proc");
        // 3.10 code objects have no qualified name (co_qualname is 3.11+).
        let method = if *minor == 10 { "on_connect" } else { "Acceptor.on_connect" };
        for (fds, line, label) in [
            (opened, lines[0], format!("warmup.py:open_leak:{}", lines[0])),
            (accepted, lines[1], format!("warmup.py:{method}:{}", lines[1])),
        ] {
            assert_eq!(fds.len(), CALLS);
            let sites = sites_of_line(&report, pid, line);
            let summary: Vec<String> = sites
                .iter()
                .map(|s| format!("{} {} open of {}", s["site"], s["open"], s["opened"]))
                .collect();
            assert_eq!(sites.len(), 1, "{what}: line {line} is one site, not {summary:?}");
            let site = sites[0];
            assert_eq!(site["frame"], label, "{what}: {site:#}");
            assert_eq!(site["open"], CALLS as u64, "{what}: {summary:?}");
            assert_eq!(site["opened"], CALLS as u64, "{what}: {summary:?}");
            // Every leaked descriptor is listed at that site.
            let listed: BTreeSet<i64> = process(&report, pid).unwrap()["fds"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["site"] == site["site"])
                .map(|e| e["fd"].as_i64().unwrap())
                .collect();
            assert_eq!(listed, fds.iter().copied().collect::<BTreeSet<i64>>(), "{what}");
            // Its frames are kept whole: the interpreter's own among them, marked.
            let frames = site["frames"].as_array().unwrap();
            assert!(frames.iter().any(|f| f["interpreter"] == true), "{what}: {site:#}");
            assert!(frames.iter().all(|f| f["interpreter"] == false || f["language"] == "native"), "{what}");
        }
    }
}

/// The text report of `helios-trace run` on a warm Python line (Debian's python3): its Python
/// frames with libc's, each run of interpreter frames folded into one line; `--all-frames`
/// shows them (the eval loop among them) and folds nothing.
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn the_text_report_folds_interpreter_frames_unless_all_frames() {
    if !require_bpf() {
        return;
    }
    let source = std::fs::read_to_string(script()).unwrap();
    let line = source.lines().position(|l| l.contains("# LEAK:open")).unwrap() + 1;
    let own = format!("open_leak ({}:{line})", script().display());
    for all_frames in [false, true] {
        let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let report = scratch.path().join("report.txt");
        let mut command = Command::new(helios_trace_bin());
        command.args(["run", "--format", "text", "--view", "quiet", "-o"]).arg(&report);
        if all_frames {
            command.arg("--all-frames");
        }
        command.arg("--").arg("/usr/bin/python3").arg(script()).arg(scratch.path());
        for var in ["SUDO_UID", "SUDO_GID", "SUDO_USER"] {
            command.env_remove(var);
        }
        let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        // `run` gives the kernel Debian's python3 offsets before its exec (issue 21): no startup
        // to wait out, only the script's own "ready"; then the line is warmed.
        let mut said = BufReader::new(child.stdout.take().unwrap());
        let mut answer = String::new();
        said.read_line(&mut answer).unwrap();
        assert_eq!(answer, "ready\n");
        let mut tell = child.stdin.take().unwrap();
        writeln!(tell, "open {CALLS}").unwrap();
        answer.clear();
        said.read_line(&mut answer).unwrap();
        assert!(answer.starts_with("ok "), "{answer}");
        // Python frames are named from the process's memory while it lives (README, "Python
        // frames"): it exits once a snapshot (SIGUSR1, to -o) has the line's site.
        let label = format!("warmup.py:open_leak:{line} ");
        wait_for("the warm line's site in a snapshot", Duration::from_secs(20), || {
            signal(child.id(), libc::SIGUSR1);
            std::thread::sleep(Duration::from_millis(100));
            std::fs::read_to_string(&report).ok().filter(|text| text.contains(&label))
        });
        writeln!(tell, "exit").unwrap();
        std::io::copy(&mut said, &mut std::io::sink()).unwrap();
        assert!(child.wait().unwrap().success());
        let text = std::fs::read_to_string(&report).unwrap();
        // The site's stack: the frame lines under its header, up to the next site.
        let header =
            text.lines().position(|l| l.contains(&label)).unwrap_or_else(|| panic!("no {label}: {text}"));
        let site: Vec<&str> = text
            .lines()
            .skip(header + 1)
            .take_while(|l| l.starts_with("           "))
            .map(str::trim)
            .filter(|l| l.starts_with('#') || l.starts_with("… "))
            .collect();
        assert!(site.iter().any(|l| l.starts_with('#') && l.ends_with(&own)), "{own}: {site:#?}");
        // libc's wrapper, innermost of the interpreter, is shown either way.
        assert!(site[0].starts_with("#0  __libc_open64"), "{site:#?}");
        let folded = site.iter().filter(|l| l.starts_with("… ") && l.contains(" interpreter frame")).count();
        let eval_loop = site.iter().any(|l| l.contains("_PyEval_EvalFrameDefault"));
        if all_frames {
            assert!(eval_loop && folded == 0, "{site:#?}");
        } else {
            // Between libc and the Python frames, and around them.
            assert!(!eval_loop && folded >= 2, "{site:#?}");
        }
    }
}
