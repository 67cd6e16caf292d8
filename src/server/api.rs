//! The OpenAI request bodies `bitnet serve` reads, and their checks. Fields
//! it does not know are ignored (clients send many); a known field of the
//! wrong type or out of range is a 400 with OpenAI's error body.

use serde::Deserialize;

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
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    #[serde(flatten)]
    pub common: Common,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub prompt: OneOrMany,
    #[serde(flatten)]
    pub common: Common,
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
            Some(m) if m >= 1 => Some(m as usize),
            Some(m) => return bad(format!("max_tokens = {m} must be at least 1"), "max_tokens"),
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
        })
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
