//! A least-recently-used cache bounded by the bytes of what it holds, for the caches the daemon
//! keeps across processes (symbols by module address, code objects of interpreters): those
//! grow with the code the traced processes run, which a node that churns jobs never stops
//! adding to. `lru` keeps the order; this adds the budget, since entries differ in size by
//! orders of magnitude (a line table of a few bytes or of a megabyte).
use std::hash::Hash;

use lru::LruCache;

/// What an entry costs, in bytes of the daemon's memory (its heap parts and its own size).
pub(crate) trait Weight {
    fn weight(&self) -> usize;
}

pub(crate) struct BoundedLru<K: Hash + Eq, V> {
    entries: LruCache<K, V>,
    bytes: usize,
    max_bytes: usize,
}

impl<K: Hash + Eq, V: Weight> BoundedLru<K, V> {
    pub(crate) fn new(max_bytes: usize) -> BoundedLru<K, V> {
        BoundedLru { entries: LruCache::unbounded(), bytes: 0, max_bytes }
    }

    /// The entry, now the most recently used.
    pub(crate) fn get(&mut self, key: &K) -> Option<&V> {
        self.entries.get(key)
    }

    /// Insert (replacing what was there), then drop the least recently used entries until the
    /// rest fits; an entry larger than the whole budget is not kept.
    pub(crate) fn insert(&mut self, key: K, value: V) {
        let weight = value.weight();
        if weight > self.max_bytes {
            self.remove(&key);
            return;
        }
        if let Some(old) = self.entries.put(key, value) {
            self.bytes -= old.weight();
        }
        self.bytes += weight;
        while self.bytes > self.max_bytes {
            let Some((_, old)) = self.entries.pop_lru() else { break };
            self.bytes -= old.weight();
        }
    }

    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        let old = self.entries.pop(key)?;
        self.bytes -= old.weight();
        Some(old)
    }

    /// Drop every entry `keep` refuses.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool)
    where
        K: Clone,
    {
        let gone: Vec<K> = self.entries.iter().filter(|(k, v)| !keep(k, v)).map(|(k, _)| k.clone()).collect();
        for key in &gone {
            self.remove(key);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Weight for Vec<u8> {
        fn weight(&self) -> usize {
            self.len()
        }
    }

    #[test]
    fn least_recently_used_go_first_and_bytes_stay_within_budget() {
        let mut cache: BoundedLru<u32, Vec<u8>> = BoundedLru::new(100);
        cache.insert(1, vec![0; 40]);
        cache.insert(2, vec![0; 40]);
        assert!(cache.get(&1).is_some(), "1 is now the most recently used");
        cache.insert(3, vec![0; 40]);
        assert!(cache.get(&2).is_none(), "2 was the least recently used");
        assert_eq!((cache.len(), cache.bytes()), (2, 80));
        // Replacing an entry counts the new size only.
        cache.insert(1, vec![0; 10]);
        assert_eq!(cache.bytes(), 50);
        // Larger than the budget: not kept, and what it replaced is gone too.
        cache.insert(3, vec![0; 101]);
        assert!(cache.get(&3).is_none());
        assert_eq!((cache.len(), cache.bytes()), (1, 10));
        cache.insert(4, vec![0; 60]);
        cache.retain(|k, _| *k != 1);
        assert_eq!((cache.len(), cache.bytes()), (1, 60));
        assert_eq!(cache.remove(&4).map(|v| v.len()), Some(60));
        assert!(cache.is_empty() && cache.bytes() == 0);
    }
}
