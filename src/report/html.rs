//! `report.html`: one self-contained page (inline CSS and SVG, no scripts, no network) with the
//! summary table (targets side by side), comparisons with confidence intervals, backend metrics,
//! the charts, and the resolved experiment.

use std::fmt::Write as _;

use crate::bench::results::RequestResult;
use crate::bench::stats::Stats;
use crate::report::charts::{self, Series};
use crate::report::compare::Comparison;
use crate::report::summary::{errors_cell, target_names, Pick, Summary, MEASURES};

/// The titles of the charts every report has, in page order.
pub const CHART_TITLES: [&str; 9] = [
    "TTFT CDF",
    "ITL CDF",
    "TPOT CDF",
    "E2E latency CDF",
    "TTFT histogram",
    "ITL histogram",
    "Request throughput over time",
    "Output token throughput over time",
    "Latency percentiles by target",
];

/// What goes on the page.
#[derive(Debug)]
pub struct Page<'a> {
    /// Heading.
    pub title: String,
    /// The numbers.
    pub summary: &'a Summary,
    /// The requests (for the charts).
    pub records: &'a [RequestResult],
    /// Pairwise comparisons to show.
    pub comparisons: &'a [Comparison],
    /// The resolved experiment, shown at the end.
    pub config: Option<&'a str>,
}

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1600px}\
table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}\
th:first-child,td:first-child{text-align:left}thead th{background:#f2f2f2}\
.charts{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;border:1px solid #ddd}\
pre{background:#f7f7f7;padding:12px;overflow:auto}.neg{color:#1a7f37}.pos{color:#b42318}";

/// Renders the page.
pub fn render(page: &Page<'_>) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title><style>{STYLE}</style></head><body>\n<h1>{t}</h1>\n",
        t = escape(&page.title)
    );
    let s = page.summary;
    let _ = writeln!(
        h,
        "<p>run <code>{}</code> · experiment <code>{}</code> · workload <code>{}</code> · {} target(s)</p>",
        escape(&s.run_id),
        escape(&s.experiment),
        escape(&s.workload),
        s.targets.len()
    );
    summary_table(&mut h, s);
    for c in page.comparisons {
        comparison_table(&mut h, c);
    }
    backends_table(&mut h, s);
    h.push_str("<h2>Charts</h2>\n<div class=\"charts\">\n");
    for svg in chart_svgs(s, page.records) {
        let _ = writeln!(h, "<figure>{svg}</figure>");
    }
    h.push_str("</div>\n");
    if let Some(config) = page.config {
        let _ = writeln!(h, "<h2>Experiment</h2>\n<pre>{}</pre>", escape(config));
    }
    h.push_str("</body></html>\n");
    h
}

fn summary_table(h: &mut String, s: &Summary) {
    h.push_str("<h2>Summary</h2>\n<table><thead><tr><th></th>");
    for t in &s.targets {
        let _ = write!(h, "<th>{}</th>", escape(&t.target));
    }
    h.push_str("</tr></thead><tbody>\n");
    let row = |h: &mut String, label: &str, cells: Vec<String>| {
        let _ = write!(h, "<tr><td>{}</td>", escape(label));
        for c in cells {
            let _ = write!(h, "<td>{}</td>", escape(&c));
        }
        h.push_str("</tr>\n");
    };
    let col = |f: &dyn Fn(&crate::report::summary::TargetSummary) -> String| {
        s.targets.iter().map(f).collect::<Vec<_>>()
    };
    row(h, "requests", col(&|t| t.requests.to_string()));
    row(h, "completed", col(&|t| t.completed.to_string()));
    row(h, "errors", col(&|t| errors_cell(t)));
    row(h, "duration (s)", col(&|t| format!("{:.2}", t.duration_s)));
    row(h, "requests/s", col(&|t| format!("{:.2}", t.req_per_s)));
    row(
        h,
        "output tokens/s",
        col(&|t| format!("{:.1}", t.output_tok_per_s)),
    );
    row(
        h,
        "prompt / cached / output tokens",
        col(&|t| {
            format!(
                "{} / {} / {}",
                t.prompt_tokens, t.cached_tokens, t.output_tokens
            )
        }),
    );
    if s.targets
        .iter()
        .any(|t| t.offered_rate.is_some() || t.achieved_rate.is_some())
    {
        let fmt = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.2}"));
        row(
            h,
            "rate offered / achieved (req/s)",
            col(&|t| format!("{} / {}", fmt(t.offered_rate), fmt(t.achieved_rate))),
        );
    }
    for (label, get) in MEASURES {
        let fields: [(&str, Pick); 5] = [
            ("mean", |s| s.mean),
            ("p50", |s| s.p50),
            ("p90", |s| s.p90),
            ("p95", |s| s.p95),
            ("p99", |s| s.p99),
        ];
        for (q, pick) in fields {
            row(
                h,
                &format!("{label} {q} (ms)"),
                col(&|t| get(t).map_or("-".into(), |st| format!("{:.2}", pick(&st) * 1e3))),
            );
        }
    }
    h.push_str("</tbody></table>\n");
}

fn comparison_table(h: &mut String, c: &Comparison) {
    let _ = writeln!(
        h,
        "<h2>{} vs {}</h2>\n<p>Difference = {} − {}; 95% bootstrap intervals ({} resamples, seed {}; requests resampled whole).</p>",
        escape(&c.b),
        escape(&c.a),
        escape(&c.b),
        escape(&c.a),
        c.resamples,
        c.seed
    );
    let _ = writeln!(
        h,
        "<table><thead><tr><th>measure</th><th>{a} (ms)</th><th>{a} 95% CI</th><th>{b} (ms)</th><th>{b} 95% CI</th><th>difference (ms)</th><th>difference 95% CI</th><th>relative</th></tr></thead><tbody>",
        a = escape(&c.a),
        b = escape(&c.b)
    );
    for r in &c.rows {
        let ms = |x: f64| format!("{:.2}", x * 1e3);
        let class = if r.diff.low > 0.0 {
            " class=\"pos\""
        } else if r.diff.high < 0.0 {
            " class=\"neg\""
        } else {
            ""
        };
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>[{}, {}]</td><td>{}</td><td>[{}, {}]</td><td{class}>{:+.2}</td><td>[{:+.2}, {:+.2}]</td><td>{}</td></tr>",
            escape(&r.measure),
            ms(r.a.value),
            ms(r.a.low),
            ms(r.a.high),
            ms(r.b.value),
            ms(r.b.low),
            ms(r.b.high),
            r.diff.value * 1e3,
            r.diff.low * 1e3,
            r.diff.high * 1e3,
            r.relative().map_or("-".into(), |x| format!("{:+.1}%", x * 100.0)),
        );
    }
    h.push_str("</tbody></table>\n");
}

fn backends_table(h: &mut String, s: &Summary) {
    if s.backends.is_empty() {
        return;
    }
    h.push_str("<h2>Scraped /metrics</h2>\n<table><thead><tr><th>page</th><th>scraped</th><th>prefix-cache hit ratio</th><th>source</th><th>requests counted</th><th>queue before / after</th><th>queue max / mean</th></tr></thead><tbody>\n");
    let f = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.3}"));
    for b in &s.backends {
        let _ = writeln!(
            h,
            "<tr><td>{} <code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{} / {}</td></tr>",
            escape(&b.name),
            escape(&b.url),
            if b.scraped { "yes" } else { "no" },
            f(b.prefix_cache_hit_ratio),
            escape(b.prefix_cache_source.as_deref().unwrap_or("-")),
            f(b.requests),
            f(b.queue_before),
            f(b.queue_after),
            f(b.queue_max),
            f(b.queue_mean),
        );
    }
    h.push_str("</tbody></table>\n");
}

/// Every chart of the page, as SVG text, in [`CHART_TITLES`] order.
pub fn chart_svgs(s: &Summary, records: &[RequestResult]) -> Vec<String> {
    let names: Vec<String> = if s.targets.is_empty() {
        target_names(None, records)
    } else {
        s.targets.iter().map(|t| t.target.clone()).collect()
    };
    fn ok<'r>(
        records: &'r [RequestResult],
        name: &'r str,
    ) -> impl Iterator<Item = &'r RequestResult> + 'r {
        records.iter().filter(move |r| r.ok && r.target == name)
    }
    let series = |f: &dyn Fn(&RequestResult) -> Vec<f64>| -> Vec<Series> {
        names
            .iter()
            .map(|n| Series {
                name: n.clone(),
                values: ok(records, n).flat_map(f).collect(),
            })
            .collect()
    };
    let ttft = series(&|r| r.ttft_s.into_iter().collect());
    let itl = series(&|r| r.itl_s.clone());
    let tpot = series(&|r| r.tpot_s.into_iter().collect());
    let e2e = series(&|r| vec![r.e2e_s]);
    let requests: Vec<(String, Vec<(f64, f64)>)> = names
        .iter()
        .map(|n| (n.clone(), ok(records, n).map(|r| (r.end_s, 1.0)).collect()))
        .collect();
    let tokens: Vec<(String, Vec<(f64, f64)>)> = names
        .iter()
        .map(|n| {
            let events = ok(records, n)
                .map(|r| (r.end_s, r.output_tokens.unwrap_or(0) as f64))
                .collect();
            (n.clone(), events)
        })
        .collect();
    let mut groups = Vec::new();
    for (label, get) in MEASURES
        .iter()
        .filter(|(l, _)| matches!(*l, "TTFT" | "ITL" | "E2E"))
    {
        for (q, pick) in [
            ("p50", (|s: &Stats| s.p50) as fn(&Stats) -> f64),
            ("p90", |s| s.p90),
            ("p99", |s| s.p99),
        ] {
            let values = s
                .targets
                .iter()
                .map(|t| get(t).map(|st| pick(&st)))
                .collect();
            groups.push((format!("{label} {q}"), values));
        }
    }
    let [t_ttft, t_itl, t_tpot, t_e2e, h_ttft, h_itl, o_req, o_tok, bars] = CHART_TITLES;
    vec![
        charts::cdf(t_ttft, "time to first token (ms)", &ttft),
        charts::cdf(t_itl, "inter-token latency (ms)", &itl),
        charts::cdf(t_tpot, "time per output token (ms)", &tpot),
        charts::cdf(t_e2e, "end-to-end latency (ms)", &e2e),
        charts::histogram(h_ttft, "time to first token (ms)", &ttft, 40),
        charts::histogram(h_itl, "inter-token latency (ms)", &itl, 40),
        charts::over_time(o_req, "completed requests / s", &requests),
        charts::over_time(o_tok, "output tokens / s", &tokens),
        charts::grouped_bars(bars, &names, &groups),
    ]
}
