//! stdout carries the result only: what setup installs says goes to stderr (issue 22). Setup is
//! made to have something to install by a fake `dpkg-query` (nothing is installed) and a fake
//! `apt-get` (prints what apt prints, installs nothing) ahead of the real ones in PATH.
// The test crate sees every dependency of xtask and uses two.
#![allow(unused_crate_dependencies)]

use std::{fs, os::unix::fs::PermissionsExt, process::Command};

#[test]
fn what_setup_installs_says_goes_to_stderr() {
    // SAFETY: no arguments.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: setup installs packages only as root (or through sudo)");
        return;
    }
    let bin = tempfile::tempdir().unwrap();
    let marker = bin.path().join("apt-get-ran");
    let fake = |name: &str, body: &str| {
        let path = bin.path().join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    };
    fake("dpkg-query", "exit 1");
    fake(
        "apt-get",
        &format!("echo 'Reading package lists... (fake apt-get)'; touch {}; exit 0", marker.display()),
    );
    let path = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["setup", "--tests"])
        .env("PATH", path)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "setup failed: {stderr}");
    assert!(marker.exists(), "setup had something to install: {stderr}");
    assert!(stderr.contains("(fake apt-get)"), "apt's output is shown, on stderr: {stderr}");
    assert_eq!(stdout, "", "stdout carries nothing of setup");
}
