//! Sockets by inode, from the socket tables of a network namespace (/proc/PID/net/{tcp,tcp6,
//! udp,udp6,unix}): family, type, addresses, TCP state.
use std::{
    collections::HashMap,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use procfs::process::Process;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SocketInfo {
    pub(crate) family: u16,
    pub(crate) sock_type: u16,
    pub(crate) protocol: u16,
    pub(crate) local: Option<SocketAddr>,
    pub(crate) remote: Option<SocketAddr>,
    /// TCP state name (e.g. "ESTABLISHED", "CLOSE_WAIT"); unix: "connected"/"listening"...
    pub(crate) state: Option<String>,
    /// Bound path of a unix socket.
    pub(crate) path: Option<String>,
}

impl SocketInfo {
    /// `TCP 127.0.0.1:8443 <-> 127.0.0.1:51234 ESTABLISHED`, `UNIX /run/app.sock`.
    pub(crate) fn describe(&self) -> String {
        let proto = match (self.family as i32, self.protocol as i32, self.sock_type as i32) {
            (libc::AF_UNIX, ..) => "UNIX",
            (_, libc::IPPROTO_TCP, _) | (_, 0, libc::SOCK_STREAM) => "TCP",
            (_, libc::IPPROTO_UDP, _) | (_, 0, libc::SOCK_DGRAM) => "UDP",
            _ => "SOCKET",
        };
        let mut text = proto.to_string();
        if let Some(path) = &self.path {
            text.push(' ');
            text.push_str(path);
        }
        if let Some(local) = self.local {
            text.push_str(&format!(" {local}"));
        }
        if let Some(remote) = self.remote.filter(|r| !r.ip().is_unspecified() || r.port() != 0) {
            text.push_str(&format!(" <-> {remote}"));
        }
        if let Some(state) = &self.state {
            text.push(' ');
            text.push_str(state);
        }
        text
    }
}

/// Sockets of one network namespace by inode, from /proc/PID/net/{tcp,tcp6,udp,udp6,unix}.
#[derive(Clone, Debug, Default)]
pub(crate) struct SocketTable {
    by_inode: HashMap<u64, SocketInfo>,
}

impl SocketTable {
    pub(crate) fn read(root: &Path, pid: u32) -> SocketTable {
        let mut table = SocketTable::default();
        let Ok(process) = Process::new_with_root(root.join(pid.to_string())) else { return table };
        let tcp = [(libc::AF_INET, process.tcp()), (libc::AF_INET6, process.tcp6())];
        for (family, entries) in tcp {
            for e in entries.into_iter().flatten() {
                table.by_inode.insert(
                    e.inode,
                    SocketInfo {
                        family: family as u16,
                        sock_type: libc::SOCK_STREAM as u16,
                        protocol: libc::IPPROTO_TCP as u16,
                        local: Some(e.local_address),
                        remote: Some(e.remote_address),
                        state: Some(tcp_state_name(e.state.to_u8())),
                        path: None,
                    },
                );
            }
        }
        let udp = [(libc::AF_INET, process.udp()), (libc::AF_INET6, process.udp6())];
        for (family, entries) in udp {
            for e in entries.into_iter().flatten() {
                table.by_inode.insert(
                    e.inode,
                    SocketInfo {
                        family: family as u16,
                        sock_type: libc::SOCK_DGRAM as u16,
                        protocol: libc::IPPROTO_UDP as u16,
                        local: Some(e.local_address),
                        remote: Some(e.remote_address),
                        state: None,
                        path: None,
                    },
                );
            }
        }
        for e in process.unix().into_iter().flatten() {
            table.by_inode.insert(
                e.inode,
                SocketInfo {
                    family: libc::AF_UNIX as u16,
                    sock_type: e.socket_type,
                    protocol: 0,
                    local: None,
                    remote: None,
                    state: None,
                    path: e.path.map(|p| p.to_string_lossy().into_owned()),
                },
            );
        }
        table
    }

    pub(crate) fn get(&self, inode: u64) -> Option<&SocketInfo> {
        self.by_inode.get(&inode)
    }
}

/// include/net/tcp_states.h
pub(crate) fn tcp_state_name(state: u8) -> String {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
    .to_string()
}

/// Socket tables keyed by network namespace, read at most once per namespace per use.
#[derive(Default)]
pub(crate) struct SocketTables {
    root: PathBuf,
    by_netns: HashMap<u64, SocketTable>,
}

impl SocketTables {
    pub(crate) fn new(root: &Path) -> SocketTables {
        SocketTables { root: root.to_path_buf(), by_netns: HashMap::new() }
    }

    pub(crate) fn for_process(&mut self, pid: u32) -> &SocketTable {
        let netns = netns_inode(&self.root, pid).unwrap_or(0);
        let root = self.root.clone();
        self.by_netns.entry(netns).or_insert_with(|| SocketTable::read(&root, pid))
    }
}

fn netns_inode(root: &Path, pid: u32) -> Option<u64> {
    let link = fs::read_link(root.join(pid.to_string()).join("ns/net")).ok()?;
    let link = link.to_str()?;
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}
