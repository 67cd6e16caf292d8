//! `bitnet`: run, chat with, evaluate and benchmark BitNet b1.58 models.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

use bitnet_stfma::chat::{ChatFormat, DEFAULT_SYSTEM};
use bitnet_stfma::gguf::Gguf;
use bitnet_stfma::kernels;
use bitnet_stfma::model::{LoadOptions, Model, Session};
use bitnet_stfma::sampler::{Sampler, SamplerConfig};
use bitnet_stfma::synthetic::{self, Shape};
use bitnet_stfma::tokenizer::StreamDecoder;

mod bench;
mod output;
mod serve;

use output::{out, outln};

/// A failure of a command, by kind: each kind has its own exit status.
#[derive(Debug)]
pub enum CliError {
    /// The command line itself (exit 2, as clap's own usage errors).
    Usage(String),
    /// The model file: unreadable, not a GGUF, not a supported model (exit 3).
    Model(String),
    /// The input: an empty or over-long prompt, an unreadable prompt or text
    /// file, token ids outside the vocabulary (exit 4).
    Input(String),
    /// Anything else, such as a failed write (exit 1).
    Other(String),
    /// Standard output was closed by its reader: the program ends quietly,
    /// by SIGPIPE, as `head`'s writer does.
    StdoutClosed,
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Other(_) | CliError::StdoutClosed => 1,
            CliError::Usage(_) => 2,
            CliError::Model(_) => 3,
            CliError::Input(_) => 4,
        }
    }
    fn message(&self) -> &str {
        match self {
            CliError::Usage(m) | CliError::Model(m) | CliError::Input(m) | CliError::Other(m) => m,
            CliError::StdoutClosed => "standard output closed",
        }
    }
}

impl From<String> for CliError {
    fn from(m: String) -> Self {
        CliError::Other(m)
    }
}

fn model_err(e: impl std::fmt::Display) -> CliError {
    CliError::Model(e.to_string())
}

fn input_err(e: impl std::fmt::Display) -> CliError {
    CliError::Input(e.to_string())
}

type CliResult<T = ()> = Result<T, CliError>;

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
    Run(RunArgs),
    /// Interactive conversation in the model's chat format.
    Chat(ChatArgs),
    /// Print the token ids of a text as a JSON array.
    Tokenize(TokenizeArgs),
    /// Teacher-forced logits: one JSON line per position with the top-K next-token logits.
    Eval(EvalArgs),
    /// Perplexity of a text file, in windows of CTX tokens (as llama.cpp's tool reports it).
    Perplexity(PerplexityArgs),
    /// Write a synthetic BitNet model (random ternary weights) in the official layout.
    GenModel(GenModelArgs),
    /// Benchmark prompt processing and decoding (tokens/s), with memory bandwidth and a time breakdown.
    Bench(bench::BenchArgs),
    /// OpenAI-compatible HTTP server that batches concurrent requests (as llama-server).
    Serve(serve::ServeArgs),
    /// Load generator for `serve`: k concurrent streaming clients on loopback.
    Loadgen(serve::LoadgenArgs),
    /// Show a model's configuration and tensors.
    Info {
        /// Model file (GGUF).
        #[arg(short, long)]
        model: PathBuf,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// Model file (GGUF).
    #[arg(short, long)]
    model: PathBuf,
    /// Threads (0: one per CPU).
    #[arg(short, long, default_value_t = 0)]
    threads: usize,
    /// Context size in tokens (0: the model's).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 0)]
    ctx: usize,
    /// Prompt tokens processed per batch.
    #[arg(short = 'b', long = "batch-size", default_value_t = 64)]
    batch: usize,
    #[command(flatten)]
    head: HeadArgs,
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
struct SamplingArgs {
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
    fn config(&self, ctx: usize) -> CliResult<SamplerConfig> {
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

#[derive(Args)]
struct RunArgs {
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

#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    common: Common,
    /// System prompt (also written -sys).
    #[arg(long = "system-prompt", default_value = DEFAULT_SYSTEM)]
    system: String,
    /// Most tokens per reply.
    #[arg(short = 'n', long = "n-predict", default_value_t = 512)]
    n: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[derive(Args)]
struct TokenizeArgs {
    /// Model file (GGUF) whose tokenizer is used.
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

#[derive(Args)]
struct EvalArgs {
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

#[derive(Args)]
struct PerplexityArgs {
    #[command(flatten)]
    common: Common,
    /// Text file to score.
    #[arg(short, long)]
    file: PathBuf,
}

#[derive(Args)]
struct GenModelArgs {
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

/// llama.cpp's single-dash long flags, spelled as clap reads them.
fn llama_spellings(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    args.map(|a| match a.to_str() {
        Some("-sys") => "--system-prompt".into(),
        Some("-cnv") => "--conversation".into(),
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
        Command::Run(a) => run(a),
        Command::Chat(a) => chat(a),
        Command::Tokenize(a) => tokenize(a),
        Command::Eval(a) => eval(a),
        Command::Perplexity(a) => perplexity(a),
        Command::GenModel(a) => gen_model(a),
        Command::Bench(a) => bench::bench(a),
        Command::Serve(a) => serve::serve(a),
        Command::Loadgen(a) => serve::loadgen(a),
        Command::Info { model } => info(&model),
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

fn load(c: &Common) -> CliResult<(Model, Duration)> {
    let t = Instant::now();
    let m = Model::load_with(&c.model, c.head.load_options()).map_err(model_err)?;
    Ok((m, t.elapsed()))
}

/// Warns (once, on stderr) when more threads are asked for than there are CPUs.
pub fn warn_threads(threads: usize) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads > cpus {
        eprintln!(
            "warning: {threads} threads on {cpus} CPUs; threads beyond the CPU count wait on each other and slow everything down"
        );
    }
}

fn session<'m>(model: &'m Model, c: &Common) -> CliResult<Session<'m>> {
    if c.batch == 0 {
        return Err(CliError::Usage("-b/--batch-size must be at least 1".into()));
    }
    warn_threads(c.threads);
    Session::new(model, c.ctx, c.batch, c.threads).map_err(|e| CliError::Usage(e.to_string()))
}

fn check_fits(tokens: usize, sess: &Session) -> CliResult {
    if tokens == 0 {
        return Err(input_err("the prompt is empty"));
    }
    if sess.pos() + tokens > sess.ctx() {
        return Err(input_err(format!(
            "the prompt has {tokens} tokens, longer than the context of {} tokens (use -c to enlarge it)",
            sess.ctx() - sess.pos()
        )));
    }
    Ok(())
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// Generates up to `n` tokens after `logits`, streaming text to stdout.
/// Returns (tokens generated, time, whether an end-of-turn token ended it).
fn generate(
    sess: &mut Session,
    sampler: &mut Sampler,
    first: Vec<f32>,
    n: usize,
) -> CliResult<(usize, Duration, bool)> {
    let tok = &sess.model.tokenizer;
    let mut logits = first;
    let mut stream = StreamDecoder::new();
    let t = Instant::now();
    let mut count = 0;
    let mut ended = false;
    while count < n {
        let next = sampler.sample(&logits);
        if tok.is_end_of_generation(next) {
            ended = true;
            break;
        }
        output::write_bytes(stream.push(tok.token_to_bytes(next, false)).as_bytes())?;
        sampler.accept(next);
        count += 1;
        if sess.pos() >= sess.ctx() {
            eprintln!("\n[context of {} tokens is full]", sess.ctx());
            break;
        }
        logits.copy_from_slice(sess.forward(&[next]).map_err(|e| e.to_string())?);
    }
    output::write_bytes(stream.finish().as_bytes())?;
    Ok((count, t.elapsed(), ended))
}

fn run(a: RunArgs) -> CliResult {
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

fn chat(a: ChatArgs) -> CliResult {
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
    let eos = tok.eos.and_then(|e| tok.token_text(e)).unwrap_or("");
    let eot = tok.encode(&fmt.end_of_turn(eos), false, true);
    if sess.pos() + eot.len() <= sess.ctx() {
        sess.forward(&eot).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The chat format of a model (see [`ChatFormat::detect`]).
fn chat_format(model: &Model) -> ChatFormat {
    ChatFormat::detect(
        model.chat_template.as_deref(),
        model.gguf_str("tokenizer.ggml.pre"),
    )
}

fn read_text(prompt: Option<String>, file: Option<PathBuf>) -> CliResult<String> {
    match (prompt, file) {
        (Some(p), _) => Ok(p),
        (None, Some(f)) => {
            std::fs::read_to_string(&f).map_err(|e| input_err(format!("{}: {e}", f.display())))
        }
        (None, None) => Err(CliError::Usage("give -p TEXT or -f FILE".into())),
    }
}

fn tokenize(a: TokenizeArgs) -> CliResult {
    let g = Gguf::open(&a.model).map_err(model_err)?;
    let tok = bitnet_stfma::tokenizer::Tokenizer::from_gguf(&g).map_err(model_err)?;
    let text = read_text(a.prompt, a.file)?;
    let ids = tok.encode(&text, !a.no_bos && tok.add_bos, a.special);
    let body: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    outln!("[{}]", body.join(","))?;
    Ok(())
}

fn eval(a: EvalArgs) -> CliResult {
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

fn perplexity(a: PerplexityArgs) -> CliResult {
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

/// A progress bar on stderr (a line per 10% when stderr is not a terminal).
pub struct Progress {
    label: String,
    last: i64,
    tty: bool,
}

impl Progress {
    pub fn new(label: &str) -> Self {
        Progress {
            label: label.into(),
            last: -1,
            tty: std::io::stderr().is_terminal(),
        }
    }
    pub fn update(&mut self, done: u64, total: u64) {
        let pct = (done * 100 / total.max(1)) as i64;
        if pct == self.last || (!self.tty && pct / 10 == self.last / 10 && pct != 100) {
            return;
        }
        self.last = pct;
        let filled = (pct / 4) as usize;
        let bar = format!("{}{}", "#".repeat(filled), ".".repeat(25 - filled));
        if self.tty {
            eprint!(
                "\r{} [{bar}] {pct:3}% {} / {} MB",
                self.label,
                done >> 20,
                total >> 20
            );
            if pct == 100 {
                eprintln!();
            }
        } else {
            eprintln!("{} [{bar}] {pct:3}%", self.label);
        }
    }
}

/// A synthetic shape by name, or a usage error listing the names.
fn shape_by_name(name: &str) -> Result<Shape, CliError> {
    Shape::by_name(name).ok_or_else(|| {
        let names: Vec<String> = Shape::NAMES
            .iter()
            .map(|(n, what)| format!("{n} ({what})"))
            .collect();
        CliError::Usage(format!(
            "unknown shape '{name}'; known: {}",
            names.join(", ")
        ))
    })
}

fn gen_model(a: GenModelArgs) -> CliResult {
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

fn info(path: &Path) -> CliResult {
    let g = Gguf::open(path).map_err(model_err)?;
    outln!(
        "GGUF v{}, {} metadata keys, {} tensors",
        g.version,
        g.metadata().len(),
        g.tensors().len()
    )?;
    for (k, v) in g.metadata() {
        let shown = match v {
            bitnet_stfma::gguf::Value::Array(a) => format!("[array of {}]", a.len()),
            bitnet_stfma::gguf::Value::String(s) if s.len() > 80 => {
                format!("{:?}...", s.chars().take(80).collect::<String>())
            }
            v => format!("{v:?}"),
        };
        outln!("  {k} = {shown}")?;
    }
    for t in g.tensors() {
        outln!("  {:32} {:6} {:?}", t.name, t.ty.to_string(), t.dims)?;
    }
    match Model::load(path) {
        Ok(m) => {
            outln!(
                "family: {} (architecture {})",
                m.config.family.describe(),
                m.config.arch
            )?;
            outln!(
                "tokenizer: {} ({} tokens)",
                if m.tokenizer.is_sentencepiece() {
                    "SentencePiece".to_string()
                } else {
                    format!(
                        "byte-level BPE, pre-tokenizer {}",
                        m.gguf_str("tokenizer.ggml.pre").unwrap_or("default")
                    )
                },
                m.tokenizer.vocab_size()
            )?;
            outln!(
                "LM head: {} {}",
                m.head_type(),
                if m.head_is_tied() {
                    "(tied to token_embd)"
                } else {
                    "(output.weight)"
                }
            )?;
            outln!("model: {:?}", m.config)?
        }
        Err(e) => outln!("not loadable by this runner: {e}")?,
    }
    Ok(())
}
