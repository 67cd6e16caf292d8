//! Q8_K: ggml's activations of a K-quant matmul, blocks of [`QK_K`] int8
//! values `q` and an f32 scale `d` (value `i` is `d · q[i]`), kept here as
//! two parallel arrays, which is how the Q6_K dots read them.

use super::{nearest_int, signed_absmax};

/// Values per K-quant block.
pub const QK_K: usize = 256;

/// `x` as Q8_K blocks as ggml's `quantize_row_q8_K_ref`: per 256 values
/// `iscale = -127 / x_m` with `x_m` the value of largest magnitude,
/// `q = min(127, round_half_even(iscale · x))`, `d = 1 / iscale` (f32),
/// into `q` and `d`.
pub fn quantize(x: &[f32], q: &mut [i8], d: &mut [f32]) {
    for ((b, qb), d) in x.chunks(QK_K).zip(q.chunks_mut(QK_K)).zip(d) {
        let (amax, max) = signed_absmax(b);
        if amax == 0.0 {
            qb.fill(0);
            *d = 0.0;
            continue;
        }
        let iscale = -127.0 / max;
        for (o, &v) in qb.iter_mut().zip(b) {
            *o = nearest_int(iscale * v).min(127) as i8;
        }
        *d = 1.0 / iscale;
    }
}
