//! The flag groups several commands share: the model and session flags
//! ([`Common`]), the LM head flags ([`HeadArgs`]) and the sampling flags
//! ([`SamplingArgs`]).

use std::path::PathBuf;

use clap::Args;

use bitnet_stfma::model::LoadOptions;
use bitnet_stfma::sampler::SamplerConfig;

use crate::error::{CliError, CliResult};

#[derive(Args, Clone)]
pub(crate) struct Common {
    /// Model: a GGUF file, or a Hugging Face checkpoint directory (converted in memory).
    #[arg(short, long)]
    pub(crate) model: PathBuf,
    /// Threads (0: one per CPU).
    #[arg(short, long, default_value_t = 0)]
    pub(crate) threads: usize,
    /// Context size in tokens (0: the model's).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 0)]
    pub(crate) ctx: usize,
    /// Prompt tokens processed per batch.
    #[arg(short = 'b', long = "batch-size", default_value_t = 64)]
    pub(crate) batch: usize,
    #[command(flatten)]
    pub(crate) head: HeadArgs,
}

/// The LM head options of every command that loads a model.
#[derive(Args, Clone, Copy)]
pub(crate) struct HeadArgs {
    /// Use an 8-bit copy of the LM head (made at load; faster, especially batched; logits
    /// differ slightly from bitnet.cpp's).
    #[arg(long)]
    pub(crate) q8_head: bool,
    /// Requantize the LM head to Q6_K at load as llama-quantize does (bitnet.cpp's
    /// --quant-embd): 0.4x the bytes of an F16 head, the logits bitnet.cpp gives on such a file.
    #[arg(long, conflicts_with = "q8_head")]
    pub(crate) q6k_head: bool,
}

impl HeadArgs {
    pub(crate) fn load_options(self) -> LoadOptions {
        LoadOptions {
            q8_head: self.q8_head,
            q6k_head: self.q6k_head,
        }
    }
}

#[derive(Args, Clone)]
pub(crate) struct SamplingArgs {
    /// Temperature; 0 is greedy.
    #[arg(long = "temp", default_value_t = 0.8)]
    temp: f32,
    /// Top-k sampling: keep the K most likely tokens (0: all of them).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Top-p (nucleus) sampling: keep the most likely tokens up to this probability mass (1.0: off).
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Penalize tokens repeated within the last --repeat-last-n tokens (1.0: off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// How many recent tokens the penalties look at (0: off, -1: the whole context).
    #[arg(long, default_value_t = 64, allow_negative_numbers = true)]
    repeat_last_n: i64,
    /// Subtract this from the logit of every recent token (0.0: off).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    presence_penalty: f32,
    /// Subtract this from a token's logit per recent occurrence (0.0: off).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    frequency_penalty: f32,
    /// Random seed (-1: from the clock).
    #[arg(short = 's', long, default_value_t = -1, allow_negative_numbers = true)]
    seed: i64,
}

impl SamplingArgs {
    pub(crate) fn config(&self, ctx: usize) -> CliResult<SamplerConfig> {
        if !(self.temp.is_finite() && self.temp >= 0.0) {
            return Err(CliError::Usage(format!(
                "--temp {} must be 0 or more",
                self.temp
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(CliError::Usage(format!(
                "--top-p {} must be in (0, 1]",
                self.top_p
            )));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return Err(CliError::Usage(format!(
                "--repeat-penalty {} must be above 0",
                self.repeat_penalty
            )));
        }
        let repeat_last_n = match self.repeat_last_n {
            -1 => ctx,
            n if n >= 0 => n as usize,
            n => {
                return Err(CliError::Usage(format!(
                    "--repeat-last-n {n} must be -1 or more"
                )))
            }
        };
        let seed = if self.seed < 0 {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        } else {
            self.seed as u64
        };
        Ok(SamplerConfig {
            temperature: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed,
        })
    }
}
