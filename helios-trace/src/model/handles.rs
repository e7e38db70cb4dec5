//! libuv TCP handles and the sockets libuv makes for them later (ARCHITECTURE.md, "Handles"):
//! a pure state machine fed by the `kind::LIBUV_*` records in the order the ring holds them.
//!
//! A handle's creation (`uv_tcp_init`) is seen with its caller's stack, whose site is kept by
//! (process, handle). `uv_tcp_connect` entered and returned bracket, in one thread, the socket(2)
//! it makes for a handle without a socket; the inet stream socket that thread makes in between
//! (the engine asks for no other) takes the handle's site. A thread's records reach the ring in
//! the order it made them, so while none is lost the bracket is exact: outside it nothing is
//! attributed, and a handle is attributed to one socket at most.
//!
//! Bounded: `MAX_HANDLES_PER_PROCESS` handles per process (a server's accepted handles are made
//! too and never connect: the oldest go first) and `MAX_CONNECTING` threads inside
//! `uv_tcp_connect` at once (a bracket whose return record was lost stays until the thread's
//! next inet stream socket or `uv_tcp_connect`, or until this bound clears them all). Either
//! bound only costs the attribution: the socket keeps the site of its own stack.
use std::collections::{HashMap, VecDeque, hash_map::Entry};

use super::fd::SiteId;

/// Handles kept per process, newest first.
pub(crate) const MAX_HANDLES_PER_PROCESS: usize = 4096;
/// Threads inside `uv_tcp_connect` at once.
pub(crate) const MAX_CONNECTING: usize = 4096;

#[derive(Debug, Default)]
pub(crate) struct TcpHandles {
    processes: HashMap<u32, ProcessHandles>,
    /// tid -> (tgid, handle) of the `uv_tcp_connect` the thread is in.
    connecting: HashMap<u32, (u32, u64)>,
    /// Handles let go by the bound, and brackets cleared by theirs.
    pub(crate) dropped: u64,
}

#[derive(Debug, Default)]
struct ProcessHandles {
    /// handle -> (its site, the sequence number of its creation).
    sites: HashMap<u64, (SiteId, u64)>,
    /// (handle, sequence) in creation order; an entry whose sequence is no longer the handle's
    /// was replaced or taken, and is skipped.
    order: VecDeque<(u64, u64)>,
    next: u64,
}

impl TcpHandles {
    /// `handle` was made in `tgid` by a call at `site` (an address reused by a new handle
    /// takes the new one's site).
    pub(crate) fn created(&mut self, tgid: u32, handle: u64, site: SiteId) {
        let process = self.processes.entry(tgid).or_default();
        let sequence = process.next;
        process.next += 1;
        process.sites.insert(handle, (site, sequence));
        process.order.push_back((handle, sequence));
        while process.sites.len() > MAX_HANDLES_PER_PROCESS {
            let Some((oldest, sequence)) = process.order.pop_front() else { break };
            if let Entry::Occupied(entry) = process.sites.entry(oldest)
                && entry.get().1 == sequence
            {
                entry.remove();
                self.dropped += 1;
            }
        }
        // Entries skipped above stay in `order` until they reach its front: compact when they
        // outnumber the live ones.
        if process.order.len() > 2 * MAX_HANDLES_PER_PROCESS {
            let sites = &process.sites;
            process.order.retain(|(handle, sequence)| sites.get(handle).is_some_and(|(_, s)| s == sequence));
        }
    }

    /// Thread `tid` of `tgid` entered `uv_tcp_connect` for `handle`.
    pub(crate) fn connecting(&mut self, tgid: u32, tid: u32, handle: u64) {
        if self.connecting.len() >= MAX_CONNECTING && !self.connecting.contains_key(&tid) {
            self.dropped += self.connecting.len() as u64;
            self.connecting.clear();
        }
        self.connecting.insert(tid, (tgid, handle));
    }

    /// Thread `tid` returned from `uv_tcp_connect`.
    pub(crate) fn connected(&mut self, tid: u32) {
        self.connecting.remove(&tid);
    }

    /// Whether thread `tid` is inside `uv_tcp_connect`: its next socket may take a handle's site.
    pub(crate) fn in_connect(&self, tid: u32) -> bool {
        self.connecting.contains_key(&tid)
    }

    /// The site of the handle whose socket thread `tid` of `tgid` just made, if it is inside
    /// `uv_tcp_connect` for a handle whose creation was seen. Taken once.
    pub(crate) fn socket_made(&mut self, tgid: u32, tid: u32) -> Option<SiteId> {
        let (owner, handle) = self.connecting.remove(&tid)?;
        if owner != tgid {
            return None;
        }
        let process = self.processes.get_mut(&tgid)?;
        process.sites.remove(&handle).map(|(site, _)| site)
    }

    /// The process exec'd or exited: its handles are gone.
    pub(crate) fn forget(&mut self, tgid: u32) {
        self.processes.remove(&tgid);
        self.connecting.retain(|_, (owner, _)| *owner != tgid);
    }

    /// Handles kept, all processes together.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.processes.values().map(|p| p.sites.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SITE_A: SiteId = SiteId::Stack(0xa);
    const SITE_B: SiteId = SiteId::Stack(0xb);

    #[test]
    fn a_socket_made_inside_connect_takes_its_handle_s_site_once() {
        let mut handles = TcpHandles::default();
        handles.created(10, 0x1000, SITE_A);
        handles.created(10, 0x2000, SITE_B);
        handles.connecting(10, 11, 0x2000);
        assert_eq!(handles.socket_made(10, 11), Some(SITE_B));
        // The bracket and the handle are used up.
        assert_eq!(handles.socket_made(10, 11), None);
        handles.connected(11);
        handles.connecting(10, 11, 0x2000);
        assert_eq!(handles.socket_made(10, 11), None, "a handle connects once");
        assert_eq!(handles.len(), 1);
    }

    #[test]
    fn outside_the_bracket_or_in_another_thread_nothing_is_attributed() {
        let mut handles = TcpHandles::default();
        handles.created(10, 0x1000, SITE_A);
        assert_eq!(handles.socket_made(10, 10), None, "not inside uv_tcp_connect");
        handles.connecting(10, 10, 0x1000);
        assert_eq!(handles.socket_made(10, 12), None, "another thread");
        // A connect that made no socket (the handle had one): its return ends the bracket.
        handles.connected(10);
        assert_eq!(handles.socket_made(10, 10), None);
        // A handle whose creation was not seen.
        handles.connecting(10, 10, 0x9999);
        assert_eq!(handles.socket_made(10, 10), None);
    }

    #[test]
    fn a_reused_address_is_the_new_handle_and_exec_forgets_them_all() {
        let mut handles = TcpHandles::default();
        handles.created(10, 0x1000, SITE_A);
        handles.created(10, 0x1000, SITE_B);
        handles.connecting(10, 10, 0x1000);
        assert_eq!(handles.socket_made(10, 10), Some(SITE_B));
        handles.created(10, 0x1000, SITE_A);
        handles.connecting(10, 11, 0x1000);
        handles.forget(10);
        assert_eq!(handles.socket_made(10, 11), None);
        assert_eq!(handles.len(), 0);
    }

    #[test]
    fn the_oldest_handles_go_first_past_the_bound() {
        let mut handles = TcpHandles::default();
        for handle in 0..MAX_HANDLES_PER_PROCESS as u64 + 3 {
            // Every other one replaced once: stale order entries are skipped, not counted.
            handles.created(10, handle, SITE_A);
            if handle % 2 == 0 {
                handles.created(10, handle, SITE_B);
            }
        }
        assert_eq!(handles.len(), MAX_HANDLES_PER_PROCESS);
        assert_eq!(handles.dropped, 3);
        for (handle, kept) in [(0, false), (2, false), (3, true), (4, true)] {
            handles.connecting(10, 10, handle);
            assert_eq!(handles.socket_made(10, 10).is_some(), kept, "handle {handle}");
        }
        let process = &handles.processes[&10];
        assert!(process.order.len() <= 2 * MAX_HANDLES_PER_PROCESS);
    }

    #[test]
    fn threads_stuck_in_connect_are_bounded() {
        let mut handles = TcpHandles::default();
        for tid in 0..MAX_CONNECTING as u32 {
            handles.connecting(10, tid, 1);
        }
        handles.connecting(10, 99_999, 1);
        assert_eq!(handles.connecting.len(), 1);
        assert_eq!(handles.dropped, MAX_CONNECTING as u64);
    }
}
