//! `bitnet gen-model`: write a synthetic BitNet model (random ternary
//! weights) in the official layout.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use bitnet_stfma::gguf::Gguf;
use bitnet_stfma::synthetic;

use crate::common::{shape_by_name, Progress};
use crate::error::{model_err, CliError, CliResult};

#[derive(Args)]
pub(crate) struct GenModelArgs {
    /// 2b4t (BitNet-b1.58-2B-4T), large (bitnet_b1_58-large), 3b (bitnet_b1_58-3B), 8b (Llama3-8B-1.58),
    /// falcon3-3b, falcon3-10b, tiny (the shape of the shared fixture) or micro (a 300-token toy).
    #[arg(long, default_value = "2b4t")]
    shape: String,
    /// Write this architecture's graph instead of the shape's own: bitnet-b1.58 (relu² FFN,
    /// sub-norms), bitnet (SiLU FFN, sub-norms) or llama (SiLU FFN, untied F16 head).
    #[arg(long)]
    arch: Option<String>,
    /// File to write.
    #[arg(short, long)]
    output: PathBuf,
    /// Take the vocabulary from this GGUF (default: a made-up byte-level one).
    #[arg(long)]
    vocab: Option<PathBuf>,
    /// Seed of the random weights.
    #[arg(short = 's', long, default_value_t = 1)]
    seed: u64,
}

pub(crate) fn gen_model(a: GenModelArgs) -> CliResult {
    let mut shape = shape_by_name(&a.shape)?;
    if let Some(arch) = &a.arch {
        let family = bitnet_stfma::model::Family::of(arch).ok_or_else(|| {
            CliError::Usage(format!(
                "unknown architecture '{arch}' (bitnet-b1.58, bitnet or llama)"
            ))
        })?;
        shape = shape.with_family(family);
    }
    let vocab = match &a.vocab {
        Some(p) => Some(Gguf::open(p).map_err(model_err)?),
        None => None,
    };
    let mut bar = Progress::new("writing");
    let t = Instant::now();
    synthetic::write_model(&a.output, shape, vocab.as_ref(), a.seed, &mut |d, total| {
        bar.update(d, total)
    })
    .map_err(|e| e.to_string())?;
    let size = std::fs::metadata(&a.output).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "wrote {} ({} bytes) in {:.1} s",
        a.output.display(),
        size,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
