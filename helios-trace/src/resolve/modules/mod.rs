//! The executable files (modules) mapped into traced processes: where each sits in a process
//! (maps.rs, from /proc/PID/maps), a handle on each file taken while the process runs
//! (files.rs), the parsed files (elf.rs; a Go binary's own line table: gopclntab.rs; CPython's perf trampoline: trampoline.rs), cached by build id with a bound on their number and
//! size (cache.rs).
pub(crate) mod cache;
pub(crate) mod elf;
pub(crate) mod files;
pub(crate) mod gopclntab;
pub(crate) mod libuv;
pub(crate) mod maps;
pub(crate) mod trampoline;
