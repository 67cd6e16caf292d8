//! `bitnet`: run, chat with, evaluate and benchmark BitNet b1.58 models.
//!
//! This file parses the command line and dispatches; each command lives in
//! the module of its name (`run.rs`, `chat.rs`, `tokenize.rs`, `eval.rs`,
//! `perplexity.rs`, `gen_model.rs`, `bench.rs`, `serve.rs` with `loadgen`,
//! `info.rs`, `convert.rs`). The flags several commands share are in `args.rs`, the
//! helpers they share in `common.rs`, the error kinds and their exit
//! statuses in `error.rs`, and the checked stdout writes in `output.rs`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod args;
mod bench;
mod chat;
mod common;
mod convert;
mod error;
mod eval;
mod gen_model;
mod info;
mod output;
mod perplexity;
mod run;
mod serve;
mod tokenize;

use error::CliError;

#[derive(Parser)]
#[command(
    name = "bitnet",
    version,
    about = "Run BitNet b1.58 ternary models on the CPU with bitnet-stfma's kernels",
    after_help = "Flags follow llama.cpp's llama-cli where it has one (-m, -p, -f, -n, -c, -t, -b, -s/--seed, \
-sys/--system-prompt, -cnv/--conversation, --temp, --top-k, --top-p, --repeat-penalty, --repeat-last-n).\n\n\
Exit status: 0 success; 1 other failure (such as a failed write); 2 bad command line; \
3 model file unreadable, invalid or unsupported; 4 bad input (empty or over-long prompt, unreadable text file, \
token id outside the vocabulary). A reader that closes stdout early ends a command quietly by SIGPIPE, as it ends a C tool."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, streaming it to stdout.
    Run(run::RunArgs),
    /// Interactive conversation in the model's chat format.
    Chat(chat::ChatArgs),
    /// Print the token ids of a text as a JSON array.
    Tokenize(tokenize::TokenizeArgs),
    /// Teacher-forced logits: one JSON line per position with the top-K next-token logits.
    Eval(eval::EvalArgs),
    /// Perplexity of a text file, in windows of CTX tokens (as llama.cpp's tool reports it).
    Perplexity(perplexity::PerplexityArgs),
    /// Write a synthetic BitNet model (random ternary weights) in the official layout.
    GenModel(gen_model::GenModelArgs),
    /// Convert a Hugging Face checkpoint directory (safetensors) to a GGUF file.
    Convert(convert::ConvertArgs),
    /// Benchmark prompt processing and decoding (tokens/s), with memory bandwidth and a time breakdown.
    Bench(bench::BenchArgs),
    /// OpenAI-compatible HTTP server that batches concurrent requests (as llama-server).
    Serve(serve::ServeArgs),
    /// Load generator for `serve`: k concurrent streaming clients on loopback.
    Loadgen(serve::LoadgenArgs),
    /// Show a model's configuration and tensors.
    Info {
        /// Model: a GGUF file, or a Hugging Face checkpoint directory (converted in memory).
        #[arg(short, long)]
        model: PathBuf,
    },
}

/// llama.cpp's single-dash long flags, spelled as clap reads them.
fn llama_spellings(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    args.map(|a| match a.to_str() {
        Some("-sys") => "--system-prompt".into(),
        Some("-cnv") => "--conversation".into(),
        Some("-np") => "--parallel".into(),
        _ => a,
    })
    .collect()
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(llama_spellings(std::env::args_os()));
    // The server and the load generator keep SIGPIPE ignored (a client that
    // hangs up must not kill them); their stdout writes are checked instead.
    if !matches!(cli.command, Command::Serve(_) | Command::Loadgen(_)) {
        output::die_on_closed_pipe();
    }
    let r = match cli.command {
        Command::Run(a) => run::run(a),
        Command::Chat(a) => chat::chat(a),
        Command::Tokenize(a) => tokenize::tokenize(a),
        Command::Eval(a) => eval::eval(a),
        Command::Perplexity(a) => perplexity::perplexity(a),
        Command::GenModel(a) => gen_model::gen_model(a),
        Command::Convert(a) => convert::convert(a),
        Command::Bench(a) => bench::bench(a),
        Command::Serve(a) => serve::serve(a),
        Command::Loadgen(a) => serve::loadgen(a),
        Command::Info { model } => info::info(&model),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::StdoutClosed) => output::exit_closed_pipe(),
        Err(e) => {
            eprintln!("error: {}", e.message());
            ExitCode::from(e.exit_code())
        }
    }
}
