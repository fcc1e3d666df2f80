//! An agent's life as a separate process: dialing a coordinator that is not
//! there yet, stopping on SIGTERM when idle, and stopping on SIGTERM in the
//! middle of a run — which the coordinator must report as missing data
//! (`incomplete`, exit 3), never as a clean run. These live in the
//! coordinator's crate because they need the `stampede` binary too.
//! Every process is killed when the test ends, passed or failed.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{free_port, list_agents, stampede, wait_until, Background, Procs};

#[test]
fn an_agent_started_before_its_coordinator_retries_and_registers() {
    let mut procs = Procs::new();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    procs.agent("early", &url, "zone=a");

    // Nobody listens yet: the agent keeps trying, with a growing pause
    // (100 ms, 200 ms, 400 ms, 800 ms, ...), instead of exiting or spinning.
    std::thread::sleep(Duration::from_millis(2000));
    assert!(procs.alive("early"), "the agent gave up:\n{}", procs.logs());
    let failures = procs.log("early").matches("Session with the coordinator failed").count();
    assert!((2..=8).contains(&failures), "{failures} attempts in 2 s is not a backoff:\n{}", procs.log("early"));

    // The coordinator comes up on the port the agent dials.
    let Some(url) = procs.coordinator_on("coordinator", port) else {
        // Someone else took the port during the pause; nothing learned.
        eprintln!("skipped: port {port} was taken before the coordinator could bind it");
        return;
    };
    // The backoff is capped at 5 s: the agent is in within one more pause.
    let table = procs.wait_for_agents(&url, &["early"], Duration::from_secs(8));
    assert!(table.contains("zone=a"), "{table}");
}

#[test]
fn sigterm_stops_an_idle_agent_with_exit_0() {
    let mut procs = Procs::new();
    let url = procs.coordinator("coordinator");
    procs.agent("idle", &url, "zone=a");
    procs.wait_for_agents(&url, &["idle"], Duration::from_secs(10));

    procs.sigterm("idle");
    let status = procs.wait_exit("idle", Duration::from_secs(3)).unwrap_or_else(|| panic!("still running 3 s after SIGTERM:\n{}", procs.logs()));
    assert_eq!(status.code(), Some(0), "{}", procs.log("idle"));
    // The coordinator noticed it left.
    assert!(wait_until(Duration::from_secs(5), || list_agents(&url).is_some_and(|t| support::agent_ids(&t).is_empty())), "{}", procs.logs());
}

/// Pins two agent bugs (`agent/src/session.rs`): on SIGTERM the agent used to
/// return at once, resetting its session and discarding the queued last
/// snapshot and `RunFinished`, so the coordinator saw a broken session and
/// lost the agent's last interval; and had they arrived, a `RunFinished`
/// without an error would have passed the shortened share off as complete.
#[test]
fn sigterm_mid_run_stops_the_agent_and_the_run_is_incomplete() {
    let mut procs = Procs::new();
    let url = procs.coordinator("coordinator");
    let target = procs.target("target", &["--latency", "1ms"]);
    procs.agent("stays", &url, "zone=a");
    procs.agent("leaves", &url, "zone=b");
    procs.wait_for_agents(&url, &["leaves", "stays"], Duration::from_secs(10));

    // 100/s for 6 s over two agents: each should send about 300 requests.
    let plan = procs.dir.path().join("six-seconds.yaml");
    std::fs::write(
        &plan,
        format!(
            "name: sigterm\ntarget: http://{target}\n\
             phases:\n  - {{ name: steady, duration: 6s, load: {{ model: open, rate: 100/s }} }}\n\
             steps:\n  - {{ name: get, request: {{ path: /items/1 }} }}\n\
             slos:\n  - {{ metric: error_rate, pass: \"< 1%\" }}\n"
        ),
    )
    .unwrap();
    let out = procs.dir.path().join("out");
    let mut cmd = Command::new(stampede());
    cmd.arg("run").arg(&plan).args(["--coordinator", &url, "--insecure", "--expect-agents", "2", "--out", out.to_str().unwrap()]);
    let mut run = Background::start(cmd, procs.dir.path(), "run");

    // Wait until the load runs (two progress lines), then stop one agent.
    let running = wait_until(Duration::from_secs(10), || run.stderr_text().lines().filter(|l| l.starts_with('[')).count() >= 2);
    assert!(running, "the run did not start:\n{}\n{}", run.stderr_text(), procs.logs());
    let signalled = Instant::now();
    procs.sigterm("leaves");
    let status = procs.wait_exit("leaves", Duration::from_secs(3)).unwrap_or_else(|| panic!("still running 3 s after SIGTERM:\n{}", procs.logs()));
    assert_eq!(status.code(), Some(0), "{}", procs.log("leaves"));

    // The run ends on schedule (the other agent finishes its share), exit 3.
    let (code, stdout, stderr) = run.finish(Duration::from_secs(20));
    assert_eq!(code, 3, "stdout:\n{stdout}\nstderr:\n{stderr}\n{}", procs.logs());
    assert!(signalled.elapsed() < Duration::from_secs(15), "the run took {:?} after the signal", signalled.elapsed());
    let r: Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(r["verdict"], "incomplete", "{r:#}");
    let agent = |id: &str| r["agents"].as_array().unwrap().iter().find(|a| a["id"] == id).unwrap_or_else(|| panic!("no agent {id}: {r:#}")).clone();
    let (leaves, stays) = (agent("leaves"), agent("stays"));
    assert_eq!(leaves["complete"], false, "{leaves:#}");
    assert_eq!(stays["complete"], true, "{stays:#}");
    // It stopped its load when signalled: well short of its ~300 requests.
    let sent = leaves["requests"].as_u64().unwrap();
    assert!(sent < 250, "the stopped agent sent {sent} requests");
    assert!((stays["requests"].as_f64().unwrap() - 300.0).abs() <= 6.0, "{stays:#}");
    let reasons = r["verdict_reasons"].to_string();
    assert!(reasons.contains("agent leaves"), "the reasons name the agent: {reasons}");
    // On SIGTERM the agent delivers what it measured before it leaves — its
    // last, partial interval and its own totals — and says it stopped early
    // rather than dropping the session: nothing it sent is missing.
    assert!(reasons.contains("stopped before the end of the run"), "{reasons}");
    assert!(leaves["lost"].is_null(), "{leaves:#}");
    assert!(leaves.get("missing_intervals").is_none_or(|m| m.as_array().is_some_and(Vec::is_empty)), "{leaves:#}");
}

/// A coordinator that restarts mid-run has forgotten the run. The agent
/// keeps its load for its lease, reconnects, says which run it is on, and
/// the new coordinator tells it to stop: it does, at once, well before
/// the run's planned end, and stays registered for the next run.
#[test]
fn an_agent_stops_a_run_its_restarted_coordinator_does_not_know() {
    let mut procs = Procs::new();
    let port = free_port();
    let Some(url) = procs.coordinator_on("coordinator", port) else {
        eprintln!("skipped: port {port} was taken");
        return;
    };
    let target = procs.target("target", &["--latency", "1ms"]);
    procs.agent("a1", &url, "zone=a");
    procs.wait_for_agents(&url, &["a1"], Duration::from_secs(10));
    // 30 s of load: far longer than the test waits.
    let plan = procs.dir.path().join("long.yaml");
    std::fs::write(
        &plan,
        format!(
            "name: long\ntarget: http://{target}\n\
             phases:\n  - {{ name: steady, duration: 30s, load: {{ model: open, rate: 20/s }} }}\n\
             steps:\n  - {{ name: get, request: {{ path: /items/1 }} }}\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(stampede());
    cmd.arg("run").arg(&plan).args(["--coordinator", &url, "--insecure", "--expect-agents", "1"]);
    let mut run = Background::start(cmd, procs.dir.path(), "run");
    let running = wait_until(Duration::from_secs(10), || run.stderr_text().lines().filter(|l| l.starts_with('[')).count() >= 2);
    assert!(running, "the run did not start:\n{}\n{}", run.stderr_text(), procs.logs());

    // The coordinator dies and comes back on the same port, within the lease.
    let _ = procs.get("coordinator").child.kill();
    let restarted = Instant::now();
    assert!(procs.coordinator_on("coordinator", port).is_some(), "the coordinator did not come back on {port}");
    let _ = run.finish(Duration::from_secs(5));

    let stopped = wait_until(Duration::from_secs(10), || procs.log("a1").contains("Run finished."));
    assert!(stopped, "the agent did not stop the unknown run:\n{}", procs.logs());
    println!("the agent stopped the forgotten run {:?} after the coordinator restarted", restarted.elapsed());
    let log = procs.log("a1");
    assert!(log.contains("Run aborted by the coordinator."), "{log}");
    assert!(procs.log("coordinator").contains("does not know"), "{}", procs.log("coordinator"));
    assert!(procs.alive("a1"), "{log}");
    procs.wait_for_agents(&url, &["a1"], Duration::from_secs(10));
}
