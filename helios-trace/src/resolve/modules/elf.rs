//! A module file parsed: its build id, its PT_LOAD segments (to place file offsets), and the
//! CFI sections unwinding needs, handed over without a copy.
use std::{
    ops::{Deref, Range},
    sync::Arc,
};

use memmap2::Mmap;
use object::{Object as _, ObjectSection as _, ObjectSegment as _};
use thiserror::Error;

use super::{files::ModuleFile, gopclntab::GoTable, libuv::LibuvEntries, trampoline::PerfTrampoline};

#[derive(Debug, Error)]
pub(crate) enum ModuleError {
    #[error("cannot map {path}: {source}")]
    Map { path: String, source: std::io::Error },
    #[error("{path} is not an ELF file we can read: {source}")]
    Parse { path: String, source: object::Error },
}

/// A byte range of a mapped module file: section data handed to the unwinder without a copy.
#[derive(Clone, Debug)]
pub(crate) struct SectionBytes {
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
pub(crate) struct Section {
    pub(crate) svma: Range<u64>,
    pub(crate) bytes: SectionBytes,
}

/// What unwinding needs of an ELF file: its CFI sections and the addresses they relate to.
#[derive(Clone, Debug, Default)]
pub(crate) struct UnwindSections {
    pub(crate) text: Option<Range<u64>>,
    pub(crate) got: Option<Range<u64>>,
    pub(crate) eh_frame: Option<Section>,
    pub(crate) eh_frame_hdr: Option<Section>,
    pub(crate) debug_frame: Option<Section>,
}

/// A parsed module file.
#[derive(Debug)]
pub(crate) struct LoadedModule {
    pub(crate) build_id: Option<Box<[u8]>>,
    /// Keeps the file open (and its reopen path valid) while the module is cached.
    pub(crate) file: Arc<ModuleFile>,
    pub(crate) unwind: UnwindSections,
    /// A Go binary's own function and line table, which names its code stripped or not.
    pub(crate) go: Option<GoTable>,
    /// Where libuv's TCP entry points are, in a file that has them (Node.js).
    pub(crate) libuv: Option<LibuvEntries>,
    /// CPython's perf trampoline template, in an interpreter's file (`-X perf`).
    pub(crate) python_trampoline: Option<PerfTrampoline>,
    /// PT_LOAD segments: (file offset, SVMA, file size); shared with the Go table.
    segments: Arc<[(u64, u64, u64)]>,
    pub(super) size: u64,
}

impl LoadedModule {
    pub(crate) fn load(file: Arc<ModuleFile>) -> Result<LoadedModule, ModuleError> {
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
        let segments: Arc<[(u64, u64, u64)]> = elf
            .segments()
            .map(|s| {
                let (offset, size) = s.file_range();
                (offset, s.address(), size)
            })
            .collect();
        let build_id = elf.build_id().ok().flatten().map(Box::from);
        let go = GoTable::parse(&elf, &map, &segments);
        let libuv = LibuvEntries::find(&elf, &segments);
        let python_trampoline = PerfTrampoline::find(&elf, &map, &segments);
        Ok(LoadedModule {
            build_id,
            unwind,
            go,
            libuv,
            python_trampoline,
            segments,
            size: map.len() as u64,
            file,
        })
    }

    /// The SVMA of a file offset (through the PT_LOAD segment that maps it).
    pub(crate) fn svma_of_offset(&self, file_offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|(offset, _, size)| (*offset..offset + size).contains(&file_offset))
            .map(|(offset, svma, _)| svma + (file_offset - offset))
    }

    /// Where SVMA 0 sits in a process that maps the file offset `text.1` at `text.0`.
    pub(crate) fn bias(&self, text: (u64, u64)) -> Option<u64> {
        text.0.checked_sub(self.svma_of_offset(text.1)?)
    }
}
