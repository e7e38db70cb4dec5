//! Opens matched with their closes in the kernel (ARCHITECTURE.md, "Kernel side"): a process's
//! last pairable call (`spec::PAIRABLE`, its chain walked to the end) is kept in its `PAIRS`
//! slot instead of sent; when its close comes before anything else of the process is recorded,
//! the pair is counted there and neither call is sent; the next call exactly like the kept one
//! (but for its number and time) is kept again without a copy. What a slot keeps is sent as
//! one record (`chain_flags::PAIRED`: the count, then the open still kept, if any) before any
//! other record of its process, so userspace sees every process's calls in the order they
//! came; and when the tracer closes `PAIRS_FLUSH_FD`, before it takes every record made before a
//! moment (helios-trace/src/sys/ring.rs, `Ring::take`) and every few looks at the ring.
//!
//! A slot is one process's at a time, by its tgid; a process whose slot another holds with
//! something kept sends its calls as before. Every field but `state` changes only while a
//! program holds the slot busy, taken by a compare-and-swap from the state it read, whose
//! sequence moves on at every release: so what a holder read before its take is what it
//! changes (no ABA). The order of records rests on one rule: **whoever takes a slot to send
//! what it keeps reserved its record before the take.** A program that finds the slot busy
//! sends its own record at once; that record is reserved after the take it saw, so after the
//! holder's, or the holder only changed what needs no order: a pair counted (a pair is applied
//! at a number no descriptor has, helios-trace/src/observe/engine.rs `handle_pairs`), or a
//! call of its own kept, as concurrent with this one as two calls of two threads always are.
//!
//! The close's side reads whether its number is taken again before its take (`close_matched`):
//! another thread's open that got the number records after its install, and that record
//! sends what is kept first, which moves the sequence on and fails this take, or it comes after
//! the take and sends this pair first.
use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_cxchg},
    mem::size_of,
    ptr::{read_volatile, write_volatile},
};

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::generated::{bpf_loop, bpf_probe_read_kernel},
};
use helios_trace_common::{
    ChainRecord, MAX_CHAIN_FRAMES, PAIR_SLOTS, PATH_LEN, PairSlot, chain_flags, counter, learned_chains,
    pair_state, stack_mode,
};

use crate::{
    emit::{count, count_many, wakeup_flags},
    maps::{EVENTS, PAIRS},
    settings::{kernel_offsets, learned_chains, user_stack_mode},
};

/// `PairSlot::open_fd` when no open is kept.
const NO_FD: i32 = -1;

/// Whether calls are kept at all: with learned chains (`--stacks dwarf`, `--learned-chains
/// on`: not in shadow mode, where every chain goes with its window) and where a close can tell
/// whether its number was taken again (the descriptor tables' offsets, from the kernel's BTF:
/// syscalls.rs `number_taken`), which matching needs. Loads of the frozen settings: elsewhere
/// the verifier prunes this module's code away.
#[inline(always)]
pub fn keeping() -> bool {
    user_stack_mode() == stack_mode::DWARF
        && learned_chains() == learned_chains::ON
        && kernel_offsets().fd_slots()
}

/// The slot of process `tgid`; none when calls are not kept.
#[inline(always)]
fn slot_of(tgid: u32) -> Option<*mut PairSlot> {
    if !keeping() {
        return None;
    }
    PAIRS.get_ptr_mut(tgid % PAIR_SLOTS)
}

/// Take `slot` busy, from the state `seen` read before: false when it changed since.
///
/// # Safety
/// `slot` is a `PAIRS` value.
#[inline(always)]
unsafe fn take(slot: *mut PairSlot, seen: u64) -> bool {
    let state = unsafe { &raw mut (*slot).state };
    unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            state,
            seen,
            seen | pair_state::BUSY,
        )
    }
    .1
}

/// Leave `slot`, taken from `seen`, to `tgid`, its sequence moved on. A plain store: on x86_64,
/// the only architecture whose calls are kept (their chains are walked there only: stacks.rs,
/// `learned_chain`), a store is a release, ordered after the slot's writes before it. (An
/// exchange here and loops in `same_call` that ran to their bounds cost 150 ns of the pair's
/// kernel time together: BENCHMARKS.md, "Opens matched with their closes in the kernel".)
///
/// # Safety
/// As `take`'s; the caller holds the slot.
#[inline(always)]
unsafe fn release(slot: *mut PairSlot, tgid: u32, seen: u64) {
    unsafe { write_volatile(&raw mut (*slot).state, pair_state::released(tgid, seen)) };
}

/// Whether the slot keeps something not yet sent. Read before a take, it may be stale; the
/// take, from the same state, confirms it.
///
/// # Safety
/// As `take`'s.
#[inline(always)]
unsafe fn keeps(slot: *const PairSlot) -> bool {
    unsafe {
        read_volatile(&raw const (*slot).pairs) != 0 || read_volatile(&raw const (*slot).open_fd) != NO_FD
    }
}

/// Copy the slot's record into `to`, a reserved `ChainRecord`, as what it keeps: its pairs,
/// then its open, and empty the slot.
///
/// # Safety
/// As `take`'s, the slot held; `to` is a `ChainRecord` of the ring.
#[inline(always)]
unsafe fn move_kept(slot: *mut PairSlot, to: *mut ChainRecord) {
    unsafe {
        bpf_probe_read_kernel(
            to.cast(),
            size_of::<ChainRecord>() as u32,
            (&raw const (*slot).record).cast::<c_void>(),
        );
        let pairs = read_volatile(&raw const (*slot).pairs);
        let open_fd = read_volatile(&raw const (*slot).open_fd);
        let mut flags = read_volatile(&raw const (*to).chain.flags);
        if pairs != 0 {
            flags |= chain_flags::PAIRED;
            write_volatile(&raw mut (*to).event.header.reserved, pairs);
            if read_volatile(&raw const (*slot).pair_fds_differ) == 0 {
                flags |= chain_flags::PAIRS_AT_ONE_FD;
                write_volatile(&raw mut (*to).event.aux_fds[0], read_volatile(&raw const (*slot).pair_fd));
            }
        }
        if open_fd == NO_FD {
            flags |= chain_flags::PAIRS_ONLY;
        } else {
            write_volatile(&raw mut (*to).event.ret, i64::from(open_fd));
            write_volatile(&raw mut (*to).event.header.ts_ns, read_volatile(&raw const (*slot).open_ts_ns));
        }
        write_volatile(&raw mut (*to).chain.flags, flags);
        write_volatile(&raw mut (*slot).pairs, 0);
        write_volatile(&raw mut (*slot).pair_fds_differ, 0);
        write_volatile(&raw mut (*slot).open_fd, NO_FD);
    }
}

/// Send what `slot` keeps, if anything, before a record of its owner `tgid`: reserved before
/// the take (the module's rule). A slot busy, or no longer `tgid`'s, needs nothing from this
/// record (the module's doc). Two tries; a record whose kept calls could not be sent ahead
/// of it is counted (`counter::PAIRS_OUT_OF_ORDER`).
///
/// `wake`: the record's submit may wake the reader (`wakeup_flags`), as a traced call's; not
/// when the tracer asked, whose reader looks at the ring right after.
///
/// # Safety
/// As `take`'s.
#[inline(always)]
unsafe fn send_slot(slot: *mut PairSlot, tgid: u32, wake: bool) {
    // A traced call's record tries twice, and a busy slot needs nothing from it (the module's
    // doc); the tracer asks for everything kept before a moment, so it waits out a holder,
    // which keeps a slot for a few tens of ns, and a take cut short, up to 16 times.
    let tries = if wake { 2 } else { 16 };
    for attempt in 0..16 {
        if attempt >= tries {
            break;
        }
        let seen = unsafe { read_volatile(&raw const (*slot).state) };
        if seen & pair_state::BUSY != 0 && !wake {
            continue;
        }
        if seen == 0
            || seen & pair_state::BUSY != 0
            || pair_state::owner(seen) != tgid
            || !unsafe { keeps(slot) }
        {
            return;
        }
        let Some(mut entry) = EVENTS.reserve::<ChainRecord>(0) else {
            // Lost, and counted, as their own records would have been: the slot emptied, so
            // that nothing of it comes after the record that follows.
            if unsafe { take(slot, seen) } {
                let pairs = unsafe { read_volatile(&raw const (*slot).pairs) };
                let open = unsafe { read_volatile(&raw const (*slot).open_fd) } != NO_FD;
                count_many(counter::RINGBUF_FULL, u64::from(pairs) * 2 + u64::from(open));
                unsafe {
                    write_volatile(&raw mut (*slot).pairs, 0);
                    write_volatile(&raw mut (*slot).pair_fds_differ, 0);
                    write_volatile(&raw mut (*slot).open_fd, NO_FD);
                    release(slot, tgid, seen);
                }
            }
            return;
        };
        if !unsafe { take(slot, seen) } {
            entry.discard(BPF_RB_NO_WAKEUP as u64);
            continue;
        }
        unsafe {
            move_kept(slot, entry.as_mut_ptr());
            release(slot, tgid, seen);
        }
        entry.submit(if wake { wakeup_flags() } else { BPF_RB_NO_WAKEUP as u64 });
        return;
    }
    if wake {
        count(counter::PAIRS_OUT_OF_ORDER);
    }
}

/// Before any record of process `tgid` but the calls this module keeps: send what its slot
/// keeps. A function of its own: the exit program calls it from several places.
#[inline(never)]
pub fn send_kept(tgid: u32) {
    if let Some(slot) = slot_of(tgid) {
        // SAFETY: a `PAIRS` value.
        unsafe { send_slot(slot, tgid, true) };
    }
}

/// The tracer closed `PAIRS_FLUSH_FD`: send what every slot keeps.
#[inline(never)]
pub fn send_all_kept() {
    if !keeping() {
        return;
    }
    // SAFETY: the callback takes no context.
    unsafe { bpf_loop(PAIR_SLOTS, send_index as *mut c_void, core::ptr::null_mut(), 0) };
}

/// `send_all_kept`'s callback: slot `index`.
unsafe extern "C" fn send_index(index: u64, _context: *mut c_void) -> i64 {
    if let Some(slot) = PAIRS.get_ptr_mut(index as u32) {
        // SAFETY: a `PAIRS` value.
        let seen = unsafe { read_volatile(&raw const (*slot).state) };
        unsafe { send_slot(slot, pair_state::owner(seen), false) };
    }
    0
}

/// A pairable call's record, made in `scratch` (`PAIR_SCRATCH`), returned `fd`: kept in the
/// process's slot, or sent (what the slot kept first).
#[inline(never)]
pub fn keep_or_send(scratch: *const ChainRecord, tgid: u32, fd: i64, ts_ns: u64) {
    // SAFETY: `scratch` is this CPU's `PAIR_SCRATCH` value, written by the caller.
    if unsafe { keep(scratch, tgid, fd, ts_ns) } {
        return;
    }
    send_kept(tgid);
    // SAFETY: as above.
    if EVENTS.output::<ChainRecord>(unsafe { &*scratch }, wakeup_flags()).is_err() {
        count(counter::RINGBUF_FULL);
    }
}

/// Keep the call in `scratch` in the slot of `tgid`, what the slot kept sent first if anything:
/// with no copy of the record when it is like the slot's (`same_call`), its result and time
/// alone; else in place of the slot's record.
/// False when the slot is busy, another process's with something kept, or changed under
/// the take, or the ring has no room for what it keeps: the caller sends the call.
///
/// # Safety
/// `scratch` is a `ChainRecord` in a map value.
#[inline(always)]
unsafe fn keep(scratch: *const ChainRecord, tgid: u32, fd: i64, ts_ns: u64) -> bool {
    let Some(slot) = slot_of(tgid) else { return false };
    let seen = unsafe { read_volatile(&raw const (*slot).state) };
    if seen & pair_state::BUSY != 0 {
        return false;
    }
    let own = seen != 0 && pair_state::owner(seen) == tgid;
    let like = own && unsafe { same_call(&raw const (*slot).record, scratch) };
    let open_fd = unsafe { read_volatile(&raw const (*slot).open_fd) };
    if like && open_fd == NO_FD {
        if !unsafe { take(slot, seen) } {
            return false;
        }
        unsafe {
            write_volatile(&raw mut (*slot).open_fd, fd as i32);
            write_volatile(&raw mut (*slot).open_ts_ns, ts_ns);
            release(slot, tgid, seen);
        }
        return true;
    }
    if seen != 0 && unsafe { keeps(slot) } {
        if !own {
            // Another process's calls: it sends them itself.
            return false;
        }
        let Some(mut entry) = EVENTS.reserve::<ChainRecord>(0) else {
            return false;
        };
        if !unsafe { take(slot, seen) } {
            entry.discard(BPF_RB_NO_WAKEUP as u64);
            return false;
        }
        unsafe { move_kept(slot, entry.as_mut_ptr()) };
        entry.submit(wakeup_flags());
    } else if !unsafe { take(slot, seen) } {
        return false;
    }
    unsafe {
        // Like the record kept, but for its result and time: those alone are kept.
        if !like {
            bpf_probe_read_kernel(
                (&raw mut (*slot).record).cast(),
                size_of::<ChainRecord>() as u32,
                scratch.cast::<c_void>(),
            );
        }
        write_volatile(&raw mut (*slot).open_fd, fd as i32);
        write_volatile(&raw mut (*slot).open_ts_ns, ts_ns);
        release(slot, tgid, seen);
    }
    true
}

/// `close(fd)` of process `tgid` returned: when it closed the open the slot keeps, and its
/// number is free again (`number_free`, read before the take: the module's doc), the pair is
/// counted there, and true: nothing is sent.
#[inline(always)]
pub fn close_matched(tgid: u32, fd: u64, number_free: impl FnOnce() -> bool) -> bool {
    let Some(slot) = slot_of(tgid) else { return false };
    // SAFETY: a `PAIRS` value.
    let seen = unsafe { read_volatile(&raw const (*slot).state) };
    if seen == 0 || seen & pair_state::BUSY != 0 || pair_state::owner(seen) != tgid {
        return false;
    }
    let open_fd = unsafe { read_volatile(&raw const (*slot).open_fd) };
    if open_fd == NO_FD || open_fd as u64 != fd || !number_free() || !unsafe { take(slot, seen) } {
        return false;
    }
    unsafe {
        let pairs = read_volatile(&raw const (*slot).pairs);
        write_volatile(&raw mut (*slot).pairs, pairs.saturating_add(1));
        // Which number the pairs touched, when it is one (chain_flags::PAIRS_AT_ONE_FD).
        if pairs == 0 {
            write_volatile(&raw mut (*slot).pair_fd, open_fd);
        } else if read_volatile(&raw const (*slot).pair_fd) != open_fd {
            write_volatile(&raw mut (*slot).pair_fds_differ, 1);
        }
        // The pairs' record takes the last one's time.
        write_volatile(
            &raw mut (*slot).record.event.header.ts_ns,
            read_volatile(&raw const (*slot).open_ts_ns),
        );
        write_volatile(&raw mut (*slot).open_fd, NO_FD);
        release(slot, tgid, seen);
    }
    true
}

/// Whether two records are of the same call but for its result and time: everything
/// userspace makes of a record (its kind, site, detail) is then the same. The path up to its
/// length, the chain up to its depth: the rest of a per-CPU scratch is what an earlier call
/// left there.
///
/// The loops count down a volatile counter on the stack: a loop that ended at the path's
/// length or the chain's depth LLVM turns into a test of equality with one bound, which the
/// verifier cannot follow past it (it read on past the chain's 64 addresses); a counter in
/// memory stays what it is, and the verifier narrows its range at each test. Not every word to
/// its bound (32 of path, 64 addresses), masked: a chain is a few frames, a socket has no path
/// (see `release` for what the two cost).
///
/// # Safety
/// Both are `ChainRecord`s in map values.
#[inline(always)]
unsafe fn same_call(kept: *const ChainRecord, call: *const ChainRecord) -> bool {
    // SyscallEvent's words: header (kind and tgid, tid and reserved, ts_ns), nr and stack_id,
    // ret, args (6), deref, aux_fds (8), aux_count and path_len, flags and mode, path (32),
    // creator_pc. Compared: all but ts_ns (2), ret (4) and aux_fds; the path as far as its
    // length.
    const PATH_WORD: usize = 22;
    const PATH_WORDS: usize = PATH_LEN / 8;
    const CREATOR_WORD: usize = PATH_WORD + PATH_WORDS;
    const _: () = assert!((CREATOR_WORD + 1) * 8 == size_of::<helios_trace_common::SyscallEvent>());
    let (a, b) = (kept.cast::<u64>(), call.cast::<u64>());
    let differs = |i: usize| unsafe { read_volatile(a.add(i)) ^ read_volatile(b.add(i)) };
    // One word at a time, each tested at once: or-ed together, the volatile loads all came
    // first and were kept on the stack (328 bytes of it, over the verifier's 512 with the
    // exit program's).
    for i in [0, 1, 3, CREATOR_WORD] {
        if differs(i) != 0 {
            return false;
        }
    }
    // Not aux_fds (words 12 to 19): a call of one descriptor has none (aux_count, word 20, is
    // compared), and the scratch keeps what a pipe's or a recvmsg's record left there.
    for i in (5..12).chain(20..PATH_WORD) {
        if differs(i) != 0 {
            return false;
        }
    }
    // The path's words, the last masked to its length (little-endian: its low bytes).
    let path_len = unsafe { read_volatile(&raw const (*call).event.path_len) } as usize;
    let path_len = path_len.min(PATH_LEN);
    let mut left: usize = path_len.div_ceil(8);
    let mut word = 0usize;
    // SAFETY (the counters): locals of this frame.
    while unsafe { read_volatile(&raw const left) } > 0 {
        let i = word & (PATH_WORDS - 1);
        let bytes = path_len.saturating_sub(i * 8).min(8);
        let mask = if bytes == 8 { u64::MAX } else { (1u64 << (bytes * 8)) - 1 };
        if differs(PATH_WORD + i) & mask != 0 {
            return false;
        }
        word += 1;
        unsafe { write_volatile(&raw mut left, read_volatile(&raw const left) - 1) };
    }
    let (c, d) =
        unsafe { ((&raw const (*kept).chain).cast::<u64>(), (&raw const (*call).chain).cast::<u64>()) };
    // LearnedChain's words: depth and flags, then the addresses.
    if unsafe { read_volatile(c) != read_volatile(d) } {
        return false;
    }
    let depth = unsafe { read_volatile(&raw const (*call).chain.depth) } as usize;
    let mut left: usize = depth.min(MAX_CHAIN_FRAMES);
    let mut frame = 0usize;
    while unsafe { read_volatile(&raw const left) } > 0 {
        let i = 1 + (frame & (MAX_CHAIN_FRAMES - 1));
        if unsafe { read_volatile(c.add(i)) != read_volatile(d.add(i)) } {
            return false;
        }
        frame += 1;
        unsafe { write_volatile(&raw mut left, read_volatile(&raw const left) - 1) };
    }
    true
}
