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
use core::mem::size_of;

use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_user,
        generated::{bpf_ktime_get_boot_ns, bpf_probe_read_user_str},
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use helios_trace_common::{
    CloseEvent, InFlight, MAX_AUX_FDS, MAX_STACK_WINDOW, PATH_LEN, STACK_NOT_CAPTURED, SyscallEvent,
    UserStack, counter, kind, spec, stack_mode, syscall_flags,
};

use crate::{
    emit::{count, emit, finish, header, header_at, wakeup_flags},
    filter::is_traced,
    maps::{EVENTS, IN_FLIGHT, SYSCALL_SPECS},
    python::python_stack,
    settings::{capture_kernel_stacks, stack_window, user_stack_mode},
    stacks::{capture_user_stack, stack_id},
};

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

#[tracepoint]
pub fn fd_syscall_enter(ctx: TracePointContext) -> u32 {
    finish(try_fd_syscall_enter(&ctx))
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
    finish(try_fd_syscall_exit(&ctx))
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
        // straight into it. The window is a field of the read-only settings, whose value the
        // verifier knows (settings.rs), which is what lets the reserved size vary with the
        // configuration.
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

/// Argument `index` (0..6); out of range reads as 0. Written without indexing so that no
/// bounds-check panic path reaches the verifier.
#[inline(always)]
fn arg(args: &[u64; 6], index: usize) -> u64 {
    args.get(index).copied().unwrap_or(0)
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
    finish(try_close_enter(&ctx))
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
