//! Comparing two sets of requests (two runs, or two targets of one run): p50 and p99 of TTFT,
//! ITL and E2E for each side, their difference, and seeded bootstrap 95% confidence intervals.
//!
//! Requests are resampled whole (see [`crate::bench::stats::compare_percentile`]), so the ITL
//! intervals account for the gaps of one request being correlated. The same seed gives the same
//! intervals, so a report re-rendered from the same files is byte-identical.

use serde::{Deserialize, Serialize};

use crate::bench::results::RequestResult;
use crate::bench::stats::{compare_percentile, Bootstrap, Estimate};
use crate::report::summary::render_table;

/// One compared statistic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// `TTFT p50`, ...
    pub measure: String,
    /// Side A, seconds.
    pub a: Estimate,
    /// Side B, seconds.
    pub b: Estimate,
    /// B − A, seconds.
    pub diff: Estimate,
}

impl Row {
    /// (B − A) / A.
    pub fn relative(&self) -> Option<f64> {
        (self.a.value != 0.0).then(|| self.diff.value / self.a.value)
    }
}

/// A side-by-side comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Name of side A (the baseline).
    pub a: String,
    /// Name of side B.
    pub b: String,
    /// Bootstrap resamples.
    pub resamples: usize,
    /// Bootstrap seed.
    pub seed: u64,
    /// The compared statistics.
    pub rows: Vec<Row>,
}

type Extract = fn(&RequestResult) -> Vec<f64>;

/// The measures compared, each as the samples one request contributes.
const MEASURES: [(&str, Extract); 3] = [
    ("TTFT", |r| r.ttft_s.into_iter().collect()),
    ("ITL", |r| r.itl_s.clone()),
    ("E2E", |r| vec![r.e2e_s]),
];

/// Compares the successful requests of `a` and `b`.
pub fn compare(
    a_name: &str,
    a: &[&RequestResult],
    b_name: &str,
    b: &[&RequestResult],
    settings: Bootstrap,
) -> Comparison {
    let mut rows = Vec::new();
    for (label, extract) in MEASURES {
        let groups = |side: &[&RequestResult]| -> Vec<Vec<f64>> {
            side.iter()
                .filter(|r| r.ok)
                .map(|r| extract(r))
                .filter(|g| !g.is_empty())
                .collect()
        };
        let (ga, gb) = (groups(a), groups(b));
        for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
            if let Some((ea, eb, diff)) = compare_percentile(&ga, &gb, q, settings) {
                rows.push(Row {
                    measure: format!("{label} {name}"),
                    a: ea,
                    b: eb,
                    diff,
                });
            }
        }
    }
    Comparison {
        a: a_name.to_string(),
        b: b_name.to_string(),
        resamples: settings.resamples,
        seed: settings.seed,
        rows,
    }
}

impl Comparison {
    /// The terminal table.
    pub fn table(&self) -> String {
        let ms = |x: f64| format!("{:.2}", x * 1e3);
        let rows: Vec<(String, Vec<String>)> = self
            .rows
            .iter()
            .map(|r| {
                (
                    format!("{} ms", r.measure),
                    vec![
                        format!("{} [{}, {}]", ms(r.a.value), ms(r.a.low), ms(r.a.high)),
                        format!("{} [{}, {}]", ms(r.b.value), ms(r.b.low), ms(r.b.high)),
                        format!(
                            "{:+.2} [{:+.2}, {:+.2}]",
                            r.diff.value * 1e3,
                            r.diff.low * 1e3,
                            r.diff.high * 1e3
                        ),
                        r.relative()
                            .map_or("-".into(), |x| format!("{:+.1}%", x * 100.0)),
                    ],
                )
            })
            .collect();
        render_table(
            &format!(
                "{} vs {} (95% bootstrap CI, {} resamples, seed {})",
                self.b, self.a, self.resamples, self.seed
            ),
            &[
                self.a.clone(),
                self.b.clone(),
                "difference (B - A)".into(),
                "relative".into(),
            ],
            &rows,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ttft: f64) -> RequestResult {
        RequestResult {
            target: "x".into(),
            id: String::new(),
            request_id: String::new(),
            session: None,
            turn: None,
            start_s: 0.0,
            end_s: 1.0,
            status: 200,
            ok: true,
            error: None,
            stream: true,
            ttfb_s: None,
            ttft_s: Some(ttft),
            e2e_s: ttft * 2.0,
            tpot_s: None,
            itl_s: vec![ttft / 10.0, ttft / 5.0],
            prompt_tokens: None,
            cached_tokens: None,
            output_tokens: None,
            output_tokens_estimated: false,
            finish_reason: None,
            chunks: 0,
            content_events: 0,
        }
    }

    #[test]
    fn a_doubling_is_seen_with_a_tight_interval() {
        let a: Vec<RequestResult> = (1..=200).map(|i| rec(0.1 + f64::from(i) * 1e-4)).collect();
        let b: Vec<RequestResult> = (1..=200).map(|i| rec(0.2 + f64::from(i) * 2e-4)).collect();
        let (ra, rb): (Vec<&RequestResult>, Vec<&RequestResult>) =
            (a.iter().collect(), b.iter().collect());
        let c = compare("a", &ra, "b", &rb, Bootstrap::default());
        assert_eq!(c.rows.len(), 6);
        let ttft = &c.rows[0];
        assert_eq!(ttft.measure, "TTFT p50");
        assert!((ttft.a.value - 0.11005).abs() < 1e-9);
        assert!((ttft.relative().unwrap_or(0.0) - 1.0).abs() < 0.01);
        assert!(
            ttft.diff.low > 0.09 && ttft.diff.high < 0.13,
            "{:?}",
            ttft.diff
        );
        assert_eq!(
            c,
            compare("a", &ra, "b", &rb, Bootstrap::default()),
            "seeded"
        );
        assert!(c.table().contains("ITL p99 ms"));
    }
}
