//! The exporter's pure core: from the engine's transitions and its FdTable to the series of
//! ARCHITECTURE.md's metric contract ("Contracts: Metrics"), with cardinality bounded whatever
//! the traced processes do.
//!
//! - A **group** is what the series of one workload share: its workload labels (cgroup), the
//!   process name and, with `--pid-label` only, the pid. Pids churn; without the pid label
//!   10,000 short-lived `curl`s of one service are one group.
//! - Per (group, kind) at most `max_sites` sites are exported, those with the most open
//!   descriptors (ties keep the sites already exported, so the choice does not flap); the rest
//!   fold into `site="other"`. Counters of `other` only grow: a folded site adds what it
//!   opened and closed while folded, never its history.
//! - What is open now (and since when) is counted from the FdTable at each snapshot, so it
//!   cannot drift from the table; opened/closed come from the transitions and outlive the
//!   processes that made them.
//! - A group whose processes have all exited keeps its series (open at 0) for `retention`, then
//!   they are dropped, state and all.
//!
//! No clock and no I/O here: time comes in as CLOCK_BOOTTIME ns, process names and cgroups
//! through [`Identify`], so tests drive it with synthetic transitions.
use std::{cmp::Reverse, collections::BTreeMap, sync::Arc};

// Seeded, as the engine's maps are (model/fdtable.rs): each of a serve's transitions is hashed
// three times here (its process, its group, its site), where SipHash was a few % of its CPU.
use foldhash::{HashMap, HashMapExt as _};
use serde::Serialize;

use crate::{
    model::{
        fd::{FdKind, SiteId, printable},
        fdtable::{FdChange, FdTable, OpenFd, Transition},
        frame::{Frame, SiteOrigin},
        holders::Holder,
        kept::Kept,
        workload::Workload,
    },
    output::redact,
};

/// The `site` label of the folded sites.
pub(crate) const OTHER_SITE: &str = "other";
/// Longest `frame` label, in characters.
const FRAME_CHARS: usize = 160;
/// `comm` is at most 15 bytes (TASK_COMM_LEN - 1); a bound all the same.
const COMM_CHARS: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ExportConfig {
    pub(crate) max_sites: usize,
    pub(crate) retention_ns: u64,
    pub(crate) pid_label: bool,
    /// `--redact-paths`: `/sites` shows frames without directories (output/redact.rs).
    pub(crate) redact_paths: bool,
}

/// The labels one group's series share.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct GroupKey {
    pub(crate) workload: Workload,
    pub(crate) comm: String,
    pub(crate) pid: Option<u32>,
}

/// What the aggregator needs to know about a process beyond the transitions: the daemon reads
/// the table and /proc, tests answer from their own maps.
pub(crate) trait Identify {
    /// The process's name now ("" when unknown).
    fn comm(&mut self, tgid: u32) -> String;
    /// The workload of a running process; `None` when it is gone.
    fn workload(&mut self, tgid: u32) -> Option<Workload>;
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    opened: u64,
    closed: u64,
}

#[derive(Debug, Default)]
struct SiteState {
    counts: Counts,
    /// The part of `counts` that `other` already holds, or that left with the site's own
    /// series when it was folded: what `other` must not count again.
    credited: Counts,
    exported: bool,
}

#[derive(Debug)]
struct Group {
    key: GroupKey,
    /// Processes in the group now.
    live: u32,
    idle_since_ns: Option<u64>,
    sites: HashMap<(FdKind, SiteId), SiteState>,
    other: BTreeMap<FdKind, Counts>,
}

type GroupId = u64;

#[derive(Debug)]
pub(crate) struct Aggregator {
    config: ExportConfig,
    processes: HashMap<u32, GroupId>,
    ids: HashMap<GroupKey, GroupId>,
    groups: HashMap<GroupId, Group>,
    next_id: GroupId,
}

/// One snapshot's series, ready to render.
#[derive(Clone, Debug, Default)]
pub(crate) struct Exported {
    pub(crate) pid_label: bool,
    pub(crate) groups: Vec<GroupSeries>,
    /// Every exported site (not `other`) with its frames, for /sites.
    pub(crate) sites: BTreeMap<SiteId, SiteFrames>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct GroupSeries {
    pub(crate) key: GroupKey,
    pub(crate) open_by_kind: BTreeMap<FdKind, u64>,
    pub(crate) sites: Vec<SiteSeries>,
    /// The soonest any of its processes reaches its descriptor limit at its current growth.
    pub(crate) fd_exhaustion_seconds: Option<f64>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SiteSeries {
    pub(crate) kind: FdKind,
    /// None: the folded sites, `other`.
    pub(crate) site: Option<SiteId>,
    pub(crate) frame: String,
    pub(crate) open: u64,
    pub(crate) opened: u64,
    pub(crate) closed: u64,
    /// None when nothing is open.
    pub(crate) oldest_open_seconds: Option<f64>,
    /// Kernel memory charged to its open sockets (`SO_MEMINFO`, or sock_diag); None for other
    /// kinds.
    pub(crate) socket_memory_bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct SiteFrames {
    pub(crate) site: String,
    pub(crate) frame: String,
    pub(crate) frames: Arc<[Frame]>,
    /// The Python objects holding its open descriptors, as in the report (suspected and
    /// CLOSE_WAIT sites of CPython processes; ARCHITECTURE.md, "Holders"); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) holders: Option<Vec<Holder>>,
    /// `created_by` and `accepted_on`, as in the report (model/frame.rs, `SiteOrigin`).
    #[serde(flatten)]
    pub(crate) origin: SiteOrigin,
}

#[derive(Clone, Copy, Debug, Default)]
struct OpenNow {
    count: u64,
    oldest_ns: u64,
    /// Socket memory of the open descriptors.
    memory: u64,
}

impl Aggregator {
    /// Whether frames' paths are cut to their file names (`--redact-paths`).
    pub(crate) fn redacts_paths(&self) -> bool {
        self.config.redact_paths
    }

    pub(crate) fn new(config: ExportConfig) -> Aggregator {
        Aggregator {
            config,
            processes: HashMap::new(),
            ids: HashMap::new(),
            groups: HashMap::new(),
            next_id: 0,
        }
    }

    /// Groups held (live, or exited within the retention).
    #[cfg(test)]
    pub(crate) fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// Site states held, over all groups: bounded by open descriptors plus exported sites.
    #[cfg(test)]
    pub(crate) fn site_state_count(&self) -> usize {
        self.groups.values().map(|g| g.sites.len()).sum()
    }

    /// Take in a batch of the engine's transitions.
    pub(crate) fn observe(&mut self, kept: &[Kept], who: &mut dyn Identify, now_ns: u64) {
        for item in kept {
            match item {
                Kept::Transition(Transition::Fd { tgid, kind, site, change, .. }) => {
                    let (opened, closed) = match change {
                        FdChange::Opened => (1, 0),
                        FdChange::Closed(_) => (0, 1),
                        // Copies and findings open nothing new: counted as open, not opened.
                        FdChange::Inherited | FdChange::Found => continue,
                    };
                    self.count(*tgid, (*kind, *site), (opened, closed), who, now_ns);
                }
                Kept::Pairs { tgid, kind, site, pairs } => {
                    self.count(*tgid, (*kind, *site), (*pairs, *pairs), who, now_ns)
                }
                Kept::Transition(Transition::ProcessStarted { tgid, parent }) => {
                    // A forked child runs in its parent's cgroup under its parent's name.
                    let key = match parent {
                        Some(parent) => {
                            let id = self.group_of(*parent, who, now_ns);
                            GroupKey { pid: self.pid(*tgid), ..self.groups[&id].key.clone() }
                        }
                        None => self.identify(*tgid, who),
                    };
                    self.assign(*tgid, key, now_ns);
                }
                Kept::Transition(Transition::ProcessExec { tgid }) => {
                    // Runtimes move a container's first process into its cgroup before exec.
                    if let Some(workload) = who.workload(*tgid) {
                        let key = GroupKey { workload, ..self.key_of(*tgid, who) };
                        self.assign(*tgid, key, now_ns);
                    }
                }
                Kept::Named { tgid, comm } if !comm.is_empty() => {
                    let key = GroupKey { comm: comm_label(comm), ..self.key_of(*tgid, who) };
                    self.assign(*tgid, key, now_ns);
                }
                Kept::Named { .. } => {}
                // Nothing is open at a forgotten site and no live process used it for the
                // retention: its series go, as a vanished target's do (what `other` was
                // credited stays there). A site made again later starts from zero.
                Kept::Forgotten { site } => {
                    for group in self.groups.values_mut() {
                        for kind in FdKind::ALL {
                            group.sites.remove(&(kind, *site));
                        }
                    }
                }
                Kept::Transition(Transition::ProcessExited { tgid }) => self.leave(*tgid, now_ns),
            }
        }
    }

    /// `opened` and `closed` more descriptors of `tgid` at (kind, site), in its group.
    fn count(
        &mut self,
        tgid: u32,
        at: (FdKind, SiteId),
        (opened, closed): (u64, u64),
        who: &mut dyn Identify,
        now_ns: u64,
    ) {
        let id = self.group_of(tgid, who, now_ns);
        let group = self.groups.get_mut(&id).expect("a process's group exists");
        let state = group.sites.entry(at).or_default();
        state.counts.opened += opened;
        state.counts.closed += closed;
    }

    /// The series as of now: open counts from `table`, counters from what was observed.
    /// `socket_memory` gives the kernel memory of an open socket; `fd_exhaustion` the seconds
    /// until a process reaches its descriptor limit, when it is growing toward it.
    pub(crate) fn snapshot(
        &mut self,
        table: &FdTable,
        frames: &dyn Fn(SiteId) -> Option<Arc<[Frame]>>,
        who: &mut dyn Identify,
        socket_memory: &mut dyn FnMut(u32, i32, &OpenFd) -> Option<u64>,
        fd_exhaustion: &dyn Fn(u32) -> Option<f64>,
        now_ns: u64,
    ) -> Exported {
        // The table knows which processes live: one whose exit we did not see as such (it
        // went before we adopted it, or reconciliation removed it) leaves its group here.
        let gone: Vec<u32> =
            self.processes.keys().filter(|tgid| table.process(**tgid).is_none()).copied().collect();
        for tgid in gone {
            self.leave(tgid, now_ns);
        }
        let mut open: HashMap<GroupId, HashMap<(FdKind, SiteId), OpenNow>> = HashMap::new();
        let mut exhaustion: HashMap<GroupId, f64> = HashMap::new();
        for (tgid, process) in table.processes() {
            if process.fds.is_empty() {
                continue;
            }
            // Processes loaded from /proc at start were never announced by a transition.
            let id = self.group_of(tgid, who, now_ns);
            if let Some(seconds) = fd_exhaustion(tgid) {
                let soonest = exhaustion.entry(id).or_insert(seconds);
                *soonest = soonest.min(seconds);
            }
            let sites = open.entry(id).or_default();
            for (fd, entry) in process.fds.iter() {
                let now = sites.entry((entry.kind, entry.site)).or_insert(OpenNow {
                    count: 0,
                    oldest_ns: u64::MAX,
                    memory: 0,
                });
                now.count += 1;
                now.oldest_ns = now.oldest_ns.min(entry.opened_ns);
                if entry.kind == FdKind::Socket {
                    now.memory += socket_memory(tgid, fd, entry).unwrap_or(0);
                }
            }
        }
        self.expire(now_ns);
        let mut exported = Exported { pid_label: self.config.pid_label, ..Exported::default() };
        let no_open = HashMap::new();
        for (id, group) in &mut self.groups {
            let mut series = group.select(open.get(id).unwrap_or(&no_open), self.config.max_sites, now_ns);
            series.fd_exhaustion_seconds = exhaustion.get(id).copied();
            for s in &mut series.sites {
                let Some(site) = s.site else { continue };
                let known = exported.sites.entry(site).or_insert_with(|| {
                    let frames = frames(site).unwrap_or_else(|| Arc::from([]));
                    let frame = site_frame_label(&frames);
                    let frames = if self.config.redact_paths { redact::frames(&frames) } else { frames };
                    SiteFrames {
                        site: site.label(),
                        frame,
                        frames,
                        holders: None,
                        origin: SiteOrigin::default(),
                    }
                });
                s.frame = known.frame.clone();
            }
            exported.groups.push(series);
        }
        exported.groups.sort_by(|a, b| a.key.cmp(&b.key));
        exported
    }

    fn pid(&self, tgid: u32) -> Option<u32> {
        self.config.pid_label.then_some(tgid)
    }

    fn identify(&self, tgid: u32, who: &mut dyn Identify) -> GroupKey {
        GroupKey {
            workload: who.workload(tgid).unwrap_or_default(),
            comm: comm_label(&who.comm(tgid)),
            pid: self.pid(tgid),
        }
    }

    fn key_of(&self, tgid: u32, who: &mut dyn Identify) -> GroupKey {
        match self.processes.get(&tgid) {
            Some(id) => self.groups[id].key.clone(),
            None => self.identify(tgid, who),
        }
    }

    fn group_of(&mut self, tgid: u32, who: &mut dyn Identify, now_ns: u64) -> GroupId {
        if let Some(id) = self.processes.get(&tgid) {
            return *id;
        }
        let key = self.identify(tgid, who);
        self.assign(tgid, key, now_ns)
    }

    /// Put a process in the group of `key` (creating it), leaving its previous one.
    fn assign(&mut self, tgid: u32, key: GroupKey, now_ns: u64) -> GroupId {
        if let Some(id) = self.processes.get(&tgid).copied() {
            if self.groups[&id].key == key {
                return id;
            }
            self.leave(tgid, now_ns);
        }
        let id = match self.ids.get(&key) {
            Some(id) => *id,
            None => {
                let id = self.next_id;
                self.next_id += 1;
                self.ids.insert(key.clone(), id);
                let group = Group {
                    key,
                    live: 0,
                    idle_since_ns: None,
                    sites: HashMap::new(),
                    other: BTreeMap::new(),
                };
                self.groups.insert(id, group);
                id
            }
        };
        let group = self.groups.get_mut(&id).expect("just found or made");
        group.live += 1;
        group.idle_since_ns = None;
        self.processes.insert(tgid, id);
        id
    }

    fn leave(&mut self, tgid: u32, now_ns: u64) {
        let Some(id) = self.processes.remove(&tgid) else { return };
        let group = self.groups.get_mut(&id).expect("a process's group exists");
        group.live -= 1;
        if group.live == 0 {
            group.idle_since_ns = Some(now_ns);
        }
    }

    /// Drop the groups whose processes have all been gone for the retention.
    fn expire(&mut self, now_ns: u64) {
        let retention = self.config.retention_ns;
        let expired: Vec<GroupId> = self
            .groups
            .iter()
            .filter(|(_, g)| g.idle_since_ns.is_some_and(|since| now_ns.saturating_sub(since) >= retention))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let group = self.groups.remove(&id).expect("listed above");
            self.ids.remove(&group.key);
        }
    }
}

impl SiteSeries {
    /// The `site` label.
    pub(crate) fn site_label(&self) -> String {
        self.site.map_or_else(|| OTHER_SITE.to_string(), SiteId::label)
    }
}

impl Group {
    /// Choose the exported sites of every kind, fold the rest, and build the series.
    fn select(
        &mut self,
        open: &HashMap<(FdKind, SiteId), OpenNow>,
        max_sites: usize,
        now_ns: u64,
    ) -> GroupSeries {
        struct Candidate {
            kind: FdKind,
            site: SiteId,
            open: OpenNow,
            opened: u64,
            exported: bool,
        }
        let mut candidates: Vec<Candidate> = open
            .iter()
            .map(|(&(kind, site), &now)| (kind, site, now))
            .chain(
                self.sites
                    .keys()
                    .filter(|key| !open.contains_key(key))
                    .map(|&(kind, site)| (kind, site, OpenNow::default())),
            )
            .map(|(kind, site, open)| {
                let state = self.sites.get(&(kind, site));
                Candidate {
                    kind,
                    site,
                    open,
                    opened: state.map_or(0, |s| s.counts.opened),
                    exported: state.is_some_and(|s| s.exported),
                }
            })
            .collect();
        // Most open first; on a tie the site already exported stays, so the choice does not
        // flap between scrapes; then the busier site; the id makes the order total.
        candidates
            .sort_by_key(|c| (c.kind, Reverse(c.open.count), Reverse(c.exported), Reverse(c.opened), c.site));

        let mut series = GroupSeries {
            key: self.key.clone(),
            open_by_kind: BTreeMap::new(),
            sites: Vec::new(),
            fd_exhaustion_seconds: None,
        };
        let memory = |kind: FdKind, now: &OpenNow| (kind == FdKind::Socket).then_some(now.memory);
        let mut rank = 0;
        let mut folded: BTreeMap<FdKind, OpenNow> = BTreeMap::new();
        for (i, c) in candidates.iter().enumerate() {
            if i > 0 && candidates[i - 1].kind != c.kind {
                rank = 0;
            }
            rank += 1;
            *series.open_by_kind.entry(c.kind).or_default() += c.open.count;
            let oldest = (c.open.count > 0).then(|| seconds(now_ns.saturating_sub(c.open.oldest_ns)));
            if rank <= max_sites {
                let state = self.sites.entry((c.kind, c.site)).or_default();
                state.exported = true;
                series.sites.push(SiteSeries {
                    kind: c.kind,
                    site: Some(c.site),
                    frame: String::new(),
                    open: c.open.count,
                    opened: state.counts.opened,
                    closed: state.counts.closed,
                    oldest_open_seconds: oldest,
                    socket_memory_bytes: memory(c.kind, &c.open),
                });
                continue;
            }
            let folding =
                folded.entry(c.kind).or_insert(OpenNow { count: 0, oldest_ns: u64::MAX, memory: 0 });
            folding.count += c.open.count;
            folding.memory += c.open.memory;
            if c.open.count > 0 {
                folding.oldest_ns = folding.oldest_ns.min(c.open.oldest_ns);
            }
            let other = self.other.entry(c.kind).or_default();
            if let Some(state) = self.sites.get_mut(&(c.kind, c.site)) {
                if state.exported {
                    // Its history left with its own series; from now on it adds to `other`.
                    state.exported = false;
                } else {
                    other.opened += state.counts.opened - state.credited.opened;
                    other.closed += state.counts.closed - state.credited.closed;
                }
                state.credited = state.counts;
                // Nothing open and nothing owed: forget it (it starts afresh if it opens again).
                if c.open.count == 0 {
                    self.sites.remove(&(c.kind, c.site));
                }
            }
        }
        for (kind, counts) in &self.other {
            let now = folded.get(kind).copied().unwrap_or_default();
            series.sites.push(SiteSeries {
                kind: *kind,
                site: None,
                frame: String::new(),
                open: now.count,
                opened: counts.opened,
                closed: counts.closed,
                oldest_open_seconds: (now.count > 0).then(|| seconds(now_ns.saturating_sub(now.oldest_ns))),
                socket_memory_bytes: memory(*kind, &now),
            });
        }
        series
    }
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn comm_label(comm: &str) -> String {
    printable(comm.as_bytes(), COMM_CHARS)
}

/// The `frame` label of a site: its most telling frame (frame::site_label: the innermost frame
/// of the application's own code), bounded for a label value.
pub(crate) fn site_frame_label(frames: &[Frame]) -> String {
    crate::model::frame::site_label(frames)
        .map(|label| printable(label.as_bytes(), FRAME_CHARS))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::frame::Language;

    fn native(module: Option<&str>, offset: u64) -> Frame {
        Frame {
            symbol: None,
            file: None,
            line: None,
            module: module.map(Arc::from),
            address: Some(0x7f00_0000_0000 + offset),
            offset: Some(offset),
            symbol_offset: None,
            inlined: false,
            language: Language::Native,
            interpreter: false,
        }
    }

    #[test]
    fn frame_label_is_the_innermost_frame_of_the_application() {
        let libc = native(Some("/usr/lib/x86_64-linux-gnu/libc.so.6"), 0x1169d7);
        let app = native(Some("/srv/geo/bin/geo-server"), 0x4a20);
        let loader = native(Some("/lib64/ld-linux-x86-64.so.2"), 0x10);
        assert_eq!(site_frame_label(&[libc.clone(), app.clone(), loader.clone()]), "geo-server+0x4a20");
        assert_eq!(
            site_frame_label(std::slice::from_ref(&libc)),
            "libc.so.6+0x1169d7",
            "no own frame: the innermost"
        );
        assert_eq!(
            site_frame_label(&[native(None, 0x10), libc.clone()]),
            "0x7f0000000010",
            "a frame in no module is not plumbing"
        );
        assert_eq!(site_frame_label(&[]), "");
        let python = Frame::python(
            Arc::from("UnitTrackingWSHandler.on_connect"),
            Arc::from("heliosops/geo.py"),
            Some(27),
        );
        let interpreter = native(Some("/usr/lib/libpython3.11.so.1.0"), 0x99);
        assert_eq!(
            site_frame_label(&[libc, interpreter, python]),
            "geo.py:UnitTrackingWSHandler.on_connect:27"
        );
    }
}
