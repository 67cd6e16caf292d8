//! `bitnet tokenize`: the token ids of a text, as a JSON array.

use std::path::PathBuf;

use clap::Args;

use crate::common::read_text;
use crate::error::{model_err, CliResult};
use crate::output::outln;

#[derive(Args)]
pub(crate) struct TokenizeArgs {
    /// Model (a GGUF file or a checkpoint directory) whose tokenizer is used.
    #[arg(short, long)]
    model: PathBuf,
    /// Text to tokenize.
    #[arg(short, long, conflicts_with = "file", required_unless_present = "file")]
    prompt: Option<String>,
    /// Read the text from this file.
    #[arg(short, long)]
    file: Option<PathBuf>,
    /// Do not prepend the BOS token.
    #[arg(long)]
    no_bos: bool,
    /// Recognise special tokens such as <|eot_id|> in the text.
    #[arg(long)]
    special: bool,
}

pub(crate) fn tokenize(a: TokenizeArgs) -> CliResult {
    let g = bitnet_stfma::convert::open_vocab(&a.model).map_err(model_err)?;
    let tok = bitnet_stfma::tokenizer::Tokenizer::from_gguf(&g).map_err(model_err)?;
    let text = read_text(a.prompt, a.file)?;
    let ids = tok.encode(&text, !a.no_bos && tok.add_bos, a.special);
    let body: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    outln!("[{}]", body.join(","))?;
    Ok(())
}
