//! The run's timeline as the judge reads it.

use std::time::Duration;

use stampede_common::stats::RunStats;

use super::IntervalSource;
use crate::aggregate::Aggregate;

// TEMPORARY until contract T (branch `run-loop`) is merged: the aggregate
// keeps no per-interval stats yet, so windowed rules see no data.
impl IntervalSource for Aggregate {
    fn interval(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn seqs(&self) -> Vec<u64> {
        self.timeline.keys().copied().collect()
    }
    fn stats(&self, _seq: u64) -> Option<RunStats> {
        None
    }
}
