//! Running commands: say what runs, fail with the command's name.
//!
//! stdout is the result's: what setup, builds and installs print goes to stderr ([`check`]), so
//! `cargo xtask run -- --format json > r.json` holds the report and nothing else, whatever setup
//! had to install first. Only commands whose output is the result keep stdout
//! ([`check_showing`]: the test runner).
use std::{
    path::PathBuf,
    process::{Command, ExitCode, ExitStatus, Stdio},
};

use anyhow::{Context as _, Result, bail};

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

pub fn is_root() -> bool {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The cargo that runs us (rustup's proxy honours the toolchain).
pub fn cargo_path() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

pub fn cargo(args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    check(&mut cargo_command(args, env))
}

/// cargo whose output is the result (the test runner's summary lines).
pub fn cargo_showing(args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    check_showing(&mut cargo_command(args, env))
}

fn cargo_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(cargo_path());
    command.args(args).current_dir(workspace_root());
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// `program args` as root: directly when we are root, else through sudo.
pub fn as_root(program: &str, args: &[String]) -> Command {
    if is_root() {
        let mut command = Command::new(program);
        command.args(args);
        command
    } else {
        let mut command = Command::new("sudo");
        command.arg("--preserve-env=PATH,HOME,RUST_LOG").arg(program).args(args);
        command
    }
}

/// Run a step (setup, build, install), its stdout sent to our stderr; fail with its name.
pub fn check(command: &mut Command) -> Result<()> {
    command.stdout(Stdio::from(std::io::stderr()));
    check_showing(command)
}

/// Run a command whose output is the result, stdout left as ours; fail with its name.
pub fn check_showing(command: &mut Command) -> Result<()> {
    let shown = format!("{command:?}");
    eprintln!("xtask: running {shown}");
    let status = command.status().with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// stdout of a command that succeeded, or None.
pub fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn exit_code(status: ExitStatus) -> ExitCode {
    match status.code() {
        Some(code) => ExitCode::from(code.clamp(0, 255) as u8),
        None => ExitCode::FAILURE,
    }
}
