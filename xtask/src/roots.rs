//! Root filesystems of other distributions for the pod tests (ARCHITECTURE.md, Tests): a
//! directory holding a Debian suite's own glibc and CPython, unpacked from the suite's binary
//! packages, that a test copies into a pod's private tmpfs and pivots into; and, made the same
//! way, Debian's Go toolchains of other releases, which tests run from the host.
//!
//! Nothing of the host's packages or apt configuration changes: apt runs with a private state
//! (sources, lists, cache, an empty dpkg status, no configuration parts) whose only source is
//! the suite, signed by the Debian archive keyring. `apt-get install --download-only` against
//! the empty status resolves the whole dependency closure of the named packages with apt's own
//! resolver (no hand-kept list to go stale as the suite moves), `dpkg -x` unpacks each package
//! (no maintainer scripts run), and a command run in the result (chrooted, for a pod's root)
//! checks it.
//!
//! Cached under `$HOME/.local/share/helios-trace/roots/NAME`, with a stamp naming every package
//! and version; rebuilt only when the stamp or the check fails. Built in a temporary directory
//! beside it and renamed into place, so a root is either whole or absent.
use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::sh;

/// A root: a suite of the Debian archive, the packages it must hold (their dependencies come
/// along), and a command that must run in it.
pub struct RootSpec {
    /// The directory's name under the roots directory.
    pub name: &'static str,
    pub suite: &'static str,
    pub packages: &'static [&'static str],
    pub check: &'static [&'static str],
    /// `check` runs chrooted in the root (a root for pods: its own glibc); else the root's
    /// program runs from the host (static Go toolchains, which find their files from their own
    /// path, /proc/self/exe, which a chroot without /proc lacks).
    pub chrooted: bool,
}

/// The roots `cargo xtask setup --tests` builds. A new one is one line.
pub const ROOTS: &[RootSpec] = &[
    // Debian unstable: another glibc than the host's and CPython 3.14.
    RootSpec {
        name: "sid-python3.14",
        suite: "sid",
        packages: &["python3.14"],
        check: &["/usr/bin/python3.14", "-c", "import socket, ssl, sqlite3, asyncio"],
        chrooted: true,
    },
    // Debian 13: CPython 3.13 with its own glibc.
    RootSpec {
        name: "trixie-python3.13",
        suite: "trixie",
        packages: &["python3.13"],
        check: &["/usr/bin/python3.13", "-c", "import socket, ssl, sqlite3, asyncio"],
        chrooted: true,
    },
    // Go toolchains as Debian ships them (static), for Go workloads built by more releases than
    // the host's golang-go (1.19): the two supported upstream (sid), Debian 13's and its
    // backports' 1.25. The tests run them from the host (helios-trace/tests/
    // shared/go_toolchains.rs finds them).
    RootSpec {
        name: "sid-go",
        suite: "sid",
        packages: &["golang-1.26-go", "golang-1.27-go"],
        check: &["/usr/lib/go-1.27/bin/go", "version"],
        chrooted: false,
    },
    RootSpec {
        name: "trixie-go",
        suite: "trixie",
        packages: &["golang-1.24-go"],
        check: &["/usr/lib/go-1.24/bin/go", "version"],
        chrooted: false,
    },
    // The release between them, from Debian 13's backports.
    RootSpec {
        name: "trixie-backports-go",
        suite: "trixie-backports",
        packages: &["golang-1.25-go"],
        check: &["/usr/lib/go-1.25/bin/go", "version"],
        chrooted: false,
    },
    // Debian 11: CPython 3.9, older than the Python frames support (the unsupported-interpreter
    // test's, instead of whatever pyenv holds).
    RootSpec {
        name: "bullseye-python3.9",
        suite: "bullseye",
        packages: &["python3.9"],
        check: &["/usr/bin/python3.9", "-c", "import socket, ssl, sqlite3, asyncio"],
        chrooted: true,
    },
];

const MIRROR: &str = "http://deb.debian.org/debian";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Written last into a finished root: the spec it was built from, then `package version` lines.
const STAMP: &str = ".helios-trace-root";

pub fn roots_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("roots")
}

/// Every root of [`ROOTS`], built when missing or incomplete.
pub fn ensure_all(data_dir: &Path) -> Result<()> {
    for spec in ROOTS {
        ensure(spec, &roots_dir(data_dir))?;
    }
    Ok(())
}

/// The first line of the stamp: what the root was built from.
fn spec_line(spec: &RootSpec) -> String {
    format!("suite={} packages={}", spec.suite, spec.packages.join(","))
}

fn ensure(spec: &RootSpec, roots: &Path) -> Result<PathBuf> {
    let dir = roots.join(spec.name);
    let stamped = fs::read_to_string(dir.join(STAMP))
        .is_ok_and(|stamp| stamp.lines().next() == Some(spec_line(spec).as_str()));
    if stamped && runs_check(spec, &dir) {
        return Ok(dir);
    }
    eprintln!(
        "xtask setup: building the {} root from Debian {} packages into {}",
        spec.name,
        spec.suite,
        dir.display()
    );
    fs::create_dir_all(roots).with_context(|| format!("cannot create {}", roots.display()))?;
    let work = tempfile::Builder::new()
        .prefix(&format!(".{}.", spec.name))
        .tempdir_in(roots)
        .with_context(|| format!("cannot create a directory in {}", roots.display()))?;
    let root = work.path().join("root");
    let debs = download(spec, &work.path().join("apt"))?;
    fs::create_dir(&root)?;
    let mut versions = Vec::new();
    for deb in &debs {
        sh::check(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
        let fields = sh::output("dpkg-deb", &["-f", &deb.to_string_lossy(), "Package", "Version"])
            .with_context(|| format!("dpkg-deb cannot read {}", deb.display()))?;
        versions.push(
            fields.lines().filter_map(|l| l.split_once(": ")).map(|(_, v)| v).collect::<Vec<_>>().join(" "),
        );
    }
    finish_layout(&root)?;
    if !runs_check(spec, &root) {
        let how =
            if spec.chrooted { format!("chroot {} ", root.display()) } else { root.display().to_string() };
        bail!("the {} root is built but `{how}{}` fails", spec.name, spec.check.join(" "));
    }
    versions.sort();
    fs::write(root.join(STAMP), format!("{}\n{}\n", spec_line(spec), versions.join("\n")))?;
    // An incomplete root of the same name goes out of the way first; rename is atomic.
    if dir.exists() {
        let old = work.path().join("old");
        fs::rename(&dir, &old).with_context(|| format!("cannot move {} away", dir.display()))?;
    }
    fs::rename(&root, &dir).with_context(|| format!("cannot rename the root to {}", dir.display()))?;
    eprintln!("xtask setup: {} holds {} packages", dir.display(), versions.len());
    Ok(dir)
}

/// The .deb files of the packages and everything they depend on, through a private apt state in
/// `apt` (nothing of the host's apt configuration is read or changed).
fn download(spec: &RootSpec, apt: &Path) -> Result<Vec<PathBuf>> {
    for sub in ["etc/parts", "etc/preferences.d", "state/lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(apt.join(sub))?;
    }
    let sources = apt.join("etc/sources.list");
    fs::write(&sources, format!("deb [signed-by={KEYRING}] {MIRROR} {} main\n", spec.suite))?;
    let status = apt.join("state/status");
    fs::write(&status, "")?;
    // APT_CONFIG is read before anything else, so the host's apt.conf.d is never consulted
    // (its hooks would fetch extra indexes); the options below repeat it on the command line.
    let config = apt.join("etc/apt.conf");
    let options = [
        ("Dir::Etc::SourceList", sources.clone()),
        ("Dir::Etc::SourceParts", apt.join("etc/parts")),
        ("Dir::Etc::Parts", apt.join("etc/parts")),
        ("Dir::Etc::PreferencesParts", apt.join("etc/preferences.d")),
        ("Dir::Etc::Preferences", apt.join("etc/preferences")),
        ("Dir::State", apt.join("state")),
        ("Dir::State::status", status),
        ("Dir::Cache", apt.join("cache")),
    ];
    let mut text: String = options.iter().map(|(k, v)| format!("{k} \"{}\";\n", v.display())).collect();
    // The private state is ours alone: no lock on the host's dpkg database is needed.
    text.push_str("Debug::NoLocking \"true\";\nAPT::Install-Recommends \"false\";\n");
    // The download runs as root in a directory _apt cannot enter: no privilege drop.
    text.push_str("APT::Sandbox::User \"root\";\n");
    // Mirrors that serve a dated snapshot of the archive (this project's machines do, and
    // their own apt configuration says the same) carry Release files past their Valid-Until;
    // the signature is still checked against the archive keyring.
    text.push_str("Acquire::Check-Valid-Until \"false\";\n");
    fs::write(&config, text)?;
    let apt_get = |args: &[&str]| {
        let mut command = Command::new("apt-get");
        command.env("APT_CONFIG", &config).env("DEBIAN_FRONTEND", "noninteractive").args(["-q", "-y"]);
        for (key, value) in &options {
            command.arg("-o").arg(format!("{key}={}", value.display()));
        }
        command.args(args);
        command
    };
    sh::check(&mut apt_get(&["update"]))?;
    let mut install = vec!["install", "--download-only"];
    install.extend(spec.packages);
    sh::check(&mut apt_get(&install))?;
    let archives = apt.join("cache/archives");
    let mut debs: Vec<PathBuf> = fs::read_dir(&archives)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    debs.sort();
    if debs.is_empty() {
        bail!("apt downloaded nothing into {}", archives.display());
    }
    Ok(debs)
}

/// What dpkg's maintainer scripts and the base system would have made: the merged-/usr links
/// (Debian's packages ship their files under /usr only) and the mount points a pod fills.
fn finish_layout(root: &Path) -> Result<()> {
    for dir in ["bin", "sbin", "lib", "lib64"] {
        fs::create_dir_all(root.join("usr").join(dir))?;
        let link = root.join(dir);
        if fs::symlink_metadata(&link).is_err() {
            symlink(format!("usr/{dir}"), &link)?;
        }
    }
    for dir in ["proc", "dev", "tmp", "sys", "etc"] {
        fs::create_dir_all(root.join(dir))?;
    }
    Ok(())
}

/// The spec's check, chrooted in `root` (as root: chroot needs CAP_SYS_CHROOT), or from the
/// host.
fn runs_check(spec: &RootSpec, root: &Path) -> bool {
    if !spec.chrooted {
        let program = root.join(spec.check[0].trim_start_matches('/'));
        return Command::new(program).args(&spec.check[1..]).output().is_ok_and(|out| out.status.success());
    }
    let mut args = vec![root.to_string_lossy().into_owned()];
    args.extend(spec.check.iter().map(|s| s.to_string()));
    sh::as_root("chroot", &args).output().is_ok_and(|out| out.status.success())
}
