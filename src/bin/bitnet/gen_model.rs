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
    #[arg(
        short,
        long,
        required_unless_present = "checkpoint",
        conflicts_with = "checkpoint"
    )]
    output: Option<PathBuf>,
    /// Write a Hugging Face checkpoint directory instead (config.json, tokenizer files, BF16
    /// safetensors shards), the input of `bitnet convert`.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// With --checkpoint: the ternary weights packed 4 to a byte with a weight_scale
    /// (transformers' offline format) instead of BF16 master weights.
    #[arg(long, requires = "checkpoint")]
    packed: bool,
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
    let (path, size) = match (&a.output, &a.checkpoint) {
        (Some(out), _) => {
            synthetic::write_model(out, shape, vocab.as_ref(), a.seed, &mut |d, total| {
                bar.update(d, total)
            })
            .map_err(|e| e.to_string())?;
            (out, std::fs::metadata(out).map(|m| m.len()).unwrap_or(0))
        }
        (None, Some(dir)) => {
            synthetic::write_checkpoint(
                dir,
                shape,
                vocab.as_ref(),
                a.packed,
                a.seed,
                &mut |d, total| bar.update(d, total),
            )
            .map_err(|e| e.to_string())?;
            let size = std::fs::read_dir(dir)
                .map(|r| {
                    r.filter_map(|e| e.ok()?.metadata().ok())
                        .map(|m| m.len())
                        .sum()
                })
                .unwrap_or(0);
            (dir, size)
        }
        (None, None) => return Err(CliError::Usage("give -o FILE or --checkpoint DIR".into())),
    };
    eprintln!(
        "wrote {} ({} bytes) in {:.1} s",
        path.display(),
        size,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
