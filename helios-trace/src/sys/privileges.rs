//! Once the programs are attached, keep only the capabilities the rest of the run needs:
//! reading other users' /proc entries (CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH) and the maps we hold
//! (CAP_BPF: before Linux 6.4, with unprivileged BPF disabled, every bpf(2) call needs it), plus
//! what a caller asks for (`run` signals a command running as another user, `--holders-pause`
//! stops and continues other users' processes: CAP_KILL).
//!
//! Capabilities are per thread (capset(2) acts on the caller only), so this runs before any
//! other thread of ours exists: the runtime's threads are started afterwards and inherit the
//! reduced sets.
use anyhow::{Context as _, Result};
use caps::{CapSet, Capability, CapsHashSet};

/// What every mode keeps after attaching.
pub(crate) const KEPT: [Capability; 3] =
    [Capability::CAP_BPF, Capability::CAP_SYS_PTRACE, Capability::CAP_DAC_READ_SEARCH];

/// Reduce this thread's effective and permitted sets to `KEPT` and `extra` (those of them it
/// has), clear its inheritable and ambient sets, and set no_new_privs, so nothing it execs
/// regains more (as root, an exec would otherwise get the whole bounding set back: the
/// DaemonSet's has CAP_SYS_ADMIN, for the uprobe maker). Returns what it kept.
pub(crate) fn drop_after_attach(extra: &[Capability]) -> Result<CapsHashSet> {
    let wanted: Vec<Capability> = KEPT.iter().chain(extra).copied().collect();
    let keep = keep_only(&wanted)?;
    log::debug!("kept capabilities {keep:?}");
    Ok(keep)
}

/// Reduce the calling thread's effective and permitted sets to `keep` (those of them it has),
/// clear its inheritable and ambient sets, and set no_new_privs: `drop_after_attach`'s, and
/// the uprobe maker's (sys/uprobes.rs), which has one thread.
pub(crate) fn keep_only(keep: &[Capability]) -> Result<CapsHashSet> {
    let permitted = caps::read(None, CapSet::Permitted).context("cannot read our capabilities")?;
    let keep: CapsHashSet = keep.iter().copied().filter(|c| permitted.contains(c)).collect();
    // Effective must stay within permitted: shrink it first.
    caps::set(None, CapSet::Effective, &keep).context("cannot drop effective capabilities")?;
    caps::set(None, CapSet::Permitted, &keep).context("cannot drop permitted capabilities")?;
    caps::clear(None, CapSet::Inheritable).context("cannot clear inheritable capabilities")?;
    caps::clear(None, CapSet::Ambient).context("cannot clear ambient capabilities")?;
    rustix::thread::set_no_new_privs(true).context("cannot set no_new_privs")?;
    Ok(keep)
}

/// Drop every capability of the calling thread (a helper thread that only waits).
pub(crate) fn drop_all_on_this_thread() {
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable, CapSet::Ambient] {
        let _ = caps::clear(None, set);
    }
}
