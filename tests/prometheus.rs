//! A real Prometheus server scrapes a gateway under traffic, and every query of the shipped
//! Grafana dashboard (`deploy/grafana/dashboards/servelens.json`) returns data from it.
//!
//! The gateway fronts an A/B experiment over two pools of simulated vLLM replicas, and the
//! traffic covers every panel: streams in both arms, a refused request (errors), a backend
//! error retried on the next replica (retries), scraped backend gauges. Needs the `prometheus`
//! binary (Debian: `apt-get install prometheus`); skipped with a message where it is missing,
//! required when `SERVELENS_REQUIRE_TOOLS` is set (CI).

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use servelens::mock::{MockConfig, MockFramework, MockServer};
use support::{config_from, get, TestGateway};
use tokio::process::{Child, Command};

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

fn dashboard() -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/dashboards/servelens.json");
    let text = std::fs::read_to_string(&path).expect("the dashboard file");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every (panel title, PromQL) of the dashboard, with Grafana's variables filled in the way
/// Grafana would for "All" and a 1-minute rate window.
fn dashboard_queries(dash: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("every target has an expr");
            let expr = expr
                .replace("$__rate_interval", "1m")
                .replace("$pool", ".*")
                .replace("$arm", ".*");
            out.push((panel["title"].as_str().unwrap_or("?").to_string(), expr));
        }
    }
    out
}

fn prometheus_binary() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("prometheus"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("SERVELENS_REQUIRE_TOOLS").is_none(),
            "prometheus is required (SERVELENS_REQUIRE_TOOLS is set): apt-get install prometheus"
        );
        eprintln!("SKIPPED: the prometheus binary is not installed (apt-get install prometheus)");
    }
    found
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts Prometheus scraping `target` (`host:port`) every second.
fn start_prometheus(binary: &Path, dir: &Path, target: &str, port: u16) -> Child {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: servelens\n    static_configs:\n      - targets: [\"{target}\"]\n"
        ),
    )
    .expect("write the Prometheus config");
    Command::new(binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus starts")
}

/// An instant query's result vector (empty on any failure, so callers can poll).
async fn query(port: u16, promql: &str) -> Vec<Value> {
    let mut url = format!("http://127.0.0.1:{port}/api/v1/query?query=");
    for byte in promql.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            url.push(byte as char);
        } else {
            url.push_str(&format!("%{byte:02X}"));
        }
    }
    let client = support::client();
    let Ok(Ok(response)) = tokio::time::timeout(
        Duration::from_secs(5),
        client.get(url.parse().expect("query URL")),
    )
    .await
    else {
        return Vec::new();
    };
    let (status, _, body) = support::read(response).await;
    if status != StatusCode::OK {
        return Vec::new();
    }
    let value: Value = serde_json::from_slice(&body).unwrap_or_default();
    assert_eq!(value["status"], "success", "{promql}: {value}");
    value["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn chat(gw: &TestGateway, session: usize, fault: Option<&str>) -> StatusCode {
    let body = format!(
        r#"{{"model":"{MODEL}","messages":[{{"role":"system","content":"You are terse."}},{{"role":"user","content":"question {session}"}}],"max_tokens":6,"stream":true}}"#
    );
    let mut request = Request::post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-session-id", format!("s{session}"));
    if let Some(fault) = fault {
        request = request.header("x-mock-fault", fault);
    }
    let request = request.body(Full::new(Bytes::from(body))).expect("request");
    support::read(support::send(request).await).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_answers_every_dashboard_query() {
    let Some(binary) = prometheus_binary() else {
        return;
    };
    let mut replicas = Vec::new();
    for i in 0..4 {
        let mut config = MockConfig::local(MockFramework::Vllm);
        config.model = MODEL.into();
        config.replica_id = i;
        replicas.push(MockServer::spawn(config).await.expect("mock"));
    }
    let pool = |name: &str, servers: &[MockServer]| {
        let backends: Vec<String> = servers
            .iter()
            .enumerate()
            .map(|(i, s)| format!(r#"{{ name = "{name}-{i}", url = "{}" }}"#, s.url()))
            .collect();
        format!(
            "[pools.{name}]\nframework = \"vllm\"\nscrape_interval = \"1s\"\nbackends = [{}]\n",
            backends.join(", ")
        )
    };
    let config = config_from(&format!(
        "{}{}[experiments.ab]\nsticky_header = \"x-session-id\"\narms = [{{ name = \"a\", pool = \"a\", weight = 50 }}, {{ name = \"b\", pool = \"b\", weight = 50 }}]\n[[routes]]\nmodel = \"{MODEL}\"\nexperiment = \"ab\"\n",
        pool("a", &replicas[..2]),
        pool("b", &replicas[2..]),
    ));
    let gw = TestGateway::start(config).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let _prometheus = start_prometheus(
        &binary,
        dir.path(),
        &gw.running.admin_addr.to_string(),
        port,
    );

    // Traffic until Prometheus has seen it change over several scrapes: the rates need two
    // samples that differ inside their window.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut sent = 0usize;
    loop {
        for _ in 0..8 {
            assert_eq!(chat(&gw, sent % 16, None).await, StatusCode::OK);
            sent += 1;
        }
        // A backend error (retried on the other replica, then passed through) and a refusal.
        let _ = chat(&gw, sent, Some("status=503")).await;
        let (status, _, _) = support::post(&gw.url("/v1/chat/completions"), "{not json").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let ready = query(
            port,
            "sum(increase(servelens_requests_total[1m])) > 20 and on() sum(increase(servelens_retries_total[1m])) > 0",
        )
        .await;
        if !ready.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Prometheus never saw the traffic (sent {sent})"
        );
    }

    let dash = dashboard();
    let queries = dashboard_queries(&dash);
    assert!(queries.len() >= 20, "the dashboard has its panels");
    let mut empty = Vec::new();
    for (title, promql) in &queries {
        let result = query(port, promql).await;
        if result.is_empty() {
            empty.push(format!("{title}: {promql}"));
            continue;
        }
        if promql.starts_with("histogram_quantile") {
            let numbers = result
                .iter()
                .filter_map(|s| s["value"][1].as_str())
                .filter_map(|v| v.parse::<f64>().ok())
                .filter(|v| v.is_finite())
                .count();
            assert!(numbers > 0, "{title}: no finite quantile in {result:?}");
        }
    }
    assert!(
        empty.is_empty(),
        "queries with no data:\n{}",
        empty.join("\n")
    );

    // Both arms are in the data, as the dashboard's `arm` variable lists them.
    let arms = query(port, "count by (arm) (servelens_requests_total)").await;
    let mut arms: Vec<&str> = arms
        .iter()
        .filter_map(|s| s["metric"]["arm"].as_str())
        .collect();
    arms.sort_unstable();
    assert_eq!(arms, ["a", "b"]);

    // What Prometheus stored is what the gateway serves.
    let (_, _, page) = get(&format!("{}/metrics", gw.running.admin_url())).await;
    assert!(String::from_utf8_lossy(&page).contains("servelens_requests_total"));
}
