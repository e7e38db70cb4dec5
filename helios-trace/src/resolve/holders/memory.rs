//! The traced process's memory as the heap walk reads it: whole pages, cached within a byte
//! budget (objects sit together in pymalloc's arenas, so a page read once serves many), and a
//! read that fails is a `None`, never an error that stops the walk: a racing heap has pointers
//! into memory freed a moment ago.
use std::collections::HashMap;

use crate::sys::proc::image::ProcessMemory;

/// What the walk reads from: the process (`Paged`) or, in tests, bytes laid out as CPython
/// lays them out.
pub(crate) trait Memory {
    /// Fill `buf` from `address`; false when any of it cannot be read.
    fn read(&mut self, address: u64, buf: &mut [u8]) -> bool;

    /// Let what is read next come from the process anew (a cache's pages are stale once the
    /// process has changed them).
    fn forget(&mut self) {}

    fn u64(&mut self, address: u64) -> Option<u64> {
        let mut b = [0; 8];
        self.read(address, &mut b).then(|| u64::from_le_bytes(b))
    }

    fn i64(&mut self, address: u64) -> Option<i64> {
        self.u64(address).map(|v| v as i64)
    }

    fn i32(&mut self, address: u64) -> Option<i32> {
        let mut b = [0; 4];
        self.read(address, &mut b).then(|| i32::from_le_bytes(b))
    }

    fn u8(&mut self, address: u64) -> Option<u8> {
        let mut b = [0; 1];
        self.read(address, &mut b).then_some(b[0])
    }
}

const PAGE: u64 = 4096;

/// /proc/PID/mem read a page at a time through a cache of at most `max_bytes`; when full it is
/// emptied (the walk goes forward through the heap: what it read long ago it rarely reads again).
/// The page read last is remembered apart: most reads are fields of one object.
pub(crate) struct Paged {
    memory: ProcessMemory,
    /// Page address → its slot in `slots` (None: the page does not read).
    pages: HashMap<u64, Option<usize>>,
    slots: Vec<Box<[u8]>>,
    max_pages: usize,
    last: Option<(u64, usize)>,
}

impl Paged {
    pub(crate) fn new(memory: ProcessMemory, max_bytes: usize) -> Paged {
        Paged {
            memory,
            pages: HashMap::new(),
            slots: Vec::new(),
            max_pages: (max_bytes / PAGE as usize).max(16),
            last: None,
        }
    }

    fn slot(&mut self, page: u64) -> Option<usize> {
        if let Some((last, slot)) = self.last
            && last == page
        {
            return Some(slot);
        }
        let slot = match self.pages.get(&page) {
            Some(slot) => *slot,
            None => {
                if self.slots.len() >= self.max_pages {
                    self.pages.clear();
                    self.slots.clear();
                }
                let mut bytes = vec![0u8; PAGE as usize].into_boxed_slice();
                let slot = self.memory.read(page, &mut bytes).is_ok().then(|| {
                    self.slots.push(bytes);
                    self.slots.len() - 1
                });
                self.pages.insert(page, slot);
                slot
            }
        };
        self.last = slot.map(|s| (page, s));
        slot
    }
}

impl Memory for Paged {
    fn read(&mut self, address: u64, buf: &mut [u8]) -> bool {
        let mut done = 0usize;
        while done < buf.len() {
            let Some(at) = address.checked_add(done as u64) else { return false };
            let (page, offset) = (at & !(PAGE - 1), (at & (PAGE - 1)) as usize);
            let Some(slot) = self.slot(page) else { return false };
            let n = (PAGE as usize - offset).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&self.slots[slot][offset..offset + n]);
            done += n;
        }
        true
    }

    fn forget(&mut self) {
        self.pages.clear();
        self.slots.clear();
        self.last = None;
    }
}

/// One image of bytes at `base`, for the fuzz target (fuzzing.rs): what is outside does not read.
pub(crate) struct Flat<'a> {
    pub(crate) base: u64,
    pub(crate) bytes: &'a [u8],
}

impl Memory for Flat<'_> {
    fn read(&mut self, address: u64, buf: &mut [u8]) -> bool {
        let Some(at) = address.checked_sub(self.base) else { return false };
        let Ok(at) = usize::try_from(at) else { return false };
        match self.bytes.get(at..at.saturating_add(buf.len())) {
            Some(bytes) if bytes.len() == buf.len() => {
                buf.copy_from_slice(bytes);
                true
            }
            _ => false,
        }
    }
}

/// Memory made of byte regions, for tests: what is outside them does not read.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Fake {
    pub(crate) regions: std::collections::BTreeMap<u64, Vec<u8>>,
}

#[cfg(test)]
impl Fake {
    /// Put `bytes` at `address` (regions must not overlap).
    pub(crate) fn put(&mut self, address: u64, bytes: &[u8]) {
        self.regions.insert(address, bytes.to_vec());
    }

    pub(crate) fn put_u64(&mut self, address: u64, value: u64) {
        self.write(address, &value.to_le_bytes());
    }

    /// Write into an existing region.
    pub(crate) fn write(&mut self, address: u64, bytes: &[u8]) {
        let (start, region) = self.regions.range_mut(..=address).next_back().expect("a region holds it");
        let at = (address - start) as usize;
        region[at..at + bytes.len()].copy_from_slice(bytes);
    }
}

#[cfg(test)]
impl Memory for Fake {
    fn read(&mut self, address: u64, buf: &mut [u8]) -> bool {
        let Some((start, region)) = self.regions.range(..=address).next_back() else { return false };
        let at = (address - start) as usize;
        match region.get(at..at + buf.len()) {
            Some(bytes) => {
                buf.copy_from_slice(bytes);
                true
            }
            None => false,
        }
    }
}
