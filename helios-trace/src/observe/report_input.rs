//! What the end-of-session report is built from (ARCHITECTURE.md, "Data flow" 7): the engine's
//! table, counters, frames and history, and closures that ask /proc and sock_diag what only
//! they know (output/report builds it, pure).
use std::{cell::RefCell, collections::HashSet};

use crate::{
    model::fdtable::OpenFd,
    observe::{holders::Freshness, procfs::SocketJoin, session::Tracing},
    output::report::{
        Report,
        build::{ProcessFacts, ReportInput, build},
    },
    sys::{clock, proc::resources},
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
        let join = RefCell::new(SocketJoin::new(
            &proc_root,
            std::mem::take(&mut self.socket_inodes),
            self.redact_paths,
        ));
        let mut describe = |tgid: u32, fd: i32, entry: &OpenFd| join.borrow_mut().describe(tgid, fd, entry);
        let mut inspect = |tgid: u32, fd: i32, entry: &OpenFd| join.borrow_mut().facts(tgid, fd, entry);
        let cgroups = &self.cgroups;
        let mut process_facts = |tgid: u32| {
            let mut unavailable = Vec::new();
            let mut why = |field: &'static str, error: String| unavailable.push((field, error));
            let fd_limit =
                resources::read_fd_limit(&proc_root, tgid).map_err(|e| why("fd_limit", e)).ok().flatten();
            let rss_bytes = resources::read_rss_bytes(&proc_root, tgid).map_err(|e| why("rss_bytes", e)).ok();
            let cgroup = cgroups.memory(tgid).map_err(|e| why("memory_current_bytes", e)).ok();
            ProcessFacts { fd_limit, rss_bytes, cgroup, unavailable }
        };
        let frames = |site| engine.frames(site).map(|f| f.to_vec()).unwrap_or_default();
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
            include: &include,
            cmdline: &|tgid| cmdlines.get(&tgid).cloned(),
            describe: &mut describe,
            inspect: &mut inspect,
            process_facts: &mut process_facts,
            list_fds,
            exited: engine.exited(),
            history: &self.history,
            min_age: self.min_age,
        });
        // Only the sockets still open stay cached.
        self.socket_inodes = join.into_inner().seen;
        let mut report = report;
        self.attach_holders(&mut report, freshness);
        if self.redact_paths {
            crate::output::redact::report(&mut report);
        }
        report
    }
}
