//! Pure state and statistics (ARCHITECTURE.md, "Where each stage lives"): descriptor kinds and
//! close reasons, events, the FdTable, site counters, history, workload identity, trend
//! statistics. No I/O here: the stages that do it feed these.
pub(crate) mod census;
pub(crate) mod counts;
pub(crate) mod event;
pub(crate) mod exited;
pub(crate) mod fd;
pub(crate) mod fdmap;
pub(crate) mod fdtable;
pub(crate) mod frame;
pub(crate) mod handles;
pub(crate) mod history;
pub(crate) mod holders;
pub(crate) mod kept;
pub(crate) mod resources;
pub(crate) mod sites;
pub(crate) mod sizing;
pub(crate) mod trend;
pub(crate) mod workload;
