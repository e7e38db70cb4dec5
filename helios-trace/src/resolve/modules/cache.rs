//! Parsed modules, shared by build id and bounded in number and bytes.
use std::{collections::HashMap, sync::Arc};

use super::{
    elf::{LoadedModule, ModuleError},
    files::ModuleFile,
    maps::FileKey,
};

/// Identity of a parsed module: its build id and size (the same file, wherever it is: a
/// library in many containers), or the file when it has no build id. The size keeps a
/// stripped copy apart from the binary it was stripped from: same build id, other symbols.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ModuleId {
    BuildId { id: Box<[u8]>, size: u64 },
    File(FileKey),
}

/// Parsed modules by build id (the same library in many processes, or in many containers as
/// different files, is parsed once), least recently used evicted beyond `max_modules` or
/// `max_bytes` of mapped files.
#[derive(Debug)]
pub(crate) struct ModuleCache {
    by_id: HashMap<ModuleId, (Arc<LoadedModule>, u64)>,
    by_file: HashMap<FileKey, ModuleId>,
    tick: u64,
    bytes: u64,
    max_modules: usize,
    max_bytes: u64,
}

impl ModuleCache {
    pub(crate) fn new(max_modules: usize, max_bytes: u64) -> ModuleCache {
        ModuleCache {
            by_id: HashMap::new(),
            by_file: HashMap::new(),
            tick: 0,
            bytes: 0,
            max_modules: max_modules.max(1),
            max_bytes,
        }
    }

    /// The parsed module of `file`, parsing it on first use. Evicted modules are returned in
    /// `evicted` so that what was derived from them can be dropped too.
    pub(crate) fn get(
        &mut self,
        file: &Arc<ModuleFile>,
        evicted: &mut Vec<Arc<LoadedModule>>,
    ) -> Result<Arc<LoadedModule>, ModuleError> {
        self.tick += 1;
        if let Some((module, used)) = self.by_file.get(&file.key).and_then(|id| self.by_id.get_mut(id)) {
            *used = self.tick;
            return Ok(module.clone());
        }
        let loaded = LoadedModule::load(file.clone())?;
        let id = match &loaded.build_id {
            Some(build_id) => ModuleId::BuildId { id: build_id.clone(), size: loaded.size },
            None => ModuleId::File(file.key),
        };
        self.by_file.insert(file.key, id.clone());
        if let Some((module, used)) = self.by_id.get_mut(&id) {
            // Another file with the same build id: the same code, already parsed.
            *used = self.tick;
            return Ok(module.clone());
        }
        let module = Arc::new(loaded);
        self.bytes += module.size;
        self.by_id.insert(id, (module.clone(), self.tick));
        while self.by_id.len() > self.max_modules || (self.bytes > self.max_bytes && self.by_id.len() > 1) {
            let Some(oldest) = self.by_id.iter().min_by_key(|(_, (_, used))| *used).map(|(id, _)| id.clone())
            else {
                break;
            };
            if let Some((old, _)) = self.by_id.remove(&oldest) {
                self.bytes -= old.size;
                self.by_file.retain(|_, id| *id != oldest);
                evicted.push(old);
            }
        }
        Ok(module)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use std::{fs::File, path::Path};

    use super::*;

    #[test]
    fn cache_shares_by_build_id_and_evicts_least_recently_used() {
        let handle = |inode: u64, path: &Path| {
            let file = File::open(path).unwrap();
            Arc::new(ModuleFile::new(FileKey { dev: 1, inode }, Arc::from(path.to_str().unwrap()), file))
        };
        let exe = std::env::current_exe().unwrap();
        let other = Path::new("/usr/bin/true");
        // Two files of the test binary (as two containers would have): one module.
        let (a1, a2, b) = (handle(1, &exe), handle(2, &exe), handle(3, other));
        let mut cache = ModuleCache::new(1, u64::MAX);
        let mut evicted = Vec::new();
        let first = cache.get(&a1, &mut evicted).unwrap();
        assert!(first.build_id.is_some());
        assert!(Arc::ptr_eq(&first, &cache.get(&a2, &mut evicted).unwrap()));
        assert!(first.unwind.eh_frame.is_some() && first.unwind.eh_frame_hdr.is_some());
        assert!(first.unwind.text.as_ref().is_some_and(|t| !t.is_empty()));
        assert!(evicted.is_empty());
        // A second module does not fit: the least recently used one goes.
        cache.get(&b, &mut evicted).unwrap();
        assert_eq!(cache.len(), 1);
        assert_eq!(evicted.len(), 1);
        assert!(Arc::ptr_eq(&evicted[0], &first));
        let again = cache.get(&a1, &mut evicted).unwrap();
        assert!(!Arc::ptr_eq(&again, &first), "parsed again after eviction");
        // The byte budget bounds it as well (but always keeps the module in use).
        let mut tiny = ModuleCache::new(10, 1);
        tiny.get(&a1, &mut evicted).unwrap();
        tiny.get(&b, &mut evicted).unwrap();
        assert_eq!(tiny.len(), 1);
        // A stripped copy has the build id of its original but not its symbols: kept apart.
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/unwind");
        let (full, stripped) = (handle(10, &data.join("sample")), handle(11, &data.join("sample.stripped")));
        let mut cache = ModuleCache::new(10, u64::MAX);
        let (full, stripped) =
            (cache.get(&full, &mut evicted).unwrap(), cache.get(&stripped, &mut evicted).unwrap());
        assert_eq!(full.build_id, stripped.build_id);
        assert!(!Arc::ptr_eq(&full, &stripped));
        let null = Arc::new(ModuleFile::new(
            FileKey { dev: 1, inode: 9 },
            Arc::from("/dev/null"),
            File::open("/dev/null").unwrap(),
        ));
        assert!(LoadedModule::load(null).is_err());
    }
}
