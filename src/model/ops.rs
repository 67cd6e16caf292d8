//! The small per-token operations of the forward pass, as ggml computes them.

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

/// NEOX-style RoPE on every head of `x`: pairs (i, i + rope_dim/2), angle
/// `pos * theta^(-2i/rope_dim)` computed as ggml does (iterated product in f32).
pub(super) fn rope(x: &mut [f32], head_dim: usize, rope_dim: usize, pos: usize, theta: f32) {
    let half = rope_dim / 2;
    let theta_scale = theta.powf(-2.0 / rope_dim as f32);
    let mut cs = [(0f32, 0f32); 256];
    let mut angle = pos as f32;
    for c in cs.iter_mut().take(half) {
        *c = (angle.cos(), angle.sin());
        angle *= theta_scale;
    }
    for head in x.chunks_exact_mut(head_dim) {
        for (i, &(cos, sin)) in cs.iter().take(half).enumerate() {
            let (a, b) = (head[i], head[i + half]);
            head[i] = a * cos - b * sin;
            head[i + half] = a * sin + b * cos;
        }
    }
}
