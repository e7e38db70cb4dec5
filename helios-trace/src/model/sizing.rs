//! The tracer's caps (`--max-fds`, `--max-stacks`, `--max-processes`) from the memory it has:
//! under a memory limit (its own cgroup's `memory.max`), the defaults shrink so that the tables
//! at their caps fit below the limit with headroom, and what does not fit is dropped and
//! counted (`helios_trace_dropped_total`) instead of the OOM killer ending the daemon.
//!
//! The costs are `cargo xtask bench`'s measurements (BENCHMARKS.md, "Memory"): 126 B of daemon
//! memory per tracked descriptor, 3.65 KiB per call site; taken with a margin here.

/// Bytes per tracked descriptor (measured 126 B).
pub(crate) const BYTES_PER_FD: u64 = 160;
/// Bytes per remembered call site, its frames and their symbols (measured 3,650 B).
pub(crate) const BYTES_PER_SITE: u64 = 4096;
/// Bytes per tracked process: its table, names, mappings (not measured apart: an upper guess).
pub(crate) const BYTES_PER_PROCESS: u64 = 8192;
/// What the daemon holds whatever it tracks: runtime, programs, symbolizer caches, HTTP, and
/// the kernel's maps besides the ring buffer, which the kernel charges to the same cgroup
/// (measured 12.4 MiB for `serve`'s configuration: sys/loader.rs, `unused_maps`; the learned
/// rules and taught chains add theirs as they are taught, the chains about 4 MiB at most).
pub(crate) const BASE_BYTES: u64 = 48 << 20;

/// The caps the tracer runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Caps {
    pub(crate) max_fds: usize,
    pub(crate) max_stacks: usize,
    pub(crate) max_processes: usize,
}

/// Without a memory limit.
pub(crate) const DEFAULT_CAPS: Caps =
    Caps { max_fds: 4_000_000, max_stacks: 100_000, max_processes: 100_000 };

/// The caps that fit in `limit` bytes (None: no limit, the defaults), with a ring buffer of
/// `ring_bytes` (its pages are charged to the tracer's memory cgroup too, and user space may
/// hold twice as much taken out of it: sys/ring.rs): a quarter of the limit is left as
/// headroom, the fixed part and the ring buffer with what is held come off, and what remains is
/// shared 60 % descriptors, 30 % sites, 10 % processes; never above the defaults, never zero.
pub(crate) fn caps_for(limit: Option<u64>, ring_bytes: u64) -> Caps {
    let Some(limit) = limit else { return DEFAULT_CAPS };
    let budget = (limit / 4 * 3).saturating_sub(BASE_BYTES + buffers(ring_bytes));
    let cap = |share: u64, per: u64, default: usize| {
        let fits = budget / 100 * share / per;
        usize::try_from(fits).unwrap_or(usize::MAX).clamp(1, default)
    };
    Caps {
        max_fds: cap(60, BYTES_PER_FD, DEFAULT_CAPS.max_fds),
        max_stacks: cap(30, BYTES_PER_SITE, DEFAULT_CAPS.max_stacks),
        max_processes: cap(10, BYTES_PER_PROCESS, DEFAULT_CAPS.max_processes),
    }
}

/// What the caps cost at most, for the line that says them.
pub(crate) fn bytes_at_caps(caps: Caps, ring_bytes: u64) -> u64 {
    BASE_BYTES
        + buffers(ring_bytes)
        + caps.max_fds as u64 * BYTES_PER_FD
        + caps.max_stacks as u64 * BYTES_PER_SITE
        + caps.max_processes as u64 * BYTES_PER_PROCESS
}

/// The ring buffer and the records user space holds taken out of it: at most as much again
/// held by the emptier, and the ring's worth the engine reads at once (sys/ring.rs).
fn buffers(ring_bytes: u64) -> u64 {
    3 * ring_bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn no_limit_keeps_the_defaults_and_a_large_one_does_not_exceed_them() {
        assert_eq!(caps_for(None, 16 * MIB), DEFAULT_CAPS);
        assert_eq!(caps_for(Some(64 << 30), 16 * MIB), DEFAULT_CAPS);
    }

    #[test]
    fn the_caps_fit_below_the_limit_with_headroom() {
        // 128 MiB is below the fixed part with a 16 MiB ring (48 MiB and three rings, a quarter
        // kept as headroom): the next test's case.
        for limit_mib in [256, 512, 1024, 2048] {
            let limit = limit_mib * MIB;
            let caps = caps_for(Some(limit), 16 * MIB);
            let cost = bytes_at_caps(caps, 16 * MIB);
            assert!(cost <= limit / 4 * 3, "{limit_mib} MiB: {caps:?} cost {} MiB", cost / MIB);
            if limit_mib <= 1024 {
                assert!(caps.max_fds < DEFAULT_CAPS.max_fds, "{limit_mib} MiB: {caps:?}");
            }
        }
        // The DaemonSet's 512 MiB: about a million descriptors, not the four million that
        // needed 480 MiB for the descriptors alone.
        let caps = caps_for(Some(512 * MIB), 16 * MIB);
        assert!((1_000_000..1_400_000).contains(&caps.max_fds), "{caps:?}");
        assert!((20_000..30_000).contains(&caps.max_stacks), "{caps:?}");
    }

    /// README's sizing table ("memory limit whose caps hold it"): the measured nodes of
    /// `cargo xtask bench sizing` (BENCHMARKS.md, "Sizing"), each held whole by the caps of its
    /// limit with a 16 MiB ring, and not by those of the limit 64 MiB below it.
    #[test]
    fn the_readmes_limits_hold_the_measured_nodes_and_no_smaller_one_does() {
        let holds = |limit_mib: u64, (processes, fds, sites): (usize, usize, usize)| {
            let caps = caps_for(Some(limit_mib * MIB), 16 * MIB);
            caps.max_processes >= processes && caps.max_fds >= fds && caps.max_stacks >= sites
        };
        for (node, limit_mib) in
            [((50, 100_300, 2_002), 192), ((150, 398_868, 8_002), 320), ((400, 959_938, 19_572), 512)]
        {
            assert!(holds(limit_mib, node), "{node:?} under {limit_mib} MiB");
            assert!(!holds(limit_mib - 64, node), "{node:?} under {} MiB", limit_mib - 64);
        }
    }

    #[test]
    fn a_limit_below_the_fixed_part_still_tracks_something() {
        for limit_mib in [32, 128] {
            let caps = caps_for(Some(limit_mib * MIB), 16 * MIB);
            assert_eq!(caps, Caps { max_fds: 1, max_stacks: 1, max_processes: 1 }, "{limit_mib} MiB");
        }
    }
}
