//! The scalar reference kernels: plain loops that every SIMD kernel is tested
//! against. They compute the exact integer `Σ code·q` over whole 128-weight
//! blocks, with codes read as stored (0..=3).

use half::f16;

use crate::quant::i2s::{BLOCK_BYTES, QK_I2_S};
use crate::quant::q6k::BlockQ6K;
use crate::quant::q8_0::BlockQ8_0;
use crate::quant::q8k::QK_K;
use crate::quant::tl3;
use crate::quant::{nearest_int, signed_absmax, Block};

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

/// One TL3 tile (four rows, [`crate::quant::tl3`]) against `N` activation
/// rows: `out[j][r] = Σ code·q`, the super-blocks by table lookup, then the
/// tail blocks as I2_S.
pub fn tl3_tile<const N: usize>(t: &[u8], shape: tl3::Shape, y: [&[i8]; N]) -> [[i32; 4]; N] {
    let mut out = [[0i32; 4]; N];
    for s in 0..shape.supers {
        let sb = &t[s * tl3::SUPER_TILE_BYTES..(s + 1) * tl3::SUPER_TILE_BYTES];
        for c in 0..4 {
            let (h, p) = (c / 2, c % 2);
            let signs = |part: usize| {
                let at = tl3::SIGNS_AT + 16 * c + 8 * part;
                u64::from_le_bytes(sb[at..at + 8].try_into().expect("8 bytes"))
            };
            let (lo_signs, hi_signs) = (signs(0), signs(1));
            for lane in 0..64 {
                let (r, i) = (2 * p + lane / 32, lane % 32);
                let v = sb[64 * c + lane];
                for (nib, neg, g) in [
                    (v & 15, lo_signs >> lane & 1, 32 * h + i),
                    (v >> 4, hi_signs >> lane & 1, 64 + 32 * h + i),
                ] {
                    let t = usize::from(nib) + 16 * neg as usize;
                    for (k, table) in tl3::TABLES.iter().enumerate() {
                        let code = i32::from(table[t]);
                        let e = s * tl3::SUPER + k * QK_I2_S + g;
                        for (o, a) in out.iter_mut().zip(&y) {
                            o[r] += code * i32::from(a[e]);
                        }
                    }
                }
            }
        }
    }
    let tail = shape.tail_at();
    if shape.tail > 0 {
        let e0 = shape.supers * tl3::SUPER;
        let rows: [&[u8]; 4] = std::array::from_fn(|r| &t[tail + r * BLOCK_BYTES..]);
        let acts = y.map(|a| &a[e0..e0 + shape.tail * QK_I2_S]);
        for (o, t) in out.iter_mut().zip(tile(rows, 4 * BLOCK_BYTES, acts)) {
            for r in 0..4 {
                o[r] += t[r];
            }
        }
    }
    out
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

// ---------------------------------------------------------------------------
// Float kernels: the references of the f16 LM head and attention kernels,
// the attention softmax and the int8 head dot.
// ---------------------------------------------------------------------------

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[2 * i], b[2 * i + 1]])).to_f32()
}

/// Dot of a row of little-endian f16 values with f32 `x` (eight partial
/// sums, as the vector kernels keep).
pub fn dot_f16(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (i, &v) in x.iter().enumerate().take(row.len() / 2) {
        acc[i % 8] += f16_at(row, i) * v;
    }
    acc.iter().sum()
}

/// [`dot_f16`] of one row with two vectors: each result exactly as
/// `dot_f16` gives it.
pub fn dot_f16_pair(row: &[u8], x0: &[f32], x1: &[f32]) -> (f32, f32) {
    (dot_f16(row, x0), dot_f16(row, x1))
}

/// `out += a * v` for a row of little-endian f16 values `v`.
pub fn axpy_f16(a: f32, v: &[u8], out: &mut [f32]) {
    for (i, o) in out.iter_mut().enumerate().take(v.len() / 2) {
        *o += a * f16_at(v, i);
    }
}

/// Exact `Σ a·b` of two int8 vectors.
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
}

/// A Q8_0 row (ggml blocks) against Q8_0 activations `xq` with block scales
/// `xd`: `Σ_b d_w·xd_b · Σ q_w·q_x`, as ggml's `vec_dot_q8_0_q8_0`.
pub fn dot_q8_0(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
    let mut acc = 0f32;
    for ((blk, q), &d) in BlockQ8_0::blocks(row).zip(xq.chunks_exact(32)).zip(xd) {
        let s: i32 = blk
            .qs
            .iter()
            .zip(q)
            .map(|(&w, &x)| w as i32 * x as i32)
            .sum();
        acc += blk.d.get() * d * s as f32;
    }
    acc
}

/// A Q6_K row against Q8_K activations `xq` with block scales `xd` (256
/// values per block): per block `d_w·xd · Σ_p sc_(p/16)·(q6_p - 32)·q8_p`,
/// the integer sum exact, as ggml's `vec_dot_q6_K_q8_K`.
pub fn dot_q6k_q8k(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
    let mut acc = 0f32;
    for (b, x, d) in q6k_blocks(row, xq, xd) {
        let isum: i32 = b
            .values()
            .iter()
            .zip(x)
            .enumerate()
            .map(|(p, (&q, &x))| b.scales[p / 16] as i32 * q as i32 * x as i32)
            .sum();
        acc += d * isum as f32;
    }
    acc
}

/// The blocks of a Q6_K row with their 256 Q8_K values and the product of
/// the two scales (the activations' times the block's `d`), for every Q6_K
/// dot.
pub(super) fn q6k_blocks<'a>(
    row: &'a [u8],
    xq: &'a [i8],
    xd: &'a [f32],
) -> impl Iterator<Item = (&'a BlockQ6K, &'a [i8], f32)> {
    BlockQ6K::blocks(row)
        .zip(xq.chunks_exact(QK_K))
        .zip(xd)
        .map(|((b, x), &dx)| (b, x, dx * b.d.get()))
}

/// `out[j] = k · qs[j]` for the `out.len()` query rows stored back to back.
pub fn dot_f16_group(k: &[u8], qs: &[f32], out: &mut [f32]) {
    let hd = k.len() / 2;
    for (j, o) in out.iter_mut().enumerate() {
        *o = dot_f16(k, &qs[j * hd..(j + 1) * hd]);
    }
}

/// `outs[j*hd + d] = Σ_{s<n} a[j*a_stride + s] * v_s[d]` for `g` heads.
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
    outs[..g * hd].fill(0.0);
    for s in 0..n {
        let row = &v[s * row_stride..s * row_stride + 2 * hd];
        for j in 0..g {
            axpy_f16(a[j * a_stride + s], row, &mut outs[j * hd..(j + 1) * hd]);
        }
    }
}

/// ggml's attention softmax, rounded to f16: `v = f16(exp(v - max) / Σ)`,
/// the sum accumulated in f64.
pub fn softmax_round_f16(v: &mut [f32]) {
    let max = v.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let inv = (1.0 / softmax_exp(v, max)) as f32;
    scale_round_f16(v, inv);
}

/// The softmax's first half: `v = exp(v - max)`, returning `Σ v` in f64.
pub fn softmax_exp(v: &mut [f32], max: f32) -> f64 {
    let mut sum = 0f64;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        sum += *x as f64;
    }
    sum
}

/// The softmax's second half: `v = f16(v * inv)` (rounded to f16, kept as f32).
pub fn scale_round_f16(v: &mut [f32], inv: f32) {
    for x in v.iter_mut() {
        *x = f16::from_f32(*x * inv).to_f32();
    }
}

/// Scaled attention scores of `g` query heads against `n` f16 key rows:
/// `out[j*out_stride + s] = scale * (k_s · qs[j])`, key row `s` being `hd`
/// f16 values at byte `s * row_stride` of `k`.
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
    for s in 0..n {
        let row = &k[s * row_stride..s * row_stride + 2 * hd];
        for j in 0..g {
            out[j * out_stride + s] = dot_f16(row, &qs[j * hd..(j + 1) * hd]) * scale;
        }
    }
}

/// ggml's `make_qx_quants(16, 32, x, L, 1, NULL)`: the scale of a group of
/// 16 values and their levels `L` (0..=63), searching 19 scales near
/// `-32 / max` for the least weighted (`x²`) squared error. Every float
/// operation is in ggml's order, with the multiply-adds fused as clang
/// (bitnet.cpp's compiler; `-ffp-contract=on`) compiles them for a CPU with
/// FMA, so the result is bit-identical to that `llama-quantize`'s.
fn q6k_group_scale(x: &[f32; 16], levels: &mut [u8; 16]) -> f32 {
    let (amax, max) = signed_absmax(x);
    if amax < 1e-15 {
        levels.fill(0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-32, 31);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for &v in x {
            let (l, w) = (level(iscale, v) as f32, v * v);
            sumlx = (w * v).mul_add(l, sumlx);
            suml2 = (w * l).mul_add(l, suml2);
        }
        (sumlx, suml2)
    };
    let mut iscale = -32.0 / max;
    for (o, &v) in levels.iter_mut().zip(x) {
        *o = (level(iscale, v) + 32) as u8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&is| is != 0) {
        iscale = -(0.1f32.mul_add(is as f32, 32.0)) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (o, &v) in levels.iter_mut().zip(x) {
                *o = (level(iscale, v) + 32) as u8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// [`q6k_group_scale`] for the 16 groups of a 256-value block.
pub fn q6k_group_scales(x: &[f32; 256], scales: &mut [f32; 16], levels: &mut [[u8; 16]; 16]) {
    for ((g, l), sc) in x.chunks_exact(16).zip(levels).zip(scales) {
        *sc = q6k_group_scale(g.try_into().unwrap(), l);
    }
}
