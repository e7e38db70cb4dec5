//! helios-trace's integration tests: one test binary (one compile of the support code), a
//! module per area. Most are kernel tests: they load the eBPF programs and need root, and they
//! skip without it unless HELIOS_TRACE_REQUIRE_BPF=1 (`cargo xtask test`) makes them fail.
//!
//! Run one area with a filter on its module: `cargo test --release -p helios-trace --test
//! integration -- robustness::`.
// Every dependency of the library is one of this target's too, and it uses a few; the lint
// looks at one target at a time (rust-lang/rust#95513).
#![allow(unused_crate_dependencies, reason = "the library's dependencies are visible to the tests too")]

mod support;

mod adhoc;
mod architecture;
mod chains;
mod claims;
mod corpus;
mod deploy;
mod filters;
mod fuzz_corpus;
mod holders;
mod lifecycle;
mod namespaces;
mod pods;
mod python;
mod python_sites;
mod readme;
mod resources;
mod robustness;
mod runtimes;
mod serve;
mod serve_sizing;
mod serve_web;
mod sessions;
mod stacks;
