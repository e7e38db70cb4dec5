//! `helios-trace run [OPTIONS] -- CMD [ARGS]`: start CMD held at its gate (before tracing
//! attaches, so that its pid can be a target), trace it and its children from its first
//! instruction, report when it exits, and exit with its status. Progress, snapshots and the
//! report are the ad-hoc session's (watch.rs).
use std::{path::Path, pin::pin, process::ExitCode};

use anyhow::{Context as _, Result};
use tokio::signal::unix::{SignalKind, signal};

use super::{
    Failure,
    files::Files,
    runtime, start_files, trace_settings, validate_output, validate_pids, validate_trace,
    watch::{Progress, drive, emit},
};
use crate::{
    cli::RunArgs,
    observe::session::Tracing,
    output::{redact, report::CommandReport},
    sys::{
        launch::{self, Gated, Identity},
        privileges,
    },
};

/// Exited processes `run` keeps for its report (the command's, and those it started).
const RUN_KEEPS_EXITED: usize = 256;

/// `helios-trace run`.
pub fn main(args: &RunArgs) -> Result<ExitCode, Failure> {
    let files = start_files(&[args.session.output.as_deref(), args.session.flamegraph.as_deref()])?;
    let proc_root = Path::new("/proc");
    validate_pids(proc_root, &args.session.trace.pids)?;
    validate_trace(&args.session.trace)?;
    validate_output(&files, args.session.output.as_deref(), "report")?;
    validate_output(&files, args.session.flamegraph.as_deref(), "flame graph")?;
    let program = launch::resolve(&args.command[0]).map_err(Failure::Usage)?;
    let image = launch::executable_image(&program);
    let gated = launch::start_gated(program, &args.command, Identity::from_sudo())?;
    let mut settings = trace_settings(&args.session.trace);
    settings.pids.push(gated.pid());
    // Should this fail, dropping `gated` closes the gate: the command exits unrun.
    let mut tracing = Tracing::start(&settings, proc_root, &mut |_| {})?;
    tracing.before_exec(gated.pid(), &image);
    // The command may run as another user (sudo): passing it signals needs CAP_KILL.
    privileges::drop_after_attach(&[caps::Capability::CAP_KILL])?;
    let status = runtime()?.block_on(run_command(args.clone(), gated, tracing, &files))?;
    Ok(ExitCode::from(status))
}

/// `helios-trace run`, once `tracing` (targeting the gated command) is attached: the exit code
/// to leave with (CMD's).
async fn run_command(args: RunArgs, gated: Gated, mut tracing: Tracing, files: &Files) -> Result<u8> {
    let session = &args.session;
    let mut snapshot = signal(SignalKind::user_defined1()).context("cannot handle SIGUSR1")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let pid = gated.pid();
    tracing.set_min_age(session.min_age);
    tracing.set_all_holders(session.holders);
    tracing.set_holders_pause(session.holders_pause);
    tracing.retain_exited(RUN_KEEPS_EXITED);
    let mut argv: Vec<String> = args.command.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    if session.trace.redact_paths {
        argv = redact::argv(&argv);
    }
    tracing.start_readers()?;
    eprintln!(
        "helios-trace: attached {} tracepoints; running `{}` (pid {pid})",
        tracing.attached().len(),
        argv.join(" ")
    );
    let running = gated.release().await?;
    let mut progress = Progress::start(session, true, format!("pid {pid} {}", argv[0]))?;
    let quit = progress.quit.clone();
    let command = running.clone();
    let exited = running.clone().exited();
    let duration = session.duration;
    // Until the command exits. Requests to stop are passed on to it: Ctrl-C and SIGTERM as
    // they are, --duration and q as SIGTERM; a second request kills it.
    let stop = async move {
        let mut requests = 0;
        let mut pass_on = |signal: i32| {
            requests += 1;
            command.signal(if requests == 1 { signal } else { libc::SIGKILL });
        };
        let mut deadline = pin!(tokio::time::sleep(duration.unwrap_or_default()));
        let mut armed = duration.is_some();
        let mut exited = pin!(exited);
        loop {
            tokio::select! {
                _ = &mut exited => break,
                _ = interrupt.recv() => pass_on(libc::SIGINT),
                _ = terminate.recv() => pass_on(libc::SIGTERM),
                () = quit.notified() => pass_on(libc::SIGTERM),
                () = &mut deadline, if armed => {
                    armed = false;
                    pass_on(libc::SIGTERM);
                }
            }
        }
    };
    drive(&mut tracing, session, files, stop, &mut snapshot, &mut progress).await?;
    progress.finish();
    let status = running.status();
    let mut report = tracing.report(session.list_fds);
    report.command = Some(command_report(argv, pid, status));
    emit(&report, session, files)?;
    Ok(status.map(launch::exit_code).unwrap_or(1))
}

fn command_report(argv: Vec<String>, pid: u32, status: Option<std::process::ExitStatus>) -> CommandReport {
    use std::os::unix::process::ExitStatusExt as _;
    CommandReport {
        argv,
        pid,
        exit_code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
    }
}
