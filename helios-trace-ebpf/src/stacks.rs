//! Call stacks of descriptor-creating calls: frame-pointer user stacks into the STACKS map
//! (`--stacks fp`), or, for `--stacks dwarf`, the call chain walked with the rules userspace
//! learned (`learned_chain`) or else the user registers and a window of the user stack copied
//! into the record for userspace to unwind.
use core::{
    ffi::c_void,
    mem::offset_of,
    ptr::{read_volatile, write_volatile},
};

use aya_ebpf::{
    helpers::{
        bpf_probe_read_kernel as bpf_probe_read_kernel_value,
        generated::{bpf_find_vma, bpf_get_current_task_btf, bpf_loop, bpf_probe_read_user as raw_read_user},
    },
    maps::ring_buf::RingBufBytes,
    programs::tracing::StackIdContext,
};
use helios_trace_common::{
    ChainKey, ChainRules, FrameRule, FrameRuleKey, LearnedChain, MAX_CACHED_CHAIN_FRAMES, MAX_CHAIN_FRAMES,
    MAX_STACK_WINDOW, SavedRegs, StackMapping, UserStack, chain_flags, counter, first_frame_hint_slot,
    frame_rule, user_stack_flags,
};

use crate::{
    emit::count,
    maps::{
        CHAIN_RULES, CHAIN_STACK, CHAIN_WALK, EVENTS, EXEC_TIMES, FIRST_FRAME_HINTS, FRAME_RULES,
        STACK_MAPPING, STACKS,
    },
    settings,
};

// The user register layout of the architecture the programs are built for (aya-build passes
// `bpf_target_arch`, the host's).
#[cfg(bpf_target_arch = "aarch64")]
use helios_trace_common::regs_aarch64 as arch;
#[cfg(bpf_target_arch = "x86_64")]
use helios_trace_common::regs_x86_64 as arch;
#[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
compile_error!("--stacks dwarf knows the user registers of x86_64 and aarch64 only");

/// A record that carries a window of the user stack after its event: `kind::FD_SYSCALL_USER_STACK`
/// (a `SyscallEvent`) and `kind::LIBUV_TCP_HANDLE_USER_STACK` (a `HandleEvent`), whose layouts
/// helios_trace_common gives.
#[repr(C)]
pub struct WithStack<E> {
    pub event: E,
    pub stack: UserStack,
    pub bytes: [u8; MAX_STACK_WINDOW as usize],
}

impl<E> WithStack<E> {
    /// Reserve a record with room for `window` bytes of stack, or count a full ring. The window
    /// is a field of the read-only settings, whose value the verifier knows (settings.rs), which
    /// is what lets the reserved size vary with the configuration.
    #[inline(always)]
    pub fn reserve(window: u32) -> Option<RingBufBytes<'static>> {
        let entry = EVENTS.reserve_bytes(offset_of!(Self, bytes) + window as usize, 0);
        if entry.is_none() {
            count(counter::RINGBUF_FULL);
        }
        entry
    }

    /// The record in an entry `reserve` gave.
    #[inline(always)]
    pub fn of<'a>(entry: &'a mut RingBufBytes<'_>) -> &'a mut Self {
        // SAFETY: ring-buffer records are 8-byte aligned, and `reserve` made this one long
        // enough for all but the stack bytes past its window, which are never touched.
        unsafe { &mut *entry.as_mut_ptr().cast::<Self>() }
    }
}

/// Offset of `vm_start` and `vm_end` in `struct vm_area_struct` (include/linux/mm_types.h: they
/// open the struct, as they have since the first kernels).
const VM_START_OFFSET: usize = 0;
const VM_END_OFFSET: usize = 8;

/// bpf_find_vma's callback: the start and end of the mapping that holds the stack pointer,
/// into the `[u64; 2]` at `bounds` (left as it was if either does not read).
#[inline(never)]
unsafe extern "C" fn vma_bounds(_task: *mut c_void, vma: *mut c_void, bounds: *mut c_void) -> i64 {
    let vma = vma as *const u8;
    let start = unsafe { bpf_probe_read_kernel_value(vma.add(VM_START_OFFSET) as *const u64) };
    let end = unsafe { bpf_probe_read_kernel_value(vma.add(VM_END_OFFSET) as *const u64) };
    if let (Ok(start), Ok(end)) = (start, end) {
        unsafe { *(bounds as *mut [u64; 2]) = [start, end] };
    }
    0
}

/// The end of the calling thread's mapping that holds `sp`, or None when it cannot be found.
///
/// bpf_find_vma takes the mm's mmap lock (a trylock, an atomic on a line every thread of the
/// process shares) and walks its maple tree: ~65–130 ns of a traced open+close
/// (BENCHMARKS.md, "The floor again"). So this CPU keeps the mapping it found last
/// (`STACK_MAPPING`), and takes it again while nothing that could change it changed: the same
/// task (its address, and its start time: an address is reused after a task ends), the same
/// image (its exec id: an exec's new mm may be where the freed one was, its sequence counted
/// from 0 again), the same mm, and the same mm sequence. Every change of a mapping is made
/// under the mmap write lock, whose taking and release bump the sequence (odd while held): an
/// even sequence equal to the one read before the lookup means the mappings are still as the
/// lookup found them. Without all the offsets (a kernel without BTF, or before `mm_lock_seq`
/// became a seqcount in 6.13), or without an mm, it looks up.
///
/// `kept`: whether to use this CPU's slot at all. A uprobe's program may be preempted (it runs
/// with migration disabled only: kernel/trace/trace_uprobe.c, bpf_prog_run_array_uprobe), so
/// another program could write the slot half-way through its use: it looks up every time.
#[inline(always)]
fn stack_mapping_end(sp: u64, kept: bool) -> Option<u64> {
    let task = unsafe { bpf_get_current_task_btf() };
    let seen = if kept { current_mapping_key(task as *const u8) } else { None };
    if let Some(seen) = seen
        && let Some(last) = STACK_MAPPING.get(0)
        && last.task == seen.task
        && last.task_start_time == seen.task_start_time
        && last.task_self_exec_id == seen.task_self_exec_id
        && last.mm == seen.mm
        && last.sequence == seen.sequence
        && last.start <= sp
        && sp < last.end
    {
        return Some(last.end);
    }
    let mut bounds = [0u64; 2];
    let found = unsafe {
        bpf_find_vma(task, sp, vma_bounds as *mut c_void, (&mut bounds as *mut [u64; 2]).cast(), 0)
    };
    if found != 0 || bounds[1] <= sp {
        return None;
    }
    if let Some(seen) = seen
        && let Some(slot) = STACK_MAPPING.get_ptr_mut(0)
    {
        // SAFETY: a per-CPU slot: no other program uses it while this one runs on this CPU.
        unsafe { *slot = StackMapping { start: bounds[0], end: bounds[1], ..seen } };
    }
    Some(bounds[1])
}

/// The u64 at `offset` of the kernel struct at `at`, as one load: from a BTF tracepoint the
/// verifier knows `at` as a `struct task_struct *` (or a pointer loaded from one) and checks
/// the load against its members (kernel/bpf/btf.c, btf_struct_access), making it one that
/// reads 0 where it faults (BPF_PROBE_MEM). Used for the stack mapping's key here and a
/// close's slot (syscalls.rs, `number_taken`).
///
/// # Safety
/// `at` is such a pointer and `offset` a constant to the verifier (read from the frozen
/// settings: settings.rs).
#[inline(always)]
pub unsafe fn kernel_word(at: *const u8, offset: u32) -> u64 {
    unsafe { read_volatile(at.wrapping_add(offset as usize) as *const u64) }
}

/// What must be unchanged for this CPU's `STACK_MAPPING` to hold for the current task (its
/// start and end left 0), or None: offsets not known, no mm, or the mm's sequence is
/// odd (a writer holds the mmap lock).
#[inline(always)]
fn current_mapping_key(task: *const u8) -> Option<StackMapping> {
    let offsets = settings::kernel_offsets();
    if !offsets.complete() {
        return None;
    }
    // Loads, not `bpf_probe_read_kernel` calls: `task` is the `struct task_struct *` of
    // bpf_get_current_task_btf and the offsets are constants to the verifier (read from the
    // frozen settings: settings.rs), so it checks each load against the struct's members
    // (kernel/bpf/btf.c, btf_struct_access) and makes it one that reads 0 where it faults
    // (BPF_PROBE_MEM). `mm` loaded so is a `struct mm_struct *` to it in turn.
    // SAFETY: see above.
    let load = |at: *const u8, offset: u32| unsafe { kernel_word(at, offset) };
    let mm = load(task, offsets.task_mm);
    if mm == 0 {
        return None;
    }
    // SAFETY: as `load`.
    let sequence =
        unsafe { read_volatile((mm as *const u8).wrapping_add(offsets.mm_lock_seq as usize) as *const u32) };
    if sequence & 1 != 0 {
        return None;
    }
    Some(StackMapping {
        task: task as u64,
        task_start_time: load(task, offsets.task_start_time),
        task_self_exec_id: load(task, offsets.task_self_exec_id),
        mm,
        sequence: sequence as u64,
        start: 0,
        end: 0,
    })
}

/// The smallest page size: a read within one page cannot fail half-way.
pub const PAGE: u32 = 4096;

/// Copy the user registers (`regs`: the copy of the task's saved `struct pt_regs`) and up to
/// `window` bytes of user stack from sp upward into a record (none when not even sp's page
/// reads: the registers alone are sent then).
///
/// The copy stops at the end of the stack's mapping (`stack_mapping_end`), so that a
/// window reaching past the top of a shallow stack does not fault: bpf_probe_read_user fails
/// as a whole, after a page fault, when any byte is unreadable.
#[inline(always)]
pub fn capture_user_stack(
    stack: &mut UserStack,
    bytes: &mut [u8; MAX_STACK_WINDOW as usize],
    window: u32,
    regs: &SavedRegs,
) {
    // The registers the task entered the kernel with: its user-mode state at the syscall.
    for (to, from) in stack.regs.iter_mut().zip(regs.iter()).take(arch::WORDS) {
        *to = *from;
    }
    capture_stack_window(stack, bytes, window, true);
}

/// `capture_user_stack` once `stack.regs` hold the registers: the window from their sp. With
/// `kept_mapping` false the stack's mapping is looked up every time (`stack_mapping_end`).
#[inline(always)]
pub fn capture_stack_window(
    stack: &mut UserStack,
    bytes: &mut [u8; MAX_STACK_WINDOW as usize],
    window: u32,
    kept_mapping: bool,
) {
    stack.stack_len = 0;
    stack.flags = 0;
    let sp = stack.regs[arch::SP];
    let end = stack_mapping_end(sp, kept_mapping).unwrap_or(0);
    let mut want = window;
    if end > sp && end - sp < window as u64 {
        want = (end - sp) as u32;
        stack.flags = user_stack_flags::SHORT;
    }
    let want = want.min(MAX_STACK_WINDOW);
    if want > 0 && unsafe { raw_read_user(bytes.as_mut_ptr().cast(), want, sp as *const c_void) } == 0 {
        stack.stack_len = want;
        return;
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
}

/// A learned chain's walk in `CHAIN_WALK`: `learned_chain` walks the first frame and the taught
/// chain's with its `Walk` in registers and on its stack, and hands it over here to the walk's
/// `bpf_loop` callback (`rule_step`), which takes it from there, one frame per call. Loaded
/// from a map, its values are unknown to the verifier, so the callback's states stay alike
/// from frame to frame.
#[repr(C)]
#[cfg_attr(not(bpf_target_arch = "x86_64"), allow(dead_code))]
pub struct ChainWalk {
    walk: Walk,
    /// How many bytes of `CHAIN_STACK` hold the stack from `walk.low` (`read_word`). Always in
    /// the map, read and written volatile, the first frame's walk too: a count the verifier
    /// knew (in a register, or a stack slot it tracks), it told every count apart and passed
    /// its million instructions.
    copied: u64,
    /// 1 when `start_stack_copy` found the end of the mapping that holds sp (`walk.high` is then
    /// within it), 0 when the lookup failed (the mmap lock contended: `bpf_find_vma` gives up)
    /// and `walk.high` is sp plus the window, which may reach past the stack (`on_walked_stack`).
    mapping_found: u64,
    /// The first frame's hint `start_from_hint` found for this call (`first_frame_hint`), whose
    /// rule the walk takes its first step with: `hint` is its rule when `hinted` is 1.
    hint: FrameRule,
    hinted: u64,
}

/// The walk's state but for the bytes copied (`ChainWalk`).
#[repr(C)]
#[cfg_attr(not(bpf_target_arch = "x86_64"), allow(dead_code))]
pub struct Walk {
    /// The frame to walk next: its address and the registers its rule reads.
    pc: u64,
    sp: u64,
    bp: u64,
    /// The stack the walk may read: `[low, high)`.
    low: u64,
    high: u64,
    /// The image, as `FRAME_RULES` and `CHAIN_RULES` key it.
    exec_ns: u64,
    tgid: u32,
    /// The frames walked: the index of the frame to walk next.
    depth: u32,
    /// `WALKING`, then `ENDED` (as userspace's unwinder ends the chain) or `FAILED`.
    outcome: u32,
    reserved: u32,
}

#[cfg(bpf_target_arch = "x86_64")]
impl Walk {
    #[inline(always)]
    fn bounds(&self) -> StackBounds {
        StackBounds { low: self.low, high: self.high }
    }
}

const WALKING: u32 = 0;
const ENDED: u32 = 1;
const FAILED: u32 = 2;

/// Start the copy of the calling thread's stack a learned chain's walk reads: the part it may
/// read, `[sp, high)`, up to `window` bytes from sp and no further than the end of its mapping
/// (`stack_mapping_end`), as `capture_user_stack` would copy it, kept in `CHAIN_WALK`, and copy
/// ahead what the first frame's hint says (`start_from_hint`). Called once per traced call of
/// process `tgid`, before the Python walk, which reads a word of it too (`stack_word`), and
/// `learned_chain`, which goes on from what those copied. In the map, not returned: the exit
/// program's and the Python walk's stacks are within a few bytes of the verifier's 512
/// together. False when the slot is missing.
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
pub fn start_stack_copy(regs: &SavedRegs, window: u32, tgid: u32) -> bool {
    let Some(slot) = CHAIN_WALK.get_ptr_mut(0) else { return false };
    let sp = regs[arch::SP];
    let mut high = sp.saturating_add(window as u64);
    let end = stack_mapping_end(sp, true);
    if let Some(end) = end
        && end < high
    {
        high = end;
    }
    // SAFETY: a per-CPU slot: no other program uses it while this one runs on this CPU
    // (volatile: `ChainWalk` says why).
    unsafe {
        write_volatile(&raw mut (*slot).walk.low, sp);
        write_volatile(&raw mut (*slot).walk.high, high);
        write_volatile(&raw mut (*slot).copied, 0);
        write_volatile(&raw mut (*slot).mapping_found, end.is_some() as u64);
    }
    start_from_hint(slot, tgid, regs[arch::IP]);
    true
}

/// The image's exec time and the first frame's hint, kept in the walk's slot for
/// `learned_chain`, and the stack copied ahead as far as the hint says (`copy_ahead`), for the
/// call at `pc` of process `tgid`. Before the Python walk, not in `learned_chain` after it: that
/// walk's word of the C stack (3.11's and 3.12's running `_PyCFrame`, python.rs) lies in the part
/// a CPython chain's hint copies, so the two take one read of the stack where they took two,
/// the Python walk's up to the end of its word's page and the copy ahead of the rest
/// (BENCHMARKS.md, "The stack copied ahead before the Python walk"). Where a shallower chain
/// through the same first frame (a C one of the same process) makes the hint stop short of
/// that word, the Python walk copies on from there by the page: two reads, where the other
/// order took one (its page, then nothing ahead). A call whose record then cannot be reserved
/// (the ring full) has copied ahead for nothing. Inlined: as a function of its own (a BPF-to-BPF
/// call) it cost a C open+close ~100 ns more (the same section); its keys still fit the exit
/// program's stack beside the Python walk's.
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
fn start_from_hint(slot: *mut ChainWalk, tgid: u32, pc: u64) {
    let exec_ns = unsafe { EXEC_TIMES.get(&tgid) }.copied().unwrap_or(0);
    // SAFETY: the per-CPU slot, which no other program uses while this one runs on this CPU
    // (volatile: `ChainWalk` says why).
    unsafe {
        write_volatile(&raw mut (*slot).walk.exec_ns, exec_ns);
        write_volatile(&raw mut (*slot).hinted, 0);
    }
    let Some(hint) = first_frame_hint(&FrameRuleKey { tgid, first: 1, exec_ns, address: pc }) else {
        return;
    };
    if let Some(copy) = CHAIN_STACK.get_ptr_mut(0) {
        // SAFETY: as above, and the per-CPU copy; `copied` stays a pointer into the slot.
        unsafe {
            copy_ahead(slot, started_bounds(slot), &raw mut (*slot).copied, &mut *copy, hint.stack_bytes)
        };
    }
    // SAFETY: as above.
    unsafe {
        let to = &raw mut (*slot).hint;
        write_volatile(&raw mut (*to).flags, hint.rule.flags);
        write_volatile(&raw mut (*to).cfa_offset, hint.rule.cfa_offset);
        write_volatile(&raw mut (*to).bp_offset, hint.rule.bp_offset);
        write_volatile(&raw mut (*slot).hinted, 1);
    }
}

/// The first frame's rule `start_from_hint` kept for this call, if its hint was found.
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
fn started_hint(slot: *const ChainWalk) -> Option<FrameRule> {
    // SAFETY: the per-CPU slot (volatile: `ChainWalk` says why).
    unsafe {
        if read_volatile(&raw const (*slot).hinted) == 0 {
            return None;
        }
        let hint = &raw const (*slot).hint;
        Some(FrameRule {
            flags: read_volatile(&raw const (*hint).flags),
            cfa_offset: read_volatile(&raw const (*hint).cfa_offset),
            bp_offset: read_volatile(&raw const (*hint).bp_offset),
            reserved: 0,
        })
    }
}

/// How far up from `low` (sp) a copy ahead may read, within `[low, high)` (`high` the end of
/// the stack's mapping, found, or of the window): to `high`, except on a main thread's stack,
/// whose mapping holds, above its outermost frame, the argument and environment vectors and
/// then a gap of up to 8 KiB the process never touches (fs/binfmt_elf.c, `create_elf_tables`:
/// `arch_align_stack` below the strings): there, no further than the end of the page of
/// `mm->start_stack` (where `argc` is, below which every frame of the thread lies), a page
/// the kernel wrote. Another thread's stack is its own mapping, at whose top glibc puts the
/// thread's descriptor and static TLS; a page there or above a new chain's frames that was
/// never touched makes the copy fail (`counter::STACK_COPIES_AHEAD_FAILED`), and the walk goes
/// on by the page. `low` (no copy ahead) when the offsets are not known or the task has no mm.
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
fn ahead_high(low: u64, high: u64) -> u64 {
    let offsets = settings::kernel_offsets();
    if offsets.task_mm == 0 || offsets.mm_start_stack == 0 {
        return low;
    }
    // Loads the verifier checks, as `current_mapping_key`'s.
    let task = unsafe { bpf_get_current_task_btf() } as *const u8;
    // SAFETY: `task` is bpf_get_current_task_btf's and the offsets are the frozen settings'.
    let mm = unsafe { kernel_word(task, offsets.task_mm) };
    if mm == 0 {
        return low;
    }
    // SAFETY: as above; `mm` loaded so is a `struct mm_struct *` to the verifier.
    let start_stack = unsafe { kernel_word(mm as *const u8, offsets.mm_start_stack) };
    if start_stack < low || start_stack >= high {
        // Not in this part of this stack: another mapping, or past the window.
        return high;
    }
    (start_stack | (PAGE as u64 - 1)).saturating_add(1).min(high)
}

/// Learned chains are walked on x86_64 only (`learned_chain`): no copy elsewhere.
#[cfg(not(bpf_target_arch = "x86_64"))]
#[inline(always)]
pub fn start_stack_copy(_regs: &SavedRegs, _window: u32, _tgid: u32) -> bool {
    false
}

/// The stack a walk may read, `[low, high)`, as `start_stack_copy` kept it.
#[cfg_attr(not(bpf_target_arch = "x86_64"), allow(dead_code))]
#[derive(Clone, Copy)]
struct StackBounds {
    low: u64,
    high: u64,
}

/// The calling thread's stack word at `at` from the learned walk's copy, copied there first as
/// the walk would (`read_word`), once `start_stack_copy` started it for this call: None
/// outside the part the walk may read or where the copy fails. For the Python walk's one read
/// of the C stack (python.rs, `walk_python`: 3.11 and 3.12 keep the running `_PyCFrame` among
/// `_PyEval_EvalFrameDefault`'s locals), whose page the walk that follows would copy anyway on
/// its way to the chain's outer frames: one user read fewer, and none when the copy ahead
/// (`start_from_hint`) holds the word already.
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
pub fn stack_word(at: u64) -> Option<u64> {
    let (Some(slot), Some(copy)) = (CHAIN_WALK.get_ptr_mut(0), CHAIN_STACK.get_ptr_mut(0)) else {
        return None;
    };
    // SAFETY: the per-CPU slots, which no other program uses while this one runs on this CPU.
    read_word(started_bounds(slot), unsafe { &raw mut (*slot).copied }, unsafe { &mut *copy }, at)
}

/// What `start_stack_copy` kept in the walk's slot for this call.
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
fn started_bounds(slot: *const ChainWalk) -> StackBounds {
    // SAFETY: the per-CPU slot, which no other program uses while this one runs on this CPU
    // (volatile: `ChainWalk` says why).
    unsafe {
        StackBounds {
            low: read_volatile(&raw const (*slot).walk.low),
            high: read_volatile(&raw const (*slot).walk.high),
        }
    }
}

#[cfg(not(bpf_target_arch = "x86_64"))]
#[inline(always)]
pub fn stack_word(_at: u64) -> Option<u64> {
    None
}

/// Whether `at` lies in the part of the calling thread's stack `start_stack_copy` kept for this
/// call, from sp up to the walk's window and within the mapping that holds sp: the caller's own
/// stack, in use by its frames (or by frames on a stack the thread switched to, such as a
/// signal's alternate stack, within that mapping). False when the mapping was not found.
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
pub fn on_walked_stack(at: u64) -> bool {
    let Some(slot) = CHAIN_WALK.get_ptr_mut(0) else { return false };
    let StackBounds { low, high } = started_bounds(slot);
    // SAFETY: the per-CPU slot (volatile: `ChainWalk` says why).
    let found = unsafe { read_volatile(&raw const (*slot).mapping_found) } != 0;
    found && low <= at && at < high
}

#[cfg(not(bpf_target_arch = "x86_64"))]
#[inline(always)]
pub fn on_walked_stack(_at: u64) -> bool {
    false
}

/// Walk the calling thread's user call chain with the rules userspace learned for this process
/// image (a taught chain's of `CHAIN_RULES` while the walk follows it, else `FRAME_RULES`'),
/// into `chain`, over the part of the stack `start_stack_copy` kept for this call (and from
/// what the Python walk copied of it); true when every frame had a rule and the chain ended as
/// userspace's unwinder ends it, with `chain_flags::CACHED` when every rule past the first came
/// from the taught chain. Then `chain` holds what userspace would have unwound from the
/// stack window, exactly: each step depends only on the frame's address and registers
/// (helios-trace/src/resolve/chains.rs `step`, the same rules over a window, says so and is
/// tested against the unwinder), and every read lies inside the window `capture_user_stack`
/// would have copied: below `sp + window` and the end of the stack's mapping, and with every
/// page from sp's up to the highest word read present (the copy keeps the readable prefix
/// that ends on a page boundary). Anything else (a frame without a rule, a read outside that
/// window or that fails, a chain deeper than MAX_CHAIN_FRAMES, a step the unwinder would
/// refuse) is false: the caller sends the window.
///
/// The first frame with the rule its hint gives (`first_frame_hint`, which `start_from_hint`
/// looked up when the copy started, `started_hint`), when the chain taught
/// through the caller that rule finds gives the frame the same rule (`confirmed_chain`), else
/// with its `FRAME_RULES` rule; then, when userspace taught the chain through the first two
/// addresses, the frames it gives rules for while their addresses agree, in a
/// loop of at most 31 frames that only goes on or stops; then the rest with their
/// `FRAME_RULES` rules, a frame per call of a `bpf_loop` callback, which the verifier checks
/// once, for all depths. As one loop of 64 frames that took a frame's rule from the taught
/// chain or else from `FRAME_RULES`, the walk was checked again at every depth for every depth
/// at which it could have left the taught chain: ~550,000 instructions verified, most of a
/// startup of ~0.85 s (BENCHMARKS.md, "The walk's rest as bpf_loop callbacks").
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
pub fn learned_chain(chain: &mut LearnedChain, regs: &SavedRegs, tgid: u32) -> bool {
    chain.depth = 0;
    chain.flags = 0;
    let Some(slot) = CHAIN_WALK.get_ptr_mut(0) else { return false };
    let StackBounds { low, high } = started_bounds(slot);
    // SAFETY: the per-CPU slot (volatile: `ChainWalk` says why); `start_from_hint` kept it.
    let exec_ns = unsafe { read_volatile(&raw const (*slot).walk.exec_ns) };
    // The walk's state in registers (and this stack) until the loop: kept in the map from the
    // first frame, it cost ~100 ns per CPython open+close (BENCHMARKS.md, "The taught walk in
    // registers, the stack copied by the page"). The addresses and registers are unknown to the
    // verifier either way, read from the stack; the depth it knows is the taught loop's count.
    let mut walk = Walk {
        pc: regs[arch::IP],
        sp: low,
        bp: regs[arch::BP],
        low,
        high,
        exec_ns,
        tgid,
        depth: 0,
        outcome: WALKING,
        reserved: 0,
    };
    // `slot` stays a raw pointer, never a `&mut` held across `bpf_loop`: the callback writes it
    // through a pointer of its own, which a `&mut` would let the compiler assume cannot happen.
    // So it is written before the loop, and read after it, volatile.
    // SAFETY: a per-CPU slot: no other program uses it while this one runs on this CPU. The
    // copy goes on from what `start_stack_copy` copied ahead and the Python walk may have copied.
    let copied = unsafe { &raw mut (*slot).copied };
    let Some(copy) = CHAIN_STACK.get_ptr_mut(0) else { return false };
    {
        // SAFETY: the per-CPU slot, a `&mut` of it only in this block, where no loop runs.
        let copy = unsafe { &mut *copy };
        let key = FrameRuleKey { tgid, first: 1, exec_ns, address: regs[arch::IP] };
        let mut chain_key = ChainKey { tgid, reserved: 0, exec_ns, pc: regs[arch::IP], caller: 0 };
        let mut taught = None;
        // The walk stands after a first step with the `FRAME_RULES` rule, whose chain was
        // looked up: the hint's rule was the same, and no chain confirmed it.
        let mut stepped = false;
        if let Some(hint) = started_hint(slot) {
            if step(&mut walk, copied, copy, chain, Some(hint)) == 0 {
                chain_key.caller = walk.pc;
                taught = confirmed_chain(&chain_key, hint);
                if taught.is_some() {
                    count(counter::FIRST_RULE_FROM_HINT);
                } else {
                    stepped = unsafe { FRAME_RULES.get(&key) }.is_some_and(|rule| *rule == hint);
                }
            }
        }
        if taught.is_none() && !stepped {
            // Back to the first frame, for its step with its `FRAME_RULES` rule.
            walk.pc = regs[arch::IP];
            walk.sp = low;
            walk.bp = regs[arch::BP];
            walk.depth = 0;
            walk.outcome = WALKING;
            let rule = unsafe { FRAME_RULES.get(&key) }.copied();
            if step(&mut walk, copied, copy, chain, rule) != 0 {
                return finished(walk.outcome, walk.depth, chain, false);
            }
            chain_key.caller = walk.pc;
            taught = unsafe { CHAIN_RULES.get(&chain_key) }.and_then(|known| still_taught(known, &chain_key));
        }
        if let Some((known, generation)) = taught {
            for _ in 1..MAX_CACHED_CHAIN_FRAMES {
                let Some(rule) = taught_rule(known, generation, walk.depth as usize, walk.pc) else { break };
                if step(&mut walk, copied, copy, chain, Some(rule)) != 0 {
                    return finished(walk.outcome, walk.depth, chain, true);
                }
            }
        }
    }
    // SAFETY: as above; field by field, as the eBPF build's `memcpy` is a loop of byte copies
    // (`reserved` is never read).
    unsafe {
        let to = &raw mut (*slot).walk;
        write_volatile(&raw mut (*to).pc, walk.pc);
        write_volatile(&raw mut (*to).sp, walk.sp);
        write_volatile(&raw mut (*to).bp, walk.bp);
        write_volatile(&raw mut (*to).low, walk.low);
        write_volatile(&raw mut (*to).high, walk.high);
        write_volatile(&raw mut (*to).exec_ns, exec_ns);
        write_volatile(&raw mut (*to).tgid, tgid);
        write_volatile(&raw mut (*to).depth, walk.depth);
        write_volatile(&raw mut (*to).outcome, WALKING);
    }
    // The record's chain, through a pointer: the `bpf_loop` context is this pointer's address on
    // this stack, which the verifier follows (a pointer stored in a map it would not).
    let mut chain: *mut LearnedChain = chain;
    // From depth 1 or more, 64 steps reach frame 64, which has no slot: the walk ends there.
    // SAFETY: `chain` outlives the loop; the callback writes only through it.
    unsafe { bpf_loop(MAX_CHAIN_FRAMES as u32, rule_step as *mut c_void, (&raw mut chain).cast(), 0) };
    // SAFETY: as above; what the callback left there.
    let (outcome, depth) = unsafe {
        (read_volatile(&raw const (*slot).walk.outcome), read_volatile(&raw const (*slot).walk.depth))
    };
    finished(outcome, depth, chain, false)
}

/// The walk's answer once it stopped: true when the chain ended, with its `depth` and, when
/// every rule past the first came from the taught chain (`cached`), `chain_flags::CACHED` set.
/// A chain deeper than MAX_CHAIN_FRAMES ends `FAILED` (`frame` finds no slot for frame 64); a
/// walk still `WALKING` is one whose callback did not find its map slots (or whose `bpf_loop`
/// failed).
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
fn finished(outcome: u32, depth: u32, chain: *mut LearnedChain, cached: bool) -> bool {
    if outcome != ENDED {
        return false;
    }
    // SAFETY: the record's chain, which no callback writes any more.
    let chain = unsafe { &mut *chain };
    chain.depth = depth;
    if cached {
        chain.flags |= chain_flags::CACHED;
    }
    true
}

/// A caller's frame of the walk with its `FRAME_RULES` rule (`step`), looked up by its return
/// address (`first` 0: userspace keys it one byte before).
#[cfg(bpf_target_arch = "x86_64")]
#[inline(never)]
unsafe extern "C" fn rule_step(_index: u64, chain: *mut c_void) -> i64 {
    let (Some(slot), Some(copy)) = (CHAIN_WALK.get_ptr_mut(0), CHAIN_STACK.get_ptr_mut(0)) else {
        return 1;
    };
    // SAFETY: the per-CPU slots learned_chain is using (nothing else uses them on this CPU
    // while it runs), and the record's chain pointer it passed.
    let (walk, copied, copy, chain) = unsafe {
        (&mut (*slot).walk, &raw mut (*slot).copied, &mut *copy, *(chain as *const *mut LearnedChain))
    };
    if walk.depth as usize >= MAX_CHAIN_FRAMES {
        // Deeper than a chain record holds: no lookup for a frame that would not be kept.
        walk.outcome = FAILED;
        return 1;
    }
    let key = FrameRuleKey { tgid: walk.tgid, first: 0, exec_ns: walk.exec_ns, address: walk.pc };
    let rule = unsafe { FRAME_RULES.get(&key) }.copied();
    step(walk, copied, copy, chain, rule)
}

/// Walk frame `walk.depth` with `rule`: its address recorded, and the walk moved to its caller
/// (0: go on) or its outcome set (1: stop).
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
fn step(
    walk: &mut Walk,
    copied: *mut u64,
    copy: &mut StackCopy,
    chain: *mut LearnedChain,
    rule: Option<FrameRule>,
) -> i64 {
    match frame(walk, copied, copy, chain, rule) {
        Some(Step::Caller) => {
            walk.depth += 1;
            0
        }
        Some(Step::End) => {
            walk.depth += 1;
            walk.outcome = ENDED;
            1
        }
        None => {
            walk.outcome = FAILED;
            1
        }
    }
}

/// Where a frame of the walk left it.
#[cfg(bpf_target_arch = "x86_64")]
enum Step {
    /// At the caller's frame, in `pc`, `sp` and `bp`.
    Caller,
    /// The chain ends with this frame.
    End,
}

/// Frame `walk.depth` with `rule`; None when it cannot be walked (`learned_chain`).
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
fn frame(
    walk: &mut Walk,
    copied: *mut u64,
    copy: &mut StackCopy,
    chain: *mut LearnedChain,
    rule: Option<FrameRule>,
) -> Option<Step> {
    let (pc, sp, bp) = (walk.pc, walk.sp, walk.bp);
    // SAFETY: the record's chain, which nothing else writes while the walk runs.
    let chain = unsafe { &mut *chain };
    *chain.addresses.get_mut(walk.depth as usize)? = pc;
    let rule = rule?;
    if rule.flags & frame_rule::END != 0 {
        return Some(Step::End);
    }
    let from_bp = rule.flags & frame_rule::CFA_FROM_BP != 0;
    let base = if from_bp { bp } else { sp };
    if from_bp && bp == 0 {
        // A zero frame pointer ends a frame-pointer chain.
        return Some(Step::End);
    }
    let cfa = base.wrapping_add(rule.cfa_offset as i64 as u64);
    if from_bp && cfa <= sp {
        return None;
    }
    let mut caller_bp = bp;
    if rule.flags & frame_rule::BP_SAVED != 0 {
        caller_bp = read_word(walk.bounds(), copied, copy, base.wrapping_add(rule.bp_offset as i64 as u64))?;
    }
    let return_address = read_word(walk.bounds(), copied, copy, cfa.wrapping_sub(8))?;
    if return_address == 0 {
        return Some(Step::End);
    }
    if cfa == sp && return_address == pc {
        return None;
    }
    walk.pc = return_address;
    walk.sp = cfa;
    walk.bp = caller_bp;
    Some(Step::Caller)
}

/// The stack's word at `at`, from `CHAIN_STACK`, copied there first when the walk has not
/// copied that far: from the end of the last copy up to the `CHAIN_CHUNK` boundary past the
/// word (or `high`). Mostly one read for a shallow chain, one or two for a deep one (a CPython
/// chain climbs ~3 KiB), where a read per word cost ~0.7 µs per call (BENCHMARKS.md, "Reads in
/// bulk"). What was copied is `[low, low + copied)`, contiguous: every byte from sp up to the
/// highest word read was read, so every page the window copy needs is present (it keeps the
/// readable prefix that ends on a page boundary), and no page past them was touched
/// (CHAIN_CHUNK): a copy fails only where the word-by-word walk would have failed, or that
/// check. What the chains taught through the first frame read may have been copied first
/// (`copy_ahead`, from `start_from_hint`), then the Python walk's word (`stack_word`) in the
/// same way, and what a first step with a hint's rule that no chain confirmed read
/// (`confirmed_chain`): the copy is still contiguous from sp within the same `[low, high)`, and
/// one that fails leaves `copied` as it was, so the walk reads the same words and fails where it
/// would have.
/// None outside `[low, high)` or when the copy fails.
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
fn read_word(bounds: StackBounds, copied: *mut u64, copy: &mut StackCopy, at: u64) -> Option<u64> {
    let StackBounds { low, high } = bounds;
    if at < low || at > high.saturating_sub(8) {
        return None;
    }
    let offset = at - low;
    // SAFETY: `ChainWalk::copied` of the per-CPU slot (volatile: `ChainWalk` says why).
    let was = unsafe { read_volatile(copied) };
    if offset + 8 > was {
        let boundary = at.checked_add(8 + CHAIN_CHUNK - 1)? & !(CHAIN_CHUNK - 1);
        let chunk_end = boundary.min(high) - low;
        if !copy_stack(copy, low, was, chunk_end) {
            return None;
        }
        // SAFETY: as above.
        unsafe { write_volatile(copied, chunk_end) };
    }
    word_at(copy, offset as usize)
}

/// What a first frame's hint says (`FirstFrameHint`), read from its slot.
#[cfg(bpf_target_arch = "x86_64")]
struct Hinted {
    rule: FrameRule,
    stack_bytes: u64,
}

/// The hint in `FIRST_FRAME_HINTS` for the first frame of `first`'s key, when the slot holds
/// that key. Written in place by userspace: a read may be torn or another frame's
/// (`FirstFrameHint`), which its users make harmless (`copy_ahead`, `confirmed_chain`).
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
fn first_frame_hint(first: &FrameRuleKey) -> Option<Hinted> {
    let hint = FIRST_FRAME_HINTS.get(first_frame_hint_slot(first))?;
    // SAFETY: fields of the map value; volatile, each read once, in this order.
    unsafe {
        if read_volatile(&hint.first.address) != first.address
            || read_volatile(&hint.first.exec_ns) != first.exec_ns
            || read_volatile(&hint.first.tgid) != first.tgid
        {
            return None;
        }
        Some(Hinted {
            rule: FrameRule {
                flags: read_volatile(&hint.rule.flags),
                cfa_offset: read_volatile(&hint.rule.cfa_offset),
                bp_offset: read_volatile(&hint.rule.bp_offset),
                reserved: 0,
            },
            stack_bytes: read_volatile(&hint.stack_bytes) as u64,
        })
    }
}

/// The chain taught under `key` (`still_taught`), when it gives its first frame `hinted`, the
/// rule the walk took the first step with to find `key.caller`. Then that step is the one the
/// chain's own rule makes, which is the rule userspace found for that frame: it teaches the
/// chain's rules, the `FRAME_RULES` rule and the hint's from the same rule of (module, pc)
/// (helios-trace/src/resolve/stacks.rs, `learn`), and `taught_rule` confirms the frame's
/// address and the teaching's generation. So the chain walked is the one the window unwinds,
/// as with the `FRAME_RULES` rule (which the chain's stands in for where that one's insert
/// failed, the map full). A torn hint's rule (another frame's fails the key check) finds no
/// chain, or one that gives another rule: None. The step it took read words of the stack, copied contiguously from sp
/// as `read_word` copies, which changes no word read later, and the walk takes the first step
/// again with the `FRAME_RULES` rule, unless that is the same rule. So a call through a taught
/// chain looks up one hash map element instead of two (BENCHMARKS.md, "The first frame's rule
/// from its hint").
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
fn confirmed_chain(key: &ChainKey, hinted: FrameRule) -> Option<(&'static ChainRules, u64)> {
    let (known, generation) = unsafe { CHAIN_RULES.get(key) }.and_then(|known| still_taught(known, key))?;
    (taught_rule(known, generation, 0, key.pc)? == hinted).then_some((known, generation))
}

/// Copy, in one read before the walk's first step, `bytes` of the stack from sp: as much as the
/// chains taught through this first frame read (its hint's, the least of them, from
/// userspace's replay of their steps: helios-trace/src/resolve/stacks.rs, `narrowest_extent`),
/// at the call's start (`start_from_hint`), before the Python walk's word (`stack_word`), which
/// a CPython chain's copy holds. By the page as the walk climbs
/// (`read_word`), a shallow C chain's first read went to the end of sp's page, up to 4 KiB it
/// did not need, and one that crossed the page took a second (BENCHMARKS.md, "The stack copied
/// ahead, as far as the shallowest chain reads").
///
/// Exact as `read_word` is, whatever the hint says (it may be another frame's, or torn:
/// `FirstFrameHint`): what is copied is still `[low, low + copied)`, contiguous from sp, within
/// `[low, ahead_high)` and so within the walk's bounds; a read that fails (a page in it not
/// present, past what this call's chain needs) copies nothing and leaves the walk to copy by
/// the page, as it did. A page copied here that this call's chain does not need is one the
/// walk never reads a word of. A chain shallower than every one taught through its first
/// frame (a new one, until userspace learns it), or one that reads another frame's hint,
/// copies more than it needs; on a main thread's stack no further than the page of `argc`
/// (`ahead_high`), past which lies the gap a read would fault in.
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
fn copy_ahead(slot: *mut ChainWalk, bounds: StackBounds, copied: *mut u64, copy: &mut StackCopy, bytes: u64) {
    // SAFETY: the per-CPU slot (volatile: `ChainWalk` says why).
    let mapping_found = unsafe { read_volatile(&raw const (*slot).mapping_found) };
    // Without the mapping's end, `high` is sp plus the window, which may reach past the stack.
    if mapping_found == 0 {
        return;
    }
    let StackBounds { low, high } = bounds;
    let want = bytes.min(ahead_high(low, high).saturating_sub(low));
    // SAFETY: `ChainWalk::copied` of the per-CPU slot (volatile: `ChainWalk` says why).
    let was = unsafe { read_volatile(copied) };
    if want <= was {
        return;
    }
    if copy_stack(copy, low, was, want) {
        // SAFETY: as above.
        unsafe { write_volatile(copied, want) };
        count(counter::STACKS_COPIED_AHEAD);
    } else {
        count(counter::STACK_COPIES_AHEAD_FAILED);
    }
}

/// Bytes that start 8-aligned wherever they are kept, so that a word at a multiple of 8 in them
/// is one load (`word_at`): the learned walk's copy of the stack (`CHAIN_STACK`) and the Python
/// walk's window (python.rs, `FrameWalk`). (As map values they are 8-aligned anyway: the kernel
/// allocates each CPU's value so, kernel/bpf/arraymap.c, `bpf_array_alloc_percpu`; the type
/// says it to the compiler.)
#[repr(C, align(8))]
pub struct AlignedBytes<const N: usize>(pub [u8; N]);

/// The learned walk's copy of the stack, `CHAIN_STACK`'s value.
pub type StackCopy = AlignedBytes<{ 2 * MAX_STACK_WINDOW as usize }>;

/// The little-endian u64 at `offset` of `bytes`, None past their end: one 8-byte load where
/// `offset` is a multiple of 8, as a stack's words are from an 8-aligned sp and CPython's fields
/// in python.rs's windows, else eight byte loads. From a byte slice (`u64::from_le_bytes`,
/// `read_unaligned`) it is always eight loads, seven shifts and seven ors: LLVM's BPF backend
/// splits a load it cannot prove aligned, and the walks read one to three such words per frame
/// (BENCHMARKS.md, "Words read whole").
#[inline(always)]
pub fn word_at<const N: usize>(bytes: &AlignedBytes<N>, offset: usize) -> Option<u64> {
    if N < 8 || offset > N - 8 {
        return None;
    }
    if offset % 8 == 0 {
        // SAFETY: within `bytes` (above), and 8-aligned: `AlignedBytes` is, and so is `offset`.
        return Some(u64::from_le(unsafe { bytes.0.as_ptr().add(offset).cast::<u64>().read() }));
    }
    let word = bytes.0.get(offset..offset + 8)?;
    Some(u64::from_le_bytes([word[0], word[1], word[2], word[3], word[4], word[5], word[6], word[7]]))
}

/// A taught chain just looked up by `key`, with its generation, if it is still that key's: the
/// generation read first, then the key the value holds (an element reused between the lookup
/// and the generation's read holds another), which every `taught_rule` confirms by reading the
/// generation again after it. The kernel's hash maps reuse a freed element at once
/// (kernel/bpf/memalloc.c), so an entry userspace takes back or replaces while a walk holds it
/// may hold another chain by then.
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
fn still_taught<'a>(known: &'a ChainRules, key: &ChainKey) -> Option<(&'a ChainRules, u64)> {
    // SAFETY: fields of a map value; volatile, so that the compiler keeps this order.
    unsafe {
        let generation = read_volatile(&known.generation);
        let same = read_volatile(&known.key.tgid) == key.tgid
            && read_volatile(&known.key.exec_ns) == key.exec_ns
            && read_volatile(&known.key.pc) == key.pc
            && read_volatile(&known.key.caller) == key.caller;
        same.then_some((known, generation))
    }
}

/// The rule a taught chain gives frame `depth`, where it has the walked address `pc`, and while
/// it is still the teaching of `generation` (`still_taught`): the generation, read after the
/// frame's fields, tells. Volatile, so that the compiler keeps the reads in that order and
/// reads each again; x86 keeps loads in order with loads.
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
fn taught_rule(known: &ChainRules, generation: u64, depth: usize, pc: u64) -> Option<FrameRule> {
    // SAFETY: fields of a map value the verifier bounds; `get` keeps the index in the arrays.
    unsafe {
        if depth >= read_volatile(&known.depth) as usize {
            return None;
        }
        let address = read_volatile(known.addresses.get(depth)?);
        let taught = known.rules.get(depth)?;
        let rule = FrameRule {
            flags: read_volatile(&taught.flags),
            cfa_offset: read_volatile(&taught.cfa_offset),
            bp_offset: read_volatile(&taught.bp_offset),
            reserved: 0,
        };
        (address == pc && read_volatile(&known.generation) == generation).then_some(rule)
    }
}

/// The boundaries a learned chain's walk copies the stack up to (`learned_chain`). It divides
/// the page size, so a chunk never reaches into a page past the one that holds the last byte of
/// the word wanted. The page itself: each `bpf_probe_read_user` pays a fixed price besides its
/// bytes (this kernel's hardened usercopy check among it), and a CPython chain's walk costs
/// ~140 ns less than in chunks of 1 KiB, a shallow C chain's no more that shows (BENCHMARKS.md,
/// "The taught walk in registers, the stack copied by the page").
const CHAIN_CHUNK: u64 = PAGE as u64;
const _: () = assert!(CHAIN_CHUNK.is_power_of_two() && PAGE as u64 % CHAIN_CHUNK == 0);

/// Copy the user stack's `[low + from, low + to)` into `copy[from..to]`; false when the read
/// fails (a page not present: the window copy would have ended there too) or the bounds are
/// not a window's.
#[inline(always)]
fn copy_stack(copy: &mut StackCopy, low: u64, from: u64, to: u64) -> bool {
    if from >= MAX_STACK_WINDOW as u64 || to <= from || to - from > MAX_STACK_WINDOW as u64 {
        return false;
    }
    let size = (to - from) as u32;
    let at = copy.0.as_mut_ptr().wrapping_add(from as usize);
    unsafe { raw_read_user(at.cast(), size, (low + from) as *const c_void) == 0 }
}

/// Rules are learned for x86_64's registers only: elsewhere every call sends its window.
#[cfg(not(bpf_target_arch = "x86_64"))]
#[inline(always)]
pub fn learned_chain(chain: &mut LearnedChain, _regs: &SavedRegs, _tgid: u32) -> bool {
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
