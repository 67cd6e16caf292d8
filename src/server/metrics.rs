//! Counters and gauges of `bitnet serve`, rendered in Prometheus' text
//! format at `GET /metrics`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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
}

impl Metrics {
    pub fn set_decode_rate(&self, r: f64) {
        self.decode_rate.store(r.to_bits(), Ordering::Relaxed);
    }

    pub fn decode_rate(&self) -> f64 {
        f64::from_bits(self.decode_rate.load(Ordering::Relaxed))
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
        s
    }
}

/// The process' resident memory (Linux), in bytes.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
