//! One metric's value over some records: which records a scope covers
//! (its phase, step or probe; load only unless it is a probe's), and the
//! number the metric makes of them.

use stampede_common::plan::{probe_names, Plan};
use stampede_common::slo::{Metric, Parts};
use stampede_common::stats::{ErrorKind, RunStats, StepKey, StepRecord};

/// Which records a scope's parts cover: a probe's own, or else the load's
/// (never a probe's), narrowed to a phase and a step.
pub struct KeyFilter {
    phases: u32,
    phase: Option<u32>,
    step: Option<u32>,
    probe: Option<u32>,
    /// `step:` names a flow request (`STEP/REQUEST`): its records carry
    /// the flow phases, after the probes' (contract F).
    flow: bool,
}

impl KeyFilter {
    /// The names were checked when the plan loaded.
    pub fn new(plan: &Plan, parts: &Parts<'_>) -> Self {
        let index = |i: Option<usize>| i.map(|i| i as u32);
        let step = parts.step.and_then(|n| plan.stat_step_index(n));
        let flow = step.is_some_and(|s| s >= plan.flow_slot_base());
        let phase = parts.phase.and_then(|n| plan.phase_index(n));
        KeyFilter {
            phases: plan.phases.len() as u32,
            phase: if flow { phase.map(|p| plan.flow_phase(p)) } else { index(phase) },
            step: index(step),
            // Contract P: probe i is recorded as step steps.len() + i.
            probe: index(parts.probe.and_then(|n| probe_names(plan).iter().position(|p| *p == n)).map(|i| plan.steps.len() + i)),
            flow,
        }
    }

    pub fn covers(&self, k: &StepKey) -> bool {
        if let Some(step) = self.probe {
            return k.phase == self.phases && k.step == step;
        }
        if self.flow {
            return k.phase > self.phases && self.phase.is_none_or(|p| k.phase == p) && self.step == Some(k.step);
        }
        k.phase < self.phases && self.phase.is_none_or(|p| k.phase == p) && self.step.is_none_or(|s| k.step == s)
    }

    /// For a check's tally: a check belongs to one step, probe or flow
    /// request, so a scope without `step:` also covers the flow requests'
    /// records (contract F) — a check is never counted twice.
    fn covers_check(&self, k: &StepKey) -> bool {
        let flow_phase = || k.phase > self.phases && self.phase.is_none_or(|p| k.phase == p + self.phases + 1);
        self.covers(k) || (self.probe.is_none() && self.step.is_none() && flow_phase())
    }
}

fn rate(n: u64, of: u64) -> Option<f64> {
    (of > 0).then(|| n as f64 / of as f64)
}

/// `metric` over the records of `stats` that `filter` covers, lasting
/// `seconds` (for throughput). `None`: nothing to observe (no request, no
/// success for a latency, no evaluation of a check) — which never passes.
/// Time rules are not a value of one set of records: `None`.
pub fn observe(plan: &Plan, metric: &Metric, stats: &RunStats, filter: &KeyFilter, seconds: f64) -> Option<f64> {
    let s = stats.summarize(|k| filter.covers(k));
    let records = || stats.steps.iter().filter(|(k, _)| filter.covers(k)).map(|(_, r)| r);
    match metric {
        Metric::ErrorRate => rate(s.errors, s.requests),
        Metric::Errors(kind) => (s.requests > 0).then_some(s.errors_by_kind[*kind as usize] as f64),
        Metric::TimeoutRate => rate(s.errors_by_kind[ErrorKind::Timeout as usize], s.requests),
        Metric::DropRate => rate(s.errors_by_kind[ErrorKind::Dropped as usize], s.requests),
        Metric::Throughput => Some(s.sent() as f64 / seconds),
        Metric::Max => s.max_ms(),
        Metric::Status(m) | Metric::StatusCount(m) => {
            let n = records().flat_map(statuses).filter(|(code, _)| m.contains(*code)).fold(0u64, |a, (_, n)| a.saturating_add(n));
            match metric {
                Metric::Status(_) => rate(n, s.requests),
                _ => (s.requests > 0).then_some(n as f64),
            }
        }
        Metric::Check(name) => {
            let index = check_index(plan, name)?;
            let tallied = stats.steps.iter().filter(|(k, _)| filter.covers_check(k)).map(|(_, r)| r);
            let (passed, failed) = tallied.map(|r| check_tally(r, index)).fold((0u64, 0u64), |(p, f), (a, b)| (p.saturating_add(a), f.saturating_add(b)));
            rate(passed, passed.saturating_add(failed))
        }
        Metric::RecoveryTime | Metric::MaxStreak(_) => None,
        m => s.latency_ms(m.quantile().expect("latency metrics have a quantile")),
    }
}

// Contract S: every response counted by status, each check by its
// plan-wide index (`Plan::check_names`).
fn statuses(r: &StepRecord) -> impl Iterator<Item = (u16, u64)> + '_ {
    r.statuses.iter().map(|(c, n)| (*c, *n))
}

fn check_tally(r: &StepRecord, index: u32) -> (u64, u64) {
    r.checks.get(&index).map_or((0, 0), |c| (c.passed, c.failed))
}

fn check_index(plan: &Plan, name: &str) -> Option<u32> {
    plan.check_names().iter().position(|n| *n == name).map(|i| i as u32)
}
