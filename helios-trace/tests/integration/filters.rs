//! Kernel tests of `--comm` and `--uid`: the processes they name are traced, those already
//! running and those that start later, exactly as /proc shows them; no other process is.
use std::{os::unix::process::CommandExt as _, process::Command};

use crate::support::*;

/// fdwork under a name of its own (a process's name is its program's file name, cut at 15
/// bytes): `--comm` matches it at the start, and at the exec of one started later.
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn comm_targets_are_traced_from_the_start_and_from_their_exec() {
    if !require_bpf() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let name = format!("hfc{}", std::process::id());
    let renamed = dir.path().join(&name);
    std::fs::copy(fdwork_bin(), &renamed).unwrap();
    let mut early = Workload::spawn_program(&renamed);
    let mut other = Workload::spawn();
    let mut tracer = Tracer::start(&["--comm", &name, "--reconcile-interval", "0"]);
    let mut late = Workload::spawn_program(&renamed);
    early.run("pipe");
    late.run("sockets 2");
    let child = early.run("fork")[0] as u32;
    other.run("pipe");
    let report = tracer.snapshot();
    for pid in [early.pid, late.pid, child] {
        assert_eq!(reported_fds(&report, pid), proc_fds(pid), "pid {pid}");
    }
    assert!(process(&report, other.pid).is_none(), "fdwork is not {name}: {report:#}");
    let comms: Vec<&str> =
        report["processes"].as_array().unwrap().iter().map(|p| p["comm"].as_str().unwrap()).collect();
    assert!(comms.iter().all(|c| *c == name), "only {name}: {comms:?}");
    early.run(&format!("kill {child}"));
}

/// A workload running as nobody is traced, one started before the tracer and one after; root's
/// is not.
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn uid_targets_are_traced_and_no_other_user() {
    if !require_bpf() {
        return;
    }
    const NOBODY: u32 = 65534;
    let as_nobody = || {
        let mut command = Command::new(fdwork_bin());
        command.uid(NOBODY).gid(NOBODY);
        Workload::spawn_command(command)
    };
    let mut early = as_nobody();
    let mut root = Workload::spawn();
    let mut tracer = Tracer::start(&["--uid", &NOBODY.to_string(), "--reconcile-interval", "0"]);
    let mut late = as_nobody();
    early.run("pipe");
    late.run("sockets 2");
    root.run("pipe");
    let report = tracer.snapshot();
    for pid in [early.pid, late.pid] {
        assert_eq!(reported_fds(&report, pid), proc_fds(pid), "pid {pid}");
    }
    assert!(process(&report, root.pid).is_none(), "root's workload is not traced: {report:#}");
}
