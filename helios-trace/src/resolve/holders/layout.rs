//! Where CPython keeps what the heap walk reads, per version (64-bit). Each offset is an
//! `offsetof`/`sizeof` in that version's headers, printed by a C program compiled against
//! CPython 3.11.7's and Debian's 3.11.2 headers (the same numbers), and 3.12.1's (below):
//! `Include/internal/pycore_runtime.h` (`_PyRuntimeState.interpreters.head`),
//! `Include/internal/pycore_interp.h` (`PyInterpreterState.gc`, `.threads.head`),
//! `Include/internal/pycore_gc.h` (`struct _gc_runtime_state.generations`,
//! `.permanent_generation`; `struct gc_generation`; `PyGC_Head`),
//! `Include/cpython/object.h` (`PyTypeObject.tp_name`, `.tp_basicsize`, `.tp_flags`, `.tp_base`,
//! `.tp_dict`, `.tp_dictoffset`; `PyHeapTypeObject.ht_qualname`, `.ht_cached_keys`,
//! `.ht_module`), `Include/cpython/dictobject.h` and `Include/internal/pycore_dict.h`
//! (`PyDictObject.ma_used`, `.ma_keys`, `.ma_values`; `PyDictKeysObject.dk_log2_size`,
//! `.dk_log2_index_bytes`, `.dk_kind`, `.dk_nentries`, `.dk_indices`; the entry sizes),
//! `Include/cpython/setobject.h` (`PySetObject.used`, `.mask`, `.table`),
//! `Include/cpython/listobject.h`, `Include/cpython/tupleobject.h` (`ob_item`),
//! `Include/internal/pycore_moduleobject.h` (`PyModuleObject.md_dict`),
//! `Include/cpython/pystate.h` (`PyThreadState.next`, `.cframe`; `_PyCFrame.current_frame`),
//! `Include/internal/pycore_frame.h` (`_PyInterpreterFrame.f_code`, `.previous`, `.owner`,
//! `.localsplus`), `Include/cpython/code.h` (`PyCodeObject.co_nlocalsplus`,
//! `.co_localsplusnames`, `.co_filename`, `.co_qualname`; `co_filename` at 112 measured with
//! ctypes on 3.11.2, 3.12.1, 3.13.0, Debian's 3.13.5 and 3.14.10 as well).
//!
//! The objects of C modules are not in the installed headers; their first fields have not
//! moved for many versions: `PySocketSockObject.sock_fd` right after the object header
//! (Modules/socketmodule.h), `fileio.fd` likewise (Modules/_io/fileio.c), `buffered.raw`
//! likewise (Modules/_io/bufferedio.c), `textio.buffer` after `ok`, `detached` and
//! `chunk_size` (Modules/_io/textio.c), `PyCellObject.ob_ref` (Include/cpython/cellobject.h).
//! That holds in 3.14's Modules too; `mmap_object.fd` (`MMAP_FD`) was measured.

/// The offsets of one CPython version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HeapLayout {
    pub(crate) minor: u32,
    pub(crate) interpreters_head: u64,
    pub(crate) interp_threads_head: u64,
    /// `&interp->gc.generations[0]`; each `gc_generation` starts with its list's `PyGC_Head`.
    pub(crate) interp_generations: u64,
    pub(crate) generation_size: u64,
    pub(crate) generations: u64,
    /// `&interp->gc.permanent_generation` (`gc.freeze()`).
    pub(crate) interp_permanent: u64,
    /// `&interp->gc.generation0`, the collector's own pointer to generation 0's list head, where
    /// a build may place the generations other than the headers say (walk.rs).
    pub(crate) interp_generation0: Option<u64>,
    pub(crate) tp_name: u64,
    pub(crate) tp_basicsize: u64,
    pub(crate) tp_flags: u64,
    pub(crate) tp_base: u64,
    pub(crate) tp_dict: u64,
    pub(crate) tp_dictoffset: u64,
    pub(crate) ht_qualname: u64,
    pub(crate) ht_cached_keys: u64,
    pub(crate) ht_module: u64,
    pub(crate) ma_used: u64,
    pub(crate) ma_keys: u64,
    pub(crate) ma_values: u64,
    /// How a dict's keys object says its size and entry kind (3.10's differs).
    pub(crate) dict_keys: DictKeys,
    pub(crate) dk_log2_size: u64,
    pub(crate) dk_log2_index_bytes: u64,
    pub(crate) dk_kind: u64,
    pub(crate) dk_nentries: u64,
    pub(crate) dk_indices: u64,
    pub(crate) set_used: u64,
    pub(crate) set_mask: u64,
    pub(crate) set_table: u64,
    pub(crate) md_dict: u64,
    pub(crate) tstate_next: u64,
    /// `tstate->cframe` (3.11, 3.12; its `current_frame` at `cframe_current_frame`), or None
    /// where the thread state holds `current_frame` itself (3.13, at `cframe_current_frame`).
    pub(crate) tstate_cframe: Option<u64>,
    pub(crate) cframe_current_frame: u64,
    pub(crate) frame_code: u64,
    pub(crate) frame_previous: u64,
    /// `_PyInterpreterFrame.owner` (3.11+); None on 3.10, whose thread state chains only the
    /// frames running on it.
    pub(crate) frame_owner: Option<u64>,
    pub(crate) frame_localsplus: u64,
    /// Where a frame object (`frame`, what a traceback holds) keeps its frame: `f_frame`, a
    /// pointer to the interpreter frame (3.11+), or None on 3.10, whose frame object is the
    /// frame itself.
    pub(crate) frame_object_frame: Option<u64>,
    pub(crate) co_nlocalsplus: u64,
    pub(crate) co_localsplusnames: u64,
    pub(crate) co_filename: u64,
    pub(crate) co_qualname: u64,
    /// `PyTupleObject.ob_item`: after the var-object header, and on 3.14 after the hash it
    /// caches (`ob_hash`, Include/cpython/tupleobject.h; measured with ctypes: an item at 32).
    pub(crate) tuple_items: u64,
    /// `sizeof(PyASCIIObject)` and `sizeof(PyCompactUnicodeObject)`: where a compact str's
    /// characters start (Include/cpython/unicodeobject.h).
    pub(crate) ascii_size: u64,
    pub(crate) compact_size: u64,
    /// Where a managed dict is (Include/internal/pycore_object.h).
    pub(crate) managed_dict: ManagedDict,
    /// Where a `PyDictValues`' `values` array starts (Include/internal/pycore_dict.h): at 0 in
    /// 3.11 and 3.12 (3.12's insertion order lies before it), after a 4-byte header padded to 8
    /// in 3.13 (capacity, size, embedded, valid).
    pub(crate) dict_values: u64,
    /// Low bits of a frame's `f_executable` and of its `localsplus` that are a tag, not
    /// address: 3.14's `_PyStackRef` (Include/internal/pycore_stackref.h, default build:
    /// `Py_TAG_BITS` 3, e.g. `Py_TAG_REFCNT` on a deferred or immortal reference); 0 before.
    pub(crate) stackref_tag: u64,
    /// A generator's, coroutine's or async generator's own frame (`gi_iframe`, embedded in the
    /// object) and its state byte (`gi_frame_state`), from `_PyGenObject_HEAD`
    /// (Include/internal/pycore_frame.h and Include/cpython/genobject.h of 3.11, where
    /// `gi_code` comes first; Include/internal/pycore_genobject.h of 3.12 on, without it; 3.14's
    /// `_Py_DebugOffsets.gen_object` agree). Measured on each: a suspended generator's code
    /// at the frame's `frame_code`, its locals at the frame's `localsplus`.
    pub(crate) gen_iframe: u64,
    pub(crate) gen_frame_state: u64,
    /// 3.10: `gen_iframe` is the offset of `gi_frame`, a pointer to the generator's frame
    /// object (NULL once finished), and `gen_frame_state` that frame's `f_state`.
    pub(crate) gen_frame_pointer: bool,
    /// `PyBaseExceptionObject.traceback`, then `context` and `cause` (Include/cpython/pyerrors.h:
    /// 3.11 put `notes` before them).
    pub(crate) exc_traceback: u64,
}

/// How a `PyDictKeysObject` says its size (Include/internal/pycore_dict.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DictKeys {
    /// 3.11+: `dk_log2_size`, `dk_log2_index_bytes` and `dk_kind` bytes; unicode entries are
    /// (key, value), general ones (hash, key, value).
    Log2,
    /// 3.10 (Objects/dict-common.h): `dk_size` (a count of slots, at 8), `dk_nentries` at 32, the
    /// index table at 40 with 1, 2, 4 or 8 bytes a slot as `dk_size` needs (`DK_IXSIZE`), then
    /// entries of (hash, key, value) whatever the keys.
    Sized,
}

/// How an object with Py_TPFLAGS_MANAGED_DICT keeps its attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ManagedDict {
    /// 3.11: `_PyObject_ValuesPointer` = object - 4 words (inline values, or NULL) and
    /// `_PyObject_ManagedDictPointer` = object - 3 words (a dict, or NULL).
    Separate,
    /// 3.12: one `PyDictOrValues` word at object - 3 words: a dict, or the inline values
    /// minus one (its low bit set).
    Tagged,
    /// 3.13: a dict at object - 3 words (`_PyObject_ManagedDictPointer`), else, with
    /// Py_TPFLAGS_INLINE_VALUES, the values inside the object after its header
    /// (`_PyObject_InlineValues`: a `PyDictValues` of 4 bytes — capacity, size, embedded,
    /// valid — then the values at 8).
    Inline,
    /// 3.10: none; an instance's `__dict__` is at its type's `tp_dictoffset`.
    None,
}

/// `Py_TPFLAGS_INLINE_VALUES` (3.13, Include/object.h).
pub(crate) const TPFLAGS_INLINE_VALUES: u64 = 1 << 2;

/// Every object starts with `ob_refcnt`, `ob_type` (Include/object.h); a var-sized one then
/// has `ob_size`; a GC-tracked object is preceded by its 16-byte `PyGC_Head`.
pub(crate) const OB_TYPE: u64 = 8;
pub(crate) const OB_SIZE: u64 = 16;
pub(crate) const GC_HEAD: u64 = 16;
/// `ob_item` of a list (a pointer to the items; a tuple's are inline: `HeapLayout::tuple_items`).
pub(crate) const LIST_ITEMS: u64 = 24;
/// The first field after the object header of a C object (sock_fd, fd, raw, ob_ref).
pub(crate) const AFTER_HEAD: u64 = 16;
pub(crate) const TEXTIO_BUFFER: u64 = 32;
/// `mmap_object.fd` (Modules/mmapmodule.c, on Unix: after the object header `data`, `size`,
/// `pos`, `offset` and `exports`, all 8 bytes since 3.9), the duplicate of the mapped file's
/// descriptor an `mmap.mmap` keeps until it is closed (-1 for an anonymous map, and from 3.13
/// with `trackfd=False`). Read with ctypes from `id(m) + 56` on 3.10.13, 3.11.7, Debian's
/// 3.11.2, 3.12.1, 3.13.0, Debian's 3.13.5 and 3.14.10: the number the map's dup took.
pub(crate) const MMAP_FD: u64 = 56;
/// `PyBaseExceptionObject.args` (Include/cpython/pyerrors.h: `dict`, `args` after the header;
/// where `traceback` is: `HeapLayout::exc_traceback`) and `PyTracebackObject`
/// (Include/cpython/traceback.h: `tb_next`, `tb_frame`): measured with ctypes on 3.10.13,
/// 3.11.2, 3.12.1, 3.13.0, Debian's 3.13.5 and 3.14.10.
pub(crate) const EXC_ARGS: u64 = 24;
pub(crate) const TB_NEXT: u64 = 16;
pub(crate) const TB_FRAME: u64 = 24;

/// `tp_flags` bits (Include/object.h).
pub(crate) const TPFLAGS_MANAGED_DICT: u64 = 1 << 4;
pub(crate) const TPFLAGS_HEAPTYPE: u64 = 1 << 9;
pub(crate) const TPFLAGS_UNICODE_SUBCLASS: u64 = 1 << 28;
pub(crate) const TPFLAGS_BASE_EXC_SUBCLASS: u64 = 1 << 30;
pub(crate) const TPFLAGS_TYPE_SUBCLASS: u64 = 1 << 31;

/// `DICT_KEYS_GENERAL` (Include/internal/pycore_dict.h): entries with a hash; the others
/// (unicode, split) without.
pub(crate) const DICT_KEYS_GENERAL: u8 = 0;
pub(crate) const DICT_ENTRY_GENERAL: u64 = 24;
pub(crate) const DICT_ENTRY_UNICODE: u64 = 16;
/// A set's `setentry` is {key, hash} (Include/cpython/setobject.h).
pub(crate) const SET_ENTRY: u64 = 16;

/// `FRAME_OWNED_BY_THREAD` (Include/internal/pycore_frame.h): a frame of a thread's stack (not
/// a generator's, whose locals the generator holds).
pub(crate) const FRAME_OWNED_BY_THREAD: u8 = 0;

/// `FRAME_EXECUTING` (Include/internal/pycore_frame.h, 3.11 to 3.14; 3.10's frame object
/// `f_state`, Include/cpython/frameobject.h, numbers its states alike): a generator's frame is
/// alive — created or suspended (negative states) or running (0) — below `FRAME_COMPLETED`
/// (1); completed and cleared ones hold no locals.
pub(crate) const FRAME_EXECUTING: i8 = 0;

/// The layout of a CPython version, if the walk knows it.
pub(crate) fn heap_layout(minor: u32) -> Option<HeapLayout> {
    match minor {
        // CPython 3.10 (pyenv's 3.10.13), measured with ctypes on the running interpreter against
        // its headers: the GC state at interp + 616 (generation 0's list head at 640, reached
        // from a new object's `_gc_next`; `generation0` at 712 points there), threads at
        // `tstate_head` (8) with the running frame at `tstate->frame` (24); frames are frame
        // objects (Include/cpython/frameobject.h: `f_back` 24, `f_code` 32, `f_state` 108,
        // `f_localsplus` 352), a generator's `gi_frame` at 16; code objects name their plain
        // locals in `co_varnames` (72, `co_nlocals` at 28) and have no qualified name
        // (`co_name` at 112 stands for it); dict keys are sized, not log2 (`DictKeys::Sized`);
        // instances keep a `__dict__` at `tp_dictoffset` (no managed dicts); exceptions have no
        // `notes`. Types, dicts, sets, modules and strings are laid out as in 3.11.
        10 => Some(HeapLayout {
            minor,
            interpreters_head: 32,
            interp_threads_head: 8,
            interp_generations: 616 + 24,
            interp_permanent: 616 + 104,
            interp_generation0: Some(616 + 96),
            dict_keys: DictKeys::Sized,
            dk_nentries: 32,
            dk_indices: 40,
            tstate_cframe: None,
            cframe_current_frame: 24,
            frame_code: 32,
            frame_previous: 24,
            frame_owner: None,
            frame_localsplus: 352,
            frame_object_frame: None,
            co_nlocalsplus: 28,
            co_localsplusnames: 72,
            co_filename: 104,
            co_qualname: 112,
            gen_iframe: 16,
            gen_frame_state: 108,
            gen_frame_pointer: true,
            exc_traceback: 32,
            managed_dict: ManagedDict::None,
            ..heap_layout(11)?
        }),
        11 => Some(HeapLayout {
            minor,
            interpreters_head: 40,
            interp_threads_head: 16,
            // gc at 648, generations at 24 within it.
            interp_generations: 648 + 24,
            generation_size: 24,
            generations: 3,
            interp_permanent: 648 + 104,
            interp_generation0: None,
            tp_name: 24,
            tp_basicsize: 32,
            tp_flags: 168,
            tp_base: 256,
            tp_dict: 264,
            tp_dictoffset: 288,
            ht_qualname: 864,
            ht_cached_keys: 872,
            ht_module: 880,
            ma_used: 16,
            ma_keys: 32,
            ma_values: 40,
            dict_keys: DictKeys::Log2,
            dk_log2_size: 8,
            dk_log2_index_bytes: 9,
            dk_kind: 10,
            dk_nentries: 24,
            dk_indices: 32,
            set_used: 24,
            set_mask: 32,
            set_table: 40,
            md_dict: 16,
            tstate_next: 8,
            tstate_cframe: Some(56),
            cframe_current_frame: 8,
            frame_code: 32,
            frame_previous: 48,
            frame_owner: Some(69),
            frame_localsplus: 72,
            // Include/internal/pycore_frame.h `struct _frame`: `f_back`, `f_frame` (the
            // interpreter frame inside the object once its function returned).
            frame_object_frame: Some(24),
            co_nlocalsplus: 76,
            co_localsplusnames: 96,
            co_filename: 112,
            co_qualname: 128,
            tuple_items: 24,
            ascii_size: 48,
            compact_size: 72,
            managed_dict: ManagedDict::Separate,
            dict_values: 0,
            stackref_tag: 0,
            gen_iframe: 80,
            gen_frame_state: 75,
            gen_frame_pointer: false,
            exc_traceback: 40,
        }),
        // The same C program against CPython 3.12.1's headers: the interpreter's gc and
        // threads moved, heap types grew a field, frames and code objects were reordered,
        // `PyASCIIObject` lost `wstr`, and managed dicts became one tagged word.
        12 => Some(HeapLayout {
            minor,
            interp_threads_head: 72,
            tstate_cframe: Some(56),
            interp_generations: 112 + 24,
            interp_permanent: 112 + 104,
            ht_qualname: 872,
            ht_cached_keys: 880,
            ht_module: 888,
            cframe_current_frame: 0,
            frame_code: 0,
            frame_previous: 8,
            frame_owner: Some(70),
            co_nlocalsplus: 72,
            ascii_size: 40,
            compact_size: 56,
            managed_dict: ManagedDict::Tagged,
            gen_iframe: 72,
            gen_frame_state: 67,
            ..heap_layout(11)?
        }),
        // CPython 3.13.0's headers: `_PyRuntime` starts with `_Py_DebugOffsets` (whose
        // interpreters.head and threads.head walk.rs checks against these), the interpreter
        // state is larger, the thread state holds `current_frame`, frames start with
        // `f_executable`, and instances keep their inline values inside the object.
        13 => Some(HeapLayout {
            minor,
            interpreters_head: 632,
            interp_threads_head: 7344,
            interp_generations: 7400 + 24,
            interp_permanent: 7400 + 104,
            // Debian 13's 3.13.5 has its generations at gc + 20 (its patch
            // gchead-alignment.diff gives PyGC_Head 4-byte alignment: measured, generation0
            // pointing there), the upstream build at 24; `generation0` says which.
            interp_generation0: Some(7400 + 96),
            tstate_cframe: None,
            cframe_current_frame: 72,
            managed_dict: ManagedDict::Inline,
            dict_values: 8,
            ..heap_layout(12)?
        }),
        // CPython 3.14 (Debian sid's 3.14.10): `interpreters_head` and `threads_head` from its
        // `_Py_DebugOffsets` (Include/internal/pycore_debug_offsets.h; checked at walk time as
        // on 3.13). The GC is incremental (Include/internal/pycore_interp_structs.h,
        // `struct _gc_runtime_state`): a `young` generation, then `old[2]` (the visited and the
        // pending space; an object's space is `_gc_next`'s low bit, `_PyGC_NEXT_MASK_OLD_SPACE_1`,
        // masked like the collector's flags), then `permanent_generation`, each a 24-byte
        // `gc_generation` as before: three lists and the permanent one. Where they start moved
        // with the interpreter state; measured on the running interpreter (a new list's ring
        // reaches the `young` head at interp + 7432, after gc.collect() an old space's at 7480,
        // after gc.freeze() the permanent one's at 7504). Frames
        // (Include/internal/pycore_interpframe_structs.h) grew `stackpointer` and `visited`:
        // `owner` at 74 (the debug offsets' `interpreter_frame.owner`), `localsplus` at 80
        // (measured likewise: a function's locals there), both `_PyStackRef`s. Types, dicts,
        // sets, code objects and managed dicts with inline values are 3.13's (measured: a
        // class's `ht_qualname` at 872, `tp_flags` 168, `tp_base` 256, `co_localsplusnames`
        // 96, a frame's code at 0).
        14 => Some(HeapLayout {
            minor,
            interpreters_head: 808,
            interp_generations: 7432,
            interp_permanent: 7504,
            interp_generation0: None,
            frame_owner: Some(74),
            frame_localsplus: 80,
            stackref_tag: 3,
            tuple_items: 32,
            ..heap_layout(13)?
        }),
        _ => None,
    }
}
