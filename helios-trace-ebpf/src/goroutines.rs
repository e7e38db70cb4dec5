//! Which goroutine made a descriptor call in a Go process: the creator (`gopc`) of the
//! running goroutine, read at the call so that a goroutine that ends, and whose `g` Go reuses,
//! cannot be mistaken for another (helios-trace/src/resolve/goroutines.rs names it).
use aya_ebpf::helpers::bpf_probe_read_user;
use helios_trace_common::SavedRegs;

use crate::maps::{EXEC_TIMES, GO_PROCS};

#[cfg(bpf_target_arch = "aarch64")]
use helios_trace_common::regs_aarch64 as arch;
#[cfg(bpf_target_arch = "x86_64")]
use helios_trace_common::regs_x86_64 as arch;

/// `gopc` of the goroutine making the current call, or 0 when the process is not a Go
/// process userspace recognised (for its current image), or when the goroutine register is not
/// the running goroutine's `g`.
///
/// Go's register ABI keeps `g` in a fixed register (arch::GO_G) in Go code, and Go's syscall
/// stub does not touch it (`Syscall6` in src/runtime/internal/syscall/asm_linux_amd64.s, moved
/// to src/internal/runtime/syscall/ by later releases). A call
/// made from C (cgo) or from assembly that reuses the register holds anything there, so the
/// value is taken as a `g` only when it opens with a stack (`g.stack` {lo, hi}, the first field
/// in every Go version: src/runtime/runtime2.go) that holds the call's stack pointer: the
/// call is then made on that goroutine's stack. A system goroutine (g0, gsignal) passes the
/// check and has no creator (`gopc` 0).
#[inline(always)]
pub fn creator_pc(regs: &SavedRegs, tgid: u32) -> u64 {
    let Some(offsets) = (unsafe { GO_PROCS.get(&tgid) }) else {
        return 0;
    };
    // Offsets found for an image the process has left by an exec since (GoOffsets::exec_ns).
    let exec_ns = unsafe { EXEC_TIMES.get(&tgid) }.copied().unwrap_or(0);
    if exec_ns != offsets.exec_ns {
        return 0;
    }
    let gopc = offsets.gopc as u64;
    let (g, sp) = (regs[arch::GO_G], regs[arch::SP]);
    let Ok(stack) = (unsafe { bpf_probe_read_user(g as *const [u64; 2]) }) else {
        return 0;
    };
    if !(stack[0] <= sp && sp < stack[1]) {
        return 0;
    }
    unsafe { bpf_probe_read_user((g + gopc) as *const u64) }.unwrap_or(0)
}
