//! `bitnet chat`: an interactive conversation in the model's chat format
//! (also `bitnet run -cnv`).

use std::io::{BufRead, IsTerminal};

use clap::Args;

use bitnet_stfma::chat::{ChatFormat, DEFAULT_SYSTEM};
use bitnet_stfma::model::{Model, Session};
use bitnet_stfma::sampler::Sampler;

use crate::args::{Common, SamplingArgs};
use crate::common::{generate, load, session};
use crate::error::CliResult;
use crate::output::outln;

#[derive(Args)]
pub(crate) struct ChatArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// System prompt (also written -sys).
    #[arg(long = "system-prompt", default_value = DEFAULT_SYSTEM)]
    pub(crate) system: String,
    /// Most tokens per reply.
    #[arg(short = 'n', long = "n-predict", default_value_t = 512)]
    pub(crate) n: usize,
    #[command(flatten)]
    pub(crate) sampling: SamplingArgs,
}

pub(crate) fn chat(a: ChatArgs) -> CliResult {
    let (model, load_time) = load(&a.common)?;
    let mut sess = session(&model, &a.common)?;
    let tok = &model.tokenizer;
    let fmt = chat_format(&model);
    let mut sampler = Sampler::new(a.sampling.config(sess.ctx())?, model.config.vocab_size);
    let interactive = std::io::stdin().is_terminal();
    eprintln!(
        "loaded in {:.1} s; chatting ({} threads). Type a message and press Enter; an empty line or Ctrl-D ends.",
        load_time.as_secs_f64(),
        sess.threads()
    );
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("\n> ");
        }
        let Some(line) = lines.next() else { break };
        let line = line.map_err(|e| e.to_string())?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let first = sess.pos() == 0;
        let mut tokens = tok.encode(
            &fmt.user_turn(first.then_some(a.system.as_str()), line),
            first && tok.add_bos,
            true,
        );
        if sess.pos() + tokens.len() + 1 > sess.ctx() {
            eprintln!("[the context is full; starting a new conversation]");
            sess.reset();
            tokens = tok.encode(&fmt.user_turn(Some(&a.system), line), tok.add_bos, true);
            if tokens.len() + 1 > sess.ctx() {
                eprintln!("[that message is longer than the whole context of {} tokens; try a shorter one]", sess.ctx());
                continue;
            }
        }
        chat_turn(&mut sess, &mut sampler, &tokens, a.n, fmt)?;
    }
    Ok(())
}

fn chat_turn(
    sess: &mut Session,
    sampler: &mut Sampler,
    tokens: &[u32],
    n: usize,
    fmt: ChatFormat,
) -> CliResult {
    let logits = sess.forward(tokens).map_err(|e| e.to_string())?.to_vec();
    let room = sess.ctx() - sess.pos();
    generate(sess, sampler, logits, n.min(room.saturating_sub(2)))?;
    outln!()?;
    // Close the assistant's turn in the cache, as the model would have.
    let tok = &sess.model.tokenizer;
    let eos = tok.eos_text().unwrap_or("");
    let eot = tok.encode(&fmt.end_of_turn(eos), false, true);
    if sess.pos() + eot.len() <= sess.ctx() {
        sess.forward(&eot).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The chat format of a model (see [`ChatFormat::detect`]).
pub(crate) fn chat_format(model: &Model) -> ChatFormat {
    ChatFormat::detect(
        model.chat_template.as_deref(),
        model.gguf_str("tokenizer.ggml.pre"),
    )
}
