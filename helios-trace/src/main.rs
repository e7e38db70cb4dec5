//! The process entry (ARCHITECTURE.md, "Where each stage lives"): parse the command line,
//! dispatch to a command, map failures to exit codes (ARCHITECTURE.md, "Contracts: CLI").
// The dependencies are the library's: this target only calls it, and the lint, which looks at
// one target at a time, would list every one of them (rust-lang/rust#95513).
#![allow(unused_crate_dependencies, reason = "the binary only calls the library, which uses them")]

use std::process::ExitCode;

use clap::Parser as _;
use helios_trace::{
    cli::{Cli, Command},
    commands::{self, Failure},
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    commands::log_to_stderr();
    let result = match &cli.command {
        Some(Command::Serve(args)) => commands::serve::main(args),
        Some(Command::Run(args)) => commands::run::main(args),
        Some(Command::UprobeMaker) => return commands::uprobe_maker(),
        None => commands::watch::main(&cli.session),
    };
    result.unwrap_or_else(Failure::exit)
}
