//! CPython's objects read from a traced process's memory: integers, `str` and `bytes` objects.
use std::path::Path;

use super::{PythonError, layout::Layout};
use crate::sys::proc::image::ProcessMemory;

/// A traced CPython process's memory (sys/proc/image.rs reads it), as Python objects.
pub(super) struct Memory {
    memory: ProcessMemory,
}

/// Longest name or file name read, and line table.
const MAX_STRING: u64 = 4096;
pub(super) const MAX_LINETABLE: u64 = 1 << 20;

impl Memory {
    pub(super) fn open(proc_root: &Path, pid: u32) -> Result<Memory, PythonError> {
        let memory = ProcessMemory::open(proc_root, pid)
            .map_err(|e| PythonError::Memory { address: 0, reason: e.to_string() })?;
        Ok(Memory { memory })
    }

    pub(super) fn read(&self, address: u64, buf: &mut [u8]) -> Result<(), PythonError> {
        self.memory.read(address, buf).map_err(|e| PythonError::Memory { address, reason: e.to_string() })
    }

    pub(super) fn u64(&self, address: u64) -> Result<u64, PythonError> {
        let mut b = [0; 8];
        self.read(address, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub(super) fn u32(&self, address: u64) -> Result<u32, PythonError> {
        let mut b = [0; 4];
        self.read(address, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// A `str` object (Include/cpython/unicodeobject.h): length at 16, state bits at 32
    /// (kind: bits 2-4, compact: bit 5, ascii: bit 6), characters after the header.
    pub(super) fn string(&self, object: u64, layout: &Layout) -> Option<String> {
        let length = self.u64(object + 16).ok()?;
        let state = self.u32(object + 32).ok()?;
        let (kind, compact, ascii) = ((state >> 2) & 7, state & (1 << 5) != 0, state & (1 << 6) != 0);
        if !compact || length > MAX_STRING || !matches!(kind, 1 | 2 | 4) {
            return None;
        }
        let data = object + if ascii { layout.ascii_size } else { layout.compact_size() };
        let mut bytes = vec![0u8; (length * kind as u64) as usize];
        self.read(data, &mut bytes).ok()?;
        match kind {
            1 => Some(bytes.iter().map(|b| *b as char).collect()),
            2 => {
                let units: Vec<u16> =
                    bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
                Some(String::from_utf16_lossy(&units))
            }
            _ => bytes
                .chunks_exact(4)
                .map(|c| char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
        }
    }

    /// A `bytes` object (Include/cpython/bytesobject.h: ob_size at 16, ob_sval at 32).
    pub(super) fn bytes(&self, object: u64, max: u64) -> Option<Vec<u8>> {
        let size = self.u64(object + 16).ok()?;
        if size > max {
            return None;
        }
        let mut bytes = vec![0u8; size as usize];
        self.read(object + 32, &mut bytes).ok()?;
        Some(bytes)
    }
}
