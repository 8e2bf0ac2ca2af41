//! `summary.json`: per target, counts, errors, throughput and the mean/p50/p90/p95/p99 of TTFB,
//! TTFT, ITL, TPOT and E2E, computed from `requests.jsonl` alone (so a re-render gives the same
//! file), plus the terminal table printed at the end of a run.
//!
//! Latency statistics count successful requests only; ITL pools every gap of every successful
//! request (one sample per content event, as `vllm bench` does). Throughput divides by the span
//! from the first request sent to the last one finished.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::bench::experiment::Experiment;
use crate::bench::results::RequestResult;
use crate::bench::scrape::EndpointReport;
use crate::bench::stats::Stats;

/// The whole `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The run directory's name.
    pub run_id: String,
    /// Experiment name.
    pub experiment: String,
    /// Workload kind.
    pub workload: String,
    /// One entry per target, in the experiment's order.
    pub targets: Vec<TargetSummary>,
    /// What the scraped `/metrics` pages showed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<EndpointReport>,
}

/// One target's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetSummary {
    /// Target name.
    pub target: String,
    /// Requests sent.
    pub requests: usize,
    /// Requests that succeeded.
    pub completed: usize,
    /// Requests that failed.
    pub errors: usize,
    /// Failures by class.
    pub error_classes: BTreeMap<String, usize>,
    /// First send → last end, seconds.
    pub duration_s: f64,
    /// Successful requests per second.
    pub req_per_s: f64,
    /// Output tokens of successful requests per second.
    pub output_tok_per_s: f64,
    /// Prompt tokens of successful requests.
    pub prompt_tokens: u64,
    /// Cached prompt tokens (when the backend reports them).
    pub cached_tokens: u64,
    /// Output tokens of successful requests.
    pub output_tokens: u64,
    /// Configured arrival rate (open loop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offered_rate: Option<f64>,
    /// Dispatch rate actually achieved (open loop): (n − 1) / (last send − first send).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub achieved_rate: Option<f64>,
    /// Time to first byte, seconds.
    pub ttfb: Option<Stats>,
    /// Time to first token, seconds.
    pub ttft: Option<Stats>,
    /// Inter-token latency, seconds.
    pub itl: Option<Stats>,
    /// Time per output token, seconds.
    pub tpot: Option<Stats>,
    /// End-to-end latency, seconds.
    pub e2e: Option<Stats>,
}

/// The target names of a run: the experiment's order, then any others in order of appearance.
pub fn target_names(exp: Option<&Experiment>, records: &[RequestResult]) -> Vec<String> {
    let mut names: Vec<String> = exp
        .map(|e| e.targets.iter().map(|t| t.name.clone()).collect())
        .unwrap_or_default();
    for r in records {
        if !names.contains(&r.target) {
            names.push(r.target.clone());
        }
    }
    names
}

/// Summarises a run.
pub fn summarize(
    run_id: &str,
    exp: Option<&Experiment>,
    records: &[RequestResult],
    backends: Vec<EndpointReport>,
) -> Summary {
    let open_loop = exp.is_some_and(|e| matches!(e.workload.kind(), "rate" | "replay"));
    let offered = exp.and_then(|e| e.workload.offered_rate());
    let targets = target_names(exp, records)
        .into_iter()
        .map(|name| {
            let mine: Vec<&RequestResult> = records.iter().filter(|r| r.target == name).collect();
            let mut s = summarize_target(&name, &mine);
            if open_loop {
                s.offered_rate = offered;
                s.achieved_rate = achieved_rate(&mine);
            }
            s
        })
        .collect();
    Summary {
        run_id: run_id.to_string(),
        experiment: exp.map_or_else(|| "unknown".into(), |e| e.name.clone()),
        workload: exp.map_or_else(|| "unknown".into(), |e| e.workload.kind().to_string()),
        targets,
        backends,
    }
}

/// One target's summary from its records.
pub fn summarize_target(name: &str, records: &[&RequestResult]) -> TargetSummary {
    let ok: Vec<&&RequestResult> = records.iter().filter(|r| r.ok).collect();
    let mut error_classes = BTreeMap::new();
    for r in records.iter().filter(|r| !r.ok) {
        let class = r.error.map_or("unknown", |e| e.as_str());
        *error_classes.entry(class.to_string()).or_insert(0) += 1;
    }
    let first = records
        .iter()
        .map(|r| r.start_s)
        .fold(f64::INFINITY, f64::min);
    let last = records
        .iter()
        .map(|r| r.end_s)
        .fold(f64::NEG_INFINITY, f64::max);
    let duration = if records.is_empty() {
        0.0
    } else {
        (last - first).max(0.0)
    };
    let per_s = |x: f64| if duration > 0.0 { x / duration } else { 0.0 };
    let sum = |f: fn(&RequestResult) -> Option<u64>| ok.iter().filter_map(|r| f(r)).sum::<u64>();
    let output_tokens = sum(|r| r.output_tokens);
    let of = |f: fn(&RequestResult) -> Option<f64>| {
        Stats::of(&ok.iter().filter_map(|r| f(r)).collect::<Vec<f64>>())
    };
    let itl: Vec<f64> = ok.iter().flat_map(|r| r.itl_s.iter().copied()).collect();
    TargetSummary {
        target: name.to_string(),
        requests: records.len(),
        completed: ok.len(),
        errors: records.len() - ok.len(),
        error_classes,
        duration_s: duration,
        req_per_s: per_s(ok.len() as f64),
        output_tok_per_s: per_s(output_tokens as f64),
        prompt_tokens: sum(|r| r.prompt_tokens),
        cached_tokens: sum(|r| r.cached_tokens),
        output_tokens,
        offered_rate: None,
        achieved_rate: None,
        ttfb: of(|r| r.ttfb_s),
        ttft: of(|r| r.ttft_s),
        itl: Stats::of(&itl),
        tpot: of(|r| r.tpot_s),
        e2e: of(|r| Some(r.e2e_s)),
    }
}

fn achieved_rate(records: &[&RequestResult]) -> Option<f64> {
    let mut starts: Vec<f64> = records.iter().map(|r| r.start_s).collect();
    starts.sort_by(f64::total_cmp);
    let span = starts.last()? - starts.first()?;
    (starts.len() > 1 && span > 0.0).then(|| (starts.len() - 1) as f64 / span)
}

impl Summary {
    /// The terminal table: one column per target.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, Vec<String>)> = Vec::new();
        let col = |f: &dyn Fn(&TargetSummary) -> String| -> Vec<String> {
            self.targets.iter().map(f).collect()
        };
        rows.push(("requests".into(), col(&|t| t.requests.to_string())));
        rows.push(("completed".into(), col(&|t| t.completed.to_string())));
        rows.push(("errors".into(), col(&|t| errors_cell(t))));
        rows.push((
            "duration s".into(),
            col(&|t| format!("{:.2}", t.duration_s)),
        ));
        rows.push(("req/s".into(), col(&|t| format!("{:.2}", t.req_per_s))));
        rows.push((
            "output tok/s".into(),
            col(&|t| format!("{:.1}", t.output_tok_per_s)),
        ));
        if self
            .targets
            .iter()
            .any(|t| t.offered_rate.is_some() || t.achieved_rate.is_some())
        {
            rows.push((
                "rate offered/achieved".into(),
                col(&|t| format!("{}/{}", opt2(t.offered_rate), opt2(t.achieved_rate))),
            ));
        }
        for (label, get) in MEASURES {
            for (q, pick) in [
                ("mean", pick_mean as fn(&Stats) -> f64),
                ("p50", |s: &Stats| s.p50),
                ("p90", |s: &Stats| s.p90),
                ("p99", |s: &Stats| s.p99),
            ] {
                rows.push((
                    format!("{label} {q} ms"),
                    col(&|t| get(t).map_or("-".into(), |s| format!("{:.2}", pick(&s) * 1e3))),
                ));
            }
        }
        render_table(
            &format!(
                "{} ({}), run {}",
                self.experiment, self.workload, self.run_id
            ),
            &self
                .targets
                .iter()
                .map(|t| t.target.clone())
                .collect::<Vec<_>>(),
            &rows,
        )
    }
}

/// Reads one latency measure of a target.
pub type Measure = fn(&TargetSummary) -> Option<Stats>;

/// Reads one statistic (mean, a percentile) of a measure.
pub type Pick = fn(&Stats) -> f64;

/// The latency measures in display order.
pub const MEASURES: [(&str, Measure); 5] = [
    ("TTFB", |t| t.ttfb),
    ("TTFT", |t| t.ttft),
    ("ITL", |t| t.itl),
    ("TPOT", |t| t.tpot),
    ("E2E", |t| t.e2e),
];

fn pick_mean(s: &Stats) -> f64 {
    s.mean
}

fn opt2(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{x:.2}"))
}

/// `3 (timeout 2, http_5xx 1)`.
pub fn errors_cell(t: &TargetSummary) -> String {
    if t.error_classes.is_empty() {
        return t.errors.to_string();
    }
    let classes: Vec<String> = t
        .error_classes
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    format!("{} ({})", t.errors, classes.join(", "))
}

/// A plain fixed-width table with a title, a header row and labelled rows.
pub fn render_table(title: &str, header: &[String], rows: &[(String, Vec<String>)]) -> String {
    let label_w = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0).max(8);
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .filter_map(|(_, cells)| cells.get(i).map(String::len))
                .chain(std::iter::once(header[i].len()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut s = String::new();
    let _ = writeln!(s, "{title}");
    let _ = write!(s, "  {:<label_w$}", "");
    for (h, w) in header.iter().zip(&widths) {
        let _ = write!(s, "  {h:>w$}");
    }
    s.push('\n');
    for (label, cells) in rows {
        let _ = write!(s, "  {label:<label_w$}");
        for (c, w) in cells.iter().zip(&widths) {
            let _ = write!(s, "  {c:>w$}");
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::results::ErrorClass;

    fn record(target: &str, start: f64, e2e: f64, ok: bool) -> RequestResult {
        RequestResult {
            target: target.into(),
            id: format!("{start}"),
            request_id: String::new(),
            session: None,
            turn: None,
            start_s: start,
            end_s: start + e2e,
            status: if ok { 200 } else { 503 },
            ok,
            error: (!ok).then_some(ErrorClass::Http5xx),
            stream: true,
            ttfb_s: Some(0.05),
            ttft_s: Some(0.1),
            e2e_s: e2e,
            tpot_s: Some(0.01),
            itl_s: vec![0.01, 0.02],
            prompt_tokens: Some(10),
            cached_tokens: None,
            output_tokens: Some(5),
            output_tokens_estimated: false,
            finish_reason: Some("stop".into()),
            chunks: 6,
            content_events: 5,
        }
    }

    #[test]
    fn counts_rates_and_errors() {
        let records = vec![
            record("a", 0.0, 1.0, true),
            record("a", 1.0, 1.0, true),
            record("a", 1.5, 0.5, false),
            record("b", 0.0, 4.0, true),
        ];
        let s = summarize("run", None, &records, Vec::new());
        let a = &s.targets[0];
        assert_eq!((a.requests, a.completed, a.errors), (3, 2, 1));
        assert_eq!(a.error_classes["http_5xx"], 1);
        assert_eq!(a.duration_s, 2.0);
        assert_eq!(a.req_per_s, 1.0);
        assert_eq!(a.output_tok_per_s, 5.0);
        assert_eq!(a.itl.map(|i| i.count), Some(4));
        assert_eq!(a.e2e.map(|e| e.mean), Some(1.0));
        assert_eq!(s.targets[1].target, "b");
        let table = s.table();
        assert!(table.contains("TTFT p99 ms"), "{table}");
        assert!(table.contains("1 (http_5xx 1)"), "{table}");
    }
}
