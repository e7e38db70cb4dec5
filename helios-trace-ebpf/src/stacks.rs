//! Call stacks of descriptor-creating calls: frame-pointer user stacks into the STACKS map
//! (`--stacks fp`), or the user registers and a window of the user stack copied into the record
//! for userspace to unwind (`--stacks dwarf`).
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
use helios_trace_common::{MAX_STACK_WINDOW, UserStack, counter, user_stack_flags};

use crate::{emit::count, maps::STACKS};

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
