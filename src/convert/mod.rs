//! `bitnet convert`: a Hugging Face checkpoint directory to a GGUF, with no
//! Python: the tensors and metadata bitnet.cpp's own pipeline
//! (`convert-hf-to-gguf-bitnet.py` / `convert-ms-to-gguf-bitnet.py`, then
//! `llama-quantize ... I2_S`) writes for the model, so bitnet.cpp runs the
//! file, and `bitnet` gives the same tokens on it.
//!
//! | `architectures[0]` | GGUF architecture | ternary weights |
//! |---|---|---|
//! | `BitNetForCausalLM` (2B-4T) | `bitnet-b1.58` | absmean of master weights, or packed `uint8` + `weight_scale` |
//! | `BitnetForCausalLM` (1bitLLM) | `bitnet` | absmean of master weights |
//! | `LlamaForCausalLM` + BitNet `quantization_config` (Llama3-8B-1.58, Falcon3-1.58bit, Falcon-E) | `llama`, q/k rows permuted | packed `uint8` + `weight_scale`, ternary floats, or (mode "online") absmean |
//!
//! A conversion is planned first ([`Conversion::plan`]: every tensor found,
//! its shape checked against `config.json`, the vocabulary read), then
//! written one tensor at a time ([`Conversion::write`]), each read from the
//! checkpoint only when its turn comes.

mod checkpoint;
mod ternary;
pub mod vocab;

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use half::f16;
use safetensors::Dtype;

pub use checkpoint::{parse_header, Checkpoint, HParams, HeaderEntry, TensorRef, WeightScale};
pub use ternary::Ternary;

use crate::error::{Error, ErrorKind, Result};
use crate::gguf::{self, GgmlType, Gguf, TensorSpec, Value};
use crate::model::Family;
use crate::quant::q8_0::BlockQ8_0;
use crate::quant::Block;

/// How the ternary matrices are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutType {
    /// I2_S, what bitnet.cpp runs (`llama-quantize ... I2_S`'s output).
    I2S,
    /// Floats `t · scale`, the converter's intermediate file that
    /// `llama-quantize` takes.
    F32,
    F16,
}

/// The type of a float matrix (embedding, LM head).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatType {
    F32,
    F16,
    Q8_0,
    Q6K,
}

impl FloatType {
    pub fn ggml(self) -> GgmlType {
        match self {
            FloatType::F32 => GgmlType::F32,
            FloatType::F16 => GgmlType::F16,
            FloatType::Q8_0 => GgmlType::Q8_0,
            FloatType::Q6K => GgmlType::Q6K,
        }
    }
}

/// What to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub outtype: OutType,
    /// The LM head's type: `output.weight`, or the token embedding when the
    /// head is tied to it (`llama-quantize --token-embedding-type` /
    /// `--output-tensor-type`).
    pub head: FloatType,
    /// The token embedding's type when the head is not tied to it.
    pub token_embd: FloatType,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            outtype: OutType::I2S,
            head: FloatType::F16,
            token_embd: FloatType::F16,
        }
    }
}

/// Where a GGUF tensor's data comes from.
enum Source {
    /// A vector (norm weights), written F32.
    Vector(TensorRef),
    /// A `[rows, dim]` float matrix written as `ty`, a band of rows at a time.
    Matrix(TensorRef),
    /// A ternary matrix `[rows, cols]`.
    Ternary {
        t: TensorRef,
        weight_scale: Option<TensorRef>,
        /// `llama`'s q/k permutation, with this many heads.
        permute_heads: Option<usize>,
        rows: usize,
        cols: usize,
    },
}

struct Job {
    spec: TensorSpec,
    src: Source,
}

/// A planned conversion: metadata and tensor list, nothing read yet but
/// headers, `config.json` and the tokenizer files.
pub struct Conversion {
    ck: Checkpoint,
    opts: Options,
    metadata: Vec<(String, Value)>,
    jobs: Vec<Job>,
}

/// HF names of a layer's ternary matrices, by GGUF name.
const MATRICES: [(&str, &str); 7] = [
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

impl Conversion {
    /// Opens the checkpoint in `dir` and plans its conversion.
    pub fn plan(dir: &Path, opts: Options) -> Result<Conversion> {
        let ck = Checkpoint::open(dir)?;
        let h = ck.hp.clone();
        let a = h.family.arch();
        let file_type = match opts.outtype {
            OutType::F32 => 0u32,
            OutType::F16 => 1,
            // LLAMA_FTYPE_MOSTLY_I2_S, as bitnet.cpp's files say
            OutType::I2S => 40,
        };
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".into());
        let mut md: Vec<(String, Value)> = vec![
            ("general.architecture".into(), Value::String(a.into())),
            ("general.name".into(), Value::String(name)),
            ("general.file_type".into(), Value::U32(file_type)),
            ("general.quantization_version".into(), Value::U32(2)),
        ];
        let u = |k: &str, v: usize| (format!("{a}.{k}"), Value::U32(v as u32));
        md.extend([
            u("vocab_size", h.vocab_size),
            u("context_length", h.ctx_len),
            u("embedding_length", h.dim),
            u("block_count", h.n_layers),
            u("feed_forward_length", h.ffn_dim),
            u("rope.dimension_count", h.head_dim()),
            u("attention.head_count", h.n_heads),
            u("attention.head_count_kv", h.n_kv_heads),
            (
                format!("{a}.attention.layer_norm_rms_epsilon"),
                Value::F32(h.rms_eps),
            ),
            (format!("{a}.rope.freq_base"), Value::F32(h.rope_theta)),
        ]);
        if let Some(f) = h.rope_linear_factor {
            md.push((
                format!("{a}.rope.scaling.type"),
                Value::String("linear".into()),
            ));
            md.push((format!("{a}.rope.scaling.factor"), Value::F32(f)));
        }
        md.extend(vocab::vocab_metadata(dir, &ck.config, h.vocab_size)?);

        let mut used: Vec<String> = Vec::new();
        let mut jobs = Vec::new();
        let (d, f, kv) = (h.dim, h.ffn_dim, h.n_kv_heads * h.head_dim());

        let embd = take(
            &ck,
            &mut used,
            &["model.embed_tokens.weight"],
            &[h.vocab_size, h.dim],
        )?;
        let lm_head = ck.get("lm_head.weight").is_some();
        let tied = h.tie_embeddings.unwrap_or(!lm_head);
        if !tied && !lm_head {
            return Err(Error::format(format!(
                "{}: tie_word_embeddings is false but there is no lm_head.weight",
                dir.display()
            )));
        }
        if tied && lm_head {
            // transformers ties it to the embedding: the stored copy is unused
            used.push("lm_head.weight".into());
        }
        let embd_ty = match opts.outtype {
            OutType::F32 => FloatType::F32,
            _ if tied => opts.head,
            _ => opts.token_embd,
        };
        jobs.push(matrix_job(
            &ck,
            "token_embd.weight",
            embd,
            embd_ty,
            opts.outtype,
        )?);
        let norm = take(&ck, &mut used, &["model.norm.weight"], &[h.dim])?;
        jobs.push(vector_job("output_norm.weight", norm));
        if !tied {
            let head = take(&ck, &mut used, &["lm_head.weight"], &[h.vocab_size, h.dim])?;
            let ty = if opts.outtype == OutType::F32 {
                FloatType::F32
            } else {
                opts.head
            };
            jobs.push(matrix_job(&ck, "output.weight", head, ty, opts.outtype)?);
        }
        for l in 0..h.n_layers {
            let p = format!("model.layers.{l}.");
            let n = |s: &str| format!("blk.{l}.{s}.weight");
            let norm = take(
                &ck,
                &mut used,
                &[&format!("{p}input_layernorm.weight")],
                &[d],
            )?;
            jobs.push(vector_job(&n("attn_norm"), norm));
            for (gg, hf) in MATRICES {
                let (rows, cols) = match gg {
                    "attn_q" | "attn_output" => (d, d),
                    "attn_k" | "attn_v" => (kv, d),
                    "ffn_gate" | "ffn_up" => (f, d),
                    _ => (d, f),
                };
                let permute_heads = match (h.family, gg) {
                    (Family::Llama, "attn_q") => Some(h.n_heads),
                    (Family::Llama, "attn_k") => Some(h.n_kv_heads),
                    _ => None,
                };
                jobs.push(ternary_job(
                    &ck,
                    &mut used,
                    &n(gg),
                    &format!("{p}{hf}"),
                    rows,
                    cols,
                    permute_heads,
                    opts.outtype,
                )?);
            }
            let norm = take(
                &ck,
                &mut used,
                &[&format!("{p}post_attention_layernorm.weight")],
                &[d],
            )?;
            jobs.push(vector_job(&n("ffn_norm"), norm));
            if h.family.sub_norms() {
                let sn = take(
                    &ck,
                    &mut used,
                    &[
                        &format!("{p}self_attn.attn_sub_norm.weight"),
                        &format!("{p}self_attn.inner_attn_ln.weight"),
                    ],
                    &[d],
                )?;
                jobs.push(vector_job(&n("attn_sub_norm"), sn));
                let sn = take(
                    &ck,
                    &mut used,
                    &[
                        &format!("{p}mlp.ffn_sub_norm.weight"),
                        &format!("{p}mlp.ffn_layernorm.weight"),
                    ],
                    &[f],
                )?;
                jobs.push(vector_job(&n("ffn_sub_norm"), sn));
            }
        }
        let mut unused: Vec<&str> = ck
            .names()
            .filter(|n| !used.iter().any(|u| u == n) && !n.ends_with("rotary_emb.inv_freq"))
            .collect();
        unused.sort();
        if let Some(first) = unused.first() {
            let t = ck.get(first).expect("listed");
            return Err(ck.tensor_err(
                t,
                format!(
                    "not part of the {a} graph ({} such tensors); is config.json's architecture right?",
                    unused.len()
                ),
            ));
        }
        Ok(Conversion {
            ck,
            opts,
            metadata: md,
            jobs,
        })
    }

    pub fn hparams(&self) -> &HParams {
        &self.ck.hp
    }

    pub fn options(&self) -> Options {
        self.opts
    }

    /// Bytes of tensor data the GGUF will hold.
    pub fn data_bytes(&self) -> u64 {
        self.jobs
            .iter()
            .map(|j| j.spec.ty.tensor_bytes(&j.spec.dims).unwrap_or(0))
            .sum()
    }

    /// Writes the GGUF to `out`, a tensor at a time; `progress(done, total)`
    /// after each tensor (tensor data bytes).
    pub fn write(&self, out: &mut dyn Write, progress: &mut dyn FnMut(u64, u64)) -> Result<()> {
        let specs: Vec<TensorSpec> = self.jobs.iter().map(|j| j.spec.clone()).collect();
        let total = self.data_bytes();
        let mut done = 0u64;
        let mut failure: Option<Error> = None;
        let r = gguf::write(
            out,
            &self.metadata,
            &specs,
            gguf::DEFAULT_ALIGNMENT,
            &mut |i, w| {
                let job = &self.jobs[i];
                match self.tensor_data(job, w) {
                    Ok(()) => {
                        done += job.spec.ty.tensor_bytes(&job.spec.dims).unwrap_or(0);
                        progress(done, total);
                        Ok(())
                    }
                    Err(ConvertIo::Io(e)) => Err(e),
                    Err(ConvertIo::Convert(e)) => {
                        let m = e.message.clone();
                        failure = Some(e);
                        Err(io::Error::other(m))
                    }
                }
            },
        );
        match (r, failure) {
            (_, Some(e)) => Err(e),
            (r, None) => r,
        }
    }

    fn tensor_data(&self, job: &Job, w: &mut dyn Write) -> std::result::Result<(), ConvertIo> {
        let ck = &self.ck;
        match &job.src {
            Source::Vector(t) => {
                let v = ck.read_f32(t, 0, t.n_elements())?;
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                w.write_all(&bytes)?;
            }
            Source::Matrix(t) => {
                let dim = t.shape[1];
                let rows = t.shape[0];
                let band = (1usize << 20).div_ceil(dim).max(1);
                let mut r = 0;
                while r < rows {
                    let n = band.min(rows - r);
                    let v = ck.read_f32(t, r * dim, n * dim)?;
                    w.write_all(&encode_rows(&v, job.spec.ty))?;
                    r += n;
                }
            }
            Source::Ternary {
                t,
                weight_scale,
                permute_heads,
                rows,
                cols,
            } => {
                let tern = self
                    .ternary(t, weight_scale.as_ref(), *rows, *cols)
                    .map_err(ConvertIo::Convert)?;
                let tern = match permute_heads {
                    Some(nh) => Ternary {
                        codes: ternary::permute_rows(&tern.codes, *rows, *cols, *nh),
                        scale: tern.scale,
                    },
                    None => tern,
                };
                match job.spec.ty {
                    GgmlType::I2S => {
                        w.write_all(&tern.to_i2s().map_err(|e| ck.tensor_err(t, e.message))?)?
                    }
                    ty => {
                        let v: Vec<f32> = tern.values().collect();
                        w.write_all(&encode_rows(&v, ty))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The ternary codes and scale of one matrix, by how the checkpoint
    /// stores it.
    fn ternary(
        &self,
        t: &TensorRef,
        ws: Option<&TensorRef>,
        rows: usize,
        cols: usize,
    ) -> Result<Ternary> {
        let ck = &self.ck;
        let h = &ck.hp;
        let weight_scale = match ws {
            None => None,
            Some(s) => {
                let v = ck.read_f32(s, 0, 1)?[0];
                if !(v.is_finite() && v > 0.0) {
                    return Err(ck.tensor_err(s, format!("{v} is not a positive scale")));
                }
                Some(match h.weight_scale {
                    WeightScale::Multiply => v,
                    WeightScale::Divide => 1.0 / v,
                })
            }
        };
        if t.dtype == Dtype::U8 {
            let scale = weight_scale.ok_or_else(|| {
                ck.tensor_err(t, "packed uint8 weights without a weight_scale tensor")
            })?;
            let packed = ck.read_bytes(t, 0, t.n_elements())?;
            let codes =
                ternary::unpack_hf(&packed, rows / 4, cols).map_err(|m| ck.tensor_err(t, m))?;
            return Ok(Ternary { codes, scale });
        }
        let mut w = ck.read_f32(t, 0, t.n_elements())?;
        if let Some(s) = weight_scale {
            w.iter_mut().for_each(|v| *v *= s);
            return ternary::from_scaled(&w).map_err(|m| ck.tensor_err(t, m));
        }
        if h.family == Family::Llama && !h.online {
            return ternary::from_scaled(&w).map_err(|m| ck.tensor_err(t, m));
        }
        let to_f16 = h.family == Family::BitNet && t.dtype == Dtype::F16;
        ternary::absmean(&w, to_f16).map_err(|m| ck.tensor_err(t, m))
    }

    /// Writes the GGUF to `path` through a temporary file in the same
    /// directory, renamed into place only when complete: a failure leaves
    /// nothing behind.
    pub fn write_file(&self, path: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<()> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = path
            .file_name()
            .ok_or_else(|| Error::invalid(format!("{}: not a file name", path.display())))?;
        let tmp = dir.join(format!(
            ".{}.partial-{}",
            file_name.to_string_lossy(),
            std::process::id()
        ));
        let io =
            |e: io::Error, p: &Path| Error::new(ErrorKind::Io, format!("{}: {e}", p.display()));
        let result = (|| {
            let file = std::fs::File::create(&tmp).map_err(|e| io(e, &tmp))?;
            let mut out = BufWriter::with_capacity(1 << 20, file);
            self.write(&mut out, progress)?;
            let file = out.into_inner().map_err(|e| io(e.into_error(), &tmp))?;
            file.sync_all().map_err(|e| io(e, &tmp))?;
            std::fs::rename(&tmp, path).map_err(|e| io(e, path))
        })();
        if result.is_err() {
            std::fs::remove_file(&tmp).ok();
        }
        result
    }

    /// The GGUF in memory, parsed.
    pub fn to_gguf(&self) -> Result<Gguf> {
        let mut bytes = Vec::new();
        self.write(&mut bytes, &mut |_, _| {})?;
        Gguf::from_bytes(bytes)
    }
}

/// An error while writing a tensor: the writer's own, or the conversion's.
enum ConvertIo {
    Io(io::Error),
    Convert(Error),
}

impl From<io::Error> for ConvertIo {
    fn from(e: io::Error) -> Self {
        ConvertIo::Io(e)
    }
}

impl From<Error> for ConvertIo {
    fn from(e: Error) -> Self {
        ConvertIo::Convert(e)
    }
}

/// Rows of floats in a float GGUF type (row length a multiple of the
/// type's block, checked when planning).
fn encode_rows(v: &[f32], ty: GgmlType) -> Vec<u8> {
    match ty {
        GgmlType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        GgmlType::F16 => v
            .iter()
            .flat_map(|&x| f16::from_f32(x).to_bits().to_le_bytes())
            .collect(),
        GgmlType::Q8_0 => {
            let mut out = vec![0u8; v.len() / 32 * 34];
            for (x, o) in v.chunks_exact(32).zip(out.chunks_exact_mut(34)) {
                BlockQ8_0::slice_mut(o).expect("one block")[0] = BlockQ8_0::from_f32_ref(x);
            }
            out
        }
        GgmlType::Q6K => {
            let mut out = vec![0u8; v.len() / 256 * 210];
            for (x, o) in v.chunks_exact(256).zip(out.chunks_exact_mut(210)) {
                crate::embedding::quantize_q6k_block(x, o);
            }
            out
        }
        other => unreachable!("planned float type {other}"),
    }
}

/// Finds the first of `names`, checks its shape (HF order) and marks it used.
fn take(
    ck: &Checkpoint,
    used: &mut Vec<String>,
    names: &[&str],
    shape: &[usize],
) -> Result<TensorRef> {
    let owned: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let t = ck.find(&owned).cloned().ok_or_else(|| {
        Error::format(format!(
            "{}: tensor '{}' is missing",
            ck.dir.display(),
            names[0]
        ))
    })?;
    if t.shape != shape {
        return Err(ck.tensor_err(
            &t,
            format!("shape {:?}, config.json implies {shape:?}", t.shape),
        ));
    }
    if !matches!(t.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
        return Err(ck.tensor_err(
            &t,
            format!("dtype {:?}; BF16, F16 or F32 expected", t.dtype),
        ));
    }
    used.push(t.name.clone());
    Ok(t)
}

fn vector_job(name: &str, t: TensorRef) -> Job {
    Job {
        spec: TensorSpec {
            name: name.into(),
            dims: vec![t.shape[0] as u64],
            ty: GgmlType::F32,
        },
        src: Source::Vector(t),
    }
}

fn matrix_job(
    ck: &Checkpoint,
    name: &str,
    t: TensorRef,
    ty: FloatType,
    outtype: OutType,
) -> Result<Job> {
    let ty = match (outtype, ty) {
        (OutType::F16, FloatType::F32) => FloatType::F16,
        (_, ty) => ty,
    };
    let (rows, dim) = (t.shape[0], t.shape[1]);
    let block = match ty {
        FloatType::Q8_0 => 32,
        FloatType::Q6K => 256,
        _ => 1,
    };
    if dim % block != 0 {
        return Err(ck.tensor_err(
            &t,
            format!(
                "rows of {dim} values do not split into {ty:?} blocks of {block}; choose another type"
            ),
        ));
    }
    Ok(Job {
        spec: TensorSpec {
            name: name.into(),
            dims: vec![dim as u64, rows as u64],
            ty: ty.ggml(),
        },
        src: Source::Matrix(t),
    })
}

#[allow(clippy::too_many_arguments)]
fn ternary_job(
    ck: &Checkpoint,
    used: &mut Vec<String>,
    name: &str,
    hf: &str,
    rows: usize,
    cols: usize,
    permute_heads: Option<usize>,
    outtype: OutType,
) -> Result<Job> {
    let wname = format!("{hf}.weight");
    let t = ck.get(&wname).cloned().ok_or_else(|| {
        Error::format(format!("{}: tensor '{wname}' is missing", ck.dir.display()))
    })?;
    let ws = ck.get(&format!("{hf}.weight_scale")).cloned();
    match t.dtype {
        Dtype::U8 => {
            if !rows.is_multiple_of(4) || t.shape != [rows / 4, cols] {
                return Err(ck.tensor_err(
                    &t,
                    format!(
                        "packed shape {:?}, config.json implies [{}, {cols}] (4 weights a byte)",
                        t.shape,
                        rows / 4
                    ),
                ));
            }
        }
        Dtype::F32 | Dtype::F16 | Dtype::BF16 => {
            if t.shape != [rows, cols] {
                return Err(ck.tensor_err(
                    &t,
                    format!("shape {:?}, config.json implies [{rows}, {cols}]", t.shape),
                ));
            }
        }
        other => {
            return Err(ck.tensor_err(
                &t,
                format!("dtype {other:?}; packed U8 or BF16/F16/F32 expected"),
            ))
        }
    }
    if let Some(s) = &ws {
        if s.n_elements() != 1 || !matches!(s.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(ck.tensor_err(
                s,
                format!(
                    "shape {:?} dtype {:?}; one float expected",
                    s.shape, s.dtype
                ),
            ));
        }
        used.push(s.name.clone());
    }
    let ty = match outtype {
        OutType::I2S => {
            if !(rows * cols).is_multiple_of(crate::quant::i2s::QK_I2_S) {
                return Err(ck.tensor_err(
                    &t,
                    format!(
                        "{rows} x {cols} weights are not whole I2_S blocks of {}",
                        crate::quant::i2s::QK_I2_S
                    ),
                ));
            }
            GgmlType::I2S
        }
        OutType::F32 => GgmlType::F32,
        OutType::F16 => GgmlType::F16,
    };
    used.push(t.name.clone());
    Ok(Job {
        spec: TensorSpec {
            name: name.into(),
            dims: vec![cols as u64, rows as u64],
            ty,
        },
        src: Source::Ternary {
            t,
            weight_scale: ws,
            permute_heads,
            rows,
            cols,
        },
    })
}

/// The vocabulary of a model: a GGUF file, or only the tokenizer metadata
/// of a checkpoint directory (its weights are not read).
pub fn open_vocab(path: &Path) -> Result<Gguf> {
    if !path.is_dir() {
        return Gguf::open(path);
    }
    let config_path = path.join("config.json");
    let config = checkpoint::read_json(&config_path)?;
    let hp = HParams::from_config(&config, &config_path)?;
    Gguf::from_metadata(&vocab::vocab_metadata(path, &config, hp.vocab_size)?)
}

/// A model file for the runner: a GGUF file, or a checkpoint directory
/// converted in memory (I2_S, F16 head; no file written).
pub fn open_gguf(path: &Path) -> Result<Gguf> {
    if path.is_dir() {
        Conversion::plan(path, Options::default())?.to_gguf()
    } else {
        Gguf::open(path)
    }
}

#[cfg(test)]
mod tests;
