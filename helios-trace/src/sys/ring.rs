//! The reader's end of the ring buffer (ARCHITECTURE.md, "Data flow" 2): the kernel programs'
//! records, read in the order they were submitted. Attached before the runtime exists (so that
//! privileges can be dropped for every thread), then registered with the runtime's reactor,
//! which wakes the reader when the kernel says records are waiting.
use std::{os::fd::AsRawFd as _, time::Duration};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::{AsyncFd, AsyncFdReadyMutGuard};

/// The ring buffer: as attached, then registered with the runtime's reactor for polling.
pub(crate) enum Ring {
    Attached(RingBuf<MapData>),
    Polled(AsyncFd<RingBuf<MapData>>),
    /// Only while `poll` swaps the two.
    Moving,
}

impl Ring {
    /// Register with the reactor of the runtime we run in (once).
    pub(crate) fn poll(&mut self) -> Result<()> {
        if let Ring::Attached(_) = self {
            let Ring::Attached(ring) = std::mem::replace(self, Ring::Moving) else { unreachable!() };
            // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, for its whole
            // life, which the AsyncFd now owns.
            match unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) } {
                Ok(polled) => *self = Ring::Polled(polled),
                Err(e) => {
                    let (ring, error) = e.into_parts();
                    *self = Ring::Attached(ring);
                    return Err(error).context("cannot poll the ring buffer");
                }
            }
        }
        Ok(())
    }

    /// Completes when the kernel says records are waiting (never before `poll`).
    pub(crate) async fn readable(&mut self) -> std::io::Result<AsyncFdReadyMutGuard<'_, RingBuf<MapData>>> {
        match self {
            Ring::Polled(polled) => polled.readable_mut().await,
            _ => std::future::pending().await,
        }
    }

    /// The records waiting, read with `next()`.
    pub(crate) fn records(&mut self) -> &mut RingBuf<MapData> {
        match self {
            Ring::Attached(ring) => ring,
            Ring::Polled(polled) => polled.get_mut(),
            Ring::Moving => unreachable!("the ring is only moving inside poll()"),
        }
    }
}

/// The exec notices (`EXEC_NOTICES`), read by the exec lane's thread (observe/exec_lane.rs)
/// with a blocking wait of its own, apart from the runtime.
pub(crate) struct Notices(RingBuf<MapData>);

impl Notices {
    pub(crate) fn new(ring: RingBuf<MapData>) -> Notices {
        Notices(ring)
    }

    /// Wait until the kernel says notices are waiting, or `timeout` passed.
    pub(crate) fn wait(&self, timeout: Duration) {
        let mut poll = libc::pollfd { fd: self.0.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let timeout = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
        };
        // SAFETY: one valid pollfd, a valid timespec, no signal mask; the ring's fd stays open
        // while `self` lives. ppoll, not poll: the lane looks again within 100 µs
        // (resolve/python/early.rs), poll counts in milliseconds. An error (EINTR) is a
        // wake-up like any other: the caller reads what is there and waits again.
        unsafe { libc::ppoll(&mut poll, 1, &timeout, std::ptr::null()) };
    }

    /// The next notice: the process that exec'd and its exec record's time. A malformed
    /// record is skipped (the exec record in `EVENTS` is the one that counts).
    pub(crate) fn next(&mut self) -> Option<(u32, u64)> {
        loop {
            let record = self.0.next()?;
            if let Ok(notice) = crate::sys::decode::exec_notice(&record) {
                return Some(notice);
            }
        }
    }
}
