//! helios-trace: finds file-descriptor and socket leaks in running Linux processes and names
//! the call stack that opened what is still open.
//!
//! One folder per stage of the data flow (ARCHITECTURE.md, "Where each stage lives"): a record
//! is read and decoded in [`sys`] (the only stage that touches BPF, /proc, /sys and netlink),
//! its stack becomes a site in [`resolve`], [`observe`]'s engine applies it to the FdTable and
//! the site counters of [`model`], and [`output`] turns the model into the report, the metrics
//! and the live view. [`cli`] is the command line, [`commands`] the commands main.rs dispatches
//! to, [`fuzzing`] the parsers of untrusted input as fuzz targets. The library's interface is
//! those three; everything else is crate-private.
pub mod cli;
pub mod commands;
pub mod fuzzing;
mod model;
mod observe;
mod output;
mod resolve;
mod sys;

/// The Go toolchains the tests build with, shared with the kernel tests.
#[cfg(test)]
#[path = "../tests/shared/go_toolchains.rs"]
mod go_toolchains;
