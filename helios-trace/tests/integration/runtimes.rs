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

use crate::{
    pods::harness::{Pod, PodSpec, Root},
    support::*,
};

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
    go_build_with(Path::new("go"), output, flags)
}

/// tests/workloads/goleak built by the toolchain `go` with `flags` as `output`, once per test
/// run (tests run in parallel: a second build would rewrite a binary another test runs).
fn go_build_with(go: &Path, output: &str, flags: &[&str]) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap();
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(output);
    if built.iter().any(|b| b == output) {
        return out;
    }
    let mut command = Command::new(go);
    command.arg("build").args(flags).arg("-o").arg(&out).arg(workload_dir("goleak/main.go"));
    command.env("GO111MODULE", "off").env("GOTOOLCHAIN", "local");
    if go != Path::new("go") {
        // As container images build Go programs: no cgo, a static binary.
        command.env("CGO_ENABLED", "0");
    }
    let status = command.status().expect("go runs (cargo xtask setup --tests installs it)");
    assert!(status.success(), "building goleak with {go:?} failed");
    built.push(output.to_string());
    out
}

#[path = "../shared/go_toolchains.rs"]
mod go_toolchains;
use go_toolchains::root_go_toolchains;

fn goleak() -> PathBuf {
    go_build("goleak", &[])
}

/// As Go programs ship: no symbol table, no DWARF.
fn goleak_stripped() -> PathBuf {
    go_build("goleak.stripped", &["-ldflags=-s -w"])
}

/// A loopback HTTP server (goleak serve), stopped when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    /// Listening on a loopback port, and on the Unix socket `unix` if given.
    fn start(unix: Option<&Path>) -> Server {
        let mut child = Command::new(goleak())
            .arg("serve")
            .args(unix)
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
    sites_of_kind(report, pid, "socket")
}

fn symbols_of(site: &Value) -> Vec<&str> {
    site["frames"].as_array().unwrap().iter().filter_map(|f| f["symbol"].as_str()).collect()
}

/// The stripped goleak client serving itself (the way a pod has to).
fn stripped_client_of_itself() -> Workload {
    let mut command = Command::new(goleak_stripped());
    command.args(["client", "self"]);
    Workload::spawn_command(command)
}

/// A loopback server, a stripped and an unstripped goleak client of it, and a tracer of both.
fn traced_go_clients() -> (Server, Workload, Workload, Tracer) {
    let server = Server::start(None);
    let port = server.port.to_string();
    let client = |binary: &Path| {
        let mut command = Command::new(binary);
        command.args(["client", &port]);
        Workload::spawn_command(command)
    };
    let stripped = client(&goleak_stripped());
    let full = client(&goleak());
    let (a, b) = (stripped.pid.to_string(), full.pid.to_string());
    let tracer = Tracer::start(&["--pid", &a, "--pid", &b, "--reconcile-interval", "0"]);
    (server, stripped, full, tracer)
}

/// A Go HTTP client that never closes response bodies, stripped as shipped and not: its
/// leaked connections are one site with every one of them (as many as /proc shows), whose
/// frames are Go functions named from the binary's own table, the same in both builds; a
/// connection the program dials itself is its own site, told by the program's function.
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn a_stripped_go_client_leaking_response_bodies_is_one_named_site() {
    if !require_bpf() {
        return;
    }
    let (_server, mut stripped, mut full, mut tracer) = traced_go_clients();
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

/// The sites of `pid` of one kind (descriptors opened before tracing left out).
fn sites_of_kind(report: &Value, pid: u32, kind: &str) -> Vec<Value> {
    let process = process(report, pid).unwrap_or_else(|| panic!("pid {pid} not in the report: {report:#}"));
    process["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == kind && s["site"] != "before-trace")
        .cloned()
        .collect()
}

/// The sites of the files goleak's `spawn` keeps (opened in main.leakFiles).
fn spawned(report: &Value, pid: u32) -> Vec<Value> {
    let mut sites = sites_of_kind(report, pid, "file");
    sites.retain(|s| {
        symbols_of(s).contains(&"main.leakFiles")
            && s["frame"].as_str().is_some_and(|f| f.starts_with("main.leakFiles"))
    });
    sites
}

/// A Go program exec'd while the tracer runs: its creators are read once its exec record was
/// read (the offsets userspace found then carry that exec's time, which the kernel checks
/// against the process's last exec: resolve/goroutines.rs).
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn a_go_program_exec_d_under_the_tracer_has_its_creators_read() {
    if !require_bpf() {
        return;
    }
    let binary = goleak_stripped();
    let comm = binary.file_name().unwrap().to_str().unwrap();
    assert!(comm.len() < 16, "the kernel's comm holds {comm}");
    let mut tracer = Tracer::start(&["--comm", comm, "--reconcile-interval", "0"]);
    let mut client = stripped_client_of_itself();
    // Once its exec record is read (the offsets are told right after): what a goroutine opens
    // before then has no creator read, by design.
    wait_for("the client in the report", Duration::from_secs(20), || {
        process(&tracer.snapshot(), client.pid).map(|_| ())
    });
    let told = client.ask("spawn 5");
    let report = wait_for("the spawned files in the report", Duration::from_secs(20), || {
        let report = tracer.snapshot();
        process(&report, client.pid)?;
        spawned(&report, client.pid).iter().any(|s| s["open"] == 5).then_some(report)
    });
    let spawned = spawned(&report, client.pid);
    assert_created_as_told(&spawned, &told);
    tracer.stop();
    client.exit();
}

/// `serve` says the same at `/sites`, where a DaemonSet's users read the stacks behind the
/// `site` labels: the site of a goroutine the program created carries its `created_by`.
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn serve_sites_carry_the_goroutine_creator() {
    if !require_bpf() {
        return;
    }
    let mut client = stripped_client_of_itself();
    let serve = Serve::start(&["--pid", &client.pid.to_string(), "--reconcile-interval", "0"]);
    let told = client.ask("spawn 4");
    let (function, place) = told.split_once(' ').unwrap_or_else(|| panic!("goleak said {told:?}"));
    let created_by = wait_for("the spawned files' site at /sites", Duration::from_secs(20), || {
        let (status, body) = serve.get("/sites");
        assert_eq!(status, 200, "{body}");
        let sites: Value = serde_json::from_str(&body).unwrap();
        let site = sites["sites"].as_array().unwrap().iter().find(|s| {
            s["frame"].as_str().is_some_and(|f| f.starts_with("main.leakFiles"))
                && s["frames"].as_array().unwrap().iter().any(|f| f["symbol"] == "os.Open")
        })?;
        site.get("created_by").cloned()
    });
    assert_eq!(created_by["symbol"], function, "{created_by:#}");
    assert_eq!(format!("{}:{}", created_by["file"].as_str().unwrap(), created_by["line"]), place);
    client.exit();
}

/// The one site goleak's `spawn` kept says it was created where the program's own traceback
/// said (`told`: "FUNCTION FILE:LINE").
fn assert_created_as_told(spawned: &[Value], told: &str) {
    assert_eq!(spawned.len(), 1, "{spawned:#?}");
    let (function, place) = told.split_once(' ').unwrap_or_else(|| panic!("goleak said {told:?}"));
    let created_by = &spawned[0]["created_by"];
    assert_eq!(created_by["symbol"], function, "{spawned:#?}");
    assert_eq!(created_by["language"], "go");
    assert_eq!(format!("{}:{}", created_by["file"].as_str().unwrap(), created_by["line"]), place);
}

/// Lines of the installed Go's own net/http/transport.go where the Transport starts a dial in
/// a goroutine of its own (`go t.dialConnFor(w)`, or a `go func()` calling it), each with the
/// function it is in.
fn transport_dial_statements() -> Vec<(u64, String)> {
    transport_dial_statements_of(Path::new("go"))
}

/// `transport_dial_statements` of the toolchain `go`.
fn transport_dial_statements_of(go: &Path) -> Vec<(u64, String)> {
    let goroot = Command::new(go).args(["env", "GOROOT"]).output().expect("go runs").stdout;
    let source = PathBuf::from(String::from_utf8(goroot).unwrap().trim()).join("src/net/http/transport.go");
    let text = std::fs::read_to_string(&source).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    let mut function = String::new();
    let mut statements = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("func ") {
            function = line.to_string();
        }
        // 1.19: `go t.dialConnFor(w)`; 1.24 and later: `go func() {` whose body starts with it.
        let next = lines.get(i + 1).map(|l| l.trim());
        if line.trim() == "go t.dialConnFor(w)"
            || (line.trim() == "go func() {" && next == Some("t.dialConnFor(w)"))
        {
            statements.push((i as u64 + 1, function.clone()));
        }
    }
    assert!(!statements.is_empty(), "no dial goroutine in {source:?}");
    statements
}

/// Go's "created by": descriptors opened in a goroutine of the runtime's or a library's say
/// which `go` statement created that goroutine, read by the kernel at the call (the goroutine's
/// own `gopc`) and named as Go's own traceback names it, stripped or not: the Transport's dial
/// goroutine by net/http's `queueForDial` at a `go t.dialConnFor(w)` of the installed Go's
/// source; a goroutine of the program by the function and line its own `runtime.Stack` says.
/// The main goroutine's descriptors have none (Go's traceback shows none for it).
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn a_go_site_says_which_go_statement_created_its_goroutine() {
    if !require_bpf() {
        return;
    }
    let (_server, mut stripped, mut full, mut tracer) = traced_go_clients();
    let mut told = Vec::new();
    for workload in [&mut stripped, &mut full] {
        workload.run("http 20");
        workload.run("dial 5");
        told.push(workload.ask("spawn 7"));
    }
    let expected = |pid: u32| kind_counts(&proc_fds(pid)).get("socket").copied().unwrap_or(0);
    let report = wait_for("the leaked descriptors in the report", Duration::from_secs(20), || {
        let report = tracer.snapshot();
        let done = [stripped.pid, full.pid].iter().all(|pid| {
            let open = |kind| {
                sites_of_kind(&report, *pid, kind).iter().map(|s| s["open"].as_u64().unwrap()).sum::<u64>()
            };
            open("socket") == expected(*pid) && spawned(&report, *pid).iter().any(|s| s["open"] == 7)
        });
        done.then_some(report)
    });
    let dials = transport_dial_statements();
    for (pid, told) in [stripped.pid, full.pid].into_iter().zip(&told) {
        // What Go's own traceback said created the leaking goroutine.
        assert!(told.starts_with("main.spawnLeaker "), "{told}");
        assert_created_as_told(&spawned(&report, pid), told);

        let sockets = sockets_sites(&report, pid);
        let http = sockets.iter().find(|s| s["open"] == 20).unwrap_or_else(|| panic!("{sockets:#?}"));
        let created_by = &http["created_by"];
        assert_eq!(created_by["symbol"], "net/http.(*Transport).queueForDial", "{created_by:#}");
        let line = created_by["line"].as_u64().unwrap();
        let statement = dials.iter().find(|(l, _)| *l == line);
        assert!(
            statement.is_some_and(|(_, f)| f.contains(") queueForDial(")),
            "line {line} is a `go t.dialConnFor(w)` of queueForDial: {dials:?}"
        );
        assert!(created_by["file"].as_str().unwrap().ends_with("/src/net/http/transport.go"));
        let dialled = sockets.iter().find(|s| s["open"] == 5).unwrap_or_else(|| panic!("{sockets:#?}"));
        assert!(dialled.get("created_by").is_none(), "the main goroutine's: {dialled:#}");
    }
    tracer.stop();
    stripped.exit();
    full.exit();
}

/// The report once the stripped goleak clients `pids` (each serving itself, `client self`, after
/// `http 20`, `dial 5` and `spawn 7`) have every socket in it: 25 client connections, their 25
/// accepted ends (the server is in the process) and the listener, opened before tracing. The
/// server's goroutine accepts after the client's dial returned: first wait for the last one.
fn stripped_clients_report(tracer: &mut Tracer, pids: &[u32]) -> Value {
    let sockets = |pid: u32| kind_counts(&proc_fds(pid)).get("socket").copied().unwrap_or(0);
    for pid in pids {
        wait_for("the server to accept every connection", Duration::from_secs(20), || {
            (sockets(*pid) == 51).then_some(())
        });
    }
    wait_for("the leaked descriptors in the report", Duration::from_secs(20), || {
        let report = tracer.snapshot();
        let done = pids.iter().all(|pid| {
            let open: u64 = sockets_sites(&report, *pid).iter().map(|s| s["open"].as_u64().unwrap()).sum();
            open + 1 == sockets(*pid) && spawned(&report, *pid).iter().any(|s| s["open"] == 7)
        });
        done.then_some(report)
    })
}

/// What the report says of such a client built by `go` (of `release`), its binary at `module`
/// as the process sees it: the Transport's connections one site of 20 of named Go functions of
/// the binary, created at a `go t.dialConnFor(w)` of that release's own source by the function
/// holding it there; the program's dial its own site of 5, told by `main.leakDial`, of the main
/// goroutine (no creator); the program's goroutine created where its own traceback said
/// (`told`).
fn assert_stripped_client_named(
    report: &Value,
    pid: u32,
    module: &str,
    go: &Path,
    release: &str,
    told: &str,
) {
    let sites = sockets_sites(report, pid);
    let dialled: Vec<&Value> =
        sites.iter().filter(|s| symbols_of(s).contains(&"net/http.(*Transport).dialConn")).collect();
    assert_eq!(dialled.len(), 1, "go{release}: {sites:#?}");
    assert_eq!(dialled[0]["open"], 20, "go{release}");
    let names = symbols_of(dialled[0]);
    for function in ["net/http.(*Transport).dialConn", "net.(*Dialer).DialContext", "syscall.Socket"] {
        assert!(names.contains(&function), "go{release}: {function} in {names:#?}");
    }
    let frames = dialled[0]["frames"].as_array().unwrap();
    assert!(
        frames.iter().all(|f| f["language"] == "go" && f["module"] == module),
        "go{release}: every frame is Go code of {module}, named: {frames:#?}"
    );
    let dial_line = source_line(&workload_dir("goleak/main.go"), "LEAK_DIAL");
    let own = sites.iter().find(|s| s["frame"] == format!("main.leakDial (main.go:{dial_line})").as_str());
    assert_eq!(own.map(|s| &s["open"]), Some(&Value::from(5)), "go{release}: {sites:#?}");
    assert!(own.unwrap().get("created_by").is_none(), "go{release}: the main goroutine's");
    // The function holding the `go t.dialConnFor(w)` moves between releases (1.19's
    // queueForDial, 1.24's startDialConnForLocked): the one at the creator's line in that
    // release's own source.
    let created_by = &dialled[0]["created_by"];
    let symbol = created_by["symbol"].as_str().unwrap_or_default();
    let method = symbol
        .strip_prefix("net/http.(*Transport).")
        .unwrap_or_else(|| panic!("go{release}: {created_by:#}"));
    let line = created_by["line"].as_u64().unwrap();
    let dials = transport_dial_statements_of(go);
    assert!(
        dials.iter().any(|(l, f)| *l == line && f.contains(&format!(") {method}("))),
        "go{release}: line {line} is a `go t.dialConnFor(w)` of {method}: {dials:?}"
    );
    assert!(created_by["file"].as_str().unwrap().ends_with("/src/net/http/transport.go"));
    assert!(told.starts_with("main.spawnLeaker "), "go{release}: {told}");
    assert_created_as_told(&spawned(report, pid), told);
}

/// Stripped Go clients built by every other Go release installed (Debian 13's 1.24, its
/// backports' 1.25, sid's 1.26 and 1.27: their tables moved the module data, dropped the
/// header's text start and keep generic names whole, and `gopc` moved twice) are named and say
/// their goroutines' creators as the host's 1.19 ones do: the Transport's connections one site of 20 created at a `go t.dialConnFor(w)` of that
/// release's own source, by the function holding it there, the program's dial its own site,
/// and the program's goroutine created where its own traceback says.
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn stripped_go_clients_of_every_release_installed_are_named_with_their_creators() {
    if !require_bpf() {
        return;
    }
    let toolchains = root_go_toolchains();
    let mut clients: Vec<(&str, PathBuf, Workload)> = toolchains
        .iter()
        .map(|(release, go)| {
            let binary = go_build_with(go, &format!("goleak-{release}.stripped"), &["-ldflags=-s -w"]);
            let mut command = Command::new(&binary);
            command.args(["client", "self"]);
            (release.as_str(), binary, Workload::spawn_command(command))
        })
        .collect();
    let pids: Vec<String> = clients.iter().map(|(_, _, w)| w.pid.to_string()).collect();
    let mut args: Vec<&str> = pids.iter().flat_map(|pid| ["--pid", pid.as_str()]).collect();
    args.extend(["--reconcile-interval", "0"]);
    let mut tracer = Tracer::start(&args);
    let mut told = Vec::new();
    for (_, _, client) in &mut clients {
        client.run("http 20");
        client.run("dial 5");
        told.push(client.ask("spawn 7"));
    }
    let pids: Vec<u32> = clients.iter().map(|(_, _, client)| client.pid).collect();
    let report = stripped_clients_report(&mut tracer, &pids);
    for (((release, binary, client), told), (_, go)) in clients.iter().zip(&told).zip(&toolchains) {
        assert_stripped_client_named(&report, client.pid, binary.to_str().unwrap(), go, release, told);
    }
    tracer.stop();
    for (_, _, client) in clients {
        client.exit();
    }
}

/// A Node.js client run with `--perf-basic-prof` (V8 writes /tmp/perf-PID.map) keeping the
/// connections it opens: its JIT frames are named from the map, each function one frame
/// whichever tier V8 compiled it to, so each leak is one site however often it ran. A Unix
/// socket is made within the program's call (one site told by the program's function); a TCP
/// connection on a later tick of Node's own, for the handle `net.connect` made within the
/// program's call: one site told by the program's function too, from the handle's stack
/// (libuv's `uv_tcp_init`, seen by the uprobes: model/handles.rs).
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn a_node_client_leaking_connections_is_one_site_per_javascript_function() {
    if !require_bpf() {
        return;
    }
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let unix = scratch.path().join("server.sock");
    let server = Server::start(Some(&unix));
    let script = workload_dir("jsleak/client.js");
    let mut command = Command::new("node");
    // Interpreted functions named too: each gets a copy of the interpreter's entry in the map.
    command.args(["--perf-basic-prof", "--interpreted-frames-native-stack"]);
    command.arg(&script).arg(server.port.to_string()).arg(&unix);
    // V8 writes its isolate-*-v8.log where it runs: in the scratch directory, not the tree.
    command.current_dir(scratch.path());
    let mut client = Workload::spawn_command(command);
    let perf_map = PathBuf::from(format!("/tmp/perf-{}.map", client.pid));
    let pid = client.pid.to_string();
    let mut tracer = Tracer::start(&["--pid", &pid, "--reconcile-interval", "0"]);
    // Twice each: V8 compiles the functions again in between (interpreted, then baseline).
    for command in ["connect 10", "unix 10", "connect 10", "unix 10"] {
        client.run(command);
    }
    let expected = kind_counts(&proc_fds(client.pid)).get("socket").copied().unwrap_or(0);
    assert_eq!(expected, 40, "every connection is kept");
    let report = wait_for("the leaked sockets in the report", Duration::from_secs(20), || {
        let report = tracer.snapshot();
        let open: u64 = sockets_sites(&report, client.pid).iter().map(|s| s["open"].as_u64().unwrap()).sum();
        (open == expected).then_some(report)
    });
    let sites = sockets_sites(&report, client.pid);
    let labels: BTreeMap<String, u64> = sites
        .iter()
        .map(|s| (s["frame"].as_str().unwrap().to_string(), s["open"].as_u64().unwrap()))
        .collect();
    let function_line = source_line(&script, "function connectUnixAndKeep");
    let unix_label = format!("connectUnixAndKeep (client.js:{function_line})");
    assert_eq!(labels.get(&unix_label), Some(&20), "one site of 20 named by the function: {labels:#?}");
    let tcp_label = format!("connectAndKeep (client.js:{})", source_line(&script, "function connectAndKeep"));
    assert_eq!(labels.get(&tcp_label), Some(&20), "one site of 20 named by the function: {labels:#?}");
    assert_eq!(sites.len(), 2, "{sites:#?}");
    let tcp_site = sites.iter().find(|s| s["frame"] == tcp_label.as_str()).unwrap();
    assert_handle_stack(tcp_site);
    let unix_site = sites.iter().find(|s| s["frame"] == unix_label.as_str()).unwrap();
    let frame =
        unix_site["frames"].as_array().unwrap().iter().find(|f| f["symbol"] == "connectUnixAndKeep").unwrap();
    assert_eq!(frame["language"], "jit");
    assert_eq!(frame["file"], script.to_str().unwrap());
    tracer.stop();
    client.exit();
    let _ = std::fs::remove_file(perf_map);
}

/// A TCP site of Node.js is its handle's creation: the innermost frame is libuv's
/// `uv_tcp_init` (or `uv_tcp_init_ex`), not the socket(2) of `uv_tcp_connect` on a later tick.
fn assert_handle_stack(site: &Value) {
    let frames = site["frames"].as_array().unwrap();
    let innermost = frames[0]["symbol"].as_str().unwrap_or_default();
    assert!(matches!(innermost, "uv_tcp_init" | "uv_tcp_init_ex"), "{frames:#?}");
    assert!(
        !frames.iter().any(|f| f["symbol"].as_str().is_some_and(|s| s.starts_with("internalConnect"))),
        "the later tick is not the site: {frames:#?}"
    );
}

/// The stripped Go client in a pod (its own pid, net and mount namespaces, its own root with
/// the binary at /app/goleak): named from the pod's own binary as on the host, its goroutines'
/// creators too. Built by the host's Go (1.19) and by every release of the roots (1.24 to
/// 1.27: tables, module data and `runtime.g` laid out anew), one pod each.
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn a_stripped_go_client_in_a_pod_is_named_from_its_own_binary() {
    if !require_bpf() {
        return;
    }
    let mut builds = vec![("1.19".to_string(), PathBuf::from("go"), goleak_stripped())];
    for (release, go) in root_go_toolchains() {
        let binary = go_build_with(&go, &format!("goleak-{release}.stripped"), &["-ldflags=-s -w"]);
        builds.push((release, go, binary));
    }
    for (release, go, binary) in &builds {
        let root = Root::native(binary, "/app/goleak");
        // A pod has only its own loopback: the client serves itself.
        let command = ["/app/goleak", "client", "self", "/tmp"].map(String::from).to_vec();
        let mut pod = Pod::start(PodSpec { root, command });
        let pid = pod.pid.to_string();
        let mut tracer = Tracer::start(&["--pid", &pid, "--reconcile-interval", "0"]);
        pod.run("http 20");
        pod.run("dial 5");
        let told = pod.ask("spawn 7");
        let report = stripped_clients_report(&mut tracer, &[pod.pid]);
        assert_stripped_client_named(&report, pod.pid, "/app/goleak", go, release, &told);
        tracer.stop();
    }
}

/// The Node.js client in a pod (its own pid, net and mount namespaces, its own root with
/// Debian's node and the libraries it links, the script at /app/client.js), serving itself: V8
/// writes its perf map into the pod's /tmp under the pid the pod sees, and the JIT frames are
/// named from it as on the host — the Unix connections one site told by the program's
/// function, the TCP ones too, from their handles' stack (the uprobes attached to the pod's own
/// node, through the tracer's handle on that file).
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn a_node_client_in_a_pod_is_named_from_the_perf_map_in_its_own_tmp() {
    if !require_bpf() {
        return;
    }
    node_client_in_a_pod(false);
}

/// The same pod started once the tracer has dropped its privileges, as a pod a DaemonSet finds
/// (traced by its name): its node is a file no process ran at the start, yet its TCP
/// connections are told by the program's function, from the uprobes the uprobe maker made on
/// that file (sys/uprobes.rs; without them, by `internalConnect (node:net:…)`, Node's later
/// tick). The maker keeps only what making a uprobe needs, and the tracer nothing of it.
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn a_node_client_in_a_pod_started_after_the_tracer_is_told_by_its_function_too() {
    if !require_bpf() {
        return;
    }
    node_client_in_a_pod(true);
}

/// A Node.js client in a pod, traced by pid from before its first connection or, `after`, by
/// its name from before the pod starts; every connection it makes is asserted told by the
/// program's function.
fn node_client_in_a_pod(after: bool) {
    let node = std::fs::canonicalize("/usr/bin/node").expect("node (cargo xtask setup --tests installs it)");
    let script = workload_dir("jsleak/client.js");
    let mut root = Root::native(&node, "/usr/bin/node");
    root.add(&script, "/app/client.js");
    let command = ["/usr/bin/node", "--perf-basic-prof", "--interpreted-frames-native-stack"]
        .into_iter()
        .chain(["/app/client.js", "self", "/tmp/server.sock", "/tmp"])
        .map(String::from)
        .collect();
    let early = after.then(|| Tracer::start(&["--comm", "node", "--reconcile-interval", "0"]));
    if let Some(tracer) = &early {
        assert_maker_keeps_only_what_uprobes_need(tracer.pid());
    }
    let mut pod = Pod::start(PodSpec { root, command });
    let pid = pod.pid.to_string();
    let mut tracer = early.unwrap_or_else(|| Tracer::start(&["--pid", &pid, "--reconcile-interval", "0"]));
    // A node found after the start gets its uprobes once the tracer has read its file (0.13 s
    // after it started, measured once here; longer on a loaded machine, as with another test's
    // node starting beside it); what it connects before then is told by node:net (README, "Go
    // programs and JIT runtimes"). Wait for them in the pod's memory.
    wait_for("the uprobes on the pod's node", Duration::from_secs(20), || {
        uprobe_on(pod.pid, &node, "/usr/bin/node", "uv_tcp_init").then_some(())
    });
    for command in ["connect 10", "unix 10", "connect 10", "unix 10"] {
        pod.run(command);
    }
    // 40 client connections, their 40 accepted ends (the servers are in the process), two
    // listeners; the servers accept after the client's connect returned: wait for the last.
    let sockets = || kind_counts(&proc_fds(pod.pid)).get("socket").copied().unwrap_or(0);
    wait_for("the servers to accept every connection", Duration::from_secs(20), || {
        (sockets() == 82).then_some(())
    });
    let report = wait_for("the client's sockets in the report", Duration::from_secs(20), || {
        let report = tracer.snapshot();
        let sites = sockets_sites(&report, pod.pid);
        let open = |prefix: &str| -> u64 {
            sites
                .iter()
                .filter(|s| s["frame"].as_str().is_some_and(|f| f.starts_with(prefix)))
                .map(|s| s["open"].as_u64().unwrap())
                .sum()
        };
        (open("connectUnixAndKeep (client.js:") == 20 && open("connectAndKeep (client.js:") == 20)
            .then_some(report)
    });
    let sites = sockets_sites(&report, pod.pid);
    let function_line = source_line(&script, "function connectUnixAndKeep");
    let unix_label = format!("connectUnixAndKeep (client.js:{function_line})");
    let unix_sites: Vec<&Value> = sites.iter().filter(|s| s["frame"] == unix_label.as_str()).collect();
    assert_eq!(unix_sites.len(), 1, "one site named by the function: {sites:#?}");
    assert_eq!(unix_sites[0]["open"], 20);
    let frame = unix_sites[0]["frames"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["symbol"] == "connectUnixAndKeep")
        .unwrap();
    assert_eq!(frame["language"], "jit");
    assert_eq!(frame["file"], "/app/client.js", "the path inside the pod");
    let tcp_label = format!("connectAndKeep (client.js:{})", source_line(&script, "function connectAndKeep"));
    let tcp: Vec<&Value> = sites.iter().filter(|s| s["frame"] == tcp_label.as_str()).collect();
    assert_eq!(tcp.len(), 1, "one site named by the function: {sites:#?}");
    assert_eq!(tcp[0]["open"], 20);
    assert_handle_stack(tcp[0]);
    tracer.stop();
}

/// A Node.js server that keeps the connections it accepts after their clients closed their
/// ends (half-open: CLOSE_WAIT), traced from before it listens. libuv accepts every server's
/// connections in its loop, below no JavaScript frame, so without more they would be one site
/// of the TCP and the Unix server together, told by glibc's `accept4`; each server's are one
/// site of their own, which says the listener's function (`accepted_on`: `listenTcp`,
/// `listenUnix`), as many as /proc and `ss` show.
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn a_node_server_keeping_half_open_connections_is_one_site_per_listener() {
    if !require_bpf() {
        return;
    }
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let script = workload_dir("jsleak/server.js");
    let mut command = Command::new("node");
    command.args(["--perf-basic-prof", "--interpreted-frames-native-stack"]);
    command.arg(&script).arg(scratch.path().join("server.sock"));
    // V8 writes its isolate-*-v8.log where it runs: in the scratch directory, not the tree.
    command.current_dir(scratch.path());
    let mut server = Workload::spawn_command(command);
    let pid = server.pid;
    let mut tracer = Tracer::start(&["--pid", &pid.to_string(), "--reconcile-interval", "0"]);
    assert_node_server_sites(&mut tracer, pid, &mut |c| server.run(c), &script, script.to_str().unwrap());
    tracer.stop();
    server.exit();
    let _ = std::fs::remove_file(format!("/tmp/perf-{pid}.map"));
}

/// The same server in a pod (its own pid, net and mount namespaces and root, with a copy of
/// Debian's node): its listeners' functions named from the perf map in its own /tmp, the
/// CLOSE_WAIT sockets counted by `ss` inside its network namespace.
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn a_node_server_in_a_pod_keeping_half_open_connections_is_one_site_per_listener() {
    if !require_bpf() {
        return;
    }
    let node = std::fs::canonicalize("/usr/bin/node").expect("node (cargo xtask setup --tests installs it)");
    let script = workload_dir("jsleak/server.js");
    let mut root = Root::native(&node, "/usr/bin/node");
    root.add(&script, "/app/server.js");
    let command = ["/usr/bin/node", "--perf-basic-prof", "--interpreted-frames-native-stack"]
        .into_iter()
        .chain(["/app/server.js", "/tmp/server.sock"])
        .map(String::from)
        .collect();
    let mut pod = Pod::start(PodSpec { root, command });
    let pid = pod.pid;
    let mut tracer = Tracer::start(&["--pid", &pid.to_string(), "--reconcile-interval", "0"]);
    assert_node_server_sites(&mut tracer, pid, &mut |c| pod.run(c), &script, "/app/server.js");
    tracer.stop();
}

/// Drive jsleak/server.js (`run`: one command of its protocol) and check the report: `script`
/// is its source here, `script_seen` its path as the process sees it.
fn assert_node_server_sites(
    tracer: &mut Tracer,
    pid: u32,
    run: &mut dyn FnMut(&str) -> Vec<i64>,
    script: &Path,
    script_seen: &str,
) {
    let port = run("listen")[0];
    run("tcp 12");
    run("unix 8");
    // Two listeners and what they accepted; every client end is closed.
    let sockets = || kind_counts(&proc_fds(pid)).get("socket").copied().unwrap_or(0);
    wait_for("the server to hold every connection", Duration::from_secs(20), || {
        (sockets() == 22).then_some(())
    });
    // The TCP ones in CLOSE_WAIT, as ss shows them in the process's network namespace.
    let close_wait = || {
        let out = Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-n", "ss", "-tanH", "state", "close-wait"])
            .arg(format!("sport = :{port}"))
            .output()
            .expect("nsenter runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()).count()
    };
    wait_for("12 sockets in CLOSE_WAIT", Duration::from_secs(20), || (close_wait() == 12).then_some(()));
    let report = wait_for("the server's sockets in the report", Duration::from_secs(20), || {
        let report = tracer.snapshot();
        let open: u64 = sockets_sites(&report, pid).iter().map(|s| s["open"].as_u64().unwrap()).sum();
        (open == 22).then_some(report)
    });
    let sites = sockets_sites(&report, pid);
    let accepted: Vec<&Value> = sites.iter().filter(|s| s.get("accepted_on").is_some()).collect();
    assert_eq!(accepted.len(), 2, "one site per listener: {sites:#?}");
    assert_eq!(accepted[0]["frames"], accepted[1]["frames"], "both accepted with the loop's one stack");
    for (function, open, close_wait) in [("listenTcp", 12, 12), ("listenUnix", 8, 0)] {
        let line = source_line(script, &format!("function {function}"));
        let site = accepted
            .iter()
            .find(|s| s["accepted_on"]["symbol"] == function)
            .unwrap_or_else(|| panic!("no site accepted on {function}'s listener: {accepted:#?}"));
        assert_eq!(
            (site["open"].as_u64(), site["close_wait"].as_u64()),
            (Some(open), Some(close_wait)),
            "{site:#}"
        );
        let listener = &site["accepted_on"];
        assert_eq!(listener["language"], "jit", "{listener:#}");
        assert_eq!((listener["file"].as_str(), listener["line"].as_u64()), (Some(script_seen), Some(line)));
        assert!(symbols_of(site).contains(&"uv__server_io"), "accepted in libuv's loop: {site:#}");
        // The listener itself: one socket at a site told by the same function.
        let told = format!("{function} (server.js:{line})");
        let listeners: u64 =
            sites.iter().filter(|s| s["frame"] == told.as_str()).map(|s| s["open"].as_u64().unwrap()).sum();
        assert_eq!(listeners, 1, "{told}: {sites:#?}");
    }
}

/// tests/workloads/javaleak compiled by the JDK's javac (`cargo xtask setup --tests` installs
/// openjdk-17-jdk-headless), once per test run.
fn javaleak_classes() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("javaleak");
        let status = Command::new("javac")
            .arg("-d")
            .arg(&out)
            .arg(workload_dir("javaleak/LeakClient.java"))
            .status()
            .expect("javac runs (cargo xtask setup --tests installs openjdk-17-jdk-headless)");
        assert!(status.success(), "compiling javaleak failed");
        out
    })
}

/// A Java runtime of the class library's base module only, made by the JDK's jlink as images
/// ship one (a directory of its own: bin/java, lib/, conf/), once per test run.
fn jlinked_runtime() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("javaleak-runtime");
        let _ = std::fs::remove_dir_all(&out);
        let status = Command::new("jlink")
            .args(["--add-modules", "java.base", "--strip-debug", "--no-man-pages", "--no-header-files"])
            .arg("--output")
            .arg(&out)
            .status()
            .expect("jlink runs (cargo xtask setup --tests installs openjdk-17-jdk-headless)");
        assert!(status.success(), "jlink failed");
        out
    })
}

/// HotSpot as the Java tests run it (tests/workloads/javaleak/LeakClient.java says why): frame
/// pointers kept in compiled code, and the workload's own methods compiled at their first call
/// by C1 alone and never inlined into their callers, so each is a method of its own in the perf
/// map (a method inlined is named by its caller, as in any profile of a JIT).
const JAVA_FLAGS: &[&str] = &[
    "-XX:+PreserveFramePointer",
    "-Xcomp",
    "-XX:TieredStopAtLevel=1",
    "-XX:CompileCommand=quiet",
    "-XX:CompileCommand=compileonly,LeakClient::*",
    "-XX:CompileCommand=dontinline,LeakClient::*",
];

/// HotSpot writes its perf map (`jcmd PID Compiler.perfmap`, JDK 17+) into the process's own
/// /tmp, under the pid the process sees itself as: jcmd attaches to a JVM in a pod from here.
fn write_perf_map(pid: u32) {
    let out = Command::new("jcmd").arg(pid.to_string()).arg("Compiler.perfmap").output().expect("jcmd runs");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("Command executed successfully"), "jcmd: {said}");
}

/// The Java client `pid`, driven by `run`, traced: one command of each kind first (each
/// method compiled at its first call, the JDK's native wrappers made), then HotSpot's perf map
/// written (it names them), then 20 connections and 20 files kept. The tracer starts after the
/// map is written, or with `tracer_first` before the first commands: then their stacks are
/// first seen with bare addresses, and the map, written while tracing, is looked at within
/// PERF_MAP_LOOK_INTERVAL (resolve/stacks.rs, 1 s). Its sites once all of it is in the report:
/// (label, kind) → open, and the sites.
fn traced_java_client(
    pid: u32,
    tracer_first: bool,
    mut run: impl FnMut(&str),
) -> (BTreeMap<(String, String), u64>, Vec<Value>) {
    let start = || Tracer::start(&["--pid", &pid.to_string(), "--reconcile-interval", "0"]);
    let tracer = tracer_first.then(start);
    run("connect 1");
    run("file 1");
    write_perf_map(pid);
    // The listener, a connection and its accepted end, and the attach listener jcmd asked
    // HotSpot to open; then 20 more of each kind.
    let sockets = || kind_counts(&proc_fds(pid)).get("socket").copied().unwrap_or(0);
    wait_for("the first connection accepted", Duration::from_secs(20), || (sockets() == 4).then_some(()));
    if tracer_first {
        // The map is looked at again once a second at most.
        std::thread::sleep(Duration::from_millis(1500));
    }
    let mut tracer = tracer.unwrap_or_else(start);
    for command in ["connect 10", "file 10", "connect 10", "file 10"] {
        run(command);
    }
    wait_for("every connection accepted", Duration::from_secs(20), || (sockets() == 44).then_some(()));
    let report = wait_for("the kept connections and files in the report", Duration::from_secs(20), || {
        let report = tracer.snapshot();
        let open =
            |kind| sites_of_kind(&report, pid, kind).iter().map(|s| s["open"].as_u64().unwrap()).sum::<u64>();
        // Traced from the first: the first connection, its accepted end, the attach listener.
        let first = if tracer_first { 3 } else { 0 };
        (open("socket") == 40 + first && open("file") >= 20).then_some(report)
    });
    tracer.stop();
    let sites: Vec<Value> = ["socket", "file"]
        .iter()
        .flat_map(|kind| sites_of_kind(&report, pid, kind))
        .filter(|s| s["open"] != 0)
        .collect();
    let labels = sites
        .iter()
        .map(|s| {
            let key = (s["frame"].as_str().unwrap().to_string(), s["kind"].as_str().unwrap().to_string());
            (key, s["open"].as_u64().unwrap())
        })
        .collect();
    (labels, sites)
}

/// What the Java client kept while traced: each of its methods one site of every descriptor it
/// opened there, named by the method as HotSpot's perf map names it, past the JDK's JNI
/// libraries and class library; the telling frame is a JIT frame. `others`: how many more
/// descriptors are open at other sites (what was opened before the map was written).
fn assert_java_sites(labels: &BTreeMap<(String, String), u64>, sites: &[Value], others: u64) {
    let expected = [
        ("LeakClient.connectAndKeep(int, int)", "socket", 20),
        ("LeakClient.lambda$main$0(java.net.ServerSocket)", "socket", 20),
        ("LeakClient.openAndKeep(java.lang.String, int)", "file", 20),
    ];
    for (label, kind, open) in expected {
        assert_eq!(labels.get(&(label.to_string(), kind.to_string())), Some(&open), "{label}: {labels:#?}");
        let site = sites.iter().find(|s| s["frame"] == label).unwrap();
        let frame = site["frames"].as_array().unwrap().iter().find(|f| f["symbol"] == label).unwrap();
        assert_eq!(frame["language"], "jit");
    }
    // From the sites: unnamed ones may share a label (HotSpot's one return point from native
    // code is their first frame in no file).
    let rest: u64 = sites
        .iter()
        .filter(|s| !expected.iter().any(|(l, ..)| s["frame"] == *l))
        .map(|s| s["open"].as_u64().unwrap())
        .sum();
    assert_eq!(rest, others, "one site per method: {labels:#?}");
}

/// A Java client (HotSpot, Debian's JDK) keeping the connections and files it opens, its server
/// in the same process keeping what it accepts: with the perf map HotSpot writes on
/// `jcmd PID Compiler.perfmap`, written while it is traced, each method that opened is one
/// site of all it opened since, named by the method; counts equal /proc.
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn a_java_client_leaking_connections_is_one_site_per_method() {
    if !require_bpf() {
        return;
    }
    let classes = javaleak_classes();
    let mut command = Command::new("java");
    command.args(JAVA_FLAGS).arg("-cp").arg(classes).args(["LeakClient", "self"]);
    command.arg(classes.join("LeakClient.class"));
    let mut client = Workload::spawn_command(command);
    let pid = client.pid;
    let (labels, sites) = traced_java_client(pid, true, |command| {
        client.run(command);
    });
    // What was opened before the map was written: its first connection, the accepted end,
    // the attach listener and its first file, at sites of bare addresses.
    assert_java_sites(&labels, &sites, 4);
    client.exit();
    let _ = std::fs::remove_file(format!("/tmp/perf-{}.map", pid));
}

/// The Java client in a pod (its own pid, net and mount namespaces, its own root with a Java
/// runtime jlinked from the JDK at /opt/java, the class at /app): jcmd attaches from the host,
/// HotSpot writes the map into the pod's /tmp as perf-1.map (it is the pod's pid 1), and the
/// methods are named from it as on the host.
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn a_java_client_in_a_pod_is_named_from_the_perf_map_in_its_own_tmp() {
    if !require_bpf() {
        return;
    }
    let mut root = Root::tree(jlinked_runtime(), "/opt/java");
    root.add(&javaleak_classes().join("LeakClient.class"), "/app/LeakClient.class");
    let command = ["/opt/java/bin/java"]
        .iter()
        .chain(JAVA_FLAGS)
        .chain(&["-cp", "/app", "LeakClient", "self", "/app/LeakClient.class"])
        .map(|s| s.to_string())
        .collect();
    let mut pod = Pod::start(PodSpec { root, command });
    let pid = pod.pid;
    let (labels, sites) = traced_java_client(pid, false, |command| {
        pod.run(command);
    });
    assert_java_sites(&labels, &sites, 0);
    let libnio = sites
        .iter()
        .flat_map(|s| s["frames"].as_array().unwrap())
        .find_map(|f| f["module"].as_str().filter(|m| m.ends_with("/libnio.so")));
    assert_eq!(libnio, Some("/opt/java/lib/libnio.so"), "the path inside the pod");
}
