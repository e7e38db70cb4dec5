//! `cargo xtask install` and `cargo xtask deb` (issue 22): the installed binary runs, its man
//! pages and completions are where man and the shells look; the Debian package installs with
//! dpkg, its binary traces, and it removes cleanly.
// The test crate sees every dependency of xtask and uses three.
#![allow(unused_crate_dependencies)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// The helios-trace binary cargo built beside xtask (`cargo xtask test` builds every member).
fn helios_trace() -> PathBuf {
    let binary = Path::new(env!("CARGO_BIN_EXE_xtask")).with_file_name("helios-trace");
    assert!(
        binary.exists(),
        "{} is missing: build helios-trace first (cargo xtask test does)",
        binary.display()
    );
    binary
}

fn xtask(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask")).args(args).output().unwrap();
    assert!(out.status.success(), "xtask {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn root() -> bool {
    // SAFETY: no arguments.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn install_puts_the_binary_man_pages_and_completions_where_the_system_looks() {
    let prefix = tempfile::tempdir().unwrap();
    let binary = helios_trace();
    let out = xtask(&[
        "install",
        "--prefix",
        prefix.path().to_str().unwrap(),
        "--binary",
        binary.to_str().unwrap(),
    ]);
    assert!(out.stdout.is_empty(), "install says what it did on stderr");
    let installed = prefix.path().join("bin/helios-trace");
    let version = Command::new(&installed).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("helios-trace 0.1.0 ("));
    // man finds the page by name in the prefix's manpath.
    let man = Command::new("man")
        .args(["--manpath", prefix.path().join("share/man").to_str().unwrap(), "-w", "helios-trace-serve"])
        .output()
        .unwrap();
    assert!(man.status.success(), "man -w: {}", String::from_utf8_lossy(&man.stderr));
    for (file, word) in [
        ("share/bash-completion/completions/helios-trace", "--comm"),
        ("share/zsh/site-functions/_helios-trace", "--uid"),
        ("share/fish/vendor_completions.d/helios-trace.fish", "serve"),
    ] {
        let text = std::fs::read_to_string(prefix.path().join(file)).unwrap();
        assert!(text.contains(word), "{file} lacks {word}");
    }
}

#[test]
fn the_debian_package_installs_traces_and_removes() {
    if !root() {
        let required = std::env::var("HELIOS_TRACE_REQUIRE_BPF").is_ok_and(|v| v == "1");
        assert!(!required, "HELIOS_TRACE_REQUIRE_BPF=1 but not root: cannot install a package");
        eprintln!("skipping: installing a package and tracing need root");
        return;
    }
    let out_dir = tempfile::tempdir().unwrap();
    let out = xtask(&[
        "deb",
        "--binary",
        helios_trace().to_str().unwrap(),
        "--out-dir",
        out_dir.path().to_str().unwrap(),
    ]);
    let package = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(package.exists(), "{}", package.display());
    let run = |command: &mut Command| {
        let out = command.output().unwrap();
        assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
        out
    };
    /// Removes the package however the test ends.
    struct Installed;
    impl Drop for Installed {
        fn drop(&mut self) {
            let _ = Command::new("dpkg").args(["--remove", "helios-trace"]).output();
        }
    }
    run(Command::new("dpkg").arg("--install").arg(&package));
    let installed = Installed;
    let report = Command::new("/usr/bin/helios-trace")
        .args([
            "run",
            "--format",
            "json",
            "--view",
            "quiet",
            "--",
            "sh",
            "-c",
            "exec 3</etc/hostname; exit 3",
        ])
        .output()
        .unwrap();
    assert_eq!(
        report.status.code(),
        Some(3),
        "run passes CMD's status: {}",
        String::from_utf8_lossy(&report.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).expect("a JSON report");
    assert_eq!(report["command"]["exit_code"], 3);
    let pid = report["command"]["pid"].as_u64().unwrap();
    let process =
        report["processes"].as_array().unwrap().iter().find(|p| p["pid"] == pid).expect("the command");
    let files: u64 = process["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "file" && s["site"] != "before-trace")
        .map(|s| s["open"].as_u64().unwrap())
        .sum();
    assert_eq!(files, 1, "fd 3, held at its exit: {process:#}");
    let listed = run(Command::new("dpkg").args(["--listfiles", "helios-trace"]));
    let listed = String::from_utf8_lossy(&listed.stdout);
    for file in
        ["/usr/share/man/man1/helios-trace.1.gz", "/usr/share/bash-completion/completions/helios-trace"]
    {
        assert!(listed.lines().any(|l| l == file) && Path::new(file).exists(), "{file}: {listed}");
    }
    drop(installed);
    assert!(!Path::new("/usr/bin/helios-trace").exists(), "removed with the package");
}
