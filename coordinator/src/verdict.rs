//! From merged numbers to a verdict: evaluate every SLO in its scope, then
//! decide whether the numbers can be trusted at all.

use serde::Serialize;
use stampede_common::plan::{Model, Plan};
use stampede_common::slo::{Metric, Scope, Status};
use stampede_common::stats::RunStats;

use crate::judge::{FaultWindow, IntervalSource};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
    /// The client could not keep its schedule: it measured itself.
    Invalid,
    /// Data is missing: an agent was lost or intervals never arrived.
    Incomplete,
}

impl Verdict {
    /// The exit code contract: 0 pass or warn, 1 an SLO failed, 3 the numbers
    /// cannot be trusted. (2, usage or infrastructure errors, never reaches a verdict.)
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Pass | Verdict::Warn => 0,
            Verdict::Fail => 1,
            Verdict::Invalid | Verdict::Incomplete => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
            Verdict::Invalid => "invalid",
            Verdict::Incomplete => "incomplete",
        }
    }
}

pub use crate::judge::SloResult;

/// A metric over a scope without a time window, from `stats` (the run's
/// totals, or a few intervals merged).
pub fn observe(plan: &Plan, stats: &RunStats, metric: &Metric, scope: &Scope) -> Option<f64> {
    let parts = scope.parts().ok()?;
    let seconds = match parts.phase.and_then(|n| plan.phase_index(n)) {
        Some(i) => plan.phases[i].duration.as_duration().as_secs_f64(),
        None => plan.duration().as_secs_f64(),
    };
    crate::judge::observe(plan, metric, stats, &crate::judge::KeyFilter::new(plan, &parts), seconds)
}

/// Every SLO of the plan, judged by [`crate::judge::evaluate`].
pub fn evaluate_slos(plan: &Plan, total: &RunStats, source: &dyn IntervalSource, start_unix_nanos: i64, windows: &[FaultWindow]) -> Vec<SloResult> {
    crate::judge::evaluate(plan, total, source, start_unix_nanos, windows)
}

/// On an incomplete run: a rule that passed or warned on partial numbers is
/// `not_evaluated`; a failed one stays failed (what was measured already breaks it).
pub fn not_evaluated(mut slo: SloResult) -> SloResult {
    if matches!(slo.status, Status::Pass | Status::Warn) {
        slo.status = Status::NotEvaluated;
    }
    slo
}

/// Open-model phases where the client missed its schedule (drops or late
/// starts beyond the limit), fleet-wide.
pub fn saturated_phases(plan: &Plan, stats: &RunStats) -> Vec<String> {
    plan.phases
        .iter()
        .enumerate()
        .filter(|(i, p)| p.load.model == Model::Open && stats.schedule.get(&(*i as u32)).is_some_and(|s| s.saturated()))
        .map(|(_, p)| p.name.clone())
        .collect()
}

/// Trust comes first: missing data, then a saturated client, then the SLOs.
pub fn decide(incomplete: bool, saturated: bool, slos: &[SloResult]) -> Verdict {
    if incomplete {
        Verdict::Incomplete
    } else if saturated {
        Verdict::Invalid
    } else if slos.iter().any(|s| s.status == Status::Fail) {
        Verdict::Fail
    } else if slos.iter().any(|s| s.status == Status::Warn) {
        Verdict::Warn
    } else {
        Verdict::Pass
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slo(status: Status) -> SloResult {
        SloResult {
            rule: String::new(),
            name: None,
            metric: String::new(),
            scope: String::new(),
            observed: None,
            unit: "ms",
            threshold: String::new(),
            warn_threshold: None,
            status,
            window: None,
            decided_by: None,
            detail: None,
        }
    }

    #[test]
    fn trust_outranks_slos() {
        assert_eq!(decide(false, false, &[slo(Status::Pass), slo(Status::Warn)]), Verdict::Warn);
        assert_eq!(decide(false, false, &[slo(Status::Warn), slo(Status::Fail)]), Verdict::Fail);
        assert_eq!(decide(false, true, &[slo(Status::Fail)]), Verdict::Invalid);
        assert_eq!(decide(true, true, &[]), Verdict::Incomplete);
        assert_eq!(decide(false, false, &[]), Verdict::Pass);
        assert_eq!(Verdict::Warn.exit_code(), 0);
        assert_eq!(Verdict::Incomplete.exit_code(), 3);
    }
}
