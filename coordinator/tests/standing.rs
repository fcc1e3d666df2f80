//! A standing fleet through the real binaries, as separate processes: a
//! `stampede coordinator`, two `stampede-agent`s dialing it, a `stampede
//! target`, and `stampede agents` / `stampede run --coordinator` as a CI job
//! would call them. Every process is killed when the test ends, passed or
//! failed (`support::Procs`); traffic goes to 127.0.0.1 only.
//!
//! The agent binary belongs to another package, so `CARGO_BIN_EXE_` cannot
//! name it: `support::agent_bin` finds it next to `stampede` and, when it is
//! missing or stale (`cargo test -p stampede-coordinator`), builds it once
//! with `cargo build -p stampede-agent` in the same profile and target dir.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::{stampede, Background, Procs};

/// Coordinator, agents a1 (zone=a) and a2 (zone=b), and a target.
struct Fleet {
    procs: Procs,
    url: String,
    target: std::net::SocketAddr,
}

fn fleet() -> Fleet {
    let mut procs = Procs::new();
    let url = procs.coordinator("coordinator");
    let target = procs.target("target", &["--latency", "1ms"]);
    procs.agent("a1", &url, "zone=a");
    procs.agent("a2", &url, "zone=b");
    procs.wait_for_agents(&url, &["a1", "a2"], Duration::from_secs(10));
    Fleet { procs, url, target }
}

impl Fleet {
    /// Writes a plan (open model, 100/s for `secs` seconds) against the target.
    fn plan(&self, name: &str, secs: u32) -> std::path::PathBuf {
        let path = self.procs.dir.path().join(name);
        let text = format!(
            "name: standing\n\
             target: http://{}\n\
             phases:\n  - {{ name: steady, duration: {secs}s, load: {{ model: open, rate: 100/s }} }}\n\
             steps:\n  - {{ name: get, request: {{ method: GET, path: /items/1 }} }}\n\
             slos:\n  - {{ metric: error_rate, scope: run, pass: \"< 1%\" }}\n",
            self.target
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `stampede run PLAN --coordinator URL ...` in the background.
    fn submit(&self, name: &str, plan: &std::path::Path, extra: &[&str]) -> Background {
        let mut cmd = Command::new(stampede());
        cmd.arg("run").arg(plan).args(["--coordinator", &self.url, "--insecure"]).args(extra);
        Background::start(cmd, self.procs.dir.path(), name)
    }
}

fn report(dir: &std::path::Path) -> Value {
    let text = std::fs::read_to_string(dir.join("report.json")).unwrap_or_else(|e| panic!("report.json in {}: {e}", dir.display()));
    serde_json::from_str(&text).unwrap()
}

/// Fleet-wide totals are the sum of the agents' counts, every agent delivered
/// everything, and the load is the plan's — not two runs' worth.
fn assert_one_clean_run(r: &Value, planned: f64) {
    let agents = r["agents"].as_array().unwrap();
    let mut ids: Vec<&str> = agents.iter().map(|a| a["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["a1", "a2"], "{r:#}");
    for a in agents {
        assert_eq!(a["complete"], true, "{a:#}");
        assert!(a["requests"].as_u64().unwrap() > 0, "{a:#}");
    }
    let sum: u64 = agents.iter().map(|a| a["requests"].as_u64().unwrap()).sum();
    let total = r["totals"]["requests"].as_u64().unwrap();
    assert_eq!(sum, total);
    assert!((total as f64 - planned).abs() <= planned * 0.02, "{total} requests, planned {planned}");
}

#[test]
fn agents_lists_every_agent_with_its_labels() {
    let f = fleet();
    let table = support::list_agents(&f.url).expect("stampede agents succeeds");
    let row = |id: &str| table.lines().find(|l| l.split_whitespace().next() == Some(id)).unwrap_or_else(|| panic!("no row for {id}:\n{table}")).to_string();
    assert!(row("a1").contains("zone=a"), "{table}");
    assert!(row("a2").contains("zone=b"), "{table}");
    let head: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(head, ["AGENT", "LABELS", "CAPACITY", "CLOCK", "OFFSET", "LAST", "SEEN", "STATE", "AVAILABLE", "MISSING"], "{table}");
    for id in ["a1", "a2"] {
        // id, labels, capacity, clock offset, last seen, state, available, missing.
        let row = row(id);
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols.len(), 8, "{row}");
        assert!(cols[2].parse::<u32>().is_ok_and(|c| c > 0), "capacity: {row}");
        assert!(cols[3].strip_suffix("ms").is_some_and(|v| v.parse::<f64>().is_ok()), "clock offset: {row}");
        let seen: f64 = cols[4].strip_suffix('s').and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("last seen: {row}"));
        assert!((0.0..30.0).contains(&seen), "last seen {seen} s ago: {row}");
        assert_eq!(cols[5], "idle", "{row}");
        // Every probed capability is in one list or the other; the probe
        // always reports `net_admin` and `tc`, whatever this host has.
        let listed: Vec<&str> = cols[6].split(',').chain(cols[7].split(',')).collect();
        for cap in ["net_admin", "tc"] {
            assert!(listed.contains(&cap), "{cap} missing from {row}");
        }
    }
}

#[test]
fn a_submitted_run_streams_progress_and_downloads_every_report() {
    let f = fleet();
    let plan = f.plan("steady.yaml", 2);
    let out = f.procs.dir.path().join("out");
    let (code, stdout, stderr) =
        f.submit("run", &plan, &["--expect-agents", "2", "--wait", "20s", "--out", out.to_str().unwrap()]).finish(Duration::from_secs(25));
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}\n{}", f.procs.logs());
    // Progress: which agents run it, then one line per interval.
    assert!(stderr.contains("2 agent(s): a1, a2"), "{stderr}");
    assert!(stderr.lines().filter(|l| l.starts_with('[') && l.contains("req/s")).count() >= 2, "no progress lines:\n{stderr}");
    assert!(stdout.contains("reports written to"), "{stdout}");
    for file in ["report.json", "report.md", "report.html", "junit.xml", "steady.yaml"] {
        assert!(out.join(file).exists(), "{file} missing from --out");
    }
    assert_eq!(std::fs::read_to_string(out.join("steady.yaml")).unwrap(), std::fs::read_to_string(&plan).unwrap());
    let r = report(&out);
    assert_eq!(r["verdict"], "pass", "{r:#}");
    assert_one_clean_run(&r, 200.0);
    for a in r["agents"].as_array().unwrap() {
        let zone = if a["id"] == "a1" { "a" } else { "b" };
        assert_eq!(a["labels"]["zone"], zone);
    }
    assert!(std::fs::read_to_string(out.join("junit.xml")).unwrap().contains("<testsuite"));

    // The coordinator kept the run too: DIR/runs/<UTC start>-<run id>/ with
    // every file, and the last progress line says where.
    let runs = f.procs.data_dir("coordinator").join("runs");
    let stored: Vec<_> = std::fs::read_dir(&runs).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(stored.len(), 1, "{stored:?}");
    let dir = &stored[0];
    let name = dir.file_name().unwrap().to_str().unwrap();
    let run_id = r["run_id"].as_str().unwrap();
    assert!(name.ends_with(&format!("-{run_id}")) && name.as_bytes()[8] == b'T' && name.as_bytes()[15] == b'Z', "{name}");
    for file in ["report.json", "report.md", "report.html", "junit.xml", "steady.yaml"] {
        assert!(dir.join(file).is_file(), "{file} missing from {}", dir.display());
    }
    assert_eq!(report(dir), r, "the stored report.json is the one the client got");
    assert_eq!(std::fs::read_to_string(dir.join("steady.yaml")).unwrap(), std::fs::read_to_string(&plan).unwrap());
    let last = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap();
    assert_eq!(last, format!("run {run_id}: stored in {}", dir.display()), "{stderr}");
    assert!(f.procs.log("coordinator").contains("Run stored."), "{}", f.procs.log("coordinator"));
}

#[test]
fn a_run_that_cannot_be_stored_still_reaches_the_client() {
    let f = fleet();
    // The store's `runs` folder turns into a file: the coordinator started
    // fine, and now cannot write the run (as root, permissions would not stop it).
    let runs = f.procs.data_dir("coordinator").join("runs");
    std::fs::remove_dir_all(&runs).unwrap();
    std::fs::write(&runs, "not a folder").unwrap();
    let plan = f.plan("steady.yaml", 1);
    let out = f.procs.dir.path().join("out");
    let (code, stdout, stderr) =
        f.submit("run", &plan, &["--expect-agents", "2", "--wait", "20s", "--out", out.to_str().unwrap()]).finish(Duration::from_secs(25));
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}\n{}", f.procs.logs());
    assert_eq!(report(&out)["verdict"], "pass");
    assert!(stderr.contains("ERROR: could not store the run in") && stderr.contains("the only copy"), "{stderr}");
    assert!(f.procs.log("coordinator").contains("Could not store the run"), "{}", f.procs.log("coordinator"));
}

#[test]
fn a_coordinator_that_cannot_write_its_data_dir_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let port = support::free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let out = support::stampede_output(&["coordinator", "--listen", &listen, "--insecure", "--data", file.to_str().unwrap()], Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--data") && stderr.contains("run store"), "{stderr}");
}

#[test]
fn a_second_run_submitted_at_once_is_refused_and_does_not_mix() {
    let f = fleet();
    let plan = f.plan("steady.yaml", 3);
    let outs = [f.procs.dir.path().join("out-1"), f.procs.dir.path().join("out-2")];
    // Both submitted together: whichever reaches the coordinator second is the
    // one refused, so the test accepts either order.
    let mut runs: Vec<Background> = outs
        .iter()
        .enumerate()
        .map(|(i, out)| f.submit(&format!("run-{i}"), &plan, &["--expect-agents", "2", "--wait", "20s", "--out", out.to_str().unwrap()]))
        .collect();
    let results: Vec<_> = runs.iter_mut().map(|r| r.finish(Duration::from_secs(25))).collect();
    let codes: Vec<i32> = results.iter().map(|r| r.0).collect();
    let (ran, refused) = match codes.as_slice() {
        [0, 2] => (0, 1),
        [2, 0] => (1, 0),
        _ => panic!("expected one run to pass and one to be refused, got exit codes {codes:?}:\n{results:#?}\n{}", f.procs.logs()),
    };
    let refusal = &results[refused].2;
    assert!(refusal.contains("another run is in progress"), "refused run's stderr:\n{refusal}");
    assert!(!outs[refused].join("report.json").exists(), "a refused run writes no report");
    assert_one_clean_run(&report(&outs[ran]), 300.0);

    // The fleet is free again once the run ended.
    let out = f.procs.dir.path().join("out-3");
    let (code, _, stderr) = f.submit("run-3", &plan, &["--expect-agents", "2", "--out", out.to_str().unwrap()]).finish(Duration::from_secs(20));
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn too_few_agents_exits_2_saying_how_many_connected() {
    let f = fleet();
    let plan = f.plan("steady.yaml", 1);
    let out = f.procs.dir.path().join("out");
    let started = std::time::Instant::now();
    let (code, stdout, stderr) =
        f.submit("run", &plan, &["--expect-agents", "3", "--wait", "2s", "--out", out.to_str().unwrap()]).finish(Duration::from_secs(15));
    assert_eq!(code, 2, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("3 agent(s) but 2 connected"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10), "gave up after {:?}", started.elapsed());
    assert!(!out.join("report.json").exists());
}

#[test]
fn agents_shows_busy_only_for_the_agents_a_run_picked() {
    let f = fleet();
    let plan = f.plan("steady.yaml", 4);
    let out = f.procs.dir.path().join("out");
    // One of the two agents runs the plan.
    let mut run = f.submit("run", &plan, &["--expect-agents", "1", "--out", out.to_str().unwrap()]);
    let state = |table: &str, id: &str| table.lines().find(|l| l.split_whitespace().next() == Some(id)).and_then(|l| l.split_whitespace().nth(5)).map(str::to_string);
    let mut table = String::new();
    let one_busy = support::wait_until(Duration::from_secs(10), || {
        table = support::list_agents(&f.url).unwrap_or_default();
        let states = [state(&table, "a1"), state(&table, "a2")];
        states.iter().filter(|s| s.as_deref() == Some("busy")).count() == 1 && states.iter().filter(|s| s.as_deref() == Some("idle")).count() == 1
    });
    let (code, _, stderr) = run.finish(Duration::from_secs(20));
    assert!(one_busy, "during a one-agent run, `stampede agents` said:\n{table}");
    assert_eq!(code, 0, "{stderr}");
    let after = support::list_agents(&f.url).unwrap_or_default();
    assert_eq!((state(&after, "a1").as_deref(), state(&after, "a2").as_deref()), (Some("idle"), Some("idle")), "{after}");
}
