//! Where CPython keeps what the kernel walks and what names a frame, per version: the table of
//! 3.10 to 3.12, the `_Py_DebugOffsets` of 3.13 and 3.14, and the version a mapped file's name
//! says.
use helios_trace_common::{PY_NO_OFFSET, PythonOffsets};

use super::PythonError;
use crate::model::frame::basename;

/// Oldest and newest CPython minor versions whose layouts are known.
pub(crate) const SUPPORTED: std::ops::RangeInclusive<u32> = 10..=14;

/// Where a code object keeps what names it (Include/cpython/code.h, `struct PyCodeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CodeLayout {
    pub(crate) filename: u64,
    pub(crate) name: u64,
    /// `co_qualname`, 3.11+.
    pub(crate) qualname: Option<u64>,
    pub(crate) firstlineno: u64,
    /// `co_linetable`: 3.10's address/line pairs, or 3.11+'s location table.
    pub(crate) linetable: u64,
    /// `co_code_adaptive`, where the instructions start (3.11+: frames point into it).
    pub(crate) code_adaptive: Option<u64>,
}

/// One interpreter version's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) minor: u32,
    /// Offset of `interpreters.head` in `_PyRuntimeState`.
    pub(crate) interpreters_head: u64,
    /// What the kernel walks with (its `interpreters_head` is filled per process).
    pub(crate) kernel: PythonOffsets,
    pub(crate) code: CodeLayout,
    /// `sizeof(PyASCIIObject)`, after which a compact ASCII string's characters start
    /// (Include/cpython/unicodeobject.h); non-ASCII compact strings start
    /// `sizeof(PyCompactUnicodeObject)` in, two pointer-sized fields (utf8_length, utf8)
    /// further.
    pub(crate) ascii_size: u64,
    /// Low bits of a frame's code reference that are a tag, not address: 3.14's
    /// `f_executable` is a `_PyStackRef` (Include/internal/pycore_stackref.h: `Py_TAG_BITS`,
    /// 3 in the default build, the deferred/immortal bit `Py_TAG_REFCNT` = 1 among them).
    pub(crate) code_tag_bits: u64,
}

impl Layout {
    pub(crate) fn compact_size(&self) -> u64 {
        // 3.10 and 3.11 also have wstr_length in PyCompactUnicodeObject.
        self.ascii_size + if self.minor <= 11 { 24 } else { 16 }
    }
}

/// The first owner value of frames that run no Python code (the kernel skips it and those
/// above): `FRAME_OWNED_BY_CSTACK` = 3, the entry "shim" frames, on 3.12 and 3.13
/// (Include/internal/pycore_frame.h); on 3.14 `FRAME_OWNED_BY_INTERPRETER` = 3 (the entry
/// frame of each `_PyEval_EvalFrameDefault`) and `FRAME_OWNED_BY_CSTACK` = 4
/// (Include/internal/pycore_interpframe_structs.h, `enum _frameowner`).
const FIRST_NON_PYTHON_OWNER: u32 = 3;

/// The layouts of 3.10 to 3.12 (64-bit). Each number is an `offsetof` in the CPython
/// headers of that version, checked with a C program against the headers of CPython 3.10.13,
/// 3.11.7 and 3.12.1 (`Include/internal/pycore_runtime.h` `_PyRuntimeState.interpreters.head`;
/// `Include/internal/pycore_interp.h` `PyInterpreterState.threads.head` (3.10:
/// `tstate_head`); `Include/cpython/pystate.h` `PyThreadState.prev` (0: the struct opens with
/// it), `.next`, `.interp` (16), `.native_thread_id`
/// (3.10: `.thread_id`), `.frame` (3.10) / `.cframe`; `_PyCFrame.current_frame`;
/// `Include/cpython/frameobject.h` (3.10) `PyFrameObject.f_back`, `.f_code`, `.f_lasti`;
/// `Include/internal/pycore_frame.h` `_PyInterpreterFrame.previous`, `.f_code`,
/// `.prev_instr`, `.owner`; `Include/cpython/code.h` `PyCodeObject.co_filename`, `.co_name`,
/// `.co_qualname`, `.co_firstlineno`, `.co_linetable`, `.co_code_adaptive`;
/// `sizeof(PyASCIIObject)`). The integration tests walk real interpreters with them.
pub(crate) fn static_layout(minor: u32) -> Option<Layout> {
    let kernel = |threads_head, tstate_next, tstate_thread_id, tstate_frame, cframe_frame| PythonOffsets {
        interpreters_head: 0,
        threads_head,
        tstate_prev: 0,
        tstate_next,
        tstate_interp: 16,
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
        tstate_read: 0,
        frame_window: 0,
        pidns_dev: 0,
        pidns_ino: 0,
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
            code_tag_bits: 0,
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
            code_tag_bits: 0,
        },
        12 => Layout {
            minor,
            interpreters_head: 40,
            kernel: PythonOffsets {
                frame_previous: 8,
                frame_code: 0,
                frame_instr: 56,
                frame_owner: 70,
                owner_skip: FIRST_NON_PYTHON_OWNER,
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
            code_tag_bits: 0,
        },
        _ => return None,
    })
}

/// Bytes of `_Py_DebugOffsets` read: 3.14's 81 u64 words up to `unicode_object` (3.13 has 71;
/// `_PyRuntime` is far larger than either, so reading the longer is always in bounds).
pub(crate) const DEBUG_OFFSETS_LEN: usize = 81 * 8;

/// Largest offset believed from `_Py_DebugOffsets`.
const MAX_OFFSET: u32 = 1 << 20;

/// Where, in `_Py_DebugOffsets` seen as u64 words, each offset the walk needs is. The struct
/// (Include/internal/pycore_runtime.h of 3.13, Include/internal/pycore_debug_offsets.h of
/// 3.14) is the cookie, version and free_threaded words, then one struct per type, each
/// opening with its size; 3.14 grew `interpreter_state` by three words (code object and
/// thread-local bytecode generations, the GIL's enabled flag) and `code_object` by one
/// (`co_tlbc`), moving everything after.
struct DebugWords {
    interpreters_head: usize,
    threads_head: usize,
    tstate_prev: usize,
    tstate_next: usize,
    tstate_interp: usize,
    tstate_current_frame: usize,
    tstate_native_thread_id: usize,
    frame_previous: usize,
    frame_executable: usize,
    frame_instr_ptr: usize,
    frame_owner: usize,
    code_filename: usize,
    code_name: usize,
    code_qualname: usize,
    code_linetable: usize,
    code_firstlineno: usize,
    code_adaptive: usize,
    ascii_size: usize,
}

fn debug_words(minor: u32) -> Option<DebugWords> {
    Some(match minor {
        13 => DebugWords {
            interpreters_head: 5,
            threads_head: 9,
            tstate_prev: 20,
            tstate_next: 21,
            tstate_interp: 22,
            tstate_current_frame: 23,
            tstate_native_thread_id: 25,
            frame_previous: 29,
            frame_executable: 30,
            frame_instr_ptr: 31,
            frame_owner: 33,
            code_filename: 35,
            code_name: 36,
            code_qualname: 37,
            code_linetable: 38,
            code_firstlineno: 39,
            code_adaptive: 43,
            ascii_size: 70,
        },
        14 => DebugWords {
            interpreters_head: 5,
            threads_head: 9,
            tstate_prev: 23,
            tstate_next: 24,
            tstate_interp: 25,
            tstate_current_frame: 26,
            tstate_native_thread_id: 28,
            frame_previous: 32,
            frame_executable: 33,
            frame_instr_ptr: 34,
            frame_owner: 36,
            code_filename: 40,
            code_name: 41,
            code_qualname: 42,
            code_linetable: 43,
            code_firstlineno: 44,
            code_adaptive: 48,
            ascii_size: 80,
        },
        _ => return None,
    })
}

/// The layout of 3.13 or 3.14 from the `_Py_DebugOffsets` that opens `_PyRuntime` (cookie
/// "xdebugpy", version (PY_VERSION_HEX), free_threaded, then the offsets: `DebugWords`).
pub(crate) fn layout_from_debug_offsets(bytes: &[u8], minor: u32) -> Result<Layout, PythonError> {
    let word = |i: usize| -> u64 {
        bytes.get(i * 8..i * 8 + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    if bytes.len() < DEBUG_OFFSETS_LEN || &bytes[..8] != b"xdebugpy" {
        return Err(PythonError::DebugOffsets("no xdebugpy cookie".into()));
    }
    let version = word(1);
    let words = debug_words(minor)
        .filter(|_| version >> 24 == 3 && (version >> 16) & 0xff == minor as u64)
        .ok_or_else(|| PythonError::DebugOffsets(format!("version {version:#x} is not 3.{minor}")))?;
    if word(2) != 0 {
        // Free-threaded: frames point into per-thread copies of the bytecode (`tlbc_index`,
        // `co_tlbc`) and str objects keep `interned` in a byte of its own, moving the kind
        // bits; no free-threaded build to test against here (Debian ships none).
        return Err(PythonError::FreeThreaded);
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
        interpreters_head: small(words.interpreters_head)? as u64,
        kernel: PythonOffsets {
            interpreters_head: 0,
            threads_head: small(words.threads_head)?,
            tstate_prev: small(words.tstate_prev)?,
            tstate_next: small(words.tstate_next)?,
            tstate_interp: small(words.tstate_interp)?,
            tstate_thread_id: small(words.tstate_native_thread_id)?,
            pthread_tid: PY_NO_OFFSET,
            tstate_frame: small(words.tstate_current_frame)?,
            cframe_frame: PY_NO_OFFSET,
            frame_previous: small(words.frame_previous)?,
            frame_code: small(words.frame_executable)?,
            frame_instr: small(words.frame_instr_ptr)?,
            frame_owner: small(words.frame_owner)?,
            owner_skip: FIRST_NON_PYTHON_OWNER,
            frame_read: 0,
            tstate_read: 0,
            frame_window: 0,
            pidns_dev: 0,
            pidns_ino: 0,
        },
        code: CodeLayout {
            filename: small(words.code_filename)? as u64,
            name: small(words.code_name)? as u64,
            qualname: Some(small(words.code_qualname)? as u64),
            linetable: small(words.code_linetable)? as u64,
            firstlineno: small(words.code_firstlineno)? as u64,
            code_adaptive: Some(small(words.code_adaptive)? as u64),
        },
        ascii_size: small(words.ascii_size)? as u64,
        // Include/internal/pycore_stackref.h of 3.14 (default build): Py_TAG_BITS 3.
        code_tag_bits: if minor >= 14 { 3 } else { 0 },
    })
}

/// The CPython version a mapped file's name says: `python3.11`, `libpython3.12.so.1.0`
/// give Some(Ok(minor)); other Pythons an error; anything else None.
pub(crate) fn version_of(path: &str) -> Option<Result<u32, PythonError>> {
    let name = basename(path);
    let rest = name.strip_prefix("lib").unwrap_or(name).strip_prefix("python")?;
    if rest.starts_with('2') {
        return Some(Err(PythonError::Python2));
    }
    let minor = rest.strip_prefix("3.")?;
    let digits: String = minor.chars().take_while(char::is_ascii_digit).collect();
    let minor: u32 = digits.parse().ok()?;
    Some(if SUPPORTED.contains(&minor) { Ok(minor) } else { Err(PythonError::Version { minor }) })
}

/// Bytes of a frame that cover all the fields the kernel reads (the owner is one byte, the
/// others 8; 3.10's `f_lasti` is an int, read with the int after it, the high half dropped).
pub(crate) fn frame_read(o: &PythonOffsets) -> Option<u32> {
    let end = [o.frame_previous, o.frame_code, o.frame_instr].iter().map(|f| f + 8).max()?;
    let end = if o.frame_owner == PY_NO_OFFSET { end } else { end.max(o.frame_owner + 1) };
    (end <= helios_trace_common::MAX_PYTHON_FRAME_READ).then_some(end)
}

/// Bytes of a thread state that cover the fields the kernel reads of it (8 each: `prev` and
/// `interp` too, which tell a remembered thread state still in its list; 3.10's
/// `thread_id` is a `pthread_t`, the others' `native_thread_id` an unsigned long).
pub(crate) fn tstate_read(o: &PythonOffsets) -> Option<u32> {
    let end = [o.tstate_prev, o.tstate_next, o.tstate_interp, o.tstate_thread_id, o.tstate_frame]
        .iter()
        .map(|f| f + 8)
        .max()?;
    (end <= helios_trace_common::MAX_PYTHON_TSTATE_READ).then_some(end)
}

/// Bytes the kernel reads at once under a frame of 3.`minor` (`PythonOffsets::frame_window`):
/// from 3.11 a thread's frames are pushed one above the other in its data stack
/// (Include/internal/pycore_frame.h, `_PyFrame_PushUnchecked`), so the frames a call is under
/// usually lie in the bytes just below its own; 3.10's are heap objects, each read alone.
pub(crate) fn frame_window(minor: u32) -> u32 {
    if minor >= 11 { helios_trace_common::MAX_PYTHON_FRAME_WINDOW } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_names() {
        assert_eq!(version_of("/usr/bin/python3.11"), Some(Ok(11)));
        assert_eq!(version_of("/opt/lib/libpython3.13.so.1.0"), Some(Ok(13)));
        assert_eq!(version_of("/x/libpython3.9.so.1.0"), Some(Err(PythonError::Version { minor: 9 })));
        assert_eq!(version_of("/x/python3.14"), Some(Ok(14)));
        assert_eq!(version_of("/x/python3.15"), Some(Err(PythonError::Version { minor: 15 })));
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
        // A thread state at once: 3.10's thread_id ends at 184, 3.11's native_thread_id at 168.
        assert_eq!(tstate_read(&static_layout(10).unwrap().kernel), Some(184));
        assert_eq!(tstate_read(&static_layout(11).unwrap().kernel), Some(168));
        let far = PythonOffsets { tstate_thread_id: 300, ..static_layout(11).unwrap().kernel };
        assert_eq!(tstate_read(&far), None);
        assert_eq!((frame_window(10), frame_window(11)), (0, 1024));
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

    /// 3.14's words, with the values of Debian's CPython 3.14.10 (x86_64): each lands in its
    /// field, and the frame the kernel reads ends past the owner byte at 74.
    #[test]
    fn debug_offsets_of_314() {
        let mut bytes = vec![0u8; DEBUG_OFFSETS_LEN];
        bytes[..8].copy_from_slice(b"xdebugpy");
        let set =
            |bytes: &mut Vec<u8>, i: usize, v: u64| bytes[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        set(&mut bytes, 1, 0x030e0af0);
        for (i, v) in [
            (5, 808),
            (9, 7344),
            // thread_state: its size (any), prev 0, next 8, interp 16.
            (22, 1234),
            (23, 0),
            (24, 8),
            (25, 16),
            (26, 72),
            (28, 160),
            (32, 8),
            (33, 0),
            (34, 56),
            (36, 74),
            (40, 112),
            (41, 120),
            (42, 128),
            (43, 136),
            (44, 68),
            (48, 208),
            (80, 40),
        ] {
            set(&mut bytes, i, v);
        }
        let layout = layout_from_debug_offsets(&bytes, 14).unwrap();
        let k = layout.kernel;
        assert_eq!((layout.interpreters_head, k.threads_head), (808, 7344));
        assert_eq!((k.tstate_prev, k.tstate_next, k.tstate_interp), (0, 8, 16));
        assert_eq!((k.tstate_frame, k.tstate_thread_id, k.cframe_frame), (72, 160, PY_NO_OFFSET));
        assert_eq!((k.frame_previous, k.frame_code, k.frame_instr, k.frame_owner), (8, 0, 56, 74));
        let c = layout.code;
        assert_eq!((c.filename, c.name, c.qualname, c.linetable), (112, 120, Some(128), 136));
        assert_eq!((c.firstlineno, c.code_adaptive, layout.ascii_size), (68, Some(208), 40));
        assert_eq!((layout.code_tag_bits, k.owner_skip), (3, 3));
        assert_eq!(frame_read(&k), Some(75));
        assert_eq!(tstate_read(&k), Some(168));
        // The same bytes are not 3.13's, and a free-threaded build is refused by name.
        assert!(layout_from_debug_offsets(&bytes, 13).is_err());
        set(&mut bytes, 2, 1);
        assert_eq!(layout_from_debug_offsets(&bytes, 14), Err(PythonError::FreeThreaded));
    }
}
