//! Building the end-of-session report (ARCHITECTURE.md, "Contracts: Report"): from the FdTable,
//! the site counters, the sites' history and their frames, pure: what only /proc and sock_diag
//! know comes in through the closures of [`ReportInput`]. Processes with suspected leaks come
//! first, then the widest; within a process, suspected sites first.
use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, SystemTime},
};

use super::{
    CLOSE_WAIT, Example, ExitedSummary, FactsUnavailable, FdListing, ProcessReport, REPORT_VERSION, Report,
    Resources, SiteReport,
};
use crate::{
    model::{
        counts::EventCounts,
        exited::ExitedProcess,
        fd::{CloseReason, FdKind, SiteId},
        fdmap::FdMap,
        fdtable::{Corrections, FdTable, OpenFd},
        frame::{Frame, SiteOrigin, site_label},
        history::{History, ProcessSeries},
        resources::{CgroupMemory, exhaustion_seconds},
        sites::{ProcessCounters, SiteCounters, SiteStats},
        trend::{self, Evidence, TIME_TO_JUDGE, Trend},
    },
    output::format::{bytes, human_duration, rate, signed_bytes, signed_count, thousands},
};

const EXAMPLES_PER_SITE: usize = 3;

/// What the report needs to know about one open descriptor, beyond the table (from /proc and
/// sock_diag; the session supplies it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FdFacts {
    /// TCP state of a socket ("CLOSE_WAIT").
    pub(crate) tcp_state: Option<String>,
    /// Kernel memory charged to a socket.
    pub(crate) socket_memory: Option<u64>,
    /// Bytes a memfd pins.
    pub(crate) pinned_bytes: Option<u64>,
    /// Why a socket's memory could not be had (its network namespace, its descriptor).
    pub(crate) socket_memory_unavailable: Option<String>,
}

/// A live process's limits and memory now (the session reads them; trends come from History).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ProcessFacts {
    pub(crate) fd_limit: Option<u64>,
    pub(crate) rss_bytes: Option<u64>,
    pub(crate) cgroup: Option<CgroupMemory>,
    /// Why a fact is missing, by the name of its field in `resources` (`fd_limit`,
    /// `rss_bytes`, `memory_current_bytes`).
    pub(crate) unavailable: Vec<(&'static str, String)>,
}

/// What was last read of a process while it ran (`run` keeps it for the processes that exit:
/// what /proc knew of them is gone with them). `Tracing::remember_facts` (observe/report_input.rs)
/// refreshes it once a second.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LastKnown {
    /// When it was read (CLOCK_BOOTTIME ns).
    pub(crate) taken_ns: u64,
    /// Per open descriptor, by (fd, opened_ns): its facts (sockets and memfds) and its detail.
    pub(crate) fds: HashMap<(i32, u64), (FdFacts, Option<String>)>,
    pub(crate) process: ProcessFacts,
}

/// Everything a report is made of. Closures give what only /proc knows, so tests can supply
/// their own.
pub(crate) struct ReportInput<'a> {
    pub(crate) started_at: SystemTime,
    pub(crate) duration: Duration,
    /// CLOCK_BOOTTIME ns at report time.
    pub(crate) now_ns: u64,
    pub(crate) events: EventCounts,
    pub(crate) corrections: Corrections,
    pub(crate) table: &'a FdTable,
    pub(crate) stats: &'a SiteStats,
    pub(crate) frames: &'a dyn Fn(SiteId) -> Vec<Frame>,
    /// What a site's frames cannot say of where its descriptors came from (the goroutines'
    /// creator in a Go program, the listener of sockets a runtime's loop accepted).
    pub(crate) origin: &'a dyn Fn(SiteId) -> SiteOrigin,
    /// Which processes to report.
    pub(crate) include: &'a dyn Fn(u32) -> bool,
    pub(crate) cmdline: &'a dyn Fn(u32) -> Option<String>,
    /// A short description of one open descriptor (path, socket addresses).
    pub(crate) describe: &'a mut dyn FnMut(u32, i32, &OpenFd) -> Option<String>,
    /// What /proc and sock_diag say about an open socket or memfd.
    pub(crate) inspect: &'a mut dyn FnMut(u32, i32, &OpenFd) -> FdFacts,
    /// A live process's limits and memory now.
    pub(crate) process_facts: &'a mut dyn FnMut(u32) -> ProcessFacts,
    /// Include every open descriptor of each process.
    pub(crate) list_fds: bool,
    /// Exited processes to report (as of their exit).
    pub(crate) exited: &'a [ExitedProcess],
    /// What was last read of processes while they ran, for the exited ones.
    pub(crate) last_known: &'a HashMap<u32, LastKnown>,
    pub(crate) history: &'a History,
    pub(crate) min_age: Duration,
}

/// One process to report: alive in the table, or as it was when it exited.
struct ProcessView<'a> {
    tgid: u32,
    comm: &'a str,
    cmdline: Option<String>,
    fds: &'a FdMap<OpenFd>,
    counters: Option<&'a ProcessCounters>,
    /// Ages are measured to this time (the exit, for an exited process).
    now_ns: u64,
    exited: bool,
    /// For an exited process: what was last read of it while it ran, if anything was.
    last: Option<&'a LastKnown>,
}

pub(crate) fn build(input: ReportInput<'_>) -> Report {
    let ReportInput {
        started_at,
        duration,
        now_ns,
        events,
        corrections,
        table,
        stats,
        frames,
        origin,
        include,
        cmdline,
        describe,
        inspect,
        process_facts,
        list_fds,
        exited,
        last_known,
        history,
        min_age,
    } = input;
    let live = table.processes().filter(|(tgid, _)| include(*tgid)).map(|(tgid, process)| ProcessView {
        tgid,
        comm: &process.comm,
        cmdline: cmdline(tgid),
        fds: &process.fds,
        counters: stats.process(tgid),
        now_ns,
        exited: false,
        last: None,
    });
    let gone = exited.iter().map(|e| ProcessView {
        tgid: e.tgid,
        comm: &e.comm,
        cmdline: e.cmdline.clone(),
        fds: &e.fds,
        counters: Some(&e.counters),
        now_ns: e.exited_ns,
        exited: true,
        // Read before the exit (a later process with the pid would have been read after).
        last: last_known.get(&e.tgid).filter(|l| l.taken_ns <= e.exited_ns),
    });
    let context = SiteContext { stats, frames, origin, history, min_age };
    let mut processes: Vec<ProcessReport> = live
        .chain(gone)
        .map(|view| {
            let facts = match view.last {
                _ if !view.exited => Some(process_facts(view.tgid)),
                Some(last) => Some(last.process.clone()),
                None => None,
            };
            process_report(view, &context, describe, inspect, facts, list_fds)
        })
        .collect();
    processes.sort_by(|a, b| {
        b.suspected_leaks
            .cmp(&a.suspected_leaks)
            .then(leak_width(b).cmp(&leak_width(a)))
            .then(b.open_fds.cmp(&a.open_fds))
            .then(a.pid.cmp(&b.pid))
            .then(a.exited.cmp(&b.exited))
    });
    Report {
        helios_trace_report: REPORT_VERSION,
        started_at: humantime::format_rfc3339_seconds(started_at).to_string(),
        duration_seconds: duration.as_secs_f64(),
        events,
        reconcile_corrections: corrections,
        dropped: table.dropped(),
        min_age_seconds: min_age.as_secs_f64(),
        suspected_leaks: processes.iter().map(|p| p.suspected_leaks).sum(),
        judged: duration >= TIME_TO_JUDGE,
        judge_after_seconds: TIME_TO_JUDGE.as_secs_f64(),
        facts_unavailable: facts_unavailable(&processes),
        command: None,
        processes,
    }
}

/// The facts the report is missing, counted: sockets, and processes by resource.
fn facts_unavailable(processes: &[ProcessReport]) -> FactsUnavailable {
    let mut counts = FactsUnavailable::default();
    for process in processes {
        counts.socket_memory += process.sites.iter().map(|s| s.unmeasured_sockets).sum::<u64>();
        let Some(resources) = &process.resources else { continue };
        let missing = |field: &str| resources.unavailable.contains_key(field) as u64;
        counts.fd_limit += missing("fd_limit");
        counts.rss += missing("rss_bytes");
        counts.cgroup_memory += missing("memory_current_bytes");
    }
    counts
}

/// What every site of every process is judged against.
struct SiteContext<'a> {
    stats: &'a SiteStats,
    frames: &'a dyn Fn(SiteId) -> Vec<Frame>,
    origin: &'a dyn Fn(SiteId) -> SiteOrigin,
    history: &'a History,
    min_age: Duration,
}

fn process_report(
    view: ProcessView<'_>,
    context: &SiteContext<'_>,
    describe: &mut dyn FnMut(u32, i32, &OpenFd) -> Option<String>,
    inspect: &mut dyn FnMut(u32, i32, &OpenFd) -> FdFacts,
    facts: Option<ProcessFacts>,
    list_fds: bool,
) -> ProcessReport {
    let ProcessView { tgid, comm, cmdline, fds, counters, now_ns, exited, last } = view;
    // Facts of a live process are read now; of an exited one, remembered from its last look,
    // and only for a site whose every open descriptor that look saw (a sum over some would
    // pass for the site's).
    let remembered = |fd: i32, e: &OpenFd| last.and_then(|last| last.fds.get(&(fd, e.opened_ns)));
    let mut inspect = |fd: i32, e: &OpenFd| match remembered(fd, e) {
        _ if !exited => inspect(tgid, fd, e),
        Some((facts, _)) => facts.clone(),
        None => FdFacts::default(),
    };
    // A detail remembered, else what the table itself knows (the path the open named).
    let mut describe = |fd: i32, e: &OpenFd| match remembered(fd, e) {
        Some((_, Some(detail))) => Some(detail.clone()),
        _ => describe(tgid, fd, e),
    };
    let age = |opened_ns: u64| now_ns.saturating_sub(opened_ns) as f64 / 1e9;
    // Open descriptors grouped by (kind, site), oldest first within each group.
    let mut groups: HashMap<(FdKind, SiteId), Vec<(i32, &OpenFd)>> = HashMap::new();
    let mut by_kind: BTreeMap<FdKind, u64> = BTreeMap::new();
    for (fd, entry) in fds.iter() {
        groups.entry((entry.kind, entry.site)).or_default().push((fd, entry));
        *by_kind.entry(entry.kind).or_default() += 1;
    }
    for (key, counted) in counters.into_iter().flatten() {
        if counted.opened > 0 {
            groups.entry(*key).or_default();
        }
    }
    let mut sites: Vec<SiteReport> = groups
        .into_iter()
        .map(|((kind, site), mut open)| {
            open.sort_by_key(|(fd, e)| (e.opened_ns, *fd));
            let own = counters.and_then(|c| c.get(&(kind, site))).copied().unwrap_or_default();
            let retired = context.stats.retired(kind, site);
            // An exited process's own counters are already in the sum of exited ones.
            let mut everywhere = if exited { retired.map(|r| r.counters).unwrap_or(own) } else { own };
            if !exited && let Some(r) = retired {
                everywhere.merge(&r.counters);
            }
            let processes = retired.map_or(1, |r| r.processes);
            let verdict = context.history.series(tgid, kind, site).and_then(|series| {
                let start = series.first()?.t_ns;
                let min_age_ns = context.min_age.as_nanos() as u64;
                let evidence = Evidence {
                    aged: open
                        .iter()
                        .filter(|(_, e)| now_ns.saturating_sub(e.opened_ns) >= min_age_ns)
                        .count() as u64,
                    open_from_window: open.iter().filter(|(_, e)| e.opened_ns >= start).count() as u64,
                };
                trend::assess(&series.window(), evidence)
            });
            let mut tcp_states: BTreeMap<String, u64> = BTreeMap::new();
            let known =
                !exited || (last.is_some() && open.iter().all(|(fd, e)| remembered(*fd, e).is_some()));
            let mut socket_memory = (kind == FdKind::Socket && known).then_some(0u64);
            let mut pinned = (kind == FdKind::Memfd && known).then_some(0u64);
            // Sockets whose memory could not be had, and the first reason.
            let mut unmeasured = (0u64, None);
            if socket_memory.is_some() || pinned.is_some() {
                for (fd, e) in &open {
                    let facts = inspect(*fd, e);
                    if let Some(why) = facts.socket_memory_unavailable {
                        unmeasured.0 += 1;
                        unmeasured.1.get_or_insert(why);
                    }
                    if let Some(state) = facts.tcp_state {
                        *tcp_states.entry(state).or_default() += 1;
                    }
                    if let (Some(total), Some(bytes)) = (socket_memory.as_mut(), facts.socket_memory) {
                        *total += bytes;
                    }
                    if let (Some(total), Some(bytes)) = (pinned.as_mut(), facts.pinned_bytes) {
                        *total += bytes;
                    }
                }
            }
            let examples = open
                .iter()
                .take(EXAMPLES_PER_SITE)
                .map(|(fd, e)| Example { fd: *fd, age_seconds: age(e.opened_ns), detail: describe(*fd, e) })
                .collect();
            let frames = (context.frames)(site);
            // A sum missing some sockets is not the site's memory: null, and why.
            let socket_memory_unavailable = unmeasured
                .1
                .map(|why| format!("{} of {} open sockets not measured: {why}", unmeasured.0, open.len()));
            if socket_memory_unavailable.is_some() {
                socket_memory = None;
            }
            SiteReport {
                site: site.label(),
                kind,
                frame: site_label(&frames).unwrap_or_else(|| site.label()),
                open: open.len() as u64,
                opened: own.opened,
                closed: own.closed,
                oldest_age_seconds: open.first().map(|(_, e)| age(e.opened_ns)),
                closed_by: closed_by(&own),
                closed_only_at_exit: everywhere.closed_only_at_exit(processes),
                exited_processes: retired.map(|r| ExitedSummary {
                    processes: r.processes,
                    opened: r.counters.opened,
                    closed: r.counters.closed,
                    closed_by: closed_by(&r.counters),
                }),
                growth_per_minute: verdict.as_ref().map(|v| v.growth_per_minute),
                suspected_leak: verdict.as_ref().is_some_and(|v| v.suspected),
                why: verdict
                    .as_ref()
                    .filter(|v| v.suspected)
                    .map(|v| explain(v.growth_per_minute, &v.trend, context.min_age)),
                trend: verdict.map(|v| v.trend),
                close_wait: tcp_states.get(CLOSE_WAIT).copied().unwrap_or(0),
                tcp_states,
                socket_memory_bytes: socket_memory,
                socket_memory_unavailable,
                unmeasured_sockets: unmeasured.0,
                pinned_bytes: pinned,
                frames,
                origin: (context.origin)(site),
                examples,
                holders: None,
            }
        })
        .collect();
    sites.sort_by(|a, b| {
        b.suspected_leak
            .cmp(&a.suspected_leak)
            .then(b.close_wait.cmp(&a.close_wait))
            .then(b.open.cmp(&a.open))
            .then(b.opened.cmp(&a.opened))
            .then_with(|| a.site.cmp(&b.site))
            .then(a.kind.cmp(&b.kind))
    });
    let resources =
        facts.map(|facts| resources(facts, fds.len() as u64, context.history.process(tgid), &sites));
    ProcessReport {
        pid: tgid,
        comm: comm.to_string(),
        cmdline,
        facts_before_exit_seconds: last.map(|l| now_ns.saturating_sub(l.taken_ns) as f64 / 1e9),
        open_fds: fds.len() as u64,
        by_kind,
        exited,
        suspected_leaks: sites.iter().filter(|s| s.suspected_leak).count() as u64,
        growth_per_minute: sites.iter().filter_map(|s| s.growth_per_minute).sum(),
        resources,
        sites,
        heap: None,
        fds: list_fds.then(|| {
            fds.iter()
                .map(|(fd, e)| FdListing {
                    fd,
                    kind: e.kind,
                    site: e.site.label(),
                    cloexec: e.cloexec,
                    inherited: e.inherited,
                })
                .collect()
        }),
    }
}

/// Per hour, from a per-second rate.
const HOUR: f64 = 3600.0;

/// Limits, memory and their projections for one live process.
fn resources(
    facts: ProcessFacts,
    open_fds: u64,
    series: Option<&ProcessSeries>,
    sites: &[SiteReport],
) -> Resources {
    let slope = |s: &trend::Series| trend::theil_sen(&s.window());
    let fd_rate = series.and_then(|s| slope(&s.fds));
    let rss_rate = series.and_then(|s| slope(&s.rss));
    let memory_rate = series.and_then(|s| slope(&s.cgroup_memory));
    let memory_current = facts.cgroup.map(|c| c.current);
    let mut unavailable: BTreeMap<&'static str, String> = facts.unavailable.into_iter().collect();
    let socket_memory_bytes = match sites.iter().find_map(|s| s.socket_memory_unavailable.as_ref()) {
        Some(why) => {
            unavailable.insert("socket_memory_bytes", why.clone());
            None
        }
        None => Some(sites.iter().filter_map(|s| s.socket_memory_bytes).sum()),
    };
    let memory_limit = facts.cgroup.and_then(|c| c.limit);
    let mut resources = Resources {
        fd_limit: facts.fd_limit,
        fd_growth_per_hour: fd_rate.map(|r| r * HOUR),
        fd_exhaustion_seconds: exhaustion_seconds(facts.fd_limit, open_fds, fd_rate),
        rss_bytes: facts.rss_bytes,
        rss_growth_bytes_per_hour: rss_rate.map(|r| r * HOUR),
        memory_current_bytes: memory_current,
        memory_limit_bytes: memory_limit,
        memory_growth_bytes_per_hour: memory_rate.map(|r| r * HOUR),
        memory_exhaustion_seconds: memory_current
            .and_then(|current| exhaustion_seconds(memory_limit, current, memory_rate)),
        socket_memory_bytes,
        unavailable,
        summary: None,
    };
    resources.summary = resource_summary(&resources, sites);
    resources
}

/// Joins the memory trend with the fastest growing site, and the projections, in a sentence.
fn resource_summary(r: &Resources, sites: &[SiteReport]) -> Option<String> {
    let mut parts = Vec::new();
    let growing = sites.iter().filter(|s| s.growth_per_minute.is_some_and(|g| g > 0.0)).max_by(|a, b| {
        a.growth_per_minute.partial_cmp(&b.growth_per_minute).unwrap_or(std::cmp::Ordering::Equal)
    });
    if let (Some(rss), Some(site)) = (r.rss_growth_bytes_per_hour, growing) {
        let what = match site.kind {
            FdKind::Socket => "sockets".to_string(),
            FdKind::File => "files".to_string(),
            kind => format!("{kind} descriptors"),
        };
        parts.push(format!(
            "RSS {}/h while open {what} at {} grew {}/h",
            signed_bytes(rss),
            site.frame,
            signed_count(site.growth_per_minute.unwrap_or(0.0) * 60.0)
        ));
    }
    if let (Some(seconds), Some(limit), Some(rate)) =
        (r.fd_exhaustion_seconds, r.fd_limit, r.fd_growth_per_hour)
    {
        parts.push(format!(
            "at {}/h, the fd limit of {} is reached in {}",
            signed_count(rate),
            thousands(limit),
            human_duration(seconds)
        ));
    }
    if let (Some(seconds), Some(limit)) = (r.memory_exhaustion_seconds, r.memory_limit_bytes) {
        parts.push(format!(
            "the cgroup memory limit of {} is reached in {}",
            bytes(limit as f64),
            human_duration(seconds)
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// "+60/min for 45.0s; none of the 45 opened since then closed; 35 older than 10s (trend p=1e-9)".
fn explain(growth_per_minute: f64, t: &Trend, min_age: Duration) -> String {
    let (opened, still) = (t.opened_in_window, t.still_open_from_window);
    let fate = if opened > 0 && still >= opened {
        format!("none of the {} opened since then closed", thousands(opened))
    } else {
        format!("{} of the {} opened since then still open", thousands(still), thousands(opened))
    };
    format!(
        "{} for {}; {fate}; {} older than {} (trend p={:.0e})",
        rate(growth_per_minute),
        human_duration(t.window_seconds),
        thousands(t.older_than_min_age),
        humantime::format_duration(min_age),
        t.p_value.max(1e-300),
    )
}

fn closed_by(counters: &SiteCounters) -> BTreeMap<CloseReason, u64> {
    CloseReason::ALL
        .iter()
        .filter(|r| counters.closed_by[r.index()] > 0)
        .map(|r| (*r, counters.closed_by[r.index()]))
        .collect()
}

/// Descriptors a process opened under tracing and still holds: what ranks it.
fn leak_width(process: &ProcessReport) -> u64 {
    process.sites.iter().filter(|s| s.site != SiteId::BeforeTrace.label()).map(|s| s.open).sum()
}

#[cfg(test)]
pub(super) mod tests {
    use smallvec::smallvec;

    use super::*;
    use crate::{
        model::{
            event::{Event, Op, StackIds},
            fd::FdDetail,
            fdtable::{FdChange, ObservedFd, Transition},
            frame::{FrameDisplay, Language},
        },
        output::report::{text::to_text, to_json},
    };

    fn open_event(tgid: u32, fd: i32, ts_ns: u64, kind: FdKind) -> Event {
        Event {
            tgid,
            tid: tgid,
            ts_ns,
            stacks: StackIds::default(),
            op: Op::Open {
                fds: smallvec![fd],
                kind,
                detail: FdDetail::Path(b"/tmp/x".to_vec().into()),
                cloexec: false,
                dirfd: None,
            },
        }
    }

    pub(in crate::output::report) fn sample() -> (FdTable, SiteStats) {
        let mut table = FdTable::new();
        let mut stats = SiteStats::default();
        let mut out: Vec<Transition> = Vec::new();
        table.insert_observed(
            7,
            "leaky",
            [(0, ObservedFd { kind: FdKind::Device, detail: FdDetail::None, cloexec: false })],
            SiteId::BeforeTrace,
            1_000_000_000,
            &mut out,
        );
        for (fd, ts) in [(3, 2_000_000_000u64), (4, 3_000_000_000), (5, 4_000_000_000)] {
            table.apply(&mut open_event(7, fd, ts, FdKind::Socket), SiteId::Stack(0xab), &mut out);
        }
        table.apply(&mut open_event(7, 6, 4_000_000_000, FdKind::File), SiteId::Stack(0xcd), &mut out);
        table.apply(
            &mut Event {
                tgid: 7,
                tid: 7,
                ts_ns: 5_000_000_000,
                stacks: StackIds::default(),
                op: Op::Close { fd: 6, number_taken: false },
            },
            SiteId::NoStack,
            &mut out,
        );
        for t in &out {
            stats.observe(t, 0);
        }
        (table, stats)
    }

    fn native_frame() -> Frame {
        Frame {
            symbol: None,
            file: None,
            line: None,
            module: Some("/usr/bin/leaky".into()),
            address: Some(0x55d0c0a01010),
            offset: Some(0x1010),
            symbol_offset: None,
            inlined: false,
            language: Language::Native,
            interpreter: false,
        }
    }

    /// What only the session knows, for a test report.
    struct Extras<'a> {
        history: &'a History,
        exited: &'a [ExitedProcess],
        last_known: &'a HashMap<u32, LastKnown>,
        now_ns: u64,
        states: &'a dyn Fn(i32) -> Option<String>,
        /// Why a socket's memory could not be had.
        unmeasured: &'a dyn Fn(i32) -> Option<String>,
    }

    fn build_with(table: &FdTable, stats: &SiteStats, extras: Extras<'_>) -> Report {
        let frames = |site: SiteId| match site {
            SiteId::Stack(_) => vec![native_frame()],
            _ => Vec::new(),
        };
        let mut describe = |_: u32, fd: i32, _: &OpenFd| Some(format!("fd{fd}"));
        let mut inspect = |_: u32, fd: i32, _: &OpenFd| {
            let unavailable = (extras.unmeasured)(fd);
            FdFacts {
                tcp_state: (extras.states)(fd),
                socket_memory: unavailable.is_none().then_some(1000 + fd as u64),
                pinned_bytes: None,
                socket_memory_unavailable: unavailable,
            }
        };
        let mut process_facts = |_: u32| ProcessFacts {
            fd_limit: Some(64),
            rss_bytes: Some(5_000_000),
            cgroup: None,
            unavailable: vec![("memory_current_bytes", "no memory cgroup in \"\"".to_string())],
        };
        build(ReportInput {
            started_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_773_478_020),
            duration: Duration::from_secs(30),
            now_ns: extras.now_ns,
            events: EventCounts { received: 5, ..EventCounts::default() },
            corrections: Corrections::default(),
            table,
            stats,
            frames: &frames,
            origin: &|_| SiteOrigin::default(),
            include: &|_| true,
            cmdline: &|_| Some("leaky --serve".into()),
            describe: &mut describe,
            inspect: &mut inspect,
            process_facts: &mut process_facts,
            list_fds: true,
            exited: extras.exited,
            last_known: extras.last_known,
            history: extras.history,
            min_age: Duration::from_secs(10),
        })
    }

    pub(in crate::output::report) fn build_sample(table: &FdTable, stats: &SiteStats) -> Report {
        let history = History::default();
        build_with(
            table,
            stats,
            Extras {
                history: &history,
                exited: &[],
                last_known: &HashMap::new(),
                now_ns: 10_000_000_000,
                states: &|_| None,
                unmeasured: &|_| None,
            },
        )
    }

    #[test]
    fn groups_by_site_widest_first() {
        let (table, stats) = sample();
        let report = build_sample(&table, &stats);
        assert_eq!(report.started_at, "2026-03-14T08:47:00Z");
        let p = &report.processes[0];
        assert_eq!((p.pid, p.comm.as_str(), p.open_fds), (7, "leaky", 4));
        assert_eq!(p.by_kind, BTreeMap::from([(FdKind::Socket, 3), (FdKind::Device, 1)]));
        let first = &p.sites[0];
        assert_eq!(
            (first.site.as_str(), first.kind, first.open, first.opened, first.closed),
            ("00000000000000ab", FdKind::Socket, 3, 3, 0)
        );
        assert_eq!(first.oldest_age_seconds, Some(8.0));
        assert_eq!(first.examples.iter().map(|e| e.fd).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(first.frames.len(), 1);
        assert_eq!(first.frame, "leaky+0x1010", "the telling frame, as the metrics label it");
        let before = p.sites.iter().find(|s| s.site == "before-trace").unwrap();
        assert!(before.frames.is_empty());
        assert_eq!(before.frame, "before-trace");
        // A site whose every descriptor was closed is listed with open 0.
        let clean = p.sites.iter().find(|s| s.site == "00000000000000cd").unwrap();
        assert_eq!((clean.open, clean.opened, clean.closed), (0, 1, 1));
        assert_eq!(clean.closed_by, BTreeMap::from([(CloseReason::Close, 1)]));
        assert_eq!(clean.oldest_age_seconds, None);
    }

    #[test]
    fn json_follows_the_contract() {
        let (table, stats) = sample();
        let json: serde_json::Value = serde_json::from_str(&to_json(&build_sample(&table, &stats))).unwrap();
        assert_eq!(json["helios_trace_report"], 1);
        assert_eq!(json["duration_seconds"], 30.0);
        assert_eq!((json["judged"].as_bool(), json["judge_after_seconds"].as_f64()), (Some(true), Some(9.0)));
        assert_eq!(json["events"]["received"], 5);
        assert_eq!(json["events"]["lost"], 0);
        let p = &json["processes"][0];
        assert_eq!(p["pid"], 7);
        assert_eq!(p["cmdline"], "leaky --serve");
        assert_eq!(p["by_kind"]["socket"], 3);
        let site = &p["sites"][0];
        assert_eq!(site["kind"], "socket");
        assert_eq!(site["frames"][0]["module"], "/usr/bin/leaky");
        assert_eq!(site["frames"][0]["symbol"], serde_json::Value::Null);
        assert_eq!(site["frame"], "leaky+0x1010");
        assert_eq!(site["examples"][0]["detail"], "fd3");
        assert_eq!(
            p["fds"][0],
            serde_json::json!({"fd": 0, "kind": "device", "site": "before-trace", "cloexec": false, "inherited": false})
        );
    }

    /// A process whose socket site grows by one a second for a minute (every one kept), next to
    /// a file site that opens and closes all the time.
    fn leaking(seconds: u64) -> (FdTable, SiteStats, History) {
        let (mut table, mut stats, mut history) = (FdTable::new(), SiteStats::default(), History::default());
        let mut out: Vec<Transition> = Vec::new();
        for t in 0..seconds {
            let ts = (t + 1) * 1_000_000_000;
            table.apply(
                &mut open_event(7, 100 + t as i32, ts, FdKind::Socket),
                SiteId::Stack(0x1eaf),
                &mut out,
            );
            for _ in 0..50 {
                table.apply(&mut open_event(7, 3, ts, FdKind::File), SiteId::Stack(0xc1ea), &mut out);
                let mut close = Event {
                    tgid: 7,
                    tid: 7,
                    ts_ns: ts,
                    stacks: StackIds::default(),
                    op: Op::Close { fd: 3, number_taken: false },
                };
                table.apply(&mut close, SiteId::NoStack, &mut out);
            }
            for t in out.drain(..) {
                stats.observe(&t, 0);
            }
            history.sample(ts, &table, &stats, |_| false, |_| Default::default());
        }
        (table, stats, history)
    }

    /// Sockets whose memory cannot be had make their site's sum null and say why; the process
    /// and the report count them, and nothing else changes.
    #[test]
    fn unmeasured_sockets_are_null_explained_and_counted() {
        let (table, stats, history) = leaking(10);
        let why = "a socket of network namespace net:[4026532290]: its descriptor could not be duplicated";
        let unmeasured = |fd: i32| (fd % 2 == 0).then(|| why.to_string());
        let report = build_with(
            &table,
            &stats,
            Extras {
                history: &history,
                exited: &[],
                last_known: &HashMap::new(),
                now_ns: 10_000_000_000,
                states: &|_| None,
                unmeasured: &unmeasured,
            },
        );
        let p = &report.processes[0];
        let leak = p.sites.iter().find(|s| s.kind == FdKind::Socket).unwrap();
        assert_eq!(leak.open, 10);
        assert_eq!(leak.socket_memory_bytes, None, "a partial sum is not the site's memory");
        assert_eq!(
            leak.socket_memory_unavailable.as_deref(),
            Some(format!("5 of 10 open sockets not measured: {why}").as_str())
        );
        let resources = p.resources.as_ref().unwrap();
        assert_eq!(resources.socket_memory_bytes, None);
        assert!(resources.unavailable["socket_memory_bytes"].ends_with(why));
        assert_eq!(resources.fd_limit, Some(64), "the other facts are there");
        assert_eq!(
            report.facts_unavailable,
            FactsUnavailable { socket_memory: 5, fd_limit: 0, rss: 0, cgroup_memory: 1 }
        );
        let json: serde_json::Value = serde_json::from_str(&to_json(&report)).unwrap();
        assert_eq!(json["facts_unavailable"]["socket_memory"], 5);
        let site = &json["processes"][0]["sites"][0];
        assert!(site["socket_memory_bytes"].is_null());
        assert!(site["socket_memory_unavailable"].as_str().unwrap().contains("net:[4026532290]"));
        assert!(site.get("unmeasured_sockets").is_none());
        let text = super::super::text::to_text(&report, crate::model::frame::FrameDisplay::Readable);
        assert!(
            text.contains("socket memory unknown: 5 of 10 open sockets not measured: a socket"),
            "{text}"
        );
        assert!(text.contains("memory_current_bytes unknown: no memory cgroup"), "{text}");
        let unavailable = &json["processes"][0]["resources"]["unavailable"];
        assert_eq!(unavailable["memory_current_bytes"], "no memory cgroup in \"\"");
        // All measured: the sum, and no reason.
        let report = build_with(
            &table,
            &stats,
            Extras {
                history: &history,
                exited: &[],
                last_known: &HashMap::new(),
                now_ns: 10_000_000_000,
                states: &|_| None,
                unmeasured: &|_| None,
            },
        );
        let leak = report.processes[0].sites.iter().find(|s| s.kind == FdKind::Socket).unwrap();
        assert_eq!(leak.socket_memory_bytes, Some((100..110).map(|fd| 1000 + fd as u64).sum()));
        assert_eq!(leak.socket_memory_unavailable, None);
        assert_eq!(report.facts_unavailable.socket_memory, 0);
    }

    #[test]
    fn growing_sites_are_suspected_ranked_first_and_explained() {
        let (table, stats, history) = leaking(60);
        let states = |fd: i32| Some(if fd % 2 == 0 { CLOSE_WAIT } else { "ESTABLISHED" }.to_string());
        let report = build_with(
            &table,
            &stats,
            Extras {
                history: &history,
                exited: &[],
                last_known: &HashMap::new(),
                now_ns: 60_000_000_000,
                states: &states,
                unmeasured: &|_| None,
            },
        );
        assert_eq!(report.suspected_leaks, 1);
        let p = &report.processes[0];
        assert_eq!(p.suspected_leaks, 1);
        let leak = &p.sites[0];
        assert_eq!((leak.site.as_str(), leak.suspected_leak), ("0000000000001eaf", true));
        assert_eq!(leak.frame, "leaky+0x1010");
        assert!((leak.growth_per_minute.unwrap() - 60.0).abs() < 1.0, "{:?}", leak.growth_per_minute);
        let why = leak.why.as_deref().unwrap();
        assert!(
            why.starts_with("+60/min for 59.0s; none of the 59 opened since then closed; 50 older than 10s"),
            "{why}"
        );
        assert_eq!(leak.close_wait, 30);
        assert_eq!(
            leak.tcp_states,
            BTreeMap::from([("CLOSE_WAIT".to_string(), 30), ("ESTABLISHED".to_string(), 30)])
        );
        let churn = p.sites.iter().find(|s| s.kind == FdKind::File).unwrap();
        assert!(!churn.suspected_leak);
        assert_eq!((churn.open, churn.opened, churn.closed), (0, 3000, 3000));
        let json: serde_json::Value = serde_json::from_str(&to_json(&report)).unwrap();
        let site = &json["processes"][0]["sites"][0];
        assert_eq!(site["suspected_leak"], true);
        assert_eq!(site["close_wait"], 30);
        assert_eq!(site["trend"]["samples"], 60);
        assert!(site["trend"]["p_value"].as_f64().unwrap() < 1e-6);
        assert_eq!(json["suspected_leaks"], 1);
        assert_eq!(json["min_age_seconds"], 10.0);
        let text = to_text(&report, FrameDisplay::Readable);
        assert!(text.contains("1 suspected leak"), "{text}");
        assert!(text.contains("Suspected leaks"), "{text}");
        assert!(text.contains("SUSPECTED LEAK: +60/min for 59.0s"), "{text}");
        assert!(text.contains("CLOSE_WAIT 30: the peer hung up"), "{text}");
        assert!(text.contains("(close 3000)"), "{text}");
    }

    #[test]
    fn an_exited_process_is_reported_as_of_its_exit() {
        let (table, stats) = sample();
        let fds = table.process(7).unwrap().fds.clone();
        let mut counters = stats.process(7).cloned().unwrap();
        counters
            .get_mut(&(FdKind::Socket, SiteId::Stack(0xab)))
            .unwrap()
            .record(FdChange::Closed(CloseReason::Exit));
        let exited = [ExitedProcess {
            tgid: 9,
            comm: "gone".into(),
            cmdline: Some("gone --now".into()),
            exited_ns: 6_000_000_000,
            fds,
            counters,
        }];
        let history = History::default();
        let report = build_with(
            &FdTable::new(),
            &stats,
            Extras {
                history: &history,
                exited: &exited,
                last_known: &HashMap::new(),
                now_ns: 99_000_000_000,
                states: &|_| None,
                unmeasured: &|_| None,
            },
        );
        let p = &report.processes[0];
        assert_eq!((p.pid, p.exited, p.open_fds), (9, true, 4));
        let site = &p.sites[0];
        assert_eq!((site.open, site.opened), (3, 3));
        assert_eq!(site.oldest_age_seconds, Some(4.0), "age at the exit, not at the report");
        assert_eq!(site.closed_by, BTreeMap::from([(CloseReason::Exit, 1)]));
        assert!(
            to_text(&report, FrameDisplay::Readable)
                .contains("PID 9 gone [gone --now] (exited; open at its exit): 4 open")
        );
    }

    /// `run`: an exited process's sockets, details and resources are as last read while it ran;
    /// what was read after its exit (another process with the pid) is not its own.
    #[test]
    fn an_exited_process_keeps_what_was_last_read_while_it_ran() {
        let (table, stats) = sample();
        let fds = table.process(7).unwrap().fds.clone();
        let counters = stats.process(7).cloned().unwrap();
        let exited_ns = 6_000_000_000;
        let exited = [ExitedProcess {
            tgid: 9,
            comm: "gone".into(),
            cmdline: None,
            exited_ns,
            fds: fds.clone(),
            counters,
        }];
        let close_wait =
            FdFacts { tcp_state: Some(CLOSE_WAIT.into()), socket_memory: Some(100), ..FdFacts::default() };
        let remembered: HashMap<(i32, u64), (FdFacts, Option<String>)> = fds
            .iter()
            .map(|(fd, e)| {
                let facts = if e.kind == FdKind::Socket { close_wait.clone() } else { FdFacts::default() };
                ((fd, e.opened_ns), (facts, Some(format!("was fd{fd}"))))
            })
            .collect();
        let process =
            ProcessFacts { fd_limit: Some(64), rss_bytes: Some(1 << 20), ..ProcessFacts::default() };
        let report_with = |taken_ns: u64| {
            let last = LastKnown { taken_ns, fds: remembered.clone(), process: process.clone() };
            let last_known = HashMap::from([(9, last)]);
            let history = History::default();
            build_with(
                &FdTable::new(),
                &stats,
                Extras {
                    history: &history,
                    exited: &exited,
                    last_known: &last_known,
                    now_ns: 99_000_000_000,
                    states: &|_| None,
                    unmeasured: &|_| None,
                },
            )
        };
        let report = report_with(exited_ns - 500_000_000);
        let p = &report.processes[0];
        assert_eq!(p.facts_before_exit_seconds, Some(0.5));
        assert_eq!(p.resources.as_ref().unwrap().rss_bytes, Some(1 << 20));
        let sockets = p.sites.iter().find(|s| s.kind == FdKind::Socket).unwrap();
        assert_eq!(sockets.close_wait, sockets.open);
        assert_eq!(sockets.socket_memory_bytes, Some(100 * sockets.open));
        assert!(sockets.examples.iter().all(|e| e.detail == Some(format!("was fd{}", e.fd))));
        // A socket opened after the last look: its site has no facts (not a partial sum), and
        // its detail is what the table knows.
        let (late_fd, late) = fds.iter().find(|(_, e)| e.kind == FdKind::Socket).unwrap();
        let mut partial = remembered.clone();
        partial.remove(&(late_fd, late.opened_ns));
        let last = LastKnown { taken_ns: exited_ns - 1, fds: partial, process: process.clone() };
        let last_known = HashMap::from([(9, last)]);
        let history = History::default();
        let extras = Extras {
            history: &history,
            exited: &exited,
            last_known: &last_known,
            now_ns: 99_000_000_000,
            states: &|_| None,
            unmeasured: &|_| None,
        };
        let report = build_with(&FdTable::new(), &stats, extras);
        let p = &report.processes[0];
        let site =
            p.sites.iter().find(|s| s.kind == FdKind::Socket && s.examples.iter().any(|e| e.fd == late_fd));
        let site = site.unwrap();
        assert_eq!((site.close_wait, site.socket_memory_bytes), (0, None));
        let example = site.examples.iter().find(|e| e.fd == late_fd).unwrap();
        assert_eq!(example.detail, Some(format!("fd{late_fd}")));
        // Read after the exit: not this process's.
        let report = report_with(exited_ns + 1);
        let p = &report.processes[0];
        assert_eq!((p.facts_before_exit_seconds, p.resources.is_none()), (None, true));
        assert!(p.sites.iter().all(|s| s.close_wait == 0 && s.socket_memory_bytes.is_none()));
    }

    #[test]
    fn sites_closed_only_by_exit_elsewhere_are_flagged() {
        let (mut table, mut stats) = (FdTable::new(), SiteStats::default());
        let mut out: Vec<Transition> = Vec::new();
        // A previous generation (pid 5) opened three at the site and held them until it exited.
        for fd in [3, 4, 5] {
            table.apply(&mut open_event(5, fd, 1, FdKind::File), SiteId::Stack(0xab), &mut out);
        }
        table.apply(
            &mut Event { tgid: 5, tid: 5, ts_ns: 2, stacks: StackIds::default(), op: Op::Exit },
            SiteId::NoStack,
            &mut out,
        );
        // The current one (pid 6) holds one.
        table.apply(&mut open_event(6, 3, 3, FdKind::File), SiteId::Stack(0xab), &mut out);
        for t in &out {
            stats.observe(t, 0);
        }
        let history = History::default();
        let report = build_with(
            &table,
            &stats,
            Extras {
                history: &history,
                exited: &[],
                last_known: &HashMap::new(),
                now_ns: 10,
                states: &|_| None,
                unmeasured: &|_| None,
            },
        );
        let site = &process_of(&report, 6).sites[0];
        assert!(site.closed_only_at_exit);
        let e = site.exited_processes.as_ref().unwrap();
        assert_eq!((e.processes, e.opened, e.closed), (1, 3, 3));
        assert!(
            to_text(&report, FrameDisplay::Readable)
                .contains("closed only ever by process exit (3 in 1 exited process)")
        );
    }

    fn process_of(report: &Report, pid: u32) -> &ProcessReport {
        report.processes.iter().find(|p| p.pid == pid).unwrap()
    }

    #[test]
    fn resources_project_exhaustion_and_join_memory_with_the_growing_site() {
        let mut series = ProcessSeries::default();
        for t in 0..20u64 {
            let at = |value: u64| trend::Point { t_ns: t * 1_000_000_000, open: value, opened: 0 };
            // +2 descriptors a second; RSS +1 MB a second.
            series.fds.push(at(100 + 2 * t));
            series.rss.push(at(50_000_000 + 1_000_000 * t));
        }
        let mut site = build_sample_site();
        site.growth_per_minute = Some(120.0);
        let facts = ProcessFacts {
            fd_limit: Some(1024),
            rss_bytes: Some(70_000_000),
            cgroup: None,
            unavailable: Vec::new(),
        };
        let r = resources(facts, 138, Some(&series), &[site]);
        assert_eq!(r.fd_growth_per_hour, Some(7200.0));
        assert_eq!(r.fd_exhaustion_seconds, Some((1024.0 - 138.0) / 2.0));
        assert_eq!(r.rss_growth_bytes_per_hour, Some(3_600_000_000.0));
        assert_eq!(r.memory_exhaustion_seconds, None, "no cgroup limit, no projection");
        assert_eq!(r.socket_memory_bytes, Some(4096));
        assert!(r.unavailable.is_empty());
        assert_eq!(
            r.summary.as_deref(),
            Some(
                "RSS +3.6 GB/h while open sockets at accept_loop grew +7,200/h; \
                 at +7,200/h, the fd limit of 1,024 is reached in 7m 23s"
            )
        );
        assert_eq!(bytes(240_000_000.0), "240 MB");
        assert_eq!(bytes(1536.0), "1.5 KB");
    }

    fn build_sample_site() -> SiteReport {
        SiteReport {
            site: "00000000000000ab".into(),
            kind: FdKind::Socket,
            frame: "accept_loop".into(),
            open: 3,
            opened: 3,
            closed: 0,
            oldest_age_seconds: None,
            closed_by: BTreeMap::new(),
            closed_only_at_exit: false,
            exited_processes: None,
            growth_per_minute: None,
            suspected_leak: false,
            why: None,
            trend: None,
            tcp_states: BTreeMap::new(),
            close_wait: 0,
            socket_memory_bytes: Some(4096),
            socket_memory_unavailable: None,
            unmeasured_sockets: 0,
            pinned_bytes: None,
            frames: Vec::new(),
            origin: SiteOrigin::default(),
            examples: Vec::new(),
            holders: None,
        }
    }

    #[test]
    fn a_suspected_site_says_why() {
        use crate::model::trend::{
            Point, assess,
            tests::{SECOND, noise, series},
        };
        let min_age = Duration::from_secs(10);
        // Slow growth among churn: one descriptor a second stays open among 300 opened and
        // closed a second.
        let window = series(30, |t| t + noise(t, 3), |t| 301 * t);
        let v = assess(&window, Evidence { aged: 19, open_from_window: 29 }).unwrap();
        let why = explain(v.growth_per_minute, &v.trend, min_age);
        assert!(
            why.starts_with(
                "+60/min for 29.0s; 29 of the 8,729 opened since then still open; 19 older than 10s"
            ),
            "{why}"
        );
        // A leak that never closes says so.
        let window = series(3 * 3600 / 60, |t| t * 100, |t| t * 100)
            .into_iter()
            .map(|p| Point { t_ns: 1000 * SECOND + (p.t_ns - 1000 * SECOND) * 60, ..p })
            .collect::<Vec<_>>();
        let v = assess(&window, Evidence { aged: 17_900, open_from_window: 17_900 }).unwrap();
        let why = explain(v.growth_per_minute, &v.trend, min_age);
        assert!(why.starts_with("+100/min for 2h 59m; none of the 17,900 opened since then closed"), "{why}");
    }
}
