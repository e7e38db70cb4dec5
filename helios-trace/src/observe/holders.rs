//! Holders at report time (ARCHITECTURE.md, "Holders"): for each CPython process with a site
//! that needs them — suspected leaks and sites with CLOSE_WAIT sockets, or every site with
//! `--holders` — one walk of its heap (resolve/holders), the holder lines of each such site
//! from its open descriptors, and the census with its growth since the previous walk.
use std::collections::HashMap;

use crate::{
    model::{census::Census, fd::FdKind},
    observe::session::Tracing,
    output::report::{HeapReport, Report, SiteReport},
    resolve::holders::{self, DEFAULT_BUDGET, HoldersError},
};

/// Types shown in a process's census (plus any that grew as fast as the fastest).
const CENSUS_TYPES: usize = 12;

/// What the session keeps between walks.
#[derive(Debug, Default)]
pub(crate) struct HolderWalks {
    /// `--holders`: every site, not only the suspected ones and those with CLOSE_WAIT.
    all: bool,
    /// The previous census of each process walked.
    previous: HashMap<u32, Census>,
}

fn wanted(all: bool, site: &SiteReport) -> bool {
    site.open > 0 && (all || site.suspected_leak || site.close_wait > 0)
}

impl Tracing {
    /// `--holders`: holders of every site.
    pub(crate) fn set_all_holders(&mut self, all: bool) {
        self.holders.all = all;
    }

    /// Walk the heaps of the report's processes that need it and add holders and census.
    pub(super) fn attach_holders(&mut self, report: &mut Report) {
        let all = self.holders.all;
        for process in report.processes.iter_mut().filter(|p| !p.exited) {
            if !process.sites.iter().any(|s| wanted(all, s)) {
                continue;
            }
            let walk = match holders::walk_process(&self.proc_root, process.pid, &DEFAULT_BUDGET) {
                Ok(walk) => walk,
                Err(HoldersError::NotPython) => continue,
                Err(err) => {
                    log::info!("process {}: no holders: {err}", process.pid);
                    process.heap = Some(HeapReport {
                        python: None,
                        error: Some(err.to_string()),
                        objects: 0,
                        unknown_objects: 0,
                        cut_short: 0,
                        stopped: None,
                        walk_seconds: 0.0,
                        census: Vec::new(),
                    });
                    continue;
                }
            };
            let Some(table) = self.engine.table().process(process.pid) else { continue };
            for site in process.sites.iter_mut().filter(|s| wanted(all, s)) {
                let fds: Vec<i32> = table
                    .fds
                    .iter()
                    .filter(|(_, e)| e.site.label() == site.site && e.kind == site.kind)
                    .map(|(fd, _)| *fd)
                    .collect();
                // Only what a Python object can own: sockets and files.
                if matches!(site.kind, FdKind::Socket | FdKind::File) {
                    site.holders = Some(walk.holders(&fds));
                }
            }
            let previous = self.holders.previous.get(&process.pid);
            process.heap = Some(HeapReport {
                python: Some(format!("3.{}", walk.minor)),
                error: None,
                objects: walk.objects() as u64,
                unknown_objects: walk.unknown,
                cut_short: walk.cut_short,
                stopped: walk.stopped.clone(),
                walk_seconds: walk.elapsed.as_secs_f64(),
                census: walk.census.entries(previous, CENSUS_TYPES),
            });
            self.holders.previous.insert(process.pid, walk.census);
        }
        self.holders.previous.retain(|pid, _| report.processes.iter().any(|p| p.pid == *pid && !p.exited));
    }
}
