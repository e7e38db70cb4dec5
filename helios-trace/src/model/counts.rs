//! What the pipeline counted of the records it read (ARCHITECTURE.md, "Contracts: Report":
//! `events`): received, lost in the kernel, undecodable, and what stacks could not give.
use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EventCounts {
    /// Records read from the ring buffer.
    pub received: u64,
    /// Records the kernel could not reserve (ring buffer full), whose enter was lost, or that a
    /// kernel program failed to make.
    pub lost: u64,
    /// Records that were short or unknown.
    pub undecodable: u64,
    /// Stacks that could not be captured (map bucket collision or full; registers or stack
    /// unreadable).
    pub stack_errors: u64,
    /// `--stacks dwarf`: stacks deeper than `--stack-window`, whose outer frames are missing.
    pub stacks_truncated: u64,
    /// Distinct user stacks that could not be named: the process was gone before its maps
    /// were read (an exec followed by a quick exit); their frames are bare addresses.
    pub stacks_unresolved: u64,
    /// New call sites not remembered because `--max-stacks` were: their descriptors are
    /// under the site `site-limit`.
    pub sites_dropped: u64,
}
