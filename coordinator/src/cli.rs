//! The `stampede` command line: flags are parsed here and turned into
//! validated values once; each subcommand then calls the library.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use stampede_common::plan::{load_file, Format, Plan};
use stampede_common::units::{Dur, Percent};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::control::Control;
use crate::fleet::Fleet;
use crate::orchestrate::{self, RunRequest};
use crate::report::{self, Report};
use crate::{local, remote, server};

/// Exit code for usage, plan and infrastructure errors.
pub const EXIT_ERROR: i32 = 2;

#[derive(Debug, Parser)]
#[command(name = "stampede", version, about = "Distributed load generator with fault injection")]
pub struct Cli {
    /// Export traces over OTLP/gRPC to this endpoint (or set OTEL_EXPORTER_OTLP_ENDPOINT).
    #[arg(long, global = true)]
    pub otlp_endpoint: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a plan and print its verdict; exit 0 pass/warn, 1 SLO failed, 2 error, 3 untrustworthy numbers.
    Run(RunArgs),
    /// Check a plan without running it.
    Validate {
        plan: PathBuf,
    },
    /// Serve a standing coordinator that agents dial and runs are submitted to.
    Coordinator {
        #[arg(long, default_value = "0.0.0.0:7000")]
        listen: String,
    },
    /// List the agents connected to a standing coordinator.
    Agents {
        #[arg(long, default_value = "http://127.0.0.1:7000")]
        coordinator: String,
    },
    /// Serve the built-in HTTP target.
    Target(TargetArgs),
    /// A CPU or memory pressure helper: in-process agents spawn it from this
    /// executable, so `stampede` takes the same hidden subcommand as `stampede-agent`.
    #[command(subcommand, hide = true)]
    Stress(stampede_agent::fault::pressure::StressCommand),
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The plan file (.yaml, .yml, .toml or .json).
    pub plan: PathBuf,
    /// Start N agents in this process, dialing it over gRPC on loopback (default 1
    /// when --coordinator is not given).
    #[arg(long)]
    pub local_agents: Option<usize>,
    /// Submit the run to a standing coordinator instead.
    #[arg(long, conflicts_with = "local_agents")]
    pub coordinator: Option<String>,
    /// Write report.json, report.md, junit.xml and the plan here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// With --coordinator: how many agents to run on (default: all connected).
    #[arg(long, default_value_t = 0)]
    pub expect_agents: usize,
    /// How long to wait for the agents.
    #[arg(long, default_value = "30s")]
    pub wait: Dur,
    /// Worker threads per local agent (default: cores / agents).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Print, per agent and time offset, the exact commands each fault would
    /// run; generate no load and touch nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Where local agents keep their fault journals (default: a folder under the system temp dir).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct TargetArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Latency added to every response (`5ms`).
    #[arg(long)]
    pub latency: Option<Dur>,
    /// With --latency: draw latency uniformly up to this.
    #[arg(long)]
    pub latency_max: Option<Dur>,
    /// Share of requests answered 500 (`1%`).
    #[arg(long)]
    pub error_rate: Option<Percent>,
    /// Stall period: every `--stall-every`, hold requests for `--stall-hold`.
    #[arg(long, requires = "stall_hold")]
    pub stall_every: Option<Dur>,
    #[arg(long, requires = "stall_every")]
    pub stall_hold: Option<Dur>,
    /// Response body size for GET requests, bytes.
    #[arg(long)]
    pub body_size: Option<usize>,
}

pub async fn main(cli: Cli) -> i32 {
    let result = match cli.command {
        Command::Run(args) => run(args).await,
        Command::Validate { plan } => validate(&plan),
        Command::Coordinator { listen } => coordinator(&listen).await,
        Command::Agents { coordinator } => remote::list_agents(&coordinator).await,
        Command::Target(args) => target(args).await,
        Command::Stress(cmd) => match tokio::task::spawn_blocking(move || stampede_agent::fault::pressure::stress_main(cmd)).await {
            Ok(done) => done.map(|()| 0),
            Err(e) => Err(anyhow::anyhow!("pressure helper: {e}")),
        },
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            EXIT_ERROR
        }
    }
}

fn validate(path: &Path) -> anyhow::Result<i32> {
    match load_file(path) {
        Ok(plan) => {
            println!("{}: ok ({} phases, {} steps, {} SLOs, {:?})", path.display(), plan.phases.len(), plan.steps.len(), plan.slos.len(), plan.duration());
            Ok(0)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(EXIT_ERROR)
        }
    }
}

/// Live progress: one self-overwriting line on a terminal, a line per
/// interval in a CI log.
pub fn progress_printer() -> impl Fn(String) + Send + Sync {
    let tty = std::io::stderr().is_terminal();
    move |line: String| {
        if tty && line.starts_with('[') {
            eprint!("\r{line}\x1b[K");
        } else {
            if tty {
                eprintln!();
            }
            eprintln!("{line}");
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<i32> {
    let plan = match load_file(&args.plan) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(EXIT_ERROR);
        }
    };
    let text = std::fs::read_to_string(&args.plan).with_context(|| format!("reading {}", args.plan.display()))?;
    let file_name = args.plan.file_name().map_or("plan".into(), |n| n.to_string_lossy().into_owned());
    if let Some(url) = &args.coordinator {
        let format = Format::from_path(&args.plan).expect("load_file checked the extension");
        return remote::submit(url, &file_name, &text, format, &args).await;
    }
    let report = match run_local(plan, &args).await? {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(EXIT_ERROR);
        }
    };
    if args.dry_run {
        print!("{}", report::dry_run_listing(&report));
        return Ok(0);
    }
    print!("{}", report::terminal_summary(&report));
    if let Some(out) = &args.out {
        report::write_all(&report, &text, &file_name, out).with_context(|| format!("writing reports to {}", out.display()))?;
        println!("\nreports written to {}", out.display());
    }
    Ok(report.verdict.exit_code())
}

/// Runs with in-process agents: a coordinator on loopback, N agents dialing
/// it, and the built-in target if the plan wants one.
async fn run_local(mut plan: Plan, args: &RunArgs) -> anyhow::Result<Result<Report, orchestrate::RunError>> {
    let n = args.local_agents.unwrap_or(1).max(1);
    let target = local::start_builtin_target(&mut plan).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await.context("binding the coordinator on loopback")?;
    let fleet = Fleet::default();
    let shutdown = CancellationToken::new();
    let (addr, server) = server::spawn(listener, fleet.clone(), None, shutdown.clone());
    let agents_stop = CancellationToken::new();
    let state_dir = args.state_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("stampede-state"));
    let agents = local::spawn_agents(n, addr, args.workers, &state_dir, &agents_stop);

    let abort = CancellationToken::new();
    let on_signal = tokio::spawn(abort_on_ctrl_c(abort.clone()));
    let progress = progress_printer();
    let request = RunRequest { plan, expect_agents: n, wait: args.wait.as_duration(), dry_run: args.dry_run };
    let outcome = orchestrate::execute(&fleet, request, abort, &progress).await;
    on_signal.abort();

    agents_stop.cancel();
    for a in agents {
        let _ = a.await;
    }
    shutdown.cancel();
    let _ = server.await;
    if let Some(t) = target {
        t.shutdown().await;
    }
    Ok(outcome)
}

/// The operator's hard abort: Ctrl-C stops every agent and still reports.
async fn abort_on_ctrl_c(abort: CancellationToken) {
    if tokio::signal::ctrl_c().await.is_ok() {
        abort.cancel();
    }
}

async fn coordinator(listen: &str) -> anyhow::Result<i32> {
    let listener = TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    let fleet = Fleet::default();
    let shutdown = CancellationToken::new();
    let (addr, server) = server::spawn(listener, fleet.clone(), Some(Control { fleet }), shutdown.clone());
    tracing::warn!(message = "Coordinator listening without TLS; use it only on a trusted network.", %addr);
    tokio::select! {
        r = server => { r??; }
        _ = tokio::signal::ctrl_c() => { shutdown.cancel(); }
    }
    Ok(0)
}

async fn target(args: TargetArgs) -> anyhow::Result<i32> {
    let spec = stampede_common::plan::BuiltinTarget {
        latency: args.latency,
        latency_max: args.latency_max,
        error_rate: args.error_rate,
        stall: args.stall_every.zip(args.stall_hold).map(|(every, hold)| stampede_common::plan::StallSpec { every, hold }),
    };
    let mut behaviour = local::behaviour(&spec);
    if let Some(n) = args.body_size {
        behaviour.body_size = n;
    }
    eprintln!("built-in target listening on http://{}", args.listen);
    stampede_target::serve_until(args.listen, behaviour, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    .with_context(|| format!("serving on {}", args.listen))?;
    Ok(0)
}
