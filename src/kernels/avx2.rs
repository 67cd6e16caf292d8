//! AVX2 kernels: unpack 2-bit codes with shift+mask, multiply with
//! `vpmaddubsw` (codes unsigned, activations signed), sum pairs in int16 and
//! widen to int32 with `vpmaddwd` often enough that nothing wraps.
//!
//! Overflow bound: one `vpmaddubsw` lane is `c0*q0 + c1*q1` with codes 0..=3
//! and q in [-128, 127], so |lane| <= 768. An int16 accumulator that takes
//! two such lanes per block is flushed every 16 blocks (16*2*768 = 24576),
//! one that takes four per block every 10 blocks (10*4*768 = 30720). Even code 3, which valid
//! files never hold, cannot wrap.

use core::arch::x86_64::*;

use half::f16;

use crate::quant::q6k::BlockQ6K;

/// Blocks between flushes of an int16 accumulator fed 2 products per block.
const FLUSH2: usize = 16;
/// Blocks between flushes of an int16 accumulator fed 4 products per block.
const FLUSH4: usize = 10;

/// Sum of the eight int32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn hsum_i32(v: __m256i) -> i32 {
    let lo = _mm256_castsi256_si128(v);
    let hi = _mm256_extracti128_si256::<1>(v);
    let s = _mm_add_epi32(lo, hi);
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// The four 32-code vectors of one block: elements 0..32, 32..64, 64..96, 96..128.
#[inline]
#[target_feature(enable = "avx2")]
fn unpack(x: __m256i, mask: __m256i) -> [__m256i; 4] {
    [
        _mm256_and_si256(_mm256_srli_epi16::<6>(x), mask),
        _mm256_and_si256(_mm256_srli_epi16::<4>(x), mask),
        _mm256_and_si256(_mm256_srli_epi16::<2>(x), mask),
        _mm256_and_si256(x, mask),
    ]
}

/// # Safety
/// The CPU supports AVX2; `w + i*stride` is readable for 32 bytes and `y` for
/// `nb * 128` bytes, for every block `i < nb`.
#[target_feature(enable = "avx2")]
pub unsafe fn dot(w: *const u8, stride: usize, y: *const i8, nb: usize) -> i32 {
    let mask = _mm256_set1_epi8(3);
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_si256();
    let mut b = 0;
    while b < nb {
        let end = (b + FLUSH2).min(nb);
        let mut a0 = _mm256_setzero_si256();
        let mut a1 = _mm256_setzero_si256();
        while b < end {
            // SAFETY: in bounds by the function's contract.
            let (x, yb) = unsafe {
                (
                    _mm256_loadu_si256(w.add(b * stride) as *const __m256i),
                    y.add(b * 128),
                )
            };
            let c = unpack(x, mask);
            // SAFETY: 128 activations of block b are readable.
            let yv = unsafe { load4(yb) };
            let p0 = _mm256_maddubs_epi16(c[0], yv[0]);
            let p1 = _mm256_maddubs_epi16(c[1], yv[1]);
            let p2 = _mm256_maddubs_epi16(c[2], yv[2]);
            let p3 = _mm256_maddubs_epi16(c[3], yv[3]);
            a0 = _mm256_add_epi16(a0, _mm256_add_epi16(p0, p1));
            a1 = _mm256_add_epi16(a1, _mm256_add_epi16(p2, p3));
            b += 1;
        }
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(a0, ones));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(a1, ones));
    }
    hsum_i32(acc)
}

/// # Safety
/// `p` is readable for 128 bytes.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn load4(p: *const i8) -> [__m256i; 4] {
    // SAFETY: by the function's contract.
    unsafe {
        [
            _mm256_loadu_si256(p as *const __m256i),
            _mm256_loadu_si256(p.add(32) as *const __m256i),
            _mm256_loadu_si256(p.add(64) as *const __m256i),
            _mm256_loadu_si256(p.add(96) as *const __m256i),
        ]
    }
}

/// Four weight rows (block `i` of row `r` at `w[r] + i*stride`) against one
/// activation row: the activation vectors are loaded once per block.
///
/// # Safety
/// As [`dot`], for each of the four rows.
#[target_feature(enable = "avx2")]
pub unsafe fn dot_4rows(w: [*const u8; 4], stride: usize, y: *const i8, nb: usize) -> [i32; 4] {
    let mask = _mm256_set1_epi8(3);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_si256(); 4];
    let mut b = 0;
    while b < nb {
        let end = (b + FLUSH4).min(nb);
        let mut a = [_mm256_setzero_si256(); 4];
        while b < end {
            // SAFETY: block b of the activations is readable.
            let yv = unsafe { load4(y.add(b * 128)) };
            for r in 0..4 {
                // SAFETY: block b of row r is readable.
                let x = unsafe { _mm256_loadu_si256(w[r].add(b * stride) as *const __m256i) };
                let c = unpack(x, mask);
                let p01 = _mm256_add_epi16(
                    _mm256_maddubs_epi16(c[0], yv[0]),
                    _mm256_maddubs_epi16(c[1], yv[1]),
                );
                let p23 = _mm256_add_epi16(
                    _mm256_maddubs_epi16(c[2], yv[2]),
                    _mm256_maddubs_epi16(c[3], yv[3]),
                );
                a[r] = _mm256_add_epi16(a[r], _mm256_add_epi16(p01, p23));
            }
            b += 1;
        }
        for r in 0..4 {
            acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(a[r], ones));
        }
    }
    [
        hsum_i32(acc[0]),
        hsum_i32(acc[1]),
        hsum_i32(acc[2]),
        hsum_i32(acc[3]),
    ]
}

/// One weight row against four activation rows: each block is unpacked once
/// and used four times.
///
/// # Safety
/// As [`dot`], for the row and each of the four activation rows.
#[target_feature(enable = "avx2")]
pub unsafe fn dot_4acts(w: *const u8, stride: usize, y: [*const i8; 4], nb: usize) -> [i32; 4] {
    let mask = _mm256_set1_epi8(3);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_si256(); 4];
    let mut b = 0;
    while b < nb {
        let end = (b + FLUSH4).min(nb);
        let mut a = [_mm256_setzero_si256(); 4];
        while b < end {
            // SAFETY: block b of the row is readable.
            let x = unsafe { _mm256_loadu_si256(w.add(b * stride) as *const __m256i) };
            let c = unpack(x, mask);
            for j in 0..4 {
                // SAFETY: block b of activation row j is readable.
                let yv = unsafe { load4(y[j].add(b * 128)) };
                let p01 = _mm256_add_epi16(
                    _mm256_maddubs_epi16(c[0], yv[0]),
                    _mm256_maddubs_epi16(c[1], yv[1]),
                );
                let p23 = _mm256_add_epi16(
                    _mm256_maddubs_epi16(c[2], yv[2]),
                    _mm256_maddubs_epi16(c[3], yv[3]),
                );
                a[j] = _mm256_add_epi16(a[j], _mm256_add_epi16(p01, p23));
            }
            b += 1;
        }
        for j in 0..4 {
            acc[j] = _mm256_add_epi32(acc[j], _mm256_madd_epi16(a[j], ones));
        }
    }
    hsum4_i32(acc)
}

/// Two weight rows against four activation rows: each activation vector
/// loaded serves both rows (half the loads of two [`dot_4acts`]), the
/// prompt GEMM's register tile on AVX2. Returns `out[j][r]`.
///
/// # Safety
/// As [`dot`], for both rows and each of the four activation rows.
#[target_feature(enable = "avx2")]
pub unsafe fn tile_2x4(
    w: [*const u8; 2],
    stride: usize,
    y: [*const i8; 4],
    nb: usize,
) -> [[i32; 2]; 4] {
    let mask = _mm256_set1_epi8(3);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_si256(); 2]; 4];
    let mut b = 0;
    while b < nb {
        let end = (b + FLUSH4).min(nb);
        let mut a = [[_mm256_setzero_si256(); 2]; 4];
        while b < end {
            // SAFETY: block b of both rows is readable.
            let x = unsafe {
                [
                    _mm256_loadu_si256(w[0].add(b * stride) as *const __m256i),
                    _mm256_loadu_si256(w[1].add(b * stride) as *const __m256i),
                ]
            };
            for s in 0..4 {
                let shift = _mm_cvtsi32_si128(6 - 2 * s as i32);
                let c = x.map(|x| _mm256_and_si256(_mm256_srl_epi16(x, shift), mask));
                for (j, a) in a.iter_mut().enumerate() {
                    // SAFETY: block b of activation row j is readable.
                    let v =
                        unsafe { _mm256_loadu_si256(y[j].add(b * 128 + 32 * s) as *const __m256i) };
                    a[0] = _mm256_add_epi16(a[0], _mm256_maddubs_epi16(c[0], v));
                    a[1] = _mm256_add_epi16(a[1], _mm256_maddubs_epi16(c[1], v));
                }
            }
            b += 1;
        }
        for (acc, a) in acc.iter_mut().zip(&a) {
            for r in 0..2 {
                acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(a[r], ones));
            }
        }
    }
    acc.map(|a| [hsum_i32(a[0]), hsum_i32(a[1])])
}

/// The lane sums of four vectors at once (two rounds of horizontal adds,
/// then the halves).
#[inline]
#[target_feature(enable = "avx2")]
fn hsum4_i32(v: [__m256i; 4]) -> [i32; 4] {
    let h = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    let s = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
    let mut out = [0i32; 4];
    // SAFETY: four i32 of room.
    unsafe { _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, s) };
    out
}

/// [`super::scalar::act_max`].
///
/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn act_max(x: &[f32]) -> f64 {
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    let mut m = [_mm256_setzero_ps(); 4];
    let chunks = x.chunks_exact(32);
    let tail = chunks.remainder();
    for c in chunks {
        for (i, mi) in m.iter_mut().enumerate() {
            // SAFETY: `c` holds 32 floats.
            let v = unsafe { _mm256_loadu_ps(c.as_ptr().add(8 * i)) };
            // maxps returns its second operand when the first is NaN.
            *mi = _mm256_max_ps(_mm256_and_ps(v, abs), *mi);
        }
    }
    let v = _mm256_max_ps(_mm256_max_ps(m[0], m[1]), _mm256_max_ps(m[2], m[3]));
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` holds 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
    let vmax = lanes.iter().fold(0f32, |a, &b| a.max(b)) as f64;
    vmax.max(super::scalar::act_max(tail))
}

/// [`super::scalar::act_round`].
///
/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn act_round(x: &[f32], scale: f32, q: &mut [i8]) -> i32 {
    let n = x.len().min(q.len());
    let sv = _mm256_set1_ps(scale);
    let lo = _mm256_set1_epi32(-128);
    let hi = _mm256_set1_epi32(127);
    let fix = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let mut sum = _mm256_setzero_si256();
    let mut i = 0;
    while i + 32 <= n {
        let mut v = [_mm256_setzero_si256(); 4];
        for (k, vk) in v.iter_mut().enumerate() {
            // SAFETY: i + 32 <= n.
            let f = _mm256_mul_ps(unsafe { _mm256_loadu_ps(x.as_ptr().add(i + 8 * k)) }, sv);
            let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(f);
            // NaN converts to i32::MIN; the scalar rule makes it 0.
            let ord = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_ORD_Q>(r, r));
            let c = _mm256_and_si256(_mm256_cvtps_epi32(r), ord);
            let c = _mm256_min_epi32(_mm256_max_epi32(c, lo), hi);
            sum = _mm256_add_epi32(sum, c);
            *vk = c;
        }
        let p16a = _mm256_packs_epi32(v[0], v[1]);
        let p16b = _mm256_packs_epi32(v[2], v[3]);
        let p8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p16a, p16b), fix);
        // SAFETY: i + 32 <= n.
        unsafe { _mm256_storeu_si256(q.as_mut_ptr().add(i) as *mut __m256i, p8) };
        i += 32;
    }
    hsum_i32(sum) + super::scalar::act_round(&x[i..n], scale, &mut q[i..n])
}

// ---------------------------------------------------------------------------
// Float kernels (AVX2 + FMA + F16C): the f16 LM head and attention, the
// attention softmax, and the int8 dot of the 8-bit head. Scalar twins in
// `scalar.rs`; the argument checks are in the dispatcher (`mod.rs`).
// ---------------------------------------------------------------------------

/// # Safety
/// The CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f16(row: &[u8], x: &[f32]) -> f32 {
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

/// [`dot_f16`] of one row with two vectors, the row converted once per
/// 32 values for both: each result is bit for bit what `dot_f16` gives
/// (the same four accumulators, order and final sum), so a batched LM head
/// computes every column exactly as a lone one.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f16_pair(row: &[u8], x0: &[f32], x1: &[f32]) -> (f32, f32) {
    let n = x0.len().min(x1.len()).min(row.len() / 2);
    let mut a = [_mm256_setzero_ps(); 4];
    let mut b = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for j in 0..4 {
            // SAFETY: i + 8*j + 8 <= n elements are in bounds of all three.
            unsafe {
                let w = _mm256_cvtph_ps(_mm_loadu_si128(
                    row.as_ptr().add(2 * (i + 8 * j)) as *const __m128i
                ));
                a[j] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x0.as_ptr().add(i + 8 * j)), a[j]);
                b[j] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x1.as_ptr().add(i + 8 * j)), b[j]);
            }
        }
        i += 32;
    }
    while i + 8 <= n {
        // SAFETY: as above.
        unsafe {
            let w = _mm256_cvtph_ps(_mm_loadu_si128(row.as_ptr().add(2 * i) as *const __m128i));
            a[0] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x0.as_ptr().add(i)), a[0]);
            b[0] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x1.as_ptr().add(i)), b[0]);
        }
        i += 8;
    }
    let finish = |acc: [__m256; 4], x: &[f32]| {
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut lanes = [0f32; 8];
        // SAFETY: 8 floats of room.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), s) };
        let mut total: f32 = lanes.iter().sum();
        for k in i..n {
            total +=
                f16::from_bits(u16::from_le_bytes([row[2 * k], row[2 * k + 1]])).to_f32() * x[k];
        }
        total
    };
    (finish(a, x0), finish(b, x1))
}

/// # Safety
/// The CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn axpy_f16(a: f32, v: &[u8], out: &mut [f32]) {
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

/// [`super::scalar::dot_q8_0`]: per block the exact int32 products in 8
/// lanes, converted and accumulated with the block's scale product by FMA
/// (the order of ggml's AVX2 `vec_dot_q8_0_q8_0`).
///
/// # Safety
/// AVX2 and FMA are present.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_q8_0(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
    use crate::quant::{q8_0::BlockQ8_0, Block};
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    let blocks = BlockQ8_0::blocks(row).zip(xq.chunks_exact(32)).zip(xd);
    for (b, ((blk, _), &xd)) in blocks.enumerate() {
        let dw = blk.d.get();
        // SAFETY: the block holds 32 values and xq 32 from b*32.
        let (w, x) = unsafe {
            (
                _mm256_loadu_si256(blk.qs.as_ptr() as *const __m256i),
                _mm256_loadu_si256(xq.as_ptr().add(b * 32) as *const __m256i),
            )
        };
        // |w| * sign(x, w): exact in int16 pairs (|w| <= 128, |x| <= 127).
        let p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
        let q = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dw * xd), q, acc);
    }
    hsum_f32_ggml(acc)
}

/// Sum of the eight f32 lanes in ggml's `hsum_float_8` order.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn hsum_f32_ggml(acc: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// The 8 int32 lanes of one Q6_K block's integer sum against Q8_K values, as
/// ggml's AVX2 `vec_dot_q6_K_q8_K` forms them: lane `k` holds
/// `Σ sc·(q6 - 32)·q8` over bytes `4k..4k+4` of each 32-value chunk.
///
/// # Safety
/// AVX2 is present; `x` holds 256 values.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn q6k_block_lanes(b: &BlockQ6K, x: &[i8]) -> __m256i {
    debug_assert!(x.len() >= 256);
    let m4 = _mm256_set1_epi8(0xF);
    let m2 = _mm256_set1_epi8(3);
    let m32 = _mm256_set1_epi8(32);
    // SAFETY: the 16 scales.
    let scales = unsafe { _mm_loadu_si128(b.scales.as_ptr() as *const __m128i) };
    let mut sumi = _mm256_setzero_si256();
    for half in 0..2 {
        // SAFETY: ql holds 128 bytes, qh 64; x has 256 values.
        let (ql0, ql1, qh, x) = unsafe {
            let ql = b.ql.as_ptr().add(64 * half);
            (
                _mm256_loadu_si256(ql as *const __m256i),
                _mm256_loadu_si256(ql.add(32) as *const __m256i),
                _mm256_loadu_si256(b.qh.as_ptr().add(32 * half) as *const __m256i),
                x.as_ptr().add(128 * half),
            )
        };
        let q = [
            _mm256_or_si256(
                _mm256_and_si256(ql0, m4),
                _mm256_slli_epi16::<4>(_mm256_and_si256(qh, m2)),
            ),
            _mm256_or_si256(
                _mm256_and_si256(ql1, m4),
                _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<2>(qh), m2)),
            ),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<4>(qh), m2)),
            ),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<6>(qh), m2)),
            ),
        ];
        for (c, q) in q.into_iter().enumerate() {
            // SAFETY: chunk c of this half is 32 values inside x's 256.
            let xv = unsafe { _mm256_loadu_si256(x.add(32 * c) as *const __m256i) };
            // (q6 - 32)·q8 in int16 pairs: |q6·q8 pair| <= 2·63·128.
            let p = _mm256_sub_epi16(_mm256_maddubs_epi16(q, xv), _mm256_maddubs_epi16(m32, xv));
            // Scales 2c and 2c+1 of this half, eight int16 lanes each.
            let s = 2 * (4 * half + c) as u8;
            let sh = _mm_set_epi64x(i64::from_le_bytes([s + 1; 8]), i64::from_le_bytes([s; 8]));
            let sc = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, sh));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(sc, p));
        }
    }
    sumi
}

/// [`super::scalar::dot_q6k_q8k`] in ggml's AVX2 order: per block the exact
/// int32 lanes of [`q6k_block_lanes`], converted and accumulated with the
/// block's scale product by FMA, summed as `hsum_float_8`.
///
/// # Safety
/// AVX2 and FMA are present.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_q6k_q8k(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (b, x, d) in super::scalar::q6k_blocks(row, xq, xd) {
        // SAFETY: a whole block and 256 values.
        let sumi = unsafe { q6k_block_lanes(b, x) };
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_f32_ggml(acc)
}

/// [`super::scalar::q6k_group_scales`] with one group per lane, eight
/// groups at a time: each lane runs the scalar's operations in the scalar's
/// order (the sums stay sequential within a group), so every scale and
/// level is bit-identical.
///
/// # Safety
/// AVX2 and FMA are present.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn q6k_group_scales(
    x: &[f32; 256],
    scales: &mut [f32; 16],
    levels: &mut [[u8; 16]; 16],
) {
    let sign = _mm256_set1_ps(-0.0);
    let (lo, hi) = (_mm256_set1_epi32(-32), _mm256_set1_epi32(31));
    // Element i of the eight groups g0..g0+8, lane j holding group g0 + j.
    let column = |g0: usize, i: usize| {
        _mm256_setr_ps(
            x[16 * g0 + i],
            x[16 * (g0 + 1) + i],
            x[16 * (g0 + 2) + i],
            x[16 * (g0 + 3) + i],
            x[16 * (g0 + 4) + i],
            x[16 * (g0 + 5) + i],
            x[16 * (g0 + 6) + i],
            x[16 * (g0 + 7) + i],
        )
    };
    // clamp(nearest_int(iscale * v), -32, 31), round half to even (MXCSR).
    let level = |iscale: __m256, v: __m256| {
        _mm256_min_epi32(
            _mm256_max_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(iscale, v)), lo),
            hi,
        )
    };
    for g0 in [0, 8] {
        let xs: [__m256; 16] = core::array::from_fn(|i| column(g0, i));
        let (mut amax, mut max) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for &v in &xs {
            let a = _mm256_andnot_ps(sign, v);
            let gt = _mm256_cmp_ps::<_CMP_GT_OQ>(a, amax);
            amax = _mm256_blendv_ps(amax, a, gt);
            max = _mm256_blendv_ps(max, v, gt);
        }
        let sums = |iscale: __m256| {
            let (mut sumlx, mut suml2) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for &v in &xs {
                let l = _mm256_cvtepi32_ps(level(iscale, v));
                let w = _mm256_mul_ps(v, v);
                sumlx = _mm256_fmadd_ps(_mm256_mul_ps(w, v), l, sumlx);
                suml2 = _mm256_fmadd_ps(_mm256_mul_ps(w, l), l, suml2);
            }
            (sumlx, suml2)
        };
        let zero = _mm256_setzero_ps();
        let mut best_iscale = _mm256_div_ps(_mm256_set1_ps(-32.0), max);
        let (sumlx, suml2) = sums(best_iscale);
        let nonzero = _mm256_cmp_ps::<_CMP_NEQ_UQ>(suml2, zero);
        let mut scale = _mm256_and_ps(_mm256_div_ps(sumlx, suml2), nonzero);
        let mut best = _mm256_mul_ps(scale, sumlx);
        for is in (-9..=9).filter(|&is| is != 0) {
            let c = _mm256_fmadd_ps(
                _mm256_set1_ps(0.1),
                _mm256_set1_ps(is as f32),
                _mm256_set1_ps(32.0),
            );
            let iscale = _mm256_div_ps(_mm256_xor_ps(c, sign), max);
            let (sumlx, suml2) = sums(iscale);
            let better = _mm256_and_ps(
                _mm256_cmp_ps::<_CMP_GT_OQ>(suml2, zero),
                _mm256_cmp_ps::<_CMP_GT_OQ>(
                    _mm256_mul_ps(sumlx, sumlx),
                    _mm256_mul_ps(best, suml2),
                ),
            );
            best_iscale = _mm256_blendv_ps(best_iscale, iscale, better);
            let s = _mm256_div_ps(sumlx, suml2);
            scale = _mm256_blendv_ps(scale, s, better);
            best = _mm256_blendv_ps(best, _mm256_mul_ps(s, sumlx), better);
        }
        // Groups below ggml's GROUP_MAX_EPS: scale 0, levels 0.
        let live = _mm256_cmp_ps::<_CMP_GE_OQ>(amax, _mm256_set1_ps(1e-15));
        let mut sc = [0f32; 8];
        // SAFETY: 8 floats.
        unsafe { _mm256_storeu_ps(sc.as_mut_ptr(), _mm256_and_ps(scale, live)) };
        scales[g0..g0 + 8].copy_from_slice(&sc);
        let live = _mm256_castps_si256(live);
        for (i, &v) in xs.iter().enumerate() {
            let l = _mm256_and_si256(
                _mm256_add_epi32(level(best_iscale, v), _mm256_set1_epi32(32)),
                live,
            );
            let mut out = [0i32; 8];
            // SAFETY: 8 int32.
            unsafe { _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, l) };
            for (j, &o) in out.iter().enumerate() {
                levels[g0 + j][i] = o as u8;
            }
        }
    }
}

/// # Safety
/// AVX2 is present.
#[target_feature(enable = "avx2")]
pub unsafe fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
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

/// # Safety
/// AVX2, FMA and F16C are present; `hd = k.len()/2` is a multiple of 8;
/// `qs` holds `out.len() * hd` floats; `out.len() <= MAX_GROUP`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f16_group(k: &[u8], qs: &[f32], out: &mut [f32]) {
    // SAFETY (all arms): forwarded contract; the group size is out.len().
    unsafe { super::by_group!(out.len(), dot_f16_group_n(k, qs, out)) }
}

/// The grouped score kernel for a group of exactly `G` heads (the
/// accumulators then live in registers).
///
/// # Safety
/// As [`dot_f16_group`], with `out.len() == G`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_group_n<const G: usize>(k: &[u8], qs: &[f32], out: &mut [f32]) {
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

/// # Safety
/// AVX2, FMA and F16C are present; the bounds of [`super::weighted_sum`]
/// hold with `g == G`; `hd` is a multiple of 8.
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
    // Positions in tiles of TILE rows (TILE * 2 * hd bytes of V stay in L1
    // while every dimension block passes over them); within a tile, two
    // blocks of eight dimensions at a time: 2G independent sums, so the FMA
    // latency is hidden and each weight broadcast feeds two FMAs. The sums
    // carry over between tiles through `outs`, so every output still adds
    // its positions in order.
    const TILE: usize = 32;
    outs[..G * hd].fill(0.0);
    let mut s0 = 0;
    while s0 < n {
        let s1 = (s0 + TILE).min(n);
        let mut c = 0;
        while c < hd {
            let two = c + 16 <= hd;
            let mut acc = [[_mm256_setzero_ps(); 2]; G];
            for (j, acc) in acc.iter_mut().enumerate() {
                // SAFETY: outs holds G*hd floats; c + 8 (c + 16) <= hd.
                unsafe {
                    let o = outs.as_ptr().add(j * hd + c);
                    acc[0] = _mm256_loadu_ps(o);
                    if two {
                        acc[1] = _mm256_loadu_ps(o.add(8));
                    }
                }
            }
            for s in s0..s1 {
                if c == 0 {
                    // The next tile, line by line in address order: the
                    // passes below read each row's lines far apart in time,
                    // which the hardware prefetchers do not follow.
                    let ahead = v.as_ptr().wrapping_add((s + TILE) * row_stride);
                    for l in (0..2 * hd).step_by(64) {
                        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(l) as *const i8);
                    }
                }
                // SAFETY: row s holds hd f16 values and c + 8 (c + 16 when
                // `two`) <= hd; a holds G rows of at least n weights at a_stride.
                unsafe {
                    let p = v.as_ptr().add(s * row_stride + 2 * c);
                    let v0 = _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
                    let v1 = if two {
                        _mm256_cvtph_ps(_mm_loadu_si128(p.add(16) as *const __m128i))
                    } else {
                        _mm256_setzero_ps()
                    };
                    for (j, acc) in acc.iter_mut().enumerate() {
                        let w = _mm256_set1_ps(*a.get_unchecked(j * a_stride + s));
                        acc[0] = _mm256_fmadd_ps(w, v0, acc[0]);
                        if two {
                            acc[1] = _mm256_fmadd_ps(w, v1, acc[1]);
                        }
                    }
                }
            }
            for (j, acc) in acc.iter().enumerate() {
                // SAFETY: outs holds G*hd floats.
                unsafe {
                    let o = outs.as_mut_ptr().add(j * hd + c);
                    _mm256_storeu_ps(o, acc[0]);
                    if two {
                        _mm256_storeu_ps(o.add(8), acc[1]);
                    }
                }
            }
            c += if two { 16 } else { 8 };
        }
        s0 = s1;
    }
}

/// `exp` of 8 lanes (Cephes polynomial, about 1 ulp; inputs clamped to the
/// finite range).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn exp256(x: __m256) -> __m256 {
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
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn softmax_round_f16(v: &mut [f32]) {
    let max = v.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    // SAFETY: forwarded contract.
    let inv = (1.0 / unsafe { softmax_exp(v, max) }) as f32;
    // SAFETY: forwarded contract.
    unsafe { scale_round_f16(v, inv) }
}

/// [`super::scalar::softmax_exp`].
///
/// # Safety
/// AVX2, FMA and F16C are present.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn softmax_exp(v: &mut [f32], max: f32) -> f64 {
    let n = v.len();
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
    total
}

/// [`super::scalar::scale_round_f16`].
///
/// # Safety
/// AVX2, FMA and F16C are present.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn scale_round_f16(v: &mut [f32], inv: f32) {
    let n = v.len();
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

/// [`super::scalar::weighted_sum`] for `g` in 1..=8.
///
/// # Safety
/// AVX2, FMA and F16C are present; the bounds of [`super::weighted_sum`]
/// hold; `hd` is a multiple of 8.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn weighted_sum(
    a: &[f32],
    a_stride: usize,
    g: usize,
    v: &[u8],
    row_stride: usize,
    n: usize,
    hd: usize,
    outs: &mut [f32],
) {
    // SAFETY (all arms): forwarded contract.
    unsafe { super::by_group!(g, weighted_sum_n(a, a_stride, v, row_stride, n, hd, outs)) }
}

/// [`super::scalar::attn_scores`] for `g` in 1..=8.
///
/// # Safety
/// AVX2, FMA and F16C are present; the bounds of [`super::attn_scores`]
/// hold; `hd` is a multiple of 8.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn attn_scores(
    k: &[u8],
    row_stride: usize,
    n: usize,
    qs: &[f32],
    g: usize,
    hd: usize,
    scale: f32,
    out: &mut [f32],
    out_stride: usize,
) {
    // SAFETY (all arms): forwarded contract.
    unsafe {
        super::by_group!(
            g,
            scores_n(k, row_stride, n, qs, hd, scale, out, out_stride)
        )
    }
}

/// # Safety
/// As [`attn_scores`] with `g == G`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores_n<const G: usize>(
    k: &[u8],
    row_stride: usize,
    n: usize,
    qs: &[f32],
    hd: usize,
    scale: f32,
    out: &mut [f32],
    out_stride: usize,
) {
    for s in 0..n {
        // Two sums per head (even and odd blocks of eight) keep 2G FMA
        // chains in flight.
        let mut acc0 = [_mm256_setzero_ps(); G];
        let mut acc1 = [_mm256_setzero_ps(); G];
        let row = k.as_ptr().wrapping_add(s * row_stride);
        let mut c = 0;
        while c + 16 <= hd {
            // SAFETY: row s holds hd f16 values, c + 16 <= hd, and every
            // query row holds hd floats.
            unsafe {
                let k0 = _mm256_cvtph_ps(_mm_loadu_si128(row.add(2 * c) as *const __m128i));
                let k1 = _mm256_cvtph_ps(_mm_loadu_si128(row.add(2 * c + 16) as *const __m128i));
                for j in 0..G {
                    let q = qs.as_ptr().add(j * hd + c);
                    acc0[j] = _mm256_fmadd_ps(k0, _mm256_loadu_ps(q), acc0[j]);
                    acc1[j] = _mm256_fmadd_ps(k1, _mm256_loadu_ps(q.add(8)), acc1[j]);
                }
            }
            c += 16;
        }
        if c < hd {
            // SAFETY: as above, c + 8 == hd.
            unsafe {
                let k0 = _mm256_cvtph_ps(_mm_loadu_si128(row.add(2 * c) as *const __m128i));
                for (j, a) in acc0.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(k0, _mm256_loadu_ps(qs.as_ptr().add(j * hd + c)), *a);
                }
            }
        }
        let acc: [[__m256; 2]; G] = std::array::from_fn(|j| [acc0[j], acc1[j]]);
        for (j, a) in acc.iter().enumerate() {
            let a = _mm256_add_ps(a[0], a[1]);
            let t = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
            let t = _mm_add_ps(t, _mm_movehl_ps(t, t));
            let t = _mm_add_ss(t, _mm_movehdup_ps(t));
            // SAFETY: out holds G rows of n scores at out_stride.
            unsafe { *out.get_unchecked_mut(j * out_stride + s) = _mm_cvtss_f32(t) * scale };
        }
    }
}

/// 32 sign bits as 32 byte masks (byte `i` all ones when bit `i` is set).
#[inline]
#[target_feature(enable = "avx2")]
fn sign_bytes(bits: u32) -> __m256i {
    let v = _mm256_set1_epi32(bits as i32);
    let spread = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3,
        3, 3,
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(v, spread), bit), bit)
}

/// One TL3 tile ([`crate::quant::tl3`]) against `N` (at most 4) activation
/// rows, the super-blocks only (the caller adds the tail blocks). Each row's
/// 32 index bytes give 64 nibbles; `pshufb` looks the codes of each weight
/// position up in the positive and the negated 16-entry table and the sign
/// bits choose between them; `vpmaddubsw` multiplies as the I2_S kernels do
/// (int16 sums of one super-block, at most 6 · 508, then int32). Returns
/// `out[j][r]`.
///
/// # Safety
/// The CPU supports AVX2; `tile` is readable for `supers * 320` bytes and
/// each `y[j]` for `supers * 384`.
#[target_feature(enable = "avx2")]
pub unsafe fn tl3_tile<const N: usize>(
    tile: *const u8,
    supers: usize,
    y: [*const i8; N],
) -> [[i32; 4]; N] {
    use crate::quant::tl3::{SIGNS_AT, SUPER, SUPER_TILE_BYTES, TABLES};
    assert!(N <= 4, "at most four activation rows");
    // SAFETY: each table is 32 bytes: the positive half, then the negated.
    let t: [[__m256i; 2]; 3] = TABLES.map(|tb| unsafe {
        [
            _mm256_broadcastsi128_si256(_mm_loadu_si128(tb.as_ptr() as *const __m128i)),
            _mm256_broadcastsi128_si256(_mm_loadu_si128(tb.as_ptr().add(16) as *const __m128i)),
        ]
    });
    let nib = _mm256_set1_epi8(15);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_si256(); 4]; N];
    for s in 0..supers {
        let sb = tile.wrapping_add(s * SUPER_TILE_BYTES);
        for r in 0..4 {
            let (p, odd) = (r / 2, r % 2);
            let mut a16 = [_mm256_setzero_si256(); N];
            for h in 0..2 {
                let c = 2 * h + p;
                // SAFETY: chunk c of super-block s is in bounds.
                let (x, slo, shi) = unsafe {
                    (
                        _mm256_loadu_si256(sb.add(64 * c + 32 * odd) as *const __m256i),
                        (sb.add(SIGNS_AT + 16 * c + 4 * odd) as *const u32).read_unaligned(),
                        (sb.add(SIGNS_AT + 16 * c + 8 + 4 * odd) as *const u32).read_unaligned(),
                    )
                };
                let lo = _mm256_and_si256(x, nib);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(x), nib);
                let (mlo, mhi) = (sign_bytes(slo), sign_bytes(shi));
                let code = |idx: __m256i, m: __m256i, k: usize| {
                    _mm256_blendv_epi8(
                        _mm256_shuffle_epi8(t[k][0], idx),
                        _mm256_shuffle_epi8(t[k][1], idx),
                        m,
                    )
                };
                let cl = [code(lo, mlo, 0), code(lo, mlo, 1), code(lo, mlo, 2)];
                let ch = [code(hi, mhi, 0), code(hi, mhi, 1), code(hi, mhi, 2)];
                for (j, a) in a16.iter_mut().enumerate() {
                    let ya = y[j].wrapping_add(s * SUPER + 32 * h);
                    for k in 0..3 {
                        // SAFETY: super-block s of activation row j is in bounds.
                        let (al, ah) = unsafe {
                            (
                                _mm256_loadu_si256(ya.add(128 * k) as *const __m256i),
                                _mm256_loadu_si256(ya.add(128 * k + 64) as *const __m256i),
                            )
                        };
                        *a = _mm256_add_epi16(*a, _mm256_maddubs_epi16(cl[k], al));
                        *a = _mm256_add_epi16(*a, _mm256_maddubs_epi16(ch[k], ah));
                    }
                }
            }
            for (acc, a) in acc.iter_mut().zip(&a16) {
                acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(*a, ones));
            }
        }
    }
    acc.map(|a| hsum4_i32(a))
}
