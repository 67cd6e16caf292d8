//! Ternary weights from a checkpoint to I2_S: absmean ternarization of
//! master weights (exactly bitnet.cpp's converter's arithmetic), unpacking
//! of transformers' packed `uint8` weights, `llama`'s q/k row permutation,
//! and I2_S packing with one scale per tensor.
//!
//! Every path ends in [`Ternary`]: one 2-bit code per weight, row-major
//! `[rows, cols]` (codes as I2_S numbers them: 0 = -1, 1 = 0, 2 = +1; this is
//! also transformers' packed value + 1), and the tensor's scale.

use half::f16;

use crate::error::Result;
use crate::quant::i2s::{self, CODE_ZERO};

/// A ternary matrix: codes row-major and the tensor scale.
#[derive(Debug, Clone, PartialEq)]
pub struct Ternary {
    pub codes: Vec<u8>,
    pub scale: f32,
}

/// bitnet.cpp's converter's `weight_quant` (and its 2B-4T preprocessing
/// step `quant_weight_fp16`): `s = 1 / max(mean|w|, 1e-5)`, `t =
/// clamp(round_half_even(w · s), -1, 1)`, weight `t / s`, all in f32; then
/// `quantize_i2_s` keeps the sign and `max|t / s|`. With `to_f16` the
/// values `t / s` are cast to f16 first, as that converter does for an F16
/// checkpoint of the `bitnet` family (`result.type(dtype)`).
///
/// The mean is the f32 rounding of the exact mean (summed in f64); torch
/// sums f32 in blocks, so on a large tensor its mean can differ from this
/// one in the last bit, and with it the scale.
pub fn absmean(w: &[f32], to_f16: bool) -> std::result::Result<Ternary, String> {
    let sum: f64 = w.iter().map(|&v| v.abs() as f64).sum();
    if !sum.is_finite() {
        return Err("holds a non-finite value".into());
    }
    let mean = if w.is_empty() {
        0.0
    } else {
        (sum / w.len() as f64) as f32
    };
    let s = 1.0f32 / mean.max(1e-5);
    // clamp(round_half_even(v), -1, 1) without the rounding: ±0.5 rounds
    // to 0 (even), beyond it the sign
    let mut any = false;
    let codes = w
        .iter()
        .map(|&v| {
            let v = v * s;
            let code = if v > 0.5 {
                2
            } else if v < -0.5 {
                0
            } else {
                CODE_ZERO
            };
            any |= code != CODE_ZERO;
            code
        })
        .collect();
    let mut scale = 1.0f32 / s;
    if to_f16 {
        scale = f16::from_f32(scale).to_f32();
    }
    Ok(Ternary {
        codes,
        scale: if any { scale } else { 0.0 },
    })
}

/// Weights that are already ternary times one scale (an offline checkpoint
/// stored in floats): `quantize_i2_s`'s rule, the sign of each weight and
/// `max|w|`, after checking that every nonzero magnitude is that maximum
/// (to 1 part in 1000), so master weights are never silently flattened.
pub fn from_scaled(w: &[f32]) -> std::result::Result<Ternary, String> {
    let max = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    if !max.is_finite() {
        return Err("holds a non-finite value".into());
    }
    let mut codes = Vec::with_capacity(w.len());
    for (i, &v) in w.iter().enumerate() {
        let a = v.abs();
        if a < 1e-6 {
            codes.push(CODE_ZERO);
        } else if (a - max).abs() <= max * 1e-3 {
            codes.push(if v > 0.0 { 2 } else { 0 });
        } else {
            return Err(format!(
                "is not ternary: element {i} is {v} where the weights are 0 or ±{max} (master weights need quantization_mode \"online\")"
            ));
        }
    }
    Ok(Ternary { codes, scale: max })
}

/// transformers' packed ternary weights (`integrations/bitnet.py`,
/// `unpack_weights`): a `[rows / 4, cols]` `uint8` matrix whose byte
/// `(p, c)` holds, at bits `2k..2k+2`, row `k · rows/4 + p` of column `c` as
/// value + 1. Returns the `[rows, cols]` codes; a 3 (value 2) is an error.
pub fn unpack_hf(
    packed: &[u8],
    packed_rows: usize,
    cols: usize,
) -> std::result::Result<Vec<u8>, String> {
    let mut codes = vec![0u8; packed.len() * 4];
    for k in 0..4 {
        let dst = &mut codes[k * packed_rows * cols..(k + 1) * packed_rows * cols];
        for (d, &b) in dst.iter_mut().zip(packed) {
            *d = (b >> (2 * k)) & 3;
        }
    }
    if let Some(i) = codes.iter().position(|&c| c == 3) {
        return Err(format!(
            "packed value 3 (weight +2) at row {}, column {}: not a ternary weight",
            i / cols,
            i % cols
        ));
    }
    Ok(codes)
}

/// llama.cpp's converter's `permute` of q/k rows for the `llama`
/// architecture (HF's rotate-half RoPE to ggml's adjacent pairs): within
/// each of `n_head` heads, row `i · d/2 + j` moves to row `2j + i`.
pub fn permute_rows(codes: &[u8], rows: usize, cols: usize, n_head: usize) -> Vec<u8> {
    let hd = rows / n_head;
    let half = hd / 2;
    let mut out = vec![0u8; codes.len()];
    for h in 0..n_head {
        for i in 0..2 {
            for j in 0..half {
                let from = h * hd + i * half + j;
                let to = h * hd + 2 * j + i;
                out[to * cols..(to + 1) * cols]
                    .copy_from_slice(&codes[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

impl Ternary {
    /// The I2_S tensor bytes: codes packed in blocks of 128, then the scale
    /// and padding.
    pub fn to_i2s(&self) -> Result<Vec<u8>> {
        let n = self.codes.len();
        let mut out = vec![0u8; i2s::tensor_bytes(n)];
        i2s::pack_codes(&self.codes, &mut out[..n / 4])?;
        out[n / 4..n / 4 + 4].copy_from_slice(&self.scale.to_le_bytes());
        Ok(out)
    }

    /// The weights as floats (`t · scale`), for an F32/F16 output file.
    pub fn values(&self) -> impl Iterator<Item = f32> + '_ {
        self.codes
            .iter()
            .map(move |&c| i2s::code_value(c) as f32 * self.scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absmean_is_bitnet_cpps_weight_quant() {
        // mean|w| = 0.25, s = 4: 0.1*4 = 0.4 -> 0, 0.125*4 = 0.5 -> 0 (half
        // to even), 0.375*4 = 1.5 -> 2 -> 1, -0.4*4 = -1.6 -> -1.
        let w = [0.1, 0.125, 0.375, -0.4, 0.0, 0.5];
        let mean = w.iter().map(|v: &f32| v.abs()).sum::<f32>() / 6.0;
        let t0 = absmean(&w, false).unwrap();
        assert_eq!(t0.codes, vec![1, 1, 2, 0, 1, 2]);
        assert_eq!(t0.scale, 1.0 / (1.0 / mean));
        // 1.5 rounds to 2 (even) then clamps; -0.5*s = -0.5 rounds to -0 -> 0
        let t = absmean(&[2.0, -0.5, 1.5, 0.0], false).unwrap();
        assert_eq!(t.codes, vec![2, 1, 2, 1]);
        assert_eq!(
            absmean(&[0.0; 8], false).unwrap().scale,
            0.0,
            "all zero: no scale"
        );
        assert!(absmean(&[1.0, f32::NAN], false).is_err());
        // tiny weights: the mean is clamped to 1e-5
        let t = absmean(&[1e-7, -1.5e-5], false).unwrap();
        assert_eq!(t.codes, vec![1, 0]);
        assert_eq!(t.scale, 1.0 / (1.0 / 1e-5f32));
        let t16 = absmean(&w, true).unwrap();
        assert_eq!(t16.codes, t0.codes);
        assert_eq!(t16.scale, f16::from_f32(t0.scale).to_f32());
    }

    #[test]
    fn absmean_codes_are_torch_round_then_clamp() {
        // the comparison in absmean against the definition, on values
        // around the ±0.5 ties and beyond
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut w: Vec<f32> = (0..100_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
            })
            .collect();
        w.extend([0.5, -0.5, 0.25, -0.25, 1.5, -1.5, 0.0, -0.0]);
        let t = absmean(&w, false).unwrap();
        let mean = (w.iter().map(|v| v.abs() as f64).sum::<f64>() / w.len() as f64) as f32;
        let s = 1.0 / mean;
        for (&v, &c) in w.iter().zip(&t.codes) {
            let want = (v * s).round_ties_even().clamp(-1.0, 1.0) as i32 + 1;
            assert_eq!(c as i32, want, "{v}");
        }
    }

    #[test]
    fn absmean_of_ternary_times_c_keeps_the_signs_and_scales_by_the_density() {
        // what bitnet.cpp's converter does to weights that are already
        // ternary: mean = c · (nonzero fraction), so the scale shrinks
        let w = [0.5f32, -0.5, 0.0, 0.5, 0.0];
        let t = absmean(&w, false).unwrap();
        assert_eq!(t.codes, vec![2, 0, 1, 2, 1]);
        assert!((t.scale - 0.3).abs() < 1e-6);
    }

    #[test]
    fn from_scaled_takes_signs_and_max_and_refuses_master_weights() {
        let t = from_scaled(&[0.5, -0.5, 0.0, 1e-7]).unwrap();
        assert_eq!(t.codes, vec![2, 0, 1, 1]);
        assert_eq!(t.scale, 0.5);
        let e = from_scaled(&[0.5, 0.2]).unwrap_err();
        assert!(e.contains("not ternary") && e.contains("element 1"), "{e}");
        assert!(from_scaled(&[f32::NAN]).is_err());
    }

    #[test]
    fn unpack_is_transformers_unpack_weights() {
        // the docstring example of transformers' unpack_weights
        let packed = [0b1010_0001u8, 0b0001_1000, 0b1001_0000, 0b0000_1010];
        let codes = unpack_hf(&packed, 2, 2).unwrap();
        let values: Vec<i32> = codes.iter().map(|&c| c as i32 - 1).collect();
        assert_eq!(
            values,
            vec![0, -1, -1, 1, -1, 1, -1, 1, 1, 0, 0, -1, 1, -1, 1, -1]
        );
        assert!(unpack_hf(&[0b11], 1, 1).unwrap_err().contains("row 0"));
    }

    #[test]
    fn permute_matches_llama_cpps_reshape_swapaxes() {
        // 2 heads of dim 4, one column: rows 0..8
        let codes: Vec<u8> = (0..8).collect();
        // head 0: [0,1 | 2,3] -> 0,2,1,3 ; head 1: 4,6,5,7
        assert_eq!(permute_rows(&codes, 8, 1, 2), vec![0, 2, 1, 3, 4, 6, 5, 7]);
        let wide: Vec<u8> = (0..16).collect();
        assert_eq!(
            permute_rows(&wide, 4, 4, 1),
            vec![0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15]
        );
    }

    #[test]
    fn i2s_round_trip() {
        let codes: Vec<u8> = (0..256).map(|i| (i * 7 % 3) as u8).collect();
        let t = Ternary { codes, scale: 0.75 };
        let bytes = t.to_i2s().unwrap();
        assert_eq!(bytes.len(), 64 + 32);
        // the same bytes bitnet.cpp's quantize_i2_s writes for t · scale
        let f: Vec<f32> = t.values().collect();
        let mut q = vec![0u8; bytes.len()];
        i2s::quantize_i2_s(&f, 2, 128, &mut q).unwrap();
        assert_eq!(q, bytes);
    }
}
