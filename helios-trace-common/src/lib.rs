//! The records the kernel programs write into the ring buffer, the maps they share with
//! userspace and their names, the programs' load-time [`Settings`], and the constants both
//! sides must agree on.
//!
//! Every type is `#[repr(C)]`, `Copy`, and has no implicit padding (reserved fields are
//! explicit and zeroed), so the byte layout is the same in the BPF object and in the daemon.
//! On the userspace side (feature `user`) zerocopy's derives check that claim at compile time
//! and decode records from bytes without an unchecked cast.
//! The sizes are asserted at compile time: changing one is a wire-format change.
#![no_std]

use core::mem::size_of;

/// Record kinds. Explicit ids, never reused: a decoder built for an older layout must never
/// mistake a new record for an old one.
pub mod kind {
    /// A descriptor syscall completed: [`super::SyscallEvent`].
    pub const FD_SYSCALL: u32 = 1;
    /// `close(fd)` returned having closed `fd`: [`super::CloseEvent`]. (Once made at enter,
    /// with the same layout and meaning: the number is the process's no more.)
    pub const CLOSE: u32 = 2;
    /// A task was created (`task/task_newtask`): [`super::NewTaskEvent`].
    pub const NEW_TASK: u32 = 3;
    /// A process image was replaced (`sched/sched_process_exec`): [`super::ExecEvent`].
    pub const EXEC: u32 = 4;
    /// The last thread of a thread group exited (`sched/sched_process_exit`, group_dead):
    /// [`super::ExitEvent`].
    pub const EXIT: u32 = 5;
    /// A descriptor syscall completed, with the user registers and a window of the user stack
    /// (`--stacks dwarf`): a [`super::SyscallEvent`] whose `header.kind` is this id, then a
    /// [`super::UserStack`], then `UserStack::stack_len` bytes of stack. Variable length.
    pub const FD_SYSCALL_USER_STACK: u32 = 6;
    /// The Python call stack of the thread that made a descriptor syscall:
    /// [`super::PythonStack`], submitted just before the `FD_SYSCALL` / `FD_SYSCALL_USER_STACK`
    /// record it belongs to, with the same `tid` and `ts_ns`.
    pub const PYTHON_STACK: u32 = 7;
    /// A descriptor syscall completed, with its user call chain walked in the kernel by rules
    /// userspace learned (`FRAME_RULES`, `--stacks dwarf`): a [`super::SyscallEvent`] whose
    /// `header.kind` is this id, then a [`super::LearnedChain`]. With
    /// [`super::chain_flags::SHADOW`] it is not an event of its own: the
    /// `FD_SYSCALL_USER_STACK` record that follows (same `tid` and `ts_ns`) is, and userspace
    /// compares the two chains.
    pub const FD_SYSCALL_CHAIN: u32 = 8;
    /// libuv initialised a TCP handle (`uv_tcp_init`, `uv_tcp_init_ex`, a uprobe): a
    /// [`super::HandleEvent`] with the caller's frame-pointer stack id (`--stacks fp`).
    pub const LIBUV_TCP_HANDLE: u32 = 9;
    /// As [`LIBUV_TCP_HANDLE`] with `--stacks dwarf`: a [`super::HandleEvent`], then a
    /// [`super::UserStack`], then `UserStack::stack_len` bytes of stack. Variable length.
    pub const LIBUV_TCP_HANDLE_USER_STACK: u32 = 10;
    /// libuv's `uv_tcp_connect` was entered for a handle: a [`super::HandleEvent`]. The
    /// socket(2) the thread makes before [`LIBUV_TCP_CONNECT_RETURN`] is that handle's.
    pub const LIBUV_TCP_CONNECT: u32 = 11;
    /// `uv_tcp_connect` returned (a uretprobe): a [`super::HandleEvent`] whose handle is 0.
    pub const LIBUV_TCP_CONNECT_RETURN: u32 = 12;
}

/// Common start of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::KnownLayout, zerocopy::Immutable)
)]
pub struct EventHeader {
    /// One of [`kind`].
    pub kind: u32,
    /// Process id (thread-group id) of the task that caused the event.
    pub tgid: u32,
    /// Thread id of that task.
    pub tid: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// `bpf_ktime_get_boot_ns()`: CLOCK_BOOTTIME, so ages stay right across suspend. A close's
    /// record is not timed ([`CloseEvent`], [`CLOSE_NOT_TIMED`]).
    pub ts_ns: u64,
}
const _: () = assert!(size_of::<EventHeader>() == 24);

/// Length of the path buffer in a [`SyscallEvent`]; longer paths are truncated and flagged.
pub const PATH_LEN: usize = 256;
/// How many descriptors one record can carry besides the return value (pipe / socketpair
/// pairs, SCM_RIGHTS). More are flagged as truncated; reconciliation with /proc heals them.
pub const MAX_AUX_FDS: usize = 16;
/// `stack_id` when no stack was asked for.
pub const STACK_NOT_CAPTURED: i32 = i32::MIN;

/// Values of [`Settings::user_stack_mode`]: how the kernel programs capture the user stack of a
/// descriptor-creating call.
pub mod stack_mode {
    /// No user stack.
    pub const NONE: u32 = 0;
    /// Frame-pointer walk into the `STACKS` map (`SyscallEvent::stack_id`).
    pub const FP: u32 = 1;
    /// Registers and a stack window in the record ([`super::UserStack`]), unwound in userspace.
    pub const DWARF: u32 = 2;
}

/// Words of [`UserStack::regs`]: enough for every supported architecture's user registers.
pub const USER_REGS_WORDS: usize = 34;

/// Words of the saved registers the kernel programs copy at a traced call: every index of
/// [`regs_x86_64`] and [`regs_aarch64`] (aarch64's `syscallno` is the highest) lies below it.
pub const SAVED_REGS_WORDS: usize = 36;
/// The copy of the saved registers, indexed as [`regs_x86_64`] or [`regs_aarch64`] say.
pub type SavedRegs = [u64; SAVED_REGS_WORDS];
const _: () = assert!(regs_aarch64::SYSCALLNO < SAVED_REGS_WORDS && regs_x86_64::WORDS <= SAVED_REGS_WORDS);

/// Largest stack window a [`UserStack`] can carry (`--stack-window`).
pub const MAX_STACK_WINDOW: u32 = 16 * 1024;

/// Where the registers sit in [`UserStack::regs`] on x86_64: the kernel's `struct pt_regs`
/// (arch/x86/include/asm/ptrace.h: r15 r14 r13 r12 bp bx r11 r10 r9 r8 ax cx dx si di
/// orig_ax ip cs flags sp ss).
pub mod regs_x86_64 {
    pub const WORDS: usize = 21;
    pub const BP: usize = 4;
    pub const IP: usize = 16;
    pub const SP: usize = 19;
    /// The syscall number: `ax` holds the result by the time the call returns, `orig_ax` keeps
    /// the number (arch/x86/entry/syscall_64.c, do_syscall_64).
    pub const ORIG_AX: usize = 15;
    /// The six arguments, in order (di si dx r10 r8 r9: arch/x86/entry/entry_64.S, the
    /// syscall ABI); nothing overwrites them before the call returns, so they are still there
    /// at `sys_exit` for every call traced here.
    pub const SYSCALL_ARGS: [usize; 6] = [14, 13, 12, 7, 9, 8];
    /// r14: the running goroutine (`g`) in Go's register ABI on amd64 (Go's
    /// src/cmd/compile/abi-internal.md, "amd64 architecture": R14 is the current goroutine),
    /// which Go's syscall stub keeps at the `syscall` instruction.
    pub const GO_G: usize = 1;
}

/// Where the registers sit in [`UserStack::regs`] on aarch64: the `user_pt_regs` that starts
/// the kernel's `struct pt_regs` (arch/arm64/include/asm/ptrace.h: x0..x30, sp, pc, pstate).
pub mod regs_aarch64 {
    pub const WORDS: usize = 34;
    pub const FP: usize = 29;
    pub const LR: usize = 30;
    pub const SP: usize = 31;
    pub const PC: usize = 32;
    /// `orig_x0`, after `user_pt_regs` in `struct pt_regs`: x0 holds the result by the time
    /// the call returns, orig_x0 keeps the first argument (arch/arm64/kernel/syscall.c).
    pub const ORIG_X0: usize = 34;
    /// The word whose low 32 bits are `syscallno` (s32, after orig_x0).
    pub const SYSCALLNO: usize = 35;
    /// The six arguments as they are at `sys_exit`: orig_x0, then x1..x5.
    pub const SYSCALL_ARGS: [usize; 6] = [34, 1, 2, 3, 4, 5];
    /// x28: the running goroutine (`g`) in Go's register ABI on arm64 (abi-internal.md).
    pub const GO_G: usize = 28;
}

/// Bits of [`UserStack::flags`].
pub mod user_stack_flags {
    /// The copy ended before the configured window was full: at the top of the stack's
    /// mapping (normal for shallow stacks), or, when part of the window was not there (the
    /// untouched gap at the top of a main thread's stack, a page swapped out), at the last
    /// page boundary before it.
    pub const SHORT: u32 = 1 << 0;
    /// The instruction pointer is a function's first instruction (a uprobe at its entry), not
    /// the instruction after a syscall: userspace unwinds from it as it is, and looks its
    /// symbol up there rather than at the byte before.
    pub const AT_ENTRY: u32 = 1 << 1;
}

/// What a user-space unwinder (or an interpreter-frame reader) needs of a thread at one
/// moment: its user-mode registers and a window of its stack from the stack pointer upward.
/// The thread is the record header's `tid`. On the wire it follows the record it belongs to
/// (see [`kind::FD_SYSCALL_USER_STACK`]) and is itself followed by `stack_len` bytes: the
/// user memory `[sp, sp + stack_len)`, where sp is the architecture's stack-pointer word of
/// `regs`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::KnownLayout, zerocopy::Immutable)
)]
pub struct UserStack {
    /// The user registers as the kernel saved them at syscall entry (`bpf_task_pt_regs`), in
    /// the kernel's order for the running architecture ([`regs_x86_64`], [`regs_aarch64`]);
    /// words past the architecture's count are unspecified.
    pub regs: [u64; USER_REGS_WORDS],
    /// Bytes of stack that follow; at most the window asked for.
    pub stack_len: u32,
    /// [`user_stack_flags`].
    pub flags: u32,
}
const _: () = assert!(size_of::<UserStack>() == 280);

/// Frames of a call chain the kernel walks with learned rules at most; a deeper chain takes
/// the stack window (userspace unwinds up to 128).
pub const MAX_CHAIN_FRAMES: usize = 64;
/// Capacity of the `FRAME_RULES` map (allocated as rules are taught; a chain whose rules do not
/// fit keeps sending its window: slower, not wrong).
pub const FRAME_RULE_ENTRIES: u32 = 256 * 1024;

/// Key of the `FRAME_RULES` map: one code address of one process image.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::KnownLayout, zerocopy::Immutable)
)]
pub struct FrameRuleKey {
    pub tgid: u32,
    /// 1 for the innermost frame (`address` is the instruction pointer, looked up as is), 0
    /// for a caller's (`address` is a return address, looked up one byte before it).
    pub first: u32,
    /// The image: its exec record's time, as in [`GoOffsets::exec_ns`] (`EXEC_TIMES`).
    pub exec_ns: u64,
    pub address: u64,
}
const _: () = assert!(size_of::<FrameRuleKey>() == 24);

/// [`FrameRule::flags`].
pub mod frame_rule {
    /// The caller's stack pointer (the CFA) is the frame pointer plus `cfa_offset` (else the
    /// stack pointer plus it).
    pub const CFA_FROM_BP: u32 = 1 << 0;
    /// The caller's frame pointer was saved at `bp_offset` from the frame's base, the register
    /// the CFA is taken from (else it is unchanged): resolve/chains.rs `step`, and the kernel's
    /// walk, read it there.
    pub const BP_SAVED: u32 = 1 << 1;
    /// The outermost frame: the chain ends here.
    pub const END: u32 = 1 << 2;
}

/// Value of the `FRAME_RULES` map: how to step from a frame at the key's address to its caller
/// (the return address is at CFA - 8; helios-trace/src/resolve/chains.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::KnownLayout, zerocopy::Immutable)
)]
pub struct FrameRule {
    /// [`frame_rule`] bits.
    pub flags: u32,
    pub cfa_offset: i32,
    pub bp_offset: i32,
    /// Zero.
    pub reserved: u32,
}
const _: () = assert!(size_of::<FrameRule>() == 16);

/// Frames of a chain `CHAIN_RULES` keeps the rules of: a deeper chain's frames past these are
/// walked with a `FRAME_RULES` lookup each.
pub const MAX_CACHED_CHAIN_FRAMES: usize = 32;
/// Capacity of the `CHAIN_RULES` map (allocated as chains are taught, each from the kernel's
/// 1 KiB slab: about 4 MiB full; a chain that does not fit is walked with a lookup per frame:
/// slower, not wrong).
pub const CHAIN_RULE_ENTRIES: u32 = 4 * 1024;

/// Key of the `CHAIN_RULES` map: a chain's first two frames in one process image.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::KnownLayout, zerocopy::Immutable)
)]
pub struct ChainKey {
    pub tgid: u32,
    /// Zero.
    pub reserved: u32,
    /// The image, as in [`FrameRuleKey::exec_ns`].
    pub exec_ns: u64,
    /// The instruction pointer.
    pub pc: u64,
    /// The first return address.
    pub caller: u64,
}
const _: () = assert!(size_of::<ChainKey>() == 32);

/// A chain userspace unwound, with each frame's rule: the rules it learned for those addresses
/// (and taught `FRAME_RULES`), in one lookup instead of one per frame. The kernel takes a
/// frame's rule from it while the chain it walks has the same addresses so far.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::KnownLayout, zerocopy::Immutable)
)]
pub struct ChainRules {
    /// Which teaching this is: never the same twice in a session (userspace counts them from
    /// 1). The kernel reads it again after each frame it takes from here: an entry taken back
    /// or replaced, and its memory reused for another (the kernel's hash maps reuse freed
    /// elements at once), holds another generation.
    pub generation: u64,
    /// Its own key, which the kernel checks after reading the generation: an element reused
    /// between the lookup and that read holds another key.
    pub key: ChainKey,
    /// Frames that follow; at most [`MAX_CACHED_CHAIN_FRAMES`].
    pub depth: u32,
    /// Zero.
    pub reserved: u32,
    /// The instruction pointer, then return addresses, innermost first.
    pub addresses: [u64; MAX_CACHED_CHAIN_FRAMES],
    /// The rule of each frame, as `FRAME_RULES` keys it by that frame's address.
    pub rules: [FrameRule; MAX_CACHED_CHAIN_FRAMES],
}
const _: () = assert!(size_of::<ChainRules>() == 48 + 24 * MAX_CACHED_CHAIN_FRAMES);

/// Slots of the `FIRST_FRAME_HINTS` array: 2^[`FIRST_FRAME_HINT_BITS`], 1.5 MiB, room for a
/// node's processes' syscall instructions (a few each) with few of them sharing a slot.
pub const FIRST_FRAME_HINT_BITS: u32 = 15;
pub const MAX_FIRST_FRAME_HINTS: u32 = 1 << FIRST_FRAME_HINT_BITS;

/// Value of the `FIRST_FRAME_HINTS` array: what the kernel's learned walk may start from at one
/// first frame (a syscall's instruction in a process image, as [`FrameRuleKey`] with `first` 1
/// keys its rule), so that a call through a chain taught there touches one hash map element
/// (its `CHAIN_RULES` chain) instead of two (helios-trace-ebpf/src/stacks.rs, `learned_chain`):
/// - the frame's rule, to find the caller the chain is keyed by: the kernel walks on from that
///   step only when that chain's own rule for the frame is this one (`confirmed_chain`), and
///   else takes the step again with the `FRAME_RULES` rule (BENCHMARKS.md, "The first frame's
///   rule from its hint");
/// - how many bytes of the stack, from the stack pointer up, the walks of the chains taught
///   through the frame read, the least of them (helios-trace/src/resolve/chains.rs, `learn`;
///   resolve/stacks.rs, `narrowest_extent`): the walk copies that much in one read before its
///   first step instead of by the page as it climbs (stacks.rs, `copy_ahead`).
///
/// A hint: in an array, written in place by userspace while a walk may read it, so a read may
/// see half of one and half of another, or another frame's in the same slot
/// ([`first_frame_hint_slot`]); whatever it says, the copy stays within the bounds the walk
/// reads in, one that fails copies nothing, and a step taken with a rule the taught chain
/// does not confirm is taken again with the `FRAME_RULES` rule, unless that is the same rule:
/// it changes what is copied at once, never a word the walk goes on with. Its key is checked so that it is mostly the
/// call's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::KnownLayout, zerocopy::Immutable)
)]
pub struct FirstFrameHint {
    /// The first frame's rule's key (`first` 1: the syscall's instruction).
    pub first: FrameRuleKey,
    /// Its rule, as `FRAME_RULES` holds it.
    pub rule: FrameRule,
    /// Bytes from the stack pointer; 0: none known.
    pub stack_bytes: u32,
    /// Zero.
    pub reserved: u32,
}
const _: () = assert!(size_of::<FirstFrameHint>() == 48);

/// The `FIRST_FRAME_HINTS` slot of a first frame (its rule's key), below
/// [`MAX_FIRST_FRAME_HINTS`]: the top bits of a multiplicative hash (Knuth's, by 2^64 over the
/// golden ratio), a few instructions the kernel and userspace compute alike. Two frames in one
/// slot take turns: the later one taught holds it.
#[inline(always)]
pub const fn first_frame_hint_slot(first: &FrameRuleKey) -> u32 {
    let mixed = first.address ^ first.exec_ns.rotate_left(29) ^ ((first.tgid as u64) << 40);
    (mixed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - FIRST_FRAME_HINT_BITS)) as u32
}

/// [`LearnedChain::flags`].
pub mod chain_flags {
    /// Shadow mode: the stack window follows in a record of its own, to be compared.
    pub const SHADOW: u32 = 1 << 0;
    /// The rule of every frame past the first came from a chain of `CHAIN_RULES` (so never
    /// for a chain of one frame, nor of more than [`super::MAX_CACHED_CHAIN_FRAMES`]).
    pub const CACHED: u32 = 1 << 1;
    /// A record of a [`super::PairSlot`]: before its own open, the record stands for
    /// `header.reserved` calls exactly like it (but for their numbers and times) whose
    /// descriptors were closed before anything else of the process was recorded (matched in
    /// the kernel, not sent).
    pub const PAIRED: u32 = 1 << 2;
    /// With [`PAIRED`]: the record's own open was closed too (it stands for its pairs alone).
    pub const PAIRS_ONLY: u32 = 1 << 3;
    /// With [`PAIRED`]: every pair was at one number, the record's `aux_fds[0]` (a call that
    /// makes one descriptor has no other use for it): userspace knows which number they touched.
    pub const PAIRS_AT_ONE_FD: u32 = 1 << 4;
}

/// The record of a `kind::FD_SYSCALL_CHAIN`: a descriptor call and the chain the kernel walked
/// for it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::KnownLayout, zerocopy::Immutable)
)]
pub struct ChainRecord {
    pub event: SyscallEvent,
    pub chain: LearnedChain,
}
const _: () = assert!(size_of::<ChainRecord>() == 960);

/// Slots of `PAIRS`: what the kernel keeps of a process's last creating calls so that their
/// closes, when they come first, are matched there and neither call is sent
/// (helios-trace-ebpf/src/pairs.rs). In groups of [`PAIR_WAYS`], one group per process at a
/// time (by its tgid).
pub const PAIR_SLOTS: u32 = 1024;

/// Slots of one process's group: a server holds its connections' descriptors while it opens a
/// file for one and closes both, and a process's calls of two kinds kept in one slot would send
/// each other out. Four: nginx under four clients at once (`ab -c 4`) had 8,747 of its 10,000
/// creating calls matched, against 4,303 with two slots (8,854 once the engine's short drains
/// stopped asking for what is kept; BENCHMARKS.md, "Four slots a process"); eight made the exit
/// program 271,026 instructions to verify against 193,230 for four, before `PairSlot::key` had
/// the whole comparison made with one slot only (166,541 since).
pub const PAIR_WAYS: u32 = 4;
const _: () = assert!(PAIR_SLOTS.is_multiple_of(PAIR_WAYS));

/// A number no descriptor has (`sysctl_nr_open` is at most `sysctl_nr_open_max`,
/// 2,147,483,584 on 64-bit: fs/file.c): the tracer
/// closes it to have the kernel send what `PAIRS` keeps (close returns `-EBADF`, and the exit
/// program knows the tracer's tgid), before it looks at the ring for every record made before
/// a moment.
pub const PAIRS_FLUSH_FD: i32 = i32::MAX - 1;

/// One slot of `PAIRS`. `state` is 0 for a slot never used, else the owner's tgid in the high
/// half and, below, a sequence number shifted by one over the busy bit ([`pair_state`]):
/// every other field changes only while a program holds the slot busy, taken with a
/// compare-and-swap from the value it saw, so what it saw is what it changes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::KnownLayout, zerocopy::Immutable)
)]
pub struct PairSlot {
    pub state: u64,
    /// Calls like `record` whose descriptors were closed, not yet sent.
    pub pairs: u32,
    /// The descriptor `record`'s call made, open and not yet sent; -1 when none.
    pub open_fd: i32,
    /// When that call returned (its record's time once sent).
    pub open_ts_ns: u64,
    /// The number of the first of `pairs`.
    pub pair_fd: i32,
    /// 1 when a later one of `pairs` had another number.
    pub pair_fds_differ: u32,
    /// A few words of `record` folded into one (its thread, its call, the chain's depth and
    /// first callers):
    /// which slot of a process's group a new call may be like is looked for by it, so that the
    /// whole comparison is made with one slot only.
    pub key: u64,
    /// The last call sent or kept: what the next calls are compared with.
    pub record: ChainRecord,
}
const _: () = assert!(size_of::<PairSlot>() == 1000);

/// [`PairSlot::state`]'s parts.
pub mod pair_state {
    /// A program changes the slot.
    pub const BUSY: u64 = 1;
    /// The owner's tgid.
    pub const fn owner(state: u64) -> u32 {
        (state >> 32) as u32
    }
    /// The state a holder leaves: its tgid, the sequence moved on, not busy.
    pub const fn released(tgid: u32, seen: u64) -> u64 {
        ((tgid as u64) << 32) | (((seen as u32).wrapping_add(2) & !(BUSY as u32)) as u64)
    }
}

/// A user call chain the kernel walked with learned rules: the instruction pointer, then
/// return addresses, innermost first (what userspace's unwinder would have made of the
/// stack window). Follows the [`SyscallEvent`] of a [`kind::FD_SYSCALL_CHAIN`] record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::KnownLayout, zerocopy::Immutable)
)]
pub struct LearnedChain {
    /// Addresses that follow; at most [`MAX_CHAIN_FRAMES`].
    pub depth: u32,
    /// [`chain_flags`].
    pub flags: u32,
    pub addresses: [u64; MAX_CHAIN_FRAMES],
}
const _: () = assert!(size_of::<LearnedChain>() == 520);

impl LearnedChain {
    /// The addresses the kernel walked, innermost first.
    pub fn chain(&self) -> &[u64] {
        let depth = (self.depth as usize).min(MAX_CHAIN_FRAMES);
        &self.addresses[..depth]
    }
}

/// Python frames walked per call at most; deeper stacks are cut (flagged).
pub const MAX_PYTHON_FRAMES: usize = 32;
/// Thread states looked at per call at most to find the calling thread's, when the kernel does
/// not remember the thread's (helios-trace-ebpf/src/python.rs, `remembered_thread`).
pub const MAX_PYTHON_THREADS: u32 = 64;
/// Capacity of the `PYTHON_PROCS` map: CPython processes whose frames are walked.
pub const PYTHON_PROC_ENTRIES: u32 = 4096;
/// Capacity of the `PYTHON_THREADS` map: threads whose thread state the kernel remembers (an
/// LRU: a thread it forgot is searched for again).
pub const PYTHON_THREAD_ENTRIES: u32 = 16 * 1024;
/// Most bytes of one frame the kernel reads ([`PythonOffsets::frame_read`]).
pub const MAX_PYTHON_FRAME_READ: u32 = 128;
/// Most bytes of one thread state the kernel reads ([`PythonOffsets::tstate_read`]).
pub const MAX_PYTHON_TSTATE_READ: u32 = 256;
/// Most bytes the kernel reads at once below a frame, for the frames under it
/// ([`PythonOffsets::frame_window`]).
pub const MAX_PYTHON_FRAME_WINDOW: u32 = 1024;
/// An offset field of [`PythonOffsets`] that does not apply to the interpreter's version.
pub const PY_NO_OFFSET: u32 = u32::MAX;

/// Value of the `PYTHON_PROCS` map (key: tgid): where a CPython process keeps its thread
/// states and frames, found and checked by userspace (helios-trace/src/resolve/python/). All
/// offsets are in bytes from the start of the named struct.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::KnownLayout, zerocopy::Immutable)
)]
pub struct PythonOffsets {
    /// Address, in the process, of `_PyRuntime.interpreters.head` (a `PyInterpreterState *`).
    pub interpreters_head: u64,
    /// `PyInterpreterState.threads.head` (3.10: `tstate_head`).
    pub threads_head: u32,
    /// `PyThreadState.prev` (0 before 3.13: the struct opens with it).
    pub tstate_prev: u32,
    /// `PyThreadState.next`.
    pub tstate_next: u32,
    /// `PyThreadState.interp` (16 before 3.13: it follows `prev` and `next`).
    pub tstate_interp: u32,
    /// `PyThreadState.native_thread_id` (3.11+); on 3.10 `PyThreadState.thread_id`, the
    /// `pthread_t`, through which `pthread_tid` leads to the kernel tid.
    pub tstate_thread_id: u32,
    /// Offset of the kernel tid (`pid_t`) in glibc's `struct pthread`; [`PY_NO_OFFSET`] when
    /// `tstate_thread_id` is the native id itself.
    pub pthread_tid: u32,
    /// `PyThreadState.frame` (3.10), `.cframe` (3.11, 3.12), `.current_frame` (3.13).
    pub tstate_frame: u32,
    /// `_PyCFrame.current_frame` (3.11, 3.12: `tstate_frame` points to a `_PyCFrame`), else
    /// [`PY_NO_OFFSET`].
    pub cframe_frame: u32,
    /// `PyFrameObject.f_back` / `_PyInterpreterFrame.previous`.
    pub frame_previous: u32,
    /// `f_code` / `f_executable`.
    pub frame_code: u32,
    /// `f_lasti` (3.10, an int) / `prev_instr` (3.11, 3.12) / `instr_ptr` (3.13).
    pub frame_instr: u32,
    /// `_PyInterpreterFrame.owner` (a char), or [`PY_NO_OFFSET`] (3.10).
    pub frame_owner: u32,
    /// Frames whose owner is this or above are not Python code, skipped: the entry "shim"
    /// frames (`FRAME_OWNED_BY_CSTACK` = 3 on 3.12 and 3.13; `FRAME_OWNED_BY_INTERPRETER` = 3
    /// and `FRAME_OWNED_BY_CSTACK` = 4 on 3.14).
    pub owner_skip: u32,
    /// Bytes of a frame read at once, covering every frame field above (at most
    /// [`MAX_PYTHON_FRAME_READ`]): one read per frame rather than one per field.
    pub frame_read: u32,
    /// Bytes of a thread state read at once, covering `tstate_prev`, `tstate_next`,
    /// `tstate_interp`, `tstate_thread_id` and `tstate_frame` (at most
    /// [`MAX_PYTHON_TSTATE_READ`]): one read per thread looked at.
    pub tstate_read: u32,
    /// Bytes read at once ending at a frame's `frame_read` (at most
    /// [`MAX_PYTHON_FRAME_WINDOW`], never below the frame's page): the frames under it that lie
    /// in those bytes need no read of their own. 3.11+ keep a thread's frames one under the
    /// other in its data stack (Include/internal/pycore_frame.h, `_PyThreadState_PushFrame`);
    /// 0 (3.10, whose frames are heap objects): `frame_read` bytes per frame.
    pub frame_window: u32,
    /// The process's pid namespace (`stat /proc/PID/ns/pid`: the nsfs device, in the kernel's
    /// `dev_t` encoding, and the inode). CPython's thread states hold thread ids of that
    /// namespace; the kernel program gets the calling thread's with
    /// `bpf_get_ns_current_pid_tgid(pidns_dev, pidns_ino)`. `pidns_ino` 0: the kernel's own tid
    /// (the initial pid namespace's, where the process is in that one).
    pub pidns_dev: u64,
    pub pidns_ino: u64,
}
const _: () = assert!(size_of::<PythonOffsets>() == 88);

/// Capacity of the `GO_PROCS` map: Go processes whose goroutines' creators are read.
pub const GO_PROC_ENTRIES: u32 = 16 * 1024;

/// Value of the `GO_PROCS` map (key: tgid): where the Go version of a process's executable
/// keeps a goroutine's creator in `runtime.g` (helios-trace/src/resolve/goroutines.rs).
/// `runtime.g` opens with `stack` {lo, hi} in every Go version, which is how the kernel
/// checks that the goroutine register holds the running goroutine.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::KnownLayout, zerocopy::Immutable)
)]
pub struct GoOffsets {
    /// `runtime.g.gopc`: the pc of the `go` statement that created the goroutine.
    pub gopc: u32,
    /// Zero.
    pub reserved: u32,
    /// The image these offsets belong to: its exec record's time (`EXEC_TIMES`), 0 for an
    /// image exec'd before tracing began. The kernel reads nothing while the process's latest
    /// exec is another: offsets userspace found for one image can reach the map after the
    /// process exec'd the next.
    pub exec_ns: u64,
}
const _: () = assert!(size_of::<GoOffsets>() == 16);

/// Capacity of the `EXEC_TIMES` map: live processes that exec'd since tracing began, traced
/// or not.
pub const EXEC_TIME_ENTRIES: u32 = 64 * 1024;

/// One Python frame as the kernel saw it: the code object and the instruction pointer (3.11+)
/// or instruction index (`f_lasti`, 3.10) in it. Userspace names them from process memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::KnownLayout, zerocopy::Immutable)
)]
pub struct PythonFrame {
    pub code: u64,
    pub instr: u64,
}
const _: () = assert!(size_of::<PythonFrame>() == 16);

/// Bits of [`PythonStack::flags`].
pub mod python_flags {
    /// More frames than [`super::MAX_PYTHON_FRAMES`]: the outermost are missing.
    pub const TRUNCATED: u32 = 1 << 0;
    /// No thread state of the process has the calling thread's id (a thread CPython does not
    /// know, or more than [`super::MAX_PYTHON_THREADS`] threads before its own in the list
    /// when the kernel does not remember its thread state).
    pub const NO_THREAD: u32 = 1 << 1;
    /// A read of the interpreter's memory failed mid-walk.
    pub const READ_FAILED: u32 = 1 << 2;
    /// The runtime has no interpreter yet (`interpreters.head` is NULL, or its page not written
    /// yet, so it does not read): it is still starting and has run no Python code, so there are
    /// no frames to miss.
    pub const NOT_STARTED: u32 = 1 << 3;
    /// The calling thread's id in the process's pid namespace could not be had (the namespace
    /// given is not the thread's).
    pub const NAMESPACE: u32 = 1 << 4;
}

/// The Python frames of the calling thread, innermost first ([`kind::PYTHON_STACK`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::KnownLayout, zerocopy::Immutable)
)]
pub struct PythonStack {
    /// Sent only up to its `frame_count` frames ([`PYTHON_STACK_FRAMES_OFFSET`]): most stacks
    /// are a few frames, and the whole array is 512 bytes to copy and read per call.
    pub header: EventHeader,
    /// Valid entries of `frames`.
    pub frame_count: u32,
    /// [`python_flags`].
    pub flags: u32,
    pub frames: [PythonFrame; MAX_PYTHON_FRAMES],
}
const _: () = assert!(size_of::<PythonStack>() == 544);
/// Where a [`PythonStack`]'s frames start: a record is this long plus its frames.
pub const PYTHON_STACK_FRAMES_OFFSET: usize = core::mem::offset_of!(PythonStack, frames);
const _: () = assert!(PYTHON_STACK_FRAMES_OFFSET == 32);

/// Bits of [`SyscallEvent::flags`].
pub mod syscall_flags {
    /// The path did not fit in [`super::PATH_LEN`] bytes.
    pub const PATH_TRUNCATED: u32 = 1 << 0;
    /// The path could not be read from user memory.
    pub const PATH_UNREADABLE: u32 = 1 << 1;
    /// More descriptors arrived than [`super::MAX_AUX_FDS`], a message or control message could
    /// not be read, or the walk did not reach them all (more than 8 messages, or more control
    /// messages than its steps: helios-trace-ebpf/src/syscalls.rs, `received_nothing`): the aux
    /// list may be incomplete.
    pub const AUX_TRUNCATED: u32 = 1 << 2;
    /// `deref` holds the value the spec asked to read through an argument.
    pub const DEREF_VALID: u32 = 1 << 3;
}

/// A completed descriptor syscall: its number, raw arguments and result, plus what had to be
/// read from user memory while it was still there. Userspace gives it meaning (decode.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::KnownLayout, zerocopy::Immutable)
)]
pub struct SyscallEvent {
    pub header: EventHeader,
    /// Native syscall number of the running architecture.
    pub nr: u32,
    /// User stack id in the `STACKS` map; negative errno when capture failed;
    /// [`STACK_NOT_CAPTURED`] when not asked for.
    pub stack_id: i32,
    /// The syscall's return value.
    pub ret: i64,
    /// The six raw syscall arguments, as the task's saved registers hold them at exit.
    pub args: [u64; 6],
    /// A u64 read through a pointer argument (e.g. `open_how.flags` of openat2).
    pub deref: u64,
    /// Descriptors written to user memory: the pair of pipe/pipe2/socketpair, or the
    /// descriptors received through SCM_RIGHTS.
    pub aux_fds: [i32; MAX_AUX_FDS],
    /// How many of `aux_fds` are valid.
    pub aux_count: u32,
    /// Bytes of `path` that are valid (no NUL).
    pub path_len: u32,
    /// [`syscall_flags`].
    pub flags: u32,
    /// For a call of [`spec::INODE_MODE`]: the `i_mode` of the file installed at the returned
    /// number when the call returned (include/uapi/linux/stat.h: its type in `S_IFMT`), which
    /// says what an open by path opened (a directory, a FIFO, a device); 0 when not read. (Zero
    /// before: it had held the kernel stack id of `--kernel-stacks`, removed.)
    pub mode: u32,
    pub path: [u8; PATH_LEN],
    /// In a Go process of `GO_PROCS`: `gopc` of the goroutine that made the call, the
    /// address in the function whose `go` statement created it, read when the goroutine
    /// register is a `g` whose stack holds the call's stack pointer; 0 when not read.
    pub creator_pc: u64,
}
const _: () = assert!(size_of::<SyscallEvent>() == 440);

/// `close(fd)` returned, other than with `-EBADF` (nothing was open). Linux releases the
/// descriptor even when close reports an error (fs/open.c: the fd is removed from the table
/// before the file is flushed). `header.ts_ns` is [`CLOSE_NOT_TIMED`]: the clock read was about
/// 70 ns of each close here (BENCHMARKS.md, "The close's clock"), and userspace stamps the
/// record with the time it took it from the ring instead, which is later than the close.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::KnownLayout, zerocopy::Immutable)
)]
pub struct CloseEvent {
    pub header: EventHeader,
    pub fd: i32,
    /// [`close_flags`]. (Reserved, 0, while closes were seen at enter: the layout is the same.)
    pub flags: u32,
}
const _: () = assert!(size_of::<CloseEvent>() == 32);

/// [`CloseEvent`]'s `header.ts_ns`: the kernel does not read the clock for a close.
pub const CLOSE_NOT_TIMED: u64 = 0;

/// [`CloseEvent::flags`]: what the close's exit saw of its number, which the kernel released
/// before the close returned (fs/open.c, `close`: `file_close_fd` first), so that another
/// thread may have been given it and its record be ahead of this one in the ring.
pub mod close_flags {
    /// At the exit a descriptor was installed at the number again
    /// (`current->files->fdt->fd[fd]` not NULL): this close's record may be behind that
    /// descriptor's.
    pub const NUMBER_TAKEN: u32 = 1 << 0;
    /// Not read: this kernel's offsets are not known ([`super::KernelOffsets`]) or the read
    /// failed.
    pub const NUMBER_UNREAD: u32 = 1 << 1;
}

/// A libuv TCP handle's step (the `kind::LIBUV_*` records), seen by uprobes in the library
/// or executable that has libuv (helios-trace-ebpf/src/libuv.rs): Node.js makes a connection's
/// socket on a later tick than the call that asked for it, and the handle, created within that
/// call, is what ties the two.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::KnownLayout, zerocopy::Immutable)
)]
pub struct HandleEvent {
    pub header: EventHeader,
    /// The `uv_tcp_t *` (0 in a return record).
    pub handle: u64,
    /// As [`SyscallEvent::stack_id`].
    pub stack_id: i32,
    pub reserved: u32,
}
const _: () = assert!(size_of::<HandleEvent>() == 40);

/// `task/task_newtask`: fired in the parent while `copy_process` creates the child.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::KnownLayout, zerocopy::Immutable)
)]
pub struct NewTaskEvent {
    pub header: EventHeader,
    /// The new task's id (its tgid too, unless CLONE_THREAD).
    pub child_tid: u32,
    pub reserved: u32,
    pub clone_flags: u64,
    pub comm: [u8; 16],
}
const _: () = assert!(size_of::<NewTaskEvent>() == 56);

/// Length of the filename buffer of an [`ExecEvent`].
pub const EXEC_FILENAME_LEN: usize = 256;

/// `sched/sched_process_exec`: the image was replaced and close-on-exec descriptors are gone.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::KnownLayout, zerocopy::Immutable)
)]
pub struct ExecEvent {
    pub header: EventHeader,
    /// The thread that called execve; differs from tgid when a non-leader thread exec'd.
    pub old_tid: u32,
    pub filename_len: u32,
    pub comm: [u8; 16],
    pub filename: [u8; EXEC_FILENAME_LEN],
}
const _: () = assert!(size_of::<ExecEvent>() == 304);

/// The whole thread group exited; its descriptor table is gone.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::KnownLayout, zerocopy::Immutable)
)]
pub struct ExitEvent {
    pub header: EventHeader,
}
const _: () = assert!(size_of::<ExitEvent>() == 24);

/// What the kernel programs do for one syscall number: a value of the `SYSCALL_SPECS` array,
/// indexed by native syscall number, filled by userspace (which knows the architecture's
/// numbering). Zero means "not traced".
pub mod spec {
    /// Trace this syscall.
    pub const TRACED: u32 = 1 << 0;
    /// Capture the user stack: the call creates descriptors.
    pub const STACK: u32 = 1 << 1;
    /// fcntl: only F_DUPFD, F_DUPFD_CLOEXEC and F_SETFD matter; skip the rest in the kernel.
    pub const FCNTL_FILTER: u32 = 1 << 2;
    /// ioctl: only FIOCLEX / FIONCLEX matter.
    pub const IOCTL_FILTER: u32 = 1 << 3;
    /// recvmsg: arg 1 is a `struct user_msghdr *`; collect SCM_RIGHTS descriptors.
    pub const MSGHDR: u32 = 1 << 4;
    /// recvmmsg: arg 1 is a `struct mmsghdr *`, the result the number of messages.
    pub const MMSGHDR: u32 = 1 << 5;
    /// close: a `kind::CLOSE` record at exit, unless it returned `-EBADF` (nothing was
    /// open). Not with `TRACED`: nothing is made.
    pub const CLOSE: u32 = 1 << 6;
    /// An open of a path or handle: read the mode of the file it installed
    /// ([`super::SyscallEvent::mode`]).
    pub const INODE_MODE: u32 = 1 << 7;
    /// Bits 8..11: index + 1 of the argument that points to a path string.
    pub const PATH_ARG_SHIFT: u32 = 8;
    /// Bits 12..15: index + 1 of the argument that points to an `int[2]` the call fills.
    pub const FD_PAIR_ARG_SHIFT: u32 = 12;
    /// Bits 16..19: index + 1 of the argument through which to read one u64 into `deref`.
    pub const DEREF_ARG_SHIFT: u32 = 16;
    pub const ARG_MASK: u32 = 0xf;
    /// The call makes one descriptor, its result (no pair, no received descriptors, no copy
    /// of another): its record may be kept in `PAIRS` and, when its close comes first, counted
    /// there instead of sent (helios-trace-ebpf/src/pairs.rs). What it makes may still depend on
    /// other descriptors of its process (an accept's listener, an openat's directory, a reopened
    /// `/proc/self/fd/N`): what a slot keeps goes before any other record of its process.
    pub const PAIRABLE: u32 = 1 << 20;

    /// The argument index encoded at `shift`, if any.
    pub const fn arg_at(spec: u32, shift: u32) -> Option<usize> {
        match (spec >> shift) & ARG_MASK {
            0 => None,
            n => Some((n - 1) as usize),
        }
    }

    /// Encode argument `index` at `shift`.
    pub const fn with_arg(shift: u32, index: usize) -> u32 {
        ((index as u32 + 1) & ARG_MASK) << shift
    }
}

/// Size of the `SYSCALL_SPECS` array: above every syscall number of x86_64 and aarch64.
pub const MAX_SYSCALL_NR: u32 = 1024;

/// Indices of the per-CPU `COUNTERS` array.
pub mod counter {
    /// A record could not be reserved in the ring buffer: lost.
    pub const RINGBUF_FULL: u32 = 0;
    /// The stack map already held a different stack in that bucket (EEXIST).
    pub const STACK_COLLISION: u32 = 1;
    /// Stack capture failed otherwise (map full, fault).
    pub const STACK_ERROR: u32 = 2;
    /// A path argument (or memfd_create's name) could not be read at the call's exit (its
    /// memory unmapped by then, for one): shown as `events.paths_unreadable`; the descriptor is
    /// named from /proc at the report.
    pub const PATH_UNREADABLE: u32 = 3;
    /// Retired with the in-flight map (the arguments are read at exit now); never reused.
    pub const IN_FLIGHT_FULL: u32 = 4;
    /// Retired: the registers are copied once per traced call now, before any record is made
    /// (helios-trace-ebpf/src/syscalls.rs, `saved_regs`), and a copy that fails is a
    /// `PROGRAM_ERROR`, as a failed argument read always was; never reused.
    pub const USER_STACK_UNREADABLE: u32 = 5;
    /// A program's `try_*` body returned an error (a tracepoint field or a helper could not be
    /// read): whatever record it was making is lost.
    pub const PROGRAM_ERROR: u32 = 6;
    /// A record's submit asked to wake the reader (`Settings::wakeup_bytes` were waiting): an
    /// interrupt on the CPU of the traced call, which the reader's paced looks are there to
    /// spare it. (Exec records always wake it and are not counted.)
    pub const WAKEUP_FORCED: u32 = 7;
    /// A Python walk took the calling thread's state from what the kernel remembered of that
    /// thread (`PYTHON_THREADS`), still its own and still in the interpreter's list (or with its
    /// running `_PyCFrame` on the thread's stack: `PYTHON_THREAD_ON_STACK`), instead of
    /// searching the list (helios-trace-ebpf/src/python.rs, `remembered_thread`).
    pub const PYTHON_THREAD_REMEMBERED: u32 = 8;
    /// A Python walk (3.11, 3.12) took the running `_PyCFrame`'s frame from the learned walk's
    /// copy of the C stack instead of a read of its own (helios-trace-ebpf/src/python.rs,
    /// `walk_python`; stacks.rs, `stack_word`).
    pub const PYTHON_CFRAME_FROM_COPY: u32 = 9;
    /// A remembered thread state (`PYTHON_THREAD_REMEMBERED`, 3.11, 3.12) taken as still the
    /// thread's because its running `_PyCFrame` lies on the calling thread's own stack (and not
    /// within the state), with no read of the interpreter's list
    /// (helios-trace-ebpf/src/python.rs, `remembered_thread`).
    pub const PYTHON_THREAD_ON_STACK: u32 = 10;
    /// A learned walk's copy of the stack went as far as its first frame's hint said, in one
    /// read when the copy started, before the Python walk and the walk's first step
    /// (helios-trace-ebpf/src/stacks.rs, `start_from_hint`, `copy_ahead`); counted also for a
    /// call whose record then could not be reserved, which no walk followed.
    pub const STACKS_COPIED_AHEAD: u32 = 11;
    /// A copy ahead that failed (a page in it not present): the walk copied by the page
    /// instead, having paid for a fault.
    pub const STACK_COPIES_AHEAD_FAILED: u32 = 12;
    /// A learned walk took its first frame's rule from the frame's `FIRST_FRAME_HINTS` hint,
    /// confirmed by the chain taught through the caller it found: no `FRAME_RULES` lookup
    /// (helios-trace-ebpf/src/stacks.rs, `confirmed_chain`).
    pub const FIRST_RULE_FROM_HINT: u32 = 13;
    /// A record of a process was sent after two tries to send first what a `PAIRS` slot of the
    /// process kept, each failed because another program changed the slot between the read and
    /// the take: the kept calls may come after it (helios-trace-ebpf/src/pairs.rs, `send_slot`).
    /// Once for each such slot of the process's group.
    pub const PAIRS_OUT_OF_ORDER: u32 = 14;
    pub const COUNT: u32 = 15;
}

/// Capacity of the target-process filter map.
pub const TARGET_ENTRIES: u32 = 65536;
/// Capacity of the map of `--cgroup` targets.
pub const TARGET_CGROUP_ENTRIES: u32 = 64;
/// Capacity of each of `TARGET_COMMS` and `TARGET_UIDS` (`--comm`, `--uid`).
pub const TARGET_MATCH_ENTRIES: u32 = 64;

/// Bits of [`Settings::filter_matches`].
pub mod filter_match {
    /// `TARGET_COMMS` holds `--comm` names.
    pub const COMMS: u32 = 1;
    /// `TARGET_UIDS` holds `--uid` ids.
    pub const UIDS: u32 = 2;
}

/// A `--comm` name as the kernel keeps a task's (`TASK_COMM_LEN`): at most 15 bytes, zero
/// padded, as `bpf_get_current_comm` copies it. `None` for a longer name, which no task has.
pub fn comm_key(name: &[u8]) -> Option<[u8; 16]> {
    if name.is_empty() || name.len() > 15 || name.contains(&0) {
        return None;
    }
    let mut key = [0u8; 16];
    key[..name.len()].copy_from_slice(name);
    Some(key)
}
/// How deep below the root of the cgroup v2 hierarchy the kernel looks for a `--cgroup` target
/// among a task's ancestors (systemd and Kubernetes nest 3 to 6 levels).
pub const MAX_CGROUP_DEPTH: u32 = 16;
/// Default capacity of the stack-trace map.
pub const STACK_ENTRIES: u32 = 16384;

/// The load-time settings of the kernel programs: one read-only global (named
/// [`SETTINGS_GLOBAL`]) that the loader writes once, before the programs are verified. The
/// verifier then knows every field's value (a frozen read-only map), which lets it prune
/// branches and bound sizes by the configuration (e.g. the ring-buffer reservation of
/// `stack_window` bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::KnownLayout, zerocopy::Immutable)
)]
pub struct Settings {
    /// The tracer's own tgid: never traced (its reads of /proc would feed back).
    pub tracer_tgid: u32,
    /// Non-zero: only tgids in the `TARGETS` map (`--pid`), and, when `filter_cgroups` is set,
    /// tasks in or below the cgroups of `TARGET_CGROUPS` (`--cgroup`), are traced.
    pub filter_targets: u32,
    /// Non-zero: `TARGET_CGROUPS` holds `--cgroup` targets.
    pub filter_cgroups: u32,
    /// How to capture the user stack of descriptor-creating calls: one of [`stack_mode`].
    pub user_stack_mode: u32,
    /// Bytes of user stack copied per call in [`stack_mode::DWARF`] (at most
    /// [`MAX_STACK_WINDOW`]).
    pub stack_window: u32,
    /// Zero (it was `--kernel-stacks`, removed; see `SyscallEvent::mode`).
    pub reserved: u32,
    /// Offset of `group_dead` in the sched_process_exit record, read from its format file (the
    /// field exists since Linux 6.14); 0 when absent, and then the leader's exit stands for the
    /// group's.
    pub exit_group_dead_offset: u32,
    /// Which of `--comm` and `--uid` are on: [`filter_match`] bits (`TARGET_COMMS`,
    /// `TARGET_UIDS` hold them). A task that matches makes its process a target (`TARGETS`).
    pub filter_matches: u32,
    /// Wake the reader only once this many bytes wait in the ring buffer (userspace also looks
    /// on a timer, so a quiet buffer is still drained); 0 leaves it to the kernel's own rule: a
    /// record submitted when the reader had taken everything wakes it (kernel/bpf/ringbuf.c,
    /// `bpf_ringbuf_commit`).
    pub wakeup_bytes: u64,
    /// [`stack_mode::DWARF`]: one of [`learned_chains`].
    pub learned_chains: u32,
    /// The uprobe maker's tgid (helios-trace/src/sys/uprobes.rs), never traced either; 0 when
    /// there is none.
    pub uprobe_maker_tgid: u32,
    /// Where this kernel keeps what tells that a thread's stack mapping has not changed since
    /// it was last found, a descriptor's slot, its file's mode and a socket's family:
    /// [`KernelOffsets`], from the kernel's BTF; zero when not known, and then the mapping is
    /// looked up at every call, a close's number is not read ([`close_flags::NUMBER_UNREAD`]),
    /// an open's mode is not ([`SyscallEvent::mode`] 0), and a receive's socket is taken for
    /// one that can pass descriptors.
    pub kernel: KernelOffsets,
}
const _: () = assert!(size_of::<Settings>() == 104);

/// Byte offsets of kernel struct members the programs read (helios-trace/src/sys/btf.rs finds
/// them in `/sys/kernel/btf/vmlinux`). Zero: not known.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::IntoBytes, zerocopy::FromBytes, zerocopy::Immutable, zerocopy::KnownLayout)
)]
pub struct KernelOffsets {
    /// `task_struct.mm`.
    pub task_mm: u32,
    /// `task_struct.start_time` (ns since boot at fork: with the task's address, which task).
    pub task_start_time: u32,
    /// `task_struct.self_exec_id` (u64, counted up by each exec of the task, fs/exec.c
    /// `begin_new_exec`): which of the task's images, whose new mm may be where a freed one was.
    pub task_self_exec_id: u32,
    /// `mm_struct.mm_lock_seq.sequence`: bumped by every mmap write lock and unlock
    /// (include/linux/mmap_lock.h, `mm_lock_seqcount_begin`, `vma_end_write_all`; Linux 6.13
    /// and later with CONFIG_PER_VMA_LOCK), under which every change of a mapping is made.
    pub mm_lock_seq: u32,
    /// `task_struct.files`, `files_struct.fdt` and `fdtable.fd`: where a close's exit reads
    /// whether its number is taken again ([`close_flags`]). Zero: not known.
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdtable_fd: u32,
    /// `mm_struct.start_stack`: where the main thread's stack starts (its `argc`, fs/binfmt_elf.c
    /// `create_elf_tables`), above which lies a gap the process never touches; a copy ahead
    /// stops at its page's end (helios-trace-ebpf/src/stacks.rs, `ahead_high`). Zero: not
    /// known, and the stack is copied by the page.
    pub mm_start_stack: u32,
    /// `file.f_inode` (a pointer) and `inode.i_mode` (a u16): where an open's exit reads the
    /// mode of the file it installed ([`SyscallEvent::mode`]). `file_inode` zero: not known;
    /// `inode_mode` is 0 on every kernel so far (`i_mode` opens `struct inode`,
    /// include/linux/fs.h).
    pub file_inode: u32,
    pub inode_mode: u32,
    /// `file.private_data` (a socket's file's is its `struct socket`, net/socket.c
    /// `sock_alloc_file`), `socket.sk`, and `sock.__sk_common.skc_family` (a u16): where a
    /// receive's exit reads its socket's address family (helios-trace-ebpf/src/syscalls.rs,
    /// `socket_family`). Zero: not known.
    pub file_private_data: u32,
    pub socket_sk: u32,
    pub sock_family: u32,
    /// Zero: the settings a whole number of words, no byte of them padding (they are handed to
    /// the kernel as bytes).
    pub reserved: u32,
}
const _: () = assert!(size_of::<KernelOffsets>() == 56);

impl KernelOffsets {
    /// Nothing known.
    pub const NONE: KernelOffsets = KernelOffsets {
        task_mm: 0,
        task_start_time: 0,
        task_self_exec_id: 0,
        mm_lock_seq: 0,
        task_files: 0,
        files_fdt: 0,
        fdtable_fd: 0,
        mm_start_stack: 0,
        file_inode: 0,
        inode_mode: 0,
        file_private_data: 0,
        socket_sk: 0,
        sock_family: 0,
        reserved: 0,
    };

    /// Every offset of a stack mapping's key known.
    pub const fn complete(&self) -> bool {
        self.task_mm != 0 && self.task_start_time != 0 && self.task_self_exec_id != 0 && self.mm_lock_seq != 0
    }

    /// Every offset of a descriptor's slot known.
    pub const fn fd_slots(&self) -> bool {
        self.task_files != 0 && self.files_fdt != 0 && self.fdtable_fd != 0
    }

    /// Every offset of the mode of the file at a descriptor's slot known.
    pub const fn file_modes(&self) -> bool {
        self.fd_slots() && self.file_inode != 0
    }

    /// Every offset of the address family of the socket at a descriptor's slot known.
    pub const fn socket_families(&self) -> bool {
        self.file_modes() && self.file_private_data != 0 && self.socket_sk != 0 && self.sock_family != 0
    }
}

/// The value of the per-CPU `STACK_MAPPING` map: a stack mapping the kernel looked up, and what
/// must be unchanged for it to still be the mapping (helios-trace-ebpf's stacks.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackMapping {
    pub task: u64,
    pub task_start_time: u64,
    pub task_self_exec_id: u64,
    pub mm: u64,
    pub sequence: u64,
    pub start: u64,
    pub end: u64,
}
const _: () = assert!(size_of::<StackMapping>() == 56);

/// [`Settings::learned_chains`]: whether the kernel walks call chains with the rules userspace
/// learned from stack windows it unwound (`FRAME_RULES`).
pub mod learned_chains {
    /// Every call sends its stack window.
    pub const OFF: u32 = 0;
    /// A chain the rules walk to its end is sent instead of the window.
    pub const ON: u32 = 1;
    /// Both are sent, for userspace to compare (`--learned-chains shadow`: tests, doubt).
    pub const SHADOW: u32 = 2;
}

impl Settings {
    /// What the object carries before the loader writes its own: trace everything,
    /// frame-pointer user stacks, wake on every record.
    pub const DEFAULT: Settings = Settings {
        tracer_tgid: 0,
        filter_targets: 0,
        filter_cgroups: 0,
        user_stack_mode: stack_mode::FP,
        stack_window: 8192,
        reserved: 0,
        exit_group_dead_offset: 0,
        filter_matches: 0,
        wakeup_bytes: 0,
        learned_chains: learned_chains::OFF,
        uprobe_maker_tgid: 0,
        kernel: KernelOffsets::NONE,
    };
}

impl Default for Settings {
    fn default() -> Self {
        Settings::DEFAULT
    }
}

/// Symbol name of the [`Settings`] global in the BPF object.
pub const SETTINGS_GLOBAL: &str = "SETTINGS";

/// Names of the maps in the BPF object, by which the loader finds them. The kernel crate
/// defines each map under the identifier of its constant here and checks at compile time that
/// the constant's value is that identifier (helios-trace-ebpf/src/maps.rs).
pub mod map_name {
    /// Ring buffer of every record to userspace.
    pub const EVENTS: &str = "EVENTS";
    /// Stack-trace map of frame-pointer user stacks.
    pub const STACKS: &str = "STACKS";
    /// `--pid` targets, processes a `--comm` or `--uid` target matched, and the processes they
    /// forked: tgid -> 1.
    pub const TARGETS: &str = "TARGETS";
    /// CPython processes whose frames are walked: tgid -> [`super::PythonOffsets`].
    pub const PYTHON_PROCS: &str = "PYTHON_PROCS";
    pub const GO_PROCS: &str = "GO_PROCS";
    pub const EXEC_TIMES: &str = "EXEC_TIMES";
    /// Learned unwind rules: [`super::FrameRuleKey`] -> [`super::FrameRule`].
    pub const FRAME_RULES: &str = "FRAME_RULES";
    /// Learned chains and their rules: [`super::ChainKey`] -> [`super::ChainRules`].
    pub const CHAIN_RULES: &str = "CHAIN_RULES";
    /// A first frame's rule and how far its chains read the stack: [`super::FirstFrameHint`]
    /// by [`super::first_frame_hint_slot`].
    pub const FIRST_FRAME_HINTS: &str = "FIRST_FRAME_HINTS";
    /// Per-CPU scratch where a [`super::PythonStack`] is assembled.
    pub const PYTHON_SCRATCH: &str = "PYTHON_SCRATCH";
    /// Per-CPU state of a Python frame walk (its offsets and the frame being read): kept off
    /// the BPF stack, which the exit program and the walk share (512 bytes in all).
    pub const PYTHON_WALK: &str = "PYTHON_WALK";
    /// The thread state last found for each thread of a CPython: pid_tgid -> its address.
    pub const PYTHON_THREADS: &str = "PYTHON_THREADS";
    /// Per-CPU copy of the calling task's saved user registers ([`super::SAVED_REGS_WORDS`]).
    pub const SAVED_REGS: &str = "SAVED_REGS";
    /// Per-CPU copy of the stack a learned chain's walk reads.
    pub const CHAIN_STACK: &str = "CHAIN_STACK";
    /// Per-CPU state of a learned chain's walk: how many bytes of `CHAIN_STACK` it copied and,
    /// once its `bpf_loop` callback takes over, the frame it walks next and how far it got.
    pub const CHAIN_WALK: &str = "CHAIN_WALK";
    /// Per-CPU [`super::StackMapping`]: the stack mapping last looked up.
    pub const STACK_MAPPING: &str = "STACK_MAPPING";
    /// Per-CPU state of a walk of a received message's control messages (SCM_RIGHTS).
    pub const SCM_WALK: &str = "SCM_WALK";
    /// `--cgroup` targets (cgroup v2 ids): id -> 1.
    pub const TARGET_CGROUPS: &str = "TARGET_CGROUPS";
    /// `--comm` targets ([`super::comm_key`]): name -> 1.
    pub const TARGET_COMMS: &str = "TARGET_COMMS";
    /// `--uid` targets (real uids, as the initial user namespace numbers them): uid -> 1.
    pub const TARGET_UIDS: &str = "TARGET_UIDS";
    /// Per-CPU time of the last forced wake-up of the reader.
    pub const LAST_WAKEUP: &str = "LAST_WAKEUP";
    /// A process's last creating call and the pairs matched since ([`super::PairSlot`]).
    pub const PAIRS: &str = "PAIRS";
    /// Per-CPU [`super::ChainRecord`] a pairable call's record is made in.
    pub const PAIR_SCRATCH: &str = "PAIR_SCRATCH";
    /// What to do per native syscall number ([`super::spec`]).
    pub const SYSCALL_SPECS: &str = "SYSCALL_SPECS";
    /// Per-CPU counters, indexed by [`super::counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// Ring buffer of exec notices: a copy of each exec record's [`super::EventHeader`], read
    /// apart from `EVENTS` so that a CPython exec'd while the reader is busy is probed at once.
    pub const EXEC_NOTICES: &str = "EXEC_NOTICES";
}

/// Bytes of the `EXEC_NOTICES` ring: 2,048 notices of 32 bytes (a header and the ring's own 8),
/// read within milliseconds of each exec.
pub const EXEC_NOTICES_BYTES: u32 = 64 * 1024;

#[cfg(feature = "user")]
mod pod {
    /// The claim aya::Pod asks for, checked by the compiler: each type derives zerocopy's
    /// `FromBytes` (every bit pattern is valid) and `IntoBytes` (no padding), which fail to
    /// compile otherwise.
    const fn checked<T: zerocopy::FromBytes + zerocopy::IntoBytes>() {}
    const _: () = {
        checked::<super::EventHeader>();
        checked::<super::SyscallEvent>();
        checked::<super::CloseEvent>();
        checked::<super::NewTaskEvent>();
        checked::<super::ExecEvent>();
        checked::<super::ExitEvent>();
        checked::<super::UserStack>();
        checked::<super::PythonOffsets>();
        checked::<super::GoOffsets>();
        checked::<super::FrameRuleKey>();
        checked::<super::FrameRule>();
        checked::<super::ChainKey>();
        checked::<super::ChainRules>();
        checked::<super::FirstFrameHint>();
        checked::<super::LearnedChain>();
        checked::<super::PythonStack>();
        checked::<super::Settings>();
    };
    // SAFETY: #[repr(C)] plain data, FromBytes and IntoBytes (checked above): no padding and
    // no invalid bit patterns.
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::SyscallEvent {}
    unsafe impl aya::Pod for super::CloseEvent {}
    unsafe impl aya::Pod for super::NewTaskEvent {}
    unsafe impl aya::Pod for super::ExecEvent {}
    unsafe impl aya::Pod for super::ExitEvent {}
    unsafe impl aya::Pod for super::UserStack {}
    unsafe impl aya::Pod for super::PythonOffsets {}
    unsafe impl aya::Pod for super::GoOffsets {}
    unsafe impl aya::Pod for super::FrameRuleKey {}
    unsafe impl aya::Pod for super::FrameRule {}
    unsafe impl aya::Pod for super::ChainKey {}
    unsafe impl aya::Pod for super::ChainRules {}
    unsafe impl aya::Pod for super::FirstFrameHint {}
    unsafe impl aya::Pod for super::PythonStack {}
    unsafe impl aya::Pod for super::Settings {}
}
