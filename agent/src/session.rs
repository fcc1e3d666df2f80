//! The agent's side of the session: dial the coordinator, register, run what
//! it assigns, stream one snapshot per interval, and obey aborts. One task
//! owns the session; a run executes in its own task and talks back through
//! the session's outbound queue.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use stampede_common::plan::{validate, Fault, Plan};
use stampede_common::tls::{self, ClientTls, Token, AUTHORIZATION};
use stampede_proto::convert::encode_steps;
use stampede_proto::v1::agent_message::Msg as Up;
use stampede_proto::v1::agent_service_client::AgentServiceClient;
use stampede_proto::v1::coordinator_message::Msg as Down;
use stampede_proto::v1::{AgentMessage, Assignment, ClockEcho, FaultEffect, FaultEvent, Heartbeat, Register, RunFinished, Snapshot};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use crate::engine::{self, RunSpec};
use crate::fault::injector::{FaultStatus, FaultUpdate, Injector};
use crate::fault::{self, Action, Node, Runner};

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
}

const HEARTBEAT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// On shutdown, how long to wait for fault windows to finish reverting: an
/// apply under way (the runner's 10 s timeout) and a revert's three attempts.
const SETTLE_LIMIT: Duration = Duration::from_secs(45);

enum SessionEnd {
    Shutdown,
    Closed,
}

/// Runs the agent until `shutdown`: reconnects with exponential backoff
/// whenever the session ends or cannot be opened.
pub async fn run(cfg: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let span = info_span!("agent", id = %cfg.agent_id);
    async move {
        let injector = open_injector(&cfg);
        // Probed once: what this node can do does not change while we run.
        let capabilities = tokio::task::spawn_blocking(fault::probe::probe).await.unwrap_or_default();
        let missing: Vec<_> = capabilities.iter().filter(|c| !c.available).map(|c| c.name.as_str()).collect();
        info!(message = "Capabilities probed.", available = capabilities.len() - missing.len(), missing = ?missing);
        let mut backoff = BACKOFF_MIN;
        loop {
            match session(&cfg, injector.clone(), &capabilities, &shutdown).await {
                Ok(SessionEnd::Shutdown) => break,
                Ok(SessionEnd::Closed) => {
                    info!(message = "Coordinator closed the session.", coordinator = %cfg.coordinator);
                    backoff = BACKOFF_MIN;
                }
                Err(error) => warn!(message = "Session with the coordinator failed.", error = %session_error(&error, &cfg), retry_in = ?backoff),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => break,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        // The runs are cancelled; their fault windows revert before we
        // return, since the caller then drops the runtime and the windows
        // with it (and exits, ending the dead-man threads).
        if let Some(injector) = &injector {
            if !injector.settle(SETTLE_LIMIT).await {
                warn!(message = "Fault windows still running at exit; the journal reverts them at the next start.");
            }
        }
        Ok(())
    }
    .instrument(span)
    .await
}

/// Why a session failed, in an operator's words for a refused token or a
/// TLS failure (tonic's own top line is a bare "transport error").
fn session_error(error: &anyhow::Error, cfg: &AgentConfig) -> String {
    match error.downcast_ref::<tonic::Status>() {
        Some(status) if status.code() == tonic::Code::Unauthenticated => {
            format!("unauthenticated: the coordinator refused our enrollment token; check --token-file ({})", status.message())
        }
        Some(status) => tls::describe_call(status, cfg.tls.is_some()),
        None => tls::describe(error.as_ref()),
    }
}

fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

fn message(msg: Up) -> AgentMessage {
    AgentMessage { msg: Some(msg) }
}

struct ActiveRun {
    id: String,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Opens the fault journal and reverts whatever an earlier agent left behind.
/// Without a journal the agent still generates load but refuses faults.
fn open_injector(cfg: &AgentConfig) -> Option<Arc<Injector>> {
    let node = Node {
        route_dev: Box::new(fault::net::route_dev),
        agent_exe: std::env::current_exe().unwrap_or_else(|_| "stampede-agent".into()),
    };
    match Injector::new(&cfg.state_dir, node, Runner::default()) {
        Ok(injector) => {
            for line in injector.recover() {
                warn!(message = "Start-up recovery.", detail = %line);
            }
            Some(Arc::new(injector))
        }
        Err(e) => {
            warn!(message = "No fault journal: this agent will refuse faults.", dir = %cfg.state_dir.display(), error = %e);
            None
        }
    }
}

async fn session(
    cfg: &AgentConfig,
    injector: Option<Arc<Injector>>,
    capabilities: &[stampede_proto::v1::Capability],
    shutdown: &CancellationToken,
) -> anyhow::Result<SessionEnd> {
    let channel = tls::endpoint(&cfg.coordinator, cfg.tls.as_ref())?.connect().await?;
    let mut client = AgentServiceClient::new(channel);
    let (tx, rx) = mpsc::channel::<AgentMessage>(1024);
    tx.send(message(Up::Register(Register {
        agent_id: cfg.agent_id.clone(),
        labels: cfg.labels.clone().into_iter().collect(),
        capacity: cfg.capacity,
        capabilities: capabilities.to_vec(),
        clock_unix_nanos: unix_nanos(SystemTime::now()),
        version: env!("CARGO_PKG_VERSION").to_string(),
        workers: cfg.workers as u32,
        node: cfg.node.clone(),
    })))
    .await?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = &cfg.token {
        request.metadata_mut().insert(AUTHORIZATION, token.metadata());
    }
    let mut inbound = client.session(request).await?.into_inner();
    info!(message = "Registered with the coordinator.", coordinator = %cfg.coordinator);

    let mut run: Option<ActiveRun> = None;
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    let end = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break SessionEnd::Shutdown,
            _ = heartbeat.tick() => {
                let _ = tx.try_send(message(Up::Heartbeat(Heartbeat { clock_unix_nanos: unix_nanos(SystemTime::now()) })));
            }
            msg = inbound.message() => match msg {
                Ok(Some(m)) => match m.msg {
                    Some(Down::Assignment(a)) => {
                        if let Some(r) = run.take() {
                            r.cancel.cancel();
                        }
                        run = Some(start_run(a, cfg, injector.clone(), tx.clone()));
                    }
                    Some(Down::Abort(a)) => {
                        if let Some(r) = run.as_ref().filter(|r| r.id == a.run_id) {
                            warn!(message = "Run aborted by the coordinator.", run = %r.id, reason = %a.reason);
                            r.cancel.cancel();
                        }
                    }
                    Some(Down::ClockProbe(p)) => {
                        let t2 = unix_nanos(SystemTime::now());
                        let echo = ClockEcho { t1_unix_nanos: p.t1_unix_nanos, t2_unix_nanos: t2, t3_unix_nanos: unix_nanos(SystemTime::now()) };
                        let _ = tx.try_send(message(Up::ClockEcho(echo)));
                    }
                    Some(Down::Registered(_)) | Some(Down::Ack(_)) | None => {}
                },
                Ok(None) => break SessionEnd::Closed,
                Err(status) => {
                    stop_run(run.take()).await;
                    return Err(status.into());
                }
            },
        }
    };
    // Losing the coordinator or shutting down stops the load: an agent never
    // keeps hammering a target nobody is watching.
    stop_run(run.take()).await;
    if matches!(end, SessionEnd::Shutdown) {
        // Deliver what the stopped run measured before leaving: close our half
        // of the session and give the coordinator a moment to read it.
        // Returning at once would reset the stream and discard the queued
        // last snapshot and RunFinished.
        drop(tx);
        let _ = tokio::time::timeout(Duration::from_secs(1), async { while let Ok(Some(_)) = inbound.message().await {} }).await;
    }
    Ok(end)
}

async fn stop_run(run: Option<ActiveRun>) {
    if let Some(r) = run {
        r.cancel.cancel();
        // Gives the run a moment to send its final snapshot.
        let _ = tokio::time::timeout(Duration::from_secs(2), r.task).await;
    }
}

fn start_run(a: Assignment, cfg: &AgentConfig, injector: Option<Arc<Injector>>, tx: mpsc::Sender<AgentMessage>) -> ActiveRun {
    let cancel = CancellationToken::new();
    let id = a.run_id.clone();
    let span = info_span!("run", run = %id);
    let task = tokio::spawn(execute(a, cfg.clone(), injector, tx, cancel.clone()).instrument(span));
    ActiveRun { id, cancel, task }
}

/// Runs one assignment to its end and reports it as finished, with an error
/// when it could not run at all.
async fn execute(a: Assignment, cfg: AgentConfig, injector: Option<Arc<Injector>>, tx: mpsc::Sender<AgentMessage>, cancel: CancellationToken) {
    let mut finished = RunFinished { run_id: a.run_id.clone(), agent_id: cfg.agent_id.clone(), ..Default::default() };
    if let Err(e) = stream_run(&a, &cfg, injector, &tx, cancel.clone(), &mut finished).await {
        warn!(message = "Run failed on this agent.", error = %e);
        finished.error = e;
    } else if cancel.is_cancelled() {
        // Aborted, shutting down or replaced: what was measured is sent, but
        // it is not this agent's whole share, and the coordinator must not
        // count it as complete.
        finished.error = "stopped before the end of the run (aborted, or the agent is shutting down)".into();
    }
    info!(message = "Run finished.", requests = finished.requests, errors = finished.errors, snapshots = finished.snapshots_sent);
    let _ = tx.send(message(Up::Finished(finished))).await;
}

async fn stream_run(
    a: &Assignment,
    cfg: &AgentConfig,
    injector: Option<Arc<Injector>>,
    tx: &mpsc::Sender<AgentMessage>,
    cancel: CancellationToken,
    finished: &mut RunFinished,
) -> Result<(), String> {
    let plan: Plan = serde_json::from_str(&a.plan_json).map_err(|e| format!("the assigned plan does not parse: {e}"))?;
    validate(&plan).map_err(|(path, msg)| format!("the assigned plan is invalid: {path}: {msg}"))?;
    if a.concurrency.len() != plan.phases.len() {
        return Err(format!("assignment has {} concurrency entries for {} phases", a.concurrency.len(), plan.phases.len()));
    }
    // The coordinator gives the start in its clock; ours is offset from it.
    let start_nanos = a.start_unix_nanos + a.clock_offset_nanos;
    let start = UNIX_EPOCH + Duration::from_nanos(start_nanos.max(0) as u64);
    info!(message = "Assignment received.", rate_share = a.rate_share, starts_in = ?start.duration_since(SystemTime::now()).unwrap_or_default());
    let plan = Arc::new(plan);
    let mut faults = Vec::new();
    for &i in &a.faults {
        let fault = plan.faults.get(i as usize).ok_or_else(|| format!("assignment names fault #{i}, which the plan lacks"))?;
        faults.push(fault.clone());
    }
    if a.dry_run {
        for fault in &faults {
            let event = dry_run_event(a, cfg, injector.as_deref(), fault, start);
            let _ = tx.send(message(Up::Fault(event))).await;
        }
        return Ok(());
    }
    let fault_stop = cancel.child_token();
    let fault_tasks = start_faults(a, cfg, injector, faults, start, &fault_stop, tx);
    let spec = RunSpec {
        plan: plan.clone(),
        rate_share: a.rate_share,
        concurrency: a.concurrency.clone(),
        agent_index: a.agent_index,
        agent_count: a.agent_count,
        start,
        workers: cfg.workers,
    };
    let mut intervals = engine::start(spec, cancel).await.map_err(|e| e.to_string())?;
    while let Some(iv) = intervals.recv().await {
        for r in iv.stats.steps.values() {
            finished.requests += r.requests;
            finished.errors += r.error_count();
        }
        let (steps, phases) = encode_steps(&iv.stats);
        let snapshot = Snapshot {
            run_id: a.run_id.clone(),
            agent_id: cfg.agent_id.clone(),
            seq: iv.seq,
            interval_start_unix_nanos: unix_nanos(iv.start),
            interval_end_unix_nanos: unix_nanos(iv.end),
            steps,
            phases,
            last: iv.last,
        };
        if tx.send(message(Up::Snapshot(snapshot))).await.is_err() {
            return Err("the session closed while the run was streaming".into());
        }
        finished.snapshots_sent += 1;
        if let Some(t) = iv.first_request {
            finished.first_request_unix_nanos = unix_nanos(t);
        }
        if iv.last {
            break;
        }
    }
    // The run is over: any fault still active is reverted before we say so.
    fault_stop.cancel();
    for t in fault_tasks {
        let _ = t.await;
    }
    Ok(())
}

fn fault_event(a: &Assignment, cfg: &AgentConfig, u: FaultUpdate) -> FaultEvent {
    FaultEvent {
        run_id: a.run_id.clone(),
        agent_id: cfg.agent_id.clone(),
        fault: u.fault,
        kind: u.kind.to_string(),
        status: u.status.as_str().to_string(),
        scheduled_unix_nanos: unix_nanos(u.scheduled),
        applied_unix_nanos: u.applied.map_or(0, unix_nanos),
        reverted_unix_nanos: u.reverted.map_or(0, unix_nanos),
        error: u.error,
        apply_commands: u.apply_commands,
        revert_commands: u.revert_commands,
        effect: u.effect.map(|e| FaultEffect {
            measure: e.measure.to_string(),
            baseline: e.baseline,
            during: e.during,
            effective: e.effective,
            detail: format!("requested {}; {}", e.requested, e.detail),
        }),
    }
}

fn dry_run_event(a: &Assignment, cfg: &AgentConfig, injector: Option<&Injector>, fault: &Fault, start: SystemTime) -> FaultEvent {
    let mut u = FaultUpdate {
        fault: fault.name.clone(),
        kind: fault.kind.name(),
        status: FaultStatus::DryRun,
        scheduled: start + fault.at.as_duration(),
        applied: None,
        reverted: None,
        error: String::new(),
        apply_commands: Vec::new(),
        revert_commands: Vec::new(),
        effect: None,
    };
    match injector.map(|i| i.plan(fault)) {
        Some(Ok(actions)) => {
            u.apply_commands = actions.apply.iter().map(Action::display).collect();
            u.revert_commands = actions.revert.iter().map(Action::display).collect();
        }
        Some(Err(e)) => u.error = e.to_string(),
        None => u.error = "this agent has no fault journal".into(),
    }
    fault_event(a, cfg, u)
}

/// Starts each fault's window; their updates go to the coordinator as they happen.
fn start_faults(
    a: &Assignment,
    cfg: &AgentConfig,
    injector: Option<Arc<Injector>>,
    faults: Vec<Fault>,
    start: SystemTime,
    stop: &CancellationToken,
    tx: &mpsc::Sender<AgentMessage>,
) -> Vec<tokio::task::JoinHandle<()>> {
    if faults.is_empty() {
        return Vec::new();
    }
    let (updates_tx, mut updates) = mpsc::unbounded_channel::<FaultUpdate>();
    let mut tasks = Vec::new();
    for fault in faults {
        match &injector {
            Some(inj) => tasks.push(tokio::spawn(inj.clone().run_window(a.run_id.clone(), fault, start, stop.clone(), updates_tx.clone()))),
            None => {
                let _ = updates_tx.send(FaultUpdate {
                    fault: fault.name.clone(),
                    kind: fault.kind.name(),
                    status: FaultStatus::Failed,
                    scheduled: start + fault.at.as_duration(),
                    applied: None,
                    reverted: None,
                    error: "this agent has no fault journal, so it refuses faults".into(),
                    apply_commands: Vec::new(),
                    revert_commands: Vec::new(),
                    effect: None,
                });
            }
        }
    }
    drop(updates_tx);
    let (a, cfg, tx) = (a.clone(), cfg.clone(), tx.clone());
    // Forwards updates until every window has ended; awaited with the windows.
    tasks.push(tokio::spawn(async move {
        while let Some(u) = updates.recv().await {
            let _ = tx.send(message(Up::Fault(fault_event(&a, &cfg, u)))).await;
        }
    }));
    tasks
}

/// This host's name, the default node name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
