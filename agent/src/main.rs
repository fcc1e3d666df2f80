//! `stampede-agent`: parse flags, then hand over to the library.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use stampede_agent::fault::pressure::{stress_main, StressCommand};
use stampede_agent::fault::watchdog::{watchdog_main, WatchdogCommand};
use stampede_agent::fault::sweep;
use stampede_agent::session::{self, AgentConfig};
use stampede_common::tls::{ClientTls, Mode, TlsArgs, Token, INSECURE_WARNING};
use tokio_util::sync::CancellationToken;

/// Generates load for a stampede coordinator: dials it, registers, runs the
/// share of each plan it is assigned and streams measurements back.
#[derive(Debug, Parser)]
#[command(name = "stampede-agent", version, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// The coordinator's gRPC URL: https://HOST:PORT with TLS, http:// with --insecure.
    #[arg(long, default_value = "http://127.0.0.1:7000")]
    coordinator: String,
    /// Mutual TLS with the coordinator (--ca is the CA its certificate must
    /// chain to), or --insecure.
    #[command(flatten)]
    tls: TlsArgs,
    /// The enrollment token the coordinator expects (`stampede certs token`);
    /// required with TLS.
    #[arg(long, value_name = "PATH")]
    token_file: Option<std::path::PathBuf>,
    /// This agent's id (default: host name and a random suffix).
    #[arg(long)]
    id: Option<String>,
    /// Labels the plan can select on: `zone=a,role=edge`.
    #[arg(long, default_value = "")]
    labels: String,
    /// Relative weight when the coordinator splits load between agents. 0
    /// makes a fault-only agent: no load, only its node's faults (e.g. on a
    /// service node that must not also generate load).
    #[arg(long, default_value_t = 1)]
    capacity: u32,
    /// Load worker threads (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// This agent's node name: faults apply once per node (default: the host
    /// name). Give agents in separate network namespaces of one host their
    /// own node names, so a network fault is applied in each namespace.
    #[arg(long)]
    node: Option<String>,
    /// Where the fault journal lives.
    #[arg(long, default_value = "/var/lib/stampede")]
    state_dir: std::path::PathBuf,
    /// How long a run goes on without the coordinator (partition, restart):
    /// the agent keeps its load and faults and reconnects; past the lease it
    /// stops the load and reverts its faults by itself.
    #[arg(long, default_value = "10s", value_parser = parse_lease)]
    lease: std::time::Duration,
    /// Export traces over OTLP/gRPC to this endpoint (or set OTEL_EXPORTER_OTLP_ENDPOINT).
    #[arg(long)]
    otlp_endpoint: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// A CPU or memory pressure helper, spawned by the agent for a fault.
    #[command(subcommand, hide = true)]
    Stress(StressCommand),
    /// Reverts one fault at its deadline unless disarmed (started by the agent).
    #[command(hide = true)]
    FaultWatchdog(WatchdogCommand),
    /// Remove everything stampede left on this node: reverts the journal's
    /// pending faults, deletes `inet stampede_*` nft tables and stampede's
    /// root qdisc, kills leftover pressure helpers, deletes stale probe
    /// namespaces. Prints one line per thing.
    Sweep {
        /// Where the fault journal lives.
        #[arg(long, default_value = "/var/lib/stampede")]
        state_dir: std::path::PathBuf,
        /// Print what would be removed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Capability-probe namespaces (`stp-probe-*`) younger than this may
        /// belong to a probe running now and are left alone.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        probe_min_age: std::time::Duration,
    },
}

fn parse_labels(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else { bail!("label `{pair}` must be key=value") };
        labels.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(labels)
}

/// TLS or `--insecure`, chosen explicitly; `Err` is a usage message.
fn transport(args: &Args) -> Result<Mode, String> {
    let mode = args.tls.mode_for(&args.coordinator, true)?;
    if matches!(mode, Mode::Tls(_)) && args.token_file.is_none() {
        return Err("with TLS the agent needs --token-file PATH too: the coordinator enrolls only agents that present its token".into());
    }
    Ok(mode)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command {
        Some(Sub::Stress(cmd)) => return stress_main(cmd),
        Some(Sub::FaultWatchdog(cmd)) => return watchdog_main(cmd),
        Some(Sub::Sweep { state_dir, dry_run, probe_min_age }) => std::process::exit(sweep::main(&state_dir, dry_run, probe_min_age)),
        None => {}
    }
    let mode = transport(&args).unwrap_or_else(|message| Args::command().error(ErrorKind::MissingRequiredArgument, message).exit());
    let mut cfg = AgentConfig {
        coordinator: args.coordinator.clone(),
        tls: None,
        token: None,
        agent_id: args.id.unwrap_or_else(default_id),
        labels: parse_labels(&args.labels).context("--labels")?,
        capacity: args.capacity,
        workers: args.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        node: args.node.clone().unwrap_or_else(session::host_name),
        state_dir: args.state_dir.clone(),
        lease: args.lease,
        probe_capabilities: true,
    };
    // Before the runtime starts its threads (stampede_agent::open_files).
    stampede_agent::open_files::prepare_process();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let _telemetry = stampede_common::telemetry::init("stampede-agent", "info", args.otlp_endpoint).map_err(anyhow::Error::msg)?;
        // Read after the log is set up: reading the token may warn.
        match &mode {
            Mode::Tls(files) => cfg.tls = Some(ClientTls::load(files)?),
            Mode::Insecure => tracing::warn!(message = INSECURE_WARNING),
        }
        cfg.token = args.token_file.as_deref().map(Token::read).transpose()?;
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        session::run(cfg, shutdown).await
    })
}

/// A lease shorter than a second would end sessions that are merely slow
/// (heartbeats are 1 s apart).
fn parse_lease(text: &str) -> Result<std::time::Duration, String> {
    let lease = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if lease < std::time::Duration::from_secs(1) {
        return Err(format!("`{text}` is shorter than the 1 s minimum"));
    }
    Ok(lease)
}

fn default_id() -> String {
    format!("{}-{}", session::host_name(), &uuid::Uuid::new_v4().simple().to_string()[..6])
}

/// SIGINT, SIGTERM or SIGHUP: stop the load, revert the faults, tell the
/// coordinator (the run's RunFinished says the agent is shutting down) and
/// leave. Later signals are caught and ignored: the reverts finish first.
async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup())) else {
        return;
    };
    loop {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = hup.recv() => "SIGHUP",
        };
        if shutdown.is_cancelled() {
            tracing::warn!(message = "Signal received again; still reverting faults before exiting.", signal = name);
        } else {
            tracing::info!(message = "Signal received; stopping the load and reverting faults.", signal = name);
            shutdown.cancel();
        }
    }
}
