//! A worker's measurements for the current interval. Owned by one worker
//! thread (no locks, no atomics); the worker hands the whole recorder's
//! content to the engine at each interval boundary.
//!
//! A request belongs to the interval it was *due* in (open model: its
//! intended start; closed: its send), not the one it finished in: a request
//! that times out 2 s into a partition is the partition's. The common case,
//! due in the interval being recorded, costs one division more than before;
//! a late completion goes to a per-interval side table, sent with the
//! current interval as an addition to its own (`StepStats.due_seq`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use stampede_common::histogram::record_us;
use stampede_common::stats::{ErrorKind, RunStats, ScheduleStats, StepKey, StepRecord, LATE_BOUND};

use crate::check::CheckBits;

/// What became of one request.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// A response arrived; `success` says whether the step accepts its
    /// status, `checks` how the step's checks (if any) came out.
    Response { status: u16, success: bool, received: u64, checks: CheckBits },
    Failed(ErrorKind),
}

pub struct Recorder {
    steps: usize,
    /// Requests due in interval `current`. Indexed by
    /// `(phase · steps + step) · 2 + ok`; allocated on first use, since most
    /// (phase, step, outcome) combinations never occur.
    records: Vec<Option<Box<StepRecord>>>,
    /// Per load phase (the plan's phases, not the flow requests' record
    /// phases of contract F, which the coordinator refuses a schedule for).
    schedule: Vec<ScheduleStats>,
    /// The interval `records` holds; the one being recorded.
    current: u64,
    /// Requests due in any other interval, by its seq: late completions
    /// (and, right at a boundary, early ones the flush has not reached yet).
    other: BTreeMap<u64, RunStats>,
    /// Interval k is [start + k·interval, start + (k+1)·interval).
    start: Instant,
    interval_nanos: u64,
}

/// What one interval's flush carries: the interval's own requests and
/// additions to earlier intervals (by due seq, each earlier than its own).
#[derive(Debug, Default)]
pub struct Taken {
    pub stats: RunStats,
    pub late: Vec<(u64, RunStats)>,
}

impl Recorder {
    /// `phases` record phases (the plan's, or with flows more: contract F),
    /// of which the first `load_phases` are the plan's own.
    pub fn new(phases: usize, load_phases: usize, steps: usize, start: Instant, interval: Duration) -> Self {
        Recorder {
            steps,
            records: (0..phases * steps * 2).map(|_| None).collect(),
            schedule: vec![ScheduleStats::default(); load_phases.min(phases)],
            current: 0,
            other: BTreeMap::new(),
            start,
            interval_nanos: u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX).max(1),
        }
    }

    /// The interval `t` falls in (0 for an instant before the start). In
    /// u64 (584 years of nanoseconds): a u128 division costs several times more.
    #[inline]
    fn due_seq(&self, t: Instant) -> u64 {
        let d = t.saturating_duration_since(self.start);
        d.as_secs().saturating_mul(1_000_000_000).saturating_add(u64::from(d.subsec_nanos())) / self.interval_nanos
    }

    /// An open-model arrival came due; `lag` is how late it started, `None`
    /// when it was dropped.
    #[inline]
    pub fn arrival(&mut self, phase: usize, lag: Option<Duration>) {
        let s = &mut self.schedule[phase];
        s.scheduled += 1;
        match lag {
            None => s.dropped += 1,
            Some(lag) => {
                if lag > LATE_BOUND {
                    s.late += 1;
                }
                s.max_lag_us = s.max_lag_us.max(lag.as_micros() as u64);
            }
        }
    }

    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn request(&mut self, phase: usize, step: usize, outcome: Outcome, intended: Instant, started: Instant, done: Instant, sent: u64) {
        let (ok, received, error, response) = match outcome {
            // Accepted by status but failing a check: a failed request of kind `check`.
            Outcome::Response { success: true, received, checks, status } if !checks.all_passed() => (false, received, Some(ErrorKind::Check), Some((status, checks))),
            Outcome::Response { success: true, received, checks, status } => (true, received, None, Some((status, checks))),
            Outcome::Response { status, received, checks, .. } => (false, received, Some(ErrorKind::for_status(status)), Some((status, checks))),
            Outcome::Failed(kind) => (false, 0, Some(kind), None),
        };
        // A flow request's record phase has no schedule: its flow's own
        // completion, recorded in the load phase, is the one that counts.
        if let Some(s) = self.schedule.get_mut(phase) {
            s.last_done_us = s.last_done_us.max(micros(done.saturating_duration_since(self.start)));
        }
        let due = self.due_seq(intended);
        let r: &mut StepRecord = if due == self.current {
            self.records[(phase * self.steps + step) * 2 + ok as usize].get_or_insert_with(Default::default)
        } else {
            // Rare (a request that outlived its interval): allocating here is fine.
            self.other.entry(due).or_default().steps.entry(StepKey { phase: phase as u32, step: step as u32, ok }).or_default()
        };
        if let Some((status, checks)) = response {
            // Map entries are made the first time a code or check appears
            // in an interval; after that counting is a lookup.
            r.count_status(status);
            for (check, passed) in checks.results() {
                r.count_check(check, passed);
            }
        }
        record_us(&mut r.latency, micros(done - intended));
        record_us(&mut r.service, micros(done - started));
        record_us(&mut r.dispatch, micros(started.saturating_duration_since(intended)));
        r.requests += 1;
        if let Some(kind) = error {
            r.errors[kind as usize] += 1;
        }
        r.bytes_sent += sent;
        r.bytes_received += received;
    }

    /// The TLS handshake of the connection a request opened, under the
    /// same key (due interval, phase, step, outcome) as that request's
    /// [`Recorder::request`]. Only `https://` targets call it.
    pub fn handshake(&mut self, phase: usize, step: usize, outcome: Outcome, intended: Instant, took: Duration) {
        let ok = matches!(outcome, Outcome::Response { success: true, checks, .. } if checks.all_passed());
        let due = self.due_seq(intended);
        let r: &mut StepRecord = if due == self.current {
            self.records[(phase * self.steps + step) * 2 + ok as usize].get_or_insert_with(Default::default)
        } else {
            self.other.entry(due).or_default().steps.entry(StepKey { phase: phase as u32, step: step as u32, ok }).or_default()
        };
        record_us(&mut r.handshake, micros(took));
    }

    /// `count` arrivals of `phase` that were never sent because the phase
    /// ended first (an overloaded pacer): scheduled, dropped, and failed
    /// requests of `step`, recorded at once rather than one by one.
    pub fn dropped(&mut self, phase: usize, step: usize, count: u64) {
        if count == 0 {
            return;
        }
        let s = &mut self.schedule[phase];
        s.scheduled += count;
        s.dropped += count;
        let r = self.records[(phase * self.steps + step) * 2].get_or_insert_with(Default::default);
        // Never sent: no latency to speak of; the histograms must still
        // count them so that they match `requests`.
        for h in [&mut r.latency, &mut r.service, &mut r.dispatch] {
            h.saturating_record_n(1, count);
        }
        r.requests += count;
        r.errors[ErrorKind::Dropped as usize] += count;
    }

    /// Everything recorded for interval `seq` and, as additions, for the
    /// intervals before it; the recorder then records interval `seq + 1`.
    /// `last`: the worker is done, so nothing can be due after `seq`.
    pub fn take(&mut self, seq: u64, last: bool) -> Taken {
        let mut stats = self.take_current();
        let later = self.other.split_off(&(seq + 1));
        let mut late: Vec<(u64, RunStats)> = std::mem::replace(&mut self.other, later).into_iter().collect();
        if let Some(i) = late.iter().position(|(due, _)| *due == seq) {
            stats.add(&late.remove(i).1).expect("one histogram shape");
        }
        if last {
            // Nothing can be due after the last flush; should a clock step
            // have put something there, it is counted in the last interval.
            for (_, r) in std::mem::take(&mut self.other) {
                stats.add(&r).expect("one histogram shape");
            }
        }
        self.current = seq + 1;
        Taken { stats, late }
    }

    fn take_current(&mut self) -> RunStats {
        let mut out = RunStats::default();
        let steps = self.steps;
        for (i, slot) in self.records.iter_mut().enumerate() {
            if let Some(r) = slot.take() {
                let key = StepKey { phase: (i / 2 / steps) as u32, step: (i / 2 % steps) as u32, ok: i % 2 == 1 };
                out.steps.insert(key, *r);
            }
        }
        for (p, s) in self.schedule.iter_mut().enumerate() {
            if s.scheduled > 0 || s.last_done_us > 0 {
                out.schedule.insert(p as u32, std::mem::take(s));
            }
        }
        out
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_land_under_their_key_and_reset() {
        let t0 = Instant::now();
        let mut r = Recorder::new(2, 2, 3, t0, Duration::from_secs(1));
        let ok = Outcome::Response { status: 200, success: true, received: 10, checks: CheckBits::default() };
        let bad = Outcome::Response { status: 503, success: false, received: 5, checks: CheckBits::default() };
        r.request(1, 2, ok, t0, t0 + Duration::from_millis(5), t0 + Duration::from_millis(7), 40);
        r.request(1, 2, bad, t0, t0, t0 + Duration::from_millis(1), 40);
        r.request(0, 0, Outcome::Failed(ErrorKind::Connect), t0, t0, t0, 40);
        r.arrival(1, Some(Duration::from_millis(20)));
        r.arrival(1, None);
        let s = r.take(0, false).stats;
        let k = StepKey { phase: 1, step: 2, ok: true };
        let rec = &s.steps[&k];
        assert_eq!(rec.requests, 1);
        // Latency counts from the intended start, service time from the actual one.
        assert!((7000..7010).contains(&rec.latency.max()));
        assert!((2000..2010).contains(&rec.service.max()));
        assert_eq!(s.steps[&StepKey { phase: 1, step: 2, ok: false }].errors[ErrorKind::Http5xx as usize], 1);
        assert_eq!(s.steps[&StepKey { phase: 0, step: 0, ok: false }].errors[ErrorKind::Connect as usize], 1);
        assert_eq!(s.schedule[&1], ScheduleStats { scheduled: 2, dropped: 1, late: 1, max_lag_us: 20_000, last_done_us: 7_000 });
        // Phase 0's only request completed at t0: nothing after the start.
        assert!(!s.schedule.contains_key(&0));
        assert_eq!(rec.statuses[&200], 1);
        assert_eq!(s.steps[&StepKey { phase: 1, step: 2, ok: false }].statuses[&503], 1);
        assert!(r.take(1, false).stats.steps.is_empty());
    }

    /// A pseudo-random stream of requests, each due in some interval and
    /// finishing up to three intervals later, flushed at every boundary:
    /// every request is counted exactly once, in the interval it was due
    /// in, whichever flush carries it; nothing is ever added to a later one.
    #[test]
    fn late_completions_land_in_their_due_interval_and_totals_are_unchanged() {
        let t0 = Instant::now();
        let iv = Duration::from_millis(100);
        let mut r = Recorder::new(1, 1, 2, t0, iv);
        let mut rng = fastrand::Rng::with_seed(9);
        // (due seq, finish seq) of every request, and what each interval should get.
        let mut expected: BTreeMap<u64, u64> = BTreeMap::new();
        let mut pending: Vec<(u64, u64, Instant)> = Vec::new();
        for k in 0..400u64 {
            let intended = t0 + iv * (k / 20) as u32 + Duration::from_micros(rng.u64(0..99_000));
            let due = k / 20;
            pending.push((due, due + rng.u64(0..4), intended));
            *expected.entry(due).or_default() += 1;
        }
        let last_seq = pending.iter().map(|p| p.1).max().unwrap();
        let mut got: BTreeMap<u64, u64> = BTreeMap::new();
        let mut total = 0;
        for seq in 0..=last_seq {
            for &(_, _, intended) in pending.iter().filter(|p| p.1 == seq) {
                r.request(0, (intended.elapsed().as_nanos() % 2) as usize, Outcome::Failed(ErrorKind::Timeout), intended, intended, t0 + iv * (seq as u32) + iv / 2, 1);
            }
            let taken = r.take(seq, seq == last_seq);
            let own: u64 = taken.stats.steps.values().map(|s| s.requests).sum();
            *got.entry(seq).or_default() += own;
            total += own;
            for (due, stats) in &taken.late {
                assert!(*due < seq, "an addition goes to an earlier interval: {due} in flush {seq}");
                let n: u64 = stats.steps.values().map(|s| s.requests).sum();
                *got.entry(*due).or_default() += n;
                total += n;
            }
        }
        got.retain(|_, n| *n > 0);
        assert_eq!(got, expected);
        assert_eq!(total, 400);
    }

    #[test]
    fn a_handshake_lands_beside_its_request() {
        let t0 = Instant::now();
        let mut r = Recorder::new(1, 1, 1, t0, Duration::from_secs(1));
        let ok = Outcome::Response { status: 200, success: true, received: 10, checks: CheckBits::default() };
        r.request(0, 0, ok, t0, t0, t0 + Duration::from_millis(3), 40);
        r.handshake(0, 0, ok, t0, Duration::from_micros(1500));
        r.request(0, 0, Outcome::Failed(ErrorKind::Timeout), t0, t0, t0, 40);
        r.handshake(0, 0, Outcome::Failed(ErrorKind::Timeout), t0, Duration::from_micros(900));
        let s = r.take(0, false).stats;
        let ok = &s.steps[&StepKey { phase: 0, step: 0, ok: true }];
        assert_eq!((ok.handshake.len(), ok.handshake.max() / 10), (1, 150));
        assert_eq!(s.steps[&StepKey { phase: 0, step: 0, ok: false }].handshake.len(), 1);
    }

    #[test]
    fn an_accepted_response_failing_a_check_is_a_check_failure_counted_per_check() {
        let t0 = Instant::now();
        let mut r = Recorder::new(1, 1, 1, t0, Duration::from_secs(1));
        let checks = CheckBits { base: 4, count: 2, failed: 0b10 };
        r.request(0, 0, Outcome::Response { status: 200, success: true, received: 10, checks }, t0, t0, t0, 40);
        let passing = CheckBits { failed: 0, ..checks };
        r.request(0, 0, Outcome::Response { status: 200, success: true, received: 10, checks: passing }, t0, t0, t0, 40);
        let s = r.take(0, false).stats;
        let failed = &s.steps[&StepKey { phase: 0, step: 0, ok: false }];
        assert_eq!(failed.errors[ErrorKind::Check as usize], 1);
        assert_eq!(failed.checks[&4], stampede_common::stats::CheckCount { passed: 1, failed: 0 });
        assert_eq!(failed.checks[&5], stampede_common::stats::CheckCount { passed: 0, failed: 1 });
        let ok = &s.steps[&StepKey { phase: 0, step: 0, ok: true }];
        assert_eq!((ok.requests, ok.checks[&5].passed), (1, 1));
    }
}
