//! Every example in `config/experiments/` parses, and runs against the simulated vLLM backend
//! both directly and through the gateway, with only its targets (and its size) changed.
//!
//! Runs on paused tokio time, so think times, arrival gaps and the mock's latency model cost no
//! wall-clock time.

mod support;

use std::path::{Path, PathBuf};

use servelens::bench::experiment::{Experiment, ScrapeEndpoint, Target, Workload};
use servelens::bench::{run, Finished, RunOptions};
use servelens::mock::{MockConfig, MockFramework, MockServer};
use support::{config_for, TestGateway};

/// Requests per target in this test (the examples are larger).
const REQUESTS: u64 = 12;

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/experiments");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("config/experiments")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

fn target(name: &str, url: &str) -> Target {
    Target {
        name: name.into(),
        url: url.into(),
        api_key: None,
    }
}

async fn bench(mut exp: Experiment, out: &Path, id: &str) -> Finished {
    exp.out = out.to_path_buf();
    exp.requests = Some(REQUESTS);
    exp.duration = None;
    exp.validate().expect("still valid");
    run(
        exp,
        RunOptions {
            run_id: Some(id.into()),
            progress: false,
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{id}: {e}"))
}

fn assert_all_completed(finished: &Finished, id: &str) {
    assert!(!finished.summary.targets.is_empty(), "{id}");
    for t in &finished.summary.targets {
        assert!(t.requests > 0, "{id}/{}: sent nothing", t.target);
        assert_eq!(t.errors, 0, "{id}/{}: {:?}", t.target, t.error_classes);
        assert!(
            t.ttft.is_some() || !finished.run.records.iter().any(|r| r.stream),
            "{id}"
        );
        assert!(t.output_tokens > 0, "{id}/{}", t.target);
    }
    assert!(finished.dir.join("report.html").is_file(), "{id}");
}

#[tokio::test(start_paused = true)]
async fn every_example_runs_against_the_mock_directly_and_through_the_gateway() {
    let mut config = MockConfig::local(MockFramework::Vllm);
    config.model = "meta-llama/Llama-3.1-8B-Instruct".into();
    let mock = MockServer::spawn(config).await.expect("mock");
    let gateway = TestGateway::start(config_for(&[mock.url()])).await;
    let gateway_url = gateway.running.url();
    let admin = format!("{}/metrics", gateway.running.admin_url());
    let out = tempfile::tempdir().expect("tempdir");
    let examples = examples();
    assert!(examples.len() >= 9, "an example per workload: {examples:?}");
    let mut kinds = Vec::new();

    for path in examples {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut exp = Experiment::load(&path).unwrap_or_else(|e| panic!("{stem}: {e}"));
        assert_eq!(
            exp.targets[0].url, "http://127.0.0.1:8000",
            "{stem} runs against `servelens mock --port 8000`"
        );
        kinds.push(exp.workload.kind());
        for endpoint in &mut exp.scrape.endpoints {
            *endpoint = ScrapeEndpoint {
                name: endpoint.name.clone(),
                url: if endpoint.url.contains(":9464") {
                    admin.clone()
                } else {
                    format!("{}/metrics", mock.url())
                },
            };
        }
        if matches!(exp.workload, Workload::File { .. }) {
            // One target per file run: directly, then through the gateway.
            for (name, url) in [("direct", mock.url()), ("gateway", gateway_url.clone())] {
                let mut one = exp.clone();
                one.targets = vec![target(name, &url)];
                if let Workload::File { output, .. } = &mut one.workload {
                    *output = out.path().join(format!("{name}-responses.jsonl"));
                }
                let finished = bench(one, out.path(), &format!("{stem}-{name}")).await;
                assert_all_completed(&finished, &stem);
                let lines =
                    std::fs::read_to_string(out.path().join(format!("{name}-responses.jsonl")))
                        .expect("responses");
                assert_eq!(lines.lines().count() as u64, REQUESTS, "{stem}-{name}");
            }
            continue;
        }
        exp.targets = vec![
            target("direct", &mock.url()),
            target("gateway", &gateway_url),
        ];
        let finished = bench(exp, out.path(), &stem).await;
        assert_all_completed(&finished, &stem);
        let names: Vec<&str> = finished
            .summary
            .targets
            .iter()
            .map(|t| t.target.as_str())
            .collect();
        assert_eq!(names, ["direct", "gateway"], "{stem}");
        assert_eq!(
            finished.comparisons.len(),
            1,
            "{stem}: gateway compared with direct"
        );
        if matches!(
            finished.summary.workload.as_str(),
            "single" | "batch" | "concurrent" | "rate"
        ) {
            // Same requests for both targets on one backend, yet the second target finds
            // nothing of the first in the prefix cache: each target's prompts carry its tag.
            for t in &finished.summary.targets {
                assert_eq!(t.cached_tokens, 0, "{stem}/{}", t.target);
            }
        }
        if stem == "direct_vs_gateway" {
            let backends = &finished.summary.backends;
            assert_eq!(backends.len(), 2);
            assert!(backends.iter().all(|b| b.scraped), "{backends:?}");
            // The mock counted every request, warm-up included; the gateway only its own.
            let warmup = 4;
            assert_eq!(backends[0].requests, Some(2.0 * (REQUESTS + warmup) as f64));
            assert_eq!(backends[1].requests, Some((REQUESTS + warmup) as f64));
            assert!(backends[0].prefix_cache_hit_ratio.is_some());
        }
    }
    for kind in [
        "single",
        "batch",
        "concurrent",
        "rate",
        "multi_turn",
        "shared_prefix",
        "file",
        "replay",
    ] {
        assert!(kinds.contains(&kind), "no example for {kind}");
    }
}
