//! Pure state and statistics (ARCHITECTURE.md, "Where each stage lives"): descriptor kinds and
//! close reasons, events, the FdTable, site counters, history, workload identity, trend
//! statistics. No I/O here: the stages that do it feed these.
pub mod counts;
pub mod event;
pub mod exited;
pub mod fd;
pub mod fdtable;
pub mod frame;
pub mod history;
pub mod kept;
pub mod resources;
pub mod sites;
pub mod trend;
pub mod workload;
