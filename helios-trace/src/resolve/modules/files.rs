//! A handle on each executable file a traced process maps, taken while the process runs, and
//! the modules of a process image: each file with the address range it occupies there.
//!
//! A handle is taken at first sight of a process (baseline, exec, fork), through
//! /proc/PID/map_files (the very file mapped, even when it was deleted or replaced since, and
//! whatever mount namespace the process lives in), so that its stacks still resolve after it
//! has exited, and a binary replaced by a deploy still names the code that ran.
use std::{
    collections::HashMap,
    fs::File,
    ops::Range,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{Arc, Weak},
};

use super::maps::{FileKey, ProcessMaps};
use crate::sys::proc::image;

/// An open handle on a mapped file, shared by every process that maps it.
#[derive(Debug)]
pub(crate) struct ModuleFile {
    pub(crate) key: FileKey,
    /// The path as the first process that mapped it named it.
    pub(crate) path: Arc<str>,
    pub(super) file: File,
}

impl ModuleFile {
    pub(crate) fn new(key: FileKey, path: Arc<str>, file: File) -> ModuleFile {
        ModuleFile { key, path, file }
    }

    /// A path that opens this very file for as long as the handle lives, whatever happened to
    /// its name since (the /proc/self/fd magic link).
    pub(crate) fn reopen_path(&self) -> PathBuf {
        image::own_fd_path(self.file.as_raw_fd())
    }
}

/// One module of a process: a file and the address range of its mappings there.
#[derive(Clone, Debug)]
pub(crate) struct ProcessModule {
    pub(crate) file: Arc<ModuleFile>,
    /// From the first to the last mapping of the file.
    pub(crate) range: Range<u64>,
    /// An executable mapping of it: (start, file offset), to place the file's addresses.
    pub(crate) text: (u64, u64),
}

/// A process's maps with a handle on each executable file in them.
#[derive(Clone, Debug, Default)]
pub(crate) struct ProcessImage {
    pub(crate) maps: ProcessMaps,
    pub(crate) modules: Vec<ProcessModule>,
}

impl ProcessImage {
    /// The module an address belongs to.
    pub(crate) fn module_of(&self, address: u64) -> Option<&ProcessModule> {
        let mapping = self.maps.lookup(address).filter(|m| m.executable)?;
        self.modules.iter().find(|m| m.file.key == mapping.key && m.range.contains(&address))
    }
}

/// At most this many mapped files are held open (a node maps a few hundred to a few thousand
/// distinct files); beyond, frames in files not held are named by module and offset only.
pub(crate) const MAX_OPEN_FILES: usize = 8192;

/// Handles on mapped files, by (device, inode): one per file however many processes map it,
/// released when the last process image holding it is forgotten.
#[derive(Debug, Default)]
pub(crate) struct ModuleFiles {
    open: HashMap<FileKey, Weak<ModuleFile>>,
}

impl ModuleFiles {
    /// Read `tgid`'s maps under `proc_root` and take a handle on every executable file.
    pub(crate) fn capture(&mut self, proc_root: &Path, tgid: u32) -> Option<ProcessImage> {
        let text = image::maps(proc_root, tgid)?;
        Some(self.image(proc_root, tgid, ProcessMaps::parse(&text)))
    }

    /// Group `maps` into modules, opening the files not open yet.
    pub(crate) fn image(&mut self, proc_root: &Path, tgid: u32, maps: ProcessMaps) -> ProcessImage {
        self.open.retain(|_, file| file.strong_count() > 0);
        let mut room = MAX_OPEN_FILES.saturating_sub(self.open.len());
        let mut modules: Vec<ProcessModule> = Vec::new();
        for mapping in maps.mappings() {
            if let Some(last) = modules.last_mut().filter(|m| m.file.key == mapping.key) {
                last.range.end = mapping.end;
                continue;
            }
            let Some(text) = maps
                .mappings()
                .iter()
                .find(|m| m.key == mapping.key && m.executable && m.start >= mapping.start)
            else {
                continue;
            };
            let file = match self.open.get(&mapping.key).and_then(Weak::upgrade) {
                Some(file) => file,
                None if room == 0 => continue,
                None => {
                    let Ok(file) = image::open_mapped_file(
                        proc_root,
                        tgid,
                        mapping.start,
                        mapping.end,
                        &mapping.path,
                        mapping.key.inode,
                    ) else {
                        continue;
                    };
                    let file = Arc::new(ModuleFile::new(mapping.key, mapping.path.clone(), file));
                    self.open.insert(mapping.key, Arc::downgrade(&file));
                    room -= 1;
                    file
                }
            };
            modules.push(ProcessModule {
                file,
                range: mapping.start..mapping.end,
                text: (text.start, text.file_offset),
            });
        }
        ProcessImage { maps, modules }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_group_mappings_into_modules_and_share_handles() {
        // A fake procfs whose "map_files" links are the files themselves.
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("leaky");
        std::fs::write(&exe, b"not really an ELF").unwrap();
        let maps = format!(
            "1000-2000 r--p 00000000 fd:01 5 {0}\n2000-3000 r-xp 00001000 fd:01 5 {0}\n3000-4000 rw-p 00000000 00:00 0 \n",
            exe.display()
        );
        for pid in ["7", "8"] {
            std::fs::create_dir_all(dir.path().join(pid).join("map_files")).unwrap();
            std::fs::write(dir.path().join(pid).join("maps"), &maps).unwrap();
            std::os::unix::fs::symlink(&exe, dir.path().join(pid).join("map_files/1000-2000")).unwrap();
        }
        let mut files = ModuleFiles::default();
        let a = files.capture(dir.path(), 7).unwrap();
        let b = files.capture(dir.path(), 8).unwrap();
        assert_eq!(a.modules.len(), 1);
        let module = &a.modules[0];
        assert_eq!((module.range.clone(), module.text), (0x1000..0x3000, (0x2000, 0x1000)));
        assert!(Arc::ptr_eq(&module.file, &b.modules[0].file), "one handle per file");
        assert!(a.module_of(0x2800).is_some());
        assert!(a.module_of(0x1800).is_none(), "not executable");
        assert!(files.capture(dir.path(), 9).is_none());
    }
}
