//! One run in progress, as an owned state machine: what the run knows (its
//! agents, the merged numbers, the fault log, who is away and until when,
//! the deadline, why it stopped) and one method per event that changes it.
//! `orchestrate.rs` sets the run up and drives it: its loop only waits for
//! the next event and hands it to the method here.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use stampede_common::plan::{Plan, UnlessUnhealthy};
use stampede_proto::convert::unix_nanos;
use stampede_proto::limits::{self, Refusal, RunBounds};
use stampede_proto::v1::coordinator_message::Msg as Down;
use stampede_proto::v1::{Abort, CoordinatorMessage, FaultEvent, FaultStatus, RecoveredFault, RunFinished, Snapshot};

use crate::aggregate::Aggregate;
use crate::faults::FaultLog;
use crate::fleet::{AgentEntry, AgentEvent, Fleet};
use crate::guardrail::{Guardrails, Trip};
use crate::orchestrate::RunError;
use crate::report::{self, Report, RunFacts};
use crate::verdict::Stop;

/// After the planned end, how long to wait for agents' last snapshots beyond
/// one request timeout.
const END_GRACE: Duration = Duration::from_secs(10);
/// After a stop, how long agents get to send what they measured.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Beyond an agent's lease, how long to wait for it: its lease counts from
/// the last word it heard (up to one 3 s silence after ours), and its
/// reconnect may be one 3 s connect attempt late.
const LEASE_GRACE: Duration = Duration::from_secs(6);

pub type Progress<'a> = &'a (dyn Fn(String) + Send + Sync);

/// Everything one run needs once the assignments are out.
pub struct Run<'a> {
    fleet: &'a Fleet,
    progress: Progress<'a>,
    pub run_id: String,
    pub plan: Arc<Plan>,
    /// The agents as assigned (their session then, clock offset, lease).
    pub agents: Vec<AgentEntry>,
    bounds: RunBounds,
    pub start: SystemTime,
    pub start_nanos: i64,
    pub agg: Aggregate,
    /// First request per agent, unix nanoseconds in the coordinator's clock.
    pub first_requests: BTreeMap<String, i64>,
    pub fault_log: FaultLog,
    /// Agents whose session broke: when their lease runs out, and why.
    pub away: BTreeMap<String, (tokio::time::Instant, String)>,
    /// When the run stops waiting for final snapshots.
    pub deadline: tokio::time::Instant,
    /// Why the run was stopped before its end, if it was.
    pub stop: Option<Stop>,
    /// Why the plan's steady state did not hold after the run, if it did not.
    pub steady_after: Option<String>,
    /// The plan's `abort_when` rules, judged as intervals complete.
    guardrails: Guardrails,
    dry_run: bool,
}

/// What the loop does after an event.
pub enum Next {
    Continue,
    /// The event ended the run early with an error (no report).
    Fail(RunError),
}

pub struct RunSetup<'a> {
    pub fleet: &'a Fleet,
    pub progress: Progress<'a>,
    pub run_id: String,
    pub plan: Arc<Plan>,
    pub agents: Vec<AgentEntry>,
    pub bounds: RunBounds,
    pub start: SystemTime,
    /// The common start, as `Instant` (`start` in the monotonic clock).
    pub start_instant: Instant,
    pub dry_run: bool,
}

impl<'a> Run<'a> {
    pub fn new(s: RunSetup<'a>) -> Self {
        let mut agg = Aggregate::new(s.agents.iter().map(|a| (a.id.clone(), a.labels.clone())), s.plan.interval.as_duration(), s.plan.longest_request());
        let guardrails = Guardrails::new(&s.plan);
        agg.probe_phase = s.plan.probe_phase();
        let planned_end = s.start_instant + s.plan.measured_duration() + s.plan.longest_request() + END_GRACE;
        Run {
            fleet: s.fleet,
            progress: s.progress,
            run_id: s.run_id,
            start_nanos: unix_nanos(s.start),
            start: s.start,
            plan: s.plan,
            agents: s.agents,
            bounds: s.bounds,
            agg,
            first_requests: BTreeMap::new(),
            fault_log: FaultLog::default(),
            away: BTreeMap::new(),
            deadline: tokio::time::Instant::from_std(planned_end),
            stop: None,
            steady_after: None,
            guardrails,
            dry_run: s.dry_run,
        }
    }

    /// Whether every agent has finished or dropped out.
    pub fn over(&self) -> bool {
        self.agg.all_done()
    }

    /// Every agent finished its share (none lost or still running).
    pub fn all_finished(&self) -> bool {
        self.agg.agents.values().all(|a| a.finished.is_some())
    }

    /// When the run gives up waiting: its deadline, or later if an agent
    /// away on its lease may still come back after it.
    pub fn wake_at(&self) -> tokio::time::Instant {
        self.away.values().map(|(at, _)| *at).max().map_or(self.deadline, |at| at.max(self.deadline))
    }

    /// The first lease of an away agent to run out, if any.
    pub fn first_away(&self) -> Option<tokio::time::Instant> {
        self.away.values().map(|(at, _)| *at).min()
    }

    /// One message or session event from the fleet.
    pub async fn on_event(&mut self, event: AgentEvent) -> Next {
        match self.checked(event) {
            Err((agent_id, refusal)) => self.refuse(&agent_id, refusal.0).await,
            Ok(AgentEvent::Refused { agent_id, reason }) => self.refuse(&agent_id, reason).await,
            Ok(AgentEvent::Snapshot(s)) => self.on_snapshot(s).await,
            Ok(AgentEvent::Finished(f)) => return self.on_finished(f).await,
            Ok(AgentEvent::Fault(ev)) => {
                let abort = self.unhealthy_abort(&ev);
                self.on_fault(ev);
                if let Some(rule) = abort {
                    (self.progress)(format!("aborting: {rule}; stopping every agent and reverting its faults"));
                    self.stop(Stop::Aborted { rule }).await;
                }
            }
            // A steady-state answer comes only while no run loop is
            // waiting for it (`steady.rs`): a late one is of no use.
            Ok(AgentEvent::SteadyState { .. }) => {}
            Ok(AgentEvent::Lost { agent_id, reason, last_seen }) => self.on_lost(agent_id, reason, last_seen),
            Ok(AgentEvent::Returned { agent_id, active_run_id, session, instance }) => self.on_returned(agent_id, active_run_id, session, instance).await,
            Ok(AgentEvent::Recovered { agent_id, node, fault, clock_offset_nanos }) => self.on_recovered(agent_id, node, fault, clock_offset_nanos),
        }
        Next::Continue
    }

    /// Checks a run message's numbers against the run before it costs
    /// anything; a refusal names the agent that sent it.
    fn checked(&self, event: AgentEvent) -> Result<AgentEvent, (String, Refusal)> {
        let now = unix_nanos(SystemTime::now());
        let (agent_id, result) = match &event {
            AgentEvent::Snapshot(s) => (&s.agent_id, limits::check_snapshot(s, &self.bounds, self.clock_offset(&s.agent_id), now)),
            AgentEvent::Finished(f) => (&f.agent_id, limits::check_finished(f, &self.bounds, self.clock_offset(&f.agent_id), now)),
            AgentEvent::Fault(ev) => (&ev.agent_id, limits::check_fault(ev, &self.bounds, self.clock_offset(&ev.agent_id), now)),
            _ => return Ok(event),
        };
        match result {
            Ok(()) => Ok(event),
            Err(refusal) => Err((agent_id.clone(), refusal)),
        }
    }

    pub async fn on_snapshot(&mut self, s: Snapshot) {
        // Only what the aggregate counts reaches the guardrails: not a
        // duplicate, nor anything of a refused agent.
        let counted = self.agg.agents.get(&s.agent_id).is_some_and(|a| !a.refused && !a.seqs.contains(&s.seq));
        match self.agg.add_snapshot(&s) {
            Ok(Some(seq)) => (self.progress)(progress_line(&self.plan, &self.agg, seq)),
            Ok(None) => {}
            Err(e) => return self.refuse(&s.agent_id, e.to_string()).await,
        }
        if counted && self.stop.is_none() {
            let trip = self.guardrails.on_snapshot(&self.plan, &s, &self.agg);
            self.on_trip(trip).await;
        }
    }

    /// A guardrail tripped: the run stops, `aborted by` its rule.
    async fn on_trip(&mut self, trip: Option<Trip>) {
        let Some(trip) = trip.filter(|_| self.stop.is_none()) else {
            return;
        };
        tracing::warn!(message = "Abort guardrail tripped; stopping the run.", run = %self.run_id, rule = %trip.rule, observed = trip.observed, last_interval = trip.last_seq);
        (self.progress)(trip.describe());
        self.stop(Stop::Aborted { rule: trip.rule }).await;
    }

    pub async fn on_finished(&mut self, f: RunFinished) -> Next {
        if f.not_started && self.agg.agents.get(&f.agent_id).is_some_and(|p| !p.done()) {
            // The agent could not even start: the run is broken for
            // everyone, not just short of data.
            self.abort_all("another agent could not start").await;
            return Next::Fail(RunError::AgentFailed { agent: f.agent_id, error: f.error });
        }
        if f.first_request_unix_nanos > 0 {
            self.first_requests.insert(f.agent_id.clone(), f.first_request_unix_nanos.saturating_sub(self.clock_offset(&f.agent_id)));
        }
        self.agg.finished(f);
        // Intervals that waited only for this agent can be judged now.
        let trip = self.guardrails.judge_complete(&self.plan, &self.agg);
        self.on_trip(trip).await;
        Next::Continue
    }

    pub fn on_fault(&mut self, mut ev: FaultEvent) {
        // The agent stamps its fault times by its own clock; the report puts
        // them on the run's (the coordinator's) clock.
        let offset = self.clock_offset(&ev.agent_id);
        for t in [&mut ev.scheduled_unix_nanos, &mut ev.applied_unix_nanos, &mut ev.reverted_unix_nanos] {
            if *t != 0 {
                *t = t.saturating_sub(offset);
            }
        }
        let status = match ev.fault_status() {
            // Announced twice: at its start and at its end.
            FaultStatus::Simulated if ev.reverted_unix_nanos == 0 => "simulated: its window starts now; nothing was injected",
            FaultStatus::Simulated => "simulated: its window ended; nothing was injected",
            s => s.name(),
        };
        (self.progress)(format!("fault {} on {}: {status}{}", ev.fault, ev.agent_id, if ev.error.is_empty() { String::new() } else { format!(" ({})", ev.error) }));
        self.fault_log.record(ev);
    }

    /// A fault skipped by its `unless_unhealthy: abort` stops the run: the
    /// rule that tripped, in the words of the verdict's reason.
    fn unhealthy_abort(&self, ev: &FaultEvent) -> Option<String> {
        let fault = self.plan.faults.iter().find(|f| f.name == ev.fault)?;
        (ev.fault_status() == FaultStatus::Skipped && fault.unless_unhealthy == Some(UnlessUnhealthy::Abort))
            .then(|| format!("unless_unhealthy of fault {}: the steady state did not hold before it ({})", ev.fault, steady_reason(&ev.error)))
    }

    pub fn on_lost(&mut self, agent_id: String, reason: String, last_seen: SystemTime) {
        let Some(a) = self.agents.iter().find(|a| a.id == agent_id).filter(|_| self.agg.agents.get(&agent_id).is_some_and(|p| !p.done())) else {
            return;
        };
        // The agent keeps its share going for its lease and reconnects; it
        // is lost only if it is not back by then. Its lease counts from the
        // last word it heard, which can be up to one silence later than
        // ours, and a reconnect may take one connect attempt more.
        let left = (a.lease + LEASE_GRACE).saturating_sub(last_seen.elapsed().unwrap_or_default());
        (self.progress)(format!("agent {agent_id} lost its session ({reason}); waiting up to {left:.1?} for it to come back"));
        self.away.insert(agent_id, (tokio::time::Instant::now() + left, reason));
    }

    pub async fn on_returned(&mut self, agent_id: String, active_run_id: String, session: u64, instance: u64) {
        // Only a session opened after the assignment is a return; earlier
        // ones are the registrations the run started with.
        let Some(assigned) = self.agents.iter().find(|a| a.id == agent_id).filter(|a| session > a.session) else {
            return;
        };
        let assigned_instance = assigned.instance;
        let Some(progress_of) = self.agg.agents.get(&agent_id) else {
            return;
        };
        if progress_of.finished.is_some() {
            return;
        }
        if progress_of.lost.is_some() {
            // Back after we gave up on it: it must not go on loading a
            // target for a run nobody counts.
            if active_run_id == self.run_id {
                abort_agent(self.fleet, &agent_id, &self.run_id, "the coordinator counted this agent as lost").await;
            }
            return;
        }
        self.away.remove(&agent_id);
        if instance == assigned_instance {
            // The same process: still running the share, or finished while
            // away; either way it resends.
            (self.progress)(format!("agent {agent_id} is back; it resends what we have not acknowledged"));
        } else {
            // Restarted: whatever it measured of this run died with it.
            self.agg.lost(&agent_id, format!("{agent_id} came back as a new process (it restarted); its share was not completed"));
        }
    }

    pub fn on_recovered(&mut self, agent_id: String, node: String, fault: RecoveredFault, clock_offset_nanos: i64) {
        // From the network: only a fault of this run may be marked.
        if fault.run_id != self.run_id || !self.bounds.faults.contains(&fault.fault) {
            tracing::warn!(message = "Start-up recovery report ignored: no such fault in this run.", agent = %agent_id, fault = %fault.fault.escape_debug());
            return;
        }
        let on_node: Vec<String> = self.agents.iter().filter(|a| a.node == node).map(|a| a.id.clone()).collect();
        let outcome = if fault.error.is_empty() { "reverted at start-up".to_string() } else { format!("start-up revert FAILED ({})", fault.error) };
        (self.progress)(format!("fault {} on node {node}: {outcome} by agent {agent_id}'s journal recovery (the process that applied it died)", fault.fault));
        self.fault_log.recovered(&on_node, &agent_id, &fault, fault.reverted_unix_nanos.saturating_sub(clock_offset_nanos));
    }

    /// Some away agent's lease ran out: every agent whose did is lost.
    pub fn on_away_expired(&mut self) {
        let now = tokio::time::Instant::now();
        let expired: Vec<String> = self.away.iter().filter(|(_, (at, _))| *at <= now).map(|(id, _)| id.clone()).collect();
        for id in expired {
            if let Some((_, reason)) = self.away.remove(&id) {
                let lease = self.agents.iter().find(|a| a.id == id).map(|a| a.lease).unwrap_or_default();
                (self.progress)(format!("agent {id} did not come back within its lease ({lease:?}): its share is incomplete"));
                self.agg.lost(&id, format!("lost its session ({reason}) and did not come back within its lease ({lease:?})"));
            }
        }
    }

    /// The operator (a signal, a standing coordinator's shutdown) stopped the run.
    pub async fn on_interrupt(&mut self, reason: String) {
        (self.progress)(format!("interrupted ({reason}): stopping every agent and reverting its faults"));
        self.stop(Stop::Interrupted(reason)).await;
    }

    /// Stops the run before its end: every agent is told to stop its load
    /// and revert its faults, and gets a short grace to send what it
    /// measured. The first stop is the one the verdict reports.
    pub async fn stop(&mut self, stop: Stop) {
        if self.stop.is_some() {
            return;
        }
        let why = stop.to_string();
        self.stop = Some(stop);
        self.abort_all(&why).await;
        self.deadline = tokio::time::Instant::now() + STOP_GRACE;
    }

    /// The deadline passed: whoever has not finished is lost.
    pub fn on_deadline(&mut self) {
        for (id, a) in self.agg.agents.iter_mut().filter(|(_, a)| !a.done()) {
            a.lost = Some(format!("no final snapshot from {id} by the run's deadline"));
        }
    }

    /// Ends the run: whoever has not finished (lost, or past the deadline)
    /// is told to stop and revert, in case it is still at it; then the report.
    pub async fn finish(mut self) -> Report {
        for (id, p) in &self.agg.agents {
            if p.finished.is_none() {
                abort_agent(self.fleet, id, &self.run_id, "the run is over for this agent").await;
            }
        }
        self.agg.seal();
        let plan = &self.plan;
        let fault_only: Vec<String> = self.agents.iter().filter(|a| a.capacity == 0).map(|a| a.id.clone()).collect();
        let duration_s = SystemTime::now().duration_since(self.start).map(|d| d.as_secs_f64()).unwrap_or(0.0).min(plan.measured_duration().as_secs_f64() + 60.0);
        report::build(RunFacts {
            run_id: &self.run_id,
            plan,
            started_at: self.start,
            start_unix_nanos: self.start_nanos,
            duration_s,
            aggregate: &self.agg,
            first_requests: &self.first_requests,
            stop: self.stop.as_ref(),
            steady_after: self.steady_after.as_deref(),
            faults: &self.fault_log,
            dry_run: self.dry_run,
            fault_only: &fault_only,
        })
    }

    /// An agent of the run sent something out of bounds: nothing more of it
    /// is counted, the run is incomplete and says why, and the agent is
    /// dropped — told to stop its share and revert its faults, and its
    /// session closed with the reason (a misbehaving agent must not keep
    /// loading a target for a run that no longer counts it).
    async fn refuse(&mut self, agent_id: &str, reason: String) {
        if self.agg.agents.get(agent_id).is_none_or(|a| a.refused) {
            return;
        }
        let run_id = &self.run_id;
        tracing::warn!(message = "Agent refused: it sent data out of bounds; its share is dropped and its session closed.", agent = %agent_id, run = %run_id, %reason);
        (self.progress)(format!("agent {agent_id} refused: it sent {reason}; its data is incomplete and its session is closed"));
        self.agg.refuse(agent_id, format!("it sent {reason}"));
        abort_agent(self.fleet, agent_id, run_id, &format!("the coordinator refused this agent's data: it sent {reason}")).await;
        self.fleet.cut(agent_id, &format!("the coordinator refused this agent's data for run {run_id}: it sent {reason}"));
    }

    /// `agent_id`'s clock minus the coordinator's (0 if unknown): subtracted
    /// from a time the agent stamped, it gives the coordinator's time.
    fn clock_offset(&self, agent_id: &str) -> i64 {
        self.agents.iter().find(|a| a.id == agent_id).map_or(0, |a| a.clock_offset_nanos)
    }

    /// Tells every agent of the run to stop, on its current session (an
    /// agent may have reconnected since the run began).
    async fn abort_all(&self, reason: &str) {
        for a in &self.agents {
            abort_agent(self.fleet, &a.id, &self.run_id, reason).await;
        }
    }
}

/// The probe's failure out of a skipped fault's error text (the agent
/// writes `not applied: the steady state did not hold just before it
/// (WHY); unless_unhealthy: abort`).
fn steady_reason(error: &str) -> &str {
    error.split_once("just before it (").and_then(|(_, rest)| rest.rsplit_once("); unless_unhealthy")).map_or(error, |(why, _)| why)
}

pub async fn abort_agent(fleet: &Fleet, agent_id: &str, run_id: &str, reason: &str) {
    let Some(current) = fleet.agent(agent_id) else {
        return;
    };
    let msg = CoordinatorMessage { msg: Some(Down::Abort(Abort { run_id: run_id.to_string(), reason: reason.to_string() })) };
    // Bounded: a stalled session must not hold the run's end.
    let _ = tokio::time::timeout(Duration::from_secs(1), current.tx.send(Ok(msg))).await;
}

/// What happened in snapshot interval `seq` as it happened: requests that
/// completed in it, the timeouts and errors that landed in it, and what was
/// still in flight at its end (a stalled target shows here at once, while
/// the due-interval timeline waits for the timeout to judge).
fn progress_line(plan: &Plan, agg: &Aggregate, seq: u64) -> String {
    let Some(iv) = agg.landed.get(&seq) else { return String::new() };
    let secs = plan.interval.as_duration().as_secs_f64();
    // Interval k starts k intervals after the common start, in every agent's clock.
    let t = seq as f64 * secs;
    let offsets = plan.phase_offsets();
    let phase = offsets.iter().rposition(|o| o.as_secs_f64() <= t).map_or("-", |i| plan.phases[i].name.as_str());
    let err = if iv.requests == 0 { 0.0 } else { iv.errors as f64 / iv.requests as f64 * 100.0 };
    let p99 = iv.p99_ms.map_or("-".to_string(), |v| format!("{v:.1}ms"));
    format!(
        "[{:>5.1}s] {:<10} {:>8.0} req/s  in flight {:>6}  timeouts {:>6}  err {:>5.2}%  p99 {:>9}  total {:>9}  agents {}/{}",
        t + secs,
        phase,
        iv.requests as f64 / secs,
        iv.in_flight,
        iv.timeouts,
        err,
        p99,
        agg.total.steps.iter().filter(|(k, _)| k.phase < plan.probe_phase()).map(|(_, r)| r.requests).sum::<u64>(),
        iv.reported,
        agg.agents.len()
    )
}
