//! llama-server's own endpoints: `/health` while loading, ready and with
//! no slot free; `/props`; `/slots`; llama.cpp's metric names.

use super::*;

fn get(srv: &Running, path: &str) -> (u16, Value) {
    let resp = match ureq::get(&format!("{}{path}", srv.url)).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    (resp.status(), resp.into_json().unwrap())
}

/// Health while the model loads (503 "Loading model", every endpoint),
/// then ok; a model that fails to load ends the server with its error.
#[test]
fn health_while_loading_then_ready() {
    let Some(dir) = crate::testdata_dir() else {
        eprintln!("SKIPPED server tests: ../shared/testdata not found");
        return;
    };
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (atx, arx) = std::sync::mpsc::channel();
    let path = dir.join("bitnet-tiny.gguf");
    let thread = std::thread::spawn(move || {
        serve_loading(
            move || {
                go_rx.recv().unwrap();
                Model::load(path)
            },
            ServeConfig { port: 0, ..cfg() },
            async move {
                let _ = stop_rx.await;
            },
            move |a| atx.send(a).unwrap(),
        )
    });
    let addr: SocketAddr = arx.recv_timeout(Duration::from_secs(60)).unwrap();
    let srv = Running {
        url: format!("http://{addr}"),
        stop: Some(stop_tx),
        thread: Some(thread),
    };
    let loading =
        json!({"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}});
    assert_eq!(get(&srv, "/health"), (503, loading.clone()));
    let (st, v) = srv.post("/v1/completions", &json!({"prompt": "Hi"}));
    assert_eq!((st, v), (503, loading));
    go_tx.send(()).unwrap();
    let t = Instant::now();
    while get(&srv, "/health").0 != 200 {
        assert!(t.elapsed() < Duration::from_secs(60), "never ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (st, v) = srv.post("/v1/completions", &json!({"prompt": "Hi", "max_tokens": 2}));
    assert_eq!(st, 200, "{v}");
    srv.shutdown();

    let err = serve_loading(
        || Err(crate::Error::invalid("no such model")),
        ServeConfig { port: 0, ..cfg() },
        std::future::pending(),
        |_| {},
    )
    .unwrap_err();
    assert!(err.message.contains("no such model"), "{err}");
}

/// Health with slots free and with none (`fail_on_no_slot`), `/slots`
/// while a request runs, `/props`, and the llama.cpp metrics moving.
#[test]
fn health_slots_props_and_metrics() {
    let Some(srv) = start(ServeConfig {
        parallel: 1,
        ..cfg()
    }) else {
        return;
    };
    assert_eq!(
        get(&srv, "/health"),
        (
            200,
            json!({"slots_idle": 1, "slots_processing": 0, "status": "ok"})
        )
    );
    let (st, props) = get(&srv, "/props");
    assert_eq!(st, 200);
    assert_eq!(props["total_slots"], 1);
    assert_eq!(props["default_generation_settings"]["n_ctx"], 1024);
    assert_eq!(props["eos_token"], "<|end_of_text|>");
    let (_, slots) = get(&srv, "/slots");
    assert_eq!(slots.as_array().unwrap().len(), 1);
    assert_eq!(slots[0]["is_processing"], false);
    assert_eq!(slots[0]["n_ctx"], 1024);

    // A long request holds the one slot.
    std::thread::scope(|sc| {
        let long = sc.spawn(|| {
            srv.post(
                "/v1/completions",
                &json!({"prompt": CAPITAL, "max_tokens": 400, "temperature": 0}),
            )
        });
        let t = Instant::now();
        loop {
            let (_, slots) = get(&srv, "/slots");
            if slots[0]["is_processing"] == true && slots[0]["n_decoded"].as_u64() > Some(0) {
                assert_eq!(slots[0]["n_prompt_tokens"], 6);
                assert!(slots[0]["id_task"].as_i64() > Some(0));
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "{slots}");
            std::thread::sleep(Duration::from_millis(5));
        }
        let (st, v) = get(&srv, "/health?fail_on_no_slot=1");
        assert_eq!(
            (st, v),
            (
                503,
                json!({"slots_idle": 0, "slots_processing": 1, "status": "no slot available"})
            )
        );
        assert_eq!(get(&srv, "/health").0, 200);
        assert_eq!(srv.metric("llamacpp:requests_processing"), 1.0);
        assert_eq!(long.join().unwrap().0, 200);
    });
    let (_, slots) = get(&srv, "/slots");
    assert_eq!(slots[0]["is_processing"], false);
    assert_eq!(slots[0]["n_decoded"], 400);
    // (the last token generated is not fed)
    assert_eq!(slots[0]["n_past"], 405);
    assert_eq!(srv.metric("llamacpp:prompt_tokens_total"), 6.0);
    assert_eq!(srv.metric("llamacpp:tokens_predicted_total"), 400.0);
    assert_eq!(srv.metric("llamacpp:n_decode_total"), 400.0);
    assert_eq!(srv.metric("llamacpp:n_busy_slots_per_decode"), 1.0);
    assert_eq!(srv.metric("llamacpp:kv_cache_tokens"), 405.0);
    assert!(srv.metric("llamacpp:predicted_tokens_seconds") > 0.0);
    assert!(srv.metric("llamacpp:prompt_seconds_total") > 0.0);
    assert_eq!(srv.metric("llamacpp:requests_processing"), 0.0);
    srv.shutdown();
}
