//! AVX-512 VNNI kernels: `vpdpbusd` multiplies unsigned codes by signed
//! activations and adds groups of four straight into int32 lanes, so there is
//! no int16 stage and nothing to flush. Four-row dots put two weight rows in
//! one 512-bit register and broadcast each 256-bit activation vector to both
//! halves.

use core::arch::x86_64::*;

use super::avx2::{hsum_f32_ggml, hsum_i32, load4};

/// # Safety
/// The CPU supports AVX-512 F/BW/VL/VNNI; `w + i*stride` is readable for 32
/// bytes and `y` for `nb * 128` bytes, for every block `i < nb`.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot(w: *const u8, stride: usize, y: *const i8, nb: usize) -> i32 {
    // Codes as plane pairs against 64-byte activation loads (see
    // `dot_4acts`); two blocks a step into separate accumulators, so four
    // `vpdpbusd` chains are in flight.
    let shifts = plane_shifts();
    let mut acc = [_mm512_setzero_si512(); 4];
    let mut b = 0;
    while b < nb {
        let two = b + 1 < nb;
        for k in 0..2 {
            if k == 1 && !two {
                break;
            }
            // SAFETY: block b + k < nb of the row and of the activations is
            // in bounds.
            unsafe {
                let c = planes_paired(
                    _mm512_broadcast_i64x4(_mm256_loadu_si256(
                        w.add((b + k) * stride) as *const __m256i
                    )),
                    shifts,
                );
                let p = y.add((b + k) * 128);
                acc[2 * k] =
                    _mm512_dpbusd_epi32(acc[2 * k], c[0], _mm512_loadu_si512(p as *const _));
                acc[2 * k + 1] = _mm512_dpbusd_epi32(
                    acc[2 * k + 1],
                    c[1],
                    _mm512_loadu_si512(p.add(64) as *const _),
                );
            }
        }
        b += 2;
    }
    _mm512_reduce_add_epi32(_mm512_add_epi32(
        _mm512_add_epi32(acc[0], acc[1]),
        _mm512_add_epi32(acc[2], acc[3]),
    ))
}

/// # Safety
/// As [`dot`], for each of the four rows.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot_4rows(w: [*const u8; 4], stride: usize, y: *const i8, nb: usize) -> [i32; 4] {
    let mask = _mm512_set1_epi8(3);
    let mut acc01 = _mm512_setzero_si512();
    let mut acc23 = _mm512_setzero_si512();
    for b in 0..nb {
        let off = b * stride;
        // SAFETY: block b of each row and of the activations is in bounds.
        let (x01, x23, yv) = unsafe {
            let x01 = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_loadu_si256(w[0].add(off) as *const __m256i)),
                _mm256_loadu_si256(w[1].add(off) as *const __m256i),
            );
            let x23 = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_loadu_si256(w[2].add(off) as *const __m256i)),
                _mm256_loadu_si256(w[3].add(off) as *const __m256i),
            );
            (x01, x23, load4(y.add(b * 128)))
        };
        let y0 = _mm512_broadcast_i64x4(yv[0]);
        let y1 = _mm512_broadcast_i64x4(yv[1]);
        let y2 = _mm512_broadcast_i64x4(yv[2]);
        let y3 = _mm512_broadcast_i64x4(yv[3]);
        for (acc, x) in [(&mut acc01, x01), (&mut acc23, x23)] {
            let mut a = *acc;
            a = _mm512_dpbusd_epi32(a, _mm512_and_si512(_mm512_srli_epi16::<6>(x), mask), y0);
            a = _mm512_dpbusd_epi32(a, _mm512_and_si512(_mm512_srli_epi16::<4>(x), mask), y1);
            a = _mm512_dpbusd_epi32(a, _mm512_and_si512(_mm512_srli_epi16::<2>(x), mask), y2);
            a = _mm512_dpbusd_epi32(a, _mm512_and_si512(x, mask), y3);
            *acc = a;
        }
    }
    [
        hsum_i32(_mm512_castsi512_si256(acc01)),
        hsum_i32(_mm512_extracti64x4_epi64::<1>(acc01)),
        hsum_i32(_mm512_castsi512_si256(acc23)),
        hsum_i32(_mm512_extracti64x4_epi64::<1>(acc23)),
    ]
}

/// Sums of the low and the high eight int32 lanes.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
fn hsum_halves(v: __m512i) -> [i32; 2] {
    [
        hsum_i32(_mm512_castsi512_si256(v)),
        hsum_i32(_mm512_extracti64x4_epi64::<1>(v)),
    ]
}

/// A block's 32 code bytes (broadcast to both halves) as two registers of
/// codes: planes 0|1 and planes 2|3, each plane in the half that lines up
/// with its 32 activations, so an activation block is two plain 64-byte
/// loads.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
fn planes_paired(x: __m512i, shifts: [__m512i; 2]) -> [__m512i; 2] {
    let mask = _mm512_set1_epi8(3);
    [
        _mm512_and_si512(_mm512_srlv_epi16(x, shifts[0]), mask),
        _mm512_and_si512(_mm512_srlv_epi16(x, shifts[1]), mask),
    ]
}

/// The shift counts of [`planes_paired`].
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
fn plane_shifts() -> [__m512i; 2] {
    let pair =
        |lo: i16, hi: i16| _mm512_inserti64x4::<1>(_mm512_set1_epi16(lo), _mm256_set1_epi16(hi));
    [pair(6, 4), pair(2, 0)]
}

/// # Safety
/// As [`dot`], for the row and each of the four activation rows.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot_4acts(w: *const u8, stride: usize, y: [*const i8; 4], nb: usize) -> [i32; 4] {
    // Each activation block is two 64-byte loads (half the loads of 32-byte
    // halves, which matters when ggml's buffer is only 16-byte aligned and
    // loads cross cache lines); the codes come as plane pairs to match.
    let shifts = plane_shifts();
    let mut acc = [[_mm512_setzero_si512(); 2]; 4];
    for b in 0..nb {
        // SAFETY: block b of the row is in bounds.
        let c = planes_paired(
            unsafe {
                _mm512_broadcast_i64x4(_mm256_loadu_si256(w.add(b * stride) as *const __m256i))
            },
            shifts,
        );
        for (j, acc) in acc.iter_mut().enumerate() {
            // SAFETY: block b of activation row j is in bounds.
            let (a0, a1) = unsafe {
                let p = y[j].add(b * 128);
                (
                    _mm512_loadu_si512(p as *const _),
                    _mm512_loadu_si512(p.add(64) as *const _),
                )
            };
            acc[0] = _mm512_dpbusd_epi32(acc[0], c[0], a0);
            acc[1] = _mm512_dpbusd_epi32(acc[1], c[1], a1);
        }
    }
    acc.map(|a| _mm512_reduce_add_epi32(_mm512_add_epi32(a[0], a[1])))
}

/// Blocks ahead that the one-column [`tile`] (decode) prefetches into L2:
/// decode streams every weight once from memory, and the hardware
/// prefetchers stop at each 4 KiB page. On Zen 5, 2 threads: ternary time per
/// token 5-12% lower (into L1, as it was then). (The same in the AVX2
/// four-row dot made no difference there.) Four blocks ahead it prefetches
/// again into L1: on the Intel Xeon of docs/benchmarks.md the two levels cut
/// the ternary time of a token by 5-7% against the L1 prefetch alone.
const DECODE_AHEAD: usize = 16;

/// Four weight rows (a packed tile) against `N` activation rows: the prompt
/// GEMM's register tile. Rows 0|1 and 2|3 share a 512-bit register, each
/// 32-byte activation vector is broadcast to both halves and feeds two
/// `vpdpbusd`, so every unpacked code plane is used `2N` times. Returns
/// `out[j][r]` = row `r` against activation row `j`.
///
/// # Safety
/// As [`dot`], for each of the four rows and each of the `N` activation rows.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn tile<const N: usize>(
    w: [*const u8; 4],
    stride: usize,
    y: [*const i8; N],
    nb: usize,
) -> [[i32; 4]; N] {
    let mask = _mm512_set1_epi8(3);
    // Narrow tiles keep a second set of accumulators for the odd code
    // planes, so short dependency chains do not bound them by latency; wide
    // tiles have enough independent chains (and no registers to spare).
    let split = N <= 4;
    let mut acc01 = [[_mm512_setzero_si512(); N]; 2];
    let mut acc23 = [[_mm512_setzero_si512(); N]; 2];
    for b in 0..nb {
        let off = b * stride;
        if N == 1 {
            // Past the tile's end this is the next tile of the layout.
            for r in w {
                _mm_prefetch::<_MM_HINT_T1>(
                    r.wrapping_add(off + DECODE_AHEAD * stride) as *const i8
                );
                _mm_prefetch::<_MM_HINT_T0>(r.wrapping_add(off + 4 * stride) as *const i8);
            }
        }
        // SAFETY: block b of each row is in bounds.
        let (x01, x23) = unsafe {
            (
                _mm512_inserti64x4::<1>(
                    _mm512_castsi256_si512(_mm256_loadu_si256(w[0].add(off) as *const __m256i)),
                    _mm256_loadu_si256(w[1].add(off) as *const __m256i),
                ),
                _mm512_inserti64x4::<1>(
                    _mm512_castsi256_si512(_mm256_loadu_si256(w[2].add(off) as *const __m256i)),
                    _mm256_loadu_si256(w[3].add(off) as *const __m256i),
                ),
            )
        };
        let c01 = [
            _mm512_and_si512(_mm512_srli_epi16::<6>(x01), mask),
            _mm512_and_si512(_mm512_srli_epi16::<4>(x01), mask),
            _mm512_and_si512(_mm512_srli_epi16::<2>(x01), mask),
            _mm512_and_si512(x01, mask),
        ];
        let c23 = [
            _mm512_and_si512(_mm512_srli_epi16::<6>(x23), mask),
            _mm512_and_si512(_mm512_srli_epi16::<4>(x23), mask),
            _mm512_and_si512(_mm512_srli_epi16::<2>(x23), mask),
            _mm512_and_si512(x23, mask),
        ];
        for s in 0..4 {
            for j in 0..N {
                // SAFETY: block b of activation row j is in bounds.
                let a = unsafe {
                    _mm512_broadcast_i64x4(_mm256_loadu_si256(
                        y[j].add(b * 128 + 32 * s) as *const __m256i
                    ))
                };
                let h = usize::from(split && s & 1 == 1);
                acc01[h][j] = _mm512_dpbusd_epi32(acc01[h][j], c01[s], a);
                acc23[h][j] = _mm512_dpbusd_epi32(acc23[h][j], c23[s], a);
            }
        }
    }
    let mut out = [[0i32; 4]; N];
    for j in 0..N {
        let [r0, r1] = hsum_halves(_mm512_add_epi32(acc01[0][j], acc01[1][j]));
        let [r2, r3] = hsum_halves(_mm512_add_epi32(acc23[0][j], acc23[1][j]));
        out[j] = [r0, r1, r2, r3];
    }
    out
}

/// [`super::scalar::weighted_sum`] with 16-lane sums, for `hd` a multiple of
/// 32 (others go to the AVX2 kernel): positions in tiles whose V rows stay
/// in L1, two 16-dimension blocks at a time (2G independent sums), the sums
/// carried between tiles through `outs` so each output adds its positions in
/// order.
///
/// # Safety
/// AVX-512 F and the AVX2 kernel's features are present; the bounds of
/// [`super::weighted_sum`] hold; `hd` is a multiple of 8.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
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
    unsafe {
        if !hd.is_multiple_of(32) {
            return super::avx2::weighted_sum(a, a_stride, g, v, row_stride, n, hd, outs);
        }
        super::by_group!(g, weighted_sum_n(a, a_stride, v, row_stride, n, hd, outs))
    }
}

/// # Safety
/// As [`weighted_sum`] with `g == G` and `hd` a multiple of 32.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn weighted_sum_n<const G: usize>(
    a: &[f32],
    a_stride: usize,
    v: &[u8],
    row_stride: usize,
    n: usize,
    hd: usize,
    outs: &mut [f32],
) {
    const TILE: usize = 32;
    outs[..G * hd].fill(0.0);
    let mut s0 = 0;
    while s0 < n {
        let s1 = (s0 + TILE).min(n);
        for c in (0..hd).step_by(32) {
            let mut acc = [[_mm512_setzero_ps(); 2]; G];
            for (j, acc) in acc.iter_mut().enumerate() {
                // SAFETY: outs holds G*hd floats and c + 32 <= hd.
                unsafe {
                    let o = outs.as_ptr().add(j * hd + c);
                    acc[0] = _mm512_loadu_ps(o);
                    acc[1] = _mm512_loadu_ps(o.add(16));
                }
            }
            for s in s0..s1 {
                if c == 0 {
                    // The next tile, line by line in address order:
                    // the passes below read each row's lines far apart in
                    // time, which the hardware prefetchers do not follow.
                    let ahead = v.as_ptr().wrapping_add((s + TILE) * row_stride);
                    for l in (0..2 * hd).step_by(64) {
                        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(l) as *const i8);
                    }
                }
                // SAFETY: row s holds hd f16 values and c + 32 <= hd; a holds
                // G rows of at least n weights at a_stride.
                unsafe {
                    let p = v.as_ptr().add(s * row_stride + 2 * c);
                    let v0 = _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
                    let v1 = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(32) as *const __m256i));
                    for (j, acc) in acc.iter_mut().enumerate() {
                        let w = _mm512_set1_ps(*a.get_unchecked(j * a_stride + s));
                        acc[0] = _mm512_fmadd_ps(w, v0, acc[0]);
                        acc[1] = _mm512_fmadd_ps(w, v1, acc[1]);
                    }
                }
            }
            for (j, acc) in acc.iter().enumerate() {
                // SAFETY: outs holds G*hd floats.
                unsafe {
                    let o = outs.as_mut_ptr().add(j * hd + c);
                    _mm512_storeu_ps(o, acc[0]);
                    _mm512_storeu_ps(o.add(16), acc[1]);
                }
            }
        }
        s0 = s1;
    }
}

/// [`super::scalar::attn_scores`] with 16-lane sums, for `hd` a multiple of
/// 16 (others go to the AVX2 kernel): `P` positions at a time, so every
/// query vector loaded serves `P` key rows, and the `G * P` sums are
/// reduced together (one transposing tree for sixteen sums, where a
/// reduction per sum costs as much as the sum itself at `hd = 128`).
///
/// # Safety
/// AVX-512 F and the AVX2 kernel's features are present; the bounds of
/// [`super::attn_scores`] hold; `hd` is a multiple of 8.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
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
        if !hd.is_multiple_of(16) {
            return super::avx2::attn_scores(k, row_stride, n, qs, g, hd, scale, out, out_stride);
        }
        let a = (k, row_stride, n, qs, hd, scale, out, out_stride);
        match g {
            1 => scores_n::<1, 8>(a),
            2 => scores_n::<2, 8>(a),
            3 => scores_n::<3, 5>(a),
            4 => scores_n::<4, 4>(a),
            5 => scores_n::<5, 3>(a),
            6 => scores_n::<6, 2>(a),
            7 => scores_n::<7, 2>(a),
            _ => scores_n::<8, 2>(a),
        }
    }
}

/// The score kernels' arguments: key rows, their stride, positions, query
/// rows, head size, scale, output rows and their stride.
type ScoreArgs<'a> = (
    &'a [u8],
    usize,
    usize,
    &'a [f32],
    usize,
    f32,
    &'a mut [f32],
    usize,
);

/// How many positions ahead the score kernels ask for key rows (the rows
/// of each call are read in `P`-row blocks a line at a time, which the
/// hardware prefetchers follow late).
const SCORE_AHEAD: usize = 32;

/// # Safety
/// As [`attn_scores`] with `g == G`, `hd` a multiple of 16 and `G * P <= 16`.
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
unsafe fn scores_n<const G: usize, const P: usize>(
    (k, row_stride, n, qs, hd, scale, out, out_stride): ScoreArgs,
) {
    let mut s = 0;
    while s < n {
        let last = n - 1 - s;
        let mut acc = [_mm512_setzero_ps(); 16];
        let ahead = k.as_ptr().wrapping_add((s + SCORE_AHEAD) * row_stride);
        for l in (0..P * row_stride).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(l) as *const i8);
        }
        for c in (0..hd).step_by(16) {
            // Past the last position the last row is read again and its
            // sums dropped.
            let kv: [__m512; P] = std::array::from_fn(|p| {
                // SAFETY: row s + min(p, last) < n holds hd f16 values and
                // c + 16 <= hd.
                unsafe {
                    let row = k.as_ptr().add((s + p.min(last)) * row_stride + 2 * c);
                    _mm512_cvtph_ps(_mm256_loadu_si256(row as *const __m256i))
                }
            });
            for j in 0..G {
                // SAFETY: every query row holds hd floats; c + 16 <= hd.
                let q = unsafe { _mm512_loadu_ps(qs.as_ptr().add(j * hd + c)) };
                for (p, kp) in kv.iter().enumerate() {
                    acc[j * P + p] = _mm512_fmadd_ps(*kp, q, acc[j * P + p]);
                }
            }
        }
        let mut sums = [0f32; 16];
        // SAFETY: 16 floats of room.
        unsafe {
            _mm512_storeu_ps(
                sums.as_mut_ptr(),
                _mm512_mul_ps(sum16(&acc), _mm512_set1_ps(scale)),
            )
        };
        for j in 0..G {
            for p in 0..P.min(n - s) {
                out[j * out_stride + s + p] = sums[j * P + p];
            }
        }
        s += P;
    }
}

/// Lane `i` of the result is the sum of the lanes of `v[i]`: pairs, then
/// quads, then halves of the 128-bit blocks are added in a transposing
/// tree (45 instructions for the sixteen sums).
#[inline]
#[target_feature(enable = "avx512f")]
fn sum16(v: &[__m512; 16]) -> __m512 {
    // Per 128-bit block: [a0+a2, b0+b2, a1+a3, b1+b3].
    let t: [__m512; 8] = std::array::from_fn(|i| {
        let (a, b) = (v[2 * i], v[2 * i + 1]);
        _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b))
    });
    // Per 128-bit block: that block's part of [a, b, c, d].
    let u: [__m512; 4] = std::array::from_fn(|i| {
        let (x, y) = (_mm512_castps_pd(t[2 * i]), _mm512_castps_pd(t[2 * i + 1]));
        _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
            _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)),
        )
    });
    // Blocks [abcd of blocks 0+1, abcd of 2+3, efgh of 0+1, efgh of 2+3].
    let w: [__m512; 2] = std::array::from_fn(|i| {
        let (x, y) = (u[2 * i], u[2 * i + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(x, y),
            _mm512_shuffle_f32x4::<0xDD>(x, y),
        )
    });
    _mm512_add_ps(
        _mm512_shuffle_f32x4::<0x88>(w[0], w[1]),
        _mm512_shuffle_f32x4::<0xDD>(w[0], w[1]),
    )
}

/// The LM head's f16 row against `out.len()` vectors (1 to 8, stored back
/// to back in `xs`, `dim` floats each). Each 512-bit accumulator holds two
/// of `avx2::dot_f16`'s 8-lane accumulators side by side (positions
/// `i..i+8` and `i+8..i+16` of each 32-value step, then `i+16..` and
/// `i+24..`), so a 16-value conversion of the row feeds both with no
/// shuffle, and every result is bit for bit `dot_f16`'s.
///
/// # Safety
/// AVX-512 F with AVX2, FMA and F16C are present; `dim` is a multiple of
/// 32, `row` holds `dim` f16 values and `xs` `out.len() * dim` floats.
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
pub unsafe fn dot_f16_cols(row: &[u8], xs: &[f32], dim: usize, out: &mut [f32]) {
    // SAFETY (all arms): forwarded contract.
    unsafe {
        match out.len() {
            1 => dot_f16_cols_n::<1>(row, xs, dim, out),
            2 => dot_f16_cols_n::<2>(row, xs, dim, out),
            3 => dot_f16_cols_n::<3>(row, xs, dim, out),
            4 => dot_f16_cols_n::<4>(row, xs, dim, out),
            5 => dot_f16_cols_n::<5>(row, xs, dim, out),
            6 => dot_f16_cols_n::<6>(row, xs, dim, out),
            7 => dot_f16_cols_n::<7>(row, xs, dim, out),
            _ => dot_f16_cols_n::<8>(row, xs, dim, out),
        }
    }
}

/// # Safety
/// As [`dot_f16_cols`], with `out.len() == C`.
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
unsafe fn dot_f16_cols_n<const C: usize>(row: &[u8], xs: &[f32], dim: usize, out: &mut [f32]) {
    debug_assert!(dim.is_multiple_of(32) && row.len() >= 2 * dim && xs.len() >= C * dim);
    // acc[j][0] = [acc0 | acc1] and acc[j][1] = [acc2 | acc3] of dot_f16.
    let mut acc = [[_mm512_setzero_ps(); 2]; C];
    let (r, x) = (row.as_ptr(), xs.as_ptr());
    let mut i = 0;
    while i < dim {
        // SAFETY: i + 32 <= dim: the row's 32 halves from i, and 32 floats
        // of every vector from i, are in bounds.
        unsafe {
            // The next row (the caller walks rows in order): ask early.
            _mm_prefetch::<_MM_HINT_T0>(r.wrapping_add(2 * dim + 2 * i) as *const i8);
            let w0 = _mm512_cvtph_ps(_mm256_loadu_si256(r.add(2 * i) as *const __m256i));
            let w1 = _mm512_cvtph_ps(_mm256_loadu_si256(r.add(2 * i + 32) as *const __m256i));
            for (j, a) in acc.iter_mut().enumerate() {
                let xj = x.add(j * dim + i);
                a[0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xj), a[0]);
                a[1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xj.add(16)), a[1]);
            }
        }
        i += 32;
    }
    for (o, a) in out.iter_mut().zip(&acc) {
        *o = finish_cols(a);
    }
}

/// One column's result from its `[acc0 | acc1]`, `[acc2 | acc3]`:
/// `(acc0 + acc1) + (acc2 + acc3)`, then the lanes in order, as `dot_f16`.
#[inline]
#[target_feature(enable = "avx2,avx512f")]
fn finish_cols(a: &[__m512; 2]) -> f32 {
    let high = |v: __m512| _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    let s = _mm256_add_ps(
        _mm256_add_ps(_mm512_castps512_ps256(a[0]), high(a[0])),
        _mm256_add_ps(_mm512_castps512_ps256(a[1]), high(a[1])),
    );
    let mut lanes = [0f32; 8];
    // SAFETY: 8 floats of room.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), s) };
    lanes.iter().sum()
}

/// [`dot_f16_cols`] for two rows at once (`rows` holds both, `2 * dim`
/// halves back to back, `out` their `C` results each): every vector value
/// loaded serves both rows. Results as `dot_f16_cols` (so as `dot_f16`).
///
/// # Safety
/// As [`dot_f16_cols`], with `rows` holding `2 * dim` halves and `out`
/// `2 * xs.len() / dim` floats (1 to 4 vectors).
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
pub unsafe fn dot_f16_cols2(rows: &[u8], xs: &[f32], dim: usize, out: &mut [f32]) {
    // SAFETY (all arms): forwarded contract.
    unsafe {
        match out.len() / 2 {
            1 => dot_f16_cols2_n::<1>(rows, xs, dim, out),
            2 => dot_f16_cols2_n::<2>(rows, xs, dim, out),
            3 => dot_f16_cols2_n::<3>(rows, xs, dim, out),
            _ => dot_f16_cols2_n::<4>(rows, xs, dim, out),
        }
    }
}

/// # Safety
/// As [`dot_f16_cols2`], with `out.len() == 2 * C`.
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
unsafe fn dot_f16_cols2_n<const C: usize>(rows: &[u8], xs: &[f32], dim: usize, out: &mut [f32]) {
    debug_assert!(dim.is_multiple_of(32) && rows.len() >= 4 * dim && xs.len() >= C * dim);
    let mut a0 = [[_mm512_setzero_ps(); 2]; C];
    let mut a1 = [[_mm512_setzero_ps(); 2]; C];
    let (r, x) = (rows.as_ptr(), xs.as_ptr());
    let mut i = 0;
    while i < dim {
        // SAFETY: i + 32 <= dim: both rows' 32 halves from i, and 32 floats
        // of every vector from i, are in bounds.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(r.wrapping_add(4 * dim + 2 * i) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(r.wrapping_add(6 * dim + 2 * i) as *const i8);
            let w00 = _mm512_cvtph_ps(_mm256_loadu_si256(r.add(2 * i) as *const __m256i));
            let w01 = _mm512_cvtph_ps(_mm256_loadu_si256(r.add(2 * i + 32) as *const __m256i));
            let w10 = _mm512_cvtph_ps(_mm256_loadu_si256(r.add(2 * dim + 2 * i) as *const __m256i));
            let w11 = _mm512_cvtph_ps(_mm256_loadu_si256(
                r.add(2 * dim + 2 * i + 32) as *const __m256i
            ));
            for j in 0..C {
                let xj = x.add(j * dim + i);
                let (x0, x1) = (_mm512_loadu_ps(xj), _mm512_loadu_ps(xj.add(16)));
                a0[j][0] = _mm512_fmadd_ps(w00, x0, a0[j][0]);
                a0[j][1] = _mm512_fmadd_ps(w01, x1, a0[j][1]);
                a1[j][0] = _mm512_fmadd_ps(w10, x0, a1[j][0]);
                a1[j][1] = _mm512_fmadd_ps(w11, x1, a1[j][1]);
            }
        }
        i += 32;
    }
    for (o, a) in out.iter_mut().zip(a0.iter().chain(&a1)) {
        *o = finish_cols(a);
    }
}

/// [`super::avx2::dot_q6k_q8k`] with 64 values a step: the same int32 lanes
/// per block (chunk pairs in the two 256-bit halves, added at the end of the
/// block), so the result is bit-identical to the AVX2 kernel's and to
/// ggml's AVX2 `vec_dot_q6_K_q8_K`.
///
/// # Safety
/// The CPU supports AVX-512 F/BW and AVX2/FMA.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw")]
pub unsafe fn dot_q6k_q8k(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
    use crate::quant::{q6k::BlockQ6K, Block};
    let m0f = _mm512_set1_epi8(0xF);
    let m30 = _mm512_set1_epi8(0x30);
    let m32 = _mm512_set1_epi8(32);
    // High bits to bit 4: chunks 0 and 1 of a half take qh bits 0-1 and
    // 2-3, chunks 2 and 3 bits 4-5 and 6-7.
    let up = _mm512_inserti64x4::<1>(_mm512_set1_epi16(4), _mm256_set1_epi16(2));
    let down = _mm512_inserti64x4::<1>(_mm512_setzero_si512(), _mm256_set1_epi16(2));
    // Scale index of each int16 lane of a 64-value step: 4 scales, 8 lanes each.
    let lane_scale: [i16; 32] = core::array::from_fn(|l| (l / 8) as i16);
    // SAFETY: 32 int16 values.
    let lane_scale = unsafe { _mm512_loadu_si512(lane_scale.as_ptr() as *const _) };
    let mut acc = _mm256_setzero_ps();
    for (b, x, d) in super::scalar::q6k_blocks(row, xq, xd) {
        // The same block four rows on: a head streams through hundreds of
        // megabytes, and the prefetchers stop at page boundaries (Zen 5:
        // head time per token about 15% lower at 1 thread).
        let ahead = (b as *const BlockQ6K as *const u8).wrapping_add(4 * row.len());
        for l in (0..BlockQ6K::BYTES).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(l) as *const i8);
        }
        // SAFETY: the 16 scales.
        let sc = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(unsafe {
            _mm_loadu_si128(b.scales.as_ptr() as *const __m128i)
        }));
        let mut sumi = _mm512_setzero_si512();
        for half in 0..2 {
            // SAFETY: ql holds 128 bytes, qh 64; x has 256 values.
            let (ql, qh, x) = unsafe {
                (
                    _mm512_loadu_si512(b.ql.as_ptr().add(64 * half) as *const _),
                    _mm512_broadcast_i64x4(_mm256_loadu_si256(
                        b.qh.as_ptr().add(32 * half) as *const __m256i
                    )),
                    x.as_ptr().add(128 * half),
                )
            };
            // (ql & 0xF) | hi for each pair of chunks (0xEC: (a & c) | b).
            let q = [
                _mm512_ternarylogic_epi32::<0xEC>(
                    ql,
                    _mm512_and_si512(_mm512_sllv_epi16(qh, up), m30),
                    m0f,
                ),
                _mm512_ternarylogic_epi32::<0xEC>(
                    _mm512_srli_epi16::<4>(ql),
                    _mm512_and_si512(_mm512_srlv_epi16(qh, down), m30),
                    m0f,
                ),
            ];
            for (p, q) in q.into_iter().enumerate() {
                // SAFETY: values 64p..64p+64 of this half.
                let xv = unsafe { _mm512_loadu_si512(x.add(64 * p) as *const _) };
                let prod =
                    _mm512_sub_epi16(_mm512_maddubs_epi16(q, xv), _mm512_maddubs_epi16(m32, xv));
                let first = _mm512_set1_epi16((4 * (2 * half + p)) as i16);
                let s = _mm512_permutexvar_epi16(_mm512_add_epi16(lane_scale, first), sc);
                sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(s, prod));
            }
        }
        let sumi = _mm256_add_epi32(
            _mm512_castsi512_si256(sumi),
            _mm512_extracti64x4_epi64::<1>(sumi),
        );
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_f32_ggml(acc)
}

/// The codes of TL3 chunk `c` of the super-block at `sb`: `[part][k]`, part
/// 0 from the low nibbles and 1 from the high ones, `k` the weight position.
/// Each nibble gets its sign bit (from a mask register) as bit 4 and indexes
/// the 32-entry table of its position with `vpermb`.
///
/// # Safety
/// The CPU supports AVX-512 F/BW/VBMI; `sb` is readable for 320 bytes.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vbmi")]
unsafe fn tl3_chunk_codes(sb: *const u8, c: usize, t: &[__m512i; 3]) -> [[__m512i; 3]; 2] {
    use crate::quant::tl3::SIGNS_AT;
    // SAFETY: chunk c and its sign words are inside the super-block.
    let (x, klo, khi) = unsafe {
        (
            _mm512_loadu_si512(sb.add(64 * c) as *const __m512i),
            (sb.add(SIGNS_AT + 16 * c) as *const u64).read_unaligned(),
            (sb.add(SIGNS_AT + 16 * c + 8) as *const u64).read_unaligned(),
        )
    };
    let nib = _mm512_set1_epi8(15);
    let sign = _mm512_set1_epi8(16);
    let lo = _mm512_and_si512(x, nib);
    let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(x), nib);
    let lo = _mm512_mask_add_epi8(lo, klo, lo, sign);
    let hi = _mm512_mask_add_epi8(hi, khi, hi, sign);
    [
        t.map(|tk| _mm512_permutexvar_epi8(lo, tk)),
        t.map(|tk| _mm512_permutexvar_epi8(hi, tk)),
    ]
}

/// Bytes ahead that the one-column [`tl3_tile`] prefetches into L2 (as
/// [`DECODE_AHEAD`] blocks of the I2_S tile), and then into L1 (two
/// super-blocks). On the Intel Xeon of docs/benchmarks.md, 1 and 2 threads:
/// ternary time per token 15% lower than the L1 prefetch alone at the far
/// distance (46 against 53 ms at one thread); 1 or 4 super-blocks for the
/// near one were 5% slower.
const TL3_AHEAD: usize = DECODE_AHEAD * 4 * 32;
const TL3_NEAR: usize = 2 * crate::quant::tl3::SUPER_TILE_BYTES;

/// One TL3 tile ([`crate::quant::tl3`]) against `N` activation rows, its
/// `tail` I2_S blocks included. Per chunk, one
/// 64-byte load gives two rows' 32 index bytes; their nibbles, with the sign
/// bit (from a mask register) as bit 4, index 32-entry tables with `vpermb`,
/// one per weight position, giving the I2_S codes; `vpdpbusd` multiplies
/// them as [`tile`] does, each 256-bit activation vector broadcast to both
/// rows. Returns `out[j][r]`.
///
/// # Safety
/// The CPU supports AVX-512 F/BW/VL/VNNI/VBMI; `tile` is readable for
/// `supers * 320 + tail * 128` bytes and each `y[j]` for
/// `supers * 384 + tail * 128`.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
pub unsafe fn tl3_tile<const N: usize>(
    tile: *const u8,
    supers: usize,
    tail: usize,
    y: [*const i8; N],
) -> [[i32; 4]; N] {
    use crate::quant::tl3::{SUPER, SUPER_TILE_BYTES, TABLES};
    // SAFETY: the tables are 32 bytes each; a 256-bit load fills the low
    // half of the 64-entry `vpermb` table (indices stay below 32).
    let t: [__m512i; 3] = TABLES.map(|tb| unsafe {
        _mm512_castsi256_si512(_mm256_loadu_si256(tb.as_ptr() as *const __m256i))
    });
    // Narrow tiles keep one chain per weight position so the `vpdpbusd`
    // latency does not bound them; wide ones have chains enough.
    let split = N <= 2;
    let mut acc = [[[_mm512_setzero_si512(); 3]; N]; 2];
    for s in 0..supers {
        let sb = tile.wrapping_add(s * SUPER_TILE_BYTES);
        if N == 1 {
            for l in 0..5 {
                _mm_prefetch::<_MM_HINT_T1>(sb.wrapping_add(TL3_AHEAD + 64 * l) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(sb.wrapping_add(TL3_NEAR + 64 * l) as *const i8);
            }
        }
        for h in 0..2 {
            // Both row pairs' codes of this half, so that each activation
            // vector is loaded once for four rows.
            // SAFETY: chunks 2h and 2h + 1 of super-block s are in bounds.
            let codes: [[[__m512i; 3]; 2]; 2] =
                std::array::from_fn(|p| unsafe { tl3_chunk_codes(sb, 2 * h + p, &t) });
            for j in 0..N {
                let ya = y[j].wrapping_add(s * SUPER + 32 * h);
                for k in 0..3 {
                    for (part, off) in [(0, 0), (1, 64)] {
                        // SAFETY: super-block s of activation row j is in bounds.
                        let a = unsafe {
                            _mm512_broadcast_i64x4(_mm256_loadu_si256(
                                ya.add(128 * k + off) as *const __m256i
                            ))
                        };
                        for (p, cp) in codes.iter().enumerate() {
                            let acc = &mut acc[p][j][if split { k } else { 0 }];
                            *acc = _mm512_dpbusd_epi32(*acc, cp[part][k], a);
                        }
                    }
                }
            }
        }
    }
    // The tail blocks, I2_S as in `tile`: rows 0|1 and 2|3 are 64
    // contiguous bytes each.
    let mask = _mm512_set1_epi8(3);
    for b in 0..tail {
        let at = tile.wrapping_add(supers * SUPER_TILE_BYTES + b * 128);
        // SAFETY: tail block b is in bounds.
        let x = unsafe {
            [
                _mm512_loadu_si512(at as *const __m512i),
                _mm512_loadu_si512(at.add(64) as *const __m512i),
            ]
        };
        for q in 0..4 {
            let shift = _mm_cvtsi32_si128(6 - 2 * q as i32);
            let c = x.map(|x| _mm512_and_si512(_mm512_srl_epi16(x, shift), mask));
            for j in 0..N {
                // SAFETY: tail block b of activation row j is in bounds.
                let a = unsafe {
                    _mm512_broadcast_i64x4(_mm256_loadu_si256(
                        y[j].add(supers * SUPER + b * 128 + 32 * q) as *const __m256i,
                    ))
                };
                for (p, cp) in c.iter().enumerate() {
                    let acc = &mut acc[p][j][if split { q % 3 } else { 0 }];
                    *acc = _mm512_dpbusd_epi32(*acc, *cp, a);
                }
            }
        }
    }
    let mut out = [[0i32; 4]; N];
    for (j, o) in out.iter_mut().enumerate() {
        let sum = |p: usize| {
            let a = &acc[p][j];
            _mm512_add_epi32(_mm512_add_epi32(a[0], a[1]), a[2])
        };
        let [r0, r1] = hsum_halves(sum(0));
        let [r2, r3] = hsum_halves(sum(1));
        *o = [r0, r1, r2, r3];
    }
    out
}

/// A TL3 tile's super-blocks rewritten as the I2_S tile of the same rows
/// ([`crate::packed`]'s layout: block `b` of row `r` at `128b + 32r`), so
/// that a prompt GEMM decodes each tile once and runs [`tile`] on it for
/// every column. Codes are decoded as in [`tl3_tile`]; the four planes of
/// an I2_S block are the low and high nibbles of both halves.
///
/// # Safety
/// The CPU supports AVX-512 F/BW/VL/VBMI; `tile` is readable for
/// `supers * 320` bytes and `out` writable for `supers * 3 * 128`.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vbmi")]
pub unsafe fn tl3_expand(tile: *const u8, supers: usize, out: *mut u8) {
    use crate::quant::tl3::{SUPER_TILE_BYTES, TABLES};
    // SAFETY: as in `tl3_tile`.
    let t: [__m512i; 3] = TABLES.map(|tb| unsafe {
        _mm512_castsi256_si512(_mm256_loadu_si256(tb.as_ptr() as *const __m256i))
    });
    for s in 0..supers {
        let sb = tile.wrapping_add(s * SUPER_TILE_BYTES);
        for p in 0..2 {
            // codes[h][part][k]: part 0 the low nibbles (plane h), part 1
            // the high ones (plane 2 + h).
            // SAFETY: chunks p and 2 + p of super-block s are in bounds.
            let codes: [[[__m512i; 3]; 2]; 2] =
                std::array::from_fn(|h| unsafe { tl3_chunk_codes(sb, 2 * h + p, &t) });
            #[allow(clippy::needless_range_loop)] // k indexes four arrays and the output
            for k in 0..3 {
                // Codes are at most 2, so 16-bit shifts keep each byte's
                // bits inside it.
                let b = _mm512_or_si512(
                    _mm512_or_si512(
                        _mm512_slli_epi16::<6>(codes[0][0][k]),
                        _mm512_slli_epi16::<4>(codes[1][0][k]),
                    ),
                    _mm512_or_si512(_mm512_slli_epi16::<2>(codes[0][1][k]), codes[1][1][k]),
                );
                // SAFETY: block 3s + k of rows 2p and 2p + 1 is in bounds.
                unsafe {
                    _mm512_storeu_si512(out.add((3 * s + k) * 128 + 64 * p) as *mut __m512i, b)
                };
            }
        }
    }
}
