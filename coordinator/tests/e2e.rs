//! End to end through the real binary: `stampede run` with local agents over
//! real gRPC on loopback against the built-in target; the report's contract
//! fields and the exit code that follows the verdict.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn plan(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plans").join(name)
}

/// Runs `stampede run PLAN --local-agents N --out DIR`; returns the exit code,
/// stderr, and the parsed report if one was written.
fn run(plan_file: &str, agents: usize) -> (i32, String, Option<Value>) {
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_stampede"))
        .args(["run"])
        .arg(plan(plan_file))
        .args(["--local-agents", &agents.to_string(), "--out"])
        .arg(out.path())
        .output()
        .expect("stampede runs");
    let report = std::fs::read_to_string(out.path().join("report.json")).ok().map(|t| serde_json::from_str(&t).unwrap());
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned(), report)
}

#[test]
fn three_agents_pass_with_every_contract_field() {
    let (code, stderr, report) = run("pass.yaml", 3);
    let r = report.unwrap_or_else(|| panic!("no report; stderr:\n{stderr}"));
    assert_eq!(code, 0, "stderr:\n{stderr}");
    assert_eq!(r["verdict"], "pass");
    for field in ["verdict", "run_id", "plan", "started_at", "duration_s", "agents", "totals", "latency_ms", "phases", "slos", "faults"] {
        assert!(r.get(field).is_some(), "report.json lacks `{field}`");
    }
    for field in ["requests", "errors", "error_rate", "throughput_rps"] {
        assert!(r["totals"][field].is_number(), "totals.{field}");
    }
    for field in ["p50", "p90", "p95", "p99", "p999", "max"] {
        assert!(r["latency_ms"][field].as_f64().unwrap() > 0.0, "latency_ms.{field}");
    }
    let agents = r["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 3);
    for a in agents {
        for field in ["id", "labels", "requests", "errors", "start_skew_ms"] {
            assert!(a.get(field).is_some(), "agents[].{field}");
        }
        assert!(a["requests"].as_u64().unwrap() > 0);
        assert_eq!(a["complete"], true);
        // Local agents share one clock: their first requests start within a
        // few timer ticks of the common instant.
        let skew = a["start_skew_ms"].as_f64().unwrap();
        assert!(skew.abs() < 50.0, "start skew {skew} ms");
    }
    // Fleet totals are exactly the sum of the agents' counts.
    let sum: u64 = agents.iter().map(|a| a["requests"].as_u64().unwrap()).sum();
    assert_eq!(sum, r["totals"]["requests"].as_u64().unwrap());
    // The open phase delivers its planned count (300/s × 3 s) within 1 %.
    let open = &r["phases"][0];
    assert_eq!(open["model"], "open");
    let done = open["requests"].as_f64().unwrap();
    assert!((done - 900.0).abs() <= 9.0, "open phase delivered {done} of 900");
    assert_eq!(open["schedule"]["scheduled"], 900);
    assert_eq!(r["phases"][1]["model"], "closed");
    assert!(r["phases"][1].get("schedule").is_none(), "a closed phase has no schedule");
    assert_eq!(r["slos"].as_array().unwrap().len(), 3);
    assert!(r["slos"].as_array().unwrap().iter().all(|s| s["status"] == "pass"));
    assert_eq!(r["faults"].as_array().unwrap().len(), 0);
    // Bytes add up the same three ways: totals, phases, timeline.
    for dir in ["bytes_sent", "bytes_received"] {
        let total = r["totals"][dir].as_u64().unwrap();
        let phases: u64 = r["phases"].as_array().unwrap().iter().map(|p| p[dir].as_u64().unwrap()).sum();
        let timeline: u64 = r["timeline"].as_array().unwrap().iter().map(|p| p[dir].as_u64().unwrap()).sum();
        assert!(total > 0 && phases == total && timeline == total, "{dir}: totals {total}, phases {phases}, timeline {timeline}");
    }
}

#[test]
fn a_failed_slo_exits_1() {
    let (code, stderr, report) = run("slo-fail.yaml", 2);
    let r = report.unwrap_or_else(|| panic!("no report; stderr:\n{stderr}"));
    assert_eq!(r["verdict"], "fail");
    assert_eq!(r["slos"][0]["status"], "fail");
    assert!(r["slos"][0]["observed"].as_f64().unwrap() >= 20.0);
    assert_eq!(code, 1);
}

#[test]
fn a_saturated_client_is_invalid_and_exits_3() {
    let (code, stderr, report) = run("saturated.yaml", 1);
    let r = report.unwrap_or_else(|| panic!("no report; stderr:\n{stderr}"));
    assert_eq!(r["verdict"], "invalid", "{r:#}");
    let schedule = &r["phases"][0]["schedule"];
    assert_eq!(schedule["saturated"], true);
    let dropped = schedule["dropped"].as_u64().unwrap();
    assert!(dropped > 100);
    // A dropped arrival is a user not served: a failed request, in the error rate.
    assert_eq!(r["totals"]["errors_by_kind"]["dropped"].as_u64(), Some(dropped), "{}", r["totals"]);
    assert_eq!(r["totals"]["requests"].as_u64(), schedule["scheduled"].as_u64(), "{}", r["totals"]);
    // Throughput is what went out: not the dropped arrivals (2 s phase).
    let sent = (r["totals"]["requests"].as_u64().unwrap() - dropped) as f64;
    assert!((r["totals"]["throughput_rps"].as_f64().unwrap() - sent / 2.0).abs() < 1e-9, "{}", r["totals"]);
    let reason = r["verdict_reasons"][0].as_str().unwrap();
    assert!(reason.contains("measured itself") && reason.contains(&format!("{dropped} of ")), "{reason}");
    assert_eq!(code, 3);
}

#[test]
fn a_broken_plan_exits_2_naming_file_line_and_field() {
    let (code, stderr, report) = run("broken.yaml", 1);
    assert_eq!(code, 2);
    assert!(report.is_none(), "no run, no report");
    assert!(stderr.contains("broken.yaml:4: phases[0].load.rate:"), "stderr:\n{stderr}");
}

#[test]
fn reports_land_in_the_out_dir() {
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_stampede"))
        .arg("run")
        .arg(plan("slo-fail.yaml"))
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(1));
    for f in ["report.json", "report.md", "report.html", "junit.xml", "slo-fail.yaml"] {
        assert!(out.path().join(f).exists(), "{f} missing");
    }
    // The HTML report: the verdict, the failed rule, and a chart with a line
    // (plotters draws a series as an SVG polyline) per interval series.
    let html = std::fs::read_to_string(out.path().join("report.html")).unwrap();
    assert!(html.contains(r#"<span class="verdict fail">FAIL</span>"#), "{html}");
    assert!(html.contains("<td>p50</td>") && html.contains("&lt; 5ms"), "the SLO row");
    // Axes and ticks are polylines too: look for the series' own colour and
    // width, with a point per interval (a 2 s phase of 500 ms intervals): a
    // legend swatch has 2 points.
    let series_points = |stroke: &str| {
        html.split("<polyline").filter(|p| p.contains(&format!(r#"stroke="{stroke}" stroke-width="2""#))).map(|p| p.split("points=\"").nth(1).map_or(0, |pts| pts.split('"').next().unwrap().split_whitespace().count())).max().unwrap_or(0)
    };
    assert!(series_points("#0000FF") >= 3, "no requests/s line in the chart");
    assert!(series_points("#000000") >= 3, "no p99 line in the chart");
    let junit = std::fs::read_to_string(out.path().join("junit.xml")).unwrap();
    assert!(junit.contains("<failure"), "{junit}");
    // The observed value is in the rule's unit (`p50 < 5ms`: milliseconds).
    assert!(junit.contains(r#"<failure message="observed "#) && junit.contains("ms</failure>"), "{junit}");
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(md.contains("FAIL"), "{md}");
}

#[test]
fn start_skew_leaves_out_the_arrival_stagger() {
    let (code, stderr, report) = run("slow-arrivals.yaml", 2);
    let r = report.unwrap_or_else(|| panic!("no report; stderr:\n{stderr}"));
    assert_eq!(code, 0, "stderr:\n{stderr}");
    let agents = r["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 2);
    for a in agents {
        assert_eq!(a["requests"], 2, "{a}");
        // One agent's first arrival is intended 500 ms after the start.
        let skew = a["start_skew_ms"].as_f64().unwrap();
        assert!((0.0..50.0).contains(&skew), "start skew {skew} ms: {a}");
    }
}

#[test]
fn a_stalled_target_fails_its_slos_and_does_not_look_like_a_saturated_client() {
    let (code, stderr, report) = run("stalled-target.yaml", 1);
    let r = report.unwrap_or_else(|| panic!("no report; stderr:\n{stderr}"));
    let schedule = &r["phases"][0]["schedule"];
    assert_eq!(schedule["dropped"], 0, "{schedule}");
    assert_eq!(r["verdict"], "fail", "{}", r["verdict_reasons"]);
    assert_eq!(r["totals"]["errors_by_kind"]["timeout"], r["totals"]["requests"], "{}", r["totals"]);
    assert_eq!(code, 1, "stderr:\n{stderr}");
}

/// A stall with a 1 s timeout: the requests due during it time out one
/// second later. The report's timeline counts them where they were due, so
/// every interval holds the 20 requests scheduled in it, stall or not (by
/// completion, a stall's intervals would hold none and the next ones twice
/// as many), and each interval's timeouts are requests due in it. Live
/// progress, by contrast, shows the stall as it happens: requests in flight.
#[test]
fn a_stall_counts_its_timeouts_in_its_due_intervals_and_progress_shows_them_in_flight() {
    let (code, stderr, report) = run("stall-timeline.yaml", 1);
    let r = report.unwrap_or_else(|| panic!("no report; stderr:\n{stderr}"));
    assert_eq!(r["verdict"], "pass", "no SLOs, complete data; stderr:\n{stderr}");
    assert_eq!(code, 0);
    let timeline = r["timeline"].as_array().unwrap();
    let field = |p: &Value, f: &str| p[f].as_u64().unwrap();
    let planned: Vec<&Value> = timeline.iter().filter(|p| p["t_s"].as_f64().unwrap() < 8.0).collect();
    assert_eq!(planned.len(), 8, "{timeline:#?}");
    for p in &planned {
        let n = field(p, "requests");
        assert!((19..=21).contains(&n), "every interval holds the requests due in it, whenever they finished: {timeline:#?}");
        assert!(field(p, "timeouts") <= n);
    }
    assert!(timeline.iter().filter(|p| p["t_s"].as_f64().unwrap() >= 8.0).all(|p| field(p, "requests") == 0), "nothing is due after the schedule ends: {timeline:#?}");
    let timeouts: u64 = planned.iter().map(|p| field(p, "timeouts")).sum();
    assert_eq!(timeouts, r["totals"]["errors_by_kind"]["timeout"].as_u64().unwrap_or(0));
    // About the first second of each of the two stalls: 2 × 20.
    assert!((20..=60).contains(&timeouts), "{timeouts} timeouts: {timeline:#?}");
    // The totals are the same as ever: the timeline only moves requests between intervals.
    let sum: u64 = timeline.iter().map(|p| field(p, "requests")).sum();
    assert_eq!(sum, r["totals"]["requests"].as_u64().unwrap());

    let in_flight: Vec<u64> = stderr
        .lines()
        .filter(|l| l.starts_with('['))
        .filter_map(|l| l.split("in flight").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(in_flight.len() >= 8, "a progress line per interval, each saying what is in flight:\n{stderr}");
    assert!(in_flight.iter().any(|&n| n >= 10), "during a stall, progress shows the requests waiting:\n{stderr}");
    assert!(in_flight.iter().any(|&n| n <= 2), "outside a stall nothing waits (1 ms answers at 20/s):\n{stderr}");
}
