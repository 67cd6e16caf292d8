//! A Hugging Face checkpoint directory: `config.json` read into the model's
//! hyperparameters, and its safetensors files (one, or shards listed by
//! `model.safetensors.index.json`) indexed by tensor name.
//!
//! Headers are parsed and validated by the `safetensors` crate (offsets
//! contiguous, sizes equal to dtype × shape, the file exactly as long as the
//! header says) over a memory map that is never read beyond the header;
//! tensor data is read with positioned reads, a tensor or a band of rows at
//! a time, so converting never keeps more than one tensor's bytes resident.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value as Json;

use crate::error::{Error, ErrorKind, Result};
use crate::model::Family;

/// How a checkpoint stores its ternary weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightScale {
    /// transformers' `BitLinear` (`linear_class` "bitlinear", the default):
    /// `y = (W_t · x) / weight_scale`, so the weight is `t / weight_scale`.
    Divide,
    /// transformers' `AutoBitLinear` (`linear_class` "autobitlinear"):
    /// `y = (W_t · x) · weight_scale`.
    Multiply,
}

/// The hyperparameters of `config.json` the GGUF needs.
#[derive(Debug, Clone)]
pub struct HParams {
    /// `architectures[0]`.
    pub hf_arch: String,
    pub family: Family,
    pub dim: usize,
    pub ffn_dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub vocab_size: usize,
    pub ctx_len: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    /// `rope_scaling` of type linear: its factor.
    pub rope_linear_factor: Option<f32>,
    /// `tie_word_embeddings`, if config.json says (without it the head is
    /// tied exactly when there is no `lm_head.weight`).
    pub tie_embeddings: Option<bool>,
    /// How a `weight_scale` tensor scales its weight.
    pub weight_scale: WeightScale,
    /// `quantization_config.quantization_mode` is "online": the checkpoint
    /// holds master weights that are ternarized when used.
    pub online: bool,
}

impl HParams {
    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }
}

fn usize_key(c: &Json, key: &str, file: &Path) -> Result<Option<usize>> {
    match c.get(key) {
        None | Some(Json::Null) => Ok(None),
        // GGUF stores these as u32
        Some(v) => v
            .as_u64()
            .filter(|&v| v <= u32::MAX as u64)
            .map(|v| Some(v as usize))
            .ok_or_else(|| {
                Error::format(format!(
                    "{}: {key} is {v}, an integer from 0 to {} expected",
                    file.display(),
                    u32::MAX
                ))
            }),
    }
}

fn f32_key(c: &Json, key: &str, file: &Path) -> Result<Option<f32>> {
    match c.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(v) => v.as_f64().map(|v| Some(v as f32)).ok_or_else(|| {
            Error::format(format!(
                "{}: {key} is {v}, a number expected",
                file.display()
            ))
        }),
    }
}

impl HParams {
    /// Reads `config.json` (already parsed from `file`).
    pub fn from_config(c: &Json, file: &Path) -> Result<HParams> {
        let bad = |m: String| Error::format(format!("{}: {m}", file.display()));
        let need = |key: &str| -> Result<usize> {
            usize_key(c, key, file)?.ok_or_else(|| bad(format!("{key} is missing")))
        };
        let hf_arch = c
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
            .ok_or_else(|| bad("architectures[0] is missing".into()))?
            .to_string();
        let quant = c.get("quantization_config").filter(|q| !q.is_null());
        let quant_method = quant
            .and_then(|q| q.get("quant_method"))
            .and_then(|m| m.as_str());
        let family = match hf_arch.as_str() {
            "BitNetForCausalLM" => Family::BitNet158,
            "BitnetForCausalLM" => Family::BitNet,
            "LlamaForCausalLM" | "LLaMAForCausalLM" => {
                if quant_method != Some("bitnet") {
                    return Err(bad(format!(
                        "{hf_arch} without a BitNet quantization_config (quant_method \"bitnet\") is a float model, not a ternary one"
                    )));
                }
                Family::Llama
            }
            other => {
                return Err(Error::unsupported(format!(
                    "{}: architecture {other} is not one this converter knows (BitNetForCausalLM, BitnetForCausalLM, LlamaForCausalLM with a BitNet quantization_config)",
                    file.display()
                )))
            }
        };
        if let Some(m) = quant_method {
            if m != "bitnet" {
                return Err(Error::unsupported(format!(
                    "{}: quantization_config.quant_method {m:?} is not BitNet's",
                    file.display()
                )));
            }
        }
        let qstr = |k: &str| quant.and_then(|q| q.get(k)).and_then(|v| v.as_str());
        let weight_scale = match qstr("linear_class") {
            None | Some("bitlinear") => WeightScale::Divide,
            Some("autobitlinear") => WeightScale::Multiply,
            Some(o) => {
                return Err(bad(format!(
                    "quantization_config.linear_class {o:?} is neither bitlinear nor autobitlinear"
                )))
            }
        };
        let online = match qstr("quantization_mode") {
            None | Some("offline") => false,
            Some("online") => true,
            Some(o) => {
                return Err(bad(format!(
                    "quantization_config.quantization_mode {o:?} is neither offline nor online"
                )))
            }
        };
        if quant
            .and_then(|q| q.get("use_rms_norm"))
            .and_then(|v| v.as_bool())
            == Some(true)
        {
            return Err(Error::unsupported(format!(
                "{}: quantization_config.use_rms_norm (a norm inside every linear layer) is not a graph bitnet.cpp runs",
                file.display()
            )));
        }
        let act = c.get("hidden_act").and_then(|v| v.as_str());
        let want_act = if family == Family::BitNet158 {
            "relu2"
        } else {
            "silu"
        };
        if let Some(act) = act {
            if act != want_act {
                return Err(Error::unsupported(format!(
                    "{}: hidden_act {act:?}; {hf_arch} in bitnet.cpp's graph uses {want_act:?}",
                    file.display()
                )));
            }
        }

        let dim = need("hidden_size")?;
        let n_heads = need("num_attention_heads")?;
        let n_kv_heads = usize_key(c, "num_key_value_heads", file)?.unwrap_or(n_heads);
        if dim == 0
            || n_heads == 0
            || n_kv_heads == 0
            || dim % n_heads != 0
            || n_heads % n_kv_heads != 0
        {
            return Err(bad(format!(
                "hidden_size {dim}, num_attention_heads {n_heads}, num_key_value_heads {n_kv_heads} do not divide"
            )));
        }
        if family == Family::Llama && (dim / n_heads) % 2 != 0 {
            return Err(bad(format!(
                "head size {} is odd: llama's q/k rows cannot be paired for RoPE",
                dim / n_heads
            )));
        }
        if let Some(hd) = usize_key(c, "head_dim", file)? {
            if hd != dim / n_heads {
                return Err(Error::unsupported(format!(
                    "{}: head_dim {hd} is not hidden_size / num_attention_heads = {}",
                    file.display(),
                    dim / n_heads
                )));
            }
        }
        let rope_linear_factor = match c.get("rope_scaling").filter(|r| !r.is_null()) {
            None => None,
            Some(r) => {
                let ty = r
                    .get("type")
                    .or_else(|| r.get("rope_type"))
                    .and_then(|t| t.as_str())
                    .unwrap_or("");
                let factor = r.get("factor").and_then(|f| f.as_f64());
                match (ty, factor) {
                    ("linear", Some(f)) => Some(f as f32),
                    _ => {
                        return Err(Error::unsupported(format!(
                            "{}: rope_scaling {r} is not supported (only linear)",
                            file.display()
                        )))
                    }
                }
            }
        };
        let tie_embeddings =
            match c.get("tie_word_embeddings") {
                None | Some(Json::Null) => None,
                Some(v) => Some(v.as_bool().ok_or_else(|| {
                    bad(format!("tie_word_embeddings is {v}, a boolean expected"))
                })?),
            };
        let h = HParams {
            hf_arch,
            family,
            dim,
            ffn_dim: need("intermediate_size")?,
            n_layers: need("num_hidden_layers")?,
            n_heads,
            n_kv_heads,
            vocab_size: need("vocab_size")?,
            ctx_len: usize_key(c, "max_position_embeddings", file)?.unwrap_or(2048),
            // transformers' defaults of BitNetConfig / LlamaConfig
            rope_theta: f32_key(c, "rope_theta", file)?.unwrap_or(if family == Family::BitNet158 {
                500000.0
            } else {
                10000.0
            }),
            rms_eps: f32_key(c, "rms_norm_eps", file)?.unwrap_or(if family == Family::Llama {
                1e-6
            } else {
                1e-5
            }),
            rope_linear_factor,
            tie_embeddings,
            weight_scale,
            online,
        };
        if h.ffn_dim == 0 || h.n_layers == 0 || h.vocab_size == 0 {
            return Err(bad(
                "intermediate_size, num_hidden_layers and vocab_size must be positive".into(),
            ));
        }
        Ok(h)
    }
}

/// A tensor of the checkpoint: where its bytes are and what they hold.
#[derive(Debug, Clone)]
pub struct TensorRef {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    shard: usize,
    /// Byte offset of the data in its file.
    offset: u64,
    len: usize,
}

impl TensorRef {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

struct Shard {
    path: PathBuf,
    file: File,
}

/// The safetensors files of a checkpoint, and (sharded) the file the index
/// names for each tensor.
type ShardFiles = (Vec<PathBuf>, Vec<(String, PathBuf)>);

/// A checkpoint directory, opened.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: Json,
    pub hp: HParams,
    shards: Vec<Shard>,
    tensors: HashMap<String, TensorRef>,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Io, format!("{}: {e}", path.display()))
}

/// Reads and parses a JSON file.
pub fn read_json(path: &Path) -> Result<Json> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(format!("{}: {e}", path.display())))
}

impl Checkpoint {
    /// Opens `dir`: `config.json` and the safetensors files, every header
    /// validated and every tensor indexed.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        if !dir.is_dir() {
            return Err(io_err(dir, "not a directory"));
        }
        let config_path = dir.join("config.json");
        let config = read_json(&config_path)?;
        let hp = HParams::from_config(&config, &config_path)?;
        let (files, expected) = Self::shard_files(dir)?;
        let mut ck = Checkpoint {
            dir: dir.to_path_buf(),
            config,
            hp,
            shards: Vec::new(),
            tensors: HashMap::new(),
        };
        for path in files {
            ck.add_shard(path)?;
        }
        for (name, file) in expected {
            match ck.tensors.get(&name) {
                Some(t) if ck.shards[t.shard].path.file_name() == Some(file.as_os_str()) => {}
                _ => {
                    return Err(Error::format(format!(
                    "{}: tensor '{name}' is listed in model.safetensors.index.json but not in {}",
                    dir.display(),
                    file.display()
                )))
                }
            }
        }
        Ok(ck)
    }

    /// The safetensors files of `dir`, and (for a sharded checkpoint) which
    /// tensor the index puts in which file.
    fn shard_files(dir: &Path) -> Result<ShardFiles> {
        let index = dir.join("model.safetensors.index.json");
        if index.is_file() {
            let j = read_json(&index)?;
            let map = j
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| {
                    Error::format(format!("{}: weight_map is missing", index.display()))
                })?;
            let mut files: Vec<PathBuf> = Vec::new();
            let mut expected = Vec::new();
            for (name, f) in map {
                let f = f.as_str().ok_or_else(|| {
                    Error::format(format!(
                        "{}: weight_map entry of '{name}' is not a file name",
                        index.display()
                    ))
                })?;
                let rel = PathBuf::from(f);
                if rel.components().count() != 1 || f.starts_with('.') {
                    return Err(Error::format(format!(
                        "{}: weight_map file {f:?} is not a plain file name in the directory",
                        index.display()
                    )));
                }
                if !files.contains(&rel) {
                    files.push(rel.clone());
                }
                expected.push((name.clone(), rel));
            }
            files.sort();
            return Ok((files.into_iter().map(|f| dir.join(f)).collect(), expected));
        }
        let single = dir.join("model.safetensors");
        if single.is_file() {
            return Ok((vec![single], Vec::new()));
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| io_err(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(io_err(
                dir,
                "no model.safetensors, model.safetensors.index.json or *.safetensors file",
            ));
        }
        Ok((files, Vec::new()))
    }

    fn add_shard(&mut self, path: PathBuf) -> Result<()> {
        let file = File::open(&path).map_err(|e| io_err(&path, e))?;
        // SAFETY: the map is read only while `parse_header` runs, and only
        // its header bytes (the crate checks the total length against the
        // header without touching the data); a file truncated under us
        // meanwhile would fault, as any reader of a changing file may.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io_err(&path, e))?;
        let entries =
            parse_header(&map).map_err(|e| Error::format(format!("{}: {e}", path.display())))?;
        let shard = self.shards.len();
        for HeaderEntry {
            name,
            dtype,
            shape,
            offset,
            len,
        } in entries
        {
            if let Some(prev) = self.tensors.get(&name) {
                return Err(Error::format(format!(
                    "{}: tensor '{name}' is also in {}",
                    path.display(),
                    self.shards[prev.shard].path.display()
                )));
            }
            self.tensors.insert(
                name.clone(),
                TensorRef {
                    name,
                    dtype,
                    shape,
                    shard,
                    offset,
                    len,
                },
            );
        }
        self.shards.push(Shard { path, file });
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&TensorRef> {
        self.tensors.get(name)
    }

    /// The first of `names` the checkpoint has.
    pub fn find(&self, names: &[String]) -> Option<&TensorRef> {
        names.iter().find_map(|n| self.tensors.get(n))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|s| s.as_str())
    }

    /// The file a tensor lives in (for messages).
    pub fn file_of(&self, t: &TensorRef) -> &Path {
        &self.shards[t.shard].path
    }

    /// An error about tensor `t`, naming its file.
    pub fn tensor_err(&self, t: &TensorRef, m: impl std::fmt::Display) -> Error {
        Error::format(format!(
            "{}: tensor '{}': {m}",
            self.file_of(t).display(),
            t.name
        ))
    }

    /// The raw bytes of elements `start..start + count` of `t`.
    pub fn read_bytes(&self, t: &TensorRef, start: usize, count: usize) -> Result<Vec<u8>> {
        let esize = t.dtype.bitsize() / 8;
        let (from, n) = (start * esize, count * esize);
        if esize == 0 || from + n > t.len {
            return Err(self.tensor_err(t, "read outside the tensor"));
        }
        let mut buf = vec![0u8; n];
        let shard = &self.shards[t.shard];
        shard
            .file
            .read_exact_at(&mut buf, t.offset + from as u64)
            .map_err(|e| io_err(&shard.path, format!("tensor '{}': {e}", t.name)))?;
        Ok(buf)
    }

    /// Elements `start..start + count` of a float tensor (BF16, F16, F32), as f32.
    pub fn read_f32(&self, t: &TensorRef, start: usize, count: usize) -> Result<Vec<f32>> {
        let bytes = self.read_bytes(t, start, count)?;
        Ok(match t.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect(),
            other => {
                return Err(self.tensor_err(
                    t,
                    format!("dtype {other:?} where a float (BF16, F16, F32) is needed"),
                ))
            }
        })
    }
}

/// One tensor of a safetensors header.
#[derive(Debug, Clone)]
pub struct HeaderEntry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte offset of the data in the file.
    pub offset: u64,
    pub len: usize,
}

/// Parses and validates one safetensors file's header: its tensors in file
/// order.
pub fn parse_header(bytes: &[u8]) -> std::result::Result<Vec<HeaderEntry>, String> {
    let (n, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| format!("not a valid safetensors file: {e}"))?;
    let base = 8 + n as u64;
    let mut out: Vec<HeaderEntry> = meta
        .tensors()
        .into_iter()
        .map(|(name, info)| {
            let (s, e) = info.data_offsets;
            HeaderEntry {
                name,
                dtype: info.dtype,
                shape: info.shape.clone(),
                offset: base + s as u64,
                len: e - s,
            }
        })
        .collect();
    out.sort_by_key(|t| t.offset);
    Ok(out)
}
