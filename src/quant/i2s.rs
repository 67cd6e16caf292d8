//! The I2_S ternary weight format and the I8_S activation format, exactly as
//! bitnet.cpp writes and reads them on x86 (see `docs/i2s-format.md` in the
//! shared docs).
//!
//! Weights are 2-bit codes `0 = -1, 1 = 0, 2 = +1` in blocks of 128 weights
//! stored in 32 bytes: element `32*k + p` of a block sits in byte `p` at bits
//! `(7-2k):(6-2k)`. Blocks run contiguously over the whole tensor, and one f32
//! scale follows the packed data, padded to 32 bytes.

use crate::error::{Error, Result};

/// Weights per I2_S block on x86.
pub const QK_I2_S: usize = 128;
/// Bytes per I2_S block.
pub const BLOCK_BYTES: usize = QK_I2_S / 4;
/// Bytes after the packed codes: the f32 tensor scale plus padding.
pub const TRAILER_BYTES: usize = 32;

/// GGML type ids of the bitnet.cpp fork.
pub const GGML_TYPE_I2_S: u32 = 36;
pub const GGML_TYPE_I8_S: u32 = 37;
pub const GGML_TYPE_TL1: u32 = 38;
pub const GGML_TYPE_TL2: u32 = 39;

/// Code of a zero weight.
pub const CODE_ZERO: u8 = 1;

/// Bytes an I2_S tensor of `n_weights` weights occupies, scale included.
pub fn tensor_bytes(n_weights: usize) -> usize {
    n_weights / 4 + TRAILER_BYTES
}

/// Byte index and bit shift of element `e` of a packed I2_S stream.
#[inline]
pub fn code_position(e: usize) -> (usize, u32) {
    let block = e / QK_I2_S;
    let within = e % QK_I2_S;
    let k = within / 32;
    let p = within % 32;
    (block * BLOCK_BYTES + p, (6 - 2 * k) as u32)
}

/// The 2-bit code of element `e`.
#[inline]
pub fn code_at(packed: &[u8], e: usize) -> u8 {
    let (byte, shift) = code_position(e);
    (packed[byte] >> shift) & 3
}

/// Packs codes (each 0..=3) into the I2_S layout. `codes.len()` must be a
/// multiple of 128 and `out` exactly `codes.len() / 4` bytes.
pub fn pack_codes(codes: &[u8], out: &mut [u8]) -> Result<()> {
    if !codes.len().is_multiple_of(QK_I2_S) {
        return Err(Error::invalid(format!(
            "weight count {} is not a multiple of {QK_I2_S}",
            codes.len()
        )));
    }
    if out.len() != codes.len() / 4 {
        return Err(Error::invalid(format!(
            "packed buffer has {} bytes, {} needed",
            out.len(),
            codes.len() / 4
        )));
    }
    for (block, dst) in codes
        .chunks_exact(QK_I2_S)
        .zip(out.chunks_exact_mut(BLOCK_BYTES))
    {
        for (p, byte) in dst.iter_mut().enumerate() {
            *byte = ((block[p] & 3) << 6)
                | ((block[32 + p] & 3) << 4)
                | ((block[64 + p] & 3) << 2)
                | (block[96 + p] & 3);
        }
    }
    Ok(())
}

/// Unpacks an I2_S stream into one code per byte (`out.len() == packed.len() * 4`).
pub fn unpack_codes(packed: &[u8], out: &mut [u8]) {
    assert_eq!(out.len(), packed.len() * 4, "unpack_codes: size mismatch");
    for (src, block) in packed
        .chunks_exact(BLOCK_BYTES)
        .zip(out.chunks_exact_mut(QK_I2_S))
    {
        for (p, &b) in src.iter().enumerate() {
            block[p] = (b >> 6) & 3;
            block[32 + p] = (b >> 4) & 3;
            block[64 + p] = (b >> 2) & 3;
            block[96 + p] = b & 3;
        }
    }
}

/// The ternary value (-1, 0, +1) of a code; code 3 (never written) maps to +2
/// so that `value == code - 1` holds for every code.
#[inline]
pub fn code_value(code: u8) -> i32 {
    code as i32 - 1
}

/// bitnet.cpp's `quantize_i2_s`: `src` is `nrow * n_per_row` floats that are
/// already ternary times one scale. The tensor scale is `max|w|`; `|w| < 1e-6`
/// gives code 1, otherwise 2 for positive and 0 for negative. Writes the
/// packed codes, the scale and zero padding into `dst` and returns the byte
/// count `nrow*n_per_row/4 + 32`.
pub fn quantize_i2_s(src: &[f32], nrow: usize, n_per_row: usize, dst: &mut [u8]) -> Result<usize> {
    let n = nrow
        .checked_mul(n_per_row)
        .ok_or_else(|| Error::invalid("nrow * n_per_row overflows"))?;
    if n == 0 {
        return Err(Error::invalid("quantize_i2_s: empty tensor"));
    }
    if !n_per_row.is_multiple_of(QK_I2_S) {
        return Err(Error::invalid(format!(
            "quantize_i2_s: n_per_row {n_per_row} is not a multiple of {QK_I2_S}"
        )));
    }
    if src.len() < n {
        return Err(Error::invalid(format!(
            "quantize_i2_s: source has {} values, {n} needed",
            src.len()
        )));
    }
    let total = tensor_bytes(n);
    if dst.len() < total {
        return Err(Error::invalid(format!(
            "quantize_i2_s: destination has {} bytes, {total} needed",
            dst.len()
        )));
    }
    let src = &src[..n];
    let mut max = 0f64;
    for &v in src {
        let a = (v as f64).abs();
        if a > max {
            max = a;
        }
    }
    let (packed, trailer) = dst[..total].split_at_mut(n / 4);
    for (block, out) in src
        .chunks_exact(QK_I2_S)
        .zip(packed.chunks_exact_mut(BLOCK_BYTES))
    {
        let code = |v: f32| -> u8 {
            let v = v as f64;
            if v.abs() < 1e-6 {
                1
            } else if v * max > 0.0 {
                2
            } else {
                0
            }
        };
        for (p, byte) in out.iter_mut().enumerate() {
            *byte = (code(block[p]) << 6)
                | (code(block[32 + p]) << 4)
                | (code(block[64 + p]) << 2)
                | code(block[96 + p]);
        }
    }
    trailer.fill(0);
    trailer[..4].copy_from_slice(&(max as f32).to_le_bytes());
    Ok(total)
}

/// Reads the f32 tensor scale that follows `n_weights / 4` packed bytes.
pub fn read_scale(tensor: &[u8], n_weights: usize) -> Result<f32> {
    let at = n_weights / 4;
    let bytes = tensor.get(at..at + 4).ok_or_else(|| {
        Error::invalid(format!(
            "I2_S tensor of {n_weights} weights needs {} bytes, has {}",
            at + 4,
            tensor.len()
        ))
    })?;
    Ok(f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// An activation row quantized to I8_S: `x ≈ q / scale`, `sum = Σ q`
/// (bitnet.cpp's `quantize_row_i8_s`, computed by
/// `crate::kernels::quantize_activations`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActQuant {
    pub scale: f32,
    pub sum: i32,
}

/// Turns a raw kernel sum into a finished output, as ggml does:
/// `(dot - act_sum) / act_scale * w_scale`.
#[inline]
pub fn finish(dot: i32, act: ActQuant, w_scale: f32) -> f32 {
    (dot - act.sum) as f32 / act.scale * w_scale
}

/// The golden-vector generator of `i2s-format.md`: element `e` has
/// `code = (h >> 16) % 3` and activation `(int8)(((h >> 8) % 255) - 127)`
/// with `h = e * 2654435761 (mod 2^32)`.
pub fn golden_code(e: usize) -> u8 {
    let h = (e as u32).wrapping_mul(2654435761);
    ((h >> 16) % 3) as u8
}

/// Activation of the golden vectors (see [`golden_code`]).
pub fn golden_activation(e: usize) -> i8 {
    let h = (e as u32).wrapping_mul(2654435761);
    (((h >> 8) % 255) as i32 - 127) as i8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(n: usize) -> (Vec<u8>, Vec<i8>) {
        let codes: Vec<u8> = (0..n).map(golden_code).collect();
        let mut packed = vec![0u8; n / 4];
        pack_codes(&codes, &mut packed).unwrap();
        (packed, (0..n).map(golden_activation).collect())
    }

    #[test]
    fn golden_first_bytes() {
        let (packed, _) = golden(128);
        assert_eq!(&packed[..4], &[0x21, 0x1a, 0x91, 0x19]);
    }

    #[test]
    fn golden_sums() {
        for &(n, dot, ysum) in &[
            (128usize, -30i64, -83i64),
            (256, 220, -27),
            (4096, 1322, 87),
            (4224, 1043, 89),
            (6912, 1829, 182),
            (8192, 2121, -160),
        ] {
            let (packed, y) = golden(n);
            let s: i64 = (0..n)
                .map(|e| code_at(&packed, e) as i64 * y[e] as i64)
                .sum();
            let t: i64 = y.iter().map(|&v| v as i64).sum();
            assert_eq!((s, t), (dot, ysum), "n = {n}");
        }
    }

    #[test]
    fn pack_unpack_round_trip() {
        let codes: Vec<u8> = (0..512).map(|e| (e * 7 % 4) as u8).collect();
        let mut packed = vec![0; 128];
        pack_codes(&codes, &mut packed).unwrap();
        let mut back = vec![0; 512];
        unpack_codes(&packed, &mut back);
        assert_eq!(codes, back);
        for (e, &c) in codes.iter().enumerate() {
            assert_eq!(code_at(&packed, e), c);
        }
    }

    #[test]
    fn pack_rejects_bad_sizes() {
        assert!(pack_codes(&[0; 100], &mut [0; 25]).is_err());
        assert!(pack_codes(&[0; 128], &mut [0; 31]).is_err());
    }

    #[test]
    fn quantize_i2_s_matches_contract() {
        let n = 256;
        let w: Vec<f32> = (0..n)
            .map(|e| match golden_code(e) {
                0 => -0.75,
                1 => 0.0,
                _ => 0.75,
            })
            .collect();
        let mut dst = vec![0xEEu8; tensor_bytes(n) + 8];
        let written = quantize_i2_s(&w, 2, 128, &mut dst).unwrap();
        assert_eq!(written, n / 4 + 32);
        for e in 0..n {
            assert_eq!(code_at(&dst, e), golden_code(e));
        }
        assert_eq!(read_scale(&dst, n).unwrap(), 0.75);
        assert!(dst[n / 4 + 4..n / 4 + 32].iter().all(|&b| b == 0));
        assert_eq!(dst[n / 4 + 32], 0xEE, "wrote past the returned size");
        assert!(quantize_i2_s(&w, 2, 100, &mut dst).is_err());
        assert!(quantize_i2_s(&w, 2, 128, &mut [0; 10]).is_err());
    }
}
