//! The executable files (modules) mapped into traced processes: where each sits in a process
//! (maps.rs, from /proc/PID/maps), a handle on each file taken while the process runs
//! (files.rs), the parsed files (elf.rs), cached by build id with a bound on their number and
//! size (cache.rs).
pub mod cache;
pub mod elf;
pub mod files;
pub mod maps;
