//! Measurements as both sides hold them: a [`StepRecord`] per (phase, step,
//! outcome) with three histograms and counters, and the per-phase schedule
//! counters that tell whether the client kept up. Agents record into these;
//! the coordinator decodes snapshots into the same types and adds them up.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::histogram::accum::Accum;
use crate::histogram::{self, Hist};

/// What a [`Record`] keeps its distributions in: hdrhistogram's
/// `Histogram` (agents, reports), the coordinator's [`Accum`] (what
/// snapshots are added to), or nothing (`()`: counters only).
pub trait Histo: Clone + std::fmt::Debug {
    fn empty() -> Self;
    fn is_empty(&self) -> bool;
    fn reset(&mut self);
}

/// `Hist` and `Accum` are both histograms of stampede's shape, with the
/// same three operations under the same names.
macro_rules! histo {
    ($t:ty, $empty:expr) => {
        impl Histo for $t {
            fn empty() -> Self {
                $empty
            }
            fn is_empty(&self) -> bool {
                <$t>::is_empty(self)
            }
            fn reset(&mut self) {
                <$t>::reset(self)
            }
        }
    };
}
histo!(Hist, histogram::new_hist());
histo!(Accum, Accum::default());

impl Histo for () {
    fn empty() -> Self {}
    fn is_empty(&self) -> bool {
        true
    }
    fn reset(&mut self) {}
}

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
    /// A request in flight (sent, no answer yet) when the run was stopped
    /// early (Ctrl-C, a signal, an abort): it never completed, so it counts
    /// as a failed request — an interrupted run's report accounts for every
    /// arrival that came due (issue 8, item 5). Not in throughput: it never ended.
    Aborted,
    /// A response whose status the step accepts but that failed one of the
    /// step's checks: a failed request, counted per check in
    /// [`StepRecord::checks`].
    Check,
    /// An `https://` target's TLS failed: the handshake (certificate not
    /// trusted, wrong name, expired; no client certificate where the server
    /// wants one) or a TLS alert later on the connection.
    Tls,
    /// A flow's `capture` found nothing in its response (no such JSON
    /// field, header, or regex match): the flow cannot go on.
    Capture,
    /// A flow request's `repeat_until` never held within its `for`: the
    /// job it polls is stuck.
    Stuck,
    /// A step's `unique` data rows were used up on its agent: the
    /// execution was not sent (a closed or iterations user then stops for
    /// the phase). Last in the list: kinds are indexed by position (arrays, `ALL`).
    Data,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 14] = [
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Io,
        ErrorKind::Http4xx,
        ErrorKind::Http5xx,
        ErrorKind::HttpOther,
        ErrorKind::Parse,
        ErrorKind::Dropped,
        ErrorKind::Aborted,
        ErrorKind::Check,
        ErrorKind::Tls,
        ErrorKind::Capture,
        ErrorKind::Stuck,
        ErrorKind::Data,
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
            ErrorKind::Aborted => "aborted",
            ErrorKind::Check => "check",
            ErrorKind::Tls => "tls",
            ErrorKind::Capture => "capture",
            ErrorKind::Stuck => "stuck",
            ErrorKind::Data => "data",
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

/// How often one named check passed and failed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CheckCount {
    pub passed: u64,
    pub failed: u64,
}

impl CheckCount {
    fn fits(&self, o: &CheckCount) -> bool {
        self.passed.checked_add(o.passed).is_some() && self.failed.checked_add(o.failed).is_some()
    }
}

/// One (phase, step, outcome)'s measurements as agents record and reports
/// read them.
pub type StepRecord = Record<Hist>;
/// The same as the coordinator adds snapshots up (`Aggregate`).
pub type AccRecord = Record<Accum>;

#[derive(Debug, Clone)]
pub struct Record<H: Histo = Hist> {
    /// Intended start → response complete: what a user waiting in line saw.
    pub latency: H,
    /// Actual start → response complete: what the server took.
    pub service: H,
    /// Intended start → actual start: how far the client lagged its schedule.
    pub dispatch: H,
    /// TLS handshakes (`https://` targets), each recorded with the request
    /// that opened its connection: TCP connected → handshake done. Empty for
    /// plain HTTP, and then not sent (an empty histogram costs nothing on
    /// the wire).
    pub handshake: H,
    pub requests: u64,
    pub errors: [u64; ErrorKind::ALL.len()],
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Every HTTP response received, by status code, success or not. A
    /// status seen once keeps its entry, so recording allocates only the
    /// first time a code appears.
    pub statuses: BTreeMap<u16, u64>,
    /// Per check, keyed by its plan-wide index (`Plan::check_names`).
    pub checks: BTreeMap<u32, CheckCount>,
}

impl<H: Histo> Default for Record<H> {
    fn default() -> Self {
        Record {
            latency: H::empty(),
            service: H::empty(),
            dispatch: H::empty(),
            handshake: H::empty(),
            requests: 0,
            errors: [0; ErrorKind::ALL.len()],
            bytes_sent: 0,
            bytes_received: 0,
            statuses: BTreeMap::new(),
            checks: BTreeMap::new(),
        }
    }
}

impl<H: Histo> Record<H> {
    pub fn error_count(&self) -> u64 {
        self.errors.iter().sum()
    }

    /// Whether adding `other`'s counters keeps each, and the sum of the
    /// error kinds, under 2^64 (its histograms are not looked at).
    pub fn fits<G: Histo>(&self, other: &Record<G>) -> bool {
        let kinds = |e: &[u64]| e.iter().try_fold(0u64, |sum, n| sum.checked_add(*n));
        self.requests.checked_add(other.requests).is_some()
            && self.bytes_sent.checked_add(other.bytes_sent).is_some()
            && self.bytes_received.checked_add(other.bytes_received).is_some()
            && kinds(&self.errors).zip(kinds(&other.errors)).is_some_and(|(a, b)| a.checked_add(b).is_some())
            && other.statuses.iter().all(|(s, n)| self.statuses.get(s).copied().unwrap_or(0).checked_add(*n).is_some())
            && other.checks.iter().all(|(c, n)| self.checks.get(c).copied().unwrap_or_default().fits(n))
    }

    /// Adds `other`'s counters (not its histograms); they must [`Record::fits`].
    pub fn add_counters<G: Histo>(&mut self, other: &Record<G>) {
        self.requests += other.requests;
        for (a, b) in self.errors.iter_mut().zip(other.errors) {
            *a += b;
        }
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        for (s, n) in &other.statuses {
            *self.statuses.entry(*s).or_insert(0) += n;
        }
        for (c, n) in &other.checks {
            let mine = self.checks.entry(*c).or_default();
            mine.passed += n.passed;
            mine.failed += n.failed;
        }
    }

    /// The counters alone.
    pub fn counters(&self) -> Record<()> {
        self.with_hists([(); 4])
    }

    /// These counters with other histograms (latency, service, dispatch,
    /// handshake).
    pub fn with_hists<G: Histo>(&self, [latency, service, dispatch, handshake]: [G; 4]) -> Record<G> {
        Record {
            latency,
            service,
            dispatch,
            handshake,
            requests: self.requests,
            errors: self.errors,
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
            statuses: self.statuses.clone(),
            checks: self.checks.clone(),
        }
    }

    pub fn reset(&mut self) {
        self.latency.reset();
        self.service.reset();
        self.dispatch.reset();
        if !self.handshake.is_empty() {
            self.handshake.reset();
        }
        self.requests = 0;
        self.errors = [0; ErrorKind::ALL.len()];
        self.bytes_sent = 0;
        self.bytes_received = 0;
        // Zeroed, not cleared: the recorder keeps its entries so that
        // counting a status or check seen before never allocates.
        self.statuses.values_mut().for_each(|n| *n = 0);
        self.checks.values_mut().for_each(|c| *c = CheckCount::default());
    }

    /// Counts one response's status.
    pub fn count_status(&mut self, status: u16) {
        *self.statuses.entry(status).or_insert(0) += 1;
    }

    /// Counts one evaluation of the check with plan-wide index `check`.
    pub fn count_check(&mut self, check: u32, passed: bool) {
        let c = self.checks.entry(check).or_default();
        if passed {
            c.passed += 1;
        } else {
            c.failed += 1;
        }
    }
}

impl StepRecord {
    pub fn add(&mut self, other: &StepRecord) -> Result<(), histogram::CodecError> {
        histogram::add(&mut self.latency, &other.latency)?;
        histogram::add(&mut self.service, &other.service)?;
        histogram::add(&mut self.dispatch, &other.dispatch)?;
        if !other.handshake.is_empty() {
            histogram::add(&mut self.handshake, &other.handshake)?;
        }
        self.add_counters(other);
        Ok(())
    }
}

impl AccRecord {
    /// The record with its histograms made `Histogram`s (a read).
    pub fn to_step_record(&self) -> StepRecord {
        // Mostly empty (plain HTTP): no array to scan.
        let handshake = if self.handshake.is_empty() { histogram::new_hist() } else { self.handshake.to_hist() };
        self.with_hists([self.latency.to_hist(), self.service.to_hist(), self.dispatch.to_hist(), handshake])
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
    /// The latest completion of any request of the phase, µs after the
    /// run's start (0: none, or an agent too old to say): how the report
    /// knows when an iterations phase whose count was done early ended.
    pub last_done_us: u64,
}

/// An arrival that starts this much after its intended time counts as late.
/// tokio's timers are 1 ms grained and the pacer ticks every millisecond, so a
/// healthy client lags 0–2 ms; 10 ms means the client's thread was busy.
pub const LATE_BOUND: std::time::Duration = std::time::Duration::from_millis(10);

/// More than this share of arrivals dropped or late: the client, not the
/// server, was measured, and the run's verdict is `invalid`.
pub const SATURATION_LIMIT: f64 = 0.01;

impl ScheduleStats {
    /// Whether [`ScheduleStats::add`] keeps every count, and dropped plus
    /// late, under 2^64.
    pub fn fits(&self, o: &ScheduleStats) -> bool {
        let scheduled = self.scheduled.checked_add(o.scheduled);
        let dropped = self.dropped.checked_add(o.dropped);
        let late = self.late.checked_add(o.late);
        scheduled.is_some() && dropped.zip(late).is_some_and(|(d, l)| d.checked_add(l).is_some())
    }

    pub fn add(&mut self, o: &ScheduleStats) {
        self.scheduled += o.scheduled;
        self.dropped += o.dropped;
        self.late += o.late;
        self.max_lag_us = self.max_lag_us.max(o.max_lag_us);
        self.last_done_us = self.last_done_us.max(o.last_done_us);
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

/// Why two measurements could not be added.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error(transparent)]
    Histogram(#[from] histogram::CodecError),
    #[error("the counts of phase {phase}, step {step} would pass 2^64")]
    Overflow { phase: u32, step: u32 },
    #[error("the schedule counts of phase {phase} would pass 2^64")]
    ScheduleOverflow { phase: u32 },
}

/// Everything measured in a run (or an interval), keyed by step and phase.
pub type RunStats = Stats<Hist>;
/// The same as the coordinator adds snapshots up.
pub type AccStats = Stats<Accum>;

#[derive(Debug, Clone)]
pub struct Stats<H: Histo = Hist> {
    pub steps: BTreeMap<StepKey, Record<H>>,
    pub schedule: BTreeMap<u32, ScheduleStats>,
}

impl<H: Histo> Default for Stats<H> {
    fn default() -> Self {
        Stats { steps: BTreeMap::new(), schedule: BTreeMap::new() }
    }
}

impl AccStats {
    /// These stats with `Histogram`s (a read: reports, judging).
    pub fn to_run_stats(&self) -> RunStats {
        Stats { steps: self.steps.iter().map(|(k, r)| (*k, r.to_step_record())).collect(), schedule: self.schedule.clone() }
    }
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

    /// Adds `other` like [`RunStats::add`], but first checks that no count
    /// would pass `u64::MAX`: counts that arrive from the network are added
    /// with this, so that two forged `u64::MAX` counts are refused instead
    /// of wrapping (or panicking in a build with overflow checks). Nothing
    /// is added when it fails.
    pub fn checked_add(&mut self, other: &RunStats) -> Result<(), MergeError> {
        for (k, r) in &other.steps {
            if !self.steps.get(k).map_or_else(|| Record::<()>::default().fits(r), |mine| mine.fits(r)) {
                return Err(MergeError::Overflow { phase: k.phase, step: k.step });
            }
        }
        for (p, s) in &other.schedule {
            if !self.schedule.get(p).copied().unwrap_or_default().fits(s) {
                return Err(MergeError::ScheduleOverflow { phase: *p });
            }
        }
        self.add(other).map_err(MergeError::Histogram)
    }

    /// Merges every record whose key passes `filter` into one summary.
    pub fn summarize(&self, filter: impl Fn(&StepKey) -> bool) -> Summary {
        let mut ok = StepRecord::default();
        let mut requests = 0;
        let mut errors = 0;
        let mut by_kind = [0u64; ErrorKind::ALL.len()];
        // Saturating: the coordinator adds network counts with
        // `checked_add`, but a sum across steps could still pass 2^64.
        for (k, r) in self.steps.iter().filter(|(k, _)| filter(k)) {
            requests = u64::saturating_add(requests, r.requests);
            errors = u64::saturating_add(errors, r.errors.iter().fold(0u64, |s, n| s.saturating_add(*n)));
            for (a, b) in by_kind.iter_mut().zip(r.errors) {
                *a = a.saturating_add(b);
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
    /// Requests that went out and ended (any outcome): `requests` less the
    /// dropped arrivals, which count as failed requests but were never sent,
    /// and the aborted ones, cut off unfinished by an interruption — what
    /// throughput is made of.
    pub fn sent(&self) -> u64 {
        self.requests.saturating_sub(self.errors_by_kind[ErrorKind::Dropped as usize]).saturating_sub(self.errors_by_kind[ErrorKind::Aborted as usize])
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

#[cfg(test)]
mod tests {
    use super::*;

    fn with_requests(n: u64) -> RunStats {
        let mut s = RunStats::default();
        s.steps.insert(StepKey { phase: 0, step: 0, ok: true }, StepRecord { requests: n, ..StepRecord::default() });
        s
    }

    #[test]
    fn checked_add_refuses_a_sum_past_u64_max_and_adds_nothing() {
        let mut total = with_requests(u64::MAX);
        let err = total.checked_add(&with_requests(u64::MAX)).unwrap_err();
        assert!(matches!(err, MergeError::Overflow { phase: 0, step: 0 }), "{err}");
        assert_eq!(total.steps.values().next().unwrap().requests, u64::MAX);
        total.checked_add(&with_requests(0)).unwrap();
    }
}
