//! One file per command (ARCHITECTURE.md, "Where each stage lives"): `watch` (the ad-hoc
//! session), `run` (start a command gated and trace it from its first instruction) and `serve`
//! (the exporter daemon); and `uprobe-maker`, hidden, which the others start (sys/uprobes.rs). Each takes its arguments, checks what clap cannot (pids that must
//! exist, cgroup directories, a writable report file), turns them into settings at the edge and
//! runs; main.rs dispatches and turns a [`Failure`] into an exit code (ARCHITECTURE.md,
//! "Contracts: CLI": 0 success; 2 bad usage or input; 1 runtime failure). Nothing imports
//! commands/.
//!
//! Each command attaches first, then drops the capabilities it no longer needs, and only then
//! starts the runtime: capabilities are per thread, and the runtime's threads inherit ours.
use std::{path::Path, process::ExitCode, time::Duration};

use anyhow::Context as _;
use helios_trace_common::{SyscallEvent, UserStack};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::{PythonFramesMode, StackMode, TraceArgs},
    model::fdtable::TableLimits,
    model::sizing::DEFAULT_CAPS,
    observe::session::TraceSettings,
    sys::{cgroups, checks::CheckError, proc},
};

mod files;
pub mod run;
pub mod serve;
pub mod watch;

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

impl Failure {
    /// Say what failed on stderr, in one line, and the exit code it deserves.
    pub fn exit(self) -> ExitCode {
        match self {
            Failure::Usage(message) => {
                eprintln!("helios-trace: {message}");
                ExitCode::from(2)
            }
            Failure::Runtime(error) => {
                // One line: the context chain, outermost first, or the check's own sentence.
                match error.downcast_ref::<CheckError>() {
                    Some(check) => eprintln!("helios-trace: {check}"),
                    None => eprintln!("helios-trace: {error:#}"),
                }
                ExitCode::from(1)
            }
        }
    }
}

/// `helios-trace uprobe-maker`: started by the tracer itself, its stdin a socket to it
/// (sys/uprobes.rs).
pub fn uprobe_maker() -> ExitCode {
    crate::sys::uprobes::serve()
}

/// Log warnings (or what RUST_LOG asks for) to stderr, without module names.
pub fn log_to_stderr() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_target(false)
        .init();
}

/// Pids must name running processes.
fn validate_pids(proc_root: &Path, pids: &[u32]) -> Result<(), Failure> {
    for &pid in pids {
        if pid == 0 || !proc::exists(proc_root, pid) {
            return Err(Failure::Usage(format!("no process with pid {pid}")));
        }
    }
    Ok(())
}

/// The report file must be writable before an hour of tracing, not after: the directory must
/// take the temporary file the report is written to (then renamed over the file). The file
/// itself is not touched: an earlier report stays whole until the new one replaces it, and
/// survives a failed start, a crash or a kill.
fn validate_output(files: &files::Files, output: Option<&Path>, what: &str) -> Result<(), Failure> {
    if let Some(path) = output {
        files
            .check(path)
            .map_err(|e| Failure::Usage(format!("cannot write the {what} to {}: {e}", path.display())))?;
    }
    Ok(())
}

/// The writer of a session's files (`outputs`: the files asked for): under sudo a child that is
/// the invoking user. First thing in a command: it forks, which must happen while this process
/// has one thread.
fn start_files(outputs: &[Option<&Path>]) -> Result<files::Files, Failure> {
    let identity =
        outputs.iter().any(Option::is_some).then(crate::sys::launch::Identity::from_sudo).flatten();
    files::Files::start(identity)
        .map_err(|e| Failure::Runtime(anyhow::Error::new(e).context("cannot start the file writer")))
}

/// Records a ring buffer must hold at least, with `--stacks dwarf`: fewer, and nearly every
/// record with a stack would be lost.
const MIN_RECORDS_IN_RING: u64 = 4;

/// What clap cannot check alone: option values that only make sense together, and cgroup
/// directories that must be cgroup v2 directories.
fn validate_trace(trace: &TraceArgs) -> Result<(), Failure> {
    for dir in &trace.cgroups {
        cgroups::resolve(dir).map_err(Failure::Usage)?;
    }
    if trace.stacks == StackMode::Dwarf {
        let record =
            (size_of::<SyscallEvent>() + size_of::<UserStack>()) as u64 + u64::from(trace.stack_window);
        if u64::from(trace.ring_buffer_size) < MIN_RECORDS_IN_RING * record {
            return Err(Failure::Usage(format!(
                "a {} KiB ring buffer cannot hold {MIN_RECORDS_IN_RING} --stacks dwarf records of {} bytes; \
                 use a larger --ring-buffer-size, a smaller --stack-window, or --stacks fp",
                trace.ring_buffer_size / 1024,
                record
            )));
        }
    }
    Ok(())
}

/// The tracing options as the session takes them.
fn trace_settings(trace: &TraceArgs) -> TraceSettings {
    TraceSettings {
        pids: trace.pids.clone(),
        cgroups: trace.cgroups.clone(),
        comms: trace.comms.clone(),
        uids: trace.uids.clone(),
        user_stack_mode: trace.stacks.kernel_mode(),
        stack_window: trace.stack_window,
        learned_chains: trace.learned_chains.kernel_mode(),
        // The kernel walks Python frames only where it captures user stacks.
        python_frames: trace.python_frames == PythonFramesMode::Auto && trace.stacks != StackMode::None,
        reconcile_interval: trace.reconcile_interval,
        ring_buffer_bytes: trace.ring_buffer_size,
        redact_paths: trace.redact_paths,
        limits: TableLimits {
            max_processes: trace.max_processes.unwrap_or(DEFAULT_CAPS.max_processes),
            max_fds: trace.max_fds.unwrap_or(DEFAULT_CAPS.max_fds),
        },
        max_stacks: trace.max_stacks.unwrap_or(DEFAULT_CAPS.max_stacks),
        retention: trace.retention,
        keep_transitions: false,
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))
}

/// Completes on SIGINT, SIGTERM, or when `duration` has passed.
fn stop_signal(duration: Option<Duration>) -> anyhow::Result<impl Future<Output = ()>> {
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    Ok(async move {
        let deadline = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
            () = deadline => {}
        }
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::Parser as _;

    use super::*;
    use crate::cli::Cli;

    #[test]
    fn a_ring_buffer_too_small_for_stacks_is_bad_input() {
        // A ring buffer too small for records with stacks is bad input, not silent loss.
        let small = Cli::try_parse_from(["helios-trace", "--ring-buffer-size", "16K"]).unwrap();
        match validate_trace(&small.session.trace) {
            Err(Failure::Usage(m)) => assert!(m.starts_with("a 16 KiB ring buffer cannot hold 4"), "{m}"),
            other => panic!("{other:?}"),
        }
        let fp =
            Cli::try_parse_from(["helios-trace", "--ring-buffer-size", "16K", "--stacks", "fp"]).unwrap();
        assert!(validate_trace(&fp.session.trace).is_ok());
        assert!(validate_trace(&Cli::try_parse_from(["helios-trace"]).unwrap().session.trace).is_ok());
    }

    #[test]
    fn unwritable_output_is_a_usage_error() {
        match validate_output(&files::Files::Here, Some(Path::new("/nonexistent-dir/report.json")), "report")
        {
            Err(Failure::Usage(m)) => {
                assert!(m.starts_with("cannot write the report to /nonexistent-dir"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(validate_output(&files::Files::Here, Some(&dir.path().join("r.json")), "report").is_ok());
        assert!(validate_output(&files::Files::Here, None, "report").is_ok());
        // An earlier report is not touched by the check, and the check leaves nothing behind.
        let earlier = dir.path().join("earlier.json");
        std::fs::write(&earlier, "{\"earlier\": 1}").unwrap();
        assert!(validate_output(&files::Files::Here, Some(&earlier), "report").is_ok());
        assert_eq!(std::fs::read_to_string(&earlier).unwrap(), "{\"earlier\": 1}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(
            matches!(
                validate_output(&files::Files::Here, Some(dir.path()), "report"),
                Err(Failure::Usage(_))
            ),
            "a directory"
        );
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
