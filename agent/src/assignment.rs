//! One assignment on this agent: its load, its fault windows, and the
//! messages that report them. Everything it measures goes into the outbox,
//! not onto a session, so it survives the session breaking mid-run.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use stampede_common::plan::{fill_agent_secrets, validate, Fault, Plan};
use stampede_proto::convert::{encode_steps, unix_nanos};
use stampede_proto::v1::agent_message::Msg as Up;
use stampede_proto::v1::{Assignment, FaultEffect, FaultEvent, RunFinished, Snapshot, StepStats};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::engine::{self, RunSpec};
use crate::fault::injector::{FaultStatus, FaultUpdate, Injector, SteadyGate};
use crate::fault::Action;
use crate::outbox::Outbox;
use crate::session::AgentConfig;

/// The fault checks at assignment end this long before the common start.
const CHECK_MARGIN: Duration = Duration::from_millis(50);

/// Runs one assignment to its end and reports it as finished, with an error
/// when it could not run at all.
pub async fn execute(a: Assignment, cfg: AgentConfig, injector: Option<Arc<Injector>>, outbox: Arc<Outbox>, cancel: CancellationToken, stop_reason: Arc<std::sync::Mutex<Option<String>>>) {
    let mut finished = RunFinished { run_id: a.run_id.clone(), agent_id: cfg.agent_id.clone(), ..Default::default() };
    let evicted_before = outbox.evicted();
    if let Err(e) = stream_run(&a, &cfg, injector, &outbox, cancel.clone(), &mut finished).await {
        // Every error of stream_run comes before the load starts.
        warn!(message = "Run failed on this agent.", error = %e);
        finished.error = e;
        finished.not_started = true;
    } else if cancel.is_cancelled() {
        // Aborted, shutting down, replaced or past the lease: what was
        // measured is sent, but it is not this agent's whole share, and the
        // coordinator must not count it as complete.
        let why = stop_reason.lock().unwrap_or_else(|e| e.into_inner()).clone();
        finished.error = format!("stopped before the end of the run: {}", why.as_deref().unwrap_or("aborted, or the agent is shutting down"));
    }
    finished.evicted = outbox.evicted() - evicted_before;
    info!(message = "Run finished.", requests = finished.requests, errors = finished.errors, snapshots = finished.snapshots_sent);
    outbox.push(Up::Finished(finished));
}

async fn stream_run(
    a: &Assignment,
    cfg: &AgentConfig,
    injector: Option<Arc<Injector>>,
    outbox: &Arc<Outbox>,
    cancel: CancellationToken,
    finished: &mut RunFinished,
) -> Result<(), String> {
    let AssignedPlan { plan, fault_only, has_iterations } = assigned_plan(a)?;
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
        // The same refusal the real run would meet on this node, as a finding.
        let control = if faults.is_empty() { Vec::new() } else { crate::fault::control::resolve(&cfg.coordinator).await.unwrap_or_default() };
        for fault in &faults {
            outbox.push(Up::Fault(dry_run_event(a, cfg, injector.as_deref(), fault, start, &control)));
        }
        return Ok(());
    }
    let fault_stop = cancel.child_token();
    // Each fault with `unless_unhealthy` gets the plan's steady state as its gate.
    let faults: Vec<_> = faults.into_iter().map(|f| { let gate = f.unless_unhealthy.map(|_| steady_gate(plan.clone())); (f, gate) }).collect();
    let fault_tasks = if a.simulate_faults {
        // Nothing on this node is checked or touched: the faults are only announced.
        let (a, cfg, outbox) = (a.clone(), cfg.clone(), outbox.clone());
        let sink = Arc::new(move |u: FaultUpdate| {
            outbox.push(Up::Fault(fault_event(&a, &cfg, u)));
        });
        crate::fault::simulate::start(faults, injector.as_deref(), start, &fault_stop, sink)
    } else {
        check_faults(cfg, injector.as_ref(), &faults, start).await?;
        start_faults(a, cfg, injector, faults, start, &fault_stop, outbox)
    };
    let spec = RunSpec {
        plan: plan.clone(),
        rate_share: a.rate_share,
        concurrency: a.concurrency.clone(),
        iterations: if has_iterations { a.iterations.clone() } else { vec![0; plan.phases.len()] },
        agent_index: a.agent_index,
        agent_count: a.agent_count,
        start,
        workers: if fault_only { 1 } else { cfg.workers },
    };
    let loaded = run_load(a, cfg, spec, cancel, outbox, finished).await;
    // The run is over (or its load could not start): any fault still
    // active is reverted before we say so.
    fault_stop.cancel();
    for t in fault_tasks {
        let _ = t.await;
    }
    loaded
}

/// The assigned plan, made whole and checked on this agent before anything runs.
struct AssignedPlan {
    plan: Plan,
    /// No load from this agent: it only sends its (empty) intervals.
    fault_only: bool,
    /// Some phase runs a fixed number of iterations (split in `a.iterations`).
    has_iterations: bool,
}

/// Parses the assigned plan, fills in its data rows and secrets, and checks
/// that the assignment's per-phase lists match it. Every error here comes
/// before the load starts.
fn assigned_plan(a: &Assignment) -> Result<AssignedPlan, String> {
    let mut plan: Plan = serde_json::from_str(&a.plan_json).map_err(|e| format!("the assigned plan does not parse: {e}"))?;
    // The data files' rows came beside the plan; with them `validate`
    // checks each `{{data.COL}}` against its file's columns.
    crate::data::fill(&mut plan, &a.data).map_err(|e| format!("the assigned plan's data: {e}"))?;
    validate(&plan).map_err(|(path, msg)| format!("the assigned plan is invalid: {path}: {msg}"))?;
    // A fault-only agent (capacity 0: no rate share, no connections) runs
    // no load but still sends its (empty) intervals to the run's end, so
    // the run's numbers stay complete and its faults keep their windows.
    let fault_only = a.rate_share == 0.0 && a.concurrency.iter().all(|&c| c == 0);
    // The plan names its secrets; their values came beside it, on this
    // session (a dry run sends nothing and gets none; a fault-only agent
    // gets no step's, as it sends no load).
    if !a.dry_run {
        let secrets = stampede_proto::secrets_from_wire(&a.secrets);
        let runs: Vec<bool> = (0..plan.probes.len()).map(|p| plan.agent_sends_probe(a.agent_index as usize, p, &a.faults)).collect();
        fill_agent_secrets(&mut plan, &secrets, !fault_only, |p| runs.get(p).copied().unwrap_or(false))
            .map_err(|(path, msg)| format!("the assigned plan's secrets: {path}: {msg}"))?;
    }
    if a.concurrency.len() != plan.phases.len() {
        return Err(format!("assignment has {} concurrency entries for {} phases", a.concurrency.len(), plan.phases.len()));
    }
    let has_iterations = plan.phases.iter().any(|p| p.load.iterations().is_some());
    if has_iterations && a.iterations.len() != plan.phases.len() {
        return Err(format!("assignment has {} iterations entries for {} phases (a coordinator too old for iterations phases?)", a.iterations.len(), plan.phases.len()));
    }
    Ok(AssignedPlan { plan, fault_only, has_iterations })
}

/// Before any load: every fault must be possible here as planned (a route
/// to its scope, an instance that exists). A refusal reaches the
/// coordinator as this agent failing to start, which stops the whole run.
/// In parallel, and done before the common start: a slow CLI must not make
/// this agent start late, nor refuse after the others have begun.
async fn check_faults(cfg: &AgentConfig, injector: Option<&Arc<Injector>>, faults: &[(Fault, Option<SteadyGate>)], start: SystemTime) -> Result<(), String> {
    let faults: Vec<Fault> = faults.iter().map(|(f, _)| f.clone()).collect();
    let Some(inj) = injector else { return Ok(()) };
    // Issue 8 item 8: no network fault, alone or with the others on
    // this node, may cover the coordinator this agent dials.
    // Issue 8 item 9: nor may a process fault signal that coordinator.
    if !faults.is_empty() {
        let control = crate::fault::control::resolve(&cfg.coordinator).await.map_err(|e| format!("preflight on this node: {e}"))?;
        if let Some((i, addr)) = crate::fault::control::covering(&faults, &control) {
            return Err(format!("preflight on this node: {}", crate::fault::control::refusal(&faults[i], addr)));
        }
        inj.set_control(control);
    }
    let budget = start.duration_since(SystemTime::now()).unwrap_or_default().saturating_sub(CHECK_MARGIN);
    let mut checks = tokio::task::JoinSet::new();
    for fault in &faults {
        let (inj, f) = (inj.clone(), fault.clone());
        checks.spawn_blocking(move || inj.check(&f));
    }
    let all = async {
        while let Some(checked) = checks.join_next().await {
            checked.map_err(|e| e.to_string())?.map_err(|e| format!("preflight on this node: {e}"))?;
        }
        Ok::<(), String>(())
    };
    tokio::time::timeout(budget, all).await.map_err(|_| format!("preflight on this node: the fault checks did not finish within the {budget:?} before the start"))??;
    Ok(())
}

/// Runs the load engine and sends its intervals as snapshots until the last.
async fn run_load(a: &Assignment, cfg: &AgentConfig, spec: RunSpec, cancel: CancellationToken, outbox: &Arc<Outbox>, finished: &mut RunFinished) -> Result<(), String> {
    let mut intervals = engine::start(spec, cancel).await.map_err(|e| e.to_string())?;
    while let Some(iv) = intervals.recv().await {
        for r in std::iter::once(&iv.stats).chain(iv.late.values()).flat_map(|s| s.steps.values()) {
            finished.requests += r.requests;
            finished.errors += r.error_count();
        }
        let (mut steps, phases) = encode_steps(&iv.stats);
        // Late completions go out as additions to the interval they were due in.
        for (due, stats) in &iv.late {
            steps.extend(encode_steps(stats).0.into_iter().map(|s| StepStats { due_seq: Some(*due), ..s }));
        }
        let snapshot = Snapshot {
            run_id: a.run_id.clone(),
            agent_id: cfg.agent_id.clone(),
            seq: iv.seq,
            interval_start_unix_nanos: unix_nanos(iv.start),
            interval_end_unix_nanos: unix_nanos(iv.end),
            steps,
            phases,
            last: iv.last,
            in_flight: iv.in_flight,
        };
        outbox.push(Up::Snapshot(snapshot));
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

fn fault_event(a: &Assignment, cfg: &AgentConfig, u: FaultUpdate) -> FaultEvent {
    FaultEvent {
        run_id: a.run_id.clone(),
        agent_id: cfg.agent_id.clone(),
        fault: u.fault,
        kind: u.kind.to_string(),
        fault_status: u.status as i32,
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

/// A fault of a dry run: its exact commands, and in `error` what this node
/// would refuse of it that the coordinator cannot know (the actions cannot
/// be built, the scope covers the coordinator this agent dials). Nothing is
/// run: the read-only checks of a real run (`docker inspect` ...) are not
/// made either.
fn dry_run_event(a: &Assignment, cfg: &AgentConfig, injector: Option<&Injector>, fault: &Fault, start: SystemTime, control: &[std::net::SocketAddr]) -> FaultEvent {
    let mut u = FaultUpdate::new(fault, start, FaultStatus::DryRun);
    match injector.map(|i| i.plan(fault)) {
        Some(Ok(actions)) => {
            u.apply_commands = actions.apply.iter().map(Action::display).collect();
            u.revert_commands = actions.revert.iter().map(Action::display).collect();
        }
        Some(Err(e)) => u.error = e.to_string(),
        None => u.error = "this agent has no fault journal, so it refuses faults".into(),
    }
    if let Some((_, addr)) = crate::fault::control::covering(std::slice::from_ref(fault), control) {
        let refusal = crate::fault::control::refusal(fault, addr);
        u.error = if u.error.is_empty() { refusal } else { format!("{}; {refusal}", u.error) };
    }
    fault_event(a, cfg, u)
}

/// The plan's steady state, for a fault's `unless_unhealthy`.
fn steady_gate(plan: Arc<Plan>) -> SteadyGate {
    Arc::new(move || {
        let plan = plan.clone();
        Box::pin(async move { crate::probe::steady::holds(&plan).await })
    })
}

/// Starts each fault's window; their updates go to the coordinator as they happen.
fn start_faults(
    a: &Assignment,
    cfg: &AgentConfig,
    injector: Option<Arc<Injector>>,
    faults: Vec<(Fault, Option<SteadyGate>)>,
    start: SystemTime,
    stop: &CancellationToken,
    outbox: &Arc<Outbox>,
) -> Vec<tokio::task::JoinHandle<()>> {
    if faults.is_empty() {
        return Vec::new();
    }
    let (updates_tx, mut updates) = mpsc::unbounded_channel::<FaultUpdate>();
    let mut tasks = Vec::new();
    for (fault, gate) in faults {
        match &injector {
            Some(inj) => {
                tasks.push(tokio::spawn(inj.clone().run_gated_window(a.run_id.clone(), fault, start, stop.clone(), updates_tx.clone(), gate)))
            }
            None => {
                let mut refused = FaultUpdate::new(&fault, start, FaultStatus::Failed);
                refused.error = "this agent has no fault journal, so it refuses faults".into();
                let _ = updates_tx.send(refused);
            }
        }
    }
    drop(updates_tx);
    let (a, cfg, outbox) = (a.clone(), cfg.clone(), outbox.clone());
    // Forwards updates until every window has ended; awaited with the windows.
    tasks.push(tokio::spawn(async move {
        while let Some(u) = updates.recv().await {
            outbox.push(Up::Fault(fault_event(&a, &cfg, u)));
        }
    }));
    tasks
}

