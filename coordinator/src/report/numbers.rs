//! The report's numbers from merged histograms and tallies: percentiles,
//! error kinds, statuses, check counts, handshakes, and the ratio that
//! treats 0/0 as 0. Every section (totals, phases, steps, probes) uses them.

use std::collections::BTreeMap;

use serde::Serialize;
use stampede_common::stats::{CheckCount, ErrorKind, RunStats, StepKey, Summary};

#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
}

/// The TLS handshakes of some records: how many, and their percentiles.
#[derive(Debug, Clone, Serialize)]
pub struct HandshakeReport {
    pub count: u64,
    #[serde(flatten)]
    pub percentiles: Percentiles,
}

/// The handshakes of the records `filter` selects (successful requests or
/// not: a handshake is a handshake); `None` when there were none.
pub(super) fn handshakes(stats: &RunStats, filter: impl Fn(&StepKey) -> bool) -> Option<HandshakeReport> {
    let mut h = stampede_common::histogram::new_hist();
    for (_, r) in stats.steps.iter().filter(|(k, _)| filter(k)) {
        if !r.handshake.is_empty() {
            let _ = stampede_common::histogram::add(&mut h, &r.handshake);
        }
    }
    (!h.is_empty()).then(|| HandshakeReport { count: h.len(), percentiles: hist_percentiles(&h) })
}

pub(super) fn percentiles(s: &Summary, service: bool) -> Percentiles {
    hist_percentiles(if service { &s.ok.service } else { &s.ok.latency })
}

pub(super) fn hist_percentiles(h: &stampede_common::histogram::Hist) -> Percentiles {
    let q = |q| stampede_common::stats::quantile_ms(h, q);
    Percentiles { p50: q(0.5), p90: q(0.9), p95: q(0.95), p99: q(0.99), p999: q(0.999), max: (!h.is_empty()).then(|| h.max() as f64 / 1e3) }
}

pub(super) fn errors_by_kind(s: &Summary) -> BTreeMap<&'static str, u64> {
    ErrorKind::ALL.iter().zip(s.errors_by_kind).filter(|(_, n)| *n > 0).map(|(k, n)| (k.as_str(), n)).collect()
}

/// Responses by status over the records `filter` selects.
pub(super) fn statuses(stats: &RunStats, filter: impl Fn(&StepKey) -> bool) -> BTreeMap<u16, u64> {
    let mut out = BTreeMap::new();
    for (_, r) in stats.steps.iter().filter(|(k, _)| filter(k)) {
        for (s, n) in &r.statuses {
            let e: &mut u64 = out.entry(*s).or_default();
            *e = e.saturating_add(*n);
        }
    }
    out.retain(|_, n| *n > 0);
    out
}

/// Check tallies by name (`Plan::check_names` order gives the index) over
/// the records `filter` selects; every check of those records appears.
pub(super) fn checks(names: &[&str], stats: &RunStats, filter: impl Fn(&StepKey) -> bool) -> BTreeMap<String, CheckCount> {
    let mut out = BTreeMap::new();
    for (_, r) in stats.steps.iter().filter(|(k, _)| filter(k)) {
        for (i, c) in &r.checks {
            let Some(name) = names.get(*i as usize) else { continue };
            let e: &mut CheckCount = out.entry(name.to_string()).or_default();
            e.passed = e.passed.saturating_add(c.passed);
            e.failed = e.failed.saturating_add(c.failed);
        }
    }
    out
}

pub(super) fn ratio(n: u64, d: u64) -> f64 {
    if d == 0 {
        0.0
    } else {
        n as f64 / d as f64
    }
}
