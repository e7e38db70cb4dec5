//! Python frames of the calling thread, read from a CPython process's own memory at its
//! descriptor calls (the offsets come from userspace: helios-trace/src/resolve/python/), submitted as
//! a `kind::PYTHON_STACK` record before the record they belong to.
use core::{
    ffi::c_void,
    ptr::{read_volatile, write_volatile},
};

use aya_ebpf::{
    bindings::bpf_pidns_info,
    helpers::{
        bpf_probe_read_user,
        generated::{bpf_get_ns_current_pid_tgid, bpf_loop, bpf_probe_read_user as raw_read_user},
    },
};
use helios_trace_common::{
    MAX_PYTHON_FRAME_READ, MAX_PYTHON_FRAME_WINDOW, MAX_PYTHON_FRAMES, MAX_PYTHON_THREADS,
    MAX_PYTHON_TSTATE_READ, PY_NO_OFFSET, PYTHON_STACK_FRAMES_OFFSET, PythonFrame, PythonOffsets,
    PythonStack, counter, kind, python_flags,
};

use crate::{
    emit::{count, followed_wakeup_flags, header_at},
    maps::{EVENTS, PYTHON_PROCS, PYTHON_SCRATCH, PYTHON_THREADS, PYTHON_WALK},
    stacks::{AlignedBytes, PAGE, on_walked_stack, stack_word, word_at},
};

/// When the calling process is a CPython userspace recognised (`PYTHON_PROCS`), submit the
/// calling thread's Python frames as a `kind::PYTHON_STACK` record. A subprogram of its own
/// whose loops are bpf_loop callbacks: the verifier checks each loop body once, where
/// unrolled loops multiplied with the exit program's paths past its instruction limit.
///
/// `stack_copied`: a learned chain's walk follows, its copy of the C stack started (stacks.rs
/// `start_stack_copy`): this walk's word of the C stack is read from that copy, and a remembered
/// thread state checked against the stack it covers (`remembered_thread`).
///
/// The record is submitted without asking the ring how full it is: the descriptor's record that
/// the exit program submits right after it asks for both (emit.rs, `followed_wakeup_flags`).
#[inline(never)]
pub fn python_stack(pid_tgid: u64, ts_ns: u64, stack_copied: bool) {
    let tgid = (pid_tgid >> 32) as u32;
    let Some(offsets) = (unsafe { PYTHON_PROCS.get(&tgid) }) else {
        return;
    };
    let (Some(stack), Some(walk)) = (PYTHON_SCRATCH.get_ptr_mut(0), PYTHON_WALK.get_ptr_mut(0)) else {
        return;
    };
    // Copied map to map, not through the stack (PYTHON_WALK says why). `walk` and `stack` stay
    // raw pointers, never a `&mut` held across the walk: its loop's callback writes both slots
    // through pointers of its own (walk_frame), which a `&mut` would let the compiler assume
    // cannot happen. So the fields the callback writes are written before it and read after
    // it volatile.
    // SAFETY: per-CPU slots: no other program uses them while this one runs on this CPU.
    unsafe {
        copy_offsets(offsets, &raw mut (*walk).offsets);
        write_volatile(&raw mut (*stack).header, header_at(kind::PYTHON_STACK, pid_tgid, ts_ns));
        write_volatile(&raw mut (*stack).frame_count, 0);
    }
    let flags = match thread_id(unsafe { &(*walk).offsets }, pid_tgid as u32) {
        Some(tid) => walk_python(walk, pid_tgid, tid, stack_copied),
        None => python_flags::NAMESPACE,
    };
    // SAFETY: as above, the walk done.
    unsafe { write_volatile(&raw mut (*stack).flags, flags) };
    // Only the frames walked: the record is read up to them (PythonStack).
    let frames = (unsafe { read_volatile(&raw const (*stack).frame_count) } as usize).min(MAX_PYTHON_FRAMES);
    let len = PYTHON_STACK_FRAMES_OFFSET + frames * size_of::<PythonFrame>();
    if len > size_of::<PythonStack>() {
        return;
    }
    // SAFETY: `len` bytes of the scratch record, which is that long at least.
    let bytes = unsafe { core::slice::from_raw_parts(stack.cast_const().cast::<u8>(), len) };
    if EVENTS.output::<[u8]>(bytes, followed_wakeup_flags()).is_err() {
        count(counter::RINGBUF_FULL);
    }
}

/// Whether `python_stack` walked this call (the calling thread's, returned at `ts_ns`): it wrote
/// its record's header first. Its call's record is then not one the kernel may keep
/// (pairs.rs), which would send it without its Python frames. Read from the scratch record, not
/// returned by `python_stack`: a value kept in a register across the learned walk made the
/// verifier check the walk once for each value (syscalls.rs, `try_fd_syscall_exit`).
#[inline(always)]
pub fn python_walked(pid_tgid: u64, ts_ns: u64) -> bool {
    let Some(stack) = PYTHON_SCRATCH.get_ptr(0) else { return false };
    // SAFETY: this CPU's scratch record: no other program writes it while this one runs here.
    let header = unsafe { read_volatile(&raw const (*stack).header) };
    header.tid == pid_tgid as u32 && header.ts_ns == ts_ns && header.kind == kind::PYTHON_STACK
}

/// Copy the offsets a word at a time. As one assignment the compiler calls `memmove`, which
/// compiler_builtins gives BPF as a loop of one-byte loads and stores: 88 of them, each a few
/// instructions, on every call. Volatile, so that it does not see the loop as that same copy.
///
/// # Safety
/// Both point to a whole `PythonOffsets` (8-byte aligned: it starts with a u64) in map values.
#[inline(always)]
unsafe fn copy_offsets(from: *const PythonOffsets, to: *mut PythonOffsets) {
    const WORDS: usize = size_of::<PythonOffsets>() / size_of::<u64>();
    const _: () = assert!(
        size_of::<PythonOffsets>() % size_of::<u64>() == 0
            && align_of::<PythonOffsets>() == align_of::<u64>()
    );
    let (from, to) = (from.cast::<u64>(), to.cast::<u64>());
    for word in 0..WORDS {
        // SAFETY: within both structs (the caller's promise and the asserts above).
        unsafe { write_volatile(to.add(word), read_volatile(from.add(word))) };
    }
}

/// The calling thread's id as CPython knows it: in the process's own pid namespace
/// (`native_thread_id` is gettid(2) there; 3.10's glibc `struct pthread` tid is what clone(2)
/// wrote, the same). The helper compares the task's active pid namespace with the (dev, ino)
/// userspace stat'ed (kernel/bpf/helpers.c, bpf_get_ns_current_pid_tgid; allowed in tracing
/// programs since 5.7, in all since 6.10) and answers `task_pid_nr_ns` of that namespace.
#[inline(always)]
fn thread_id(o: &PythonOffsets, kernel_tid: u32) -> Option<u32> {
    if o.pidns_ino == 0 {
        return Some(kernel_tid);
    }
    let mut ns = bpf_pidns_info { pid: 0, tgid: 0 };
    let size = size_of::<bpf_pidns_info>() as u32;
    let err = unsafe { bpf_get_ns_current_pid_tgid(o.pidns_dev, o.pidns_ino, &mut ns, size) };
    (err == 0).then_some(ns.pid)
}

#[inline(always)]
fn read_user_u64(address: u64) -> Result<u64, i64> {
    Ok(unsafe { bpf_probe_read_user(address as *const u64) }?)
}

/// State of the thread-state search, in the walk's map slot (`FrameWalk::search`): on this
/// program's stack it was 40 of the bytes the verifier allows the exit program and this one
/// together (512), which the C stack's copy (`stack_word`) needed.
#[repr(C)]
struct ThreadSearch {
    tstate: u64,
    tid: u64,
    found: u64,
    /// The found thread state's `tstate_frame` field.
    frame: u64,
    failed: u64,
}

/// The u64 at `offset` of `bytes` (0 past their end).
#[inline(always)]
fn field(bytes: &AlignedBytes<{ MAX_PYTHON_FRAME_WINDOW as usize }>, offset: usize) -> u64 {
    word_at(bytes, offset).unwrap_or(0)
}

/// Read the thread state at `tstate` at once (`tstate_read` bytes, into the walk's buffer):
/// Ok(true) when it is thread `tid`'s, Err when a read fails.
#[inline(always)]
fn read_thread_state(w: &mut FrameWalk, tstate: u64, tid: u64) -> Result<bool, ()> {
    let o = &w.offsets;
    let size = o.tstate_read.min(MAX_PYTHON_TSTATE_READ);
    if size == 0
        || unsafe { raw_read_user(w.bytes.0.as_mut_ptr().cast(), size, tstate as *const c_void) } != 0
    {
        return Err(());
    }
    let mut id = field(&w.bytes, o.tstate_thread_id as usize);
    if o.pthread_tid != PY_NO_OFFSET {
        // 3.10: the pthread_t is glibc's `struct pthread *`, which holds the kernel tid.
        id =
            unsafe { bpf_probe_read_user((id + o.pthread_tid as u64) as *const u32) }.map_err(|_| ())? as u64;
    }
    Ok(id == tid)
}

/// One thread state of the search (`read_thread_state`): is it the caller's? Then stop, with
/// its frame field; else go to the next.
#[inline(never)]
unsafe extern "C" fn search_thread(_index: u64, _ctx: *mut c_void) -> i64 {
    // No slot is no search (`found` stays 0): it is always there.
    let Some(w) = PYTHON_WALK.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: the per-CPU slot python_stack is filling; walk_python holds no reference into it
    // across the loop.
    let w = unsafe { &mut *w };
    let (tstate, tid) = (w.search.tstate, w.search.tid);
    if tstate == 0 {
        return 1;
    }
    match read_thread_state(w, tstate, tid) {
        Err(()) => {
            w.search.failed = 1;
            1
        }
        Ok(true) => {
            w.search.found = tstate;
            w.search.frame = field(&w.bytes, w.offsets.tstate_frame as usize);
            1
        }
        Ok(false) => {
            w.search.tstate = field(&w.bytes, w.offsets.tstate_next as usize);
            0
        }
    }
}

/// More bytes than a 3.11 or 3.12 `PyThreadState` (Include/cpython/pystate.h: a few hundred),
/// whose `root_cframe` lies within it (`remembered_thread`).
const THREAD_STATE_SPAN: u64 = 4096;

/// The frame field of the thread state the kernel remembers for the calling thread
/// (`PYTHON_THREADS`, by its kernel `pid_tgid`), when that is still thread `tid`'s and still in
/// its interpreter's list (or, 3.11 and 3.12, has its `cframe` on the caller's stack: below);
/// else None, and the list is searched. A thread state is found by a
/// search from the list's head (`walk_python`): two reads to the list, then one per thread state
/// up to the caller's, and CPython puts a new thread at the head (Python/pystate.c,
/// `new_threadstate`; 3.12+ `add_threadstate`), so an event loop's main thread, the last of the
/// list, was read after every worker's. Remembered, it is two reads (the thread state, and its
/// `prev`'s `next` or its interpreter's head; 3.10 one more, for the tid) whatever the list; one
/// when its `cframe` is on the caller's stack.
///
/// Still in the list: its `prev`'s `next` is it, or, with no `prev`, the head of its own
/// interpreter's list (`interp`) is. A thread state CPython deleted (`tstate_delete_common`
/// unlinks it, and the allocator may give its memory to the next one) is not: its neighbours
/// and its interpreter were linked past it, and a new thread state is linked at the head only.
/// The same memory linked again as another thread state is in a list; its thread id says whose
/// it is, as in the search. Two cases pass that the search would not have taken:
/// - at finalization, CPython takes the other threads' states out of the list in one piece
///   (3.12 `_PyThreadState_DeleteExcept`, 3.13+ `_PyThreadState_RemoveExcept`), still linked
///   among themselves: a daemon thread's call that returns then may be walked from its own
///   removed state (its frames, or a read that fails), where the search found none;
/// - a thread with states in two interpreters (3.13+ running code in a subinterpreter) is walked
///   from the one remembered, where the search looked in the newest interpreter's list only.
/// Neither is met in the tests or the corpus; both are documented (README.md, Python frames).
///
/// 3.11 and 3.12 (`stack_copied`: a learned walk's copy of the C stack started) need no read for
/// the list when the thread state's `cframe` lies on the caller's own stack (`on_walked_stack`)
/// and not within the thread state itself: the running `_PyEval_EvalFrameDefault` puts its
/// local `_PyCFrame` there on entry (`tstate->cframe = &cframe`, Python/ceval.c) and the
/// `previous` one back on each way out (3.12: the exits in Python/bytecodes.c too), down to the
/// thread state's own `root_cframe`, a member of it (as does code that runs frames in its place:
/// greenlet's switches, each on the thread's own stack). So a state whose `cframe` is on the
/// caller's stack is the one an eval loop of the caller runs with. A state CPython deleted one
/// by one had left its eval loops (a thread's after its function returned, a C thread's at
/// `PyGILState_Release`): its `cframe` is its `root_cframe`, within it, and the list is checked
/// as above. Counted: `counter::PYTHON_THREAD_ON_STACK`. What passes that the list check would
/// not take: at finalization (3.11 too) the states `_PyThreadState_DeleteExcept` removed and
/// freed keep their thread id and `cframe` (the allocator overwrites their first words, `prev`
/// and `next`, which failed the list check mostly, not always), so a daemon thread whose eval
/// loop still runs is walked from its own state, its frames being still its own.
#[inline(always)]
fn remembered_thread(w: &mut FrameWalk, pid_tgid: u64, tid: u32, stack_copied: bool) -> Option<u64> {
    let tstate = unsafe { PYTHON_THREADS.get(&pid_tgid) }.copied()?;
    if read_thread_state(w, tstate, tid as u64) != Ok(true) {
        return None;
    }
    let o = &w.offsets;
    let frame = field(&w.bytes, o.tstate_frame as usize);
    if stack_copied
        && o.cframe_frame != PY_NO_OFFSET
        && frame.wrapping_sub(tstate) >= THREAD_STATE_SPAN
        && on_walked_stack(frame)
    {
        count(counter::PYTHON_THREAD_ON_STACK);
        return Some(frame);
    }
    let prev = field(&w.bytes, o.tstate_prev as usize);
    let points_to_it = if prev != 0 {
        prev.wrapping_add(o.tstate_next as u64)
    } else {
        field(&w.bytes, o.tstate_interp as usize).wrapping_add(o.threads_head as u64)
    };
    (read_user_u64(points_to_it).ok()? == tstate).then_some(frame)
}

/// State of the frame walk, in `PYTHON_WALK` (the bpf_loop callbacks take it from there).
#[repr(C)]
pub struct FrameWalk {
    offsets: PythonOffsets,
    frame: u64,
    flags: u32,
    /// How many bytes of `bytes` are the process's from `window_start` (0: none; the thread
    /// search leaves a thread state there).
    window_len: u32,
    window_start: u64,
    /// The thread-state search's (`search_threads`).
    search: ThreadSearch,
    /// The last window read: the current frame's first `frame_read` bytes and up to
    /// `frame_window` bytes before them, within its page.
    bytes: AlignedBytes<{ MAX_PYTHON_FRAME_WINDOW as usize }>,
}

/// One frame: copy (code, instruction) unless it is a shim, then go to the previous frame.
/// The frame's fields come from the last window read when it holds the frame's first
/// `frame_read` bytes (3.11+: the frames under the first one in the data stack); else from a
/// new window, ending with those bytes and starting up to `frame_window` bytes before them but
/// not before the frame's page (that page reads, since the frame does; the one below may not
/// be mapped: the data stack's first chunk).
#[inline(never)]
unsafe extern "C" fn walk_frame(_index: u64, _ctx: *mut c_void) -> i64 {
    let (Some(stack), Some(w)) = (PYTHON_SCRATCH.get_ptr_mut(0), PYTHON_WALK.get_ptr_mut(0)) else {
        return 1;
    };
    // SAFETY: the per-CPU slots python_stack is filling.
    let (stack, w) = unsafe { (&mut *stack, &mut *w) };
    if w.frame == 0 {
        return 1;
    }
    let o = &w.offsets;
    let size = o.frame_read.min(MAX_PYTHON_FRAME_READ);
    let end = w.frame.wrapping_add(size as u64);
    let in_window = w.window_len != 0
        && w.frame >= w.window_start
        && end <= w.window_start.wrapping_add(w.window_len as u64)
        && end > w.frame;
    if !in_window {
        let window = o.frame_window.min(MAX_PYTHON_FRAME_WINDOW).max(size) as u64;
        // The 4 KiB around the frame lie within its page, whatever the page size (stacks.rs PAGE).
        let start = end.saturating_sub(window).max(w.frame & !(PAGE as u64 - 1));
        // Rounded up to a multiple of 8, as CPython's frames are (pointer-aligned in the data
        // stack): every frame's fields then lie at multiples of 8 in the window, one load each
        // (`field`); `frame_read` is not one (its owner byte and one), so `end` is not. At most 7
        // bytes fewer, none of the frame's.
        let start = start.wrapping_add(7) & !7;
        let len = end.wrapping_sub(start);
        if size == 0
            || start > w.frame
            || len == 0
            || len > MAX_PYTHON_FRAME_WINDOW as u64
            || unsafe { raw_read_user(w.bytes.0.as_mut_ptr().cast(), len as u32, start as *const c_void) }
                != 0
        {
            w.flags |= python_flags::READ_FAILED;
            return 1;
        }
        w.window_start = start;
        w.window_len = len as u32;
    }
    let at = w.frame.wrapping_sub(w.window_start) as usize;
    let skip = o.frame_owner != PY_NO_OFFSET
        && w.bytes
            .0
            .get(at.wrapping_add(o.frame_owner as usize))
            .is_some_and(|owner| *owner as u32 >= o.owner_skip);
    if !skip {
        let Some(slot) = stack.frames.get_mut(stack.frame_count as usize) else {
            w.flags |= python_flags::TRUNCATED;
            return 1;
        };
        *slot = PythonFrame {
            code: field(&w.bytes, at.wrapping_add(o.frame_code as usize)),
            instr: field(&w.bytes, at.wrapping_add(o.frame_instr as usize)),
        };
        stack.frame_count += 1;
    }
    w.frame = field(&w.bytes, at.wrapping_add(o.frame_previous as usize));
    0
}

/// Find the thread state whose thread id is `tid` (in the process's pid namespace; not the GIL
/// holder's: CPython releases the GIL around blocking calls), the one remembered for the
/// thread (`remembered_thread`) or else by a search of the list, then copy (code object,
/// instruction) of its frames, innermost first, into the scratch record. The layouts are CPython's (Include/cpython/pystate.h,
/// Include/internal/pycore_frame.h); the offsets come from userspace. Returns python_flags.
///
/// `walk` is a raw pointer, never a `&mut` held across `bpf_loop`: the callback writes the
/// same slot through its own pointer (`walk_frame`), which a `&mut` would let the compiler
/// assume cannot happen (moving the writes before the loop past it, or the reads after it
/// before it). Its fields are read back volatile after the loop.
///
/// `stack_copied`: the C stack the learned walk copies is to be read from that copy
/// (`python_stack`), for 3.11's and 3.12's `_PyCFrame` and the remembered thread state's check.
#[inline(always)]
fn walk_python(walk: *mut FrameWalk, pid_tgid: u64, tid: u32, stack_copied: bool) -> u32 {
    // SAFETY: the per-CPU slot python_stack filled; a `&mut` of it only here, where no loop runs.
    let remembered = remembered_thread(unsafe { &mut *walk }, pid_tgid, tid, stack_copied);
    let mut frame = match remembered {
        Some(frame) => {
            count(counter::PYTHON_THREAD_REMEMBERED);
            frame
        }
        None => match search_threads(walk, tid) {
            Ok((tstate, frame)) => {
                let _ = PYTHON_THREADS.insert(&pid_tgid, &tstate, 0);
                frame
            }
            Err(flags) => {
                // A thread state remembered and gone (a C thread's after PyGILState_Release):
                // forgotten, so that the thread's next calls search at once.
                if flags == python_flags::NO_THREAD {
                    let _ = PYTHON_THREADS.remove(&pid_tgid);
                }
                return flags;
            }
        },
    };
    // SAFETY: as above.
    let cframe_frame = unsafe { (*walk).offsets.cframe_frame };
    if cframe_frame != PY_NO_OFFSET && frame != 0 {
        // 3.11 and 3.12: the thread's `cframe` is the running `_PyEval_EvalFrameDefault`'s
        // local `_PyCFrame` (Python/ceval.c), on the C stack the learned walk reads: taken
        // from its copy, it is no read of its own when the walk climbs past that frame, as a
        // chain that ends does (BENCHMARKS.md, "The running cframe from the stack's copy"), and
        // mostly no read at all, the copy ahead of a CPython chain holding it already
        // (stacks.rs, `start_from_hint`); when the walk stops before it, the copy up to it was
        // extra work. Elsewhere (the interpreter's root cframe in the thread state, a stack
        // past the window, no learned walk) it is read.
        let at = frame + cframe_frame as u64;
        let current = match stack_copied.then(|| stack_word(at)).flatten() {
            Some(current) => {
                count(counter::PYTHON_CFRAME_FROM_COPY);
                current
            }
            None => match read_user_u64(at) {
                Ok(current) => current,
                Err(_) => return python_flags::READ_FAILED,
            },
        };
        frame = current;
    }
    // SAFETY: as above; volatile, so that the writes stay before the loop.
    unsafe {
        write_volatile(&raw mut (*walk).frame, frame);
        write_volatile(&raw mut (*walk).flags, 0);
        write_volatile(&raw mut (*walk).window_len, 0);
    }
    // Room for shim frames between the real ones; a walk that did not reach the end is cut.
    // Every byte of `bytes` a frame's fields are taken from is in the window read last
    // (`frame_read` covers them: resolve/python/layout.rs), so it needs no clearing.
    let loops = (MAX_PYTHON_FRAMES * 2) as u32;
    let done = unsafe { bpf_loop(loops, walk_frame as *mut c_void, core::ptr::null_mut(), 0) };
    // SAFETY: as above; what the callback left there.
    let (frame, mut flags) =
        unsafe { (read_volatile(&raw const (*walk).frame), read_volatile(&raw const (*walk).flags)) };
    if done as u32 >= loops && frame != 0 {
        flags |= python_flags::TRUNCATED;
    }
    flags
}

/// Search the thread states of the process's interpreter from the list's head for thread
/// `tid`'s: its address and frame field, or the python_flags of why not.
#[inline(always)]
fn search_threads(walk: *mut FrameWalk, tid: u32) -> Result<(u64, u64), u32> {
    // SAFETY: the per-CPU slot python_stack filled. Copied out: the callback takes the slot as
    // a `&mut` of its own while the loop runs.
    let (interpreters_head, threads_head) =
        unsafe { ((*walk).offsets.interpreters_head, (*walk).offsets.threads_head) };
    // A runtime whose page does not read has not been written yet: `run` gives the offsets
    // before the exec, and the dynamic loader opens its libraries before the interpreter's
    // data page is first touched (bpf_probe_read_user does not fault pages in). No Python code
    // has run: nothing to miss. (A started runtime's page swapped out under memory pressure
    // reads the same way, and such a descriptor is then not counted missed: no swap here.)
    let Ok(interp) = read_user_u64(interpreters_head) else {
        return Err(python_flags::NOT_STARTED);
    };
    if interp == 0 {
        return Err(python_flags::NOT_STARTED);
    }
    let Ok(head) = read_user_u64(interp + threads_head as u64) else {
        return Err(python_flags::READ_FAILED);
    };
    // Its fields written one by one: as one struct, three of them zero, the compiler calls
    // `memset`, a loop of one-byte stores (as copy_offsets says of `memmove`). Volatile, and
    // read back so after the loop, whose callback writes them through its own pointer.
    // SAFETY: the per-CPU slot python_stack filled; no reference into it is held across the loop.
    let (found, frame, failed) = unsafe {
        let at = &raw mut (*walk).search;
        write_volatile(&raw mut (*at).tstate, head);
        write_volatile(&raw mut (*at).tid, tid as u64);
        write_volatile(&raw mut (*at).found, 0);
        write_volatile(&raw mut (*at).frame, 0);
        write_volatile(&raw mut (*at).failed, 0);
        bpf_loop(MAX_PYTHON_THREADS, search_thread as *mut c_void, core::ptr::null_mut(), 0);
        (
            read_volatile(&raw const (*at).found),
            read_volatile(&raw const (*at).frame),
            read_volatile(&raw const (*at).failed),
        )
    };
    if failed != 0 {
        return Err(python_flags::READ_FAILED);
    }
    if found == 0 {
        return Err(python_flags::NO_THREAD);
    }
    Ok((found, frame))
}
