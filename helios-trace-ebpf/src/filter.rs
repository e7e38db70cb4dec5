//! Which tasks are traced. Load-time globals (set by userspace with `EbpfLoader::set_global`)
//! are read volatile so the compiler cannot fold their default values in.
use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_ktime_get_ns},
};
use helios_trace_common::{MAX_CGROUP_DEPTH, stack_mode};

use crate::maps::{EVENTS, LAST_WAKEUP, TARGET_CGROUPS, TARGETS};

/// The tracer's own tgid: never trace ourselves (our reads of /proc would feed back).
#[unsafe(no_mangle)]
static TRACER_TGID: u32 = 0;
/// Non-zero: only tgids in `TARGETS` (`--pid`), and tasks in or below the cgroups in
/// `TARGET_CGROUPS` when `FILTER_CGROUPS` is set (`--cgroup`), are traced.
#[unsafe(no_mangle)]
static FILTER_TARGETS: u32 = 0;
/// Non-zero: `TARGET_CGROUPS` holds `--cgroup` targets.
#[unsafe(no_mangle)]
static FILTER_CGROUPS: u32 = 0;
/// How to capture the user stack of descriptor-creating calls (helios_trace_common::stack_mode).
#[unsafe(no_mangle)]
static CAPTURE_USER_STACKS: u32 = stack_mode::FP;
/// Bytes of user stack copied per call in `stack_mode::DWARF` (at most MAX_STACK_WINDOW).
#[unsafe(no_mangle)]
static STACK_WINDOW: u32 = 8192;
/// Non-zero: capture the kernel stack too (`--kernel-stacks`).
#[unsafe(no_mangle)]
static CAPTURE_KERNEL_STACKS: u32 = 0;
/// Wake the reader only once this many bytes wait in the ring buffer; userspace also polls on a
/// short timer, so a quiet buffer is still drained. 0 wakes on every record.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 0;

#[inline(always)]
pub fn is_traced(tgid: u32) -> bool {
    if tgid == unsafe { read_volatile(&TRACER_TGID) } {
        return false;
    }
    if unsafe { read_volatile(&FILTER_TARGETS) } == 0 {
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
    if unsafe { read_volatile(&FILTER_CGROUPS) } == 0 {
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

#[inline(always)]
pub fn filtering_targets() -> bool {
    unsafe { read_volatile(&FILTER_TARGETS) != 0 }
}

#[inline(always)]
pub fn user_stack_mode() -> u32 {
    unsafe { read_volatile(&CAPTURE_USER_STACKS) }
}

#[inline(always)]
pub fn stack_window() -> u32 {
    unsafe { read_volatile(&STACK_WINDOW) }
}

#[inline(always)]
pub fn capture_kernel_stacks() -> bool {
    unsafe { read_volatile(&CAPTURE_KERNEL_STACKS) != 0 }
}

/// Submit flags: batch wake-ups under load (each wake-up costs the traced task an IPI and the
/// reader a context switch), wake at once when batching is off.
///
/// Past the threshold, a wake-up is forced at most once per `WAKEUP_MIN_INTERVAL_NS` per CPU:
/// forcing one on every record while the reader catches up was 30% of a traced process's time
/// in a VM (each is a self-IPI that traps to the hypervisor). The reader, once woken, drains
/// everything; records that arrive meanwhile wake it again after the interval at the latest,
/// and its drain timer covers a ring that stops filling below the threshold.
#[inline(always)]
pub fn wakeup_flags() -> u64 {
    let threshold = unsafe { read_volatile(&WAKEUP_BYTES) };
    if threshold == 0 {
        return 0;
    }
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) < threshold {
        return BPF_RB_NO_WAKEUP as u64;
    }
    let Some(last) = LAST_WAKEUP.get_ptr_mut(0) else {
        return BPF_RB_FORCE_WAKEUP as u64;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    // Per-CPU slot: no other writer while this program runs on this CPU.
    if now.wrapping_sub(unsafe { *last }) < WAKEUP_MIN_INTERVAL_NS {
        return BPF_RB_NO_WAKEUP as u64;
    }
    unsafe { *last = now };
    BPF_RB_FORCE_WAKEUP as u64
}

/// See `wakeup_flags`: a 16 MiB ring of 8 KiB stack records fills in about 10 ms at 200,000
/// records a second, a hundred times this.
const WAKEUP_MIN_INTERVAL_NS: u64 = 100_000;
