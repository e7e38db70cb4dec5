//! Builds the kernel programs (helios-trace-ebpf) for the bpf target with aya-build and leaves
//! the object in OUT_DIR, where src/sys/loader.rs embeds it: the binary alone is the whole tool.
//!
//! Which toolchain builds them (README.md, "Quick start": what `cargo xtask setup` installs):
//! - `HELIOS_TRACE_EBPF_TOOLCHAIN`, when set;
//! - else `helios-bpf`, the rustup toolchain `cargo xtask setup` links to Debian's rustc-web
//!   (a stable rustc with a prebuilt `core` for bpfel, so no rust-src and no build-std);
//! - else `nightly` (the upstream route: nightly + rust-src + `-Z build-std=core`).
//!
//! Without the `ebpf` feature (xtask, which needs only the CLI definitions) the object is empty
//! and the loader refuses it with a clear message.
use std::{env, path::PathBuf};

// A build-dependency only so that cargo rebuilds this crate when the kernel programs change
// (Cargo.toml); aya-build builds it from its directory.
#[cfg(feature = "ebpf")]
use helios_trace_ebpf as _;

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    revision();
    kernel_tests();
    build_ebpf(&out_dir)
}

/// The kernel tests (tests/integration) load eBPF programs, which needs root. Built by another
/// user without HELIOS_TRACE_REQUIRE_BPF=1 (a plain `cargo test`), they are compiled as ignored,
/// with that reason, so the summary says they did not run instead of counting them as passed.
/// (`cargo xtask test` runs as root with HELIOS_TRACE_REQUIRE_BPF=1: they run, and fail rather
/// than skip.) Whoever builds is who runs, in a plain `cargo test`.
fn kernel_tests() {
    println!("cargo::rustc-check-cfg=cfg(kernel_tests_not_root)");
    println!("cargo:rerun-if-env-changed=HELIOS_TRACE_REQUIRE_BPF");
    let required = env::var("HELIOS_TRACE_REQUIRE_BPF").is_ok_and(|v| v == "1");
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    // `Uid:` real, effective, saved, filesystem.
    let euid =
        status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|ids| ids.split_whitespace().nth(1));
    if !required && euid != Some("0") {
        println!("cargo:rustc-cfg=kernel_tests_not_root");
    }
}

/// The git revision built (`--version`, `helios_trace_build_info`), "unknown" outside a git
/// checkout; rebuilt when HEAD moves.
fn revision() {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let revision = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=HELIOS_TRACE_REVISION={revision}");
    for reference in ["HEAD", "refs/heads", "packed-refs"] {
        // Only what exists: cargo takes a missing file for a changed one, and rebuilt the crate
        // and everything after it at every command in a checkout without packed-refs.
        if let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", reference])
            && std::path::Path::new(&path).exists()
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}

#[cfg(not(feature = "ebpf"))]
fn build_ebpf(out_dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::write(out_dir.join("helios-trace"), [])?;
    Ok(())
}

/// The toolchain name `cargo xtask setup` links; keep in sync with xtask/src/setup.rs.
#[cfg(feature = "ebpf")]
const LINKED_TOOLCHAIN: &str = "helios-bpf";

#[cfg(feature = "ebpf")]
fn build_ebpf(out_dir: &std::path::Path) -> anyhow::Result<()> {
    use aya_build::{Package, Toolchain};

    println!("cargo:rerun-if-env-changed=HELIOS_TRACE_EBPF_TOOLCHAIN");
    let toolchain = match env::var("HELIOS_TRACE_EBPF_TOOLCHAIN") {
        Ok(name) if !name.is_empty() => name,
        _ if toolchain_exists(LINKED_TOOLCHAIN) => LINKED_TOOLCHAIN.to_string(),
        _ => "nightly".to_string(),
    };
    if toolchain != "nightly" && env::var_os("RUSTC_BOOTSTRAP").is_none() {
        // aya-ebpf needs an unstable feature (asm_experimental_arch), and the programs
        // (helios-trace-ebpf's binary, crate `helios_trace`) one (core_intrinsics, for a
        // compare-and-swap). Naming the crates rather than "1" keeps aya-build from adding
        // `-Z build-std=core`, which needs rust-src.
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { env::set_var("RUSTC_BOOTSTRAP", "aya_ebpf,helios_trace") };
    }
    if env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        // clippy, docs and host-only checks: an empty object, which the loader refuses with
        // a clear message instead of a missing-file compile error.
        std::fs::write(out_dir.join("helios-trace"), [])?;
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../helios-trace-ebpf");
    let ebpf_dir = ebpf_dir.to_str().expect("UTF-8 path");
    aya_build::build_ebpf(
        [Package { name: "helios-trace-ebpf", root_dir: ebpf_dir, ..Default::default() }],
        Toolchain::Custom(&toolchain),
    )
}

#[cfg(feature = "ebpf")]
fn toolchain_exists(name: &str) -> bool {
    std::process::Command::new("rustup")
        .args(["run", name, "rustc", "--version"])
        .output()
        .is_ok_and(|out| out.status.success())
}
