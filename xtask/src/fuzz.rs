//! `cargo xtask fuzz`: cargo-fuzz over fuzz/fuzz_targets, on the stable toolchain (libFuzzer's
//! coverage instrumentation needs no nightly; `-s none` skips the sanitizers, which safe Rust
//! does not need to find panics). New inputs go to a scratch corpus so runs never dirty the
//! tree; crashes are saved under fuzz/artifacts/ and fail the command.
use std::{fs, process::Command};

use anyhow::{Context as _, Result};

use crate::sh;

/// Seconds per target inside `cargo xtask test`.
pub const TEST_SECONDS: u32 = 15;

pub fn run(targets: &[String], seconds: u32) -> Result<()> {
    let fuzz_dir = sh::workspace_root().join("fuzz");
    let targets: Vec<String> = if targets.is_empty() {
        let mut all: Vec<String> = fs::read_dir(fuzz_dir.join("fuzz_targets"))?
            .filter_map(|e| e.ok()?.path().file_stem()?.to_str().map(str::to_string))
            .collect();
        all.sort();
        all
    } else {
        targets.to_vec()
    };
    let scratch = sh::workspace_root().join("target/fuzz-corpus");
    for target in &targets {
        let new_inputs = scratch.join(target);
        fs::create_dir_all(&new_inputs).context("cannot create the scratch corpus")?;
        let seeds = fuzz_dir.join("corpus").join(target);
        let mut command = Command::new(sh::cargo_path());
        command
            .current_dir(&fuzz_dir)
            // The parsers need no eBPF object.
            .env("AYA_BUILD_SKIP", "1")
            .args(["fuzz", "run", "--sanitizer", "none", target])
            .arg(&new_inputs)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-max_len=4096");
        sh::check(&mut command)
            .with_context(|| format!("fuzz target {target} found a crash (see fuzz/artifacts/{target})"))?;
    }
    Ok(())
}
