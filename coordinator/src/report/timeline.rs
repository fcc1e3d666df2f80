//! The timeline section: the load's numbers interval by interval.

use serde::Serialize;
use stampede_common::plan::Plan;
use stampede_common::stats::ErrorKind;

use crate::aggregate::Aggregate;

/// One interval of the run's timeline: the requests *due* in it (open
/// model: intended start; closed: send), wherever they finished — a request
/// that timed out after a 2 s stall counts in the stall's interval.
#[derive(Debug, Clone, Serialize)]
pub struct TimelinePoint {
    /// Start of the interval, seconds since the run's common start.
    pub t_s: f64,
    pub requests: u64,
    pub errors: u64,
    /// Requests that timed out (part of `errors`).
    pub timeouts: u64,
    pub p99_ms: Option<f64>,
    /// Request and response bytes on the wire (HTTP head and body): a rate
    /// cap shows here, interval by interval.
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// The load's due-interval series (probes, recorded beyond the plan's
/// phases, are not load), with final values: the report is built once
/// every agent is done.
pub(super) fn timeline_points(plan: &Plan, agg: &Aggregate) -> Vec<TimelinePoint> {
    let load = |k: &stampede_common::stats::StepKey| (k.phase as usize) < plan.phases.len();
    agg.due_seqs()
        .into_iter()
        .filter_map(|seq| Some((seq, agg.interval_stats(seq)?)))
        .map(|(seq, stats)| {
            let s = stats.summarize(load);
            let records = || stats.steps.iter().filter(|(k, _)| load(k)).map(|(_, r)| r);
            TimelinePoint {
                t_s: seq as f64 * plan.interval.as_duration().as_secs_f64(),
                requests: s.requests,
                errors: s.errors,
                timeouts: s.errors_by_kind[ErrorKind::Timeout as usize],
                p99_ms: s.latency_ms(0.99),
                bytes_sent: records().map(|r| r.bytes_sent).sum(),
                bytes_received: records().map(|r| r.bytes_received).sum(),
            }
        })
        .collect()
}
