//! Counters and gauges of `bitnet serve`, rendered in Prometheus' text
//! format at `GET /metrics`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// What a slot is doing, as `GET /slots` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SlotState {
    pub id: usize,
    /// The request it serves (-1: none).
    pub id_task: i64,
    pub is_processing: bool,
    /// KV cache positions of the slot.
    pub n_ctx: usize,
    /// Tokens in its cache.
    pub n_past: usize,
    /// The request's prompt tokens, and how many of them were found in
    /// the cache.
    pub n_prompt_tokens: usize,
    pub n_prompt_tokens_cache: usize,
    /// Tokens generated for the request.
    pub n_decoded: usize,
}

#[derive(Default)]
pub struct Metrics {
    /// Requests answered, by outcome.
    pub requests_ok: AtomicUsize,
    pub requests_bad: AtomicUsize,
    pub requests_rejected: AtomicUsize,
    /// Requests that ran to their end.
    pub completed: AtomicUsize,
    /// Requests dropped because their client went away.
    pub cancelled: AtomicUsize,
    pub prompt_tokens: AtomicUsize,
    /// Prompt tokens found in a slot's cache and not read again.
    pub prompt_tokens_reused: AtomicUsize,
    pub generated_tokens: AtomicUsize,
    pub queue_depth: AtomicUsize,
    pub active_slots: AtomicUsize,
    /// Generated tokens per second over the last second of work (f64 bits).
    decode_rate: AtomicU64,
    /// Engine steps, and the requests they carried all together.
    pub steps: AtomicUsize,
    pub busy_slot_steps: AtomicUsize,
    /// Step time spent on prompt rows and on decode rows (a step's time
    /// split by its rows), in nanoseconds.
    pub prompt_nanos: AtomicU64,
    pub decode_nanos: AtomicU64,
    /// Tokens in all slots' caches, and the most one slot held.
    pub kv_tokens: AtomicUsize,
    pub n_tokens_max: AtomicUsize,
    /// KV cache positions of all slots.
    pub kv_size: AtomicUsize,
    /// Per slot, what it does.
    pub slots: Mutex<Vec<SlotState>>,
}

impl Metrics {
    pub fn set_decode_rate(&self, r: f64) {
        self.decode_rate.store(r.to_bits(), Ordering::Relaxed);
    }

    pub fn decode_rate(&self) -> f64 {
        f64::from_bits(self.decode_rate.load(Ordering::Relaxed))
    }

    /// A step of `took` over `prompt_rows` prompt rows and `decode_rows`
    /// decode rows for `busy` requests.
    pub fn step(&self, took: Duration, prompt_rows: usize, decode_rows: usize, busy: usize) {
        let rows = (prompt_rows + decode_rows).max(1) as u128;
        let ns = took.as_nanos();
        let p = (ns * prompt_rows as u128 / rows) as u64;
        self.prompt_nanos.fetch_add(p, Ordering::Relaxed);
        self.decode_nanos
            .fetch_add(ns as u64 - p, Ordering::Relaxed);
        self.steps.fetch_add(1, Ordering::Relaxed);
        self.busy_slot_steps.fetch_add(busy, Ordering::Relaxed);
    }

    /// The slots' states (a copy).
    pub fn slot_states(&self) -> Vec<SlotState> {
        self.slots.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Slot `id` has no request any more.
    pub fn release_slot(&self, id: usize) {
        self.update_slot(id, |s| {
            s.id_task = -1;
            s.is_processing = false;
        });
    }

    /// Changes slot `id`'s state.
    pub fn update_slot(&self, id: usize, f: impl FnOnce(&mut SlotState)) {
        if let Ok(mut s) = self.slots.lock() {
            if let Some(slot) = s.get_mut(id) {
                f(slot);
            }
        }
    }

    /// The Prometheus exposition text.
    pub fn render(&self, slots: usize) -> String {
        let g = |a: &AtomicUsize| a.load(Ordering::Relaxed);
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, String)]| {
            s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, v) in lines {
                s.push_str(&format!("{name}{labels} {v}\n"));
            }
        };
        metric(
            "bitnet_requests_total",
            "counter",
            "HTTP requests to the generation endpoints, by outcome.",
            &[
                ("{outcome=\"ok\"}".into(), g(&self.requests_ok).to_string()),
                (
                    "{outcome=\"bad_request\"}".into(),
                    g(&self.requests_bad).to_string(),
                ),
                (
                    "{outcome=\"rejected\"}".into(),
                    g(&self.requests_rejected).to_string(),
                ),
            ],
        );
        metric(
            "bitnet_requests_finished_total",
            "counter",
            "Generations that ran to their end, or were dropped when their client left.",
            &[
                ("{how=\"completed\"}".into(), g(&self.completed).to_string()),
                (
                    "{how=\"client_gone\"}".into(),
                    g(&self.cancelled).to_string(),
                ),
            ],
        );
        metric(
            "bitnet_prompt_tokens_total",
            "counter",
            "Prompt tokens processed.",
            &[(String::new(), g(&self.prompt_tokens).to_string())],
        );
        metric(
            "bitnet_prompt_tokens_reused_total",
            "counter",
            "Prompt tokens found in a slot's cache (cache_prompt) and not read again.",
            &[(String::new(), g(&self.prompt_tokens_reused).to_string())],
        );
        metric(
            "bitnet_generated_tokens_total",
            "counter",
            "Tokens generated.",
            &[(String::new(), g(&self.generated_tokens).to_string())],
        );
        metric(
            "bitnet_queue_depth",
            "gauge",
            "Requests waiting for a slot.",
            &[(String::new(), g(&self.queue_depth).to_string())],
        );
        metric(
            "bitnet_active_slots",
            "gauge",
            "Slots serving a request.",
            &[(String::new(), g(&self.active_slots).to_string())],
        );
        metric(
            "bitnet_slots",
            "gauge",
            "Slots (concurrent sequences) of the server.",
            &[(String::new(), slots.to_string())],
        );
        if let Some(rss) = resident_bytes() {
            metric(
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory of the server process.",
                &[(String::new(), rss.to_string())],
            );
        }
        metric(
            "bitnet_decode_tokens_per_second",
            "gauge",
            "Tokens generated per second over the last second of work, all slots together.",
            &[(String::new(), format!("{:.2}", self.decode_rate()))],
        );
        // llama-server's names, for the dashboards made for it.
        let secs = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 * 1e-9;
        let rate = |n: usize, t: f64| if t > 0.0 { n as f64 / t } else { 0.0 };
        let (prompt, predicted) = (g(&self.prompt_tokens), g(&self.generated_tokens));
        let (tp, td) = (secs(&self.prompt_nanos), secs(&self.decode_nanos));
        let steps = g(&self.steps);
        let kv = g(&self.kv_tokens);
        let one = |v: String| [(String::new(), v)];
        for (name, kind, help, v) in [
            (
                "prompt_tokens_total",
                "counter",
                "Number of prompt tokens processed.",
                prompt.to_string(),
            ),
            (
                "prompt_seconds_total",
                "counter",
                "Prompt process time",
                format!("{tp:.3}"),
            ),
            (
                "tokens_predicted_total",
                "counter",
                "Number of generation tokens processed.",
                predicted.to_string(),
            ),
            (
                "tokens_predicted_seconds_total",
                "counter",
                "Predict process time",
                format!("{td:.3}"),
            ),
            (
                "n_decode_total",
                "counter",
                "Total number of llama_decode() calls",
                steps.to_string(),
            ),
            (
                "n_busy_slots_per_decode",
                "counter",
                "Average number of busy slots per llama_decode() call",
                format!(
                    "{:.3}",
                    g(&self.busy_slot_steps) as f64 / steps.max(1) as f64
                ),
            ),
            (
                "prompt_tokens_seconds",
                "gauge",
                "Average prompt throughput in tokens/s.",
                format!("{:.3}", rate(prompt, tp)),
            ),
            (
                "predicted_tokens_seconds",
                "gauge",
                "Average generation throughput in tokens/s.",
                format!("{:.3}", rate(predicted, td)),
            ),
            (
                "kv_cache_usage_ratio",
                "gauge",
                "KV-cache usage. 1 means 100 percent usage.",
                format!("{:.5}", kv as f64 / g(&self.kv_size).max(1) as f64),
            ),
            (
                "kv_cache_tokens",
                "gauge",
                "KV-cache tokens.",
                kv.to_string(),
            ),
            (
                "requests_processing",
                "gauge",
                "Number of requests processing.",
                g(&self.active_slots).to_string(),
            ),
            (
                "requests_deferred",
                "gauge",
                "Number of requests deferred.",
                g(&self.queue_depth).to_string(),
            ),
            (
                "n_tokens_max",
                "gauge",
                "Largest observed n_tokens.",
                g(&self.n_tokens_max).to_string(),
            ),
        ] {
            metric(&format!("llamacpp:{name}"), kind, help, &one(v));
        }
        s
    }
}

/// The process' resident memory (Linux), in bytes.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
