//! The BitNet b1.58 model (bitnet.cpp's `build_bitnet_158` graph, as used by
//! BitNet-b1.58-2B-4T), in the plain style of llama2.c: a [`Config`] read
//! from the GGUF, the [`Model`] weights (ternary matrices repacked once into
//! the kernels' layout, the embedding borrowed from the map), and a
//! [`Session`] whose every buffer, f16 KV cache included, is allocated once.
//!
//! The arithmetic follows bitnet.cpp where it matters for matching logits:
//! activations quantized to int8 per token before each ternary matmul,
//! rmsnorm sums in f64, NEOX RoPE with ggml's iterated angle, and f16
//! rounding of the KV cache, of q before q·k, of the softmax weights before
//! they weight V, and of the final hidden state before the LM head.

use std::path::Path;
use std::sync::Arc;

use half::f16;

use crate::cache::PackedMatrix;
use crate::embedding::{self, Matrix, Q8Head};
use crate::error::{Error, Result};
use crate::gguf::{GgmlType, Gguf, TensorInfo, Value};
use crate::kernels;
use crate::matmul::{self, ActBatch};
use crate::threadpool::{DisjointMut, ThreadPool};
use crate::tokenizer::Tokenizer;

/// Architectures this runner accepts (same graph).
pub const ARCHITECTURES: [&str; 2] = ["bitnet-25", "bitnet-b1.58"];

/// Hyperparameters, all read from the GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub arch: String,
    pub dim: usize,
    pub ffn_dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rope_dim: usize,
    pub vocab_size: usize,
    pub ctx_len: usize,
    pub rope_theta: f32,
    pub eps: f32,
}

impl Config {
    pub fn from_gguf(g: &Gguf) -> Result<Config> {
        let arch = g
            .architecture()
            .ok_or_else(|| Error::format("general.architecture is missing"))?;
        if arch == "bitnet" {
            return Err(Error::unsupported(
                "architecture 'bitnet' (1bitLLM models) is an older, different graph; only bitnet-25 / bitnet-b1.58 are supported",
            ));
        }
        if !ARCHITECTURES.contains(&arch) {
            return Err(Error::unsupported(format!(
                "architecture '{arch}' is not a BitNet b1.58 model (expected one of {ARCHITECTURES:?})"
            )));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let int = |k: &str| -> Result<usize> {
            let v = g
                .get(&key(k))
                .ok_or_else(|| Error::format(format!("metadata key '{}' is missing", key(k))))?;
            v.as_u64()
                .filter(|&x| x > 0 && x <= 1 << 24)
                .map(|x| x as usize)
                .ok_or_else(|| {
                    Error::format(format!(
                        "metadata key '{}' = {v:?} is not a positive integer",
                        key(k)
                    ))
                })
        };
        let float = |k: &str, default: f64| -> Result<f32> {
            match g.get(&key(k)) {
                None => Ok(default as f32),
                Some(v) => v
                    .as_f64()
                    .filter(|x| x.is_finite() && *x > 0.0)
                    .map(|x| x as f32)
                    .ok_or_else(|| {
                        Error::format(format!(
                            "metadata key '{}' = {v:?} is not a positive number",
                            key(k)
                        ))
                    }),
            }
        };
        let dim = int("embedding_length")?;
        let n_heads = int("attention.head_count")?;
        let n_kv_heads = match g.get(&key("attention.head_count_kv")) {
            None => n_heads,
            Some(_) => int("attention.head_count_kv")?,
        };
        if dim % n_heads != 0 || n_heads % n_kv_heads != 0 {
            return Err(Error::format(format!(
                "{dim} dims do not split into {n_heads} heads sharing {n_kv_heads} KV heads"
            )));
        }
        let head_dim = dim / n_heads;
        if head_dim > 512 {
            return Err(Error::unsupported(format!(
                "head size {head_dim} is above the supported 512"
            )));
        }
        let rope_dim = match g.get(&key("rope.dimension_count")) {
            None => head_dim,
            Some(_) => int("rope.dimension_count")?,
        };
        if rope_dim > head_dim || rope_dim % 2 != 0 {
            return Err(Error::format(format!(
                "rope.dimension_count {rope_dim} does not fit head size {head_dim}"
            )));
        }
        let vocab_size = match g.get(&key("vocab_size")) {
            Some(_) => int("vocab_size")?,
            None => match g.get("tokenizer.ggml.tokens").and_then(Value::as_array) {
                Some(a) => a.len(),
                None => {
                    return Err(Error::format(
                        "neither vocab_size nor tokenizer.ggml.tokens is present",
                    ))
                }
            },
        };
        Ok(Config {
            arch: arch.to_string(),
            dim,
            ffn_dim: int("feed_forward_length")?,
            n_layers: int("block_count")?,
            n_heads,
            n_kv_heads,
            head_dim,
            rope_dim,
            vocab_size,
            ctx_len: int("context_length")?,
            rope_theta: float("rope.freq_base", 10000.0)?,
            eps: float("attention.layer_norm_rms_epsilon", 1e-5)?,
        })
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: PackedMatrix,
    wk: PackedMatrix,
    wv: PackedMatrix,
    wo: PackedMatrix,
    attn_sub_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    w_gate: PackedMatrix,
    w_up: PackedMatrix,
    w_down: PackedMatrix,
    ffn_sub_norm: Vec<f32>,
}

/// A loaded model: weights and tokenizer.
pub struct Model {
    pub config: Config,
    pub tokenizer: Tokenizer,
    gguf: Arc<Gguf>,
    embed: TensorInfo,
    head: TensorInfo,
    output_norm: Vec<f32>,
    layers: Vec<Layer>,
    /// `tokenizer.chat_template`, if the file has one.
    pub chat_template: Option<String>,
    /// The opt-in 8-bit copy of the LM head (see [`LoadOptions`]).
    q8_head: Option<Q8Head>,
}

/// How to load a model.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Quantize the LM head to 8 bits per weight with a scale per row at
    /// load time and use it instead of the file's head (about half the bytes
    /// per token of an F16 head; logits differ slightly from bitnet.cpp's).
    pub q8_head: bool,
}

fn check_dims(t: &TensorInfo, want: &[u64]) -> Result<()> {
    if t.dims != want {
        return Err(Error::format(format!(
            "tensor '{}' has shape {:?}, the metadata implies {want:?}",
            t.name, t.dims
        )));
    }
    Ok(())
}

fn f32_vector(g: &Gguf, name: &str, len: usize) -> Result<Vec<f32>> {
    let (t, data) = g.tensor(name)?;
    check_dims(t, &[len as u64])?;
    match t.ty {
        GgmlType::F32 => Ok(data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()),
        GgmlType::F16 => Ok(data
            .chunks_exact(2)
            .map(|b| f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect()),
        ty => Err(Error::unsupported(format!(
            "norm tensor '{name}' has type {ty}; F32 or F16 expected"
        ))),
    }
}

fn ternary(g: &Gguf, name: &str, cols: usize, rows: usize) -> Result<PackedMatrix> {
    let (t, data) = g.tensor(name)?;
    check_dims(t, &[cols as u64, rows as u64])?;
    if t.ty != GgmlType::I2S {
        return Err(Error::unsupported(format!(
            "tensor '{name}' has type {}; this runner needs I2_S ternary weights",
            t.ty
        )));
    }
    PackedMatrix::from_i2s_tensor(data, rows, cols)
        .map_err(|e| Error::new(e.kind, format!("tensor '{name}': {}", e.message)))
}

impl Model {
    /// Loads a BitNet b1.58 GGUF: validates every tensor against the
    /// metadata and repacks the ternary weights once (the only copy kept).
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        Self::load_with(path, LoadOptions::default())
    }

    pub fn load_with(path: impl AsRef<Path>, opts: LoadOptions) -> Result<Model> {
        let g = Gguf::open(path)?;
        let mut m = Self::from_gguf(Arc::new(g))?;
        if opts.q8_head {
            m.q8_head = Some(Q8Head::from_matrix(&m.head_matrix(), &ThreadPool::new(0))?);
        }
        Ok(m)
    }

    pub fn from_gguf(g: Arc<Gguf>) -> Result<Model> {
        let config = Config::from_gguf(&g)?;
        let tokenizer = Tokenizer::from_gguf(&g)?;
        if tokenizer.vocab_size() != config.vocab_size {
            return Err(Error::format(format!(
                "the tokenizer has {} tokens but vocab_size is {}",
                tokenizer.vocab_size(),
                config.vocab_size
            )));
        }
        if tokenizer.bos.is_none() || tokenizer.eos.is_none() {
            return Err(Error::format("the vocabulary defines no BOS or no EOS token (tokenizer.ggml.bos_token_id / eos_token_id)"));
        }
        let c = &config;
        let (d, v) = (c.dim as u64, c.vocab_size as u64);
        let embed = g.tensor("token_embd.weight")?.0.clone();
        check_dims(&embed, &[d, v])?;
        Matrix::new(embed.ty, c.vocab_size, c.dim, g.tensor_data(&embed))
            .map_err(|e| Error::new(e.kind, format!("token_embd.weight: {}", e.message)))?;
        let head = match g.tensor_info("output.weight") {
            Some(t) => {
                check_dims(t, &[d, v])?;
                Matrix::new(t.ty, c.vocab_size, c.dim, g.tensor_data(t))
                    .map_err(|e| Error::new(e.kind, format!("output.weight: {}", e.message)))?;
                t.clone()
            }
            None => embed.clone(),
        };
        let output_norm = f32_vector(&g, "output_norm.weight", c.dim)?;
        let (kv, ff) = (c.kv_dim(), c.ffn_dim);
        let mut layers = Vec::with_capacity(c.n_layers);
        for l in 0..c.n_layers {
            let n = |s: &str| format!("blk.{l}.{s}.weight");
            layers.push(Layer {
                attn_norm: f32_vector(&g, &n("attn_norm"), c.dim)?,
                wq: ternary(&g, &n("attn_q"), c.dim, c.dim)?,
                wk: ternary(&g, &n("attn_k"), c.dim, kv)?,
                wv: ternary(&g, &n("attn_v"), c.dim, kv)?,
                wo: ternary(&g, &n("attn_output"), c.dim, c.dim)?,
                attn_sub_norm: f32_vector(&g, &n("attn_sub_norm"), c.dim)?,
                ffn_norm: f32_vector(&g, &n("ffn_norm"), c.dim)?,
                w_gate: ternary(&g, &n("ffn_gate"), c.dim, ff)?,
                w_up: ternary(&g, &n("ffn_up"), c.dim, ff)?,
                w_down: ternary(&g, &n("ffn_down"), ff, c.dim)?,
                ffn_sub_norm: f32_vector(&g, &n("ffn_sub_norm"), ff)?,
            });
        }
        let chat_template = g.get_str("tokenizer.chat_template").map(str::to_string);
        Ok(Model {
            config,
            tokenizer,
            gguf: g,
            embed,
            head,
            output_norm,
            layers,
            chat_template,
            q8_head: None,
        })
    }

    fn embed_matrix(&self) -> Matrix<'_> {
        Matrix {
            ty: self.embed.ty,
            rows: self.config.vocab_size,
            dim: self.config.dim,
            data: self.gguf.tensor_data(&self.embed),
        }
    }

    fn head_matrix(&self) -> Matrix<'_> {
        Matrix {
            ty: self.head.ty,
            rows: self.config.vocab_size,
            dim: self.config.dim,
            data: self.gguf.tensor_data(&self.head),
        }
    }

    /// The type of the LM head matrix in the file.
    pub fn head_type(&self) -> GgmlType {
        self.head.ty
    }

    /// Bytes the LM head reads per decoded token (the 8-bit copy if loaded).
    pub fn head_bytes(&self) -> usize {
        match &self.q8_head {
            Some(h) => h.bytes(),
            None => self.gguf.tensor_data(&self.head).len(),
        }
    }

    /// Whether the 8-bit LM head is in use.
    pub fn has_q8_head(&self) -> bool {
        self.q8_head.is_some()
    }

    /// Bytes of ternary weights held (repacked).
    pub fn ternary_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| {
                [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]
                    .iter()
                    .map(|m| m.bytes().len())
                    .sum::<usize>()
            })
            .sum()
    }
}

/// Where a forward pass spent its time (accumulated).
#[derive(Debug, Default, Clone, Copy)]
pub struct Timings {
    pub ternary: std::time::Duration,
    pub head: std::time::Duration,
    pub attention: std::time::Duration,
    pub other: std::time::Duration,
}

/// Inference state: KV cache and every per-token buffer, allocated once.
pub struct Session<'m> {
    pub model: &'m Model,
    pool: ThreadPool,
    ctx: usize,
    max_batch: usize,
    pos: usize,
    /// f16 keys and values, head-major: `[layer][kv head][position][head_dim]`.
    kcache: Vec<u16>,
    vcache: Vec<u16>,
    x: Vec<f32>,
    xb: Vec<f32>,
    xb2: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    hb: Vec<f32>,
    hb2: Vec<f32>,
    scores: Vec<f32>,
    hidden: Vec<f32>,
    hidden_q: Vec<i8>,
    logits: Vec<f32>,
    acts_dim: ActBatch,
    acts_ffn: ActBatch,
    /// Attention tasks wanted per thread (tests lower it to get whole groups).
    attn_tasks_per_thread: usize,
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
        let kv_len = c
            .n_layers
            .checked_mul(ctx)
            .and_then(|x| x.checked_mul(c.kv_dim()))
            .filter(|&x| x <= 1 << 34)
            .ok_or_else(|| Error::invalid(format!("a KV cache of {ctx} tokens is too large")))?;
        let zeros = |n: usize| vec![0f32; n];
        Ok(Session {
            model,
            pool: ThreadPool::new(threads),
            ctx,
            max_batch: b,
            pos: 0,
            kcache: vec![0; kv_len],
            vcache: vec![0; kv_len],
            x: zeros(b * c.dim),
            xb: zeros(b * c.dim),
            xb2: zeros(b * c.dim),
            q: zeros(b * c.dim),
            k: zeros(b * c.kv_dim()),
            v: zeros(b * c.kv_dim()),
            att: zeros(b * c.dim),
            hb: zeros(b * c.ffn_dim),
            hb2: zeros(b * c.ffn_dim),
            scores: zeros(c.n_heads * ctx),
            hidden: zeros(c.dim),
            hidden_q: vec![0; c.dim],
            logits: zeros(c.vocab_size),
            acts_dim: ActBatch::new(c.dim, b),
            acts_ffn: ActBatch::new(c.ffn_dim, b),
            attn_tasks_per_thread: 4,
            timings: Timings::default(),
        })
    }

    /// Tokens in the KV cache.
    pub fn pos(&self) -> usize {
        self.pos
    }
    pub fn ctx(&self) -> usize {
        self.ctx
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

    /// Fills the KV cache up to position `n` with arbitrary values, for
    /// benchmarks of decoding at depth (attention costs the same whatever
    /// the cached values are).
    pub fn fill_cache_for_benchmark(&mut self, n: usize) -> Result<()> {
        if n > self.ctx {
            return Err(Error::invalid(format!(
                "depth {n} exceeds the context of {}",
                self.ctx
            )));
        }
        let c = &self.model.config;
        let mut h = 0x2545_F491_4F6C_DD1Du64;
        for lh in 0..c.n_layers * c.n_kv_heads {
            let range = lh * self.ctx * c.head_dim..(lh * self.ctx + n) * c.head_dim;
            for (k, v) in self.kcache[range.clone()]
                .iter_mut()
                .zip(&mut self.vcache[range])
            {
                h ^= h << 13;
                h ^= h >> 7;
                h ^= h << 17;
                *k = f16::from_f32(((h & 0xFFFF) as f32 / 65536.0 - 0.5) * 4.0).to_bits();
                *v = f16::from_f32((((h >> 16) & 0xFFFF) as f32 / 65536.0 - 0.5) * 4.0).to_bits();
            }
        }
        self.pos = n;
        Ok(())
    }

    /// Feeds `tokens` at the current position and returns the logits after
    /// the last one.
    pub fn forward(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        self.feed(tokens, &mut |_, _| {})?;
        Ok(&self.logits)
    }

    /// Feeds `tokens`, calling `each(i, logits)` after every token `i`
    /// (teacher forcing: the logits predict token `i + 1`).
    pub fn forward_all(
        &mut self,
        tokens: &[u32],
        each: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<()> {
        self.feed_impl(tokens, true, each)
    }

    fn feed(&mut self, tokens: &[u32], each: &mut dyn FnMut(usize, &[f32])) -> Result<()> {
        self.feed_impl(tokens, false, each)
    }

    fn feed_impl(
        &mut self,
        tokens: &[u32],
        all: bool,
        each: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::invalid("no tokens to process (empty prompt)"));
        }
        if self.pos + tokens.len() > self.ctx {
            return Err(Error::invalid(format!(
                "{} tokens do not fit: {} already in a context of {}",
                tokens.len(),
                self.pos,
                self.ctx
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

    /// Runs the transformer over one batch at the current position.
    fn batch(&mut self, tokens: &[u32]) {
        let m = self.model;
        let c = &m.config;
        let (dim, kv, ff, t_n) = (c.dim, c.kv_dim(), c.ffn_dim, tokens.len());
        let pos0 = self.pos;
        let t0 = std::time::Instant::now();
        let embed = m.embed_matrix();
        for (t, &tok) in tokens.iter().enumerate() {
            embed.dequantize_row(tok as usize, &mut self.x[t * dim..(t + 1) * dim]);
        }
        let mut tern = std::time::Duration::ZERO;
        let mut attn = std::time::Duration::ZERO;
        for (l, layer) in m.layers.iter().enumerate() {
            rmsnorm_rows(
                &mut self.xb[..t_n * dim],
                &self.x[..t_n * dim],
                &layer.attn_norm,
                c.eps,
            );
            let s = std::time::Instant::now();
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
            tern += s.elapsed();

            let s = std::time::Instant::now();
            for t in 0..t_n {
                let p = pos0 + t;
                rope(
                    &mut self.q[t * dim..(t + 1) * dim],
                    c.head_dim,
                    c.rope_dim,
                    p,
                    c.rope_theta,
                );
                rope(
                    &mut self.k[t * kv..(t + 1) * kv],
                    c.head_dim,
                    c.rope_dim,
                    p,
                    c.rope_theta,
                );
                // Head-major cache: each KV head's rows are contiguous, so
                // attention streams them (a position-major row stride of
                // kv_dim defeats the hardware prefetchers).
                let hd = c.head_dim;
                for h in 0..c.n_kv_heads {
                    let at = ((l * c.n_kv_heads + h) * self.ctx + p) * hd;
                    let src = t * kv + h * hd..t * kv + (h + 1) * hd;
                    for (dst, &x) in self.kcache[at..at + hd]
                        .iter_mut()
                        .zip(&self.k[src.clone()])
                    {
                        *dst = f16::from_f32(x).to_bits();
                    }
                    for (dst, &x) in self.vcache[at..at + hd].iter_mut().zip(&self.v[src]) {
                        *dst = f16::from_f32(x).to_bits();
                    }
                }
            }
            self.attention(l, pos0, t_n);
            attn += s.elapsed();

            for t in 0..t_n {
                let a = &mut self.att[t * dim..(t + 1) * dim];
                rmsnorm_inplace(a, &layer.attn_sub_norm, c.eps);
            }
            let s = std::time::Instant::now();
            self.acts_dim.quantize(&self.att[..t_n * dim]);
            matmul::matmul(&layer.wo, &self.acts_dim, &mut self.xb2, &self.pool);
            tern += s.elapsed();
            for (x, d) in self.x[..t_n * dim].iter_mut().zip(&self.xb2) {
                *x += d;
            }

            rmsnorm_rows(
                &mut self.xb[..t_n * dim],
                &self.x[..t_n * dim],
                &layer.ffn_norm,
                c.eps,
            );
            let s = std::time::Instant::now();
            self.acts_dim.quantize(&self.xb[..t_n * dim]);
            matmul::matmul_many(
                &mut [
                    (&layer.w_gate, &mut self.hb[..]),
                    (&layer.w_up, &mut self.hb2[..]),
                ],
                &self.acts_dim,
                &self.pool,
            );
            tern += s.elapsed();
            for (g, u) in self.hb[..t_n * ff].iter_mut().zip(&self.hb2) {
                let r = g.max(0.0);
                *g = r * r * u;
            }
            for t in 0..t_n {
                rmsnorm_inplace(
                    &mut self.hb[t * ff..(t + 1) * ff],
                    &layer.ffn_sub_norm,
                    c.eps,
                );
            }
            let s = std::time::Instant::now();
            self.acts_ffn.quantize(&self.hb[..t_n * ff]);
            matmul::matmul(&layer.w_down, &self.acts_ffn, &mut self.xb2, &self.pool);
            tern += s.elapsed();
            for (x, d) in self.x[..t_n * dim].iter_mut().zip(&self.xb2) {
                *x += d;
            }
        }
        self.pos += t_n;
        self.timings.ternary += tern;
        self.timings.attention += attn;
        self.timings.other += t0.elapsed().saturating_sub(tern + attn);
    }

    /// Causal attention for the batch's tokens. The query heads that share a
    /// KV head are processed together, so each f16 key and value row is
    /// converted once per group; groups are split into enough tasks to keep
    /// every thread busy.
    fn attention(&mut self, l: usize, pos0: usize, t_n: usize) {
        let c = &self.model.config;
        let (hd, kv, dim, ctx) = (c.head_dim, c.kv_dim(), c.dim, self.ctx);
        let group = c.n_heads / c.n_kv_heads;
        let want_tasks = self.attn_tasks_per_thread * self.pool.threads();
        let splits = want_tasks.div_ceil(c.n_kv_heads).clamp(1, group);
        let sub = group.div_ceil(splits).min(kernels::MAX_GROUP);
        let subs_per_kv = group.div_ceil(sub);
        let scale = 1.0 / (hd as f32).sqrt();
        let kcache = embedding::f16_bytes(&self.kcache[l * ctx * kv..(l + 1) * ctx * kv]);
        let vcache = embedding::f16_bytes(&self.vcache[l * ctx * kv..(l + 1) * ctx * kv]);
        let q = &self.q;
        let att = DisjointMut::new(&mut self.att);
        let scores = DisjointMut::new(&mut self.scores);
        self.pool.run(c.n_kv_heads * subs_per_kv, &|task| {
            let kvh = task / subs_per_kv;
            let h0 = kvh * group + (task % subs_per_kv) * sub;
            let g = sub.min(kvh * group + group - h0);
            // SAFETY: this task alone uses the score rows and output slices
            // of heads h0..h0+g; both buffers outlive `run`.
            let sc = unsafe { scores.part(h0 * ctx, g * ctx) };
            let mut qbuf = [0f32; 512 * kernels::MAX_GROUP];
            let mut obuf = [0f32; 512 * kernels::MAX_GROUP];
            let (qg, og) = (&mut qbuf[..g * hd], &mut obuf[..g * hd]);
            for t in 0..t_n {
                let p = pos0 + t;
                for (d, &v) in qg
                    .iter_mut()
                    .zip(&q[t * dim + h0 * hd..t * dim + (h0 + g) * hd])
                {
                    *d = f16::from_f32(v).to_f32();
                }
                let head = 2 * kvh * ctx * hd..2 * (kvh + 1) * ctx * hd;
                kernels::attn_scores(
                    &kcache[head.clone()],
                    2 * hd,
                    p + 1,
                    qg,
                    g,
                    hd,
                    scale,
                    sc,
                    ctx,
                );
                for j in 0..g {
                    kernels::softmax_round_f16(&mut sc[j * ctx..j * ctx + p + 1]);
                }
                kernels::weighted_sum(sc, ctx, g, &vcache[head], 2 * hd, p + 1, hd, og);
                // SAFETY: see above.
                unsafe { att.part(t * dim + h0 * hd, g * hd) }.copy_from_slice(og);
            }
        });
    }

    /// Logits for token `t` of the last batch into `self.logits`.
    fn logits_for(&mut self, t: usize) {
        let s = std::time::Instant::now();
        let m = self.model;
        let dim = m.config.dim;
        rmsnorm(
            &mut self.hidden,
            &self.x[t * dim..(t + 1) * dim],
            &m.output_norm,
            m.config.eps,
        );
        for h in self.hidden.iter_mut() {
            *h = f16::from_f32(*h).to_f32();
        }
        match &m.q8_head {
            Some(h) => h.matvec(
                &self.hidden,
                &mut self.hidden_q,
                &mut self.logits,
                &self.pool,
            ),
            None => m
                .head_matrix()
                .matvec(&self.hidden, &mut self.logits, &self.pool),
        }
        self.timings.head += s.elapsed();
    }
}

/// ggml's rms_norm: the mean square summed in f64, `1/sqrt(mean + eps)` in f32.
fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let sum: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    let mean = (sum / x.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let s = rms_scale(x, eps);
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = (v * s) * g;
    }
}

/// [`rmsnorm`] of each `w.len()`-long row of `x` into `out`.
fn rmsnorm_rows(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    for (o, r) in out.chunks_exact_mut(w.len()).zip(x.chunks_exact(w.len())) {
        rmsnorm(o, r, w, eps);
    }
}

fn rmsnorm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    let s = rms_scale(x, eps);
    for (v, &g) in x.iter_mut().zip(w) {
        *v = (*v * s) * g;
    }
}

/// NEOX-style RoPE on every head of `x`: pairs (i, i + rope_dim/2), angle
/// `pos * theta^(-2i/rope_dim)` computed as ggml does (iterated product in f32).
fn rope(x: &mut [f32], head_dim: usize, rope_dim: usize, pos: usize, theta: f32) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{self, TensorSpec};
    use crate::synthetic::{self, Shape};

    /// A micro synthetic model, rewritten with `edit` applied to its metadata.
    fn micro_with(edit: impl Fn(&mut Vec<(String, Value)>)) -> Result<Model> {
        let path = std::env::temp_dir().join(format!(
            "bitnet-bad-{}-{:?}.gguf",
            std::process::id(),
            std::thread::current().id()
        ));
        synthetic::write_model(&path, Shape::MICRO, None, 1, &mut |_, _| {}).unwrap();
        let g = Gguf::open(&path).unwrap();
        std::fs::remove_file(&path).ok();
        let mut md = g.metadata().to_vec();
        edit(&mut md);
        let specs: Vec<TensorSpec> = g
            .tensors()
            .iter()
            .map(|t| TensorSpec {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ty: t.ty,
            })
            .collect();
        let mut bytes = Vec::new();
        gguf::write(&mut bytes, &md, &specs, 32, &mut |i, w| {
            w.write_all(g.tensor_data(&g.tensors()[i]))
        })
        .unwrap();
        Model::from_gguf(Arc::new(Gguf::from_bytes(bytes)?))
    }

    fn set(md: &mut [(String, Value)], key: &str, v: Value) {
        md.iter_mut().find(|(k, _)| k == key).unwrap().1 = v;
    }

    #[test]
    fn bad_models_are_rejected_with_clear_errors() {
        assert!(micro_with(|_| {}).is_ok());
        let e = micro_with(|md| set(md, "bitnet-b1.58.feed_forward_length", Value::U32(512)))
            .err()
            .unwrap();
        assert!(
            e.message.contains("blk.0.ffn_gate.weight") && e.message.contains("shape"),
            "{e}"
        );
        let e = micro_with(|md| md.retain(|(k, _)| k != "tokenizer.ggml.bos_token_id"))
            .err()
            .unwrap();
        assert!(e.message.contains("BOS"), "{e}");
        let e = micro_with(|md| set(md, "tokenizer.ggml.eos_token_id", Value::U32(1 << 20)))
            .err()
            .unwrap();
        assert!(e.message.contains("eos_token_id"), "{e}");
        // A non-BitNet architecture: its I2_S tensors are refused already by the reader.
        let e = micro_with(|md| set(md, "general.architecture", Value::String("llama".into())))
            .err()
            .unwrap();
        assert!(e.message.contains("only known in BitNet files"), "{e}");
        let e = micro_with(|md| md.retain(|(k, _)| k != "general.architecture"))
            .err()
            .unwrap();
        assert!(
            e.message.contains("BitNet") || e.message.contains("architecture"),
            "{e}"
        );
        let e = micro_with(|md| set(md, "general.architecture", Value::String("bitnet".into())))
            .err()
            .unwrap();
        assert!(e.message.contains("older"), "{e}");
        let e = micro_with(|md| md.retain(|(k, _)| k != "bitnet-b1.58.block_count"))
            .err()
            .unwrap();
        assert!(
            e.message.contains("block_count") && e.message.contains("missing"),
            "{e}"
        );
        let e = micro_with(|md| set(md, "bitnet-b1.58.attention.head_count", Value::U32(3)))
            .err()
            .unwrap();
        assert!(e.message.contains("heads"), "{e}");
        let e = micro_with(|md| set(md, "bitnet-b1.58.block_count", Value::U32(2)))
            .err()
            .unwrap();
        assert!(
            e.message.contains("blk.1.") && e.message.contains("missing"),
            "{e}"
        );
    }

    /// The 8-bit head's effect on the reference logits (reported, loosely bounded).
    #[test]
    fn q8_head_effect_on_reference_logits() {
        let Some(dir) = crate::testdata_dir() else {
            eprintln!(
                "SKIPPED model::q8_head_effect_on_reference_logits: ../shared/testdata not found"
            );
            return;
        };
        let model =
            Model::load_with(dir.join("bitnet-tiny.gguf"), LoadOptions { q8_head: true }).unwrap();
        assert!(model.has_q8_head() && model.head_bytes() < 128256 * 256 * 2 * 6 / 10);
        let (mut diffs, mut agree, mut confident) = (Vec::new(), 0, 0);
        for case in reference_cases(&dir) {
            let mut s = Session::new(&model, 256, 64, 2).unwrap();
            s.forward_all(&case.seq, &mut |i, logits| {
                let pairs = &case.tops[i];
                diffs.extend(pairs.iter().map(|&(id, want)| (logits[id] - want).abs()));
                if pairs[0].1 - pairs[1].1 > 1.0 {
                    confident += 1;
                    agree += usize::from(argmax(logits) == pairs[0].0);
                }
            })
            .unwrap();
        }
        let (median, p95, max) = quantiles(diffs);
        println!(
            "q8 head vs bitnet.cpp: median {median:.4}, p95 {p95:.4}, max {max:.4}; top-1 agrees at {agree} of {confident} confident positions"
        );
        assert!(
            // Achieved: median 0.065, p95 0.21, max 0.59.
            median <= 0.08 && p95 <= 0.27 && max <= 0.75,
            "the 8-bit head strays too far: median {median} p95 {p95} max {max}"
        );
        assert_eq!(agree, confident, "top-1 differs at a confident position");
    }

    #[test]
    fn bad_prompts_are_rejected() {
        let model = micro_with(|_| {}).unwrap();
        let mut s = Session::new(&model, 16, 4, 1).unwrap();
        assert!(s.forward(&[]).unwrap_err().message.contains("empty"));
        assert!(s
            .forward(&[1; 17])
            .unwrap_err()
            .message
            .contains("do not fit"));
        assert!(s
            .forward(&[100_000])
            .unwrap_err()
            .message
            .contains("outside the vocabulary"));
        s.forward(&[1; 16]).unwrap();
        assert!(
            s.forward(&[1]).unwrap_err().message.contains("do not fit"),
            "a full context refuses more"
        );
        assert!(
            Session::new(&model, usize::MAX / 4, 4, 1).is_err(),
            "absurd context"
        );
    }

    /// One reference prompt of `bitnet-tiny.ref.jsonl`: bitnet.cpp's tokens,
    /// the teacher-forced sequence (prompt and greedy continuation) and, for
    /// every position of it, bitnet.cpp's top-10 `(id, logit)`.
    struct RefCase {
        prompt: String,
        tokens: Vec<u32>,
        seq: Vec<u32>,
        tops: Vec<Vec<(usize, f32)>>,
    }

    fn reference_cases(dir: &Path) -> Vec<RefCase> {
        let top = |v: &serde_json::Value| -> Vec<(usize, f32)> {
            let pairs = v["top"].as_array().unwrap().iter();
            pairs
                .map(|p| {
                    (
                        p[0].as_u64().unwrap() as usize,
                        p[1].as_f64().unwrap() as f32,
                    )
                })
                .collect()
        };
        let refs = std::fs::read_to_string(dir.join("bitnet-tiny.ref.jsonl")).unwrap();
        let mut cases = Vec::new();
        for line in refs.lines().filter(|l| !l.trim().is_empty()) {
            let r: serde_json::Value = serde_json::from_str(line).unwrap();
            let tokens: Vec<u32> = r["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let mut seq = tokens.clone();
            let mut tops: Vec<_> = r["prompt_logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(top)
                .collect();
            for g in r["greedy"].as_array().unwrap() {
                seq.push(g["token"].as_u64().unwrap() as u32);
                tops.push(top(&g["next"]));
            }
            assert_eq!(tops.len(), seq.len());
            cases.push(RefCase {
                prompt: r["prompt"].as_str().unwrap().to_string(),
                tokens,
                seq,
                tops,
            });
        }
        cases
    }

    fn argmax(v: &[f32]) -> usize {
        v.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0
    }

    /// (median, p95, max) of the values.
    fn quantiles(mut v: Vec<f32>) -> (f32, f32, f32) {
        v.sort_by(f32::total_cmp);
        let q = |f: f64| v[((v.len() - 1) as f64 * f).round() as usize];
        (q(0.5), q(0.95), *v.last().unwrap())
    }

    /// |logit difference| statistics against bitnet.cpp's top-10 at every
    /// position, teacher-forced over each reference prompt and its greedy
    /// continuation.
    #[test]
    fn reproduces_bitnet_cpp_logits() {
        let Some(dir) = crate::testdata_dir() else {
            eprintln!("SKIPPED model::reproduces_bitnet_cpp_logits: ../shared/testdata not found");
            return;
        };
        let model = Model::load(dir.join("bitnet-tiny.gguf")).unwrap();
        let (mut diffs, mut checked_top1, mut positions) = (Vec::new(), 0, 0);
        for case in reference_cases(&dir) {
            let prompt = &case.prompt;
            assert_eq!(
                model.tokenizer.encode(prompt, true, false),
                case.tokens,
                "tokens of {prompt:?}"
            );
            // (batch, threads, attention tasks per thread): the last runs
            // whole 4-head groups through the grouped attention kernels.
            for (batch, threads, per_thread) in
                [(1usize, 2usize, 4usize), (7, 2, 4), (64, 2, 4), (5, 1, 1)]
            {
                let mut s = Session::new(&model, 256, batch, threads).unwrap();
                s.attn_tasks_per_thread = per_thread;
                s.forward_all(&case.seq, &mut |i, logits| {
                    let pairs = &case.tops[i];
                    diffs.extend(pairs.iter().map(|&(id, want)| (logits[id] - want).abs()));
                    positions += 1;
                    if pairs[0].1 - pairs[1].1 > 1.0 {
                        let ctx =
                            format!("position {i} of {prompt:?}, batch {batch}, {threads} threads");
                        assert_eq!(argmax(logits), pairs[0].0, "top-1 at {ctx}");
                        checked_top1 += 1;
                    }
                })
                .unwrap();
            }
        }
        let n = diffs.len();
        let (median, p95, max) = quantiles(diffs);
        println!(
            "reference logits: {positions} positions over 4 batch/thread settings, {n} comparisons: median {median:.4}, p95 {p95:.4}, max {max:.4}; top-1 checked at {checked_top1}"
        );
        assert!(
            // Achieved: median 0.0000, p95 0.172, max 0.54 (f16 KV cache and
            // f32 summation order differ from ggml's); just above that.
            median <= 0.01 && p95 <= 0.22 && max <= 0.7,
            "median {median} p95 {p95} max {max}"
        );
        assert!(checked_top1 > 0);
    }
}
