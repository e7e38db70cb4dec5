//! Process lifecycle: task creation, exec and group exit. They keep userspace's per-process
//! descriptor tables right (fork copies, exec closes close-on-exec, exit clears) and keep the
//! `--pid` filter following children.
use core::ptr::addr_of_mut;

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_RB_FORCE_WAKEUP,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::{bpf_ktime_get_boot_ns, bpf_probe_read_kernel_str},
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use helios_trace_common::{
    EXEC_FILENAME_LEN, EventHeader, ExecEvent, ExitEvent, NewTaskEvent, counter, kind,
};

use crate::{
    emit::{count, emit, finish, header},
    filter::{is_target_pid, is_traced},
    maps::{EVENTS, EXEC_NOTICES, EXEC_TIMES, GO_PROCS, PYTHON_PROCS, TARGETS},
    pairs,
    settings::{exit_group_dead_offset, filtering_targets},
};

// include/uapi/linux/sched.h
const CLONE_THREAD: u64 = 0x0001_0000;

/// task/task_newtask (include/trace/events/task.h): pid at 8, comm[16] at 12, clone_flags at
/// 32. Runs in the parent, inside copy_process, before the child can run.
#[tracepoint]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    finish(try_task_newtask(&ctx))
}

fn try_task_newtask(ctx: &TracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_traced((pid_tgid >> 32) as u32) {
        return Ok(());
    }
    let child_tid: i32 = unsafe { ctx.read_at(8) }?;
    let clone_flags: u64 = unsafe { ctx.read_at(32) }?;
    let comm: [u8; 16] = unsafe { ctx.read_at(12) }?;
    if filtering_targets() && clone_flags & CLONE_THREAD == 0 && is_target_pid((pid_tgid >> 32) as u32) {
        // A new process of a --pid target is traced from its first instruction (one of a
        // --cgroup target is traced as long as it stays in the cgroup).
        let _ = TARGETS.insert(&(child_tid as u32), &1, 0);
    }
    let event = NewTaskEvent {
        header: header(kind::NEW_TASK, pid_tgid),
        child_tid: child_tid as u32,
        reserved: 0,
        clone_flags,
        comm,
    };
    // The child copies the table: what is kept of the parent's calls comes first (pairs.rs).
    pairs::send_kept((pid_tgid >> 32) as u32);
    emit(&event);
    Ok(())
}

/// sched/sched_process_exec: `__data_loc char[] filename` at 8, pid at 12, old_pid at 16.
/// Fires after the new image is in place: close-on-exec descriptors are already closed.
#[tracepoint]
pub fn process_exec(ctx: TracePointContext) -> u32 {
    finish(try_process_exec(&ctx))
}

fn try_process_exec(ctx: &TracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_traced(tgid) {
        // A process outside the targets keeps its exec time too: should it become a target
        // again (a --cgroup it re-enters), what was learned for its earlier image (unwind
        // rules, FRAME_RULES; Go offsets) must not match this one. Dropped at its exit.
        let _ = EXEC_TIMES.insert(&tgid, &unsafe { bpf_ktime_get_boot_ns() }, 0);
        return Ok(());
    }
    let exec_header = header(kind::EXEC, pid_tgid);
    // The new image is not the one userspace recognised as Go: it looks again at this exec's
    // record, and offsets it found for the old image, if they reach the map later, do not
    // match this exec's time (resolve/goroutines.rs, goroutines.rs).
    let _ = GO_PROCS.remove(&tgid);
    let _ = EXEC_TIMES.insert(&tgid, &exec_header.ts_ns, 0);
    let filename_loc: u32 = unsafe { ctx.read_at(8) }?;
    let old_tid: i32 = unsafe { ctx.read_at(16) }?;
    // The image's calls before its exec (pairs.rs).
    pairs::send_kept(tgid);
    let Some(mut entry) = EVENTS.reserve::<ExecEvent>(0) else {
        count(counter::RINGBUF_FULL);
        return Ok(());
    };
    let event = entry.as_mut_ptr();
    unsafe {
        addr_of_mut!((*event).header).write(exec_header);
        addr_of_mut!((*event).old_tid).write(old_tid as u32);
        addr_of_mut!((*event).comm).write(bpf_get_current_comm().unwrap_or_default());
        addr_of_mut!((*event).filename_len).write(0);
    }
    let event = unsafe { &mut *event };
    // __data_loc: low 16 bits are the offset of the string from the record's start.
    let src = unsafe { (ctx.as_ptr() as *const u8).add((filename_loc & 0xffff) as usize) };
    let len = unsafe {
        bpf_probe_read_kernel_str(event.filename.as_mut_ptr().cast(), EXEC_FILENAME_LEN as u32, src.cast())
    };
    if len > 0 {
        event.filename_len = (len - 1) as u32;
    }
    // Wake the reader now, not at the next batch: it reads the new image's maps while the
    // process surely runs (execs are rare; a short-lived command may be gone in milliseconds).
    entry.submit(BPF_RB_FORCE_WAKEUP as u64);
    // The same header to the exec lane, which probes the new image at once, while the reader
    // of EVENTS may still be resolving records ahead of this one. Not counted when the ring is
    // full: the exec record above is the one that counts; the lane then looks at the exec when
    // the reader reaches that record and it next wakes (within 100 ms).
    let _ = EXEC_NOTICES.output::<EventHeader>(&exec_header, BPF_RB_FORCE_WAKEUP as u64);
    Ok(())
}

/// sched/sched_process_exit: runs for every exiting thread; only the group's end matters.
#[tracepoint]
pub fn process_exit(ctx: TracePointContext) -> u32 {
    finish(try_process_exit(&ctx))
}

fn try_process_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // Where `group_dead` is in the record, read from its format file by userspace (the field
    // exists since Linux 6.14); 0 when absent, and then the leader's exit stands for the group's.
    let group_dead_offset = exit_group_dead_offset();
    let group_dead = if group_dead_offset == 0 {
        tgid == pid_tgid as u32
    } else {
        let flag: u8 = unsafe { ctx.read_at(group_dead_offset as usize) }?;
        flag != 0
    };
    if !group_dead {
        return Ok(());
    }
    if !is_traced(tgid) {
        // Its exec time, kept whether traced or not (try_process_exec).
        let _ = EXEC_TIMES.remove(&tgid);
        return Ok(());
    }
    if filtering_targets() {
        // The pid may be recycled by an unrelated process.
        let _ = TARGETS.remove(&tgid);
    }
    // Its Python offsets too, whoever put them there: userspace removes them when it reads the
    // exit, but offsets told for an image it never took (the exec lane's, resolve/python/
    // early.rs) must not outlive the process.
    let _ = PYTHON_PROCS.remove(&tgid);
    let _ = GO_PROCS.remove(&tgid);
    let _ = EXEC_TIMES.remove(&tgid);
    let event = ExitEvent { header: header(kind::EXIT, pid_tgid) };
    pairs::send_kept(tgid);
    emit(&event);
    Ok(())
}
