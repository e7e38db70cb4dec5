//! One site per Python call path (issue 21): the same Python line called from a loop — first
//! the generic instructions, then the specialized ones of CPython's adaptive interpreter,
//! whose native glue between the Python frames differs — is one site holding every
//! descriptor it leaked, on every interpreter of the machine (python.rs `interpreters()`).
use std::{collections::BTreeSet, path::Path, process::Command};

use serde_json::Value;

use crate::{
    python::interpreters,
    support::{Tracer, Workload, proc_fds, process, reported_fds, require_bpf},
};

/// More than 8 calls (3.11 quickens a code object after 8 runs) and more than 50 (the
/// back-off of an instruction whose specialization failed): generic and specialized calls.
const CALLS: usize = 60;

fn spawn(python: &Path) -> Workload {
    let mut command = Command::new(python);
    command.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/warmup.py"));
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
fn a_warm_python_line_is_one_site_with_every_descriptor() {
    if !require_bpf() {
        return;
    }
    let pythons = interpreters();
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
