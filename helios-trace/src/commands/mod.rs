//! One file per command (ARCHITECTURE.md, "Where each stage lives"): each takes its arguments
//! and turns them into settings at the edge. main.rs dispatches; nothing imports commands/.
pub mod serve;
pub mod watch;
