//! The run report: one [`Report`] value, built once from the merged numbers,
//! then written as `report.json` (the contract in DESIGN.md), `report.md`,
//! `report.html`, `junit.xml`, and printed as the terminal summary.

mod html;
mod junit;
mod markdown;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;
use stampede_common::plan::{redact, Model, Plan, SecretValues};
use stampede_common::stats::{CheckCount, ErrorKind, RunStats, ScheduleStats, StepKey, Summary};

use crate::aggregate::Aggregate;
use crate::faults::FaultLog;
use crate::verdict::{self, SloResult, Stop, Verdict};

pub use html::html;
pub use junit::junit_xml;
pub use markdown::{markdown, terminal_summary, SIMULATED_NOTE};

/// `&`, `<`, `>` and both quotes, for HTML and XML (`report.html`,
/// `junit.xml`): what they show comes from plans, agents and errors, none of
/// it trusted to be markup.
fn escape_markup(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub verdict: Verdict,
    /// Why the verdict is `invalid` or `incomplete`, or why a run aborted by a
    /// guardrail failed (`aborted by <rule>`); empty otherwise.
    pub verdict_reasons: Vec<String>,
    pub run_id: String,
    pub plan: Plan,
    pub started_at: String,
    /// The common start instant every agent aims for, in Unix nanoseconds:
    /// what `start_skew_ms` is measured from, precise enough to compare
    /// with a target's own receive timestamps (benchmarks/pacing.py).
    pub start_unix_ns: i64,
    pub duration_s: f64,
    pub agents: Vec<AgentReport>,
    pub totals: Totals,
    /// Successful requests, from the intended start (coordinated-omission safe).
    pub latency_ms: Percentiles,
    /// Successful requests, from the actual start: what the server took.
    pub service_ms: Percentiles,
    pub phases: Vec<PhaseReport>,
    pub steps: Vec<StepReport>,
    pub slos: Vec<SloResult>,
    /// The plan's probes, each its own series (not in totals, phases or steps).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<ProbeReport>,
    pub faults: Vec<FaultReport>,
    pub timeline: Vec<TimelinePoint>,
    /// Every check of the plan by name, over the whole run (load steps).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<String, CheckCount>,
    /// `--simulate-faults`: the faults were only announced (status
    /// `simulated`); the fault-window rules judged their announced windows.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub faults_simulated: bool,
    /// A dry run's listing and findings (`dry-run.json`), instead of numbers.
    #[serde(skip)]
    pub dry_run: Option<crate::dryrun::DryRun>,
    /// TLS handshakes of the load's new connections (`https://` targets
    /// only): TCP connected → handshake done, merged over every agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_handshake_ms: Option<HandshakeReport>,
    /// What a reader must know besides the verdict: a plan that turned
    /// certificate verification off (`tls.insecure_skip_verify`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
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
fn handshakes(stats: &RunStats, filter: impl Fn(&StepKey) -> bool) -> Option<HandshakeReport> {
    let mut h = stampede_common::histogram::new_hist();
    for (_, r) in stats.steps.iter().filter(|(k, _)| filter(k)) {
        if !r.handshake.is_empty() {
            let _ = stampede_common::histogram::add(&mut h, &r.handshake);
        }
    }
    (!h.is_empty()).then(|| HandshakeReport { count: h.len(), percentiles: hist_percentiles(&h) })
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentReport {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    /// Started with `--capacity 0`: it took its node's faults and no load.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fault_only: bool,
    pub requests: u64,
    pub errors: u64,
    /// First request's actual start minus the common start instant.
    pub start_skew_ms: Option<f64>,
    pub complete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_intervals: Vec<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub throughput_rps: f64,
    pub errors_by_kind: BTreeMap<&'static str, u64>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Every response received, by HTTP status (success or not).
    pub statuses: BTreeMap<u16, u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
}

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

fn probe_reports(plan: &Plan, stats: &RunStats) -> Vec<ProbeReport> {
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

/// One fault on one agent: when it was planned, applied and reverted.
#[derive(Debug, Clone, Serialize)]
pub struct FaultReport {
    pub name: String,
    pub kind: String,
    pub agent: String,
    pub scheduled_at: String,
    /// Seconds after the run's common start.
    pub offset_s: f64,
    pub applied_at: Option<String>,
    pub reverted_at: Option<String>,
    /// applied | reverted | reverted_at_startup (the agent process died and
    /// its successor reverted it from the journal; `reverted_at` is when) |
    /// failed | revert_failed | dry_run | skipped (not injected: the steady
    /// state did not hold at its start) | simulated (`--simulate-faults`:
    /// announced at its time, nothing touched; `applied_at`/`reverted_at`
    /// are the announced window); `FaultStatus::name`
    pub status: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// Applied more than 100 ms after its scheduled instant.
    pub late: bool,
    pub apply_commands: Vec<String>,
    pub revert_commands: Vec<String>,
    /// Achieved vs requested, for network faults whose scope names a port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effect: Option<EffectReport>,
    /// Seconds the fault was planned to last.
    pub duration_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EffectReport {
    pub measure: String,
    pub baseline: f64,
    pub during: f64,
    /// False: the fault changed nothing measurable — suspect its scope.
    pub effective: bool,
    pub detail: String,
}

/// A fault applied later than this after its schedule is flagged.
pub const FAULT_LATE_BOUND_NANOS: i64 = 100_000_000;

fn rfc3339_nanos(nanos: i64) -> Option<String> {
    (nanos > 0).then(|| humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(nanos as u64)).to_string())
}

fn fault_reports(plan: &Plan, log: &FaultLog, start_unix_nanos: i64) -> Vec<FaultReport> {
    let mut out: Vec<FaultReport> = log
        .events
        .values()
        .map(|e| FaultReport {
            name: e.fault.clone(),
            kind: e.kind.clone(),
            agent: e.agent_id.clone(),
            scheduled_at: rfc3339_nanos(e.scheduled_unix_nanos).unwrap_or_default(),
            offset_s: (e.scheduled_unix_nanos - start_unix_nanos) as f64 / 1e9,
            applied_at: rfc3339_nanos(e.applied_unix_nanos),
            reverted_at: rfc3339_nanos(e.reverted_unix_nanos),
            status: e.fault_status().name().to_string(),
            error: e.error.clone(),
            late: e.applied_unix_nanos > 0 && e.applied_unix_nanos - e.scheduled_unix_nanos > FAULT_LATE_BOUND_NANOS,
            apply_commands: e.apply_commands.clone(),
            revert_commands: e.revert_commands.clone(),
            effect: e.effect.as_ref().map(|x| EffectReport {
                measure: x.measure.clone(),
                baseline: x.baseline,
                during: x.during,
                effective: x.effective,
                detail: x.detail.clone(),
            }),
            duration_s: plan.faults.iter().find(|f| f.name == e.fault).map_or(0.0, |f| f.duration.as_duration().as_secs_f64()),
        })
        .collect();
    out.sort_by(|a, b| a.offset_s.total_cmp(&b.offset_s).then(a.agent.cmp(&b.agent)));
    out
}

/// One interval of the run's timeline: the requests *due* in it (open
/// model: intended start; closed: send), wherever they finished — a request
/// that timed out after a 2 s stall counts in the stall's interval.
#[derive(Debug, Clone, Serialize)]
pub struct TimelinePoint {
    /// Start of the interval, seconds since the run's common start.
    pub t_s: f64,
    pub requests: u64,
    pub errors: u64,
    /// Requests that timed out (part of `errors`).
    pub timeouts: u64,
    pub p99_ms: Option<f64>,
    /// Request and response bytes on the wire (HTTP head and body): a rate
    /// cap shows here, interval by interval.
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// The load's due-interval series (probes, recorded beyond the plan's
/// phases, are not load), with final values: the report is built once
/// every agent is done.
fn timeline_points(plan: &Plan, agg: &Aggregate) -> Vec<TimelinePoint> {
    let load = |k: &stampede_common::stats::StepKey| (k.phase as usize) < plan.phases.len();
    agg.due_seqs()
        .into_iter()
        .filter_map(|seq| Some((seq, agg.interval_stats(seq)?)))
        .map(|(seq, stats)| {
            let s = stats.summarize(load);
            let records = || stats.steps.iter().filter(|(k, _)| load(k)).map(|(_, r)| r);
            TimelinePoint {
                t_s: seq as f64 * plan.interval.as_duration().as_secs_f64(),
                requests: s.requests,
                errors: s.errors,
                timeouts: s.errors_by_kind[ErrorKind::Timeout as usize],
                p99_ms: s.latency_ms(0.99),
                bytes_sent: records().map(|r| r.bytes_sent).sum(),
                bytes_received: records().map(|r| r.bytes_received).sum(),
            }
        })
        .collect()
}

fn percentiles(s: &Summary, service: bool) -> Percentiles {
    hist_percentiles(if service { &s.ok.service } else { &s.ok.latency })
}

fn hist_percentiles(h: &stampede_common::histogram::Hist) -> Percentiles {
    let q = |q| stampede_common::stats::quantile_ms(h, q);
    Percentiles { p50: q(0.5), p90: q(0.9), p95: q(0.95), p99: q(0.99), p999: q(0.999), max: (!h.is_empty()).then(|| h.max() as f64 / 1e3) }
}

fn errors_by_kind(s: &Summary) -> BTreeMap<&'static str, u64> {
    ErrorKind::ALL.iter().zip(s.errors_by_kind).filter(|(_, n)| *n > 0).map(|(k, n)| (k.as_str(), n)).collect()
}

/// Responses by status over the records `filter` selects.
fn statuses(stats: &RunStats, filter: impl Fn(&StepKey) -> bool) -> BTreeMap<u16, u64> {
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
fn checks(names: &[&str], stats: &RunStats, filter: impl Fn(&StepKey) -> bool) -> BTreeMap<String, CheckCount> {
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

fn ratio(n: u64, d: u64) -> f64 {
    if d == 0 {
        0.0
    } else {
        n as f64 / d as f64
    }
}

/// What the orchestrator knows beyond the merged numbers.
pub struct RunFacts<'a> {
    pub run_id: &'a str,
    pub plan: &'a Plan,
    pub started_at: SystemTime,
    pub start_unix_nanos: i64,
    pub duration_s: f64,
    pub aggregate: &'a Aggregate,
    /// First request per agent, unix nanoseconds in the coordinator's clock.
    pub first_requests: &'a BTreeMap<String, i64>,
    /// Why the run was stopped before its end, if it was.
    pub stop: Option<&'a Stop>,
    /// Why the plan's steady state did not hold after the run, if it did not.
    pub steady_after: Option<&'a str>,
    pub faults: &'a FaultLog,
    /// A dry run measured nothing; its report only lists the faults' commands.
    pub dry_run: bool,
    /// The agents started with `--capacity 0`: no load, only their node's faults.
    pub fault_only: &'a [String],
}

pub fn build(f: RunFacts<'_>) -> Report {
    let plan = f.plan;
    let stats: &RunStats = &f.aggregate.total;
    // The run's own numbers are the load's: probes are reported apart.
    let load = |k: &StepKey| k.phase < plan.probe_phase();
    let all = stats.summarize(load);
    let mut judgment = verdict::judge(plan, f.aggregate, f.faults, f.stop, f.start_unix_nanos);
    if let Some(why) = f.steady_after {
        verdict::steady_state_broken(&mut judgment, why);
    }
    let run_last = f.aggregate.run_last_seq();
    let agents: Vec<AgentReport> = f
        .aggregate
        .agents
        .iter()
        .map(|(id, a)| AgentReport {
            id: id.clone(),
            labels: a.labels.clone(),
            fault_only: f.fault_only.contains(id),
            requests: a.requests,
            errors: a.errors,
            start_skew_ms: f.first_requests.get(id).map(|t| (t - f.start_unix_nanos) as f64 / 1e6),
            complete: a.complete(),
            lost: a.lost.clone(),
            missing_intervals: a.missing(run_last),
        })
        .collect();
    let faults = fault_reports(plan, f.faults, f.start_unix_nanos);

    let phases = plan
        .phases
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let s = stats.summarize(|k| k.phase == i as u32);
            let secs = p.length().as_secs_f64();
            let active_s = crate::active::early_end(plan, stats, i).map(|d| d.as_secs_f64());
            let schedule = (p.load.model == Model::Open).then(|| {
                let sch: ScheduleStats = stats.schedule.get(&(i as u32)).copied().unwrap_or_default();
                let mut lag = stampede_common::histogram::new_hist();
                for (_, r) in stats.steps.iter().filter(|(k, _)| k.phase == i as u32) {
                    let _ = stampede_common::histogram::add(&mut lag, &r.dispatch);
                }
                ScheduleReport {
                    scheduled: sch.scheduled,
                    dropped: sch.dropped,
                    late: sch.late,
                    max_lag_ms: sch.max_lag_us as f64 / 1e3,
                    dispatch_lag_p50_ms: stampede_common::stats::quantile_ms(&lag, 0.50),
                    dispatch_lag_p99_ms: stampede_common::stats::quantile_ms(&lag, 0.99),
                    saturated: sch.saturated(),
                }
            });
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
        .collect();
    let check_names = plan.check_names();
    // The plan's steps (a flow as one request), then each flow request as
    // `STEP/REQUEST` under its own index (contract F).
    let flow_slots = plan.flow_slot_names().into_iter().enumerate().map(|(k, n)| (plan.flow_slot_base() + k, n));
    let steps = plan
        .steps
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
                checks: checks(&check_names, stats, |k| k.step == i as u32),
                tls_handshake_ms: handshakes(stats, |k| k.step == i as u32 && k.phase != plan.probe_phase()),
            }
        })
        .collect();
    let timeline = timeline_points(plan, f.aggregate);
    let planned_s = crate::active::run_seconds(plan, stats);
    Report {
        verdict: judgment.verdict,
        verdict_reasons: judgment.reasons,
        run_id: f.run_id.to_string(),
        plan: plan.clone(),
        started_at: humantime::format_rfc3339_millis(f.started_at).to_string(),
        start_unix_ns: f.start_unix_nanos,
        duration_s: f.duration_s,
        agents,
        totals: Totals {
            requests: all.requests,
            errors: all.errors,
            error_rate: ratio(all.errors, all.requests),
            throughput_rps: all.sent() as f64 / planned_s,
            errors_by_kind: errors_by_kind(&all),
            bytes_sent: stats.steps.iter().filter(|(k, _)| load(k)).map(|(_, r)| r.bytes_sent).sum(),
            bytes_received: stats.steps.iter().filter(|(k, _)| load(k)).map(|(_, r)| r.bytes_received).sum(),
            statuses: statuses(stats, |k| load(k)),
        },
        latency_ms: percentiles(&all, false),
        service_ms: percentiles(&all, true),
        phases,
        steps,
        slos: judgment.slos,
        probes: probe_reports(plan, stats),
        faults,
        timeline,
        // The load's checks: its steps' and its flow requests' (not the probes').
        checks: checks(&check_names, stats, |k| k.phase != plan.probe_phase()),
        faults_simulated: f.faults.events.values().any(|e| e.fault_status() == stampede_proto::v1::FaultStatus::Simulated),
        dry_run: None,
        tls_handshake_ms: handshakes(stats, load),
        warnings: warnings(plan),
    }
}

/// The report's warnings for `plan`.
fn warnings(plan: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    if plan.tls.as_ref().is_some_and(|t| t.insecure_skip_verify) {
        out.push(stampede_common::plan::INSECURE_SKIP_VERIFY_WARNING.to_string());
    }
    out
}

/// Writes every report file into `dir`, plus the plan as given. The plan
/// holds only references to its secrets; any of their `secrets` values
/// found in what is written anyway (a target echoing a header into an error)
/// is replaced by `***`.
pub fn write_all(report: &Report, plan_text: &str, plan_file_name: &str, dir: &Path, secrets: &SecretValues) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let write = |name: &str, text: String| std::fs::write(dir.join(name), redact(&text, secrets));
    let json = serde_json::to_string_pretty(report).expect("reports serialize");
    write("report.json", json + "\n")?;
    write("report.md", markdown(report))?;
    write("report.html", html(report))?;
    write("junit.xml", junit_xml(report))?;
    write(plan_file_name, plan_text.to_string())?;
    Ok(())
}
