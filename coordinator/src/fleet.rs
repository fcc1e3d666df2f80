//! The agents connected to this coordinator, and the route that carries their
//! run messages to the run in progress. Session handlers only insert, remove
//! and forward; the orchestrator owns everything about a run.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use stampede_proto::v1::{Capability, CoordinatorMessage, FaultEvent, RecoveredFault, RunFinished, Snapshot, SteadyStateReply};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// What an agent's session delivers to the run in progress.
#[derive(Debug)]
pub enum AgentEvent {
    Snapshot(Snapshot),
    Finished(RunFinished),
    Fault(FaultEvent),
    /// The agent's session ended (crash, network loss, shutdown). It may
    /// come back within its lease, counted from `last_seen`.
    Lost { agent_id: String, reason: String, last_seen: SystemTime },
    /// An agent (re)registered while the run goes on; `active_run_id` is
    /// the run it says it is executing ("" for none: a restarted agent).
    Returned { agent_id: String, active_run_id: String, session: u64, instance: u64 },
    /// The agent's session sent something the coordinator refuses (a
    /// message over the size limit, one in another agent's name): the
    /// session is cut, and the run must not trust this agent's data.
    Refused { agent_id: String, reason: String },
    /// A (re)starting agent on `node` reverted this fault of the run at
    /// start-up, from its journal: the process that applied it died.
    /// `clock_offset_nanos` is the new process's clock minus ours.
    Recovered { agent_id: String, node: String, fault: RecoveredFault, clock_offset_nanos: i64 },
    /// The answer to a steady-state request (`steady.rs`), checked by
    /// `limits::check_steady_reply`; not a run message.
    SteadyState { agent_id: String, reply: SteadyStateReply },
}

/// Ends one session from outside its handler: the handler's reader stops,
/// and the stream to the agent ends, with `why` as its final status.
#[derive(Debug, Clone, Default)]
pub struct SessionCut(Arc<CutState>);

#[derive(Debug, Default)]
struct CutState {
    token: CancellationToken,
    why: OnceLock<String>,
}

impl SessionCut {
    /// Cuts the session; the first reason given is the one the agent hears.
    pub fn cut(&self, why: Option<String>) {
        if let Some(why) = why {
            let _ = self.0.why.set(why);
        }
        self.0.token.cancel();
    }

    pub async fn cut_off(&self) {
        self.0.token.cancelled().await
    }

    /// [`Self::cut_off`] as a future that owns its handle (for a stream's state).
    pub fn cut_off_owned(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.0.token.clone().cancelled_owned()
    }

    /// Why the session was cut, if it was cut for a reason the agent must hear.
    pub fn reason(&self) -> Option<&str> {
        self.0.why.get().map(String::as_str)
    }
}

/// A second session with the id of a live one, from another agent process.
#[derive(Debug, thiserror::Error)]
#[error(
    "agent id {id} is already connected (another agent process, instance {live:x}, since {since_s:.0} s); this session (instance {new:x}) is refused. \
     Give each agent its own --id; if the other process is gone, its session ends within a few seconds of silence and this agent's retry gets in"
)]
pub struct DuplicateId {
    pub id: String,
    pub live: u64,
    pub new: u64,
    pub since_s: f64,
}

#[derive(Debug, Clone)]
pub struct AgentEntry {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub capacity: u32,
    pub workers: u32,
    /// Connections the agent can hold at once (from its open-files limit);
    /// 0 = unknown (an older agent), not checked.
    pub max_connections: u32,
    pub capabilities: Vec<Capability>,
    /// Estimated (agent clock − coordinator clock), nanoseconds.
    pub clock_offset_nanos: i64,
    /// Round trip of the sample the offset came from; `i64::MAX` until the
    /// first probe returns (the offset is then the registration's one-way guess).
    pub clock_rtt_nanos: i64,
    pub clock_sampled_at: SystemTime,
    /// Clock probes answered in this session (the estimate's evidence).
    pub clock_samples: u32,
    pub last_seen: SystemTime,
    pub version: String,
    /// The host the agent runs on; faults apply once per node.
    pub node: String,
    /// Messages to the agent go here; the session streams them out.
    pub tx: mpsc::Sender<Result<CoordinatorMessage, Status>>,
    /// Distinguishes this session from an earlier one of the same agent id.
    pub session: u64,
    /// The agent process (random per start): delivery numbers are per instance.
    pub instance: u64,
    /// How long the agent keeps a run going without us; after a lost
    /// session, how long we wait for it to come back.
    pub lease: Duration,
    /// Ends this session (a newer session of the same process, a refusal).
    pub cut: SessionCut,
    pub registered_at: SystemTime,
}

/// What became of a numbered run message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    New,
    /// Already received (resent after a reconnect): acknowledged, not counted.
    Duplicate,
    /// From a session the agent has since replaced: neither counted nor
    /// acknowledged; the agent resends it on its current session.
    StaleSession,
}

struct RunRoute {
    run_id: String,
    events: mpsc::UnboundedSender<AgentEvent>,
    /// The agents the run picked (empty while it waits for them).
    agents: std::collections::HashSet<String>,
}

#[derive(Default)]
struct State {
    agents: BTreeMap<String, AgentEntry>,
    route: Option<RunRoute>,
    next_session: u64,
    /// Per agent id: (instance, highest delivery number received). Kept
    /// across sessions, so a resent message is recognized after a reconnect.
    deliveries: HashMap<String, (u64, u64)>,
}

impl State {
    /// Forwards a run message if it belongs to the run in progress; stale
    /// messages of an earlier run are dropped.
    fn forward_to_run(&self, run_id: &str, event: AgentEvent) {
        if let Some(route) = self.route.as_ref().filter(|r| r.run_id == run_id) {
            let _ = route.events.send(event);
        }
    }
}

/// Shared between the gRPC handlers and the orchestrator.
#[derive(Clone, Default)]
pub struct Fleet {
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
}

impl Fleet {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain data behind; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forwards what an agent's start-up recovery reverted to the run each
    /// fault belongs to, if that run is in progress. Call before
    /// [`Fleet::register`]: a restarted agent's return can end the run.
    pub fn recovered(&self, agent_id: &str, node: &str, clock_offset_nanos: i64, faults: Vec<RecoveredFault>) {
        let s = self.lock();
        for fault in faults {
            let run_id = fault.run_id.clone();
            s.forward_to_run(&run_id, AgentEvent::Recovered { agent_id: agent_id.to_string(), node: node.to_string(), fault, clock_offset_nanos });
        }
    }

    /// Adds (or replaces, after a reconnect) an agent; returns its session
    /// number. The run in progress hears of it with the run the agent is on.
    ///
    /// The same agent process (same instance) reconnecting replaces its
    /// old session, which is cut, so that no stream stays open that the
    /// registry does not know. Another process with the id of a live
    /// session is refused: the live one may be running a share of a run.
    pub fn register(&self, mut entry: AgentEntry, active_run_id: &str) -> Result<u64, DuplicateId> {
        let mut s = self.lock();
        if let Some(live) = s.agents.get(&entry.id) {
            if live.instance != entry.instance {
                let since_s = live.registered_at.elapsed().unwrap_or_default().as_secs_f64();
                return Err(DuplicateId { id: entry.id.clone(), live: live.instance, new: entry.instance, since_s });
            }
            live.cut.cut(Some("this agent process opened a newer session; this one is closed".into()));
        }
        s.next_session += 1;
        entry.session = s.next_session;
        let session = entry.session;
        let id = entry.id.clone();
        if let Some(route) = &s.route {
            let instance = entry.instance;
            let _ = route.events.send(AgentEvent::Returned { agent_id: id.clone(), active_run_id: active_run_id.to_string(), session, instance });
        }
        if s.agents.insert(id.clone(), entry).is_some() {
            tracing::info!(message = "An agent re-registered while its old session was still open; the newer session wins and the old one is closed.", agent = %id);
        }
        drop(s);
        self.changed.notify_waiters();
        Ok(session)
    }

    /// Cuts the agent's current session, telling it `why`.
    pub fn cut(&self, agent_id: &str, why: &str) {
        if let Some(a) = self.lock().agents.get(agent_id) {
            a.cut.cut(Some(why.to_string()));
        }
    }

    /// Tells the run in progress that `agent_id` sent something refused.
    pub fn refused(&self, agent_id: &str, reason: &str) {
        if let Some(route) = &self.lock().route {
            let _ = route.events.send(AgentEvent::Refused { agent_id: agent_id.to_string(), reason: reason.to_string() });
        }
    }

    /// Removes the agent if `session` is still its current one, and tells the run.
    pub fn unregister(&self, agent_id: &str, session: u64, reason: String) {
        let mut s = self.lock();
        if s.agents.get(agent_id).is_some_and(|a| a.session == session) {
            if let Some(gone) = s.agents.remove(agent_id) {
                if let Some(route) = &s.route {
                    let _ = route.events.send(AgentEvent::Lost { agent_id: agent_id.to_string(), reason, last_seen: gone.last_seen });
                }
            }
        }
        drop(s);
        self.changed.notify_waiters();
    }

    /// Keeps the best clock sample: the smallest round trip, unless the kept
    /// one is older than a minute (clocks drift).
    pub fn clock_sample(&self, agent_id: &str, offset_nanos: i64, rtt_nanos: i64) {
        if rtt_nanos < 0 {
            return; // a clock stepped mid-probe; the sample means nothing
        }
        if let Some(a) = self.lock().agents.get_mut(agent_id) {
            a.clock_samples = a.clock_samples.saturating_add(1);
            let stale = a.clock_sampled_at.elapsed().map_or(true, |e| e > std::time::Duration::from_secs(60));
            if rtt_nanos < a.clock_rtt_nanos || stale {
                a.clock_offset_nanos = offset_nanos;
                a.clock_rtt_nanos = rtt_nanos;
                a.clock_sampled_at = SystemTime::now();
            }
        }
    }

    /// Takes a run message numbered `delivery` from one session of an
    /// agent: forwards it to the run if it is new, under one lock so that
    /// two sessions of the agent can never reorder what the run sees.
    pub fn deliver_numbered(&self, agent_id: &str, session: u64, instance: u64, delivery: u64, run_id: &str, event: AgentEvent) -> Delivery {
        let mut s = self.lock();
        // A session that has been replaced: the current one resends
        // everything unacknowledged, in order.
        if s.agents.get(agent_id).is_none_or(|a| a.session != session) {
            return Delivery::StaleSession;
        }
        let seen = s.deliveries.entry(agent_id.to_string()).or_insert((instance, 0));
        if seen.0 != instance {
            *seen = (instance, 0);
        }
        if delivery <= seen.1 {
            return Delivery::Duplicate;
        }
        // Not necessarily seen.1 + 1: an agent whose resend buffer
        // overflowed skips numbers, and the run's own seqs show the gap.
        seen.1 = delivery;
        s.forward_to_run(run_id, event);
        Delivery::New
    }

    /// The run in progress, if any.
    pub fn current_run(&self) -> Option<String> {
        self.lock().route.as_ref().map(|r| r.run_id.clone())
    }

    pub fn touch(&self, agent_id: &str) {
        if let Some(a) = self.lock().agents.get_mut(agent_id) {
            a.last_seen = SystemTime::now();
        }
    }

    /// Forwards a run message if it belongs to the run in progress; stale
    /// messages of an earlier run are dropped.
    pub fn deliver(&self, run_id: &str, event: AgentEvent) {
        let s = self.lock();
        s.forward_to_run(run_id, event);
    }

    pub fn agents(&self) -> Vec<AgentEntry> {
        self.lock().agents.values().cloned().collect()
    }

    pub fn agent(&self, id: &str) -> Option<AgentEntry> {
        self.lock().agents.get(id).cloned()
    }

    /// Claims the fleet for one run; `None` while another run holds it.
    pub fn begin_run(&self, run_id: &str) -> Option<mpsc::UnboundedReceiver<AgentEvent>> {
        let mut s = self.lock();
        if s.route.is_some() {
            return None;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        s.route = Some(RunRoute { run_id: run_id.to_string(), events: tx, agents: Default::default() });
        Some(rx)
    }

    /// Records which agents the run in progress picked, for `stampede agents`.
    pub fn set_run_agents(&self, ids: impl IntoIterator<Item = String>) {
        if let Some(route) = self.lock().route.as_mut() {
            route.agents = ids.into_iter().collect();
        }
    }

    /// Whether this agent takes part in the run in progress.
    pub fn in_run(&self, agent_id: &str) -> bool {
        self.lock().route.as_ref().is_some_and(|r| r.agents.contains(agent_id))
    }

    pub fn end_run(&self) {
        self.lock().route = None;
    }

    pub fn is_busy(&self) -> bool {
        self.lock().route.is_some()
    }

    /// Resolves when the set of agents may have changed.
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}
