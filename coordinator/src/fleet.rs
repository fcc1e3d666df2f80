//! The agents connected to this coordinator, and the route that carries their
//! run messages to the run in progress. Session handlers only insert, remove
//! and forward; the orchestrator owns everything about a run.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use stampede_proto::v1::{Capability, CoordinatorMessage, FaultEvent, RunFinished, Snapshot};
use tokio::sync::{mpsc, Notify};
use tonic::Status;

/// What an agent's session delivers to the run in progress.
#[derive(Debug)]
pub enum AgentEvent {
    Snapshot(Snapshot),
    Finished(RunFinished),
    Fault(FaultEvent),
    /// The agent's session ended (crash, network loss, shutdown).
    Lost { agent_id: String, reason: String },
}

#[derive(Debug, Clone)]
pub struct AgentEntry {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub capacity: u32,
    pub workers: u32,
    pub capabilities: Vec<Capability>,
    /// Estimated (agent clock − coordinator clock), nanoseconds.
    pub clock_offset_nanos: i64,
    /// Round trip of the sample the offset came from; `i64::MAX` until the
    /// first probe returns (the offset is then the registration's one-way guess).
    pub clock_rtt_nanos: i64,
    pub clock_sampled_at: SystemTime,
    pub last_seen: SystemTime,
    pub version: String,
    /// The host the agent runs on; faults apply once per node.
    pub node: String,
    /// Messages to the agent go here; the session streams them out.
    pub tx: mpsc::Sender<Result<CoordinatorMessage, Status>>,
    /// Distinguishes this session from an earlier one of the same agent id.
    pub session: u64,
}

struct RunRoute {
    run_id: String,
    events: mpsc::UnboundedSender<AgentEvent>,
}

#[derive(Default)]
struct State {
    agents: BTreeMap<String, AgentEntry>,
    route: Option<RunRoute>,
    next_session: u64,
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

    /// Adds (or replaces, after a reconnect) an agent; returns its session number.
    pub fn register(&self, mut entry: AgentEntry) -> u64 {
        let mut s = self.lock();
        s.next_session += 1;
        entry.session = s.next_session;
        let session = entry.session;
        if s.agents.insert(entry.id.clone(), entry).is_some() {
            tracing::warn!("An agent re-registered with an id already connected; the newer session wins.");
        }
        drop(s);
        self.changed.notify_waiters();
        session
    }

    /// Removes the agent if `session` is still its current one, and tells the run.
    pub fn unregister(&self, agent_id: &str, session: u64, reason: String) {
        let mut s = self.lock();
        if s.agents.get(agent_id).is_some_and(|a| a.session == session) {
            s.agents.remove(agent_id);
            if let Some(route) = &s.route {
                let _ = route.events.send(AgentEvent::Lost { agent_id: agent_id.to_string(), reason });
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
            let stale = a.clock_sampled_at.elapsed().map_or(true, |e| e > std::time::Duration::from_secs(60));
            if rtt_nanos < a.clock_rtt_nanos || stale {
                a.clock_offset_nanos = offset_nanos;
                a.clock_rtt_nanos = rtt_nanos;
                a.clock_sampled_at = SystemTime::now();
            }
        }
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
        if let Some(route) = s.route.as_ref().filter(|r| r.run_id == run_id) {
            let _ = route.events.send(event);
        }
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
        s.route = Some(RunRoute { run_id: run_id.to_string(), events: tx });
        Some(rx)
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
