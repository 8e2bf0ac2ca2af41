//! Every Prometheus series the gateway exports: names, help texts, buckets and label sets.
//!
//! This is the only file that knows metric names. Each gateway owns its own recorder (not the
//! process-global one), so several gateways in one process (tests, `servelens demo`) keep
//! separate counts. Labels come only from config names and closed enums: `route`, `pool`,
//! `backend`, `arm`, `endpoint`, `stream`, `outcome`, `kind`, `decision`.
//!
//! Histograms are real Prometheus histograms (explicit buckets), aligned with vLLM's so gateway
//! and engine series line up in one Grafana panel: TTFT/TTFB use vLLM's TTFT buckets, ITL/TPOT
//! vLLM's ITL buckets with four finer SGLang-speed bounds below 10 ms, E2E vLLM's request latency
//! buckets with four bounds below 300 ms for fast non-streaming calls.

use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::error::ErrorKind;
use crate::telemetry::record::{Outcome, RequestRecord};

/// `servelens_requests_total{route,pool,backend,arm,endpoint,stream,outcome}`.
pub const REQUESTS: &str = "servelens_requests_total";
/// `servelens_request_duration_seconds`: E2E.
pub const REQUEST_DURATION: &str = "servelens_request_duration_seconds";
/// `servelens_time_to_first_token_seconds`.
pub const TTFT: &str = "servelens_time_to_first_token_seconds";
/// `servelens_time_to_first_byte_seconds`.
pub const TTFB: &str = "servelens_time_to_first_byte_seconds";
/// `servelens_inter_token_latency_seconds`: one observation per content event after the first.
pub const ITL: &str = "servelens_inter_token_latency_seconds";
/// `servelens_time_per_output_token_seconds`: one observation per request.
pub const TPOT: &str = "servelens_time_per_output_token_seconds";
/// `servelens_prompt_tokens_total`.
pub const PROMPT_TOKENS: &str = "servelens_prompt_tokens_total";
/// `servelens_prompt_cached_tokens_total`.
pub const PROMPT_CACHED_TOKENS: &str = "servelens_prompt_cached_tokens_total";
/// `servelens_output_tokens_total`.
pub const OUTPUT_TOKENS: &str = "servelens_output_tokens_total";
/// `servelens_inflight_requests{pool,backend}`.
pub const INFLIGHT: &str = "servelens_inflight_requests";
/// `servelens_backend_up{pool,backend}`.
pub const BACKEND_UP: &str = "servelens_backend_up";
/// `servelens_route_decisions_total{pool,decision}`.
pub const ROUTE_DECISIONS: &str = "servelens_route_decisions_total";
/// `servelens_backend_queue_length{pool,backend}`: the engine's waiting queue (scraped).
pub const BACKEND_QUEUE: &str = "servelens_backend_queue_length";
/// `servelens_backend_kv_cache_usage_ratio{pool,backend}` (scraped).
pub const BACKEND_KV: &str = "servelens_backend_kv_cache_usage_ratio";
/// `servelens_backend_prefix_cache_hit_ratio{pool,backend}` (scraped).
pub const BACKEND_HIT: &str = "servelens_backend_prefix_cache_hit_ratio";
/// `servelens_backend_ejections_total{pool,backend}`.
pub const BACKEND_EJECTIONS: &str = "servelens_backend_ejections_total";
/// `servelens_retries_total{pool}`.
pub const RETRIES: &str = "servelens_retries_total";
/// `servelens_experiment_assignments_total{experiment,arm}`.
pub const ASSIGNMENTS: &str = "servelens_experiment_assignments_total";
/// `servelens_config_reloads_total{result}`.
pub const RELOADS: &str = "servelens_config_reloads_total";
/// `servelens_errors_total{kind}`: requests the gateway answered with its own error status.
pub const ERRORS: &str = "servelens_errors_total";
/// `servelens_build_info{version}`.
pub const BUILD_INFO: &str = "servelens_build_info";

/// vLLM's `TIME_TO_FIRST_TOKEN_BUCKETS`.
pub const TTFT_BUCKETS: [f64; 22] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
/// vLLM's `INTER_TOKEN_LATENCY_BUCKETS` with 2/4/6/8 ms in front (SGLang's fine end).
pub const ITL_BUCKETS: [f64; 23] = [
    0.002, 0.004, 0.006, 0.008, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
];
/// vLLM's `REQUEST_LATENCY_BUCKETS` with 10/25/50/100 ms in front.
pub const E2E_BUCKETS: [f64; 25] = [
    0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
    50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
];

static METADATA: Metadata<'static> =
    Metadata::new("servelens", metrics::Level::INFO, Some(module_path!()));

/// The gateway's metric registry and typed recording functions.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every series described and bucketed.
    pub fn new() -> Self {
        let mut builder = PrometheusBuilder::new();
        for (name, buckets) in [
            (TTFT, &TTFT_BUCKETS[..]),
            (TTFB, &TTFT_BUCKETS[..]),
            (ITL, &ITL_BUCKETS[..]),
            (TPOT, &ITL_BUCKETS[..]),
            (REQUEST_DURATION, &E2E_BUCKETS[..]),
        ] {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)
                .expect("bucket lists are non-empty constants");
        }
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let metrics = Self { recorder, handle };
        metrics.describe();
        metrics
            .gauge(
                BUILD_INFO,
                vec![Label::new("version", env!("CARGO_PKG_VERSION"))],
            )
            .set(1.0);
        for kind in ErrorKind::ALL {
            metrics
                .counter(ERRORS, vec![Label::new("kind", kind.as_str())])
                .increment(0);
        }
        metrics
    }

    fn describe(&self) {
        let r = &self.recorder;
        let counter = |name: &'static str, unit: Unit, help: &'static str| {
            r.describe_counter(
                KeyName::from_const_str(name),
                Some(unit),
                SharedString::const_str(help),
            )
        };
        let gauge = |name: &'static str, unit: Unit, help: &'static str| {
            r.describe_gauge(
                KeyName::from_const_str(name),
                Some(unit),
                SharedString::const_str(help),
            )
        };
        let histogram = |name: &'static str, help: &'static str| {
            r.describe_histogram(
                KeyName::from_const_str(name),
                Some(Unit::Seconds),
                SharedString::const_str(help),
            )
        };
        counter(
            REQUESTS,
            Unit::Count,
            "Requests handled, by how they ended.",
        );
        histogram(
            REQUEST_DURATION,
            "Arrival at the gateway to the last byte sent to the client.",
        );
        histogram(
            TTFT,
            "Arrival to the first content-bearing event (streams).",
        );
        histogram(
            TTFB,
            "Arrival to the first data event with choices (role chunk), or first body byte.",
        );
        histogram(
            ITL,
            "Gap between consecutive content-bearing events, one sample per event.",
        );
        histogram(TPOT, "(E2E - TTFT) / (output tokens - 1), per request.");
        counter(
            PROMPT_TOKENS,
            Unit::Count,
            "Prompt tokens reported by backends in usage.",
        );
        counter(PROMPT_CACHED_TOKENS, Unit::Count, "Prompt tokens served from the backend prefix cache (usage.prompt_tokens_details.cached_tokens).");
        counter(
            OUTPUT_TOKENS,
            Unit::Count,
            "Output tokens (usage.completion_tokens, else content events).",
        );
        gauge(INFLIGHT, Unit::Count, "Requests in flight per backend.");
        gauge(
            BACKEND_UP,
            Unit::Count,
            "1 when the backend is eligible for traffic, 0 when ejected.",
        );
        counter(
            ROUTE_DECISIONS,
            Unit::Count,
            "Replica choices by the kind of decision made.",
        );
        counter(
            ERRORS,
            Unit::Count,
            "Requests answered with a gateway error status, by kind.",
        );
        gauge(BACKEND_QUEUE, Unit::Count, "Requests waiting in the backend engine (vllm:num_requests_waiting / sglang:num_queue_reqs).");
        gauge(
            BACKEND_KV,
            Unit::Count,
            "Backend KV-cache usage, 0-1 (vllm:kv_cache_usage_perc / sglang:token_usage).",
        );
        gauge(BACKEND_HIT, Unit::Count, "Backend prefix-cache hit ratio over the last scrape interval (vLLM) or as reported (sglang:cache_hit_rate).");
        counter(
            BACKEND_EJECTIONS,
            Unit::Count,
            "Passive ejections of a backend after consecutive failures.",
        );
        counter(
            RETRIES,
            Unit::Count,
            "Attempts retried on another replica before any byte reached the client.",
        );
        counter(
            ASSIGNMENTS,
            Unit::Count,
            "A/B experiment assignments by arm.",
        );
        counter(
            RELOADS,
            Unit::Count,
            "Config reloads by result (ok, error).",
        );
        gauge(
            BUILD_INFO,
            Unit::Count,
            "Always 1; the version label says which build.",
        );
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.run_upkeep();
        self.handle.render()
    }

    /// Registers (or finds) a counter.
    pub fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    /// Registers (or finds) a gauge.
    pub fn gauge(&self, name: &'static str, labels: Vec<Label>) -> Gauge {
        self.recorder
            .register_gauge(&Key::from_parts(name, labels), &METADATA)
    }

    fn histogram(&self, name: &'static str, labels: Vec<Label>) -> Histogram {
        self.recorder
            .register_histogram(&Key::from_parts(name, labels), &METADATA)
    }

    /// The in-flight gauge of one backend.
    pub fn inflight(&self, pool: &str, backend: &str) -> Gauge {
        self.gauge(INFLIGHT, pool_backend(pool, backend))
    }

    /// The up/down gauge of one backend.
    pub fn backend_up(&self, pool: &str, backend: &str) -> Gauge {
        self.gauge(BACKEND_UP, pool_backend(pool, backend))
    }

    /// A scraped backend gauge (`BACKEND_QUEUE`, `BACKEND_KV`, `BACKEND_HIT`).
    pub fn backend_gauge(&self, name: &'static str, pool: &str, backend: &str) -> Gauge {
        self.gauge(name, pool_backend(pool, backend))
    }

    /// Ejections of one backend.
    pub fn backend_ejections(&self, pool: &str, backend: &str) -> Counter {
        self.counter(BACKEND_EJECTIONS, pool_backend(pool, backend))
    }

    /// Retries in one pool.
    pub fn retries(&self, pool: &str) -> Counter {
        self.counter(RETRIES, vec![Label::new("pool", pool.to_string())])
    }

    /// Assignments to one arm of one experiment.
    pub fn assignments(&self, experiment: &str, arm: &str) -> Counter {
        self.counter(
            ASSIGNMENTS,
            vec![
                Label::new("experiment", experiment.to_string()),
                Label::new("arm", arm.to_string()),
            ],
        )
    }

    /// Config reloads with `result` (`ok` or `error`).
    pub fn reloads(&self, result: &'static str) -> Counter {
        self.counter(RELOADS, vec![Label::new("result", result)])
    }

    /// The counter of one routing decision kind in one pool.
    pub fn route_decision(&self, pool: &str, decision: &'static str) -> Counter {
        self.counter(
            ROUTE_DECISIONS,
            vec![
                Label::new("pool", pool.to_string()),
                Label::new("decision", decision),
            ],
        )
    }

    /// Records a finished request into every series it belongs to.
    pub fn observe(&self, record: &RequestRecord) {
        let l = &record.labels;
        let base = || {
            vec![
                Label::new("route", SharedString::from(l.route.clone())),
                Label::new("pool", SharedString::from(l.pool.clone())),
                Label::new("backend", SharedString::from(l.backend.clone())),
                Label::new("arm", SharedString::from(l.arm.clone())),
                Label::new("endpoint", l.endpoint.as_str()),
            ]
        };
        let mut labels = base();
        labels.push(Label::new(
            "stream",
            if l.stream { "true" } else { "false" },
        ));
        labels.push(Label::new("outcome", record.outcome.as_str()));
        self.counter(REQUESTS, labels).increment(1);
        if let Some(kind) = record.error {
            self.counter(ERRORS, vec![Label::new("kind", kind.as_str())])
                .increment(1);
        }
        if record.outcome == Outcome::Rejected {
            return;
        }
        let m = &record.measurements;
        let mut duration_labels = base();
        duration_labels.push(Label::new(
            "stream",
            if l.stream { "true" } else { "false" },
        ));
        self.histogram(REQUEST_DURATION, duration_labels)
            .record(m.e2e.as_secs_f64());
        if let Some(ttfb) = m.ttfb {
            self.histogram(TTFB, base()).record(ttfb.as_secs_f64());
        }
        if let Some(ttft) = m.ttft {
            self.histogram(TTFT, base()).record(ttft.as_secs_f64());
        }
        if !m.itl.is_empty() {
            let itl = self.histogram(ITL, base());
            for gap in &m.itl {
                itl.record(gap.as_secs_f64());
            }
        }
        if let Some(tpot) = m.tpot {
            self.histogram(TPOT, base()).record(tpot.as_secs_f64());
        }
        for (name, value) in [
            (PROMPT_TOKENS, m.prompt_tokens),
            (PROMPT_CACHED_TOKENS, m.cached_tokens),
            (OUTPUT_TOKENS, m.output_tokens),
        ] {
            if let Some(n) = value {
                self.counter(name, base()).increment(n);
            }
        }
    }
}

fn pool_backend(pool: &str, backend: &str) -> Vec<Label> {
    vec![
        Label::new("pool", pool.to_string()),
        Label::new("backend", backend.to_string()),
    ]
}
