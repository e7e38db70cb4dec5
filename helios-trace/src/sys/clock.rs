//! The kernel programs stamp events with CLOCK_BOOTTIME (bpf_ktime_get_boot_ns), but for a
//! close, which the engine stamps with this clock when it leaves the ring
//! (`Engine::records_taken`); ages are computed against the same clock. The CPU time of the
//! calling thread measures what a piece of work cost us, whatever else the machine was running
//! meanwhile.

/// CLOCK_BOOTTIME now, in nanoseconds.
pub(crate) fn boot_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer; CLOCK_BOOTTIME exists on every kernel we support.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time the calling thread has used (CLOCK_THREAD_CPUTIME_ID).
pub(crate) fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer; the clock exists on every kernel we support.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
