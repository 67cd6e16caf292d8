//! The server over HTTP on loopback, as a client sees it: both endpoints
//! streamed and whole, batching that changes no request's tokens, stop
//! strings, every error status, a client leaving mid-stream, and shutdown.

use std::io::BufRead;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;
use crate::model::{Model, Session};

struct Running {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Running {
    fn start(cfg: ServeConfig) -> Option<Running> {
        let dir = crate::testdata_dir()?;
        let model = Model::load(dir.join("bitnet-tiny.gguf")).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (atx, arx) = std::sync::mpsc::channel::<SocketAddr>();
        let thread = std::thread::spawn(move || {
            serve(
                model,
                ServeConfig { port: 0, ..cfg },
                async move {
                    let _ = rx.await;
                },
                move |a| atx.send(a).unwrap(),
            )
        });
        let addr = arx.recv_timeout(Duration::from_secs(60)).unwrap();
        Some(Running {
            url: format!("http://{addr}"),
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, &body.to_string(), None)
    }

    fn post_raw(&self, path: &str, body: &str, key: Option<&str>) -> (u16, Value) {
        let mut req =
            ureq::post(&format!("{}{path}", self.url)).set("Content-Type", "application/json");
        if let Some(k) = key {
            req = req.set("Authorization", &format!("Bearer {k}"));
        }
        let resp = match req.send_string(body) {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{e}"),
        };
        let status = resp.status();
        let text = resp.into_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// The streamed events' JSON (without the final [DONE], which is checked).
    fn stream(&self, path: &str, body: &Value) -> Vec<Value> {
        let resp = ureq::post(&format!("{}{path}", self.url))
            .send_json(body.clone())
            .unwrap();
        assert_eq!(resp.header("Content-Type"), Some("text/event-stream"));
        let mut out = Vec::new();
        let mut done = false;
        for line in std::io::BufReader::new(resp.into_reader()).lines() {
            let line = line.unwrap();
            if let Some(d) = line.strip_prefix("data: ") {
                assert!(!done, "data after [DONE]");
                if d == "[DONE]" {
                    done = true;
                } else {
                    out.push(serde_json::from_str(d).unwrap());
                }
            }
        }
        assert!(done, "the stream ends with [DONE]");
        out
    }

    fn metric(&self, name: &str) -> f64 {
        let text = ureq::get(&format!("{}/metrics", self.url))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
            .parse()
            .unwrap()
    }

    fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap().unwrap();
    }
}

/// Greedy tokens of `prompt` straight from a session, as text.
fn greedy_text(prompt: &str, n: usize) -> String {
    let dir = crate::testdata_dir().unwrap();
    let model = Model::load(dir.join("bitnet-tiny.gguf")).unwrap();
    let tok = &model.tokenizer;
    let ids = tok.encode(prompt, tok.add_bos, true);
    let mut s = Session::new(&model, 256, 64, 2).unwrap();
    let mut logits = s.forward(&ids).unwrap().to_vec();
    let mut out = Vec::new();
    for _ in 0..n {
        let t = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
            .unwrap()
            .0 as u32;
        if tok.is_end_of_generation(t) {
            break;
        }
        out.extend_from_slice(tok.token_to_bytes(t, false));
        logits = s.forward(&[t]).unwrap().to_vec();
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn cfg() -> ServeConfig {
    ServeConfig {
        parallel: 4,
        ctx: 4 * 256,
        threads: 2,
        ..ServeConfig::default()
    }
}

/// A server on `cfg`, or None (and a SKIPPED line) without the fixtures.
fn start(cfg: ServeConfig) -> Option<Running> {
    let srv = Running::start(cfg);
    if srv.is_none() {
        eprintln!("SKIPPED server tests: ../shared/testdata not found");
    }
    srv
}

const CAPITAL: &str = "The capital of France is";

/// The chat request of the chat tests: a system message and a user message
/// in parts, 6 greedy tokens.
fn chat_request() -> Value {
    json!({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "max_tokens": 6, "temperature": 0})
}

/// A whole completion is the session's greedy text, with its usage.
#[test]
fn completion_whole() {
    let Some(srv) = start(cfg()) else { return };
    let want = greedy_text(CAPITAL, 12);
    let (st, v) = srv.post(
        "/v1/completions",
        &json!({"prompt": CAPITAL, "max_tokens": 12, "temperature": 0, "some_new_field": [1, 2]}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], want.as_str());
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 12);
    assert_eq!(v["usage"]["prompt_tokens"], 6);
    assert_eq!(v["usage"]["total_tokens"], 18);
    srv.shutdown();
}

/// A streamed completion's pieces make the greedy text; the last event has
/// the finish reason and the usage.
#[test]
fn completion_streamed() {
    let Some(srv) = start(cfg()) else { return };
    let want = greedy_text(CAPITAL, 12);
    let events = srv.stream(
        "/v1/completions",
        &json!({"prompt": CAPITAL, "max_tokens": 12, "temperature": 0, "stream": true}),
    );
    let text: String = events
        .iter()
        .map(|e| e["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, want);
    let last = events.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(last["usage"]["completion_tokens"], 12);
    srv.shutdown();
}

/// A whole chat completion: the chat template of the model (bitnet's)
/// wrapped the messages.
#[test]
fn chat_whole() {
    let Some(srv) = start(cfg()) else { return };
    let (st, v) = srv.post("/v1/chat/completions", &chat_request());
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let whole = v["choices"][0]["message"]["content"].as_str().unwrap();
    let rendered = "System: Be brief.User: Hi<|eot_id|>Assistant: ";
    assert_eq!(whole, greedy_text(rendered, 6));
    srv.shutdown();
}

/// A streamed chat completion: the role first, chunks that make the whole
/// reply, the usage last.
#[test]
fn chat_streamed() {
    let Some(srv) = start(cfg()) else { return };
    let chat = chat_request();
    let (st, v) = srv.post("/v1/chat/completions", &chat);
    assert_eq!(st, 200, "{v}");
    let whole = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    let events = srv.stream("/v1/chat/completions", &streamed);
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(events[0]["object"], "chat.completion.chunk");
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, whole);
    assert!(
        events.last().unwrap()["usage"]["prompt_tokens"]
            .as_u64()
            .unwrap()
            > 5
    );
    srv.shutdown();
}

#[test]
fn tokenize_and_detokenize_as_llama_server() {
    let Some(srv) = start(cfg()) else { return };
    let text = "Hello world<|eot_id|> 123";
    let (code, body) = srv.post("/tokenize", &json!({"content": text}));
    assert_eq!(code, 200, "{body}");
    let ids: Vec<u32> = serde_json::from_value(body["tokens"].clone()).unwrap();
    let model = Model::load(crate::testdata_dir().unwrap().join("bitnet-tiny.gguf")).unwrap();
    assert_eq!(
        ids,
        model.tokenizer.encode(text, false, true),
        "special tokens parsed, no BOS"
    );
    assert!(ids.contains(&128009));
    let (_, body) = srv.post("/tokenize", &json!({"content": text, "add_special": true}));
    assert_eq!(body["tokens"][0], 128000, "BOS with add_special");
    let (_, body) = srv.post(
        "/tokenize",
        &json!({"content": "Hi é", "with_pieces": true}),
    );
    let pieces = body["tokens"].as_array().unwrap();
    let joined: String = pieces
        .iter()
        .map(|p| p["piece"].as_str().unwrap())
        .collect();
    assert_eq!(joined, "Hi é");
    assert!(pieces.iter().all(|p| p["id"].is_u64()));
    let (code, body) = srv.post("/detokenize", &json!({"tokens": ids}));
    assert_eq!(code, 200);
    assert_eq!(body["content"], text);
    let (_, body) = srv.post("/detokenize", &json!({}));
    assert_eq!(body["content"], "");
    let (_, body) = srv.post("/tokenize", &json!({}));
    assert_eq!(body["tokens"], json!([]));
    for bad in [
        json!({"tokens": [1, 999999]}),
        json!({"tokens": [-1]}),
        json!({"tokens": "x"}),
    ] {
        let (code, body) = srv.post("/detokenize", &bad);
        assert_eq!(code, 400, "{bad}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    }
    let (code, _) = srv.post_raw("/tokenize", "{not json", None);
    assert_eq!(code, 400);
    // vLLM's spellings, as lm-evaluation-harness's remote tokenizer sends
    // them, and its /tokenizer_info.
    let (_, body) = srv.post(
        "/tokenize",
        &json!({"prompt": text, "add_special_tokens": false}),
    );
    assert_eq!(body["tokens"], json!(ids));
    let (_, body) = srv.post("/detokenize", &json!({"tokens": ids}));
    assert_eq!(body["prompt"], text);
    let info: Value = ureq::get(&format!("{}/tokenizer_info", srv.url))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(info["eos_token"], "<|end_of_text|>", "{info}");
    assert_eq!(info["bos_token"], "<|begin_of_text|>", "{info}");
    assert_eq!(info["model_max_length"], 256);
    srv.shutdown();
    // a piece that is not UTF-8 on its own goes out as its bytes
    assert_eq!(
        serde_json::to_value(PieceText::of(&[0xC3])).unwrap(),
        json!([195])
    );
    assert_eq!(
        serde_json::to_value(PieceText::of(b"hi")).unwrap(),
        json!("hi")
    );
}

#[test]
fn models_lists_the_model() {
    let Some(srv) = start(cfg()) else { return };
    let models = ureq::get(&format!("{}/v1/models", srv.url)).call().unwrap();
    let models: Value = models.into_json().unwrap();
    assert_eq!(models["data"][0]["id"], "bitnet");
    srv.shutdown();
}

/// A stop string ends the text before it, with finish_reason "stop".
#[test]
fn a_stop_string_ends_the_text_before_it() {
    let Some(srv) = start(cfg()) else { return };
    let want = greedy_text(CAPITAL, 12);
    let cut = want.char_indices().nth(want.chars().count() / 2).unwrap().0;
    let stop = &want[cut..cut + want[cut..].chars().next().unwrap().len_utf8()];
    let (_, v) = srv.post(
        "/v1/completions",
        &json!({"prompt": CAPITAL, "max_tokens": 12, "temperature": 0, "stop": [stop]}),
    );
    let got = v["choices"][0]["text"].as_str().unwrap();
    assert_eq!(got, &want[..want.find(stop).unwrap()]);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    srv.shutdown();
}

/// Concurrent requests are decoded together, and each gets exactly the
/// tokens it gets alone.
#[test]
fn batched_requests_get_the_tokens_they_get_alone() {
    let Some(srv) = Running::start(cfg()) else {
        return;
    };
    let prompts = [
        "The capital of France is",
        "Once upon a time",
        "1, 2, 3, 4,",
        "A long time ago in a galaxy far, far away, there was a",
        "Hello",
        "The capital of France is",
    ];
    let body = |p: &str| json!({"prompt": p, "max_tokens": 10, "temperature": 0});
    let alone: Vec<String> = prompts
        .iter()
        .map(|p| {
            srv.post("/v1/completions", &body(p)).1["choices"][0]["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let together: Vec<String> = std::thread::scope(|sc| {
        let hs: Vec<_> = prompts
            .iter()
            .map(|p| {
                let srv = &srv;
                sc.spawn(move || {
                    srv.post("/v1/completions", &body(p)).1["choices"][0]["text"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(together, alone);
    assert_eq!(alone[0], greedy_text(prompts[0], 10));
    srv.shutdown();
}

/// Requests a server refuses, each with its status and an OpenAI error
/// object that says why.
mod bad_requests {
    use super::*;

    const KEY: Option<&str> = Some("sekret");
    const OK: &str = r#"{"prompt": "Hi", "max_tokens": 2}"#;

    /// A server with an API key and a body limit of 4096 bytes.
    fn keyed() -> Option<Running> {
        start(ServeConfig {
            api_key: Some("sekret".into()),
            body_limit: 4096,
            ..cfg()
        })
    }

    /// Posts `body` to /v1/completions with `key`: the status is `status`,
    /// and an error's message contains `needle`.
    #[track_caller]
    fn check(srv: &Running, body: &str, key: Option<&str>, status: u16, needle: &str) {
        let (st, v) = srv.post_raw("/v1/completions", body, key);
        assert_eq!(st, status, "{body}: {v}");
        if status != 200 {
            let m = v["error"]["message"].as_str().unwrap_or_default();
            assert!(m.contains(needle), "{body}: {v}");
            assert!(v["error"]["type"].is_string());
        }
    }

    #[test]
    fn the_right_key_is_served() {
        let Some(srv) = keyed() else { return };
        check(&srv, OK, KEY, 200, "");
        srv.shutdown();
    }

    #[test]
    fn tokenize_needs_the_key_too() {
        let Some(srv) = keyed() else { return };
        let (st, _) = srv.post_raw("/tokenize", r#"{"content": "Hi"}"#, None);
        assert_eq!(st, 401);
        let (st, v) = srv.post_raw("/tokenize", r#"{"content": "Hi"}"#, KEY);
        assert_eq!(st, 200, "{v}");
        srv.shutdown();
    }

    #[test]
    fn no_key_is_401() {
        let Some(srv) = keyed() else { return };
        check(&srv, OK, None, 401, "API key");
        srv.shutdown();
    }

    #[test]
    fn a_wrong_key_is_401() {
        let Some(srv) = keyed() else { return };
        check(&srv, OK, Some("wrong"), 401, "API key");
        srv.shutdown();
    }

    #[test]
    fn a_body_that_is_not_json() {
        let Some(srv) = keyed() else { return };
        check(&srv, "{not json", KEY, 400, "invalid request body");
        srv.shutdown();
    }

    #[test]
    fn a_field_of_the_wrong_type() {
        let Some(srv) = keyed() else { return };
        check(
            &srv,
            r#"{"prompt": "Hi", "max_tokens": "2"}"#,
            KEY,
            400,
            "invalid type",
        );
        srv.shutdown();
    }

    #[test]
    fn a_temperature_out_of_range() {
        let Some(srv) = keyed() else { return };
        check(
            &srv,
            r#"{"prompt": "Hi", "temperature": 7}"#,
            KEY,
            400,
            "temperature",
        );
        srv.shutdown();
    }

    #[test]
    fn max_tokens_of_zero() {
        let Some(srv) = keyed() else { return };
        check(
            &srv,
            r#"{"prompt": "Hi", "max_tokens": 0}"#,
            KEY,
            400,
            "max_tokens",
        );
        srv.shutdown();
    }

    #[test]
    fn max_tokens_beyond_the_context() {
        let Some(srv) = keyed() else { return };
        check(
            &srv,
            r#"{"prompt": "Hi", "max_tokens": 100000}"#,
            KEY,
            400,
            "max_tokens",
        );
        srv.shutdown();
    }

    #[test]
    fn more_than_one_choice() {
        let Some(srv) = keyed() else { return };
        check(&srv, r#"{"prompt": "Hi", "n": 3}"#, KEY, 400, "n = 3");
        srv.shutdown();
    }

    #[test]
    fn no_prompt() {
        let Some(srv) = keyed() else { return };
        check(&srv, r#"{"max_tokens": 3}"#, KEY, 400, "prompt");
        srv.shutdown();
    }

    #[test]
    fn a_prompt_longer_than_the_context() {
        let Some(srv) = keyed() else { return };
        let long = format!(r#"{{"prompt": "{}"}}"#, "word ".repeat(600));
        check(&srv, &long, KEY, 400, "context");
        srv.shutdown();
    }

    #[test]
    fn a_body_over_the_limit_is_413() {
        let Some(srv) = keyed() else { return };
        let huge = format!(r#"{{"prompt": "{}"}}"#, "x".repeat(5000));
        let (st, _) = srv.post_raw("/v1/completions", &huge, KEY);
        assert_eq!(st, 413, "a body over the limit");
        srv.shutdown();
    }

    #[test]
    fn a_chat_message_of_an_unknown_role() {
        let Some(srv) = keyed() else { return };
        let (st, v) = srv.post_raw(
            "/v1/chat/completions",
            r#"{"messages": [{"role": "tool", "content": "x"}]}"#,
            KEY,
        );
        assert_eq!(st, 400, "{v}");
        srv.shutdown();
    }

    #[test]
    fn a_chat_without_messages() {
        let Some(srv) = keyed() else { return };
        let (st, _) = srv.post_raw("/v1/chat/completions", r#"{"messages": []}"#, KEY);
        assert_eq!(st, 400);
        srv.shutdown();
    }

    #[test]
    fn an_unknown_path_is_404() {
        let Some(srv) = keyed() else { return };
        let (st, _) = srv.post_raw("/v1/nothing", "{}", KEY);
        assert_eq!(st, 404);
        srv.shutdown();
    }

    /// /health needs no key.
    #[test]
    fn health_needs_no_key() {
        let Some(srv) = keyed() else { return };
        assert_eq!(
            ureq::get(&format!("{}/health", srv.url))
                .call()
                .unwrap()
                .status(),
            200
        );
        srv.shutdown();
    }
}

/// One slot, one queue place: a third concurrent request gets 503 with
/// Retry-After; a client that leaves mid-stream frees its slot at once.
#[test]
fn full_queue_and_clients_that_leave() {
    let Some(srv) = Running::start(ServeConfig {
        parallel: 1,
        queue: 1,
        ctx: 512,
        ..cfg()
    }) else {
        return;
    };
    let long = json!({"prompt": "Hello", "max_tokens": 400, "temperature": 0, "stream": true});
    // Occupy the slot with a stream we read one event of, then drop.
    let resp = ureq::post(&format!("{}/v1/completions", srv.url))
        .send_json(long.clone())
        .unwrap();
    let mut lines = std::io::BufReader::new(resp.into_reader()).lines();
    assert!(lines.next().unwrap().unwrap().starts_with("data: "));
    assert_eq!(srv.metric("bitnet_active_slots"), 1.0);
    // The queue takes one more; the next is refused.
    let queued = std::thread::spawn({
        let url = srv.url.clone();
        move || {
            ureq::post(&format!("{url}/v1/completions"))
                .send_json(json!({"prompt": "Hi", "max_tokens": 2}))
                .map(|r| r.status())
                .unwrap_or(0)
        }
    });
    let t = Instant::now();
    while srv.metric("bitnet_queue_depth") < 1.0 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    match ureq::post(&format!("{}/v1/completions", srv.url)).send_json(json!({"prompt": "Hi"})) {
        Err(ureq::Error::Status(503, r)) => {
            assert_eq!(r.header("Retry-After"), Some("1"));
            let v: Value = r.into_json().unwrap();
            assert!(v["error"]["message"].as_str().unwrap().contains("busy"));
        }
        other => panic!("expected 503, got {:?}", other.map(|r| r.status())),
    }
    // The streaming client leaves: its slot frees and the queued request runs.
    drop(lines);
    assert_eq!(queued.join().unwrap(), 200);
    let t = Instant::now();
    while srv.metric("bitnet_active_slots") > 0.0 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(srv.metric("bitnet_active_slots"), 0.0);
    assert!(srv.metric("bitnet_requests_finished_total{how=\"client_gone\"}") >= 1.0);
    assert!(
        srv.metric("bitnet_generated_tokens_total") < 400.0,
        "the left request stopped early"
    );
    srv.shutdown();
}

/// Many requests leave nothing behind; shutdown finishes an accepted stream.
#[test]
fn many_requests_then_a_draining_shutdown() {
    let Some(srv) = Running::start(cfg()) else {
        return;
    };
    std::thread::scope(|sc| {
        for _ in 0..4 {
            sc.spawn(|| {
                for i in 0..25 {
                    let (st, _) = srv.post(
                        "/v1/completions",
                        &json!({"prompt": format!("Request {i}"), "max_tokens": 3}),
                    );
                    assert_eq!(st, 200);
                }
            });
        }
    });
    assert_eq!(srv.metric("bitnet_active_slots"), 0.0);
    assert_eq!(srv.metric("bitnet_queue_depth"), 0.0);
    assert_eq!(srv.metric("bitnet_requests_total{outcome=\"ok\"}"), 100.0);
    // A stream in flight when shutdown begins still ends properly.
    let resp = ureq::post(&format!("{}/v1/completions", srv.url))
        .send_json(json!({"prompt": "Hello", "max_tokens": 40, "stream": true}))
        .unwrap();
    let reader = std::thread::spawn(move || {
        std::io::BufReader::new(resp.into_reader())
            .lines()
            .map(|l| l.unwrap())
            .filter(|l| l.starts_with("data: "))
            .collect::<Vec<_>>()
    });
    std::thread::sleep(Duration::from_millis(50));
    srv.shutdown();
    let lines = reader.join().unwrap();
    assert_eq!(lines.last().map(String::as_str), Some("data: [DONE]"));
    let last: Value = serde_json::from_str(&lines[lines.len() - 2][6..]).unwrap();
    assert_eq!(last["usage"]["completion_tokens"], 40);
}

/// A server whose KV caches cannot be had says so instead of starting.
#[test]
fn an_impossible_context_is_an_error_at_start() {
    let Some(dir) = crate::testdata_dir() else {
        return;
    };
    let model = Model::load(dir.join("bitnet-tiny.gguf")).unwrap();
    let err = serve(
        model,
        ServeConfig {
            port: 0,
            ctx: 1 << 40,
            parallel: 2,
            ..cfg()
        },
        async {},
        |_| panic!("it must not listen"),
    )
    .unwrap_err();
    assert!(err.message.contains("too large"), "{err}");
}

mod endpoints;
mod logprobs;
mod structured;
