//! Which tasks are traced. Load-time globals (set by userspace with `EbpfLoader::set_global`)
//! are read volatile so the compiler cannot fold their default values in.
use core::ptr::read_volatile;

use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use helios_trace_common::stack_mode;

use crate::maps::{EVENTS, TARGETS};

/// The tracer's own tgid: never trace ourselves (our reads of /proc would feed back).
#[unsafe(no_mangle)]
static TRACER_TGID: u32 = 0;
/// Non-zero: only tgids in `TARGETS` are traced (`--pid`).
#[unsafe(no_mangle)]
static FILTER_TARGETS: u32 = 0;
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
    unsafe { TARGETS.get(&tgid) }.is_some()
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
#[inline(always)]
pub fn wakeup_flags() -> u64 {
    let threshold = unsafe { read_volatile(&WAKEUP_BYTES) };
    if threshold == 0 {
        return 0;
    }
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= threshold {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}
