//! `cargo xtask setup | run -- ARGS | test | bench | fuzz | install | deb | completions | man`: the commands the README
//! gives. Each one sets up what is missing first, so a fresh machine needs nothing installed by
//! hand.
mod bench;
mod docs;
mod fuzz;
mod image;
mod install;
mod roots;
mod setup;
mod sh;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the eBPF build (and, with --tests, the test suite) needs; idempotent.
    Setup {
        /// Also install what the tests use (Prometheus, podman, ...).
        #[arg(long)]
        tests: bool,
    },
    /// Build helios-trace (release) and run it as root: `cargo xtask run -- --duration 15s`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build (release), and run the benchmark suite of BENCHMARKS.md as root: overhead
    /// against bpftrace, daemon throughput, memory, startup, Python, holders. Prints markdown tables.
    Bench {
        /// Fewer repetitions and shorter rungs (minutes instead of a quarter of an hour).
        #[arg(long)]
        quick: bool,
        /// Only these sections (default: all).
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(bench::SECTIONS))]
        sections: Vec<String>,
    },
    /// Coverage-guided fuzzing of the parsers (cargo-fuzz on stable, no sanitizer).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
        /// Targets (default: all of fuzz/fuzz_targets).
        targets: Vec<String>,
    },
    /// Build the container image (deploy/Containerfile) with podman.
    Image {
        /// Use this helios-trace binary instead of building the release one.
        #[arg(long)]
        binary: Option<std::path::PathBuf>,
        #[arg(long, default_value = image::DEFAULT_TAG)]
        tag: String,
    },
    /// Set up, deny clippy's warnings, then run every test, the kernel tests included (they must
    /// load, not skip).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build helios-trace (release) and install it, its man pages and its shell completions under
    /// PREFIX (bin/, share/man/man1/, and each shell's completion directory).
    Install {
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
        /// Install this helios-trace binary instead of building the release one.
        #[arg(long)]
        binary: Option<PathBuf>,
    },
    /// Build a Debian package of helios-trace (release) with dpkg-deb; prints its path.
    Deb {
        /// Package this helios-trace binary instead of building the release one.
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Directory to write the package to (relative to the workspace root).
        #[arg(long, default_value = "target/deb")]
        out_dir: PathBuf,
    },
    /// Write shell completions for helios-trace (bash, zsh, fish, elvish, powershell).
    Completions {
        /// Directory to write them to (relative to the workspace root).
        #[arg(long, default_value = "target/completions")]
        out_dir: PathBuf,
    },
    /// Write man pages for helios-trace and each of its subcommands.
    Man {
        /// Directory to write them to (relative to the workspace root).
        #[arg(long, default_value = "target/man")]
        out_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Setup { tests } => {
            setup::ensure(tests)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { args } => {
            setup::ensure(false)?;
            sh::cargo(&["build", "--release", "--package", "helios-trace"], &[])?;
            let binary = sh::workspace_root().join("target/release/helios-trace");
            let mut command = sh::as_root(&binary.to_string_lossy(), &args);
            Ok(sh::exit_code(command.status()?))
        }
        Command::Bench { quick, sections } => {
            setup::ensure(false)?;
            setup::ensure_bench_tools()?;
            sh::cargo(&["build", "--release", "--package", "helios-trace"], &[])?;
            bench::run(quick, &sections)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Image { binary, tag } => {
            if binary.is_none() {
                setup::ensure(false)?;
            }
            setup::ensure_image_tools()?;
            image::build(binary, &tag)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Fuzz { seconds, targets } => {
            setup::ensure(true)?;
            fuzz::run(&targets, seconds)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Test { args } => {
            setup::ensure(true)?;
            if args.is_empty() {
                // The workspace lints (Cargo.toml) and clippy's defaults, denied. The eBPF crate
                // only builds for the bpf target, so the host crates are checked without it.
                sh::cargo(&["clippy", "--all-targets", "--", "-D", "warnings"], &[("AYA_BUILD_SKIP", "1")])?;
            }
            // One profile for everything: the kernel tests run the release binary, and
            // `cargo xtask run` then reuses the same build. The default members, not
            // --workspace: the eBPF crate only builds for the bpf target.
            let mut cargo_args: Vec<&str> = vec!["test", "--release", "--no-fail-fast"];
            cargo_args.extend(args.iter().map(String::as_str));
            let env = [("HELIOS_TRACE_REQUIRE_BPF", "1")];
            if sh::is_root() {
                sh::cargo_showing(&cargo_args, &env)?;
            } else {
                eprintln!("xtask: the kernel tests load eBPF programs: running cargo test through sudo");
                let mut args: Vec<String> =
                    vec!["env".into(), "HELIOS_TRACE_REQUIRE_BPF=1".into(), sh::cargo_path()];
                args.extend(cargo_args.iter().map(|s| s.to_string()));
                sh::check_showing(sh::as_root("env", &args[1..]).current_dir(sh::workspace_root()))?;
            }
            // A short coverage-guided run of every parser; `cargo xtask fuzz` runs longer.
            if args.is_empty() {
                fuzz::run(&[], fuzz::TEST_SECONDS)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Install { prefix, binary } => {
            if binary.is_none() {
                setup::ensure(false)?;
            }
            let binary = install::release_binary(binary)?;
            for path in install::install(&binary, &prefix)? {
                eprintln!("xtask install: {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Deb { binary, out_dir } => {
            if binary.is_none() {
                setup::ensure(false)?;
            }
            let binary = install::release_binary(binary)?;
            println!("{}", install::deb(&binary, &sh::workspace_root().join(out_dir))?.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { out_dir } => {
            for path in docs::completions(&sh::workspace_root().join(out_dir))? {
                println!("{}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { out_dir } => {
            for path in docs::man_pages(&sh::workspace_root().join(out_dir))? {
                println!("{}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
