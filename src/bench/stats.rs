//! Descriptive statistics of latency samples: mean and percentiles, and seeded bootstrap
//! confidence intervals for percentiles and their differences.
//!
//! Percentiles interpolate linearly between closest ranks (numpy's default, `(n − 1)·q`), the
//! definition vLLM's and most Python benchmark tools' summaries use, so numbers can be compared
//! with theirs. Exact over all samples (no sketch): a run's samples fit in memory.

use serde::{Deserialize, Serialize};

use crate::bench::prompts::Rng;

/// Mean and percentiles of one measure, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Samples.
    pub count: usize,
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Stats {
    /// Statistics of `samples` (non-finite values are dropped); `None` when there are none.
    pub fn of(samples: &[f64]) -> Option<Self> {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let at = |q: f64| percentile_sorted(&sorted, q);
        Some(Self {
            count: sorted.len(),
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
            p50: at(0.50),
            p90: at(0.90),
            p95: at(0.95),
            p99: at(0.99),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        })
    }
}

/// Percentile `q` (0..=1) of sorted samples, linear between closest ranks.
pub fn percentile_sorted(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let rank = q.clamp(0.0, 1.0) * (n - 1) as f64;
            let lo = rank.floor() as usize;
            let hi = rank.ceil() as usize;
            sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
        }
    }
}

/// Percentile `q` of unsorted samples, reordering them (O(n) selection).
pub fn percentile(samples: &mut [f64], q: f64) -> f64 {
    let n = samples.len();
    if n <= 1 {
        return samples.first().copied().unwrap_or(f64::NAN);
    }
    let rank = q.clamp(0.0, 1.0) * (n - 1) as f64;
    let lo = rank.floor() as usize;
    let (_, lo_value, above) = samples.select_nth_unstable_by(lo, f64::total_cmp);
    let lo_value = *lo_value;
    let frac = rank - lo as f64;
    if frac == 0.0 || above.is_empty() {
        return lo_value;
    }
    let hi_value = above.iter().copied().fold(f64::INFINITY, f64::min);
    lo_value + (hi_value - lo_value) * frac
}

/// A point estimate with a confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// On the observed samples.
    pub value: f64,
    /// Lower bound of the interval.
    pub low: f64,
    /// Upper bound of the interval.
    pub high: f64,
}

/// Bootstrap settings.
#[derive(Debug, Clone, Copy)]
pub struct Bootstrap {
    /// Resamples.
    pub resamples: usize,
    /// Seed (the same seed gives the same intervals).
    pub seed: u64,
    /// Confidence level, e.g. 0.95.
    pub level: f64,
}

impl Default for Bootstrap {
    fn default() -> Self {
        Self {
            resamples: 1000,
            seed: 0,
            level: 0.95,
        }
    }
}

/// Percentile `q` of groups of samples (one group per request), its bootstrap interval, for
/// `a`, `b` and the difference `b − a`.
///
/// Requests are resampled whole (a cluster bootstrap): the inter-token gaps of one request are
/// not independent of each other, so resampling single gaps would give too narrow an interval.
/// For one sample per request this is the ordinary bootstrap.
pub fn compare_percentile(
    a: &[Vec<f64>],
    b: &[Vec<f64>],
    q: f64,
    settings: Bootstrap,
) -> Option<(Estimate, Estimate, Estimate)> {
    let flat = |groups: &[Vec<f64>]| groups.iter().flatten().copied().collect::<Vec<f64>>();
    let (mut fa, mut fb) = (flat(a), flat(b));
    if fa.is_empty() || fb.is_empty() {
        return None;
    }
    let (va, vb) = (percentile(&mut fa, q), percentile(&mut fb, q));
    let mut rng = Rng::new(settings.seed);
    let mut da = Vec::with_capacity(settings.resamples);
    let mut db = Vec::with_capacity(settings.resamples);
    let mut diff = Vec::with_capacity(settings.resamples);
    let mut scratch = Vec::new();
    for _ in 0..settings.resamples {
        let ra = resampled_percentile(a, q, &mut rng, &mut scratch);
        let rb = resampled_percentile(b, q, &mut rng, &mut scratch);
        if let (Some(ra), Some(rb)) = (ra, rb) {
            da.push(ra);
            db.push(rb);
            diff.push(rb - ra);
        }
    }
    let interval = |value: f64, draws: &mut Vec<f64>| {
        let tail = (1.0 - settings.level) / 2.0;
        draws.sort_by(f64::total_cmp);
        Estimate {
            value,
            low: percentile_sorted(draws, tail),
            high: percentile_sorted(draws, 1.0 - tail),
        }
    };
    Some((
        interval(va, &mut da),
        interval(vb, &mut db),
        interval(vb - va, &mut diff),
    ))
}

fn resampled_percentile(
    groups: &[Vec<f64>],
    q: f64,
    rng: &mut Rng,
    scratch: &mut Vec<f64>,
) -> Option<f64> {
    scratch.clear();
    for _ in 0..groups.len() {
        let pick = rng.below(groups.len() as u64) as usize;
        scratch.extend_from_slice(&groups[pick]);
    }
    (!scratch.is_empty()).then(|| percentile(scratch, q))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let s = Stats::of(&[4.0, 1.0, 3.0, 2.0, f64::NAN]).expect("samples");
        assert_eq!(s.count, 4);
        assert_eq!(s.mean, 2.5);
        assert_eq!(s.p50, 2.5);
        assert!((s.p90 - 3.7).abs() < 1e-12);
        assert!((s.p99 - 3.97).abs() < 1e-12);
        assert_eq!((s.min, s.max), (1.0, 4.0));
        assert!(Stats::of(&[]).is_none());
        let mut v = vec![4.0, 1.0, 3.0, 2.0];
        assert!((percentile(&mut v, 0.9) - 3.7).abs() < 1e-12);
    }

    #[test]
    fn selection_agrees_with_sorting() {
        let mut rng = Rng::new(9);
        let data: Vec<f64> = (0..1001).map(|_| rng.unit()).collect();
        let mut sorted = data.clone();
        sorted.sort_by(f64::total_cmp);
        for q in [0.0, 0.13, 0.5, 0.99, 1.0] {
            let mut copy = data.clone();
            assert_eq!(percentile(&mut copy, q), percentile_sorted(&sorted, q));
        }
    }

    #[test]
    fn bootstrap_is_seeded_and_covers_a_real_shift() {
        let mut rng = Rng::new(5);
        let a: Vec<Vec<f64>> = (0..300).map(|_| vec![1.0 + rng.unit()]).collect();
        let b: Vec<Vec<f64>> = (0..300).map(|_| vec![1.5 + rng.unit()]).collect();
        let run = || compare_percentile(&a, &b, 0.5, Bootstrap::default()).expect("samples");
        let (ea, eb, diff) = run();
        assert_eq!(run(), (ea, eb, diff), "same seed, same intervals");
        assert!(ea.low <= ea.value && ea.value <= ea.high);
        assert!(diff.low > 0.3 && diff.high < 0.7, "{diff:?}");
        let (_, _, none) = compare_percentile(&a, &a, 0.5, Bootstrap::default()).expect("samples");
        assert!(none.low < 0.0 && none.high > 0.0, "{none:?}");
    }
}
