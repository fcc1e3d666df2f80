//! Per-phase and per-step sections: what each phase of the plan did (and,
//! for the open model, how well the client kept its schedule), and what each
//! step and flow request did.

use std::collections::BTreeMap;

use serde::Serialize;
use stampede_common::plan::{Model, Plan};
use stampede_common::units::Dur;
use stampede_common::stats::{CheckCount, RunStats, ScheduleStats};

use super::numbers::{checks, handshakes, percentiles, statuses, HandshakeReport, Percentiles};

#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub name: String,
    /// `open` (scheduled arrivals) or `closed` (fixed concurrency, like wrk).
    pub model: Model,
    pub duration_s: f64,
    /// Iterations phase whose count was done before `max_duration`: how
    /// long it actually took (its start to its last completion), which its
    /// `throughput_rps` is over. Absent otherwise (`duration_s` then).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_s: Option<f64>,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub throughput_rps: f64,
    pub latency_ms: Percentiles,
    pub service_ms: Percentiles,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub statuses: BTreeMap<u16, u64>,
    /// Open model only: how well the client kept its schedule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleReport>,
    /// Iterations model only: the count, and how much of it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iterations: Option<IterationsReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IterationsReport {
    /// The phase's count, fleet-wide (`count`, or `per_worker` × `concurrency`).
    pub planned: u64,
    /// Iterations started (each one a request of the phase, any outcome).
    pub done: u64,
    /// Iterations that never started: `max_duration` came first.
    pub not_run: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScheduleReport {
    pub scheduled: u64,
    pub dropped: u64,
    pub late: u64,
    pub max_lag_ms: f64,
    /// Intended instant to the start of the write, over the phase's arrivals.
    pub dispatch_lag_p50_ms: Option<f64>,
    pub dispatch_lag_p99_ms: Option<f64>,
    /// The phase's `batch_window`, when it has one: arrivals were started
    /// in batches, each up to this late (in the dispatch lag above).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_window_ms: Option<f64>,
    /// True when more than 1 % of arrivals were dropped or late: the client saturated.
    pub saturated: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub name: String,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub latency_ms: Percentiles,
    pub statuses: BTreeMap<u16, u64>,
    /// This step's checks by name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<String, CheckCount>,
    /// The handshakes of the connections this step's requests opened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_handshake_ms: Option<HandshakeReport>,
}

/// One section per phase of the plan, in plan order.
pub(super) fn phase_reports(plan: &Plan, stats: &RunStats) -> Vec<PhaseReport> {
    plan.phases
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let s = stats.summarize(|k| k.phase == i as u32);
            let secs = p.length().as_secs_f64();
            let active_s = crate::active::early_end(plan, stats, i).map(|d| d.as_secs_f64());
            let schedule = (p.load.model == Model::Open).then(|| schedule_report(stats, i as u32, p.load.batch_window));
            PhaseReport {
                name: p.name.clone(),
                model: p.load.model,
                duration_s: secs,
                requests: s.requests,
                errors: s.errors,
                error_rate: s.error_rate(),
                throughput_rps: s.sent() as f64 / active_s.unwrap_or(secs),
                active_s,
                latency_ms: percentiles(&s, false),
                service_ms: percentiles(&s, true),
                bytes_sent: stats.steps.iter().filter(|(k, _)| k.phase == i as u32).map(|(_, r)| r.bytes_sent).sum(),
                bytes_received: stats.steps.iter().filter(|(k, _)| k.phase == i as u32).map(|(_, r)| r.bytes_received).sum(),
                statuses: statuses(stats, |k| k.phase == i as u32),
                schedule,
                iterations: p.load.iterations().map(|planned| IterationsReport { planned, done: s.requests, not_run: planned.saturating_sub(s.requests) }),
            }
        })
        .collect()
}

/// How well an open-model phase kept its schedule, every agent together.
fn schedule_report(stats: &RunStats, phase: u32, batch_window: Option<Dur>) -> ScheduleReport {
    let sch: ScheduleStats = stats.schedule.get(&phase).copied().unwrap_or_default();
    let mut lag = stampede_common::histogram::new_hist();
    for (_, r) in stats.steps.iter().filter(|(k, _)| k.phase == phase) {
        let _ = stampede_common::histogram::add(&mut lag, &r.dispatch);
    }
    ScheduleReport {
        scheduled: sch.scheduled,
        dropped: sch.dropped,
        late: sch.late,
        max_lag_ms: sch.max_lag_us as f64 / 1e3,
        dispatch_lag_p50_ms: stampede_common::stats::quantile_ms(&lag, 0.50),
        dispatch_lag_p99_ms: stampede_common::stats::quantile_ms(&lag, 0.99),
        batch_window_ms: batch_window.map(|w| w.as_duration().as_secs_f64() * 1e3),
        saturated: sch.saturated(),
    }
}

/// The plan's steps (a flow as one request), then each flow request as
/// `STEP/REQUEST` under its own index (contract F).
pub(super) fn step_reports(plan: &Plan, stats: &RunStats, check_names: &[&str]) -> Vec<StepReport> {
    let flow_slots = plan.flow_slot_names().into_iter().enumerate().map(|(k, n)| (plan.flow_slot_base() + k, n));
    plan.steps
        .iter()
        .enumerate()
        .map(|(i, st)| (i, st.name.clone()))
        .chain(flow_slots)
        .map(|(i, name)| {
            let s = stats.summarize(|k| k.step == i as u32);
            StepReport {
                name,
                requests: s.requests,
                errors: s.errors,
                error_rate: s.error_rate(),
                latency_ms: percentiles(&s, false),
                statuses: statuses(stats, |k| k.step == i as u32),
                checks: checks(check_names, stats, |k| k.step == i as u32),
                tls_handshake_ms: handshakes(stats, |k| k.step == i as u32 && k.phase != plan.probe_phase()),
            }
        })
        .collect()
}
