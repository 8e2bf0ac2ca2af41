//! `servelens bench` load shapes, checked where they land: at the backend. Open-loop rate is
//! achieved, closed loops and waves never exceed their bound, conversations carry their context
//! and think time.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::Value;
use servelens::bench::experiment::Experiment;
use servelens::bench::{run, Finished, RunOptions};
use servelens::replay::{ReplayServer, Script};
use tokio::net::TcpListener;

const STREAM: &[u8] = include_bytes!("fixtures/vllm_chat_stream_usage.sse");
/// The text of the fixture's answer.
const ANSWER: &str = "The capital of France is Paris.";

async fn bench(url: &str, out: &std::path::Path, settings: &str) -> Finished {
    let exp = Experiment::from_toml(&format!(
        "name = \"load\"\nout = \"{}\"\n{settings}\n[[targets]]\nname = \"t\"\nurl = \"{url}\"\n",
        out.display()
    ))
    .expect("valid experiment");
    run(exp, RunOptions::default()).await.expect("run")
}

/// A backend that counts requests in progress: each is held `hold`, then answered with the
/// whole fixture stream.
#[derive(Clone, Default)]
struct Counting {
    inflight: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
    total: Arc<AtomicUsize>,
}

impl Counting {
    async fn spawn(hold: Duration) -> (Self, String) {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let counting = Counting::default();
        let c = counting.clone();
        let service = tower::service_fn(move |_req: Request<Incoming>| {
            let c = c.clone();
            async move {
                let now = c.inflight.fetch_add(1, Ordering::SeqCst) + 1;
                c.max.fetch_max(now, Ordering::SeqCst);
                c.total.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(hold).await;
                c.inflight.fetch_sub(1, Ordering::SeqCst);
                let mut response = Response::new(Full::new(Bytes::from_static(STREAM)));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/event-stream"),
                );
                Ok::<_, Infallible>(response)
            }
        });
        tokio::spawn(servelens::server::serve(
            listener,
            service,
            std::future::pending(),
            Duration::ZERO,
        ));
        (counting, url)
    }
}

#[tokio::test(start_paused = true)]
async fn concurrent_never_exceeds_its_users() {
    let (backend, url) = Counting::spawn(Duration::from_millis(30)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let finished = bench(
        &url,
        dir.path(),
        "requests = 100\n[workload]\nkind = \"concurrent\"\nconcurrency = 7\n",
    )
    .await;
    assert_eq!(backend.total.load(Ordering::SeqCst), 100);
    assert_eq!(
        backend.max.load(Ordering::SeqCst),
        7,
        "seven users keep exactly seven requests in flight, never more"
    );
    assert_eq!(finished.summary.targets[0].completed, 100);
}

#[tokio::test(start_paused = true)]
async fn batch_sends_waves_of_its_size() {
    let (backend, url) = Counting::spawn(Duration::from_millis(30)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let finished = bench(
        &url,
        dir.path(),
        "requests = 23\n[workload]\nkind = \"batch\"\nsize = 5\n",
    )
    .await;
    assert_eq!(backend.total.load(Ordering::SeqCst), 23);
    assert_eq!(backend.max.load(Ordering::SeqCst), 5);
    // Waves start together: 5 starts at each of 5 distinct instants (the last wave has 3).
    let mut starts: Vec<f64> = finished.run.records.iter().map(|r| r.start_s).collect();
    starts.sort_by(f64::total_cmp);
    starts.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
    assert_eq!(starts.len(), 5, "{starts:?}");
}

#[tokio::test]
async fn rate_achieves_the_offered_rate_in_real_time() {
    let backend = ReplayServer::spawn(|_| {
        Script::sse(STREAM, Duration::from_millis(2), Duration::from_millis(1))
    })
    .await
    .expect("replay");
    let dir = tempfile::tempdir().expect("tempdir");
    let finished = bench(
        &backend.url(),
        dir.path(),
        "requests = 101\n[workload]\nkind = \"rate\"\nrate = 20.0\narrivals = \"constant\"\n",
    )
    .await;
    // Over 5 s, a last dispatch late by 100 ms on a busy machine still counts as 98%.
    let t = &finished.summary.targets[0];
    assert_eq!(t.offered_rate, Some(20.0));
    let achieved = t.achieved_rate.expect("achieved rate");
    assert!(
        (achieved - 20.0).abs() / 20.0 < 0.05,
        "achieved {achieved} req/s for 20 offered"
    );
    assert_eq!(backend.received().len(), 101);
}

#[tokio::test(start_paused = true)]
async fn poisson_arrivals_achieve_the_offered_rate() {
    let backend = ReplayServer::spawn(|_| {
        Script::sse(STREAM, Duration::from_millis(50), Duration::from_millis(20))
    })
    .await
    .expect("replay");
    let dir = tempfile::tempdir().expect("tempdir");
    let finished = bench(
        &backend.url(),
        dir.path(),
        "requests = 1000\n[workload]\nkind = \"rate\"\nrate = 20.0\n",
    )
    .await;
    let t = &finished.summary.targets[0];
    let achieved = t.achieved_rate.expect("achieved rate");
    assert!(
        (achieved - 20.0).abs() / 20.0 < 0.05,
        "achieved {achieved} req/s for 20 offered"
    );
    // Open loop: arrivals do not wait for responses, so requests overlap.
    let mut gaps: Vec<f64> = finished
        .run
        .records
        .windows(2)
        .map(|w| w[1].start_s - w[0].start_s)
        .collect();
    gaps.sort_by(f64::total_cmp);
    assert!(
        gaps[gaps.len() / 2] < 0.2,
        "median gap below one response time"
    );
}

#[tokio::test(start_paused = true)]
async fn multi_turn_sessions_accumulate_context_with_think_time() {
    let backend = ReplayServer::spawn(|_| {
        Script::sse(STREAM, Duration::from_millis(40), Duration::from_millis(10))
    })
    .await
    .expect("replay");
    let dir = tempfile::tempdir().expect("tempdir");
    let finished = bench(
        &backend.url(),
        dir.path(),
        "[workload]\nkind = \"multi_turn\"\nsessions = 3\nturns = 3\nconcurrency = 2\nthink_time = \"2s\"\n",
    )
    .await;
    let received = backend.received();
    assert_eq!(received.len(), 9);
    let mut by_length = [0; 3];
    for r in &received {
        let body: Value = serde_json::from_slice(&r.body).expect("json body");
        let messages = body["messages"].as_array().expect("messages");
        let turn = (messages.len() - 1) / 2;
        by_length[turn] += 1;
        for (i, m) in messages.iter().enumerate() {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            assert_eq!(m["role"], role);
            if role == "assistant" {
                assert_eq!(m["content"], ANSWER, "the reply is carried as context");
            }
        }
    }
    assert_eq!(by_length, [3, 3, 3]);
    for session in 0..3 {
        let mut turns: Vec<_> = finished
            .run
            .records
            .iter()
            .filter(|r| r.session == Some(session))
            .collect();
        turns.sort_by_key(|r| r.turn);
        assert_eq!(turns.len(), 3);
        for w in turns.windows(2) {
            let think = w[1].start_s - w[0].end_s;
            assert!((think - 2.0).abs() < 1e-6, "think time {think}");
        }
    }
}
