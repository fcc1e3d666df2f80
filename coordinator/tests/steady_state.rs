//! The steady state (issue 9, section 3; docs/plan.md "Steady state"):
//! Chaos Toolkit's hypothesis, checked by the run's probe agent before any
//! load or fault (else exit 2, nothing touched), after the run (else
//! `fail`), and by a fault with `unless_unhealthy` just before it.
//!
//! Real binaries, local agents, loopback only. The target is a separate
//! `stampede target` process on a port of this test, so a test can kill it
//! mid-run. Faults are partitions of exactly that port, in an nft table
//! named after the test and its pid, deleted by a guard whatever happens;
//! they need root and nftables and the tests that apply one say why they
//! skip otherwise.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::nft::{skip_reason, TableGuard};
use support::{free_port, stampede, wait_until, Background, Procs};

/// A plan against `target` with a `health` probe in its steady state (on
/// `/items/1`: the built-in target's `/health` ignores `--error-rate`), a
/// `duration` phase at 10/s, and `faults` (YAML list items) appended.
fn plan(target: &str, duration: &str, faults: &str) -> String {
    format!(
        "name: steady\ntarget: http://{target}\ntimeout: 500ms\nphases:\n  - {{ name: load, duration: {duration}, load: {{ model: open, rate: 10/s }} }}\nsteps:\n  - {{ name: get }}\n\
         probes:\n  - {{ name: health, every: 500ms, request: {{ path: /items/1 }} }}\nsteady_state: {{ probes: [health], within: 1s }}\n{faults}"
    )
}

/// A partition of `port` from `at`, for 1 s, with `unless`; its table's guard.
fn partition(name: &str, port: u16, at: &str, unless: &str) -> (String, TableGuard) {
    let fault = format!("{name}-{}", std::process::id());
    let yaml = format!("faults:\n  - {{ name: {fault}, kind: partition, at: {at}, duration: 1s, scope: {{ dst: 127.0.0.1/32, port: {port} }}{unless} }}\n");
    (yaml, TableGuard(format!("stampede_{}", fault.replace('-', "_"))))
}

fn start_run(procs: &Procs, name: &str, plan: &str) -> (Background, std::path::PathBuf) {
    let file = procs.dir.path().join(format!("{name}.yaml"));
    std::fs::write(&file, plan).unwrap();
    let out = procs.dir.path().join(format!("out-{name}"));
    let mut cmd = Command::new(stampede());
    cmd.arg("run").arg(&file).args(["--local-agents", "1", "--state-dir"]).arg(procs.dir.path().join(format!("state-{name}"))).arg("--out").arg(&out);
    (Background::start(cmd, procs.dir.path(), name), out)
}

fn report(out: &Path) -> Value {
    let text = std::fs::read_to_string(out.join("report.json")).unwrap_or_else(|e| panic!("report.json in {}: {e}", out.display()));
    serde_json::from_str(&text).unwrap()
}

fn kill(procs: &mut Procs, name: &str) {
    let pid = procs.pid(name).to_string();
    assert!(Command::new("kill").args(["-KILL", &pid]).status().unwrap().success());
    let _ = procs.wait_exit(name, Duration::from_secs(5));
}

fn reasons(r: &Value) -> Vec<String> {
    r["verdict_reasons"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
}

#[test]
fn steady_state_refuses_a_dead_target_with_exit_2_and_applies_nothing() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let procs = Procs::new();
    // Nothing listens on this port: the hypothesis cannot hold.
    let port = free_port();
    let (fault, table) = partition("ss-dead", port, "0s", "");
    let (mut run, out) = start_run(&procs, "dead", &plan(&format!("127.0.0.1:{port}"), "3s", &fault));
    let mut seen = false;
    let (code, stdout, stderr) = loop {
        seen |= table.exists();
        if let Ok(Some(_)) = run.child.try_wait() {
            break run.finish(Duration::from_secs(1));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, 2, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("the steady state does not hold before the run, so nothing was started: health: cannot connect"), "{stderr}");
    assert!(!seen && !table.exists(), "the partition was applied although the steady state did not hold");
    assert!(!out.exists(), "a refused run wrote reports");
}

#[test]
fn steady_state_refuses_a_target_that_answers_500_from_the_start() {
    let mut procs = Procs::new();
    let target = procs.target("target", &["--error-rate", "100%"]);
    let (mut run, out) = start_run(&procs, "failing", &plan(&target.to_string(), "3s", ""));
    let (code, _, stderr) = run.finish(Duration::from_secs(30));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("health: status 500 is not one the probe accepts"), "{stderr}");
    assert!(!out.exists());
    // And the same plan against a healthy target runs and passes.
    let healthy = procs.target("healthy", &[]);
    let (mut run, out) = start_run(&procs, "healthy", &plan(&healthy.to_string(), "2s", ""));
    let (code, _, stderr) = run.finish(Duration::from_secs(30));
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("steady state holds after the run"), "{stderr}");
    assert_eq!(report(&out)["verdict"], "pass");
}

#[test]
fn steady_state_broken_after_the_run_fails_the_verdict_naming_the_probe() {
    let mut procs = Procs::new();
    let target: SocketAddr = procs.target("target", &[]);
    let (mut run, out) = start_run(&procs, "after", &plan(&target.to_string(), "3s", ""));
    // The run starts about 1 s after the steady state held; the target dies mid-run.
    assert!(wait_until(Duration::from_secs(20), || std::fs::read_to_string(&run.stderr).unwrap_or_default().contains("steady state holds")), "{}", run.stderr_text());
    std::thread::sleep(Duration::from_secs(2));
    kill(&mut procs, "target");
    let (code, _, stderr) = run.finish(Duration::from_secs(30));
    assert_eq!(code, 1, "{stderr}");
    let r = report(&out);
    assert_eq!(r["verdict"], "fail", "{r:#}");
    assert!(
        reasons(&r).iter().any(|x| x.starts_with("steady state did not hold after the run: health: cannot connect")),
        "{:?}",
        reasons(&r)
    );
}

#[test]
fn unless_unhealthy_skip_leaves_the_fault_out_and_the_run_goes_on() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut procs = Procs::new();
    // Healthy at the fault's start: applied and reverted as planned.
    let healthy = procs.target("healthy", &[]);
    let (fault, table) = partition("ss-ok", healthy.port(), "2s", ", unless_unhealthy: skip");
    let (mut run, out) = start_run(&procs, "ok", &plan(&healthy.to_string(), "4s", &fault));
    assert!(wait_until(Duration::from_secs(20), || table.exists()), "a healthy target's fault was never applied:\n{}", run.stderr_text());
    let (code, _, stderr) = run.finish(Duration::from_secs(30));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report(&out)["faults"][0]["status"], "reverted");

    // Down by the fault's start: skipped, nothing applied, the load goes on.
    let sick = procs.target("sick", &[]);
    let (fault, table) = partition("ss-skip", sick.port(), "3s", ", unless_unhealthy: skip");
    let (mut run, out) = start_run(&procs, "skip", &plan(&sick.to_string(), "5s", &fault));
    assert!(wait_until(Duration::from_secs(20), || std::fs::read_to_string(&run.stderr).unwrap_or_default().contains("steady state holds")), "{}", run.stderr_text());
    kill(&mut procs, "sick");
    let mut seen = false;
    while run.child.try_wait().unwrap().is_none() {
        seen |= table.exists();
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, _, stderr) = run.finish(Duration::from_secs(1));
    assert!(!seen, "the fault was applied to a target that was down");
    let r = report(&out);
    let f = &r["faults"][0];
    assert_eq!(f["status"], "skipped", "{f:#}");
    assert!(f["error"].as_str().unwrap().contains("the steady state did not hold just before it (health: cannot connect"), "{f:#}");
    // The run was not stopped: every interval of its 5 s arrived, and only
    // the steady state after it fails the verdict.
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(r["agents"][0]["complete"], true, "{r:#}");
    assert!(reasons(&r).iter().all(|x| !x.starts_with("aborted")), "{:?}", reasons(&r));
}

#[test]
fn unless_unhealthy_abort_stops_the_run_and_fails_it_naming_the_fault() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut procs = Procs::new();
    let sick = procs.target("sick", &[]);
    let (fault, table) = partition("ss-abort", sick.port(), "3s", ", unless_unhealthy: abort");
    let (mut run, out) = start_run(&procs, "abort", &plan(&sick.to_string(), "8s", &fault));
    assert!(wait_until(Duration::from_secs(20), || std::fs::read_to_string(&run.stderr).unwrap_or_default().contains("steady state holds")), "{}", run.stderr_text());
    kill(&mut procs, "sick");
    let (code, _, stderr) = run.finish(Duration::from_secs(30));
    assert!(!table.exists());
    assert_eq!(code, 1, "{stderr}");
    let r = report(&out);
    assert_eq!(r["verdict"], "fail");
    let name = format!("ss-abort-{}", std::process::id());
    assert!(
        reasons(&r).iter().any(|x| x.starts_with(&format!("aborted by unless_unhealthy of fault {name}: the steady state did not hold before it (health: cannot connect"))),
        "{:?}",
        reasons(&r)
    );
    assert_eq!(r["faults"][0]["status"], "skipped");
    // Stopped at the fault (3 s), well before the 8 s planned.
    assert!(r["duration_s"].as_f64().unwrap() < 7.0, "{}", r["duration_s"]);
}
