//! Issue 11 item 4: how a coordinator copes with a fleet. N simulated
//! agents (this process, real gRPC sessions) against a real coordinator
//! (a child process on loopback): its CPU over the steady part of the run,
//! its peak RSS, the lag from an interval's end to its merge, and a
//! reconnect storm that must lose nothing. Every run must end `pass` with
//! report.json's totals equal to what the agents sent.
//!
//!   cargo run --release -p stampede-fleet-bench -- --agents 100,300,1000 --seconds 60
//!   cargo run --release -p stampede-fleet-bench -- --agents 100,300,1000,3000 --storm 1000
//!
//! See benchmarks/README.md, "Fleet scale".

mod agent;
mod coordinator;
mod payload;
mod report;
mod submit;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::Parser;
use stampede_proto::convert::unix_nanos;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::coordinator::Coordinator;
use crate::payload::Pool;
use crate::report::Row;

#[derive(Debug, Parser)]
#[command(name = "stampede-fleet-bench", about = "A coordinator with N simulated agents: CPU, RSS, merge lag, reconnect storm")]
struct Args {
    /// Fleet sizes to measure, one run each.
    #[arg(long, value_delimiter = ',', default_value = "100,300,1000")]
    agents: Vec<usize>,
    /// Measured duration of each run (a warm-up phase of a sixth of it, then
    /// the steady phase, over which the CPU is measured).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Snapshot interval.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Requests each agent reports per second (spread over 3 steps).
    #[arg(long, default_value_t = 2000)]
    rate_per_agent: u64,
    /// Add a reconnect-storm run with this many agents: every agent drops
    /// its session at once mid-run and resumes (same instance, resending
    /// what was not acknowledged).
    #[arg(long, value_name = "AGENTS")]
    storm: Option<usize>,
    /// Where in the run the storm hits (fraction of its duration).
    #[arg(long, default_value_t = 0.5)]
    storm_at: f64,
    /// Before each run, measure the coordinator's CPU this long with every
    /// agent registered and idle (heartbeats and clock probes only; 0: skip).
    #[arg(long, default_value_t = 10)]
    idle_seconds: u64,
    /// Distinct encoded intervals per phase the agents pick from.
    #[arg(long, default_value_t = 64)]
    pool: usize,
    /// Write the figures as JSON here (default: benchmarks/results/fleet-<UTC>.json
    /// when that folder's parent exists, else only the table).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Use this `stampede` binary as the coordinator instead of this one's
    /// built-in copy of it (the same code, this build's profile).
    #[arg(long)]
    stampede: Option<PathBuf>,
    /// Keep each run's coordinator folder (log, run store) and print where.
    #[arg(long)]
    keep: bool,
}

fn main() -> std::process::ExitCode {
    let mut argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(coordinator::CHILD_MODE) {
        return coordinator::child_main(argv.split_off(2));
    }
    let args = Args::parse();
    // 3 000 sessions need 3 000 sockets here and there: the coordinator
    // inherits the raised limit.
    let files = coordinator::raise_open_files_limit();
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    match rt.block_on(bench(args, files)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn bench(args: Args, files: u64) -> anyhow::Result<bool> {
    let mut runs: Vec<(usize, bool)> = args.agents.iter().map(|&n| (n, false)).collect();
    if let Some(n) = args.storm {
        runs.push((n, true));
    }
    if let Some(&(most, _)) = runs.iter().max_by_key(|(n, _)| *n) {
        if files < most as u64 * 2 + 100 {
            eprintln!("warning: the open-files limit ({files}) is low for {most} sessions on both ends of loopback");
        }
    }
    let mut rows = Vec::new();
    for (n, storm) in runs {
        eprintln!("fleet bench: {n} agents{} x {} s ...", if storm { " with a reconnect storm" } else { "" }, args.seconds);
        let row = measure(&args, n, storm).await?;
        eprintln!("{}", report::row_line(&row));
        rows.push(row);
    }
    println!("{}", report::table(&rows));
    let json = report::json(&rows, &args_json(&args));
    let path = args.json.clone().or_else(default_json_path);
    if let Some(p) = path {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&p, serde_json::to_string_pretty(&json)?)?;
        println!("figures: {}", p.display());
    }
    Ok(rows.iter().all(|r| r.problems.is_empty()))
}

fn args_json(a: &Args) -> serde_json::Value {
    serde_json::json!({
        "agents": a.agents, "seconds": a.seconds, "interval_ms": a.interval_ms, "rate_per_agent": a.rate_per_agent,
        "storm": a.storm, "storm_at": a.storm_at, "pool": a.pool,
        "coordinator": a.stampede.as_ref().map_or("built-in (this binary, __coordinator)".to_string(), |p| p.display().to_string()),
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

/// benchmarks/results/ (git-ignored) when run from the repository.
fn default_json_path() -> Option<PathBuf> {
    let dir = PathBuf::from("benchmarks");
    dir.is_dir().then(|| dir.join("results").join(format!("fleet-{}.json", unix_nanos(SystemTime::now()) / 1_000_000_000)))
}

/// The idle measurement's window (unix nanoseconds): from a second after
/// the last agent registered (its first clock probes are done), `seconds` long.
async fn idle_window(url: &str, pid: u32, agents: usize, seconds: u64) -> anyhow::Result<Option<(i64, i64)>> {
    if seconds == 0 {
        return Ok(None);
    }
    submit::wait_registered(url, agents, Duration::from_secs(120)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    eprintln!("  all {agents} agents registered; idle for {seconds} s (coordinator pid {pid}: profile it now)");
    let from = unix_nanos(SystemTime::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    Ok(Some((from, unix_nanos(SystemTime::now()))))
}

/// One run of `n` agents: coordinator up, agents registered, the run
/// submitted and followed to its result, the figures and the checks.
async fn measure(args: &Args, n: usize, storm: bool) -> anyhow::Result<Row> {
    let dir = tempfile::Builder::new().prefix("stampede-fleet-").tempdir()?;
    let coord = Coordinator::start(dir.path(), args.stampede.as_deref()).await?;
    let interval = Duration::from_millis(args.interval_ms);
    let intervals = (args.seconds * 1000).div_ceil(args.interval_ms);
    let warmup = (args.seconds / 6).max(1);
    let fleet = Arc::new(agent::Fleet {
        url: coord.url.clone(),
        pool: Pool::new(2, args.pool, args.rate_per_agent * args.interval_ms / 1000, n as u64),
        interval,
        intervals,
        warmup_intervals: warmup * 1000 / args.interval_ms,
        storm_at: storm.then_some(args.storm_at),
        shutdown: CancellationToken::new(),
        first_connect: Semaphore::new(64),
        start: Default::default(),
    });
    let agents: Vec<_> = (0..n).map(|i| tokio::spawn(agent::run(fleet.clone(), i))).collect();
    let sampler = report::Sampler::start(coord.pid);
    let idle = idle_window(&coord.url, coord.pid, n, args.idle_seconds).await?;
    let plan = submit::plan(n, args.seconds, warmup, args.interval_ms, args.rate_per_agent);
    let submitted = submit::submit(&coord.url, plan, n).await;
    // Peak RSS and CPU before anything stops.
    let hwm = coordinator::status_mib(coord.pid, "VmHWM").unwrap_or(f64::NAN);
    let rss = coordinator::status_mib(coord.pid, "VmRSS").unwrap_or(f64::NAN);
    let threads = coordinator::cpu_by_thread(coord.pid);
    let samples = sampler.stop().await;
    fleet.shutdown.cancel();
    let mut outcomes = Vec::with_capacity(n);
    for a in agents {
        outcomes.push(a.await?);
    }
    let log = coord.log.clone();
    coord.stop().await;
    let submitted = submitted.map_err(|e| anyhow::anyhow!("{e:#}; the coordinator's log: {}", log.display()))?;
    let start = fleet.start.get().copied();
    let (snapshot_bytes, histograms) = (fleet.pool.mean_bytes(), fleet.pool.mean_histograms());
    let facts = report::Facts { start, idle, snapshot_bytes, histograms, agents: n, storm, interval, intervals, warmup_s: warmup, seconds: args.seconds, hwm_mib: hwm, rss_mib: rss, samples, threads };
    let row = report::row(facts, &submitted, &outcomes);
    if args.keep || !row.problems.is_empty() {
        let kept = dir.keep();
        eprintln!("coordinator folder kept: {} (log: coordinator.log, runs: data/runs/)", kept.display());
    }
    Ok(row)
}
