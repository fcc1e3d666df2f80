//! Merges the agents' snapshots of one run, exactly: histograms are added,
//! never percentiles averaged. Tracks per agent which intervals arrived, so a
//! duplicate is never counted twice and a gap is never silently ignored.

use std::collections::{BTreeMap, BTreeSet};

use stampede_common::histogram::{self, Hist};
use stampede_common::stats::{quantile_ms, RunStats};
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

pub struct Aggregate {
    pub agents: BTreeMap<String, AgentProgress>,
    pub total: RunStats,
    pub timeline: BTreeMap<u64, IntervalAgg>,
}

impl Aggregate {
    pub fn new(agents: impl IntoIterator<Item = (String, BTreeMap<String, String>)>) -> Self {
        Aggregate {
            agents: agents.into_iter().map(|(id, labels)| (id, AgentProgress { labels, ..Default::default() })).collect(),
            total: RunStats::default(),
            timeline: BTreeMap::new(),
        }
    }

    /// Adds a snapshot; returns the seq of an interval that just became
    /// complete across the fleet, for live progress.
    pub fn add_snapshot(&mut self, s: &Snapshot) -> Result<Option<u64>, DecodeError> {
        let expected = self.agents.len();
        let Some(agent) = self.agents.get_mut(&s.agent_id) else {
            return Ok(None);
        };
        if !agent.seqs.insert(s.seq) {
            agent.duplicates += 1;
            return Ok(None);
        }
        let stats = decode_steps(&s.steps, &s.phases)?;
        if s.last {
            agent.last_seq = Some(s.seq);
        }
        let (mut requests, mut errors, mut sent, mut received) = (0, 0, 0, 0);
        let mut ok_latency = histogram::new_hist();
        for (k, r) in &stats.steps {
            requests += r.requests;
            errors += r.error_count();
            sent += r.bytes_sent;
            received += r.bytes_received;
            if k.ok {
                histogram::add(&mut ok_latency, &r.latency)?;
            }
        }
        agent.requests += requests;
        agent.errors += errors;
        self.total.add(&stats)?;

        let iv = self.timeline.entry(s.seq).or_insert_with(|| IntervalAgg {
            start_unix_nanos: s.interval_start_unix_nanos,
            requests: 0,
            errors: 0,
            bytes_sent: 0,
            bytes_received: 0,
            reported: 0,
            hist: Some(histogram::new_hist()),
            p99_ms: None,
        });
        iv.requests += requests;
        iv.errors += errors;
        iv.bytes_sent += sent;
        iv.bytes_received += received;
        iv.reported += 1;
        if let Some(h) = iv.hist.as_mut() {
            histogram::add(h, &ok_latency)?;
        }
        if iv.reported >= expected {
            iv.seal();
            return Ok(Some(s.seq));
        }
        Ok(None)
    }

    pub fn finished(&mut self, f: RunFinished) {
        if let Some(a) = self.agents.get_mut(&f.agent_id) {
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
