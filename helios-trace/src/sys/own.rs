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
