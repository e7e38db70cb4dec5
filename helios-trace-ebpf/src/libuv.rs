//! libuv's TCP handles, by uprobes in the file that has libuv (Node.js links it into its
//! executable; ARCHITECTURE.md, "Handles"). Node makes a connection's socket on a later tick
//! than the call that asked for it (lib/net.js, `lookupAndConnect` defers `internalConnect`
//! with `process.nextTick`), when that call is off the stack; the handle (`new TCP()` in
//! `Socket.prototype.connect`, which calls `uv_tcp_init`) is made within it. So:
//!
//! - `uv_tcp_init` and `uv_tcp_init_ex` entered: a record with the handle and the caller's
//!   stack (the window, or the frame-pointer id, as a descriptor-creating call's);
//! - `uv_tcp_connect` entered and returned: two records around the socket(2) it makes for a
//!   handle without one (src/unix/tcp.c, `maybe_new_socket`), which userspace gives the
//!   handle's stack.
//!
//! Userspace attaches them to each file whose symbols name these functions (at a process's
//! first sight and exec, once per file); the filter is the syscall programs' own.
use core::mem::size_of;

use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    helpers::{bpf_get_current_pid_tgid, generated::bpf_probe_read_kernel},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use helios_trace_common::{
    HandleEvent, MAX_STACK_WINDOW, STACK_NOT_CAPTURED, kind, stack_mode, user_stack_flags,
};

use crate::{
    emit::{emit, finish, header, wakeup_flags},
    filter::is_traced,
    pairs,
    settings::{stack_window, user_stack_mode},
    stacks::{WithStack, capture_stack_window, stack_id},
};

// The user register layout of the architecture the programs are built for.
#[cfg(bpf_target_arch = "aarch64")]
use helios_trace_common::regs_aarch64 as arch;
#[cfg(bpf_target_arch = "x86_64")]
use helios_trace_common::regs_x86_64 as arch;

/// The calling thread's pid and tgid when its handles are followed: a handle's stack is all
/// these records are for (none with `--stacks none`), and only in a traced process.
#[inline(always)]
fn followed_thread() -> Option<u64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let followed = user_stack_mode() != stack_mode::NONE && is_traced((pid_tgid >> 32) as u32);
    if followed {
        // Every record of these programs follows the calls kept of its process: a socket
        // made inside `uv_tcp_connect` before its return's record (pairs.rs).
        pairs::send_kept((pid_tgid >> 32) as u32);
    }
    followed.then_some(pid_tgid)
}

/// `int uv_tcp_init(uv_loop_t*, uv_tcp_t* handle)` and `int uv_tcp_init_ex(uv_loop_t*,
/// uv_tcp_t* handle, unsigned int flags)` entered: the handle is the second argument.
#[uprobe]
pub fn libuv_tcp_init(ctx: ProbeContext) -> u32 {
    finish(try_libuv_tcp_init(&ctx))
}

fn try_libuv_tcp_init(ctx: &ProbeContext) -> Result<(), i64> {
    let Some(pid_tgid) = followed_thread() else { return Ok(()) };
    let handle: u64 = ctx.arg(1).ok_or(0i64)?;
    let mut event = HandleEvent {
        header: header(kind::LIBUV_TCP_HANDLE, pid_tgid),
        handle,
        stack_id: STACK_NOT_CAPTURED,
        reserved: 0,
    };
    if user_stack_mode() != stack_mode::DWARF {
        event.stack_id = stack_id(ctx, BPF_F_USER_STACK as u64);
        emit(&event);
        return Ok(());
    }
    let window = stack_window().min(MAX_STACK_WINDOW);
    let Some(mut entry) = WithStack::<HandleEvent>::reserve(window) else { return Ok(()) };
    let record = WithStack::<HandleEvent>::of(&mut entry);
    event.header.kind = kind::LIBUV_TCP_HANDLE_USER_STACK;
    record.event = event;
    // The probe's registers are the task's user registers at the call (the breakpoint's trap),
    // read straight into the record: a uprobe's program may be preempted, so nothing goes
    // through the per-CPU slots the syscall programs use (SAVED_REGS, STACK_MAPPING).
    let size = (arch::WORDS * size_of::<u64>()) as u32;
    let read = unsafe { bpf_probe_read_kernel(record.stack.regs.as_mut_ptr().cast(), size, ctx.regs.cast()) };
    if read != 0 {
        entry.discard(0);
        return Err(read);
    }
    capture_stack_window(&mut record.stack, &mut record.bytes, window, false);
    record.stack.flags |= user_stack_flags::AT_ENTRY;
    entry.submit(wakeup_flags());
    Ok(())
}

/// `int uv_tcp_connect(uv_connect_t* req, uv_tcp_t* handle, const struct sockaddr*,
/// uv_connect_cb)` entered: the handle is the second argument.
#[uprobe]
pub fn libuv_tcp_connect(ctx: ProbeContext) -> u32 {
    finish(try_libuv_tcp_connect(&ctx))
}

fn try_libuv_tcp_connect(ctx: &ProbeContext) -> Result<(), i64> {
    let Some(pid_tgid) = followed_thread() else { return Ok(()) };
    let handle: u64 = ctx.arg(1).ok_or(0i64)?;
    emit(&HandleEvent {
        header: header(kind::LIBUV_TCP_CONNECT, pid_tgid),
        handle,
        stack_id: STACK_NOT_CAPTURED,
        reserved: 0,
    });
    Ok(())
}

/// `uv_tcp_connect` returned: the socket it made, if any, is before this record.
#[uretprobe]
pub fn libuv_tcp_connected(_ctx: RetProbeContext) -> u32 {
    let Some(pid_tgid) = followed_thread() else { return 0 };
    emit(&HandleEvent {
        header: header(kind::LIBUV_TCP_CONNECT_RETURN, pid_tgid),
        handle: 0,
        stack_id: STACK_NOT_CAPTURED,
        reserved: 0,
    });
    0
}
