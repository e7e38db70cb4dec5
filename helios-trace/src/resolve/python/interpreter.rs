//! A recognised CPython process: finding its interpreter, layout and runtime state (possible as
//! soon as the interpreter's image is mapped, before its runtime starts), checking them against
//! the process once it runs, then naming the (code object, instruction) pairs the kernel
//! walked, with its code objects and Python call paths cached.
use std::{num::NonZeroUsize, path::Path, sync::Arc};

use helios_trace_common::{PythonFrame, PythonOffsets};
use lru::LruCache;
use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};

use super::{
    PythonError,
    layout::{
        DEBUG_OFFSETS_LEN, Layout, frame_read, frame_window, layout_from_debug_offsets, static_layout,
        tstate_read, version_of,
    },
    lines,
    memory::{MAX_LINETABLE, Memory},
};
use crate::{
    model::{fd::SiteId, frame::Frame},
    resolve::{
        cache::{BoundedLru, Weight},
        modules::maps::{Mapping, ProcessMaps},
    },
    sys::proc::{self, image},
};

/// What names a code object.
#[derive(Debug)]
struct CodeInfo {
    name: Arc<str>,
    filename: Arc<str>,
    firstlineno: u32,
    linetable: Vec<u8>,
    /// The name, file name and line table objects it was read from: a code object freed and
    /// another allocated at its address has others, which tells a stale cache entry.
    objects: [u64; 3],
}

/// A recognised CPython process.
pub(super) struct Interpreter {
    /// The file holding the runtime (libpython or the executable), as the process maps it.
    pub(super) path: String,
    pub(super) layout: Layout,
    /// The offsets as the kernel gets them (with this process's addresses).
    pub(super) offsets: PythonOffsets,
    /// Address of `PyCode_Type`: a code object's `ob_type` must be it.
    code_type: Option<u64>,
    memory: Memory,
    codes: BoundedLru<u64, Arc<CodeInfo>>,
    /// (native site, raw Python frames) → site.
    pub(super) sites: LruCache<(SiteId, Box<[PythonFrame]>), SiteId>,
    /// `interpreters.head` was set when found: the runtime had started, Python code may have
    /// run before the kernel walked its frames.
    pub(super) started: bool,
}

/// Bounds of the per-process caches: code objects by their bytes (line tables vary from a
/// few bytes to a megabyte), Python call paths by number; least recently used go first.
const MAX_CODE_BYTES: usize = 4 << 20;
const MAX_SITES: NonZeroUsize = NonZeroUsize::new(16 * 1024).expect("not zero");

impl Weight for Arc<CodeInfo> {
    fn weight(&self) -> usize {
        size_of::<CodeInfo>() + self.name.len() + self.filename.len() + self.linetable.len()
    }
}

impl Interpreter {
    /// The code object at `address`, cached while it still is the one read (code objects are
    /// freed and their addresses reused: e.g. a module's body after its import). Failures are
    /// not cached: the kernel may have walked a frame whose code was freed before we read it.
    fn code(&mut self, address: u64) -> Option<Arc<CodeInfo>> {
        if let Some(info) = self.codes.get(&address).cloned()
            && self.objects(address).is_some_and(|objects| objects == info.objects)
        {
            return Some(info);
        }
        let info = Arc::new(self.read_code(address)?);
        self.codes.insert(address, info.clone());
        Some(info)
    }

    /// The name, file name and line table objects of a code object.
    fn objects(&self, address: u64) -> Option<[u64; 3]> {
        let (m, code) = (&self.memory, &self.layout.code);
        Some([
            m.u64(address + code.qualname.unwrap_or(code.name)).ok()?,
            m.u64(address + code.filename).ok()?,
            m.u64(address + code.linetable).ok()?,
        ])
    }

    fn read_code(&self, address: u64) -> Option<CodeInfo> {
        let m = &self.memory;
        // ob_type is at 8 in every object (Include/object.h).
        if let Some(code_type) = self.code_type
            && m.u64(address + 8).ok()? != code_type
        {
            return None;
        }
        let objects = self.objects(address)?;
        Some(CodeInfo {
            name: m.string(objects[0], &self.layout)?.into(),
            filename: m.string(objects[1], &self.layout)?.into(),
            firstlineno: m.u32(address + self.layout.code.firstlineno).ok()?,
            linetable: m.bytes(objects[2], MAX_LINETABLE)?,
            objects,
        })
    }

    /// One walked frame as a report frame: Some(None) for the interpreter's own shim frame,
    /// None when its code object does not read as one.
    pub(super) fn frame(&mut self, raw: PythonFrame) -> Option<Option<Frame>> {
        let info = self.code(raw.code)?;
        if is_init_shim(&info) {
            return Some(None);
        }
        let line = match self.layout.code.code_adaptive {
            // 3.10: f_lasti counts code units (2 bytes); -1 before the first instruction.
            None => lines::line_310(&info.linetable, info.firstlineno, (raw.instr as u32 as i32) as i64 * 2),
            Some(start) => {
                let offset = raw.instr.wrapping_sub(raw.code + start) as i64;
                lines::line_311(&info.linetable, info.firstlineno, offset)
            }
        };
        Some(Some(Frame::python(info.name.clone(), info.filename.clone(), line)))
    }
}

/// CPython 3.13+'s `_Py_InitCleanup`: the shim frame its specialized `CALL_ALLOC_AND_ENTER_INIT`
/// pushes under a class's Python `__init__` (to check that it returned None), a static code
/// object named and filed as "__init__" (Python/specialize.c; no code of a file has a file
/// name without a directory or a `<...>` form), its line table one "no location" entry. It is
/// no code of the program, and it is there only once the call is specialized: kept, the same
/// call path would make one site before specialization and another after. CPython's own
/// introspection never shows it (its `_co_firsttraceable` lies past its code, so the frame is
/// always "incomplete": Include/internal/pycore_frame.h, `_PyFrame_IsIncomplete`).
fn is_init_shim(info: &CodeInfo) -> bool {
    &*info.name == "__init__" && &*info.filename == "__init__"
}

/// The mapping that holds a process's CPython runtime, and its version: libpython where there
/// is one, else the executable (a static interpreter).
fn interpreter_mapping(maps: &ProcessMaps) -> Option<(&Mapping, Result<u32, PythonError>)> {
    let candidates = |lib: bool| {
        maps.mappings()
            .iter()
            .filter(move |m| crate::model::frame::basename(&m.path).starts_with("libpython") == lib)
            .find_map(|m| version_of(&m.path).map(|v| (m, v)))
    };
    candidates(true).or_else(|| candidates(false))
}

/// Find a process's CPython, its layout and runtime: the interpreter's mapped file and what
/// was found (the offsets are not checked against the process yet: `Interpreter::check`).
pub(super) fn probe(proc_root: &Path, pid: u32) -> Option<(String, Result<Interpreter, PythonError>)> {
    let maps = ProcessMaps::parse(&image::maps(proc_root, pid)?);
    let (mapping, version) = interpreter_mapping(&maps)?;
    let found = version.and_then(|minor| locate(proc_root, pid, &maps, mapping, minor));
    Some((mapping.path.to_string(), found))
}

/// The layout and runtime of the interpreter `mapping` holds, with this process's addresses and
/// pid namespace: what the kernel walks with. Needs the runtime mapped, not started: before
/// `interpreters.head` is set the kernel finds no interpreter and walks nothing (no Python code
/// has run yet), and from the moment it is set the walk finds the thread states.
fn locate(
    proc_root: &Path,
    pid: u32,
    maps: &ProcessMaps,
    mapping: &Mapping,
    minor: u32,
) -> Result<Interpreter, PythonError> {
    let (runtime, code_type) = runtime_address(proc_root, pid, maps, mapping)?;
    let memory = Memory::open(proc_root, pid)?;
    let layout = layout_at(minor, |bytes| memory.read(runtime, bytes))?;
    let pidns = proc::pid_namespace(proc_root, pid).ok_or(PythonError::Gone)?;
    let offsets = kernel_offsets(&layout, runtime, pidns)?;
    let started = memory.u64(offsets.interpreters_head)? != 0;
    Ok(Interpreter {
        path: mapping.path.to_string(),
        layout,
        offsets,
        code_type,
        memory,
        codes: BoundedLru::new(MAX_CODE_BYTES),
        sites: LruCache::new(MAX_SITES),
        started,
    })
}

/// The layout of CPython 3.`minor`: its table, or (3.13+) the `_Py_DebugOffsets` at the
/// start of `_PyRuntime`, which `read_runtime` fills.
fn layout_at(
    minor: u32,
    read_runtime: impl FnOnce(&mut [u8]) -> Result<(), PythonError>,
) -> Result<Layout, PythonError> {
    if let Some(layout) = static_layout(minor) {
        return Ok(layout);
    }
    let mut bytes = vec![0u8; DEBUG_OFFSETS_LEN];
    read_runtime(&mut bytes)?;
    layout_from_debug_offsets(&bytes, minor)
}

/// What the kernel walks a process with: `layout`, its `_PyRuntime` at `runtime`, its pid
/// namespace (nsfs device in the kernel's encoding, inode).
fn kernel_offsets(
    layout: &Layout,
    runtime: u64,
    (dev, ino): (u64, u64),
) -> Result<PythonOffsets, PythonError> {
    let mut offsets = layout.kernel;
    offsets.interpreters_head = runtime + layout.interpreters_head;
    offsets.frame_read = frame_read(&offsets).ok_or(PythonError::Layout)?;
    offsets.tstate_read = tstate_read(&offsets).ok_or(PythonError::Layout)?;
    offsets.frame_window = frame_window(layout.minor);
    // In the initial pid namespace a thread's id is the kernel's own: no namespace to ask.
    if ino != PROC_PID_INIT_INO {
        (offsets.pidns_dev, offsets.pidns_ino) = (dev, ino);
    }
    if layout.minor == 10 {
        // Until the thread states can be searched for it (check), glibc's usual offset.
        offsets.pthread_tid = GLIBC_X86_64_PTHREAD_TID;
    }
    Ok(offsets)
}

/// The kernel's offsets for a process that is about to exec `program` (`helios-trace run`'s
/// command, held at its gate), when they can be known before it runs: `program` is a CPython
/// executable linked at a fixed address (ET_EXEC, as Debian builds its `python3.X`) holding its
/// own `_PyRuntime`, so the runtime's address is the symbol's and its `_Py_DebugOffsets` are
/// the file's bytes there (static data, initialized: Python/pylifecycle.c, `_PyRuntime =
/// _PyRuntimeState_INIT`). Given to the kernel before the exec, they let it walk the
/// interpreter's frames from its first Python code: no race against its startup. A
/// position-independent interpreter or one whose runtime is in a libpython is placed by the
/// loader at exec: `None`, it is probed at its exec like any other. `pidns`: the process's pid
/// namespace (it does not change at exec).
pub(crate) fn offsets_before_exec(
    program: &Path,
    pidns: (u64, u64),
) -> Result<Option<PythonOffsets>, PythonError> {
    let canonical = std::fs::canonicalize(program).unwrap_or_else(|_| program.to_path_buf());
    let path = canonical.to_string_lossy().into_owned();
    let Some(minor) = version_of(&path) else { return Ok(None) };
    let minor = minor?;
    let elf_error = |reason: String| PythonError::Elf { path: path.clone(), reason };
    // Mapped, as runtime_address maps it, not read whole: only the headers, the symbol tables
    // and the runtime's bytes are touched.
    let file = std::fs::File::open(&canonical).map_err(|e| elf_error(e.to_string()))?;
    // SAFETY: a read-only private mapping only read through object's bounds-checked parser;
    // an installed interpreter is not rewritten in place.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| elf_error(e.to_string()))?;
    let elf = object::File::parse(&*map).map_err(|e| elf_error(e.to_string()))?;
    if elf.kind() != object::ObjectKind::Executable {
        return Ok(None);
    }
    let Some(runtime) = symbol_address(&elf, "_PyRuntime") else { return Ok(None) };
    let layout = layout_at(minor, |out| {
        let in_file = elf.segments().find_map(|s| {
            let (offset, size) = s.file_range();
            let at = runtime.checked_sub(s.address()).filter(|at| at + out.len() as u64 <= size)?;
            map.get((offset + at) as usize..(offset + at) as usize + out.len())
        });
        let in_file = in_file.ok_or_else(|| elf_error("_PyRuntime is not in the file".into()))?;
        out.copy_from_slice(in_file);
        Ok(())
    })?;
    kernel_offsets(&layout, runtime, pidns).map(Some)
}

impl Interpreter {
    /// Whether the runtime has an interpreter now (`interpreters.head` set): from then on
    /// Python code may run. An unreadable runtime counts as started (it may have been).
    pub(super) fn runtime_started(&self) -> bool {
        self.memory.u64(self.offsets.interpreters_head) != Ok(0)
    }

    /// Check the offsets against the running process: one of its thread states must carry one
    /// of its thread ids, as its own pid namespace numbers them (`native_thread_id` is
    /// gettid(2) in the thread's namespace; 3.10's glibc `struct pthread` holds what clone(2)
    /// wrote there, the same). `NotReady` while the runtime has not started. Returns whether
    /// the kernel's offsets changed (3.10's pthread tid offset, found here).
    pub(super) fn check(&mut self, proc_root: &Path, pid: u32) -> Result<bool, PythonError> {
        let (memory, offsets) = (&self.memory, &mut self.offsets);
        let tids = proc::ns_tids(proc_root, pid);
        let interp = memory.u64(offsets.interpreters_head)?;
        if interp == 0 {
            return Err(PythonError::NotReady);
        }
        let mut states = Vec::new();
        let mut tstate = memory.u64(interp + offsets.threads_head as u64)?;
        while tstate != 0 && states.len() < helios_trace_common::MAX_PYTHON_THREADS as usize {
            states.push(memory.u64(tstate + offsets.tstate_thread_id as u64)?);
            tstate = memory.u64(tstate + offsets.tstate_next as u64)?;
        }
        let mut changed = false;
        if self.layout.minor == 10 {
            let found = pthread_tid_offset(memory, &states, &tids).ok_or(PythonError::NoThread)?;
            changed = found != offsets.pthread_tid;
            offsets.pthread_tid = found;
            let mut native = Vec::new();
            for id in &states {
                native.push(memory.u32(id + offsets.pthread_tid as u64)? as u64);
            }
            states = native;
        }
        if !states.iter().any(|id| tids.contains(&(*id as u32))) {
            return Err(PythonError::NoThread);
        }
        Ok(changed)
    }
}

/// Where glibc's `struct pthread` has held the tid on x86_64 for years (nptl/descr.h).
const GLIBC_X86_64_PTHREAD_TID: u32 = 0x2d0;

/// The inode of the initial pid namespace (include/linux/proc_ns.h, `PROC_PID_INIT_INO`): fixed,
/// outside the range nsfs gives the others (`PROC_DYNAMIC_FIRST`, fs/proc/generic.c).
const PROC_PID_INIT_INO: u64 = 0xEFFF_FFFC;

/// glibc's `struct pthread` (nptl/descr.h) holds the thread's kernel tid; its offset depends
/// on the glibc build (0x2d0 on x86_64 for years). Found as the offset, in the thread
/// states' `pthread_t`s, of a u32 equal to one of the process's tids: the same for all.
fn pthread_tid_offset(memory: &Memory, pthreads: &[u64], tids: &[u32]) -> Option<u32> {
    const SPAN: usize = 2048;
    let mut candidates: Option<Vec<u32>> = None;
    for &pthread in pthreads {
        let mut bytes = vec![0u8; SPAN];
        memory.read(pthread, &mut bytes).ok()?;
        let here: Vec<u32> = (0..SPAN / 4)
            .filter(|i| {
                let v = u32::from_le_bytes(bytes[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
                tids.contains(&v)
            })
            .map(|i| (i * 4) as u32)
            .collect();
        candidates = Some(match candidates {
            None => here,
            Some(before) => before.into_iter().filter(|c| here.contains(c)).collect(),
        });
    }
    let candidates = candidates?;
    if candidates.contains(&GLIBC_X86_64_PTHREAD_TID) {
        Some(GLIBC_X86_64_PTHREAD_TID)
    } else {
        candidates.first().copied()
    }
}

/// `_PyRuntime` (and `PyCode_Type`) in the process: the symbol's address in the file plus
/// where the file is loaded (the mapping of its lowest file offset, through the PT_LOAD
/// segment that holds that offset).
fn runtime_address(
    proc_root: &Path,
    pid: u32,
    maps: &ProcessMaps,
    mapping: &Mapping,
) -> Result<(u64, Option<u64>), PythonError> {
    let path = mapping.path.to_string();
    let elf_error = |reason: String| PythonError::Elf { path: path.clone(), reason };
    let first = maps
        .mappings()
        .iter()
        .filter(|m| m.key == mapping.key)
        .min_by_key(|m| m.file_offset)
        .unwrap_or(mapping);
    let file = image::open_mapped_file(proc_root, pid, first.start, first.end, &first.path, first.key.inode)
        .map_err(|e| elf_error(e.to_string()))?;
    // SAFETY: a read-only private mapping only read through object's bounds-checked parser;
    // an interpreter being run is not rewritten in place.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| elf_error(e.to_string()))?;
    let elf = object::File::parse(&*map).map_err(|e| elf_error(e.to_string()))?;
    let symbol = |name: &str| symbol_address(&elf, name);
    let runtime = symbol("_PyRuntime").ok_or(PythonError::NoRuntime { path: path.clone() })?;
    let segment = elf
        .segments()
        .find(|s| {
            let (offset, size) = s.file_range();
            (offset..offset + size.max(1)).contains(&first.file_offset)
        })
        .ok_or_else(|| elf_error("no segment maps the first mapping".into()))?;
    let bias = first.start.wrapping_sub(segment.address() + (first.file_offset - segment.file_range().0));
    let address = bias.wrapping_add(runtime);
    // ld.so maps a library whole first, then each segment over it (elf/dl-map-segments.h): in
    // between, the runtime's address holds other bytes of the file. Believe it once a mapping
    // of the file puts there the file offset the symbol has.
    let data = elf.segments().find(|s| (s.address()..s.address() + s.size()).contains(&runtime));
    let in_file = data.and_then(|s| {
        let (offset, size) = s.file_range();
        (runtime - s.address() < size).then_some(offset + (runtime - s.address()))
    });
    // (A runtime in .bss would be anonymous memory: nothing to compare with.)
    let mapped = in_file.is_none_or(|offset| {
        maps.mappings().iter().any(|m| {
            m.key == mapping.key
                && (m.start..m.end).contains(&address)
                && m.file_offset.wrapping_add(address - m.start) == offset
        })
    });
    if !mapped {
        return Err(PythonError::NotMapped { path });
    }
    Ok((address, symbol("PyCode_Type").map(|a| bias.wrapping_add(a))))
}

/// A symbol's address in the file, from the dynamic symbols (what Debian's stripped
/// interpreters keep) or the full table.
fn symbol_address(elf: &object::File<'_>, name: &str) -> Option<u64> {
    elf.dynamic_symbols().chain(elf.symbols()).find(|s| s.name() == Ok(name)).map(|s| s.address())
}

/// The address of `_PyRuntime` and the minor version of a process's CPython, for the heap
/// walk (resolve/holders), found as `probe` finds them.
pub(crate) fn runtime_of(proc_root: &Path, pid: u32) -> Option<Result<(u64, u32), PythonError>> {
    let maps = ProcessMaps::parse(&image::maps(proc_root, pid)?);
    let (mapping, version) = interpreter_mapping(&maps)?;
    Some(version.and_then(|minor| Ok((runtime_address(proc_root, pid, &maps, mapping)?.0, minor))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian's interpreter (cargo xtask setup installs it) is linked at a fixed address: its
    /// offsets are known before it runs, with the runtime where its symbol is. A program that
    /// is no CPython, and a name that says Python on another file, are not.
    #[test]
    fn a_fixed_address_interpreter_is_known_before_its_exec() {
        let python = Path::new("/usr/bin/python3");
        let offsets = offsets_before_exec(python, (7, 9)).unwrap().expect("Debian's python3 is ET_EXEC");
        let bytes = std::fs::read(std::fs::canonicalize(python).unwrap()).unwrap();
        let elf = object::File::parse(&*bytes).unwrap();
        let runtime = elf.dynamic_symbols().find(|s| s.name() == Ok("_PyRuntime")).unwrap().address();
        let layout = static_layout(11).unwrap();
        assert_eq!(offsets.interpreters_head, runtime + layout.interpreters_head);
        assert_eq!((offsets.pidns_dev, offsets.pidns_ino), (7, 9));
        // 3.11's thread states read in 168 bytes, its frames under a frame in one window.
        assert_eq!((offsets.tstate_read, offsets.frame_window), (168, 1024));
        // A process of the initial pid namespace: its thread ids are the kernel's.
        let host = offsets_before_exec(python, (7, PROC_PID_INIT_INO)).unwrap().unwrap();
        assert_eq!((host.pidns_dev, host.pidns_ino), (0, 0));
        assert_eq!(offsets_before_exec(Path::new("/bin/sh"), (7, 9)), Ok(None));
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("python3.12");
        std::fs::copy("/bin/sh", &fake).unwrap();
        assert_eq!(
            offsets_before_exec(&fake, (7, 9)),
            Ok(None),
            "no fixed-address CPython: probed at its exec"
        );
    }
}
