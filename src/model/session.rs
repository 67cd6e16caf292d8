//! A [`Session`]: the KV cache and every per-token buffer, allocated once,
//! and the forward pass over them, step by step as llama2.c's `run.c` reads:
//! embed the tokens, then per layer an attention block and a feed-forward
//! block, then the final norm and the LM head for the tokens whose logits
//! are wanted.

use std::time::{Duration, Instant};

use super::attention::{self, Scratch};
use super::head::HeadScratch;
use super::kv_cache::KvCache;
use super::ops::{rmsnorm, rmsnorm_inplace, rmsnorm_rows, scale};
use super::Model;
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

/// One sequence of a session: its KV cache and how many tokens it holds.
struct Slot {
    cache: KvCache,
    pos: usize,
}

/// One sequence's part of a batched step (see [`Session::forward_segments`]):
/// `tokens` fed to slot `slot` at its current position; the logits after
/// its last token, or after every one of them with `all_logits`.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    pub slot: usize,
    pub tokens: &'a [u32],
    pub all_logits: bool,
}

/// Inference state: KV caches and every per-token buffer, allocated once.
/// A session holds one sequence, or several ([`Session::with_slots`]) whose
/// tokens share the matmuls of each step (continuous batching); the
/// single-sequence methods work on slot 0.
pub struct Session<'m> {
    pub model: &'m Model,
    pool: ThreadPool,
    max_batch: usize,
    slots: Vec<Slot>,
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
    /// The final hidden states of the rows whose logits are wanted, and
    /// their logits, `vocab` per row (one row, grown for more).
    hidden: Vec<f32>,
    logits: Vec<f32>,
    head_scratch: HeadScratch,
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
        Self::with_slots(model, ctx, max_batch, threads, 1)
    }

    /// A session of `n_slots` sequences, each with a KV cache of `ctx`
    /// tokens (0: the model's context length); one step processes up to
    /// `max_batch` tokens over all of them.
    pub fn with_slots(
        model: &'m Model,
        ctx: usize,
        max_batch: usize,
        threads: usize,
        n_slots: usize,
    ) -> Result<Self> {
        let c = &model.config;
        let ctx = if ctx == 0 { c.ctx_len } else { ctx };
        let b = max_batch.max(1);
        if n_slots == 0 {
            return Err(Error::invalid("a session needs at least one slot"));
        }
        let slots = (0..n_slots)
            .map(|_| {
                Ok(Slot {
                    cache: KvCache::new(c.n_layers, c.n_kv_heads, ctx, c.head_dim)?,
                    pos: 0,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let zeros = |n: usize| vec![0f32; n];
        Ok(Session {
            model,
            pool: ThreadPool::new(threads),
            max_batch: b,
            slots,
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
            logits: zeros(c.vocab_size),
            head_scratch: HeadScratch::new(c.dim),
            acts_dim: ActBatch::padded(c.dim, c.dim.next_multiple_of(128), b),
            // (the down projection's rows may be padded to a multiple of 128)
            acts_ffn: ActBatch::padded(c.ffn_dim, c.ffn_dim.next_multiple_of(128), b),
            attn_tasks_per_thread: 4,
            attn_split_min: 512,
            profiling: false,
            timings: Timings::default(),
        })
    }

    /// Tokens in the KV cache (of slot 0).
    pub fn pos(&self) -> usize {
        self.slots[0].pos
    }
    /// The context (KV cache positions) of each slot.
    pub fn ctx(&self) -> usize {
        self.slots[0].cache.ctx()
    }
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }
    /// Most tokens one step processes.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }
    /// Forgets the cache from position `pos` on.
    pub fn truncate(&mut self, pos: usize) {
        self.slots[0].pos = self.slots[0].pos.min(pos);
    }
    pub fn reset(&mut self) {
        self.slots[0].pos = 0;
    }
    /// Number of sequences.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }
    /// Tokens in slot `s`'s cache.
    pub fn slot_pos(&self, s: usize) -> usize {
        self.slots[s].pos
    }
    /// Empties slot `s` (a new sequence starts there).
    pub fn reset_slot(&mut self, s: usize) {
        self.slots[s].pos = 0;
    }
    /// Forgets slot `s`'s cache from position `pos` on (what is before it
    /// is kept: a sequence that starts with the same tokens goes on there).
    pub fn truncate_slot(&mut self, s: usize, pos: usize) {
        self.slots[s].pos = self.slots[s].pos.min(pos);
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
        self.slots[0].cache.fill_arbitrary(n);
        self.slots[0].pos = n;
        Ok(())
    }

    /// Feeds `tokens` at the current position and returns the logits after
    /// the last one.
    pub fn forward(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        self.feed(tokens, false, &mut |_, _| {})?;
        Ok(&self.logits[..self.model.config.vocab_size])
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
        self.check_fits(0, tokens)?;
        let mut done = 0;
        for chunk in tokens.chunks(self.max_batch) {
            self.batch(&[(0, chunk.len())], chunk);
            let vocab = self.model.config.vocab_size;
            for t in 0..chunk.len() {
                if all || done + t == tokens.len() - 1 {
                    self.final_logits(&[t]);
                    each(done + t, &self.logits[..vocab]);
                }
            }
            done += chunk.len();
        }
        Ok(())
    }

    /// Whether `tokens` fit in slot `slot` and are in the vocabulary.
    fn check_fits(&self, slot: usize, tokens: &[u32]) -> Result<()> {
        let pos = self.slots[slot].pos;
        if pos + tokens.len() > self.ctx() {
            return Err(Error::invalid(format!(
                "{} tokens do not fit: {pos} already in a context of {}",
                tokens.len(),
                self.ctx()
            )));
        }
        let vocab = self.model.config.vocab_size as u32;
        if let Some(&bad) = tokens.iter().find(|&&t| t >= vocab) {
            return Err(Error::invalid(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        Ok(())
    }

    /// Feeds several sequences in one step: segment `i`'s tokens go to its
    /// slot at that slot's position, all rows sharing each matmul, and
    /// `each(i, t, logits)` gets the logits after segment `i`'s token `t`:
    /// its last one, or each of them in order with `all_logits`.
    /// A segment's result does not depend on the others in the step (the
    /// ternary products are exact integers, attention is per sequence).
    /// At most [`Session::max_batch`] tokens in all; each slot once.
    pub fn forward_segments(
        &mut self,
        segments: &[Segment],
        each: &mut dyn FnMut(usize, usize, &[f32]),
    ) -> Result<()> {
        let total: usize = segments.iter().map(|s| s.tokens.len()).sum();
        if total > self.max_batch {
            return Err(Error::invalid(format!(
                "{total} tokens in one step exceed the batch of {}",
                self.max_batch
            )));
        }
        for (i, seg) in segments.iter().enumerate() {
            if seg.slot >= self.slots.len() {
                return Err(Error::invalid(format!("no slot {}", seg.slot)));
            }
            if seg.tokens.is_empty() {
                return Err(Error::invalid("a segment without tokens"));
            }
            if segments[..i].iter().any(|o| o.slot == seg.slot) {
                return Err(Error::invalid(format!(
                    "slot {} twice in one step",
                    seg.slot
                )));
            }
            self.check_fits(seg.slot, seg.tokens)?;
        }
        if segments.is_empty() {
            return Ok(());
        }
        let mut tokens = Vec::with_capacity(total);
        let mut layout = Vec::with_capacity(segments.len());
        for seg in segments {
            tokens.extend_from_slice(seg.tokens);
            layout.push((seg.slot, seg.tokens.len()));
        }
        self.batch(&layout, &tokens);
        // The LM head once for every row wanted: each head row is read once
        // for all of them (the results are those of a lone row).
        let mut rows = Vec::with_capacity(segments.len());
        let mut wanted = Vec::with_capacity(segments.len());
        let mut r0 = 0;
        for (i, seg) in segments.iter().enumerate() {
            let n = seg.tokens.len();
            let first = if seg.all_logits { 0 } else { n - 1 };
            for t in first..n {
                rows.push(r0 + t);
                wanted.push((i, t));
            }
            r0 += n;
        }
        self.final_logits(&rows);
        let vocab = self.model.config.vocab_size;
        for (k, &(i, t)) in wanted.iter().enumerate() {
            each(i, t, &self.logits[k * vocab..(k + 1) * vocab]);
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

    /// The transformer over one batch of tokens: `layout` lists (slot,
    /// count) of consecutive rows, each run fed at its slot's position.
    fn batch(&mut self, layout: &[(usize, usize)], tokens: &[u32]) {
        let start = self.clock();
        let before = self.timings;
        let dim = self.model.config.dim;
        let embed = self.model.embed_matrix();
        for (t, &tok) in tokens.iter().enumerate() {
            embed.dequantize_row(tok as usize, &mut self.x[t * dim..(t + 1) * dim]);
        }
        for l in 0..self.model.config.n_layers {
            self.attention_block(l, layout, tokens.len());
            self.ffn_block(l, tokens.len());
        }
        for &(slot, n) in layout {
            self.slots[slot].pos += n;
        }
        let spent =
            (self.timings.ternary - before.ternary) + (self.timings.attention - before.attention);
        self.timings.other += Self::since(start).saturating_sub(spent);
    }

    /// `x += Wo · attention(rope(Wq xn), rope(Wk xn), Wv xn)` with
    /// `xn = rmsnorm(x)`, the attention output rmsnormed before `Wo` in the
    /// BitNet families (each product times its `*.scale` where a file has one).
    fn attention_block(&mut self, l: usize, layout: &[(usize, usize)], t_n: usize) {
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
        let mut r0 = 0;
        for &(slot, n) in layout {
            let slot = &mut self.slots[slot];
            for t in r0..r0 + n {
                let p = slot.pos + t - r0;
                m.rope.apply(&mut self.q[t * dim..(t + 1) * dim], p);
                m.rope.apply(&mut self.k[t * kv..(t + 1) * kv], p);
                slot.cache.store(
                    l,
                    p,
                    &self.k[t * kv..(t + 1) * kv],
                    &self.v[t * kv..(t + 1) * kv],
                );
            }
            attention::attention(
                &self.pool,
                c,
                &slot.cache,
                l,
                &self.q[r0 * dim..],
                slot.pos,
                n,
                self.attn_tasks_per_thread,
                self.attn_split_min,
                &mut self.attn_scratch,
                &mut self.att[r0 * dim..],
            );
            r0 += n;
        }
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

    /// The final rmsnorm and the LM head for rows `rows` of the last batch:
    /// row `rows[i]`'s logits into `self.logits[i * vocab..]`. One call of
    /// the head for all of them (it converts the hidden states as ggml does
    /// for its type: f16 rounding for an F16 head).
    fn final_logits(&mut self, rows: &[usize]) {
        let s = self.clock();
        let m = self.model;
        let (dim, vocab, n) = (m.config.dim, m.config.vocab_size, rows.len());
        self.hidden.resize(n * dim, 0.0);
        self.logits.resize(n * vocab, 0.0);
        for (h, &r) in self.hidden.chunks_exact_mut(dim).zip(rows) {
            rmsnorm(
                h,
                &self.x[r * dim..(r + 1) * dim],
                &m.output_norm,
                m.config.eps,
            );
        }
        m.head.logits(
            &m.gguf,
            &mut self.hidden[..n * dim],
            n,
            &mut self.head_scratch,
            &mut self.logits[..n * vocab],
            &self.pool,
        );
        self.timings.head += Self::since(s);
    }
}
