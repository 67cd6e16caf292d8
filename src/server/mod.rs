//! `bitnet serve`: an OpenAI-compatible HTTP server (axum on tokio) in
//! front of the batching [`engine`]. Endpoints: `POST /v1/chat/completions`
//! and `POST /v1/completions` (streamed as server-sent events ending in
//! `data: [DONE]`, or whole), `GET /v1/models`, `GET /health`, and
//! `GET /metrics` (Prometheus text).
//!
//! Requests are tokenized and checked in the handler; a bad one gets a 400
//! with OpenAI's error body, a full queue a 503 with `Retry-After`, a
//! missing or wrong key (with `--api-key`) a 401, a body over the limit a
//! 413. A client that goes away (a dropped stream or connection) drops its
//! request from the engine before the next step. On shutdown the server
//! stops accepting connections, finishes what it accepted within the drain
//! timeout, then cancels the rest.

pub mod api;
pub mod engine;
pub mod metrics;
#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::mpsc;

use crate::chat::{ChatFormat, Message};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::sampler::SamplerConfig;
use api::{
    ChatRequest, CompletionRequest, DetokenizeRequest, Detokenized, ErrorBody, Health, Kind,
    ModelList, Piece, PieceText, Reply, Settings, TokenizeRequest, Tokens, Usage,
};
use engine::{Engine, EngineConfig, Event, Job};

/// Settings of `bitnet serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub host: String,
    pub port: u16,
    /// Concurrent sequences (slots).
    pub parallel: usize,
    /// KV cache positions of all slots together (0: the model's context
    /// length times `parallel`), split evenly, as llama-server's `-c`.
    pub ctx: usize,
    pub threads: usize,
    pub api_key: Option<String>,
    /// Requests waiting for a slot before 503s.
    pub queue: usize,
    /// Largest request body in bytes.
    pub body_limit: usize,
    /// Prompt tokens per request per step.
    pub chunk: usize,
    /// How long a shutdown waits for accepted requests before cancelling.
    pub drain_timeout: Duration,
    /// The name `/v1/models` lists and responses carry.
    pub model_name: String,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            host: "127.0.0.1".into(),
            port: 8080,
            parallel: 4,
            ctx: 0,
            threads: 0,
            api_key: None,
            queue: 64,
            body_limit: 1 << 20,
            chunk: 64,
            drain_timeout: Duration::from_secs(10),
            model_name: "bitnet".into(),
        }
    }
}

struct AppState {
    model: Arc<Model>,
    engine: Engine,
    cfg: ServeConfig,
    slot_ctx: usize,
    format: ChatFormat,
    next_id: AtomicU64,
}

/// Serves until `shutdown` resolves, then drains and returns. `ready` gets
/// the bound address once the server listens.
pub fn serve(
    model: Model,
    cfg: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(SocketAddr) + Send,
) -> Result<()> {
    if cfg.parallel == 0 {
        return Err(Error::invalid("--parallel must be at least 1"));
    }
    let total = if cfg.ctx == 0 {
        model.config.ctx_len * cfg.parallel
    } else {
        cfg.ctx
    };
    let slot_ctx = total / cfg.parallel;
    if slot_ctx < 8 {
        return Err(Error::invalid(format!(
            "a context of {total} over {} slots leaves {slot_ctx} tokens per slot",
            cfg.parallel
        )));
    }
    let model = Arc::new(model);
    let engine = Engine::start(
        model.clone(),
        EngineConfig {
            slots: cfg.parallel,
            slot_ctx,
            threads: cfg.threads,
            chunk: cfg.chunk,
            queue: cfg.queue,
        },
    )?;
    let format = ChatFormat::detect(
        model.chat_template.as_deref(),
        model.gguf_str("tokenizer.ggml.pre"),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::invalid(format!("cannot start the async runtime: {e}")))?;
    let addr = format!("{}:{}", cfg.host, cfg.port);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(&addr))
        .map_err(|e| Error::invalid(format!("cannot listen on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::invalid(e.to_string()))?;
    let drain_timeout = cfg.drain_timeout;
    let state = Arc::new(AppState {
        model,
        engine,
        cfg,
        slot_ctx,
        format,
        next_id: AtomicU64::new(1),
    });
    let app = router(state.clone());
    tracing::info!(%local, slots = state.cfg.parallel, slot_ctx, "listening");
    ready(local);
    let st = state.clone();
    let result = rt.block_on(async move {
        let stop = async move {
            shutdown.await;
            tracing::info!("shutting down: finishing accepted requests");
            st.engine.drain();
            let st2 = st.clone();
            tokio::spawn(async move {
                tokio::time::sleep(drain_timeout).await;
                tracing::warn!("drain timeout: cancelling what is left");
                st2.engine.cancel_all();
            });
        };
        axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
    });
    drop(rt);
    // The last handle: stops the engine thread (everything has finished or
    // was cancelled by now).
    if let Ok(mut st) = Arc::try_unwrap(state) {
        st.engine.stop(true);
    }
    result.map_err(|e| Error::invalid(format!("server error: {e}")))
}

fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics_text))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/health", get(health))
        .merge(v1)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.cfg.body_limit))
        .with_state(state)
}

/// OpenAI's error body.
fn error(status: StatusCode, message: impl Into<String>, param: Option<&str>) -> Response {
    let kind = match status {
        StatusCode::UNAUTHORIZED => "authentication_error",
        StatusCode::SERVICE_UNAVAILABLE => "server_overloaded",
        s if s.is_server_error() => "server_error",
        _ => "invalid_request_error",
    };
    let body = ErrorBody::new(kind, message.into(), param);
    (status, Json(body)).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint", None)
}

/// Equal in time whatever the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

async fn auth(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.cfg.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same(given.as_bytes(), key.as_bytes()) {
            return error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong API key (send Authorization: Bearer KEY)",
                None,
            );
        }
    }
    next.run(req).await
}

async fn health() -> Response {
    Json(Health::OK).into_response()
}

async fn models(State(st): State<Arc<AppState>>) -> Response {
    Json(ModelList::one(&st.cfg.model_name, now())).into_response()
}

/// llama-server's `/tokenize`.
async fn tokenize(
    State(st): State<Arc<AppState>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    let req: TokenizeRequest = match parse(&st, body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let tok = &st.model.tokenizer;
    let ids = tok.encode(&req.content, req.add_special && tok.add_bos, true);
    if req.with_pieces {
        let tokens = ids
            .iter()
            .map(|&id| Piece {
                id,
                piece: PieceText::of(tok.token_to_bytes(id, true)),
            })
            .collect();
        Json(Tokens { tokens }).into_response()
    } else {
        Json(Tokens { tokens: ids }).into_response()
    }
}

/// llama-server's `/detokenize`: the pieces of the ids joined (special
/// tokens as their text), invalid UTF-8 replaced.
async fn detokenize(
    State(st): State<Arc<AppState>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    let req: DetokenizeRequest = match parse(&st, body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let tok = &st.model.tokenizer;
    let n = tok.vocab_size();
    if let Some(bad) = req.tokens.iter().find(|&&id| id as usize >= n) {
        return bad_request(
            &st,
            format!("token id {bad} is outside the vocabulary of {n} tokens"),
            Some("tokens"),
        );
    }
    let bytes: Vec<u8> = req
        .tokens
        .iter()
        .flat_map(|&id| tok.token_to_bytes(id, true).iter().copied())
        .collect();
    Json(Detokenized {
        content: String::from_utf8_lossy(&bytes).into_owned(),
    })
    .into_response()
}

async fn metrics_text(State(st): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        st.engine.metrics.render(st.cfg.parallel),
    )
        .into_response()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The body parsed as JSON into `T`, or the 400/413 to send.
fn parse<T: serde::de::DeserializeOwned>(
    st: &AppState,
    body: std::result::Result<Bytes, BytesRejection>,
) -> std::result::Result<T, Box<Response>> {
    let bad = |r: Response| {
        st.engine
            .metrics
            .requests_bad
            .fetch_add(1, Ordering::Relaxed);
        Box::new(r)
    };
    let body = body.map_err(|r| bad(error(r.status(), r.body_text(), None)))?;
    serde_json::from_slice(&body).map_err(|e| {
        bad(error(
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {e}"),
            None,
        ))
    })
}

async fn chat_completions(
    State(st): State<Arc<AppState>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    let req: ChatRequest = match parse(&st, body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let prepared = (|| {
        let settings = req.common.settings()?;
        if req.messages.is_empty() {
            return Err(("messages is empty".to_string(), Some("messages")));
        }
        let mut msgs = Vec::with_capacity(req.messages.len());
        for m in &req.messages {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err((
                        format!(
                            "message role '{other}' is not supported (system, user, assistant)"
                        ),
                        Some("messages"),
                    ))
                }
            };
            msgs.push(Message::new(role, &m.text()?));
        }
        let tok = &st.model.tokenizer;
        let eos = tok.eos.and_then(|e| tok.token_text(e)).unwrap_or("");
        Ok((st.format.render(&msgs, eos), settings))
    })();
    match prepared {
        Ok((text, settings)) => generate(st, Kind::Chat, text, settings).await,
        Err((m, p)) => bad_request(&st, m, p),
    }
}

async fn completions(
    State(st): State<Arc<AppState>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    let req: CompletionRequest = match parse(&st, body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let prompts = req.prompt.into_vec();
    if prompts.len() != 1 {
        return bad_request(
            &st,
            format!(
                "{} prompts: one prompt per request is supported",
                prompts.len()
            ),
            Some("prompt"),
        );
    }
    match req.common.settings() {
        Ok(s) => generate(st, Kind::Completion, prompts.into_iter().next().unwrap(), s).await,
        Err((m, p)) => bad_request(&st, m, p),
    }
}

fn bad_request(st: &AppState, message: String, param: Option<&str>) -> Response {
    st.engine
        .metrics
        .requests_bad
        .fetch_add(1, Ordering::Relaxed);
    error(StatusCode::BAD_REQUEST, message, param)
}

/// Tokenizes, queues and answers one request.
async fn generate(st: Arc<AppState>, kind: Kind, text: String, s: Settings) -> Response {
    let st2 = st.clone();
    let prompt = match tokio::task::spawn_blocking(move || {
        let tok = &st2.model.tokenizer;
        tok.encode(&text, tok.add_bos, true)
    })
    .await
    {
        Ok(p) => p,
        Err(_) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "tokenization failed",
                None,
            )
        }
    };
    if prompt.is_empty() {
        return bad_request(&st, "the prompt is empty".into(), Some("prompt"));
    }
    let ctx = st.slot_ctx;
    if prompt.len() >= ctx {
        return bad_request(
            &st,
            format!(
                "the prompt has {} tokens; this server's context per request is {ctx} (the prompt and at least one generated token must fit)",
                prompt.len()
            ),
            Some("messages"),
        );
    }
    let room = ctx - prompt.len();
    let max_tokens = match s.max_tokens {
        Some(m) if m > room => {
            return bad_request(
                &st,
                format!(
                    "max_tokens = {m} does not fit: the context per request is {ctx} tokens and the prompt takes {}",
                    prompt.len()
                ),
                Some("max_tokens"),
            )
        }
        Some(m) => m,
        None => room,
    };
    let id = st.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::unbounded_channel();
    let prompt_tokens = prompt.len();
    let job = Job {
        id,
        prompt,
        max_tokens,
        sampling: SamplerConfig {
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: s.presence_penalty,
            frequency_penalty: s.frequency_penalty,
            seed: s.seed,
        },
        stop: s.stop,
        events: tx,
    };
    if st.engine.submit(job).is_err() {
        st.engine
            .metrics
            .requests_rejected
            .fetch_add(1, Ordering::Relaxed);
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is busy (its queue is full); retry later",
            None,
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    }
    st.engine
        .metrics
        .requests_ok
        .fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        id,
        prompt_tokens,
        max_tokens,
        stream = s.stream,
        "request queued"
    );
    let reply = Reply::new(kind, id, now(), st.cfg.model_name.clone());
    if s.stream {
        stream(reply, rx).into_response()
    } else {
        whole(reply, rx).await
    }
}

/// The whole answer once generation ends.
async fn whole(reply: Reply, mut rx: mpsc::UnboundedReceiver<Event>) -> Response {
    let mut text = String::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Text(t) => text.push_str(&t),
            Event::Failed(m) => return error(StatusCode::SERVICE_UNAVAILABLE, m, None),
            Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            } => {
                let usage = Usage::new(prompt_tokens, completion_tokens);
                return Json(reply.whole(&text, finish, usage)).into_response();
            }
        }
    }
    error(StatusCode::SERVICE_UNAVAILABLE, "the server stopped", None)
}

/// Server-sent events: a chunk per piece of text, a last chunk with the
/// finish reason and usage, then `[DONE]`. Dropping the stream (the client
/// left) drops the receiver, which cancels the request.
fn stream(
    reply: Reply,
    rx: mpsc::UnboundedReceiver<Event>,
) -> Sse<impl futures_util::Stream<Item = std::result::Result<SseEvent, Infallible>>> {
    struct S {
        reply: Reply,
        rx: mpsc::UnboundedReceiver<Event>,
        first: bool,
        state: u8, // 0 streaming, 1 send [DONE], 2 ended
    }
    let s = S {
        reply,
        rx,
        first: true,
        state: 0,
    };
    let events = futures_util::stream::unfold(s, |mut s| async move {
        let data = match s.state {
            0 => match s.rx.recv().await {
                Some(Event::Text(t)) => {
                    let v = to_json(&s.reply.chunk(Some(&t), s.first, None));
                    s.first = false;
                    v
                }
                Some(Event::Done {
                    finish,
                    prompt_tokens,
                    completion_tokens,
                }) => {
                    s.state = 1;
                    let usage = Usage::new(prompt_tokens, completion_tokens);
                    to_json(&s.reply.chunk(None, s.first, Some((finish, usage))))
                }
                Some(Event::Failed(m)) => {
                    s.state = 1;
                    to_json(&ErrorBody::new("server_error", m, None))
                }
                None => {
                    s.state = 2;
                    "[DONE]".to_string()
                }
            },
            1 => {
                s.state = 2;
                "[DONE]".to_string()
            }
            _ => return None,
        };
        Some((Ok(SseEvent::default().data(data)), s))
    });
    Sse::new(events)
}

/// A response body as JSON text (an event's data).
fn to_json(body: &impl serde::Serialize) -> String {
    serde_json::to_string(body).expect("response bodies serialize")
}
