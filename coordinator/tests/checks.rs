//! Checks on responses, end to end through `stampede run` with a local
//! agent against the built-in target: a JSON field, a header and a body
//! regex on `/health`, passing against a healthy target and failing (kind
//! `check`, counted under each check's name) against one whose `/health`
//! says `{"ok": false}` (a status window); statuses counted in report.json;
//! `check:NAME` and `status:5xx` SLOs judged from those counts.

mod support;


use serde_json::Value;

/// Runs `plan` (YAML text) with one local agent; the exit code and report.json.
fn run(plan: &str) -> (i32, Value) {
    let (code, _stderr, report) = support::run_plan(plan, 1);
    (code, report)
}

/// A `/health` step with three checks, accepting any status so that only
/// the checks judge the body; `windows` goes into `builtin_target`.
fn plan(windows: &str) -> String {
    format!(
        r#"name: checks
target: http://127.0.0.1:0
builtin_target: {{ windows: [{windows}] }}
interval: 500ms
phases:
  - {{ name: hold, duration: 2s, load: {{ model: open, rate: 20/s }} }}
steps:
  - name: health
    request: {{ path: /health }}
    expect: {{ status: 200-599 }}
    checks:
      - {{ name: says-ok, json: "$.ok == true" }}
      - {{ name: is-json, header: content-type, matches: "^application/json" }}
      - {{ name: has-queue, body_matches: '"max": \d+' }}
slos:
  - {{ metric: error_rate, scope: run, pass: "< 1%" }}
  - {{ metric: "check:says-ok", scope: run, pass: "> 99%" }}
  - {{ metric: "status:5xx", scope: step:health, pass: "< 1%" }}
"#
    )
}

fn count(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// The status of the SLO on `metric`.
fn slo(r: &Value, metric: &str) -> String {
    let slos = r["slos"].as_array().expect("slos");
    let s = slos.iter().find(|s| s["metric"] == metric).unwrap_or_else(|| panic!("no slo on {metric}: {slos:?}"));
    s["status"].as_str().unwrap_or_default().to_string()
}

#[test]
fn json_header_and_body_checks_pass_against_a_healthy_target() {
    let (code, r) = run(&plan(""));
    let requests = count(&r["totals"]["requests"]);
    assert!(requests >= 30, "{requests} requests");
    assert_eq!((code, r["verdict"].as_str()), (0, Some("pass")), "{:#}", r["verdict_reasons"]);
    for name in ["says-ok", "is-json", "has-queue"] {
        assert_eq!((count(&r["checks"][name]["passed"]), count(&r["checks"][name]["failed"])), (requests, 0), "check {name}");
        assert_eq!(count(&r["steps"][0]["checks"][name]["passed"]), requests, "step's check {name}");
    }
    assert_eq!(count(&r["totals"]["statuses"]["200"]), requests);
    assert_eq!(count(&r["phases"][0]["statuses"]["200"]), requests);
    assert_eq!(count(&r["steps"][0]["statuses"]["200"]), requests);
    assert_eq!((slo(&r, "check:says-ok"), slo(&r, "status:5xx")), ("pass".into(), "pass".into()));
}

#[test]
fn a_target_whose_health_says_not_ok_fails_the_json_and_body_checks_as_kind_check() {
    let (code, r) = run(&plan("{ at: 0s, for: 60s, status: 503 }"));
    let requests = count(&r["totals"]["requests"]);
    assert!(requests >= 30, "{requests} requests");
    // Accepted by status (expect 200-599), failed by its checks.
    assert_eq!(count(&r["totals"]["errors_by_kind"]["check"]), requests);
    assert_eq!(count(&r["totals"]["errors"]), requests);
    for name in ["says-ok", "has-queue"] {
        assert_eq!((count(&r["checks"][name]["passed"]), count(&r["checks"][name]["failed"])), (0, requests), "check {name}");
    }
    // The outage answer is still JSON: that check passes, each check counts on its own.
    assert_eq!(count(&r["checks"]["is-json"]["passed"]), requests);
    assert_eq!(count(&r["totals"]["statuses"]["503"]), requests);
    assert!(r["totals"]["statuses"].get("200").is_none());
    assert_eq!((code, r["verdict"].as_str()), (1, Some("fail")));
    // The check's pass rate and the 5xx rate are judged from these counts.
    assert_eq!((slo(&r, "check:says-ok"), slo(&r, "status:5xx")), ("fail".into(), "fail".into()));
}
