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
    /// `model` → pool, first match wins; `model = "*"` catches every other model.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
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
}

/// How a pool picks a replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// The replica with the fewest requests in flight (ties rotate).
    #[default]
    LeastOutstanding,
    /// Each replica in turn.
    RoundRobin,
}

impl Policy {
    /// The label / config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LeastOutstanding => "least_outstanding",
            Self::RoundRobin => "round_robin",
        }
    }
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

/// `model` → pool.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The request's `model`, exactly; `"*"` matches any model no other route names.
    pub model: String,
    /// The pool serving it.
    pub pool: String,
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
            let pool = PoolConfig {
                framework: overrides.framework.unwrap_or(Framework::Openai),
                backends: overrides
                    .upstreams
                    .into_iter()
                    .map(BackendSpec::Url)
                    .collect(),
                policy: Policy::default(),
                api_key: None,
                timeouts: TimeoutOverrides::default(),
                max_idle_per_backend: default_max_idle(),
            };
            self.pools = BTreeMap::from([("default".to_string(), pool)]);
            self.routes = vec![RouteConfig {
                model: ANY_MODEL.to_string(),
                pool: "default".to_string(),
            }];
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
            if !self.pools.contains_key(&route.pool) {
                return Err(ConfigError::invalid(
                    format!("{field}.pool"),
                    format!(
                        "no pool named `{}` (pools: {})",
                        route.pool,
                        self.pools.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
        Ok(())
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
        assert_eq!(config.pools["a"].policy, Policy::LeastOutstanding);
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
