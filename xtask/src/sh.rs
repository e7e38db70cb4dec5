//! Running commands: say what runs, fail with the command's name.
use std::{
    path::PathBuf,
    process::{Command, ExitCode, ExitStatus},
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
    let mut command = Command::new(cargo_path());
    command.args(args).current_dir(workspace_root());
    for (key, value) in env {
        command.env(key, value);
    }
    check(&mut command)
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

pub fn check(command: &mut Command) -> Result<()> {
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
