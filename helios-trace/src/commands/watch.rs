//! The ad-hoc session people reach for: `helios-trace` (trace until --duration, q, Ctrl-C or
//! SIGTERM) and `helios-trace run -- CMD` (trace CMD from its first instruction until it
//! exits). While tracing: a live view on a terminal, or a summary line per interval; SIGUSR1
//! writes a report of the moment. At the end: the report, on stdout or in `--output`.
use std::{
    future::Future,
    io::Write as _,
    path::{Path, PathBuf},
    pin::pin,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::Notify,
    time::Instant,
};

use crate::{
    cli::{Format, RunArgs, SessionArgs, View},
    observe::session::{Tick, Tracing, stop_signal},
    output::{
        live::{self, LiveView},
        report::{self, CommandReport, Report},
    },
    sys::launch::{self, Gated, Identity},
};

/// Exited processes `run` keeps for its report (the command's, and those it started).
const RUN_KEEPS_EXITED: usize = 256;

/// `helios-trace [OPTIONS]`, once `tracing` is attached.
pub async fn session(args: SessionArgs, mut tracing: Tracing) -> Result<()> {
    // Handlers before we say "attached": a signal that arrives then must not kill us.
    let mut snapshot = signal(SignalKind::user_defined1()).context("cannot handle SIGUSR1")?;
    let stop = stop_signal(args.duration)?;
    tracing.min_age = args.min_age;
    let what = tracing.describe_targets();
    eprintln!(
        "helios-trace: attached {} tracepoints; tracing {what}{}",
        tracing.attached().len(),
        args.duration
            .map(|d| format!(" for {}", humantime::format_duration(d)))
            .unwrap_or_else(|| " until Ctrl-C".to_string())
    );
    let mut progress = Progress::start(&args, false, what)?;
    let quit = progress.quit.clone();
    let stop = async move {
        tokio::select! {
            () = stop => {}
            () = quit.notified() => {}
        }
    };
    drive(&mut tracing, &args, stop, &mut snapshot, &mut progress).await?;
    progress.finish();
    emit(&tracing.report(args.list_fds), &args, false)
}

/// `helios-trace run [OPTIONS] -- CMD [ARGS]`: start CMD held at its gate (before tracing
/// attaches, so that its pid can be a target).
pub fn start_command(args: &RunArgs, program: PathBuf) -> Result<Gated> {
    launch::start_gated(program, &args.command, Identity::from_sudo())
}

/// `helios-trace run`, once `tracing` (targeting the gated command) is attached: the exit code
/// to leave with (CMD's).
pub async fn run_command(args: RunArgs, gated: Gated, mut tracing: Tracing) -> Result<u8> {
    let session = &args.session;
    let mut snapshot = signal(SignalKind::user_defined1()).context("cannot handle SIGUSR1")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let pid = gated.pid;
    tracing.min_age = session.min_age;
    tracing.engine.retain_exited(RUN_KEEPS_EXITED);
    let argv: Vec<String> = args.command.iter().map(|a| a.to_string_lossy().into_owned()).collect();
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
    drive(&mut tracing, session, stop, &mut snapshot, &mut progress).await?;
    progress.finish();
    let status = running.status();
    let mut report = tracing.report(session.list_fds);
    report.command = Some(command_report(argv, pid, status));
    emit(&report, session, false)?;
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

/// Trace until `stop`, showing progress; SIGUSR1 writes a report and tracing goes on.
async fn drive(
    tracing: &mut Tracing,
    args: &SessionArgs,
    stop: impl Future<Output = ()>,
    snapshot: &mut Signal,
    progress: &mut Progress,
) -> Result<()> {
    let mut stop = pin!(stop);
    loop {
        tokio::select! {
            result = tracing.run_until(&mut stop, |t, tick| if tick == Tick::Second { progress.tick(t) }) => return result,
            _ = snapshot.recv() => {
                tracing.drain();
                if progress.holds_stdout() && args.output.is_none() {
                    log::info!("SIGUSR1: the live view holds stdout; use --output FILE for snapshots");
                } else {
                    emit(&tracing.report(args.list_fds), args, true)?;
                }
            }
        }
    }
}

enum Display {
    Live(LiveView),
    Lines,
    Quiet,
}

/// What is shown while tracing, every interval.
struct Progress {
    display: Display,
    interval: Duration,
    next: Instant,
    /// Notified when the live view's quit key is pressed.
    quit: Arc<Notify>,
}

impl Progress {
    fn start(args: &SessionArgs, run: bool, title: String) -> Result<Progress> {
        let quit = Arc::new(Notify::new());
        // `run`'s command writes to the same terminal: lines unless the live view is asked for.
        let live = match args.view {
            View::Auto => !run && live::has_terminal(),
            View::Live if !live::has_terminal() => {
                log::warn!("--view live needs a terminal on stdout or stderr: printing summary lines");
                false
            }
            View::Live => true,
            View::Lines | View::Quiet => false,
        };
        let display = if live {
            Display::Live(LiveView::start(title, quit.clone()).context("cannot start the live view")?)
        } else if args.view == View::Quiet {
            Display::Quiet
        } else {
            Display::Lines
        };
        Ok(Progress { display, interval: args.interval, next: Instant::now(), quit })
    }

    /// Once a second, after the sites were sampled.
    fn tick(&mut self, tracing: &mut Tracing) {
        if matches!(self.display, Display::Quiet) || Instant::now() < self.next {
            return;
        }
        self.next = Instant::now() + self.interval - Duration::from_millis(100);
        let report = tracing.report(false);
        match &self.display {
            Display::Live(view) => view.show(report),
            Display::Lines => eprintln!("{}", live::summary_line(&report)),
            Display::Quiet => {}
        }
    }

    fn holds_stdout(&self) -> bool {
        matches!(&self.display, Display::Live(view) if view.on_stdout)
    }

    /// Give the terminal back before the report is printed.
    fn finish(&mut self) {
        if let Display::Live(view) = std::mem::replace(&mut self.display, Display::Quiet) {
            view.finish();
        }
    }
}

/// Write a report to `--output` (replacing the file atomically) or stdout. A snapshot on stdout
/// in JSON is one line, so a reader can take one report per line.
fn emit(report: &Report, args: &SessionArgs, snapshot: bool) -> Result<()> {
    let text = match (args.format, snapshot && args.output.is_none()) {
        (Format::Json, true) => serde_json::to_string(report).expect("report serializes"),
        (Format::Json, false) => report::to_json(report),
        (Format::Text, _) => report::to_text(report),
    };
    match &args.output {
        Some(path) => write_atomically(path, &text)
            .with_context(|| format!("cannot write the report to {}", path.display())),
        None => {
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{text}").context("writing the report")?;
            stdout.flush().context("writing the report")
        }
    }
}

/// Write beside the file, then rename over it: a reader never sees half a report.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let mut file = std::fs::File::create(&temporary)?;
    writeln!(file, "{text}")?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_replace_the_output_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        write_atomically(&path, "{\"first\": 1}").unwrap();
        write_atomically(&path, "{\"second\": 2}").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"second\": 2}\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    }
}
