//! What the tracer asks of the kernel for itself: room for the files it holds open, and its
//! freed memory handed back.

/// Raise the soft limit of open files to the hard limit: the tracer holds one descriptor per
/// mapped file of the traced processes (up to resolve/modules' MAX_OPEN_FILES), more than the
/// usual soft limit of 1024. Raising the soft limit up to the hard one needs no privilege.
pub(crate) fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls with valid pointers.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    limit.rlim_cur = limit.rlim_max;
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(limit.rlim_cur)
}

/// After a burst (a flood's records, thousands of short-lived processes, a scrape of many
/// series) glibc keeps the freed memory in its heaps and the tracer's resident memory would stay
/// at its peak for good: hand it back. Once a second; measured here (bpftrace on malloc_trim,
/// tracing every process) it takes 32–512 µs.
pub(crate) fn give_back_freed_memory() {
    // SAFETY: malloc_trim only releases free memory of the allocator's own heaps.
    unsafe { libc::malloc_trim(0) };
}

/// Ask the scheduler to run the calling thread soon after it wakes: a short time slice
/// (`sched_attr.sched_runtime` of a normal thread, kernel/sched/syscalls.c, honoured by EEVDF
/// since Linux 6.12: a task with a shorter slice has an earlier deadline and preempts at
/// wake-up). Its nice value, and so its share of the CPU, stays as it is, and no privilege is
/// needed (only a lower nice value would need one). The exec lane uses it: it must probe a new interpreter within
/// the millisecond or two before it runs Python code, on a node whose CPUs are busy. Older
/// kernels ignore the slice; an error leaves the thread as it was.
pub(crate) fn prefer_short_slices(slice: std::time::Duration) -> std::io::Result<()> {
    // The thread's nice value as it is (sched_setattr sets that too): getpriority(2) of
    // PRIO_PROCESS with who 0 is the calling thread's on Linux. -1 is a valid value as well:
    // errno tells an error apart.
    // SAFETY: errno is the calling thread's; getpriority only reads.
    let nice = unsafe {
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
        if nice == -1 && *libc::__errno_location() != 0 {
            return Err(std::io::Error::last_os_error());
        }
        nice
    };
    let attr = libc::sched_attr {
        size: std::mem::size_of::<libc::sched_attr>() as u32,
        sched_policy: libc::SCHED_OTHER as u32,
        sched_flags: 0,
        sched_nice: nice,
        sched_priority: 0,
        sched_runtime: slice.as_nanos() as u64,
        sched_deadline: 0,
        sched_period: 0,
    };
    // SAFETY: a valid sched_attr of the size it says; pid 0 is the calling thread.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const libc::sched_attr, 0) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}
