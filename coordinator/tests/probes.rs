//! Probes (issue 9, section 3; docs/plan.md "Probes"): requests on a fixed
//! cadence beside the load, recorded as their own series — in report.json's
//! `probes`, never in the run's totals, phases or steps — through the real
//! binary with local agents against the built-in target on a port of its own,
//! or a JSON health endpoint of the test's own on loopback.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::http::{HttpServer, Reply};
use support::{run_plan, stampede};

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn a_probe_every_second_is_its_own_series_and_stays_out_of_the_run_totals() {
    // Two probes on the first agent: `health` accepts the target's 200,
    // `strict` only a 204 the target never sends, so every one of its
    // requests fails — and neither may touch the load's numbers.
    let plan = r#"
name: probes
target: http://127.0.0.1:0
builtin_target: {}
interval: 1s
timeout: 1s
phases:
  - { name: steady, duration: 5s, load: { model: open, rate: 20/s } }
steps:
  - { name: get, request: { path: /items/1 } }
probes:
  - { name: health, every: 1s, request: { path: /health } }
  - { name: strict, every: 1s, request: { path: /health }, expect: { status: "204" } }
slos:
  - { metric: error_rate, scope: run, pass: "< 1%" }
  - { metric: error_rate, scope: "probe:health", pass: "< 1%" }
  - { metric: error_rate, scope: "probe:strict", pass: "< 1%" }
"#;
    let (code, stderr, r) = run_plan(plan, 2);
    // Each series judged in its own scope: the load's and `health` pass,
    // `strict` fails, and only that rule fails the run.
    assert_eq!(code, 1, "stderr:\n{stderr}\n{r:#}");
    let slos = r["slos"].as_array().unwrap();
    let statuses: Vec<&str> = slos.iter().map(|s| s["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["pass", "pass", "fail"], "{slos:#?}");
    assert_eq!(slos[0]["observed"].as_f64(), Some(0.0), "the failing probe leaked into the run scope: {slos:#?}");
    assert_eq!(slos[2]["observed"].as_f64(), Some(1.0), "{slos:#?}");
    let probes = r["probes"].as_array().unwrap_or_else(|| panic!("no probes section: {r:#}"));
    assert_eq!(probes.len(), 2);
    let (health, strict) = (&probes[0], &probes[1]);
    assert_eq!(health["name"], "health");
    // From the assignment (about 1 s before the start) to the end at 5 s:
    // about 6 requests, from one agent only (`agents: 1`, the default).
    let sent = n(&health["requests"]);
    assert!((5..=7).contains(&sent), "health sent {sent} requests in a 5 s run at 1/s: {health:#}");
    assert_eq!(n(&health["errors"]), 0, "{health:#}");
    assert!(health["latency_ms"]["p50"].as_f64().is_some_and(|v| v > 0.0), "{health:#}");
    assert_eq!(n(&strict["errors"]), n(&strict["requests"]), "every request of a probe that accepts only 204 fails: {strict:#}");
    assert!(n(&strict["errors_by_kind"]["http_other"]) > 0, "{strict:#}");

    // The load's totals are the phase's and the step's, not a request more.
    let totals = n(&r["totals"]["requests"]);
    assert_eq!(totals, n(&r["phases"][0]["requests"]));
    assert_eq!(totals, n(&r["steps"][0]["requests"]));
    assert_eq!(n(&r["totals"]["errors"]), 0, "the failing probe's errors leaked into the totals: {:#}", r["totals"]);
    assert!((95..=105).contains(&totals), "20/s for 5 s: {totals}");
    let timeline: u64 = r["timeline"].as_array().unwrap().iter().map(|p| n(&p["requests"])).sum();
    assert_eq!(timeline, totals, "the timeline (and live progress) counts the load only");
    // The probes did travel in the agents' snapshots: the agents counted them.
    let agents: u64 = r["agents"].as_array().unwrap().iter().map(|a| n(&a["requests"])).sum();
    assert_eq!(agents, totals + sent + n(&strict["requests"]));
}

#[test]
fn a_plan_whose_steady_state_names_no_probe_is_refused_naming_the_line() {
    let plan = "name: p\ntarget: http://127.0.0.1:9\nphases:\n  - { name: a, duration: 1s, load: { model: open, rate: 1/s } }\nsteps:\n  - { name: s }\nprobes:\n  - { name: health, every: 1s }\nsteady_state:\n  probes: [helth]\n";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plan.yaml");
    std::fs::write(&file, plan).unwrap();
    let output = Command::new(stampede()).arg("run").arg(&file).args(["--local-agents", "1"]).output().expect("stampede runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("plan.yaml:10: steady_state.probes[0]: there is no probe `helth`"), "{stderr}");
}

/// A health endpoint of the test's own on loopback (`support/http.rs`):
/// every request gets `200 {"ok": true}` while `healthy` is set, `200 {"ok":
/// false}` otherwise — a status the probe accepts, so only its JSON check
/// can tell.
fn json_health(healthy: Arc<AtomicBool>) -> HttpServer {
    HttpServer::start(move |_| {
        let body = if healthy.load(Ordering::SeqCst) { r#"{"ok": true}"# } else { r#"{"ok": false}"# };
        Reply::new(200, body).header("Content-Type: application/json")
    })
}

fn json_plan(target: SocketAddr) -> String {
    format!(
        "name: json-health\ntarget: http://{target}\ntimeout: 1s\nphases:\n  - {{ name: steady, duration: 3s, load: {{ model: open, rate: 5/s }} }}\nsteps:\n  - {{ name: get }}\n\
         probes:\n  - name: health\n    every: 500ms\n    request: {{ path: /health }}\n    checks:\n      - {{ name: says-ok, json: \"$.ok == true\" }}\n\
         steady_state: {{ probes: [health], within: 1s }}\n"
    )
}

#[test]
fn a_probe_check_on_a_json_field_passes_and_fails_both_ways() {
    let healthy = Arc::new(AtomicBool::new(true));
    let server = json_health(healthy.clone());
    let target = server.addr;

    // Healthy all along: every probe response passes `says-ok`, the verdict passes.
    let (code, stderr, r) = run_plan(&json_plan(target), 1);
    assert_eq!(code, 0, "{stderr}\n{r:#}");
    let p = &r["probes"][0];
    assert!(n(&p["checks"]["says-ok"]["passed"]) >= 6, "{p:#}");
    assert_eq!(n(&p["checks"]["says-ok"]["failed"]), 0, "{p:#}");
    assert_eq!(n(&p["errors"]), 0, "{p:#}");
    assert!(n(&p["statuses"]["200"]) >= 6, "{p:#}");

    // Says `{"ok": false}` from 2.5 s after the launch (about 1.5 s into the
    // 3 s run) on: the check fails as
    // kind `check` and counts under its name, the load (no checks) does not
    // notice, and the steady state after the run fails naming probe and check.
    let flip = {
        let healthy = healthy.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(2500));
            healthy.store(false, Ordering::SeqCst);
        })
    };
    let (code, stderr, r) = run_plan(&json_plan(target), 1);
    flip.join().unwrap();
    assert_eq!(code, 1, "{stderr}\n{r:#}");
    let p = &r["probes"][0];
    let failed = n(&p["checks"]["says-ok"]["failed"]);
    assert!(failed >= 2, "{p:#}");
    assert!(n(&p["checks"]["says-ok"]["passed"]) >= 2, "{p:#}");
    assert_eq!(n(&p["errors_by_kind"]["check"]), failed, "{p:#}");
    assert_eq!(n(&r["totals"]["errors"]), 0, "{:#}", r["totals"]);
    let reasons: Vec<&str> = r["verdict_reasons"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(reasons, ["steady state did not hold after the run: health: says-ok failed"], "{r:#}");

    // Unhealthy from the start: refused before anything runs.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plan.yaml");
    std::fs::write(&file, json_plan(target)).unwrap();
    let output = Command::new(stampede()).arg("run").arg(&file).args(["--local-agents", "1"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("nothing was started: health: says-ok failed"), "{stderr}");
}
