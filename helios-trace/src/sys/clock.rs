//! The kernel programs stamp events with CLOCK_BOOTTIME (bpf_ktime_get_boot_ns); ages are
//! computed against the same clock.

/// CLOCK_BOOTTIME now, in nanoseconds.
pub(crate) fn boot_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer; CLOCK_BOOTTIME exists on every kernel we support.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
