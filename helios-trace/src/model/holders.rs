//! Holders (ARCHITECTURE.md, "Holders"): from a process's heap as a graph — objects with type
//! names and sizes, edges labelled as Python would reach them (`.attr`, `[key]`, `[i]`,
//! `{member}`) — and the objects that own a site's open descriptors, the shortest reference
//! chain from a named root (a module global `module:name`, a class attribute
//! `module:Class.attr`, a live frame's local) to each, grouped into lines such as
//! `30 held by app:Handler._ws_connections (set of 30) via .writer._transport._sock`.
//!
//! Pure: resolve/holders reads the graph out of a CPython process; this file knows nothing of
//! CPython. Memory per object is a few words — an object 8 bytes, its row start 4, each edge 8
//! (the target and its step packed in a `u32` each), the edge the search reached it by 4, labels
//! interned —
//! so a heap of a million objects fits the walk's budget (issue 15: 64 MiB).
use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::Serialize;

/// An object of the graph (its index).
pub(crate) type Node = u32;

/// How an edge is reached from the object it leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Step {
    /// `.name`: an attribute (instance dict, managed dict, slot, a C object's member).
    Attr(u32),
    /// `[name]`: a dict entry under a `str` key.
    Key(u32),
    /// `[…]`: a dict entry under another key, or past the label budget.
    OtherKey,
    /// `[i]`: an item of a list, tuple or deque (the index is not kept: chains group over it).
    Index,
    /// `{member}`: a member of a set or frozenset.
    Member,
}

/// Which roots name an object first. The application's own before a library's: the question
/// is what in the application keeps a leak alive, and a framework's connection loop holds
/// every connection it serves (aiohttp's `RequestHandler.start() local self`) whether the
/// application leaks it or not. Globals before locals: a module global or class attribute
/// holds until code lets go, a local only until its frame (or suspended coroutine) ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Rank {
    ApplicationGlobal,
    ApplicationLocal,
    LibraryGlobal,
    LibraryLocal,
}

impl Rank {
    const ALL: [Rank; 4] =
        [Rank::ApplicationGlobal, Rank::ApplicationLocal, Rank::LibraryGlobal, Rank::LibraryLocal];

    /// A root's rank from whether its code is the application's and whether it is a local.
    pub(crate) fn of(application: bool, local: bool) -> Rank {
        match (application, local) {
            (true, false) => Rank::ApplicationGlobal,
            (true, true) => Rank::ApplicationLocal,
            (false, false) => Rank::LibraryGlobal,
            (false, true) => Rank::LibraryLocal,
        }
    }
}

/// Distinct names kept for labels; past it, keys read as `[…]` (attributes keep theirs:
/// there are few) so a dict keyed by a million strings does not grow the table.
const MAX_KEY_LABELS: usize = 1 << 16;

/// Labels of any kind: a packed step keeps its label in the low 29 bits.
const MAX_LABELS: usize = 1 << 29;

impl Step {
    /// The step in a `u32`: the kind in the top 3 bits, the label in the others (label ids stay
    /// below `MAX_LABELS`: `HeapGraph::label`).
    fn pack(self) -> u32 {
        match self {
            Step::Attr(l) => {
                debug_assert!((l as usize) < MAX_LABELS);
                l
            }
            Step::Key(l) => {
                debug_assert!((l as usize) < MAX_LABELS);
                (1 << 29) | l
            }
            Step::OtherKey => 2 << 29,
            Step::Index => 3 << 29,
            Step::Member => 4 << 29,
        }
    }

    fn unpack(packed: u32) -> Step {
        let label = packed & (MAX_LABELS as u32 - 1);
        match packed >> 29 {
            0 => Step::Attr(label),
            1 => Step::Key(label),
            2 => Step::OtherKey,
            3 => Step::Index,
            _ => Step::Member,
        }
    }
}

/// An edge as kept: its target and its packed step (8 bytes, where `(Node, Step)` takes 12).
#[derive(Clone, Copy, Debug)]
struct Edge {
    to: Node,
    step: u32,
}

/// One object.
#[derive(Clone, Copy, Debug)]
struct Object {
    /// Index into `types`.
    type_name: u32,
    /// Items of a container (dict, set, list, tuple), else 0 (at most u32::MAX: 4 bytes
    /// an object less in a walk of millions).
    len: u32,
}

/// A heap as a graph, built object by object: every object first ([`HeapGraph::object`]), then
/// each object's edges in one call ([`HeapGraph::edges`]), in the order the objects were added.
#[derive(Debug, Default)]
pub(crate) struct HeapGraph {
    objects: Vec<Object>,
    types: Vec<Box<str>>,
    type_ids: HashMap<Box<str>, u32>,
    labels: Vec<Box<str>>,
    label_ids: HashMap<Box<str>, u32>,
    /// Edges of object i: `targets[starts[i]..starts[i + 1]]` (compressed rows).
    starts: Vec<u32>,
    targets: Vec<Edge>,
    /// Named roots: the first of the best rank that reaches an object names it.
    roots: Vec<(Box<str>, Node, Rank)>,
}

impl HeapGraph {
    pub(crate) fn new() -> HeapGraph {
        HeapGraph { starts: vec![0], ..HeapGraph::default() }
    }

    /// Add an object; its node is the count of objects added before it.
    pub(crate) fn object(&mut self, type_name: &str, len: u64) -> Node {
        let type_name = match self.type_ids.get(type_name) {
            Some(id) => *id,
            None => {
                let id = self.types.len() as u32;
                self.types.push(type_name.into());
                self.type_ids.insert(type_name.into(), id);
                id
            }
        };
        self.objects.push(Object { type_name, len: u32::try_from(len).unwrap_or(u32::MAX) });
        (self.objects.len() - 1) as Node
    }

    pub(crate) fn len(&self) -> usize {
        self.objects.len()
    }

    /// The label id of a name (attributes always get one; keys only while there is room).
    pub(crate) fn label(&mut self, name: &str, key: bool) -> Option<u32> {
        if let Some(id) = self.label_ids.get(name) {
            return Some(*id);
        }
        if (key && self.labels.len() >= MAX_KEY_LABELS) || self.labels.len() >= MAX_LABELS {
            return None;
        }
        let id = self.labels.len() as u32;
        self.labels.push(name.into());
        self.label_ids.insert(name.into(), id);
        Some(id)
    }

    /// The edges of the next object whose edges were not given yet (objects without edges get
    /// an empty call). Edges to nodes not in the graph are the caller's to drop.
    pub(crate) fn edges(&mut self, edges: impl IntoIterator<Item = (Node, Step)>) {
        self.targets.extend(edges.into_iter().map(|(to, step)| Edge { to, step: step.pack() }));
        self.starts.push(self.targets.len() as u32);
    }

    /// A named root (e.g. `app:Handler._conns`); earlier roots of a rank win ties.
    pub(crate) fn root(&mut self, name: &str, node: Node, rank: Rank) {
        self.roots.push((name.into(), node, rank));
    }

    pub(crate) fn type_name(&self, node: Node) -> &str {
        &self.types[self.objects[node as usize].type_name as usize]
    }

    fn step_text(&self, step: Step) -> String {
        match step {
            Step::Attr(l) => format!(".{}", self.labels[l as usize]),
            Step::Key(l) => format!("[{:?}]", self.labels[l as usize]),
            Step::OtherKey => "[…]".into(),
            Step::Index => "[]".into(),
            Step::Member => "{}".into(),
        }
    }

    /// Breadth-first from every root of a rank at once, rank by rank ([`Rank`]), each search
    /// going only where the ranks before it did not: for each object, the edge it was first
    /// reached by. So an object's chain starts at a root of the best rank that reaches it, and
    /// is a shortest one from the roots of that rank. Only the edge's index is kept (4 bytes an
    /// object): its step is the edge's, its parent the object whose row holds it, and a root's
    /// name the first root of its node, which is the one that seeded it.
    pub(crate) fn shortest_chains(&self) -> Chains {
        let n = self.objects.len();
        let mut via: Vec<u32> = vec![UNREACHED; n];
        let mut root_of = HashMap::new();
        let mut queue = VecDeque::new();
        for rank in Rank::ALL {
            for (i, (_, node, _)) in self.roots.iter().enumerate().filter(|(_, r)| r.2 == rank) {
                let Some(slot) = via.get_mut(*node as usize) else { continue };
                if *slot == UNREACHED {
                    *slot = ROOT;
                    root_of.insert(*node, i as u32);
                    queue.push_back(*node);
                }
            }
            while let Some(node) = queue.pop_front() {
                let i = node as usize;
                let (Some(start), Some(end)) = (self.starts.get(i), self.starts.get(i + 1)) else { continue };
                for e in *start..*end {
                    let to = self.targets[e as usize].to;
                    if let Some(slot) = via.get_mut(to as usize)
                        && *slot == UNREACHED
                    {
                        *slot = e;
                        queue.push_back(to);
                    }
                }
            }
        }
        Chains { via, root_of }
    }

    /// The root and the steps from it to `node` (None: no root reaches it). O(depth × log n).
    pub(crate) fn chain(&self, chains: &Chains, node: Node) -> Option<(u32, Vec<Step>)> {
        let mut steps = Vec::new();
        let mut at = node;
        loop {
            match *chains.via.get(at as usize)? {
                UNREACHED => return None,
                ROOT => {
                    steps.reverse();
                    return Some((*chains.root_of.get(&at)?, steps));
                }
                e => {
                    let edge = self.targets.get(e as usize)?;
                    steps.push(Step::unpack(edge.step));
                    // The row holding edge e: the last object whose edges start at or before it.
                    at = (self.starts.partition_point(|s| *s <= e) - 1) as Node;
                }
            }
            // A chain is never longer than the objects: a corrupt table cannot loop us.
            if steps.len() > chains.via.len() {
                return None;
            }
        }
    }

    /// Group the chains to these objects, one object per descriptor (None: no Python object
    /// owns it), into holder lines, widest first.
    pub(crate) fn holders(&self, chains: &Chains, owners: &[Option<Node>]) -> Vec<Holder> {
        struct Group {
            count: u64,
            root: u32,
            steps: Vec<Step>,
            /// Whether every chain of the group took the same step at each position.
            same: Vec<bool>,
        }
        // Grouped by the root's name: roots of one name (the same local of many suspended
        // coroutines) are one line.
        let mut groups: BTreeMap<(&str, Vec<String>), Group> = BTreeMap::new();
        let (mut no_owner, mut unreachable) = (0u64, 0u64);
        for owner in owners {
            let Some(node) = owner else {
                no_owner += 1;
                continue;
            };
            let Some((root, steps)) = self.chain(chains, *node) else {
                unreachable += 1;
                continue;
            };
            let key: Vec<String> = steps.iter().map(|s| self.step_text(normal(*s))).collect();
            let group = groups.entry((&self.roots[root as usize].0, key)).or_insert_with(|| Group {
                count: 0,
                root,
                same: vec![true; steps.len()],
                steps: steps.clone(),
            });
            group.count += 1;
            for (i, s) in steps.iter().enumerate() {
                group.same[i] &= group.steps[i] == *s;
            }
        }
        let mut out: Vec<Holder> = groups
            .into_values()
            .map(|g| {
                let (name, root_node, _) = &self.roots[g.root as usize];
                let container = self.type_name(*root_node).to_string();
                let len = u64::from(self.objects[*root_node as usize].len);
                // The step into a container rooted by name is what "(set of 30)" already says.
                let skip = usize::from(
                    g.steps.first().is_some_and(|s| matches!(s, Step::Index | Step::Member | Step::OtherKey))
                        || (g.steps.first().is_some_and(|s| matches!(s, Step::Key(_))) && !g.same[0]),
                );
                let path: String = g
                    .steps
                    .iter()
                    .zip(&g.same)
                    .skip(skip)
                    .map(|(s, same)| self.step_text(if *same { *s } else { normal(*s) }))
                    .collect();
                Holder {
                    count: g.count,
                    root: Some(name.to_string()),
                    path: Some(path),
                    container_size: is_container(&container).then_some(len),
                    container: Some(container),
                    note: None,
                }
            })
            .collect();
        out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.root.cmp(&b.root)));
        for (count, note) in [(unreachable, NO_ROOT), (no_owner, NO_PYTHON_OWNER)] {
            if count > 0 {
                out.push(Holder {
                    count,
                    root: None,
                    path: None,
                    container: None,
                    container_size: None,
                    note: Some(note),
                });
            }
        }
        out
    }
}

/// A dict's keys, and a list's indices, vary from chain to chain: grouped over.
fn normal(step: Step) -> Step {
    match step {
        Step::Key(_) => Step::OtherKey,
        other => other,
    }
}

/// Types whose size is their item count.
pub(crate) fn is_container(type_name: &str) -> bool {
    matches!(
        type_name,
        "dict"
            | "collections.defaultdict"
            | "collections.OrderedDict"
            | "set"
            | "frozenset"
            | "list"
            | "tuple"
            | "collections.deque"
    )
}

pub(crate) const NO_PYTHON_OWNER: &str = "no Python owner";
pub(crate) const NO_ROOT: &str = "no chain from a named root";

/// `Chains::via` of an object no root reaches, and of a root.
const UNREACHED: u32 = u32::MAX;
const ROOT: u32 = u32::MAX - 1;

/// The result of [`HeapGraph::shortest_chains`].
pub(crate) struct Chains {
    /// Per object: the index (in `HeapGraph::targets`) of the edge it was reached by, or
    /// [`ROOT`], or [`UNREACHED`].
    via: Vec<u32>,
    /// The root index of each object that starts chains.
    root_of: HashMap<Node, u32>,
}

impl Chains {
    /// Whether a root reaches `node`.
    pub(crate) fn reaches(&self, node: Node) -> bool {
        self.via.get(node as usize).is_some_and(|v| *v != UNREACHED)
    }
}

/// One holder line of a site (the `holders` of a site in the JSON report).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Holder {
    /// Descriptors of the site held this way.
    pub(crate) count: u64,
    /// The named root, e.g. `app:UnitTrackingWSHandler._ws_connections`; null with a note.
    pub(crate) root: Option<String>,
    /// The attribute and item steps from the root to the descriptor's object, e.g.
    /// `.writer._transport._sock` (the step into a root container is left out).
    pub(crate) path: Option<String>,
    /// The root object's type, and its item count when it is a container.
    pub(crate) container: Option<String>,
    pub(crate) container_size: Option<u64>,
    /// Why there is no root: "no Python owner" (no Python object owns the descriptor: a leak
    /// in C code, or the object was collected), "no chain from a named root" (garbage not
    /// collected yet, or held from C only), or what the walk did not cover.
    pub(crate) note: Option<&'static str>,
}

impl Holder {
    /// `30 held by app:H._conns (set of 30) via .writer._sock`, or `2 no Python owner`.
    pub(crate) fn line(&self) -> String {
        match (&self.root, self.note) {
            (Some(root), _) => {
                let container = match (&self.container, self.container_size) {
                    (Some(t), Some(n)) => format!(" ({t} of {n})"),
                    (Some(t), None) => format!(" ({t})"),
                    _ => String::new(),
                };
                let via = match self.path.as_deref() {
                    Some(p) if !p.is_empty() => format!(" via {p}"),
                    _ => String::new(),
                };
                format!("{} held by {root}{container}{via}", self.count)
            }
            (None, note) => format!("{} {}", self.count, note.unwrap_or("unknown")),
        }
    }
}

/// The lines of one site in several processes as one list (serve's `/sites` is per site): the
/// same holder (root, path, container) adds its counts, its container size is the largest seen;
/// widest first, notes last.
pub(crate) fn merge(into: &mut Vec<Holder>, more: Vec<Holder>) {
    for holder in more {
        match into.iter_mut().find(|h| {
            (&h.root, &h.path, &h.container, h.note)
                == (&holder.root, &holder.path, &holder.container, holder.note)
        }) {
            Some(same) => {
                same.count += holder.count;
                same.container_size = same.container_size.max(holder.container_size);
            }
            None => into.push(holder),
        }
    }
    into.sort_by(|a, b| {
        (a.root.is_none(), std::cmp::Reverse(a.count), &a.root).cmp(&(
            b.root.is_none(),
            std::cmp::Reverse(b.count),
            &b.root,
        ))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_lines_add_up_per_holder_and_keep_notes_last() {
        let line = |count, root: Option<&str>, size| Holder {
            count,
            root: root.map(str::to_string),
            path: root.map(|_| ".writer._transport._sock".to_string()),
            container: root.map(|_| "set".to_string()),
            container_size: size,
            note: if root.is_none() { Some(NO_PYTHON_OWNER) } else { None },
        };
        let mut lines = vec![line(3, Some("app:H._conns"), Some(3)), line(1, None, None)];
        merge(&mut lines, vec![line(5, Some("app:H._conns"), Some(7)), line(2, Some("app:_cache"), Some(2))]);
        merge(&mut lines, vec![line(4, None, None)]);
        let shown: Vec<String> = lines.iter().map(Holder::line).collect();
        assert_eq!(
            shown,
            [
                "8 held by app:H._conns (set of 7) via .writer._transport._sock",
                "2 held by app:_cache (set of 2) via .writer._transport._sock",
                "5 no Python owner",
            ]
        );
    }

    /// The postmortem's shape: module → class → class dict → set → handler → writer →
    /// transport → socket, for `n` sockets, plus a socket nothing names.
    fn postmortem(n: usize) -> (HeapGraph, Vec<Option<Node>>) {
        let mut g = HeapGraph::new();
        let module = g.object("module", 0);
        let class = g.object("type", 0);
        let set = g.object("set", n as u64);
        let mut handlers = Vec::new();
        for _ in 0..n {
            let h = g.object("Handler", 0);
            let w = g.object("StreamWriter", 0);
            let t = g.object("_SelectorSocketTransport", 0);
            let s = g.object("socket", 0);
            handlers.push([h, w, t, s]);
        }
        let stray = g.object("socket", 0);
        let (writer, transport, sock, conns, handler_attr) = (
            g.label("writer", false).unwrap(),
            g.label("_transport", false).unwrap(),
            g.label("_sock", false).unwrap(),
            g.label("_ws_connections", false).unwrap(),
            g.label("Handler", false).unwrap(),
        );
        g.edges([(class, Step::Attr(handler_attr))]);
        g.edges([(set, Step::Attr(conns))]);
        g.edges(handlers.iter().map(|h| (h[0], Step::Member)).collect::<Vec<_>>());
        for h in &handlers {
            g.edges([(h[1], Step::Attr(writer))]);
            g.edges([(h[2], Step::Attr(transport))]);
            g.edges([(h[3], Step::Attr(sock))]);
            g.edges([]);
        }
        g.edges([]);
        g.root("app:Handler", class, Rank::ApplicationGlobal);
        g.root("app:Handler._ws_connections", set, Rank::ApplicationGlobal);
        g.root("app:module", module, Rank::ApplicationGlobal);
        let mut owners: Vec<Option<Node>> = handlers.iter().map(|h| Some(h[3])).collect();
        owners.push(Some(stray));
        owners.push(None);
        (g, owners)
    }

    #[test]
    fn the_postmortem_reads_as_one_line() {
        let (g, owners) = postmortem(30);
        let holders = g.holders(&g.shortest_chains(), &owners);
        assert_eq!(holders.len(), 3);
        // The class attribute is a root of its own: shorter than through app:Handler.
        assert_eq!(
            holders[0].line(),
            "30 held by app:Handler._ws_connections (set of 30) via .writer._transport._sock"
        );
        assert_eq!(holders[1].line(), "1 no chain from a named root");
        assert_eq!(holders[2].line(), "1 no Python owner");
    }

    #[test]
    fn dict_keys_group_and_a_shared_key_is_kept() {
        let mut g = HeapGraph::new();
        let d = g.object("dict", 2);
        let cfg = g.object("dict", 1);
        let a = g.object("socket", 0);
        let b = g.object("socket", 0);
        let c = g.object("socket", 0);
        let (ka, kb, db) =
            (g.label("a", true).unwrap(), g.label("b", true).unwrap(), g.label("db", true).unwrap());
        g.edges([(a, Step::Key(ka)), (b, Step::Key(kb))]);
        g.edges([(c, Step::Key(db))]);
        g.edges([]);
        g.edges([]);
        g.edges([]);
        g.root("app:conns", d, Rank::ApplicationGlobal);
        g.root("app:CONFIG", cfg, Rank::ApplicationGlobal);
        let h = g.holders(&g.shortest_chains(), &[Some(a), Some(b), Some(c)]);
        assert_eq!(h[0].line(), "2 held by app:conns (dict of 2)");
        assert_eq!(h[1].line(), "1 held by app:CONFIG (dict of 1) via [\"db\"]");
        assert_eq!(h[1].container_size, Some(1));
    }

    /// Tornado's shape: the framework's suspended coroutine holds the connection's stream in
    /// one step, a library global too, the application's handler in two, its module set in
    /// three. The application's global names it, then its local, then a library's global.
    #[test]
    fn the_applications_roots_name_a_holder_before_a_librarys() {
        let line = |ranks: &[Rank]| {
            let mut g = HeapGraph::new();
            let set = g.object("set", 1);
            let handler = g.object("Handler", 0);
            let stream = g.object("IOStream", 0);
            let sock = g.object("socket", 0);
            let (ws, socket) = (g.label("ws", false).unwrap(), g.label("socket", false).unwrap());
            g.edges([(handler, Step::Member)]);
            g.edges([(stream, Step::Attr(ws))]);
            g.edges([(sock, Step::Attr(socket))]);
            g.edges([]);
            let roots = [
                ("_accept_connection() local self", stream),
                ("tornado:_registry", stream),
                ("on_message() local self", handler),
                ("__main__:_ws_connections", set),
            ];
            for ((name, node), rank) in roots.iter().zip(ranks) {
                g.root(name, *node, *rank);
            }
            g.holders(&g.shortest_chains(), &[Some(sock)])[0].line()
        };
        use Rank::*;
        let ranks = [LibraryLocal, LibraryGlobal, ApplicationLocal, ApplicationGlobal];
        assert_eq!(line(&ranks), "1 held by __main__:_ws_connections (set of 1) via .ws.socket");
        assert_eq!(line(&ranks[..3]), "1 held by on_message() local self (Handler) via .ws.socket");
        assert_eq!(line(&ranks[..2]), "1 held by tornado:_registry (IOStream) via .socket");
        assert_eq!(line(&ranks[..1]), "1 held by _accept_connection() local self (IOStream) via .socket");
        // One rank for all: the shortest chain, as before ranks.
        assert_eq!(
            line(&[LibraryLocal; 4]),
            "1 held by _accept_connection() local self (IOStream) via .socket"
        );
    }

    #[test]
    fn a_packed_step_unpacks_to_itself() {
        let last = MAX_LABELS as u32 - 1;
        for step in [
            Step::Attr(0),
            Step::Attr(last),
            Step::Key(7),
            Step::Key(last),
            Step::OtherKey,
            Step::Index,
            Step::Member,
        ] {
            assert_eq!(Step::unpack(step.pack()), step);
        }
    }

    #[test]
    fn a_root_that_is_the_owner_has_an_empty_path() {
        let mut g = HeapGraph::new();
        let s = g.object("socket", 0);
        g.edges([]);
        g.root("__main__:sock", s, Rank::ApplicationGlobal);
        let h = g.holders(&g.shortest_chains(), &[Some(s)]);
        assert_eq!(h[0].line(), "1 held by __main__:sock (socket)");
        assert_eq!(h[0].path.as_deref(), Some(""));
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
            /// On any graph: every chain found is a real path from its root, which is of the
            /// best rank that reaches the object, no shorter path exists from any root of that
            /// rank (BFS distance), and every descriptor is counted once.
            #[test]
            fn chains_are_real_and_shortest(
                n in 1usize..40,
                edges in prop::collection::vec((0usize..40, 0usize..40), 0..120),
                roots in prop::collection::vec((0usize..40, 0usize..4), 0..6),
                owners in prop::collection::vec(prop::option::of(0usize..40), 0..20),
            ) {
                let mut g = HeapGraph::new();
                for _ in 0..n { g.object("x", 0); }
                // Each edge its own label, so a chain's steps say which edges it took.
                let edges: Vec<(usize, usize)> = edges.into_iter().filter(|(a, b)| *a < n && *b < n).collect();
                let mut adj = vec![Vec::new(); n];
                for (k, (a, b)) in edges.iter().enumerate() {
                    let label = g.label(&format!("e{k}"), false).unwrap();
                    adj[*a].push((*b as Node, label));
                }
                for out in &adj { g.edges(out.iter().map(|(t, l)| (*t, Step::Attr(*l))).collect::<Vec<_>>()); }
                let roots: Vec<(usize, Rank)> =
                    roots.into_iter().filter(|r| r.0 < n).map(|(r, k)| (r, Rank::ALL[k])).collect();
                for (r, rank) in &roots { g.root("r", *r as Node, *rank); }
                // Reference distances: BFS over adj from the roots of each rank.
                let distances = |rank: Rank| {
                    let mut dist = vec![usize::MAX; n];
                    let mut q = VecDeque::new();
                    for (r, _) in roots.iter().filter(|r| r.1 == rank) {
                        if dist[*r] == usize::MAX { dist[*r] = 0; q.push_back(*r); }
                    }
                    while let Some(x) = q.pop_front() {
                        for (y, _) in &adj[x] { let y = *y as usize; if dist[y] == usize::MAX { dist[y] = dist[x] + 1; q.push_back(y); } }
                    }
                    dist
                };
                let by_rank: Vec<Vec<usize>> = Rank::ALL.iter().map(|r| distances(*r)).collect();
                let chains = g.shortest_chains();
                for node in 0..n {
                    // The best rank reaching the node, and the distance from its roots.
                    let best = by_rank
                        .iter()
                        .zip(Rank::ALL)
                        .find_map(|(d, rank)| (d[node] != usize::MAX).then_some((rank, d[node])));
                    match g.chain(&chains, node as Node) {
                        None => prop_assert_eq!(best, None),
                        Some((root, steps)) => {
                            let (start, rank) = roots[root as usize];
                            prop_assert_eq!(Some((rank, steps.len())), best);
                            // The steps are edges, each from where the previous one ended,
                            // from the root to the node.
                            let mut at = start;
                            for step in steps {
                                let Step::Attr(label) = step else { panic!("{step:?}") };
                                let (from, to) = edges[label as usize];
                                prop_assert_eq!(from, at);
                                at = to;
                            }
                            prop_assert_eq!(at, node);
                        }
                    }
                }
                let owners: Vec<Option<Node>> =
                    owners.into_iter().map(|o| o.filter(|o| *o < n).map(|o| o as Node)).collect();
                let total: u64 = g.holders(&chains, &owners).iter().map(|h| h.count).sum();
                prop_assert_eq!(total, owners.len() as u64);
            }
        }
    }
}
