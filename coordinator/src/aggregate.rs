//! Merges the agents' snapshots of one run, exactly: histograms are added,
//! never percentiles averaged. Tracks per agent which intervals arrived, so a
//! duplicate is never counted twice and a gap is never silently ignored.
//!
//! Two series per interval: the timeline by *due* interval (`timeline.rs`,
//! what the report and the judgments use: a request belongs to the
//! interval it was due in) and what *landed* in each snapshot interval
//! (what completed, timed out, was in flight: live progress).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use stampede_common::histogram::accum::Accum;
use stampede_common::stats::{quantile_ms, AccStats, ErrorKind, RunStats};
use stampede_proto::convert::{add_steps, decode_counts, DecodeError};
use stampede_proto::v1::{RunFinished, Snapshot};

use crate::timeline::Timeline;

#[derive(Debug, Default)]
pub struct AgentProgress {
    pub labels: BTreeMap<String, String>,
    pub seqs: BTreeSet<u64>,
    /// The highest seq with every one up to it delivered.
    pub contiguous: Option<u64>,
    /// Seq of the snapshot marked last, once it arrived.
    pub last_seq: Option<u64>,
    pub finished: Option<RunFinished>,
    /// Why the agent dropped out of the run, if it did.
    pub lost: Option<String>,
    /// The agent sent something refused (`lost` says what): nothing more
    /// of it is counted.
    pub refused: bool,
    /// Counted from the snapshots received, to compare with the agent's own.
    pub requests: u64,
    pub errors: u64,
    pub duplicates: u64,
}

impl AgentProgress {
    pub fn done(&self) -> bool {
        self.finished.is_some() || self.lost.is_some()
    }

    /// Intervals that should have arrived and did not. `run_last` is the
    /// run's last interval as the other agents saw it: an agent that never
    /// sent its own last one is missing everything up to there.
    pub fn missing(&self, run_last: Option<u64>) -> Vec<u64> {
        let end = self.last_seq.or_else(|| self.seqs.last().copied().max(run_last)).or(run_last);
        match end {
            Some(end) => (0..=end).filter(|s| !self.seqs.contains(s)).collect(),
            None => Vec::new(),
        }
    }

    /// Whether everything this agent measured reached us.
    pub fn complete(&self) -> bool {
        self.lost.is_none()
            && !self.refused
            && self.last_seq.is_some()
            && self.missing(None).is_empty()
            && self.finished.as_ref().is_some_and(|f| f.error.is_empty() && f.evicted == 0 && f.requests == self.requests && f.errors == self.errors)
    }
}

/// What landed in one snapshot interval across the fleet (completed in it,
/// whenever due), kept as counters plus the merged latency histogram until
/// every agent has reported it: live progress.
#[derive(Debug)]
pub struct IntervalAgg {
    pub start_unix_nanos: i64,
    pub requests: u64,
    pub errors: u64,
    /// Requests that timed out in this interval (part of `errors`).
    pub timeouts: u64,
    /// Requests on the wire at the interval's end, summed over the agents.
    pub in_flight: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub reported: usize,
    hist: Option<Accum>,
    pub p99_ms: Option<f64>,
}

impl IntervalAgg {
    fn seal(&mut self) {
        if let Some(h) = self.hist.take() {
            self.p99_ms = quantile_ms(&h.to_hist(), 0.99);
        }
    }
}

/// Why a snapshot was refused; nothing of it was counted.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("a snapshot (seq {seq}) that does not decode: {source}")]
    Decode { seq: u64, source: DecodeError },
    #[error("a snapshot (seq {seq}) whose counts would overflow its {what} total past 2^64")]
    Overflow { seq: u64, what: &'static str },
}

/// A snapshot's sums, computed with checked arithmetic.
#[derive(Debug, Default, Clone, Copy)]
struct Sums {
    requests: u64,
    errors: u64,
    sent: u64,
    received: u64,
}

/// What an accepted snapshot makes of its agent's and its interval's
/// numbers (`Aggregate::sums_after`).
struct After {
    agent: Sums,
    interval: Sums,
    in_flight: u64,
    timeouts: u64,
}

impl Sums {
    fn checked_add(&self, o: &Sums) -> Option<Sums> {
        Some(Sums {
            requests: self.requests.checked_add(o.requests)?,
            errors: self.errors.checked_add(o.errors)?,
            sent: self.sent.checked_add(o.sent)?,
            received: self.received.checked_add(o.received)?,
        })
    }
}

pub struct Aggregate {
    pub agents: BTreeMap<String, AgentProgress>,
    /// The run's totals, as snapshots are added up: read them as
    /// `Histogram`s with [`Aggregate::total_stats`].
    pub total: AccStats,
    /// By snapshot interval: what landed in it (live progress).
    pub landed: BTreeMap<u64, IntervalAgg>,
    /// By due interval: the run's timeline.
    timeline: Timeline,
    interval: Duration,
    /// An interval is final once every agent delivered this many intervals after it.
    final_lag: u64,
    /// Every landed interval up to here is summarized.
    sealed_through: Option<u64>,
    /// Records of this phase index and beyond are probes (contract P): in
    /// the totals and the agents' counts, not in the load's timeline.
    pub probe_phase: u32,
    /// Inflated histogram bytes, reused from snapshot to snapshot.
    scratch: Vec<u8>,
    /// Agents by the seq of their last snapshot: how many ended before an
    /// interval, without a walk over the fleet per snapshot.
    ended_at: BTreeMap<u64, usize>,
    /// Snapshots added since `final_through` was last asked (see `add_snapshot`).
    since_final: usize,
}

impl Aggregate {
    /// `interval` and `timeout` are the plan's: a request due in interval
    /// k can finish up to one timeout after it.
    pub fn new(agents: impl IntoIterator<Item = (String, BTreeMap<String, String>)>, interval: Duration, timeout: Duration) -> Self {
        let final_lag = 1 + u64::try_from(timeout.as_nanos().div_ceil(interval.as_nanos().max(1))).unwrap_or(u64::MAX);
        Aggregate {
            agents: agents.into_iter().map(|(id, labels)| (id, AgentProgress { labels, ..Default::default() })).collect(),
            total: AccStats::default(),
            landed: BTreeMap::new(),
            timeline: Timeline::default(),
            interval,
            final_lag,
            sealed_through: None,
            probe_phase: u32::MAX,
            scratch: Vec::new(),
            ended_at: BTreeMap::new(),
            since_final: 0,
        }
    }

    /// The plan's interval: interval k starts k of them after the common start.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The run's totals with `Histogram`s (a conversion: for reports and
    /// the verdict, not per snapshot).
    pub fn total_stats(&self) -> RunStats {
        self.total.to_run_stats()
    }

    /// The due intervals that have requests, in order.
    pub fn due_seqs(&self) -> Vec<u64> {
        self.timeline.seqs()
    }

    /// The fleet's merged stats of the requests due in interval `seq`
    /// (counters, schedule, latency histogram; a final interval's service
    /// and dispatch histograms are dropped to bound memory).
    pub fn interval_stats(&self, seq: u64) -> Option<RunStats> {
        self.timeline.stats(seq)
    }

    /// Every due interval ≤ this one is final: every agent still running has
    /// delivered each snapshot up to one ending at least one timeout plus
    /// one interval after it, so no late completion can change it. Once
    /// every agent is done, every interval is final.
    pub fn final_through(&self) -> Option<u64> {
        let mut through: Option<u64> = None;
        for a in self.agents.values().filter(|a| !a.done()) {
            let t = a.contiguous?.checked_sub(self.final_lag)?;
            through = Some(through.map_or(t, |x: u64| x.min(t)));
        }
        through.or_else(|| self.timeline.seqs().last().copied())
    }

    /// Adds a snapshot; returns the seq of an interval that just became
    /// complete across the fleet, for live progress. The snapshot's numbers
    /// must have passed `stampede_proto::limits::check_snapshot`; every sum
    /// is checked here too, and a snapshot that fails is counted nowhere.
    pub fn add_snapshot(&mut self, s: &Snapshot) -> Result<Option<u64>, SnapshotError> {
        let Some(agent) = self.agents.get(&s.agent_id) else {
            return Ok(None);
        };
        if agent.refused {
            return Ok(None);
        }
        if agent.seqs.contains(&s.seq) {
            if let Some(a) = self.agents.get_mut(&s.agent_id) {
                a.duplicates += 1;
            }
            return Ok(None);
        }
        // Every sum is checked before anything is changed, then the
        // histograms are merged (all or nothing), then the books are kept.
        let after = self.sums_after(s, agent)?;
        self.merge_histograms(s)?;
        self.note_seq(s, after.agent);
        let complete = self.land(s, &after);
        // `final_through` walks the fleet: asked once an interval is
        // complete, or once per fleet's worth of snapshots (an interval a
        // lost agent never completes), it costs O(1) a snapshot instead of
        // O(agents) — 2 % of a core at 1 000 agents, 9 % at 3 000
        // (benchmarks/README.md, "Fleet scale"). Compacting one interval
        // later only holds its full histograms a little longer.
        self.since_final += 1;
        if complete || self.since_final >= self.agents.len() {
            self.since_final = 0;
            self.settle_final();
        }
        Ok(complete.then_some(s.seq))
    }

    /// The agent's and the interval's totals once `s` is added, checked for
    /// overflow; changes nothing.
    fn sums_after(&self, s: &Snapshot, agent: &AgentProgress) -> Result<After, SnapshotError> {
        let seq = s.seq;
        let overflow = |what: &'static str| SnapshotError::Overflow { seq, what };
        let mut sums = Sums::default();
        let mut load = Sums::default();
        let mut timeouts = 0u64;
        // The counters first (histograms are decoded as they are added).
        for st in &s.steps {
            let (k, r) = decode_counts(st).map_err(|source| SnapshotError::Decode { seq, source })?;
            let errors = r.errors.iter().try_fold(0u64, |a, n| a.checked_add(*n)).ok_or_else(|| overflow("errors"))?;
            let one = Sums { requests: r.requests, errors, sent: r.bytes_sent, received: r.bytes_received };
            sums = sums.checked_add(&one).ok_or_else(|| overflow("snapshot"))?;
            if k.phase >= self.probe_phase {
                continue;
            }
            load = load.checked_add(&one).ok_or_else(|| overflow("snapshot"))?;
            timeouts += r.errors[ErrorKind::Timeout as usize];
        }
        let mine = Sums { requests: agent.requests, errors: agent.errors, ..Sums::default() };
        let agent_after = mine.checked_add(&sums).ok_or_else(|| overflow("agent"))?;
        let interval = match self.landed.get(&seq) {
            Some(iv) => Sums { requests: iv.requests, errors: iv.errors, sent: iv.bytes_sent, received: iv.bytes_received }.checked_add(&load).ok_or_else(|| overflow("interval"))?,
            None => load,
        };
        let in_flight = self.landed.get(&seq).map_or(Some(s.in_flight), |iv| iv.in_flight.checked_add(s.in_flight)).ok_or_else(|| overflow("in-flight"))?;
        Ok(After { agent: agent_after, interval, in_flight, timeouts })
    }

    /// Decodes each entry's histograms straight into the run's total and
    /// the timeline's interval it was due in (absent `due_seq`: the
    /// snapshot's own, which also carries the schedule), all or nothing.
    fn merge_histograms(&mut self, s: &Snapshot) -> Result<(), SnapshotError> {
        let seq = s.seq;
        let mut dues = vec![seq];
        for st in &s.steps {
            let due = st.due_seq.unwrap_or(seq);
            if !dues.contains(&due) {
                dues.push(due);
            }
        }
        let merged = {
            let mut parts = self.timeline.open(&dues);
            let part_of = |st: &stampede_proto::v1::StepStats| dues.iter().position(|d| *d == st.due_seq.unwrap_or(seq)).expect("listed above");
            add_steps(&s.steps, &s.phases, Some(&mut self.total), &mut parts, part_of, &mut self.scratch)
        };
        self.timeline.opened(&dues, merged.is_ok());
        merged.map_err(|e| match e {
            // Checked against the run's totals (and the intervals', which
            // are parts of them) before any histogram was read.
            DecodeError::Overflow { .. } | DecodeError::ScheduleOverflow(_) => SnapshotError::Overflow { seq, what: "run" },
            e => SnapshotError::Decode { seq, source: e },
        })
    }

    /// The agent has sent `s`: its seqs, how far they are contiguous, its
    /// last one, and its totals.
    fn note_seq(&mut self, s: &Snapshot, totals: Sums) {
        let seq = s.seq;
        let agent = self.agents.get_mut(&s.agent_id).expect("looked up by add_snapshot");
        agent.seqs.insert(seq);
        while agent.seqs.contains(&agent.contiguous.map_or(0, |c| c + 1)) {
            agent.contiguous = Some(agent.contiguous.map_or(0, |c| c + 1));
        }
        if s.last {
            if let Some(before) = agent.last_seq.replace(seq) {
                // A second `last` (never from our agents): the later one counts, as it always did.
                if let Some(n) = self.ended_at.get_mut(&before) {
                    *n -= 1;
                }
            }
            *self.ended_at.entry(seq).or_default() += 1;
        }
        agent.requests = totals.requests;
        agent.errors = totals.errors;
    }

    /// Files `s` into its interval's counters and latency histogram;
    /// returns whether the interval is now complete across the fleet (and
    /// sealed).
    fn land(&mut self, s: &Snapshot, after: &After) -> bool {
        let seq = s.seq;
        let iv = self.landed.entry(seq).or_insert_with(|| IntervalAgg {
            start_unix_nanos: s.interval_start_unix_nanos,
            requests: 0,
            errors: 0,
            timeouts: 0,
            in_flight: 0,
            bytes_sent: 0,
            bytes_received: 0,
            reported: 0,
            hist: Some(Accum::default()),
            p99_ms: None,
        });
        iv.requests = after.interval.requests;
        iv.errors = after.interval.errors;
        iv.timeouts += after.timeouts;
        iv.in_flight = after.in_flight;
        iv.bytes_sent = after.interval.sent;
        iv.bytes_received = after.interval.received;
        iv.reported += 1;
        if let Some(h) = iv.hist.as_mut() {
            // Decoded once by merge_histograms: adding cannot fail.
            let ok = stampede_proto::v1::Outcome::Ok as i32;
            for st in s.steps.iter().filter(|st| st.outcome == ok && st.phase < self.probe_phase) {
                let added = h.add_encoded(&st.latency_hist, &mut self.scratch);
                debug_assert!(added.is_ok(), "accepted above");
            }
        }
        // An agent whose last snapshot came before this interval (its
        // iterations were done early) will never send it.
        let ended_before: usize = self.ended_at.range(..seq).map(|(_, n)| n).sum();
        let complete = iv.reported + ended_before >= self.agents.len();
        if complete {
            iv.seal();
        }
        complete
    }

    /// Compacts the timeline through the last final interval, and
    /// summarizes the intervals some agent will never send (it was lost)
    /// once final, so their histograms are not kept all run.
    fn settle_final(&mut self) {
        let Some(through) = self.final_through() else { return };
        self.timeline.compact_through(through);
        let from = self.sealed_through.map_or(0, |s| s + 1);
        if from <= through {
            for (_, iv) in self.landed.range_mut(from..=through) {
                iv.seal();
            }
            self.sealed_through = Some(through);
        }
    }

    /// Refuses the rest of an agent's data: it sent `reason`. What it sent
    /// before (each message checked) stays counted; the run is incomplete.
    pub fn refuse(&mut self, agent_id: &str, reason: String) {
        if let Some(a) = self.agents.get_mut(agent_id).filter(|a| !a.refused) {
            a.refused = true;
            a.lost = Some(reason);
        }
    }

    pub fn finished(&mut self, f: RunFinished) {
        if let Some(a) = self.agents.get_mut(&f.agent_id).filter(|a| !a.refused) {
            a.finished = Some(f);
        }
    }

    pub fn lost(&mut self, agent_id: &str, reason: String) {
        if let Some(a) = self.agents.get_mut(agent_id).filter(|a| a.finished.is_none()) {
            a.lost.get_or_insert(reason);
        }
    }

    /// The run's last interval: the highest any agent marked last, or else
    /// the highest that arrived at all.
    pub fn run_last_seq(&self) -> Option<u64> {
        self.agents.values().filter_map(|a| a.last_seq).max().or_else(|| self.landed.keys().last().copied())
    }

    pub fn all_done(&self) -> bool {
        self.agents.values().all(AgentProgress::done)
    }

    /// Ends the run's bookkeeping: intervals some agent never sent are
    /// summarized from what did arrive.
    pub fn seal(&mut self) {
        for iv in self.landed.values_mut() {
            iv.seal();
        }
        if let Some(through) = self.final_through() {
            self.timeline.compact_through(through);
        }
    }
}

#[cfg(test)]
mod tests {
    use stampede_common::stats::{StepKey, StepRecord};
    use stampede_proto::convert::encode_steps;
    use stampede_proto::v1::StepStats;

    use super::*;

    fn requests(n: u64, timeouts: u64) -> RunStats {
        let mut r = StepRecord { requests: n, ..Default::default() };
        r.errors[ErrorKind::Timeout as usize] = timeouts;
        for h in [&mut r.latency, &mut r.service, &mut r.dispatch] {
            h.saturating_record_n(1000, n);
        }
        let mut s = RunStats::default();
        s.steps.insert(StepKey { phase: 0, step: 0, ok: timeouts == 0 }, r);
        s
    }

    /// Agent `agent`'s snapshot `seq`: `own` requests due in it, and `late`
    /// ones due in earlier intervals.
    fn snapshot(agent: &str, seq: u64, own: &RunStats, late: &[(u64, RunStats)]) -> Snapshot {
        let (mut steps, phases) = encode_steps(own);
        for (due, stats) in late {
            steps.extend(encode_steps(stats).0.into_iter().map(|s| StepStats { due_seq: Some(*due), ..s }));
        }
        Snapshot { agent_id: agent.into(), seq, steps, phases, in_flight: 7, ..Default::default() }
    }

    fn due_requests(agg: &Aggregate, seq: u64) -> u64 {
        agg.interval_stats(seq).map_or(0, |s| s.steps.values().map(|r| r.requests).sum())
    }

    #[test]
    fn late_additions_go_to_their_due_interval_which_is_final_one_timeout_later() {
        // 1 s intervals, 2 s timeout: final 3 intervals behind every agent.
        let agents = ["a", "b"].map(|id| (id.to_string(), BTreeMap::new()));
        let mut agg = Aggregate::new(agents, Duration::from_secs(1), Duration::from_secs(2));
        for seq in 0..4 {
            // Interval 1's requests on agent a all time out, two intervals later.
            let own = if seq == 1 { RunStats::default() } else { requests(10, 0) };
            let late = if seq == 3 { vec![(1, requests(10, 10))] } else { Vec::new() };
            agg.add_snapshot(&snapshot("a", seq, &own, &late)).unwrap();
            assert_eq!(agg.final_through(), None, "b has sent nothing yet");
        }
        for seq in 0..4 {
            agg.add_snapshot(&snapshot("b", seq, &requests(5, 0), &[])).unwrap();
        }
        assert_eq!(agg.final_through(), Some(0), "interval 0 ends 3 s before the snapshots both agents delivered");
        assert_eq!((0..4).map(|s| due_requests(&agg, s)).collect::<Vec<_>>(), [15, 15, 15, 15]);
        let one = agg.interval_stats(1).unwrap();
        assert_eq!(one.summarize(|_| true).errors_by_kind[ErrorKind::Timeout as usize], 10, "the timeouts count where they were due");
        // What landed: interval 1 saw only b's 5, interval 3 a's 20 (10 of them timeouts) and b's 5.
        assert_eq!((agg.landed[&1].requests, agg.landed[&3].requests, agg.landed[&3].timeouts, agg.landed[&3].in_flight), (5, 25, 10, 14));
        // Totals are the sum either way.
        assert_eq!(agg.total_stats().summarize(|_| true).requests, 60);
        agg.add_snapshot(&snapshot("a", 4, &requests(10, 0), &[])).unwrap();
        agg.add_snapshot(&snapshot("b", 4, &requests(5, 0), &[])).unwrap();
        assert_eq!(agg.final_through(), Some(1));
        // A gap holds finality back: a missing snapshot may carry late completions.
        agg.add_snapshot(&snapshot("b", 6, &requests(5, 0), &[])).unwrap();
        agg.add_snapshot(&snapshot("a", 6, &requests(5, 0), &[])).unwrap();
        assert_eq!(agg.final_through(), Some(1));
        agg.finished(RunFinished { agent_id: "a".into(), ..Default::default() });
        agg.finished(RunFinished { agent_id: "b".into(), ..Default::default() });
        assert_eq!(agg.final_through(), Some(6), "once every agent is done, everything is final");
        assert_eq!(due_requests(&agg, 1), 15, "a final interval keeps its counts");
    }

    #[test]
    fn a_snapshot_refused_by_its_last_histogram_is_counted_nowhere() {
        let agents = [("a".to_string(), BTreeMap::new())];
        let mut agg = Aggregate::new(agents, Duration::from_secs(1), Duration::from_secs(2));
        agg.add_snapshot(&snapshot("a", 0, &requests(10, 0), &[])).unwrap();
        // Snapshot 1, with a late addition to interval 0 whose latency
        // histogram holds a count one past the array, after counts that fit.
        let mut bad = snapshot("a", 1, &requests(5, 0), &[(0, requests(3, 0))]);
        let mut forged = 0x1c84_9313u32.to_be_bytes().to_vec();
        let payload = [0x05, 0x0a, 0xff, 0xef, 0x02, 0x02];
        forged.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        forged.extend_from_slice(&0u32.to_be_bytes());
        forged.extend_from_slice(&3u32.to_be_bytes());
        forged.extend_from_slice(&1u64.to_be_bytes());
        forged.extend_from_slice(&stampede_common::histogram::HIGHEST_US.to_be_bytes());
        forged.extend_from_slice(&1.0f64.to_bits().to_be_bytes());
        forged.extend_from_slice(&payload);
        bad.steps.last_mut().unwrap().latency_hist = forged;
        let err = agg.add_snapshot(&bad).unwrap_err();
        assert!(err.to_string().contains("does not decode"), "{err}");
        assert_eq!(agg.due_seqs(), [0], "no interval 1 left behind");
        assert_eq!(due_requests(&agg, 0), 10);
        let total = agg.total_stats();
        let r = &total.steps[&StepKey { phase: 0, step: 0, ok: true }];
        assert_eq!((r.requests, r.latency.len(), r.service.len()), (10, 10, 10));
        assert!(!agg.landed.contains_key(&1) && agg.agents["a"].seqs.len() == 1);
        // The snapshot as it should have been is counted everywhere.
        agg.add_snapshot(&snapshot("a", 1, &requests(5, 0), &[(0, requests(3, 0))])).unwrap();
        assert_eq!((due_requests(&agg, 0), due_requests(&agg, 1)), (13, 5));
        assert_eq!(agg.total_stats().steps[&StepKey { phase: 0, step: 0, ok: true }].latency.len(), 18);
    }
}
