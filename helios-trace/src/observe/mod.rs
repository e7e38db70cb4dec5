//! The middle of the data flow (ARCHITECTURE.md, "Where each stage lives"): the engine (record
//! → site → FdTable → site counters; baseline and reconcile) and the tracing session (attach,
//! drain, sample, reconcile on timers), and what the outputs are handed: the report's input,
//! the exporter's snapshots, /proc's facts.
pub(crate) mod engine;
pub(crate) mod exec_lane;
pub(crate) mod export;
pub(crate) mod holders;
pub(crate) mod procfs;
pub(crate) mod report_input;
pub(crate) mod session;
