//! The agent's side of the session: dial the coordinator, register, run what
//! it assigns, stream one snapshot per interval, and obey aborts. One task
//! owns the session; a run executes in its own task and talks back through
//! the session's outbound queue.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use stampede_common::plan::{validate, Plan};
use stampede_proto::convert::encode_steps;
use stampede_proto::v1::agent_message::Msg as Up;
use stampede_proto::v1::agent_service_client::AgentServiceClient;
use stampede_proto::v1::coordinator_message::Msg as Down;
use stampede_proto::v1::{AgentMessage, Assignment, Heartbeat, Register, RunFinished, Snapshot};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use crate::engine::{self, RunSpec};

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The coordinator's gRPC URL, `http://host:port`.
    pub coordinator: String,
    pub agent_id: String,
    pub labels: BTreeMap<String, String>,
    /// Relative weight for splitting load between agents.
    pub capacity: u32,
    /// Load worker threads.
    pub workers: usize,
}

const HEARTBEAT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

enum SessionEnd {
    Shutdown,
    Closed,
}

/// Runs the agent until `shutdown`: reconnects with exponential backoff
/// whenever the session ends or cannot be opened.
pub async fn run(cfg: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let span = info_span!("agent", id = %cfg.agent_id);
    async move {
        let mut backoff = BACKOFF_MIN;
        loop {
            match session(&cfg, &shutdown).await {
                Ok(SessionEnd::Shutdown) => return Ok(()),
                Ok(SessionEnd::Closed) => {
                    info!(message = "Coordinator closed the session.", coordinator = %cfg.coordinator);
                    backoff = BACKOFF_MIN;
                }
                Err(error) => warn!(message = "Session with the coordinator failed.", %error, retry_in = ?backoff),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => return Ok(()),
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
    .instrument(span)
    .await
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

async fn session(cfg: &AgentConfig, shutdown: &CancellationToken) -> anyhow::Result<SessionEnd> {
    let mut client = AgentServiceClient::connect(cfg.coordinator.clone()).await?;
    let (tx, rx) = mpsc::channel::<AgentMessage>(1024);
    tx.send(message(Up::Register(Register {
        agent_id: cfg.agent_id.clone(),
        labels: cfg.labels.clone().into_iter().collect(),
        capacity: cfg.capacity,
        capabilities: Vec::new(),
        clock_unix_nanos: unix_nanos(SystemTime::now()),
        version: env!("CARGO_PKG_VERSION").to_string(),
        workers: cfg.workers as u32,
    })))
    .await?;
    let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
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
                        run = Some(start_run(a, cfg, tx.clone()));
                    }
                    Some(Down::Abort(a)) => {
                        if let Some(r) = run.as_ref().filter(|r| r.id == a.run_id) {
                            warn!(message = "Run aborted by the coordinator.", run = %r.id, reason = %a.reason);
                            r.cancel.cancel();
                        }
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
    Ok(end)
}

async fn stop_run(run: Option<ActiveRun>) {
    if let Some(r) = run {
        r.cancel.cancel();
        // Gives the run a moment to send its final snapshot.
        let _ = tokio::time::timeout(Duration::from_secs(2), r.task).await;
    }
}

fn start_run(a: Assignment, cfg: &AgentConfig, tx: mpsc::Sender<AgentMessage>) -> ActiveRun {
    let cancel = CancellationToken::new();
    let id = a.run_id.clone();
    let span = info_span!("run", run = %id);
    let task = tokio::spawn(execute(a, cfg.clone(), tx, cancel.clone()).instrument(span));
    ActiveRun { id, cancel, task }
}

/// Runs one assignment to its end and reports it as finished, with an error
/// when it could not run at all.
async fn execute(a: Assignment, cfg: AgentConfig, tx: mpsc::Sender<AgentMessage>, cancel: CancellationToken) {
    let mut finished = RunFinished { run_id: a.run_id.clone(), agent_id: cfg.agent_id.clone(), ..Default::default() };
    if let Err(e) = stream_run(&a, &cfg, &tx, cancel, &mut finished).await {
        warn!(message = "Run failed on this agent.", error = %e);
        finished.error = e;
    }
    info!(message = "Run finished.", requests = finished.requests, errors = finished.errors, snapshots = finished.snapshots_sent);
    let _ = tx.send(message(Up::Finished(finished))).await;
}

async fn stream_run(
    a: &Assignment,
    cfg: &AgentConfig,
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
    let spec = RunSpec {
        plan: Arc::new(plan),
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
    Ok(())
}
