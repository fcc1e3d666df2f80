//! Rules judged over a series of intervals rather than one merged window:
//! `max_streak(COND)` and `recovery_time`.

use stampede_common::plan::{outside_fault_rules, Plan};
use stampede_common::slo::{Condition, Metric, Slo, Threshold, DEFAULT_CONSECUTIVE};

use super::observe::{observe, KeyFilter};
use super::window::Grid;
use super::{IntervalSource, Judged};

/// Whether `metric` over `filter`'s records meets `threshold` in interval
/// `seq`; `None` when the interval has no request there (it holds nothing).
fn holds_in(plan: &Plan, source: &dyn IntervalSource, seq: u64, metric: &Metric, threshold: &Threshold, filter: &KeyFilter) -> Option<bool> {
    let stats = source.stats(seq)?;
    let requests = stats.summarize(|k| filter.covers(k)).requests;
    if requests == 0 {
        return None;
    }
    let seconds = source.interval().as_secs_f64();
    Some(observe(plan, metric, &stats, filter, seconds).is_some_and(|v| threshold.holds(v)))
}

/// The longest run of consecutive intervals among `seqs` (sorted) in which
/// `cond` holds; an interval without data, or missing, ends a streak.
pub fn max_streak(plan: &Plan, source: &dyn IntervalSource, grid: &Grid, cond: &Condition, filter: &KeyFilter, seqs: &[u64]) -> Judged {
    let mut best: Option<(u64, u64)> = None;
    let mut current: Option<(u64, u64)> = None;
    let mut any_data = false;
    for &seq in seqs {
        let holds = match holds_in(plan, source, seq, &cond.metric, &cond.threshold, filter) {
            Some(h) => {
                any_data = true;
                h
            }
            None => false,
        };
        current = match (holds, current) {
            (false, _) => None,
            (true, Some((from, to))) if to + 1 == seq => Some((from, seq)),
            (true, _) => Some((seq, seq)),
        };
        if let Some((from, to)) = current {
            if best.is_none_or(|(bf, bt)| to - from > bt - bf) {
                best = Some((from, to));
            }
        }
    }
    if !any_data {
        return Judged::no_data("no interval in the scope has requests");
    }
    let interval_ms = source.interval().as_secs_f64() * 1e3;
    let observed = best.map_or(0.0, |(from, to)| (to - from + 1) as f64 * interval_ms);
    let decided_by = best.and_then(|(from, to)| grid.span_of(&[from, to]));
    Judged { observed: Some(observed), decided_by, ..Judged::default() }
}

/// Seconds (in ms) from `slo.fault`'s revert until its rules hold again for
/// K consecutive intervals: the start of the first of them, less the revert
/// (0 if the interval the revert falls in already holds).
pub fn recovery_time(plan: &Plan, source: &dyn IntervalSource, grid: &Grid, slo: &Slo) -> Judged {
    let fault = slo.fault.as_deref().expect("validated: recovery_time names its fault");
    let span = match grid.fault(fault) {
        Ok(s) => s,
        Err(why) => return Judged::no_data(&why),
    };
    let Some(reverted) = span.reverted else {
        return Judged::no_data(&format!("fault {fault} was never reverted within the run, so it never recovered"));
    };
    let rules: Vec<&Slo> = match &slo.rules {
        Some(names) => names.iter().filter_map(|n| plan.slos.iter().find(|r| r.name.as_deref() == Some(n.as_str()))).collect(),
        None => outside_fault_rules(plan).collect(),
    };
    let filters: Vec<KeyFilter> = rules.iter().map(|r| KeyFilter::new(plan, &r.scope.parts().expect("validated"))).collect();
    let need = u64::from(slo.consecutive.unwrap_or(DEFAULT_CONSECUTIVE));
    let end = grid.end_ns();
    let window = Some(super::window::Span { from_s: reverted as f64 / 1e9, to_s: end as f64 / 1e9 });
    let candidates = grid.overlapping(reverted, end.max(reverted + 1));
    let mut run: Option<(u64, u64)> = None;
    for &seq in &candidates {
        let all_hold = rules.iter().zip(&filters).all(|(r, f)| holds_in(plan, source, seq, &r.metric, &r.pass, f) == Some(true));
        run = match (all_hold, run) {
            (false, _) => None,
            (true, Some((from, to))) if to + 1 == seq => Some((from, seq)),
            (true, _) => Some((seq, seq)),
        };
        if let Some((from, to)) = run.filter(|(from, to)| to - from + 1 >= need) {
            let recovered = (grid.start_of(from) - reverted).max(0);
            return Judged { observed: Some(recovered as f64 / 1e6), window, decided_by: grid.span_of(&[from, to]), detail: None };
        }
    }
    Judged {
        window,
        detail: Some(format!("not recovered after {:.1} s (its rules did not hold for {need} consecutive intervals before the run ended)", (end - reverted).max(0) as f64 / 1e9)),
        ..Judged::default()
    }
}
