//! From a captured stack to a call site (ARCHITECTURE.md, "Where each stage lives"): the
//! modules mapped into traced processes, DWARF unwinding, symbols, the stack registry that
//! names sites, and the Python frames of CPython processes.
pub mod cache;
pub mod modules;
pub mod python;
pub mod stacks;
pub mod symbolize;
pub mod unwind;
