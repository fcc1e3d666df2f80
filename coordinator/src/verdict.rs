//! From merged numbers to a verdict: every trust decision of a run lives
//! here — why it stopped (interrupted, aborted), whether its numbers are
//! complete (agents lost, refused, short), whether they are valid (a
//! saturated client, a fault that did not happen or did not go away) — and
//! the SLOs evaluated in their scopes. The report only renders the result.

use std::fmt;

use serde::Serialize;
use stampede_common::plan::{Model, Plan};
use stampede_common::slo::{Metric, Scope, Slo, Status};
use stampede_common::stats::{RunStats, StepKey};

use stampede_proto::v1::FaultStatus;

use crate::aggregate::{AgentProgress, Aggregate};
use crate::faults::FaultLog;

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

/// Why a run was stopped before its planned end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The operator stopped it (a signal, a standing coordinator's
    /// shutdown): the numbers are short of the plan → `incomplete`, exit 3.
    Interrupted(String),
    /// A guardrail of the plan tripped (`abort_when`): the drill itself
    /// failed → `fail`, reason `aborted by <rule>`, exit 1.
    Aborted { rule: String },
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::Interrupted(reason) => write!(f, "interrupted: {reason}"),
            Stop::Aborted { rule } => write!(f, "aborted by {rule}"),
        }
    }
}

/// The verdict of a run, why (for anything but pass / warn / fail from the
/// SLOs), and every SLO's result as it counts.
#[derive(Debug, Clone)]
pub struct Judgment {
    pub verdict: Verdict,
    pub reasons: Vec<String>,
    pub slos: Vec<SloResult>,
}

/// Judges a finished run. Trust first: an abort by a guardrail fails the
/// run; missing data (an interrupt, an agent short of data) makes it
/// incomplete; a saturated client or a fault that failed makes it invalid;
/// only then do the SLOs decide. A rule that passed on numbers the run
/// cannot vouch for (stopped early, incomplete) is `not_evaluated`.
pub fn judge(plan: &Plan, agg: &Aggregate, faults: &FaultLog, stop: Option<&Stop>) -> Judgment {
    let stats = &agg.total;
    let mut reasons: Vec<String> = stop
        .map(|s| match s {
            Stop::Interrupted(_) => format!("{s}; the run was stopped before its end"),
            Stop::Aborted { .. } => s.to_string(),
        })
        .into_iter()
        .collect();
    let run_last = agg.run_last_seq();
    // After a guardrail's abort, an agent that finished was stopped on the
    // run's own request: its short share is the abort, already the reason.
    // One that was lost is still news.
    let stopped_by_us = |a: &AgentProgress| matches!(stop, Some(Stop::Aborted { .. })) && a.lost.is_none() && a.finished.is_some();
    reasons.extend(agg.agents.iter().filter(|(_, a)| !stopped_by_us(a)).filter_map(|(id, a)| agent_incomplete(id, a, &a.missing(run_last))));
    let incomplete = matches!(stop, Some(Stop::Interrupted(_))) || !reasons.is_empty();
    let aborted = matches!(stop, Some(Stop::Aborted { .. }));

    let slos = evaluate_slos(plan, stats);
    // Partial data vouches for nothing: a rule it satisfies is not a pass.
    let slos: Vec<SloResult> = if incomplete { slos.into_iter().map(not_evaluated).collect() } else { slos };

    // A fault that did not happen, or did not go away, means the run did not
    // test what the plan describes: its numbers cannot vouch for the SLOs.
    let mut broken: Vec<_> = faults.events.values().filter(|e| matches!(e.fault_status(), FaultStatus::Failed | FaultStatus::RevertFailed)).collect();
    broken.sort_by(|a, b| a.scheduled_unix_nanos.cmp(&b.scheduled_unix_nanos).then(a.agent_id.cmp(&b.agent_id)));
    for e in &broken {
        reasons.push(format!("fault {} on {} {}: {}", e.fault, e.agent_id, e.fault_status().name().replace('_', " "), e.error));
    }
    let saturated = saturated_phases(plan, stats);
    for p in &saturated {
        let sch = plan.phase_index(p).and_then(|i| stats.schedule.get(&(i as u32))).cloned().unwrap_or_default();
        reasons.push(format!(
            "phase {p}: the client missed more than {}% of its schedule ({} of {} arrivals dropped because max_in_flight requests were already waiting, {} started late); it measured itself, not the server",
            stampede_common::stats::SATURATION_LIMIT * 100.0,
            sch.dropped,
            sch.scheduled,
            sch.late,
        ));
    }
    let verdict = if aborted { Verdict::Fail } else { decide(incomplete, !saturated.is_empty() || !broken.is_empty(), &slos) };
    Judgment { verdict, reasons, slos }
}

/// Why one agent's numbers are incomplete, if they are. `missing` is the
/// intervals it never delivered.
pub fn agent_incomplete(id: &str, a: &AgentProgress, missing: &[u64]) -> Option<String> {
    if a.complete() {
        return None;
    }
    Some(match (&a.lost, &a.finished) {
        (Some(l), _) if a.refused => format!("agent {id} was refused and cut off: {l}"),
        (Some(l), _) if missing.is_empty() => format!("agent {id} was lost: {l}"),
        (Some(l), _) => format!("agent {id} was lost: {l}; intervals missing: {}", intervals_text(missing)),
        (None, Some(fin)) if !fin.error.is_empty() => format!("agent {id} failed: {}", fin.error),
        (None, Some(fin)) if fin.evicted > 0 => {
            format!("agent {id}'s resend buffer overflowed while it could not reach the coordinator: {} message(s) dropped", fin.evicted)
        }
        (None, Some(fin)) if fin.requests != a.requests => {
            format!("agent {id} counted {} requests but {} reached the coordinator", fin.requests, a.requests)
        }
        _ => format!("agent {id} did not deliver every interval (missing: {})", intervals_text(missing)),
    })
}

/// Interval numbers as ranges: `0-3, 7, 9-12`.
fn intervals_text(seqs: &[u64]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < seqs.len() {
        let mut j = i;
        while j + 1 < seqs.len() && seqs[j + 1] == seqs[j] + 1 {
            j += 1;
        }
        parts.push(if i == j { seqs[i].to_string() } else { format!("{}-{}", seqs[i], seqs[j]) });
        i = j + 1;
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
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

    #[test]
    fn an_abort_fails_the_run_naming_its_rule_and_an_interrupt_leaves_it_incomplete() {
        let plan = stampede_common::plan::load_str(
            "name: t\ntarget: http://127.0.0.1:9\nphases:\n  - { name: p, duration: 1s, load: { model: open, rate: 1/s } }\nsteps:\n  - { name: s, request: { method: GET, path: / } }\nslos:\n  - { metric: throughput, pass: \">= 0/s\" }\n",
            stampede_common::plan::Format::Yaml,
            std::path::Path::new("t.yaml"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let agg = Aggregate::new(std::iter::empty(), std::time::Duration::from_secs(1), std::time::Duration::from_secs(1));
        let faults = FaultLog::default();
        let healthy = judge(&plan, &agg, &faults, None);
        assert_eq!((healthy.verdict, healthy.reasons.len()), (Verdict::Pass, 0), "{:?}", healthy.reasons);

        let aborted = judge(&plan, &agg, &faults, Some(&Stop::Aborted { rule: "error_rate > 20% for 10s".into() }));
        assert_eq!(aborted.verdict, Verdict::Fail);
        assert_eq!(aborted.verdict.exit_code(), 1);
        assert_eq!(aborted.reasons, vec!["aborted by error_rate > 20% for 10s".to_string()]);
        assert_eq!(aborted.slos[0].status, Status::NotEvaluated, "a stopped run's numbers vouch for no pass");

        let interrupted = judge(&plan, &agg, &faults, Some(&Stop::Interrupted("SIGINT".into())));
        assert_eq!(interrupted.verdict, Verdict::Incomplete);
        assert_eq!(interrupted.verdict.exit_code(), 3);
        assert_eq!(interrupted.reasons, vec!["interrupted: SIGINT; the run was stopped before its end".to_string()]);
    }
}
