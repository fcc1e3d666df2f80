//! Merges the agents' snapshots of one run, exactly: histograms are added,
//! never percentiles averaged. Tracks per agent which intervals arrived, so a
//! duplicate is never counted twice and a gap is never silently ignored.

use std::collections::{BTreeMap, BTreeSet};

use stampede_common::histogram::{self, Hist};
use stampede_common::stats::{quantile_ms, MergeError, RunStats};
use stampede_proto::convert::{decode_steps, DecodeError};
use stampede_proto::v1::{RunFinished, Snapshot};

#[derive(Debug, Default)]
pub struct AgentProgress {
    pub labels: BTreeMap<String, String>,
    pub seqs: BTreeSet<u64>,
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

/// One interval of the whole fleet, kept as counters plus the merged latency
/// histogram until every agent has reported it.
#[derive(Debug)]
pub struct IntervalAgg {
    pub start_unix_nanos: i64,
    pub requests: u64,
    pub errors: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub reported: usize,
    hist: Option<Hist>,
    pub p99_ms: Option<f64>,
}

impl IntervalAgg {
    fn seal(&mut self) {
        if let Some(h) = self.hist.take() {
            self.p99_ms = quantile_ms(&h, 0.99);
        }
    }
}

/// Why a snapshot was refused; nothing of it was counted.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("a snapshot (seq {seq}) that does not decode: {source}")]
    Decode { seq: u64, source: DecodeError },
    #[error("a snapshot (seq {seq}) whose counts would overflow the run's: {source}")]
    Merge { seq: u64, source: MergeError },
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
    pub total: RunStats,
    pub timeline: BTreeMap<u64, IntervalAgg>,
    /// Records of this phase index and beyond are probes (contract P): in
    /// the totals and the agents' counts, not in the load's timeline.
    pub probe_phase: u32,
}

impl Aggregate {
    pub fn new(agents: impl IntoIterator<Item = (String, BTreeMap<String, String>)>) -> Self {
        Aggregate {
            agents: agents.into_iter().map(|(id, labels)| (id, AgentProgress { labels, ..Default::default() })).collect(),
            total: RunStats::default(),
            timeline: BTreeMap::new(),
            probe_phase: u32::MAX,
        }
    }

    /// Adds a snapshot; returns the seq of an interval that just became
    /// complete across the fleet, for live progress. The snapshot's numbers
    /// must have passed `stampede_proto::limits::check_snapshot`; every sum
    /// is checked here too, and a snapshot that fails is counted nowhere.
    pub fn add_snapshot(&mut self, s: &Snapshot) -> Result<Option<u64>, SnapshotError> {
        let expected = self.agents.len();
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
        let seq = s.seq;
        let stats = decode_steps(&s.steps, &s.phases).map_err(|source| SnapshotError::Decode { seq, source })?;
        let overflow = |what: &'static str| SnapshotError::Overflow { seq, what };
        let mut sums = Sums::default();
        let mut load = Sums::default();
        let mut ok_latency = histogram::new_hist();
        for (k, r) in &stats.steps {
            let errors = r.errors.iter().try_fold(0u64, |a, n| a.checked_add(*n)).ok_or_else(|| overflow("errors"))?;
            let one = Sums { requests: r.requests, errors, sent: r.bytes_sent, received: r.bytes_received };
            sums = sums.checked_add(&one).ok_or_else(|| overflow("snapshot"))?;
            if k.phase >= self.probe_phase {
                continue;
            }
            load = load.checked_add(&one).ok_or_else(|| overflow("snapshot"))?;
            if k.ok {
                // decode_steps built every histogram in our shape: adding fits.
                histogram::add(&mut ok_latency, &r.latency).map_err(|e| SnapshotError::Decode { seq, source: e.into() })?;
            }
        }
        // Every sum is checked before anything is changed.
        let mine = Sums { requests: agent.requests, errors: agent.errors, ..Sums::default() };
        let agent_after = mine.checked_add(&sums).ok_or_else(|| overflow("agent"))?;
        let interval_after = match self.timeline.get(&seq) {
            Some(iv) => Sums { requests: iv.requests, errors: iv.errors, sent: iv.bytes_sent, received: iv.bytes_received }.checked_add(&load).ok_or_else(|| overflow("interval"))?,
            None => load,
        };
        self.total.checked_add(&stats).map_err(|source| SnapshotError::Merge { seq, source })?;

        let agent = self.agents.get_mut(&s.agent_id).expect("looked up above");
        agent.seqs.insert(seq);
        if s.last {
            agent.last_seq = Some(seq);
        }
        agent.requests = agent_after.requests;
        agent.errors = agent_after.errors;
        let iv = self.timeline.entry(seq).or_insert_with(|| IntervalAgg {
            start_unix_nanos: s.interval_start_unix_nanos,
            requests: 0,
            errors: 0,
            bytes_sent: 0,
            bytes_received: 0,
            reported: 0,
            hist: Some(histogram::new_hist()),
            p99_ms: None,
        });
        iv.requests = interval_after.requests;
        iv.errors = interval_after.errors;
        iv.bytes_sent = interval_after.sent;
        iv.bytes_received = interval_after.received;
        iv.reported += 1;
        if let Some(h) = iv.hist.as_mut() {
            histogram::add(h, &ok_latency).map_err(|e| SnapshotError::Decode { seq, source: e.into() })?;
        }
        if iv.reported >= expected {
            iv.seal();
            return Ok(Some(seq));
        }
        Ok(None)
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
        self.agents.values().filter_map(|a| a.last_seq).max().or_else(|| self.timeline.keys().last().copied())
    }

    pub fn all_done(&self) -> bool {
        self.agents.values().all(AgentProgress::done)
    }

    /// Ends the run's bookkeeping: intervals some agent never sent are
    /// summarized from what did arrive.
    pub fn seal(&mut self) {
        for iv in self.timeline.values_mut() {
            iv.seal();
        }
    }
}
