//! Step *record*: after known traffic, `/metrics` holds the expected series with the expected
//! counts and exact sums (paused time), passes `promtool check metrics`, and the JSONL log has
//! one line per request with no prompt text.

mod support;

use std::time::Duration;

use http::StatusCode;
use servelens::replay::{ReplayServer, Script};
use support::{config_from, get, metric, post, TestGateway};

const CONFIG: &str = r#"
    [pools.a]
    framework = "vllm"
    backends = [{ name = "b0", url = "BACKEND" }]
    [[routes]]
    model = "m"
    pool = "a"
"#;

async fn backend() -> ReplayServer {
    let stream = support::fixtures::read("vllm_chat_stream_usage.sse");
    let nonstream = support::fixtures::read("vllm_chat_nonstream.response.json");
    ReplayServer::spawn(move |req| {
        if req.body.windows(13).any(|w| w == br#""stream":true"#) {
            Script::sse(
                &stream,
                Duration::from_millis(100),
                Duration::from_millis(20),
            )
        } else {
            Script::json(
                StatusCode::OK,
                nonstream.clone(),
                Duration::from_millis(300),
            )
        }
    })
    .await
    .expect("backend")
}

const STREAM_BODY: &str = r#"{"model":"m","messages":[{"role":"user","content":"SECRET-PROMPT"}],"stream":true,"stream_options":{"include_usage":true}}"#;

#[tokio::test(start_paused = true)]
async fn metrics_after_known_traffic() {
    let backend = backend().await;
    let mut gw = TestGateway::start(config_from(&CONFIG.replace("BACKEND", &backend.url()))).await;
    for _ in 0..3 {
        let (status, _, _) = post(&gw.url("/v1/chat/completions"), STREAM_BODY).await;
        assert_eq!(status, StatusCode::OK);
        gw.record().await;
    }
    let (status, _, _) = post(
        &gw.url("/v1/chat/completions"),
        r#"{"model":"m","messages":[]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let nonstream = gw.record().await;
    let (status, _, _) = post(&gw.url("/v1/chat/completions"), r#"{"model":"other"}"#).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    gw.record().await;

    let page = gw.metrics().await;
    let series = [
        ("route", "m"),
        ("pool", "a"),
        ("backend", "b0"),
        ("endpoint", "chat_completions"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
        series.iter().chain(extra).copied().collect()
    };
    let m = |name: &str, labels: &[(&str, &str)]| metric(&page, name, labels);

    assert_eq!(
        m(
            "servelens_requests_total",
            &with(&[("stream", "true"), ("outcome", "completed")])
        ),
        3.0
    );
    assert_eq!(
        m(
            "servelens_requests_total",
            &with(&[("stream", "false"), ("outcome", "completed")])
        ),
        1.0
    );
    assert_eq!(
        m("servelens_requests_total", &[("outcome", "rejected")]),
        1.0
    );
    assert_eq!(
        m("servelens_errors_total", &[("kind", "unknown_model")]),
        1.0
    );

    // The fixture: role chunk, then 5 content events; TTFT = 100 + 20 ms, 4 ITL gaps of 20 ms.
    assert_eq!(
        m("servelens_time_to_first_token_seconds_count", &series),
        3.0
    );
    assert!((m("servelens_time_to_first_token_seconds_sum", &series) - 3.0 * 0.12).abs() < 1e-9);
    assert_eq!(
        m(
            "servelens_time_to_first_token_seconds_bucket",
            &with(&[("le", "0.1")])
        ),
        0.0
    );
    assert_eq!(
        m(
            "servelens_time_to_first_token_seconds_bucket",
            &with(&[("le", "0.25")])
        ),
        3.0
    );
    assert_eq!(
        m("servelens_inter_token_latency_seconds_count", &series),
        12.0
    );
    assert!((m("servelens_inter_token_latency_seconds_sum", &series) - 12.0 * 0.02).abs() < 1e-9);
    assert_eq!(
        m("servelens_time_to_first_byte_seconds_count", &series),
        4.0
    );
    assert_eq!(
        m("servelens_time_per_output_token_seconds_count", &series),
        3.0
    );
    assert_eq!(m("servelens_request_duration_seconds_count", &series), 4.0);

    let nonstream_tokens = nonstream.measurements.output_tokens.expect("usage in body");
    assert_eq!(
        m("servelens_output_tokens_total", &series),
        (3 * 8 + nonstream_tokens) as f64
    );
    let nonstream_prompt = nonstream.measurements.prompt_tokens.expect("usage in body");
    assert_eq!(
        m("servelens_prompt_tokens_total", &series),
        (3 * 42 + nonstream_prompt) as f64
    );
    assert_eq!(m("servelens_inflight_requests", &[("backend", "b0")]), 0.0);
    assert_eq!(
        m("servelens_backend_up", &[("backend", "b0"), ("pool", "a")]),
        1.0
    );
    assert_eq!(m("servelens_build_info", &[]), 1.0);
    // Three requests with a prompt hash to their replica; `messages: []` has no key.
    assert_eq!(
        m(
            "servelens_route_decisions_total",
            &[("pool", "a"), ("decision", "affinity")]
        ),
        3.0
    );
    assert_eq!(
        m(
            "servelens_route_decisions_total",
            &[("pool", "a"), ("decision", "fallback")]
        ),
        1.0
    );
    for name in [
        "servelens_time_to_first_token_seconds",
        "servelens_inter_token_latency_seconds",
        "servelens_request_duration_seconds",
    ] {
        assert!(
            page.contains(&format!("# TYPE {name} histogram")),
            "{name} is a histogram"
        );
    }
    assert!(!page.contains("SECRET"), "no client text in labels");
    support::lint_with_promtool(&page);
}

#[tokio::test]
async fn jsonl_log_has_one_line_per_request_and_no_prompt() {
    let backend = backend().await;
    let dir = std::env::temp_dir().join(format!("servelens-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join("requests.jsonl");
    let _ = std::fs::remove_file(&path);
    let mut config = config_from(&CONFIG.replace("BACKEND", &backend.url()));
    config.log.requests = Some(path.clone());
    let mut gw = TestGateway::start(config).await;
    for _ in 0..2 {
        post(&gw.url("/v1/chat/completions"), STREAM_BODY).await;
        gw.record().await;
    }
    post(&gw.url("/v1/chat/completions"), r#"{"model":"unknown"}"#).await;
    let last = gw.record().await;

    gw.running.gateway.telemetry().log_flushed().await;
    let text = std::fs::read_to_string(&path).expect("log written");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["outcome"], "completed");
    assert_eq!(lines[0]["backend"], "b0");
    assert_eq!(lines[0]["output_tokens"], 8);
    assert_eq!(lines[0]["itl_s"].as_array().map(Vec::len), Some(4));
    assert!(lines[0]["ttft_s"].as_f64().is_some_and(|t| t > 0.0));
    assert_eq!(lines[2]["outcome"], "rejected");
    assert_eq!(lines[2]["error"], "unknown_model");
    assert_eq!(lines[2]["request_id"], last.request_id.as_str());
    assert!(!text.contains("SECRET"), "prompt text never logged");
    let _ = get(&format!("{}/healthz", gw.running.admin_url())).await;
}
