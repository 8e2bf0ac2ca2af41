//! Shared test harness: fixtures, a gateway on `127.0.0.1:0`, and small HTTP client helpers.
//!
//! Everything runs in the test's own runtime over real loopback sockets, so tests marked
//! `start_paused = true` measure exact virtual times end to end.

#![allow(dead_code)]

pub mod fixtures;

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use servelens::config::{Framework, GatewayConfig};
use servelens::gateway::{self, RunningGateway};
use servelens::telemetry::RequestRecord;
use tokio::sync::broadcast;

/// A gateway config with one pool of `upstreams` serving every model, on ephemeral ports.
pub fn config_for(upstreams: &[String]) -> GatewayConfig {
    let mut config =
        GatewayConfig::for_upstreams(upstreams, Framework::Vllm).expect("valid upstream config");
    local_ports(&mut config);
    config
}

/// A gateway config from TOML text, on ephemeral ports.
pub fn config_from(toml: &str) -> GatewayConfig {
    let mut config = GatewayConfig::from_toml(toml).expect("valid test config");
    local_ports(&mut config);
    config
}

fn local_ports(config: &mut GatewayConfig) {
    config.server.listen = ([127, 0, 0, 1], 0).into();
    config.server.admin = ([127, 0, 0, 1], 0).into();
}

/// A started gateway plus a subscription to its records (taken before any traffic).
pub struct TestGateway {
    pub running: RunningGateway,
    pub records: broadcast::Receiver<std::sync::Arc<RequestRecord>>,
}

impl TestGateway {
    pub async fn start(config: GatewayConfig) -> Self {
        let running = gateway::start(config).await.expect("gateway starts");
        let records = running.gateway.telemetry().subscribe();
        Self { running, records }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.running.url(), path)
    }

    /// The next finished request's record (waits for it; fails after 60 s of virtual or real time).
    pub async fn record(&mut self) -> std::sync::Arc<RequestRecord> {
        tokio::time::timeout(Duration::from_secs(60), self.records.recv())
            .await
            .expect("a record within 60 s")
            .expect("record channel open")
    }

    /// `/metrics` as text.
    pub async fn metrics(&self) -> String {
        let (status, _, body) = get(&format!("{}/metrics", self.running.admin_url())).await;
        assert_eq!(status, StatusCode::OK);
        String::from_utf8(body.to_vec()).expect("metrics are UTF-8")
    }
}

pub fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a request and returns the response with its streaming body.
pub async fn send(request: Request<Full<Bytes>>) -> Response<Incoming> {
    client().request(request).await.expect("request sent")
}

/// POSTs JSON text and returns the head; the body is left to stream.
pub async fn post_stream(url: &str, body: impl Into<Bytes>) -> Response<Incoming> {
    send(
        Request::post(url)
            .header("content-type", "application/json")
            .body(Full::new(body.into()))
            .expect("request"),
    )
    .await
}

/// POSTs JSON text and reads the whole response.
pub async fn post(url: &str, body: impl Into<Bytes>) -> (StatusCode, HeaderMap, Bytes) {
    read(post_stream(url, body).await).await
}

/// GETs a URL and reads the whole response.
pub async fn get(url: &str) -> (StatusCode, HeaderMap, Bytes) {
    read(
        send(
            Request::get(url)
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await,
    )
    .await
}

pub async fn read(response: Response<Incoming>) -> (StatusCode, HeaderMap, Bytes) {
    let (head, body) = response.into_parts();
    let body = body.collect().await.expect("body read").to_bytes();
    (head.status, head.headers, body)
}

/// The value of one series in a Prometheus text page: `name{labels}` where every given
/// `key="value"` pair appears among the series' labels. Sums all matching series.
pub fn metric(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, rest) = match series.find('{') {
                Some(i) => (&series[..i], &series[i..]),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// `promtool check metrics` when Prometheus' tools are installed (CI installs them).
pub fn lint_with_promtool(page: &str) {
    lint_with_promtool_allowing(page, &[]);
}

/// `promtool check metrics`, accepting lint findings that contain one of `allowed` (the page
/// must still parse: a parse error is never allowed).
pub fn lint_with_promtool_allowing(page: &str, allowed: &[&str]) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        if std::env::var_os("SERVELENS_REQUIRE_TOOLS").is_some() {
            panic!("promtool is required (SERVELENS_REQUIRE_TOOLS is set) but not installed");
        }
        eprintln!("SKIPPED promtool lint: promtool not installed (apt-get install prometheus)");
        return;
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(page.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool ran");
    let findings =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let only_allowed = out.status.code() == Some(3)
        && findings
            .lines()
            .filter(|l| !l.trim().is_empty())
            .all(|l| allowed.iter().any(|a| l.contains(a)));
    assert!(
        out.status.success() || only_allowed,
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
