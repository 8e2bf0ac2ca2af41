//! The report's charts, drawn by `plotters` straight to SVG text (no fonts, no images), one
//! series per target so targets are compared in the same axes.
//!
//! | chart | what |
//! |---|---|
//! | [`cdf`] | empirical CDF of a latency, per target |
//! | [`histogram`] | a latency's distribution in equal-width bins, per target |
//! | [`over_time`] | a rate in one-second bins over the run, per target |
//! | [`grouped_bars`] | p50/p90/p99 of each latency, targets side by side |
//!
//! Every chart's SVG carries its title as a `<text>` element, which the tests look for.

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::bench::stats::percentile_sorted;

/// Width and height of a chart in pixels.
const SIZE: (u32, u32) = (760, 380);

/// Colours of targets, in order.
const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// The colour of series `i`.
pub fn colour(i: usize) -> RGBColor {
    COLOURS[i % COLOURS.len()]
}

/// One named series of values.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend name (the target).
    pub name: String,
    /// Values (seconds for latencies).
    pub values: Vec<f64>,
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// Renders a chart into an SVG string; a drawing failure becomes a small SVG saying so.
fn render(title: &str, draw: impl FnOnce(&Area<'_>) -> Result<(), String>) -> String {
    let mut svg = String::new();
    let outcome = {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| e.to_string())
            .and_then(|()| draw(&root))
            .and_then(|()| root.present().map_err(|e| e.to_string()))
    };
    match outcome {
        Ok(()) => svg,
        Err(e) => format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"60\"><text x=\"10\" y=\"30\">{}: {}</text></svg>",
            SIZE.0,
            crate::report::html::escape(title),
            crate::report::html::escape(&e)
        ),
    }
}

/// Values in milliseconds, sorted, non-finite dropped.
fn sorted_ms(values: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = values
        .iter()
        .filter(|x| x.is_finite())
        .map(|x| x * 1e3)
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

/// A padded axis range covering `lo..hi`.
fn range(lo: f64, hi: f64) -> std::ops::Range<f64> {
    if !(lo.is_finite() && hi.is_finite()) {
        return 0.0..1.0;
    }
    let span = (hi - lo).max(hi.abs() * 0.05).max(1e-6);
    (lo - span * 0.02).max(if lo >= 0.0 { 0.0 } else { f64::MIN })..hi + span * 0.05
}

fn no_data(area: &Area<'_>, title: &str) -> Result<(), String> {
    area.draw(&Text::new(
        format!("{title}: no samples"),
        (20, 40),
        ("sans-serif", 18).into_font(),
    ))
    .map_err(|e| e.to_string())
}

/// Each non-empty series' values in ms, sorted ascending.
fn sorted_series(series: &[Series]) -> Vec<(String, Vec<f64>)> {
    series
        .iter()
        .map(|s| (s.name.clone(), sorted_ms(&s.values)))
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

/// The x range drawn for sorted series: smallest value to the largest p99.5 (so one outlier does
/// not flatten the chart); `None` when there is nothing to draw.
fn shown_range(sorted: &[(String, Vec<f64>)]) -> Option<(f64, f64)> {
    if sorted.is_empty() {
        return None;
    }
    let lo = sorted
        .iter()
        .map(|(_, v)| v[0])
        .fold(f64::INFINITY, f64::min);
    let hi = sorted
        .iter()
        .map(|(_, v)| percentile_sorted(v, 0.995))
        .fold(f64::NEG_INFINITY, f64::max);
    Some((lo, hi))
}

/// Empirical CDF of `series` (seconds, drawn in ms); the x axis stops at the largest p99.5 so
/// one outlier does not flatten the curves.
pub fn cdf(title: &str, x_desc: &str, series: &[Series]) -> String {
    render(title, |area| {
        let sorted = sorted_series(series);
        let Some((lo, hi)) = shown_range(&sorted) else {
            return no_data(area, title);
        };
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(range(lo, hi), 0.0..1.0)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc("fraction of samples")
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (name, values)) in sorted.iter().enumerate() {
            let n = values.len() as f64;
            let step = (values.len() / 2000).max(1);
            let points: Vec<(f64, f64)> = values
                .iter()
                .enumerate()
                .filter(|(k, _)| k % step == 0 || *k + 1 == values.len())
                .map(|(k, x)| (*x, (k + 1) as f64 / n))
                .collect();
            line(&mut chart, points, name, i)?;
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight)
    })
}

/// Equal-width histogram of `series` (seconds, drawn in ms) over `bins` bins up to the largest
/// p99.5; bars of several targets overlap, translucent.
pub fn histogram(title: &str, x_desc: &str, series: &[Series], bins: usize) -> String {
    render(title, |area| {
        let sorted = sorted_series(series);
        let Some((lo, hi)) = shown_range(&sorted) else {
            return no_data(area, title);
        };
        let bins = bins.max(1);
        let width = ((hi - lo) / bins as f64).max(1e-9);
        let counts: Vec<Vec<f64>> = sorted
            .iter()
            .map(|(_, v)| {
                let mut c = vec![0.0; bins];
                for x in v {
                    let b = (((x - lo) / width) as usize).min(bins - 1);
                    c[b] += 1.0 / v.len() as f64;
                }
                c
            })
            .collect();
        let top = counts.iter().flatten().copied().fold(0.0, f64::max);
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(lo..lo + width * bins as f64, 0.0..(top * 1.3).max(1e-6))
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc("fraction of samples")
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, ((name, _), c)) in sorted.iter().zip(&counts).enumerate() {
            let colour = colour(i);
            chart
                .draw_series(c.iter().enumerate().map(|(b, h)| {
                    let x0 = lo + width * b as f64;
                    Rectangle::new([(x0, 0.0), (x0 + width, *h)], colour.mix(0.45).filled())
                }))
                .map_err(|e| e.to_string())?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], colour.filled())
                });
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)
    })
}

/// A per-second rate over the run: `series` values are the seconds at which events happened,
/// each with a weight (a request counts 1, a response counts its output tokens).
pub fn over_time(title: &str, y_desc: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    render(title, |area| {
        let end = series
            .iter()
            .flat_map(|(_, v)| v.iter().map(|(t, _)| *t))
            .fold(0.0_f64, f64::max);
        if series.iter().all(|(_, v)| v.is_empty()) {
            return no_data(area, title);
        }
        let seconds = (end.floor() as usize + 1).max(1);
        let binned: Vec<Vec<(f64, f64)>> = series
            .iter()
            .map(|(_, events)| {
                let mut bins = vec![0.0; seconds];
                for (t, w) in events {
                    if t.is_finite() && *t >= 0.0 {
                        bins[(t.floor() as usize).min(seconds - 1)] += w;
                    }
                }
                bins.into_iter()
                    .enumerate()
                    .map(|(s, v)| (s as f64 + 0.5, v))
                    .collect()
            })
            .collect();
        let top = binned.iter().flatten().map(|(_, v)| *v).fold(0.0, f64::max);
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..seconds as f64, 0.0..(top * 1.35).max(1.0))
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("seconds since the target's start")
            .y_desc(y_desc)
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, ((name, _), points)) in series.iter().zip(binned).enumerate() {
            line(&mut chart, points, name, i)?;
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)
    })
}

/// Groups of bars: for each group label (e.g. `TTFT p50`), one bar per target (values in
/// seconds, drawn in ms).
pub fn grouped_bars(
    title: &str,
    targets: &[String],
    groups: &[(String, Vec<Option<f64>>)],
) -> String {
    render(title, |area| {
        let top = groups
            .iter()
            .flat_map(|(_, v)| v.iter().flatten())
            .map(|x| x * 1e3)
            .fold(0.0, f64::max);
        if groups.is_empty() || targets.is_empty() || top <= 0.0 {
            return no_data(area, title);
        }
        let n = targets.len() as f64;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..groups.len() as f64, 0.0..top * 1.3)
            .map_err(|e| e.to_string())?;
        let labels: Vec<String> = groups.iter().map(|(l, _)| l.clone()).collect();
        let formatter = |x: &f64| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 1e-6 {
                labels.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(groups.len() * 2 + 1)
            .x_label_formatter(&formatter)
            .y_desc("ms")
            .draw()
            .map_err(|e| e.to_string())?;
        for (t, name) in targets.iter().enumerate() {
            let c = colour(t);
            let bar_w = 0.8 / n;
            chart
                .draw_series(groups.iter().enumerate().filter_map(|(g, (_, values))| {
                    let v = values.get(t).copied().flatten()? * 1e3;
                    let x0 = g as f64 + 0.1 + bar_w * t as f64;
                    Some(Rectangle::new(
                        [(x0, 0.0), (x0 + bar_w * 0.9, v)],
                        c.filled(),
                    ))
                }))
                .map_err(|e| e.to_string())?
                .label(name.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], c.filled()));
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft)
    })
}

/// Draws the `i`-th series as a line in its colour, with its legend entry.
fn line<'a, 'b: 'a>(
    chart: &mut ChartContext<
        'a,
        SVGBackend<'b>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    points: Vec<(f64, f64)>,
    name: &str,
    i: usize,
) -> Result<(), String> {
    let c = colour(i);
    chart
        .draw_series(LineSeries::new(points, c.stroke_width(2)))
        .map_err(|e| e.to_string())?
        .label(name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    Ok(())
}

fn legend<'a, 'b: 'a>(
    chart: &mut ChartContext<
        'a,
        SVGBackend<'b>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    position: SeriesLabelPosition,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_with_their_title_and_one_series_per_target() {
        let series = vec![
            Series {
                name: "direct".into(),
                values: vec![0.010, 0.012, 0.020],
            },
            Series {
                name: "gateway".into(),
                values: vec![0.011, 0.013, 0.022],
            },
        ];
        let svg = cdf("TTFT CDF", "ms", &series);
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("TTFT CDF"));
        assert!(svg.contains("direct") && svg.contains("gateway"));
        for colour in ["#1F77B4", "#FF7F0E"] {
            assert!(
                svg.matches(colour).count() >= 2,
                "a curve and a legend mark in {colour}"
            );
        }
        let hist = histogram("ITL histogram", "ms", &series, 10);
        assert!(hist.contains("ITL histogram") && hist.contains("<rect"));
        let empty = cdf("E2E CDF", "ms", &[]);
        assert!(empty.contains("no samples"));
        let bars = grouped_bars(
            "Percentiles by target",
            &["a".into(), "b".into()],
            &[("TTFT p50".into(), vec![Some(0.1), Some(0.2)])],
        );
        assert!(bars.contains("TTFT p50"));
        let rate = over_time(
            "Output tokens per second",
            "tok/s",
            &[("a".into(), vec![(0.2, 5.0), (1.5, 7.0)])],
        );
        assert!(rate.contains("<polyline"));
    }
}
