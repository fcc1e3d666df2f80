//! The probes' section: each probe its own series, apart from the load.

use std::collections::BTreeMap;

use serde::Serialize;
use stampede_common::plan::Plan;
use stampede_common::stats::{CheckCount, RunStats};

use super::numbers::{errors_by_kind, ratio, Percentiles};

/// One probe over the whole run, every agent that ran it together.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    pub name: String,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub errors_by_kind: BTreeMap<&'static str, u64>,
    /// Every probe request, failed or not, from its due time: a health
    /// endpoint's slowness matters when it fails too.
    pub latency_ms: Percentiles,
    /// Responses by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Each of the probe's checks by name: responses that passed and failed it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<String, CheckCount>,
}

pub(super) fn probe_reports(plan: &Plan, stats: &RunStats) -> Vec<ProbeReport> {
    (0..plan.probes.len())
        .map(|i| {
            let (phase, step) = (plan.probe_phase(), plan.probe_step(i));
            let s = stats.summarize(|k| k.phase == phase && k.step == step);
            let mut latency = stampede_common::histogram::new_hist();
            let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
            let base = plan.probe_check_base(i);
            let mut checks: BTreeMap<String, CheckCount> = plan.probes[i].checks.iter().map(|c| (c.name.clone(), CheckCount::default())).collect();
            for (_, r) in stats.steps.iter().filter(|(k, _)| k.phase == phase && k.step == step) {
                let _ = stampede_common::histogram::add(&mut latency, &r.latency);
                for (status, n) in &r.statuses {
                    *statuses.entry(*status).or_default() += n;
                }
                for (index, count) in &r.checks {
                    let Some(check) = index.checked_sub(base).and_then(|j| plan.probes[i].checks.get(j as usize)) else { continue };
                    let c = checks.entry(check.name.clone()).or_default();
                    c.passed += count.passed;
                    c.failed += count.failed;
                }
            }
            let q = |x| stampede_common::stats::quantile_ms(&latency, x);
            ProbeReport {
                name: plan.probes[i].name.clone(),
                requests: s.requests,
                errors: s.errors,
                error_rate: ratio(s.errors, s.requests),
                errors_by_kind: errors_by_kind(&s),
                latency_ms: Percentiles { p50: q(0.5), p90: q(0.9), p95: q(0.95), p99: q(0.99), p999: q(0.999), max: (s.requests > 0).then(|| latency.max() as f64 / 1e3) },
                statuses,
                checks,
            }
        })
        .collect()
}
