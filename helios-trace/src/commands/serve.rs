//! `helios-trace serve`: the exporter daemon. The address is bound first (a port in use is a
//! quick, clear failure) and the HTTP server (output/http.rs) answers /healthz with "starting"
//! until the first snapshot; then the tracing loop (observe/session.rs) runs until SIGTERM or
//! SIGINT and, once a second, the exporter (observe/export.rs) feeds the engine's transitions
//! to the aggregator (output/metrics) and publishes a snapshot for the handlers to read.
use std::{path::Path, process::ExitCode};

use anyhow::{Context as _, Result};
use log::warn;
use tokio::{net::TcpListener, sync::watch};

use super::{Failure, runtime, stop_signal, trace_settings, validate_pids, validate_trace};
use crate::{
    cli::{ServeArgs, TraceArgs},
    model::sizing,
    observe::{
        export::Exporter,
        session::{Tick, TraceSettings, Tracing},
    },
    output::{
        http::{self, ServerLimits, WebConfigFile},
        metrics::aggregate::ExportConfig,
    },
    sys::{privileges, proc::resources::CgroupMounts},
};

/// `helios-trace serve`.
pub fn main(args: &ServeArgs) -> Result<ExitCode, Failure> {
    validate_pids(&args.proc_root, &args.trace.pids)?;
    validate_trace(&args.trace)?;
    // Before attaching: a bad file is one line and exit 2, not a daemon serving in the clear.
    let web = match &args.web_config_file {
        Some(path) => Some(
            WebConfigFile::load(path.clone())
                .map_err(|e| Failure::Usage(format!("--web-config-file {e}")))?,
        ),
        None => None,
    };
    let listener = bind(args)?;
    let mut args = args.clone();
    size_to_own_memory(&mut args.trace);
    let args = &args;
    let config = ExportConfig {
        max_sites: args.max_sites,
        retention_ns: args.trace.retention.as_nanos().try_into().unwrap_or(u64::MAX),
        pid_label: args.pid_label,
        redact_paths: args.trace.redact_paths,
    };
    // Before the start: the baseline already handles records, and the exporter takes them in.
    let mut exporter = Exporter::new(config, &args.proc_root);
    let settings = TraceSettings { keep_transitions: true, ..trace_settings(&args.trace) };
    let tracing = Tracing::start(&settings, &args.proc_root, &mut |t| exporter.observe_if_many(t))?;
    privileges::drop_after_attach(&[])?;
    runtime()?.block_on(run(args.clone(), listener, tracing, exporter, web)).map_err(Failure::from)?;
    Ok(ExitCode::SUCCESS)
}

/// The caps not set on the command line, from the memory limit of our own cgroup
/// (model/sizing.rs), said in one line when there is a limit; a warning when caps that were set
/// may need more than it.
fn size_to_own_memory(trace: &mut TraceArgs) {
    let limit = match CgroupMounts::find(Path::new("/proc")).memory(std::process::id()) {
        Ok(memory) => memory.limit,
        Err(e) => {
            eprintln!("helios-trace: own memory limit unknown ({e}): the caps are the defaults");
            None
        }
    };
    let sized = sizing::caps_for(limit, u64::from(trace.ring_buffer_size));
    let caps = sizing::Caps {
        max_fds: *trace.max_fds.get_or_insert(sized.max_fds),
        max_stacks: *trace.max_stacks.get_or_insert(sized.max_stacks),
        max_processes: *trace.max_processes.get_or_insert(sized.max_processes),
    };
    let Some(limit) = limit else { return };
    let need = sizing::bytes_at_caps(caps, u64::from(trace.ring_buffer_size));
    let mib = |bytes: u64| bytes >> 20;
    if need > limit {
        eprintln!(
            "helios-trace: warning: --max-fds {} --max-stacks {} --max-processes {} may need {} MiB, above this cgroup's memory limit of {} MiB: the OOM killer may end helios-trace before the caps are reached",
            caps.max_fds,
            caps.max_stacks,
            caps.max_processes,
            mib(need),
            mib(limit)
        );
    } else {
        eprintln!(
            "helios-trace: memory limit {} MiB: tracking at most {} descriptors, {} call sites, {} processes (--max-fds, --max-stacks, --max-processes; about {} MiB at the caps)",
            mib(limit),
            caps.max_fds,
            caps.max_stacks,
            caps.max_processes,
            mib(need)
        );
    }
}

/// Says once, for each cap, that it was reached (what it keeps out is counted in
/// `helios_trace_dropped_total`, by `what`).
#[derive(Default)]
struct CapWarnings {
    said: [bool; 3],
}

impl CapWarnings {
    fn check(&mut self, tracing: &Tracing, trace: &TraceArgs) {
        let (processes, fds, sites) = tracing.dropped();
        let caps = [
            (processes, "--max-processes", trace.max_processes, "processes", "processes"),
            (fds, "--max-fds", trace.max_fds, "descriptors", "fds"),
            (sites, "--max-stacks", trace.max_stacks, "new call sites", "sites"),
        ];
        for (said, (dropped, option, cap, what, label)) in self.said.iter_mut().zip(caps) {
            if dropped > 0 && !*said {
                *said = true;
                warn!(
                    "{option} {} reached: further {what} are not tracked, counted in helios_trace_dropped_total{{what=\"{label}\"}}",
                    cap.unwrap_or_default()
                );
            }
        }
    }
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
async fn run(
    args: ServeArgs,
    listener: std::net::TcpListener,
    mut tracing: Tracing,
    mut exporter: Exporter,
    web: Option<WebConfigFile>,
) -> Result<()> {
    // Handlers before we say "attached": a signal that arrives then must not kill us.
    let stop = stop_signal(None)?;
    let listener = TcpListener::from_std(listener).context("cannot serve on the bound address")?;
    // The address bound, not the one asked for: port 0 picks a free port.
    let address = listener.local_addr()?;
    let (publish, snapshots) = watch::channel(None);
    let limits = ServerLimits {
        max_connections: args.web_max_connections as usize,
        max_connections_per_client: args.web_max_connections_per_client as usize,
        max_requests: args.web_max_requests as usize,
        ..ServerLimits::default()
    };
    let scheme = if web.as_ref().is_some_and(|w| w.config.tls.is_some()) { "https" } else { "http" };
    tracing.start_readers()?;
    let server = tokio::spawn(http::serve(listener, snapshots, limits, web));
    exporter.walk_holders(&mut tracing, args.holders_interval);
    // Ready (the first snapshot is out) before we say so.
    exporter.publish(&mut tracing, &publish);
    eprintln!(
        "helios-trace: attached {} tracepoints; tracing {}; serving {scheme}://{}/metrics",
        tracing.attached().len(),
        tracing.describe_targets(),
        address
    );
    let mut cap_warnings = CapWarnings::default();
    let result = tracing
        .run_until(stop, |tracing, tick| match tick {
            Tick::Second => {
                exporter.publish(tracing, &publish);
                cap_warnings.check(tracing, &args.trace);
            }
            Tick::Drained => exporter.observe_if_many(tracing),
        })
        .await;
    server.abort();
    // Dropping `tracing` detaches the programs.
    result
}
