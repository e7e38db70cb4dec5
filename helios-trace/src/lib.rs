//! helios-trace: finds file-descriptor and socket leaks in running Linux processes and names
//! the call stack that opened what is still open.
//!
//! Data flow (ARCHITECTURE.md, "Data flow"): tracepoints → ring buffer → [`session`] reader →
//! [`decode`] → [`fdtable`] → [`sites`] → [`report`] / [`metrics`] (served by [`serve`] over
//! [`http`]). Only [`bpf`] talks to the kernel's BPF side. /proc is read by [`procscan`],
//! [`resources`], [`modules`], [`python`] and [`bpf::checks`] today; ARCHITECTURE.md, "Where each
//! stage lives", says where each stage goes (/proc readers into `sys/`).
pub mod cli;
pub mod commands;
pub mod fuzzing;
mod model;
mod observe;
mod output;
mod resolve;
mod sys;
