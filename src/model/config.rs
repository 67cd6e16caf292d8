//! The model's hyperparameters, read and checked from the GGUF metadata.

use crate::error::{Error, Result};
use crate::gguf::{Gguf, Value};

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
