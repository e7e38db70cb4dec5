//! helios-trace's integration tests: one test binary (one compile of the support code), a
//! module per area. Most are kernel tests: they load the eBPF programs and need root, and they
//! skip without it unless HELIOS_TRACE_REQUIRE_BPF=1 (`cargo xtask test`) makes them fail.
//!
//! Run one area with a filter on its module: `cargo test --release -p helios-trace --test
//! integration -- robustness::`.
mod support;

mod adhoc;
mod deploy;
mod fuzz_corpus;
mod http;
mod lifecycle;
mod python;
mod resources;
mod robustness;
mod serve;
mod sessions;
mod stacks;
