//! Structured output: `response_format` json_object and json_schema (and
//! llama-server's `json_schema`), over many seeds; every text parses and
//! validates.

use super::*;

/// The schema of the chat tests, and a check of a value against it.
fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "color": {"enum": ["red", "green", "blue"]},
            "count": {"type": "integer"},
            "ok": {"type": "boolean"},
            "sizes": {"type": "array", "items": {"type": "number"}, "maxItems": 3},
            "inner": {"type": "object", "properties": {"x": {"type": "null"}}, "required": ["x"], "additionalProperties": false},
        },
        "required": ["color", "count", "ok", "inner"],
        "additionalProperties": false,
    })
}

fn valid(v: &Value) -> std::result::Result<(), String> {
    let o = v.as_object().ok_or("not an object")?;
    for k in o.keys() {
        if !["color", "count", "ok", "sizes", "inner"].contains(&k.as_str()) {
            return Err(format!("unknown key {k}"));
        }
    }
    if !["red", "green", "blue"].contains(&o.get("color").and_then(Value::as_str).ok_or("color")?) {
        return Err("color".into());
    }
    if !(o.get("count").ok_or("count")?.is_i64() || o["count"].is_u64()) {
        return Err("count".into());
    }
    o.get("ok").and_then(Value::as_bool).ok_or("ok")?;
    if let Some(s) = o.get("sizes") {
        let s = s.as_array().ok_or("sizes")?;
        if s.len() > 3 || !s.iter().all(Value::is_number) {
            return Err("sizes".into());
        }
    }
    let inner = o.get("inner").and_then(Value::as_object).ok_or("inner")?;
    if inner.len() != 1 || !inner.get("x").is_some_and(Value::is_null) {
        return Err("inner".into());
    }
    Ok(())
}

#[test]
fn json_schema_outputs_parse_and_validate() {
    let Some(srv) = start(cfg()) else { return };
    let rf = json!({"type": "json_schema", "json_schema": {"name": "thing", "strict": true, "schema": schema()}});
    for seed in 0..6 {
        let body = json!({"messages": [{"role": "user", "content": "A thing, as JSON"}], "max_tokens": 200, "seed": seed, "temperature": 1.0, "response_format": rf});
        let (st, v) = srv.post("/v1/chat/completions", &body);
        assert_eq!(st, 200, "{v}");
        let c = &v["choices"][0];
        assert_eq!(c["finish_reason"], "stop", "seed {seed}: {v}");
        let text = c["message"]["content"].as_str().unwrap();
        let parsed: Value =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("seed {seed}: {e}: {text:?}"));
        valid(&parsed).unwrap_or_else(|e| panic!("seed {seed}: {e}: {text}"));
    }
    // Streamed, the same text.
    let body = json!({"messages": [{"role": "user", "content": "A thing"}], "max_tokens": 200, "seed": 3, "temperature": 0.7, "response_format": rf});
    let (_, whole) = srv.post("/v1/chat/completions", &body);
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let text: String = srv
        .stream("/v1/chat/completions", &sbody)
        .iter()
        .filter_map(|e| {
            e["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(
        text,
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );

    // llama-server's json_schema field on completions: a top-level array.
    let arr = json!({"type": "array", "items": {"enum": ["a", "b", 1, true]}, "minItems": 1, "maxItems": 4});
    for seed in 0..8 {
        let (st, v) = srv.post(
            "/v1/completions",
            &json!({"prompt": "List:", "max_tokens": 100, "seed": seed, "json_schema": arr}),
        );
        assert_eq!(st, 200, "{v}");
        let text = v["choices"][0]["text"].as_str().unwrap();
        let parsed: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
        let items = parsed.as_array().unwrap();
        assert!((1..=4).contains(&items.len()), "{text}");
        assert!(
            items
                .iter()
                .all(|i| [json!("a"), json!("b"), json!(1), json!(true)].contains(i)),
            "{text}"
        );
    }
    srv.shutdown();
}

/// `json_object`: an object whenever the text ended by itself (a random
/// model may run a string to max_tokens).
#[test]
fn json_object_outputs_parse() {
    let Some(srv) = start(cfg()) else { return };
    let mut stopped = 0;
    for seed in 0..6 {
        let (st, v) = srv.post(
            "/v1/completions",
            &json!({"prompt": "{", "max_tokens": 80, "seed": seed, "temperature": 0.8, "response_format": {"type": "json_object"}}),
        );
        assert_eq!(st, 200, "{v}");
        let c = &v["choices"][0];
        let text = c["text"].as_str().unwrap();
        if c["finish_reason"] == "stop" {
            stopped += 1;
            let parsed: Value =
                serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
            assert!(parsed.is_object(), "{text}");
        } else {
            assert!(text.trim_start().starts_with('{'), "{text:?}");
        }
    }
    assert!(stopped > 0, "no text ended by itself");
    srv.shutdown();
}

#[test]
fn bad_response_formats() {
    let Some(srv) = start(cfg()) else { return };
    for (rf, needle) in [
        (json!({"type": "xml"}), "xml"),
        (json!({}), "needs a type"),
        (json!({"type": "json_schema"}), "json_schema.schema"),
        (
            json!({"type": "json_schema", "json_schema": {"schema": {"type": "string", "pattern": "a+"}}}),
            "pattern",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"schema": {"type": "thing"}}}),
            "thing",
        ),
    ] {
        let (st, v) = srv.post(
            "/v1/completions",
            &json!({"prompt": "x", "response_format": rf}),
        );
        assert_eq!(st, 400, "{rf}: {v}");
        assert_eq!(v["error"]["param"], "response_format");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{v}"
        );
    }
    srv.shutdown();
}
