//! Proven against real engines: a real vLLM (and llama.cpp) behind the gateway.
//!
//! Runs when `SERVELENS_VLLM_URLS` (comma-separated base URLs) and/or `SERVELENS_LLAMACPP_URL`
//! are set, e.g. with the engines started by `scripts/realbackends/start_real_backend.sh`
//! (vLLM with `VLLM_EXTRA_ARGS=--enable-prompt-tokens-details`). Without them each test prints
//! `SKIPPED` and passes; CI sets them (and `SERVELENS_REQUIRE_ENGINES=1`, which turns a missing
//! engine into a failure).
//!
//! The engines serve a tiny random-weight model on CPU: the text is gibberish, so requests
//! always bound `max_tokens`, use `temperature: 0` and a fixed `seed`.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use http_body_util::BodyExt;
use servelens::config::{BackendSpec, Framework, GatewayConfig, Policy, PoolConfig, RouteConfig};
use servelens::telemetry::Outcome;
use support::{metric, TestGateway};
use tokio::time::Instant;

/// The engines share state (queues, caches, counters) across tests; one test at a time.
static ENGINES: std::sync::LazyLock<tokio::sync::Mutex<()>> =
    std::sync::LazyLock::new(|| tokio::sync::Mutex::new(()));

fn urls(var: &str) -> Option<Vec<String>> {
    let value = std::env::var(var).ok().filter(|v| !v.trim().is_empty());
    match value {
        Some(v) => Some(
            v.split(',')
                .map(|u| u.trim().trim_end_matches('/').to_string())
                .collect(),
        ),
        None => {
            // vLLM is required in CI; llama.cpp only runs where its build is cached.
            assert!(
                var == "SERVELENS_LLAMACPP_URL"
                    || std::env::var_os("SERVELENS_REQUIRE_ENGINES").is_none(),
                "{var} is not set but SERVELENS_REQUIRE_ENGINES is"
            );
            eprintln!("SKIPPED: {var} is not set (start a real engine with scripts/realbackends/start_real_backend.sh)");
            None
        }
    }
}

/// The served model name of an engine.
async fn served_model(base: &str) -> String {
    let (_, _, body) = support::get(&format!("{base}/v1/models")).await;
    let v: serde_json::Value = serde_json::from_slice(&body).expect("models JSON");
    v["data"][0]["id"].as_str().expect("a model").to_string()
}

/// A gateway in front of `urls` (one pool), scraping their metrics every `scrape`.
async fn gateway(
    urls: &[String],
    framework: Framework,
    policy: Policy,
    scrape: Duration,
) -> TestGateway {
    TestGateway::start(gateway_config(urls, framework, policy, scrape)).await
}

fn gateway_config(
    urls: &[String],
    framework: Framework,
    policy: Policy,
    scrape: Duration,
) -> GatewayConfig {
    let backends = urls
        .iter()
        .enumerate()
        .map(|(i, u)| BackendSpec::Named {
            name: format!("engine-{i}"),
            url: u.clone(),
        })
        .collect();
    let mut pool = PoolConfig::new(framework, backends);
    pool.policy = policy;
    pool.scrape_interval = Some(scrape);
    let mut config = GatewayConfig::default();
    config.pools.insert("real".into(), pool);
    config.routes.push(RouteConfig::to_pool("*", "real"));
    config.server.listen = ([127, 0, 0, 1], 0).into();
    config.server.admin = ([127, 0, 0, 1], 0).into();
    config
}

/// The text with the values of `"id"`, `"created"` (and llama.cpp's `"timings"`) blanked: they
/// differ between any two requests.
fn normalized(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    let next = |s: &str| {
        [
            s.find(r#""id":"#),
            s.find(r#""created":"#),
            s.find(r#""timings":"#),
        ]
        .into_iter()
        .flatten()
        .min()
    };
    while let Some(i) = next(rest) {
        let colon = i + rest[i..].find(':').unwrap_or(0) + 1;
        out.push_str(&rest[..colon]);
        let value = &rest[colon..];
        let end = if value.starts_with('{') {
            value.find('}').map_or(value.len(), |k| k + 1)
        } else {
            value.find([',', '}']).unwrap_or(value.len())
        };
        out.push('_');
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

async fn post_raw(url: &str, body: &str) -> (u16, String) {
    let (status, _, bytes) = support::post(url, body.to_string()).await;
    (
        status.as_u16(),
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

/// Content-bearing events of a stream (the TTFT/ITL events).
fn content_events(stream: &str) -> usize {
    stream
        .split_terminator("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|p| *p != "[DONE]")
        .filter_map(|p| serde_json::from_str::<serde_json::Value>(p).ok())
        .filter(|v| {
            let c = &v["choices"][0];
            ["content", "reasoning", "reasoning_content"]
                .iter()
                .any(|k| c["delta"][k].as_str().is_some_and(|s| !s.is_empty()))
                || c["text"].as_str().is_some_and(|s| !s.is_empty())
        })
        .count()
}

fn usage_of(text: &str) -> Option<serde_json::Value> {
    text.split_terminator("\n\n")
        .map(|e| e.trim_start_matches("data: "))
        .chain(std::iter::once(text))
        .filter_map(|p| serde_json::from_str::<serde_json::Value>(p).ok())
        .filter_map(|v| v.get("usage").filter(|u| !u.is_null()).cloned())
        .last()
}

/// A TCP relay in front of an engine that keeps every byte the engine sends back, so a test
/// can compare what the client got with what the engine really sent on that connection.
struct Recorder {
    url: String,
    received: Arc<Mutex<Vec<u8>>>,
}

impl Recorder {
    async fn start(engine: &str) -> Self {
        let target = engine.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&target).await else {
                    continue;
                };
                let sink = sink.clone();
                tokio::spawn(async move {
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let upstream = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                    });
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = server_read.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        sink.lock().expect("lock").extend_from_slice(&buf[..n]);
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    upstream.abort();
                });
            }
        });
        Self { url, received }
    }

    /// Forgets what was received so far.
    fn take_body_reset(&self) {
        self.received.lock().expect("lock").clear();
    }

    /// The body of the one response received since the last reset (chunked or not).
    fn take_body(&self) -> String {
        let raw = std::mem::take(&mut *self.received.lock().expect("lock"));
        let head_end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head")
            + 4;
        let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
        let mut body = &raw[head_end..];
        if !head.contains("transfer-encoding: chunked") {
            return String::from_utf8_lossy(body).into_owned();
        }
        let mut out = Vec::new();
        loop {
            let line_end = body
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("chunk size");
            let size = usize::from_str_radix(String::from_utf8_lossy(&body[..line_end]).trim(), 16)
                .expect("hex size");
            if size == 0 {
                break;
            }
            out.extend_from_slice(&body[line_end + 2..line_end + 2 + size]);
            body = &body[line_end + 2 + size + 2..];
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// What a client that did not ask for usage must get from what vLLM sent to the gateway (which
/// asked): the usage-only event removed and its `system_fingerprint` moved back onto the finish
/// chunk. Written independently of the gateway's withholding code.
fn as_without_usage(engine: &str) -> String {
    let events: Vec<&str> = engine.split_terminator("\n\n").collect();
    let fingerprint = events
        .iter()
        .find(|e| e.contains(r#""choices":[]"#))
        .and_then(|e| {
            e.find(r#","system_fingerprint":"#)
                .map(|i| e[i..e.len() - 1].to_string())
        });
    let mut out = String::new();
    for event in events {
        if event.contains(r#""choices":[]"#) && event.contains(r#""usage""#) {
            continue;
        }
        if event.contains(r#""finish_reason":""#) && !event.contains("system_fingerprint") {
            if let Some(fp) = &fingerprint {
                out.push_str(&event[..event.len() - 1]);
                out.push_str(fp);
                out.push_str("}\n\n");
                continue;
            }
        }
        out.push_str(event);
        out.push_str("\n\n");
    }
    out
}

/// The content text and the non-content events (with their text emptied) of a stream: what two
/// runs of one deterministic request share even when vLLM merged tokens into events differently,
/// including into the finish chunk.
fn text_and_shape(stream: &str) -> (String, Vec<String>) {
    let mut text = String::new();
    let mut others = Vec::new();
    for payload in stream
        .split_terminator("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
    {
        match serde_json::from_str::<serde_json::Value>(payload) {
            Ok(mut v) => {
                let finishing = v
                    .pointer("/choices/0/finish_reason")
                    .is_some_and(|f| !f.is_null());
                let slot = ["/choices/0/delta/content", "/choices/0/text"]
                    .iter()
                    .find(|p| v.pointer(p).is_some_and(|t| t.is_string()))
                    .and_then(|p| v.pointer_mut(p));
                if let Some(slot) = slot {
                    // The text joins the rest, whichever event vLLM put it in.
                    text.push_str(slot.as_str().unwrap_or_default());
                    *slot = serde_json::Value::String(String::new());
                    if !finishing {
                        continue;
                    }
                }
                others.push(normalized(&v.to_string()));
            }
            Err(_) => others.push(payload.to_string()),
        }
    }
    (text, others)
}

#[test]
fn text_and_shape_ignores_where_vllm_merged_tokens() {
    let event = |text: &str, finish: &str| {
        format!(
            r#"data: {{"id":"x","object":"text_completion","created":1,"model":"tiny","choices":[{{"index":0,"text":"{text}","finish_reason":{finish}}}]}}"#
        ) + "\n\n"
    };
    let usage = "data: {\"choices\":[],\"usage\":{\"completion_tokens\":3}}\n\ndata: [DONE]\n\n";
    let a = event(" a", "null") + &event(" wh", "null") + &event("et", r#""length""#) + usage;
    let b = event(" a", "null") + &event(" whet", r#""length""#) + usage;
    assert_eq!(text_and_shape(&a), text_and_shape(&b));
    assert_eq!(text_and_shape(&a).0, " a whet");
    let other = event(" a", "null") + &event(" what", r#""length""#) + usage;
    assert_ne!(text_and_shape(&a), text_and_shape(&other), "different text");
    let stopped = event(" a", "null") + &event(" whet", r#""stop""#) + usage;
    assert_ne!(
        text_and_shape(&a),
        text_and_shape(&stopped),
        "different finish"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_bytes_tokens_and_timings_through_the_gateway() {
    let Some(urls) = urls("SERVELENS_VLLM_URLS") else {
        return;
    };
    let _engines = ENGINES.lock().await;
    let engine = &urls[0];
    let model = served_model(engine).await;
    let recorder = Recorder::start(engine).await;
    let mut config = gateway_config(
        std::slice::from_ref(&recorder.url),
        Framework::Vllm,
        Policy::PrefixHash,
        Duration::ZERO,
    );
    config
        .pools
        .values_mut()
        .for_each(|p| p.health.enabled = false);
    let mut gw = TestGateway::start(config).await;
    let chat = format!(
        r#""model":"{model}","messages":[{{"role":"user","content":"Tell me a story about a cache."}}],"max_tokens":24,"temperature":0,"seed":7"#
    );
    let completion = format!(
        r#""model":"{model}","prompt":"Once upon a time","max_tokens":24,"temperature":0,"seed":7"#
    );
    let mut cases = Vec::new();
    for (path, fields) in [
        ("/v1/chat/completions", &chat),
        ("/v1/completions", &completion),
    ] {
        cases.push((path, format!("{{{fields}}}"), false));
        cases.push((path, format!(r#"{{{fields},"stream":true}}"#), true));
        cases.push((
            path,
            format!(r#"{{{fields},"stream":true,"stream_options":{{"include_usage":true}}}}"#),
            false,
        ));
    }
    for (path, body, injected) in cases {
        recorder.take_body_reset();
        let (status, through) = post_raw(&gw.url(path), &body).await;
        assert_eq!(status, 200, "{path} {body}: {through}");
        let record = gw.record().await;
        let sent = recorder.take_body();

        // 1. Exactly the engine's bytes on that very connection (minus, when the gateway asked
        //    for usage on the client's behalf, the usage event, with vLLM's fingerprint placement).
        let expected = if injected {
            as_without_usage(&sent)
        } else {
            sent.clone()
        };
        assert_eq!(through, expected, "{path} {body}");
        assert_eq!(record.usage_injected, injected);

        // 2. The same as a direct request, ignoring id and created (and, since vLLM may merge
        //    tokens into one event differently from one run to the next, their framing).
        let (direct_status, direct) = post_raw(&format!("{engine}{path}"), &body).await;
        assert_eq!(direct_status, 200);
        if normalized(&direct) != normalized(&through) {
            assert_eq!(
                text_and_shape(&through),
                text_and_shape(&direct),
                "{path} {body}"
            );
        }

        // 3. Tokens from the engine's usage, TTFT within E2E, one ITL per content event after the first.
        let m = &record.measurements;
        assert_eq!(record.outcome, Outcome::Completed);
        let usage =
            usage_of(&sent).expect("the engine sent usage (asked by the client or the gateway)");
        assert_eq!(
            m.output_tokens,
            usage["completion_tokens"].as_u64(),
            "{path} {body}"
        );
        assert_eq!(
            m.prompt_tokens,
            usage["prompt_tokens"].as_u64(),
            "{path} {body}"
        );
        assert!(!m.output_tokens_estimated);
        if record.labels.stream {
            let ttft = m.ttft.expect("a first token");
            assert!(ttft <= m.e2e, "TTFT {ttft:?} <= E2E {:?}", m.e2e);
            assert_eq!(m.itl.len(), content_events(&through) - 1, "{path} {body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_errors_pass_through_with_the_engines_status_and_body() {
    let Some(urls) = urls("SERVELENS_VLLM_URLS") else {
        return;
    };
    let _engines = ENGINES.lock().await;
    let engine = &urls[0];
    let model = served_model(engine).await;
    let gw = gateway(
        &urls[..1],
        Framework::Vllm,
        Policy::PrefixHash,
        Duration::from_secs(5),
    )
    .await;
    for body in [
        r#"{"model":"no-such-model","messages":[{"role":"user","content":"hi"}],"max_tokens":4}"#
            .to_string(),
        format!(
            r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"max_tokens":50000,"stream":true}}"#
        ),
    ] {
        let (direct_status, direct) =
            post_raw(&format!("{engine}/v1/chat/completions"), &body).await;
        let (status, through) = post_raw(&gw.url("/v1/chat/completions"), &body).await;
        assert!(
            direct_status == 400 || direct_status == 404,
            "{direct_status} {direct}"
        );
        assert_eq!((status, through), (direct_status, direct));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_sees_a_client_disconnect_as_an_abort() {
    let Some(urls) = urls("SERVELENS_VLLM_URLS") else {
        return;
    };
    let _engines = ENGINES.lock().await;
    let engine = &urls[0];
    let model = served_model(engine).await;
    let mut gw = gateway(
        &urls[..1],
        Framework::Vllm,
        Policy::PrefixHash,
        Duration::from_secs(5),
    )
    .await;
    let own = || async {
        String::from_utf8_lossy(&support::get(&format!("{engine}/metrics")).await.2).into_owned()
    };
    let finished = |page: &str| metric(page, "vllm:request_success_total", &[]);
    let generated = |page: &str| metric(page, "vllm:generation_tokens_total", &[]);
    let before = own().await;
    let body = format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"Go on forever."}}],"max_tokens":900,"ignore_eos":true,"stream":true}}"#
    );
    let response = support::post_stream(&gw.url("/v1/chat/completions"), body).await;
    let mut stream = response.into_body();
    let mut events = 0;
    while events < 3 {
        let frame = stream.frame().await.expect("frame").expect("data");
        events += frame
            .into_data()
            .map(|d| d.windows(2).filter(|w| w == b"\n\n").count())
            .unwrap_or(0);
    }
    let running = metric(&own().await, "vllm:num_requests_running", &[]);
    assert_eq!(running, 1.0, "the request is running in vLLM");
    drop(stream);
    let dropped = Instant::now();
    let record = gw.record().await;
    assert_eq!(record.outcome, Outcome::ClientCancelled);
    // vLLM aborts the request: its running gauge returns to 0 well before the 900 tokens could
    // have been generated, and it is not counted as finished (vLLM 0.32 counts client aborts in
    // no finished_reason).
    loop {
        let page = own().await;
        if metric(&page, "vllm:num_requests_running", &[]) == 0.0 {
            assert!(
                generated(&page) - generated(&before) < 900.0,
                "generation stopped early"
            );
            assert_eq!(
                finished(&page),
                finished(&before),
                "an aborted request is not a finished one"
            );
            break;
        }
        assert!(
            dropped.elapsed() < Duration::from_secs(10),
            "vLLM still runs the request 10 s after the disconnect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "vLLM stopped the request {:?} after the client disconnected",
        dropped.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraped_gauges_match_the_engines_own_metrics() {
    let Some(urls) = urls("SERVELENS_VLLM_URLS") else {
        return;
    };
    let _engines = ENGINES.lock().await;
    let engine = &urls[0];
    let model = served_model(engine).await;
    let gw = gateway(
        &urls[..1],
        Framework::Vllm,
        Policy::PrefixHash,
        Duration::from_secs(1),
    )
    .await;
    let own = || async {
        String::from_utf8_lossy(&support::get(&format!("{engine}/metrics")).await.2).into_owned()
    };
    let backend = [("backend", "engine-0")];

    // A warm prefix, then only identical requests: every scrape interval that sees any of them
    // sees the same hit ratio, which is the engine's Δhits/Δqueries over them.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let system =
        format!("{nonce} You answer in one short sentence, precisely and politely. ").repeat(12);
    let body = format!(
        r#"{{"model":"{model}","messages":[{{"role":"system","content":"{system}"}},{{"role":"user","content":"Why?"}}],"max_tokens":2,"temperature":0}}"#
    );
    post_raw(&gw.url("/v1/chat/completions"), &body).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = own().await;
    let until = Instant::now() + Duration::from_millis(3500);
    while Instant::now() < until {
        post_raw(&gw.url("/v1/chat/completions"), &body).await;
    }
    let after = own().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let delta = |name: &str| metric(&after, name, &[]) - metric(&before, name, &[]);
    let expected = delta("vllm:prefix_cache_hits_total") / delta("vllm:prefix_cache_queries_total");
    let page = gw.metrics().await;
    let ratio = metric(&page, "servelens_backend_prefix_cache_hit_ratio", &backend);
    assert!(expected > 0.5, "the repeated prompt hits ({expected})");
    assert!(
        (ratio - expected).abs() < 1e-9,
        "gateway {ratio} vs engine {expected}"
    );

    // Idle now: queue and KV usage agree with the engine's own.
    let idle = own().await;
    assert_eq!(
        metric(&page, "servelens_backend_queue_length", &backend),
        metric(&idle, "vllm:num_requests_waiting", &[])
    );
    assert_eq!(
        metric(&page, "servelens_backend_kv_cache_usage_ratio", &backend),
        metric(&idle, "vllm:kv_cache_usage_perc", &[])
    );
}

/// 16 long shared system prompts × 4 questions at concurrency 4 on two replicas: prefix_hash
/// reaches ≥ 0.95× the hit ratio of the oracle assignment (prompt k → replica k mod 2) with
/// requests split within 1.2× of even, and the gateway's cached-token count agrees with vLLM's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_affinity_on_two_real_vllm_replicas() {
    let Some(urls) = urls("SERVELENS_VLLM_URLS") else {
        return;
    };
    let _engines = ENGINES.lock().await;
    if urls.len() < 2 {
        assert!(
            std::env::var_os("SERVELENS_REQUIRE_TWO_ENGINES").is_none(),
            "two vLLM replicas required"
        );
        eprintln!("SKIPPED: prefix affinity needs two vLLM URLs in SERVELENS_VLLM_URLS");
        return;
    }
    let urls = &urls[..2];
    let model = served_model(&urls[0]).await;
    let oracle = affinity_run(urls, &model, None).await;
    let prefix = affinity_run(urls, &model, Some(Policy::PrefixHash)).await;
    let round_robin = affinity_run(urls, &model, Some(Policy::RoundRobin)).await;
    println!(
        "{:<14} {:>9} {:>12} {:>13}",
        "router", "hit ratio", "requests", "cached (gw/vLLM)"
    );
    for (name, run) in [
        ("oracle", &oracle),
        ("prefix_hash", &prefix),
        ("round_robin", &round_robin),
    ] {
        println!(
            "{name:<14} {:>9.3} {:>12?} {:>6}/{:<6}",
            run.hit_ratio, run.requests, run.gateway_cached, run.engine_hits
        );
    }
    assert!(
        prefix.hit_ratio >= 0.95 * oracle.hit_ratio,
        "prefix_hash {:.3} vs oracle {:.3}",
        prefix.hit_ratio,
        oracle.hit_ratio
    );
    let (max, mean) = (*prefix.requests.iter().max().unwrap_or(&0) as f64, 32.0);
    assert!(
        max / mean <= 1.2,
        "requests per replica {:?}",
        prefix.requests
    );
    assert_eq!(
        prefix.gateway_cached, prefix.engine_hits,
        "servelens_prompt_cached_tokens_total vs vllm:prefix_cache_hits_total"
    );
}

struct AffinityRun {
    hit_ratio: f64,
    requests: Vec<u64>,
    gateway_cached: u64,
    engine_hits: u64,
}

/// One run of the shared-prefix workload, direct by oracle (`None`) or through the gateway.
async fn affinity_run(urls: &[String], model: &str, policy: Option<Policy>) -> AffinityRun {
    let counters = |page: &str| {
        (
            metric(page, "vllm:prefix_cache_hits_total", &[]),
            metric(page, "vllm:prefix_cache_queries_total", &[]),
        )
    };
    let snapshot = || async {
        let mut totals = (0.0, 0.0);
        for u in urls {
            let (h, q) = counters(&String::from_utf8_lossy(
                &support::get(&format!("{u}/metrics")).await.2,
            ));
            totals = (totals.0 + h, totals.1 + q);
        }
        totals
    };
    let gw = match policy {
        Some(policy) => Some(gateway(urls, Framework::Vllm, policy, Duration::from_secs(5)).await),
        None => None,
    };
    // Fresh prompts every run, so no run finds another's prefixes cached.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let system = |k: usize| {
        format!("[{nonce}-{k}] You are assistant number {k}; follow policy {k} strictly and answer briefly. ").repeat(14)
    };
    let questions = [
        "What is a cache?",
        "Why route by prefix?",
        "Name a colour.",
        "Count to three.",
    ];
    let mut jobs: Vec<(usize, usize)> = (0..16).flat_map(|k| (0..4).map(move |q| (k, q))).collect();
    // A deterministic shuffle: prompts interleave as they would from many users.
    let mut state = 0x5eed_u64;
    for i in (1..jobs.len()).rev() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        jobs.swap(i, (state >> 33) as usize % (i + 1));
    }
    let before = snapshot().await;
    let gw_before = match &gw {
        Some(g) => metric(
            &g.metrics().await,
            "servelens_prompt_cached_tokens_total",
            &[],
        ),
        None => 0.0,
    };
    let queue = std::sync::Arc::new(std::sync::Mutex::new(jobs));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let queue = queue.clone();
        let base = gw.as_ref().map(|g| g.url(""));
        let urls = urls.to_vec();
        let model = model.to_string();
        let systems: Vec<String> = (0..16).map(system).collect();
        workers.push(tokio::spawn(async move {
            let mut served = Vec::new();
            loop {
                let job = queue.lock().expect("lock").pop();
                let Some((k, q)) = job else { break };
                let body = serde_json::json!({
                    "model": model, "max_tokens": 4, "temperature": 0, "stream": true,
                    "messages": [{"role": "system", "content": systems[k]}, {"role": "user", "content": questions[q]}],
                })
                .to_string();
                let target = base.clone().unwrap_or_else(|| urls[k % 2].clone());
                let (status, text) = post_raw(&format!("{target}/v1/chat/completions"), &body).await;
                assert_eq!(status, 200, "{text}");
                served.push(k);
            }
            served
        }));
    }
    for worker in workers {
        worker.await.expect("worker");
    }
    let after = snapshot().await;
    let (requests, gateway_cached) = match &gw {
        Some(g) => {
            let page = g.metrics().await;
            let per_backend: Vec<u64> = (0..2)
                .map(|i| {
                    metric(
                        &page,
                        "servelens_requests_total",
                        &[("backend", &format!("engine-{i}"))],
                    ) as u64
                })
                .collect();
            (
                per_backend,
                (metric(&page, "servelens_prompt_cached_tokens_total", &[]) - gw_before) as u64,
            )
        }
        None => (vec![32, 32], 0),
    };
    AffinityRun {
        hit_ratio: (after.0 - before.0) / (after.1 - before.1),
        requests,
        gateway_cached,
        engine_hits: (after.0 - before.0) as u64,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llamacpp_streams_through_the_gateway() {
    let Some(urls) = urls("SERVELENS_LLAMACPP_URL") else {
        return;
    };
    let _engines = ENGINES.lock().await;
    let engine = &urls[0];
    let mut gw = gateway(
        &urls[..1],
        Framework::Llamacpp,
        Policy::PrefixHash,
        Duration::from_secs(5),
    )
    .await;
    let mut counts = HashMap::new();
    for include_usage in [false, true] {
        let options = if include_usage {
            r#","stream_options":{"include_usage":true}"#
        } else {
            ""
        };
        let body = format!(
            r#"{{"model":"tiny","messages":[{{"role":"user","content":"hello"}}],"max_tokens":12,"temperature":0,"seed":1,"stream":true{options}}}"#
        );
        let (_, direct) = post_raw(&format!("{engine}/v1/chat/completions"), &body).await;
        let (status, through) = post_raw(&gw.url("/v1/chat/completions"), &body).await;
        assert_eq!(status, 200);
        assert_eq!(
            normalized(&through),
            normalized(&direct),
            "include_usage {include_usage}"
        );
        let record = gw.record().await;
        assert_eq!(record.outcome, Outcome::Completed);
        // Never asked for usage (that would move `timings`), yet counted exactly from `timings`.
        assert!(!record.usage_injected, "llama.cpp is never asked for usage");
        assert!(
            !record.measurements.output_tokens_estimated,
            "include_usage {include_usage}: counts come from the engine, not estimated"
        );
        counts.insert(
            include_usage,
            (
                record.measurements.prompt_tokens,
                record.measurements.output_tokens,
            ),
        );
        if include_usage {
            let usage = usage_of(&direct).expect("usage");
            assert_eq!(
                record.measurements.output_tokens,
                usage["completion_tokens"].as_u64()
            );
            assert_eq!(
                record.measurements.prompt_tokens,
                usage["prompt_tokens"].as_u64()
            );
        }
    }
    assert_eq!(
        counts[&false], counts[&true],
        "the same tokens counted with and without the client asking"
    );
}
