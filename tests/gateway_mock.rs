//! The gateway in front of the simulated engines, where a fixture replay is not enough: an
//! engine that aborts on disconnect, a prefix cache that reports cached tokens, engine faults,
//! and SGLang's native `/generate`.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use servelens::mock::{MockConfig, MockFramework, MockServer};
use servelens::telemetry::Outcome;
use support::{config_for, metric, post, post_stream, TestGateway};

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

async fn vllm_mock(tune: impl FnOnce(&mut MockConfig)) -> MockServer {
    let mut config = MockConfig::local(MockFramework::Vllm);
    config.model = MODEL.into();
    tune(&mut config);
    MockServer::spawn(config).await.expect("mock")
}

#[tokio::test(start_paused = true)]
async fn client_disconnect_through_the_gateway_aborts_the_engine_request() {
    let mock = vllm_mock(|c| {
        c.output.min = 200;
        c.output.max = 200;
    })
    .await;
    let mut gw = TestGateway::start(config_for(&[mock.url()])).await;
    let body = format!(
        r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"hi"}}],"stream":true}}"#
    );
    let response = post_stream(&gw.url("/v1/chat/completions"), body).await;
    let mut stream = response.into_body();
    stream.frame().await.expect("frame").expect("data");
    assert_eq!(mock.engine.running(), 1);
    drop(stream);
    let record = gw.record().await;
    assert_eq!(record.outcome, Outcome::ClientCancelled);
    while mock.engine.running() > 0 {
        tokio::task::yield_now().await;
    }
    let (_, _, page) = support::get(&format!("{}/metrics", mock.url())).await;
    let page = String::from_utf8_lossy(&page);
    assert_eq!(
        metric(
            &page,
            "vllm:request_success_total",
            &[("finished_reason", "abort")]
        ),
        1.0
    );
    assert!(
        metric(&page, "vllm:generation_tokens_total", &[]) < 200.0,
        "generation stopped early"
    );
}

#[tokio::test(start_paused = true)]
async fn cached_prompt_tokens_reach_the_gateway_metrics() {
    let mock = vllm_mock(|c| c.report_cached_tokens = true).await;
    let mut gw = TestGateway::start(config_for(&[mock.url()])).await;
    let content: String = std::iter::repeat_n('x', 400 * 4 - 24).collect();
    // The client does not ask for usage: the gateway does, and still gets cached tokens.
    let body = format!(
        r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"{content}"}}],"stream":true,"max_tokens":3}}"#
    );
    for expected_cached in [0, 384] {
        let (status, _, bytes) = post(&gw.url("/v1/chat/completions"), body.clone()).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            !String::from_utf8_lossy(&bytes).contains("\"usage\""),
            "usage withheld from the client"
        );
        let record = gw.record().await;
        assert_eq!(record.measurements.prompt_tokens, Some(400));
        assert_eq!(record.measurements.cached_tokens, Some(expected_cached));
        assert_eq!(record.measurements.output_tokens, Some(3));
    }
    let page = gw.metrics().await;
    assert_eq!(
        metric(&page, "servelens_prompt_cached_tokens_total", &[]),
        384.0
    );
    assert_eq!(metric(&page, "servelens_prompt_tokens_total", &[]), 800.0);
}

#[tokio::test(start_paused = true)]
async fn engine_faults_reach_the_client_as_the_engine_sent_them() {
    let mock = vllm_mock(|c| c.output.min = 20).await;
    let mut gw = TestGateway::start(config_for(&[mock.url()])).await;
    let body = format!(
        r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"hi"}}],"stream":true}}"#
    );
    let url = gw.url("/v1/chat/completions");
    let send = |fault: &'static str| {
        let request = Request::post(url.clone())
            .header("x-mock-fault", fault)
            .body(Full::new(Bytes::from(body.clone())))
            .expect("request");
        support::send(request)
    };

    let response = send("status=503").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    let (_, _, bytes) = support::read(response).await;
    let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(v["error"]["type"], "ServiceUnavailableError");
    let record = gw.record().await;
    assert_eq!(
        (record.outcome, record.status),
        (Outcome::UpstreamError, 503)
    );

    let (status, _, bytes) = support::read(send("error_after=3").await).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains(r#"data: {"error": {"message": "#), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
    let record = gw.record().await;
    assert_eq!(record.outcome, Outcome::UpstreamError);
    assert_eq!(record.measurements.content_events, 3);

    let response = send("drop_after=2").await;
    let body = response.into_body().collect().await;
    assert!(
        body.is_ok(),
        "the gateway ends the stream cleanly with an error event"
    );
    let text =
        String::from_utf8_lossy(&body.map(|b| b.to_bytes()).unwrap_or_default()).into_owned();
    assert!(text.contains(r#""type":"upstream_error""#), "{text}");
    assert_eq!(gw.record().await.outcome, Outcome::UpstreamError);

    let started = tokio::time::Instant::now();
    let response = send("slow_first_byte=2s").await;
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    let _ = support::read(response).await;
    let record = gw.record().await;
    assert_eq!(record.outcome, Outcome::Completed);
    assert!(record
        .measurements
        .ttft
        .is_some_and(|t| t >= Duration::from_secs(2)));
}

#[tokio::test(start_paused = true)]
async fn sglang_generate_is_measured_from_meta_info() {
    let mut config = MockConfig::local(MockFramework::Sglang);
    config.output.min = 12;
    config.output.max = 12;
    let mock = MockServer::spawn(config).await.expect("mock");
    let mut gw_config = config_for(&[mock.url()]);
    gw_config
        .pools
        .values_mut()
        .for_each(|p| p.framework = servelens::config::Framework::Sglang);
    let mut gw = TestGateway::start(gw_config).await;
    let (status, _, _) = post(
        &gw.url("/generate"),
        r#"{"text":"The capital of France is","sampling_params":{"max_new_tokens":32},"stream":true}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let record = gw.record().await;
    let m = &record.measurements;
    assert_eq!(record.outcome, Outcome::Completed);
    assert_eq!(
        m.output_tokens,
        Some(12),
        "from meta_info.completion_tokens"
    );
    assert!(!m.output_tokens_estimated);
    assert_eq!(
        m.content_events, 11,
        "12 tokens, the last one EOS without text"
    );
    assert_eq!(m.itl.len(), 10);
    assert_eq!(m.finish_reason, Some(servelens::openai::FinishReason::Stop));
}

/// Replaces the values of `"id"` and `"created"` (they differ between any two requests).
fn without_ids(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    let next = |s: &str| {
        [s.find(r#""id":"#), s.find(r#""created":"#)]
            .into_iter()
            .flatten()
            .min()
    };
    while let Some(i) = next(rest) {
        let j = rest[i..].find(':').map_or(i, |k| i + k + 1);
        out.push_str(&rest[..j]);
        let value_end = rest[j..].find([',', '}']).map_or(rest.len(), |k| j + k);
        out.push('_');
        rest = &rest[value_end..];
    }
    out.push_str(rest);
    out
}

/// With usage injected (the default), a vLLM client still gets exactly the bytes vLLM would
/// have sent it without `include_usage`: no usage event, and `system_fingerprint` back on the
/// finish chunk. Chat and completions, one choice and two.
#[tokio::test(start_paused = true)]
async fn injected_usage_is_invisible_on_vllm_streams() {
    let mock = vllm_mock(|c| {
        c.output.min = 6;
        c.output.max = 6;
    })
    .await;
    let mut gw = TestGateway::start(config_for(&[mock.url()])).await;
    let cases = [
        (
            "/v1/chat/completions",
            format!(
                r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"hi"}}],"stream":true,"seed":3}}"#
            ),
        ),
        (
            "/v1/chat/completions",
            format!(
                r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"hi"}}],"stream":true,"seed":3,"max_tokens":4}}"#
            ),
        ),
        (
            "/v1/completions",
            format!(r#"{{"model":"{MODEL}","prompt":"hello","stream":true,"seed":3}}"#),
        ),
    ];
    for (path, body) in cases {
        let (_, _, direct) = post(&format!("{}{path}", mock.url()), body.clone()).await;
        let (_, _, through) = post(&gw.url(path), body.clone()).await;
        let (direct, through) = (
            String::from_utf8_lossy(&direct),
            String::from_utf8_lossy(&through),
        );
        assert!(direct.contains("system_fingerprint"), "{direct}");
        assert_eq!(without_ids(&through), without_ids(&direct), "{path} {body}");
        let record = gw.record().await;
        assert!(record.usage_injected);
        assert!(
            !record.measurements.output_tokens_estimated,
            "exact tokens from the withheld usage"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_gone_before_the_response_head_is_recorded_once_and_the_engine_aborts() {
    // The engine answers only after 30 s (a long queue or prefill); the client leaves after 1 s.
    let mock = vllm_mock(|c| c.faults.slow_first_byte = Some(Duration::from_secs(30))).await;
    let mut gw = TestGateway::start(config_for(&[mock.url()])).await;
    let body = format!(
        r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"hi"}}],"stream":true}}"#
    );
    let started = tokio::time::Instant::now();
    let gave_up = tokio::time::timeout(
        Duration::from_secs(1),
        post_stream(&gw.url("/v1/chat/completions"), body),
    )
    .await;
    assert!(gave_up.is_err(), "no response head within 1 s");
    let record = gw.record().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "recorded when the client left, not when the engine answered: {:?}",
        started.elapsed()
    );
    assert_eq!(record.outcome, Outcome::ClientCancelled);
    assert_eq!(&*record.labels.pool, "default");
    assert!(record.measurements.ttft.is_none());
    // The gateway's connection to the engine is gone, so the engine stops waiting on it.
    while mock.engine.running() + mock.engine.waiting() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the engine still holds it"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Exactly once: nothing more is recorded when the engine's time would have come.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(gw.records.try_recv().is_err(), "one record per request");
    let page = gw.metrics().await;
    assert_eq!(
        metric(
            &page,
            "servelens_requests_total",
            &[("outcome", "client_cancelled")]
        ),
        1.0
    );
}
