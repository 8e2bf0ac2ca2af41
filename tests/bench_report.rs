//! `servelens report` on a fixed run (`tests/fixtures/bench/run/`): a deterministic
//! `summary.json` equal to the golden file, a self-contained `report.html` with the expected
//! charts, and a two-run comparison with confidence intervals.
//!
//! To accept a deliberate change of the summary: `SERVELENS_UPDATE_GOLDEN=1 cargo test --test
//! bench_report`, then review the diff of `tests/fixtures/bench/summary.json`.

use std::path::{Path, PathBuf};

use servelens::report::cli::{run, ReportArgs};
use servelens::report::html::CHART_TITLES;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/bench")
        .join(name)
}

/// A copy of the fixture run in `parent/<name>` (the directory name is the run id).
fn copy_run(parent: &Path, name: &str) -> PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    for file in ["config.toml", "requests.jsonl"] {
        std::fs::copy(fixture("run").join(file), dir.join(file)).expect("copy");
    }
    dir
}

fn args(runs: Vec<PathBuf>) -> ReportArgs {
    ReportArgs {
        runs,
        targets: None,
        resamples: 1000,
        seed: 0,
        out: None,
    }
}

/// The trimmed contents of every SVG `<text>` element.
fn svg_texts(html: &str) -> Vec<String> {
    html.split("<text")
        .skip(1)
        .filter_map(|t| {
            let body = &t[t.find('>')? + 1..];
            Some(body[..body.find("</text>")?].trim().to_string())
        })
        .collect()
}

fn report(args: ReportArgs) -> String {
    let mut out = Vec::new();
    run(args, &mut out).expect("report");
    String::from_utf8(out).expect("utf-8")
}

#[test]
fn summary_is_the_golden_file_and_rerenders_identically() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = copy_run(tmp.path(), "fixture-run");
    let printed = report(args(vec![dir.clone()]));
    let summary = std::fs::read_to_string(dir.join("summary.json")).expect("summary.json");
    let golden = fixture("summary.json");
    if std::env::var_os("SERVELENS_UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &summary).expect("update golden");
    }
    let expected = std::fs::read_to_string(&golden).expect("golden summary");
    assert_eq!(
        summary,
        expected,
        "summary.json differs from {}",
        golden.display()
    );

    let html = std::fs::read_to_string(dir.join("report.html")).expect("report.html");
    report(args(vec![dir.clone()]));
    assert_eq!(
        std::fs::read_to_string(dir.join("summary.json")).expect("summary.json"),
        summary
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("report.html")).expect("report.html"),
        html,
        "a re-render is byte-identical (seeded bootstrap)"
    );

    // The terminal shows both targets side by side and their comparison.
    assert!(printed.contains("direct") && printed.contains("gateway"));
    assert!(printed.contains("2 (http_5xx 1, timeout 1)"), "{printed}");
    assert!(
        printed.contains("gateway vs direct (95% bootstrap CI"),
        "{printed}"
    );
}

#[test]
fn report_html_is_self_contained_with_every_chart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = copy_run(tmp.path(), "fixture-run");
    report(args(vec![dir.clone()]));
    let html = std::fs::read_to_string(dir.join("report.html")).expect("report.html");
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert_eq!(html.matches("<svg").count(), CHART_TITLES.len());
    let texts = svg_texts(&html);
    for title in CHART_TITLES {
        assert!(
            texts.iter().any(|t| t == title),
            "chart `{title}` is drawn with its title"
        );
    }
    assert!(
        texts.iter().any(|t| t == "direct") && texts.iter().any(|t| t == "gateway"),
        "legends"
    );
    assert!(!html.contains("no samples"), "every chart has data");
    // Curves of both targets (the first two palette colours) in the CDFs, bars in histograms.
    assert!(html.contains("stroke=\"#1F77B4\"") && html.contains("stroke=\"#FF7F0E\""));
    assert!(html.contains("<polyline") && html.contains("<rect"));
    // Self-contained: no scripts, no external resources.
    for forbidden in ["<script", " src=", " href=", "<link"] {
        assert!(!html.contains(forbidden), "{forbidden} in report.html");
    }
    // The side-by-side table and the comparison.
    assert!(html.contains("<th>direct</th><th>gateway</th>"));
    assert!(html.contains("<h2>gateway vs direct</h2>"));
    for row in [
        "TTFT p50", "TTFT p99", "ITL p50", "ITL p99", "E2E p50", "E2E p99",
    ] {
        assert!(
            html.contains(&format!("<td>{row}</td>")),
            "comparison row {row}"
        );
    }
    assert!(html.contains("TTFT p99 (ms)"));
}

#[test]
fn two_runs_are_compared_with_intervals() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = copy_run(tmp.path(), "run-a");
    let b = copy_run(tmp.path(), "run-b");
    let mut compare = args(vec![a, b.clone()]);
    compare.targets = Some("direct,gateway".into());
    let printed = report(compare);
    assert!(
        printed
            .contains("run-b/gateway vs run-a/direct (95% bootstrap CI, 1000 resamples, seed 0)"),
        "{printed}"
    );
    // TTFT p50 of the fixture: direct 97.72 ms, gateway 103.30 ms (independently computed).
    assert!(printed.contains("97.72 ["), "{printed}");
    assert!(printed.contains("103.30 ["), "{printed}");
    let page = std::fs::read_to_string(b.join("compare.html")).expect("compare.html");
    assert!(page.contains("<h2>run-b/gateway vs run-a/direct</h2>"));
    let texts = svg_texts(&page);
    for title in CHART_TITLES {
        assert!(texts.iter().any(|t| t == title), "{title}");
    }
    assert!(
        texts.iter().any(|t| t == "run-a/direct"),
        "legend names the run and target"
    );

    let mut missing = args(vec![tmp.path().join("run-a"), b]);
    missing.targets = Some("direct,nope".into());
    let err = run(missing, &mut Vec::new()).expect_err("no such target");
    assert!(err.to_string().contains("no target `nope`"), "{err}");
}
