//! The handle registry behind the cache of the C ABI.
//!
//! [`Registry`] is the process-wide, thread-safe store behind the C ABI's
//! `ggml_bitnet_stfma_cache_*` handles: handles are opaque ids, never
//! pointers, so a freed, foreign or stale handle is found missing and
//! reported, never dereferenced. Each entry holds a [`PackedMatrix`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::error::{Error, ErrorKind, Result};
use crate::packed::PackedMatrix;

/// A live cache entry.
pub struct Entry {
    pub matrix: PackedMatrix,
    /// Address of the bytes it was made from (for the hybrid dot's lookup).
    pub source_addr: usize,
}

/// Process-wide cache statistics.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Stats {
    pub entries: usize,
    /// Bytes of repacked weights held.
    pub cached_bytes: usize,
    /// Bytes of the I2_S originals they were made from.
    pub source_bytes: usize,
}

impl Stats {
    /// Cached bytes over original bytes (0 when empty).
    pub fn overhead_ratio(&self) -> f32 {
        if self.source_bytes == 0 {
            0.0
        } else {
            (self.cached_bytes as f64 / self.source_bytes as f64) as f32
        }
    }
}

#[derive(Default)]
struct Inner {
    entries: HashMap<u64, Arc<Entry>>,
    by_source: HashMap<usize, u64>,
    stats: Stats,
}

/// Ids (the handle values the C ABI returns) are random below this mask,
/// stepped by 16, with the bits of `ID_HIGH_BITS` set. On 64-bit targets that
/// puts every id at or above 2^57: no user-space address on x86-64 (47 bits,
/// 56 with five-level paging) or AArch64 (48 or 52 bits) is that high, so a
/// live handle can never equal the address of the caller's weights, and the
/// hybrid dot can tell the two apart.
#[cfg(target_pointer_width = "64")]
const ID_RANDOM_MASK: u64 = 0x00FF_FFFF_FFFF_FFF0;
#[cfg(target_pointer_width = "64")]
const ID_HIGH_BITS: u64 = 0x0200_0000_0000_0000;
#[cfg(not(target_pointer_width = "64"))]
const ID_RANDOM_MASK: u64 = 0x3FFF_FFF0;
#[cfg(not(target_pointer_width = "64"))]
const ID_HIGH_BITS: u64 = 0x4000_0000;

/// What a value passed to the hybrid dot turned out to be.
pub enum Lookup {
    /// A live handle: its entry.
    Handle(Arc<Entry>),
    /// The address of the bytes a live entry was made from: the caller's
    /// bytes are still theirs, so the dot reads them (the result is the one
    /// the entry would give while they are unchanged, and the current one
    /// if they changed: never a stale cached result).
    Source,
    /// Neither (a freed or never-issued handle, or an unknown address).
    Unknown,
}

/// The thread-safe handle store behind the C ABI.
pub struct Registry {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
}

impl Registry {
    fn new() -> Self {
        // Ids start at a per-process pseudo-random base so that a handle kept
        // from another run is not mistaken for a live one.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut base = t ^ ((std::process::id() as u64) << 32) ^ 0x5DEE_CE66_D1CE_4E5B;
        base ^= base >> 29;
        base = base.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        base ^= base >> 32;
        let base = (base & ID_RANDOM_MASK) | ID_HIGH_BITS;
        Registry {
            inner: Mutex::new(Inner::default()),
            next_id: AtomicU64::new(base),
        }
    }

    /// The process-wide registry.
    pub fn global() -> &'static Registry {
        static GLOBAL: OnceLock<Registry> = OnceLock::new();
        GLOBAL.get_or_init(Registry::new)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores a packed matrix and returns its id (never 0). `source_addr` 0:
    /// not findable by a source address.
    pub fn insert(&self, matrix: PackedMatrix, source_addr: usize) -> u64 {
        let id = self.next_id.fetch_add(16, Ordering::Relaxed) | 0xA;
        let mut g = self.lock();
        g.stats.entries += 1;
        g.stats.cached_bytes += matrix.bytes().len();
        g.stats.source_bytes += matrix.source_bytes();
        if source_addr != 0 {
            g.by_source.insert(source_addr, id);
        }
        g.entries.insert(
            id,
            Arc::new(Entry {
                matrix,
                source_addr,
            }),
        );
        id
    }

    /// The live entry with this id.
    pub fn get(&self, id: u64) -> Result<Arc<Entry>> {
        self.lock()
            .entries
            .get(&id)
            .cloned()
            .ok_or_else(|| bad_handle(id))
    }

    /// Classifies a value given to the hybrid dot: a live handle first, then
    /// the source address of a live entry.
    pub fn lookup(&self, value: usize) -> Lookup {
        let g = self.lock();
        if let Some(e) = g.entries.get(&(value as u64)) {
            return Lookup::Handle(e.clone());
        }
        if g.by_source.contains_key(&value) {
            return Lookup::Source;
        }
        Lookup::Unknown
    }

    /// Frees an entry. A second free of the same id is an error.
    pub fn remove(&self, id: u64) -> Result<()> {
        let mut g = self.lock();
        let e = g.entries.remove(&id).ok_or_else(|| bad_handle(id))?;
        g.stats.entries -= 1;
        g.stats.cached_bytes -= e.matrix.bytes().len();
        g.stats.source_bytes -= e.matrix.source_bytes();
        if g.by_source.get(&e.source_addr) == Some(&id) {
            g.by_source.remove(&e.source_addr);
        }
        Ok(())
    }

    /// Frees every entry; their ids stay invalid forever.
    pub fn clear(&self) {
        let mut g = self.lock();
        *g = Inner::default();
    }

    pub fn stats(&self) -> Stats {
        self.lock().stats
    }
}

fn bad_handle(id: u64) -> Error {
    Error::new(
        ErrorKind::BadHandle,
        format!(
            "cache handle {id:#x} is not live (freed, never issued, or invalidated by shutdown)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_lifecycle() {
        let reg = Registry::new();
        let raw = vec![0x55u8; 64];
        let a = reg.insert(
            PackedMatrix::single_row(&raw, 256).unwrap(),
            raw.as_ptr() as usize,
        );
        let b = reg.insert(PackedMatrix::from_i2s(&raw, 2, 128, 1.0).unwrap(), 1);
        assert_ne!(a, b);
        let s = reg.stats();
        assert_eq!(
            (s.entries, s.cached_bytes, s.source_bytes),
            (2, 64 + 128, 128)
        );
        assert_eq!(s.overhead_ratio(), 1.5);
        assert!(matches!(reg.lookup(a as usize), Lookup::Handle(_)));
        assert!(matches!(reg.lookup(raw.as_ptr() as usize), Lookup::Source));
        assert!(matches!(reg.lookup(b as usize + 16), Lookup::Unknown));
        assert!(a >= ID_HIGH_BITS && b >= ID_HIGH_BITS);
        reg.remove(a).unwrap();
        assert_eq!(reg.remove(a).unwrap_err().kind, ErrorKind::BadHandle);
        assert!(reg.get(a).is_err());
        assert!(matches!(reg.lookup(a as usize), Lookup::Unknown));
        assert!(matches!(reg.lookup(raw.as_ptr() as usize), Lookup::Unknown));
        assert!(reg.get(12345).is_err());
        reg.clear();
        assert!(reg.get(b).is_err());
        assert_eq!(reg.stats(), Stats::default());
        assert_eq!(reg.stats().overhead_ratio(), 0.0);
    }
}
