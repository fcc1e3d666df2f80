//! `stampede-agent`: parse flags, then hand over to the library.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use clap::Parser;
use stampede_agent::fault::pressure::{stress_main, StressCommand};
use stampede_agent::session::{self, AgentConfig};
use tokio_util::sync::CancellationToken;

/// Generates load for a stampede coordinator: dials it, registers, runs the
/// share of each plan it is assigned and streams measurements back.
#[derive(Debug, Parser)]
#[command(name = "stampede-agent", version, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// The coordinator's gRPC URL.
    #[arg(long, default_value = "http://127.0.0.1:7000")]
    coordinator: String,
    /// This agent's id (default: host name and a random suffix).
    #[arg(long)]
    id: Option<String>,
    /// Labels the plan can select on: `zone=a,role=edge`.
    #[arg(long, default_value = "")]
    labels: String,
    /// Relative weight when the coordinator splits load between agents.
    #[arg(long, default_value_t = 1)]
    capacity: u32,
    /// Load worker threads (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Where the fault journal lives.
    #[arg(long, default_value = "/var/lib/stampede")]
    state_dir: std::path::PathBuf,
    /// Export traces over OTLP/gRPC to this endpoint (or set OTEL_EXPORTER_OTLP_ENDPOINT).
    #[arg(long)]
    otlp_endpoint: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// A CPU or memory pressure helper, spawned by the agent for a fault.
    #[command(subcommand, hide = true)]
    Stress(StressCommand),
}

fn parse_labels(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else { bail!("label `{pair}` must be key=value") };
        labels.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(labels)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Sub::Stress(cmd)) = args.command {
        return stress_main(cmd);
    }
    let cfg = AgentConfig {
        coordinator: args.coordinator.clone(),
        agent_id: args.id.unwrap_or_else(default_id),
        labels: parse_labels(&args.labels).context("--labels")?,
        capacity: args.capacity.max(1),
        workers: args.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        node: session::host_name(),
        state_dir: args.state_dir.clone(),
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let _telemetry = stampede_common::telemetry::init("stampede-agent", "info", args.otlp_endpoint).map_err(anyhow::Error::msg)?;
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        session::run(cfg, shutdown).await
    })
}

fn default_id() -> String {
    format!("{}-{}", session::host_name(), &uuid::Uuid::new_v4().simple().to_string()[..6])
}

/// SIGINT or SIGTERM: stop the load and leave cleanly.
async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("Signal received; stopping.");
    shutdown.cancel();
}
