//! `servelens demo`: the whole story on one machine with nothing to set up.
//!
//! ```text
//!                      ┌─► gateway (round_robin) ─► 4 simulated vLLM replicas
//! servelens bench ─────┤
//!  shared_prefix       └─► gateway (prefix_hash) ─► 4 simulated vLLM replicas
//! ```
//!
//! Starts two fleets of simulated vLLM replicas ([`crate::mock`], in process, on free ports), a
//! gateway in front of each (one routing round robin, one by prompt prefix), runs one
//! shared-prefix experiment ([`crate::bench`]) through both with identical requests, and prints
//! the client-side latencies side by side, the prefix-cache hit ratio and the load on each
//! replica, and where the results and the HTML report were written.
//!
//! Each replica's KV cache holds about half of the system prompts, so the fleet can keep every
//! prompt cached only when each prompt lives on one replica: round robin keeps re-computing
//! prefills, prefix routing does not.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::bench::experiment::Experiment;
use crate::bench::{BenchError, Finished, RunOptions};
use crate::config::{BackendSpec, Framework, GatewayConfig, Policy, PoolConfig, RouteConfig};
use crate::gateway::{self, RunningGateway};
use crate::mock::{MockConfig, MockFramework, MockServer};
use crate::promtext::Scrape;
use crate::report::files;

/// The model every replica serves.
const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
/// Replicas behind each gateway.
const REPLICAS: usize = 4;
/// Tokens of each system prompt.
const PREFIX_TOKENS: u32 = 2000;
/// KV blocks (16 tokens) per replica: room for about half of the default eight system prompts.
const CACHE_BLOCKS: usize = 560;

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Distinct system prompts.
    pub prompts: u32,
    /// Questions asked under each system prompt.
    pub questions: u32,
    /// Requests in flight.
    pub concurrency: u32,
    /// Parent directory of the run directory.
    pub out: PathBuf,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            prompts: 8,
            questions: 8,
            concurrency: 8,
            out: PathBuf::from("results"),
        }
    }
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A local socket could not be opened, or the output could not be written.
    #[error("demo: {0}")]
    Io(#[from] std::io::Error),
    /// A gateway did not start.
    #[error(transparent)]
    Start(#[from] gateway::StartError),
    /// The demo's own configuration was refused (a bug).
    #[error("demo configuration refused: {0}")]
    Config(String),
    /// The experiment failed.
    #[error(transparent)]
    Bench(#[from] BenchError),
}

/// One gateway and the replicas behind it.
struct Fleet {
    policy: Policy,
    replicas: Vec<MockServer>,
    gateway: RunningGateway,
}

impl Fleet {
    async fn start(policy: Policy) -> Result<Self, DemoError> {
        let mut replicas = Vec::with_capacity(REPLICAS);
        for i in 0..REPLICAS {
            let mut config = MockConfig::local(MockFramework::Vllm);
            config.model = MODEL.into();
            config.replica_id = i as u32;
            config.cache.capacity_blocks = CACHE_BLOCKS;
            replicas.push(MockServer::spawn(config).await?);
        }
        let backends = replicas
            .iter()
            .enumerate()
            .map(|(i, r)| BackendSpec::Named {
                name: format!("replica-{i}"),
                url: r.url(),
            })
            .collect();
        let mut pool = PoolConfig::new(Framework::Vllm, backends);
        pool.policy = policy;
        let mut config = GatewayConfig::default();
        config.pools.insert("vllm".into(), pool);
        config.routes.push(RouteConfig::to_pool(MODEL, "vllm"));
        config.server.listen = ([127, 0, 0, 1], 0).into();
        config.server.admin = ([127, 0, 0, 1], 0).into();
        let gateway = gateway::start(config).await?;
        Ok(Self {
            policy,
            replicas,
            gateway,
        })
    }

    fn name(&self) -> &'static str {
        self.policy.as_str()
    }

    /// Requests each replica served, from the gateway's own `/metrics`.
    fn requests_per_replica(&self) -> Vec<u64> {
        let page = Scrape::parse(&self.gateway.gateway.telemetry().metrics.render()).ok();
        (0..self.replicas.len())
            .map(|i| {
                let backend = format!("replica-{i}");
                page.as_ref()
                    .and_then(|p| p.sum("servelens_requests_total", &[("backend", &backend)]))
                    .map_or(0, |v| v as u64)
            })
            .collect()
    }

    /// This fleet's part of the demo's outcome.
    fn report(&self, finished: &Finished) -> FleetReport {
        FleetReport {
            policy: self.policy,
            prefix_cache_hit_ratio: finished
                .summary
                .backends
                .iter()
                .find(|b| b.name == self.name())
                .and_then(|b| b.prefix_cache_hit_ratio),
            requests_per_replica: self.requests_per_replica(),
        }
    }

    async fn stop(self) {
        self.gateway.shutdown().await;
        for replica in self.replicas {
            replica.shutdown().await;
        }
    }
}

/// What one gateway's fleet did during the demo.
#[derive(Debug, Clone)]
pub struct FleetReport {
    /// The gateway's pool policy.
    pub policy: Policy,
    /// Prompt tokens served from cache over the run (the gateway's cached / prompt tokens).
    pub prefix_cache_hit_ratio: Option<f64>,
    /// Requests each replica served.
    pub requests_per_replica: Vec<u64>,
}

/// What the demo did.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// The run directory (`summary.json`, `requests.jsonl`, `report.html`, ...).
    pub dir: PathBuf,
    /// One entry per gateway, round robin first.
    pub fleets: Vec<FleetReport>,
}

/// Runs the demo, writing what it shows to `out`.
pub async fn run(
    options: DemoOptions,
    out: &mut impl std::io::Write,
) -> Result<DemoReport, DemoError> {
    let fleets = [
        Fleet::start(Policy::RoundRobin).await?,
        Fleet::start(Policy::PrefixHash).await?,
    ];
    writeln!(out, "servelens demo")?;
    for fleet in &fleets {
        writeln!(
            out,
            "  gateway {:<12} {}  (metrics {}/metrics) -> {} simulated vLLM replicas",
            fleet.name(),
            fleet.gateway.url(),
            fleet.gateway.admin_url(),
            fleet.replicas.len(),
        )?;
    }
    writeln!(
        out,
        "  workload: {} system prompts of {PREFIX_TOKENS} tokens x {} questions, {} in flight, \
         the same requests through each gateway\n",
        options.prompts, options.questions, options.concurrency
    )?;
    let experiment = experiment(&options, &fleets)?;
    let finished = crate::bench::run(
        experiment,
        RunOptions {
            run_id: None,
            progress: true,
        },
    )
    .await;
    let report = finished.map(|f| {
        let report = DemoReport {
            dir: f.dir.clone(),
            fleets: fleets.iter().map(|fleet| fleet.report(&f)).collect(),
        };
        (summary(&f, &report), report)
    });
    for fleet in fleets {
        fleet.stop().await;
    }
    let (shown, report) = report?;
    out.write_all(shown.as_bytes())?;
    Ok(report)
}

/// The experiment: one target per fleet, each gateway's `/metrics` scraped around the run.
fn experiment(options: &DemoOptions, fleets: &[Fleet]) -> Result<Experiment, DemoError> {
    let mut text = format!(
        "name = \"demo\"\nmodel = \"{MODEL}\"\nout = {out}\nwarmup = 0\nseed = 7\n\
         [lengths.output]\ndist = \"fixed\"\ntokens = 24\n\
         [extra_body]\nignore_eos = true\n\
         [workload]\nkind = \"shared_prefix\"\nprefixes = {}\nquestions = {}\nconcurrency = {}\n\
         prefix = {{ dist = \"fixed\", tokens = {PREFIX_TOKENS} }}\n",
        options.prompts,
        options.questions,
        options.concurrency,
        out = toml::Value::String(options.out.display().to_string()),
    );
    for fleet in fleets {
        let _ = write!(
            text,
            "[[targets]]\nname = \"{name}\"\nurl = \"{url}\"\n\
             [[scrape.endpoints]]\nname = \"{name}\"\nurl = \"{admin}/metrics\"\n",
            name = fleet.name(),
            url = fleet.gateway.url(),
            admin = fleet.gateway.admin_url(),
        );
    }
    Experiment::from_toml(&text).map_err(|e| DemoError::Config(e.to_string()))
}

/// What the demo prints at the end: the bench summary, the comparison, routing, and the files.
fn summary(finished: &Finished, report: &DemoReport) -> String {
    let mut s = finished.summary.table();
    for c in &finished.comparisons {
        let _ = write!(s, "\n{}", c.table());
    }
    let _ = writeln!(
        s,
        "\n{:<12} {:>16} {:>22}  requests per replica",
        "gateway", "prefix-cache hit", "max/mean per replica"
    );
    for fleet in &report.fleets {
        let hit = fleet
            .prefix_cache_hit_ratio
            .map_or("-".to_string(), |r| format!("{:.1}%", r * 100.0));
        let _ = writeln!(
            s,
            "{:<12} {:>16} {:>22.2}  {:?}",
            fleet.policy.as_str(),
            hit,
            max_over_mean(&fleet.requests_per_replica),
            fleet.requests_per_replica
        );
    }
    let _ = writeln!(s);
    for name in [files::SUMMARY, files::REQUESTS, files::REPORT] {
        let _ = writeln!(s, "wrote {}", finished.dir.join(name).display());
    }
    let _ = writeln!(
        s,
        "\nopen {} in a browser for the charts; `servelens report {}` re-renders it",
        finished.dir.join(files::REPORT).display(),
        finished.dir.display()
    );
    s
}

/// Largest over mean (1.0 is perfectly even; 0 when nothing was sent).
pub fn max_over_mean(counts: &[u64]) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let max = counts.iter().copied().max().unwrap_or(0) as f64;
    max * counts.len() as f64 / total as f64
}

#[cfg(test)]
mod tests {
    use super::max_over_mean;

    #[test]
    fn max_over_mean_of_even_and_skewed_loads() {
        assert_eq!(max_over_mean(&[16, 16, 16, 16]), 1.0);
        assert_eq!(max_over_mean(&[32, 16, 8, 8]), 2.0);
        assert_eq!(max_over_mean(&[0, 0]), 0.0);
    }
}
