//! The token embedding / LM head matrix: `vocab` rows of `dim` values in
//! F32, F16, Q8_0 or Q6_K, read in place from the GGUF map. Rows are
//! dequantized for embedding lookups; the LM head is a multi-threaded
//! `logits = E h` through the f16, Q8_0 and Q6_K kernels of
//! [`crate::kernels`], its input converted as ggml converts it.

use half::f16;

use crate::error::{Error, Result};
use crate::gguf::GgmlType;
use crate::kernels;
use crate::quant::q6k::BlockQ6K;
use crate::quant::q8_0::BlockQ8_0;
use crate::quant::q8k::QK_K;
use crate::quant::{q8_0, q8k, Block};
use crate::threadpool::ThreadPool;

/// A borrowed row-major matrix of `rows` rows of `dim` values.
#[derive(Clone, Copy)]
pub struct Matrix<'a> {
    pub ty: GgmlType,
    pub rows: usize,
    pub dim: usize,
    pub data: &'a [u8],
}

impl<'a> Matrix<'a> {
    pub fn new(ty: GgmlType, rows: usize, dim: usize, data: &'a [u8]) -> Result<Self> {
        let row = Self::row_bytes_of(ty, dim)?;
        if data.len() < row * rows {
            return Err(Error::format(format!(
                "{ty} matrix {rows}x{dim} needs {} bytes, has {}",
                row * rows,
                data.len()
            )));
        }
        Ok(Matrix {
            ty,
            rows,
            dim,
            data,
        })
    }

    fn row_bytes_of(ty: GgmlType, dim: usize) -> Result<usize> {
        Ok(match ty {
            GgmlType::F32 => dim * 4,
            GgmlType::F16 => dim * 2,
            GgmlType::Q8_0 if dim.is_multiple_of(BlockQ8_0::VALUES) => {
                dim / BlockQ8_0::VALUES * BlockQ8_0::BYTES
            }
            GgmlType::Q6K if dim.is_multiple_of(BlockQ6K::VALUES) => {
                dim / BlockQ6K::VALUES * BlockQ6K::BYTES
            }
            _ => {
                return Err(Error::unsupported(format!(
                    "embedding/output type {ty} with row length {dim} is not supported (F32, F16, Q8_0, Q6_K are)"
                )))
            }
        })
    }

    fn row_bytes(&self) -> usize {
        Self::row_bytes_of(self.ty, self.dim).expect("checked in new")
    }

    fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    /// Dequantizes row `r` into `out` (`dim` floats).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows && out.len() == self.dim);
        let row = self.row(r);
        match self.ty {
            GgmlType::F32 => {
                for (o, b) in out.iter_mut().zip(row.chunks_exact(4)) {
                    *o = f32::from_le_bytes(b.try_into().unwrap());
                }
            }
            GgmlType::F16 => {
                for (o, b) in out.iter_mut().zip(row.chunks_exact(2)) {
                    *o = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                }
            }
            GgmlType::Q8_0 => BlockQ8_0::dequantize_row(BlockQ8_0::slice(row).unwrap(), out),
            GgmlType::Q6K => BlockQ6K::dequantize_row(BlockQ6K::slice(row).unwrap(), out),
            _ => unreachable!("checked in new"),
        }
    }

    /// `out = M x` over all rows, split over the pool, with `x` first
    /// converted as ggml converts a matmul's activations for this weight
    /// type: rounded to f16 for an F16 matrix, quantized to Q8_0 blocks for
    /// Q8_0 and to Q8_K blocks for Q6_K (then integer dots), kept in f32
    /// for F32. `acts` is scratch (allocation-free once sized).
    pub fn matvec(&self, x: &[f32], acts: &mut Activations, out: &mut [f32], pool: &ThreadPool) {
        assert!(x.len() == self.dim && out.len() >= self.rows);
        acts.convert(self.ty, x, 1);
        let acts = &*acts;
        pool.run_chunks(&mut out[..self.rows], HEAD_CHUNK, &|t, o| {
            self.dots(t * HEAD_CHUNK, acts, 1, o);
        });
    }

    /// [`Matrix::matvec`] of `n` vectors at once (`xs` holds them back to
    /// back; `out` gets `n` runs of `rows` results): each row is read once
    /// for all of them, and every result is bit-identical to `matvec`'s.
    /// `scratch` holds the row-major products before they are transposed.
    pub fn matmul(
        &self,
        xs: &[f32],
        n: usize,
        acts: &mut Activations,
        scratch: &mut Vec<f32>,
        out: &mut [f32],
        pool: &ThreadPool,
    ) {
        assert!(xs.len() == n * self.dim && out.len() >= n * self.rows);
        if n == 1 {
            return self.matvec(xs, acts, out, pool);
        }
        acts.convert(self.ty, xs, n);
        let acts = &*acts;
        scratch.resize(self.rows * n, 0.0);
        pool.run_chunks(&mut scratch[..], HEAD_CHUNK * n, &|t, o| {
            self.dots(t * HEAD_CHUNK, acts, n, o);
        });
        transpose_into(scratch, n, self.rows, out);
    }

    /// Rows from `r0` on against `n` converted vectors, row-major into `o`.
    fn dots(&self, r0: usize, acts: &Activations, n: usize, o: &mut [f32]) {
        let (dim, blocks) = (self.dim, acts.blocks);
        let x = |j: usize| &acts.float[j * dim..(j + 1) * dim];
        let rows = o.len() / n;
        // The kernels chosen once for all rows of this task (not per row).
        let fk = kernels::float();
        if self.ty == GgmlType::F16 {
            if let Some(cols) = acts.cols_kernel {
                // Up to GROUP vectors per call (their floats stay in L1),
                // over blocks of rows that stay in L2 while every group
                // passes over them.
                const BLOCK: usize = 32;
                const GROUP: usize = 4;
                let cols2 = acts.cols2_kernel;
                let rb = self.row_bytes();
                for b0 in (0..rows).step_by(BLOCK) {
                    let b1 = (b0 + BLOCK).min(rows);
                    for j in (0..n).step_by(GROUP) {
                        let k = (n - j).min(GROUP);
                        let xs = &acts.float[j * dim..(j + k) * dim];
                        let mut r = b0;
                        if let Some(cols2) = cols2 {
                            // Two rows per call: each vector value loaded
                            // serves both.
                            let mut two = [0f32; 2 * GROUP];
                            while r + 2 <= b1 {
                                let both = &self.data[(r0 + r) * rb..(r0 + r + 2) * rb];
                                cols2(both, xs, dim, &mut two[..2 * k]);
                                o[r * n + j..r * n + j + k].copy_from_slice(&two[..k]);
                                o[(r + 1) * n + j..(r + 1) * n + j + k]
                                    .copy_from_slice(&two[k..2 * k]);
                                r += 2;
                            }
                        }
                        for r in r..b1 {
                            cols(self.row(r0 + r), xs, dim, &mut o[r * n + j..r * n + j + k]);
                        }
                    }
                }
                return;
            }
        }
        for (i, o) in o.chunks_exact_mut(n).enumerate() {
            let row = self.row(r0 + i);
            match self.ty {
                GgmlType::F16 => {
                    let mut j = 0;
                    while j + 2 <= n {
                        (o[j], o[j + 1]) = (fk.dot_f16_pair)(row, x(j), x(j + 1));
                        j += 2;
                    }
                    if j < n {
                        o[j] = (fk.dot_f16)(row, x(j));
                    }
                }
                ty => {
                    for (j, o) in o.iter_mut().enumerate() {
                        let (q, d) = (
                            &acts.q[j * dim..(j + 1) * dim],
                            &acts.d[j * blocks..(j + 1) * blocks],
                        );
                        *o = match ty {
                            GgmlType::Q8_0 => (fk.dot_q8_0)(row, q, d),
                            GgmlType::Q6K => (fk.dot_q6k_q8k)(row, q, d),
                            _ => row
                                .chunks_exact(4)
                                .zip(x(j))
                                .map(|(b, v)| f32::from_le_bytes(b.try_into().unwrap()) * v)
                                .sum(),
                        };
                    }
                }
            }
        }
    }
}

/// `rows × n` row-major products into `n` runs of `rows` (one per vector).
fn transpose_into(products: &[f32], n: usize, rows: usize, out: &mut [f32]) {
    for (r, vals) in products.chunks_exact(n).enumerate() {
        for (j, &v) in vals.iter().enumerate() {
            out[j * rows + r] = v;
        }
    }
}

/// Rows per task of the LM head.
const HEAD_CHUNK: usize = 512;

/// A matmul's activations (one or more vectors) in the form its weight
/// type's dot takes: floats (f16-rounded for F16), or int8 values with one
/// scale per block (32 for Q8_0, 256 for Q8_K).
pub struct Activations {
    float: Vec<f32>,
    /// The several-vectors F16 kernel, where the CPU has one and the
    /// conversion was for several F16 vectors.
    cols_kernel: Option<ColsKernel>,
    cols2_kernel: Option<ColsKernel>,
    q: Vec<i8>,
    d: Vec<f32>,
    /// Scales per vector.
    blocks: usize,
}

type ColsKernel = fn(&[u8], &[f32], usize, &mut [f32]);

impl Activations {
    /// Scratch for one vector of `dim` values (grows for more).
    pub fn new(dim: usize) -> Activations {
        Activations {
            float: vec![0.0; dim],
            cols_kernel: None,
            cols2_kernel: None,
            q: vec![0; dim],
            d: vec![0.0; dim.div_ceil(32)],
            blocks: 0,
        }
    }

    /// Converts the `n` vectors of `xs` for weight type `ty`.
    fn convert(&mut self, ty: GgmlType, xs: &[f32], n: usize) {
        let len = xs.len();
        let dim = len / n;
        self.blocks = dim.div_ceil(32);
        self.float.resize(len, 0.0);
        self.q.resize(len, 0);
        self.d.resize(self.blocks * n, 0.0);
        self.cols_kernel = None;
        self.cols2_kernel = None;
        match ty {
            GgmlType::F16 => {
                for (o, &v) in self.float.iter_mut().zip(xs) {
                    *o = f16::from_f32(v).to_f32();
                }
                if n >= 2 && dim.is_multiple_of(32) {
                    self.cols_kernel = crate::kernels::float().dot_f16_cols;
                    self.cols2_kernel = crate::kernels::float().dot_f16_cols2;
                }
            }
            GgmlType::Q8_0 | GgmlType::Q6K => {
                for j in 0..n {
                    let (x, q) = (
                        &xs[j * dim..(j + 1) * dim],
                        &mut self.q[j * dim..(j + 1) * dim],
                    );
                    let d = &mut self.d[j * self.blocks..(j + 1) * self.blocks];
                    if ty == GgmlType::Q8_0 {
                        q8_0::quantize(x, q, d);
                    } else {
                        q8k::quantize(x, q, d);
                    }
                }
            }
            _ => self.float.copy_from_slice(xs),
        }
    }
}

/// One Q6_K block of 256 values, as ggml's `quantize_row_q6_K_ref` writes
/// it (what `llama-quantize --token-embedding-type q6_k` and bitnet.cpp's
/// `--quant-embd` produce from an F16 matrix): the group search by the
/// active kernel, the block by [`BlockQ6K::from_groups`].
pub fn quantize_q6k_block(x: &[f32], out: &mut [u8]) {
    let x: &[f32; QK_K] = x.try_into().expect("256 values");
    let mut levels = [[0u8; 16]; 16];
    let mut scales = [0f32; 16];
    kernels::q6k_group_scales(x, &mut scales, &mut levels);
    BlockQ6K::slice_mut(out).expect("one Q6_K block")[0] =
        BlockQ6K::from_groups(x, &scales, &mut levels);
}

/// A zeroed buffer for a head copy of `rows` rows of `row_len` elements;
/// too large or out of memory is an error, not an abort.
fn head_buffer<T: Copy + Default>(rows: usize, row_len: usize, what: &str) -> Result<Vec<T>> {
    let n = rows
        .checked_mul(row_len)
        .ok_or_else(|| Error::invalid("head too large"))?;
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        Error::new(
            crate::ErrorKind::OutOfMemory,
            format!("cannot allocate the {what} head"),
        )
    })?;
    v.resize(n, T::default());
    Ok(v)
}

/// A Q6_K copy of a matrix (rows a multiple of 256 long), quantized as
/// `llama-quantize` does, split over the pool: the opt-in 6-bit LM head.
pub fn quantize_q6k_matrix(m: &Matrix, pool: &ThreadPool) -> Result<Vec<u8>> {
    if !m.dim.is_multiple_of(256) {
        return Err(Error::unsupported(format!(
            "a Q6_K head needs rows a multiple of 256 long; this head's are {}",
            m.dim
        )));
    }
    let rb = m.dim / QK_K * BlockQ6K::BYTES;
    let mut out = head_buffer::<u8>(m.rows, rb, "Q6_K")?;
    let n = out.len();
    const CHUNK: usize = 256;
    if n > 0 {
        pool.run_chunks(&mut out, CHUNK * rb, &|t, o| {
            let mut row = vec![0f32; m.dim];
            for (i, o) in o.chunks_exact_mut(rb).enumerate() {
                m.dequantize_row(t * CHUNK + i, &mut row);
                for (x, b) in row
                    .chunks_exact(QK_K)
                    .zip(o.chunks_exact_mut(BlockQ6K::BYTES))
                {
                    quantize_q6k_block(x, b);
                }
            }
        });
    }
    Ok(out)
}

/// An 8-bit copy of the LM head: each row quantized to int8 with its own
/// scale (`absmax / 127`), about half the bytes of F16. Logits are
/// `scale_row * scale_x * Σ q_row·q_x` with the hidden state quantized to
/// int8 once per token (absmax / 127, round to nearest).
pub struct Q8Head {
    pub rows: usize,
    pub dim: usize,
    q: Vec<i8>,
    scales: Vec<f32>,
}

impl Q8Head {
    /// Quantizes every row of `m`, split over the pool.
    pub fn from_matrix(m: &Matrix, pool: &ThreadPool) -> Result<Q8Head> {
        let mut q = head_buffer::<i8>(m.rows, m.dim, "8-bit")?;
        let n = q.len();
        let mut scales = vec![0f32; m.rows];
        const CHUNK: usize = 1024;
        // (an empty head has no chunks to split)
        if n > 0 {
            pool.run_chunks2(&mut q, CHUNK * m.dim, &mut scales, CHUNK, &|t, qc, sc| {
                let mut row = vec![0f32; m.dim];
                for (i, (qr, sr)) in qc.chunks_exact_mut(m.dim).zip(sc.iter_mut()).enumerate() {
                    m.dequantize_row(t * CHUNK + i, &mut row);
                    *sr = quantize_q8(&row, qr);
                }
            });
        }
        Ok(Q8Head {
            rows: m.rows,
            dim: m.dim,
            q,
            scales,
        })
    }

    pub fn bytes(&self) -> usize {
        self.q.len() + self.scales.len() * 4
    }

    /// `out = head · x`, split over the pool. `xq` is scratch of `dim` bytes.
    pub fn matvec(&self, x: &[f32], xq: &mut [i8], out: &mut [f32], pool: &ThreadPool) {
        assert!(x.len() == self.dim && xq.len() == self.dim && out.len() >= self.rows);
        let sx = quantize_q8(x, xq);
        let xq: &[i8] = xq;
        const CHUNK: usize = 512;
        pool.run_chunks(&mut out[..self.rows], CHUNK, &|t, o| {
            let dot_i8 = kernels::float().dot_i8;
            let r0 = t * CHUNK;
            for (r, o) in (r0..r0 + o.len()).zip(o.iter_mut()) {
                let d = dot_i8(&self.q[r * self.dim..(r + 1) * self.dim], xq);
                *o = d as f32 * sx * self.scales[r];
            }
        });
    }

    /// [`Q8Head::matvec`] of the `n` vectors of `xs` at once, each row read
    /// once for all (every result as `matvec` gives it); `xq` and
    /// `scratch` are grown as needed.
    pub fn matmul(
        &self,
        xs: &[f32],
        n: usize,
        xq: &mut Vec<i8>,
        scratch: &mut Vec<f32>,
        out: &mut [f32],
        pool: &ThreadPool,
    ) {
        let dim = self.dim;
        assert!(xs.len() == n * dim && out.len() >= n * self.rows);
        xq.resize(n * dim, 0);
        if n == 1 {
            return self.matvec(xs, xq, out, pool);
        }
        let sx: Vec<f32> = xs
            .chunks_exact(dim)
            .zip(xq.chunks_exact_mut(dim))
            .map(|(x, q)| quantize_q8(x, q))
            .collect();
        let xq: &[i8] = xq;
        scratch.resize(self.rows * n, 0.0);
        const CHUNK: usize = 512;
        pool.run_chunks(&mut scratch[..], CHUNK * n, &|t, o| {
            let dot_i8 = kernels::float().dot_i8;
            for (i, o) in o.chunks_exact_mut(n).enumerate() {
                let r = t * CHUNK + i;
                let row = &self.q[r * dim..(r + 1) * dim];
                for (j, o) in o.iter_mut().enumerate() {
                    let d = dot_i8(row, &xq[j * dim..(j + 1) * dim]);
                    *o = d as f32 * sx[j] * self.scales[r];
                }
            }
        });
        transpose_into(scratch, n, self.rows, out);
    }
}

/// Quantizes `x` to int8 with scale `absmax / 127`; returns the scale.
fn quantize_q8(x: &[f32], q: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |m, &v| m.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (o, &v) in q.iter_mut().zip(x) {
        *o = (v * inv).round().clamp(-127.0, 127.0) as i8;
    }
    d
}

/// Views f16 values as their little-endian bytes.
pub fn f16_bytes(v: &[u16]) -> &[u8] {
    // SAFETY: u8 has alignment 1 and the length covers exactly the same memory.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len() * 2) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_dot_and_q8_head() {
        for n in [1usize, 63, 64, 200, 2560] {
            let a: Vec<i8> = (0..n)
                .map(|i| ((i * 37 % 255) as i32 - 127) as i8)
                .collect();
            let b: Vec<i8> = (0..n)
                .map(|i| ((i * 91 % 255) as i32 - 127) as i8)
                .collect();
            let want: i32 = a.iter().zip(&b).map(|(&x, &y)| x as i32 * y as i32).sum();
            assert_eq!(kernels::dot_i8(&a, &b), want, "n={n}");
        }
        let (rows, dim) = (70, 256);
        let data: Vec<u8> = (0..rows * dim)
            .flat_map(|i| {
                f16::from_f32(((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                    .to_bits()
                    .to_le_bytes()
            })
            .collect();
        let m = Matrix::new(GgmlType::F16, rows, dim, &data).unwrap();
        let pool = ThreadPool::new(2);
        let h = Q8Head::from_matrix(&m, &pool).unwrap();
        let x: Vec<f32> = (0..dim).map(|i| (i as f32 * 0.05).sin()).collect();
        let (mut exact, mut approx, mut xq) = (vec![0f32; rows], vec![0f32; rows], vec![0i8; dim]);
        m.matvec(&x, &mut Activations::new(dim), &mut exact, &pool);
        h.matvec(&x, &mut xq, &mut approx, &pool);
        // Rounding bound: |Δ| <= dx/2·Σ|w| + dw/2·Σ|x| + dw·dx/4·dim.
        let ax: f32 = x.iter().map(|v| v.abs()).sum();
        let dx = x.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
        let mut row = vec![0f32; dim];
        for r in 0..rows {
            m.dequantize_row(r, &mut row);
            let aw: f32 = row.iter().map(|v| v.abs()).sum();
            let dw = row.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
            let bound = 0.5 * dx * aw + 0.5 * dw * ax + 0.25 * dw * dx * dim as f32 + 1e-4;
            assert!(
                (exact[r] - approx[r]).abs() <= bound,
                "row {r}: {} vs {} (bound {bound})",
                exact[r],
                approx[r]
            );
        }
    }

    /// The Q8_0 and Q6_K heads: ggml's activation quantizations, and the
    /// integer dots equal to the dequantized weights times the dequantized
    /// activations (which checks the Q6_K index layout).
    #[test]
    fn q8_0_and_q6k_heads_take_ggml_activations() {
        let x: Vec<f32> = (0..512)
            .map(|i| ((i * 7919) % 1000) as f32 / 300.0 - 1.6)
            .collect();
        let (mut q, mut d) = (vec![0i8; 512], vec![0f32; 16]);
        q8_0::quantize(&x, &mut q, &mut d);
        for (b, xs) in x.chunks(32).enumerate() {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_eq!(d[b], f16::from_f32(amax / 127.0).to_f32());
            for (i, &v) in xs.iter().enumerate() {
                assert_eq!(q[b * 32 + i] as f32, (v * (127.0 / amax)).round_ties_even());
            }
        }
        // A tie rounds to even, as _mm256_round_ps does.
        let mut tie = vec![0f32; 32];
        tie[0] = 127.0;
        tie[1] = 2.5;
        let (mut tq, mut td) = (vec![0i8; 32], vec![0f32; 1]);
        q8_0::quantize(&tie, &mut tq, &mut td);
        assert_eq!(tq[1], 2);
        let (mut q8, mut d8) = (vec![0i8; 512], vec![0f32; 2]);
        q8k::quantize(&x, &mut q8, &mut d8);
        assert!(q8.iter().all(|&v| v >= -127));
        // Random Q6_K blocks.
        let (rows, dim) = (3usize, 512usize);
        let data: Vec<u8> = (0..rows * dim / 256)
            .flat_map(|b| {
                let mut blk: Vec<u8> = (0..208).map(|i| ((b * 131 + i * 29) % 256) as u8).collect();
                blk.extend(
                    f16::from_f32(0.003 * (b as f32 + 1.0))
                        .to_bits()
                        .to_le_bytes(),
                );
                blk
            })
            .collect();
        let m = Matrix::new(GgmlType::Q6K, rows, dim, &data).unwrap();
        let mut out = vec![0f32; rows];
        m.matvec(
            &x,
            &mut Activations::new(dim),
            &mut out,
            &ThreadPool::new(1),
        );
        let mut w = vec![0f32; dim];
        for (r, &o) in out.iter().enumerate() {
            m.dequantize_row(r, &mut w);
            let want: f64 = (0..dim)
                .map(|i| w[i] as f64 * d8[i / 256] as f64 * q8[i] as f64)
                .sum();
            assert!(
                (o as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                "row {r}: {o} vs {want}"
            );
        }
    }

    #[test]
    fn q8_0_and_q6k_dequantize() {
        // Q8_0: d = 0.5, q = -3..29
        let mut blk = f16::from_f32(0.5).to_bits().to_le_bytes().to_vec();
        blk.extend((0..32).map(|i| (i as i8 - 3) as u8));
        let m = Matrix::new(GgmlType::Q8_0, 1, 32, &blk).unwrap();
        let mut out = vec![0f32; 32];
        m.dequantize_row(0, &mut out);
        assert_eq!(out[0], -1.5);
        assert_eq!(out[31], 14.0);
        // Q6_K: all 6-bit values 33 (q = 1), scales 2, d = 0.25 -> every weight 0.5
        let mut b = vec![0u8; 210];
        b[..128].fill(0x11); // low nibbles 1
        b[128..192].fill(0xAA); // high 2 bits = 2 -> 1 | 2<<4 = 33
        b[192..208].fill(2);
        b[208..210].copy_from_slice(&f16::from_f32(0.25).to_bits().to_le_bytes());
        let m = Matrix::new(GgmlType::Q6K, 1, 256, &b).unwrap();
        let mut out = vec![0f32; 256];
        m.dequantize_row(0, &mut out);
        assert!(out.iter().all(|&v| v == 0.5), "{:?}", &out[..4]);
        assert!(Matrix::new(GgmlType::Q6K, 2, 256, &b).is_err());
        assert!(Matrix::new(GgmlType::Q4K, 1, 256, &b).is_err());
    }
}
