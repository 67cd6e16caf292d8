//! `bitnet convert`: a Hugging Face checkpoint directory to a GGUF file
//! (flag names of llama.cpp's `convert_hf_to_gguf.py` and `llama-quantize`).

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, ValueEnum};

use bitnet_stfma::convert::{Conversion, FloatType, Options, OutType};

use crate::common::Progress;
use crate::error::{model_err, CliError, CliResult};

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum OutTypeArg {
    #[value(name = "i2_s")]
    I2S,
    F32,
    F16,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum FloatArg {
    F32,
    F16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q6_k")]
    Q6K,
}

impl FloatArg {
    fn ty(self) -> FloatType {
        match self {
            FloatArg::F32 => FloatType::F32,
            FloatArg::F16 => FloatType::F16,
            FloatArg::Q8_0 => FloatType::Q8_0,
            FloatArg::Q6K => FloatType::Q6K,
        }
    }
}

#[derive(Args)]
pub(crate) struct ConvertArgs {
    /// The checkpoint directory (config.json, *.safetensors, tokenizer files).
    dir: PathBuf,
    /// The GGUF file to write (written to a temporary file and renamed when complete).
    #[arg(long)]
    outfile: PathBuf,
    /// Type of the ternary weights: i2_s (what bitnet.cpp and bitnet run), or f32/f16 floats (ternary × scale,
    /// the input llama-quantize takes).
    #[arg(long, value_enum, default_value = "i2_s")]
    outtype: OutTypeArg,
    /// Type of the LM head: output.weight, or the token embedding when the head is tied to it
    /// (as llama-quantize --token-embedding-type / --output-tensor-type).
    #[arg(long, value_enum, default_value = "f16")]
    head: FloatArg,
    /// Type of the token embedding of a model whose head is not tied to it.
    #[arg(long, value_enum, default_value = "f16")]
    token_embedding_type: FloatArg,
}

pub(crate) fn convert(a: ConvertArgs) -> CliResult {
    let opts = Options {
        outtype: match a.outtype {
            OutTypeArg::I2S => OutType::I2S,
            OutTypeArg::F32 => OutType::F32,
            OutTypeArg::F16 => OutType::F16,
        },
        head: a.head.ty(),
        token_embd: a.token_embedding_type.ty(),
    };
    if a.outfile.is_dir() {
        return Err(CliError::Usage(format!(
            "--outfile {} is a directory",
            a.outfile.display()
        )));
    }
    let t = Instant::now();
    let plan = Conversion::plan(&a.dir, opts).map_err(model_err)?;
    let h = plan.hparams();
    eprintln!(
        "{}: {} ({:?}), {} layers, dim {}, vocab {}",
        a.dir.display(),
        h.hf_arch,
        h.family,
        h.n_layers,
        h.dim,
        h.vocab_size
    );
    let mut bar = Progress::new("converting");
    plan.write_file(&a.outfile, &mut |d, total| bar.update(d, total))
        .map_err(model_err)?;
    let size = std::fs::metadata(&a.outfile).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "wrote {} ({size} bytes) in {:.1} s",
        a.outfile.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
