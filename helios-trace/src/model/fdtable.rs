//! The descriptor tables of the traced processes: a pure state machine.
//!
//! `apply(event)` changes the tables the way the kernel changed its own and reports each change
//! as a [`Transition`]; there is no I/O and no clock here (time comes from the events), so
//! plain unit tests and property tests cover every rule:
//! - keyed by (process, fd); threads share their process's table;
//! - fork copies the parent's table (entries keep their site and are marked inherited);
//! - exec closes close-on-exec descriptors; exit of the thread group clears the table;
//! - dup2/dup3/F_DUPFD onto an open fd closes it first; close_range closes (or, with
//!   CLOSE_RANGE_CLOEXEC, marks) a range;
//! - a recycled pid never mixes two processes' descriptors (a new task replaces the stale
//!   table);
//! - a close is seen at its exit (helios-trace-ebpf/src/syscalls.rs, `close_exit`), after
//!   the kernel released the number, so another thread may be given it and its record come
//!   first. The kernel never gives out an open number, so an open of a number the table has
//!   open *holds* the old descriptor (`Closing`), closed but not yet counted, for that close;
//!   what a dup2 replaced, what an open found in /proc replaced and what reconciliation found
//!   gone are kept likewise, already counted (their close may be in flight too). A close
//!   record is that late close when it says its number was taken again by its exit
//!   (`number_taken`), or when the table has nothing at the number: then it closes one kept
//!   for the number (the newest held, else the newest counted), not the new one. Otherwise it
//!   closes what the table has: so a close lost from the ring (whose descriptor's next open
//!   holds it) does not make the next close of its number miss its own descriptor. (A close
//!   whose number is taken again, whose taker's record is still to come, while something is
//!   kept for the number from a lost close or a dup2 onto it, closes what is kept instead:
//!   the taker's open then holds what it should have closed, counted lost after the hold.)
//!   close_range, which does not say which numbers were open, closes what the table has in
//!   its range and counts what is held there closed (kept still, for a close in flight).
//!   What is kept is kept for `CLOSE_HOLD_NS`: a held descriptor whose close does not come
//!   by then is counted closed as lost (`CloseReason::Reconcile`, what such an open meant
//!   when closes were seen at enter).
use std::collections::BTreeMap;

use foldhash::{HashMap, HashSet};

use crate::model::{
    event::{Event, Op},
    fd::{CloseReason, FdDetail, FdKind, SiteId},
    fdmap::FdMap,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OpenFd {
    pub(crate) kind: FdKind,
    pub(crate) detail: FdDetail,
    pub(crate) site: SiteId,
    /// CLOCK_BOOTTIME ns of the open; for descriptors found at start, when tracing started.
    pub(crate) opened_ns: u64,
    pub(crate) cloexec: bool,
    /// Copied from the parent at fork rather than opened by this process.
    pub(crate) inherited: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Process {
    pub(crate) comm: String,
    /// Ordered, so close_range and reports walk fds in order.
    pub(crate) fds: FdMap<OpenFd>,
    /// Descriptors out of the table whose close record may still come, oldest first (the
    /// module's doc). Not open: the kernel's table has the new one, or nothing. Almost always
    /// empty.
    closing: Vec<Closing>,
}

/// A descriptor kept for its close's record: `Process::closing`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Closing {
    fd: i32,
    entry: OpenFd,
    /// When it left the table (the event's or the reconciliation's time).
    since_ns: u64,
    /// Its close is counted already (a dup2 replaced it, reconciliation found it gone, an open
    /// replaced it silently where it was found in /proc): its record changes nothing more.
    /// Else it is held: still open at its site until its close comes.
    counted: bool,
}

/// How long a descriptor is kept for its close record; an open over an open number holds the
/// old one that long before counting its close lost. A close's record follows the release of
/// its number by the rest of the syscall (fs/open.c, `close`: `filp_flush`, a network file
/// system's flush included; a socket's linger) and the ring's delay: microseconds, seconds for
/// a lingering socket or a slow flush; longer only for a record lost or a close the syscalls
/// do not show (io_uring's `IORING_OP_CLOSE`). A close slower than this whose number was given
/// again closes the new descriptor (reconciliation puts it back).
pub(crate) const CLOSE_HOLD_NS: u64 = 30_000_000_000;

/// At most this many descriptors kept per process; past it the oldest goes (a held one counted
/// lost): bounds a process whose closes the syscalls do not show (io_uring's), or one that
/// dup2s over its descriptors all the time.
const MAX_CLOSING: usize = 1024;

/// What closes seen late did (the module's doc): the report's `events.closes_late` and
/// `events.closes_taken_for_lost`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct HeldCloses {
    /// Close records that closed a descriptor kept for them (the module's doc).
    pub(crate) resolved: u64,
    /// Held descriptors whose close did not come (in `CLOSE_HOLD_NS`, before the process
    /// exited, or past `MAX_CLOSING`): counted closed as lost.
    pub(crate) lost: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FdChange {
    Opened,
    /// Copied from the parent at fork.
    Inherited,
    /// Found open in /proc (at start, or by reconciliation) rather than seen being opened.
    Found,
    Closed(CloseReason),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    Fd {
        tgid: u32,
        fd: i32,
        kind: FdKind,
        site: SiteId,
        change: FdChange,
    },
    /// A process appeared (fork, or its first event); `parent` when known.
    ProcessStarted {
        tgid: u32,
        parent: Option<u32>,
    },
    ProcessExec {
        tgid: u32,
    },
    ProcessExited {
        tgid: u32,
    },
}

/// A descriptor as /proc shows it, for the baseline and for reconciliation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ObservedFd {
    pub(crate) kind: FdKind,
    pub(crate) detail: FdDetail,
    pub(crate) cloexec: bool,
}

/// Some of a process's descriptors as /proc shows them, read in order of number from one
/// number on (reconciliation reads a process in chunks: observe/session.rs, `reconcile`).
#[derive(Debug, Default)]
pub(crate) struct FdChunk {
    pub(crate) fds: BTreeMap<i32, ObservedFd>,
    /// The number to read on from; `None` when no descriptor is left.
    pub(crate) next: Option<i32>,
}

/// What reconciliation changed: in one pass, or summed over the session (the report's
/// `reconcile_corrections`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Corrections {
    /// Open in the kernel, missing from the table: added under `unknown-origin`.
    pub(crate) added: u64,
    /// In the table, closed in the kernel: removed.
    pub(crate) removed: u64,
}

/// Caps on what the table holds, so that no traced workload can grow the tracer without bound.
/// At a cap, what is already tracked is kept and what is new is dropped (and counted): the
/// oldest open descriptors are the leaks this tool exists to show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TableLimits {
    pub(crate) max_processes: usize,
    pub(crate) max_fds: usize,
}

impl Default for TableLimits {
    fn default() -> TableLimits {
        TableLimits { max_processes: 100_000, max_fds: 4_000_000 }
    }
}

/// What the limits kept out of the table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Dropped {
    /// Processes not tracked because `max_processes` were.
    pub(crate) processes: u64,
    /// Descriptors not tracked because `max_fds` were.
    pub(crate) fds: u64,
}

#[derive(Debug, Default)]
pub(crate) struct FdTable {
    processes: HashMap<u32, Process>,
    limits: TableLimits,
    /// Descriptors in all tables (kept, not recounted: metrics read it every scrape).
    fds: usize,
    dropped: Dropped,
    /// Descriptors kept in all `Process::closing`: the once-a-second expiry looks only then.
    closing: usize,
    held: HeldCloses,
}

impl FdTable {
    #[cfg(test)]
    pub(crate) fn new() -> FdTable {
        FdTable::default()
    }

    pub(crate) fn with_limits(limits: TableLimits) -> FdTable {
        FdTable { limits, ..FdTable::default() }
    }

    pub(crate) fn dropped(&self) -> Dropped {
        self.dropped
    }

    pub(crate) fn held_closes(&self) -> HeldCloses {
        self.held
    }

    /// It tracks `tgid`, or would take it: not at `max_processes`.
    pub(crate) fn has_room_for(&self, tgid: u32) -> bool {
        self.processes.contains_key(&tgid) || self.processes.len() < self.limits.max_processes
    }

    pub(crate) fn process(&self, tgid: u32) -> Option<&Process> {
        self.processes.get(&tgid)
    }

    pub(crate) fn processes(&self) -> impl Iterator<Item = (u32, &Process)> {
        self.processes.iter().map(|(tgid, p)| (*tgid, p))
    }

    pub(crate) fn process_count(&self) -> usize {
        self.processes.len()
    }

    pub(crate) fn fd_count(&self) -> usize {
        self.fds
    }

    /// Apply one event. `site` is where descriptors it creates come from (resolved by the
    /// caller from the event's stack). Transitions are appended to `out`. An open's detail
    /// (its path) is taken out of the event, `FdDetail::None` left there: the path decode made
    /// is the one the table keeps (unless joined to its directory's, or a memfd's reopened),
    /// where a copy per open was an allocation, its bytes and a free (BENCHMARKS.md, "The
    /// descriptor table by number").
    pub(crate) fn apply(&mut self, event: &mut Event, site: SiteId, out: &mut Vec<Transition>) {
        let tgid = event.tgid;
        let now = event.ts_ns;
        match &mut event.op {
            Op::Open { fds, kind, detail, cloexec, dirfd } => {
                let detail = self.absolute(tgid, std::mem::take(detail), *dirfd);
                let (kind, detail) = self.reopened(tgid, *kind, detail);
                let entry = |detail| OpenFd {
                    kind,
                    detail,
                    site,
                    opened_ns: now,
                    cloexec: *cloexec,
                    inherited: false,
                };
                if let Some((last, others)) = fds.split_last() {
                    for &fd in others {
                        self.open(tgid, fd, entry(detail.clone()), out);
                    }
                    self.open(tgid, *last, entry(detail), out);
                }
            }
            Op::Accept { fd, listener, cloexec } => {
                let detail = self
                    .lookup(tgid, *listener)
                    .filter(|l| l.kind == FdKind::Socket)
                    .map(|l| l.detail.clone())
                    .unwrap_or_default();
                let entry = OpenFd {
                    kind: FdKind::Socket,
                    detail,
                    site,
                    opened_ns: now,
                    cloexec: *cloexec,
                    inherited: false,
                };
                self.open(tgid, *fd, entry, out);
            }
            Op::Dup { old, new, cloexec, replaces } => {
                if old == new {
                    return;
                }
                let (kind, detail) = self
                    .lookup(tgid, *old)
                    .map(|e| (e.kind, e.detail.clone()))
                    .unwrap_or((FdKind::Other, FdDetail::None));
                if *replaces {
                    // Kept: the number may have been free, another thread's close in flight.
                    self.close_and_keep(tgid, *new, CloseReason::Replaced, now, out);
                }
                let entry =
                    OpenFd { kind, detail, site, opened_ns: now, cloexec: *cloexec, inherited: false };
                self.open(tgid, *new, entry, out);
            }
            Op::GetFd { pidfd, target_fd, new } => {
                let source = match self.lookup(tgid, *pidfd).map(|e| &e.detail) {
                    Some(FdDetail::Pid(target)) => self.lookup(*target, *target_fd),
                    _ => None,
                };
                let (kind, detail) =
                    source.map(|e| (e.kind, e.detail.clone())).unwrap_or((FdKind::Other, FdDetail::None));
                let entry = OpenFd { kind, detail, site, opened_ns: now, cloexec: true, inherited: false };
                self.open(tgid, *new, entry, out);
            }
            Op::Receive { fds, cloexec, .. } => {
                for &fd in fds.iter() {
                    let entry = OpenFd {
                        kind: FdKind::Other,
                        detail: FdDetail::None,
                        site,
                        opened_ns: now,
                        cloexec: *cloexec,
                        inherited: false,
                    };
                    self.open(tgid, fd, entry, out);
                }
            }
            Op::Close { fd, number_taken } => {
                let late = *number_taken || self.lookup(tgid, *fd).is_none();
                if !(late && self.close_kept(tgid, *fd, CloseReason::Close, true, out)) {
                    self.close(tgid, *fd, CloseReason::Close, out);
                }
            }
            Op::CloseRange { first, last, cloexec_only } => {
                let Some(process) = self.processes.get_mut(&tgid) else { return };
                // close_range takes unsigned bounds; fds above i32::MAX cannot exist.
                let first = (*first).min(i32::MAX as u32) as i32;
                let last = (*last).min(i32::MAX as u32) as i32;
                if first > last {
                    return;
                }
                if *cloexec_only {
                    for (_, entry) in process.fds.range_mut(first..=last) {
                        entry.cloexec = true;
                    }
                } else {
                    let in_range: Vec<i32> = process.fds.range(first..=last).map(|(fd, _)| fd).collect();
                    // What is held in the range is counted closed too (its close lost, or this
                    // one: seen at exit, after an open took the number again, whose descriptor
                    // is closed too then, wrongly, as before closes were seen at exit), and
                    // stays kept: another thread's close of it may still be in flight.
                    for held in
                        process.closing.iter_mut().filter(|c| !c.counted && (first..=last).contains(&c.fd))
                    {
                        held.counted = true;
                        out.push(closed(tgid, held.fd, &held.entry, CloseReason::CloseRange));
                    }
                    for fd in in_range {
                        self.close(tgid, fd, CloseReason::CloseRange, out);
                    }
                }
            }
            Op::SetCloexec { fd, cloexec } => {
                if let Some(entry) = self.processes.get_mut(&tgid).and_then(|p| p.fds.get_mut(fd)) {
                    entry.cloexec = *cloexec;
                }
            }
            Op::NewTask { child, thread, comm } => {
                if *thread {
                    // Threads share the table; the group itself may be new to us.
                    self.ensure(tgid, out);
                    return;
                }
                // A stale table under this pid belongs to a process whose exit we missed.
                self.remove_process(*child, out);
                if self.processes.len() >= self.limits.max_processes {
                    self.dropped.processes += 1;
                    return;
                }
                let room = self.limits.max_fds.saturating_sub(self.fds);
                let parent_fds = self.processes.get(&tgid).map_or(0, |p| p.fds.len());
                self.dropped.fds += parent_fds.saturating_sub(room) as u64;
                let inherited: FdMap<OpenFd> = self
                    .processes
                    .get(&tgid)
                    .map(|parent| {
                        parent
                            .fds
                            .iter()
                            .take(room)
                            .map(|(fd, e)| (fd, OpenFd { inherited: true, ..e.clone() }))
                            .collect()
                    })
                    .unwrap_or_default();
                self.fds += inherited.len();
                out.push(Transition::ProcessStarted { tgid: *child, parent: Some(tgid) });
                for (fd, entry) in inherited.iter() {
                    out.push(Transition::Fd {
                        tgid: *child,
                        fd,
                        kind: entry.kind,
                        site: entry.site,
                        change: FdChange::Inherited,
                    });
                }
                self.processes
                    .insert(*child, Process { comm: comm.clone(), fds: inherited, closing: Vec::new() });
            }
            Op::Exec { comm, .. } => {
                if !self.ensure(tgid, out) {
                    return;
                }
                let process = self.processes.get_mut(&tgid).expect("ensured");
                process.comm = comm.clone();
                let doomed: Vec<i32> =
                    process.fds.iter().filter(|(_, e)| e.cloexec).map(|(fd, _)| fd).collect();
                for fd in doomed {
                    self.close(tgid, fd, CloseReason::Exec, out);
                }
                out.push(Transition::ProcessExec { tgid });
            }
            Op::Exit => self.remove_process(tgid, out),
        }
    }

    /// Load descriptors found open in /proc at start (site `before-trace`). Events applied
    /// afterwards win: an fd both found here and opened by a later event takes the event's site.
    pub(crate) fn insert_observed(
        &mut self,
        tgid: u32,
        comm: &str,
        fds: impl IntoIterator<Item = (i32, ObservedFd)>,
        site: SiteId,
        now_ns: u64,
        out: &mut Vec<Transition>,
    ) {
        if !self.ensure(tgid, out) {
            return;
        }
        let process = self.processes.get_mut(&tgid).expect("ensured");
        if process.comm.is_empty() {
            process.comm = comm.to_string();
        }
        for (fd, observed) in fds {
            let entry = OpenFd {
                kind: observed.kind,
                detail: observed.detail,
                site,
                opened_ns: now_ns,
                cloexec: observed.cloexec,
                inherited: false,
            };
            self.insert(tgid, fd, entry, FdChange::Found, out);
        }
    }

    /// Make `tgid`'s table equal what /proc shows, except for `skip`: descriptors that events
    /// touched while /proc was being read, whose state in the two views may differ honestly.
    pub(crate) fn reconcile(
        &mut self,
        tgid: u32,
        observed: &BTreeMap<i32, ObservedFd>,
        skip: &HashSet<i32>,
        now_ns: u64,
        out: &mut Vec<Transition>,
    ) -> Corrections {
        let mut corrections = Corrections::default();
        let Some(process) = self.processes.get(&tgid) else { return corrections };
        let gone: Vec<i32> =
            process.fds.keys().filter(|fd| !observed.contains_key(fd) && !skip.contains(fd)).collect();
        let missing: Vec<(i32, ObservedFd)> = observed
            .iter()
            .filter(|(fd, _)| !process.fds.contains_key(fd) && !skip.contains(fd))
            .map(|(fd, o)| (*fd, o.clone()))
            .collect();
        let retyped: Vec<(i32, ObservedFd)> = observed
            .iter()
            .filter(|(fd, _)| !skip.contains(fd))
            .filter_map(|(fd, o)| match process.fds.get(fd) {
                Some(entry) if entry.kind != o.kind && o.kind != FdKind::Other => Some((*fd, o.clone())),
                _ => None,
            })
            .collect();
        for fd in gone {
            // Kept: the close may be in flight still (a lingering socket's), its record to come.
            self.close_and_keep(tgid, fd, CloseReason::Reconcile, now_ns, out);
            corrections.removed += 1;
        }
        for (fd, o) in missing {
            let entry = OpenFd {
                kind: o.kind,
                detail: o.detail,
                site: SiteId::UnknownOrigin,
                opened_ns: now_ns,
                cloexec: o.cloexec,
                inherited: false,
            };
            self.insert(tgid, fd, entry, FdChange::Found, out);
            corrections.added += 1;
        }
        // The kernel knows the kind better than our guess from the open call (a path opened
        // where the kernel program could not read the file's mode, a descriptor received
        // through SCM_RIGHTS, or copied from one the table did not have), and names what the
        // event could not.
        if let Some(process) = self.processes.get_mut(&tgid) {
            for (fd, observed) in retyped {
                if let Some(entry) = process.fds.get_mut(&fd) {
                    entry.kind = observed.kind;
                    if entry.detail == FdDetail::None {
                        entry.detail = observed.detail;
                    }
                }
            }
        }
        corrections
    }

    pub(crate) fn set_comm(&mut self, tgid: u32, comm: String) {
        if let Some(process) = self.processes.get_mut(&tgid) {
            process.comm = comm;
        }
    }

    /// Correct a kind the event could not know (received descriptors) from /proc.
    pub(crate) fn set_kind(&mut self, tgid: u32, fd: i32, kind: FdKind, detail: FdDetail) {
        if let Some(entry) = self.processes.get_mut(&tgid).and_then(|p| p.fds.get_mut(&fd)) {
            entry.kind = kind;
            if detail != FdDetail::None {
                entry.detail = detail;
            }
        }
    }

    /// Forget a process without emitting close transitions for its descriptors as closes by
    /// the process: used when it vanished from /proc without an exit event.
    pub(crate) fn remove_process(&mut self, tgid: u32, out: &mut Vec<Transition>) {
        if let Some(process) = self.processes.remove(&tgid) {
            self.fds -= process.fds.len();
            // Held past its process: its close record did not come before the exit's record.
            self.closing -= process.closing.len();
            let held: Vec<Closing> = process.closing.into_iter().filter(|c| !c.counted).collect();
            self.held.lost += held.len() as u64;
            let held = held.into_iter().map(|c| (c.fd, c.entry));
            for (fd, entry) in process.fds.into_iter().chain(held) {
                out.push(closed(tgid, fd, &entry, CloseReason::Exit));
            }
            out.push(Transition::ProcessExited { tgid });
        }
    }

    /// The open descriptor `fd` of `tgid`, if the table has it.
    pub(crate) fn lookup(&self, tgid: u32, fd: i32) -> Option<&OpenFd> {
        self.processes.get(&tgid)?.fds.get(&fd)
    }

    /// Make sure `tgid` has a table; false when it has none and the process cap is reached.
    fn ensure(&mut self, tgid: u32, out: &mut Vec<Transition>) -> bool {
        if self.processes.contains_key(&tgid) {
            return true;
        }
        if self.processes.len() >= self.limits.max_processes {
            self.dropped.processes += 1;
            return false;
        }
        self.processes.insert(tgid, Process::default());
        out.push(Transition::ProcessStarted { tgid, parent: None });
        true
    }

    /// A relative path made absolute against its directory descriptor, when we know that one's
    /// path; otherwise unchanged.
    fn absolute(&self, tgid: u32, detail: FdDetail, dirfd: Option<i32>) -> FdDetail {
        let (FdDetail::Path(relative), Some(dirfd)) = (&detail, dirfd) else {
            return detail;
        };
        match self.lookup(tgid, dirfd).and_then(|dir| dir.detail.path()) {
            Some(dir) => {
                let mut joined = dir.to_vec();
                if !joined.ends_with(b"/") {
                    joined.push(b'/');
                }
                joined.extend_from_slice(relative);
                FdDetail::Path(joined.into_boxed_slice())
            }
            None => detail,
        }
    }

    /// A memfd opened again through its descriptor's link (`/proc/self/fd/N`, `/dev/fd/N`: the
    /// way to a read-only descriptor of a sealed memfd) is a memfd with the memfd's name, as
    /// /proc says (`/memfd:NAME (deleted)`), where the mode the kind comes from (sys/decode.rs)
    /// is a regular file's. Only the process's own links: `/proc/PID/fd/N` names a pid of the
    /// process's namespace, which the table is not keyed by.
    fn reopened(&self, tgid: u32, kind: FdKind, detail: FdDetail) -> (FdKind, FdDetail) {
        if kind != FdKind::File {
            return (kind, detail);
        }
        match detail.path().and_then(own_fd_link).and_then(|fd| self.lookup(tgid, fd)) {
            Some(source) if source.kind == FdKind::Memfd => (FdKind::Memfd, source.detail.clone()),
            _ => (kind, detail),
        }
    }

    fn open(&mut self, tgid: u32, fd: i32, entry: OpenFd, out: &mut Vec<Transition>) {
        self.insert(tgid, fd, entry, FdChange::Opened, out);
    }

    fn insert(&mut self, tgid: u32, fd: i32, entry: OpenFd, change: FdChange, out: &mut Vec<Transition>) {
        if fd < 0 || !self.ensure(tgid, out) {
            return;
        }
        let process = self.processes.get_mut(&tgid).expect("ensured");
        // The kernel never hands out an open fd number, so an entry the table has for it was
        // closed. One found in /proc is the same descriptor seen twice (opened between
        // attaching and scanning), or one whose close is in flight: replaced silently, and
        // kept. One opened under tracing is held for its close when an open replaces it (the
        // module's doc); when /proc shows the new one, its close was lost.
        let found = |p: &OpenFd| matches!(p.site, SiteId::BeforeTrace | SiteId::UnknownOrigin);
        let opened = change == FdChange::Opened;
        match process.fds.get(&fd) {
            None if self.fds >= self.limits.max_fds => {
                self.dropped.fds += 1;
                return;
            }
            None => self.fds += 1,
            Some(previous) if !found(previous) && !opened => {
                out.push(closed(tgid, fd, previous, CloseReason::Reconcile))
            }
            Some(_) => {}
        }
        let since_ns = entry.opened_ns;
        out.push(Transition::Fd { tgid, fd, kind: entry.kind, site: entry.site, change });
        if let Some(previous) = process.fds.insert(fd, entry).filter(|_| opened) {
            let counted = found(&previous);
            self.keep(tgid, Closing { fd, entry: previous, since_ns, counted }, out);
        }
    }

    /// Close `fd` of `tgid` for `reason` and keep it for a close record that may still come
    /// (the module's doc).
    fn close_and_keep(
        &mut self,
        tgid: u32,
        fd: i32,
        reason: CloseReason,
        now_ns: u64,
        out: &mut Vec<Transition>,
    ) {
        if let Some(entry) = self.close(tgid, fd, reason, out) {
            self.keep(tgid, Closing { fd, entry, since_ns: now_ns, counted: true }, out);
        }
    }

    fn keep(&mut self, tgid: u32, closing: Closing, out: &mut Vec<Transition>) {
        let Some(process) = self.processes.get_mut(&tgid) else { return };
        process.closing.push(closing);
        self.closing += 1;
        if process.closing.len() > MAX_CLOSING {
            let oldest = process.closing.remove(0);
            self.closing -= 1;
            self.count_lost(tgid, &oldest, out);
        }
    }

    /// A close record (`reason`) for `fd` of `tgid` that is the close of a descriptor kept for
    /// that number, if there is one (the module's doc): the newest held one (its close still to
    /// count: an older one is more likely one whose close was lost), else, with `counted_too`,
    /// the newest counted one (silently).
    fn close_kept(
        &mut self,
        tgid: u32,
        fd: i32,
        reason: CloseReason,
        counted_too: bool,
        out: &mut Vec<Transition>,
    ) -> bool {
        let Some(process) = self.processes.get_mut(&tgid) else { return false };
        let held = process.closing.iter().rposition(|c| c.fd == fd && !c.counted);
        let counted = || process.closing.iter().rposition(|c| c.fd == fd && counted_too);
        let Some(at) = held.or_else(counted) else { return false };
        let kept = process.closing.remove(at);
        self.closing -= 1;
        self.held.resolved += 1;
        if !kept.counted {
            out.push(closed(tgid, fd, &kept.entry, reason));
        }
        true
    }

    /// Forget what was kept since `CLOSE_HOLD_NS` before `now_ns`, counting the close of what
    /// was held lost. Once a second.
    pub(crate) fn expire_held_closes(&mut self, now_ns: u64, out: &mut Vec<Transition>) {
        if self.closing == 0 {
            return;
        }
        let mut expired = Vec::new();
        for (tgid, process) in &mut self.processes {
            let old = process.closing.extract_if(.., |c| c.since_ns.saturating_add(CLOSE_HOLD_NS) <= now_ns);
            expired.extend(old.map(|c| (*tgid, c)));
        }
        self.closing -= expired.len();
        for (tgid, kept) in expired {
            self.count_lost(tgid, &kept, out);
        }
    }

    /// A held descriptor whose close did not come: counted closed as lost (nothing for one
    /// counted already).
    fn count_lost(&mut self, tgid: u32, held: &Closing, out: &mut Vec<Transition>) {
        if held.counted {
            return;
        }
        self.held.lost += 1;
        out.push(closed(tgid, held.fd, &held.entry, CloseReason::Reconcile));
    }

    /// Close `fd` of `tgid` for `reason`; the descriptor closed, if it was open.
    fn close(
        &mut self,
        tgid: u32,
        fd: i32,
        reason: CloseReason,
        out: &mut Vec<Transition>,
    ) -> Option<OpenFd> {
        let entry = self.processes.get_mut(&tgid)?.fds.remove(&fd)?;
        self.fds -= 1;
        out.push(closed(tgid, fd, &entry, reason));
        Some(entry)
    }
}

/// The transition of `entry`, `tgid`'s descriptor `fd`, closed for `reason`.
fn closed(tgid: u32, fd: i32, entry: &OpenFd, reason: CloseReason) -> Transition {
    Transition::Fd { tgid, fd, kind: entry.kind, site: entry.site, change: FdChange::Closed(reason) }
}

/// The descriptor number a path names through the opener's own descriptor links
/// (`/proc/self/fd/N`, `/proc/thread-self/fd/N`, `/dev/fd/N`), if it is one.
fn own_fd_link(path: &[u8]) -> Option<i32> {
    let number = [&b"/proc/self/fd/"[..], b"/proc/thread-self/fd/", b"/dev/fd/"]
        .iter()
        .find_map(|prefix| path.strip_prefix(*prefix))?;
    if number.is_empty() || !number.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(number).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use smallvec::smallvec;

    use super::*;
    use crate::model::event::StackIds;

    const SITE_A: SiteId = SiteId::Stack(0xa);
    const SITE_B: SiteId = SiteId::Stack(0xb);

    fn event(tgid: u32, ts_ns: u64, op: Op) -> Event {
        Event { tgid, tid: tgid, ts_ns, stacks: StackIds::default(), op }
    }

    fn open(fd: i32, kind: FdKind, cloexec: bool) -> Op {
        Op::Open { fds: smallvec![fd], kind, detail: FdDetail::None, cloexec, dirfd: None }
    }

    /// An open the event named: by `detail`, not close-on-exec, not relative.
    fn open_named(fd: i32, kind: FdKind, detail: FdDetail) -> Op {
        Op::Open { fds: smallvec![fd], kind, detail, cloexec: false, dirfd: None }
    }

    fn path(p: &[u8]) -> FdDetail {
        FdDetail::Path(p.to_vec().into())
    }

    fn apply(table: &mut FdTable, tgid: u32, op: Op, site: SiteId) -> Vec<Transition> {
        let mut out = Vec::new();
        table.apply(&mut event(tgid, 1, op), site, &mut out);
        out
    }

    fn fds(table: &FdTable, tgid: u32) -> Vec<(i32, FdKind)> {
        table.process(tgid).map(|p| p.fds.iter().map(|(fd, e)| (fd, e.kind)).collect()).unwrap_or_default()
    }

    #[test]
    fn open_then_close() {
        let mut table = FdTable::new();
        let out = apply(&mut table, 10, open(3, FdKind::File, false), SITE_A);
        assert_eq!(
            out,
            vec![
                Transition::ProcessStarted { tgid: 10, parent: None },
                Transition::Fd {
                    tgid: 10,
                    fd: 3,
                    kind: FdKind::File,
                    site: SITE_A,
                    change: FdChange::Opened
                },
            ]
        );
        let out = apply(&mut table, 10, Op::Close { fd: 3, number_taken: false }, SITE_A);
        assert_eq!(
            out,
            vec![Transition::Fd {
                tgid: 10,
                fd: 3,
                kind: FdKind::File,
                site: SITE_A,
                change: FdChange::Closed(CloseReason::Close)
            }]
        );
        assert!(fds(&table, 10).is_empty());
        // Closing what is not open (EBADF) changes nothing.
        assert!(apply(&mut table, 10, Op::Close { fd: 3, number_taken: false }, SITE_A).is_empty());
    }

    #[test]
    fn accept_inherits_the_listeners_socket_detail() {
        let mut table = FdTable::new();
        let detail = FdDetail::Socket { family: 2, sock_type: 1, protocol: 6 };
        apply(
            &mut table,
            10,
            Op::Open {
                fds: smallvec![3],
                kind: FdKind::Socket,
                detail: detail.clone(),
                cloexec: false,
                dirfd: None,
            },
            SITE_A,
        );
        apply(&mut table, 10, Op::Accept { fd: 4, listener: 3, cloexec: true }, SITE_B);
        let accepted = &table.process(10).unwrap().fds[&4];
        assert_eq!(
            (accepted.kind, &accepted.detail, accepted.site, accepted.cloexec),
            (FdKind::Socket, &detail, SITE_B, true)
        );
    }

    #[test]
    fn dup2_onto_open_fd_closes_it() {
        let mut table = FdTable::new();
        apply(&mut table, 10, open(3, FdKind::Pipe, false), SITE_A);
        apply(&mut table, 10, open(1, FdKind::Device, false), SiteId::BeforeTrace);
        let out = apply(&mut table, 10, Op::Dup { old: 3, new: 1, cloexec: false, replaces: true }, SITE_B);
        assert!(out.contains(&Transition::Fd {
            tgid: 10,
            fd: 1,
            kind: FdKind::Device,
            site: SiteId::BeforeTrace,
            change: FdChange::Closed(CloseReason::Replaced)
        }));
        assert_eq!(fds(&table, 10), vec![(1, FdKind::Pipe), (3, FdKind::Pipe)]);
        assert_eq!(table.process(10).unwrap().fds[&1].site, SITE_B);
    }

    #[test]
    fn close_range_closes_or_marks() {
        let mut table = FdTable::new();
        for fd in [3, 4, 5, 9] {
            apply(&mut table, 10, open(fd, FdKind::File, false), SITE_A);
        }
        apply(&mut table, 10, Op::CloseRange { first: 4, last: 5, cloexec_only: true }, SITE_A);
        assert!(table.process(10).unwrap().fds[&4].cloexec);
        assert!(!table.process(10).unwrap().fds[&3].cloexec);
        apply(&mut table, 10, Op::CloseRange { first: 4, last: u32::MAX, cloexec_only: false }, SITE_A);
        assert_eq!(fds(&table, 10), vec![(3, FdKind::File)]);
    }

    #[test]
    fn fork_copies_exec_closes_cloexec_exit_clears() {
        let mut table = FdTable::new();
        apply(&mut table, 10, open(3, FdKind::File, false), SITE_A);
        apply(&mut table, 10, open(4, FdKind::Socket, true), SITE_B);
        let out = apply(&mut table, 10, Op::NewTask { child: 11, thread: false, comm: "w".into() }, SITE_A);
        assert!(out.contains(&Transition::ProcessStarted { tgid: 11, parent: Some(10) }));
        assert_eq!(fds(&table, 11), vec![(3, FdKind::File), (4, FdKind::Socket)]);
        assert!(table.process(11).unwrap().fds[&3].inherited);
        assert_eq!(table.process(11).unwrap().fds[&4].site, SITE_B);

        let out = apply(
            &mut table,
            11,
            Op::Exec { old_tid: 11, filename: b"/bin/true".to_vec(), comm: "true".into() },
            SITE_A,
        );
        assert!(out.contains(&Transition::Fd {
            tgid: 11,
            fd: 4,
            kind: FdKind::Socket,
            site: SITE_B,
            change: FdChange::Closed(CloseReason::Exec)
        }));
        assert_eq!(fds(&table, 11), vec![(3, FdKind::File)]);
        assert_eq!(table.process(11).unwrap().comm, "true");
        // The parent is untouched by its child's exec.
        assert_eq!(fds(&table, 10).len(), 2);

        let out = apply(&mut table, 11, Op::Exit, SITE_A);
        assert!(out.contains(&Transition::ProcessExited { tgid: 11 }));
        assert!(table.process(11).is_none());
    }

    #[test]
    fn threads_share_the_table() {
        let mut table = FdTable::new();
        apply(&mut table, 10, Op::NewTask { child: 12, thread: true, comm: "t".into() }, SITE_A);
        // The thread's events carry the group's tgid.
        let mut out = Vec::new();
        table.apply(
            &mut Event {
                tgid: 10,
                tid: 12,
                ts_ns: 1,
                stacks: StackIds::default(),
                op: open(5, FdKind::Eventfd, false),
            },
            SITE_A,
            &mut out,
        );
        assert_eq!(fds(&table, 10), vec![(5, FdKind::Eventfd)]);
        assert!(table.process(12).is_none());
    }

    #[test]
    fn recycled_pid_starts_clean() {
        let mut table = FdTable::new();
        apply(&mut table, 20, open(7, FdKind::File, false), SITE_A);
        // Pid 20's exit was lost; pid 20 is now a new child of 10.
        apply(&mut table, 10, Op::NewTask { child: 20, thread: false, comm: "new".into() }, SITE_A);
        assert!(fds(&table, 20).is_empty());
    }

    #[test]
    fn relative_paths_join_their_directory() {
        let mut table = FdTable::new();
        apply(
            &mut table,
            10,
            Op::Open {
                fds: smallvec![3],
                kind: FdKind::Dir,
                detail: FdDetail::Path(b"/srv/data".to_vec().into()),
                cloexec: true,
                dirfd: None,
            },
            SITE_A,
        );
        apply(
            &mut table,
            10,
            Op::Open {
                fds: smallvec![4],
                kind: FdKind::File,
                detail: FdDetail::Path(b"a.bin".to_vec().into()),
                cloexec: false,
                dirfd: Some(3),
            },
            SITE_A,
        );
        assert_eq!(table.process(10).unwrap().fds[&4].detail.path(), Some(&b"/srv/data/a.bin"[..]));
    }

    /// A memfd opened again through its own descriptor's link is a memfd with its name; any
    /// other path, a link to another kind, or to a number not open, keeps what the open said.
    #[test]
    fn a_memfd_reopened_through_its_link_is_a_memfd() {
        let mut table = FdTable::new();
        let memfd = open_named(3, FdKind::Memfd, FdDetail::Name(b"cache".to_vec().into()));
        apply(&mut table, 10, memfd, SITE_A);
        apply(&mut table, 10, open(4, FdKind::Pipe, false), SITE_A);
        apply(&mut table, 10, open(5, FdKind::File, false), SITE_A);
        let cases: [(&[u8], FdKind, FdKind); 9] = [
            (b"/proc/self/fd/3", FdKind::File, FdKind::Memfd),
            (b"/proc/thread-self/fd/3", FdKind::File, FdKind::Memfd),
            (b"/dev/fd/3", FdKind::File, FdKind::Memfd),
            (b"/proc/self/fd/4", FdKind::Pipe, FdKind::Pipe),
            (b"/proc/self/fd/5", FdKind::File, FdKind::File),
            (b"/proc/self/fd/9", FdKind::File, FdKind::File),
            (b"/proc/self/fd/3/", FdKind::File, FdKind::File),
            (b"/proc/self/fd/", FdKind::File, FdKind::File),
            (b"/proc/10/fd/3", FdKind::File, FdKind::File),
        ];
        for (fd, (link, said, kind)) in (20..).zip(cases) {
            apply(&mut table, 10, open_named(fd, said, path(link)), SITE_B);
            let entry = &table.process(10).unwrap().fds[&fd];
            assert_eq!(entry.kind, kind, "{}", String::from_utf8_lossy(link));
            let detail =
                if kind == FdKind::Memfd { FdDetail::Name(b"cache".to_vec().into()) } else { path(link) };
            assert_eq!(entry.detail, detail, "{}", String::from_utf8_lossy(link));
        }
    }

    #[test]
    fn get_fd_copies_from_the_pidfds_process() {
        let mut table = FdTable::new();
        apply(&mut table, 30, open(9, FdKind::Memfd, false), SITE_A);
        apply(
            &mut table,
            10,
            Op::Open {
                fds: smallvec![3],
                kind: FdKind::Pidfd,
                detail: FdDetail::Pid(30),
                cloexec: true,
                dirfd: None,
            },
            SITE_A,
        );
        apply(&mut table, 10, Op::GetFd { pidfd: 3, target_fd: 9, new: 4 }, SITE_B);
        assert_eq!(table.process(10).unwrap().fds[&4].kind, FdKind::Memfd);
    }

    #[test]
    fn observed_then_event_takes_the_events_site_silently() {
        let mut table = FdTable::new();
        let mut out = Vec::new();
        let observed = ObservedFd { kind: FdKind::File, detail: FdDetail::None, cloexec: false };
        table.insert_observed(10, "w", [(3, observed)], SiteId::BeforeTrace, 0, &mut out);
        let out = apply(&mut table, 10, open(3, FdKind::File, false), SITE_A);
        assert!(out.iter().all(|t| !matches!(t, Transition::Fd { change: FdChange::Closed(_), .. })));
        assert_eq!(table.process(10).unwrap().fds[&3].site, SITE_A);
    }

    fn closed(out: &[Transition]) -> Vec<(i32, SiteId, CloseReason)> {
        out.iter()
            .filter_map(|t| match t {
                Transition::Fd { fd, site, change: FdChange::Closed(reason), .. } => {
                    Some((*fd, *site, *reason))
                }
                _ => None,
            })
            .collect()
    }

    /// Another thread's close of 3 is in flight (seen at its exit) when this one is given 3:
    /// the record of that close, which says 3 was taken again, closes the old descriptor, not
    /// the new one.
    #[test]
    fn a_close_seen_after_its_numbers_reuse_closes_the_old_descriptor() {
        let mut table = FdTable::new();
        apply(&mut table, 10, open(3, FdKind::File, false), SITE_A);
        let out = apply(&mut table, 10, open(3, FdKind::Socket, false), SITE_B);
        assert_eq!(closed(&out), vec![], "held, not closed: its close may still come");
        assert_eq!(fds(&table, 10), vec![(3, FdKind::Socket)]);
        assert_eq!(table.fd_count(), 1);
        let out = apply(&mut table, 10, Op::Close { fd: 3, number_taken: true }, SITE_A);
        assert_eq!(closed(&out), vec![(3, SITE_A, CloseReason::Close)]);
        assert_eq!(fds(&table, 10), vec![(3, FdKind::Socket)]);
        assert_eq!(table.held_closes(), HeldCloses { resolved: 1, lost: 0 });
        // The next close of 3 is the new one's.
        let out = apply(&mut table, 10, Op::Close { fd: 3, number_taken: false }, SITE_A);
        assert_eq!(closed(&out), vec![(3, SITE_B, CloseReason::Close)]);
        assert_eq!(fds(&table, 10), vec![]);
        // The new one closed too before the old one's close came: that close finds nothing
        // at 3, and closes what is held.
        apply(&mut table, 10, open(3, FdKind::File, false), SITE_A);
        apply(&mut table, 10, open(3, FdKind::Socket, false), SITE_B);
        let out = apply(&mut table, 10, Op::Close { fd: 3, number_taken: false }, SITE_A);
        assert_eq!(closed(&out), vec![(3, SITE_B, CloseReason::Close)]);
        let out = apply(&mut table, 10, Op::Close { fd: 3, number_taken: false }, SITE_A);
        assert_eq!(closed(&out), vec![(3, SITE_A, CloseReason::Close)]);
        assert_eq!(table.closing, 0);
    }

    /// A close lost from the ring: the next open of its number holds the stale descriptor,
    /// and that open's own close (its number free at its exit) still closes it, not the stale
    /// one: no descriptor stays in the table after its close (which holding alone would make
    /// of every later pair of that number). The stale one is counted lost after the hold.
    #[test]
    fn a_close_lost_does_not_make_later_closes_miss() {
        let mut table = FdTable::new();
        let mut out = Vec::new();
        let at = |ts_ns, op| Event { ts_ns, ..event(10, 0, op) };
        table.apply(&mut at(1, open(7, FdKind::File, false)), SITE_A, &mut out);
        // (its close lost)
        for n in 0..3 {
            table.apply(&mut at(2 + n, open(7, FdKind::File, false)), SITE_B, &mut out);
            out.clear();
            table.apply(&mut at(2 + n, Op::Close { fd: 7, number_taken: false }), SITE_B, &mut out);
            assert_eq!(closed(&out), vec![(7, SITE_B, CloseReason::Close)], "pair {n}");
            assert_eq!(fds(&table, 10), vec![]);
        }
        out.clear();
        table.expire_held_closes(2 + CLOSE_HOLD_NS, &mut out);
        assert_eq!(closed(&out), vec![(7, SITE_A, CloseReason::Reconcile)]);
        assert_eq!(table.held_closes(), HeldCloses { resolved: 0, lost: 1 });
    }

    /// What a dup2 replaced, what reconciliation found gone and what an open found in /proc
    /// replaced are counted closed at once, and kept: a close of theirs in flight (its number
    /// taken again by its exit) closes nothing more, and the new descriptor stays; a close of
    /// the new one closes it.
    #[test]
    fn what_left_the_table_without_its_close_is_kept_for_it() {
        let mut table = FdTable::new();
        let mut out = Vec::new();
        for fd in [3, 4] {
            table.apply(&mut event(10, 1, open(fd, FdKind::File, false)), SITE_A, &mut out);
        }
        let observed = ObservedFd { kind: FdKind::Pipe, detail: FdDetail::None, cloexec: false };
        table.insert_observed(10, "w", [(5, observed)], SiteId::BeforeTrace, 1, &mut out);
        // dup2(3, 4); 5 given again; reconciliation finds 3 gone (its close lingering).
        let out = apply(&mut table, 10, Op::Dup { old: 3, new: 4, cloexec: false, replaces: true }, SITE_B);
        assert!(closed(&out).contains(&(4, SITE_A, CloseReason::Replaced)), "{out:?}");
        let out = apply(&mut table, 10, open(5, FdKind::Socket, false), SITE_B);
        assert_eq!(closed(&out), vec![], "replaced silently, as one seen twice");
        let mut out = Vec::new();
        table.reconcile(10, &BTreeMap::new(), &[4, 5].into_iter().collect(), 2, &mut out);
        assert_eq!(closed(&out), vec![(3, SITE_A, CloseReason::Reconcile)]);
        apply(&mut table, 10, open(3, FdKind::Eventfd, false), SITE_B);
        for fd in [4, 5, 3] {
            let out = apply(&mut table, 10, Op::Close { fd, number_taken: true }, SITE_A);
            assert_eq!(closed(&out), vec![], "the late close of {fd}");
        }
        assert_eq!(fds(&table, 10), vec![(3, FdKind::Eventfd), (4, FdKind::File), (5, FdKind::Socket)]);
        assert_eq!(table.held_closes(), HeldCloses { resolved: 3, lost: 0 });
        for fd in [4, 5, 3] {
            let out = apply(&mut table, 10, Op::Close { fd, number_taken: false }, SITE_A);
            assert_eq!(closed(&out).len(), 1, "the new {fd}'s close");
        }
        assert_eq!(fds(&table, 10), vec![]);
        // Kept ones whose close never comes are forgotten, not counted again.
        apply(&mut table, 10, open(6, FdKind::File, false), SITE_A);
        let mut out = Vec::new();
        table.apply(
            &mut event(10, 3, Op::Dup { old: 6, new: 7, cloexec: false, replaces: true }),
            SITE_A,
            &mut out,
        );
        table.apply(
            &mut event(10, 3, Op::Dup { old: 6, new: 7, cloexec: false, replaces: true }),
            SITE_A,
            &mut out,
        );
        assert_eq!(table.closing, 1);
        out.clear();
        table.expire_held_closes(3 + CLOSE_HOLD_NS, &mut out);
        assert_eq!((closed(&out), table.closing, table.held_closes().lost), (vec![], 0, 0));
    }

    /// close_range does not say which numbers were open: it closes what the table has in its
    /// range and counts what is held there closed (a close lost, then the number opened again:
    /// both are closed in the kernel), keeping it for a close of it still in flight.
    #[test]
    fn a_close_range_closes_what_is_held_in_it_too() {
        let mut table = FdTable::new();
        for fd in [3, 4] {
            apply(&mut table, 10, open(fd, FdKind::File, false), SITE_A);
        }
        apply(&mut table, 10, open(4, FdKind::Socket, false), SITE_B);
        let out = apply(&mut table, 10, Op::CloseRange { first: 3, last: 9, cloexec_only: false }, SITE_A);
        assert_eq!(
            closed(&out),
            vec![
                (4, SITE_A, CloseReason::CloseRange),
                (3, SITE_A, CloseReason::CloseRange),
                (4, SITE_B, CloseReason::CloseRange)
            ]
        );
        assert_eq!(fds(&table, 10), vec![]);
        // 4 given again; the close of the held one, in flight all along, comes: it closes
        // nothing more, and the new 4 stays.
        apply(&mut table, 10, open(4, FdKind::Pipe, false), SITE_B);
        let out = apply(&mut table, 10, Op::Close { fd: 4, number_taken: true }, SITE_A);
        assert_eq!(closed(&out), vec![]);
        assert_eq!(fds(&table, 10), vec![(4, FdKind::Pipe)]);
        assert_eq!(table.held_closes(), HeldCloses { resolved: 1, lost: 0 });
    }

    /// A held descriptor whose close never comes (a record lost, io_uring's close) is taken
    /// for lost after `CLOSE_HOLD_NS`, as reopening meant before closes were seen at exit;
    /// at its process's exit at once; and a process holds at most `MAX_CLOSING`.
    #[test]
    fn a_held_close_that_never_comes_is_taken_for_lost() {
        let mut table = FdTable::new();
        let mut out = Vec::new();
        let at = |ts_ns, op| Event { ts_ns, ..event(10, 0, op) };
        table.apply(&mut at(1_000, open(3, FdKind::File, false)), SITE_A, &mut out);
        table.apply(&mut at(2_000, open(3, FdKind::Socket, false)), SITE_B, &mut out);
        out.clear();
        table.expire_held_closes(2_000 + CLOSE_HOLD_NS - 1, &mut out);
        assert_eq!(closed(&out), vec![]);
        table.expire_held_closes(2_000 + CLOSE_HOLD_NS, &mut out);
        assert_eq!(closed(&out), vec![(3, SITE_A, CloseReason::Reconcile)]);
        assert_eq!(table.held_closes(), HeldCloses { resolved: 0, lost: 1 });
        // Its close, were it to come now, is the new one's.
        out.clear();
        table.apply(&mut at(3_000, Op::Close { fd: 3, number_taken: false }), SITE_A, &mut out);
        assert_eq!(closed(&out), vec![(3, SITE_B, CloseReason::Close)]);

        // At exit: what is held goes with the process.
        table.apply(&mut at(4_000, open(5, FdKind::File, false)), SITE_A, &mut out);
        table.apply(&mut at(5_000, open(5, FdKind::File, false)), SITE_B, &mut out);
        out.clear();
        table.apply(&mut at(6_000, Op::Exit), SITE_A, &mut out);
        assert_eq!(closed(&out), vec![(5, SITE_B, CloseReason::Exit), (5, SITE_A, CloseReason::Exit)]);
        assert_eq!(table.held_closes().lost, 2);

        // At most MAX_CLOSING held: the oldest goes first.
        for n in 0..=MAX_CLOSING as u64 {
            table.apply(&mut at(7_000 + n, open(6, FdKind::File, false)), SiteId::Stack(n), &mut out);
        }
        out.clear();
        table.apply(&mut at(9_000, open(6, FdKind::File, false)), SITE_B, &mut out);
        assert_eq!(closed(&out), vec![(6, SiteId::Stack(0), CloseReason::Reconcile)]);
        assert_eq!(table.held_closes().lost, 3);
        assert_eq!(table.closing, MAX_CLOSING);
    }

    /// One found in /proc and opened by a record is the same descriptor; one the table has
    /// from a record that /proc shows replaced (reconciliation, the baseline) lost its close.
    #[test]
    fn found_over_a_traced_fd_means_a_lost_close() {
        let mut table = FdTable::new();
        apply(&mut table, 10, open(3, FdKind::File, false), SITE_A);
        let mut out = Vec::new();
        let observed = ObservedFd { kind: FdKind::Socket, detail: FdDetail::None, cloexec: false };
        table.insert_observed(10, "w", [(3, observed)], SiteId::BeforeTrace, 0, &mut out);
        assert_eq!(closed(&out), vec![(3, SITE_A, CloseReason::Reconcile)]);
        assert_eq!(table.closing, 0);
    }

    #[test]
    fn limits_keep_the_oldest_and_count_what_they_drop() {
        let mut table = FdTable::with_limits(TableLimits { max_processes: 2, max_fds: 3 });
        for fd in [3, 4, 5, 6] {
            apply(&mut table, 10, open(fd, FdKind::File, false), SITE_A);
        }
        assert_eq!(fds(&table, 10).iter().map(|(fd, _)| *fd).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(table.dropped(), Dropped { processes: 0, fds: 1 });
        // Replacing a tracked fd is not growth.
        apply(&mut table, 10, Op::Dup { old: 3, new: 5, cloexec: false, replaces: true }, SITE_A);
        assert_eq!(table.fd_count(), 3);
        // A fork copies only what fits.
        apply(&mut table, 10, Op::Close { fd: 4, number_taken: false }, SITE_A);
        apply(&mut table, 10, Op::NewTask { child: 11, thread: false, comm: "c".into() }, SITE_A);
        assert_eq!(table.fd_count(), 3);
        assert_eq!(table.dropped().fds, 2);
        // A third process is not tracked.
        apply(&mut table, 12, Op::Close { fd: 1, number_taken: false }, SITE_A);
        apply(&mut table, 12, open(3, FdKind::File, false), SITE_A);
        assert!(table.process(12).is_none());
        assert_eq!(table.dropped().processes, 1);
        apply(&mut table, 10, Op::Exit, SITE_A);
        assert_eq!(table.fd_count(), 1);
    }

    #[test]
    fn reconcile_adds_removes_and_skips_touched() {
        let mut table = FdTable::new();
        for fd in [3, 4, 5] {
            apply(&mut table, 10, open(fd, FdKind::File, false), SITE_A);
        }
        let observed: BTreeMap<i32, ObservedFd> = [3, 6, 7]
            .into_iter()
            .map(|fd| (fd, ObservedFd { kind: FdKind::Socket, detail: FdDetail::None, cloexec: false }))
            .collect();
        // fd 5 and 7 were touched by events while /proc was read: leave them alone.
        let skip: HashSet<i32> = [5, 7].into_iter().collect();
        let mut out = Vec::new();
        let corrections = table.reconcile(10, &observed, &skip, 99, &mut out);
        assert_eq!(corrections, Corrections { added: 1, removed: 1 });
        assert_eq!(fds(&table, 10), vec![(3, FdKind::Socket), (5, FdKind::File), (6, FdKind::Socket)]);
        assert_eq!(table.process(10).unwrap().fds[&6].site, SiteId::UnknownOrigin);
        // Unknown processes are not created by reconciliation.
        assert_eq!(table.reconcile(99, &observed, &skip, 99, &mut out), Corrections::default());
        assert!(table.process(99).is_none());
    }

    /// A descriptor whose kind the event could not tell (received, with no detail) takes its
    /// kind and its name from /proc; one the event named keeps its name.
    #[test]
    fn reconcile_names_what_it_retypes_when_the_event_could_not() {
        let mut table = FdTable::new();
        apply(
            &mut table,
            10,
            Op::Receive { socket: 4, fds: smallvec![3], cloexec: false, truncated: false },
            SITE_A,
        );
        apply(&mut table, 10, open_named(4, FdKind::File, path(b"/srv/queue")), SITE_A);
        let observed: BTreeMap<i32, ObservedFd> = [
            (3, ObservedFd { kind: FdKind::Dir, detail: path(b"/srv"), cloexec: false }),
            (4, ObservedFd { kind: FdKind::Pipe, detail: path(b"/srv/queue (moved)"), cloexec: false }),
        ]
        .into();
        table.reconcile(10, &observed, &HashSet::default(), 99, &mut Vec::new());
        let fds = &table.process(10).unwrap().fds;
        assert_eq!((fds[&3].kind, &fds[&3].detail), (FdKind::Dir, &path(b"/srv")));
        assert_eq!((fds[&4].kind, &fds[&4].detail), (FdKind::Pipe, &path(b"/srv/queue")));
    }

    /// Property test: any sequence of opens, dups, closes, ranges, flag changes, forks, execs
    /// and exits leaves the table equal to a deliberately naive model of the kernel's tables,
    /// and the transitions account for every change.
    mod model {
        use std::collections::BTreeMap;

        use proptest::prelude::*;

        use super::*;

        type Model = BTreeMap<u32, BTreeMap<i32, (FdKind, bool)>>;

        #[derive(Clone, Debug)]
        enum Step {
            Open { pid: u32, fd: i32, kind: FdKind, cloexec: bool },
            Close { pid: u32, fd: i32 },
            Dup { pid: u32, old: i32, new: i32, cloexec: bool, replaces: bool },
            CloseRange { pid: u32, first: u32, last: u32, cloexec_only: bool },
            SetCloexec { pid: u32, fd: i32, cloexec: bool },
            Fork { parent: u32, child: u32 },
            Exec { pid: u32 },
            Exit { pid: u32 },
        }

        fn step() -> impl Strategy<Value = Step> {
            let pid = 1u32..4;
            let fd = 0i32..8;
            let kind =
                prop::sample::select(vec![FdKind::File, FdKind::Socket, FdKind::Pipe, FdKind::Eventfd]);
            prop_oneof![
                4 => (pid.clone(), fd.clone(), kind, any::<bool>())
                    .prop_map(|(pid, fd, kind, cloexec)| Step::Open { pid, fd, kind, cloexec }),
                3 => (pid.clone(), fd.clone()).prop_map(|(pid, fd)| Step::Close { pid, fd }),
                2 => (pid.clone(), fd.clone(), fd.clone(), any::<bool>(), any::<bool>())
                    .prop_map(|(pid, old, new, cloexec, replaces)| Step::Dup { pid, old, new, cloexec, replaces }),
                1 => (pid.clone(), 0u32..9, 0u32..9, any::<bool>())
                    .prop_map(|(pid, first, last, cloexec_only)| Step::CloseRange { pid, first, last, cloexec_only }),
                1 => (pid.clone(), fd.clone(), any::<bool>())
                    .prop_map(|(pid, fd, cloexec)| Step::SetCloexec { pid, fd, cloexec }),
                1 => (pid.clone(), pid.clone()).prop_map(|(parent, child)| Step::Fork { parent, child }),
                1 => pid.clone().prop_map(|pid| Step::Exec { pid }),
                1 => pid.prop_map(|pid| Step::Exit { pid }),
            ]
        }

        /// The naive model: what each step does to the kernel's tables, nothing more.
        fn model_apply(model: &mut Model, step: &Step) {
            match step {
                Step::Open { pid, fd, kind, cloexec } => {
                    model.entry(*pid).or_default().insert(*fd, (*kind, *cloexec));
                }
                Step::Close { pid, fd } => {
                    if let Some(t) = model.get_mut(pid) {
                        t.remove(fd);
                    }
                }
                Step::Dup { pid, old, new, cloexec, replaces } => {
                    if old == new {
                        return;
                    }
                    let table = model.entry(*pid).or_default();
                    let kind = table.get(old).map(|e| e.0).unwrap_or(FdKind::Other);
                    if *replaces {
                        table.remove(new);
                    }
                    table.insert(*new, (kind, *cloexec));
                }
                Step::CloseRange { pid, first, last, cloexec_only } => {
                    if let Some(t) = model.get_mut(pid) {
                        for fd in (*first as i32)..=(*last as i32) {
                            if *cloexec_only {
                                if let Some(e) = t.get_mut(&fd) {
                                    e.1 = true;
                                }
                            } else {
                                t.remove(&fd);
                            }
                        }
                    }
                }
                Step::SetCloexec { pid, fd, cloexec } => {
                    if let Some(e) = model.get_mut(pid).and_then(|t| t.get_mut(fd)) {
                        e.1 = *cloexec;
                    }
                }
                Step::Fork { parent, child } => {
                    if parent == child {
                        // A thread of the same process: nothing to copy.
                        model.entry(*parent).or_default();
                        return;
                    }
                    let copy = model.get(parent).cloned().unwrap_or_default();
                    model.insert(*child, copy);
                }
                Step::Exec { pid } => {
                    model.entry(*pid).or_default().retain(|_, e| !e.1);
                }
                Step::Exit { pid } => {
                    model.remove(pid);
                }
            }
        }

        fn as_event(step: &Step) -> Event {
            let (tgid, op) = match step.clone() {
                Step::Open { pid, fd, kind, cloexec } => (
                    pid,
                    Op::Open {
                        fds: smallvec::smallvec![fd],
                        kind,
                        detail: FdDetail::None,
                        cloexec,
                        dirfd: None,
                    },
                ),
                Step::Close { pid, fd } => (pid, Op::Close { fd, number_taken: false }),
                Step::Dup { pid, old, new, cloexec, replaces } => {
                    (pid, Op::Dup { old, new, cloexec, replaces })
                }
                Step::CloseRange { pid, first, last, cloexec_only } => {
                    (pid, Op::CloseRange { first, last, cloexec_only })
                }
                Step::SetCloexec { pid, fd, cloexec } => (pid, Op::SetCloexec { fd, cloexec }),
                Step::Fork { parent, child } => {
                    (parent, Op::NewTask { child, thread: parent == child, comm: String::new() })
                }
                Step::Exec { pid } => {
                    (pid, Op::Exec { old_tid: pid, filename: Vec::new(), comm: String::new() })
                }
                Step::Exit { pid } => (pid, Op::Exit),
            };
            Event { tgid, tid: tgid, ts_ns: 1, stacks: StackIds::default(), op }
        }

        /// The number a step gives out without closing what has it (dup2's replacing does).
        fn made(step: &Step) -> Option<(u32, i32)> {
            match *step {
                Step::Open { pid, fd, .. } => Some((pid, fd)),
                Step::Dup { pid, old, new, replaces: false, .. } if old != new => Some((pid, new)),
                _ => None,
            }
        }

        fn table_view(table: &FdTable) -> Model {
            table
                .processes()
                .map(|(tgid, p)| (tgid, p.fds.iter().map(|(fd, e)| (fd, (e.kind, e.cloexec))).collect()))
                .collect()
        }

        /// A step of one process's threads, for closes seen late: a close's record may come
        /// after opens that were given its number (`late`), in any order with other such.
        #[derive(Clone, Debug)]
        enum Thread {
            Open {
                fd: i32,
            },
            Close {
                fd: i32,
                late: bool,
            },
            /// dup2 of the lowest open number other than `new` onto `new`.
            Dup2 {
                new: i32,
            },
            /// The record of the `n`th (modulo) close still in flight comes.
            Land {
                n: usize,
            },
        }

        fn thread_step() -> impl Strategy<Value = Thread> {
            let fd = 0i32..4;
            prop_oneof![
                3 => fd.clone().prop_map(|fd| Thread::Open { fd }),
                3 => (fd.clone(), any::<bool>()).prop_map(|(fd, late)| Thread::Close { fd, late }),
                1 => fd.prop_map(|new| Thread::Dup2 { new }),
                2 => any::<usize>().prop_map(|n| Thread::Land { n }),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
            #[test]
            fn table_matches_the_model(steps in prop::collection::vec(step(), 1..60)) {
                let mut table = FdTable::new();
                let mut model = Model::new();
                let mut live: BTreeMap<u32, i64> = BTreeMap::new();
                for step in &steps {
                    let mut out = Vec::new();
                    // The kernel never gives out an open number: its close came first (the
                    // order of records closes seen late can change is the next test's).
                    let open_in_model = |(pid, fd): &(u32, i32)| model.get(pid).is_some_and(|t| t.contains_key(fd));
                    if let Some((pid, fd)) = made(step).filter(open_in_model) {
                        let close = Step::Close { pid, fd };
                        table.apply(&mut as_event(&close), SiteId::NoStack, &mut out);
                        model_apply(&mut model, &close);
                    }
                    table.apply(&mut as_event(step), SiteId::NoStack, &mut out);
                    model_apply(&mut model, step);
                    for t in &out {
                        match t {
                            Transition::Fd { tgid, change: FdChange::Closed(_), .. } => *live.entry(*tgid).or_default() -= 1,
                            Transition::Fd { tgid, .. } => *live.entry(*tgid).or_default() += 1,
                            Transition::ProcessExited { tgid } => prop_assert_eq!(live.remove(tgid).unwrap_or(0), 0),
                            _ => {}
                        }
                    }
                    prop_assert_eq!(&table_view(&table), &model, "after {:?}", step);
                    prop_assert_eq!(table.fd_count(), model.values().map(|t| t.len()).sum::<usize>());
                    for (tgid, process) in table.processes() {
                        prop_assert_eq!(live.get(&tgid).copied().unwrap_or(0), process.fds.len() as i64,
                            "transitions account for pid {}'s table after {:?}", tgid, step);
                    }
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
            /// The kernel's table of one process, its threads opening, dup2ing and closing, the
            /// record of a close made at its exit: late, after the opens given its number, in
            /// any order, saying whether its number is taken by then. Whenever no close is in
            /// flight, and once every record is in, the table equals the kernel's, and every
            /// descriptor opened and gone was closed once, by a close or a dup2: none lost.
            #[test]
            fn closes_seen_late_leave_the_table_exact(steps in prop::collection::vec(thread_step(), 1..80)) {
                let mut table = FdTable::new();
                let mut kernel: BTreeMap<i32, u64> = BTreeMap::new();
                let mut in_flight: Vec<i32> = Vec::new();
                let mut opened: Vec<u64> = Vec::new();
                let mut closes: BTreeMap<u64, u32> = BTreeMap::new();
                let mut ts = 0u64;
                let mut feed = |table: &mut FdTable, op: Op, site: SiteId, closes: &mut BTreeMap<u64, u32>| {
                    ts += 1;
                    let mut out = Vec::new();
                    table.apply(&mut Event { ts_ns: ts, ..event(1, 0, op) }, site, &mut out);
                    for (_, site, reason) in closed(&out) {
                        assert!(matches!(reason, CloseReason::Close | CloseReason::Replaced), "{site:?} {reason:?}");
                        let SiteId::Stack(n) = site else { panic!("{site:?}") };
                        *closes.entry(n).or_default() += 1;
                    }
                };
                for step in &steps {
                    match *step {
                        Thread::Open { fd } if !kernel.contains_key(&fd) => {
                            let n = opened.len() as u64;
                            opened.push(n);
                            kernel.insert(fd, n);
                            feed(&mut table, open(fd, FdKind::File, false), SiteId::Stack(n), &mut closes);
                        }
                        Thread::Close { fd, late } if kernel.remove(&fd).is_some() => {
                            if late {
                                in_flight.push(fd);
                            } else {
                                feed(&mut table, Op::Close { fd, number_taken: false }, SiteId::NoStack, &mut closes);
                            }
                        }
                        Thread::Dup2 { new } => {
                            let Some(old) = kernel.keys().copied().find(|fd| *fd != new) else { continue };
                            let n = opened.len() as u64;
                            opened.push(n);
                            kernel.insert(new, n);
                            let dup = Op::Dup { old, new, cloexec: false, replaces: true };
                            feed(&mut table, dup, SiteId::Stack(n), &mut closes);
                        }
                        Thread::Land { n } if !in_flight.is_empty() => {
                            let fd = in_flight.remove(n % in_flight.len());
                            let number_taken = kernel.contains_key(&fd);
                            feed(&mut table, Op::Close { fd, number_taken }, SiteId::NoStack, &mut closes);
                        }
                        _ => {}
                    }
                    if in_flight.is_empty() {
                        let view: BTreeMap<i32, u64> = table.process(1).map(|p| p.fds.iter()
                            .map(|(fd, e)| (fd, match e.site { SiteId::Stack(n) => n, _ => u64::MAX })).collect())
                            .unwrap_or_default();
                        let (view, kernel) = (view.keys().collect::<Vec<_>>(), kernel.keys().collect::<Vec<_>>());
                        prop_assert_eq!(view, kernel, "after {:?}", step);
                    }
                }
                for fd in std::mem::take(&mut in_flight) {
                    let number_taken = kernel.contains_key(&fd);
                    feed(&mut table, Op::Close { fd, number_taken }, SiteId::NoStack, &mut closes);
                }
                let view: Vec<i32> = table.process(1).map(|p| p.fds.keys().collect()).unwrap_or_default();
                prop_assert_eq!(view, kernel.keys().copied().collect::<Vec<_>>());
                let still_open: std::collections::BTreeSet<u64> = kernel.values().copied().collect();
                for n in opened {
                    let expected = u32::from(!still_open.contains(&n));
                    prop_assert_eq!(closes.get(&n).copied().unwrap_or(0), expected, "open {}", n);
                }
                prop_assert_eq!(table.held_closes().lost, 0);
                let held = table.processes().flat_map(|(_, p)| &p.closing).filter(|c| !c.counted).count();
                prop_assert_eq!(held, 0, "every held descriptor's close came");
                prop_assert_eq!(table.fd_count(), kernel.len());
            }
        }
    }
}
