//! README claims that had no test of their own (issue 23): `--stacks fp` and `--stacks none`,
//! `events.stacks_truncated`, memfd `pinned_bytes`, and Ctrl-C under `run`. Ground truth comes
//! from the workloads (their own functions, depths and counts) and from the kernel (st_blocks
//! of the memfds), never from another output of the tool.
use std::{
    io::{BufRead, BufReader, Write},
    os::unix::fs::MetadataExt,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::support::*;

fn sites(report: &Value, pid: u32) -> Vec<Value> {
    process(report, pid).unwrap_or_else(|| panic!("pid {pid} in {report:#}"))["sites"]
        .as_array()
        .unwrap()
        .clone()
}

fn symbols(site: &Value) -> Vec<String> {
    site["frames"].as_array().unwrap().iter().filter_map(|f| f["symbol"].as_str().map(String::from)).collect()
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn stacks_fp_walks_frame_pointers_and_stacks_none_records_no_stack() {
    if !require_bpf() {
        return;
    }
    for mode in ["fp", "none"] {
        let mut w = Workload::spawn_program(leaker_bin());
        let pid = w.pid.to_string();
        let tracer = Tracer::start(&["--pid", &pid, "--stacks", mode, "--reconcile-interval", "0"]);
        let fds = w.run("files 3");
        let report = tracer.stop();
        assert_eq!(reported_fds(&report, w.pid), proc_fds(w.pid), "--stacks {mode}: the table and /proc");
        let opened: Vec<Value> = sites(&report, w.pid).into_iter().filter(|s| s["opened"] == 3).collect();
        assert_eq!(opened.len(), 1, "--stacks {mode}: the 3 files are one site: {opened:#?}");
        let site = &opened[0];
        assert_eq!((site["open"].as_u64(), site["kind"].as_str()), (Some(fds.len() as u64), Some("file")));
        match mode {
            // leaker.c keeps frame pointers: the kernel's walk names its functions.
            "fp" => {
                let names = symbols(site);
                // raw3 and raw_open, inlined, then leak_file: leaker.c's chain.
                assert_eq!(names[..3], ["raw3", "raw_open", "leak_file"], "{site:#}");
                assert!(names.iter().any(|n| n == "main"), "the walk reaches main: {names:?}");
            }
            _ => {
                assert_eq!(site["site"], "no-stack", "{site:#}");
                assert!(site["frames"].as_array().unwrap().is_empty(), "{site:#}");
                assert_eq!(report["events"]["stack_errors"], 0, "no stack asked for is not an error");
            }
        }
        w.exit();
    }
}

/// A program that, on "go", opens /dev/null three times at the bottom of a recursion 12
/// frames deep with 2 KiB of locals each (24 KiB: three times the default 8 KiB window).
const DEEP: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
__attribute__((noinline)) static int deep_open(int depth) {
    volatile char pad[2048];
    memset((char *)pad, depth, sizeof pad);
    if (depth == 0) return open("/dev/null", O_RDONLY);
    int fd = deep_open(depth - 1);
    return fd + (pad[0] != depth); /* uses pad after the call: no tail call */
}
int main(void) {
    char line[16];
    printf("ready\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) return 1;
    for (int i = 0; i < 3; i++) printf("%d ", deep_open(12));
    printf("\n");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {}
    return 0;
}
"#;

struct Piped {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Piped {
    fn spawn(command: &mut Command) -> Piped {
        let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Piped { child, stdin, stdout }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_string()
    }

    fn say(&mut self, what: &str) {
        writeln!(self.stdin, "{what}").unwrap();
        self.stdin.flush().unwrap();
    }
}

impl Drop for Piped {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn stacks_deeper_than_the_window_are_cut_and_counted() {
    if !require_bpf() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (source, program) = (dir.path().join("deep.c"), dir.path().join("deep"));
    std::fs::write(&source, DEEP).unwrap();
    let built = Command::new("gcc").args(["-O1", "-g", "-o"]).arg(&program).arg(&source).status().unwrap();
    assert!(built.success());
    let mut deep = Piped::spawn(&mut Command::new(&program));
    assert_eq!(deep.line(), "ready");
    let pid = deep.child.id();
    let tracer = Tracer::start(&["--pid", &pid.to_string(), "--reconcile-interval", "0"]);
    deep.say("go");
    let fds: Vec<i32> = deep.line().split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert_eq!(fds.len(), 3);
    let report = tracer.stop();
    assert_eq!(report["events"]["stacks_truncated"], 3, "each of the 3 deep opens: {}", report["events"]);
    let site = sites(&report, pid).into_iter().find(|s| s["opened"] == 3).expect("one site for the 3 opens");
    // The inner frames are there; main, 24 KiB further out, is not.
    let names = symbols(&site);
    assert!(names.iter().filter(|n| *n == "deep_open").count() >= 2, "{names:?}");
    assert!(!names.iter().any(|n| n == "main"), "main is beyond the window: {names:?}");
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn a_memfd_site_shows_the_memory_its_descriptors_pin() {
    if !require_bpf() {
        return;
    }
    let script = "import os, sys\n\
                  sys.stdin.readline()\n\
                  fds = []\n\
                  for size in (1 << 20, 3 << 20):\n\
                  \x20   fd = os.memfd_create('pinned')\n\
                  \x20   os.write(fd, b'x' * size)\n\
                  \x20   fds.append(fd)\n\
                  print(*fds, flush=True)\n\
                  sys.stdin.readline()\n";
    let mut python = Piped::spawn(Command::new("/usr/bin/python3").args(["-c", script]));
    let pid = python.child.id();
    let tracer = Tracer::start(&["--pid", &pid.to_string(), "--reconcile-interval", "0"]);
    python.say("go");
    let fds: Vec<i32> = python.line().split_whitespace().map(|n| n.parse().unwrap()).collect();
    // The kernel's own count of the memory behind each: st_blocks of the memfd's inode.
    let truth: u64 =
        fds.iter().map(|fd| std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).unwrap().blocks() * 512).sum();
    assert!(truth >= 4 << 20, "4 MiB written: {truth}");
    let report = tracer.stop();
    let pinned: u64 = sites(&report, pid)
        .iter()
        .filter(|s| s["kind"] == "memfd")
        .map(|s| s["pinned_bytes"].as_u64().unwrap_or_else(|| panic!("{s:#}")))
        .sum();
    assert_eq!(pinned, truth, "the memfd sites' pinned_bytes and the kernel's st_blocks");
}

/// `run` passes Ctrl-C (SIGINT) and SIGTERM on to CMD and exits with CMD's status; a second one
/// kills it (README, "run").
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn ctrl_c_and_sigterm_under_run_reach_the_command_and_a_second_kills_it() {
    if !require_bpf() {
        return;
    }
    let handles = |name: &str| {
        format!(
            "import signal, sys, time\n\
             signal.signal(signal.{name}, lambda *_: sys.exit(7))\n\
             print('ready', flush=True)\n\
             time.sleep(120)\n"
        )
    };
    let ignores = |name: &str| {
        format!(
            "import signal, time\n\
             signal.signal(signal.{name}, signal.SIG_IGN)\n\
             print('ready', flush=True)\n\
             time.sleep(120)\n"
        )
    };
    let cases =
        [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")].into_iter().flat_map(|(number, name)| {
            [(number, handles(name), 1, 7), (number, ignores(name), 2, 128 + libc::SIGKILL)]
        });
    for (sent, script, interrupts, status) in cases {
        let mut run = Piped::spawn(
            Command::new(helios_trace_bin())
                .args(["run", "--format", "json", "--view", "quiet", "--", "/usr/bin/python3", "-c", &script])
                .stderr(Stdio::null()),
        );
        assert_eq!(run.line(), "ready", "the command runs and speaks through run's stdout");
        for _ in 0..interrupts {
            signal(run.child.id(), sent);
            std::thread::sleep(Duration::from_millis(300));
        }
        // The report fills more than a pipe: read it to the end, then the status.
        let mut report = String::new();
        std::io::Read::read_to_string(&mut run.stdout, &mut report).unwrap();
        let exit = wait_for("run to end", Duration::from_secs(30), || run.child.try_wait().unwrap());
        assert_eq!(exit.code(), Some(status), "{interrupts} × {sent}: run exits with the command's status");
        let report: Value = serde_json::from_str(&report).unwrap_or_else(|e| panic!("{e}: {report}"));
        let command = &report["command"];
        match status {
            7 => assert_eq!((command["exit_code"].as_i64(), command["signal"].as_i64()), (Some(7), None)),
            _ => assert_eq!((command["exit_code"].as_i64(), command["signal"].as_i64()), (None, Some(9))),
        }
    }
}
