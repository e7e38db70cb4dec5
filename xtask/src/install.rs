//! `cargo xtask install [--prefix DIR]` and `cargo xtask deb`: the binary, its man pages and its
//! shell completions where the system looks for them (the FHS layout under a prefix, as `make
//! install` would), and the same tree as a Debian package built with Debian's own `dpkg-deb`
//! (no cargo-deb to compile: the package is a directory tree and a control file).
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{docs, sh};

/// Where each kind of file goes under a prefix. Completions go where each shell's own
/// packaging looks (bash-completion's `completionsdir`, zsh's `site-functions`, fish's
/// `vendor_completions.d`); elvish and powershell have no such place and are left out.
const BIN_DIR: &str = "bin";
const MAN_DIR: &str = "share/man/man1";
const COMPLETIONS: [(&str, &str); 3] = [
    ("helios-trace.bash", "share/bash-completion/completions/helios-trace"),
    ("_helios-trace", "share/zsh/site-functions/_helios-trace"),
    ("helios-trace.fish", "share/fish/vendor_completions.d/helios-trace.fish"),
];

/// The release binary: `binary` when given, else built now.
pub fn release_binary(binary: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(binary) = binary {
        return Ok(binary);
    }
    sh::cargo(&["build", "--release", "--package", "helios-trace"], &[])?;
    Ok(sh::workspace_root().join("target/release/helios-trace"))
}

/// Install `binary`, the man pages and the completions under `prefix`; the paths written.
/// Each file is written beside its place and renamed over it: a running helios-trace or a
/// reader of the old page never sees half a file.
pub fn install(binary: &Path, prefix: &Path) -> Result<Vec<PathBuf>> {
    let scratch = tempfile::tempdir().context("cannot make a scratch directory")?;
    let mut files: Vec<(PathBuf, PathBuf, u32)> =
        vec![(binary.to_path_buf(), prefix.join(BIN_DIR).join("helios-trace"), 0o755)];
    for page in docs::man_pages(&scratch.path().join("man"))? {
        let name = page.file_name().expect("a page has a name").to_owned();
        files.push((page, prefix.join(MAN_DIR).join(name), 0o644));
    }
    let completions = scratch.path().join("completions");
    docs::completions(&completions)?;
    for (generated, place) in COMPLETIONS {
        files.push((completions.join(generated), prefix.join(place), 0o644));
    }
    let mut written = Vec::new();
    for (from, to, mode) in files {
        put(&from, &to, mode)?;
        written.push(to);
    }
    Ok(written)
}

/// Copy `from` to `to` with `mode`, through a temporary file in `to`'s directory.
fn put(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let dir = to.parent().expect("an installed file has a directory");
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let temporary =
        tempfile::NamedTempFile::new_in(dir).with_context(|| format!("cannot write in {}", dir.display()))?;
    fs::copy(from, temporary.path()).with_context(|| format!("cannot copy {}", from.display()))?;
    fs::set_permissions(temporary.path(), fs::Permissions::from_mode(mode))?;
    temporary.persist(to).with_context(|| format!("cannot replace {}", to.display()))?;
    Ok(())
}

/// Build `helios-trace_VERSION_ARCH.deb` in `out_dir` from `binary`: the install tree under
/// /usr, man pages compressed as Debian policy asks (§12.1), a control file whose Depends
/// comes from the libraries the binary links. Returns the package's path.
pub fn deb(binary: &Path, out_dir: &Path) -> Result<PathBuf> {
    let version = env!("CARGO_PKG_VERSION");
    let arch = sh::output("dpkg", &["--print-architecture"]).context("dpkg --print-architecture")?;
    let arch = arch.trim();
    let stage = tempfile::tempdir().context("cannot make a staging directory")?;
    let root = stage.path().join("root");
    for path in install(binary, &root.join("usr"))? {
        if path.extension().is_some_and(|e| e == "1") {
            sh::check(Command::new("gzip").args(["-9", "-n"]).arg(&path))?;
        }
    }
    fs::create_dir_all(root.join("DEBIAN"))?;
    fs::write(root.join("DEBIAN/control"), control(version, arch, &depends(binary)?))?;
    fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let package = out_dir.join(format!("helios-trace_{version}_{arch}.deb"));
    sh::check(Command::new("dpkg-deb").args(["--root-owner-group", "--build"]).arg(&root).arg(&package))?;
    Ok(package)
}

/// The control file (Debian policy §5.3).
fn control(version: &str, arch: &str, depends: &str) -> String {
    format!(
        "Package: helios-trace\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: helios-trace developers <helios-trace@localhost>\n\
         Depends: {depends}\n\
         Section: utils\n\
         Priority: optional\n\
         Description: find file-descriptor and socket leaks in running processes\n \
         An eBPF tracer that matches each descriptor a process opens with its close and\n \
         reports what is still open by the call stack that opened it, as a report or as\n \
         Prometheus metrics.\n"
    )
}

/// The packages providing the shared libraries `binary` links (`ldd`, then `dpkg -S`), with
/// the upstream part of the installed version of each as the minimum: what the binary was
/// built against (the Debian revision left out: any build of that release will do).
fn depends(binary: &Path) -> Result<String> {
    let ldd = sh::output("ldd", &[&binary.to_string_lossy()]).context("ldd")?;
    let mut packages: Vec<String> = Vec::new();
    for library in crate::image::linked_libraries(&ldd) {
        // dpkg knows a file by the path its package installed (/lib is a link to /usr/lib on
        // merged-/usr systems): the path as ldd says it, else its canonical one.
        let canonical = fs::canonicalize(&library).unwrap_or_else(|_| library.clone());
        let owner =
            [&library, &canonical].iter().find_map(|p| sh::output("dpkg", &["-S", &p.to_string_lossy()]));
        let Some(owner) = owner else { bail!("no package owns {}", library.display()) };
        packages.push(package_name(&owner)?);
    }
    packages.sort();
    packages.dedup();
    let versioned: Vec<String> = packages
        .iter()
        .map(|p| {
            let version =
                sh::output("dpkg-query", &["--showformat=${Version}", "--show", p]).unwrap_or_default();
            match upstream_version(version.trim()) {
                "" => p.clone(),
                upstream => format!("{p} (>= {upstream})"),
            }
        })
        .collect();
    Ok(versioned.join(", "))
}

/// `2.36-9+deb12u14` → `2.36`, `1:1.2.13` → `1:1.2.13` (Debian policy §5.6.12: the revision
/// follows the last hyphen).
fn upstream_version(version: &str) -> &str {
    version.rsplit_once('-').map_or(version, |(upstream, _)| upstream)
}

/// `libc6:amd64: /lib/x86_64-linux-gnu/libc.so.6` → `libc6`.
fn package_name(dpkg_search: &str) -> Result<String> {
    let first = dpkg_search.lines().next().unwrap_or_default();
    let package = first.split(':').next().unwrap_or_default().trim();
    if package.is_empty() {
        bail!("cannot read dpkg -S's answer: {first}");
    }
    Ok(package.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_package_of_a_library_is_what_dpkg_names_first() {
        assert_eq!(package_name("libc6:amd64: /lib/x86_64-linux-gnu/libc.so.6\n").unwrap(), "libc6");
        assert_eq!(package_name("zlib1g: /usr/lib/libz.so.1").unwrap(), "zlib1g");
        assert!(package_name("").is_err());
    }

    #[test]
    fn dependencies_ask_for_the_upstream_release() {
        assert_eq!(upstream_version("2.36-9+deb12u14"), "2.36");
        assert_eq!(upstream_version("12.2.0-14+deb12u1"), "12.2.0");
        assert_eq!(upstream_version("1:1.2.13.dfsg-1"), "1:1.2.13.dfsg");
        assert_eq!(upstream_version("3.0"), "3.0");
    }

    #[test]
    fn the_control_file_has_the_fields_dpkg_requires() {
        let text = control("0.1.0", "amd64", "libc6 (>= 2.36)");
        for field in [
            "Package: helios-trace",
            "Version: 0.1.0",
            "Architecture: amd64",
            "Maintainer: ",
            "Description: ",
        ] {
            assert!(text.lines().any(|l| l.starts_with(field)), "{field} in {text}");
        }
        assert!(text.ends_with(".\n"));
        assert!(
            text.lines().skip_while(|l| !l.starts_with("Description")).skip(1).all(|l| l.starts_with(' '))
        );
    }
}
