//! One plan for every environment, and secrets that are sent but never
//! written: `${NAME}`, `--set`, `--target` through the real `stampede`
//! binary, and a random secret that the built-in target must receive (it
//! answers 401 without it) yet that no file of the out dir, no file of a
//! standing coordinator's run store, and no log line (RUST_LOG=debug; trace
//! for a local run, as docs/plan.md promises any level: gRPC and rustls
//! log there) holds.
//! Traffic goes to 127.0.0.1 only; every process is killed at the end.

mod support;

use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{accepts, free_port, list_agents, stampede, wait_until, Background, Procs};

/// A value no file or log could hold by chance.
fn random_secret() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    format!("stp-secret-{:016x}{}", h.finish(), std::process::id())
}

/// Every file under `dir` (recursively) that contains `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path).unwrap().windows(needle.len()).any(|w| w == needle.as_bytes()) {
                hits.push(path.display().to_string());
            }
        }
    }
    hits
}

fn run_stampede(args: &[&str], env: &[(&str, &str)], limit: Duration) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(stampede());
    cmd.args(args).envs(env.iter().copied());
    let mut bg = Background::start(cmd, dir.path(), "cmd");
    bg.finish(limit)
}

/// A plan whose built-in target refuses (401) any request without
/// `authorization: Bearer <STP_TEST_EXPECTED>`; the step and the health
/// probe send `Bearer <STP_TEST_TOKEN>`.
const SECRET_PLAN: &str = r#"name: secret
target: http://127.0.0.1:0
builtin_target:
  require_header: { name: authorization, value: { secret_env: STP_TEST_EXPECTED, prefix: "Bearer " } }
phases:
  - { name: p, duration: "${STP_TEST_DURATION:-2s}", load: { model: open, rate: 50/s } }
steps:
  - name: call
    request:
      path: /items/1
      headers:
        authorization: { secret_env: STP_TEST_TOKEN, prefix: "Bearer " }
    expect: { status: "200" }
probes:
  - name: health
    every: 500ms
    request: { path: /items/2, headers: { authorization: { secret_env: STP_TEST_TOKEN, prefix: "Bearer " } } }
    expect: { status: "200" }
steady_state: { probes: [health], within: 5s }
slos:
  - { metric: error_rate, scope: run, pass: "<= 0%" }
"#;

/// Every request reached the target with the right header: all 200.
fn assert_all_authorized(report: &Value) {
    let totals = &report["totals"];
    assert!(totals["requests"].as_u64().unwrap() > 50, "{totals:#}");
    assert_eq!(totals["errors"], 0, "{totals:#}");
    let statuses = totals["statuses"].as_object().unwrap();
    assert_eq!(statuses.keys().collect::<Vec<_>>(), ["200"], "{totals:#}");
    let probe = &report["probes"][0];
    assert!(probe["requests"].as_u64().unwrap() > 0 && probe["errors"] == 0, "{probe:#}");
    // The plan in the report names the secret, never its value.
    let header = &report["plan"]["steps"][0]["request"]["headers"]["authorization"];
    assert_eq!(header, &serde_json::json!({ "secret_env": "STP_TEST_TOKEN", "prefix": "Bearer " }));
}

#[test]
fn set_and_target_override_the_plan_and_a_bad_flag_names_itself() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("p.yaml");
    std::fs::write(
        &plan,
        "name: p\ntarget: \"http://${STP_HOST:-127.0.0.1}:1\"\nphases:\n  - name: a\n    duration: 1s\n    load: { model: open, rate: 5/s }\nsteps:\n  - { name: s }\nslos:\n  - { metric: p99, pass: \"< 1s\" }\n",
    )
    .unwrap();
    let p = plan.to_str().unwrap();
    let ok = |args: &[&str], env: &[(&str, &str)]| run_stampede(&[&["validate", p], args].concat(), env, Duration::from_secs(20));

    let (code, out, err) = ok(&["--set", "phases[0].duration=30s", "--set", "slos[0].pass=< 300ms", "--target", "http://127.0.0.2:8080"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("30s"), "the overridden duration shows: {out}");

    // An unset variable without a default is an error at its line.
    let (code, _, err) = run_stampede(&["validate", p], &[], Duration::from_secs(20));
    assert_eq!(code, 0, "the default applies: {err}");
    std::fs::write(&plan, std::fs::read_to_string(&plan).unwrap().replace("${STP_HOST:-127.0.0.1}", "${STP_UNSET_HOST}")).unwrap();
    let (code, _, err) = ok(&[], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("p.yaml:2: target: environment variable STP_UNSET_HOST is not set"), "{err}");
    let (code, out, err) = ok(&[], &[("STP_UNSET_HOST", "127.0.0.3")]);
    assert_eq!(code, 0, "{out}{err}");

    // Bad flags name themselves.
    let (code, _, err) = ok(&["--set", "phases[3].duration=1s"], &[("STP_UNSET_HOST", "h")]);
    assert_eq!(code, 2);
    assert!(err.contains("--set phases[3].duration=1s: `phases` has 1 item(s)"), "{err}");
    let (code, _, err) = ok(&["--set", "phases[0].duration=soon"], &[("STP_UNSET_HOST", "h")]);
    assert_eq!(code, 2);
    assert!(err.contains("phases[0].duration") && err.contains("(set by `--set phases[0].duration=soon`)"), "{err}");
    let (code, _, err) = ok(&["--target", "ftp://x"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("target:") && err.contains("(set by `--target ftp://x`)"), "{err}");
}

#[test]
fn a_local_run_sends_the_secret_and_writes_it_nowhere() {
    let secret = random_secret();
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("secret.yaml");
    std::fs::write(&plan, SECRET_PLAN).unwrap();
    let out = dir.path().join("out");
    let args = ["run", plan.to_str().unwrap(), "--local-agents", "2", "--out", out.to_str().unwrap()];
    let (code, stdout, stderr) = run_stampede(&args, &[("STP_TEST_TOKEN", &secret), ("STP_TEST_EXPECTED", &secret), ("RUST_LOG", "trace")], Duration::from_secs(60));
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_all_authorized(&report);
    assert!(stderr.lines().count() > 20, "RUST_LOG=trace logged: {}", stderr.lines().count());
    assert_eq!(files_containing(&out, &secret), Vec::<String>::new());
    assert!(!stdout.contains(&secret) && !stderr.contains(&secret), "a log line holds the secret");

    // Without the variable nothing runs, and the error says which.
    let (code, _, stderr) = run_stampede(&args, &[("STP_TEST_EXPECTED", &secret)], Duration::from_secs(20));
    assert_eq!(code, 2);
    assert!(stderr.contains("secret.yaml:12: steps[0].request.headers.authorization: environment variable STP_TEST_TOKEN is not set"), "{stderr}");
    // A dry run reads no secret: it works without the variables.
    let (code, stdout, stderr) = run_stampede(&["run", plan.to_str().unwrap(), "--dry-run"], &[], Duration::from_secs(30));
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    // A wrong value reaches the target, which refuses it: the check is real.
    let (code, stdout, stderr) = run_stampede(&args, &[("STP_TEST_TOKEN", "wrong"), ("STP_TEST_EXPECTED", &secret)], Duration::from_secs(60));
    assert_eq!(code, 2, "{stdout}");
    assert!(stderr.contains("the steady state does not hold before the run") && stderr.contains("401"), "{stderr}");
}

#[test]
fn a_standing_coordinator_keeps_no_secret_in_its_store_or_logs() {
    let secret = random_secret();
    let mut procs = Procs::new();
    // The coordinator and agents log at debug; `Procs` keeps their output.
    let listen = format!("127.0.0.1:{}", free_port());
    let url = format!("http://{listen}");
    let data = procs.data_dir("coordinator");
    let mut cmd = Command::new(stampede());
    cmd.args(["coordinator", "--listen", &listen, "--insecure", "--data"]).arg(&data).env("RUST_LOG", "debug");
    procs.spawn("coordinator", cmd);
    let addr = listen.parse().unwrap();
    assert!(wait_until(Duration::from_secs(10), || accepts(addr) && list_agents(&url).is_some()), "{}", procs.logs());
    for id in ["a1", "a2"] {
        let mut cmd = Command::new(support::agent_bin());
        cmd.args(["--coordinator", &url, "--id", id, "--workers", "1", "--insecure"]).env("RUST_LOG", "debug").stdin(Stdio::null());
        procs.spawn(id, cmd);
    }
    procs.wait_for_agents(&url, &["a1", "a2"], Duration::from_secs(15));

    // A second step takes the token from a data file (docs/plan.md, "Data
    // files"): the client reads it and sends its rows beside the plan; the
    // coordinator passes them to the agents and stores none. The file
    // lives outside the folder searched below.
    let data_dir = tempfile::tempdir().unwrap();
    let tokens = data_dir.path().join("tokens.csv");
    std::fs::write(&tokens, format!("token\n{secret}\n")).unwrap();
    let data_step = format!(
        "  - name: from-data\n    data: {{ file: {} }}\n    request: {{ path: /items/3, headers: {{ authorization: \"Bearer {{{{data.token}}}}\" }} }}\n    expect: {{ status: \"200\" }}\nprobes:\n",
        tokens.display()
    );
    let plan = procs.dir.path().join("secret.yaml");
    std::fs::write(&plan, SECRET_PLAN.replacen("probes:\n", &data_step, 1)).unwrap();
    let out = procs.dir.path().join("out");
    let mut cmd = Command::new(stampede());
    cmd.arg("run").arg(&plan).args(["--coordinator", &url, "--insecure", "--out"]).arg(&out);
    cmd.env("STP_TEST_TOKEN", &secret).env("STP_TEST_EXPECTED", &secret).env("STP_TEST_DURATION", "3s").env("RUST_LOG", "debug");
    let mut run = Background::start(cmd, procs.dir.path(), "client");
    let (code, stdout, stderr) = run.finish(Duration::from_secs(60));
    assert_eq!(code, 0, "{stdout}\n{stderr}\n{}", procs.logs());
    let report: Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_all_authorized(&report);
    let from_data = report["steps"].as_array().unwrap().iter().find(|s| s["name"] == "from-data").expect("the data step ran");
    assert!(from_data["requests"].as_u64().unwrap() > 20 && from_data["errors"] == 0, "{from_data:#}");
    // `${STP_TEST_DURATION}` was resolved by the client: 3 s at 50/s.
    assert!(report["totals"]["requests"].as_u64().unwrap() > 120, "{:#}", report["totals"]);

    let stored = data.join("runs");
    assert_eq!(std::fs::read_dir(&stored).unwrap().count(), 1, "one stored run");
    assert_eq!(files_containing(&stored, &secret), Vec::<String>::new());
    assert_eq!(files_containing(&out, &secret), Vec::<String>::new());
    for name in ["coordinator", "a1", "a2"] {
        let log = procs.log(name);
        assert!(!log.is_empty(), "{name} logged nothing");
        assert!(!log.contains(&secret), "{name}'s log holds the secret");
    }
    assert!(!stdout.contains(&secret) && !stderr.contains(&secret), "the client's output holds the secret");
    // Nothing else in the test folder has it either (logs, plan, reports).
    assert_eq!(files_containing(procs.dir.path(), &secret), Vec::<String>::new());
}
