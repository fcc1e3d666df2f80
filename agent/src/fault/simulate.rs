//! `--simulate-faults`: the runbooks' "simulated mode", for when no one may
//! touch the infrastructure. The load runs for real; each fault is only
//! announced on the run's timeline — logged, and sent as a `simulated`
//! fault event when its window starts and again when it ends — so the
//! report, the progress lines and the fault-window rules see the windows
//! the plan describes. Nothing is journaled, checked, run or spawned: no
//! command of the fault's, not even a read-only one. The commands the fault
//! would run are named in the event when they can be built without running
//! anything on the node (they are shown, never run).

use std::sync::Arc;
use std::time::SystemTime;

use stampede_common::plan::{Fault, FaultKind};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::injector::{FaultStatus, FaultUpdate, Injector, SteadyGate};
use super::Action;

/// Where a simulated fault's events go (the run's outbox).
pub type Sink = Arc<dyn Fn(FaultUpdate) + Send + Sync>;

/// One task per fault, announcing it at its start and at its end (or when
/// `stop` cuts the run short). A fault with `unless_unhealthy` checks the
/// steady state just before its window, as a real one does: when it does
/// not hold, the fault is `skipped` (and with `abort`, the coordinator stops
/// the run), so a rehearsal exercises the same decisions.
pub fn start(faults: Vec<(Fault, Option<SteadyGate>)>, injector: Option<&Injector>, start: SystemTime, stop: &CancellationToken, sink: Sink) -> Vec<JoinHandle<()>> {
    faults
        .into_iter()
        .map(|(fault, gate)| {
            let mut update = FaultUpdate::new(&fault, start, FaultStatus::Simulated);
            // `dev: auto` would ask `ip route get`: only a fault whose
            // actions need nothing from the node is shown with them.
            if let Some(actions) = injector.filter(|_| !needs_the_node(&fault)).and_then(|i| i.plan(&fault).ok()) {
                update.apply_commands = actions.apply.iter().map(Action::display).collect();
                update.revert_commands = actions.revert.iter().map(Action::display).collect();
            }
            tokio::spawn(announce(fault, gate, update, stop.clone(), sink.clone()))
        })
        .collect()
}

/// Whether building the fault's actions would run a command on this node
/// (tc faults on `dev: auto` ask `ip route get` for the device).
fn needs_the_node(fault: &Fault) -> bool {
    matches!(fault.kind, FaultKind::Netem | FaultKind::Rate) && fault.scope.as_ref().is_some_and(|s| s.dev == "auto")
}

async fn announce(fault: Fault, gate: Option<SteadyGate>, mut update: FaultUpdate, stop: CancellationToken, sink: Sink) {
    let end = update.scheduled + fault.duration.as_duration();
    tokio::select! {
        _ = sleep_until_wall(update.scheduled) => {}
        _ = stop.cancelled() => return,
    }
    if let (Some(action), Some(gate)) = (fault.unless_unhealthy, gate) {
        let held = tokio::select! {
            held = gate() => held,
            _ = stop.cancelled() => return,
        };
        if let Err(why) = held {
            warn!(message = "Simulated fault skipped: the steady state did not hold just before it.", fault = %fault.name, unless_unhealthy = action.as_str(), reason = %why);
            update.status = FaultStatus::Skipped;
            update.error = format!("not applied: the steady state did not hold just before it ({why}); unless_unhealthy: {}", action.as_str());
            sink(update);
            return;
        }
    }
    update.applied = Some(SystemTime::now());
    info!(message = "Fault simulated: its window starts now; nothing is injected.", fault = %fault.name, kind = fault.kind.name(), lasts = ?fault.duration.as_duration());
    sink(update.clone());
    tokio::select! {
        _ = sleep_until_wall(end) => {}
        _ = stop.cancelled() => {}
    }
    update.reverted = Some(SystemTime::now());
    info!(message = "Simulated fault's window ended; nothing was injected.", fault = %fault.name);
    sink(update);
}

async fn sleep_until_wall(t: SystemTime) {
    if let Ok(wait) = t.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
}
