//! Causal attention over the f16 KV cache for a batch of tokens.
//!
//! Query heads that share a KV head run together (each key and value row is
//! widened once for all of them), in groups of `sub` heads (a divisor of the
//! sharing group) so that there are enough tasks for every thread. Each task
//! owns its heads' score rows and writes its heads' outputs head-major; they
//! are gathered into token-major order at the end. ggml's rounding points are
//! kept: q is rounded to f16 before q·k, the softmax weights to f16 before
//! they weight V.
//!
//! Decoding one token against a long cache on several threads takes another
//! split: each task takes all query heads of one KV head over one piece of
//! the positions, so every key and value row is read once. The softmax then
//! runs in passes (piece maxima, the row maximum, exponentials and piece sums
//! with it, the row sum, weights and partial outputs), and the pieces' sums
//! and outputs are added in position order.

use half::f16;

use super::config::Config;
use super::kv_cache::KvCache;
use crate::kernels;
use crate::threadpool::ThreadPool;

/// Most pieces one head's positions are split into.
const MAX_PIECES: usize = 16;
/// Positions per piece are a multiple of this (so every piece but the last
/// is whole vectors, and the exponentials match the unsplit row's).
const PIECE_ALIGN: usize = 16;
/// Fewest positions per piece.
const MIN_PIECE: usize = 128;

/// Buffers of the attention step, allocated once per session.
pub struct Scratch {
    /// One row of `ctx` scores per query head.
    scores: Vec<f32>,
    /// Outputs head-major: `[head][token][head_dim]`.
    heads: Vec<f32>,
    /// The split decode's scores, `[task][head of the group][piece length]`.
    piece_scores: Vec<f32>,
    /// Per task and head: the piece maximum, then its exponential sum.
    piece_max: Vec<f32>,
    piece_sum: Vec<f64>,
    /// Per task and head: the piece's partial output.
    piece_out: Vec<f32>,
    /// Per head: the row maximum, then `1/Σ`.
    row_max: Vec<f32>,
    row_inv: Vec<f32>,
}

impl Scratch {
    pub fn new(c: &Config, ctx: usize, max_batch: usize) -> Self {
        let pieces = c.n_heads * MAX_PIECES;
        Scratch {
            scores: vec![0.0; c.n_heads * ctx],
            heads: vec![0.0; c.n_heads * max_batch * c.head_dim],
            piece_scores: vec![0.0; c.n_heads * (ctx + MAX_PIECES * PIECE_ALIGN)],
            piece_max: vec![0.0; pieces],
            piece_sum: vec![0.0; pieces],
            piece_out: vec![0.0; pieces * c.head_dim],
            row_max: vec![0.0; c.n_heads],
            row_inv: vec![0.0; c.n_heads],
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
    split_min: usize,
    scratch: &mut Scratch,
    att: &mut [f32],
) {
    let (hd, dim, ctx) = (c.head_dim, c.dim, cache.ctx());
    let group = c.n_heads / c.n_kv_heads;
    let want = tasks_per_thread * pool.threads();
    let n = pos0 + 1;
    if t_n == 1 && pool.threads() > 1 && group <= kernels::MAX_GROUP && n >= split_min {
        let pieces = want
            .div_ceil(c.n_kv_heads)
            .clamp(1, MAX_PIECES)
            .min(n.div_ceil(MIN_PIECE.min(split_min)));
        if pieces > 1 {
            let len = n.div_ceil(pieces).next_multiple_of(PIECE_ALIGN);
            return decode_in_pieces(
                pool,
                c,
                cache,
                layer,
                q,
                n,
                n.div_ceil(len),
                len,
                scratch,
                att,
            );
        }
    }
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

/// Attention of the one token at position `n - 1`, each task taking all
/// query heads of one KV head over one of `pieces` pieces of `len`
/// positions (see the module's notes).
#[allow(clippy::too_many_arguments)]
fn decode_in_pieces(
    pool: &ThreadPool,
    c: &Config,
    cache: &KvCache,
    layer: usize,
    q: &[f32],
    n: usize,
    pieces: usize,
    len: usize,
    scratch: &mut Scratch,
    att: &mut [f32],
) {
    let (hd, g) = (c.head_dim, c.n_heads / c.n_kv_heads);
    let tasks = c.n_kv_heads * pieces;
    let scale = 1.0 / (hd as f32).sqrt();
    let Scratch {
        piece_scores,
        piece_max,
        piece_sum,
        piece_out,
        row_max,
        row_inv,
        ..
    } = scratch;
    let scores = &mut piece_scores[..tasks * g * len];
    // The positions of task `t`'s piece and its KV head.
    let span = |t: usize| {
        let s0 = (t % pieces) * len;
        (t / pieces, s0, (s0 + len).min(n) - s0)
    };

    // 1. Scores of each piece, and their maximum per head.
    pool.run_chunks2(
        scores,
        g * len,
        &mut piece_max[..tasks * g],
        g,
        &|t, sc, mx| {
            let (kvh, s0, m) = span(t);
            let mut qbuf = [0f32; 512 * kernels::MAX_GROUP];
            let qg = &mut qbuf[..g * hd];
            for (d, &v) in qg.iter_mut().zip(&q[kvh * g * hd..(kvh + 1) * g * hd]) {
                *d = f16::from_f32(v).to_f32();
            }
            let keys = &cache.head(layer, kvh).0[2 * s0 * hd..];
            kernels::attn_scores(keys, 2 * hd, m, qg, g, hd, scale, sc, len);
            for (j, x) in mx.iter_mut().enumerate() {
                *x = sc[j * len..j * len + m]
                    .iter()
                    .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            }
        },
    );
    for (h, rm) in row_max.iter_mut().enumerate() {
        let (kvh, j) = (h / g, h % g);
        *rm = (0..pieces).fold(f32::NEG_INFINITY, |a, p| {
            a.max(piece_max[(kvh * pieces + p) * g + j])
        });
    }

    // 2. Exponentials with the row maximum, and their sum per piece.
    let row_max: &[f32] = row_max;
    pool.run_chunks2(
        scores,
        g * len,
        &mut piece_sum[..tasks * g],
        g,
        &|t, sc, sm| {
            let (kvh, _, m) = span(t);
            for (j, x) in sm.iter_mut().enumerate() {
                *x = kernels::softmax_exp(&mut sc[j * len..j * len + m], row_max[kvh * g + j]);
            }
        },
    );
    for (h, inv) in row_inv.iter_mut().enumerate() {
        let (kvh, j) = (h / g, h % g);
        let total: f64 = (0..pieces)
            .map(|p| piece_sum[(kvh * pieces + p) * g + j])
            .sum();
        *inv = (1.0 / total) as f32;
    }

    // 3. Weights rounded to f16, and each piece's weighted sum of V.
    let row_inv: &[f32] = row_inv;
    pool.run_chunks2(
        scores,
        g * len,
        &mut piece_out[..tasks * g * hd],
        g * hd,
        &|t, sc, out| {
            let (kvh, s0, m) = span(t);
            for j in 0..g {
                kernels::scale_round_f16(&mut sc[j * len..j * len + m], row_inv[kvh * g + j]);
            }
            let values = &cache.head(layer, kvh).1[2 * s0 * hd..];
            kernels::weighted_sum(sc, len, g, values, 2 * hd, m, hd, out);
        },
    );

    // 4. The pieces' outputs added in position order.
    for h in 0..c.n_heads {
        let (kvh, j) = (h / g, h % g);
        let o = &mut att[h * hd..(h + 1) * hd];
        o.copy_from_slice(&piece_out[(kvh * pieces * g + j) * hd..(kvh * pieces * g + j + 1) * hd]);
        for p in 1..pieces {
            let part = &piece_out
                [((kvh * pieces + p) * g + j) * hd..((kvh * pieces + p) * g + j + 1) * hd];
            for (a, b) in o.iter_mut().zip(part) {
                *a += b;
            }
        }
    }
}
