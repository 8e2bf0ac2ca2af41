//! `servelens demo`: the whole gateway story on one machine with nothing to set up.
//!
//! Starts a backend replaying a recorded vLLM stream on a schedule, a gateway in front of it on
//! free ports, sends a few streaming chat requests through the gateway, and prints what the
//! gateway measured for each (TTFB, TTFT, ITL, tokens, outcome) plus a `/metrics` excerpt.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::{Framework, GatewayConfig};
use crate::gateway;
use crate::replay::{ReplayServer, Script};
use crate::telemetry::RequestRecord;

/// A vLLM chat stream with `include_usage` (5 content events, 8 tokens).
const STREAM: &[u8] = include_bytes!("../tests/fixtures/vllm_chat_stream_usage.sse");

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A local socket could not be opened.
    #[error("cannot start the demo backend: {0}")]
    Io(#[from] std::io::Error),
    /// The gateway did not start.
    #[error(transparent)]
    Start(#[from] gateway::StartError),
    /// The config for the demo was refused (a bug).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A request through the gateway failed.
    #[error("request through the gateway failed: {0}")]
    Request(String),
}

/// Runs the demo, writing its report to `out`.
pub async fn run(requests: usize, out: &mut impl std::io::Write) -> Result<(), DemoError> {
    // Each request gets a slightly slower schedule, so the table shows the gateway measuring.
    let backend = ReplayServer::spawn(|received| {
        let n = received.body.len() % 7;
        let first = Duration::from_millis(80 + 10 * n as u64);
        Script::sse(STREAM, first, Duration::from_millis(15 + n as u64))
    })
    .await?;
    let mut config = GatewayConfig::for_upstreams(&[backend.url()], Framework::Vllm)?;
    config.server.listen = ([127, 0, 0, 1], 0).into();
    config.server.admin = ([127, 0, 0, 1], 0).into();
    let running = gateway::start(config).await?;
    let mut records = running.gateway.telemetry().subscribe();
    writeln!(out, "servelens demo")?;
    writeln!(
        out,
        "  backend (replaying a recorded vLLM stream): {}",
        backend.url()
    )?;
    writeln!(
        out,
        "  gateway: {}   admin: {}/metrics",
        running.url(),
        running.admin_url()
    )?;
    writeln!(out)?;

    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut finished: Vec<Arc<RequestRecord>> = Vec::new();
    for i in 0..requests {
        let body = format!(
            r#"{{"model":"meta-llama/Llama-3.1-8B-Instruct","messages":[{{"role":"user","content":"Say hello, politely.{}"}}],"stream":true}}"#,
            " ".repeat(i)
        );
        let request = Request::post(format!("{}/v1/chat/completions", running.url()))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| DemoError::Request(e.to_string()))?;
        let response = client
            .request(request)
            .await
            .map_err(|e| DemoError::Request(e.to_string()))?;
        if response.status() != StatusCode::OK {
            return Err(DemoError::Request(format!("status {}", response.status())));
        }
        response
            .into_body()
            .collect()
            .await
            .map_err(|e| DemoError::Request(e.to_string()))?;
        match tokio::time::timeout(Duration::from_secs(5), records.recv()).await {
            Ok(Ok(record)) => finished.push(record),
            _ => return Err(DemoError::Request("no record was written".into())),
        }
    }
    out.write_all(table(&finished).as_bytes())?;
    writeln!(out)?;
    let metrics = running.gateway.telemetry().metrics.render();
    writeln!(
        out,
        "A few of the series on {}/metrics:",
        running.admin_url()
    )?;
    for line in metrics.lines().filter(|l| {
        l.starts_with("servelens_requests_total")
            || l.starts_with("servelens_output_tokens_total")
            || l.starts_with("servelens_time_to_first_token_seconds_count")
            || l.starts_with("servelens_time_to_first_token_seconds_sum")
    }) {
        writeln!(out, "  {line}")?;
    }
    running.shutdown().await;
    Ok(())
}

/// The per-request table.
pub fn table(records: &[Arc<RequestRecord>]) -> String {
    let ms = |d: Option<Duration>| {
        d.map_or("-".to_string(), |d| format!("{:.1}", d.as_secs_f64() * 1e3))
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<4} {:<18} {:>9} {:>9} {:>12} {:>9} {:>8} {:>7}  outcome",
        "#", "backend", "TTFB ms", "TTFT ms", "ITL mean ms", "E2E ms", "tokens", "chunks"
    );
    for (i, r) in records.iter().enumerate() {
        let m = &r.measurements;
        let itl_mean = (!m.itl.is_empty()).then(|| {
            m.itl.iter().sum::<Duration>() / u32::try_from(m.itl.len()).unwrap_or(u32::MAX)
        });
        let tokens = m.output_tokens.map_or("-".into(), |t| {
            if m.output_tokens_estimated {
                format!("~{t}")
            } else {
                t.to_string()
            }
        });
        let _ = writeln!(
            s,
            "{:<4} {:<18} {:>9} {:>9} {:>12} {:>9} {:>8} {:>7}  {}",
            i + 1,
            r.labels.backend,
            ms(m.ttfb),
            ms(m.ttft),
            ms(itl_mean),
            ms(Some(m.e2e)),
            tokens,
            m.chunks,
            r.outcome.as_str(),
        );
    }
    s
}
