//! The command line (ARCHITECTURE.md, "Contracts: CLI"): clap's types, and the parsers of option
//! values (durations, sizes: parse.rs). No I/O: what needs the system (pids that must exist, cgroup
//! directories, a writable report file) is checked by the commands (commands/mod.rs).
use std::{ffi::OsString, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use helios_trace_common::{learned_chains, stack_mode};

use crate::model::frame::FrameDisplay;

use parse::{parse_duration, parse_interval, parse_retention, parse_ring_size, parse_stack_window};

mod parse;

const EXAMPLES: &str = "\
Examples:
  sudo helios-trace                                live view of every process until q or Ctrl-C, then the report
  sudo helios-trace --duration 30s                 every process for 30 s, text report of leaks
  sudo helios-trace -p 4121 --format json -o r.json  one process (and its new children), JSON report to r.json
  sudo helios-trace -p 4121 --min-age 1m           suspect only sites whose descriptors outlive a minute
  sudo helios-trace run -- ./server --port 8080    start a command, trace it from its first instruction
  sudo helios-trace run -- python3 examples/leaky_server.py
                                                    run a command as you, trace it, report at its exit
  sudo helios-trace --comm nginx --uid 33          processes named nginx, or running as uid 33
  kill -USR1 <helios-trace pid>                    print a report now and keep tracing
  sudo helios-trace serve --listen 0.0.0.0:9877 --allow-remote
                                                    Prometheus exporter (/metrics /healthz /sites)

Live view keys: q (or Ctrl-C, Esc) quit (then the report), p pause, v switch process/site view,
s sort by open count or growth, arrows select.
A site is a suspected leak when its open count keeps growing (Mann-Kendall trend, p < 0.001,
still rising lately) and some of its descriptors are older than --min-age.";

const RUN_EXAMPLES: &str = "\
Examples:
  sudo helios-trace run -- python3 -m app          run as the sudo user, report when it exits
  sudo helios-trace run --format json -o r.json -- ./worker --once
  sudo helios-trace run --duration 10m -- ./server stop the server with SIGTERM after 10 min

The report covers CMD and every process it starts, exited ones included (as of their exit).
helios-trace exits with CMD's status (128+N when a signal N ended it). Ctrl-C and SIGTERM
are passed on to CMD, --duration and q (with --view live) send it SIGTERM; a second request
kills it.";

/// `--version`: the package version and the git revision it was built from.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("HELIOS_TRACE_REVISION"), ")");

#[derive(Debug, Parser)]
#[command(name = "helios-trace", version = VERSION, about, after_help = EXAMPLES, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub session: SessionArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run as an exporter daemon: trace until SIGTERM and serve Prometheus metrics.
    Serve(ServeArgs),
    /// Start CMD and trace it and its children from its first instruction; report when it exits.
    #[command(after_help = RUN_EXAMPLES)]
    Run(RunArgs),
    /// The uprobe maker, which helios-trace starts itself (sys/uprobes.rs): not for users.
    #[command(name = "uprobe-maker", hide = true)]
    UprobeMaker,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub(crate) session: SessionArgs,
    /// The command to run and its arguments (as the invoking user under sudo).
    #[arg(value_name = "CMD", required = true, trailing_var_arg = true, num_args = 1..)]
    pub(crate) command: Vec<OsString>,
}

/// Options of an ad-hoc session.
#[derive(Debug, Clone, Args)]
pub struct SessionArgs {
    #[command(flatten)]
    pub(crate) trace: TraceArgs,
    /// Stop after this long (e.g. 30s, 5m); default: until Ctrl-C or SIGTERM.
    #[arg(long, value_parser = parse_duration)]
    pub(crate) duration: Option<Duration>,
    /// Report format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub(crate) format: Format,
    /// List every open descriptor of each reported process (JSON `fds`).
    #[arg(long)]
    pub(crate) list_fds: bool,
    /// Write the report to FILE instead of standard output (replaced atomically; SIGUSR1
    /// snapshots update it too).
    #[arg(short, long, value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
    /// Also write an SVG flame graph of the descriptors still open, by the stack that opened
    /// them (width: open descriptors; a root per kind and process), to FILE (replaced
    /// atomically, with the report).
    #[arg(long, value_name = "FILE")]
    pub(crate) flamegraph: Option<PathBuf>,
    /// Name the Python objects holding every site's open descriptors (by default only suspected
    /// leaks' and sites with CLOSE_WAIT sockets), from a walk of each CPython 3.10-3.14 heap at
    /// report time.
    #[arg(long)]
    pub(crate) holders: bool,
    /// Stop (SIGSTOP) each CPython process while its heap is read for holders, for a
    /// consistent snapshot of its references, and continue it (SIGCONT) right after: the
    /// process stands still for the reads (the report's `heap.paused_seconds`; about 1 s for a
    /// million objects). Off by default; a process stopped already is left stopped.
    #[arg(long)]
    pub(crate) holders_pause: bool,
    /// Refresh the live view, or print a summary line, this often.
    #[arg(long, value_parser = parse_interval, default_value = "2s")]
    pub(crate) interval: Duration,
    /// A growing site is a suspected leak only when some of its descriptors are older than this.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub(crate) min_age: Duration,
    /// Show every frame of a stack in the text report and the live view. By default the
    /// native frames of the Python interpreter itself, between and around a stack's Python
    /// frames, are folded into a line (`… 12 interpreter frames`); JSON always has them all.
    #[arg(long)]
    pub(crate) all_frames: bool,
    /// Progress while tracing: a live view on a terminal (stdout or stderr) and a summary line
    /// per interval on stderr otherwise (`run` prints lines: the command shares the terminal).
    #[arg(long, value_enum, default_value_t = View::Auto)]
    pub(crate) view: View,
}

impl SessionArgs {
    /// Which frames people are shown (`--all-frames`).
    pub(crate) fn frame_display(&self) -> FrameDisplay {
        if self.all_frames { FrameDisplay::All } else { FrameDisplay::Readable }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum View {
    /// live on a terminal, lines otherwise
    Auto,
    /// the interactive live view (needs a terminal)
    Live,
    /// one summary line per interval on stderr
    Lines,
    /// nothing until the report
    Quiet,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub(crate) trace: TraceArgs,
    /// Address to serve /metrics, /healthz and /sites on.
    #[arg(long, default_value = "127.0.0.1:9877")]
    pub(crate) listen: std::net::SocketAddr,
    /// Call sites exported per (workload, kind), those with the most open descriptors; the
    /// others are summed under site="other".
    #[arg(long, default_value_t = 20)]
    pub(crate) max_sites: usize,
    /// Give every process its own series (a `pid` label): for a few long-lived processes only,
    /// as pids churn.
    #[arg(long)]
    pub(crate) pid_label: bool,
    /// /sites names the Python objects holding the open descriptors of suspected and
    /// CLOSE_WAIT sites (`holders`, as in the report), from a walk of each CPython heap at most
    /// this often (and once more for a site newly suspected); 0 turns holders off.
    #[arg(long, value_parser = parse_duration, default_value = "1m")]
    pub(crate) holders_interval: Duration,
    /// The host's procfs (a DaemonSet mounts it at e.g. /host/proc).
    #[arg(long, default_value = "/proc")]
    pub(crate) proc_root: PathBuf,
    /// Serve on a non-loopback --listen address (what is served names command lines and
    /// paths of every traced process: see README "Privileges and threat model").
    #[arg(long)]
    pub(crate) allow_remote: bool,
    /// Connections open at once from all clients; when reached, a new connection cuts one that
    /// has not sent a whole request yet (of the client holding the most), so idle clients
    /// cannot keep a scraper out.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) web_max_connections: u32,
    /// Connections open at once from one client address; more are closed at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) web_max_connections_per_client: u32,
    /// TLS and basic authentication, in the web configuration format of Prometheus exporters
    /// (node_exporter's --web.config.file): tls_server_config (cert_file, key_file,
    /// client_ca_file, client_auth_type, min_version) and basic_auth_users (bcrypt hashes).
    /// Read again when it or a file it names changes; a bad new version keeps the old one.
    #[arg(long, value_name = "FILE")]
    pub(crate) web_config_file: Option<PathBuf>,
    /// Requests handled at once; more are answered 503 (node_exporter's --web.max-requests).
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) web_max_requests: u32,
}

/// What to trace and how; shared by the session and the exporter.
#[derive(Debug, Clone, Args)]
pub(crate) struct TraceArgs {
    /// Only this process, and children it forks after the start (repeatable).
    #[arg(short, long = "pid", value_name = "PID")]
    pub(crate) pids: Vec<u32>,
    /// Only processes in this cgroup v2 directory or below it, those that start there later
    /// included (repeatable; with the other filters, any).
    #[arg(long = "cgroup", value_name = "DIR")]
    pub(crate) cgroups: Vec<PathBuf>,
    /// Only processes with this name (the kernel's comm, as `ps -o comm` shows it; at most 15
    /// bytes), those that take it later by exec included, and what they fork (repeatable;
    /// with the other filters, any).
    #[arg(long = "comm", value_name = "NAME", value_parser = parse::parse_comm)]
    pub(crate) comms: Vec<[u8; 16]>,
    /// Only processes running as this user (real uid, as the host numbers it), those that
    /// become it later included, and what they fork (repeatable; with the other filters, any).
    #[arg(long = "uid", value_name = "UID")]
    pub(crate) uids: Vec<u32>,
    /// How to capture the stack that opened each descriptor.
    #[arg(long, value_enum, default_value_t = StackMode::Dwarf)]
    pub(crate) stacks: StackMode,
    /// With --stacks dwarf: bytes of user stack copied per call (at most 16K). Deeper stacks
    /// are cut there (counted in the report's events.stacks_truncated).
    #[arg(long, value_parser = parse_stack_window, default_value = "8K")]
    pub(crate) stack_window: u32,
    /// With --stacks dwarf: once a call chain has been unwound here, the kernel walks it again
    /// with the rules learned from it and sends its addresses instead of the stack window
    /// (README.md, "Call stacks"). `shadow` sends both and counts where they differ.
    #[arg(long, value_enum, default_value_t = LearnedChainsMode::On)]
    pub(crate) learned_chains: LearnedChainsMode,
    /// Python call stacks (function, file, line) of CPython 3.10-3.14 processes, merged with
    /// the native frames. Needs user stacks: with --stacks none there are no Python frames
    /// either. Other interpreters get native frames and one warning each.
    #[arg(long, value_enum, default_value_t = PythonFramesMode::Auto)]
    pub(crate) python_frames: PythonFramesMode,
    /// Compare the tables with /proc this often and correct them (0 turns it off).
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub(crate) reconcile_interval: Duration,
    /// Size of the ring buffer the kernel writes events into (power of two, e.g. 16M).
    #[arg(long, value_parser = parse_ring_size, default_value = "16M")]
    pub(crate) ring_buffer_size: u32,
    /// Do not show file paths, memfd names, command-line arguments or the directories of frames'
    /// files and modules, in any output: they can say more about the traced workloads than
    /// whoever reads the output should know.
    #[arg(long)]
    pub(crate) redact_paths: bool,
    /// Track at most this many processes; more are counted as dropped, not tracked (default:
    /// 100000; serve: less under a memory limit, to fit it).
    #[arg(long)]
    pub(crate) max_processes: Option<usize>,
    /// Track at most this many open descriptors; new ones beyond are counted as dropped (the
    /// oldest, which are the leaks, are kept) (default: 4000000; serve: less under a memory
    /// limit, to fit it).
    #[arg(long)]
    pub(crate) max_fds: Option<usize>,
    /// Remember the frames of at most this many distinct call sites at once; descriptors
    /// opened at sites first seen beyond are tracked under the site `site-limit` and counted
    /// (default: 100000; serve: less under a memory limit, to fit it).
    #[arg(long)]
    pub(crate) max_stacks: Option<usize>,
    /// Forget a call site this long after nothing held it any more (nothing open there, no
    /// live process that used it), and drop the series of a workload this long after its last
    /// process exited: what the daemon keeps follows what runs now.
    #[arg(long, value_parser = parse_retention, default_value = "10m")]
    pub(crate) retention: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PythonFramesMode {
    /// Walk the Python frames of every CPython process recognised.
    Auto,
    /// Native frames only (no walk in the kernel, no reads of interpreter memory).
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LearnedChainsMode {
    /// Learned chains replace the window where every frame has a rule.
    On,
    /// Every call sends its window.
    Off,
    /// Both: each learned chain is checked against the window's unwinding (the report's
    /// `events.chains_mismatched`). For tests and doubt; costs more than either.
    Shadow,
}

impl LearnedChainsMode {
    /// The kernel programs' `Settings::learned_chains` value.
    pub(crate) fn kernel_mode(self) -> u32 {
        match self {
            LearnedChainsMode::On => learned_chains::ON,
            LearnedChainsMode::Off => learned_chains::OFF,
            LearnedChainsMode::Shadow => learned_chains::SHADOW,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum StackMode {
    /// Registers and a window of the user stack per call, unwound here with the binaries'
    /// .eh_frame (DWARF CFI): whole call chains, also without frame pointers.
    Dwarf,
    /// Frame-pointer walk in the kernel (bpf_get_stackid): cheaper, short in -O2 code.
    Fp,
    /// No stacks: descriptors are grouped by process and kind only.
    None,
}

impl StackMode {
    /// The kernel programs' `Settings::user_stack_mode` value.
    pub(crate) fn kernel_mode(self) -> u32 {
        match self {
            StackMode::Dwarf => stack_mode::DWARF,
            StackMode::Fp => stack_mode::FP,
            StackMode::None => stack_mode::NONE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// README's examples say they are "also in `--help`": each command there is in it.
    #[test]
    fn the_readmes_examples_are_in_the_help() {
        let readme = include_str!("../../../README.md");
        let block = readme.split("Examples (also in `--help`):").nth(1).expect("README's examples");
        let block = block.split("```sh").nth(1).unwrap().split("```").next().unwrap();
        let words = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
        let help = words(EXAMPLES);
        let commands: Vec<String> = block
            .lines()
            .filter(|line| line.starts_with("sudo helios-trace"))
            .map(|line| words(line.split('#').next().unwrap()))
            .collect();
        assert!(commands.len() >= 5, "{commands:?}");
        for command in commands {
            assert!(help.contains(&command), "`{command}` is not in --help's examples");
        }
    }

    #[test]
    fn all_frames_becomes_the_frame_display() {
        let cli = Cli::try_parse_from(["helios-trace"]).unwrap();
        assert_eq!(cli.session.frame_display(), FrameDisplay::Readable);
        let cli = Cli::try_parse_from(["helios-trace", "--all-frames"]).unwrap();
        assert_eq!(cli.session.frame_display(), FrameDisplay::All);
        let Some(Command::Run(run)) =
            Cli::try_parse_from(["helios-trace", "run", "--all-frames", "--", "true"]).unwrap().command
        else {
            panic!("run parses")
        };
        assert_eq!(run.session.frame_display(), FrameDisplay::All);
    }

    #[test]
    fn stack_windows_and_modes() {
        let cli = Cli::try_parse_from(["helios-trace", "--stacks", "fp", "--stack-window", "4K"]).unwrap();
        assert_eq!((cli.session.trace.stacks, cli.session.trace.stack_window), (StackMode::Fp, 4096));
        assert_eq!(StackMode::Dwarf.kernel_mode(), stack_mode::DWARF);
        let err = Cli::try_parse_from(["helios-trace", "--stacks", "lbr"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn command_lines() {
        let cli = Cli::try_parse_from([
            "helios-trace",
            "-p",
            "1",
            "--pid",
            "2",
            "--duration",
            "5s",
            "--format",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.session.trace.pids, vec![1, 2]);
        assert_eq!(cli.session.duration, Some(Duration::from_secs(5)));
        assert_eq!(cli.session.format, Format::Json);
        let serve = Cli::try_parse_from(["helios-trace", "serve", "--listen", "0.0.0.0:9100"]).unwrap();
        let Some(Command::Serve(a)) = serve.command else { panic!("serve parses as serve") };
        assert_eq!(a.listen.port(), 9100);
        assert_eq!((a.max_sites, a.trace.retention, a.pid_label), (20, Duration::from_secs(600), false));
        assert_eq!(cli.session.trace.retention, Duration::from_secs(600), "sessions forget sites too");
        let Some(Command::Serve(a)) = Cli::try_parse_from(["helios-trace", "serve"]).unwrap().command else {
            panic!("serve parses as serve")
        };
        assert_eq!(a.listen.to_string(), "127.0.0.1:9877");
        let err = Cli::try_parse_from(["helios-trace", "serve", "--retention", "forever"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let err = Cli::try_parse_from(["helios-trace", "--retention", "500ms"]).unwrap_err();
        assert!(err.to_string().contains("at least 1s"), "{err}");
        assert_eq!(err.exit_code(), 2);
        let err = Cli::try_parse_from(["helios-trace", "--duration", "soon"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let err = Cli::try_parse_from(["helios-trace", "--pid", "abc"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert_eq!(cli.session.interval, Duration::from_secs(2));
        assert_eq!(cli.session.min_age, Duration::from_secs(10));
        assert_eq!(cli.session.view, View::Auto);
        let err = Cli::try_parse_from(["helios-trace", "--interval", "100ms"]).unwrap_err();
        assert!(err.to_string().contains("at least 1s"), "{err}");
    }

    #[test]
    fn run_takes_a_command_after_its_options() {
        let cli = Cli::try_parse_from([
            "helios-trace",
            "run",
            "--format",
            "json",
            "-o",
            "/tmp/r.json",
            "--",
            "sh",
            "-c",
            "exit 3",
        ])
        .unwrap();
        let Some(Command::Run(run)) = cli.command else { panic!("{cli:?}") };
        assert_eq!(run.command, ["sh", "-c", "exit 3"].map(OsString::from));
        assert_eq!(run.session.format, Format::Json);
        assert_eq!(run.session.output.as_deref(), Some(std::path::Path::new("/tmp/r.json")));
        // Without `--`, everything from the command on is the command's.
        let cli = Cli::try_parse_from(["helios-trace", "run", "ls", "-l", "--format", "x"]).unwrap();
        let Some(Command::Run(run)) = cli.command else { panic!() };
        assert_eq!(run.command, ["ls", "-l", "--format", "x"].map(OsString::from));
        let err = Cli::try_parse_from(["helios-trace", "run"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
