//! The floor (`cargo xtask bench`, "floor"; BENCHMARKS.md): programs that do nothing but what
//! every run of an attach kind must, so that the cost of the attach kind itself is measured on
//! this kernel apart from what the real programs do. Loaded only when the loader is asked for
//! the floor (`HELIOS_TRACE_FLOOR`, sys/loader.rs), never in a tracing session.
use aya_ebpf::{
    macros::{btf_tracepoint, raw_tracepoint, tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use helios_trace_common::MAX_SYSCALL_NR;

use crate::maps::SYSCALL_SPECS;

/// Attached to every `syscalls/sys_enter_X` and `sys_exit_X` the real programs used to use:
/// the kernel has already filtered by number and built the call's record.
#[tracepoint]
pub fn floor_tracepoint(_ctx: TracePointContext) -> u32 {
    0
}

/// On the raw `sys_enter`: the syscall number is an argument; one lookup in the spec array.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn floor_raw_enter(ctx: RawTracePointContext) -> u32 {
    let nr: u64 = ctx.arg(1);
    spec(nr)
}

/// On the raw `sys_exit`: the number is read from the saved registers (orig_ax), then looked
/// up, as the real exit program starts.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn floor_raw_exit(ctx: RawTracePointContext) -> u32 {
    let regs: *const u64 = ctx.arg(0);
    let nr =
        unsafe { aya_ebpf::helpers::bpf_probe_read_kernel(regs.wrapping_add(NR_WORD)) }.unwrap_or(u64::MAX);
    spec(nr as u32 as u64)
}

/// On `sys_exit` as a BTF tracepoint (`tp_btf`): the kernel knows `regs` is a `struct pt_regs *`
/// (its BTF, `btf_trace_sys_exit`), so orig_ax is a load the verifier checks against the struct,
/// not a `bpf_probe_read_kernel` call; then the same lookup.
#[btf_tracepoint(function = "sys_exit")]
pub fn floor_btf_exit(ctx: BtfTracePointContext) -> u32 {
    let regs: *const u64 = ctx.arg(0);
    // SAFETY: the verifier admits the load only inside `struct pt_regs`; a fault reads 0.
    let nr = unsafe { core::ptr::read_volatile(regs.wrapping_add(NR_WORD)) };
    spec(nr as u32 as u64)
}

/// The word of the saved registers that holds the syscall number at `sys_exit`.
#[cfg(bpf_target_arch = "x86_64")]
const NR_WORD: usize = helios_trace_common::regs_x86_64::ORIG_AX;
#[cfg(bpf_target_arch = "aarch64")]
const NR_WORD: usize = helios_trace_common::regs_aarch64::SYSCALLNO;

/// The spec of `nr`, returned so the lookup is not optimised away (the return value of a
/// raw tracepoint program is ignored by the kernel).
#[inline(always)]
fn spec(nr: u64) -> u32 {
    if nr >= MAX_SYSCALL_NR as u64 {
        return 0;
    }
    SYSCALL_SPECS.get(nr as u32).copied().unwrap_or(0) & 1
}
