//! A [`Session`]: the KV cache and every per-token buffer, allocated once,
//! and the forward pass over them, step by step as llama2.c's `run.c` reads:
//! embed the tokens, then per layer an attention block and a feed-forward
//! block, then the final norm and the LM head for the tokens whose logits
//! are wanted.

use std::time::{Duration, Instant};

use half::f16;

use super::attention::{self, Scratch};
use super::kv_cache::KvCache;
use super::ops::{rmsnorm, rmsnorm_inplace, rmsnorm_rows, scale};
use super::Model;
use crate::embedding::Activations;
use crate::error::{Error, Result};
use crate::matmul::{self, ActBatch};
use crate::threadpool::ThreadPool;

/// Where the forward passes spent their time (accumulated while profiling is
/// on; see [`Session::set_profiling`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct Timings {
    /// Activation quantization and the ternary matmuls.
    pub ternary: Duration,
    /// The final norm and the LM head.
    pub head: Duration,
    /// RoPE, the KV cache stores and attention.
    pub attention: Duration,
    /// Everything else (embedding, norms, residuals, activation function).
    pub other: Duration,
}

/// Inference state: KV cache and every per-token buffer, allocated once.
pub struct Session<'m> {
    pub model: &'m Model,
    pool: ThreadPool,
    max_batch: usize,
    pos: usize,
    cache: KvCache,
    /// Residual stream, `dim` per token of the batch.
    x: Vec<f32>,
    /// Normed input of a block.
    xb: Vec<f32>,
    /// Output of a block's last matmul.
    xb2: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    attn_scratch: Scratch,
    /// Gate and up projections, `ffn_dim` per token.
    hb: Vec<f32>,
    hb2: Vec<f32>,
    hidden: Vec<f32>,
    hidden_q: Vec<i8>,
    /// The hidden state converted for the LM head's type.
    head_acts: Activations,
    logits: Vec<f32>,
    acts_dim: ActBatch,
    acts_ffn: ActBatch,
    /// Attention tasks wanted per thread (tests lower it to get whole groups).
    pub(super) attn_tasks_per_thread: usize,
    /// Cache length from which a decoded token's attention is split over
    /// positions (tests lower it).
    pub(super) attn_split_min: usize,
    profiling: bool,
    pub timings: Timings,
}

impl<'m> Session<'m> {
    /// A session with a KV cache of `ctx` tokens (0: the model's context
    /// length), processing prompts in batches of up to `max_batch` tokens,
    /// on `threads` threads (0: all cores).
    pub fn new(model: &'m Model, ctx: usize, max_batch: usize, threads: usize) -> Result<Self> {
        let c = &model.config;
        let ctx = if ctx == 0 { c.ctx_len } else { ctx };
        let b = max_batch.max(1);
        let zeros = |n: usize| vec![0f32; n];
        Ok(Session {
            model,
            pool: ThreadPool::new(threads),
            max_batch: b,
            pos: 0,
            cache: KvCache::new(c.n_layers, c.n_kv_heads, ctx, c.head_dim)?,
            x: zeros(b * c.dim),
            xb: zeros(b * c.dim),
            xb2: zeros(b * c.dim),
            q: zeros(b * c.dim),
            k: zeros(b * c.kv_dim()),
            v: zeros(b * c.kv_dim()),
            att: zeros(b * c.dim),
            attn_scratch: Scratch::new(c, ctx, b),
            hb: zeros(b * c.ffn_dim),
            hb2: zeros(b * c.ffn_dim),
            hidden: zeros(c.dim),
            hidden_q: vec![0; c.dim],
            head_acts: Activations::new(c.dim),
            logits: zeros(c.vocab_size),
            acts_dim: ActBatch::new(c.dim, b),
            acts_ffn: ActBatch::new(c.ffn_dim, b),
            attn_tasks_per_thread: 4,
            attn_split_min: 512,
            profiling: false,
            timings: Timings::default(),
        })
    }

    /// Tokens in the KV cache.
    pub fn pos(&self) -> usize {
        self.pos
    }
    pub fn ctx(&self) -> usize {
        self.cache.ctx()
    }
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }
    /// Forgets the cache from position `pos` on.
    pub fn truncate(&mut self, pos: usize) {
        self.pos = self.pos.min(pos);
    }
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Turns the per-phase timing into [`Session::timings`] on or off (off
    /// by default: then the forward pass reads no clock).
    pub fn set_profiling(&mut self, on: bool) {
        self.profiling = on;
    }

    /// Fills the KV cache up to position `n` with arbitrary values, for
    /// benchmarks of decoding at depth (attention costs the same whatever
    /// the cached values are).
    pub fn fill_cache_for_benchmark(&mut self, n: usize) -> Result<()> {
        if n > self.ctx() {
            return Err(Error::invalid(format!(
                "depth {n} exceeds the context of {}",
                self.ctx()
            )));
        }
        self.cache.fill_arbitrary(n);
        self.pos = n;
        Ok(())
    }

    /// Feeds `tokens` at the current position and returns the logits after
    /// the last one.
    pub fn forward(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        self.feed(tokens, false, &mut |_, _| {})?;
        Ok(&self.logits)
    }

    /// Feeds `tokens`, calling `each(i, logits)` after every token `i`
    /// (teacher forcing: the logits predict token `i + 1`).
    pub fn forward_all(
        &mut self,
        tokens: &[u32],
        each: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<()> {
        self.feed(tokens, true, each)
    }

    fn feed(
        &mut self,
        tokens: &[u32],
        all: bool,
        each: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::invalid("no tokens to process (empty prompt)"));
        }
        if self.pos + tokens.len() > self.ctx() {
            return Err(Error::invalid(format!(
                "{} tokens do not fit: {} already in a context of {}",
                tokens.len(),
                self.pos,
                self.ctx()
            )));
        }
        let vocab = self.model.config.vocab_size as u32;
        if let Some(&bad) = tokens.iter().find(|&&t| t >= vocab) {
            return Err(Error::invalid(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        let mut done = 0;
        for chunk in tokens.chunks(self.max_batch) {
            self.batch(chunk);
            for t in 0..chunk.len() {
                if all || done + t == tokens.len() - 1 {
                    self.logits_for(t);
                    each(done + t, &self.logits);
                }
            }
            done += chunk.len();
        }
        Ok(())
    }

    /// The clock, when profiling.
    fn clock(&self) -> Option<Instant> {
        self.profiling.then(Instant::now)
    }

    /// Time since `start` (zero when not profiling).
    fn since(start: Option<Instant>) -> Duration {
        start.map_or(Duration::ZERO, |s| s.elapsed())
    }

    /// The transformer over one batch of tokens at the current position.
    fn batch(&mut self, tokens: &[u32]) {
        let start = self.clock();
        let before = self.timings;
        let dim = self.model.config.dim;
        let embed = self.model.embed_matrix();
        for (t, &tok) in tokens.iter().enumerate() {
            embed.dequantize_row(tok as usize, &mut self.x[t * dim..(t + 1) * dim]);
        }
        for l in 0..self.model.config.n_layers {
            self.attention_block(l, tokens.len());
            self.ffn_block(l, tokens.len());
        }
        self.pos += tokens.len();
        let spent =
            (self.timings.ternary - before.ternary) + (self.timings.attention - before.attention);
        self.timings.other += Self::since(start).saturating_sub(spent);
    }

    /// `x += Wo · attention(rope(Wq xn), rope(Wk xn), Wv xn)` with
    /// `xn = rmsnorm(x)`, the attention output rmsnormed before `Wo` in the
    /// BitNet families (each product times its `*.scale` where a file has one).
    fn attention_block(&mut self, l: usize, t_n: usize) {
        let m = self.model;
        let (c, layer) = (&m.config, &m.layers[l]);
        let (dim, kv) = (c.dim, c.kv_dim());
        rmsnorm_rows(
            &mut self.xb[..t_n * dim],
            &self.x[..t_n * dim],
            &layer.attn_norm,
            c.eps,
        );

        let s = self.clock();
        self.acts_dim.quantize(&self.xb[..t_n * dim]);
        matmul::matmul_many(
            &mut [
                (&layer.wq, &mut self.q[..]),
                (&layer.wk, &mut self.k[..]),
                (&layer.wv, &mut self.v[..]),
            ],
            &self.acts_dim,
            &self.pool,
        );
        scale(&mut self.q[..t_n * dim], layer.scales.q);
        scale(&mut self.k[..t_n * kv], layer.scales.k);
        scale(&mut self.v[..t_n * kv], layer.scales.v);
        self.timings.ternary += Self::since(s);

        let s = self.clock();
        for t in 0..t_n {
            let p = self.pos + t;
            m.rope.apply(&mut self.q[t * dim..(t + 1) * dim], p);
            m.rope.apply(&mut self.k[t * kv..(t + 1) * kv], p);
            self.cache.store(
                l,
                p,
                &self.k[t * kv..(t + 1) * kv],
                &self.v[t * kv..(t + 1) * kv],
            );
        }
        attention::attention(
            &self.pool,
            c,
            &self.cache,
            l,
            &self.q,
            self.pos,
            t_n,
            self.attn_tasks_per_thread,
            self.attn_split_min,
            &mut self.attn_scratch,
            &mut self.att,
        );
        self.timings.attention += Self::since(s);

        if let Some(w) = &layer.attn_sub_norm {
            for a in self.att[..t_n * dim].chunks_exact_mut(dim) {
                rmsnorm_inplace(a, w, c.eps);
            }
        }
        let s = self.clock();
        self.acts_dim.quantize(&self.att[..t_n * dim]);
        matmul::matmul(&layer.wo, &self.acts_dim, &mut self.xb2, &self.pool);
        scale(&mut self.xb2[..t_n * dim], layer.scales.o);
        self.timings.ternary += Self::since(s);
        for (x, d) in self.x[..t_n * dim].iter_mut().zip(&self.xb2) {
            *x += d;
        }
    }

    /// `x += Wdown · rmsnorm(act(Wgate xn) ⊙ Wup xn)` with `xn = rmsnorm(x)`:
    /// `act` is relu² in BitNet b1.58 and SiLU otherwise; the rmsnorm before
    /// `Wdown` is the BitNet families' sub-norm.
    fn ffn_block(&mut self, l: usize, t_n: usize) {
        let m = self.model;
        let (c, layer) = (&m.config, &m.layers[l]);
        let (dim, ff) = (c.dim, c.ffn_dim);
        rmsnorm_rows(
            &mut self.xb[..t_n * dim],
            &self.x[..t_n * dim],
            &layer.ffn_norm,
            c.eps,
        );

        let s = self.clock();
        self.acts_dim.quantize(&self.xb[..t_n * dim]);
        matmul::matmul_many(
            &mut [
                (&layer.w_gate, &mut self.hb[..]),
                (&layer.w_up, &mut self.hb2[..]),
            ],
            &self.acts_dim,
            &self.pool,
        );
        scale(&mut self.hb[..t_n * ff], layer.scales.gate);
        scale(&mut self.hb2[..t_n * ff], layer.scales.up);
        self.timings.ternary += Self::since(s);

        let gates = self.hb[..t_n * ff].iter_mut().zip(&self.hb2);
        if c.family.relu_squared() {
            for (g, u) in gates {
                let r = g.max(0.0);
                *g = r * r * u;
            }
        } else {
            for (g, u) in gates {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
        }
        if let Some(w) = &layer.ffn_sub_norm {
            for h in self.hb[..t_n * ff].chunks_exact_mut(ff) {
                rmsnorm_inplace(h, w, c.eps);
            }
        }
        let s = self.clock();
        self.acts_ffn.quantize(&self.hb[..t_n * ff]);
        matmul::matmul(&layer.w_down, &self.acts_ffn, &mut self.xb2, &self.pool);
        scale(&mut self.xb2[..t_n * dim], layer.scales.down);
        self.timings.ternary += Self::since(s);
        for (x, d) in self.x[..t_n * dim].iter_mut().zip(&self.xb2) {
            *x += d;
        }
    }

    /// Logits for token `t` of the last batch into `self.logits`: the final
    /// rmsnorm, then the LM head (which converts the hidden state as ggml
    /// does for its type: f16 rounding for an F16 head).
    fn logits_for(&mut self, t: usize) {
        let s = self.clock();
        let m = self.model;
        let dim = m.config.dim;
        rmsnorm(
            &mut self.hidden,
            &self.x[t * dim..(t + 1) * dim],
            &m.output_norm,
            m.config.eps,
        );
        match &m.q8_head {
            Some(h) => {
                for h in self.hidden.iter_mut() {
                    *h = f16::from_f32(*h).to_f32();
                }
                h.matvec(
                    &self.hidden,
                    &mut self.hidden_q,
                    &mut self.logits,
                    &self.pool,
                )
            }
            None => m.head_matrix().matvec(
                &self.hidden,
                &mut self.head_acts,
                &mut self.logits,
                &self.pool,
            ),
        }
        self.timings.head += Self::since(s);
    }
}
