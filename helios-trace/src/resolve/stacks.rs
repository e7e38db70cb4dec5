//! From a captured stack to a call site: the stack registry turns (process, captured stack)
//! into a site (its id and frames: model/frame.rs) and remembers each site's frames.
//!
//! A user stack arrives as registers and a window of stack bytes (`--stacks dwarf`, unwound
//! here with the modules' CFI: resolve/unwind.rs), as the chain the kernel walked with the
//! rules learned from such windows (resolve/chains.rs), or as a frame-pointer stack id in the
//! kernel's stack map (`--stacks fp`). The addresses are named against the process's image captured at its first sight
//! (resolve/modules) with blazesym (resolve/symbolize.rs).
use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::Arc,
};

use foldhash::{HashMap, HashMapExt as _, HashSet, HashSetExt as _};
use helios_trace_common::{
    ChainKey, ChainRules, FirstFrameHint, FrameRule, FrameRuleKey, MAX_CACHED_CHAIN_FRAMES, MAX_CHAIN_FRAMES,
    user_stack_flags,
};

use crate::{
    model::{
        event::{CapturedStack, StackIds, StackSample, WalkedChain},
        fd::SiteId,
        frame::{self, Frame, Language, SiteOrigin, site_id, through_listener},
    },
    resolve::{
        cache::{BoundedLru, Weight},
        chains::{self, FrameRegs},
        goroutines::{self, SiteCreators},
        modules::{
            cache::ModuleCache,
            elf::LoadedModule,
            files::{ModuleFiles, ProcessImage},
            maps::FileKey,
        },
        perfmap::{JitSymbol, PerfMap},
        symbolize::{Symbol, Symbolizer},
        unwind::{ProcessUnwinder, UnwindCache, Unwound},
    },
};

/// Cached bounds: a process's known chains; the symbols of module addresses, by their bytes
/// (least recently used go first).
const MAX_CHAINS_PER_PROCESS: usize = 16 * 1024;
const MAX_SYMBOL_BYTES: usize = 32 << 20;
/// Re-reading a process's maps because an address was in none of its modules (a library
/// loaded since): at most this often per image, so JIT code cannot make it a per-event cost.
const MAX_RECAPTURES: u32 = 16;
/// Parsed modules kept (a node runs a few hundred distinct libraries), and their total size.
const MAX_MODULES: usize = 512;
const MAX_MODULE_BYTES: u64 = 4 << 30;
/// Frame rules taught to the kernel per process image at most (each frame of each distinct
/// chain; a busy service has a few thousand).
const MAX_TAUGHT_PER_PROCESS: usize = 16 * 1024;
/// Chains taught with their rules per process image at most (the kernel's map holds
/// `CHAIN_RULE_ENTRIES` of all processes', and lets none go): a chain past them is walked with
/// a rule lookup per frame. A service opens most of its descriptors through a few.
const MAX_TAUGHT_CHAINS_PER_PROCESS: usize = 64;
/// Sites of stacks in no known module kept at once (their frames are bare addresses).
const MAX_UNRESOLVED_SITES: usize = 1024;
/// How long after a look for a process's perf map that found none the next may be (most
/// processes have none; a JVM's is written when someone runs `jcmd PID Compiler.perfmap`).
const PERF_MAP_LOOK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// A chain of `tgid`'s image `exec_ns` as `CHAIN_RULES` keeps it: keyed by its first two
/// addresses, its first `MAX_CACHED_CHAIN_FRAMES` addresses with the rule of each (the kernel
/// looks the rules of any deeper ones up), as teaching `generation`. None for a chain of fewer
/// than two frames, which the kernel never looks for.
fn taught_chain(
    tgid: u32,
    exec_ns: u64,
    frames: &[FrameRegs],
    rules: &[FrameRule],
    generation: u64,
) -> Option<(ChainKey, ChainRules)> {
    let ([first, caller, ..], true) = (frames, frames.len() == rules.len()) else { return None };
    let key = ChainKey { tgid, reserved: 0, exec_ns, pc: first.pc, caller: caller.pc };
    let depth = frames.len().min(MAX_CACHED_CHAIN_FRAMES);
    let mut chain = ChainRules {
        generation,
        key,
        depth: depth as u32,
        reserved: 0,
        addresses: [0; MAX_CACHED_CHAIN_FRAMES],
        rules: [FrameRule::default(); MAX_CACHED_CHAIN_FRAMES],
    };
    for (i, (frame, rule)) in frames.iter().zip(rules).take(depth).enumerate() {
        (chain.addresses[i], chain.rules[i]) = (frame.pc, *rule);
    }
    Some((key, chain))
}

impl Weight for Arc<[Symbol]> {
    fn weight(&self) -> usize {
        let text = |s: &Symbol| s.name.len() + s.file.as_deref().map_or(0, str::len);
        size_of::<Symbol>() * self.len() + self.iter().map(text).sum::<usize>()
    }
}

/// What is known of one process's stacks.
#[derive(Default)]
struct ProcessStacks {
    image: Option<ProcessImage>,
    unwinder: Option<ProcessUnwinder>,
    recaptures: u32,
    /// Frame-pointer stacks: user stack id → site. Stack ids are never reused for another
    /// stack (the kernel program does not pass BPF_F_REUSE_STACKID), so an id names one stack
    /// of one image.
    by_stack_id: HashMap<Option<i32>, SiteId>,
    /// Unwound stacks: their addresses → their site. Looked up for every event: a hit hashes
    /// the chain once and allocates nothing. Seeded (foldhash), as a chain's addresses are the
    /// traced process's to choose: a fixed hash let a process make its chains collide.
    by_chain: HashMap<Box<[u64]>, SiteId>,
    /// The JIT runtime's perf map (resolve/perfmap.rs), once found.
    perf_map: Option<PerfMap>,
    /// When it may be looked for (or at) again.
    perf_map_next_look: Option<std::time::Instant>,
    /// Its `PerfMap::generation` when this process's stacks were last resolved with it.
    perf_map_generation: u32,
    /// The image's exec record time, as the kernel keys its rules (0: exec'd before tracing
    /// began, or forked).
    image_ns: u64,
    /// The rules taught to the kernel for this image.
    taught: HashSet<FrameRuleKey>,
    /// The chains taught with their rules for this image.
    taught_chains: HashSet<ChainKey>,
    /// How far the chains learned through each first frame (by its address) read the stack,
    /// the least of them (`FirstFrameHint::stack_bytes`).
    extents: HashMap<u64, u32>,
}

impl ProcessStacks {
    /// How many bytes of the stack to copy at once for the chains through the first frame at
    /// `address`, now that one reading `stack_bytes` was learned: the least any of them reads
    /// (a chain that reads none, ending at its first frame, aside), so that no chain known
    /// copies more than it needs; a deeper one copies the rest by the page, as before. The
    /// most would make every CPython call through libc's `openat` copy as far as the deepest
    /// import's chain read, kilobytes more than a call in the running code needs.
    fn narrowest_extent(&mut self, address: u64, stack_bytes: u64) -> u32 {
        let bytes = u32::try_from(stack_bytes).unwrap_or(u32::MAX);
        let narrowest = self.extents.entry(address).or_insert(bytes);
        if bytes > 0 && (bytes < *narrowest || *narrowest == 0) {
            *narrowest = bytes;
        }
        *narrowest
    }

    /// Whether a chain of this key may be taught: one taught already (the last taught is kept),
    /// or room for another.
    fn may_teach_chain(&mut self, key: ChainKey) -> bool {
        if self.taught_chains.len() < MAX_TAUGHT_CHAINS_PER_PROCESS {
            self.taught_chains.insert(key);
        }
        self.taught_chains.contains(&key)
    }
}

impl ProcessStacks {
    fn chain(&self, addresses: &[u64]) -> Option<SiteId> {
        self.by_chain.get(addresses).copied()
    }

    /// Forget which site each stack seen was: its frames are named again at its next record
    /// (a perf map names JIT code it did not before).
    fn forget_resolved_stacks(&mut self) {
        self.by_chain.clear();
        self.by_stack_id.clear();
    }

    /// `forget_resolved_stacks` when the perf map read new lines since the last call; whether
    /// it did.
    fn forget_if_named_anew(&mut self) -> bool {
        let Some(generation) = self.perf_map.as_ref().map(PerfMap::generation) else { return false };
        if generation == self.perf_map_generation {
            return false;
        }
        self.perf_map_generation = generation;
        self.forget_resolved_stacks();
        true
    }

    /// Look for the perf map (none yet) or read what was appended to it, at most once a
    /// `PERF_MAP_LOOK_INTERVAL`.
    fn look_at_perf_map_if_due(&mut self, proc_root: &Path, tgid: u32) {
        look_at_perf_map_if_due(&mut self.perf_map, &mut self.perf_map_next_look, proc_root, tgid);
    }

    /// Remember a chain's site; a chain already known (its site was forgotten and made again)
    /// takes the new one.
    fn remember_chain(&mut self, addresses: Vec<u64>, site: SiteId) {
        if self.by_chain.len() >= MAX_CHAINS_PER_PROCESS && !self.by_chain.contains_key(&addresses[..]) {
            self.by_chain.clear();
        }
        self.by_chain.insert(addresses.into_boxed_slice(), site);
    }
}

/// Counters of the stack pipeline, for the report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct StackCounts {
    /// Unwound stacks that went on past the copied window (`--stack-window`).
    pub(crate) truncated: u64,
    /// Distinct user stacks in none of the process's modules (its maps were never read).
    pub(crate) unresolved: u64,
    /// New call sites not remembered because `max_sites` were (their descriptors are
    /// tracked under `SiteId::SiteLimit`).
    pub(crate) sites_dropped: u64,
    /// Stacks that came as chains the kernel walked with learned rules.
    pub(crate) chains_learned: u64,
    /// Of the walked chains (learned or, in shadow mode, checked), those whose rules past the
    /// first frame all came from a taught chain.
    pub(crate) chains_cached: u64,
    /// `--learned-chains shadow`: windows whose unwinding was compared with the kernel's
    /// chain, and those where the two differed.
    pub(crate) chains_checked: u64,
    pub(crate) chains_mismatched: u64,
}

/// Turns (process, captured stack) into sites and remembers each site's frames.
pub(crate) struct StackRegistry {
    proc_root: PathBuf,
    processes: HashMap<u32, ProcessStacks>,
    /// Processes with code in no file that no perf map named: the only ones whose map is
    /// looked at again (`look_at_perf_map_if_due`), so the other records pay one lookup in an
    /// empty or small set.
    unnamed_jit: HashSet<u32>,
    files: ModuleFiles,
    modules: ModuleCache,
    symbolizer: Symbolizer,
    /// Symbols by module (the file it was parsed from) and address in it.
    symbols: BoundedLru<(FileKey, u64), Arc<[Symbol]>>,
    frames: HashMap<SiteId, Arc<[Frame]>>,
    /// The goroutine creator of each site of a Go program, where it is one (goroutines.rs).
    creators: SiteCreators,
    /// Sites of sockets a runtime's loop accepted, one per listener site (`accepted_through`):
    /// the listener's telling frame.
    listeners: HashMap<SiteId, Frame>,
    /// Sites of unresolved stacks, oldest first (bounded: one per short-lived process).
    unresolved: VecDeque<SiteId>,
    unwind_cache: Box<UnwindCache>,
    counts: StackCounts,
    /// At most this many sites' frames are kept (`--max-stacks`): the first ones stay, as
    /// the oldest open descriptors do.
    max_sites: usize,
    /// Where the rules of unwound chains are taught (`--learned-chains`); None: not learned.
    teacher: Option<Box<dyn Teach>>,
    /// The last `ChainRules::generation` taught (never the same twice).
    chain_generation: u64,
}

/// Where learned unwind rules go: the kernel's `FRAME_RULES` and `CHAIN_RULES` (sys/loader.rs,
/// `LearnedRules`), or a test's list. A rule is taught the moment it is learned, in the middle of the record
/// that taught it, not at the end of the drain: the first window of a chain is followed by its
/// symbolization, which may take tens of milliseconds the first time a library's DWARF is
/// read, and meanwhile every call through that chain would send a 9 KiB window instead of a
/// 0.6 KiB chain — the difference between a ring buffer that holds ~1,700 calls and one that
/// holds ~27,000 (BENCHMARKS.md, "The ring's emptier").
pub(crate) trait Teach: Send {
    /// Teach the kernel a rule (Some), or take it back (None). A rule that cannot be taught
    /// only leaves its chain's calls sending windows: slower, not wrong.
    fn teach(&mut self, key: FrameRuleKey, rule: Option<FrameRule>);
    /// Teach the kernel a chain with the rules of its frames (Some), or take it back (None).
    /// One not taught leaves its calls looking each frame's rule up: slower, not wrong.
    fn teach_chain(&mut self, key: ChainKey, chain: Option<&ChainRules>);
    /// Tell the kernel a first frame's rule and how far the chains through it read the stack.
    /// A hint in a slot another frame may take (`first_frame_hint_slot`); one lost leaves the
    /// walk looking the frame's rule up and copying the stack by the page: slower, not wrong.
    /// Not taken back at an exec or exit: its key holds the image (its exec time), and a hint
    /// read for another is harmless (`FirstFrameHint`).
    fn teach_hint(&mut self, hint: FirstFrameHint);
}

impl StackRegistry {
    pub(crate) fn new(proc_root: impl Into<PathBuf>) -> StackRegistry {
        let proc_root = proc_root.into();
        StackRegistry {
            symbolizer: Symbolizer::new(),
            proc_root,
            processes: HashMap::new(),
            unnamed_jit: HashSet::new(),
            files: ModuleFiles::default(),
            modules: ModuleCache::new(MAX_MODULES, MAX_MODULE_BYTES),
            symbols: BoundedLru::new(MAX_SYMBOL_BYTES),
            frames: HashMap::new(),
            creators: SiteCreators::default(),
            listeners: HashMap::new(),
            unresolved: VecDeque::new(),
            unwind_cache: Box::new(UnwindCache::new()),
            counts: StackCounts::default(),
            max_sites: usize::MAX,
            teacher: None,
            chain_generation: 0,
        }
    }

    /// Learn the rules of the chains unwound from now on, and teach them to `teacher`.
    pub(crate) fn learn_chains(&mut self, teacher: Box<dyn Teach>) {
        self.teacher = Some(teacher);
    }

    /// The time of the exec record of `tgid`'s image, which the kernel keys its rules by.
    pub(crate) fn set_image_time(&mut self, tgid: u32, exec_ns: u64) {
        if self.process(tgid).image_ns != exec_ns {
            self.untaught(tgid);
            self.process(tgid).image_ns = exec_ns;
        }
    }

    /// Take back from the kernel every chain and rule taught for `tgid`.
    fn untaught(&mut self, tgid: u32) {
        let (Some(process), Some(teacher)) = (self.processes.get_mut(&tgid), self.teacher.as_mut()) else {
            return;
        };
        for key in process.taught_chains.drain() {
            teacher.teach_chain(key, None);
        }
        for key in process.taught.drain() {
            teacher.teach(key, None);
        }
        // Its modules may have moved (maps read again): the extents are learned anew. The
        // kernel's hints are not taken back (`Teach::teach_hint`).
        process.extents.clear();
    }

    pub(crate) fn limit_sites(&mut self, max_sites: usize) {
        self.max_sites = max_sites;
    }

    /// The site of a descriptor opened with these stacks: `stack` is the user stack of
    /// `--stacks dwarf`; otherwise `ids.user` names a frame-pointer stack. `read_stack`
    /// fetches a stack id's addresses from the kernel's stack map (only on first sight).
    pub(crate) fn site(
        &mut self,
        tgid: u32,
        ids: StackIds,
        stack: Option<&CapturedStack<'_>>,
        read_stack: &dyn Fn(u32) -> Option<Vec<u64>>,
    ) -> SiteId {
        self.look_at_perf_map_if_due(tgid);
        let user_id = ids.user.filter(|id| *id >= 0);
        let user = match stack {
            Some(CapturedStack::Window { sample, shadow }) => {
                let mut unwound = self.unwind(tgid, sample);
                if let Some(shadow) = shadow {
                    self.counts.chains_checked += 1;
                    self.counts.chains_cached += u64::from(shadow.cached);
                    if unwound.addresses != shadow.addresses {
                        self.counts.chains_mismatched += 1;
                        log::warn!(
                            "process {tgid}: the kernel's learned chain {:x?} is not the unwound {:x?}",
                            shadow.addresses,
                            unwound.addresses
                        );
                    }
                }
                let known = self.process(tgid).chain(&unwound.addresses);
                if let Some(site) = known.filter(|site| self.knows(*site)) {
                    return site;
                }
                // A new chain: make sure every module in it is known (a library loaded since
                // the maps were read would have been unwound by frame pointer, wrongly).
                if self.refresh_if_uncovered(tgid, &unwound.addresses) {
                    unwound = self.unwind(tgid, sample);
                }
                // A uprobe's stack (a libuv handle, model/handles.rs): the kernel never walks it.
                if sample.flags & user_stack_flags::AT_ENTRY == 0 {
                    self.learn(tgid, sample, &unwound);
                }
                Some(unwound.addresses)
            }
            Some(CapturedStack::Chain(WalkedChain { addresses, cached })) => {
                self.counts.chains_learned += 1;
                self.counts.chains_cached += u64::from(*cached);
                let known = self.process(tgid).chain(addresses);
                if let Some(site) = known.filter(|site| self.knows(*site)) {
                    return site;
                }
                self.refresh_if_uncovered(tgid, addresses);
                Some(addresses.to_vec())
            }
            None => {
                let known = self.process(tgid).by_stack_id.get(&user_id).copied();
                if let Some(site) = known.filter(|site| self.knows(*site)) {
                    return site;
                }
                let mut addresses = user_id.and_then(|id| read_stack(id as u32));
                if let Some(addresses) = &mut addresses {
                    if ids.at_entry {
                        carry_entry_pc(addresses);
                    }
                    self.refresh_if_uncovered(tgid, addresses);
                }
                addresses
            }
        };
        let mut frames: Vec<Frame> = Vec::new();
        let mut unresolved = false;
        if let Some(addresses) = &user {
            let user_frames = self.user_frames(tgid, addresses);
            // In no module: the process was gone before its maps could be read (an exec
            // followed by a quick exit). Its bare addresses still tell its chains apart, but
            // make a new site per process (ASLR): such sites are kept in a bounded number.
            unresolved = !user_frames.is_empty() && user_frames.iter().all(|f| f.module.is_none());
            frames.extend(user_frames);
        }
        let mut site = if frames.is_empty() { SiteId::NoStack } else { site_id(&frames) };
        if site != SiteId::NoStack && !self.frames.contains_key(&site) && self.frames.len() >= self.max_sites
        {
            self.counts.sites_dropped += 1;
            site = SiteId::SiteLimit;
        }
        if matches!(site, SiteId::Stack(_)) && !self.frames.contains_key(&site) {
            self.frames.insert(site, frames.into());
            if unresolved {
                self.counts.unresolved += 1;
                self.unresolved.push_back(site);
                if self.unresolved.len() > MAX_UNRESOLVED_SITES {
                    let oldest = self.unresolved.pop_front().expect("not empty");
                    self.frames.remove(&oldest);
                    self.creators.forget(oldest);
                }
            }
        }
        let process = self.process(tgid);
        match (stack, user) {
            (Some(_), Some(addresses)) => process.remember_chain(addresses, site),
            _ => {
                process.by_stack_id.insert(user_id, site);
            }
        }
        site
    }

    /// The site of a native stack with the calling thread's Python frames (innermost first)
    /// merged in: where the interpreter's eval loop is among the native frames, the Python
    /// frames stand in its place (before it: the C code the Python code called, such as
    /// libc and `_socket`; after it: what called the interpreter); where the eval loop is not
    /// named (an interpreter whose symbols do not say it), at the innermost of the
    /// interpreter's own frames, so that what lies outward of it (the event loop's C task
    /// step in `_asyncio`, which differs between a task's first step and the next) is outward
    /// of the Python frames too and not part of the site's identity; with no interpreter frame
    /// among them (a frame-pointer stack that stopped early), after the native frames.
    pub(crate) fn with_python(&mut self, native: SiteId, python: Vec<Frame>) -> SiteId {
        // A CPython perf trampoline's frame (`-X perf`) names one of the Python frames again,
        // without its line: the frames the kernel walked say it better.
        let native_frames: Vec<Frame> = match self.frames(native) {
            Some(frames) => frames.iter().filter(|f| f.language != Language::Python).cloned().collect(),
            None => Vec::new(),
        };
        let at = native_frames
            .iter()
            .position(|f| f.symbol.as_deref().is_some_and(|s| s.contains("PyEval_EvalFrame")))
            .or_else(|| native_frames.iter().position(|f| f.interpreter))
            .unwrap_or(native_frames.len());
        let mut frames = native_frames[..at].to_vec();
        frames.extend(python);
        frames.extend_from_slice(&native_frames[at..]);
        let site = site_id(&frames);
        if !self.frames.contains_key(&site) {
            if self.frames.len() >= self.max_sites {
                self.counts.sites_dropped += 1;
                return SiteId::SiteLimit;
            }
            self.frames.insert(site, frames.into());
        }
        site
    }

    pub(crate) fn frames(&self, site: SiteId) -> Option<&Arc<[Frame]>> {
        self.frames.get(&site)
    }

    /// `chains` more chains the kernel walked, like the one `site` was just given (the pairs of
    /// a record, observe/engine.rs `handle_pairs`): counted as each would have been.
    pub(crate) fn count_chains(&mut self, chains: u64, cached: bool) {
        self.counts.chains_learned += chains;
        self.counts.chains_cached += if cached { chains } else { 0 };
    }

    /// Whether a process's cache of its stacks may answer with `site`: a call site until it is
    /// forgotten (then it is made again from the stack); `site-limit` only while the registry
    /// is still full (once sites were forgotten, a stack named so then gets its own site: a
    /// leak of a long-lived process is named as soon as there is room); the other special
    /// sites always (they have no frames).
    pub(crate) fn knows(&self, site: SiteId) -> bool {
        match site {
            SiteId::Stack(_) => self.frames.contains_key(&site),
            SiteId::SiteLimit => self.frames.len() >= self.max_sites,
            _ => true,
        }
    }

    /// Let go of a call site's frames: nothing is open there and no live process used it for
    /// the retention (SiteStats::expire).
    pub(crate) fn forget_site(&mut self, site: SiteId) {
        self.creators.forget(site);
        self.listeners.remove(&site);
        if self.frames.remove(&site).is_some() && self.unresolved.contains(&site) {
            self.unresolved.retain(|s| *s != site);
        }
    }

    /// A descriptor of `site` was opened by a goroutine of `tgid` created at `creator_pc`
    /// (the kernel read it: model/event.rs `StackIds::creator`).
    pub(crate) fn note_creator(&mut self, tgid: u32, site: SiteId, creator_pc: u64) {
        if !self.frames.contains_key(&site) || self.creators.has(site, creator_pc) {
            return;
        }
        // gopc is a return address (the call of runtime.newproc), named as one.
        let frames = self.user_frames(tgid, &[creator_pc]);
        if let Some(created) = goroutines::created(&frames) {
            self.creators.note(site, created);
        }
    }

    /// What `site`'s frames cannot say of where its descriptors came from: the goroutines'
    /// creator, the listener.
    pub(crate) fn origin(&self, site: SiteId) -> SiteOrigin {
        SiteOrigin {
            created_by: self.creators.get(site).cloned(),
            accepted_on: self.listeners.get(&site).cloned(),
        }
    }

    /// The site of a socket accepted at `accepted` on a listener opened at `listener`. A
    /// runtime that accepts in a loop of its own (libuv's `uv__server_io` under Node.js, with no
    /// JavaScript frame below it) accepts every server's connections with one stack: such a
    /// site is told apart by its listener's site, and says the program's frame that opened the
    /// listener (the function that called `listen`), so a server that keeps what it accepts is
    /// one site of its own, named by the program's code. The accepting stack's site stays
    /// where that stack has a frame of the program's, where the listener's has none (a Go
    /// server started as `go srv.ListenAndServe()`, `python -m uvicorn`, a listener received
    /// from another process: only a library would be named), where the listener has no frames
    /// (opened before tracing), and where `--max-stacks` sites are remembered (it keeps its
    /// frames).
    pub(crate) fn accepted_through(&mut self, accepted: SiteId, listener: SiteId) -> SiteId {
        let (Some(frames), Some(listener_frames)) = (self.frames.get(&accepted), self.frames.get(&listener))
        else {
            return accepted;
        };
        if frame::program_frame(frames).is_some() {
            return accepted;
        }
        let Some(told) = frame::program_frame(listener_frames) else { return accepted };
        let site = through_listener(accepted, listener);
        if !self.frames.contains_key(&site) {
            if self.frames.len() >= self.max_sites {
                return accepted;
            }
            let told = told.clone();
            self.frames.insert(site, frames.clone());
            self.listeners.insert(site, told);
        }
        site
    }

    /// A process's executable: the module of the lowest executable mapping (it is mapped below
    /// its libraries and the dynamic loader, PIE or not). Whether it is a Go program (its `go`
    /// table says its version and where that release keeps a goroutine's creator), and whether it
    /// has libuv linked in (Node.js), are read from it.
    pub(crate) fn executable(&mut self, tgid: u32) -> Option<Arc<LoadedModule>> {
        let image = self.process(tgid).image.as_ref()?;
        let module = image.modules.iter().min_by_key(|m| m.range.start)?.file.clone();
        self.loaded(&module)
    }

    /// The libuv shared libraries a process maps (a distribution's node links `libuv.so.1`),
    /// parsed; the executable is `executable`'s.
    pub(crate) fn libuv_libraries(&mut self, tgid: u32) -> Vec<Arc<LoadedModule>> {
        let Some(image) = self.process(tgid).image.as_ref() else { return Vec::new() };
        let files: Vec<_> = image
            .modules
            .iter()
            .filter(|m| m.file.path.rsplit('/').next().is_some_and(|name| name.starts_with("libuv.so")))
            .map(|m| m.file.clone())
            .collect();
        files.iter().filter_map(|file| self.loaded(file)).collect()
    }

    /// Call sites whose frames are remembered now (`helios_trace_tracked_sites`).
    pub(crate) fn site_count(&self) -> usize {
        self.frames.len()
    }

    pub(crate) fn counts(&self) -> StackCounts {
        self.counts
    }

    /// Read a process's maps and take a handle on its modules now, while it is alive (called
    /// at its first sight and at exec, so that a process which exits before its events are
    /// read still resolves).
    pub(crate) fn capture_maps(&mut self, tgid: u32) {
        if let Some(image) = self.files.capture(&self.proc_root, tgid) {
            // The modules may have moved since the rules were learned (a library unloaded and
            // another mapped in its place): learn them again from the new modules.
            self.untaught(tgid);
            let process = self.process(tgid);
            process.image = Some(image);
            process.unwinder = None;
        }
    }

    /// A forked child runs its parent's image until it execs.
    pub(crate) fn inherit_maps(&mut self, parent: u32, child: u32) {
        // A process of the same pid that was never seen to exit.
        self.forget(child);
        let Some(image) = self.processes.get(&parent).and_then(|p| p.image.clone()) else { return };
        let unwinder = self.processes.get(&parent).and_then(|p| p.unwinder.clone());
        self.processes.insert(child, ProcessStacks { image: Some(image), unwinder, ..Default::default() });
    }

    /// The process image changed (exec) or the process is gone (exit): the kernel forgets
    /// its rules too (a pid is reused, and a forked one keys its rules as an image of time 0).
    pub(crate) fn forget(&mut self, tgid: u32) {
        self.untaught(tgid);
        self.processes.remove(&tgid);
        self.unnamed_jit.remove(&tgid);
    }

    /// Teach the kernel the rules of a chain just unwound, where every frame has one that
    /// redoes framehop's step (resolve/chains.rs): its next calls through these frames send
    /// the chain instead of the window. The chain itself is taught too, with the rules of its
    /// frames in order (`CHAIN_RULES`), so that the kernel finds them in one lookup while its
    /// walk follows the same addresses; the last chain taught with the same first two
    /// addresses is the one kept.
    fn learn(&mut self, tgid: u32, sample: &StackSample<'_>, unwound: &Unwound) {
        if self.teacher.is_none()
            || !cfg!(target_arch = "x86_64")
            || !unwound.ended
            || unwound.frames.len() > MAX_CHAIN_FRAMES
            || unwound.frames.len() != unwound.addresses.len()
        {
            return;
        }
        let Some(process) = self.processes.get(&tgid) else { return };
        if process.taught.len() + unwound.frames.len() > MAX_TAUGHT_PER_PROCESS {
            return;
        }
        let Some(unwinder) = &process.unwinder else { return };
        let mut rule_of = |index: usize, pc: u64| {
            // framehop looks a return address up by the call before it.
            let lookup = if index == 0 { pc } else { pc.checked_sub(1)? };
            let module = unwinder.module_for(lookup)?;
            chains::cfi_rule(&module.loaded.unwind, pc.checked_sub(module.bias)?, index == 0)
        };
        let read = |address: u64| sample.read(address).ok();
        let Some(learned) = chains::learn(&unwound.frames, &mut rule_of, &read) else { return };
        let (Some(process), Some(teacher)) = (self.processes.get_mut(&tgid), self.teacher.as_mut()) else {
            return;
        };
        let rules = learned.rules;
        for (index, (frame, rule)) in unwound.frames.iter().zip(&rules).enumerate() {
            let key = FrameRuleKey {
                tgid,
                first: u32::from(index == 0),
                exec_ns: process.image_ns,
                address: frame.pc,
            };
            if process.taught.insert(key) {
                teacher.teach(key, Some(*rule));
            }
        }
        if let (Some(frame), Some(&rule)) = (unwound.frames.first(), rules.first()) {
            // Taught at every chain learned, not only when it changes: a frame taught later
            // into the same slot took it, and this takes it back. The rule is the one the
            // chain below is taught with for its first frame, which the kernel checks.
            let stack_bytes = process.narrowest_extent(frame.pc, learned.stack_bytes);
            let first = FrameRuleKey { tgid, first: 1, exec_ns: process.image_ns, address: frame.pc };
            teacher.teach_hint(FirstFrameHint { first, rule, stack_bytes, reserved: 0 });
        }
        self.chain_generation += 1;
        let taught = taught_chain(tgid, process.image_ns, &unwound.frames, &rules, self.chain_generation);
        if let Some((key, chain)) = taught
            && process.may_teach_chain(key)
        {
            teacher.teach_chain(key, Some(&chain));
        }
    }

    fn process(&mut self, tgid: u32) -> &mut ProcessStacks {
        self.processes.entry(tgid).or_default()
    }

    /// The parsed module of `file`; what was derived from modules the cache let go is dropped.
    fn loaded(
        &mut self,
        file: &Arc<crate::resolve::modules::files::ModuleFile>,
    ) -> Option<Arc<LoadedModule>> {
        let mut evicted = Vec::new();
        let loaded = self.modules.get(file, &mut evicted);
        for old in evicted {
            self.symbolizer.forget(&old);
            self.symbols.retain(|(file, _), _| *file != old.file.key);
        }
        match loaded {
            Ok(loaded) => Some(loaded),
            Err(err) => {
                log::debug!("{err}");
                None
            }
        }
    }

    /// Unwind a captured user stack with the process's modules; addresses innermost first.
    fn unwind(&mut self, tgid: u32, sample: &StackSample<'_>) -> Unwound {
        if self.process(tgid).image.is_none() {
            // First sight of this process.
            self.capture_maps(tgid);
        }
        let mut unwound = self.unwind_with_image(tgid, sample);
        if unwound.truncated {
            self.counts.truncated += 1;
        }
        if sample.flags & user_stack_flags::AT_ENTRY != 0 {
            carry_entry_pc(&mut unwound.addresses);
        }
        unwound
    }

    /// Read the maps again when an address lies in none of the process's modules (first sight,
    /// or a library loaded since); true when they were.
    fn refresh_if_uncovered(&mut self, tgid: u32, addresses: &[u64]) -> bool {
        let process = self.process(tgid);
        let covered =
            process.image.as_ref().is_some_and(|image| image.maps.covers(&lookup_addresses(addresses)));
        if covered || (process.image.is_some() && process.recaptures >= MAX_RECAPTURES) {
            return false;
        }
        process.recaptures += 1;
        self.capture_maps(tgid);
        true
    }

    fn unwind_with_image(&mut self, tgid: u32, sample: &StackSample<'_>) -> Unwound {
        if self.process(tgid).unwinder.is_none() {
            let modules = self.process(tgid).image.as_ref().map(|i| i.modules.clone()).unwrap_or_default();
            let mut unwinder = ProcessUnwinder::default();
            for module in &modules {
                if let Some(loaded) = self.loaded(&module.file) {
                    unwinder.add(module, &loaded);
                }
            }
            self.process(tgid).unwinder = Some(unwinder);
        }
        let process = self.processes.get_mut(&tgid).expect("created above");
        let unwinder = process.unwinder.as_ref().expect("built above");
        let (perf_map, next_look, proc_root) =
            (&mut process.perf_map, &mut process.perf_map_next_look, &self.proc_root);
        // Asked only in a process whose interpreter has CPython's perf trampoline, of a return
        // address in no module: `-X perf` may be on, and its map is needed to unwind, before
        // any frame is named (`jit_symbol` looks for it only then). CPython writes one line per
        // copy and never writes over one: a miss reads what was appended (`PerfMap`).
        let mut trampolines = |address| {
            if perf_map.is_none() {
                look_at_perf_map_if_due(perf_map, next_look, proc_root, tgid);
            }
            perf_map.as_mut()?.python_trampoline_at(address)
        };
        unwinder.unwind(sample, &mut self.unwind_cache, self.teacher.is_some(), &mut trampolines)
    }

    /// Frames of user addresses (the instruction pointer, then return addresses).
    fn user_frames(&mut self, tgid: u32, addresses: &[u64]) -> Vec<Frame> {
        let image = self.process(tgid).image.clone().unwrap_or_default();
        let mut frames = Vec::with_capacity(addresses.len());
        let mut jit_seen = false;
        for (address, lookup) in addresses.iter().zip(lookup_addresses(addresses)) {
            let Some(mapping) = image.maps.lookup(lookup) else {
                if !std::mem::replace(&mut jit_seen, true)
                    && let Some(map) = self.process(tgid).perf_map.as_mut()
                {
                    // What the map says of this stack's code, as of now (resolve/perfmap.rs).
                    map.refresh_if_grown();
                }
                // In no file: JIT-compiled code, named by the runtime's perf map if it has one.
                frames.push(match self.jit_symbol(tgid, lookup) {
                    Some(jit) => Frame {
                        symbol: Some(jit.name),
                        file: jit.file,
                        line: jit.line,
                        // A CPython perf trampoline stands for the Python function it enters
                        // (no line: the map names functions), which is Python code to the site's
                        // label as a frame the kernel walked would be.
                        language: if jit.python { Language::Python } else { Language::Jit },
                        ..Frame::native(*address, None, None)
                    },
                    None => Frame::native(*address, None, None),
                });
                continue;
            };
            let offset = address.wrapping_sub(mapping.start).wrapping_add(mapping.file_offset);
            let lookup_offset = lookup - mapping.start + mapping.file_offset;
            let symbols = match image.module_of(lookup) {
                Some(module) => self.symbols(&module.file, lookup_offset),
                None => Arc::from([]),
            };
            let native = Frame {
                interpreter: is_interpreter(&mapping.path),
                ..Frame::native(*address, Some(mapping.path.clone()), Some(offset))
            };
            if symbols.is_empty() {
                frames.push(native);
                continue;
            }
            for symbol in symbols.iter() {
                frames.push(Frame {
                    symbol: Some(symbol.name.clone()),
                    file: symbol.file.clone(),
                    line: symbol.line,
                    symbol_offset: symbol.offset,
                    inlined: symbol.inlined,
                    language: if symbol.go { Language::Go } else { Language::Native },
                    ..native.clone()
                });
            }
        }
        frames
    }

    /// The JIT-compiled function at `address` of `tgid`, from its perf map. The map is looked
    /// for again at most once a `PERF_MAP_LOOK_INTERVAL` while there is none (it may be written
    /// after the tracer started: `jcmd PID Compiler.perfmap`); a map there is re-read by
    /// `lookup` itself on a miss.
    fn jit_symbol(&mut self, tgid: u32, address: u64) -> Option<JitSymbol> {
        let process = self.processes.entry(tgid).or_default();
        if process.perf_map.is_none() {
            process.look_at_perf_map_if_due(&self.proc_root, tgid);
        }
        let symbol = process.perf_map.as_mut().and_then(|map| map.lookup(address));
        self.note_jit_naming(tgid, symbol.is_some());
        symbol
    }

    /// For a process with JIT code no perf map named: at most once a `PERF_MAP_LOOK_INTERVAL`,
    /// look for its map, or read what was written to it since. Once it names code it did not,
    /// the stacks resolved before are resolved again at their next record, so a call seen with
    /// bare addresses gets named (its descriptors opened before keep the unnamed site). Its
    /// stacks are otherwise answered from the caches, which never ask the map.
    fn look_at_perf_map_if_due(&mut self, tgid: u32) {
        if !self.unnamed_jit.contains(&tgid) {
            return;
        }
        let Some(process) = self.processes.get_mut(&tgid) else { return };
        process.look_at_perf_map_if_due(&self.proc_root, tgid);
        self.note_jit_naming(tgid, true);
    }

    /// Keep `unnamed_jit` (the processes whose perf map is looked at again) up to date: a process
    /// leaves it once its map names code it did not before (its resolved stacks are forgotten
    /// then, to be named anew), and joins it when a JIT address went `unnamed`.
    fn note_jit_naming(&mut self, tgid: u32, named: bool) {
        if self.processes.get_mut(&tgid).is_some_and(ProcessStacks::forget_if_named_anew) {
            self.unnamed_jit.remove(&tgid);
        }
        if !named {
            self.unnamed_jit.insert(tgid);
        }
    }

    /// The functions at a file offset of a module (cached per module).
    fn symbols(
        &mut self,
        file: &Arc<crate::resolve::modules::files::ModuleFile>,
        file_offset: u64,
    ) -> Arc<[Symbol]> {
        let Some(loaded) = self.loaded(file) else { return Arc::from([]) };
        let Some(svma) = loaded.svma_of_offset(file_offset) else { return Arc::from([]) };
        let key = (loaded.file.key, svma);
        if let Some(symbols) = self.symbols.get(&key) {
            return symbols.clone();
        }
        // A Go binary names its code from its own table, stripped or not: the same names,
        // lines and inlined frames either way (Go's own tracebacks read it too).
        let symbols: Arc<[Symbol]> = match &loaded.go {
            Some(go) => go.symbols(svma).into(),
            None => self.symbolizer.module_symbols(&loaded, svma).into(),
        };
        self.symbols.insert(key, symbols.clone());
        symbols
    }
}

/// Whether a module is a CPython interpreter's own code: a `pythonX.Y` executable or a
/// `libpythonX.Y` library, the modules resolve/python recognises a CPython by (layout.rs's
/// `version_of`), as opposed to its extension modules (`_socket.cpython-312-….so`, in
/// lib-dynload or site-packages) and the libraries it links (libc, libssl, libsqlite3).
/// Modules built into the executable (Debian builds `_socket` and `_io` in) are its own.
fn is_interpreter(module: &str) -> bool {
    crate::resolve::python::layout::version_of(module).is_some()
}

/// A process's perf map (`map`), looked for (none yet) or read again for what was appended to
/// it, at most once a `PERF_MAP_LOOK_INTERVAL` (`next_look`).
fn look_at_perf_map_if_due(
    map: &mut Option<PerfMap>,
    next_look: &mut Option<std::time::Instant>,
    proc_root: &Path,
    tgid: u32,
) {
    let now = std::time::Instant::now();
    if next_look.is_some_and(|next| now < next) {
        return;
    }
    *next_look = Some(now + PERF_MAP_LOOK_INTERVAL);
    match map.as_mut() {
        Some(map) => {
            map.refresh();
        }
        None => *map = PerfMap::open(proc_root, tgid),
    }
}

/// The address to look each user frame up at. Every one is just after an instruction: the
/// syscall (the instruction pointer the kernel saved), then the calls (return addresses), and
/// the next instruction may already be another line or function (a call to a noreturn
/// function ending its caller), so look at the byte before.
fn lookup_addresses(addresses: &[u64]) -> Vec<u64> {
    addresses.iter().map(|a| a.saturating_sub(1)).collect()
}

/// A uprobe's pc, a function's first byte, carried one past: the form of every other address
/// here (after a syscall, return addresses), which `lookup_addresses` looks up at the byte
/// before.
fn carry_entry_pc(addresses: &mut [u64]) {
    if let Some(pc) = addresses.first_mut() {
        *pc += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::frame::{
        site_label,
        tests::{js, native},
    };

    /// libuv accepts every server's connections in its loop, below no JavaScript frame: each
    /// listener's connections are a site of their own, which names the function that called
    /// `listen`; a stack with a frame of the program's, or a listener without frames, keeps
    /// its site.
    #[test]
    fn a_runtimes_loop_accepting_is_told_apart_by_the_listener() {
        let mut registry = StackRegistry::new("/nonexistent");
        let mut remember = |frames: Vec<Frame>| {
            let site = site_id(&frames);
            registry.frames.insert(site, frames.into());
            site
        };
        let node = |symbol: &str, offset| native(Some(symbol), "/usr/bin/node", offset);
        let loop_accept = remember(vec![
            native(Some("accept4"), "/lib/libc.so.6", 0x10),
            node("uv__accept", 0x100),
            node("uv__server_io", 0x200),
            node("uv__io_poll", 0x300),
            node("uv_run", 0x400),
        ]);
        let listener = |remember: &mut dyn FnMut(Vec<Frame>) -> SiteId, function: &str, line| {
            remember(vec![
                native(Some("__GI_socket"), "/lib/libc.so.6", 0x20),
                node("uv__tcp_bind", 0x500),
                js("setupListenHandle", "node:net", 1890),
                js("Server.listen", "node:net", 2084),
                js(function, "/srv/server.js", line),
            ])
        };
        let tcp = listener(&mut remember, "listenTcp", 33);
        let unix = listener(&mut remember, "listenUnix", 38);
        let program_accept = remember(vec![
            native(Some("accept4"), "/lib/libc.so.6", 0x10),
            native(Some("serve_forever"), "/srv/server", 0x40),
        ]);
        // A listener whose stack names no code of the program's (opened on a later tick).
        let library = remember(vec![
            native(Some("__GI_socket"), "/lib/libc.so.6", 0x20),
            node("uv__tcp_bind", 0x500),
            js("setupListenHandle", "node:net", 1890),
            js("processTicksAndRejections", "node:internal/process/task_queues", 95),
        ]);
        let on_tcp = registry.accepted_through(loop_accept, tcp);
        let on_unix = registry.accepted_through(loop_accept, unix);
        assert!(matches!(on_tcp, SiteId::Stack(_)));
        assert!(on_tcp != loop_accept && on_unix != loop_accept && on_tcp != on_unix);
        assert_eq!(registry.accepted_through(loop_accept, tcp), on_tcp, "the same listener, the same site");
        assert_eq!(registry.frames(on_tcp), registry.frames(loop_accept), "the accepting stack's frames");
        let told = |registry: &StackRegistry, site| {
            registry.origin(site).accepted_on.map(|f| f.symbol.as_deref().unwrap().to_string())
        };
        assert_eq!(told(&registry, on_tcp).as_deref(), Some("listenTcp"));
        assert_eq!(told(&registry, on_unix).as_deref(), Some("listenUnix"));
        assert_eq!(told(&registry, loop_accept), None);
        assert_eq!(
            registry.accepted_through(program_accept, tcp),
            program_accept,
            "the program's own accept"
        );
        assert_eq!(registry.accepted_through(loop_accept, SiteId::BeforeTrace), loop_accept);
        assert_eq!(registry.accepted_through(loop_accept, SiteId::UnknownOrigin), loop_accept);
        registry.forget_site(on_tcp);
        assert_eq!(told(&registry, on_tcp), None, "forgotten with its frames");
        assert_eq!(registry.accepted_through(loop_accept, tcp), on_tcp, "and made again");
        assert_eq!(told(&registry, on_tcp).as_deref(), Some("listenTcp"));
        assert_eq!(registry.accepted_through(loop_accept, library), loop_accept, "only a library to name");
        // --max-stacks bounds these sites too: past it, the accepting stack's own site.
        registry.forget_site(on_unix);
        registry.limit_sites(registry.site_count());
        assert_eq!(registry.accepted_through(loop_accept, unix), loop_accept);
        assert_eq!(registry.accepted_through(loop_accept, tcp), on_tcp, "one already remembered");
    }

    #[test]
    fn python_frames_stand_where_the_eval_loop_is() {
        let mut registry = StackRegistry::new("/nonexistent");
        let native_frames: Vec<Frame> = vec![
            native(Some("accept4"), "/lib/libc.so.6", 1),
            native(Some("sock_accept"), "/x/lib-dynload/_socket.so", 2),
            native(Some("_PyEval_EvalFrameDefault"), "/x/libpython3.12.so.1.0", 3),
            native(Some("main"), "/x/python3.12", 4),
        ];
        let native_site = site_id(&native_frames);
        registry.frames.insert(native_site, native_frames.into());
        let py = |symbol: &str, line| Frame::python(Arc::from(symbol), Arc::from("/srv/app.py"), Some(line));
        let site = registry.with_python(native_site, vec![py("handle", 10), py("main", 20)]);
        let symbols: Vec<&str> =
            registry.frames(site).unwrap().iter().map(|f| f.symbol.as_deref().unwrap()).collect();
        assert_eq!(symbols, ["accept4", "sock_accept", "handle", "main", "_PyEval_EvalFrameDefault", "main"]);
        // The same Python path is the same site; another line is another.
        assert_eq!(registry.with_python(native_site, vec![py("handle", 10), py("main", 20)]), site);
        assert_ne!(registry.with_python(native_site, vec![py("handle", 11), py("main", 20)]), site);
        // Without an eval loop among the native frames (a short frame-pointer stack): after them.
        let site = registry.with_python(SiteId::NoStack, vec![py("handle", 10)]);
        assert_eq!(registry.frames(site).unwrap().len(), 1);
        // --max-stacks bounds these sites too.
        registry.limit_sites(registry.site_count());
        assert_eq!(registry.with_python(native_site, vec![py("handle", 12)]), SiteId::SiteLimit);
        assert_eq!(registry.counts().sites_dropped, 1);
    }

    /// An interpreter whose eval loop is not named (sid's python3.14, read from a container's
    /// root): the Python frames stand at its innermost own frame, so the C task step of
    /// `_asyncio` outward of it, at one offset for a task's first step and another later, is
    /// outward of them and the same Python path is one site.
    #[test]
    fn python_frames_stand_at_the_interpreter_when_the_eval_loop_is_not_named() {
        let mut registry = StackRegistry::new("/nonexistent");
        let mut step = |offset| {
            let frames: Vec<Frame> = vec![
                native(Some("__socket"), "/lib/libc.so.6", 1),
                Frame { interpreter: true, ..native(None, "/usr/bin/python3.14", 2) },
                native(None, "/x/lib-dynload/_asyncio.cpython-314-x86_64-linux-gnu.so", offset),
                Frame { interpreter: true, ..native(None, "/usr/bin/python3.14", 4) },
            ];
            let site = site_id(&frames);
            registry.frames.insert(site, frames.into());
            site
        };
        let (first, later) = (step(0x100), step(0x200));
        assert_ne!(first, later);
        let py = |symbol: &str, line| Frame::python(Arc::from(symbol), Arc::from("/srv/app.py"), Some(line));
        let site = registry.with_python(first, vec![py("connect", 10), py("main", 20)]);
        assert_eq!(registry.with_python(later, vec![py("connect", 10), py("main", 20)]), site);
        let languages: Vec<bool> =
            registry.frames(site).unwrap().iter().map(|f| f.language == Language::Python).collect();
        assert_eq!(languages, [false, true, true, false, false, false]);
    }

    #[test]
    fn interpreter_modules_are_the_executable_and_libpython_not_extensions() {
        for own in [
            "/usr/bin/python3.11",
            "/root/.pyenv/versions/3.12.1/bin/python3.12",
            "/root/.pyenv/versions/3.12.1/lib/libpython3.12.so.1.0",
            "/usr/lib/x86_64-linux-gnu/libpython3.13t.so.1.0",
        ] {
            assert!(is_interpreter(own), "{own}");
        }
        for other in [
            "/usr/lib/python3.11/lib-dynload/_asyncio.cpython-311-x86_64-linux-gnu.so",
            "/root/.pyenv/versions/3.12.1/lib/python3.12/lib-dynload/_socket.cpython-312-x86_64-linux-gnu.so",
            "/srv/venv/lib/python3.11/site-packages/aiohttp/_http_parser.cpython-311-x86_64-linux-gnu.so",
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "/usr/lib/x86_64-linux-gnu/libsqlite3.so.0.8.6",
            "/usr/lib/x86_64-linux-gnu/libpython3.so",
        ] {
            assert!(!is_interpreter(other), "{other}");
        }
    }

    /// The kernel's rules and chains of a process are taken back whenever they may no longer
    /// describe its image: another exec time, its exit, a pid taken by a fork.
    #[test]
    fn taught_rules_are_taken_back_with_their_image() {
        /// What the registry taught or took back, in order.
        #[derive(Clone, Debug, PartialEq)]
        enum Update {
            Rule(FrameRuleKey, Option<FrameRule>),
            Chain(ChainKey, Option<u64>),
            Hint(FirstFrameHint),
        }
        #[derive(Clone, Default)]
        struct Taught(Arc<std::sync::Mutex<Vec<Update>>>);
        impl Teach for Taught {
            fn teach(&mut self, key: FrameRuleKey, rule: Option<FrameRule>) {
                self.0.lock().unwrap().push(Update::Rule(key, rule));
            }
            fn teach_chain(&mut self, key: ChainKey, chain: Option<&ChainRules>) {
                self.0.lock().unwrap().push(Update::Chain(key, chain.map(|c| c.generation)));
            }
            fn teach_hint(&mut self, hint: FirstFrameHint) {
                self.0.lock().unwrap().push(Update::Hint(hint));
            }
        }
        let taught = Taught::default();
        let mut registry = StackRegistry::new("/nonexistent");
        registry.learn_chains(Box::new(taught.clone()));
        // What the registry holds as taught for `tgid`'s image, as the updates that take it back.
        let teach = |registry: &mut StackRegistry, tgid: u32| {
            let exec_ns = registry.process(tgid).image_ns;
            let rules = [(1, 0x1000), (0, 0x2000)].map(|(first, address)| FrameRuleKey {
                tgid,
                first,
                exec_ns,
                address,
            });
            let chain = ChainKey { tgid, reserved: 0, exec_ns, pc: 0x1000, caller: 0x2000 };
            registry.process(tgid).taught.extend(rules);
            assert!(registry.process(tgid).may_teach_chain(chain));
            let mut updates = vec![Update::Chain(chain, None)];
            updates.extend(rules.map(|key| Update::Rule(key, None)));
            updates
        };
        // Chains first (while one is taught, the rules it was learned with are), then rules.
        let taken_back = |_: &mut StackRegistry| {
            let mut updates = std::mem::take(&mut *taught.0.lock().unwrap());
            if let Some(rules) = updates.get_mut(1..) {
                rules.sort_by_key(|u| match u {
                    Update::Rule(key, _) => key.address,
                    Update::Chain(..) | Update::Hint(..) => 0,
                });
            }
            updates
        };
        let keys = teach(&mut registry, 7);
        registry.set_image_time(7, 0);
        assert_eq!(taken_back(&mut registry), [], "the same image");
        registry.set_image_time(7, 5_000);
        assert_eq!(taken_back(&mut registry), keys, "another exec: the old image's rules");
        let keys = teach(&mut registry, 7);
        assert!(matches!(keys[0], Update::Chain(ChainKey { exec_ns: 5_000, .. }, None)));
        registry.forget(7);
        assert_eq!(taken_back(&mut registry), keys, "its exit");
        let keys = teach(&mut registry, 8);
        registry.inherit_maps(1, 8);
        assert_eq!(taken_back(&mut registry), keys, "a fork took the pid");
        registry.forget(9);
        assert_eq!(taken_back(&mut registry), [], "nothing taught, nothing taken back");
    }

    /// A chain is taught keyed by its image and first two addresses, with the rule of each of
    /// its first `MAX_CACHED_CHAIN_FRAMES` frames in order; a chain of one frame is not (the
    /// kernel looks a chain up at its second).
    #[test]
    fn a_taught_chain_holds_its_addresses_and_their_rules_in_order() {
        let frame = |pc: u64| FrameRegs { pc, sp: 0x7ff0_0000 + pc, bp: 0 };
        let rule =
            |i: usize| FrameRule { flags: 0, cfa_offset: 8 * (i as i32 + 1), bp_offset: 0, reserved: 0 };
        for depth in [2, 3, MAX_CACHED_CHAIN_FRAMES, MAX_CACHED_CHAIN_FRAMES + 5] {
            let frames: Vec<FrameRegs> = (0..depth).map(|i| frame(0x1000 + 0x10 * i as u64)).collect();
            let rules: Vec<FrameRule> = (0..depth).map(rule).collect();
            let (key, chain) = taught_chain(7, 5_000, &frames, &rules, 42).unwrap();
            assert_eq!(key, ChainKey { tgid: 7, reserved: 0, exec_ns: 5_000, pc: 0x1000, caller: 0x1010 });
            let kept = depth.min(MAX_CACHED_CHAIN_FRAMES);
            assert_eq!((chain.generation, chain.key, chain.depth as usize), (42, key, kept));
            for i in 0..kept {
                assert_eq!(
                    (chain.addresses[i], chain.rules[i]),
                    (frames[i].pc, rules[i]),
                    "frame {i} of {depth}"
                );
            }
        }
        assert!(taught_chain(7, 0, &[frame(0x1000)], &[rule(0)], 1).is_none(), "one frame");
        assert!(
            taught_chain(7, 0, &[frame(0x1000), frame(0x2000)], &[rule(0)], 1).is_none(),
            "a rule missing"
        );
    }

    /// A process's taught chains are bounded; a chain of a key taught already is taught again
    /// (the last one kept) whatever the count.
    #[test]
    fn a_process_teaches_so_many_chains_and_replaces_its_own() {
        let mut process = ProcessStacks::default();
        let key = |pc: u64| ChainKey { tgid: 7, reserved: 0, exec_ns: 0, pc, caller: 0x2000 };
        for pc in 0..MAX_TAUGHT_CHAINS_PER_PROCESS as u64 {
            assert!(process.may_teach_chain(key(pc)), "{pc}");
        }
        assert!(!process.may_teach_chain(key(u64::MAX)), "past the bound");
        assert!(process.may_teach_chain(key(3)), "a key taught already");
        assert_eq!(process.taught_chains.len(), MAX_TAUGHT_CHAINS_PER_PROCESS);
    }

    /// A first frame's extent is the least any chain learned through it reads (but a chain
    /// that reads nothing), and each frame has its own.
    #[test]
    fn a_first_frames_extent_is_the_shallowest_of_its_chains() {
        let mut process = ProcessStacks::default();
        assert_eq!(process.narrowest_extent(0x10, 0x300), 0x300);
        assert_eq!(process.narrowest_extent(0x10, 0x900), 0x300, "a deeper chain keeps the shallowest's");
        assert_eq!(process.narrowest_extent(0x10, 0x100), 0x100);
        assert_eq!(process.narrowest_extent(0x10, 0), 0x100, "a chain that reads nothing");
        assert_eq!(process.narrowest_extent(0x20, 0x40), 0x40);
        assert_eq!(process.narrowest_extent(0x30, 0), 0);
        assert_eq!(process.narrowest_extent(0x30, 0x80), 0x80);
        assert_eq!(process.narrowest_extent(0x40, u64::MAX), u32::MAX);
    }

    /// The kernel and userspace find a hint in the same slot, within the array; a process's
    /// first frames spread over it.
    #[test]
    fn a_first_frames_extent_slot_is_within_the_array_and_spread() {
        use helios_trace_common::{MAX_FIRST_FRAME_HINTS, first_frame_hint_slot};
        let first = |tgid, exec_ns, address| FrameRuleKey { tgid, first: 1, exec_ns, address };
        let mut slots = HashSet::new();
        for address in (0..1000u64).map(|i| 0x7f12_3456_0000 + 0x1d * i) {
            let slot = first_frame_hint_slot(&first(4242, 1_234_567_890, address));
            assert!(slot < MAX_FIRST_FRAME_HINTS);
            assert_eq!(slot, first_frame_hint_slot(&first(4242, 1_234_567_890, address)));
            slots.insert(slot);
        }
        // 1,000 frames in 32,768 slots: ~15 collisions expected of a uniform hash.
        assert!(slots.len() > 950, "{} slots for 1000 frames", slots.len());
        let slot = |tgid, exec_ns, address| first_frame_hint_slot(&first(tgid, exec_ns, address));
        assert_ne!(slot(1, 0, 0x1000), slot(2, 0, 0x1000));
        assert_ne!(slot(1, 0, 0x1000), slot(1, 5, 0x1000));
    }

    #[test]
    fn registry_caches_per_process_and_forgets_on_exec() {
        const MAPS: &str =
            "7f3a12000000-7f3a12028000 r--p 00000000 fd:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
7f3a12028000-7f3a121bd000 r-xp 00028000 fd:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
";
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("42")).unwrap();
        std::fs::write(dir.path().join("42/maps"), MAPS).unwrap();
        let mut registry = StackRegistry::new(dir.path());
        let reads = std::cell::Cell::new(0);
        let read = |_: u32| {
            reads.set(reads.get() + 1);
            Some(vec![0x7f3a12030010, 0x1234])
        };
        let ids = StackIds { user: Some(3), creator: None, at_entry: false };
        let site = registry.site(42, ids, None, &read);
        assert!(matches!(site, SiteId::Stack(_)));
        assert_eq!(registry.site(42, ids, None, &read), site);
        assert_eq!(reads.get(), 1, "the kernel map is read once per (process, stack id)");
        // A uprobe's stack, taken at a function's first byte, is carried one past as a return
        // address is: the same frames, so the same site.
        let entry = StackIds { user: Some(4), creator: None, at_entry: true };
        assert_eq!(registry.site(42, entry, None, &|_| Some(vec![0x7f3a1203000f, 0x1234])), site);
        let frames = registry.frames(site).unwrap();
        // The file is not openable here: named by module and file offset, unknowns are null.
        assert_eq!(frames[0].module.as_deref(), Some("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert_eq!((frames[0].offset, frames[0].symbol.as_deref()), (Some(0x30010), None));
        assert_eq!((frames[1].module.as_deref(), frames[1].address), (None, Some(0x1234)));
        // A forgotten site that the live process's cache still names is made again.
        registry.forget_site(site);
        assert!(registry.frames(site).is_none() && !registry.knows(site));
        assert_eq!(registry.site(42, ids, None, &read), site);
        assert!(registry.frames(site).is_some());
        assert_eq!(reads.get(), 2, "from the stack map again");
        registry.forget(42);
        registry.site(42, ids, None, &read);
        assert_eq!(reads.get(), 3);
        assert_eq!(registry.site(42, StackIds::default(), None, &read), SiteId::NoStack);
        assert_eq!(
            registry.site(42, StackIds { user: Some(-17), creator: None, at_entry: false }, None, &read),
            SiteId::NoStack
        );
        assert_eq!(registry.site_count(), 1);
        // A process whose maps were never read (gone already): bare addresses, counted, and
        // only so many such sites are kept (each short-lived process would add its own).
        let gone = registry.site(43, ids, None, &read);
        assert!(matches!(gone, SiteId::Stack(_)));
        assert!(registry.frames(gone).unwrap().iter().all(|f| f.module.is_none()));
        assert_eq!((registry.counts().unresolved, registry.site_count()), (1, 2));
        for pid in 0..MAX_UNRESOLVED_SITES as u32 + 10 {
            let address = 0x1000 + u64::from(pid);
            registry.site(1000 + pid, ids, None, &|_| Some(vec![address]));
        }
        assert_eq!(registry.site_count(), 1 + MAX_UNRESOLVED_SITES);
        assert!(registry.frames(gone).is_none(), "the oldest went first");
        assert!(registry.frames(site).is_some(), "resolved sites stay");
    }

    #[test]
    fn beyond_max_sites_new_sites_are_counted_and_the_first_stay() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = StackRegistry::new(dir.path());
        registry.limit_sites(2);
        let ids = |user| StackIds { user: Some(user), creator: None, at_entry: false };
        let site = |registry: &mut StackRegistry, id: i32| {
            registry.site(7, ids(id), None, &|id| Some(vec![0x1000 * u64::from(id + 1)]))
        };
        let (first, second) = (site(&mut registry, 1), site(&mut registry, 2));
        assert!(matches!((first, second), (SiteId::Stack(_), SiteId::Stack(_))) && first != second);
        assert_eq!(site(&mut registry, 3), SiteId::SiteLimit);
        assert_eq!(site(&mut registry, 4), SiteId::SiteLimit);
        assert_eq!(site(&mut registry, 1), first, "known sites are still named");
        assert_eq!((registry.site_count(), registry.counts().sites_dropped), (2, 2));
        assert_eq!(site(&mut registry, 3), SiteId::SiteLimit, "from the cache while full");
        assert_eq!(registry.counts().sites_dropped, 2, "a cached answer is not counted again");
        // Room again (a site forgotten): the same process's stack that was site-limit is named.
        registry.forget_site(second);
        let third = site(&mut registry, 3);
        assert!(matches!(third, SiteId::Stack(_)) && third != first, "{third:?}");
        assert_eq!(registry.counts().sites_dropped, 2);
    }

    /// The whole path on the captured sample (tests/data/unwind): a procfs of one process whose
    /// maps and map_files are the capture's, registers and stack as the kernel sends them.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn a_captured_sample_becomes_a_named_site() {
        use crate::resolve::unwind::tests::{captured, data};

        let captured = captured("sample");
        let procfs = tempfile::tempdir().unwrap();
        let pid = 4242u32;
        std::fs::create_dir_all(procfs.path().join(format!("{pid}/map_files"))).unwrap();
        let maps = std::fs::read_to_string(data("maps.txt")).unwrap();
        std::fs::write(
            procfs.path().join(format!("{pid}/maps")),
            maps.replace("@SAMPLE@", "/opt/app/sample"),
        )
        .unwrap();
        let first = captured.maps.mappings().iter().find(|m| m.path.ends_with("sample")).unwrap();
        let link = procfs.path().join(format!("{pid}/map_files/{:x}-{:x}", first.start, first.end));
        std::os::unix::fs::symlink(data("sample"), link).unwrap();

        let mut registry = StackRegistry::new(procfs.path());
        registry.capture_maps(pid);
        let sample = StackSample::new(&captured.regs, &captured.stack, 0);
        let no_stack_map = |_: u32| -> Option<Vec<u64>> { panic!("dwarf stacks need no stack map") };
        let site = registry.site(
            pid,
            StackIds::default(),
            Some(&CapturedStack::Window { sample: &sample, shadow: None }),
            &no_stack_map,
        );
        let frames = registry.frames(site).unwrap().clone();
        let named: Vec<&str> =
            frames.iter().filter(|f| !f.inlined).filter_map(|f| f.symbol.as_deref()).collect();
        assert_eq!(named[..4], ["leak_fn", "handler", "loop", "main"], "{frames:#?}");
        assert_eq!(frames[0].symbol.as_deref(), Some("raw_openat"));
        assert!(frames[0].inlined);
        assert_eq!(frames[0].module.as_deref(), Some("/opt/app/sample"), "named as the process names it");
        // The innermost code of the application is raw_openat's, inlined into leak_fn.
        assert_eq!(
            site_label(&frames).unwrap(),
            format!("raw_openat (sample.c:{})", frames[0].line.unwrap())
        );
        // Again, and after the process is gone (its maps, files and procfs entry with it):
        // the same site, from the cache and from the files held since first sight.
        assert_eq!(
            registry.site(
                pid,
                StackIds::default(),
                Some(&CapturedStack::Window { sample: &sample, shadow: None }),
                &no_stack_map
            ),
            site
        );
        std::fs::remove_dir_all(procfs.path().join(pid.to_string())).unwrap();
        registry.inherit_maps(pid, pid + 1);
        assert_eq!(
            registry.site(
                pid + 1,
                StackIds::default(),
                Some(&CapturedStack::Window { sample: &sample, shadow: None }),
                &no_stack_map
            ),
            site
        );
        assert_eq!(registry.counts().truncated, 0);
        let cut = StackSample { stack: &captured.stack[..24], ..sample };
        let short = registry.site(
            pid + 1,
            StackIds::default(),
            Some(&CapturedStack::Window { sample: &cut, shadow: None }),
            &no_stack_map,
        );
        assert_ne!(short, site);
        assert_eq!(registry.counts().truncated, 1);
    }
}
