//! Step *route* end to end: replicas dying and returning, retries before the first byte, A/B
//! arms on every metric, mirroring, reload under load, DNS discovery.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use servelens::config::{GatewayConfig, Policy};
use servelens::mock::{MockConfig, MockFramework, MockServer};
use servelens::telemetry::Outcome;
use support::{config_from, metric, TestGateway};

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

async fn mock(replica: u32, tune: impl FnOnce(&mut MockConfig)) -> MockServer {
    let mut config = MockConfig::local(MockFramework::Vllm);
    config.model = MODEL.into();
    config.replica_id = replica;
    tune(&mut config);
    MockServer::spawn(config).await.expect("mock")
}

fn chat(prompt: &str, extra: &str) -> String {
    format!(
        r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"{prompt}"}}],"stream":true{extra}}}"#
    )
}

fn pool_toml(name: &str, servers: &[&MockServer], extra: &str) -> String {
    let backends: Vec<String> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| format!(r#"{{ name = "{name}-{i}", url = "{}" }}"#, s.url()))
        .collect();
    format!(
        "[pools.{name}]\nframework = \"vllm\"\nbackends = [{}]\n{extra}\n",
        backends.join(", ")
    )
}

/// Reads a whole streamed response: the client-visible text.
async fn stream_text(url: &str, body: String) -> (StatusCode, String) {
    let (status, _, bytes) = support::post(url, body).await;
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test(start_paused = true)]
async fn a_replica_dies_and_returns() {
    let long = |c: &mut MockConfig| {
        c.output.min = 200;
        c.output.max = 200;
    };
    let a = mock(0, long).await;
    let b = mock(1, long).await;
    let c = mock(2, long).await;
    let dead_addr = c.addr;
    let config = config_from(&format!(
        "{}[[routes]]\nmodel = \"{MODEL}\"\npool = \"p\"\n",
        pool_toml(
            "p",
            &[&a, &b, &c],
            "policy = \"round_robin\"\n[pools.p.health]\ninterval = \"1s\"\ntimeout = \"500ms\"\nunhealthy_threshold = 2\nhealthy_threshold = 1\n[pools.p.ejection]\nconsecutive_failures = 5\nbase = \"2s\""
        )
    ));
    let mut gw = TestGateway::start(config).await;
    let url = gw.url("/v1/chat/completions");

    // Streams in progress on every replica, then replica 2 dies.
    let streaming: Vec<_> = (0..6)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(
                async move { stream_text(&url, chat(&format!("first wave {i}"), "")).await },
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        c.engine.running(),
        2,
        "two of six streams on the replica that dies"
    );
    c.shutdown().await;

    // Requests sent now that land on the dead replica are retried elsewhere and succeed.
    for i in 0..9 {
        let (status, text) = stream_text(
            &url,
            chat(&format!("second wave {i}"), r#","max_tokens":3"#),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert!(!text.contains("error"), "{text}");
    }
    let page = gw.metrics().await;
    assert!(metric(&page, "servelens_retries_total", &[("pool", "p")]) >= 1.0);

    // The streams that were on it end with an error event; the others complete.
    let mut cut = 0;
    for task in streaming {
        let (status, text) = task.await.expect("request");
        assert_eq!(status, StatusCode::OK);
        assert!(
            text.ends_with("data: [DONE]\n\n"),
            "every stream ends cleanly"
        );
        if text.contains(r#""type":"upstream_error""#) {
            cut += 1;
        }
    }
    assert_eq!(
        cut, 2,
        "the two streams on the dead replica got an error event"
    );
    let mut outcomes = HashMap::new();
    for _ in 0..15 {
        *outcomes.entry(gw.record().await.outcome).or_insert(0) += 1;
    }
    assert_eq!(outcomes[&Outcome::UpstreamError], 2);
    assert_eq!(outcomes[&Outcome::Completed], 13);

    // Probes fail twice: the replica is out.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let page = gw.metrics().await;
    assert_eq!(
        metric(&page, "servelens_backend_up", &[("backend", "p-2")]),
        0.0
    );
    assert_eq!(
        metric(&page, "servelens_backend_up", &[("backend", "p-0")]),
        1.0
    );

    // It comes back on the same address: one good probe readmits it and it gets traffic.
    let mut config = MockConfig::local(MockFramework::Vllm);
    config.model = MODEL.into();
    config.replica_id = 2;
    config.listen = dead_addr;
    let c = MockServer::spawn(config).await.expect("restarted");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let page = gw.metrics().await;
    assert_eq!(
        metric(&page, "servelens_backend_up", &[("backend", "p-2")]),
        1.0
    );
    for i in 0..6 {
        let (status, _) =
            stream_text(&url, chat(&format!("third wave {i}"), r#","max_tokens":3"#)).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert!(
        c.engine.stats().requests >= 1,
        "the returned replica serves again"
    );
}

#[tokio::test(start_paused = true)]
async fn errors_before_the_first_byte_are_retried_on_another_replica() {
    let failing = mock(0, |c| c.faults.status = Some(503)).await;
    let healthy = mock(1, |c| {
        c.output.min = 5;
        c.output.max = 5;
    })
    .await;
    let config = config_from(&format!(
        "{}[[routes]]\nmodel = \"{MODEL}\"\npool = \"p\"\n",
        pool_toml(
            "p",
            &[&failing, &healthy],
            "policy = \"round_robin\"\n[pools.p.health]\nenabled = false"
        )
    ));
    let mut gw = TestGateway::start(config).await;
    for i in 0..10 {
        let (status, text) =
            stream_text(&gw.url("/v1/chat/completions"), chat(&format!("q{i}"), "")).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let record = gw.record().await;
        assert_eq!(record.outcome, Outcome::Completed);
        assert_eq!(&*record.labels.backend, "p-1");
    }
    let page = gw.metrics().await;
    let retries = metric(&page, "servelens_retries_total", &[("pool", "p")]);
    assert!(retries >= 1.0, "retries {retries}");
    assert_eq!(healthy.engine.stats().requests, 10);
    assert!(
        metric(
            &page,
            "servelens_backend_ejections_total",
            &[("backend", "p-0")]
        ) >= 1.0
    );
}

#[tokio::test(start_paused = true)]
async fn ab_arms_label_every_metric_and_follow_the_split() {
    let vllm = mock(0, |c| {
        c.output.min = 4;
        c.output.max = 4;
    })
    .await;
    let mut sglang_config = MockConfig::local(MockFramework::Sglang);
    sglang_config.output.min = 4;
    sglang_config.output.max = 4;
    let sglang = MockServer::spawn(sglang_config).await.expect("mock");
    let config = config_from(&format!(
        r#"{}{}
        [experiments.frameworks]
        sticky_header = "x-session-id"
        arms = [{{ name = "vllm", pool = "v", weight = 70 }}, {{ name = "sglang", pool = "s", weight = 30 }}]
        [[routes]]
        model = "{MODEL}"
        experiment = "frameworks"
        "#,
        pool_toml("v", &[&vllm], "[pools.v.health]\nenabled = false"),
        pool_toml(
            "s",
            &[&sglang],
            "framework = \"sglang\"\n[pools.s.health]\nenabled = false"
        )
        .replace("framework = \"vllm\"\n", ""),
    ));
    let mut gw = TestGateway::start(config).await;
    let mut by_arm: HashMap<String, usize> = HashMap::new();
    let mut session_arm: HashMap<usize, String> = HashMap::new();
    for i in 0..400 {
        let session = i % 200;
        let request = Request::post(gw.url("/v1/chat/completions"))
            .header("x-session-id", format!("session-{session}"))
            .body(Full::new(Bytes::from(chat(&format!("q{i}"), ""))))
            .expect("request");
        let (status, _, _) = support::read(support::send(request).await).await;
        assert_eq!(status, StatusCode::OK);
        let record = gw.record().await;
        let arm = record.labels.arm.to_string();
        if let Some(previous) = session_arm.insert(session, arm.clone()) {
            assert_eq!(previous, arm, "a session keeps its arm");
        }
        *by_arm.entry(arm).or_default() += 1;
    }
    let page = gw.metrics().await;
    for arm in ["vllm", "sglang"] {
        let count = by_arm[arm] as f64;
        let labels = [("arm", arm), ("route", MODEL)];
        assert_eq!(
            metric(
                &page,
                "servelens_time_to_first_token_seconds_count",
                &labels
            ),
            count,
            "{arm}"
        );
        assert_eq!(metric(&page, "servelens_requests_total", &labels), count);
        assert_eq!(
            metric(
                &page,
                "servelens_experiment_assignments_total",
                &[("experiment", "frameworks"), ("arm", arm)]
            ),
            count
        );
    }
    let share = by_arm["vllm"] as f64 / 400.0;
    assert!(
        (0.62..=0.78).contains(&share),
        "vllm share {share} of 200 sessions"
    );
    assert!(
        metric(
            &page,
            "servelens_requests_total",
            &[("arm", "sglang"), ("pool", "s")]
        ) > 0.0
    );
}

#[tokio::test(start_paused = true)]
async fn mirrored_requests_are_timed_and_never_reach_or_slow_the_client() {
    let primary = mock(0, |c| {
        c.output.min = 5;
        c.output.max = 5;
    })
    .await;
    let shadow = mock(1, |c| {
        c.output.min = 5;
        c.output.max = 5;
        c.faults.slow_first_byte = Some(Duration::from_secs(30));
    })
    .await;
    let config = config_from(&format!(
        "{}{}[[routes]]\nmodel = \"{MODEL}\"\npool = \"main\"\nmirror = {{ pool = \"shadow\", fraction = 1.0 }}\n",
        pool_toml("main", &[&primary], "[pools.main.health]\nenabled = false"),
        pool_toml("shadow", &[&shadow], "[pools.shadow.health]\nenabled = false"),
    ));
    let mut gw = TestGateway::start(config).await;
    let started = tokio::time::Instant::now();
    let (status, text) = stream_text(&gw.url("/v1/chat/completions"), chat("hello", "")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the client is not held up by the 30 s shadow"
    );
    assert!(!text.contains("x-mock"), "{text}");
    let first = gw.record().await;
    assert!(!first.mirrored);
    assert_eq!(&*first.labels.pool, "main");
    let second = gw.record().await;
    assert!(second.mirrored, "the shadow is recorded too");
    assert_eq!(&*second.labels.pool, "shadow");
    assert_eq!(second.outcome, Outcome::Completed);
    assert!(second
        .measurements
        .ttft
        .is_some_and(|t| t >= Duration::from_secs(30)));
    assert_eq!(second.measurements.output_tokens, Some(5));
    assert_eq!(shadow.engine.stats().requests, 1);
}

#[tokio::test(start_paused = true)]
async fn reloading_every_second_under_load_fails_nothing() {
    let replicas = [mock(0, |_| {}).await, mock(1, |_| {}).await];
    let toml = |weight: u32| {
        format!(
            r#"{}{}
            [experiments.ab]
            arms = [{{ name = "left", pool = "l", weight = {weight} }}, {{ name = "right", pool = "r", weight = {} }}]
            [[routes]]
            model = "{MODEL}"
            experiment = "ab"
            "#,
            pool_toml("l", &[&replicas[0]], "[pools.l.health]\nenabled = false"),
            pool_toml("r", &[&replicas[1]], "[pools.r.health]\nenabled = false"),
            100 - weight
        )
    };
    let mut gw = TestGateway::start(config_from(&toml(50))).await;
    let url = gw.url("/v1/chat/completions");
    let failed = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let stop_at = tokio::time::Instant::now() + Duration::from_secs(10);
    let clients: Vec<_> = (0..32)
        .map(|client| {
            let (url, failed, done) = (url.clone(), failed.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while tokio::time::Instant::now() < stop_at {
                    let (status, text) = stream_text(
                        &url,
                        chat(&format!("c{client} r{i}"), r#","max_tokens":20"#),
                    )
                    .await;
                    if status != StatusCode::OK
                        || !text.ends_with("data: [DONE]\n\n")
                        || text.contains("\"error\"")
                    {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                }
            })
        })
        .collect();
    for second in 1..=10u32 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let config: GatewayConfig = config_from(&toml(second * 9 % 100));
        gw.running.gateway.reload(&config).expect("valid reload");
    }
    for client in clients {
        client.await.expect("client");
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "of {} requests",
        done.load(Ordering::SeqCst)
    );
    assert!(done.load(Ordering::SeqCst) > 32 * 5);
    let mut outcomes = HashMap::new();
    while let Ok(record) = gw.records.try_recv() {
        *outcomes.entry(record.outcome).or_insert(0usize) += 1;
    }
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
}

#[tokio::test]
async fn a_bad_reload_is_refused_and_the_running_table_stays() {
    let a = mock(0, |c| {
        c.output.min = 3;
        c.output.max = 3;
    })
    .await;
    let dir = std::env::temp_dir().join(format!("servelens-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("gateway.toml");
    let good = format!(
        "{}[[routes]]\nmodel = \"{MODEL}\"\npool = \"p\"\n",
        pool_toml("p", &[&a], "")
    );
    std::fs::write(&path, &good).expect("write");
    let gw = TestGateway::start(
        GatewayConfig::load(&path)
            .map(|mut c| {
                c.server.listen = ([127, 0, 0, 1], 0).into();
                c.server.admin = ([127, 0, 0, 1], 0).into();
                c
            })
            .expect("valid"),
    )
    .await;
    let overrides = servelens::config::Overrides {
        listen: Some(([127, 0, 0, 1], 0).into()),
        admin: Some(([127, 0, 0, 1], 0).into()),
        ..Default::default()
    };
    std::fs::write(
        &path,
        good.replace("pool = \"p\"\n", "pool = \"missing\"\n"),
    )
    .expect("write");
    let err = servelens::gateway::reload_from(&gw.running.gateway, &path, &overrides)
        .expect_err("refused");
    assert!(err.to_string().contains("routes[0].pool"), "{err}");
    let (status, _) = stream_text(&gw.url("/v1/chat/completions"), chat("still served", "")).await;
    assert_eq!(status, StatusCode::OK, "the old table still routes");
    std::fs::write(&path, good.replace(MODEL, "another-model")).expect("write");
    servelens::gateway::reload_from(&gw.running.gateway, &path, &overrides).expect("accepted");
    let (status, _) = stream_text(&gw.url("/v1/chat/completions"), chat("old model", "")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the new table is in effect");
    let page = gw.metrics().await;
    assert_eq!(
        metric(
            &page,
            "servelens_config_reloads_total",
            &[("result", "error")]
        ),
        1.0
    );
    assert_eq!(
        metric(&page, "servelens_config_reloads_total", &[("result", "ok")]),
        1.0
    );
}

#[tokio::test]
async fn dns_discovery_turns_a_name_into_replicas() {
    let a = mock(0, |c| {
        c.output.min = 3;
        c.output.max = 3;
    })
    .await;
    let config = config_from(&format!(
        r#"
        [pools.k8s]
        framework = "vllm"
        discovery = "dns"
        backends = ["http://localhost:{}"]
        [pools.k8s.health]
        enabled = false
        [[routes]]
        model = "*"
        pool = "k8s"
        "#,
        a.addr.port()
    ));
    let mut gw = TestGateway::start(config).await;
    let snapshot = gw.running.gateway.snapshot();
    let names: Vec<String> = snapshot.table.pools()["k8s"]
        .backends
        .iter()
        .map(|b| b.name.to_string())
        .collect();
    assert!(
        names.contains(&format!("127.0.0.1:{}", a.addr.port())),
        "{names:?}"
    );
    for i in 0..4 {
        let (status, text) = stream_text(
            &gw.url("/v1/chat/completions"),
            chat(&format!("dns {i}"), ""),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert_eq!(gw.record().await.outcome, Outcome::Completed);
    }
    let _ = Policy::PrefixHash;
}

#[tokio::test(start_paused = true)]
async fn backend_gauges_follow_the_engines_own_metrics() {
    let engine = mock(0, |c| {
        c.latency.max_num_seqs = 1;
        c.output.min = 400;
        c.output.max = 400;
    })
    .await;
    let config = config_from(&format!(
        "{}[[routes]]\nmodel = \"{MODEL}\"\npool = \"p\"\n",
        pool_toml(
            "p",
            &[&engine],
            "scrape_interval = \"1s\"\n[pools.p.health]\nenabled = false"
        )
    ));
    let gw = TestGateway::start(config).await;
    let url = gw.url("/v1/chat/completions");
    let long: String = std::iter::repeat_n('z', 2000).collect();
    // One running, two waiting.
    let streams: Vec<_> = (0..3)
        .map(|_| {
            let (url, body) = (url.clone(), chat(&long, ""));
            tokio::spawn(async move { stream_text(&url, body).await })
        })
        .collect();
    // Scrapes run every second: the gateway's values are the engine's of at most one
    // interval ago, so they lie between the engine's own readings at 0.9 s and 1.5 s.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let own_before = own_metrics(&engine).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let own = own_metrics(&engine).await;
    let page = gw.metrics().await;
    let backend = [("backend", "p-0")];
    assert_eq!(metric(&own, "vllm:num_requests_waiting", &[]), 2.0);
    assert_eq!(
        metric(&page, "servelens_backend_queue_length", &backend),
        2.0
    );
    let kv = metric(&page, "servelens_backend_kv_cache_usage_ratio", &backend);
    let (low, high) = (
        metric(&own_before, "vllm:kv_cache_usage_perc", &[]),
        metric(&own, "vllm:kv_cache_usage_perc", &[]),
    );
    assert!(
        kv > 0.0 && (low..=high).contains(&kv),
        "kv {kv} not in [{low}, {high}]"
    );
    for stream in streams {
        stream.await.expect("request");
    }
    // The same 2000-character prompt three times: the last two mostly hit the prefix cache.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = own_metrics(&engine).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let body = chat(&long, r#","max_tokens":2"#);
    stream_text(&url, body.clone()).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after = own_metrics(&engine).await;
    let delta = |name: &str| metric(&after, name, &[]) - metric(&before, name, &[]);
    let expected = delta("vllm:prefix_cache_hits_total") / delta("vllm:prefix_cache_queries_total");
    let page = gw.metrics().await;
    let ratio = metric(&page, "servelens_backend_prefix_cache_hit_ratio", &backend);
    assert!(expected > 0.9, "the repeated prompt hits ({expected})");
    assert!(
        (ratio - expected).abs() < 1e-9,
        "gateway {ratio} vs engine {expected}"
    );
}

async fn own_metrics(engine: &MockServer) -> String {
    let (_, _, page) = support::get(&format!("{}/metrics", engine.url())).await;
    String::from_utf8_lossy(&page).into_owned()
}
