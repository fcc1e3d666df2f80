//! Drills that judge themselves (issue 9, section 2), end to end through the
//! real binaries: `stampede run` with an in-process agent against a target
//! told to break on cue, and the verdict of each time rule read back from
//! report.json — each both ways.
//!
//! - `max_streak(status:5xx > 0) < 30s`: a target answering 500 for the
//!   first 20 s of the run passes, for 30 s fails naming the rule (a `stop`
//!   fault replaces it by a healthy one at that instant; the second it is
//!   down refuses connections, which are errors but not 5xx).
//! - `during:`, `before:` and `after:` around real `pause` faults (SIGSTOP of
//!   a `stampede target` the test starts, and of a `sleep`).
//! - `recovery_time`: a target that a `stop` fault kills and whose `start`
//!   brings it back 7 s after the revert recovers in 7 s ± 1 interval; one
//!   that never comes back fails with "not recovered after N s".
//!
//! The fault tests need root (the agent signals the processes); they skip
//! with a printed reason otherwise. Every process a test starts is killed
//! when it ends (`support::Procs`), even stopped ones.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::{Background, Procs};

/// 1 s start lead + the plan's phases + the drain, well under this.
const RUN_LIMIT: Duration = Duration::from_secs(70);

/// `cargo test` runs a file's tests on parallel threads; these measure
/// timing (recovery in seconds, p99 of a pause) and would measure each other.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The verdict is `want` and the exit code follows it. `invalid` (exit 3)
/// is accepted when the only reason is the client's own timing: on a busy
/// 2-core machine the open-model client may start more than 1 % of its
/// arrivals over 10 ms late, and then says so instead of judging; the
/// rules' own statuses are asserted before this.
fn assert_verdict(r: &Value, code: i32, want: &str, logs: &dyn Fn() -> String) {
    let reasons = r["verdict_reasons"].as_array().cloned().unwrap_or_default();
    if r["verdict"] == "invalid" && !reasons.is_empty() && reasons.iter().all(|x| x.as_str().is_some_and(|t| t.contains("of its schedule"))) {
        assert_eq!(code, 3, "exit code of verdict invalid");
        println!("note: verdict invalid (client timing on a busy machine): {}", r["verdict_reasons"]);
        return;
    }
    let want_code = if want == "fail" { 1 } else { 0 };
    assert_eq!((r["verdict"].as_str(), code), (Some(want), want_code), "{}\n{}", r["verdict_reasons"], logs());
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").unwrap_or_default().lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// Runs `stampede run` on `plan` with one local agent; returns the exit
/// code, the stderr and the report.
fn run(dir: &Path, plan: &str) -> (i32, String, Value) {
    let path = dir.join("plan.yaml");
    std::fs::write(&path, plan).unwrap();
    let out = dir.join("out");
    let mut cmd = Command::new(support::stampede());
    cmd.arg("run").arg(&path).args(["--local-agents", "1", "--out"]).arg(&out).arg("--state-dir").arg(dir.join("state"));
    let mut bg = Background::start(cmd, dir, "run");
    let (code, _stdout, stderr) = bg.finish(RUN_LIMIT);
    let text = std::fs::read_to_string(out.join("report.json")).unwrap_or_else(|e| panic!("no report.json ({e}); exit {code}, stderr:\n{stderr}"));
    (code, stderr, serde_json::from_str(&text).unwrap())
}

/// The report's entry for the rule written `rule` (`p99 < 200ms`) in `scope`.
fn slo<'a>(r: &'a Value, rule: &str, scope: &str) -> &'a Value {
    r["slos"].as_array().unwrap().iter().find(|s| s["rule"] == rule && s["scope"] == scope).unwrap_or_else(|| panic!("no rule `{rule}` in {scope}: {:#}", r["slos"]))
}

fn observed(s: &Value) -> f64 {
    s["observed"].as_f64().unwrap_or_else(|| panic!("no observed value: {s}"))
}

/// A target that answers 500 to everything until the fault `fixed` stops
/// it at `bad_for_s`; the fault's revert 1 s later starts a healthy target
/// on the same address. Requests get 500 for the first `bad_for_s` of the
/// run, then are refused (errors, not 5xx) until the new target is up.
fn streak_plan(p: &mut Paused, bad_for_s: u64, phase: &str, restarted: &Restarted) -> String {
    let pid = p.procs.pid("target");
    let stop_at = bad_for_s;
    format!(
        "name: streak\ntarget: http://{target}\ntimeout: 2s\nphases:\n  - {{ name: steady, duration: {phase}, load: {{ model: open, rate: 20/s }} }}\nsteps:\n  - {{ name: get, request: {{ path: / }} }}\nfaults:\n  - {{ name: fixed, kind: stop, at: {stop_at}s, duration: 1s, instance: {{ driver: process, pid: {pid}, start: [sh, -c, 'echo $$ > {pid_file}; exec {bin} target --listen {target} --latency 1ms'] }} }}\nslos:\n  - {{ metric: \"max_streak(status:5xx > 0)\", pass: \"< 30s\" }}\n",
        target = p.target,
        pid_file = restarted.pid_file.display(),
        bin = support::stampede().display(),
    )
}

/// Runs the streak plan against a target broken for `bad_for_s` seconds.
fn streak_run(bad_for_s: u64, phase: &str) -> Option<(i32, String, Value, Paused)> {
    if !is_root() {
        eprintln!("skipped: the agent needs root to signal the processes it stops");
        return None;
    }
    let mut p = start_target(&["--error-rate", "100%"]);
    let restarted = Restarted { pid_file: p.procs.dir.path().join("restarted.pid") };
    let plan = streak_plan(&mut p, bad_for_s, phase, &restarted);
    let (code, stderr, r) = run(p.procs.dir.path(), &plan);
    assert!(restarted.pid_file.exists(), "the fault's revert never ran `start`: {}\n{stderr}\n{}", r["faults"], p.procs.logs());
    Some((code, stderr, r, p))
}

#[test]
fn a_5xx_streak_of_20s_passes_a_streak_rule_of_30s() {
    let _serial = serial();
    let Some((code, stderr, r, p)) = streak_run(20, "23s") else { return };
    let s = slo(&r, "max_streak(status:5xx > 0) < 30s", "run");
    // The stop lands a little after 20 s, mid-interval: 20 or 21 intervals
    // hold a 500.
    let streak = observed(s);
    eprintln!("max_streak {streak} ms, decided by {}", s["decided_by"]);
    assert!((20_000.0..=22_000.0).contains(&streak), "streak {streak} ms: {s}");
    assert_eq!(s["status"], "pass", "{s}");
    let by = &s["decided_by"];
    assert_eq!(by["from_s"], 0.0, "{s}");
    assert!((by["to_s"].as_f64().unwrap() - streak / 1e3).abs() < 1e-6, "{s}");
    assert_verdict(&r, code, "pass", &|| format!("{stderr}\n{}", p.procs.logs()));
}

#[test]
fn a_5xx_streak_of_30s_fails_a_streak_rule_of_30s_naming_it() {
    let _serial = serial();
    let Some((code, stderr, r, p)) = streak_run(30, "33s") else { return };
    let s = slo(&r, "max_streak(status:5xx > 0) < 30s", "run");
    assert!(observed(s) >= 30_000.0, "{s}");
    assert_eq!(s["status"], "fail", "{s}");
    assert_verdict(&r, code, "fail", &|| format!("{stderr}\n{}", p.procs.logs()));
    let junit = std::fs::read_to_string(p.procs.dir.path().join("out/junit.xml")).unwrap();
    assert!(junit.contains("max_streak(status:5xx &gt; 0) &lt; 30s") && junit.contains("<failure"), "{junit}");
}

/// One target process and one `sleep`, both paused by the plan's faults.
struct Paused {
    procs: Procs,
    target: std::net::SocketAddr,
}

fn start_target(extra: &[&str]) -> Paused {
    let mut procs = Procs::new();
    let target = procs.target("target", &[&["--latency", "1ms"], extra].concat());
    Paused { procs, target }
}

#[test]
fn during_before_and_after_judge_the_actual_pause_windows() {
    let _serial = serial();
    if !is_root() {
        eprintln!("skipped: the agent needs root to signal the processes it pauses");
        return;
    }
    let mut p = start_target(&[]);
    p.procs.spawn("sleep", {
        let mut c = Command::new("sleep");
        c.arg("60");
        c
    });
    let (target_pid, sleep_pid) = (p.procs.pid("target"), p.procs.pid("sleep"));
    // `freeze` stalls every request for 3 s; `nap` pauses a bystander, and
    // the target stays healthy through it. The baseline of `nap` (as long as
    // it, just before it) holds the end of `freeze`.
    let plan = format!(
        "name: scopes\ntarget: http://{}\ntimeout: 5s\nphases:\n  - {{ name: steady, duration: 12s, load: {{ model: open, rate: 20/s }} }}\nsteps:\n  - {{ name: get, request: {{ path: / }} }}\nfaults:\n  - {{ name: freeze, kind: pause, at: 2s, duration: 3s, instance: {{ driver: process, pid: {target_pid} }} }}\n  - {{ name: nap, kind: pause, at: 7s, duration: 3s, instance: {{ driver: process, pid: {sleep_pid} }} }}\nslos:\n  - {{ metric: p99, scope: during:freeze, pass: \"< 200ms\" }}\n  - {{ metric: p99, scope: during:nap, pass: \"< 200ms\" }}\n  - {{ metric: p99, scope: before:freeze, pass: \"< 200ms\" }}\n  - {{ metric: p99, scope: before:nap, pass: \"< 200ms\" }}\n  - {{ metric: error_rate, scope: after:freeze, for: 2s, pass: \"< 1%\" }}\n",
        p.target
    );
    let (code, stderr, r) = run(p.procs.dir.path(), &plan);
    let logs = || format!("{stderr}\n{}", p.procs.logs());
    for f in r["faults"].as_array().unwrap() {
        assert_eq!(f["status"], "reverted", "{f}\n{}", logs());
    }
    let during = slo(&r, "p99 < 200ms", "during:freeze");
    eprintln!("p99 during:freeze {} ms over {}", during["observed"], during["decided_by"]);
    assert_eq!(during["status"], "fail", "{during}");
    assert!(observed(during) > 1000.0, "requests waited out the pause: {during}");
    // The judged window is the fault's actual one, not its planned 2–5 s.
    let w = &during["window"];
    assert!(w["from_s"].as_f64().unwrap() >= 2.0 && w["to_s"].as_f64().unwrap() >= 5.0, "{during}");
    assert_eq!(slo(&r, "p99 < 200ms", "during:nap")["status"], "pass", "{}", slo(&r, "p99 < 200ms", "during:nap"));
    assert_eq!(slo(&r, "p99 < 200ms", "before:freeze")["status"], "pass", "{}", slo(&r, "p99 < 200ms", "before:freeze"));
    let before_nap = slo(&r, "p99 < 200ms", "before:nap");
    assert_eq!(before_nap["status"], "fail", "the baseline held the freeze: {before_nap}");
    // A pause loses nothing: every request was answered once it ended.
    let after = slo(&r, "error_rate < 1%", "after:freeze");
    assert_eq!((after["status"].as_str(), after["observed"].as_f64()), (Some("pass"), Some(0.0)), "{after}");
    assert_verdict(&r, code, "fail", &logs);
}

/// Removes the target a `stop` fault restarted (its pid in `pid_file`),
/// whatever the test's outcome.
struct Restarted {
    pid_file: std::path::PathBuf,
}

impl Drop for Restarted {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.pid_file).ok().and_then(|t| t.trim().parse::<u32>().ok()).filter(|&p| p > 1) {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
}

/// A plan whose fault `restart` stops the target at 2 s for 2 s; its revert
/// runs `start`. With `comes_back_after`, `start` brings a new target up on
/// the same address that long after the revert (a service that needs time
/// to start); without, nothing comes back.
fn recovery_plan(p: &mut Paused, comes_back_after: Option<&str>, phase: &str, restarted: &Restarted) -> String {
    let pid = p.procs.pid("target");
    let start = match comes_back_after {
        Some(delay) => format!(
            "[sh, -c, 'echo $$ > {}; sleep {delay}; exec {} target --listen {} --latency 1ms']",
            restarted.pid_file.display(),
            support::stampede().display(),
            p.target
        ),
        None => "[\"true\"]".into(),
    };
    format!(
        "name: recovery\ntarget: http://{}\ntimeout: 2s\ninterval: 500ms\nphases:\n  - {{ name: steady, duration: {phase}, load: {{ model: open, rate: 20/s }} }}\nsteps:\n  - {{ name: get, request: {{ path: / }} }}\nfaults:\n  - {{ name: restart, kind: stop, at: 2s, duration: 2s, instance: {{ driver: process, pid: {pid}, start: {start} }} }}\nslos:\n  - {{ name: healthy, metric: error_rate, scope: outside:faults, pass: \"< 1%\" }}\n  - {{ metric: recovery_time, fault: restart, pass: \"< 10s\" }}\n  - {{ metric: recovery_time, fault: restart, pass: \"< 5s\" }}\n  - {{ metric: error_rate, scope: after:restart, for: 3s, pass: \"< 1%\" }}\n",
        p.target
    )
}

#[test]
fn a_target_back_7s_after_its_restart_recovers_in_7s() {
    let _serial = serial();
    if !is_root() {
        eprintln!("skipped: the agent needs root to signal the processes it stops");
        return;
    }
    let mut p = start_target(&[]);
    let restarted = Restarted { pid_file: p.procs.dir.path().join("restarted.pid") };
    let plan = recovery_plan(&mut p, Some("7"), "16s", &restarted);
    let (code, stderr, r) = run(p.procs.dir.path(), &plan);
    let logs = || format!("{stderr}\n{}", p.procs.logs());
    assert!(restarted.pid_file.exists(), "the fault's revert never ran `start`: {}\n{}", r["faults"], logs());
    let within = slo(&r, "recovery_time(restart) < 10s", "run");
    let recovery = observed(within);
    eprintln!("recovery_time {recovery} ms, decided by {}", within["decided_by"]);
    // 7 s ± 1 interval (500 ms), and the new target's own start-up.
    assert!((6_500.0..=8_000.0).contains(&recovery), "recovery {recovery} ms: {within}\n{}", logs());
    assert_eq!(within["status"], "pass", "{within}");
    assert!(within["decided_by"]["from_s"].as_f64().unwrap() > within["window"]["from_s"].as_f64().unwrap(), "{within}");
    assert_eq!(slo(&r, "recovery_time(restart) < 5s", "run")["status"], "fail");
    // Refused connections after the revert break the aftermath rule.
    let after = slo(&r, "error_rate < 1%", "after:restart");
    assert_eq!(after["status"], "fail", "{after}");
    assert_verdict(&r, code, "fail", &logs);
}

#[test]
fn a_target_that_never_comes_back_fails_recovery_time_saying_so() {
    let _serial = serial();
    if !is_root() {
        eprintln!("skipped: the agent needs root to signal the processes it stops");
        return;
    }
    let mut p = start_target(&[]);
    let restarted = Restarted { pid_file: p.procs.dir.path().join("restarted.pid") };
    let plan = recovery_plan(&mut p, None, "9s", &restarted);
    let (code, stderr, r) = run(p.procs.dir.path(), &plan);
    let s = slo(&r, "recovery_time(restart) < 10s", "run");
    assert_eq!(s["status"], "fail", "{s}");
    assert!(s["observed"].is_null(), "{s}");
    assert!(s["detail"].as_str().unwrap().contains("not recovered after"), "{s}");
    assert_verdict(&r, code, "fail", &|| format!("{stderr}\n{}", p.procs.logs()));
}
