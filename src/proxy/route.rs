//! Step 2, *route*: the routing table (model → route → pool) and replica choice inside a pool.
//!
//! A [`RoutingTable`] is everything derived from the config that the request path reads: routes,
//! pools, their backends and their pooled upstream clients. It is immutable once built and is
//! swapped whole on reload, so the request path never locks. Replica state that must outlive a
//! reload (in-flight counts) lives in [`Backend`], shared by `Arc`.
//!
//! Policies here: `least_outstanding` (fewest in flight; ties rotate) and `round_robin`.
//! Prefix-affine and experiment routing plug in at [`Pool::pick`] and [`RoutingTable::route`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use metrics::{Counter, Gauge};

use crate::config::{ConfigError, Framework, GatewayConfig, Policy, Timeouts, ANY_MODEL};
use crate::error::GatewayError;
use crate::openai::Endpoint;
use crate::proxy::request::InferenceRequest;
use crate::telemetry::Metrics;

/// The pooled keep-alive HTTP client of one pool.
pub type UpstreamClient = Client<HttpConnector, Full<Bytes>>;

/// One replica.
#[derive(Debug)]
pub struct Backend {
    /// Configured name (the `backend` label).
    pub name: Arc<str>,
    /// `http://host:port[/prefix]`; request paths are appended.
    pub base: String,
    /// Requests in flight through this gateway.
    inflight: AtomicU64,
    /// `servelens_inflight_requests` for this backend.
    inflight_gauge: Gauge,
}

impl Backend {
    /// Requests in flight now.
    pub fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::Relaxed)
    }
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
    /// Effective timeouts.
    pub timeouts: Timeouts,
    /// `Authorization` sent upstream instead of the client's.
    pub api_key: Option<HeaderValue>,
    /// Pooled keep-alive connections to the replicas.
    pub client: UpstreamClient,
    /// Rotation cursor (round robin; tie-break for least outstanding).
    next: AtomicUsize,
    /// `servelens_route_decisions_total{pool, decision=<policy>}`.
    decisions: Counter,
}

impl Pool {
    /// Chooses a replica and counts the request in flight on it.
    pub fn pick(&self) -> Result<InflightGuard, GatewayError> {
        let n = self.backends.len();
        if n == 0 {
            return Err(GatewayError::NoHealthyBackend {
                pool: self.name.to_string(),
            });
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let chosen = match self.policy {
            Policy::RoundRobin => start,
            Policy::LeastOutstanding => (0..n)
                .map(|i| (start + i) % n)
                .min_by_key(|&i| self.backends[i].inflight())
                .unwrap_or(start),
        };
        self.decisions.increment(1);
        Ok(InflightGuard::new(self.backends[chosen].clone()))
    }
}

/// A configured model and the pool that serves it.
#[derive(Debug)]
pub struct Route {
    /// The model name as configured (`*` for the catch-all); the `route` label.
    pub name: Arc<str>,
    /// The pool.
    pub pool: Arc<Pool>,
}

/// Everything the request path reads from the config.
#[derive(Debug)]
pub struct RoutingTable {
    by_model: HashMap<String, Arc<Route>>,
    any: Option<Arc<Route>>,
    /// Routes in config order (for `/v1/models`).
    routes: Vec<Arc<Route>>,
    pools: BTreeMap<String, Arc<Pool>>,
}

impl RoutingTable {
    /// Builds the table (clients, backends, counters) from a validated config.
    pub fn build(config: &GatewayConfig, metrics: &Metrics) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut pools = BTreeMap::new();
        for (name, pool) in &config.pools {
            let timeouts = pool.timeouts.over(config.timeouts);
            let mut backends = Vec::with_capacity(pool.backends.len());
            for (i, spec) in pool.backends.iter().enumerate() {
                let addr = spec.resolve(&format!("pools.{name}.backends[{i}]"))?;
                metrics.backend_up(name, &addr.name).set(1.0);
                backends.push(Arc::new(Backend {
                    inflight_gauge: metrics.inflight(name, &addr.name),
                    name: Arc::from(addr.name),
                    base: addr.base,
                    inflight: AtomicU64::new(0),
                }));
            }
            let api_key = match &pool.api_key {
                Some(key) => {
                    Some(HeaderValue::try_from(format!("Bearer {key}")).map_err(|_| {
                        ConfigError::Invalid {
                            field: format!("pools.{name}.api_key"),
                            reason: "not a valid header value".into(),
                        }
                    })?)
                }
                None => None,
            };
            let pool = Pool {
                name: Arc::from(name.as_str()),
                framework: pool.framework,
                policy: pool.policy,
                backends,
                timeouts,
                api_key,
                client: upstream_client(&timeouts, pool.max_idle_per_backend),
                next: AtomicUsize::new(0),
                decisions: metrics.route_decision(name, pool.policy.as_str()),
            };
            pools.insert(name.clone(), Arc::new(pool));
        }
        let mut by_model = HashMap::new();
        let mut any = None;
        let mut routes = Vec::new();
        for route in &config.routes {
            let pool = pools
                .get(&route.pool)
                .cloned()
                .ok_or_else(|| ConfigError::Invalid {
                    field: "routes".into(),
                    reason: format!("no pool named `{}`", route.pool),
                })?;
            let built = Arc::new(Route {
                name: Arc::from(route.model.as_str()),
                pool,
            });
            if route.model == ANY_MODEL {
                any = Some(built.clone());
            } else {
                by_model.insert(route.model.clone(), built.clone());
            }
            routes.push(built);
        }
        Ok(Self {
            by_model,
            any,
            routes,
            pools,
        })
    }

    /// The route for a request: its `model`, else the catch-all. SGLang `/generate` bodies
    /// usually carry no `model`; they go to the catch-all or else the first SGLang route.
    pub fn route(&self, req: &InferenceRequest<'_>) -> Result<Arc<Route>, GatewayError> {
        match req.model() {
            Some(model) => self
                .by_model
                .get(model)
                .or(self.any.as_ref())
                .cloned()
                .ok_or_else(|| GatewayError::UnknownModel(model.to_string())),
            None => self
                .any
                .clone()
                .or_else(|| {
                    (req.endpoint == Endpoint::Generate)
                        .then(|| {
                            self.routes
                                .iter()
                                .find(|r| r.pool.framework == Framework::Sglang)
                                .cloned()
                        })
                        .flatten()
                })
                .ok_or(GatewayError::MissingModel),
        }
    }

    /// Routes in config order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// Pools by name.
    pub fn pools(&self) -> &BTreeMap<String, Arc<Pool>> {
        &self.pools
    }
}

/// A pooled client: keep-alive, `TCP_NODELAY`, the pool's connect timeout, idle reaping.
fn upstream_client(timeouts: &Timeouts, max_idle: usize) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(timeouts.connect));
    connector.set_keepalive(Some(std::time::Duration::from_secs(60)));
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .pool_max_idle_per_host(max_idle)
        .build(connector)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(policy: &str) -> RoutingTable {
        let text = format!(
            r#"
            [pools.a]
            policy = "{policy}"
            backends = ["http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"]
            [pools.s]
            framework = "sglang"
            backends = ["http://127.0.0.1:4"]
            [[routes]]
            model = "m"
            pool = "a"
            [[routes]]
            model = "s"
            pool = "s"
            "#
        );
        let config = GatewayConfig::from_toml(&text).expect("valid");
        RoutingTable::build(&config, &Metrics::new()).expect("builds")
    }

    fn parse(endpoint: Endpoint, body: &str) -> InferenceRequest<'_> {
        InferenceRequest::parse(endpoint, body.as_bytes()).expect("valid")
    }

    #[tokio::test]
    async fn round_robin_rotates() {
        let t = table("round_robin");
        let pool = &t.pools()["a"];
        let names: Vec<_> = (0..6)
            .map(|_| pool.pick().map(|g| g.backend().name.to_string()))
            .collect::<Result<_, _>>()
            .expect("backends");
        assert_eq!(names[..3], names[3..]);
        assert_eq!(
            names.iter().collect::<std::collections::HashSet<_>>().len(),
            3
        );
    }

    #[tokio::test]
    async fn least_outstanding_avoids_busy_replicas() {
        let t = table("least_outstanding");
        let pool = &t.pools()["a"];
        let held: Vec<_> = (0..2).map(|_| pool.pick().expect("backend")).collect();
        let third = pool.pick().expect("backend");
        assert!(held
            .iter()
            .all(|g| g.backend().name != third.backend().name));
        assert_eq!(third.backend().inflight(), 1);
        drop(held);
        assert!(pool.backends.iter().filter(|b| b.inflight() == 0).count() == 2);
    }

    #[tokio::test]
    async fn models_route_and_unknown_models_fail() {
        let t = table("round_robin");
        let route = t
            .route(&parse(Endpoint::ChatCompletions, r#"{"model":"m"}"#))
            .expect("routed");
        assert_eq!(&*route.pool.name, "a");
        let err = t
            .route(&parse(Endpoint::ChatCompletions, r#"{"model":"x"}"#))
            .expect_err("unknown");
        assert_eq!(err.status().as_u16(), 404);
        let err = t
            .route(&parse(Endpoint::ChatCompletions, r#"{}"#))
            .expect_err("missing");
        assert_eq!(err.status().as_u16(), 400);
        let route = t
            .route(&parse(Endpoint::Generate, r#"{"text":"hi"}"#))
            .expect("sglang");
        assert_eq!(&*route.pool.name, "s");
    }
}
