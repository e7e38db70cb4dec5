//! Descriptor syscalls: one raw tracepoint on `sys_exit` makes the record of every call that
//! creates, duplicates, passes, re-flags or closes descriptors (`close` at its exit too: see
//! `close_exit` for the number another thread may already own by then).
//!
//! The raw tracepoint (include/trace/events/syscalls.h, `TRACE_EVENT_SYSCALL(sys_exit)`) gets
//! `(struct pt_regs *regs, long ret)`, where `regs` are the task's saved user registers. It
//! runs for every syscall of every task (the kernel's per-syscall `syscalls/sys_*_X` tracepoints
//! are built on the same two hooks, plus a record per call: BENCHMARKS.md, "The floor"), so
//! the program first looks the number up in `SYSCALL_SPECS` and returns at once for a call
//! it does not trace.
//!
//! The program is built twice from one body, told apart by `const BTF: bool`: as a raw
//! tracepoint program, and as a BTF tracepoint (`tp_btf`: the same hook, program type
//! tracing), which the loader attaches where the kernel has BTF (helios-trace/src/sys/loader.rs,
//! `attach_syscall_hook`). There the verifier knows `regs` is a `struct pt_regs *` and the
//! current task a `struct task_struct *`, so the syscall number (read on every syscall of the
//! machine), the saved registers and the compat flag are loads instead of
//! `bpf_probe_read_kernel` calls (BENCHMARKS.md, "Syscall programs as BTF tracepoints"). A
//! load that faults reads 0 where the helper fails; neither happens: `pt_regs` lies at the top of
//! the task's own kernel stack. The loader attaches the twins on x86_64 only: on arm64 the
//! `syscallno` word `exit_nr` and `saved_regs` read is an s32 and a u32, which a 64-bit load
//! overruns (kernel/bpf/btf.c, btf_struct_walk, refuses it).
//!
//! Every call is seen at exit only: the arguments are still in the saved registers then
//! (`helios_trace_common::regs_x86_64::SYSCALL_ARGS`: nothing overwrites them; aarch64 keeps
//! the first in orig_x0), so no enter program and no in-flight map are needed.
//!
//! What each syscall number needs (path string, fd pair, SCM_RIGHTS, ...) comes from the
//! `SYSCALL_SPECS` array that userspace fills, so the architecture's numbering lives in one
//! place (helios-trace/src/sys/syscalls.rs) and these programs stay generic.
use core::{
    ffi::c_void,
    mem::size_of,
    ptr::{null_mut, read_volatile, write_volatile},
};

use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{
            bpf_ktime_get_boot_ns, bpf_loop, bpf_probe_read_kernel as bpf_probe_read_kernel_raw,
            bpf_probe_read_user_str,
        },
    },
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext, tracing::StackIdContext},
};
use helios_trace_common::{
    CLOSE_NOT_TIMED, ChainRecord, CloseEvent, MAX_AUX_FDS, MAX_STACK_WINDOW, PAIRS_FLUSH_FD, PATH_LEN,
    STACK_NOT_CAPTURED, SavedRegs, SyscallEvent, chain_flags, close_flags, counter, kind, learned_chains,
    spec, stack_mode, syscall_flags,
};

use crate::{
    emit::{count, finish, header_at, wakeup_flags},
    filter::is_traced,
    goroutines::creator_pc,
    maps::{EVENTS, PAIR_SCRATCH, SAVED_REGS, SCM_WALK, SYSCALL_SPECS},
    pairs,
    python::{python_stack, python_walked},
    settings::{self, kernel_offsets, learned_chains, stack_window, user_stack_mode},
    stacks::{WithStack, capture_user_stack, kernel_word, learned_chain, stack_id, start_stack_copy},
};

// The user register layout of the architecture the programs are built for.
#[cfg(bpf_target_arch = "aarch64")]
use helios_trace_common::regs_aarch64 as arch;
#[cfg(bpf_target_arch = "x86_64")]
use helios_trace_common::regs_x86_64 as arch;

// include/uapi/asm-generic/fcntl.h, include/uapi/linux/fcntl.h, include/uapi/asm-generic/ioctls.h
const F_DUPFD: u64 = 0;
const F_SETFD: u64 = 2;
const F_DUPFD_CLOEXEC: u64 = 1030;
const FIONCLEX: u64 = 0x5450;
const FIOCLEX: u64 = 0x5451;

// include/linux/socket.h: struct user_msghdr and struct cmsghdr on 64-bit.
const MSGHDR_CONTROL_OFFSET: u64 = 32;
const MSGHDR_CONTROLLEN_OFFSET: u64 = 40;
const _: () = assert!(MSGHDR_CONTROLLEN_OFFSET == MSGHDR_CONTROL_OFFSET + 8);
const MMSGHDR_SIZE: u64 = 64;
const CMSG_HEADER_LEN: u64 = 16;
const SOL_SOCKET: i32 = 1;
const AF_UNIX: u16 = 1;
const SCM_RIGHTS: i32 = 1;
/// Messages walked per recvmmsg, and steps of the walk (`scm_step`: a message's first control
/// message is read with its opening, each further one is a step); anything beyond is flagged
/// AUX_TRUNCATED, and the tracer reconciles the process of such a call on a Unix socket at a
/// once-a-second tick (observe/session.rs, `reconcile_cut_short`); such a call on a Unix
/// socket, or one whose family cannot be read, is recorded even when it passed no descriptor (a
/// recvmmsg of more than 8 datagrams: a walk of every datagram of a batch would grow with it, a
/// read or more each; on a socket of another family it is not walked: `received_nothing`). A
/// UDP server that asks for several ancillary data (packet info, TTL, a timestamp, GRO
/// segments) gets as many control messages a datagram: room for 8 datagrams of 5 each, or fewer
/// datagrams of more.
const MAX_MMSGS: u64 = 8;
const MAX_SCM_STEPS: u32 = 40;

/// What the exit program knows of the call: its number, spec and arguments.
struct Call {
    nr: u32,
    spec: u32,
    args: [u64; 6],
    /// The creator of the calling goroutine, in a Go process (goroutines.rs); else 0.
    creator_pc: u64,
}

/// The spec of syscall `nr`; 0 (not traced) for a number outside the array.
#[inline(always)]
fn spec_of(nr: u64) -> u32 {
    if nr >= helios_trace_common::MAX_SYSCALL_NR as u64 {
        return 0;
    }
    SYSCALL_SPECS.get(nr as u32).copied().unwrap_or(0)
}

/// Word `index` of the saved user registers. From a BTF tracepoint (`BTF`) a load: the
/// verifier knows `regs` is a `struct pt_regs *` and checks the word is one of its members
/// (kernel/bpf/btf.c, btf_struct_access; a fault reads 0, the load made a `BPF_PROBE_MEM`
/// one). From a raw tracepoint `regs` is a number to it, read with a helper call.
#[inline(always)]
fn reg<const BTF: bool>(regs: *const u64, index: usize) -> Result<u64, i64> {
    if BTF {
        // SAFETY: see above; `index` is a constant within the struct at every call.
        return Ok(unsafe { read_volatile(regs.wrapping_add(index)) });
    }
    unsafe { bpf_probe_read_kernel(regs.wrapping_add(index)) }.map_err(i64::from)
}

/// Whether a traced call's stack is walked with the rules userspace learned (`--stacks dwarf`,
/// chains not off): the one condition both for starting the walk's copy of the stack
/// (`start_stack_copy`) and for the walk, which takes where it starts from what the start kept
/// in its per-CPU slot (stacks.rs, `learned_chain`): a walk without that start would read the
/// last call's stack, hint and exec time. Loads of the frozen settings (settings.rs), so cheap to ask twice.
#[inline(always)]
fn learned_walk(spec: u32) -> bool {
    spec & spec::STACK != 0
        && user_stack_mode() == stack_mode::DWARF
        && learned_chains() != learned_chains::OFF
}

/// The registers a traced call's records are made from, copied from the saved `pt_regs` (in
/// one read; from a BTF tracepoint a load per word, as `reg` says), where the six arguments, pc, sp and the frame pointer (and in a Go process the
/// goroutine register and sp again) were a read of a word each (BENCHMARKS.md, "Reads in
/// bulk"). On x86_64 that is all of `struct pt_regs` (21 words, at the top of the task's
/// kernel stack: task_pt_regs); on aarch64 `user_pt_regs` and the orig_x0 and syscallno that
/// follow it.
#[inline(always)]
fn saved_regs<const BTF: bool>(regs: *const u64) -> Result<&'static SavedRegs, i64> {
    #[cfg(bpf_target_arch = "x86_64")]
    const READ_WORDS: usize = arch::WORDS;
    #[cfg(bpf_target_arch = "aarch64")]
    const READ_WORDS: usize = arch::SYSCALLNO + 1;
    let copy = SAVED_REGS.get_ptr_mut(0).ok_or(0i64)?;
    if BTF {
        let to = copy.cast::<u64>();
        for word in 0..READ_WORDS {
            // SAFETY: as `reg`'s; `to` is the per-CPU slot, as below.
            unsafe { write_volatile(to.add(word), read_volatile(regs.wrapping_add(word))) };
        }
        return Ok(unsafe { &*copy });
    }
    let size = (READ_WORDS * size_of::<u64>()) as u32;
    let read = unsafe { bpf_probe_read_kernel_raw(copy.cast(), size, regs.cast()) };
    if read != 0 {
        return Err(read);
    }
    // SAFETY: a per-CPU slot: no other program uses it while this one runs on this CPU.
    Ok(unsafe { &*copy })
}

/// The syscall number at `sys_exit`, from the saved registers.
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
fn exit_nr<const BTF: bool>(regs: *const u64) -> Result<u64, i64> {
    reg::<BTF>(regs, arch::ORIG_AX)
}

#[cfg(bpf_target_arch = "aarch64")]
#[inline(always)]
fn exit_nr<const BTF: bool>(regs: *const u64) -> Result<u64, i64> {
    // syscallno is an s32 in the low half of its word (little-endian).
    Ok(reg::<BTF>(regs, arch::SYSCALLNO)? as u32 as u64)
}

/// Whether the current syscall is a 32-bit one (ia32 emulation: `int $0x80` or a 32-bit
/// process), whose numbers are not the native table's: the kernel's own syscall tracepoints
/// skip them (kernel/trace/trace_syscalls.c, trace_get_syscall_nr), and so do we.
/// `in_ia32_syscall()` (arch/x86/include/asm/compat.h) is `TS_COMPAT` (0x0002, asm/thread_info.h)
/// in `current_thread_info()->status`; `thread_info` opens `task_struct` (THREAD_INFO_IN_TASK)
/// and `status` follows `flags` and `syscall_work` (two unsigned longs, since Linux 5.11).
/// It is set at entry and cleared on the way back to user mode, after the exit tracepoint
/// (arch/x86/include/asm/entry-common.h, arch_exit_to_user_mode_prepare).
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
fn compat_syscall<const BTF: bool>(task: u64) -> bool {
    const THREAD_INFO_STATUS_OFFSET: usize = 16;
    const TS_COMPAT: u32 = 0x0002;
    let status = (task as *const u8).wrapping_add(THREAD_INFO_STATUS_OFFSET) as *const u32;
    let status: u32 = if BTF {
        // A load, as `reg` says (`current_task`).
        unsafe { read_volatile(status) }
    } else {
        unsafe { bpf_probe_read_kernel(status) }.unwrap_or(0)
    };
    status & TS_COMPAT != 0
}

/// aarch64's 32-bit tasks (TIF_32BIT) are not told apart yet: no arm64 machine to test on.
#[cfg(bpf_target_arch = "aarch64")]
#[inline(always)]
fn compat_syscall<const BTF: bool>(_task: u64) -> bool {
    false
}

/// `compat_syscall` of the current task, taken only where the check reads it (not on aarch64).
#[inline(always)]
fn current_is_compat<const BTF: bool>() -> bool {
    #[cfg(bpf_target_arch = "x86_64")]
    let compat = compat_syscall::<BTF>(current_task::<BTF>());
    #[cfg(bpf_target_arch = "aarch64")]
    let compat = false;
    compat
}

/// The current task. From a BTF tracepoint (`BTF`) a `struct task_struct *` the verifier knows
/// (kernel/trace/bpf_trace.c, bpf_get_current_task_btf), whose fields are loads it checks; from
/// a raw one an address to read with helper calls. Taken once per record and handed on: each
/// call of the helper was ~17 ns of a close here (BENCHMARKS.md, "The close's clock").
#[inline(always)]
fn current_task<const BTF: bool>() -> u64 {
    if BTF {
        unsafe { aya_ebpf::helpers::generated::bpf_get_current_task_btf() as u64 }
    } else {
        unsafe { aya_ebpf::helpers::generated::bpf_get_current_task() }
    }
}

/// A traced syscall returns: the record of what it made.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn fd_syscall_exit(ctx: RawTracePointContext) -> u32 {
    finish(try_fd_syscall_exit::<false, _>(&ctx, ctx.arg(0), ctx.arg(1)))
}

/// `fd_syscall_exit` as a BTF tracepoint (the loader's choice where the kernel has BTF).
#[btf_tracepoint(function = "sys_exit")]
pub fn fd_syscall_exit_btf(ctx: BtfTracePointContext) -> u32 {
    finish(try_fd_syscall_exit::<true, _>(&ctx, ctx.arg(0), ctx.arg(1)))
}

fn try_fd_syscall_exit<const BTF: bool, C: StackIdContext>(
    ctx: &C,
    regs: *const u64,
    ret: i64,
) -> Result<(), i64> {
    let nr = exit_nr::<BTF>(regs)?;
    let spec = spec_of(nr);
    if spec & (spec::TRACED | spec::CLOSE) == 0 {
        return Ok(());
    }
    if spec & spec::CLOSE != 0 {
        const EBADF: i64 = 9;
        if ret == -EBADF {
            // Nothing was closed; or the tracer asks for what `PAIRS` keeps. From here, not from
            // `close_exit`: its frame and the slots' walk's callback's together were over the
            // verifier's 512 bytes of stack.
            return flush_if_asked::<BTF>(regs);
        }
        return close_exit::<BTF>(regs);
    }
    if ret < 0 {
        return Ok(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_traced((pid_tgid >> 32) as u32) || current_is_compat::<BTF>() {
        return Ok(());
    }
    let saved = saved_regs::<BTF>(regs)?;
    let mut args = [0u64; 6];
    for (arg, index) in args.iter_mut().zip(arch::SYSCALL_ARGS) {
        *arg = saved[index];
    }
    // fcntl and ioctl are frequent and mostly irrelevant: keep only the commands that create a
    // descriptor or change its close-on-exec flag.
    if spec & spec::FCNTL_FILTER != 0 && !matches!(args[1], F_DUPFD | F_DUPFD_CLOEXEC | F_SETFD) {
        return Ok(());
    }
    if spec & spec::IOCTL_FILTER != 0 && !matches!(args[1] as u32 as u64, FIOCLEX | FIONCLEX) {
        return Ok(());
    }
    // Most received messages pass no descriptor (every datagram a UDP server reads by recvmsg):
    // nothing is opened, so nothing more is done: no stack, no Python walk, no record. Those
    // that pass some keep them in `SCM_WALK` for the record (`fill`).
    if received_nothing::<BTF>(spec, args[0], args[1], ret) {
        return Ok(());
    }
    // A site's creator needs a site: none without stacks.
    let creator_pc = if spec & spec::STACK != 0 && user_stack_mode() != stack_mode::NONE {
        creator_pc(saved, (pid_tgid >> 32) as u32)
    } else {
        0
    };
    let call = Call { nr: nr as u32, spec, args, creator_pc };
    // One timestamp for the Python stack and the record it belongs to: userspace pairs them by
    // (tid, ts_ns).
    let ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    // The C stack a learned walk reads, its copy started before the Python walk, which reads a
    // word of it too (stacks.rs, `stack_word`). The settings are read again where they are
    // used (loads of the frozen settings): kept across the Python walk's call, they were 16
    // bytes of this program's stack, over the verifier's 512 for the two together.
    let stack_copied = learned_walk(spec)
        && start_stack_copy(saved, stack_window().min(MAX_STACK_WINDOW), (pid_tgid >> 32) as u32);
    // A Python record needs no kept call sent before it: userspace pairs it with its
    // descriptor's record by (thread, time) whatever comes between (pairs.rs).
    if spec & spec::STACK != 0 && user_stack_mode() != stack_mode::NONE {
        python_stack(pid_tgid, ts_ns, stack_copied);
    }
    let tgid = (pid_tgid >> 32) as u32;
    if spec & spec::STACK != 0 && user_stack_mode() == stack_mode::DWARF {
        // `learned_walk` again, not `stack_copied` (kept across the call, 8 bytes more of this
        // stack): the copy was started under the same condition (its map slot is always there,
        // and `learned_chain` needs the same slot).
        if learned_walk(spec)
            && let Some(scratch) = PAIR_SCRATCH.get_ptr_mut(0)
        {
            // A chain the learned rules walk to its end is the record's stack (520 bytes of
            // addresses instead of a window of several KiB for userspace to unwind). Walked in
            // this CPU's scratch record, whether the call is then kept (pairs.rs) or sent: the
            // verifier checks the walk once for each place the program has it and for each
            // state it comes there with, and a second walk, into a reserved record for the
            // calls not kept, or whether a Python record was sent kept in a register across
            // the walk, was 68,000 instructions more to verify (150 ms more to start).
            // SAFETY: this CPU's slot: no other program uses it while this one runs here.
            let record = unsafe { &mut *scratch };
            if learned_chain(&mut record.chain, saved, tgid) {
                fill::<BTF, _>(ctx, &mut record.event, &call, ret, pid_tgid, ts_ns);
                record.event.header.kind = kind::FD_SYSCALL_CHAIN;
                let shadow = learned_chains() == learned_chains::SHADOW;
                if spec & spec::PAIRABLE != 0 && pairs::keeping() && !python_walked(pid_tgid, ts_ns) {
                    pairs::keep_or_send(scratch, tgid, ret, ts_ns);
                    return Ok(());
                }
                pairs::send_kept(tgid);
                if shadow {
                    // The window follows, for userspace to compare the two.
                    record.chain.flags |= chain_flags::SHADOW;
                }
                let flags = if shadow { 0 } else { wakeup_flags() };
                if EVENTS.output::<ChainRecord>(&*record, flags).is_err() {
                    count(counter::RINGBUF_FULL);
                    return Ok(());
                }
                if !shadow {
                    return Ok(());
                }
            }
        }
        // The record carries the stack: reserve room for the whole window and copy the stack
        // straight into it.
        pairs::send_kept(tgid);
        let window = stack_window().min(MAX_STACK_WINDOW);
        let Some(mut entry) = WithStack::<SyscallEvent>::reserve(window) else { return Ok(()) };
        let record = WithStack::<SyscallEvent>::of(&mut entry);
        fill::<BTF, _>(ctx, &mut record.event, &call, ret, pid_tgid, ts_ns);
        capture_user_stack(&mut record.stack, &mut record.bytes, window, saved);
        record.event.header.kind = kind::FD_SYSCALL_USER_STACK;
        entry.submit(wakeup_flags());
    } else {
        pairs::send_kept(tgid);
        let Some(mut entry) = EVENTS.reserve_bytes(size_of::<SyscallEvent>(), 0) else {
            count(counter::RINGBUF_FULL);
            return Ok(());
        };
        // SAFETY: as above.
        let event = unsafe { &mut *entry.as_mut_ptr().cast::<SyscallEvent>() };
        fill::<BTF, _>(ctx, event, &call, ret, pid_tgid, ts_ns);
        entry.submit(wakeup_flags());
    }
    Ok(())
}

/// `close` returned `-EBADF`: when the tracer closed `PAIRS_FLUSH_FD`, send what every slot of
/// `PAIRS` keeps (pairs.rs). A function of its own, with a frame of its own, for the exit
/// program's, which the verifier adds to its callees' (512 bytes in all).
#[inline(never)]
fn flush_if_asked<const BTF: bool>(regs: *const u64) -> Result<(), i64> {
    if reg::<BTF>(regs, arch::SYSCALL_ARGS[0])? == PAIRS_FLUSH_FD as u64
        && (bpf_get_current_pid_tgid() >> 32) as u32 == settings::tracer_tgid()
    {
        pairs::send_all_kept();
    }
    Ok(())
}

/// `close` returned other than with `-EBADF` (the caller's test): its record. fs/open.c, `close`: the number is
/// released first (`file_close_fd`), and only `-EBADF` says it was not open; an error of the
/// flush after it (`-EINTR`, `-EIO`) still released it. By this exit another thread may have
/// been given the same number and its record may be ahead of this one in the ring: the record
/// says whether the number is taken again now (`number_taken`), and the table keeps the
/// descriptor such an open replaced for this close (helios-trace/src/model/fdtable.rs). So no
/// program runs at `sys_enter`, where every syscall of the machine paid for one
/// (BENCHMARKS.md, "Closes seen at exit").
///
/// A function of its own (a BPF-to-BPF call per close): inlined, it made the kernel take 80 ms
/// longer to verify the program (215 against 296 ms in `BPF_PROG_LOAD`, `strace -T`), for
/// about as many instructions verified, through what it did to the code of the rest.
#[inline(never)]
fn close_exit<const BTF: bool>(regs: *const u64) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_traced(tgid) {
        return Ok(());
    }
    let task = current_task::<BTF>();
    if compat_syscall::<BTF>(task) {
        return Ok(());
    }
    let fd = reg::<BTF>(regs, arch::SYSCALL_ARGS[0])?;
    // The close of an open a slot of its process keeps: counted there (pairs.rs says why the
    // number is read between the slot's read and its take).
    let kept = pairs::slot_keeping(tgid, fd);
    if kept != 0 && number_taken::<BTF>(task, fd) == 0 && pairs::count_pair(tgid, kept) {
        return Ok(());
    }
    pairs::send_kept(tgid);
    // The record's place in the ring first, the slot read after: a number another thread
    // takes after the read (an open that reserved it may not have installed it yet) is then
    // taken by a call whose record comes after this one (its exit, and its reservation, follow
    // its `fd_install`).
    let Some(mut entry) = EVENTS.reserve::<CloseEvent>(0) else {
        count(counter::RINGBUF_FULL);
        return Ok(());
    };
    let flags = number_taken::<BTF>(task, fd);
    // No clock read (CloseEvent says why): userspace stamps the record.
    let header = header_at(kind::CLOSE, pid_tgid, CLOSE_NOT_TIMED);
    entry.write(CloseEvent { header, fd: fd as i32, flags });
    entry.submit(wakeup_flags());
    Ok(())
}

/// Whether a file is installed at `fd` in the current task's table, as `close_flags`.
#[inline(always)]
fn number_taken<const BTF: bool>(task: u64, fd: u64) -> u32 {
    match installed_file::<BTF>(task, fd) {
        Some(0) => 0,
        Some(_) => close_flags::NUMBER_TAKEN,
        None => close_flags::NUMBER_UNREAD,
    }
}

/// The `i_mode` of the file an open installed at `fd` (`file->f_inode->i_mode`,
/// include/linux/fs.h; an `O_PATH` file has its inode too, fs/open.c `do_dentry_open`), read
/// at the open's exit; 0 when not read. Between the open's `fd_install` and this read another
/// thread could close the number and open another file there: its mode would be read. A wider
/// window than a close's (`number_taken` reads at once): this read comes after the Python and
/// the learned walks and the record's reservation, a few µs at most.
///
/// A function of its own (a BPF-to-BPF call) for the three places that fill a record: its few
/// bytes of stack are then its own, not more of the exit program's, which is at the verifier's
/// 512 with the stack walks' (syscalls.rs, `try_fd_syscall_exit`).
#[inline(never)]
fn installed_mode<const BTF: bool>(fd: u64) -> u32 {
    let offsets = kernel_offsets();
    if !offsets.file_modes() {
        return 0;
    }
    let file = match installed_file::<BTF>(current_task::<BTF>(), fd) {
        Some(file) if file != 0 => file,
        _ => return 0,
    };
    u32::from(file_mode(file).unwrap_or(0))
}

/// The mode of `file`'s inode (`file->f_inode->i_mode`, include/linux/fs.h), when
/// `KernelOffsets::file_modes`.
#[inline(always)]
fn file_mode(file: u64) -> Option<u16> {
    let offsets = kernel_offsets();
    let inode = kernel_pointer(file, offsets.file_inode)?;
    unsafe { bpf_probe_read_kernel(kernel_field(inode, offsets.inode_mode) as *const u16) }.ok()
}

/// The address of the member at `offset` of a kernel struct at `at`.
#[inline(always)]
fn kernel_field(at: u64, offset: u32) -> *const u8 {
    (at as *const u8).wrapping_add(offset as usize)
}

/// The pointer at `offset` of a kernel struct at `at`, read with a helper; None when it cannot
/// be read or is null.
#[inline(always)]
fn kernel_pointer(at: u64, offset: u32) -> Option<u64> {
    unsafe { bpf_probe_read_kernel(kernel_field(at, offset) as *const u64) }.ok().filter(|&to| to != 0)
}

/// The address family of the socket installed at `fd` in the current task's table: its file's
/// inode is a socket's (`S_IFSOCK`), the file's `private_data` its `struct socket` (net/socket.c,
/// `sock_alloc_file`), whose `sk` opens with `struct sock_common` and its `skc_family`
/// (include/net/sock.h). None when the offsets are not known, the table or a pointer cannot be
/// read, or the file at `fd` is not a socket's (another thread may have closed the number and
/// opened another file there since the call returned). Such a thread may have put a socket of
/// another family there too: then a Unix socket's batch is taken for one that received nothing,
/// and what it passed is found by the next periodic reconciliation only.
#[inline(always)]
fn socket_family<const BTF: bool>(fd: u64) -> Option<u16> {
    const S_IFMT: u16 = 0o170000;
    const S_IFSOCK: u16 = 0o140000;
    let offsets = kernel_offsets();
    if !offsets.socket_families() {
        return None;
    }
    let file = installed_file::<BTF>(current_task::<BTF>(), fd).filter(|&file| file != 0)?;
    if file_mode(file)? & S_IFMT != S_IFSOCK {
        return None;
    }
    let sock = kernel_pointer(kernel_pointer(file, offsets.file_private_data)?, offsets.socket_sk)?;
    unsafe { bpf_probe_read_kernel(kernel_field(sock, offsets.sock_family) as *const u16) }.ok()
}

/// The file installed at `fd` in the current task's table (`files->fdt->fd[fd]`,
/// include/linux/fdtable.h; `fd_install` stores it, `file_close_fd` clears it): 0 when none,
/// None when the table could not be read. The pointers to the slot array are loads from a BTF
/// tracepoint (`task` is the verifier's `struct task_struct *`, `current_task`, the offsets
/// constants: as stacks.rs `current_mapping_key`), helper reads from a raw one; the slot itself
/// a helper read (the array's index is not a constant). `fd` is below `max_fds`: it was open,
/// and a table only grows (fs/file.c, `expand_fdtable`).
#[inline(always)]
fn installed_file<const BTF: bool>(task: u64, fd: u64) -> Option<u64> {
    let offsets = kernel_offsets();
    if !offsets.fd_slots() || fd > i32::MAX as u64 {
        return None;
    }
    let pointer = |at: u64, offset: u32| -> u64 {
        if BTF {
            // SAFETY: a load the verifier checks (see above); a fault reads 0.
            unsafe { kernel_word(at as *const u8, offset) }
        } else {
            kernel_pointer(at, offset).unwrap_or(0)
        }
    };
    let files = pointer(task, offsets.task_files);
    let table = if files == 0 { 0 } else { pointer(files, offsets.files_fdt) };
    let slots = if table == 0 { 0 } else { pointer(table, offsets.fdtable_fd) };
    if slots == 0 {
        return None;
    }
    unsafe { bpf_probe_read_kernel((slots as *const u64).wrapping_add(fd as usize)) }.ok()
}

/// Everything of a descriptor record but the user stack bytes.
#[inline(always)]
fn fill<const BTF: bool, C: StackIdContext>(
    ctx: &C,
    event: &mut SyscallEvent,
    call: &Call,
    ret: i64,
    pid_tgid: u64,
    ts_ns: u64,
) {
    let spec = call.spec;
    event.header = header_at(kind::FD_SYSCALL, pid_tgid, ts_ns);
    event.nr = call.nr;
    event.ret = ret;
    event.args = call.args;
    event.deref = 0;
    event.aux_count = 0;
    event.path_len = 0;
    event.flags = 0;
    event.stack_id = STACK_NOT_CAPTURED;
    event.mode = if spec & spec::INODE_MODE != 0 { installed_mode::<BTF>(ret as u64) } else { 0 };
    event.creator_pc = call.creator_pc;
    if spec & spec::STACK != 0 && user_stack_mode() == stack_mode::FP {
        event.stack_id = stack_id(ctx, BPF_F_USER_STACK as u64);
    }
    // The path is read at exit, not enter: by now the kernel has copied it (getname), so its
    // page is resident, whereas at enter a not-yet-faulted page makes the read fail.
    if let Some(i) = spec::arg_at(spec, spec::PATH_ARG_SHIFT) {
        read_path(event, arg(&call.args, i));
    }
    if let Some(i) = spec::arg_at(spec, spec::FD_PAIR_ARG_SHIFT) {
        if let Ok(pair) = unsafe { bpf_probe_read_user(arg(&call.args, i) as *const [i32; 2]) } {
            event.aux_fds[0] = pair[0];
            event.aux_fds[1] = pair[1];
            event.aux_count = 2;
        } else {
            event.flags |= syscall_flags::AUX_TRUNCATED;
        }
    }
    if let Some(i) = spec::arg_at(spec, spec::DEREF_ARG_SHIFT) {
        if let Ok(value) = unsafe { bpf_probe_read_user(arg(&call.args, i) as *const u64) } {
            event.deref = value;
            event.flags |= syscall_flags::DEREF_VALID;
        }
    }
    if spec & (spec::MSGHDR | spec::MMSGHDR) != 0
        && let Some(walk) = SCM_WALK.get_ptr(0)
    {
        // SAFETY: this CPU's slot, which `received_nothing` filled for this call.
        let walk = unsafe { &*walk };
        // Eight words, each a load and a store (volatile, so that they stay so): as an array's
        // assignment, the copy was a call of the byte-at-a-time `memmove` this target links in,
        // 64 loads and stores (`bpftool prog dump xlated`). Both arrays start on a word.
        let (from, to) = (walk.fds.as_ptr().cast::<u64>(), event.aux_fds.as_mut_ptr().cast::<u64>());
        for word in 0..MAX_AUX_FDS / 2 {
            // SAFETY: within both arrays (MAX_AUX_FDS i32s are MAX_AUX_FDS / 2 words).
            unsafe { write_volatile(to.add(word), read_volatile(from.add(word))) };
        }
        event.aux_count = walk.count;
        if walk.truncated != 0 {
            event.flags |= syscall_flags::AUX_TRUNCATED;
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

/// Collect the descriptors of every SCM_RIGHTS control message recvmsg (`spec::MSGHDR`: one
/// `user_msghdr` at `msghdr`) or recvmmsg (`spec::MMSGHDR`: `ret` of them, each the start of a
/// `struct mmsghdr`) received, in this CPU's `SCM_WALK`, for `fill`. After the call returns,
/// `msg_controllen` is the length the kernel actually wrote (net/socket.c, ____sys_recvmsg), so
/// only real control messages are walked.
///
/// True when the call received no descriptor and every control message was walked; false for
/// every other call, and for a walk that stopped short (its record flagged AUX_TRUNCATED).
///
/// A step of the walk per call of a `bpf_loop` callback (`scm_step`), and a descriptor per call
/// of another (`scm_fd`): the verifier checks each callback for all its calls at once. As loops
/// in `fill`, which the program has three times (once per kind of record it sends), a loop of
/// messages around a loop of control messages around a loop of descriptors, with the count so
/// far in a register the verifier knew, were checked again for every count at every step: more
/// than half of the exit program's ~166,000 instructions verified, and about half of startup
/// (BENCHMARKS.md, "Descriptors passed, walked by callbacks"). A function of its own: what its
/// tests of `spec` and `ret` teach the verifier stays in its frame; inlined, they split the
/// rest of the program's states by the call's spec, and the verifier checked the rest again
/// for each (~250,000 instructions instead of ~60,000).
///
/// A recvmmsg of more messages than the walk takes, on a socket of another family than Unix,
/// received nothing either, and is not walked: only a Unix socket passes descriptors (net/core/
/// scm.c, `__scm_send` refuses SCM_RIGHTS from any other family). A UDP server's batches of 16
/// or 64 datagrams were each a record, with a stack, before.
#[inline(never)]
fn received_nothing<const BTF: bool>(spec: u32, socket: u64, msghdr: u64, ret: i64) -> bool {
    if spec & (spec::MSGHDR | spec::MMSGHDR) == 0 {
        return false;
    }
    // `ret` is not negative here: a message count for recvmmsg.
    let (messages, truncated) = if spec & spec::MSGHDR != 0 {
        (1, false)
    } else {
        if ret as u64 > MAX_MMSGS && socket_family::<BTF>(socket).is_some_and(|family| family != AF_UNIX) {
            return true;
        }
        ((ret as u64).min(MAX_MMSGS), ret as u64 > MAX_MMSGS)
    };
    let Some(walk) = SCM_WALK.get_ptr_mut(0) else { return false };
    // SAFETY: this CPU's slot: no other program uses it while this one runs here. Written
    // through the pointer before the loop and read through a reference made after it, never
    // through one held across it: its callbacks write the slot too.
    unsafe {
        write_volatile(&raw mut (*walk).first, msghdr);
        write_volatile(&raw mut (*walk).messages, messages);
        write_volatile(&raw mut (*walk).next, 0);
        write_volatile(&raw mut (*walk).control, 0);
        write_volatile(&raw mut (*walk).count, 0);
        write_volatile(&raw mut (*walk).truncated, u32::from(truncated));
        bpf_loop(MAX_SCM_STEPS, scm_step as *mut c_void, null_mut(), 0);
        let walk = &mut *walk;
        if walk.control != 0 || walk.next < walk.messages {
            // Out of steps with control messages or messages left.
            walk.truncated = 1;
        }
        walk.count == 0 && walk.truncated == 0
    }
}

// `fill` copies `fds` into `aux_fds` a word at a time.
const _: () = assert!(
    core::mem::offset_of!(ScmWalk, fds) % 8 == 0 && core::mem::offset_of!(SyscallEvent, aux_fds) % 8 == 0
);

/// A walk of what a recvmsg or recvmmsg received (`received_nothing`), in a per-CPU map
/// (`SCM_WALK`): loaded from a map, its values are unknown to the verifier, so the callbacks'
/// states stay alike from step to step.
#[repr(C)]
pub struct ScmWalk {
    /// The first message's `user_msghdr`, how many messages there are, and the next one to
    /// open.
    first: u64,
    messages: u64,
    next: u64,
    /// The open message's control buffer (0: none open), its length, and the offset of its
    /// next control message.
    control: u64,
    control_len: u64,
    offset: u64,
    /// The current SCM_RIGHTS message's descriptors (`scm_fd`).
    fds_at: u64,
    /// The descriptors received so far, for the record (`SyscallEvent::aux_fds`), and 1 when
    /// some could not be taken (`syscall_flags::AUX_TRUNCATED`).
    fds: [i32; MAX_AUX_FDS],
    count: u32,
    truncated: u32,
}

/// A step of a walk: with no message open, open the next one (or stop when none is left);
/// then read its next control message (a step each, the first with the message's opening).
/// 0 goes on, 1 stops.
#[inline(never)]
unsafe extern "C" fn scm_step(_index: u64, _: *mut c_void) -> i64 {
    let Some(slot) = SCM_WALK.get_ptr_mut(0) else { return 1 };
    // SAFETY: this CPU's slot, which `received_nothing` filled; the reference is not used
    // across `scm_fd`'s loop, which writes the slot too.
    let walk = unsafe { &mut *slot };
    if walk.control == 0 {
        if walk.next >= walk.messages {
            return 1;
        }
        let msghdr = walk.first + walk.next * MMSGHDR_SIZE;
        walk.next += 1;
        // `msg_control` and `msg_controllen`, next to each other: one read.
        let Ok([control, control_len]) =
            (unsafe { bpf_probe_read_user((msghdr + MSGHDR_CONTROL_OFFSET) as *const [u64; 2]) })
        else {
            walk.truncated = 1;
            return 0;
        };
        walk.control = control;
        walk.control_len = control_len;
        walk.offset = 0;
    }
    if walk.control == 0 || walk.offset + CMSG_HEADER_LEN > walk.control_len {
        walk.control = 0;
        return 0;
    }
    let cmsg = walk.control + walk.offset;
    let Ok(header) = (unsafe { bpf_probe_read_user(cmsg as *const [i32; 4]) }) else {
        walk.truncated = 1;
        walk.control = 0;
        return 0;
    };
    // struct cmsghdr { size_t cmsg_len; int cmsg_level; int cmsg_type; }
    let cmsg_len = (header[0] as u32 as u64) | ((header[1] as u32 as u64) << 32);
    if cmsg_len < CMSG_HEADER_LEN {
        walk.control = 0;
        return 0;
    }
    // CMSG_NXTHDR: lengths are aligned to sizeof(long); the message ends where no header fits.
    walk.offset += (cmsg_len + 7) & !7;
    if walk.offset + CMSG_HEADER_LEN > walk.control_len {
        walk.control = 0;
    }
    if header[2] != SOL_SOCKET || header[3] != SCM_RIGHTS {
        return 0;
    }
    let fds = (cmsg_len - CMSG_HEADER_LEN) / size_of::<i32>() as u64;
    let wanted = fds.min(MAX_AUX_FDS as u64) as u32;
    walk.fds_at = cmsg + CMSG_HEADER_LEN;
    let count = walk.count;
    // SAFETY: the callback takes no context; `walk` is not used again.
    unsafe { bpf_loop(wanted, scm_fd as *mut c_void, null_mut(), 0) };
    // SAFETY: the slot again, now that `scm_fd` has written it.
    let walk = unsafe { &mut *slot };
    // `scm_fd` stops at a descriptor it cannot take: the list full, or its word unreadable.
    if walk.count.wrapping_sub(count) < wanted {
        walk.truncated = 1;
        walk.control = 0;
    } else if fds > MAX_AUX_FDS as u64 {
        walk.truncated = 1;
    }
    0
}

/// Descriptor `index` of the SCM_RIGHTS message at `fds_at` (`scm_step`), appended to the walk's
/// list. 0 goes on, 1 stops: the list is full, or the descriptor cannot be read.
#[inline(never)]
unsafe extern "C" fn scm_fd(index: u64, _: *mut c_void) -> i64 {
    let Some(walk) = SCM_WALK.get_ptr_mut(0) else { return 1 };
    // SAFETY: as in `scm_step`.
    let walk = unsafe { &mut *walk };
    let count = walk.count;
    if let Some(slot) = walk.fds.get_mut(count as usize)
        && let Ok(fd) = unsafe { bpf_probe_read_user((walk.fds_at + index * 4) as *const i32) }
    {
        *slot = fd;
        walk.count = count + 1;
        return 0;
    }
    1
}
