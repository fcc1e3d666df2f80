//! The gRPC face agents dial: one bidirectional `Session` per agent.

use std::pin::Pin;
use std::time::{Duration, SystemTime};

use stampede_common::tls::{Token, AUTHORIZATION};
use stampede_proto::convert::unix_nanos;
use stampede_proto::v1::agent_message::Msg as Up;
use stampede_proto::v1::agent_service_server::AgentService;
use stampede_proto::v1::coordinator_message::Msg as Down;
use stampede_proto::v1::{Abort, AgentMessage, ClockProbe, CoordinatorMessage, Delivered, Heartbeat, Registered};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::fleet::{AgentEntry, AgentEvent, Delivery, Fleet};

pub struct AgentSessions {
    pub fleet: Fleet,
    /// When set, a session must carry `authorization: Bearer TOKEN`.
    pub token: Option<Token>,
}

pub fn unix_nanos_now() -> i64 {
    unix_nanos(SystemTime::now())
}

type Outbound = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

fn down(msg: Down) -> Result<CoordinatorMessage, Status> {
    Ok(CoordinatorMessage { msg: Some(msg) })
}

#[tonic::async_trait]
impl AgentService for AgentSessions {
    type SessionStream = Outbound;

    async fn session(&self, request: Request<Streaming<AgentMessage>>) -> Result<Response<Outbound>, Status> {
        // Only an agent's certificate, whatever token comes with it.
        let caller = crate::caller::authorize(&request, "the agents' service (AgentService.Session)", stampede_common::tls::Role::Agent)?;
        // Enrollment next, before reading anything the agent sends.
        if let Some(token) = &self.token {
            let presented = request.metadata().get(AUTHORIZATION).map(|v| v.as_bytes());
            if !presented.is_some_and(|p| token.matches(p)) {
                let peer = request.remote_addr().map_or_else(|| "unknown".to_string(), |a| a.to_string());
                let reason = if presented.is_some() { "wrong token" } else { "no token" };
                warn!(message = "Agent refused: bad enrollment token.", %peer, %reason);
                return Err(Status::unauthenticated("bad enrollment token: the agent's --token-file must hold the coordinator's token"));
            }
        }
        let mut inbound = request.into_inner();
        let first = inbound
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("the session closed before registering"))??;
        let Some(Up::Register(reg)) = first.msg else {
            return Err(Status::invalid_argument("the first message of a session must be Register"));
        };
        if reg.agent_id.is_empty() {
            return Err(Status::invalid_argument("Register.agent_id is empty"));
        }
        let now = unix_nanos_now();
        let (tx, rx) = mpsc::channel(256);
        let _ = tx.send(down(Down::Registered(Registered { clock_unix_nanos: now, coordinator_version: env!("CARGO_PKG_VERSION").into() }))).await;
        let agent_id = reg.agent_id.clone();
        // An agent still executing a run we do not know (we restarted, or
        // the run ended without it) must stop it and revert its faults.
        if !reg.active_run_id.is_empty() && self.fleet.current_run().as_deref() != Some(reg.active_run_id.as_str()) {
            warn!(message = "Agent is executing a run this coordinator does not know; aborting it.", agent = %agent_id, run = %reg.active_run_id);
            let abort = Abort { run_id: reg.active_run_id.clone(), reason: "the coordinator does not know this run (it restarted, or the run ended)".into() };
            let _ = tx.send(down(Down::Abort(abort))).await;
        }
        let instance = reg.instance;
        let lease = if reg.lease_ms == 0 { DEFAULT_LEASE } else { Duration::from_millis(reg.lease_ms) };
        let session = self.fleet.register(AgentEntry {
            id: reg.agent_id,
            labels: reg.labels.into_iter().collect(),
            capacity: reg.capacity.max(1),
            workers: reg.workers,
            capabilities: reg.capabilities,
            // One sample, including the one-way delay; good enough on a LAN.
            clock_offset_nanos: reg.clock_unix_nanos - now,
            clock_rtt_nanos: i64::MAX,
            clock_sampled_at: SystemTime::now(),
            last_seen: SystemTime::now(),
            version: reg.version,
            node: if reg.node.is_empty() { agent_id.clone() } else { reg.node },
            tx: tx.clone(),
            session: 0,
            instance,
            lease,
        }, &reg.active_run_id);
        info!(message = "Agent registered.", agent = %agent_id, resuming = %reg.active_run_id, %caller);
        let ended = tokio_util::sync::CancellationToken::new();
        tokio::spawn(keepalive(tx.clone(), ended.clone()));

        let fleet = self.fleet.clone();
        tokio::spawn(async move {
            let reason = loop {
                // A partitioned link keeps its TCP connection open: silence
                // past a few heartbeats is what tells us it is gone.
                let next = match tokio::time::timeout(SILENCE, inbound.next()).await {
                    Ok(next) => next,
                    Err(_) => break format!("no word from the agent for {SILENCE:?}"),
                };
                match next {
                    None => break "the agent closed its session".to_string(),
                    Some(Err(status)) => break format!("the session broke: {}", status.message()),
                    Some(Ok(m)) => {
                        fleet.touch(&agent_id);
                        let run_message = match m.msg {
                            Some(Up::Snapshot(s)) => Some((s.run_id.clone(), AgentEvent::Snapshot(s))),
                            Some(Up::Finished(f)) => Some((f.run_id.clone(), AgentEvent::Finished(f))),
                            Some(Up::Fault(ev)) => Some((ev.run_id.clone(), AgentEvent::Fault(ev))),
                            other => {
                                session_message(&fleet, &agent_id, other);
                                None
                            }
                        };
                        let Some((run_id, event)) = run_message else { continue };
                        if m.delivery == 0 {
                            // An agent that does not number its messages.
                            fleet.deliver(&run_id, event);
                            continue;
                        }
                        match fleet.deliver_numbered(&agent_id, session, instance, m.delivery, &run_id, event) {
                            // Acknowledged either way: a resent message we
                            // already have must leave the agent's buffer too.
                            Delivery::New | Delivery::Duplicate => {
                                let _ = tx.try_send(down(Down::Delivered(Delivered { upto: m.delivery })));
                            }
                            Delivery::StaleSession => {}
                        }
                    }
                }
            };
            // Stop the heartbeats; with the fleet's entry gone too, the
            // outbound stream ends.
            ended.cancel();
            drop(tx);
            info!(message = "Agent left.", agent = %agent_id, %reason);
            fleet.unregister(&agent_id, session, reason);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx)) as Outbound))
    }
}

/// Clock probes per round, their spacing, and how often a round repeats
/// (clocks drift; a fresh estimate before each run is worth 160 ms of probes).
const PROBES: usize = 8;
const PROBE_GAP: Duration = Duration::from_millis(20);
const PROBE_ROUND: Duration = Duration::from_secs(30);
/// Heartbeats to the agent, and how long its silence is tolerated before the
/// session counts as lost (the agent heartbeats every second too).
const HEARTBEAT: Duration = Duration::from_secs(1);
const SILENCE: Duration = Duration::from_secs(3);
/// The lease of an agent that does not state one (the agent's own default).
const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// Heartbeats and rounds of clock probes, until the session's queue closes.
async fn keepalive(tx: mpsc::Sender<Result<CoordinatorMessage, Status>>, ended: tokio_util::sync::CancellationToken) {
    let mut next_round = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= next_round {
            for _ in 0..PROBES {
                let probe = ClockProbe { t1_unix_nanos: unix_nanos_now() };
                // A half-open link can fill the queue: never wait on it past the session's end.
                tokio::select! {
                    sent = tx.send(down(Down::ClockProbe(probe))) => if sent.is_err() { return },
                    _ = ended.cancelled() => return,
                }
                tokio::time::sleep(PROBE_GAP).await;
            }
            next_round = tokio::time::Instant::now() + PROBE_ROUND;
        }
        // try_send: a full queue (a stalled link) must not stall the beat;
        // the messages queued say the same thing.
        let _ = tx.try_send(down(Down::Heartbeat(Heartbeat { clock_unix_nanos: unix_nanos_now() })));
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT) => {}
            _ = ended.cancelled() => return,
            _ = tx.closed() => return,
        }
    }
}

/// The messages of the session itself, not of a run.
fn session_message(fleet: &Fleet, agent_id: &str, msg: Option<Up>) {
    match msg {
        Some(Up::ClockEcho(e)) => {
            let t4 = unix_nanos_now();
            let rtt = (t4 - e.t1_unix_nanos) - (e.t3_unix_nanos - e.t2_unix_nanos);
            let offset = ((e.t2_unix_nanos - e.t1_unix_nanos) + (e.t3_unix_nanos - t4)) / 2;
            fleet.clock_sample(agent_id, offset, rtt);
        }
        Some(Up::Register(_)) => warn!(message = "Agent registered twice on one session; ignored.", agent = %agent_id),
        Some(Up::Heartbeat(_)) | Some(Up::Snapshot(_)) | Some(Up::Finished(_)) | Some(Up::Fault(_)) | None => {}
    }
}
