//! Issue 8, "trust under interruption": signals, in-flight requests and the
//! remote dry run, through the real binaries as separate processes.
//!
//! A signal must do what Ctrl-C does (item 4): stop the load, revert every
//! fault, write or store an `incomplete` report whose reason says
//! `interrupted`, exit 3. An interrupted run counts what was in flight as
//! `aborted` and no SLO may `pass` on it (item 5). A dry run submitted to a
//! standing coordinator touches nothing (item 1).
//!
//! The fault drills are root only (nftables) and print why they skip
//! otherwise. Load goes to 127.0.0.1 only, to a target on a port of this
//! test's own; each partition is scoped to exactly that port and its table
//! `inet stampede_sig_<slot>_<pid>` is this test's alone; a guard deletes it
//! whatever happens, after every child is killed.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::nft::{nft_tables, skip_reason, TableGuard};
use support::{accepts, agent_bin, stampede, wait_until, Background, Procs};

const PLAN: &str = include_str!("plans/crash-partition.yaml");

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().expect("kill(1) runs");
    assert!(status.success(), "kill -{sig} {pid} failed");
}

/// Starts `stampede target` on a port in 32000–39999 (below the ephemeral
/// range; crash_drills.rs uses 20000–31999) derived from the pid and `slot`.
fn start_target(procs: &mut Procs, slot: u32, extra: &[&str]) -> u16 {
    for attempt in 0..8u32 {
        let port = 32_000 + (std::process::id() * 7 + slot + attempt * 1009) % 8_000;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        if accepts(addr) {
            continue;
        }
        let name = format!("target-{attempt}");
        let mut cmd = Command::new(stampede());
        cmd.args(["target", "--listen", &addr.to_string()]).args(extra);
        procs.spawn(&name, cmd);
        let up = wait_until(Duration::from_secs(10), || !procs.alive(&name) || accepts(addr));
        std::thread::sleep(Duration::from_millis(100));
        if up && procs.alive(&name) {
            return port as u16;
        }
    }
    panic!("no target could start on a port of ours:\n{}", procs.logs());
}

/// The partition plan against `tport`, with a fault named after `slot` and the pid.
fn partition_plan(procs: &Procs, slot: u32, tport: u16) -> (PathBuf, TableGuard) {
    let fault = format!("sig-{slot}-{}", std::process::id());
    let table = TableGuard(format!("stampede_{}", fault.replace('-', "_")));
    let plan = procs.dir.path().join(format!("partition-{slot}.yaml"));
    std::fs::write(&plan, PLAN.replace("@TPORT@", &tport.to_string()).replace("@FAULT@", &fault)).unwrap();
    (plan, table)
}

fn spawn_agent(procs: &mut Procs, id: &str, url: &str, state: &Path) {
    let mut cmd = Command::new(agent_bin());
    cmd.args(["--coordinator", url, "--id", id, "--workers", "1", "--lease", "3s", "--insecure", "--state-dir"]).arg(state).env("RUST_LOG", "info");
    procs.spawn(id, cmd);
}

fn report(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("report.json")).unwrap_or_else(|e| panic!("report.json in {}: {e}", dir.display()));
    serde_json::from_str(&text).unwrap()
}

fn assert_interrupted(r: &Value) {
    assert_eq!(r["verdict"], "incomplete", "{r:#}");
    let reasons = r["verdict_reasons"].as_array().unwrap();
    assert!(reasons.iter().any(|x| x.as_str().unwrap().starts_with("interrupted")), "no `interrupted` reason: {reasons:#?}");
    for slo in r["slos"].as_array().unwrap() {
        assert_ne!(slo["status"], "pass", "an SLO passed on a run known to be partial: {slo:#}");
    }
}

/// `stampede run --local-agents 1` with a partition, interrupted by `sig`
/// once the partition is applied. Exit 3, the table gone by then, an
/// interrupted report written, the fault reported reverted.
fn local_run_interrupted_by(sig: &str, slot: u32, twice: bool) {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut procs = Procs::new();
    let tport = start_target(&mut procs, slot, &[]);
    let (plan, table) = partition_plan(&procs, slot, tport);
    let out = procs.dir.path().join("out");
    let mut cmd = Command::new(stampede());
    cmd.arg("run").arg(&plan).args(["--local-agents", "1", "--state-dir"]).arg(procs.dir.path().join("state")).arg("--out").arg(&out);
    let mut run = Background::start(cmd, procs.dir.path(), "run");
    assert!(wait_until(Duration::from_secs(10), || table.exists()), "the partition never appeared:\n{}", run.stderr_text());
    signal(run.child.id(), sig);
    if twice {
        std::thread::sleep(Duration::from_millis(100));
        signal(run.child.id(), sig);
    }
    let (code, stdout, stderr) = run.finish(Duration::from_secs(20));
    assert!(!table.exists(), "`stampede run` exited after SIG{sig} with its partition still applied:\n{stderr}");
    assert_eq!(code, 3, "exit code after SIG{sig}:\n{stdout}\n{stderr}");
    if twice {
        return;
    }
    let r = report(&out);
    assert_interrupted(&r);
    let f = &r["faults"][0];
    assert_eq!(f["status"], "reverted", "{f:#}");
}

// Issue 8 item 4: a SIGTERM'd `stampede run --local-agents` left `table inet
// stampede_lossy` in place and wrote no report.
#[test]
fn sigterm_on_a_local_run_reverts_faults_and_writes_an_interrupted_report() {
    local_run_interrupted_by("TERM", 0, false);
}

// Issue 8 item 4: SIGHUP (a closed terminal, an ssh session gone) is a stop too.
#[test]
fn sighup_on_a_local_run_reverts_faults_and_writes_an_interrupted_report() {
    local_run_interrupted_by("HUP", 1, false);
}

// Issue 8 item 4: Ctrl-C itself does all of it.
#[test]
fn sigint_on_a_local_run_reverts_faults_and_writes_an_interrupted_report() {
    local_run_interrupted_by("INT", 2, false);
}

// Issue 8 item 4: a second signal during the graceful stop is a hard stop
// (k6's second Ctrl-C), yet faults are still reverted before the exit.
#[test]
fn a_second_signal_still_reverts_faults_before_exit() {
    local_run_interrupted_by("TERM", 3, true);
}

// Issue 8 item 4: a SIGTERM'd standing coordinator lost the run and its
// client blamed certificates. Now: the run is aborted, the agent reverts,
// the run is stored incomplete/interrupted, the client gets the reports and
// is told the coordinator shut down.
#[test]
fn sigterm_on_a_standing_coordinator_aborts_reverts_and_stores_the_run() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut procs = Procs::new();
    let url = procs.coordinator("coordinator");
    let tport = start_target(&mut procs, 4, &[]);
    let state = procs.dir.path().join("state");
    spawn_agent(&mut procs, "agent-a", &url, &state);
    procs.wait_for_agents(&url, &["agent-a"], Duration::from_secs(10));
    let (plan, table) = partition_plan(&procs, 4, tport);
    let out = procs.dir.path().join("out");
    let mut cmd = Command::new(stampede());
    cmd.arg("run").arg(&plan).args(["--coordinator", &url, "--insecure", "--expect-agents", "1", "--out"]).arg(&out);
    let mut run = Background::start(cmd, procs.dir.path(), "run");
    assert!(wait_until(Duration::from_secs(10), || table.exists()), "the partition never appeared:\n{}\n{}", run.stderr_text(), procs.logs());

    procs.sigterm("coordinator");
    let status = procs.wait_exit("coordinator", Duration::from_secs(20)).unwrap_or_else(|| panic!("coordinator still running 20 s after SIGTERM:\n{}", procs.logs()));
    assert!(!table.exists(), "the coordinator exited with the agent's partition still applied:\n{}", procs.logs());
    assert_eq!(status.code(), Some(3), "a coordinator that interrupted a run exits 3:\n{}", procs.log("coordinator"));

    let (code, stdout, stderr) = run.finish(Duration::from_secs(10));
    assert_eq!(code, 3, "{stdout}\n{stderr}");
    assert!(!stderr.contains("https:// URL with --ca"), "the client blamed certificates:\n{stderr}");
    assert!(stderr.contains("coordinator is shutting down"), "the client was not told the coordinator shut down:\n{stderr}");
    let r = report(&out);
    assert_interrupted(&r);
    assert_eq!(r["faults"][0]["status"], "reverted", "{:#}", r["faults"]);

    let runs: Vec<PathBuf> = std::fs::read_dir(procs.data_dir("coordinator").join("runs")).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_interrupted(&report(&runs[0]));
    assert!(procs.alive("agent-a"), "the agent outlives its coordinator:\n{}", procs.logs());
}

// Issue 8 item 4: a client whose coordinator goes away mid-run says so,
// not that certificates may be wrong.
#[test]
fn a_client_whose_coordinator_dies_says_it_went_away() {
    let mut procs = Procs::new();
    let url = procs.coordinator("coordinator");
    let tport = start_target(&mut procs, 5, &[]);
    procs.agent("agent-a", &url, "");
    procs.wait_for_agents(&url, &["agent-a"], Duration::from_secs(10));
    let plan = procs.dir.path().join("steady.yaml");
    let text = format!(
        "name: steady\ntarget: http://127.0.0.1:{tport}\nphases:\n  - {{ name: steady, duration: 10s, load: {{ model: open, rate: 20/s }} }}\nsteps:\n  - {{ name: get, request: {{ path: / }} }}\n"
    );
    std::fs::write(&plan, text).unwrap();
    let mut cmd = Command::new(stampede());
    cmd.arg("run").arg(&plan).args(["--coordinator", &url, "--insecure", "--expect-agents", "1"]);
    let mut run = Background::start(cmd, procs.dir.path(), "run");
    assert!(wait_until(Duration::from_secs(10), || run.stderr_text().contains("agent(s)")), "{}", run.stderr_text());
    let p = procs.get("coordinator");
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    let (code, _, stderr) = run.finish(Duration::from_secs(10));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("went away"), "{stderr}");
    assert!(!stderr.contains("https:// URL with --ca"), "the client blamed certificates:\n{stderr}");
}

// Issue 8 item 1: `stampede run --coordinator URL --dry-run` ran the plan
// for real (load and faults): SubmitRunRequest had no dry-run field. Now
// the remote dry run touches nothing — no request reaches the target, no
// table appears — and prints the same listing as the local dry run.
#[test]
fn a_remote_dry_run_touches_nothing_and_prints_the_commands() {
    let mut procs = Procs::new();
    let url = procs.coordinator("coordinator");
    let arrivals = procs.dir.path().join("arrivals.log");
    let tport = start_target(&mut procs, 6, &["--arrivals", arrivals.to_str().unwrap()]);
    procs.agent("local-0", &url, "");
    procs.wait_for_agents(&url, &["local-0"], Duration::from_secs(10));
    let (plan, table) = partition_plan(&procs, 6, tport);
    let tables_before = nft_tables().unwrap_or_default();

    let plan_s = plan.to_str().unwrap();
    let remote = support::stampede_output(&["run", plan_s, "--coordinator", &url, "--insecure", "--dry-run", "--expect-agents", "1"], Duration::from_secs(30));
    let state = procs.dir.path().join("state");
    let local = support::stampede_output(&["run", plan_s, "--dry-run", "--local-agents", "1", "--state-dir", state.to_str().unwrap()], Duration::from_secs(30));
    let (rs, ls) = (String::from_utf8_lossy(&remote.stdout), String::from_utf8_lossy(&local.stdout));
    let rerr = String::from_utf8_lossy(&remote.stderr);
    assert_eq!(remote.status.code(), Some(0), "{rs}\n{rerr}");
    assert_eq!(rs, ls, "the remote dry run's listing differs from the local one\n{rerr}");
    assert!(rs.contains("nft delete table inet"), "{rs}");
    std::thread::sleep(Duration::from_millis(300));
    let hits = std::fs::read_to_string(&arrivals).unwrap_or_default();
    assert!(hits.trim().is_empty(), "the dry run sent requests to the target:\n{hits}\n{rerr}");
    assert!(!table.exists(), "the dry run applied the partition");
    assert_eq!(nft_tables().unwrap_or_default(), tables_before, "the dry run changed nft tables");
    assert!(!rerr.lines().any(|l| l.starts_with('[')), "a dry run generates no load:\n{rerr}");
}

/// An HTTP target that answers `GET /fast` at once and never answers
/// anything else; stops (closing every connection) when the flag is set.
fn half_silent_target(stop: Arc<AtomicBool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((conn, _)) => {
                    let stop = stop.clone();
                    std::thread::spawn(move || serve(conn, &stop));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    addr
}

fn serve(mut conn: TcpStream, stop: &AtomicBool) {
    conn.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match conn.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(_) => return,
        }
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            if head.starts_with("GET /fast ") {
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            } else {
                // Never answer: hold the connection until the test ends.
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                return;
            }
        }
    }
}

// Issue 8 item 5: after Ctrl-C the report said 247 due, 100 counted, 0
// errors, and the error-rate SLO `pass`. Every arrival that came due is
// counted; those in flight at the abort fail as `aborted`; no SLO passes.
#[test]
fn an_interrupted_run_counts_in_flight_requests_as_aborted() {
    let stop = Arc::new(AtomicBool::new(false));
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop = StopOnDrop(stop.clone());
    let addr = half_silent_target(stop);
    let procs = Procs::new();
    let plan = procs.dir.path().join("half-silent.yaml");
    let text = format!(
        "name: half-silent\ntarget: http://{addr}\ntimeout: 30s\n\
         phases:\n  - {{ name: steady, duration: 20s, load: {{ model: open, rate: 40/s }} }}\n\
         steps:\n  - {{ name: fast, weight: 1, request: {{ path: /fast }} }}\n  - {{ name: silent, weight: 1, request: {{ path: /silent }} }}\n\
         slos:\n  - {{ metric: error_rate, scope: run, pass: \"< 90%\" }}\n  - {{ metric: p99, scope: \"step:fast\", pass: \"< 5s\" }}\n"
    );
    std::fs::write(&plan, text).unwrap();
    let out = procs.dir.path().join("out");
    let mut cmd = Command::new(stampede());
    cmd.arg("run").arg(&plan).args(["--local-agents", "1", "--workers", "1", "--out"]).arg(&out);
    let mut run = Background::start(cmd, procs.dir.path(), "run");
    let started = Instant::now();
    assert!(wait_until(Duration::from_secs(10), || run.stderr_text().contains("req/s")), "{}", run.stderr_text());
    std::thread::sleep(Duration::from_secs(2).saturating_sub(started.elapsed().min(Duration::from_secs(1))));
    signal(run.child.id(), "INT");
    let (code, stdout, stderr) = run.finish(Duration::from_secs(15));
    assert_eq!(code, 3, "{stdout}\n{stderr}");
    let r = report(&out);
    let phase = &r["phases"][0];
    let due = phase["schedule"]["scheduled"].as_u64().unwrap();
    let counted = phase["requests"].as_u64().unwrap();
    assert!(due > 40, "{phase:#}");
    assert_eq!(due, counted, "arrivals that came due but were not counted: {phase:#}");
    let aborted = r["totals"]["errors_by_kind"]["aborted"].as_u64().unwrap_or(0);
    let silent = r["steps"][1]["requests"].as_u64().unwrap();
    assert_eq!(aborted, silent, "every request to the silent step was in flight at the abort: {:#}", r["totals"]);
    assert!(aborted > 0 && r["totals"]["errors"].as_u64().unwrap() >= aborted, "{:#}", r["totals"]);
    assert_interrupted(&r);
}

// Issue 8 item 1: every flag of `stampede run` is, with --coordinator, sent
// and honoured, applied locally, or refused. --workers and --state-dir only
// shape in-process agents: they were silently dropped; now refused before
// anything is dialed.
#[test]
fn a_remote_run_refuses_flags_only_local_agents_honour() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("p.yaml");
    std::fs::write(&plan, "name: p\ntarget: http://127.0.0.1:9\nphases:\n  - { name: p, duration: 1s, load: { model: open, rate: 1/s } }\nsteps:\n  - { name: s, request: { path: / } }\n").unwrap();
    for flag in [["--workers", "2"], ["--state-dir", "/tmp"]] {
        let args = ["run", plan.to_str().unwrap(), "--coordinator", "http://127.0.0.1:9", "--insecure", flag[0], flag[1]];
        let out = support::stampede_output(&args, Duration::from_secs(10));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("apply to in-process agents only"), "{flag:?} was not refused:\n{stderr}");
    }
}
