//! Maps shared with userspace. Each is named by the constant of the same name in
//! helios_trace_common::map_name, which is how helios-trace/src/sys/loader.rs finds it.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, StackTrace},
};
use helios_trace_common::{
    CHAIN_RULE_ENTRIES, ChainKey, ChainRecord, ChainRules, EXEC_NOTICES_BYTES, EXEC_TIME_ENTRIES,
    FRAME_RULE_ENTRIES, FirstFrameHint, FrameRule, FrameRuleKey, GO_PROC_ENTRIES, GoOffsets,
    MAX_FIRST_FRAME_HINTS, MAX_SYSCALL_NR, PAIR_SLOTS, PYTHON_PROC_ENTRIES, PYTHON_THREAD_ENTRIES, PairSlot,
    PythonOffsets, PythonStack, STACK_ENTRIES, SavedRegs, StackMapping, TARGET_CGROUP_ENTRIES,
    TARGET_ENTRIES, TARGET_MATCH_ENTRIES, counter,
};

/// A map under the name `helios_trace_common::map_name::$name` holds. aya-ebpf's
/// `#[map(name = ...)]` takes a string literal only, not a constant, so the map takes its name
/// from its identifier and this checks at compile time that the shared constant exists and
/// says the same.
macro_rules! shared_map {
    ($(#[$doc:meta])* $name:ident: $ty:ty = $init:expr;) => {
        const _: () = assert!(crate::same_name(helios_trace_common::map_name::$name, stringify!($name)));
        $(#[$doc])*
        #[map]
        pub static $name: $ty = $init;
    };
}

shared_map! {
    /// Every record to userspace. Userspace resizes it at load time (`--ring-buffer-size`).
    EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);
}

shared_map! {
    /// A copy of each exec record's header, read by a thread of its own in userspace
    /// (helios-trace/src/observe/exec_lane.rs): it probes a new image for a CPython at once,
    /// while the reader of `EVENTS` may be busy with records ahead of the exec's.
    EXEC_NOTICES: RingBuf = RingBuf::with_byte_size(EXEC_NOTICES_BYTES, 0);
}

shared_map! {
    /// Frame-pointer user stacks of descriptor-creating calls, by id.
    STACKS: StackTrace = StackTrace::with_max_entries(STACK_ENTRIES, 0);
}

shared_map! {
    /// Processes to trace when `Settings::filter_targets` is set: tgid -> 1. Children join at
    /// fork.
    TARGETS: HashMap<u32, u32> = HashMap::with_max_entries(TARGET_ENTRIES, 0);
}

shared_map! {
    /// CPython processes whose Python frames are walked at their descriptor calls: tgid -> where
    /// their thread states and frames are (helios-trace/src/resolve/python/ fills it).
    PYTHON_PROCS: HashMap<u32, PythonOffsets> = HashMap::with_max_entries(PYTHON_PROC_ENTRIES, 0);
}

shared_map! {
    /// The thread state each thread of a CPython was last found to have: pid_tgid -> its address
    /// in the process (helios-trace-ebpf/src/python.rs, `remembered_thread`, checks it is still
    /// the thread's before it is used). An LRU, unlike the maps of what is open: forgetting a
    /// thread only costs its next call a search of the list.
    PYTHON_THREADS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(PYTHON_THREAD_ENTRIES, 0);
}

shared_map! {
    /// Go processes whose goroutines' creators are read at their descriptor calls: tgid ->
    /// where their Go version keeps it (helios-trace/src/resolve/goroutines.rs fills it; the
    /// kernel drops a process's entry at its exec and its exit).
    GO_PROCS: HashMap<u32, GoOffsets> = HashMap::with_max_entries(GO_PROC_ENTRIES, 0);
}

shared_map! {
    /// When each process last exec'd since tracing began, traced or not (for a traced one, its
    /// exec record's time): tgid -> boot-time ns, dropped at its exit. A `GO_PROCS` entry and
    /// the `FRAME_RULES` of a process are used only for the image they were found for.
    EXEC_TIMES: HashMap<u32, u64> = HashMap::with_max_entries(EXEC_TIME_ENTRIES, 0);
}

shared_map! {
    /// Unwind rules userspace learned from the stack windows it unwound
    /// (helios-trace/src/resolve/chains.rs), by process image and code address: the kernel walks
    /// a call chain with them and sends it instead of the window when every frame has one
    /// (stacks.rs `learned_chain`). Not preallocated: it takes memory for the rules of the
    /// processes alive (userspace takes a process's back at its exec and exit), not for its
    /// capacity; when full, new chains keep sending their windows.
    FRAME_RULES: HashMap<FrameRuleKey, FrameRule> = HashMap::with_max_entries(FRAME_RULE_ENTRIES, BPF_F_NO_PREALLOC);
}

shared_map! {
    /// Chains userspace unwound and taught with their rules (helios-trace/src/resolve/stacks.rs
    /// `learn`), by process image and first two addresses: a walk that finds its chain here
    /// takes each frame's rule from it while the addresses agree, one lookup for the chain
    /// instead of one in `FRAME_RULES` per frame. Taught with the rules learned from the same
    /// unwinding, taken back with them, and not preallocated, as they are; each teaching has a
    /// generation of its own, which the walk checks (stacks.rs `still_taught`).
    CHAIN_RULES: HashMap<ChainKey, ChainRules> = HashMap::with_max_entries(CHAIN_RULE_ENTRIES, BPF_F_NO_PREALLOC);
}

shared_map! {
    /// Each first frame's rule and how far the chains taught through it read the stack, the
    /// least of them (`FirstFrameHint`, by `first_frame_hint_slot`): the learned walk copies that
    /// much in one read (stacks.rs, `copy_ahead`) and finds its taught chain without a
    /// `FRAME_RULES` lookup (`confirmed_chain`). An array, written in place by userspace: a walk
    /// that reads a slot while it is written reads a wrong hint, never a freed element, and a
    /// wrong hint only copies more or less at once, or takes a first step no chain confirms,
    /// which the walk takes again with the `FRAME_RULES` rule, unless that is the same rule
    /// (`FirstFrameHint` says why that is safe).
    FIRST_FRAME_HINTS: Array<FirstFrameHint> = Array::with_max_entries(MAX_FIRST_FRAME_HINTS, 0);
}

shared_map! {
    /// Where a Python stack is assembled before it is copied into the ring buffer: the record is
    /// sent up to the frames walked, so its length is known only once the walk is done.
    PYTHON_SCRATCH: PerCpuArray<PythonStack> = PerCpuArray::with_max_entries(1, 0);
}

shared_map! {
    /// The state of the Python frame walk in progress (python.rs, `FrameWalk`): a map value, not
    /// a local, so that the walk's stack and the exit program's stay within the verifier's
    /// 512 bytes together ("combined stack size of 2 calls").
    PYTHON_WALK: PerCpuArray<crate::python::FrameWalk> = PerCpuArray::with_max_entries(1, 0);
}

shared_map! {
    /// The part of the stack a learned chain's walk reads, copied in chunks as the walk climbs
    /// (stacks.rs, `learned_chain`). Twice the largest window: the verifier bounds a copy's
    /// offset and its length separately, each up to the window.
    CHAIN_STACK: PerCpuArray<crate::stacks::StackCopy> = PerCpuArray::with_max_entries(1, 0);
}

shared_map! {
    /// The calling task's saved user registers, copied once per traced call (syscalls.rs,
    /// `saved_regs`) for the arguments, the goroutine and the stack to be read from.
    SAVED_REGS: PerCpuArray<SavedRegs> = PerCpuArray::with_max_entries(1, 0);
}

shared_map! {
    /// The stack mapping this CPU last looked up (stacks.rs, `stack_mapping_end`): for which
    /// task (its address and start time), mm and mapping sequence, and the mapping's start and
    /// end.
    STACK_MAPPING: PerCpuArray<StackMapping> = PerCpuArray::with_max_entries(1, 0);
}

shared_map! {
    /// The state of the learned chain's walk in progress (stacks.rs, `ChainWalk`): its
    /// `bpf_loop` callback takes it from here, and the count of bytes copied is here from the
    /// first frame. Loaded from a map, the walk's state is unknown to the verifier, so its
    /// states stay alike from frame to frame (with the count of bytes copied in a register, it
    /// told every count apart and passed its million instructions).
    CHAIN_WALK: PerCpuArray<crate::stacks::ChainWalk> = PerCpuArray::with_max_entries(1, 0);
}

shared_map! {
    /// Where a walk of received control messages is (syscalls.rs, `ScmWalk`), for its
    /// `bpf_loop` callback: loaded from a map, unknown to the verifier.
    SCM_WALK: PerCpuArray<crate::syscalls::ScmWalk> = PerCpuArray::with_max_entries(1, 0);
}

shared_map! {
    /// Cgroups (v2 ids) whose processes, and those of their descendants, are traced when
    /// `Settings::filter_cgroups` is set (`--cgroup`): id -> 1.
    TARGET_CGROUPS: HashMap<u64, u32> = HashMap::with_max_entries(TARGET_CGROUP_ENTRIES, 0);
}

shared_map! {
    /// `--comm` names (`helios_trace_common::comm_key`): name -> 1, when
    /// `Settings::filter_matches` has `filter_match::COMMS`.
    TARGET_COMMS: HashMap<[u8; 16], u32> = HashMap::with_max_entries(TARGET_MATCH_ENTRIES, 0);
}

shared_map! {
    /// `--uid` real uids: uid -> 1, when `Settings::filter_matches` has `filter_match::UIDS`.
    TARGET_UIDS: HashMap<u32, u32> = HashMap::with_max_entries(TARGET_MATCH_ENTRIES, 0);
}

shared_map! {
    /// When this CPU last forced a wake-up of the reader (emit::wakeup_flags), boot-time ns.
    LAST_WAKEUP: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
}

shared_map! {
    /// Each process's last creating calls and the pairs matched since (pairs.rs), in groups of
    /// `PAIR_WAYS` slots by tgid. An array: a slot is found without a hash or a lock, and taken with a
    /// compare-and-swap.
    PAIRS: Array<PairSlot> = Array::with_max_entries(PAIR_SLOTS, 0);
}

shared_map! {
    /// Where every learned walk's record is made (syscalls.rs, `try_fd_syscall_exit`): kept in
    /// `PAIRS`, compared there, or sent.
    PAIR_SCRATCH: PerCpuArray<ChainRecord> = PerCpuArray::with_max_entries(1, 0);
}

shared_map! {
    /// What to do per native syscall number (helios_trace_common::spec), written by userspace.
    SYSCALL_SPECS: Array<u32> = Array::with_max_entries(MAX_SYSCALL_NR, 0);
}

shared_map! {
    /// Per-CPU counters of things that went wrong in the kernel (helios_trace_common::counter).
    COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);
}
