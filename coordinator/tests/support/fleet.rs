//! A whole stampede fleet in network namespaces, for end-to-end fault tests
//! through the real binaries: a standing coordinator, the built-in target and
//! N agents, each in its own namespace and at its own address, made by
//! `deploy/netns/fleet.sh` (see its README):
//!
//! ```text
//!   P-coord 198.18.0.1:7000   P-target 198.18.0.2:8080   P-agentK 198.18.0.(10+K)
//!                 all on one bridge inside P-hub; the host's interfaces untouched
//! ```
//!
//! `P` is unique per fleet (`stpf<pid>-<n>`). [`Fleet::up`] first removes a
//! fleet of the same name and those of test processes that died without
//! cleaning up; dropping the [`Fleet`] kills every process it started
//! (`Child::kill`, never kill(1)) and runs `fleet.sh down`, which deletes the
//! namespaces and with them every veth, qdisc and nft table inside them — also
//! when a test fails. Every wait here is bounded.
//!
//! Traffic stays inside the namespaces: nothing in the host's namespace ever
//! connects to 198.18.0.0/24 (on a host with a default route that address
//! would leave the machine), so even the readiness checks and `stampede run`
//! itself run inside `P-coord`.

#![allow(dead_code)] // each test file uses its own subset

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::{agent_bin, agent_ids, stampede, wait_until, Background, Procs};

pub const FLEET_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/netns/fleet.sh");
pub const COORD_ADDR: &str = "198.18.0.1";
pub const TARGET_ADDR: &str = "198.18.0.2";
pub const COORD_LISTEN: &str = "198.18.0.1:7000";
pub const COORD_URL: &str = "http://198.18.0.1:7000";
pub const TARGET_LISTEN: &str = "198.18.0.2:8080";
/// Every fleet this harness makes is named `stpf<pid>-<n>`.
const PREFIX_TAG: &str = "stpf";

/// agentK's address (K from 1).
pub fn agent_addr(k: usize) -> String {
    format!("198.18.0.{}", 10 + k)
}

/// Why these tests cannot run here, if so (the test prints it and returns).
pub fn skip_reason(tools: &[&str]) -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if stampede_agent::fault::probe::has_net_admin(&status) != Some(true) {
        return Some("needs root (CAP_NET_ADMIN) for network namespaces".into());
    }
    if !Command::new("ip").args(["netns", "list"]).output().is_ok_and(|o| o.status.success()) {
        return Some("`ip netns` is not available".into());
    }
    for tool in ["bash"].iter().chain(tools) {
        if !Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success()) {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

/// `--insecure` when `bin [sub]` takes it (plain gRPC is then opt-in), else
/// nothing: the harness works on both sides of that change.
pub fn insecure_flag(bin: &Path, sub: Option<&str>) -> Vec<String> {
    static CACHE: OnceLock<Mutex<HashMap<String, bool>>> = OnceLock::new();
    let key = format!("{} {}", bin.display(), sub.unwrap_or(""));
    let known = CACHE.get_or_init(Default::default).lock().unwrap().get(&key).copied();
    let takes = known.unwrap_or_else(|| {
        let mut cmd = Command::new(bin);
        cmd.args(sub).arg("--help");
        let help = cmd.output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        let takes = help.contains("--insecure");
        CACHE.get_or_init(Default::default).lock().unwrap().insert(key, takes);
        takes
    });
    if takes {
        vec!["--insecure".to_string()]
    } else {
        Vec::new()
    }
}

/// Runs `fleet.sh ARGS...` to completion (bounded).
fn fleet_sh(args: &[&str], limit: Duration) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(FLEET_SH).args(args);
    run_bounded(cmd, limit)
}

/// Runs `cmd` with its output captured; kills it (`Child::kill`) after `limit`.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    cmd.stdin(Stdio::null()).stdout(std::fs::File::create(&out).unwrap()).stderr(std::fs::File::create(&err).unwrap());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output { status, stdout: std::fs::read(out).unwrap_or_default(), stderr: std::fs::read(err).unwrap_or_default() }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Removes fleets left by test processes that no longer exist (a test
/// binary killed before its guards ran). Only names of this harness's shape
/// (`stpf<pid>-<n>-...`) whose pid is gone are touched.
fn sweep_dead_fleets() {
    let list = Command::new("ip").args(["netns", "list"]).output().map(|o| text(&o.stdout)).unwrap_or_default();
    let mut prefixes: Vec<String> = Vec::new();
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = ns.strip_prefix(PREFIX_TAG) else { continue };
        let mut parts = rest.splitn(3, '-');
        let (Some(pid), Some(n), Some(_)) = (parts.next(), parts.next(), parts.next()) else { continue };
        if pid.is_empty() || n.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) || !n.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if pid != std::process::id().to_string() && Path::new(&format!("/proc/{pid}")).exists() {
            continue; // a live test process owns it
        }
        let prefix = format!("{PREFIX_TAG}{pid}-{n}");
        if !prefixes.contains(&prefix) {
            prefixes.push(prefix);
        }
    }
    for p in prefixes {
        let out = fleet_sh(&["down", "--prefix", &p], Duration::from_secs(30));
        eprintln!("removed the leftover fleet {p}: {}", text(&out.stdout).trim());
    }
}

/// What `stampede run` did.
pub struct RunOutcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// `DIR/report.json`, when the run wrote one.
    pub report: Option<serde_json::Value>,
    pub elapsed: Duration,
    /// The run's `--out` directory.
    pub out: PathBuf,
}

/// A `stampede run` under way.
pub struct PendingRun {
    bg: Background,
    out: PathBuf,
    started: Instant,
}

impl PendingRun {
    /// Waits for the run (killed after `limit`) and reads its report.
    pub fn finish(mut self, limit: Duration) -> RunOutcome {
        let (code, stdout, stderr) = self.bg.finish(limit);
        let elapsed = self.started.elapsed();
        let report = std::fs::read_to_string(self.out.join("report.json")).ok().map(|t| serde_json::from_str(&t).expect("report.json is JSON"));
        RunOutcome { code, stdout, stderr, report, elapsed, out: self.out }
    }
}

/// A fleet of namespaces and the processes started in them.
pub struct Fleet {
    pub prefix: String,
    pub agents: usize,
    procs: Option<Procs>,
    /// Logs, agents' state directories, run outputs.
    pub dir: PathBuf,
}

impl Fleet {
    /// Brings up `P-coord`, `P-target` and `P-agent1..n`; `None` (after
    /// printing why) when this host cannot.
    pub fn up(n: usize, tools: &[&str]) -> Option<Fleet> {
        if let Some(why) = skip_reason(tools) {
            println!("skipped: {why}");
            return None;
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let prefix = format!("{PREFIX_TAG}{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        sweep_dead_fleets();
        let _ = fleet_sh(&["down", "--prefix", &prefix], Duration::from_secs(30)); // same name, earlier life
        let procs = Procs::new();
        let dir = procs.dir.path().to_path_buf();
        // From here on, Drop runs `down` whatever happens.
        let fleet = Fleet { prefix, agents: n, procs: Some(procs), dir };
        let out = fleet_sh(&["up", &n.to_string(), "--prefix", &fleet.prefix], Duration::from_secs(60));
        assert!(out.status.success(), "fleet.sh up {n} failed:\n{}{}", text(&out.stdout), text(&out.stderr));
        println!("{}", text(&out.stdout).trim_end());
        Some(fleet)
    }

    /// The namespace of a member (`coord`, `target`, `agentK`).
    pub fn ns(&self, member: &str) -> String {
        format!("{}-{member}", self.prefix)
    }

    fn procs(&mut self) -> &mut Procs {
        self.procs.as_mut().expect("processes live until drop")
    }

    /// Runs `argv` inside `member`'s namespace to completion (bounded).
    pub fn exec(&self, member: &str, argv: &[&str], limit: Duration) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(member)]).args(argv).env("NO_COLOR", "1");
        run_bounded(cmd, limit)
    }

    /// Starts `argv` inside `member`'s namespace as process `name` (its
    /// output in `DIR/NAME.log`). `ip netns exec` execs the command in its
    /// own process, so the child is the command itself and `Child::kill` stops it.
    pub fn spawn(&mut self, member: &str, name: &str, argv: &[&str]) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(member)]).args(argv).env("RUST_LOG", "info");
        self.procs().spawn(name, cmd);
    }

    pub fn alive(&mut self, name: &str) -> bool {
        self.procs().alive(name)
    }

    pub fn log(&self, name: &str) -> String {
        self.procs.as_ref().map(|p| p.log(name)).unwrap_or_default()
    }

    /// Every process's log tail, for failure messages.
    pub fn logs(&self) -> String {
        self.procs.as_ref().map(|p| p.logs()).unwrap_or_default()
    }

    /// Whether a TCP connect from `from` to `addr` succeeds within ~1 s
    /// (bash's /dev/tcp, inside the namespace).
    pub fn connects(&self, from: &str, addr: &str) -> bool {
        let (host, port) = addr.split_once(':').expect("host:port");
        let script = format!("exec 3<>/dev/tcp/{host}/{port}");
        self.exec(from, &["bash", "-c", &script], Duration::from_secs(2)).status.success()
    }

    /// `stampede agents` run inside the coordinator's namespace.
    pub fn list_agents(&self) -> Option<String> {
        let bin = stampede().to_str().unwrap();
        let mut argv = vec![bin, "agents", "--coordinator", COORD_URL];
        let tls = insecure_flag(stampede(), Some("agents"));
        argv.extend(tls.iter().map(String::as_str));
        let out = self.exec("coord", &argv, Duration::from_secs(10));
        out.status.success().then(|| text(&out.stdout))
    }

    /// The coordinator's run store (`--data`).
    pub fn coord_data(&self) -> PathBuf {
        self.dir.join("coord-data")
    }

    /// `stampede coordinator --listen 198.18.0.1:7000` in `P-coord`, once it
    /// answers `stampede agents`.
    pub fn start_coordinator(&mut self) {
        let bin = stampede().to_str().unwrap().to_string();
        let data = self.coord_data();
        let data = data.to_str().unwrap();
        let mut argv = vec![bin.as_str(), "coordinator", "--listen", COORD_LISTEN, "--data", data];
        let tls = insecure_flag(stampede(), Some("coordinator"));
        argv.extend(tls.iter().map(String::as_str));
        self.spawn("coord", "coordinator", &argv);
        let ready = wait_until(Duration::from_secs(15), || !self.alive("coordinator") || self.list_agents().is_some());
        assert!(ready && self.alive("coordinator"), "the coordinator did not come up in {}\n{}", self.ns("coord"), self.logs());
    }

    /// `stampede target --listen 198.18.0.2:8080 EXTRA...` in `P-target`, once
    /// it accepts connections from the coordinator's namespace.
    pub fn start_target(&mut self, extra: &[&str]) {
        let bin = stampede().to_str().unwrap().to_string();
        let mut argv = vec![bin.as_str(), "target", "--listen", TARGET_LISTEN];
        argv.extend(extra);
        self.spawn("target", "target", &argv);
        let ready = wait_until(Duration::from_secs(15), || !self.alive("target") || self.connects("coord", TARGET_LISTEN));
        assert!(ready && self.alive("target"), "the target did not come up in {}\n{}", self.ns("target"), self.logs());
    }

    /// An agent with id `id` in `member`'s namespace: its own node name
    /// (`--node`, so each namespace counts as a node and gets its own copy
    /// of a fault), its own journal directory, one worker.
    pub fn start_agent_in(&mut self, member: &str, id: &str, labels: &str, extra: &[&str]) {
        let state = self.dir.join(format!("state-{id}"));
        std::fs::create_dir_all(&state).unwrap();
        let bin = agent_bin().to_str().unwrap().to_string();
        let state = state.to_str().unwrap().to_string();
        let mut argv = vec![bin.as_str(), "--coordinator", COORD_URL, "--id", id, "--labels", labels, "--workers", "1"];
        argv.extend(["--state-dir", state.as_str(), "--node", id]);
        let tls = insecure_flag(agent_bin(), None);
        argv.extend(tls.iter().map(String::as_str));
        argv.extend(extra);
        self.spawn(member, id, &argv);
    }

    /// `agentK` in `P-agentK` for K in 1..=n, labels `zone=z1,role=load` plus `extra_labels`.
    pub fn start_agents(&mut self, extra_labels: &str) {
        for k in 1..=self.agents {
            let id = format!("agent{k}");
            let mut labels = "zone=z1,role=load".to_string();
            if !extra_labels.is_empty() {
                labels = format!("{labels},{extra_labels}");
            }
            self.start_agent_in(&id, &id, &labels, &[]);
        }
    }

    /// Waits until `stampede agents` lists exactly `ids`.
    pub fn wait_for_agents(&self, ids: &[&str], limit: Duration) {
        let mut want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        want.sort();
        let mut last = String::new();
        let ok = wait_until(limit, || {
            last = self.list_agents().unwrap_or_default();
            let mut got = agent_ids(&last);
            got.sort();
            got == want
        });
        assert!(ok, "agents {want:?} did not all register within {limit:?}; `stampede agents` said:\n{last}\n{}", self.logs());
    }

    /// Coordinator, target (`target_args`) and agents 1..=n, all registered.
    pub fn start_all(&mut self, target_args: &[&str]) {
        self.start_coordinator();
        self.start_target(target_args);
        self.start_agents("");
        let ids: Vec<String> = (1..=self.agents).map(|k| format!("agent{k}")).collect();
        self.wait_for_agents(&ids.iter().map(String::as_str).collect::<Vec<_>>(), Duration::from_secs(20));
    }

    /// `stampede run PLAN --coordinator http://198.18.0.1:7000 --expect-agents
    /// N --wait 20s --out DIR` inside `P-coord`, killed after `limit`.
    pub fn run(&self, plan: &Path, expect_agents: usize, limit: Duration) -> RunOutcome {
        self.start_run(plan, expect_agents).finish(limit)
    }

    /// Like [`Fleet::run`], but returns at once: the test acts on the fleet
    /// while the run goes on, then calls [`PendingRun::finish`].
    pub fn start_run(&self, plan: &Path, expect_agents: usize) -> PendingRun {
        static RUNS: AtomicU32 = AtomicU32::new(0);
        let n = RUNS.fetch_add(1, Ordering::Relaxed);
        let out = self.dir.join(format!("run{n}"));
        let expect = expect_agents.to_string();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns("coord")]).arg(stampede());
        cmd.arg("run").arg(plan).args(["--coordinator", COORD_URL, "--expect-agents", &expect, "--wait", "20s", "--out"]).arg(&out);
        cmd.args(insecure_flag(stampede(), Some("run")));
        let started = Instant::now();
        let bg = Background::start(cmd, &self.dir, &format!("run{n}"));
        PendingRun { bg, out, started }
    }

    /// SIGKILLs process `name` (through `Child::kill`: its own pid, never a group).
    pub fn kill(&mut self, name: &str) {
        let _ = self.procs().get(name).child.kill();
    }

    /// `nft list tables` inside `member`'s namespace.
    pub fn nft_tables(&self, member: &str) -> String {
        let out = self.exec(member, &["nft", "list", "tables"], Duration::from_secs(5));
        assert!(out.status.success(), "nft list tables in {member}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    /// `tc qdisc show dev eth0` inside `member`'s namespace.
    pub fn qdiscs(&self, member: &str) -> String {
        text(&self.exec(member, &["tc", "qdisc", "show", "dev", "eth0"], Duration::from_secs(5)).stdout)
    }

    /// Asserts that no stampede nft table or tc tree is left in any member.
    pub fn assert_clean(&self) {
        let mut members = vec!["coord".to_string(), "target".to_string()];
        members.extend((1..=self.agents).map(|k| format!("agent{k}")));
        for m in members {
            let tables = self.nft_tables(&m);
            assert!(!tables.contains("stampede_"), "{m} still has a stampede table after the run:\n{tables}");
            let qdiscs = self.qdiscs(&m);
            assert!(!qdiscs.contains("5ea7:"), "{m} still has stampede's qdisc after the run:\n{qdiscs}");
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Processes first (their Drop prints the logs if the test failed)...
        drop(self.procs.take());
        // ...then the namespaces, which takes every veth, qdisc and nft table with them.
        let out = fleet_sh(&["down", "--prefix", &self.prefix], Duration::from_secs(30));
        if !out.status.success() {
            eprintln!("fleet.sh down --prefix {} failed: {}{}", self.prefix, text(&out.stdout), text(&out.stderr));
        }
    }
}

// ---- report.json helpers ----

/// `report[key]` as f64 (numbers only).
pub fn num(v: &serde_json::Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("`{key}` is not a number in {v}"))
}

/// The timeline as (t_s, requests, errors).
pub fn timeline(report: &serde_json::Value) -> Vec<(f64, u64, u64)> {
    report["timeline"]
        .as_array()
        .expect("report.json has a timeline")
        .iter()
        .map(|p| (num(p, "t_s"), p["requests"].as_u64().unwrap(), p["errors"].as_u64().unwrap()))
        .collect()
}

/// The phase named `name`.
pub fn phase<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["phases"].as_array().expect("phases").iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("no phase {name}"))
}

/// Every report entry of fault `name` (one per agent that ran it).
pub fn faults<'a>(report: &'a serde_json::Value, name: &str) -> Vec<&'a serde_json::Value> {
    report["faults"].as_array().expect("faults").iter().filter(|f| f["name"] == name).collect()
}

/// A plan under `coordinator/tests/plans/`.
pub fn plan_path(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plans").join(file)
}
