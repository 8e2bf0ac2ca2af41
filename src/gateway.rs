//! `servelens serve` as a library call: bind the proxy and admin listeners, build the gateway
//! from a config, run both servers and the background upkeep (health probes, backend metrics
//! scrapes, DNS discovery) until told to stop; optionally reload the config on SIGHUP or when
//! its file changes.
//!
//! [`start`] returns once both sockets are bound (their real addresses are in the handle, so
//! `127.0.0.1:0` works), which is what tests and `servelens demo` use.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::AdminService;
use crate::config::{ConfigError, Discovery, GatewayConfig, Overrides};
use crate::proxy::{discovery, health, scrape, Gateway, GatewayService};
use crate::server;
use crate::telemetry::{RequestLog, Telemetry};

/// How often the upkeep loop looks for due probes, scrapes and lookups.
const UPKEEP_TICK: Duration = Duration::from_millis(250);
/// How often a watched config file is checked for changes.
const CONFIG_POLL: Duration = Duration::from_secs(2);

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The request log could not be opened.
    #[error("cannot open request log {path}: {source}")]
    Log {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A running gateway.
#[derive(Debug)]
pub struct RunningGateway {
    /// Where the proxy listens.
    pub proxy_addr: SocketAddr,
    /// Where the admin endpoints listen.
    pub admin_addr: SocketAddr,
    /// The gateway (routing state, telemetry).
    pub gateway: Arc<Gateway>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Why a reload was refused (the running table stays).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ReloadError(#[from] ConfigError);

impl RunningGateway {
    /// The proxy's base URL, `http://ip:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.proxy_addr)
    }

    /// The admin base URL.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    /// Reloads the config from `path` (with `overrides` applied) on SIGHUP and whenever the
    /// file's modification time changes. A bad file is logged and counted; the running table
    /// stays.
    pub fn watch_config(&mut self, path: PathBuf, overrides: Overrides) {
        let gateway = self.gateway.clone();
        let stopped = self.stop.subscribe();
        self.tasks.push(tokio::spawn(watch_config(
            gateway, path, overrides, stopped,
        )));
    }

    /// Stops accepting, drains in-flight requests (up to the grace period) and returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Binds both listeners and starts serving `config`.
pub async fn start(config: GatewayConfig) -> Result<RunningGateway, StartError> {
    config.validate()?;
    let log = match &config.log.requests {
        Some(path) => Some(
            RequestLog::open(path, config.log.max_bytes).map_err(|source| StartError::Log {
                path: path.clone(),
                source,
            })?,
        ),
        None => None,
    };
    let telemetry = Arc::new(Telemetry::new(log));
    let gateway = Arc::new(Gateway::new(&config, telemetry)?);
    let resolved = discovery::resolve(&config, &HashMap::new()).await;
    if !resolved.is_empty() {
        gateway.set_resolved(resolved)?;
    }
    let proxy = bind(config.server.listen).await?;
    let admin = bind(config.server.admin).await?;
    let proxy_addr = proxy.local_addr().map_err(|source| StartError::Bind {
        addr: config.server.listen,
        source,
    })?;
    let admin_addr = admin.local_addr().map_err(|source| StartError::Bind {
        addr: config.server.admin,
        source,
    })?;
    let (stop, stopped) = watch::channel(false);
    let grace = config.server.shutdown_grace;
    let until_stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let tasks = vec![
        tokio::spawn(server::serve(
            proxy,
            GatewayService(gateway.clone()),
            until_stopped(stopped.clone()),
            grace,
        )),
        tokio::spawn(server::serve(
            admin,
            AdminService(gateway.clone()),
            until_stopped(stopped.clone()),
            grace,
        )),
        tokio::spawn(upkeep(gateway.clone(), stopped)),
    ];
    tracing::info!(%proxy_addr, %admin_addr, "servelens gateway listening");
    Ok(RunningGateway {
        proxy_addr,
        admin_addr,
        gateway,
        stop,
        tasks,
    })
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// Background upkeep: due health probes and metrics scrapes every tick, DNS re-resolution on
/// each DNS pool's interval.
async fn upkeep(gateway: Arc<Gateway>, mut stopped: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(UPKEEP_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_lookup = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => return,
        }
        let snapshot = gateway.snapshot();
        for pool in snapshot.table.pools().values() {
            health::probe_due(pool);
            scrape::scrape_due(pool);
        }
        let dns = snapshot
            .config
            .pools
            .values()
            .filter(|p| p.discovery == Discovery::Dns)
            .map(|p| p.dns_interval)
            .min();
        if let Some(every) = dns {
            if tokio::time::Instant::now() >= next_lookup {
                next_lookup = tokio::time::Instant::now() + every;
                let resolved = discovery::resolve(&snapshot.config, &gateway.resolved()).await;
                match gateway.set_resolved(resolved) {
                    Ok(true) => {
                        tracing::info!("DNS discovery changed the backends; routing table rebuilt")
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "DNS discovery result refused"),
                }
            }
        }
    }
}

/// Reloads on SIGHUP and on file changes until stopped.
async fn watch_config(
    gateway: Arc<Gateway>,
    path: PathBuf,
    overrides: Overrides,
    mut stopped: watch::Receiver<bool>,
) {
    let mut poll = tokio::time::interval(CONFIG_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = modified(&path);
    let mut hangup = hangup_signal();
    loop {
        let by_signal = tokio::select! {
            _ = poll.tick() => false,
            _ = recv(&mut hangup) => true,
            _ = stopped.changed() => return,
        };
        let now = modified(&path);
        if !by_signal && now == seen {
            continue;
        }
        seen = now;
        match reload_from(&gateway, &path, &overrides) {
            Ok(()) => tracing::info!(path = %path.display(), by_signal, "config reloaded"),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "config reload refused; keeping the running config")
            }
        }
    }
}

/// Reads `path`, applies `overrides`, validates, and swaps the routing table in. Counts the
/// result in `servelens_config_reloads_total`.
pub fn reload_from(
    gateway: &Gateway,
    path: &std::path::Path,
    overrides: &Overrides,
) -> Result<(), ReloadError> {
    let result = GatewayConfig::load(path)
        .and_then(|mut config| config.apply(overrides.clone()).map(|()| config))
        .and_then(|config| {
            let running = gateway.snapshot().config.clone();
            if running.server.listen != config.server.listen
                || running.server.admin != config.server.admin
            {
                tracing::warn!("listen addresses changed; they take effect only on restart");
            }
            gateway.reload(&config)
        });
    let metrics = &gateway.telemetry().metrics;
    match &result {
        Ok(()) => metrics.reloads("ok").increment(1),
        Err(_) => metrics.reloads("error").increment(1),
    }
    result.map_err(ReloadError)
}

fn modified(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

#[cfg(not(unix))]
fn hangup_signal() -> Hangup {
    None
}

/// The next SIGHUP (never, where signals are unavailable).
async fn recv(hangup: &mut Hangup) {
    #[cfg(unix)]
    if let Some(signal) = hangup {
        signal.recv().await;
        return;
    }
    let _ = hangup;
    std::future::pending::<()>().await;
}
