//! The serving edge: h2c clients, graceful shutdown with a stream in flight, and the
//! `servelens serve` binary itself (flags, a bad config refused by field name, `curl -N`).

mod support;

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use servelens::replay::{ReplayServer, Script};
use servelens::telemetry::Outcome;
use support::{config_for, post_stream, TestGateway};
use tokio::io::{AsyncBufReadExt, BufReader};

async fn replay_backend() -> ReplayServer {
    let stream = support::fixtures::read("vllm_chat_stream.sse");
    ReplayServer::spawn(move |_| {
        Script::sse(&stream, Duration::from_millis(5), Duration::from_millis(5))
    })
    .await
    .expect("backend")
}

#[tokio::test]
async fn h2c_prior_knowledge_clients_are_served() {
    let backend = replay_backend().await;
    let mut gw = TestGateway::start(config_for(&[backend.url()])).await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let request = Request::post(gw.url("/v1/chat/completions"))
        .body(Full::new(Bytes::from_static(
            br#"{"model":"m","stream":true}"#,
        )))
        .expect("request");
    let response = client.request(request).await.expect("h2 request");
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(
        body,
        Bytes::from(support::fixtures::read("vllm_chat_stream.sse"))
    );
    assert_eq!(gw.record().await.outcome, Outcome::Completed);
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_an_inflight_stream_finish() {
    let stream = support::fixtures::read("vllm_chat_stream.sse");
    let backend = ReplayServer::spawn(move |_| {
        Script::sse(&stream, Duration::from_secs(1), Duration::from_secs(1))
    })
    .await
    .expect("backend");
    let gw = TestGateway::start(config_for(&[backend.url()])).await;
    let url = gw.url("/v1/chat/completions");
    let response = post_stream(&url, r#"{"model":"m","stream":true}"#).await;
    let admin = gw.running.admin_url();
    let TestGateway {
        running,
        mut records,
    } = gw;
    let proxy_addr = running.proxy_addr;
    let shutdown = tokio::spawn(running.shutdown());
    let body = response
        .into_body()
        .collect()
        .await
        .expect("stream completes")
        .to_bytes();
    assert_eq!(
        body,
        Bytes::from(support::fixtures::read("vllm_chat_stream.sse"))
    );
    shutdown.await.expect("shutdown finished");
    let record = records.recv().await.expect("record");
    assert_eq!(record.outcome, Outcome::Completed);
    assert!(
        tokio::net::TcpStream::connect(proxy_addr).await.is_err(),
        "no new connections after shutdown"
    );
    assert!(
        tokio::net::TcpStream::connect(admin.trim_start_matches("http://"))
            .await
            .is_err()
    );
}

fn servelens() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_servelens"));
    cmd.kill_on_drop(true);
    cmd
}

#[tokio::test]
async fn a_bad_config_is_refused_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("servelens-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[pools.a]\nbackends = [\"http://127.0.0.1:1\"]\n[[routes]]\nmodel = \"m\"\npool = \"b\"\n",
    )
    .expect("write");
    let out = servelens()
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .await
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("routes[0].pool"), "{stderr}");

    let out = servelens().arg("serve").output().await.expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--upstream"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_upstream_flags_streams_to_curl() {
    let backend = replay_backend().await;
    let mut child = servelens()
        .args(["serve", "--upstream", &backend.url(), "--framework", "vllm"])
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("servelens starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut proxy = None;
    while let Some(line) = lines.next_line().await.expect("stderr readable") {
        if let Some(rest) = line.strip_prefix("servelens: proxy on ") {
            proxy = rest.split(',').next().map(str::to_string);
            break;
        }
    }
    let proxy = proxy.expect("the binary prints its proxy address");
    let has_curl = std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok();
    if !has_curl {
        assert!(
            std::env::var_os("SERVELENS_REQUIRE_TOOLS").is_none(),
            "curl is required"
        );
        eprintln!("SKIPPED curl check: curl not installed");
        return;
    }
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-N", "-H", "content-type: application/json"])
        .args(["-d", r#"{"model":"m","stream":true}"#])
        .arg(format!("{proxy}/v1/chat/completions"))
        .output()
        .await
        .expect("curl runs");
    assert!(out.status.success());
    assert_eq!(out.stdout, support::fixtures::read("vllm_chat_stream.sse"));
    child.start_kill().expect("stop");
}

/// `servelens serve --config FILE` reloads on a file change and on SIGHUP; a bad file is
/// refused and the running routes keep serving.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reloads_on_file_change_and_sighup() {
    let backend = replay_backend().await;
    let dir = std::env::temp_dir().join(format!("servelens-sighup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("gateway.toml");
    let good = |model: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[pools.p]\nbackends = [\"{}\"]\n[pools.p.health]\nenabled = false\n[[routes]]\nmodel = \"{model}\"\npool = \"p\"\n",
            backend.url()
        )
    };
    std::fs::write(&path, good("m1")).expect("write");
    let mut child = servelens()
        .args(["serve", "--config"])
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let (mut proxy, mut admin) = (String::new(), String::new());
    while let Some(line) = lines.next_line().await.expect("stderr") {
        if let Some(rest) = line.strip_prefix("servelens: proxy on ") {
            let mut parts = rest.split(", metrics on ");
            proxy = parts.next().unwrap_or_default().to_string();
            admin = parts
                .next()
                .unwrap_or_default()
                .trim_end_matches("/metrics")
                .to_string();
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let reloads = |result: &'static str| {
        let admin = admin.clone();
        async move {
            let (_, _, page) = support::get(&format!("{admin}/metrics")).await;
            support::metric(
                &String::from_utf8_lossy(&page),
                "servelens_config_reloads_total",
                &[("result", result)],
            )
        }
    };
    let chat = |model: &str| format!(r#"{{"model":"{model}","stream":true}}"#);
    assert_eq!(
        support::post(&format!("{proxy}/v1/chat/completions"), chat("m1"))
            .await
            .0,
        StatusCode::OK
    );

    // A broken file is noticed by the watcher and refused.
    std::fs::write(&path, good("m1").replace("pool = \"p\"", "pool = \"nope\"")).expect("write");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while reloads("error").await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the file watcher never reloaded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        support::post(&format!("{proxy}/v1/chat/completions"), chat("m1"))
            .await
            .0,
        StatusCode::OK
    );

    // A good file plus SIGHUP: the new route is live.
    std::fs::write(&path, good("m2")).expect("write");
    let pid = child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while reloads("ok").await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP did not reload"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        support::post(&format!("{proxy}/v1/chat/completions"), chat("m2"))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        support::post(&format!("{proxy}/v1/chat/completions"), chat("m1"))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    child.start_kill().expect("stop");
}
