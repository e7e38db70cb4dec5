//! `helios-trace serve`: the exporter daemon. The address is bound first (a port in use is a
//! quick, clear failure) and the HTTP server (output/http.rs) answers /healthz with "starting"
//! until the first snapshot; then the tracing loop (observe/session.rs) runs until SIGTERM or
//! SIGINT and, once a second, the exporter (observe/export.rs) feeds the engine's transitions
//! to the aggregator (output/metrics) and publishes a snapshot for the handlers to read.
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use tokio::{net::TcpListener, sync::watch};

use super::{Failure, runtime, stop_signal, trace_settings, validate_pids, validate_trace};
use crate::{
    cli::ServeArgs,
    observe::{
        export::Exporter,
        session::{Tick, Tracing},
    },
    output::{
        http::{self, ServerLimits},
        metrics::aggregate::ExportConfig,
    },
    sys::privileges,
};

/// `helios-trace serve`.
pub fn main(args: &ServeArgs) -> Result<ExitCode, Failure> {
    validate_pids(&args.proc_root, &args.trace.pids)?;
    validate_trace(&args.trace)?;
    let listener = bind(args)?;
    let tracing = Tracing::start(&trace_settings(&args.trace), &args.proc_root)?;
    privileges::drop_after_attach(&privileges::needed_by(args.trace.kernel_stacks))?;
    runtime()?.block_on(run(args.clone(), listener, tracing)).map_err(Failure::from)?;
    Ok(ExitCode::SUCCESS)
}

/// Bind the address to serve on (before attaching: a port in use is a quick, clear failure).
/// A non-loopback address needs `--allow-remote`: what is served names command lines, paths
/// and code paths of every traced process.
fn bind(args: &ServeArgs) -> Result<std::net::TcpListener, Failure> {
    if !args.listen.ip().is_loopback() && !args.allow_remote {
        return Err(Failure::Usage(format!(
            "refusing to serve on {}, which is not a loopback address: the metrics name command lines and paths of every traced process; pass --allow-remote to serve them to the network",
            args.listen
        )));
    }
    let listener = std::net::TcpListener::bind(args.listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    Ok(listener)
}

/// `helios-trace serve`, once bound and attached.
async fn run(args: ServeArgs, listener: std::net::TcpListener, mut tracing: Tracing) -> Result<()> {
    // Handlers before we say "attached": a signal that arrives then must not kill us.
    let stop = stop_signal(None)?;
    let listener = TcpListener::from_std(listener).context("cannot serve on the bound address")?;
    // The address bound, not the one asked for: port 0 picks a free port.
    let address = listener.local_addr()?;
    let (publish, snapshots) = watch::channel(None);
    let server = tokio::spawn(http::serve(listener, snapshots, ServerLimits::default()));
    let config = ExportConfig {
        max_sites: args.max_sites,
        retention_ns: args.trace.retention.as_nanos().try_into().unwrap_or(u64::MAX),
        pid_label: args.pid_label,
        redact_paths: args.trace.redact_paths,
    };
    let mut exporter = Exporter::new(config, &args.proc_root, &mut tracing, args.holders_interval);
    // Ready (the first snapshot is out) before we say so.
    exporter.publish(&mut tracing, &publish);
    eprintln!(
        "helios-trace: attached {} tracepoints; tracing {}; serving http://{}/metrics",
        tracing.attached().len(),
        tracing.describe_targets(),
        address
    );
    let result = tracing
        .run_until(stop, |tracing, tick| match tick {
            Tick::Second => exporter.publish(tracing, &publish),
            Tick::Drained => exporter.observe_if_many(tracing),
        })
        .await;
    server.abort();
    // Dropping `tracing` detaches the programs.
    result
}
