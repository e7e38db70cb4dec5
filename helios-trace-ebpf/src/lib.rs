//! Empty on purpose: the kernel programs live in the `helios-trace` binary target (main.rs).
//! This library only lets the userspace crate list this one as a build-dependency.
#![no_std]
// The dependencies are the programs' (main.rs), which this target does not see.
#![allow(unused_crate_dependencies, reason = "the dependencies belong to the binary target")]
