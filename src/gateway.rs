//! `servelens serve` as a library call: bind the proxy and admin listeners, build the gateway
//! from a config, run both servers until told to stop.
//!
//! [`start`] returns once both sockets are bound (their real addresses are in the handle, so
//! `127.0.0.1:0` works), which is what tests and `servelens demo` use.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::AdminService;
use crate::config::{ConfigError, GatewayConfig};
use crate::proxy::{Gateway, GatewayService};
use crate::server;
use crate::telemetry::{RequestLog, Telemetry};

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

impl RunningGateway {
    /// The proxy's base URL, `http://ip:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.proxy_addr)
    }

    /// The admin base URL.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
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
            until_stopped(stopped),
            grace,
        )),
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
