//! Descriptor syscalls: one generic enter/exit pair attached to the `syscalls/sys_enter_*` and
//! `syscalls/sys_exit_*` tracepoint of every call that creates, duplicates, passes or closes
//! descriptors, plus a dedicated `close` enter program (the hottest call, needs no pairing).
//!
//! Tracepoint record layout (include/trace/events/syscalls.h, `ftrace_syscall_enter/exit`;
//! see /sys/kernel/tracing/events/syscalls/sys_enter_openat/format):
//!   offset 8:  int __syscall_nr
//!   offset 16: unsigned long args[6]   (enter)   |   long ret   (exit)
//!
//! What each syscall number needs (path string, fd pair, SCM_RIGHTS, ...) comes from the
//! `SYSCALL_SPECS` array that userspace fills, so the architecture's numbering lives in one
//! place (helios-trace/src/syscalls.rs) and these programs stay generic.
use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel as bpf_probe_read_kernel_value, bpf_probe_read_user,
        generated::{
            bpf_find_vma, bpf_get_current_task_btf, bpf_ktime_get_boot_ns, bpf_loop, bpf_probe_read_kernel,
            bpf_probe_read_user as raw_read_user, bpf_probe_read_user_str, bpf_task_pt_regs,
        },
    },
    macros::tracepoint,
    programs::{TracePointContext, tracing::StackIdContext as _},
};
use helios_trace_common::{
    CloseEvent, EventHeader, InFlight, MAX_AUX_FDS, MAX_PYTHON_FRAME_READ, MAX_PYTHON_FRAMES,
    MAX_PYTHON_THREADS, MAX_STACK_WINDOW, PATH_LEN, PY_NO_OFFSET, PythonFrame, PythonOffsets,
    STACK_NOT_CAPTURED, SyscallEvent, UserStack, counter, kind, python_flags, spec, stack_mode,
    syscall_flags, user_stack_flags,
};

use crate::{
    filter::{capture_kernel_stacks, is_traced, stack_window, user_stack_mode, wakeup_flags},
    maps::{EVENTS, IN_FLIGHT, PYTHON_PROCS, PYTHON_SCRATCH, STACKS, SYSCALL_SPECS, count, emit},
};

// The user register layout of the architecture the programs are built for (aya-build passes
// `bpf_target_arch`, the host's).
#[cfg(bpf_target_arch = "aarch64")]
use helios_trace_common::regs_aarch64 as arch;
#[cfg(bpf_target_arch = "x86_64")]
use helios_trace_common::regs_x86_64 as arch;
#[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
compile_error!("--stacks dwarf knows the user registers of x86_64 and aarch64 only");

const NR_OFFSET: usize = 8;
const ARGS_OFFSET: usize = 16;
const RET_OFFSET: usize = 16;

// include/uapi/asm-generic/fcntl.h, include/uapi/linux/fcntl.h, include/uapi/asm-generic/ioctls.h
const F_DUPFD: u64 = 0;
const F_SETFD: u64 = 2;
const F_DUPFD_CLOEXEC: u64 = 1030;
const FIONCLEX: u64 = 0x5450;
const FIOCLEX: u64 = 0x5451;

// include/linux/socket.h: struct user_msghdr and struct cmsghdr on 64-bit.
const MSGHDR_CONTROL_OFFSET: u64 = 32;
const MSGHDR_CONTROLLEN_OFFSET: u64 = 40;
const MMSGHDR_SIZE: u64 = 64;
const CMSG_HEADER_LEN: u64 = 16;
const SOL_SOCKET: i32 = 1;
const SCM_RIGHTS: i32 = 1;
/// Control messages walked per msghdr, and messages walked per recvmmsg: bounded for the
/// verifier; anything beyond is flagged AUX_TRUNCATED and left to reconciliation.
const MAX_CMSGS: usize = 4;
const MAX_MMSGS: usize = 8;

#[inline(always)]
pub fn header(kind: u32, pid_tgid: u64) -> EventHeader {
    header_at(kind, pid_tgid, unsafe { bpf_ktime_get_boot_ns() })
}

#[inline(always)]
fn header_at(kind: u32, pid_tgid: u64, ts_ns: u64) -> EventHeader {
    EventHeader { kind, tgid: (pid_tgid >> 32) as u32, tid: pid_tgid as u32, reserved: 0, ts_ns }
}

#[tracepoint]
pub fn fd_syscall_enter(ctx: TracePointContext) -> u32 {
    let _ = try_fd_syscall_enter(&ctx);
    0
}

fn try_fd_syscall_enter(ctx: &TracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_traced((pid_tgid >> 32) as u32) {
        return Ok(());
    }
    let nr: i32 = unsafe { ctx.read_at(NR_OFFSET) }?;
    let spec = *SYSCALL_SPECS.get(nr as u32).ok_or(0i64)?;
    if spec & spec::TRACED == 0 {
        return Ok(());
    }
    let mut args = [0u64; 6];
    for (i, arg) in args.iter_mut().enumerate() {
        *arg = unsafe { ctx.read_at(ARGS_OFFSET + i * 8) }?;
    }
    // fcntl and ioctl are frequent and mostly irrelevant: keep only the commands that create a
    // descriptor or change its close-on-exec flag.
    if spec & spec::FCNTL_FILTER != 0 && !matches!(args[1], F_DUPFD | F_DUPFD_CLOEXEC | F_SETFD) {
        return Ok(());
    }
    if spec & spec::IOCTL_FILTER != 0 && !matches!(args[1] as u32 as u64, FIOCLEX | FIONCLEX) {
        return Ok(());
    }
    let entry = InFlight { nr: nr as u32, spec, args };
    if IN_FLIGHT.insert(&pid_tgid, &entry, 0).is_err() {
        count(counter::IN_FLIGHT_FULL);
    }
    Ok(())
}

#[tracepoint]
pub fn fd_syscall_exit(ctx: TracePointContext) -> u32 {
    let _ = try_fd_syscall_exit(&ctx);
    0
}

fn try_fd_syscall_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // Copy out and delete on every path: the entry must not outlive this syscall.
    let Some(in_flight) = (unsafe { IN_FLIGHT.get(&pid_tgid) }).copied() else {
        return Ok(());
    };
    let _ = IN_FLIGHT.remove(&pid_tgid);
    let ret: i64 = unsafe { ctx.read_at(RET_OFFSET) }?;
    if ret < 0 {
        return Ok(());
    }
    // One timestamp for the Python stack and the record it belongs to: userspace pairs them by
    // (tid, ts_ns).
    let ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    if in_flight.spec & spec::STACK != 0 && user_stack_mode() != stack_mode::NONE {
        python_stack(pid_tgid, ts_ns);
    }
    if in_flight.spec & spec::STACK != 0 && user_stack_mode() == stack_mode::DWARF {
        // The record carries the stack: reserve room for the whole window and copy the stack
        // straight into it. STACK_WINDOW is read-only data the verifier knows the value of,
        // which is what lets the reserved size vary with the configuration.
        let window = stack_window().min(MAX_STACK_WINDOW);
        let Some(mut entry) = EVENTS.reserve_bytes(STACK_BYTES_OFFSET + window as usize, 0) else {
            count(counter::RINGBUF_FULL);
            return Ok(());
        };
        // SAFETY: ring-buffer records are 8-byte aligned and at least this long.
        let record = unsafe { &mut *entry.as_mut_ptr().cast::<WithStack>() };
        fill(ctx, &mut record.event, &in_flight, ret, pid_tgid, ts_ns);
        if capture_user_stack(&mut record.stack, &mut record.bytes, window) {
            record.event.header.kind = kind::FD_SYSCALL_USER_STACK;
        } else {
            count(counter::USER_STACK_UNREADABLE);
        }
        entry.submit(wakeup_flags());
    } else {
        let Some(mut entry) = EVENTS.reserve_bytes(size_of::<SyscallEvent>(), 0) else {
            count(counter::RINGBUF_FULL);
            return Ok(());
        };
        // SAFETY: as above.
        let event = unsafe { &mut *entry.as_mut_ptr().cast::<SyscallEvent>() };
        fill(ctx, event, &in_flight, ret, pid_tgid, ts_ns);
        entry.submit(wakeup_flags());
    }
    Ok(())
}

/// The layout of a `kind::FD_SYSCALL_USER_STACK` record (helios_trace_common).
#[repr(C)]
struct WithStack {
    event: SyscallEvent,
    stack: UserStack,
    bytes: [u8; MAX_STACK_WINDOW as usize],
}

/// Offset of the stack bytes in a `kind::FD_SYSCALL_USER_STACK` record.
const STACK_BYTES_OFFSET: usize = size_of::<SyscallEvent>() + size_of::<UserStack>();

/// Everything of a descriptor record but the user stack bytes.
#[inline(always)]
fn fill(
    ctx: &TracePointContext,
    event: &mut SyscallEvent,
    in_flight: &InFlight,
    ret: i64,
    pid_tgid: u64,
    ts_ns: u64,
) {
    let spec = in_flight.spec;
    event.header = header_at(kind::FD_SYSCALL, pid_tgid, ts_ns);
    event.nr = in_flight.nr;
    event.ret = ret;
    event.args = in_flight.args;
    event.deref = 0;
    event.aux_count = 0;
    event.path_len = 0;
    event.flags = 0;
    event.stack_id = STACK_NOT_CAPTURED;
    event.kernel_stack_id = STACK_NOT_CAPTURED;
    if spec & spec::STACK != 0 {
        if user_stack_mode() == stack_mode::FP {
            event.stack_id = stack_id(ctx, BPF_F_USER_STACK as u64);
        }
        if capture_kernel_stacks() {
            event.kernel_stack_id = stack_id(ctx, 0);
        }
    }
    // The path is read at exit, not enter: by now the kernel has copied it (getname), so its
    // page is resident, whereas at enter a not-yet-faulted page makes the read fail.
    if let Some(i) = spec::arg_at(spec, spec::PATH_ARG_SHIFT) {
        read_path(event, arg(&in_flight.args, i));
    }
    if let Some(i) = spec::arg_at(spec, spec::FD_PAIR_ARG_SHIFT) {
        if let Ok(pair) = unsafe { bpf_probe_read_user(arg(&in_flight.args, i) as *const [i32; 2]) } {
            event.aux_fds[0] = pair[0];
            event.aux_fds[1] = pair[1];
            event.aux_count = 2;
        } else {
            event.flags |= syscall_flags::AUX_TRUNCATED;
        }
    }
    if let Some(i) = spec::arg_at(spec, spec::DEREF_ARG_SHIFT) {
        if let Ok(value) = unsafe { bpf_probe_read_user(arg(&in_flight.args, i) as *const u64) } {
            event.deref = value;
            event.flags |= syscall_flags::DEREF_VALID;
        }
    }
    if spec & spec::MSGHDR != 0 {
        collect_scm_rights(event, in_flight.args[1]);
    } else if spec & spec::MMSGHDR != 0 {
        let messages = if ret as usize > MAX_MMSGS {
            event.flags |= syscall_flags::AUX_TRUNCATED;
            MAX_MMSGS
        } else {
            ret as usize
        };
        for m in 0..MAX_MMSGS {
            if m >= messages {
                break;
            }
            collect_scm_rights(event, in_flight.args[1] + m as u64 * MMSGHDR_SIZE);
        }
    }
}

/// When the calling process is a CPython userspace recognised (`PYTHON_PROCS`), submit the
/// calling thread's Python frames as a `kind::PYTHON_STACK` record. A subprogram of its own
/// whose loops are bpf_loop callbacks: the verifier checks each loop body once, where
/// unrolled loops multiplied with the exit program's paths past its instruction limit.
#[inline(never)]
fn python_stack(pid_tgid: u64, ts_ns: u64) {
    let tgid = (pid_tgid >> 32) as u32;
    let Some(offsets) = (unsafe { PYTHON_PROCS.get(&tgid) }).copied() else {
        return;
    };
    let Some(stack) = PYTHON_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU slot: no other program uses it while this one runs on this CPU.
    let stack = unsafe { &mut *stack };
    stack.header = header_at(kind::PYTHON_STACK, pid_tgid, ts_ns);
    stack.frame_count = 0;
    stack.flags = walk_python(&offsets, pid_tgid as u32);
    emit(stack);
}

#[inline(always)]
fn read_user_u64(address: u64) -> Result<u64, i64> {
    Ok(unsafe { bpf_probe_read_user(address as *const u64) }?)
}

/// State of the thread-state search (a bpf_loop context).
#[repr(C)]
struct ThreadSearch {
    tstate: u64,
    tid: u64,
    found: u64,
    thread_id: u32,
    pthread_tid: u32,
    next: u32,
    failed: u32,
}

/// One thread state: is it the caller's? Then stop; else go to the next.
#[inline(never)]
unsafe extern "C" fn search_thread(_index: u64, ctx: *mut c_void) -> i64 {
    let s = unsafe { &mut *(ctx as *mut ThreadSearch) };
    if s.tstate == 0 {
        return 1;
    }
    let Ok(mut id) = read_user_u64(s.tstate + s.thread_id as u64) else {
        s.failed = 1;
        return 1;
    };
    if s.pthread_tid != PY_NO_OFFSET {
        // 3.10: the pthread_t is glibc's `struct pthread *`, which holds the kernel tid.
        match unsafe { bpf_probe_read_user((id + s.pthread_tid as u64) as *const u32) } {
            Ok(tid) => id = tid as u64,
            Err(_) => {
                s.failed = 1;
                return 1;
            }
        }
    }
    if id == s.tid {
        s.found = s.tstate;
        return 1;
    }
    match read_user_u64(s.tstate + s.next as u64) {
        Ok(next) => {
            s.tstate = next;
            0
        }
        Err(_) => {
            s.failed = 1;
            1
        }
    }
}

/// State of the frame walk (a bpf_loop context).
#[repr(C)]
struct FrameWalk {
    offsets: PythonOffsets,
    frame: u64,
    flags: u32,
    reserved: u32,
    /// The current frame's first `frame_read` bytes.
    bytes: [u8; MAX_PYTHON_FRAME_READ as usize],
}

/// The u64 at `offset` of a frame copy (0 past its end).
#[inline(always)]
fn frame_field(bytes: &[u8; MAX_PYTHON_FRAME_READ as usize], offset: u32) -> u64 {
    let offset = offset as usize;
    match bytes.get(offset..offset + 8) {
        Some(field) => u64::from_le_bytes([
            field[0], field[1], field[2], field[3], field[4], field[5], field[6], field[7],
        ]),
        None => 0,
    }
}

/// One frame: copy (code, instruction) unless it is a shim, then go to the previous frame.
/// The frame is read at once (`frame_read` bytes) and its fields taken from the copy.
#[inline(never)]
unsafe extern "C" fn walk_frame(_index: u64, ctx: *mut c_void) -> i64 {
    let w = unsafe { &mut *(ctx as *mut FrameWalk) };
    if w.frame == 0 {
        return 1;
    }
    let Some(stack) = PYTHON_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: the per-CPU slot python_stack is filling.
    let stack = unsafe { &mut *stack };
    let o = &w.offsets;
    let size = o.frame_read.min(MAX_PYTHON_FRAME_READ);
    if size == 0 || unsafe { raw_read_user(w.bytes.as_mut_ptr().cast(), size, w.frame as *const c_void) } != 0
    {
        w.flags |= python_flags::READ_FAILED;
        return 1;
    }
    let skip = o.frame_owner != PY_NO_OFFSET
        && w.bytes.get(o.frame_owner as usize).is_some_and(|owner| *owner as u32 == o.owner_skip);
    if !skip {
        let Some(slot) = stack.frames.get_mut(stack.frame_count as usize) else {
            w.flags |= python_flags::TRUNCATED;
            return 1;
        };
        *slot = PythonFrame {
            code: frame_field(&w.bytes, o.frame_code),
            instr: frame_field(&w.bytes, o.frame_instr),
        };
        stack.frame_count += 1;
    }
    w.frame = frame_field(&w.bytes, o.frame_previous);
    0
}

/// Find the thread state whose thread id is `tid` (not the GIL holder's: CPython releases the
/// GIL around blocking calls), then copy (code object, instruction) of its frames, innermost
/// first, into the scratch record. The layouts are CPython's (Include/cpython/pystate.h,
/// Include/internal/pycore_frame.h); the offsets come from userspace. Returns python_flags.
#[inline(always)]
fn walk_python(o: &PythonOffsets, tid: u32) -> u32 {
    let Ok(interp) = read_user_u64(o.interpreters_head) else {
        return python_flags::READ_FAILED;
    };
    if interp == 0 {
        return python_flags::NO_THREAD;
    }
    let Ok(head) = read_user_u64(interp + o.threads_head as u64) else {
        return python_flags::READ_FAILED;
    };
    let mut search = ThreadSearch {
        tstate: head,
        tid: tid as u64,
        found: 0,
        thread_id: o.tstate_thread_id,
        pthread_tid: o.pthread_tid,
        next: o.tstate_next,
        failed: 0,
    };
    unsafe {
        bpf_loop(
            MAX_PYTHON_THREADS,
            search_thread as *mut c_void,
            (&mut search as *mut ThreadSearch).cast(),
            0,
        )
    };
    if search.failed != 0 {
        return python_flags::READ_FAILED;
    }
    if search.found == 0 {
        return python_flags::NO_THREAD;
    }
    let Ok(mut frame) = read_user_u64(search.found + o.tstate_frame as u64) else {
        return python_flags::READ_FAILED;
    };
    if o.cframe_frame != PY_NO_OFFSET && frame != 0 {
        let Ok(current) = read_user_u64(frame + o.cframe_frame as u64) else {
            return python_flags::READ_FAILED;
        };
        frame = current;
    }
    let mut walk =
        FrameWalk { offsets: *o, frame, flags: 0, reserved: 0, bytes: [0; MAX_PYTHON_FRAME_READ as usize] };
    // Room for shim frames between the real ones; a walk that did not reach the end is cut.
    let loops = (MAX_PYTHON_FRAMES * 2) as u32;
    let done = unsafe { bpf_loop(loops, walk_frame as *mut c_void, (&mut walk as *mut FrameWalk).cast(), 0) };
    if done as u32 >= loops && walk.frame != 0 {
        walk.flags |= python_flags::TRUNCATED;
    }
    walk.flags
}

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

/// Copy the user registers and up to `window` bytes of user stack from sp upward into a
/// record; false when not even the registers could be read.
///
/// The copy stops at the end of the stack's mapping (found with bpf_find_vma), so that a
/// window reaching past the top of a shallow stack does not fault: bpf_probe_read_user fails
/// as a whole, after a page fault, when any byte is unreadable.
#[inline(always)]
fn capture_user_stack(
    stack: &mut UserStack,
    bytes: &mut [u8; MAX_STACK_WINDOW as usize],
    window: u32,
) -> bool {
    stack.stack_len = 0;
    stack.flags = 0;
    let task = unsafe { bpf_get_current_task_btf() };
    // The registers the task entered the kernel with: its user-mode state at the syscall.
    let regs = unsafe { bpf_task_pt_regs(task) };
    let read = unsafe {
        bpf_probe_read_kernel(
            stack.regs.as_mut_ptr().cast(),
            (arch::WORDS * size_of::<u64>()) as u32,
            regs as *const c_void,
        )
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

/// Argument `index` (0..6); out of range reads as 0. Written without indexing so that no
/// bounds-check panic path reaches the verifier.
#[inline(always)]
fn arg(args: &[u64; 6], index: usize) -> u64 {
    args.get(index).copied().unwrap_or(0)
}

#[inline(always)]
fn stack_id(ctx: &TracePointContext, flags: u64) -> i32 {
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

#[inline(always)]
fn read_path(event: &mut SyscallEvent, user_ptr: u64) {
    let len = unsafe {
        bpf_probe_read_user_str(event.path.as_mut_ptr().cast(), PATH_LEN as u32, user_ptr as *const _)
    };
    if len <= 0 {
        event.flags |= syscall_flags::PATH_UNREADABLE;
        count(counter::PATH_UNREADABLE);
        return;
    }
    // The helper counts the NUL and truncates to PATH_LEN (including the NUL).
    event.path_len = (len - 1) as u32;
    if len as usize >= PATH_LEN {
        event.flags |= syscall_flags::PATH_TRUNCATED;
    }
}

/// Append the descriptors of every SCM_RIGHTS control message of a received `user_msghdr`.
/// After recvmsg returns, `msg_controllen` is the length the kernel actually wrote
/// (net/socket.c, ____sys_recvmsg), so only real control messages are walked.
#[inline(always)]
fn collect_scm_rights(event: &mut SyscallEvent, msghdr: u64) {
    let Ok(control) = (unsafe { bpf_probe_read_user((msghdr + MSGHDR_CONTROL_OFFSET) as *const u64) }) else {
        return;
    };
    let Ok(control_len) = (unsafe { bpf_probe_read_user((msghdr + MSGHDR_CONTROLLEN_OFFSET) as *const u64) })
    else {
        return;
    };
    if control == 0 || control_len < CMSG_HEADER_LEN {
        return;
    }
    let mut offset = 0u64;
    for _ in 0..MAX_CMSGS {
        if offset + CMSG_HEADER_LEN > control_len {
            return;
        }
        let cmsg = control + offset;
        let Ok(header) = (unsafe { bpf_probe_read_user(cmsg as *const [i32; 4]) }) else {
            event.flags |= syscall_flags::AUX_TRUNCATED;
            return;
        };
        // struct cmsghdr { size_t cmsg_len; int cmsg_level; int cmsg_type; }
        let cmsg_len = (header[0] as u32 as u64) | ((header[1] as u32 as u64) << 32);
        if cmsg_len < CMSG_HEADER_LEN {
            return;
        }
        if header[2] == SOL_SOCKET && header[3] == SCM_RIGHTS {
            let fds = (cmsg_len - CMSG_HEADER_LEN) / size_of::<i32>() as u64;
            for i in 0..MAX_AUX_FDS as u64 {
                if i >= fds {
                    break;
                }
                let Some(slot) = event.aux_fds.get_mut(event.aux_count as usize) else {
                    event.flags |= syscall_flags::AUX_TRUNCATED;
                    return;
                };
                match unsafe { bpf_probe_read_user((cmsg + CMSG_HEADER_LEN + i * 4) as *const i32) } {
                    Ok(fd) => {
                        *slot = fd;
                        event.aux_count += 1;
                    }
                    Err(_) => {
                        event.flags |= syscall_flags::AUX_TRUNCATED;
                        return;
                    }
                }
            }
            if fds > MAX_AUX_FDS as u64 {
                event.flags |= syscall_flags::AUX_TRUNCATED;
            }
        }
        // CMSG_NXTHDR: lengths are aligned to sizeof(long).
        offset += (cmsg_len + 7) & !7;
    }
}

#[tracepoint]
pub fn close_enter(ctx: TracePointContext) -> u32 {
    let _ = try_close_enter(&ctx);
    0
}

fn try_close_enter(ctx: &TracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_traced((pid_tgid >> 32) as u32) {
        return Ok(());
    }
    let fd: u64 = unsafe { ctx.read_at(ARGS_OFFSET) }?;
    let event = CloseEvent { header: header(kind::CLOSE, pid_tgid), fd: fd as i32, reserved: 0 };
    emit(&event);
    Ok(())
}
