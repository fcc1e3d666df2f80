//! The `stampede` command line: flags are parsed here and turned into
//! validated values once; each subcommand then calls the library.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand};
use stampede_common::plan::data::DataFiles;
use stampede_common::plan::{load_file_with, redact, Format, Params, Plan, SecretSource};
use stampede_common::tls::{ClientTls, Mode, ServerTls, TlsArgs, Token, INSECURE_WARNING};
use stampede_common::units::{Dur, Percent};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::control::Control;
use crate::fleet::Fleet;
use crate::orchestrate::{self, RunRequest};
use crate::report::{self, Report};
use crate::server::Security;
use crate::signals::{Interrupt, StopSignals};
use crate::store::RunStore;
use crate::{certs, local, remote, server};

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
    /// Check a plan without running it (with the same `${NAME}`, --set,
    /// --target and secrets as `run`).
    Validate {
        plan: PathBuf,
        #[command(flatten)]
        params: PlanParams,
    },
    /// Serve a standing coordinator that agents dial and runs are submitted to.
    Coordinator(CoordinatorArgs),
    /// List the agents connected to a standing coordinator.
    Agents(AgentsArgs),
    /// Stop the run in progress on a standing coordinator and revert every fault
    /// on every agent (operator certificate); prints what each agent reverted.
    /// Exit 0 halted and all clear (or no run in progress), 3 an agent did not
    /// confirm or a fault is still applied, 2 the halt could not be made.
    Halt(AgentsArgs),
    /// Make a CA, certificates and the enrollment token for mutual TLS.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Serve the built-in HTTP target.
    Target(TargetArgs),
    /// A CPU or memory pressure helper: in-process agents spawn it from this
    /// executable, so `stampede` takes the same hidden subcommand as `stampede-agent`.
    #[command(subcommand, hide = true)]
    Stress(stampede_agent::fault::pressure::StressCommand),
    /// A fault's watchdog process: in-process agents start it from this
    /// executable, so `stampede` takes the same hidden subcommand as `stampede-agent`.
    #[command(hide = true)]
    FaultWatchdog(stampede_agent::fault::watchdog::WatchdogCommand),
}

/// What shapes a plan beyond its file: one plan for every environment.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PlanParams {
    /// Override a field of the plan, after `${NAME}` substitution (repeatable;
    /// a later one wins): `--set phases[0].duration=30s`, `--set 'slos[1].pass=< 300ms'`.
    /// The value is text, converted as the field needs; `null` removes the field.
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    pub sets: Vec<String>,
    /// Point the plan at this base URL instead of its `target`; drops its
    /// `builtin_target` (the plan now runs against a real service).
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,
}

/// Loads the plan at `path` as `stampede run` and `validate` see it:
/// `${NAME}` from this process's environment, the flags' overrides, and
/// secrets read here (environment variables, files relative to the plan's
/// folder) unless `resolve_secrets` is false (a dry run needs none), and
/// the steps' data files read (relative to the plan's folder too; a dry
/// run skips one that is not there).
pub fn load_plan(path: &Path, params: &PlanParams, resolve_secrets: bool) -> Result<Plan, stampede_common::plan::PlanError> {
    let env = stampede_common::plan::process_env;
    let dir = path.parent().unwrap_or(Path::new(""));
    let secrets = if resolve_secrets { SecretSource::Local { env: &env, dir } } else { SecretSource::Unresolved };
    // A dry run (no secrets) prints a plan whose data file is not here too.
    let local = DataFiles::Local { dir };
    let data = if resolve_secrets { local } else { DataFiles::IfPresent(&local) };
    load_file_with(path, &Params { vars: Some(&env), sets: &params.sets, target: params.target.as_deref(), secrets, data })
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The plan file (.yaml, .yml, .toml or .json).
    pub plan: PathBuf,
    #[command(flatten)]
    pub params: PlanParams,
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
    /// Print, per agent and in time order, the exact commands each fault would
    /// run and what the preflight would say of it; generate no load and touch
    /// nothing. With --out, also write DIR/dry-run.json.
    #[arg(long)]
    pub dry_run: bool,
    /// Run the load for real but only announce each fault at its time
    /// (logged, and `simulated` in the report): nothing is touched.
    #[arg(long, conflicts_with = "dry_run")]
    pub simulate_faults: bool,
    /// Where local agents keep their fault journals (default: a folder under the system temp dir).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// With --coordinator: mutual TLS (a client certificate signed by the
    /// coordinator's CA) or --insecure.
    #[command(flatten)]
    pub tls: TlsArgs,
}

#[derive(Debug, clap::Args)]
pub struct CoordinatorArgs {
    #[arg(long, default_value = "0.0.0.0:7000")]
    pub listen: String,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// The enrollment token agents must present (`stampede certs token`);
    /// required with TLS, optional with --insecure.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// The run store: every submitted run's reports and plan are kept in
    /// DIR/runs/<UTC start>-<run id>/ when it ends. Created if missing; the
    /// coordinator refuses to start if it cannot write there.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub data: PathBuf,
    /// Keep only the newest N runs in the run store; older run folders are
    /// removed after each run is saved (0 keeps every run). The default is
    /// about three years of nightly runs.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub keep_runs: usize,
}

/// Where a standing coordinator keeps its runs by default: the state
/// directory systemd's `StateDirectory=stampede-coordinator` makes, beside
/// the agent's `/var/lib/stampede`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/stampede-coordinator";

impl CoordinatorArgs {
    fn mode(&self) -> Result<Mode, String> {
        let mode = self.tls.mode(true)?;
        if matches!(mode, Mode::Tls(_)) && self.token_file.is_none() {
            return Err("with TLS the coordinator needs --token-file PATH too: agents must present the enrollment token (make one with `stampede certs token --out FILE`)".into());
        }
        Ok(mode)
    }
}

#[derive(Debug, clap::Args)]
pub struct AgentsArgs {
    #[arg(long, default_value = "http://127.0.0.1:7000")]
    pub coordinator: String,
    #[command(flatten)]
    pub tls: TlsArgs,
}

impl Cli {
    /// Parses the command line and checks the transport flags: TLS or
    /// `--insecure` must be chosen explicitly. A usage error exits 2 naming
    /// the flags, as clap does for its own errors.
    pub fn parse_checked() -> Cli {
        let cli = Cli::parse();
        if let Some((sub, message)) = cli.transport_error() {
            let mut cmd = Cli::command();
            cmd.build();
            let sub = cmd.find_subcommand_mut(sub).expect("a subcommand of this CLI");
            sub.error(ErrorKind::MissingRequiredArgument, message).exit();
        }
        cli
    }

    fn transport_error(&self) -> Option<(&'static str, String)> {
        match &self.command {
            Command::Coordinator(a) => a.mode().err().map(|m| ("coordinator", m)),
            Command::Agents(a) => a.tls.mode_for(&a.coordinator, false).err().map(|m| ("agents", m)),
            Command::Halt(a) => a.tls.mode_for(&a.coordinator, false).err().map(|m| ("halt", m)),
            Command::Run(a) => match (&a.coordinator, a.tls.any()) {
                (Some(_), _) if a.workers.is_some() || a.state_dir.is_some() => Some(REMOTE_LOCAL_FLAGS.into()),
                (Some(url), _) => a.tls.mode_for(url, false).err(),
                (None, true) => Some("--ca, --cert, --key and --insecure are for a standing coordinator: give --coordinator URL too (in-process agents always use loopback)".into()),
                (None, false) => None,
            }
            .map(|m| ("run", m)),
            _ => None,
        }
    }
}

/// Every flag of `stampede run` is, with `--coordinator`, either sent to the
/// coordinator and honoured there (the plan, --expect-agents, --wait,
/// --dry-run and --simulate-faults through their own RPCs), applied here (--out, the TLS flags), or
/// refused: these two shape in-process agents, and a standing coordinator's
/// agents are separate processes with their own flags. Dropping them
/// silently would run something other than what was asked.
const REMOTE_LOCAL_FLAGS: &str = "--workers and --state-dir apply to in-process agents only: a standing coordinator's agents take their own (`stampede-agent --workers N --state-dir DIR`); drop them with --coordinator";

/// The client side of the transport flags: the certificate to present and
/// the CA to trust, or nothing with `--insecure` (which says so in the log).
fn client_tls(args: &TlsArgs) -> anyhow::Result<Option<ClientTls>> {
    match args.mode(false).map_err(anyhow::Error::msg)? {
        Mode::Tls(files) => Ok(Some(ClientTls::load(&files)?)),
        Mode::Insecure => {
            tracing::warn!(message = INSECURE_WARNING);
            Ok(None)
        }
    }
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
    /// An outage window from the target's start, AT+FOR:ACTION with ACTION a
    /// status, `stall` or `refuse` (`--window 5s+7s:503 --window 30s+2s:refuse`).
    #[arg(long = "window", value_name = "AT+FOR:ACTION")]
    pub windows: Vec<stampede_common::plan::TargetWindow>,
    /// After the process is stopped and resumed, answer STATUS for FOR (`7s:503`).
    #[arg(long, value_name = "FOR:STATUS")]
    pub after_pause: Option<stampede_common::plan::AfterPauseSpec>,
    /// Response body size for GET requests, bytes.
    #[arg(long)]
    pub body_size: Option<usize>,
    /// Append `PEER_IP UNIX_NANOS` to FILE for the first request of each new
    /// peer address (e.g. to measure how closely a fleet's agents started).
    #[arg(long, value_name = "FILE")]
    pub arrivals: Option<PathBuf>,
    /// Serve HTTPS, with a certificate (for the --listen address and
    /// `localhost`) from a CA generated at start; the CA and a client
    /// certificate are written to --tls-dir.
    #[arg(long)]
    pub tls: bool,
    /// Where --tls writes `ca.pem`, `client.pem` and `client-key.pem`
    /// (default: `stampede-target-tls` in the temporary directory).
    #[arg(long, value_name = "DIR", requires = "tls")]
    pub tls_dir: Option<PathBuf>,
    /// With --tls: refuse clients without a certificate of that CA
    /// (`client.pem`, `client-key.pem`).
    #[arg(long, requires = "tls")]
    pub require_client_cert: bool,
    /// A submitted job (`POST /jobs`) is `done` this long after (default 1s).
    #[arg(long, value_name = "DUR")]
    pub jobs_done_after: Option<Dur>,
    /// Share of jobs that stay `pending` forever, every k-th (`25%`: jobs 4, 8, …).
    #[arg(long, value_name = "PCT")]
    pub jobs_never_finish: Option<Percent>,
}

pub async fn main(cli: Cli) -> i32 {
    let result = match cli.command {
        Command::Run(args) => run(args).await,
        Command::Validate { plan, params } => validate(&plan, &params),
        Command::Coordinator(args) => coordinator(args).await,
        Command::Agents(args) => match client_tls(&args.tls) {
            Ok(tls) => remote::list_agents(&args.coordinator, tls.as_ref()).await,
            Err(e) => Err(e),
        },
        Command::Halt(args) => match client_tls(&args.tls) {
            Ok(tls) => remote::halt(&args.coordinator, tls.as_ref()).await,
            Err(e) => Err(e),
        },
        Command::Certs(cmd) => certs::main(cmd),
        Command::Target(args) => target(args).await,
        Command::Stress(cmd) => match tokio::task::spawn_blocking(move || stampede_agent::fault::pressure::stress_main(cmd)).await {
            Ok(done) => done.map(|()| 0),
            Err(e) => Err(anyhow::anyhow!("pressure helper: {e}")),
        },
        Command::FaultWatchdog(cmd) => match tokio::task::spawn_blocking(move || stampede_agent::fault::watchdog::watchdog_main(cmd)).await {
            Ok(done) => done.map(|()| 0),
            Err(e) => Err(anyhow::anyhow!("fault watchdog: {e}")),
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

fn validate(path: &Path, params: &PlanParams) -> anyhow::Result<i32> {
    match load_plan(path, params, true) {
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

/// Whether the in-process agents probe this node's fault capabilities at
/// start: only for a plan with faults that may apply them (or, in a dry
/// run, show what would refuse them). The probe runs `ip netns add`, `tc`
/// and `nft` in a throwaway namespace; a simulated run touches nothing, and
/// needs only the `simulate_faults` capability every agent declares.
fn probes_capabilities(plan: &Plan, simulate_faults: bool) -> bool {
    !plan.faults.is_empty() && !simulate_faults
}

/// `print` with every secret value in the line replaced by `***`: the
/// same last defence a standing coordinator applies to the progress it
/// sends (control.rs), for a run with in-process agents.
pub fn redacting(print: impl Fn(String) + Send + Sync, secrets: stampede_common::plan::SecretValues) -> impl Fn(String) + Send + Sync {
    move |line: String| print(redact(&line, &secrets))
}

async fn run(args: RunArgs) -> anyhow::Result<i32> {
    // First: from here on a stop signal goes through the graceful path.
    let signals = StopSignals::install().context("installing the stop-signal handlers")?;
    // A dry run lists commands and sends nothing: it needs no secret, so it works anywhere.
    let plan = match load_plan(&args.plan, &args.params, !args.dry_run) {
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
        let tls = client_tls(&args.tls)?;
        let submission = remote::Submission::new(&plan, &file_name, &text, format, &args.params);
        return remote::submit(url, tls.as_ref(), &submission, &args, signals).await;
    }
    let secrets = plan.secret_values();
    let report = match run_local(plan, &args, signals).await? {
        Some(Ok(r)) => r,
        Some(Err(e)) => {
            // As a standing coordinator does before it sends an error.
            eprintln!("error: {}", redact(&e.to_string(), &secrets));
            return Ok(EXIT_ERROR);
        }
        None => {
            eprintln!("error: stopped by a second signal before the report was complete: no report written; every fault was reverted");
            return Ok(crate::verdict::Verdict::Incomplete.exit_code());
        }
    };
    if let Some(dry) = report.dry_run.as_ref().filter(|_| args.dry_run) {
        print!("{}", crate::dryrun::listing(dry));
        if let Some(out) = &args.out {
            write_dry_run(out, &serde_json::to_string_pretty(dry).expect("dry runs serialize"))?;
        }
        return Ok(0);
    }
    print!("{}", redact(&report::terminal_summary(&report), &secrets));
    if let Some(out) = &args.out {
        report::write_all(&report, &text, &file_name, out, &secrets).with_context(|| format!("writing reports to {}", out.display()))?;
        println!("\nreports written to {}", out.display());
    }
    Ok(report.verdict.exit_code())
}

/// `--dry-run --out DIR`: the findings as `DIR/dry-run.json`.
pub fn write_dry_run(out: &Path, json: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let path = out.join(crate::dryrun::FILE);
    std::fs::write(&path, format!("{json}\n")).with_context(|| format!("writing {}", path.display()))?;
    println!("\ndry run written to {}", path.display());
    Ok(())
}

/// Runs with in-process agents: a coordinator on loopback, N agents dialing
/// it, and the built-in target if the plan wants one.
///
/// A first stop signal interrupts the run: agents stop and revert, and the
/// report (incomplete, `interrupted`) is built from what arrived. A second
/// one stops waiting for that report (`None`), as k6's second Ctrl-C does —
/// but the agents still revert their faults before this returns: a tool that
/// can cut networks never leaves one cut because someone pressed twice.
async fn run_local(mut plan: Plan, args: &RunArgs, mut signals: StopSignals) -> anyhow::Result<Option<Result<Report, orchestrate::RunError>>> {
    let n = args.local_agents.unwrap_or(1).max(1);
    let target = local::start_builtin_target(&mut plan).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await.context("binding the coordinator on loopback")?;
    let fleet = Fleet::default();
    let shutdown = CancellationToken::new();
    // In-process agents dial 127.0.0.1 inside this process: plain text, with a token of this run's.
    let security = local::security()?;
    let token = security.token.clone();
    let (addr, server) = server::spawn(listener, fleet.clone(), None, security, shutdown.clone());
    let agents_stop = CancellationToken::new();
    let state_dir = args.state_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("stampede-state"));
    let agents = local::spawn_agents(n, addr, token.as_ref(), args.workers, &state_dir, probes_capabilities(&plan, args.simulate_faults), &agents_stop);

    let abort = Interrupt::default();
    let progress = redacting(progress_printer(), plan.secret_values());
    let request = RunRequest { plan, expect_agents: n, wait: args.wait.as_duration(), dry_run: args.dry_run, simulate_faults: args.simulate_faults };
    let execute = orchestrate::execute(&fleet, request, &abort, &progress);
    tokio::pin!(execute);
    let outcome = tokio::select! {
        outcome = &mut execute => Some(outcome),
        name = signals.recv() => {
            abort.trigger(format!("stopped by {name}"));
            tokio::select! {
                outcome = &mut execute => Some(outcome),
                name = signals.recv() => {
                    progress(format!("{name} again: not waiting for the last measurements; reverting every fault, then exiting"));
                    None
                }
            }
        }
    };

    // The agents revert their faults before their tasks end (further
    // signals are caught and ignored meanwhile).
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

async fn coordinator(args: CoordinatorArgs) -> anyhow::Result<i32> {
    let mut signals = StopSignals::install().context("installing the stop-signal handlers")?;
    let mode = args.mode().map_err(anyhow::Error::msg)?;
    let token = args.token_file.as_deref().map(Token::read).transpose()?;
    let security = match mode {
        Mode::Tls(files) => Security { tls: Some(ServerTls::load(&files)?), token },
        Mode::Insecure => {
            tracing::warn!(message = INSECURE_WARNING);
            Security { tls: None, token }
        }
    };
    let (tls, enrollment) = (security.tls.is_some(), security.token.is_some());
    let store = RunStore::open(&args.data, (args.keep_runs > 0).then_some(args.keep_runs)).context("--data DIR: the coordinator keeps every run there")?;
    tracing::info!(message = "Run store ready.", path = %store.runs_dir().display());
    let listen = &args.listen;
    let listener = TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    let fleet = Fleet::default();
    let shutdown = CancellationToken::new();
    let control = Control::new(fleet.clone(), store);
    let (addr, mut server) = server::spawn(listener, fleet.clone(), Some(control.clone()), security, shutdown.clone());
    tracing::info!(message = "Coordinator listening.", %addr, mutual_tls = tls, enrollment_token = enrollment);
    let name = tokio::select! {
        r = &mut server => { r??; return Ok(0); }
        name = signals.recv() => name,
    };
    // Like the CLI's Ctrl-C: the run in progress is aborted, its agents
    // revert their faults, and it is stored and sent to its client as
    // incomplete (`interrupted`) before the server goes away.
    let interrupted = fleet.is_busy();
    tracing::warn!(message = "Stop signal received; shutting down.", signal = name, run_in_progress = interrupted);
    if !control.shut_down(&format!("the coordinator is shutting down ({name})"), RUN_STOP_LIMIT).await {
        tracing::error!(message = "The run in progress did not end in time; its agents revert their faults when their lease runs out.", limit = ?RUN_STOP_LIMIT);
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), server).await;
    Ok(if interrupted { crate::verdict::Verdict::Incomplete.exit_code() } else { 0 })
}

/// How long a stopping coordinator waits for its run in progress to abort,
/// revert and be stored: the abort grace, a revert's retries, the store.
const RUN_STOP_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

async fn target(args: TargetArgs) -> anyhow::Result<i32> {
    let spec = stampede_common::plan::BuiltinTarget {
        latency: args.latency,
        latency_max: args.latency_max,
        error_rate: args.error_rate,
        stall: args.stall_every.zip(args.stall_hold).map(|(every, hold)| stampede_common::plan::StallSpec { every, hold }),
        windows: args.windows,
        after_pause: args.after_pause,
        require_header: None,
        tls: args.tls,
        require_client_cert: args.require_client_cert,
        jobs: (args.jobs_done_after.is_some() || args.jobs_never_finish.is_some())
            .then_some(stampede_common::plan::TargetJobs { done_after: args.jobs_done_after, never_finish: args.jobs_never_finish }),
    };
    let mut behaviour = local::behaviour(&spec);
    if let Some(n) = args.body_size {
        behaviour.body_size = n;
    }
    let arrivals = match &args.arrivals {
        Some(path) => Some(stampede_target::ArrivalLog::create(path).with_context(|| format!("opening the arrivals file {}", path.display()))?),
        None => None,
    };
    let tls = if args.tls {
        let mut names = vec!["localhost".to_string(), args.listen.ip().to_string()];
        if args.listen.ip().is_unspecified() {
            names.push("127.0.0.1".into());
        }
        let material = stampede_target::TlsMaterial::generate(&names, args.require_client_cert).context("generating the target's certificates")?;
        let dir = args.tls_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("stampede-target-tls"));
        let files = material.write(&dir).with_context(|| format!("writing the target's certificates to {}", dir.display()))?;
        eprintln!("trust {} (plan: tls: {{ ca: {} }})", files.ca.display(), files.ca.display());
        if args.require_client_cert {
            eprintln!("clients need a certificate: tls: {{ cert: {}, key: {} }}", files.client_cert.display(), files.client_key.display());
        }
        Some(material.server_config().context("the target's TLS configuration")?)
    } else {
        None
    };
    let scheme = if args.tls { "https" } else { "http" };
    eprintln!("built-in target listening on {scheme}://{}", args.listen);
    stampede_target::serve_until_tls(args.listen, behaviour, arrivals, tls, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    .with_context(|| format!("serving on {}", args.listen))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use stampede_common::plan::Format;

    #[test]
    fn a_simulated_local_run_does_not_probe_the_nodes_fault_tools() {
        let with_fault = "name: s\ntarget: http://127.0.0.1:1\nphases:\n  - { name: p, duration: 5s, load: { model: open, rate: 1/s } }\nsteps: [{ name: a }]\n\
                          faults:\n  - { name: f, kind: pause, at: 1s, duration: 1s, instance: { driver: process, pid: 4000000 } }\n";
        let plan = stampede_common::plan::load_str(with_fault, Format::Yaml, std::path::Path::new("p.yaml")).unwrap_or_else(|e| panic!("{e}"));
        assert!(super::probes_capabilities(&plan, false), "a real run or a dry run needs the findings");
        assert!(!super::probes_capabilities(&plan, true), "a simulated run runs no command on the node");
        let mut none = plan.clone();
        none.faults.clear();
        assert!(!super::probes_capabilities(&none, false));
    }

    #[test]
    fn local_progress_lines_are_redacted_like_a_standing_coordinators() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = {
            let seen = seen.clone();
            move |line: String| seen.lock().unwrap().push(line)
        };
        let secrets = [("env:TOKEN".to_string(), "tok-3141592".to_string())].into_iter().collect();
        let progress = super::redacting(sink, secrets);
        progress("steady state did not hold after the run: health: body echoed tok-3141592".to_string());
        assert_eq!(*seen.lock().unwrap(), ["steady state did not hold after the run: health: body echoed ***"]);
    }
}
