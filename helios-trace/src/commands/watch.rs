//! `helios-trace [OPTIONS]`, the ad-hoc session people reach for: trace until --duration, q,
//! Ctrl-C or SIGTERM. While tracing: a live view on a terminal, or a summary line per interval;
//! SIGUSR1 writes a report of the moment. At the end: the report, on stdout or in `--output`.
//! `run` (run.rs) traces its command the same way: it shares the progress, the snapshots and
//! the report writing here.
use std::{
    future::Future, io::Write as _, path::Path, pin::pin, process::ExitCode, sync::Arc, time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::Notify,
    time::Instant,
};

use super::{
    Failure, files::Files, runtime, start_files, stop_signal, trace_settings, validate_output, validate_pids,
    validate_trace,
};
use crate::{
    cli::{Format, SessionArgs, View},
    observe::session::{Tick, Tracing},
    output::{
        flamegraph,
        live::{self, LiveView},
        report::{self, Report, text::to_text},
    },
    sys::privileges,
};

/// `helios-trace [OPTIONS]`.
pub fn main(args: &SessionArgs) -> Result<ExitCode, Failure> {
    let files = start_files(&[args.output.as_deref(), args.flamegraph.as_deref()])?;
    let proc_root = Path::new("/proc");
    validate_pids(proc_root, &args.trace.pids)?;
    validate_trace(&args.trace)?;
    validate_output(&files, args.output.as_deref(), "report")?;
    validate_output(&files, args.flamegraph.as_deref(), "flame graph")?;
    let tracing = Tracing::start(&trace_settings(&args.trace), proc_root, &mut |_| {})?;
    // --holders-pause stops and continues processes of other users: CAP_KILL.
    let extra = if args.holders_pause { &[caps::Capability::CAP_KILL][..] } else { &[] };
    privileges::drop_after_attach(extra)?;
    runtime()?.block_on(session(args.clone(), tracing, &files)).map_err(Failure::from)?;
    Ok(ExitCode::SUCCESS)
}

/// `helios-trace [OPTIONS]`, once `tracing` is attached.
async fn session(args: SessionArgs, mut tracing: Tracing, files: &Files) -> Result<()> {
    // Handlers before we say "attached": a signal that arrives then must not kill us.
    let mut snapshot = signal(SignalKind::user_defined1()).context("cannot handle SIGUSR1")?;
    let stop = stop_signal(args.duration)?;
    tracing.set_min_age(args.min_age);
    tracing.set_all_holders(args.holders);
    tracing.set_holders_pause(args.holders_pause);
    tracing.start_readers()?;
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
    drive(&mut tracing, &args, files, stop, &mut snapshot, &mut progress).await?;
    progress.finish();
    emit(&tracing.report(args.list_fds), &args, files)
}

/// Trace until `stop`, showing progress; SIGUSR1 writes a report and tracing goes on.
pub(super) async fn drive(
    tracing: &mut Tracing,
    args: &SessionArgs,
    files: &Files,
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
                    emit(&tracing.report(args.list_fds), args, files)?;
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
pub(super) struct Progress {
    display: Display,
    interval: Duration,
    next: Instant,
    /// Notified when the live view's quit key is pressed.
    pub(super) quit: Arc<Notify>,
}

impl Progress {
    pub(super) fn start(args: &SessionArgs, run: bool, title: String) -> Result<Progress> {
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
            Display::Live(
                LiveView::start(title, args.frame_display(), quit.clone())
                    .context("cannot start the live view")?,
            )
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
        let report = match &self.display {
            // Holders of the last walk within the interval: a heap walk can take a second.
            Display::Live(_) => tracing.progress_report(),
            // A summary line shows no holders: no heap walks for it.
            _ => tracing.summary_report(),
        };
        match &self.display {
            Display::Live(view) => view.show(report),
            Display::Lines => eprintln!("{}", live::summary_line(&report)),
            Display::Quiet => {}
        }
    }

    fn holds_stdout(&self) -> bool {
        matches!(&self.display, Display::Live(view) if view.on_stdout())
    }

    /// Give the terminal back before the report is printed.
    pub(super) fn finish(&mut self) {
        if let Display::Live(view) = std::mem::replace(&mut self.display, Display::Quiet) {
            view.finish();
        }
    }
}

/// Write a report to `--output` (replacing the file atomically, JSON indented) or stdout. JSON
/// on stdout is one line per report, the snapshots' and the final one alike (JSON Lines), so a
/// reader takes one report per line.
pub(super) fn emit(report: &Report, args: &SessionArgs, files: &Files) -> Result<()> {
    let text = match (args.format, args.output.is_none()) {
        (Format::Json, true) => serde_json::to_string(report).expect("report serializes"),
        (Format::Json, false) => report::to_json(report),
        (Format::Text, _) => to_text(report, args.frame_display()),
    };
    if let Some(path) = &args.flamegraph {
        let svg = flamegraph::svg(report).context("drawing the flame graph")?;
        files
            .write(path, &svg)
            .with_context(|| format!("cannot write the flame graph to {}", path.display()))?;
    }
    match &args.output {
        Some(path) => files
            .write(path, format!("{text}\n").as_bytes())
            .with_context(|| format!("cannot write the report to {}", path.display())),
        None => {
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{text}").context("writing the report")?;
            stdout.flush().context("writing the report")
        }
    }
}
