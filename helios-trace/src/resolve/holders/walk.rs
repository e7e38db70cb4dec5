//! The walk of one CPython heap: every object the garbage collector tracks (containers and
//! instances: everything that can hold a reference), found through the interpreter's
//! generation lists, then each object's references, the named roots (module globals, class
//! attributes, the locals of every thread's live frames) and the objects that own descriptors.
//! Bounded by a [`Budget`]: what it could not walk is said in the result, never guessed.
use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use super::{
    layout::{FRAME_OWNED_BY_THREAD, GC_HEAD, HeapLayout, TPFLAGS_HEAPTYPE},
    memory::Memory,
    objects::{Label, Reader, Shape},
};
use crate::model::{
    census::Census,
    frame::is_python_library,
    holders::{Chains, HeapGraph, Holder, NO_PYTHON_OWNER, Node, Rank, Step},
};

/// What one walk may spend.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Budget {
    pub(crate) time: Duration,
    /// Objects taken from the GC lists (the graph's memory grows with them: ~40 bytes each
    /// with their edges).
    pub(crate) max_objects: usize,
    /// Pages of the process cached while walking.
    pub(crate) cache_bytes: usize,
    /// Times the GC lists are listed at most, when one broke off while read (the process
    /// changed it): 1 for a stopped process, whose lists read the same every time.
    pub(crate) listings: u32,
}

pub(crate) const DEFAULT_BUDGET: Budget =
    Budget { time: Duration::from_secs(5), max_objects: 2_000_000, cache_bytes: 4 << 20, listings: 3 };

/// Threads and frames per thread read for roots.
const MAX_THREADS: usize = 1024;
const MAX_FRAMES: usize = 4096;

/// Said when a descriptor's owner was not found but the walk did not cover the whole heap.
pub(crate) const NOT_WALKED: &str = "not found: the walk stopped early";

/// One walk's result.
pub(crate) struct Walk {
    pub(crate) minor: u32,
    pub(crate) graph: HeapGraph,
    chains: Chains,
    pub(crate) census: Census,
    /// Descriptor → the objects that say they own it.
    pub(crate) owners: HashMap<i32, Vec<Node>>,
    /// Objects in the GC lists whose type did not read (freed while read, or not objects).
    pub(crate) unknown: u64,
    /// Containers read in part.
    pub(crate) cut_short: u64,
    /// Why the walk stopped before the end, if it did (then counts are lower bounds).
    pub(crate) stopped: Option<String>,
    pub(crate) elapsed: Duration,
    /// How long the process was stopped for the walk (None: not by us), or why it could not be
    /// (walk_process, `pause`).
    pub(crate) paused_seconds: Option<f64>,
    pub(crate) pause_error: Option<String>,
}

impl Walk {
    pub(crate) fn objects(&self) -> usize {
        self.graph.len()
    }

    /// The holder lines of these descriptors.
    pub(crate) fn holders(&self, fds: &[i32]) -> Vec<Holder> {
        let owners: Vec<Option<Node>> = fds
            .iter()
            .map(|fd| {
                let nodes = self.owners.get(fd)?;
                // Two objects may claim an fd (a socket and its dup'd twin were closed and
                // the number reused): the one a root reaches.
                nodes.iter().copied().find(|n| self.chains.reaches(*n)).or(nodes.first().copied())
            })
            .collect();
        let mut holders = self.graph.holders(&self.chains, &owners);
        if self.stopped.is_some() {
            for h in &mut holders {
                if h.note == Some(NO_PYTHON_OWNER) {
                    h.note = Some(NOT_WALKED);
                }
            }
        }
        holders
    }
}

/// Where generation 0's list head is: the headers' place, or where the collector's own
/// `gc.generation0` points when that is up to 8 bytes before it (a build that packs the
/// generations tighter: layout.rs, 3.13). Anything else is not believed.
fn generations_start<M: Memory>(memory: &mut M, layout: &HeapLayout, interp: u64) -> u64 {
    let headers = interp.wrapping_add(layout.interp_generations);
    let Some(pointer) = layout.interp_generation0.and_then(|at| memory.u64(interp.wrapping_add(at))) else {
        return headers;
    };
    if (headers.wrapping_sub(8)..=headers).contains(&pointer) && pointer.is_multiple_of(4) {
        pointer
    } else {
        headers
    }
}

/// Walk the heap of the interpreter whose `_PyRuntime` is at `runtime`; `read_done` is called
/// once nothing more is read from `memory` (a paused process may go on).
pub(crate) fn walk<M: Memory>(
    memory: M,
    layout: HeapLayout,
    runtime: u64,
    budget: &Budget,
    read_done: impl FnOnce(),
) -> Option<Walk> {
    let started = Instant::now();
    let mut r = Reader::new(memory, layout);
    let interp = r.memory.u64(runtime.wrapping_add(layout.interpreters_head)).filter(|p| *p != 0)?;
    // A list read while the process changes it can break off; all are listed again from the
    // start, with nothing of the earlier pages kept: a moment later they are usually whole. A
    // listing that stops otherwise (a budget) or cannot read a head keeps the one before.
    let (mut addresses, mut stopped) = list_objects(&mut r.memory, &layout, interp, budget, started)?;
    let (mut listings, mut broken) = (1, 1);
    while stopped.as_deref() == Some(BROKE_OFF) && listings < budget.listings && !over(started, budget) {
        r.memory.forget();
        listings += 1;
        match list_objects(&mut r.memory, &layout, interp, budget, started) {
            Some((again, why)) if why.is_none() || why.as_deref() == Some(BROKE_OFF) => {
                broken += u32::from(why.is_some());
                (addresses, stopped) = (again, why);
            }
            _ => break,
        }
    }
    if stopped.as_deref() == Some(BROKE_OFF) && broken > 1 {
        stopped = Some(format!("{BROKE_OFF}, in each of {broken} listings"));
    }
    addresses.sort_unstable();
    addresses.dedup();

    let mut graph = HeapGraph::new();
    let mut census = Census::default();
    let mut unknown = 0;
    let mut owners: HashMap<i32, Vec<Node>> = HashMap::new();
    let mut modules: HashSet<Node> = HashSet::new();
    for (i, &object) in addresses.iter().enumerate() {
        match r.type_of(object) {
            Some(t) => {
                census.add(&t.name);
                if t.shape == Shape::Module {
                    modules.insert(i as Node);
                }
                let len = r.len(object, t.shape);
                graph.object(&t.name, len);
                if let Some(fd) = r.fd(object, t.shape) {
                    owners.entry(fd).or_default().push(i as Node);
                }
            }
            None => {
                unknown += 1;
                graph.object("?", 0);
            }
        }
    }

    let node_of = |address: u64| addresses.binary_search(&address).ok().map(|i| i as Node);
    let (mut class_roots, mut module_roots, mut generator_roots) = (Vec::new(), Vec::new(), Vec::new());
    // Module name → whether its file is the application's (model/holders.rs, `Rank`).
    let mut application_modules: HashMap<String, bool> = HashMap::new();
    for (i, &object) in addresses.iter().enumerate() {
        // The type again: read from the cache of types, cheaper than keeping one per object.
        let Some(tp) = r.type_of(object).filter(|_| stopped_edges(&mut stopped, i, started, budget)) else {
            graph.edges([]);
            continue;
        };
        let refs = r.references(object, &tp);
        let mut edges = Vec::with_capacity(refs.len());
        for (to, label) in &refs {
            // An edge into a module is not followed: an import (`import sys`, then
            // `sys.modules`) holds nothing for the importer; the module's own globals are
            // roots of their own, ranked by its file.
            let Some(node) = node_of(*to).filter(|n| !modules.contains(n)) else { continue };
            let step = match label {
                Label::Attr(name) => graph.label(name, false).map(Step::Attr),
                Label::Key(Some(name)) => Some(graph.label(name, true).map_or(Step::OtherKey, Step::Key)),
                Label::Key(None) => Some(Step::OtherKey),
                Label::Index => Some(Step::Index),
                Label::Member => Some(Step::Member),
            };
            if let Some(step) = step {
                edges.push((node, step));
            }
        }
        graph.edges(edges);
        // Named roots: a module's globals, a class's attributes (not its dunders).
        let named = |refs: &[(u64, Label)]| {
            refs.iter()
                .filter_map(|(to, label)| match label {
                    Label::Attr(name) if !(name.starts_with("__") && name.ends_with("__")) => {
                        Some((name.clone(), node_of(*to)?))
                    }
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        match tp.shape {
            // A suspended (or running) coroutine's or generator's locals: an asyncio task
            // awaiting `reader.read()` holds its `writer` there, and the Task that holds the
            // coroutine is a C object whose references are not read: its locals are roots.
            Shape::Generator => {
                if let Some(frame) = r.generator_frame(object) {
                    generator_roots.extend(
                        frame_locals_of(&mut r, frame)
                            .into_iter()
                            .filter_map(|(name, to, rank)| Some((name, node_of(to)?, rank))),
                    );
                }
            }
            Shape::Module => {
                let mut attribute = |wanted: &str| {
                    refs.iter().find_map(|(to, label)| match label {
                        Label::Attr(name) if &**name == wanted => r.str_at(*to),
                        _ => None,
                    })
                };
                let module = attribute("__name__").as_deref().unwrap_or("?").to_string();
                // `__main__` is the application's, with a file or not (`python -c`); another
                // module without a file is built in: the interpreter's.
                let application = module == "__main__"
                    || attribute("__file__").is_some_and(|file| !is_python_library(&file));
                let rank = Rank::of(application, false);
                module_roots.extend(
                    named(&refs).into_iter().map(|(name, node)| (format!("{module}:{name}"), node, rank)),
                );
                application_modules.insert(module, application);
            }
            Shape::Type
                if r.memory
                    .u64(object.wrapping_add(layout.tp_flags))
                    .is_some_and(|f| f & TPFLAGS_HEAPTYPE != 0) =>
            {
                let module = refs.iter().find_map(|(to, label)| match label {
                    Label::Attr(name) if &**name == "__module__" => r.str_at(*to),
                    _ => None,
                });
                let class = r.memory.u64(object.wrapping_add(layout.ht_qualname)).and_then(|q| r.str_at(q));
                if let (Some(module), Some(class)) = (module, class) {
                    class_roots.extend(
                        named(&refs)
                            .into_iter()
                            .map(|(name, node)| (format!("{module}:{class}.{name}"), node, module.clone())),
                    );
                }
            }
            _ => {}
        }
    }
    // Class attributes first: `app:Handler._conns` names a set better than `app:Handler`
    // does, and both are roots at once. A class is its module's (a class of a module not
    // walked: the library's). A name bound to a module (`import sys`) is no root: the module's
    // globals are roots of their own.
    let ranked_classes = class_roots.into_iter().map(|(name, node, module)| {
        let application = application_modules.get(&*module).copied().unwrap_or(false);
        (name, node, Rank::of(application, false))
    });
    let locals = frame_locals(&mut r, interp)
        .into_iter()
        .filter_map(|(name, to, rank)| Some((name, node_of(to)?, rank)));
    for (name, node, rank) in ranked_classes.chain(module_roots).chain(locals).chain(generator_roots) {
        if !modules.contains(&node) {
            graph.root(&name, node, rank);
        }
    }
    read_done();
    let chains = graph.shortest_chains();
    Some(Walk {
        minor: layout.minor,
        graph,
        chains,
        census,
        owners,
        unknown,
        cut_short: r.cut_short,
        stopped,
        elapsed: started.elapsed(),
        paused_seconds: None,
        pause_error: None,
    })
}

/// Whether the walk begun at `started` has spent its time.
fn over(started: Instant, budget: &Budget) -> bool {
    started.elapsed() > budget.time
}

/// Said when a GC list does not lead back to its head.
const BROKE_OFF: &str = "a GC list broke off (the process changed it while read)";

/// Every object of the GC lists, and why the listing stopped before the end if it did. Each
/// generation's list is a ring of PyGC_Head through `_gc_next` (its low bits are flags during a
/// collection: masked), each object right after its head.
fn list_objects<M: Memory>(
    memory: &mut M,
    layout: &HeapLayout,
    interp: u64,
    budget: &Budget,
    started: Instant,
) -> Option<(Vec<u64>, Option<String>)> {
    let mut addresses = Vec::new();
    let mut stopped = None;
    let first = generations_start(memory, layout, interp);
    let heads = (0..layout.generations)
        .map(|i| first.wrapping_add(i * layout.generation_size))
        .chain([interp.wrapping_add(layout.interp_permanent)]);
    'lists: for head in heads {
        let mut gc = memory.u64(head)? & !3;
        while gc != head {
            if addresses.len() >= budget.max_objects {
                stopped = Some(format!("the object budget ({}) was reached", budget.max_objects));
                break 'lists;
            }
            if addresses.len() % 4096 == 0 && over(started, budget) {
                stopped = Some(format!("the time budget ({:?}) ran out listing objects", budget.time));
                break 'lists;
            }
            // A broken list leaves the others to read.
            let next = (gc != 0 && gc.is_multiple_of(8)).then(|| memory.u64(gc)).flatten();
            let Some(next) = next else {
                stopped.get_or_insert_with(|| BROKE_OFF.to_string());
                continue 'lists;
            };
            addresses.push(gc.wrapping_add(GC_HEAD));
            gc = next & !3;
        }
    }
    Some((addresses, stopped))
}

/// Whether object `i`'s references are still read (the time budget checked every 1024).
fn stopped_edges(stopped: &mut Option<String>, i: usize, started: Instant, budget: &Budget) -> bool {
    // The clock is looked at whatever stopped the listing (a list that broke off, the object
    // budget): the references are read within the time too.
    if i.is_multiple_of(1024)
        && !stopped.as_deref().is_some_and(|s| s.starts_with("the time budget"))
        && over(started, budget)
    {
        *stopped =
            Some(format!("the time budget ({:?}) ran out after the references of {i} objects", budget.time));
    }
    !stopped.as_deref().is_some_and(|s| s.starts_with("the time budget"))
}

/// The locals of every thread's frames (threads.head → `next`; `cframe->current_frame` →
/// `previous`; `localsplus[0..co_nlocalsplus]` named by `co_localsplusnames`), as roots
/// `qualname() local name`. Frames of generators and coroutines belong to them, not here.
fn frame_locals<M: Memory>(r: &mut Reader<M>, interp: u64) -> Vec<(String, u64, Rank)> {
    let l = r.layout;
    let mut out = Vec::new();
    let mut tstate = r.memory.u64(interp.wrapping_add(l.interp_threads_head)).unwrap_or(0);
    for _ in 0..MAX_THREADS {
        if tstate == 0 {
            break;
        }
        let cframe = match l.tstate_cframe {
            Some(at) => r.memory.u64(tstate.wrapping_add(at)).unwrap_or(0),
            None => tstate,
        };
        let mut frame = if cframe == 0 {
            0
        } else {
            r.memory.u64(cframe.wrapping_add(l.cframe_current_frame)).unwrap_or(0)
        };
        for _ in 0..MAX_FRAMES {
            if frame == 0 {
                break;
            }
            let owned_by_thread = l
                .frame_owner
                .is_none_or(|at| r.memory.u8(frame.wrapping_add(at)) == Some(FRAME_OWNED_BY_THREAD));
            if owned_by_thread {
                out.extend(frame_locals_of(r, frame));
            }
            frame = r.memory.u64(frame.wrapping_add(l.frame_previous)).unwrap_or(0);
        }
        tstate = r.memory.u64(tstate.wrapping_add(l.tstate_next)).unwrap_or(0);
    }
    out
}

/// The locals of one frame as roots `qualname() local name`, ranked by the code's file
/// (`co_filename`).
fn frame_locals_of<M: Memory>(r: &mut Reader<M>, frame: u64) -> Vec<(String, u64, Rank)> {
    let Some(locals) = r.frame_locals(frame) else { return Vec::new() };
    let Some(qualname) = locals.qualname else { return Vec::new() };
    let rank = Rank::of(locals.file.is_some_and(|f| !is_python_library(&f)), true);
    locals
        .values
        .into_iter()
        .map(|(name, value)| (format!("{qualname}() local {name}"), value, rank))
        .collect()
}
