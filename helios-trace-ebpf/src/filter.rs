//! Which tasks are traced: not the tracer itself; with `--pid` or `--cgroup`, only the targets
//! (the settings say which filters are on, the TARGETS and TARGET_CGROUPS maps hold them).
use aya_ebpf::helpers::bpf_get_current_ancestor_cgroup_id;
use helios_trace_common::MAX_CGROUP_DEPTH;

use crate::{
    maps::{TARGET_CGROUPS, TARGETS},
    settings,
};

#[inline(always)]
pub fn is_traced(tgid: u32) -> bool {
    // Never trace ourselves: our reads of /proc would feed back.
    if tgid == settings::tracer_tgid() {
        return false;
    }
    if !settings::filtering_targets() {
        return true;
    }
    is_target_pid(tgid) || in_target_cgroup()
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
