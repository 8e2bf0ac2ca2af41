//! Prefix-affine routing against 4 simulated replicas on a shared-prefix multi-turn workload:
//! `prefix_hash` must reach the prefix-cache hit ratio of an oracle assignment while keeping
//! the replicas evenly loaded, and beat round robin on hits and TTFT.
//!
//! Everything runs on paused tokio time: the mocks' latency model, the clients' think time and
//! the gateway all share one virtual clock, so the numbers are deterministic. Run with
//! `cargo test --test routing_workload -- --nocapture` to see the table.

mod support;

use std::sync::Arc;
use std::time::Duration;

use servelens::config::{BackendSpec, GatewayConfig, Policy, PoolConfig, RouteConfig};
use servelens::mock::{MockConfig, MockFramework, MockServer};
use servelens::rng::Rng;
use support::TestGateway;
use tokio::time::Instant;

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const REPLICAS: usize = 4;

/// The workload: `conversations` chats of `turns` turns; conversation `c` uses system prompt
/// `system_of(c)`.
#[derive(Clone, Copy)]
struct Workload {
    conversations: usize,
    turns: usize,
    system_prompts: usize,
    system_chars: usize,
    user_chars: usize,
    reply_tokens: u64,
    /// Share of conversations on system prompt 0 (the hot spot), 0 for uniform.
    hot_share: f64,
}

impl Workload {
    fn system_of(&self, conversation: usize) -> usize {
        let hot = (self.hot_share * self.conversations as f64).round() as usize;
        if conversation < hot {
            0
        } else {
            conversation % self.system_prompts
        }
    }
}

/// Deterministic text of `chars` bytes seeded by `seed`.
fn text(seed: u64, chars: usize) -> String {
    const WORDS: [&str; 12] = [
        "data", "model", "system", "policy", "cache", "token", "route", "query", "serve", "batch",
        "prefix", "latency",
    ];
    let mut rng = Rng::new(seed);
    let mut out = String::new();
    while out.len() < chars {
        out.push_str(WORDS[(rng.next_u64() % WORDS.len() as u64) as usize]);
        out.push(' ');
    }
    out.truncate(chars);
    out
}

/// Where a run sends requests.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Router {
    /// The gateway with this pool policy.
    Gateway(Policy),
    /// Straight to replica `system prompt mod 4`, the best static assignment.
    Oracle,
}

#[derive(Debug)]
struct Report {
    router: Router,
    hit_ratio: f64,
    ttft_p50: Duration,
    requests: Vec<u64>,
    inflight_avg: Vec<f64>,
}

impl Report {
    fn max_over_mean(values: &[f64]) -> f64 {
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        values.iter().copied().fold(0.0, f64::max) / mean
    }

    fn request_balance(&self) -> f64 {
        Self::max_over_mean(&self.requests.iter().map(|&r| r as f64).collect::<Vec<_>>())
    }

    fn inflight_balance(&self) -> f64 {
        Self::max_over_mean(&self.inflight_avg)
    }
}

async fn replicas() -> Vec<MockServer> {
    let mut servers = Vec::new();
    for i in 0..REPLICAS {
        let mut config = MockConfig::local(MockFramework::Vllm);
        config.model = MODEL.into();
        config.replica_id = i as u32;
        config.output.min = 10_000;
        config.output.max = 10_000;
        // Four tokens per chunk: the same token counts with a quarter of the events to carry.
        config.latency.tokens_per_step = 4;
        // 32k tokens of KV per replica: the 32 conversations' histories (~145k tokens) fit in
        // the pool's aggregate cache only if each conversation lives on one replica.
        config.cache.capacity_blocks = 2000;
        servers.push(MockServer::spawn(config).await.expect("mock"));
    }
    servers
}

fn gateway_config(servers: &[MockServer], policy: Policy) -> GatewayConfig {
    let backends = servers
        .iter()
        .enumerate()
        .map(|(i, s)| BackendSpec::Named {
            name: format!("replica-{i}"),
            url: s.url(),
        })
        .collect();
    let mut pool = PoolConfig::new(servelens::config::Framework::Vllm, backends);
    pool.policy = policy;
    pool.health.enabled = false;
    let mut config = GatewayConfig::default();
    config.pools.insert("vllm".into(), pool);
    config.routes.push(RouteConfig::to_pool(MODEL, "vllm"));
    config.server.listen = ([127, 0, 0, 1], 0).into();
    config.server.admin = ([127, 0, 0, 1], 0).into();
    config
}

async fn run(router: Router, workload: Workload) -> Report {
    let servers = replicas().await;
    let urls: Vec<String> = servers.iter().map(MockServer::url).collect();
    let gateway = match router {
        Router::Gateway(policy) => Some(TestGateway::start(gateway_config(&servers, policy)).await),
        Router::Oracle => None,
    };
    let base = gateway.as_ref().map(|g| g.url(""));

    // Sample every replica's requests in flight (engine running + waiting) every 5 ms of
    // virtual time while the workload runs.
    let engines: Vec<_> = servers.iter().map(|s| s.engine.clone()).collect();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampling = done.clone();
    let sampler = tokio::spawn(async move {
        let mut sums = [0f64; REPLICAS];
        let mut samples = 0u64;
        while !sampling.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let busy: usize = engines.iter().map(|e| e.running() + e.waiting()).sum();
            if busy > 0 {
                for (i, e) in engines.iter().enumerate() {
                    sums[i] += (e.running() + e.waiting()) as f64;
                }
                samples += 1;
            }
        }
        sums.iter()
            .map(|s| s / samples.max(1) as f64)
            .collect::<Vec<f64>>()
    });
    let shared = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for c in 0..workload.conversations {
        let (urls, base, ttfts) = (urls.clone(), base.clone(), shared.clone());
        tasks.push(tokio::spawn(async move {
            let system = workload.system_of(c);
            let system_text = text(1000 + system as u64, workload.system_chars);
            let mut messages = vec![serde_json::json!({"role": "system", "content": system_text})];
            // Stagger the start and think between turns, deterministically per conversation.
            let mut rng = Rng::new(c as u64);
            tokio::time::sleep(Duration::from_millis(rng.between(0, 400))).await;
            for turn in 0..workload.turns {
                messages.push(serde_json::json!({"role": "user", "content": text((c * 100 + turn) as u64, workload.user_chars)}));
                let body = serde_json::json!({
                    "model": MODEL, "messages": messages, "max_tokens": workload.reply_tokens,
                    "stream": true, "stream_options": {"include_usage": true},
                });
                let url = match &base {
                    Some(base) => format!("{base}/v1/chat/completions"),
                    None => format!("{}/v1/chat/completions", urls[system % REPLICAS]),
                };
                let sent = Instant::now();
                let response = support::post_stream(&url, body.to_string()).await;
                let (reply, ttft) = read_reply(response, sent).await;
                ttfts.lock().expect("lock").push(ttft);
                messages.push(serde_json::json!({"role": "assistant", "content": reply}));
                tokio::time::sleep(Duration::from_millis(rng.between(50, 250))).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("conversation");
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let inflight_avg = sampler.await.expect("sampler");
    let stats: Vec<_> = servers.iter().map(|s| s.engine.stats()).collect();
    let hits: u64 = stats.iter().map(|s| s.prefix_hits).sum();
    let queries: u64 = stats.iter().map(|s| s.prefix_queries).sum();
    let mut ttfts = shared.lock().expect("lock").clone();
    ttfts.sort();
    Report {
        router,
        hit_ratio: hits as f64 / queries as f64,
        ttft_p50: ttfts[ttfts.len() / 2],
        requests: stats.iter().map(|s| s.requests).collect(),
        inflight_avg,
    }
}

/// Reads a streamed chat reply: its text and the time to the first content event.
async fn read_reply(
    response: http::Response<hyper::body::Incoming>,
    sent: Instant,
) -> (String, Duration) {
    use http_body_util::BodyExt;
    let mut body = response.into_body();
    let mut raw = Vec::new();
    let mut ttft = None;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("frame").into_data() {
            if ttft.is_none() && data.windows(11).any(|w| w == br#""content":""#) {
                ttft = Some(sent.elapsed());
            }
            raw.extend_from_slice(&data);
        }
    }
    let mut reply = String::new();
    for event in String::from_utf8_lossy(&raw).split_terminator("\n\n") {
        let Some(payload) = event.strip_prefix("data: ").filter(|p| *p != "[DONE]") else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(payload).expect("chunk");
        if let Some(piece) = v["choices"][0]["delta"]["content"].as_str() {
            reply.push_str(piece);
        }
    }
    (reply, ttft.unwrap_or_else(|| sent.elapsed()))
}

/// 32 conversations × 8 turns over 8 system prompts of 2 KiB; agent-like turns (400-character
/// user messages, 400-token replies) so history, not the system prompt, dominates the prompts,
/// and the histories outgrow one replica's KV cache (see `replicas`).
const SHARED_PREFIX: Workload = Workload {
    conversations: 32,
    turns: 8,
    system_prompts: 8,
    system_chars: 2048,
    user_chars: 400,
    reply_tokens: 400,
    hot_share: 0.0,
};

fn print(reports: &[&Report]) {
    println!(
        "{:<28} {:>9} {:>10} {:>14} {:>18}  requests per replica",
        "router", "hit ratio", "TTFT p50", "max/mean reqs", "max/mean inflight"
    );
    for r in reports {
        println!(
            "{:<28} {:>9.3} {:>8.1}ms {:>14.2} {:>18.2}  {:?}",
            format!("{:?}", r.router),
            r.hit_ratio,
            r.ttft_p50.as_secs_f64() * 1e3,
            r.request_balance(),
            r.inflight_balance(),
            r.requests
        );
    }
}

#[tokio::test(start_paused = true)]
async fn prefix_hash_matches_the_oracle_and_balances() {
    let oracle = run(Router::Oracle, SHARED_PREFIX).await;
    let prefix = run(Router::Gateway(Policy::PrefixHash), SHARED_PREFIX).await;
    let round_robin = run(Router::Gateway(Policy::RoundRobin), SHARED_PREFIX).await;
    let least = run(Router::Gateway(Policy::LeastOutstanding), SHARED_PREFIX).await;
    print(&[&oracle, &prefix, &round_robin, &least]);
    assert!(
        prefix.hit_ratio >= 0.95 * oracle.hit_ratio,
        "prefix_hash hit ratio {:.3} < 0.95 × oracle {:.3}",
        prefix.hit_ratio,
        oracle.hit_ratio
    );
    assert!(
        prefix.hit_ratio >= 2.0 * round_robin.hit_ratio,
        "prefix_hash hit ratio {:.3} < 2 × round robin {:.3}",
        prefix.hit_ratio,
        round_robin.hit_ratio
    );
    assert!(
        prefix.ttft_p50 < round_robin.ttft_p50,
        "TTFT p50 {:?} vs {:?}",
        prefix.ttft_p50,
        round_robin.ttft_p50
    );
    assert!(
        prefix.request_balance() <= 1.2,
        "max/mean requests {:.2}",
        prefix.request_balance()
    );
}

#[tokio::test(start_paused = true)]
async fn a_hot_system_prompt_is_spread_within_the_load_bound() {
    let hot = Workload {
        hot_share: 0.5,
        ..SHARED_PREFIX
    };
    let prefix = run(Router::Gateway(Policy::PrefixHash), hot).await;
    print(&[&prefix]);
    assert!(
        prefix.inflight_balance() <= 1.25,
        "max/mean in flight {:.2}",
        prefix.inflight_balance()
    );
}
