//! Log-probabilities of tokens, as OpenAI's `logprobs` report them: the
//! log-softmax of the model's logits (before any penalty, temperature or
//! truncation of the sampler), the chosen token's and the most likely
//! tokens' at the same position.

/// A token's log-probability at its position, and the `n` most likely
/// tokens there with theirs (most likely first, ties by id).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// Computes [`TokenLogprob`]s, reusing its index buffer.
#[derive(Debug, Default)]
pub struct LogSoftmax {
    idx: Vec<u32>,
}

impl LogSoftmax {
    /// `token`'s log-probability under `logits`, with the `top` most likely.
    pub fn of(&mut self, logits: &[f32], token: u32, top: usize) -> TokenLogprob {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
        let norm = f64::from(max) + sum.ln();
        let lp = |l: f32| (f64::from(l) - norm) as f32;
        let k = top.min(logits.len());
        let mut best = Vec::with_capacity(k);
        if k > 0 {
            self.idx.clear();
            self.idx.extend(0..logits.len() as u32);
            let cmp = |x: &u32, y: &u32| {
                logits[*y as usize]
                    .total_cmp(&logits[*x as usize])
                    .then(x.cmp(y))
            };
            if k < self.idx.len() {
                self.idx.select_nth_unstable_by(k - 1, cmp);
            }
            self.idx.truncate(k);
            self.idx.sort_unstable_by(cmp);
            best.extend(self.idx.iter().map(|&t| (t, lp(logits[t as usize]))));
        }
        TokenLogprob {
            token,
            logprob: lp(logits[token as usize]),
            top: best,
        }
    }
}

/// Generated tokens' log-probabilities waiting for their text: a token's
/// entry goes to the client with the text it starts in, which the stream
/// decoder (an incomplete UTF-8 character) or the stop filter (a possible
/// stop string) may hold back. Offsets count characters of the generated
/// text.
#[derive(Debug, Default)]
pub struct Pending {
    /// Entries with the offset at which their token's text starts.
    waiting: Vec<(usize, TokenLogprob)>,
    /// Characters of text decoded so far.
    produced: usize,
    /// Characters of text sent so far.
    sent: usize,
}

impl Pending {
    /// A token whose decoded text is `piece` (empty while a character is
    /// incomplete).
    pub fn push(&mut self, entry: TokenLogprob, piece: &str) {
        self.waiting.push((self.produced, entry));
        self.produced += piece.chars().count();
    }

    /// `text` was sent: the entries of the tokens whose text starts in it
    /// (or before it), with their offsets.
    pub fn sent(&mut self, text: &str) -> Vec<(usize, TokenLogprob)> {
        self.sent += text.chars().count();
        let n = self.waiting.partition_point(|(at, _)| *at < self.sent);
        self.waiting.drain(..n).collect()
    }

    /// Generation ended: every entry left when all text was sent; without
    /// those of tokens past a stop string when one cut the text.
    pub fn finish(&mut self, cut: bool) -> Vec<(usize, TokenLogprob)> {
        if cut {
            self.waiting.clear();
        }
        std::mem::take(&mut self.waiting)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_and_the_top() {
        let logits = [1.0f32, 3.0, 2.0, 3.0];
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        let mut ls = LogSoftmax::default();
        let e = ls.of(&logits, 2, 3);
        assert_eq!(e.token, 2);
        assert!((e.logprob as f64 - (2.0 - z.ln())).abs() < 1e-6);
        // Ties by id.
        assert_eq!(
            e.top.iter().map(|t| t.0).collect::<Vec<_>>(),
            [1, 3, 2],
            "{e:?}"
        );
        assert_eq!(e.top[0].1, e.top[1].1);
        let total: f64 = logits
            .iter()
            .map(|&l| (ls.of(&logits, 0, 0).logprob as f64 + (l - 1.0) as f64).exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert!(ls.of(&logits, 0, 0).top.is_empty());
        assert_eq!(ls.of(&logits, 0, 9).top.len(), 4);
        // Large logits do not overflow.
        let big = [1000.0f32, 1000.0];
        assert!((ls.of(&big, 0, 1).logprob + std::f32::consts::LN_2).abs() < 1e-6);
    }

    fn entry(token: u32) -> TokenLogprob {
        TokenLogprob {
            token,
            logprob: -1.0,
            top: vec![],
        }
    }

    #[test]
    fn entries_go_out_with_their_text() {
        let mut p = Pending::default();
        p.push(entry(1), "ab");
        p.push(entry(2), ""); // half a character
        assert_eq!(p.sent("ab").iter().map(|e| e.0).collect::<Vec<_>>(), [0]);
        p.push(entry(3), "é");
        p.push(entry(4), "cd");
        let got = p.sent("é");
        assert_eq!(
            got.iter().map(|e| (e.0, e.1.token)).collect::<Vec<_>>(),
            [(2, 2), (2, 3)]
        );
        // "cd" held back (a stop string's start), then cut: token 4 is not
        // reported.
        assert!(p.sent("").is_empty());
        assert!(p.finish(true).is_empty());
        let mut p = Pending::default();
        p.push(entry(5), "xy");
        assert_eq!(p.finish(false).len(), 1);
    }
}
