//! Q8_0: blocks of 32 int8 values `q` and an f16 scale `d`; value `i` is
//! `d · q[i]`.

use half::f16;

use super::{nearest_int, Block, F16Le};

/// One Q8_0 block as ggml stores it (`block_q8_0`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockQ8_0 {
    pub d: F16Le,
    pub qs: [i8; 32],
}

const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

impl Block for BlockQ8_0 {
    const NAME: &'static str = "Q8_0";
    const VALUES: usize = 32;

    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.get();
        for (o, &q) in out[..32].iter_mut().zip(&self.qs) {
            *o = d * q as f32;
        }
    }
}

impl BlockQ8_0 {
    /// A block of 32 weights as ggml's `quantize_row_q8_0_ref` writes it
    /// (what `llama-quantize` stores): `d = max|x| / 127` as f16,
    /// `q = round_half_away(x / d)` with the f32 `d`.
    pub fn from_f32_ref(x: &[f32]) -> BlockQ8_0 {
        let amax = x[..32].iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0i8; 32];
        for (q, &v) in qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
        }
        BlockQ8_0 {
            d: F16Le::new(f16::from_f32(d)),
            qs,
        }
    }
}

/// `x` as Q8_0 activations the way ggml's x86 `quantize_row_q8_0` makes
/// them: per 32 values `d = max|x| / 127` (kept as f16, which the dot
/// uses), `q = round_half_even(x · 127/max|x|)`, into `q` and `d`.
pub fn quantize(x: &[f32], q: &mut [i8], d: &mut [f32]) {
    for ((b, qb), d) in x.chunks(32).zip(q.chunks_mut(32)).zip(d) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        for (o, &v) in qb.iter_mut().zip(b) {
            *o = nearest_int(v * id) as i8;
        }
        *d = f16::from_f32(amax / 127.0).to_f32();
    }
}
