//! Command line (design.md "CLI" contract): parsing, validation of what clap cannot check
//! (pids that must exist), and the mapping from failures to exit codes:
//! 0 success; 2 bad usage or input; 1 runtime failure.
use std::{path::Path, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{bpf::checks::CheckError, procscan};

const EXAMPLES: &str = "\
Examples:
  sudo helios-trace --duration 30s                 trace every process for 30 s, report leaks
  sudo helios-trace -p 4121 --format json          trace one process until Ctrl-C, JSON report
  sudo helios-trace -p 4121 -p 4122 --duration 5m  several processes (and children they fork)
  kill -USR1 <helios-trace pid>                    print a report now and keep tracing
  sudo helios-trace serve --listen 0.0.0.0:9877    Prometheus exporter (/metrics /healthz /sites)";

#[derive(Debug, Parser)]
#[command(name = "helios-trace", version, about, after_help = EXAMPLES, args_conflicts_with_subcommands = true)]
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
}

/// Options of an ad-hoc session.
#[derive(Debug, Clone, Args)]
pub struct SessionArgs {
    #[command(flatten)]
    pub trace: TraceArgs,
    /// Stop after this long (e.g. 30s, 5m); default: until Ctrl-C or SIGTERM.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Report format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// List every open descriptor of each reported process (JSON `fds`).
    #[arg(long)]
    pub list_fds: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub trace: TraceArgs,
    /// Address to serve /metrics, /healthz and /sites on.
    #[arg(long, default_value = "127.0.0.1:9877")]
    pub listen: std::net::SocketAddr,
}

/// What to trace and how; shared by the session and the exporter.
#[derive(Debug, Clone, Args)]
pub struct TraceArgs {
    /// Only this process, and children it forks after the start (repeatable).
    #[arg(short, long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// How to capture the stack that opened each descriptor.
    #[arg(long, value_enum, default_value_t = StackMode::Fp)]
    pub stacks: StackMode,
    /// Also capture kernel stacks.
    #[arg(long)]
    pub kernel_stacks: bool,
    /// Compare the tables with /proc this often and correct them (0 turns it off).
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub reconcile_interval: Duration,
    /// Size of the ring buffer the kernel writes events into (power of two, e.g. 16M).
    #[arg(long, value_parser = parse_ring_size, default_value = "16M")]
    pub ring_buffer_size: u32,
    /// Track at most this many processes; more are counted as dropped, not tracked.
    #[arg(long, default_value_t = 100_000)]
    pub max_processes: usize,
    /// Track at most this many open descriptors; new ones beyond are counted as dropped (the
    /// oldest, which are the leaks, are kept).
    #[arg(long, default_value_t = 4_000_000)]
    pub max_fds: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StackMode {
    /// Frame-pointer walk in the kernel (bpf_get_stackid): cheap, short in -O2 code.
    Fp,
    /// No stacks: descriptors are grouped by process and kind only.
    None,
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("'{text}' is not a duration like 30s, 5m or 1h ({e})"))
}

/// "16M", "512K", "1G" or bytes; a power of two of at least one page, as the kernel requires.
pub fn parse_ring_size(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let (digits, multiplier) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let bytes = digits.parse::<u64>().map_err(|_| format!("'{text}' is not a size like 16M"))? * multiplier;
    if bytes < 4096 || !bytes.is_power_of_two() || bytes > 1 << 30 {
        return Err(format!("ring buffer size must be a power of two between 4K and 1G, not {text}"));
    }
    Ok(bytes as u32)
}

/// A failure with the exit code it deserves.
#[derive(Debug)]
pub enum Failure {
    /// Bad usage or input: exit 2.
    Usage(String),
    /// Could not do the job: exit 1.
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::Runtime(e)
    }
}

/// Pids must name running processes.
pub fn validate_pids(proc_root: &Path, pids: &[u32]) -> Result<(), Failure> {
    for &pid in pids {
        if pid == 0 || !procscan::exists(proc_root, pid) {
            return Err(Failure::Usage(format!("no process with pid {pid}")));
        }
    }
    Ok(())
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_target(false)
        .init();
    let result = match &cli.command {
        Some(Command::Serve(args)) => validate_pids(Path::new("/proc"), &args.trace.pids)
            .and_then(|()| runtime()?.block_on(crate::serve::run(args.clone())).map_err(Failure::from)),
        None => validate_pids(Path::new("/proc"), &cli.session.trace.pids).and_then(|()| {
            runtime()?.block_on(crate::session::run(cli.session.clone())).map_err(Failure::from)
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("helios-trace: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(error)) => {
            // One line: the context chain, outermost first, or the check's own sentence.
            match error.downcast_ref::<CheckError>() {
                Some(check) => eprintln!("helios-trace: {check}"),
                None => eprintln!("helios-trace: {error:#}"),
            }
            ExitCode::from(1)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5 parsecs").unwrap_err().contains("not a duration"));
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn ring_sizes() {
        assert_eq!(parse_ring_size("16M"), Ok(16 << 20));
        assert_eq!(parse_ring_size("4096"), Ok(4096));
        assert!(parse_ring_size("3M").is_err());
        assert!(parse_ring_size("1K").is_err());
        assert!(parse_ring_size("lots").is_err());
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
        assert!(matches!(serve.command, Some(Command::Serve(ref a)) if a.listen.port() == 9100));
        let err = Cli::try_parse_from(["helios-trace", "--duration", "soon"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let err = Cli::try_parse_from(["helios-trace", "--pid", "abc"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn unknown_pids_are_usage_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("42")).unwrap();
        assert!(validate_pids(dir.path(), &[42]).is_ok());
        match validate_pids(dir.path(), &[42, 43]) {
            Err(Failure::Usage(m)) => assert_eq!(m, "no process with pid 43"),
            other => panic!("{other:?}"),
        }
    }
}
