//! The load-time repacking cache.
//!
//! [`PackedMatrix`] is a ternary weight matrix copied once from the I2_S
//! layout into the layout the kernels run fastest on: rows are grouped in
//! tiles of [`TILE_ROWS`], and within a tile the 32-byte blocks of its rows
//! are interleaved block by block, so a four-row kernel reads one contiguous
//! stream and loads each activation block once for four rows (on AVX-512, two
//! rows share one 512-bit register). Each row stays a sequence of 32-byte
//! blocks at a fixed stride, so every kernel reads it and every result is
//! bit-identical to the one on the original bytes. The model runner keeps a
//! `PackedMatrix` as its only copy of each weight tensor.
//!
//! [`Registry`] is the process-wide, thread-safe store behind the C ABI's
//! `ggml_bitnet_stfma_cache_*` handles: handles are opaque ids, never
//! pointers, so a freed, foreign or stale handle is found missing and
//! reported, never dereferenced.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::error::{Error, ErrorKind, Result};
use crate::i2s::{self, BLOCK_BYTES, QK_I2_S};
use crate::kernels::{self, Kernel};

/// Rows per interleaved tile in the repacked layout.
pub const TILE_ROWS: usize = 4;

/// A 64-byte aligned, zero-initialised byte buffer whose allocation failure
/// is an error instead of an abort.
pub struct AlignedBytes {
    chunks: Vec<Align64>,
    len: usize,
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Align64([u8; 64]);

impl AlignedBytes {
    pub fn zeroed(len: usize) -> Result<Self> {
        let n = len.div_ceil(64);
        let mut chunks = Vec::new();
        chunks.try_reserve_exact(n).map_err(|_| {
            Error::new(
                ErrorKind::OutOfMemory,
                format!("cannot allocate {len} aligned bytes"),
            )
        })?;
        chunks.resize(n, Align64([0; 64]));
        Ok(AlignedBytes { chunks, len })
    }
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `chunks` holds `n * 64 >= len` initialised bytes, contiguous.
        unsafe { std::slice::from_raw_parts(self.chunks.as_ptr() as *const u8, self.len) }
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.chunks.as_mut_ptr() as *mut u8, self.len) }
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The bytes as int8 values (quantized activations).
    pub fn as_i8(&self) -> &[i8] {
        // SAFETY: i8 and u8 have the same size and alignment; same memory.
        unsafe { std::slice::from_raw_parts(self.chunks.as_ptr() as *const i8, self.len) }
    }
    pub fn as_mut_i8(&mut self) -> &mut [i8] {
        // SAFETY: as above, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.chunks.as_mut_ptr() as *mut i8, self.len) }
    }
}

/// A ternary weight matrix of `rows × cols` in the repacked layout, with its
/// per-tensor scale.
pub struct PackedMatrix {
    rows: usize,
    cols: usize,
    tile_rows: usize,
    scale: f32,
    data: AlignedBytes,
}

impl PackedMatrix {
    /// Repacks `rows × cols` weights given as I2_S bytes (`rows*cols/4` of
    /// packed codes, row `r` at byte `r*cols/4`) with tensor scale `scale`.
    pub fn from_i2s(packed: &[u8], rows: usize, cols: usize, scale: f32) -> Result<Self> {
        Self::with_tiles(packed, rows, cols, scale, TILE_ROWS)
    }

    /// Repacks a whole I2_S tensor as stored in a GGUF file: the packed codes
    /// followed by the f32 scale.
    ///
    /// A row length that is not a multiple of 128 (bitnet_b1_58-3B's
    /// `ffn_down`, 8640) is read as bitnet.cpp's converter wrote it: the
    /// whole tensor as one run of 128-weight blocks, row `r` from element
    /// `r * cols`. Such rows are stored padded with zero weights to the next
    /// multiple of 128 ([`PackedMatrix::cols`] is then the padded length;
    /// activations are padded with zeros to match, see
    /// [`crate::matmul::ActBatch::padded`]).
    pub fn from_i2s_tensor(tensor: &[u8], rows: usize, cols: usize) -> Result<Self> {
        if cols.is_multiple_of(QK_I2_S) || cols == 0 {
            let n = check_shape(rows, cols)?;
            let scale = i2s::read_scale(tensor, n)?;
            return Self::from_i2s(&tensor[..n / 4], rows, cols, scale);
        }
        let n = rows
            .checked_mul(cols)
            .filter(|n| n.is_multiple_of(QK_I2_S))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "{rows}x{cols} weights are not a whole number of 128-weight I2_S blocks"
                ))
            })?;
        let scale = i2s::read_scale(tensor, n)?;
        let padded = cols.next_multiple_of(QK_I2_S);
        let np = check_shape(rows, padded)?;
        let mut codes = vec![i2s::CODE_ZERO; padded];
        let mut packed = vec![0u8; np / 4];
        for (r, dst) in packed.chunks_exact_mut(padded / 4).enumerate() {
            for (c, code) in codes[..cols].iter_mut().enumerate() {
                *code = i2s::code_at(tensor, r * cols + c);
            }
            i2s::pack_codes(&codes, dst)?;
        }
        Self::from_i2s(&packed, rows, padded, scale)
    }

    /// One row stored as an aligned copy (a single row has nothing to
    /// interleave), as the RFC's per-row `cache_weights` wants.
    pub fn single_row(packed: &[u8], cols: usize) -> Result<Self> {
        Self::with_tiles(packed, 1, cols, 1.0, 1)
    }

    fn with_tiles(
        packed: &[u8],
        rows: usize,
        cols: usize,
        scale: f32,
        tile_rows: usize,
    ) -> Result<Self> {
        let n = check_shape(rows, cols)?;
        if packed.len() < n / 4 {
            return Err(Error::invalid(format!(
                "{rows}x{cols} I2_S weights need {} bytes, got {}",
                n / 4,
                packed.len()
            )));
        }
        let nb = cols / QK_I2_S;
        let tiles = rows.div_ceil(tile_rows);
        let len = tiles
            .checked_mul(tile_rows * nb * BLOCK_BYTES)
            .ok_or_else(|| Error::invalid("packed size overflows"))?;
        let mut data = AlignedBytes::zeroed(len)?;
        let out = data.as_mut_slice();
        let row_bytes = cols / 4;
        for r in 0..rows {
            let (t, lane) = (r / tile_rows, r % tile_rows);
            let src = &packed[r * row_bytes..(r + 1) * row_bytes];
            for b in 0..nb {
                let dst = ((t * nb + b) * tile_rows + lane) * BLOCK_BYTES;
                out[dst..dst + BLOCK_BYTES]
                    .copy_from_slice(&src[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES]);
            }
        }
        Ok(PackedMatrix {
            rows,
            cols,
            tile_rows,
            scale,
            data,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    pub fn scale(&self) -> f32 {
        self.scale
    }
    pub fn tile_rows(&self) -> usize {
        self.tile_rows
    }
    /// The repacked bytes.
    pub fn bytes(&self) -> &[u8] {
        self.data.as_slice()
    }
    /// Bytes of the original I2_S codes (without the scale trailer).
    pub fn source_bytes(&self) -> usize {
        self.rows * self.cols / 4
    }

    fn blocks(&self) -> usize {
        self.cols / QK_I2_S
    }

    /// Row `r` as a kernel view: the bytes from its first block and the
    /// stride between its blocks.
    pub fn row(&self, r: usize) -> (&[u8], usize) {
        assert!(r < self.rows, "row {r} out of {}", self.rows);
        let nb = self.blocks();
        let stride = self.tile_rows * BLOCK_BYTES;
        let start = ((r / self.tile_rows) * nb * self.tile_rows + r % self.tile_rows) * BLOCK_BYTES;
        (
            &self.bytes()[start..start + (nb - 1) * stride + BLOCK_BYTES],
            stride,
        )
    }

    /// The four rows of the tile that holds row `r0` (a multiple of
    /// [`TILE_ROWS`]) as kernel views, padding rows (all code 0) included,
    /// and the stride between their blocks. `None` for a matrix stored
    /// without tiles (a single cached row).
    pub fn tile(&self, r0: usize) -> Option<([&[u8]; 4], usize)> {
        if self.tile_rows != TILE_ROWS {
            return None;
        }
        assert!(
            r0.is_multiple_of(TILE_ROWS) && r0 < self.rows,
            "tile row {r0} of {}",
            self.rows
        );
        let nb = self.blocks();
        let stride = TILE_ROWS * BLOCK_BYTES;
        let start = r0 * nb * BLOCK_BYTES;
        let len = (nb - 1) * stride + BLOCK_BYTES;
        let d = self.bytes();
        Some((
            std::array::from_fn(|i| {
                let s = start + i * BLOCK_BYTES;
                &d[s..s + len]
            }),
            stride,
        ))
    }

    /// The codes of row `r`, one per byte (for tests and conversions).
    pub fn row_codes(&self, r: usize, out: &mut [u8]) {
        let (w, stride) = self.row(r);
        for (b, block) in out.chunks_exact_mut(QK_I2_S).enumerate() {
            i2s::unpack_codes(&w[b * stride..b * stride + BLOCK_BYTES], block);
        }
    }

    /// Exact integer dots of rows `rows` against one quantized activation
    /// row, into `out[i]` for row `rows.start + i`.
    pub fn dot_rows(&self, k: Kernel, rows: std::ops::Range<usize>, y: &[i8], out: &mut [i32]) {
        assert_eq!(y.len(), self.cols, "activation length");
        assert!(rows.end <= self.rows && out.len() >= rows.len());
        let mut r = rows.start;
        while r < rows.end {
            if self.tile_rows == TILE_ROWS
                && r.is_multiple_of(TILE_ROWS)
                && r + TILE_ROWS <= rows.end
            {
                let v = [
                    self.row(r),
                    self.row(r + 1),
                    self.row(r + 2),
                    self.row(r + 3),
                ];
                let d = kernels::dot_4rows_with(k, [v[0].0, v[1].0, v[2].0, v[3].0], v[0].1, y);
                out[r - rows.start..r - rows.start + 4].copy_from_slice(&d);
                r += 4;
            } else {
                let (w, stride) = self.row(r);
                out[r - rows.start] = kernels::dot_with(k, w, stride, y);
                r += 1;
            }
        }
    }

    /// Exact integer dots of row `r` against four activation rows.
    pub fn dot_row_4acts(&self, k: Kernel, r: usize, y: [&[i8]; 4]) -> [i32; 4] {
        let (w, stride) = self.row(r);
        kernels::dot_4acts_with(k, w, stride, y)
    }
}

fn check_shape(rows: usize, cols: usize) -> Result<usize> {
    if rows == 0 || cols == 0 {
        return Err(Error::invalid(format!("empty weight matrix {rows}x{cols}")));
    }
    if !cols.is_multiple_of(QK_I2_S) {
        return Err(Error::invalid(format!(
            "row length {cols} is not a multiple of {QK_I2_S}"
        )));
    }
    rows.checked_mul(cols)
        .filter(|&n| n / 4 <= isize::MAX as usize)
        .ok_or_else(|| Error::invalid(format!("weight matrix {rows}x{cols} is too large")))
}

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

    /// Stores a packed matrix and returns its id (never 0).
    pub fn insert(&self, matrix: PackedMatrix, source_addr: usize) -> u64 {
        let id = self.next_id.fetch_add(16, Ordering::Relaxed) | 0xA;
        let mut g = self.lock();
        g.stats.entries += 1;
        g.stats.cached_bytes += matrix.bytes().len();
        g.stats.source_bytes += matrix.source_bytes();
        g.by_source.insert(source_addr, id);
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
    use crate::kernels::tests::Rng;

    fn random_matrix(rng: &mut Rng, rows: usize, cols: usize) -> Vec<u8> {
        let codes: Vec<u8> = (0..rows * cols).map(|_| (rng.next() % 3) as u8).collect();
        let mut packed = vec![0; rows * cols / 4];
        i2s::pack_codes(&codes, &mut packed).unwrap();
        packed
    }

    #[test]
    fn packed_rows_give_identical_dots() {
        let mut rng = Rng::new(3);
        for &(rows, cols) in &[(1usize, 128usize), (5, 256), (8, 640), (13, 2560)] {
            let raw = random_matrix(&mut rng, rows, cols);
            let m = PackedMatrix::from_i2s(&raw, rows, cols, 0.5).unwrap();
            assert_eq!(m.bytes().len(), rows.div_ceil(4) * 4 * cols / 4);
            let y: Vec<i8> = (0..cols).map(|_| rng.next() as i8).collect();
            for k in Kernel::supported() {
                let mut got = vec![0; rows];
                m.dot_rows(k, 0..rows, &y, &mut got);
                let mut part = vec![0; rows - 1];
                m.dot_rows(k, 1..rows, &y, &mut part);
                for r in 0..rows {
                    let want = kernels::scalar::dot(&raw[r * cols / 4..], 32, &y);
                    assert_eq!(got[r], want, "{} {rows}x{cols} row {r}", k.name());
                    if r > 0 {
                        assert_eq!(part[r - 1], want);
                    }
                }
                let acts = [&y[..], &y[..], &y[..], &y[..]];
                assert_eq!(m.dot_row_4acts(k, rows - 1, acts), [got[rows - 1]; 4]);
            }
            let mut codes = vec![0; cols];
            m.row_codes(rows - 1, &mut codes);
            for (e, &c) in codes.iter().enumerate() {
                assert_eq!(c, i2s::code_at(&raw[(rows - 1) * cols / 4..], e));
            }
        }
    }

    #[test]
    fn tensor_scale_is_read_and_shapes_checked() {
        let mut t = vec![0u8; i2s::tensor_bytes(512)];
        t[128..132].copy_from_slice(&2.5f32.to_le_bytes());
        let m = PackedMatrix::from_i2s_tensor(&t, 2, 256).unwrap();
        assert_eq!((m.rows(), m.cols(), m.scale()), (2, 256, 2.5));
        assert!(PackedMatrix::from_i2s_tensor(&t, 2, 100).is_err());
        assert!(PackedMatrix::from_i2s_tensor(&t[..100], 2, 256).is_err());
        assert!(PackedMatrix::from_i2s(&t, 0, 256, 1.0).is_err());
        assert!(PackedMatrix::from_i2s(&t, usize::MAX / 2, 256, 1.0).is_err());
    }

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
