//! Kernel memory held by sockets: of one socket, through a duplicate of its descriptor, or of a
//! whole network namespace's in one netlink sock_diag dump (`INET_DIAG_SKMEMINFO` for TCP and
//! UDP, `UNIX_DIAG_MEMINFO` for unix sockets; net/core/sock_diag.c sock_diag_put_meminfo), keyed
//! by socket inode so it joins with the descriptors in the FdTable. observe/procfs.rs
//! (`SocketJoin::socket_memory`) says which.
//!
//! sock_diag answers for the network namespace of the netlink socket that asks: the tracer's
//! own. A process in another network namespace (a pod) has sockets the dump does not list;
//! entering its namespace (setns(CLONE_NEWNET)) takes CAP_SYS_ADMIN, which the tracer gives up
//! once attached (sys/privileges.rs; only its uprobe maker keeps it, for uprobes alone,
//! sys/uprobes.rs). So one socket is measured on its own: a duplicate of the process's
//! descriptor (pidfd_getfd(2): a ptrace attach check with real ids, which CAP_SYS_PTRACE passes
//! and Yama's `ptrace_scope` 3 refuses, stricter than /proc/PID/fd's read check) asked for
//! `SO_MEMINFO`, the very array sock_diag would put in its answer (net/core/sock.c
//! sk_getsockopt SO_MEMINFO and sock_diag_put_meminfo both call sk_get_meminfo), then closed.
//! The duplicate is received as any passed descriptor is (fs/file.c `receive_fd`): an LSM sees
//! it (`security_file_receive`), and the socket takes the tracer's cgroup v1 net_cls class id and
//! net_prio index (net/core/sock.c `__receive_sock`), which is why observe/procfs.rs duplicates
//! none where those controllers are mounted. Were the process to close its descriptor in the
//! microseconds the duplicate lives, the tracer's close would be the socket's last.
use std::{
    collections::HashMap,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    os::unix::fs::MetadataExt as _,
};

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, TCP_LISTEN},
    inet::{self, ExtensionFlags, InetRequest, SocketId, StateFlags},
    unix::{self, ShowFlags, UnixRequest},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

/// `SK_MEMINFO_*` of one socket (include/uapi/linux/sock_diag.h).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SocketMemory {
    /// sk_rmem_alloc: memory of received data not yet read.
    pub(crate) rmem_alloc: u32,
    /// sk_wmem_queued: memory of data written and not yet acknowledged / sent.
    pub(crate) wmem_queued: u32,
    /// sk_forward_alloc: memory charged to the socket in advance.
    pub(crate) fwd_alloc: u32,
    /// sk_optmem_alloc: socket options, filters.
    pub(crate) optmem: u32,
}

impl SocketMemory {
    /// What the kernel charges to this socket's buffers (the sum protocol memory accounting
    /// uses: received + queued to send + forward allocated + options).
    pub(crate) fn buffer_bytes(&self) -> u64 {
        self.rmem_alloc as u64 + self.wmem_queued as u64 + self.fwd_alloc as u64 + self.optmem as u64
    }
}

/// Every TCP, UDP and unix socket of the current network namespace with its memory, by inode.
pub(crate) fn dump() -> io::Result<HashMap<u64, SocketMemory>> {
    let mut memory = HashMap::new();
    for (family, protocol) in
        [(AF_INET, IPPROTO_TCP), (AF_INET6, IPPROTO_TCP), (AF_INET, IPPROTO_UDP), (AF_INET6, IPPROTO_UDP)]
    {
        query(inet_request(family, protocol), &mut |message| {
            if let SockDiagMessage::InetResponse(response) = message {
                let meminfo = response.nlas.iter().find_map(|nla| match nla {
                    inet::nlas::Nla::MemInfo(m) => Some(SocketMemory {
                        rmem_alloc: m.receive_queue,
                        wmem_queued: m.send_queue,
                        fwd_alloc: m.cache,
                        optmem: m.options,
                    }),
                    _ => None,
                });
                if let Some(m) = meminfo {
                    memory.insert(response.header.inode as u64, m);
                }
            }
        })?;
    }
    let request = SockDiagMessage::UnixRequest(UnixRequest {
        state_flags: unix::StateFlags::all(),
        inode: 0,
        // UNIX_DIAG_MEMINFO would carry the SK_MEMINFO array, but the parser drops its
        // wmem_alloc slot, which is where unix data is charged; UNIX_DIAG_RQLEN has it.
        show_flags: ShowFlags::RQLEN,
        cookie: [0xff; 8],
    });
    query(request, &mut |message| {
        if let SockDiagMessage::UnixResponse(response) = message {
            // For a listener RQLEN is (pending connections, backlog), not memory: it holds none
            // (listed, so it is known to be of this namespace).
            if response.header.state == TCP_LISTEN {
                memory.insert(response.header.inode as u64, SocketMemory::default());
                return;
            }
            let meminfo = response.nlas.iter().find_map(|nla| match nla {
                // A unix stream's unread data is charged to the *sending* socket
                // (net/unix/af_unix.c: skb_set_owner_w in unix_stream_sendmsg); RQLEN's second
                // value is that socket's sk_wmem_alloc (net/unix/diag.c sk_diag_show_rqlen).
                unix::nlas::Nla::ReceiveQueueLength(_, charged) => {
                    Some(SocketMemory { wmem_queued: *charged, ..SocketMemory::default() })
                }
                _ => None,
            });
            if let Some(m) = meminfo {
                memory.insert(response.header.inode as u64, m);
            }
        }
    })?;
    Ok(memory)
}

/// The dump of one inet family and protocol, with each socket's memory, for the states a
/// descriptor's socket can be in: every state but TIME_WAIT. A TIME_WAIT entry is not a
/// descriptor's socket but what is left of one: tcp_time_wait (net/ipv4/tcp_minisocks.c) puts an
/// `inet_timewait_sock` in its place and closes the socket itself (`tcp_done`: TCP_CLOSE), so
/// its inode is 0 and its answer carries no memory (`tcp_twsk_diag_fill`). The kernel still
/// walks them (net/ipv4/tcp_diag.c `tcp_diag_dump`, inet_diag.c `inet_diag_dump_icsk` in older
/// kernels, tests each entry's state), but answers only the states asked for: the 14,000 TIME_WAIT
/// entries an nginx under `ab` left, answered and parsed for nothing at every dump, were a fifth
/// of an idle `serve`'s CPU while it dumped once a second (BENCHMARKS.md).
fn inet_request(family: u8, protocol: u8) -> SockDiagMessage {
    SockDiagMessage::InetRequest(InetRequest {
        family,
        protocol,
        extensions: ExtensionFlags::SKMEMINFO,
        states: StateFlags::all() - StateFlags::TIME_WAIT,
        socket_id: if family == AF_INET { SocketId::new_v4() } else { SocketId::new_v6() },
    })
}

/// Why one socket of another process could not be measured.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SocketMemoryError {
    /// The descriptor is closed or is no longer the socket asked about (its number reused).
    #[error("the descriptor is no longer that socket")]
    Gone,
    #[error("its descriptor could not be duplicated (pidfd_getfd: {source})")]
    Duplicate { source: io::Error },
    #[error("the kernel did not give its memory (SO_MEMINFO: {source})")]
    Meminfo { source: io::Error },
}

/// `SK_MEMINFO_VARS` (include/uapi/linux/sock_diag.h) and the slots used.
const SK_MEMINFO_VARS: usize = 9;
const SK_MEMINFO_RMEM_ALLOC: usize = 0;
const SK_MEMINFO_WMEM_ALLOC: usize = 2;
const SK_MEMINFO_FWD_ALLOC: usize = 4;
const SK_MEMINFO_WMEM_QUEUED: usize = 5;
const SK_MEMINFO_OPTMEM: usize = 6;

/// The memory of socket `inode`, open as `fd` in the process of `pidfd`, whatever network
/// namespace it lives in: a duplicate of the descriptor asked for SO_MEMINFO, closed at once.
/// The duplicate's inode must be `inode`: a descriptor number reused since is not measured.
pub(crate) fn socket_memory(pidfd: &OwnedFd, fd: i32, inode: u64) -> Result<SocketMemory, SocketMemoryError> {
    // SAFETY: pidfd_getfd takes a pidfd, a descriptor number and flags (0); it returns a new
    // descriptor of ours or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if raw < 0 {
        let error = io::Error::last_os_error();
        return Err(match error.raw_os_error() {
            Some(libc::EBADF) | Some(libc::ESRCH) => SocketMemoryError::Gone,
            _ => SocketMemoryError::Duplicate { source: error },
        });
    }
    // SAFETY: the descriptor was just created and is ours alone; dropping it closes it.
    let socket = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    let file = std::fs::File::from(socket);
    if file.metadata().map(|m| m.ino()).ok() != Some(inode) {
        return Err(SocketMemoryError::Gone);
    }
    let mut meminfo = [0u32; SK_MEMINFO_VARS];
    let mut length = std::mem::size_of_val(&meminfo) as libc::socklen_t;
    // SAFETY: a buffer of SK_MEMINFO_VARS u32 and its length, as SO_MEMINFO writes.
    let status = unsafe {
        libc::getsockopt(
            file.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            meminfo.as_mut_ptr().cast(),
            &mut length,
        )
    };
    if status != 0 {
        return Err(SocketMemoryError::Meminfo { source: io::Error::last_os_error() });
    }
    let mut domain: libc::c_int = 0;
    let mut domain_length = std::mem::size_of_val(&domain) as libc::socklen_t;
    // SAFETY: an int and its length, as SO_DOMAIN writes.
    let status = unsafe {
        libc::getsockopt(
            file.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&mut domain as *mut libc::c_int).cast(),
            &mut domain_length,
        )
    };
    if status != 0 {
        return Err(SocketMemoryError::Meminfo { source: io::Error::last_os_error() });
    }
    Ok(from_meminfo(&meminfo, domain))
}

/// The SK_MEMINFO array as the dump reads it: a unix socket's data is charged to its
/// sk_wmem_alloc (see `dump`), which is what its RQLEN answer carries.
fn from_meminfo(meminfo: &[u32; SK_MEMINFO_VARS], domain: libc::c_int) -> SocketMemory {
    if domain == libc::AF_UNIX {
        return SocketMemory { wmem_queued: meminfo[SK_MEMINFO_WMEM_ALLOC], ..SocketMemory::default() };
    }
    SocketMemory {
        rmem_alloc: meminfo[SK_MEMINFO_RMEM_ALLOC],
        wmem_queued: meminfo[SK_MEMINFO_WMEM_QUEUED],
        fwd_alloc: meminfo[SK_MEMINFO_FWD_ALLOC],
        optmem: meminfo[SK_MEMINFO_OPTMEM],
    }
}

/// Send one dump request and hand every answer to `each`.
fn query(request: SockDiagMessage, each: &mut dyn FnMut(SockDiagMessage)) -> io::Result<()> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut packet = NetlinkMessage::new(header, request.into());
    packet.finalize();
    let mut buffer = vec![0; packet.buffer_len()];
    packet.serialize(&mut buffer);
    socket.send(&buffer, 0)?;
    let mut receive = vec![0u8; 64 * 1024];
    loop {
        let size = socket.recv(&mut &mut receive[..], 0)?;
        let mut offset = 0;
        while offset < size {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(&receive[offset..size])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(inner) => each(inner),
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => return Err(e.to_io()),
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write,
        net::{TcpListener, TcpStream},
        os::{fd::AsRawFd, unix::net::UnixStream},
    };

    use netlink_packet_sock_diag::constants::TCP_TIME_WAIT;

    use super::*;

    fn inode_of(fd: i32) -> u64 {
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        let link = link.to_str().unwrap();
        link.trim_start_matches("socket:[").trim_end_matches(']').parse().unwrap()
    }

    /// Real sockets of this test process, with unread data: sock_diag needs no privilege.
    #[test]
    fn unread_data_shows_as_receive_memory() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.write_all(&[7u8; 100_000]).unwrap();
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&[1u8; 10_000]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let memory = dump().unwrap();
        let tcp = memory.get(&inode_of(server.as_raw_fd())).expect("the accepted socket is dumped");
        assert!(tcp.rmem_alloc as usize >= 100_000, "{tcp:?}");
        assert!(tcp.buffer_bytes() >= tcp.rmem_alloc as u64);
        let unix = memory.get(&inode_of(a.as_raw_fd())).expect("the unix socket is dumped");
        assert!(unix.buffer_bytes() as usize >= 10_000, "{unix:?}");
        assert!(memory.contains_key(&inode_of(b.as_raw_fd())));
        // Measured one by one through a duplicate of the descriptor: the same numbers.
        let own = crate::sys::proc::pidfd(std::process::id()).unwrap();
        let alone = socket_memory(&own, server.as_raw_fd(), inode_of(server.as_raw_fd())).unwrap();
        assert_eq!(alone.rmem_alloc, tcp.rmem_alloc);
        let alone = socket_memory(&own, a.as_raw_fd(), inode_of(a.as_raw_fd())).unwrap();
        assert_eq!(alone, *unix);
        // A descriptor that is not (or no longer) the socket asked about is not measured.
        assert!(matches!(
            socket_memory(&own, b.as_raw_fd(), inode_of(a.as_raw_fd())),
            Err(SocketMemoryError::Gone)
        ));
    }

    /// A TIME_WAIT entry of this process's, which a dump of every state finds, is not asked for.
    #[test]
    fn time_wait_entries_are_not_asked_for() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let port = client.local_addr().unwrap().port();
        // The side that closes first ends in TIME_WAIT once the other closes too.
        drop(client);
        std::thread::sleep(std::time::Duration::from_millis(20));
        drop(server);
        let time_wait = |request: SockDiagMessage| {
            let mut found = 0;
            query(request, &mut |message| {
                if let SockDiagMessage::InetResponse(r) = message
                    && r.header.state == TCP_TIME_WAIT
                    && r.header.socket_id.source_port == port
                {
                    found += 1;
                }
            })
            .unwrap();
            found
        };
        let every_state = || {
            let SockDiagMessage::InetRequest(mut request) = inet_request(AF_INET, IPPROTO_TCP) else {
                unreachable!("an inet request")
            };
            request.states = StateFlags::all();
            SockDiagMessage::InetRequest(request)
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while time_wait(every_state()) == 0 {
            assert!(std::time::Instant::now() < deadline, "no TIME_WAIT entry for port {port}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(time_wait(inet_request(AF_INET, IPPROTO_TCP)), 0);
    }
}
