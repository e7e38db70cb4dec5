//! What a process runs out of, as numbers: its memory cgroup's use and limit, what the tracer
//! itself costs, and when a growing quantity reaches its limit. sys/proc reads them; the
//! report and the metrics show them.

/// A cgroup's memory use and limit (None: unlimited).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CgroupMemory {
    pub(crate) current: u64,
    pub(crate) limit: Option<u64>,
}

/// What a process costs: the exporter's own `process_*` metrics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Usage {
    /// User + system CPU time.
    pub(crate) cpu_seconds: f64,
    pub(crate) resident_bytes: u64,
    pub(crate) virtual_bytes: u64,
    pub(crate) open_fds: u64,
}

/// Seconds until `current` reaches `limit` growing `per_second`; None when it is not growing
/// or there is no limit. Zero when already there.
pub(crate) fn exhaustion_seconds(limit: Option<u64>, current: u64, per_second: Option<f64>) -> Option<f64> {
    let (limit, rate) = (limit?, per_second.filter(|r| *r > 0.0 && r.is_finite())?);
    Some(limit.saturating_sub(current) as f64 / rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_to_exhaustion() {
        // +2,000/h against 65,536 with 47,213 open: 9 h 9 m.
        let seconds = exhaustion_seconds(Some(65_536), 47_213, Some(2000.0 / 3600.0)).unwrap();
        assert!((seconds - 32_981.4).abs() < 1.0, "{seconds}");
        assert_eq!(exhaustion_seconds(Some(100), 150, Some(1.0)), Some(0.0));
        assert_eq!(exhaustion_seconds(Some(100), 10, Some(0.0)), None);
        assert_eq!(exhaustion_seconds(Some(100), 10, Some(-3.0)), None);
        assert_eq!(exhaustion_seconds(None, 10, Some(1.0)), None);
        assert_eq!(exhaustion_seconds(Some(100), 10, None), None);
    }
}
