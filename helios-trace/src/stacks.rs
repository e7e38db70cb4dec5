//! From a captured user stack to a call site: the frames (module and offset of every return
//! address, from the process's memory maps captured while it runs) and a stable site id.
//!
//! A site id hashes what stays the same across processes, ASLR and restarts — each frame's
//! module path and offset in that module — never absolute addresses (except for frames in no
//! file-backed mapping, which have nothing better).
use std::{
    collections::HashMap,
    hash::Hasher,
    path::{Path, PathBuf},
    sync::Arc,
};

use fnv::FnvHasher;
use serde::{Serialize, Serializer};

use crate::fd::SiteId;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Language {
    Native,
    Python,
    Kernel,
}

/// One frame of a site's stack, innermost first; the report's `frames` entries. Unknown values
/// are `None` (JSON null), never invented.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Frame {
    pub symbol: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub module: Option<Arc<str>>,
    #[serde(serialize_with = "hex")]
    pub address: Option<u64>,
    /// Offset of the address in the module's file.
    #[serde(serialize_with = "hex")]
    pub offset: Option<u64>,
    pub language: Language,
}

fn hex<S: Serializer>(value: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => s.serialize_str(&format!("{v:#x}")),
        None => s.serialize_none(),
    }
}

impl Frame {
    /// Short human form: `symbol (file:line)`, or `module+0xoffset`, or the bare address.
    pub fn describe(&self) -> String {
        match (&self.symbol, &self.file, self.line, &self.module, self.offset, self.address) {
            (Some(symbol), Some(file), Some(line), ..) => format!("{symbol} ({file}:{line})"),
            (Some(symbol), _, _, Some(module), ..) => format!("{symbol} in {}", basename(module)),
            (Some(symbol), ..) => symbol.clone(),
            (None, _, _, Some(module), Some(offset), _) => format!("{module}+{offset:#x}"),
            (.., Some(address)) => format!("{address:#x}"),
            _ => "?".to_string(),
        }
    }
}

pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// A file-backed executable mapping of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub file_offset: u64,
    pub path: Arc<str>,
}

/// The file-backed mappings of one process image, sorted by address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessMaps {
    mappings: Vec<Mapping>,
}

impl ProcessMaps {
    /// Parse `/proc/PID/maps` text. Only file-backed mappings are kept: the others cannot be
    /// named stably.
    pub fn parse(text: &str) -> ProcessMaps {
        let mut mappings: Vec<Mapping> = text
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_ascii_whitespace();
                let range = fields.next()?;
                let _perms = fields.next()?;
                let offset = fields.next()?;
                let _dev = fields.next()?;
                let inode = fields.next()?;
                // The path is the rest of the line and may contain spaces.
                let path = line.splitn(6, |c: char| c.is_ascii_whitespace()).nth(5)?;
                let path = path.trim_start();
                if inode == "0" || !path.starts_with('/') {
                    return None;
                }
                let (start, end) = range.split_once('-')?;
                Some(Mapping {
                    start: u64::from_str_radix(start, 16).ok()?,
                    end: u64::from_str_radix(end, 16).ok()?,
                    file_offset: u64::from_str_radix(offset, 16).ok()?,
                    path: Arc::from(path),
                })
            })
            .collect();
        mappings.sort_by_key(|m| m.start);
        ProcessMaps { mappings }
    }

    pub fn read(proc_root: &Path, tgid: u32) -> Option<ProcessMaps> {
        let text = std::fs::read_to_string(proc_root.join(tgid.to_string()).join("maps")).ok()?;
        Some(ProcessMaps::parse(&text))
    }

    pub fn lookup(&self, address: u64) -> Option<&Mapping> {
        let index = self.mappings.partition_point(|m| m.start <= address);
        let mapping = self.mappings.get(index.checked_sub(1)?)?;
        (address < mapping.end).then_some(mapping)
    }
}

/// Frames of a raw user stack resolved against the process's maps.
pub fn resolve_frames(addresses: &[u64], maps: &ProcessMaps) -> Vec<Frame> {
    addresses
        .iter()
        .map(|&address| {
            let mapping = maps.lookup(address);
            Frame {
                symbol: None,
                file: None,
                line: None,
                module: mapping.map(|m| m.path.clone()),
                address: Some(address),
                offset: mapping.map(|m| address - m.start + m.file_offset),
                language: Language::Native,
            }
        })
        .collect()
}

/// The stable id of a stack: FNV-1a over each frame's (module, offset), or (symbol, file,
/// line) for interpreted frames, falling back to the address for frames in no file.
pub fn site_id(frames: &[Frame]) -> SiteId {
    let mut hasher = FnvHasher::default();
    for frame in frames {
        match (&frame.module, frame.offset, &frame.symbol) {
            (Some(module), Some(offset), _) => {
                hasher.write(module.as_bytes());
                hasher.write_u8(0);
                hasher.write_u64(offset);
            }
            (_, _, Some(symbol)) => {
                hasher.write(symbol.as_bytes());
                hasher.write_u8(0);
                hasher.write(frame.file.as_deref().unwrap_or("").as_bytes());
                hasher.write_u32(frame.line.unwrap_or(0));
            }
            _ => hasher.write_u64(frame.address.unwrap_or(0)),
        }
        hasher.write_u8(0xff);
    }
    SiteId::Stack(hasher.finish())
}

/// Turns (process, stack id) into sites and remembers each site's frames.
pub struct StackRegistry {
    proc_root: PathBuf,
    /// Per process: stack id → site. Stack ids are never reused for another stack (the kernel
    /// program does not pass BPF_F_REUSE_STACKID), so the pair names one stack of one image;
    /// an exec invalidates the process's entries.
    by_stack: HashMap<u32, HashMap<i32, SiteId>>,
    maps: HashMap<u32, ProcessMaps>,
    frames: HashMap<SiteId, Arc<[Frame]>>,
}

impl StackRegistry {
    pub fn new(proc_root: impl Into<PathBuf>) -> StackRegistry {
        StackRegistry {
            proc_root: proc_root.into(),
            by_stack: HashMap::new(),
            maps: HashMap::new(),
            frames: HashMap::new(),
        }
    }

    /// The site of a descriptor opened with user stack `stack_id`. `read_stack` fetches the
    /// stack's addresses from the kernel's stack map (only on first sight of the pair).
    pub fn site(
        &mut self,
        tgid: u32,
        stack_id: Option<i32>,
        read_stack: impl FnOnce(u32) -> Option<Vec<u64>>,
    ) -> SiteId {
        let Some(stack_id) = stack_id.filter(|id| *id >= 0) else {
            return SiteId::NoStack;
        };
        if let Some(site) = self.by_stack.get(&tgid).and_then(|m| m.get(&stack_id)) {
            return *site;
        }
        let site = match read_stack(stack_id as u32) {
            Some(addresses) if !addresses.is_empty() => {
                let frames = self.resolve(tgid, &addresses);
                let site = site_id(&frames);
                self.frames.entry(site).or_insert_with(|| frames.into());
                site
            }
            _ => SiteId::NoStack,
        };
        self.by_stack.entry(tgid).or_default().insert(stack_id, site);
        site
    }

    pub fn frames(&self, site: SiteId) -> Option<&Arc<[Frame]>> {
        self.frames.get(&site)
    }

    pub fn site_count(&self) -> usize {
        self.frames.len()
    }

    /// Read a process's maps now, while it is alive (called when a process starts or exec's,
    /// so that a process which exits before its events are read still resolves).
    pub fn capture_maps(&mut self, tgid: u32) {
        if let Some(maps) = ProcessMaps::read(&self.proc_root, tgid) {
            self.maps.insert(tgid, maps);
        }
    }

    /// A forked child runs its parent's image until it execs: same maps.
    pub fn inherit_maps(&mut self, parent: u32, child: u32) {
        if let Some(maps) = self.maps.get(&parent).cloned() {
            self.maps.insert(child, maps);
        }
    }

    /// The process image changed (exec) or the process is gone (exit).
    pub fn forget(&mut self, tgid: u32) {
        self.by_stack.remove(&tgid);
        self.maps.remove(&tgid);
    }

    fn resolve(&mut self, tgid: u32, addresses: &[u64]) -> Vec<Frame> {
        let covered = |maps: &ProcessMaps| addresses.iter().all(|a| maps.lookup(*a).is_some());
        // Maps change (dlopen, JIT); re-read once when an address is not covered.
        if !self.maps.get(&tgid).is_some_and(covered) {
            self.capture_maps(tgid);
        }
        let empty = ProcessMaps::default();
        resolve_frames(addresses, self.maps.get(&tgid).unwrap_or(&empty))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fd:01 1234   /usr/bin/leaky app
55d0c0a01000-55d0c0a02000 r-xp 00001000 fd:01 1234   /usr/bin/leaky app
7f3a12000000-7f3a12028000 r--p 00000000 fd:01 99     /usr/lib/x86_64-linux-gnu/libc.so.6
7f3a12028000-7f3a121bd000 r-xp 00028000 fd:01 99     /usr/lib/x86_64-linux-gnu/libc.so.6
7ffd4e9f0000-7ffd4ea11000 rw-p 00000000 00:00 0      [stack]
7ffd4ea8e000-7ffd4ea90000 r-xp 00000000 00:00 0      [vdso]
";

    #[test]
    fn parses_file_backed_mappings_with_spaces() {
        let maps = ProcessMaps::parse(MAPS);
        let m = maps.lookup(0x55d0c0a01010).unwrap();
        assert_eq!(&*m.path, "/usr/bin/leaky app");
        assert_eq!(m.file_offset, 0x1000);
        assert!(maps.lookup(0x7ffd4e9f0100).is_none(), "anonymous mappings are not modules");
        assert!(maps.lookup(0x10).is_none());
        assert!(maps.lookup(0x7f3a121bd000).is_none(), "end is exclusive");
    }

    #[test]
    fn frames_carry_module_and_file_offset() {
        let maps = ProcessMaps::parse(MAPS);
        let frames = resolve_frames(&[0x7f3a12030010, 0x1234], &maps);
        assert_eq!(frames[0].module.as_deref(), Some("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert_eq!(frames[0].offset, Some(0x30010));
        assert_eq!(frames[0].describe(), "/usr/lib/x86_64-linux-gnu/libc.so.6+0x30010");
        assert_eq!(frames[1].module, None);
        assert_eq!(frames[1].describe(), "0x1234");
    }

    #[test]
    fn site_ids_ignore_aslr() {
        let shifted = MAPS.replace("7f3a12", "7f11aa");
        let a = resolve_frames(&[0x7f3a12030010, 0x55d0c0a01010], &ProcessMaps::parse(MAPS));
        let b = resolve_frames(&[0x7f11aa030010, 0x55d0c0a01010], &ProcessMaps::parse(&shifted));
        assert_eq!(site_id(&a), site_id(&b));
        let other = resolve_frames(&[0x7f3a12030018, 0x55d0c0a01010], &ProcessMaps::parse(MAPS));
        assert_ne!(site_id(&a), site_id(&other));
    }

    #[test]
    fn frames_serialize_as_the_report_contract() {
        let frames = resolve_frames(&[0x7f3a12030010], &ProcessMaps::parse(MAPS));
        let json = serde_json::to_value(&frames[0]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "symbol": null, "file": null, "line": null,
                "module": "/usr/lib/x86_64-linux-gnu/libc.so.6",
                "address": "0x7f3a12030010", "offset": "0x30010", "language": "native"
            })
        );
    }

    #[test]
    fn registry_caches_per_process_and_forgets_on_exec() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("42")).unwrap();
        std::fs::write(dir.path().join("42/maps"), MAPS).unwrap();
        let mut registry = StackRegistry::new(dir.path());
        let reads = std::cell::Cell::new(0);
        let read = |_: u32| {
            reads.set(reads.get() + 1);
            Some(vec![0x7f3a12030010, 0x55d0c0a01010])
        };
        let site = registry.site(42, Some(3), read);
        assert!(matches!(site, SiteId::Stack(_)));
        assert_eq!(registry.site(42, Some(3), read), site);
        assert_eq!(reads.get(), 1, "the kernel map is read once per (process, stack id)");
        assert_eq!(registry.frames(site).unwrap().len(), 2);
        registry.forget(42);
        registry.site(42, Some(3), read);
        assert_eq!(reads.get(), 2);
        assert_eq!(registry.site(42, None, read), SiteId::NoStack);
        assert_eq!(registry.site(42, Some(-17), read), SiteId::NoStack);
    }
}
