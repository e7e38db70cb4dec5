//! The exporter's metrics (ARCHITECTURE.md, "Contracts: Metrics"): the engine's transitions
//! and the table aggregated per workload with cardinality bounded (aggregate.rs), and the
//! exposition of a snapshot (exposition.rs).
pub(crate) mod aggregate;
pub(crate) mod exposition;
