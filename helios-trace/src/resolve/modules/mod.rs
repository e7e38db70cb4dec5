//! The executable files (modules) mapped into traced processes: where each sits in a
//! process (from /proc/PID/maps), a handle on each file taken while the process runs, and the
//! parsed modules, cached by build id with a bound on their number and size.
//!
//! A handle is taken at first sight of a process (baseline, exec, fork), through
//! /proc/PID/map_files (the very file mapped, even when it was deleted or replaced since, and
//! whatever mount namespace the process lives in), so that its stacks still resolve after it
//! has exited, and a binary replaced by a deploy still names the code that ran.
use std::{
    collections::HashMap,
    fs::File,
    ops::{Deref, Range},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{Arc, Weak},
};

use memmap2::Mmap;
use object::{Object as _, ObjectSection as _, ObjectSegment as _};
use thiserror::Error;

use crate::sys::proc;

/// What identifies a file on the machine: (device, inode) as /proc/PID/maps shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    pub dev: u64,
    pub inode: u64,
}

/// A file-backed mapping of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub file_offset: u64,
    /// The path as the process names it, without the " (deleted)" mark.
    pub path: Arc<str>,
    pub key: FileKey,
    pub executable: bool,
}

/// The file-backed mappings of one process image, sorted by address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessMaps {
    mappings: Vec<Mapping>,
}

impl ProcessMaps {
    /// Parse `/proc/PID/maps` text (fs/proc/task_mmu.c, show_map_vma:
    /// `start-end perms offset major:minor inode path`). Only file-backed mappings are kept:
    /// the others cannot be named stably.
    pub fn parse(text: &str) -> ProcessMaps {
        let mut mappings: Vec<Mapping> = text.lines().filter_map(parse_line).collect();
        mappings.sort_by_key(|m| m.start);
        ProcessMaps { mappings }
    }

    pub fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }

    pub fn lookup(&self, address: u64) -> Option<&Mapping> {
        let index = self.mappings.partition_point(|m| m.start <= address);
        let mapping = self.mappings.get(index.checked_sub(1)?)?;
        (address < mapping.end).then_some(mapping)
    }

    /// Whether every address lies in an executable mapping.
    pub fn covers(&self, addresses: &[u64]) -> bool {
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

/// An open handle on a mapped file, shared by every process that maps it.
#[derive(Debug)]
pub struct ModuleFile {
    pub key: FileKey,
    /// The path as the first process that mapped it named it.
    pub path: Arc<str>,
    file: File,
}

impl ModuleFile {
    pub fn new(key: FileKey, path: Arc<str>, file: File) -> ModuleFile {
        ModuleFile { key, path, file }
    }

    /// A path that opens this very file for as long as the handle lives, whatever happened to
    /// its name since (the /proc/self/fd magic link).
    pub fn reopen_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

/// One module of a process: a file and the address range of its mappings there.
#[derive(Clone, Debug)]
pub struct ProcessModule {
    pub file: Arc<ModuleFile>,
    /// From the first to the last mapping of the file.
    pub range: Range<u64>,
    /// An executable mapping of it: (start, file offset), to place the file's addresses.
    pub text: (u64, u64),
}

/// A process's maps with a handle on each executable file in them.
#[derive(Clone, Debug, Default)]
pub struct ProcessImage {
    pub maps: ProcessMaps,
    pub modules: Vec<ProcessModule>,
}

impl ProcessImage {
    /// The module an address belongs to.
    pub fn module_of(&self, address: u64) -> Option<&ProcessModule> {
        let mapping = self.maps.lookup(address).filter(|m| m.executable)?;
        self.modules.iter().find(|m| m.file.key == mapping.key && m.range.contains(&address))
    }
}

/// At most this many mapped files are held open (a node maps a few hundred to a few thousand
/// distinct files); beyond, frames in files not held are named by module and offset only.
pub const MAX_OPEN_FILES: usize = 8192;

/// Handles on mapped files, by (device, inode): one per file however many processes map it,
/// released when the last process image holding it is forgotten.
#[derive(Debug, Default)]
pub struct ModuleFiles {
    open: HashMap<FileKey, Weak<ModuleFile>>,
}

impl ModuleFiles {
    /// Read `tgid`'s maps under `proc_root` and take a handle on every executable file.
    pub fn capture(&mut self, proc_root: &Path, tgid: u32) -> Option<ProcessImage> {
        let text = std::fs::read_to_string(proc_root.join(tgid.to_string()).join("maps")).ok()?;
        Some(self.image(proc_root, tgid, ProcessMaps::parse(&text)))
    }

    /// Group `maps` into modules, opening the files not open yet.
    pub fn image(&mut self, proc_root: &Path, tgid: u32, maps: ProcessMaps) -> ProcessImage {
        self.open.retain(|_, file| file.strong_count() > 0);
        let mut room = MAX_OPEN_FILES.saturating_sub(self.open.len());
        let mut modules: Vec<ProcessModule> = Vec::new();
        for mapping in maps.mappings() {
            if let Some(last) = modules.last_mut().filter(|m| m.file.key == mapping.key) {
                last.range.end = mapping.end;
                continue;
            }
            let Some(text) = maps
                .mappings()
                .iter()
                .find(|m| m.key == mapping.key && m.executable && m.start >= mapping.start)
            else {
                continue;
            };
            let file = match self.open.get(&mapping.key).and_then(Weak::upgrade) {
                Some(file) => file,
                None if room == 0 => continue,
                None => {
                    let Ok(file) = proc::image::open_mapped_file(
                        proc_root,
                        tgid,
                        mapping.start,
                        mapping.end,
                        &mapping.path,
                        mapping.key.inode,
                    ) else {
                        continue;
                    };
                    let file = Arc::new(ModuleFile::new(mapping.key, mapping.path.clone(), file));
                    self.open.insert(mapping.key, Arc::downgrade(&file));
                    room -= 1;
                    file
                }
            };
            modules.push(ProcessModule {
                file,
                range: mapping.start..mapping.end,
                text: (text.start, text.file_offset),
            });
        }
        ProcessImage { maps, modules }
    }
}

#[derive(Debug, Error)]
pub enum ModuleError {
    #[error("cannot map {path}: {source}")]
    Map { path: String, source: std::io::Error },
    #[error("{path} is not an ELF file we can read: {source}")]
    Parse { path: String, source: object::Error },
}

/// A byte range of a mapped module file: section data handed to the unwinder without a copy.
#[derive(Clone, Debug)]
pub struct SectionBytes {
    map: Arc<Mmap>,
    range: Range<usize>,
}

impl Deref for SectionBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.map[self.range.clone()]
    }
}

/// A section's address as the file states it (SVMA) and its bytes.
#[derive(Clone, Debug)]
pub struct Section {
    pub svma: Range<u64>,
    pub bytes: SectionBytes,
}

/// What unwinding needs of an ELF file: its CFI sections and the addresses they relate to.
#[derive(Clone, Debug, Default)]
pub struct UnwindSections {
    pub text: Option<Range<u64>>,
    pub got: Option<Range<u64>>,
    pub eh_frame: Option<Section>,
    pub eh_frame_hdr: Option<Section>,
    pub debug_frame: Option<Section>,
}

/// A parsed module file.
#[derive(Debug)]
pub struct LoadedModule {
    pub build_id: Option<Box<[u8]>>,
    /// Keeps the file open (and its reopen path valid) while the module is cached.
    pub file: Arc<ModuleFile>,
    pub unwind: UnwindSections,
    /// PT_LOAD segments: (file offset, SVMA, file size).
    segments: Vec<(u64, u64, u64)>,
    size: u64,
}

impl LoadedModule {
    pub fn load(file: Arc<ModuleFile>) -> Result<LoadedModule, ModuleError> {
        let path = file.path.to_string();
        // SAFETY: a read-only private mapping; a file truncated under us would fault, which is
        // why the mapping is only read through object's bounds-checked parser and by slices it
        // vouched for. Executables being run cannot be written (ETXTBSY), libraries can but
        // are replaced by rename in practice.
        let map = unsafe { Mmap::map(&file.file) }
            .map_err(|source| ModuleError::Map { path: path.clone(), source })?;
        let map = Arc::new(map);
        let elf = object::File::parse(&**map).map_err(|source| ModuleError::Parse { path, source })?;
        let section = |name: &str| -> Option<Section> {
            let section = elf.section_by_name(name)?;
            let (offset, size) = section.file_range()?;
            let range = usize::try_from(offset).ok()?..usize::try_from(offset + size).ok()?;
            (range.end <= map.len()).then(|| Section {
                svma: section.address()..section.address() + section.size(),
                bytes: SectionBytes { map: map.clone(), range },
            })
        };
        let svma = |name: &str| elf.section_by_name(name).map(|s| s.address()..s.address() + s.size());
        let unwind = UnwindSections {
            text: svma(".text"),
            got: svma(".got"),
            eh_frame: section(".eh_frame"),
            eh_frame_hdr: section(".eh_frame_hdr"),
            debug_frame: section(".debug_frame"),
        };
        let segments = elf
            .segments()
            .map(|s| {
                let (offset, size) = s.file_range();
                (offset, s.address(), size)
            })
            .collect();
        let build_id = elf.build_id().ok().flatten().map(Box::from);
        Ok(LoadedModule { build_id, unwind, segments, size: map.len() as u64, file })
    }

    /// The SVMA of a file offset (through the PT_LOAD segment that maps it).
    pub fn svma_of_offset(&self, file_offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|(offset, _, size)| (*offset..offset + size).contains(&file_offset))
            .map(|(offset, svma, _)| svma + (file_offset - offset))
    }

    /// Where SVMA 0 sits in a process that maps the file offset `text.1` at `text.0`.
    pub fn bias(&self, text: (u64, u64)) -> Option<u64> {
        text.0.checked_sub(self.svma_of_offset(text.1)?)
    }
}

/// Identity of a parsed module: its build id and size (the same file, wherever it is: a
/// library in many containers), or the file when it has no build id. The size keeps a
/// stripped copy apart from the binary it was stripped from: same build id, other symbols.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ModuleId {
    BuildId { id: Box<[u8]>, size: u64 },
    File(FileKey),
}

/// Parsed modules by build id (the same library in many processes, or in many containers as
/// different files, is parsed once), least recently used evicted beyond `max_modules` or
/// `max_bytes` of mapped files.
#[derive(Debug)]
pub struct ModuleCache {
    by_id: HashMap<ModuleId, (Arc<LoadedModule>, u64)>,
    by_file: HashMap<FileKey, ModuleId>,
    tick: u64,
    bytes: u64,
    max_modules: usize,
    max_bytes: u64,
}

impl ModuleCache {
    pub fn new(max_modules: usize, max_bytes: u64) -> ModuleCache {
        ModuleCache {
            by_id: HashMap::new(),
            by_file: HashMap::new(),
            tick: 0,
            bytes: 0,
            max_modules: max_modules.max(1),
            max_bytes,
        }
    }

    /// The parsed module of `file`, parsing it on first use. Evicted modules are returned in
    /// `evicted` so that what was derived from them can be dropped too.
    pub fn get(
        &mut self,
        file: &Arc<ModuleFile>,
        evicted: &mut Vec<Arc<LoadedModule>>,
    ) -> Result<Arc<LoadedModule>, ModuleError> {
        self.tick += 1;
        if let Some((module, used)) = self.by_file.get(&file.key).and_then(|id| self.by_id.get_mut(id)) {
            *used = self.tick;
            return Ok(module.clone());
        }
        let loaded = LoadedModule::load(file.clone())?;
        let id = match &loaded.build_id {
            Some(build_id) => ModuleId::BuildId { id: build_id.clone(), size: loaded.size },
            None => ModuleId::File(file.key),
        };
        self.by_file.insert(file.key, id.clone());
        if let Some((module, used)) = self.by_id.get_mut(&id) {
            // Another file with the same build id: the same code, already parsed.
            *used = self.tick;
            return Ok(module.clone());
        }
        let module = Arc::new(loaded);
        self.bytes += module.size;
        self.by_id.insert(id, (module.clone(), self.tick));
        while self.by_id.len() > self.max_modules || (self.bytes > self.max_bytes && self.by_id.len() > 1) {
            let Some(oldest) = self.by_id.iter().min_by_key(|(_, (_, used))| *used).map(|(id, _)| id.clone())
            else {
                break;
            };
            if let Some((old, _)) = self.by_id.remove(&oldest) {
                self.bytes -= old.size;
                self.by_file.retain(|_, id| *id != oldest);
                evicted.push(old);
            }
        }
        Ok(module)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_id.len()
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

    #[test]
    fn images_group_mappings_into_modules_and_share_handles() {
        // A fake procfs whose "map_files" links are the files themselves.
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("leaky");
        std::fs::write(&exe, b"not really an ELF").unwrap();
        let maps = format!(
            "1000-2000 r--p 00000000 fd:01 5 {0}\n2000-3000 r-xp 00001000 fd:01 5 {0}\n3000-4000 rw-p 00000000 00:00 0 \n",
            exe.display()
        );
        for pid in ["7", "8"] {
            std::fs::create_dir_all(dir.path().join(pid).join("map_files")).unwrap();
            std::fs::write(dir.path().join(pid).join("maps"), &maps).unwrap();
            std::os::unix::fs::symlink(&exe, dir.path().join(pid).join("map_files/1000-2000")).unwrap();
        }
        let mut files = ModuleFiles::default();
        let a = files.capture(dir.path(), 7).unwrap();
        let b = files.capture(dir.path(), 8).unwrap();
        assert_eq!(a.modules.len(), 1);
        let module = &a.modules[0];
        assert_eq!((module.range.clone(), module.text), (0x1000..0x3000, (0x2000, 0x1000)));
        assert!(Arc::ptr_eq(&module.file, &b.modules[0].file), "one handle per file");
        assert!(a.module_of(0x2800).is_some());
        assert!(a.module_of(0x1800).is_none(), "not executable");
        assert!(files.capture(dir.path(), 9).is_none());
    }

    #[test]
    fn cache_shares_by_build_id_and_evicts_least_recently_used() {
        let handle = |inode: u64, path: &Path| {
            let file = File::open(path).unwrap();
            Arc::new(ModuleFile::new(FileKey { dev: 1, inode }, Arc::from(path.to_str().unwrap()), file))
        };
        let exe = std::env::current_exe().unwrap();
        let other = Path::new("/usr/bin/true");
        // Two files of the test binary (as two containers would have): one module.
        let (a1, a2, b) = (handle(1, &exe), handle(2, &exe), handle(3, other));
        let mut cache = ModuleCache::new(1, u64::MAX);
        let mut evicted = Vec::new();
        let first = cache.get(&a1, &mut evicted).unwrap();
        assert!(first.build_id.is_some());
        assert!(Arc::ptr_eq(&first, &cache.get(&a2, &mut evicted).unwrap()));
        assert!(first.unwind.eh_frame.is_some() && first.unwind.eh_frame_hdr.is_some());
        assert!(first.unwind.text.as_ref().is_some_and(|t| !t.is_empty()));
        assert!(evicted.is_empty());
        // A second module does not fit: the least recently used one goes.
        cache.get(&b, &mut evicted).unwrap();
        assert_eq!(cache.len(), 1);
        assert_eq!(evicted.len(), 1);
        assert!(Arc::ptr_eq(&evicted[0], &first));
        let again = cache.get(&a1, &mut evicted).unwrap();
        assert!(!Arc::ptr_eq(&again, &first), "parsed again after eviction");
        // The byte budget bounds it as well (but always keeps the module in use).
        let mut tiny = ModuleCache::new(10, 1);
        tiny.get(&a1, &mut evicted).unwrap();
        tiny.get(&b, &mut evicted).unwrap();
        assert_eq!(tiny.len(), 1);
        // A stripped copy has the build id of its original but not its symbols: kept apart.
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/unwind");
        let (full, stripped) = (handle(10, &data.join("sample")), handle(11, &data.join("sample.stripped")));
        let mut cache = ModuleCache::new(10, u64::MAX);
        let (full, stripped) =
            (cache.get(&full, &mut evicted).unwrap(), cache.get(&stripped, &mut evicted).unwrap());
        assert_eq!(full.build_id, stripped.build_id);
        assert!(!Arc::ptr_eq(&full, &stripped));
        let null = Arc::new(ModuleFile::new(
            FileKey { dev: 1, inode: 9 },
            Arc::from("/dev/null"),
            File::open("/dev/null").unwrap(),
        ));
        assert!(LoadedModule::load(null).is_err());
    }
}
