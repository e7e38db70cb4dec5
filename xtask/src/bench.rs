//! `cargo xtask bench [--quick]`: the benchmark suite of BENCHMARKS.md, on this machine, in one
//! run — overhead on traced programs (against a bpftrace peer), daemon throughput, memory per
//! descriptor and per call site, startup, and the Python row. Prints markdown tables.
//!
//! Machines here are shared and noisy, so variants alternate within one run (A B C A B C …) and
//! every figure is a median, with the spread (min–max) shown. The workloads are C programs of
//! bench/ (built here with gcc) and bench/pyloop.py; each waits for a line on stdin so the
//! tracer is attached to its pid before it starts. Every process started here is ended by its
//! pid (a guard kills what is still running on any error), and nothing system-wide is changed:
//! the descriptor-holding workloads only raise their own soft RLIMIT_NOFILE to the hard limit.
use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::sh;

/// How much of everything to run.
struct Plan {
    /// Repetitions of each variant (alternated).
    reps: usize,
    /// Operations per phase of bench/churn.c.
    churn_ops: u32,
    /// Pause after each measured operation (µs): the tracers keep up, what is measured is the
    /// cost per operation.
    gap_us: u32,
    /// Records per second of the throughput ladder, and seconds per rung.
    rungs: &'static [u32],
    rung_seconds: u32,
    /// Descriptors held for the memory figure, and the call sites of the sites figure.
    fds: u64,
    sites: u32,
    startup_runs: usize,
    /// Requests of one load-generator run against nginx (the server section).
    server_requests: u32,
    python_ops: u32,
    /// Rounds of the Python kernel-time table (its variants rotated each round), and the
    /// open+close each round's loop makes after its warm-up.
    kernel_rounds: usize,
    kernel_ops: u32,
    /// GC-tracked objects of the holders row's heap, and its alternated runs.
    heap_objects: u32,
    holders_runs: usize,
    /// Seconds of job churn in the soak, the first SOAK_WARMUP of them not measured.
    soak_seconds: u64,
    /// The nodes of the sizing table.
    nodes: &'static [Node],
}

impl Plan {
    fn new(quick: bool) -> Plan {
        const RUNGS: &[u32] = &[50_000, 100_000, 200_000, 350_000, 500_000, 750_000, 1_000_000];
        if quick {
            Plan {
                reps: 3,
                churn_ops: 5_000,
                gap_us: 10,
                rungs: RUNGS,
                rung_seconds: 5,
                fds: 200_000,
                sites: 10_000,
                startup_runs: 3,
                server_requests: 30_000,
                python_ops: 3_000,
                kernel_rounds: 10,
                kernel_ops: 20_000,
                heap_objects: 1_000_000,
                holders_runs: 1,
                soak_seconds: 250,
                nodes: &NODES[..2],
            }
        } else {
            Plan {
                reps: 7,
                churn_ops: 20_000,
                gap_us: 10,
                rungs: RUNGS,
                rung_seconds: 60,
                fds: 1_000_000,
                sites: 10_000,
                startup_runs: 7,
                server_requests: 100_000,
                python_ops: 10_000,
                kernel_rounds: 40,
                kernel_ops: 20_000,
                heap_objects: 1_000_000,
                holders_runs: 3,
                soak_seconds: 900,
                nodes: &NODES,
            }
        }
    }
}

/// The default ring buffer (`--ring-buffer-size`), as the throughput rows state it.
const DEFAULT_RING: &str = "16M";
/// bench/churn.c's phases, in the order it prints them, and their columns.
const PHASES: [&str; 4] = ["open", "socket", "accept", "getppid"];
const PHASE_COLUMNS: [&str; 4] = ["open+close", "socket+close", "accept+close", "getppid (untraced call)"];
/// Descriptors opened per second by the memory workloads: well within what the tracer keeps up
/// with (see the throughput ladder); what a reader stall loses anyway is shown in the row.
const HOLD_RATE: u32 = 50_000;
/// Where the Python row runs (Debian's interpreter, as deployed services use it).
const PYTHON: &str = "/usr/bin/python3";

/// The interpreter of the Python rows: `HELIOS_TRACE_BENCH_PYTHON` (another CPython, e.g. a
/// 3.12+ run with PYTHONPERFSUPPORT=1, which the workloads inherit), else [`PYTHON`].
fn python_rows_interpreter() -> String {
    std::env::var("HELIOS_TRACE_BENCH_PYTHON").unwrap_or_else(|_| PYTHON.to_string())
}

/// The sections, in the order they run.
pub const SECTIONS: [&str; 10] =
    ["floor", "overhead", "server", "throughput", "memory", "sizing", "startup", "python", "holders", "soak"];

/// Run the `only` sections (all when empty).
pub fn run(quick: bool, only: &[String]) -> Result<()> {
    if !sh::is_root() {
        bail!("cargo xtask bench loads eBPF programs (helios-trace, bpftrace): run it as root");
    }
    let plan = Plan::new(quick);
    let root = sh::workspace_root();
    let bench = Bench {
        helios: root.join("target/release/helios-trace"),
        before: std::env::var_os("HELIOS_TRACE_BEFORE").map(PathBuf::from),
        dir: root.join("target/bench"),
        source: root.join("bench"),
    };
    fs::create_dir_all(&bench.dir).context("cannot create target/bench")?;
    for name in ["churn", "rate", "fdhold"] {
        bench.compile(name, &bench.source.join(format!("{name}.c")), &[])?;
    }
    let sites_c = bench.dir.join("sites.c");
    fs::write(&sites_c, sites_program(0, plan.sites)).context("cannot write sites.c")?;
    // Sibling calls would turn `return dup(fd)` into a jump: no frame of the site's own.
    bench.compile("sites", &sites_c, &["-O1", "-fno-optimize-sibling-calls"])?;

    let mut out = String::new();
    writeln!(out, "{}", machine())?;
    let sections: [(&str, Section); 10] = [
        ("floor", floor),
        ("overhead", overhead),
        ("server", server),
        ("throughput", throughput),
        ("memory", memory),
        ("sizing", sizing),
        ("startup", startup),
        ("python", python),
        ("holders", holders),
        ("soak", soak),
    ];
    for (name, section) in sections {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        eprintln!("xtask bench: {name}");
        let table = section(&bench, &plan).with_context(|| format!("bench section {name}"))?;
        // Each table as soon as it is known, and all of them at the end.
        eprintln!("{table}");
        out.push_str(&table);
    }
    writeln!(out, "\nAt the end: {}", load())?;
    println!("{out}");
    Ok(())
}

/// One part of the suite: its markdown table.
type Section = fn(&Bench, &Plan) -> Result<String>;

struct Bench {
    helios: PathBuf,
    /// Another helios-trace binary to compare with in the overhead, server, throughput, memory
    /// (held descriptors), startup and Python rows (`HELIOS_TRACE_BEFORE`, e.g. a build of the
    /// previous design), when set.
    before: Option<PathBuf>,
    dir: PathBuf,
    source: PathBuf,
}

impl Bench {
    fn compile(&self, name: &str, source: &Path, extra: &[&str]) -> Result<()> {
        // Like the tests' workloads: optimised, no frame pointers, with DWARF.
        let mut gcc = Command::new("gcc");
        gcc.args(["-O2", "-fomit-frame-pointer", "-g", "-pthread"])
            .args(extra)
            .arg("-o")
            .arg(self.dir.join(name))
            .arg(source);
        sh::check(&mut gcc)
    }

    fn workload(&self, name: &str, args: &[String]) -> Result<Workload> {
        Workload::start(Command::new(self.dir.join(name)).args(args))
    }

    /// helios-trace with `args`, once attached.
    fn helios(&self, args: &[String]) -> Result<Attached> {
        self.helios_of(&self.helios, args)
    }

    /// The helios-trace binary `binary` with `args`, once attached.
    fn helios_of(&self, binary: &Path, args: &[String]) -> Result<Attached> {
        let mut command = Command::new(binary);
        command.args(["--format", "json", "--view", "quiet"]).args(args);
        Attached::start(command, |line| line.starts_with("helios-trace: attached"))
    }

    /// helios-trace attaching the floor of `kind` (empty programs: sys/loader.rs,
    /// HELIOS_TRACE_FLOOR), once attached.
    fn floor(&self, kind: &str) -> Result<Attached> {
        let mut command = Command::new(&self.helios);
        command.env("HELIOS_TRACE_FLOOR", kind).args(["--format", "json", "--view", "quiet"]);
        command.args(["--reconcile-interval", "0", "--python-frames", "off"]);
        Attached::start(command, |line| line.starts_with("helios-trace: attached"))
    }

    /// The bpftrace peer on `pid`, storing stacks or (without) the time.
    fn bpftrace(&self, pid: u32, stacks: bool) -> Result<Attached> {
        let script = fs::read_to_string(self.source.join("peer.bt")).context("cannot read bench/peer.bt")?;
        let script = if stacks { script } else { script.replace("= ustack;", "= nsecs;") };
        let mut command = Command::new("bpftrace");
        command.args(["-B", "none", "-e", &script, &pid.to_string()]);
        Attached::start(command, |line| line == "attached")
    }
}

/// Who traces a run.
#[derive(Clone, Copy, PartialEq)]
enum Tracer {
    Untraced,
    /// helios-trace with these extra arguments.
    Helios(&'static [&'static str]),
    Bpftrace {
        stacks: bool,
    },
    /// The floor of one attach kind (HELIOS_TRACE_FLOOR): empty programs, every process.
    Floor(&'static str),
    /// The `HELIOS_TRACE_BEFORE` binary with these extra arguments.
    Before(&'static [&'static str]),
    /// `helios-trace serve`, the DaemonSet's command (its metrics made once a second); of the
    /// `HELIOS_TRACE_BEFORE` binary when `before`.
    Serve {
        before: bool,
    },
}

impl Tracer {
    fn name(self) -> String {
        match self {
            Tracer::Untraced => "untraced".into(),
            Tracer::Helios([]) => "helios-trace (default: dwarf)".into(),
            Tracer::Helios(args) => format!("helios-trace {}", args.join(" ")),
            Tracer::Bpftrace { stacks: true } => "bpftrace peer.bt (ustack)".into(),
            Tracer::Bpftrace { stacks: false } => "bpftrace peer.bt (no stack)".into(),
            Tracer::Floor("tracepoints") => {
                "floor: empty programs on syscalls/sys_{enter,exit}_X of the 35 calls + sys_enter_close"
                    .into()
            }
            Tracer::Floor("raw") => "floor: raw sys_enter + sys_exit, a spec lookup each".into(),
            Tracer::Floor("raw-exit") => {
                "floor: raw sys_exit (spec lookup) + syscalls/sys_enter_close".into()
            }
            Tracer::Floor("btf") => {
                "floor: raw sys_enter + sys_exit as a BTF tracepoint (orig_ax a checked load), a spec lookup each".into()
            }
            Tracer::Floor("btf-exit") => {
                "floor: sys_exit as a BTF tracepoint alone (the real programs' hook), a spec lookup".into()
            }
            Tracer::Floor(kind) => format!("floor {kind}"),
            Tracer::Before([]) => "helios-trace before (HELIOS_TRACE_BEFORE, default: dwarf)".into(),
            Tracer::Before(args) => format!("helios-trace before (HELIOS_TRACE_BEFORE) {}", args.join(" ")),
            Tracer::Serve { before: false } => "helios-trace serve (the DaemonSet's command)".into(),
            Tracer::Serve { before: true } => "helios-trace before (HELIOS_TRACE_BEFORE) serve".into(),
        }
    }

    /// helios-trace itself, whose lost records are counted.
    fn is_helios(self) -> bool {
        matches!(self, Tracer::Helios(_) | Tracer::Before(_) | Tracer::Serve { .. })
    }

    /// The helios-trace binary this tracer runs: the `HELIOS_TRACE_BEFORE` one for the before
    /// variants.
    fn binary(self, bench: &Bench) -> Result<&Path> {
        match self {
            Tracer::Before(_) | Tracer::Serve { before: true } => {
                bench.before.as_deref().context("HELIOS_TRACE_BEFORE is not set")
            }
            _ => Ok(&bench.helios),
        }
    }

    /// Attach to `pid` (None when untraced).
    fn attach(self, bench: &Bench, pid: u32) -> Result<Option<Attached>> {
        Ok(match self {
            Tracer::Untraced => None,
            Tracer::Helios(args) | Tracer::Before(args) => {
                let mut all: Vec<String> =
                    vec!["--pid".into(), pid.to_string(), "--reconcile-interval".into(), "0".into()];
                all.extend(args.iter().map(|a| a.to_string()));
                Some(bench.helios_of(self.binary(bench)?, &all)?)
            }
            Tracer::Bpftrace { stacks } => Some(bench.bpftrace(pid, stacks)?),
            Tracer::Floor(kind) => Some(bench.floor(kind)?),
            Tracer::Serve { .. } => {
                let mut serve = Command::new(self.binary(bench)?);
                serve.args(["serve", "--listen", "127.0.0.1:0", "--reconcile-interval", "0"]);
                serve.args(["--pid", &pid.to_string()]);
                Some(Attached::start(serve, |line| line.starts_with("helios-trace: attached"))?)
            }
        })
    }
}

/// Records helios-trace says it lost in a report (0 for bpftrace, which has no ring buffer here),
/// and the times the kernel had to wake its reader (None for bpftrace, and for a binary whose
/// report does not count them: `events.wakeups_forced`).
fn stop_counted(tracer: Option<Attached>, helios: bool) -> Result<(u64, Option<u64>)> {
    let Some(tracer) = tracer else { return Ok((0, None)) };
    let stdout = tracer.stop()?;
    if !helios {
        return Ok((0, None));
    }
    let report = Report::parse(&stdout)?;
    Ok((report.lost, report.wakeups_forced))
}

/// Stop `helios-trace serve`: the records it says it lost in its metrics, read once it has made
/// them again (once a second) after the run.
fn stop_serve(serve: Attached) -> Result<u64> {
    thread::sleep(Duration::from_millis(1100));
    let metrics = http_get(&served_address(&serve)?, "/metrics")?;
    serve.stop()?;
    Ok(metric_sum(&metrics, "helios_trace_events_lost_total") as u64)
}

/// The cost of each attach kind itself on this kernel: empty programs (helios-trace-ebpf's
/// floor.rs) as the per-syscall design attached them, as one raw tracepoint pair, and as the
/// one BTF tracepoint on `sys_exit` the real programs attach now.
fn floor(bench: &Bench, plan: &Plan) -> Result<String> {
    let tracers = [
        Tracer::Untraced,
        Tracer::Floor("tracepoints"),
        Tracer::Floor("raw"),
        Tracer::Floor("raw-exit"),
        Tracer::Floor("btf"),
        Tracer::Floor("btf-exit"),
    ];
    let title = "### The floor: an empty program per attach kind";
    let intro = "Empty programs, attached system-wide (every process pays them, as the DaemonSet's \
                 programs are), no record, no map but the spec array";
    churn_table(bench, plan, &tracers, title, intro)
}

fn overhead(bench: &Bench, plan: &Plan) -> Result<String> {
    let tracers = [
        Tracer::Untraced,
        Tracer::Helios(&["--stacks", "none"]),
        Tracer::Helios(&["--stacks", "fp"]),
        Tracer::Helios(&[]),
        Tracer::Helios(&["--learned-chains", "off"]),
        Tracer::Bpftrace { stacks: true },
        Tracer::Bpftrace { stacks: false },
    ];
    let before = [Tracer::Before(&[])];
    let tracers: Vec<Tracer> =
        tracers.iter().chain(if bench.before.is_some() { &before[..] } else { &[] }).copied().collect();
    let title = "### Overhead on the traced program";
    let intro = "both tools filtered to the workload's pid";
    churn_table(bench, plan, &tracers, title, intro)
}

/// A real server under a real load generator (issue 16): Debian's nginx (one worker, no
/// keep-alive: every request is an accept, an open of the file, and two closes, besides the
/// calls nobody traces) serving a 4 KiB file on loopback, driven by Debian's `ab` with 4
/// concurrent clients; each tracer filtered to the worker's pid (the floors' empty programs run
/// for every process), alternated run by run.
fn server(bench: &Bench, plan: &Plan) -> Result<String> {
    // The floors say what the attach kind alone costs the server: every syscall of nginx and ab
    // runs the real programs' hook (one program at `sys_exit`), only the traced ones a
    // per-syscall tracepoint (the bpftrace peer's kind).
    let tracers = [
        Tracer::Untraced,
        Tracer::Floor("tracepoints"),
        Tracer::Floor("btf-exit"),
        Tracer::Helios(&["--stacks", "none"]),
        Tracer::Helios(&["--stacks", "fp"]),
        Tracer::Helios(&[]),
        Tracer::Helios(&["--learned-chains", "off"]),
        Tracer::Serve { before: false },
        Tracer::Bpftrace { stacks: true },
        Tracer::Bpftrace { stacks: false },
    ];
    let before = [Tracer::Before(&[]), Tracer::Serve { before: true }];
    let tracers: Vec<Tracer> =
        tracers.iter().chain(if bench.before.is_some() { &before[..] } else { &[] }).copied().collect();
    let nginx = Nginx::start()?;
    let worker = nginx.worker()?;
    // Warm the worker, the page cache and the loopback up first: not measured.
    nginx.load(plan.server_requests / 4)?;
    let mut rates = vec![Vec::new(); tracers.len()];
    // The time the tracer process's threads ran, per 1,000 requests.
    let mut cpu = vec![Vec::new(); tracers.len()];
    let mut lost = vec![0u64; tracers.len()];
    let mut lossy_runs = vec![0usize; tracers.len()];
    for rep in 0..plan.reps {
        for (t, tracer) in tracers.iter().enumerate() {
            eprintln!("xtask bench: server {}/{} {}", rep + 1, plan.reps, tracer.name());
            let attached = tracer.attach(bench, worker)?;
            let cpu_before = attached.as_ref().map(|a| on_cpu_seconds(a.pid())).transpose()?;
            let rate = nginx.load(plan.server_requests)?;
            // Once the tracer has drained what the load left in its ring buffer (serve makes
            // its metrics once a second meanwhile).
            let serve = matches!(tracer, Tracer::Serve { .. });
            if let Some(attached) = &attached {
                wait_idle_below(attached.pid(), if serve { SERVE_IDLE_SHARE } else { IDLE_SHARE })?;
            }
            let cpu_after = attached.as_ref().map(|a| on_cpu_seconds(a.pid())).transpose()?;
            let lost_here = match attached {
                Some(attached) if serve => stop_serve(attached)?,
                attached => stop_counted(attached, tracer.is_helios())?.0,
            };
            lost[t] += lost_here;
            if lost_here > 0 {
                lossy_runs[t] += 1;
                continue;
            }
            rates[t].push(rate);
            if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
                cpu[t].push((after - before) * 1e6 / f64::from(plan.server_requests));
            }
        }
    }
    let mut table = format!(
        "\n### A real server: nginx under ab\n\nDebian's nginx {} (1 worker, `keepalive_timeout 0`, \
         `access_log off`, `sendfile on`) serving a 4 KiB file on 127.0.0.1, `ab -n {} -c 4` (Debian's \
         apache2-utils, HTTP/1.0: a connection per request); median of {} alternated runs [min–max] \
         of the requests per second ab reports; every tracer filtered to the worker's pid (the \
         floors: empty programs for every process, ab's calls included). Per \
         request the worker makes 2 calls traced as creating (accept4, openat) and 2 closes. \
         \"tracer CPU\": the time the tracer process's threads ran (schedstat) from the load's \
         start until it went idle after it, per 1,000 requests (its kernel programs run in the \
         worker's and ab's time, not in it); `serve`, the DaemonSet's command, also makes its \
         metrics once a second meanwhile, each open socket's memory among them (idle for it: \
         under 5% of a core). A run of a tracer that lost records is left out of its \
         row and counted. The variants run in the same order in every round. ab, nginx and the \
         tracer share the 2 CPUs: what the tracer spends is taken from the server and its load \
         generator, as on a busy node.\n\n\
         | variant | requests/s | × slower than untraced | tracer CPU ms per 1,000 requests | lost | \
         runs left out |\n| --- | --- | --- | --- | --- | --- |\n",
        nginx.version, plan.server_requests, plan.reps
    );
    let base = median(&rates[0]);
    for (t, tracer) in tracers.iter().enumerate() {
        let (lost, lossy) = if tracer.is_helios() {
            (lost[t].to_string(), lossy_runs[t].to_string())
        } else {
            ("–".into(), "–".into())
        };
        let cpu = if cpu[t].is_empty() { "–".to_string() } else { spread_to(&cpu[t], 1) };
        if rates[t].is_empty() {
            writeln!(table, "| {} | – | – | {cpu} | {lost} | {lossy} |", tracer.name())?;
        } else {
            let slower = base / median(&rates[t]);
            let rate = spread(&rates[t]);
            writeln!(table, "| {} | {rate} | {slower:.3} | {cpu} | {lost} | {lossy} |", tracer.name())?;
        }
    }
    serve_idle(bench, worker, &tracers, &mut table)?;
    Ok(table)
}

/// How long `serve_idle` measures each run.
const IDLE_WINDOW: Duration = Duration::from_secs(10);

/// `serve`'s own CPU with nothing to trace, after the server's rounds: its metrics once a second,
/// beside the worker and the TIME_WAIT entries the rounds' connections left on the node. Each
/// `serve` variant twice, in the order A B B A (the entries expire meanwhile: each run says how
/// many there were).
fn serve_idle(bench: &Bench, worker: u32, tracers: &[Tracer], table: &mut String) -> Result<()> {
    let serves: Vec<Tracer> = tracers.iter().copied().filter(|t| matches!(t, Tracer::Serve { .. })).collect();
    writeln!(
        table,
        "\n`serve` idle after the rounds, tracing the worker: its CPU over {} s once idle (under 5% \
         of a core), in ms a second; the TIME_WAIT entries on the node at each run's start \
         (/proc/net/sockstat)\n\n| run | variant | TIME_WAIT entries | ms of CPU a second |\n\
         | --- | --- | --- | --- |",
        IDLE_WINDOW.as_secs()
    )?;
    for (run, tracer) in serves.iter().chain(serves.iter().rev()).enumerate() {
        eprintln!("xtask bench: server, idle {}", tracer.name());
        let attached = tracer.attach(bench, worker)?.context("serve is a tracer")?;
        wait_idle_below(attached.pid(), SERVE_IDLE_SHARE)?;
        let time_wait = time_wait_entries()?;
        let before = on_cpu_seconds(attached.pid())?;
        thread::sleep(IDLE_WINDOW);
        let after = on_cpu_seconds(attached.pid())?;
        stop_serve(attached)?;
        let ms = (after - before) * 1e3 / IDLE_WINDOW.as_secs_f64();
        writeln!(table, "| {} | {} | {time_wait} | {ms:.1} |", run + 1, tracer.name())?;
    }
    Ok(())
}

/// The node's TCP TIME_WAIT entries (/proc/net/sockstat: `TCP: inuse N orphan N tw N ...`).
fn time_wait_entries() -> Result<u64> {
    let sockstat = fs::read_to_string("/proc/net/sockstat")?;
    parse_time_wait(&sockstat).context("no TCP tw in /proc/net/sockstat")
}

fn parse_time_wait(sockstat: &str) -> Option<u64> {
    let tcp = sockstat.lines().find_map(|l| l.strip_prefix("TCP:"))?;
    let fields: Vec<&str> = tcp.split_whitespace().collect();
    fields.windows(2).find(|w| w[0] == "tw").and_then(|w| w[1].parse().ok())
}

/// An nginx master and its one worker, configured in a directory of their own under /tmp (the
/// worker runs as `nobody`, which must read the page), stopped when dropped.
struct Nginx {
    master: Child,
    dir: PathBuf,
    port: u16,
    version: String,
}

impl Nginx {
    fn start() -> Result<Nginx> {
        let dir = std::env::temp_dir().join(format!("helios-bench-nginx-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("www")).context("cannot create the nginx directory")?;
        fs::write(dir.join("www/page.html"), "x".repeat(4096)).context("cannot write the page")?;
        let mode =
            |path: &Path| fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755));
        mode(&dir).and_then(|()| mode(&dir.join("www"))).context("cannot open the nginx directory up")?;
        // A free loopback port: bound here, released, then taken by nginx.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let d = dir.display();
        let config = format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  keepalive_timeout 0;\n  \
             client_body_temp_path {d}/body;\n  \
             server {{ listen 127.0.0.1:{port} backlog=4096; root {d}/www; location / {{ }} }}\n}}\n"
        );
        fs::write(dir.join("nginx.conf"), config).context("cannot write nginx.conf")?;
        // `nginx -v` says "nginx version: nginx/1.22.1" on stderr.
        let version = Command::new("nginx")
            .arg("-v")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stderr).trim().trim_start_matches("nginx version: ").to_string()
            })
            .unwrap_or_default();
        let master = Command::new("nginx")
            .args(["-p", &dir.display().to_string(), "-c", &dir.join("nginx.conf").display().to_string()])
            .stdin(Stdio::null())
            .spawn()
            .context("cannot start nginx (cargo xtask bench installs nginx-light)")?;
        let nginx = Nginx { master, dir, port, version };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                let log = fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default();
                bail!("nginx did not listen on 127.0.0.1:{port}: {log}");
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(nginx)
    }

    /// The worker's pid (the master's one child).
    fn worker(&self) -> Result<u32> {
        let pid = self.master.id();
        let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))?;
        let workers: Vec<u32> = children.split_whitespace().filter_map(|p| p.parse().ok()).collect();
        match workers[..] {
            [worker] => Ok(worker),
            _ => bail!("nginx has workers {workers:?}, not one"),
        }
    }

    /// `requests` requests from ab, 4 at a time; the requests per second it reports.
    fn load(&self, requests: u32) -> Result<f64> {
        let url = format!("http://127.0.0.1:{}/page.html", self.port);
        let output = Command::new("ab")
            .args(["-q", "-n", &requests.to_string(), "-c", "4", &url])
            .output()
            .context("cannot run ab (cargo xtask bench installs apache2-utils)")?;
        let text = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!("ab failed: {text}{}", String::from_utf8_lossy(&output.stderr));
        }
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
                .with_context(|| format!("no {name:?} in ab's output: {text}"))
        };
        let (complete, failed) = (field("Complete requests:")?, field("Failed requests:")?);
        if complete != f64::from(requests) || failed != 0.0 {
            bail!("ab: {complete} of {requests} requests complete, {failed} failed");
        }
        field("Requests per second:")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: a graceful stop of the master and its worker.
        unsafe { libc::kill(self.master.id() as i32, libc::SIGQUIT) };
        let _ = self.master.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// bench/churn.c under each of `tracers`, alternated: a row per tracer, a column pair (ns, ×
/// untraced) per phase.
fn churn_table(bench: &Bench, plan: &Plan, tracers: &[Tracer], title: &str, intro: &str) -> Result<String> {
    // samples[tracer][phase] = ns per operation, one per repetition kept; all_ops likewise
    // with preempted operations in the means.
    let mut samples = vec![vec![Vec::new(); PHASES.len()]; tracers.len()];
    let mut all_ops = vec![vec![Vec::new(); PHASES.len()]; tracers.len()];
    let mut lost = vec![0u64; tracers.len()];
    let mut woken: Vec<Option<u64>> = vec![None; tracers.len()];
    let mut lossy_runs = vec![0usize; tracers.len()];
    let mut slow = vec![0u64; tracers.len()];
    for rep in 0..plan.reps {
        for (t, tracer) in tracers.iter().enumerate() {
            eprintln!("xtask bench: {title} {}/{} {}", rep + 1, plan.reps, tracer.name());
            let mut workload =
                bench.workload("churn", &[plan.churn_ops.to_string(), plan.gap_us.to_string()])?;
            let attached = tracer.attach(bench, workload.pid())?;
            workload.go()?;
            let output = workload.finish()?;
            let (lost_here, woken_here) = stop_counted(attached, tracer.is_helios())?;
            lost[t] += lost_here;
            if let Some(n) = woken_here {
                woken[t] = Some(woken[t].unwrap_or(0) + n);
            }
            // A run that lost records did less work than a complete one: not a figure of cost.
            if lost_here > 0 {
                lossy_runs[t] += 1;
                continue;
            }
            for (p, phase) in PHASES.iter().enumerate() {
                let timing = timing(&output, phase)?;
                samples[t][p].push(timing.mean);
                all_ops[t][p].push(timing.all_mean);
                slow[t] += timing.preempted;
            }
        }
    }
    let mut table = format!(
        "\n{title}\n\n{} ops per phase, {} µs pause after each, median of {} \
         alternated runs [min–max] of the mean ns per operation; {intro}. Operations over 100 µs \
         (preempted) are left out of the means and counted (all phases and runs kept); the second \
         table has them in. A run of a tracer that lost records is left out of its row (its count \
         in \"runs left out\"). \"Reader woken\": the times, over all its runs, a record's submit \
         had to wake helios-trace's reader (`events.wakeups_forced`; an interrupt on the traced \
         call's CPU).\n\n",
        plan.churn_ops, plan.gap_us, plan.reps
    );
    // The header row and its rule: the variant, a (ns, ×) pair per phase, then `extra` columns.
    let header = |table: &mut String, extra: &[&str]| {
        let mut columns = vec!["variant".to_string()];
        columns.extend(PHASE_COLUMNS.iter().flat_map(|c| [format!("{c} ns"), "×".to_string()]));
        columns.extend(extra.iter().map(|c| c.to_string()));
        let _ = writeln!(table, "| {} |", columns.join(" | "));
        let _ = writeln!(table, "|{}", " --- |".repeat(columns.len()));
    };
    header(&mut table, &["ops > 100 µs", "lost", "runs left out", "reader woken"]);
    let rows =
        |samples: &[Vec<Vec<f64>>], table: &mut String, extra: &dyn Fn(usize) -> String| -> Result<()> {
            let base: Vec<f64> = samples[0].iter().map(|s| median(s)).collect();
            for (t, tracer) in tracers.iter().enumerate() {
                write!(table, "| {} ", tracer.name())?;
                for (p, s) in samples[t].iter().enumerate() {
                    if s.is_empty() {
                        write!(table, "| – | – ")?;
                    } else {
                        write!(table, "| {} | {:.2} ", spread(s), median(s) / base[p])?;
                    }
                }
                writeln!(table, "{}", extra(t))?;
            }
            Ok(())
        };
    let helios_row = |t: usize| tracers[t].is_helios();
    rows(&samples, &mut table, &|t| {
        let (lost, lossy) = if helios_row(t) {
            (lost[t].to_string(), lossy_runs[t].to_string())
        } else {
            ("–".into(), "–".into())
        };
        let woken = woken[t].map_or("–".to_string(), |n| n.to_string());
        format!("| {} | {lost} | {lossy} | {woken} |", slow[t])
    })?;
    table.push_str("\nThe same runs, preempted operations included in the means:\n\n");
    header(&mut table, &[]);
    rows(&all_ops, &mut table, &|_| "|".to_string())?;
    Ok(table)
}

fn throughput(bench: &Bench, plan: &Plan) -> Result<String> {
    let mut table = format!(
        "\n### Daemon throughput\n\nhelios-trace defaults (--stacks dwarf, ring buffer {DEFAULT_RING}, \
         reconcile every 30 s), --pid of bench/rate.c (2 threads, open+close = 2 records), \
         {} s per rung after a warm-up (500 pairs per thread, then helios-trace idles: records \
         lost then are \"lost at first sight\"). A rung that loses records while sustained is \
         run again with a 4× ring buffer; the ladder ends after two such rungs in a row. CPU and received \
         count the sustained part; run-queue wait: time helios-trace's threads were runnable but \
         not running (/proc/PID/task/*/schedstat). With HELIOS_TRACE_BEFORE, that binary runs each \
         rung too, right after (\"before\" rows).\n\n\
         | target records/s | ring | generated/s | received/s | lost at first sight | lost sustained | CPU s | CPU s per 1M records | run-queue wait s |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        plan.rung_seconds
    );
    // The highest rung without loss, and whether a lower one lost records (noise: a stall of
    // the reader on this shared machine) — the ladder goes on past one lossy rung, not two.
    let mut best: Option<f64> = None;
    let (mut lossy_seen, mut lossy_below) = (false, false);
    let mut lossy_in_a_row = 0;
    for &rate in plan.rungs {
        let step = rung(bench, &bench.helios, "", rate, plan.rung_seconds, DEFAULT_RING)?;
        table.push_str(&step.row);
        if let Some(before) = &bench.before {
            table.push_str(&rung(bench, before, " before", rate, plan.rung_seconds, DEFAULT_RING)?.row);
        }
        if step.lost > 0 {
            table.push_str(&rung(bench, &bench.helios, "", rate, plan.rung_seconds, BIG_RING)?.row);
            lossy_seen = true;
            lossy_in_a_row += 1;
            if lossy_in_a_row == 2 {
                break;
            }
            continue;
        }
        lossy_in_a_row = 0;
        best = Some(step.generated);
        lossy_below = lossy_seen;
        if step.generated < 0.95 * f64::from(rate) {
            writeln!(
                table,
                "\nThe generator (traced) could not reach {rate} records/s: the ladder ends there."
            )?;
            break;
        }
    }
    writeln!(
        table,
        "\nHighest sustained rate with zero lost (default ring): {}{}",
        best.map_or("none of the rungs".into(), |b| format!("{b:.0} records/s")),
        if lossy_below && best.is_some() { " (a lower rung lost records: see above)" } else { "" }
    )?;
    Ok(table)
}

/// The ring of the rerun of the first rung that lost records.
const BIG_RING: &str = "64M";

struct Rung {
    generated: f64,
    lost: u64,
    row: String,
}

/// One rung of the ladder: `rate` records a second for `seconds`, ring buffer `ring`. Records
/// lost during bench/rate.c's warm-up (the tracer's first sight of the process) are counted
/// apart from those lost while the rate is sustained. `binary` is the helios-trace traced with,
/// `label` follows the rate in the row.
fn rung(bench: &Bench, binary: &Path, label: &str, rate: u32, seconds: u32, ring: &str) -> Result<Rung> {
    eprintln!("xtask bench: throughput {rate}/s for {seconds} s, ring {ring}, {}", binary.display());
    let mut workload = bench.workload("rate", &[rate.to_string(), seconds.to_string(), "2".into()])?;
    let mut tracer = bench.helios_of(
        binary,
        &["--pid".into(), workload.pid().to_string(), "--ring-buffer-size".into(), ring.into()],
    )?;
    workload.go()?;
    let warm = workload.line()?;
    if warm != "warm" {
        bail!("bench/rate.c printed {warm:?}");
    }
    wait_idle(tracer.pid())?;
    let first_sight = Report::parse(&tracer.snapshot()?)?.lost;
    let (cpu_before, wait_before) = (cpu_seconds(tracer.pid())?, runqueue_wait_seconds(tracer.pid())?);
    let received_before = Report::parse(&tracer.snapshot()?)?.received;
    workload.go()?;
    let output = workload.finish()?;
    let mut words = output.split_whitespace().map(str::parse::<f64>);
    let (Some(Ok(pairs)), Some(Ok(elapsed))) = (words.next(), words.next()) else {
        bail!("bench/rate.c printed {output:?}");
    };
    wait_idle(tracer.pid())?;
    let cpu = cpu_seconds(tracer.pid())? - cpu_before;
    let wait = runqueue_wait_seconds(tracer.pid())? - wait_before;
    let report = Report::parse(&tracer.stop()?)?;
    let lost = report.lost - first_sight;
    let received = report.received - received_before;
    let generated = 2.0 * pairs / elapsed;
    let row = format!(
        "| {rate}{label} | {ring} | {generated:.0} | {:.0} | {first_sight} | {lost} | {cpu:.2} | {:.2} | {wait:.3} |\n",
        received as f64 / elapsed,
        cpu / (received as f64 / 1e6)
    );
    Ok(Rung { generated, lost, row })
}

fn memory(bench: &Bench, plan: &Plan) -> Result<String> {
    let mut table = String::from(
        "\n### Daemon memory\n\nRssAnon of helios-trace (defaults: --stacks dwarf, --max-fds 4000000, \
         --max-processes 100000) before the workloads start and once it has handled every record; its \
         eBPF maps' memory (/proc/PID/fdinfo `memlock`, the ring buffers included), which the kernel \
         allocates when they are made and charges to the tracer's memory cgroup; and both per tracked \
         descriptor (the RssAnon growth and the maps, over the descriptors tracked).\n\n\
         | workload | tracked | lost | RssAnon before | RssAnon after | per tracked descriptor | kernel maps | kernel + daemon per descriptor | per call site |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    // As many processes as the hard RLIMIT_NOFILE requires (it cannot be raised without
    // CAP_SYS_RESOURCE); a little room for stdio and the eventfd.
    let per_process_limit = hard_nofile()?.saturating_sub(16).max(1);
    let processes = plan.fds.div_ceil(per_process_limit);
    let per_process = plan.fds.div_ceil(processes);
    // This binary, then HELIOS_TRACE_BEFORE's beside it, each with its own holders.
    let binaries = || {
        std::iter::once((&bench.helios, "")).chain(
            bench.before.as_ref().map(|before| (before, ", helios-trace before (HELIOS_TRACE_BEFORE)")),
        )
    };
    for (binary, which) in binaries() {
        let mut holders = Vec::new();
        for _ in 0..processes {
            holders.push(bench.workload("fdhold", &[per_process.to_string(), HOLD_RATE.to_string()])?);
        }
        let row = held(bench, binary, &mut holders)?;
        writeln!(
            table,
            "| {processes} × {per_process} dup'd eventfds (bench/fdhold.c){which} | {} fds | {} | {} | {} | {:.0} B | {} | {:.0} B | – |",
            row.tracked,
            row.lost,
            mib(row.before),
            mib(row.after),
            row.bytes_per(row.tracked),
            mib(row.kernel),
            row.with_kernel_per(row.tracked)
        )?;
    }

    for (binary, which) in binaries() {
        let mut sites = vec![bench.workload("sites", &[])?];
        let row = held(bench, binary, &mut sites)?;
        writeln!(
            table,
            "| {} call sites × 1 fd (generated sites.c){which} | {} fds, {} sites | {} | {} | {} | {:.0} B | {} | {:.0} B | {:.0} B |",
            plan.sites,
            row.tracked,
            row.sites,
            row.lost,
            mib(row.before),
            mib(row.after),
            row.bytes_per(row.tracked),
            mib(row.kernel),
            row.with_kernel_per(row.tracked),
            row.bytes_per(row.sites)
        )?;
    }
    Ok(table)
}

/// A node of the sizing table: what `serve` tracks on it.
struct Node {
    name: &'static str,
    processes: u64,
    descriptors: u64,
    sites: u32,
}

const NODES: [Node; 3] = [
    Node { name: "small", processes: 50, descriptors: 100_000, sites: 2_000 },
    Node { name: "medium", processes: 150, descriptors: 400_000, sites: 8_000 },
    Node { name: "large", processes: 400, descriptors: 1_000_000, sites: 20_000 },
];

/// The sizing table of the README (issue 18): `helios-trace serve`, as the DaemonSet runs it
/// but with no memory limit (its defaults), tracing a node's worth of processes, descriptors
/// and call sites: one generated program with the node's sites, the rest bench/fdhold.c
/// processes holding its descriptors. Its peak resident memory (VmHWM: heap, the ring buffer's
/// touched pages, the maps it reads) once every record is handled and a scrape served, and the
/// memory limit that leaves serve's own quarter of headroom (model/sizing.rs) above that peak.
fn sizing(bench: &Bench, plan: &Plan) -> Result<String> {
    let mut table = String::from(
        "\n### Sizing\n\n`helios-trace serve` (defaults, no memory limit: its caps are not what is measured; \
         `--reconcile-interval 0`, as in the memory rows: no /proc pass lands in the reading) \
         tracing each node's processes: one generated program with the node's call sites (one descriptor \
         each), the others bench/fdhold.c holding its descriptors; read once every record is handled and a \
         scrape of /metrics served. Limit: the peak over 3/4 (serve keeps a quarter of its limit as \
         headroom), rounded up to 64 MiB.\n\n\
         | node | processes | descriptors tracked | call sites | lost | RssAnon | VmHWM (peak) | /metrics | memory limit |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let per_process_limit = hard_nofile()?.saturating_sub(16).max(1);
    for node in plan.nodes {
        // The call sites in as few generated programs as the descriptor limit allows (a site is
        // its code: the same program twice would be the same sites).
        let chunk = per_process_limit.min(u32::MAX as u64) as u32;
        let mut workloads = Vec::new();
        for (part, first) in (0..node.sites).step_by(chunk as usize).enumerate() {
            let name = format!("sites-{}-{part}", node.name);
            let source = bench.dir.join(format!("{name}.c"));
            fs::write(&source, sites_program(first, chunk.min(node.sites - first)))
                .context("cannot write the node's sites program")?;
            bench.compile(&name, &source, &["-O1", "-fno-optimize-sibling-calls"])?;
            workloads.push(bench.workload(&name, &[])?);
        }
        let holders = node.processes.saturating_sub(workloads.len() as u64).max(1);
        let per_holder = (node.descriptors - node.sites as u64).div_ceil(holders);
        if per_holder > per_process_limit {
            bail!("{per_holder} descriptors per process exceed the hard RLIMIT_NOFILE {per_process_limit}");
        }
        for _ in 0..holders {
            workloads.push(bench.workload("fdhold", &[per_holder.to_string(), HOLD_RATE.to_string()])?);
        }
        let mut serve = Command::new(&bench.helios);
        serve.args(["serve", "--listen", "127.0.0.1:0", "--reconcile-interval", "0"]);
        for w in &workloads {
            serve.args(["--pid", &w.pid().to_string()]);
        }
        let helios = Attached::start(serve, |line| line.starts_with("helios-trace: attached"))?;
        let address = served_address(&helios)?;
        wait_idle(helios.pid())?;
        // One at a time, each at HOLD_RATE: what the tracer keeps up with.
        for w in &mut workloads {
            w.go()?;
            let line = w.line()?;
            if !line.starts_with("held ") {
                bail!("a workload printed {line:?}");
            }
        }
        wait_idle(helios.pid())?;
        // Twice: the exposition is built once a second from the engine's snapshot.
        let _ = http_get(&address, "/metrics")?;
        thread::sleep(Duration::from_secs(2));
        let metrics = http_get(&address, "/metrics")?;
        let series = |name: &str| metric_sum(&metrics, name);
        let (anon, peak) = (rss_anon(helios.pid())?, vm_hwm(helios.pid())?);
        let limit_mib = (peak * 4 / 3).div_ceil(64 << 20) * 64;
        writeln!(
            table,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {} | {} | {} KiB | {limit_mib} MiB |",
            node.name,
            workloads.len(),
            series("helios_trace_tracked_fds"),
            series("helios_trace_tracked_sites"),
            series("helios_trace_events_lost_total"),
            mib(anon),
            mib(peak),
            metrics.len() / 1024,
        )?;
        helios.stop()?;
        drop(workloads);
    }
    Ok(table)
}

/// Where `helios-trace serve` serves, from its "attached" line.
fn served_address(serve: &Attached) -> Result<String> {
    serve
        .ready_line
        .split_once("serving http://")
        .and_then(|(_, rest)| rest.strip_suffix("/metrics"))
        .map(str::to_string)
        .with_context(|| format!("no address in {:?}", serve.ready_line))
}

/// The sum of every series of metric `name` in a Prometheus exposition.
fn metric_sum(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `GET path` from a loopback `address` (plain HTTP/1.0): the body.
fn http_get(address: &str, path: &str) -> Result<String> {
    let mut stream =
        std::net::TcpStream::connect(address).with_context(|| format!("cannot connect to {address}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("no HTTP header")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_string())
}

struct Held {
    tracked: u64,
    sites: u64,
    lost: u64,
    before: u64,
    after: u64,
    /// The tracer's eBPF maps, ring buffers included (`kernel_map_bytes`).
    kernel: u64,
}

impl Held {
    fn bytes_per(&self, n: u64) -> f64 {
        self.after.saturating_sub(self.before) as f64 / n.max(1) as f64
    }

    /// Issue 16's measure: the daemon's growth and all of the kernel's maps, per `n`.
    fn with_kernel_per(&self, n: u64) -> f64 {
        (self.after.saturating_sub(self.before) + self.kernel) as f64 / n.max(1) as f64
    }
}

/// Trace `workloads` (waiting at their gate) with the helios-trace `binary`, let each open its
/// descriptors in turn, and read the tracer's RssAnon before and after.
fn held(bench: &Bench, binary: &Path, workloads: &mut [Workload]) -> Result<Held> {
    let mut args = Vec::new();
    for w in workloads.iter() {
        args.extend(["--pid".to_string(), w.pid().to_string()]);
    }
    args.extend(["--reconcile-interval".into(), "0".into()]);
    let tracer = bench.helios_of(binary, &args)?;
    wait_idle(tracer.pid())?;
    let before = rss_anon(tracer.pid())?;
    for w in workloads.iter_mut() {
        w.go()?;
        let line = w.line()?;
        if !line.starts_with("held ") {
            bail!("a workload printed {line:?}");
        }
    }
    wait_idle(tracer.pid())?;
    let after = rss_anon(tracer.pid())?;
    let kernel = kernel_map_bytes(tracer.pid())?;
    let report = Report::parse(&tracer.stop()?)?;
    Ok(Held { tracked: report.open_fds, sites: report.sites, lost: report.lost, before, after, kernel })
}

/// Jobs started per second in the soak, and the `--retention` of the exporter there.
const SOAK_RATE: u32 = 10;
const SOAK_RETENTION: &str = "20s";
/// What the soak does not measure: the retention's worth of sites fills up first.
const SOAK_WARMUP: u64 = 60;
/// The last sample: this long after the last job (the retention and then some).
const SOAK_AFTER: u64 = 30;
/// The target of issue 17: growth after warm-up, MB a minute.
const SOAK_TARGET_MB_PER_MIN: f64 = 0.25;

/// The daemon's memory under process churn (issue 17): bench/jobchurn.py starts short-lived
/// jobs (each Python job a script of its own: new call sites every time) in Debian's CPython,
/// every pyenv CPython with a shared libpython and `cat`; `helios-trace serve` traces the
/// driver and its jobs, and the bpftrace peer (peer.bt, filtered to the driver and its
/// children) runs beside it in the same run. RssAnon of each every 5 s; the growth is the
/// least-squares slope after the warm-up.
fn soak(bench: &Bench, plan: &Plan) -> Result<String> {
    let jobs = bench.dir.join("soak-jobs");
    fs::create_dir_all(&jobs)?;
    let mut interpreters = vec![PYTHON.to_string(), "native".to_string()];
    interpreters.extend(shared_libpython_interpreters());
    let mut driver = Workload::start(
        Command::new(PYTHON)
            .arg(bench.source.join("jobchurn.py"))
            .args([plan.soak_seconds.to_string(), SOAK_RATE.to_string()])
            .arg(&jobs)
            .args(&interpreters),
    )?;
    let pid = driver.pid().to_string();
    let mut serve = Command::new(&bench.helios);
    serve.args(["serve", "--listen", "127.0.0.1:0", "--pid", &pid, "--retention", SOAK_RETENTION]);
    let helios = Attached::start(serve, |line| line.starts_with("helios-trace: attached"))?;
    let script = fs::read_to_string(bench.source.join("peer.bt")).context("cannot read bench/peer.bt")?;
    // The jobs are the driver's children (subprocess: fork, then exec).
    let script = script.replace("/pid == $1", "/(pid == $1 || curtask->real_parent->tgid == $1)");
    let mut bpftrace = Command::new("bpftrace");
    bpftrace.args(["-B", "none", "-e", &script, &pid]);
    let peer = Attached::start(bpftrace, |line| line == "attached")?;
    driver.go()?;
    let started = Instant::now();
    let mut samples: Vec<(f64, u64, u64)> = Vec::new();
    while started.elapsed() < Duration::from_secs(plan.soak_seconds) {
        thread::sleep(Duration::from_secs(5));
        let t = started.elapsed().as_secs_f64();
        samples.push((t, rss_anon(helios.pid())?, rss_anon(peer.pid())?));
    }
    let said = driver.finish()?;
    // Nothing holds the jobs' sites any more: after the retention they must be gone, and the
    // memory back to what the tracer needs for the driver alone.
    thread::sleep(Duration::from_secs(SOAK_AFTER));
    let after = (rss_anon(helios.pid())?, rss_anon(peer.pid())?);
    helios.stop()?;
    peer.stop()?;
    let measured: Vec<&(f64, u64, u64)> = samples.iter().filter(|s| s.0 >= SOAK_WARMUP as f64).collect();
    let slope = |pick: fn(&(f64, u64, u64)) -> u64| {
        let points: Vec<(f64, f64)> =
            measured.iter().map(|s| (s.0 / 60.0, pick(s) as f64 / (1024.0 * 1024.0))).collect();
        least_squares_slope(&points)
    };
    let (helios_slope, peer_slope) = (slope(|s| s.1), slope(|s| s.2));
    let first = measured.first().context("no sample after the warm-up")?;
    let last = measured.last().expect("not empty");
    let range = |pick: fn(&(f64, u64, u64)) -> u64| {
        let values: Vec<u64> = measured.iter().map(|s| pick(s)).collect();
        format!(
            "{}–{}",
            mib(*values.iter().min().expect("not empty")),
            mib(*values.iter().max().expect("not empty"))
        )
    };
    let mut table = format!(
        "\n### Daemon memory under process churn\n\n\
         bench/jobchurn.py (`{}`): {SOAK_RATE} jobs a second for {} s over {}; \
         `helios-trace serve --retention {SOAK_RETENTION}` and the bpftrace peer traced the driver and its \
         jobs at the same time. RssAnon every 5 s; growth is the least-squares slope from {SOAK_WARMUP} s on \
         ({} samples over {:.1} min), and what is left {SOAK_AFTER} s after the last job. \
         Target (issue 17): under {SOAK_TARGET_MB_PER_MIN} MB a minute.\n\n\
         | tracer | RssAnon at {SOAK_WARMUP} s | range after | at the end | growth after warm-up | {SOAK_AFTER} s after the churn | target |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n",
        said.trim(),
        plan.soak_seconds,
        interpreters.join(", "),
        measured.len(),
        (last.0 - first.0) / 60.0,
    );
    let verdict = if helios_slope < SOAK_TARGET_MB_PER_MIN { "met" } else { "**missed**" };
    writeln!(
        table,
        "| helios-trace serve | {} | {} | {} | {helios_slope:+.3} MB/min | {} | {verdict} |",
        mib(first.1),
        range(|s| s.1),
        mib(last.1),
        mib(after.0)
    )?;
    writeln!(
        table,
        "| bpftrace peer.bt (ustack) | {} | {} | {} | {peer_slope:+.3} MB/min | {} | – |",
        mib(first.2),
        range(|s| s.2),
        mib(last.2),
        mib(after.1)
    )?;
    Ok(table)
}

/// pyenv's CPython 3.10+ builds with a shared libpython (as container images build it).
fn shared_libpython_interpreters() -> Vec<String> {
    let root = std::env::var("PYENV_ROOT").map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".pyenv")
    });
    let mut found: Vec<String> = fs::read_dir(root.join("versions"))
        .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|dir| {
            let minor: Option<u32> =
                dir.file_name().and_then(|n| n.to_str()?.strip_prefix("3.")?.split('.').next()?.parse().ok());
            let shared = fs::read_dir(dir.join("lib")).is_ok_and(|mut files| {
                files.any(|f| f.is_ok_and(|f| f.file_name().to_string_lossy().starts_with("libpython3")))
            });
            minor.is_some_and(|m| m >= 10) && shared && dir.join("bin/python3").exists()
        })
        .map(|dir| dir.join("bin/python3").to_string_lossy().into_owned())
        .collect();
    found.sort();
    found
}

/// The slope of the least-squares line through `points` (x, y).
fn least_squares_slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

fn startup(bench: &Bench, plan: &Plan) -> Result<String> {
    // Something to filter to that does nothing.
    let sleeper = Workload::start(Command::new("sleep").arg("3600"))?;
    let pid = vec!["--pid".into(), sleeper.pid().to_string()];
    let mut variants: Vec<(String, &Path, Vec<String>)> = vec![
        ("--pid of one process".into(), &bench.helios, pid.clone()),
        ("every process (/proc baseline of all)".into(), &bench.helios, vec![]),
    ];
    // The binary before, side by side in the same run: startup moves by hundreds of ms with
    // the machine's phase.
    if let Some(before) = &bench.before {
        variants.push(("before (HELIOS_TRACE_BEFORE), --pid of one process".into(), before, pid));
        variants.push((
            "before (HELIOS_TRACE_BEFORE), every process (/proc baseline of all)".into(),
            before,
            vec![],
        ));
    }
    let mut samples = vec![Vec::new(); variants.len()];
    let mut exits = vec![Vec::new(); variants.len()];
    for _ in 0..plan.startup_runs {
        for (v, (_, binary, args)) in variants.iter().enumerate() {
            let tracer = bench.helios_of(binary, args)?;
            samples[v].push(tracer.attached_after.as_secs_f64() * 1000.0);
            exits[v].push(tracer.stop_timed()?.1.as_secs_f64() * 1000.0);
        }
    }
    drop(sleeper);
    let mut table = format!(
        "\n### Startup\n\nFrom spawning helios-trace to its \"attached\" line (printed once every \
         program is attached and the /proc baseline is loaded), and from the last line of its report (after \
         SIGINT) to its exit (detaching every program, freeing the maps), median of {} alternated runs \
         [min–max].\n\n\
         | variant | ms to attached | ms from report to exit |\n| --- | --- | --- |\n",
        plan.startup_runs
    );
    for (((name, _, _), s), e) in variants.iter().zip(&samples).zip(&exits) {
        writeln!(table, "| {name} | {} | {} |", spread(s), spread(e))?;
    }
    Ok(table)
}

/// Idle threads the Python rows are run behind a second time (`python`).
const PYTHON_CROWD: u32 = 8;

fn python(bench: &Bench, plan: &Plan) -> Result<String> {
    let help = sh::output(&bench.helios.to_string_lossy(), &["--help"]).unwrap_or_default();
    let mut tracers = vec![Tracer::Untraced, Tracer::Helios(&[])];
    let frames_flag = help.contains("--python-frames");
    if frames_flag {
        tracers.push(Tracer::Helios(&["--python-frames", "off"]));
    }
    if bench.before.is_some() {
        tracers.push(Tracer::Before(&[]));
    }
    let script = bench.source.join("pyloop.py");
    let python = python_rows_interpreter();
    let mut table = format!(
        "\n### Python\n\n{python}{perf} bench/pyloop.py: open()+close() of /dev/null, {} ops, {} µs pause, \
         median of {} alternated runs [min–max] (operations over 100 µs left out and counted; the last \
         two columns with them in); then the same loop behind {PYTHON_CROWD} idle threads started before \
         it (CPython adds each new thread state at the head of its interpreter's list, so the main \
         thread's is behind theirs, as an event loop's behind its executor's workers).\n\n\
         | variant | idle threads | ns per open+close | × untraced | ops > 100 µs | lost | ns, preempted \
         included | × |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        plan.python_ops,
        plan.gap_us,
        plan.reps,
        perf = if std::env::var_os("PYTHONPERFSUPPORT").is_some_and(|v| v == "1") {
            " (PYTHONPERFSUPPORT=1: -X perf)"
        } else {
            ""
        },
    );
    for crowd in [0, PYTHON_CROWD] {
        let mut samples = vec![Vec::new(); tracers.len()];
        let mut every = vec![Vec::new(); tracers.len()];
        let mut lossy = vec![0usize; tracers.len()];
        let mut lost = vec![0u64; tracers.len()];
        let mut slow = vec![0u64; tracers.len()];
        for _ in 0..plan.reps {
            for (t, tracer) in tracers.iter().enumerate() {
                let mut workload = Workload::start(Command::new(&python).arg(&script).args([
                    plan.python_ops.to_string(),
                    plan.gap_us.to_string(),
                    crowd.to_string(),
                ]))?;
                let attached = tracer.attach(bench, workload.pid())?;
                workload.go()?;
                let output = workload.finish()?;
                let lost_here = stop_counted(attached, true)?.0;
                lost[t] += lost_here;
                // As in churn_table: a run that lost records is no figure of cost.
                if lost_here > 0 {
                    lossy[t] += 1;
                    continue;
                }
                let timing = timing(&output, "")?;
                samples[t].push(timing.mean);
                every[t].push(timing.all_mean);
                slow[t] += timing.preempted;
            }
        }
        let (base, every_base) = (median(&samples[0]), median(&every[0]));
        for (t, tracer) in tracers.iter().enumerate() {
            let lost = match (t, lossy[t]) {
                (0, _) => "–".to_string(),
                (_, 0) => lost[t].to_string(),
                (_, runs) => format!("{} ({runs} runs left out)", lost[t]),
            };
            if samples[t].is_empty() {
                writeln!(table, "| {} | {crowd} | – | – | {} | {lost} | – | – |", tracer.name(), slow[t])?;
                continue;
            }
            writeln!(
                table,
                "| {} | {crowd} | {} | {:.2} | {} | {lost} | {} | {:.2} |",
                tracer.name(),
                spread(&samples[t]),
                median(&samples[t]) / base,
                slow[t],
                spread(&every[t]),
                median(&every[t]) / every_base,
            )?;
        }
    }
    if !frames_flag {
        writeln!(table, "\npython frames: not available in this build")?;
        return Ok(table);
    }
    table.push_str(&python_kernel_time(bench, plan, &python, &script)?);
    Ok(table)
}

/// Issue 16's Python target, judged where the wall-clock rows above cannot resolve it (their
/// runs spread over microseconds on a shared VM): the kernel's own time in the tracer's
/// programs per open+close of bench/pyloop.py (`BpfStats`), with Python frames and with
/// `--python-frames off`, the variants rotated each round, and the median of each round's
/// difference. The programs also run, and return at once, for every other syscall of the
/// machine meanwhile, and the VM's speed drifts: the rounds pair variants run moments apart.
fn python_kernel_time(bench: &Bench, plan: &Plan, python: &str, script: &Path) -> Result<String> {
    let mut tracers = vec![Tracer::Helios(&[]), Tracer::Helios(&["--python-frames", "off"])];
    // A binary from before `--python-frames` has no row here (it would not start with it).
    let before_has_frames = bench.before.as_deref().is_some_and(|binary| {
        sh::output(&binary.to_string_lossy(), &["--help"]).unwrap_or_default().contains("--python-frames")
    });
    if before_has_frames {
        tracers.extend([Tracer::Before(&[]), Tracer::Before(&["--python-frames", "off"])]);
    }
    // bench/pyloop.py's warm-up, which the programs run for too.
    let calls = plan.kernel_ops + (plan.kernel_ops / 10).max(500);
    let stats = BpfStats::enable()?;
    // Each round's figure per variant.
    let mut rounds: Vec<Vec<Option<f64>>> = vec![vec![None; tracers.len()]; plan.kernel_rounds];
    let mut lossy = vec![0usize; tracers.len()];
    for (round, figures) in rounds.iter_mut().enumerate() {
        // Rotated, and backwards every other round: each variant follows each of the others.
        let mut order: Vec<usize> = (0..tracers.len()).map(|i| (round / 2 + i) % tracers.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for t in order {
            let mut workload = Workload::start(
                Command::new(python).arg(script).args([plan.kernel_ops.to_string(), "10".into()]),
            )?;
            let attached = tracers[t].attach(bench, workload.pid())?.context("no tracer attached")?;
            let before = programs_run_ns(attached.pid())?;
            workload.go()?;
            workload.finish()?;
            let after = programs_run_ns(attached.pid())?;
            if stop_counted(Some(attached), true)?.0 > 0 {
                lossy[t] += 1;
                continue;
            }
            figures[t] = Some(after.saturating_sub(before) as f64 / f64::from(calls));
        }
    }
    drop(stats);
    let ns: Vec<Vec<Option<f64>>> =
        (0..tracers.len()).map(|t| rounds.iter().map(|figures| figures[t]).collect()).collect();
    let mut table = format!(
        "\n#### The kernel's own time per Python open+close\n\n{python} bench/pyloop.py {} 10, traced with \
         `--pid`: the sum of `run_time_ns` over the tracer's programs (/proc/PID/fdinfo, while \
         kernel.bpf_stats_enabled is 1) from the moment the loop is let go until it has exited (its \
         warm-up, a 0.3 s pause and the spins between calls included, and the programs' early \
         returns for every other syscall of the machine meanwhile), divided by its {calls} \
         open+close: the programs' time alone, not what the tracer's daemon costs; {} rounds, the \
         variants' order rotated each round and reversed every other; the differences are each \
         round's, their median [min–max] and how many were above 0.\n\n\
         | variant | kernel ns per open+close | runs that lost records (left out) |\n| --- | --- | --- |\n",
        plan.kernel_ops, plan.kernel_rounds,
    );
    for (t, tracer) in tracers.iter().enumerate() {
        let samples: Vec<f64> = ns[t].iter().flatten().copied().collect();
        let value = if samples.is_empty() { "–".to_string() } else { spread(&samples) };
        writeln!(table, "| {} | {value} | {} |", tracer.name(), lossy[t])?;
    }
    let mut difference = |label: &str, a: usize, b: usize| -> Result<()> {
        let d = paired_differences(&ns[a], &ns[b]);
        if d.is_empty() {
            return Ok(writeln!(table, "\n{label}: no round with both")?);
        }
        let higher = d.iter().filter(|x| **x > 0.0).count();
        Ok(writeln!(table, "\n{label}: {} ns, {higher} of {} rounds higher", spread(&d), d.len())?)
    };
    difference(
        "**Python frames' kernel time** (issue 16's target: ≤ +300 ns per call; default − `--python-frames off`)",
        0,
        1,
    )?;
    if before_has_frames {
        difference("Python frames, before (before − before `--python-frames off`)", 2, 3)?;
        difference("this build − before, Python frames on", 0, 2)?;
        difference("this build − before, `--python-frames off`", 1, 3)?;
    }
    Ok(table)
}

/// The differences `a[i] - b[i]` of the rounds where both have a value.
fn paired_differences(a: &[Option<f64>], b: &[Option<f64>]) -> Vec<f64> {
    a.iter().zip(b).filter_map(|(a, b)| Some((*a)? - (*b)?)).collect()
}

/// The kernel's run-time statistics of BPF programs (`kernel.bpf_stats_enabled`: each program's
/// `run_time_ns` and `run_cnt` in the fdinfo of its descriptors, kernel/bpf/syscall.c), on while
/// this lives and set back to what they were after.
struct BpfStats {
    was: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> Result<BpfStats> {
        let was = fs::read_to_string(BPF_STATS).with_context(|| format!("cannot read {BPF_STATS}"))?;
        fs::write(BPF_STATS, "1").with_context(|| format!("cannot write {BPF_STATS}"))?;
        Ok(BpfStats { was: was.trim().to_string() })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS, &self.was);
    }
}

/// The sum of `run_time_ns` over the BPF programs process `pid` holds descriptors of (0 for
/// every other kind of descriptor, which has no such line).
fn programs_run_ns(pid: u32) -> Result<u64> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut sum = 0;
    for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {dir}"))? {
        // A descriptor closed meanwhile is not a program's.
        if let Ok(text) = fs::read_to_string(entry?.path()) {
            sum += run_time_ns(&text);
        }
    }
    Ok(sum)
}

/// `run_time_ns` of one fdinfo text, 0 when it has none.
fn run_time_ns(fdinfo: &str) -> u64 {
    fdinfo.lines().find_map(|l| l.strip_prefix("run_time_ns:")?.trim().parse().ok()).unwrap_or(0)
}

/// The holders row (issue 15's numbers): a CPython process with `heap_objects` GC-tracked
/// objects and 50 files in a module-level list; helios-trace on its pid, a SIGUSR1 report
/// without `--holders` (no walk), with it (one walk of the heap), and with `--holders-pause`
/// too (the process stopped for the walk), alternated: the walk's time as the report gives it,
/// how long the process stood still, the objects walked, and the tracer's peak RSS (VmHWM)
/// after the report.
fn holders(bench: &Bench, plan: &Plan) -> Result<String> {
    let script = bench.source.join("pyheap.py");
    let variants: [&[&str]; 3] = [&[], &["--holders"], &["--holders", "--holders-pause"]];
    let mut peak = vec![Vec::new(); variants.len()];
    let mut walk = vec![Vec::new(); variants.len()];
    let mut paused = Vec::new();
    let (mut objects, mut named) = (0, String::new());
    for _ in 0..plan.holders_runs {
        for (v, extra) in variants.iter().enumerate() {
            let mut workload =
                Workload::start(Command::new(PYTHON).arg(&script).arg(plan.heap_objects.to_string()))?;
            let mut args = vec!["--pid".to_string(), workload.pid().to_string()];
            args.extend(["--reconcile-interval", "0"].map(String::from));
            args.extend(extra.iter().map(|a| a.to_string()));
            let mut tracer = bench.helios(&args)?;
            workload.go()?;
            let line = workload.line()?;
            if line != "held" {
                bail!("pyheap.py said {line:?}");
            }
            let report: serde_json::Value =
                serde_json::from_str(tracer.snapshot()?.trim()).context("the SIGUSR1 report is not JSON")?;
            peak[v].push(vm_hwm(tracer.pid())? as f64);
            let process = report["processes"]
                .as_array()
                .and_then(|p| p.iter().find(|p| p["pid"] == workload.pid()))
                .context("the workload is not in the report")?;
            if !extra.is_empty() {
                let heap = &process["heap"];
                walk[v].push(heap["walk_seconds"].as_f64().context("no heap walk in the report")?);
                if extra.contains(&"--holders-pause") {
                    let stopped = heap["paused_seconds"].as_f64();
                    paused.push(stopped.with_context(|| format!("the process was not stopped: {heap}"))?);
                }
                objects = heap["objects"].as_u64().unwrap_or(0);
                let held = process["sites"].as_array().into_iter().flatten().find_map(|s| {
                    s["holders"].as_array()?.iter().find(|h| h["count"] == 50)?["root"]
                        .as_str()
                        .map(String::from)
                });
                named = held.unwrap_or_else(|| "(not named)".into());
            }
            tracer.stop()?;
            drop(workload);
        }
    }
    let without = median(&peak[0]);
    let mut table = format!(
        "\n### Holders\n\n{PYTHON} bench/pyheap.py {}: a heap of that many GC-tracked objects and 50 files \
         in a module-level list; one SIGUSR1 report without `--holders`, with it, and with \
         `--holders-pause` too, {} alternated run(s), medians [min–max]. Peak RSS is the tracer's VmHWM \
         after the report; \"process stopped\" is the report's `heap.paused_seconds`.\n\n\
         | variant | objects walked | walk s | process stopped s | tracer peak RSS | the 50 files held by |\n\
         | --- | --- | --- | --- | --- | --- |\n",
        plan.heap_objects, plan.holders_runs
    );
    let peaks = |p: &[f64]| p.iter().map(|b| b / (1024.0 * 1024.0)).collect::<Vec<_>>();
    writeln!(table, "| without --holders | – | – | – | {} MiB | – |", spread(&peaks(&peak[0])))?;
    for (v, name) in [(1, "--holders"), (2, "--holders --holders-pause")] {
        let stopped = if v == 2 { spread_to(&paused, 2) } else { "–".to_string() };
        writeln!(
            table,
            "| {name} | {objects} | {} | {stopped} | {} MiB (+{}) | {named} |",
            spread_to(&walk[v], 2),
            spread(&peaks(&peak[v])),
            mib((median(&peak[v]) - without).max(0.0) as u64)
        )?;
    }
    Ok(table)
}

/// VmHWM (peak resident set) of `pid` in bytes (proc(5): /proc/PID/status, in kB).
fn vm_hwm(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).context("no VmHWM")?;
    Ok(line.trim().strip_suffix("kB").context("VmHWM in kB")?.trim().parse::<u64>()? * 1024)
}

/// A C program with `n` distinct call sites (`site_FIRST` to `site_{FIRST+n-1}`): each dup()s the
/// descriptor it is given, and main calls each once (after the line on stdin, at most
/// HOLD_RATE a second), then holds them like bench/fdhold.c.
fn sites_program(first: u32, n: u32) -> String {
    let per_ms = HOLD_RATE / 1000;
    let mut c = String::from(
        "/* Generated by cargo xtask bench: one distinct call site per function. */\n\
         #include <stdio.h>\n#include <sys/eventfd.h>\n#include <sys/resource.h>\n#include <unistd.h>\n\n\
         volatile int sink;\n",
    );
    for i in first..first + n {
        // The store after the call keeps each function's frame on the stack at the dup.
        let _ = writeln!(
            c,
            "__attribute__((noinline)) int site_{i}(int fd) {{ int r = dup(fd); sink = {i}; return r; }}"
        );
    }
    let _ = writeln!(c, "\nint (*const sites[])(int) = {{");
    for i in first..first + n {
        let _ = writeln!(c, "    site_{i},");
    }
    let _ = write!(
        c,
        "}};\n\nint main(void) {{\n    struct rlimit limit;\n    \
         if (getrlimit(RLIMIT_NOFILE, &limit) == 0) {{ limit.rlim_cur = limit.rlim_max; setrlimit(RLIMIT_NOFILE, &limit); }}\n    \
         int base = eventfd(0, 0);\n    char line[16];\n    \
         if (base < 0 || !fgets(line, sizeof line, stdin)) return 1;\n    \
         for (int i = 0; i < {n}; i++) {{\n        if (sites[i](base) < 0) {{ perror(\"dup\"); return 1; }}\n        \
         if (i % {per_ms} == {per_ms} - 1) usleep(1000);\n    }}\n    \
         printf(\"held {n}\\n\");\n    fflush(stdout);\n    while (fgets(line, sizeof line, stdin)) {{}}\n    return 0;\n}}\n"
    );
    c
}

/// A workload started at its gate: it reads one line from stdin before it begins.
struct Workload {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Workload {
    fn start(command: &mut Command) -> Result<Workload> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {command:?}"))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        Ok(Workload { child, stdin, stdout })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn go(&mut self) -> Result<()> {
        let stdin = self.stdin.as_mut().context("workload already finished")?;
        stdin.write_all(b"go\n").and_then(|()| stdin.flush()).context("cannot start the workload")
    }

    /// The next line it prints.
    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line).context("reading a workload")?;
        Ok(line.trim_end().to_string())
    }

    /// Everything it prints until it exits, which it must do successfully.
    fn finish(mut self) -> Result<String> {
        self.stdin = None;
        let mut output = String::new();
        self.stdout.read_to_string(&mut output).context("reading a workload")?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("workload failed ({status}): {output}");
        }
        Ok(output)
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        // Closing stdin ends the holders; anything else still running is killed by its pid.
        self.stdin = None;
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A tracer (helios-trace or bpftrace) that said it is attached.
struct Attached {
    child: Child,
    attached_after: Duration,
    /// The line `start` waited for.
    ready_line: String,
    stdout: Arc<Mutex<String>>,
    /// When the last line reached stdout (the end of the report, once stopped).
    last_output: Arc<Mutex<Option<Instant>>>,
    readers: Vec<thread::JoinHandle<()>>,
}

impl Attached {
    /// Start `command` and wait for the line `ready` accepts (stdout or stderr).
    fn start(mut command: Command, ready: fn(&str) -> bool) -> Result<Attached> {
        let started = Instant::now();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {command:?}"))?;
        let (lines, seen) = mpsc::channel::<String>();
        let stdout = Arc::new(Mutex::new(String::new()));
        let out = BufReader::new(child.stdout.take().expect("piped"));
        let err = BufReader::new(child.stderr.take().expect("piped"));
        let (kept, to_out) = (stdout.clone(), lines.clone());
        let last_output = Arc::new(Mutex::new(None));
        let last = last_output.clone();
        let readers = vec![
            thread::spawn(move || {
                for line in out.lines().map_while(Result::ok) {
                    *last.lock().expect("no reader panics") = Some(Instant::now());
                    let _ = to_out.send(line.clone());
                    let mut kept = kept.lock().expect("no reader panics");
                    kept.push_str(&line);
                    kept.push('\n');
                }
            }),
            thread::spawn(move || {
                for line in err.lines().map_while(Result::ok) {
                    let _ = lines.send(line);
                }
            }),
        ];
        let mut tracer = Attached {
            child,
            attached_after: Duration::ZERO,
            ready_line: String::new(),
            stdout,
            last_output,
            readers,
        };
        let mut said = Vec::new();
        loop {
            match seen.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if ready(&line) => {
                    tracer.ready_line = line;
                    break;
                }
                Ok(line) => said.push(line),
                Err(_) => bail!("{command:?} did not attach: {}", said.join("\n")),
            }
        }
        tracer.attached_after = started.elapsed();
        Ok(tracer)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The report of the moment: SIGUSR1 makes helios-trace print one JSON line and go on.
    fn snapshot(&mut self) -> Result<String> {
        let seen = self.stdout.lock().expect("no reader panics").len();
        // SAFETY: a signal to our own child, by its pid.
        unsafe { libc::kill(self.pid() as i32, libc::SIGUSR1) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let stdout = self.stdout.lock().expect("no reader panics");
            if stdout.len() > seen && stdout.ends_with('\n') {
                return Ok(stdout[seen..].to_string());
            }
            drop(stdout);
            thread::sleep(Duration::from_millis(20));
        }
        bail!("helios-trace {} wrote no snapshot within a minute of SIGUSR1", self.pid())
    }

    /// SIGINT, wait for it to exit (at most a minute), and its stdout.
    fn stop(self) -> Result<String> {
        Ok(self.stop_timed()?.0)
    }

    /// As `stop`, and the time from the report's last line to the exit (detaching the
    /// programs and freeing the maps happen in between), to within the 1 ms poll.
    fn stop_timed(mut self) -> Result<(String, Duration)> {
        // SAFETY: a signal to our own child, by its pid.
        unsafe { libc::kill(self.pid() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                bail!("tracer {} did not stop within a minute of SIGINT", self.pid());
            }
            thread::sleep(Duration::from_millis(1));
        };
        let exited = Instant::now();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let stdout = std::mem::take(&mut *self.stdout.lock().expect("readers joined"));
        if !status.success() {
            bail!("tracer exited with {status}");
        }
        let report_to_exit = self
            .last_output
            .lock()
            .expect("readers joined")
            .map_or(Duration::ZERO, |last| exited.saturating_duration_since(last));
        Ok((stdout, report_to_exit))
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What the bench reads from a helios-trace JSON report.
struct Report {
    received: u64,
    lost: u64,
    wakeups_forced: Option<u64>,
    open_fds: u64,
    sites: u64,
}

impl Report {
    fn parse(stdout: &str) -> Result<Report> {
        let json: serde_json::Value = serde_json::Deserializer::from_str(stdout)
            .into_iter()
            .filter_map(Result::ok)
            .last()
            .context("helios-trace printed no JSON report")?;
        let events = &json["events"];
        let processes = json["processes"].as_array().map(Vec::as_slice).unwrap_or_default();
        let sum = |f: &dyn Fn(&serde_json::Value) -> u64| processes.iter().map(f).sum::<u64>();
        Ok(Report {
            received: events["received"].as_u64().context("no events.received")?,
            lost: events["lost"].as_u64().context("no events.lost")?,
            wakeups_forced: events["wakeups_forced"].as_u64(),
            open_fds: sum(&|p| p["open_fds"].as_u64().unwrap_or(0)),
            sites: sum(&|p| p["sites"].as_array().map_or(0, |s| s.len() as u64)),
        })
    }
}

/// A timed workload's line `[NAME ]MEAN_NS SLOW_OPS ALL_MEAN_NS` (bench/churn.c's phases,
/// bench/pyloop.py's one line without a name): the mean ns per operation without the
/// preempted ones, their count, and the mean of every operation.
fn timing(output: &str, name: &str) -> Result<Timing> {
    output
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix(name)?;
            // "open 12 …" is not "openat 12 …"; bench/pyloop.py's line has no name.
            let rest = if name.is_empty() { rest } else { rest.strip_prefix(' ')? };
            let mut words = rest.split_whitespace();
            Some(Timing {
                mean: words.next()?.parse().ok()?,
                preempted: words.next()?.parse().ok()?,
                all_mean: words.next()?.parse().ok()?,
            })
        })
        .with_context(|| format!("no {name:?} line in {output:?}"))
}

struct Timing {
    mean: f64,
    preempted: u64,
    all_mean: f64,
}

/// utime + stime of `pid` in seconds (proc(5): fields 14 and 15 of /proc/PID/stat, after the
/// parenthesised comm, which may contain spaces).
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat).map(|ticks| ticks as f64 / clock_ticks())
}

fn parse_cpu_ticks(stat: &str) -> Result<u64> {
    let rest = stat.rsplit_once(')').context("no comm in /proc/PID/stat")?.1;
    // rest starts at field 3 (state): utime and stime are the 12th and 13th after it.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Ok(tick(11).context("no utime")? + tick(12).context("no stime")?)
}

fn clock_ticks() -> f64 {
    // SAFETY: no arguments.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as f64
}

/// Seconds the threads of `pid` spent runnable but waiting for a CPU (the kernel's
/// Documentation/scheduler/sched-stats.rst: the second field of /proc/PID/task/TID/schedstat, ns).
fn runqueue_wait_seconds(pid: u32) -> Result<f64> {
    schedstat_seconds(pid, 1)
}

/// Time `pid`'s threads ran on a CPU, in ns resolution (schedstat's first field), where
/// /proc/PID/stat counts in clock ticks (10 ms).
fn on_cpu_seconds(pid: u32) -> Result<f64> {
    schedstat_seconds(pid, 0)
}

/// Field `index` of /proc/PID/task/*/schedstat (ns), summed over the threads, in seconds.
fn schedstat_seconds(pid: u32, index: usize) -> Result<f64> {
    let mut ns = 0u64;
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = fs::read_to_string(task?.path().join("schedstat")).unwrap_or_default();
        ns += stat.split_whitespace().nth(index).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    }
    Ok(ns as f64 / 1e9)
}

/// The share of a core under which a tracer is idle (`wait_idle`).
const IDLE_SHARE: f64 = 0.02;

/// The same for `helios-trace serve`, which makes its metrics once a second meanwhile.
const SERVE_IDLE_SHARE: f64 = 0.05;

/// Wait until `pid` has used under 2% of a core for half a second (it drained the ring buffer;
/// its once-a-second sampling stays below that), at most 60 s.
fn wait_idle(pid: u32) -> Result<()> {
    wait_idle_below(pid, IDLE_SHARE)
}

/// Wait until `pid` has used under `share` of a core for half a second, at most 60 s.
fn wait_idle_below(pid: u32, share: f64) -> Result<()> {
    let mut last = on_cpu_seconds(pid)?;
    for _ in 0..120 {
        thread::sleep(Duration::from_millis(500));
        let now = on_cpu_seconds(pid)?;
        if now - last < share / 2.0 {
            return Ok(());
        }
        last = now;
    }
    bail!("helios-trace {pid} still busy after a minute")
}

/// RssAnon of `pid` in bytes (proc(5): /proc/PID/status, in kB).
fn rss_anon(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_rss_anon(&status).context("no RssAnon in /proc/PID/status")
}

/// The memory of the eBPF maps `pid` holds: the `memlock` of each in /proc/PID/fdinfo
/// (kernel/bpf/syscall.c, bpf_map_show_fdinfo; the kernel's own estimate of what the map
/// takes), summed.
fn kernel_map_bytes(pid: u32) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        // A descriptor closed meanwhile, or not a map: no `map_type`.
        let Ok(info) = fs::read_to_string(entry?.path()) else { continue };
        if info.lines().any(|l| l.starts_with("map_type:")) {
            let memlock =
                info.lines().find_map(|l| l.strip_prefix("memlock:")).context("a map without memlock")?;
            total += memlock.trim().parse::<u64>()?;
        }
    }
    Ok(total)
}

fn parse_rss_anon(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("RssAnon:"))?;
    Some(line.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()? * 1024)
}

fn hard_nofile() -> Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid pointer to a rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit");
    }
    Ok(limit.rlim_max)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// "median [min–max]".
fn spread(samples: &[f64]) -> String {
    spread_to(samples, 0)
}

/// `spread` with `decimals` places.
fn spread_to(samples: &[f64], decimals: usize) -> String {
    let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
    let max = samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.*} [{min:.*}–{max:.*}]", decimals, median(samples), decimals, decimals)
}

/// The load average (what else ran on the machine meanwhile).
fn load() -> String {
    let loadavg = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!("load average {}", loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// The machine, for BENCHMARKS.md.
fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| Some(l.strip_prefix("model name")?.split_once(':')?.1.trim().to_string()))
        })
        .unwrap_or_else(|| "unknown".into());
    let memory = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" ")))
        .unwrap_or_default();
    let kernel = sh::output("uname", &["-r"]).unwrap_or_default();
    let nproc = thread::available_parallelism().map_or(0, |n| n.get());
    format!("## Machine\n\n{nproc} CPUs ({cpu}), kernel {}, memory {memory}; {}", kernel.trim(), load())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_squares_slopes() {
        assert_eq!(least_squares_slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]), 2.0);
        assert_eq!(least_squares_slope(&[(0.0, 4.0), (1.0, 4.0)]), 0.0);
        assert_eq!(least_squares_slope(&[(1.0, 4.0)]), 0.0);
        // Noise around a flat line averages out; around a rising one it does not.
        let flat: Vec<(f64, f64)> =
            (0..40).map(|i| (i as f64, 50.0 + if i % 2 == 0 { 2.0 } else { -2.0 })).collect();
        assert!(least_squares_slope(&flat).abs() < 0.01);
    }

    #[test]
    fn time_wait_entries_from_sockstat() {
        let sockstat =
            "sockets: used 180\nTCP: inuse 5 orphan 0 tw 14112 alloc 9 mem 1\nUDP: inuse 2 mem 0\n";
        assert_eq!(parse_time_wait(sockstat), Some(14112));
        assert_eq!(parse_time_wait("UDP: inuse 2 mem 0\n"), None);
    }

    #[test]
    fn metric_sum_adds_the_series_of_one_name_only() {
        let exposition = "# TYPE helios_trace_events_lost_total counter\n\
                          helios_trace_events_lost_total{cpu=\"0\"} 3\n\
                          helios_trace_events_lost_total{cpu=\"1\"} 4\n\
                          helios_trace_events_lost_total_other 100\n\
                          helios_trace_tracked_fds 12\n";
        assert_eq!(metric_sum(exposition, "helios_trace_events_lost_total"), 7.0);
        assert_eq!(metric_sum(exposition, "helios_trace_tracked_fds"), 12.0);
        assert_eq!(metric_sum(exposition, "helios_trace_tracked"), 0.0);
    }

    #[test]
    fn program_run_time_from_fdinfo() {
        let program = "pos:\t0\nflags:\t02000002\nprog_type:\t26\nrun_time_ns:\t123456\nrun_cnt:\t7\n";
        assert_eq!(run_time_ns(program), 123456);
        assert_eq!(run_time_ns("pos:\t0\nflags:\t02\nmnt_id:\t25\n"), 0);
    }

    #[test]
    fn differences_of_the_rounds_with_both() {
        let a = [Some(10.0), None, Some(30.0), Some(5.0)];
        let b = [Some(4.0), Some(1.0), None, Some(9.0)];
        assert_eq!(paired_differences(&a, &b), vec![6.0, -4.0]);
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(spread(&[10.0, 30.0, 20.0]), "20 [10–30]");
    }

    #[test]
    fn cpu_ticks_after_a_comm_with_spaces_and_parentheses() {
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_cpu_ticks(stat).unwrap(), 325);
    }

    #[test]
    fn rss_anon_in_bytes() {
        assert_eq!(parse_rss_anon("VmRSS:\t  9000 kB\nRssAnon:\t    1234 kB\n"), Some(1234 * 1024));
        assert_eq!(parse_rss_anon("VmRSS:\t  9000 kB\n"), None);
    }

    #[test]
    fn report_counts_from_the_last_json_document() {
        let stdout = "{\"events\":{\"received\":1,\"lost\":0},\"processes\":[]}\n{\"events\":{\"received\":10,\"lost\":2},\
                      \"processes\":[{\"open_fds\":5,\"sites\":[{},{}]},{\"open_fds\":7,\"sites\":[{}]}]}";
        let report = Report::parse(stdout).unwrap();
        assert_eq!((report.received, report.lost, report.open_fds, report.sites), (10, 2, 12, 3));
    }

    #[test]
    fn workload_timings() {
        let read = |output: &str, name: &str| timing(output, name).map(|t| (t.mean, t.preempted, t.all_mean));
        assert_eq!(read("open 12 0 12\nsocket 34 2 90\n", "socket").unwrap(), (34.0, 2, 90.0));
        assert_eq!(read("1500 3 1700\n", "").unwrap(), (1500.0, 3, 1700.0));
        assert!(read("open 12 0 12\n", "accept").is_err());
        assert!(read("open 12 0\n", "open").is_err(), "the mean of every operation is missing");
        assert!(read("openat 12 0 12\n", "open").is_err());
    }

    #[test]
    fn generated_sites_are_distinct_functions() {
        let c = sites_program(0, 3);
        assert!(c.contains("int site_2(int fd)") && c.contains("for (int i = 0; i < 3; i++) {"));
        assert_eq!(c.matches("dup(fd)").count(), 3);
        // A second part of the same node: other functions, the same count.
        let c = sites_program(3, 3);
        assert!(!c.contains("int site_2(int fd)") && c.contains("int site_5(int fd)"));
        assert_eq!(c.matches("dup(fd)").count(), 3);
    }
}
