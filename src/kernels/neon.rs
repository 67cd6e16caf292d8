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
neon_kernels!(dot_dp, dot_4rows_dp, dot_4acts_dp, mac_dot, "dotprod");
