//! The run's timeline as the judge reads it.

use std::time::Duration;

use stampede_common::stats::RunStats;

use super::IntervalSource;
use crate::aggregate::Aggregate;

/// The merged aggregate's intervals on the plan's interval grid.
pub struct Timeline<'a> {
    pub aggregate: &'a Aggregate,
    pub interval: Duration,
}

impl IntervalSource for Timeline<'_> {
    fn interval(&self) -> Duration {
        self.interval
    }
    fn seqs(&self) -> Vec<u64> {
        self.aggregate.intervals.keys().copied().collect()
    }
    fn stats(&self, seq: u64) -> Option<RunStats> {
        self.aggregate.intervals.get(&seq).cloned()
    }
}
