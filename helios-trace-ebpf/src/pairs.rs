//! Opens matched with their closes in the kernel (ARCHITECTURE.md, "Kernel side"): a process's
//! last pairable calls (`spec::PAIRABLE`, their chains walked to the end) are kept in its group
//! of `PAIRS` slots, one call a slot (`PAIR_WAYS` of them), instead of sent; when a kept call's
//! close comes before anything else of the process is recorded, the pair is counted in its
//! slot and neither call is sent; the next call exactly like a slot's (but for its number and
//! time) is kept again there without a copy. Several slots because a server holds its
//! connections' descriptors while it opens a file for one and closes both (nginx: accept, open,
//! close, close): in one slot each call sent the other out, and with a few clients at once a
//! group of two was always full (BENCHMARKS.md, "Four slots a process"). What a slot keeps is
//! sent as one record (`chain_flags::PAIRED`: the count, then the open still kept, if any)
//! before any other record of its process, so userspace sees what every process did to a number in the order it was
//! done; and when the tracer closes `PAIRS_FLUSH_FD`, before it takes every record made before
//! a moment (helios-trace/src/sys/ring.rs, `Ring::take`) and at the ring's looks at most every
//! 100 ms (`KEPT_SEND_INTERVAL`).
//!
//! A group is one process's at a time, by its tgid; a slot another process holds with
//! something kept is not taken over, and a process that finds no slot of its group free sends
//! its calls as before. Every field of a slot but `state` changes only while a program holds
//! the slot busy, taken by a compare-and-swap from the state it read, whose sequence moves on
//! at every release: so what a holder read before its take is what it changes (no ABA). The
//! order of records rests on one rule: **whoever takes a slot to send what it keeps reserved
//! its record before the take.** A program that finds the slot busy sends its own record at
//! once; that record is reserved after the take it saw, so after the holder's, or the holder
//! only changed what needs no order: a pair counted (a pair is applied at a number no
//! descriptor has, helios-trace/src/observe/engine.rs `handle_pairs`), or a call of its own
//! kept, as concurrent with this one as two calls of two threads always are.
//!
//! The close's side reads whether its number is taken again between its read of the slot and
//! its take from that state (`slot_keeping`, then `count_pair`): another thread's open that got
//! the number records after its install, and that record sends what is kept first, which moves
//! the sequence on and fails this take, or it comes after the take and sends this pair first.
//! Anything else that changed the slot meanwhile fails the take too, a flush that sent its open
//! and the open that then took the number and was kept there among them.
//!
//! The slots of a group keep opens of distinct numbers, none of them needed by another's call:
//! a call is not kept while another slot keeps an open of its number (that open's close has
//! released the number and not yet returned; the late close then finds the number taken, and
//! helios-trace/src/model/fdtable.rs holds the replaced descriptor for it) or of its first
//! argument (an accept's listener, an openat's directory), nor when its path names a
//! descriptor by its number; its record then sends what the slots keep first. So userspace may
//! apply what a group sends in any order, and a close matches one slot at most.
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
    ChainRecord, MAX_CHAIN_FRAMES, PAIR_SLOTS, PAIR_WAYS, PATH_LEN, PairSlot, chain_flags, counter,
    learned_chains, pair_state, stack_mode,
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

/// The index in `PAIRS` of the first slot of process `tgid`'s group (one of
/// `PAIR_SLOTS / PAIR_WAYS`); the group's others follow it.
#[inline(always)]
fn first_slot(tgid: u32) -> u32 {
    (tgid % (PAIR_SLOTS / PAIR_WAYS)) * PAIR_WAYS
}

/// The `PAIRS` slot `way` of process `tgid`'s group (its callers first ask `keeping`). Looked up
/// for each use, not gathered into an array: an array of the group's pointers was one more
/// thing on the exit program's stack, which is at the verifier's 512 bytes with its callees'.
#[inline(always)]
fn slot_of(tgid: u32, way: u32) -> Option<*mut PairSlot> {
    if !keeping() {
        return None;
    }
    PAIRS.get_ptr_mut(first_slot(tgid) + way)
}

/// Whether `seen`, a slot's state, is `tgid`'s and not busy.
#[inline(always)]
fn held_by(seen: u64, tgid: u32) -> bool {
    seen != 0 && seen & pair_state::BUSY == 0 && pair_state::owner(seen) == tgid
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
        forget_kept(slot);
    }
}

/// Empty the slot of what it keeps (sent or counted lost), its record left to compare with.
///
/// # Safety
/// As `take`'s, the slot held.
#[inline(always)]
unsafe fn forget_kept(slot: *mut PairSlot) {
    unsafe {
        write_volatile(&raw mut (*slot).pairs, 0);
        write_volatile(&raw mut (*slot).pair_fds_differ, 0);
        write_volatile(&raw mut (*slot).open_fd, NO_FD);
    }
}

/// Send what `slot` keeps, if anything, before a record of its owner `tgid`: reserved before
/// the take (the module's rule). For a traced call's record (`wake`), a slot busy, or no
/// longer `tgid`'s, needs nothing from it (the module's doc): two tries, and a slot whose kept
/// calls could not be sent ahead of the record is counted (`counter::PAIRS_OUT_OF_ORDER`: a
/// record may count once for each slot of its group). For
/// the tracer's ask (not `wake`), a busy slot is waited out, up to 16 reads.
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
                    forget_kept(slot);
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

/// Send what slot `index` of `PAIRS` keeps for `tgid` (`send_slot`). A function of its own,
/// called once for each slot of a group: its frame is the only one it adds to its caller's,
/// which for a close is at the exit program's 512 bytes with it.
#[inline(never)]
fn send_slot_at(index: u32, tgid: u32, wake: bool) {
    if let Some(slot) = PAIRS.get_ptr_mut(index) {
        // SAFETY: a `PAIRS` value.
        unsafe { send_slot(slot, tgid, wake) };
    }
}

/// Before any record of process `tgid` but the calls this module keeps: send what its slots
/// keep, in the group's order: opens kept at once are at distinct numbers (the module's doc).
#[inline(always)]
pub fn send_kept(tgid: u32) {
    if keeping() {
        let first = first_slot(tgid);
        for way in 0..PAIR_WAYS {
            send_slot_at(first + way, tgid, true);
        }
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

/// `send_all_kept`'s callback: slot `index`, for its owner. A group's slots in its order.
unsafe extern "C" fn send_index(index: u64, _context: *mut c_void) -> i64 {
    if let Some(slot) = PAIRS.get_ptr_mut(index as u32) {
        // SAFETY: a `PAIRS` value.
        let seen = unsafe { read_volatile(&raw const (*slot).state) };
        unsafe { send_slot(slot, pair_state::owner(seen), false) };
    }
    0
}

/// A pairable call's record, made in `scratch` (`PAIR_SCRATCH`), returned `fd`: kept in a slot
/// of its process's group, or sent (what the slots kept first).
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

/// Keep the call in `scratch` in a slot of `tgid`'s group: with no copy of the record in a slot
/// whose record is like it (`same_call`, with the first slot of the same key, `key_of`) and
/// keeps none of it open, its result and time alone;
/// else in place of the record of another slot (`free_slot`), what it keeps sent first.
/// False when the call may need another slot's open before it (a slot keeps an open of its
/// first argument or of its number, or it may reopen a descriptor by number), or no slot can be
/// taken, or the one chosen changed under the take, or the ring has no room for what it keeps:
/// the caller sends what the slots keep, then the call.
///
/// # Safety
/// `scratch` is a `ChainRecord` in a map value.
#[inline(always)]
unsafe fn keep(scratch: *const ChainRecord, tgid: u32, fd: i64, ts_ns: u64) -> bool {
    if !keeping() {
        return false;
    }
    // Not kept when it may need another slot's open before it (the module's doc): a reopen by
    // number (helios-trace/src/model/fdtable.rs takes a memfd's kind from the number it names),
    // and any call while a slot keeps an open of its first argument (an accept's listener, an
    // openat's directory; for calls whose first argument is no descriptor, a refusal for
    // nothing) or of its own number (whose close released it and has not returned). Busy
    // slots too: a holder may be matching that close.
    if unsafe { reopens_by_number(scratch) } {
        return false;
    }
    let first_arg = unsafe { read_volatile(&raw const (*scratch).event.args[0]) } as i32;
    for way in 0..PAIR_WAYS {
        let Some(slot) = slot_of(tgid, way) else { return false };
        let seen = unsafe { read_volatile(&raw const (*slot).state) };
        let open_fd = unsafe { read_volatile(&raw const (*slot).open_fd) };
        if seen != 0
            && pair_state::owner(seen) == tgid
            && open_fd != NO_FD
            && (i64::from(open_fd) == fd || open_fd == first_arg)
        {
            return false;
        }
    }
    // The slot whose record may be like the call: its key the call's, none of it open. Then
    // compared whole, with that slot alone: the comparison is the longest code of the module,
    // which the verifier checks once for each place it has it.
    let key = unsafe { key_of(scratch) };
    let mut like = None;
    for way in 0..PAIR_WAYS {
        let Some(slot) = slot_of(tgid, way) else { return false };
        let seen = unsafe { read_volatile(&raw const (*slot).state) };
        if held_by(seen, tgid)
            && unsafe { read_volatile(&raw const (*slot).key) } == key
            && unsafe { read_volatile(&raw const (*slot).open_fd) } == NO_FD
        {
            like = Some((slot, seen));
            break;
        }
    }
    if let Some((slot, seen)) = like
        && unsafe { same_call(&raw const (*slot).record, scratch) }
    {
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
    let Some(slot) = free_slot(tgid) else { return false };
    let seen = unsafe { read_volatile(&raw const (*slot).state) };
    if seen & pair_state::BUSY != 0 {
        return false;
    }
    if seen != 0 && unsafe { keeps(slot) } {
        if pair_state::owner(seen) != tgid {
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
        bpf_probe_read_kernel(
            (&raw mut (*slot).record).cast(),
            size_of::<ChainRecord>() as u32,
            scratch.cast::<c_void>(),
        );
        write_volatile(&raw mut (*slot).key, key);
        write_volatile(&raw mut (*slot).open_fd, fd as i32);
        write_volatile(&raw mut (*slot).open_ts_ns, ts_ns);
        release(slot, tgid, seen);
    }
    true
}

/// Whether `record`'s path may name a descriptor by its number: `/proc/self/fd/N`,
/// `/proc/thread-self/fd/N` or `/dev/fd/N` (the prefixes helios-trace/src/model/fdtable.rs
/// `own_fd_link` knows, compared a word at a time, little-endian), or a relative path that
/// starts with a digit or `fd/` (from a directory such as /proc/self/fd or /dev, or the working
/// directory: userspace joins it to its directory's path before it asks). A call without a
/// path has none (`path_len` 0); a path cut at `PATH_LEN` keeps its start.
///
/// # Safety
/// As `key_of`'s.
#[inline(always)]
unsafe fn reopens_by_number(record: *const ChainRecord) -> bool {
    let len = unsafe { read_volatile(&raw const (*record).event.path_len) } as usize;
    let words = unsafe { (&raw const (*record).event.path).cast::<u64>() };
    let word = |i: usize| unsafe { read_volatile(words.add(i)) };
    let is = |word: u64, text: &[u8; 8], bytes: u32| {
        let mask = if bytes == 8 { u64::MAX } else { (1u64 << (bytes * 8)) - 1 };
        (word ^ u64::from_le_bytes(*text)) & mask == 0
    };
    if len == 0 {
        return false;
    }
    let first = word(0);
    let byte = first as u8;
    if byte.is_ascii_digit() || (len >= 3 && is(first, b"fd/\0\0\0\0\0", 3)) {
        return true;
    }
    len >= 8
        && (is(first, b"/dev/fd/", 8)
            || (len >= 14 && is(first, b"/proc/se", 8) && is(word(1), b"lf/fd/\0\0", 6))
            || (len >= 21
                && is(first, b"/proc/th", 8)
                && is(word(1), b"read-sel", 8)
                && is(word(2), b"f/fd/\0\0\0", 5)))
}

/// `PairSlot::key` of `record`: its thread, its call's number and stack word, the chain's
/// depth, and its first two callers' addresses when it has them (past the depth, a scratch
/// record keeps what an earlier call left). Equal for two records `same_call` finds alike.
///
/// # Safety
/// `record` is a `ChainRecord` in a map value.
#[inline(always)]
unsafe fn key_of(record: *const ChainRecord) -> u64 {
    // SyscallEvent's second and fourth words: the thread (tid and reserved), nr and stack_id
    // (`same_call` names the words); a process's threads at one line are then told apart.
    let words = record.cast::<u64>();
    let call = unsafe { read_volatile(words.add(1)).rotate_left(7) ^ read_volatile(words.add(3)) };
    let depth = unsafe { read_volatile(&raw const (*record).chain.depth) };
    let address = |i: usize| {
        if (depth as usize) > i {
            unsafe { read_volatile(&raw const (*record).chain.addresses[i]) }
        } else {
            0
        }
    };
    call ^ u64::from(depth) ^ address(1).rotate_left(21) ^ address(2).rotate_left(42)
}

/// The slot of `tgid`'s group a new call replaces the record of (what it keeps of the process
/// is sent by the caller first): a slot never used first, then one of the process keeping no
/// open, the one used least lately (`open_ts_ns`, the last call kept there), then another
/// process's with nothing kept, else the one whose open was kept first: a server holding more
/// connections than a group has slots still has the file it opens and closes for one matched,
/// where sending the call itself when no slot was free had none of a round's three calls
/// matched with two slots (`chains::descriptors_held_...`). None when every slot is busy, or
/// another process's with something kept.
#[inline(always)]
fn free_slot(tgid: u32) -> Option<*mut PairSlot> {
    // The lower the sooner the slot is taken: 0 for one never used, the time of its last call
    // kept for one of this process keeping no open, that time with bit 62 set for another
    // process's with nothing kept (its record is that process's to compare with), and with bit
    // 63 for one of this process keeping an open; none for a slot not to take.
    let age = |slot: *mut PairSlot| {
        // SAFETY: a `PAIRS` value (`slot_of`).
        let seen = unsafe { read_volatile(&raw const (*slot).state) };
        if seen == 0 {
            return Some(0);
        }
        if seen & pair_state::BUSY != 0 {
            return None;
        }
        let last = unsafe { read_volatile(&raw const (*slot).open_ts_ns) } & !(3 << 62);
        if pair_state::owner(seen) != tgid {
            (!unsafe { keeps(slot) }).then_some(last | 1 << 62)
        } else if unsafe { read_volatile(&raw const (*slot).open_fd) } != NO_FD {
            Some(last | 1 << 63)
        } else {
            Some(last)
        }
    };
    let mut oldest: Option<(*mut PairSlot, u64)> = None;
    for way in 0..PAIR_WAYS {
        let slot = slot_of(tgid, way)?;
        if let Some(age) = age(slot)
            && oldest.is_none_or(|(_, before)| age < before)
        {
            oldest = Some((slot, age));
        }
    }
    oldest.map(|(slot, _)| slot)
}

/// `close(fd)` of process `tgid` returned: the slot of its group that keeps the open it closed
/// and its state as read, as one word (the low half of the state, `tgid`'s in the high half,
/// and the slot's way plus one above it); 0 when no slot does, or calls are not kept. The
/// caller then reads whether the number is free again, before `count_pair` takes the slot from
/// that state (the module's doc).
///
/// Functions of their own, called one after the other: inlined, or one function taking the
/// number's read as a closure, the slots' tests grew the close's frame over the 512 bytes
/// of the exit program's stack with its callees'.
#[inline(never)]
pub fn slot_keeping(tgid: u32, fd: u64) -> u64 {
    if !keeping() {
        return 0;
    }
    for way in 0..PAIR_WAYS {
        let Some(slot) = slot_of(tgid, way) else { return 0 };
        // SAFETY: a `PAIRS` value.
        let seen = unsafe { read_volatile(&raw const (*slot).state) };
        let open_fd = unsafe { read_volatile(&raw const (*slot).open_fd) };
        if held_by(seen, tgid) && open_fd != NO_FD && open_fd as u64 == fd {
            return ((u64::from(way) + 1) << 32) | (seen & u64::from(u32::MAX));
        }
    }
    0
}

/// The close of a number free again, of process `tgid`, matched with the open `kept` says a
/// slot keeps (`slot_keeping`): the slot taken from the state read there, the pair counted,
/// and true: nothing is sent. False when the slot changed since.
#[inline(never)]
pub fn count_pair(tgid: u32, kept: u64) -> bool {
    let way = ((kept >> 32) as u32).wrapping_sub(1) % PAIR_WAYS;
    let seen = (u64::from(tgid) << 32) | (kept & u64::from(u32::MAX));
    let Some(slot) = PAIRS.get_ptr_mut(first_slot(tgid) + way) else { return false };
    // SAFETY: a `PAIRS` value. Taken from the state `slot_keeping` read: every field is still
    // what it read, the open among them.
    if !unsafe { take(slot, seen) } {
        return false;
    }
    unsafe {
        let open_fd = read_volatile(&raw const (*slot).open_fd);
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
