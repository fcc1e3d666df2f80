//! What a simulated agent measures: realistic interval stats, encoded by
//! the agent's own encoder (`stampede_proto::convert::encode_steps`, which
//! puts each histogram on the wire with `histogram::encode_wire`).
//!
//! Encoding a few thousand requests' histograms for every agent every
//! second would make this process, not the coordinator, the bottleneck:
//! a pool of encoded intervals is made once per phase, and each agent
//! sends one of them per interval (which one depends on the agent and the
//! interval). The coordinator decodes every snapshot all the same.

use std::collections::BTreeMap;

use stampede_common::histogram;
use stampede_common::stats::{ErrorKind, RunStats, ScheduleStats, StepKey, StepRecord};
use stampede_proto::convert::encode_steps;
use stampede_proto::v1::{PhaseSchedule, StepStats};

/// The steps of the benchmark's plan: name, share of the requests, the
/// error the step sometimes ends in (its status, if the error has one).
pub const STEPS: [(&str, f64, ErrorKind, Option<u16>); 3] =
    [("read", 0.6, ErrorKind::Timeout, None), ("write", 0.3, ErrorKind::Http5xx, Some(503)), ("search", 0.1, ErrorKind::Http5xx, Some(500))];
/// Share of each step's requests that fail.
const ERROR_SHARE: f64 = 0.002;
const BYTES_SENT: u64 = 180;
const BYTES_RECEIVED: u64 = 900;

/// What the coordinator must end up with: the sum of what every agent sent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub requests: u64,
    pub errors: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub statuses: BTreeMap<u16, u64>,
}

impl Tally {
    pub fn add(&mut self, o: &Tally) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
        for (s, n) in &o.statuses {
            *self.statuses.entry(*s).or_default() += n;
        }
    }
}

/// One encoded interval of one agent, and its counts.
pub struct Interval {
    pub steps: Vec<StepStats>,
    pub schedule: ScheduleStats,
    pub tally: Tally,
    pub in_flight: u64,
}

impl Interval {
    /// The schedule of this interval for the wire; `last_done_us` is the
    /// only field that depends on when it was sent.
    pub fn phases(&self, phase: u32, last_done_us: u64) -> Vec<PhaseSchedule> {
        let s = &self.schedule;
        vec![PhaseSchedule { phase, scheduled: s.scheduled, dropped: s.dropped, late: s.late, max_lag_us: s.max_lag_us, last_done_us }]
    }
}

/// `pool[phase][i]`: encoded intervals to pick from.
pub struct Pool {
    pub by_phase: Vec<Vec<Interval>>,
}

impl Pool {
    pub fn new(phases: u32, per_phase: usize, requests_per_interval: u64, seed: u64) -> Pool {
        let mut rng = fastrand::Rng::with_seed(seed);
        let by_phase = (0..phases).map(|p| (0..per_phase).map(|_| interval(&mut rng, p, requests_per_interval)).collect()).collect();
        Pool { by_phase }
    }

    /// Mean encoded size of an interval's step entries (what a snapshot
    /// carries, less a few dozen bytes of ids and times).
    pub fn mean_bytes(&self) -> u64 {
        use prost::Message;
        let all: Vec<usize> = self.by_phase.iter().flatten().map(|iv| iv.steps.iter().map(|s| s.encoded_len() + 2).sum()).collect();
        (all.iter().sum::<usize>() / all.len().max(1)) as u64
    }

    /// Mean histograms per interval (latency, service, dispatch per entry).
    pub fn mean_histograms(&self) -> f64 {
        let all: Vec<usize> = self.by_phase.iter().flatten().map(|iv| iv.steps.len() * 3).collect();
        all.iter().sum::<usize>() as f64 / all.len().max(1) as f64
    }

    /// Agent `agent`'s interval `seq` in `phase`.
    pub fn pick(&self, phase: u32, agent: usize, seq: u64) -> &Interval {
        let v = &self.by_phase[phase as usize];
        &v[(agent.wrapping_mul(7919) + seq as usize) % v.len()]
    }
}

/// 100 µs to 50 ms, most of it in the low milliseconds (a heavy tail).
fn latency_us(rng: &mut fastrand::Rng) -> u64 {
    let u = rng.f64();
    (100.0 * 500f64.powf(u * u * u)) as u64
}

fn interval(rng: &mut fastrand::Rng, phase: u32, requests: u64) -> Interval {
    let mut stats = RunStats::default();
    let mut tally = Tally::default();
    let mut max_lag = 0;
    // ±10 % around the rate, as a real agent's intervals vary.
    let requests = requests.saturating_mul(90 + rng.u64(0..=20)) / 100;
    for (step, (_, share, error_kind, error_status)) in STEPS.iter().enumerate() {
        let n = (requests as f64 * share).round() as u64;
        let failed = (0..n).filter(|_| rng.f64() < ERROR_SHARE).count() as u64;
        for (ok, count) in [(true, n - failed), (false, failed)] {
            if count == 0 {
                continue;
            }
            let mut r = StepRecord::default();
            for _ in 0..count {
                let dispatch = rng.u64(2..=200);
                let service = latency_us(rng);
                histogram::record_us(&mut r.dispatch, dispatch);
                histogram::record_us(&mut r.service, service);
                histogram::record_us(&mut r.latency, service + dispatch);
                max_lag = max_lag.max(dispatch);
            }
            r.requests = count;
            r.bytes_sent = count * BYTES_SENT;
            r.bytes_received = count * BYTES_RECEIVED;
            let status = if ok { Some(if step == 1 { 201 } else { 200 }) } else { *error_status };
            if let Some(s) = status {
                r.statuses.insert(s, count);
                *tally.statuses.entry(s).or_default() += count;
            }
            if !ok {
                r.errors[*error_kind as usize] = count;
                tally.errors += count;
            }
            tally.requests += count;
            tally.bytes_sent += r.bytes_sent;
            tally.bytes_received += r.bytes_received;
            stats.steps.insert(StepKey { phase, step: step as u32, ok }, r);
        }
    }
    let (steps, _) = encode_steps(&stats);
    let schedule = ScheduleStats { scheduled: tally.requests, dropped: 0, late: 0, max_lag_us: max_lag, last_done_us: 0 };
    Interval { steps, schedule, tally, in_flight: rng.u64(0..12) }
}
