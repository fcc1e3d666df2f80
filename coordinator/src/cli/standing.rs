//! `stampede coordinator`: a standing coordinator that agents dial and runs
//! are submitted to, until a stop signal.

use std::path::PathBuf;

use anyhow::Context;
use stampede_common::tls::{Mode, ServerTls, TlsArgs, Token, INSECURE_WARNING};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::control::Control;
use crate::fleet::Fleet;
use crate::server::{self, Security};
use crate::signals::StopSignals;
use crate::store::RunStore;

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
    pub(super) fn mode(&self) -> Result<Mode, String> {
        let mode = self.tls.mode(true)?;
        if matches!(mode, Mode::Tls(_)) && self.token_file.is_none() {
            return Err("with TLS the coordinator needs --token-file PATH too: agents must present the enrollment token (make one with `stampede certs token --out FILE`)".into());
        }
        Ok(mode)
    }
}

pub(super) async fn coordinator(args: CoordinatorArgs) -> anyhow::Result<i32> {
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
