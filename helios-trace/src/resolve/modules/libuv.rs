//! Where a module has libuv's TCP entry points (ARCHITECTURE.md, "Handles"): the file offsets
//! the kernel's uprobes are attached at (helios-trace-ebpf/src/libuv.rs). Node.js links libuv
//! into its executable and exports its API (`node --version` ≥ 12 ships `uv_*` in .dynsym for
//! addons); a distribution's node links `libuv.so.1`, which exports it too.
use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::Arc,
};

use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};

use super::{elf::LoadedModule, files::ModuleFile, maps::FileKey};

/// `uv_tcp_init` makes the handle of `new TCP()` (it may be a copy of `uv_tcp_init_ex`'s code
/// rather than a call to it: both are probed); `uv_tcp_connect` makes the socket of a handle
/// that has none (src/unix/tcp.c).
const INIT: [&str; 2] = ["uv_tcp_init", "uv_tcp_init_ex"];
const CONNECT: &str = "uv_tcp_connect";

/// File offsets of libuv's TCP entry points in one module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LibuvEntries {
    /// Of `uv_tcp_init` and `uv_tcp_init_ex`, those the module defines.
    pub(crate) init: Vec<u64>,
    pub(crate) connect: u64,
}

impl LibuvEntries {
    /// The entry points of a parsed ELF file whose PT_LOAD segments are `segments` (file
    /// offset, SVMA, file size); None unless it defines `uv_tcp_connect` and one of the init
    /// functions. Only the dynamic symbols are looked at (a stripped binary keeps them, and Node
    /// exports libuv's API for addons): this runs for every module parsed, and a full symbol
    /// table (a Go binary's, tens of thousands) would be read for nothing.
    pub(crate) fn find(elf: &object::File<'_>, segments: &[(u64, u64, u64)]) -> Option<LibuvEntries> {
        let offset = |address: u64| {
            segments
                .iter()
                .find(|(_, svma, size)| (*svma..svma + size).contains(&address))
                .map(|(offset, svma, _)| offset + (address - svma))
        };
        let (mut init, mut connect) = (Vec::new(), None);
        for symbol in elf.dynamic_symbols() {
            if !symbol.is_definition() {
                continue;
            }
            let Ok(name) = symbol.name() else { continue };
            if INIT.contains(&name) {
                init.extend(offset(symbol.address()));
            } else if name == CONNECT {
                connect = offset(symbol.address());
            }
        }
        let connect = connect.filter(|_| !init.is_empty())?;
        init.sort_unstable();
        init.dedup();
        Some(LibuvEntries { init, connect })
    }
}

/// The entry points of the ELF file at `path` (a command about to be run).
pub(crate) fn entries_of_file(path: &Path) -> std::io::Result<Option<LibuvEntries>> {
    let file = std::fs::File::open(path)?;
    // SAFETY: a read-only private mapping, read only through object's bounds-checked parser
    // (as resolve/modules/elf.rs maps module files).
    let map = unsafe { memmap2::Mmap::map(&file) }?;
    let Ok(elf) = object::File::parse(&*map) else { return Ok(None) };
    let segments: Vec<(u64, u64, u64)> = elf
        .segments()
        .map(|s| {
            let (offset, size) = s.file_range();
            (offset, s.address(), size)
        })
        .collect();
    Ok(LibuvEntries::find(&elf, &segments))
}

/// A file to attach the uprobes to: a path the kernel resolves to it (the handle's
/// /proc/self/fd link, valid while `file` is held), and where its entry points are.
pub(crate) struct LibuvTarget {
    pub(crate) path: PathBuf,
    pub(crate) entries: LibuvEntries,
    /// Keeps `path` valid until the target is attached: held, never read.
    #[expect(dead_code, reason = "held for `path`, not read")]
    pub(crate) file: Option<Arc<ModuleFile>>,
}

/// Files with libuv found in traced processes, each to be attached once.
#[derive(Default)]
pub(crate) struct LibuvFiles {
    told: HashSet<FileKey>,
    pending: Vec<LibuvTarget>,
    /// A file was turned away at `MAX_LIBUV_FILES` (said once).
    full: bool,
}

/// Files attached at most in a session: each costs three to four uprobes, held until the tracer
/// exits (with the file), and a node runs few Node.js builds. A DaemonSet that sees more over its
/// life attaches no more (one warning says so): their TCP connections are told by node:net
/// (README, "Node.js").
pub(crate) const MAX_LIBUV_FILES: usize = 256;

impl LibuvFiles {
    /// A module of a traced process: a target if it has libuv and is new.
    pub(crate) fn seen(&mut self, module: &LoadedModule) {
        let Some(entries) = &module.libuv else { return };
        if !self.admit(module.file.key) {
            return;
        }
        self.pending.push(LibuvTarget {
            path: module.file.reopen_path(),
            entries: entries.clone(),
            file: Some(module.file.clone()),
        });
    }

    /// The file of a command about to be run, by its path.
    pub(crate) fn before_exec(&mut self, program: &Path, key: FileKey, entries: LibuvEntries) {
        if self.admit(key) {
            self.pending.push(LibuvTarget { path: program.to_path_buf(), entries, file: None });
        }
    }

    /// A file not told yet, within `MAX_LIBUV_FILES`.
    fn admit(&mut self, key: FileKey) -> bool {
        if self.told.contains(&key) {
            return false;
        }
        if self.told.len() >= MAX_LIBUV_FILES {
            if !self.full {
                self.full = true;
                log::warn!(
                    "{MAX_LIBUV_FILES} files with libuv have their uprobes already: the TCP connections of Node.js processes of other files are told by node:net (README, \"Node.js\")"
                );
            }
            return false;
        }
        self.told.insert(key)
    }

    /// What is to be attached since the last call.
    pub(crate) fn take(&mut self) -> Vec<LibuvTarget> {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries_of(path: &str) -> Option<Option<LibuvEntries>> {
        entries_of_file(Path::new(path)).ok()
    }

    #[test]
    fn each_file_is_told_once_and_at_most_max_libuv_files() {
        let mut files = LibuvFiles::default();
        let key = |inode: u64| FileKey { dev: 1, inode };
        for inode in 0..MAX_LIBUV_FILES as u64 {
            assert!(files.admit(key(inode)), "file {inode}");
        }
        assert!(!files.admit(key(0)), "told already");
        assert!(!files.full);
        assert!(!files.admit(key(MAX_LIBUV_FILES as u64)), "beyond the budget");
        assert!(files.full, "said");
    }

    #[test]
    fn a_library_without_libuv_has_no_entries() {
        let libc = ["/lib/x86_64-linux-gnu/libc.so.6", "/lib/aarch64-linux-gnu/libc.so.6"]
            .into_iter()
            .find_map(entries_of)
            .expect("the C library");
        assert_eq!(libc, None);
    }

    /// Node.js, when the machine has it (`cargo xtask setup --tests` installs it): its entries
    /// are where its own code for them starts, the first bytes of the function as the file has
    /// them at the symbol's address.
    #[test]
    fn node_has_the_tcp_entry_points_at_their_file_offsets() {
        let Some(node) = entries_of("/usr/bin/node") else { return };
        let entries = node.expect("node exports libuv's API");
        assert!(!entries.init.is_empty());
        let bytes = std::fs::read("/usr/bin/node").unwrap();
        let elf = object::File::parse(&*bytes).unwrap();
        let symbol = elf.dynamic_symbols().find(|s| s.name() == Ok("uv_tcp_connect")).unwrap();
        // Placed through the section that holds it, not the segments: the same bytes.
        let section = object::Object::section_by_name(&elf, ".text").unwrap();
        let (text_offset, _) = object::ObjectSection::file_range(&section).unwrap();
        let expected = text_offset + (symbol.address() - object::ObjectSection::address(&section));
        assert_eq!(entries.connect, expected);
        let size = symbol.size() as usize;
        let code = &bytes[expected as usize..][..size.min(16)];
        assert!(code.iter().any(|b| *b != 0), "code at the offset: {code:x?}");
    }
}
