//! The end-of-session report (ARCHITECTURE.md, "Contracts: Report"): its layout, the JSON
//! contract, built from the model (build.rs) and rendered as JSON or as text for people
//! (text.rs).
use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::{
    census::CensusEntry,
    counts::EventCounts,
    fd::{CloseReason, FdKind},
    fdtable::{Corrections, Dropped},
    frame::{Frame, SiteOrigin},
    holders::Holder,
    trend::Trend,
};

pub(crate) mod build;
pub(crate) mod text;

/// Version of the JSON layout; fields are only ever added within a version.
pub(crate) const REPORT_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) helios_trace_report: u32,
    pub(crate) started_at: String,
    pub(crate) duration_seconds: f64,
    pub(crate) events: EventCounts,
    pub(crate) reconcile_corrections: Corrections,
    /// What the --max-processes / --max-fds caps kept out of the tables.
    pub(crate) dropped: Dropped,
    /// `--min-age`: how old a growing site's descriptors must be for it to be suspected.
    pub(crate) min_age_seconds: f64,
    /// Suspected leaks in all processes.
    pub(crate) suspected_leaks: u64,
    /// Whether the session was long enough for any verdict (model/trend.rs, `TIME_TO_JUDGE`):
    /// when false, "no suspected leak" means "not judged", and `judge_after_seconds` says how
    /// long a session must trace.
    pub(crate) judged: bool,
    pub(crate) judge_after_seconds: f64,
    /// Facts that could not be had, counted (each missing one says why where it is missing:
    /// `socket_memory_unavailable` of a site, `resources.unavailable` of a process).
    pub(crate) facts_unavailable: FactsUnavailable,
    /// `helios-trace run`: the command, and how it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) command: Option<CommandReport>,
    pub(crate) processes: Vec<ProcessReport>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct CommandReport {
    pub(crate) argv: Vec<String>,
    pub(crate) pid: u32,
    /// Its exit status, or the signal that ended it; both null while it runs.
    pub(crate) exit_code: Option<i32>,
    pub(crate) signal: Option<i32>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct ProcessReport {
    pub(crate) pid: u32,
    pub(crate) comm: String,
    pub(crate) cmdline: Option<String>,
    pub(crate) open_fds: u64,
    pub(crate) by_kind: BTreeMap<FdKind, u64>,
    /// Exited during the session (`run` keeps such processes): counts and ages are as of the
    /// exit, `open` is what the exit closed.
    pub(crate) exited: bool,
    pub(crate) suspected_leaks: u64,
    /// Sum of its sites' growth.
    pub(crate) growth_per_minute: f64,
    /// What it runs out of, and when (for an exited process, as last read while it ran; null
    /// when nothing was).
    pub(crate) resources: Option<Resources>,
    /// An exited process's TCP states, socket memory, details and resources are as read this
    /// long before its exit (`run`: once a second while it ran); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) facts_before_exit_seconds: Option<f64>,
    pub(crate) sites: Vec<SiteReport>,
    /// Its Python heap, when a site's holders were looked for (ARCHITECTURE.md, "Holders").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) heap: Option<HeapReport>,
    /// Every open descriptor (with `--list-fds`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) fds: Option<Vec<FdListing>>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct FdListing {
    pub(crate) fd: i32,
    pub(crate) kind: FdKind,
    pub(crate) site: String,
    pub(crate) cloexec: bool,
    pub(crate) inherited: bool,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct SiteReport {
    pub(crate) site: String,
    pub(crate) kind: FdKind,
    /// The one most telling frame (the `frame` label of ARCHITECTURE.md, "Contracts: Metrics"),
    /// or the site's name when it has no frames.
    pub(crate) frame: String,
    pub(crate) open: u64,
    pub(crate) opened: u64,
    pub(crate) closed: u64,
    /// Age of the oldest still-open descriptor; for `before-trace`, a lower bound (the time
    /// since tracing started). Null when nothing is open.
    pub(crate) oldest_age_seconds: Option<f64>,
    /// How the session's closes happened, by reason (only reasons that occurred).
    pub(crate) closed_by: BTreeMap<CloseReason, u64>,
    /// Every close of the site's descriptors, in this process and in exited ones, was the exit
    /// of their process: a leak that restarts were hiding.
    pub(crate) closed_only_at_exit: bool,
    /// What exited processes did at this site, summed (null when none did).
    pub(crate) exited_processes: Option<ExitedSummary>,
    /// Growth of the open count over the session (null before two samples).
    pub(crate) growth_per_minute: Option<f64>,
    pub(crate) suspected_leak: bool,
    /// Why it is suspected, in a sentence.
    pub(crate) why: Option<String>,
    pub(crate) trend: Option<Trend>,
    /// TCP states of the open sockets (from /proc/net/tcp*).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) tcp_states: BTreeMap<String, u64>,
    /// Open sockets whose peer hung up and which this process never closed.
    pub(crate) close_wait: u64,
    /// Kernel memory charged to the site's open sockets (receive and send queues, forward
    /// allocation, options; from sock_diag). Null for other kinds.
    pub(crate) socket_memory_bytes: Option<u64>,
    /// Why `socket_memory_bytes` is null for a socket site: how many of its sockets could not
    /// be measured, and the first reason (e.g. their network namespace is gone).
    pub(crate) socket_memory_unavailable: Option<String>,
    /// How many of its open sockets that is (not in the JSON: the sentence says it).
    #[serde(skip)]
    pub(crate) unmeasured_sockets: u64,
    /// Memory pinned by the site's open memfds (their blocks cannot be freed while open).
    pub(crate) pinned_bytes: Option<u64>,
    pub(crate) frames: Vec<Frame>,
    /// `created_by`: in a Go program, the `go` statement that created the goroutines which
    /// opened its descriptors, as Go's traceback says "created by" (resolve/goroutines.rs);
    /// absent when not read or not one place. `accepted_on`: of sockets a runtime's own loop
    /// accepted, the telling frame of their listener (resolve/stacks.rs, `accepted_through`).
    #[serde(flatten)]
    pub(crate) origin: SiteOrigin,
    pub(crate) examples: Vec<Example>,
    /// The Python objects that keep its open descriptors alive (suspected sites, sites with
    /// CLOSE_WAIT sockets, every site with `--holders`; CPython processes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) holders: Option<Vec<Holder>>,
}

/// One walk of a process's Python heap: what it covered, and the census by type.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct HeapReport {
    /// The CPython version walked, e.g. "3.11".
    pub(crate) python: Option<String>,
    /// Why the heap could not be walked (e.g. an unsupported version).
    pub(crate) error: Option<String>,
    /// GC-tracked objects walked, and those whose type did not read (racing or damaged).
    pub(crate) objects: u64,
    pub(crate) unknown_objects: u64,
    /// Containers read only in part.
    pub(crate) cut_short: u64,
    /// Why the walk stopped before the end (its time or object budget), if it did.
    pub(crate) stopped: Option<String>,
    pub(crate) walk_seconds: f64,
    /// `--holders-pause`: how long the process stood still, every thread stopped, for the
    /// walk's reads (null: not stopped by us).
    pub(crate) paused_seconds: Option<f64>,
    /// `--holders-pause`: why the process could not be stopped, or not wholly (its heap was then
    /// read while it ran).
    pub(crate) pause_error: Option<String>,
    /// How long before this report the walk was done: 0 for a fresh walk; reports that come
    /// often (the live view, serve's `/sites`) reuse a process's walk within an interval.
    pub(crate) age_seconds: f64,
    /// Objects by type, the most numerous and the fastest growing; `growth` since the previous
    /// walk of the process in this session.
    pub(crate) census: Vec<CensusEntry>,
}

impl HeapReport {
    /// A heap that could not be walked, and why.
    pub(crate) fn not_walked(error: String) -> HeapReport {
        HeapReport {
            python: None,
            error: Some(error),
            objects: 0,
            unknown_objects: 0,
            cut_short: 0,
            stopped: None,
            walk_seconds: 0.0,
            paused_seconds: None,
            pause_error: None,
            age_seconds: 0.0,
            census: Vec::new(),
        }
    }
}

/// A process's limits and memory, with the time to exhaustion at the session's rates.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Resources {
    /// Soft RLIMIT_NOFILE: at this many open descriptors, open() fails with EMFILE.
    pub(crate) fd_limit: Option<u64>,
    /// Growth of the open descriptor count (Theil-Sen over the session), per hour.
    pub(crate) fd_growth_per_hour: Option<f64>,
    /// At that growth, seconds until the limit is reached.
    pub(crate) fd_exhaustion_seconds: Option<f64>,
    pub(crate) rss_bytes: Option<u64>,
    pub(crate) rss_growth_bytes_per_hour: Option<f64>,
    /// The process's memory cgroup: usage, limit (null: none), and when usage reaches it.
    pub(crate) memory_current_bytes: Option<u64>,
    pub(crate) memory_limit_bytes: Option<u64>,
    pub(crate) memory_growth_bytes_per_hour: Option<f64>,
    pub(crate) memory_exhaustion_seconds: Option<f64>,
    /// Kernel memory charged to all its open sockets (null when some could not be measured).
    pub(crate) socket_memory_bytes: Option<u64>,
    /// Why a fact above is null, by its field name (`fd_limit`, `rss_bytes`,
    /// `memory_current_bytes`, `socket_memory_bytes`); absent when nothing is missing.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) unavailable: BTreeMap<&'static str, String>,
    /// The one-line summary joining memory and descriptors, e.g. "RSS +240 MB/h while site
    /// accept_loop (srv.c:88) grew +2,000/h; the fd limit of 65,536 is reached in 9h 12m".
    pub(crate) summary: Option<String>,
}

/// What the report could not find out, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct FactsUnavailable {
    /// Open sockets whose memory could not be had.
    pub(crate) socket_memory: u64,
    /// Live processes whose descriptor limit, RSS or memory cgroup could not be read.
    pub(crate) fd_limit: u64,
    pub(crate) rss: u64,
    pub(crate) cgroup_memory: u64,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct ExitedSummary {
    pub(crate) processes: u64,
    pub(crate) opened: u64,
    pub(crate) closed: u64,
    pub(crate) closed_by: BTreeMap<CloseReason, u64>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Example {
    pub(crate) fd: i32,
    pub(crate) age_seconds: f64,
    pub(crate) detail: Option<String>,
}

/// The TCP state of a socket whose peer closed its end while this side still holds it open
/// (include/net/tcp_states.h TCP_CLOSE_WAIT; the name sys/proc gives it).
pub(crate) const CLOSE_WAIT: &str = "CLOSE_WAIT";

pub(crate) fn to_json(report: &Report) -> String {
    serde_json::to_string_pretty(report).expect("report serializes")
}
