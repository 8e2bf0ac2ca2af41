//! `servelens bench` flags and the command: load the experiment (or start from defaults), apply
//! the flags, run, print the summary table.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use crate::bench::experiment::{
    Api, Arrivals, Experiment, ExperimentError, Overrides, WorkloadKind,
};
use crate::bench::{run as run_experiment, BenchError, RunOptions};
use crate::report::files;

/// Flags of `servelens bench` (each overrides the experiment file).
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Experiment file (TOML); see config/experiments/. Without it, flags and defaults.
    #[arg(long, short)]
    pub experiment: Option<PathBuf>,
    /// Target base URL, `URL` or `NAME=URL`; repeat for a side-by-side run. Replaces the
    /// file's targets.
    #[arg(long = "url", value_name = "[NAME=]URL")]
    pub urls: Vec<String>,
    /// Model name.
    #[arg(long)]
    pub model: Option<String>,
    /// API: chat or completions.
    #[arg(long, value_enum)]
    pub endpoint: Option<Api>,
    /// Ask for SSE streams.
    #[arg(long, overrides_with = "no_stream")]
    pub stream: bool,
    /// Ask for whole responses.
    #[arg(long, overrides_with = "stream")]
    pub no_stream: bool,
    /// API key (sent as a bearer token).
    #[arg(long, env = "SERVELENS_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Workload kind (replaces the file's workload, with default parameters).
    #[arg(long, value_enum)]
    pub workload: Option<WorkloadKind>,
    /// Closed-loop users / requests in flight (concurrent, multi_turn, shared_prefix, file).
    #[arg(long)]
    pub concurrency: Option<NonZeroU32>,
    /// Offered load in requests per second (rate).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Arrival process (rate).
    #[arg(long, value_enum)]
    pub arrivals: Option<Arrivals>,
    /// Requests per wave (batch).
    #[arg(long)]
    pub batch_size: Option<NonZeroU32>,
    /// Measured requests per target.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Stop dispatching after this long per target, e.g. 30s or 5m.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Unrecorded warm-up requests per target.
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Seed of prompts, lengths and arrivals.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Parent directory of run directories.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Run directory name (default: `<experiment>-<UTC time>`).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Experiment name.
    #[arg(long)]
    pub name: Option<String>,
    /// Input JSONL (file workload) or request log (replay workload).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Output JSONL (file workload).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Do not draw the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Why `servelens bench` failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchCliError {
    /// The experiment was refused.
    #[error(transparent)]
    Experiment(#[from] ExperimentError),
    /// The run failed.
    #[error(transparent)]
    Run(#[from] BenchError),
    /// The table could not be printed.
    #[error("cannot write the summary: {0}")]
    Output(#[from] std::io::Error),
}

impl BenchArgs {
    /// The experiment these flags describe.
    pub fn experiment(&self) -> Result<Experiment, ExperimentError> {
        let mut exp = match &self.experiment {
            Some(path) => Experiment::load(path)?,
            None => Experiment::default(),
        };
        let stream = match (self.stream, self.no_stream) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        };
        exp.apply(Overrides {
            urls: self.urls.clone(),
            model: self.model.clone(),
            endpoint: self.endpoint,
            stream,
            api_key: self.api_key.clone(),
            workload: self.workload,
            concurrency: self.concurrency,
            rate: self.rate,
            arrivals: self.arrivals,
            batch_size: self.batch_size,
            requests: self.requests,
            duration: self.duration,
            warmup: self.warmup,
            seed: self.seed,
            out: self.out.clone(),
            input: self.input.clone(),
            output: self.output.clone(),
            name: self.name.clone(),
        })?;
        Ok(exp)
    }
}

/// Runs `servelens bench`, printing the summary to `out`.
pub async fn run(args: BenchArgs, out: &mut impl std::io::Write) -> Result<(), BenchCliError> {
    let exp = args.experiment()?;
    let targets: Vec<String> = exp
        .targets
        .iter()
        .map(|t| format!("{} ({})", t.name, t.url))
        .collect();
    eprintln!(
        "servelens bench: {} ({}) against {}",
        exp.name,
        exp.workload.kind(),
        targets.join(", ")
    );
    let file_output = match &exp.workload {
        crate::bench::experiment::Workload::File { output, .. } => Some(output.clone()),
        _ => None,
    };
    let finished = run_experiment(
        exp,
        RunOptions {
            run_id: args.run_id.clone(),
            progress: !args.quiet,
        },
    )
    .await?;
    write!(out, "{}", finished.summary.table())?;
    for c in &finished.comparisons {
        write!(out, "\n{}", c.table())?;
    }
    writeln!(out)?;
    for name in [
        files::CONFIG,
        files::REQUESTS,
        files::SUMMARY,
        files::REPORT,
    ] {
        writeln!(out, "wrote {}", finished.dir.join(name).display())?;
    }
    if !finished.summary.backends.is_empty() {
        writeln!(out, "wrote {}", finished.dir.join(files::METRICS).display())?;
    }
    if let Some(output) = file_output {
        writeln!(out, "responses appended to {}", output.display())?;
    }
    Ok(())
}
