//! `servelens report`: turning a run directory into `summary.json` and `report.html`, and
//! comparing two runs (or two targets of one run) side by side.
//!
//! | module | owns |
//! |---|---|
//! | [`summary`] | `summary.json` and the terminal table |
//! | [`charts`] | the SVG charts (plotters) |
//! | [`html`] | the self-contained page |
//! | [`compare`] | differences with bootstrap confidence intervals |
//! | [`cli`] | the `servelens report` flags and command |
//!
//! Everything is computed from the files of a run directory (`config.toml`, `requests.jsonl`,
//! optional `metrics.json`), so re-rendering a run gives identical output.

pub mod charts;
pub mod cli;
pub mod compare;
pub mod html;
pub mod summary;

use std::path::{Path, PathBuf};

use crate::bench::experiment::{Experiment, ExperimentError};
use crate::bench::results::{read_jsonl, RequestResult, ResultsError};
use crate::bench::scrape::EndpointReport;
use crate::bench::stats::Bootstrap;
use crate::report::compare::Comparison;
use crate::report::summary::{summarize, target_names, Summary};

/// File names inside a run directory.
pub mod files {
    /// The resolved experiment.
    pub const CONFIG: &str = "config.toml";
    /// One line per request.
    pub const REQUESTS: &str = "requests.jsonl";
    /// Per-target numbers.
    pub const SUMMARY: &str = "summary.json";
    /// The page.
    pub const REPORT: &str = "report.html";
    /// What the scraped `/metrics` pages showed.
    pub const METRICS: &str = "metrics.json";
}

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `requests.jsonl` could not be read.
    #[error(transparent)]
    Results(#[from] ResultsError),
    /// `config.toml` is not a valid experiment.
    #[error(transparent)]
    Experiment(#[from] ExperimentError),
    /// `metrics.json` is not what a run writes.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        source: serde_json::Error,
    },
    /// A named target is not in the run.
    #[error("run {run} has no target `{target}` (it has: {available})")]
    NoTarget {
        /// The run.
        run: String,
        /// The name asked for.
        target: String,
        /// The names it has.
        available: String,
    },
    /// Comparing one run needs two targets.
    #[error("run {0} has a single target: name two runs, or a run with two targets")]
    NothingToCompare(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A run directory, loaded.
#[derive(Debug, Clone)]
pub struct Run {
    /// The directory.
    pub dir: PathBuf,
    /// Its name.
    pub id: String,
    /// The resolved experiment, when `config.toml` is there.
    pub experiment: Option<Experiment>,
    /// `config.toml` as written.
    pub config_text: Option<String>,
    /// Every request.
    pub records: Vec<RequestResult>,
    /// Scraped metrics, when the run scraped any.
    pub backends: Vec<EndpointReport>,
}

impl Run {
    /// Reads a run directory.
    pub fn load(dir: &Path) -> Result<Self, ReportError> {
        let id = dir
            .canonicalize()
            .ok()
            .as_deref()
            .unwrap_or(dir)
            .file_name()
            .map_or_else(|| "run".to_string(), |n| n.to_string_lossy().into_owned());
        let config_path = dir.join(files::CONFIG);
        let config_text = match std::fs::read_to_string(&config_path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(&config_path)(e)),
        };
        let experiment = config_text
            .as_deref()
            .map(Experiment::from_toml)
            .transpose()?;
        let records = read_jsonl(&dir.join(files::REQUESTS))?;
        let metrics_path = dir.join(files::METRICS);
        let backends = match std::fs::read(&metrics_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| ReportError::Json {
                path: metrics_path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(&metrics_path)(e)),
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            id,
            experiment,
            config_text,
            records,
            backends,
        })
    }

    /// Target names, in the experiment's order.
    pub fn targets(&self) -> Vec<String> {
        target_names(self.experiment.as_ref(), &self.records)
    }

    /// The records of one target (`None`: the first target).
    pub fn target(&self, name: Option<&str>) -> Result<(String, Vec<&RequestResult>), ReportError> {
        let names = self.targets();
        let chosen = match name {
            Some(n) => names.iter().find(|t| *t == n).cloned(),
            None => names.first().cloned(),
        };
        let Some(chosen) = chosen else {
            return Err(ReportError::NoTarget {
                run: self.id.clone(),
                target: name.unwrap_or("(any)").to_string(),
                available: names.join(", "),
            });
        };
        let records = self.records.iter().filter(|r| r.target == chosen).collect();
        Ok((chosen, records))
    }

    /// The summary of the run.
    pub fn summary(&self) -> Summary {
        summarize(
            &self.id,
            self.experiment.as_ref(),
            &self.records,
            self.backends.clone(),
        )
    }
}

/// Writes `summary.json` and `report.html` into the run directory; every target after the first
/// is compared with the first. Returns the summary and the comparisons.
pub fn render_run(
    run: &Run,
    bootstrap: Bootstrap,
) -> Result<(Summary, Vec<Comparison>), ReportError> {
    let summary = run.summary();
    let names = run.targets();
    let mut comparisons = Vec::new();
    if let Some((first, others)) = names.split_first() {
        let (_, base) = run.target(Some(first))?;
        for other in others {
            let (_, side) = run.target(Some(other))?;
            comparisons.push(compare::compare(first, &base, other, &side, bootstrap));
        }
    }
    write_json(&run.dir.join(files::SUMMARY), &summary)?;
    let page = html::Page {
        title: format!("servelens report: {}", summary.experiment),
        summary: &summary,
        records: &run.records,
        comparisons: &comparisons,
        config: run.config_text.as_deref(),
    };
    let path = run.dir.join(files::REPORT);
    std::fs::write(&path, html::render(&page)).map_err(io(&path))?;
    Ok((summary, comparisons))
}

/// Compares target `ta` of run `a` with target `tb` of run `b` (first targets by default),
/// writing a page to `out`. Sides are named `<run>/<target>`.
pub fn compare_runs(
    a: &Run,
    ta: Option<&str>,
    b: &Run,
    tb: Option<&str>,
    bootstrap: Bootstrap,
    out: &Path,
) -> Result<(Summary, Comparison), ReportError> {
    let (name_a, side_a) = a.target(ta)?;
    let (name_b, side_b) = b.target(tb)?;
    let mut label_a = format!("{}/{}", a.id, name_a);
    let label_b = format!("{}/{}", b.id, name_b);
    if label_a == label_b {
        label_a.push_str(" (A)");
    }
    let comparison = compare::compare(&label_a, &side_a, &label_b, &side_b, bootstrap);
    let relabel = |side: &[&RequestResult], label: &str| {
        side.iter()
            .map(|r| RequestResult {
                target: label.to_string(),
                ..(*r).clone()
            })
            .collect::<Vec<_>>()
    };
    let mut records = relabel(&side_a, &label_a);
    records.extend(relabel(&side_b, &label_b));
    let mut summary = summarize(&format!("{} vs {}", a.id, b.id), None, &records, Vec::new());
    summary.experiment = match (&a.experiment, &b.experiment) {
        (Some(x), Some(y)) if x.name == y.name => x.name.clone(),
        (Some(x), Some(y)) => format!("{} vs {}", x.name, y.name),
        _ => "comparison".into(),
    };
    summary.workload = a
        .experiment
        .as_ref()
        .map_or_else(|| "unknown".into(), |e| e.workload.kind().to_string());
    let page = html::Page {
        title: format!("servelens comparison: {label_b} vs {label_a}"),
        summary: &summary,
        records: &records,
        comparisons: std::slice::from_ref(&comparison),
        config: None,
    };
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    std::fs::write(out, html::render(&page)).map_err(io(out))?;
    Ok((summary, comparison))
}

/// Writes pretty JSON with a final newline.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), ReportError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|source| ReportError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    text.push('\n');
    std::fs::write(path, text).map_err(io(path))
}
