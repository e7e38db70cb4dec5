//! Kernel memory held by sockets, from netlink sock_diag (`INET_DIAG_SKMEMINFO` for TCP and
//! UDP, `UNIX_DIAG_MEMINFO` for unix sockets; net/core/sock_diag.c sock_diag_put_meminfo),
//! keyed by socket inode so it joins with the descriptors in the FdTable.
//!
//! sock_diag answers for the network namespace of the netlink socket that asks: the current one.
use std::{collections::HashMap, io};

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
        let request = SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol,
            extensions: ExtensionFlags::SKMEMINFO,
            states: StateFlags::all(),
            socket_id: if family == AF_INET { SocketId::new_v4() } else { SocketId::new_v6() },
        });
        query(request, &mut |message| {
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
            // For a listener RQLEN is (pending connections, backlog), not memory.
            if response.header.state == TCP_LISTEN {
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
    }
}
