//! Which tasks are traced: not the tracer itself; with `--pid`, `--cgroup`, `--comm` or
//! `--uid`, only the targets (the settings say which filters are on, the TARGETS,
//! TARGET_CGROUPS, TARGET_COMMS and TARGET_UIDS maps hold them).
use aya_ebpf::helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_comm, bpf_get_current_uid_gid};
use helios_trace_common::{MAX_CGROUP_DEPTH, filter_match};

use crate::{
    maps::{TARGET_CGROUPS, TARGET_COMMS, TARGET_UIDS, TARGETS},
    settings,
};

#[inline(always)]
pub fn is_traced(tgid: u32) -> bool {
    // Never trace ourselves: our reads of /proc would feed back. Nor our uprobe maker: it is
    // part of us (helios-trace/src/sys/uprobes.rs).
    if tgid == settings::tracer_tgid() || tgid == settings::uprobe_maker_tgid() {
        return false;
    }
    if !settings::filtering_targets() {
        return true;
    }
    is_target_pid(tgid) || in_target_cgroup() || matches_comm_or_uid(tgid)
}

/// The calling task has a `--comm` name or runs as a `--uid` user: its process becomes a
/// target, followed by its pid from now on (its other threads, whatever their names, and the
/// children it forks, as with `--pid`). Userspace reads what it already held from /proc at its
/// first record.
#[inline(always)]
fn matches_comm_or_uid(tgid: u32) -> bool {
    let filters = settings::filter_matches();
    if filters == 0 {
        return false;
    }
    let named = filters & filter_match::COMMS != 0
        && bpf_get_current_comm().is_ok_and(|comm| unsafe { TARGET_COMMS.get(&comm) }.is_some());
    // The low half is the real uid (kernel/bpf/helpers.c, bpf_get_current_uid_gid).
    let uid = bpf_get_current_uid_gid() as u32;
    let user = !named && filters & filter_match::UIDS != 0 && unsafe { TARGET_UIDS.get(&uid) }.is_some();
    if named || user {
        let _ = TARGETS.insert(&tgid, &1, 0);
    }
    named || user
}

/// A `--pid` target, or a process it forked.
#[inline(always)]
pub fn is_target_pid(tgid: u32) -> bool {
    unsafe { TARGETS.get(&tgid) }.is_some()
}

/// The current task is in a target cgroup or below one: one of its cgroup v2 ancestors (itself
/// included) is in `TARGET_CGROUPS`. Levels count from the root of the whole hierarchy, which a
/// tracer inside a cgroup namespace cannot see, so every level is looked at, root first.
#[inline(always)]
fn in_target_cgroup() -> bool {
    if !settings::filtering_cgroups() {
        return false;
    }
    for level in 0..=MAX_CGROUP_DEPTH as i32 {
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            return false; // past the task's own cgroup
        }
        if unsafe { TARGET_CGROUPS.get(&id) }.is_some() {
            return true;
        }
    }
    false
}
