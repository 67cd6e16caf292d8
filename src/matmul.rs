//! Finished ternary matmuls `y = W x` over a [`PackedMatrix`], as bitnet.cpp
//! computes them: each activation column is quantized to I8_S once, every
//! output is `(dot - act_sum) / act_scale * w_scale`.

use crate::kernels::{self, Kernel};
use crate::packed::{AlignedBytes, Layout, PackedMatrix, TILE_ROWS};
use crate::quant::i2s::{self, ActQuant};
use crate::threadpool::{DisjointMut, ThreadPool};

/// Activation columns quantized to I8_S, allocated once and reused.
pub struct ActBatch {
    /// Values per column given to [`ActBatch::quantize`].
    given: usize,
    /// Values per column the kernels see: `given` padded with zeros to the
    /// (padded) row length of the matrices it feeds.
    len: usize,
    /// 64-byte aligned, as every column (`len` is a multiple of 128): a
    /// large `Vec` from the allocator is only 16-byte aligned, and then half
    /// of the kernels' 32-byte loads cross a cache line.
    q: AlignedBytes,
    quant: Vec<ActQuant>,
}

impl ActBatch {
    /// Room for up to `max_cols` columns of `len` activations.
    pub fn new(len: usize, max_cols: usize) -> Self {
        Self::padded(len, len, max_cols)
    }

    /// Columns of `len` activations seen by the kernels as `stride` values,
    /// the rest zeros (for matrices whose rows were padded to a multiple of
    /// 128, see [`crate::packed::PackedMatrix::from_i2s_tensor`]).
    pub fn padded(len: usize, stride: usize, max_cols: usize) -> Self {
        assert!(stride >= len, "padding shorter than the activations");
        ActBatch {
            given: len,
            len: stride,
            q: aligned(stride * max_cols),
            quant: Vec::with_capacity(max_cols),
        }
    }

    /// Quantizes `x.len() / len` columns (column `c` is `x[c*len..(c+1)*len]`).
    /// Grows the buffers if needed (never on a steady-state decode step).
    pub fn quantize(&mut self, x: &[f32]) {
        assert!(
            self.given > 0 && x.len().is_multiple_of(self.given),
            "activation length mismatch"
        );
        let cols = x.len() / self.given;
        if self.q.len() < cols * self.len {
            self.q = aligned(cols * self.len);
        }
        self.quant.clear();
        for (xc, qc) in x
            .chunks_exact(self.given)
            .zip(self.q.as_mut_i8().chunks_exact_mut(self.len))
            .take(cols)
        {
            self.quant
                .push(kernels::quantize_activations(xc, &mut qc[..self.given]));
            qc[self.given..].fill(0);
        }
    }

    pub fn cols(&self) -> usize {
        self.quant.len()
    }
    /// Values per column as the kernels see them (padding included).
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.quant.is_empty()
    }
    pub fn col(&self, c: usize) -> (&[i8], ActQuant) {
        (
            &self.q.as_i8()[c * self.len..(c + 1) * self.len],
            self.quant[c],
        )
    }
}

/// Quantized activation columns as the tile loop reads them: an [`ActBatch`],
/// or columns somewhere else ([`ActCols`]).
pub trait Columns: Sync {
    /// Number of columns.
    fn count(&self) -> usize;
    /// Column `c`: its int8 values (as many as the matrix has columns) and
    /// its quantization.
    fn col(&self, c: usize) -> (&[i8], ActQuant);
}

impl Columns for ActBatch {
    fn count(&self) -> usize {
        self.cols()
    }
    fn col(&self, c: usize) -> (&[i8], ActQuant) {
        ActBatch::col(self, c)
    }
}

/// Quantized columns held by the caller (such as a linked ggml's work
/// buffer): one slice and one quantization per column.
pub struct ActCols<'a> {
    pub q: &'a [&'a [i8]],
    pub quant: &'a [ActQuant],
}

impl Columns for ActCols<'_> {
    fn count(&self) -> usize {
        self.q.len().min(self.quant.len())
    }
    fn col(&self, c: usize) -> (&[i8], ActQuant) {
        (self.q[c], self.quant[c])
    }
}

/// Where finished outputs go: element (row `r`, column `c`) at
/// `c * ld + r - row0` of a buffer that other threads may be writing
/// elsewhere.
struct Out {
    buf: DisjointMut<f32>,
    ld: usize,
    row0: usize,
}

/// Zeroed aligned room for activations (out of memory is as fatal here as
/// for any `Vec`).
fn aligned(len: usize) -> AlignedBytes {
    AlignedBytes::zeroed(len).unwrap_or_else(|e| panic!("{e}"))
}

/// Output rows finished per inner block (a multiple of the tile height).
const ROWS_PER_BLOCK: usize = 64;
/// Parallel tasks per thread: each task is one contiguous run of rows, so a
/// thread streams through its part of the matrix instead of hopping.
const TASKS_PER_THREAD: usize = 2;

/// `out[c*rows + r] = Σ W[r]·x_c` finished to f32, for every column `c` of
/// `acts`, split over `pool`.
pub fn matmul(w: &PackedMatrix, acts: &ActBatch, out: &mut [f32], pool: &ThreadPool) {
    matmul_with(kernels::active(), w, acts, out, pool)
}

/// [`matmul`] with an explicit kernel.
pub fn matmul_with(
    k: Kernel,
    w: &PackedMatrix,
    acts: &ActBatch,
    out: &mut [f32],
    pool: &ThreadPool,
) {
    matmul_many_with(k, &mut [(w, out)], acts, pool)
}

/// Several matmuls of the same activations (Q/K/V, gate/up) in one pool
/// dispatch: the activations are quantized once by the caller and the
/// threads wake once.
pub fn matmul_many(jobs: &mut [(&PackedMatrix, &mut [f32])], acts: &ActBatch, pool: &ThreadPool) {
    matmul_many_with(kernels::active(), jobs, acts, pool)
}

/// [`matmul_many`] with an explicit kernel.
pub fn matmul_many_with(
    k: Kernel,
    jobs: &mut [(&PackedMatrix, &mut [f32])],
    acts: &ActBatch,
    pool: &ThreadPool,
) {
    assert!(jobs.len() <= 4, "at most 4 matrices per dispatch");
    let cols = acts.cols();
    // Per matrix: rows per task and the first task index.
    let mut plan = [(0usize, 0usize); 5];
    let mut outs: [Option<Out>; 4] = [None, None, None, None];
    let mut total = 0;
    for (i, (w, out)) in jobs.iter_mut().enumerate() {
        let rows = w.rows();
        assert_eq!(acts.len(), w.cols(), "activation length != matrix columns");
        assert!(out.len() >= rows * cols, "output too small");
        let per_task = rows
            .div_ceil(pool.threads() * TASKS_PER_THREAD)
            .next_multiple_of(TILE_ROWS)
            .max(ROWS_PER_BLOCK.min(rows.next_multiple_of(TILE_ROWS)));
        plan[i] = (per_task, total);
        total += rows.div_ceil(per_task);
        outs[i] = Some(Out {
            buf: DisjointMut::new(out),
            ld: rows,
            row0: 0,
        });
    }
    plan[jobs.len()] = (0, total);
    let mats: [Option<&PackedMatrix>; 4] = std::array::from_fn(|i| jobs.get(i).map(|j| j.0));
    pool.run(total, &|t| {
        let i = (0..jobs.len())
            .rev()
            .find(|&i| plan[i].1 <= t)
            .expect("task in range");
        let (w, out) = (
            mats[i].expect("planned"),
            outs[i].as_ref().expect("planned"),
        );
        let per_task = plan[i].0;
        let local = t - plan[i].1;
        let end = ((local + 1) * per_task).min(w.rows());
        let mut r0 = local * per_task;
        while r0 < end {
            let r1 = (r0 + ROWS_PER_BLOCK).min(end);
            block(k, w, acts, r0, r1, out);
            r0 = r1;
        }
    });
}

/// Rows `rows` of `w` for every column of `acts`, finished, on the calling
/// thread: (row `r`, column `c`) goes to `out[c * ld + r - rows.start]`.
/// `rows.start` must be on a tile boundary ([`TILE_ROWS`]) unless the
/// matrix is stored without tiles.
///
/// # Safety
/// `out` is valid for writes at every such index, and no other thread
/// reads or writes those elements meanwhile (other elements between them
/// may be written by others).
pub unsafe fn rows_into(
    k: Kernel,
    w: &PackedMatrix,
    acts: &impl Columns,
    rows: std::ops::Range<usize>,
    out: *mut f32,
    ld: usize,
) {
    assert!(rows.end <= w.rows() && ld >= rows.len());
    assert!(
        w.tile_rows() != TILE_ROWS || rows.start.is_multiple_of(TILE_ROWS),
        "first row {} is not on a tile boundary",
        rows.start
    );
    let out = Out {
        buf: DisjointMut::from_raw(out),
        ld,
        row0: rows.start,
    };
    let mut r0 = rows.start;
    while r0 < rows.end {
        let r1 = (r0 + ROWS_PER_BLOCK).min(rows.end);
        block(k, w, acts, r0, r1, &out);
        r0 = r1;
    }
}

/// Columns from which a prompt GEMM on TL3 tiles rewrites each block of
/// rows as I2_S tiles first (where [`kernels::tl3_expands`]); fewer columns
/// (decode, short batches) read the TL3 tiles directly.
const TL3_EXPAND_COLS: usize = 8;

thread_local! {
    /// Room for one block of rows rewritten as I2_S tiles, per thread.
    static EXPANDED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Where a block's tiles are read: the matrix itself, or its rows `r0..`
/// rewritten as I2_S tiles of `nb` blocks.
enum Tiles<'a> {
    Matrix,
    Expanded {
        bytes: &'a [u8],
        r0: usize,
        nb: usize,
    },
}

impl Tiles<'_> {
    fn dots<const N: usize>(
        &self,
        k: Kernel,
        w: &PackedMatrix,
        r: usize,
        y: [&[i8]; N],
    ) -> Option<[[i32; 4]; N]> {
        match *self {
            Tiles::Matrix => w.tile_dots(k, r, y),
            Tiles::Expanded { bytes, r0, nb } => {
                let start = (r - r0) / TILE_ROWS * nb * 128;
                let rows: [&[u8]; 4] =
                    std::array::from_fn(|i| &bytes[start + 32 * i..start + nb * 128]);
                Some(kernels::tile_with(k, rows, 128, y))
            }
        }
    }
}

/// Rows `r0..r1` (at most [`ROWS_PER_BLOCK`], `r0` on a tile boundary) for
/// every column, eight columns at a time where there are eight.
fn block(k: Kernel, w: &PackedMatrix, acts: &impl Columns, r0: usize, r1: usize, out: &Out) {
    let cols = acts.count();
    if w.layout() == Layout::Tl3 && cols >= TL3_EXPAND_COLS && kernels::tl3_expands(k) {
        let nb = w.cols() / 128;
        let tile_bytes = nb * 128;
        let tiles = (r1 - r0).div_ceil(TILE_ROWS);
        EXPANDED.with_borrow_mut(|buf| {
            buf.resize(tiles * tile_bytes, 0);
            for (t, dst) in buf.chunks_exact_mut(tile_bytes).enumerate() {
                w.expand_tile(k, r0 + t * TILE_ROWS, dst);
            }
            let tiles = Tiles::Expanded { bytes: buf, r0, nb };
            block_from(k, w, &tiles, acts, r0, r1, out)
        })
    } else {
        block_from(k, w, &Tiles::Matrix, acts, r0, r1, out)
    }
}

fn block_from(
    k: Kernel,
    w: &PackedMatrix,
    tiles: &Tiles,
    acts: &impl Columns,
    r0: usize,
    r1: usize,
    out: &Out,
) {
    let cols = acts.count();
    let mut c = 0;
    while c < cols {
        c += match cols - c {
            8.. => columns::<8>(k, w, tiles, acts, c, r0, r1, out),
            4..=7 => columns::<4>(k, w, tiles, acts, c, r0, r1, out),
            2 | 3 => columns::<2>(k, w, tiles, acts, c, r0, r1, out),
            _ => columns::<1>(k, w, tiles, acts, c, r0, r1, out),
        };
    }
}

/// Rows `r0..r1` for columns `c..c+N`, through the kernels' register tile
/// (four rows by `N` columns); returns `N`.
#[allow(clippy::too_many_arguments)]
fn columns<const N: usize>(
    k: Kernel,
    w: &PackedMatrix,
    tiles: &Tiles,
    acts: &impl Columns,
    c: usize,
    r0: usize,
    r1: usize,
    out: &Out,
) -> usize {
    let mut dots = [[0i32; ROWS_PER_BLOCK]; N];
    let y: [&[i8]; N] = std::array::from_fn(|j| acts.col(c + j).0);
    let mut r = r0;
    while r < r1 {
        if let Some(d) = tiles.dots(k, w, r, y) {
            let n = TILE_ROWS.min(r1 - r);
            for (dj, tj) in dots.iter_mut().zip(&d) {
                dj[r - r0..r - r0 + n].copy_from_slice(&tj[..n]);
            }
            r += TILE_ROWS;
        } else {
            let (row, stride) = w.row(r);
            for (dj, yj) in dots.iter_mut().zip(&y) {
                dj[r - r0] = kernels::dot_with(k, row, stride, yj);
            }
            r += 1;
        }
    }
    for (j, dj) in dots.iter().enumerate() {
        let q = acts.col(c + j).1;
        // SAFETY: each task writes only its own rows of each column,
        // disjoint from every other task; `out` outlives the run.
        let o = unsafe { out.buf.part((c + j) * out.ld + r0 - out.row0, r1 - r0) };
        finish_into(&dj[..r1 - r0], q, w.scale(), o);
    }
    N
}

fn finish_into(dots: &[i32], q: ActQuant, w_scale: f32, out: &mut [f32]) {
    for (o, &d) in out.iter_mut().zip(dots) {
        *o = i2s::finish(d, q, w_scale);
    }
}

const _: () = assert!(ROWS_PER_BLOCK.is_multiple_of(TILE_ROWS));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tests::Rng;

    #[test]
    fn fused_dispatch_equals_separate_matmuls() {
        let mut rng = Rng::new(9);
        let cols = 256;
        let mats: Vec<PackedMatrix> = [40usize, 12, 12]
            .iter()
            .map(|&rows| {
                let codes: Vec<u8> = (0..rows * cols).map(|_| (rng.next() % 3) as u8).collect();
                let mut raw = vec![0; rows * cols / 4];
                i2s::pack_codes(&codes, &mut raw).unwrap();
                PackedMatrix::from_i2s(&raw, rows, cols, 0.5).unwrap()
            })
            .collect();
        let x: Vec<f32> = (0..cols * 5)
            .map(|_| (rng.next() % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let mut acts = ActBatch::new(cols, 5);
        acts.quantize(&x);
        for threads in [1, 2, 3] {
            let pool = ThreadPool::new(threads);
            let mut sep: Vec<Vec<f32>> = mats.iter().map(|m| vec![0f32; m.rows() * 5]).collect();
            for (m, o) in mats.iter().zip(sep.iter_mut()) {
                matmul(m, &acts, o, &pool);
            }
            let (mut a, mut b, mut c) =
                (vec![f32::NAN; 200], vec![f32::NAN; 60], vec![f32::NAN; 60]);
            matmul_many(
                &mut [
                    (&mats[0], &mut a[..]),
                    (&mats[1], &mut b[..]),
                    (&mats[2], &mut c[..]),
                ],
                &acts,
                &pool,
            );
            assert_eq!(
                (a, b, c),
                (sep[0].clone(), sep[1].clone(), sep[2].clone()),
                "{threads} threads"
            );
        }
    }

    /// Rows that are not a multiple of 128 (bitnet_b1_58-3B's ffn_down):
    /// the tensor is one flat run of blocks; padded rows and padded
    /// activations give exactly the flat layout's products.
    #[test]
    fn rows_not_a_multiple_of_128_read_the_flat_layout() {
        let mut rng = Rng::new(3);
        let (rows, cols, n) = (64usize, 200usize, 3usize);
        let codes: Vec<u8> = (0..rows * cols).map(|_| (rng.next() % 3) as u8).collect();
        let mut tensor = vec![0u8; i2s::tensor_bytes(rows * cols)];
        i2s::pack_codes(&codes, &mut tensor[..rows * cols / 4]).unwrap();
        tensor[rows * cols / 4..rows * cols / 4 + 4].copy_from_slice(&0.75f32.to_le_bytes());
        let m = PackedMatrix::from_i2s_tensor(&tensor, rows, cols).unwrap();
        assert_eq!((m.rows(), m.cols()), (rows, 256));
        let x: Vec<f32> = (0..cols * n)
            .map(|_| (rng.next() % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let mut acts = ActBatch::padded(cols, 256, n);
        acts.quantize(&x);
        let mut out = vec![0f32; rows * n];
        matmul(&m, &acts, &mut out, &ThreadPool::new(2));
        for j in 0..n {
            let mut q = vec![0i8; cols];
            let quant = kernels::quantize_activations(&x[j * cols..(j + 1) * cols], &mut q);
            for r in 0..rows {
                let dot: i32 = (0..cols)
                    .map(|c| codes[r * cols + c] as i32 * q[c] as i32)
                    .sum();
                assert_eq!(
                    out[j * rows + r],
                    i2s::finish(dot, quant, 0.75),
                    "row {r} col {j}"
                );
            }
        }
        // A tensor that is not whole blocks is refused.
        assert!(PackedMatrix::from_i2s_tensor(&tensor, 3, 100).is_err());
    }

    #[test]
    fn matmul_matches_the_reference_formula() {
        let mut rng = Rng::new(5);
        let (rows, cols) = (70, 384);
        let codes: Vec<u8> = (0..rows * cols).map(|_| (rng.next() % 3) as u8).collect();
        let mut raw = vec![0; rows * cols / 4];
        i2s::pack_codes(&codes, &mut raw).unwrap();
        let i2s_w = PackedMatrix::from_i2s(&raw, rows, cols, 0.8).unwrap();
        let tl3_w = PackedMatrix::from_i2s_as(&raw, rows, cols, 0.8, Layout::Tl3).unwrap();
        // 1..=6 columns read the tiles directly; 9 and 17 rewrite TL3 tiles
        // as I2_S where the kernel does.
        for (w, ncols) in [1usize, 3, 4, 6, 9, 17]
            .into_iter()
            .flat_map(|n| [(&i2s_w, n), (&tl3_w, n)])
        {
            let x: Vec<f32> = (0..cols * ncols)
                .map(|_| (rng.next() % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let mut acts = ActBatch::new(cols, 1);
            acts.quantize(&x);
            for threads in [1, 2] {
                let pool = ThreadPool::new(threads);
                for k in Kernel::supported() {
                    let mut out = vec![f32::NAN; rows * ncols];
                    matmul_with(k, w, &acts, &mut out, &pool);
                    for c in 0..ncols {
                        let (q, aq) = acts.col(c);
                        for r in 0..rows {
                            let dot: i32 = (0..cols)
                                .map(|e| codes[r * cols + e] as i32 * q[e] as i32)
                                .sum();
                            let want = (dot - aq.sum) as f32 / aq.scale * 0.8;
                            assert_eq!(
                                out[c * rows + r],
                                want,
                                "{} {:?} col {c} row {r}",
                                k.name(),
                                w.layout()
                            );
                        }
                    }
                }
            }
        }
    }
}
