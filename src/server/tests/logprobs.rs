//! Log-probabilities over HTTP (completions with `echo` as
//! lm-evaluation-harness asks for them, chat's `top_logprobs`, streamed
//! and whole) against the log-softmax of a session's own logits, and
//! prompt prefix reuse.

use super::*;

/// The log-softmax of the logits after each of `tokens` (teacher forced),
/// from a session as `bitnet eval` runs it.
fn reference(tokens: &[u32]) -> Vec<Vec<f64>> {
    let dir = crate::testdata_dir().unwrap();
    let model = Model::load(dir.join("bitnet-tiny.gguf")).unwrap();
    let mut s = Session::new(&model, 256, 64, 2).unwrap();
    let mut out = Vec::new();
    s.forward_all(tokens, &mut |_, logits| {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let z: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
        out.push(logits.iter().map(|&l| l as f64 - max - z.ln()).collect());
    })
    .unwrap();
    out
}

fn argmax(v: &[f64]) -> u32 {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
        .unwrap()
        .0 as u32
}

fn close(got: &Value, want: f64) {
    let g = got
        .as_f64()
        .unwrap_or_else(|| panic!("{got} is not a number"));
    assert!((g - want).abs() < 1e-4, "{g} against {want}");
}

const PROMPT: [u32; 9] = [128000, 791, 6864, 315, 9822, 374, 12366, 13, 578];

/// lm-evaluation-harness's loglikelihood request: token ids, `echo`,
/// `logprobs: 1`, `max_tokens: 1`; each prompt token's log-probability
/// (the first null) is the log-softmax of the logits before it, and the
/// generated token is the greedy one with its own.
#[test]
fn echo_gives_the_prompts_log_probabilities() {
    let Some(srv) = start(cfg()) else { return };
    let want = reference(&PROMPT);
    let body = json!({"prompt": PROMPT, "max_tokens": 1, "logprobs": 1, "echo": true, "temperature": 0, "seed": 1234});
    let (st, v) = srv.post("/v1/completions", &body);
    assert_eq!(st, 200, "{v}");
    let c = &v["choices"][0];
    let lp = &c["logprobs"];
    let n = PROMPT.len();
    let (tokens, values, tops, offsets) = (
        lp["tokens"].as_array().unwrap(),
        lp["token_logprobs"].as_array().unwrap(),
        lp["top_logprobs"].as_array().unwrap(),
        lp["text_offset"].as_array().unwrap(),
    );
    assert_eq!(tokens.len(), n + 1, "{lp}");
    assert_eq!(
        (values.len(), tops.len(), offsets.len()),
        (n + 1, n + 1, n + 1)
    );
    assert!(values[0].is_null() && tops[0].is_null(), "{lp}");
    for i in 1..n {
        close(&values[i], want[i - 1][PROMPT[i] as usize]);
        let top = tops[i].as_object().unwrap();
        assert_eq!(top.len(), 1, "{top:?}");
        close(
            top.values().next().unwrap(),
            want[i - 1][argmax(&want[i - 1]) as usize],
        );
    }
    // The generated token: the greedy one after the prompt.
    let g = argmax(&want[n - 1]);
    close(&values[n], want[n - 1][g as usize]);
    assert_eq!(
        values[n],
        *tops[n].as_object().unwrap().values().next().unwrap()
    );
    // The text is the prompt's then the generated token's, at the offsets.
    let text = c["text"].as_str().unwrap();
    let chars = text.chars().count() as u64;
    for i in 1..=n {
        let (a, b) = (
            offsets[i - 1].as_u64().unwrap(),
            offsets[i].as_u64().unwrap(),
        );
        assert!(a <= b && b <= chars, "{offsets:?}");
    }
    assert!(text.ends_with(tokens[n].as_str().unwrap()), "{text:?} {lp}");
    assert_eq!(v["usage"]["prompt_tokens"], n);
    assert_eq!(v["usage"]["completion_tokens"], 1);

    // What lm_eval's parse_logprobs reads, for several prompts in one
    // request, equals each prompt alone.
    let short = &PROMPT[..5];
    let many = json!({"prompt": [PROMPT.to_vec(), short.to_vec()], "max_tokens": 1, "logprobs": 1, "echo": true, "temperature": 0});
    let (st, m) = srv.post("/v1/completions", &many);
    assert_eq!(st, 200, "{m}");
    let choices = m["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert_eq!(choices[0]["index"], 0);
    assert_eq!(choices[1]["index"], 1);
    assert_eq!(choices[0]["logprobs"], *lp);
    let alone = srv
        .post(
            "/v1/completions",
            &json!({"prompt": short, "max_tokens": 1, "logprobs": 1, "echo": true, "temperature": 0}),
        )
        .1;
    assert_eq!(choices[1]["logprobs"], alone["choices"][0]["logprobs"]);
    assert_eq!(m["usage"]["prompt_tokens"], n + 5);

    // max_tokens 0 with echo: the prompt alone.
    let (st, z) = srv.post(
        "/v1/completions",
        &json!({"prompt": PROMPT, "max_tokens": 0, "logprobs": 0, "echo": true}),
    );
    assert_eq!(st, 200, "{z}");
    let zl = &z["choices"][0]["logprobs"];
    assert_eq!(zl["tokens"].as_array().unwrap().len(), n);
    assert_eq!(zl["token_logprobs"].as_array().unwrap()[..], values[..n]);
    assert!(zl["top_logprobs"][1].as_object().unwrap().is_empty());
    assert_eq!(z["choices"][0]["finish_reason"], "length");
    assert_eq!(z["usage"]["completion_tokens"], 0);

    // Echo without logprobs: the prompt's text in front, no log-probabilities.
    let (_, e) = srv.post(
        "/v1/completions",
        &json!({"prompt": CAPITAL, "max_tokens": 3, "echo": true, "temperature": 0}),
    );
    let t = e["choices"][0]["text"].as_str().unwrap();
    assert_eq!(t, format!("{CAPITAL}{}", greedy_text(CAPITAL, 3)));
    assert!(e["choices"][0]["logprobs"].is_null());
    srv.shutdown();
}

/// Chat `logprobs` with `top_logprobs`: one entry per generated token, the
/// greedy token first among its alternatives, whole and streamed alike.
#[test]
fn chat_logprobs_whole_and_streamed() {
    let Some(srv) = start(cfg()) else { return };
    let mut body = chat_request();
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(3);
    let (st, v) = srv.post("/v1/chat/completions", &body);
    assert_eq!(st, 200, "{v}");
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 6, "{v}");
    let mut text = String::new();
    for e in content {
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(top[0]["token"], e["token"], "greedy: {e}");
        assert_eq!(top[0]["logprob"], e["logprob"]);
        assert!(top[0]["logprob"].as_f64() >= top[1]["logprob"].as_f64());
        assert!(e["logprob"].as_f64().unwrap() <= 0.0);
        let bytes: Vec<u8> = e["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            e["token"].as_str().unwrap()
        );
        text.push_str(e["token"].as_str().unwrap());
    }
    assert_eq!(
        text,
        v["choices"][0]["message"]["content"].as_str().unwrap()
    );
    body["stream"] = json!(true);
    let events = srv.stream("/v1/chat/completions", &body);
    let streamed: Vec<Value> = events
        .iter()
        .filter_map(|e| e["choices"][0]["logprobs"]["content"].as_array())
        .flatten()
        .cloned()
        .collect();
    assert_eq!(streamed, *content);
    // Without logprobs, null.
    let (_, plain) = srv.post("/v1/chat/completions", &chat_request());
    assert!(plain["choices"][0]["logprobs"].is_null());
    srv.shutdown();
}

/// A streamed completion's log-probabilities, chunk by chunk, are the
/// whole one's.
#[test]
fn completion_logprobs_streamed() {
    let Some(srv) = start(cfg()) else { return };
    let body =
        json!({"prompt": PROMPT, "max_tokens": 8, "logprobs": 2, "echo": true, "temperature": 0});
    let (_, whole) = srv.post("/v1/completions", &body);
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let events = srv.stream("/v1/completions", &sbody);
    let mut got =
        json!({"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []});
    let mut text = String::new();
    for e in &events {
        let c = &e["choices"][0];
        text.push_str(c["text"].as_str().unwrap());
        if let Some(lp) = c["logprobs"].as_object() {
            for k in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
                let more = lp[k].as_array().unwrap().clone();
                got[k].as_array_mut().unwrap().extend(more);
            }
        }
    }
    let w = &whole["choices"][0];
    assert_eq!(text, w["text"].as_str().unwrap());
    assert_eq!(got, w["logprobs"]);
    srv.shutdown();
}

#[test]
fn bad_logprob_fields() {
    let Some(srv) = start(cfg()) else { return };
    let hi = json!([{"role": "user", "content": "Hi"}]);
    let cases = [
        (
            "/v1/chat/completions",
            json!({"messages": hi, "top_logprobs": 2}),
            "top_logprobs",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": hi, "logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
        ),
        (
            "/v1/completions",
            json!({"prompt": "Hi", "logprobs": -1}),
            "logprobs",
        ),
        (
            "/v1/completions",
            json!({"prompt": "Hi", "logprobs": 99}),
            "logprobs",
        ),
        (
            "/v1/completions",
            json!({"prompt": [1, 2, 99999999]}),
            "vocabulary",
        ),
        (
            "/v1/completions",
            json!({"prompt": [[1, 2], []]}),
            "prompt 1 is empty",
        ),
        ("/v1/completions", json!({"prompt": []}), "empty"),
        (
            "/v1/completions",
            json!({"prompt": [1, -2]}),
            "invalid request body",
        ),
        (
            "/v1/completions",
            json!({"prompt": "Hi", "echo": "yes"}),
            "invalid request body",
        ),
    ];
    for (path, body, needle) in cases {
        let (st, v) = srv.post(path, &body);
        assert_eq!(st, 400, "{body}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    srv.shutdown();
}

/// A request that starts with a prompt already in a free slot's cache
/// reads only the rest (in whole chunks), and its tokens are those of a
/// cold start.
#[test]
fn a_shared_prefix_is_read_once() {
    let Some(srv) = start(ServeConfig {
        parallel: 2,
        chunk: 16,
        ..cfg()
    }) else {
        return;
    };
    let prefix: Vec<u32> = (0..70u32).map(|i| 1000 + i * 7).collect();
    let with = |tail: &[u32]| [prefix.as_slice(), tail].concat();
    let body = |p: &[u32], cache: bool| json!({"prompt": p, "max_tokens": 6, "temperature": 0, "logprobs": 1, "cache_prompt": cache});
    let first = with(&[5, 6, 7]);
    let second = with(&[8, 9]);
    let reused = || srv.metric("bitnet_prompt_tokens_reused_total");
    let cold = srv.post("/v1/completions", &body(&second, false)).1;
    assert_eq!(reused(), 0.0);
    // 70 common tokens, 64 of them in whole chunks of 16.
    let _ = srv.post("/v1/completions", &body(&first, true));
    assert_eq!(reused(), 64.0);
    let warm = srv.post("/v1/completions", &body(&second, true)).1;
    assert_eq!(reused(), 128.0);
    assert_eq!(warm["choices"], cold["choices"]);
    // Its own prompt again: the same whole chunks (the last token is read
    // again for its logits).
    let again = srv.post("/v1/completions", &body(&second, true)).1;
    assert_eq!(reused(), 192.0);
    assert_eq!(again["choices"], cold["choices"]);
    // Without cache_prompt, nothing reused.
    let _ = srv.post("/v1/completions", &body(&first, false));
    assert_eq!(reused(), 192.0);
    srv.shutdown();
}
