//! The scalar reference kernels: plain loops that every SIMD kernel is tested
//! against. They compute the exact integer `Σ code·q` over whole 128-weight
//! blocks, with codes read as stored (0..=3).

use crate::i2s::{BLOCK_BYTES, QK_I2_S};

/// Exact `Σ code·q` over one block of 32 packed bytes and 128 activations.
#[inline]
pub fn block_dot(w: &[u8], y: &[i8]) -> i32 {
    let mut s = 0i32;
    for p in 0..BLOCK_BYTES {
        let b = w[p];
        s += ((b >> 6) & 3) as i32 * y[p] as i32
            + ((b >> 4) & 3) as i32 * y[32 + p] as i32
            + ((b >> 2) & 3) as i32 * y[64 + p] as i32
            + (b & 3) as i32 * y[96 + p] as i32;
    }
    s
}

/// One weight row against one activation row. Block `i` of the row starts
/// at `w[i * stride]`; `y.len()` is a multiple of 128.
pub fn dot(w: &[u8], stride: usize, y: &[i8]) -> i32 {
    y.chunks_exact(QK_I2_S)
        .enumerate()
        .map(|(i, yb)| block_dot(&w[i * stride..i * stride + BLOCK_BYTES], yb))
        .sum()
}

/// Four weight rows against one activation row.
pub fn dot_4rows(w: [&[u8]; 4], stride: usize, y: &[i8]) -> [i32; 4] {
    w.map(|row| dot(row, stride, y))
}

/// One weight row against four activation rows.
pub fn dot_4acts(w: &[u8], stride: usize, y: [&[i8]; 4]) -> [i32; 4] {
    y.map(|act| dot(w, stride, act))
}

/// Four weight rows against `N` activation rows: `out[j][r]`.
pub fn tile<const N: usize>(w: [&[u8]; 4], stride: usize, y: [&[i8]; N]) -> [[i32; 4]; N] {
    y.map(|act| dot_4rows(w, stride, act))
}

/// The largest `|x|` as f64, at least 1e-5 (NaN ignored): the activation
/// quantizer's range.
pub fn act_max(x: &[f32]) -> f64 {
    let mut max = 0.00001f64;
    for &v in x {
        let a = (v as f64).abs();
        if a > max {
            max = a;
        }
    }
    max
}

/// `q = clamp(round_half_even(x * scale))` (NaN gives 0); returns `Σ q`.
pub fn act_round(x: &[f32], scale: f32, q: &mut [i8]) -> i32 {
    let mut sum = 0i32;
    for (dst, &v) in q.iter_mut().zip(x) {
        let r = (v * scale).round_ties_even();
        // `as` saturates and maps NaN to 0.
        let c = (r as i32).clamp(-128, 127);
        sum += c;
        *dst = c as i8;
    }
    sum
}
