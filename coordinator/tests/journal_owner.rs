//! Two `stampede run --local-agents` at once on one machine, sharing the
//! state directory (both default to `$TMPDIR/stampede-state`): the second
//! run's agent must not take the first's live fault for one a crashed agent
//! left behind and revert it (agent/src/fault/journal.rs, `Journal::claim`).
//! The fault pauses a `sleep` this test starts; traffic goes to 127.0.0.1
//! only; `support::Procs` kills every process, passed or failed.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::{process_state, stampede_output, Procs};

#[test]
fn a_second_local_run_leaves_the_first_runs_live_fault_alone() {
    let mut procs = Procs::new();
    let target = procs.target("target", &[]);
    let mut sleeper = Command::new("sleep");
    sleeper.arg("120");
    procs.spawn("service", sleeper);
    let pid = procs.pid("service");
    let state = procs.dir.path().join("state");
    let plan = |name: &str, seconds: u32, faults: &str| {
        let path = procs.dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!(
                "name: {name}\ntarget: http://{target}\n\
                 phases:\n  - {{ name: hold, duration: {seconds}s, load: {{ model: open, rate: 20/s }} }}\n\
                 steps:\n  - {{ name: get, request: {{ method: GET, path: / }} }}\n{faults}"
            ),
        )
        .unwrap();
        path
    };
    let first = plan("first", 10, &format!("faults:\n  - {{ name: pause-svc, kind: pause, at: 0s, duration: 9s, instance: {{ driver: process, pid: {pid} }} }}\n"));
    let second = plan("second", 1, "");

    let out_first = procs.dir.path().join("out-first");
    let mut cmd = Command::new(support::stampede());
    cmd.args(["run", first.to_str().unwrap(), "--state-dir"]).arg(&state).arg("--out").arg(&out_first);
    let mut run = support::Background::start(cmd, procs.dir.path(), "first");
    assert!(support::wait_until(Duration::from_secs(8), || process_state(pid) == Some('T')), "the first run never paused the service");

    // The second run starts and ends while the first's fault is live.
    let out_second = procs.dir.path().join("out-second");
    let second_run = stampede_output(
        &["run", second.to_str().unwrap(), "--state-dir", state.to_str().unwrap(), "--out", out_second.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_eq!(second_run.status.code(), Some(0), "{}", String::from_utf8_lossy(&second_run.stderr));
    assert_eq!(process_state(pid), Some('T'), "the second run resumed the first run's paused service");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(out_second.join("report.json")).unwrap()).unwrap();
    assert_eq!(r["faults"].as_array().map_or(0, Vec::len), 0, "the second run reported a fault it recovered: {r:#}");
    assert!(state.join("local-0-2").join("faults.journal").exists(), "the second agent journals beside the first");

    let (code, stdout, stderr) = run.finish(Duration::from_secs(60));
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(process_state(pid), Some('S'), "the first run did not resume the service at its window's end");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(out_first.join("report.json")).unwrap()).unwrap();
    let fault = &r["faults"][0];
    assert_eq!(fault["status"], "reverted", "{fault:#}");
}
