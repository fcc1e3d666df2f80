//! The `stampede` command line: flags are parsed here and turned into
//! validated values once; each subcommand then calls the library.

//!
//! # Layout
//! - this file: the command line itself, the transport-flag checks, the
//!   dispatch, and what `run` and `validate` share (loading a plan).
//! - `run`: `stampede run`, with in-process agents or a standing coordinator.
//! - `standing`: `stampede coordinator`, the standing coordinator.
//! - `target`: `stampede target`, the built-in HTTP target.

mod run;
mod standing;
mod target;

use std::path::{Path, PathBuf};

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand};
use stampede_common::plan::data::DataFiles;
use stampede_common::plan::{load_file_with, Params, Plan, SecretSource};
use stampede_common::tls::{ClientTls, Mode, TlsArgs, INSECURE_WARNING};

use crate::{certs, remote};

pub use run::{progress_printer, redacting, write_dry_run, RunArgs};
pub use standing::{CoordinatorArgs, DEFAULT_DATA_DIR};
pub use target::TargetArgs;

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

pub async fn main(cli: Cli) -> i32 {
    let result = match cli.command {
        Command::Run(args) => run::run(args).await,
        Command::Validate { plan, params } => validate(&plan, &params),
        Command::Coordinator(args) => standing::coordinator(args).await,
        Command::Agents(args) => match client_tls(&args.tls) {
            Ok(tls) => remote::list_agents(&args.coordinator, tls.as_ref()).await,
            Err(e) => Err(e),
        },
        Command::Halt(args) => match client_tls(&args.tls) {
            Ok(tls) => remote::halt(&args.coordinator, tls.as_ref()).await,
            Err(e) => Err(e),
        },
        Command::Certs(cmd) => certs::main(cmd),
        Command::Target(args) => target::target(args).await,
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
