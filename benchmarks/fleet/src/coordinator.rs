//! The coordinator under test: a separate process (`stampede coordinator
//! --insecure` on loopback), so that its CPU time and peak RSS are read from
//! /proc and nothing of the simulated fleet is counted in them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

/// The hidden first argument that makes this binary the coordinator.
pub const CHILD_MODE: &str = "__coordinator";

/// Runs `stampede coordinator ARGS` in this process, as the `stampede`
/// binary's main does (a multi-threaded runtime, its log at info).
pub fn child_main(args: Vec<String>) -> std::process::ExitCode {
    use clap::Parser;
    use stampede_coordinator::cli::{self, Cli};
    let argv = ["stampede".to_string(), "coordinator".to_string()].into_iter().chain(args);
    let cli = Cli::parse_from(argv);
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let code = rt.block_on(async {
        let _telemetry = stampede_common::telemetry::init("stampede", "info", None);
        cli::main(cli).await
    });
    std::process::ExitCode::from(code as u8)
}

pub struct Coordinator {
    child: Child,
    pub pid: u32,
    pub url: String,
    pub log: PathBuf,
}

impl Coordinator {
    /// Starts the coordinator on a free loopback port, its run store and
    /// log in `dir`; `stampede` is an external binary to use instead of
    /// this one. Returns once its port accepts connections.
    pub async fn start(dir: &Path, stampede: Option<&Path>) -> anyhow::Result<Coordinator> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let listen = format!("127.0.0.1:{port}");
        let log = dir.join("coordinator.log");
        let data = dir.join("data");
        let mut cmd = match stampede {
            Some(bin) => {
                let mut c = Command::new(bin);
                c.arg("coordinator");
                c
            }
            None => {
                let mut c = Command::new(std::env::current_exe()?);
                c.arg(CHILD_MODE);
                c
            }
        };
        cmd.args(["--listen", &listen, "--insecure", "--data"]).arg(&data).args(["--keep-runs", "0"]);
        cmd.stdin(Stdio::null()).stdout(Stdio::from(std::fs::File::create(&log)?)).stderr(Stdio::from(std::fs::OpenOptions::new().append(true).open(&log)?));
        cmd.kill_on_drop(true);
        let mut child = cmd.spawn().context("starting the coordinator")?;
        let pid = child.id().context("the coordinator's pid")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(&listen).await.is_ok() {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!("the coordinator exited at start ({status}); its log: {}", log.display());
            }
            if Instant::now() > deadline {
                bail!("the coordinator did not listen on {listen} within 30 s; its log: {}", log.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Coordinator { child, pid, url: format!("http://{listen}"), log })
    }

    /// Stops it as an operator would (SIGTERM), then for good.
    pub async fn stop(mut self) {
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

/// User + system CPU time of a process (all its threads), seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: the fields start after its `)`.
    let rest = stat.rsplit_once(')').context("/proc/PID/stat without a command name")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14 and stime 15 (1-based).
    let ticks: u64 = fields.get(11).context("utime")?.parse::<u64>()? + fields.get(12).context("stime")?.parse::<u64>()?;
    Ok(ticks as f64 / clock_ticks())
}

/// /proc counts CPU time in USER_HZ ticks, which the kernel's ABI fixes
/// at 100 a second on every architecture stampede runs on.
fn clock_ticks() -> f64 {
    100.0
}

/// Raises the soft open-files limit to the hard one (as the agent does for
/// itself); returns the limit now in force.
pub fn raise_open_files_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_or(soft, |()| hard),
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}

/// A `kB` line of /proc/PID/status (`VmHWM`, `VmRSS`), in MiB.
pub fn status_mib(pid: u32, key: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with(key)).with_context(|| format!("no {key} in /proc/{pid}/status"))?;
    let kb: f64 = line.split_whitespace().nth(1).context("a value")?.parse()?;
    Ok(kb / 1024.0)
}

/// CPU seconds per thread name (the busiest first): which of the
/// coordinator's threads did the work.
pub fn cpu_by_thread(pid: u32) -> Vec<(String, f64)> {
    let mut by: std::collections::BTreeMap<String, f64> = Default::default();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else { continue };
        let name = stat.split_once('(').and_then(|(_, r)| r.rsplit_once(')')).map_or("?", |(n, _)| n).to_string();
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0) + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        *by.entry(name).or_default() += ticks as f64 / clock_ticks();
    }
    let mut v: Vec<_> = by.into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}
