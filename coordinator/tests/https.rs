//! Issue 10: `stampede run` against the built-in target serving HTTPS
//! (`builtin_target: { tls: true }`), end to end with one local agent:
//! - the plan trusts the CA generated for the run, and with
//!   `require_client_cert` its agents present that CA's client certificate:
//!   the run passes, and report.json times the handshakes
//!   (`tls_handshake_ms`);
//! - `tls: { insecure_skip_verify: true }` passes too, and is flagged: a
//!   warning in report.json (`warnings`), report.md, the summary and progress.

use std::process::Command;

use serde_json::Value;

/// Runs `plan` (YAML text) with one local agent; exit code, report.json,
/// report.md, stdout and stderr (progress).
fn run(plan: &str) -> (i32, Value, String, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plan.yaml");
    std::fs::write(&file, plan).unwrap();
    let out = dir.path().join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_stampede")).arg("run").arg(&file).args(["--local-agents", "1", "--out"]).arg(&out).output().expect("stampede runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let text = std::fs::read_to_string(out.join("report.json")).unwrap_or_else(|_| panic!("no report; stderr:\n{stderr}"));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    (output.status.code().unwrap_or(-1), serde_json::from_str(&text).unwrap(), md, String::from_utf8_lossy(&output.stdout).into_owned(), stderr.into_owned())
}

fn plan(builtin: &str, tls: &str) -> String {
    format!(
        r#"name: https
target: https://127.0.0.1:0
builtin_target: {{ {builtin} }}
{tls}
interval: 500ms
phases:
  - {{ name: hold, duration: 2s, load: {{ model: closed, concurrency: 2 }} }}
steps:
  - {{ name: get, request: {{ path: / }} }}
slos:
  - {{ metric: error_rate, scope: run, pass: "< 0.1%" }}
"#
    )
}

#[test]
fn the_builtin_https_target_is_trusted_and_handshakes_are_timed() {
    let (code, r, md, _, _) = run(&plan("tls: true, require_client_cert: true", ""));
    assert_eq!(code, 0, "{r:#}");
    assert!(r["totals"]["requests"].as_u64().unwrap() > 50, "{:#}", r["totals"]);
    assert_eq!(r["totals"]["errors"], 0, "{:#}", r["totals"]);
    let h = &r["tls_handshake_ms"];
    assert!(h["count"].as_u64().unwrap_or(0) >= 2, "one handshake per connection at least: {h:#}");
    assert!(h["p50"].as_f64().is_some_and(|v| v > 0.0), "{h:#}");
    assert!(r["steps"][0]["tls_handshake_ms"]["count"].as_u64().unwrap_or(0) >= 2);
    assert!(r.get("warnings").is_none(), "no warning for a verified run: {:#}", r["warnings"]);
    assert!(md.contains("TLS handshakes:"), "{md}");
    // The plan as run names the generated CA, and no key material.
    assert!(r["plan"]["tls"]["ca"].as_str().is_some_and(|p| p.ends_with("ca.pem")), "{:#}", r["plan"]);
    assert!(!serde_json::to_string(&r).unwrap().contains("PRIVATE KEY"));
}

#[test]
fn insecure_skip_verify_passes_and_is_flagged() {
    let (code, r, md, stdout, stderr) = run(&plan("tls: true", "tls: { insecure_skip_verify: true }"));
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["totals"]["errors"], 0, "{:#}", r["totals"]);
    let warnings = r["warnings"].as_array().expect("a warnings list");
    assert!(warnings.iter().any(|w| w.as_str().unwrap_or("").contains("insecure_skip_verify")), "{warnings:?}");
    assert!(md.contains("**Warning**: tls.insecure_skip_verify"), "{md}");
    assert!(stdout.contains("warning: tls.insecure_skip_verify"), "{stdout}");
    // And in the progress, from the run's start.
    assert!(stderr.lines().any(|l| l.starts_with("warning: tls.insecure_skip_verify")), "{stderr}");
    // The CA the run generated is not put beside an explicit opt-out.
    assert!(r["plan"]["tls"].get("ca").is_none(), "{:#}", r["plan"]["tls"]);
}
