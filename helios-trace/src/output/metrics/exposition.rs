//! The Prometheus exposition of one snapshot (ARCHITECTURE.md, "Contracts: Metrics"): a fresh
//! registry per snapshot, holding the aggregated series (aggregate.rs) and the tracer's own
//! numbers, rendered in the text format.
use prometheus::{
    Counter, CounterVec, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use super::aggregate::Exported;
use crate::model::{
    counts::ProgramRuns,
    fdtable::{Corrections, Dropped},
    resources::Usage,
};

/// The tracer's own numbers, for the self metrics.
#[derive(Clone, Debug, Default)]
pub(crate) struct SelfMetrics {
    pub(crate) events_by_type: Vec<(&'static str, u64)>,
    pub(crate) events_lost: u64,
    pub(crate) tracked_processes: u64,
    pub(crate) tracked_fds: u64,
    /// Call sites whose frames are remembered (held, or idle within `--retention`).
    pub(crate) tracked_sites: u64,
    pub(crate) corrections: Corrections,
    /// What --max-processes / --max-fds kept out of the table.
    pub(crate) dropped: Dropped,
    /// New call sites beyond --max-stacks.
    pub(crate) sites_dropped: u64,
    /// Stacks the kernel could not capture (stack map collisions or full, unreadable stacks).
    pub(crate) stack_errors: u64,
    pub(crate) usage: Option<Usage>,
    /// Each kernel program's runs and run time, while the kernel's BPF statistics are on
    /// (empty otherwise: no series rather than zeros that would read as "free").
    pub(crate) programs: Vec<ProgramRuns>,
    /// Facts the snapshots could not have, counted each time one was asked for: open sockets
    /// whose memory, processes whose descriptor limit could not be read.
    pub(crate) unavailable_socket_memory: u64,
    pub(crate) unavailable_fd_limit: u64,
    /// Walks of Python heaps for holders (observe/holders.rs).
    pub(crate) heap_walks: u64,
}

/// A counter with one label, a series per (value, count).
fn counter_by(
    name: &str,
    help: &str,
    label: &str,
    counts: &[(&str, u64)],
) -> prometheus::Result<IntCounterVec> {
    let counter = IntCounterVec::new(Opts::new(name, help), &[label])?;
    for (value, count) in counts {
        counter.with_label_values(&[*value]).inc_by(*count);
    }
    Ok(counter)
}

const WORKLOAD_LABELS: [&str; 4] = ["container_id", "pod_uid", "unit", "comm"];

/// A registry holding one snapshot's series (ARCHITECTURE.md, "Contracts: Metrics"), built
/// afresh for each snapshot: a series that is not in the snapshot is not in the registry.
pub(crate) fn registry(exported: &Exported, own: &SelfMetrics) -> prometheus::Result<Registry> {
    let registry = Registry::new();
    let mut group_labels: Vec<&str> = WORKLOAD_LABELS.to_vec();
    if exported.pid_label {
        group_labels.push("pid");
    }
    let mut kind_labels = group_labels.clone();
    kind_labels.push("kind");
    let mut site_labels = kind_labels.clone();
    site_labels.extend(["site", "frame"]);

    let open_fds = IntGaugeVec::new(
        Opts::new("helios_trace_open_fds", "Descriptors open now, by workload and kind."),
        &kind_labels,
    )?;
    let site_open = IntGaugeVec::new(
        Opts::new("helios_trace_site_open_fds", "Descriptors open now, by the call site that opened them."),
        &site_labels,
    )?;
    let site_opened = IntCounterVec::new(
        Opts::new("helios_trace_site_opened_total", "Descriptors the call site opened while traced."),
        &site_labels,
    )?;
    let site_closed = IntCounterVec::new(
        Opts::new(
            "helios_trace_site_closed_total",
            "Descriptors from the call site that were closed while traced.",
        ),
        &site_labels,
    )?;
    let site_oldest = GaugeVec::new(
        Opts::new(
            "helios_trace_site_oldest_open_seconds",
            "Age of the oldest descriptor of the call site still open.",
        ),
        &site_labels,
    )?;
    let site_memory = IntGaugeVec::new(
        Opts::new(
            "helios_trace_site_socket_memory_bytes",
            "Kernel memory (socket buffers) held by the call site's open sockets.",
        ),
        &site_labels,
    )?;
    let exhaustion = GaugeVec::new(
        Opts::new(
            "helios_trace_process_fd_exhaustion_seconds",
            "At its current growth, seconds until a process of the workload reaches its descriptor limit (EMFILE).",
        ),
        &group_labels,
    )?;
    for group in &exported.groups {
        let key = &group.key;
        let pid = key.pid.map(|p| p.to_string());
        let mut labels: Vec<&str> = vec![
            key.workload.container_id.as_deref().unwrap_or(""),
            key.workload.pod_uid.as_deref().unwrap_or(""),
            key.workload.unit.as_deref().unwrap_or(""),
            &key.comm,
        ];
        if exported.pid_label {
            labels.push(pid.as_deref().unwrap_or(""));
        }
        if let Some(seconds) = group.fd_exhaustion_seconds {
            exhaustion.with_label_values(&labels).set(seconds);
        }
        for (kind, count) in &group.open_by_kind {
            let mut l = labels.clone();
            l.push(kind.as_str());
            open_fds.with_label_values(&l).set(*count as i64);
        }
        for s in &group.sites {
            let site = s.site_label();
            let mut l = labels.clone();
            l.extend([s.kind.as_str(), &site, &s.frame]);
            site_open.with_label_values(&l).set(s.open as i64);
            site_opened.with_label_values(&l).inc_by(s.opened);
            site_closed.with_label_values(&l).inc_by(s.closed);
            if let Some(age) = s.oldest_open_seconds {
                site_oldest.with_label_values(&l).set(age);
            }
            if let Some(bytes) = s.socket_memory_bytes {
                site_memory.with_label_values(&l).set(bytes as i64);
            }
        }
    }
    registry.register(Box::new(open_fds))?;
    registry.register(Box::new(site_open))?;
    registry.register(Box::new(site_opened))?;
    registry.register(Box::new(site_closed))?;
    registry.register(Box::new(site_oldest))?;
    registry.register(Box::new(site_memory))?;
    registry.register(Box::new(exhaustion))?;

    let events = counter_by(
        "helios_trace_events_total",
        "Events read from the kernel, by type: an open and a close for each pair the kernel matched and counted (no record of its own).",
        "event",
        &own.events_by_type,
    )?;
    let lost = IntCounter::new(
        "helios_trace_events_lost_total",
        "Events the kernel could not hand over (ring buffer full, enter record lost, kernel program failed).",
    )?;
    lost.inc_by(own.events_lost);
    let processes =
        IntGauge::new("helios_trace_tracked_processes", "Processes whose descriptors are tracked.")?;
    processes.set(own.tracked_processes as i64);
    let fds = IntGauge::new("helios_trace_tracked_fds", "Descriptors tracked, over all processes.")?;
    fds.set(own.tracked_fds as i64);
    let sites = IntGauge::new(
        "helios_trace_tracked_sites",
        "Call sites whose frames are remembered: held by an open descriptor or a live process, or idle for less than --retention.",
    )?;
    sites.set(own.tracked_sites as i64);
    let corrections = counter_by(
        "helios_trace_reconcile_corrections_total",
        "Descriptors reconciliation with /proc added or removed.",
        "direction",
        &[("added", own.corrections.added), ("removed", own.corrections.removed)],
    )?;
    let dropped = counter_by(
        "helios_trace_dropped_total",
        "What was not tracked: processes or descriptors beyond --max-processes or --max-fds, call sites beyond --max-stacks (their descriptors are under site=\"site-limit\"), stacks the kernel could not capture.",
        "what",
        &[
            ("processes", own.dropped.processes),
            ("fds", own.dropped.fds),
            ("sites", own.sites_dropped),
            ("stacks", own.stack_errors),
        ],
    )?;
    registry.register(Box::new(events))?;
    registry.register(Box::new(lost))?;
    registry.register(Box::new(processes))?;
    registry.register(Box::new(fds))?;
    registry.register(Box::new(sites))?;
    let unavailable = counter_by(
        "helios_trace_facts_unavailable_total",
        "Facts that could not be had when a snapshot asked for them (the socket memory of an open socket, e.g. its network namespace is gone; a process's descriptor limit): the report's sites and processes say why.",
        "fact",
        &[("socket_memory", own.unavailable_socket_memory), ("fd_limit", own.unavailable_fd_limit)],
    )?;
    let heap_walks = IntCounter::new(
        "helios_trace_heap_walks_total",
        "Walks of a CPython process's heap for the holders of its suspected and CLOSE_WAIT sites (at most one per process per --holders-interval, and one more for a site newly suspected).",
    )?;
    heap_walks.inc_by(own.heap_walks);
    registry.register(Box::new(corrections))?;
    registry.register(Box::new(dropped))?;
    registry.register(Box::new(unavailable))?;
    registry.register(Box::new(heap_walks))?;
    // What each kernel program costs, the way ebpf_exporter shows it.
    if !own.programs.is_empty() {
        let runs = IntCounterVec::new(
            Opts::new(
                "helios_trace_bpf_program_runs_total",
                "Runs of each kernel program (while kernel.bpf_stats_enabled is 1).",
            ),
            &["program"],
        )?;
        let seconds = CounterVec::new(
            Opts::new(
                "helios_trace_bpf_program_run_seconds_total",
                "Time spent in each kernel program (while kernel.bpf_stats_enabled is 1).",
            ),
            &["program"],
        )?;
        for p in &own.programs {
            runs.with_label_values(&[p.program.as_str()]).inc_by(p.runs);
            seconds.with_label_values(&[p.program.as_str()]).inc_by(p.run_ns as f64 / 1e9);
        }
        registry.register(Box::new(runs))?;
        registry.register(Box::new(seconds))?;
    }
    // Which build runs where (the revision comes from build.rs): one series of value 1.
    let build = IntGaugeVec::new(
        Opts::new("helios_trace_build_info", "The version and git revision of this helios-trace, as 1."),
        &["version", "revision"],
    )?;
    build.with_label_values(&[env!("CARGO_PKG_VERSION"), env!("HELIOS_TRACE_REVISION")]).set(1);
    registry.register(Box::new(build))?;

    // The conventional process metrics (names as the Prometheus client libraries export them).
    if let Some(usage) = own.usage {
        let cpu =
            Counter::new("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.")?;
        cpu.inc_by(usage.cpu_seconds);
        let gauges = [
            ("process_resident_memory_bytes", "Resident memory size in bytes.", usage.resident_bytes),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes.", usage.virtual_bytes),
            ("process_open_fds", "Number of open file descriptors.", usage.open_fds),
        ];
        registry.register(Box::new(cpu))?;
        for (name, help, value) in gauges {
            let gauge = IntGauge::new(name, help)?;
            gauge.set(value as i64);
            registry.register(Box::new(gauge))?;
        }
    }
    Ok(registry)
}

/// The text exposition format of a registry.
pub(crate) fn render(registry: &Registry) -> prometheus::Result<String> {
    prometheus::TextEncoder::new().encode_to_string(&registry.gather())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Series of one metric in exposition text: labels → value.
    pub(crate) fn series(text: &str, name: &str) -> BTreeMap<String, f64> {
        text.lines()
            .filter_map(|line| {
                let rest = line.strip_prefix(name)?;
                let (labels, value) = rest.rsplit_once(' ')?;
                (labels.is_empty() || labels.starts_with('{'))
                    .then(|| (labels.to_string(), value.parse().unwrap()))
            })
            .collect()
    }

    #[test]
    fn self_metrics_render() {
        let own = SelfMetrics {
            events_by_type: vec![("open", 5), ("close", 4), ("untracked", 1), ("undecodable", 0)],
            events_lost: 3,
            tracked_processes: 2,
            tracked_fds: 9,
            tracked_sites: 4,
            corrections: Corrections { added: 1, removed: 2 },
            dropped: Dropped { processes: 0, fds: 6 },
            sites_dropped: 4,
            stack_errors: 0,
            usage: Some(Usage { cpu_seconds: 1.5, resident_bytes: 4096, virtual_bytes: 8192, open_fds: 7 }),
            programs: vec![ProgramRuns {
                program: "fd_syscall_exit".into(),
                runs: 10,
                run_ns: 2_500_000_000,
            }],
            unavailable_socket_memory: 3,
            unavailable_fd_limit: 0,
            heap_walks: 2,
        };
        let text = render(&registry(&Exported::default(), &own).unwrap()).unwrap();
        let program = r#"{program="fd_syscall_exit"}"#;
        assert_eq!(series(&text, "helios_trace_bpf_program_runs_total")[program], 10.0);
        assert_eq!(series(&text, "helios_trace_bpf_program_run_seconds_total")[program], 2.5);
        // Statistics off: no series at all, rather than zeros that would read as free.
        let off = SelfMetrics { programs: Vec::new(), ..own.clone() };
        let text_off = render(&registry(&Exported::default(), &off).unwrap()).unwrap();
        assert!(!text_off.contains("helios_trace_bpf_program"), "{text_off}");
        assert_eq!(series(&text, "helios_trace_events_total")[r#"{event="open"}"#], 5.0);
        assert_eq!(series(&text, "helios_trace_events_lost_total")[""], 3.0);
        assert_eq!(series(&text, "helios_trace_tracked_fds")[""], 9.0);
        assert_eq!(series(&text, "helios_trace_tracked_sites")[""], 4.0);
        assert_eq!(
            series(&text, "helios_trace_reconcile_corrections_total")[r#"{direction="removed"}"#],
            2.0
        );
        assert_eq!(series(&text, "helios_trace_dropped_total")[r#"{what="fds"}"#], 6.0);
        assert_eq!(series(&text, "helios_trace_dropped_total")[r#"{what="sites"}"#], 4.0);
        assert_eq!(series(&text, "helios_trace_facts_unavailable_total")[r#"{fact="socket_memory"}"#], 3.0);
        assert_eq!(series(&text, "helios_trace_facts_unavailable_total")[r#"{fact="fd_limit"}"#], 0.0);
        assert_eq!(series(&text, "helios_trace_heap_walks_total")[""], 2.0);
        assert_eq!(series(&text, "process_cpu_seconds_total")[""], 1.5);
        assert_eq!(series(&text, "process_open_fds")[""], 7.0);
        let build = series(&text, "helios_trace_build_info");
        let labels = format!(
            r#"{{revision="{}",version="{}"}}"#,
            env!("HELIOS_TRACE_REVISION"),
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(build.get(&labels), Some(&1.0), "{build:?}");
        assert_ne!(env!("HELIOS_TRACE_REVISION"), "unknown", "built from a git checkout");
    }
}
