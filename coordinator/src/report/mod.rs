//! The run report: one [`Report`] value, built once from the merged numbers,
//! then written as `report.json` (the contract in DESIGN.md), `report.md`,
//! `report.html`, `junit.xml`, and printed as the terminal summary.
//!
//! # Layout
//! - this file: the [`Report`] and its top (verdict, agents, totals), [`build`], [`write_all`].
//! - `numbers`: percentiles, statuses, checks and handshakes from merged records.
//! - `phases`: the per-phase and per-step sections.
//! - `probes`, `faults`, `timeline`: one section each.
//! - `markdown`, `html`, `junit`: the report rendered for a reader or a CI.

mod faults;
mod html;
mod junit;
mod markdown;
mod numbers;
mod phases;
mod probes;
mod timeline;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;
use stampede_common::plan::{redact, Plan, SecretValues};
use stampede_common::stats::{CheckCount, RunStats, StepKey, Summary};

use crate::aggregate::Aggregate;
use crate::faults::FaultLog;
use crate::verdict::{self, SloResult, Stop, Verdict};

pub use faults::{EffectReport, FaultReport, FAULT_LATE_BOUND_NANOS};
pub use html::html;
pub use junit::junit_xml;
pub use markdown::{markdown, terminal_summary, SIMULATED_NOTE};
pub use numbers::{HandshakeReport, Percentiles};
pub use phases::{IterationsReport, PhaseReport, ScheduleReport, StepReport};
pub use probes::ProbeReport;
pub use timeline::TimelinePoint;

use numbers::{checks, errors_by_kind, handshakes, percentiles, ratio, statuses};

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
    let total = f.aggregate.total_stats();
    let stats: &RunStats = &total;
    // The run's own numbers are the load's: probes are reported apart.
    let load = |k: &StepKey| k.phase < plan.probe_phase();
    let all = stats.summarize(load);
    let mut judgment = verdict::judge(plan, f.aggregate, f.faults, f.stop, f.start_unix_nanos);
    if let Some(why) = f.steady_after {
        verdict::steady_state_broken(&mut judgment, why);
    }
    let check_names = plan.check_names();
    let planned_s = crate::active::run_seconds(plan, stats);
    Report {
        verdict: judgment.verdict,
        verdict_reasons: judgment.reasons,
        run_id: f.run_id.to_string(),
        plan: plan.clone(),
        started_at: humantime::format_rfc3339_millis(f.started_at).to_string(),
        start_unix_ns: f.start_unix_nanos,
        duration_s: f.duration_s,
        agents: agent_reports(&f),
        totals: totals(&all, stats, load, planned_s),
        latency_ms: percentiles(&all, false),
        service_ms: percentiles(&all, true),
        phases: phases::phase_reports(plan, stats),
        steps: phases::step_reports(plan, stats, &check_names),
        slos: judgment.slos,
        probes: probes::probe_reports(plan, stats),
        faults: faults::fault_reports(plan, f.faults, f.start_unix_nanos),
        timeline: timeline::timeline_points(plan, f.aggregate),
        // The load's checks: its steps' and its flow requests' (not the probes').
        checks: checks(&check_names, stats, |k| k.phase != plan.probe_phase()),
        faults_simulated: f.faults.events.values().any(|e| e.fault_status() == stampede_proto::v1::FaultStatus::Simulated),
        dry_run: None,
        tls_handshake_ms: handshakes(stats, load),
        warnings: warnings(plan),
    }
}

/// Each agent's share of the run and whether its numbers are whole.
fn agent_reports(f: &RunFacts<'_>) -> Vec<AgentReport> {
    let run_last = f.aggregate.run_last_seq();
    f.aggregate
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
        .collect()
}

/// The load's totals (`all` summarizes the records `load` selects), its
/// throughput over the run's planned seconds.
fn totals(all: &Summary, stats: &RunStats, load: impl Fn(&StepKey) -> bool, planned_s: f64) -> Totals {
    Totals {
        requests: all.requests,
        errors: all.errors,
        error_rate: ratio(all.errors, all.requests),
        throughput_rps: all.sent() as f64 / planned_s,
        errors_by_kind: errors_by_kind(all),
        bytes_sent: stats.steps.iter().filter(|(k, _)| load(k)).map(|(_, r)| r.bytes_sent).sum(),
        bytes_received: stats.steps.iter().filter(|(k, _)| load(k)).map(|(_, r)| r.bytes_received).sum(),
        statuses: statuses(stats, load),
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
