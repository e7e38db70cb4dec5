//! `helios-trace serve`: the exporter daemon. The HTTP server (http.rs) listens first, so that
//! /healthz can say "starting" while the programs attach; then the tracing loop (session.rs)
//! runs until SIGTERM or SIGINT and, once a second, feeds the engine's transitions to the
//! aggregator (metrics.rs) and publishes a snapshot for the handlers to read.
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Instant,
};

use anyhow::{Context as _, Result};
use tokio::{net::TcpListener, sync::watch};

use super::{Failure, runtime, stop_signal, trace_settings, validate_pids, validate_trace};
use crate::{
    cli::ServeArgs,
    model::{fdtable::FdTable, workload::Workload},
    observe::session::{Tick, Tracing},
    output::{
        http::{self, ServerLimits, Snapshot},
        metrics::{Aggregator, ExportConfig, Identify, SelfMetrics},
    },
    sys::{clock, privileges, proc},
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
    tracing.engine.keep_transitions();
    let mut exporter = Exporter {
        aggregator: Aggregator::new(ExportConfig {
            max_sites: args.max_sites,
            retention_ns: args.trace.retention.as_nanos().try_into().unwrap_or(u64::MAX),
            pid_label: args.pid_label,
        }),
        proc_root: args.proc_root.clone(),
    };
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

struct Exporter {
    aggregator: Aggregator,
    proc_root: PathBuf,
}

/// Transitions the engine keeps before the exporter takes them in between two snapshots: under
/// a flood a second's worth would be millions (and memory the allocator keeps afterwards).
const MAX_PENDING_TRANSITIONS: usize = 16_384;

impl Exporter {
    /// Take in what happened since the last call (counters only; no snapshot).
    fn observe(&mut self, tracing: &mut Tracing, now_ns: u64) {
        let kept = tracing.engine.take_transitions();
        let mut who = ProcIdentify { table: &tracing.engine.table, proc_root: &self.proc_root };
        self.aggregator.observe(&kept, &mut who, now_ns);
    }

    fn observe_if_many(&mut self, tracing: &mut Tracing) {
        if tracing.engine.pending_transitions() >= MAX_PENDING_TRANSITIONS {
            self.observe(tracing, clock::boot_ns());
        }
    }

    /// Take in what happened since the last call and publish the new state.
    fn publish(&mut self, tracing: &mut Tracing, publish: &watch::Sender<Option<Arc<Snapshot>>>) {
        let now_ns = clock::boot_ns();
        tracing.engine.refresh_names();
        self.observe(tracing, now_ns);
        let memory = tracing.socket_memory();
        let tracing = &*tracing;
        let engine = &tracing.engine;
        let mut who = ProcIdentify { table: &engine.table, proc_root: &self.proc_root };
        let frames = |site| engine.stacks.frames(site).cloned();
        let mut socket_memory = |tgid: u32, fd: i32, _: &_| memory.get(&(tgid, fd)).copied();
        let exhaustion = |tgid: u32| tracing.fd_exhaustion_seconds(tgid);
        let exported = self.aggregator.snapshot(
            &engine.table,
            &frames,
            &mut who,
            &mut socket_memory,
            &exhaustion,
            now_ns,
        );
        let counts = tracing.event_counts();
        let own = SelfMetrics {
            events_by_type: engine.events_by_type(),
            events_lost: counts.lost,
            sites_dropped: counts.sites_dropped,
            stack_errors: counts.stack_errors,
            tracked_processes: engine.table.process_count() as u64,
            tracked_fds: engine.table.fd_count() as u64,
            corrections: tracing.corrections(),
            dropped: engine.table.dropped(),
            usage: proc::usage(&self.proc_root, std::process::id()),
        };
        publish.send_replace(Some(Arc::new(Snapshot::new(exported, own, Instant::now()))));
    }
}

/// Names from the table (events carry them), else /proc; workloads from /proc/PID/cgroup.
struct ProcIdentify<'a> {
    table: &'a FdTable,
    proc_root: &'a Path,
}

impl Identify for ProcIdentify<'_> {
    fn comm(&mut self, tgid: u32) -> String {
        self.table
            .process(tgid)
            .map(|p| p.comm.clone())
            .filter(|c| !c.is_empty())
            .or_else(|| proc::comm(self.proc_root, tgid))
            .unwrap_or_default()
    }

    fn workload(&mut self, tgid: u32) -> Option<Workload> {
        proc::cgroup(self.proc_root, tgid).map(|text| Workload::from_proc_cgroup(&text))
    }
}
