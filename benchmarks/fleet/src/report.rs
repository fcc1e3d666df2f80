//! The figures of one run and the checks that make them count: the
//! coordinator's CPU over the steady part (from /proc/PID/stat), its peak
//! RSS (VmHWM), the merge and acknowledgement lags, and report.json's
//! totals against what the simulated agents sent.

use std::time::Duration;

use serde_json::{json, Value};
use stampede_proto::convert::unix_nanos;
use tokio_util::sync::CancellationToken;

use crate::agent::Outcome;
use crate::coordinator::cpu_seconds;
use crate::payload::Tally;
use crate::submit::{interval_of, Submitted};

/// CPU time of the coordinator and of this process, sampled.
pub struct Sampler {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Vec<Sample>>,
}

#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: i64,
    pub coordinator_s: f64,
    pub bench_s: f64,
    /// Busy CPU time of the whole machine (all cores, /proc/stat).
    pub machine_s: f64,
}

/// Busy time of all cores since boot, seconds: everything but idle and iowait.
fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<u64> = cpu.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest is in user already).
    let busy = f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)? + f.get(7).copied().unwrap_or(0);
    Some(busy as f64 / 100.0)
}

const SAMPLE_EVERY: Duration = Duration::from_millis(250);

impl Sampler {
    pub fn start(pid: u32) -> Sampler {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let me = std::process::id();
        let task = tokio::spawn(async move {
            let mut out = Vec::new();
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = token.cancelled() => break,
                }
                if let (Ok(c), Ok(b), Some(m)) = (cpu_seconds(pid), cpu_seconds(me), machine_busy_seconds()) {
                    out.push(Sample { at: unix_nanos(std::time::SystemTime::now()), coordinator_s: c, bench_s: b, machine_s: m });
                }
            }
            out
        });
        Sampler { stop, task }
    }

    pub async fn stop(self) -> Vec<Sample> {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

pub struct Facts {
    /// The run's common start (unix nanoseconds); None if no agent was assigned.
    pub start: Option<i64>,
    /// The idle measurement's window, if one was made.
    pub idle: Option<(i64, i64)>,
    /// Mean snapshot size and histograms per snapshot.
    pub snapshot_bytes: u64,
    pub histograms: f64,
    pub agents: usize,
    pub storm: bool,
    pub interval: Duration,
    pub intervals: u64,
    pub warmup_s: u64,
    pub seconds: u64,
    pub hwm_mib: f64,
    pub rss_mib: f64,
    pub samples: Vec<Sample>,
    pub threads: Vec<(String, f64)>,
}

/// Lags in milliseconds.
#[derive(Debug, Default, Clone, Copy)]
pub struct Lags {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Lags {
    fn of(mut us: Vec<u64>) -> Lags {
        if us.is_empty() {
            return Lags::default();
        }
        us.sort_unstable();
        let at = |q: f64| us[((q * us.len() as f64).ceil() as usize).clamp(1, us.len()) - 1] as f64 / 1000.0;
        Lags { n: us.len(), p50: at(0.5), p99: at(0.99), max: at(1.0) }
    }

    fn json(&self) -> Value {
        json!({ "n": self.n, "p50_ms": self.p50, "p99_ms": self.p99, "max_ms": self.max })
    }
}

pub struct Row {
    pub agents: usize,
    pub storm: bool,
    /// % of one core, over the steady phase.
    pub cpu_pct: f64,
    /// % of one core with every agent registered and no run (NaN: not measured).
    pub idle_cpu_pct: f64,
    pub bench_cpu_pct: f64,
    /// What everything else on the machine used meanwhile, % of one core.
    pub others_cpu_pct: f64,
    pub cpu_total_s: f64,
    pub hwm_mib: f64,
    pub rss_mib: f64,
    pub merge: Lags,
    /// Per interval (in order): its end to its progress line, ms.
    pub merge_by_interval: Vec<u64>,
    pub ack: Lags,
    pub snapshots: u64,
    pub snapshot_bytes: u64,
    pub histograms: f64,
    pub requests: u64,
    pub verdict: String,
    pub sessions: u64,
    /// Run messages sent again on a later session (unacknowledged at the reconnect).
    pub resent: u64,
    pub unplanned_drops: u64,
    pub cpu_per_second: Vec<f64>,
    pub threads: Vec<(String, f64)>,
    /// Anything that makes the run not count (totals not exact, not pass).
    pub problems: Vec<String>,
    /// Worth knowing, not a failure.
    pub notes: Vec<String>,
}

/// CPU % of one core between the samples nearest inside [from, to].
fn cpu_pct(samples: &[Sample], from: i64, to: i64, pick: fn(&Sample) -> f64) -> f64 {
    let inside: Vec<&Sample> = samples.iter().filter(|s| s.at >= from && s.at <= to).collect();
    match (inside.first(), inside.last()) {
        (Some(a), Some(b)) if b.at > a.at => (pick(b) - pick(a)) / ((b.at - a.at) as f64 / 1e9) * 100.0,
        _ => f64::NAN,
    }
}

pub fn row(f: Facts, s: &Submitted, outcomes: &[Outcome]) -> Row {
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let start = f.start.unwrap_or(0);
    if f.start.is_none() {
        problems.push("no agent was assigned the run".into());
    }
    // The steady phase: from the end of the warm-up to the last interval's end.
    let (from, to) = (start + f.warmup_s as i64 * 1_000_000_000, start + f.seconds as i64 * 1_000_000_000);
    let cpu = cpu_pct(&f.samples, from, to, |s| s.coordinator_s);
    let bench_cpu = cpu_pct(&f.samples, from, to, |s| s.bench_s);
    let idle_cpu = f.idle.map_or(f64::NAN, |(a, b)| cpu_pct(&f.samples, a, b, |s| s.coordinator_s));
    let others_cpu = cpu_pct(&f.samples, from, to, |s| s.machine_s) - cpu - bench_cpu;
    let cpu_per_second: Vec<f64> = (0..f.seconds as i64)
        .map(|k| cpu_pct(&f.samples, start + k * 1_000_000_000, start + (k + 1) * 1_000_000_000, |s| s.coordinator_s))
        .map(|v| (v * 10.0).round() / 10.0)
        .collect();
    let cpu_total_s = f.samples.last().map_or(f64::NAN, |s| s.coordinator_s);

    let merged = merge_lags(s, start, f.interval);
    if (merged.len() as u64) < f.intervals {
        notes.push(format!(
            "{} of {} intervals' progress lines arrived (the coordinator drops a line its client does not take in time)",
            merged.len(),
            f.intervals
        ));
    }
    let merge = Lags::of(merged.values().copied().collect());
    let ack = Lags::of(outcomes.iter().flat_map(|o| o.ack_lags_us.iter().copied()).collect());

    let (sent, snapshots) = check_agents(outcomes, f.intervals, &mut problems);
    let sessions: u64 = outcomes.iter().map(|o| u64::from(o.sessions)).sum();
    let resent: u64 = outcomes.iter().map(|o| o.resent).sum();
    let unplanned: u64 = outcomes.iter().map(|o| u64::from(o.unplanned_drops)).sum();
    if unplanned > 0 {
        let why = outcomes.iter().find_map(|o| o.last_drop.clone()).unwrap_or_default();
        notes.push(format!("{unplanned} session(s) dropped unasked (e.g. {why}); their agents resent what was unacknowledged"));
    }
    let expected_sessions = f.agents as u64 * if f.storm { 2 } else { 1 };
    if f.storm && sessions < expected_sessions {
        problems.push(format!("the storm: {sessions} sessions opened, expected at least {expected_sessions}"));
    }

    let r = &s.result;
    if r.verdict != "pass" {
        problems.push(format!("verdict {} (exit {}){}", r.verdict, r.exit_code, if r.error.is_empty() { String::new() } else { format!(": {}", r.error) }));
    }
    let report: Value = serde_json::from_str(&r.report_json).unwrap_or(Value::Null);
    check_totals(&report, &sent, outcomes, &mut problems);
    if let Some(reasons) = report["verdict_reasons"].as_array().filter(|v| !v.is_empty()) {
        // The first few: a lost fleet gives one reason per agent.
        let first: Vec<&str> = reasons.iter().filter_map(Value::as_str).take(3).collect();
        let more = if reasons.len() > 3 { format!(" (and {} more)", reasons.len() - 3) } else { String::new() };
        notes.push(format!("verdict reasons: {}{more}", first.join("; ")));
    }
    // A long list helps nobody: the first few say what went wrong.
    if problems.len() > 12 {
        let more = problems.len() - 10;
        problems.truncate(10);
        problems.push(format!("... and {more} more"));
    }
    Row {
        agents: f.agents,
        storm: f.storm,
        cpu_pct: cpu,
        idle_cpu_pct: idle_cpu,
        bench_cpu_pct: bench_cpu,
        others_cpu_pct: others_cpu,
        cpu_total_s,
        hwm_mib: f.hwm_mib,
        rss_mib: f.rss_mib,
        merge,
        merge_by_interval: merged.values().map(|us| us / 1000).collect(),
        ack,
        snapshots,
        snapshot_bytes: f.snapshot_bytes,
        histograms: f.histograms,
        requests: sent.requests,
        verdict: r.verdict.clone(),
        sessions,
        resent,
        unplanned_drops: unplanned,
        cpu_per_second,
        threads: f.threads,
        problems,
        notes,
    }
}

/// Each interval's progress line against the interval's end: interval ->
/// lag in µs (the first line of an interval counts).
fn merge_lags(s: &Submitted, start: i64, interval: Duration) -> std::collections::BTreeMap<u64, u64> {
    let iv = interval.as_nanos() as i64;
    let mut merged = std::collections::BTreeMap::new();
    for line in &s.lines {
        if let Some(seq) = interval_of(&line.text, interval.as_secs_f64()) {
            let end = start + (seq as i64 + 1) * iv;
            merged.entry(seq).or_insert(u64::try_from((line.at - end) / 1000).unwrap_or(0));
        }
    }
    merged
}

/// What the agents sent, summed, and how many snapshots; every agent must
/// have sent every interval and RunFinished, and have nothing unacknowledged.
fn check_agents(outcomes: &[Outcome], intervals: u64, problems: &mut Vec<String>) -> (Tally, u64) {
    let mut sent = Tally::default();
    let mut snapshots = 0;
    for o in outcomes {
        sent.add(&o.tally);
        snapshots += o.snapshots_sent;
        if !o.finished_sent || o.snapshots_sent != intervals {
            problems.push(format!("{}: sent {} of {intervals} snapshots{}", o.id, o.snapshots_sent, if o.finished_sent { "" } else { ", no RunFinished" }));
        }
        if o.unacknowledged > 0 {
            problems.push(format!("{}: {} run message(s) never acknowledged", o.id, o.unacknowledged));
        }
        if let Some(why) = &o.aborted {
            problems.push(format!("{}: aborted by the coordinator: {why}", o.id));
        }
    }
    (sent, snapshots)
}

/// report.json's totals and per-agent counts against what was sent.
fn check_totals(report: &Value, sent: &Tally, outcomes: &[Outcome], problems: &mut Vec<String>) {
    let t = &report["totals"];
    for (key, want) in [("requests", sent.requests), ("errors", sent.errors), ("bytes_sent", sent.bytes_sent), ("bytes_received", sent.bytes_received)] {
        let got = t[key].as_u64();
        if got != Some(want) {
            problems.push(format!("report.json totals.{key} = {got:?}, the agents sent {want}"));
        }
    }
    for (status, want) in &sent.statuses {
        let got = t["statuses"][status.to_string()].as_u64();
        if got != Some(*want) {
            problems.push(format!("report.json totals.statuses.{status} = {got:?}, the agents sent {want}"));
        }
    }
    let agents = report["agents"].as_array().cloned().unwrap_or_default();
    if agents.len() != outcomes.len() {
        problems.push(format!("report.json lists {} agents, {} ran", agents.len(), outcomes.len()));
    }
    for a in &agents {
        let id = a["id"].as_str().unwrap_or("?");
        let want = outcomes.iter().find(|o| o.id == id).map(|o| o.tally.requests);
        if a["requests"].as_u64() != want || a["complete"] != Value::Bool(true) {
            problems.push(format!("report.json agent {id}: requests {:?} (sent {want:?}), complete {}, lost {}, missing {}", a["requests"].as_u64(), a["complete"], a["lost"], a["missing_intervals"]));
        }
    }
}

fn name(r: &Row) -> String {
    format!("{}{}", r.agents, if r.storm { " + storm" } else { "" })
}

fn ok(r: &Row) -> &'static str {
    if r.problems.is_empty() {
        "exact"
    } else {
        "FAILED"
    }
}

pub fn row_line(r: &Row) -> String {
    let mut s = format!(
        "  {}: coordinator CPU {:.1} % of a core (idle fleet {:.1} %; bench {:.0} %, rest of the machine {:.0} %), VmHWM {:.0} MiB, merge lag p50/p99/max {:.0}/{:.0}/{:.0} ms, ack lag {:.1}/{:.1}/{:.1} ms, {} snapshots (~{} B, {:.1} histograms each), verdict {}, totals {}",
        name(r),
        r.cpu_pct,
        r.idle_cpu_pct,
        r.bench_cpu_pct,
        r.others_cpu_pct,
        r.hwm_mib,
        r.merge.p50,
        r.merge.p99,
        r.merge.max,
        r.ack.p50,
        r.ack.p99,
        r.ack.max,
        r.snapshots,
        r.snapshot_bytes,
        r.histograms,
        r.verdict,
        ok(r)
    );
    for p in &r.problems {
        s.push_str(&format!("\n    problem: {p}"));
    }
    for n in &r.notes {
        s.push_str(&format!("\n    note: {n}"));
    }
    s
}

pub fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| agents | coordinator CPU (% of a core, steady) | idle fleet (%) | bench CPU (%) | rest of the machine (%) | VmHWM (MiB) | merge lag p50 / p99 / max (ms) | ack lag p50 / p99 / max (ms) | snapshots | sessions | resent | verdict | totals |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} / {:.0} / {:.0} | {:.1} / {:.1} / {:.1} | {} | {} | {} | {} | {} |\n",
            name(r),
            r.cpu_pct,
            r.idle_cpu_pct,
            r.bench_cpu_pct,
            r.others_cpu_pct,
            r.hwm_mib,
            r.merge.p50,
            r.merge.p99,
            r.merge.max,
            r.ack.p50,
            r.ack.p99,
            r.ack.max,
            r.snapshots,
            r.sessions,
            r.resent,
            r.verdict,
            ok(r)
        ));
    }
    s
}

pub fn json(rows: &[Row], args: &Value) -> Value {
    let rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "agents": r.agents, "storm": r.storm,
                "coordinator_cpu_pct_steady": r.cpu_pct, "coordinator_cpu_pct_idle": r.idle_cpu_pct, "bench_cpu_pct_steady": r.bench_cpu_pct, "others_cpu_pct_steady": r.others_cpu_pct,
                "coordinator_cpu_s_total": r.cpu_total_s, "coordinator_cpu_pct_per_second": r.cpu_per_second,
                "coordinator_cpu_s_by_thread": r.threads.iter().map(|(n, s)| json!({ "thread": n, "cpu_s": s })).collect::<Vec<_>>(),
                "vm_hwm_mib": r.hwm_mib, "vm_rss_end_mib": r.rss_mib,
                "merge_lag": r.merge.json(), "merge_lag_ms_per_interval": r.merge_by_interval, "ack_lag": r.ack.json(),
                "snapshots": r.snapshots, "snapshot_bytes_mean": r.snapshot_bytes, "histograms_per_snapshot": r.histograms, "requests": r.requests, "sessions": r.sessions, "resent": r.resent, "unplanned_drops": r.unplanned_drops,
                "verdict": r.verdict, "exact": r.problems.is_empty(), "problems": r.problems, "notes": r.notes,
            })
        })
        .collect();
    let machine = json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "loadavg": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    });
    json!({ "args": args, "machine": machine, "runs": rows })
}
