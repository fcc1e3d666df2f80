//! One run from start to verdict: claim the fleet, wait for the agents, split
//! the load, send every agent its share with a common start instant, then
//! drive the run's state machine (`run.rs`) with the events that come back
//! until it ends and builds the report.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use stampede_common::plan::{AgentSelector, Model, Plan};
use stampede_proto::convert::unix_nanos;
use stampede_proto::limits::{RunBounds, RunTiming};
use stampede_proto::v1::coordinator_message::Msg as Down;
use stampede_proto::v1::{Assignment, CoordinatorMessage, DataFile};

use crate::fleet::{AgentEntry, Fleet};
use crate::report::Report;
use crate::run::{Next, Run, RunSetup};
use crate::signals::Interrupt;
use crate::split::split_by_capacity;

/// How far in the future the common start instant is set: time for every
/// agent to receive its assignment and spin up its workers.
const START_LEAD: Duration = Duration::from_secs(1);
/// How long a run waits at most for fresh agents' clock estimates.
const CLOCK_WAIT: Duration = Duration::from_millis(500);
/// A clock sample whose round trip is at most this bounds the offset's error
/// to half of it: 0.25 ms, well inside the 1 ms a first request may be off.
const CLOCK_RTT_TRUSTED: i64 = 500_000;

pub struct RunRequest {
    pub plan: Plan,
    /// Agents to run on; 0 means every agent connected (at least one).
    pub expect_agents: usize,
    /// How long to wait for them.
    pub wait: Duration,
    /// Print the faults' exact commands per agent; generate no load, touch nothing.
    pub dry_run: bool,
    /// Run the load for real, but only announce each fault at its time.
    pub simulate_faults: bool,
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
    #[error("the steady state does not hold before the run, so nothing was started: {0}")]
    SteadyState(String),
    #[error("interrupted before any load was sent, so nothing was started: {0}")]
    Interrupted(String),
    #[error("{}", no_load_agent(.0))]
    NoLoadAgent(Vec<String>),
}

fn no_load_agent(fault_only: &[String]) -> String {
    format!(
        "every agent of this run has capacity 0 ({}: fault-only agents take their node's faults but generate no load), so nothing would generate the plan's load; add an agent started with --capacity 1 or more",
        fault_only.join(", ")
    )
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
    let agents = gather_agents(fleet, &plan, req.expect_agents, req.wait, abort).await?;
    fleet.set_run_agents(agents.iter().map(|a| a.id.clone()));
    announce(&run_id, &plan, &agents, progress);

    let fault_only: Vec<String> = agents.iter().filter(|a| a.capacity == 0).map(|a| a.id.clone()).collect();
    if fault_only.len() == agents.len() && !req.dry_run {
        return Err(RunError::NoLoadAgent(fault_only));
    }
    // A dry run refuses nothing: it shows what a run would refuse, and why.
    let preflight = crate::faults::preflight(&plan, &agents);
    let faults_per_agent = if req.dry_run {
        preflight.per_agent.clone()
    } else if req.simulate_faults {
        preflight.for_simulation(&agents)?
    } else {
        preflight.for_run()?
    };
    let mut shares = Shares::new(&plan, &agents)?;
    for line in crate::split::data_summary(&plan, &shares.data) {
        progress(line);
    }
    // References only (`{ secret_env: TOKEN }`): the values go beside it, per agent.
    let plan_json = serde_json::to_string(&*plan).expect("plans serialize");
    // Chaos Toolkit's hypothesis first: no load and no fault on a target
    // that is already unwell. Asked of the probe agent (the first).
    if plan.steady_state.is_some() && !req.dry_run {
        let ask = crate::steady::Ask { fleet, agent_id: &agents[0].id, run_id: &run_id, plan: &plan, plan_json: &plan_json };
        steady_before(&ask, &mut events, abort, progress).await?;
    }
    let (start, start_instant) = (SystemTime::now() + START_LEAD, Instant::now() + START_LEAD);
    let start_nanos = unix_nanos(start);
    let dispatch = Dispatch { run_id: &run_id, plan: &plan, plan_json: &plan_json, start_nanos, faults: &faults_per_agent, dry_run: req.dry_run, simulate_faults: req.simulate_faults };
    send_assignments(&agents, &mut shares, &dispatch).await?;

    let bounds = run_bounds(&run_id, &plan, start_nanos);
    let dry_agents = req.dry_run.then(|| agents.clone());
    let mut run = Run::new(RunSetup { fleet, progress, run_id, plan, agents, bounds, start, start_instant, dry_run: req.dry_run });
    drive(&mut run, &mut events, abort).await?;
    // After the run, once every agent has finished and reverted: the same
    // hypothesis must hold again, or the drill failed (not for a run that
    // was stopped or lost agents: its verdict is already decided by that,
    // and a lost agent's faults may still be on).
    if run.plan.steady_state.is_some() && !req.dry_run && run.stop.is_none() && run.all_finished() {
        steady_after(&mut run, fleet, &plan_json, &mut events, abort, progress).await;
    }
    let mut report = run.finish().await;
    if let Some(agents) = dry_agents {
        report.dry_run = Some(crate::dryrun::DryRun::new(&report, &preflight, &agents));
    }
    Ok(report)
}

/// The run's first lines: its id and agents, and a warning the user must
/// see before the load starts.
fn announce(run_id: &str, plan: &Plan, agents: &[AgentEntry], progress: &(dyn Fn(String) + Send + Sync)) {
    let names: Vec<String> = agents.iter().map(|a| if a.capacity == 0 { format!("{} (fault-only)", a.id) } else { a.id.clone() }).collect();
    progress(format!("run {run_id}: {} agent(s): {}", agents.len(), names.join(", ")));
    // Said when the load starts, not only in the final summary: a long soak
    // against an endpoint nobody authenticated is known from its first line.
    if plan.tls.as_ref().is_some_and(|t| t.insecure_skip_verify) {
        progress(format!("warning: {}", stampede_common::plan::INSECURE_SKIP_VERIFY_WARNING));
    }
}

/// The steady-state hypothesis before anything is sent, asked of the probe
/// agent; Ctrl-C or `halt` while it is checked stops the run with nothing sent.
async fn steady_before(
    ask: &crate::steady::Ask<'_>,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<crate::fleet::AgentEvent>,
    abort: &Interrupt,
    progress: &(dyn Fn(String) + Send + Sync),
) -> Result<(), RunError> {
    progress(format!("steady state: checking {} from agent {}", steady_names(ask.plan), ask.agent_id));
    tokio::select! {
        held = crate::steady::hold(ask, events) => held.map_err(RunError::SteadyState)?,
        _ = abort.triggered() => return Err(RunError::Interrupted(abort.reason().to_string())),
    }
    progress("steady state holds".to_string());
    Ok(())
}

/// Waits for the run's events, its agents' grace expiries, an interrupt and
/// its deadline, until it is over. The loop only waits and dispatches; `Run`
/// decides what each event means.
async fn drive(run: &mut Run<'_>, events: &mut tokio::sync::mpsc::UnboundedReceiver<crate::fleet::AgentEvent>, abort: &Interrupt) -> Result<(), RunError> {
    while !run.over() {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => if let Next::Fail(e) = run.on_event(event).await { return Err(e) },
                None => break,
            },
            _ = sleep_until_first(run.first_away()), if !run.away.is_empty() => run.on_away_expired(),
            _ = abort.triggered(), if run.stop.is_none() => run.on_interrupt(abort.reason().to_string()).await,
            _ = tokio::time::sleep_until(run.wake_at()) => {
                run.on_deadline();
                break;
            }
        }
    }
    Ok(())
}

/// The run's agents once enough are there (the CLI's number wins over the
/// plan's, so one plan serves fleets of any size), with fresh clock
/// estimates, load agents first.
async fn gather_agents(fleet: &Fleet, plan: &Plan, expect_agents: usize, wait: Duration, abort: &Interrupt) -> Result<Vec<AgentEntry>, RunError> {
    let expect = if expect_agents > 0 { expect_agents } else { plan.agents.count.unwrap_or(0) as usize };
    let agents = wait_for_agents(fleet, &plan.agents, expect, wait, abort).await?;
    Ok(load_agents_first(with_clock_estimates(fleet, agents).await))
}

/// Each agent's share of the load, by its declared capacity.
struct Shares {
    /// Closed-model and iterations connections, per phase then agent.
    per_phase: Vec<Vec<u32>>,
    /// Iterations, per phase then agent.
    iterations: Vec<Vec<u64>>,
    /// The fraction of every open-model rate, per agent.
    rate_shares: Vec<f64>,
    /// The data files' rows, per agent (`split::data_files`): sent beside
    /// the plan like the secrets.
    data: Vec<Vec<DataFile>>,
}

impl Shares {
    /// Refused when a share is more than its agent can hold (`load_bounds`).
    fn new(plan: &Plan, agents: &[AgentEntry]) -> Result<Shares, RunError> {
        let capacities: Vec<u32> = agents.iter().map(|a| a.capacity).collect();
        // In u64: two agents declaring `--capacity 3000000000` would wrap a u32.
        let total_capacity: u64 = capacities.iter().map(|&c| u64::from(c)).sum();
        let per_phase: Vec<Vec<u32>> =
            plan.phases.iter().map(|p| split_by_capacity(if p.load.model == Model::Open { 0 } else { p.load.concurrency.unwrap_or(0) }, &capacities)).collect();
        let iterations = crate::split::iterations(plan, &per_phase);
        // A fault-only agent (capacity 0) gets no share; with no load agent at
        // all (a dry run) nobody does.
        let rate_shares: Vec<f64> = capacities.iter().map(|&c| if total_capacity == 0 { 0.0 } else { f64::from(c) / total_capacity as f64 }).collect();
        crate::load_bounds::check(plan, agents, &per_phase)?;
        let data = crate::split::data_files(plan, &capacities);
        Ok(Shares { per_phase, iterations, rate_shares, data })
    }
}

/// What every agent's assignment has in common.
struct Dispatch<'a> {
    run_id: &'a str,
    plan: &'a Plan,
    plan_json: &'a str,
    start_nanos: i64,
    /// The faults each agent applies, by agent index.
    faults: &'a [Vec<u32>],
    dry_run: bool,
    simulate_faults: bool,
}

/// Sends each agent its assignment: its share, its faults, the secrets
/// it needs (none to a fault-only agent that sends no request) and its data
/// rows (none in a dry run); each agent's rows leave `shares` with it.
async fn send_assignments(agents: &[AgentEntry], shares: &mut Shares, d: &Dispatch<'_>) -> Result<(), RunError> {
    let secrets = d.plan.secret_values();
    for (i, a) in agents.iter().enumerate() {
        let assignment = Assignment {
            run_id: d.run_id.to_string(),
            plan_json: d.plan_json.to_string(),
            rate_share: shares.rate_shares[i],
            concurrency: shares.per_phase.iter().map(|p| p[i]).collect(),
            start_unix_nanos: d.start_nanos,
            clock_offset_nanos: a.clock_offset_nanos,
            agent_index: i as u32,
            agent_count: agents.len() as u32,
            faults: d.faults[i].clone(),
            dry_run: d.dry_run,
            iterations: shares.iterations.iter().map(|p| p[i]).collect(),
            simulate_faults: d.simulate_faults,
            secrets: stampede_proto::secrets_to_wire(&d.plan.secrets_for_agent(i, a.capacity > 0, &d.faults[i], &secrets)),
            data: if d.dry_run { Vec::new() } else { std::mem::take(&mut shares.data[i]) },
        };
        let msg = CoordinatorMessage { msg: Some(Down::Assignment(assignment)) };
        a.tx.send(Ok(msg)).await.map_err(|_| RunError::Send(a.id.clone()))?;
    }
    Ok(())
}

/// What an agent may send for this run, and no more (`limits::RunBounds`).
fn run_bounds(run_id: &str, plan: &Plan, start_nanos: i64) -> RunBounds {
    RunBounds::new(
        run_id,
        plan.phases.len(),
        plan.steps.len(),
        plan.faults.iter().map(|f| f.name.clone()).collect(),
        RunTiming { duration: plan.measured_duration(), interval: plan.interval.as_duration(), timeout: plan.longest_request() },
        start_nanos,
    )
    .with_probes(plan.probes.len())
    .with_flows(plan.flow_requests().count())
    .with_checks(plan.check_names().len())
}

/// The steady state checked again after the run, by its probe agent; what
/// it finds goes into the verdict. Ctrl-C or `halt` now: the report says
/// so, and halt does not wait for `within`.
async fn steady_after(
    run: &mut Run<'_>,
    fleet: &Fleet,
    plan_json: &str,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<crate::fleet::AgentEvent>,
    abort: &Interrupt,
    progress: &(dyn Fn(String) + Send + Sync),
) {
    let (plan, agent) = (run.plan.clone(), run.agents[0].id.clone());
    let ask = crate::steady::Ask { fleet, agent_id: &agent, run_id: &run.run_id, plan: &plan, plan_json };
    tokio::select! {
        after = crate::steady::hold(&ask, events) => {
            progress(match &after {
                Ok(()) => "steady state holds after the run".to_string(),
                Err(why) => format!("steady state did not hold after the run: {why}"),
            });
            run.steady_after = after.err();
        }
        _ = abort.triggered() => run.on_interrupt(abort.reason().to_string()).await,
    }
}

/// The run's agents with the fault-only ones (capacity 0) last, each group
/// in id order: the first agent is the one that probes and checks the
/// steady state, and it must be one that sends requests.
fn load_agents_first(mut agents: Vec<AgentEntry>) -> Vec<AgentEntry> {
    agents.sort_by_key(|a| a.capacity == 0);
    agents
}

fn steady_names(plan: &Plan) -> String {
    plan.steady_state.as_ref().map(|s| s.probes.join(", ")).unwrap_or_default()
}

async fn sleep_until_first(at: Option<tokio::time::Instant>) {
    match at {
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

/// Gives agents that just registered a moment to answer their clock probes,
/// so the start instant uses a measured offset, not the one-way guess.
///
/// One answered probe is not enough: the first probe reaches an agent while
/// it is still starting up (recovering its fault journal, building its
/// runtime), its answer is late on one leg, and an offset is wrong by half
/// of that asymmetry — 10.5 ms, once in about five `--local-agents 3` runs,
/// every agent's first request late by the same amount
/// (`benchmarks/pacing.py`). So wait, up to `CLOCK_WAIT`, until every agent
/// has a sample with a round trip of at most `CLOCK_RTT_TRUSTED` or has
/// answered the whole first round (a WAN's round trips are longer; the best
/// of the round is then as good as it gets).
async fn with_clock_estimates(fleet: &Fleet, agents: Vec<AgentEntry>) -> Vec<AgentEntry> {
    let deadline = Instant::now() + CLOCK_WAIT;
    let trusted = |a: &AgentEntry| clock_estimate_trusted(a.clock_rtt_nanos, a.clock_samples);
    loop {
        let fresh: Vec<AgentEntry> = agents.iter().map(|a| fleet.agent(&a.id).unwrap_or_else(|| a.clone())).collect();
        if fresh.iter().all(trusted) || Instant::now() >= deadline {
            return fresh;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether an agent's clock estimate — its best sample's round trip, out of
/// `samples` answered probes — is good enough to start a run on.
fn clock_estimate_trusted(rtt_nanos: i64, samples: u32) -> bool {
    rtt_nanos <= CLOCK_RTT_TRUSTED || samples as usize >= crate::service::PROBES
}

fn selector_text(selector: &AgentSelector) -> String {
    if selector.labels.is_empty() {
        return String::new();
    }
    let parts: Vec<_> = selector.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(" matching {{{}}}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_starts_on_a_short_round_trip_or_a_whole_round_of_probes() {
        // No answer yet: the registration's one-way guess.
        assert!(!clock_estimate_trusted(i64::MAX, 0));
        // The first answer, late on one leg (an agent still starting up).
        assert!(!clock_estimate_trusted(21_000_000, 1));
        assert!(clock_estimate_trusted(CLOCK_RTT_TRUSTED, 1));
        assert!(clock_estimate_trusted(80_000, 2));
        // A WAN: no short round trip exists; the first round's best will do.
        assert!(!clock_estimate_trusted(40_000_000, crate::service::PROBES as u32 - 1));
        assert!(clock_estimate_trusted(40_000_000, crate::service::PROBES as u32));
    }
}
