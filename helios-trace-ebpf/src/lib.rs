//! Empty on purpose: the kernel programs live in the `helios-trace` binary target (main.rs).
//! This library only lets the userspace crate list this one as a build-dependency.
#![no_std]
