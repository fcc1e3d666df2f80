//! The faults' section: each fault on each agent, when it was planned,
//! applied and reverted, with its exact commands and measured effect.

use std::time::SystemTime;

use serde::Serialize;
use stampede_common::plan::Plan;

use crate::faults::FaultLog;

/// One fault on one agent: when it was planned, applied and reverted.
#[derive(Debug, Clone, Serialize)]
pub struct FaultReport {
    pub name: String,
    pub kind: String,
    pub agent: String,
    pub scheduled_at: String,
    /// Seconds after the run's common start.
    pub offset_s: f64,
    pub applied_at: Option<String>,
    pub reverted_at: Option<String>,
    /// applied | reverted | reverted_at_startup (the agent process died and
    /// its successor reverted it from the journal; `reverted_at` is when) |
    /// failed | revert_failed | dry_run | skipped (not injected: the steady
    /// state did not hold at its start) | simulated (`--simulate-faults`:
    /// announced at its time, nothing touched; `applied_at`/`reverted_at`
    /// are the announced window); `FaultStatus::name`
    pub status: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// Applied more than 100 ms after its scheduled instant.
    pub late: bool,
    pub apply_commands: Vec<String>,
    pub revert_commands: Vec<String>,
    /// Achieved vs requested, for network faults whose scope names a port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effect: Option<EffectReport>,
    /// Seconds the fault was planned to last.
    pub duration_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EffectReport {
    pub measure: String,
    pub baseline: f64,
    pub during: f64,
    /// False: the fault changed nothing measurable — suspect its scope.
    pub effective: bool,
    pub detail: String,
}

/// A fault applied later than this after its schedule is flagged.
pub const FAULT_LATE_BOUND_NANOS: i64 = 100_000_000;

fn rfc3339_nanos(nanos: i64) -> Option<String> {
    (nanos > 0).then(|| humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(nanos as u64)).to_string())
}

pub(super) fn fault_reports(plan: &Plan, log: &FaultLog, start_unix_nanos: i64) -> Vec<FaultReport> {
    let mut out: Vec<FaultReport> = log
        .events
        .values()
        .map(|e| FaultReport {
            name: e.fault.clone(),
            kind: e.kind.clone(),
            agent: e.agent_id.clone(),
            scheduled_at: rfc3339_nanos(e.scheduled_unix_nanos).unwrap_or_default(),
            offset_s: (e.scheduled_unix_nanos - start_unix_nanos) as f64 / 1e9,
            applied_at: rfc3339_nanos(e.applied_unix_nanos),
            reverted_at: rfc3339_nanos(e.reverted_unix_nanos),
            status: e.fault_status().name().to_string(),
            error: e.error.clone(),
            late: e.applied_unix_nanos > 0 && e.applied_unix_nanos - e.scheduled_unix_nanos > FAULT_LATE_BOUND_NANOS,
            apply_commands: e.apply_commands.clone(),
            revert_commands: e.revert_commands.clone(),
            effect: e.effect.as_ref().map(|x| EffectReport {
                measure: x.measure.clone(),
                baseline: x.baseline,
                during: x.during,
                effective: x.effective,
                detail: x.detail.clone(),
            }),
            duration_s: plan.faults.iter().find(|f| f.name == e.fault).map_or(0.0, |f| f.duration.as_duration().as_secs_f64()),
        })
        .collect();
    out.sort_by(|a, b| a.offset_s.total_cmp(&b.offset_s).then(a.agent.cmp(&b.agent)));
    out
}
