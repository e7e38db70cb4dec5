//! `cargo xtask setup`: make this machine able to build (and test) helios-trace, installing only
//! what is missing, saying what it does, and fast when nothing is.
//!
//! The eBPF programs need a Rust compiler that can target bpfel-unknown-none and bpf-linker
//! (README.md, "Quick start"). Two routes:
//! - upstream: a nightly toolchain with rust-src (build-std) and bpf-linker — used when present;
//! - Debian: rustc-web (a stable rustc with a prebuilt `core` for bpfel from
//!   libstd-rust-web-dev-bpf), llvm-N-dev of the same LLVM major, bpf-linker built against it,
//!   and a rustup toolchain `helios-bpf` linking them (helios-trace/build.rs looks for it).
use std::{fs, os::unix::fs::symlink, path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{roots, sh};

/// Keep in sync with helios-trace/build.rs.
const TOOLCHAIN: &str = "helios-bpf";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Validates the Kubernetes manifests of deploy/ offline (its schemas ship with it).
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";
/// cargo-fuzz drives the parser fuzz targets (fuzz/), on stable with `--sanitizer none`.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Debian packages the test suite uses: real Prometheus (promtool too), podman for the image
/// build, gcc for the C workloads (binutils' strip for the stripped one), tmux for the
/// live-view test, bpftrace for the benchmark peer; for the pod tests musl-gcc (a static musl
/// workload), iproute2's `ip`/`ss` and util-linux's `unshare`/`nsenter`, and the Debian archive
/// keyring the roots of other suites are verified with; Go (golang-go) for the Go workloads built
/// stripped and unstripped, Node.js and the JDK (javac, jcmd, jlink) for the JIT workloads that
/// write perf maps; curl for
/// serve's TLS and client certificate tests; man-db for the test of `cargo xtask install`.
const TEST_PACKAGES: &[&str] = &[
    "prometheus",
    "podman",
    "gcc",
    "binutils",
    "tmux",
    "bpftrace",
    "python3",
    "python3-venv",
    "musl-tools",
    "iproute2",
    "util-linux",
    "debian-archive-keyring",
    "golang-go",
    "nodejs",
    "openjdk-17-jdk-headless",
    "curl",
    "man-db",
];

pub fn ensure(for_tests: bool) -> Result<()> {
    let mut apt = Apt::default();
    if upstream_route_ready() {
        eprintln!("xtask setup: using the nightly toolchain with rust-src and bpf-linker");
    } else {
        debian_route(&mut apt)?;
    }
    if for_tests {
        apt.install(TEST_PACKAGES)?;
        ensure_cargo_tool("cargo-fuzz", CARGO_FUZZ_VERSION, &["fuzz", "--version"])?;
        ensure_python_venv()?;
        ensure_corpus_venv()?;
        roots::ensure_all(&data_dir()?)?;
        ensure_corpus_packages_of_roots()?;
    }
    Ok(())
}

/// What `cargo xtask bench` needs beyond the build: gcc for its workloads, bpftrace for the
/// peer it is compared with, Debian's CPython for the Python row, nginx and ab (apache2-utils)
/// for the real server's.
pub fn ensure_bench_tools() -> Result<()> {
    Apt::default().install(&["gcc", "bpftrace", "python3", "nginx-light", "apache2-utils"])
}

/// What `cargo xtask image` needs beyond the build.
pub fn ensure_image_tools() -> Result<()> {
    Apt::default().install(&["podman"])
}

/// A virtualenv (python3-venv, a test package) with kubernetes-validate, which also brings
/// PyYAML: the tests read the manifests with it. Tests find it at the same path.
fn ensure_python_venv() -> Result<()> {
    let venv = data_dir()?.join("venv");
    let validator = venv.join("bin/kubernetes-validate");
    let installed = sh::output(&validator.to_string_lossy(), &["--version"])
        .is_some_and(|v| v.contains(KUBERNETES_VALIDATE_VERSION));
    if installed {
        return Ok(());
    }
    eprintln!(
        "xtask setup: installing kubernetes-validate {KUBERNETES_VALIDATE_VERSION} into {}",
        venv.display()
    );
    sh::check(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    sh::check(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}")),
    )
}

/// The leak corpus's virtualenv (helios-trace/tests/workloads/corpus): Debian's python3 (a
/// test package; `python3` on PATH may be another, e.g. pyenv's shim) with the frameworks of
/// its requirements.txt, every package pinned, dependencies included (`--no-deps`: nothing
/// unpinned comes in). Installed again only when that file changed (a copy of it in the
/// virtualenv says what is there).
fn ensure_corpus_venv() -> Result<()> {
    let venv = data_dir()?.join("corpus-venv");
    let wanted_path = sh::workspace_root().join("helios-trace/tests/workloads/corpus/requirements.txt");
    let wanted =
        fs::read_to_string(&wanted_path).with_context(|| format!("reading {}", wanted_path.display()))?;
    let installed = venv.join("installed-requirements.txt");
    if venv.join("bin/python").exists() && fs::read_to_string(&installed).is_ok_and(|i| i == wanted) {
        return Ok(());
    }
    eprintln!("xtask setup: installing the leak corpus's packages into {} (about a minute)", venv.display());
    sh::check(Command::new("/usr/bin/python3").args(["-m", "venv", "--clear"]).arg(&venv))?;
    sh::check(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "--no-deps", "-r"])
            .arg(&wanted_path),
    )?;
    fs::write(&installed, wanted).with_context(|| format!("writing {}", installed.display()))
}

/// The roots (roots.rs) whose CPython runs the leak corpus too, with its version: the corpus
/// test runs on each (tests/integration/corpus.rs, which knows the same list).
const CORPUS_ROOTS: &[(&str, &str)] = &[("sid-python3.14", "3.14"), ("trixie-python3.13", "3.13")];

/// The corpus's pinned packages for the CPython of each of [`CORPUS_ROOTS`], in
/// `corpus/ROOT` beside the roots (not inside: a pod copies its whole root), which the test
/// bind-mounts into the chroot and puts on PYTHONPATH. The roots hold no pip: the corpus
/// virtualenv's pip installs their wheels for that version (`--python-version`, binary wheels
/// only, so nothing is built by the host's compiler for another interpreter; the host's
/// manylinux tags are glibc 2.36's, which the roots' newer glibcs run). Installed aside and
/// renamed into place, again only when requirements.txt changed.
fn ensure_corpus_packages_of_roots() -> Result<()> {
    let wanted_path = sh::workspace_root().join("helios-trace/tests/workloads/corpus/requirements.txt");
    let wanted =
        fs::read_to_string(&wanted_path).with_context(|| format!("reading {}", wanted_path.display()))?;
    let pip = data_dir()?.join("corpus-venv/bin/pip");
    let corpus = data_dir()?.join("corpus");
    fs::create_dir_all(&corpus).with_context(|| format!("cannot create {}", corpus.display()))?;
    for (root, version) in CORPUS_ROOTS {
        let dir = corpus.join(root);
        if fs::read_to_string(dir.join("installed-requirements.txt")).is_ok_and(|i| i == wanted) {
            continue;
        }
        eprintln!(
            "xtask setup: installing the leak corpus's packages for CPython {version} into {}",
            dir.display()
        );
        let work = tempfile::Builder::new()
            .prefix(&format!(".{root}."))
            .tempdir_in(&corpus)
            .with_context(|| format!("cannot create a directory in {}", corpus.display()))?;
        let target = work.path().join("packages");
        sh::check(
            Command::new(&pip)
                .args(["install", "--quiet", "--disable-pip-version-check", "--no-deps", "--no-compile"])
                .args(["--only-binary=:all:", "--implementation", "cp", "--python-version", version])
                .arg("--target")
                .arg(&target)
                .arg("-r")
                .arg(&wanted_path),
        )?;
        fs::write(target.join("installed-requirements.txt"), &wanted)?;
        if dir.exists() {
            fs::rename(&dir, work.path().join("old"))
                .with_context(|| format!("cannot move {} away", dir.display()))?;
        }
        fs::rename(&target, &dir).with_context(|| format!("cannot rename into {}", dir.display()))?;
    }
    Ok(())
}

/// A cargo subcommand from crates.io at a pinned version.
fn ensure_cargo_tool(package: &str, version: &str, check: &[&str]) -> Result<()> {
    if sh::output(&sh::cargo_path(), check).is_some_and(|v| v.contains(version)) {
        return Ok(());
    }
    eprintln!("xtask setup: installing {package} {version}");
    sh::check(Command::new(sh::cargo_path()).args(["install", "--locked", &format!("{package}@{version}")]))
}

fn upstream_route_ready() -> bool {
    let has_rust_src = sh::output("rustup", &["component", "list", "--installed", "--toolchain", "nightly"])
        .is_some_and(|list| list.lines().any(|l| l.starts_with("rust-src")));
    has_rust_src && sh::output("bpf-linker", &["--version"]).is_some()
}

fn debian_route(apt: &mut Apt) -> Result<()> {
    apt.install(&["rustc-web", "libstd-rust-web-dev-bpf"])?;
    // bpf-linker must link the LLVM that emitted the bitcode: read its major from rustc-web
    // rather than hard-coding it (rustc-web is a security-update package and moves).
    let version =
        sh::output("/usr/bin/rustc", &["-vV"]).context("/usr/bin/rustc (rustc-web) does not run")?;
    let llvm_major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("/usr/bin/rustc -vV names no LLVM version")?
        .to_string();
    apt.install(&[&format!("llvm-{llvm_major}-dev")])?;
    ensure_bpf_linker(&llvm_major)?;
    ensure_toolchain_link()
}

/// bpf-linker of our version, linked against LLVM `major`.
fn ensure_bpf_linker(major: &str) -> Result<()> {
    let installed = sh::output("bpf-linker", &["--version"]).is_some_and(|v| v.contains(BPF_LINKER_VERSION));
    let linked_llvm = which("bpf-linker").and_then(|path| sh::output("ldd", &[&path])).is_some_and(|ldd| {
        ldd.contains(&format!("libLLVM.so.{major}")) || ldd.contains(&format!("libLLVM-{major}"))
    });
    if installed && linked_llvm {
        return Ok(());
    }
    eprintln!(
        "xtask setup: installing bpf-linker {BPF_LINKER_VERSION} against LLVM {major} (about a minute)"
    );
    let mut command = Command::new(sh::cargo_path());
    command
        .args(["install", "--locked", "--force", &format!("bpf-linker@{BPF_LINKER_VERSION}")])
        .args(["--no-default-features", "--features", &format!("llvm-{major}")])
        // Debian's /usr/bin/llvm-config is LLVM 14: point at the right one.
        .env("LLVM_PREFIX", format!("/usr/lib/llvm-{major}"));
    sh::check(&mut command)
}

/// A rustup toolchain whose rustc is Debian's rustc-web and whose cargo is stable's (aya-build
/// runs `rustup run <toolchain> cargo build`; a toolchain without cargo borrows another one's).
fn ensure_toolchain_link() -> Result<()> {
    let dir = toolchain_dir()?;
    let stable_cargo = sh::output("rustup", &["which", "--toolchain", "stable", "cargo"])
        .map(|s| s.trim().to_string())
        .context("rustup has no stable toolchain to borrow cargo from")?;
    let links = [
        ("rustc", "/usr/bin/rustc".to_string()),
        ("rustdoc", "/usr/bin/rustdoc".to_string()),
        ("cargo", stable_cargo),
    ];
    let linked = links.iter().all(|(name, target)| {
        fs::read_link(dir.join("bin").join(name)).is_ok_and(|t| t.as_os_str() == target.as_str())
    }) && sh::output("rustup", &["run", TOOLCHAIN, "rustc", "--version"]).is_some();
    if linked {
        return Ok(());
    }
    eprintln!("xtask setup: linking rustup toolchain {TOOLCHAIN} at {}", dir.display());
    fs::create_dir_all(dir.join("bin"))?;
    // rustup refuses to link a directory without lib/.
    fs::create_dir_all(dir.join("lib"))?;
    for (name, target) in links {
        let path = dir.join("bin").join(name);
        let _ = fs::remove_file(&path);
        symlink(&target, &path).with_context(|| format!("cannot link {}", path.display()))?;
    }
    sh::check(Command::new("rustup").args(["toolchain", "link", TOOLCHAIN]).arg(&dir))
}

fn toolchain_dir() -> Result<PathBuf> {
    Ok(data_dir()?.join("bpf-toolchain"))
}

/// The user's data directory for what setup installs outside the system.
fn data_dir() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".local/share/helios-trace"))
}

fn which(program: &str) -> Option<String> {
    sh::output("sh", &["-c", &format!("command -v {program}")]).map(|s| s.trim().to_string())
}

/// apt-get, run at most once per setup for `update`, only for packages not installed.
#[derive(Default)]
struct Apt {
    updated: bool,
}

impl Apt {
    fn install(&mut self, packages: &[&str]) -> Result<()> {
        let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        if which("apt-get").is_none() {
            bail!(
                "missing packages {}; this is not a Debian-like system: install the equivalents by hand (see README.md, \"Quick start\")",
                missing.join(" ")
            );
        }
        if !sh::is_root() && sh::output("sudo", &["-n", "true"]).is_none() {
            bail!(
                "missing packages {}; install them with: sudo apt-get update && sudo apt-get install -y {}",
                missing.join(" "),
                missing.join(" ")
            );
        }
        eprintln!("xtask setup: installing {}", missing.join(" "));
        let apt_get = |args: &[&str]| {
            let mut command = sh::as_root("apt-get", &args.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            command.env("DEBIAN_FRONTEND", "noninteractive");
            command
        };
        if !self.updated {
            sh::check(&mut apt_get(&["update", "-qq"]))?;
            self.updated = true;
        }
        let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
        args.extend(&missing);
        sh::check(&mut apt_get(&args))
    }
}

fn installed(package: &str) -> bool {
    sh::output("dpkg-query", &["-W", "-f=${Status}", package])
        .is_some_and(|s| s.contains("install ok installed"))
}
