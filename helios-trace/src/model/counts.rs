//! What the pipeline counted of the records it read (ARCHITECTURE.md, "Contracts: Report":
//! `events`): received, lost in the kernel, undecodable, and what stacks could not give.
use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct EventCounts {
    /// Records read from the ring buffer.
    pub(crate) received: u64,
    /// Records the kernel could not reserve (ring buffer full), whose enter was lost, or that a
    /// kernel program failed to make.
    pub(crate) lost: u64,
    /// Records that were short or unknown.
    pub(crate) undecodable: u64,
    /// Stacks that could not be captured (`--stacks fp`: the stack map's bucket taken by another
    /// stack, the map full, or the stack unreadable).
    pub(crate) stack_errors: u64,
    /// `--stacks dwarf`: stacks deeper than `--stack-window`, whose outer frames are missing.
    pub(crate) stacks_truncated: u64,
    /// `--stacks dwarf`: stacks the kernel walked with rules learned here instead of sending
    /// the stack window (`--learned-chains`).
    pub(crate) chains_learned: u64,
    /// Of the chains the kernel walked (`chains_learned`, or with `--learned-chains shadow`
    /// `chains_checked`), those whose rules past the first frame it all found in one taught
    /// chain instead of one lookup per frame (chains of 2 to 32 frames).
    pub(crate) chains_cached: u64,
    /// `--learned-chains shadow`: windows unwound here whose chain the kernel had also
    /// walked, and those where the two differ (never, unless the rules are wrong).
    pub(crate) chains_checked: u64,
    pub(crate) chains_mismatched: u64,
    /// Distinct user stacks that could not be named: the process was gone before its maps
    /// were read (an exec followed by a quick exit); their frames are bare addresses.
    pub(crate) stacks_unresolved: u64,
    /// New call sites not remembered because `--max-stacks` were: their descriptors are
    /// under the site `site-limit`.
    pub(crate) sites_dropped: u64,
    /// Descriptors a running CPython opened before the kernel walked its Python frames (found
    /// at the baseline, or late after its exec): their sites have native frames only.
    pub(crate) python_frames_missed: u64,
}

/// What one kernel program has cost so far, as the kernel counts it while its BPF statistics
/// are on (`kernel.bpf_stats_enabled`; struct bpf_prog_info's run_cnt and run_time_ns).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ProgramRuns {
    pub(crate) program: String,
    pub(crate) runs: u64,
    pub(crate) run_ns: u64,
}
