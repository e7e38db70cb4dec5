//! What the end-of-session report is built from (ARCHITECTURE.md, "Data flow" 7): the engine's
//! table, counters, frames and history, and closures that ask /proc and sock_diag what only
//! they know (output/report builds it, pure).
use std::{
    cell::RefCell,
    collections::{HashMap, HashSet},
    path::Path,
};

use crate::{
    model::{fd::FdKind, fdtable::OpenFd},
    observe::{holders::Freshness, procfs::SocketJoin, session::Tracing},
    output::report::{
        Report,
        build::{FdFacts, LastKnown, ProcessFacts, ReportInput, build},
    },
    sys::{
        clock,
        proc::{
            self,
            resources::{self, CgroupMounts},
        },
    },
};

impl Tracing {
    /// The report of the session so far; `list_fds`: with every open descriptor. Holders come
    /// from fresh heap walks.
    pub(crate) fn report(&mut self, list_fds: bool) -> Report {
        self.report_with(list_fds, Freshness::Fresh, None)
    }

    /// The report the live view shows every interval: holders from a process's last walk
    /// within the minimum interval (observe/holders.rs).
    pub(crate) fn progress_report(&mut self) -> Report {
        self.report_with(false, Freshness::Cached, None)
    }

    /// The report of `only` these processes (all with None), holders as `freshness` says.
    pub(crate) fn report_with(
        &mut self,
        list_fds: bool,
        freshness: Freshness,
        only: Option<&HashSet<u32>>,
    ) -> Report {
        self.report_of(list_fds, freshness, only, Facts::Read)
    }

    /// The report a summary line is made of (commands/watch.rs): counts, sites and their
    /// verdicts, no holders, and nothing only /proc and sock_diag know (`Facts::Skipped`). Never
    /// emitted: its socket sites read 0 bytes and no TCP state, and its processes no resources.
    pub(crate) fn summary_report(&mut self) -> Report {
        self.report_of(false, Freshness::Off, None, Facts::Skipped)
    }

    fn report_of(
        &mut self,
        list_fds: bool,
        freshness: Freshness,
        only: Option<&HashSet<u32>>,
        facts: Facts,
    ) -> Report {
        self.engine.refresh_names();
        let events = self.event_counts();
        let corrections = self.corrections();
        let proc_root = self.proc_root.clone();
        let filtered = !self.targets.is_empty()
            || !self.target_cgroups.is_empty()
            || !self.target_comms.is_empty()
            || !self.target_uids.is_empty();
        let mut cmdlines = std::collections::HashMap::new();
        let tgids: Vec<u32> = self.engine.table().processes().map(|(t, _)| t).collect();
        for tgid in tgids {
            if let Some(cmdline) = self.engine.cmdline(tgid) {
                cmdlines.insert(tgid, cmdline);
            }
        }
        let engine = &self.engine;
        // Only a report that reads facts asks /proc and sock_diag (`Facts`).
        let join = (facts == Facts::Read).then(|| {
            RefCell::new(SocketJoin::new(
                &proc_root,
                std::mem::take(&mut self.socket_inodes),
                self.redact_paths,
            ))
        });
        let mut describe = |tgid: u32, fd: i32, entry: &OpenFd| {
            join.as_ref().and_then(|join| join.borrow_mut().describe(tgid, fd, entry))
        };
        let mut inspect = |tgid: u32, fd: i32, entry: &OpenFd| {
            join.as_ref().map(|join| join.borrow_mut().facts(tgid, fd, entry)).unwrap_or_default()
        };
        let cgroups = &self.cgroups;
        let mut process_facts = |tgid: u32| match facts {
            Facts::Read => process_facts(&proc_root, cgroups, tgid),
            Facts::Skipped => ProcessFacts::default(),
        };
        let frames = |site| engine.frames(site).map(|f| f.to_vec()).unwrap_or_default();
        let origin = |site| engine.origin(site);
        let include = |tgid: u32| {
            (filtered || engine.stats().active(tgid)) && only.is_none_or(|only| only.contains(&tgid))
        };
        let report = build(ReportInput {
            started_at: self.started_at,
            duration: self.started.elapsed(),
            now_ns: clock::boot_ns(),
            events,
            corrections,
            table: engine.table(),
            stats: engine.stats(),
            frames: &frames,
            origin: &origin,
            include: &include,
            cmdline: &|tgid| cmdlines.get(&tgid).cloned(),
            describe: &mut describe,
            inspect: &mut inspect,
            process_facts: &mut process_facts,
            list_fds,
            exited: engine.exited(),
            last_known: &self.last_known,
            history: &self.history,
            min_age: self.min_age,
        });
        // Only the sockets still open stay cached.
        if let Some(join) = join {
            self.socket_inodes = join.into_inner().seen;
        }
        let mut report = report;
        self.attach_holders(&mut report, freshness);
        if self.redact_paths {
            crate::output::redact::report(&mut report);
        }
        report
    }

    /// `run`: what /proc says now of each traced process, kept for the report should it exit
    /// before it (its TCP states, socket memory, descriptor details and resources go with it).
    /// Called once a second; the entries of exited processes still reported stay.
    pub(crate) fn remember_facts(&mut self) {
        let now_ns = clock::boot_ns();
        let proc_root = self.proc_root.clone();
        let mut join =
            SocketJoin::new(&proc_root, std::mem::take(&mut self.socket_inodes), self.redact_paths);
        let mut last_known = HashMap::new();
        for (tgid, process) in self.engine.table().processes() {
            let fds = process
                .fds
                .iter()
                .map(|(fd, entry)| {
                    let facts = match entry.kind {
                        FdKind::Socket | FdKind::Memfd => join.facts(tgid, fd, entry),
                        _ => FdFacts::default(),
                    };
                    ((fd, entry.opened_ns), (facts, join.describe(tgid, fd, entry)))
                })
                .collect();
            let process = process_facts(&proc_root, &self.cgroups, tgid);
            // Exited since (its exit record not read yet), or exiting while it was read: what
            // /proc said is about its remains (nothing readable, no sockets). The reading taken
            // while it lived stands.
            if !proc::alive(&proc_root, tgid)
                && let Some(last) = self.last_known.remove(&tgid)
            {
                last_known.insert(tgid, last);
                continue;
            }
            last_known.insert(tgid, LastKnown { taken_ns: now_ns, fds, process });
        }
        for exited in self.engine.exited() {
            if let Some(last) = self.last_known.remove(&exited.tgid) {
                last_known.entry(exited.tgid).or_insert(last);
            }
        }
        self.socket_inodes = join.seen;
        self.last_known = last_known;
    }
}

/// Whether a report reads what only /proc and sock_diag know (observe/procfs.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Facts {
    /// Sockets' TCP states, addresses and memory, memfds' pages, descriptors /proc names,
    /// processes' limits and memory.
    Read,
    /// None of them: the report's sockets and processes have no such facts. For a summary
    /// line, which shows none: the sockets cost a duplicate of each descriptor (or a sock_diag
    /// dump) and the TCP tables of each process's network namespace, which list its TIME_WAIT
    /// entries too (26 ms a read beside 14,000 of them), every interval.
    Skipped,
}

/// A live process's limits and memory, or why each cannot be had.
fn process_facts(proc_root: &Path, cgroups: &CgroupMounts, tgid: u32) -> ProcessFacts {
    let mut unavailable = Vec::new();
    let mut why = |field: &'static str, error: String| unavailable.push((field, error));
    let fd_limit = resources::read_fd_limit(proc_root, tgid).map_err(|e| why("fd_limit", e)).ok().flatten();
    let rss_bytes = resources::read_rss_bytes(proc_root, tgid).map_err(|e| why("rss_bytes", e)).ok();
    let cgroup = cgroups.memory(tgid).map_err(|e| why("memory_current_bytes", e)).ok();
    ProcessFacts { fd_limit, rss_bytes, cgroup, unavailable }
}
