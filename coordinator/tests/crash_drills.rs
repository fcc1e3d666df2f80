//! Crash drills: a real partition applied by a real `stampede-agent`
//! process, and every way the agent can lose it — SIGKILL (the journal
//! reverts it at the next start), a dead coordinator (the agent reverts it
//! when its lease runs out), SIGTERM (reverted before the process exits), and SIGTERM
//! in the middle of a slow apply (finished, then reverted, then exit). The
//! dead-man thread is drilled in `agent/tests/dead_man.rs`.
//!
//! The partition drills are root only (nftables): each prints why it skips
//! otherwise; the slow-apply drill uses a `docker` shim and runs anywhere. The load
//! goes to a built-in target on 127.0.0.1, on a port below the ephemeral
//! range picked from this process's pid, and the partition is scoped to
//! exactly that port (`127.0.0.1/32` + port): the coordinator's gRPC, other
//! tests and the rest of loopback are never cut. The fault's name carries
//! the pid, so its table `inet stampede_crash_<slot>_<pid>` is this test's
//! alone; a guard deletes it whatever happens, after every child is killed.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use stampede_agent::fault::journal::Journal;
use support::nft::{skip_reason, TableGuard};
use support::{accepts, agent_bin, stampede, wait_until, Background, Procs};

const PLAN: &str = include_str!("plans/crash-partition.yaml");
/// The agents' lease: shorter than the default 10 s so that a lease-driven
/// revert lands well inside the plan's 10 s partition window.
const LEASE: Duration = Duration::from_secs(3);
const SLOW_STOP_PLAN: &str = include_str!("plans/crash-slow-stop.yaml");

/// Plain-text gRPC on loopback, as `support` uses it (`mtls.rs` tests TLS).
fn insecure() -> &'static [&'static str] {
    &["--insecure"]
}

fn spawn_agent(procs: &mut Procs, id: &str, url: &str, state: &Path) {
    spawn_agent_with_path(procs, id, url, state, None);
}

/// An agent whose PATH starts with `shims`, if given.
fn spawn_agent_with_path(procs: &mut Procs, id: &str, url: &str, state: &Path, shims: Option<&Path>) {
    let mut cmd = Command::new(agent_bin());
    cmd.args(["--coordinator", url, "--id", id, "--workers", "1", "--lease", &format!("{}s", LEASE.as_secs()), "--state-dir"])
        .arg(state)
        .args(insecure())
        .env("RUST_LOG", "info");
    if let Some(dir) = shims {
        cmd.env("PATH", format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default()));
    }
    procs.spawn(id, cmd);
}

/// Starts `stampede target` on a port in 20000–31999 (below the ephemeral
/// range, so no client socket of anyone uses it as a source port) derived
/// from the pid and `slot`; returns the port.
fn start_target(procs: &mut Procs, slot: u32) -> u16 {
    for attempt in 0..8u32 {
        let port = 20_000 + (std::process::id() * 3 + slot + attempt * 3001) % 12_000;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        if accepts(addr) {
            continue; // someone else's
        }
        let name = format!("target-{attempt}");
        let mut cmd = Command::new(stampede());
        cmd.args(["target", "--listen", &addr.to_string()]);
        procs.spawn(&name, cmd);
        let up = wait_until(Duration::from_secs(10), || !procs.alive(&name) || accepts(addr));
        std::thread::sleep(Duration::from_millis(100));
        if up && procs.alive(&name) {
            return port as u16;
        }
    }
    panic!("no target could start on a port of ours:\n{}", procs.logs());
}

/// One drill in progress: coordinator, target, agent `agent-a` and a run
/// whose partition is applied. Fields drop in order: the run, then every
/// child, then the table.
struct Drill {
    run: Background,
    procs: Procs,
    url: String,
    state: PathBuf,
    fault: String,
    table: TableGuard,
    /// When the partition's table was first seen.
    applied: Instant,
}

impl Drill {
    /// Sets everything up and returns once the partition is applied; None
    /// (with the reason printed) where the drill cannot run.
    fn start(slot: u32) -> Option<Drill> {
        if let Some(why) = skip_reason() {
            eprintln!("skipped: {why}");
            return None;
        }
        let fault = format!("crash-{slot}-{}", std::process::id());
        let table = TableGuard(format!("stampede_{}", fault.replace('-', "_")));
        let mut procs = Procs::new();
        let url = procs.coordinator("coordinator");
        let tport = start_target(&mut procs, slot);
        let state = procs.dir.path().join("state");
        spawn_agent(&mut procs, "agent-a", &url, &state);
        procs.wait_for_agents(&url, &["agent-a"], Duration::from_secs(10));

        let plan = procs.dir.path().join("crash-partition.yaml");
        std::fs::write(&plan, PLAN.replace("@TPORT@", &tport.to_string()).replace("@FAULT@", &fault)).unwrap();
        let mut cmd = Command::new(stampede());
        cmd.arg("run").arg(&plan).args(["--coordinator", &url, "--expect-agents", "1", "--wait", "20s"]).args(insecure());
        cmd.arg("--out").arg(procs.dir.path().join("out"));
        let run = Background::start(cmd, procs.dir.path(), "run");

        // The window opens 1 s (start lead) + 2 s after submission.
        let mut d = Drill { run, procs, url, state, fault, table, applied: Instant::now() };
        let seen = wait_until(Duration::from_secs(10), || d.table_exists());
        assert!(seen, "the partition's table {} never appeared:\n{}\n{}", d.table.0, d.run.stderr_text(), d.procs.logs());
        d.applied = Instant::now();
        Some(d)
    }

    fn table_exists(&self) -> bool {
        self.table.exists()
    }

    /// How long until the table is gone, polling every 20 ms; None if it
    /// is still there after `limit`.
    fn wait_gone(&self, limit: Duration) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if !self.table_exists() {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn pending(&self) -> usize {
        Journal::open(&self.state).unwrap().pending().unwrap().len()
    }

    fn kill9(&mut self, name: &str) {
        let p = self.procs.get(name);
        p.child.kill().unwrap();
        p.child.wait().unwrap();
    }
}

#[test]
fn sigkill_leaves_the_partition_and_the_next_agent_start_reverts_and_reports_it() {
    let Some(mut d) = Drill::start(0) else { return };
    assert_eq!(d.pending(), 1, "the applied partition is journaled");
    d.kill9("agent-a");
    // Nothing in a dead agent reverts: the table (and the journal entry) stay.
    std::thread::sleep(Duration::from_secs(1));
    assert!(d.table_exists(), "the table vanished although its agent is dead:\n{}", d.procs.logs());
    assert_eq!(d.pending(), 1);

    // A new agent on the same state dir reverts it at start-up, from the journal.
    let (url, state) = (d.url.clone(), d.state.clone());
    spawn_agent(&mut d.procs, "agent-b", &url, &state);
    let took = d.wait_gone(Duration::from_secs(5)).unwrap_or_else(|| panic!("the restarted agent did not revert the partition within 5 s:\n{}", d.procs.logs()));
    println!("start-up recovery removed the partition {took:?} after the new agent started");
    let said = format!("reverted fault {} (partition)", d.fault);
    assert!(wait_until(Duration::from_secs(3), || d.procs.log("agent-b").contains(&said)), "agent-b's log does not say `{said}`:\n{}", d.procs.log("agent-b"));
    assert_eq!(d.pending(), 0, "the revert is journaled");
    assert!(d.procs.alive("agent-b"), "{}", d.procs.logs());

    // Issue 8 item 7: the run's report said the partition was still
    // `applied`. agent-b tells the coordinator what it reverted when it
    // registers; the report says so, with the time.
    let (code, _, stderr) = d.run.finish(Duration::from_secs(30));
    assert_eq!(code, 3, "the run lost its only agent: incomplete\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.procs.dir.path().join("out/report.json")).unwrap()).unwrap();
    let f = &report["faults"][0];
    assert_eq!((f["name"].as_str(), f["agent"].as_str(), f["status"].as_str()), (Some(d.fault.as_str()), Some("agent-a"), Some("reverted_at_startup")), "{:#}", report["faults"]);
    let at = humantime::parse_rfc3339(f["reverted_at"].as_str().unwrap_or_else(|| panic!("no reverted_at: {f:#}"))).unwrap();
    // applied_at is there only if agent-a's `applied` event got out before
    // the SIGKILL (on a busy machine it may not have).
    if let Some(applied) = f["applied_at"].as_str() {
        assert!(at > humantime::parse_rfc3339(applied).unwrap(), "{f:#}");
    }
}

#[test]
fn a_dead_coordinator_makes_the_agent_revert() {
    let Some(mut d) = Drill::start(1) else { return };
    d.kill9("coordinator");
    // The agent keeps its run for the lease (a coordinator may come back),
    // then stops the load and reverts: within lease + 5 s.
    let bound = LEASE + Duration::from_secs(5);
    let took = d.wait_gone(bound).unwrap_or_else(|| panic!("the partition outlived its coordinator by {bound:?}:\n{}", d.procs.logs()));
    println!("the agent reverted the partition {took:?} after its coordinator was killed (lease {LEASE:?})");
    // Its last word from the coordinator came at most a heartbeat (1 s) before the kill.
    assert!(took >= LEASE - Duration::from_secs(1), "reverted {took:?} after the kill: before the lease ({LEASE:?}) ran out");
    assert!(d.procs.log("agent-a").contains("No coordinator for longer than the lease"), "{}", d.procs.log("agent-a"));
    assert!(d.procs.alive("agent-a"), "the agent should outlive its coordinator (and reconnect):\n{}", d.procs.logs());
    assert!(wait_until(Duration::from_secs(2), || d.pending() == 0), "the revert is not journaled");
    assert!(d.applied.elapsed() < Duration::from_secs(10), "reverted only around the window's planned end: not by the session loss");
}

#[test]
fn sigterm_reverts_before_the_agent_exits() {
    let Some(mut d) = Drill::start(2) else { return };
    let signalled = Instant::now();
    d.procs.sigterm("agent-a");
    let status = d.procs.wait_exit("agent-a", Duration::from_secs(10)).unwrap_or_else(|| panic!("still running 10 s after SIGTERM:\n{}", d.procs.logs()));
    let exited = signalled.elapsed();
    // Right after the exit: the table must be gone already.
    let left = d.table_exists();
    assert!(!left, "the agent exited ({status}) {exited:?} after SIGTERM with its partition still applied:\n{}", d.procs.log("agent-a"));
    assert_eq!(status.code(), Some(0), "{}", d.procs.log("agent-a"));
    assert_eq!(d.pending(), 0, "the revert is journaled");
    println!("SIGTERM: the agent reverted and exited {exited:?} after the signal");
}

/// SIGTERM while a fault is still being applied (a `docker stop` that takes
/// 6 s, through a recording shim: no daemon, no root needed): the agent must
/// finish the apply, run the revert (`docker start`) and only then exit.
#[test]
fn sigterm_during_a_slow_apply_still_reverts_before_exit() {
    let mut procs = Procs::new();
    let shims = procs.dir.path().join("bin");
    std::fs::create_dir_all(&shims).unwrap();
    let log = procs.dir.path().join("docker.log");
    let shim = format!("#!/bin/sh\necho \"docker $*\" >> '{}'\nif [ \"$1\" = stop ]; then sleep 6; echo stopped >> '{}'; fi\n", log.display(), log.display());
    std::fs::write(shims.join("docker"), shim).unwrap();
    std::fs::set_permissions(shims.join("docker"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let calls = || std::fs::read_to_string(&log).unwrap_or_default();

    let url = procs.coordinator("coordinator");
    let tport = start_target(&mut procs, 3);
    let state = procs.dir.path().join("state");
    spawn_agent_with_path(&mut procs, "agent-a", &url, &state, Some(&shims));
    procs.wait_for_agents(&url, &["agent-a"], Duration::from_secs(10));
    let name = format!("crash-db-{}", std::process::id());
    let plan = procs.dir.path().join("crash-slow-stop.yaml");
    std::fs::write(&plan, SLOW_STOP_PLAN.replace("@TPORT@", &tport.to_string()).replace("@NAME@", &name)).unwrap();
    let mut cmd = Command::new(stampede());
    cmd.arg("run").arg(&plan).args(["--coordinator", &url, "--expect-agents", "1", "--wait", "20s"]).args(insecure());
    let run = Background::start(cmd, procs.dir.path(), "run");

    let stopping = wait_until(Duration::from_secs(10), || calls().contains(&format!("docker stop {name}")));
    assert!(stopping, "the stop fault never started:\n{}\n{}", run.stderr_text(), procs.logs());
    let signalled = Instant::now();
    procs.sigterm("agent-a");
    let status = procs.wait_exit("agent-a", Duration::from_secs(20)).unwrap_or_else(|| panic!("still running 20 s after SIGTERM:\n{}", procs.logs()));
    let exited = signalled.elapsed();
    let seen = calls();
    assert!(seen.contains("stopped"), "the agent exited before its apply finished: {seen}");
    assert!(
        seen.contains(&format!("docker start {name}")),
        "the agent exited ({status}) {exited:?} after SIGTERM without reverting the stop; docker saw:\n{seen}\n{}",
        procs.log("agent-a")
    );
    assert_eq!(status.code(), Some(0), "{}", procs.log("agent-a"));
    assert_eq!(Journal::open(&state).unwrap().pending().unwrap().len(), 0, "the revert is journaled");
    println!("SIGTERM mid-apply: the apply finished, the revert ran, and the agent exited {exited:?} after the signal");
}
