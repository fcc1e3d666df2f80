//! Runs a run's faults on this node: journal, apply, hold, revert — on the
//! run's timeline, and on every way out (window end, abort, lost
//! coordinator, SIGTERM via cancellation, a dead-man thread that reverts
//! by itself if the agent's async side hangs, and a watchdog process that
//! reverts if the whole agent is stopped or gone, see `watchdog.rs`).
//! Revert is idempotent, so the paths may race without harm.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use stampede_common::plan::Fault;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::action::{Action, FaultActions, Runner};
use super::effect::{self, Effect, Samples};
use super::journal::{Entry, Journal};
use super::watchdog::{self, Watchdog};
use super::{driver_for, FaultError, Node};

/// The steady-state check a fault with `unless_unhealthy` runs just before
/// its window (`probe::steady::holds` on the run's plan): `Err` says which
/// probe failed and why.
pub type SteadyGate = Arc<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// After the window's end, how long the dead-man thread waits before it
/// reverts on its own.
pub const DEAD_MAN_GRACE: Duration = Duration::from_secs(5);
/// Attempts for a revert that fails, spaced by [`RETRY_PAUSE`].
const REVERT_ATTEMPTS: u32 = 3;
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// The effect check's baseline: this many probes, starting this long before the window.
const BASELINE_PROBES: usize = 5;
const BASELINE_LEAD: Duration = Duration::from_millis(1100);
/// How long before the window the fault is checked again (before the
/// baseline, so the check's commands never delay the apply).
pub const RECHECK_LEAD: Duration = Duration::from_millis(1500);

/// The wire's status enum (agent.proto `FaultStatus`), used as is: what
/// the injector decides is what the coordinator reads.
pub use stampede_proto::v1::FaultStatus;

#[derive(Debug, Clone)]
pub struct FaultUpdate {
    pub fault: String,
    pub kind: &'static str,
    pub status: FaultStatus,
    pub scheduled: SystemTime,
    pub applied: Option<SystemTime>,
    pub reverted: Option<SystemTime>,
    pub error: String,
    pub apply_commands: Vec<String>,
    pub revert_commands: Vec<String>,
    /// What the fault measurably did (network faults with a port in scope).
    pub effect: Option<Effect>,
}

impl FaultUpdate {
    /// `fault` of a run that starts at `start`, before anything happened to it.
    pub fn new(fault: &Fault, start: SystemTime, status: FaultStatus) -> FaultUpdate {
        FaultUpdate {
            fault: fault.name.clone(),
            kind: fault.kind.name(),
            status,
            scheduled: start + fault.at.as_duration(),
            applied: None,
            reverted: None,
            error: String::new(),
            apply_commands: Vec::new(),
            revert_commands: Vec::new(),
            effect: None,
        }
    }
}

pub struct Injector {
    pub runner: Runner,
    journal: Journal,
    node: Node,
    /// Fault windows in progress, so that shutting down can wait for their
    /// reverts (see [`Injector::settle`]).
    windows: watch::Sender<usize>,
    /// The addresses of the coordinator this agent dials: no fault may
    /// cover them (`control.rs`). Set at each assignment.
    control: std::sync::Mutex<Vec<std::net::SocketAddr>>,
}

/// One fault that start-up recovery found left applied by an earlier agent
/// process, and what became of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovery {
    pub run_id: String,
    pub fault: String,
    pub kind: String,
    /// When the revert finished (or failed).
    pub at: SystemTime,
    /// Why the revert failed; `None` when the fault is gone.
    pub error: Option<String>,
}

impl Recovery {
    fn unreadable(error: String) -> Recovery {
        Recovery { run_id: String::new(), fault: String::new(), kind: String::new(), at: SystemTime::now(), error: Some(error) }
    }

    /// The log line.
    pub fn line(&self) -> String {
        match &self.error {
            None => format!("reverted fault {} ({}) of run {} left behind by an earlier agent", self.fault, self.kind, self.run_id),
            Some(e) if self.fault.is_empty() => e.clone(),
            Some(e) => format!("FAILED to revert fault {} of run {}: {e}", self.fault, self.run_id),
        }
    }
}

/// Counts one window as in progress until it ends or its task is dropped.
struct InProgress(Arc<Injector>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.windows.send_modify(|n| *n = n.saturating_sub(1));
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Injector {
    pub fn new(state_dir: &Path, node: Node, runner: Runner) -> std::io::Result<Injector> {
        Ok(Injector { runner, journal: Journal::claim(state_dir)?, node, windows: watch::channel(0).0, control: Default::default() })
    }

    /// The exact actions `fault` takes on this node.
    pub fn plan(&self, fault: &Fault) -> Result<FaultActions, FaultError> {
        driver_for(fault.kind).actions(fault, &self.node)
    }

    /// Whether `fault` can be applied here as planned (blocking: runs
    /// read-only commands such as `docker inspect`).
    pub fn check(&self, fault: &Fault) -> Result<(), String> {
        let control = self.control.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some((_, addr)) = super::control::covering(std::slice::from_ref(fault), &control) {
            return Err(super::control::refusal(fault, addr));
        }
        driver_for(fault.kind).check(fault, &self.node, &self.runner)
    }

    /// Remembers the coordinator's addresses, which every check then keeps
    /// out of every fault's scope.
    pub fn set_control(&self, addrs: Vec<std::net::SocketAddr>) {
        super::procs::set_control_ports(addrs.iter().map(|a| a.port()).collect());
        *self.control.lock().unwrap_or_else(|e| e.into_inner()) = addrs;
    }

    /// At start-up: reverts every fault an earlier agent process applied and
    /// never reverted. Returns what it did per fault: for the log, and for
    /// the coordinator, whose report of that run must not go on saying
    /// `applied` (issue 8, item 7).
    pub fn recover(&self) -> Vec<Recovery> {
        let mut done = self.recover_journal(&self.journal);
        // Journals of agents that died while another held this directory
        // (journal.rs: a claim falls back to a sibling directory).
        for orphan in self.journal.claim_orphans() {
            done.extend(self.recover_journal(&orphan));
        }
        done
    }

    /// Reverts what `journal` holds pending (its owner is gone: this
    /// process claimed it).
    fn recover_journal(&self, journal: &Journal) -> Vec<Recovery> {
        let pending = match journal.pending() {
            Ok(p) => p,
            Err(e) => return vec![Recovery::unreadable(format!("cannot read the fault journal {}: {e}", journal.path().display()))],
        };
        let mut done = Vec::new();
        for p in pending {
            super::watchdog::adopt(&self.runner, &p);
            let result = self.revert_with_retries(&p.entry.revert);
            if result.is_ok() {
                let _ = journal.record_reverted(&p.entry.id);
            }
            done.push(Recovery { run_id: p.entry.run_id, fault: p.entry.fault, kind: p.entry.kind, at: SystemTime::now(), error: result.err() });
        }
        let _ = journal.compact();
        done
    }

    /// Waits (at most `limit`) until no fault window is in progress: call it
    /// after cancelling the runs, before the runtime goes away. A cancelled
    /// window still finishes an apply that is under way and then reverts;
    /// dropping the runtime instead would drop the window between the two
    /// and leave the fault applied (the dead-man thread dies with the
    /// process). False if some window was still running at `limit`.
    pub async fn settle(&self, limit: Duration) -> bool {
        let mut count = self.windows.subscribe();
        let running = *count.borrow_and_update();
        if running == 0 {
            return true;
        }
        info!(message = "Waiting for fault windows to finish their reverts.", windows = running);
        // Bound to a name so the borrow of `count` ends before it is dropped.
        let settled = tokio::time::timeout(limit, count.wait_for(|n| *n == 0)).await.is_ok_and(|r| r.is_ok());
        settled
    }

    fn revert_with_retries(&self, revert: &[Action]) -> Result<(), String> {
        revert_all(&self.runner, revert)
    }

    /// One fault's window: waits until `start + fault.at`, then journals,
    /// applies, holds until the window ends or `cancel`, and reverts.
    pub async fn run_window(self: Arc<Self>, run_id: String, fault: Fault, start: SystemTime, cancel: CancellationToken, updates: mpsc::UnboundedSender<FaultUpdate>) {
        self.run_gated_window(run_id, fault, start, cancel, updates, None).await
    }

    /// [`Injector::run_window`], and for a fault with `unless_unhealthy`,
    /// the steady state checked by `gate` just before the window: when it
    /// does not hold, the fault is `skipped` with nothing applied (the
    /// coordinator stops the run if the plan says `abort`).
    pub async fn run_gated_window(
        self: Arc<Self>,
        run_id: String,
        fault: Fault,
        start: SystemTime,
        cancel: CancellationToken,
        updates: mpsc::UnboundedSender<FaultUpdate>,
        gate: Option<SteadyGate>,
    ) {
        self.windows.send_modify(|n| *n += 1);
        let _in_progress = InProgress(self.clone());
        let mut update = FaultUpdate::new(&fault, start, FaultStatus::Failed);
        let window = match self.plan(&fault) {
            Ok(actions) => Window::new(fault, actions, start, cancel),
            Err(e) => {
                update.error = e.to_string();
                let _ = updates.send(update);
                return;
            }
        };
        update.apply_commands = window.actions.apply.iter().map(Action::display).collect();
        update.revert_commands = window.actions.revert.iter().map(Action::display).collect();
        let (baseline, armed) = match self.prepare(&window, run_id, gate).await {
            Ok(prepared) => prepared,
            Err(NotApplied::Cancelled) => return,
            Err(NotApplied::Refused(status, error)) => {
                update.status = status;
                update.error = error;
                let _ = updates.send(update);
                return;
            }
        };
        self.apply_and_hold(&window, &armed, &baseline, &mut update, &updates).await;
        // Revert on every path, even after a partial apply.
        self.revert_window(&window, armed, &mut update).await;
        let _ = updates.send(update);
    }

    /// Everything before the apply, in timeline order: the re-check, the
    /// steady-state gate, the effect baseline, the wait for the window, then
    /// the journal and the watchdog that make the apply safe. Returns the
    /// baseline and what will revert the fault.
    async fn prepare(self: &Arc<Self>, w: &Window, run_id: String, gate: Option<SteadyGate>) -> Result<(Samples, Armed), NotApplied> {
        self.recheck_before(w).await?;
        steady_before(w, gate).await?;
        let baseline = baseline_then_wait(w).await?;
        let armed = self.arm(w, run_id)?;
        Ok((baseline, armed))
    }

    /// The world may have changed since the check at assignment: the
    /// instance removed, the route gone, an operator's ingress qdisc added
    /// on the device. Checked again just before the window, such a fault
    /// fails with nothing applied, so there is nothing to revert — rather
    /// than failing halfway, when the revert of a step that never ran
    /// could remove what the operator just made. A fault at the run's
    /// start was checked at assignment, moments ago.
    async fn recheck_before(self: &Arc<Self>, w: &Window) -> Result<(), NotApplied> {
        if SystemTime::now() + RECHECK_LEAD >= w.scheduled {
            return Ok(());
        }
        wall_or_cancel(w.scheduled - RECHECK_LEAD, &w.cancel).await?;
        let (me, f) = (self.clone(), w.fault.clone());
        let checked = tokio::task::spawn_blocking(move || me.check(&f)).await.unwrap_or_else(|e| Err(e.to_string()));
        checked.map_err(|e| {
            warn!(message = "Fault not applied: it cannot be applied as planned any more.", fault = %w.fault.name, error = %e);
            NotApplied::Refused(FaultStatus::Failed, format!("not applied (checked again before its window): {e}"))
        })
    }

    /// Journals the fault, starts its watchdog process and its dead-man
    /// thread: after this, something reverts it whatever happens to this task.
    fn arm(self: &Arc<Self>, w: &Window, run_id: String) -> Result<Armed, NotApplied> {
        let fault = &w.fault;
        let entry = Entry {
            id: format!("{run_id}/{}", fault.name),
            run_id,
            fault: fault.name.clone(),
            kind: fault.kind.name().to_string(),
            revert: w.actions.revert.clone(),
            deadline_unix_ms: unix_ms(w.end + DEAD_MAN_GRACE),
        };
        let failed = |error| NotApplied::Refused(FaultStatus::Failed, error);
        // Journal first: a crash after this line is recovered at next start.
        if let Err(e) = self.journal.record_apply(&entry) {
            return Err(failed(format!("not applied: cannot journal it: {e}")));
        }
        // A process of its own reverts the fault if this one cannot (it is
        // stopped, killed or hung): without it, no apply.
        let state_dir = self.journal.dir().to_path_buf();
        let watchdog = match Watchdog::spawn(&self.node.agent_exe, &state_dir, &entry.id, w.end + watchdog::GRACE) {
            Ok(watchdog) => watchdog,
            Err(e) => {
                let _ = self.journal.record_reverted(&entry.id);
                return Err(failed(format!("not applied: cannot start its watchdog process ({}): {e}", self.node.agent_exe.display())));
            }
        };
        let reverted = Arc::new(AtomicBool::new(false));
        self.start_dead_man(&entry, w.end + DEAD_MAN_GRACE, reverted.clone());
        Ok(Armed { entry, watchdog, reverted })
    }

    /// Applies the fault and, once it is applied, holds it until the window
    /// ends or the run stops, then judges its effect. A failed apply only
    /// sets the error: the revert that always follows undoes what was done.
    async fn apply_and_hold(self: &Arc<Self>, w: &Window, armed: &Armed, baseline: &Samples, update: &mut FaultUpdate, updates: &mpsc::UnboundedSender<FaultUpdate>) {
        let fault = &w.fault;
        let me = self.clone();
        let apply = w.actions.apply.clone();
        let id = armed.entry.id.clone();
        let applied = tokio::task::spawn_blocking(move || me.apply(&id, &apply)).await.unwrap_or_else(|e| Err(e.to_string()));
        if let Err(e) = applied {
            warn!(message = "Fault could not be applied; undoing what was done.", fault = %fault.name, error = %e);
            update.error = e;
            return;
        }
        update.applied = Some(SystemTime::now());
        update.status = FaultStatus::Applied;
        info!(message = "Fault applied.", fault = %fault.name, kind = fault.kind.name());
        let _ = updates.send(update.clone());
        let during = hold(w).await;
        let held = update.applied.and_then(|t| t.elapsed().ok()).unwrap_or_default();
        update.effect = self.judge_effect(w, held, baseline, &during).await;
        if update.effect.as_ref().is_some_and(|e| !e.effective) {
            warn!(message = "Fault had no measurable effect on the scoped traffic.", fault = %fault.name);
        }
    }

    /// What the fault measurably did: from the qdisc's own counters where
    /// the driver can show them, else from the probes before and during.
    async fn judge_effect(self: &Arc<Self>, w: &Window, held: Duration, baseline: &Samples, during: &Samples) -> Option<Effect> {
        // The counters are read before the revert deletes them;
        // blocking (resolving `dev: auto` runs `ip route get`).
        let (me, f) = (self.clone(), w.fault.clone());
        let shown = tokio::task::spawn_blocking(move || driver_for(f.kind).observe(&f, &me.node).map(|o| me.runner.output(&o))).await;
        match shown {
            Ok(Some(Ok(text))) => super::net::parse_class_stats(&text).and_then(|stats| effect::judge_rate(&w.fault, &stats, held)),
            Ok(Some(Err(_))) | Err(_) => None,
            Ok(None) => effect::judge(&w.fault, baseline, during),
        }
    }

    /// Reverts (with retries) and records the outcome; disarms the watchdog
    /// once the fault is gone. A failed revert is the loudest status there is.
    async fn revert_window(self: &Arc<Self>, w: &Window, armed: Armed, update: &mut FaultUpdate) {
        let me = self.clone();
        let revert = w.actions.revert.clone();
        let id = armed.entry.id.clone();
        let flag = armed.reverted.clone();
        let result = tokio::task::spawn_blocking(move || {
            let r = revert_all(&me.runner, &revert);
            if r.is_ok() {
                flag.store(true, Ordering::SeqCst);
                let _ = me.journal.record_reverted(&id);
            }
            r
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match result {
            Ok(()) => {
                armed.watchdog.disarm();
                update.reverted = Some(SystemTime::now());
                if update.status == FaultStatus::Applied {
                    update.status = FaultStatus::Reverted;
                }
            }
            Err(e) => {
                error!(message = "FAULT REVERT FAILED: the node may still be impaired.", fault = %w.fault.name, error = %e);
                update.status = FaultStatus::RevertFailed;
                update.error = if update.error.is_empty() { e } else { format!("{}; revert: {e}", update.error) };
            }
        }
    }

    fn apply(&self, id: &str, actions: &[Action]) -> Result<(), String> {
        for a in actions {
            // A process fault's exact pids are journaled before the signal.
            if let Some(resolved) = self.runner.resolve(a) {
                let procs = resolved.map_err(|e| e.to_string())?;
                if let Action::Signal { tag, .. } = a {
                    self.journal.record_signalled(id, tag, &procs).map_err(|e| format!("journaling the processes: {e}"))?;
                }
            }
            self.runner.execute(a).map_err(|e| e.to_string())?;
            if let Action::Spawn { tag, .. } = a {
                if let Some(pgid) = self.runner.spawned_pgid(tag) {
                    self.journal.record_spawned(id, tag, pgid).map_err(|e| format!("journaling the helper: {e}"))?;
                }
            }
        }
        Ok(())
    }

    /// A plain thread, independent of the async runtime, that reverts the
    /// fault at `deadline` unless the normal path already did.
    fn start_dead_man(self: &Arc<Self>, entry: &Entry, deadline: SystemTime, reverted: Arc<AtomicBool>) {
        let me = self.clone();
        let entry = entry.clone();
        let name = entry.fault.clone();
        let spawned = std::thread::Builder::new().name(format!("dead-man-{name}")).spawn(move || {
            while SystemTime::now() < deadline {
                if reverted.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if reverted.load(Ordering::SeqCst) {
                return;
            }
            error!(message = "Dead-man switch: reverting a fault the agent did not revert in time.", fault = %entry.fault);
            if revert_all(&me.runner, &entry.revert).is_ok() {
                reverted.store(true, Ordering::SeqCst);
                let _ = me.journal.record_reverted(&entry.id);
            }
        });
        if let Err(e) = spawned {
            warn!(message = "No dead-man thread for this fault.", fault = %name, error = %e);
        }
    }
}

/// One fault's window as planned, shared by the steps of
/// [`Injector::run_gated_window`].
struct Window {
    fault: Fault,
    actions: FaultActions,
    /// `start + fault.at`: when the apply starts.
    scheduled: SystemTime,
    /// When the revert starts, unless the run stops first.
    end: SystemTime,
    /// Where the effect check probes (network faults with a port in scope).
    probe: Option<std::net::SocketAddr>,
    cancel: CancellationToken,
}

impl Window {
    fn new(fault: Fault, actions: FaultActions, start: SystemTime, cancel: CancellationToken) -> Window {
        let scheduled = start + fault.at.as_duration();
        let end = scheduled + fault.duration.as_duration();
        let probe = effect::probe_target(&fault);
        Window { fault, actions, scheduled, end, probe, cancel }
    }
}

/// Why a window ended before its apply.
enum NotApplied {
    /// The run stopped first: nothing happened, nothing to report.
    Cancelled,
    /// The fault ends with this status and error, nothing applied.
    Refused(FaultStatus, String),
}

/// What reverts an applied fault besides this task: its journal entry, its
/// watchdog process and its dead-man thread (which reads `reverted`).
struct Armed {
    entry: Entry,
    watchdog: Watchdog,
    reverted: Arc<AtomicBool>,
}

/// Issue 9: a fault is never injected into a service already down.
/// Checked after the re-check (1.5 s ahead), so a healthy probe leaves the
/// apply on time; a slow one makes it late, and says so.
async fn steady_before(w: &Window, gate: Option<SteadyGate>) -> Result<(), NotApplied> {
    let (Some(action), Some(gate)) = (w.fault.unless_unhealthy, gate) else {
        return Ok(());
    };
    let held = tokio::select! {
        held = gate() => held,
        _ = w.cancel.cancelled() => return Err(NotApplied::Cancelled),
    };
    held.map_err(|why| {
        warn!(message = "Fault skipped: the steady state did not hold just before it.", fault = %w.fault.name, unless_unhealthy = action.as_str(), reason = %why);
        NotApplied::Refused(
            FaultStatus::Skipped,
            format!("not applied: the steady state did not hold just before it ({why}); unless_unhealthy: {}", action.as_str()),
        )
    })
}

/// The baseline for the effect check, a second of probes just before the
/// window (none without a probe target), then the wait for the window.
async fn baseline_then_wait(w: &Window) -> Result<Samples, NotApplied> {
    let mut baseline = Samples::default();
    if let Some(addr) = w.probe {
        wall_or_cancel(w.scheduled - BASELINE_LEAD, &w.cancel).await?;
        let until = std::time::Instant::now() + w.scheduled.duration_since(SystemTime::now()).unwrap_or_default();
        baseline = effect::sample(addr, BASELINE_PROBES, Some(until)).await;
    }
    wall_or_cancel(w.scheduled, &w.cancel).await?;
    Ok(baseline)
}

/// Holds an applied fault until the window's end or the run stops,
/// probing the scoped traffic meanwhile; returns the probes.
async fn hold(w: &Window) -> Samples {
    let hold = sleep_until_wall(w.end);
    tokio::pin!(hold);
    let mut during = Samples::default();
    loop {
        tokio::select! {
            _ = &mut hold => break,
            _ = w.cancel.cancelled() => {
                info!(message = "Fault reverted early: the run stopped.", fault = %w.fault.name);
                break;
            }
            r = probe_step(w.probe) => match r {
                Some(ms) => during.ok_ms.push(ms),
                None => during.failed += 1,
            },
        }
    }
    during
}

/// Waits until the wall-clock instant `t`; `Cancelled` if the run stops first.
async fn wall_or_cancel(t: SystemTime, cancel: &CancellationToken) -> Result<(), NotApplied> {
    tokio::select! {
        _ = sleep_until_wall(t) => Ok(()),
        _ = cancel.cancelled() => Err(NotApplied::Cancelled),
    }
}


/// Runs every revert action even if one fails (each undoes its own part),
/// retrying failures; reports what still failed.
pub fn revert_all(runner: &Runner, revert: &[Action]) -> Result<(), String> {
    let mut failures = Vec::new();
    for a in revert {
        let mut last = None;
        for attempt in 0..REVERT_ATTEMPTS {
            match runner.execute(a) {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) => {
                    last = Some(e.to_string());
                    if attempt + 1 < REVERT_ATTEMPTS {
                        std::thread::sleep(RETRY_PAUSE);
                    }
                }
            }
        }
        if let Some(e) = last {
            failures.push(e);
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// One effect probe and the pause after it; never resolves without a target.
async fn probe_step(target: Option<std::net::SocketAddr>) -> Option<f64> {
    match target {
        Some(addr) => {
            let r = effect::probe_once(addr).await;
            tokio::time::sleep(effect::PROBE_EVERY).await;
            r
        }
        None => std::future::pending().await,
    }
}

/// Sleeps until a wall-clock instant (the run's timeline is in wall time,
/// shared with the coordinator).
async fn sleep_until_wall(t: SystemTime) {
    if let Ok(wait) = t.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
}
