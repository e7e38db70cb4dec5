//! The end-of-session report: built from the FdTable, the site counters and the stack registry
//! (pure: what needs /proc comes in through closures), rendered as JSON (design.md's "Report"
//! contract) or as text for people, widest leaks first.
use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    time::{Duration, SystemTime},
};

use serde::Serialize;

use crate::{
    fd::{CloseReason, FdKind, SiteId},
    fdtable::{FdTable, OpenFd},
    sites::SiteStats,
    stacks::Frame,
};

/// Version of the JSON layout; fields are only ever added within a version.
pub const REPORT_VERSION: u32 = 1;
const EXAMPLES_PER_SITE: usize = 3;

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub helios_trace_report: u32,
    pub started_at: String,
    pub duration_seconds: f64,
    pub events: EventCounts,
    pub reconcile_corrections: Corrections,
    /// What the --max-processes / --max-fds caps kept out of the tables.
    pub dropped: crate::fdtable::Dropped,
    pub processes: Vec<ProcessReport>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EventCounts {
    /// Records read from the ring buffer.
    pub received: u64,
    /// Records the kernel could not reserve (ring buffer full), or whose enter was lost.
    pub lost: u64,
    /// Records that were short or unknown.
    pub undecodable: u64,
    /// Stacks that could not be captured (map bucket collision or full).
    pub stack_errors: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Corrections {
    pub added: u64,
    pub removed: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProcessReport {
    pub pid: u32,
    pub comm: String,
    pub cmdline: Option<String>,
    pub open_fds: u64,
    pub by_kind: BTreeMap<FdKind, u64>,
    pub sites: Vec<SiteReport>,
    /// Every open descriptor (with `--list-fds`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fds: Option<Vec<FdListing>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FdListing {
    pub fd: i32,
    pub kind: FdKind,
    pub site: String,
    pub cloexec: bool,
    pub inherited: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct SiteReport {
    pub site: String,
    pub kind: FdKind,
    pub open: u64,
    pub opened: u64,
    pub closed: u64,
    /// Age of the oldest still-open descriptor; for `before-trace`, a lower bound (the time
    /// since tracing started). Null when nothing is open.
    pub oldest_age_seconds: Option<f64>,
    /// How the session's closes happened, by reason (only reasons that occurred).
    pub closed_by: BTreeMap<CloseReason, u64>,
    pub frames: Vec<Frame>,
    pub examples: Vec<Example>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Example {
    pub fd: i32,
    pub age_seconds: f64,
    pub detail: Option<String>,
}

/// Everything a report is made of. Closures give what only /proc knows, so tests can supply
/// their own.
pub struct ReportInput<'a> {
    pub started_at: SystemTime,
    pub duration: Duration,
    /// CLOCK_BOOTTIME ns at report time.
    pub now_ns: u64,
    pub events: EventCounts,
    pub corrections: Corrections,
    pub table: &'a FdTable,
    pub stats: &'a SiteStats,
    pub frames: &'a dyn Fn(SiteId) -> Vec<Frame>,
    /// Which processes to report.
    pub include: &'a dyn Fn(u32) -> bool,
    pub cmdline: &'a dyn Fn(u32) -> Option<String>,
    /// A short description of one open descriptor (path, socket addresses).
    pub describe: &'a mut dyn FnMut(u32, i32, &OpenFd) -> Option<String>,
    /// Include every open descriptor of each process.
    pub list_fds: bool,
}

pub fn build(input: ReportInput<'_>) -> Report {
    let ReportInput {
        started_at,
        duration,
        now_ns,
        events,
        corrections,
        table,
        stats,
        frames,
        include,
        cmdline,
        describe,
        list_fds,
    } = input;
    let age = |opened_ns: u64| now_ns.saturating_sub(opened_ns) as f64 / 1e9;
    let mut processes: Vec<ProcessReport> = Vec::new();
    for (tgid, process) in table.processes() {
        if !include(tgid) {
            continue;
        }
        // Open descriptors grouped by (kind, site), oldest first within each group.
        let mut groups: HashMap<(FdKind, SiteId), Vec<(i32, &OpenFd)>> = HashMap::new();
        let mut by_kind: BTreeMap<FdKind, u64> = BTreeMap::new();
        for (fd, entry) in &process.fds {
            groups.entry((entry.kind, entry.site)).or_default().push((*fd, entry));
            *by_kind.entry(entry.kind).or_default() += 1;
        }
        if let Some(counted) = stats.process(tgid) {
            for (key, counters) in counted {
                if counters.opened > 0 {
                    groups.entry(*key).or_default();
                }
            }
        }
        let mut sites: Vec<SiteReport> = groups
            .into_iter()
            .map(|((kind, site), mut open)| {
                open.sort_by_key(|(fd, e)| (e.opened_ns, *fd));
                let counters = stats.get(tgid, kind, site);
                let examples = open
                    .iter()
                    .take(EXAMPLES_PER_SITE)
                    .map(|(fd, e)| Example {
                        fd: *fd,
                        age_seconds: age(e.opened_ns),
                        detail: describe(tgid, *fd, e),
                    })
                    .collect();
                SiteReport {
                    site: site.label(),
                    kind,
                    open: open.len() as u64,
                    opened: counters.opened,
                    closed: counters.closed,
                    oldest_age_seconds: open.first().map(|(_, e)| age(e.opened_ns)),
                    closed_by: CloseReason::ALL
                        .iter()
                        .filter(|r| counters.closed_by[r.index()] > 0)
                        .map(|r| (*r, counters.closed_by[r.index()]))
                        .collect(),
                    frames: frames(site),
                    examples,
                }
            })
            .collect();
        sites.sort_by(|a, b| {
            b.open
                .cmp(&a.open)
                .then(b.opened.cmp(&a.opened))
                .then_with(|| a.site.cmp(&b.site))
                .then(a.kind.cmp(&b.kind))
        });
        processes.push(ProcessReport {
            pid: tgid,
            comm: process.comm.clone(),
            cmdline: cmdline(tgid),
            open_fds: process.fds.len() as u64,
            by_kind,
            sites,
            fds: list_fds.then(|| {
                process
                    .fds
                    .iter()
                    .map(|(fd, e)| FdListing {
                        fd: *fd,
                        kind: e.kind,
                        site: e.site.label(),
                        cloexec: e.cloexec,
                        inherited: e.inherited,
                    })
                    .collect()
            }),
        });
    }
    processes.sort_by(|a, b| {
        leak_width(b).cmp(&leak_width(a)).then(b.open_fds.cmp(&a.open_fds)).then(a.pid.cmp(&b.pid))
    });
    Report {
        helios_trace_report: REPORT_VERSION,
        started_at: humantime::format_rfc3339_seconds(started_at).to_string(),
        duration_seconds: duration.as_secs_f64(),
        events,
        reconcile_corrections: corrections,
        dropped: table.dropped(),
        processes,
    }
}

/// Descriptors a process opened under tracing and still holds: what ranks it.
fn leak_width(process: &ProcessReport) -> u64 {
    process.sites.iter().filter(|s| s.site != SiteId::BeforeTrace.label()).map(|s| s.open).sum()
}

pub fn to_json(report: &Report) -> String {
    serde_json::to_string_pretty(report).expect("report serializes")
}

/// "19h 4m", "3m 12s", "4.2s".
pub fn human_duration(seconds: f64) -> String {
    let s = seconds.max(0.0);
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m {}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{}h {}m", (s / 3600.0) as u64, ((s % 3600.0) / 60.0) as u64)
    }
}

pub fn to_text(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "helios-trace: {} traced, {} events ({} lost, {} undecodable), {} processes with activity",
        human_duration(report.duration_seconds),
        report.events.received,
        report.events.lost,
        report.events.undecodable,
        report.processes.len()
    );
    if report.events.lost > 0 {
        let _ = writeln!(
            out,
            "warning: {} events were lost; counts may be off until reconciliation",
            report.events.lost
        );
    }
    for process in &report.processes {
        let kinds: Vec<String> = process.by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(
            out,
            "\nPID {} {}{}: {} open ({})",
            process.pid,
            process.comm,
            process.cmdline.as_ref().map(|c| format!(" [{c}]")).unwrap_or_default(),
            process.open_fds,
            kinds.join(", ")
        );
        for site in &process.sites {
            let _ = writeln!(
                out,
                "  {:>6} open  {:<8} site {}  opened {} closed {}{}",
                site.open,
                site.kind.as_str(),
                site.site,
                site.opened,
                site.closed,
                site.oldest_age_seconds
                    .map(|a| format!("  oldest {}", human_duration(a)))
                    .unwrap_or_default()
            );
            for (i, frame) in site.frames.iter().enumerate() {
                let _ = writeln!(out, "           #{i:<2} {}", frame.describe());
            }
            for example in &site.examples {
                let _ = writeln!(
                    out,
                    "           fd {} ({}){}",
                    example.fd,
                    human_duration(example.age_seconds),
                    example.detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default()
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use smallvec::smallvec;

    use super::*;
    use crate::{
        event::{Event, Op, StackIds},
        fd::FdDetail,
        fdtable::{ObservedFd, Transition},
        stacks::Language,
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

    fn sample() -> (FdTable, SiteStats) {
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
            table.apply(&open_event(7, fd, ts, FdKind::Socket), SiteId::Stack(0xab), &mut out);
        }
        table.apply(&open_event(7, 6, 4_000_000_000, FdKind::File), SiteId::Stack(0xcd), &mut out);
        table.apply(
            &Event {
                tgid: 7,
                tid: 7,
                ts_ns: 5_000_000_000,
                stacks: StackIds::default(),
                op: Op::Close { fd: 6 },
            },
            SiteId::NoStack,
            &mut out,
        );
        for t in &out {
            stats.observe(t);
        }
        (table, stats)
    }

    fn build_sample(table: &FdTable, stats: &SiteStats) -> Report {
        let frames = |site: SiteId| match site {
            SiteId::Stack(_) => vec![Frame {
                symbol: None,
                file: None,
                line: None,
                module: Some("/usr/bin/leaky".into()),
                address: Some(0x55d0c0a01010),
                offset: Some(0x1010),
                language: Language::Native,
            }],
            _ => Vec::new(),
        };
        let mut describe = |_: u32, fd: i32, _: &OpenFd| Some(format!("fd{fd}"));
        build(ReportInput {
            started_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_773_478_020),
            duration: Duration::from_secs(30),
            now_ns: 10_000_000_000,
            events: EventCounts { received: 5, lost: 0, undecodable: 0, stack_errors: 0 },
            corrections: Corrections::default(),
            table,
            stats,
            frames: &frames,
            include: &|_| true,
            cmdline: &|_| Some("leaky --serve".into()),
            describe: &mut describe,
            list_fds: true,
        })
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
        let before = p.sites.iter().find(|s| s.site == "before-trace").unwrap();
        assert!(before.frames.is_empty());
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
        assert_eq!(site["examples"][0]["detail"], "fd3");
        assert_eq!(
            p["fds"][0],
            serde_json::json!({"fd": 0, "kind": "device", "site": "before-trace", "cloexec": false, "inherited": false})
        );
    }

    #[test]
    fn text_names_sites_and_frames() {
        let (table, stats) = sample();
        let text = to_text(&build_sample(&table, &stats));
        assert!(text.contains("PID 7 leaky [leaky --serve]: 4 open (socket 3, device 1)"), "{text}");
        assert!(text.contains("site 00000000000000ab"), "{text}");
        assert!(text.contains("/usr/bin/leaky+0x1010"), "{text}");
    }

    #[test]
    fn durations_for_people() {
        assert_eq!(human_duration(4.25), "4.2s");
        assert_eq!(human_duration(192.0), "3m 12s");
        assert_eq!(human_duration(68_640.0), "19h 4m");
    }
}
