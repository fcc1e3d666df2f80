//! Time on the run's interval grid: interval k covers [k·I, (k+1)·I) after
//! the common start. A rule's time window becomes intervals:
//! - `during:F` and a phase: every interval that **overlaps** the window —
//!   an interval partly inside belongs to it, so the fault's judgment never
//!   loses the requests due at its edges;
//! - `before:F`, `after:F`, `outside:faults`: the intervals overlapping the
//!   window that **touch no fault window** (`F`'s, resp. any fault's). A
//!   fault is applied a little after its planned instant, mid-interval: its
//!   first interval already holds requests it hurt, and a baseline or an
//!   aftermath that took that interval in would judge the fault itself.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use stampede_common::plan::Plan;
use stampede_common::slo::Scope;

use super::FaultWindow;

/// Seconds after the run's common start.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Span {
    pub from_s: f64,
    pub to_s: f64,
}

/// One fault's actual window over every agent that applied it: the first
/// apply to the last revert (`None`: some agent never reverted it within
/// the run). Nanoseconds after the common start.
#[derive(Debug, Clone, Copy)]
pub struct FaultSpan {
    pub applied: i64,
    pub reverted: Option<i64>,
}

/// The run's grid and its faults' actual windows.
pub struct Grid {
    pub interval_ns: i64,
    /// Every interval the source has, in order.
    pub seqs: Vec<u64>,
    faults: BTreeMap<String, FaultSpan>,
}

/// Intervals a window covers, and the window itself.
pub struct Covered {
    pub seqs: Vec<u64>,
    pub window: Span,
}

fn secs(ns: i64) -> f64 {
    ns as f64 / 1e9
}

impl Grid {
    pub fn new(interval_ns: i64, seqs: Vec<u64>, start_unix_nanos: i64, windows: &[FaultWindow]) -> Self {
        // Every interval up to the last with data: one in which nothing was
        // due (a closed model waiting out its timeouts) is still time the
        // window lasted, and a rule per interval sees it as "no requests".
        let seqs = seqs.iter().max().map_or_else(Vec::new, |&last| (0..=last).collect());
        let mut faults: BTreeMap<String, FaultSpan> = BTreeMap::new();
        // A window that was never applied (a failed fault, a dry run) is no window.
        for w in windows.iter().filter(|w| w.applied_unix_nanos > 0) {
            let applied = w.applied_unix_nanos - start_unix_nanos;
            let reverted = w.reverted_unix_nanos.filter(|&r| r > 0).map(|r| (r - start_unix_nanos).max(applied));
            faults
                .entry(w.fault.clone())
                .and_modify(|f| {
                    f.applied = f.applied.min(applied);
                    f.reverted = f.reverted.zip(reverted).map(|(a, b)| a.max(b));
                })
                .or_insert(FaultSpan { applied, reverted });
        }
        Grid { interval_ns, seqs, faults }
    }

    /// The end of the last interval with data: where the run's timeline stops.
    pub fn end_ns(&self) -> i64 {
        self.seqs.last().map_or(0, |&s| (s as i64 + 1) * self.interval_ns)
    }

    pub fn start_of(&self, seq: u64) -> i64 {
        seq as i64 * self.interval_ns
    }

    /// The intervals' own span, first start to last end.
    pub fn span_of(&self, seqs: &[u64]) -> Option<Span> {
        let (first, last) = (seqs.first()?, seqs.last()?);
        Some(Span { from_s: secs(self.start_of(*first)), to_s: secs(self.start_of(*last) + self.interval_ns) })
    }

    /// The source's intervals overlapping [from, to) (nanoseconds after the
    /// start); an empty window takes the interval it falls in.
    pub fn overlapping(&self, from: i64, to: i64) -> Vec<u64> {
        let i = self.interval_ns;
        self.seqs
            .iter()
            .copied()
            .filter(|&k| {
                let (a, b) = (k as i64 * i, (k as i64 + 1) * i);
                if from == to {
                    a <= from && from < b
                } else {
                    a < to && b > from
                }
            })
            .collect()
    }

    pub fn fault(&self, name: &str) -> Result<FaultSpan, String> {
        self.faults.get(name).copied().ok_or_else(|| format!("fault {name} was never applied, so it has no window to judge"))
    }

    fn covered(&self, from: i64, to: i64) -> Covered {
        Covered { seqs: self.overlapping(from, to), window: Span { from_s: secs(from), to_s: secs(to) } }
    }

    /// `c` without the intervals `fault`'s window touches.
    fn untouched(&self, mut c: Covered, fault: FaultSpan) -> Covered {
        let touched = self.overlapping(fault.applied, fault.reverted.unwrap_or(self.end_ns()));
        c.seqs.retain(|s| !touched.contains(s));
        c
    }

    /// The intervals of a time window. `length` is an `after:` rule's `for`.
    /// A fault that never reverted lasts to the end of the run.
    pub fn resolve(&self, window: &Scope, length: Option<std::time::Duration>) -> Result<Covered, String> {
        let end = self.end_ns();
        match window {
            Scope::During(f) => {
                let span = self.fault(f)?;
                Ok(self.covered(span.applied, span.reverted.unwrap_or(end)))
            }
            Scope::After(f) => {
                let span = self.fault(f)?;
                let reverted = span.reverted.ok_or_else(|| format!("fault {f} was never reverted within the run, so nothing comes after it"))?;
                let length = length.map_or(0, |d| d.as_nanos().min(i64::MAX as u128) as i64);
                Ok(self.untouched(self.covered(reverted, reverted.saturating_add(length)), span))
            }
            Scope::Before(f) => {
                let span = self.fault(f)?;
                let length = span.reverted.unwrap_or(end) - span.applied;
                // A baseline longer than the time before the fault starts with the run.
                Ok(self.untouched(self.covered((span.applied - length).max(0), span.applied), span))
            }
            Scope::OutsideFaults => {
                let touched: BTreeSet<u64> = self.faults.values().flat_map(|f| self.overlapping(f.applied, f.reverted.unwrap_or(end))).collect();
                let seqs = self.seqs.iter().copied().filter(|s| !touched.contains(s)).collect();
                Ok(Covered { seqs, window: Span { from_s: 0.0, to_s: secs(end) } })
            }
            other => unreachable!("`{other}` is not a time window"),
        }
    }

    /// The intervals of a phase, for a series judged within it.
    pub fn phase(&self, plan: &Plan, index: usize) -> Covered {
        let offset = plan.phase_offsets()[index].as_nanos() as i64;
        let length = plan.phases[index].length().as_nanos() as i64;
        self.covered(offset, offset + length)
    }
}
