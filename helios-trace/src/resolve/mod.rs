//! From a captured stack to a call site (ARCHITECTURE.md, "Where each stage lives"): the
//! modules mapped into traced processes, DWARF unwinding and the chains the kernel learns
//! from it, symbols, the stack registry that names sites, the Python frames of CPython
//! processes, and the creators of Go's goroutines.
pub(crate) mod cache;
pub(crate) mod chains;
pub(crate) mod goroutines;
pub(crate) mod holders;
pub(crate) mod modules;
pub(crate) mod perfmap;
pub(crate) mod python;
pub(crate) mod stacks;
pub(crate) mod symbolize;
pub(crate) mod unwind;
