//! Kernel tests of programs that are neither C nor Python: Go binaries as shipped (stripped,
//! named from their own `.gopclntab`), and JIT runtimes that publish perf maps (Node.js).
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, OnceLock},
    time::Duration,
};

use serde_json::Value;

use crate::support::*;

fn workload_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads").join(name)
}

/// The line of a workload's source that carries `marker`.
fn source_line(source: &Path, marker: &str) -> u64 {
    let text = std::fs::read_to_string(source).unwrap();
    text.lines().position(|l| l.contains(marker)).unwrap_or_else(|| panic!("no {marker} in {source:?}"))
        as u64
        + 1
}

/// tests/workloads/goleak built by Debian's Go (`cargo xtask setup --tests` installs
/// golang-go) with `flags`, once per test run; Go's build cache makes a rebuild quick.
fn go_build(output: &str, flags: &[&str]) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap();
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(output);
    let status = Command::new("go")
        .arg("build")
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(workload_dir("goleak/main.go"))
        .env("GO111MODULE", "off")
        .status()
        .expect("go runs (cargo xtask setup --tests installs golang-go)");
    assert!(status.success(), "building goleak failed");
    out
}

fn goleak() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| go_build("goleak", &[]))
}

/// As Go programs ship: no symbol table, no DWARF.
fn goleak_stripped() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| go_build("goleak.stripped", &["-ldflags=-s -w"]))
}

/// A loopback HTTP server (goleak serve), stopped when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start() -> Server {
        let mut child = Command::new(goleak())
            .arg("serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("goleak serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().strip_prefix("port ").and_then(|p| p.parse().ok());
        Server { child, port: port.unwrap_or_else(|| panic!("goleak serve said {line:?}")) }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sockets_sites(report: &Value, pid: u32) -> Vec<Value> {
    let process = process(report, pid).unwrap_or_else(|| panic!("pid {pid} not in the report: {report:#}"));
    process["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "socket" && s["site"] != "before-trace")
        .cloned()
        .collect()
}

fn symbols_of(site: &Value) -> Vec<&str> {
    site["frames"].as_array().unwrap().iter().filter_map(|f| f["symbol"].as_str()).collect()
}

/// A Go HTTP client that never closes response bodies, stripped as shipped and not: its
/// leaked connections are one site with every one of them (as many as /proc shows), whose
/// frames are Go functions named from the binary's own table, the same in both builds; a
/// connection the program dials itself is its own site, told by the program's function.
#[test]
fn a_stripped_go_client_leaking_response_bodies_is_one_named_site() {
    if !require_bpf() {
        return;
    }
    let server = Server::start();
    let port = server.port.to_string();
    let client = |binary: &Path| {
        let mut command = Command::new(binary);
        command.args(["client", &port]);
        Workload::spawn_command(command)
    };
    let mut stripped = client(goleak_stripped());
    let mut full = client(goleak());
    let (a, b) = (stripped.pid.to_string(), full.pid.to_string());
    let mut tracer = Tracer::start(&["--pid", &a, "--pid", &b, "--reconcile-interval", "0"]);
    for workload in [&mut stripped, &mut full] {
        workload.run("http 20");
        workload.run("dial 5");
    }
    // Every leaked socket is in /proc now; the report has them once their records are read.
    let expected = |pid: u32| kind_counts(&proc_fds(pid)).get("socket").copied().unwrap_or(0);
    let report = wait_for("the leaked sockets in the report", Duration::from_secs(20), || {
        let report = tracer.snapshot();
        let done = [stripped.pid, full.pid].iter().all(|pid| {
            let open: u64 = sockets_sites(&report, *pid).iter().map(|s| s["open"].as_u64().unwrap()).sum();
            open == expected(*pid)
        });
        done.then_some(report)
    });
    let dial_line = source_line(&workload_dir("goleak/main.go"), "LEAK_DIAL");
    let mut identities = Vec::new();
    for (pid, binary) in [(stripped.pid, goleak_stripped()), (full.pid, goleak())] {
        assert_eq!(expected(pid), 25, "20 kept response bodies and 5 dialled connections");
        let sites = sockets_sites(&report, pid);
        let by_open: BTreeMap<u64, &Value> = sites.iter().map(|s| (s["open"].as_u64().unwrap(), s)).collect();
        assert_eq!(by_open.keys().copied().collect::<Vec<_>>(), [5, 20], "{sites:#?}");
        let http = by_open[&20];
        let names = symbols_of(http);
        for function in ["net/http.(*Transport).dialConn", "net.(*Dialer).DialContext", "syscall.Socket"] {
            assert!(names.contains(&function), "{function} in {names:#?}");
        }
        let frames = http["frames"].as_array().unwrap();
        assert!(
            frames.iter().all(|f| f["language"] == "go" && f["module"] == binary.to_str().unwrap()),
            "every frame is Go code of the binary, named: {frames:#?}"
        );
        // The Transport dials in a goroutine of its own: no frame of the program, so the
        // telling frame is the first call above the runtime, syscall and net layers.
        assert!(
            http["frame"].as_str().unwrap().starts_with("net/http.(*Transport).dial (transport.go:"),
            "{}",
            http["frame"]
        );
        let dial = by_open[&5];
        assert_eq!(dial["frame"], format!("main.leakDial (main.go:{dial_line})"));
        let inlined: Vec<&str> = dial["frames"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["inlined"] == true)
            .filter_map(|f| f["symbol"].as_str())
            .collect();
        assert!(inlined.contains(&"net.(*Dialer).Dial"), "net.Dial's inlined call: {inlined:?}");
        identities
            .push([http, dial].map(|s| symbols_of(s).iter().map(|s| s.to_string()).collect::<Vec<_>>()));
    }
    assert_eq!(identities[0], identities[1], "stripped or not, the same functions");
    tracer.stop();
    stripped.exit();
    full.exit();
}
