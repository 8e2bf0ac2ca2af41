//! `servelens bench`: the experiment runner. An experiment file (or flags) says what to send to
//! which targets; the run writes `results/<run-id>/` with the resolved experiment, one line per
//! request, a summary and a report.
//!
//! ```text
//! experiment ─► for each target: warm-up ─► workload dispatch ─► client (timeline, as the gateway) ─► requests.jsonl
//!                                                                                                  └► summary.json, report.html
//! ```
//!
//! | module | owns |
//! |---|---|
//! | [`experiment`] | the experiment file, flags, validation |
//! | [`prompts`] | seeded synthetic text and lengths |
//! | [`workload`] | the jobs of each workload kind and their request bodies |
//! | [`runner`] | dispatch: closed loop, waves, open loop, conversations |
//! | [`client`] | sending one request and timing it with [`crate::telemetry::Timeline`] |
//! | [`results`] | the run directory and crash-safe JSONL writing |
//! | [`stats`] | percentiles and bootstrap intervals |
//! | [`scrape`] | `/metrics` before, during and after the run |
//! | [`cli`] | the `servelens bench` flags and command |
//!
//! Targets of a side-by-side run are measured one after the other with identical requests, so
//! they never compete for the client's CPU or the backend.

pub mod cli;
pub mod client;
pub mod experiment;
pub mod prompts;
pub mod results;
pub mod runner;
pub mod scrape;
pub mod stats;
pub mod workload;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressStyle};

use crate::bench::client::BenchClient;
use crate::bench::experiment::{Experiment, Target};
use crate::bench::results::{create_run_dir, JsonlWriter, ResultsError};
use crate::bench::runner::{RunError, Sink};
use crate::bench::stats::Bootstrap;
use crate::report::{files, render_run, ReportError, Run};

pub use experiment::{Experiment as BenchExperiment, Overrides};

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Writing the run directory failed.
    #[error(transparent)]
    Results(#[from] ResultsError),
    /// A target's run stopped.
    #[error("target {target}: {source}")]
    Run {
        /// The target.
        target: String,
        /// Why.
        source: RunError,
    },
    /// The report could not be written.
    #[error(transparent)]
    Report(#[from] ReportError),
}

/// How to run (not part of the experiment).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Name of the run directory (default: `<name>-<UTC time>`).
    pub run_id: Option<String>,
    /// Show a progress bar (only ever drawn when stderr is a terminal).
    pub progress: bool,
}

/// A finished run.
#[derive(Debug)]
pub struct Finished {
    /// `results/<run-id>`.
    pub dir: PathBuf,
    /// The run, as written.
    pub run: Run,
    /// Its summary.
    pub summary: crate::report::summary::Summary,
    /// Each target after the first against the first.
    pub comparisons: Vec<crate::report::compare::Comparison>,
}

/// Runs an experiment: every target in turn, then the summary and the report.
pub async fn run(exp: Experiment, options: RunOptions) -> Result<Finished, BenchError> {
    let exp = Arc::new(exp);
    let (run_id, dir) = create_run_dir(&exp.out, &exp.name, options.run_id.as_deref())?;
    let config_path = dir.join(files::CONFIG);
    std::fs::write(&config_path, exp.to_toml()).map_err(|source| ResultsError::Io {
        path: config_path.clone(),
        source,
    })?;
    let requests = Arc::new(JsonlWriter::open(&dir.join(files::REQUESTS))?);
    let output = match &exp.workload {
        experiment::Workload::File { output, .. } => Some(Arc::new(JsonlWriter::open(output)?)),
        _ => None,
    };
    let scraper = scrape::Scraper::start(scrape::endpoints(&exp), exp.scrape.interval).await;
    let client = BenchClient::new();
    for target in &exp.targets {
        run_one(
            &client,
            &run_id,
            &exp,
            target,
            &requests,
            &output,
            options.progress,
        )
        .await?;
    }
    let backends = scraper.finish().await;
    if !backends.is_empty() {
        crate::report::write_json(&dir.join(files::METRICS), &backends)?;
    }
    let run = Run::load(&dir)?;
    let (summary, comparisons) = render_run(&run, Bootstrap::default())?;
    Ok(Finished {
        dir,
        run,
        summary,
        comparisons,
    })
}

async fn run_one(
    client: &BenchClient,
    run_id: &str,
    exp: &Arc<Experiment>,
    target: &Target,
    requests: &Arc<JsonlWriter>,
    output: &Option<Arc<JsonlWriter>>,
    progress: bool,
) -> Result<(), BenchError> {
    runner::warm_up(client, exp, run_id, target).await;
    let progress = progress_bar(exp, target, progress);
    let sink = Arc::new(Sink {
        requests: requests.clone(),
        output: output.clone(),
        progress: progress.clone(),
        results: Mutex::new(Vec::new()),
        failed: Mutex::new(None),
    });
    let outcome =
        runner::run_target(client.clone(), exp.clone(), target.clone(), sink, run_id).await;
    progress.finish_and_clear();
    outcome.map_err(|source| BenchError::Run {
        target: target.name.clone(),
        source,
    })
}

fn progress_bar(exp: &Experiment, target: &Target, wanted: bool) -> ProgressBar {
    if !wanted || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match runner::budget(exp) {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::no_length(),
    };
    let template =
        "{prefix:>12} [{elapsed_precise}] {bar:40.cyan/blue} {pos}/{len} requests ({per_sec})";
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(target.name.clone());
    bar
}
