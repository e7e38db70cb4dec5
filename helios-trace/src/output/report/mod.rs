//! The end-of-session report (ARCHITECTURE.md, "Contracts: Report"): its layout, the JSON
//! contract, built from the model (build.rs) and rendered as JSON or as text for people
//! (text.rs).
use serde::Serialize;
use std::collections::BTreeMap;

use crate::model::{
    counts::EventCounts,
    fd::{CloseReason, FdKind},
    fdtable::{Corrections, Dropped},
    frame::Frame,
    trend::Trend,
};

pub mod build;
pub mod text;

/// Version of the JSON layout; fields are only ever added within a version.
pub const REPORT_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub helios_trace_report: u32,
    pub started_at: String,
    pub duration_seconds: f64,
    pub events: EventCounts,
    pub reconcile_corrections: Corrections,
    /// What the --max-processes / --max-fds caps kept out of the tables.
    pub dropped: Dropped,
    /// `--min-age`: how old a growing site's descriptors must be for it to be suspected.
    pub min_age_seconds: f64,
    /// Suspected leaks in all processes.
    pub suspected_leaks: u64,
    /// `helios-trace run`: the command, and how it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandReport>,
    pub processes: Vec<ProcessReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CommandReport {
    pub argv: Vec<String>,
    pub pid: u32,
    /// Its exit status, or the signal that ended it; both null while it runs.
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProcessReport {
    pub pid: u32,
    pub comm: String,
    pub cmdline: Option<String>,
    pub open_fds: u64,
    pub by_kind: BTreeMap<FdKind, u64>,
    /// Exited during the session (`run` keeps such processes): counts and ages are as of the
    /// exit, `open` is what the exit closed.
    pub exited: bool,
    pub suspected_leaks: u64,
    /// Sum of its sites' growth.
    pub growth_per_minute: f64,
    /// What it runs out of, and when (null for exited processes).
    pub resources: Option<Resources>,
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
    /// The one most telling frame (the `frame` label of ARCHITECTURE.md, "Contracts: Metrics"),
    /// or the site's name when it has no frames.
    pub frame: String,
    pub open: u64,
    pub opened: u64,
    pub closed: u64,
    /// Age of the oldest still-open descriptor; for `before-trace`, a lower bound (the time
    /// since tracing started). Null when nothing is open.
    pub oldest_age_seconds: Option<f64>,
    /// How the session's closes happened, by reason (only reasons that occurred).
    pub closed_by: BTreeMap<CloseReason, u64>,
    /// Every close of the site's descriptors, in this process and in exited ones, was the exit
    /// of their process: a leak that restarts were hiding.
    pub closed_only_at_exit: bool,
    /// What exited processes did at this site, summed (null when none did).
    pub exited_processes: Option<ExitedSummary>,
    /// Growth of the open count over the session (null before two samples).
    pub growth_per_minute: Option<f64>,
    pub suspected_leak: bool,
    /// Why it is suspected, in a sentence.
    pub why: Option<String>,
    pub trend: Option<Trend>,
    /// TCP states of the open sockets (from /proc/net/tcp*).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tcp_states: BTreeMap<String, u64>,
    /// Open sockets whose peer hung up and which this process never closed.
    pub close_wait: u64,
    /// Kernel memory charged to the site's open sockets (receive and send queues, forward
    /// allocation, options; from sock_diag). Null for other kinds.
    pub socket_memory_bytes: Option<u64>,
    /// Memory pinned by the site's open memfds (their blocks cannot be freed while open).
    pub pinned_bytes: Option<u64>,
    pub frames: Vec<Frame>,
    pub examples: Vec<Example>,
}

/// A process's limits and memory, with the time to exhaustion at the session's rates.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Resources {
    /// Soft RLIMIT_NOFILE: at this many open descriptors, open() fails with EMFILE.
    pub fd_limit: Option<u64>,
    /// Growth of the open descriptor count (Theil-Sen over the session), per hour.
    pub fd_growth_per_hour: Option<f64>,
    /// At that growth, seconds until the limit is reached.
    pub fd_exhaustion_seconds: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub rss_growth_bytes_per_hour: Option<f64>,
    /// The process's memory cgroup: usage, limit (null: none), and when usage reaches it.
    pub memory_current_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    pub memory_growth_bytes_per_hour: Option<f64>,
    pub memory_exhaustion_seconds: Option<f64>,
    /// Kernel memory charged to all its open sockets.
    pub socket_memory_bytes: u64,
    /// The one-line summary joining memory and descriptors, e.g. "RSS +240 MB/h while site
    /// accept_loop (srv.c:88) grew +2,000/h; the fd limit of 65,536 is reached in 9h 12m".
    pub summary: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ExitedSummary {
    pub processes: u64,
    pub opened: u64,
    pub closed: u64,
    pub closed_by: BTreeMap<CloseReason, u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Example {
    pub fd: i32,
    pub age_seconds: f64,
    pub detail: Option<String>,
}

/// The TCP state of a socket whose peer closed its end while this side still holds it open
/// (include/net/tcp_states.h TCP_CLOSE_WAIT; the name sys/proc gives it).
pub const CLOSE_WAIT: &str = "CLOSE_WAIT";

pub fn to_json(report: &Report) -> String {
    serde_json::to_string_pretty(report).expect("report serializes")
}
