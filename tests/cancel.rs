//! Step *tap* on client disconnect: the upstream connection is dropped at once (the backend
//! sees it), the request is recorded once as `client_cancelled`, and `/metrics` counts it.

mod support;

use std::time::Duration;

use http_body_util::BodyExt;
use servelens::replay::{ReplayServer, Script};
use servelens::telemetry::Outcome;
use support::{config_for, metric, post_stream, TestGateway};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn client_disconnect_closes_upstream_and_is_recorded_once() {
    let stream = support::fixtures::read("vllm_chat_stream.sse");
    // Two events quickly, then one every 10 s: a disconnect must not wait for the next event.
    let backend = ReplayServer::spawn(move |_| {
        let mut script = Script::sse(
            &stream,
            Duration::from_millis(50),
            Duration::from_millis(10),
        );
        for (i, (at, _)) in script.pieces.iter_mut().enumerate().skip(2) {
            *at = Duration::from_secs(10 * i as u64);
        }
        script
    })
    .await
    .expect("backend");
    let mut gw = TestGateway::start(config_for(&[backend.url()])).await;

    let response = post_stream(
        &gw.url("/v1/chat/completions"),
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
    )
    .await;
    let mut body = response.into_body();
    let mut received = Vec::new();
    while received.windows(2).filter(|w| w == b"\n\n").count() < 2 {
        let frame = body.frame().await.expect("a frame").expect("no error");
        if let Ok(data) = frame.into_data() {
            received.extend_from_slice(&data);
        }
    }
    let dropped_at = Instant::now();
    drop(body);

    backend.wait_abandoned(1).await;
    assert!(
        dropped_at.elapsed() < Duration::from_secs(1),
        "the backend saw the close after {:?}; it must not wait for the next event",
        dropped_at.elapsed()
    );
    let record = gw.record().await;
    assert_eq!(record.outcome, Outcome::ClientCancelled);
    assert_eq!(
        record.measurements.ttft,
        Some(Duration::from_millis(60)),
        "{record:?} {}",
        String::from_utf8_lossy(&received)
    );
    assert!(!record.measurements.done);

    let page = gw.metrics().await;
    assert_eq!(
        metric(
            &page,
            "servelens_requests_total",
            &[("outcome", "client_cancelled")]
        ),
        1.0
    );
    assert_eq!(
        metric(&page, "servelens_requests_total", &[]),
        1.0,
        "recorded exactly once"
    );
    assert_eq!(metric(&page, "servelens_inflight_requests", &[]), 0.0);
    assert!(
        tokio::time::timeout(Duration::from_secs(30), gw.records.recv())
            .await
            .is_err(),
        "no second record"
    );
}
