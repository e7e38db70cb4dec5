//! Call stacks of descriptor-creating calls: frame-pointer user stacks into the STACKS map
//! (`--stacks fp`), or, for `--stacks dwarf`, the call chain walked with the rules userspace
//! learned (`learned_chain`) or else the user registers and a window of the user stack copied
//! into the record for userspace to unwind.
use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    helpers::{
        bpf_probe_read_kernel as bpf_probe_read_kernel_value,
        generated::{
            bpf_find_vma, bpf_get_current_task_btf, bpf_probe_read_kernel,
            bpf_probe_read_user as raw_read_user,
        },
    },
    programs::tracing::StackIdContext,
};
use helios_trace_common::{
    FrameRuleKey, LearnedChain, MAX_CHAIN_FRAMES, MAX_STACK_WINDOW, UserStack, counter, frame_rule,
    user_stack_flags,
};

use crate::{
    emit::count,
    maps::{EXEC_TIMES, FRAME_RULES, STACKS},
};

// The user register layout of the architecture the programs are built for (aya-build passes
// `bpf_target_arch`, the host's).
#[cfg(bpf_target_arch = "aarch64")]
use helios_trace_common::regs_aarch64 as arch;
#[cfg(bpf_target_arch = "x86_64")]
use helios_trace_common::regs_x86_64 as arch;
#[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
compile_error!("--stacks dwarf knows the user registers of x86_64 and aarch64 only");

/// Offset of `vm_end` in `struct vm_area_struct` (include/linux/mm_types.h: `vm_start` and
/// `vm_end` open the struct, as they have since the first kernels).
const VM_END_OFFSET: usize = 8;

/// bpf_find_vma's callback: the end of the mapping that holds the stack pointer.
#[inline(never)]
unsafe extern "C" fn vma_end(_task: *mut c_void, vma: *mut c_void, end: *mut c_void) -> i64 {
    let vm_end = unsafe { bpf_probe_read_kernel_value((vma as *const u8).add(VM_END_OFFSET) as *const u64) };
    unsafe { *(end as *mut u64) = vm_end.unwrap_or(0) };
    0
}

/// The smallest page size: a read within one page cannot fail half-way.
const PAGE: u32 = 4096;

/// Copy the user registers (`regs`: the task's saved `struct pt_regs`, the raw syscall
/// tracepoints' first argument) and up to `window` bytes of user stack from sp upward into a
/// record; false when not even the registers could be read.
///
/// The copy stops at the end of the stack's mapping (found with bpf_find_vma), so that a
/// window reaching past the top of a shallow stack does not fault: bpf_probe_read_user fails
/// as a whole, after a page fault, when any byte is unreadable.
#[inline(always)]
pub fn capture_user_stack(
    stack: &mut UserStack,
    bytes: &mut [u8; MAX_STACK_WINDOW as usize],
    window: u32,
    regs: *const c_void,
) -> bool {
    stack.stack_len = 0;
    stack.flags = 0;
    let task = unsafe { bpf_get_current_task_btf() };
    // The registers the task entered the kernel with: its user-mode state at the syscall.
    let read = unsafe {
        bpf_probe_read_kernel(stack.regs.as_mut_ptr().cast(), (arch::WORDS * size_of::<u64>()) as u32, regs)
    };
    if read != 0 {
        return false;
    }
    let sp = stack.regs[arch::SP];
    let mut end: u64 = 0;
    let found = unsafe { bpf_find_vma(task, sp, vma_end as *mut c_void, (&mut end as *mut u64).cast(), 0) };
    let mut want = window;
    if found == 0 && end > sp && end - sp < window as u64 {
        want = (end - sp) as u32;
        stack.flags = user_stack_flags::SHORT;
    }
    let want = want.min(MAX_STACK_WINDOW);
    if want > 0 && unsafe { raw_read_user(bytes.as_mut_ptr().cast(), want, sp as *const c_void) } == 0 {
        stack.stack_len = want;
        return true;
    }
    // A page of the window is not there: at the top of a main thread's stack, the kernel
    // leaves a random gap of up to 8 KiB between the argument and environment strings and the
    // vectors below them (fs/binfmt_elf.c, create_elf_tables: arch_align_stack), which the
    // process never touches; or a page was swapped out. Keep the longest readable prefix that
    // ends on a page boundary, a page shorter each time (each failed try costs a fault).
    // In u64 throughout: the checks must bound the very register the helper gets, which a
    // u32's zero-extension in between would hide from the verifier.
    let (page, want, window) = (PAGE as u64, want as u64, window as u64);
    let first = page - (sp & (page - 1));
    let mut size = if want > first { first + (want - first - 1) / page * page } else { 0 };
    if size > 0 {
        for _ in 0..MAX_STACK_WINDOW / PAGE {
            if size > window {
                break;
            }
            if unsafe { raw_read_user(bytes.as_mut_ptr().cast(), size as u32, sp as *const c_void) } == 0 {
                stack.stack_len = size as u32;
                break;
            }
            if size <= page {
                break;
            }
            size -= page;
        }
    }
    stack.flags = user_stack_flags::SHORT;
    true
}

/// Walk the calling thread's user call chain with the rules userspace learned for this process
/// image (`FRAME_RULES`), into `chain`; true when every frame had a rule and the chain ended as
/// userspace's unwinder ends it. Then `chain` holds what userspace would have unwound from the
/// stack window, exactly: each step depends only on the frame's address and registers
/// (helios-trace/src/resolve/chains.rs `step`, the same rules over a window, says so and is
/// tested against the unwinder), and every read lies inside the window `capture_user_stack`
/// would have copied: below `sp + window` and the end of the stack's mapping, and with every
/// page from sp's up to the highest word read present (the copy keeps the readable prefix
/// that ends on a page boundary). Anything else (a frame without a rule, a read outside that
/// window or that fails, a chain deeper than MAX_CHAIN_FRAMES, a step the unwinder would
/// refuse) is false: the caller sends the window.
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
pub fn learned_chain(chain: &mut LearnedChain, regs: *const u64, tgid: u32, window: u32) -> bool {
    chain.depth = 0;
    chain.flags = 0;
    let read_reg = |index: usize| unsafe { bpf_probe_read_kernel_value(regs.wrapping_add(index)) };
    let (Ok(mut pc), Ok(mut sp), Ok(mut bp)) = (read_reg(arch::IP), read_reg(arch::SP), read_reg(arch::BP))
    else {
        return false;
    };
    let low = sp;
    let mut high = sp.saturating_add(window as u64);
    let task = unsafe { bpf_get_current_task_btf() };
    let mut end: u64 = 0;
    let found = unsafe { bpf_find_vma(task, sp, vma_end as *mut c_void, (&mut end as *mut u64).cast(), 0) };
    if found == 0 && end > sp && end < high {
        high = end;
    }
    // One past the highest byte read.
    let mut reached = low;
    let mut read = |at: u64| -> Option<u64> {
        if at < low || at > high.saturating_sub(8) {
            return None;
        }
        let word = unsafe { aya_ebpf::helpers::bpf_probe_read_user(at as *const u64) }.ok()?;
        reached = reached.max(at + 8);
        Some(word)
    };
    let exec_ns = unsafe { EXEC_TIMES.get(&tgid) }.copied().unwrap_or(0);
    let mut key = FrameRuleKey { tgid, first: 1, exec_ns, address: pc };
    for depth in 0..MAX_CHAIN_FRAMES {
        let Some(slot) = chain.addresses.get_mut(depth) else { return false };
        *slot = pc;
        let Some(rule) = (unsafe { FRAME_RULES.get(&key) }) else { return false };
        let rule = *rule;
        if rule.flags & frame_rule::END != 0 {
            chain.depth = depth as u32 + 1;
            return pages_present(low, reached);
        }
        let from_bp = rule.flags & frame_rule::CFA_FROM_BP != 0;
        let base = if from_bp { bp } else { sp };
        if from_bp && bp == 0 {
            // A zero frame pointer ends a frame-pointer chain.
            chain.depth = depth as u32 + 1;
            return pages_present(low, reached);
        }
        let cfa = base.wrapping_add(rule.cfa_offset as i64 as u64);
        if from_bp && cfa <= sp {
            return false;
        }
        let mut caller_bp = bp;
        if rule.flags & frame_rule::BP_SAVED != 0 {
            let Some(saved) = read(base.wrapping_add(rule.bp_offset as i64 as u64)) else { return false };
            caller_bp = saved;
        }
        let Some(return_address) = read(cfa.wrapping_sub(8)) else { return false };
        if return_address == 0 {
            chain.depth = depth as u32 + 1;
            return pages_present(low, reached);
        }
        if cfa == sp && return_address == pc {
            return false;
        }
        pc = return_address;
        sp = cfa;
        bp = caller_bp;
        key = FrameRuleKey { tgid, first: 0, exec_ns, address: pc };
    }
    false
}

/// Whether every page of `[low, reached)` can be read, as the window copy needs: a page it
/// could not read ends the window there, though a word above it may read. The walk read some
/// pages already; this reads one byte of each (at most MAX_STACK_WINDOW / PAGE + 1).
#[inline(always)]
fn pages_present(low: u64, reached: u64) -> bool {
    let mut page = low & !(PAGE as u64 - 1);
    for _ in 0..MAX_STACK_WINDOW / PAGE + 1 {
        if page >= reached {
            return true;
        }
        let at = page.max(low);
        if unsafe { aya_ebpf::helpers::bpf_probe_read_user(at as *const u8) }.is_err() {
            return false;
        }
        page += PAGE as u64;
    }
    page >= reached
}

/// Rules are learned for x86_64's registers only: elsewhere every call sends its window.
#[cfg(not(bpf_target_arch = "x86_64"))]
#[inline(always)]
pub fn learned_chain(chain: &mut LearnedChain, _regs: *const u64, _tgid: u32, _window: u32) -> bool {
    chain.depth = 0;
    chain.flags = 0;
    false
}

#[inline(always)]
pub fn stack_id<C: StackIdContext>(ctx: &C, flags: u64) -> i32 {
    match ctx.get_stackid(&STACKS, flags) {
        Ok(id) => id as i32,
        Err(err) => {
            // -EEXIST: another stack owns the bucket (we never pass BPF_F_REUSE_STACKID, so ids
            // stay stable for userspace's cache); anything else: map full or unreadable stack.
            count(if err == -17 { counter::STACK_COLLISION } else { counter::STACK_ERROR });
            err
        }
    }
}
