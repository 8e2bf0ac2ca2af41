//! The experiment file (`config/experiments/NAME.toml`): what to send, to whom, in which shape.
//!
//! Typed TOML with a default next to every field and unknown keys refused, so a typo is an error
//! naming the field, not a silently ignored setting. [`Experiment::validate`] holds only the
//! cross-field rules a type cannot express. Command-line flags are applied with
//! [`Experiment::apply`]; the resolved experiment is what `config.toml` in the run directory holds.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::openai::Endpoint;

/// Why an experiment was refused.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    /// The file could not be read.
    #[error("cannot read experiment {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// TOML syntax, a wrong type or an unknown field (the message names it).
    #[error("invalid experiment {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        source: toml::de::Error,
    },
    /// A value that parsed but breaks a rule.
    #[error("invalid experiment: {field}: {reason}")]
    Invalid {
        /// Dotted path of the field, e.g. `workload.rate`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ExperimentError {
    ExperimentError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// One experiment.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Name; the run id starts with it.
    #[serde(default = "default_name")]
    pub name: String,
    /// Model name sent in every request.
    #[serde(default = "default_model")]
    pub model: String,
    /// `chat` (`/v1/chat/completions`) or `completions` (`/v1/completions`).
    #[serde(default)]
    pub endpoint: Api,
    /// Ask for SSE streams (with `stream_options.include_usage`).
    #[serde(default = "yes")]
    pub stream: bool,
    /// Sent as `Authorization: Bearer ...` (a target's own key wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// Seed of every prompt, length and arrival time: a run is reproducible.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Stop after this many measured requests per target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// Stop dispatching after this long per target (in-flight requests finish).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub duration: Option<Duration>,
    /// Requests sent one by one before measuring, per target, and not recorded.
    #[serde(default)]
    pub warmup: u64,
    /// Per-request deadline, head to last byte.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Parent directory of run directories.
    #[serde(default = "default_out")]
    pub out: PathBuf,
    /// Where to send: one target, or several for a side-by-side run.
    #[serde(default = "default_targets")]
    pub targets: Vec<Target>,
    /// Prompt and output length distributions of synthetic requests.
    #[serde(default)]
    pub lengths: Lengths,
    /// Extra request body fields, sent as is (e.g. `temperature`, `ignore_eos`).
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub extra_body: toml::Table,
    /// Optional `/metrics` scrapes before, during and after the run.
    #[serde(default)]
    pub scrape: ScrapeConfig,
    /// The workload and its parameters.
    #[serde(default)]
    pub workload: Workload,
}

fn default_name() -> String {
    "bench".into()
}
fn default_model() -> String {
    "meta-llama/Llama-3.1-8B-Instruct".into()
}
fn yes() -> bool {
    true
}
fn default_seed() -> u64 {
    42
}
fn default_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_out() -> PathBuf {
    PathBuf::from("results")
}
fn default_targets() -> Vec<Target> {
    vec![Target {
        name: "default".into(),
        url: "http://127.0.0.1:8000".into(),
        api_key: None,
    }]
}

impl Default for Experiment {
    fn default() -> Self {
        Self {
            name: default_name(),
            model: default_model(),
            endpoint: Api::default(),
            stream: true,
            api_key: None,
            seed: default_seed(),
            requests: None,
            duration: None,
            warmup: 0,
            timeout: default_timeout(),
            out: default_out(),
            targets: default_targets(),
            lengths: Lengths::default(),
            extra_body: toml::Table::new(),
            scrape: ScrapeConfig::default(),
            workload: Workload::default(),
        }
    }
}

/// The API an experiment speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// `POST /v1/chat/completions` with `messages`.
    #[default]
    Chat,
    /// `POST /v1/completions` with `prompt`.
    Completions,
}

impl Api {
    /// The wire endpoint.
    pub fn endpoint(self) -> Endpoint {
        match self {
            Self::Chat => Endpoint::ChatCompletions,
            Self::Completions => Endpoint::Completions,
        }
    }
}

/// One place requests go.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Name in results and reports (`direct`, `gateway`, `vllm`, ...).
    pub name: String,
    /// Base URL: `http://host:port` (paths `/v1/...` are appended).
    pub url: String,
    /// This target's API key (overrides the experiment's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
}

/// Length distributions, in tokens (a synthetic token is about four characters).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Lengths {
    /// Prompt length.
    #[serde(default = "default_input")]
    pub input: Length,
    /// Requested output length (`max_tokens`; add `ignore_eos = true` to `extra_body` to get it
    /// exactly).
    #[serde(default = "default_output")]
    pub output: Length,
}

fn default_input() -> Length {
    Length::Uniform { min: 128, max: 512 }
}
fn default_output() -> Length {
    Length::Fixed { tokens: 128 }
}

impl Default for Lengths {
    fn default() -> Self {
        Self {
            input: default_input(),
            output: default_output(),
        }
    }
}

/// A token-count distribution.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(tag = "dist", rename_all = "snake_case", deny_unknown_fields)]
pub enum Length {
    /// Always `tokens`.
    Fixed {
        /// The length.
        tokens: u32,
    },
    /// Uniform in `[min, max]`.
    Uniform {
        /// Smallest.
        min: u32,
        /// Largest.
        max: u32,
    },
    /// Normal, rounded and clamped to `[min, max]`.
    Normal {
        /// Mean.
        mean: f64,
        /// Standard deviation.
        std: f64,
        /// Smallest.
        #[serde(default = "one")]
        min: u32,
        /// Largest.
        #[serde(default = "u32_max")]
        max: u32,
    },
}

fn one() -> u32 {
    1
}
fn u32_max() -> u32 {
    u32::MAX
}

impl Length {
    fn validate(&self, field: &str) -> Result<(), ExperimentError> {
        match *self {
            Self::Fixed { tokens: 0 } => Err(invalid(field, "tokens must be at least 1")),
            Self::Uniform { min, max } if min == 0 || min > max => {
                Err(invalid(field, "needs 1 <= min <= max"))
            }
            Self::Normal {
                mean,
                std,
                min,
                max,
            } if !(mean.is_finite() && std.is_finite() && std >= 0.0) || min == 0 || min > max => {
                Err(invalid(
                    field,
                    "needs a finite mean, std >= 0 and 1 <= min <= max",
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Scraping `/metrics` of the gateway and the backends around a run.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScrapeConfig {
    /// Also scrape `<target url>/metrics` of every target (a backend serves it there; the
    /// gateway serves it on its admin listener, so list that one in `endpoints`).
    #[serde(default)]
    pub targets: bool,
    /// Further pages to scrape.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<ScrapeEndpoint>,
    /// Sample queue depth this often during the run (no sampling when absent).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval: Option<Duration>,
}

/// One `/metrics` page.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScrapeEndpoint {
    /// Name in the report.
    pub name: String,
    /// The full URL of the page, e.g. `http://127.0.0.1:9464/metrics`.
    pub url: String,
}

/// How arrivals are spaced in an open loop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Arrivals {
    /// Exponential gaps (a Poisson process).
    #[default]
    Poisson,
    /// Equal gaps.
    Constant,
}

/// The workload and its parameters.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Workload {
    /// One request at a time: baseline latency.
    Single,
    /// Waves of `size` requests sent together; the next wave starts when the last one ends.
    Batch {
        /// Requests per wave.
        #[serde(default = "eight")]
        size: NonZeroU32,
    },
    /// `concurrency` closed-loop users, each sending its next request when the last ends.
    Concurrent {
        /// Users (never more requests in flight).
        #[serde(default = "eight")]
        concurrency: NonZeroU32,
    },
    /// Open loop: arrivals at `rate` requests per second, whatever the responses do.
    Rate {
        /// Offered load, requests per second.
        rate: f64,
        /// Poisson or constant gaps.
        #[serde(default)]
        arrivals: Arrivals,
    },
    /// Conversations whose context grows turn by turn.
    MultiTurn {
        /// Conversations.
        #[serde(default = "eight")]
        sessions: NonZeroU32,
        /// Turns per conversation.
        #[serde(default = "four")]
        turns: NonZeroU32,
        /// Conversations in progress at once.
        #[serde(default = "eight")]
        concurrency: NonZeroU32,
        /// Pause between a reply and the next turn (user reading, or a tool running).
        #[serde(default = "default_think", with = "humantime_serde")]
        think_time: Duration,
        /// Agent loop: later turns are tool results and the replies are short tool calls.
        #[serde(default)]
        agentic: bool,
        /// Length of each later user turn (or tool result).
        #[serde(default = "default_followup")]
        followup: Length,
        /// Output length of later turns (default: `lengths.output`, or 24 tokens when agentic).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        followup_output: Option<Length>,
    },
    /// `prefixes` shared system prompts × `questions` questions each, in a seeded order.
    SharedPrefix {
        /// Distinct system prompts.
        #[serde(default = "four")]
        prefixes: NonZeroU32,
        /// Questions per system prompt.
        #[serde(default = "sixteen")]
        questions: NonZeroU32,
        /// Length of each system prompt.
        #[serde(default = "default_prefix")]
        prefix: Length,
        /// Requests in flight.
        #[serde(default = "eight")]
        concurrency: NonZeroU32,
    },
    /// A JSONL file of prompts or chat requests; every response goes to `output`. Re-running
    /// skips the ids already in `output` and appends.
    File {
        /// Input JSONL: `{"id", "prompt"}` or `{"id", "messages"}`, other keys sent as body
        /// fields.
        input: PathBuf,
        /// Output JSONL, one line per finished id.
        output: PathBuf,
        /// Requests in flight.
        #[serde(default = "eight")]
        concurrency: NonZeroU32,
    },
    /// A gateway request log (`log.requests`) replayed with its original inter-arrival times.
    Replay {
        /// The JSONL log.
        log: PathBuf,
        /// Time compression: 2.0 replays twice as fast.
        #[serde(default = "one_f64")]
        speedup: f64,
    },
}

fn eight() -> NonZeroU32 {
    NonZeroU32::MIN.saturating_add(7)
}
fn four() -> NonZeroU32 {
    NonZeroU32::MIN.saturating_add(3)
}
fn sixteen() -> NonZeroU32 {
    NonZeroU32::MIN.saturating_add(15)
}
fn one_f64() -> f64 {
    1.0
}
fn default_think() -> Duration {
    Duration::from_secs(1)
}
fn default_followup() -> Length {
    Length::Uniform { min: 16, max: 64 }
}
fn default_prefix() -> Length {
    Length::Fixed { tokens: 1024 }
}

impl Default for Workload {
    fn default() -> Self {
        Self::Concurrent {
            concurrency: eight(),
        }
    }
}

/// The workload kinds, for `--workload`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkloadKind {
    /// See [`Workload::Single`].
    Single,
    /// See [`Workload::Batch`].
    Batch,
    /// See [`Workload::Concurrent`].
    Concurrent,
    /// See [`Workload::Rate`].
    Rate,
    /// See [`Workload::MultiTurn`].
    MultiTurn,
    /// See [`Workload::SharedPrefix`].
    SharedPrefix,
    /// See [`Workload::File`].
    File,
    /// See [`Workload::Replay`].
    Replay,
}

impl Workload {
    /// The `kind` spelling.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Batch { .. } => "batch",
            Self::Concurrent { .. } => "concurrent",
            Self::Rate { .. } => "rate",
            Self::MultiTurn { .. } => "multi_turn",
            Self::SharedPrefix { .. } => "shared_prefix",
            Self::File { .. } => "file",
            Self::Replay { .. } => "replay",
        }
    }

    /// The offered rate of an open loop with a configured rate.
    pub fn offered_rate(&self) -> Option<f64> {
        match self {
            Self::Rate { rate, .. } => Some(*rate),
            _ => None,
        }
    }

    /// A workload of `kind` with default parameters (`file`/`replay` need their paths set).
    fn of_kind(kind: WorkloadKind) -> Self {
        match kind {
            WorkloadKind::Single => Self::Single,
            WorkloadKind::Batch => Self::Batch { size: eight() },
            WorkloadKind::Concurrent => Self::default(),
            WorkloadKind::Rate => Self::Rate {
                rate: 1.0,
                arrivals: Arrivals::Poisson,
            },
            WorkloadKind::MultiTurn => Self::MultiTurn {
                sessions: eight(),
                turns: four(),
                concurrency: eight(),
                think_time: default_think(),
                agentic: false,
                followup: default_followup(),
                followup_output: None,
            },
            WorkloadKind::SharedPrefix => Self::SharedPrefix {
                prefixes: four(),
                questions: sixteen(),
                prefix: default_prefix(),
                concurrency: eight(),
            },
            WorkloadKind::File => Self::File {
                input: PathBuf::new(),
                output: PathBuf::new(),
                concurrency: eight(),
            },
            WorkloadKind::Replay => Self::Replay {
                log: PathBuf::new(),
                speedup: 1.0,
            },
        }
    }
}

/// Settings given on the command line; each replaces the file's value.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--url [NAME=]URL` (repeatable): replaces the targets.
    pub urls: Vec<String>,
    /// `--model`.
    pub model: Option<String>,
    /// `--endpoint`.
    pub endpoint: Option<Api>,
    /// `--stream` / `--no-stream`.
    pub stream: Option<bool>,
    /// `--api-key`.
    pub api_key: Option<String>,
    /// `--workload` (a new workload of that kind with default parameters).
    pub workload: Option<WorkloadKind>,
    /// `--concurrency`.
    pub concurrency: Option<NonZeroU32>,
    /// `--rate`.
    pub rate: Option<f64>,
    /// `--arrivals`.
    pub arrivals: Option<Arrivals>,
    /// `--batch-size`.
    pub batch_size: Option<NonZeroU32>,
    /// `--requests`.
    pub requests: Option<u64>,
    /// `--duration`.
    pub duration: Option<Duration>,
    /// `--warmup`.
    pub warmup: Option<u64>,
    /// `--seed`.
    pub seed: Option<u64>,
    /// `--out`.
    pub out: Option<PathBuf>,
    /// `--input` (file workload input, or replay log).
    pub input: Option<PathBuf>,
    /// `--output` (file workload output).
    pub output: Option<PathBuf>,
    /// `--name`.
    pub name: Option<String>,
}

impl Experiment {
    /// Reads and checks a file.
    pub fn load(path: &Path) -> Result<Self, ExperimentError> {
        let text = std::fs::read_to_string(path).map_err(|source| ExperimentError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let experiment = Self::from_toml(&text).map_err(|e| match e {
            ExperimentError::Parse { source, .. } => ExperimentError::Parse {
                path: path.to_path_buf(),
                source,
            },
            other => other,
        })?;
        Ok(experiment)
    }

    /// Parses TOML text and checks it.
    pub fn from_toml(text: &str) -> Result<Self, ExperimentError> {
        let experiment: Self = toml::from_str(text).map_err(|source| ExperimentError::Parse {
            path: PathBuf::from("<text>"),
            source,
        })?;
        experiment.validate()?;
        Ok(experiment)
    }

    /// The resolved experiment as TOML (what `config.toml` holds).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# not serialisable: {e}\n"))
    }

    /// Applies command-line overrides, then checks the result.
    pub fn apply(&mut self, o: Overrides) -> Result<(), ExperimentError> {
        self.apply_workload_kind(&o)?;
        if !o.urls.is_empty() {
            self.targets = o.urls.iter().map(|u| target_from_flag(u)).collect();
        }
        set(&mut self.model, o.model);
        set(&mut self.endpoint, o.endpoint);
        set(&mut self.stream, o.stream);
        set(&mut self.seed, o.seed);
        set(&mut self.warmup, o.warmup);
        set(&mut self.out, o.out);
        set(&mut self.name, o.name);
        if o.api_key.is_some() {
            self.api_key.clone_from(&o.api_key);
        }
        if o.requests.is_some() {
            self.requests = o.requests;
        }
        if o.duration.is_some() {
            self.duration = o.duration;
        }
        self.validate()
    }

    fn apply_workload_kind(&mut self, o: &Overrides) -> Result<(), ExperimentError> {
        if let Some(kind) = o.workload {
            self.workload = Workload::of_kind(kind);
        }
        self.apply_workload_flags(o)
    }

    fn apply_workload_flags(&mut self, o: &Overrides) -> Result<(), ExperimentError> {
        let kind = self.workload.kind();
        let refuse = |flag: &str| invalid(flag, format!("does not apply to workload `{kind}`"));
        if let Some(n) = o.concurrency {
            match &mut self.workload {
                Workload::Concurrent { concurrency }
                | Workload::MultiTurn { concurrency, .. }
                | Workload::SharedPrefix { concurrency, .. }
                | Workload::File { concurrency, .. } => *concurrency = n,
                _ => return Err(refuse("--concurrency")),
            }
        }
        if let Some(r) = o.rate {
            match &mut self.workload {
                Workload::Rate { rate, .. } => *rate = r,
                _ => return Err(refuse("--rate")),
            }
        }
        if let Some(a) = o.arrivals {
            match &mut self.workload {
                Workload::Rate { arrivals, .. } => *arrivals = a,
                _ => return Err(refuse("--arrivals")),
            }
        }
        if let Some(b) = o.batch_size {
            match &mut self.workload {
                Workload::Batch { size } => *size = b,
                _ => return Err(refuse("--batch-size")),
            }
        }
        if let Some(path) = &o.input {
            match &mut self.workload {
                Workload::File { input, .. } => *input = path.clone(),
                Workload::Replay { log, .. } => *log = path.clone(),
                _ => return Err(refuse("--input")),
            }
        }
        if let Some(path) = &o.output {
            match &mut self.workload {
                Workload::File { output, .. } => *output = path.clone(),
                _ => return Err(refuse("--output")),
            }
        }
        Ok(())
    }

    /// The cross-field rules.
    pub fn validate(&self) -> Result<(), ExperimentError> {
        if self.targets.is_empty() {
            return Err(invalid("targets", "at least one target is needed"));
        }
        for (i, target) in self.targets.iter().enumerate() {
            validate_target(i, target, &self.targets[..i])?;
        }
        if self.model.is_empty() {
            return Err(invalid("model", "must not be empty"));
        }
        if !safe_name(&self.name) {
            return Err(invalid(
                "name",
                "use letters, digits, `-`, `_` and `.` only",
            ));
        }
        if self.requests == Some(0) {
            return Err(invalid("requests", "must be at least 1"));
        }
        if self.duration == Some(Duration::ZERO) {
            return Err(invalid("duration", "must be positive"));
        }
        self.lengths.input.validate("lengths.input")?;
        self.lengths.output.validate("lengths.output")?;
        self.validate_workload()
    }

    fn validate_workload(&self) -> Result<(), ExperimentError> {
        match &self.workload {
            Workload::Rate { rate, .. } if !(rate.is_finite() && *rate > 0.0) => {
                Err(invalid("workload.rate", "must be a positive number"))
            }
            Workload::MultiTurn {
                followup,
                followup_output,
                ..
            } => {
                followup.validate("workload.followup")?;
                followup_output.map_or(Ok(()), |l| l.validate("workload.followup_output"))
            }
            Workload::SharedPrefix { prefix, .. } => prefix.validate("workload.prefix"),
            Workload::File { input, output, .. } => {
                if input.as_os_str().is_empty() {
                    return Err(invalid(
                        "workload.input",
                        "a JSONL file is needed (--input)",
                    ));
                }
                if output.as_os_str().is_empty() {
                    return Err(invalid(
                        "workload.output",
                        "a JSONL file is needed (--output)",
                    ));
                }
                if self.targets.len() != 1 {
                    return Err(invalid(
                        "targets",
                        "the file workload writes one output file: give exactly one target",
                    ));
                }
                Ok(())
            }
            Workload::Replay { log, speedup } => {
                if log.as_os_str().is_empty() {
                    return Err(invalid("workload.log", "a request log is needed (--input)"));
                }
                if !(speedup.is_finite() && *speedup > 0.0) {
                    return Err(invalid("workload.speedup", "must be a positive number"));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

fn validate_target(i: usize, target: &Target, before: &[Target]) -> Result<(), ExperimentError> {
    let field = format!("targets[{i}]");
    if !safe_name(&target.name) {
        return Err(invalid(
            format!("{field}.name"),
            "use letters, digits, `-`, `_` and `.` only",
        ));
    }
    if before.iter().any(|t| t.name == target.name) {
        return Err(invalid(
            format!("{field}.name"),
            format!("`{}` is used twice", target.name),
        ));
    }
    let uri: http::Uri = target
        .url
        .parse()
        .map_err(|e| invalid(format!("{field}.url"), format!("{e}")))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(invalid(
            format!("{field}.url"),
            "needs http://host:port (TLS is not supported)",
        ));
    }
    Ok(())
}

/// A name usable in file names and reports.
fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `NAME=URL` or `URL` (named after its host and port).
fn target_from_flag(flag: &str) -> Target {
    let (name, url) = match flag.split_once('=') {
        Some((name, url)) if !name.contains('/') && !name.contains(':') => {
            (name.to_string(), url.to_string())
        }
        _ => {
            let name = flag
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .replace([':', '/'], "_");
            (name, flag.to_string())
        }
    };
    Target {
        name,
        url: url.trim_end_matches('/').to_string(),
        api_key: None,
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *field = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_file_gets_every_default() {
        let e = Experiment::from_toml("name = \"x\"\n").expect("valid");
        assert_eq!(e.targets[0].url, "http://127.0.0.1:8000");
        assert_eq!(e.workload.kind(), "concurrent");
        assert!(e.stream);
    }

    #[test]
    fn workload_parameters_are_typed_and_unknown_keys_refused() {
        let e = Experiment::from_toml(
            "[workload]\nkind = \"rate\"\nrate = 2.5\narrivals = \"constant\"\n",
        )
        .expect("valid");
        assert_eq!(
            e.workload,
            Workload::Rate {
                rate: 2.5,
                arrivals: Arrivals::Constant
            }
        );
        let err = Experiment::from_toml("[workload]\nkind = \"concurrent\"\nconcurency = 3\n")
            .expect_err("typo");
        assert!(err.to_string().contains("concurency"), "{err}");
        let err = Experiment::from_toml("modle = \"m\"\n").expect_err("typo");
        assert!(err.to_string().contains("modle"), "{err}");
        let err = Experiment::from_toml("[lengths.input]\ndist = \"uniform\"\nmin = 9\nmax = 3\n")
            .expect_err("bad range");
        assert!(err.to_string().contains("lengths.input"), "{err}");
        let err = Experiment::from_toml("[workload]\nkind = \"rate\"\nrate = 0.0\n")
            .expect_err("zero rate");
        assert!(err.to_string().contains("workload.rate"), "{err}");
    }

    #[test]
    fn targets_are_checked_by_index() {
        let text = "[[targets]]\nname = \"a\"\nurl = \"http://h:1\"\n[[targets]]\nname = \"a\"\nurl = \"http://h:2\"\n";
        let err = Experiment::from_toml(text).expect_err("duplicate");
        assert!(err.to_string().contains("targets[1].name"), "{err}");
        let text = "[[targets]]\nname = \"a\"\nurl = \"https://h:1\"\n";
        let err = Experiment::from_toml(text).expect_err("tls");
        assert!(err.to_string().contains("targets[0].url"), "{err}");
    }

    #[test]
    fn flags_override_and_refuse_what_does_not_apply() {
        let mut e = Experiment::default();
        e.apply(Overrides {
            urls: vec![
                "direct=http://127.0.0.1:1".into(),
                "http://127.0.0.1:2/".into(),
            ],
            workload: Some(WorkloadKind::Rate),
            rate: Some(3.0),
            requests: Some(10),
            ..Overrides::default()
        })
        .expect("valid");
        assert_eq!(e.targets[0].name, "direct");
        assert_eq!(e.targets[1].name, "127.0.0.1_2");
        assert_eq!(e.targets[1].url, "http://127.0.0.1:2");
        assert_eq!(e.workload.offered_rate(), Some(3.0));
        let err = e
            .apply(Overrides {
                concurrency: NonZeroU32::new(4),
                ..Overrides::default()
            })
            .expect_err("rate has no concurrency");
        assert!(err.to_string().contains("--concurrency"), "{err}");
    }

    #[test]
    fn the_resolved_experiment_round_trips_through_toml() {
        let mut e = Experiment::from_toml(
            "duration = \"30s\"\n[extra_body]\ntemperature = 0.0\nignore_eos = true\n[workload]\nkind = \"multi_turn\"\nagentic = true\n",
        )
        .expect("valid");
        e.scrape.interval = Some(Duration::from_millis(500));
        let again = Experiment::from_toml(&e.to_toml()).expect("round trip");
        assert_eq!(again, e);
    }
}
