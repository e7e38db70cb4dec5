//! `cargo xtask image`: the container image of deploy/Containerfile. No base image can be
//! pulled (and none is needed): the release binary and the shared libraries it links, as
//! `ldd` names them, are staged into target/image/rootfs, and the Containerfile copies that
//! onto `scratch`.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::sh;

pub const DEFAULT_TAG: &str = "localhost/helios-trace:0.1.0";
/// Where the binary lives in the image (the Containerfile's ENTRYPOINT).
const IMAGE_BINARY: &str = "usr/local/bin/helios-trace";

/// Build (or take) the binary, stage it, and build the image.
pub fn build(binary: Option<PathBuf>, tag: &str) -> Result<()> {
    let root = sh::workspace_root();
    let binary = match binary {
        Some(binary) => binary,
        None => {
            sh::cargo(&["build", "--release", "--package", "helios-trace"], &[])?;
            root.join("target/release/helios-trace")
        }
    };
    let context = root.join("target/image");
    stage(&binary, &context.join("rootfs"))?;
    sh::check(
        Command::new("podman")
            .args(["build", "--file"])
            .arg(root.join("deploy/Containerfile"))
            .args(["--tag", tag])
            .arg(&context),
    )?;
    eprintln!("xtask image: built {tag}");
    Ok(())
}

/// `rootfs` afresh: the binary and every library the dynamic loader will look for, at the
/// paths `ldd` resolved them to (the loader's own path is the one in the binary's PT_INTERP).
fn stage(binary: &Path, rootfs: &Path) -> Result<()> {
    if rootfs.exists() {
        fs::remove_dir_all(rootfs).with_context(|| format!("cannot clear {}", rootfs.display()))?;
    }
    copy_into(binary, &rootfs.join(IMAGE_BINARY))?;
    let ldd = Command::new("ldd").arg(binary).output().context("cannot run ldd")?;
    if !ldd.status.success() {
        bail!("ldd {} failed: {}", binary.display(), String::from_utf8_lossy(&ldd.stderr).trim());
    }
    for library in linked_libraries(&String::from_utf8_lossy(&ldd.stdout)) {
        let inside = rootfs.join(library.strip_prefix("/").expect("absolute"));
        copy_into(&library, &inside)?;
    }
    Ok(())
}

/// The absolute paths in `ldd` output: `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)`
/// and the loader's `/lib64/ld-linux-x86-64.so.2 (0x…)`; the vDSO has no file.
pub(crate) fn linked_libraries(ldd: &str) -> Vec<PathBuf> {
    ldd.lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, resolved)) => resolved.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Copy the file (following symlinks: the image has no need for the links) into place.
fn copy_into(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to.parent().expect("a path in rootfs has a parent"))?;
    fs::copy(from, to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_libraries_from_ldd_output() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd1a5f2000)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0c1b2a0000)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0c1b0bf000)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f0c1b8f1000)\n";
        assert_eq!(
            linked_libraries(ldd),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(linked_libraries("\tstatically linked\n").is_empty());
    }
}
