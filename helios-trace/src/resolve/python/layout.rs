//! Where CPython keeps what the kernel walks and what names a frame, per version: the table of
//! 3.10 to 3.12, 3.13's own `_Py_DebugOffsets`, and the version a mapped file's name says.
use helios_trace_common::{PY_NO_OFFSET, PythonOffsets};

use super::PythonError;
use crate::model::frame::basename;

/// Oldest and newest CPython minor versions whose layouts are known.
pub(crate) const SUPPORTED: std::ops::RangeInclusive<u32> = 10..=13;

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
}

impl Layout {
    pub(crate) fn compact_size(&self) -> u64 {
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
pub(crate) fn static_layout(minor: u32) -> Option<Layout> {
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
pub(crate) const DEBUG_OFFSETS_LEN: usize = 71 * 8;

/// Largest offset believed from `_Py_DebugOffsets`.
const MAX_OFFSET: u32 = 1 << 20;

/// 3.13's layout from the `_Py_DebugOffsets` that opens `_PyRuntime`
/// (Include/internal/pycore_runtime.h of 3.13: cookie "xdebugpy", version (PY_VERSION_HEX),
/// free_threaded, then one struct of u64 offsets per type, each starting with its size).
pub(crate) fn layout_from_debug_offsets(bytes: &[u8], minor: u32) -> Result<Layout, PythonError> {
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
}
