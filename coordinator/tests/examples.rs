//! Every plan in `examples/` runs: `stampede run PLAN --local-agents 2`
//! finishes with a verdict about the target — exit 0 (pass or warn) or 1 (an
//! SLO failed) — never 2 (the plan or the set-up is broken) or 3 (the numbers
//! cannot be trusted). `common/tests/formats.rs` checks that they load; this
//! checks that they run.
//!
//! One test per plan, so each stays far below 30 s (the plans run 8–15 s).
//! Together they take about 60 s of run time, at the limit above which
//! they would be `#[ignore]`d. `quickstart.toml` and `.json` are the same
//! plan as `quickstart.yaml` (`formats.rs` proves it), so only the YAML runs;
//! `every_example_has_a_test` makes a new example without a test fail.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::Background;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// The examples that run here, and the twins that are covered by another.
const RUN: &[&str] = &["quickstart.yaml", "chat-soak.yaml", "mesh-mix.yaml", "staging-load.yaml", "game-day.yaml", "https.yaml", "https-mtls.yaml"];
const SAME_AS_ANOTHER: &[&str] = &["quickstart.toml", "quickstart.json"];

fn run_example(file: &str) -> Value {
    run_example_with(file, &[])
}

/// Runs an example with extra `stampede run` arguments (`--set ...`).
fn run_example_with(file: &str, extra: &[String]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut cmd = std::process::Command::new(support::stampede());
    cmd.arg("run").arg(examples_dir().join(file)).args(["--local-agents", "2", "--out"]).arg(&out).args(extra);
    let (code, stdout, stderr) = Background::start(cmd, dir.path(), "run").finish(Duration::from_secs(28));
    assert!(code == 0 || code == 1, "{file}: exit {code}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let verdict = r["verdict"].as_str().unwrap();
    assert_eq!(code == 0, verdict == "pass" || verdict == "warn", "{file}: verdict {verdict}, exit {code}");
    assert_eq!(r["agents"].as_array().unwrap().len(), 2);
    assert!(r["totals"]["requests"].as_u64().unwrap() > 0, "{file}: no requests");
    // Every rule was evaluated on something it saw.
    for s in r["slos"].as_array().unwrap() {
        assert!(!s["observed"].is_null(), "{file}: SLO saw nothing: {s}");
    }
    r
}

#[test]
fn quickstart_runs() {
    run_example("quickstart.yaml");
}

#[test]
fn chat_soak_runs() {
    run_example("chat-soak.yaml");
}

#[test]
fn mesh_mix_runs() {
    run_example("mesh-mix.yaml");
}

/// Over TLS: every request succeeds, and each connection's handshake is
/// measured.
#[test]
fn https_runs() {
    let r = run_example("https.yaml");
    assert_eq!(r["verdict"], "pass", "{:#}", r["verdict_reasons"]);
    assert_eq!(r["totals"]["errors"], 0);
    assert!(r["steps"][0]["tls_handshake_ms"].is_object(), "{:#}", r["steps"][0]);
}

/// Mutual TLS: the agents present the client certificate `stampede run`
/// gave them, so the target that requires one answers everything.
#[test]
fn https_mtls_runs() {
    let r = run_example("https-mtls.yaml");
    assert_eq!(r["verdict"], "pass", "{:#}", r["verdict_reasons"]);
    assert_eq!(r["totals"]["errors"], 0);
}

/// Runbook 004's first load test: 20 clients x 3 rounds = exactly 60 job
/// flows (submit, then poll until done), every one done: 0 stuck; each on
/// its own node of the data file: 0 without one.
#[test]
fn staging_load_runs() {
    let r = run_example("staging-load.yaml");
    assert_eq!(r["verdict"], "pass", "{:#}", r["verdict_reasons"]);
    let job = r["steps"].as_array().unwrap().iter().find(|s| s["name"] == "job").expect("the job flow's step");
    assert_eq!(job["requests"], 60, "{job:#}");
    assert_eq!(job["errors"], 0, "{job:#}");
    let stuck = r["slos"].as_array().unwrap().iter().find(|s| s["metric"] == "errors:stuck").expect("the stuck rule");
    assert_eq!(stuck["observed"], 0.0, "{stuck:#}");
    let no_row = r["slos"].as_array().unwrap().iter().find(|s| s["metric"] == "errors:data").expect("the data rule");
    assert_eq!(no_row["observed"], 0.0, "{no_row:#}");
}

#[test]
fn game_day_judges_the_outage_and_the_recovery() {
    // The partition needs root and nftables; its table is removed whatever happens.
    if let Some(why) = support::nft::skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let _table = support::nft::TableGuard("stampede_broker_outage".into());
    // The plan's fixed port might be taken here: the same plan on a free
    // one, changing only the target and the partition's port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let r = run_example_with("game-day.yaml", &["--set".into(), format!("target=http://127.0.0.1:{port}"), "--set".into(), format!("faults[0].scope.port={port}")]);
    let context = format!("slos {:#}\nfaults {:#}\nprobes {:#}", r["slos"], r["faults"], r["probes"]);
    assert_eq!(r["verdict"], "pass", "{context}");
    let fault = &r["faults"][0];
    assert_eq!((fault["name"].as_str(), fault["status"].as_str()), (Some("broker-outage"), Some("reverted")), "{fault}");
    let slo = |rule: &str| r["slos"].as_array().unwrap().iter().find(|s| s["rule"].as_str().is_some_and(|x| x.starts_with(rule))).unwrap_or_else(|| panic!("no {rule}: {:#}", r["slos"])).clone();
    // The partition fails every health beat (5 s); the target's 503 window
    // follows it. Recovery counts from the revert to three healthy beats.
    // On a loaded machine a beat can be late enough to leave an interval
    // without one, which ends a streak: hence 3 s at least, not 5.
    let recovery = slo("recovery_time")["observed"].as_f64().unwrap();
    assert!((1_000.0..=8_000.0).contains(&recovery), "recovery {recovery} ms\n{context}");
    let outage = slo("max_streak(error_rate > 0)")["observed"].as_f64().unwrap();
    assert!((3_000.0..=10_000.0).contains(&outage), "longest failing streak of health {outage} ms\n{context}");
    assert!(slo("max_streak(status:5xx > 0)")["observed"].as_f64().unwrap() >= 1_000.0, "the 503 window shows as a 5xx streak\n{context}");
    let health = &r["probes"][0];
    assert!(health["errors_by_kind"]["timeout"].as_u64().unwrap() >= 3, "{context}");
}

#[test]
fn every_example_has_a_test() {
    for entry in std::fs::read_dir(examples_dir()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let is_plan = [".yaml", ".yml", ".toml", ".json"].iter().any(|ext| name.ends_with(ext));
        if is_plan {
            assert!(RUN.contains(&name.as_str()) || SAME_AS_ANOTHER.contains(&name.as_str()), "examples/{name} has no test in coordinator/tests/examples.rs");
        }
    }
}
