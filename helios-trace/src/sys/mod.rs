//! The only stage that touches the kernel and the system (ARCHITECTURE.md, "Where each stage
//! lives"): loading and attaching the BPF programs and reading their maps, kernel and privilege
//! checks and the kernel's own type information (`btf`), dropping privileges, the ring-buffer reader, decoding its records, the syscall
//! table, /proc (`proc/`), sock_diag, cgroups, the clock, starting a command gated, and what
//! the tracer asks for itself (`own`), and the process that makes uprobes once the tracer has dropped
//! the capability for them (`uprobes`).
pub(crate) mod btf;
pub(crate) mod cgroups;
pub(crate) mod checks;
pub(crate) mod clock;
pub(crate) mod decode;
pub(crate) mod launch;
pub(crate) mod loader;
pub(crate) mod own;
pub(crate) mod privileges;
pub(crate) mod proc;
pub(crate) mod ring;
pub(crate) mod ring_pages;
pub(crate) mod sockdiag;
pub(crate) mod syscalls;
pub(crate) mod uprobes;
