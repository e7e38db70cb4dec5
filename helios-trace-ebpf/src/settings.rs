//! The load-time settings (helios_trace_common::Settings): one read-only global the loader
//! writes before the programs are verified (`EbpfLoader::override_global`).
//!
//! Every field is read volatile, one field at a time: a plain read of a `static` lets the
//! compiler fold in the default the object was built with, and the loader's value would never
//! be seen; a field read at its constant offset is what lets the verifier see the value the
//! loader wrote (it knows the contents of a frozen read-only map) and prune by it.
use core::ptr::read_volatile;

use helios_trace_common::Settings;

#[unsafe(no_mangle)]
static SETTINGS: Settings = Settings::DEFAULT;

// The loader finds the global by the name in helios_trace_common.
const _: () = assert!(crate::same_name(helios_trace_common::SETTINGS_GLOBAL, "SETTINGS"));

/// Read one field of the settings as the loader wrote it.
macro_rules! setting {
    ($field:ident) => {
        // SAFETY: a valid, aligned field of a static that lives for the whole program.
        unsafe { read_volatile(&raw const SETTINGS.$field) }
    };
}

#[inline(always)]
pub fn tracer_tgid() -> u32 {
    setting!(tracer_tgid)
}

#[inline(always)]
pub fn uprobe_maker_tgid() -> u32 {
    setting!(uprobe_maker_tgid)
}

#[inline(always)]
pub fn filtering_targets() -> bool {
    setting!(filter_targets) != 0
}

/// `helios_trace_common::filter_match` bits: which of `--comm` and `--uid` are on.
#[inline(always)]
pub fn filter_matches() -> u32 {
    setting!(filter_matches)
}

#[inline(always)]
pub fn filtering_cgroups() -> bool {
    setting!(filter_cgroups) != 0
}

/// One of helios_trace_common::stack_mode.
#[inline(always)]
pub fn user_stack_mode() -> u32 {
    setting!(user_stack_mode)
}

#[inline(always)]
pub fn stack_window() -> u32 {
    setting!(stack_window)
}

#[inline(always)]
pub fn exit_group_dead_offset() -> u32 {
    setting!(exit_group_dead_offset)
}

#[inline(always)]
pub fn wakeup_bytes() -> u64 {
    setting!(wakeup_bytes)
}

/// One of helios_trace_common::learned_chains.
#[inline(always)]
pub fn learned_chains() -> u32 {
    setting!(learned_chains)
}

/// helios_trace_common::KernelOffsets: where this kernel keeps a task's mm and start time and
/// the mm's mapping sequence (zero: not known).
#[inline(always)]
pub fn kernel_offsets() -> helios_trace_common::KernelOffsets {
    setting!(kernel)
}
