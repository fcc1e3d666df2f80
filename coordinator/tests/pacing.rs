//! The open-model pacer's numbers, end to end through the real binary.
//!
//! At 1 010 arrivals/s the pacer sleeps through responses: a response is
//! read when the worker wakes for the next arrival, up to 0.99 ms after it
//! came. Its latency must still end when it arrived (the kernel's receive
//! timestamp, `agent/src/rxstamp.rs`), not when it was read: against the
//! built-in target on loopback, which answers in about 0.1 ms, a latency
//! taken at the read would have a median near 0.9 ms.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Runs `plan` (relative to the crate) on one in-process agent with one
/// worker and returns its report.json.
fn run_report(plan: &str) -> Value {
    let out = tempfile::tempdir().unwrap();
    let plan = Path::new(env!("CARGO_MANIFEST_DIR")).join(plan);
    let output = Command::new(env!("CARGO_BIN_EXE_stampede"))
        .args(["run"])
        .arg(&plan)
        .args(["--local-agents", "1", "--workers", "1", "--out"])
        .arg(out.path())
        .output()
        .expect("stampede runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let text = std::fs::read_to_string(out.path().join("report.json")).unwrap_or_else(|_| panic!("no report; stderr:\n{stderr}"));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn a_response_read_late_is_timed_at_its_arrival() {
    let r = run_report("tests/plans/open-1000.yaml");
    assert_eq!(r["totals"]["errors"], 0, "{}", r["totals"]);
    assert_eq!(r["totals"]["requests"], 2020, "{}", r["totals"]);
    let p50 = r["latency_ms"]["p50"].as_f64().unwrap();
    let service = r["service_ms"]["p50"].as_f64().unwrap();
    let schedule = &r["phases"][0]["schedule"];
    println!("latency p50 {p50} ms, service p50 {service} ms, schedule {schedule}");
    // Half the gap between arrivals: well above a loopback answer even on
    // a busy machine, well below what reading time would give.
    assert!(p50 < 0.5, "latency p50 {p50} ms: responses timed when read, not when they arrived (service p50 {service} ms)");
    assert!(service <= p50 + 0.01, "service p50 {service} ms above latency p50 {p50} ms");
    let lag = schedule["dispatch_lag_p50_ms"].as_f64().expect("dispatch_lag_p50_ms");
    assert!(lag < 0.5, "dispatch lag p50 {lag} ms");
}

/// With `batch_window: 2ms` at 4 000/s, about 8 arrivals share a wake-up,
/// started at the last one's instant: the first ~1.75 ms late, the last on
/// time. So the dispatch lag's median is near 0.9 ms, where the precise
/// pacer's is a few µs (a busy machine only adds lateness: the lower bound
/// holds), and every arrival is still sent and answered.
#[test]
fn a_batch_window_starts_arrivals_together_and_charges_their_lateness() {
    let r = run_report("tests/plans/open-batched.yaml");
    assert_eq!(r["totals"]["errors"], 0, "{}", r["totals"]);
    assert_eq!(r["totals"]["requests"], 4000, "{}", r["totals"]);
    let schedule = &r["phases"][0]["schedule"];
    let lag = schedule["dispatch_lag_p50_ms"].as_f64().expect("dispatch_lag_p50_ms");
    println!("schedule {schedule}, latency p50 {}", r["latency_ms"]["p50"]);
    assert!(lag >= 0.4, "dispatch lag p50 {lag} ms: the arrivals were not batched");
    assert_eq!(schedule["batch_window_ms"], 2.0, "the report names the window");
    let latency = r["latency_ms"]["p50"].as_f64().unwrap();
    assert!(latency >= lag, "latency p50 {latency} ms leaves out the dispatch lag p50 {lag} ms");
}
