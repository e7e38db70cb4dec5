//! Everything that talks to the kernel's BPF side: privilege and kernel checks, loading and
//! attaching the programs, and reading their maps. Nothing else in the crate touches BPF.
pub mod checks;
pub mod loader;
pub mod privileges;

pub use loader::{KernelCounters, TraceConfig, Tracer};
