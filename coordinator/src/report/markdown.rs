//! The human-readable forms of a report: `report.md` and the summary printed
//! at the end of `stampede run`.

use std::fmt::Write;

use stampede_common::slo::Status;

use super::{Percentiles, Report};
use crate::verdict::SloResult;

pub(super) fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| if v < 10.0 { format!("{v:.2}") } else { format!("{v:.1}") })
}

pub(super) fn pct(r: f64) -> String {
    format!("{:.2}%", r * 100.0)
}

/// An SLO's observed value in the unit its rule is written in (shared with
/// the HTML and JUnit reports, so all say `0.40%` where the rule says
/// `< 0.5%`, and `7.0s` where it says `< 60s`).
pub(super) fn observed(s: &SloResult) -> String {
    let Some(v) = s.observed else { return "no data".into() };
    match s.unit {
        "ratio" => pct(v),
        "req/s" => format!("{v:.1}/s"),
        "count" => format!("{v:.0}"),
        // Time rules are written in seconds (`< 60s`); latency in ms.
        _ if s.metric.starts_with("recovery_time") || s.metric.starts_with("max_streak") => format!("{:.1}s", v / 1e3),
        _ => format!("{}ms", ms(Some(v))),
    }
}

/// What the rule judges, without its threshold: `p99`,
/// `recovery_time(api-1)`, `max_streak(status:5xx > 0)`.
pub(super) fn subject(s: &SloResult) -> &str {
    s.rule.strip_suffix(&s.threshold).map_or(s.rule.as_str(), str::trim_end)
}

/// When a rule looked and what decided it, seconds after the run's start:
/// `window +10.0–15.0s; decided by +22.0–25.0s`, and why it has no value.
pub(super) fn when(s: &SloResult) -> String {
    let span = |x: &crate::judge::Span| format!("+{:.1}–{:.1}s", x.from_s, x.to_s);
    let mut parts = Vec::new();
    if let Some(w) = &s.window {
        parts.push(format!("window {}", span(w)));
    }
    if let Some(d) = &s.decided_by {
        parts.push(format!("decided by {}", span(d)));
    }
    if let Some(d) = &s.detail {
        parts.push(d.clone());
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join("; ")
    }
}

fn status(s: Status) -> &'static str {
    match s {
        Status::Pass => "pass",
        Status::Warn => "WARN",
        Status::Fail => "FAIL",
        Status::NotEvaluated => "not evaluated (partial data)",
    }
}

fn latency_cells(p: &Percentiles) -> String {
    format!("{} | {} | {} | {} | {} | {}", ms(p.p50), ms(p.p90), ms(p.p95), ms(p.p99), ms(p.p999), ms(p.max))
}

/// The run's totals in one line (every report format opens with it).
pub(super) fn totals_line(r: &Report) -> String {
    let t = &r.totals;
    format!(
        "{} requests, {} errors ({}), {:.1} req/s over the planned {:.1}s (run took {:.1}s with the drain), {} agent(s)",
        t.requests,
        t.errors,
        pct(t.error_rate),
        t.throughput_rps,
        r.plan.duration().as_secs_f64(),
        r.duration_s,
        r.agents.len()
    )
}

/// The tables shared by the markdown file and the terminal summary.
fn tables(r: &Report, out: &mut String) {
    let _ = writeln!(out, "{}\n", totals_line(r));
    if r.faults_simulated {
        let _ = writeln!(out, "{SIMULATED_NOTE}\n");
    }
    let fault_only: Vec<&str> = r.agents.iter().filter(|a| a.fault_only).map(|a| a.id.as_str()).collect();
    if !fault_only.is_empty() {
        let _ = writeln!(out, "Fault-only agents (capacity 0: their node's faults, no load): {}\n", fault_only.join(", "));
    }
    phase_table(r, out);
    if let Some(h) = &r.tls_handshake_ms {
        let _ = writeln!(out, "\nTLS handshakes: {} (ms: p50 {}, p90 {}, p99 {}, max {}).", h.count, ms(h.percentiles.p50), ms(h.percentiles.p90), ms(h.percentiles.p99), ms(h.percentiles.max));
    }
    if !r.probes.is_empty() {
        probe_table(r, out);
    }
    if !r.faults.is_empty() {
        fault_table(r, out);
    }
    if !r.slos.is_empty() {
        slo_table(r, out);
    }
}

/// A row a phase, then the run's: counts, latency, and how the phase kept
/// its schedule (open), its count (iterations) or neither (closed).
fn phase_table(r: &Report, out: &mut String) {
    let t = &r.totals;
    let _ = writeln!(out, "| phase | model | requests | errors | req/s | p50 | p90 | p95 | p99 | p99.9 | max (ms) | schedule |");
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for p in &r.phases {
        let schedule = match (&p.schedule, &p.iterations) {
            (None, Some(it)) if it.not_run > 0 => format!("{} of {} iterations done — {} NOT RUN (max_duration)", it.done, it.planned, it.not_run),
            (None, Some(it)) => format!("{} of {} iterations done", it.done, it.planned),
            (None, None) => "closed model".to_string(),
            (Some(s), _) => format!(
                "{} due, {} dropped, {} late{}{}",
                s.scheduled,
                s.dropped,
                s.late,
                s.batch_window_ms.map(|w| format!(", started in batches of {w} ms")).unwrap_or_default(),
                if s.saturated { " — SATURATED" } else { "" }
            ),
        };
        let _ = writeln!(
            out,
            "| {} | {:?} | {} | {} | {:.1} | {} | {} |",
            p.name,
            p.model,
            p.requests,
            p.errors,
            p.throughput_rps,
            latency_cells(&p.latency_ms),
            schedule
        );
    }
    let _ = writeln!(
        out,
        "| **all** | | {} | {} | {:.1} | {} | |",
        t.requests,
        t.errors,
        t.throughput_rps,
        latency_cells(&r.latency_ms)
    );
}

/// A row a probe: its own series, apart from the load.
fn probe_table(r: &Report, out: &mut String) {
    let _ = writeln!(out, "\n| probe | requests | errors | p50 | p90 | p95 | p99 | p99.9 | max (ms) | errors by kind |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for p in &r.probes {
        let kinds: Vec<String> = p.errors_by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(out, "| {} | {} | {} | {} | {} |", p.name, p.requests, p.errors, latency_cells(&p.latency_ms), if kinds.is_empty() { "-".into() } else { kinds.join(", ") });
    }
}

/// A row a fault on an agent: its window, what became of it, its effect.
fn fault_table(r: &Report, out: &mut String) {
    let _ = writeln!(out, "\n| fault | kind | agent | window | status | effect |");
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for f in &r.faults {
        let effect = match &f.effect {
            None => "-".to_string(),
            Some(e) => format!("{} {:.3} → {:.3}{}", e.measure, e.baseline, e.during, if e.effective { "" } else { " — NO EFFECT" }),
        };
        let late = if f.late { " (applied late)" } else { "" };
        let _ = writeln!(
            out,
            "| {} | {} | {} | +{:.1}s – +{:.1}s | {}{late} | {effect} |",
            f.name,
            f.kind,
            f.agent,
            f.offset_s,
            f.offset_s + f.duration_s,
            if f.error.is_empty() { f.status.clone() } else { format!("{}: {}", f.status, f.error) }
        );
    }
}

/// A row a rule: what it observed against its thresholds, and when.
fn slo_table(r: &Report, out: &mut String) {
    let _ = writeln!(out, "\n| SLO | scope | observed | pass | warn | status | when |");
    let _ = writeln!(out, "|---|---|---:|---|---|---|---|");
    for s in &r.slos {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            subject(s),
            s.scope,
            observed(s),
            s.threshold,
            s.warn_threshold.as_deref().unwrap_or("-"),
            status(s.status),
            when(s)
        );
    }
}

pub fn markdown(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {} — {}\n", r.plan.name, r.verdict.as_str().to_uppercase());
    let _ = writeln!(out, "Run `{}`, started {}.\n", r.run_id, r.started_at);
    for reason in &r.verdict_reasons {
        let _ = writeln!(out, "- **{}**: {reason}", r.verdict.as_str());
    }
    if !r.verdict_reasons.is_empty() {
        out.push('\n');
    }
    for w in &r.warnings {
        let _ = writeln!(out, "> **Warning**: {w}\n");
    }
    tables(r, &mut out);
    let _ = writeln!(out, "\nLatency is measured from each request's intended start (open model) and covers successful requests; errors count in the error rate.\n");
    let _ = writeln!(out, "## Agents\n\n| agent | labels | requests | errors | start skew (ms) | complete |\n|---|---|---:|---:|---:|---|");
    for a in &r.agents {
        let labels: Vec<_> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            out,
            "| {}{} | {} | {} | {} | {} | {} |",
            a.id,
            if a.fault_only { " (fault-only)" } else { "" },
            labels.join(","),
            a.requests,
            a.errors,
            ms(a.start_skew_ms),
            if a.complete { "yes".to_string() } else { format!("no: {}", a.lost.as_deref().unwrap_or("missing data")) }
        );
    }
    timeline(r, &mut out);
    out
}

/// Most rows the timeline gets; longer runs are shown in coarser rows.
const TIMELINE_ROWS: usize = 120;
/// Fault offsets go through nanosecond clocks: a window ending at 2 s may
/// read 2.00003 s, and must not spill into the row that starts at 2 s.
const SLOP: f64 = 1e-3;

/// The run over time, with the faults active in each row: what the load did
/// while each fault was on, at a glance.
fn timeline(r: &Report, out: &mut String) {
    if r.timeline.is_empty() {
        return;
    }
    let interval = r.plan.interval.as_duration().as_secs_f64();
    let per_row = r.timeline.len().div_ceil(TIMELINE_ROWS);
    // Sub-second intervals get sub-second labels.
    let prec = if interval * per_row as f64 >= 1.0 { 0 } else { 1 };
    let _ = writeln!(out, "\n## Timeline\n\nEach request counts in the interval it was due in (intended start; closed model: send).\n\n| from | req/s | errors | worst p99 (ms) | kB/s received | faults active |\n|---:|---:|---:|---:|---:|---|");
    for rows in r.timeline.chunks(per_row) {
        let from = rows[0].t_s;
        let to = rows[rows.len() - 1].t_s + interval;
        let requests: u64 = rows.iter().map(|p| p.requests).sum();
        let errors: u64 = rows.iter().map(|p| p.errors).sum();
        let received: u64 = rows.iter().map(|p| p.bytes_received).sum();
        // A coarse row shows its worst interval's p99 (the header says so).
        let p99 = rows.iter().filter_map(|p| p.p99_ms).fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        // Only faults that were applied; a failed one never was active.
        let mut active: Vec<&str> = r
            .faults
            .iter()
            .filter(|f| f.applied_at.is_some() && f.offset_s < to - SLOP && f.offset_s + f.duration_s > from + SLOP)
            .map(|f| f.name.as_str())
            .collect();
        active.sort_unstable();
        active.dedup();
        let _ = writeln!(
            out,
            "| +{from:.prec$}s | {:.1} | {errors} | {} | {:.1} | {} |",
            requests as f64 / (to - from).max(interval),
            ms(p99),
            received as f64 / 1e3 / (to - from).max(interval),
            if active.is_empty() { "-".to_string() } else { active.join(", ") }
        );
    }
}

/// The end-of-run summary for the terminal or the CI log.
pub fn terminal_summary(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n{} — verdict: {}", r.plan.name, r.verdict.as_str().to_uppercase());
    for reason in &r.verdict_reasons {
        let _ = writeln!(out, "  {reason}");
    }
    for w in &r.warnings {
        let _ = writeln!(out, "  warning: {w}");
    }
    tables(r, &mut out);
    out
}

/// Said wherever a run with `--simulate-faults` is summed up.
pub const SIMULATED_NOTE: &str = "Faults were SIMULATED (--simulate-faults): each was announced at its time and nothing was injected; `during:`, `after:`, `before:`, `outside:faults`, max_streak and recovery_time rules judged the announced windows.";
