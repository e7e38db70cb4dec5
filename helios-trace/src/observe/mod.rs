//! The middle of the data flow (ARCHITECTURE.md, "Where each stage lives"): the engine (record
//! → site → FdTable → site counters; baseline and reconcile) and the tracing session (attach,
//! drain, sample, reconcile on timers, build the report input).
pub mod engine;
pub mod session;
