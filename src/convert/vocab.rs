//! The tokenizer side of `bitnet convert`: the `tokenizer.ggml.*` metadata
//! bitnet.cpp's converter (llama.cpp's `convert_hf_to_gguf.py` with gguf-py's
//! `SpecialVocab`) writes for a Hugging Face checkpoint directory, read
//! without Python:
//!
//! - `tokenizer.model` (SentencePiece, the 1bitLLM models): the pieces,
//!   scores and types from the protobuf (a small exact reader below), then
//!   the tokens of `added_tokens.json` not already there, then `[PADn]` up to
//!   `vocab_size`; tokenizer `llama`, pre-tokenizer `default`, and
//!   `add_space_prefix` from the normalizer's `add_dummy_prefix`.
//! - `tokenizer.json` with a byte-level BPE model (Llama 3, Falcon 3): the
//!   vocabulary and the added tokens by id, `[PADn]` for ids without a token,
//!   the merges; tokenizer `gpt2`. llama.cpp's converter names the
//!   pre-tokenizer by the hash of the ids the tokenizer gives a check text;
//!   here the `pre_tokenizer` layout gives a candidate name, our own
//!   [`Tokenizer`] with that pre-tokenizer encodes the check text, and a hash
//!   llama.cpp knows decides the name (an unknown hash keeps the candidate).
//! - special tokens as `SpecialVocab` finds them: BOS, EOS, unknown,
//!   separator and padding from `tokenizer_config.json` (`bos_token`, ...)
//!   or `config.json` (`bos_token_id`, ...), `add_bos_token` /
//!   `add_eos_token`, and the chat template from `tokenizer_config.json` or
//!   `chat_template.jinja`.
//!
//! Every error names the file at fault (and the key or token); no input
//! makes it panic.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::error::{Error, ErrorKind, Result};
use crate::gguf::{Array, Gguf, Value};
use crate::tokenizer::{token_type, Tokenizer, LLAMA3_PATTERN};

/// The `tokenizer.ggml.*` metadata (and nothing else) bitnet.cpp's/llama.cpp's converter writes for the checkpoint in `dir`.
/// `config` is the parsed config.json; `vocab_size` is config.json's vocab_size (the token list is padded to it).
pub fn vocab_metadata(
    dir: &std::path::Path,
    config: &serde_json::Value,
    vocab_size: usize,
) -> crate::error::Result<Vec<(String, crate::gguf::Value)>> {
    let config = JsonFile {
        path: dir.join("config.json"),
        json: config.clone(),
    };
    if vocab_size == 0 || vocab_size > MAX_VOCAB {
        return Err(config.err(format_args!(
            "vocab_size {vocab_size} is not between 1 and {MAX_VOCAB}"
        )));
    }
    let tokenizer_json = JsonFile::read_if_present(dir.join("tokenizer.json"))?;
    let tokenizer_config = JsonFile::read_if_present(dir.join("tokenizer_config.json"))?;
    let spm_path = dir.join("tokenizer.model");
    let vocab = if spm_path.is_file() {
        sentencepiece_vocab(&spm_path, dir, vocab_size)?
    } else if let Some(tj) = &tokenizer_json {
        bpe_vocab(tj, dir, vocab_size)?
    } else {
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "{}: no tokenizer.model or tokenizer.json: the checkpoint has no tokenizer to convert",
                dir.display()
            ),
        ));
    };
    let specials = special_token_ids(
        &config,
        tokenizer_config.as_ref(),
        tokenizer_json.as_ref(),
        &vocab.tokens,
    )?;
    let pre = match (&vocab.merges, &tokenizer_json) {
        (Some(_), Some(tj)) => {
            let bos = specials
                .iter()
                .find(|(key, _)| *key == "tokenizer.ggml.bos_token_id")
                .map(|&(_, id)| id);
            name_pre_tokenizer(tj, &vocab, bos)?
        }
        _ => "default".to_string(),
    };

    let mut md = vec![
        kv("tokenizer.ggml.model", Value::String(vocab.model.into())),
        kv("tokenizer.ggml.pre", Value::String(pre)),
        kv(
            "tokenizer.ggml.tokens",
            Value::Array(Array::String(vocab.tokens)),
        ),
    ];
    if let Some(scores) = vocab.scores {
        md.push(kv(
            "tokenizer.ggml.scores",
            Value::Array(Array::F32(scores)),
        ));
    }
    md.push(kv(
        "tokenizer.ggml.token_type",
        Value::Array(Array::I32(vocab.types)),
    ));
    if let Some(add) = vocab.add_space_prefix {
        md.push(kv("tokenizer.ggml.add_space_prefix", Value::Bool(add)));
    }
    if let Some(merges) = vocab.merges {
        md.push(kv(
            "tokenizer.ggml.merges",
            Value::Array(Array::String(merges)),
        ));
    }
    for (key, id) in specials {
        md.push(kv(key, Value::U32(id)));
    }
    if let Some(tc) = &tokenizer_config {
        for (field, key) in [
            ("add_bos_token", "tokenizer.ggml.add_bos_token"),
            ("add_eos_token", "tokenizer.ggml.add_eos_token"),
        ] {
            if let Some(&Json::Bool(b)) = tc.json.get(field) {
                md.push(kv(key, Value::Bool(b)));
            }
        }
    }
    if let Some(template) = chat_template(dir, tokenizer_config.as_ref())? {
        md.push(kv("tokenizer.chat_template", Value::String(template)));
    }
    Ok(md)
}

/// The largest `vocab_size` converted (the token list is padded to it, so
/// a wrong one must not size an allocation; real vocabularies have up to a
/// few hundred thousand tokens).
const MAX_VOCAB: usize = 1 << 24;

fn kv(key: &str, value: Value) -> (String, Value) {
    (key.to_string(), value)
}

/// An error about a file of the checkpoint: its path, then what is wrong.
fn file_err(path: &Path, what: impl fmt::Display) -> Error {
    Error::format(format!("{}: {what}", path.display()))
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::new(ErrorKind::Io, format!("{}: {e}", path.display())))
}

/// A parsed JSON file of the checkpoint.
struct JsonFile {
    path: PathBuf,
    json: Json,
}

impl JsonFile {
    fn read(path: PathBuf) -> Result<JsonFile> {
        let bytes = read_file(&path)?;
        let json = serde_json::from_slice(&bytes)
            .map_err(|e| file_err(&path, format_args!("not valid JSON: {e}")))?;
        Ok(JsonFile { path, json })
    }

    fn read_if_present(path: PathBuf) -> Result<Option<JsonFile>> {
        if path.is_file() {
            JsonFile::read(path).map(Some)
        } else {
            Ok(None)
        }
    }

    fn err(&self, what: impl fmt::Display) -> Error {
        file_err(&self.path, what)
    }
}

/// A vocabulary as the converter writes it.
struct Vocab {
    /// `tokenizer.ggml.model`: `llama` (SentencePiece) or `gpt2` (byte-level BPE).
    model: &'static str,
    tokens: Vec<String>,
    /// GGUF token types ([`token_type`]).
    types: Vec<i32>,
    /// SentencePiece only.
    scores: Option<Vec<f32>>,
    /// SentencePiece only.
    add_space_prefix: Option<bool>,
    /// BPE only, as `"left right"`.
    merges: Option<Vec<String>>,
}

// ---------------------------------------------------------------------------
// SentencePiece

/// The score and type the converter gives a token it adds to a
/// SentencePiece vocabulary (from `added_tokens.json`, or padding).
const ADDED_SCORE: f32 = -1000.0;

/// `_set_vocab_sentencepiece`: the pieces of `tokenizer.model`, the new
/// tokens of `added_tokens.json`, `[PAD1]`, `[PAD2]`, ... up to `vocab_size`.
fn sentencepiece_vocab(path: &Path, dir: &Path, vocab_size: usize) -> Result<Vocab> {
    let model = parse_sentencepiece(&read_file(path)?).map_err(|e| file_err(path, e))?;
    let mut tokens = Vec::with_capacity(vocab_size.max(model.pieces.len()));
    let mut scores = Vec::with_capacity(tokens.capacity());
    let mut types = Vec::with_capacity(tokens.capacity());
    for p in model.pieces {
        types.push(sentencepiece_token_type(p.kind));
        tokens.push(p.text);
        scores.push(p.score);
    }
    let added_path = dir.join("added_tokens.json");
    if added_path.is_file() {
        let added: KeysInOrder = serde_json::from_slice(&read_file(&added_path)?)
            .map_err(|e| file_err(&added_path, format_args!("not a JSON object: {e}")))?;
        let mut known: HashSet<String> = tokens.iter().cloned().collect();
        for text in added.0 {
            if known.insert(text.clone()) {
                tokens.push(text);
                scores.push(ADDED_SCORE);
                types.push(token_type::USER_DEFINED);
            }
        }
    }
    if tokens.len() > vocab_size {
        return Err(file_err(
            path,
            format_args!(
                "{} tokens (with added_tokens.json's), more than config.json's vocab_size {vocab_size}",
                tokens.len()
            ),
        ));
    }
    for i in 1..=vocab_size - tokens.len() {
        tokens.push(format!("[PAD{i}]"));
        scores.push(ADDED_SCORE);
        types.push(token_type::UNUSED);
    }
    Ok(Vocab {
        model: "llama",
        tokens,
        types,
        scores: Some(scores),
        add_space_prefix: Some(model.add_dummy_prefix),
        merges: None,
    })
}

/// The GGUF type the converter gives a SentencePiece piece type: unknown,
/// control, unused and byte keep their numbers; normal and user-defined
/// pieces become NORMAL (its `is_unknown` / `is_control` / `is_unused` /
/// `is_byte` chain has no user-defined case).
fn sentencepiece_token_type(kind: u64) -> i32 {
    match kind {
        2 => token_type::UNKNOWN,
        3 => token_type::CONTROL,
        5 => token_type::UNUSED,
        6 => token_type::BYTE,
        _ => token_type::NORMAL,
    }
}

/// One `SentencePiece` message of a `ModelProto`.
struct Piece {
    text: String,
    score: f32,
    /// sentencepiece_model.proto's `Type`: 1 normal, 2 unknown, 3 control,
    /// 4 user-defined, 5 unused, 6 byte.
    kind: u64,
}

/// What the converter reads of sentencepiece's `ModelProto`.
struct SentencePieceModel {
    pieces: Vec<Piece>,
    add_dummy_prefix: bool,
}

/// One field of a protobuf message: its number and its value by wire type.
enum Field<'a> {
    Varint(u64),
    /// (No field read here is one; its 8 bytes are skipped.)
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// Reads the fields of a protobuf message in order. Every length is checked
/// against the bytes left; errors give the offset in the whole file.
struct ProtoReader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Offset of `buf` in the file, for messages.
    base: usize,
}

impl<'a> ProtoReader<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        ProtoReader { buf, pos: 0, base }
    }

    fn offset(&self) -> usize {
        self.base + self.pos
    }

    fn varint(&mut self) -> std::result::Result<u64, String> {
        let start = self.offset();
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(format!("truncated varint at byte {start}"));
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err(format!("varint at byte {start} overflows 64 bits"));
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!("varint at byte {start} is longer than 10 bytes"))
    }

    fn take(&mut self, n: u64, what: &str) -> std::result::Result<&'a [u8], String> {
        let left = self.buf.len() - self.pos;
        match usize::try_from(n) {
            Ok(n) if n <= left => {
                let bytes = &self.buf[self.pos..self.pos + n];
                self.pos += n;
                Ok(bytes)
            }
            _ => Err(format!(
                "{what} of {n} bytes at byte {} runs past the end ({left} bytes left)",
                self.offset()
            )),
        }
    }

    /// The next field and the file offset of its value, or `None` at the
    /// end of the message.
    fn next_field(&mut self) -> std::result::Result<Option<(u64, Field<'a>, usize)>, String> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let at = self.offset();
        let key = self.varint()?;
        let number = key >> 3;
        if number == 0 {
            return Err(format!("field number 0 at byte {at}"));
        }
        let value_at = self.offset();
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8, "fixed64 field")?;
                Field::Fixed64
            }
            2 => {
                let len = self.varint()?;
                let value_at = self.offset();
                return Ok(Some((
                    number,
                    Field::Bytes(self.take(len, "length-delimited field")?),
                    value_at,
                )));
            }
            5 => {
                let b = self.take(4, "fixed32 field")?;
                Field::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            3 | 4 => {
                return Err(format!(
                    "field {number} at byte {at} is a group (unsupported)"
                ))
            }
            w => return Err(format!("field {number} at byte {at} has wire type {w}")),
        };
        Ok(Some((number, field, value_at)))
    }
}

/// Parses sentencepiece's `ModelProto`: field 1, the pieces; field 3, the
/// `NormalizerSpec` (its field 3, `add_dummy_prefix`, defaults to true).
/// Every other field, of any wire type but groups, is skipped.
fn parse_sentencepiece(buf: &[u8]) -> std::result::Result<SentencePieceModel, String> {
    let mut model = SentencePieceModel {
        pieces: Vec::new(),
        add_dummy_prefix: true,
    };
    let mut r = ProtoReader::new(buf, 0);
    while let Some((number, field, at)) = r.next_field()? {
        match (number, field) {
            (1, Field::Bytes(b)) => {
                let n = model.pieces.len();
                model
                    .pieces
                    .push(parse_piece(b, at).map_err(|e| format!("piece {n}: {e}"))?);
            }
            (3, Field::Bytes(b)) => {
                // A message field seen twice is merged: the last value wins.
                let mut spec = ProtoReader::new(b, at);
                while let Some((number, field, at)) = spec.next_field()? {
                    match (number, field) {
                        (3, Field::Varint(v)) => model.add_dummy_prefix = v != 0,
                        (3, _) => {
                            return Err(format!(
                                "normalizer_spec.add_dummy_prefix at byte {at} is not a varint"
                            ))
                        }
                        _ => {}
                    }
                }
            }
            (1 | 3, _) => {
                return Err(format!(
                    "ModelProto field {number} at byte {at} is not a message"
                ))
            }
            _ => {}
        }
    }
    if model.pieces.is_empty() {
        return Err("no pieces: not a SentencePiece model".into());
    }
    Ok(model)
}

/// Parses one `SentencePiece` message: 1 piece (string), 2 score (float),
/// 3 type (enum, default NORMAL).
fn parse_piece(buf: &[u8], base: usize) -> std::result::Result<Piece, String> {
    let mut text = None;
    let mut score = 0.0;
    let mut kind = 1;
    let mut r = ProtoReader::new(buf, base);
    while let Some((number, field, at)) = r.next_field()? {
        match (number, field) {
            (1, Field::Bytes(b)) => {
                let s = std::str::from_utf8(b)
                    .map_err(|_| format!("text at byte {at} is not UTF-8"))?;
                text = Some(s.to_string());
            }
            (2, Field::Fixed32(bits)) => score = f32::from_bits(bits),
            (3, Field::Varint(v)) if (1..=6).contains(&v) => kind = v,
            (3, Field::Varint(v)) => {
                return Err(format!(
                    "type {v} at byte {at} is not a SentencePiece type (1..=6)"
                ))
            }
            (1..=3, _) => {
                return Err(format!(
                    "field {number} at byte {at} has the wrong wire type"
                ))
            }
            _ => {}
        }
    }
    match text {
        Some(text) if !text.is_empty() => Ok(Piece { text, score, kind }),
        _ => Err("no text".into()),
    }
}

/// The keys of a JSON object in file order (`serde_json`'s map sorts them;
/// the converter appends `added_tokens.json`'s tokens in file order).
struct KeysInOrder(Vec<String>);

impl<'de> serde::Deserialize<'de> for KeysInOrder {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Keys;
        impl<'de> serde::de::Visitor<'de> for Keys {
            type Value = KeysInOrder;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<KeysInOrder, A::Error> {
                let mut keys = Vec::new();
                while let Some((key, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                    keys.push(key);
                }
                Ok(KeysInOrder(keys))
            }
        }
        d.deserialize_map(Keys)
    }
}

// ---------------------------------------------------------------------------
// Byte-level BPE

/// `get_vocab_base` and the merges of `SpecialVocab`: the tokens of
/// `model.vocab` (NORMAL) and `added_tokens` (CONTROL when `special`, else
/// USER_DEFINED) by id, `[PADi]` (USER_DEFINED) for an id without one.
fn bpe_vocab(tj: &JsonFile, dir: &Path, vocab_size: usize) -> Result<Vocab> {
    let model = tj
        .json
        .get("model")
        .filter(|m| m.is_object())
        .ok_or_else(|| tj.err("no \"model\" object"))?;
    match model.get("type").and_then(Json::as_str) {
        Some("BPE") => {}
        other => {
            return Err(tj.err(format_args!(
                "model.type is {}, not \"BPE\"; only byte-level BPE tokenizer.json files are converted (a SentencePiece vocabulary needs its tokenizer.model)",
                other.map_or("missing".to_string(), |t| format!("{t:?}"))
            )))
        }
    }
    if model.get("byte_fallback") == Some(&Json::Bool(true)) {
        return Err(tj.err(format_args!(
            "a byte-fallback BPE (a SentencePiece vocabulary): converting it needs the checkpoint's tokenizer.model, which {} lacks",
            dir.display()
        )));
    }
    let vocab = model
        .get("vocab")
        .and_then(Json::as_object)
        .ok_or_else(|| tj.err("model.vocab is missing or not an object"))?;
    let mut slots: Vec<Option<(String, i32)>> = vec![None; vocab_size];
    let id_below = |id: &Json, what: &dyn fmt::Display| -> Result<usize> {
        match id.as_u64().and_then(|i| usize::try_from(i).ok()) {
            Some(i) if i < vocab_size => Ok(i),
            Some(i) => Err(tj.err(format_args!(
                "{what} has id {i}, not below config.json's vocab_size {vocab_size}"
            ))),
            None => Err(tj.err(format_args!("{what} has id {id}, not a token id"))),
        }
    };
    for (text, id) in vocab {
        let i = id_below(id, &format_args!("model.vocab token {text:?}"))?;
        slots[i] = Some((text.clone(), token_type::NORMAL));
    }
    match tj.json.get("added_tokens") {
        None | Some(Json::Null) => {}
        Some(Json::Array(added)) => {
            for (n, t) in added.iter().enumerate() {
                let Some(text) = t.get("content").and_then(Json::as_str) else {
                    return Err(tj.err(format_args!("added_tokens[{n}] has no \"content\" string")));
                };
                let id = t.get("id").unwrap_or(&Json::Null);
                let i = id_below(id, &format_args!("added token {text:?}"))?;
                let special = t.get("special").and_then(Json::as_bool).unwrap_or(false);
                let ty = if special {
                    token_type::CONTROL
                } else {
                    token_type::USER_DEFINED
                };
                slots[i] = Some((text.to_string(), ty));
            }
        }
        Some(_) => return Err(tj.err("added_tokens is not an array")),
    }
    let (tokens, types) = slots
        .into_iter()
        .enumerate()
        .map(|(i, slot)| slot.unwrap_or_else(|| (format!("[PAD{i}]"), token_type::USER_DEFINED)))
        .unzip();
    Ok(Vocab {
        model: "gpt2",
        tokens,
        types,
        scores: None,
        add_space_prefix: None,
        merges: Some(bpe_merges(tj, model, dir)?),
    })
}

/// The merges as `"left right"`: `model.merges` as strings, or as pairs
/// (transformers 4.45 on; a space inside a part is written as `Ġ`, as
/// gguf-py does), else `merges.txt`.
fn bpe_merges(tj: &JsonFile, model: &Json, dir: &Path) -> Result<Vec<String>> {
    // An empty list is a vocabulary of single characters (and llama.cpp
    // takes an empty merge list); a merges.txt beside it wins then.
    let merges_txt = dir.join("merges.txt");
    if let Some(Json::Array(list)) = model.get("merges").filter(|m| {
        m.as_array()
            .is_some_and(|a| !a.is_empty() || !merges_txt.is_file())
    }) {
        let escape = |s: &str| s.replace(' ', "\u{120}");
        return list
            .iter()
            .enumerate()
            .map(|(i, m)| match m {
                Json::String(s) => Ok(s.clone()),
                Json::Array(pair) => match pair.as_slice() {
                    [Json::String(a), Json::String(b)] => {
                        Ok(format!("{} {}", escape(a), escape(b)))
                    }
                    _ => Err(tj.err(format_args!("model.merges[{i}] is not a pair of strings"))),
                },
                _ => Err(tj.err(format_args!(
                    "model.merges[{i}] is neither \"left right\" nor [\"left\", \"right\"]"
                ))),
            })
            .collect();
    }
    let path = merges_txt;
    if !path.is_file() {
        return Err(tj.err("model.merges is missing, and there is no merges.txt"));
    }
    let text = String::from_utf8(read_file(&path)?).map_err(|_| file_err(&path, "not UTF-8"))?;
    // gguf-py: a first line starting with '#' is a header; lines that are
    // not two fields are skipped.
    let mut lines = text.lines().peekable();
    if lines.peek().is_some_and(|l| l.trim().starts_with('#')) {
        lines.next();
    }
    let merges: Vec<String> = lines
        .filter_map(
            |l| match l.split_whitespace().collect::<Vec<_>>().as_slice() {
                [a, b] => Some(format!("{a} {b}")),
                _ => None,
            },
        )
        .collect();
    if merges.is_empty() {
        return Err(file_err(&path, "no merges"));
    }
    Ok(merges)
}

/// The check text of llama.cpp's converter (`chktxt` in
/// `get_vocab_base_pre`), whose ids name the pre-tokenizer.
const CHECK_TEXT: &str = "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\u{1f680} (normal) \u{1f636}\u{200d}\u{1f32b}\u{fe0f} (multiple emojis concatenated) \u{2705} \u{1f999}\u{1f999} 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 \u{1780}\u{17b6}\u{1793}\u{17cb}\u{178f}\u{17c2}\u{1796}\u{17b7}\u{179f}\u{17c1}\u{179f}\u{17a2}\u{17b6}\u{1785}\u{1f601} ?\u{6211}\u{60f3}\u{5728}apple\u{5de5}\u{4f5c}1314151\u{5929}\u{ff5e} ------======= \u{43d}\u{435}\u{449}\u{43e} \u{43d}\u{430} \u{411}\u{44a}\u{43b}\u{433}\u{430}\u{440}\u{441}\u{43a}\u{438} ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL";

/// The pre-tokenizer names of bitnet.cpp's converter by the sha256 of
/// `str(ids)` of [`CHECK_TEXT`] (`get_vocab_base_pre`).
#[rustfmt::skip]
const KNOWN_HASHES: [(&str, &str); 12] = [
    ("0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5", "llama-bpe"),
    ("049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754", "deepseek-llm"),
    ("347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821", "deepseek-coder"),
    ("8aeee3860c56296a157a1fe2fad249ec40aa59b1bb5709f4ade11c4e6fe652ed", "falcon"),
    ("a6b57017d60e6edb4d88ecc2845188e0eb333a70357e45dcc9b53964a73bbae6", "falcon_e"),
    ("0876d13b50744004aa9aeae05e7b0647eac9d801b5ba4668afc01e709c15e19f", "bert-bge"),
    ("b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166", "mpt"),
    ("35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34", "starcoder"),
    ("3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454", "gpt-2"),
    ("6221ad2852e85ce96f791f476e0b390cf9b474c9e3d1362f53a24a06dc8220ff", "refact"),
    ("9c2227e4dd922002fb81bde4fc02b0483ca4f12911410dee2255e4987644e3f8", "command-r"),
    ("9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e", "falcon3"),
];

/// The pre-tokenizers tried, in this order, when the `pre_tokenizer` layout
/// is none of those [`layout_pre`] knows.
const PRE_CANDIDATES: [&str; 4] = ["llama-bpe", "falcon3", "falcon", "gpt-2"];

/// One step of a tokenizer.json `pre_tokenizer`, as far as naming it needs.
#[derive(Debug, PartialEq)]
enum PreStep {
    Split(String),
    ByteLevel { use_regex: bool },
    Punctuation,
    Digits { individual: bool },
    Other,
}

fn pre_step(j: &Json) -> PreStep {
    let flag = |key: &str, default: bool| j.get(key).and_then(Json::as_bool).unwrap_or(default);
    match j.get("type").and_then(Json::as_str) {
        Some("Split") => j
            .get("pattern")
            .and_then(|p| p.get("Regex").or_else(|| p.get("String")))
            .and_then(Json::as_str)
            .map_or(PreStep::Other, |re| PreStep::Split(re.to_string())),
        // A ByteLevel that puts a space before the text is not what
        // llama.cpp's pre-tokenizers do.
        Some("ByteLevel") if !flag("add_prefix_space", false) => PreStep::ByteLevel {
            use_regex: flag("use_regex", true),
        },
        Some("Punctuation") => PreStep::Punctuation,
        Some("Digits") => PreStep::Digits {
            individual: flag("individual_digits", false),
        },
        _ => PreStep::Other,
    }
}

/// The llama.cpp pre-tokenizer whose published tokenizer.json has this
/// `pre_tokenizer` layout (extra fields ignored).
fn layout_pre(pre_tokenizer: &Json) -> Option<&'static str> {
    let steps: Vec<PreStep> = match pre_tokenizer.get("type").and_then(Json::as_str) {
        Some("Sequence") => pre_tokenizer
            .get("pretokenizers")?
            .as_array()?
            .iter()
            .map(pre_step)
            .collect(),
        Some(_) => vec![pre_step(pre_tokenizer)],
        None => return None,
    };
    use PreStep::*;
    match steps.as_slice() {
        [Split(re), ByteLevel { use_regex: false }] if re == LLAMA3_PATTERN => Some("llama-bpe"),
        [Punctuation, ByteLevel { use_regex: true }, Digits { individual: true }] => {
            Some("falcon3")
        }
        [Punctuation, ByteLevel { use_regex: true }, Digits { individual: false }, Split(re)]
            if re == "[0-9][0-9][0-9]" =>
        {
            Some("falcon")
        }
        [ByteLevel { use_regex: true }] => Some("gpt-2"),
        _ => None,
    }
}

/// `get_vocab_base_pre`: the name llama.cpp knows the hash of the check
/// text's ids by, the ids coming from our tokenizer with the pre-tokenizer
/// the layout names (or, for a layout it names none, with each of
/// [`PRE_CANDIDATES`]); else the layout's name. Hugging Face's `encode`
/// adds what the tokenizer's post-processor or class adds, so the ids are
/// hashed both as they are and after the BOS token.
fn name_pre_tokenizer(tj: &JsonFile, vocab: &Vocab, bos: Option<u32>) -> Result<String> {
    let pre_tokenizer = tj.json.get("pre_tokenizer").unwrap_or(&Json::Null);
    let layout = layout_pre(pre_tokenizer);
    let candidates: Vec<&str> = match layout {
        Some(name) => vec![name],
        None => PRE_CANDIDATES.to_vec(),
    };
    for pre in candidates {
        let tok = bpe_tokenizer(vocab, pre, bos).map_err(|e| tj.err(e.message))?;
        let ids = tok.encode(CHECK_TEXT, false, false);
        let with_bos: Vec<u32> = bos.into_iter().chain(ids.iter().copied()).collect();
        for ids in [&ids, &with_bos] {
            let hash = sha256_hex(python_list(ids).as_bytes());
            if let Some(&(_, name)) = KNOWN_HASHES.iter().find(|(h, _)| *h == hash) {
                return Ok(name.to_string());
            }
        }
    }
    layout.map(str::to_string).ok_or_else(|| {
        let mut shown = pre_tokenizer.to_string();
        if shown.len() > 300 {
            let mut end = 300;
            while !shown.is_char_boundary(end) {
                end -= 1;
            }
            shown.truncate(end);
            shown.push_str("...");
        }
        tj.err(format_args!(
            "pre_tokenizer {shown} is not a layout this converter knows (Llama 3, Falcon 3, Falcon, GPT-2), and no pre-tokenizer it has gives a check-text hash llama.cpp knows"
        ))
    })
}

/// Our tokenizer for a BPE vocabulary with the pre-tokenizer `pre`.
fn bpe_tokenizer(vocab: &Vocab, pre: &str, bos: Option<u32>) -> Result<Tokenizer> {
    let mut md = vec![
        kv("tokenizer.ggml.model", Value::String(vocab.model.into())),
        kv("tokenizer.ggml.pre", Value::String(pre.into())),
        kv(
            "tokenizer.ggml.tokens",
            Value::Array(Array::String(vocab.tokens.clone())),
        ),
        kv(
            "tokenizer.ggml.token_type",
            Value::Array(Array::I32(vocab.types.clone())),
        ),
        kv(
            "tokenizer.ggml.merges",
            Value::Array(Array::String(vocab.merges.clone().unwrap_or_default())),
        ),
    ];
    if let Some(bos) = bos {
        md.push(kv("tokenizer.ggml.bos_token_id", Value::U32(bos)));
    }
    Tokenizer::from_gguf(&Gguf::from_metadata(&md)?)
}

/// Python's `str(list_of_ints)`: `[1, 2, 3]`.
fn python_list(ids: &[u32]) -> String {
    let items: Vec<String> = ids.iter().map(u32::to_string).collect();
    format!("[{}]", items.join(", "))
}

/// SHA-256 (FIPS 180-4) of `data` as lowercase hex.
fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64).wrapping_mul(8)).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (wi, b) in w.iter_mut().zip(block.chunks_exact(4)) {
            *wi = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for (k, wi) in K.iter().zip(w) {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(*k)
                .wrapping_add(wi);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

// ---------------------------------------------------------------------------
// Special tokens and the chat template

/// The special-token types of `SpecialVocab` this converter writes, with
/// their GGUF keys (gguf-py spells the separator `seperator`).
const SPECIAL_TOKENS: [(&str, &str); 5] = [
    ("bos", "tokenizer.ggml.bos_token_id"),
    ("eos", "tokenizer.ggml.eos_token_id"),
    ("unk", "tokenizer.ggml.unknown_token_id"),
    ("sep", "tokenizer.ggml.seperator_token_id"),
    ("pad", "tokenizer.ggml.padding_token_id"),
];

/// The special token ids, as `SpecialVocab` finds them: `{typ}_token` of
/// tokenizer_config.json (a string, or an object with `content`) looked up
/// in tokenizer.json's `added_tokens`; else `{typ}_token_id` of config.json
/// (an integer, or a list whose first is used); else the
/// tokenizer_config.json token looked up in the vocabulary (where gguf-py
/// writes nothing and llama.cpp would fall back to its defaults). An id
/// outside the vocabulary is skipped, as gguf-py skips it.
fn special_token_ids(
    config: &JsonFile,
    tokenizer_config: Option<&JsonFile>,
    tokenizer_json: Option<&JsonFile>,
    tokens: &[String],
) -> Result<Vec<(&'static str, u32)>> {
    let added = tokenizer_json
        .and_then(|t| t.json.get("added_tokens"))
        .and_then(Json::as_array);
    let mut out = Vec::new();
    for (typ, key) in SPECIAL_TOKENS {
        let content =
            tokenizer_config.and_then(|tc| match tc.json.get(format!("{typ}_token").as_str())? {
                Json::String(s) => Some(s.as_str()),
                Json::Object(o) => o.get("content")?.as_str(),
                _ => None,
            });
        let from_added = content.and_then(|c| {
            added?
                .iter()
                .find(|t| t.get("content").and_then(Json::as_str) == Some(c))?
                .get("id")?
                .as_u64()
        });
        let field = format!("{typ}_token_id");
        let from_config = match config.json.get(field.as_str()) {
            Some(Json::Array(list)) => list.first(),
            other => other,
        };
        // Integers only, as gguf-py; a negative one is its error too.
        let from_config = match from_config {
            Some(v) if v.as_i64().is_some_and(|i| i < 0) => {
                return Err(config.err(format_args!("{field} is {v}, not a token id")))
            }
            Some(v) => v.as_u64(),
            None => None,
        };
        let from_vocab = || {
            let c = content?;
            tokens.iter().position(|t| t == c).map(|i| i as u64)
        };
        if let Some(id) = from_added.or(from_config).or_else(from_vocab) {
            if let Some(id) = u32::try_from(id)
                .ok()
                .filter(|&i| (i as usize) < tokens.len())
            {
                out.push((key, id));
            }
        }
    }
    Ok(out)
}

/// The chat template: tokenizer_config.json's `chat_template` (a string, or
/// a list of `{name, template}`, of which the one named `default`, else the
/// first), else `chat_template.jinja`, else `chat_template.json`'s
/// `chat_template`.
fn chat_template(dir: &Path, tokenizer_config: Option<&JsonFile>) -> Result<Option<String>> {
    match tokenizer_config.and_then(|tc| tc.json.get("chat_template")) {
        Some(Json::String(s)) => return Ok(Some(s.clone())),
        Some(Json::Array(list)) => {
            let template = |t: &Json| t.get("template").and_then(Json::as_str).map(str::to_string);
            let default = list
                .iter()
                .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                .and_then(template);
            if let Some(t) = default.or_else(|| list.iter().find_map(template)) {
                return Ok(Some(t));
            }
        }
        _ => {}
    }
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        let text =
            String::from_utf8(read_file(&jinja)?).map_err(|_| file_err(&jinja, "not UTF-8"))?;
        return Ok(Some(text));
    }
    Ok(JsonFile::read_if_present(dir.join("chat_template.json"))?
        .and_then(|f| f.json.get("chat_template")?.as_str().map(str::to_string)))
}

/// Writers of the tokenizer files of a Hugging Face checkpoint from a GGUF
/// vocabulary (the inverse of [`vocab_metadata`]): synthetic checkpoints
/// (`bitnet gen-model --checkpoint`) and the round-trip tests.
pub mod export {
    use super::*;
    use serde_json::json;

    /// Writes into `dir` the tokenizer files a Hugging Face checkpoint with
    /// the vocabulary of `g` has: `tokenizer.model` for a SentencePiece
    /// (`llama`) vocabulary, or `tokenizer.json` for a byte-level BPE
    /// (`gpt2`) one, with the `pre_tokenizer` layout the published
    /// checkpoints of its `tokenizer.ggml.pre` have; and
    /// `tokenizer_config.json` with the BOS / EOS / unknown / padding tokens,
    /// `add_bos_token` / `add_eos_token` and the chat template of `g`.
    /// (config.json is the caller's: `vocab_metadata` takes it parsed.)
    pub fn write_tokenizer_files(g: &Gguf, dir: &Path) -> Result<()> {
        let tokens = match g.get("tokenizer.ggml.tokens").and_then(Value::as_array) {
            Some(Array::String(t)) => t.as_slice(),
            _ => return Err(Error::format("tokenizer.ggml.tokens is missing")),
        };
        let types: Vec<i64> = match g.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
            Some(a) => a
                .as_i64s()
                .ok_or_else(|| Error::format("tokenizer.ggml.token_type is not integers"))?,
            None => vec![token_type::NORMAL as i64; tokens.len()],
        };
        let model = g.get_str("tokenizer.ggml.model").unwrap_or("");
        match model {
            "llama" => {
                let scores = match g.get("tokenizer.ggml.scores").and_then(Value::as_array) {
                    Some(Array::F32(s)) => s.clone(),
                    _ => vec![0.0; tokens.len()],
                };
                let add_dummy_prefix = !matches!(
                    g.get("tokenizer.ggml.add_space_prefix"),
                    Some(Value::Bool(false))
                );
                let pieces: Vec<(&str, f32, i64)> = tokens
                    .iter()
                    .zip(&scores)
                    .zip(&types)
                    .map(|((t, &s), &ty)| (t.as_str(), s, ty))
                    .collect();
                std::fs::write(
                    dir.join("tokenizer.model"),
                    sentencepiece_model(&pieces, add_dummy_prefix),
                )?;
            }
            "gpt2" => {
                let merges = match g.get("tokenizer.ggml.merges").and_then(Value::as_array) {
                    Some(Array::String(m)) => m.as_slice(),
                    _ => return Err(Error::format("tokenizer.ggml.merges is missing")),
                };
                let pre = g.get_str("tokenizer.ggml.pre").unwrap_or("default");
                let tj = tokenizer_json(tokens, &types, merges, pre)?;
                std::fs::write(dir.join("tokenizer.json"), tj.to_string())?;
            }
            m => return Err(Error::unsupported(format!("tokenizer.ggml.model {m:?}"))),
        }
        // The special tokens by their text; SentencePiece checkpoints spell
        // them as objects (`AddedToken`), the BPE ones as strings.
        let mut config = serde_json::Map::new();
        for (typ, key) in SPECIAL_TOKENS {
            let Some(text) = g
                .get(key)
                .and_then(Value::as_u64)
                .and_then(|i| tokens.get(i as usize))
            else {
                continue;
            };
            let entry = if model == "llama" {
                json!({"__type": "AddedToken", "content": text, "lstrip": false,
                       "normalized": false, "rstrip": false, "single_word": false})
            } else {
                json!(text)
            };
            config.insert(format!("{typ}_token"), entry);
        }
        for key in ["add_bos_token", "add_eos_token"] {
            if let Some(&Value::Bool(b)) = g.get(&format!("tokenizer.ggml.{key}")) {
                config.insert(key.into(), json!(b));
            }
        }
        if let Some(t) = g.get_str("tokenizer.chat_template") {
            config.insert("chat_template".into(), json!(t));
        }
        config.insert("model_max_length".into(), json!(4096));
        std::fs::write(
            dir.join("tokenizer_config.json"),
            Json::Object(config).to_string(),
        )?;
        Ok(())
    }

    /// The `pre_tokenizer` of the published tokenizer.json files of the
    /// checkpoints whose vocabularies llama.cpp names `pre`.
    pub(crate) fn pre_tokenizer_layout(pre: &str) -> Option<Json> {
        let byte_level = |use_regex: bool| {
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                   "use_regex": use_regex})
        };
        let punctuation = json!({"type": "Punctuation", "behavior": "Contiguous"});
        let split = |re: &str| {
            json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated",
                   "invert": false})
        };
        Some(match pre {
            "llama-bpe" => json!({"type": "Sequence", "pretokenizers": [
                split(LLAMA3_PATTERN), byte_level(false)]}),
            "falcon3" | "falcon_e" => json!({"type": "Sequence", "pretokenizers": [
                punctuation, byte_level(true),
                {"type": "Digits", "individual_digits": true}]}),
            "falcon" => json!({"type": "Sequence", "pretokenizers": [
                punctuation, byte_level(true),
                {"type": "Digits", "individual_digits": false}, split("[0-9][0-9][0-9]")]}),
            "gpt-2" => byte_level(true),
            _ => return None,
        })
    }

    /// A byte-level BPE tokenizer.json: NORMAL tokens in `model.vocab`,
    /// CONTROL and USER_DEFINED ones in `added_tokens` (`special` true and
    /// false). The merges are written as `"a b"` strings for `llama-bpe` and
    /// `gpt-2`, as `["a", "b"]` pairs (transformers 4.45 on) otherwise.
    pub(crate) fn tokenizer_json(
        tokens: &[String],
        types: &[i64],
        merges: &[String],
        pre: &str,
    ) -> Result<Json> {
        let pre_tokenizer = pre_tokenizer_layout(pre).ok_or_else(|| {
            Error::unsupported(format!("no tokenizer.json layout for pre {pre:?}"))
        })?;
        let mut vocab = serde_json::Map::new();
        let mut added = Vec::new();
        for (i, (t, &ty)) in tokens.iter().zip(types).enumerate() {
            match ty as i32 {
                token_type::NORMAL => {
                    vocab.insert(t.clone(), json!(i));
                }
                token_type::CONTROL | token_type::USER_DEFINED => added.push(json!({
                    "id": i, "content": t, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false,
                    "special": ty as i32 == token_type::CONTROL})),
                _ => {
                    return Err(Error::unsupported(format!(
                        "token {i} {t:?} has type {ty}, which a BPE tokenizer.json cannot hold"
                    )))
                }
            }
        }
        let merges: Vec<Json> = if matches!(pre, "llama-bpe" | "gpt-2") {
            merges.iter().map(|m| json!(m)).collect()
        } else {
            merges
                .iter()
                .map(|m| match m.split_once(' ') {
                    Some((a, b)) => Ok(json!([a, b])),
                    None => Err(Error::format(format!("merge {m:?} has no space"))),
                })
                .collect::<Result<_>>()?
        };
        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                        "use_regex": true},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": false, "byte_fallback": false,
                "ignore_merges": pre == "llama-bpe",
                "vocab": vocab, "merges": merges,
            },
        }))
    }

    fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn put_key(out: &mut Vec<u8>, field: u64, wire: u64) {
        put_varint(out, field << 3 | wire);
    }

    fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
        put_key(out, field, 2);
        put_varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }

    /// A sentencepiece `ModelProto` with these pieces (text, score, type in
    /// sentencepiece's numbering, which GGUF's follows), a `TrainerSpec`
    /// as a real one has (the converter skips it) and a `NormalizerSpec`
    /// with `add_dummy_prefix`.
    pub(crate) fn sentencepiece_model(
        pieces: &[(&str, f32, i64)],
        add_dummy_prefix: bool,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        for &(text, score, ty) in pieces {
            let mut p = Vec::new();
            put_bytes(&mut p, 1, text.as_bytes());
            put_key(&mut p, 2, 5);
            p.extend_from_slice(&score.to_le_bytes());
            if ty != 1 {
                put_key(&mut p, 3, 0);
                put_varint(&mut p, ty as u64);
            }
            put_bytes(&mut out, 1, &p);
        }
        let mut trainer = Vec::new();
        put_bytes(&mut trainer, 1, b"/data/corpus.txt"); // input
        put_key(&mut trainer, 3, 0); // model_type BPE
        put_varint(&mut trainer, 2);
        put_key(&mut trainer, 4, 0); // vocab_size
        put_varint(&mut trainer, pieces.len() as u64);
        put_key(&mut trainer, 10, 5); // character_coverage
        trainer.extend_from_slice(&0.99995f32.to_le_bytes());
        put_key(&mut trainer, 40, 0); // unk_id -1 as a 10-byte varint
        put_varint(&mut trainer, u64::MAX);
        put_bytes(&mut out, 2, &trainer);
        let mut normalizer = Vec::new();
        put_bytes(&mut normalizer, 1, b"identity");
        put_key(&mut normalizer, 3, 0);
        put_varint(&mut normalizer, add_dummy_prefix as u64);
        put_key(&mut normalizer, 4, 0); // remove_extra_whitespaces
        put_varint(&mut normalizer, 0);
        put_bytes(&mut out, 3, &normalizer);
        // A field this reader does not know, of the one wire type the
        // messages above lack.
        put_key(&mut out, 99, 1);
        out.extend_from_slice(&7u64.to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::export::*;
    use super::*;
    use serde_json::json;

    /// A fresh, empty directory under the system temp dir.
    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("bitnet-vocab-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn get<'a>(md: &'a [(String, Value)], key: &str) -> Option<&'a Value> {
        md.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn strings<'a>(md: &'a [(String, Value)], key: &str) -> &'a [String] {
        match get(md, key).and_then(Value::as_array) {
            Some(Array::String(s)) => s,
            other => panic!("{key}: {other:?}"),
        }
    }

    fn err(dir: &Path, vocab_size: usize) -> String {
        match vocab_metadata(dir, &json!({}), vocab_size) {
            Ok(_) => panic!("{} converted", dir.display()),
            Err(e) => e.message,
        }
    }

    /// Converts the tokenizer files written from a fixture's vocabulary
    /// (with `edit` applied to the directory) and checks that every
    /// `tokenizer.*` key of the fixture comes back equal (the pre-tokenizer
    /// as `pre`), that nothing else but `add_space_prefix` is added, and
    /// that the tokenizer built from the result encodes a sample of the
    /// fixture's cases to their ids.
    fn round_trip(gguf: &str, cases: &str, pre: &str, edit: impl Fn(&Path)) -> Option<()> {
        let testdata = crate::testdata_dir()?;
        let g = Gguf::open(testdata.join(gguf)).unwrap();
        let test = std::thread::current()
            .name()
            .unwrap_or(gguf)
            .replace(':', "_");
        let dir = temp_dir(&test);
        write_tokenizer_files(&g, &dir).unwrap();
        edit(&dir);
        let n = match g.get("tokenizer.ggml.tokens").and_then(Value::as_array) {
            Some(a) => a.len(),
            None => panic!("{gguf} has no tokens"),
        };
        let md = vocab_metadata(&dir, &json!({"vocab_size": n}), n).unwrap();
        for (key, want) in g
            .metadata()
            .iter()
            .filter(|(k, _)| k.starts_with("tokenizer."))
        {
            let got = get(&md, key);
            if key == "tokenizer.ggml.pre" {
                assert_eq!(got, Some(&Value::String(pre.into())), "{gguf}: {key}");
            } else {
                assert!(got == Some(want), "{gguf}: {key} differs");
            }
        }
        for (key, value) in &md {
            if g.get(key).is_none() {
                assert_eq!(
                    (key.as_str(), value),
                    ("tokenizer.ggml.add_space_prefix", &Value::Bool(true)),
                    "{gguf}: {key} added"
                );
            }
        }
        let tok = Tokenizer::from_gguf(&Gguf::from_metadata(&md).unwrap()).unwrap();
        let cases = std::fs::read_to_string(testdata.join(cases)).unwrap();
        let lines: Vec<&str> = cases.lines().filter(|l| !l.trim().is_empty()).collect();
        for line in lines.iter().step_by(lines.len().div_ceil(50)) {
            let case: Json = serde_json::from_str(line).unwrap();
            let text = case["text"].as_str().unwrap();
            let want: Vec<u32> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(tok.encode(text, false, false), want, "{gguf}: {text:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
        Some(())
    }

    fn skipped(name: &str) {
        eprintln!("SKIPPED convert::vocab::{name}: ../shared/testdata not found");
    }

    /// Replaces tokenizer.json's `pre_tokenizer`.
    fn set_pre_tokenizer(dir: &Path, pre_tokenizer: Json) {
        let path = dir.join("tokenizer.json");
        let mut tj: Json = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        tj["pre_tokenizer"] = pre_tokenizer;
        std::fs::write(&path, tj.to_string()).unwrap();
    }

    #[test]
    fn llama3_round_trip_is_named_by_its_hash() {
        if round_trip(
            "llama3-vocab.gguf",
            "llama3-tokenizer-cases.jsonl",
            "llama-bpe",
            |_| {},
        )
        .is_none()
        {
            skipped("llama3_round_trip_is_named_by_its_hash");
        }
    }

    #[test]
    fn llama3_with_an_unknown_layout_is_named_by_its_hash() {
        // A layout no rule names (an extra no-op step): the candidates are
        // tried and llama-bpe's hash names it.
        let edit = |dir: &Path| {
            let mut layout = pre_tokenizer_layout("llama-bpe").unwrap();
            layout["pretokenizers"]
                .as_array_mut()
                .unwrap()
                .push(json!({"type": "Sequence", "pretokenizers": []}));
            set_pre_tokenizer(dir, layout);
        };
        if round_trip(
            "llama3-vocab.gguf",
            "llama3-tokenizer-cases.jsonl",
            "llama-bpe",
            edit,
        )
        .is_none()
        {
            skipped("llama3_with_an_unknown_layout_is_named_by_its_hash");
        }
    }

    #[test]
    fn falcon3_round_trip_is_named_by_its_layout() {
        // The fixture holds the old Falcon vocabulary with pre falcon3: no
        // known hash, so the layout names it.
        if round_trip(
            "falcon3-i2s-tiny.gguf",
            "falcon3-tokenizer-cases.jsonl",
            "falcon3",
            |_| {},
        )
        .is_none()
        {
            skipped("falcon3_round_trip_is_named_by_its_layout");
        }
    }

    #[test]
    fn falcon_vocabulary_is_named_falcon_by_its_hash() {
        let Some(testdata) = crate::testdata_dir() else {
            return skipped("falcon_vocabulary_is_named_falcon_by_its_hash");
        };
        // The fixture's vocabulary is tiiuae/falcon-7b's. Under a layout no
        // rule names, the candidates are tried: with the falcon
        // pre-tokenizer its ids have the hash llama.cpp knows as "falcon"
        // (without BOS: falcon-7b's encode adds none).
        let g = Gguf::open(testdata.join("falcon3-i2s-tiny.gguf")).unwrap();
        let dir = temp_dir("falcon-hash");
        write_tokenizer_files(&g, &dir).unwrap();
        let mut tj = JsonFile::read(dir.join("tokenizer.json")).unwrap();
        let vocab = bpe_vocab(&tj, &dir, 65024).unwrap();
        tj.json["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": []});
        assert_eq!(name_pre_tokenizer(&tj, &vocab, None).unwrap(), "falcon");
        // A known layout whose hash is unknown keeps the layout's name.
        tj.json["pre_tokenizer"] = pre_tokenizer_layout("gpt-2").unwrap();
        assert_eq!(name_pre_tokenizer(&tj, &vocab, None).unwrap(), "gpt-2");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sentencepiece_round_trip() {
        if round_trip(
            "bitnet-spm-tiny.gguf",
            "llama-spm-tokenizer-cases.jsonl",
            "default",
            |_| {},
        )
        .is_none()
        {
            skipped("sentencepiece_round_trip");
        }
    }

    #[test]
    fn sha256_matches_known_digests() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let long: Vec<u8> = (0..5).flat_map(|_| 0..=255u8).collect();
        assert_eq!(
            sha256_hex(&long),
            "d414b085826eb06778483ba35564dc849e643359f69ed9747878ba6e54985bed"
        );
        assert_eq!(python_list(&[128000, 198, 4815]), "[128000, 198, 4815]");
        assert_eq!(python_list(&[]), "[]");
    }

    /// GPT-2's printable character of each byte.
    fn byte_chars() -> Vec<char> {
        let mut n = 0;
        (0..=255u32)
            .map(|b| {
                if (33..=126).contains(&b)
                    || (0xA1..=0xAC).contains(&b)
                    || (0xAE..=0xFF).contains(&b)
                {
                    char::from_u32(b).unwrap()
                } else {
                    n += 1;
                    char::from_u32(255 + n).unwrap()
                }
            })
            .collect()
    }

    /// A tiny byte-level BPE checkpoint: the 256 byte tokens, "Ġt", "he",
    /// "<|endoftext|>" (special) at 258 and "<tool>" (not special) at 259.
    fn tiny_bpe(dir: &Path, pre_tokenizer: Json) -> Json {
        let mut vocab = serde_json::Map::new();
        for (i, c) in byte_chars().into_iter().enumerate() {
            vocab.insert(c.to_string(), json!(i));
        }
        vocab.insert("Ġt".into(), json!(256));
        vocab.insert("he".into(), json!(257));
        let tj = json!({
            "added_tokens": [
                {"id": 258, "content": "<|endoftext|>", "special": true},
                {"id": 259, "content": "<tool>", "special": false},
            ],
            "pre_tokenizer": pre_tokenizer,
            "model": {"type": "BPE", "byte_fallback": false, "vocab": vocab,
                      "merges": [["Ġ", "t"], ["h", "e"]]},
        });
        std::fs::write(dir.join("tokenizer.json"), tj.to_string()).unwrap();
        tj
    }

    #[test]
    fn bpe_vocabulary_padding_merges_and_special_tokens() {
        let dir = temp_dir("tiny-bpe");
        tiny_bpe(&dir, pre_tokenizer_layout("gpt-2").unwrap());
        std::fs::write(
            dir.join("tokenizer_config.json"),
            json!({
                "bos_token": {"content": "<|endoftext|>", "lstrip": false},
                "eos_token": "<|endoftext|>",
                "pad_token": "<tool>",
                "add_bos_token": false,
                "chat_template": [
                    {"name": "tool_use", "template": "T"},
                    {"name": "default", "template": "D"},
                ],
            })
            .to_string(),
        )
        .unwrap();
        // config.json's ids come second: unk from a list, eos ignored, a
        // float ignored.
        let config = json!({"vocab_size": 262, "unk_token_id": [3, 4], "eos_token_id": 5,
                            "sep_token_id": 1.5});
        let md = vocab_metadata(&dir, &config, 262).unwrap();
        let tokens = strings(&md, "tokenizer.ggml.tokens");
        assert_eq!(tokens.len(), 262);
        assert_eq!(
            &tokens[256..],
            [
                "Ġt",
                "he",
                "<|endoftext|>",
                "<tool>",
                "[PAD260]",
                "[PAD261]"
            ]
        );
        assert_eq!(
            get(&md, "tokenizer.ggml.token_type"),
            Some(&Value::Array(Array::I32(
                [vec![1; 258], vec![3, 4, 4, 4]].concat()
            )))
        );
        assert_eq!(strings(&md, "tokenizer.ggml.merges"), ["Ġ t", "h e"]);
        assert_eq!(
            get(&md, "tokenizer.ggml.model"),
            Some(&Value::String("gpt2".into()))
        );
        assert_eq!(
            get(&md, "tokenizer.ggml.pre"),
            Some(&Value::String("gpt-2".into()))
        );
        assert_eq!(
            get(&md, "tokenizer.ggml.bos_token_id"),
            Some(&Value::U32(258))
        );
        assert_eq!(
            get(&md, "tokenizer.ggml.eos_token_id"),
            Some(&Value::U32(258))
        );
        assert_eq!(
            get(&md, "tokenizer.ggml.unknown_token_id"),
            Some(&Value::U32(3))
        );
        assert_eq!(
            get(&md, "tokenizer.ggml.padding_token_id"),
            Some(&Value::U32(259))
        );
        assert_eq!(get(&md, "tokenizer.ggml.seperator_token_id"), None);
        assert_eq!(
            get(&md, "tokenizer.ggml.add_bos_token"),
            Some(&Value::Bool(false))
        );
        assert_eq!(get(&md, "tokenizer.ggml.add_eos_token"), None);
        assert_eq!(
            get(&md, "tokenizer.chat_template"),
            Some(&Value::String("D".into()))
        );
        assert!(md.iter().all(|(k, _)| k.starts_with("tokenizer.")));
        // The result is a working tokenizer.
        let tok = Tokenizer::from_gguf(&Gguf::from_metadata(&md).unwrap()).unwrap();
        assert_eq!(tok.encode("a the<tool>", false, false), [97, 256, 257, 259]);

        // Without a template in tokenizer_config.json, chat_template.jinja.
        std::fs::write(dir.join("tokenizer_config.json"), "{}").unwrap();
        std::fs::write(dir.join("chat_template.jinja"), "{{ messages }}").unwrap();
        let md = vocab_metadata(&dir, &json!({}), 260).unwrap();
        assert_eq!(
            get(&md, "tokenizer.chat_template"),
            Some(&Value::String("{{ messages }}".into()))
        );
        assert_eq!(get(&md, "tokenizer.ggml.bos_token_id"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bpe_errors_name_the_file() {
        let dir = temp_dir("bpe-errors");
        let e = err(&dir, 10);
        assert!(
            e.contains(&*dir.to_string_lossy()) && e.contains("tokenizer.json"),
            "{e}"
        );

        std::fs::write(dir.join("tokenizer.json"), "{\"model\": ").unwrap();
        let e = err(&dir, 300);
        assert!(e.contains("tokenizer.json") && e.contains("JSON"), "{e}");

        tiny_bpe(&dir, json!({"type": "Whitespace"}));
        let e = err(&dir, 300);
        assert!(
            e.contains("tokenizer.json") && e.contains("pre_tokenizer") && e.contains("Whitespace"),
            "{e}"
        );

        tiny_bpe(&dir, pre_tokenizer_layout("gpt-2").unwrap());
        let e = err(&dir, 259);
        assert!(
            e.contains("tokenizer.json") && e.contains("<tool>") && e.contains("259"),
            "{e}"
        );
        let e = err(&dir, 100);
        assert!(
            e.contains("tokenizer.json") && e.contains("model.vocab token"),
            "{e}"
        );

        std::fs::write(dir.join("tokenizer_config.json"), "not json").unwrap();
        let e = err(&dir, 300);
        assert!(e.contains("tokenizer_config.json"), "{e}");
        std::fs::remove_file(dir.join("tokenizer_config.json")).unwrap();

        let e = err(&dir, usize::MAX);
        assert!(e.contains("config.json") && e.contains("vocab_size"), "{e}");

        let e = vocab_metadata(&dir, &json!({"bos_token_id": -1}), 300)
            .unwrap_err()
            .message;
        assert!(
            e.contains("config.json") && e.contains("bos_token_id"),
            "{e}"
        );

        let mut tj = tiny_bpe(&dir, pre_tokenizer_layout("gpt-2").unwrap());
        tj["model"]["merges"] = json!([["a", "b", "c"]]);
        std::fs::write(dir.join("tokenizer.json"), tj.to_string()).unwrap();
        let e = err(&dir, 300);
        assert!(
            e.contains("tokenizer.json") && e.contains("merges[0]"),
            "{e}"
        );

        // no merges at all: an error; an empty list: a merge-free vocabulary
        tj["model"].as_object_mut().unwrap().remove("merges");
        std::fs::write(dir.join("tokenizer.json"), tj.to_string()).unwrap();
        let e = err(&dir, 300);
        assert!(
            e.contains("tokenizer.json") && e.contains("merges.txt"),
            "{e}"
        );
        tj["model"]["merges"] = json!([]);
        std::fs::write(dir.join("tokenizer.json"), tj.to_string()).unwrap();
        let md = vocab_metadata(&dir, &json!({}), 300).unwrap();
        assert!(strings(&md, "tokenizer.ggml.merges").is_empty());
        std::fs::write(
            dir.join("merges.txt"),
            "#version: 0.2\nĠ t\nbad line here\nh e\n",
        )
        .unwrap();
        let md = vocab_metadata(&dir, &json!({}), 300).unwrap();
        assert_eq!(strings(&md, "tokenizer.ggml.merges"), ["Ġ t", "h e"]);

        tj["model"]["byte_fallback"] = json!(true);
        std::fs::write(dir.join("tokenizer.json"), tj.to_string()).unwrap();
        let e = err(&dir, 300);
        assert!(
            e.contains("tokenizer.json") && e.contains("tokenizer.model"),
            "{e}"
        );

        tj["model"]["type"] = json!("Unigram");
        std::fs::write(dir.join("tokenizer.json"), tj.to_string()).unwrap();
        let e = err(&dir, 300);
        assert!(e.contains("tokenizer.json") && e.contains("Unigram"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tiny_spm_pieces() -> Vec<(&'static str, f32, i64)> {
        let mut pieces = vec![("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)];
        pieces.extend([
            ("▁", -1.0, 1),
            ("a", -2.0, 1),
            ("b", -3.0, 1),
            ("▁a", -1.5, 1),
        ]);
        pieces.extend([("<tool>", 0.0, 4), ("<junk>", 0.0, 5), ("<0x41>", 0.0, 6)]);
        pieces
    }

    #[test]
    fn sentencepiece_added_tokens_padding_and_types() {
        let dir = temp_dir("tiny-spm");
        std::fs::write(
            dir.join("tokenizer.model"),
            sentencepiece_model(&tiny_spm_pieces(), false),
        )
        .unwrap();
        // In file order, those already present skipped.
        std::fs::write(
            dir.join("added_tokens.json"),
            r#"{"<z>": 11, "<s>": 1, "<a>": 10, "<z>": 12}"#,
        )
        .unwrap();
        let config = json!({"bos_token_id": 1, "eos_token_id": [2, 1]});
        let md = vocab_metadata(&dir, &config, 15).unwrap();
        assert_eq!(
            strings(&md, "tokenizer.ggml.tokens"),
            [
                "<unk>", "<s>", "</s>", "▁", "a", "b", "▁a", "<tool>", "<junk>", "<0x41>", "<z>",
                "<a>", "[PAD1]", "[PAD2]", "[PAD3]"
            ]
        );
        assert_eq!(
            get(&md, "tokenizer.ggml.scores"),
            Some(&Value::Array(Array::F32(vec![
                0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -1.5, 0.0, 0.0, 0.0, -1000.0, -1000.0, -1000.0,
                -1000.0, -1000.0
            ])))
        );
        // User-defined pieces become NORMAL, as the converter writes them.
        assert_eq!(
            get(&md, "tokenizer.ggml.token_type"),
            Some(&Value::Array(Array::I32(vec![
                2, 3, 3, 1, 1, 1, 1, 1, 5, 6, 4, 4, 5, 5, 5
            ])))
        );
        assert_eq!(
            get(&md, "tokenizer.ggml.model"),
            Some(&Value::String("llama".into()))
        );
        assert_eq!(
            get(&md, "tokenizer.ggml.pre"),
            Some(&Value::String("default".into()))
        );
        assert_eq!(
            get(&md, "tokenizer.ggml.add_space_prefix"),
            Some(&Value::Bool(false))
        );
        assert_eq!(
            get(&md, "tokenizer.ggml.bos_token_id"),
            Some(&Value::U32(1))
        );
        assert_eq!(
            get(&md, "tokenizer.ggml.eos_token_id"),
            Some(&Value::U32(2))
        );
        assert_eq!(get(&md, "tokenizer.ggml.merges"), None);
        let tok = Tokenizer::from_gguf(&Gguf::from_metadata(&md).unwrap()).unwrap();
        assert_eq!(tok.encode("a a", false, false), [4, 6]);

        let e = err(&dir, 11);
        assert!(
            e.contains("tokenizer.model") && e.contains("vocab_size 11"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn protobuf_damage_is_an_error_naming_the_file() {
        let dir = temp_dir("spm-errors");
        let good = sentencepiece_model(&tiny_spm_pieces(), true);
        let path = dir.join("tokenizer.model");
        let convert = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            vocab_metadata(&dir, &json!({}), 20)
        };
        assert!(convert(&good).is_ok());
        // Every truncation: an error or (cut between two fields) a shorter
        // model, never a panic; one inside the first piece is an error.
        for len in 0..good.len() {
            let _ = convert(&good[..len]);
        }
        let e = convert(&good[..5]).unwrap_err().message;
        assert!(
            e.contains("tokenizer.model") && e.contains("runs past the end"),
            "{e}"
        );
        // Every single byte changed, never a panic.
        for at in 0..good.len() {
            for b in [0x00, 0x02, 0x7f, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[at] = b;
                let _ = convert(&bad);
            }
        }
        let cases: [(&[u8], &str); 7] = [
            (&[], "no pieces"),
            (&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f], "runs past the end"),
            (&[0x0b], "group"),
            (&[0x0e], "wire type 6"),
            (
                &[
                    0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
                ],
                "overflows",
            ),
            (&[0x0a, 0x02, 0x18, 0x01], "no text"),
            (&[0x0a, 0x05, 0x0a, 0x01, b'a', 0x18, 0x09], "type 9"),
        ];
        for (bytes, want) in cases {
            let e = convert(bytes).unwrap_err().message;
            assert!(e.contains("tokenizer.model") && e.contains(want), "{e}");
        }
        // A piece that is a varint, a score that is a varint.
        assert!(convert(&[0x08, 0x01]).is_err());
        assert!(convert(&[0x0a, 0x05, 0x0a, 0x01, b'a', 0x10, 0x01]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
