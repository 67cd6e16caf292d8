//! The body of the fuzz target, kept in the library so that regression
//! tests run exactly what the fuzzer ran.

use std::sync::Arc;

use crate::gguf::Gguf;
use crate::model::{Model, Session};

/// Parses `data` as a GGUF file and, if it is one, loads it as a model and
/// runs one token. Every outcome must be `Ok` or a clean `Err`: a panic,
/// hang or huge allocation is a bug.
pub fn gguf_and_model(data: &[u8]) {
    let Ok(g) = Gguf::from_bytes(data.to_vec()) else {
        return;
    };
    for t in g.tensors() {
        std::hint::black_box(g.tensor_data(t).len());
    }
    let Ok(model) = Model::from_gguf(Arc::new(g)) else {
        return;
    };
    let Ok(mut s) = Session::new(&model, 8, 2, 1) else {
        return;
    };
    let bos = model.tokenizer.bos.unwrap_or(0);
    let _ = s.forward(&[bos, bos]);
    let _ = model.tokenizer.encode("Hi <|eot_id|> there", true, true);
}

/// Writes `data` as the `model.safetensors` of a small fixed checkpoint
/// (BitNetForCausalLM, hidden 128, one layer, a byte-level vocabulary of
/// 258 tokens: the shape of the CLI tests' hand-built checkpoint, whose file
/// is the seed) and converts it in memory. Every outcome must be `Ok` or a
/// clean `Err`; returns whether the file converted and loaded.
pub fn safetensors_checkpoint(data: &[u8]) -> bool {
    use std::sync::OnceLock;
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            std::path::PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("bitnet-fuzz-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fuzz scratch directory");
        let config = serde_json::json!({
            "architectures": ["BitNetForCausalLM"], "hidden_act": "relu2",
            "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 258,
            "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
            "bos_token_id": 256, "eos_token_id": 257,
        });
        std::fs::write(dir.join("config.json"), config.to_string()).expect("config");
        let vocab: serde_json::Map<String, serde_json::Value> = (0..=255u32)
            .map(|b| {
                let c = if (33..=126).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b) {
                    char::from_u32(b)
                } else {
                    let n = (0..b).filter(|&c| !((33..=126).contains(&c) || (0xA1..=0xAC).contains(&c) || (0xAE..=0xFF).contains(&c))).count() as u32;
                    char::from_u32(256 + n)
                };
                (c.expect("char").to_string(), serde_json::json!(b))
            })
            .collect();
        let tokenizer = serde_json::json!({
            "added_tokens": [
                {"id": 256, "content": "<|begin_of_text|>", "special": true},
                {"id": 257, "content": "<|end_of_text|>", "special": true}],
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "decoder": {"type": "ByteLevel"},
            "model": {"type": "BPE", "vocab": vocab, "merges": []},
        });
        std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).expect("tokenizer");
        dir
    });
    if std::fs::write(dir.join("model.safetensors"), data).is_err() {
        return false;
    }
    let Ok(plan) = crate::convert::Conversion::plan(dir, Default::default()) else {
        return false;
    };
    let Ok(g) = plan.to_gguf() else {
        return false;
    };
    Model::from_gguf(Arc::new(g)).is_ok()
}
