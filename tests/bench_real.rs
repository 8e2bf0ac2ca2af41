//! `servelens bench` against a real vLLM: requests succeed with exact usage, the engine's own
//! `/metrics` is scraped, and shared prefixes show up as prefix-cache hits.
//!
//! Runs when `SERVELENS_VLLM_URLS` is set (the engines of
//! `scripts/realbackends/start_real_backend.sh`, as `tests/real_engines.rs` uses); otherwise it
//! prints `SKIPPED`, unless `SERVELENS_REQUIRE_ENGINES` is set, which makes that a failure.

use servelens::bench::experiment::Experiment;
use servelens::bench::{run, RunOptions};

fn vllm_url() -> Option<String> {
    let value = std::env::var("SERVELENS_VLLM_URLS")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let Some(value) = value else {
        assert!(
            std::env::var_os("SERVELENS_REQUIRE_ENGINES").is_none(),
            "SERVELENS_VLLM_URLS is not set but SERVELENS_REQUIRE_ENGINES is"
        );
        eprintln!("SKIPPED: SERVELENS_VLLM_URLS is not set (start a real engine with scripts/realbackends/start_real_backend.sh)");
        return None;
    };
    value
        .split(',')
        .next()
        .map(|u| u.trim().trim_end_matches('/').to_string())
}

async fn served_model(base: &str) -> String {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let uri: http::Uri = format!("{base}/v1/models").parse().expect("uri");
    let response = client.get(uri).await.expect("GET /v1/models");
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("body")
        .to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).expect("models JSON");
    v["data"][0]["id"].as_str().expect("a model").to_string()
}

#[tokio::test]
async fn shared_prefix_against_real_vllm() {
    let Some(url) = vllm_url() else {
        return;
    };
    let model = served_model(&url).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let exp = Experiment::from_toml(&format!(
        r#"name = "real"
model = "{model}"
out = "{out}"
[[targets]]
name = "vllm"
url = "{url}"
[lengths.input]
dist = "uniform"
min = 8
max = 24
[lengths.output]
dist = "fixed"
tokens = 8
[extra_body]
temperature = 0.0
seed = 1
[scrape]
targets = true
[workload]
kind = "shared_prefix"
prefixes = 2
questions = 4
prefix = {{ dist = "fixed", tokens = 256 }}
concurrency = 1
"#,
        out = dir.path().display()
    ))
    .expect("valid experiment");
    let finished = run(exp, RunOptions::default()).await.expect("run");
    let t = &finished.summary.targets[0];
    assert_eq!((t.requests, t.completed), (8, 8), "{:?}", t.error_classes);
    for r in &finished.run.records {
        assert!(r.ttft_s.is_some() && !r.output_tokens_estimated, "{r:?}");
        assert!(r.prompt_tokens.is_some_and(|p| p > 200), "{r:?}");
    }
    let page = &finished.summary.backends[0];
    assert!(page.scraped, "vLLM /metrics was read before and after");
    // At least ours (other clients of a shared engine may add theirs).
    assert!(page.requests.is_some_and(|n| n >= 8.0), "{page:?}");
    let ratio = page
        .prefix_cache_hit_ratio
        .expect("vLLM reports prefix-cache counters");
    assert!(
        ratio > 0.3,
        "three of four requests per system prompt reuse it: {ratio}"
    );
}
