//! Where each file sits in a process: its file-backed mappings, from /proc/PID/maps.
use std::sync::Arc;

/// What identifies a file on the machine: (device, inode) as /proc/PID/maps shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct FileKey {
    pub(crate) dev: u64,
    pub(crate) inode: u64,
}

/// A file-backed mapping of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Mapping {
    pub(crate) start: u64,
    pub(crate) end: u64,
    /// File offset of `start`.
    pub(crate) file_offset: u64,
    /// The path as the process names it, without the " (deleted)" mark.
    pub(crate) path: Arc<str>,
    pub(crate) key: FileKey,
    pub(crate) executable: bool,
}

/// The file-backed mappings of one process image, sorted by address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ProcessMaps {
    mappings: Vec<Mapping>,
}

impl ProcessMaps {
    /// Parse `/proc/PID/maps` text (fs/proc/task_mmu.c, show_map_vma:
    /// `start-end perms offset major:minor inode path`). Only file-backed mappings are kept:
    /// the others cannot be named stably.
    pub(crate) fn parse(text: &str) -> ProcessMaps {
        let mut mappings: Vec<Mapping> = text.lines().filter_map(parse_line).collect();
        mappings.sort_by_key(|m| m.start);
        ProcessMaps { mappings }
    }

    pub(crate) fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }

    pub(crate) fn lookup(&self, address: u64) -> Option<&Mapping> {
        let index = self.mappings.partition_point(|m| m.start <= address);
        let mapping = self.mappings.get(index.checked_sub(1)?)?;
        (address < mapping.end).then_some(mapping)
    }

    /// Whether every address lies in an executable mapping.
    pub(crate) fn covers(&self, addresses: &[u64]) -> bool {
        addresses.iter().all(|a| self.lookup(*a).is_some_and(|m| m.executable))
    }
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut fields = line.split_ascii_whitespace();
    let range = fields.next()?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let dev = fields.next()?;
    let inode: u64 = fields.next()?.parse().ok()?;
    // The path is the rest of the line and may contain spaces.
    let path = line.splitn(6, |c: char| c.is_ascii_whitespace()).nth(5)?.trim_start();
    if inode == 0 || !path.starts_with('/') {
        return None;
    }
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    let (start, end) = range.split_once('-')?;
    let (major, minor) = dev.split_once(':')?;
    let dev = (u64::from_str_radix(major, 16).ok()? << 32) | u64::from_str_radix(minor, 16).ok()?;
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        file_offset: u64::from_str_radix(offset, 16).ok()?,
        path: Arc::from(path),
        key: FileKey { dev, inode },
        executable: perms.as_bytes().get(2) == Some(&b'x'),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fd:01 1234   /usr/bin/leaky app
55d0c0a01000-55d0c0a02000 r-xp 00001000 fd:01 1234   /usr/bin/leaky app
7f3a12000000-7f3a12028000 r--p 00000000 fd:01 99     /usr/lib/x86_64-linux-gnu/libc.so.6
7f3a12028000-7f3a121bd000 r-xp 00028000 fd:01 99     /usr/lib/x86_64-linux-gnu/libc.so.6
7f3a12300000-7f3a12301000 r-xp 00001000 08:02 77     /opt/old/libgone.so (deleted)
7ffd4e9f0000-7ffd4ea11000 rw-p 00000000 00:00 0      [stack]
7ffd4ea8e000-7ffd4ea90000 r-xp 00000000 00:00 0      [vdso]
";

    #[test]
    fn parses_file_backed_mappings() {
        let maps = ProcessMaps::parse(MAPS);
        let m = maps.lookup(0x55d0c0a01010).unwrap();
        assert_eq!(&*m.path, "/usr/bin/leaky app", "paths may contain spaces");
        assert_eq!((m.file_offset, m.executable), (0x1000, true));
        assert_eq!(m.key, FileKey { dev: 0xfd << 32 | 1, inode: 1234 });
        assert!(!maps.lookup(0x55d0c0a00010).unwrap().executable);
        assert!(maps.lookup(0x7ffd4e9f0100).is_none(), "anonymous mappings are not modules");
        assert!(maps.lookup(0x10).is_none());
        assert!(maps.lookup(0x7f3a121bd000).is_none(), "end is exclusive");
        let gone = maps.lookup(0x7f3a12300010).unwrap();
        assert_eq!(&*gone.path, "/opt/old/libgone.so", "the (deleted) mark is not part of the name");
        assert!(maps.covers(&[0x55d0c0a01010, 0x7f3a12030000]));
        assert!(!maps.covers(&[0x55d0c0a00010]), "only executable mappings hold code");
    }
}
