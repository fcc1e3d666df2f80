//! One run from start to verdict: claim the fleet, wait for the agents, split
//! the load, send every agent its share with a common start instant, merge
//! what comes back, and build the report.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use stampede_common::plan::{AgentSelector, Model, Plan};
use stampede_proto::convert::unix_nanos;
use stampede_proto::limits::{self, Refusal, RunBounds, RunTiming};
use stampede_proto::v1::coordinator_message::Msg as Down;
use stampede_proto::v1::{Abort, Assignment, CoordinatorMessage};

use crate::aggregate::Aggregate;
use crate::fleet::{AgentEntry, AgentEvent, Fleet};
use crate::report::{self, Report, RunFacts};
use crate::signals::Interrupt;
use crate::split::split_by_capacity;

/// How far in the future the common start instant is set: time for every
/// agent to receive its assignment and spin up its workers.
const START_LEAD: Duration = Duration::from_secs(1);
/// After the planned end, how long to wait for agents' last snapshots beyond
/// one request timeout.
const END_GRACE: Duration = Duration::from_secs(10);
/// After an abort, how long agents get to send what they measured.
const ABORT_GRACE: Duration = Duration::from_secs(3);
/// Beyond an agent's lease, how long to wait for it: its lease counts from
/// the last word it heard (up to one 3 s silence after ours), and its
/// reconnect may be one 3 s connect attempt late.
const LEASE_GRACE: Duration = Duration::from_secs(6);
/// How long a run waits for fresh agents' first clock samples.
const CLOCK_WAIT: Duration = Duration::from_millis(500);

pub struct RunRequest {
    pub plan: Plan,
    /// Agents to run on; 0 means every agent connected (at least one).
    pub expect_agents: usize,
    /// How long to wait for them.
    pub wait: Duration,
    /// Print the faults' exact commands per agent; generate no load, touch nothing.
    pub dry_run: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("another run is in progress on this coordinator; try again when it ends")]
    Busy,
    #[error("waited {waited:?} for {expected} agent(s){selector} but {connected} connected{}", describe_matching(matching, *others))]
    NotEnoughAgents { expected: usize, connected: usize, waited: Duration, selector: String, matching: Vec<String>, others: usize },
    #[error("agent {agent} could not run the plan: {error}")]
    AgentFailed { agent: String, error: String },
    #[error("could not send the assignment to agent {0}: its session closed")]
    Send(String),
    #[error("preflight refused the plan: {0}")]
    Preflight(#[from] crate::faults::PreflightError),
    #[error("preflight refused the plan: {0}")]
    LoadBound(#[from] crate::load_bounds::LoadBoundError),
}

fn describe_matching(matching: &[String], all: usize) -> String {
    let mut s = String::new();
    if !matching.is_empty() {
        s.push_str(&format!(" ({})", matching.join(", ")));
    }
    if all > matching.len() {
        s.push_str(&format!("; {} other agent(s) do not match", all - matching.len()));
    }
    s
}

/// Claims the fleet for one run and gives it back on every path.
struct RunClaim<'a>(&'a Fleet);

impl Drop for RunClaim<'_> {
    fn drop(&mut self) {
        self.0.end_run();
    }
}

/// Runs `req` on the fleet. `progress` receives live lines; `abort` stops
/// the run early (the report then says it is incomplete: `interrupted`, with
/// the abort's reason).
pub async fn execute(fleet: &Fleet, req: RunRequest, abort: &Interrupt, progress: &(dyn Fn(String) + Send + Sync)) -> Result<Report, RunError> {
    let run_id = uuid::Uuid::new_v4().to_string();
    let mut events = fleet.begin_run(&run_id).ok_or(RunError::Busy)?;
    let _claim = RunClaim(fleet);
    let plan = Arc::new(req.plan);

    // The CLI's number wins over the plan's, so one plan serves fleets of any size.
    let expect = if req.expect_agents > 0 { req.expect_agents } else { plan.agents.count.unwrap_or(0) as usize };
    let agents = wait_for_agents(fleet, &plan.agents, expect, req.wait, abort).await?;
    let agents = with_clock_estimates(fleet, agents).await;
    fleet.set_run_agents(agents.iter().map(|a| a.id.clone()));
    progress(format!("run {run_id}: {} agent(s): {}", agents.len(), agents.iter().map(|a| a.id.as_str()).collect::<Vec<_>>().join(", ")));

    let faults_per_agent = crate::faults::assign(&plan, &agents)?;
    let capacities: Vec<u32> = agents.iter().map(|a| a.capacity).collect();
    // In u64: two agents declaring `--capacity 3000000000` would wrap a u32.
    let total_capacity: u64 = capacities.iter().map(|&c| u64::from(c)).sum();
    let per_phase: Vec<Vec<u32>> =
        plan.phases.iter().map(|p| split_by_capacity(if p.load.model == Model::Closed { p.load.concurrency.unwrap_or(0) } else { 0 }, &capacities)).collect();
    let rate_shares: Vec<f64> = capacities.iter().map(|&c| f64::from(c) / total_capacity as f64).collect();
    crate::load_bounds::check(&plan, &agents, &per_phase)?;
    let plan_json = serde_json::to_string(&*plan).expect("plans serialize");
    let start = SystemTime::now() + START_LEAD;
    let start_nanos = unix_nanos(start);

    for (i, a) in agents.iter().enumerate() {
        let assignment = Assignment {
            run_id: run_id.clone(),
            plan_json: plan_json.clone(),
            rate_share: rate_shares[i],
            concurrency: per_phase.iter().map(|p| p[i]).collect(),
            start_unix_nanos: start_nanos,
            clock_offset_nanos: a.clock_offset_nanos,
            agent_index: i as u32,
            agent_count: agents.len() as u32,
            faults: faults_per_agent[i].clone(),
            dry_run: req.dry_run,
        };
        let msg = CoordinatorMessage { msg: Some(Down::Assignment(assignment)) };
        a.tx.send(Ok(msg)).await.map_err(|_| RunError::Send(a.id.clone()))?;
    }

    let bounds = RunBounds::new(
        &run_id,
        plan.phases.len(),
        plan.steps.len(),
        plan.faults.iter().map(|f| f.name.clone()).collect(),
        RunTiming { duration: plan.duration(), interval: plan.interval.as_duration(), timeout: plan.timeout.as_duration() },
        start_nanos,
    )
    .with_checks(plan.check_names().len());
    let mut agg = Aggregate::new(agents.iter().map(|a| (a.id.clone(), a.labels.clone())));
    let mut first_requests = BTreeMap::new();
    let mut fault_log = crate::faults::FaultLog::default();
    let mut extra_incomplete = Vec::new();
    let planned_end = Instant::now() + START_LEAD + plan.duration() + plan.timeout.as_duration() + END_GRACE;
    let mut deadline = tokio::time::Instant::from_std(planned_end);
    let mut aborted = false;
    // Agents whose session broke: when their lease runs out, and why.
    let mut away: BTreeMap<String, (tokio::time::Instant, String)> = BTreeMap::new();

    while !agg.all_done() {
        tokio::select! {
            event = events.recv() => match event.map(|e| checked(e, &bounds, &agents)) {
                Some(Err((agent_id, refusal))) => refuse(fleet, &mut agg, &run_id, &agent_id, refusal.0, progress).await,
                Some(Ok(AgentEvent::Refused { agent_id, reason })) => refuse(fleet, &mut agg, &run_id, &agent_id, reason, progress).await,
                Some(Ok(AgentEvent::Snapshot(s))) => match agg.add_snapshot(&s) {
                    Ok(Some(seq)) => progress(progress_line(&plan, &agg, seq)),
                    Ok(None) => {}
                    Err(e) => refuse(fleet, &mut agg, &run_id, &s.agent_id, e.to_string(), progress).await,
                },
                Some(Ok(AgentEvent::Finished(f))) => {
                    if f.not_started && agg.agents.get(&f.agent_id).is_some_and(|p| !p.done()) {
                        // The agent could not even start: the run is broken
                        // for everyone, not just short of data.
                        abort_all(fleet, &agents, &run_id, "another agent could not start").await;
                        return Err(RunError::AgentFailed { agent: f.agent_id, error: f.error });
                    }
                    if f.first_request_unix_nanos > 0 {
                        first_requests.insert(f.agent_id.clone(), f.first_request_unix_nanos.saturating_sub(clock_offset(&agents, &f.agent_id)));
                    }
                    agg.finished(f);
                }
                Some(Ok(AgentEvent::Fault(mut ev))) => {
                    // The agent stamps its fault times by its own clock; the
                    // report puts them on the run's (the coordinator's) clock.
                    let offset = clock_offset(&agents, &ev.agent_id);
                    for t in [&mut ev.scheduled_unix_nanos, &mut ev.applied_unix_nanos, &mut ev.reverted_unix_nanos] {
                        if *t != 0 {
                            *t = t.saturating_sub(offset);
                        }
                    }
                    progress(format!("fault {} on {}: {}{}", ev.fault, ev.agent_id, ev.status, if ev.error.is_empty() { String::new() } else { format!(" ({})", ev.error) }));
                    fault_log.record(ev);
                }
                Some(Ok(AgentEvent::Lost { agent_id, reason, last_seen })) => {
                    let Some(a) = agents.iter().find(|a| a.id == agent_id).filter(|_| agg.agents.get(&agent_id).is_some_and(|p| !p.done())) else { continue };
                    // The agent keeps its share going for its lease and
                    // reconnects; it is lost only if it is not back by then.
                    // Its lease counts from the last word it heard, which
                    // can be up to one silence later than ours, and a
                    // reconnect may take one connect attempt more.
                    let left = (a.lease + LEASE_GRACE).saturating_sub(last_seen.elapsed().unwrap_or_default());
                    progress(format!("agent {agent_id} lost its session ({reason}); waiting up to {left:.1?} for it to come back"));
                    away.insert(agent_id, (tokio::time::Instant::now() + left, reason));
                }
                Some(Ok(AgentEvent::Returned { agent_id, active_run_id, session, instance })) => {
                    // Only a session opened after the assignment is a return;
                    // earlier ones are the registrations the run started with.
                    let Some(assigned) = agents.iter().find(|a| a.id == agent_id).filter(|a| session > a.session) else { continue };
                    let Some(progress_of) = agg.agents.get(&agent_id) else { continue };
                    if progress_of.finished.is_some() {
                        continue;
                    }
                    if progress_of.lost.is_some() {
                        // Back after we gave up on it: it must not go on
                        // loading a target for a run nobody counts.
                        if active_run_id == run_id {
                            abort_agent(fleet, &agent_id, &run_id, "the coordinator counted this agent as lost").await;
                        }
                        continue;
                    }
                    away.remove(&agent_id);
                    if instance == assigned.instance {
                        // The same process: still running the share, or
                        // finished while away; either way it resends.
                        progress(format!("agent {agent_id} is back; it resends what we have not acknowledged"));
                    } else {
                        // Restarted: whatever it measured of this run died with it.
                        agg.lost(&agent_id, format!("{agent_id} came back as a new process (it restarted); its share was not completed"));
                    }
                }
                Some(Ok(AgentEvent::Recovered { agent_id, node, fault, clock_offset_nanos })) => {
                    // From the network: only a fault of this run may be marked.
                    if fault.run_id != run_id || !bounds.faults.contains(&fault.fault) {
                        tracing::warn!(message = "Start-up recovery report ignored: no such fault in this run.", agent = %agent_id, fault = %fault.fault.escape_debug());
                        continue;
                    }
                    let on_node: Vec<String> = agents.iter().filter(|a| a.node == node).map(|a| a.id.clone()).collect();
                    let outcome = if fault.error.is_empty() { "reverted at start-up".to_string() } else { format!("start-up revert FAILED ({})", fault.error) };
                    progress(format!("fault {} on node {node}: {outcome} by agent {agent_id}'s journal recovery (the process that applied it died)", fault.fault));
                    fault_log.recovered(&on_node, &agent_id, &fault, fault.reverted_unix_nanos.saturating_sub(clock_offset_nanos));
                }
                None => break,
            },
            _ = sleep_until_first(&away), if !away.is_empty() => {
                let now = tokio::time::Instant::now();
                let expired: Vec<String> = away.iter().filter(|(_, (at, _))| *at <= now).map(|(id, _)| id.clone()).collect();
                for id in expired {
                    if let Some((_, reason)) = away.remove(&id) {
                        let lease = agents.iter().find(|a| a.id == id).map(|a| a.lease).unwrap_or_default();
                        progress(format!("agent {id} did not come back within its lease ({lease:?}): its share is incomplete"));
                        agg.lost(&id, format!("lost its session ({reason}) and did not come back within its lease ({lease:?})"));
                    }
                }
            }
            _ = abort.triggered(), if !aborted => {
                aborted = true;
                progress(format!("interrupted ({}): stopping every agent and reverting its faults", abort.reason()));
                extra_incomplete.push(format!("interrupted: {}; the run was stopped before its end", abort.reason()));
                abort_all(fleet, &agents, &run_id, &format!("interrupted: {}", abort.reason())).await;
                deadline = tokio::time::Instant::now() + ABORT_GRACE;
            }
            // An agent away on its lease may come back after the planned end.
            _ = tokio::time::sleep_until(away.values().map(|(at, _)| *at).max().map_or(deadline, |at| at.max(deadline))) => {
                for (id, a) in agg.agents.iter_mut().filter(|(_, a)| !a.done()) {
                    a.lost = Some(format!("no final snapshot from {id} by the run's deadline"));
                }
                break;
            }
        }
    }
    // Whoever has not finished (lost, or past the deadline) is told to stop
    // and revert, in case it is still at it.
    for (id, p) in &agg.agents {
        if p.finished.is_none() {
            abort_agent(fleet, id, &run_id, "the run is over for this agent").await;
        }
    }
    agg.seal();
    let duration_s = SystemTime::now().duration_since(start).map(|d| d.as_secs_f64()).unwrap_or(0.0).min(plan.duration().as_secs_f64() + 60.0);
    Ok(report::build(RunFacts {
        run_id: &run_id,
        plan: &plan,
        started_at: start,
        start_unix_nanos: start_nanos,
        duration_s,
        aggregate: &agg,
        first_requests: &first_requests,
        extra_incomplete,
        faults: &fault_log,
        dry_run: req.dry_run,
    }))
}

/// Checks a run message's numbers against the run before it costs
/// anything; a refusal names the agent that sent it.
fn checked(event: AgentEvent, bounds: &RunBounds, agents: &[AgentEntry]) -> Result<AgentEvent, (String, Refusal)> {
    let now = unix_nanos(SystemTime::now());
    let (agent_id, result) = match &event {
        AgentEvent::Snapshot(s) => (&s.agent_id, limits::check_snapshot(s, bounds, clock_offset(agents, &s.agent_id), now)),
        AgentEvent::Finished(f) => (&f.agent_id, limits::check_finished(f, bounds, clock_offset(agents, &f.agent_id), now)),
        AgentEvent::Fault(ev) => (&ev.agent_id, limits::check_fault(ev, bounds, clock_offset(agents, &ev.agent_id), now)),
        _ => return Ok(event),
    };
    match result {
        Ok(()) => Ok(event),
        Err(refusal) => Err((agent_id.clone(), refusal)),
    }
}

/// An agent of the run sent something out of bounds: nothing more of it is
/// counted, the run is incomplete and says why, and the agent is dropped —
/// told to stop its share and revert its faults, and its session closed
/// with the reason (a misbehaving agent must not keep loading a target for
/// a run that no longer counts it).
async fn refuse(fleet: &Fleet, agg: &mut Aggregate, run_id: &str, agent_id: &str, reason: String, progress: &(dyn Fn(String) + Send + Sync)) {
    if agg.agents.get(agent_id).is_none_or(|a| a.refused) {
        return;
    }
    tracing::warn!(message = "Agent refused: it sent data out of bounds; its share is dropped and its session closed.", agent = %agent_id, run = %run_id, %reason);
    progress(format!("agent {agent_id} refused: it sent {reason}; its data is incomplete and its session is closed"));
    agg.refuse(agent_id, format!("it sent {reason}"));
    abort_agent(fleet, agent_id, run_id, &format!("the coordinator refused this agent's data: it sent {reason}")).await;
    fleet.cut(agent_id, &format!("the coordinator refused this agent's data for run {run_id}: it sent {reason}"));
}

/// `agent_id`'s clock minus the coordinator's (0 if unknown): subtracted
/// from a time the agent stamped, it gives the coordinator's time.
fn clock_offset(agents: &[AgentEntry], agent_id: &str) -> i64 {
    agents.iter().find(|a| a.id == agent_id).map_or(0, |a| a.clock_offset_nanos)
}

/// Tells every agent of the run to stop, on its current session (an agent
/// may have reconnected since the run began).
async fn abort_all(fleet: &Fleet, agents: &[AgentEntry], run_id: &str, reason: &str) {
    for a in agents {
        abort_agent(fleet, &a.id, run_id, reason).await;
    }
}

async fn abort_agent(fleet: &Fleet, agent_id: &str, run_id: &str, reason: &str) {
    let Some(current) = fleet.agent(agent_id) else { return };
    let msg = CoordinatorMessage { msg: Some(Down::Abort(Abort { run_id: run_id.to_string(), reason: reason.to_string() })) };
    // Bounded: a stalled session must not hold the run's end.
    let _ = tokio::time::timeout(Duration::from_secs(1), current.tx.send(Ok(msg))).await;
}

async fn sleep_until_first(away: &BTreeMap<String, (tokio::time::Instant, String)>) {
    match away.values().map(|(at, _)| *at).min() {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Waits until enough agents are connected; picks them in id order so the
/// split is reproducible.
async fn wait_for_agents(fleet: &Fleet, selector: &AgentSelector, expect: usize, wait: Duration, abort: &Interrupt) -> Result<Vec<AgentEntry>, RunError> {
    let deadline = tokio::time::Instant::now() + wait;
    let want = expect.max(1);
    let matching = || fleet.agents().into_iter().filter(|a| selector.matches(&a.labels)).collect::<Vec<_>>();
    let too_few = || {
        let all = fleet.agents();
        let m: Vec<String> = all.iter().filter(|a| selector.matches(&a.labels)).map(|a| a.id.clone()).collect();
        RunError::NotEnoughAgents { expected: want, connected: m.len(), waited: wait, selector: selector_text(selector), matching: m, others: all.len() }
    };
    loop {
        let changed = fleet.changed();
        let agents = matching();
        if agents.len() >= want {
            let take = if expect == 0 { agents.len() } else { expect };
            return Ok(agents.into_iter().take(take).collect());
        }
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = tokio::time::sleep_until(deadline) => return Err(too_few()),
            _ = abort.triggered() => return Err(too_few()),
        }
    }
}

/// Gives agents that just registered a moment to answer their first clock
/// probes, so the start instant uses a measured offset, not the one-way guess.
async fn with_clock_estimates(fleet: &Fleet, agents: Vec<AgentEntry>) -> Vec<AgentEntry> {
    let deadline = Instant::now() + CLOCK_WAIT;
    loop {
        let fresh: Vec<AgentEntry> = agents.iter().map(|a| fleet.agent(&a.id).unwrap_or_else(|| a.clone())).collect();
        if fresh.iter().all(|a| a.clock_rtt_nanos < i64::MAX) || Instant::now() >= deadline {
            return fresh;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn selector_text(selector: &AgentSelector) -> String {
    if selector.labels.is_empty() {
        return String::new();
    }
    let parts: Vec<_> = selector.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(" matching {{{}}}", parts.join(", "))
}

fn progress_line(plan: &Plan, agg: &Aggregate, seq: u64) -> String {
    let Some(iv) = agg.timeline.get(&seq) else { return String::new() };
    let secs = plan.interval.as_duration().as_secs_f64();
    // Interval k starts k intervals after the common start, in every agent's clock.
    let t = seq as f64 * secs;
    let offsets = plan.phase_offsets();
    let phase = offsets.iter().rposition(|o| o.as_secs_f64() <= t).map_or("-", |i| plan.phases[i].name.as_str());
    let err = if iv.requests == 0 { 0.0 } else { iv.errors as f64 / iv.requests as f64 * 100.0 };
    let p99 = iv.p99_ms.map_or("-".to_string(), |v| format!("{v:.1}ms"));
    format!(
        "[{:>5.1}s] {:<10} {:>8.0} req/s  err {:>5.2}%  p99 {:>9}  total {:>9}  agents {}/{}",
        t + secs,
        phase,
        iv.requests as f64 / secs,
        err,
        p99,
        agg.total.steps.values().map(|r| r.requests).sum::<u64>(),
        iv.reported,
        agg.agents.len()
    )
}
