//! A decoded snapshot as the coordinator merges it: the counters of each
//! [`StepRecord`] as they are, its histograms as [`Sparse`] counts, so that
//! no snapshot allocates or scans a full histogram array (issue 11, item 3).
//! Adding a [`SparseStats`] to a [`RunStats`] gives exactly what adding the
//! stock-decoded `RunStats` gives (`common/tests/merge.rs`).

use std::collections::BTreeMap;

use super::{CheckCount, ErrorKind, MergeError, RunStats, ScheduleStats, StepKey, StepRecord};
use crate::histogram::sparse::Sparse;

/// One (phase, step, outcome)'s measurements of a snapshot.
#[derive(Debug, Clone, Default)]
pub struct SparseRecord {
    pub latency: Sparse,
    pub service: Sparse,
    pub dispatch: Sparse,
    pub handshake: Sparse,
    pub requests: u64,
    pub errors: [u64; ErrorKind::ALL.len()],
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub statuses: BTreeMap<u16, u64>,
    pub checks: BTreeMap<u32, CheckCount>,
}

/// A record's counters, borrowed: what the overflow checks compare.
struct Counters<'a> {
    requests: u64,
    errors: &'a [u64; ErrorKind::ALL.len()],
    sent: u64,
    received: u64,
    statuses: &'a BTreeMap<u16, u64>,
    checks: &'a BTreeMap<u32, CheckCount>,
}

impl<'a> From<&'a StepRecord> for Counters<'a> {
    fn from(r: &'a StepRecord) -> Self {
        Counters { requests: r.requests, errors: &r.errors, sent: r.bytes_sent, received: r.bytes_received, statuses: &r.statuses, checks: &r.checks }
    }
}

impl<'a> From<&'a SparseRecord> for Counters<'a> {
    fn from(r: &'a SparseRecord) -> Self {
        Counters { requests: r.requests, errors: &r.errors, sent: r.bytes_sent, received: r.bytes_received, statuses: &r.statuses, checks: &r.checks }
    }
}

/// Whether adding `b`'s counters to `a`'s keeps each, and the sum of the
/// error kinds, under 2^64: [`StepRecord::fits`], for either kind of record.
fn fits(a: Counters<'_>, b: Counters<'_>) -> bool {
    let kinds = |e: &[u64]| e.iter().try_fold(0u64, |sum, n| sum.checked_add(*n));
    a.requests.checked_add(b.requests).is_some()
        && a.sent.checked_add(b.sent).is_some()
        && a.received.checked_add(b.received).is_some()
        && kinds(a.errors).zip(kinds(b.errors)).is_some_and(|(x, y)| x.checked_add(y).is_some())
        && b.statuses.iter().all(|(s, n)| a.statuses.get(s).copied().unwrap_or(0).checked_add(*n).is_some())
        && b.checks.iter().all(|(c, n)| a.checks.get(c).copied().unwrap_or_default().fits(n))
}

/// Adds counters that [`fits`] said fit.
fn add_counts(
    (requests, errors, sent, received): (&mut u64, &mut [u64; ErrorKind::ALL.len()], &mut u64, &mut u64),
    (statuses, checks): (&mut BTreeMap<u16, u64>, &mut BTreeMap<u32, CheckCount>),
    b: &SparseRecord,
) {
    *requests += b.requests;
    for (x, y) in errors.iter_mut().zip(b.errors) {
        *x += y;
    }
    *sent += b.bytes_sent;
    *received += b.bytes_received;
    for (s, n) in &b.statuses {
        *statuses.entry(*s).or_insert(0) += n;
    }
    for (c, n) in &b.checks {
        let mine = checks.entry(*c).or_default();
        mine.passed += n.passed;
        mine.failed += n.failed;
    }
}

impl SparseRecord {
    /// Adds `other` (the same key twice in one snapshot, or parts of one
    /// snapshot due in different intervals); false, and nothing added, when
    /// a count would pass 2^64.
    pub fn checked_add(&mut self, other: &SparseRecord) -> bool {
        if !fits(Counters::from(&*self), Counters::from(other)) {
            return false;
        }
        for (mine, theirs) in [(&mut self.latency, &other.latency), (&mut self.service, &other.service), (&mut self.dispatch, &other.dispatch), (&mut self.handshake, &other.handshake)] {
            mine.extend(theirs);
        }
        add_counts((&mut self.requests, &mut self.errors, &mut self.bytes_sent, &mut self.bytes_received), (&mut self.statuses, &mut self.checks), other);
        true
    }

    /// Adds this record into a full one: what [`StepRecord::add`] does
    /// with the stock-decoded record. Counters must fit (checked by the caller).
    fn add_into(&self, r: &mut StepRecord) {
        self.latency.add_to(&mut r.latency);
        self.service.add_to(&mut r.service);
        self.dispatch.add_to(&mut r.dispatch);
        self.handshake.add_to(&mut r.handshake);
        add_counts((&mut r.requests, &mut r.errors, &mut r.bytes_sent, &mut r.bytes_received), (&mut r.statuses, &mut r.checks), self);
    }
}

/// A snapshot's (or a part's) records and schedules.
#[derive(Debug, Clone, Default)]
pub struct SparseStats {
    pub steps: BTreeMap<StepKey, SparseRecord>,
    pub schedule: BTreeMap<u32, ScheduleStats>,
}

impl SparseStats {
    /// Adds `other` into this, checked like [`RunStats::checked_add`];
    /// nothing is added when it fails.
    pub fn checked_add(&mut self, other: &SparseStats) -> Result<(), MergeError> {
        for (k, r) in &other.steps {
            if let Some(mine) = self.steps.get(k) {
                if !fits(mine.into(), r.into()) {
                    return Err(MergeError::Overflow { phase: k.phase, step: k.step });
                }
            }
        }
        for (p, s) in &other.schedule {
            if !self.schedule.get(p).copied().unwrap_or_default().fits(s) {
                return Err(MergeError::ScheduleOverflow { phase: *p });
            }
        }
        for (k, r) in &other.steps {
            let fitted = self.steps.entry(*k).or_default().checked_add(r);
            debug_assert!(fitted, "checked above");
        }
        for (p, s) in &other.schedule {
            self.schedule.entry(*p).or_default().add(s);
        }
        Ok(())
    }
}

impl RunStats {
    /// Adds a sparse snapshot like [`RunStats::checked_add`] adds its
    /// stock-decoded twin, with the same result: first checks that no count
    /// would pass `u64::MAX`, and adds nothing when one would.
    pub fn checked_add_sparse(&mut self, other: &SparseStats) -> Result<(), MergeError> {
        // Zero counters, without the four histograms a new StepRecord allocates.
        let empty = SparseRecord::default();
        for (k, r) in &other.steps {
            let mine = self.steps.get(k).map_or_else(|| Counters::from(&empty), Counters::from);
            if !fits(mine, r.into()) {
                return Err(MergeError::Overflow { phase: k.phase, step: k.step });
            }
        }
        for (p, s) in &other.schedule {
            if !self.schedule.get(p).copied().unwrap_or_default().fits(s) {
                return Err(MergeError::ScheduleOverflow { phase: *p });
            }
        }
        for (k, r) in &other.steps {
            r.add_into(self.steps.entry(*k).or_default());
        }
        for (p, s) in &other.schedule {
            self.schedule.entry(*p).or_default().add(s);
        }
        Ok(())
    }
}
