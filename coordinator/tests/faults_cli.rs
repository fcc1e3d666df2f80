//! Faults through the `stampede` command line: the `--dry-run` listing
//! (golden), the preflight that refuses a plan before any load, and a fault
//! that fails to apply, which makes the run `invalid`.
//!
//! In-process agents (`--local-agents 1`) keep their journals in a temp dir.
//! Tests that need what only root has print why they skip otherwise.

mod support;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use stampede_agent::fault::nft::stampede_tables;
use stampede_agent::fault::probe::{probe, Capability};
use stampede_agent::fault::driver_for;
use stampede_common::plan::load_file;
use support::stampede;

const GOLDEN: &str = "tests/golden/dry-run.txt";

fn plans() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plans")
}

/// `plans/NAME` with `@KEY@` placeholders filled in, written to `dir`.
fn plan(dir: &Path, name: &str, vars: &[(&str, String)]) -> PathBuf {
    let mut text = std::fs::read_to_string(plans().join(name)).unwrap();
    for (k, v) in vars {
        text = text.replace(&format!("@{k}@"), v);
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `stampede ARGS` with a time limit, PATH prefixed by `path_prefix`.
fn stampede_run(args: &[&str], path_prefix: Option<&Path>, limit: Duration) -> Output {
    support::stampede_output_with_path(args, path_prefix, limit)
}

/// Runs `plan` with one local agent, which must be refused before any load
/// (exit 2); returns the `error:` line and stderr.
fn refused(plan: &Path, state: &Path) -> (String, String) {
    let out = stampede_run(&["run", plan.to_str().unwrap(), "--local-agents", "1", "--state-dir", state.to_str().unwrap()], None, Duration::from_secs(30));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stdout:\n{}\nstderr:\n{stderr}", text(&out.stdout));
    let line = stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("no error line:\n{stderr}")).to_string();
    (line, stderr)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn nft_tables() -> Vec<String> {
    Command::new("nft").args(["list", "tables"]).output().map(|o| stampede_tables(&text(&o.stdout))).unwrap_or_default()
}

/// Processes whose command line is the dry-run plan's pressure helper
/// (`<this stampede binary> stress cpu --workers 2 --load 50 --for 8s`).
fn stress_helpers() -> Vec<String> {
    let helper = format!("{} stress cpu --workers 2 --load 50 --for 8s", stampede().display());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| c.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect::<Vec<_>>().join(" "))
        .filter(|c| c.starts_with(&helper))
        .collect()
}

/// Deletes the tables a buggy dry run would have made, if they were not there before.
struct TableGuard(Vec<String>);

impl Drop for TableGuard {
    fn drop(&mut self) {
        for t in &self.0 {
            let _ = Command::new("nft").args(["delete", "table", "inet", t]).output();
        }
    }
}

/// The listing without what depends on this machine: each apply's
/// preflight finding (what this node lacks) and the closing verdict.
fn without_findings(listing: &str) -> String {
    listing
        .lines()
        .filter(|l| !l.starts_with("preflight: "))
        .map(|l| l.split_once("  preflight: ").map_or(l, |(head, _)| head))
        .map(|l| match (l.starts_with("agent "), l.split_once(" (node "), l.split_once("): ")) {
            (true, Some((head, _)), Some((_, tail))) => format!("{head} (node <host>): {tail}\n"),
            _ => format!("{l}\n"),
        })
        .collect()
}

#[test]
fn dry_run_prints_the_exact_commands_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // A recording `docker` first on PATH: the preflight finds it, and a dry
    // run must never call it.
    let shims = dir.path().join("bin");
    std::fs::create_dir_all(&shims).unwrap();
    let docker_log = dir.path().join("docker.log");
    std::fs::write(shims.join("docker"), format!("#!/bin/sh\necho \"docker $*\" >> '{}'\n", docker_log.display())).unwrap();
    std::fs::set_permissions(shims.join("docker"), std::fs::Permissions::from_mode(0o755)).unwrap();

    let ours = ["stampede_db_split", "stampede_db_loss"];
    let before = nft_tables();
    let _guard = TableGuard(ours.iter().filter(|t| !before.iter().any(|b| b == *t)).map(|t| t.to_string()).collect());
    let state = dir.path().join("state");
    let plan = plans().join("faults-dry-run.yaml");
    let args = ["run", plan.to_str().unwrap(), "--dry-run", "--local-agents", "1", "--state-dir", state.to_str().unwrap()];
    let out = stampede_run(&args, Some(&shims), Duration::from_secs(30));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");

    // What differs between machines: where the binary is, what the node lacks.
    let listing = without_findings(&stdout.replace(&stampede().display().to_string(), "<stampede>"));
    let golden_path = Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden_path, &listing).unwrap();
    }
    let golden = std::fs::read_to_string(&golden_path).unwrap();
    assert_eq!(listing, golden, "the dry-run listing differs from {GOLDEN} (UPDATE_GOLDEN=1 rewrites it)");

    // Nothing was applied, spawned or called.
    let after = nft_tables();
    for t in ours {
        assert_eq!(before.contains(&t.to_string()), after.contains(&t.to_string()), "the dry run changed table {t}");
    }
    assert!(stress_helpers().is_empty(), "the dry run spawned a pressure helper: {:?}", stress_helpers());
    assert!(!docker_log.exists(), "the dry run called docker: {}", std::fs::read_to_string(&docker_log).unwrap_or_default());
    assert!(!stderr.lines().any(|l| l.starts_with('[')), "a dry run generates no load:\n{stderr}");
}

/// A listener the plan targets: it must never see a connection.
fn untouched_target() -> TcpListener {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    l
}

fn assert_no_load(target: &TcpListener, stderr: &str) {
    assert!(matches!(target.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock), "the target got a connection:\n{stderr}");
    assert!(!stderr.lines().any(|l| l.starts_with('[')), "load ran:\n{stderr}");
}

#[test]
fn preflight_refuses_a_fault_the_node_cannot_do() {
    let dir = tempfile::tempdir().unwrap();
    let target = untouched_target();
    let port = target.local_addr().unwrap().port().to_string();
    let plan = plan(dir.path(), "faults-netem.yaml", &[("PORT", port)]);
    // What this node lacks for it, in the order the driver asks: the
    // preflight names every one; the first is checked here.
    let fault = load_file(&plan).unwrap().faults[0].clone();
    let caps = probe();
    let needs = driver_for(fault.kind).requires(&fault);
    let Some(missing) = needs.iter().find(|n| !caps.iter().any(|c| &c.name == *n && c.available)) else {
        eprintln!("skipped: this node can do netem ({needs:?} all available), so there is nothing to refuse");
        return;
    };
    let state = dir.path().join("state");
    let started = Instant::now();
    let (line, stderr) = refused(&plan, &state);
    for part in ["preflight", "fault `slow-db`", "agent local-0", &format!("`{missing}`")] {
        assert!(line.contains(part), "`{line}` does not name {part}");
    }
    assert_no_load(&target, &stderr);
    assert!(started.elapsed() < Duration::from_secs(10), "refused only after {:?}", started.elapsed());
}

#[test]
fn preflight_refuses_a_selector_that_matches_no_agent() {
    let dir = tempfile::tempdir().unwrap();
    let target = untouched_target();
    let port = target.local_addr().unwrap().port().to_string();
    let plan = plan(dir.path(), "faults-no-agent.yaml", &[("PORT", port)]);
    let state = dir.path().join("state");
    let (line, stderr) = refused(&plan, &state);
    assert_eq!(line, "error: preflight refused the plan: fault `burn-nowhere`: its selector {zone=nowhere} matches none of this run's agents");
    assert_no_load(&target, &stderr);
}

/// A pid no process has (high, so a new process is unlikely to take it soon).
fn unused_pid() -> u32 {
    let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(32768);
    (2..max).rev().find(|p| !Path::new(&format!("/proc/{p}")).exists()).unwrap()
}

#[test]
fn a_fault_that_fails_to_apply_makes_the_run_invalid() {
    let dir = tempfile::tempdir().unwrap();
    // A docker CLI that knows the container but cannot stop it.
    let shims = dir.path().join("bin");
    std::fs::create_dir_all(&shims).unwrap();
    let shim = "#!/bin/sh\ncase \"$1\" in\n  stop) echo 'Error response from daemon: cannot stop container: web: permission denied' >&2; exit 1 ;;\n  *) exit 0 ;;\nesac\n";
    std::fs::write(shims.join("docker"), shim).unwrap();
    std::fs::set_permissions(shims.join("docker"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let plan = plan(dir.path(), "faults-apply-fails.yaml", &[]);
    let (state, out_dir) = (dir.path().join("state"), dir.path().join("out"));
    let args = ["run", plan.to_str().unwrap(), "--local-agents", "1", "--state-dir", state.to_str().unwrap(), "--out", out_dir.to_str().unwrap()];
    let out = stampede_run(&args, Some(&shims), Duration::from_secs(30));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(out_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(r["verdict"], "invalid", "{r:#}");
    let faults = r["faults"].as_array().unwrap();
    assert_eq!(faults.len(), 1, "{r:#}");
    let f = &faults[0];
    assert_eq!((f["name"].as_str(), f["kind"].as_str(), f["status"].as_str()), (Some("stop-web"), Some("stop"), Some("failed")), "{f:#}");
    let error = f["error"].as_str().unwrap_or_default();
    assert!(error.contains("docker stop web") && error.contains("permission denied"), "{f:#}");
    assert!(f["applied_at"].is_null(), "{f:#}");
    let reasons = r["verdict_reasons"].to_string();
    assert!(reasons.contains("fault stop-web on local-0 failed"), "{reasons}");
    // report.md's timeline shows no fault active: this one never was.
    let md = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    let rows: Vec<&str> = md.lines().skip_while(|l| *l != "## Timeline").filter(|l| l.starts_with("| +")).collect();
    assert!(rows.len() >= 3 && rows.iter().all(|l| l.ends_with("| - |")), "{md}");
    // The load itself was fine: the run is invalid only because the drill did not happen.
    assert!(r["totals"]["requests"].as_u64().unwrap() > 40, "{r:#}");
    assert_eq!(r["totals"]["errors"], 0, "{r:#}");
}

#[test]
fn an_instance_that_does_not_exist_is_refused_before_any_load() {
    let dir = tempfile::tempdir().unwrap();
    let pid = unused_pid();
    let plan = plan(dir.path(), "faults-stop-missing.yaml", &[("PID", pid.to_string())]);
    let state = dir.path().join("state");
    let started = Instant::now();
    let (line, stderr) = refused(&plan, &state);
    for part in ["agent local-0", "preflight", "fault `stop-ghost`", &format!("no process with pid {pid}")] {
        assert!(line.contains(part), "`{line}` does not name {part}");
    }
    assert!(!stderr.lines().any(|l| l.starts_with('[')), "load ran:\n{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10), "refused only after {:?}", started.elapsed());
}


/// The events of the dry-run listing (`+5.0s  agent A  apply F ...`), as
/// (seconds, agent, action, fault), in printed order.
fn listed_events(listing: &str) -> Vec<(f64, String, String, String)> {
    listing
        .lines()
        .filter(|l| l.starts_with('+'))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w[0].trim_start_matches('+').trim_end_matches('s').parse().unwrap(), w[2].to_string(), w[3].to_string(), w[4].to_string())
        })
        .collect()
}

/// Whether this node has every capability the fault's driver asks for.
fn can_do(caps: &[Capability], fault: &stampede_common::plan::Fault) -> bool {
    driver_for(fault.kind).requires(fault).iter().all(|n| caps.iter().any(|c| &c.name == n && c.available))
}

// Issue 10: `--dry-run` refused a production plan on a laptop ("preflight
// refused the plan: fault `db-split` cannot run on agent local-0: it needs
// `nft`"). Now it lists every command per agent in time order, whatever the
// node lacks, with the preflight's finding beside each fault, exits 0, and
// writes the same as dry-run.json with --out.
#[test]
fn dry_run_lists_netem_and_incus_faults_in_time_order_on_a_node_without_them() {
    let dir = tempfile::tempdir().unwrap();
    let plan_path = plans().join("faults-dry-run-anywhere.yaml");
    let (state, out_dir) = (dir.path().join("state"), dir.path().join("out"));
    let before = nft_tables();
    let args = ["run", plan_path.to_str().unwrap(), "--dry-run", "--local-agents", "1", "--state-dir", state.to_str().unwrap(), "--out", out_dir.to_str().unwrap()];
    let out = stampede_run(&args, None, Duration::from_secs(30));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");

    // Every apply and revert, in time order: the partition's window ends
    // inside the netem's, the incus stop's inside both.
    let events = listed_events(&stdout);
    let order: Vec<(f64, &str, &str)> = events.iter().map(|(t, _, a, f)| (*t, a.as_str(), f.as_str())).collect();
    assert_eq!(
        order,
        [(2.0, "apply", "db-split"), (5.0, "apply", "db-slow"), (6.0, "revert", "db-split"), (8.0, "apply", "api-1"), (12.0, "revert", "api-1"), (15.0, "revert", "db-slow")],
        "{stdout}"
    );
    assert!(events.iter().all(|(_, agent, _, _)| agent == "local-0"), "{stdout}");
    for command in ["tc qdisc add dev eth0 root handle 5ea7:", "netem delay 200ms 20ms", "incus stop --force backend-api-1", "incus start backend-api-1", "nft delete table inet stampede_db_split"] {
        assert!(stdout.contains(command), "`{command}` is not listed:\n{stdout}");
    }

    // Beside each apply, what the preflight says of it on this node.
    let plan = load_file(&plan_path).unwrap();
    let caps = probe();
    let mut all_ok = true;
    for fault in &plan.faults {
        let line = stdout.lines().find(|l| l.contains(&format!(" apply {} (", fault.name))).unwrap();
        let ok = can_do(&caps, fault);
        all_ok &= ok;
        if ok {
            assert!(line.ends_with("preflight: ok"), "{line}");
        } else {
            assert!(line.contains("preflight: would be refused: "), "{line}");
        }
    }
    let incus = stdout.lines().find(|l| l.contains(" apply api-1 (")).unwrap();
    if !caps.iter().any(|c| c.name == "incus" && c.available) {
        assert!(incus.contains("no `incus` on this node (not on PATH)"), "{incus}");
    }
    let netem = stdout.lines().find(|l| l.contains(" apply db-slow (")).unwrap();
    if let Some(c) = caps.iter().find(|c| c.name == "qdisc.netem" && !c.available && !c.detail.starts_with("cannot probe")) {
        assert!(netem.contains(&format!("no netem in this kernel ({})", c.detail)), "{netem}");
    }

    // The same as JSON.
    let json: Value = serde_json::from_str(&std::fs::read_to_string(out_dir.join("dry-run.json")).unwrap()).unwrap();
    assert_eq!(json["plan"], "faults-dry-run-anywhere", "{json:#}");
    assert_eq!(json["would_run"], all_ok, "{json:#}");
    let agent = &json["agents"][0];
    assert_eq!((agent["id"].as_str(), agent["fault_only"].as_bool()), (Some("local-0"), Some(false)), "{json:#}");
    let times: Vec<f64> = agent["events"].as_array().unwrap().iter().map(|e| e["at_s"].as_f64().unwrap()).collect();
    assert_eq!(times, [2.0, 5.0, 6.0, 8.0, 12.0, 15.0], "{json:#}");
    let faults = agent["faults"].as_array().unwrap();
    assert_eq!(faults.len(), 3, "{json:#}");
    for f in faults {
        let name = f["name"].as_str().unwrap();
        let line = stdout.lines().find(|l| l.contains(&format!(" apply {name} ("))).unwrap();
        assert!(line.ends_with(&format!("preflight: {}", f["preflight"].as_str().unwrap())), "{line}\n{f:#}");
        assert!(!f["apply_commands"].as_array().unwrap().is_empty(), "{f:#}");
    }

    // Nothing was touched, no load ran.
    assert_eq!(nft_tables(), before, "the dry run changed nft tables");
    assert!(!stderr.lines().any(|l| l.starts_with('[')), "a dry run generates no load:\n{stderr}");
}

// Issue 10: `--simulate-faults`, the runbooks' "simulated mode": the load
// runs for real, the partition is only announced at its time (no nft table
// at any moment), the report says `simulated`, and the fault-window rule
// judges the announced window.
#[test]
fn a_simulated_partition_is_announced_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plans().join("faults-simulated.yaml");
    let (state, out_dir) = (dir.path().join("state"), dir.path().join("out"));
    let args = ["run", plan.to_str().unwrap(), "--simulate-faults", "--local-agents", "1", "--state-dir", state.to_str().unwrap(), "--out", out_dir.to_str().unwrap()];
    let mut cmd = Command::new(stampede());
    cmd.args(args);
    let mut run = support::Background::start(cmd, dir.path(), "simulated");
    // Watched through the whole run: the table never appears.
    let mut seen = Vec::new();
    let watch_until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < watch_until {
        seen.extend(nft_tables().into_iter().filter(|t| t == "stampede_db_split"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, stdout, stderr) = run.finish(Duration::from_secs(30));
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(seen.is_empty(), "a simulated partition created its nft table");

    let r: Value = serde_json::from_str(&std::fs::read_to_string(out_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(r["verdict"], "pass", "{r:#}");
    assert_eq!(r["faults_simulated"], true, "{r:#}");
    assert!(r["totals"]["requests"].as_u64().unwrap() > 400, "the load ran: {r:#}");
    let faults = r["faults"].as_array().unwrap();
    assert_eq!(faults.len(), 1, "{r:#}");
    let f = &faults[0];
    assert_eq!((f["name"].as_str(), f["status"].as_str()), (Some("db-split"), Some("simulated")), "{f:#}");
    assert!(f["applied_at"].is_string() && f["reverted_at"].is_string(), "the announced window: {f:#}");
    let during = r["slos"].as_array().unwrap().iter().find(|s| s["scope"] == "during:db-split").unwrap();
    assert_eq!(during["status"], "pass", "{during:#}");
    assert!(during["window"].is_object(), "judged on the announced window: {during:#}");
    assert!(stderr.contains("fault db-split on local-0: simulated: its window starts now; nothing was injected"), "{stderr}");
    assert!(stdout.contains("Faults were SIMULATED"), "{stdout}");
}
