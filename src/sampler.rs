//! Next-token sampling as llama.cpp users know it: repetition, presence and
//! frequency penalties over the last tokens, then top-k, top-p and
//! temperature; greedy at temperature 0. Seeded and reproducible; no
//! allocation per token.

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerConfig {
    /// 0 (or below) means greedy.
    pub temperature: f32,
    /// 0 means the whole vocabulary.
    pub top_k: usize,
    /// 1.0 disables nucleus sampling.
    pub top_p: f32,
    /// 1.0 disables the penalty.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub repeat_last_n: usize,
    /// Subtracted once from the logit of every token among the recent ones
    /// (OpenAI's `presence_penalty`; 0 disables).
    pub presence_penalty: f32,
    /// Subtracted from a token's logit per occurrence among the recent ones
    /// (OpenAI's `frequency_penalty`; 0 disables).
    pub frequency_penalty: f32,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0,
        }
    }
}

pub struct Sampler {
    pub config: SamplerConfig,
    state: u64,
    candidates: Vec<(u32, f32)>,
    history: Vec<u32>,
}

impl Sampler {
    pub fn new(config: SamplerConfig, vocab_size: usize) -> Self {
        Sampler {
            config,
            state: config.seed ^ 0x9E37_79B9_7F4A_7C15,
            candidates: Vec::with_capacity(vocab_size),
            history: Vec::with_capacity(config.repeat_last_n.max(1)),
        }
    }

    /// Records a token for the repetition penalty (prompt tokens too).
    pub fn accept(&mut self, token: u32) {
        let n = self.config.repeat_last_n;
        if n == 0 {
            return;
        }
        if self.history.len() == n {
            self.history.remove(0);
        }
        self.history.push(token);
    }

    fn next_f32(&mut self) -> f32 {
        // splitmix64
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Picks the next token from `logits`.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let c = self.config;
        self.candidates.clear();
        self.candidates
            .extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        if c.repeat_penalty != 1.0 {
            for &t in &self.history {
                if let Some(cand) = self.candidates.get_mut(t as usize) {
                    // Each distinct token is penalised once.
                    if cand.1 == logits[t as usize] {
                        cand.1 = if cand.1 > 0.0 {
                            cand.1 / c.repeat_penalty
                        } else {
                            cand.1 * c.repeat_penalty
                        };
                    }
                }
            }
        }
        if c.presence_penalty != 0.0 || c.frequency_penalty != 0.0 {
            // As llama.cpp: logit -= count·frequency + (count > 0)·presence,
            // each distinct token once (its count taken over the history).
            for (i, &t) in self.history.iter().enumerate() {
                if self.history[..i].contains(&t) {
                    continue;
                }
                let count = self.history[i..].iter().filter(|&&u| u == t).count() as f32;
                if let Some(cand) = self.candidates.get_mut(t as usize) {
                    cand.1 -= count * c.frequency_penalty + c.presence_penalty;
                }
            }
        }
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if c.temperature <= 0.0 {
            return self
                .candidates
                .iter()
                .min_by(|a, b| by_logit(a, b))
                .map_or(0, |c| c.0);
        }
        let k = if c.top_k == 0 {
            self.candidates.len()
        } else {
            c.top_k.min(self.candidates.len())
        };
        if k < self.candidates.len() {
            self.candidates.select_nth_unstable_by(k - 1, by_logit);
            self.candidates.truncate(k);
        }
        self.candidates.sort_unstable_by(by_logit);
        let max = self.candidates[0].1;
        let mut sum = 0f32;
        for cand in self.candidates.iter_mut() {
            cand.1 = ((cand.1 - max) / c.temperature).exp();
            sum += cand.1;
        }
        let mut keep = self.candidates.len();
        if c.top_p < 1.0 {
            let mut cum = 0f32;
            for (i, cand) in self.candidates.iter().enumerate() {
                cum += cand.1 / sum;
                if cum >= c.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        let total: f32 = self.candidates[..keep].iter().map(|c| c.1).sum();
        let mut r = self.next_f32() * total;
        for cand in &self.candidates[..keep] {
            r -= cand.1;
            if r <= 0.0 {
                return cand.0;
            }
        }
        self.candidates[keep - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_penalty() {
        let greedy = SamplerConfig {
            temperature: 0.0,
            repeat_penalty: 1.0,
            ..Default::default()
        };
        let mut s = Sampler::new(greedy, 4);
        assert_eq!(s.sample(&[0.1, 2.0, 1.9, -1.0]), 1);
        let mut s = Sampler::new(
            SamplerConfig {
                repeat_penalty: 2.0,
                ..greedy
            },
            4,
        );
        s.accept(1);
        s.accept(1);
        assert_eq!(s.sample(&[0.1, 2.0, 1.9, -1.0]), 2, "2.0 / 2 = 1.0 < 1.9");
        // Presence: -0.15 once; frequency: -0.1 per occurrence.
        let mut s = Sampler::new(
            SamplerConfig {
                presence_penalty: 0.15,
                ..greedy
            },
            4,
        );
        s.accept(1);
        s.accept(1);
        assert_eq!(s.sample(&[0.1, 2.0, 1.9, -1.0]), 2, "2.0 - 0.15 < 1.9");
        let mut s = Sampler::new(
            SamplerConfig {
                frequency_penalty: 0.04,
                ..greedy
            },
            4,
        );
        s.accept(1);
        s.accept(1);
        assert_eq!(s.sample(&[0.1, 2.0, 1.9, -1.0]), 1, "2.0 - 0.08 > 1.9");
        s.accept(1);
        assert_eq!(s.sample(&[0.1, 2.0, 1.9, -1.0]), 2, "2.0 - 0.12 < 1.9");
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_respects_top_k() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.1).sin()).collect();
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 3,
            top_p: 1.0,
            repeat_penalty: 1.0,
            seed: 42,
            ..Default::default()
        };
        let run = || {
            let mut s = Sampler::new(cfg, 100);
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        let mut top3: Vec<u32> = (0..100).collect();
        top3.sort_by(|&x, &y| logits[y as usize].total_cmp(&logits[x as usize]));
        assert!(a.iter().all(|t| top3[..3].contains(t)));
        assert!(a.iter().collect::<std::collections::HashSet<_>>().len() > 1);
        // top_p tiny: only the best token survives.
        let mut s = Sampler::new(
            SamplerConfig {
                top_p: 0.01,
                top_k: 0,
                ..cfg
            },
            100,
        );
        assert!((0..20).all(|_| s.sample(&logits) == top3[0]));
    }
}
