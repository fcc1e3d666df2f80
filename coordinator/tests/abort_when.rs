//! Issue 9, section 4: an abort guardrail (`abort_when`) stops a drill that
//! is hurting its target — the load stops, every fault is reverted, the
//! report says `fail`, `aborted by <rule>`, and `stampede run` exits 1 —
//! while the same plan against a healthy target runs to its end and passes.
//!
//! Root only (the fault is an nft partition); skips with a printed reason
//! otherwise. Load goes to the built-in target on 127.0.0.1; the partition
//! cuts only a port of this test's own listener, so it is surely applied
//! (its table `inet stampede_abort_<pid>_<slot>` is this test's alone, and a
//! guard deletes it whatever happens).

mod support;

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::nft::{skip_reason, TableGuard};
use support::{stampede, wait_until, Background};

/// 6 s of 40/s against the built-in target answering `error_rate` of its
/// requests with 500; a partition of `port` from 0.5 s to 5.5 s; the run is
/// aborted once more than 20 % of requests fail for 1 s.
fn plan(fault: &str, port: u16, error_rate: &str) -> String {
    format!(
        "name: abort-drill
target: http://127.0.0.1:0
builtin_target: {{ error_rate: {error_rate} }}
interval: 500ms
timeout: 1s
phases:
  - {{ name: steady, duration: 6s, load: {{ model: open, rate: 40/s }} }}
steps:
  - {{ name: get, request: {{ path: /items/1 }} }}
faults:
  - {{ name: {fault}, kind: partition, at: 500ms, duration: 5s, scope: {{ dst: 127.0.0.1/32, port: {port} }} }}
abort_when:
  - {{ metric: error_rate, scope: run, threshold: \"> 20%\", for: 1s }}
slos:
  - {{ metric: error_rate, pass: \"< 60%\" }}
"
    )
}

struct Outcome {
    code: i32,
    stderr: String,
    report: Value,
    /// Whether the partition's table existed at some moment of the run.
    applied: bool,
}

fn run(slot: u32, error_rate: &str) -> Option<(Outcome, TableGuard)> {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let fault = format!("abort-{}-{slot}", std::process::id());
    let table = TableGuard(format!("stampede_{}", fault.replace('-', "_")));
    let plan_file = dir.path().join("plan.yaml");
    std::fs::write(&plan_file, plan(&fault, listener.local_addr().unwrap().port(), error_rate)).unwrap();
    let out = dir.path().join("out");
    let mut cmd = Command::new(stampede());
    cmd.arg("run").arg(&plan_file).args(["--local-agents", "1", "--state-dir"]).arg(dir.path().join("state")).arg("--out").arg(&out);
    let mut bg = Background::start(cmd, dir.path(), "run");
    let applied = wait_until(Duration::from_secs(5), || table.exists());
    let (code, _stdout, stderr) = bg.finish(Duration::from_secs(30));
    let text = std::fs::read_to_string(out.join("report.json")).unwrap_or_else(|e| panic!("no report.json ({e}); stderr:\n{stderr}"));
    Some((Outcome { code, stderr, report: serde_json::from_str(&text).unwrap(), applied }, table))
}

fn reasons(r: &Value) -> Vec<String> {
    r["verdict_reasons"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect()
}

#[test]
fn an_abort_guardrail_stops_a_failing_drill_reverts_its_fault_and_fails_the_run() {
    let Some((o, table)) = run(0, "50%") else { return };
    let r = &o.report;
    assert!(o.applied, "the partition was never applied, so its revert proves nothing:\n{}", o.stderr);
    assert!(!table.exists(), "`stampede run` exited with its partition still applied:\n{}", o.stderr);
    assert_eq!(o.code, 1, "an aborted drill exits 1 (the user asked for it), not 3:\n{}", o.stderr);
    assert_eq!(r["verdict"], "fail", "{r:#}");
    assert_eq!(reasons(r), vec!["aborted by error_rate > 20% for 1s".to_string()]);
    assert!(o.stderr.contains("abort guardrail `error_rate > 20% for 1s` tripped"), "the progress does not show the trip:\n{}", o.stderr);
    let ran = r["duration_s"].as_f64().unwrap();
    assert!(ran < 4.5, "the run went on for {ran} s of its 6 s after the guardrail should have tripped (~1.5 s)");
    let f = &r["faults"][0];
    assert_eq!(f["status"], "reverted", "{f:#}");
    assert!(f["applied_at"].is_string(), "{f:#}");
}

#[test]
fn the_same_guardrail_does_not_trip_on_a_healthy_target() {
    let Some((o, table)) = run(1, "0%") else { return };
    let r = &o.report;
    assert!(o.applied, "the partition was never applied:\n{}", o.stderr);
    assert!(!table.exists());
    assert_eq!((o.code, r["verdict"].as_str()), (0, Some("pass")), "{}\n{r:#}", o.stderr);
    assert!(reasons(r).is_empty(), "{:?}", reasons(r));
    assert!(!o.stderr.contains("abort guardrail"), "{}", o.stderr);
    assert!(r["duration_s"].as_f64().unwrap() >= 5.9, "a healthy drill runs to its end");
    assert_eq!(r["faults"][0]["status"], "reverted");
}
