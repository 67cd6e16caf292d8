//! The small per-token operations of the forward pass, as ggml computes them.

use super::config::Config;

/// ggml's rms_norm: the mean square summed in f64, `1/sqrt(mean + eps)` in f32.
pub(super) fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let sum: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    let mean = (sum / x.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

pub(super) fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let s = rms_scale(x, eps);
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = (v * s) * g;
    }
}

/// [`rmsnorm`] of each `w.len()`-long row of `x` into `out`.
pub(super) fn rmsnorm_rows(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    for (o, r) in out.chunks_exact_mut(w.len()).zip(x.chunks_exact(w.len())) {
        rmsnorm(o, r, w, eps);
    }
}

pub(super) fn rmsnorm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    let s = rms_scale(x, eps);
    for (v, &g) in x.iter_mut().zip(w) {
        *v = (*v * s) * g;
    }
}

/// RoPE as ggml's `rope_ext` computes it without YaRN: the angle of pair
/// `i` at position `p` is `freq_scale · p · base^(-2i/rope_dim) / factor_i`
/// (the power as an iterated product in f32, as ggml's cache), applied to
/// pairs `(i, i + rope_dim/2)` (NEOX, the BitNet graphs) or `(2i, 2i+1)`
/// (Llama).
pub(super) struct Rope {
    neox: bool,
    head_dim: usize,
    rope_dim: usize,
    theta_scale: f32,
    freq_scale: f32,
    factors: Option<Vec<f32>>,
}

impl Rope {
    pub(super) fn new(c: &Config, factors: Option<&[f32]>) -> Rope {
        Rope {
            neox: c.family.rope_neox(),
            head_dim: c.head_dim,
            rope_dim: c.rope_dim,
            theta_scale: c.rope_theta.powf(-2.0 / c.rope_dim as f32),
            freq_scale: c.rope_freq_scale,
            factors: factors.map(<[f32]>::to_vec),
        }
    }

    /// Rotates every head of `x` for position `pos`.
    pub(super) fn apply(&self, x: &mut [f32], pos: usize) {
        let half = self.rope_dim / 2;
        let mut cs = [(0f32, 0f32); 256];
        let mut theta = pos as f32;
        for (i, c) in cs.iter_mut().take(half).enumerate() {
            let ff = self.factors.as_ref().map_or(1.0, |f| f[i]);
            let t = self.freq_scale * (theta / ff);
            *c = (t.cos(), t.sin());
            theta *= self.theta_scale;
        }
        for head in x.chunks_exact_mut(self.head_dim) {
            for (i, &(cos, sin)) in cs.iter().take(half).enumerate() {
                let (a, b) = if self.neox {
                    (i, i + half)
                } else {
                    (2 * i, 2 * i + 1)
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * cos - x1 * sin;
                head[b] = x0 * sin + x1 * cos;
            }
        }
    }
}

/// `x *= s` (a matmul's optional output scale; nothing to do for 1).
pub(super) fn scale(x: &mut [f32], s: f32) {
    if s != 1.0 {
        x.iter_mut().for_each(|v| *v *= s);
    }
}
