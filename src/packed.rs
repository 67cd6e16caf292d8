//! The load-time repacked weight layout.
//!
//! [`PackedMatrix`] is a ternary weight matrix copied once from the I2_S
//! layout into the layout the kernels run fastest on: rows are grouped in
//! tiles of [`TILE_ROWS`], and within a tile the 32-byte blocks of its rows
//! are interleaved block by block, so a four-row kernel reads one contiguous
//! stream and loads each activation block once for four rows (on AVX-512, two
//! rows share one 512-bit register). Each row stays a sequence of 32-byte
//! blocks at a fixed stride, so every kernel reads it and every result is
//! bit-identical to the one on the original bytes. The model runner keeps a
//! `PackedMatrix` as its only copy of each weight tensor, and each handle of
//! the C ABI's cache (`ggml_bitnet_stfma_cache_*`) holds one.

use crate::error::{Error, ErrorKind, Result};
use crate::kernels::{self, Kernel};
use crate::quant::i2s::{self, BLOCK_BYTES, QK_I2_S};
use crate::quant::tl3;

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
    layout: Layout,
    data: Storage,
}

/// How a matrix's four-row tiles store the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// I2_S blocks interleaved block by block (2 bits a weight).
    I2s,
    /// TL3 ([`crate::quant::tl3`]): 1.67 bits a weight, read through table
    /// lookups; made at load from I2_S.
    Tl3,
}

/// Environment variable that forces the load-time layout of the ternary
/// weights: `auto` (the dispatcher's choice for the active kernel), `i2s`
/// or `tl3`.
pub const LAYOUT_ENV: &str = "BITNET_STFMA_FORMAT";

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::I2s => "i2s",
            Layout::Tl3 => "tl3",
        }
    }

    /// The model runner's layout: `BITNET_STFMA_FORMAT` if set (an unknown
    /// name is an error), else the dispatcher's choice for the active
    /// kernel ([`kernels::prefers_tl3`]).
    pub fn preferred() -> Result<Layout> {
        Ok(Self::from_env()?.unwrap_or_else(|| Self::preferred_for(kernels::active())))
    }

    /// `BITNET_STFMA_FORMAT` when it names a layout (`None` when unset or
    /// `auto`).
    pub fn from_env() -> Result<Option<Layout>> {
        match std::env::var(LAYOUT_ENV) {
            Ok(v) if !v.trim().is_empty() && !v.trim().eq_ignore_ascii_case("auto") => {
                match v.trim().to_ascii_lowercase().as_str() {
                    "i2s" | "i2_s" => Ok(Some(Layout::I2s)),
                    "tl3" => Ok(Some(Layout::Tl3)),
                    _ => Err(Error::invalid(format!(
                        "{LAYOUT_ENV}={v:?}: expected auto, i2s or tl3"
                    ))),
                }
            }
            _ => Ok(None),
        }
    }

    /// The dispatcher's layout for kernel `k`.
    pub fn preferred_for(k: Kernel) -> Layout {
        if kernels::prefers_tl3(k) {
            Layout::Tl3
        } else {
            Layout::I2s
        }
    }
}

/// Where a [`PackedMatrix`]'s bytes live.
enum Storage {
    /// Its own aligned copy.
    Owned(AlignedBytes),
    /// The caller's buffer, repacked in place by
    /// [`PackedMatrix::repack_in_place`].
    InPlace { ptr: *const u8, len: usize },
}

// SAFETY: the bytes are never written after construction, and the contract
// of `repack_in_place` keeps an in-place buffer alive and unchanged for the
// matrix's lifetime, so sharing or moving it between threads is sharing
// immutable memory.
unsafe impl Send for Storage {}
// SAFETY: as above.
unsafe impl Sync for Storage {}

impl Storage {
    fn as_slice(&self) -> &[u8] {
        match self {
            Storage::Owned(b) => b.as_slice(),
            // SAFETY: by the contract of `repack_in_place`, `ptr` holds `len`
            // bytes that outlive the matrix and are not written meanwhile.
            Storage::InPlace { ptr, len } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
        }
    }
}

impl PackedMatrix {
    /// Repacks `rows × cols` weights given as I2_S bytes (`rows*cols/4` of
    /// packed codes, row `r` at byte `r*cols/4`) with tensor scale `scale`.
    /// The tiles are I2_S ([`Layout::I2s`]).
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
    ///
    /// The tiles are I2_S ([`Layout::I2s`]).
    pub fn from_i2s_tensor(tensor: &[u8], rows: usize, cols: usize) -> Result<Self> {
        Self::from_i2s_tensor_as(tensor, rows, cols, Layout::I2s)
    }

    /// [`PackedMatrix::from_i2s_tensor`] in layout `layout`.
    pub fn from_i2s_tensor_as(
        tensor: &[u8],
        rows: usize,
        cols: usize,
        layout: Layout,
    ) -> Result<Self> {
        if cols.is_multiple_of(QK_I2_S) || cols == 0 {
            let n = check_shape(rows, cols)?;
            let scale = i2s::read_scale(tensor, n)?;
            return Self::from_i2s_as(&tensor[..n / 4], rows, cols, scale, layout);
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
        Self::from_i2s_as(&packed, rows, padded, scale, layout)
    }

    /// [`PackedMatrix::from_i2s`] in layout `layout`.
    pub fn from_i2s_as(
        packed: &[u8],
        rows: usize,
        cols: usize,
        scale: f32,
        layout: Layout,
    ) -> Result<Self> {
        match layout {
            Layout::I2s => Self::with_tiles(packed, rows, cols, scale, TILE_ROWS),
            Layout::Tl3 => Self::tl3(packed, rows, cols, scale),
        }
    }

    /// TL3 tiles made from I2_S rows, the tiles split over up to two
    /// threads (the conversion is the load's only per-weight work).
    fn tl3(packed: &[u8], rows: usize, cols: usize, scale: f32) -> Result<Self> {
        check_i2s_bytes(packed, rows, cols)?;
        let shape = tl3::Shape::new(cols);
        let tiles = rows.div_ceil(TILE_ROWS);
        let tb = shape.tile_bytes();
        let len = tiles
            .checked_mul(tb)
            .ok_or_else(|| Error::invalid("packed size overflows"))?;
        let mut data = AlignedBytes::zeroed(len)?;
        let row_bytes = cols / 4;
        let convert = |first: usize, out: &mut [u8]| {
            for (i, dst) in out.chunks_exact_mut(tb).enumerate() {
                let t = first + i;
                let src: [Option<&[u8]>; 4] = std::array::from_fn(|l| {
                    let r = t * TILE_ROWS + l;
                    (r < rows).then(|| &packed[r * row_bytes..(r + 1) * row_bytes])
                });
                tl3::pack_tile_from_i2s(src, shape, dst);
            }
        };
        let threads = if len >= 1 << 20 {
            std::thread::available_parallelism().map_or(1, |n| n.get().min(2))
        } else {
            1
        };
        let per = tiles.div_ceil(threads);
        std::thread::scope(|sc| {
            for (i, part) in data.as_mut_slice().chunks_mut(per * tb).enumerate() {
                let convert = &convert;
                sc.spawn(move || convert(i * per, part));
            }
        });
        Ok(PackedMatrix {
            rows,
            cols,
            tile_rows: TILE_ROWS,
            scale,
            layout: Layout::Tl3,
            data: Storage::Owned(data),
        })
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
        check_i2s_bytes(packed, rows, cols)?;
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
            layout: Layout::I2s,
            data: Storage::Owned(data),
        })
    }

    /// Repacks a whole I2_S tensor (codes then the f32 scale, as
    /// [`PackedMatrix::from_i2s_tensor`] reads it) inside its own buffer:
    /// the first `rows*cols/4` bytes are rewritten in the tile layout, which
    /// has exactly that size when `rows` is a multiple of [`TILE_ROWS`] and
    /// `cols` of 128 (any other shape is an error and leaves `tensor` as it
    /// was). The returned matrix reads `tensor`, so no second copy of the
    /// weights is kept; afterwards the bytes are no longer I2_S.
    ///
    /// # Safety
    /// `tensor` must outlive the returned matrix and must not be written
    /// while the matrix lives.
    pub unsafe fn repack_in_place(tensor: &mut [u8], rows: usize, cols: usize) -> Result<Self> {
        if !Self::fits_in_place(rows, cols) {
            return Err(Error::invalid(format!(
                "a {rows}x{cols} tensor cannot be repacked in place (rows must be a multiple of {TILE_ROWS}, columns of {QK_I2_S})"
            )));
        }
        let n = check_shape(rows, cols)?;
        let scale = i2s::read_scale(tensor, n)?;
        // A tile's four rows and its interleaved blocks cover the same
        // bytes, so each tile is rewritten from a copy of its own rows.
        let (row_bytes, nb) = (cols / 4, cols / QK_I2_S);
        let mut rows_copy = vec![0u8; TILE_ROWS * row_bytes];
        for tile in tensor[..n / 4].chunks_exact_mut(TILE_ROWS * row_bytes) {
            rows_copy.copy_from_slice(tile);
            for lane in 0..TILE_ROWS {
                for b in 0..nb {
                    let (dst, src) = (
                        (b * TILE_ROWS + lane) * BLOCK_BYTES,
                        lane * row_bytes + b * BLOCK_BYTES,
                    );
                    tile[dst..dst + BLOCK_BYTES]
                        .copy_from_slice(&rows_copy[src..src + BLOCK_BYTES]);
                }
            }
        }
        Ok(PackedMatrix {
            rows,
            cols,
            tile_rows: TILE_ROWS,
            scale,
            layout: Layout::I2s,
            data: Storage::InPlace {
                ptr: tensor.as_ptr(),
                len: n / 4,
            },
        })
    }

    /// Whether a `rows × cols` I2_S tensor's tile layout has exactly its
    /// bytes, so that [`PackedMatrix::repack_in_place`] can take it.
    pub fn fits_in_place(rows: usize, cols: usize) -> bool {
        rows.is_multiple_of(TILE_ROWS) && cols.is_multiple_of(QK_I2_S)
    }

    /// Whether the bytes are the caller's buffer, repacked in place.
    pub fn is_in_place(&self) -> bool {
        matches!(self.data, Storage::InPlace { .. })
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
    pub fn layout(&self) -> Layout {
        self.layout
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
    ///
    /// # Panics
    /// For a [`Layout::Tl3`] matrix, whose rows are not I2_S blocks.
    pub fn row(&self, r: usize) -> (&[u8], usize) {
        assert_eq!(self.layout, Layout::I2s, "row views are I2_S blocks");
        assert!(r < self.rows, "row {r} out of {}", self.rows);
        let nb = self.blocks();
        let stride = self.tile_rows * BLOCK_BYTES;
        let start = ((r / self.tile_rows) * nb * self.tile_rows + r % self.tile_rows) * BLOCK_BYTES;
        (
            &self.bytes()[start..start + (nb - 1) * stride + BLOCK_BYTES],
            stride,
        )
    }

    /// The four rows of the I2_S tile that holds row `r0` (a multiple of
    /// [`TILE_ROWS`]) as kernel views, padding rows (all code 0) included,
    /// and the stride between their blocks.
    fn i2s_tile(&self, r0: usize) -> ([&[u8]; 4], usize) {
        let nb = self.blocks();
        let stride = TILE_ROWS * BLOCK_BYTES;
        let start = r0 * nb * BLOCK_BYTES;
        let len = (nb - 1) * stride + BLOCK_BYTES;
        let d = self.bytes();
        (
            std::array::from_fn(|i| {
                let s = start + i * BLOCK_BYTES;
                &d[s..s + len]
            }),
            stride,
        )
    }

    /// The TL3 tile that holds row `r0` and its shape.
    fn tl3_tile(&self, r0: usize) -> (&[u8], tl3::Shape) {
        let shape = tl3::Shape::new(self.cols);
        let tb = shape.tile_bytes();
        let at = r0 / TILE_ROWS * tb;
        (&self.bytes()[at..at + tb], shape)
    }

    /// Exact integer dots of the four rows of the tile that holds row `r0`
    /// (a multiple of [`TILE_ROWS`]; padding rows included) against `N`
    /// activation rows: `out[j][r]`, whatever the layout. `None` for a
    /// matrix stored without tiles (a single cached row).
    pub fn tile_dots<const N: usize>(
        &self,
        k: Kernel,
        r0: usize,
        y: [&[i8]; N],
    ) -> Option<[[i32; 4]; N]> {
        if self.tile_rows != TILE_ROWS {
            return None;
        }
        assert!(
            r0.is_multiple_of(TILE_ROWS) && r0 < self.rows,
            "tile row {r0} of {}",
            self.rows
        );
        Some(match self.layout {
            Layout::I2s => {
                let (rows, stride) = self.i2s_tile(r0);
                kernels::tile_with(k, rows, stride, y)
            }
            Layout::Tl3 => {
                let (t, shape) = self.tl3_tile(r0);
                kernels::tl3_tile_with(k, t, shape, y)
            }
        })
    }

    /// The TL3 tile that holds row `r0` (a multiple of [`TILE_ROWS`])
    /// rewritten as an I2_S tile into `out` (`cols / 128 * 128` bytes: block
    /// `b` of row `r` at `128b + 32r`).
    ///
    /// # Panics
    /// For an I2_S matrix, or a row or room out of range.
    pub fn expand_tile(&self, k: Kernel, r0: usize, out: &mut [u8]) {
        assert_eq!(self.layout, Layout::Tl3, "only TL3 tiles are expanded");
        assert!(
            r0.is_multiple_of(TILE_ROWS) && r0 < self.rows,
            "tile row {r0} of {}",
            self.rows
        );
        let (t, shape) = self.tl3_tile(r0);
        kernels::tl3_expand_with(k, t, shape, out);
    }

    /// The codes of row `r`, one per byte (for tests and conversions).
    pub fn row_codes(&self, r: usize, out: &mut [u8]) {
        if self.layout == Layout::Tl3 {
            assert!(r < self.rows, "row {r} out of {}", self.rows);
            let (t, shape) = self.tl3_tile(r - r % TILE_ROWS);
            return tl3::unpack_row(t, shape, r % TILE_ROWS, out);
        }
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
            let r0 = r - r % self.tile_rows;
            match self.tile_dots(k, r0, [y]) {
                Some([d]) => {
                    let n = (r0 + TILE_ROWS).min(rows.end) - r;
                    out[r - rows.start..r - rows.start + n].copy_from_slice(&d[r - r0..r - r0 + n]);
                    r += n;
                }
                None => {
                    let (w, stride) = self.row(r);
                    out[r - rows.start] = kernels::dot_with(k, w, stride, y);
                    r += 1;
                }
            }
        }
    }

    /// Exact `Σ code·q` of the first `y.len()` weights of row `r` (a
    /// multiple of 128, at most the row length).
    pub fn row_prefix_dot(&self, k: Kernel, r: usize, y: &[i8]) -> i32 {
        assert!(y.len() <= self.cols, "activation longer than the row");
        if self.layout == Layout::I2s {
            let (w, stride) = self.row(r);
            return kernels::dot_with(k, w, stride, y);
        }
        assert!(r < self.rows, "row {r} out of {}", self.rows);
        let r0 = r - r % TILE_ROWS;
        if y.len() == self.cols {
            let [d] = self.tile_dots(k, r0, [y]).expect("TL3 matrices are tiled");
            return d[r % TILE_ROWS];
        }
        let mut tile = vec![0u8; self.cols / 4 * TILE_ROWS];
        self.expand_tile(k, r0, &mut tile);
        kernels::dot_with(k, &tile[r % TILE_ROWS * BLOCK_BYTES..], 4 * BLOCK_BYTES, y)
    }

    /// Exact integer dots of row `r` against four activation rows.
    pub fn dot_row_4acts(&self, k: Kernel, r: usize, y: [&[i8]; 4]) -> [i32; 4] {
        if self.layout == Layout::Tl3 {
            assert!(r < self.rows, "row {r} out of {}", self.rows);
            let d = self
                .tile_dots(k, r - r % TILE_ROWS, y)
                .expect("TL3 matrices are tiled");
            return d.map(|dj| dj[r % TILE_ROWS]);
        }
        let (w, stride) = self.row(r);
        kernels::dot_4acts_with(k, w, stride, y)
    }
}

/// That `packed` holds the I2_S codes of a `rows × cols` matrix.
fn check_i2s_bytes(packed: &[u8], rows: usize, cols: usize) -> Result<()> {
    let n = check_shape(rows, cols)?;
    if packed.len() < n / 4 {
        return Err(Error::invalid(format!(
            "{rows}x{cols} I2_S weights need {} bytes, got {}",
            n / 4,
            packed.len()
        )));
    }
    Ok(())
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
            rows_match(&m, &raw, &y);
            let t = PackedMatrix::from_i2s_as(&raw, rows, cols, 0.5, Layout::Tl3).unwrap();
            assert_eq!(t.layout(), Layout::Tl3);
            assert_eq!(
                t.bytes().len(),
                rows.div_ceil(4) * tl3::Shape::new(cols).tile_bytes()
            );
            rows_match(&t, &raw, &y);
        }
    }

    /// Every way of reading `m`'s rows gives the scalar kernel's dots on the
    /// I2_S bytes `raw`, and its codes.
    fn rows_match(m: &PackedMatrix, raw: &[u8], y: &[i8]) {
        let (rows, cols) = (m.rows(), m.cols());
        {
            for k in Kernel::supported() {
                let mut got = vec![0; rows];
                m.dot_rows(k, 0..rows, y, &mut got);
                let mut part = vec![0; rows - 1];
                m.dot_rows(k, 1..rows, y, &mut part);
                for r in 0..rows {
                    let want = kernels::scalar::dot(&raw[r * cols / 4..], 32, y);
                    assert_eq!(got[r], want, "{} {rows}x{cols} row {r}", k.name());
                    if r > 0 {
                        assert_eq!(part[r - 1], want);
                    }
                }
                let acts = [y, y, y, y];
                assert_eq!(m.dot_row_4acts(k, rows - 1, acts), [got[rows - 1]; 4]);
            }
            let mut codes = vec![0; cols];
            for r in 0..rows {
                m.row_codes(r, &mut codes);
                for (e, &c) in codes.iter().enumerate() {
                    assert_eq!(c, i2s::code_at(&raw[r * cols / 4..], e), "row {r}");
                }
            }
        }
    }

    #[test]
    fn layout_names_parse() {
        assert_eq!(Layout::I2s.name(), "i2s");
        assert_eq!(Layout::Tl3.name(), "tl3");
        assert_eq!(
            Layout::preferred_for(Kernel::Scalar),
            Layout::I2s,
            "the scalar kernel reads I2_S"
        );
    }

    /// Repacking in place gives the bytes of the aligned copy, and refuses
    /// (leaving the bytes alone) a shape whose tiles need more room.
    #[test]
    fn in_place_repack_equals_the_copy() {
        let mut rng = Rng::new(31);
        let (rows, cols) = (12, 384);
        let mut t = random_matrix(&mut rng, rows, cols);
        t.extend_from_slice(&0.5f32.to_le_bytes());
        let copy = PackedMatrix::from_i2s_tensor(&t, rows, cols).unwrap();
        let mut buf = t.clone();
        // SAFETY: buf outlives m and is not written while m lives.
        let m = unsafe { PackedMatrix::repack_in_place(&mut buf, rows, cols) }.unwrap();
        assert!(m.is_in_place() && !copy.is_in_place());
        assert_eq!(m.bytes(), copy.bytes());
        assert_eq!((m.rows(), m.cols(), m.scale()), (rows, cols, 0.5));
        let mut odd = t[..10 * cols / 4].to_vec();
        odd.extend_from_slice(&0.5f32.to_le_bytes());
        let before = odd.clone();
        // SAFETY: as above.
        assert!(unsafe { PackedMatrix::repack_in_place(&mut odd, 10, cols) }.is_err());
        assert_eq!(odd, before);
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
}
