//! `bitnet perplexity`: the perplexity of a text file, in windows of CTX
//! tokens, scored as llama.cpp's tool scores it.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use crate::args::Common;
use crate::common::{load, read_text, session};
use crate::error::{input_err, CliError, CliResult};
use crate::output::{out, outln};

#[derive(Args)]
pub(crate) struct PerplexityArgs {
    #[command(flatten)]
    common: Common,
    /// Text file to score.
    #[arg(short, long)]
    file: PathBuf,
}

pub(crate) fn perplexity(a: PerplexityArgs) -> CliResult {
    let (model, _) = load(&a.common)?;
    let mut common = a.common.clone();
    if common.ctx == 0 {
        common.ctx = 512;
    }
    let n_ctx = common.ctx;
    if n_ctx < 16 {
        return Err(CliError::Usage(
            "the perplexity window (-c) must be at least 16 tokens".into(),
        ));
    }
    let mut sess = session(&model, &common)?;
    let text = read_text(None, Some(a.file.clone()))?;
    let tokens = model
        .tokenizer
        .encode(&text, model.tokenizer.add_bos, false);
    let n_chunks = tokens.len() / n_ctx;
    if n_chunks == 0 {
        return Err(input_err(format!(
            "the file has {} tokens, fewer than one window of {n_ctx}",
            tokens.len()
        )));
    }
    eprintln!(
        "perplexity: {} tokens, {n_chunks} windows of {n_ctx}, scoring the second half of each",
        tokens.len()
    );
    let first = n_ctx / 2;
    let (mut nll, mut count) = (0f64, 0usize);
    let t = Instant::now();
    for c in 0..n_chunks {
        let mut window = tokens[c * n_ctx..(c + 1) * n_ctx].to_vec();
        // As llama.cpp's perplexity: each window starts with BOS when the
        // vocabulary adds one.
        if let Some(b) = model.tokenizer.bos.filter(|_| model.tokenizer.add_bos) {
            window[0] = b;
        }
        sess.reset();
        sess.forward_all(&window, &mut |i, logits| {
            if i >= first && i + 1 < window.len() {
                let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let lse = max as f64
                    + logits
                        .iter()
                        .map(|&v| ((v - max) as f64).exp())
                        .sum::<f64>()
                        .ln();
                nll += lse - logits[window[i + 1] as usize] as f64;
                count += 1;
            }
        })
        .map_err(|e| e.to_string())?;
        out!("[{}]{:.4},", c + 1, (nll / count as f64).exp())?;
    }
    outln!()?;
    outln!(
        "Final estimate: PPL = {:.4} ({count} tokens scored, {:.1} s)",
        (nll / count as f64).exp(),
        t.elapsed().as_secs_f64()
    )?;
    Ok(())
}
