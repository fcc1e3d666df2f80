//! The gRPC face agents dial: one bidirectional `Session` per agent.

use std::pin::Pin;
use std::time::{Duration, SystemTime};

use stampede_common::tls::{Token, AUTHORIZATION};
use stampede_proto::convert::unix_nanos;
use stampede_proto::limits;
use stampede_proto::v1::agent_message::Msg as Up;
use stampede_proto::v1::agent_service_server::AgentService;
use stampede_proto::v1::coordinator_message::Msg as Down;
use stampede_proto::v1::{Abort, AgentMessage, ClockProbe, CoordinatorMessage, Delivered, Heartbeat, Register, Registered};
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::fleet::{AgentEntry, AgentEvent, Delivery, Fleet, SessionCut};
use crate::to_agent::{Sent, ToAgent};

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
        self.check_enrollment(&request)?;
        let mut inbound = request.into_inner();
        let reg = first_register(&mut inbound).await?;
        let now = unix_nanos_now();
        if let Err(refusal) = limits::check_register(&reg, now) {
            warn!(message = "Agent refused: its Register is out of bounds.", agent = %reg.agent_id.escape_debug().to_string().chars().take(limits::MAX_ID).collect::<String>(), reason = %refusal);
            return Err(Status::invalid_argument(format!("Register refused: {refusal}")));
        }
        let (tx, rx) = mpsc::channel(256);
        let _ = tx.send(down(Down::Registered(Registered { clock_unix_nanos: now, coordinator_version: env!("CARGO_PKG_VERSION").into() }))).await;
        let (agent_id, instance, active_run_id) = (reg.agent_id.clone(), reg.instance, reg.active_run_id.clone());
        let cut = SessionCut::default();
        let session = self.register(reg, now, &tx, &cut)?;
        self.abort_unknown_run(&agent_id, &active_run_id, &tx).await;
        info!(message = "Agent registered.", agent = %agent_id, resuming = %active_run_id, %caller);
        let sent = Sent::default();
        tokio::spawn(keepalive(tx.clone(), cut.clone(), sent.clone()));
        let outbound = Box::pin(ToAgent::new(rx, cut.clone(), sent)) as Outbound;
        let reader = Reader { fleet: self.fleet.clone(), agent_id, session, instance, tx, cut };
        tokio::spawn(reader.run(inbound));
        Ok(Response::new(outbound))
    }
}

impl AgentSessions {
    /// With an enrollment token set, the session must present it.
    fn check_enrollment(&self, request: &Request<Streaming<AgentMessage>>) -> Result<(), Status> {
        let Some(token) = &self.token else { return Ok(()) };
        let presented = request.metadata().get(AUTHORIZATION).map(|v| v.as_bytes());
        if presented.is_some_and(|p| token.matches(p)) {
            return Ok(());
        }
        let peer = request.remote_addr().map_or_else(|| "unknown".to_string(), |a| a.to_string());
        let reason = if presented.is_some() { "wrong token" } else { "no token" };
        warn!(message = "Agent refused: bad enrollment token.", %peer, %reason);
        Err(Status::unauthenticated("bad enrollment token: the agent's --token-file must hold the coordinator's token"))
    }

    /// Enters the registered agent in the fleet (with the faults it
    /// recovered at start-up) and returns its session number; refused when
    /// its id belongs to a live session of another agent process.
    fn register(&self, reg: Register, now: i64, tx: &mpsc::Sender<Result<CoordinatorMessage, Status>>, cut: &SessionCut) -> Result<u64, Status> {
        let (agent_id, instance) = (reg.agent_id.clone(), reg.instance);
        let node = if reg.node.is_empty() { agent_id.clone() } else { reg.node };
        self.fleet.recovered(&agent_id, &node, reg.clock_unix_nanos - now, reg.recovered);
        let lease = if reg.lease_ms == 0 { DEFAULT_LEASE } else { Duration::from_millis(reg.lease_ms) };
        let registered = self.fleet.register(AgentEntry {
            id: reg.agent_id,
            labels: reg.labels.into_iter().collect(),
            // 0 is a fault-only agent (`--capacity 0`): its node's faults, no load.
            capacity: reg.capacity,
            workers: reg.workers,
            max_connections: reg.max_connections,
            capabilities: reg.capabilities,
            // One sample, including the one-way delay; good enough on a LAN.
            // check_register made sure the difference does not overflow.
            clock_offset_nanos: reg.clock_unix_nanos - now,
            clock_rtt_nanos: i64::MAX,
            clock_sampled_at: SystemTime::now(),
            clock_samples: 0,
            last_seen: SystemTime::now(),
            version: reg.version,
            node,
            tx: tx.clone(),
            session: 0,
            instance,
            lease,
            cut: cut.clone(),
            registered_at: SystemTime::now(),
        }, &reg.active_run_id);
        registered.map_err(|duplicate| {
            warn!(message = "Agent refused: its id belongs to a live session of another agent process.", agent = %agent_id, live_instance = %format!("{:x}", duplicate.live), instance = %format!("{instance:x}"));
            Status::already_exists(duplicate.to_string())
        })
    }

    /// An agent still executing a run we do not know (we restarted, or
    /// the run ended without it) must stop it and revert its faults.
    async fn abort_unknown_run(&self, agent_id: &str, active_run_id: &str, tx: &mpsc::Sender<Result<CoordinatorMessage, Status>>) {
        if active_run_id.is_empty() || self.fleet.current_run().as_deref() == Some(active_run_id) {
            return;
        }
        warn!(message = "Agent is executing a run this coordinator does not know; aborting it.", agent = %agent_id, run = %active_run_id);
        let abort = Abort { run_id: active_run_id.to_string(), reason: "the coordinator does not know this run (it restarted, or the run ended)".into() };
        let _ = tx.send(down(Down::Abort(abort))).await;
    }
}

/// The session's first message, which must be a `Register`: a client that
/// never registers must not hold a handler forever.
async fn first_register(inbound: &mut Streaming<AgentMessage>) -> Result<Register, Status> {
    let first = tokio::time::timeout(SILENCE, inbound.next())
        .await
        .map_err(|_| Status::deadline_exceeded(format!("no Register within {SILENCE:?} of opening the session")))?
        .ok_or_else(|| Status::invalid_argument("the session closed before registering"))??;
    let Some(Up::Register(reg)) = first.msg else {
        return Err(Status::invalid_argument("the first message of a session must be Register"));
    };
    Ok(reg)
}

/// Reads one session's messages until it ends or is cut.
struct Reader {
    fleet: Fleet,
    agent_id: String,
    session: u64,
    instance: u64,
    tx: mpsc::Sender<Result<CoordinatorMessage, Status>>,
    cut: SessionCut,
}

impl Reader {
    async fn run(self, mut inbound: Streaming<AgentMessage>) {
        let reason = loop {
            // A partitioned link keeps its TCP connection open: silence
            // past a few heartbeats is what tells us it is gone.
            let next = tokio::select! {
                _ = self.cut.cut_off() => break format!("the session was closed: {}", self.cut.reason().unwrap_or("cut")),
                next = tokio::time::timeout(SILENCE, inbound.next()) => next,
            };
            let next = match next {
                Ok(next) => next,
                Err(_) => break format!("no word from the agent for {SILENCE:?}"),
            };
            match next {
                None => break "the agent closed its session".to_string(),
                Some(Err(status)) => match refused_status(&status) {
                    Some(refusal) => break self.refuse(refusal),
                    None => break format!("the session broke: {}", status.message()),
                },
                Some(Ok(m)) => {
                    if let Err(refusal) = self.message(m) {
                        break self.refuse(refusal);
                    }
                }
            }
        };
        // Ends the heartbeats and the stream to the agent (with the reason
        // when it was refused; cut already holds it then).
        self.cut.cut(None);
        info!(message = "Agent left.", agent = %self.agent_id, %reason);
        self.fleet.unregister(&self.agent_id, self.session, reason);
    }

    /// Tells the run and the agent that the session is refused; the reason.
    fn refuse(&self, refusal: String) -> String {
        warn!(message = "Agent refused: it sent a message out of bounds; its session is closed.", agent = %self.agent_id, reason = %refusal);
        self.fleet.refused(&self.agent_id, &refusal);
        self.cut.cut(Some(format!("the coordinator refused this session: {refusal}")));
        format!("refused: {refusal}")
    }

    /// One message; Err is a refusal of the session.
    fn message(&self, m: AgentMessage) -> Result<(), String> {
        let fleet = &self.fleet;
        fleet.touch(&self.agent_id);
        let (run_id, claimed, event) = match m.msg {
            Some(Up::Snapshot(s)) => (s.run_id.clone(), s.agent_id.clone(), AgentEvent::Snapshot(s)),
            Some(Up::Finished(f)) => (f.run_id.clone(), f.agent_id.clone(), AgentEvent::Finished(f)),
            Some(Up::Fault(ev)) => (ev.run_id.clone(), ev.agent_id.clone(), AgentEvent::Fault(ev)),
            other => {
                session_message(fleet, &self.agent_id, other);
                return Ok(());
            }
        };
        // The run attributes a message by the id it carries: one agent
        // must not speak for another.
        if claimed != self.agent_id {
            return Err(format!("a run message in the name of agent {:?}", claimed.chars().take(limits::MAX_ID).collect::<String>()));
        }
        if m.delivery == 0 {
            // An agent that does not number its messages.
            fleet.deliver(&run_id, event);
            return Ok(());
        }
        match fleet.deliver_numbered(&self.agent_id, self.session, self.instance, m.delivery, &run_id, event) {
            // Acknowledged either way: a resent message we
            // already have must leave the agent's buffer too.
            Delivery::New | Delivery::Duplicate => {
                let _ = self.tx.try_send(down(Down::Delivered(Delivered { upto: m.delivery })));
            }
            Delivery::StaleSession => {}
        }
        Ok(())
    }
}

/// A broken stream that is the agent's doing, not the network's: a message
/// over the size limit, or bytes that are not an `AgentMessage`.
fn refused_status(status: &Status) -> Option<String> {
    match status.code() {
        tonic::Code::OutOfRange => Some(format!("a message over the coordinator's limit of {} bytes ({})", crate::server::MAX_AGENT_MESSAGE, status.message())),
        tonic::Code::Internal if status.message().contains("decode") => Some(format!("a message that is not an AgentMessage ({})", status.message())),
        _ => None,
    }
}

/// Clock probes in the first round, their spacing, and how often a round
/// repeats (clocks drift; a fresh estimate before each run is worth 160 ms
/// of probes). The estimate keeps the least-delayed sample of the last
/// 60 s (`Fleet::clock_sample`), so a refresh round needs only a few
/// probes to keep it fresh: 3 instead of 8 is 10 fewer messages per agent
/// every 30 s, an eighth of an idle fleet's traffic.
pub(crate) const PROBES: usize = 8;
const REFRESH_PROBES: usize = 3;
const PROBE_GAP: Duration = Duration::from_millis(20);
const PROBE_ROUND: Duration = Duration::from_secs(30);
/// Heartbeats to the agent, and how long its silence is tolerated before the
/// session counts as lost (the agent heartbeats every second too).
const HEARTBEAT: Duration = Duration::from_secs(1);
const SILENCE: Duration = Duration::from_secs(3);
/// The lease of an agent that does not state one (the agent's own default).
const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// Heartbeats and rounds of clock probes, until the session's queue closes.
/// A beat is skipped when other messages went to the agent since the last
/// one (acks of its snapshots, during a run): any message tells the agent
/// the session lives, and at 1 000 agents every message costs the
/// coordinator a write (`benchmarks/README.md`, fleet scale).
async fn keepalive(tx: mpsc::Sender<Result<CoordinatorMessage, Status>>, ended: SessionCut, sent: Sent) {
    let mut next_round = tokio::time::Instant::now();
    let mut probes = PROBES;
    // The count of messages sent as of the last look, a beat included.
    let mut seen = u64::MAX;
    loop {
        if tokio::time::Instant::now() >= next_round {
            for _ in 0..std::mem::replace(&mut probes, REFRESH_PROBES) {
                let probe = ClockProbe { t1_unix_nanos: unix_nanos_now() };
                // A half-open link can fill the queue: never wait on it past the session's end.
                tokio::select! {
                    sent = tx.send(down(Down::ClockProbe(probe))) => if sent.is_err() { return },
                    _ = ended.cut_off() => return,
                }
                tokio::time::sleep(PROBE_GAP).await;
            }
            next_round = tokio::time::Instant::now() + PROBE_ROUND;
        }
        // try_send: a full queue (a stalled link) must not stall the beat;
        // the messages queued say the same thing.
        let count = sent.count();
        seen = if count == seen {
            // Nothing went to the agent for a beat: beat (counted once sent).
            let _ = tx.try_send(down(Down::Heartbeat(Heartbeat { clock_unix_nanos: unix_nanos_now() })));
            count + 1
        } else {
            count
        };
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT) => {}
            _ = ended.cut_off() => return,
            _ = tx.closed() => return,
        }
    }
}

/// The messages of the session itself, not of a run.
fn session_message(fleet: &Fleet, agent_id: &str, msg: Option<Up>) {
    match msg {
        Some(Up::ClockEcho(e)) => {
            // Times that overflow when compared are no sample at all.
            if let Some((offset, rtt)) = limits::clock_sample(&e, unix_nanos_now()) {
                fleet.clock_sample(agent_id, offset, rtt);
            }
        }
        Some(Up::SteadyState(reply)) => match limits::check_steady_reply(&reply, stampede_common::plan::MAX_PROBES) {
            Ok(()) => fleet.deliver(&reply.run_id.clone(), AgentEvent::SteadyState { agent_id: agent_id.to_string(), reply }),
            Err(refusal) => warn!(message = "Steady-state answer out of bounds; ignored.", agent = %agent_id, %refusal),
        },
        Some(Up::Register(_)) => warn!(message = "Agent registered twice on one session; ignored.", agent = %agent_id),
        Some(Up::Heartbeat(_)) | Some(Up::Snapshot(_)) | Some(Up::Finished(_)) | Some(Up::Fault(_)) | None => {}
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_stream::StreamExt;

    use super::*;

    /// Heartbeats among what the stream yields over `ms` of (paused) time,
    /// while `other` messages a second are queued beside them.
    async fn beats_over(ms: u64, other: u64, tx: &mpsc::Sender<Result<CoordinatorMessage, Status>>, stream: &mut ToAgent) -> usize {
        let mut beats = 0;
        for step in 0..ms / 100 {
            if other > 0 && step % (10 / other) == 0 {
                tx.try_send(down(Down::Delivered(Delivered { upto: step }))).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            while let Ok(Some(item)) = tokio::time::timeout(Duration::ZERO, stream.next()).await {
                if matches!(item, Ok(CoordinatorMessage { msg: Some(Down::Heartbeat(_)) })) {
                    beats += 1;
                }
            }
        }
        beats
    }

    #[tokio::test(start_paused = true)]
    async fn the_keepalive_beats_only_when_nothing_else_went_to_the_agent() {
        let (tx, rx) = mpsc::channel(256);
        let cut = SessionCut::default();
        let sent = Sent::default();
        let mut stream = ToAgent::new(rx, cut.clone(), sent.clone());
        tokio::spawn(keepalive(tx.clone(), cut.clone(), sent));
        // Idle: a beat a second (the first second has the clock probes).
        let idle = beats_over(5_000, 0, &tx, &mut stream).await;
        assert!((3..=5).contains(&idle), "{idle} beats in 5 s idle");
        // Acks twice a second (a run's snapshots): no beat needed.
        let busy = beats_over(5_000, 2, &tx, &mut stream).await;
        assert!(busy <= 1, "{busy} beats in 5 s with acks going");
        // Quiet again: the beats come back.
        let again = beats_over(3_000, 0, &tx, &mut stream).await;
        assert!(again >= 2, "{again} beats in 3 s idle again");
        cut.cut(None);
    }
}
