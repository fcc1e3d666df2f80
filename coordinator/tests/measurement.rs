//! The numbers themselves: coordinated omission, the closed model saying it
//! is closed, and open-model rate accuracy. Real runs on loopback.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn run(plan_file: &str, agents: usize) -> Value {
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_stampede"))
        .arg("run")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plans").join(plan_file))
        .args(["--local-agents", &agents.to_string(), "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    let text = std::fs::read_to_string(out.path().join("report.json"))
        .unwrap_or_else(|_| panic!("no report; stderr:\n{}", String::from_utf8_lossy(&output.stderr)));
    serde_json::from_str(&text).unwrap()
}

/// Guards against coordinated omission: a client that measured from the
/// actual send (or slowed down with the server) would report a p90 of a few
/// milliseconds here, because only the first request of each stalled
/// connection would see the stall.
#[test]
fn open_model_latency_counts_from_the_intended_start() {
    let r = run("stall-open.yaml", 2);
    let p90 = r["latency_ms"]["p90"].as_f64().unwrap();
    let p99 = r["latency_ms"]["p99"].as_f64().unwrap();
    assert!((350.0..=650.0).contains(&p90), "p90 {p90} ms, want ≈ 500 ms\n{r:#}");
    assert!(p99 >= 850.0, "p99 {p99} ms, want ≈ 950 ms");
    // The client kept its schedule: the stall is the server's, not ours.
    let schedule = &r["phases"][0]["schedule"];
    assert_eq!(schedule["saturated"], false, "{schedule}");
    assert_eq!(r["verdict"], "pass");
}

/// A closed-model run cannot see coordinated omission the same way, so the
/// report must say which model produced its numbers.
#[test]
fn closed_model_says_it_is_closed() {
    let r = run("stall-closed.yaml", 1);
    let phase = &r["phases"][0];
    assert_eq!(phase["model"], "closed");
    assert!(phase.get("schedule").is_none());
    assert!(phase["requests"].as_u64().unwrap() > 0);
}

#[test]
fn open_model_delivers_the_planned_count() {
    let r = run("rate.yaml", 3);
    // 1500/s × 4 s, and a ramp 100 → 900/s over 4 s: (100 + 900) / 2 × 4.
    for (i, planned) in [(0, 6000.0), (1, 2000.0)] {
        let phase = &r["phases"][i];
        let done = phase["requests"].as_f64().unwrap();
        assert!((done - planned).abs() / planned <= 0.01, "phase {i}: {done} of {planned}");
        assert_eq!(phase["schedule"]["scheduled"].as_f64().unwrap(), planned);
    }
}
