//! A worker's measurements for the current interval. Owned by one worker
//! thread (no locks, no atomics); the worker hands the whole recorder's
//! content to the engine at each interval boundary.

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
    /// Indexed by `(phase · steps + step) · 2 + ok`; allocated on first use,
    /// since most (phase, step, outcome) combinations never occur.
    records: Vec<Option<Box<StepRecord>>>,
    schedule: Vec<ScheduleStats>,
}

impl Recorder {
    pub fn new(phases: usize, steps: usize) -> Self {
        Recorder {
            steps,
            records: (0..phases * steps * 2).map(|_| None).collect(),
            schedule: vec![ScheduleStats::default(); phases],
        }
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
        let slot = &mut self.records[(phase * self.steps + step) * 2 + ok as usize];
        let r = slot.get_or_insert_with(Default::default);
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

    /// Everything recorded since the last call; the recorder starts empty again.
    pub fn take(&mut self) -> RunStats {
        let mut out = RunStats::default();
        let steps = self.steps;
        for (i, slot) in self.records.iter_mut().enumerate() {
            if let Some(r) = slot.take() {
                let key = StepKey { phase: (i / 2 / steps) as u32, step: (i / 2 % steps) as u32, ok: i % 2 == 1 };
                out.steps.insert(key, *r);
            }
        }
        for (p, s) in self.schedule.iter_mut().enumerate() {
            if s.scheduled > 0 {
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
        let mut r = Recorder::new(2, 3);
        let t0 = Instant::now();
        let ok = Outcome::Response { status: 200, success: true, received: 10, checks: CheckBits::default() };
        let bad = Outcome::Response { status: 503, success: false, received: 5, checks: CheckBits::default() };
        r.request(1, 2, ok, t0, t0 + Duration::from_millis(5), t0 + Duration::from_millis(7), 40);
        r.request(1, 2, bad, t0, t0, t0 + Duration::from_millis(1), 40);
        r.request(0, 0, Outcome::Failed(ErrorKind::Connect), t0, t0, t0, 40);
        r.arrival(1, Some(Duration::from_millis(20)));
        r.arrival(1, None);
        let s = r.take();
        let k = StepKey { phase: 1, step: 2, ok: true };
        let rec = &s.steps[&k];
        assert_eq!(rec.requests, 1);
        // Latency counts from the intended start, service time from the actual one.
        assert!((7000..7010).contains(&rec.latency.max()));
        assert!((2000..2010).contains(&rec.service.max()));
        assert_eq!(s.steps[&StepKey { phase: 1, step: 2, ok: false }].errors[ErrorKind::Http5xx as usize], 1);
        assert_eq!(s.steps[&StepKey { phase: 0, step: 0, ok: false }].errors[ErrorKind::Connect as usize], 1);
        assert_eq!(s.schedule[&1], ScheduleStats { scheduled: 2, dropped: 1, late: 1, max_lag_us: 20_000 });
        assert_eq!(rec.statuses[&200], 1);
        assert_eq!(s.steps[&StepKey { phase: 1, step: 2, ok: false }].statuses[&503], 1);
        assert!(r.take().steps.is_empty());
    }

    #[test]
    fn an_accepted_response_failing_a_check_is_a_check_failure_counted_per_check() {
        let mut r = Recorder::new(1, 1);
        let t0 = Instant::now();
        let checks = CheckBits { base: 4, count: 2, failed: 0b10 };
        r.request(0, 0, Outcome::Response { status: 200, success: true, received: 10, checks }, t0, t0, t0, 40);
        let passing = CheckBits { failed: 0, ..checks };
        r.request(0, 0, Outcome::Response { status: 200, success: true, received: 10, checks: passing }, t0, t0, t0, 40);
        let s = r.take();
        let failed = &s.steps[&StepKey { phase: 0, step: 0, ok: false }];
        assert_eq!(failed.errors[ErrorKind::Check as usize], 1);
        assert_eq!(failed.checks[&4], stampede_common::stats::CheckCount { passed: 1, failed: 0 });
        assert_eq!(failed.checks[&5], stampede_common::stats::CheckCount { passed: 0, failed: 1 });
        let ok = &s.steps[&StepKey { phase: 0, step: 0, ok: true }];
        assert_eq!((ok.requests, ok.checks[&5].passed), (1, 1));
    }
}
