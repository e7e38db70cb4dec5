//! What people and Prometheus read (ARCHITECTURE.md, "Where each stage lives"): the report
//! (build and text), metrics (aggregation and exposition), the HTTP server, the live view, and
//! number formatting. Outputs see the model only: what /proc knows reaches them through what
//! they are handed.
pub(crate) mod flamegraph;
pub(crate) mod format;
pub(crate) mod http;
pub(crate) mod live;
pub(crate) mod metrics;
pub(crate) mod redact;
pub(crate) mod report;
