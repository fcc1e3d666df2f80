//! The agent's side of the session: dial the coordinator, register, run what
//! it assigns and obey aborts, with reconnect and backoff.
//!
//! A run is not tied to one session. It pushes what it measures into the
//! [`Outbox`]; each session pumps the outbox onto its stream, and the
//! coordinator's `Delivered` acknowledgements empty it. When a session
//! breaks, the run goes on while the agent reconnects, and the next session
//! sends again everything unacknowledged. Only when the coordinator has been
//! silent for longer than the lease does the agent stop the load and revert
//! its faults by itself: an agent never keeps hammering a target nobody is
//! watching.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use stampede_common::tls::{self, ClientTls, Token, AUTHORIZATION};
use stampede_proto::convert::unix_nanos;
use stampede_proto::v1::agent_message::Msg as Up;
use stampede_proto::v1::agent_service_client::AgentServiceClient;
use stampede_proto::v1::coordinator_message::Msg as Down;
use stampede_proto::v1::{AgentMessage, Assignment, ClockEcho, CoordinatorMessage, Heartbeat, RecoveredFault, Register};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use crate::assignment;
use crate::fault::injector::Injector;
use crate::fault::{self, Node, Runner};
use crate::outbox::{self, Outbox};

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The coordinator's gRPC URL: `https://host:port` with `tls`, else `http://host:port`.
    pub coordinator: String,
    /// Mutual TLS: our certificate, and the CA the coordinator's certificate
    /// must chain to — an agent obeys only a coordinator it trusts. `None`:
    /// plain text (`--insecure`, or the in-process agents on loopback).
    pub tls: Option<ClientTls>,
    /// The enrollment token, sent as `authorization: Bearer TOKEN` on the session.
    pub token: Option<Token>,
    pub agent_id: String,
    pub labels: BTreeMap<String, String>,
    /// Relative weight for splitting load between agents.
    pub capacity: u32,
    /// Load worker threads.
    pub workers: usize,
    /// The node this agent runs on (host name): faults apply once per node.
    pub node: String,
    /// Where the fault journal lives; faults left applied by a crashed agent
    /// are reverted from it at start-up.
    pub state_dir: std::path::PathBuf,
    /// How long a run goes on without the coordinator: past it, the agent
    /// stops the load and reverts its faults by itself.
    pub lease: Duration,
    /// Probe what faults this node can do (tc, nft, qdiscs, CLIs). Off only
    /// for in-process agents of a plan without faults: the probe starts a
    /// dozen short processes, a fixed cost a benchmark run should not pay.
    pub probe_capabilities: bool,
}

/// Heartbeats both ways; a session silent for `SILENCE` is taken as dead
/// (a partitioned link does not close a TCP connection by itself).
const HEARTBEAT: Duration = Duration::from_secs(1);
const SILENCE: Duration = Duration::from_secs(3);
/// How long one attempt to open a session may take.
const CONNECT_LIMIT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// While a run goes on without its coordinator, retry at least this often.
const BACKOFF_MAX_IN_RUN: Duration = Duration::from_secs(1);
/// On shutdown, how long to wait for fault windows to finish reverting: an
/// apply under way (the runner's 10 s timeout) and a revert's three attempts.
const SETTLE_LIMIT: Duration = Duration::from_secs(45);
/// How long a stopped run gets to push its last messages.
const STOP_LIMIT: Duration = Duration::from_secs(12);
/// On shutdown, how long the last messages get to reach the coordinator.
const FLUSH_LIMIT: Duration = Duration::from_secs(1);
/// At most this many recovered faults go into a Register (a journal left
/// by many crashed runs must not make the message unbounded).
const MAX_RECOVERED: usize = 64;
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

enum SessionEnd {
    Shutdown,
    Closed,
}

/// What outlives a session: the run in progress, its unacknowledged
/// messages, and when we last heard from a coordinator.
struct AgentState {
    injector: Option<Arc<Injector>>,
    capabilities: Vec<stampede_proto::v1::Capability>,
    outbox: Arc<Outbox>,
    run: Option<ActiveRun>,
    /// Random per process: the coordinator restarts delivery numbers when it changes.
    instance: u64,
    last_contact: Instant,
    /// What start-up recovery reverted, sent with every Register: the
    /// coordinator of that run may only hear of it after a reconnect.
    recovered: Vec<RecoveredFault>,
}

struct ActiveRun {
    id: String,
    cancel: CancellationToken,
    /// Why the run was stopped early, for its RunFinished.
    stop_reason: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ActiveRun {
    fn stop(&self, reason: &str) {
        self.stop_reason.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(|| reason.to_string());
        self.cancel.cancel();
    }

    fn is_over(&self) -> bool {
        self.task.is_finished()
    }
}

/// The capability that says this agent simulates faults when asked
/// (`coordinator/src/faults.rs` checks it before a simulated run).
pub const SIMULATE_CAPABILITY: &str = "simulate_faults";

/// Runs the agent until `shutdown`: reconnects with exponential backoff
/// whenever the session ends or cannot be opened, and enforces the lease.
pub async fn run(cfg: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let span = info_span!("agent", id = %cfg.agent_id);
    async move {
        let (injector, recovered) = open_injector(&cfg);
        // Probed once: what this node can do does not change while we run.
        let mut capabilities = if cfg.probe_capabilities { tokio::task::spawn_blocking(fault::probe::probe).await.unwrap_or_default() } else { Vec::new() };
        // Not probed: this build honours `Assignment.simulate_faults`. The
        // coordinator sends a simulated run only to agents that say so.
        capabilities.push(stampede_proto::v1::Capability { name: SIMULATE_CAPABILITY.into(), available: true, detail: "announces faults instead of applying them".into() });
        let missing: Vec<_> = capabilities.iter().filter(|c| !c.available).map(|c| c.name.as_str()).collect();
        info!(message = "Capabilities probed.", available = capabilities.len() - missing.len(), missing = ?missing);
        let mut state = AgentState {
            injector,
            capabilities,
            outbox: Arc::new(Outbox::new(outbox::DEFAULT_LIMIT_BYTES)),
            run: None,
            instance: random_instance(),
            last_contact: Instant::now(),
            recovered,
        };
        let mut backoff = BACKOFF_MIN;
        loop {
            match session(&cfg, &mut state, &shutdown).await {
                Ok(SessionEnd::Shutdown) => break,
                Ok(SessionEnd::Closed) => {
                    info!(message = "Coordinator closed the session.", coordinator = %cfg.coordinator);
                    backoff = BACKOFF_MIN;
                }
                Err(error) => warn!(message = "Session with the coordinator failed.", error = %session_error(&error), retry_in = ?backoff),
            }
            if state.run.as_ref().is_some_and(ActiveRun::is_over) {
                state.run = None;
            }
            let lease_end = state.last_contact + cfg.lease;
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = tokio::time::sleep_until(lease_end), if state.run.is_some() => {
                    warn!(message = "No coordinator for longer than the lease: stopping the load and reverting faults.", lease = ?cfg.lease);
                    let reason = format!("the agent lost its coordinator for longer than its lease ({:?})", cfg.lease);
                    stop_run(state.run.take(), &reason).await;
                }
                _ = shutdown.cancelled() => break,
            }
            let cap = if state.run.is_some() { BACKOFF_MAX_IN_RUN } else { BACKOFF_MAX };
            backoff = (backoff * 2).min(cap);
        }
        stop_run(state.run.take(), "the agent is shutting down").await;
        // The runs are cancelled; their fault windows revert before we
        // return, since the caller then drops the runtime and the windows
        // with it (and exits, ending the dead-man threads).
        if let Some(injector) = &state.injector {
            if !injector.settle(SETTLE_LIMIT).await {
                warn!(message = "Fault windows still running at exit; the journal reverts them at the next start.");
            }
        }
        Ok(())
    }
    .instrument(span)
    .await
}

fn random_instance() -> u64 {
    // Random, so two agents in one process (`--local-agents`) differ too.
    uuid::Uuid::new_v4().as_u128() as u64
}

/// Why a session failed, in an operator's words for a refused token or a
/// TLS failure (tonic's own top line is a bare "transport error").
fn session_error(error: &anyhow::Error) -> String {
    match error.downcast_ref::<tonic::Status>() {
        Some(status) if status.code() == tonic::Code::Unauthenticated => {
            format!("unauthenticated: the coordinator refused our enrollment token; check --token-file ({})", status.message())
        }
        Some(status) => tls::describe_call(status),
        None => tls::describe(error.as_ref()),
    }
}

fn message(msg: Up) -> AgentMessage {
    AgentMessage { msg: Some(msg), delivery: 0 }
}

/// Opens the fault journal and reverts whatever an earlier agent left
/// behind; returns those faults too, for every Register. Without a journal
/// the agent still generates load but refuses faults.
fn open_injector(cfg: &AgentConfig) -> (Option<Arc<Injector>>, Vec<RecoveredFault>) {
    let node = Node {
        route_dev: Box::new(fault::net::route_dev),
        agent_exe: std::env::current_exe().unwrap_or_else(|_| "stampede-agent".into()),
    };
    match Injector::new(&cfg.state_dir, node, Runner::default()) {
        Ok(injector) => {
            let recovered = injector.recover();
            for r in &recovered {
                warn!(message = "Start-up recovery.", detail = %r.line());
            }
            let recovered = recovered
                .into_iter()
                .filter(|r| !r.fault.is_empty())
                .take(MAX_RECOVERED)
                .map(|r| RecoveredFault { run_id: r.run_id, fault: r.fault, kind: r.kind, reverted_unix_nanos: unix_nanos(r.at), error: r.error.unwrap_or_default() })
                .collect();
            (Some(Arc::new(injector)), recovered)
        }
        Err(e) => {
            warn!(message = "No fault journal: this agent will refuse faults.", dir = %cfg.state_dir.display(), error = %e);
            (None, Vec::new())
        }
    }
}

/// The largest message the agent takes from its coordinator: an
/// assignment with its data files' rows (their text plus a few bytes of
/// framing per value).
const MAX_COORDINATOR_MESSAGE: usize = 64 * 1024 * 1024;

async fn session(cfg: &AgentConfig, state: &mut AgentState, shutdown: &CancellationToken) -> anyhow::Result<SessionEnd> {
    let (tx, mut inbound) = open_session(cfg, state).await?;
    // Everything unacknowledged goes out again first, then what comes next.
    let sent = Arc::new(AtomicU64::new(0));
    let pump = tokio::spawn(pump(state.outbox.clone(), tx.clone(), sent.clone()));
    let _pump_guard = AbortOnDrop(pump);
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    // A beat only when the pump sent nothing since the last tick: a
    // snapshot tells the coordinator the session lives as well, and at
    // 1 000 agents every message costs it (benchmarks/README.md, fleet scale).
    let mut seen = u64::MAX;
    let end = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break SessionEnd::Shutdown,
            _ = heartbeat.tick() => {
                let last = sent.load(Ordering::Acquire);
                if last == seen {
                    let _ = tx.try_send(message(Up::Heartbeat(Heartbeat { clock_unix_nanos: unix_nanos(SystemTime::now()) })));
                }
                seen = last;
            }
            _ = tokio::time::sleep_until(state.last_contact + SILENCE) => {
                anyhow::bail!("no word from the coordinator for {SILENCE:?}");
            }
            msg = inbound.message() => match msg {
                Ok(Some(m)) => {
                    state.last_contact = Instant::now();
                    on_message(m.msg, cfg, state, &tx);
                }
                Ok(None) => break SessionEnd::Closed,
                Err(status) => return Err(status.into()),
            },
        }
    };
    if matches!(end, SessionEnd::Shutdown) {
        // Deliver what the stopped run measured before leaving: stop it, let
        // the pump send its last messages, close our half of the session and
        // give the coordinator a moment to read it. Returning at once would
        // reset the stream and discard them.
        stop_run(state.run.take(), "the agent is shutting down").await;
        let _ = tokio::time::timeout(FLUSH_LIMIT, async {
            while !state.outbox.after(sent.load(Ordering::Acquire)).is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        drop(_pump_guard);
        drop(tx);
        let _ = tokio::time::timeout(FLUSH_LIMIT, async { while let Ok(Some(_)) = inbound.message().await {} }).await;
    }
    Ok(end)
}

/// Dials the coordinator and registers: the session's sending half and its
/// inbound stream. With a run going on, the attempt must not outlast the lease.
async fn open_session(cfg: &AgentConfig, state: &mut AgentState) -> anyhow::Result<(mpsc::Sender<AgentMessage>, tonic::Streaming<CoordinatorMessage>)> {
    let (tx, rx) = mpsc::channel::<AgentMessage>(1024);
    tx.send(message(Up::Register(register(cfg, state)))).await?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = &cfg.token {
        request.metadata_mut().insert(AUTHORIZATION, token.metadata());
    }
    let open = async {
        let channel = tls::endpoint(&cfg.coordinator, cfg.tls.as_ref())?.connect().await?;
        // An assignment carries the plan's data files (up to 32 MiB of
        // text, `plan::data::MAX_DATA_BYTES`): past tonic's 4 MiB default.
        let inbound = AgentServiceClient::new(channel).max_decoding_message_size(MAX_COORDINATOR_MESSAGE).session(request).await?.into_inner();
        anyhow::Ok(inbound)
    };
    let limit = match state.run {
        Some(_) => CONNECT_LIMIT.min((state.last_contact + cfg.lease).saturating_duration_since(Instant::now()).max(Duration::from_millis(100))),
        None => CONNECT_LIMIT,
    };
    let inbound = tokio::time::timeout(limit, open).await.map_err(|_| anyhow::anyhow!("no session within {limit:?}: connecting, the TLS handshake and registering took longer"))??;
    state.last_contact = Instant::now();
    info!(message = "Registered with the coordinator.", coordinator = %cfg.coordinator, unacknowledged = state.outbox.pending());
    Ok((tx, inbound))
}

/// What this agent tells the coordinator of itself at each session: who
/// and what it is, the run it is still executing, the faults it recovered.
fn register(cfg: &AgentConfig, state: &AgentState) -> Register {
    let active_run_id = state.run.as_ref().filter(|r| !r.is_over()).map(|r| r.id.clone()).unwrap_or_default();
    Register {
        agent_id: cfg.agent_id.clone(),
        labels: cfg.labels.clone().into_iter().collect(),
        capacity: cfg.capacity,
        capabilities: state.capabilities.clone(),
        clock_unix_nanos: unix_nanos(SystemTime::now()),
        version: env!("CARGO_PKG_VERSION").to_string(),
        workers: cfg.workers as u32,
        node: cfg.node.clone(),
        instance: state.instance,
        active_run_id,
        lease_ms: cfg.lease.as_millis() as u64,
        recovered: state.recovered.clone(),
        max_connections: crate::open_files::raise_limit(),
    }
}

/// One message from the coordinator, on the session's loop (nothing here
/// may wait: a steady-state check runs off the loop).
fn on_message(msg: Option<Down>, cfg: &AgentConfig, state: &mut AgentState, tx: &mpsc::Sender<AgentMessage>) {
    match msg {
        Some(Down::Assignment(a)) => assign(a, cfg, state),
        Some(Down::Abort(a)) => {
            if let Some(r) = state.run.as_ref().filter(|r| r.id == a.run_id) {
                warn!(message = "Run aborted by the coordinator.", run = %r.id, reason = %a.reason);
                r.stop(&format!("aborted by the coordinator: {}", a.reason));
            }
        }
        Some(Down::ClockProbe(p)) => {
            let t2 = unix_nanos(SystemTime::now());
            let echo = ClockEcho { t1_unix_nanos: p.t1_unix_nanos, t2_unix_nanos: t2, t3_unix_nanos: unix_nanos(SystemTime::now()) };
            let _ = tx.try_send(message(Up::ClockEcho(echo)));
        }
        Some(Down::Delivered(d)) => state.outbox.ack(d.upto),
        Some(Down::SteadyState(req)) => {
            // Off the session's loop: the probes may take their timeout.
            let tx = tx.clone();
            tokio::spawn(async move {
                let reply = crate::probe::steady::answer(req).await;
                let _ = tx.send(message(Up::SteadyState(reply))).await;
            });
        }
        Some(Down::Registered(_)) | Some(Down::Heartbeat(_)) | None => {}
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Copies the outbox onto one session's stream, in delivery order: first
/// every message not yet acknowledged, then each new one. `sent` is the
/// highest number handed to the stream.
async fn pump(outbox: Arc<Outbox>, tx: mpsc::Sender<AgentMessage>, sent: Arc<AtomicU64>) {
    let mut pushed = outbox.subscribe();
    let mut cursor = 0;
    loop {
        for m in outbox.after(cursor) {
            cursor = m.delivery;
            if tx.send(m).await.is_err() {
                return;
            }
            sent.store(cursor, Ordering::Release);
        }
        if pushed.changed().await.is_err() {
            return;
        }
    }
}

/// Starts an assignment. The same run assigned again (a coordinator that
/// resent it) is not restarted; another run replaces the current one.
fn assign(a: Assignment, cfg: &AgentConfig, state: &mut AgentState) {
    if let Some(r) = state.run.take() {
        if r.id == a.run_id && !r.is_over() {
            state.run = Some(r);
            return;
        }
        r.stop("replaced by a newer run");
    }
    let cancel = CancellationToken::new();
    let stop_reason = Arc::new(Mutex::new(None));
    let id = a.run_id.clone();
    let span = info_span!("run", run = %id);
    let task = tokio::spawn(assignment::execute(a, cfg.clone(), state.injector.clone(), state.outbox.clone(), cancel.clone(), stop_reason.clone()).instrument(span));
    state.run = Some(ActiveRun { id, cancel, stop_reason, task });
}

async fn stop_run(run: Option<ActiveRun>, reason: &str) {
    if let Some(r) = run {
        r.stop(reason);
        // Gives the run time to push its final snapshot and, once its
        // faults are reverted (a revert may retry), its RunFinished.
        let _ = tokio::time::timeout(STOP_LIMIT, r.task).await;
    }
}

/// This host's name, the default node name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
