//! The run's timeline by *due* interval: interval k holds the requests due
//! in [start + k·interval, start + (k+1)·interval) (open model: intended
//! start; closed: send), whenever they finished. Agents send a late
//! completion as an addition to its interval (`StepStats.due_seq`), so an
//! interval can change until no request due in it can still be in flight:
//! it is *final* once every agent has delivered every snapshot up to one
//! ending at least one timeout plus one interval after it.
//!
//! Memory stays bounded on long runs: an interval is kept in full (three
//! histograms per record) only while it is open — a few timeouts' worth —
//! and a final one is compacted to its wire form with only the latency
//! histogram kept (V2+DEFLATE, typically a few hundred bytes).

use std::collections::BTreeMap;

use stampede_common::stats::sparse::SparseStats;
use stampede_common::stats::{MergeError, RunStats};
use stampede_proto::convert::{decode_steps, encode_steps_with, DecodeError};
use stampede_proto::v1::{PhaseSchedule, StepStats};

enum Slot {
    Open(Box<RunStats>),
    /// Final: what `encode_steps` sends, service and dispatch histograms dropped.
    Final { steps: Vec<StepStats>, phases: Vec<PhaseSchedule> },
}

#[derive(Default)]
pub struct Timeline {
    slots: BTreeMap<u64, Slot>,
    /// Every interval up to here is compacted.
    compacted: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Merge(#[from] MergeError),
}

impl Timeline {
    /// Adds requests due in interval `due`. A late addition to an interval
    /// already compacted (an agent's clock, or a bug) reopens it.
    pub fn add(&mut self, due: u64, stats: &SparseStats) -> Result<(), TimelineError> {
        let slot = self.slots.entry(due).or_insert_with(|| Slot::Open(Box::default()));
        if let Slot::Final { steps, phases } = slot {
            let reopened = decode_steps(steps, phases)?;
            *slot = Slot::Open(Box::new(reopened));
        }
        let Slot::Open(open) = slot else { unreachable!("reopened above") };
        open.checked_add_sparse(stats)?;
        if self.compacted.is_some_and(|c| due <= c) {
            Self::compact(slot);
        }
        Ok(())
    }

    fn compact(slot: &mut Slot) {
        if let Slot::Open(s) = slot {
            // Emptied before encoding: compressing them only to drop them
            // would cost as much as the latency histogram kept.
            for r in s.steps.values_mut() {
                r.service.reset();
                r.dispatch.reset();
                r.handshake.reset();
            }
            // Deflated: memory, not merge speed, matters for what is kept all run.
            let (mut steps, phases) = encode_steps_with(s, stampede_common::histogram::encode);
            for st in &mut steps {
                st.service_hist.clear();
                st.dispatch_hist.clear();
                st.handshake_hist.clear();
            }
            *slot = Slot::Final { steps, phases };
        }
    }

    pub fn seqs(&self) -> Vec<u64> {
        self.slots.keys().copied().collect()
    }

    /// The fleet's requests due in interval `seq`; a final interval comes
    /// back with its latency histograms only.
    pub fn stats(&self, seq: u64) -> Option<RunStats> {
        match self.slots.get(&seq)? {
            Slot::Open(s) => Some((**s).clone()),
            Slot::Final { steps, phases } => decode_steps(steps, phases).ok(),
        }
    }

    /// Compacts every interval up to `through` (they are final).
    pub fn compact_through(&mut self, through: u64) {
        let from = self.compacted.map_or(0, |c| c + 1);
        if from > through {
            return;
        }
        for (_, slot) in self.slots.range_mut(from..=through) {
            Self::compact(slot);
        }
        self.compacted = Some(through);
    }

    /// How many intervals are held in full (for the memory bound's test).
    pub fn open_count(&self) -> usize {
        self.slots.values().filter(|s| matches!(s, Slot::Open(_))).count()
    }
}

#[cfg(test)]
mod tests {
    use stampede_common::histogram::record_us;
    use stampede_common::stats::{StepKey, StepRecord};
    use stampede_proto::convert::encode_steps;

    use super::*;

    fn stats(requests: u64, latency_us: u64) -> SparseStats {
        let mut r = StepRecord { requests, ..Default::default() };
        record_us(&mut r.latency, latency_us);
        record_us(&mut r.service, latency_us);
        let mut s = RunStats::default();
        s.steps.insert(StepKey { phase: 0, step: 0, ok: true }, r);
        let (steps, phases) = encode_steps(&s);
        stampede_proto::convert::decode_steps_sparse(&steps, &phases, &mut Vec::new()).unwrap()
    }

    #[test]
    fn a_compacted_interval_keeps_counts_and_latency_and_reopens_for_a_late_addition() {
        let mut t = Timeline::default();
        for seq in 0..100 {
            t.add(seq, &stats(3, 1000 + seq)).unwrap();
        }
        t.compact_through(97);
        assert_eq!(t.open_count(), 2, "only intervals not yet final are held in full");
        let back = t.stats(5).unwrap();
        let r = &back.steps[&StepKey { phase: 0, step: 0, ok: true }];
        assert_eq!((r.requests, r.latency.max(), r.service.len()), (3, 1005, 0));
        t.add(5, &stats(2, 2000)).unwrap();
        assert_eq!(t.open_count(), 2, "a final interval stays compact after a late addition");
        let r = t.stats(5).unwrap().steps[&StepKey { phase: 0, step: 0, ok: true }].clone();
        assert_eq!((r.requests, r.latency.len()), (5, 2));
    }
}
