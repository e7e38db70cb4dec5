//! Python objects read from the heap: what a type is (validated: a pointer that is not a type
//! object, or a name that does not read, makes it unknown), `str` keys, and the references an
//! object holds — dict entries (combined and split keys), set members, list and tuple items,
//! instance dicts (managed with inline values, or at `tp_dictoffset`), module and class dicts,
//! the I/O wrappers' raw streams, cells — each labelled as Python reaches it.
use std::{collections::HashMap, rc::Rc};

use super::{
    layout::{
        AFTER_HEAD, DICT_ENTRY_GENERAL, DICT_ENTRY_UNICODE, DICT_KEYS_GENERAL, DictKeys, EXC_ARGS,
        FRAME_EXECUTING, HeapLayout, LIST_ITEMS, MMAP_FD, ManagedDict, OB_SIZE, OB_TYPE, SET_ENTRY, TB_FRAME,
        TB_NEXT, TEXTIO_BUFFER, TPFLAGS_BASE_EXC_SUBCLASS, TPFLAGS_HEAPTYPE, TPFLAGS_INLINE_VALUES,
        TPFLAGS_MANAGED_DICT, TPFLAGS_TYPE_SUBCLASS, TPFLAGS_UNICODE_SUBCLASS,
    },
    memory::Memory,
};

/// How an object's references are laid out: the builtin type it is or derives from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    Dict,
    Set,
    List,
    Tuple,
    /// `collections.deque`: blocks of 64 items (Modules/_collectionsmodule.c).
    Deque,
    /// A generator, coroutine or async generator: its frame's locals (walk.rs).
    Generator,
    Module,
    Type,
    /// `_socket.socket`: owns `sock_fd`.
    Socket,
    /// `_io.FileIO`: owns `fd`.
    FileIo,
    /// `mmap.mmap`: owns the duplicate of the mapped file's descriptor (`MMAP_FD`).
    Mmap,
    /// `_io.Buffered*`: `.raw`.
    Buffered,
    /// `_io.TextIOWrapper`: `.buffer`.
    TextIo,
    Cell,
    Code,
    /// An exception (`Py_TPFLAGS_BASE_EXC_SUBCLASS`): `.args`, `.__traceback__`,
    /// `.__context__`, `.__cause__`.
    Exception,
    /// A traceback: `.tb_next`, `.tb_frame`.
    Traceback,
    /// A frame object: the locals of its interpreter frame (a function that raised keeps its
    /// locals in the frame its traceback holds).
    Frame,
    Other,
}

/// One interpreter frame's code and its bound locals.
pub(crate) struct FrameLocals {
    pub(crate) qualname: Option<Rc<str>>,
    pub(crate) file: Option<Rc<str>>,
    /// (name, object) of each local that is set.
    pub(crate) values: Vec<(Rc<str>, u64)>,
}

/// Locals read per frame.
const MAX_LOCALS: u64 = 4096;

/// A validated type object.
#[derive(Debug)]
pub(crate) struct TypeInfo {
    /// `tp_name`, e.g. `dict`, `_socket.socket`, `UnitTrackingWSHandler`.
    pub(crate) name: Rc<str>,
    pub(crate) shape: Shape,
    pub(crate) flags: u64,
    pub(crate) dictoffset: i64,
    /// `ht_cached_keys` of a heap type (the shared keys of its instances' inline values).
    pub(crate) cached_keys: u64,
    /// `tp_basicsize`: where an instance's inline values start (3.13+,
    /// `_PyObject_InlineValues`: `(char *)obj + tp->tp_basicsize`, Include/internal/pycore_object.h),
    /// past the members of `__slots__` in it and its bases.
    pub(crate) basicsize: u64,
    /// The `__slots__` members of it and its heap-type bases: (name, offset in the instance).
    pub(crate) slots: Vec<(Rc<str>, u64)>,
}

/// How one reference is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Label {
    Attr(Rc<str>),
    Key(Option<Rc<str>>),
    Index,
    Member,
}

/// Limits on what one object may claim: a container that says it has more is read up to this
/// (and counted as cut short), a pointer chain of types deeper than this is not a type.
pub(crate) const MAX_ITEMS: u64 = 1 << 22;
const MAX_BASES: usize = 32;
/// A type's `tp_basicsize` beyond this is not believed (a type with a million slots is not).
const MAX_BASICSIZE: i64 = 1 << 20;
/// `__slots__` names read per type.
const MAX_SLOTS: u64 = 256;
const MAX_NAME: usize = 256;
const MAX_KEY: u64 = 1024;
/// Strings and types cached per walk (types are few; strings are mostly interned names).
const MAX_CACHED: usize = 1 << 17;

/// Reads objects through a [`Memory`] with a version's layout, caching types and strings.
pub(crate) struct Reader<M: Memory> {
    pub(crate) memory: M,
    pub(crate) layout: HeapLayout,
    types: HashMap<u64, Option<Rc<TypeInfo>>>,
    strings: HashMap<u64, Option<Rc<str>>>,
    /// Containers read only in part (longer than MAX_ITEMS, or racing).
    pub(crate) cut_short: u64,
}

fn aligned(address: u64) -> bool {
    address != 0 && address.is_multiple_of(8)
}

impl<M: Memory> Reader<M> {
    pub(crate) fn new(memory: M, layout: HeapLayout) -> Reader<M> {
        Reader { memory, layout, types: HashMap::new(), strings: HashMap::new(), cut_short: 0 }
    }

    /// The type of the object at `object`, None when it does not read as one.
    pub(crate) fn type_of(&mut self, object: u64) -> Option<Rc<TypeInfo>> {
        if !aligned(object) {
            return None;
        }
        let tp = self.memory.u64(object.wrapping_add(OB_TYPE))?;
        self.type_info(tp)
    }

    pub(crate) fn type_info(&mut self, tp: u64) -> Option<Rc<TypeInfo>> {
        if let Some(info) = self.types.get(&tp) {
            return info.clone();
        }
        let info = self.read_type(tp).map(Rc::new);
        if self.types.len() >= MAX_CACHED {
            self.types.clear();
        }
        self.types.insert(tp, info.clone());
        info
    }

    /// A type object is an object whose own type is `type` or a subclass of it (its
    /// `tp_flags` carry Py_TPFLAGS_TYPE_SUBCLASS), with a readable, printable `tp_name`.
    fn read_type(&mut self, tp: u64) -> Option<TypeInfo> {
        if !self.is_type(tp) {
            return None;
        }
        let l = self.layout;
        let name_at = self.memory.u64(tp.wrapping_add(l.tp_name))?;
        let name: Rc<str> = self.c_string(name_at)?.into();
        let flags = self.memory.u64(tp.wrapping_add(l.tp_flags))?;
        let dictoffset = self.memory.i64(tp.wrapping_add(l.tp_dictoffset))?;
        let heap = flags & TPFLAGS_HEAPTYPE != 0;
        let cached_keys = if heap { self.memory.u64(tp.wrapping_add(l.ht_cached_keys))? } else { 0 };
        let shape = self.shape(tp)?;
        let basicsize = self.basicsize(tp)?;
        let slots = self.slots(tp);
        Some(TypeInfo { name, shape, flags, dictoffset, cached_keys, basicsize, slots })
    }

    /// `tp_basicsize`, if plausible.
    fn basicsize(&mut self, tp: u64) -> Option<u64> {
        let size = self.memory.i64(tp.wrapping_add(self.layout.tp_basicsize))?;
        (0..=MAX_BASICSIZE).contains(&size).then_some(size as u64)
    }

    /// The `__slots__` members of `tp` and its bases: a heap type's `ht_slots` (the tuple
    /// before `ht_qualname` in `PyHeapTypeObject`, Include/cpython/object.h: its slot names,
    /// mangled and sorted, without `__dict__` and `__weakref__`) names its members, which
    /// Objects/typeobject.c (`type_new_descriptors`) lays out one pointer each from its base's
    /// `tp_basicsize` on, in that order.
    fn slots(&mut self, tp: u64) -> Vec<(Rc<str>, u64)> {
        let l = self.layout;
        let mut out = Vec::new();
        let mut t = tp;
        for _ in 0..MAX_BASES {
            let Some(flags) = self.memory.u64(t.wrapping_add(l.tp_flags)) else { break };
            let base = self.memory.u64(t.wrapping_add(l.tp_base)).unwrap_or(0);
            if flags & TPFLAGS_HEAPTYPE == 0 || base == 0 || !self.is_type(base) {
                break;
            }
            let names = self.memory.u64(t.wrapping_add(l.ht_qualname - 8)).unwrap_or(0);
            if names != 0
                && aligned(names)
                && self.type_of(names).is_some_and(|n| n.shape == Shape::Tuple)
                && let Some(start) = self.basicsize(base)
            {
                let n = self.len(names, Shape::Tuple).min(MAX_SLOTS);
                for i in 0..n {
                    let name = self
                        .memory
                        .u64(names.wrapping_add(l.tuple_items + 8 * i))
                        .and_then(|s| self.str_at(s));
                    if let Some(name) = name {
                        out.push((name, start + 8 * i));
                    }
                }
            }
            t = base;
        }
        out
    }

    fn is_type(&mut self, tp: u64) -> bool {
        let flags = |r: &mut Self, t: u64| r.memory.u64(t.wrapping_add(r.layout.tp_flags));
        aligned(tp)
            && self
                .memory
                .u64(tp.wrapping_add(OB_TYPE))
                .filter(|meta| aligned(*meta))
                .and_then(|meta| flags(self, meta))
                .is_some_and(|f| f & TPFLAGS_TYPE_SUBCLASS != 0)
    }

    /// The builtin type a type is or derives from, by the `tp_base` chain: the first C type, a
    /// static one or a C module's heap type (neither of which Python code can define, so a class
    /// named `dict` is not taken for one).
    fn shape(&mut self, tp: u64) -> Option<Shape> {
        let l = self.layout;
        let mut at = tp;
        for _ in 0..MAX_BASES {
            if at == 0 {
                return Some(Shape::Other);
            }
            if !self.is_type(at) {
                return None;
            }
            let flags = self.memory.u64(at.wrapping_add(l.tp_flags))?;
            // A static type, or a C module's heap type (its `ht_module` set by
            // PyType_FromModuleAndSpec: `mmap.mmap` from 3.10, `_socket` and `_io` from 3.12):
            // Python code makes neither.
            let c_type = flags & TPFLAGS_HEAPTYPE == 0
                || self.memory.u64(at.wrapping_add(l.ht_module)).is_some_and(|m| m != 0);
            if c_type {
                let name_at = self.memory.u64(at.wrapping_add(l.tp_name))?;
                let name = self.c_string(name_at)?;
                return Some(match name.as_str() {
                    // defaultdict and OrderedDict are C types whose objects start with a
                    // whole PyDictObject (Modules/_collectionsmodule.c `defdictobject`,
                    // Objects/odictobject.c `struct _odictobject`): their items are a dict's.
                    "dict" | "collections.defaultdict" | "collections.OrderedDict" => Shape::Dict,
                    "set" | "frozenset" => Shape::Set,
                    "list" => Shape::List,
                    "tuple" => Shape::Tuple,
                    "collections.deque" => Shape::Deque,
                    "generator" | "coroutine" | "async_generator" => Shape::Generator,
                    "module" => Shape::Module,
                    "type" => Shape::Type,
                    "_socket.socket" => Shape::Socket,
                    "_io.FileIO" => Shape::FileIo,
                    "mmap.mmap" => Shape::Mmap,
                    "_io.BufferedReader" | "_io.BufferedWriter" | "_io.BufferedRandom" => Shape::Buffered,
                    "_io.TextIOWrapper" => Shape::TextIo,
                    "cell" => Shape::Cell,
                    "code" => Shape::Code,
                    "traceback" => Shape::Traceback,
                    "frame" => Shape::Frame,
                    // The flag every exception type inherits from BaseException.
                    _ if flags & TPFLAGS_BASE_EXC_SUBCLASS != 0 => Shape::Exception,
                    _ => Shape::Other,
                });
            }
            at = self.memory.u64(at.wrapping_add(l.tp_base))?;
        }
        None
    }

    /// A NUL-terminated name of printable characters (tp_name).
    fn c_string(&mut self, address: u64) -> Option<String> {
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 32];
        while bytes.len() < MAX_NAME {
            // A name may end near the end of a mapping: read byte by byte there.
            if self.memory.read(address.wrapping_add(bytes.len() as u64), &mut chunk) {
                match chunk.iter().position(|b| *b == 0) {
                    Some(end) => {
                        bytes.extend_from_slice(&chunk[..end]);
                        break;
                    }
                    None => bytes.extend_from_slice(&chunk),
                }
            } else {
                let b = self.memory.u8(address.wrapping_add(bytes.len() as u64))?;
                if b == 0 {
                    break;
                }
                bytes.push(b);
            }
        }
        let name = String::from_utf8(bytes).ok()?;
        (!name.is_empty() && name.len() < MAX_NAME && name.chars().all(|c| !c.is_control())).then_some(name)
    }

    /// A `str` object's text (compact strings: Include/cpython/unicodeobject.h, `length` at
    /// 16, `state` at 32 — kind in bits 2-4, compact bit 5, ascii bit 6), cached by address.
    pub(crate) fn str_at(&mut self, object: u64) -> Option<Rc<str>> {
        if let Some(s) = self.strings.get(&object) {
            return s.clone();
        }
        let s = self.read_str(object).map(Rc::from);
        if self.strings.len() >= MAX_CACHED {
            self.strings.clear();
        }
        self.strings.insert(object, s.clone());
        s
    }

    fn read_str(&mut self, object: u64) -> Option<String> {
        let tp = self.type_of(object)?;
        if tp.flags & TPFLAGS_UNICODE_SUBCLASS == 0 {
            return None;
        }
        let length = self.memory.u64(object + 16)?;
        let state = self.memory.i32(object + 32)? as u32;
        let (kind, compact, ascii) = ((state >> 2) & 7, state & (1 << 5) != 0, state & (1 << 6) != 0);
        if !compact || length > MAX_KEY || !matches!(kind, 1 | 2 | 4) {
            return None;
        }
        let data = object.wrapping_add(if ascii { self.layout.ascii_size } else { self.layout.compact_size });
        let mut bytes = vec![0u8; (length * kind as u64) as usize];
        if !self.memory.read(data, &mut bytes) {
            return None;
        }
        match kind {
            1 => Some(bytes.iter().map(|b| *b as char).collect()),
            2 => {
                let units: Vec<u16> =
                    bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
                String::from_utf16(&units).ok()
            }
            _ => bytes
                .chunks_exact(4)
                .map(|c| char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
        }
    }

    /// The item count a container says it has (dict: ma_used, set: used, list/tuple: ob_size).
    pub(crate) fn len(&mut self, object: u64, shape: Shape) -> u64 {
        let l = self.layout;
        let at = match shape {
            Shape::Dict => object.wrapping_add(l.ma_used),
            Shape::Set => object.wrapping_add(l.set_used),
            Shape::List | Shape::Tuple | Shape::Deque => object.wrapping_add(OB_SIZE),
            _ => return 0,
        };
        self.memory.i64(at).and_then(|n| u64::try_from(n).ok()).unwrap_or(0)
    }

    /// The descriptor an object owns (sockets, raw files, memory maps), if any (-1: closed).
    pub(crate) fn fd(&mut self, object: u64, shape: Shape) -> Option<i32> {
        let at = match shape {
            Shape::Socket | Shape::FileIo => AFTER_HEAD,
            Shape::Mmap => MMAP_FD,
            _ => return None,
        };
        self.memory.i32(object.wrapping_add(at)).filter(|fd| *fd >= 0)
    }

    /// A dict's entries: (key as text when it is a `str`, value), in insertion order.
    pub(crate) fn dict_entries(&mut self, dict: u64) -> Vec<(Option<Rc<str>>, u64)> {
        let l = self.layout;
        let (Some(keys), Some(values)) =
            (self.memory.u64(dict.wrapping_add(l.ma_keys)), self.memory.u64(dict.wrapping_add(l.ma_values)))
        else {
            return Vec::new();
        };
        self.keys_entries(keys, (values != 0).then_some(values))
    }

    /// Entries of a `PyDictKeysObject`: values in the entries (combined), or in the
    /// `PyDictValues` at `values`, indexed like the entries (split: Include/internal/pycore_dict.h).
    fn keys_entries(&mut self, keys: u64, values: Option<u64>) -> Vec<(Option<Rc<str>>, u64)> {
        let l = self.layout;
        if !aligned(keys) {
            return Vec::new();
        }
        let Some((slots, index_bytes, general, nentries)) = self.keys_shape(keys) else {
            return Vec::new();
        };
        let mut n = nentries;
        if n > slots {
            return Vec::new();
        }
        if n > MAX_ITEMS {
            self.cut_short += 1;
            n = MAX_ITEMS;
        }
        let entry = if general { DICT_ENTRY_GENERAL } else { DICT_ENTRY_UNICODE };
        let key_at = if general { 8 } else { 0 };
        let start = keys.wrapping_add(l.dk_indices + slots * index_bytes);
        let mut bytes = vec![0u8; (n * entry) as usize];
        if !self.memory.read(start, &mut bytes) {
            self.cut_short += 1;
            return Vec::new();
        }
        let split = match values.map(|v| v.wrapping_add(l.dict_values)) {
            Some(v) => {
                let mut vb = vec![0u8; (n * 8) as usize];
                if !self.memory.read(v, &mut vb) {
                    self.cut_short += 1;
                    return Vec::new();
                }
                Some(vb)
            }
            None => None,
        };
        let word = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        let mut out = Vec::new();
        for i in 0..n as usize {
            let key = word(&bytes, i * entry as usize + key_at);
            let value = match &split {
                Some(vb) => word(vb, i * 8),
                None => word(&bytes, i * entry as usize + key_at + 8),
            };
            if key == 0 || value == 0 {
                continue;
            }
            out.push((self.str_at(key), value));
        }
        out
    }

    /// A keys object's slots, bytes per index slot, whether its entries carry a hash, and its
    /// entries used; None when it does not read as one.
    fn keys_shape(&mut self, keys: u64) -> Option<(u64, u64, bool, u64)> {
        let l = self.layout;
        let nentries = u64::try_from(self.memory.i64(keys.wrapping_add(l.dk_nentries))?).ok()?;
        match l.dict_keys {
            DictKeys::Log2 => {
                let log2_size = self.memory.u8(keys.wrapping_add(l.dk_log2_size))?;
                let log2_index = self.memory.u8(keys.wrapping_add(l.dk_log2_index_bytes))?;
                let kind = self.memory.u8(keys.wrapping_add(l.dk_kind))?;
                // The index table holds 1 to 8 bytes per slot; entries never outnumber slots.
                if log2_size > 40 || log2_index < log2_size || log2_index > log2_size + 3 {
                    return None;
                }
                let slots = 1u64 << log2_size;
                Some((slots, (1u64 << log2_index) / slots, kind == DICT_KEYS_GENERAL, nentries))
            }
            DictKeys::Sized => {
                let slots = u64::try_from(self.memory.i64(keys.wrapping_add(8))?).ok()?;
                if !slots.is_power_of_two() || slots > 1 << 40 {
                    return None;
                }
                // DK_IXSIZE (Objects/dict-common.h).
                let index_bytes = match slots {
                    0..=0xff => 1,
                    0x100..=0xffff => 2,
                    0x1_0000..=0xffff_ffff => 4,
                    _ => 8,
                };
                Some((slots, index_bytes, true, nentries))
            }
        }
    }

    /// An object's attributes: its managed dict (inline values with the type's shared keys,
    /// or a materialized dict: Include/internal/pycore_object.h `_PyObject_ValuesPointer` =
    /// object - 4 words, `_PyObject_ManagedDictPointer` = object - 3 words), or the dict at
    /// `tp_dictoffset`.
    pub(crate) fn attributes(&mut self, object: u64, tp: &TypeInfo) -> Vec<(Option<Rc<str>>, u64)> {
        if tp.flags & TPFLAGS_MANAGED_DICT != 0 && self.layout.managed_dict == ManagedDict::Inline {
            let dict = self.memory.u64(object.wrapping_sub(24)).unwrap_or(0);
            if dict != 0 {
                return if aligned(dict) { self.dict_entries(dict) } else { Vec::new() };
            }
            // PyDictValues right after the object (its header and slots): `valid` at 3.
            let valid = self.memory.u8(object.wrapping_add(tp.basicsize + 3)).unwrap_or(0);
            return if tp.flags & TPFLAGS_INLINE_VALUES != 0 && valid != 0 {
                self.keys_entries(tp.cached_keys, Some(object.wrapping_add(tp.basicsize)))
            } else {
                Vec::new()
            };
        }
        if tp.flags & TPFLAGS_MANAGED_DICT != 0 && self.layout.managed_dict == ManagedDict::Tagged {
            let word = self.memory.u64(object.wrapping_sub(24)).unwrap_or(0);
            return if word & 1 == 1 {
                self.keys_entries(tp.cached_keys, Some(word + 1))
            } else if aligned(word) {
                self.dict_entries(word)
            } else {
                Vec::new()
            };
        }
        if tp.flags & TPFLAGS_MANAGED_DICT != 0 && self.layout.managed_dict == ManagedDict::Separate {
            let values = self.memory.u64(object.wrapping_sub(32)).unwrap_or(0);
            if values != 0 && aligned(values) {
                return self.keys_entries(tp.cached_keys, Some(values));
            }
            let dict = self.memory.u64(object.wrapping_sub(24)).unwrap_or(0);
            return if aligned(dict) { self.dict_entries(dict) } else { Vec::new() };
        }
        if tp.dictoffset > 0 {
            let dict = self.memory.u64(object.wrapping_add(tp.dictoffset as u64)).unwrap_or(0);
            if aligned(dict) && self.type_of(dict).is_some_and(|t| t.shape == Shape::Dict) {
                return self.dict_entries(dict);
            }
        }
        Vec::new()
    }

    /// Every reference of an object, labelled; pointers are not checked here (the walk keeps
    /// only those to objects it found in the GC lists).
    pub(crate) fn references(&mut self, object: u64, tp: &TypeInfo) -> Vec<(u64, Label)> {
        let l = self.layout;
        let attrs = |entries: Vec<(Option<Rc<str>>, u64)>| {
            entries.into_iter().filter_map(|(k, v)| Some((v, Label::Attr(k?)))).collect::<Vec<_>>()
        };
        let mut out: Vec<(u64, Label)> = match tp.shape {
            Shape::Dict => self.dict_entries(object).into_iter().map(|(k, v)| (v, Label::Key(k))).collect(),
            Shape::Set => self.set_members(object).into_iter().map(|v| (v, Label::Member)).collect(),
            Shape::List => {
                let items = self.memory.u64(object.wrapping_add(LIST_ITEMS)).unwrap_or(0);
                let n = self.len(object, Shape::List);
                self.pointers(items, n).into_iter().map(|v| (v, Label::Index)).collect()
            }
            Shape::Deque => self.deque_items(object).into_iter().map(|v| (v, Label::Index)).collect(),
            Shape::Tuple => {
                let n = self.len(object, Shape::Tuple);
                self.pointers(object.wrapping_add(l.tuple_items), n)
                    .into_iter()
                    .map(|v| (v, Label::Index))
                    .collect()
            }
            Shape::Module => match self.memory.u64(object.wrapping_add(l.md_dict)) {
                Some(dict) if aligned(dict) => attrs(self.dict_entries(dict)),
                _ => Vec::new(),
            },
            Shape::Type => match self.memory.u64(object.wrapping_add(l.tp_dict)) {
                Some(dict) if aligned(dict) => attrs(self.dict_entries(dict)),
                _ => Vec::new(),
            },
            Shape::Buffered => self.field(object.wrapping_add(AFTER_HEAD), "raw"),
            Shape::TextIo => self.field(object.wrapping_add(TEXTIO_BUFFER), "buffer"),
            Shape::Cell => self.field(object.wrapping_add(AFTER_HEAD), "cell_contents"),
            Shape::Exception => [
                (EXC_ARGS, "args"),
                (l.exc_traceback, "__traceback__"),
                (l.exc_traceback + 8, "__context__"),
                (l.exc_traceback + 16, "__cause__"),
            ]
            .into_iter()
            .flat_map(|(at, name)| self.field(object.wrapping_add(at), name))
            .collect(),
            Shape::Traceback => [(TB_NEXT, "tb_next"), (TB_FRAME, "tb_frame")]
                .into_iter()
                .flat_map(|(at, name)| self.field(object.wrapping_add(at), name))
                .collect(),
            Shape::Frame => {
                match l.frame_object_frame.map_or(Some(object), |at| self.memory.u64(object.wrapping_add(at)))
                {
                    Some(frame) if aligned(frame) => self
                        .frame_locals(frame)
                        .map(|locals| locals.values)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(name, value)| (value, Label::Attr(format!("f_locals[{name:?}]").into())))
                        .collect(),
                    _ => Vec::new(),
                }
            }
            Shape::Socket | Shape::FileIo | Shape::Mmap | Shape::Code | Shape::Generator | Shape::Other => {
                Vec::new()
            }
        };
        if !matches!(tp.shape, Shape::Module | Shape::Type) {
            out.extend(attrs(self.attributes(object, tp)));
            for (name, offset) in &tp.slots {
                out.extend(
                    self.field(object.wrapping_add(*offset), name).into_iter().filter(|(p, _)| *p != 0),
                );
            }
        }
        out
    }

    /// A generator's, coroutine's or async generator's frame while it is alive (created,
    /// suspended or running: a finished one holds no locals), or None.
    pub(crate) fn generator_frame(&mut self, object: u64) -> Option<u64> {
        let l = self.layout;
        let (frame, state_at) = if l.gen_frame_pointer {
            let frame =
                self.memory.u64(object.wrapping_add(l.gen_iframe)).filter(|f| *f != 0 && aligned(*f))?;
            (frame, frame.wrapping_add(l.gen_frame_state))
        } else {
            (object.wrapping_add(l.gen_iframe), object.wrapping_add(l.gen_frame_state))
        };
        let state = self.memory.u8(state_at)?;
        ((state as i8) <= FRAME_EXECUTING).then_some(frame)
    }

    /// The locals of the interpreter frame at `frame` (`localsplus[0..co_nlocalsplus]` named by
    /// its code's `co_localsplusnames`; None when its code does not read as a code object).
    pub(crate) fn frame_locals(&mut self, frame: u64) -> Option<FrameLocals> {
        let l = self.layout;
        let code = self.memory.u64(frame.wrapping_add(l.frame_code))? & !l.stackref_tag;
        if !self.type_of(code).is_some_and(|t| t.shape == Shape::Code) {
            return None;
        }
        let qualname = self.memory.u64(code.wrapping_add(l.co_qualname)).and_then(|q| self.str_at(q));
        let file = self.memory.u64(code.wrapping_add(l.co_filename)).and_then(|f| self.str_at(f));
        let n = self
            .memory
            .i32(code.wrapping_add(l.co_nlocalsplus))
            .map_or(0, |n| n.max(0) as u64)
            .min(MAX_LOCALS);
        let names = self.memory.u64(code.wrapping_add(l.co_localsplusnames)).unwrap_or(0);
        if !aligned(names) || !self.type_of(names).is_some_and(|t| t.shape == Shape::Tuple) {
            return None;
        }
        let names_len = self.memory.i64(names.wrapping_add(OB_SIZE)).unwrap_or(0).max(0) as u64;
        let mut values = Vec::new();
        for i in 0..n.min(names_len) {
            let value = self.memory.u64(frame.wrapping_add(l.frame_localsplus + i * 8)).unwrap_or(0)
                & !l.stackref_tag;
            let name =
                self.memory.u64(names.wrapping_add(l.tuple_items + i * 8)).and_then(|s| self.str_at(s));
            if let Some(name) = name
                && value != 0
            {
                values.push((name, value));
            }
        }
        Some(FrameLocals { qualname, file, values })
    }

    /// A deque's items (Modules/_collectionsmodule.c, unchanged from 3.11 to 3.14:
    /// `dequeobject` is the var-object header, whose `ob_size` counts the items, then
    /// `leftblock`, `rightblock`, `leftindex`, `rightindex`; a `block` is `leftlink`, 64 item
    /// pointers, `rightlink`): from `leftblock`'s `leftindex` on, block by block through
    /// `rightlink`, `ob_size` items; a chain that breaks off or loops ends the read (cut short).
    fn deque_items(&mut self, object: u64) -> Vec<u64> {
        const BLOCKLEN: u64 = 64;
        let n = self.len(object, Shape::Deque);
        let (Some(mut block), Some(left)) =
            (self.memory.u64(object.wrapping_add(24)), self.memory.i64(object.wrapping_add(40)))
        else {
            return Vec::new();
        };
        let mut index = match u64::try_from(left) {
            Ok(i) if i < BLOCKLEN => i,
            _ => return Vec::new(),
        };
        let n = if n > MAX_ITEMS {
            self.cut_short += 1;
            MAX_ITEMS
        } else {
            n
        };
        let (mut out, mut read) = (Vec::new(), 0u64);
        while read < n {
            let take = (BLOCKLEN - index).min(n - read);
            let Some(items) = self.words(block.wrapping_add(8 + 8 * index), take) else { break };
            read += take;
            out.extend(items.into_iter().filter(|p| *p != 0 && aligned(*p)));
            if read < n {
                match self.memory.u64(block.wrapping_add(8 + 8 * BLOCKLEN)) {
                    Some(next) if next != 0 && aligned(next) => block = next,
                    _ => {
                        self.cut_short += 1;
                        break;
                    }
                }
            }
            // Every block read counts at least one item: this ends within n blocks.
            index = 0;
        }
        out
    }

    fn field(&mut self, at: u64, name: &str) -> Vec<(u64, Label)> {
        self.memory
            .u64(at)
            .filter(|p| aligned(*p))
            .map(|p| (p, Label::Attr(name.into())))
            .into_iter()
            .collect()
    }

    /// `n` words at `at`, NULLs kept (None: they do not read).
    fn words(&mut self, at: u64, n: u64) -> Option<Vec<u64>> {
        let n = if n > MAX_ITEMS {
            self.cut_short += 1;
            MAX_ITEMS
        } else {
            n
        };
        let mut bytes = vec![0u8; (n * 8) as usize];
        if !aligned(at) || !self.memory.read(at, &mut bytes) {
            self.cut_short += u64::from(n > 0);
            return None;
        }
        Some(bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
    }

    fn pointers(&mut self, at: u64, n: u64) -> Vec<u64> {
        self.words(at, n).unwrap_or_default().into_iter().filter(|p| *p != 0).collect()
    }

    /// A set's members: the keys of its `table` of `mask + 1` entries (empty slots are NULL;
    /// deleted ones point at the `dummy` object, which is not GC-tracked, so the walk drops it).
    fn set_members(&mut self, set: u64) -> Vec<u64> {
        let l = self.layout;
        let (Some(mask), Some(table)) =
            (self.memory.i64(set.wrapping_add(l.set_mask)), self.memory.u64(set.wrapping_add(l.set_table)))
        else {
            return Vec::new();
        };
        let slots = (mask as u64).wrapping_add(1);
        if mask < 0 || !slots.is_power_of_two() {
            return Vec::new();
        }
        let all = self.words(table, slots.saturating_mul(SET_ENTRY / 8)).unwrap_or_default();
        all.chunks_exact(2).map(|entry| entry[0]).filter(|p| *p != 0).collect()
    }
}
