//! Causal attention over the f16 KV cache for a batch of tokens.
//!
//! Query heads that share a KV head run together (each key and value row is
//! widened once for all of them), in groups of `sub` heads (a divisor of the
//! sharing group) so that there are enough tasks for every thread. Each task
//! owns its heads' score rows and writes its heads' outputs head-major; they
//! are gathered into token-major order at the end. ggml's rounding points are
//! kept: q is rounded to f16 before q·k, the softmax weights to f16 before
//! they weight V.

use half::f16;

use super::config::Config;
use super::kv_cache::KvCache;
use crate::kernels;
use crate::threadpool::ThreadPool;

/// Buffers of the attention step, allocated once per session.
pub struct Scratch {
    /// One row of `ctx` scores per query head.
    scores: Vec<f32>,
    /// Outputs head-major: `[head][token][head_dim]`.
    heads: Vec<f32>,
}

impl Scratch {
    pub fn new(c: &Config, ctx: usize, max_batch: usize) -> Self {
        Scratch {
            scores: vec![0.0; c.n_heads * ctx],
            heads: vec![0.0; c.n_heads * max_batch * c.head_dim],
        }
    }
}

/// The attention output of `t_n` tokens at positions `pos0..` of `layer`
/// into `att` (token-major, `dim` per token), from their queries `q` (RoPE
/// applied) and the cache (their keys and values already stored).
#[allow(clippy::too_many_arguments)]
pub fn attention(
    pool: &ThreadPool,
    c: &Config,
    cache: &KvCache,
    layer: usize,
    q: &[f32],
    pos0: usize,
    t_n: usize,
    tasks_per_thread: usize,
    scratch: &mut Scratch,
    att: &mut [f32],
) {
    let (hd, dim, ctx) = (c.head_dim, c.dim, cache.ctx());
    let group = c.n_heads / c.n_kv_heads;
    let want = tasks_per_thread * pool.threads();
    let splits = want.div_ceil(c.n_kv_heads).clamp(1, group);
    let widest = group.div_ceil(splits).min(kernels::MAX_GROUP);
    let sub = (1..=widest)
        .rev()
        .find(|s| group.is_multiple_of(*s))
        .unwrap_or(1);
    let scale = 1.0 / (hd as f32).sqrt();
    let scores = &mut scratch.scores[..c.n_heads * ctx];
    let heads = &mut scratch.heads[..c.n_heads * t_n * hd];
    pool.run_chunks2(
        scores,
        sub * ctx,
        heads,
        sub * t_n * hd,
        &|task, sc, out| {
            let h0 = task * sub;
            let (keys, values) = cache.head(layer, h0 / group);
            let mut qbuf = [0f32; 512 * kernels::MAX_GROUP];
            let mut obuf = [0f32; 512 * kernels::MAX_GROUP];
            let (qg, og) = (&mut qbuf[..sub * hd], &mut obuf[..sub * hd]);
            for t in 0..t_n {
                let n = pos0 + t + 1;
                let qt = &q[t * dim + h0 * hd..t * dim + (h0 + sub) * hd];
                for (d, &v) in qg.iter_mut().zip(qt) {
                    *d = f16::from_f32(v).to_f32();
                }
                kernels::attn_scores(keys, 2 * hd, n, qg, sub, hd, scale, sc, ctx);
                for j in 0..sub {
                    kernels::softmax_round_f16(&mut sc[j * ctx..j * ctx + n]);
                }
                kernels::weighted_sum(sc, ctx, sub, values, 2 * hd, n, hd, og);
                for j in 0..sub {
                    out[(j * t_n + t) * hd..(j * t_n + t + 1) * hd]
                        .copy_from_slice(&og[j * hd..(j + 1) * hd]);
                }
            }
        },
    );
    for h in 0..c.n_heads {
        for t in 0..t_n {
            att[t * dim + h * hd..t * dim + (h + 1) * hd]
                .copy_from_slice(&heads[(h * t_n + t) * hd..(h * t_n + t + 1) * hd]);
        }
    }
}
