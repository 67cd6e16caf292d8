//! The batching engine behind `bitnet serve`: one thread owns a session of
//! N slots (one KV cache each) and runs steps. Each step feeds every
//! decoding request's last token together with prompt chunks of requests
//! still reading their prompts, through the same matmuls
//! ([`Session::forward_segments`]), then samples each finished row.
//!
//! A prompt is always fed in chunks of the same size, whatever else is
//! running, so a request's tokens do not depend on the load (a batched
//! step computes each sequence exactly as alone). New requests join
//! between steps; a request whose client went away is dropped before the
//! next step and its slot reused.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;

use super::logprobs::{LogSoftmax, Pending, TokenLogprob};
use super::metrics::{Metrics, SlotState};
use crate::json_schema::{Constrained, Schema};
use crate::model::{Model, Segment, Session};
use crate::sampler::{Sampler, SamplerConfig};
use crate::tokenizer::StreamDecoder;

/// A generation request, tokenized and checked.
pub struct Job {
    pub id: u64,
    pub prompt: Vec<u32>,
    /// Most tokens to generate (the slot's context bounds it too); 0 reads
    /// the prompt only (for its log-probabilities, with `echo`).
    pub max_tokens: usize,
    /// Report each generated token's log-probability with this many of the
    /// most likely tokens at its position.
    pub logprobs: Option<usize>,
    /// Report the prompt's tokens' log-probabilities ([`Event::Prompt`]).
    pub echo: bool,
    /// Start from the longest prefix of the prompt already in a free
    /// slot's cache (llama-server's `cache_prompt`).
    pub cache_prompt: bool,
    /// Generate JSON of this schema (`response_format`): sampling keeps to
    /// it, and the generation ends with the value.
    pub schema: Option<Arc<Schema>>,
    pub sampling: SamplerConfig,
    /// Generation stops before any of these strings (not sent).
    pub stop: Vec<String>,
    /// Where the text goes; a closed receiver cancels the request.
    pub events: UnboundedSender<Event>,
}

/// Why a generation ended: OpenAI's `finish_reason`, serialized as its
/// lowercase string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// The model ended its text, or a stop string came.
    Stop,
    /// `max_tokens` or the slot's context was reached.
    Length,
    /// The server shut down first.
    Cancelled,
}

impl FinishReason {
    /// The string OpenAI's clients know.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// What a request's receiver gets.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// With `echo`, once the prompt is read: the log-probability of each of
    /// its tokens but the first (which nothing predicts).
    Prompt(Vec<TokenLogprob>),
    /// More generated text, with the log-probabilities (when asked for) of
    /// the tokens whose text starts in it, each with its offset in
    /// characters from the start of the generated text.
    Text {
        text: String,
        logprobs: Vec<(usize, TokenLogprob)>,
    },
    /// The end, with the finish reason and the token counts.
    Done {
        finish: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    /// The request could not run.
    Failed(String),
}

/// Submitting requests to the engine thread.
pub struct Engine {
    tx: SyncSender<Job>,
    pub metrics: Arc<Metrics>,
    /// Finish what was accepted, then stop.
    drain: Arc<AtomicBool>,
    /// Cancel everything now.
    cancel: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Engine settings.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    pub slots: usize,
    /// KV cache positions per slot.
    pub slot_ctx: usize,
    pub threads: usize,
    /// Prompt tokens fed per request per step.
    pub chunk: usize,
    /// Requests waiting for a slot before new ones are refused.
    pub queue: usize,
}

impl EngineConfig {
    /// Prompt tokens fed per request per step (at least 1).
    pub fn chunk(&self) -> usize {
        self.chunk.max(1)
    }
}

impl Engine {
    /// Starts the engine thread over `model`.
    pub fn start(model: Arc<Model>, cfg: EngineConfig) -> crate::Result<Engine> {
        let (tx, rx) = std::sync::mpsc::sync_channel(cfg.queue.max(1));
        let metrics = Arc::new(Metrics::default());
        let (drain, cancel) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let state = (metrics.clone(), drain.clone(), cancel.clone());
        // The thread reports whether it could make its session (memory for
        // every slot's KV cache) before the server starts listening.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("bitnet-engine".into())
            .spawn(move || {
                let (metrics, drain, cancel) = state;
                let max_batch = cfg.chunk() + cfg.slots;
                match Session::with_slots(&model, cfg.slot_ctx, max_batch, cfg.threads, cfg.slots) {
                    Ok(sess) => {
                        let _ = ready_tx.send(Ok(()));
                        Worker::new(sess, &cfg, rx, metrics, drain, cancel).run();
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| crate::Error::invalid(format!("cannot start the engine thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(crate::Error::invalid("the engine thread stopped at start"));
            }
        }
        Ok(Engine {
            tx,
            metrics,
            drain,
            cancel,
            thread: Some(thread),
        })
    }

    /// Queues a job; gives it back when the queue is full (or the engine
    /// stopped).
    pub fn submit(&self, job: Job) -> Result<(), Box<Job>> {
        self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(j)) | Err(TrySendError::Disconnected(j)) => {
                self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                Err(Box::new(j))
            }
        }
    }

    /// Stops taking requests after those already accepted, or cancels
    /// them too; waits for the thread.
    pub fn stop(&mut self, cancel: bool) {
        self.drain.store(true, Ordering::SeqCst);
        if cancel {
            self.cancel.store(true, Ordering::SeqCst);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Asks for cancellation without waiting.
    pub fn cancel_all(&self) {
        self.drain.store(true, Ordering::SeqCst);
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Asks to finish what was accepted without waiting.
    pub fn drain(&self) {
        self.drain.store(true, Ordering::SeqCst);
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop(true);
    }
}

/// Where a request in a slot stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading its prompt: the first `fed` tokens are in the KV cache.
    Prompt { fed: usize },
    /// Generating: `next` was sampled last and is fed next step.
    Decode { next: u32 },
}

/// A request being served in a slot.
struct Active {
    job: Job,
    slot: usize,
    phase: Phase,
    sampler: Sampler,
    /// Tokens generated so far.
    generated: usize,
    decoder: StreamDecoder,
    stop: StopFilter,
    /// Generated tokens' log-probabilities waiting for their text.
    pending: Pending,
    /// The prompt's log-probabilities so far (with `echo`).
    prompt_logprobs: Vec<TokenLogprob>,
    /// Sampling kept to the job's schema.
    json: Option<Constrained>,
}

impl Active {
    /// `job` in `slot`, about to read its prompt from token `fed` on (those
    /// before are in the slot's cache).
    fn new(job: Job, slot: usize, fed: usize, vocab: usize) -> Active {
        let mut sampler = Sampler::new(job.sampling, vocab);
        for &t in &job.prompt {
            sampler.accept(t);
        }
        let stop = StopFilter::new(&job.stop);
        let json = job.schema.clone().map(Constrained::new);
        Active {
            json,
            job,
            slot,
            phase: Phase::Prompt { fed },
            sampler,
            generated: 0,
            decoder: StreamDecoder::new(),
            stop,
            pending: Pending::default(),
            prompt_logprobs: Vec::new(),
        }
    }

    fn done(&self, finish: FinishReason) -> Event {
        Event::Done {
            finish,
            prompt_tokens: self.job.prompt.len(),
            completion_tokens: self.generated,
        }
    }
}

/// What one request feeds in a step.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Planned {
    /// The request (its index among the active ones).
    request: usize,
    /// Its token to decode, or a chunk of its prompt.
    tokens: Vec<u32>,
    /// The last row's logits are sampled: a decode row, or the prompt's
    /// last chunk.
    wants_logits: bool,
    /// Every row's logits are wanted (a prompt chunk with `echo`).
    all_logits: bool,
}

/// A step's rows: every decoding request's token first, then prompt
/// chunks of `chunk` tokens (or the prompt's rest), in the order the
/// requests came, while the batch of `max_batch` rows has room. A chunk is
/// never cut to fit, and the first one that does not fit ends the plan, so
/// no request overtakes one that came before it.
fn plan(active: &[Active], chunk: usize, max_batch: usize) -> Vec<Planned> {
    let mut plan = Vec::new();
    let mut budget = max_batch;
    for (request, a) in active.iter().enumerate() {
        if let Phase::Decode { next } = a.phase {
            plan.push(Planned {
                request,
                tokens: vec![next],
                wants_logits: true,
                all_logits: false,
            });
            budget -= 1;
        }
    }
    for (request, a) in active.iter().enumerate() {
        let Phase::Prompt { fed } = a.phase else {
            continue;
        };
        let prompt = &a.job.prompt;
        if fed < prompt.len() {
            let n = chunk.min(prompt.len() - fed);
            if n > budget {
                break;
            }
            plan.push(Planned {
                request,
                tokens: prompt[fed..fed + n].to_vec(),
                wants_logits: fed + n == prompt.len(),
                all_logits: a.job.echo,
            });
            budget -= n;
        }
    }
    plan
}

/// A sampled token: (request, token, its log-probability when asked for);
/// no token when the request's schema allows none (its value ends there).
type Sampled = (usize, Option<u32>, Option<TokenLogprob>);

/// How many of `job`'s prompt tokens a slot whose cache holds `cached` (as
/// prompt chunks of `chunk` tokens from position 0; the first `pos` of
/// them at least) lets it skip: their common prefix, in whole chunks,
/// short of the prompt's last token (whose logits are wanted). Whole chunks keep the result that of a cold start:
/// the rows are read in the same chunks. None with `echo` (every prompt
/// row's logits are wanted) or without `cache_prompt`.
fn reusable(cached: &[u32], pos: usize, job: &Job, chunk: usize) -> usize {
    if job.echo || !job.cache_prompt {
        return 0;
    }
    let common = cached
        .iter()
        .zip(&job.prompt)
        .take_while(|(a, b)| a == b)
        .count();
    let usable = common.min(pos).min(job.prompt.len().saturating_sub(1));
    usable - usable % chunk
}

/// Tokens generated since the decode rate was last published.
struct RateWindow {
    since: Instant,
    tokens: usize,
}

impl RateWindow {
    fn new() -> RateWindow {
        RateWindow {
            since: Instant::now(),
            tokens: 0,
        }
    }

    /// Publishes the rate once a second has passed, and starts over.
    fn update(&mut self, metrics: &Metrics) {
        let dt = self.since.elapsed();
        if dt >= Duration::from_secs(1) {
            metrics.set_decode_rate(self.tokens as f64 / dt.as_secs_f64());
            *self = RateWindow::new();
        }
    }
}

/// The engine thread: its session, its requests and what it reports.
/// Each turn of [`Worker::run`] admits queued requests, reaps those whose
/// client left, plans the step's rows, steps, emits the sampled tokens and
/// retires the finished requests.
struct Worker<'m> {
    sess: Session<'m>,
    /// Prompt tokens per request per step.
    chunk: usize,
    jobs: Receiver<Job>,
    metrics: Arc<Metrics>,
    drain: Arc<AtomicBool>,
    cancel: Arc<AtomicBool>,
    /// Slots without a request.
    free: Vec<usize>,
    /// Per slot, the prompt last read there: its cache holds these tokens
    /// as prompt chunks read from position 0 (what a request may reuse).
    slot_prompts: Vec<Vec<u32>>,
    /// Per slot, when it last took a request (a count of requests).
    slot_used: Vec<u64>,
    taken: u64,
    /// The requests in slots, in the order they came.
    active: Vec<Active>,
    rate: RateWindow,
    log_softmax: LogSoftmax,
}

impl<'m> Worker<'m> {
    fn new(
        sess: Session<'m>,
        cfg: &EngineConfig,
        jobs: Receiver<Job>,
        metrics: Arc<Metrics>,
        drain: Arc<AtomicBool>,
        cancel: Arc<AtomicBool>,
    ) -> Worker<'m> {
        let ctx = sess.ctx();
        if let Ok(mut slots) = metrics.slots.lock() {
            *slots = (0..cfg.slots)
                .map(|id| SlotState {
                    id,
                    id_task: -1,
                    n_ctx: ctx,
                    ..Default::default()
                })
                .collect();
        }
        metrics.kv_size.store(ctx * cfg.slots, Ordering::Relaxed);
        Worker {
            sess,
            chunk: cfg.chunk.max(1),
            jobs,
            metrics,
            drain,
            cancel,
            free: (0..cfg.slots).rev().collect(),
            slot_prompts: vec![Vec::new(); cfg.slots],
            slot_used: vec![0; cfg.slots],
            taken: 0,
            active: Vec::new(),
            rate: RateWindow::new(),
            log_softmax: LogSoftmax::default(),
        }
    }

    /// Steps until drained (or every sender is gone).
    fn run(mut self) {
        while self.admit() {
            self.reap();
            if self.active.is_empty() {
                continue;
            }
            let plan = plan(&self.active, self.chunk, self.sess.max_batch());
            let Some(sampled) = self.step(&plan) else {
                continue;
            };
            let finished = self.emit(&plan, sampled);
            self.retire(finished);
            self.rate.update(&self.metrics);
        }
    }

    /// Takes queued requests into free slots: waits for one while none is
    /// active, else takes only those already queued. False when the engine
    /// is to end: draining with nothing active or queued, or no sender left.
    fn admit(&mut self) -> bool {
        while !self.free.is_empty() {
            let job = if self.active.is_empty() {
                if self.drain.load(Ordering::SeqCst) {
                    match self.jobs.try_recv() {
                        Ok(j) => j,
                        Err(_) => return false,
                    }
                } else {
                    match self.jobs.recv_timeout(Duration::from_millis(50)) {
                        Ok(j) => j,
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => return false,
                    }
                }
            } else {
                match self.jobs.try_recv() {
                    Ok(j) => j,
                    Err(_) => break,
                }
            };
            self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            if job.events.is_closed() {
                self.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if self.cancel.load(Ordering::SeqCst) {
                let _ = job
                    .events
                    .send(Event::Failed("the server is shutting down".into()));
                continue;
            }
            let (slot, reused) = self.place(&job);
            self.sess.truncate_slot(slot, reused);
            self.metrics
                .prompt_tokens_reused
                .fetch_add(reused, Ordering::Relaxed);
            self.slot_prompts[slot] = job.prompt.clone();
            self.taken += 1;
            self.slot_used[slot] = self.taken;
            self.metrics.update_slot(slot, |s| {
                s.id_task = job.id as i64;
                s.is_processing = true;
                s.n_past = reused;
                s.n_prompt_tokens = job.prompt.len();
                s.n_prompt_tokens_cache = reused;
                s.n_decoded = 0;
            });
            let vocab = self.sess.model.config.vocab_size;
            self.active.push(Active::new(job, slot, reused, vocab));
        }
        true
    }

    /// Takes the free slot for `job` and how many of its prompt tokens are
    /// already there: the slot with the longest reusable prefix, else the
    /// one left longest ago (so that other slots' prompts stay for longer).
    fn place(&mut self, job: &Job) -> (usize, usize) {
        let (at, reused) = self
            .free
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                let pos = self.sess.slot_pos(s);
                (i, reusable(&self.slot_prompts[s], pos, job, self.chunk))
            })
            .max_by(|a, b| {
                let used = |i: usize| std::cmp::Reverse(self.slot_used[self.free[i]]);
                a.1.cmp(&b.1).then(used(a.0).cmp(&used(b.0)))
            })
            .expect("a free slot");
        (self.free.swap_remove(at), reused)
    }

    /// Drops the requests whose client left, or cancels all of them when
    /// the server cancels; their slots are free again.
    fn reap(&mut self) {
        let cancelling = self.cancel.load(Ordering::SeqCst);
        let (metrics, free) = (&self.metrics, &mut self.free);
        self.active.retain(|a| {
            let gone = a.job.events.is_closed();
            if gone || cancelling {
                metrics.release_slot(a.slot);
                if gone {
                    metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                } else {
                    let _ = a.job.events.send(a.done(FinishReason::Cancelled));
                }
                free.push(a.slot);
                return false;
            }
            true
        });
        self.metrics
            .active_slots
            .store(self.active.len(), Ordering::Relaxed);
    }

    /// Feeds the plan's rows in one batched step and samples the rows
    /// that want logits: (request, token, its log-probability when asked
    /// for), in plan order; with `echo`, each prompt row's logits give the
    /// next prompt token's log-probability. A failed step fails its
    /// requests, not the server, and gives `None`.
    fn step(&mut self, plan: &[Planned]) -> Option<Vec<Sampled>> {
        let segments: Vec<Segment> = plan
            .iter()
            .map(|p| Segment {
                slot: self.active[p.request].slot,
                tokens: &p.tokens,
                all_logits: p.all_logits,
            })
            .collect();
        let mut sampled = Vec::new();
        let started = Instant::now();
        let (active, ls) = (&mut self.active, &mut self.log_softmax);
        let tok = &self.sess.model.tokenizer;
        let result = self.sess.forward_segments(&segments, &mut |s, t, logits| {
            let p = &plan[s];
            let a = &mut active[p.request];
            let top = a.job.logprobs.unwrap_or(0);
            if let (true, Phase::Prompt { fed }) = (p.all_logits, a.phase) {
                if let Some(&next) = a.job.prompt.get(fed + t + 1) {
                    a.prompt_logprobs.push(ls.of(logits, next, top));
                }
            }
            if p.wants_logits && t + 1 == p.tokens.len() && a.job.max_tokens > 0 {
                let token = match &mut a.json {
                    None => Some(a.sampler.sample(logits)),
                    Some(c) => c.sample(&mut a.sampler, tok, logits),
                };
                let logprob = token.and_then(|t| a.job.logprobs.map(|_| ls.of(logits, t, top)));
                sampled.push((p.request, token, logprob));
            }
        });
        match result {
            Ok(()) => {
                let decode_rows = plan
                    .iter()
                    .filter(|p| matches!(self.active[p.request].phase, Phase::Decode { .. }))
                    .count();
                let rows: usize = plan.iter().map(|p| p.tokens.len()).sum();
                let busy = self.active.len();
                self.metrics
                    .step(started.elapsed(), rows - decode_rows, decode_rows, busy);
                let positions: Vec<usize> = (0..self.sess.slots())
                    .map(|s| self.sess.slot_pos(s))
                    .collect();
                self.metrics
                    .kv_tokens
                    .store(positions.iter().sum(), Ordering::Relaxed);
                self.metrics.n_tokens_max.fetch_max(
                    positions.iter().copied().max().unwrap_or(0),
                    Ordering::Relaxed,
                );
                for a in &self.active {
                    let (pos, decoded) = (positions[a.slot], a.generated);
                    self.metrics.update_slot(a.slot, |s| {
                        s.n_past = pos;
                        s.n_decoded = decoded;
                    });
                }
                Some(sampled)
            }
            Err(e) => {
                self.fail(plan, &e);
                None
            }
        }
    }

    /// Requests are checked before they are queued; should a step still
    /// fail, its requests fail and leave their slots.
    fn fail(&mut self, plan: &[Planned], e: &crate::Error) {
        tracing::error!(error = %e, "a batched step failed");
        for p in plan {
            let a = &self.active[p.request];
            let _ = a.job.events.send(Event::Failed(e.to_string()));
        }
        let (free, prompts, metrics) = (&mut self.free, &mut self.slot_prompts, &self.metrics);
        let mut i = 0;
        self.active.retain(|a| {
            let keep = !plan.iter().any(|p| p.request == i);
            i += 1;
            if !keep {
                // (what the step left in its cache is not to be reused)
                prompts[a.slot].clear();
                metrics.release_slot(a.slot);
                free.push(a.slot);
            }
            keep
        });
    }

    /// After a step: counts the prompt tokens fed, then takes each sampled
    /// token: the end of generation finishes its request; other tokens
    /// go through the decoder and the stop filter to the client, and the
    /// request finishes at a stop string or its length, or decodes the
    /// token next step. Gives the finished requests.
    fn emit(&mut self, plan: &[Planned], sampled: Vec<Sampled>) -> Vec<(usize, FinishReason)> {
        let mut finished = Vec::new();
        for p in plan {
            let a = &mut self.active[p.request];
            if let Phase::Prompt { fed } = &mut a.phase {
                *fed += p.tokens.len();
                self.metrics
                    .prompt_tokens
                    .fetch_add(p.tokens.len(), Ordering::Relaxed);
                if *fed == a.job.prompt.len() {
                    if a.job.echo {
                        let lp = std::mem::take(&mut a.prompt_logprobs);
                        let _ = a.job.events.send(Event::Prompt(lp));
                    }
                    if a.job.max_tokens == 0 {
                        finished.push((p.request, FinishReason::Length));
                    }
                }
            }
        }
        let tok = &self.sess.model.tokenizer;
        for (i, t, logprob) in sampled {
            let a = &mut self.active[i];
            let Some(t) = t.filter(|&t| !tok.is_end_of_generation(t)) else {
                finished.push((i, FinishReason::Stop));
                continue;
            };
            let mut complete = false;
            if let Some(c) = &mut a.json {
                c.accept(tok, t);
                complete = c.is_done();
            }
            a.sampler.accept(t);
            a.generated += 1;
            self.metrics
                .generated_tokens
                .fetch_add(1, Ordering::Relaxed);
            self.rate.tokens += 1;
            let piece = a.decoder.push(tok.token_to_bytes(t, false));
            if let Some(lp) = logprob {
                a.pending.push(lp, &piece);
            }
            let (text, hit) = a.stop.push(&piece);
            let logprobs = a.pending.sent(&text);
            if !text.is_empty() || !logprobs.is_empty() {
                let _ = a.job.events.send(Event::Text { text, logprobs });
            }
            if hit || complete {
                finished.push((i, FinishReason::Stop));
            } else if a.generated >= a.job.max_tokens
                || self.sess.slot_pos(a.slot) >= self.sess.ctx()
            {
                finished.push((i, FinishReason::Length));
            } else {
                a.phase = Phase::Decode { next: t };
            }
        }
        finished
    }

    /// Ends the finished requests, the last first so that the others keep
    /// their indices.
    fn retire(&mut self, mut finished: Vec<(usize, FinishReason)>) {
        finished.sort_unstable_by_key(|f| f.0);
        for &(i, finish) in finished.iter().rev() {
            let a = self.active.remove(i);
            self.finish(a, finish);
        }
        self.metrics
            .active_slots
            .store(self.active.len(), Ordering::Relaxed);
    }

    /// A request that left the active ones: sends its held-back text and
    /// its end, and frees its slot.
    fn finish(&mut self, mut a: Active, finish: FinishReason) {
        // (before the client hears of the end, so that what it then
        // reads from /metrics and /slots already counts the slot free)
        self.metrics
            .active_slots
            .store(self.active.len(), Ordering::Relaxed);
        let (decoded, pos) = (a.generated, self.sess.slot_pos(a.slot));
        self.metrics.update_slot(a.slot, |s| {
            s.n_decoded = decoded;
            s.n_past = pos;
        });
        self.metrics.release_slot(a.slot);
        self.metrics.completed.fetch_add(1, Ordering::Relaxed);
        if finish != FinishReason::Stop || !a.stop.stopped {
            let tail = a.decoder.finish();
            let (mut text, _) = a.stop.push(&tail);
            text.push_str(&a.stop.finish());
            let mut logprobs = a.pending.sent(&text);
            logprobs.extend(a.pending.finish(a.stop.stopped));
            if !text.is_empty() || !logprobs.is_empty() {
                let _ = a.job.events.send(Event::Text { text, logprobs });
            }
        }
        let _ = a.job.events.send(a.done(finish));
        tracing::info!(
            id = a.job.id,
            prompt_tokens = a.job.prompt.len(),
            completion_tokens = a.generated,
            finish = finish.as_str(),
            "request done"
        );
        self.free.push(a.slot);
    }
}

/// Holds back generated text that could be the start of a stop string,
/// and cuts the text at the first stop string.
pub struct StopFilter {
    stops: Vec<String>,
    pending: String,
    /// A stop string was found.
    pub stopped: bool,
}

impl StopFilter {
    pub fn new(stops: &[String]) -> StopFilter {
        StopFilter {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
            stopped: false,
        }
    }

    /// Adds text; returns what can be sent now and whether a stop string
    /// ended the text (nothing from it on is sent).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.pending.push_str(text);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            self.stopped = true;
            return (out, true);
        }
        // Keep the longest tail that is a proper prefix of a stop string.
        let hold = self
            .stops
            .iter()
            .map(|s| {
                (1..s.len().min(self.pending.len() + 1))
                    .rev()
                    .find(|&k| {
                        s.is_char_boundary(k)
                            && self.pending.is_char_boundary(self.pending.len() - k)
                            && self.pending.ends_with(&s[..k])
                    })
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - hold;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    /// The text held back (the generation ended without a stop string).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_cut_and_hold_back() {
        let mut f = StopFilter::new(&["END".into(), "\n\n".into()]);
        assert_eq!(f.push("Hello E"), ("Hello ".into(), false));
        assert_eq!(f.push("N"), (String::new(), false));
        assert_eq!(f.push("Dless"), ("".into(), true), "ENDless stops at END");
        let mut f = StopFilter::new(&["END".into()]);
        assert_eq!(f.push("Hello E"), ("Hello ".into(), false));
        assert_eq!(f.push("x"), ("Ex".into(), false));
        assert_eq!(f.push("ab EN"), ("ab ".into(), false));
        assert_eq!(f.finish(), "EN");
        let mut f = StopFilter::new(&["é!".into()]);
        assert_eq!(f.push("café"), ("caf".into(), false));
        assert_eq!(f.push("!"), (String::new(), true));
        let mut f = StopFilter::new(&[]);
        assert_eq!(f.push("anything"), ("anything".into(), false));
    }

    /// A request in `phase` with a prompt of `len` tokens (100, 101, ...).
    fn request(len: usize, phase: Phase) -> Active {
        let (events, _) = tokio::sync::mpsc::unbounded_channel();
        let job = Job {
            id: 0,
            prompt: (100..100 + len as u32).collect(),
            max_tokens: 8,
            logprobs: None,
            echo: false,
            cache_prompt: true,
            schema: None,
            sampling: SamplerConfig::default(),
            stop: Vec::new(),
            events,
        };
        Active {
            phase,
            ..Active::new(job, 0, 0, 16)
        }
    }

    fn row(request: usize, tokens: std::ops::Range<u32>, wants_logits: bool) -> Planned {
        Planned {
            request,
            tokens: tokens.collect(),
            wants_logits,
            all_logits: false,
        }
    }

    #[test]
    fn plan_puts_decode_rows_first_then_whole_prompt_chunks() {
        let active = [
            request(10, Phase::Prompt { fed: 0 }),
            request(3, Phase::Decode { next: 7 }),
            request(10, Phase::Prompt { fed: 8 }),
            request(5, Phase::Decode { next: 9 }),
        ];
        // 2 decode rows, a first chunk of 4, the last 2 of a prompt.
        assert_eq!(
            plan(&active, 4, 8),
            [
                row(1, 7..8, true),
                row(3, 9..10, true),
                row(0, 100..104, false),
                row(2, 108..110, true),
            ]
        );
        // Room for the decode rows only.
        assert_eq!(
            plan(&active, 4, 5),
            [row(1, 7..8, true), row(3, 9..10, true)]
        );
        // A prompt that fits in one chunk wants its logits.
        assert_eq!(
            plan(&[request(3, Phase::Prompt { fed: 0 })], 4, 8),
            [row(0, 100..103, true)]
        );
        assert_eq!(plan(&[], 4, 8), []);
    }

    #[test]
    fn plan_keeps_to_the_batch_and_the_order_requests_came() {
        let active = [
            request(4, Phase::Decode { next: 1 }),
            request(20, Phase::Prompt { fed: 0 }),
            request(20, Phase::Prompt { fed: 0 }),
            request(2, Phase::Prompt { fed: 0 }),
        ];
        for max_batch in 1..=20 {
            let p = plan(&active, 8, max_batch);
            let rows: usize = p.iter().map(|r| r.tokens.len()).sum();
            assert!(rows <= max_batch, "{max_batch}: {p:?}");
            assert_eq!(p[0], row(0, 1..2, true));
            // Whole chunks only, in order: the third request's 2 tokens
            // never overtake the second's chunk of 8.
            let want: &[Planned] = match max_batch {
                1..=8 => &[],
                9..=16 => &[row(1, 100..108, false)],
                17..=18 => &[row(1, 100..108, false), row(2, 100..108, false)],
                _ => &[
                    row(1, 100..108, false),
                    row(2, 100..108, false),
                    row(3, 100..102, true),
                ],
            };
            assert_eq!(&p[1..], want, "{max_batch}");
        }
    }

    #[test]
    fn finish_reasons_are_openais_strings() {
        for (r, s) in [
            (FinishReason::Stop, "stop"),
            (FinishReason::Length, "length"),
            (FinishReason::Cancelled, "cancelled"),
        ] {
            assert_eq!(r.as_str(), s);
            assert_eq!(serde_json::to_value(r).unwrap(), s);
        }
    }
}
