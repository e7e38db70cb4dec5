//! helios-trace's kernel programs. Each hook family has its own module; every program is a thin
//! wrapper over a `try_*` function so that error paths stay explicit and never panic.
#![no_std]
#![no_main]

mod filter;
mod maps;
mod process;
mod syscalls;

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
