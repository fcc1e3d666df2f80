//! Measurements as both sides hold them: a [`StepRecord`] per (phase, step,
//! outcome) with three histograms and counters, and the per-phase schedule
//! counters that tell whether the client kept up. Agents record into these;
//! the coordinator decodes snapshots into the same types and adds them up.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::histogram::{self, Hist};

/// Why a request failed, as a small closed set (never raw error strings), so
/// counts from many agents add up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The TCP connection could not be made.
    Connect,
    /// No complete response within the plan's timeout.
    Timeout,
    /// The connection broke mid-request (reset, closed early).
    Io,
    Http4xx,
    Http5xx,
    /// Any other status the step's `expect` does not accept.
    HttpOther,
    /// The response was not valid HTTP/1.1.
    Parse,
    /// An open-model arrival that was never sent: `max_in_flight` requests
    /// were already waiting. The user it stands for was not served, so it
    /// counts as a failed request (in `requests` and in the error rate).
    Dropped,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Io,
        ErrorKind::Http4xx,
        ErrorKind::Http5xx,
        ErrorKind::HttpOther,
        ErrorKind::Parse,
        ErrorKind::Dropped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Io => "io",
            ErrorKind::Http4xx => "http_4xx",
            ErrorKind::Http5xx => "http_5xx",
            ErrorKind::HttpOther => "http_other",
            ErrorKind::Parse => "parse",
            ErrorKind::Dropped => "dropped",
        }
    }

    pub fn parse(s: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn for_status(status: u16) -> ErrorKind {
        match status {
            400..=499 => ErrorKind::Http4xx,
            500..=599 => ErrorKind::Http5xx,
            _ => ErrorKind::HttpOther,
        }
    }
}

/// Identifies one stream of measurements inside a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StepKey {
    pub phase: u32,
    pub step: u32,
    pub ok: bool,
}

#[derive(Debug, Clone)]
pub struct StepRecord {
    /// Intended start → response complete: what a user waiting in line saw.
    pub latency: Hist,
    /// Actual start → response complete: what the server took.
    pub service: Hist,
    /// Intended start → actual start: how far the client lagged its schedule.
    pub dispatch: Hist,
    pub requests: u64,
    pub errors: [u64; ErrorKind::ALL.len()],
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

impl Default for StepRecord {
    fn default() -> Self {
        StepRecord {
            latency: histogram::new_hist(),
            service: histogram::new_hist(),
            dispatch: histogram::new_hist(),
            requests: 0,
            errors: [0; ErrorKind::ALL.len()],
            bytes_sent: 0,
            bytes_received: 0,
        }
    }
}

impl StepRecord {
    pub fn error_count(&self) -> u64 {
        self.errors.iter().sum()
    }

    pub fn add(&mut self, other: &StepRecord) -> Result<(), histogram::CodecError> {
        histogram::add(&mut self.latency, &other.latency)?;
        histogram::add(&mut self.service, &other.service)?;
        histogram::add(&mut self.dispatch, &other.dispatch)?;
        self.requests += other.requests;
        for (a, b) in self.errors.iter_mut().zip(other.errors) {
            *a += b;
        }
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        Ok(())
    }

    pub fn reset(&mut self) {
        self.latency.reset();
        self.service.reset();
        self.dispatch.reset();
        self.requests = 0;
        self.errors = [0; ErrorKind::ALL.len()];
        self.bytes_sent = 0;
        self.bytes_received = 0;
    }
}

/// How well the open-model schedule was kept in one phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ScheduleStats {
    /// Arrivals that came due.
    pub scheduled: u64,
    /// Arrivals not started because the in-flight limit was reached.
    pub dropped: u64,
    /// Arrivals started later than [`LATE_BOUND`] after their intended time.
    pub late: u64,
    pub max_lag_us: u64,
}

/// An arrival that starts this much after its intended time counts as late.
/// tokio's timers are 1 ms grained and the pacer ticks every millisecond, so a
/// healthy client lags 0–2 ms; 10 ms means the client's thread was busy.
pub const LATE_BOUND: std::time::Duration = std::time::Duration::from_millis(10);

/// More than this share of arrivals dropped or late: the client, not the
/// server, was measured, and the run's verdict is `invalid`.
pub const SATURATION_LIMIT: f64 = 0.01;

impl ScheduleStats {
    pub fn add(&mut self, o: &ScheduleStats) {
        self.scheduled += o.scheduled;
        self.dropped += o.dropped;
        self.late += o.late;
        self.max_lag_us = self.max_lag_us.max(o.max_lag_us);
    }

    /// Share of arrivals that did not start on time.
    pub fn miss_ratio(&self) -> f64 {
        if self.scheduled == 0 {
            0.0
        } else {
            (self.dropped + self.late) as f64 / self.scheduled as f64
        }
    }

    pub fn saturated(&self) -> bool {
        self.miss_ratio() > SATURATION_LIMIT
    }
}

/// Everything measured in a run (or an interval), keyed by step and phase.
#[derive(Debug, Clone, Default)]
pub struct RunStats {
    pub steps: BTreeMap<StepKey, StepRecord>,
    pub schedule: BTreeMap<u32, ScheduleStats>,
}

impl RunStats {
    pub fn add(&mut self, other: &RunStats) -> Result<(), histogram::CodecError> {
        for (k, r) in &other.steps {
            self.steps.entry(*k).or_default().add(r)?;
        }
        for (p, s) in &other.schedule {
            self.schedule.entry(*p).or_default().add(s);
        }
        Ok(())
    }

    /// Merges every record whose key passes `filter` into one summary.
    pub fn summarize(&self, filter: impl Fn(&StepKey) -> bool) -> Summary {
        let mut ok = StepRecord::default();
        let mut requests = 0;
        let mut errors = 0;
        let mut by_kind = [0u64; ErrorKind::ALL.len()];
        for (k, r) in self.steps.iter().filter(|(k, _)| filter(k)) {
            requests += r.requests;
            errors += r.error_count();
            for (a, b) in by_kind.iter_mut().zip(r.errors) {
                *a += b;
            }
            if k.ok {
                ok.add(r).expect("records share one histogram shape");
            }
        }
        Summary { requests, errors, errors_by_kind: by_kind, ok }
    }
}

/// A merged view over some records. Latency percentiles are over successful
/// requests only: failures are counted by `error_rate`, and a fast
/// "connection refused" must not make p99 look better.
#[derive(Debug, Clone)]
pub struct Summary {
    pub requests: u64,
    pub errors: u64,
    pub errors_by_kind: [u64; ErrorKind::ALL.len()],
    /// The successful requests' merged record.
    pub ok: StepRecord,
}

impl Summary {
    /// Requests that went out (any outcome): `requests` less the dropped
    /// arrivals, which count as failed requests but were never sent — what
    /// throughput is made of.
    pub fn sent(&self) -> u64 {
        self.requests - self.errors_by_kind[ErrorKind::Dropped as usize]
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// Latency quantile in milliseconds, `None` when no request succeeded.
    pub fn latency_ms(&self, quantile: f64) -> Option<f64> {
        quantile_ms(&self.ok.latency, quantile)
    }

    pub fn max_ms(&self) -> Option<f64> {
        (!self.ok.latency.is_empty()).then(|| self.ok.latency.max() as f64 / 1e3)
    }
}

pub fn quantile_ms(h: &Hist, quantile: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(quantile) as f64 / 1e3)
}
