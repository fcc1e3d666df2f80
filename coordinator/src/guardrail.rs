//! Abort guardrails (`abort_when`), evaluated live: each interval is judged
//! as soon as every agent of the run has sent it (or finished, or was lost),
//! by the interval in which requests *completed* — a guardrail must act
//! fast, so it does not wait for the due-interval timeline to become final.
//! A rule trips when its condition holds on each of its last `for` worth of
//! consecutive intervals (Prometheus' `for:`); an interval without a value
//! (no request in the scope) or missing altogether breaks the streak.
//!
//! The value of a metric in a scope comes from one function, [`observe`],
//! which calls the SLOs' own (`judge::observe`), so the guardrails speak
//! exactly the SLO language.

use std::collections::BTreeMap;
use std::time::Duration;

use stampede_common::plan::{AbortRule, Plan};
use stampede_common::slo::{Metric, Scope, Unit};
use stampede_common::stats::{AccStats, RunStats};
use stampede_proto::convert::add_steps;
use stampede_proto::v1::Snapshot;

use crate::aggregate::Aggregate;

/// A guardrail that tripped: the rule as written, and what it saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Trip {
    /// `error_rate > 20% for 10s`: the report's reason is `aborted by` it.
    pub rule: String,
    /// The metric's value in the interval that completed the streak, in its unit
    /// (ms, a ratio, req/s).
    pub observed: f64,
    pub metric: Metric,
    /// The intervals the condition held on, the last one included.
    pub intervals: u64,
    pub last_seq: u64,
}

impl Trip {
    /// For the progress stream: `abort guardrail error_rate > 20% for 10s
    /// tripped: error_rate 48.20% on 10 interval(s) in a row (through interval 12)`.
    pub fn describe(&self) -> String {
        let value = match self.metric.unit() {
            Unit::Percent => format!("{:.2}%", self.observed * 100.0),
            Unit::Rate => format!("{:.1}/s", self.observed),
            Unit::Count => format!("{:.0}", self.observed),
            Unit::Millis => format!("{:.1}ms", self.observed),
        };
        format!(
            "abort guardrail `{}` tripped: {} {value} on {} interval(s) in a row (through interval {}); stopping the load and reverting every fault",
            self.rule, self.metric, self.intervals, self.last_seq
        )
    }
}

struct Armed {
    rule: AbortRule,
    needed: u64,
    /// Consecutive intervals the condition held on, ending at the last judged one.
    streak: u64,
}

pub struct Guardrails {
    rules: Vec<Armed>,
    interval: Duration,
    /// Intervals some agent has not sent yet, merged as they come.
    pending: BTreeMap<u64, AccStats>,
    /// The last interval judged.
    judged: Option<u64>,
    /// Inflated histogram bytes, reused from snapshot to snapshot.
    scratch: Vec<u8>,
}

impl Guardrails {
    pub fn new(plan: &Plan) -> Guardrails {
        let interval = plan.interval.as_duration();
        let rules = plan.abort_when.iter().map(|r| Armed { needed: r.intervals(interval), rule: r.clone(), streak: 0 }).collect();
        Guardrails { rules, interval, pending: BTreeMap::new(), judged: None, scratch: Vec::new() }
    }

    /// Takes a snapshot the run accepted (`agg` already counts it) and
    /// judges every interval it completed; the first rule to trip, if any.
    pub fn on_snapshot(&mut self, plan: &Plan, s: &Snapshot, agg: &Aggregate) -> Option<Trip> {
        if self.rules.is_empty() || self.judged.is_some_and(|j| s.seq <= j) {
            return None;
        }
        // Already checked and merged once by `Aggregate`: it decodes.
        let slot = self.pending.entry(s.seq).or_default();
        add_steps(&s.steps, &s.phases, None, &mut [slot], |_| 0, &mut self.scratch).ok()?;
        self.judge_complete(plan, agg)
    }

    /// Judges, in order, every pending interval every agent has delivered.
    pub fn judge_complete(&mut self, plan: &Plan, agg: &Aggregate) -> Option<Trip> {
        while let Some((&seq, _)) = self.pending.first_key_value() {
            // An agent sends its intervals in order (its outbox resends a
            // backlog oldest first), so once it delivered a later one, one
            // it has not delivered never will be (evicted): judging must not
            // wait for it, or the guardrails would stall for the rest of the run.
            let complete = agg.agents.values().all(|a| {
                a.seqs.contains(&seq) || a.done() || a.last_seq.is_some_and(|l| l < seq) || a.seqs.last().is_some_and(|&l| l > seq)
            });
            if !complete {
                return None;
            }
            let stats = self.pending.remove(&seq).expect("looked up above").to_run_stats();
            if let Some(trip) = self.judge(plan, seq, &stats) {
                return Some(trip);
            }
        }
        None
    }

    fn judge(&mut self, plan: &Plan, seq: u64, stats: &RunStats) -> Option<Trip> {
        let follows = self.judged.is_none_or(|j| seq == j + 1);
        self.judged = Some(seq);
        let mut tripped = None;
        for armed in &mut self.rules {
            let value = observe(plan, stats, &armed.rule.metric, &armed.rule.scope, self.interval);
            match value.filter(|v| armed.rule.threshold.holds(*v)) {
                Some(v) => {
                    armed.streak = if follows { armed.streak + 1 } else { 1 };
                    if armed.streak >= armed.needed && tripped.is_none() {
                        tripped = Some(Trip { rule: armed.rule.to_string(), observed: v, metric: armed.rule.metric.clone(), intervals: armed.streak, last_seq: seq });
                    }
                }
                None => armed.streak = 0,
            }
        }
        tripped
    }
}

/// A metric's value in a scope over one interval's records: the SLOs' own
/// measure (`judge::observe`), with throughput per second of the interval.
pub fn observe(plan: &Plan, stats: &RunStats, metric: &Metric, scope: &Scope, interval: Duration) -> Option<f64> {
    let parts = scope.parts().ok()?;
    crate::judge::observe(plan, metric, stats, &crate::judge::KeyFilter::new(plan, &parts), interval.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use stampede_common::stats::{ErrorKind, StepKey, StepRecord};

    use super::*;

    fn plan() -> Plan {
        let text = "name: t\ntarget: http://127.0.0.1:9\nphases:\n  - { name: p, duration: 30s, load: { model: open, rate: 10/s } }\nsteps:\n  - { name: s }\nabort_when:\n  - { metric: error_rate, threshold: \"> 20%\", for: 3s }\n";
        stampede_common::plan::load_str(text, stampede_common::plan::Format::Yaml, std::path::Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"))
    }

    /// One interval's records: `ok` successes and `failed` 5xx.
    fn interval(ok: u64, failed: u64) -> RunStats {
        let mut stats = RunStats::default();
        let good = StepRecord { requests: ok, ..StepRecord::default() };
        let mut bad = StepRecord { requests: failed, ..StepRecord::default() };
        bad.errors[ErrorKind::for_status(500) as usize] = failed;
        stats.steps.insert(StepKey { phase: 0, step: 0, ok: true }, good);
        stats.steps.insert(StepKey { phase: 0, step: 0, ok: false }, bad);
        stats
    }

    #[test]
    fn a_guardrail_trips_only_when_its_condition_holds_for_every_interval_of_for() {
        let plan = plan();
        let mut g = Guardrails::new(&plan);
        // Two bad intervals, a healthy one (the streak restarts), an empty
        // one (no value: it restarts too), then three bad ones in a row.
        let seqs = [(0, interval(5, 5)), (1, interval(5, 5)), (2, interval(10, 0)), (3, interval(5, 5)), (4, interval(0, 0)), (5, interval(5, 5)), (6, interval(5, 5))];
        for (seq, stats) in &seqs {
            assert_eq!(g.judge(&plan, *seq, stats), None, "tripped early at interval {seq}");
        }
        let trip = g.judge(&plan, 7, &interval(4, 6)).expect("three bad intervals in a row trip a 3s rule");
        assert_eq!((trip.rule.as_str(), trip.intervals, trip.last_seq), ("error_rate > 20% for 3s", 3, 7));
        assert!((trip.observed - 0.6).abs() < 1e-9, "{}", trip.observed);
        assert!(trip.describe().contains("60.00%"), "{}", trip.describe());
    }

    #[test]
    fn a_missing_interval_breaks_the_streak() {
        let plan = plan();
        let mut g = Guardrails::new(&plan);
        assert_eq!(g.judge(&plan, 0, &interval(5, 5)), None);
        assert_eq!(g.judge(&plan, 1, &interval(5, 5)), None);
        assert_eq!(g.judge(&plan, 3, &interval(5, 5)), None, "interval 2 never arrived: not three in a row");
    }
}
