//! Maps shared with userspace. Names are the contract with helios-trace/src/bpf/.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, StackTrace},
};
use helios_trace_common::{
    IN_FLIGHT_ENTRIES, InFlight, MAX_SYSCALL_NR, PYTHON_PROC_ENTRIES, PythonOffsets, PythonStack,
    STACK_ENTRIES, TARGET_CGROUP_ENTRIES, TARGET_ENTRIES, counter,
};

/// Every record to userspace. Userspace resizes it at load time (`--ring-buffer-size`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// User and kernel stacks of descriptor-creating calls, by id.
#[map]
pub static STACKS: StackTrace = StackTrace::with_max_entries(STACK_ENTRIES, 0);

/// Enter-side arguments of syscalls in progress, by pid_tgid.
#[map]
pub static IN_FLIGHT: LruHashMap<u64, InFlight> = LruHashMap::with_max_entries(IN_FLIGHT_ENTRIES, 0);

/// Processes to trace when `FILTER_TARGETS` is set: tgid -> 1. Children join at fork.
#[map]
pub static TARGETS: HashMap<u32, u32> = HashMap::with_max_entries(TARGET_ENTRIES, 0);

/// CPython processes whose Python frames are walked at their descriptor calls: tgid -> where
/// their thread states and frames are (helios-trace/src/python.rs fills it).
#[map]
pub static PYTHON_PROCS: HashMap<u32, PythonOffsets> = HashMap::with_max_entries(PYTHON_PROC_ENTRIES, 0);

/// Where a Python stack is assembled before it is copied into the ring buffer (the bpf_loop
/// callbacks that fill it cannot hold a ring-buffer reservation).
#[map]
pub static PYTHON_SCRATCH: PerCpuArray<PythonStack> = PerCpuArray::with_max_entries(1, 0);

/// Cgroups (v2 ids) whose processes, and those of their descendants, are traced when
/// `FILTER_TARGETS` is set (`--cgroup`): id -> 1.
#[map]
pub static TARGET_CGROUPS: HashMap<u64, u32> = HashMap::with_max_entries(TARGET_CGROUP_ENTRIES, 0);

/// When this CPU last forced a wake-up of the reader (filter::wakeup_flags), boot-time ns.
#[map]
pub static LAST_WAKEUP: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// What to do per native syscall number (helios_trace_common::spec), written by userspace.
#[map]
pub static SYSCALL_SPECS: Array<u32> = Array::with_max_entries(MAX_SYSCALL_NR, 0);

/// Per-CPU counters of things that went wrong in the kernel (helios_trace_common::counter).
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // Per-CPU slot: no other writer while this program runs on this CPU.
        unsafe { *slot += 1 };
    }
}

/// Copy a small record into the ring buffer; a full buffer is counted, never silent.
#[inline(always)]
pub fn emit<T>(event: &T) {
    if EVENTS.output::<T>(event, crate::filter::wakeup_flags()).is_err() {
        count(counter::RINGBUF_FULL);
    }
}
