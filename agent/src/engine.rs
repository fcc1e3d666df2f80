//! Runs an agent's share of a plan on its worker threads and turns their
//! per-interval parts into one [`Interval`] each, in order.

use crate::check::CompiledChecks;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use stampede_common::plan::Plan;
use stampede_common::stats::RunStats;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::http::RequestTemplate;
use crate::worker::{self, Part, WorkerPlan};

/// An agent's share of a run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub plan: Arc<Plan>,
    /// Fraction of every open-model rate this agent generates.
    pub rate_share: f64,
    /// This agent's closed-model and iterations connections, per phase.
    pub concurrency: Vec<u32>,
    /// This agent's iterations, per phase (0 for other models).
    pub iterations: Vec<u64>,
    /// Where this agent stands among the run's agents, to stagger arrivals.
    pub agent_index: u32,
    pub agent_count: u32,
    /// The common start instant, in this agent's clock.
    pub start: SystemTime,
    pub workers: usize,
}

/// One interval of this agent's measurements.
#[derive(Debug, Clone)]
pub struct Interval {
    pub seq: u64,
    pub start: SystemTime,
    pub end: SystemTime,
    /// Requests due in this interval that finished by its end.
    pub stats: RunStats,
    /// Requests due in earlier intervals that finished since, by due seq.
    pub late: BTreeMap<u64, RunStats>,
    /// Requests on the wire at the interval's end, over every worker.
    pub in_flight: u64,
    /// The run's last interval for this agent.
    pub last: bool,
    /// On the last interval: when the agent's first request started.
    pub first_request: Option<SystemTime>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("target `{0}` is not an http://host:port URL")]
    BadTarget(String),
    #[error("cannot resolve target `{0}`: {1}")]
    Resolve(String, String),
    #[error("cannot start a worker thread: {0}")]
    Spawn(std::io::Error),
    #[error("step `{0}`: {1}")]
    Check(String, String),
}

/// Host and port of an `http://host:port[/]` target.
pub fn authority(target: &str) -> Result<&str, EngineError> {
    target
        .strip_prefix("http://")
        .map(|r| r.trim_end_matches('/'))
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .ok_or_else(|| EngineError::BadTarget(target.to_string()))
}

pub(crate) async fn resolve(authority: &str) -> Result<SocketAddr, EngineError> {
    let with_port = if authority.contains(':') { authority.to_string() } else { format!("{authority}:80") };
    let mut addrs = tokio::net::lookup_host(with_port.as_str())
        .await
        .map_err(|e| EngineError::Resolve(authority.to_string(), e.to_string()))?;
    addrs.next().ok_or_else(|| EngineError::Resolve(authority.to_string(), "no address".into()))
}

/// Starts the workers; intervals arrive on the returned channel, the last
/// one marked `last`. Cancelling `cancel` stops the load at once and still
/// delivers what was measured.
pub async fn start(spec: RunSpec, cancel: CancellationToken) -> Result<mpsc::UnboundedReceiver<Interval>, EngineError> {
    let authority = authority(&spec.plan.target)?;
    let addr = resolve(authority).await?;
    // Checks compiled once per run; their plan-wide index runs on across steps.
    let mut base = 0u32;
    let mut templates = Vec::with_capacity(spec.plan.steps.len());
    for s in &spec.plan.steps {
        let checks = CompiledChecks::new(&s.checks, base).map_err(|e| EngineError::Check(s.name.clone(), e))?;
        base += s.checks.len() as u32;
        templates.push(RequestTemplate::new(s, authority).with_checks(checks));
    }
    let templates = Arc::new(templates);
    let workers = spec.workers.max(1);
    let max_connections = raise_open_files_limit();
    // Map the wall-clock start onto this process's monotonic clock once.
    let run_start = match spec.start.duration_since(SystemTime::now()) {
        Ok(ahead) => Instant::now() + ahead,
        Err(behind) => Instant::now() - behind.duration(),
    };

    // One counter per phase for the whole agent: its workers' connections
    // take iterations from it, so a fast connection does more (k6's
    // shared-iterations) and the agent's share is done exactly.
    let iterations: Arc<Vec<AtomicU64>> = Arc::new(spec.iterations.iter().map(|&n| AtomicU64::new(n)).collect());
    let (parts_tx, parts_rx) = mpsc::unbounded_channel();
    for index in 0..workers {
        let connections = spec.concurrency.iter().map(|&c| split(c, workers, index)).collect();
        worker::spawn(WorkerPlan {
            index,
            workers,
            plan: spec.plan.clone(),
            addr,
            templates: templates.clone(),
            rate_share: spec.rate_share,
            arrival_offset: spec.agent_index as f64 / spec.agent_count.max(1) as f64,
            connections,
            iterations: iterations.clone(),
            max_connections,
            run_start,
            parts: parts_tx.clone(),
            cancel: cancel.clone(),
        })
        .map_err(EngineError::Spawn)?;
    }
    // This agent's probes deliver as one more worker (see `probe.rs`).
    let probes = crate::probe::assigned(&spec.plan, spec.agent_index);
    let producers = if probes.is_empty() {
        workers
    } else {
        crate::probe::spawn_runner(crate::probe::RunnerSetup {
            plan: spec.plan.clone(),
            addr,
            authority: authority.to_string(),
            probes,
            run_start,
            worker: workers,
            parts: parts_tx.clone(),
            cancel: cancel.clone(),
        });
        workers + 1
    };
    drop(parts_tx);

    let (tx, rx) = mpsc::unbounded_channel();
    let interval = spec.plan.interval.as_duration();
    tokio::spawn(collect(parts_rx, tx, producers, spec.start, interval));
    Ok(rx)
}

/// Raises this process's soft limit on open files to its hard limit, and
/// returns how many connections a run may then hold (the limit less a
/// reserve for everything else the process has open). An open phase may
/// hold rate × timeout connections (the default in-flight bound,
/// `default_max_in_flight`), and the common soft limit of 1024 would turn
/// the excess into connect errors that look like the server's fault. wrk's
/// and k6's docs ask users for `ulimit -n`; the agent does it itself. The
/// session also calls it to declare the figure in its `Register`, so the
/// coordinator can refuse a share the agent cannot hold.
pub(crate) fn raise_open_files_limit() -> u32 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    const RESERVE: u64 = 256;
    let soft = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(message = "Cannot raise the open-files limit; open-model runs may be short of connections.", soft, hard, error = %e);
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(message = "Cannot read the open-files limit.", error = %e);
            1024
        }
    };
    soft.saturating_sub(RESERVE).clamp(1, u64::from(u32::MAX)) as u32
}

/// `total` spread over `parts` as evenly as integers allow.
pub fn split(total: u32, parts: usize, index: usize) -> u32 {
    let parts = parts as u32;
    total / parts + u32::from((index as u32) < total % parts)
}

/// Merges the workers' parts per interval and emits each interval once every
/// worker still running has delivered it. A worker that sent its last part at
/// `seq` delivers nothing after it.
/// One interval's parts as they come in from the workers.
#[derive(Default)]
struct Pending {
    stats: RunStats,
    late: BTreeMap<u64, RunStats>,
    in_flight: u64,
}

async fn collect(mut parts: mpsc::UnboundedReceiver<Part>, out: mpsc::UnboundedSender<Interval>, workers: usize, start: SystemTime, interval: Duration) {
    let mut pending: BTreeMap<u64, (Pending, usize)> = BTreeMap::new();
    let mut finished_at: Vec<Option<u64>> = vec![None; workers];
    let mut next = 0u64;
    let mut first: Option<Instant> = None;
    // Pairs the monotonic clock with the wall clock once, to convert instants.
    let anchor = (Instant::now(), SystemTime::now());
    while let Some(part) = parts.recv().await {
        if let Some(t) = part.first_request {
            first = Some(first.map_or(t, |f| f.min(t)));
        }
        let entry = pending.entry(part.seq).or_default();
        entry.0.stats.add(&part.stats).expect("one histogram shape");
        for (due, stats) in part.late {
            match entry.0.late.entry(due) {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(stats);
                }
                std::collections::btree_map::Entry::Occupied(mut o) => o.get_mut().add(&stats).expect("one histogram shape"),
            }
        }
        entry.0.in_flight += part.in_flight;
        entry.1 += 1;
        if part.last {
            finished_at[part.worker] = Some(part.seq);
        }
        loop {
            let expected = finished_at.iter().filter(|f| f.is_none_or(|s| s >= next)).count();
            let all_done = finished_at.iter().all(Option::is_some);
            let last_seq = finished_at.iter().flatten().max().copied();
            match pending.get(&next) {
                Some((_, got)) if *got >= expected => {}
                _ => break,
            }
            let (Pending { stats, late, in_flight }, _) = pending.remove(&next).expect("checked above");
            let last = all_done && last_seq == Some(next);
            let begin = start + interval * next as u32;
            let end = if last { SystemTime::now().max(begin) } else { begin + interval };
            let first_request = first.filter(|_| last).map(|t| match t.checked_duration_since(anchor.0) {
                Some(after) => anchor.1 + after,
                None => anchor.1 - anchor.0.duration_since(t),
            });
            if out.send(Interval { seq: next, start: begin, end, stats, late, in_flight, last, first_request }).is_err() {
                return;
            }
            next += 1;
            if last {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_are_even_and_complete() {
        for total in [0, 1, 7, 50, 51] {
            let parts: Vec<u32> = (0..4).map(|i| split(total, 4, i)).collect();
            assert_eq!(parts.iter().sum::<u32>(), total);
            assert!(parts.iter().max().unwrap() - parts.iter().min().unwrap() <= 1);
        }
    }

    #[test]
    fn authorities() {
        assert_eq!(authority("http://127.0.0.1:8080/").unwrap(), "127.0.0.1:8080");
        assert!(authority("https://x").is_err());
        assert!(authority("http://x/y").is_err());
    }
}
