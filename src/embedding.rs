//! The token embedding / LM head matrix: `vocab` rows of `dim` values in
//! F32, F16, Q8_0 or Q6_K, read in place from the GGUF map. Rows are
//! dequantized for embedding lookups; the LM head is a multi-threaded
//! `logits = E h` with an AVX2/F16C kernel for F16 rows.

use half::f16;

use crate::error::{Error, Result};
use crate::gguf::GgmlType;
use crate::threadpool::{DisjointMut, ThreadPool};

/// A borrowed row-major matrix of `rows` rows of `dim` values.
#[derive(Clone, Copy)]
pub struct Matrix<'a> {
    pub ty: GgmlType,
    pub rows: usize,
    pub dim: usize,
    pub data: &'a [u8],
}

const Q6K_BYTES: usize = 210;
const Q8_0_BYTES: usize = 34;

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
            GgmlType::Q8_0 if dim.is_multiple_of(32) => dim / 32 * Q8_0_BYTES,
            GgmlType::Q6K if dim.is_multiple_of(256) => dim / 256 * Q6K_BYTES,
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
            GgmlType::Q8_0 => {
                for (blk, o) in row.chunks_exact(Q8_0_BYTES).zip(out.chunks_exact_mut(32)) {
                    let d = f16::from_bits(u16::from_le_bytes([blk[0], blk[1]])).to_f32();
                    for (v, &q) in o.iter_mut().zip(&blk[2..]) {
                        *v = d * (q as i8) as f32;
                    }
                }
            }
            GgmlType::Q6K => {
                for (blk, o) in row.chunks_exact(Q6K_BYTES).zip(out.chunks_exact_mut(256)) {
                    dequantize_q6k_block(blk, o);
                }
            }
            _ => unreachable!("checked in new"),
        }
    }

    /// `out[r] = row_r · x` for rows `rows`, single-threaded.
    fn dot_rows(
        &self,
        rows: std::ops::Range<usize>,
        x: &[f32],
        out: &mut [f32],
        scratch: &mut [f32],
    ) {
        for (o, r) in out.iter_mut().zip(rows) {
            *o = match self.ty {
                GgmlType::F16 => dot_f16(self.row(r), x),
                _ => {
                    self.dequantize_row(r, scratch);
                    scratch.iter().zip(x).map(|(a, b)| a * b).sum()
                }
            };
        }
    }

    /// `out = M x` over all rows, split over the pool.
    pub fn matvec(&self, x: &[f32], out: &mut [f32], pool: &ThreadPool) {
        assert!(x.len() == self.dim && out.len() >= self.rows);
        const CHUNK: usize = 512;
        let tasks = self.rows.div_ceil(CHUNK);
        let out_ptr = DisjointMut::new(out);
        pool.run(tasks, &|t| {
            let r0 = t * CHUNK;
            let r1 = (r0 + CHUNK).min(self.rows);
            let mut scratch = if self.ty == GgmlType::F16 {
                Vec::new()
            } else {
                vec![0f32; self.dim]
            };
            // SAFETY: tasks write disjoint ranges r0..r1 of `out`, which
            // outlives `run`.
            let o = unsafe { out_ptr.part(r0, r1 - r0) };
            self.dot_rows(r0..r1, x, o, &mut scratch);
        });
    }
}

fn dequantize_q6k_block(b: &[u8], y: &mut [f32]) {
    let (ql, rest) = b.split_at(128);
    let (qh, rest) = rest.split_at(64);
    let (sc, d) = rest.split_at(16);
    let d = f16::from_bits(u16::from_le_bytes([d[0], d[1]])).to_f32();
    for half in 0..2 {
        let (ql, qh, sc, y) = (
            &ql[64 * half..],
            &qh[32 * half..],
            &sc[8 * half..],
            &mut y[128 * half..],
        );
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// Dot of a row of little-endian f16 values with f32 `x`, accumulated in f32.
pub fn dot_f16(row: &[u8], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: F16C, FMA and AVX2 are present; lengths are checked inside.
        return unsafe { dot_f16_f16c(row, x) };
    }
    dot_f16_scalar(row, x)
}

pub fn dot_f16_scalar(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (i, (b, &v)) in row.chunks_exact(2).zip(x).enumerate() {
        acc[i % 8] += f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32() * v;
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
fn has_f16c() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        std::is_x86_feature_detected!("f16c")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("avx2")
    })
}

/// # Safety
/// The CPU supports AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_f16c(row: &[u8], x: &[f32]) -> f32 {
    use core::arch::x86_64::*;
    let n = x.len().min(row.len() / 2);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: i + 8*j + 8 <= n elements are in bounds of both.
            unsafe {
                let w = _mm256_cvtph_ps(_mm_loadu_si128(
                    row.as_ptr().add(2 * (i + 8 * j)) as *const __m128i
                ));
                *a = _mm256_fmadd_ps(w, _mm256_loadu_ps(x.as_ptr().add(i + 8 * j)), *a);
            }
        }
        i += 32;
    }
    while i + 8 <= n {
        // SAFETY: as above.
        unsafe {
            let w = _mm256_cvtph_ps(_mm_loadu_si128(row.as_ptr().add(2 * i) as *const __m128i));
            acc[0] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x.as_ptr().add(i)), acc[0]);
        }
        i += 8;
    }
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut lanes = [0f32; 8];
    // SAFETY: 8 floats of room.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), s) };
    let mut total: f32 = lanes.iter().sum();
    while i < n {
        total += f16::from_bits(u16::from_le_bytes([row[2 * i], row[2 * i + 1]])).to_f32() * x[i];
        i += 1;
    }
    total
}

/// `out += a * v` for a row of little-endian f16 values `v`.
pub fn axpy_f16(a: f32, v: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: F16C, FMA and AVX2 are present; lengths are checked inside.
        unsafe { axpy_f16_f16c(a, v, out) };
        return;
    }
    for (o, b) in out.iter_mut().zip(v.chunks_exact(2)) {
        *o += a * f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
    }
}

/// # Safety
/// The CPU supports AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy_f16_f16c(a: f32, v: &[u8], out: &mut [f32]) {
    use core::arch::x86_64::*;
    let n = out.len().min(v.len() / 2);
    let av = _mm256_set1_ps(a);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n elements are in bounds of both.
        unsafe {
            let w = _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(2 * i) as *const __m128i));
            let o = out.as_mut_ptr().add(i);
            _mm256_storeu_ps(o, _mm256_fmadd_ps(av, w, _mm256_loadu_ps(o)));
        }
        i += 8;
    }
    while i < n {
        out[i] += a * f16::from_bits(u16::from_le_bytes([v[2 * i], v[2 * i + 1]])).to_f32();
        i += 1;
    }
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
        let n = m
            .rows
            .checked_mul(m.dim)
            .ok_or_else(|| Error::invalid("head too large"))?;
        let mut q = Vec::new();
        q.try_reserve_exact(n).map_err(|_| {
            Error::new(
                crate::ErrorKind::OutOfMemory,
                "cannot allocate the 8-bit head",
            )
        })?;
        q.resize(n, 0i8);
        let mut scales = vec![0f32; m.rows];
        const CHUNK: usize = 1024;
        let (qd, sd) = (DisjointMut::new(&mut q), DisjointMut::new(&mut scales));
        pool.run(m.rows.div_ceil(CHUNK), &|t| {
            let r0 = t * CHUNK;
            let r1 = (r0 + CHUNK).min(m.rows);
            let mut row = vec![0f32; m.dim];
            for r in r0..r1 {
                m.dequantize_row(r, &mut row);
                // SAFETY: rows r0..r1 belong to this task alone.
                let (qr, sr) = unsafe { (qd.part(r * m.dim, m.dim), sd.part(r, 1)) };
                sr[0] = quantize_q8(&row, qr);
            }
        });
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
        let od = DisjointMut::new(out);
        pool.run(self.rows.div_ceil(CHUNK), &|t| {
            let r0 = t * CHUNK;
            let r1 = (r0 + CHUNK).min(self.rows);
            // SAFETY: rows r0..r1 belong to this task alone.
            let o = unsafe { od.part(r0, r1 - r0) };
            for (r, o) in (r0..r1).zip(o.iter_mut()) {
                let d = dot_i8(&self.q[r * self.dim..(r + 1) * self.dim], xq);
                *o = d as f32 * sx * self.scales[r];
            }
        });
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

/// Exact `Σ a·b` of two int8 vectors (values in -127..=127).
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::Kernel::Avx2.is_supported() {
        // SAFETY: AVX2 is present; lengths are handled inside.
        return unsafe { dot_i8_avx2(a, b) };
    }
    a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
}

/// # Safety
/// AVX2 is present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_i8_avx2(a: &[i8], b: &[i8]) -> i32 {
    use core::arch::x86_64::*;
    let n = a.len().min(b.len());
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_si256(); 2];
    let mut i = 0;
    while i + 64 <= n {
        for (j, acc) in acc.iter_mut().enumerate() {
            // SAFETY: i + 32*j + 32 <= n bytes of both.
            unsafe {
                let x = _mm256_loadu_si256(a.as_ptr().add(i + 32 * j) as *const __m256i);
                let y = _mm256_loadu_si256(b.as_ptr().add(i + 32 * j) as *const __m256i);
                // |x| * sign(y, x): exact in int16 pairs for values in -127..=127.
                let p = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
                *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(p, ones));
            }
        }
        i += 64;
    }
    let v = _mm256_add_epi32(acc[0], acc[1]);
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    let mut total = _mm_cvtsi128_si32(s);
    while i < n {
        total += a[i] as i32 * b[i] as i32;
        i += 1;
    }
    total
}

/// Most query heads that one attention kernel call serves.
pub const MAX_GROUP: usize = 8;

/// Attention scores of one f16 key row against `g = out.len()` query
/// vectors stored back to back in `qs` (`g * k.len()/2` floats):
/// `out[j] = k · qs[j]`. The key row is converted once for all of them.
pub fn dot_f16_group(k: &[u8], qs: &[f32], out: &mut [f32]) {
    let hd = k.len() / 2;
    assert!(out.len() <= MAX_GROUP && qs.len() >= out.len() * hd);
    #[cfg(target_arch = "x86_64")]
    if has_f16c() && hd.is_multiple_of(8) {
        // SAFETY: F16C, FMA and AVX2 are present; sizes checked above.
        unsafe { dot_f16_group_f16c(k, qs, out) };
        return;
    }
    for (j, o) in out.iter_mut().enumerate() {
        *o = dot_f16_scalar(k, &qs[j * hd..(j + 1) * hd]);
    }
}

/// # Safety
/// AVX2, FMA and F16C are present; `hd = k.len()/2` is a multiple of 8;
/// `qs` holds `out.len() * hd` floats; `out.len() <= MAX_GROUP`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_group_f16c(k: &[u8], qs: &[f32], out: &mut [f32]) {
    // SAFETY (all arms): forwarded contract; the group size is out.len().
    unsafe {
        match out.len() {
            1 => dot_f16_group_n::<1>(k, qs, out),
            2 => dot_f16_group_n::<2>(k, qs, out),
            3 => dot_f16_group_n::<3>(k, qs, out),
            4 => dot_f16_group_n::<4>(k, qs, out),
            5 => dot_f16_group_n::<5>(k, qs, out),
            6 => dot_f16_group_n::<6>(k, qs, out),
            7 => dot_f16_group_n::<7>(k, qs, out),
            _ => dot_f16_group_n::<8>(k, qs, out),
        }
    }
}

/// The grouped score kernel for a group of exactly `G` heads (the
/// accumulators then live in registers).
///
/// # Safety
/// As [`dot_f16_group_f16c`], with `out.len() == G`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_group_n<const G: usize>(k: &[u8], qs: &[f32], out: &mut [f32]) {
    use core::arch::x86_64::*;
    let hd = k.len() / 2;
    let mut acc = [_mm256_setzero_ps(); G];
    for c in (0..hd).step_by(8) {
        // SAFETY: c + 8 <= hd; every q row has hd floats.
        unsafe {
            let kv = _mm256_cvtph_ps(_mm_loadu_si128(k.as_ptr().add(2 * c) as *const __m128i));
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(kv, _mm256_loadu_ps(qs.as_ptr().add(j * hd + c)), *a);
            }
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        *o = _mm_cvtss_f32(s);
    }
}

/// Attention output for a group of `g` heads sharing one V: for every head
/// `j` and dimension `d`, `outs[j*hd + d] = Σ_{s<n} a[j*a_stride + s] * v_s[d]`
/// where row `s` of V is `hd` f16 values at byte `s * row_stride` of `v`.
/// Sums run over positions in order, in registers.
#[allow(clippy::too_many_arguments)]
pub fn attn_weighted_sum(
    a: &[f32],
    a_stride: usize,
    g: usize,
    v: &[u8],
    row_stride: usize,
    n: usize,
    hd: usize,
    outs: &mut [f32],
) {
    assert!((1..=MAX_GROUP).contains(&g) && n >= 1 && outs.len() >= g * hd);
    assert!(a.len() >= (g - 1) * a_stride + n && v.len() >= (n - 1) * row_stride + 2 * hd);
    #[cfg(target_arch = "x86_64")]
    if has_f16c() && hd.is_multiple_of(8) {
        // SAFETY: AVX2, FMA and F16C are present; bounds asserted above.
        unsafe {
            match g {
                1 => weighted_sum_n::<1>(a, a_stride, v, row_stride, n, hd, outs),
                2 => weighted_sum_n::<2>(a, a_stride, v, row_stride, n, hd, outs),
                3 => weighted_sum_n::<3>(a, a_stride, v, row_stride, n, hd, outs),
                4 => weighted_sum_n::<4>(a, a_stride, v, row_stride, n, hd, outs),
                5 => weighted_sum_n::<5>(a, a_stride, v, row_stride, n, hd, outs),
                6 => weighted_sum_n::<6>(a, a_stride, v, row_stride, n, hd, outs),
                7 => weighted_sum_n::<7>(a, a_stride, v, row_stride, n, hd, outs),
                _ => weighted_sum_n::<8>(a, a_stride, v, row_stride, n, hd, outs),
            }
        }
        return;
    }
    outs[..g * hd].fill(0.0);
    for s in 0..n {
        let row = &v[s * row_stride..s * row_stride + 2 * hd];
        for j in 0..g {
            axpy_f16(a[j * a_stride + s], row, &mut outs[j * hd..(j + 1) * hd]);
        }
    }
}

/// # Safety
/// AVX2, FMA and F16C are present; the bounds of [`attn_weighted_sum`]
/// hold with `g == G`; `hd` is a multiple of 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn weighted_sum_n<const G: usize>(
    a: &[f32],
    a_stride: usize,
    v: &[u8],
    row_stride: usize,
    n: usize,
    hd: usize,
    outs: &mut [f32],
) {
    use core::arch::x86_64::*;
    for c in (0..hd).step_by(8) {
        let mut acc = [_mm256_setzero_ps(); G];
        for s in 0..n {
            // SAFETY: row s holds hd f16 values and c + 8 <= hd; a holds
            // G rows of at least n weights at a_stride.
            unsafe {
                let vv = _mm256_cvtph_ps(_mm_loadu_si128(
                    v.as_ptr().add(s * row_stride + 2 * c) as *const __m128i
                ));
                for (j, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm256_fmadd_ps(
                        _mm256_set1_ps(*a.get_unchecked(j * a_stride + s)),
                        vv,
                        *acc,
                    );
                }
            }
        }
        for (j, acc) in acc.iter().enumerate() {
            // SAFETY: outs holds G*hd floats.
            unsafe { _mm256_storeu_ps(outs.as_mut_ptr().add(j * hd + c), *acc) };
        }
    }
}

/// The attention softmax as ggml computes it, then rounded to f16 (as the
/// weights are before they multiply V): `v = f16(exp(v - max) * (1/Σ))`,
/// the sum accumulated in f64.
pub fn softmax_round_f16(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: AVX2, FMA and F16C are present.
        unsafe { softmax_round_f16_avx2(v) };
        return;
    }
    softmax_round_f16_scalar(v);
}

pub fn softmax_round_f16_scalar(v: &mut [f32]) {
    let max = v.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let mut sum = 0f64;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        sum += *x as f64;
    }
    let inv = (1.0 / sum) as f32;
    for x in v.iter_mut() {
        *x = f16::from_f32(*x * inv).to_f32();
    }
}

/// `exp` of 8 lanes (Cephes polynomial, about 1 ulp; inputs clamped to the
/// finite range).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
fn exp256(x: core::arch::x86_64::__m256) -> core::arch::x86_64::__m256 {
    use core::arch::x86_64::*;
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-87.3)),
        _mm256_set1_ps(88.3),
    );
    let fx = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693_359_4), x);
    let x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.121_944_4e-4), x);
    let mut y = _mm256_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(c));
    }
    let y = _mm256_fmadd_ps(
        y,
        _mm256_mul_ps(x, x),
        _mm256_add_ps(x, _mm256_set1_ps(1.0)),
    );
    let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(fx),
        _mm256_set1_epi32(127),
    ));
    _mm256_mul_ps(y, _mm256_castsi256_ps(pow2))
}

/// # Safety
/// AVX2, FMA and F16C are present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn softmax_round_f16_avx2(v: &mut [f32]) {
    use core::arch::x86_64::*;
    let n = v.len();
    let max = v.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let mv = _mm256_set1_ps(max);
    let mut sum = _mm256_setzero_pd();
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n.
        unsafe {
            let p = v.as_mut_ptr().add(i);
            let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(p), mv));
            _mm256_storeu_ps(p, e);
            sum = _mm256_add_pd(sum, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
            sum = _mm256_add_pd(sum, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(e)));
        }
        i += 8;
    }
    let mut lanes = [0f64; 4];
    // SAFETY: 4 doubles of room.
    unsafe { _mm256_storeu_pd(lanes.as_mut_ptr(), sum) };
    let mut total: f64 = lanes.iter().sum();
    for x in &mut v[i..] {
        *x = (*x - max).exp();
        total += *x as f64;
    }
    let inv = (1.0 / total) as f32;
    let iv = _mm256_set1_ps(inv);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n.
        unsafe {
            let p = v.as_mut_ptr().add(i);
            let h = _mm256_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(_mm256_mul_ps(
                _mm256_loadu_ps(p),
                iv,
            ));
            _mm256_storeu_ps(p, _mm256_cvtph_ps(h));
        }
        i += 8;
    }
    for x in &mut v[i..] {
        *x = f16::from_f32(*x * inv).to_f32();
    }
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
    fn f16_dot_kernels_agree() {
        for n in [1usize, 7, 8, 31, 32, 100, 2560] {
            let w: Vec<u8> = (0..n)
                .flat_map(|i| {
                    f16::from_f32((i as f32 * 0.37).sin())
                        .to_bits()
                        .to_le_bytes()
                })
                .collect();
            let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let want: f64 = (0..n)
                .map(|i| {
                    f16::from_bits(u16::from_le_bytes([w[2 * i], w[2 * i + 1]])).to_f64()
                        * x[i] as f64
                })
                .sum();
            assert!((dot_f16(&w, &x) as f64 - want).abs() < 1e-3, "n={n}");
            assert!((dot_f16_scalar(&w, &x) as f64 - want).abs() < 1e-3, "n={n}");
        }
    }

    #[test]
    fn grouped_score_kernel_agrees_with_single_dots() {
        for (hd, g) in [(128usize, 4usize), (64, 1), (40, 3), (128, 8)] {
            let k: Vec<u8> = (0..hd)
                .flat_map(|i| {
                    f16::from_f32((i as f32 * 0.3).cos())
                        .to_bits()
                        .to_le_bytes()
                })
                .collect();
            let qs: Vec<f32> = (0..g * hd).map(|i| (i as f32 * 0.07).sin()).collect();
            let mut out = vec![0f32; g];
            dot_f16_group(&k, &qs, &mut out);
            for j in 0..g {
                assert!((out[j] - dot_f16_scalar(&k, &qs[j * hd..(j + 1) * hd])).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn weighted_sum_matches_per_position_axpy() {
        for (g, hd, n) in [
            (4usize, 128usize, 37usize),
            (1, 64, 1),
            (2, 40, 5),
            (8, 128, 300),
        ] {
            let stride = 2 * hd + 6; // rows padded, as in a multi-head cache
            let v: Vec<u8> = (0..n * stride).map(|i| ((i * 37) % 61) as u8).collect();
            let v: Vec<u8> = v
                .chunks(2)
                .flat_map(|c| {
                    f16::from_f32((c[0] as f32 - 30.0) / 17.0)
                        .to_bits()
                        .to_le_bytes()
                })
                .collect();
            let a: Vec<f32> = (0..g * (n + 3))
                .map(|i| ((i * 13) % 29) as f32 / 29.0)
                .collect();
            let mut got = vec![f32::NAN; g * hd];
            attn_weighted_sum(&a, n + 3, g, &v, stride, n, hd, &mut got);
            let mut want = vec![0f32; g * hd];
            for s in 0..n {
                for j in 0..g {
                    axpy_f16(
                        a[j * (n + 3) + s],
                        &v[s * stride..s * stride + 2 * hd],
                        &mut want[j * hd..(j + 1) * hd],
                    );
                }
            }
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(x, y)| (x - y).abs() <= 1e-5 * (1.0 + y.abs())),
                "g={g} hd={hd} n={n}"
            );
        }
    }

    #[test]
    fn vector_softmax_matches_scalar() {
        for n in [1usize, 5, 8, 100, 2049] {
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 13.0)
                .collect();
            let (mut a, mut b) = (x.clone(), x.clone());
            softmax_round_f16(&mut a);
            softmax_round_f16_scalar(&mut b);
            for (p, q) in a.iter().zip(&b) {
                // Equal up to one f16 step of rounding (exp differs by about an ulp).
                assert!(
                    (p - q).abs() <= q.abs() / 1024.0 + 1e-7,
                    "n={n}: {p} vs {q}"
                );
            }
            assert!((a.iter().map(|&v| v as f64).sum::<f64>() - 1.0).abs() < 2e-3);
        }
    }

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
            assert_eq!(dot_i8(&a, &b), want, "n={n}");
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
        m.matvec(&x, &mut exact, &pool);
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
