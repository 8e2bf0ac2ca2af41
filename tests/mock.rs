//! `servelens mock`: the same wire structure as the fixtures (key order, nulls, framing) for
//! both frameworks, the prefix cache model, queueing, fault injection and cancellation.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use servelens::mock::{LatencyModel, MockConfig, MockFramework, MockServer};
use support::{metric, post, post_stream};
use tokio::time::Instant;

// === structure comparison ===

/// The shape of a JSON text: key names and order, `null`/`true`/`false` and punctuation kept,
/// every string value replaced by `s` and every number by `n`. Spacing is kept too, so
/// Python-`json.dumps` output and compact output differ.
fn shape(json: &str) -> String {
    let bytes = json.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'"' {
            let start = i;
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                if bytes[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            let rest = json[i..].trim_start();
            if rest.starts_with(':') {
                out.push_str(&json[start..i]);
            } else {
                out.push('s');
            }
            continue;
        }
        if c == b'-' || c.is_ascii_digit() {
            while i < bytes.len() && (bytes[i].is_ascii_digit() || b"+-.eE".contains(&bytes[i])) {
                i += 1;
            }
            out.push('n');
            continue;
        }
        out.push(c as char);
        i += 1;
    }
    out
}

/// The distinct consecutive event shapes of an SSE stream (so streams of different lengths
/// with the same structure compare equal), checking LF-only `data: ...\n\n` framing.
fn stream_shapes(stream: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(stream).expect("UTF-8 stream");
    assert!(!text.contains('\r'), "LF framing only");
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "ends with [DONE]: {text}"
    );
    let mut shapes: Vec<String> = Vec::new();
    for event in text.split_terminator("\n\n") {
        let payload = event
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("not a data event: {event}"));
        let s = if payload == "[DONE]" {
            payload.to_string()
        } else {
            shape(payload)
        };
        if shapes.last() != Some(&s) {
            shapes.push(s);
        }
    }
    shapes
}

fn fixture_shapes(name: &str) -> Vec<String> {
    stream_shapes(&support::fixtures::read(name))
}

async fn mock(framework: MockFramework, tune: impl FnOnce(&mut MockConfig)) -> MockServer {
    let mut config = MockConfig::local(framework);
    config.model = match framework {
        MockFramework::Vllm => "meta-llama/Llama-3.1-8B-Instruct".into(),
        MockFramework::Sglang => "Qwen/Qwen2.5-7B-Instruct".into(),
    };
    config.report_cached_tokens = false;
    tune(&mut config);
    MockServer::spawn(config).await.expect("mock starts")
}

const VLLM_MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const SGLANG_MODEL: &str = "Qwen/Qwen2.5-7B-Instruct";

fn chat(model: &str, extra: &str) -> String {
    format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"Say hello."}}],"seed":7{extra}}}"#
    )
}

#[tokio::test(start_paused = true)]
async fn vllm_streams_have_the_fixture_structure() {
    let server = mock(MockFramework::Vllm, |c| {
        c.output.min = 4;
        c.output.max = 4;
    })
    .await;
    let url = format!("{}/v1/chat/completions", server.url());
    let cases = [
        (
            chat(VLLM_MODEL, r#","stream":true"#),
            "vllm_chat_stream.sse",
        ),
        (
            chat(
                VLLM_MODEL,
                r#","stream":true,"stream_options":{"include_usage":true}"#,
            ),
            "vllm_chat_stream_usage.sse",
        ),
        (
            chat(
                VLLM_MODEL,
                r#","stream":true,"max_tokens":4,"stream_options":{"include_usage":true,"continuous_usage_stats":true}"#,
            ),
            "vllm_chat_stream_continuous_usage.sse",
        ),
    ];
    for (body, fixture) in cases {
        let (status, headers, bytes) = post(&url, body).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["content-type"], "text/event-stream; charset=utf-8");
        assert_eq!(stream_shapes(&bytes), fixture_shapes(fixture), "{fixture}");
    }
    let completions = format!(
        r#"{{"model":"{VLLM_MODEL}","prompt":"The capital of France is","max_tokens":8,"stream":true,"stream_options":{{"include_usage":true}}}}"#
    );
    let (_, _, bytes) = post(&format!("{}/v1/completions", server.url()), completions).await;
    assert_eq!(
        stream_shapes(&bytes),
        fixture_shapes("vllm_completions_stream.sse")
    );
}

#[tokio::test(start_paused = true)]
async fn vllm_n2_interleaves_like_the_fixture() {
    let server = mock(MockFramework::Vllm, |c| {
        c.output.min = 3;
        c.output.max = 3;
    })
    .await;
    let body = chat(
        VLLM_MODEL,
        r#","n":2,"max_tokens":4,"stream":true,"stream_options":{"include_usage":true}"#,
    );
    let (_, _, bytes) = post(&format!("{}/v1/chat/completions", server.url()), body).await;
    let text = String::from_utf8_lossy(&bytes).to_string();
    let indexes: Vec<&str> = text
        .split_terminator("\n\n")
        .filter_map(|e| e.find(r#""index":"#).map(|i| &e[i + 8..i + 9]))
        .collect();
    // Role chunks for both indexes first, then steps interleave 0,1,0,1,...
    assert_eq!(&indexes[..4], &["0", "1", "0", "1"], "{text}");
    let fixture = support::fixtures::read("multichoice_n2.sse");
    let fixture_kinds: std::collections::BTreeSet<String> = String::from_utf8_lossy(&fixture)
        .split_terminator("\n\n")
        .map(|e| shape(e.trim_start_matches("data: ")))
        .collect();
    for event in text.split_terminator("\n\n") {
        let s = shape(event.trim_start_matches("data: "));
        assert!(
            fixture_kinds.contains(&s),
            "event shape not in the n=2 fixture: {event}"
        );
    }
    let usage: serde_json::Value = serde_json::from_str(
        text.split_terminator("\n\n")
            .collect::<Vec<_>>()
            .iter()
            .rev()
            .nth(1)
            .and_then(|e| e.strip_prefix("data: "))
            .expect("usage event"),
    )
    .expect("usage JSON");
    assert_eq!(usage["usage"]["completion_tokens"], 3 + 3);
}

#[tokio::test(start_paused = true)]
async fn vllm_non_streaming_models_and_errors_have_the_real_shapes() {
    let server = mock(MockFramework::Vllm, |_| {}).await;
    let (status, _, body) = post(
        &format!("{}/v1/chat/completions", server.url()),
        chat(VLLM_MODEL, ""),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let fixture = support::fixtures::read("vllm_chat_nonstream.response.json");
    assert_eq!(
        shape(std::str::from_utf8(&body).expect("utf8")),
        shape(std::str::from_utf8(&fixture).expect("utf8"))
    );

    let (_, _, models) = support::get(&format!("{}/v1/models", server.url())).await;
    let fixture = support::fixtures::read("vllm_models.response.json");
    assert_eq!(
        shape(std::str::from_utf8(&models).expect("utf8")),
        shape(std::str::from_utf8(&fixture).expect("utf8"))
    );

    let (status, _, body) = post(
        &format!("{}/v1/chat/completions", server.url()),
        chat("nope", ""),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let fixture = support::fixtures::read("real/vllm_error_badmodel.response.json");
    assert_eq!(
        shape(std::str::from_utf8(&body).expect("utf8")),
        shape(std::str::from_utf8(&fixture).expect("utf8"))
    );

    let (status, _, body) = post(
        &format!("{}/v1/chat/completions", server.url()),
        chat(VLLM_MODEL, r#","max_tokens":50000,"stream":true"#),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "context checks happen before streaming starts"
    );
    let fixture = support::fixtures::read("real/vllm_error_toolong.response.json");
    assert_eq!(
        shape(std::str::from_utf8(&body).expect("utf8")),
        shape(std::str::from_utf8(&fixture).expect("utf8"))
    );

    let (status, _, body) = support::get(&format!("{}/health", server.url())).await;
    assert_eq!((status, body.len()), (StatusCode::OK, 0));
}

#[tokio::test(start_paused = true)]
async fn sglang_streams_have_the_fixture_structure() {
    let server = mock(MockFramework::Sglang, |c| {
        c.output.min = 5;
        c.output.max = 5;
    })
    .await;
    let url = format!("{}/v1/chat/completions", server.url());
    let (_, _, bytes) = post(&url, chat(SGLANG_MODEL, r#","stream":true"#)).await;
    assert_eq!(
        stream_shapes(&bytes),
        fixture_shapes("sglang_chat_stream.sse")
    );
    let (_, _, bytes) = post(
        &url,
        chat(
            SGLANG_MODEL,
            r#","stream":true,"stream_options":{"include_usage":true}"#,
        ),
    )
    .await;
    assert_eq!(
        stream_shapes(&bytes),
        fixture_shapes("sglang_chat_stream_usage.sse")
    );

    let generate = r#"{"text":"Q: What is the capital of France?\nA:","sampling_params":{"max_new_tokens":32,"temperature":0},"stream":true}"#;
    let (_, _, bytes) = post(&format!("{}/generate", server.url()), generate).await;
    let mine = stream_shapes(&bytes);
    let theirs = fixture_shapes("sglang_generate_native.sse");
    // Cumulative events differ only in how many ids they list; compare with ids collapsed.
    let collapse = |v: Vec<String>| -> Vec<String> {
        let mut out: Vec<String> = v.into_iter().map(|s| s.replace("n,", "")).collect();
        out.dedup();
        out
    };
    assert_eq!(collapse(mine), collapse(theirs));
    let text = String::from_utf8_lossy(&bytes);
    let last: serde_json::Value = serde_json::from_str(
        text.split_terminator("\n\n")
            .collect::<Vec<_>>()
            .iter()
            .rev()
            .nth(1)
            .and_then(|e| e.strip_prefix("data: "))
            .expect("last event"),
    )
    .expect("json");
    assert_eq!(last["meta_info"]["finish_reason"]["type"], "stop");
    assert_eq!(
        last["output_ids"].as_array().map(Vec::len),
        last["meta_info"]["completion_tokens"]
            .as_u64()
            .map(|n| n as usize),
        "cumulative ids"
    );

    let (status, _, body) = support::get(&format!("{}/health_generate", server.url())).await;
    assert_eq!((status, body.len()), (StatusCode::OK, 0));
    let (_, _, models) = support::get(&format!("{}/v1/models", server.url())).await;
    let models: serde_json::Value = serde_json::from_slice(&models).expect("json");
    assert_eq!(models["data"][0]["owned_by"], "sglang");
}

// === cache, queueing ===

fn long_prompt(seed: char, tokens: usize) -> String {
    // `render_chat` adds `<|user|>\n` and `\n<|assistant|>\n` (24 bytes) around the content.
    std::iter::repeat_n(seed, tokens * 4 - 24).collect()
}

async fn timed_stream(url: &str, body: String) -> (Duration, String) {
    let start = Instant::now();
    let response = post_stream(url, body).await;
    let mut body = response.into_body();
    let mut ttft = None;
    let mut text = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("frame");
        if let Ok(data) = frame.into_data() {
            if ttft.is_none() {
                ttft = Some(start.elapsed());
            }
            text.extend_from_slice(&data);
        }
    }
    (
        ttft.expect("some data"),
        String::from_utf8_lossy(&text).into_owned(),
    )
}

#[tokio::test(start_paused = true)]
async fn the_same_prompt_twice_is_cheaper_by_the_cached_prefill() {
    let server = mock(MockFramework::Vllm, |c| {
        c.report_cached_tokens = true;
        c.latency.ttft_base = Duration::from_millis(20);
        // Whole milliseconds: tokio timers have 1 ms resolution.
        c.latency.prefill_per_token = Duration::from_micros(250);
    })
    .await;
    let url = format!("{}/v1/chat/completions", server.url());
    let body = format!(
        r#"{{"model":"{VLLM_MODEL}","messages":[{{"role":"user","content":"{}"}}],"max_tokens":4,"stream":true,"stream_options":{{"include_usage":true}}}}"#,
        long_prompt('a', 400)
    );
    let (first, text1) = timed_stream(&url, body.clone()).await;
    let (second, text2) = timed_stream(&url, body).await;
    assert_eq!(
        first,
        Duration::from_millis(20) + Duration::from_micros(250 * 400)
    );
    // 400 prompt tokens = 25 blocks of 16; the last token is always recomputed: 24 blocks hit.
    assert_eq!(
        second,
        Duration::from_millis(20) + Duration::from_micros(250 * 16)
    );
    assert_eq!(
        first - second,
        Duration::from_micros(250 * 384),
        "lower by the modelled prefill of 384 cached tokens"
    );
    assert!(
        text1.contains(r#""prompt_tokens_details":{"cached_tokens":0,"created_cache_tokens":384}"#),
        "{text1}"
    );
    assert!(
        text2.contains(r#""prompt_tokens_details":{"cached_tokens":384,"created_cache_tokens":0}"#),
        "{text2}"
    );
    let (_, _, page) = support::get(&format!("{}/metrics", server.url())).await;
    let page = String::from_utf8_lossy(&page);
    assert_eq!(metric(&page, "vllm:prefix_cache_queries_total", &[]), 800.0);
    assert_eq!(metric(&page, "vllm:prefix_cache_hits_total", &[]), 384.0);
    assert_eq!(
        metric(&page, "vllm:time_to_first_token_seconds_count", &[]),
        2.0
    );
}

#[tokio::test(start_paused = true)]
async fn eviction_under_capacity_pressure() {
    let server = mock(MockFramework::Vllm, |c| {
        c.report_cached_tokens = true;
        c.cache.capacity_blocks = 30;
    })
    .await;
    let url = format!("{}/v1/chat/completions", server.url());
    let ask = |c: char| {
        format!(
            r#"{{"model":"{VLLM_MODEL}","messages":[{{"role":"user","content":"{}"}}],"max_tokens":2}}"#,
            long_prompt(c, 400)
        )
    };
    let cached = |body: &Bytes| -> u64 {
        let v: serde_json::Value = serde_json::from_slice(body).expect("json");
        v["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .expect("cached tokens")
    };
    post(&url, ask('a')).await;
    let (_, _, again) = post(&url, ask('a')).await;
    assert_eq!(cached(&again), 384, "a fits in 30 blocks");
    post(&url, ask('b')).await;
    assert!(server.engine.cached_blocks() <= 30, "capacity holds");
    let (_, _, after) = post(&url, ask('a')).await;
    assert!(
        cached(&after) < 384,
        "b pushed part of a out: {}",
        cached(&after)
    );
    let (_, _, b) = post(&url, ask('b')).await;
    assert!(cached(&b) > 0, "b itself is cached");
}

#[tokio::test(start_paused = true)]
async fn four_requests_on_two_slots_two_wait() {
    let server = mock(MockFramework::Vllm, |c| {
        c.latency = LatencyModel {
            max_num_seqs: 2,
            ttft_base: Duration::from_millis(10),
            prefill_per_token: Duration::ZERO,
            itl_base: Duration::from_millis(100),
            itl_per_seq: Duration::ZERO,
            tokens_per_step: 1,
        };
    })
    .await;
    let url = format!("{}/v1/chat/completions", server.url());
    let body = chat(VLLM_MODEL, r#","max_tokens":10,"stream":true"#);
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            tokio::spawn(async move { timed_stream(&url, body).await.0 })
        })
        .collect();
    while server.engine.waiting() < 2 {
        tokio::task::yield_now().await;
    }
    let (_, _, page) = support::get(&format!("{}/metrics", server.url())).await;
    let page = String::from_utf8_lossy(&page);
    assert_eq!(metric(&page, "vllm:num_requests_running", &[]), 2.0);
    assert_eq!(metric(&page, "vllm:num_requests_waiting", &[]), 2.0);
    assert!(page.contains("# TYPE vllm:num_requests_waiting gauge"));
    let mut ttfts = Vec::new();
    for task in tasks {
        ttfts.push(task.await.expect("request"));
    }
    ttfts.sort();
    // Two start at once (10 ms prefill); two wait for 10 tokens (10 ms + 9 × 100 ms) first.
    assert_eq!(ttfts[..2], [Duration::from_millis(10); 2]);
    assert_eq!(ttfts[2..], [Duration::from_millis(910 + 10); 2]);
    let (_, _, page) = support::get(&format!("{}/metrics", server.url())).await;
    let page = String::from_utf8_lossy(&page);
    assert_eq!(metric(&page, "vllm:num_requests_waiting", &[]), 0.0);
    assert_eq!(
        metric(&page, "vllm:request_queue_time_seconds_count", &[]),
        4.0
    );
}

// === faults and cancellation ===

async fn post_with_fault(
    url: &str,
    body: String,
    fault: &str,
) -> http::Response<hyper::body::Incoming> {
    support::send(
        Request::post(url)
            .header("content-type", "application/json")
            .header("x-mock-fault", fault)
            .body(Full::new(Bytes::from(body)))
            .expect("request"),
    )
    .await
}

#[tokio::test(start_paused = true)]
async fn error_statuses_in_each_framework_shape() {
    for (framework, model, expected) in [
        (
            MockFramework::Vllm,
            VLLM_MODEL,
            r#"{"error":{"message":s,"type":s,"param":null,"code":n}}"#,
        ),
        (
            MockFramework::Sglang,
            SGLANG_MODEL,
            r#"{"object":s,"message":s,"type":s,"param":null,"code":n}"#,
        ),
    ] {
        let server = mock(framework, |_| {}).await;
        for status in [500u16, 503, 429] {
            let response = post_with_fault(
                &format!("{}/v1/chat/completions", server.url()),
                chat(model, ""),
                &format!("status={status}"),
            )
            .await;
            assert_eq!(response.status().as_u16(), status);
            let retry = response
                .headers()
                .get("retry-after")
                .map(|v| v.as_bytes().to_vec());
            assert_eq!(retry.is_some(), status != 500, "Retry-After on 429/503");
            let (_, _, body) = support::read(response).await;
            let text = String::from_utf8_lossy(&body);
            assert_eq!(shape(&text), expected, "{framework:?} {status}: {text}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn mid_stream_error_event_in_each_framework_shape() {
    for (framework, model, fixture) in [
        (MockFramework::Vllm, VLLM_MODEL, "vllm_error_midstream.sse"),
        (
            MockFramework::Sglang,
            SGLANG_MODEL,
            "sglang_error_midstream.sse",
        ),
    ] {
        let server = mock(framework, |c| c.output.min = 20).await;
        let response = post_with_fault(
            &format!("{}/v1/chat/completions", server.url()),
            chat(model, r#","stream":true"#),
            "error_after=2",
        )
        .await;
        let (status, _, body) = support::read(response).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            stream_shapes(&body),
            fixture_shapes(fixture),
            "{framework:?}"
        );
        let (_, _, page) = support::get(&format!("{}/metrics", server.url())).await;
        if framework == MockFramework::Vllm {
            let page = String::from_utf8_lossy(&page);
            assert_eq!(
                metric(
                    &page,
                    "vllm:request_success_total",
                    &[("finished_reason", "error")]
                ),
                1.0
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn drop_stall_and_slow_first_byte() {
    let server = mock(MockFramework::Vllm, |c| c.output.min = 20).await;
    let url = format!("{}/v1/chat/completions", server.url());
    let body = chat(VLLM_MODEL, r#","stream":true"#);

    // drop_after=2: role + 2 token chunks, then the connection is cut (no [DONE]).
    let response = post_with_fault(&url, body.clone(), "drop_after=2").await;
    let mut stream = response.into_body();
    let mut got = Vec::new();
    let mut failed = false;
    while let Some(frame) = stream.frame().await {
        match frame {
            Ok(frame) => got.extend_from_slice(&frame.into_data().unwrap_or_default()),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the body ends in an error, not a clean end");
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("\n\n").count(), 3, "{text}");
    assert!(!text.contains("[DONE]"));

    // stall_after=1: one token chunk, then silence until the client leaves.
    let response = post_with_fault(&url, body.clone(), "stall_after=1").await;
    let mut stream = response.into_body();
    let mut events = 0;
    while events < 2 {
        let frame = stream.frame().await.expect("frame").expect("data");
        events += frame
            .into_data()
            .map(|d| d.windows(2).filter(|w| w == b"\n\n").count())
            .unwrap_or(0);
    }
    let waited = tokio::time::timeout(Duration::from_secs(600), stream.frame()).await;
    assert!(waited.is_err(), "nothing more for 10 minutes");
    drop(stream);

    // slow_first_byte=1500ms: the head itself is late.
    let start = Instant::now();
    let response = post_with_fault(&url, body, "slow_first_byte=1500ms").await;
    assert_eq!(start.elapsed(), Duration::from_millis(1500));
    assert_eq!(response.status(), StatusCode::OK);

    // A malformed fault header is refused.
    let response = post_with_fault(&url, chat(VLLM_MODEL, ""), "explode=1").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test(start_paused = true)]
async fn client_disconnect_aborts_the_simulated_request() {
    let server = mock(MockFramework::Vllm, |c| {
        c.output.min = 50;
        c.output.max = 50;
    })
    .await;
    let response = post_stream(
        &format!("{}/v1/chat/completions", server.url()),
        chat(VLLM_MODEL, r#","stream":true"#),
    )
    .await;
    let mut body = response.into_body();
    body.frame().await.expect("first frame").expect("data");
    assert_eq!(server.engine.running(), 1);
    drop(body);
    while server.engine.running() > 0 {
        tokio::task::yield_now().await;
    }
    let (_, _, page) = support::get(&format!("{}/metrics", server.url())).await;
    let page = String::from_utf8_lossy(&page);
    assert_eq!(
        metric(
            &page,
            "vllm:request_success_total",
            &[("finished_reason", "abort")]
        ),
        1.0
    );
    assert_eq!(metric(&page, "vllm:num_requests_running", &[]), 0.0);
    assert_eq!(
        metric(&page, "vllm:kv_cache_usage_perc", &[]),
        0.0,
        "blocks released"
    );

    let sglang = mock(MockFramework::Sglang, |c| c.output.min = 50).await;
    let response = post_stream(
        &format!("{}/v1/chat/completions", sglang.url()),
        chat(SGLANG_MODEL, r#","stream":true"#),
    )
    .await;
    let mut body = response.into_body();
    body.frame().await.expect("first frame").expect("data");
    drop(body);
    while sglang.engine.running() > 0 {
        tokio::task::yield_now().await;
    }
    let (_, _, page) = support::get(&format!("{}/metrics", sglang.url())).await;
    let page = String::from_utf8_lossy(&page);
    assert_eq!(metric(&page, "sglang:num_aborted_requests_total", &[]), 1.0);
}

#[tokio::test]
async fn metrics_pages_pass_promtool_and_carry_the_real_names() {
    for (framework, names) in [
        (
            MockFramework::Vllm,
            &[
                "vllm:num_requests_running",
                "vllm:num_requests_waiting",
                "vllm:kv_cache_usage_perc",
                "vllm:prefix_cache_queries_total",
                "vllm:prefix_cache_hits_total",
                "vllm:time_to_first_token_seconds_bucket",
                "vllm:inter_token_latency_seconds_bucket",
                "vllm:e2e_request_latency_seconds_bucket",
            ][..],
        ),
        (
            MockFramework::Sglang,
            &[
                "sglang:num_running_reqs",
                "sglang:num_queue_reqs",
                "sglang:token_usage",
                "sglang:cache_hit_rate",
                "sglang:time_to_first_token_seconds_bucket",
                "sglang:inter_token_latency_seconds_bucket",
            ][..],
        ),
    ] {
        let server = mock(framework, |c| c.latency = LatencyModel::instant()).await;
        let model = if framework == MockFramework::Vllm {
            VLLM_MODEL
        } else {
            SGLANG_MODEL
        };
        post(
            &format!("{}/v1/chat/completions", server.url()),
            chat(model, r#","stream":true,"max_tokens":3"#),
        )
        .await;
        let (_, headers, page) = support::get(&format!("{}/metrics", server.url())).await;
        assert!(headers["content-type"]
            .to_str()
            .is_ok_and(|v| v.starts_with("text/plain")));
        let page = String::from_utf8_lossy(&page).into_owned();
        for name in names {
            assert!(page.lines().any(|l| l.starts_with(name)), "{name} missing");
        }
        // Real vLLM/SGLang names contain ':', which promtool's style lint flags; nothing else may.
        support::lint_with_promtool_allowing(&page, &["metric names should not contain ':'"]);
    }
}

/// Every family the mock shares with the captured pages has the same HELP text and TYPE.
#[tokio::test]
async fn metric_help_and_types_match_the_captured_pages() {
    for (framework, fixture) in [
        (MockFramework::Vllm, "real/vllm_metrics.txt"),
        (MockFramework::Sglang, "sglang_metrics.txt"),
    ] {
        let server = mock(framework, |_| {}).await;
        let (_, _, page) = support::get(&format!("{}/metrics", server.url())).await;
        let page = String::from_utf8_lossy(&page).into_owned();
        let theirs = String::from_utf8_lossy(&support::fixtures::read(fixture)).into_owned();
        let meta = |text: &str| -> std::collections::BTreeMap<String, String> {
            text.lines()
                .filter(|l| l.starts_with("# HELP ") || l.starts_with("# TYPE "))
                .map(|l| {
                    let mut parts = l.splitn(4, ' ');
                    let kind = parts.nth(1).unwrap_or_default().to_string();
                    let name = parts.next().unwrap_or_default().to_string();
                    (
                        format!("{kind} {name}"),
                        parts.next().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        };
        let (mine, real) = (meta(&page), meta(&theirs));
        let mut shared = 0;
        for (key, value) in &mine {
            if let Some(expected) = real.get(key) {
                assert_eq!(value, expected, "{framework:?} {key}");
                shared += 1;
            }
        }
        assert!(
            shared >= 20,
            "{framework:?}: only {shared} families in common with {fixture}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn multi_token_steps_and_deterministic_text() {
    let server = mock(MockFramework::Vllm, |c| {
        c.latency.tokens_per_step = 3;
        c.output.min = 10;
        c.output.max = 10;
    })
    .await;
    let url = format!("{}/v1/chat/completions", server.url());
    let body = chat(
        VLLM_MODEL,
        r#","stream":true,"stream_options":{"include_usage":true}"#,
    );
    let (_, _, first) = post(&url, body.clone()).await;
    let (_, _, second) = post(&url, body).await;
    let content = |bytes: &Bytes| -> (String, usize, u64) {
        let mut text = String::new();
        let mut chunks = 0;
        let mut tokens = 0;
        for event in String::from_utf8_lossy(bytes).split_terminator("\n\n") {
            let Some(payload) = event.strip_prefix("data: ").filter(|p| *p != "[DONE]") else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(payload).expect("json");
            if let Some(piece) = v["choices"][0]["delta"]["content"].as_str() {
                text.push_str(piece);
                chunks += usize::from(v["choices"][0]["delta"].get("role").is_none());
            }
            tokens = v["usage"]["completion_tokens"].as_u64().unwrap_or(tokens);
        }
        (text, chunks, tokens)
    };
    let (text1, chunks, tokens) = content(&first);
    let (text2, _, _) = content(&second);
    assert_eq!(text1, text2, "same request, same seed: same text");
    assert!(!text1.is_empty());
    assert_eq!(tokens, 10);
    // 1 token at prefill, then steps of 3: 1 + 3 + 3 + 3 = 10 tokens in 4 chunks.
    assert_eq!(chunks, 4);
}

/// The captures from a real vLLM 0.32 (`tests/fixtures/real/*.capture`, taken with
/// `--enable-prompt-tokens-details`) have the mock's structure.
#[tokio::test(start_paused = true)]
async fn vllm_matches_the_real_engine_captures() {
    let server = mock(MockFramework::Vllm, |c| {
        c.model = "tiny".into();
        c.report_cached_tokens = true;
        c.output.min = 50;
    })
    .await;
    let chat = r#"{"model":"tiny","messages":[{"role":"user","content":"hello"}],"max_tokens":4"#;
    let completion = r#"{"model":"tiny","prompt":"hello","max_tokens":4"#;
    let cases = [
        (
            "/v1/chat/completions",
            format!(r#"{chat},"stream":true}}"#),
            "real/vllm_chat_stream_nousage.capture",
        ),
        (
            "/v1/completions",
            format!(r#"{completion},"stream":true}}"#),
            "real/vllm_completion_stream_nousage.capture",
        ),
        (
            "/v1/chat/completions",
            format!(r#"{chat},"stream":true,"stream_options":{{"include_usage":true}}}}"#),
            "real/vllm_chat_stream_usage_details.capture",
        ),
    ];
    for (path, body, capture) in cases {
        let (_, _, bytes) = post(&format!("{}{path}", server.url()), body).await;
        assert_eq!(stream_shapes(&bytes), fixture_shapes(capture), "{capture}");
    }
    let (_, _, body) = post(
        &format!("{}/v1/completions", server.url()),
        format!("{completion}}}"),
    )
    .await;
    let real = support::fixtures::read("real/vllm_completion_nonstream.response.json");
    assert_eq!(
        shape(std::str::from_utf8(&body).expect("utf8")),
        shape(std::str::from_utf8(&real).expect("utf8"))
    );
}
