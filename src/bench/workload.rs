//! What each workload sends: the jobs (prompt, output length, arrival offset) of every workload
//! kind, and the request bodies they become.
//!
//! Everything here is deterministic under the experiment's seed and independent of dispatch
//! order: job `i` of a synthetic workload draws from its own seeded stream, so two targets of a
//! side-by-side run receive exactly the same requests. How jobs are *dispatched* (closed loop,
//! waves, open loop, conversations) is [`crate::bench::runner`]'s business.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::bench::experiment::{Api, Arrivals, Experiment, Length};
use crate::bench::prompts::{self, sample_length, Rng};

/// Seed streams, so that different uses of the seed never share draws.
mod stream {
    pub const SYNTHETIC: u64 = 1;
    pub const ARRIVALS: u64 = 2;
    pub const ORDER: u64 = 3;
    pub const PREFIX_LEN: u64 = 4;
    pub const QUESTION: u64 = 5;
    pub const SESSION: u64 = 6;
    pub const REPLAY: u64 = 7;
    pub const WARMUP: u64 = 9;
}

/// Why a workload's input could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A line is not what the workload reads.
    #[error("{path} line {line}: {reason}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// What a request asks.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Plain text: the user message (chat) or the prompt (completions).
    Text(String),
    /// Chat messages (completions get them rendered as a transcript).
    Messages(Vec<Value>),
}

/// One request of a workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Id within the run.
    pub id: String,
    /// Conversation, for multi-turn.
    pub session: Option<u32>,
    /// Turn within the conversation.
    pub turn: Option<u32>,
    /// The prompt.
    pub prompt: Prompt,
    /// `max_tokens`, unless the job's own fields set it.
    pub max_tokens: Option<u32>,
    /// Endpoint.
    pub api: Api,
    /// Ask for a stream.
    pub stream: bool,
    /// Body fields of this job, sent as is (file workload lines); they win over everything.
    pub fields: Map<String, Value>,
    /// Arrival offset in an open loop.
    pub at: Option<Duration>,
}

impl Job {
    fn new(id: String, prompt: Prompt, max_tokens: u32, exp: &Experiment) -> Self {
        Self {
            id,
            session: None,
            turn: None,
            prompt,
            max_tokens: Some(max_tokens),
            api: exp.endpoint,
            stream: exp.stream,
            fields: Map::new(),
            at: None,
        }
    }

    /// The JSON request body: model, prompt, `max_tokens`, stream (with usage), then the
    /// experiment's `extra_body`, then the job's own fields. A `salt` is put in front of the
    /// prompt (the first message): see [`target_salt`].
    pub fn body(&self, exp: &Experiment, salt: Option<&str>) -> Bytes {
        let mut body = Map::new();
        body.insert("model".into(), Value::String(exp.model.clone()));
        let salted;
        let prompt = match salt {
            Some(salt) => {
                salted = self.prompt.salted(salt);
                &salted
            }
            None => &self.prompt,
        };
        match (prompt, self.api) {
            (Prompt::Text(text), Api::Chat) => {
                body.insert(
                    "messages".into(),
                    json!([{"role": "user", "content": text}]),
                );
            }
            (Prompt::Text(text), Api::Completions) => {
                body.insert("prompt".into(), Value::String(text.clone()));
            }
            (Prompt::Messages(messages), Api::Chat) => {
                body.insert("messages".into(), Value::Array(messages.clone()));
            }
            (Prompt::Messages(messages), Api::Completions) => {
                body.insert("prompt".into(), Value::String(transcript(messages)));
            }
        }
        if let Some(n) = self.max_tokens {
            body.insert("max_tokens".into(), Value::from(n));
        }
        body.insert("stream".into(), Value::Bool(self.stream));
        if self.stream {
            body.insert("stream_options".into(), json!({"include_usage": true}));
        }
        if let Ok(Value::Object(extra)) = serde_json::to_value(&exp.extra_body) {
            body.extend(extra);
        }
        body.extend(self.fields.clone());
        Bytes::from(serde_json::to_vec(&Value::Object(body)).unwrap_or_default())
    }
}

impl Prompt {
    /// The prompt with `salt` in front of its text (of its first message).
    fn salted(&self, salt: &str) -> Self {
        match self {
            Self::Text(text) => Self::Text(format!("{salt}{text}")),
            Self::Messages(messages) => {
                let mut messages = messages.clone();
                if let Some(Value::String(content)) =
                    messages.first_mut().and_then(|m| m.get_mut("content"))
                {
                    content.insert_str(0, salt);
                }
                Self::Messages(messages)
            }
        }
    }
}

/// A fixed-length tag (`[1a2b3c4d] `, about 3 tokens) of a key (run and target) put in front of
/// synthetic prompts. Targets of a side-by-side run get the same requests apart from this tag,
/// so when they share a backend (direct vs through the gateway) the second target cannot hit
/// prefix-cache entries the first one left behind, while prefix sharing *within* a target
/// (shared system prompts, growing conversations) is untouched.
pub fn target_salt(key: &str) -> String {
    format!(
        "[{:08x}] ",
        xxhash_rust::xxh3::xxh3_64(key.as_bytes()) >> 32
    )
}

/// Chat messages as one completions prompt: `Role: content` blocks, ending with `Assistant:`.
pub fn transcript(messages: &[Value]) -> String {
    let mut out = String::new();
    for m in messages {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
        let content = m.get("content").and_then(Value::as_str).unwrap_or("");
        let mut chars = role.chars();
        let role: String = chars
            .next()
            .map(|c| c.to_uppercase().chain(chars).collect())
            .unwrap_or_default();
        out.push_str(&format!("{role}: {content}\n\n"));
    }
    out.push_str("Assistant:");
    out
}

// === synthetic jobs (single, batch, concurrent, rate) ===

/// Job `index` of the synthetic stream: a seeded question of `lengths.input` tokens asking for
/// `lengths.output` tokens.
pub fn synthetic(exp: &Experiment, index: u64) -> Job {
    synthetic_from(exp, stream::SYNTHETIC, index, format!("r{index:06}"))
}

/// Warm-up job `index` (its own stream, so warm-up never shares a prompt with measurement).
pub fn warmup(exp: &Experiment, index: u64) -> Job {
    synthetic_from(exp, stream::WARMUP, index, format!("warmup{index}"))
}

fn synthetic_from(exp: &Experiment, stream: u64, index: u64, id: String) -> Job {
    let mut rng = Rng::derive(exp.seed, stream, index);
    let input = sample_length(&exp.lengths.input, &mut rng);
    let output = sample_length(&exp.lengths.output, &mut rng);
    let text = prompts::question(&mut rng, index, input);
    Job::new(id, Prompt::Text(text), output, exp)
}

/// Arrival offsets of an open loop at `rate` per second: the first at 0, then exponential
/// (Poisson) or equal gaps.
pub fn arrivals(seed: u64, rate: f64, kind: Arrivals) -> impl Iterator<Item = Duration> {
    let mut rng = Rng::derive(seed, stream::ARRIVALS, 0);
    let mut t = 0.0_f64;
    (0u64..).map(move |i| {
        if i > 0 {
            t = match kind {
                Arrivals::Poisson => t + rng.exponential(rate),
                Arrivals::Constant => i as f64 / rate,
            };
        }
        Duration::from_secs_f64(t)
    })
}

// === shared prefix ===

/// `prefixes × questions` jobs: system prompt `k` (the same text for every question of `k`)
/// followed by question `m`, in a seeded shuffled order.
pub fn shared_prefix(exp: &Experiment, prefixes: u32, questions: u32, prefix: &Length) -> Vec<Job> {
    let systems: Vec<String> = (0..u64::from(prefixes))
        .map(|k| {
            let tokens = sample_length(prefix, &mut Rng::derive(exp.seed, stream::PREFIX_LEN, k));
            prompts::system_prompt(exp.seed, k, tokens)
        })
        .collect();
    let mut order: Vec<(u32, u32)> = (0..prefixes)
        .flat_map(|k| (0..questions).map(move |m| (k, m)))
        .collect();
    let mut rng = Rng::derive(exp.seed, stream::ORDER, 0);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    order
        .into_iter()
        .map(|(k, m)| {
            let index = u64::from(k) * u64::from(questions) + u64::from(m);
            let mut rng = Rng::derive(exp.seed, stream::QUESTION, index);
            let input = sample_length(&exp.lengths.input, &mut rng);
            let output = sample_length(&exp.lengths.output, &mut rng);
            let messages = vec![
                json!({"role": "system", "content": systems[k as usize]}),
                json!({"role": "user", "content": prompts::question(&mut rng, u64::from(m), input)}),
            ];
            Job::new(format!("p{k}q{m}"), Prompt::Messages(messages), output, exp)
        })
        .collect()
}

// === multi-turn ===

/// A conversation in progress: its messages so far.
#[derive(Debug, Clone)]
pub struct Conversation {
    session: u32,
    messages: Vec<Value>,
    rng: Rng,
    agentic: bool,
}

impl Conversation {
    /// Conversation `session` of the experiment.
    pub fn new(exp: &Experiment, session: u32, agentic: bool) -> Self {
        Self {
            session,
            messages: Vec::new(),
            rng: Rng::derive(exp.seed, stream::SESSION, u64::from(session)),
            agentic,
        }
    }

    /// The job of turn `turn`: the whole context plus a new user message (turn 0: a question of
    /// `lengths.input` tokens; later: a follow-up, or a tool result when agentic).
    pub fn next_turn(
        &mut self,
        exp: &Experiment,
        turn: u32,
        followup: &Length,
        followup_output: Option<&Length>,
    ) -> Job {
        let (content, output) = if turn == 0 {
            let input = sample_length(&exp.lengths.input, &mut self.rng);
            let output = sample_length(&exp.lengths.output, &mut self.rng);
            (
                prompts::question(&mut self.rng, u64::from(self.session), input),
                output,
            )
        } else {
            let input = sample_length(followup, &mut self.rng);
            let short = Length::Fixed { tokens: 24 };
            let out_dist = match followup_output {
                Some(l) => l,
                None if self.agentic => &short,
                None => &exp.lengths.output,
            };
            let output = sample_length(out_dist, &mut self.rng);
            let content = if self.agentic {
                prompts::tool_result(&mut self.rng, u64::from(turn), input)
            } else {
                prompts::question(&mut self.rng, u64::from(turn), input)
            };
            (content, output)
        };
        self.messages
            .push(json!({"role": "user", "content": content}));
        let mut job = Job::new(
            format!("s{}t{turn}", self.session),
            Prompt::Messages(self.messages.clone()),
            output,
            exp,
        );
        job.session = Some(self.session);
        job.turn = Some(turn);
        job
    }

    /// Appends the assistant's reply, so the next turn carries it as context.
    pub fn reply(&mut self, text: String) {
        self.messages
            .push(json!({"role": "assistant", "content": text}));
    }
}

// === file ===

/// The jobs of an input JSONL not yet in the output file (ids already done are skipped, as are
/// repeated ids). Returns the jobs and how many ids were already done.
pub fn file_jobs(
    exp: &Experiment,
    input: &Path,
    output: &Path,
) -> Result<(Vec<Job>, usize), WorkloadError> {
    let done = done_ids(output)?;
    let text = std::fs::read_to_string(input).map_err(|source| WorkloadError::Io {
        path: input.to_path_buf(),
        source,
    })?;
    let mut seen = HashSet::new();
    let mut jobs = Vec::new();
    let mut skipped = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fail = |reason: String| WorkloadError::Line {
            path: input.to_path_buf(),
            line: i + 1,
            reason,
        };
        let mut fields: Map<String, Value> =
            serde_json::from_str(line).map_err(|e| fail(e.to_string()))?;
        let id = match fields.remove("id") {
            Some(Value::String(s)) => s,
            Some(Value::Number(n)) => n.to_string(),
            None => format!("L{}", i + 1),
            Some(_) => return Err(fail("`id` must be a string or a number".into())),
        };
        if !seen.insert(id.clone()) {
            continue;
        }
        if done.contains(&id) {
            skipped += 1;
            continue;
        }
        let prompt = match (fields.remove("messages"), fields.remove("prompt")) {
            (Some(Value::Array(m)), _) => Prompt::Messages(m),
            (None, Some(Value::String(p))) => Prompt::Text(p),
            _ => {
                return Err(fail(
                    "needs `prompt` (a string) or `messages` (an array)".into(),
                ))
            }
        };
        let max_tokens = if fields.contains_key("max_tokens") {
            None
        } else {
            let mut rng = Rng::derive(exp.seed, stream::SYNTHETIC, i as u64);
            Some(sample_length(&exp.lengths.output, &mut rng))
        };
        jobs.push(Job {
            id,
            session: None,
            turn: None,
            prompt,
            max_tokens,
            api: exp.endpoint,
            stream: exp.stream,
            fields,
            at: None,
        });
    }
    Ok((jobs, skipped))
}

#[derive(Deserialize)]
struct DoneLine {
    id: String,
}

/// Ids in an output file (missing file: none). A torn last line is ignored.
pub fn done_ids(output: &Path) -> Result<HashSet<String>, WorkloadError> {
    let text = match std::fs::read_to_string(output) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(source) => {
            return Err(WorkloadError::Io {
                path: output.to_path_buf(),
                source,
            })
        }
    };
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str::<DoneLine>(line).ok())
        .map(|l| l.id)
        .collect())
}

// === replay ===

#[derive(Deserialize)]
struct LogLine {
    ts: f64,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    mirrored: bool,
}

/// The chat and completions requests of a gateway request log, at their original offsets from
/// the first one (divided by `speedup`). Prompts are synthetic with the logged prompt length
/// (the log holds no prompt text); `max_tokens` is the logged output length.
pub fn replay_jobs(exp: &Experiment, log: &Path, speedup: f64) -> Result<Vec<Job>, WorkloadError> {
    let text = std::fs::read_to_string(log).map_err(|source| WorkloadError::Io {
        path: log.to_path_buf(),
        source,
    })?;
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let entry: LogLine = serde_json::from_str(line).map_err(|e| WorkloadError::Line {
            path: log.to_path_buf(),
            line: i + 1,
            reason: e.to_string(),
        })?;
        let api = match entry.endpoint.as_deref() {
            Some("chat_completions") | None => Api::Chat,
            Some("completions") => Api::Completions,
            Some(_) => continue,
        };
        if !entry.mirrored && entry.ts.is_finite() {
            lines.push((i, api, entry));
        }
    }
    lines.sort_by(|a, b| a.2.ts.total_cmp(&b.2.ts));
    let t0 = lines.first().map_or(0.0, |l| l.2.ts);
    Ok(lines
        .into_iter()
        .map(|(i, api, entry)| {
            let mut rng = Rng::derive(exp.seed, stream::REPLAY, i as u64);
            let input = entry
                .prompt_tokens
                .map_or_else(|| sample_length(&exp.lengths.input, &mut rng), clamp_u32);
            let output = entry
                .output_tokens
                .map_or_else(|| sample_length(&exp.lengths.output, &mut rng), clamp_u32);
            let text = prompts::question(&mut rng, i as u64, input.max(1));
            let mut job = Job::new(
                format!("l{}", i + 1),
                Prompt::Text(text),
                output.max(1),
                exp,
            );
            job.api = api;
            job.stream = entry.stream.unwrap_or(exp.stream);
            job.at = Some(Duration::from_secs_f64(
                ((entry.ts - t0) / speedup).max(0.0),
            ));
            job
        })
        .collect())
}

fn clamp_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp() -> Experiment {
        Experiment::default()
    }

    #[test]
    fn synthetic_jobs_are_seeded_and_bodies_carry_everything() {
        let mut e = exp();
        e.extra_body
            .insert("ignore_eos".into(), toml::Value::Boolean(true));
        assert_eq!(synthetic(&e, 3), synthetic(&e, 3));
        assert_ne!(synthetic(&e, 3).prompt, synthetic(&e, 4).prompt);
        let body: Value = serde_json::from_slice(&synthetic(&e, 3).body(&e, None)).expect("json");
        assert_eq!(body["model"], e.model);
        assert_eq!(body["max_tokens"], 128);
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["ignore_eos"], true);
        assert_eq!(body["messages"][0]["role"], "user");
        e.endpoint = Api::Completions;
        e.stream = false;
        let salt = target_salt("gateway");
        assert_eq!(salt.len(), 11);
        let body: Value =
            serde_json::from_slice(&synthetic(&e, 3).body(&e, Some(&salt))).expect("json");
        assert!(body["prompt"]
            .as_str()
            .is_some_and(|p| p.starts_with(&salt)));
        assert!(body.get("stream_options").is_none());
    }

    #[test]
    fn arrivals_have_the_offered_rate() {
        let constant: Vec<Duration> = arrivals(1, 4.0, Arrivals::Constant).take(5).collect();
        assert_eq!(constant[4], Duration::from_secs(1));
        let last = arrivals(1, 10.0, Arrivals::Poisson)
            .nth(10_000)
            .expect("endless");
        let rate = 10_000.0 / last.as_secs_f64();
        assert!((rate - 10.0).abs() < 0.3, "rate {rate}");
    }

    #[test]
    fn shared_prefix_jobs_share_exactly_their_system_prompt() {
        let jobs = shared_prefix(&exp(), 3, 4, &Length::Fixed { tokens: 64 });
        assert_eq!(jobs.len(), 12);
        let system = |job: &Job| match &job.prompt {
            Prompt::Messages(m) => m[0]["content"].as_str().unwrap_or("").to_string(),
            Prompt::Text(_) => String::new(),
        };
        let p0: Vec<&Job> = jobs.iter().filter(|j| j.id.starts_with("p0q")).collect();
        assert_eq!(p0.len(), 4);
        assert!(p0.iter().all(|j| system(j) == system(p0[0])));
        let p1 = jobs.iter().find(|j| j.id.starts_with("p1q")).expect("p1");
        assert_ne!(system(p1), system(p0[0]));
        assert_eq!(system(p1).len(), 256);
        let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
        assert_ne!(ids[..4], ["p0q0", "p0q1", "p0q2", "p0q3"], "shuffled");
    }

    #[test]
    fn conversations_accumulate_context() {
        let e = exp();
        let mut c = Conversation::new(&e, 2, true);
        let first = c.next_turn(&e, 0, &Length::Fixed { tokens: 10 }, None);
        c.reply("ok".into());
        let second = c.next_turn(&e, 1, &Length::Fixed { tokens: 10 }, None);
        let Prompt::Messages(m) = &second.prompt else {
            panic!("messages")
        };
        assert_eq!(m.len(), 3);
        assert_eq!(m[1]["content"], "ok");
        assert!(m[2]["content"]
            .as_str()
            .unwrap_or("")
            .starts_with("{\"tool\""));
        assert_eq!(second.max_tokens, Some(24), "agentic turns are short");
        assert_eq!(first.max_tokens, Some(128));
        assert_eq!(second.id, "s2t1");
        assert!(transcript(m).ends_with("Assistant:"));
    }

    #[test]
    fn file_jobs_skip_done_and_repeated_ids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("in.jsonl");
        let output = dir.path().join("out.jsonl");
        std::fs::write(
            &input,
            "{\"id\":\"a\",\"prompt\":\"x\"}\n{\"id\":2,\"messages\":[],\"max_tokens\":5,\"logprobs\":true}\n{\"id\":\"a\",\"prompt\":\"y\"}\n{\"prompt\":\"z\"}\n",
        )
        .expect("write");
        std::fs::write(&output, "{\"id\":\"a\"}\n{\"id\":").expect("write");
        let (jobs, skipped) = file_jobs(&exp(), &input, &output).expect("jobs");
        assert_eq!(skipped, 1);
        let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(ids, ["2", "L4"]);
        assert_eq!(jobs[0].max_tokens, None);
        assert_eq!(jobs[0].fields["logprobs"], true);
        std::fs::write(&input, "{\"id\":\"b\"}\n").expect("write");
        let err = file_jobs(&exp(), &input, &output).expect_err("no prompt");
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn replay_keeps_inter_arrival_times() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("log.jsonl");
        std::fs::write(
            &log,
            "{\"ts\":100.5,\"endpoint\":\"chat_completions\",\"stream\":true,\"prompt_tokens\":40,\"output_tokens\":7}\n\
             {\"ts\":100.0,\"endpoint\":\"completions\",\"stream\":false,\"prompt_tokens\":8,\"output_tokens\":3}\n\
             {\"ts\":100.2,\"endpoint\":\"embeddings\"}\n\
             {\"ts\":102.0,\"endpoint\":\"chat_completions\",\"mirrored\":true}\n",
        )
        .expect("write");
        let jobs = replay_jobs(&exp(), &log, 2.0).expect("jobs");
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].at, Some(Duration::ZERO));
        assert_eq!(jobs[0].api, Api::Completions);
        assert!(!jobs[0].stream);
        assert_eq!(jobs[1].at, Some(Duration::from_millis(250)));
        assert_eq!(jobs[1].max_tokens, Some(7));
        let Prompt::Text(t) = &jobs[1].prompt else {
            panic!("text")
        };
        assert_eq!(t.len(), 160);
    }
}
