//! `stampede halt`: an operator stops the run in progress on a standing
//! coordinator. The run is interrupted like a signal would (every agent stops
//! its load and reverts its faults; the report is `incomplete`, reason
//! `interrupted: halted by <operator>`), and once it has ended the operator
//! is told, per agent, what it reverted — from the agents' own fault events.

use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use stampede_proto::v1::{FaultStatus, HaltResponse, HaltedAgent, HaltedFault};
use tokio::sync::watch;
use tonic::Status;

use crate::report::Report;
use crate::signals::Interrupt;

/// How long a halt waits for the run to end. The run itself gives its
/// agents a short grace to confirm (`run.rs`, `STOP_GRACE`), or an away
/// agent its lease; past this the operator is told to look.
pub const HALT_WAIT: Duration = Duration::from_secs(30);

/// How a run ended, as the halt sees it: its report, or why there is none.
pub type RunEnd = Option<Result<Arc<Report>, String>>;

/// The run in progress on a standing coordinator, for `halt`.
#[derive(Clone)]
pub struct CurrentRun {
    pub abort: Interrupt,
    pub done: watch::Receiver<RunEnd>,
}

/// Halts `current` in the name of `who` and waits for it to end.
pub async fn halt(current: Option<CurrentRun>, who: &str) -> Result<HaltResponse, Status> {
    let Some(mut run) = current else {
        return Ok(HaltResponse::default());
    };
    tracing::warn!(message = "Run halted by an operator: stopping every agent and reverting its faults.", operator = %who);
    run.abort.trigger(format!("halted by {who}"));
    let ended = tokio::time::timeout(HALT_WAIT, run.done.wait_for(Option::is_some)).await;
    let end = match ended {
        Ok(Ok(end)) => end.clone(),
        Ok(Err(_)) => Some(Err("the run's task ended without a result".to_string())),
        Err(_) => return Err(Status::deadline_exceeded(format!("the run was told to stop but had not ended after {HALT_WAIT:?}; its agents revert on their own when their lease runs out: check the nodes"))),
    };
    Ok(match end {
        Some(Ok(report)) => response(&report),
        Some(Err(error)) => HaltResponse { halted: true, error, ..Default::default() },
        None => unreachable!("waited for Some"),
    })
}

/// Per agent of the report: whether it confirmed the stop, and every fault
/// it holds with the status it reported last.
pub fn response(r: &Report) -> HaltResponse {
    let agents = r
        .agents
        .iter()
        .map(|a| HaltedAgent {
            agent_id: a.id.clone(),
            finished: a.lost.is_none(),
            lost: a.lost.clone().unwrap_or_default(),
            faults: r
                .faults
                .iter()
                .filter(|f| f.agent == a.id)
                .map(|f| HaltedFault {
                    fault: f.name.clone(),
                    kind: f.kind.clone(),
                    fault_status: FaultStatus::from_str_name(&format!("FAULT_STATUS_{}", f.status.to_uppercase())).unwrap_or(FaultStatus::Unspecified) as i32,
                    error: f.error.clone(),
                })
                .collect(),
        })
        .collect();
    HaltResponse { halted: true, run_id: r.run_id.clone(), agents, verdict: r.verdict.as_str().into(), error: String::new() }
}

/// Whether the halt left nothing behind as far as the agents can tell:
/// every agent confirmed, and no fault is still applied or failed to revert.
pub fn all_clear(h: &HaltResponse) -> bool {
    h.agents.iter().all(|a| a.finished && a.faults.iter().all(|f| !matches!(f.fault_status(), FaultStatus::Applied | FaultStatus::RevertFailed | FaultStatus::Unspecified)))
}

/// What `stampede halt` prints: one line per agent, then one per fault.
pub fn text(url: &str, h: &HaltResponse) -> String {
    let mut out = String::new();
    if !h.halted {
        let _ = writeln!(out, "no run in progress on {url}: nothing to halt");
        return out;
    }
    if !h.error.is_empty() {
        let _ = writeln!(out, "halted the run on {url} before it had a report: {}", h.error);
        return out;
    }
    let _ = writeln!(out, "halted run {} on {url} (its report: {})", h.run_id, h.verdict);
    for a in &h.agents {
        let state = if a.finished { "stopped".to_string() } else { format!("DID NOT CONFIRM ({}): check its node", a.lost) };
        let _ = writeln!(out, "agent {}: {state}; {} fault(s)", a.agent_id, a.faults.len());
        for f in &a.faults {
            let what = match f.fault_status() {
                FaultStatus::Reverted | FaultStatus::RevertedAtStartup => "reverted",
                FaultStatus::Planned | FaultStatus::Skipped | FaultStatus::DryRun | FaultStatus::Simulated => "never applied",
                FaultStatus::Failed => "failed to apply (nothing left behind)",
                FaultStatus::Applied => "STILL APPLIED: check its node",
                FaultStatus::RevertFailed => "REVERT FAILED: check its node",
                FaultStatus::Unspecified => "status unknown: check its node",
            };
            let error = if f.error.is_empty() { String::new() } else { format!(" ({})", f.error) };
            let _ = writeln!(out, "  {} ({}): {what}{error}", f.fault, f.kind);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(status: FaultStatus) -> HaltedFault {
        HaltedFault { fault: "cut".into(), kind: "partition".into(), fault_status: status as i32, error: String::new() }
    }

    fn halted(agents: Vec<HaltedAgent>) -> HaltResponse {
        HaltResponse { halted: true, run_id: "r1".into(), agents, verdict: "incomplete".into(), error: String::new() }
    }

    #[test]
    fn a_halt_is_all_clear_only_when_every_agent_confirmed_and_no_fault_is_left_applied() {
        let ok = |faults| HaltedAgent { agent_id: "a1".into(), finished: true, lost: String::new(), faults };
        let clear = halted(vec![ok(vec![fault(FaultStatus::Reverted), fault(FaultStatus::Planned)])]);
        assert!(all_clear(&clear));
        assert!(text("http://c:7000", &clear).contains("  cut (partition): reverted\n  cut (partition): never applied\n"));

        let applied = halted(vec![ok(vec![fault(FaultStatus::Applied)])]);
        assert!(!all_clear(&applied));
        assert!(text("http://c:7000", &applied).contains("STILL APPLIED: check its node"));

        let silent = halted(vec![HaltedAgent { agent_id: "a2".into(), finished: false, lost: "no final snapshot".into(), faults: vec![] }]);
        assert!(!all_clear(&silent));
        assert!(text("http://c:7000", &silent).contains("agent a2: DID NOT CONFIRM (no final snapshot): check its node"));

        let idle = HaltResponse::default();
        assert!(all_clear(&idle));
        assert_eq!(text("http://c:7000", &idle), "no run in progress on http://c:7000: nothing to halt\n");
    }
}
