//! What the commands share beyond their flags: loading the model and
//! opening a session from [`Common`], reading the prompt, checking that it
//! fits, the streaming decode loop of `run` and `chat`, the thread-count
//! warning, the progress bar and the synthetic shapes by name.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitnet_stfma::model::{LoadOptions, Model, Session};
use bitnet_stfma::sampler::Sampler;
use bitnet_stfma::synthetic::Shape;
use bitnet_stfma::tokenizer::StreamDecoder;

use crate::args::Common;
use crate::error::{input_err, model_err, CliError, CliResult};
use crate::output;

pub(crate) fn load(c: &Common) -> CliResult<(Model, Duration)> {
    let t = Instant::now();
    let m = open_model(&c.model, c.head.load_options())?;
    Ok((m, t.elapsed()))
}

/// The model of `-m`: a GGUF file, or a Hugging Face checkpoint directory
/// converted in memory while loading (no file written).
pub(crate) fn open_model(path: &Path, opts: LoadOptions) -> CliResult<Model> {
    if path.is_dir() {
        let g = bitnet_stfma::convert::open_gguf(path).map_err(model_err)?;
        Model::from_gguf_with(Arc::new(g), opts).map_err(model_err)
    } else {
        Model::load_with(path, opts).map_err(model_err)
    }
}

/// Warns (once, on stderr) when more threads are asked for than there are CPUs.
pub(crate) fn warn_threads(threads: usize) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads > cpus {
        eprintln!(
            "warning: {threads} threads on {cpus} CPUs; threads beyond the CPU count wait on each other and slow everything down"
        );
    }
}

pub(crate) fn session<'m>(model: &'m Model, c: &Common) -> CliResult<Session<'m>> {
    if c.batch == 0 {
        return Err(CliError::Usage("-b/--batch-size must be at least 1".into()));
    }
    warn_threads(c.threads);
    Session::new(model, c.ctx, c.batch, c.threads).map_err(|e| CliError::Usage(e.to_string()))
}

pub(crate) fn check_fits(tokens: usize, sess: &Session) -> CliResult {
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

pub(crate) fn read_text(prompt: Option<String>, file: Option<PathBuf>) -> CliResult<String> {
    match (prompt, file) {
        (Some(p), _) => Ok(p),
        (None, Some(f)) => {
            std::fs::read_to_string(&f).map_err(|e| input_err(format!("{}: {e}", f.display())))
        }
        (None, None) => Err(CliError::Usage("give -p TEXT or -f FILE".into())),
    }
}

pub(crate) fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// Generates up to `n` tokens after `logits`, streaming text to stdout.
/// Returns (tokens generated, time, whether an end-of-turn token ended it).
pub(crate) fn generate(
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

/// A progress bar on stderr (a line per 10% when stderr is not a terminal).
pub(crate) struct Progress {
    label: String,
    last: i64,
    tty: bool,
}

impl Progress {
    pub(crate) fn new(label: &str) -> Self {
        Progress {
            label: label.into(),
            last: -1,
            tty: std::io::stderr().is_terminal(),
        }
    }
    pub(crate) fn update(&mut self, done: u64, total: u64) {
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
pub(crate) fn shape_by_name(name: &str) -> Result<Shape, CliError> {
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
