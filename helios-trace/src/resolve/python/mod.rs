//! CPython frames at descriptor calls: find each CPython process's runtime state, tell the
//! kernel where its thread states and frames are (the `PYTHON_PROCS` map), and name the
//! (code object, instruction) pairs the kernel walked — function, file and line — from the
//! process's memory.
//!
//! Supported: CPython 3.10 to 3.13 (x86_64 and aarch64 layouts are the same: LP64). The
//! version comes from the name of the mapped interpreter (`python3.X`, `libpython3.X.so`);
//! `_PyRuntime` from its ELF symbols. 3.13 describes its own layout in `_Py_DebugOffsets` at
//! the start of `_PyRuntime`; for 3.10 to 3.12 the offsets are the table below. Whatever the
//! source, the offsets are checked against the live process (a thread state must carry one of
//! its thread ids) before the kernel is told; an interpreter that fails, or an unsupported
//! version, gets native frames only and one warning.
use std::{
    collections::{HashMap, HashSet},
    fs::File,
    num::NonZeroUsize,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use helios_trace_common::{PY_NO_OFFSET, PythonFrame, PythonOffsets};
use lru::LruCache;
use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};
use thiserror::Error;

use crate::{
    model::{fd::SiteId, frame::Frame},
    resolve::{
        cache::{BoundedLru, Weight},
        modules::maps::{Mapping, ProcessMaps},
        stacks::StackRegistry,
    },
    sys::proc,
};

/// Oldest and newest CPython minor versions whose layouts are known.
pub const SUPPORTED: std::ops::RangeInclusive<u32> = 10..=13;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PythonError {
    #[error("CPython 3.{minor} is not supported (3.10 to 3.13 are)")]
    Version { minor: u32 },
    #[error("CPython 2 is not supported (3.10 to 3.13 are)")]
    Python2,
    #[error("{path} has no _PyRuntime symbol")]
    NoRuntime { path: String },
    #[error("cannot read {path}: {reason}")]
    Elf { path: String, reason: String },
    #[error("cannot read the process's memory at {address:#x}: {reason}")]
    Memory { address: u64, reason: String },
    #[error("_Py_DebugOffsets: {0}")]
    DebugOffsets(String),
    #[error("no thread state carries a thread id of the process (offsets check failed)")]
    NoThread,
    #[error("the interpreter is not initialized yet")]
    NotReady,
    #[error("the frame fields lie beyond what the kernel reads of a frame")]
    Layout,
}

impl PythonError {
    /// Worth trying again later: the interpreter was still starting, or its libpython was
    /// not loaded yet (right after exec only the executable and the loader are mapped).
    fn retry(&self) -> bool {
        matches!(
            self,
            PythonError::NotReady
                | PythonError::NoThread
                | PythonError::Memory { .. }
                | PythonError::NoRuntime { .. }
        )
    }
}

/// Where a code object keeps what names it (Include/cpython/code.h, `struct PyCodeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeLayout {
    pub filename: u64,
    pub name: u64,
    /// `co_qualname`, 3.11+.
    pub qualname: Option<u64>,
    pub firstlineno: u64,
    /// `co_linetable`: 3.10's address/line pairs, or 3.11+'s location table.
    pub linetable: u64,
    /// `co_code_adaptive`, where the instructions start (3.11+: frames point into it).
    pub code_adaptive: Option<u64>,
}

/// One interpreter version's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub minor: u32,
    /// Offset of `interpreters.head` in `_PyRuntimeState`.
    pub interpreters_head: u64,
    /// What the kernel walks with (its `interpreters_head` is filled per process).
    pub kernel: PythonOffsets,
    pub code: CodeLayout,
    /// `sizeof(PyASCIIObject)`, after which a compact ASCII string's characters start
    /// (Include/cpython/unicodeobject.h); non-ASCII compact strings start
    /// `sizeof(PyCompactUnicodeObject)` in, two pointer-sized fields (utf8_length, utf8)
    /// further.
    pub ascii_size: u64,
}

impl Layout {
    fn compact_size(&self) -> u64 {
        // 3.10 and 3.11 also have wstr_length in PyCompactUnicodeObject.
        self.ascii_size + if self.minor <= 11 { 24 } else { 16 }
    }
}

/// `FRAME_OWNED_BY_CSTACK` (Include/internal/pycore_frame.h, 3.12 and 3.13): the entry
/// "shim" frames, which run no Python code.
const FRAME_OWNED_BY_CSTACK: u32 = 3;

/// The layouts of 3.10 to 3.12 (64-bit). Each number is an `offsetof` in the CPython
/// headers of that version, checked with a C program against the headers of CPython 3.10.13,
/// 3.11.7 and 3.12.1 (`Include/internal/pycore_runtime.h` `_PyRuntimeState.interpreters.head`;
/// `Include/internal/pycore_interp.h` `PyInterpreterState.threads.head` (3.10:
/// `tstate_head`); `Include/cpython/pystate.h` `PyThreadState.next`, `.native_thread_id`
/// (3.10: `.thread_id`), `.frame` (3.10) / `.cframe`; `_PyCFrame.current_frame`;
/// `Include/cpython/frameobject.h` (3.10) `PyFrameObject.f_back`, `.f_code`, `.f_lasti`;
/// `Include/internal/pycore_frame.h` `_PyInterpreterFrame.previous`, `.f_code`,
/// `.prev_instr`, `.owner`; `Include/cpython/code.h` `PyCodeObject.co_filename`, `.co_name`,
/// `.co_qualname`, `.co_firstlineno`, `.co_linetable`, `.co_code_adaptive`;
/// `sizeof(PyASCIIObject)`). The integration tests walk real interpreters with them.
pub fn static_layout(minor: u32) -> Option<Layout> {
    let kernel = |threads_head, tstate_next, tstate_thread_id, tstate_frame, cframe_frame| PythonOffsets {
        interpreters_head: 0,
        threads_head,
        tstate_next,
        tstate_thread_id,
        pthread_tid: PY_NO_OFFSET,
        tstate_frame,
        cframe_frame,
        frame_previous: 0,
        frame_code: 0,
        frame_instr: 0,
        frame_owner: PY_NO_OFFSET,
        owner_skip: PY_NO_OFFSET,
        frame_read: 0,
    };
    Some(match minor {
        10 => Layout {
            minor,
            interpreters_head: 32,
            kernel: PythonOffsets {
                frame_previous: 24,
                frame_code: 32,
                frame_instr: 96,
                // pthread_tid: found per process (glibc's struct pthread).
                ..kernel(8, 8, 176, 24, PY_NO_OFFSET)
            },
            code: CodeLayout {
                filename: 104,
                name: 112,
                qualname: None,
                firstlineno: 40,
                linetable: 120,
                code_adaptive: None,
            },
            ascii_size: 48,
        },
        11 => Layout {
            minor,
            interpreters_head: 40,
            kernel: PythonOffsets {
                frame_previous: 48,
                frame_code: 32,
                frame_instr: 56,
                frame_owner: 69,
                ..kernel(16, 8, 160, 56, 8)
            },
            code: CodeLayout {
                filename: 112,
                name: 120,
                qualname: Some(128),
                firstlineno: 72,
                linetable: 136,
                code_adaptive: Some(184),
            },
            ascii_size: 48,
        },
        12 => Layout {
            minor,
            interpreters_head: 40,
            kernel: PythonOffsets {
                frame_previous: 8,
                frame_code: 0,
                frame_instr: 56,
                frame_owner: 70,
                owner_skip: FRAME_OWNED_BY_CSTACK,
                ..kernel(72, 8, 144, 56, 0)
            },
            code: CodeLayout {
                filename: 112,
                name: 120,
                qualname: Some(128),
                firstlineno: 68,
                linetable: 136,
                code_adaptive: Some(192),
            },
            ascii_size: 40,
        },
        _ => return None,
    })
}

/// Bytes of `_Py_DebugOffsets` read (3.13: 71 u64 words up to `unicode_object`).
pub const DEBUG_OFFSETS_LEN: usize = 71 * 8;

/// Largest offset believed from `_Py_DebugOffsets`.
const MAX_OFFSET: u32 = 1 << 20;

/// 3.13's layout from the `_Py_DebugOffsets` that opens `_PyRuntime`
/// (Include/internal/pycore_runtime.h of 3.13: cookie "xdebugpy", version (PY_VERSION_HEX),
/// free_threaded, then one struct of u64 offsets per type, each starting with its size).
pub fn layout_from_debug_offsets(bytes: &[u8], minor: u32) -> Result<Layout, PythonError> {
    let word = |i: usize| -> u64 {
        bytes.get(i * 8..i * 8 + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    if bytes.len() < DEBUG_OFFSETS_LEN || &bytes[..8] != b"xdebugpy" {
        return Err(PythonError::DebugOffsets("no xdebugpy cookie".into()));
    }
    let version = word(1);
    if version >> 24 != 3 || (version >> 16) & 0xff != minor as u64 || minor != 13 {
        return Err(PythonError::DebugOffsets(format!("version {version:#x} is not 3.13")));
    }
    if word(2) != 0 {
        return Err(PythonError::DebugOffsets("free-threaded builds are not supported".into()));
    }
    let small = |i: usize| -> Result<u32, PythonError> {
        u32::try_from(word(i))
            .ok()
            // PyInterpreterState is large (threads.head is past 7 KiB in 3.13); a struct past
            // a MiB is not CPython's.
            .filter(|v| *v < MAX_OFFSET)
            .ok_or_else(|| PythonError::DebugOffsets(format!("implausible offset {:#x}", word(i))))
    };
    Ok(Layout {
        minor,
        interpreters_head: small(5)? as u64,
        kernel: PythonOffsets {
            interpreters_head: 0,
            threads_head: small(9)?,
            tstate_next: small(21)?,
            tstate_thread_id: small(25)?,
            pthread_tid: PY_NO_OFFSET,
            tstate_frame: small(23)?,
            cframe_frame: PY_NO_OFFSET,
            frame_previous: small(29)?,
            frame_code: small(30)?,
            frame_instr: small(31)?,
            frame_owner: small(33)?,
            owner_skip: FRAME_OWNED_BY_CSTACK,
            frame_read: 0,
        },
        code: CodeLayout {
            filename: small(35)? as u64,
            name: small(36)? as u64,
            qualname: Some(small(37)? as u64),
            linetable: small(38)? as u64,
            firstlineno: small(39)? as u64,
            code_adaptive: Some(small(43)? as u64),
        },
        ascii_size: small(70)? as u64,
    })
}

/// The CPython version a mapped file's name says: `python3.11`, `libpython3.12.so.1.0`
/// give Some(Ok(minor)); other Pythons an error; anything else None.
pub fn version_of(path: &str) -> Option<Result<u32, PythonError>> {
    let name = crate::model::frame::basename(path);
    let rest = name.strip_prefix("lib").unwrap_or(name).strip_prefix("python")?;
    if rest.starts_with('2') {
        return Some(Err(PythonError::Python2));
    }
    let minor = rest.strip_prefix("3.")?;
    let digits: String = minor.chars().take_while(char::is_ascii_digit).collect();
    let minor: u32 = digits.parse().ok()?;
    Some(if SUPPORTED.contains(&minor) { Ok(minor) } else { Err(PythonError::Version { minor }) })
}

/// Line tables: from an instruction's byte offset in a code object to its source line.
pub mod lines {
    /// 3.10 (`co_linetable`, Objects/lnotab_notes.txt of 3.10): pairs of (bytecode delta,
    /// unsigned; line delta, signed), the line delta -128 meaning "no line"; each pair is a
    /// range [end, end + delta) at the running line (Objects/codeobject.c, PyCode_Addr2Line
    /// and advance()).
    pub fn line_310(table: &[u8], firstlineno: u32, offset: i64) -> Option<u32> {
        if offset < 0 {
            return Some(firstlineno);
        }
        let (mut end, mut line) = (0i64, firstlineno as i64);
        for pair in table.chunks_exact(2) {
            let start = end;
            end += pair[0] as i64;
            let delta = pair[1] as i8;
            let this = if delta == -128 {
                None
            } else {
                line = line.saturating_add(delta as i64);
                Some(line)
            };
            if start <= offset && offset < end {
                return this.and_then(|l| u32::try_from(l).ok());
            }
        }
        None
    }

    /// 3.11+ location table (Objects/locations.md): entries starting with a byte whose top
    /// bit is set, `code = (b >> 3) & 15`, covering `(b & 7) + 1` code units (2 bytes
    /// each). Code 15: no location; 14 (long) and 13 (no columns): a signed varint line delta
    /// follows; 10 to 12: line delta code - 10; 0 to 9: same line
    /// (Objects/codeobject.c, get_line_delta and advance()).
    pub fn line_311(table: &[u8], firstlineno: u32, offset: i64) -> Option<u32> {
        if offset < 0 {
            return Some(firstlineno);
        }
        // Saturating arithmetic throughout: the table comes from a traced process's memory.
        let (mut end, mut line, mut i) = (0i64, firstlineno as i64, 0usize);
        while i < table.len() {
            let first = table[i];
            let code = (first >> 3) & 15;
            let start = end;
            end += (((first & 7) as i64) + 1) * 2;
            let this = match code {
                15 => None,
                13 | 14 => {
                    line = line.saturating_add(signed_varint(&table[i + 1..]));
                    Some(line)
                }
                10..=12 => {
                    line = line.saturating_add((code - 10) as i64);
                    Some(line)
                }
                _ => Some(line),
            };
            if start <= offset && offset < end {
                return this.and_then(|l| u32::try_from(l).ok());
            }
            i += 1;
            while i < table.len() && table[i] & 0x80 == 0 {
                i += 1;
            }
        }
        None
    }

    /// 6 bits a byte, least significant first, bit 6 = more (scan_varint).
    fn varint(bytes: &[u8]) -> u64 {
        let (mut value, mut shift) = (0u64, 0u32);
        for b in bytes {
            value |= ((b & 63) as u64) << shift;
            shift += 6;
            if b & 64 == 0 || shift > 60 {
                break;
            }
        }
        value
    }

    /// Sign in the lowest bit (scan_signed_varint).
    fn signed_varint(bytes: &[u8]) -> i64 {
        let value = varint(bytes);
        if value & 1 != 0 { -((value >> 1) as i64) } else { (value >> 1) as i64 }
    }
}

/// Reads another process's memory through /proc/PID/mem (CAP_SYS_PTRACE is kept after the
/// privilege drop for this).
struct Memory {
    file: File,
}

/// Longest name or file name read, and line table.
const MAX_STRING: u64 = 4096;
const MAX_LINETABLE: u64 = 1 << 20;

impl Memory {
    fn open(proc_root: &Path, pid: u32) -> Result<Memory, PythonError> {
        let file = File::open(proc_root.join(pid.to_string()).join("mem"))
            .map_err(|e| PythonError::Memory { address: 0, reason: e.to_string() })?;
        Ok(Memory { file })
    }

    fn read(&self, address: u64, buf: &mut [u8]) -> Result<(), PythonError> {
        self.file
            .read_exact_at(buf, address)
            .map_err(|e| PythonError::Memory { address, reason: e.to_string() })
    }

    fn u64(&self, address: u64) -> Result<u64, PythonError> {
        let mut b = [0; 8];
        self.read(address, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn u32(&self, address: u64) -> Result<u32, PythonError> {
        let mut b = [0; 4];
        self.read(address, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// A `str` object (Include/cpython/unicodeobject.h): length at 16, state bits at 32
    /// (kind: bits 2-4, compact: bit 5, ascii: bit 6), characters after the header.
    fn string(&self, object: u64, layout: &Layout) -> Option<String> {
        let length = self.u64(object + 16).ok()?;
        let state = self.u32(object + 32).ok()?;
        let (kind, compact, ascii) = ((state >> 2) & 7, state & (1 << 5) != 0, state & (1 << 6) != 0);
        if !compact || length > MAX_STRING || !matches!(kind, 1 | 2 | 4) {
            return None;
        }
        let data = object + if ascii { layout.ascii_size } else { layout.compact_size() };
        let mut bytes = vec![0u8; (length * kind as u64) as usize];
        self.read(data, &mut bytes).ok()?;
        match kind {
            1 => Some(bytes.iter().map(|b| *b as char).collect()),
            2 => {
                let units: Vec<u16> =
                    bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
                Some(String::from_utf16_lossy(&units))
            }
            _ => bytes
                .chunks_exact(4)
                .map(|c| char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
        }
    }

    /// A `bytes` object (Include/cpython/bytesobject.h: ob_size at 16, ob_sval at 32).
    fn bytes(&self, object: u64, max: u64) -> Option<Vec<u8>> {
        let size = self.u64(object + 16).ok()?;
        if size > max {
            return None;
        }
        let mut bytes = vec![0u8; size as usize];
        self.read(object + 32, &mut bytes).ok()?;
        Some(bytes)
    }
}

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
struct Interpreter {
    layout: Layout,
    /// The offsets as the kernel gets them (with this process's addresses).
    offsets: PythonOffsets,
    /// Address of `PyCode_Type`: a code object's `ob_type` must be it.
    code_type: Option<u64>,
    memory: Memory,
    codes: BoundedLru<u64, Arc<CodeInfo>>,
    /// (native site, raw Python frames) → site.
    sites: LruCache<(SiteId, Box<[PythonFrame]>), SiteId>,
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

    /// One walked frame as a report frame; None when its code object does not read as one.
    fn frame(&mut self, raw: PythonFrame) -> Option<Frame> {
        let info = self.code(raw.code)?;
        let line = match self.layout.code.code_adaptive {
            // 3.10: f_lasti counts code units (2 bytes); -1 before the first instruction.
            None => lines::line_310(&info.linetable, info.firstlineno, (raw.instr as u32 as i32) as i64 * 2),
            Some(start) => {
                let offset = raw.instr.wrapping_sub(raw.code + start) as i64;
                lines::line_311(&info.linetable, info.firstlineno, offset)
            }
        };
        Some(Frame::python(info.name.clone(), info.filename.clone(), line))
    }
}

/// Find a process's CPython, its layout and runtime, and check them against the process.
fn probe(proc_root: &Path, pid: u32) -> Option<Result<Interpreter, PythonError>> {
    let maps =
        ProcessMaps::parse(&std::fs::read_to_string(proc_root.join(pid.to_string()).join("maps")).ok()?);
    // libpython holds the runtime where there is one; else the executable does (static).
    let candidates = |lib: bool| {
        maps.mappings()
            .iter()
            .filter(move |m| crate::model::frame::basename(&m.path).starts_with("libpython") == lib)
            .find_map(|m| version_of(&m.path).map(|v| (m, v)))
    };
    let (mapping, version) = candidates(true).or_else(|| candidates(false))?;
    Some(version.and_then(|minor| attach(proc_root, pid, &maps, mapping, minor)))
}

fn attach(
    proc_root: &Path,
    pid: u32,
    maps: &ProcessMaps,
    mapping: &Mapping,
    minor: u32,
) -> Result<Interpreter, PythonError> {
    let (runtime, code_type) = runtime_address(proc_root, pid, maps, mapping)?;
    let memory = Memory::open(proc_root, pid)?;
    let layout = match static_layout(minor) {
        Some(layout) => layout,
        None => {
            let mut bytes = vec![0u8; DEBUG_OFFSETS_LEN];
            memory.read(runtime, &mut bytes)?;
            layout_from_debug_offsets(&bytes, minor)?
        }
    };
    let mut offsets = layout.kernel;
    offsets.interpreters_head = runtime + layout.interpreters_head;
    offsets.frame_read = frame_read(&offsets).ok_or(PythonError::Layout)?;
    let tids = proc::tids(proc_root, pid);
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
    if minor == 10 {
        offsets.pthread_tid = pthread_tid_offset(&memory, &states, &tids).ok_or(PythonError::NoThread)?;
        let mut native = Vec::new();
        for id in &states {
            native.push(memory.u32(id + offsets.pthread_tid as u64)? as u64);
        }
        states = native;
    }
    if !states.iter().any(|id| tids.contains(&(*id as u32))) {
        return Err(PythonError::NoThread);
    }
    Ok(Interpreter {
        layout,
        offsets,
        code_type,
        memory,
        codes: BoundedLru::new(MAX_CODE_BYTES),
        sites: LruCache::new(MAX_SITES),
    })
}

/// Bytes of a frame that cover all the fields the kernel reads (the owner is one byte, the
/// others 8; 3.10's `f_lasti` is an int, read with the int after it, the high half dropped).
fn frame_read(o: &PythonOffsets) -> Option<u32> {
    let end = [o.frame_previous, o.frame_code, o.frame_instr].iter().map(|f| f + 8).max()?;
    let end = if o.frame_owner == PY_NO_OFFSET { end } else { end.max(o.frame_owner + 1) };
    (end <= helios_trace_common::MAX_PYTHON_FRAME_READ).then_some(end)
}

/// glibc's `struct pthread` (nptl/descr.h) holds the thread's kernel tid; its offset depends
/// on the glibc build (0x2d0 on x86_64 for years). Found as the offset, in the thread
/// states' `pthread_t`s, of a u32 equal to one of the process's tids: the same for all.
fn pthread_tid_offset(memory: &Memory, pthreads: &[u64], tids: &[u32]) -> Option<u32> {
    const SPAN: usize = 2048;
    const GLIBC_X86_64: u32 = 0x2d0;
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
    if candidates.contains(&GLIBC_X86_64) { Some(GLIBC_X86_64) } else { candidates.first().copied() }
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
    let file =
        proc::image::open_mapped_file(proc_root, pid, first.start, first.end, &first.path, first.key.inode)
            .map_err(|e| elf_error(e.to_string()))?;
    // SAFETY: a read-only private mapping only read through object's bounds-checked parser;
    // an interpreter being run is not rewritten in place.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| elf_error(e.to_string()))?;
    let elf = object::File::parse(&*map).map_err(|e| elf_error(e.to_string()))?;
    let symbol = |name: &str| {
        elf.dynamic_symbols().chain(elf.symbols()).find(|s| s.name() == Ok(name)).map(|s| s.address())
    };
    let runtime = symbol("_PyRuntime").ok_or(PythonError::NoRuntime { path: path.clone() })?;
    let segment = elf
        .segments()
        .find(|s| {
            let (offset, size) = s.file_range();
            (offset..offset + size.max(1)).contains(&first.file_offset)
        })
        .ok_or_else(|| elf_error("no segment maps the first mapping".into()))?;
    let bias = first.start.wrapping_sub(segment.address() + (first.file_offset - segment.file_range().0));
    Ok((bias.wrapping_add(runtime), symbol("PyCode_Type").map(|a| bias.wrapping_add(a))))
}

/// What is known of one process.
enum State {
    /// Not probed yet, or the interpreter was still starting: tried again (retry_pending).
    Pending {
        attempts: u32,
        next_ns: u64,
    },
    /// No CPython, or one that is not supported (warned once).
    Native,
    Python(Box<Interpreter>),
}

/// Probes per process before giving up on an interpreter that never looks initialized, and
/// the time between them.
const MAX_ATTEMPTS: u32 = 20;
const RETRY_NS: u64 = 100_000_000;

/// CPython processes and their walked frames.
pub struct PythonProcesses {
    proc_root: PathBuf,
    enabled: bool,
    processes: HashMap<u32, State>,
    /// Those of `processes` in State::Pending.
    pending: HashSet<u32>,
    /// Changes for the kernel's `PYTHON_PROCS` map, applied by the session.
    updates: Vec<(u32, Option<PythonOffsets>)>,
}

impl PythonProcesses {
    pub fn new(proc_root: impl Into<PathBuf>) -> PythonProcesses {
        PythonProcesses {
            proc_root: proc_root.into(),
            enabled: false,
            processes: HashMap::new(),
            pending: HashSet::new(),
            updates: Vec::new(),
        }
    }

    /// Look for CPython processes from now on (`--python-frames auto` with stacks on).
    pub fn enable(&mut self, on: bool) {
        self.enabled = on;
    }

    /// A process seen for the first time (baseline), or a new image (exec): probe it.
    pub fn seen(&mut self, pid: u32, now_ns: u64) {
        if !self.enabled {
            return;
        }
        self.forget(pid);
        self.processes.insert(pid, State::Pending { attempts: 0, next_ns: 0 });
        self.try_probe(pid, now_ns);
    }

    /// A process first seen (the baseline, or its first event): probe it unless known.
    pub fn first_sight(&mut self, pid: u32, now_ns: u64) {
        if !self.processes.contains_key(&pid) {
            self.seen(pid, now_ns);
        }
    }

    /// A forked child runs its parent's interpreter: probe it too (its addresses are the
    /// parent's, its threads its own).
    pub fn forked(&mut self, parent: u32, child: u32, now_ns: u64) {
        if matches!(self.processes.get(&parent), Some(State::Python(_))) {
            self.seen(child, now_ns);
        }
    }

    /// The process is gone or replaced its image.
    pub fn forget(&mut self, pid: u32) {
        self.pending.remove(&pid);
        if let Some(State::Python(_)) = self.processes.remove(&pid) {
            self.updates.push((pid, None));
        }
    }

    /// Probe again the processes whose interpreter was still starting (every RETRY_NS at
    /// most; the session calls this at each drain of the ring buffer, so a CPython started
    /// after the tracer gets its frames walked from about when its startup ends).
    pub fn retry_pending(&mut self, now_ns: u64) {
        let due: Vec<u32> = self
            .pending
            .iter()
            .filter(|pid| matches!(self.processes.get(pid), Some(State::Pending { next_ns, .. }) if *next_ns <= now_ns))
            .copied()
            .collect();
        for pid in due {
            self.try_probe(pid, now_ns);
        }
    }

    fn try_probe(&mut self, pid: u32, now_ns: u64) {
        let Some(State::Pending { attempts, .. }) = self.processes.get(&pid) else { return };
        let attempts = attempts + 1;
        let state = match probe(&self.proc_root, pid) {
            None => State::Native,
            Some(Ok(interpreter)) => {
                log::info!(
                    "process {pid}: CPython 3.{}, Python frames on (runtime state at {:#x})",
                    interpreter.layout.minor,
                    interpreter.offsets.interpreters_head - interpreter.layout.interpreters_head
                );
                self.updates.push((pid, Some(interpreter.offsets)));
                State::Python(Box::new(interpreter))
            }
            Some(Err(err)) if err.retry() && attempts < MAX_ATTEMPTS => {
                log::debug!("process {pid}: CPython not ready ({err}), trying again");
                State::Pending { attempts, next_ns: now_ns + RETRY_NS }
            }
            Some(Err(err)) => {
                log::warn!("process {pid}: no Python frames, native frames only: {err}");
                State::Native
            }
        };
        if matches!(state, State::Pending { .. }) {
            self.pending.insert(pid);
        } else {
            self.pending.remove(&pid);
        }
        self.processes.insert(pid, state);
    }

    /// Changes for the kernel's map since the last call.
    pub fn take_updates(&mut self) -> Vec<(u32, Option<PythonOffsets>)> {
        std::mem::take(&mut self.updates)
    }

    /// The site of a descriptor opened with the native site `native` and these Python frames
    /// (innermost first) walked by the kernel: the native frames with the Python frames
    /// merged in (StackRegistry::with_python).
    pub fn site(
        &mut self,
        pid: u32,
        native: SiteId,
        raw: &[PythonFrame],
        stacks: &mut StackRegistry,
    ) -> SiteId {
        let Some(State::Python(interpreter)) = self.processes.get_mut(&pid) else { return native };
        if raw.is_empty() {
            return native;
        }
        let key = (native, Box::from(raw));
        // A site forgotten since (stacks.forget_site) is made again, frames and all.
        if let Some(site) = interpreter.sites.get(&key).copied().filter(|site| stacks.knows(*site)) {
            return site;
        }
        let frames: Vec<Frame> = raw.iter().filter_map(|r| interpreter.frame(*r)).collect();
        let complete = frames.len() == raw.len();
        let site = if frames.is_empty() { native } else { stacks.with_python(native, frames) };
        // A stack with a frame that did not read is not remembered: the next one may read.
        if complete {
            interpreter.sites.put(key, site);
        }
        site
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_names() {
        assert_eq!(version_of("/usr/bin/python3.11"), Some(Ok(11)));
        assert_eq!(version_of("/opt/lib/libpython3.13.so.1.0"), Some(Ok(13)));
        assert_eq!(version_of("/x/libpython3.9.so.1.0"), Some(Err(PythonError::Version { minor: 9 })));
        assert_eq!(version_of("/x/python3.14"), Some(Err(PythonError::Version { minor: 14 })));
        assert_eq!(version_of("/usr/lib/libpython2.7.so"), Some(Err(PythonError::Python2)));
        assert_eq!(version_of("/usr/lib/x86_64-linux-gnu/libc.so.6"), None);
        assert_eq!(version_of("/usr/bin/pythonista"), None);
    }

    #[test]
    fn static_layouts_cover_310_to_312_only() {
        for minor in 10..=12 {
            let layout = static_layout(minor).unwrap();
            assert_eq!(layout.minor, minor);
            assert_eq!(layout.code.qualname.is_some(), minor >= 11);
        }
        assert!(static_layout(13).is_none() && static_layout(9).is_none());
        // 3.10 reaches the kernel tid through pthread_t; the others have native_thread_id.
        assert_eq!(static_layout(11).unwrap().kernel.pthread_tid, PY_NO_OFFSET);
        // The kernel reads a frame at once: 3.10's f_lasti ends at 104, 3.12's owner at 71.
        assert_eq!(frame_read(&static_layout(10).unwrap().kernel), Some(104));
        assert_eq!(frame_read(&static_layout(12).unwrap().kernel), Some(71));
        let far = PythonOffsets { frame_owner: 200, ..static_layout(12).unwrap().kernel };
        assert_eq!(frame_read(&far), None);
    }

    #[test]
    fn debug_offsets_are_checked() {
        let mut bytes = vec![0u8; DEBUG_OFFSETS_LEN];
        assert!(layout_from_debug_offsets(&bytes, 13).is_err());
        bytes[..8].copy_from_slice(b"xdebugpy");
        bytes[8..16].copy_from_slice(&0x030d00f0u64.to_le_bytes());
        let set =
            |bytes: &mut Vec<u8>, i: usize, v: u64| bytes[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        set(&mut bytes, 5, 40);
        set(&mut bytes, 9, 72);
        set(&mut bytes, 70, 40);
        let layout = layout_from_debug_offsets(&bytes, 13).unwrap();
        assert_eq!((layout.interpreters_head, layout.kernel.threads_head, layout.ascii_size), (40, 72, 40));
        assert_eq!(layout.kernel.cframe_frame, PY_NO_OFFSET);
        // Another version's table, a free-threaded build, an absurd offset: refused.
        assert!(layout_from_debug_offsets(&bytes, 12).is_err());
        set(&mut bytes, 2, 1);
        assert!(layout_from_debug_offsets(&bytes, 13).is_err());
        set(&mut bytes, 2, 0);
        set(&mut bytes, 21, 1 << 40);
        assert!(layout_from_debug_offsets(&bytes, 13).is_err());
        assert!(layout_from_debug_offsets(&bytes[..100], 13).is_err());
    }

    /// Line tables of real code objects, with the line of every instruction offset as the
    /// interpreter itself tells it (`co_lines()`), written by tests/workloads/linetables.py
    /// for each interpreter on the machine.
    #[test]
    fn line_tables_of_real_code_objects() {
        let fixtures: serde_json::Value = serde_json::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/python-linetables.json"
        )))
        .unwrap();
        let mut checked = std::collections::BTreeSet::new();
        for code in fixtures.as_array().unwrap() {
            let minor = code["minor"].as_u64().unwrap() as u32;
            let table: Vec<u8> = (0..code["linetable"].as_str().unwrap().len() / 2)
                .map(|i| {
                    u8::from_str_radix(&code["linetable"].as_str().unwrap()[i * 2..i * 2 + 2], 16).unwrap()
                })
                .collect();
            let first = code["firstlineno"].as_u64().unwrap() as u32;
            for case in code["lines"].as_array().unwrap() {
                let offset = case[0].as_i64().unwrap();
                let expected = case[1].as_u64().map(|l| l as u32);
                let got = if minor == 10 {
                    lines::line_310(&table, first, offset)
                } else {
                    lines::line_311(&table, first, offset)
                };
                assert_eq!(got, expected, "3.{minor} {} at offset {offset}", code["name"]);
            }
            checked.insert(minor);
        }
        assert_eq!(checked.into_iter().collect::<Vec<_>>(), vec![10, 11, 12, 13]);
    }

    #[test]
    fn before_the_first_instruction_is_the_first_line() {
        assert_eq!(lines::line_310(&[], 7, -2), Some(7));
        assert_eq!(lines::line_311(&[], 7, -2), Some(7));
        // Past the table: unknown, not invented.
        assert_eq!(lines::line_311(&[0x80 | (13 << 3), 2], 7, 100), None);
    }
}
