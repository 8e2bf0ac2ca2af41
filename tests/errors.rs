//! Steps *parse*, *route* and *forward* failing: every failure is an OpenAI-shaped JSON error
//! with the right status, is recorded once with its outcome, and never takes the gateway down.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use servelens::error::ErrorKind;
use servelens::proxy::{Gateway, GatewayService};
use servelens::replay::{ReplayServer, Script};
use servelens::telemetry::{Outcome, Telemetry};
use support::{config_for, config_from, get, metric, post, TestGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tower::ServiceExt;

fn assert_openai_error(body: &Bytes, code: &str) {
    let v: serde_json::Value = serde_json::from_slice(body).expect("error body is JSON");
    let error = &v["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    assert!(error["type"].is_string(), "{v}");
    assert_eq!(error["code"], code, "{v}");
}

const NAMED: &str = r#"
    [server]
    max_request_bytes = 1024
    [pools.a]
    framework = "vllm"
    backends = ["http://127.0.0.1:9"]
    [pools.empty]
    framework = "sglang"
    [[routes]]
    model = "known"
    pool = "a"
    [[routes]]
    model = "nobody-serves-this"
    pool = "empty"
"#;

#[tokio::test]
async fn refusals_have_the_right_status_and_shape() {
    let mut gw = TestGateway::start(config_from(NAMED)).await;
    let chat = gw.url("/v1/chat/completions");
    let cases: Vec<(String, &str, StatusCode, &str, ErrorKind)> = vec![
        (
            chat.clone(),
            r#"{"model":"gpt-9","messages":[]}"#,
            StatusCode::NOT_FOUND,
            "model_not_found",
            ErrorKind::UnknownModel,
        ),
        (
            chat.clone(),
            r#"{"model":"known","messages":["#,
            StatusCode::BAD_REQUEST,
            "bad_json",
            ErrorKind::BadJson,
        ),
        (
            chat.clone(),
            r#"[1,2,3]"#,
            StatusCode::BAD_REQUEST,
            "bad_json",
            ErrorKind::BadJson,
        ),
        (
            chat.clone(),
            r#"{"messages":[]}"#,
            StatusCode::BAD_REQUEST,
            "missing_model",
            ErrorKind::MissingModel,
        ),
        (
            chat.clone(),
            r#"{"model":"nobody-serves-this"}"#,
            StatusCode::SERVICE_UNAVAILABLE,
            "no_healthy_backend",
            ErrorKind::NoHealthyBackend,
        ),
        (
            gw.url("/v1/nope"),
            "{}",
            StatusCode::NOT_FOUND,
            "not_found",
            ErrorKind::NotFound,
        ),
    ];
    for (url, body, status, code, kind) in cases {
        let (got, headers, bytes) = post(&url, body.to_string()).await;
        assert_eq!(got, status, "{body}");
        assert_eq!(headers["content-type"], "application/json");
        assert_openai_error(&bytes, code);
        let record = gw.record().await;
        assert_eq!(record.error, Some(kind));
        assert_eq!(record.outcome, Outcome::Rejected);
        assert_eq!(record.status, status.as_u16());
    }
    let big = format!(r#"{{"model":"known","prompt":"{}"}}"#, "x".repeat(2048));
    let (status, _, bytes) = post(&gw.url("/v1/completions"), big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_openai_error(&bytes, "body_too_large");
    let (status, _, bytes) = get(&gw.url("/v1/chat/completions")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_openai_error(&bytes, "method_not_allowed");

    let page = gw.metrics().await;
    assert_eq!(
        metric(&page, "servelens_errors_total", &[("kind", "bad_json")]),
        2.0
    );
    assert_eq!(
        metric(
            &page,
            "servelens_errors_total",
            &[("kind", "unknown_model")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &page,
            "servelens_requests_total",
            &[("outcome", "rejected")]
        ),
        8.0
    );
}

#[tokio::test]
async fn connect_failure_is_502() {
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let mut gw = TestGateway::start(config_for(&[url])).await;
    let (status, _, body) = post(&gw.url("/v1/chat/completions"), r#"{"model":"m"}"#).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_openai_error(&body, "backend_connect");
    let record = gw.record().await;
    assert_eq!(record.outcome, Outcome::UpstreamError);
    assert_eq!(record.error, Some(ErrorKind::BackendConnect));
    assert!(
        !record.labels.backend.is_empty(),
        "the failing backend is named"
    );
}

/// A backend that accepts, reads the request, and never answers.
async fn silent_backend() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            held.push(socket);
        }
    });
    url
}

#[tokio::test(start_paused = true)]
async fn no_response_head_within_first_byte_is_504() {
    let mut config = config_for(&[silent_backend().await]);
    config.timeouts.first_byte = Duration::from_secs(7);
    let mut gw = TestGateway::start(config).await;
    let (status, _, body) = post(
        &gw.url("/v1/chat/completions"),
        r#"{"model":"m","stream":true}"#,
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_openai_error(&body, "timeout");
    let record = gw.record().await;
    assert_eq!(record.outcome, Outcome::Timeout);
    assert_eq!(record.measurements.e2e, Duration::from_secs(7));
}

#[tokio::test(start_paused = true)]
async fn idle_gap_mid_stream_ends_with_an_error_event() {
    let backend = ReplayServer::spawn(|_| {
        let mut script = Script::sse(
            &support::fixtures::read("vllm_chat_stream.sse"),
            Duration::from_millis(10),
            Duration::from_millis(10),
        );
        // The third event stalls for a minute.
        for (at, _) in script.pieces.iter_mut().skip(2) {
            *at += Duration::from_secs(60);
        }
        script
    })
    .await
    .expect("backend");
    let mut config = config_for(&[backend.url()]);
    config.timeouts.idle = Duration::from_secs(5);
    let mut gw = TestGateway::start(config).await;
    let (status, _, body) = post(
        &gw.url("/v1/chat/completions"),
        r#"{"model":"m","stream":true}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "the status was already sent");
    let text = String::from_utf8_lossy(&body);
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let last_event = text
        .trim_end()
        .rsplit("\n\n")
        .nth(1)
        .expect("an error event");
    let error: serde_json::Value =
        serde_json::from_str(last_event.trim_start_matches("data: ")).expect("error event JSON");
    assert_eq!(error["error"]["type"], "timeout", "{text}");
    let record = gw.record().await;
    assert_eq!(record.outcome, Outcome::Timeout);
    assert_eq!(
        record.measurements.e2e,
        Duration::from_millis(20) + Duration::from_secs(5)
    );
    backend.wait_abandoned(1).await;
}

/// A backend that starts a chunked SSE response, sends one event, then resets.
async fn resetting_backend() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let event = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n";
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{event}\r\n",
                event.len()
            );
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.set_zero_linger();
            drop(socket);
        }
    });
    url
}

#[tokio::test]
async fn upstream_reset_mid_stream_ends_with_an_error_event() {
    let mut gw = TestGateway::start(config_for(&[resetting_backend().await])).await;
    let (status, _, body) = post(
        &gw.url("/v1/chat/completions"),
        r#"{"model":"m","stream":true}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8_lossy(&body);
    assert!(text.starts_with("data: {\"choices\""), "{text}");
    assert!(text.contains("\"type\":\"upstream_error\""), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let record = gw.record().await;
    assert_eq!(record.outcome, Outcome::UpstreamError);
    assert!(record.measurements.ttft.is_some());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Any bytes on any endpoint: a 4xx JSON error or a forwarded request, never a panic or 5xx
    /// from the gateway itself (the backend here is unreachable, so forwarding yields 502).
    #[test]
    fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..300), path in 0usize..5) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let config = config_from(NAMED);
            let gateway = Arc::new(Gateway::new(&config, Arc::new(Telemetry::new(None))).expect("gateway"));
            let paths = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/generate", "/v1/models"];
            let request = Request::post(paths[path]).body(Full::new(Bytes::from(body))).expect("request");
            let response = GatewayService(gateway).oneshot(request).await.expect("infallible");
            let status = response.status();
            let bytes = response.into_body().collect().await.expect("body").to_bytes();
            prop_assert!(status.is_client_error() || status == StatusCode::BAD_GATEWAY, "status {status}");
            let v: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON error body");
            prop_assert!(v["error"]["message"].is_string());
            Ok(())
        })?;
    }
}
