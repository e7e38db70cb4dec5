//! The Go toolchains `cargo xtask setup --tests` installs beside the host's golang-go (1.19):
//! Debian's static `go` of other releases, unpacked into roots (xtask/src/roots.rs) and run from
//! the host. One source for the unit tests (resolve/modules/gopclntab.rs, resolve/goroutines.rs)
//! and the kernel tests (tests/integration/runtimes.rs), each including it with `#[path]`.
use std::path::PathBuf;

/// The releases the roots hold: in CI, every one must be found.
pub const ROOT_GO_RELEASES: [&str; 4] = ["1.24", "1.25", "1.26", "1.27"];

/// Each root's `usr/lib/go-RELEASE/bin/go`, as (release, go), oldest release first: found, not
/// listed, so that a root added to xtask needs no second list here.
pub fn root_go_toolchains() -> Vec<(String, PathBuf)> {
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
    let roots = home.join(".local/share/helios-trace/roots");
    let entries = |dir: PathBuf| std::fs::read_dir(dir).into_iter().flatten().flatten();
    let mut found: Vec<(String, PathBuf)> = entries(roots)
        .flat_map(|root| entries(root.path().join("usr/lib")))
        .filter_map(|lib| {
            let release = lib.file_name().to_str()?.strip_prefix("go-")?.to_string();
            let go = lib.path().join("bin/go");
            go.exists().then_some((release, go))
        })
        .collect();
    let order = |release: &str| -> Vec<u32> { release.split('.').filter_map(|n| n.parse().ok()).collect() };
    found.sort_by_key(|(release, _)| order(release));
    let releases: Vec<&str> = found.iter().map(|(release, _)| release.as_str()).collect();
    if std::env::var_os("CI").is_some() {
        assert_eq!(releases, ROOT_GO_RELEASES, "cargo xtask setup --tests installs these Go releases");
    } else if releases != ROOT_GO_RELEASES {
        eprintln!("only these Go releases of {ROOT_GO_RELEASES:?} are installed: {releases:?}");
    }
    found
}
