//! `servelens bench` timing: the client-side TTFB/TTFT/ITL/TPOT/E2E and their percentiles
//! match a backend whose schedule is known exactly.
//!
//! Both tests run on paused tokio time over real loopback sockets, so every scripted offset is
//! seen exactly; the stated tolerance (1 µs) only absorbs the f64 rounding of seconds. (The mock's
//! sleeps end on whole milliseconds, so its expected TTFT is rounded up to the millisecond.)

use std::time::Duration;

use servelens::bench::experiment::Experiment;
use servelens::bench::results::RequestResult;
use servelens::bench::stats::percentile_sorted;
use servelens::bench::{run, RunOptions};
use servelens::mock::{MockConfig, MockFramework, MockServer};
use servelens::replay::{ReplayServer, Script};

/// The tolerance on every timing, in seconds.
const TOLERANCE: f64 = 1e-6;

/// A vLLM chat stream: role chunk, 5 content events, finish chunk, usage (8 tokens), `[DONE]`.
const STREAM: &[u8] = include_bytes!("fixtures/vllm_chat_stream_usage.sse");

fn experiment(url: &str, out: &std::path::Path, extra: &str) -> Experiment {
    Experiment::from_toml(&format!(
        "name = \"timing\"\nout = \"{}\"\n{extra}\n[[targets]]\nname = \"replay\"\nurl = \"{url}\"\n",
        out.display()
    ))
    .expect("valid experiment")
}

/// numpy-style percentile of expected values, computed independently of the bench's code.
fn expected_percentile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    percentile_sorted(&v, q)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= TOLERANCE
}

/// Request `r000042` gets TTFB 100 + 10·(42 mod 10) ms and gaps of 20 + (42 mod 3) ms.
fn schedule(request_id: &str) -> (Duration, Duration) {
    let k: u64 = request_id
        .rsplit('r')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    (
        Duration::from_millis(100 + 10 * (k % 10)),
        Duration::from_millis(20 + k % 3),
    )
}

#[tokio::test(start_paused = true)]
async fn client_percentiles_match_a_scripted_schedule() {
    let backend = ReplayServer::spawn(|received| {
        let id = received
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let (first, gap) = schedule(id);
        Script::sse(STREAM, first, gap)
    })
    .await
    .expect("replay server");
    let dir = tempfile::tempdir().expect("tempdir");
    let exp = experiment(
        &backend.url(),
        dir.path(),
        "requests = 120\n[workload]\nkind = \"concurrent\"\nconcurrency = 6\n",
    );
    let finished = run(exp, RunOptions::default()).await.expect("run");

    // Per request: events are written at first + i·gap (i = 0 role, 1..=5 content, 8 [DONE]).
    let records: &[RequestResult] = &finished.run.records;
    assert_eq!(records.len(), 120);
    let (mut ttft, mut e2e, mut itl) = (Vec::new(), Vec::new(), Vec::new());
    for r in records {
        let (first, gap) = schedule(&r.id);
        let (first, gap) = (first.as_secs_f64(), gap.as_secs_f64());
        assert!(r.ok, "{r:?}");
        assert!(close(r.ttfb_s.expect("ttfb"), first), "{r:?}");
        assert!(close(r.ttft_s.expect("ttft"), first + gap), "{r:?}");
        assert!(close(r.e2e_s, first + 8.0 * gap), "{r:?}");
        assert!(
            close(r.tpot_s.expect("tpot"), gap),
            "(E2E − TTFT)/(8 − 1): {r:?}"
        );
        assert_eq!(r.itl_s.len(), 4);
        assert!(r.itl_s.iter().all(|x| close(*x, gap)), "{r:?}");
        assert_eq!((r.output_tokens, r.prompt_tokens), (Some(8), Some(42)));
        ttft.push(first + gap);
        e2e.push(first + 8.0 * gap);
        itl.extend([gap; 4]);
    }

    let summary = &finished.summary.targets[0];
    for (name, stats, expected) in [
        ("TTFT", summary.ttft.expect("ttft"), &ttft),
        ("E2E", summary.e2e.expect("e2e"), &e2e),
        ("ITL", summary.itl.expect("itl"), &itl),
    ] {
        for (q, got) in [
            (0.5, stats.p50),
            (0.9, stats.p90),
            (0.95, stats.p95),
            (0.99, stats.p99),
        ] {
            let want = expected_percentile(expected, q);
            assert!(close(got, want), "{name} p{}: {got} vs {want}", q * 100.0);
        }
        let mean = expected.iter().sum::<f64>() / expected.len() as f64;
        assert!(close(stats.mean, mean), "{name} mean");
    }
    assert_eq!(summary.completed, 120);
    assert_eq!(summary.output_tokens, 960);
    // The client's own headers reached the backend: the request id joins with gateway logs.
    assert!(backend
        .received()
        .iter()
        .all(|r| r.headers.contains_key("x-request-id")));
}

#[tokio::test(start_paused = true)]
async fn client_timings_match_the_mock_latency_model() {
    // TTFT = 40 ms + 100 µs × prompt tokens (no cache), every decode step 12 ms, 16 tokens.
    let mut config = MockConfig::local(MockFramework::Vllm);
    config.latency.ttft_base = Duration::from_millis(40);
    config.latency.prefill_per_token = Duration::from_micros(100);
    config.latency.itl_base = Duration::from_millis(12);
    config.latency.itl_per_seq = Duration::ZERO;
    config.latency.max_num_seqs = 64;
    config.cache.capacity_blocks = 0;
    let mock = MockServer::spawn(config).await.expect("mock");
    let dir = tempfile::tempdir().expect("tempdir");
    let exp = experiment(
        &mock.url(),
        dir.path(),
        "requests = 40\n[extra_body]\nignore_eos = true\n[lengths.input]\ndist = \"uniform\"\nmin = 50\nmax = 400\n[lengths.output]\ndist = \"fixed\"\ntokens = 16\n[workload]\nkind = \"concurrent\"\nconcurrency = 4\n",
    );
    let finished = run(exp, RunOptions::default()).await.expect("run");
    let mut want_ttft = Vec::new();
    for r in &finished.run.records {
        assert!(r.ok, "{r:?}");
        let prompt = r.prompt_tokens.expect("usage.prompt_tokens");
        // The mock's sleep ends on the next whole millisecond (tokio timers tick in ms).
        let micros = 40_000 + 100 * prompt;
        let ttft = micros.div_ceil(1000) as f64 / 1e3;
        assert!(close(r.ttft_s.expect("ttft"), ttft), "{r:?} vs {ttft}");
        assert_eq!(r.output_tokens, Some(16));
        assert_eq!(r.itl_s.len(), 15);
        assert!(r.itl_s.iter().all(|x| close(*x, 0.012)), "{r:?}");
        assert!(close(r.e2e_s, ttft + 15.0 * 0.012), "{r:?}");
        want_ttft.push(ttft);
    }
    let stats = finished.summary.targets[0].ttft.expect("ttft");
    assert!(close(stats.p50, expected_percentile(&want_ttft, 0.5)));
    assert!(close(stats.p99, expected_percentile(&want_ttft, 0.99)));
    let prompts: Vec<u64> = finished
        .run
        .records
        .iter()
        .filter_map(|r| r.prompt_tokens)
        .collect();
    assert!(
        prompts.iter().min() < prompts.iter().max(),
        "prompt lengths vary, so TTFT does"
    );
}
