//! The only stage that touches the kernel and the system (ARCHITECTURE.md, "Where each stage
//! lives"): loading and attaching the BPF programs and reading their maps, kernel and privilege
//! checks, dropping privileges, the ring-buffer reader, decoding its records, the syscall
//! table, /proc (`proc/`), sock_diag, cgroups, the clock, starting a command gated, and what
//! the tracer asks for itself (`own`).
pub mod cgroups;
pub mod checks;
pub mod clock;
pub mod decode;
pub mod launch;
pub mod loader;
pub mod own;
pub mod privileges;
pub mod proc;
pub mod ring;
pub mod sockdiag;
pub mod syscalls;

pub use loader::{KernelCounters, TraceConfig, Tracer};
