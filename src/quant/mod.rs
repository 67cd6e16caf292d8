//! The quantization formats, each block format defined once and typed: its
//! `#[repr(C)]` layout (sizes asserted at compile time), how it reads back
//! to floats and how floats become it, bit for bit as ggml does. The kernels
//! (`crate::kernels`) depend on these definitions and compute the dots; no
//! format depends on a kernel.
//!
//! - [`q8_0`]: Q8_0, 32 int8 values and an f16 scale (a head type, and
//!   ggml's activation format for a Q8_0 matmul).
//! - [`q8k`]: Q8_K, ggml's activations of a K-quant matmul: 256 int8 values
//!   and an f32 scale (kept as two parallel arrays, as the dots read them).
//! - [`q6k`]: Q6_K, 256 six-bit values with 16 int8 group scales and an
//!   f16 super-scale (a head type; `--q6k-head` makes one at load).
//!
//! - [`i2s`]: bitnet.cpp's ternary I2_S weights (2-bit codes in 32-byte
//!   blocks of 128, one f32 scale per tensor) and its I8_S activations.
//! - [`tl3`]: TL3, the load-time ternary format of 1.67 bits a weight made
//!   from I2_S (three weights per 4-bit index and sign bit), read through
//!   table lookups.

pub mod i2s;
pub mod q6k;
pub mod q8_0;
pub mod q8k;
pub mod tl3;

use half::f16;

/// A block format: `VALUES` values in `size_of::<Self>()` bytes, with an
/// alignment of 1, so any run of bytes of whole blocks (a row of a matrix
/// in a GGUF map, a copy in a `Vec<u8>`) is a slice of blocks.
pub trait Block: Sized + Copy + 'static {
    /// ggml's name of the type.
    const NAME: &'static str;
    /// Values per block.
    const VALUES: usize;
    /// Bytes per block.
    const BYTES: usize = std::mem::size_of::<Self>();

    /// The block's `VALUES` values as floats into `out`.
    fn dequantize(&self, out: &mut [f32]);

    /// `bytes` as blocks (`None` unless a whole number of them).
    fn slice(bytes: &[u8]) -> Option<&[Self]> {
        if !bytes.len().is_multiple_of(Self::BYTES) || std::mem::align_of::<Self>() != 1 {
            return None;
        }
        // SAFETY: `Self` is a `#[repr(C)]` struct of byte arrays (alignment
        // 1, asserted above; every bit pattern valid) and the length is a
        // whole number of blocks.
        Some(unsafe {
            std::slice::from_raw_parts(bytes.as_ptr() as *const Self, bytes.len() / Self::BYTES)
        })
    }

    /// `bytes` as mutable blocks (`None` unless a whole number of them).
    fn slice_mut(bytes: &mut [u8]) -> Option<&mut [Self]> {
        if !bytes.len().is_multiple_of(Self::BYTES) || std::mem::align_of::<Self>() != 1 {
            return None;
        }
        // SAFETY: as in `slice`, and the borrow is exclusive.
        Some(unsafe {
            std::slice::from_raw_parts_mut(
                bytes.as_mut_ptr() as *mut Self,
                bytes.len() / Self::BYTES,
            )
        })
    }

    /// The block at the start of `bytes`.
    ///
    /// # Panics
    /// If `bytes` is shorter than a block.
    fn first(bytes: &[u8]) -> &Self {
        &Self::slice(&bytes[..Self::BYTES]).expect("one whole block")[0]
    }

    /// The whole blocks at the start of `bytes` (a trailing part ignored).
    fn blocks(bytes: &[u8]) -> std::slice::Iter<'_, Self> {
        let n = bytes.len() / Self::BYTES * Self::BYTES;
        Self::slice(&bytes[..n]).expect("whole blocks").iter()
    }

    /// A row of whole blocks (`row.len()` a multiple of `VALUES`) into `out`.
    fn dequantize_row(row: &[Self], out: &mut [f32]) {
        for (b, o) in row.iter().zip(out.chunks_exact_mut(Self::VALUES)) {
            b.dequantize(o);
        }
    }
}

/// An f16 stored as its two little-endian bytes (alignment 1).
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct F16Le(pub [u8; 2]);

impl F16Le {
    pub fn get(self) -> f32 {
        f16::from_bits(u16::from_le_bytes(self.0)).to_f32()
    }
    pub fn new(v: f16) -> F16Le {
        F16Le(v.to_bits().to_le_bytes())
    }
}

/// ggml's `nearest_int`, by its own trick (no libm call): round half to
/// even for |v| <= 4194303, and beyond that the same value ggml gets.
pub fn nearest_int(v: f32) -> i32 {
    ((v + 12582912.0).to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// The largest magnitude of `x` and the value that has it (the first one),
/// as ggml's quantizers find them: `(0, 0)` when every value is 0.
pub fn signed_absmax<'a>(x: impl IntoIterator<Item = &'a f32>) -> (f32, f32) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
}
