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
    check_lock(&fuzz_dir)?;
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

/// The fuzz workspace's lock, fuzz/Cargo.lock, must hold every package its build needs (else cargo
/// adds the newest of each at every build, in CI too: a rustls newer than the product's, whose
/// deprecation warned in every run), at the versions the main workspace's Cargo.lock holds: the
/// parsers are fuzzed with the dependencies they ship with. `cargo tree --locked` resolves for
/// this machine's platform only, so it fetches no other platform's packages (`cargo metadata`
/// would).
fn check_lock(fuzz_dir: &std::path::Path) -> Result<()> {
    const REMEDY: &str = "cp Cargo.lock fuzz/Cargo.lock && (cd fuzz && cargo tree > /dev/null), which adds \
                          the fuzzer's own packages and drops what it does not use";
    let mut command = Command::new(sh::cargo_path());
    command
        .current_dir(fuzz_dir)
        .env("AYA_BUILD_SKIP", "1")
        .args(["tree", "--locked", "--quiet"])
        .stdout(std::process::Stdio::null());
    sh::check_showing(&mut command).with_context(|| format!("fuzz/Cargo.lock is out of date: {REMEDY}"))?;
    let read = |path: std::path::PathBuf| {
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
    };
    let main = read(sh::workspace_root().join("Cargo.lock"))?;
    let fuzz = read(fuzz_dir.join("Cargo.lock"))?;
    let differ = versions_not_in(&fuzz, &main);
    anyhow::ensure!(
        differ.is_empty(),
        "fuzz/Cargo.lock holds versions Cargo.lock does not ({}): {REMEDY}",
        differ.join(", ")
    );
    Ok(())
}

/// The `name version` of each package of lock `of` whose name lock `main` has, but not at that version.
fn versions_not_in(of: &str, main: &str) -> Vec<String> {
    let packages = |lock: &str| -> Vec<(String, String)> {
        let field = |line: &str, key: &str| {
            line.strip_prefix(key)
                .and_then(|v| v.strip_prefix(" = \""))
                .and_then(|v| v.strip_suffix('"'))
                .map(str::to_string)
        };
        let mut lines = lock.lines().peekable();
        let mut found = Vec::new();
        while let Some(line) = lines.next() {
            if let Some(name) = field(line, "name")
                && let Some(version) = lines.peek().and_then(|next| field(next, "version"))
            {
                found.push((name, version));
            }
        }
        found
    };
    let main = packages(main);
    packages(of)
        .into_iter()
        .filter(|(name, version)| {
            main.iter().any(|(n, _)| n == name) && !main.iter().any(|(n, v)| n == name && v == version)
        })
        .map(|(name, version)| format!("{name} {version}"))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_fuzz_lock_is_checked_against_the_main_lock() {
        let main = "[[package]]\nname = \"rustls\"\nversion = \"0.23.46\"\n\n[[package]]\nname = \"syn\"\nversion = \"1.0.109\"\n\n[[package]]\nname = \"syn\"\nversion = \"2.0.100\"\n";
        let same = "[[package]]\nname = \"syn\"\nversion = \"2.0.100\"\n\n[[package]]\nname = \"libfuzzer-sys\"\nversion = \"0.4.13\"\n";
        assert!(
            super::versions_not_in(same, main).is_empty(),
            "a version main has, and a package of the fuzzer's own"
        );
        let newer = "[[package]]\nname = \"rustls\"\nversion = \"0.23.48\"\n";
        assert_eq!(super::versions_not_in(newer, main), ["rustls 0.23.48"]);
        let read = |path: &str| std::fs::read_to_string(crate::sh::workspace_root().join(path)).unwrap();
        let (main, fuzz) = (read("Cargo.lock"), read("fuzz/Cargo.lock"));
        assert!(super::versions_not_in(&fuzz, &main).is_empty(), "the repository's own locks agree");
    }
}
