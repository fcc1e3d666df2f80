//! Issue 8, scope of harm of faults, from the plan and the command line:
//! a fault's window must end inside its run (item 6), and no network fault
//! may cut the agent's control channel (item 8). The agent-side items live
//! in `agent/tests/trust_fault_scope.rs`.

mod support;

use std::path::{Path, PathBuf};

use stampede_common::plan::load_file;

fn write_plan(dir: &Path, faults: &str) -> PathBuf {
    let text = format!(
        "name: trust\ntarget: http://127.0.0.1:0\nbuiltin_target: {{ latency: 1ms }}\nphases:\n  - {{ name: steady, duration: 10s, load: {{ model: open, rate: 10/s }} }}\nsteps:\n  - {{ name: get, request: {{ method: GET, path: / }} }}\nfaults:\n{faults}"
    );
    let path = dir.join("plan.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Item 6: a 100-day partition in a 10 s run was accepted and would have
/// been applied for its whole window. A window ending after the run's
/// planned end is refused at validation, with file, line and field.
#[test]
fn a_fault_window_longer_than_the_run_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let long = "  - name: forever\n    kind: partition\n    at: 2s\n    duration: 100d\n    scope: { dst: 198.18.0.2, port: 80 }\n";
    let err = load_file(&write_plan(dir.path(), long)).unwrap_err().to_string();
    assert!(err.contains("plan.yaml:12: faults[0].duration:"), "{err}");
    assert!(err.contains("after the run's planned end at 10s"), "{err}");
    // One second too long is refused as well; exactly to the end is fine.
    let over = "  - name: over\n    kind: partition\n    at: 2s\n    duration: 9s\n    scope: { dst: 198.18.0.2 }\n";
    assert!(load_file(&write_plan(dir.path(), over)).is_err());
    let fits = "  - name: fits\n    kind: partition\n    at: 2s\n    duration: 8s\n    scope: { dst: 198.18.0.2 }\n";
    load_file(&write_plan(dir.path(), fits)).unwrap();
}
