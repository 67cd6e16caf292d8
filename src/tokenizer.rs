//! The Llama-3 byte-level BPE tokenizer, built from a GGUF's
//! `tokenizer.ggml.*` metadata.
//!
//! Encoding: optionally split out special tokens (control and user-defined
//! tokens, matched longest first), split the rest with the Llama-3
//! pre-tokenizer regex, map each piece's bytes to GPT-2's printable
//! characters, emit a piece that is itself a vocabulary entry whole
//! (`ignore_merges`), and merge the others by BPE rank.
//!
//! Decoding maps tokens back to bytes; [`StreamDecoder`] turns a token
//! stream into text without splitting a UTF-8 character across tokens.

use std::collections::HashMap;

use fancy_regex::Regex;

use crate::error::{Error, Result};
use crate::gguf::{Array, Gguf};

/// The Llama-3 pre-tokenizer split pattern.
pub const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types.
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

pub struct Tokenizer {
    tokens: Vec<String>,
    types: Vec<i32>,
    ids: HashMap<String, u32>,
    /// (left, right) -> (rank, merged id)
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Token id of each byte's printable character.
    byte_token: [u32; 256],
    /// Bytes of each token as text (control tokens: their literal text).
    token_bytes: Vec<Vec<u8>>,
    /// Special tokens by text, longest first.
    specials: Vec<(String, u32)>,
    pattern: Regex,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub add_bos: bool,
}

/// GPT-2's byte → printable char map.
fn byte_to_char() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable = (b'!' as u32..=b'~' as u32).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b);
        map[b as usize] = if printable {
            char::from_u32(b).unwrap()
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap()
        };
    }
    map
}

impl Tokenizer {
    /// Builds the tokenizer from a GGUF's metadata.
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer> {
        let model = g.get_str("tokenizer.ggml.model").unwrap_or("");
        if model != "gpt2" {
            return Err(Error::unsupported(format!(
                "tokenizer.ggml.model is {model:?}; only the byte-level BPE tokenizer (\"gpt2\") is supported"
            )));
        }
        let tokens = match g.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
            Some(Array::String(t)) if !t.is_empty() => t.clone(),
            _ => {
                return Err(Error::format(
                    "tokenizer.ggml.tokens is missing or not a string array",
                ))
            }
        };
        let types = match g
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.as_array())
        {
            Some(a) => {
                let v = a.as_i64s().ok_or_else(|| {
                    Error::format("tokenizer.ggml.token_type is not an integer array")
                })?;
                if v.len() != tokens.len() {
                    return Err(Error::format(format!(
                        "tokenizer.ggml.token_type has {} entries for {} tokens",
                        v.len(),
                        tokens.len()
                    )));
                }
                v.into_iter().map(|t| t as i32).collect()
            }
            None => vec![token_type::NORMAL; tokens.len()],
        };
        let merges = match g.get("tokenizer.ggml.merges").and_then(|v| v.as_array()) {
            Some(Array::String(m)) => m.as_slice(),
            _ => {
                return Err(Error::format(
                    "tokenizer.ggml.merges is missing or not a string array",
                ))
            }
        };
        let id = |key: &str| -> Result<Option<u32>> {
            match g.get(key) {
                None => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(i) if (i as usize) < tokens.len() => Ok(Some(i as u32)),
                    _ => Err(Error::format(format!(
                        "{key} = {v:?} is not a token id below {}",
                        tokens.len()
                    ))),
                },
            }
        };
        let bos = id("tokenizer.ggml.bos_token_id")?;
        let eos = id("tokenizer.ggml.eos_token_id")?;
        let eot = id("tokenizer.ggml.eot_token_id")?;
        let add_bos = !matches!(
            g.get("tokenizer.ggml.add_bos_token"),
            Some(crate::gguf::Value::Bool(false))
        );
        let mut t = Self::build(tokens, types, merges)?;
        t.bos = bos;
        t.eos = eos;
        t.eot = eot.or_else(|| t.token_id("<|eot_id|>"));
        t.add_bos = add_bos;
        Ok(t)
    }

    fn build(tokens: Vec<String>, types: Vec<i32>, merges: &[String]) -> Result<Tokenizer> {
        let mut ids = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            ids.entry(t.clone()).or_insert(i as u32);
        }
        let b2c = byte_to_char();
        let mut c2b = HashMap::new();
        let mut byte_token = [0u32; 256];
        for (b, &c) in b2c.iter().enumerate() {
            c2b.insert(c, b as u8);
            byte_token[b] = *ids.get(&c.to_string()).ok_or_else(|| {
                Error::format(format!("the vocabulary has no token for byte {b:#04x} ({c:?}); not a byte-level BPE vocabulary"))
            })?;
        }
        let mut merge_map = HashMap::with_capacity(merges.len());
        for (rank, m) in merges.iter().enumerate() {
            let Some((a, b)) = m.split_once(' ') else {
                return Err(Error::format(format!(
                    "merge {rank} {m:?} is not two tokens separated by a space"
                )));
            };
            if let (Some(&ia), Some(&ib), Some(&im)) =
                (ids.get(a), ids.get(b), ids.get(&format!("{a}{b}")))
            {
                merge_map.entry((ia, ib)).or_insert((rank as u32, im));
            }
        }
        let mut specials = Vec::new();
        let token_bytes = tokens
            .iter()
            .zip(&types)
            .enumerate()
            .map(|(i, (t, &ty))| match ty {
                token_type::CONTROL | token_type::USER_DEFINED => {
                    if !t.is_empty() {
                        specials.push((t.clone(), i as u32));
                    }
                    t.as_bytes().to_vec()
                }
                token_type::BYTE if t.len() == 6 && t.starts_with("<0x") => {
                    u8::from_str_radix(&t[3..5], 16)
                        .map(|b| vec![b])
                        .unwrap_or_else(|_| t.as_bytes().to_vec())
                }
                _ => t
                    .chars()
                    .flat_map(|c| match c2b.get(&c) {
                        Some(&b) => vec![b],
                        None => c.to_string().into_bytes(),
                    })
                    .collect(),
            })
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        Ok(Tokenizer {
            tokens,
            types,
            ids,
            merges: merge_map,
            byte_token,
            token_bytes,
            specials,
            pattern: Regex::new(LLAMA3_PATTERN).expect("valid pattern"),
            bos: None,
            eos: None,
            eot: None,
            add_bos: true,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(|s| s.as_str())
    }
    /// Whether a token is a control token (BOS, EOS, `<|eot_id|>`, ...).
    pub fn is_control(&self, id: u32) -> bool {
        self.types.get(id as usize) == Some(&token_type::CONTROL)
    }
    /// Whether generation should stop at this token.
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        Some(id) == self.eos || Some(id) == self.eot
    }

    /// Encodes text. `bos` prepends the BOS token (if the vocabulary has
    /// one); `special` recognises special-token text such as `<|eot_id|>`.
    pub fn encode(&self, text: &str, bos: bool, special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if bos {
            if let Some(b) = self.bos {
                out.push(b);
            }
        }
        if !special || self.specials.is_empty() {
            self.encode_plain(text, &mut out);
            return out;
        }
        let mut rest = text;
        while !rest.is_empty() {
            // Earliest special token, longest at that position.
            let mut best: Option<(usize, &str, u32)> = None;
            for (s, id) in &self.specials {
                if let Some(p) = rest.find(s.as_str()) {
                    if best.is_none_or(|(bp, bs, _)| p < bp || (p == bp && s.len() > bs.len())) {
                        best = Some((p, s, *id));
                    }
                }
            }
            match best {
                Some((p, s, id)) => {
                    self.encode_plain(&rest[..p], &mut out);
                    out.push(id);
                    rest = &rest[p + s.len()..];
                }
                None => {
                    self.encode_plain(rest, &mut out);
                    break;
                }
            }
        }
        out
    }

    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) {
        let mut last = 0;
        for m in self.pattern.find_iter(text) {
            match m {
                Ok(m) => {
                    if m.start() > last {
                        self.encode_piece(&text[last..m.start()], out);
                    }
                    self.encode_piece(m.as_str(), out);
                    last = m.end();
                }
                Err(_) => break, // backtrack limit: encode the rest as one piece
            }
        }
        if last < text.len() {
            self.encode_piece(&text[last..], out);
        }
    }

    fn encode_piece(&self, piece: &str, out: &mut Vec<u32>) {
        let mut symbols: Vec<u32> = piece.bytes().map(|b| self.byte_token[b as usize]).collect();
        if symbols.len() > 1 {
            // ignore_merges: a piece that is a vocabulary entry is emitted whole.
            let mapped: String = symbols
                .iter()
                .map(|&s| self.tokens[s as usize].as_str())
                .collect();
            if let Some(&id) = self.ids.get(&mapped) {
                out.push(id);
                return;
            }
        }
        loop {
            let mut best: Option<(u32, usize, u32)> = None;
            for i in 0..symbols.len().saturating_sub(1) {
                if let Some(&(rank, merged)) = self.merges.get(&(symbols[i], symbols[i + 1])) {
                    if best.is_none_or(|(r, _, _)| rank < r) {
                        best = Some((rank, i, merged));
                    }
                }
            }
            match best {
                Some((_, i, merged)) => {
                    symbols[i] = merged;
                    symbols.remove(i + 1);
                }
                None => break,
            }
        }
        out.extend_from_slice(&symbols);
    }

    /// The bytes of one token; control tokens give their text only when
    /// `special` is set.
    pub fn token_to_bytes(&self, id: u32, special: bool) -> &[u8] {
        match self.token_bytes.get(id as usize) {
            Some(b) if special || self.types[id as usize] != token_type::CONTROL => b,
            _ => &[],
        }
    }

    /// Decodes tokens to text (invalid UTF-8 becomes U+FFFD).
    pub fn decode(&self, ids: &[u32], special: bool) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&i| self.token_to_bytes(i, special).iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Turns a stream of tokens into text, holding back the bytes of a UTF-8
/// character until all of them have arrived.
#[derive(Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a token's bytes and returns the text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..good]).unwrap());
                    match e.error_len() {
                        // Incomplete character at the end: wait for more.
                        None => {
                            self.pending.drain(..good);
                            return out;
                        }
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..good + bad);
                        }
                    }
                }
            }
        }
    }

    /// Whatever is still held back, as text (end of stream).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab() -> Option<Tokenizer> {
        let dir = crate::testdata_dir()?;
        let g = Gguf::open(dir.join("llama3-vocab.gguf")).unwrap();
        Some(Tokenizer::from_gguf(&g).unwrap())
    }

    #[test]
    fn reference_cases() {
        let Some(tok) = vocab() else {
            eprintln!("SKIPPED tokenizer::reference_cases: ../shared/testdata not found");
            return;
        };
        let dir = crate::testdata_dir().unwrap();
        let cases = std::fs::read_to_string(dir.join("llama3-tokenizer-cases.jsonl")).unwrap();
        let mut n = 0;
        let mut failures = Vec::new();
        for line in cases.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let text = v["text"].as_str().unwrap();
            let want: Vec<u32> = v["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let got = tok.encode(text, false, false);
            if got != want {
                failures.push(format!("{text:?}: got {got:?} want {want:?}"));
            }
            // Decoding gives the text back.
            assert_eq!(tok.decode(&want, false), text);
            n += 1;
        }
        assert_eq!(n, 274);
        assert!(
            failures.is_empty(),
            "{} of {n} cases differ:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn specials_bos_and_streaming() {
        let Some(tok) = vocab() else {
            eprintln!(
                "SKIPPED tokenizer::specials_bos_and_streaming: ../shared/testdata not found"
            );
            return;
        };
        assert_eq!(
            (tok.bos, tok.eos, tok.eot),
            (Some(128000), Some(128001), Some(128009))
        );
        let with = tok.encode("Hi<|eot_id|>", true, true);
        assert_eq!(with.first(), Some(&128000));
        assert_eq!(with.last(), Some(&128009));
        let without = tok.encode("Hi<|eot_id|>", false, false);
        assert!(!without.contains(&128009));
        assert_eq!(tok.decode(&without, false), "Hi<|eot_id|>");
        assert_eq!(tok.decode(&with, false), "Hi");
        assert_eq!(tok.decode(&with, true), "<|begin_of_text|>Hi<|eot_id|>");
        // A character split over tokens streams out whole.
        let text = "日本語 👋🏽 ok";
        let ids = tok.encode(text, false, false);
        let mut s = StreamDecoder::new();
        let mut out = String::new();
        for &id in &ids {
            let piece = s.push(tok.token_to_bytes(id, false));
            assert!(!piece.contains('\u{FFFD}'));
            out.push_str(&piece);
        }
        out.push_str(&s.finish());
        assert_eq!(out, text);
    }

    #[test]
    fn stream_decoder_handles_bad_bytes() {
        let mut s = StreamDecoder::new();
        assert_eq!(s.push(&[0xE6, 0x97]), "");
        assert_eq!(s.push(&[0xA5, b'a']), "日a");
        assert_eq!(s.push(&[0xFF, b'b']), "\u{FFFD}b");
        assert_eq!(s.push(&[0xF0]), "");
        assert_eq!(s.finish(), "\u{FFFD}");
    }
}
