//! `bitnet info`: a model's metadata, tensors, family, tokenizer and LM head.

use std::path::Path;

use bitnet_stfma::model::Model;

use crate::error::{model_err, CliResult};
use crate::output::outln;

pub(crate) fn info(path: &Path) -> CliResult {
    let g = std::sync::Arc::new(bitnet_stfma::convert::open_gguf(path).map_err(model_err)?);
    outln!(
        "GGUF v{}, {} metadata keys, {} tensors",
        g.version,
        g.metadata().len(),
        g.tensors().len()
    )?;
    for (k, v) in g.metadata() {
        let shown = match v {
            bitnet_stfma::gguf::Value::Array(a) => format!("[array of {}]", a.len()),
            bitnet_stfma::gguf::Value::String(s) if s.len() > 80 => {
                format!("{:?}...", s.chars().take(80).collect::<String>())
            }
            v => format!("{v:?}"),
        };
        outln!("  {k} = {shown}")?;
    }
    for t in g.tensors() {
        outln!("  {:32} {:6} {:?}", t.name, t.ty.to_string(), t.dims)?;
    }
    match Model::from_gguf(g.clone()) {
        Ok(m) => {
            outln!(
                "family: {} (architecture {})",
                m.config.family.describe(),
                m.config.arch
            )?;
            outln!(
                "tokenizer: {} ({} tokens)",
                if m.tokenizer.is_sentencepiece() {
                    "SentencePiece".to_string()
                } else {
                    format!(
                        "byte-level BPE, pre-tokenizer {}",
                        m.gguf_str("tokenizer.ggml.pre").unwrap_or("default")
                    )
                },
                m.tokenizer.vocab_size()
            )?;
            outln!(
                "LM head: {} {}",
                m.head_type(),
                if m.head_is_tied() {
                    "(tied to token_embd)"
                } else {
                    "(output.weight)"
                }
            )?;
            outln!("model: {:?}", m.config)?
        }
        Err(e) => outln!("not loadable by this runner: {e}")?,
    }
    Ok(())
}
