//! `/metrics` in each framework's own names, labels and number formatting, as written by
//! Python's `prometheus_client`: labels sorted by name, counters as `<name>_total` plus a
//! `<name>_created` gauge, floats like `12.0` and Go-style exponents past six integer digits
//! (`1.84352e+06`).

use std::fmt::Write as _;

use crate::mock::engine::{Engine, Finished, Histogram, Stats};
use crate::mock::MockFramework;

/// The exposition page of one replica.
pub fn render(engine: &Engine) -> String {
    let stats = engine.stats();
    match engine.config.framework {
        MockFramework::Vllm => vllm(engine, &stats),
        MockFramework::Sglang => sglang(engine, &stats),
    }
}

/// prometheus_client's `floatToGoString`.
pub fn go_float(value: f64) -> String {
    if value.is_nan() {
        return "NaN".to_string();
    }
    if value.is_infinite() {
        return if value > 0.0 { "+Inf" } else { "-Inf" }.to_string();
    }
    let repr = python_repr(value);
    if value > 0.0 {
        if let Some(dot) = repr.find('.') {
            if dot > 6 && !repr.contains('e') {
                let digits = format!("{}{}", &repr[1..dot], &repr[dot + 1..]);
                let mantissa = format!("{}.{}", &repr[..1], digits);
                let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
                return format!("{mantissa}e+0{}", dot - 1);
            }
        }
    }
    repr
}

/// Python's `repr(float)`: shortest round-trip digits, `.0` on integers, exponent outside
/// `1e-4 ..= 1e16`.
fn python_repr(value: f64) -> String {
    let abs = value.abs();
    if abs != 0.0 && !(1e-4..1e16).contains(&abs) {
        let s = format!("{value:e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    let s = format!("{value}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

struct Page {
    out: String,
}

impl Page {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let mut sorted: Vec<&(&str, &str)> = labels.iter().collect();
        sorted.sort_by_key(|(k, _)| *k);
        let rendered: Vec<String> = sorted
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let _ = writeln!(
            self.out,
            "{name}{{{}}} {}",
            rendered.join(","),
            go_float(value)
        );
    }

    fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.family(name, "gauge", help);
        self.sample(name, labels, value);
    }

    /// A counter family: `_total` and `_created`, one sample per label set.
    fn counter(
        &mut self,
        name: &str,
        help: &str,
        samples: &[(Vec<(&str, &str)>, f64)],
        created: f64,
    ) {
        self.family(&format!("{name}_total"), "counter", help);
        for (labels, value) in samples {
            self.sample(&format!("{name}_total"), labels, *value);
        }
        self.family(&format!("{name}_created"), "gauge", help);
        for (labels, _) in samples {
            self.sample(&format!("{name}_created"), labels, created);
        }
    }

    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        sets: &[(Vec<(&str, &str)>, Histogram)],
        created: f64,
    ) {
        self.family(name, "histogram", help);
        for (labels, h) in sets {
            let mut cumulative = 0;
            for (i, count) in h.counts.iter().enumerate() {
                cumulative += count;
                let le = h.bounds.get(i).map_or("+Inf".to_string(), |b| go_float(*b));
                let mut with_le = labels.clone();
                with_le.push(("le", &le));
                self.sample(&format!("{name}_bucket"), &with_le, cumulative as f64);
            }
            self.sample(&format!("{name}_count"), labels, h.count as f64);
            self.sample(&format!("{name}_sum"), labels, h.sum);
        }
        self.family(&format!("{name}_created"), "gauge", help);
        for (labels, _) in sets {
            self.sample(&format!("{name}_created"), labels, created);
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn vllm(engine: &Engine, s: &Stats) -> String {
    let model = engine.config.model.as_str();
    let base = vec![("engine", "0"), ("model_name", model)];
    let created = engine.started;
    let sum = |pair: [u64; 2]| pair[0] + pair[1];
    let mut p = Page { out: String::new() };
    p.gauge(
        "vllm:num_requests_running",
        "Number of requests in model execution batches.",
        &base,
        engine.running() as f64,
    );
    p.gauge(
        "vllm:num_requests_waiting",
        "Number of requests waiting to be processed.",
        &base,
        engine.waiting() as f64,
    );
    p.family(
        "vllm:num_requests_waiting_by_reason",
        "gauge",
        "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for scheduling capacity; 'deferred' = deferred by transient constraints (LoRA budget, KV transfer, blocked status). Sum of all reasons equals vllm:num_requests_waiting.",
    );
    let capacity = [
        ("engine", "0"),
        ("model_name", model),
        ("reason", "capacity"),
    ];
    let deferred = [
        ("engine", "0"),
        ("model_name", model),
        ("reason", "deferred"),
    ];
    p.sample(
        "vllm:num_requests_waiting_by_reason",
        &capacity,
        engine.waiting() as f64,
    );
    p.sample("vllm:num_requests_waiting_by_reason", &deferred, 0.0);
    p.gauge(
        "vllm:kv_cache_usage_perc",
        "KV-cache usage. 1 means 100 percent usage.",
        &base,
        engine.kv_usage(),
    );
    let one = |v: u64| vec![(base.clone(), v as f64)];
    p.counter(
        "vllm:prefix_cache_queries",
        "Prefix cache queries, in terms of number of queried tokens.",
        &one(s.prefix_queries),
        created,
    );
    p.counter(
        "vllm:prefix_cache_hits",
        "Prefix cache hits, in terms of number of cached tokens.",
        &one(s.prefix_hits),
        created,
    );
    p.counter(
        "vllm:num_preemptions",
        "Cumulative number of preemption from the engine.",
        &one(0),
        created,
    );
    p.counter(
        "vllm:prompt_tokens",
        "Number of prefill tokens processed.",
        &one(sum(s.prompt_tokens)),
        created,
    );
    p.counter(
        "vllm:prompt_tokens_cached",
        "Number of cached prompt tokens (local + external).",
        &one(sum(s.cached_tokens)),
        created,
    );
    p.counter(
        "vllm:generation_tokens",
        "Number of generation tokens processed.",
        &one(sum(s.generation_tokens)),
        created,
    );
    let reasons: Vec<(Vec<(&str, &str)>, f64)> = [
        Finished::Stop,
        Finished::Length,
        Finished::Abort,
        Finished::Error,
    ]
    .iter()
    .map(|r| {
        let labels = vec![
            ("engine", "0"),
            ("finished_reason", r.as_str()),
            ("model_name", model),
        ];
        (labels, s.finished.get(r).copied().unwrap_or(0) as f64)
    })
    .collect();
    p.counter(
        "vllm:request_success",
        "Count of successfully processed requests.",
        &reasons,
        created,
    );
    let ttft = s.ttft[0].merged(&s.ttft[1]);
    let e2e = s.e2e[0].merged(&s.e2e[1]);
    let h = |hist: &Histogram| vec![(base.clone(), hist.clone())];
    p.histogram(
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        &h(&ttft),
        created,
    );
    p.histogram(
        "vllm:inter_token_latency_seconds",
        "Histogram of inter-token latency in seconds.",
        &h(&s.itl),
        created,
    );
    p.histogram(
        "vllm:request_time_per_output_token_seconds",
        "Histogram of time_per_output_token_seconds per request.",
        &h(&s.tpot),
        created,
    );
    p.histogram(
        "vllm:e2e_request_latency_seconds",
        "Histogram of e2e request latency in seconds.",
        &h(&e2e),
        created,
    );
    p.histogram(
        "vllm:request_queue_time_seconds",
        "Histogram of time spent in WAITING phase for request.",
        &h(&s.queue),
        created,
    );
    p.out
}

fn sglang(engine: &Engine, s: &Stats) -> String {
    let model = engine.config.model.as_str();
    let scheduler = [
        ("engine_type", "unified"),
        ("model_name", model),
        ("moe_ep_rank", "0"),
        ("pp_rank", "0"),
        ("tp_rank", "0"),
    ];
    let tokenizer = vec![("engine_type", "unified"), ("model_name", model)];
    // prometheus_client shows a labelled child only once it has been used.
    let seen: Vec<usize> = (0..2).filter(|&i| s.streaming_seen[i]).collect();
    let streaming = |i: usize| -> Vec<(&str, &str)> {
        let flag = if i == 1 { "true" } else { "false" };
        vec![
            ("engine_type", "unified"),
            ("is_streaming", flag),
            ("model_name", model),
        ]
    };
    let per_flag = |pair: [u64; 2]| -> Vec<(Vec<(&str, &str)>, f64)> {
        seen.iter()
            .map(|&i| (streaming(i), pair[i] as f64))
            .collect()
    };
    let per_flag_hist = |pair: &'_ [Histogram; 2]| -> Vec<(Vec<(&str, &str)>, Histogram)> {
        seen.iter()
            .map(|&i| (streaming(i), pair[i].clone()))
            .collect()
    };
    let created = engine.started;
    let (hits, queries) = s
        .recent_cache
        .iter()
        .fold((0u64, 0u64), |(h, q), (hit, query)| (h + hit, q + query));
    let hit_rate = if queries == 0 {
        0.0
    } else {
        hits as f64 / queries as f64
    };
    let block_tokens = engine.config.cache.block_tokens as f64;
    let capacity_tokens = engine.config.cache.capacity_blocks as f64 * block_tokens;
    let used_tokens = engine.kv_blocks_in_use() as f64 * block_tokens;
    let mut p = Page { out: String::new() };
    p.gauge(
        "sglang:num_running_reqs",
        "The number of running requests.",
        &scheduler,
        engine.running() as f64,
    );
    p.gauge(
        "sglang:num_queue_reqs",
        "The number of requests in the waiting queue.",
        &scheduler,
        engine.waiting() as f64,
    );
    p.gauge(
        "sglang:num_grammar_queue_reqs",
        "The number of requests in the grammar waiting queue.",
        &scheduler,
        0.0,
    );
    p.gauge(
        "sglang:gen_throughput",
        "The generation throughput (token/s).",
        &scheduler,
        0.0,
    );
    p.gauge(
        "sglang:cache_hit_rate",
        "The prefix cache hit rate.",
        &scheduler,
        hit_rate,
    );
    p.gauge(
        "sglang:token_usage",
        "The token usage.",
        &scheduler,
        engine.kv_usage(),
    );
    p.gauge(
        "sglang:num_used_tokens",
        "The number of used tokens.",
        &scheduler,
        used_tokens,
    );
    p.gauge(
        "sglang:max_total_num_tokens",
        "Maximum total number of tokens in the KV cache pool.",
        &scheduler,
        capacity_tokens,
    );
    p.counter(
        "sglang:prompt_tokens",
        "Number of prefill tokens processed.",
        &per_flag(s.prompt_tokens),
        created,
    );
    p.counter(
        "sglang:generation_tokens",
        "Number of generation tokens processed.",
        &per_flag(s.generation_tokens),
        created,
    );
    p.counter(
        "sglang:cached_tokens",
        "Number of cached prompt tokens.",
        &per_flag(s.cached_tokens),
        created,
    );
    p.counter(
        "sglang:num_requests",
        "Number of requests processed.",
        &[(tokenizer.clone(), s.requests as f64)],
        created,
    );
    let aborted = s.finished.get(&Finished::Abort).copied().unwrap_or(0);
    p.counter(
        "sglang:num_aborted_requests",
        "Number of requests aborted.",
        &[(tokenizer.clone(), aborted as f64)],
        created,
    );
    let ttft = per_flag_hist(&s.ttft);
    let e2e = per_flag_hist(&s.e2e);
    p.histogram(
        "sglang:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        &ttft,
        created,
    );
    p.histogram(
        "sglang:inter_token_latency_seconds",
        "Histogram of inter-token latency in seconds.",
        &[(tokenizer, s.itl.clone())],
        created,
    );
    p.histogram(
        "sglang:e2e_request_latency_seconds",
        "Histogram of End-to-end request latency in seconds",
        &e2e,
        created,
    );
    p.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_like_prometheus_client() {
        assert_eq!(go_float(12.0), "12.0");
        assert_eq!(go_float(0.4173), "0.4173");
        assert_eq!(go_float(1_843_520.0), "1.84352e+06");
        assert_eq!(go_float(412_377.0), "412377.0");
        assert_eq!(go_float(1_795_335_231.355_631), "1.795335231355631e+09");
        assert_eq!(go_float(f64::INFINITY), "+Inf");
        assert_eq!(go_float(0.0), "0.0");
        assert_eq!(go_float(0.00002), "2e-05");
    }
}
