//! The OpenAI request bodies `bitnet serve` reads, and their checks, and
//! the response bodies it writes. Fields it does not know are ignored
//! (clients send many); a known field of the wrong type or out of range is
//! a 400 with OpenAI's error body.

use serde::{Deserialize, Serialize};

use super::engine::FinishReason;
use super::logprobs::TokenLogprob;
use crate::json_schema::Schema;

/// Either one string or a list of them (`stop`, `prompt`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// A message's content: a string, or a list of parts of which only text
/// parts are supported.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

/// The sampling and length fields both endpoints share.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Common {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub top_k: Option<i64>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub stop: Option<OneOrMany>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    pub n: Option<i64>,
    /// llama-server's: start from a prefix already in a slot's cache
    /// (default true).
    #[serde(default)]
    pub cache_prompt: Option<bool>,
    /// OpenAI's `{"type": "text" | "json_object" | "json_schema",
    /// "json_schema": {"schema": ...}}`; llama-server's `json_object`
    /// with a `schema` too.
    #[serde(default)]
    pub response_format: Option<serde_json::Value>,
    /// llama-server's schema field.
    #[serde(default)]
    pub json_schema: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    /// Each generated token's log-probability.
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// With `logprobs`, the most likely tokens at each position (0..=20).
    #[serde(default)]
    pub top_logprobs: Option<i64>,
    #[serde(flatten)]
    pub common: Common,
}

/// A completion request's prompt as OpenAI takes it: a string, a list of
/// token ids, or a list of either (one choice each).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
    TokenLists(Vec<Vec<u32>>),
}

/// One prompt: text (tokenized with BOS where the model adds one) or
/// token ids (fed as they are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

impl PromptInput {
    pub fn into_prompts(self) -> Vec<Prompt> {
        match self {
            PromptInput::Text(t) => vec![Prompt::Text(t)],
            PromptInput::Tokens(t) => vec![Prompt::Tokens(t)],
            PromptInput::Texts(v) => v.into_iter().map(Prompt::Text).collect(),
            PromptInput::TokenLists(v) => v.into_iter().map(Prompt::Tokens).collect(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub prompt: PromptInput,
    /// The prompt's text in front of the completion (with `logprobs`, its
    /// tokens' log-probabilities too, the first null).
    #[serde(default)]
    pub echo: Option<bool>,
    /// Each token's log-probability and the N most likely (0..=20).
    #[serde(default)]
    pub logprobs: Option<i64>,
    #[serde(flatten)]
    pub common: Common,
}

/// Most alternatives `top_logprobs` / `logprobs` may ask for.
pub const MAX_TOP_LOGPROBS: i64 = 20;

impl ChatRequest {
    /// How many alternatives each token's log-probability comes with, or
    /// None when they are not asked for.
    pub fn logprobs(&self) -> Result<Option<usize>, Invalid> {
        let top = match self.top_logprobs {
            None => 0,
            Some(n) if (0..=MAX_TOP_LOGPROBS).contains(&n) => n as usize,
            Some(n) => {
                return Err((
                    format!("top_logprobs = {n} is outside 0..={MAX_TOP_LOGPROBS}"),
                    Some("top_logprobs"),
                ))
            }
        };
        match (self.logprobs.unwrap_or(false), self.top_logprobs) {
            (true, _) => Ok(Some(top)),
            (false, Some(_)) => Err((
                "top_logprobs needs logprobs: true".into(),
                Some("top_logprobs"),
            )),
            (false, None) => Ok(None),
        }
    }
}

impl CompletionRequest {
    /// `logprobs` checked: None, or how many alternatives.
    pub fn logprobs(&self) -> Result<Option<usize>, Invalid> {
        match self.logprobs {
            None => Ok(None),
            Some(n) if (0..=MAX_TOP_LOGPROBS).contains(&n) => Ok(Some(n as usize)),
            Some(n) => Err((
                format!("logprobs = {n} is outside 0..={MAX_TOP_LOGPROBS}"),
                Some("logprobs"),
            )),
        }
    }
}

/// A checked request's generation settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub seed: u64,
    pub stop: Vec<String>,
    pub stream: bool,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub cache_prompt: bool,
    /// The JSON the text must be (`response_format`).
    pub schema: Option<std::sync::Arc<Schema>>,
}

/// A 400's message and the offending parameter.
pub type Invalid = (String, Option<&'static str>);

impl Common {
    /// Checks ranges as OpenAI documents them.
    pub fn settings(&self) -> Result<Settings, Invalid> {
        let bad = |m: String, p: &'static str| Err((m, Some(p)));
        if let Some(n) = self.n {
            if n != 1 {
                return bad(
                    format!("n = {n}: only one choice per request is supported"),
                    "n",
                );
            }
        }
        let max = self.max_completion_tokens.or(self.max_tokens);
        let max_tokens = match max {
            None => None,
            // (0 only with `echo`: the caller checks)
            Some(m) if m >= 0 => Some(m as usize),
            Some(m) => return bad(format!("max_tokens = {m} is negative"), "max_tokens"),
        };
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return bad(
                format!("temperature = {temperature} is outside 0..2"),
                "temperature",
            );
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return bad(format!("top_p = {top_p} is outside (0, 1]"), "top_p");
        }
        let top_k = match self.top_k {
            None => 0,
            Some(k) if k >= 0 => k as usize,
            Some(k) => return bad(format!("top_k = {k} is negative"), "top_k"),
        };
        let pen = |v: Option<f32>, name: &'static str| match v.unwrap_or(0.0) {
            p if (-2.0..=2.0).contains(&p) => Ok(p),
            p => Err((format!("{name} = {p} is outside -2..2"), Some(name))),
        };
        let stop = self
            .stop
            .clone()
            .map(OneOrMany::into_vec)
            .unwrap_or_default();
        if stop.len() > 4 {
            return bad(
                format!("{} stop strings; at most 4 are allowed", stop.len()),
                "stop",
            );
        }
        Ok(Settings {
            max_tokens,
            temperature,
            top_p,
            top_k,
            seed: self.seed.map_or(0, |s| s as u64),
            stop,
            stream: self.stream.unwrap_or(false),
            presence_penalty: pen(self.presence_penalty, "presence_penalty")?,
            frequency_penalty: pen(self.frequency_penalty, "frequency_penalty")?,
            cache_prompt: self.cache_prompt.unwrap_or(true),
            schema: self.schema()?,
        })
    }

    /// The schema of `response_format` (or of llama-server's
    /// `json_schema`), compiled.
    fn schema(&self) -> Result<Option<std::sync::Arc<Schema>>, Invalid> {
        let p = Some("response_format");
        let bad = |m: String| Err((m, p));
        let compile = |v: &serde_json::Value| {
            Schema::compile(v)
                .map(|s| Some(std::sync::Arc::new(s)))
                .map_err(|e| (format!("response_format: {}", e.message), p))
        };
        if let Some(s) = &self.json_schema {
            return compile(s);
        }
        let Some(rf) = &self.response_format else {
            return Ok(None);
        };
        match rf.get("type").and_then(|t| t.as_str()) {
            Some("text") => Ok(None),
            Some("json_object") => match rf.get("schema") {
                Some(s) => compile(s),
                None => Ok(Some(std::sync::Arc::new(Schema::any_object()))),
            },
            Some("json_schema") => match rf.get("json_schema").and_then(|j| j.get("schema")) {
                Some(s) => compile(s),
                None => bad("response_format json_schema needs json_schema.schema".into()),
            },
            Some(t) => bad(format!(
                "response_format type '{t}' is not one of text, json_object, json_schema"
            )),
            None => bad("response_format needs a type".into()),
        }
    }
}

impl ChatMessage {
    /// The message's text (text parts joined).
    pub fn text(&self) -> Result<String, Invalid> {
        match &self.content {
            None => Ok(String::new()),
            Some(Content::Text(t)) => Ok(t.clone()),
            Some(Content::Parts(parts)) => {
                let mut s = String::new();
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => s.push_str(t),
                        (k, _) => {
                            return Err((
                                format!(
                                    "message content of type '{k}' is not supported (only text)"
                                ),
                                Some("messages"),
                            ))
                        }
                    }
                }
                Ok(s)
            }
        }
    }
}

// The response bodies. Their fields are declared in alphabetical order,
// the order in which serde_json writes a map's keys: the bodies were first
// built as `json!` maps, and the bytes on the wire stay the same.

/// OpenAI's error body.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Debug, Serialize)]
pub struct ErrorDetail<'a> {
    /// Always null.
    pub code: (),
    pub message: String,
    /// The request field at fault.
    pub param: Option<&'a str>,
    /// `invalid_request_error`, `authentication_error`, `server_error`...
    #[serde(rename = "type")]
    pub kind: &'static str,
}

impl<'a> ErrorBody<'a> {
    pub fn new(kind: &'static str, message: String, param: Option<&'a str>) -> ErrorBody<'a> {
        ErrorBody {
            error: ErrorDetail {
                code: (),
                message,
                param,
                kind,
            },
        }
    }
}

/// `GET /health`.
#[derive(Debug, Serialize)]
pub struct Health {
    pub slots_idle: usize,
    pub slots_processing: usize,
    pub status: &'static str,
}

impl Health {
    pub fn ok(slots_idle: usize, slots_processing: usize) -> Health {
        Health {
            slots_idle,
            slots_processing,
            status: "ok",
        }
    }

    /// Every slot busy (asked with `fail_on_no_slot`).
    pub fn no_slot(slots_processing: usize) -> Health {
        Health {
            slots_idle: 0,
            slots_processing,
            status: "no slot available",
        }
    }
}

/// `GET /v1/models`.
#[derive(Debug, Serialize)]
pub struct ModelList<'a> {
    pub data: Vec<ModelCard<'a>>,
    pub object: &'static str,
}

#[derive(Debug, Serialize)]
pub struct ModelCard<'a> {
    pub created: u64,
    pub id: &'a str,
    pub object: &'static str,
    pub owned_by: &'static str,
}

impl<'a> ModelList<'a> {
    /// The list of the one model the server serves.
    pub fn one(id: &'a str, created: u64) -> ModelList<'a> {
        ModelList {
            data: vec![ModelCard {
                created,
                id,
                object: "model",
                owned_by: "bitnet-stfma",
            }],
            object: "list",
        }
    }
}

/// A request's token counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub completion_tokens: usize,
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Usage {
        Usage {
            completion_tokens,
            prompt_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/v1/chat/completions`
    Chat,
    /// `/v1/completions`
    Completion,
}

/// A completion, whole or one streamed chunk of it.
#[derive(Debug, Serialize)]
pub struct Completion<'a> {
    /// One choice per prompt in a whole completion; the one a streamed
    /// chunk is about.
    pub choices: Vec<Choice<'a>>,
    pub created: u64,
    pub id: &'a str,
    pub model: &'a str,
    pub object: &'static str,
    /// In a whole completion and in a stream's last chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// A completion's choice. `logprobs` is null unless asked for;
/// `finish_reason` is null in a stream's chunks but a choice's last.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Choice<'a> {
    /// A whole chat completion's.
    Message {
        finish_reason: FinishReason,
        index: u32,
        logprobs: Option<Logprobs>,
        message: AssistantMessage<'a>,
    },
    /// A streamed chat completion's.
    Delta {
        delta: ChatDelta<'a>,
        finish_reason: Option<FinishReason>,
        index: u32,
        logprobs: Option<Logprobs>,
    },
    /// A text completion's, whole or streamed.
    Text {
        finish_reason: Option<FinishReason>,
        index: u32,
        logprobs: Option<Logprobs>,
        text: &'a str,
    },
}

#[derive(Debug, Serialize)]
pub struct AssistantMessage<'a> {
    pub content: &'a str,
    pub role: &'static str,
}

/// What a chat chunk adds: the role in the first, text in those with text.
#[derive(Debug, Serialize)]
pub struct ChatDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
}

/// A choice's log-probabilities in the form of its endpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Logprobs {
    /// Chat: one entry per token.
    Chat {
        content: Vec<ChatLogprob>,
        refusal: (),
    },
    /// Completions: parallel lists (the first prompt token's entries null
    /// with `echo`).
    Text {
        text_offset: Vec<usize>,
        token_logprobs: Vec<Option<f32>>,
        tokens: Vec<String>,
        top_logprobs: Vec<Option<TopMap>>,
    },
}

/// A chat token's log-probability and the most likely tokens there.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatLogprob {
    pub bytes: Vec<u8>,
    pub logprob: f32,
    pub token: String,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopLogprob {
    pub bytes: Vec<u8>,
    pub logprob: f32,
    pub token: String,
}

/// A completions position's most likely tokens: a JSON object from token
/// text to log-probability, most likely first (a text that two tokens
/// share keeps the likelier).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopMap(pub Vec<(String, f32)>);

impl Serialize for TopMap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        for (i, (k, v)) in self.0.iter().enumerate() {
            if !self.0[..i].iter().any(|(j, _)| j == k) {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

impl Logprobs {
    /// Chat entries of `tokens` (id, log-probability, alternatives); `text`
    /// gives a token's bytes.
    pub fn chat<'t>(
        tokens: impl IntoIterator<Item = &'t TokenLogprob>,
        text: impl Fn(u32) -> Vec<u8>,
    ) -> Logprobs {
        let top = |id: u32, logprob: f32| {
            let bytes = text(id);
            TopLogprob {
                token: String::from_utf8_lossy(&bytes).into_owned(),
                bytes,
                logprob,
            }
        };
        let content = tokens
            .into_iter()
            .map(|t| {
                let TopLogprob {
                    bytes,
                    logprob,
                    token,
                } = top(t.token, t.logprob);
                ChatLogprob {
                    bytes,
                    logprob,
                    token,
                    top_logprobs: t.top.iter().map(|&(id, lp)| top(id, lp)).collect(),
                }
            })
            .collect();
        Logprobs::Chat {
            content,
            refusal: (),
        }
    }

    /// Completions lists of `tokens`: (token id, its entry or None for a
    /// prompt's first, its offset in characters); `text` gives a token's
    /// bytes.
    pub fn text<'t>(
        tokens: impl IntoIterator<Item = (u32, Option<&'t TokenLogprob>, usize)>,
        text: impl Fn(u32) -> Vec<u8>,
    ) -> Logprobs {
        let s = |id: u32| String::from_utf8_lossy(&text(id)).into_owned();
        let (mut offsets, mut logprobs, mut strings, mut tops) = (vec![], vec![], vec![], vec![]);
        for (id, entry, at) in tokens {
            offsets.push(at);
            strings.push(s(id));
            logprobs.push(entry.map(|e| e.logprob));
            tops.push(entry.map(|e| TopMap(e.top.iter().map(|&(t, lp)| (s(t), lp)).collect())));
        }
        Logprobs::Text {
            text_offset: offsets,
            token_logprobs: logprobs,
            tokens: strings,
            top_logprobs: tops,
        }
    }
}

/// What every response object of one request carries.
#[derive(Debug, Clone)]
pub struct Reply {
    pub id: String,
    pub kind: Kind,
    pub created: u64,
    pub model: String,
}

/// A whole completion's choice, owned.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub text: String,
    pub logprobs: Option<Logprobs>,
}

/// One streamed chunk's part.
#[derive(Debug, Default)]
pub struct ChunkPart<'a> {
    /// The choice (the prompt's index).
    pub index: u32,
    pub text: Option<&'a str>,
    /// The choice's first chunk (a chat's carries the role).
    pub first: bool,
    pub logprobs: Option<Logprobs>,
    /// A choice's last chunk: its finish reason.
    pub finish: Option<FinishReason>,
    /// The request's last chunk: the usage of all its choices.
    pub usage: Option<Usage>,
}

impl Reply {
    /// The reply to request `n` (ids `chatcmpl-N` or `cmpl-N`).
    pub fn new(kind: Kind, n: u64, created: u64, model: String) -> Reply {
        let id = match kind {
            Kind::Chat => format!("chatcmpl-{n}"),
            Kind::Completion => format!("cmpl-{n}"),
        };
        Reply {
            id,
            kind,
            created,
            model,
        }
    }

    fn completion<'a>(
        &'a self,
        object: &'static str,
        choices: Vec<Choice<'a>>,
        usage: Option<Usage>,
    ) -> Completion<'a> {
        Completion {
            choices,
            created: self.created,
            id: &self.id,
            model: &self.model,
            object,
            usage,
        }
    }

    /// The whole answer: a choice per (answer, finish reason).
    pub fn whole<'a>(
        &'a self,
        answers: &'a [(Answer, FinishReason)],
        usage: Usage,
    ) -> Completion<'a> {
        let choices = answers.iter().enumerate().map(|(i, (a, finish))| {
            let (index, logprobs) = (i as u32, a.logprobs.clone());
            match self.kind {
                Kind::Chat => Choice::Message {
                    finish_reason: *finish,
                    index,
                    logprobs,
                    message: AssistantMessage {
                        content: &a.text,
                        role: "assistant",
                    },
                },
                Kind::Completion => Choice::Text {
                    finish_reason: Some(*finish),
                    index,
                    logprobs,
                    text: &a.text,
                },
            }
        });
        let object = match self.kind {
            Kind::Chat => "chat.completion",
            Kind::Completion => "text_completion",
        };
        self.completion(object, choices.collect(), Some(usage))
    }

    /// One streamed chunk.
    pub fn chunk<'a>(&'a self, part: ChunkPart<'a>) -> Completion<'a> {
        let ChunkPart {
            index,
            text,
            first,
            logprobs,
            finish: finish_reason,
            usage,
        } = part;
        match self.kind {
            Kind::Chat => self.completion(
                "chat.completion.chunk",
                vec![Choice::Delta {
                    delta: ChatDelta {
                        content: text,
                        role: first.then_some("assistant"),
                    },
                    finish_reason,
                    index,
                    logprobs,
                }],
                usage,
            ),
            Kind::Completion => self.completion(
                "text_completion",
                vec![Choice::Text {
                    finish_reason,
                    index,
                    logprobs,
                    text: text.unwrap_or(""),
                }],
                usage,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    /// The same bytes as the `json!` body.
    fn same(typed: impl Serialize, want: Value) {
        assert_eq!(serde_json::to_string(&typed).unwrap(), want.to_string());
    }

    /// The stream chunk as the server built it with `json!`.
    fn chunk_json(r: &Reply, text: Option<&str>, first: bool, end: Option<(&str, Value)>) -> Value {
        let finish = end.as_ref().map(|e| e.0);
        let choice = match r.kind {
            Kind::Chat => {
                let mut delta = serde_json::Map::new();
                if first {
                    delta.insert("role".into(), "assistant".into());
                }
                if let Some(t) = text {
                    delta.insert("content".into(), t.into());
                }
                json!({"index": 0, "delta": delta, "logprobs": Value::Null, "finish_reason": finish})
            }
            Kind::Completion => {
                json!({"index": 0, "text": text.unwrap_or(""), "logprobs": Value::Null, "finish_reason": finish})
            }
        };
        let object = match r.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Completion => "text_completion",
        };
        let mut v = json!({"id": r.id, "object": object, "created": r.created, "model": r.model, "choices": [choice]});
        if let Some((_, usage)) = end {
            v["usage"] = usage;
        }
        v
    }

    #[test]
    fn error_health_and_model_bodies() {
        same(
            ErrorBody::new(
                "invalid_request_error",
                "too \"long\"\n".into(),
                Some("max_tokens"),
            ),
            json!({"error": {"message": "too \"long\"\n", "type": "invalid_request_error", "param": "max_tokens", "code": Value::Null}}),
        );
        same(
            ErrorBody::new("server_error", "the server stopped".into(), None),
            json!({"error": {"message": "the server stopped", "type": "server_error", "param": Value::Null, "code": Value::Null}}),
        );
        same(
            Health::ok(3, 1),
            json!({"slots_idle": 3, "slots_processing": 1, "status": "ok"}),
        );
        same(
            ModelList::one("bitnet", 1_700_000_000),
            json!({
                "object": "list",
                "data": [{"id": "bitnet", "object": "model", "created": 1_700_000_000u64, "owned_by": "bitnet-stfma"}]
            }),
        );
        same(
            Usage::new(6, 12),
            json!({"prompt_tokens": 6, "completion_tokens": 12, "total_tokens": 18}),
        );
    }

    #[test]
    fn whole_completions() {
        let usage = json!({"prompt_tokens": 6, "completion_tokens": 3, "total_tokens": 9});
        let chat = Reply::new(Kind::Chat, 7, 1_700_000_000, "bitnet".into());
        assert_eq!(chat.id, "chatcmpl-7");
        let answer = |text: &str| Answer {
            text: text.into(),
            logprobs: None,
        };
        let paris = [(answer("Paris é\n"), FinishReason::Length)];
        same(
            chat.whole(&paris, Usage::new(6, 3)),
            json!({
                "id": "chatcmpl-7", "object": "chat.completion", "created": 1_700_000_000u64, "model": "bitnet",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris é\n"}, "logprobs": Value::Null, "finish_reason": "length"}],
                "usage": usage,
            }),
        );
        let text = Reply::new(Kind::Completion, 8, 1_700_000_000, "m".into());
        assert_eq!(text.id, "cmpl-8");
        let empty = [(answer(""), FinishReason::Stop)];
        same(
            text.whole(&empty, Usage::new(6, 3)),
            json!({
                "id": "cmpl-8", "object": "text_completion", "created": 1_700_000_000u64, "model": "m",
                "choices": [{"index": 0, "text": "", "logprobs": Value::Null, "finish_reason": "stop"}],
                "usage": usage,
            }),
        );
    }

    #[test]
    fn stream_chunks() {
        let usage = json!({"prompt_tokens": 6, "completion_tokens": 3, "total_tokens": 9});
        for kind in [Kind::Chat, Kind::Completion] {
            let r = Reply::new(kind, 3, 1_700_000_000, "bitnet".into());
            for first in [true, false] {
                for text in [Some("Hi \"there\""), None] {
                    same(
                        r.chunk(ChunkPart {
                            text,
                            first,
                            ..Default::default()
                        }),
                        chunk_json(&r, text, first, None),
                    );
                }
                for (finish, s) in [
                    (FinishReason::Stop, "stop"),
                    (FinishReason::Length, "length"),
                    (FinishReason::Cancelled, "cancelled"),
                ] {
                    same(
                        r.chunk(ChunkPart {
                            first,
                            finish: Some(finish),
                            usage: Some(Usage::new(6, 3)),
                            ..Default::default()
                        }),
                        chunk_json(&r, None, first, Some((s, usage.clone()))),
                    );
                }
            }
        }
        // The shape, spelled out: a chat's first chunk has the role, no
        // finish reason (null) and no usage.
        let r = Reply::new(Kind::Chat, 1, 2, "m".into());
        let v = serde_json::to_value(r.chunk(ChunkPart {
            text: Some("a"),
            first: true,
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(
            v,
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 2, "model": "m",
                   "choices": [{"index": 0, "delta": {"role": "assistant", "content": "a"}, "logprobs": null, "finish_reason": null}]})
        );
        assert!(v.get("usage").is_none());
    }
}

/// `POST /tokenize`, as llama-server takes it: the text's token ids
/// (special tokens in the text recognised; BOS with `add_special` when the
/// model adds one), each with its text when `with_pieces`. vLLM's
/// spellings (`prompt`, `add_special_tokens`), which lm-evaluation-harness
/// sends, mean the same.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenizeRequest {
    #[serde(default, alias = "prompt")]
    pub content: String,
    #[serde(default, alias = "add_special_tokens")]
    pub add_special: bool,
    #[serde(default)]
    pub with_pieces: bool,
}

/// `POST /detokenize`: the text of token ids.
#[derive(Debug, Clone, Deserialize)]
pub struct DetokenizeRequest {
    #[serde(default)]
    pub tokens: Vec<u32>,
}

/// The answer of `/tokenize`: ids, or ids with their pieces.
#[derive(Debug, Serialize)]
pub struct Tokens<T: Serialize> {
    pub tokens: Vec<T>,
}

/// A token with its text: a string when its bytes are UTF-8, else the
/// bytes (llama-server's convention).
#[derive(Debug, Serialize)]
pub struct Piece {
    pub id: u32,
    pub piece: PieceText,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum PieceText {
    Text(String),
    Bytes(Vec<u8>),
}

impl PieceText {
    pub fn of(bytes: &[u8]) -> PieceText {
        match std::str::from_utf8(bytes) {
            Ok(s) => PieceText::Text(s.to_string()),
            Err(_) => PieceText::Bytes(bytes.to_vec()),
        }
    }
}

/// The answer of `/detokenize`: the text as `content` (llama-server's
/// name) and as `prompt` (vLLM's).
#[derive(Debug, Serialize)]
pub struct Detokenized {
    pub content: String,
    pub prompt: String,
}

/// `GET /tokenizer_info` (vLLM's; lm-evaluation-harness's remote tokenizer
/// reads it): the special tokens' texts, the chat template, the context.
#[derive(Debug, Serialize)]
pub struct TokenizerInfo<'a> {
    pub bos_token: Option<&'a str>,
    pub chat_template: Option<&'a str>,
    pub eos_token: Option<&'a str>,
    pub model_max_length: usize,
    pub tokenizer_class: &'static str,
}
