//! NEON kernels for aarch64. A 32-byte I2_S block is read as two 16-byte
//! halves: byte `16h + p` holds elements `32k + 16h + p` for k = 0..4. The
//! plain kernel multiplies with `smull` into int16 (|code·q| <= 384) and
//! pairwise-accumulates into int32 with `sadalp`; the dotprod kernel uses
//! `sdot` into int32 directly. Both are exact.

use core::arch::aarch64::*;

/// The 4 code vectors of one half block.
#[inline(always)]
fn unpack(x: uint8x16_t) -> [int8x16_t; 4] {
    // SAFETY: NEON is part of the aarch64 baseline.
    unsafe {
        let m = vdupq_n_u8(3);
        [
            vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8::<6>(x), m)),
            vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8::<4>(x), m)),
            vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8::<2>(x), m)),
            vreinterpretq_s8_u8(vandq_u8(x, m)),
        ]
    }
}

#[inline(always)]
fn mac_plain(acc: int32x4_t, c: int8x16_t, y: int8x16_t) -> int32x4_t {
    // SAFETY: NEON is part of the aarch64 baseline.
    unsafe {
        let lo = vmull_s8(vget_low_s8(c), vget_low_s8(y));
        let hi = vmull_high_s8(c, y);
        vpadalq_s16(vpadalq_s16(acc, lo), hi)
    }
}

#[inline]
#[target_feature(enable = "dotprod")]
fn mac_dot(mut acc: int32x4_t, c: int8x16_t, y: int8x16_t) -> int32x4_t {
    // SAFETY: the `sdot` instruction exists when the dotprod feature does,
    // which this function's target feature requires; it only reads and
    // writes the named registers.
    unsafe {
        core::arch::asm!(
            "sdot {acc:v}.4s, {c:v}.16b, {y:v}.16b",
            acc = inout(vreg) acc,
            c = in(vreg) c,
            y = in(vreg) y,
            options(pure, nomem, nostack)
        );
    }
    acc
}

macro_rules! neon_kernels {
    ($dot:ident, $dot4r:ident, $dot4a:ident, $mac:ident $(, $feat:literal)?) => {
        /// # Safety
        /// `w + i*stride` is readable for 32 bytes and `y` for `nb * 128`
        /// bytes, for every block `i < nb` (and the CPU has the named feature).
        $(#[target_feature(enable = $feat)])?
        pub unsafe fn $dot(w: *const u8, stride: usize, y: *const i8, nb: usize) -> i32 {
            let mut acc = [vdupq_n_s32(0); 2];
            for b in 0..nb {
                for h in 0..2 {
                    // SAFETY: block b is in bounds by the contract.
                    let (x, yb) = unsafe { (vld1q_u8(w.add(b * stride + 16 * h)), y.add(b * 128 + 16 * h)) };
                    let c = unpack(x);
                    for k in 0..4 {
                        // SAFETY: as above.
                        let yv = unsafe { vld1q_s8(yb.add(32 * k)) };
                        acc[h] = $mac(acc[h], c[k], yv);
                    }
                }
            }
            vaddvq_s32(vaddq_s32(acc[0], acc[1]))
        }

        /// # Safety
        /// As the single-row kernel, for each of the four rows.
        $(#[target_feature(enable = $feat)])?
        pub unsafe fn $dot4r(w: [*const u8; 4], stride: usize, y: *const i8, nb: usize) -> [i32; 4] {
            let mut acc = [vdupq_n_s32(0); 4];
            for b in 0..nb {
                for h in 0..2 {
                    // SAFETY: block b of the activations is in bounds.
                    let yv: [int8x16_t; 4] = core::array::from_fn(|k| unsafe { vld1q_s8(y.add(b * 128 + 16 * h + 32 * k)) });
                    for r in 0..4 {
                        // SAFETY: block b of row r is in bounds.
                        let c = unpack(unsafe { vld1q_u8(w[r].add(b * stride + 16 * h)) });
                        for k in 0..4 {
                            acc[r] = $mac(acc[r], c[k], yv[k]);
                        }
                    }
                }
            }
            acc.map(|a| vaddvq_s32(a))
        }

        /// # Safety
        /// As the single-row kernel, for the row and each activation row.
        $(#[target_feature(enable = $feat)])?
        pub unsafe fn $dot4a(w: *const u8, stride: usize, y: [*const i8; 4], nb: usize) -> [i32; 4] {
            let mut acc = [vdupq_n_s32(0); 4];
            for b in 0..nb {
                for h in 0..2 {
                    // SAFETY: block b of the row is in bounds.
                    let c = unpack(unsafe { vld1q_u8(w.add(b * stride + 16 * h)) });
                    for j in 0..4 {
                        for k in 0..4 {
                            // SAFETY: block b of activation row j is in bounds.
                            let yv = unsafe { vld1q_s8(y[j].add(b * 128 + 16 * h + 32 * k)) };
                            acc[j] = $mac(acc[j], c[k], yv);
                        }
                    }
                }
            }
            acc.map(|a| vaddvq_s32(a))
        }
    };
}

neon_kernels!(dot, dot_4rows, dot_4acts, mac_plain);

/// The three weight positions' codes of 16 TL3 groups: 16 nibbles and their
/// 16 sign bits, looked up in the 32-entry tables with `tbl` (the sign bit
/// as bit 4 of the index).
#[inline(always)]
fn tl3_codes(idx: uint8x16_t, signs: u16, t: &[uint8x16x2_t; 3]) -> [int8x16_t; 3] {
    // SAFETY: NEON is part of the aarch64 baseline.
    unsafe {
        let bits = vcombine_u8(vdup_n_u8(signs as u8), vdup_n_u8((signs >> 8) as u8));
        let sel = vld1q_u8([1u8, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128].as_ptr());
        let neg = vandq_u8(vtstq_u8(bits, sel), vdupq_n_u8(16));
        let i5 = vorrq_u8(idx, neg);
        t.map(|tk| vreinterpretq_s8_u8(vqtbl2q_u8(tk, i5)))
    }
}

macro_rules! neon_tl3 {
    ($name:ident, $mac:ident $(, $feat:literal)?) => {
        /// One TL3 tile ([`crate::quant::tl3`]) against `N` activation rows,
        /// the super-blocks only (the caller adds the tail blocks): `tbl`
        /// turns each 16 nibbles and sign bits into the codes of the three
        /// weight positions, multiplied as the I2_S kernels do. Returns
        /// `out[j][r]`.
        ///
        /// # Safety
        /// `tile` is readable for `supers * 320` bytes and each `y[j]` for
        /// `supers * 384` (and the CPU has the named feature).
        $(#[target_feature(enable = $feat)])?
        pub unsafe fn $name<const N: usize>(
            tile: *const u8,
            supers: usize,
            y: [*const i8; N],
        ) -> [[i32; 4]; N] {
            use crate::quant::tl3::{SIGNS_AT, SUPER, SUPER_TILE_BYTES, TABLES};
            // SAFETY: each table is 32 bytes.
            let t: [uint8x16x2_t; 3] = TABLES.map(|tb| unsafe { vld1q_u8_x2(tb.as_ptr()) });
            let nib = vdupq_n_u8(15);
            // Narrow tiles keep one chain per weight position, so that the
            // multiply-accumulate latency does not bound them.
            let split = N <= 2;
            let mut acc = [[[vdupq_n_s32(0); 3]; 4]; N];
            for s in 0..supers {
                let sb = tile.wrapping_add(s * SUPER_TILE_BYTES);
                for r in 0..4 {
                    let (p, odd) = (r / 2, r % 2);
                    for h in 0..2 {
                        let c = 2 * h + p;
                        // SAFETY: chunk c of super-block s is in bounds.
                        let (slo, shi) = unsafe {
                            (
                                (sb.add(SIGNS_AT + 16 * c + 4 * odd) as *const u32).read_unaligned(),
                                (sb.add(SIGNS_AT + 16 * c + 8 + 4 * odd) as *const u32).read_unaligned(),
                            )
                        };
                        for q in 0..2 {
                            // SAFETY: as above.
                            let x = unsafe { vld1q_u8(sb.add(64 * c + 32 * odd + 16 * q)) };
                            let cl = tl3_codes(vandq_u8(x, nib), (slo >> (16 * q)) as u16, &t);
                            let ch = tl3_codes(vshrq_n_u8::<4>(x), (shi >> (16 * q)) as u16, &t);
                            for j in 0..N {
                                let ya = y[j].wrapping_add(s * SUPER + 32 * h + 16 * q);
                                for k in 0..3 {
                                    // SAFETY: super-block s of activation row j is in bounds.
                                    let (al, ah) = unsafe { (vld1q_s8(ya.add(128 * k)), vld1q_s8(ya.add(128 * k + 64))) };
                                    let a = &mut acc[j][r][if split { k } else { 0 }];
                                    *a = $mac(*a, cl[k], al);
                                    *a = $mac(*a, ch[k], ah);
                                }
                            }
                        }
                    }
                }
            }
            acc.map(|a| a.map(|v| vaddvq_s32(vaddq_s32(vaddq_s32(v[0], v[1]), v[2]))))
        }
    };
}

neon_tl3!(tl3_tile, mac_plain);
neon_tl3!(tl3_tile_dp, mac_dot, "dotprod");
neon_kernels!(dot_dp, dot_4rows_dp, dot_4acts_dp, mac_dot, "dotprod");

/// [`super::scalar::act_max`].
pub fn act_max(x: &[f32]) -> f64 {
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder();
    // SAFETY: NEON is part of the aarch64 baseline; each chunk holds 16 floats.
    let vmax = unsafe {
        let mut m = [vdupq_n_f32(0.0); 4];
        for c in chunks {
            for (i, mi) in m.iter_mut().enumerate() {
                // fmaxnm ignores a NaN operand.
                *mi = vmaxnmq_f32(*mi, vabsq_f32(vld1q_f32(c.as_ptr().add(4 * i))));
            }
        }
        vmaxnmvq_f32(vmaxnmq_f32(
            vmaxnmq_f32(m[0], m[1]),
            vmaxnmq_f32(m[2], m[3]),
        ))
    };
    (vmax as f64).max(super::scalar::act_max(tail))
}

/// [`super::scalar::act_round`].
pub fn act_round(x: &[f32], scale: f32, q: &mut [i8]) -> i32 {
    let n = x.len().min(q.len());
    let mut i = 0;
    // SAFETY: NEON is part of the aarch64 baseline; i + 16 <= n for every access.
    let sum = unsafe {
        let sv = vdupq_n_f32(scale);
        let mut sum = vdupq_n_s32(0);
        while i + 16 <= n {
            let mut c = [vdupq_n_s32(0); 4];
            for (k, ck) in c.iter_mut().enumerate() {
                // fcvtns rounds half to even, saturates, and maps NaN to 0.
                let v = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x.as_ptr().add(i + 4 * k)), sv));
                *ck = vminq_s32(vmaxq_s32(v, vdupq_n_s32(-128)), vdupq_n_s32(127));
                sum = vaddq_s32(sum, *ck);
            }
            let h0 = vcombine_s16(vqmovn_s32(c[0]), vqmovn_s32(c[1]));
            let h1 = vcombine_s16(vqmovn_s32(c[2]), vqmovn_s32(c[3]));
            vst1q_s8(
                q.as_mut_ptr().add(i),
                vcombine_s8(vqmovn_s16(h0), vqmovn_s16(h1)),
            );
            i += 16;
        }
        vaddvq_s32(sum)
    };
    sum + super::scalar::act_round(&x[i..n], scale, &mut q[i..n])
}

// ---------------------------------------------------------------------------
// Float kernels: the f16 LM head and attention, and the int8 head dot. f16
// is widened exactly with integer operations (stable Rust has no f16 vector
// type): the magnitude shifted into an f32 and scaled by 2^112 covers normal
// and subnormal values, infinities and NaNs get the all-ones exponent; the
// softmax's rounding to f16 is done the same way (see `scale_round_f16`).
// ---------------------------------------------------------------------------

/// Eight f16 values (bits) to two f32 vectors, exactly.
#[inline(always)]
fn f16x8(h: uint16x8_t) -> [float32x4_t; 2] {
    // SAFETY: NEON is part of the aarch64 baseline.
    unsafe {
        let abs = vbicq_u16(h, vdupq_n_u16(0x8000));
        let sign = vandq_u16(h, vdupq_n_u16(0x8000));
        let mag = [
            vshll_n_u16::<13>(vget_low_u16(abs)),
            vshll_high_n_u16::<13>(abs),
        ];
        let sgn = [
            vshll_n_u16::<16>(vget_low_u16(sign)),
            vshll_high_n_u16::<16>(sign),
        ];
        let magic = vdupq_n_f32(f32::from_bits(0x7780_0000)); // 2^112
        let inf = vdupq_n_u32(0x7C00 << 13);
        let exp = vdupq_n_u32(0x7F80_0000);
        let mut out = [vdupq_n_f32(0.0); 2];
        for i in 0..2 {
            let scaled = vreinterpretq_u32_f32(vmulq_f32(vreinterpretq_f32_u32(mag[i]), magic));
            let special = vorrq_u32(mag[i], exp);
            let v = vbslq_u32(vcgeq_u32(mag[i], inf), special, scaled);
            out[i] = vreinterpretq_f32_u32(vorrq_u32(v, sgn[i]));
        }
        out
    }
}

/// Loads eight f16 values.
///
/// # Safety
/// `p` is readable for 16 bytes.
#[inline(always)]
unsafe fn load_f16x8(p: *const u8) -> [float32x4_t; 2] {
    // SAFETY: by the function's contract.
    f16x8(unsafe { vld1q_u16(p as *const u16) })
}

/// [`super::scalar::dot_f16`].
pub fn dot_f16(row: &[u8], x: &[f32]) -> f32 {
    let n = x.len().min(row.len() / 2);
    let mut i = 0;
    // SAFETY: NEON baseline; i + 8 <= n for every access.
    let mut total = unsafe {
        let mut acc = [vdupq_n_f32(0.0); 4];
        while i + 16 <= n {
            for h in 0..2 {
                let w = load_f16x8(row.as_ptr().add(2 * (i + 8 * h)));
                let xp = x.as_ptr().add(i + 8 * h);
                acc[2 * h] = vfmaq_f32(acc[2 * h], w[0], vld1q_f32(xp));
                acc[2 * h + 1] = vfmaq_f32(acc[2 * h + 1], w[1], vld1q_f32(xp.add(4)));
            }
            i += 16;
        }
        while i + 8 <= n {
            let w = load_f16x8(row.as_ptr().add(2 * i));
            acc[0] = vfmaq_f32(acc[0], w[0], vld1q_f32(x.as_ptr().add(i)));
            acc[1] = vfmaq_f32(acc[1], w[1], vld1q_f32(x.as_ptr().add(i + 4)));
            i += 8;
        }
        vaddvq_f32(vaddq_f32(
            vaddq_f32(acc[0], acc[1]),
            vaddq_f32(acc[2], acc[3]),
        ))
    };
    total += super::scalar::dot_f16(&row[2 * i..2 * n], &x[i..n]);
    total
}

/// [`super::scalar::axpy_f16`].
pub fn axpy_f16(a: f32, v: &[u8], out: &mut [f32]) {
    let n = out.len().min(v.len() / 2);
    let mut i = 0;
    // SAFETY: NEON baseline; i + 8 <= n for every access.
    unsafe {
        let av = vdupq_n_f32(a);
        while i + 8 <= n {
            let w = load_f16x8(v.as_ptr().add(2 * i));
            let o = out.as_mut_ptr().add(i);
            vst1q_f32(o, vfmaq_f32(vld1q_f32(o), av, w[0]));
            vst1q_f32(o.add(4), vfmaq_f32(vld1q_f32(o.add(4)), av, w[1]));
            i += 8;
        }
    }
    super::scalar::axpy_f16(a, &v[2 * i..2 * n], &mut out[i..n]);
}

/// [`super::scalar::dot_i8`].
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    let n = a.len().min(b.len());
    let mut i = 0;
    // SAFETY: NEON baseline; i + 16 <= n for every access.
    let mut total = unsafe {
        let mut acc = vdupq_n_s32(0);
        while i + 16 <= n {
            let x = vld1q_s8(a.as_ptr().add(i));
            let y = vld1q_s8(b.as_ptr().add(i));
            acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(x), vget_low_s8(y)));
            acc = vpadalq_s16(acc, vmull_high_s8(x, y));
            i += 16;
        }
        vaddvq_s32(acc)
    };
    total += super::scalar::dot_i8(&a[i..n], &b[i..n]);
    total
}

/// [`super::scalar::dot_f16_group`] for `hd` a multiple of 8: the key row
/// is widened once for every query head.
pub fn dot_f16_group(k: &[u8], qs: &[f32], out: &mut [f32]) {
    let hd = k.len() / 2;
    let g = out.len();
    assert!(hd.is_multiple_of(8) && g <= 8 && qs.len() >= g * hd);
    // SAFETY: NEON baseline; c + 8 <= hd and every query row holds hd floats.
    unsafe {
        let mut acc = [vdupq_n_f32(0.0); 8];
        for c in (0..hd).step_by(8) {
            let kv = load_f16x8(k.as_ptr().add(2 * c));
            for (j, a) in acc.iter_mut().enumerate().take(g) {
                let q = qs.as_ptr().add(j * hd + c);
                *a = vfmaq_f32(*a, kv[0], vld1q_f32(q));
                *a = vfmaq_f32(*a, kv[1], vld1q_f32(q.add(4)));
            }
        }
        for (o, a) in out.iter_mut().zip(acc) {
            *o = vaddvq_f32(a);
        }
    }
}

/// [`super::scalar::weighted_sum`] for `hd` a multiple of 8: for each block
/// of eight dimensions, the positions run in order with the `g` heads'
/// sums in registers.
#[allow(clippy::too_many_arguments)]
pub fn weighted_sum(
    a: &[f32],
    a_stride: usize,
    g: usize,
    v: &[u8],
    row_stride: usize,
    n: usize,
    hd: usize,
    outs: &mut [f32],
) {
    assert!(hd.is_multiple_of(8) && (1..=8).contains(&g) && n >= 1 && outs.len() >= g * hd);
    assert!(a.len() >= (g - 1) * a_stride + n && v.len() >= (n - 1) * row_stride + 2 * hd);
    // SAFETY: NEON baseline; the asserts above bound every access.
    unsafe {
        for c in (0..hd).step_by(8) {
            let mut acc = [[vdupq_n_f32(0.0); 2]; 8];
            for s in 0..n {
                let vv = load_f16x8(v.as_ptr().add(s * row_stride + 2 * c));
                for (j, acc) in acc.iter_mut().enumerate().take(g) {
                    let w = vdupq_n_f32(*a.get_unchecked(j * a_stride + s));
                    acc[0] = vfmaq_f32(acc[0], w, vv[0]);
                    acc[1] = vfmaq_f32(acc[1], w, vv[1]);
                }
            }
            for (j, acc) in acc.iter().enumerate().take(g) {
                let o = outs.as_mut_ptr().add(j * hd + c);
                vst1q_f32(o, acc[0]);
                vst1q_f32(o.add(4), acc[1]);
            }
        }
    }
}

/// [`super::scalar::attn_scores`] for `hd` a multiple of 8.
#[allow(clippy::too_many_arguments)]
pub fn attn_scores(
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
    let mut row = [0f32; 8];
    for s in 0..n {
        dot_f16_group(
            &k[s * row_stride..s * row_stride + 2 * hd],
            qs,
            &mut row[..g],
        );
        for (j, &v) in row[..g].iter().enumerate() {
            out[j * out_stride + s] = v * scale;
        }
    }
}

/// `exp` of 4 lanes (the Cephes polynomial of the AVX2 kernel; inputs
/// clamped to the finite range).
#[inline(always)]
fn exp4(x: float32x4_t) -> float32x4_t {
    // SAFETY: NEON is part of the aarch64 baseline.
    unsafe {
        let x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.3)), vdupq_n_f32(88.3));
        let fx = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(std::f32::consts::LOG2_E)));
        let x = vfmsq_f32(x, fx, vdupq_n_f32(0.693_359_4));
        let x = vfmsq_f32(x, fx, vdupq_n_f32(-2.121_944_4e-4));
        let mut y = vdupq_n_f32(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            y = vfmaq_f32(vdupq_n_f32(c), y, x);
        }
        let y = vfmaq_f32(vaddq_f32(x, vdupq_n_f32(1.0)), y, vmulq_f32(x, x));
        let pow2 = vshlq_n_s32::<23>(vaddq_s32(vcvtq_s32_f32(fx), vdupq_n_s32(127)));
        vmulq_f32(y, vreinterpretq_f32_s32(pow2))
    }
}

/// [`super::scalar::softmax_round_f16`] with the vector halves below.
pub fn softmax_round_f16(v: &mut [f32]) {
    let max = v.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let inv = (1.0 / softmax_exp(v, max)) as f32;
    scale_round_f16(v, inv);
}

/// [`super::scalar::softmax_exp`].
pub fn softmax_exp(v: &mut [f32], max: f32) -> f64 {
    let n = v.len();
    let mut i = 0;
    // SAFETY: NEON baseline; i + 4 <= n for every access.
    let mut total = unsafe {
        let mv = vdupq_n_f32(max);
        let mut sum = [vdupq_n_f64(0.0); 2];
        while i + 4 <= n {
            let p = v.as_mut_ptr().add(i);
            let e = exp4(vsubq_f32(vld1q_f32(p), mv));
            vst1q_f32(p, e);
            sum[0] = vaddq_f64(sum[0], vcvt_f64_f32(vget_low_f32(e)));
            sum[1] = vaddq_f64(sum[1], vcvt_high_f64_f32(e));
            i += 4;
        }
        vaddvq_f64(vaddq_f64(sum[0], sum[1]))
    };
    for x in &mut v[i..] {
        *x = (*x - max).exp();
        total += *x as f64;
    }
    total
}

/// [`super::scalar::scale_round_f16`] for the softmax's weights (finite, at
/// least 0, at most 65504 after scaling; other values go through the scalar
/// rounding): `v * inv` rounded to the nearest f16, ties to even. Below the
/// smallest normal f16 (2^-14) adding and removing 0.5 rounds to a multiple
/// of 2^-24; above, the low 13 mantissa bits are rounded away.
pub fn scale_round_f16(v: &mut [f32], inv: f32) {
    let n = v.len();
    let mut i = 0;
    // SAFETY: NEON baseline; i + 4 <= n for every access.
    unsafe {
        let iv = vdupq_n_f32(inv);
        let tiny = vdupq_n_f32(f32::from_bits(0x3880_0000)); // 2^-14
        let half = vdupq_n_f32(0.5);
        let big = vdupq_n_f32(65504.0);
        while i + 4 <= n {
            let p = v.as_mut_ptr().add(i);
            let x = vmulq_f32(vld1q_f32(p), iv);
            // Anything outside [0, 65504] (or NaN) leaves the vector path.
            let ok = vandq_u32(vcgeq_f32(x, vdupq_n_f32(0.0)), vcleq_f32(x, big));
            if vminvq_u32(ok) != u32::MAX {
                super::scalar::scale_round_f16(&mut v[i..i + 4], inv);
                i += 4;
                continue;
            }
            let sub = vsubq_f32(vaddq_f32(x, half), half);
            let b = vreinterpretq_u32_f32(x);
            let lsb = vandq_u32(vshrq_n_u32::<13>(b), vdupq_n_u32(1));
            let r = vandq_u32(
                vaddq_u32(b, vaddq_u32(vdupq_n_u32(0x0FFF), lsb)),
                vdupq_n_u32(!0x1FFF),
            );
            let norm = vreinterpretq_f32_u32(r);
            vst1q_f32(p, vbslq_f32(vcltq_f32(x, tiny), sub, norm));
            i += 4;
        }
    }
    super::scalar::scale_round_f16(&mut v[i..], inv);
}

/// [`super::scalar::dot_q6k_q8k`], bit-identical to it: each 16-value
/// group's products widen to int16 (|(q6 - 32)·q8| <= 4096, two per lane),
/// pair up into int32 and take the group's scale; the block's exact integer
/// sum is scaled as the scalar scales it.
pub fn dot_q6k_q8k(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
    let mut acc = 0f32;
    for (b, x, d) in super::scalar::q6k_blocks(row, xq, xd) {
        // SAFETY: NEON baseline; ql holds 128 bytes, qh 64, and x 256
        // values.
        let isum = unsafe {
            let (m4, m3, m32) = (vdupq_n_u8(0xF), vdupq_n_u8(3), vdupq_n_s8(32));
            let mut acc = vdupq_n_s32(0);
            for half in 0..2 {
                let ql = b.ql.as_ptr().add(64 * half);
                let qh = b.qh.as_ptr().add(32 * half);
                let l: [uint8x16_t; 4] = core::array::from_fn(|i| vld1q_u8(ql.add(16 * i)));
                let h = [vld1q_u8(qh), vld1q_u8(qh.add(16))];
                for g in 0..8 {
                    // Group g of the half: values 16g..16g+16; low nibbles
                    // for groups 0-3, high for 4-7; qh bits 2·(g / 2).
                    let lo = l[g % 4];
                    let lo = if g < 4 {
                        vandq_u8(lo, m4)
                    } else {
                        vshrq_n_u8::<4>(lo)
                    };
                    let hi = h[g % 2];
                    let hi = match g / 2 {
                        0 => hi,
                        1 => vshrq_n_u8::<2>(hi),
                        2 => vshrq_n_u8::<4>(hi),
                        _ => vshrq_n_u8::<6>(hi),
                    };
                    let q = vorrq_u8(lo, vshlq_n_u8::<4>(vandq_u8(hi, m3)));
                    let q = vsubq_s8(vreinterpretq_s8_u8(q), m32);
                    let y = vld1q_s8(x.as_ptr().add(128 * half + 16 * g));
                    let p = vaddq_s16(
                        vmull_s8(vget_low_s8(q), vget_low_s8(y)),
                        vmull_high_s8(q, y),
                    );
                    let sc = b.scales[8 * half + g] as i32;
                    acc = vmlaq_n_s32(acc, vpaddlq_s16(p), sc);
                }
            }
            vaddvq_s32(acc)
        };
        acc += d * isum as f32;
    }
    acc
}
