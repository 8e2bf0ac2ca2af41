//! The gateway's configuration: typed TOML, defaults next to each field, cross-field checks.
//!
//! Parse, don't validate: durations are `Duration`, addresses `SocketAddr`, backend URLs are
//! checked `http::Uri`s, unknown keys are refused (`deny_unknown_fields`). [`GatewayConfig::validate`]
//! holds only the rules a type cannot express (a route names a pool that exists, names are
//! label-safe, ...). Every error names the field it is about. `config/gateway.toml` is the
//! commented reference and is parsed by a test, so it cannot drift from these types.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// TOML syntax or a field of the wrong type / unknown field (the message names it).
    #[error("invalid config: {0}")]
    Parse(#[from] toml::de::Error),
    /// A value that parsed but breaks a rule.
    #[error("invalid config: {field}: {reason}")]
    Invalid {
        /// Dotted path of the offending field, e.g. `routes[1].pool`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl ConfigError {
    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The whole gateway configuration (`servelens serve --config FILE`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Listeners and request limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// Default upstream timeouts (pools may override).
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Token accounting policy.
    #[serde(default)]
    pub usage: UsageConfig,
    /// The JSONL request log.
    #[serde(default)]
    pub log: LogConfig,
    /// Named pools of backends.
    #[serde(default)]
    pub pools: BTreeMap<String, PoolConfig>,
    /// `model` → pool or experiment; `model = "*"` catches every other model.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// A/B experiments by name.
    #[serde(default)]
    pub experiments: BTreeMap<String, ExperimentConfig>,
}

/// Listeners and request limits.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Where OpenAI clients connect.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (keep it private).
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
    /// Largest request body accepted, in bytes; larger gets 413.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: u64,
    /// How long in-flight requests may run after SIGTERM/Ctrl-C before they are cut.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}
fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}
fn default_max_request_bytes() -> u64 {
    32 * 1024 * 1024
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            admin: default_admin(),
            max_request_bytes: default_max_request_bytes(),
            shutdown_grace: default_shutdown_grace(),
        }
    }
}

/// Upstream timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// TCP connect to a backend; on expiry the client gets 502.
    #[serde(default = "default_connect", with = "humantime_serde")]
    pub connect: Duration,
    /// Request forwarded → first response byte (includes queueing and prefill); 504.
    #[serde(default = "default_first_byte", with = "humantime_serde")]
    pub first_byte: Duration,
    /// Longest silence between two response chunks once the body has started.
    #[serde(default = "default_idle", with = "humantime_serde")]
    pub idle: Duration,
    /// Whole request, arrival to last byte.
    #[serde(default = "default_total", with = "humantime_serde")]
    pub total: Duration,
}

fn default_connect() -> Duration {
    Duration::from_secs(5)
}
fn default_first_byte() -> Duration {
    Duration::from_secs(300)
}
fn default_idle() -> Duration {
    Duration::from_secs(120)
}
fn default_total() -> Duration {
    Duration::from_secs(3600)
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: default_connect(),
            first_byte: default_first_byte(),
            idle: default_idle(),
            total: default_total(),
        }
    }
}

/// Per-pool timeout overrides; unset fields inherit the top-level `[timeouts]`.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutOverrides {
    /// Overrides `timeouts.connect`.
    #[serde(default, with = "humantime_serde")]
    pub connect: Option<Duration>,
    /// Overrides `timeouts.first_byte`.
    #[serde(default, with = "humantime_serde")]
    pub first_byte: Option<Duration>,
    /// Overrides `timeouts.idle`.
    #[serde(default, with = "humantime_serde")]
    pub idle: Option<Duration>,
    /// Overrides `timeouts.total`.
    #[serde(default, with = "humantime_serde")]
    pub total: Option<Duration>,
}

impl TimeoutOverrides {
    /// These overrides on top of `base`.
    pub fn over(&self, base: Timeouts) -> Timeouts {
        Timeouts {
            connect: self.connect.unwrap_or(base.connect),
            first_byte: self.first_byte.unwrap_or(base.first_byte),
            idle: self.idle.unwrap_or(base.idle),
            total: self.total.unwrap_or(base.total),
        }
    }
}

/// Token accounting policy.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UsageConfig {
    /// Ask backends for `stream_options.include_usage` on streams whose client did not, and
    /// withhold that extra usage event from the client. Off = bytes strictly as the client asked.
    #[serde(default = "yes")]
    pub inject: bool,
}

fn yes() -> bool {
    true
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self { inject: true }
    }
}

/// The JSONL request log.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// One JSON line per request (timings, tokens, outcome; never prompt text). Off when unset.
    #[serde(default)]
    pub requests: Option<PathBuf>,
    /// Rotate the file to `<file>.1` when it grows past this many bytes. Never when unset.
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

/// The serving framework behind a pool (decides health paths and metric names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Framework {
    /// vLLM's OpenAI server.
    Vllm,
    /// SGLang.
    Sglang,
    /// Hugging Face text-generation-inference.
    Tgi,
    /// NVIDIA TensorRT-LLM `trtllm-serve`.
    Trtllm,
    /// llama.cpp `llama-server`.
    Llamacpp,
    /// Ollama.
    Ollama,
    /// Any other OpenAI-compatible server.
    Openai,
}

impl Framework {
    /// The label / config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vllm => "vllm",
            Self::Sglang => "sglang",
            Self::Tgi => "tgi",
            Self::Trtllm => "trtllm",
            Self::Llamacpp => "llamacpp",
            Self::Ollama => "ollama",
            Self::Openai => "openai",
        }
    }

    /// Whether asking this backend for `include_usage` leaves every event the client would see
    /// unchanged. Not so for llama.cpp, which then moves `timings` from the finish chunk to the
    /// usage chunk; it needs no asking either, as `timings` carries exact token counts.
    pub fn usage_injection_is_invisible(self) -> bool {
        !matches!(self, Self::Llamacpp)
    }
}

/// How a pool picks a replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Consistent hash of the prompt prefix with bounded loads: requests sharing a prefix go to
    /// the same replica (prefix-cache hits) unless it is over `load_factor` × the mean load.
    #[default]
    PrefixHash,
    /// The replica with the fewest requests in flight (plus its scraped queue), ties rotate.
    LeastOutstanding,
    /// The less loaded of two random replicas.
    PowerOfTwo,
    /// Each replica in turn.
    RoundRobin,
    /// A uniformly random replica.
    Random,
    /// Sticky by session key (the `session_header`, else the body's `user`) on the ring.
    Session,
}

impl Policy {
    /// The label / config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PrefixHash => "prefix_hash",
            Self::LeastOutstanding => "least_outstanding",
            Self::PowerOfTwo => "power_of_two",
            Self::RoundRobin => "round_robin",
            Self::Random => "random",
            Self::Session => "session",
        }
    }
}

/// Active health probes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Probe at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Path probed with GET (default per framework: `/health`; Ollama `/`; `openai` `/v1/models`).
    #[serde(default)]
    pub path: Option<String>,
    /// Time between probes of one backend.
    #[serde(default = "default_probe_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// A probe slower than this failed.
    #[serde(default = "default_probe_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive failed probes that mark a backend down.
    #[serde(default = "three")]
    pub unhealthy_threshold: u32,
    /// Consecutive good probes that mark it up again.
    #[serde(default = "two")]
    pub healthy_threshold: u32,
}

fn default_probe_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_probe_timeout() -> Duration {
    Duration::from_secs(2)
}
fn two() -> u32 {
    2
}
fn three() -> u32 {
    3
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: None,
            interval: default_probe_interval(),
            timeout: default_probe_timeout(),
            unhealthy_threshold: 3,
            healthy_threshold: 2,
        }
    }
}

/// Passive ejection of a backend after consecutive request failures.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EjectionConfig {
    /// Consecutive failures (connect errors, resets, timeouts, 502/503/504) that eject.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// First ejection time; each further ejection doubles it.
    #[serde(default = "default_ejection_base", with = "humantime_serde")]
    pub base: Duration,
    /// Longest ejection.
    #[serde(default = "default_ejection_max", with = "humantime_serde")]
    pub max: Duration,
}

fn default_consecutive_failures() -> u32 {
    5
}
fn default_ejection_base() -> Duration {
    Duration::from_secs(5)
}
fn default_ejection_max() -> Duration {
    Duration::from_secs(300)
}

impl Default for EjectionConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: default_consecutive_failures(),
            base: default_ejection_base(),
            max: default_ejection_max(),
        }
    }
}

/// Retries before the first response byte reached the client.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Extra attempts after the first (connect error, 5xx, 429), each on the next replica.
    #[serde(default = "two")]
    pub attempts: u32,
    /// Retries allowed as a fraction of requests (a token bucket), so retries cannot multiply
    /// load during an outage.
    #[serde(default = "default_budget_ratio")]
    pub budget_ratio: f64,
    /// Retries always allowed in a burst, whatever the ratio.
    #[serde(default = "default_budget_burst")]
    pub budget_burst: u32,
}

fn default_budget_ratio() -> f64 {
    0.2
}
fn default_budget_burst() -> u32 {
    10
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 2,
            budget_ratio: default_budget_ratio(),
            budget_burst: default_budget_burst(),
        }
    }
}

/// How a pool's backend list is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Discovery {
    /// The URLs as written.
    #[default]
    Static,
    /// Each URL's host is re-resolved periodically; every address is a replica (a Kubernetes
    /// headless Service).
    Dns,
}

/// A named set of replicas of one framework.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// What serves this pool.
    #[serde(default = "default_framework")]
    pub framework: Framework,
    /// Replicas: `"http://host:port"` strings or `{ name = "...", url = "..." }` tables.
    #[serde(default)]
    pub backends: Vec<BackendSpec>,
    /// Replica selection.
    #[serde(default)]
    pub policy: Policy,
    /// Sent upstream as `Authorization: Bearer ...` (replaces the client's header).
    #[serde(default)]
    pub api_key: Option<String>,
    /// Timeout overrides for this pool.
    #[serde(default)]
    pub timeouts: TimeoutOverrides,
    /// Idle keep-alive connections kept per replica.
    #[serde(default = "default_max_idle")]
    pub max_idle_per_backend: usize,
    /// `prefix_hash`: bytes of prompt text in the routing key.
    #[serde(default = "default_prefix_chars")]
    pub prefix_chars: usize,
    /// `prefix_hash` / `session`: a replica above `load_factor` × the mean in-flight load is
    /// skipped (bounded loads). At least 1.
    #[serde(default = "default_load_factor")]
    pub load_factor: f64,
    /// Points per replica on the hash ring.
    #[serde(default = "default_vnodes")]
    pub vnodes: usize,
    /// `prefix_hash` / `session`: below this many requests in flight a replica is never
    /// considered overloaded (batching a few more costs an engine little; moving a prefix
    /// away costs its cache).
    #[serde(default = "default_spill_floor")]
    pub spill_floor: u64,
    /// `session`: the header carrying the session key (else the body's `user`).
    #[serde(default = "default_session_header")]
    pub session_header: String,
    /// Active health probes.
    #[serde(default)]
    pub health: HealthConfig,
    /// Passive ejection.
    #[serde(default)]
    pub ejection: EjectionConfig,
    /// Retries before streaming starts.
    #[serde(default)]
    pub retries: RetryConfig,
    /// Read each backend's `/metrics` this often (vLLM/SGLang names) for queue length, KV usage
    /// and prefix-cache hit ratio. Unset: every 5 s for vllm/sglang pools, never otherwise.
    #[serde(default, with = "humantime_serde")]
    pub scrape_interval: Option<Duration>,
    /// Static URLs or DNS re-resolution.
    #[serde(default)]
    pub discovery: Discovery,
    /// How often `discovery = "dns"` re-resolves.
    #[serde(default = "default_dns_interval", with = "humantime_serde")]
    pub dns_interval: Duration,
}

fn default_prefix_chars() -> usize {
    1024
}
fn default_load_factor() -> f64 {
    1.25
}
fn default_vnodes() -> usize {
    160
}
fn default_spill_floor() -> u64 {
    4
}
fn default_session_header() -> String {
    "x-session-id".to_string()
}
fn default_dns_interval() -> Duration {
    Duration::from_secs(10)
}

impl PoolConfig {
    /// A pool of `backends` with every other setting at its default.
    pub fn new(framework: Framework, backends: Vec<BackendSpec>) -> Self {
        Self {
            framework,
            backends,
            policy: Policy::default(),
            api_key: None,
            timeouts: TimeoutOverrides::default(),
            max_idle_per_backend: default_max_idle(),
            prefix_chars: default_prefix_chars(),
            load_factor: default_load_factor(),
            vnodes: default_vnodes(),
            spill_floor: default_spill_floor(),
            session_header: default_session_header(),
            health: HealthConfig::default(),
            ejection: EjectionConfig::default(),
            retries: RetryConfig::default(),
            scrape_interval: None,
            discovery: Discovery::default(),
            dns_interval: default_dns_interval(),
        }
    }

    /// The effective metrics scrape interval.
    pub fn scrape_every(&self) -> Option<Duration> {
        match (self.scrape_interval, self.framework) {
            (Some(d), _) if d.is_zero() => None,
            (Some(d), _) => Some(d),
            (None, Framework::Vllm | Framework::Sglang) => Some(Duration::from_secs(5)),
            (None, _) => None,
        }
    }
}

fn default_framework() -> Framework {
    Framework::Openai
}
fn default_max_idle() -> usize {
    256
}

/// One replica as written in the config.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum BackendSpec {
    /// Just the base URL; the name is its `host:port`.
    Url(String),
    /// A URL with an explicit name (used as the `backend` metric label).
    Named {
        /// Label-safe name.
        name: String,
        /// Base URL, `http://host:port`.
        url: String,
    },
}

/// A replica after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendAddr {
    /// Metric label and log name.
    pub name: String,
    /// `http://host:port` with no trailing slash; request paths are appended.
    pub base: String,
    /// `host:port`, for the `Host` header and logs.
    pub authority: String,
}

impl BackendSpec {
    /// Checks the URL and derives the name.
    pub fn resolve(&self, field: &str) -> Result<BackendAddr, ConfigError> {
        let (name, url) = match self {
            Self::Url(url) => (None, url),
            Self::Named { name, url } => (Some(name), url),
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|e| ConfigError::invalid(field, format!("`{url}` is not a URL: {e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(ConfigError::invalid(
                    field,
                    format!("scheme `{other}` is not supported (use http://; terminate TLS in front of the backend)"),
                ))
            }
            None => {
                return Err(ConfigError::invalid(
                    field,
                    format!("`{url}` has no scheme (write http://{url})"),
                ))
            }
        }
        let authority = uri
            .authority()
            .ok_or_else(|| ConfigError::invalid(field, format!("`{url}` has no host")))?
            .to_string();
        let path = uri.path().trim_end_matches('/');
        let base = format!("http://{authority}{path}");
        let name = name.cloned().unwrap_or_else(|| authority.clone());
        check_label(&format!("{field}.name"), &name)?;
        Ok(BackendAddr {
            name,
            base,
            authority,
        })
    }
}

/// `model` → pool or experiment.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The request's `model`, exactly; `"*"` matches any model no other route names.
    pub model: String,
    /// The pool serving it (exactly one of `pool` and `experiment`).
    #[serde(default)]
    pub pool: Option<String>,
    /// The experiment splitting it between pools.
    #[serde(default)]
    pub experiment: Option<String>,
    /// Also send a fraction of requests to a shadow pool (response timed and discarded).
    #[serde(default)]
    pub mirror: Option<MirrorConfig>,
}

impl RouteConfig {
    /// A route of `model` to `pool`.
    pub fn to_pool(model: &str, pool: &str) -> Self {
        Self {
            model: model.to_string(),
            pool: Some(pool.to_string()),
            experiment: None,
            mirror: None,
        }
    }
}

/// Shadow traffic.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// The shadow pool.
    pub pool: String,
    /// Fraction of requests mirrored, 0 to 1 (chosen by request id, so deterministic).
    pub fraction: f64,
}

/// An A/B experiment: arms with weights, each arm a pool; assignment sticky per key.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Header carrying the sticky key; else the body's `user`; else the request id.
    #[serde(default = "default_session_header")]
    pub sticky_header: String,
    /// The arms.
    pub arms: Vec<ArmConfig>,
}

/// One arm of an experiment.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ArmConfig {
    /// The `arm` label.
    pub name: String,
    /// The pool serving this arm.
    pub pool: String,
    /// Relative weight.
    pub weight: f64,
}

/// The route that matches every model not named by another route.
pub const ANY_MODEL: &str = "*";

/// Values given on the command line, applied over the file (`servelens serve --upstream ...`).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Replaces the file's pools and routes with one pool `default` of these URLs, serving
    /// every model (the shape of the routers' `--worker-urls`).
    pub upstreams: Vec<String>,
    /// Framework of the `--upstream` pool.
    pub framework: Option<Framework>,
    /// Replaces `server.listen`.
    pub listen: Option<SocketAddr>,
    /// Replaces `server.admin`.
    pub admin: Option<SocketAddr>,
    /// Replaces `log.requests`.
    pub request_log: Option<PathBuf>,
}

impl GatewayConfig {
    /// Parses TOML text and validates it.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// A configuration with one pool of `upstreams` serving every model.
    pub fn for_upstreams(upstreams: &[String], framework: Framework) -> Result<Self, ConfigError> {
        let mut config = Self::default();
        config.apply(Overrides {
            upstreams: upstreams.to_vec(),
            framework: Some(framework),
            ..Overrides::default()
        })?;
        Ok(config)
    }

    /// Applies command-line values over the file's, then re-validates.
    pub fn apply(&mut self, overrides: Overrides) -> Result<(), ConfigError> {
        if let Some(listen) = overrides.listen {
            self.server.listen = listen;
        }
        if let Some(admin) = overrides.admin {
            self.server.admin = admin;
        }
        if let Some(path) = overrides.request_log {
            self.log.requests = Some(path);
        }
        if !overrides.upstreams.is_empty() {
            let pool = PoolConfig::new(
                overrides.framework.unwrap_or(Framework::Openai),
                overrides
                    .upstreams
                    .into_iter()
                    .map(BackendSpec::Url)
                    .collect(),
            );
            self.pools = BTreeMap::from([("default".to_string(), pool)]);
            self.experiments.clear();
            self.routes = vec![RouteConfig::to_pool(ANY_MODEL, "default")];
        } else if let Some(framework) = overrides.framework {
            for pool in self.pools.values_mut() {
                pool.framework = framework;
            }
        }
        self.validate()
    }

    /// Cross-field rules; each error names its field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.routes.is_empty() {
            return Err(ConfigError::invalid(
                "routes",
                "no routes: add [[routes]] with model and pool (or pass --upstream URL)",
            ));
        }
        if self.server.max_request_bytes == 0 {
            return Err(ConfigError::invalid(
                "server.max_request_bytes",
                "must be > 0",
            ));
        }
        check_timeouts("timeouts", &self.timeouts)?;
        for (name, pool) in &self.pools {
            let field = format!("pools.{name}");
            check_label(&field, name)?;
            check_timeouts(
                &format!("{field}.timeouts"),
                &pool.timeouts.over(self.timeouts),
            )?;
            let mut seen = Vec::new();
            for (i, backend) in pool.backends.iter().enumerate() {
                let addr = backend.resolve(&format!("{field}.backends[{i}]"))?;
                if seen.contains(&addr.name) {
                    return Err(ConfigError::invalid(
                        format!("{field}.backends[{i}]"),
                        format!("duplicate backend name `{}`", addr.name),
                    ));
                }
                seen.push(addr.name);
            }
        }
        for (name, pool) in &self.pools {
            let field = format!("pools.{name}");
            if pool.backends.len() > crate::routing::ring::MAX_REPLICAS {
                return Err(ConfigError::invalid(
                    format!("{field}.backends"),
                    format!(
                        "at most {} replicas per pool",
                        crate::routing::ring::MAX_REPLICAS
                    ),
                ));
            }
            if !(pool.load_factor >= 1.0 && pool.load_factor.is_finite()) {
                return Err(ConfigError::invalid(
                    format!("{field}.load_factor"),
                    "must be a number >= 1",
                ));
            }
            if pool.prefix_chars == 0 {
                return Err(ConfigError::invalid(
                    format!("{field}.prefix_chars"),
                    "must be > 0",
                ));
            }
            if pool.vnodes == 0 || pool.vnodes > 10_000 {
                return Err(ConfigError::invalid(
                    format!("{field}.vnodes"),
                    "must be 1..=10000",
                ));
            }
            if !(0.0..=100.0).contains(&pool.retries.budget_ratio) {
                return Err(ConfigError::invalid(
                    format!("{field}.retries.budget_ratio"),
                    "must be 0..=100",
                ));
            }
            if http::HeaderName::from_bytes(pool.session_header.as_bytes()).is_err() {
                return Err(ConfigError::invalid(
                    format!("{field}.session_header"),
                    "not a header name",
                ));
            }
            if pool.health.interval.is_zero() || pool.health.timeout.is_zero() {
                return Err(ConfigError::invalid(
                    format!("{field}.health"),
                    "interval and timeout must be > 0",
                ));
            }
        }
        for (name, experiment) in &self.experiments {
            let field = format!("experiments.{name}");
            check_label(&field, name)?;
            if experiment.arms.is_empty() {
                return Err(ConfigError::invalid(
                    format!("{field}.arms"),
                    "needs at least one arm",
                ));
            }
            if http::HeaderName::from_bytes(experiment.sticky_header.as_bytes()).is_err() {
                return Err(ConfigError::invalid(
                    format!("{field}.sticky_header"),
                    "not a header name",
                ));
            }
            let mut names = Vec::new();
            for (i, arm) in experiment.arms.iter().enumerate() {
                let arm_field = format!("{field}.arms[{i}]");
                check_label(&format!("{arm_field}.name"), &arm.name)?;
                if names.contains(&&arm.name) {
                    return Err(ConfigError::invalid(
                        format!("{arm_field}.name"),
                        format!("duplicate arm `{}`", arm.name),
                    ));
                }
                names.push(&arm.name);
                self.check_pool_ref(&format!("{arm_field}.pool"), &arm.pool)?;
                if !(arm.weight >= 0.0 && arm.weight.is_finite()) {
                    return Err(ConfigError::invalid(
                        format!("{arm_field}.weight"),
                        "must be a number >= 0",
                    ));
                }
            }
            if experiment.arms.iter().all(|a| a.weight == 0.0) {
                return Err(ConfigError::invalid(
                    format!("{field}.arms"),
                    "all weights are 0",
                ));
            }
        }
        let mut models = Vec::new();
        for (i, route) in self.routes.iter().enumerate() {
            let field = format!("routes[{i}]");
            if route.model.is_empty() {
                return Err(ConfigError::invalid(format!("{field}.model"), "is empty"));
            }
            if models.contains(&&route.model) {
                return Err(ConfigError::invalid(
                    format!("{field}.model"),
                    format!("`{}` is routed twice", route.model),
                ));
            }
            models.push(&route.model);
            match (&route.pool, &route.experiment) {
                (Some(pool), None) => self.check_pool_ref(&format!("{field}.pool"), pool)?,
                (None, Some(experiment)) => {
                    if !self.experiments.contains_key(experiment) {
                        return Err(ConfigError::invalid(
                            format!("{field}.experiment"),
                            format!("no experiment named `{experiment}`"),
                        ));
                    }
                }
                _ => {
                    return Err(ConfigError::invalid(
                        field,
                        "give exactly one of `pool` and `experiment`",
                    ))
                }
            }
            if let Some(mirror) = &route.mirror {
                self.check_pool_ref(&format!("{field}.mirror.pool"), &mirror.pool)?;
                if !(0.0..=1.0).contains(&mirror.fraction) {
                    return Err(ConfigError::invalid(
                        format!("{field}.mirror.fraction"),
                        "must be 0..=1",
                    ));
                }
            }
        }
        Ok(())
    }
}

impl GatewayConfig {
    fn check_pool_ref(&self, field: &str, pool: &str) -> Result<(), ConfigError> {
        if self.pools.contains_key(pool) {
            Ok(())
        } else {
            Err(ConfigError::invalid(
                field,
                format!(
                    "no pool named `{pool}` (pools: {})",
                    self.pools.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ))
        }
    }
}

fn check_timeouts(field: &str, t: &Timeouts) -> Result<(), ConfigError> {
    for (name, value) in [
        ("connect", t.connect),
        ("first_byte", t.first_byte),
        ("idle", t.idle),
        ("total", t.total),
    ] {
        if value.is_zero() {
            return Err(ConfigError::invalid(
                format!("{field}.{name}"),
                "must be > 0",
            ));
        }
    }
    Ok(())
}

/// Names become metric label values: keep them short and printable.
fn check_label(field: &str, value: &str) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            field,
            format!("`{value}` must be 1-128 characters of [A-Za-z0-9-_.:/]"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [pools.a]
        framework = "vllm"
        backends = ["http://127.0.0.1:8000"]
        [[routes]]
        model = "m"
        pool = "a"
    "#;

    fn invalid_field(text: &str) -> String {
        match GatewayConfig::from_toml(text) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config = GatewayConfig::from_toml(MINIMAL).expect("valid");
        assert_eq!(config.server.admin, "127.0.0.1:9464".parse().expect("addr"));
        assert_eq!(config.timeouts.connect, Duration::from_secs(5));
        assert!(config.usage.inject);
        assert_eq!(config.pools["a"].policy, Policy::PrefixHash);
        assert_eq!(config.pools["a"].load_factor, 1.25);
    }

    #[test]
    fn shipped_reference_config_parses() {
        let text = include_str!("../config/gateway.toml");
        let config = GatewayConfig::from_toml(text).expect("config/gateway.toml must be valid");
        assert!(!config.routes.is_empty());
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let err = GatewayConfig::from_toml(&format!("{MINIMAL}\n[server]\nlisten_addr = \"x\""))
            .expect_err("unknown field");
        assert!(err.to_string().contains("listen_addr"), "{err}");
    }

    #[test]
    fn bad_values_name_their_field() {
        assert_eq!(
            invalid_field(&MINIMAL.replace("pool = \"a\"", "pool = \"b\"")),
            "routes[0].pool"
        );
        assert_eq!(
            invalid_field(&MINIMAL.replace("http://127.0.0.1:8000", "https://x:1")),
            "pools.a.backends[0]"
        );
        assert_eq!(
            invalid_field(&MINIMAL.replace("http://127.0.0.1:8000", "127.0.0.1:8000")),
            "pools.a.backends[0]"
        );
        assert_eq!(
            invalid_field(&format!("{MINIMAL}\n[timeouts]\nidle = \"0s\"")),
            "timeouts.idle"
        );
        assert_eq!(invalid_field("[pools.a]\nbackends=[]"), "routes");
        assert_eq!(
            invalid_field(
                &MINIMAL
                    .replace("[pools.a]", "[pools.\"a b\"]")
                    .replace("pool = \"a\"", "pool = \"a b\"")
            ),
            "pools.a b"
        );
    }

    #[test]
    fn bad_duration_is_a_parse_error_naming_the_key() {
        let err = GatewayConfig::from_toml(&format!("{MINIMAL}\n[timeouts]\nidle = \"soon\""))
            .expect_err("bad duration");
        assert!(err.to_string().contains("idle"), "{err}");
    }

    #[test]
    fn upstream_flags_replace_pools_and_route_everything() {
        let mut config = GatewayConfig::from_toml(MINIMAL).expect("valid");
        config
            .apply(Overrides {
                upstreams: vec![
                    "http://10.0.0.1:8000".into(),
                    "http://10.0.0.2:8000/".into(),
                ],
                framework: Some(Framework::Sglang),
                listen: Some("127.0.0.1:1".parse().expect("addr")),
                ..Overrides::default()
            })
            .expect("valid");
        assert_eq!(config.pools.len(), 1);
        assert_eq!(config.pools["default"].framework, Framework::Sglang);
        assert_eq!(config.routes[0].model, ANY_MODEL);
        assert_eq!(config.server.listen.port(), 1);
        let addr = config.pools["default"].backends[1]
            .resolve("x")
            .expect("valid url");
        assert_eq!(addr.base, "http://10.0.0.2:8000");
        assert_eq!(addr.name, "10.0.0.2:8000");
    }
}
