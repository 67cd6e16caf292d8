//! `bitnet serve` (the OpenAI-compatible server of the library's `server`
//! module) and `bitnet loadgen`, its load generator: k concurrent streaming
//! clients on loopback, bounded in requests and time, reporting aggregate
//! generated tok/s, time to first token and per-token latency.

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bitnet_stfma::server::{self, ServeConfig};
use clap::Args;
use serde_json::{json, Value};

use crate::args::HeadArgs;
use crate::common::warn_threads;
use crate::error::{CliError, CliResult};
use crate::output::outln;

#[derive(Args)]
pub struct ServeArgs {
    /// Model: a GGUF file, or a Hugging Face checkpoint directory (converted in memory).
    #[arg(short, long)]
    model: PathBuf,
    /// Address to bind (loopback by default; 0.0.0.0 exposes the server to the network).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Concurrent sequences (slots), decoded together each step.
    #[arg(long = "parallel", visible_alias = "np", default_value_t = 4)]
    parallel: usize,
    /// KV cache positions of all slots together, split evenly (0: the model's context per slot).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 0)]
    ctx: usize,
    /// Threads (0: one per CPU).
    #[arg(short, long, default_value_t = 0)]
    threads: usize,
    /// Require `Authorization: Bearer KEY` on the API (not on /health).
    #[arg(long)]
    api_key: Option<String>,
    /// Requests waiting for a slot before new ones get 503.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Prompt tokens per request per step (long prompts are fed in chunks).
    #[arg(long, default_value_t = 64)]
    chunk: usize,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    body_limit: usize,
    /// Seconds a shutdown (SIGTERM, Ctrl-C) waits for accepted requests before cancelling them.
    #[arg(long, default_value_t = 10)]
    drain_timeout: u64,
    /// Model name for /v1/models and responses (default: the file name).
    #[arg(long)]
    alias: Option<String>,
    #[command(flatten)]
    head: HeadArgs,
}

pub fn serve(a: ServeArgs) -> CliResult {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
    warn_threads(a.threads);
    let name = a.alias.clone().unwrap_or_else(|| {
        a.model
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bitnet".into())
    });
    let cfg = ServeConfig {
        host: a.host,
        port: a.port,
        parallel: a.parallel,
        ctx: a.ctx,
        threads: a.threads,
        api_key: a.api_key,
        queue: a.queue,
        body_limit: a.body_limit,
        chunk: a.chunk,
        drain_timeout: Duration::from_secs(a.drain_timeout),
        model_name: name,
        model_path: a.model.display().to_string(),
    };
    let shutdown = async {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
    };
    // The model loads while the server listens (/health: 503 "Loading
    // model" until it is served).
    let (path, opts) = (a.model.clone(), a.head.load_options());
    let (tx, rx) = std::sync::mpsc::channel();
    let load = move || {
        crate::common::open_model(&path, opts).map_err(|e| {
            let msg = e.message().to_string();
            let _ = tx.send(e);
            bitnet_stfma::Error::invalid(msg)
        })
    };
    let served = server::serve_loading(load, cfg, shutdown, |addr| {
        eprintln!(
            "bitnet serve: listening on http://{addr} (OpenAI API under /v1); loading the model"
        );
    });
    // A model that did not load keeps its own error (and exit status).
    if let Ok(e) = rx.try_recv() {
        return Err(e);
    }
    served.map_err(|e| CliError::Other(e.to_string()))
}

#[derive(Args)]
pub struct LoadgenArgs {
    /// The server (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Concurrent streaming clients to measure, comma-separated.
    #[arg(short = 'k', long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    clients: Vec<usize>,
    /// Requests each client sends in turn.
    #[arg(short = 'r', long, default_value_t = 2)]
    requests: usize,
    /// max_tokens of each request.
    #[arg(short = 'n', long, default_value_t = 32)]
    max_tokens: usize,
    /// The endpoint: `completions` (/v1/completions, the prompt as is) or `chat`
    /// (/v1/chat/completions, the prompt as a user message). Either server's stream
    /// format is read (OpenAI's, or llama-server's own `content` / `stop` chunks).
    #[arg(long, default_value = "completions", value_parser = ["completions", "chat"])]
    endpoint: String,
    /// The prompt of each request.
    #[arg(
        short,
        long,
        default_value = "The capital of France is a city that has been known for many years as the"
    )]
    prompt: String,
    /// Give up after this many seconds in all.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    #[arg(long)]
    api_key: Option<String>,
    /// Also measure the time to first token of a request with a 32-token prompt (BOS and
    /// 31 times " the") that arrives while 7 others are decoding, against an idle server.
    #[arg(long)]
    probe: bool,
}

/// One finished streaming request.
#[derive(Debug, Default, Clone)]
struct Sample {
    ttft: f64,
    gaps: Vec<f64>,
    tokens: usize,
}

fn loopback(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default();
    let host = match rest.rfind(':') {
        Some(i) if !rest.ends_with(']') => &rest[..i],
        _ => rest,
    };
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

/// One streaming completion: time to the first text, gaps between texts,
/// tokens from the usage.
fn one(a: &LoadgenArgs, agent: &ureq::Agent, max_tokens: usize) -> Result<Sample, String> {
    one_with(a, agent, &a.prompt, max_tokens)
}

fn one_with(
    a: &LoadgenArgs,
    agent: &ureq::Agent,
    prompt: &str,
    max_tokens: usize,
) -> Result<Sample, String> {
    let t0 = Instant::now();
    let chat = a.endpoint == "chat";
    let path = if chat {
        "/v1/chat/completions"
    } else {
        "/v1/completions"
    };
    let mut req = agent.post(&format!("{}{path}", a.url));
    if let Some(k) = &a.api_key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    let mut body = json!({"max_tokens": max_tokens, "temperature": 0, "stream": true});
    if chat {
        body["messages"] = json!([{"role": "user", "content": prompt}]);
    } else {
        body["prompt"] = json!(prompt);
    }
    let resp = req.send_json(body).map_err(|e| e.to_string())?;
    let mut s = Sample::default();
    let mut last: Option<Instant> = None;
    let (mut chunks, mut ended) = (0, false);
    for line in std::io::BufReader::new(resp.into_reader()).lines() {
        let line = match line {
            Ok(l) => l,
            // (llama-server's own stream may end without a last chunk)
            Err(_) if ended || chunks > 0 => break,
            Err(e) => return Err(e.to_string()),
        };
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(data).map_err(|e| e.to_string())?;
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            s.tokens = u["completion_tokens"].as_u64().unwrap_or(0) as usize;
        }
        let c = &v["choices"][0];
        // OpenAI's completions, OpenAI's chat, llama-server's own.
        let text = c["text"]
            .as_str()
            .or_else(|| c["delta"]["content"].as_str())
            .or_else(|| v["content"].as_str())
            .unwrap_or("");
        if !text.is_empty() {
            chunks += 1;
            let now = Instant::now();
            match last {
                None => s.ttft = (now - t0).as_secs_f64(),
                Some(l) => s.gaps.push((now - l).as_secs_f64()),
            }
            last = Some(now);
        }
        if v["stop"].as_bool() == Some(true) {
            ended = true;
            if let Some(n) = v["tokens_predicted"].as_u64() {
                s.tokens = n as usize;
            }
        }
    }
    if s.tokens == 0 {
        // (no usage: a token per chunk with text, as both servers stream)
        s.tokens = chunks;
    }
    Ok(s)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// The server's resident memory from its /metrics, in MB.
fn server_rss(a: &LoadgenArgs, agent: &ureq::Agent) -> Option<f64> {
    let mut req = agent.get(&format!("{}/metrics", a.url));
    if let Some(k) = &a.api_key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    let text = req.call().ok()?.into_string().ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|b| b / 1e6)
}

/// `k` clients, each sending `requests` requests in turn.
fn round(
    a: &LoadgenArgs,
    agent: &ureq::Agent,
    k: usize,
    deadline: Instant,
) -> Result<(Vec<Sample>, f64), String> {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    let errors: Vec<String> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..k)
            .map(|_| {
                let samples = samples.clone();
                sc.spawn(move || -> Result<(), String> {
                    for _ in 0..a.requests {
                        if Instant::now() > deadline {
                            return Err("timeout".into());
                        }
                        let s = one(a, agent, a.max_tokens)?;
                        samples.lock().unwrap().push(s);
                    }
                    Ok(())
                })
            })
            .collect();
        hs.into_iter()
            .filter_map(|h| h.join().ok().and_then(|r| r.err()))
            .collect()
    });
    if let Some(e) = errors.first() {
        return Err(e.clone());
    }
    let wall = t0.elapsed().as_secs_f64();
    let s = Arc::try_unwrap(samples).unwrap().into_inner().unwrap();
    Ok((s, wall))
}

pub fn loadgen(a: LoadgenArgs) -> CliResult {
    if !loopback(&a.url) {
        return Err(CliError::Usage(format!(
            "{}: the load generator only talks to a server on loopback (127.0.0.1, localhost, [::1])",
            a.url
        )));
    }
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(a.timeout))
        .max_idle_connections_per_host(64)
        .build();
    let rss0 = server_rss(&a, &agent);
    outln!("| clients | requests | generated tok/s (all clients) | TTFT p50 ms | TTFT p99 ms | per-token p50 ms | per-token p99 ms |")?;
    outln!("|---|---|---|---|---|---|---|")?;
    for &k in &a.clients {
        let (samples, wall) = round(&a, &agent, k, deadline).map_err(CliError::Other)?;
        let tokens: usize = samples.iter().map(|s| s.tokens).sum();
        let mut ttft: Vec<f64> = samples.iter().map(|s| s.ttft * 1e3).collect();
        let mut gaps: Vec<f64> = samples
            .iter()
            .flat_map(|s| s.gaps.iter().map(|g| g * 1e3))
            .collect();
        outln!(
            "| {k} | {} | {:.1} | {:.0} | {:.0} | {:.1} | {:.1} |",
            samples.len(),
            tokens as f64 / wall,
            pct(&mut ttft, 0.5),
            pct(&mut ttft, 0.99),
            pct(&mut gaps, 0.5),
            pct(&mut gaps, 0.99)
        )?;
    }
    if a.probe {
        // Time to first token of a 32-token prompt on an idle server, then
        // while 7 streams decode.
        let probe = " the".repeat(31);
        let ttft = || -> Result<f64, String> {
            let s = one_with(&a, &agent, &probe, 2)?;
            Ok(s.ttft * 1e3)
        };
        let mut idle = (0..5)
            .map(|_| ttft())
            .collect::<Result<Vec<_>, _>>()
            .map_err(CliError::Other)?;
        let stop = std::sync::atomic::AtomicBool::new(false);
        let busy = std::thread::scope(|sc| -> Result<Vec<f64>, String> {
            let bg: Vec<_> = (0..7)
                .map(|_| {
                    sc.spawn(|| {
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            if one(&a, &agent, 64).is_err() {
                                break;
                            }
                        }
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_millis(1500));
            let r = (0..5)
                .map(|_| {
                    std::thread::sleep(Duration::from_millis(137));
                    ttft()
                })
                .collect::<Result<Vec<_>, _>>();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            for h in bg {
                let _ = h.join();
            }
            r
        })
        .map_err(CliError::Other)?;
        let mut busy = busy;
        let (i, b) = (pct(&mut idle, 0.5), pct(&mut busy, 0.5));
        outln!(
            "time to first token, 32-token prompt (medians of 5): idle {i:.0} ms, with 7 others decoding {b:.0} ms ({:.2}x)",
            b / i
        )?;
    }
    if let (Some(r0), Some(r1)) = (rss0, server_rss(&a, &agent)) {
        outln!("server RSS: {r0:.0} MB before, {r1:.0} MB after")?;
    }
    Ok(())
}
