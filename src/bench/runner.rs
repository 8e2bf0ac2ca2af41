//! Dispatching a workload against one target: closed loops, waves, open loops and
//! conversations, each request timed, recorded and counted the moment it ends.
//!
//! | workload | dispatch |
//! |---|---|
//! | `single` | closed loop of 1 |
//! | `batch` | waves of `size`, the next when the whole wave has ended |
//! | `concurrent`, `shared_prefix`, `file` | closed loop of `concurrency` workers |
//! | `rate`, `replay` | open loop: each request at its arrival offset, whatever is in flight |
//! | `multi_turn` | `concurrency` workers, each running whole conversations turn by turn |
//!
//! A run stops when the request budget (`requests`, or the workload's natural size) is spent or
//! `duration` has passed; requests in flight then finish.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::ProgressBar;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::bench::client::{BenchClient, Call, Exchange};
use crate::bench::experiment::{Experiment, Target, Workload};
use crate::bench::results::{JsonlWriter, RequestResult, ResultsError};
use crate::bench::workload::{self, Conversation, Job, WorkloadError};

/// Synthetic workloads send this many requests when neither `requests` nor `duration` is set.
pub const DEFAULT_REQUESTS: u64 = 100;

/// Why a target's run stopped early.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The workload's input could not be read.
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    /// A result could not be written.
    #[error(transparent)]
    Results(#[from] ResultsError),
}

/// Where finished requests go.
#[derive(Debug)]
pub struct Sink {
    /// `requests.jsonl` of the run.
    pub requests: Arc<JsonlWriter>,
    /// The file workload's output, when it has one.
    pub output: Option<Arc<JsonlWriter>>,
    /// Progress display.
    pub progress: ProgressBar,
    /// Every result, for the summary.
    pub results: Mutex<Vec<RequestResult>>,
    /// The first write error (writing stops the run).
    pub failed: Mutex<Option<ResultsError>>,
}

/// One target's run in progress.
#[derive(Debug)]
struct Shared {
    client: BenchClient,
    exp: Arc<Experiment>,
    target: Target,
    sink: Arc<Sink>,
    /// Start of the measured phase: `start_s`/`end_s` count from here.
    t0: Instant,
    /// No dispatch at or after this instant.
    deadline: Option<Instant>,
    /// Requests that may still be dispatched.
    budget: AtomicU64,
    /// Put in front of synthetic prompts (never in front of a file workload's own prompts).
    salt: Option<String>,
}

impl Shared {
    /// Takes one request from the budget; false when spent, past the deadline or failing.
    fn take(&self) -> bool {
        if self.deadline.is_some_and(|d| Instant::now() >= d) || self.sink_failed() {
            return false;
        }
        self.budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    fn sink_failed(&self) -> bool {
        self.sink.failed.lock().map(|f| f.is_some()).unwrap_or(true)
    }

    fn call(&self, job: &Job, capture: bool) -> Call {
        Call {
            base: self.target.url.clone(),
            endpoint: job.api.endpoint(),
            body: job.body(&self.exp, self.salt.as_deref()),
            api_key: self
                .target
                .api_key
                .clone()
                .or_else(|| self.exp.api_key.clone()),
            request_id: format!("{}-{}", self.target.name, job.id),
            timeout: self.exp.timeout,
            capture_text: capture,
            capture_body: capture && self.sink.output.is_some(),
        }
    }

    /// Sends a job, records it, and returns what came back.
    async fn execute(&self, job: &Job, capture: bool) -> Exchange {
        let call = self.call(job, capture);
        let exchange = self.client.send(&call).await;
        let result = to_result(&self.target.name, job, &call, &exchange, self.t0);
        let mut written = self.sink.requests.write(&result);
        if let (Some(output), true) = (&self.sink.output, exchange.ok()) {
            written = written.and_then(|()| output.write(&FileOutput::new(&result, &exchange)));
        }
        if let Err(e) = written {
            if let Ok(mut failed) = self.sink.failed.lock() {
                failed.get_or_insert(e);
            }
        }
        if let Ok(mut all) = self.sink.results.lock() {
            all.push(result);
        }
        self.sink.progress.inc(1);
        exchange
    }
}

fn to_result(target: &str, job: &Job, call: &Call, x: &Exchange, t0: Instant) -> RequestResult {
    let secs = |d: Duration| d.as_secs_f64();
    let m = &x.measurements;
    RequestResult {
        target: target.to_string(),
        id: job.id.clone(),
        request_id: call.request_id.clone(),
        session: job.session,
        turn: job.turn,
        start_s: secs(x.sent.saturating_duration_since(t0)),
        end_s: secs(x.ended.saturating_duration_since(t0)),
        status: x.status,
        ok: x.ok(),
        error: x.error,
        stream: job.stream,
        ttfb_s: m.ttfb.map(secs),
        ttft_s: m.ttft.map(secs),
        e2e_s: secs(m.e2e),
        tpot_s: m.tpot.map(secs),
        itl_s: m.itl.iter().copied().map(secs).collect(),
        prompt_tokens: m.prompt_tokens,
        cached_tokens: m.cached_tokens,
        output_tokens: m.output_tokens,
        output_tokens_estimated: m.output_tokens_estimated,
        finish_reason: m.finish_reason.map(|f| f.as_str().to_string()),
        chunks: m.chunks,
        content_events: m.content_events,
    }
}

/// One line of the file workload's output.
#[derive(Serialize)]
struct FileOutput<'a> {
    id: &'a str,
    target: &'a str,
    status: u16,
    text: Option<&'a str>,
    /// The whole response body of a non-streaming request, exactly as received.
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<Box<RawValue>>,
    finish_reason: Option<&'a str>,
    prompt_tokens: Option<u64>,
    cached_tokens: Option<u64>,
    output_tokens: Option<u64>,
    ttft_s: Option<f64>,
    tpot_s: Option<f64>,
    e2e_s: f64,
    itl_s: &'a [f64],
}

impl<'a> FileOutput<'a> {
    fn new(r: &'a RequestResult, x: &'a Exchange) -> Self {
        let response = x
            .body
            .as_ref()
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| RawValue::from_string(s.trim().to_string()).ok());
        Self {
            id: &r.id,
            target: &r.target,
            status: r.status,
            text: x.text.as_deref(),
            response,
            finish_reason: r.finish_reason.as_deref(),
            prompt_tokens: r.prompt_tokens,
            cached_tokens: r.cached_tokens,
            output_tokens: r.output_tokens,
            ttft_s: r.ttft_s,
            tpot_s: r.tpot_s,
            e2e_s: r.e2e_s,
            itl_s: &r.itl_s,
        }
    }
}

/// The requests a workload sends when `requests` does not cut it short (`None`: as many as its
/// input holds, or endless and bounded by `duration`).
pub fn natural_size(exp: &Experiment) -> Option<u64> {
    match &exp.workload {
        Workload::MultiTurn {
            sessions, turns, ..
        } => Some(u64::from(sessions.get()) * u64::from(turns.get())),
        Workload::SharedPrefix {
            prefixes,
            questions,
            ..
        } => Some(u64::from(prefixes.get()) * u64::from(questions.get())),
        _ => None,
    }
}

/// The request budget: `requests`, capped by the natural size. Synthetic workloads with neither
/// `requests` nor `duration` send [`DEFAULT_REQUESTS`].
pub fn budget(exp: &Experiment) -> Option<u64> {
    let synthetic = matches!(
        exp.workload,
        Workload::Single
            | Workload::Batch { .. }
            | Workload::Concurrent { .. }
            | Workload::Rate { .. }
    );
    if synthetic && exp.requests.is_none() && exp.duration.is_none() {
        return Some(DEFAULT_REQUESTS);
    }
    match (exp.requests, natural_size(exp)) {
        (Some(r), Some(n)) => Some(r.min(n)),
        (r, n) => r.or(n),
    }
}

/// The prompt salt of a target in a run: synthetic workloads only (see
/// [`workload::target_salt`]). Keyed by run id too, so a repeated run does not find the previous
/// run's prompts in the backend's prefix cache either.
fn salt_for(exp: &Experiment, run_id: &str, target: &str) -> Option<String> {
    (!matches!(exp.workload, Workload::File { .. }))
        .then(|| workload::target_salt(&format!("{run_id}/{target}")))
}

/// Sends the warm-up requests one by one, unrecorded.
pub async fn warm_up(client: &BenchClient, exp: &Experiment, run_id: &str, target: &Target) {
    for i in 0..exp.warmup {
        let job = workload::warmup(exp, i);
        let call = Call {
            base: target.url.clone(),
            endpoint: job.api.endpoint(),
            body: job.body(exp, salt_for(exp, run_id, &target.name).as_deref()),
            api_key: target.api_key.clone().or_else(|| exp.api_key.clone()),
            request_id: format!("{}-{}", target.name, job.id),
            timeout: exp.timeout,
            capture_text: false,
            capture_body: false,
        };
        let _ = client.send(&call).await;
    }
}

/// Runs the measured phase of `exp` against `target` in run `run_id`, every result going to
/// `sink`.
pub async fn run_target(
    client: BenchClient,
    exp: Arc<Experiment>,
    target: Target,
    sink: Arc<Sink>,
    run_id: &str,
) -> Result<(), RunError> {
    let t0 = Instant::now();
    let limit = budget(&exp).unwrap_or(u64::MAX);
    let shared = Arc::new(Shared {
        client,
        deadline: exp.duration.map(|d| t0 + d),
        exp: exp.clone(),
        target: target.clone(),
        sink: sink.clone(),
        t0,
        budget: AtomicU64::new(limit),
        salt: salt_for(&exp, run_id, &target.name),
    });
    match exp.workload.clone() {
        Workload::Single => {
            closed_loop(&shared, synthetic_jobs(&exp), 1, false).await;
        }
        Workload::Batch { size } => waves(&shared, synthetic_jobs(&exp), size.get()).await,
        Workload::Concurrent { concurrency } => {
            closed_loop(&shared, synthetic_jobs(&exp), concurrency.get(), false).await;
        }
        Workload::Rate { rate, arrivals } => {
            let e = exp.clone();
            let jobs = workload::arrivals(exp.seed, rate, arrivals)
                .enumerate()
                .map(move |(i, at)| Job {
                    at: Some(at),
                    ..workload::synthetic(&e, i as u64)
                });
            open_loop(&shared, jobs).await;
        }
        Workload::SharedPrefix {
            prefixes,
            questions,
            prefix,
            concurrency,
        } => {
            let jobs = workload::shared_prefix(&exp, prefixes.get(), questions.get(), &prefix);
            closed_loop(&shared, jobs.into_iter(), concurrency.get(), false).await;
        }
        Workload::File {
            input,
            output,
            concurrency,
        } => {
            let (jobs, _done) = workload::file_jobs(&exp, &input, &output)?;
            closed_loop(&shared, jobs.into_iter(), concurrency.get(), true).await;
        }
        Workload::Replay { log, speedup } => {
            let jobs = workload::replay_jobs(&exp, &log, speedup)?;
            open_loop(&shared, jobs.into_iter()).await;
        }
        Workload::MultiTurn {
            sessions,
            turns,
            concurrency,
            think_time,
            agentic,
            followup,
            followup_output,
        } => {
            let plan = SessionPlan {
                sessions: sessions.get(),
                turns: turns.get(),
                think_time,
                agentic,
                followup,
                followup_output,
                next: AtomicU32::new(0),
            };
            conversations(&shared, Arc::new(plan), concurrency.get()).await;
        }
    }
    let failed = sink.failed.lock().map(|mut f| f.take()).unwrap_or(None);
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

fn synthetic_jobs(exp: &Arc<Experiment>) -> impl Iterator<Item = Job> + Send + 'static {
    let exp = exp.clone();
    (0u64..).map(move |i| workload::synthetic(&exp, i))
}

type Jobs = Arc<Mutex<Box<dyn Iterator<Item = Job> + Send>>>;

fn next_job(jobs: &Jobs) -> Option<Job> {
    jobs.lock().ok().and_then(|mut j| j.next())
}

/// `workers` tasks, each sending its next job when its last one has ended (`capture`: keep the
/// generated text and body for the file workload's output).
async fn closed_loop(
    shared: &Arc<Shared>,
    jobs: impl Iterator<Item = Job> + Send + 'static,
    workers: u32,
    capture: bool,
) {
    let jobs: Jobs = Arc::new(Mutex::new(Box::new(jobs)));
    let mut tasks = JoinSet::new();
    for _ in 0..workers {
        let (shared, jobs) = (shared.clone(), jobs.clone());
        tasks.spawn(async move {
            while let Some(job) = next_job(&jobs) {
                if !shared.take() {
                    break;
                }
                shared.execute(&job, capture).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Waves of `size` jobs sent together.
async fn waves(shared: &Arc<Shared>, mut jobs: impl Iterator<Item = Job>, size: u32) {
    loop {
        let mut tasks = JoinSet::new();
        for _ in 0..size {
            let Some(job) = jobs.next() else { break };
            if !shared.take() {
                break;
            }
            let shared = shared.clone();
            tasks.spawn(async move {
                shared.execute(&job, false).await;
            });
        }
        if tasks.is_empty() {
            return;
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// Each job at `t0 + job.at`, whatever is still in flight.
async fn open_loop(shared: &Arc<Shared>, jobs: impl Iterator<Item = Job>) {
    let mut tasks = JoinSet::new();
    for job in jobs {
        let at = shared.t0 + job.at.unwrap_or_default();
        if shared.deadline.is_some_and(|d| at >= d) {
            break;
        }
        tokio::time::sleep_until(at).await;
        if !shared.take() {
            break;
        }
        let task = shared.clone();
        tasks.spawn(async move {
            task.execute(&job, false).await;
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// The conversations of a multi-turn workload.
#[derive(Debug)]
struct SessionPlan {
    sessions: u32,
    turns: u32,
    think_time: Duration,
    agentic: bool,
    followup: crate::bench::experiment::Length,
    followup_output: Option<crate::bench::experiment::Length>,
    /// Next conversation to start.
    next: AtomicU32,
}

/// `workers` tasks, each taking the next conversation and running it to its last turn.
async fn conversations(shared: &Arc<Shared>, plan: Arc<SessionPlan>, workers: u32) {
    let mut tasks = JoinSet::new();
    for _ in 0..workers {
        let (shared, plan) = (shared.clone(), plan.clone());
        tasks.spawn(async move {
            loop {
                let session = plan.next.fetch_add(1, Ordering::SeqCst);
                if session >= plan.sessions || !converse(&shared, &plan, session).await {
                    break;
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Runs one conversation; false when the budget or the time ran out.
async fn converse(shared: &Shared, plan: &SessionPlan, session: u32) -> bool {
    let mut conversation = Conversation::new(&shared.exp, session, plan.agentic);
    for turn in 0..plan.turns {
        if !shared.take() {
            return false;
        }
        let job = conversation.next_turn(
            &shared.exp,
            turn,
            &plan.followup,
            plan.followup_output.as_ref(),
        );
        let exchange = shared.execute(&job, true).await;
        if !exchange.ok() {
            return true;
        }
        conversation.reply(exchange.text.unwrap_or_default());
        if turn + 1 < plan.turns {
            tokio::time::sleep(plan.think_time).await;
        }
    }
    true
}
