//! `bitnet serve`: an OpenAI-compatible HTTP server (axum on tokio) in
//! front of the batching [`engine`]. Endpoints: `POST /v1/chat/completions`
//! and `POST /v1/completions` (streamed as server-sent events ending in
//! `data: [DONE]`, or whole; with log-probabilities ([`logprobs`]),
//! structured output ([`crate::json_schema`]) and prompt prefix reuse),
//! `GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus text), and
//! llama-server's `/tokenize`, `/detokenize`, `/props`, `/slots`, with
//! vLLM's `/tokenizer_info`. The server listens before the model loads
//! ([`serve_loading`]); until then every endpoint answers 503 "Loading
//! model".
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
pub mod logprobs;
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
use axum::extract::{DefaultBodyLimit, Query, Request, State};
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
    Answer, ChatRequest, ChunkPart, CompletionRequest, DetokenizeRequest, Detokenized, ErrorBody,
    Health, Kind, Logprobs, ModelList, Piece, PieceText, Prompt, Reply, Settings, TokenizeRequest,
    TokenizerInfo, Tokens, Usage,
};
use engine::{Engine, EngineConfig, Event, Job};
use logprobs::TokenLogprob;

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
    /// The model's path, as `/props` shows it.
    pub model_path: String,
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
            model_path: String::new(),
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

/// Serves `model` until `shutdown` resolves, then drains and returns.
/// `ready` gets the bound address once the server serves the model.
pub fn serve(
    model: Model,
    cfg: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(SocketAddr) + Send,
) -> Result<()> {
    run(move || Ok(model), cfg, shutdown, |_| {}, ready)
}

/// Listens first, then loads the model with `load` while `/health` answers
/// 503 "Loading model" (every other endpoint too), as llama-server does;
/// serves until `shutdown` resolves, then drains and returns. `listening`
/// gets the bound address before the model loads. A model that fails to
/// load ends the server with its error.
pub fn serve_loading(
    load: impl FnOnce() -> Result<Model> + Send + 'static,
    cfg: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    listening: impl FnOnce(SocketAddr) + Send,
) -> Result<()> {
    run(load, cfg, shutdown, listening, |_| {})
}

/// The model's context split over the slots: positions per slot.
fn slot_context(model: &Model, cfg: &ServeConfig) -> Result<usize> {
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
    Ok(slot_ctx)
}

/// The model's state and its engine, once loaded.
fn start_app(model: Model, cfg: ServeConfig) -> Result<AppState> {
    let slot_ctx = slot_context(&model, &cfg)?;
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
    Ok(AppState {
        model,
        engine,
        cfg,
        slot_ctx,
        format,
        next_id: AtomicU64::new(1),
    })
}

/// llama-server's answer while the model loads.
fn loading() -> Response {
    let body = serde_json::json!({"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}});
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

fn run(
    load: impl FnOnce() -> Result<Model> + Send + 'static,
    cfg: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    listening: impl FnOnce(SocketAddr) + Send,
    ready: impl FnOnce(SocketAddr) + Send,
) -> Result<()> {
    if cfg.parallel == 0 {
        return Err(Error::invalid("--parallel must be at least 1"));
    }
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
    let body_limit = cfg.body_limit;
    // Requests go to the model's router once it is loaded; until then
    // they are answered "Loading model".
    let gate: Arc<std::sync::OnceLock<(Router, Arc<AppState>)>> = Default::default();
    let g = gate.clone();
    let app = Router::new()
        .fallback_service(tower::service_fn(move |req: Request| {
            let g = g.clone();
            async move {
                use tower::ServiceExt;
                match g.get() {
                    Some((r, _)) => r.clone().oneshot(req).await,
                    None => Ok(loading()),
                }
            }
        }))
        .layer(DefaultBodyLimit::max(body_limit));
    tracing::info!(%local, "listening; loading the model");
    listening(local);
    let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel::<Result<()>>();
    let g = gate.clone();
    let loader = std::thread::Builder::new()
        .name("bitnet-load".into())
        .spawn(move || {
            let result = load().and_then(|m| start_app(m, cfg)).map(|st| {
                let st = Arc::new(st);
                tracing::info!(
                    slots = st.cfg.parallel,
                    slot_ctx = st.slot_ctx,
                    "model loaded"
                );
                let _ = g.set((router(st.clone()), st));
            });
            let _ = loaded_tx.send(result);
        })
        .map_err(|e| Error::invalid(format!("cannot start the loading thread: {e}")))?;
    let load_error = Arc::new(std::sync::Mutex::new(None));
    let load_err = load_error.clone();
    let g = gate.clone();
    let result = rt.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stop_rx.await;
        });
        let control = async move {
            // A failed load ends the server at once; a shutdown during the
            // load waits for it (the engine thread must be stopped).
            match loaded_rx.await {
                Ok(Ok(())) => {
                    ready(local);
                    shutdown.await;
                    tracing::info!("shutting down: finishing accepted requests");
                    if let Some((_, st)) = g.get() {
                        st.engine.drain();
                        let st = st.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(drain_timeout).await;
                            tracing::warn!("drain timeout: cancelling what is left");
                            st.engine.cancel_all();
                        });
                    }
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "the model did not load");
                    *load_err.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                }
                Err(_) => {}
            }
            let _ = stop_tx.send(());
        };
        let (result, ()) = tokio::join!(async { server.await }, control);
        result
    });
    drop(rt);
    let _ = loader.join();
    if let Some(e) = load_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    // The last handles: stop the engine thread (everything has finished or
    // was cancelled by now).
    if let Some((router, st)) = Arc::try_unwrap(gate).ok().and_then(|g| g.into_inner()) {
        drop(router);
        if let Ok(mut st) = Arc::try_unwrap(st) {
            st.engine.stop(true);
        }
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
        .route("/tokenizer_info", get(tokenizer_info))
        .route("/props", get(props))
        .route("/slots", get(slots))
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

/// `GET /health`: ok with the idle and busy slots; with
/// `?fail_on_no_slot=1` a 503 "no slot available" when every slot is busy
/// (llama-server's states; "Loading model" before this router serves).
async fn health(
    State(st): State<Arc<AppState>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let busy = st.engine.metrics.active_slots.load(Ordering::Relaxed);
    let idle = st.cfg.parallel.saturating_sub(busy);
    let fail = q
        .get("fail_on_no_slot")
        .is_some_and(|v| !matches!(v.as_str(), "0" | "false"));
    if fail && idle == 0 {
        let body = Health::no_slot(busy);
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    Json(Health::ok(idle, busy)).into_response()
}

/// llama-server's `GET /props`: the server's settings and the defaults of
/// a request.
async fn props(State(st): State<Arc<AppState>>) -> Response {
    let body = serde_json::json!({
        "default_generation_settings": {
            "n_ctx": st.slot_ctx,
            "model": st.cfg.model_name,
            "params": {
                "n_predict": -1,
                "temperature": 1.0,
                "top_k": 0,
                "top_p": 1.0,
                "presence_penalty": 0.0,
                "frequency_penalty": 0.0,
                "seed": 0,
                "stop": [],
                "cache_prompt": true,
                "n_probs": 0,
            },
        },
        "total_slots": st.cfg.parallel,
        "model_path": st.cfg.model_path,
        "chat_template": st.model.chat_template.as_deref().unwrap_or(""),
        "bos_token": st.model.tokenizer.bos_text(),
        "eos_token": st.model.tokenizer.eos_text(),
        "n_ctx_train": st.model.config.ctx_len,
        "build_info": concat!("bitnet-stfma ", env!("CARGO_PKG_VERSION")),
        "modalities": {"vision": false, "audio": false},
    });
    Json(body).into_response()
}

/// llama-server's `GET /slots` (read-only): each slot's state.
async fn slots(State(st): State<Arc<AppState>>) -> Response {
    Json(st.engine.metrics.slot_states()).into_response()
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
    let content = String::from_utf8_lossy(&bytes).into_owned();
    Json(Detokenized {
        prompt: content.clone(),
        content,
    })
    .into_response()
}

/// vLLM's `/tokenizer_info`.
async fn tokenizer_info(State(st): State<Arc<AppState>>) -> Response {
    let tok = &st.model.tokenizer;
    Json(TokenizerInfo {
        bos_token: tok.bos_text(),
        chat_template: st.model.chat_template.as_deref(),
        eos_token: tok.eos_text(),
        model_max_length: st.slot_ctx,
        tokenizer_class: "bitnet",
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
        let logprobs = req.logprobs()?;
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
        let eos = st.model.tokenizer.eos_text().unwrap_or("");
        Ok(Ask {
            kind: Kind::Chat,
            prompts: vec![Prompt::Text(st.format.render(&msgs, eos))],
            settings,
            logprobs,
            echo: false,
        })
    })();
    match prepared {
        Ok(ask) => generate(st, ask).await,
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
    let prepared = (|| {
        Ok(Ask {
            kind: Kind::Completion,
            settings: req.common.settings()?,
            logprobs: req.logprobs()?,
            echo: req.echo.unwrap_or(false),
            prompts: req.prompt.clone().into_prompts(),
        })
    })();
    match prepared {
        Ok(ask) => generate(st, ask).await,
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

/// A generation request, parsed and checked as far as it can be before
/// tokenizing.
struct Ask {
    kind: Kind,
    /// One choice each.
    prompts: Vec<Prompt>,
    settings: Settings,
    /// Log-probabilities with this many alternatives.
    logprobs: Option<usize>,
    /// The prompt in front of the completion (its log-probabilities too
    /// with `logprobs`).
    echo: bool,
}

/// A prompt, tokenized, with its text as the completion echoes it: the
/// tokens decoded, and the character offset at which each token's text
/// starts.
struct Tokenized {
    tokens: Vec<u32>,
    text: String,
    offsets: Vec<usize>,
}

/// `tokens` decoded as generated text is (special tokens without text,
/// UTF-8 completed across tokens), with each token's character offset.
fn decode_with_offsets(tok: &crate::tokenizer::Tokenizer, tokens: &[u32]) -> (String, Vec<usize>) {
    let mut dec = crate::tokenizer::StreamDecoder::new();
    let (mut text, mut offsets, mut chars) = (String::new(), Vec::with_capacity(tokens.len()), 0);
    for &t in tokens {
        offsets.push(chars);
        let piece = dec.push(tok.token_to_bytes(t, false));
        chars += piece.chars().count();
        text.push_str(&piece);
    }
    text.push_str(&dec.finish());
    (text, offsets)
}

/// Tokenizes, checks, queues and answers one request (a job per prompt).
async fn generate(st: Arc<AppState>, ask: Ask) -> Response {
    let Ask {
        kind,
        prompts,
        settings: s,
        logprobs,
        echo,
    } = ask;
    if prompts.is_empty() {
        return bad_request(&st, "no prompt".into(), Some("prompt"));
    }
    let most = st.cfg.queue.max(1);
    if prompts.len() > most {
        return bad_request(
            &st,
            format!(
                "{} prompts in one request; this server takes at most {most} (its queue)",
                prompts.len()
            ),
            Some("prompt"),
        );
    }
    if s.max_tokens == Some(0) && !echo {
        return bad_request(
            &st,
            "max_tokens = 0 generates nothing; it is allowed only with echo".into(),
            Some("max_tokens"),
        );
    }
    let st2 = st.clone();
    let tokenized = match tokio::task::spawn_blocking(move || {
        let tok = &st2.model.tokenizer;
        prompts
            .into_iter()
            .map(|p| {
                let tokens = match p {
                    Prompt::Text(text) => tok.encode(&text, tok.add_bos, true),
                    Prompt::Tokens(ids) => ids,
                };
                let (text, offsets) = if echo {
                    decode_with_offsets(tok, &tokens)
                } else {
                    Default::default()
                };
                Tokenized {
                    tokens,
                    text,
                    offsets,
                }
            })
            .collect::<Vec<_>>()
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
    let (ctx, vocab) = (st.slot_ctx, st.model.config.vocab_size);
    let param = match kind {
        Kind::Chat => "messages",
        Kind::Completion => "prompt",
    };
    let mut max_tokens = Vec::with_capacity(tokenized.len());
    for (i, p) in tokenized.iter().enumerate() {
        let which = if tokenized.len() > 1 {
            format!("prompt {i}")
        } else {
            "the prompt".into()
        };
        let n = p.tokens.len();
        if n == 0 {
            return bad_request(&st, format!("{which} is empty"), Some(param));
        }
        if let Some(bad) = p.tokens.iter().find(|&&t| t as usize >= vocab) {
            return bad_request(
                &st,
                format!("{which}: token id {bad} is outside the vocabulary of {vocab} tokens"),
                Some(param),
            );
        }
        if n >= ctx {
            return bad_request(
                &st,
                format!(
                    "{which} has {n} tokens; this server's context per request is {ctx} (the prompt and at least one generated token must fit)"
                ),
                Some(param),
            );
        }
        let room = ctx - n;
        max_tokens.push(match s.max_tokens {
            Some(m) if m > room => {
                return bad_request(
                    &st,
                    format!(
                        "max_tokens = {m} does not fit: the context per request is {ctx} tokens and {which} takes {n}"
                    ),
                    Some("max_tokens"),
                )
            }
            Some(m) => m,
            None => room,
        });
    }
    let id = st.next_id.fetch_add(1, Ordering::Relaxed);
    let mut receivers = Vec::with_capacity(tokenized.len());
    let mut echoes = Vec::with_capacity(tokenized.len());
    for (p, max_tokens) in tokenized.into_iter().zip(max_tokens) {
        let (tx, rx) = mpsc::unbounded_channel();
        let job = Job {
            id,
            prompt: p.tokens.clone(),
            max_tokens,
            logprobs,
            echo: echo && logprobs.is_some(),
            cache_prompt: s.cache_prompt,
            schema: s.schema.clone(),
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
            stop: s.stop.clone(),
            events: tx,
        };
        if st.engine.submit(job).is_err() {
            // (the prompts already queued are cancelled as their receivers
            // are dropped)
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
        receivers.push(rx);
        echoes.push(echo.then_some(p));
    }
    st.engine
        .metrics
        .requests_ok
        .fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        id,
        prompts = receivers.len(),
        stream = s.stream,
        "request queued"
    );
    let out = Output {
        reply: Reply::new(kind, id, now(), st.cfg.model_name.clone()),
        model: st.model.clone(),
        logprobs: logprobs.is_some(),
        echoes,
    };
    if s.stream {
        stream(out, receivers).into_response()
    } else {
        whole(out, receivers).await
    }
}

/// How a request's events become its response.
struct Output {
    reply: Reply,
    model: Arc<Model>,
    /// Log-probabilities were asked for.
    logprobs: bool,
    /// Per choice, with `echo`, its prompt.
    echoes: Vec<Option<Tokenized>>,
}

impl Output {
    fn bytes(&self) -> impl Fn(u32) -> Vec<u8> + '_ {
        |id| self.model.tokenizer.token_to_bytes(id, true).to_vec()
    }

    /// Choice `i`'s echoed prompt: its text, and its log-probabilities
    /// (`lps`, those of its tokens but the first).
    fn echo(&self, i: usize, lps: &[TokenLogprob]) -> (String, Option<Logprobs>) {
        let Some(p) = &self.echoes[i] else {
            return (String::new(), None);
        };
        let lp = self.logprobs.then(|| {
            let entries = p
                .tokens
                .iter()
                .zip(&p.offsets)
                .enumerate()
                .map(|(k, (&t, &at))| (t, k.checked_sub(1).and_then(|k| lps.get(k)), at));
            Logprobs::text(entries, self.bytes())
        });
        (p.text.clone(), lp)
    }

    /// Generated tokens' log-probabilities in choice `i`'s form (offsets
    /// after its echoed prompt).
    fn generated(&self, i: usize, entries: &[(usize, TokenLogprob)]) -> Option<Logprobs> {
        if !self.logprobs {
            return None;
        }
        Some(match self.reply.kind {
            Kind::Chat => Logprobs::chat(entries.iter().map(|e| &e.1), self.bytes()),
            Kind::Completion => {
                let base = self.echoes[i]
                    .as_ref()
                    .map_or(0, |p| p.text.chars().count());
                let entries = entries.iter().map(|(at, e)| (e.token, Some(e), base + at));
                Logprobs::text(entries, self.bytes())
            }
        })
    }
}

/// Appends completions log-probabilities `more` to `to`.
fn extend(to: &mut Option<Logprobs>, more: Option<Logprobs>) {
    match (to.as_mut(), more) {
        (_, None) => {}
        (None, more) => *to = more,
        (Some(Logprobs::Chat { content, .. }), Some(Logprobs::Chat { content: c, .. })) => {
            content.extend(c)
        }
        (
            Some(Logprobs::Text {
                text_offset,
                token_logprobs,
                tokens,
                top_logprobs,
            }),
            Some(Logprobs::Text {
                text_offset: a,
                token_logprobs: b,
                tokens: c,
                top_logprobs: d,
            }),
        ) => {
            text_offset.extend(a);
            token_logprobs.extend(b);
            tokens.extend(c);
            top_logprobs.extend(d);
        }
        (Some(_), Some(_)) => unreachable!("one endpoint's form per request"),
    }
}

/// The whole answer once every choice's generation ends.
async fn whole(out: Output, receivers: Vec<mpsc::UnboundedReceiver<Event>>) -> Response {
    let mut answers = Vec::with_capacity(receivers.len());
    let (mut prompt, mut completion) = (0, 0);
    for (i, mut rx) in receivers.into_iter().enumerate() {
        let mut answer = Answer::default();
        if out.echoes[i].is_some() && !out.logprobs {
            answer.text = out.echo(i, &[]).0;
        }
        loop {
            match rx.recv().await {
                Some(Event::Prompt(lps)) => {
                    let (text, lp) = out.echo(i, &lps);
                    answer.text = text;
                    extend(&mut answer.logprobs, lp);
                }
                Some(Event::Text { text, logprobs }) => {
                    answer.text.push_str(&text);
                    extend(&mut answer.logprobs, out.generated(i, &logprobs));
                }
                Some(Event::Failed(m)) => return error(StatusCode::SERVICE_UNAVAILABLE, m, None),
                Some(Event::Done {
                    finish,
                    prompt_tokens,
                    completion_tokens,
                }) => {
                    prompt += prompt_tokens;
                    completion += completion_tokens;
                    if out.logprobs && answer.logprobs.is_none() {
                        answer.logprobs = out.generated(i, &[]);
                    }
                    answers.push((answer, finish));
                    break;
                }
                None => return error(StatusCode::SERVICE_UNAVAILABLE, "the server stopped", None),
            }
        }
    }
    Json(out.reply.whole(&answers, Usage::new(prompt, completion))).into_response()
}

/// Server-sent events: chunks of each choice's text (with its prompt first
/// with `echo`), a chunk with each choice's finish reason, the usage in
/// the last of those, then `[DONE]`. Dropping the stream (the client left)
/// drops the receivers, which cancels the request.
fn stream(
    out: Output,
    receivers: Vec<mpsc::UnboundedReceiver<Event>>,
) -> Sse<impl futures_util::Stream<Item = std::result::Result<SseEvent, Infallible>>> {
    use futures_util::StreamExt;
    let n = receivers.len();
    let merged =
        futures_util::stream::select_all(receivers.into_iter().enumerate().map(|(i, rx)| {
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|e| (e, rx)) },
            )
            .map(move |e| (i, e))
            .boxed()
        }));
    struct S<M> {
        out: Output,
        merged: M,
        /// Per choice: nothing sent yet.
        first: Vec<bool>,
        /// Choices not finished, and the usage of those that are.
        left: usize,
        usage: (usize, usize),
        /// Chunks to send before reading more (an echo without
        /// log-probabilities goes out at once).
        queued: std::collections::VecDeque<String>,
        ended: bool,
    }
    let mut s = S {
        merged,
        first: vec![true; n],
        left: n,
        usage: (0, 0),
        queued: Default::default(),
        ended: false,
        out,
    };
    if !s.out.logprobs {
        for i in 0..n {
            if s.out.echoes[i].is_some() {
                let (text, _) = s.out.echo(i, &[]);
                let part = ChunkPart {
                    index: i as u32,
                    text: Some(&text),
                    first: true,
                    ..Default::default()
                };
                s.queued.push_back(to_json(&s.out.reply.chunk(part)));
                s.first[i] = false;
            }
        }
    }
    let events = futures_util::stream::unfold(s, |mut s| async move {
        if let Some(data) = s.queued.pop_front() {
            return Some((Ok(SseEvent::default().data(data)), s));
        }
        if s.ended {
            return None;
        }
        let data = match s.merged.next().await {
            Some((i, ev)) => {
                let first = std::mem::replace(&mut s.first[i], false);
                let index = i as u32;
                let reply = &s.out.reply;
                match ev {
                    Event::Prompt(lps) => {
                        let (text, logprobs) = s.out.echo(i, &lps);
                        to_json(&reply.chunk(ChunkPart {
                            index,
                            text: Some(&text),
                            first,
                            logprobs,
                            ..Default::default()
                        }))
                    }
                    Event::Text { text, logprobs } => to_json(&reply.chunk(ChunkPart {
                        index,
                        text: Some(&text),
                        first,
                        logprobs: s.out.generated(i, &logprobs),
                        ..Default::default()
                    })),
                    Event::Done {
                        finish,
                        prompt_tokens,
                        completion_tokens,
                    } => {
                        s.left -= 1;
                        s.usage.0 += prompt_tokens;
                        s.usage.1 += completion_tokens;
                        let usage = (s.left == 0).then(|| Usage::new(s.usage.0, s.usage.1));
                        if s.left == 0 {
                            s.queued.push_back("[DONE]".into());
                            s.ended = true;
                        }
                        to_json(&reply.chunk(ChunkPart {
                            index,
                            first,
                            finish: Some(finish),
                            usage,
                            ..Default::default()
                        }))
                    }
                    Event::Failed(m) => {
                        s.queued.push_back("[DONE]".into());
                        s.ended = true;
                        to_json(&ErrorBody::new("server_error", m, None))
                    }
                }
            }
            None => {
                s.ended = true;
                "[DONE]".to_string()
            }
        };
        Some((Ok(SseEvent::default().data(data)), s))
    });
    Sse::new(events)
}

/// A response body as JSON text (an event's data).
fn to_json(body: &impl serde::Serialize) -> String {
    serde_json::to_string(body).expect("response bodies serialize")
}
