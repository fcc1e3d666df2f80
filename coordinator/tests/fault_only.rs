//! Fault-only agents (issue 10): a `stampede-agent --capacity 0` on a
//! service node takes its node's faults and no load. Real binaries as
//! separate processes (`support::Procs` kills them all, passed or failed): a
//! standing coordinator, a load agent and a fault-only agent, a `stampede
//! target`, and a `sleep` standing in for the service the fault pauses.
//! Traffic goes to 127.0.0.1 only.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::{agent_bin, process_state, stampede_output, Procs};

/// `stampede-agent --capacity CAPACITY` with its own journal folder.
fn agent(procs: &mut Procs, id: &str, url: &str, labels: &str, capacity: &str) {
    let state = procs.dir.path().join(format!("state-{id}"));
    let mut cmd = Command::new(agent_bin());
    cmd.args(["--coordinator", url, "--id", id, "--labels", labels, "--capacity", capacity, "--workers", "1", "--insecure", "--state-dir"]).arg(state).env("RUST_LOG", "info");
    procs.spawn(id, cmd);
}

#[test]
fn a_capacity_0_agent_gets_no_load_and_applies_its_fault() {
    let mut procs = Procs::new();
    let url = procs.coordinator("coordinator");
    let target = procs.target("target", &["--latency", "1ms"]);
    let mut sleeper = Command::new("sleep");
    sleeper.arg("120");
    procs.spawn("service", sleeper);
    let pid = procs.pid("service");
    let plan = procs.dir.path().join("fault-only.yaml");
    std::fs::write(
        &plan,
        format!(
            "name: fault-only\n\
             target: http://{target}\n\
             phases:\n  - {{ name: steady, duration: 5s, load: {{ model: open, rate: 100/s }} }}\n  - {{ name: hold, duration: 2s, load: {{ model: closed, concurrency: 2 }} }}\n\
             steps:\n  - {{ name: get, request: {{ method: GET, path: /items/1 }} }}\n\
             faults:\n  - {{ name: pause-svc, kind: pause, at: 1s, duration: 2s, agents: {{ role: svc }}, instance: {{ driver: process, pid: {pid} }} }}\n\
             slos:\n  - {{ metric: error_rate, scope: run, pass: \"< 1%\" }}\n"
        ),
    )
    .unwrap();
    let plan_s = plan.to_str().unwrap();

    // Alone, the fault-only agent cannot carry a run: refused, nothing touched.
    agent(&mut procs, "svc", &url, "role=svc", "0");
    let table = procs.wait_for_agents(&url, &["svc"], Duration::from_secs(10));
    let row = table.lines().find(|l| l.starts_with("svc ")).unwrap();
    assert_eq!(row.split_whitespace().nth(2), Some("0"), "the coordinator keeps capacity 0 as given:\n{table}");
    let alone = stampede_output(&["run", plan_s, "--coordinator", &url, "--insecure", "--wait", "5s"], Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&alone.stderr);
    assert_eq!(alone.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("every agent of this run has capacity 0 (svc"), "{stderr}");
    assert_eq!(process_state(pid), Some('S'), "a refused run paused the service");

    agent(&mut procs, "load", &url, "role=load", "1");
    procs.wait_for_agents(&url, &["load", "svc"], Duration::from_secs(10));
    let out = procs.dir.path().join("out");
    let mut cmd = Command::new(support::stampede());
    cmd.args(["run", plan_s, "--coordinator", &url, "--insecure", "--expect-agents", "2", "--out"]).arg(&out);
    let mut run = support::Background::start(cmd, procs.dir.path(), "run");
    let paused = support::wait_until(Duration::from_secs(8), || process_state(pid) == Some('T'));
    let (code, stdout, stderr) = run.finish(Duration::from_secs(60));
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}\n{}", procs.logs());
    assert!(paused, "the fault-only agent never paused the service:\n{stderr}\n{}", procs.logs());
    assert_eq!(process_state(pid), Some('S'), "the service was not resumed");

    let r: Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let agent_of = |id: &str| r["agents"].as_array().unwrap().iter().find(|a| a["id"] == id).cloned().unwrap();
    let (svc, load) = (agent_of("svc"), agent_of("load"));
    assert_eq!((svc["fault_only"].as_bool(), svc["requests"].as_u64(), svc["complete"].as_bool()), (Some(true), Some(0), Some(true)), "{r:#}");
    assert!(load["fault_only"].is_null(), "{load:#}");
    assert_eq!(load["requests"], r["totals"]["requests"], "every request is the load agent's: {r:#}");
    assert!(r["totals"]["requests"].as_u64().unwrap() > 450, "{r:#}");
    let faults = r["faults"].as_array().unwrap();
    assert_eq!(faults.len(), 1, "{r:#}");
    let f = &faults[0];
    assert_eq!((f["agent"].as_str(), f["status"].as_str()), (Some("svc"), Some("reverted")), "{f:#}");
    assert!(f["applied_at"].is_string(), "{f:#}");
    assert_eq!(r["verdict"], "pass", "{r:#}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| svc (fault-only) |"), "{md}");

    // The same plan simulated through a standing coordinator
    // (SubmitSimulatedRun): the load runs, the service is never paused.
    let sim_out = procs.dir.path().join("sim");
    let mut cmd = Command::new(support::stampede());
    cmd.args(["run", plan_s, "--coordinator", &url, "--insecure", "--expect-agents", "2", "--simulate-faults", "--out"]).arg(&sim_out);
    let mut run = support::Background::start(cmd, procs.dir.path(), "simulated");
    let paused = support::wait_until(Duration::from_secs(8), || process_state(pid) == Some('T'));
    let (code, stdout, stderr) = run.finish(Duration::from_secs(60));
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}\n{}", procs.logs());
    assert!(!paused, "a simulated fault paused the service");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(sim_out.join("report.json")).unwrap()).unwrap();
    assert_eq!((r["faults"][0]["agent"].as_str(), r["faults"][0]["status"].as_str()), (Some("svc"), Some("simulated")), "{r:#}");
    assert_eq!(r["faults_simulated"], true, "{r:#}");
}
