//! The model's weights: ternary matrices repacked once into the kernels'
//! layout (the only copy kept), norms as f32, the embedding borrowed from
//! the file's map and the [`LmHead`] chosen at load.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use half::f16;

use super::config::{Config, Family};
use super::head::{HeadKind, LmHead};
use super::ops::Rope;
use crate::embedding::Matrix;
use crate::error::{Error, Result};
use crate::gguf::{GgmlType, Gguf, TensorInfo};
use crate::packed::{Layout, PackedMatrix};
use crate::tokenizer::Tokenizer;

pub(super) struct Layer {
    pub(super) attn_norm: Vec<f32>,
    pub(super) wq: PackedMatrix,
    pub(super) wk: PackedMatrix,
    pub(super) wv: PackedMatrix,
    pub(super) wo: PackedMatrix,
    /// Present in the BitNet families.
    pub(super) attn_sub_norm: Option<Vec<f32>>,
    pub(super) ffn_norm: Vec<f32>,
    pub(super) w_gate: PackedMatrix,
    pub(super) w_up: PackedMatrix,
    pub(super) w_down: PackedMatrix,
    pub(super) ffn_sub_norm: Option<Vec<f32>>,
    /// Factors on the matmul outputs from the optional `blk.N.*.scale`
    /// tensors of arch `bitnet` (1.0 when absent).
    pub(super) scales: Scales,
}

/// Output factors of a layer's seven matrices.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Scales {
    pub(super) q: f32,
    pub(super) k: f32,
    pub(super) v: f32,
    pub(super) o: f32,
    pub(super) gate: f32,
    pub(super) up: f32,
    pub(super) down: f32,
}

/// A loaded model: weights and tokenizer.
pub struct Model {
    pub config: Config,
    pub tokenizer: Tokenizer,
    pub(super) gguf: Arc<Gguf>,
    pub(super) embed: TensorInfo,
    pub(super) head: LmHead,
    pub(super) output_norm: Vec<f32>,
    /// RoPE of the family, with the per-pair divisors of a
    /// `rope_freqs.weight` (Llama 3.1 style files) if present.
    pub(super) rope: Rope,
    pub(super) layers: Vec<Layer>,
    /// `tokenizer.chat_template`, if the file has one.
    pub chat_template: Option<String>,
}

/// How to load a model.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Quantize the LM head to 8 bits per weight with a scale per row at
    /// load time and use it instead of the file's head (about half the bytes
    /// per token of an F16 head; logits differ slightly from bitnet.cpp's).
    pub q8_head: bool,
    /// Requantize an F16/F32/Q8_0 LM head to Q6_K at load time exactly as
    /// `llama-quantize --token-embedding-type q6_k` (bitnet.cpp's
    /// `--quant-embd`) does, and use it instead: 0.27 GB per token instead
    /// of 0.66 for the 2B-4T head, with the logits bitnet.cpp computes on
    /// such a file. A tied head is the embedding too, so embedding lookups
    /// read the Q6_K copy as well (as in that file). Row length must be a
    /// multiple of 256. Not with `q8_head`.
    pub q6k_head: bool,
}

/// A layer's ternary matrices, by tensor name.
pub(super) const MATRICES: [&str; 7] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

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

fn ternary(g: &Gguf, name: &str, cols: usize, rows: usize, layout: Layout) -> Result<PackedMatrix> {
    let (t, data) = g.tensor(name)?;
    check_dims(t, &[cols as u64, rows as u64])?;
    if t.ty != GgmlType::I2S {
        return Err(Error::unsupported(format!(
            "tensor '{name}' has type {}; this runner needs I2_S ternary weights",
            t.ty
        )));
    }
    PackedMatrix::from_i2s_tensor_as(data, rows, cols, layout)
        .map_err(|e| Error::new(e.kind, format!("tensor '{name}': {}", e.message)))
}

impl Model {
    /// Loads a BitNet b1.58 GGUF: validates every tensor against the
    /// metadata and repacks the ternary weights once (the only copy kept).
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        Self::load_with(path, LoadOptions::default())
    }

    pub fn load_with(path: impl AsRef<Path>, opts: LoadOptions) -> Result<Model> {
        if opts.q8_head && opts.q6k_head {
            return Err(Error::invalid("choose one of the 8-bit and the Q6_K head"));
        }
        let g = Gguf::open(path)?;
        Self::from_gguf_with(Arc::new(g), opts)
    }

    pub fn from_gguf(g: Arc<Gguf>) -> Result<Model> {
        Self::from_gguf_with(g, LoadOptions::default())
    }

    pub fn from_gguf_with(g: Arc<Gguf>, opts: LoadOptions) -> Result<Model> {
        let config = Config::from_gguf(&g)?;
        // The dispatcher's layout of the ternary weights for this CPU (TL3
        // or I2_S tiles), or the one BITNET_STFMA_FORMAT names.
        let layout = Layout::preferred()?;
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
        let output = g.tensor_info("output.weight");
        let head = match (c.family, output) {
            (Family::Llama, Some(t)) => {
                check_dims(t, &[d, v])?;
                Matrix::new(t.ty, c.vocab_size, c.dim, g.tensor_data(t))
                    .map_err(|e| Error::new(e.kind, format!("output.weight: {}", e.message)))?;
                t.clone()
            }
            (Family::BitNet, Some(_)) => {
                return Err(Error::format(
                    "architecture 'bitnet' ties its LM head to token_embd, but the file has an output.weight (bitnet.cpp refuses such a file too)",
                ))
            }
            // bitnet-b1.58 / bitnet-25 always use token_embd as the head.
            _ => embed.clone(),
        };
        let output_norm = f32_vector(&g, "output_norm.weight", c.dim)?;
        let rope_freqs = match g.tensor_info("rope_freqs.weight") {
            Some(_) if c.family != Family::BitNet => {
                Some(f32_vector(&g, "rope_freqs.weight", c.rope_dim / 2)?)
            }
            _ => None,
        };
        let (kv, ff) = (c.kv_dim(), c.ffn_dim);
        let sub = c.family.sub_norms();
        // Every tensor name the graph reads (or, for output.weight in the
        // bitnet-b1.58 graph, knowingly ignores).
        let mut expected: HashSet<String> = ["token_embd.weight", "output_norm.weight"]
            .map(String::from)
            .into();
        if c.family != Family::BitNet {
            expected.extend(["output.weight", "rope_freqs.weight"].map(String::from));
        }
        let mut layers = Vec::with_capacity(c.n_layers);
        for l in 0..c.n_layers {
            let n = |s: &str| format!("blk.{l}.{s}.weight");
            let scale = |s: &str| -> Result<f32> {
                let name = format!("blk.{l}.{s}.scale");
                if c.family != Family::BitNet || g.tensor_info(&name).is_none() {
                    return Ok(1.0);
                }
                Ok(f32_vector(&g, &name, 1)?[0])
            };
            let mut names = MATRICES.to_vec();
            names.extend(["attn_norm", "ffn_norm"]);
            if sub {
                names.extend(["attn_sub_norm", "ffn_sub_norm"]);
            }
            expected.extend(names.iter().map(|s| n(s)));
            if c.family == Family::BitNet {
                expected.extend(MATRICES.iter().map(|s| format!("blk.{l}.{s}.scale")));
            }
            layers.push(Layer {
                attn_norm: f32_vector(&g, &n("attn_norm"), c.dim)?,
                wq: ternary(&g, &n("attn_q"), c.dim, c.dim, layout)?,
                wk: ternary(&g, &n("attn_k"), c.dim, kv, layout)?,
                wv: ternary(&g, &n("attn_v"), c.dim, kv, layout)?,
                wo: ternary(&g, &n("attn_output"), c.dim, c.dim, layout)?,
                attn_sub_norm: sub
                    .then(|| f32_vector(&g, &n("attn_sub_norm"), c.dim))
                    .transpose()?,
                ffn_norm: f32_vector(&g, &n("ffn_norm"), c.dim)?,
                w_gate: ternary(&g, &n("ffn_gate"), c.dim, ff, layout)?,
                w_up: ternary(&g, &n("ffn_up"), c.dim, ff, layout)?,
                w_down: ternary(&g, &n("ffn_down"), ff, c.dim, layout)?,
                ffn_sub_norm: sub
                    .then(|| f32_vector(&g, &n("ffn_sub_norm"), ff))
                    .transpose()?,
                scales: Scales {
                    q: scale("attn_q")?,
                    k: scale("attn_k")?,
                    v: scale("attn_v")?,
                    o: scale("attn_output")?,
                    gate: scale("ffn_gate")?,
                    up: scale("ffn_up")?,
                    down: scale("ffn_down")?,
                },
            });
        }
        // Like llama.cpp, refuse tensors the graph would not read (biases,
        // experts, more layers...): ignoring them would compute another
        // function than the file describes.
        if let Some(t) = g.tensors().iter().find(|t| !expected.contains(&t.name)) {
            return Err(Error::unsupported(format!(
                "tensor '{}' is not part of the '{}' graph this runner computes",
                t.name, c.arch
            )));
        }
        let rope = Rope::new(c, rope_freqs.as_deref());
        let chat_template = g.get_str("tokenizer.chat_template").map(str::to_string);
        let tied = head.name == embed.name;
        let head = LmHead::load(&g, head, tied, c.vocab_size, c.dim, opts)?;
        Ok(Model {
            config,
            tokenizer,
            gguf: g,
            embed,
            head,
            output_norm,
            rope,
            layers,
            chat_template,
        })
    }

    /// The token embedding table (a tied head's matrix, so the Q6_K copy of
    /// a tied head serves the lookups too).
    pub(super) fn embed_matrix(&self) -> Matrix<'_> {
        if self.head_is_tied() {
            return self.head.matrix(&self.gguf);
        }
        Matrix {
            ty: self.embed.ty,
            rows: self.config.vocab_size,
            dim: self.config.dim,
            data: self.gguf.tensor_data(&self.embed),
        }
    }

    /// The LM head.
    pub fn head(&self) -> &LmHead {
        &self.head
    }

    /// Whether the LM head is the token embedding.
    pub fn head_is_tied(&self) -> bool {
        self.head.is_tied()
    }

    /// A string metadata value of the model's file.
    pub fn gguf_str(&self, key: &str) -> Option<&str> {
        self.gguf.get_str(key)
    }

    /// The type of the LM head matrix in the file.
    pub fn head_type(&self) -> GgmlType {
        self.head.file_type()
    }

    /// Bytes the LM head reads per decoded token (the 8-bit or Q6_K copy if
    /// loaded).
    pub fn head_bytes(&self) -> usize {
        self.head.bytes(&self.gguf)
    }

    /// Whether the Q6_K copy of the LM head made at load is in use.
    pub fn has_q6k_head(&self) -> bool {
        matches!(self.head.kind(), HeadKind::Q6K(_))
    }

    /// Whether the 8-bit LM head is in use.
    pub fn has_q8_head(&self) -> bool {
        matches!(self.head.kind(), HeadKind::Q8(_))
    }

    /// The layout the ternary weights were loaded in.
    pub fn ternary_layout(&self) -> Layout {
        self.layers.first().map_or(Layout::I2s, |l| l.wq.layout())
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
