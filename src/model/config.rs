//! The model's hyperparameters, read and checked from the GGUF metadata,
//! and the graph [`Family`] its architecture names.

use crate::error::{Error, Result};
use crate::gguf::{Gguf, Value};

/// Architectures this runner accepts.
pub const ARCHITECTURES: [&str; 4] = ["bitnet-25", "bitnet-b1.58", "bitnet", "llama"];

/// The graphs bitnet.cpp runs over I2_S weights. They share the ternary
/// matmuls (int8 activations per token), the f16 KV cache and attention;
/// they differ in what surrounds them, which these properties describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `bitnet-b1.58` / `bitnet-25` (BitNet-b1.58-2B-4T): sub-norms before
    /// the output and down projections, relu² gating, NEOX RoPE, the LM
    /// head always `token_embd` (an `output.weight` is ignored, as
    /// bitnet.cpp ignores it).
    BitNet158,
    /// `bitnet` (1bitLLM bitnet_b1_58-large / -3B): sub-norms, SiLU gating,
    /// NEOX RoPE, optional per-matrix `*.scale` tensors, the head tied to
    /// `token_embd` (a file with an `output.weight` is refused, as
    /// bitnet.cpp refuses it).
    BitNet,
    /// `llama` with I2_S weights (Llama3-8B-1.58, Falcon3 and Falcon-E
    /// 1.58-bit): no sub-norms, SiLU gating, RoPE on adjacent pairs, the
    /// head `output.weight` when present, else `token_embd`.
    Llama,
}

impl Family {
    pub fn of(arch: &str) -> Option<Family> {
        match arch {
            "bitnet-b1.58" | "bitnet-25" => Some(Family::BitNet158),
            "bitnet" => Some(Family::BitNet),
            "llama" => Some(Family::Llama),
            _ => None,
        }
    }

    /// The `general.architecture` string written for this graph (the one
    /// bitnet.cpp's converters write).
    pub fn arch(self) -> &'static str {
        match self {
            Family::BitNet158 => "bitnet-b1.58",
            Family::BitNet => "bitnet",
            Family::Llama => "llama",
        }
    }

    /// Whether attention output and FFN hidden state are rmsnormed before
    /// their projections (`attn_sub_norm`, `ffn_sub_norm`).
    pub fn sub_norms(self) -> bool {
        self != Family::Llama
    }

    /// The FFN gate activation: relu² (true) or SiLU.
    pub fn relu_squared(self) -> bool {
        self == Family::BitNet158
    }

    /// NEOX RoPE (pairs `i, i + n/2`) rather than adjacent pairs.
    pub fn rope_neox(self) -> bool {
        self != Family::Llama
    }

    /// A human name for `bitnet info`.
    pub fn describe(self) -> &'static str {
        match self {
            Family::BitNet158 => "BitNet b1.58 (2B-4T graph: sub-norms, relu² FFN, tied head)",
            Family::BitNet => "BitNet (1bitLLM graph: sub-norms, SiLU FFN, tied head)",
            Family::Llama => "Llama with ternary I2_S weights (SiLU FFN, no sub-norms)",
        }
    }
}

/// Hyperparameters, all read from the GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub arch: String,
    pub family: Family,
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
    /// Linear RoPE scaling: positions are multiplied by this (1 / factor).
    pub rope_freq_scale: f32,
    pub eps: f32,
}

impl Config {
    pub fn from_gguf(g: &Gguf) -> Result<Config> {
        let arch = g
            .architecture()
            .ok_or_else(|| Error::format("general.architecture is missing"))?;
        let family = Family::of(arch).ok_or_else(|| {
            Error::unsupported(format!(
                "architecture '{arch}' is not one this runner knows (expected one of {ARCHITECTURES:?})"
            ))
        })?;
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
        for k in ["attention.key_length", "attention.value_length"] {
            if g.get(&key(k)).is_some() && int(k)? != head_dim {
                return Err(Error::unsupported(format!(
                    "{} differs from embedding_length / head_count = {head_dim}",
                    key(k)
                )));
            }
        }
        if head_dim > 512 {
            return Err(Error::unsupported(format!(
                "head size {head_dim} is above the supported 512"
            )));
        }
        let rope_dim = match g.get(&key("rope.dimension_count")) {
            None => head_dim,
            Some(_) => int("rope.dimension_count")?,
        };
        if rope_dim > head_dim
            || rope_dim % 2 != 0
            || (family == Family::Llama && rope_dim != head_dim)
        {
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
        let scaling = g.get_str(&key("rope.scaling.type")).unwrap_or("none");
        if !matches!(scaling, "none" | "linear") {
            return Err(Error::unsupported(format!(
                "RoPE scaling '{scaling}' is not supported (none and linear are)"
            )));
        }
        let factor = match g.get(&key("rope.scaling.factor")) {
            Some(_) => float("rope.scaling.factor", 1.0)?,
            None => float("rope.scale_linear", 1.0)?,
        };
        if let Some(v) = g.get(&key("rope.scaling.attn_factor")) {
            if v.as_f64() != Some(1.0) {
                return Err(Error::unsupported(format!(
                    "{} = {v:?} is not supported",
                    key("rope.scaling.attn_factor")
                )));
            }
        }
        Ok(Config {
            arch: arch.to_string(),
            family,
            rope_freq_scale: 1.0 / factor,
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
