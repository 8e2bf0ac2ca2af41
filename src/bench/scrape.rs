//! Scraping `/metrics` of the gateway and the backends before, during and after a run, to report
//! what the engines saw: prefix-cache hits and queue depth over the run.
//!
//! | signal | vLLM | SGLang | servelens gateway |
//! |---|---|---|---|
//! | prefix-cache hit ratio | Δ`vllm:prefix_cache_hits_total` / Δ`vllm:prefix_cache_queries_total` | `sglang:cache_hit_rate` after the run | Δ`servelens_prompt_cached_tokens_total` / Δ`servelens_prompt_tokens_total` |
//! | queue depth | `vllm:num_requests_waiting` | `sglang:num_queue_reqs` | `servelens_backend_queue_length` |
//!
//! A page that cannot be fetched is reported as such; it never fails the run.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::bench::experiment::{Experiment, ScrapeEndpoint};
use crate::promtext::{self, Sample};

/// Largest page read.
const MAX_PAGE: usize = 16 * 1024 * 1024;
/// Deadline of one scrape.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

const QUEUE: &[&str] = &[
    "vllm:num_requests_waiting",
    "sglang:num_queue_reqs",
    "servelens_backend_queue_length",
];
const VLLM_HITS: &[&str] = &[
    "vllm:prefix_cache_hits_total",
    "vllm:gpu_prefix_cache_hits_total",
];
const VLLM_QUERIES: &[&str] = &[
    "vllm:prefix_cache_queries_total",
    "vllm:gpu_prefix_cache_queries_total",
];
const GATEWAY_CACHED: &[&str] = &["servelens_prompt_cached_tokens_total"];
const GATEWAY_PROMPT: &[&str] = &["servelens_prompt_tokens_total"];
const REQUESTS: &[&str] = &[
    "vllm:request_success_total",
    "sglang:num_requests_total",
    "servelens_requests_total",
];

/// Queue-depth samples, one series per page.
type QueueSamples = Arc<Mutex<Vec<Vec<(f64, f64)>>>>;

/// What one page showed over the run (one entry of `metrics.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointReport {
    /// Name (a target name, or a `scrape.endpoints` name).
    pub name: String,
    /// The page.
    pub url: String,
    /// Both the before and the after scrape succeeded.
    pub scraped: bool,
    /// Prefix-cache hit ratio over the run, when the page reports one.
    pub prefix_cache_hit_ratio: Option<f64>,
    /// Which series the ratio came from.
    pub prefix_cache_source: Option<String>,
    /// Requests the page counted during the run.
    pub requests: Option<f64>,
    /// Queue depth before the run.
    pub queue_before: Option<f64>,
    /// Queue depth after the run.
    pub queue_after: Option<f64>,
    /// Largest sampled queue depth.
    pub queue_max: Option<f64>,
    /// Mean sampled queue depth.
    pub queue_mean: Option<f64>,
    /// `(seconds since the run began, queue depth)` samples.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queue_samples: Vec<(f64, f64)>,
}

/// The pages a run scrapes.
pub fn endpoints(exp: &Experiment) -> Vec<ScrapeEndpoint> {
    let mut all = Vec::new();
    if exp.scrape.targets {
        all.extend(exp.targets.iter().map(|t| ScrapeEndpoint {
            name: t.name.clone(),
            url: format!("{}/metrics", t.url.trim_end_matches('/')),
        }));
    }
    all.extend(exp.scrape.endpoints.iter().cloned());
    all
}

/// A scrape in progress: the before pages and the queue sampler.
#[derive(Debug)]
pub struct Scraper {
    client: Client<HttpConnector, Full<Bytes>>,
    endpoints: Vec<ScrapeEndpoint>,
    before: Vec<Option<Vec<Sample>>>,
    samples: QueueSamples,
    sampler: Option<JoinHandle<()>>,
}

impl Scraper {
    /// Scrapes every page once and starts sampling queue depth every `interval`.
    pub async fn start(endpoints: Vec<ScrapeEndpoint>, interval: Option<Duration>) -> Self {
        let client = Client::builder(TokioExecutor::new()).build_http();
        let mut before = Vec::new();
        for e in &endpoints {
            before.push(fetch(&client, &e.url).await);
        }
        let samples = Arc::new(Mutex::new(vec![Vec::new(); endpoints.len()]));
        let sampler = interval.filter(|_| !endpoints.is_empty()).map(|every| {
            tokio::spawn(sample_queues(
                client.clone(),
                endpoints.clone(),
                every,
                samples.clone(),
            ))
        });
        Self {
            client,
            endpoints,
            before,
            samples,
            sampler,
        }
    }

    /// Stops sampling, scrapes every page again and reports the differences.
    pub async fn finish(self) -> Vec<EndpointReport> {
        if let Some(sampler) = &self.sampler {
            sampler.abort();
        }
        let samples = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        let mut reports = Vec::new();
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let after = fetch(&self.client, &endpoint.url).await;
            let before = self.before.get(i).cloned().flatten();
            let queue = samples.get(i).cloned().unwrap_or_default();
            reports.push(report(endpoint, before.as_deref(), after.as_deref(), queue));
        }
        reports
    }
}

async fn sample_queues(
    client: Client<HttpConnector, Full<Bytes>>,
    endpoints: Vec<ScrapeEndpoint>,
    every: Duration,
    samples: QueueSamples,
) {
    let start = Instant::now();
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let t = start.elapsed().as_secs_f64();
        for (i, e) in endpoints.iter().enumerate() {
            let depth = fetch(&client, &e.url)
                .await
                .and_then(|page| promtext::sum_any(&page, QUEUE));
            if let (Some(depth), Ok(mut all)) = (depth, samples.lock()) {
                if let Some(series) = all.get_mut(i) {
                    series.push((t, depth));
                }
            }
        }
    }
}

/// GETs and parses one page; `None` when it cannot be had.
async fn fetch(client: &Client<HttpConnector, Full<Bytes>>, url: &str) -> Option<Vec<Sample>> {
    let request = Request::get(url).body(Full::new(Bytes::new())).ok()?;
    let read = async {
        let response = client.request(request).await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body = Limited::new(response.into_body(), MAX_PAGE)
            .collect()
            .await
            .ok()?;
        String::from_utf8(body.to_bytes().to_vec()).ok()
    };
    let page = tokio::time::timeout(SCRAPE_TIMEOUT, read).await.ok()??;
    Some(promtext::parse(&page))
}

/// The report of one page from its before and after scrapes.
pub fn report(
    endpoint: &ScrapeEndpoint,
    before: Option<&[Sample]>,
    after: Option<&[Sample]>,
    queue_samples: Vec<(f64, f64)>,
) -> EndpointReport {
    // A counter absent from the before page had not been incremented yet (exporters create
    // labelled series on first use): it counts from zero.
    let delta = |names: &[&str]| {
        let (b, a) = (before?, after?);
        Some(promtext::sum_any(a, names)? - promtext::sum_any(b, names).unwrap_or(0.0))
    };
    let ratio = |num: Option<f64>, den: Option<f64>| match (num, den) {
        (Some(n), Some(d)) if d > 0.0 && n >= 0.0 => Some(n / d),
        _ => None,
    };
    let (hit_ratio, source) = if let Some(r) = ratio(delta(VLLM_HITS), delta(VLLM_QUERIES)) {
        (
            Some(r),
            Some("vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total"),
        )
    } else if let Some(r) = after.and_then(|a| promtext::mean_any(a, &["sglang:cache_hit_rate"])) {
        (Some(r), Some("sglang:cache_hit_rate"))
    } else if let Some(r) = ratio(delta(GATEWAY_CACHED), delta(GATEWAY_PROMPT)) {
        (
            Some(r),
            Some("servelens_prompt_cached_tokens_total / servelens_prompt_tokens_total"),
        )
    } else {
        (None, None)
    };
    let depths: Vec<f64> = queue_samples.iter().map(|(_, d)| *d).collect();
    EndpointReport {
        name: endpoint.name.clone(),
        url: endpoint.url.clone(),
        scraped: before.is_some() && after.is_some(),
        prefix_cache_hit_ratio: hit_ratio,
        prefix_cache_source: source.map(String::from),
        requests: delta(REQUESTS),
        queue_before: before.and_then(|b| promtext::sum_any(b, QUEUE)),
        queue_after: after.and_then(|a| promtext::sum_any(a, QUEUE)),
        queue_max: depths.iter().copied().reduce(f64::max),
        queue_mean: (!depths.is_empty()).then(|| depths.iter().sum::<f64>() / depths.len() as f64),
        queue_samples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(hits: f64, queries: f64, waiting: f64) -> Vec<Sample> {
        promtext::parse(&format!(
            "vllm:prefix_cache_hits_total{{engine=\"0\"}} {hits}\n\
             vllm:prefix_cache_queries_total{{engine=\"0\"}} {queries}\n\
             vllm:num_requests_waiting{{engine=\"0\"}} {waiting}\n\
             vllm:request_success_total{{finished_reason=\"stop\"}} {queries}\n"
        ))
    }

    #[test]
    fn vllm_hit_ratio_is_over_the_run_only() {
        let endpoint = ScrapeEndpoint {
            name: "vllm".into(),
            url: "http://x/metrics".into(),
        };
        let r = report(
            &endpoint,
            Some(&page(100.0, 1000.0, 0.0)),
            Some(&page(400.0, 1400.0, 2.0)),
            vec![(0.0, 1.0), (1.0, 5.0)],
        );
        assert_eq!(r.prefix_cache_hit_ratio, Some(0.75));
        assert_eq!(r.requests, Some(400.0));
        assert_eq!((r.queue_before, r.queue_after), (Some(0.0), Some(2.0)));
        assert_eq!((r.queue_max, r.queue_mean), (Some(5.0), Some(3.0)));
        assert!(r.scraped);
        let fresh = promtext::parse("vllm:num_requests_waiting 0\n");
        let r = report(
            &endpoint,
            Some(&fresh),
            Some(&page(3.0, 4.0, 0.0)),
            Vec::new(),
        );
        assert_eq!(
            r.prefix_cache_hit_ratio,
            Some(0.75),
            "series born during the run"
        );
        assert_eq!(r.requests, Some(4.0));
        let missing = report(&endpoint, None, Some(&page(1.0, 1.0, 0.0)), Vec::new());
        assert!(!missing.scraped);
        assert_eq!(missing.prefix_cache_hit_ratio, None);
    }

    #[test]
    fn sglang_reports_its_own_ratio() {
        let endpoint = ScrapeEndpoint {
            name: "sglang".into(),
            url: "http://x/metrics".into(),
        };
        let pages = promtext::parse(include_str!("../../tests/fixtures/sglang_metrics.txt"));
        let r = report(&endpoint, Some(&pages), Some(&pages), Vec::new());
        assert_eq!(
            r.prefix_cache_source.as_deref(),
            Some("sglang:cache_hit_rate")
        );
        assert!(r.prefix_cache_hit_ratio.is_some());
        assert!(r.queue_after.is_some());
    }
}
