//! A pool of replicas and how one is picked: the six policies, eligibility (active health,
//! passive ejection), in-flight accounting and the retry budget.
//!
//! [`Backend`] holds the state of one replica that must survive config reloads (in-flight
//! count, health, ejection, scraped gauges); the [`BackendRegistry`] hands the same `Arc` to
//! every routing table that keeps the replica. A [`Pool`] is rebuilt with each table.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use metrics::{Counter, Gauge};
use tokio::time::Instant;

use crate::config::{
    BackendAddr, EjectionConfig, Framework, HealthConfig, Policy, PoolConfig, RetryConfig, Timeouts,
};
use crate::error::GatewayError;
use crate::proxy::request::InferenceRequest;
use crate::proxy::upstream::ConnPool;
use crate::routing::affinity::{AffinityTable, Placement, StickyMap};
use crate::routing::prefix::{prefix_keys, PrefixSpec};
use crate::routing::ring::{Bound, ReplicaSet, Ring};
use crate::telemetry::Metrics;

/// The pooled keep-alive HTTP client of one pool.
pub type UpstreamClient = Client<HttpConnector, Full<Bytes>>;

// === impl Backend ===

/// One replica and its state.
#[derive(Debug)]
pub struct Backend {
    /// Configured name (the `backend` label).
    pub name: Arc<str>,
    /// `http://host:port[/prefix]`; request paths are appended.
    pub base: String,
    /// `host:port`: where to connect.
    pub authority: String,
    /// `authority` as the `Host` header value (`None` if it cannot be one; requests then fail).
    pub host: Option<HeaderValue>,
    /// The path prefix of `base` (empty, or `/prefix`), put before every request path.
    pub path_prefix: String,
    /// Idle keep-alive connections for the request path.
    pub conns: Arc<ConnPool>,
    /// Clock origin for the millisecond timestamps below.
    epoch: Instant,
    inflight: AtomicU64,
    inflight_gauge: Gauge,
    up_gauge: Gauge,
    /// Last active probe verdict (starts up: traffic flows before the first probe).
    probe_up: AtomicBool,
    probe_failures: AtomicU32,
    probe_successes: AtomicU32,
    /// Probe in flight (so a slow probe is not doubled).
    probing: AtomicBool,
    next_probe_ms: AtomicU64,
    next_scrape_ms: AtomicU64,
    /// Consecutive failed requests.
    failures: AtomicU32,
    /// Ejections since the last success (sets the backoff).
    ejections: AtomicU32,
    ejected_until_ms: AtomicU64,
    ejections_total: Counter,
    /// Scraped from the backend's `/metrics`.
    pub scraped: Scraped,
}

/// Gauges read from a backend's own `/metrics`.
#[derive(Debug)]
pub struct Scraped {
    /// Requests waiting in the engine (`vllm:num_requests_waiting`, `sglang:num_queue_reqs`).
    pub queue: AtomicU64,
    queue_gauge: Gauge,
    kv_gauge: Gauge,
    hit_gauge: Gauge,
    /// Previous (hits, queries) counters, for vLLM's Δhits/Δqueries.
    pub last_counters: Mutex<Option<(f64, f64)>>,
}

impl Scraped {
    /// Stores one scrape's values.
    pub fn set(&self, queue: Option<f64>, kv: Option<f64>, hit_ratio: Option<f64>) {
        if let Some(q) = queue {
            self.queue.store(q.max(0.0) as u64, Ordering::Relaxed);
            self.queue_gauge.set(q);
        }
        if let Some(kv) = kv {
            self.kv_gauge.set(kv);
        }
        if let Some(hit) = hit_ratio {
            self.hit_gauge.set(hit);
        }
    }
}

impl Backend {
    fn new(pool: &str, addr: BackendAddr, epoch: Instant, metrics: &Metrics) -> Self {
        let up_gauge = metrics.backend_up(pool, &addr.name);
        up_gauge.set(1.0);
        Self {
            inflight_gauge: metrics.inflight(pool, &addr.name),
            ejections_total: metrics.backend_ejections(pool, &addr.name),
            scraped: Scraped {
                queue: AtomicU64::new(0),
                queue_gauge: metrics.backend_gauge(
                    crate::telemetry::metrics::BACKEND_QUEUE,
                    pool,
                    &addr.name,
                ),
                kv_gauge: metrics.backend_gauge(
                    crate::telemetry::metrics::BACKEND_KV,
                    pool,
                    &addr.name,
                ),
                hit_gauge: metrics.backend_gauge(
                    crate::telemetry::metrics::BACKEND_HIT,
                    pool,
                    &addr.name,
                ),
                last_counters: Mutex::new(None),
            },
            up_gauge,
            name: Arc::from(addr.name),
            path_prefix: path_prefix(&addr.base, &addr.authority),
            host: HeaderValue::try_from(addr.authority.as_str()).ok(),
            authority: addr.authority,
            base: addr.base,
            conns: Arc::default(),
            epoch,
            inflight: AtomicU64::new(0),
            probe_up: AtomicBool::new(true),
            probe_failures: AtomicU32::new(0),
            probe_successes: AtomicU32::new(0),
            probing: AtomicBool::new(false),
            next_probe_ms: AtomicU64::new(0),
            next_scrape_ms: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
        }
    }

    /// Milliseconds since the registry's epoch.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Requests in flight now.
    pub fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// In flight plus the engine's own queue (scraped): the load signal of the load-aware
    /// policies.
    pub fn load(&self) -> u64 {
        self.inflight() + self.scraped.queue.load(Ordering::Relaxed)
    }

    /// Passes its last probe.
    pub fn probe_up(&self) -> bool {
        self.probe_up.load(Ordering::Relaxed)
    }

    /// Ejected now (passive health).
    pub fn ejected(&self) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > self.now_ms()
    }

    /// Eligible for traffic: probes pass and not ejected.
    pub fn eligible(&self) -> bool {
        self.probe_up() && !self.ejected()
    }

    /// Refreshes `servelens_backend_up`.
    pub fn publish_up(&self) {
        self.up_gauge.set(if self.eligible() { 1.0 } else { 0.0 });
    }

    /// A request to this backend worked (any response the backend produced on purpose).
    pub fn record_success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        if !self.ejected() {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// A request failed in a way that says the backend is in trouble (connect error, reset,
    /// timeout, 502/503/504). Ejects it after `consecutive_failures` in a row.
    pub fn record_failure(&self, cfg: &EjectionConfig) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < cfg.consecutive_failures.max(1) || self.ejected() {
            return;
        }
        self.failures.store(0, Ordering::Relaxed);
        let n = self.ejections.fetch_add(1, Ordering::Relaxed);
        let backoff = cfg
            .base
            .saturating_mul(1u32.checked_shl(n.min(20)).unwrap_or(u32::MAX))
            .min(cfg.max);
        let until = self.now_ms() + u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX / 2);
        self.ejected_until_ms.store(until, Ordering::Relaxed);
        self.ejections_total.increment(1);
        self.publish_up();
        tracing::warn!(backend = %self.name, ?backoff, "backend ejected after consecutive failures");
    }

    /// Takes in one active probe result.
    pub fn record_probe(&self, ok: bool, cfg: &HealthConfig) {
        let was_up = self.probe_up();
        if ok {
            self.probe_failures.store(0, Ordering::Relaxed);
            let n = self.probe_successes.fetch_add(1, Ordering::Relaxed) + 1;
            if !was_up && n >= cfg.healthy_threshold.max(1) {
                self.probe_up.store(true, Ordering::Relaxed);
                self.ejected_until_ms.store(0, Ordering::Relaxed);
                self.ejections.store(0, Ordering::Relaxed);
                tracing::info!(backend = %self.name, "backend healthy again");
            }
        } else {
            self.probe_successes.store(0, Ordering::Relaxed);
            let n = self.probe_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if was_up && n >= cfg.unhealthy_threshold.max(1) {
                self.probe_up.store(false, Ordering::Relaxed);
                tracing::warn!(backend = %self.name, "backend failed its health probes");
            }
        }
        self.publish_up();
    }

    /// Claims the next probe if it is due (and none is running); `false` otherwise.
    pub fn claim_probe(&self, every: Duration) -> bool {
        claim(&self.next_probe_ms, self.now_ms(), every)
            && !self.probing.swap(true, Ordering::AcqRel)
    }

    /// Marks the claimed probe finished.
    pub fn probe_done(&self) {
        self.probing.store(false, Ordering::Release);
    }

    /// Claims the next metrics scrape if it is due.
    pub fn claim_scrape(&self, every: Duration) -> bool {
        claim(&self.next_scrape_ms, self.now_ms(), every)
    }
}

/// Moves `next` forward by `every` if it is due at `now`; true when this caller got the slot.
fn claim(next: &AtomicU64, now: u64, every: Duration) -> bool {
    let due = next.load(Ordering::Relaxed);
    if due > now {
        return false;
    }
    let every = u64::try_from(every.as_millis())
        .unwrap_or(u64::MAX / 2)
        .max(1);
    next.compare_exchange(due, now + every, Ordering::AcqRel, Ordering::Relaxed)
        .is_ok()
}

/// Counts a request in flight on a backend until dropped.
#[derive(Debug)]
pub struct InflightGuard {
    backend: Arc<Backend>,
}

impl InflightGuard {
    fn new(backend: Arc<Backend>) -> Self {
        backend.inflight.fetch_add(1, Ordering::Relaxed);
        backend.inflight_gauge.increment(1.0);
        Self { backend }
    }

    /// The backend this guard counts on.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.backend.inflight.fetch_sub(1, Ordering::Relaxed);
        self.backend.inflight_gauge.decrement(1.0);
    }
}

// === impl BackendRegistry ===

/// Keeps replica state (and upstream clients) across routing-table rebuilds.
#[derive(Debug)]
pub struct BackendRegistry {
    epoch: Instant,
    backends: Mutex<HashMap<(String, String, String), Weak<Backend>>>,
    clients: Mutex<HashMap<(String, Duration, usize, bool), UpstreamClient>>,
    /// Key placements per (pool, replica names): kept while a pool's replicas are unchanged.
    affinities: Mutex<HashMap<AffinityId, Weak<SharedAffinity>>>,
}

/// A pool's key placements, shared by successive routing tables.
type SharedAffinity = Mutex<AffinityTable>;
/// (pool name, replica names): placements stay valid while both are unchanged.
type AffinityId = (String, Vec<String>);

/// How long a prefix key stays placed after its last request.
const KEY_TTL: Duration = Duration::from_secs(600);
/// Most prefix keys remembered per pool.
const MAX_KEYS: usize = 100_000;

impl Default for BackendRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl BackendRegistry {
    /// An empty registry whose clock starts now.
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            backends: Mutex::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
            affinities: Mutex::new(HashMap::new()),
        }
    }

    fn affinity(&self, pool: &str, names: &[&str]) -> Arc<Mutex<AffinityTable>> {
        let key = (
            pool.to_string(),
            names.iter().map(|n| n.to_string()).collect(),
        );
        let mut map = self.affinities.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = map.get(&key).and_then(Weak::upgrade) {
            return existing;
        }
        let ttl = u64::try_from(KEY_TTL.as_millis()).unwrap_or(u64::MAX);
        let table = Arc::new(Mutex::new(AffinityTable::new(names.len(), ttl, MAX_KEYS)));
        map.retain(|_, weak| weak.strong_count() > 0);
        map.insert(key, Arc::downgrade(&table));
        table
    }

    fn backend(&self, pool: &str, addr: BackendAddr, metrics: &Metrics) -> Arc<Backend> {
        let key = (pool.to_string(), addr.name.clone(), addr.base.clone());
        let mut map = self.backends.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = map.get(&key).and_then(Weak::upgrade) {
            return existing;
        }
        let backend = Arc::new(Backend::new(pool, addr, self.epoch, metrics));
        map.retain(|_, weak| weak.strong_count() > 0);
        map.insert(key, Arc::downgrade(&backend));
        backend
    }

    fn client(
        &self,
        pool: &str,
        timeouts: &Timeouts,
        max_idle: usize,
        http2: bool,
    ) -> UpstreamClient {
        let key = (pool.to_string(), timeouts.connect, max_idle, http2);
        let mut map = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key)
            .or_insert_with(|| upstream_client(timeouts, max_idle, http2))
            .clone()
    }
}

/// A pooled client: keep-alive, `TCP_NODELAY`, the pool's connect timeout, idle reaping.
fn upstream_client(timeouts: &Timeouts, max_idle: usize, http2: bool) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(timeouts.connect));
    connector.set_keepalive(Some(Duration::from_secs(60)));
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(max_idle)
        .http2_only(http2)
        .build(connector)
}

/// The path part of `base` after its `http://authority` (empty when there is none).
fn path_prefix(base: &str, authority: &str) -> String {
    base.split_once(authority)
        .map(|(_, rest)| rest.trim_end_matches('/').to_string())
        .unwrap_or_default()
}

// === impl RetryBudget ===

/// Retries as a fraction of requests: each request deposits `ratio` tokens, each retry takes
/// one, the balance is capped at `burst`.
#[derive(Debug)]
pub struct RetryBudget {
    milli: AtomicI64,
    deposit: i64,
    cap: i64,
}

impl RetryBudget {
    fn new(cfg: &RetryConfig) -> Self {
        let cap = i64::from(cfg.budget_burst) * 1000;
        Self {
            milli: AtomicI64::new(cap),
            deposit: (cfg.budget_ratio * 1000.0) as i64,
            cap,
        }
    }

    /// Credits one request.
    pub fn deposit(&self) {
        let _ = self
            .milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some((b + self.deposit).min(self.cap))
            });
    }

    /// Takes one retry if the budget allows.
    pub fn try_withdraw(&self) -> bool {
        self.milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b >= 1000).then_some(b - 1000)
            })
            .is_ok()
    }
}

// === impl Pool ===

/// What a keyed policy routes by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteKey {
    /// The prefix (or session) key.
    pub key: u64,
    /// For chats, the conversation: which replica a moved conversation went to.
    pub conversation: Option<u64>,
}

/// A replica chosen for one attempt.
#[derive(Debug)]
pub struct Picked {
    /// Counts the request in flight.
    pub guard: InflightGuard,
    /// Index of the replica in the pool.
    pub index: usize,
}

/// Closed set of route decisions (`servelens_route_decisions_total{decision}`).
pub const DECISIONS: [&str; 9] = [
    "affinity",
    "placement",
    "spill_overload",
    "spill_unhealthy",
    "fallback",
    "least_outstanding",
    "power_of_two",
    "round_robin",
    "random",
];

/// A named set of replicas of one framework.
#[derive(Debug)]
pub struct Pool {
    /// Configured name (the `pool` label).
    pub name: Arc<str>,
    /// What serves it.
    pub framework: Framework,
    /// Replica choice.
    pub policy: Policy,
    /// The replicas.
    pub backends: Vec<Arc<Backend>>,
    /// The hash ring over the replicas' names.
    pub ring: Ring,
    /// Effective timeouts.
    pub timeouts: Timeouts,
    /// `Authorization` sent upstream instead of the client's.
    pub api_key: Option<HeaderValue>,
    /// Keep-alive client for probes and model listing (requests use each backend's `conns`).
    pub client: UpstreamClient,
    /// `max_idle_per_backend`: idle keep-alive connections kept per replica.
    pub max_idle: usize,
    /// Routing key extent (`prefix_hash`).
    pub prefix: PrefixSpec,
    /// Bounded-loads factor.
    pub load_factor: f64,
    /// The session key header (`session`).
    pub session_header: HeaderName,
    /// Probe settings.
    pub health: HealthConfig,
    /// Ejection settings.
    pub ejection: EjectionConfig,
    /// Retry settings.
    pub retries: RetryConfig,
    /// Retry token bucket.
    pub budget: RetryBudget,
    /// Backend `/metrics` scrape interval.
    pub scrape_every: Option<Duration>,
    /// Where prefix / session keys live.
    affinity: Arc<Mutex<AffinityTable>>,
    /// Conversations moved off an overloaded replica, and where to.
    moved: Mutex<StickyMap>,
    /// No replica is considered overloaded below this many requests in flight.
    spill_floor: f64,
    /// Clock origin shared with the backends.
    epoch: Instant,
    next: AtomicUsize,
    rng: AtomicU64,
    decisions: [Counter; DECISIONS.len()],
    retries_total: Counter,
}

impl Pool {
    /// Builds a pool from its config, reusing registered backend state.
    pub fn build(
        name: &str,
        config: &PoolConfig,
        addrs: Vec<BackendAddr>,
        base_timeouts: Timeouts,
        registry: &BackendRegistry,
        metrics: &Metrics,
    ) -> Result<Self, crate::config::ConfigError> {
        let timeouts = config.timeouts.over(base_timeouts);
        let backends: Vec<Arc<Backend>> = addrs
            .into_iter()
            .map(|addr| registry.backend(name, addr, metrics))
            .collect();
        let names: Vec<&str> = backends.iter().map(|b| &*b.name).collect();
        let api_key = match &config.api_key {
            Some(key) => Some(HeaderValue::try_from(format!("Bearer {key}")).map_err(|_| {
                crate::config::ConfigError::Invalid {
                    field: format!("pools.{name}.api_key"),
                    reason: "not a valid header value".into(),
                }
            })?),
            None => None,
        };
        let session_header =
            HeaderName::from_bytes(config.session_header.as_bytes()).map_err(|_| {
                crate::config::ConfigError::Invalid {
                    field: format!("pools.{name}.session_header"),
                    reason: "not a header name".into(),
                }
            })?;
        Ok(Self {
            name: Arc::from(name),
            framework: config.framework,
            policy: config.policy,
            affinity: registry.affinity(name, &names),
            moved: Mutex::new(StickyMap::new(
                u64::try_from(KEY_TTL.as_millis()).unwrap_or(u64::MAX),
                MAX_KEYS,
            )),
            spill_floor: config.spill_floor as f64,
            epoch: registry.epoch,
            ring: Ring::new(&names, config.vnodes),
            backends,
            timeouts,
            api_key,
            client: registry.client(name, &timeouts, config.max_idle_per_backend, false),
            max_idle: config.max_idle_per_backend,
            prefix: PrefixSpec {
                prefix_chars: config.prefix_chars,
                ..PrefixSpec::default()
            },
            load_factor: config.load_factor,
            session_header,
            health: config.health.clone(),
            ejection: config.ejection,
            retries: config.retries,
            budget: RetryBudget::new(&config.retries),
            scrape_every: config.scrape_every(),
            next: AtomicUsize::new(0),
            rng: AtomicU64::new(xxhash_rust::xxh3::xxh3_64(name.as_bytes())),
            decisions: DECISIONS.map(|d| metrics.route_decision(name, d)),
            retries_total: metrics.retries(name),
        })
    }

    /// The key this pool's policy routes `req` by, if any.
    pub fn routing_key(
        &self,
        req: &InferenceRequest<'_>,
        headers: &http::HeaderMap,
    ) -> Option<RouteKey> {
        match self.policy {
            Policy::PrefixHash => prefix_keys(&req.prompt, req.model().unwrap_or(""), self.prefix)
                .map(|k| RouteKey {
                    key: k.prefix,
                    conversation: k.conversation,
                }),
            Policy::Session => headers
                .get(&self.session_header)
                .map(|v| v.as_bytes())
                .filter(|v| !v.is_empty())
                .or_else(|| {
                    req.user
                        .as_deref()
                        .map(str::as_bytes)
                        .filter(|u| !u.is_empty())
                })
                .map(|k| RouteKey {
                    key: xxhash_rust::xxh3::xxh3_64(k),
                    conversation: None,
                }),
            _ => None,
        }
    }

    /// Counts one retry.
    pub fn count_retry(&self) {
        self.retries_total.increment(1);
    }

    /// Chooses a replica for `key`, skipping `tried`, and counts the decision.
    pub fn pick(&self, key: Option<RouteKey>, tried: &ReplicaSet) -> Result<Picked, GatewayError> {
        // Normally only eligible replicas; if every untried one is ejected, ignore ejections
        // (a pool never goes dark on passive signals alone); probes down stay down.
        let strict = |i: usize| !tried.contains(i) && self.backends[i].eligible();
        let lenient = |i: usize| !tried.contains(i) && self.backends[i].probe_up();
        let any_strict = (0..self.backends.len()).any(strict);
        let (index, decision) = if any_strict {
            self.choose(key, strict)
        } else {
            self.choose(key, lenient)
        }
        .ok_or_else(|| GatewayError::NoHealthyBackend {
            pool: self.name.to_string(),
        })?;
        let label = if any_strict { decision } else { "fallback" };
        if let Some(i) = DECISIONS.iter().position(|d| *d == label) {
            self.decisions[i].increment(1);
        }
        Ok(Picked {
            guard: InflightGuard::new(self.backends[index].clone()),
            index,
        })
    }

    fn choose(
        &self,
        key: Option<RouteKey>,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<(usize, &'static str)> {
        let n = self.backends.len();
        let load = |i: usize| self.backends[i].load();
        match (self.policy, key) {
            (Policy::PrefixHash | Policy::Session, Some(key)) => self.by_key(key, &eligible),
            // No key (empty prompt, no session): never hash it, spread by load instead.
            (Policy::PrefixHash | Policy::Session, None) => self
                .least_loaded(n, &eligible, load)
                .map(|i| (i, "fallback")),
            (Policy::LeastOutstanding, _) => self
                .least_loaded(n, &eligible, load)
                .map(|i| (i, "least_outstanding")),
            (Policy::PowerOfTwo, _) => {
                let a = self.random_eligible(n, &eligible)?;
                let b = self.random_eligible(n, &eligible).unwrap_or(a);
                Some((if load(b) < load(a) { b } else { a }, "power_of_two"))
            }
            (Policy::RoundRobin, _) => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .find(|&i| eligible(i))
                    .map(|i| (i, "round_robin"))
            }
            (Policy::Random, _) => self.random_eligible(n, &eligible).map(|i| (i, "random")),
        }
    }

    /// Where a keyed request goes.
    ///
    /// 1. A conversation that was moved off an overloaded replica stays where it was moved
    ///    while that replica is under the bound (its history is cached there).
    /// 2. Otherwise the replica its key lives on ([`AffinityTable`]), if under the bound.
    /// 3. Otherwise the next replica clockwise under the bound ([`Ring::pick`], from the
    ///    conversation's own position so conversations of one hot prefix spread out); the
    ///    conversation is remembered there.
    fn by_key(
        &self,
        key: RouteKey,
        eligible: &impl Fn(usize) -> bool,
    ) -> Option<(usize, &'static str)> {
        let now_ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let inflight = |i: usize| self.backends[i].inflight();
        let bound = Bound {
            factor: self.load_factor,
            floor: self.spill_floor,
        };
        let cap = bound.cap(
            (0..self.backends.len())
                .filter(|&i| eligible(i))
                .map(inflight),
        )?;
        let under = |i: usize| inflight(i) as f64 <= cap;
        let mut moved = self.moved.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(conversation) = key.conversation {
            if let Some(r) = moved.get(conversation, now_ms) {
                if r < self.backends.len() && eligible(r) && under(r) {
                    return Some((r, "affinity"));
                }
                moved.remove(conversation);
            }
        }
        let placement = self
            .affinity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .place(key.key, &self.ring, eligible, now_ms)?;
        let home = placement.replica();
        if under(home) {
            let label = match placement {
                Placement::Known(_) | Placement::Primary(_) => "affinity",
                Placement::Balanced(_) => "placement",
            };
            return Some((home, label));
        }
        let from = key.conversation.unwrap_or(key.key);
        let spill = self
            .ring
            .pick(from, inflight, |i| i != home && eligible(i), bound)
            .map(|p| p.replica);
        match (spill, key.conversation) {
            (Some(r), Some(conversation)) => {
                moved.set(conversation, r, now_ms);
                Some((r, "spill_overload"))
            }
            (Some(r), None) => Some((r, "spill_overload")),
            (None, _) => Some((home, "spill_overload")),
        }
    }

    fn least_loaded(
        &self,
        n: usize,
        eligible: &impl Fn(usize) -> bool,
        load: impl Fn(usize) -> u64,
    ) -> Option<usize> {
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .map(|k| (start + k) % n)
            .filter(|&i| eligible(i))
            .min_by_key(|&i| load(i))
    }

    fn random_eligible(&self, n: usize, eligible: &impl Fn(usize) -> bool) -> Option<usize> {
        let candidates = (0..n).filter(|&i| eligible(i)).count();
        if candidates == 0 {
            return None;
        }
        let r = splitmix(&self.rng) % candidates as u64;
        (0..n).filter(|&i| eligible(i)).nth(r as usize)
    }
}

/// Next value of a shared splitmix64 stream.
fn splitmix(state: &AtomicU64) -> u64 {
    let mut z = state
        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendSpec;

    fn pool(policy: Policy, n: usize) -> Pool {
        let mut config = PoolConfig::new(
            Framework::Vllm,
            (0..n)
                .map(|i| BackendSpec::Url(format!("http://127.0.0.1:{}", 9000 + i)))
                .collect(),
        );
        config.policy = policy;
        let addrs = config
            .backends
            .iter()
            .map(|b| b.resolve("x"))
            .collect::<Result<Vec<_>, _>>()
            .expect("valid");
        Pool::build(
            "p",
            &config,
            addrs,
            Timeouts::default(),
            &BackendRegistry::new(),
            &Metrics::new(),
        )
        .expect("pool")
    }

    #[tokio::test]
    async fn round_robin_rotates_and_least_outstanding_avoids_busy() {
        let rr = pool(Policy::RoundRobin, 3);
        let picks: Vec<usize> = (0..6)
            .map(|_| rr.pick(None, &ReplicaSet::new()).map(|p| p.index))
            .collect::<Result<_, _>>()
            .expect("picks");
        assert_eq!(picks[..3], picks[3..]);
        let lo = pool(Policy::LeastOutstanding, 3);
        let held: Vec<Picked> = (0..2)
            .map(|_| lo.pick(None, &ReplicaSet::new()).expect("pick"))
            .collect();
        let third = lo.pick(None, &ReplicaSet::new()).expect("pick");
        assert!(held.iter().all(|p| p.index != third.index));
    }

    #[tokio::test]
    async fn prefix_hash_without_a_key_spreads_by_load() {
        let p = pool(Policy::PrefixHash, 4);
        let held: Vec<Picked> = (0..4)
            .map(|_| p.pick(None, &ReplicaSet::new()).expect("pick"))
            .collect();
        let mut used: Vec<usize> = held.iter().map(|h| h.index).collect();
        used.sort_unstable();
        assert_eq!(
            used,
            vec![0, 1, 2, 3],
            "an empty key never pins traffic to one replica"
        );
    }

    const KEY: RouteKey = RouteKey {
        key: 7,
        conversation: None,
    };

    #[tokio::test]
    async fn tried_and_ejected_replicas_are_skipped_then_fallback() {
        let p = pool(Policy::PrefixHash, 2);
        let first = p.pick(Some(KEY), &ReplicaSet::new()).expect("pick");
        let mut tried = ReplicaSet::new();
        tried.insert(first.index);
        let second = p.pick(Some(KEY), &tried).expect("pick");
        assert_ne!(first.index, second.index);
        let cfg = EjectionConfig {
            consecutive_failures: 1,
            ..EjectionConfig::default()
        };
        p.backends[0].record_failure(&cfg);
        p.backends[1].record_failure(&cfg);
        assert!(p.backends.iter().all(|b| b.ejected()));
        assert!(
            p.pick(Some(KEY), &ReplicaSet::new()).is_ok(),
            "all ejected: fail open"
        );
        p.backends[0].record_probe(
            false,
            &HealthConfig {
                unhealthy_threshold: 1,
                ..HealthConfig::default()
            },
        );
        p.backends[1].record_probe(
            false,
            &HealthConfig {
                unhealthy_threshold: 1,
                ..HealthConfig::default()
            },
        );
        let err = p.pick(Some(KEY), &ReplicaSet::new()).expect_err("all down");
        assert_eq!(err.status().as_u16(), 503);
    }

    #[test]
    fn retry_budget_is_a_fraction_of_requests() {
        let budget = RetryBudget::new(&RetryConfig {
            attempts: 2,
            budget_ratio: 0.5,
            budget_burst: 2,
        });
        assert!(budget.try_withdraw() && budget.try_withdraw());
        assert!(!budget.try_withdraw(), "burst spent");
        budget.deposit();
        assert!(!budget.try_withdraw(), "half a token");
        budget.deposit();
        assert!(budget.try_withdraw());
    }
}
