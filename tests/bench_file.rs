//! The `file` workload as a collection job: 2,000 prompts, the run killed halfway, re-run, and
//! the output has every id exactly once with its response; nothing finished is lost or redone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use serde_json::Value;
use servelens::bench::experiment::Experiment;
use servelens::bench::{run, RunOptions};
use servelens::replay::{ReplayServer, Script};
use tokio::sync::Notify;

const PROMPTS: usize = 2000;
const BODY: &[u8] = include_bytes!("fixtures/vllm_chat_nonstream.response.json");

fn experiment(url: &str, dir: &std::path::Path) -> Experiment {
    Experiment::from_toml(&format!(
        "name = \"collect\"\nout = \"{out}\"\nstream = false\n[workload]\nkind = \"file\"\ninput = \"{input}\"\noutput = \"{output}\"\nconcurrency = 8\n[[targets]]\nname = \"backend\"\nurl = \"{url}\"\n",
        out = dir.join("results").display(),
        input = dir.join("prompts.jsonl").display(),
        output = dir.join("responses.jsonl").display(),
    ))
    .expect("valid experiment")
}

fn output_lines(dir: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("responses.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every output line is whole JSON"))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_killed_collection_resumes_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prompts: String = (0..PROMPTS)
        .map(|i| {
            format!("{{\"id\":\"q{i}\",\"prompt\":\"Question number {i}?\",\"max_tokens\":10}}\n")
        })
        .collect();
    std::fs::write(dir.path().join("prompts.jsonl"), prompts).expect("write prompts");

    // First run: killed once the backend has answered half of the prompts.
    let answered = Arc::new(AtomicUsize::new(0));
    let halfway = Arc::new(Notify::new());
    let (count, notify) = (answered.clone(), halfway.clone());
    let backend = ReplayServer::spawn(move |_| {
        if count.fetch_add(1, Ordering::SeqCst) + 1 == PROMPTS / 2 {
            notify.notify_one();
        }
        Script::json(StatusCode::OK, BODY, Duration::from_millis(25))
    })
    .await
    .expect("replay");
    let exp = experiment(&backend.url(), dir.path());
    let first = tokio::spawn(run(
        exp.clone(),
        RunOptions {
            run_id: Some("first".into()),
            progress: false,
        },
    ));
    halfway.notified().await;
    first.abort();
    assert!(
        first.await.is_err_and(|e| e.is_cancelled()),
        "the run was killed"
    );
    let after_kill = output_lines(dir.path());
    assert!(
        !after_kill.is_empty() && after_kill.len() < PROMPTS,
        "killed halfway: {} lines",
        after_kill.len()
    );

    // Second run: only the missing ids are sent.
    let before = backend.received().len();
    let finished = run(
        exp,
        RunOptions {
            run_id: Some("second".into()),
            progress: false,
        },
    )
    .await
    .expect("second run");
    let sent_again = backend.received().len() - before;
    assert_eq!(
        sent_again,
        PROMPTS - after_kill.len(),
        "done ids are skipped"
    );
    assert_eq!(finished.summary.targets[0].completed, sent_again);

    let lines = output_lines(dir.path());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for line in &lines {
        *seen
            .entry(line["id"].as_str().expect("id").to_string())
            .or_default() += 1;
        assert_eq!(line["status"], 200);
        assert_eq!(line["text"], "Hello! How can I help you today?");
        assert_eq!(
            line["response"]["choices"][0]["message"]["content"],
            "Hello! How can I help you today?",
            "the whole response body is kept"
        );
        assert_eq!(line["output_tokens"], 10);
        assert!(line["e2e_s"]
            .as_f64()
            .is_some_and(|e| (e - 0.025).abs() < 1e-6));
    }
    assert_eq!(seen.len(), PROMPTS, "every id is there");
    assert!(seen.values().all(|n| *n == 1), "no id twice");
    // The prompts went out as written, with their own body fields.
    let body: Value = serde_json::from_slice(&backend.received()[0].body).expect("json");
    assert_eq!(body["max_tokens"], 10);
    assert!(body["messages"][0]["content"]
        .as_str()
        .is_some_and(|c| c.starts_with("Question number")));
}
