//! From merged numbers to a verdict: every trust decision of a run lives
//! here — why it stopped (interrupted, aborted), whether its numbers are
//! complete (agents lost, refused, short), whether they are valid (a
//! saturated client, a fault that did not happen or did not go away) — and
//! the SLOs evaluated in their scopes. The report only renders the result.

use std::fmt;

use serde::Serialize;
use stampede_common::plan::{Model, Plan};
use stampede_common::slo::{Metric, Scope, Status};
use stampede_common::stats::RunStats;

use crate::judge::{FaultWindow, IntervalSource};

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

pub use crate::judge::SloResult;

/// A metric over a scope without a time window, from `stats` (the run's
/// totals, or a few intervals merged).
pub fn observe(plan: &Plan, stats: &RunStats, metric: &Metric, scope: &Scope) -> Option<f64> {
    let parts = scope.parts().ok()?;
    let seconds = match parts.phase.and_then(|n| plan.phase_index(n)) {
        Some(i) => plan.phases[i].length().as_secs_f64(),
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

/// An iterations phase whose count was not all sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShortIterations {
    pub phase: String,
    pub planned: u64,
    pub done: u64,
    pub max_duration: std::time::Duration,
}

impl fmt::Display for ShortIterations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "phase {}: {} of {} iterations did not run by its max_duration ({:?}); the rules are not evaluated on a partial count",
            self.phase,
            self.planned.saturating_sub(self.done),
            self.planned,
            self.max_duration
        )
    }
}

/// Iterations phases with fewer requests than their count, fleet-wide.
/// Every iteration started is a request counted in its phase, whatever its
/// outcome (an error, a timeout, `aborted`), so the difference is exactly
/// the iterations that never started.
pub fn short_iterations(plan: &Plan, stats: &RunStats) -> Vec<ShortIterations> {
    plan.phases
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let planned = p.load.iterations()?;
            let done = stats.steps.iter().filter(|(k, _)| k.phase == i as u32).map(|(_, r)| r.requests).sum::<u64>();
            (done < planned).then(|| ShortIterations { phase: p.name.clone(), planned, done, max_duration: p.length() })
        })
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
pub fn judge(plan: &Plan, agg: &Aggregate, faults: &FaultLog, stop: Option<&Stop>, start_unix_nanos: i64) -> Judgment {
    let total = agg.total_stats();
    let stats = &total;
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

    let slos = evaluate_slos(plan, stats, agg, start_unix_nanos, &faults.windows());
    // An iterations phase that did not do its count by its max_duration:
    // the drill did not do what the plan says (k6 users expect the count
    // of iterations that did not run), and what it did is partial.
    let short = short_iterations(plan, stats);
    for s in &short {
        reasons.push(s.to_string());
    }
    // Partial data vouches for nothing: a rule it satisfies is not a pass.
    let slos: Vec<SloResult> = if incomplete || !short.is_empty() { slos.into_iter().map(not_evaluated).collect() } else { slos };

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
    let verdict = match decide(incomplete, !saturated.is_empty() || !broken.is_empty(), &slos) {
        _ if aborted => Verdict::Fail,
        Verdict::Pass | Verdict::Warn if !short.is_empty() => Verdict::Fail,
        v => v,
    };
    Judgment { verdict, reasons, slos }
}

/// The plan's steady state did not hold after the run (`why` names the
/// probe): a drill that leaves its service unwell failed, whatever its SLOs
/// say. Missing or untrustworthy numbers still say so first (incomplete,
/// invalid); the reason is given either way.
pub fn steady_state_broken(j: &mut Judgment, why: &str) {
    j.reasons.push(format!("steady state did not hold after the run: {why}"));
    if matches!(j.verdict, Verdict::Pass | Verdict::Warn) {
        j.verdict = Verdict::Fail;
    }
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
        let healthy = judge(&plan, &agg, &faults, None, 0);
        assert_eq!((healthy.verdict, healthy.reasons.len()), (Verdict::Pass, 0), "{:?}", healthy.reasons);

        let aborted = judge(&plan, &agg, &faults, Some(&Stop::Aborted { rule: "error_rate > 20% for 10s".into() }), 0);
        assert_eq!(aborted.verdict, Verdict::Fail);
        assert_eq!(aborted.verdict.exit_code(), 1);
        assert_eq!(aborted.reasons, vec!["aborted by error_rate > 20% for 10s".to_string()]);
        assert_eq!(aborted.slos[0].status, Status::NotEvaluated, "a stopped run's numbers vouch for no pass");

        let mut broken = judge(&plan, &agg, &faults, None, 0);
        steady_state_broken(&mut broken, "health: cannot connect to 127.0.0.1:9");
        assert_eq!(broken.verdict, Verdict::Fail, "a passing run whose steady state is gone after it fails");
        assert_eq!(broken.reasons, vec!["steady state did not hold after the run: health: cannot connect to 127.0.0.1:9".to_string()]);

        let interrupted = judge(&plan, &agg, &faults, Some(&Stop::Interrupted("SIGINT".into())), 0);
        assert_eq!(interrupted.verdict, Verdict::Incomplete);
        assert_eq!(interrupted.verdict.exit_code(), 3);
        assert_eq!(interrupted.reasons, vec!["interrupted: SIGINT; the run was stopped before its end".to_string()]);
        let mut interrupted = interrupted;
        steady_state_broken(&mut interrupted, "health: x");
        assert_eq!(interrupted.verdict, Verdict::Incomplete, "missing numbers still come first");
    }
}
