//! The `servelens` command line: a thin clap front over the library.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use servelens::config::{Framework, GatewayConfig, Overrides};

#[derive(Parser)]
#[command(
    name = "servelens",
    version,
    about = "A gateway for LLM inference that times every token"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway: proxy OpenAI requests to backend pools and measure every token.
    Serve(ServeArgs),
    /// Run the whole story on this machine: a backend, the gateway, a few requests, a table.
    Demo(DemoArgs),
    /// Run a simulated vLLM or SGLang backend (exact wire formats, latency model, prefix cache).
    Mock(servelens::mock::cli::MockArgs),
    /// Run an experiment against one or more targets; write results/<run-id>/.
    Bench(servelens::bench::cli::BenchArgs),
    /// Re-render a run's summary and report, or compare two runs side by side.
    Report(servelens::report::cli::ReportArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Gateway config file (TOML); see config/gateway.toml.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Backend base URL; repeat for several replicas. Replaces the file's pools and routes
    /// with one pool serving every model.
    #[arg(long = "upstream", value_name = "URL")]
    upstreams: Vec<String>,
    /// Framework of the --upstream backends (or of every pool in the file).
    #[arg(long, value_enum)]
    framework: Option<Framework>,
    /// Proxy listen address (overrides server.listen).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Admin listen address for /metrics, /healthz, /readyz (overrides server.admin).
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Write one JSON line per request to this file (overrides log.requests).
    #[arg(long)]
    request_log: Option<PathBuf>,
}

#[derive(Args)]
struct DemoArgs {
    /// Distinct system prompts (of 2,000 tokens each).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    prompts: u32,
    /// Questions asked under each system prompt.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    questions: u32,
    /// Requests in flight.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// Where the run directory (results, report.html) goes.
    #[arg(long, default_value = "results")]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The demo's in-process servers would otherwise fill the screen with their start-up lines.
    let default_filter = match cli.command {
        Command::Demo(_) => "servelens=warn",
        _ => "servelens=info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Mock(args) => Ok(servelens::mock::cli::run(args, shutdown_signal()).await?),
            Command::Bench(args) => {
                Ok(servelens::bench::cli::run(args, &mut std::io::stdout()).await?)
            }
            Command::Report(args) => Ok(servelens::report::cli::run(args, &mut std::io::stdout())?),
            Command::Demo(args) => {
                let mut stdout = std::io::stdout();
                let options = servelens::demo::DemoOptions {
                    prompts: args.prompts,
                    questions: args.questions,
                    concurrency: args.concurrency,
                    out: args.out,
                };
                servelens::demo::run(options, &mut stdout).await?;
                Ok(())
            }
        }
    })
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => GatewayConfig::load(path)?,
        None if args.upstreams.is_empty() => {
            bail!("nothing to serve: pass --config FILE or --upstream URL (see servelens serve --help)")
        }
        None => GatewayConfig::default(),
    };
    let overrides = Overrides {
        upstreams: args.upstreams,
        framework: args.framework,
        listen: args.listen,
        admin: args.admin,
        request_log: args.request_log,
    };
    config.apply(overrides.clone())?;
    let mut running = servelens::gateway::start(config).await?;
    if let Some(path) = args.config {
        // SIGHUP or an edit of the file reloads routes, pools and experiments.
        running.watch_config(path, overrides);
    }
    eprintln!(
        "servelens: proxy on {}, metrics on {}/metrics",
        running.url(),
        running.admin_url()
    );
    shutdown_signal().await;
    eprintln!("servelens: shutting down (draining in-flight requests)");
    running.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
