//! The fleet benchmark at toy size, in the test run: 5 simulated agents for
//! 3 s against a real coordinator process, then the same with a reconnect
//! storm. The benchmark itself checks that each run ends `pass` with
//! report.json's totals equal to what the agents sent, and exits non-zero
//! otherwise; this also reads its JSON.

use std::process::Command;

#[test]
fn five_agents_three_seconds_exact_totals_with_and_without_a_storm() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let json = dir.path().join("fleet.json");
    let out = Command::new(env!("CARGO_BIN_EXE_stampede-fleet-bench"))
        .args(["--agents", "5", "--seconds", "3", "--storm", "5", "--storm-at", "0.4", "--idle-seconds", "0", "--json"])
        .arg(&json)
        .output()
        .expect("the benchmark runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the benchmark failed ({}):\n{stdout}\n{stderr}", out.status);
    let figures: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON figures")).expect("JSON");
    let runs = figures["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "{figures:#}");
    for run in runs {
        assert_eq!(run["exact"], true, "{run:#}");
        assert_eq!(run["verdict"], "pass", "{run:#}");
        assert_eq!(run["snapshots"], 15, "5 agents x 3 intervals: {run:#}");
    }
    let storm = &runs[1];
    assert_eq!(storm["storm"], true);
    assert!(storm["sessions"].as_u64().unwrap_or(0) >= 10, "every agent opened a second session: {storm:#}");
    assert!(stdout.contains("| 5 + storm |"), "the table has the storm's row:\n{stdout}");
}
