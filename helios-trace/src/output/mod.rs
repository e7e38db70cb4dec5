//! What people and Prometheus read (ARCHITECTURE.md, "Where each stage lives"): the report
//! (build and text), metrics (aggregation and exposition), the HTTP server, the live view, and
//! number formatting. Outputs see the model only: what /proc knows reaches them through what
//! they are handed.
pub mod format;
pub mod http;
pub mod live;
pub mod metrics;
pub mod report;
