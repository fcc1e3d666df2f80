//! The judge: every SLO rule of a plan, evaluated over the run's totals and
//! its timeline by due interval (contract J).
//!
//! - Scopes without a time window (`run`, `phase:X`, `step:X`, `probe:X` and
//!   their combinations) are judged on the run's totals, merged exactly.
//! - Windowed scopes (`during:F`, `after:F`, `before:F`, `outside:faults`)
//!   merge the histograms and counters of the intervals overlapping the
//!   window (`window.rs`).
//! - `max_streak` and `recovery_time` walk the intervals one by one (`series.rs`).
//!
//! No data never passes: an empty window, a fault that never applied or
//! never reverted, a series without requests are `fail`, saying why.

mod observe;
mod series;
mod source;
mod window;

#[cfg(test)]
mod tests;

use std::time::Duration;

use serde::Serialize;
use stampede_common::plan::Plan;
use stampede_common::slo::{Metric, Parts, Slo, Status};
use stampede_common::stats::RunStats;

pub use observe::{observe, KeyFilter};
pub use window::Span;
use window::Grid;

/// The run's timeline by due interval (contract T): interval `seq` covers
/// [start + seq·interval, start + (seq+1)·interval).
pub trait IntervalSource {
    fn interval(&self) -> Duration;
    fn seqs(&self) -> Vec<u64>;
    fn stats(&self, seq: u64) -> Option<RunStats>;
}

/// One fault on one agent, as applied and reverted (coordinator clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultWindow {
    pub fault: String,
    pub applied_unix_nanos: i64,
    /// `None`: not reverted within the run.
    pub reverted_unix_nanos: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SloResult {
    /// The rule as written: `p99 < 400ms`.
    pub rule: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub metric: String,
    pub scope: String,
    /// In `unit`: ms for latency and time rules, a ratio for rates, req/s
    /// for throughput, a number for counts.
    pub observed: Option<f64>,
    pub unit: &'static str,
    pub threshold: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warn_threshold: Option<String>,
    pub status: Status,
    /// The time window judged (windowed scopes and time rules), seconds
    /// after the run's start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<Span>,
    /// The intervals that decided it: those merged for a windowed scope,
    /// the longest streak, the intervals in which the rules held again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<Span>,
    /// Why there is no value, or what it means (`not recovered after 23.0 s`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What judging one rule found, before its band.
#[derive(Debug, Default)]
struct Judged {
    observed: Option<f64>,
    window: Option<Span>,
    decided_by: Option<Span>,
    detail: Option<String>,
}

impl Judged {
    fn no_data(why: &str) -> Self {
        Judged { detail: Some(why.to_string()), ..Judged::default() }
    }
}

/// Evaluates every rule of `plan`. `total` is the run's exact merge; the
/// `source` its timeline; `windows` the faults as applied (one per fault
/// and agent).
pub fn evaluate(plan: &Plan, total: &RunStats, source: &dyn IntervalSource, start_unix_nanos: i64, windows: &[FaultWindow]) -> Vec<SloResult> {
    let interval_ns = source.interval().as_nanos().min(i64::MAX as u128) as i64;
    let grid = Grid::new(interval_ns.max(1), source.seqs(), start_unix_nanos, windows);
    plan.slos.iter().map(|slo| judge(plan, total, source, &grid, slo)).collect()
}

fn judge(plan: &Plan, total: &RunStats, source: &dyn IntervalSource, grid: &Grid, slo: &Slo) -> SloResult {
    let parts = slo.scope.parts().expect("scopes were checked when the plan loaded");
    let judged = match &slo.metric {
        Metric::RecoveryTime => series::recovery_time(plan, source, grid, slo),
        Metric::MaxStreak(cond) => {
            let filter = KeyFilter::new(plan, &parts);
            match series_window(plan, grid, slo, &parts) {
                Ok((seqs, window)) => Judged { window, ..series::max_streak(plan, source, grid, cond, &filter, &seqs) },
                Err(why) => Judged::no_data(&why),
            }
        }
        metric => match parts.window {
            None => Judged { observed: observe(plan, metric, total, &KeyFilter::new(plan, &parts), totals_seconds(plan, total, &parts)), ..Judged::default() },
            Some(w) => windowed(plan, source, grid, slo, &parts, w),
        },
    };
    let observed = judged.observed;
    let detail = judged.detail.or_else(|| observed.is_none().then(|| "no data: nothing in the scope to measure".to_string()));
    SloResult {
        rule: slo.rule_text(),
        name: slo.name.clone(),
        metric: slo.metric.to_string(),
        scope: slo.scope.to_string(),
        observed,
        unit: slo.metric.unit().name(),
        threshold: slo.pass.to_string(),
        warn_threshold: slo.warn.as_ref().map(ToString::to_string),
        status: slo.evaluate(observed),
        window: judged.window,
        decided_by: judged.decided_by,
        detail,
    }
}

/// How long a totals scope lasted, for throughput: its phase's planned
/// duration, else the whole run's.
fn totals_seconds(plan: &Plan, total: &RunStats, parts: &Parts<'_>) -> f64 {
    // An iterations phase done early: over the time it took (crate::active).
    match parts.phase.and_then(|n| plan.phase_index(n)) {
        Some(i) => crate::active::phase_seconds(plan, total, i),
        None => crate::active::run_seconds(plan, total),
    }
}

/// The intervals a series rule walks: its time window's, else its phase's,
/// else every interval of the run.
fn series_window(plan: &Plan, grid: &Grid, slo: &Slo, parts: &Parts<'_>) -> Result<(Vec<u64>, Option<Span>), String> {
    if let Some(w) = parts.window {
        let c = grid.resolve(w, slo.length.map(|d| d.as_duration()))?;
        return Ok((c.seqs, Some(c.window)));
    }
    if let Some(i) = parts.phase.and_then(|n| plan.phase_index(n)) {
        let c = grid.phase(plan, i);
        return Ok((c.seqs, Some(c.window)));
    }
    Ok((grid.seqs.clone(), None))
}

/// A rule over a time window: the overlapping intervals' records merged.
fn windowed(plan: &Plan, source: &dyn IntervalSource, grid: &Grid, slo: &Slo, parts: &Parts<'_>, w: &stampede_common::slo::Scope) -> Judged {
    let covered = match grid.resolve(w, slo.length.map(|d| d.as_duration())) {
        Ok(c) => c,
        Err(why) => return Judged::no_data(&why),
    };
    let mut merged = RunStats::default();
    let mut present = Vec::new();
    for &seq in &covered.seqs {
        if let Some(stats) = source.stats(seq) {
            // One shape for every histogram of a run: adding cannot fail.
            if merged.add(&stats).is_ok() {
                present.push(seq);
            }
        }
    }
    if present.is_empty() {
        return Judged { window: Some(covered.window), ..Judged::no_data("no data: no interval of the run overlaps the window") };
    }
    // Per second of the window's intervals, those without data included.
    let seconds = covered.seqs.len() as f64 * source.interval().as_secs_f64();
    Judged {
        observed: observe(plan, &slo.metric, &merged, &KeyFilter::new(plan, parts), seconds),
        window: Some(covered.window),
        // A span only when it says exactly which intervals were merged:
        // `outside:faults` has holes where the faults were.
        decided_by: grid.span_of(&present).filter(|_| present.windows(2).all(|w| w[1] == w[0] + 1)),
        detail: None,
    }
}
