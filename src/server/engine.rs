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

use super::metrics::Metrics;
use crate::model::{Model, Segment, Session};
use crate::sampler::{Sampler, SamplerConfig};
use crate::tokenizer::StreamDecoder;

/// A generation request, tokenized and checked.
pub struct Job {
    pub id: u64,
    pub prompt: Vec<u32>,
    /// Most tokens to generate (the slot's context bounds it too).
    pub max_tokens: usize,
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
    /// More generated text.
    Text(String),
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
                let max_batch = cfg.chunk.max(1) + cfg.slots;
                match Session::with_slots(&model, cfg.slot_ctx, max_batch, cfg.threads, cfg.slots) {
                    Ok(sess) => {
                        let _ = ready_tx.send(Ok(()));
                        run(&model, sess, cfg, rx, &metrics, &drain, &cancel);
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
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(j)) | Err(TrySendError::Disconnected(j)) => {
                self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                Err(j)
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

/// A request being served in a slot.
struct Active {
    job: Job,
    slot: usize,
    /// Prompt tokens fed so far.
    fed: usize,
    sampler: Sampler,
    /// The token sampled last, to be fed next step.
    next: Option<u32>,
    generated: usize,
    decoder: StreamDecoder,
    stop: StopFilter,
}

impl Active {
    fn done(&self, finish: FinishReason) -> Event {
        Event::Done {
            finish,
            prompt_tokens: self.job.prompt.len(),
            completion_tokens: self.generated,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run(
    model: &Model,
    mut sess: Session,
    cfg: EngineConfig,
    rx: Receiver<Job>,
    metrics: &Metrics,
    drain: &AtomicBool,
    cancel: &AtomicBool,
) {
    let chunk = cfg.chunk.max(1);
    let max_batch = sess.max_batch();
    let tok = &model.tokenizer;
    let vocab = model.config.vocab_size;
    let mut free: Vec<usize> = (0..cfg.slots).rev().collect();
    let mut active: Vec<Active> = Vec::new();
    let mut window = (Instant::now(), 0usize);
    loop {
        // Admit waiting requests into free slots (block while idle).
        while !free.is_empty() {
            let job = if active.is_empty() {
                if drain.load(Ordering::SeqCst) {
                    match rx.try_recv() {
                        Ok(j) => j,
                        Err(_) => return,
                    }
                } else {
                    match rx.recv_timeout(Duration::from_millis(50)) {
                        Ok(j) => j,
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            } else {
                match rx.try_recv() {
                    Ok(j) => j,
                    Err(_) => break,
                }
            };
            metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            if job.events.is_closed() {
                metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if cancel.load(Ordering::SeqCst) {
                let _ = job
                    .events
                    .send(Event::Failed("the server is shutting down".into()));
                continue;
            }
            let slot = free.pop().expect("a free slot");
            sess.reset_slot(slot);
            let mut sampler = Sampler::new(job.sampling, vocab);
            for &t in &job.prompt {
                sampler.accept(t);
            }
            let stop = StopFilter::new(&job.stop);
            active.push(Active {
                job,
                slot,
                fed: 0,
                sampler,
                next: None,
                generated: 0,
                decoder: StreamDecoder::new(),
                stop,
            });
        }
        // Drop requests whose client left (or all, when cancelling).
        let cancelling = cancel.load(Ordering::SeqCst);
        active.retain(|a| {
            let gone = a.job.events.is_closed();
            if gone || cancelling {
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
        metrics.active_slots.store(active.len(), Ordering::Relaxed);
        if active.is_empty() {
            continue;
        }

        // This step's rows: every decoding request's token, then whole
        // prompt chunks while the batch has room.
        let mut plan: Vec<(usize, Vec<u32>, bool)> = Vec::new(); // (active index, tokens, wants logits)
        let mut budget = max_batch;
        for (i, a) in active.iter().enumerate() {
            if let Some(t) = a.next {
                plan.push((i, vec![t], true));
                budget -= 1;
            }
        }
        for (i, a) in active.iter().enumerate() {
            if a.next.is_none() && a.fed < a.job.prompt.len() {
                let n = chunk.min(a.job.prompt.len() - a.fed);
                if n > budget {
                    break;
                }
                let last = a.fed + n == a.job.prompt.len();
                plan.push((i, a.job.prompt[a.fed..a.fed + n].to_vec(), last));
                budget -= n;
            }
        }
        let segments: Vec<Segment> = plan
            .iter()
            .map(|(i, t, _)| Segment {
                slot: active[*i].slot,
                tokens: t,
            })
            .collect();
        let mut sampled: Vec<(usize, u32)> = Vec::new();
        let result = sess.forward_segments(&segments, &mut |s, logits| {
            let (i, _, wants) = plan[s];
            if wants {
                sampled.push((i, active[i].sampler.sample(logits)));
            }
        });
        if let Err(e) = result {
            // Requests are checked before they are queued; should a step
            // still fail, its requests fail, not the server.
            tracing::error!(error = %e, "a batched step failed");
            for (i, _, _) in &plan {
                let a = &active[*i];
                let _ = a.job.events.send(Event::Failed(e.to_string()));
            }
            let failed: Vec<usize> = plan.iter().map(|p| p.0).collect();
            let mut k = 0;
            active.retain(|a| {
                let keep = !failed.contains(&k);
                k += 1;
                if !keep {
                    free.push(a.slot);
                }
                keep
            });
            continue;
        }
        for (i, t, _) in &plan {
            let a = &mut active[*i];
            if a.next.take().is_none() {
                a.fed += t.len();
                metrics.prompt_tokens.fetch_add(t.len(), Ordering::Relaxed);
            }
        }
        let mut finished: Vec<(usize, FinishReason)> = Vec::new();
        for &(i, t) in &sampled {
            let a = &mut active[i];
            if tok.is_end_of_generation(t) {
                finished.push((i, FinishReason::Stop));
                continue;
            }
            a.sampler.accept(t);
            a.generated += 1;
            metrics.generated_tokens.fetch_add(1, Ordering::Relaxed);
            window.1 += 1;
            let piece = a.decoder.push(tok.token_to_bytes(t, false));
            let (text, hit) = a.stop.push(&piece);
            if !text.is_empty() {
                let _ = a.job.events.send(Event::Text(text));
            }
            if hit {
                finished.push((i, FinishReason::Stop));
            } else if a.generated >= a.job.max_tokens || sess.slot_pos(a.slot) >= sess.ctx() {
                finished.push((i, FinishReason::Length));
            } else {
                a.next = Some(t);
            }
        }
        finished.sort_unstable_by_key(|f| f.0);
        for &(i, finish) in finished.iter().rev() {
            let mut a = active.remove(i);
            // (before the client hears of the end, so that what it then
            // reads from /metrics already counts the slot free)
            metrics.active_slots.store(active.len(), Ordering::Relaxed);
            if finish != FinishReason::Stop || !a.stop.stopped {
                let tail = a.decoder.finish();
                let (mut text, _) = a.stop.push(&tail);
                text.push_str(&a.stop.finish());
                if !text.is_empty() {
                    let _ = a.job.events.send(Event::Text(text));
                }
            }
            let _ = a.job.events.send(a.done(finish));
            metrics.completed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                id = a.job.id,
                prompt_tokens = a.job.prompt.len(),
                completion_tokens = a.generated,
                finish = finish.as_str(),
                "request done"
            );
            free.push(a.slot);
        }
        metrics.active_slots.store(active.len(), Ordering::Relaxed);
        let dt = window.0.elapsed();
        if dt >= Duration::from_secs(1) {
            metrics.set_decode_rate(window.1 as f64 / dt.as_secs_f64());
            window = (Instant::now(), 0);
        }
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
