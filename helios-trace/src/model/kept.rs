//! What the engine hands the exporter (ARCHITECTURE.md, "Data flow" 7): every change of the
//! tables and the sites, in order, for the metrics to aggregate.
use crate::model::{
    fd::{FdKind, SiteId},
    fdtable::Transition,
};

/// What `Engine::take_transitions` (observe/engine.rs) hands the exporter, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kept {
    Transition(Transition),
    /// Right after each ProcessStarted and ProcessExec: the name the process has from then on.
    /// Kept here because a short-lived process is gone from the table by the time the
    /// exporter reads the batch.
    Named {
        tgid: u32,
        comm: String,
    },
    /// `pairs` more descriptors of `tgid` opened at (`kind`, `site`) and closed by `close`,
    /// like the pair whose two transitions came just before (the kernel matched them:
    /// `Engine::handle_pairs`): counted at once, not as two transitions each.
    Pairs {
        tgid: u32,
        kind: FdKind,
        site: SiteId,
        pairs: u64,
    },
    /// A call site nothing held for the retention was forgotten (SiteStats::expire): its
    /// series go too.
    Forgotten {
        site: SiteId,
    },
}
