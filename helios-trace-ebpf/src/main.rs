//! helios-trace's kernel programs. Each hook family has its own module; every program is a thin
//! wrapper over a `try_*` function so that error paths stay explicit and never panic, and an
//! error it returns is counted (`counter::PROGRAM_ERROR`, emit::finish), never dropped.
#![no_std]
#![no_main]
// `atomic_cxchg`, for the slots of `PAIRS` (pairs.rs): the bpf target's `core` has no
// compare-and-swap in `core::sync::atomic`. helios-trace/build.rs lets this crate use it on the
// stable toolchain (RUSTC_BOOTSTRAP).
#![feature(core_intrinsics)]
#![allow(internal_features, reason = "core_intrinsics, above")]

// This package's library only makes it a build-dependency of helios-trace (lib.rs); the
// programs do not use it.
use helios_trace_ebpf as _;

// The hook families: one file each.
mod libuv;
mod process;
mod syscalls;

// What they share: the settings, the maps, the filter, the way out (records and counters),
// the two stack readers of the descriptor-creating calls, their Python frames and goroutine
// creators, the calls kept and matched with their closes, and the floor (empty programs the bench measures each attach kind with).
mod emit;
mod filter;
mod floor;
mod goroutines;
mod maps;
mod pairs;
mod python;
mod settings;
mod stacks;

/// Whether two names are the same, at compile time: the maps and the settings global take
/// their symbol names from their identifiers, and maps.rs and settings.rs check those against
/// the names the loader uses (helios_trace_common::map_name, SETTINGS_GLOBAL).
const fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never executed in a loaded
    // program; loop to satisfy the `!` type.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
