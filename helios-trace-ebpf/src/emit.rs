//! How records and failures leave the kernel: the record header, the copy into the ring buffer
//! with batched wake-ups, and the per-CPU counters of what went wrong (a record that cannot be
//! reserved, a program that failed, is counted, never silently lost).
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_ktime_get_ns, generated::bpf_ktime_get_boot_ns},
};
use helios_trace_common::{EventHeader, counter};

use crate::{
    maps::{COUNTERS, EVENTS, LAST_WAKEUP},
    settings,
};

#[inline(always)]
pub fn header(kind: u32, pid_tgid: u64) -> EventHeader {
    header_at(kind, pid_tgid, unsafe { bpf_ktime_get_boot_ns() })
}

#[inline(always)]
pub fn header_at(kind: u32, pid_tgid: u64, ts_ns: u64) -> EventHeader {
    EventHeader { kind, tgid: (pid_tgid >> 32) as u32, tid: pid_tgid as u32, reserved: 0, ts_ns }
}

/// Add one to this CPU's `COUNTERS[index]`.
#[inline(always)]
pub fn count(index: u32) {
    count_many(index, 1);
}

/// Add `n` to this CPU's `COUNTERS[index]`.
#[inline(always)]
pub fn count_many(index: u32, n: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // Per-CPU slot: no other writer while this program runs on this CPU.
        unsafe { *slot += n };
    }
}

/// What a program returns to the kernel once its `try_*` body is done: 0 (tracepoint
/// programs' return value is ignored), the body's error counted (`counter::PROGRAM_ERROR`).
#[inline(always)]
pub fn finish<T, E>(result: Result<T, E>) -> u32 {
    if result.is_err() {
        count(counter::PROGRAM_ERROR);
    }
    0
}

/// Copy a small record into the ring buffer; a full buffer is counted, never silent.
#[inline(always)]
pub fn emit<T>(event: &T) {
    if EVENTS.output::<T>(event, wakeup_flags()).is_err() {
        count(counter::RINGBUF_FULL);
    }
}

/// Submit flags: batch wake-ups under load (each wake-up costs the traced task an IPI and the
/// reader a context switch), wake at once when batching is off. The reader looks at the ring
/// on a timer paced to take a quarter of the threshold each time (helios-trace/src/sys/ring.rs,
/// `next_look`), so a wake-up is for a rate that jumped between two of its looks; each is
/// counted (`counter::WAKEUP_FORCED`).
///
/// Past the threshold, a wake-up is forced at most once per `WAKEUP_MIN_INTERVAL_NS` per CPU:
/// forcing one on every record while the reader catches up was 30% of a traced process's time
/// in a VM (each is a self-IPI that traps to the hypervisor). The reader, once woken, drains
/// everything; records that arrive meanwhile wake it again after the interval at the latest,
/// and its paced looks, at most 20 ms apart, cover a ring that stops filling below the threshold.
#[inline(always)]
pub fn wakeup_flags() -> u64 {
    let threshold = settings::wakeup_bytes();
    if threshold == 0 {
        return 0;
    }
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) < threshold {
        return BPF_RB_NO_WAKEUP as u64;
    }
    let Some(last) = LAST_WAKEUP.get_ptr_mut(0) else {
        count(counter::WAKEUP_FORCED);
        return BPF_RB_FORCE_WAKEUP as u64;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    // Per-CPU slot: no other writer while this program runs on this CPU.
    if now.wrapping_sub(unsafe { *last }) < WAKEUP_MIN_INTERVAL_NS {
        return BPF_RB_NO_WAKEUP as u64;
    }
    unsafe { *last = now };
    count(counter::WAKEUP_FORCED);
    BPF_RB_FORCE_WAKEUP as u64
}

/// Submit flags for a record the same program follows at once with another submitted with
/// `wakeup_flags` (python.rs: the Python frames before their descriptor's record): no query of
/// the ring, the next record's asks for both. With batching off (`wakeup_bytes` 0) the kernel's
/// own choice, as for every record then: a record not yet read ahead of the next keeps the next
/// from waking the reader (kernel/bpf/ringbuf.c, `bpf_ringbuf_commit` wakes only when the reader
/// has caught up to the record).
#[inline(always)]
pub fn followed_wakeup_flags() -> u64 {
    if settings::wakeup_bytes() == 0 { 0 } else { BPF_RB_NO_WAKEUP as u64 }
}

/// See `wakeup_flags`: a 16 MiB ring of 8 KiB stack records fills in about 10 ms at 200,000
/// records a second, a hundred times this.
const WAKEUP_MIN_INTERVAL_NS: u64 = 100_000;
