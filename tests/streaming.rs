//! Steps *forward* and *tap* end to end: through the real gateway on loopback, every fixture
//! reaches the client byte for byte, and the recorded TTFT/ITL equal the replay schedule exactly
//! (paused tokio time), with token counts from `usage`.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use servelens::openai::{classify, Payload};
use servelens::replay::{split_events, ReplayServer, Script};
use servelens::sse::{BlockKind, Decoder};
use servelens::telemetry::Outcome;
use support::fixtures::{self, Fixture};
use support::{config_for, post, TestGateway};

const FIRST: Duration = Duration::from_millis(120);
const GAP: Duration = Duration::from_millis(17);

/// The scripted instant of every content event, read from the pieces the replay will send.
fn content_offsets(script: &Script) -> Vec<Duration> {
    let mut offsets = Vec::new();
    let mut generate_len = 0;
    for (at, piece) in &script.pieces {
        let mut decoder = Decoder::new();
        decoder.feed(piece, |block| {
            if let BlockKind::Data { name: None, data } = block.kind {
                if let Payload::Chunk(info) = classify(data) {
                    let content = match info.generate {
                        Some(g) => {
                            let grew = g.text_len > generate_len;
                            generate_len = g.text_len;
                            grew
                        }
                        None => info.content,
                    };
                    if content {
                        offsets.push(*at);
                    }
                }
            }
        });
    }
    offsets
}

fn request_body(fixture: &Fixture) -> String {
    fixture
        .request_body()
        .filter(|b| b != "null")
        .unwrap_or_else(|| r#"{"model":"m","stream":true}"#.to_string())
}

/// What the backend must receive for `body`: the same bytes, except that a stream whose client
/// left `stream_options` unset gets `"stream_options":{"include_usage":true},` spliced in first.
fn expected_upstream_body(body: &str) -> Bytes {
    let json: serde_json::Value = serde_json::from_str(body).expect("request JSON");
    let asks_stream = json["stream"] == true;
    let chat_or_completions = json.get("model").is_some();
    if asks_stream && chat_or_completions && json.get("stream_options").is_none() {
        Bytes::from(body.replacen('{', r#"{"stream_options":{"include_usage":true},"#, 1))
    } else {
        Bytes::from(body.to_string())
    }
}

fn is_error_fixture(fixture: &Fixture) -> bool {
    fixture.expected.get("error_event_index").is_some()
}

#[tokio::test(start_paused = true)]
async fn every_fixture_passes_through_byte_exact_with_exact_timings() {
    for fixture in fixtures::all() {
        let stream = fixture.sse.clone();
        let backend = ReplayServer::spawn(move |_| Script::sse(&stream, FIRST, GAP))
            .await
            .expect("backend");
        let script = Script::sse(&fixture.sse, FIRST, GAP);
        let mut gw = TestGateway::start(config_for(&[backend.url()])).await;
        let body = request_body(&fixture);

        let (status, headers, received) = post(&gw.url(fixture.endpoint()), body.clone()).await;
        let record = gw.record().await;
        let name = &fixture.name;

        assert_eq!(status, StatusCode::OK, "{name}");
        assert!(
            headers.contains_key("x-request-id"),
            "{name}: x-request-id returned"
        );
        assert_eq!(
            received,
            Bytes::from(fixture.sse.clone()),
            "{name}: bytes differ"
        );
        assert_eq!(
            posts(&backend)[0].body,
            expected_upstream_body(&body),
            "{name}: request bytes forwarded as sent (plus include_usage when the client did not decide)"
        );

        let m = &record.measurements;
        let content = content_offsets(&script);
        assert_eq!(m.ttft, content.first().copied(), "{name}: TTFT");
        let expected_itl: Vec<Duration> = content.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(m.itl, expected_itl, "{name}: ITL");
        let last = script.pieces.last().map(|(at, _)| *at);
        assert_eq!(Some(m.e2e), last, "{name}: E2E is the last byte");
        if let Some((prompt, completion, _)) = fixture.usage() {
            assert_eq!(m.output_tokens, Some(completion), "{name}: output tokens");
            assert_eq!(m.prompt_tokens, Some(prompt), "{name}: prompt tokens");
            assert!(!m.output_tokens_estimated, "{name}");
        }
        let expected_outcome = if is_error_fixture(&fixture) {
            Outcome::UpstreamError
        } else {
            Outcome::Completed
        };
        assert_eq!(record.outcome, expected_outcome, "{name}: outcome");
        assert_eq!(record.status, 200, "{name}");
        gw.running.shutdown().await;
    }
}

#[tokio::test]
async fn rechunked_streams_still_arrive_byte_exact() {
    for fixture in fixtures::all() {
        for size in [1, 5, 64] {
            let stream = fixture.sse.clone();
            let backend = ReplayServer::spawn(move |_| {
                Script::sse(&stream, Duration::ZERO, Duration::ZERO).rechunked(size)
            })
            .await
            .expect("backend");
            let mut gw = TestGateway::start(config_for(&[backend.url()])).await;
            let (status, _, received) =
                post(&gw.url(fixture.endpoint()), request_body(&fixture)).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(
                received,
                Bytes::from(fixture.sse.clone()),
                "{} in {size}-byte pieces",
                fixture.name
            );
            let record = gw.record().await;
            if let Some((_, completion, _)) = fixture.usage() {
                assert_eq!(
                    record.measurements.output_tokens,
                    Some(completion),
                    "{}",
                    fixture.name
                );
            }
            gw.running.shutdown().await;
        }
    }
}

/// The client did not ask for usage: the gateway asks for it, counts exact tokens, and the
/// client receives the stream vLLM sends without `include_usage`: no usage event, and the
/// `system_fingerprint` on the finish chunk, even when events arrive split.
#[tokio::test]
async fn injected_usage_is_counted_and_withheld() {
    let fixture = fixtures::read("vllm_chat_stream_usage.sse");
    let events = split_events(&fixture);
    let usage_event = events
        .iter()
        .find(|e| e.windows(12).any(|w| w == br#""choices":[]"#))
        .expect("fixture has a usage event")
        .clone();
    let expected: Vec<u8> = events
        .iter()
        .filter(|e| **e != usage_event)
        .map(|e| {
            let text = String::from_utf8_lossy(e);
            if text.contains(r#""finish_reason":"stop""#) {
                text.replace(
                    "}]}\n\n",
                    "}],\"system_fingerprint\":\"vllm-0.32.0-3f9c2a71\"}\n\n",
                )
            } else {
                text.into_owned()
            }
        })
        .flat_map(|e| e.into_bytes())
        .collect();
    for size in [1, 3, 50, 4096] {
        let stream = fixture.clone();
        let backend = ReplayServer::spawn(move |_| {
            Script::sse(&stream, Duration::ZERO, Duration::ZERO).rechunked(size)
        })
        .await
        .expect("backend");
        let mut gw = TestGateway::start(config_for(&[backend.url()])).await;
        let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
        let (status, headers, received) = post(&gw.url("/v1/chat/completions"), body).await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers.get("content-length").is_none());
        assert_eq!(
            String::from_utf8_lossy(&received),
            String::from_utf8_lossy(&expected),
            "{size}-byte pieces: the usage event is withheld, everything else intact"
        );
        let forwarded: serde_json::Value =
            serde_json::from_slice(&posts(&backend)[0].body).expect("forwarded JSON");
        assert_eq!(forwarded["stream_options"]["include_usage"], true);
        assert_eq!(forwarded["messages"][0]["content"], "hi");
        let record = gw.record().await;
        assert!(record.usage_injected);
        assert_eq!(record.measurements.output_tokens, Some(8));
        assert_eq!(record.measurements.prompt_tokens, Some(42));
        assert!(!record.measurements.output_tokens_estimated);
        assert_eq!(record.outcome, Outcome::Completed);
        gw.running.shutdown().await;
    }
}

#[tokio::test]
async fn usage_injection_off_forwards_bytes_strictly() {
    let fixture = fixtures::read("vllm_chat_stream.sse");
    let stream = fixture.clone();
    let backend =
        ReplayServer::spawn(move |_| Script::sse(&stream, Duration::ZERO, Duration::ZERO))
            .await
            .expect("backend");
    let mut config = config_for(&[backend.url()]);
    config.usage.inject = false;
    let mut gw = TestGateway::start(config).await;
    let body = r#"{"model":"m","stream":true}"#;
    let (_, _, received) = post(&gw.url("/v1/chat/completions"), body).await;
    assert_eq!(received, Bytes::from(fixture));
    assert_eq!(posts(&backend)[0].body, Bytes::from_static(body.as_bytes()));
    let record = gw.record().await;
    assert!(!record.usage_injected);
    assert_eq!(
        record.measurements.output_tokens,
        Some(9),
        "estimated from content events"
    );
    assert!(record.measurements.output_tokens_estimated);
}

#[tokio::test(start_paused = true)]
async fn non_streaming_body_is_forwarded_whole_and_counted() {
    let body = fixtures::read("vllm_chat_nonstream.response.json");
    let reply = body.clone();
    let backend = ReplayServer::spawn(move |_| {
        Script::json(StatusCode::OK, reply.clone(), Duration::from_millis(250))
    })
    .await
    .expect("backend");
    let mut gw = TestGateway::start(config_for(&[backend.url()])).await;
    let (status, headers, received) = post(
        &gw.url("/v1/chat/completions"),
        r#"{"model":"meta-llama/Llama-3.1-8B-Instruct","messages":[]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(received, Bytes::from(body.clone()));
    assert_eq!(
        headers.get("content-length").and_then(|v| v.to_str().ok()),
        Some(body.len().to_string().as_str())
    );
    let record = gw.record().await;
    let expected: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let m = &record.measurements;
    assert_eq!(
        m.output_tokens,
        expected["usage"]["completion_tokens"].as_u64()
    );
    assert_eq!(m.prompt_tokens, expected["usage"]["prompt_tokens"].as_u64());
    assert_eq!(m.ttfb, Some(Duration::from_millis(250)));
    assert_eq!(m.ttft, None);
    assert_eq!(m.e2e, Duration::from_millis(250));
    assert_eq!(record.outcome, Outcome::Completed);
    assert!(!record.labels.stream);
}

#[tokio::test]
async fn request_ids_are_generated_or_kept_and_forwarded() {
    let backend = ReplayServer::spawn(|_| Script::json(StatusCode::OK, "{}", Duration::ZERO))
        .await
        .expect("backend");
    let mut gw = TestGateway::start(config_for(&[backend.url()])).await;
    let (_, headers, _) = post(&gw.url("/v1/completions"), r#"{"model":"m","prompt":"x"}"#).await;
    let generated = headers["x-request-id"].to_str().expect("ascii").to_string();
    assert_eq!(generated.len(), 32);
    assert_eq!(
        posts(&backend)[0].headers["x-request-id"],
        generated.as_str()
    );
    assert_eq!(gw.record().await.request_id, generated);

    let response = support::send(
        http::Request::post(gw.url("/v1/completions"))
            .header("x-request-id", "client-chose-this")
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "1")
            .body(http_body_util::Full::new(Bytes::from_static(
                br#"{"model":"m","prompt":"x"}"#,
            )))
            .expect("request"),
    )
    .await;
    assert_eq!(response.headers()["x-request-id"], "client-chose-this");
    let _ = response.into_body().collect().await;
    let forwarded = &posts(&backend)[1].headers;
    assert_eq!(forwarded["x-request-id"], "client-chose-this");
    assert!(
        forwarded.get("x-hop").is_none(),
        "headers listed in Connection are hop-by-hop"
    );
    assert_eq!(forwarded["via"], "1.1 servelens");
}

#[tokio::test(start_paused = true)]
async fn upstream_error_status_passes_through_with_its_body() {
    let body = fixtures::read("real/vllm_error_badmodel.response.json");
    let reply = body.clone();
    let backend = ReplayServer::spawn(move |_| {
        Script::json(StatusCode::NOT_FOUND, reply.clone(), Duration::ZERO)
    })
    .await
    .expect("backend");
    let mut gw = TestGateway::start(config_for(&[backend.url()])).await;
    let (status, _, received) = post(
        &gw.url("/v1/chat/completions"),
        r#"{"model":"nope","stream":true}"#,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(received, Bytes::from(body));
    let record = gw.record().await;
    assert_eq!(record.outcome, Outcome::UpstreamError);
    assert_eq!(record.status, 404);
}

/// The inference requests a replay backend received (health probes left out).
fn posts(backend: &ReplayServer) -> Vec<servelens::replay::Received> {
    backend
        .received()
        .into_iter()
        .filter(|r| r.method == http::Method::POST)
        .collect()
}
