//! The run's timeline by due interval (contract T) as the judge reads it.

use std::time::Duration;

use stampede_common::stats::RunStats;

use super::IntervalSource;
use crate::aggregate::Aggregate;

impl IntervalSource for Aggregate {
    fn interval(&self) -> Duration {
        Aggregate::interval(self)
    }
    fn seqs(&self) -> Vec<u64> {
        self.due_seqs()
    }
    fn stats(&self, seq: u64) -> Option<RunStats> {
        self.interval_stats(seq)
    }
}
