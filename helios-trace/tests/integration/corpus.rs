//! Real frameworks, real leaks (issue 21): scripts on packages users run
//! (tests/workloads/corpus: asyncio streams, Tornado's WebSocketHandler, aiohttp's server and
//! ClientSession, requests/urllib3 sessions, sqlite3 connections, subprocess pipes, a logging
//! FileHandler per request, tempfile), each in a leaking and a fixed variant, driving itself
//! over loopback, started under the tracer on each CPython the corpus's packages are installed
//! for by `cargo xtask setup --tests`: Debian's python3 (3.11, in the corpus's virtualenv), and
//! Debian trixie's 3.13 and unstable's 3.14, each chrooted in its root filesystem with the
//! pinned packages of tests/workloads/corpus/requirements.txt bind-mounted in. At their steady
//! state, what each leaked is found independently of helios-trace (/proc/PID/fd, `ss`): the
//! leaking variant's descriptors are all at one site, named in the script's own code, with as
//! many open (and, for a server, as many in CLOSE_WAIT) as the kernel says, and suspected, and
//! held (issue 15) by the script's own global that keeps them (`SCRIPTS`), or by no Python
//! object where none owns them; the fixed variant is never suspected.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::{
    python::TestCgroup,
    support::{Tracer, proc_fds, process, reported_fds, require_bpf},
};

/// Requests each script serves (tests/workloads/corpus/corpus_common.py, ROUNDS).
const ROUNDS: usize = 30;

/// How a script's leaked descriptors are told, from the kernel's side.
#[derive(Clone, Copy)]
enum Leaked {
    /// Sockets in CLOSE_WAIT (`ss`): a server that never closes what its peers hung up.
    CloseWait,
    /// Connected sockets whose peer is the script's own server (`ss`): a client's pool.
    ClientOfServer,
    /// Descriptors of files in the scratch directory whose names start so (/proc/PID/fd).
    Files(&'static str),
    /// Pipes, past the standard streams (/proc/PID/fd).
    Pipes,
}

/// What holds a leaking variant's descriptors (issue 15, holders): the script's own global
/// and the path from it, as the report's one holder line of the site says, or no Python object
/// (SQLite's file, opened by the C library: the `sqlite3.Connection` kept in a dict holds
/// SQLite's handle, not a Python file object; mkstemp's bare descriptor).
#[derive(Clone, Copy)]
enum Held {
    By(&'static str, &'static str),
    NoPythonOwner,
}

const SCRIPTS: &[(&str, Leaked, Held)] = &[
    (
        "asyncio_streams",
        Leaked::CloseWait,
        Held::By("__main__:UnitHandler.connections", ".reader._transport._sock"),
    ),
    ("tornado_ws", Leaked::CloseWait, Held::By("__main__:_ws_connections", ".ws_connection.stream.socket")),
    (
        "aiohttp_server",
        Leaked::CloseWait,
        Held::By("__main__:TelemetryUploads.pending", "._protocol.transport._sock"),
    ),
    (
        "aiohttp_client",
        Leaked::ClientOfServer,
        Held::By("__main__:SESSIONS", "._connector._conns[…][][].transport._sock"),
    ),
    (
        "requests_session",
        Leaked::ClientOfServer,
        Held::By(
            "__main__:SESSIONS",
            ".adapters[\"http://\"].poolmanager.pools._container[…].pool.queue[].sock",
        ),
    ),
    ("sqlite3_conns", Leaked::Files("units.db"), Held::NoPythonOwner),
    ("subprocess_pipes", Leaked::Pipes, Held::By("__main__:CHILDREN", ".stdout.raw")),
    (
        "logging_handler",
        Leaked::Files("requests.log"),
        Held::By("__main__:logger", ".handlers[].stream.buffer.raw"),
    ),
    ("tempfile_leak", Leaked::Files("heatmap-"), Held::NoPythonOwner),
];

fn data_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".local/share/helios-trace")
}

/// A CPython the corpus runs on: the corpus's virtualenv on the host, or an interpreter
/// chrooted in a root of its own with the corpus's packages for its version beside the root.
struct CorpusPython {
    /// What it is called in cgroups and messages.
    name: &'static str,
    /// The interpreter as its process sees it.
    python: PathBuf,
    /// Its root and its packages (xtask/src/setup.rs, `CORPUS_ROOTS`).
    rooted: Option<(PathBuf, PathBuf)>,
}

impl CorpusPython {
    /// Debian's python3 (3.11) in the corpus's virtualenv.
    fn host() -> CorpusPython {
        let python = data_dir().join("corpus-venv/bin/python");
        assert!(python.exists(), "{} is missing: run `cargo xtask setup --tests`", python.display());
        CorpusPython { name: "debian-python3.11", python, rooted: None }
    }

    /// CPython 3.`minor` of the root `name` (roots.rs), with the packages setup installed for it.
    fn in_root(name: &'static str, minor: u32) -> CorpusPython {
        let root = data_dir().join("roots").join(name);
        let python = PathBuf::from(format!("/usr/bin/python3.{minor}"));
        let packages = data_dir().join("corpus").join(name);
        for needed in
            [root.join(python.strip_prefix("/").unwrap()), packages.join("installed-requirements.txt")]
        {
            assert!(needed.exists(), "{} is missing: run `cargo xtask setup --tests`", needed.display());
        }
        CorpusPython { name, python, rooted: Some((root, packages)) }
    }

    /// The command running the corpus script `name` with its variant and scratch directory,
    /// and the scratch directory's path as /proc/PID/fd of the host shows the files in it.
    fn command(&self, name: &str, leaking: bool, scratch: &Path) -> (Command, PathBuf) {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/corpus");
        let variant = if leaking { "leaking" } else { "fixed" };
        let Some((root, packages)) = &self.rooted else {
            let mut command = Command::new(&self.python);
            command.arg(corpus.join(format!("{name}.py"))).arg(variant).arg(scratch);
            // No __pycache__ in the source tree.
            command.env("PYTHONDONTWRITEBYTECODE", "1");
            return (command, scratch.to_path_buf());
        };
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "sh", "-c", LAUNCH_IN_ROOT, "sh"])
            .args([root.as_path(), corpus.as_path(), packages.as_path(), scratch])
            .arg(&self.python)
            .arg(format!("/tmp/corpus/{name}.py"))
            .args([variant, "/tmp/scratch"])
            .env("PYTHONPATH", "/tmp/site-packages")
            // Compiled modules (the root's standard library has none: no maintainer script
            // ran) go beside the packages, for the next run, never into the root or the tree.
            .env("PYTHONPYCACHEPREFIX", "/tmp/site-packages/pycache");
        // The file's path in the workload's mount namespace, which the host cannot reach: the
        // kernel names it from that namespace's root (d_path), the root's directory included.
        (command, root.join("tmp/scratch"))
    }
}

/// Runs `python args...` chrooted in a root (arguments: root, corpus, packages, scratch, then
/// the command), in a mount namespace of its own (unshare --mount): a tmpfs over the root's
/// /tmp holds the mount points (nothing is left in the cached root), where the corpus scripts,
/// the packages (in a directory named as installed packages are, site-packages: a frame in
/// them is a library's, not the application's) and the scratch directory are bind-mounted.
const LAUNCH_IN_ROOT: &str = r#"set -e
root=$1; corpus=$2; packages=$3; scratch=$4; shift 4
mount -t tmpfs helios-trace-corpus "$root/tmp"
mkdir "$root/tmp/corpus" "$root/tmp/site-packages" "$root/tmp/scratch"
mount --bind "$corpus" "$root/tmp/corpus"
mount --bind "$packages" "$root/tmp/site-packages"
mount --bind "$scratch" "$root/tmp/scratch"
exec chroot "$root" "$@""#;

/// One running script.
struct Script {
    name: &'static str,
    leaking: bool,
    leaked: Leaked,
    held: Held,
    child: Child,
    stdin: ChildStdin,
    /// Removed once the script is gone.
    _scratch: tempfile::TempDir,
    /// The scratch directory as /proc/PID/fd's links show it.
    scratch_seen: PathBuf,
    /// Its server's port, for those that have one.
    port: Option<u16>,
}

impl Script {
    fn start(
        python: &CorpusPython,
        cgroup: &TestCgroup,
        name: &'static str,
        leaked: Leaked,
        held: Held,
        leaking: bool,
    ) -> Script {
        let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let (command, scratch_seen) = python.command(name, leaking, scratch.path());
        let mut child = cgroup
            .wrap(&command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        let stdin = child.stdin.take().unwrap();
        Script { name, leaking, leaked, held, child, stdin, _scratch: scratch, scratch_seen, port: None }
    }

    fn variant(&self) -> String {
        format!("{} ({})", self.name, if self.leaking { "leaking" } else { "fixed" })
    }

    /// Wait until it is set to start its requests ("settled"), then start them ("go").
    fn wait_settled(&mut self) {
        let mut line = String::new();
        BufReader::new(self.child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line, "settled\n", "{} said {line:?}", self.variant());
    }

    fn go(&mut self) {
        self.stdin.write_all(b"go\n").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Its steady state, as it said it: "ready [PORT]".
    fn ready(&mut self, line: &str) {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.first(), Some(&"ready"), "{} said {line:?}", self.variant());
        self.port = words.get(1).map(|p| p.parse().unwrap());
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The descriptors it leaked, as the kernel tells them.
    fn leaked_fds(&self, sockets: &[SocketRow]) -> BTreeSet<i64> {
        let pid = self.pid();
        let own = sockets.iter().filter(|s| s.users.contains_key(&pid));
        match self.leaked {
            Leaked::CloseWait => own.filter(|s| s.state == "CLOSE-WAIT").map(|s| s.users[&pid]).collect(),
            Leaked::ClientOfServer => {
                let port = self.port.expect("a server port");
                own.filter(|s| s.state == "ESTAB" && s.peer_port == port).map(|s| s.users[&pid]).collect()
            }
            Leaked::Files(prefix) => {
                let prefix = self.scratch_seen.join(prefix).to_string_lossy().into_owned();
                fd_links(pid)
                    .into_iter()
                    .filter(|(_, link)| link.starts_with(&prefix))
                    .map(|(fd, _)| fd)
                    .collect()
            }
            Leaked::Pipes => {
                // Not those it inherited from this test process (cargo's jobserver pipe).
                let inherited: BTreeSet<String> = fd_links(std::process::id()).into_values().collect();
                fd_links(pid)
                    .into_iter()
                    .filter(|(fd, link)| *fd > 2 && link.starts_with("pipe:") && !inherited.contains(link))
                    .map(|(fd, _)| fd)
                    .collect()
            }
        }
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "exit");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// fd → link target of a process's descriptors.
fn fd_links(pid: u32) -> BTreeMap<i64, String> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let fd = e.file_name().to_str()?.parse().ok()?;
            Some((fd, fs::read_link(e.path()).ok()?.to_string_lossy().into_owned()))
        })
        .collect()
}

/// One TCP socket as `ss -tanpH` shows it: its state, its peer's port, and the (pid, fd) of
/// every process holding it.
struct SocketRow {
    state: String,
    peer_port: u16,
    users: BTreeMap<u32, i64>,
}

fn tcp_sockets() -> Vec<SocketRow> {
    let out = Command::new("ss").args(["-tanpH"]).output().expect("ss (iproute2) runs");
    assert!(out.status.success(), "ss -tanpH failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let peer_port = fields.get(4)?.rsplit(':').next()?.parse().ok()?;
            let mut users = BTreeMap::new();
            for user in line.split("pid=").skip(1) {
                let (pid, rest) = user.split_once(",fd=")?;
                let fd: String = rest.chars().take_while(char::is_ascii_digit).collect();
                users.insert(pid.parse().ok()?, fd.parse().ok()?);
            }
            Some(SocketRow { state: fields[0].to_string(), peer_port, users })
        })
        .collect()
}

/// What is wrong with one script's part of the report (empty: nothing).
fn check(report: &Value, script: &Script, sockets: &[SocketRow]) -> Vec<String> {
    let what = script.variant();
    let pid = script.pid();
    let mut wrong = Vec::new();
    let Some(p) = process(report, pid) else { return vec![format!("{what}: pid {pid} not in the report")] };
    let (reported, truth) = (reported_fds(report, pid), proc_fds(pid));
    if reported != truth {
        wrong.push(format!("{what}: the report lists {reported:?}, /proc/{pid}/fd has {truth:?}"));
    }
    let sites = p["sites"].as_array().unwrap();
    let leaked = script.leaked_fds(sockets);
    if !script.leaking {
        if !leaked.is_empty() {
            wrong.push(format!("{what}: the fixed variant leaked {leaked:?}"));
        }
        for site in sites.iter().filter(|s| s["suspected_leak"] == true) {
            wrong.push(format!("{what}: suspected {} {}: {}", site["frame"], site["kind"], site["why"]));
        }
        return wrong;
    }
    if leaked.len() != ROUNDS {
        wrong.push(format!(
            "{what}: the kernel shows {} leaked descriptors, not {ROUNDS}: {leaked:?}",
            leaked.len()
        ));
    }
    let listing = p["fds"].as_array().unwrap();
    let at: BTreeSet<&str> = listing
        .iter()
        .filter(|e| e["fd"].as_i64().is_some_and(|fd| leaked.contains(&fd)))
        .filter_map(|e| e["site"].as_str())
        .collect();
    let [id] = at.iter().copied().collect::<Vec<&str>>()[..] else {
        let described: Vec<String> = sites
            .iter()
            .filter(|s| s["site"].as_str().is_some_and(|id| at.contains(id)))
            .map(|s| {
                // The frames its identity hashes: all but the interpreter's own.
                let frames: Vec<String> = s["frames"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|f| f["interpreter"] != true)
                    .map(|f| match f["language"].as_str() {
                        Some("python") => format!("{}:{}:{}", f["file"], f["symbol"], f["line"]),
                        _ => format!("{} ({})", f["symbol"], f["module"]),
                    })
                    .collect();
                format!("{} {} ({} open, frames {frames:?})", s["site"], s["frame"], s["open"])
            })
            .collect();
        wrong.push(format!("{what}: the leaked descriptors are at {} sites: {described:?}", at.len()));
        return wrong;
    };
    let site = sites.iter().find(|s| s["site"] == id).unwrap();
    let summary = format!(
        "{what}: site {id} {} ({} open, close_wait {}, suspected {})",
        site["frame"], site["open"], site["close_wait"], site["suspected_leak"]
    );
    if site["open"] != leaked.len() as u64 {
        wrong.push(format!("{summary}: not the {} the kernel shows", leaked.len()));
    }
    if !site["frame"].as_str().is_some_and(|f| f.starts_with(&format!("{}.py:", script.name))) {
        wrong.push(format!("{summary}: not named in the script's own code; frames {:#}", site["frames"]));
    }
    if matches!(script.leaked, Leaked::CloseWait) && site["close_wait"] != leaked.len() as u64 {
        wrong.push(format!("{summary}: ss shows {} in CLOSE_WAIT", leaked.len()));
    }
    if site["suspected_leak"] != true {
        wrong.push(format!("{summary}: not suspected"));
    }
    let holders: Vec<&Value> = site["holders"].as_array().into_iter().flatten().collect();
    let held = holders
        .iter()
        .map(|h| (h["count"].as_u64(), h["root"].as_str(), h["path"].as_str(), h["note"].as_str()))
        .collect::<Vec<_>>();
    let expected = match script.held {
        Held::By(root, path) => (Some(leaked.len() as u64), Some(root), Some(path), None),
        Held::NoPythonOwner => (Some(leaked.len() as u64), None, None, Some("no Python owner")),
    };
    if held != [expected] {
        wrong.push(format!("{summary}: held {held:?}, not {expected:?}"));
    }
    eprintln!("{summary}, held {held:?}");
    wrong
}

/// Every script of the corpus, both variants at once under one tracer started before them,
/// following the scripts alone (a cgroup of their own: the other tests' processes, and the
/// corpus on the other interpreters, are not its load).
fn corpus_leaks_are_named_and_fixed_variants_never_suspected(python: CorpusPython) {
    // One interpreter's corpus at a time: eighteen interpreters importing their frameworks at
    // once per corpus, three corpora at once on two cores, overflowed a tracer's ring buffer
    // (an exec lost: an interpreter never probed) and spread the scripts' ends apart.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let cgroup = TestCgroup::new(&format!("helios-trace-corpus-{}", python.name));
    // Eighteen interpreters start and import their frameworks at once: at the default 16 MiB
    // (about 1,800 records of a --stacks dwarf window) the ring overflowed in CI, losing an
    // interpreter's exec (1,921 records lost; that interpreter had no Python frames). This
    // test is about naming, so the ring is made to hold the burst, and nothing may be lost.
    let args = ["--cgroup", cgroup.0.to_str().unwrap(), "--min-age", "1s", "--ring-buffer-size", "256M"];
    let mut tracer = Tracer::start(&args);
    let mut scripts: Vec<Script> = SCRIPTS
        .iter()
        .flat_map(|(name, leaked, held)| [true, false].map(|leaking| (*name, *leaked, *held, leaking)))
        .map(|(name, leaked, held, leaking)| Script::start(&python, &cgroup, name, leaked, held, leaking))
        .collect();
    // All at once: every leak grows over the same seconds and is still growing at the snapshot.
    for script in &mut scripts {
        script.wait_settled();
    }
    for script in &mut scripts {
        script.go();
    }
    // Each is judged on the first snapshot after it is ready: on a loaded machine one script
    // can end seconds after the others (a slow fsync of sqlite3's), and a leak that stopped
    // growing well before the snapshot is, rightly, not judged growing.
    let (tell, told) = std::sync::mpsc::channel();
    for (i, script) in scripts.iter_mut().enumerate() {
        let mut stdout = BufReader::new(script.child.stdout.take().unwrap());
        let tell = tell.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = stdout.read_line(&mut line);
            let _ = tell.send((i, line));
        });
    }
    drop(tell);
    let mut wrong = Vec::new();
    let mut waiting = scripts.len();
    while waiting > 0 {
        let first = told.recv_timeout(Duration::from_secs(120));
        let mut ready = vec![first.expect("every script is ready within two minutes of go")];
        ready.extend(told.try_iter());
        waiting -= ready.len();
        for (i, line) in &ready {
            scripts[*i].ready(line);
        }
        let report = tracer.snapshot();
        let sockets = tcp_sockets();
        wrong.extend(ready.iter().flat_map(|(i, _)| check(&report, &scripts[*i], &sockets)));
    }
    assert!(wrong.is_empty(), "{}: {} problems:\n{}", python.name, wrong.len(), wrong.join("\n"));
    let report = tracer.snapshot();
    assert_eq!(report["events"]["lost"], 0, "{}: records lost: {}", python.name, report["events"]);
    drop(scripts);
}

/// Debian's own CPython 3.11, the host's.
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn corpus_on_debian_python3_11() {
    if !require_bpf() {
        return;
    }
    corpus_leaks_are_named_and_fixed_variants_never_suspected(CorpusPython::host());
}

/// Debian 13's CPython 3.13, with its own glibc.
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn corpus_on_trixie_python3_13() {
    if !require_bpf() {
        return;
    }
    corpus_leaks_are_named_and_fixed_variants_never_suspected(CorpusPython::in_root("trixie-python3.13", 13));
}

/// Debian unstable's CPython 3.14, with its own glibc.
#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn corpus_on_sid_python3_14() {
    if !require_bpf() {
        return;
    }
    corpus_leaks_are_named_and_fixed_variants_never_suspected(CorpusPython::in_root("sid-python3.14", 14));
}
