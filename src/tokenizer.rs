//! The tokenizers of the vocabularies bitnet.cpp's converter writes, built
//! from a GGUF's `tokenizer.ggml.*` metadata and run as llama.cpp runs them:
//!
//! - byte-level BPE (`gpt2`) with the pre-tokenizer `tokenizer.ggml.pre`
//!   names (`llama-bpe` for Llama 3 and BitNet-b1.58-2B-4T, `falcon3` /
//!   `falcon_e` / `falcon`, `gpt-2`, `default`): the text is split by the
//!   pre-tokenizer's expressions in turn (each splits every piece the
//!   previous left, matches and the text between them both becoming
//!   pieces), each piece's bytes are mapped to GPT-2's printable
//!   characters and merged by BPE rank (`llama-bpe` first emits a piece
//!   that is itself a vocabulary entry whole);
//! - SentencePiece (`llama`, the 1bitLLM models): a space is put before
//!   the text, spaces become `▁`, characters are merged by the highest
//!   score, and what ends up outside the vocabulary becomes `<0xXX>` byte
//!   tokens.
//!
//! Before either, special tokens are split out (longest first): control
//! tokens only when asked to, user-defined ones always, as llama.cpp does.
//! Decoding maps tokens back to bytes; [`StreamDecoder`] turns a token
//! stream into text without splitting a UTF-8 character across tokens.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use fancy_regex::Regex;

use crate::error::{Error, Result};
use crate::gguf::{Array, Gguf, Value};

/// The Llama-3 pre-tokenizer split pattern.
pub const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-2's split pattern (with llama.cpp's `\s+` fallback).
const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Punctuation runs, split first by the Falcon pre-tokenizers.
const FALCON_PUNCT: &str = r"[\p{P}$+<=>^~|`]+";

/// The split expressions of a BPE pre-tokenizer, applied in turn, and
/// whether a piece that is a vocabulary entry is emitted whole.
fn pre_tokenizer(pre: &str) -> Option<(Vec<&'static str>, bool)> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" => (vec![LLAMA3_PATTERN], true),
        "dbrx" | "smaug-bpe" => (vec![LLAMA3_PATTERN], false),
        "falcon" => (vec![FALCON_PUNCT, GPT2_PATTERN, "[0-9][0-9][0-9]"], false),
        "falcon3" | "falcon_e" => (vec![FALCON_PUNCT, GPT2_PATTERN, "[0-9]"], false),
        "gpt-2" | "gpt2" | "mpt" | "olmo" | "phi-2" => (vec![GPT2_PATTERN], false),
        "default" | "" => (
            vec![
                r"[\p{P}$+<=>^~|]+",
                GPT2_PATTERN,
                r"\p{N}+",
                "[0-9][0-9][0-9]",
            ],
            false,
        ),
        _ => return None,
    })
}

/// GGUF token types.
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// Byte-level BPE state.
struct Bpe {
    /// (left, right) -> (rank, merged id)
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Token id of each byte's printable character, [`NO_TOKEN`] where the
    /// vocabulary lacks it (the Falcon vocabulary lacks some control bytes;
    /// llama.cpp then emits nothing for the byte, and so do we).
    byte_token: [u32; 256],
    /// GPT-2's printable character of each byte.
    byte_char: [char; 256],
    /// The pre-tokenizer's split expressions, applied in turn.
    splits: Vec<Regex>,
    ignore_merges: bool,
}

const NO_TOKEN: u32 = u32::MAX;

/// SentencePiece state.
struct Spm {
    scores: Vec<f32>,
    /// The `<0xXX>` token of each byte, if the vocabulary has it.
    byte_token: [Option<u32>; 256],
    unk: Option<u32>,
    add_space_prefix: bool,
}

enum Algorithm {
    Bpe(Bpe),
    Spm(Spm),
}

pub struct Tokenizer {
    tokens: Vec<String>,
    types: Vec<i32>,
    ids: HashMap<String, u32>,
    /// Bytes of each token as text (control tokens: their literal text).
    token_bytes: Vec<Vec<u8>>,
    /// Special tokens (control, user-defined, unknown) by text, longest first.
    specials: Vec<(String, u32)>,
    algorithm: Algorithm,
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

/// A piece of text to encode, or a special token already split out.
enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

impl Tokenizer {
    /// Builds the tokenizer from a GGUF's metadata.
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer> {
        let model = g.get_str("tokenizer.ggml.model").unwrap_or("");
        if model != "gpt2" && model != "llama" {
            return Err(Error::unsupported(format!(
                "tokenizer.ggml.model is {model:?}; byte-level BPE (\"gpt2\") and SentencePiece (\"llama\") are supported"
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
        let flag = |key: &str| match g.get(key) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        };
        let bos = id("tokenizer.ggml.bos_token_id")?;
        let eos = id("tokenizer.ggml.eos_token_id")?;
        let eot = id("tokenizer.ggml.eot_token_id")?;
        let unk = id("tokenizer.ggml.unknown_token_id")?;
        let pre = g.get_str("tokenizer.ggml.pre").unwrap_or("default");
        let mut ids = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            ids.entry(t.clone()).or_insert(i as u32);
        }
        let (algorithm, default_bos) = if model == "llama" {
            let scores = match g.get("tokenizer.ggml.scores").and_then(|v| v.as_array()) {
                Some(Array::F32(s)) if s.len() == tokens.len() => s.clone(),
                None => vec![0.0; tokens.len()],
                _ => {
                    return Err(Error::format(
                        "tokenizer.ggml.scores is not an f32 array with one score per token",
                    ))
                }
            };
            let mut byte_token = [None; 256];
            for (b, t) in byte_token.iter_mut().enumerate() {
                *t = ids.get(&format!("<0x{b:02X}>")).copied();
            }
            let unk = unk.or_else(|| ids.get("<unk>").copied());
            if unk.is_none() && byte_token.iter().any(Option::is_none) {
                return Err(Error::format(
                    "the SentencePiece vocabulary has neither all 256 <0xXX> byte tokens nor an unknown token",
                ));
            }
            let spm = Spm {
                scores,
                byte_token,
                unk,
                add_space_prefix: flag("tokenizer.ggml.add_space_prefix").unwrap_or(true),
            };
            (Algorithm::Spm(spm), true)
        } else {
            let (patterns, ignore_merges) = pre_tokenizer(pre).ok_or_else(|| {
                Error::unsupported(format!(
                    "tokenizer.ggml.pre = {pre:?} is not a pre-tokenizer this runner knows (llama-bpe, falcon3, falcon_e, falcon, gpt-2, default)"
                ))
            })?;
            let merges = match g.get("tokenizer.ggml.merges").and_then(|v| v.as_array()) {
                Some(Array::String(m)) => m.as_slice(),
                _ => {
                    return Err(Error::format(
                        "tokenizer.ggml.merges is missing or not a string array",
                    ))
                }
            };
            let bpe = Bpe::build(&ids, merges, &patterns, ignore_merges)?;
            (Algorithm::Bpe(bpe), ignore_merges)
        };
        let mut t = Self::build(tokens, types, ids, algorithm);
        t.bos = bos;
        t.eos = eos;
        t.eot = eot.or_else(|| t.token_id("<|eot_id|>"));
        t.add_bos = flag("tokenizer.ggml.add_bos_token").unwrap_or(default_bos);
        Ok(t)
    }

    fn build(
        tokens: Vec<String>,
        types: Vec<i32>,
        ids: HashMap<String, u32>,
        algorithm: Algorithm,
    ) -> Tokenizer {
        let c2b: HashMap<char, u8> = byte_to_char()
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        let spm = matches!(algorithm, Algorithm::Spm(_));
        let mut specials = Vec::new();
        let token_bytes = tokens
            .iter()
            .zip(&types)
            .enumerate()
            .map(|(i, (t, &ty))| match ty {
                token_type::CONTROL | token_type::USER_DEFINED | token_type::UNKNOWN => {
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
                _ if spm => t.replace('\u{2581}', " ").into_bytes(),
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
        Tokenizer {
            tokens,
            types,
            ids,
            token_bytes,
            specials,
            algorithm,
            bos: None,
            eos: None,
            eot: None,
            add_bos: true,
        }
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
    /// The BOS token's text, if the vocabulary has one.
    pub fn bos_text(&self) -> Option<&str> {
        self.bos.and_then(|t| self.token_text(t))
    }
    /// The EOS token's text, if the vocabulary has one.
    pub fn eos_text(&self) -> Option<&str> {
        self.eos.and_then(|t| self.token_text(t))
    }
    /// Whether the vocabulary is SentencePiece (else byte-level BPE).
    pub fn is_sentencepiece(&self) -> bool {
        matches!(self.algorithm, Algorithm::Spm(_))
    }
    /// Whether a token is a control token (BOS, EOS, `<|eot_id|>`, ...).
    pub fn is_control(&self, id: u32) -> bool {
        self.types.get(id as usize) == Some(&token_type::CONTROL)
    }
    /// Whether generation should stop at this token.
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        Some(id) == self.eos || Some(id) == self.eot
    }

    /// Splits `text` at special tokens as llama.cpp's `tokenizer_st_partition`
    /// does: for each special token, longest first, every occurrence in the
    /// text still unsplit becomes a token. Control and unknown tokens are
    /// split out only when `special` is set; user-defined ones always.
    fn partition<'t>(&self, text: &'t str, special: bool) -> Vec<Fragment<'t>> {
        let mut frags = vec![Fragment::Text(text)];
        for (s, id) in &self.specials {
            if !special && self.types[*id as usize] != token_type::USER_DEFINED {
                continue;
            }
            if !frags
                .iter()
                .any(|f| matches!(f, Fragment::Text(t) if t.contains(s.as_str())))
            {
                continue;
            }
            let mut out = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                match f {
                    Fragment::Text(mut t) => {
                        while let Some(p) = t.find(s.as_str()) {
                            if p > 0 {
                                out.push(Fragment::Text(&t[..p]));
                            }
                            out.push(Fragment::Token(*id));
                            t = &t[p + s.len()..];
                        }
                        if !t.is_empty() {
                            out.push(Fragment::Text(t));
                        }
                    }
                    token => out.push(token),
                }
            }
            frags = out;
        }
        frags
    }

    /// Encodes text. `bos` prepends the BOS token (if the vocabulary has
    /// one); `special` recognises control-token text such as `<|eot_id|>`.
    pub fn encode(&self, text: &str, bos: bool, special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if bos {
            if let Some(b) = self.bos {
                out.push(b);
            }
        }
        if text.is_empty() {
            return out;
        }
        // SentencePiece puts a space before the first text and before text
        // that follows a special token.
        let mut prev_special = true;
        for f in self.partition(text, special) {
            match f {
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Fragment::Text(t) => {
                    match &self.algorithm {
                        Algorithm::Bpe(b) => b.encode(self, t, &mut out),
                        Algorithm::Spm(s) => {
                            let prefix = s.add_space_prefix && prev_special;
                            s.encode(self, t, prefix, &mut out)
                        }
                    }
                    prev_special = false;
                }
            }
        }
        out
    }

    /// The bytes of one token; control tokens give their text only when
    /// `special` is set.
    pub fn token_to_bytes(&self, id: u32, special: bool) -> &[u8] {
        match self.token_bytes.get(id as usize) {
            Some(b)
                if special
                    || !matches!(
                        self.types[id as usize],
                        token_type::CONTROL | token_type::UNKNOWN
                    ) =>
            {
                b
            }
            _ => &[],
        }
    }

    /// Decodes tokens to text (invalid UTF-8 becomes U+FFFD). With a
    /// SentencePiece vocabulary the space the encoder put before the text
    /// is dropped from the first token, as llama.cpp's detokenizer does.
    pub fn decode(&self, ids: &[u32], special: bool) -> String {
        let mut bytes: Vec<u8> = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            let mut b = self.token_to_bytes(id, special);
            if i == 0 {
                if let Algorithm::Spm(s) = &self.algorithm {
                    if s.add_space_prefix {
                        b = b.strip_prefix(b" ").unwrap_or(b);
                    }
                }
            }
            bytes.extend_from_slice(b);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Bpe {
    fn build(
        ids: &HashMap<String, u32>,
        merges: &[String],
        patterns: &[&str],
        ignore_merges: bool,
    ) -> Result<Bpe> {
        let b2c = byte_to_char();
        let mut byte_token = [NO_TOKEN; 256];
        for (t, &c) in byte_token.iter_mut().zip(b2c.iter()) {
            *t = ids.get(&c.to_string()).copied().unwrap_or(NO_TOKEN);
        }
        if byte_token[b'a' as usize] == NO_TOKEN || byte_token[b' ' as usize] == NO_TOKEN {
            return Err(Error::format(
                "the vocabulary has no tokens for the bytes of 'a' or ' '; not a byte-level BPE vocabulary",
            ));
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
        Ok(Bpe {
            merges: merge_map,
            byte_token,
            byte_char: b2c,
            splits: patterns
                .iter()
                .map(|p| Regex::new(p).expect("valid pattern"))
                .collect(),
            ignore_merges,
        })
    }

    /// Splits `text` with each expression in turn and encodes the pieces.
    fn encode(&self, tok: &Tokenizer, text: &str, out: &mut Vec<u32>) {
        let mut pieces = vec![text];
        for re in &self.splits {
            let mut next = Vec::with_capacity(pieces.len());
            for p in pieces {
                let mut last = 0;
                for m in re.find_iter(p) {
                    let Ok(m) = m else { break }; // backtrack limit: keep the rest whole
                    if m.start() > last {
                        next.push(&p[last..m.start()]);
                    }
                    if m.end() > m.start() {
                        next.push(m.as_str());
                    }
                    last = m.end();
                }
                if last < p.len() {
                    next.push(&p[last..]);
                }
            }
            pieces = next;
        }
        for p in pieces {
            self.encode_piece(tok, p, out);
        }
    }

    fn encode_piece(&self, tok: &Tokenizer, piece: &str, out: &mut Vec<u32>) {
        let mut symbols: Vec<u32> = piece.bytes().map(|b| self.byte_token[b as usize]).collect();
        if symbols.len() > 1 && self.ignore_merges {
            // A piece that is a vocabulary entry is emitted whole.
            let mapped: String = piece.bytes().map(|b| self.byte_char[b as usize]).collect();
            if let Some(&id) = tok.ids.get(&mapped) {
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
        out.extend(symbols.into_iter().filter(|&s| s != NO_TOKEN));
    }
}

/// A candidate merge of two adjacent symbols, ordered as llama.cpp's queue:
/// highest score first, then the leftmost.
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    fn cmp(&self, o: &Self) -> Ordering {
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.left.cmp(&self.left))
    }
}

/// A symbol of the SentencePiece merge: bytes `start..start + len` of the
/// escaped text, linked to its neighbours.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl Spm {
    fn encode(&self, tok: &Tokenizer, text: &str, space_prefix: bool, out: &mut Vec<u32>) {
        let mut s = String::with_capacity(text.len() + 3);
        if space_prefix {
            s.push('\u{2581}');
        }
        s.push_str(&text.replace(' ', "\u{2581}"));
        let mut syms: Vec<Symbol> = s
            .char_indices()
            .map(|(i, c)| Symbol {
                start: i,
                len: c.len_utf8(),
                prev: None,
                next: None,
            })
            .collect();
        let n = syms.len();
        for (i, sym) in syms.iter_mut().enumerate() {
            sym.prev = i.checked_sub(1);
            sym.next = (i + 1 < n).then_some(i + 1);
        }
        let mut queue = BinaryHeap::new();
        let try_add = |syms: &[Symbol],
                       queue: &mut BinaryHeap<Bigram>,
                       l: Option<usize>,
                       r: Option<usize>| {
            let (Some(l), Some(r)) = (l, r) else { return };
            let (a, b) = (syms[l], syms[r]);
            let text = &s[a.start..a.start + a.len + b.len];
            if let Some(&id) = tok.ids.get(text) {
                queue.push(Bigram {
                    score: self.scores[id as usize],
                    left: l,
                    right: r,
                    size: text.len(),
                });
            }
        };
        for i in 1..n {
            try_add(&syms, &mut queue, Some(i - 1), Some(i));
        }
        while let Some(bg) = queue.pop() {
            let (l, r) = (syms[bg.left], syms[bg.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != bg.size {
                continue; // one side was merged since
            }
            syms[bg.left].len += r.len;
            syms[bg.right].len = 0;
            syms[bg.left].next = r.next;
            if let Some(nx) = r.next {
                syms[nx].prev = Some(bg.left);
            }
            try_add(&syms, &mut queue, syms[bg.left].prev, Some(bg.left));
            try_add(&syms, &mut queue, Some(bg.left), syms[bg.left].next);
        }
        let mut i = (n > 0).then_some(0);
        while let Some(k) = i {
            let sym = syms[k];
            let piece = &s[sym.start..sym.start + sym.len];
            match tok.ids.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for b in piece.bytes() {
                        // (checked at load: byte tokens or an unknown token exist)
                        out.extend(self.byte_token[b as usize].or(self.unk));
                    }
                }
            }
            i = sym.next;
        }
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

    /// Every case of a `{"text", "ids"}` JSONL file through the tokenizer of
    /// a fixture GGUF: the ids exactly (no BOS, specials not parsed), and
    /// the ids decoded give the text back.
    fn check_cases(gguf: &str, cases: &str) -> Option<()> {
        let dir = crate::testdata_dir()?;
        let tok = Tokenizer::from_gguf(&Gguf::open(dir.join(gguf)).unwrap()).unwrap();
        let cases = std::fs::read_to_string(dir.join(cases)).unwrap();
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
            let back = tok.decode(&want, false);
            if back != text {
                failures.push(format!("{text:?} decodes as {back:?}"));
            }
            n += 1;
        }
        assert_eq!(n, 274);
        assert!(
            failures.is_empty(),
            "{gguf}: {} of {n} cases differ:\n{}",
            failures.len(),
            failures.join("\n")
        );
        Some(())
    }

    #[test]
    fn reference_cases() {
        for (gguf, cases) in [
            ("llama3-vocab.gguf", "llama3-tokenizer-cases.jsonl"),
            ("bitnet-spm-tiny.gguf", "llama-spm-tokenizer-cases.jsonl"),
            ("falcon3-i2s-tiny.gguf", "falcon3-tokenizer-cases.jsonl"),
        ] {
            if check_cases(gguf, cases).is_none() {
                eprintln!("SKIPPED tokenizer::reference_cases: ../shared/testdata not found");
                return;
            }
        }
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
