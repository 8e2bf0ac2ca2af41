//! Step 2, *route*: model → route → (experiment arm) → pool. Replica choice inside the pool is
//! [`Pool::pick`](crate::proxy::pool::Pool::pick).
//!
//! A [`RoutingTable`] is everything derived from one config generation that the request path
//! reads: routes, experiments, mirrors and pools. It is immutable once built and swapped whole
//! on reload, so the request path never locks; replica state that must outlive a reload lives
//! in the [`BackendRegistry`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use http::{HeaderMap, HeaderName};
use metrics::Counter;

use crate::config::{BackendAddr, ConfigError, Framework, GatewayConfig, ANY_MODEL};
use crate::error::GatewayError;
use crate::openai::Endpoint;
use crate::proxy::pool::{BackendRegistry, Pool};
use crate::proxy::request::InferenceRequest;
use crate::routing::split::{self, Arm};
use crate::telemetry::Metrics;

/// An A/B experiment.
#[derive(Debug)]
pub struct Experiment {
    /// Its name (part of the assignment hash).
    pub name: Arc<str>,
    /// The sticky key header.
    pub sticky_header: HeaderName,
    /// The arms.
    pub arms: Vec<ExperimentArm>,
}

/// One arm.
#[derive(Debug)]
pub struct ExperimentArm {
    /// The `arm` label.
    pub name: Arc<str>,
    /// Relative weight.
    pub weight: f64,
    /// The pool serving it.
    pub pool: Arc<Pool>,
    assignments: Counter,
}

impl Experiment {
    /// The arm for this request: hash of (experiment, sticky key), where the key is the sticky
    /// header, else the body's `user`, else the request id.
    pub fn assign(
        &self,
        headers: &HeaderMap,
        user: Option<&str>,
        request_id: &[u8],
    ) -> Option<&ExperimentArm> {
        let key = headers
            .get(&self.sticky_header)
            .map(|v| v.as_bytes())
            .filter(|v| !v.is_empty())
            .or_else(|| user.map(str::as_bytes).filter(|u| !u.is_empty()))
            .unwrap_or(request_id);
        let weights: Vec<Arm<'_>> = self
            .arms
            .iter()
            .map(|a| Arm {
                name: &a.name,
                weight: a.weight,
            })
            .collect();
        let arm = &self.arms[split::assign(&self.name, key, &weights)?];
        arm.assignments.increment(1);
        Some(arm)
    }
}

/// Where a route sends requests.
#[derive(Debug)]
pub enum Target {
    /// One pool.
    Pool(Arc<Pool>),
    /// An experiment's arms.
    Experiment(Arc<Experiment>),
}

/// Shadow traffic of a route.
#[derive(Debug)]
pub struct Mirror {
    /// The shadow pool.
    pub pool: Arc<Pool>,
    /// Fraction of requests mirrored.
    pub fraction: f64,
}

impl Mirror {
    /// Whether this request is mirrored (deterministic in the request id).
    pub fn selects(&self, request_id: &[u8]) -> bool {
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(request_id, 0x6d69_7272_6f72);
        ((h >> 11) as f64 / (1u64 << 53) as f64) < self.fraction
    }
}

/// A configured model and where it goes.
#[derive(Debug)]
pub struct Route {
    /// The model name as configured (`*` for the catch-all); the `route` label.
    pub name: Arc<str>,
    /// The pool or experiment.
    pub target: Target,
    /// Optional shadow traffic.
    pub mirror: Option<Mirror>,
}

/// The route, arm and pool chosen for one request.
#[derive(Debug)]
pub struct Choice<'a> {
    /// The route.
    pub route: &'a Arc<Route>,
    /// The pool.
    pub pool: &'a Arc<Pool>,
    /// The experiment arm (empty outside experiments).
    pub arm: Arc<str>,
}

/// Everything the request path reads from the config.
#[derive(Debug)]
pub struct RoutingTable {
    by_model: HashMap<String, Arc<Route>>,
    any: Option<Arc<Route>>,
    routes: Vec<Arc<Route>>,
    pools: BTreeMap<String, Arc<Pool>>,
    no_arm: Arc<str>,
}

impl RoutingTable {
    /// Builds the table from a validated config. `resolved` holds the current addresses of
    /// pools with DNS discovery (pools missing from it use their URLs as written).
    pub fn build(
        config: &GatewayConfig,
        resolved: &HashMap<String, Vec<BackendAddr>>,
        registry: &BackendRegistry,
        metrics: &Metrics,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut pools = BTreeMap::new();
        for (name, pool) in &config.pools {
            let addrs = match resolved.get(name) {
                Some(addrs) => addrs.clone(),
                None => pool
                    .backends
                    .iter()
                    .enumerate()
                    .map(|(i, spec)| spec.resolve(&format!("pools.{name}.backends[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?,
            };
            let built = Pool::build(name, pool, addrs, config.timeouts, registry, metrics)?;
            pools.insert(name.clone(), Arc::new(built));
        }
        let pool = |name: &str| -> Result<Arc<Pool>, ConfigError> {
            pools
                .get(name)
                .cloned()
                .ok_or_else(|| ConfigError::Invalid {
                    field: "routes".into(),
                    reason: format!("no pool named `{name}`"),
                })
        };
        let mut experiments = HashMap::new();
        for (name, experiment) in &config.experiments {
            let arms = experiment
                .arms
                .iter()
                .map(|arm| {
                    Ok(ExperimentArm {
                        name: Arc::from(arm.name.as_str()),
                        weight: arm.weight,
                        pool: pool(&arm.pool)?,
                        assignments: metrics.assignments(name, &arm.name),
                    })
                })
                .collect::<Result<Vec<_>, ConfigError>>()?;
            let sticky_header = HeaderName::from_bytes(experiment.sticky_header.as_bytes())
                .map_err(|_| ConfigError::Invalid {
                    field: format!("experiments.{name}.sticky_header"),
                    reason: "not a header name".into(),
                })?;
            experiments.insert(
                name.clone(),
                Arc::new(Experiment {
                    name: Arc::from(name.as_str()),
                    sticky_header,
                    arms,
                }),
            );
        }
        let mut by_model = HashMap::new();
        let mut any = None;
        let mut routes = Vec::new();
        for route in &config.routes {
            let target = match (&route.pool, &route.experiment) {
                (Some(name), _) => Target::Pool(pool(name)?),
                (None, Some(name)) => {
                    Target::Experiment(experiments.get(name).cloned().ok_or_else(|| {
                        ConfigError::Invalid {
                            field: "routes".into(),
                            reason: format!("no experiment named `{name}`"),
                        }
                    })?)
                }
                (None, None) => {
                    return Err(ConfigError::Invalid {
                        field: "routes".into(),
                        reason: "a route needs a pool or an experiment".into(),
                    })
                }
            };
            let mirror = match &route.mirror {
                Some(m) => Some(Mirror {
                    pool: pool(&m.pool)?,
                    fraction: m.fraction,
                }),
                None => None,
            };
            let built = Arc::new(Route {
                name: Arc::from(route.model.as_str()),
                target,
                mirror,
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
            no_arm: Arc::from(""),
        })
    }

    /// The route for a request: its `model`, else the catch-all. SGLang `/generate` bodies
    /// usually carry no `model`; they go to the catch-all or else the first SGLang route.
    pub fn route(&self, req: &InferenceRequest<'_>) -> Result<&Arc<Route>, GatewayError> {
        match req.model() {
            Some(model) => self
                .by_model
                .get(model)
                .or(self.any.as_ref())
                .ok_or_else(|| GatewayError::UnknownModel(model.to_string())),
            None => self
                .any
                .as_ref()
                .or_else(|| {
                    (req.endpoint == Endpoint::Generate)
                        .then(|| {
                            self.routes
                                .iter()
                                .find(|r| route_framework(r) == Some(Framework::Sglang))
                        })
                        .flatten()
                })
                .ok_or(GatewayError::MissingModel),
        }
    }

    /// Route, arm and pool for a request.
    pub fn choose<'a>(
        &'a self,
        req: &InferenceRequest<'_>,
        headers: &HeaderMap,
        request_id: &[u8],
    ) -> Result<Choice<'a>, GatewayError> {
        let route = self.route(req)?;
        match &route.target {
            Target::Pool(pool) => Ok(Choice {
                route,
                pool,
                arm: self.no_arm.clone(),
            }),
            Target::Experiment(experiment) => {
                let arm = experiment
                    .assign(headers, req.user.as_deref(), request_id)
                    .ok_or_else(|| GatewayError::NoHealthyBackend {
                        pool: format!("experiment {}", experiment.name),
                    })?;
                Ok(Choice {
                    route,
                    pool: &arm.pool,
                    arm: arm.name.clone(),
                })
            }
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

/// The framework a route serves (its pool's, or its first arm's).
fn route_framework(route: &Route) -> Option<Framework> {
    match &route.target {
        Target::Pool(pool) => Some(pool.framework),
        Target::Experiment(e) => e.arms.first().map(|a| a.pool.framework),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> RoutingTable {
        let config = GatewayConfig::from_toml(text).expect("valid");
        RoutingTable::build(
            &config,
            &HashMap::new(),
            &BackendRegistry::new(),
            &Metrics::new(),
        )
        .expect("builds")
    }

    fn parse(endpoint: Endpoint, body: &str) -> InferenceRequest<'_> {
        InferenceRequest::parse(endpoint, body.as_bytes()).expect("valid")
    }

    const CONFIG: &str = r#"
        [pools.a]
        backends = ["http://127.0.0.1:1"]
        [pools.s]
        framework = "sglang"
        backends = ["http://127.0.0.1:4"]
        [experiments.ab]
        arms = [{ name = "left", pool = "a", weight = 1 }, { name = "right", pool = "s", weight = 1 }]
        [[routes]]
        model = "m"
        pool = "a"
        [[routes]]
        model = "s"
        pool = "s"
        [[routes]]
        model = "x"
        experiment = "ab"
    "#;

    #[tokio::test]
    async fn models_route_and_unknown_models_fail() {
        let t = table(CONFIG);
        let route = t
            .route(&parse(Endpoint::ChatCompletions, r#"{"model":"m"}"#))
            .expect("routed");
        assert_eq!(&*route.name, "m");
        let err = t
            .route(&parse(Endpoint::ChatCompletions, r#"{"model":"zz"}"#))
            .expect_err("unknown");
        assert_eq!(err.status().as_u16(), 404);
        let err = t
            .route(&parse(Endpoint::ChatCompletions, r#"{}"#))
            .expect_err("missing");
        assert_eq!(err.status().as_u16(), 400);
        let route = t
            .route(&parse(Endpoint::Generate, r#"{"text":"hi"}"#))
            .expect("sglang");
        assert_eq!(&*route.name, "s");
    }

    #[tokio::test]
    async fn experiments_are_sticky_by_header_then_user_then_request_id() {
        let t = table(CONFIG);
        let req = parse(Endpoint::ChatCompletions, r#"{"model":"x","user":"u1"}"#);
        let mut headers = HeaderMap::new();
        let by_user: Vec<Arc<str>> = (0..20)
            .map(|i| {
                t.choose(&req, &headers, format!("r{i}").as_bytes())
                    .expect("choice")
                    .arm
            })
            .collect();
        assert!(
            by_user.windows(2).all(|w| w[0] == w[1]),
            "same user, same arm"
        );
        headers.insert("x-session-id", "s1".parse().expect("value"));
        let by_session = t.choose(&req, &headers, b"r").expect("choice");
        assert!(["left", "right"].contains(&&*by_session.arm));
        let anonymous = parse(Endpoint::ChatCompletions, r#"{"model":"x"}"#);
        let arms: std::collections::HashSet<Arc<str>> = (0..40)
            .map(|i| {
                t.choose(&anonymous, &HeaderMap::new(), format!("r{i}").as_bytes())
                    .expect("c")
                    .arm
            })
            .collect();
        assert_eq!(
            arms.len(),
            2,
            "without a sticky key, request ids spread over arms"
        );
    }
}
