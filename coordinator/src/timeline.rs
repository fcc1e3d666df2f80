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

use stampede_common::stats::{AccStats, RunStats};
use stampede_proto::convert::{add_steps, decode_steps, encode_steps_with};
use stampede_proto::v1::{PhaseSchedule, StepStats};

enum Slot {
    /// Snapshots' entries are added straight into it (`convert::add_steps`).
    Open(Box<AccStats>),
    /// Final: what `encode_steps` sends, service and dispatch histograms dropped.
    Final { steps: Vec<StepStats>, phases: Vec<PhaseSchedule> },
}

#[derive(Default)]
pub struct Timeline {
    slots: BTreeMap<u64, Slot>,
    /// Every interval up to here is compacted.
    compacted: Option<u64>,
}

impl Timeline {
    /// The accumulators of due intervals `dues` (distinct), in that order,
    /// to add a snapshot's entries to: opened, or reopened when already
    /// compacted (a late addition: an agent's clock, or a bug). Call
    /// [`Timeline::opened`] after adding.
    pub fn open(&mut self, dues: &[u64]) -> Vec<&mut AccStats> {
        for due in dues {
            let slot = self.slots.entry(*due).or_insert_with(|| Slot::Open(Box::default()));
            if let Slot::Final { steps, phases } = slot {
                let mut reopened = AccStats::default();
                // Compacted from what was added: it decodes.
                let decoded = add_steps(steps, phases, None, &mut [&mut reopened], |_| 0, &mut Vec::new());
                debug_assert!(decoded.is_ok(), "a compacted interval decodes");
                *slot = Slot::Open(Box::new(reopened));
            }
        }
        let mut open: Vec<(usize, &mut AccStats)> = self
            .slots
            .iter_mut()
            .filter_map(|(seq, slot)| match slot {
                Slot::Open(s) => dues.iter().position(|d| d == seq).map(|i| (i, &mut **s)),
                Slot::Final { .. } => None,
            })
            .collect();
        open.sort_by_key(|(i, _)| *i);
        open.into_iter().map(|(_, s)| s).collect()
    }

    /// After adding to [`Timeline::open`]'s intervals: a snapshot refused
    /// (`added` false) leaves no new empty interval behind, and an interval
    /// already final is compacted again.
    pub fn opened(&mut self, dues: &[u64], added: bool) {
        for due in dues {
            if !added && matches!(self.slots.get(due), Some(Slot::Open(s)) if s.steps.is_empty() && s.schedule.is_empty()) {
                self.slots.remove(due);
            } else if self.compacted.is_some_and(|c| *due <= c) {
                if let Some(slot) = self.slots.get_mut(due) {
                    Self::compact(slot);
                }
            }
        }
    }

    fn compact(slot: &mut Slot) {
        if let Slot::Open(s) = slot {
            // Emptied before encoding: compressing them only to drop them
            // would cost as much as the latency histogram kept.
            for r in s.steps.values_mut() {
                r.service = Default::default();
                r.dispatch = Default::default();
                r.handshake = Default::default();
            }
            // Deflated: memory, not merge speed, matters for what is kept all run.
            let (mut steps, phases) = encode_steps_with(&s.to_run_stats(), stampede_common::histogram::encode);
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
            Slot::Open(s) => Some(s.to_run_stats()),
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

    fn add(t: &mut Timeline, due: u64, requests: u64, latency_us: u64) {
        let mut r = StepRecord { requests, ..Default::default() };
        record_us(&mut r.latency, latency_us);
        record_us(&mut r.service, latency_us);
        let mut s = RunStats::default();
        s.steps.insert(StepKey { phase: 0, step: 0, ok: true }, r);
        let (steps, phases) = encode_steps(&s);
        let added = add_steps(&steps, &phases, None, &mut t.open(&[due]), |_| 0, &mut Vec::new());
        t.opened(&[due], added.is_ok());
        added.unwrap();
    }

    #[test]
    fn a_compacted_interval_keeps_counts_and_latency_and_reopens_for_a_late_addition() {
        let mut t = Timeline::default();
        for seq in 0..100 {
            add(&mut t, seq, 3, 1000 + seq);
        }
        t.compact_through(97);
        assert_eq!(t.open_count(), 2, "only intervals not yet final are held in full");
        let back = t.stats(5).unwrap();
        let r = &back.steps[&StepKey { phase: 0, step: 0, ok: true }];
        assert_eq!((r.requests, r.latency.max(), r.service.len()), (3, 1005, 0));
        add(&mut t, 5, 2, 2000);
        assert_eq!(t.open_count(), 2, "a final interval stays compact after a late addition");
        let r = t.stats(5).unwrap().steps[&StepKey { phase: 0, step: 0, ok: true }].clone();
        assert_eq!((r.requests, r.latency.len()), (5, 2));
    }
}
