//! From merged numbers to a verdict: evaluate every SLO in its scope, then
//! decide whether the numbers can be trusted at all.

use serde::Serialize;
use stampede_common::plan::{Model, Plan};
use stampede_common::slo::{Metric, Scope, Slo, Status};
use stampede_common::stats::{RunStats, StepKey};

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

#[derive(Debug, Clone, Serialize)]
pub struct SloResult {
    /// The rule as written: `p99 < 400ms`.
    pub rule: String,
    pub metric: String,
    pub scope: String,
    /// In the metric's unit: ms for latency, a ratio for error_rate, req/s for throughput.
    pub observed: Option<f64>,
    pub threshold: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warn_threshold: Option<String>,
    pub status: Status,
}

type KeyFilter = Box<dyn Fn(&StepKey) -> bool>;

/// Which records a scope covers, and how long it lasted (for throughput).
fn scope_filter(plan: &Plan, scope: &Scope) -> (KeyFilter, f64) {
    match scope {
        Scope::Run => (Box::new(|_| true), plan.duration().as_secs_f64()),
        Scope::Phase(name) => {
            let i = plan.phase_index(name).expect("validated") as u32;
            (Box::new(move |k| k.phase == i), plan.phases[i as usize].duration.as_duration().as_secs_f64())
        }
        Scope::Step(name) => {
            let i = plan.step_index(name).expect("validated") as u32;
            (Box::new(move |k| k.step == i), plan.duration().as_secs_f64())
        }
    }
}

pub fn observe(plan: &Plan, stats: &RunStats, metric: Metric, scope: &Scope) -> Option<f64> {
    let (filter, seconds) = scope_filter(plan, scope);
    let s = stats.summarize(filter);
    match metric {
        Metric::ErrorRate => (s.requests > 0).then(|| s.error_rate()),
        Metric::Throughput => Some(s.sent() as f64 / seconds),
        Metric::Max => s.max_ms(),
        m => s.latency_ms(m.quantile().expect("latency metrics have a quantile")),
    }
}

pub fn evaluate_slos(plan: &Plan, stats: &RunStats) -> Vec<SloResult> {
    plan.slos.iter().map(|slo| evaluate(plan, stats, slo)).collect()
}

fn evaluate(plan: &Plan, stats: &RunStats, slo: &Slo) -> SloResult {
    let observed = observe(plan, stats, slo.metric, &slo.scope);
    SloResult {
        rule: format!("{} {}", slo.metric, slo.pass),
        metric: slo.metric.to_string(),
        scope: slo.scope.to_string(),
        observed,
        threshold: slo.pass.to_string(),
        warn_threshold: slo.warn.as_ref().map(ToString::to_string),
        status: slo.evaluate(observed),
    }
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
        SloResult { rule: String::new(), metric: String::new(), scope: String::new(), observed: None, threshold: String::new(), warn_threshold: None, status }
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
