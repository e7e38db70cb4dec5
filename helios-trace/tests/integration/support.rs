//! Shared by the kernel tests: the workloads they trace, the tracer they run, and the ground
//! truth the kernel gives (/proc/PID/fd), read independently of helios-trace's own code.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{Condvar, Mutex, OnceLock, PoisonError},
    time::{Duration, Instant},
};

use serde_json::Value;

/// The kernel tests need root (CAP_BPF, CAP_PERFMON). Without it they skip, unless the
/// environment demands they run (`cargo xtask test` sets HELIOS_TRACE_REQUIRE_BPF=1): then
/// they fail, so CI can never pass by skipping them.
pub fn require_bpf() -> bool {
    // SAFETY: no arguments.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    let required = std::env::var("HELIOS_TRACE_REQUIRE_BPF").is_ok_and(|v| v == "1");
    assert!(!required, "HELIOS_TRACE_REQUIRE_BPF=1 but this test is not root: cannot load eBPF programs");
    eprintln!(
        "skipping: loading eBPF programs needs root (set HELIOS_TRACE_REQUIRE_BPF=1 to make this fail)"
    );
    false
}

pub fn helios_trace_bin() -> &'static str {
    env!("CARGO_BIN_EXE_helios-trace")
}

fn scratch_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// Compile a C workload from tests/workloads once per test run, with the given flags.
pub fn compile_c(source: &str, output: &str, flags: &[&str]) -> PathBuf {
    compile_c_with("gcc", source, output, flags)
}

/// The same with another compiler driver (`musl-gcc`).
pub fn compile_c_with(compiler: &str, source: &str, output: &str, flags: &[&str]) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads").join(source);
    let out = scratch_root().join(output);
    let fresh = fs::metadata(&out)
        .and_then(|o| Ok(o.modified()? >= fs::metadata(&src)?.modified()?))
        .unwrap_or(false);
    if !fresh {
        let status = Command::new(compiler)
            .args(flags)
            .arg(&src)
            .arg("-o")
            .arg(&out)
            .status()
            .unwrap_or_else(|e| panic!("{compiler} runs (cargo xtask setup --tests installs it): {e}"));
        assert!(status.success(), "compiling {source} failed");
    }
    out
}

pub fn fdwork_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| compile_c("fdwork.c", "fdwork", &["-O2", "-g", "-Wall", "-pthread"]))
}

/// rawcalls.c: every descriptor syscall of the table by its own number, built with glibc.
pub fn rawcalls_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| compile_c("rawcalls.c", "rawcalls", &["-O2", "-Wall"]))
}

/// rawcalls.c linked statically against musl (musl-gcc, from `cargo xtask setup --tests`).
pub fn rawcalls_musl_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        compile_c_with("musl-gcc", "rawcalls.c", "rawcalls.musl", &["-static", "-O2", "-Wall"])
    })
}

/// leaker.c: leaks from call sites of known names (see its header), with frame pointers.
pub fn leaker_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| compile_c("leaker.c", "leaker", &["-O2", "-g", "-Wall", "-fno-omit-frame-pointer"]))
}

/// Tests whose processes hold tens of thousands of descriptors (`Holder`s) and tests that trace
/// every process of the machine keep out of each other's way: such a tracer's baseline reads
/// every descriptor of the machine (microseconds each: BENCHMARKS.md, "Reading /proc"), and
/// the 1.5 million another test holds take it past the 30 s a test waits for it to attach.
/// Counted, not a lock: a test may run two such tracers at once.
struct Machine {
    whole_machine_tracers: usize,
    holding: bool,
}

static MACHINE: Mutex<Machine> = Mutex::new(Machine { whole_machine_tracers: 0, holding: false });
static MACHINE_CHANGED: Condvar = Condvar::new();

fn machine_when(ready: impl Fn(&Machine) -> bool, then: impl FnOnce(&mut Machine)) {
    let machine = MACHINE.lock().unwrap_or_else(PoisonError::into_inner);
    let mut machine =
        MACHINE_CHANGED.wait_while(machine, |m| !ready(m)).unwrap_or_else(PoisonError::into_inner);
    then(&mut machine);
    MACHINE_CHANGED.notify_all();
}

/// Taken by a test for as long as its `Holder`s hold (once no whole-machine tracer runs).
pub struct HoldingMany(());

pub fn holding_many_descriptors() -> HoldingMany {
    machine_when(|m| m.whole_machine_tracers == 0 && !m.holding, |m| m.holding = true);
    HoldingMany(())
}

impl Drop for HoldingMany {
    fn drop(&mut self) {
        machine_when(|_| true, |m| m.holding = false);
    }
}

/// Held by a tracer started with no target (every process of the machine) while it runs.
struct WholeMachine(());

fn tracing_the_whole_machine(args: &[&str]) -> Option<WholeMachine> {
    let targeted = args.iter().any(|a| {
        ["-p", "--pid", "--cgroup", "--comm", "--uid"]
            .iter()
            .any(|flag| a == flag || a.strip_prefix(flag).is_some_and(|rest| rest.starts_with('=')))
    });
    if targeted {
        return None;
    }
    machine_when(|m| !m.holding, |m| m.whole_machine_tracers += 1);
    Some(WholeMachine(()))
}

impl Drop for WholeMachine {
    fn drop(&mut self) {
        machine_when(|_| true, |m| m.whole_machine_tracers -= 1);
    }
}

/// bench/fdhold.c: one eventfd, duplicated `count` times once told to, held until dropped. It
/// raises its soft descriptor limit to the hard one, which `count` must fit under (raising the
/// hard one needs CAP_SYS_RESOURCE, which the machines the tests run on do not give: tests
/// spread their descriptors over processes, as the bench does).
pub struct Holder {
    child: Child,
    count: usize,
}

impl Holder {
    pub fn spawn(count: usize) -> Holder {
        let fdhold = compile_c("../../../bench/fdhold.c", "fdhold", &["-O2", "-Wall"]);
        let child = Command::new(fdhold)
            .args([count.to_string(), "600000".to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("fdhold runs");
        Holder { child, count }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Tell it to duplicate, and wait until it holds them all.
    pub fn hold(&mut self) {
        writeln!(self.child.stdin.as_mut().unwrap(), "go").unwrap();
        let mut line = String::new();
        BufReader::new(self.child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), format!("held {}", self.count), "fdhold {}", self.pid());
    }
}

/// The hard RLIMIT_NOFILE our children inherit: the most descriptors a [`Holder`] can hold.
pub fn hard_nofile() -> usize {
    let limits = fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    line.split_whitespace().nth(4).unwrap().parse().unwrap()
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running fdwork: send it commands, read the descriptors it reports.
pub struct Workload {
    pub child: Child,
    pub pid: u32,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub scratch: tempfile::TempDir,
}

impl Workload {
    pub fn spawn() -> Workload {
        Workload::spawn_program(fdwork_bin())
    }

    /// Start `program`, a workload that speaks fdwork's protocol ("ready", then one "ok ..."
    /// line per command), with a scratch directory as its argument.
    pub fn spawn_program(program: &Path) -> Workload {
        Workload::spawn_command(Command::new(program))
    }

    /// A workload speaking fdwork's protocol, started by `command` with the scratch directory
    /// as its last argument.
    pub fn spawn_command(mut command: Command) -> Workload {
        let scratch = tempfile::tempdir_in(scratch_root()).unwrap();
        command.arg(scratch.path()).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        // A program written just now may still be open for writing in a child another test
        // thread forked meanwhile (until that child execs): ETXTBSY, which passes.
        let mut child = command.spawn();
        for _ in 0..50 {
            match &child {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::sleep(Duration::from_millis(20));
                    child = command.spawn();
                }
                _ => break,
            }
        }
        let mut child = child.unwrap_or_else(|e| panic!("{command:?} starts: {e}"));
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(line.starts_with("ready"), "the workload said {line:?}");
        let pid = child.id();
        Workload { child, pid, stdin, stdout, scratch }
    }

    /// Run one command; the numbers of its "ok" answer (descriptors, pids).
    pub fn run(&mut self, command: &str) -> Vec<i64> {
        self.ask(command).split_whitespace().map(|n| n.parse().unwrap()).collect()
    }

    /// Run one command; the words of its "ok" answer.
    pub fn ask(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let line = line.trim();
        let rest = line.strip_prefix("ok").unwrap_or_else(|| panic!("workload: `{command}` -> {line:?}"));
        rest.trim().to_string()
    }

    /// `exec`: the image is replaced and the new one announces itself instead of answering.
    pub fn exec(&mut self) {
        writeln!(self.stdin, "exec").unwrap();
        self.stdin.flush().unwrap();
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(line.starts_with("ready"), "fdwork after exec said {line:?}");
    }

    pub fn path(&self, name: &str) -> String {
        self.scratch.path().join(name).to_string_lossy().into_owned()
    }

    pub fn exit(mut self) {
        let _ = writeln!(self.stdin, "exit");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `helios-trace` session whose report is JSON.
pub struct Tracer {
    child: Child,
    stdout: BufReader<ChildStdout>,
    stderr_lines: std::sync::mpsc::Receiver<String>,
    /// What it wrote to stderr before it said it was attached.
    before_attach: Vec<String>,
    _machine: Option<WholeMachine>,
}

impl Tracer {
    /// Start with these extra arguments and wait until it says it is attached.
    pub fn start(args: &[&str]) -> Tracer {
        Tracer::start_with(Command::new(helios_trace_bin()), args)
    }

    /// The same through `command` (e.g. setpriv), which must run `helios_trace_bin()` last.
    pub fn start_with(mut command: Command, args: &[&str]) -> Tracer {
        let machine = tracing_the_whole_machine(args);
        let mut child = command
            .args(["--format", "json", "--list-fds"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("helios-trace starts");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let rx = follow_stderr(&mut child);
        let mut before_attach = Vec::new();
        wait_for_attach(&mut child, &rx, &mut before_attach);
        Tracer { child, stdout, stderr_lines: rx, before_attach, _machine: machine }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The lines it wrote to stderr since the last call (the first call: since its start,
    /// but the attach line).
    pub fn stderr_lines(&mut self) -> Vec<String> {
        let mut lines = std::mem::take(&mut self.before_attach);
        lines.extend(self.stderr_lines.try_iter());
        lines
    }

    /// The report as of now (SIGUSR1), tracing continues.
    pub fn snapshot(&mut self) -> Value {
        signal(self.child.id(), libc::SIGUSR1);
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("snapshot is not JSON ({e}): {line:?}"))
    }

    /// Stop (SIGINT) and return the final report.
    pub fn stop(self) -> Value {
        let text = self.stop_text();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("report is not JSON ({e}): {text:?}"))
    }

    /// Stop (SIGINT) and return the final report as the bytes it wrote.
    pub fn stop_text(mut self) -> String {
        signal(self.child.id(), libc::SIGINT);
        let mut text = String::new();
        std::io::Read::read_to_string(&mut self.stdout, &mut text).unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "helios-trace exited with {status}");
        text
    }
}

/// Echo a child's stderr (tagged) and hand its lines over.
fn follow_stderr(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    let stderr = BufReader::new(child.stderr.take().expect("stderr is piped"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            eprintln!("[helios-trace] {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Spawn `command` (a helios-trace session with stderr piped) and return once it says it is
/// attached, with its stderr lines still to come.
pub fn spawn_attached(command: &mut Command) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child = command.stderr(Stdio::piped()).spawn().expect("helios-trace starts");
    let lines = follow_stderr(&mut child);
    wait_for_attach(&mut child, &lines, &mut Vec::new());
    (child, lines)
}

/// The line in which helios-trace says it is attached.
fn wait_for_attach(
    child: &mut Child,
    lines: &std::sync::mpsc::Receiver<String>,
    before: &mut Vec<String>,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains("attached") => return line,
            Ok(line) => before.push(line),
            Err(_) => panic!("helios-trace did not attach within 30 s: {:?}", child.try_wait()),
        }
    }
}

/// The effective and the permitted capability masks of every thread of `pid`, from
/// /proc/PID/task/TID/status (capabilities are per thread).
pub fn thread_capabilities(pid: u32) -> Vec<(u64, u64)> {
    let mask = |status: &str, field: &str| {
        let hex = status.lines().find_map(|l| l.strip_prefix(field)).unwrap_or_else(|| panic!("no {field}"));
        u64::from_str_radix(hex.trim(), 16).unwrap()
    };
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.unwrap().path().join("status")).ok())
        .map(|status| (mask(&status, "CapEff:"), mask(&status, "CapPrm:")))
        .collect()
}

/// The tracer's uprobe maker (sys/uprobes.rs): its one child named `helios-uprobes`.
pub fn uprobe_maker_of(tracer: u32) -> u32 {
    let children = std::fs::read_to_string(format!("/proc/{tracer}/task/{tracer}/children")).unwrap();
    let makers: Vec<u32> = children
        .split_whitespace()
        .map(|pid| pid.parse().unwrap())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "helios-uprobes")
        })
        .collect();
    assert_eq!(makers.len(), 1, "one uprobe maker among the tracer's children {children:?}");
    makers[0]
}

/// The tracer's uprobe maker: it holds
/// CAP_SYS_ADMIN (21) and CAP_PERFMON (38) alone, with no_new_privs; the tracer's threads hold
/// neither.
pub fn assert_maker_keeps_only_what_uprobes_need(tracer: u32) {
    let maker = uprobe_maker_of(tracer);
    let status = std::fs::read_to_string(format!("/proc/{maker}/status")).unwrap();
    let field = |name: &str| {
        let line = status.lines().find_map(|l| l.strip_prefix(name)).unwrap();
        line.trim().to_string()
    };
    let wanted = format!("{:016x}", 1u64 << 21 | 1u64 << 38);
    assert_eq!((field("CapEff:"), field("CapPrm:")), (wanted.clone(), wanted), "{status}");
    assert_eq!(field("NoNewPrivs:"), "1");
    for (effective, permitted) in thread_capabilities(tracer) {
        assert_eq!(
            (effective, permitted),
            (KEPT_CAPABILITIES, KEPT_CAPABILITIES),
            "{effective:x}/{permitted:x}"
        );
    }
}

/// Whether a uprobe is on `symbol` of `binary` in `pid`'s memory. `binary` is the file as this
/// test reads it, `seen_as` its path in the process's maps. A uprobe writes int3 (0xcc) over the
/// first byte of the probed instruction in every process that maps the file
/// (kernel/events/uprobes.c, `install_breakpoint`), and /proc/PID/mem reads that page: the
/// kernel's own word that the probe is there.
pub fn uprobe_on(pid: u32, binary: &Path, seen_as: &str, symbol: &str) -> bool {
    use object::{Object, ObjectSegment, ObjectSymbol};
    use std::os::unix::fs::FileExt as _;
    let data = std::fs::read(binary).unwrap();
    let elf = object::File::parse(&*data).unwrap();
    let address = elf
        .dynamic_symbols()
        .chain(elf.symbols())
        .find(|s| s.name() == Ok(symbol))
        .unwrap_or_else(|| panic!("{symbol} in {}", binary.display()))
        .address();
    let offset = elf
        .segments()
        .find_map(|segment| {
            let (file_offset, size) = segment.file_range();
            let start = segment.address();
            (start <= address && address < start + size).then(|| address - start + file_offset)
        })
        .unwrap_or_else(|| panic!("{symbol} at {address:#x} in no segment of {}", binary.display()));
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else { return false };
    let at = maps.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (range, file_offset) = (fields.first()?, u64::from_str_radix(fields.get(2)?, 16).ok()?);
        let (start, end) = range.split_once('-')?;
        let (start, end) = (u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?);
        (fields.get(5) == Some(&seen_as) && file_offset <= offset && offset < file_offset + (end - start))
            .then(|| start + offset - file_offset)
    });
    let Some(at) = at else { return false };
    let mut byte = [0u8];
    let Ok(mem) = std::fs::File::open(format!("/proc/{pid}/mem")) else { return false };
    mem.read_exact_at(&mut byte, at).is_ok() && byte[0] == 0xcc
}

/// What helios-trace keeps after attaching: CAP_DAC_READ_SEARCH (2), CAP_SYS_PTRACE (19),
/// CAP_BPF (39); numbers from linux/capability.h.
pub const KEPT_CAPABILITIES: u64 = 1 << 2 | 1 << 19 | 1 << 39;

/// A running `helios-trace serve` on a free loopback port.
pub struct Serve {
    child: Child,
    /// http://127.0.0.1:PORT (https:// with TLS)
    pub base: String,
    _stderr_lines: std::sync::mpsc::Receiver<String>,
    _machine: Option<WholeMachine>,
}

impl Serve {
    /// `helios-trace serve --listen 127.0.0.1:0 ARGS`, once attached.
    pub fn start(args: &[&str]) -> Serve {
        Serve::start_with(Command::new(helios_trace_bin()), args)
    }

    /// The same through `command` (e.g. setpriv), which must run `helios_trace_bin()` last.
    pub fn start_with(mut command: Command, args: &[&str]) -> Serve {
        let machine = tracing_the_whole_machine(args);
        let mut child = command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("helios-trace serve starts");
        let lines = follow_stderr(&mut child);
        let line = wait_for_attach(&mut child, &lines, &mut Vec::new());
        // http://ADDRESS, or https://ADDRESS with --web-config-file's TLS.
        let base = line
            .split_once("serving ")
            .and_then(|(_, rest)| rest.strip_suffix("/metrics"))
            .filter(|base| base.starts_with("http://") || base.starts_with("https://"))
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        Serve { child, base: base.to_string(), _stderr_lines: lines, _machine: machine }
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&format!("{}{path}", self.base), &[]).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    pub fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "{body}");
        body
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM; the exit status (detaching takes the kernel a few seconds).
    pub fn stop(self) -> std::process::ExitStatus {
        self.stop_with(libc::SIGTERM)
    }

    /// SIGINT; the exit status.
    pub fn interrupt(self) -> std::process::ExitStatus {
        self.stop_with(libc::SIGINT)
    }

    fn stop_with(mut self, sig: i32) -> std::process::ExitStatus {
        signal(self.child.id(), sig);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "serve did not stop within 60 s of signal {sig}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll `probe` until it gives a value, at most `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The tracer's report once `pid`'s descriptor `fd` shows in it: `fd` made by a call after the
/// calls a test looks at, whose records, once its record is in, are in too.
pub fn report_once_fd_shows(tracer: &mut Tracer, pid: u32, fd: i32) -> Value {
    wait_for(&format!("descriptor {fd} of {pid} in the report"), Duration::from_secs(10), || {
        let report = tracer.snapshot();
        reported_fds_healed(&report, pid).contains_key(&fd).then_some(report)
    })
}

/// Series of one metric in exposition text: `{labels}` → value.
pub fn exposition_series(text: &str, name: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = rest.rsplit_once(' ')?;
            if !labels.is_empty() && !labels.starts_with('{') {
                return None; // another metric whose name starts with this one
            }
            Some((labels.to_string(), value.parse().ok()?))
        })
        .collect()
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: plain syscall.
    unsafe { libc::kill(pid as i32, sig) };
}

/// SIGSTOP to `pid`, returning once every thread of it is in the group stop. kill(2) returns
/// when the signal is queued; each thread stops only when it next returns to user space
/// (kernel/signal.c, do_signal_stop), so a busy thread may go on for a while after the kill.
pub fn stop_every_thread(pid: u32) {
    signal(pid, libc::SIGSTOP);
    wait_for("every thread to stop", Duration::from_secs(5), || {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
        let tids: Vec<u32> = tasks.filter_map(|t| t.ok()?.file_name().to_str()?.parse().ok()).collect();
        tids.iter().all(|tid| task_state(pid, *tid) == Some('T')).then_some(())
    });
}

/// The state letter of thread `tid` of `pid` (proc(5), /proc/PID/task/TID/stat: after the
/// command's closing parenthesis, which the command itself may contain); None once it is gone.
/// `task_state(pid, pid)` is the process's, as /proc/PID/stat gives it.
pub fn task_state(pid: u32, tid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The report's entry for `pid`, if any.
pub fn process(report: &Value, pid: u32) -> Option<&Value> {
    report["processes"].as_array()?.iter().find(|p| p["pid"] == pid)
}

/// The tool's table for `pid` (fd → kind), from a report with `--list-fds`, for comparing with
/// /proc: the report must say reconciliation corrected nothing, so what matches /proc came from
/// events, never from a correction that healed a missed one.
pub fn reported_fds(report: &Value, pid: u32) -> BTreeMap<i32, String> {
    let corrections = &report["reconcile_corrections"];
    assert_eq!(
        (corrections["added"].as_u64(), corrections["removed"].as_u64()),
        (Some(0), Some(0)),
        "reconciliation corrected the table: a missed event was healed, not seen"
    );
    reported_fds_healed(report, pid)
}

/// The same, whatever reconciliation corrected: for the tests of healing itself.
pub fn reported_fds_healed(report: &Value, pid: u32) -> BTreeMap<i32, String> {
    let p = process(report, pid).unwrap_or_else(|| panic!("pid {pid} not in report: {report:#}"));
    p["fds"]
        .as_array()
        .expect("--list-fds gives fds")
        .iter()
        .map(|e| (e["fd"].as_i64().unwrap() as i32, e["kind"].as_str().unwrap().to_string()))
        .collect()
}

/// Whether the running kernel is `major.minor` or later (/proc/sys/kernel/osrelease).
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut numbers = release.trim().split(['.', '-']).map(|n| n.parse::<u32>().unwrap_or(0));
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0)) >= (major, minor)
}

/// Ground truth: what the kernel says `pid` has open, with kinds derived from the link
/// targets and stat — written here independently of helios-trace's sys/proc.
pub fn proc_fds(pid: u32) -> BTreeMap<i32, String> {
    let dir = format!("/proc/{pid}/fd");
    let mut fds = BTreeMap::new();
    for entry in fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        let fd: i32 = entry.file_name().to_str().unwrap().parse().unwrap();
        let Ok(link) = fs::read_link(entry.path()) else { continue };
        let link = link.to_string_lossy().into_owned();
        let kind = if link.starts_with("socket:") {
            "socket"
        } else if link.starts_with("pipe:") {
            "pipe"
        } else if link.starts_with("/memfd:") {
            "memfd"
        } else if link.starts_with("pidfd:") || link == "anon_inode:[pidfd]" {
            "pidfd"
        } else if let Some(anon) = link.strip_prefix("anon_inode:") {
            match anon {
                "[eventfd]" => "eventfd",
                "[eventpoll]" => "epoll",
                "[timerfd]" => "timerfd",
                "[signalfd]" => "signalfd",
                "inotify" => "inotify",
                "[io_uring]" => "io_uring",
                _ => "other",
            }
        } else if link.starts_with('/') {
            use std::os::unix::fs::FileTypeExt;
            match fs::metadata(entry.path()) {
                Ok(m) if m.is_dir() => "dir",
                Ok(m) if m.file_type().is_char_device() || m.file_type().is_block_device() => "device",
                Ok(m) if m.file_type().is_fifo() => "pipe",
                // A socket file held by an O_PATH descriptor.
                Ok(m) if m.file_type().is_socket() => "socket",
                _ => "file",
            }
        } else {
            "other"
        };
        fds.insert(fd, kind.to_string());
    }
    fds
}

/// Count of kinds in an fd → kind map.
pub fn kind_counts(fds: &BTreeMap<i32, String>) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for kind in fds.values() {
        *counts.entry(kind.clone()).or_default() += 1;
    }
    counts
}

/// GET `url` with query parameters: the status and body whatever the status; Err when no
/// answer came (not listening yet, connection closed).
pub fn http_get(url: &str, query: &[(&str, &str)]) -> Result<(u16, String), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut request = agent.get(url);
    for (key, value) in query {
        request = request.query(*key, *value);
    }
    let mut response = request.call().map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().map_err(|e| e.to_string())?;
    Ok((status, body))
}

/// Mount tracefs where the DaemonSet expects the host to have it (a fresh machine has it
/// unmounted; helios-trace with CAP_SYS_ADMIN would mount it itself, the DaemonSet cannot).
pub fn ensure_host_tracefs() {
    if Path::new("/sys/kernel/tracing/events").is_dir() {
        return;
    }
    let status =
        Command::new("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]).status().unwrap();
    assert!(status.success(), "cannot mount tracefs at /sys/kernel/tracing");
}

/// The thread of process `pid` named `name` (/proc/PID/task/TID/comm).
pub fn thread_named(pid: u32, name: &str) -> u32 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process's threads");
    tasks
        .filter_map(|task| task.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|tid| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                .is_ok_and(|comm| comm.trim() == name)
        })
        .unwrap_or_else(|| panic!("no thread named {name} in process {pid}"))
}

/// One thread of another process, stopped by ptrace (PTRACE_SEIZE, PTRACE_INTERRUPT: only that
/// thread stops, unlike a signal's group stop) until dropped (PTRACE_DETACH resumes it).
pub struct StoppedThread(i32);

impl StoppedThread {
    pub fn stop(tid: u32) -> StoppedThread {
        let tid = tid as i32;
        let none = std::ptr::null_mut::<libc::c_void>();
        // SAFETY: plain syscalls on a thread of a child of ours (addr and data are pointers to
        // ptrace(2), passed as such); the test runs as root.
        unsafe {
            let seized = libc::ptrace(libc::PTRACE_SEIZE, tid, none, none);
            assert_eq!(seized, 0, "seize {tid}: {}", std::io::Error::last_os_error());
            let interrupted = libc::ptrace(libc::PTRACE_INTERRUPT, tid, none, none);
            assert_eq!(interrupted, 0, "interrupt {tid}: {}", std::io::Error::last_os_error());
            let mut status = 0;
            assert_eq!(libc::waitpid(tid, &mut status, libc::__WALL), tid, "wait for {tid} to stop");
            // The stop PTRACE_INTERRUPT makes: PTRACE_EVENT_STOP (ptrace(2)).
            let event = status >> 16;
            assert!(libc::WIFSTOPPED(status) && event == libc::PTRACE_EVENT_STOP, "status {status:#x}");
        }
        StoppedThread(tid)
    }
}

impl Drop for StoppedThread {
    fn drop(&mut self) {
        let none = std::ptr::null_mut::<libc::c_void>();
        // SAFETY: the thread is in a ptrace stop (waited for above).
        unsafe { libc::ptrace(libc::PTRACE_DETACH, self.0, none, none) };
    }
}
