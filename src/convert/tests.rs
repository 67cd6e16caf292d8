//! Conversion tests: the fixture models of `../shared/testdata` written out
//! as Hugging Face checkpoints (every family; packed and master weights;
//! one file and shards) and converted back, and bad checkpoints.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;

use super::ternary;
use super::*;
use crate::model::{Model, Session};
use crate::quant::q8_0::BlockQ8_0;

/// A scratch directory removed on drop.
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "bitnet-convert-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::remove_dir_all(&p).ok();
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// A tensor for a safetensors file: name, dtype, shape, bytes.
pub(crate) struct St(pub String, pub &'static str, pub Vec<usize>, pub Vec<u8>);

/// Writes a safetensors file (header padded with spaces to 8 bytes, as the
/// reference writer does).
pub(crate) fn write_safetensors(path: &Path, tensors: &[St]) {
    let mut header = serde_json::Map::new();
    let mut off = 0usize;
    for St(name, dtype, shape, data) in tensors {
        header.insert(
            name.clone(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [off, off + data.len()]}),
        );
        off += data.len();
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    for t in tensors {
        out.extend_from_slice(&t.3);
    }
    std::fs::write(path, out).unwrap();
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes())
        .collect()
}

/// The f32 values of a float GGUF tensor (F32, F16, Q8_0).
fn floats(g: &Gguf, name: &str) -> Vec<f32> {
    let (t, data) = g.tensor(name).unwrap();
    match t.ty {
        GgmlType::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        GgmlType::F16 => data
            .chunks_exact(2)
            .map(|b| f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect(),
        GgmlType::Q8_0 => {
            let mut out = vec![0f32; t.n_elements() as usize];
            for (b, o) in BlockQ8_0::slice(data)
                .unwrap()
                .iter()
                .zip(out.chunks_exact_mut(32))
            {
                b.dequantize(o);
            }
            out
        }
        ty => panic!("{name}: {ty}"),
    }
}

/// How to write a fixture's ternary weights.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Weights {
    /// transformers' packed uint8 with a weight_scale (this linear class).
    Packed(WeightScale),
    /// BF16 master weights whose absmean ternarization gives the fixture's
    /// codes (the scale only to about 1e-6: absmean's scale is a mean).
    Master,
    /// F32 weights already ternary × scale (a `llama` offline checkpoint).
    Scaled,
}

/// The inverse of llama.cpp's q/k permutation.
fn unpermute(codes: &[u8], rows: usize, cols: usize, n_head: usize) -> Vec<u8> {
    let hd = rows / n_head;
    let half = hd / 2;
    let mut out = vec![0u8; codes.len()];
    for h in 0..n_head {
        for i in 0..2 {
            for j in 0..half {
                let hf = h * hd + i * half + j;
                let gg = h * hd + 2 * j + i;
                out[hf * cols..(hf + 1) * cols].copy_from_slice(&codes[gg * cols..(gg + 1) * cols]);
            }
        }
    }
    out
}

/// The codes and scale of an I2_S tensor of `rows × cols` weights (the
/// inverse of [`Ternary::to_i2s`]).
fn from_i2s(data: &[u8], rows: usize, cols: usize) -> Result<Ternary> {
    let n = rows * cols;
    let mut codes = vec![0u8; n];
    crate::quant::i2s::unpack_codes(&data[..n / 4], &mut codes);
    Ok(Ternary {
        codes,
        scale: crate::quant::i2s::read_scale(data, n)?,
    })
}

/// The weight_scale `ws` whose `1 / ws` is nearest `scale` (BitLinear
/// divides; an exact inverse does not always exist in f32).
fn inverse_scale(scale: f32) -> f32 {
    let first = 1.0 / scale;
    (-8i32..=8)
        .map(|k| f32::from_bits((first.to_bits() as i32 + k) as u32))
        .min_by(|a, b| {
            let (da, db) = ((1.0 / a - scale).abs(), (1.0 / b - scale).abs());
            da.partial_cmp(&db).unwrap()
        })
        .unwrap()
}

/// Writes fixture `g` as a Hugging Face checkpoint into `dir`, in `shards`
/// safetensors files.
pub(crate) fn export(g: &Gguf, dir: &Path, weights: Weights, shards: usize) {
    let a = g.architecture().unwrap().to_string();
    let u = |k: &str| g.get(&format!("{a}.{k}")).and_then(|v| v.as_u64()).unwrap() as usize;
    let fl = |k: &str| g.get(&format!("{a}.{k}")).and_then(|v| v.as_f64()).unwrap();
    let (dim, n_heads, n_layers, ffn) = (
        u("embedding_length"),
        u("attention.head_count"),
        u("block_count"),
        u("feed_forward_length"),
    );
    let n_kv = g
        .get(&format!("{a}.attention.head_count_kv"))
        .and_then(|v| v.as_u64())
        .map_or(n_heads, |v| v as usize);
    let (tok, _) = g.tensor("token_embd.weight").unwrap();
    let vocab = tok.dims[1] as usize;
    let tied = g.tensor_info("output.weight").is_none();
    let family = Family::of(&a).unwrap();
    let mut config = json!({
        "architectures": [match family {
            Family::BitNet158 => "BitNetForCausalLM",
            Family::BitNet => "BitnetForCausalLM",
            Family::Llama => "LlamaForCausalLM",
        }],
        "hidden_act": if family == Family::BitNet158 { "relu2" } else { "silu" },
        "hidden_size": dim,
        "intermediate_size": ffn,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv,
        "vocab_size": vocab,
        "max_position_embeddings": u("context_length"),
        "rms_norm_eps": fl("attention.layer_norm_rms_epsilon"),
        "rope_theta": fl("rope.freq_base"),
        "tie_word_embeddings": tied,
        "torch_dtype": "bfloat16",
    });
    if let Some(t) = g.get_str(&format!("{a}.rope.scaling.type")) {
        if t == "linear" {
            config["rope_scaling"] = json!({"type": "linear", "factor": fl("rope.scaling.factor")});
        }
    }
    let mut q = serde_json::Map::new();
    if family == Family::Llama || matches!(weights, Weights::Packed(_)) {
        q.insert("quant_method".into(), json!("bitnet"));
    }
    if let Weights::Packed(ws) = weights {
        q.insert(
            "linear_class".into(),
            json!(if ws == WeightScale::Multiply {
                "autobitlinear"
            } else {
                "bitlinear"
            }),
        );
        q.insert("quantization_mode".into(), json!("offline"));
    }
    if family == Family::Llama && matches!(weights, Weights::Master) {
        q.insert("quantization_mode".into(), json!("online"));
    }
    if !q.is_empty() {
        config["quantization_config"] = serde_json::Value::Object(q);
    }
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&config).unwrap(),
    )
    .unwrap();
    super::vocab::export::write_tokenizer_files(g, dir).unwrap();

    let mut ts: Vec<St> = vec![
        St(
            "model.embed_tokens.weight".into(),
            "F32",
            vec![vocab, dim],
            f32_bytes(&floats(g, "token_embd.weight")),
        ),
        St(
            "model.norm.weight".into(),
            "F32",
            vec![dim],
            f32_bytes(&floats(g, "output_norm.weight")),
        ),
    ];
    if !tied {
        ts.push(St(
            "lm_head.weight".into(),
            "F32",
            vec![vocab, dim],
            f32_bytes(&floats(g, "output.weight")),
        ));
    }
    let kv = n_kv * (dim / n_heads);
    for l in 0..n_layers {
        let p = format!("model.layers.{l}.");
        let norm = |gg: &str, hf: &str, n: usize| {
            St(
                format!("{p}{hf}.weight"),
                "F32",
                vec![n],
                f32_bytes(&floats(g, &format!("blk.{l}.{gg}.weight"))),
            )
        };
        ts.push(norm("attn_norm", "input_layernorm", dim));
        ts.push(norm("ffn_norm", "post_attention_layernorm", dim));
        if family.sub_norms() {
            let (an, fnn) = if family == Family::BitNet {
                ("self_attn.inner_attn_ln", "mlp.ffn_layernorm")
            } else {
                ("self_attn.attn_sub_norm", "mlp.ffn_sub_norm")
            };
            ts.push(norm("attn_sub_norm", an, dim));
            ts.push(norm("ffn_sub_norm", fnn, ffn));
        }
        for (gg, hf) in MATRICES {
            let (rows, cols) = match gg {
                "attn_q" | "attn_output" => (dim, dim),
                "attn_k" | "attn_v" => (kv, dim),
                "ffn_gate" | "ffn_up" => (ffn, dim),
                _ => (dim, ffn),
            };
            let (_, data) = g.tensor(&format!("blk.{l}.{gg}.weight")).unwrap();
            let t = from_i2s(data, rows, cols).unwrap();
            let codes = match (family, gg) {
                (Family::Llama, "attn_q") => unpermute(&t.codes, rows, cols, n_heads),
                (Family::Llama, "attn_k") => unpermute(&t.codes, rows, cols, n_kv),
                _ => t.codes.clone(),
            };
            let name = format!("{p}{hf}.weight");
            match weights {
                Weights::Packed(ws) => {
                    let pr = rows / 4;
                    let mut packed = vec![0u8; pr * cols];
                    for (i, &c) in codes.iter().enumerate() {
                        let (r, col) = (i / cols, i % cols);
                        packed[(r % pr) * cols + col] |= c << (2 * (r / pr));
                    }
                    ts.push(St(name, "U8", vec![pr, cols], packed));
                    let s = match ws {
                        WeightScale::Multiply => t.scale,
                        WeightScale::Divide => inverse_scale(t.scale),
                    };
                    ts.push(St(
                        format!("{p}{hf}.weight_scale"),
                        "F32",
                        vec![1],
                        f32_bytes(&[s]),
                    ));
                }
                Weights::Scaled => {
                    let v: Vec<f32> = codes.iter().map(|&c| (c as f32 - 1.0) * t.scale).collect();
                    ts.push(St(name, "F32", vec![rows, cols], f32_bytes(&v)));
                }
                Weights::Master => {
                    // master weights: the sign pattern with varied
                    // magnitudes around the scale, zeros as small noise
                    let v: Vec<f32> = codes
                        .iter()
                        .enumerate()
                        .map(|(i, &c)| {
                            let jitter = ((i * 2654435761) % 1000) as f32 / 1000.0;
                            match c {
                                1 => (jitter - 0.5) * 0.4 * t.scale,
                                2 => (1.0 + jitter) * t.scale,
                                _ => -(1.0 + jitter) * t.scale,
                            }
                        })
                        .collect();
                    ts.push(St(name, "BF16", vec![rows, cols], bf16_bytes(&v)));
                }
            }
        }
    }
    if shards <= 1 {
        write_safetensors(&dir.join("model.safetensors"), &ts);
        return;
    }
    let mut map = serde_json::Map::new();
    let per = ts.len().div_ceil(shards);
    for (k, part) in ts.chunks(per).enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", k + 1, shards);
        for t in part {
            map.insert(t.0.clone(), json!(file));
        }
        write_safetensors(&dir.join(&file), part);
    }
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_vec(&json!({"metadata": {}, "weight_map": map})).unwrap(),
    )
    .unwrap();
}

fn fixture(name: &str) -> Option<Gguf> {
    match crate::testdata_dir() {
        Some(d) => Some(Gguf::open(d.join(name)).unwrap()),
        None => {
            eprintln!("SKIPPED convert round trip of {name}: ../shared/testdata not found");
            None
        }
    }
}

/// Every tensor of `want` is in `got` with the same type, shape and bytes.
fn assert_same_tensors(want: &Gguf, got: &Gguf, what: &str) {
    for t in want.tensors() {
        let g = got
            .tensor_info(&t.name)
            .unwrap_or_else(|| panic!("{what}: {} missing", t.name));
        assert_eq!((g.ty, &g.dims), (t.ty, &t.dims), "{what}: {}", t.name);
        assert!(
            want.tensor_data(t) == got.tensor_data(g),
            "{what}: bytes of {} differ",
            t.name
        );
    }
    assert_eq!(
        want.tensors().len(),
        got.tensors().len(),
        "{what}: tensor count"
    );
}

/// As [`assert_same_tensors`], but I2_S scales may differ in the last bit
/// (a BitLinear checkpoint stores `1 / scale`, and f32 has no exact inverse
/// of every scale).
fn assert_same_codes(want: &Gguf, got: &Gguf, what: &str) {
    for t in want.tensors() {
        let (g, data) = got.tensor(&t.name).unwrap();
        assert_eq!((g.ty, &g.dims), (t.ty, &t.dims), "{what}: {}", t.name);
        if t.ty != GgmlType::I2S {
            assert!(want.tensor_data(t) == data, "{what}: bytes of {}", t.name);
            continue;
        }
        let (rows, cols) = (t.dims[1] as usize, t.dims[0] as usize);
        let (a, b) = (
            from_i2s(want.tensor_data(t), rows, cols).unwrap(),
            from_i2s(data, rows, cols).unwrap(),
        );
        assert!(a.codes == b.codes, "{what}: codes of {}", t.name);
        let ulps = (a.scale.to_bits() as i64 - b.scale.to_bits() as i64).abs();
        assert!(
            ulps <= 1,
            "{what}: scale of {}: {} vs {}",
            t.name,
            a.scale,
            b.scale
        );
    }
}

/// Logits of a few tokens on both models.
fn assert_same_logits(fixture_name: &str, got: Gguf, what: &str) {
    let a = Model::load(crate::testdata_dir().unwrap().join(fixture_name)).unwrap();
    let b = Model::from_gguf(Arc::new(got)).unwrap();
    let ids = a
        .tokenizer
        .encode("The quick brown fox jumps over 13 lazy dogs.", true, false);
    assert_eq!(
        ids,
        b.tokenizer
            .encode("The quick brown fox jumps over 13 lazy dogs.", true, false),
        "{what}: tokens"
    );
    let mut sa = Session::new(&a, 64, 8, 1).unwrap();
    let mut sb = Session::new(&b, 64, 8, 1).unwrap();
    assert_eq!(
        sa.forward(&ids).unwrap(),
        sb.forward(&ids).unwrap(),
        "{what}: logits"
    );
}

fn opts_for(g: &Gguf) -> Options {
    let ty = |name: &str| match g.tensor_info(name).map(|t| t.ty) {
        Some(GgmlType::Q8_0) => FloatType::Q8_0,
        Some(GgmlType::Q6K) => FloatType::Q6K,
        Some(GgmlType::F32) => FloatType::F32,
        _ => FloatType::F16,
    };
    let tied = g.tensor_info("output.weight").is_none();
    Options {
        outtype: OutType::I2S,
        head: if tied {
            ty("token_embd.weight")
        } else {
            ty("output.weight")
        },
        token_embd: ty("token_embd.weight"),
    }
}

const FIXTURES: [&str; 4] = [
    "bitnet-tiny.gguf",
    "bitnet-spm-tiny.gguf",
    "llama-i2s-tiny.gguf",
    "falcon3-i2s-tiny.gguf",
];

#[test]
fn packed_round_trip_gives_the_fixture_bytes_and_logits() {
    for name in FIXTURES {
        let Some(g) = fixture(name) else { return };
        for ws in [WeightScale::Multiply, WeightScale::Divide] {
            for shards in [1, 3] {
                let what = format!("{name} packed {ws:?} in {shards} file(s)");
                let dir = TempDir::new("packed");
                export(&g, &dir.0, Weights::Packed(ws), shards);
                let conv = Conversion::plan(&dir.0, opts_for(&g))
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                let out = conv.to_gguf().unwrap();
                if ws == WeightScale::Multiply {
                    assert_same_tensors(&g, &out, &what);
                } else {
                    assert_same_codes(&g, &out, &what);
                }
                for key in [
                    "tokenizer.ggml.model",
                    "tokenizer.ggml.pre",
                    "general.architecture",
                ] {
                    assert_eq!(g.get(key), out.get(key), "{what}: {key}");
                }
                if shards == 1 && ws == WeightScale::Multiply {
                    assert_same_logits(name, out, &what);
                }
            }
        }
    }
}

#[test]
fn master_weights_are_ternarized_to_the_fixture_codes() {
    for name in FIXTURES {
        let Some(g) = fixture(name) else { return };
        let dir = TempDir::new("master");
        export(&g, &dir.0, Weights::Master, 1);
        let out = Conversion::plan(&dir.0, opts_for(&g))
            .unwrap()
            .to_gguf()
            .unwrap();
        for t in g.tensors().iter().filter(|t| t.ty == GgmlType::I2S) {
            let (rows, cols) = (t.dims[1] as usize, t.dims[0] as usize);
            let want = from_i2s(g.tensor_data(t), rows, cols).unwrap();
            let (_, data) = out.tensor(&t.name).unwrap();
            let got = from_i2s(data, rows, cols).unwrap();
            assert!(want.codes == got.codes, "{name}: codes of {}", t.name);
            // absmean's scale is mean|w| of the bf16 master weights: not the
            // fixture's, but the same function of them as bitnet.cpp's
            let hf = read_master(&dir.0, &t.name, rows, cols);
            let sum: f64 = hf.iter().map(|v| v.abs() as f64).sum();
            let mean = (sum / hf.len() as f64) as f32;
            assert_eq!(got.scale, 1.0 / (1.0 / mean), "{name}: scale of {}", t.name);
        }
    }
}

/// The master weights `export` wrote for GGUF tensor `gguf_name` (rows in
/// the GGUF's order).
fn read_master(dir: &Path, gguf_name: &str, rows: usize, cols: usize) -> Vec<f32> {
    let ck = Checkpoint::open(dir).unwrap();
    let mut parts = gguf_name.split('.');
    let (_, l, gg) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
    let hf = MATRICES.iter().find(|m| m.0 == gg).unwrap().1;
    let t = ck
        .get(&format!("model.layers.{l}.{hf}.weight"))
        .unwrap()
        .clone();
    ck.read_f32(&t, 0, rows * cols).unwrap()
}

#[test]
fn llama_offline_float_weights_convert_exactly() {
    for name in ["llama-i2s-tiny.gguf", "falcon3-i2s-tiny.gguf"] {
        let Some(g) = fixture(name) else { return };
        let dir = TempDir::new("scaled");
        export(&g, &dir.0, Weights::Scaled, 2);
        let out = Conversion::plan(&dir.0, opts_for(&g))
            .unwrap()
            .to_gguf()
            .unwrap();
        assert_same_tensors(&g, &out, name);
    }
}

#[test]
fn float_outtypes_hold_ternary_times_scale() {
    let Some(g) = fixture("bitnet-tiny.gguf") else {
        return;
    };
    let dir = TempDir::new("f32");
    export(&g, &dir.0, Weights::Packed(WeightScale::Multiply), 1);
    for (outtype, ty) in [(OutType::F32, GgmlType::F32), (OutType::F16, GgmlType::F16)] {
        let opts = Options {
            outtype,
            ..Options::default()
        };
        let out = Conversion::plan(&dir.0, opts).unwrap().to_gguf().unwrap();
        let (t, _) = out.tensor("blk.1.ffn_down.weight").unwrap();
        assert_eq!(t.ty, ty);
        let (w, wd) = g.tensor("blk.1.ffn_down.weight").unwrap();
        let tern = from_i2s(wd, w.dims[1] as usize, w.dims[0] as usize).unwrap();
        let want: Vec<f32> = tern.values().collect();
        let got = floats(&out, "blk.1.ffn_down.weight");
        let exp: Vec<f32> = if ty == GgmlType::F16 {
            want.iter().map(|&v| f16::from_f32(v).to_f32()).collect()
        } else {
            want
        };
        assert!(exp == got, "{outtype:?}");
        assert_eq!(
            out.get("general.file_type").and_then(|v| v.as_u64()),
            Some(if ty == GgmlType::F32 { 0 } else { 1 })
        );
        // what llama-quantize I2_S makes of these floats is the fixture
        // (from F16, with the scale rounded to f16)
        let mut q = vec![0u8; wd.len()];
        crate::quant::i2s::quantize_i2_s(&got, w.dims[1] as usize, w.dims[0] as usize, &mut q)
            .unwrap();
        let n = wd.len() - 32;
        assert!(
            q[..n] == wd[..n],
            "{outtype:?}: codes by quantize_i2_s of the floats"
        );
        let scale = f32::from_le_bytes(q[n..n + 4].try_into().unwrap());
        let want_scale = if ty == GgmlType::F16 {
            f16::from_f32(tern.scale).to_f32()
        } else {
            tern.scale
        };
        assert_eq!(scale, want_scale, "{outtype:?}");
    }
}

#[test]
fn head_types_are_llama_quantizes() {
    let Some(g) = fixture("bitnet-tiny.gguf") else {
        return;
    };
    let dir = TempDir::new("head");
    export(&g, &dir.0, Weights::Packed(WeightScale::Multiply), 1);
    let embd = floats(&g, "token_embd.weight");
    for (head, ty) in [
        (FloatType::Q8_0, GgmlType::Q8_0),
        (FloatType::Q6K, GgmlType::Q6K),
    ] {
        let opts = Options {
            head,
            ..Options::default()
        };
        let out = Conversion::plan(&dir.0, opts).unwrap().to_gguf().unwrap();
        let (t, data) = out.tensor("token_embd.weight").unwrap();
        assert_eq!(t.ty, ty, "the tied head is the embedding");
        let want: Vec<u8> = match ty {
            GgmlType::Q8_0 => {
                let mut v = vec![0u8; embd.len() / 32 * 34];
                for (x, o) in embd.chunks_exact(32).zip(v.chunks_exact_mut(34)) {
                    BlockQ8_0::slice_mut(o).unwrap()[0] = BlockQ8_0::from_f32_ref(x);
                }
                v
            }
            _ => {
                let mut v = vec![0u8; embd.len() / 256 * 210];
                for (x, o) in embd.chunks_exact(256).zip(v.chunks_exact_mut(210)) {
                    crate::embedding::quantize_q6k_block(x, o);
                }
                v
            }
        };
        assert!(data == want.as_slice(), "{ty}");
        Model::from_gguf(Arc::new(out)).unwrap();
    }
}

// ---- bad checkpoints ----

fn good_checkpoint() -> Option<TempDir> {
    let g = fixture("bitnet-tiny.gguf")?;
    let dir = TempDir::new("bad");
    export(&g, &dir.0, Weights::Packed(WeightScale::Multiply), 1);
    Some(dir)
}

fn plan_err(dir: &Path) -> Error {
    match Conversion::plan(dir, Options::default()) {
        Ok(c) => c.to_gguf().map(|_| ()).unwrap_err(),
        Err(e) => e,
    }
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut c);
    std::fs::write(&p, serde_json::to_vec(&c).unwrap()).unwrap();
}

#[test]
fn missing_files_are_named() {
    let Some(d) = good_checkpoint() else { return };
    std::fs::remove_file(d.0.join("config.json")).unwrap();
    let e = plan_err(&d.0);
    assert!(e.message.contains("config.json"), "{e}");
    let Some(d) = good_checkpoint() else { return };
    std::fs::remove_file(d.0.join("model.safetensors")).unwrap();
    let e = plan_err(&d.0);
    assert!(e.message.contains("safetensors"), "{e}");
    let e = plan_err(Path::new("/nonexistent/checkpoint"));
    assert!(e.message.contains("/nonexistent/checkpoint"), "{e}");
}

#[test]
fn unknown_architecture_and_bad_config_values() {
    let Some(d) = good_checkpoint() else { return };
    edit_config(&d.0, |c| c["architectures"] = json!(["GPT2LMHeadModel"]));
    let e = plan_err(&d.0);
    assert!(
        e.message.contains("GPT2LMHeadModel") && e.message.contains("config.json"),
        "{e}"
    );
    edit_config(&d.0, |c| {
        c["architectures"] = json!(["LlamaForCausalLM"]);
        c["quantization_config"] = serde_json::Value::Null;
    });
    let e = plan_err(&d.0);
    assert!(e.message.contains("quantization_config"), "{e}");
    edit_config(&d.0, |c| {
        c["architectures"] = json!(["BitNetForCausalLM"]);
        c["hidden_size"] = json!("wide");
    });
    let e = plan_err(&d.0);
    assert!(e.message.contains("hidden_size"), "{e}");
    edit_config(&d.0, |c| c["hidden_size"] = json!(1u64 << 40));
    let e = plan_err(&d.0);
    assert!(e.message.contains("hidden_size"), "{e}");
    edit_config(&d.0, |c| c["hidden_size"] = json!(255));
    let e = plan_err(&d.0);
    assert!(e.message.contains("hidden_size"), "{e}");
    edit_config(&d.0, |c| c["hidden_act"] = json!("gelu"));
    assert!(plan_err(&d.0).message.contains("gelu"));
}

#[test]
fn shapes_that_disagree_with_the_config_name_the_tensor() {
    let Some(d) = good_checkpoint() else { return };
    edit_config(&d.0, |c| c["intermediate_size"] = json!(1024));
    let e = plan_err(&d.0);
    assert!(
        e.message.contains("model.safetensors")
            && e.message.contains("gate_proj")
            && e.message.contains("shape"),
        "{e}"
    );
    edit_config(&d.0, |c| {
        c["intermediate_size"] = json!(768);
        c["num_hidden_layers"] = json!(3);
    });
    let e = plan_err(&d.0);
    assert!(
        e.message.contains("model.layers.2.") && e.message.contains("missing"),
        "{e}"
    );
    edit_config(&d.0, |c| c["num_hidden_layers"] = json!(1));
    let e = plan_err(&d.0);
    assert!(
        e.message.contains("model.layers.1.") && e.message.contains("not part of"),
        "{e}"
    );
}

#[test]
fn truncated_and_lying_safetensors_files_are_refused() {
    let Some(d) = good_checkpoint() else { return };
    let p = d.0.join("model.safetensors");
    let good = std::fs::read(&p).unwrap();
    let hlen = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated data", good[..good.len() - 1].to_vec()),
        ("truncated header", good[..8 + hlen / 2].to_vec()),
        ("empty", vec![]),
        ("header length beyond the file", {
            let mut b = good.clone();
            b[..8].copy_from_slice(&(good.len() as u64).to_le_bytes());
            b
        }),
        ("offsets shifted", {
            let h = String::from_utf8(good[8..8 + hlen].to_vec()).unwrap();
            let h = h.replacen("\"data_offsets\":[0,", "\"data_offsets\":[2,", 1);
            let mut b = (h.len() as u64).to_le_bytes().to_vec();
            b.extend_from_slice(h.as_bytes());
            b.extend_from_slice(&good[8 + hlen..]);
            b
        }),
    ];
    for (what, bytes) in cases {
        std::fs::write(&p, &bytes).unwrap();
        let e = plan_err(&d.0);
        assert!(e.message.contains("model.safetensors"), "{what}: {e}");
    }
}

#[test]
fn a_dtype_that_cannot_be_the_tensors_is_refused() {
    let Some(d) = good_checkpoint() else { return };
    let p = d.0.join("model.safetensors");
    let good = std::fs::read(&p).unwrap();
    let hlen = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let h: serde_json::Value = serde_json::from_slice(&good[8..8 + hlen]).unwrap();
    // the final norm as I32 (same size as F32)
    let mut h2 = h.clone();
    h2["model.norm.weight"]["dtype"] = json!("I32");
    let hb = serde_json::to_vec(&h2).unwrap();
    let mut b = (hb.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(&hb);
    b.extend_from_slice(&good[8 + hlen..]);
    std::fs::write(&p, &b).unwrap();
    let e = plan_err(&d.0);
    assert!(
        e.message.contains("model.norm.weight") && e.message.contains("I32"),
        "{e}"
    );
    // packed weights without their weight_scale
    let d2 = good_checkpoint().unwrap();
    let p2 = d2.0.join("model.safetensors");
    let ck = Checkpoint::open(&d2.0).unwrap();
    let mut ts = Vec::new();
    let mut names: Vec<String> = ck.names().map(String::from).collect();
    names.sort();
    for n in names
        .iter()
        .filter(|n| *n != "model.layers.0.mlp.up_proj.weight_scale")
    {
        let t = ck.get(n).unwrap().clone();
        let dt = match t.dtype {
            Dtype::U8 => "U8",
            _ => "F32",
        };
        ts.push(St(
            n.clone(),
            dt,
            t.shape.clone(),
            ck.read_bytes(&t, 0, t.n_elements()).unwrap(),
        ));
    }
    drop(ck);
    write_safetensors(&p2, &ts);
    let e = plan_err(&d2.0);
    assert!(
        e.message.contains("up_proj") && e.message.contains("weight_scale"),
        "{e}"
    );
}

#[test]
fn write_file_leaves_nothing_behind_on_failure() {
    let Some(d) = good_checkpoint() else { return };
    let out = TempDir::new("out");
    let target = out.0.join("m.gguf");
    let conv = Conversion::plan(&d.0, Options::default()).unwrap();
    // break a tensor after planning: the write fails midway
    let p = d.0.join("model.safetensors");
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let e = conv.write_file(&target, &mut |_, _| {}).unwrap_err();
    assert!(e.message.contains("model.safetensors"), "{e}");
    let left: Vec<_> = std::fs::read_dir(&out.0).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // and a good write lands whole
    let d = good_checkpoint().unwrap();
    let conv = Conversion::plan(&d.0, Options::default()).unwrap();
    let mut calls = 0;
    conv.write_file(&target, &mut |done, total| {
        calls += 1;
        assert!(done <= total);
    })
    .unwrap();
    assert!(calls > 10);
    Gguf::open(&target).unwrap();
    assert_eq!(std::fs::read_dir(&out.0).unwrap().count(), 1);
}

#[test]
fn header_parser_survives_mutations() {
    // a deterministic sweep beside the fuzz target: every byte of a small
    // file's header flipped, every truncation; none may panic
    let dir = TempDir::new("mut");
    let p = dir.0.join("x.safetensors");
    write_safetensors(
        &p,
        &[
            St("a".into(), "F32", vec![2, 3], f32_bytes(&[1.0; 6])),
            St("b".into(), "U8", vec![4], vec![7; 4]),
        ],
    );
    let good = std::fs::read(&p).unwrap();
    assert_eq!(parse_header(&good).unwrap().len(), 2);
    for i in 0..good.len() {
        for bit in [0x01u8, 0x20, 0x80] {
            let mut b = good.clone();
            b[i] ^= bit;
            if let Ok(ts) = parse_header(&b) {
                for t in ts {
                    let n: usize = t.shape.iter().product();
                    assert_eq!(n * t.dtype.bitsize() / 8, t.len);
                    assert!(t.offset as usize + t.len <= b.len());
                }
            }
        }
        let _ = parse_header(&good[..i]);
    }
}

#[test]
fn ternary_helpers_agree_with_the_writer() {
    // unpermute is permute's inverse (the test's own helper checked)
    let codes: Vec<u8> = (0..64).map(|i| (i % 3) as u8).collect();
    let p = ternary::permute_rows(&codes, 16, 4, 2);
    assert_eq!(unpermute(&p, 16, 4, 2), codes);
}

#[test]
fn the_head_is_tied_as_transformers_ties_it() {
    let Some(g) = fixture("llama-i2s-tiny.gguf") else {
        return;
    };
    let dir = TempDir::new("tie");
    export(&g, &dir.0, Weights::Packed(WeightScale::Multiply), 1);
    let has_output = |d: &Path| {
        let out = Conversion::plan(d, Options::default())
            .unwrap()
            .to_gguf()
            .unwrap();
        out.tensor_info("output.weight").is_some()
    };
    // no tie_word_embeddings: tied exactly when there is no lm_head.weight
    edit_config(&dir.0, |c| {
        c.as_object_mut().unwrap().remove("tie_word_embeddings");
    });
    assert!(has_output(&dir.0));
    // tie_word_embeddings true: the stored lm_head is transformers' tied copy
    edit_config(&dir.0, |c| c["tie_word_embeddings"] = json!(true));
    assert!(!has_output(&dir.0));
    let Some(g) = fixture("bitnet-tiny.gguf") else {
        return;
    };
    let dir = TempDir::new("tie2");
    export(&g, &dir.0, Weights::Packed(WeightScale::Multiply), 1);
    edit_config(&dir.0, |c| {
        c.as_object_mut().unwrap().remove("tie_word_embeddings");
    });
    assert!(!has_output(&dir.0));
    edit_config(&dir.0, |c| c["tie_word_embeddings"] = json!(false));
    let e = plan_err(&dir.0);
    assert!(e.message.contains("lm_head"), "{e}");
}

#[test]
fn the_fuzz_target_converts_a_good_file_and_survives_bad_ones() {
    // the weights of a checkpoint of the fuzz target's shape convert; cut
    // or damaged, they are refused without a panic
    let dir = TempDir::new("fuzzseed");
    crate::synthetic::write_checkpoint(
        &dir.0,
        crate::synthetic::Shape::MICRO,
        None,
        false,
        7,
        &mut |_, _| {},
    )
    .unwrap();
    let p = dir.0.join("model.safetensors");
    let good = std::fs::read(&p).unwrap();
    assert!(crate::fuzz::safetensors_checkpoint(&good));
    for cut in [0, 7, 8, 100, good.len() / 2, good.len() - 1] {
        assert!(!crate::fuzz::safetensors_checkpoint(&good[..cut]));
    }
    let mut b = good.clone();
    for i in (0..b.len()).step_by(997) {
        b[i] ^= 0x5a;
    }
    let _ = crate::fuzz::safetensors_checkpoint(&b);
    if let Some(seeds) = std::env::var_os("BITNET_FUZZ_SEED_DIR") {
        std::fs::write(Path::new(&seeds).join("checkpoint.safetensors"), &good).unwrap();
    }
}
