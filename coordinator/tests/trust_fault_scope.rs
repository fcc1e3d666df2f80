//! Issue 8, scope of harm of faults, from the plan and the command line:
//! a fault's window must end inside its run (item 6), and no network fault
//! may cut the agent's control channel (item 8). The agent-side items live
//! in `agent/tests/trust_fault_scope.rs`.

mod support;

use std::path::{Path, PathBuf};

use stampede_common::plan::load_file;

fn write_plan(dir: &Path, faults: &str) -> PathBuf {
    let text = format!(
        "name: trust\ntarget: http://127.0.0.1:0\nbuiltin_target: {{ latency: 1ms }}\nphases:\n  - {{ name: steady, duration: 10s, load: {{ model: open, rate: 10/s }} }}\nsteps:\n  - {{ name: get, request: {{ method: GET, path: / }} }}\nfaults:\n{faults}"
    );
    let path = dir.join("plan.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Item 6: a 100-day partition in a 10 s run was accepted and would have
/// been applied for its whole window. A window ending after the run's
/// planned end is refused at validation, with file, line and field.
#[test]
fn a_fault_window_longer_than_the_run_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let long = "  - name: forever\n    kind: partition\n    at: 2s\n    duration: 100d\n    scope: { dst: 198.18.0.2, port: 80 }\n";
    let err = load_file(&write_plan(dir.path(), long)).unwrap_err().to_string();
    assert!(err.contains("plan.yaml:12: faults[0].duration:"), "{err}");
    assert!(err.contains("after the run's planned end at 10s"), "{err}");
    // One second too long is refused as well; exactly to the end is fine.
    let over = "  - name: over\n    kind: partition\n    at: 2s\n    duration: 9s\n    scope: { dst: 198.18.0.2 }\n";
    assert!(load_file(&write_plan(dir.path(), over)).is_err());
    let fits = "  - name: fits\n    kind: partition\n    at: 2s\n    duration: 8s\n    scope: { dst: 198.18.0.2 }\n";
    load_file(&write_plan(dir.path(), fits)).unwrap();
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").unwrap_or_default().lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

fn has(tool: &str) -> bool {
    std::process::Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Signals a process group; `pgid` is one this test started, never 0 or 1.
fn signal_group(pgid: u32, sig: &str) {
    assert!(pgid > 1);
    let _ = std::process::Command::new("kill").args([sig, "--", &format!("-{pgid}")]).status();
}

/// Whether a TCP connection to `port` on loopback opens within 100 ms.
fn connects(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(100)).is_ok()
}

/// The one-letter state of a process (`T` when stopped).
fn state(pid: u32) -> char {
    support::process_state(pid).unwrap_or('?')
}

/// Undoes what the SIGSTOP test leaves if it fails midway: the stopped
/// `stampede`, the paused `sleep`, and the partition's table.
struct StopCleanup {
    pgid: Option<u32>,
    sleeper: std::process::Child,
    table: String,
}

impl Drop for StopCleanup {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            signal_group(pgid, "-CONT");
            signal_group(pgid, "-KILL");
        }
        let _ = self.sleeper.kill();
        let _ = self.sleeper.wait();
        let _ = std::process::Command::new("nft").args(["delete", "table", "inet", &self.table]).output();
    }
}

/// Item 6: with the whole agent SIGSTOPped during its faults, a partition
/// (nft) and a pause (a process driver fault) must still end at their
/// window's end. Before, the dead-man was a thread of the stopped process:
/// both lasted until the agent was continued (12.4 s past the window in the
/// issue). Now the partition's set element expires in the kernel and a
/// watchdog process in its own session reverts the pause.
#[test]
fn faults_end_on_time_while_the_agent_is_sigstopped() {
    use std::os::unix::process::CommandExt;
    use std::time::{Duration, Instant};
    if !is_root() || !has("nft") {
        eprintln!("skipped: needs root and nft");
        return;
    }
    const WINDOW: Duration = Duration::from_secs(2);
    // Counted from each fault's first observation; the polls take up to 100 ms.
    const ALLOWED: Duration = Duration::from_millis(1000);
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || for s in listener.incoming().flatten() { drop(s) });
    let sleeper = std::process::Command::new("sleep").arg("60").spawn().unwrap();
    let tag = std::process::id();
    let faults = format!(
        "  - {{ name: cut-{tag}, kind: partition, at: 1s, duration: 2s, scope: {{ dst: 127.0.0.1, port: {port} }} }}\n\
         \x20 - {{ name: freeze-{tag}, kind: pause, at: 1s, duration: 2s, instance: {{ driver: process, pid: {} }} }}\n",
        sleeper.id()
    );
    let plan = write_plan(dir.path(), &faults);
    let mut cleanup = StopCleanup { pgid: None, table: format!("stampede_cut_{tag}"), sleeper };
    let sleeper_pid = cleanup.sleeper.id();
    let mut run = std::process::Command::new(support::stampede())
        .args(["run", plan.to_str().unwrap(), "--local-agents", "1", "--state-dir", dir.path().join("state").to_str().unwrap()])
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    cleanup.pgid = Some(run.id());

    // Wait for both faults, then stop the whole stampede process group.
    let limit = Instant::now() + Duration::from_secs(15);
    let (mut cut, mut frozen) = (None, None);
    while (cut.is_none() || frozen.is_none()) && Instant::now() < limit {
        if frozen.is_none() && state(sleeper_pid) == 'T' {
            frozen = Some(Instant::now());
        }
        if cut.is_none() && !connects(port) {
            cut = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (cut, frozen) = (cut.expect("the partition was never applied"), frozen.expect("the pause was never applied"));
    signal_group(run.id(), "-STOP");

    let stopped_until = Instant::now() + Duration::from_secs(6);
    let (mut healed, mut thawed) = (None, None);
    while (healed.is_none() || thawed.is_none()) && Instant::now() < stopped_until {
        if thawed.is_none() && state(sleeper_pid) != 'T' {
            thawed = Some(Instant::now());
        }
        if healed.is_none() && connects(port) {
            healed = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    signal_group(run.id(), "-CONT");
    let past = |end: Option<Instant>, start: Instant| end.map(|e| e.saturating_duration_since(start + WINDOW));
    let (partition_past, pause_past) = (past(healed, cut), past(thawed, frozen));
    eprintln!("with the agent stopped: partition ended {partition_past:?} and pause {pause_past:?} after their windows");
    let waited = Instant::now() + Duration::from_secs(30);
    while run.try_wait().unwrap().is_none() && Instant::now() < waited {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(partition_past.is_some_and(|d| d < ALLOWED), "the partition outlived the stopped agent: {partition_past:?} past its window");
    assert!(pause_past.is_some_and(|d| d < ALLOWED), "the pause outlived the stopped agent: {pause_past:?} past its window");
}

/// A network namespace of this test's own, with only `lo` up, removed on drop.
struct Netns(String);

impl Netns {
    fn new(label: &str) -> Option<Netns> {
        let name = format!("stp-trust-{label}-{}", std::process::id());
        let ok = std::process::Command::new("ip").args(["netns", "add", &name]).status().is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
        let ns = Netns(name);
        std::process::Command::new("ip").args(["-n", &ns.0, "link", "set", "lo", "up"]).status().unwrap();
        Some(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Item 8: in `--local-agents` mode a port-less partition of 127.0.0.1/32
/// was accepted, and cut the agents' sessions to the coordinator on
/// loopback. Now the agent's check at assignment refuses it before any
/// load (exit 2, with the reason). Run inside a namespace of its own, so
/// even the old code's partition would have cut nobody else's loopback.
#[test]
fn a_partition_covering_the_control_channel_is_refused_before_any_load() {
    if !is_root() || !has("nft") {
        eprintln!("skipped: needs root and nft");
        return;
    }
    let Some(ns) = Netns::new("ctl") else {
        eprintln!("skipped: cannot make a network namespace");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let plan = write_plan(dir.path(), "  - { name: cut-control, kind: partition, at: 2s, duration: 3s, scope: { dst: 127.0.0.1 } }\n");
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", &ns.0]).arg(support::stampede());
    cmd.args(["run", plan.to_str().unwrap(), "--local-agents", "1", "--state-dir", dir.path().join("state").to_str().unwrap()]);
    cmd.current_dir(dir.path()).env("NO_COLOR", "1").stdin(std::process::Stdio::null());
    let out = support::fleet::run_bounded(cmd, std::time::Duration::from_secs(40));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stdout:\n{}\nstderr:\n{stderr}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr.contains("fault `cut-control`: its scope 127.0.0.1 (every port) covers 127.0.0.1:"), "{stderr}");
    assert!(stderr.contains("control channel"), "{stderr}");
}
