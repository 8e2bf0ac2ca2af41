//! `servelens bench` error classes: every way a request fails is counted under its class, and
//! failed requests stay out of the latency statistics.

use std::time::Duration;

use http::StatusCode;
use servelens::bench::experiment::Experiment;
use servelens::bench::results::ErrorClass;
use servelens::bench::{run, RunOptions};
use servelens::replay::{ReplayServer, Script};

const STREAM: &[u8] = include_bytes!("fixtures/vllm_chat_stream_usage.sse");
const ERROR_MIDSTREAM: &[u8] = include_bytes!("fixtures/vllm_error_midstream.sse");

fn experiment(url: &str, out: &std::path::Path, settings: &str) -> Experiment {
    Experiment::from_toml(&format!(
        "name = \"errors\"\nout = \"{}\"\n{settings}\n[[targets]]\nname = \"t\"\nurl = \"{url}\"\n",
        out.display()
    ))
    .expect("valid experiment")
}

/// The request number from `t-r000007`.
fn index(received: &servelens::replay::Received) -> u64 {
    received
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|id| id.rsplit('r').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(start_paused = true)]
async fn failures_are_classified() {
    let backend = ReplayServer::spawn(|received| {
        let ms = Duration::from_millis;
        match index(received) % 7 {
            0 => Script::sse(STREAM, ms(10), ms(5)),
            1 => Script::json(StatusCode::SERVICE_UNAVAILABLE, "{\"error\":{}}", ms(1)),
            2 => Script::json(StatusCode::TOO_MANY_REQUESTS, "{\"error\":{}}", ms(1)),
            3 => Script::json(StatusCode::BAD_REQUEST, "{\"error\":{}}", ms(1)),
            4 => Script::sse(ERROR_MIDSTREAM, ms(10), ms(5)),
            5 => {
                // The stream stops before `[DONE]`.
                let mut script = Script::sse(STREAM, ms(10), ms(5));
                script.pieces.truncate(4);
                script
            }
            _ => Script::sse(STREAM, ms(10), ms(2_000)),
        }
    })
    .await
    .expect("replay");
    let dir = tempfile::tempdir().expect("tempdir");
    let exp = experiment(
        &backend.url(),
        dir.path(),
        "requests = 14\ntimeout = \"1s\"\n[workload]\nkind = \"single\"\n",
    );
    let finished = run(exp, RunOptions::default()).await.expect("run");
    let classes: Vec<Option<ErrorClass>> = finished.run.records.iter().map(|r| r.error).collect();
    let expected = [
        None,
        Some(ErrorClass::Http5xx),
        Some(ErrorClass::RateLimited),
        Some(ErrorClass::Http4xx),
        Some(ErrorClass::ErrorEvent),
        Some(ErrorClass::Truncated),
        Some(ErrorClass::Timeout),
    ];
    assert_eq!(classes[..7], expected);
    assert_eq!(classes[7..], expected);
    let timed_out = &finished.run.records[6];
    assert!((timed_out.e2e_s - 1.0).abs() < 1e-6, "cut at the deadline");
    let t = &finished.summary.targets[0];
    assert_eq!((t.requests, t.completed, t.errors), (14, 2, 12));
    for class in [
        "http_5xx",
        "rate_limited",
        "http_4xx",
        "error_event",
        "truncated",
        "timeout",
    ] {
        assert_eq!(t.error_classes.get(class), Some(&2), "{class}");
    }
    assert_eq!(
        t.ttft.map(|s| s.count),
        Some(2),
        "only successes are in the latencies"
    );
}

#[tokio::test]
async fn an_unreachable_target_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    drop(listener);
    let dir = tempfile::tempdir().expect("tempdir");
    let exp = experiment(
        &url,
        dir.path(),
        "requests = 3\n[workload]\nkind = \"single\"\n",
    );
    let finished = run(exp, RunOptions::default()).await.expect("run");
    let t = &finished.summary.targets[0];
    assert_eq!((t.requests, t.errors), (3, 3));
    assert_eq!(t.error_classes.get("connect"), Some(&3));
    assert!(finished.run.records.iter().all(|r| r.status == 0));
}
