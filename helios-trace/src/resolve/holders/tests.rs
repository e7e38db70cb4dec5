//! The walk on bytes laid out as CPython 3.10 to 3.14 lay them out (a fake memory): the postmortem's
//! shape gives its holder line, and a damaged heap gives unknowns, never a crash or a wrong name.
use std::time::Duration;

use super::{
    layout::{
        DictKeys, GC_HEAD, HeapLayout, MMAP_FD, ManagedDict, TB_FRAME, TB_NEXT, TPFLAGS_BASE_EXC_SUBCLASS,
        TPFLAGS_HEAPTYPE, TPFLAGS_INLINE_VALUES, TPFLAGS_MANAGED_DICT, TPFLAGS_TYPE_SUBCLASS,
        TPFLAGS_UNICODE_SUBCLASS, heap_layout,
    },
    memory::{Fake, Memory},
    walk::{Budget, walk},
};

const BUDGET: Budget =
    Budget { time: Duration::from_secs(10), max_objects: 10_000, cache_bytes: 1 << 20, listings: 3 };

/// A heap under construction: each object in its own region, GC-tracked ones linked into
/// generation 0 when `finish` is called.
struct Heap {
    mem: Fake,
    l: HeapLayout,
    next: u64,
    runtime: u64,
    interp: u64,
    gc: Vec<u64>,
    type_type: u64,
    str_type: u64,
}

/// Py_TPFLAGS_DICT_SUBCLASS (Include/object.h).
const TPFLAGS_DICT_SUBCLASS: u64 = 1 << 29;

/// What `Heap::base_types` made.
struct BaseTypes {
    object: u64,
    dict: u64,
    module: u64,
}

impl Heap {
    fn new(minor: u32) -> Heap {
        let l = heap_layout(minor).unwrap();
        let mut h = Heap {
            mem: Fake::default(),
            l,
            next: 0x10_0000,
            runtime: 0,
            interp: 0,
            gc: Vec::new(),
            type_type: 0,
            str_type: 0,
        };
        h.runtime = h.alloc(1024);
        h.interp = h.alloc(8192);
        h.mem.put_u64(h.runtime + l.interpreters_head, h.interp);
        // `type` is its own type.
        h.type_type = h.static_type("type", 0, TPFLAGS_TYPE_SUBCLASS);
        h.mem.put_u64(h.type_type + 8, h.type_type);
        h.str_type = h.static_type("str", 0, TPFLAGS_UNICODE_SUBCLASS);
        h
    }

    fn alloc(&mut self, size: u64) -> u64 {
        let at = self.next;
        self.mem.put(at, &vec![0u8; size as usize]);
        self.next += (size + 0x100) & !0xff;
        at
    }

    fn c_str(&mut self, s: &str) -> u64 {
        let at = self.alloc(s.len() as u64 + 1);
        self.mem.write(at, s.as_bytes());
        at
    }

    /// `object`, `dict` and `module`, the static types every fake heap's module needs.
    fn base_types(&mut self) -> BaseTypes {
        let object = self.static_type("object", 0, 0);
        let dict = self.static_type("dict", object, TPFLAGS_DICT_SUBCLASS);
        let module = self.static_type("module", object, 0);
        BaseTypes { object, dict, module }
    }

    fn static_type(&mut self, name: &str, base: u64, flags: u64) -> u64 {
        let tp = self.alloc(900);
        let name = self.c_str(name);
        let l = self.l;
        self.mem.put_u64(tp + 8, self.type_type);
        self.mem.put_u64(tp + l.tp_name, name);
        self.mem.put_u64(tp + l.tp_flags, flags);
        self.mem.put_u64(tp + l.tp_base, base);
        tp
    }

    /// A GC-tracked object of `size` bytes of type `tp` (with room for a managed dict's two
    /// words before its PyGC_Head).
    fn gc_object(&mut self, tp: u64, size: u64) -> u64 {
        let at = self.alloc(32 + size) + 16 + GC_HEAD;
        self.mem.put_u64(at + 8, tp);
        self.gc.push(at - GC_HEAD);
        at
    }

    fn string(&mut self, s: &str) -> u64 {
        let at = self.alloc(self.l.ascii_size + s.len() as u64 + 1);
        self.mem.put_u64(at + 8, self.str_type);
        self.mem.put_u64(at + 16, s.len() as u64);
        self.mem.write(at + 32, &((1u32 << 2) | (1 << 5) | (1 << 6)).to_le_bytes());
        self.mem.write(at + self.l.ascii_size, s.as_bytes());
        at
    }

    /// Unicode keys with `entries` (key, value), 8 slots; values inline unless `split`. 3.10's
    /// keys: `dk_size` 8, entries of (hash, key, value).
    fn keys(&mut self, entries: &[(&str, u64)], split: bool) -> (u64, u64) {
        let l = self.l;
        let keys = self.alloc(l.dk_indices + 8 + 24 * 8);
        let (entry, key_at) = match l.dict_keys {
            DictKeys::Log2 => {
                self.mem.write(keys + l.dk_log2_size, &[3, 3, if split { 2 } else { 1 }]);
                (16, 0)
            }
            DictKeys::Sized => {
                self.mem.put_u64(keys + 8, 8);
                (24, 8)
            }
        };
        self.mem.put_u64(keys + l.dk_nentries, entries.len() as u64);
        let values = self.alloc(8 * 8);
        for (i, (k, v)) in entries.iter().enumerate() {
            let key = self.string(k);
            let e = keys + l.dk_indices + 8 + entry * i as u64 + key_at;
            self.mem.put_u64(e, key);
            if split {
                self.mem.put_u64(values + 8 * i as u64, *v);
            } else {
                self.mem.put_u64(e + 8, *v);
            }
        }
        (keys, values)
    }

    fn dict(&mut self, dict_type: u64, entries: &[(&str, u64)]) -> u64 {
        let d = self.gc_object(dict_type, 48);
        let (keys, _) = self.keys(entries, false);
        self.mem.put_u64(d + self.l.ma_used, entries.len() as u64);
        self.mem.put_u64(d + self.l.ma_keys, keys);
        d
    }

    /// A list of `items`.
    fn list(&mut self, list_type: u64, items: &[u64]) -> u64 {
        let list = self.gc_object(list_type, 64);
        let array = self.alloc(8 * items.len().max(1) as u64);
        self.mem.put_u64(list + 16, items.len() as u64);
        self.mem.put_u64(list + 24, array);
        for (i, item) in items.iter().enumerate() {
            self.mem.put_u64(array + 8 * i as u64, *item);
        }
        list
    }

    /// A module `name` whose globals are `__name__`, `__file__` (when given) and `globals`.
    fn module(&mut self, types: (u64, u64), name: &str, file: Option<&str>, globals: &[(&str, u64)]) -> u64 {
        let (module_type, dict_type) = types;
        let mut entries = vec![("__name__", self.string(name))];
        if let Some(file) = file {
            entries.push(("__file__", self.string(file)));
        }
        entries.extend_from_slice(globals);
        let globals = self.dict(dict_type, &entries);
        let module = self.gc_object(module_type, 64);
        self.mem.put_u64(module + self.l.md_dict, globals);
        module
    }

    fn finish(&mut self) {
        let head = self.interp + self.l.interp_generations;
        let mut prev = head;
        for gc in self.gc.clone() {
            self.mem.put_u64(prev, gc);
            prev = gc;
        }
        self.mem.put_u64(prev, head);
        for i in 1..4 {
            let other =
                if i < 3 { head + i * self.l.generation_size } else { self.interp + self.l.interp_permanent };
            self.mem.put_u64(other, other);
        }
    }
}

/// What the fake heap holds: module `app` with class `Handler` whose `_ws_connections` set
/// holds two handlers, each with a socket (fds 7, 8) in an inline attribute `sock`; a socket
/// nothing refers to (fd 9); a class named `dict` whose instance must not read as a dict.
struct Postmortem {
    heap: Heap,
    handlers: Vec<u64>,
}

fn postmortem(minor: u32) -> Postmortem {
    let mut h = Heap::new(minor);
    let l = h.l;
    let BaseTypes { object: object_type, dict: dict_type, module: module_type } = h.base_types();
    let set_type = h.static_type("set", object_type, 0);
    let c_socket = h.static_type("_socket.socket", object_type, 0);
    if minor >= 12 {
        // 3.12: a heap type of the _socket module (ht_module set).
        h.mem.put_u64(c_socket + l.tp_flags, TPFLAGS_HEAPTYPE);
        h.mem.put_u64(c_socket + l.ht_module, 0x1234_5678);
    }
    // socket.socket: a heap type deriving from _socket.socket (Lib/socket.py).
    let socket_type = h.gc_object(h.type_type, 900);
    let name = h.c_str("socket");
    h.mem.put_u64(socket_type + l.tp_name, name);
    h.mem.put_u64(socket_type + l.tp_flags, TPFLAGS_HEAPTYPE);
    h.mem.put_u64(socket_type + l.tp_base, c_socket);
    let socket_dict = h.dict(dict_type, &[]);
    h.mem.put_u64(socket_type + l.tp_dict, socket_dict);
    let sockets: Vec<u64> = (7i32..=9)
        .map(|fd| {
            let s = h.gc_object(socket_type, 64);
            h.mem.write(s + 16, &fd.to_le_bytes());
            s
        })
        .collect();
    // class Handler: managed dict, instances with inline values {sock}.
    let handler_type = h.gc_object(h.type_type, 900);
    let name = h.c_str("Handler");
    h.mem.put_u64(handler_type + l.tp_name, name);
    let managed =
        if l.managed_dict == ManagedDict::None { 0 } else { TPFLAGS_MANAGED_DICT | TPFLAGS_INLINE_VALUES };
    h.mem.put_u64(handler_type + l.tp_flags, TPFLAGS_HEAPTYPE | managed);
    if managed == 0 {
        // 3.10: the instance's `__dict__` right after its header.
        h.mem.put_u64(handler_type + l.tp_dictoffset, 16);
    }
    // Its instances' inline values (3.13+) come right after the object header.
    h.mem.put_u64(handler_type + l.tp_basicsize, 16);
    h.mem.put_u64(handler_type + l.tp_base, object_type);
    let qualname = h.string("Handler");
    h.mem.put_u64(handler_type + l.ht_qualname, qualname);
    let (cached, _) = h.keys(&[("sock", 0)], true);
    h.mem.put_u64(handler_type + l.ht_cached_keys, cached);
    let mut handlers = Vec::new();
    for (i, s) in sockets[..2].iter().enumerate() {
        let handler = h.gc_object(handler_type, 64);
        if i == 1 {
            // A materialized dict, split: the type's shared keys and its own values.
            let dict = h.gc_object(dict_type, 48);
            let values = h.alloc(16);
            h.mem.put_u64(values + l.dict_values, *s);
            h.mem.put_u64(dict + l.ma_used, 1);
            h.mem.put_u64(dict + l.ma_keys, cached);
            h.mem.put_u64(dict + l.ma_values, values);
            // Object - 3 words in every version with managed dicts (3.12's tagged word: a dict
            // has its low bit clear); 3.10's at the type's dict offset.
            let at = if managed == 0 { handler + 16 } else { handler - 24 };
            h.mem.put_u64(at, dict);
            handlers.push(handler);
            continue;
        }
        let values = h.alloc(16);
        h.mem.put_u64(values, *s);
        match l.managed_dict {
            ManagedDict::None => {
                let dict = h.dict(dict_type, &[("sock", *s)]);
                h.mem.put_u64(handler + 16, dict);
            }
            ManagedDict::Separate => h.mem.put_u64(handler - 32, values),
            ManagedDict::Tagged => h.mem.put_u64(handler - 24, values - 1),
            ManagedDict::Inline => {
                // Valid inline values after the header, the value at 8 into them.
                h.mem.write(handler + 16, &[1, 1, 1, 1]);
                h.mem.put_u64(handler + 24, *s);
            }
        }
        handlers.push(handler);
    }
    let set = h.gc_object(set_type, 200);
    let table = h.alloc(8 * 16);
    h.mem.put_u64(set + l.set_used, 2);
    h.mem.put_u64(set + l.set_mask, 7);
    h.mem.put_u64(set + l.set_table, table);
    h.mem.put_u64(table + 16, handlers[0]);
    h.mem.put_u64(table + 5 * 16, handlers[1]);
    let module_str = h.string("app");
    let class_dict = h.dict(dict_type, &[("__module__", module_str), ("_ws_connections", set)]);
    h.mem.put_u64(handler_type + l.tp_dict, class_dict);
    // A class named `dict`, and an instance of it holding a pointer where a dict's keys are.
    let fake_dict_type = h.gc_object(h.type_type, 900);
    let name = h.c_str("dict");
    h.mem.put_u64(fake_dict_type + l.tp_name, name);
    h.mem.put_u64(fake_dict_type + l.tp_flags, TPFLAGS_HEAPTYPE);
    h.mem.put_u64(fake_dict_type + l.tp_base, object_type);
    let fake = h.gc_object(fake_dict_type, 64);
    h.mem.put_u64(fake + l.ma_keys, cached);
    h.module((module_type, dict_type), "app", None, &[("Handler", handler_type), ("fake", fake)]);
    h.finish();
    Postmortem { heap: h, handlers }
}

#[test]
fn the_postmortem_heap_names_the_class_set() {
    for minor in [10, 11, 12, 13, 14] {
        the_postmortem_heap_of(minor);
    }
}

fn the_postmortem_heap_of(minor: u32) {
    let p = postmortem(minor);
    // 3.10 has no managed dicts: the first handler's attributes are a dict of its own.
    let handler_dicts = u64::from(p.heap.l.managed_dict == ManagedDict::None);
    let w = walk(p.heap.mem, p.heap.l, p.heap.runtime, &BUDGET, || {}).unwrap();
    assert_eq!(w.stopped, None);
    assert_eq!(w.unknown, 0);
    let lines: Vec<String> = w.holders(&[7, 8, 9, 10]).iter().map(|h| h.line()).collect();
    assert_eq!(
        lines,
        [
            "2 held by app:Handler._ws_connections (set of 2) via .sock",
            "1 no chain from a named root",
            "1 no Python owner",
        ]
    );
    let census = w.census.entries(None, 20);
    let count = |t: &str| census.iter().find(|e| e.type_name == t).map(|e| e.count);
    assert_eq!(
        (count("socket"), count("Handler"), count("set"), count("module")),
        (Some(3), Some(2), Some(1), Some(1))
    );
    // The class named `dict` is counted under its name but not read as a dict: nothing in it.
    assert_eq!(count("dict"), Some(5 + handler_dicts));
}

#[test]
fn a_damaged_heap_gives_unknowns_not_names() {
    let mut p = postmortem(11);
    // One handler's type pointer now points at a string (not a type): unknown, and its
    // socket loses its chain; the other still reads.
    let s = p.heap.string("not a type");
    p.heap.mem.put_u64(p.handlers[0] + 8, s);
    let w = walk(p.heap.mem, p.heap.l, p.heap.runtime, &BUDGET, || {}).unwrap();
    assert_eq!(w.unknown, 1);
    let lines: Vec<String> = w.holders(&[7, 8]).iter().map(|h| h.line()).collect();
    assert_eq!(
        lines,
        ["1 held by app:Handler._ws_connections (set of 2) via .sock", "1 no chain from a named root"]
    );
}

#[test]
fn a_looping_gc_list_stops_at_the_budget_and_says_so() {
    let mut p = postmortem(11);
    // The last object's next points back at the first (as a list being changed may).
    let (first, last) = (p.heap.gc[0], *p.heap.gc.last().unwrap());
    p.heap.mem.put_u64(last, first);
    let budget = Budget { max_objects: 100, ..BUDGET };
    let w = walk(p.heap.mem, p.heap.l, p.heap.runtime, &budget, || {}).unwrap();
    assert!(w.stopped.as_deref().is_some_and(|s| s.contains("object budget")), "{:?}", w.stopped);
    // Still the right holders for what it read; what it missed is said.
    let lines: Vec<String> = w.holders(&[7, 10]).iter().map(|h| h.line()).collect();
    assert_eq!(
        lines,
        ["1 held by app:Handler._ws_connections (set of 2) via .sock", "1 not found: the walk stopped early"]
    );
}

/// A process changing its heap while it is read: the word at `at` reads as `broken` until the
/// walk has forgotten what it read `heals_after` times (then the list has settled).
struct Changing {
    mem: Fake,
    at: u64,
    broken: u64,
    heals_after: u32,
    forgotten: u32,
}

impl Memory for Changing {
    fn read(&mut self, address: u64, buf: &mut [u8]) -> bool {
        if address == self.at && buf.len() == 8 && self.forgotten < self.heals_after {
            buf.copy_from_slice(&self.broken.to_le_bytes());
            return true;
        }
        self.mem.read(address, buf)
    }

    fn forget(&mut self) {
        self.forgotten += 1;
    }
}

#[test]
fn a_gc_list_that_broke_off_while_read_is_read_again() {
    const BROKE_OFF: &str = "a GC list broke off (the process changed it while read)";
    // (listings allowed, listings it takes to settle, what the walk says)
    let cases = [
        (3, 1, None),
        (3, 2, None),
        (3, u32::MAX, Some(format!("{BROKE_OFF}, in each of 3 listings"))),
        // A stopped process is listed once: reading it again would read the same.
        (1, 1, Some(BROKE_OFF.to_string())),
    ];
    for (listings, heals_after, said) in cases {
        let p = postmortem(12);
        // The first handler's `_gc_next` reads as 0 (unlinked by the process just then).
        let at = p.handlers[0] - GC_HEAD;
        let mem = Changing { mem: p.heap.mem, at, broken: 0, heals_after, forgotten: 0 };
        let budget = Budget { listings, ..BUDGET };
        let w = walk(mem, p.heap.l, p.heap.runtime, &budget, || {}).unwrap();
        assert_eq!(w.stopped, said, "{listings} listings allowed, settled after {heals_after}");
        let lines: Vec<String> = w.holders(&[7, 8]).iter().map(|h| h.line()).collect();
        if said.is_none() {
            assert_eq!(lines, ["2 held by app:Handler._ws_connections (set of 2) via .sock"]);
        } else {
            assert!(lines.iter().all(|l| !l.contains("no Python owner")), "{lines:?}");
        }
    }
}

mod fuzz {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        /// Any bytes of the heap overwritten: the walk ends, within its budget, without a
        /// panic; a root it names is one the heap has.
        #[test]
        fn corrupt_bytes_never_crash(minor in 10u32..=14, writes in prop::collection::vec((0usize..64, 0usize..1024, any::<u64>()), 1..16)) {
            let mut p = postmortem(minor);
            let regions: Vec<(u64, usize)> = p.heap.mem.regions.iter().map(|(a, r)| (*a, r.len())).collect();
            for (region, offset, value) in writes {
                let (start, len) = regions[region % regions.len()];
                if len >= 8 {
                    let at = start + ((offset % (len - 7)) & !7) as u64;
                    p.heap.mem.put_u64(at, value);
                }
            }
            let budget = Budget { max_objects: 1000, ..BUDGET };
            if let Some(w) = walk(p.heap.mem, p.heap.l, p.heap.runtime, &budget, || {}) {
                for h in w.holders(&[7, 8, 9]) {
                    if let Some(root) = h.root {
                        prop_assert!(["app:Handler._ws_connections", "app:Handler", "app:fake"].contains(&root.as_str())
                            || root.starts_with("app:") || root.starts_with("?:"), "{}", root);
                    }
                }
            }
        }
    }
}

/// `__slots__`: `class Pool: __slots__ = ("conn", "spare")` (names sorted in `ht_slots`, members
/// from the base's basicsize on) and a subclass with a managed dict whose inline values come
/// after the slots (3.13+: at the object's basicsize), each holding a socket; a deque whose
/// second item, in its second block, is a socket; module globals name all three. A suspended
/// coroutine's local is a root; a finished one's is not.
#[test]
fn slots_deques_and_suspended_coroutines_hold() {
    for minor in [11, 12, 13, 14] {
        let mut h = Heap::new(minor);
        let l = h.l;
        let BaseTypes { object: object_type, dict: dict_type, module: module_type } = h.base_types();
        h.mem.put_u64(object_type + l.tp_basicsize, 16);
        let tuple_type = h.static_type("tuple", object_type, 0);
        let socket_type = h.static_type("_socket.socket", object_type, 0);
        let socket = |h: &mut Heap, fd: i32| {
            let s = h.gc_object(socket_type, 64);
            h.mem.write(s + 16, &fd.to_le_bytes());
            s
        };
        let (a, b) = (socket(&mut h, 11), socket(&mut h, 12));
        let heap_type = |h: &mut Heap, name: &str, base: u64, flags: u64, size: u64| {
            let tp = h.gc_object(h.type_type, 900);
            let c_name = h.c_str(name);
            h.mem.put_u64(tp + l.tp_name, c_name);
            h.mem.put_u64(tp + l.tp_flags, TPFLAGS_HEAPTYPE | flags);
            h.mem.put_u64(tp + l.tp_base, base);
            h.mem.put_u64(tp + l.tp_basicsize, size);
            let qualname = h.string(name);
            h.mem.put_u64(tp + l.ht_qualname, qualname);
            tp
        };
        let pool_type = heap_type(&mut h, "Pool", object_type, 0, 32);
        let names = h.gc_object(tuple_type, 48);
        h.mem.put_u64(names + 16, 2);
        let (conn, spare) = (h.string("conn"), h.string("spare"));
        h.mem.put_u64(names + l.tuple_items, conn);
        h.mem.put_u64(names + l.tuple_items + 8, spare);
        h.mem.put_u64(pool_type + l.ht_qualname - 8, names);
        let pool = h.gc_object(pool_type, 32);
        h.mem.put_u64(pool + 24, a);
        // class Sub(Pool) with a managed dict: its own attribute `extra` inline after the
        // slots (3.13+), else where each version keeps inline values.
        let sub_type = heap_type(&mut h, "Sub", pool_type, TPFLAGS_MANAGED_DICT | TPFLAGS_INLINE_VALUES, 32);
        let (cached, _) = h.keys(&[("extra", 0)], true);
        h.mem.put_u64(sub_type + l.ht_cached_keys, cached);
        let sub = h.gc_object(sub_type, 64);
        let values = h.alloc(16);
        h.mem.put_u64(values, b);
        match l.managed_dict {
            ManagedDict::Separate => h.mem.put_u64(sub - 32, values),
            ManagedDict::Tagged => h.mem.put_u64(sub - 24, values - 1),
            ManagedDict::Inline => {
                h.mem.write(sub + 32, &[1, 1, 1, 1]);
                h.mem.put_u64(sub + 40, b);
            }
            ManagedDict::None => unreachable!("3.10's coroutines and dicts are not this test's"),
        }
        // A deque of two: the last item of its left block (leftindex 63), then a socket first in
        // the next block.
        let deque_type = h.static_type("collections.deque", object_type, 0);
        let deque = h.gc_object(deque_type, 64);
        let (left, right) = (h.alloc(8 * 66), h.alloc(8 * 66));
        let c = socket(&mut h, 13);
        h.mem.put_u64(deque + 16, 2);
        h.mem.put_u64(deque + 24, left);
        h.mem.put_u64(deque + 32, right);
        h.mem.put_u64(deque + 40, 63);
        h.mem.put_u64(left + 8 + 8 * 63, pool);
        h.mem.put_u64(left + 8 + 8 * 64, right);
        h.mem.put_u64(right + 8, c);
        // `async def handle(reader, writer)` suspended in `await reader.read()` holds its writer's
        // socket (fd 14) in a local; a finished coroutine's locals (fd 15) are not roots. On
        // 3.14 the frame's code reference carries a tag bit.
        let code_type = h.static_type("code", object_type, 0);
        let coroutine_type = h.static_type("coroutine", object_type, 0);
        let code = h.alloc(256);
        h.mem.put_u64(code + 8, code_type);
        let qualname = h.string("handle");
        h.mem.put_u64(code + l.co_qualname, qualname);
        h.mem.write(code + l.co_nlocalsplus, &1i32.to_le_bytes());
        let local_names = h.gc_object(tuple_type, 48);
        h.mem.put_u64(local_names + 16, 1);
        let writer = h.string("writer");
        h.mem.put_u64(local_names + l.tuple_items, writer);
        h.mem.put_u64(code + l.co_localsplusnames, local_names);
        for (fd, state) in [(14, -2i8), (16, -2), (15, 1)] {
            let coroutine = h.gc_object(coroutine_type, 256);
            h.mem.write(coroutine + l.gen_frame_state, &[state as u8]);
            let frame = coroutine + l.gen_iframe;
            h.mem.put_u64(frame + l.frame_code, code | (l.stackref_tag & 1));
            let s = socket(&mut h, fd);
            h.mem.put_u64(frame + l.frame_localsplus, s);
        }
        h.module((module_type, dict_type), "app", None, &[("pool", pool), ("sub", sub), ("queue", deque)]);
        h.finish();
        let w = walk(h.mem, l, h.runtime, &BUDGET, || {}).unwrap();
        let lines = |fds: &[i32]| w.holders(fds).iter().map(|h| h.line()).collect::<Vec<_>>();
        assert_eq!(lines(&[11]), ["1 held by app:pool (Pool) via .spare"], "3.{minor}");
        assert_eq!(lines(&[12]), ["1 held by app:sub (Sub) via .extra"], "3.{minor}");
        assert_eq!(lines(&[13]), ["1 held by app:queue (collections.deque of 2)"], "3.{minor}");
        // Two coroutines of one function: one line for both.
        assert_eq!(lines(&[14, 16]), ["2 held by handle() local writer (_socket.socket)"], "3.{minor}");
        assert_eq!(lines(&[15]), ["1 no chain from a named root"], "3.{minor}");
    }
}

/// requests' shape: the standard library's `weakref` module reaches a socket in one step
/// (its OrderedDict, a root, holds it), the application's `__main__` (run as `python -c`: no
/// file) in two (its list, a defaultdict, the socket): the application's global names it
/// (model/holders.rs, `Rank`). A module whose file is in site-packages is a library's; one whose
/// file is elsewhere (`units`) the application's. The application's `import weakref` (a global
/// bound to the module) and a dict of its holding the module do not make the library's globals
/// its own: no root is a module and no edge leads into one. defaultdict and OrderedDict read as
/// dicts.
#[test]
fn the_applications_module_names_a_holder_before_a_librarys() {
    for minor in [10, 11, 12, 13, 14] {
        let mut h = Heap::new(minor);
        let l = h.l;
        let BaseTypes { object: object_type, dict: dict_type, module: module_type } = h.base_types();
        let list_type = h.static_type("list", object_type, 0);
        let defaultdict_type = h.static_type("collections.defaultdict", dict_type, TPFLAGS_DICT_SUBCLASS);
        let ordered_type = h.static_type("collections.OrderedDict", dict_type, TPFLAGS_DICT_SUBCLASS);
        let socket_type = h.static_type("_socket.socket", object_type, 0);
        let [a, b, c] = [21i32, 22, 23].map(|fd| {
            let s = h.gc_object(socket_type, 64);
            h.mem.write(s + 16, &fd.to_le_bytes());
            s
        });
        let pool = h.dict(defaultdict_type, &[("conns", a)]);
        let list = h.list(list_type, &[pool]);
        let registry = h.dict(ordered_type, &[("a", a), ("b", b), ("c", c)]);
        let spare = h.dict(dict_type, &[("c", c)]);
        let module = |h: &mut Heap, name, file, globals: &[(&str, u64)]| {
            h.module((module_type, dict_type), name, file, globals)
        };
        let weakref =
            module(&mut h, "weakref", Some("/usr/lib/python3.11/weakref.py"), &[("_registry", registry)]);
        // `python -c`: a __main__ without a file is the application's all the same.
        let client = h.dict(dict_type, &[("lib", weakref)]);
        module(&mut h, "__main__", None, &[("weakref", weakref), ("client", client), ("SESSIONS", list)]);
        module(
            &mut h,
            "urllib3",
            Some("/srv/venv/lib/site-packages/urllib3/__init__.py"),
            &[("_pool", pool)],
        );
        module(&mut h, "units", Some("/srv/units/pool.py"), &[("_spare", spare)]);
        h.finish();
        let w = walk(h.mem, l, h.runtime, &BUDGET, || {}).unwrap();
        let lines = |fds: &[i32]| w.holders(fds).iter().map(|h| h.line()).collect::<Vec<_>>();
        assert_eq!(lines(&[21]), ["1 held by __main__:SESSIONS (list of 1) via [\"conns\"]"], "3.{minor}");
        assert_eq!(lines(&[23]), ["1 held by units:_spare (dict of 1) via [\"c\"]"], "3.{minor}");
        // Nothing of the application's reaches the other: the library's global names it.
        assert_eq!(
            lines(&[22]),
            ["1 held by weakref:_registry (collections.OrderedDict of 3) via [\"b\"]"],
            "3.{minor}"
        );
    }
}

/// A loader that closes its file only on success, whose caller keeps the exceptions: each
/// exception's traceback holds the loader's frame, whose local `f` is the open file (fd 31):
/// `errors (list of 1) via .__traceback__.tb_next.tb_frame.f_locals["f"]` (on 3.10 the frame
/// object is the frame).
#[test]
fn a_kept_exception_holds_the_locals_of_the_frame_that_raised() {
    for minor in [10, 11, 12, 13, 14] {
        let mut h = Heap::new(minor);
        let l = h.l;
        let BaseTypes { object: object_type, dict: dict_type, module: module_type } = h.base_types();
        let list_type = h.static_type("list", object_type, 0);
        let tuple_type = h.static_type("tuple", object_type, 0);
        let fileio_type = h.static_type("_io.FileIO", object_type, 0);
        let error_type = h.static_type("ValueError", object_type, TPFLAGS_BASE_EXC_SUBCLASS);
        let traceback_type = h.static_type("traceback", object_type, 0);
        let frame_type = h.static_type("frame", object_type, 0);
        let code_type = h.static_type("code", object_type, 0);
        let file = h.gc_object(fileio_type, 64);
        h.mem.write(file + 16, &31i32.to_le_bytes());
        // load(path)'s code: locals `path` and `f`.
        let code = h.alloc(256);
        h.mem.put_u64(code + 8, code_type);
        let qualname = h.string("load");
        h.mem.put_u64(code + l.co_qualname, qualname);
        h.mem.write(code + l.co_nlocalsplus, &2i32.to_le_bytes());
        let names = h.gc_object(tuple_type, 48);
        h.mem.put_u64(names + 16, 2);
        let (path, f) = (h.string("path"), h.string("f"));
        h.mem.put_u64(names + l.tuple_items, path);
        h.mem.put_u64(names + l.tuple_items + 8, f);
        h.mem.put_u64(code + l.co_localsplusnames, names);
        // The frame object, its interpreter frame inside it (the function returned); on 3.10
        // the frame object is the frame.
        let frame = h.gc_object(frame_type, 512);
        let inner = match l.frame_object_frame {
            Some(at) => {
                h.mem.put_u64(frame + at, frame + 64);
                frame + 64
            }
            None => frame,
        };
        h.mem.put_u64(inner + l.frame_code, code | (l.stackref_tag & 1));
        h.mem.put_u64(inner + l.frame_localsplus + 8, file);
        // The caller's traceback entry, then the loader's.
        let (outer_tb, inner_tb) = (h.gc_object(traceback_type, 48), h.gc_object(traceback_type, 48));
        h.mem.put_u64(outer_tb + TB_NEXT, inner_tb);
        h.mem.put_u64(inner_tb + TB_FRAME, frame);
        let error = h.gc_object(error_type, 80);
        h.mem.put_u64(error + l.exc_traceback, outer_tb);
        let errors = h.list(list_type, &[error]);
        h.module((module_type, dict_type), "app", Some("/srv/app.py"), &[("errors", errors)]);
        h.finish();
        let w = walk(h.mem, l, h.runtime, &BUDGET, || {}).unwrap();
        let lines: Vec<String> = w.holders(&[31]).iter().map(|h| h.line()).collect();
        assert_eq!(
            lines,
            ["1 held by app:errors (list of 1) via .__traceback__.tb_next.tb_frame.f_locals[\"f\"]"],
            "3.{minor}"
        );
    }
}

/// A memory map owns the duplicate of its file's descriptor (`mmap.mmap`, a heap type of the
/// mmap module on every version walked: its `ht_module` set); an anonymous map (fd -1) in the
/// same list owns none: one held, `app:maps (list of 2)`. A heap type without `ht_module` is a
/// Python class, whatever its name: its objects own nothing.
#[test]
fn a_memory_map_owns_the_duplicate_of_its_files_descriptor() {
    for (minor, of_the_module) in [10, 11, 12, 13, 14].into_iter().flat_map(|m| [(m, true), (m, false)]) {
        let mut h = Heap::new(minor);
        let l = h.l;
        let BaseTypes { object: object_type, dict: dict_type, module: module_type } = h.base_types();
        let list_type = h.static_type("list", object_type, 0);
        let mmap_type = h.static_type("mmap.mmap", object_type, TPFLAGS_HEAPTYPE);
        if of_the_module {
            h.mem.put_u64(mmap_type + l.ht_module, 0x1234_5678);
        }
        let maps: Vec<u64> = [41i32, -1]
            .iter()
            .map(|fd| {
                let map = h.gc_object(mmap_type, 96);
                h.mem.write(map + MMAP_FD, &fd.to_le_bytes());
                map
            })
            .collect();
        let kept = h.list(list_type, &maps);
        h.module((module_type, dict_type), "app", Some("/srv/app.py"), &[("maps", kept)]);
        h.finish();
        let w = walk(h.mem, l, h.runtime, &BUDGET, || {}).unwrap();
        let lines: Vec<String> = w.holders(&[41]).iter().map(|h| h.line()).collect();
        let expected = if of_the_module { "1 held by app:maps (list of 2)" } else { "1 no Python owner" };
        assert_eq!(lines, [expected], "3.{minor}, ht_module set: {of_the_module}");
    }
}
