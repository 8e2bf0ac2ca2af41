//! `servelens mock`: a simulated vLLM / SGLang server, faithful on the wire, with a latency model
//! and a prefix KV cache, so the gateway, the routing and the benchmarks run without a GPU.
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | framework, latency model, output lengths, cache size, default faults |
//! | [`engine`] | slots and waiting queue, prefix cache, KV accounting, counters |
//! | [`cache`] | the block-level prefix cache (chained block hashes, LRU) |
//! | [`text`] | prompt rendering, token counts, deterministic generated text |
//! | [`request`] | reading requests and refusing them as the engines do |
//! | [`wire`] | byte-exact vLLM and SGLang responses |
//! | [`metrics`] | `/metrics` with each framework's names and labels |
//! | [`faults`] | fault injection by config or `x-mock-fault` header |
//! | [`server`] | HTTP endpoints and the generation loop |
//!
//! The mock shares no code with the gateway's request path (so it cannot share its bugs); it
//! uses only the OpenAI vocabulary in [`crate::openai`] and the generic accept loop.

pub mod cache;
pub mod cli;
pub mod config;
pub mod engine;
pub mod faults;
pub mod metrics;
pub mod request;
pub mod server;
pub mod text;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{CacheConfig, LatencyModel, MockConfig, MockFramework, OutputLength};
pub use engine::Engine;
pub use faults::Faults;

/// A running mock replica.
#[derive(Debug)]
pub struct MockServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its simulated engine (counters, cache) for tests to inspect.
    pub engine: Arc<Engine>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl MockServer {
    /// Binds `config.listen` and serves until [`MockServer::shutdown`] (or drop of the runtime).
    pub async fn spawn(config: MockConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let engine = Engine::new(config);
        let (stop, mut stopped) = watch::channel(false);
        let service = server::MockService {
            engine: engine.clone(),
        };
        let task = tokio::spawn(crate::server::serve(
            listener,
            service,
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
            Duration::ZERO,
        ));
        tracing::info!(%addr, framework = engine.config.framework.as_str(), replica = engine.config.replica_id, "mock backend listening");
        Ok(Self {
            addr,
            engine,
            stop,
            task,
        })
    }

    /// `http://ip:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops at once, the way a crashed engine does: the listener closes and every open
    /// connection (streams in progress included) is cut.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Starts `replicas` mocks from one config, on consecutive ports when the port is fixed (each
/// with its own replica id and cache), or on free ports when it is 0.
pub async fn spawn_replicas(
    config: &MockConfig,
    replicas: u32,
) -> std::io::Result<Vec<MockServer>> {
    let mut servers = Vec::new();
    for i in 0..replicas.max(1) {
        let mut replica = config.clone();
        replica.replica_id = config.replica_id + i;
        if config.listen.port() != 0 {
            let port = config
                .listen
                .port()
                .checked_add(u16::try_from(i).unwrap_or(u16::MAX));
            let Some(port) = port else {
                return Err(std::io::Error::other("replica ports run past 65535"));
            };
            replica.listen.set_port(port);
        }
        servers.push(MockServer::spawn(replica).await?);
    }
    Ok(servers)
}
