//! `bitnet eval`: teacher-forced logits, one JSON line per position with
//! the top-K next-token logits.

use std::io::Write;

use clap::Args;

use crate::args::Common;
use crate::common::{check_fits, load, session};
use crate::error::{input_err, CliError, CliResult};
use crate::output;

#[derive(Args)]
pub(crate) struct EvalArgs {
    #[command(flatten)]
    common: Common,
    /// Text to evaluate (tokenized with BOS).
    #[arg(
        short,
        long,
        conflicts_with = "tokens",
        required_unless_present = "tokens"
    )]
    prompt: Option<String>,
    /// Token ids to evaluate, comma-separated.
    #[arg(long, value_delimiter = ',')]
    tokens: Option<Vec<u32>>,
    /// Logits to print per position.
    #[arg(long, default_value_t = 10)]
    top: usize,
}

pub(crate) fn eval(a: EvalArgs) -> CliResult {
    let (model, _) = load(&a.common)?;
    let mut sess = session(&model, &a.common)?;
    let tokens = match (a.tokens, a.prompt) {
        (Some(t), _) => t,
        (None, Some(p)) => model.tokenizer.encode(&p, model.tokenizer.add_bos, false),
        (None, None) => return Err(CliError::Usage("give -p TEXT or --tokens IDS".into())),
    };
    check_fits(tokens.len(), &sess)?;
    let vocab = model.config.vocab_size;
    if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(input_err(format!(
            "token id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    let k = a.top.min(model.config.vocab_size);
    let mut out = std::io::stdout().lock();
    let mut idx: Vec<u32> = Vec::with_capacity(model.config.vocab_size);
    let mut werr = None;
    sess.forward_all(&tokens, &mut |i, logits| {
        idx.clear();
        idx.extend(0..logits.len() as u32);
        let cmp = |x: &u32, y: &u32| {
            logits[*y as usize]
                .total_cmp(&logits[*x as usize])
                .then(x.cmp(y))
        };
        if k > 0 && k < idx.len() {
            idx.select_nth_unstable_by(k - 1, cmp);
        }
        idx.truncate(k);
        idx.sort_unstable_by(cmp);
        let top: Vec<String> = idx
            .iter()
            .map(|&t| format!("[{t},{:.6}]", logits[t as usize]))
            .collect();
        if werr.is_none() {
            werr = writeln!(
                out,
                "{{\"pos\":{i},\"token\":{},\"top\":[{}]}}",
                tokens[i],
                top.join(",")
            )
            .err();
        }
    })
    .map_err(|e| e.to_string())?;
    match werr {
        Some(e) => Err(output::stdout_err(e)),
        None => out.flush().map_err(output::stdout_err),
    }
}
