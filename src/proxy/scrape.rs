//! Reading each backend's own `/metrics` for the load signals the gateway cannot see itself:
//! the engine's waiting queue (which includes other gateways' traffic), KV-cache usage and
//! prefix-cache hit ratio. Exported as `servelens_backend_queue_length`,
//! `servelens_backend_kv_cache_usage_ratio` and `servelens_backend_prefix_cache_hit_ratio`;
//! the queue also feeds `least_outstanding` and `power_of_two`.
//!
//! | signal | vLLM | SGLang | TGI / llama.cpp |
//! |---|---|---|---|
//! | queue | `vllm:num_requests_waiting` | `sglang:num_queue_reqs` | `tgi_queue_size` / `llamacpp:requests_deferred` |
//! | KV usage | `vllm:kv_cache_usage_perc` (older: `gpu_cache_usage_perc`) | `sglang:token_usage` | – |
//! | prefix hits | Δ`prefix_cache_hits_total` / Δ`prefix_cache_queries_total` between scrapes | `sglang:cache_hit_rate` | – |
//!
//! Values are summed over engines (queue) or averaged (ratios). A failed scrape leaves the
//! previous values; scrapes never affect eligibility (that is what health probes are for).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full, Limited};

use crate::promtext::{self, Sample};
use crate::proxy::pool::{Backend, Pool};

/// Largest `/metrics` page read.
const MAX_PAGE: usize = 8 * 1024 * 1024;

/// Starts a scrape of every backend of `pool` that is due.
pub fn scrape_due(pool: &Arc<Pool>) {
    let Some(every) = pool.scrape_every else {
        return;
    };
    for backend in &pool.backends {
        if backend.claim_scrape(every) {
            tokio::spawn(scrape(pool.clone(), backend.clone(), every));
        }
    }
}

/// Scrapes one backend once and stores what it reports.
pub async fn scrape(pool: Arc<Pool>, backend: Arc<Backend>, every: Duration) {
    let timeout = every.min(pool.health.timeout.max(Duration::from_secs(1)));
    match tokio::time::timeout(timeout, fetch(&pool, &backend)).await {
        Ok(Some(page)) => apply(&backend, &promtext::parse(&page)),
        _ => tracing::debug!(backend = %backend.name, "metrics scrape failed"),
    }
}

async fn fetch(pool: &Pool, backend: &Backend) -> Option<String> {
    let uri: Uri = format!("{}/metrics", backend.base).parse().ok()?;
    let mut request = Request::get(uri);
    if let Some(key) = &pool.api_key {
        request = request.header(http::header::AUTHORIZATION, key);
    }
    let response = pool
        .client
        .request(request.body(Full::new(Bytes::new())).ok()?)
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body = Limited::new(response.into_body(), MAX_PAGE)
        .collect()
        .await
        .ok()?;
    String::from_utf8(body.to_bytes().to_vec()).ok()
}

/// Extracts the signals from a parsed page into the backend's gauges.
pub fn apply(backend: &Backend, samples: &[Sample]) {
    let queue = promtext::sum_any(
        samples,
        &[
            "vllm:num_requests_waiting",
            "sglang:num_queue_reqs",
            "tgi_queue_size",
            "llamacpp:requests_deferred",
        ],
    );
    let kv = promtext::mean_any(
        samples,
        &[
            "vllm:kv_cache_usage_perc",
            "vllm:gpu_cache_usage_perc",
            "sglang:token_usage",
        ],
    );
    let hit = match promtext::mean_any(samples, &["sglang:cache_hit_rate"]) {
        Some(rate) => Some(rate),
        None => vllm_hit_ratio(backend, samples),
    };
    backend.scraped.set(queue, kv, hit);
}

/// vLLM's prefix-cache hit ratio over the interval since the previous scrape.
fn vllm_hit_ratio(backend: &Backend, samples: &[Sample]) -> Option<f64> {
    let hits = promtext::sum_any(
        samples,
        &[
            "vllm:prefix_cache_hits_total",
            "vllm:gpu_prefix_cache_hits_total",
        ],
    )?;
    let queries = promtext::sum_any(
        samples,
        &[
            "vllm:prefix_cache_queries_total",
            "vllm:gpu_prefix_cache_queries_total",
        ],
    )?;
    let mut last = backend
        .scraped
        .last_counters
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let previous = last.replace((hits, queries));
    let (h0, q0) = previous?;
    let (dh, dq) = (hits - h0, queries - q0);
    // No prefill since the last scrape (or a restart reset the counters): nothing to report.
    (dq > 0.0 && dh >= 0.0).then(|| dh / dq)
}
