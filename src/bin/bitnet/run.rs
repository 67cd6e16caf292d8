//! `bitnet run`: generate text from a prompt, streaming it to stdout (with
//! `-sys` as one chat turn, with `-cnv` as `bitnet chat`).

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use bitnet_stfma::chat::DEFAULT_SYSTEM;
use bitnet_stfma::kernels;
use bitnet_stfma::sampler::Sampler;

use crate::args::{Common, SamplingArgs};
use crate::chat::{chat, chat_format, ChatArgs};
use crate::common::{check_fits, generate, load, rate, read_text, session};
use crate::error::CliResult;
use crate::output::{out, outln};

#[derive(Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// The prompt (in conversation mode: the system prompt, as llama-cli).
    #[arg(short, long, conflicts_with = "file")]
    prompt: Option<String>,
    /// Read the prompt from this file.
    #[arg(short, long)]
    file: Option<PathBuf>,
    /// Tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
    n: usize,
    /// A system prompt (also written -sys): the prompt is then sent as one chat turn.
    #[arg(long = "system-prompt")]
    system: Option<String>,
    /// Conversation mode (also written -cnv): chat in the model's format, as `bitnet chat`.
    #[arg(long = "conversation")]
    conversation: bool,
    #[command(flatten)]
    sampling: SamplingArgs,
}

pub(crate) fn run(a: RunArgs) -> CliResult {
    if a.conversation {
        // llama-cli -cnv: the prompt, if any, is the system prompt.
        let system = a
            .system
            .or(read_text(a.prompt, a.file).ok())
            .unwrap_or_else(|| DEFAULT_SYSTEM.to_string());
        return chat(ChatArgs {
            common: a.common,
            system,
            n: a.n,
            sampling: a.sampling,
        });
    }
    let prompt = read_text(a.prompt, a.file)?;
    let (model, load_time) = load(&a.common)?;
    let mut sess = session(&model, &a.common)?;
    let tok = &model.tokenizer;
    let tokens = match &a.system {
        Some(sys) => {
            let fmt = chat_format(&model);
            tok.encode(&fmt.user_turn(Some(sys), &prompt), tok.add_bos, true)
        }
        None => tok.encode(&prompt, tok.add_bos, true),
    };
    check_fits(tokens.len(), &sess)?;
    let mut sampler = Sampler::new(a.sampling.config(sess.ctx())?, model.config.vocab_size);
    for &t in &tokens {
        sampler.accept(t);
    }
    if a.system.is_none() {
        out!("{prompt}")?;
    }
    let t = Instant::now();
    let logits = sess.forward(&tokens).map_err(|e| e.to_string())?.to_vec();
    let prompt_time = t.elapsed();
    let (n, gen_time, _) = generate(&mut sess, &mut sampler, logits, a.n)?;
    outln!()?;
    eprintln!(
        "\nload: {:.0} ms | prompt: {} tokens in {:.0} ms, {:.2} tok/s | generation: {} tokens in {:.0} ms, {:.2} tok/s | {} threads, kernel {}",
        load_time.as_secs_f64() * 1e3,
        tokens.len(),
        prompt_time.as_secs_f64() * 1e3,
        rate(tokens.len(), prompt_time),
        n,
        gen_time.as_secs_f64() * 1e3,
        rate(n, gen_time),
        sess.threads(),
        kernels::active().name()
    );
    Ok(())
}
