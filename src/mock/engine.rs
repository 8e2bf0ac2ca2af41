//! The simulated engine of one replica: slots (`max_num_seqs`) with a FIFO waiting queue, the
//! prefix cache, KV block accounting and the counters `/metrics` reports.
//!
//! Admission uses tokio's fair semaphore, so waiting requests are served in arrival order and a
//! request abandoned while it waits gives up its place cleanly. Everything else is a short
//! critical section under one `Mutex` (never held across an await).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::mock::cache::PrefixCache;
use crate::mock::config::MockConfig;

/// Histogram bounds and counts, Prometheus-style (cumulative at render time).
#[derive(Debug, Clone)]
pub struct Histogram {
    /// Upper bounds, ascending (`+Inf` implied).
    pub bounds: &'static [f64],
    /// Observations per bucket (non-cumulative), one more than `bounds` for `+Inf`.
    pub counts: Vec<u64>,
    /// Sum of observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// An empty histogram.
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    /// This histogram plus another with the same bounds.
    pub fn merged(&self, other: &Histogram) -> Histogram {
        Histogram {
            bounds: self.bounds,
            counts: self
                .counts
                .iter()
                .zip(&other.counts)
                .map(|(a, b)| a + b)
                .collect(),
            sum: self.sum + other.sum,
            count: self.count + other.count,
        }
    }

    /// Adds one observation.
    pub fn observe(&mut self, value: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += value;
        self.count += 1;
    }
}

/// vLLM's `TIME_TO_FIRST_TOKEN_BUCKETS`.
pub const VLLM_TTFT: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
/// vLLM's `INTER_TOKEN_LATENCY_BUCKETS`.
pub const VLLM_ITL: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
/// vLLM's `REQUEST_LATENCY_BUCKETS`.
pub const VLLM_E2E: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
/// SGLang's default TTFT buckets.
pub const SGLANG_TTFT: &[f64] = &[
    0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 200.0,
    400.0,
];
/// SGLang's default ITL buckets.
pub const SGLANG_ITL: &[f64] = &[
    0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025, 0.030, 0.035, 0.040, 0.060, 0.080,
    0.100, 0.200, 0.400, 0.600, 0.800, 1.0, 2.0, 4.0, 6.0, 8.0,
];
/// SGLang's default E2E buckets.
pub const SGLANG_E2E: &[f64] = &[
    0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 200.0,
    400.0, 600.0, 1200.0, 1800.0, 2400.0,
];

/// How a simulated request ended (vLLM's `finished_reason` label values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Finished {
    /// EOS.
    Stop,
    /// `max_tokens`.
    Length,
    /// The client went away.
    Abort,
    /// A fault ended it.
    Error,
}

impl Finished {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Abort => "abort",
            Self::Error => "error",
        }
    }
}

/// Counters and histograms behind `/metrics`. Pairs are indexed by streaming
/// (`[non-streaming, streaming]`): SGLang labels them `is_streaming`, vLLM sums them.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Prompt tokens prefilled (all of them, cached included, as vLLM counts).
    pub prompt_tokens: [u64; 2],
    /// Tokens generated.
    pub generation_tokens: [u64; 2],
    /// Prompt tokens served from the cache.
    pub cached_tokens: [u64; 2],
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_queries: u64,
    /// Prompt tokens found in the prefix cache.
    pub prefix_hits: u64,
    /// Requests that reached the engine.
    pub requests: u64,
    /// Finished requests by reason.
    pub finished: BTreeMap<Finished, u64>,
    /// (hits, queries) of the most recent requests (SGLang's `cache_hit_rate` window).
    pub recent_cache: VecDeque<(u64, u64)>,
    /// Time to first token.
    pub ttft: [Histogram; 2],
    /// Gap between decode steps.
    pub itl: Histogram,
    /// Whole request.
    pub e2e: [Histogram; 2],
    /// Time waiting for a slot.
    pub queue: Histogram,
    /// Decode time per output token, per request.
    pub tpot: Histogram,
    /// Which `is_streaming` label values have been used (SGLang labels).
    pub streaming_seen: [bool; 2],
}

const RECENT_WINDOW: usize = 128;

/// The simulated engine of one replica.
#[derive(Debug)]
pub struct Engine {
    /// The replica's configuration.
    pub config: MockConfig,
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    state: Mutex<State>,
    /// Unix time of start (for `_created` series).
    pub started: f64,
}

#[derive(Debug)]
struct State {
    cache: PrefixCache,
    kv_blocks_in_use: u64,
    stats: Stats,
    next_request: u64,
}

/// A running sequence's slot; released (waking the next waiter) on drop.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Engine {
    /// An idle engine.
    pub fn new(config: MockConfig) -> Arc<Self> {
        let (ttft, itl, e2e) = match config.framework {
            crate::mock::MockFramework::Vllm => (VLLM_TTFT, VLLM_ITL, VLLM_E2E),
            crate::mock::MockFramework::Sglang => (SGLANG_TTFT, SGLANG_ITL, SGLANG_E2E),
        };
        let stats = Stats {
            prompt_tokens: [0; 2],
            generation_tokens: [0; 2],
            cached_tokens: [0; 2],
            prefix_queries: 0,
            prefix_hits: 0,
            requests: 0,
            finished: BTreeMap::new(),
            recent_cache: VecDeque::new(),
            ttft: [Histogram::new(ttft), Histogram::new(ttft)],
            itl: Histogram::new(itl),
            e2e: [Histogram::new(e2e), Histogram::new(e2e)],
            queue: Histogram::new(e2e),
            tpot: Histogram::new(itl),
            streaming_seen: [false; 2],
        };
        let cache = PrefixCache::new(config.cache.block_tokens, config.cache.capacity_blocks);
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(config.latency.max_num_seqs.max(1))),
            waiting: AtomicUsize::new(0),
            state: Mutex::new(State {
                cache,
                kv_blocks_in_use: 0,
                stats,
                next_request: 0,
            }),
            started,
            config,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave these counters inconsistent in a way
        // that matters for a simulator; keep serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A fresh per-replica request number (ids, seeds).
    pub fn next_request(&self) -> u64 {
        let mut state = self.state();
        state.next_request += 1;
        state.next_request
    }

    /// Waits (FIFO) for a free slot among `max_num_seqs`.
    pub async fn admit(&self) -> Slot {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Slot { _permit: permit };
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = WaitingGuard(&self.waiting);
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the engine never closes its slot semaphore");
        Slot { _permit: permit }
    }

    /// Sequences running now.
    pub fn running(&self) -> usize {
        self.config
            .latency
            .max_num_seqs
            .max(1)
            .saturating_sub(self.slots.available_permits())
    }

    /// Requests waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Looks the prompt up in the prefix cache; returns the cached token count and counts it.
    pub fn prefill(&self, blocks: &[u64], prompt_tokens: u64, streaming: bool) -> u64 {
        let mut state = self.state();
        let cached = state.cache.lookup(blocks, prompt_tokens);
        let stats = &mut state.stats;
        stats.requests += 1;
        stats.streaming_seen[usize::from(streaming)] = true;
        stats.prompt_tokens[usize::from(streaming)] += prompt_tokens;
        stats.cached_tokens[usize::from(streaming)] += cached;
        stats.prefix_queries += prompt_tokens;
        stats.prefix_hits += cached;
        stats.recent_cache.push_back((cached, prompt_tokens));
        if stats.recent_cache.len() > RECENT_WINDOW {
            stats.recent_cache.pop_front();
        }
        cached
    }

    /// Caches these blocks (after prefill, and the prompt + answer at the end).
    pub fn cache_blocks(&self, blocks: &[u64]) {
        self.state().cache.insert(blocks);
    }

    /// Adjusts the KV blocks held by running sequences.
    pub fn kv_blocks(&self, delta: i64) {
        let mut state = self.state();
        state.kv_blocks_in_use = state.kv_blocks_in_use.saturating_add_signed(delta);
    }

    /// Fraction of KV blocks held by running sequences.
    pub fn kv_usage(&self) -> f64 {
        let capacity = self.config.cache.capacity_blocks.max(1) as f64;
        (self.state().kv_blocks_in_use as f64 / capacity).min(1.0)
    }

    /// Blocks held by running sequences.
    pub fn kv_blocks_in_use(&self) -> u64 {
        self.state().kv_blocks_in_use
    }

    /// Counts generated tokens and one decode gap.
    pub fn decoded(&self, tokens: u64, gap: Option<Duration>, streaming: bool) {
        let mut state = self.state();
        state.stats.generation_tokens[usize::from(streaming)] += tokens;
        if let Some(gap) = gap {
            state.stats.itl.observe(gap.as_secs_f64());
        }
    }

    /// Records a finished (or aborted) request.
    pub fn finished(&self, end: RequestEnd) {
        let mut state = self.state();
        let stats = &mut state.stats;
        *stats.finished.entry(end.reason).or_default() += 1;
        let i = usize::from(end.streaming);
        stats.streaming_seen[i] = true;
        stats.queue.observe(end.queue.as_secs_f64());
        if let Some(ttft) = end.ttft {
            stats.ttft[i].observe(ttft.as_secs_f64());
            if end.output_tokens > 1 {
                let per_token =
                    end.e2e.saturating_sub(ttft).as_secs_f64() / (end.output_tokens - 1) as f64;
                stats.tpot.observe(per_token);
            }
        }
        if end.reason != Finished::Abort {
            stats.e2e[i].observe(end.e2e.as_secs_f64());
        }
    }

    /// A copy of the counters.
    pub fn stats(&self) -> Stats {
        self.state().stats.clone()
    }

    /// Blocks in the prefix cache.
    pub fn cached_blocks(&self) -> usize {
        self.state().cache.len()
    }
}

/// What [`Engine::finished`] records.
#[derive(Debug, Clone, Copy)]
pub struct RequestEnd {
    /// Why it ended.
    pub reason: Finished,
    /// Streaming request (SGLang's `is_streaming` label).
    pub streaming: bool,
    /// Time waiting for a slot.
    pub queue: Duration,
    /// Time to first token, if it got that far.
    pub ttft: Option<Duration>,
    /// Arrival to end.
    pub e2e: Duration,
    /// Tokens generated.
    pub output_tokens: u64,
}

struct WaitingGuard<'a>(&'a AtomicUsize);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::{MockConfig, MockFramework};

    #[tokio::test]
    async fn slots_queue_in_order_and_release_on_drop() {
        let mut config = MockConfig::local(MockFramework::Vllm);
        config.latency.max_num_seqs = 2;
        let engine = Engine::new(config);
        let a = engine.admit().await;
        let _b = engine.admit().await;
        assert_eq!(engine.running(), 2);
        let e2 = engine.clone();
        let waiter = tokio::spawn(async move { e2.admit().await });
        tokio::task::yield_now().await;
        assert_eq!(engine.waiting(), 1);
        drop(a);
        let _c = waiter.await.expect("admitted");
        assert_eq!(engine.waiting(), 0);
        assert_eq!(engine.running(), 2);
    }

    #[test]
    fn histogram_buckets_by_upper_bound() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.1, 0.5, 5.0] {
            h.observe(v);
        }
        assert_eq!(h.counts, vec![2, 1, 1]);
        assert_eq!(h.count, 4);
    }
}
