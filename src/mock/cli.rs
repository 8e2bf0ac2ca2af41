//! `servelens mock` flags and the command itself: start one or more simulated replicas and
//! serve until Ctrl-C.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::mock::{spawn_replicas, Faults, MockConfig, MockFramework};

/// Flags of `servelens mock` (each overrides the `--config` file's value).
#[derive(Debug, Clone, clap::Args)]
pub struct MockArgs {
    /// Which server to imitate.
    #[arg(long, value_enum, default_value_t = MockFramework::Vllm)]
    pub framework: MockFramework,
    /// Port of the first replica (replicas take consecutive ports; 0 = any free port).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// How many replicas to start (each with its own engine and prefix cache).
    #[arg(long, default_value_t = 1)]
    pub replicas: u32,
    /// Served model name.
    #[arg(long)]
    pub model: Option<String>,
    /// Id of the first replica.
    #[arg(long)]
    pub replica_id: Option<u32>,
    /// Seed of generated text and ids.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Sequences decoding at once; more wait in a queue.
    #[arg(long)]
    pub max_num_seqs: Option<usize>,
    /// Fixed prefill cost, e.g. 15ms.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttft_base: Option<Duration>,
    /// Prefill cost per uncached prompt token, e.g. 50us.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub prefill_per_token: Option<Duration>,
    /// Decode step with one running sequence, e.g. 12ms.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub itl: Option<Duration>,
    /// Extra decode time per additional running sequence, e.g. 150us.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub itl_per_seq: Option<Duration>,
    /// Tokens per decode step and chunk (speculative-style multi-token chunks when > 1).
    #[arg(long)]
    pub tokens_per_step: Option<u64>,
    /// No latency at all (overhead and throughput tests).
    #[arg(long)]
    pub instant: bool,
    /// Shortest natural answer, in tokens.
    #[arg(long)]
    pub output_min: Option<u64>,
    /// Longest natural answer, in tokens.
    #[arg(long)]
    pub output_max: Option<u64>,
    /// Tokens per KV block.
    #[arg(long)]
    pub block_tokens: Option<usize>,
    /// KV blocks per replica (0 disables prefix caching).
    #[arg(long)]
    pub cache_blocks: Option<usize>,
    /// Context length.
    #[arg(long)]
    pub max_model_len: Option<u64>,
    /// Faults for every request, e.g. "status=503" or "error_after=3".
    #[arg(long)]
    pub fault: Option<String>,
    /// A TOML file with any of the mock's settings (see config/mock.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Why the mock did not start.
#[derive(Debug, thiserror::Error)]
pub enum MockCliError {
    /// The config file could not be read or parsed.
    #[error("mock config {path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// `--fault` did not parse.
    #[error(transparent)]
    Fault(#[from] crate::mock::faults::FaultParseError),
    /// A socket could not be bound.
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
}

impl MockArgs {
    /// The config these flags describe.
    pub fn into_config(self) -> Result<MockConfig, MockCliError> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| MockCliError::Config {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                toml::from_str(&text).map_err(|e: toml::de::Error| MockCliError::Config {
                    path: path.clone(),
                    message: e.to_string(),
                })?
            }
            None => MockConfig::default(),
        };
        config.framework = self.framework;
        config.listen = SocketAddr::new(self.host, self.port);
        if self.instant {
            config.latency = crate::mock::LatencyModel {
                max_num_seqs: config.latency.max_num_seqs,
                ..crate::mock::LatencyModel::instant()
            };
        }
        set(&mut config.model, self.model);
        set(&mut config.replica_id, self.replica_id);
        set(&mut config.seed, self.seed);
        set(&mut config.max_model_len, self.max_model_len);
        let latency = &mut config.latency;
        set(&mut latency.max_num_seqs, self.max_num_seqs);
        set(&mut latency.ttft_base, self.ttft_base);
        set(&mut latency.prefill_per_token, self.prefill_per_token);
        set(&mut latency.itl_base, self.itl);
        set(&mut latency.itl_per_seq, self.itl_per_seq);
        set(&mut latency.tokens_per_step, self.tokens_per_step);
        set(&mut config.output.min, self.output_min);
        set(&mut config.output.max, self.output_max);
        set(&mut config.cache.block_tokens, self.block_tokens);
        set(&mut config.cache.capacity_blocks, self.cache_blocks);
        if let Some(fault) = &self.fault {
            config.faults = Faults::parse(fault)?;
        }
        Ok(config)
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *field = value;
    }
}

/// Runs `servelens mock` until `shutdown` resolves.
pub async fn run(
    args: MockArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), MockCliError> {
    let replicas = args.replicas;
    let config = args.into_config()?;
    let servers = spawn_replicas(&config, replicas).await?;
    for server in &servers {
        eprintln!(
            "servelens mock: {} replica {} serving `{}` on {}",
            config.framework.as_str(),
            server.engine.config.replica_id,
            config.model,
            server.url()
        );
    }
    shutdown.await;
    for server in servers {
        server.shutdown().await;
    }
    Ok(())
}
