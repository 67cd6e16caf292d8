//! Synthetic ternary models in the layout bitnet.cpp's converter writes
//! (I2_S weights with about 40% zeros, F16 embedding, and for the `llama`
//! family an untied F16 `output.weight`), in the shape of each model
//! family bitnet.cpp runs, so anyone can benchmark without downloading the
//! real models.
//! The vocabulary is copied from a GGUF, or, without one, made up: the 256
//! byte tokens, BOS/EOS/`<|eot_id|>`, and reserved tokens up to the size.

use std::io::{BufWriter, Write};
use std::path::Path;

use half::f16;

use crate::error::{Error, Result};
use crate::gguf::{self, Array, GgmlType, Gguf, TensorSpec, Value};
use crate::model::Family;
use crate::quant::i2s;

/// Model dimensions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// The graph (and so the architecture name and the tensors written).
    pub family: Family,
    pub dim: usize,
    pub ffn_dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub vocab_size: usize,
    pub ctx_len: usize,
    pub rope_theta: f32,
}

impl Shape {
    /// BitNet-b1.58-2B-4T.
    pub const B2_4T: Shape = Shape {
        family: Family::BitNet158,
        dim: 2560,
        ffn_dim: 6912,
        n_layers: 30,
        n_heads: 20,
        n_kv_heads: 5,
        vocab_size: 128256,
        ctx_len: 4096,
        rope_theta: 500000.0,
    };
    /// 1bitLLM/bitnet_b1_58-large (0.7B), arch `bitnet`.
    pub const LARGE: Shape = Shape {
        family: Family::BitNet,
        dim: 1536,
        ffn_dim: 4096,
        n_layers: 24,
        n_heads: 16,
        n_kv_heads: 16,
        vocab_size: 32002,
        ctx_len: 2048,
        rope_theta: 10000.0,
    };
    /// 1bitLLM/bitnet_b1_58-3B, arch `bitnet` (head size 100; `ffn_down`
    /// rows of 8640, not a multiple of 128).
    pub const B3: Shape = Shape {
        family: Family::BitNet,
        dim: 3200,
        ffn_dim: 8640,
        n_layers: 26,
        n_heads: 32,
        n_kv_heads: 32,
        vocab_size: 32002,
        ctx_len: 2048,
        rope_theta: 10000.0,
    };
    /// HF1BitLLM/Llama3-8B-1.58-100B-tokens, arch `llama`.
    pub const LLAMA3_8B: Shape = Shape {
        family: Family::Llama,
        dim: 4096,
        ffn_dim: 14336,
        n_layers: 32,
        n_heads: 32,
        n_kv_heads: 8,
        vocab_size: 128256,
        ctx_len: 8192,
        rope_theta: 500000.0,
    };
    /// tiiuae/Falcon3-3B-Instruct-1.58bit, arch `llama`, head size 256.
    pub const FALCON3_3B: Shape = Shape {
        family: Family::Llama,
        dim: 3072,
        ffn_dim: 9216,
        n_layers: 22,
        n_heads: 12,
        n_kv_heads: 4,
        vocab_size: 131072,
        ctx_len: 32768,
        rope_theta: 1000042.0,
    };
    /// tiiuae/Falcon3-10B-Instruct-1.58bit, arch `llama`, head size 256.
    pub const FALCON3_10B: Shape = Shape {
        family: Family::Llama,
        dim: 3072,
        ffn_dim: 23040,
        n_layers: 40,
        n_heads: 12,
        n_kv_heads: 4,
        vocab_size: 131072,
        ctx_len: 32768,
        rope_theta: 1000042.0,
    };
    /// The shape of the shared `bitnet-tiny.gguf` fixture.
    pub const TINY: Shape = Shape {
        family: Family::BitNet158,
        dim: 256,
        ffn_dim: 768,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 1,
        vocab_size: 128256,
        ctx_len: 4096,
        rope_theta: 500000.0,
    };

    /// A very small model with a made-up 300-token vocabulary (fuzzing seeds, tests).
    pub const MICRO: Shape = Shape {
        family: Family::BitNet158,
        dim: 128,
        ffn_dim: 256,
        n_layers: 1,
        n_heads: 2,
        n_kv_heads: 1,
        vocab_size: 300,
        ctx_len: 64,
        rope_theta: 500000.0,
    };

    /// The names [`Shape::by_name`] knows, with what each is.
    pub const NAMES: [(&'static str, &'static str); 8] = [
        ("2b4t", "BitNet-b1.58-2B-4T (arch bitnet-b1.58)"),
        ("large", "1bitLLM bitnet_b1_58-large, 0.7B (arch bitnet)"),
        ("3b", "1bitLLM bitnet_b1_58-3B (arch bitnet)"),
        ("8b", "Llama3-8B-1.58-100B-tokens (arch llama)"),
        ("falcon3-3b", "Falcon3-3B-1.58bit (arch llama)"),
        ("falcon3-10b", "Falcon3-10B-1.58bit (arch llama)"),
        ("tiny", "the shape of the shared bitnet-tiny fixture"),
        ("micro", "a 300-token toy"),
    ];

    pub fn by_name(name: &str) -> Option<Shape> {
        match name.to_ascii_lowercase().as_str() {
            "2b4t" | "2b-4t" => Some(Shape::B2_4T),
            "large" | "0.7b" => Some(Shape::LARGE),
            "3b" => Some(Shape::B3),
            "8b" | "llama3-8b" => Some(Shape::LLAMA3_8B),
            "falcon3-3b" => Some(Shape::FALCON3_3B),
            "falcon3-10b" | "10b" => Some(Shape::FALCON3_10B),
            "tiny" => Some(Shape::TINY),
            "micro" => Some(Shape::MICRO),
            _ => None,
        }
    }

    /// The shape with another graph (e.g. `gen-model --arch`).
    pub fn with_family(self, family: Family) -> Shape {
        Shape { family, ..self }
    }

    /// The architecture name written to the file.
    pub fn arch(&self) -> &'static str {
        self.family.arch()
    }

    fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Tokenizer metadata: copied from `vocab`, or a made-up byte-level one.
fn tokenizer_metadata(vocab: Option<&Gguf>, size: usize) -> Result<Vec<(String, Value)>> {
    if let Some(v) = vocab {
        let mut out = Vec::new();
        for (k, val) in v.metadata() {
            if k.starts_with("tokenizer.") {
                out.push((k.clone(), val.clone()));
            }
        }
        let n = v
            .get("tokenizer.ggml.tokens")
            .and_then(Value::as_array)
            .map(Array::len)
            .unwrap_or(0);
        if n != size {
            return Err(Error::invalid(format!(
                "the vocabulary GGUF has {n} tokens, the shape needs {size}"
            )));
        }
        return Ok(out);
    }
    if size < 300 {
        return Err(Error::invalid(
            "a made-up vocabulary needs at least 300 tokens",
        ));
    }
    // GPT-2 printable byte characters, then specials and reserved tokens.
    let mut tokens: Vec<String> = Vec::with_capacity(size);
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        let c = if printable {
            b
        } else {
            n += 1;
            255 + n
        };
        tokens.push(char::from_u32(c).unwrap().to_string());
    }
    let mut types = vec![1i32; 256];
    let bos = tokens.len() as u32;
    for s in ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"] {
        tokens.push(s.into());
        types.push(3);
    }
    while tokens.len() < size {
        tokens.push(format!("<|reserved_special_token_{}|>", tokens.len()));
        types.push(3);
    }
    Ok(vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        (
            "tokenizer.ggml.pre".into(),
            Value::String("llama-bpe".into()),
        ),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(Array::String(tokens)),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(Array::I32(types)),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(Array::String(vec![])),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(bos)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(bos + 1)),
        ("tokenizer.ggml.eot_token_id".into(), Value::U32(bos + 2)),
    ])
}

/// Writes a synthetic model to `path`. `progress(done, total)` is called as
/// tensor bytes are written.
pub fn write_model(
    path: &Path,
    shape: Shape,
    vocab: Option<&Gguf>,
    seed: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let s = shape;
    let a = s.arch();
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.into())),
        (
            "general.name".into(),
            Value::String(format!("synthetic-{a}-{}x{}", s.n_layers, s.dim)),
        ),
        ("general.alignment".into(), Value::U32(32)),
    ];
    let u = |k: &str, v: usize| (format!("{a}.{k}"), Value::U32(v as u32));
    md.extend([
        u("vocab_size", s.vocab_size),
        u("context_length", s.ctx_len),
        u("embedding_length", s.dim),
        u("block_count", s.n_layers),
        u("feed_forward_length", s.ffn_dim),
        u("rope.dimension_count", s.head_dim()),
        u("attention.head_count", s.n_heads),
        u("attention.head_count_kv", s.n_kv_heads),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-5),
        ),
        (format!("{a}.rope.freq_base"), Value::F32(s.rope_theta)),
    ]);
    md.extend(tokenizer_metadata(vocab, s.vocab_size)?);

    let (d, f, kv) = (
        s.dim as u64,
        s.ffn_dim as u64,
        (s.n_kv_heads * s.head_dim()) as u64,
    );
    let mut tensors = vec![TensorSpec {
        name: "token_embd.weight".into(),
        dims: vec![d, s.vocab_size as u64],
        ty: GgmlType::F16,
    }];
    for l in 0..s.n_layers {
        let t = |n: &str, dims: Vec<u64>, ty| TensorSpec {
            name: format!("blk.{l}.{n}.weight"),
            dims,
            ty,
        };
        tensors.extend([
            t("attn_norm", vec![d], GgmlType::F32),
            t("attn_q", vec![d, d], GgmlType::I2S),
            t("attn_k", vec![d, kv], GgmlType::I2S),
            t("attn_v", vec![d, kv], GgmlType::I2S),
            t("attn_output", vec![d, d], GgmlType::I2S),
            t("ffn_norm", vec![d], GgmlType::F32),
            t("ffn_gate", vec![d, f], GgmlType::I2S),
            t("ffn_up", vec![d, f], GgmlType::I2S),
            t("ffn_down", vec![f, d], GgmlType::I2S),
        ]);
        if s.family.sub_norms() {
            tensors.extend([
                t("attn_sub_norm", vec![d], GgmlType::F32),
                t("ffn_sub_norm", vec![f], GgmlType::F32),
            ]);
        }
    }
    if s.family == Family::Llama {
        tensors.push(TensorSpec {
            name: "output.weight".into(),
            dims: vec![d, s.vocab_size as u64],
            ty: GgmlType::F16,
        });
    }
    tensors.push(TensorSpec {
        name: "output_norm.weight".into(),
        dims: vec![d],
        ty: GgmlType::F32,
    });
    let total: u64 = tensors
        .iter()
        .map(|t| t.ty.tensor_bytes(&t.dims).unwrap_or(0))
        .sum();

    let file = std::fs::File::create(path)
        .map_err(|e| Error::new(crate::ErrorKind::Io, format!("{}: {e}", path.display())))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut done = 0u64;
    gguf::write(&mut out, &md, &tensors, 32, &mut |i, w| {
        let t = &tensors[i];
        let n: u64 = t.dims.iter().product();
        let mut buf = Vec::with_capacity(1 << 16);
        match t.ty {
            GgmlType::F16 => {
                for _ in 0..n {
                    // uniform in about [-0.05, 0.05]
                    let v = ((rng.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1;
                    buf.extend_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
                    if buf.len() >= 1 << 16 {
                        w.write_all(&buf)?;
                        buf.clear();
                    }
                }
            }
            GgmlType::F32 => {
                for _ in 0..n {
                    let v = 1.0 + ((rng.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2;
                    buf.extend_from_slice(&v.to_le_bytes());
                }
            }
            _ => {
                // Four codes per byte: 40% zeros (code 1), 30% -1, 30% +1.
                for _ in 0..n / 4 {
                    let r = rng.next();
                    let mut byte = 0u8;
                    for k in 0..4 {
                        let x = ((r >> (16 * k)) & 0xFFFF) * 10 / 0x10000;
                        let code = if x < 4 {
                            1
                        } else if x < 7 {
                            0
                        } else {
                            2
                        };
                        byte |= code << (2 * k);
                    }
                    buf.push(byte);
                    if buf.len() >= 1 << 16 {
                        w.write_all(&buf)?;
                        buf.clear();
                    }
                }
                w.write_all(&buf)?;
                buf.clear();
                let mut trailer = [0u8; i2s::TRAILER_BYTES];
                trailer[..4].copy_from_slice(&1.0f32.to_le_bytes());
                buf.extend_from_slice(&trailer);
            }
        }
        w.write_all(&buf)?;
        done += t.ty.tensor_bytes(&t.dims).unwrap_or(0);
        progress(done, total);
        Ok(())
    })?;
    out.flush()?;
    Ok(())
}

/// Writes a synthetic Hugging Face checkpoint of `shape` into `dir` (made
/// if missing), as the published BitNet checkpoints lay it out, so that
/// `bitnet convert` can be measured without a download: `config.json`, the
/// tokenizer files of `vocab` (or of the made-up vocabulary), and BF16
/// weights in safetensors shards of at most 4 GiB with
/// `model.safetensors.index.json`. The ternary matrices are BF16 master
/// weights, or with `packed` transformers' packed `uint8` with a BF16
/// `weight_scale` (AutoBitLinear, offline). `progress(done, total)` as
/// tensor bytes are written.
pub fn write_checkpoint(
    dir: &Path,
    shape: Shape,
    vocab: Option<&Gguf>,
    packed: bool,
    seed: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let s = shape;
    let io = |e: std::io::Error, p: &Path| {
        Error::new(crate::ErrorKind::Io, format!("{}: {e}", p.display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| io(e, dir))?;
    let llama = s.family == Family::Llama;
    let mut config = serde_json::json!({
        "architectures": [match s.family {
            Family::BitNet158 => "BitNetForCausalLM",
            Family::BitNet => "BitnetForCausalLM",
            Family::Llama => "LlamaForCausalLM",
        }],
        // (as the published checkpoints; tools such as transformers read it)
        "model_type": if s.family == Family::BitNet158 { "bitnet" } else { "llama" },
        "hidden_act": if s.family == Family::BitNet158 { "relu2" } else { "silu" },
        "hidden_size": s.dim,
        "intermediate_size": s.ffn_dim,
        "num_hidden_layers": s.n_layers,
        "num_attention_heads": s.n_heads,
        "num_key_value_heads": s.n_kv_heads,
        "vocab_size": s.vocab_size,
        "max_position_embeddings": s.ctx_len,
        "rms_norm_eps": 1e-5,
        "rope_theta": s.rope_theta,
        "tie_word_embeddings": !llama,
        "torch_dtype": "bfloat16",
    });
    if packed || llama {
        config["quantization_config"] = serde_json::json!({
            "quant_method": "bitnet",
            "linear_class": "autobitlinear",
            "quantization_mode": if packed { "offline" } else { "online" },
        });
    }
    let p = dir.join("config.json");
    std::fs::write(&p, config.to_string()).map_err(|e| io(e, &p))?;
    let made_up;
    let vocab = match vocab {
        Some(v) => {
            // (its size must be the shape's)
            tokenizer_metadata(Some(v), s.vocab_size)?;
            v
        }
        None => {
            made_up = Gguf::from_metadata(&tokenizer_metadata(None, s.vocab_size)?)?;
            &made_up
        }
    };
    crate::convert::vocab::export::write_tokenizer_files(vocab, dir)?;

    // (name, dtype, shape); data generated when written
    let (d, f, kv) = (s.dim, s.ffn_dim, s.n_kv_heads * s.head_dim());
    let mut tensors: Vec<(String, &str, Vec<usize>)> = vec![
        (
            "model.embed_tokens.weight".into(),
            "BF16",
            vec![s.vocab_size, d],
        ),
        ("model.norm.weight".into(), "BF16", vec![d]),
    ];
    if llama {
        tensors.push(("lm_head.weight".into(), "BF16", vec![s.vocab_size, d]));
    }
    for l in 0..s.n_layers {
        let p = format!("model.layers.{l}.");
        tensors.push((format!("{p}input_layernorm.weight"), "BF16", vec![d]));
        tensors.push((
            format!("{p}post_attention_layernorm.weight"),
            "BF16",
            vec![d],
        ));
        if s.family.sub_norms() {
            let (a, b) = if s.family == Family::BitNet {
                ("self_attn.inner_attn_ln", "mlp.ffn_layernorm")
            } else {
                ("self_attn.attn_sub_norm", "mlp.ffn_sub_norm")
            };
            tensors.push((format!("{p}{a}.weight"), "BF16", vec![d]));
            tensors.push((format!("{p}{b}.weight"), "BF16", vec![f]));
        }
        for (m, rows, cols) in [
            ("self_attn.q_proj", d, d),
            ("self_attn.k_proj", kv, d),
            ("self_attn.v_proj", kv, d),
            ("self_attn.o_proj", d, d),
            ("mlp.gate_proj", f, d),
            ("mlp.up_proj", f, d),
            ("mlp.down_proj", d, f),
        ] {
            if packed {
                tensors.push((format!("{p}{m}.weight"), "U8", vec![rows / 4, cols]));
                tensors.push((format!("{p}{m}.weight_scale"), "BF16", vec![1]));
            } else {
                tensors.push((format!("{p}{m}.weight"), "BF16", vec![rows, cols]));
            }
        }
    }
    let bytes_of = |t: &(String, &str, Vec<usize>)| -> u64 {
        let n: usize = t.2.iter().product();
        (if t.1 == "U8" { n } else { 2 * n }) as u64
    };
    // shards of at most 4 GiB, in order
    const SHARD: u64 = 4 << 30;
    let mut shards: Vec<Vec<usize>> = vec![vec![]];
    let mut size = 0u64;
    for (i, t) in tensors.iter().enumerate() {
        if size > 0 && size + bytes_of(t) > SHARD {
            shards.push(vec![]);
            size = 0;
        }
        shards.last_mut().expect("one").push(i);
        size += bytes_of(t);
    }
    let total: u64 = tensors.iter().map(bytes_of).sum();
    let mut done = 0u64;
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut weight_map = serde_json::Map::new();
    let n_shards = shards.len();
    for (k, members) in shards.iter().enumerate() {
        let name = if n_shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{n_shards:05}.safetensors", k + 1)
        };
        let path = dir.join(&name);
        let mut header = serde_json::Map::new();
        let mut off = 0u64;
        for &i in members {
            let t = &tensors[i];
            header.insert(
                t.0.clone(),
                serde_json::json!({"dtype": t.1, "shape": t.2, "data_offsets": [off, off + bytes_of(t)]}),
            );
            weight_map.insert(t.0.clone(), serde_json::json!(name));
            off += bytes_of(t);
        }
        let mut h = serde_json::to_vec(&header).map_err(|e| Error::invalid(e.to_string()))?;
        while !h.len().is_multiple_of(8) {
            h.push(b' ');
        }
        let file = std::fs::File::create(&path).map_err(|e| io(e, &path))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&(h.len() as u64).to_le_bytes())?;
        out.write_all(&h)?;
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
        for &i in members {
            let (name, dtype, dims) = &tensors[i];
            let n: usize = dims.iter().product();
            let norm = dims.len() == 1 && !name.ends_with("weight_scale");
            for _ in 0..n {
                let r = rng.next();
                let u = (r >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                if *dtype == "U8" {
                    // four values a byte: 40% zeros (1), 30% -1 (0), 30% +1 (2)
                    let mut byte = 0u8;
                    for k in 0..4 {
                        let x = ((r >> (16 * k)) & 0xFFFF) * 10 / 0x10000;
                        let v = if x < 4 {
                            1
                        } else if x < 7 {
                            0
                        } else {
                            2
                        };
                        byte |= v << (2 * k);
                    }
                    buf.push(byte);
                } else {
                    let v = if norm {
                        1.0 + u * 0.2
                    } else if name.ends_with("weight_scale") {
                        0.02 + (u + 0.5) * 0.01
                    } else {
                        u * 0.1
                    };
                    buf.extend_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes());
                }
                if buf.len() >= 1 << 16 {
                    out.write_all(&buf)?;
                    buf.clear();
                }
            }
            out.write_all(&buf)?;
            buf.clear();
            done += bytes_of(&tensors[i]);
            progress(done, total);
        }
        out.flush()?;
    }
    if n_shards > 1 {
        let p = dir.join("model.safetensors.index.json");
        let index =
            serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        std::fs::write(&p, index.to_string()).map_err(|e| io(e, &p))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Model, Session};

    #[test]
    fn a_small_synthetic_model_of_each_family_loads_and_runs() {
        // (the bitnet one with FFN rows of 320, not a multiple of 128, as
        // bitnet_b1_58-3B's 8640)
        for family in [Family::BitNet158, Family::BitNet, Family::Llama] {
            let shape = Shape {
                family,
                dim: 256,
                ffn_dim: if family == Family::BitNet { 320 } else { 384 },
                n_layers: 2,
                n_heads: 4,
                n_kv_heads: 2,
                vocab_size: 512,
                ctx_len: 64,
                rope_theta: 10000.0,
            };
            let path = std::env::temp_dir().join(format!(
                "bitnet-synth-{}-{}.gguf",
                std::process::id(),
                shape.arch()
            ));
            write_model(&path, shape, None, 7, &mut |_, _| {}).unwrap();
            let model = Model::load(&path).unwrap();
            std::fs::remove_file(&path).ok();
            assert_eq!(model.config.family, family);
            assert_eq!(model.config.n_kv_heads, 2);
            assert_eq!(
                model.head_bytes(),
                512 * 256 * 2,
                "F16 head (untied for llama)"
            );
            assert_eq!(
                model.tokenizer.encode("hi", true, false),
                vec![256, b'h' as u32, b'i' as u32]
            );
            let mut s = Session::new(&model, 0, 4, 1).unwrap();
            let logits = s.forward(&[256, 10, 20]).unwrap();
            assert_eq!(logits.len(), 512);
            assert!(logits.iter().all(|l| l.is_finite()));
            assert!(s.forward(&[600]).is_err(), "token outside the vocabulary");
            let too_long = vec![1u32; 70];
            assert!(s
                .forward(&too_long)
                .unwrap_err()
                .message
                .contains("do not fit"));
        }
    }

    #[test]
    fn a_synthetic_checkpoint_of_each_family_converts_and_runs() {
        for (family, packed) in [
            (Family::BitNet158, true),
            (Family::BitNet, false),
            (Family::Llama, true),
            (Family::Llama, false),
        ] {
            let shape = Shape::MICRO.with_family(family);
            let dir = std::env::temp_dir().join(format!(
                "bitnet-synth-ckpt-{}-{}-{packed}",
                std::process::id(),
                shape.arch()
            ));
            std::fs::remove_dir_all(&dir).ok();
            write_checkpoint(&dir, shape, None, packed, 3, &mut |_, _| {}).unwrap();
            let g = crate::convert::open_gguf(&dir);
            std::fs::remove_dir_all(&dir).ok();
            let model = Model::from_gguf(std::sync::Arc::new(g.unwrap())).unwrap();
            assert_eq!(model.config.family, family);
            let mut s = Session::new(&model, 16, 4, 1).unwrap();
            let logits = s.forward(&[256, 10, 20]).unwrap();
            assert!(logits.iter().all(|l| l.is_finite()));
        }
    }
}
