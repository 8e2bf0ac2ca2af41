//! The official OpenAI Python SDK (sync and async, streaming and not) works through the gateway
//! unchanged. Runs `tests/python/openai_sdk_check.py` against a gateway on loopback.
//!
//! Skipped with a message when `python3 -c "import openai"` fails, unless
//! `SERVELENS_REQUIRE_TOOLS` is set (CI sets it, so there it cannot be skipped).

mod support;

use std::time::Duration;

use http::StatusCode;
use servelens::replay::{ReplayServer, Script};
use servelens::telemetry::Outcome;
use support::{config_from, TestGateway};

fn python_with_openai() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_sync_and_async_streaming_and_not() {
    if !python_with_openai() {
        assert!(
            std::env::var_os("SERVELENS_REQUIRE_TOOLS").is_none(),
            "the OpenAI SDK is required (SERVELENS_REQUIRE_TOOLS is set): pip install openai"
        );
        eprintln!("SKIPPED: python3 with the openai package is not installed (pip install openai)");
        return;
    }
    let chat = support::fixtures::read("vllm_chat_stream_usage.sse");
    let completions = support::fixtures::read("vllm_completions_stream.sse");
    let nonstream = support::fixtures::read("vllm_chat_nonstream.response.json");
    let models = support::fixtures::read("vllm_models.response.json");
    let backend = ReplayServer::spawn(move |req| {
        let gap = Duration::from_millis(2);
        let streaming = req.body.windows(13).any(|w| w == br#""stream":true"#);
        match (req.path.as_str(), streaming) {
            ("/v1/models", _) => Script::json(StatusCode::OK, models.clone(), Duration::ZERO),
            ("/v1/completions", _) => Script::sse(&completions, gap, gap),
            (_, true) => Script::sse(&chat, gap, gap),
            (_, false) => Script::json(StatusCode::OK, nonstream.clone(), gap),
        }
    })
    .await
    .expect("backend");
    let config = config_from(&format!(
        r#"
        [pools.vllm]
        framework = "vllm"
        backends = ["{}"]
        [[routes]]
        model = "meta-llama/Llama-3.1-8B-Instruct"
        pool = "vllm"
        "#,
        backend.url()
    ));
    let mut gw = TestGateway::start(config).await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/openai_sdk_check.py"
    );
    let output = tokio::process::Command::new("python3")
        .arg(script)
        .arg(gw.url("/v1"))
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "SDK checks failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all OpenAI SDK checks passed"));

    // 4 sync + 3 async inference calls (one of them refused), each recorded once.
    let mut outcomes = Vec::new();
    for _ in 0..7 {
        outcomes.push(gw.record().await.outcome);
    }
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == Outcome::Completed)
            .count(),
        6,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.iter().filter(|o| **o == Outcome::Rejected).count(),
        1,
        "{outcomes:?}"
    );
}
