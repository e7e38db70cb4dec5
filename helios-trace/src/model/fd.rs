//! The vocabulary of descriptors: their kinds (the list of ARCHITECTURE.md, "Contracts: Report",
//! which the JSON report and the metrics use verbatim), what we know about each, and how one can be closed.
use std::fmt;

use serde::Serialize;

/// What a descriptor refers to. The string forms are a contract (report `kind`, metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FdKind {
    File,
    Dir,
    Socket,
    Pipe,
    Eventfd,
    Epoll,
    Timerfd,
    Signalfd,
    Inotify,
    Memfd,
    Pidfd,
    IoUring,
    Device,
    Other,
}

impl FdKind {
    pub(crate) const ALL: [FdKind; 14] = [
        FdKind::File,
        FdKind::Dir,
        FdKind::Socket,
        FdKind::Pipe,
        FdKind::Eventfd,
        FdKind::Epoll,
        FdKind::Timerfd,
        FdKind::Signalfd,
        FdKind::Inotify,
        FdKind::Memfd,
        FdKind::Pidfd,
        FdKind::IoUring,
        FdKind::Device,
        FdKind::Other,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FdKind::File => "file",
            FdKind::Dir => "dir",
            FdKind::Socket => "socket",
            FdKind::Pipe => "pipe",
            FdKind::Eventfd => "eventfd",
            FdKind::Epoll => "epoll",
            FdKind::Timerfd => "timerfd",
            FdKind::Signalfd => "signalfd",
            FdKind::Inotify => "inotify",
            FdKind::Memfd => "memfd",
            FdKind::Pidfd => "pidfd",
            FdKind::IoUring => "io_uring",
            FdKind::Device => "device",
            FdKind::Other => "other",
        }
    }
}

impl fmt::Display for FdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What else is known about a descriptor, kept small: this is stored for every tracked fd.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum FdDetail {
    #[default]
    None,
    /// A path as the process named it (bytes: Linux paths need not be UTF-8).
    Path(Box<[u8]>),
    /// socket(2)'s arguments; addresses are looked up by inode when a report asks.
    Socket { family: u16, sock_type: u16, protocol: u16 },
    /// The process a pidfd refers to.
    Pid(u32),
    /// A memfd's name.
    Name(Box<[u8]>),
    /// A path or name the opening event could not carry: the kernel could not read it by the
    /// call's exit (its memory unmapped by then), or the call names its file by a handle
    /// (`open_by_handle_at`). /proc names it at a report (observe/procfs.rs, `describe_fd`).
    Unread,
}

impl FdDetail {
    pub(crate) fn path(&self) -> Option<&[u8]> {
        match self {
            FdDetail::Path(p) => Some(p),
            _ => None,
        }
    }
}

/// What ends a value that was cut short.
pub(crate) const TRUNCATED_MARKER: &str = "…[truncated]";

/// Bytes from the traced world (paths, command names) made safe to print in text, JSON and
/// metric labels: invalid UTF-8 replaced, control characters escaped (a newline in a path must
/// not forge a line of output), and at most `max_chars` characters, with a marker when cut.
pub(crate) fn printable(bytes: &[u8], max_chars: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len().min(max_chars + 8));
    for (count, c) in text.chars().enumerate() {
        if count >= max_chars {
            out.push_str(TRUNCATED_MARKER);
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// How a descriptor stopped being open (issue: "how each descriptor closed").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CloseReason {
    /// close(2).
    Close,
    /// close_range(2).
    CloseRange,
    /// dup2 / dup3 / F_DUPFD target that was open and got replaced.
    Replaced,
    /// Closed by exec because it was close-on-exec.
    Exec,
    /// The process exited.
    Exit,
    /// /proc said it was no longer open (an event was lost).
    Reconcile,
}

impl CloseReason {
    pub(crate) const ALL: [CloseReason; 6] = [
        CloseReason::Close,
        CloseReason::CloseRange,
        CloseReason::Replaced,
        CloseReason::Exec,
        CloseReason::Exit,
        CloseReason::Reconcile,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CloseReason::Close => "close",
            CloseReason::CloseRange => "close_range",
            CloseReason::Replaced => "replaced",
            CloseReason::Exec => "exec",
            CloseReason::Exit => "exit",
            CloseReason::Reconcile => "reconcile",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Where a descriptor came from: the call site that opened it, or one of two special origins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum SiteId {
    /// Open before tracing started (found in /proc at start).
    BeforeTrace,
    /// Found open in /proc by reconciliation without an event that opened it.
    UnknownOrigin,
    /// Opened under tracing, but the stack could not be captured or resolved.
    NoStack,
    /// Opened at a call site first seen after `--max-stacks` sites were remembered.
    SiteLimit,
    /// Stable hash of the resolved frames (model/frame.rs, `site_id`).
    Stack(u64),
}

impl SiteId {
    /// The `site` string of the report and the metrics.
    pub(crate) fn label(self) -> String {
        match self {
            SiteId::BeforeTrace => "before-trace".to_string(),
            SiteId::UnknownOrigin => "unknown-origin".to_string(),
            SiteId::NoStack => "no-stack".to_string(),
            SiteId::SiteLimit => "site-limit".to_string(),
            SiteId::Stack(hash) => format!("{hash:016x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_and_truncates() {
        assert_eq!(printable(b"/tmp/a b", 100), "/tmp/a b");
        assert_eq!(printable(b"/tmp/evil\nPID 1 fake", 100), "/tmp/evil\\nPID 1 fake");
        assert_eq!(printable(b"/tmp/\xff\xfe", 100), "/tmp/\u{fffd}\u{fffd}");
        assert_eq!(printable(b"abcdef", 3), "abc…[truncated]");
    }

    #[test]
    fn site_labels() {
        assert_eq!(SiteId::BeforeTrace.label(), "before-trace");
        assert_eq!(SiteId::UnknownOrigin.label(), "unknown-origin");
        assert_eq!(SiteId::Stack(0x9f2c1a7e3b4d5c6a).label(), "9f2c1a7e3b4d5c6a");
        assert_eq!(SiteId::Stack(1).label(), "0000000000000001");
    }

    #[test]
    fn kind_strings_are_the_contract() {
        let names: Vec<_> = FdKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "file", "dir", "socket", "pipe", "eventfd", "epoll", "timerfd", "signalfd", "inotify",
                "memfd", "pidfd", "io_uring", "device", "other"
            ]
        );
        for kind in FdKind::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }
}
