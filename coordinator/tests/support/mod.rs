//! Shared by the tests that drive the real binaries as separate processes
//! (`standing.rs`, `lifecycle.rs`, `examples.rs`, `flows.rs`, `probes.rs`): a
//! guard that kills every child it started — on success, on a failed
//! assertion and on a panic — free loopback ports, the `stampede-agent`
//! binary, and `stampede run` of a plan text to its report ([`run_plan`]).
//!
//! Every child writes its stdout and stderr to a file in the guard's
//! temporary directory (a pipe nobody drains would block a chatty child);
//! when a test fails, the guard prints the tail of each log.

#![allow(dead_code)] // each test file uses its own subset

/// A fleet in network namespaces (`deploy/netns/fleet.sh`), for `fleet_*.rs`.
pub mod fleet;
/// A fake agent over real gRPC that sends what a test hands it (`trust_messages.rs`).
pub mod fake_agent;
/// nftables checks and a table guard (`crash_drills.rs`, `trust_signals.rs`).
pub mod nft;
/// A keep-alive HTTP server answering with the test's handler (`flows.rs`, `probes.rs`).
pub mod http;

use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The `stampede` binary cargo built for this test.
pub fn stampede() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_stampede"))
}

/// The `stampede-agent` binary, built if needed.
///
/// `CARGO_BIN_EXE_*` only names binaries of the package under test, so the
/// agent's binary (another package) is looked for next to `stampede`, in the
/// same target directory and profile. `cargo test --workspace` and `cargo
/// nextest run --workspace` build it with everything else. `cargo test -p
/// stampede-coordinator` builds the agent's library but not its binary, so
/// when the binary is missing, or older than a source file of the crates it
/// is made of (agent, common, proto, Cargo.lock), this runs `cargo build -p
/// stampede-agent --bin stampede-agent` once per test binary, with the same
/// profile and target directory. Cargo releases its build lock before it
/// runs tests, so this does not deadlock; but that build resolves features
/// for the agent alone, so the first time it may rebuild dependencies and
/// take minutes — prefer the workspace commands.
pub fn agent_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = stampede().with_file_name("stampede-agent");
        if is_fresh(&bin) {
            return bin;
        }
        let profile_dir = stampede().parent().expect("the binary lives in a profile directory");
        let profile = profile_dir.file_name().and_then(|n| n.to_str()).expect("profile directory name");
        let target_dir = profile_dir.parent().expect("the profile directory lives in a target directory");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build.current_dir(env!("CARGO_MANIFEST_DIR")).args(["build", "-p", "stampede-agent", "--bin", "stampede-agent", "--target-dir"]).arg(target_dir);
        // The `debug` directory holds the `dev` profile; others are named after theirs.
        build.args(["--profile", if profile == "debug" { "dev" } else { profile }]);
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "building stampede-agent failed: {status}");
        assert!(bin.exists(), "cargo built stampede-agent but it is not at {}", bin.display());
        bin
    })
}

fn is_fresh(bin: &Path) -> bool {
    let Some(built) = modified(bin) else {
        return false;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the coordinator crate lives in the workspace");
    let mut newest = modified(&root.join("Cargo.lock"));
    for krate in ["agent", "common", "proto"] {
        newest = newest.max(newest_source(&root.join(krate)));
    }
    newest.is_some_and(|n| n <= built)
}

fn modified(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The latest modification of a `.rs`, `.toml` or `.proto` file under `dir`.
fn newest_source(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "target") {
                newest = newest.max(newest_source(&path));
            }
        } else if path.extension().is_some_and(|e| e == "rs" || e == "toml" || e == "proto") {
            newest = newest.max(modified(&path));
        }
    }
    newest
}

/// A port on 127.0.0.1 that was free a moment ago. Another process may take
/// it before the child binds it; callers retry with a new one (see
/// [`Procs::coordinator`]).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// A process's state letter from /proc/PID/stat (`T` while stopped), or
/// None when it is gone.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next())
}

/// Polls `check` every 100 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs a short `stampede` command to completion, with a time limit.
pub fn stampede_output(args: &[&str], limit: Duration) -> Output {
    stampede_output_with_path(args, None, limit)
}

/// Like [`stampede_output`], with `path_prefix` first on PATH (shims).
pub fn stampede_output_with_path(args: &[&str], path_prefix: Option<&Path>, limit: Duration) -> Output {
    let mut cmd = Command::new(stampede());
    cmd.args(args).env("NO_COLOR", "1").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(dir) = path_prefix {
        cmd.env("PATH", format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default()));
    }
    let child = cmd.spawn().expect("stampede starts");
    let pid = child.id();
    // wait_with_output drains both pipes; a watchdog kills a hung command.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(limit).is_err() {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    });
    let out = child.wait_with_output().expect("stampede runs");
    let _ = done_tx.send(());
    let _ = watchdog.join();
    out
}

/// `stampede run PLAN --local-agents N --out DIR` of `plan` (YAML text):
/// the exit code, stderr and report.json. Panics, with the stderr, when
/// there is no report.
pub fn run_plan(plan: &str, agents: usize) -> (i32, String, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plan.yaml");
    std::fs::write(&file, plan).unwrap();
    let out = dir.path().join("out");
    let output = Command::new(stampede()).arg("run").arg(&file).args(["--local-agents", &agents.to_string(), "--out"]).arg(&out).output().expect("stampede runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let text = std::fs::read_to_string(out.join("report.json")).unwrap_or_else(|e| panic!("no report ({e}); stderr:\n{stderr}"));
    (output.status.code().unwrap_or(-1), stderr, serde_json::from_str(&text).unwrap())
}

/// The report's entry for step `name` (a flow request is `STEP/REQUEST`).
pub fn step<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["steps"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("no step {name} in {}", report["steps"]))
}

/// `stampede agents --coordinator URL --insecure`'s table, or None if it failed.
pub fn list_agents(url: &str) -> Option<String> {
    let out = stampede_output(&["agents", "--coordinator", url, "--insecure"], Duration::from_secs(10));
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The ids in `stampede agents`' table (the first column after the header).
pub fn agent_ids(table: &str) -> Vec<String> {
    table.lines().skip(1).filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect()
}

pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

/// Owns every child process a test starts; kills them all when dropped.
pub struct Procs {
    pub dir: tempfile::TempDir,
    procs: Vec<Proc>,
}

impl Default for Procs {
    fn default() -> Self {
        Self::new()
    }
}

impl Procs {
    pub fn new() -> Self {
        Procs { dir: tempfile::tempdir().unwrap(), procs: Vec::new() }
    }

    /// Forgets an earlier (exited or not) process of this name, reaping it.
    fn forget(&mut self, name: &str) {
        for p in self.procs.iter_mut().filter(|p| p.name == name) {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        self.procs.retain(|p| p.name != name);
    }

    /// Starts `cmd` with its output going to `NAME.log`; returns its index.
    pub fn spawn(&mut self, name: &str, mut cmd: Command) -> usize {
        let log = self.dir.path().join(format!("{name}.log"));
        let file = File::create(&log).unwrap();
        cmd.stdin(Stdio::null()).stdout(file.try_clone().unwrap()).stderr(file).env("NO_COLOR", "1");
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
        self.procs.push(Proc { name: name.to_string(), child, log });
        self.procs.len() - 1
    }

    pub fn get(&mut self, name: &str) -> &mut Proc {
        self.procs.iter_mut().find(|p| p.name == name).unwrap_or_else(|| panic!("no process {name}"))
    }

    pub fn pid(&mut self, name: &str) -> u32 {
        self.get(name).child.id()
    }

    pub fn log(&self, name: &str) -> String {
        let path = self.dir.path().join(format!("{name}.log"));
        let mut text = String::new();
        let _ = File::open(path).and_then(|mut f| f.read_to_string(&mut text));
        text
    }

    /// Still running?
    pub fn alive(&mut self, name: &str) -> bool {
        self.get(name).child.try_wait().unwrap().is_none()
    }

    /// Waits up to `limit` for the process to exit by itself.
    pub fn wait_exit(&mut self, name: &str, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        let p = self.get(name);
        loop {
            if let Some(status) = p.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM (through `kill(1)`, no libc needed).
    pub fn sigterm(&mut self, name: &str) {
        let pid = self.pid(name).to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().expect("kill(1) runs");
        assert!(status.success(), "kill -TERM {pid} failed");
    }

    /// Starts a standing coordinator on a free loopback port, retrying with
    /// another port if the one picked was taken in the meantime; returns its
    /// URL once it answers `stampede agents`.
    pub fn coordinator(&mut self, name: &str) -> String {
        for _ in 0..5 {
            let port = free_port();
            if let Some(url) = self.coordinator_on(name, port) {
                return url;
            }
        }
        panic!("no coordinator could start on a free port; last log:\n{}", self.log(name));
    }

    /// Starts a coordinator on `port`; None if it exited (the port was taken).
    pub fn coordinator_on(&mut self, name: &str, port: u16) -> Option<String> {
        let listen = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(stampede());
        // Plain text on loopback; `mtls.rs` tests the TLS flags.
        cmd.args(["coordinator", "--listen", &listen, "--insecure", "--data"]).arg(self.data_dir(name));
        // A retry reuses the name: forget the earlier (exited) attempt.
        self.forget(name);
        self.spawn(name, cmd);
        let url = format!("http://{listen}");
        let addr: SocketAddr = listen.parse().unwrap();
        let ready = wait_until(Duration::from_secs(10), || !self.alive(name) || (accepts(addr) && list_agents(&url).is_some()));
        (ready && self.alive(name)).then_some(url)
    }

    /// The run store (`--data`) of the coordinator started as `name`.
    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("data-{name}"))
    }

    /// Starts the built-in target (`stampede target`) on a free loopback port;
    /// returns its address once it accepts connections.
    pub fn target(&mut self, name: &str, extra: &[&str]) -> SocketAddr {
        for _ in 0..5 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let mut cmd = Command::new(stampede());
            cmd.args(["target", "--listen", &addr.to_string()]).args(extra);
            self.forget(name);
            self.spawn(name, cmd);
            let up = wait_until(Duration::from_secs(10), || !self.alive(name) || accepts(addr));
            // A port taken by someone else also accepts; our target then exits
            // on its bind error — give it a moment to show that.
            std::thread::sleep(Duration::from_millis(100));
            if up && self.alive(name) {
                return addr;
            }
        }
        panic!("no target could start on a free port; last log:\n{}", self.log(name));
    }

    /// Starts `stampede-agent --coordinator URL --id ID --labels LABELS --workers 1 --insecure`.
    pub fn agent(&mut self, id: &str, url: &str, labels: &str) {
        let mut cmd = Command::new(agent_bin());
        cmd.args(["--coordinator", url, "--id", id, "--labels", labels, "--workers", "1", "--insecure"]).env("RUST_LOG", "info");
        self.spawn(id, cmd);
    }

    /// Waits until `stampede agents` lists exactly `ids` (in any order).
    pub fn wait_for_agents(&self, url: &str, ids: &[&str], limit: Duration) -> String {
        let mut want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        want.sort();
        let mut last = String::new();
        let ok = wait_until(limit, || {
            last = list_agents(url).unwrap_or_default();
            let mut got = agent_ids(&last);
            got.sort();
            got == want
        });
        assert!(ok, "agents {want:?} did not all register within {limit:?}; `stampede agents` said:\n{last}\n{}", self.logs());
        last
    }

    /// The tail of every child's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for p in &self.procs {
            let text = self.log(&p.name);
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(30)..];
            out.push_str(&format!("--- {} (last {} lines) ---\n{}\n", p.name, tail.len(), tail.join("\n")));
        }
        out
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// A `stampede run` (or any other command) started in the background, with
/// its output in files; killed when dropped if still running.
pub struct Background {
    pub child: Child,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Background {
    pub fn start(mut cmd: Command, dir: &Path, name: &str) -> Self {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        cmd.stdin(Stdio::null()).stdout(File::create(&stdout).unwrap()).stderr(File::create(&stderr).unwrap()).env("NO_COLOR", "1");
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Background { child, stdout, stderr }
    }

    /// Waits up to `limit`; panics (and the drop kills it) if it is still running.
    pub fn finish(&mut self, limit: Duration) -> (i32, String, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "still running after {limit:?}; stderr so far:\n{}", self.stderr_text());
            std::thread::sleep(Duration::from_millis(20));
        };
        (status.code().unwrap_or(-1), std::fs::read_to_string(&self.stdout).unwrap_or_default(), self.stderr_text())
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
