//! AVX2 kernels: unpack 2-bit codes with shift+mask, multiply with
//! `vpmaddubsw` (codes unsigned, activations signed), sum pairs in int16 and
//! widen to int32 with `vpmaddwd` often enough that nothing wraps.
//!
//! Overflow bound: one `vpmaddubsw` lane is `c0*q0 + c1*q1` with codes 0..=3
//! and q in [-128, 127], so |lane| <= 768. An int16 accumulator that takes
//! two such lanes per block is flushed every 16 blocks (16*2*768 = 24576),
//! one that takes four per block every 8 blocks. Even code 3, which valid
//! files never hold, cannot wrap.

use core::arch::x86_64::*;

/// Blocks between flushes of an int16 accumulator fed 2 products per block.
const FLUSH2: usize = 16;
/// Blocks between flushes of an int16 accumulator fed 4 products per block.
const FLUSH4: usize = 8;

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
    [
        hsum_i32(acc[0]),
        hsum_i32(acc[1]),
        hsum_i32(acc[2]),
        hsum_i32(acc[3]),
    ]
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
