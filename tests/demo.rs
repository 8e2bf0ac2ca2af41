//! `servelens demo` end to end: two fleets of simulated vLLM replicas, two gateways, one
//! shared-prefix experiment through both; prefix routing must visibly win on cache hits and TTFT
//! while keeping replicas even, and the run directory must hold the results and the report.
//!
//! Runs on paused tokio time: the simulated latencies cost no wall-clock time and the outcome
//! does not depend on how busy the machine is.

use servelens::config::Policy;
use servelens::demo::{max_over_mean, run, DemoOptions};

#[tokio::test(start_paused = true)]
async fn prefix_routing_beats_round_robin_on_hits_and_ttft() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = DemoOptions {
        prompts: 8,
        questions: 4,
        concurrency: 4,
        out: dir.path().to_path_buf(),
    };
    let mut shown = Vec::new();
    let report = run(options, &mut shown).await.expect("the demo runs");
    let shown = String::from_utf8(shown).expect("utf-8");

    let [rr, ph] = &report.fleets[..] else {
        panic!("two fleets: {:?}", report.fleets);
    };
    assert_eq!(
        (rr.policy, ph.policy),
        (Policy::RoundRobin, Policy::PrefixHash)
    );
    let (rr_hit, ph_hit) = (
        rr.prefix_cache_hit_ratio.expect("round robin hit ratio"),
        ph.prefix_cache_hit_ratio.expect("prefix hash hit ratio"),
    );
    assert!(
        ph_hit > 1.5 * rr_hit && ph_hit > 0.5,
        "prefix_hash {ph_hit:.3} vs round_robin {rr_hit:.3}\n{shown}"
    );
    for fleet in &report.fleets {
        assert_eq!(
            fleet.requests_per_replica.iter().sum::<u64>(),
            32,
            "{fleet:?}"
        );
        assert!(
            max_over_mean(&fleet.requests_per_replica) <= 1.25,
            "{fleet:?}"
        );
    }

    // The run directory: every request of both targets, a summary, the page.
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(report.dir.join("summary.json")).expect("summary.json"),
    )
    .expect("summary JSON");
    let targets = summary["targets"].as_array().expect("targets");
    let p50 = |name: &str| {
        targets
            .iter()
            .find(|t| t["target"] == name)
            .and_then(|t| t["ttft"]["p50"].as_f64())
            .unwrap_or_else(|| panic!("{name} TTFT p50 in {summary}"))
    };
    assert!(
        p50("prefix_hash") < p50("round_robin"),
        "TTFT p50 prefix_hash {} < round_robin {}",
        p50("prefix_hash"),
        p50("round_robin")
    );
    for t in targets {
        assert_eq!(t["completed"], 32, "{t}");
        assert_eq!(t["errors"], 0, "{t}");
    }
    let requests = std::fs::read_to_string(report.dir.join("requests.jsonl")).expect("jsonl");
    assert_eq!(requests.lines().count(), 64);
    let html = std::fs::read_to_string(report.dir.join("report.html")).expect("report.html");
    assert!(html.contains("<svg") && html.contains("prefix_hash"));

    // What the user reads.
    for expected in [
        "gateway round_robin",
        "gateway prefix_hash",
        "prefix_hash vs round_robin",
        "prefix-cache hit",
        "report.html",
    ] {
        assert!(shown.contains(expected), "{expected:?} in:\n{shown}");
    }
}
