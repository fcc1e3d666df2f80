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
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::connect::{self, Dialer, Endpoint, Resolver};
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
    #[error("target `{0}` is not an http://host:port or https://host:port URL")]
    BadTarget(String),
    #[error("target `{0}`: {1}")]
    Tls(String, String),
    #[error("cannot resolve target `{0}`: {1}")]
    Resolve(String, String),
    #[error("cannot start a worker thread: {0}")]
    Spawn(std::io::Error),
    #[error("step `{0}`: {1}")]
    Check(String, String),
}

/// Host and port of an `http(s)://host:port[/]` target.
pub fn authority(target: &str) -> Result<&str, EngineError> {
    target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
        .map(|r| r.trim_end_matches('/'))
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .ok_or_else(|| EngineError::BadTarget(target.to_string()))
}

/// The plan's target, ready to connect to: its URL taken apart, every
/// address its name resolves to now, and the dialer (with the plan's TLS
/// files read on this node).
pub(crate) struct Target {
    pub endpoint: Endpoint,
    pub addrs: Vec<SocketAddr>,
    pub dialer: Dialer,
}

pub(crate) async fn target(plan: &Plan, resolver: &Resolver) -> Result<Target, EngineError> {
    let endpoint = Endpoint::parse(&plan.target).map_err(|_| EngineError::BadTarget(plan.target.clone()))?;
    let addrs = connect::resolve(resolver, &endpoint.host_port()).await.map_err(|e| EngineError::Resolve(endpoint.authority.clone(), e))?;
    let dialer = Dialer::new(&endpoint, plan.tls.as_ref()).map_err(|e| EngineError::Tls(plan.target.clone(), e))?;
    Ok(Target { endpoint, addrs, dialer })
}

/// Starts the workers; intervals arrive on the returned channel, the last
/// one marked `last`. Cancelling `cancel` stops the load at once and still
/// delivers what was measured.
pub async fn start(spec: RunSpec, cancel: CancellationToken) -> Result<mpsc::UnboundedReceiver<Interval>, EngineError> {
    start_with_resolver(spec, cancel, connect::system_resolver()).await
}

/// [`start`], resolving the target's name with `resolver` (tests make a
/// name resolve to several loopback addresses with it).
pub async fn start_with_resolver(spec: RunSpec, cancel: CancellationToken, resolver: Resolver) -> Result<mpsc::UnboundedReceiver<Interval>, EngineError> {
    // This agent's probes deliver as one more worker (see `probe.rs`).
    let probes = crate::probe::assigned(&spec.plan, spec.agent_index);
    // A fault-only agent (`--capacity 0`) that runs no probe never
    // connects: it needs neither the target's addresses nor its TLS files
    // (a service node has no reason to hold the load's CA or client key,
    // nor to resolve a name only the load agents can), only its intervals.
    let connects = spec.rate_share > 0.0 || spec.concurrency.iter().any(|&c| c > 0) || !probes.is_empty();
    let (endpoint, addrs, dialer) = reach(&spec.plan, connects, resolver, &cancel).await?;
    let authority = endpoint.authority.as_str();
    let Requests { templates, flows } = compile_requests(&spec.plan, authority)?;
    // Per step with `data:`: its rows on this agent, drawn by every worker.
    let data = Arc::new(crate::data::StepRows::for_plan(&spec.plan, spec.agent_index, spec.agent_count));
    let workers = spec.workers.max(1);
    let max_connections = crate::open_files::raise_limit();
    let run_start = monotonic(spec.start);

    // One counter per phase for the whole agent: its workers' connections
    // take iterations from it, so a fast connection does more (k6's
    // shared-iterations) and the agent's share is done exactly.
    let iterations: Arc<Vec<AtomicU64>> = Arc::new(spec.iterations.iter().map(|&n| AtomicU64::new(n)).collect());
    // `{{seq}}`'s count for the whole agent (docs/plan.md, "Templates").
    let seq = Arc::new(AtomicU64::new(0));
    let (parts_tx, parts_rx) = mpsc::unbounded_channel();
    for index in 0..workers {
        let connections = spec.concurrency.iter().map(|&c| split(c, workers, index)).collect();
        worker::spawn(WorkerPlan {
            index,
            workers,
            plan: spec.plan.clone(),
            addrs: addrs.clone(),
            addr_offset: index + spec.agent_index as usize,
            dialer: dialer.clone(),
            templates: templates.clone(),
            flows: flows.clone(),
            data: data.clone(),
            rate_share: spec.rate_share,
            arrival_offset: spec.agent_index as f64 / spec.agent_count.max(1) as f64,
            connections,
            iterations: iterations.clone(),
            seq: seq.clone(),
            fleet: worker::Fleet { index: spec.agent_index as u64, count: spec.agent_count.max(1) as u64 },
            max_connections,
            run_start,
            parts: parts_tx.clone(),
            cancel: cancel.clone(),
        })
        .map_err(EngineError::Spawn)?;
    }
    let producers = if probes.is_empty() {
        workers
    } else {
        crate::probe::spawn_runner(crate::probe::RunnerSetup {
            plan: spec.plan.clone(),
            addrs: addrs.clone(),
            dialer: dialer.clone(),
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
    let max_late = stampede_proto::limits::late_intervals(interval, spec.plan.longest_request());
    tokio::spawn(collect(parts_rx, tx, producers, spec.start, interval, max_late));
    Ok(rx)
}

/// The target as the workers reach it: its URL taken apart, and — when
/// this agent `connects` at all — the addresses its name resolves to (again
/// every `RESOLVE_EVERY`, the workers spreading their new connections over
/// the current list) and the dialer; else addresses nobody dials.
async fn reach(plan: &Plan, connects: bool, resolver: Resolver, cancel: &CancellationToken) -> Result<(Endpoint, watch::Receiver<Arc<[SocketAddr]>>, Dialer), EngineError> {
    if !connects {
        let endpoint = Endpoint::parse(&plan.target).map_err(|_| EngineError::BadTarget(plan.target.clone()))?;
        let (addrs, dialer) = connect::never_dialed();
        return Ok((endpoint, addrs, dialer));
    }
    let Target { endpoint, addrs, dialer } = target(plan, &resolver).await?;
    let addrs = connect::watch_addresses(resolver, &endpoint, addrs, cancel.clone());
    Ok((endpoint, addrs, dialer))
}

/// The steps' request templates with their checks, and the flow steps'
/// requests (`flow.rs`), compiled once per run; the checks' plan-wide index
/// runs on across steps.
fn compile_requests(plan: &Plan, authority: &str) -> Result<Requests, EngineError> {
    let mut base = 0u32;
    let mut templates = Vec::with_capacity(plan.steps.len());
    for s in &plan.steps {
        let checks = CompiledChecks::new(&s.checks, base).map_err(|e| EngineError::Check(s.name.clone(), e))?;
        base += s.checks.len() as u32;
        templates.push(RequestTemplate::new(s, authority).with_checks(checks));
    }
    let user_agent = concat!("User-Agent: stampede/", env!("CARGO_PKG_VERSION"), "\r\n");
    let flows = (0..plan.steps.len())
        .map(|i| crate::flow::CompiledFlow::new(plan, i, authority, user_agent).map_err(|e| EngineError::Check(plan.steps[i].name.clone(), e)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Requests { templates: Arc::new(templates), flows: Arc::new(flows) })
}

/// The run's requests, compiled once and shared by every worker.
struct Requests {
    templates: Arc<Vec<RequestTemplate>>,
    /// A flow step's requests, by step index (`None` for a plain step).
    flows: Arc<Vec<Option<crate::flow::CompiledFlow>>>,
}

/// The wall-clock `start` on this process's monotonic clock, mapped once.
fn monotonic(start: SystemTime) -> Instant {
    match start.duration_since(SystemTime::now()) {
        Ok(ahead) => Instant::now() + ahead,
        Err(behind) => Instant::now() - behind.duration(),
    }
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

/// `max_late`: how many intervals back a late completion may be filed
/// (`limits::late_intervals`); anything older goes into the oldest of them.
async fn collect(mut parts: mpsc::UnboundedReceiver<Part>, out: mpsc::UnboundedSender<Interval>, workers: usize, start: SystemTime, interval: Duration, max_late: u64) {
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
            match entry.0.late.entry(due.max(part.seq.saturating_sub(max_late))) {
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

    #[tokio::test]
    async fn a_completion_later_than_the_bounds_allow_is_filed_in_the_oldest_interval_they_allow() {
        let (parts_tx, parts_rx) = mpsc::unbounded_channel();
        let (out_tx, mut out_rx) = mpsc::unbounded_channel();
        tokio::spawn(collect(parts_rx, out_tx, 1, SystemTime::now(), Duration::from_secs(1), 2));
        let one = |requests| {
            let mut s = RunStats::default();
            s.steps.insert(stampede_common::stats::StepKey { phase: 0, step: 0, ok: true }, stampede_common::stats::StepRecord { requests, ..Default::default() });
            s
        };
        for seq in 0..10 {
            // At interval 9, completions due in 2 (a pacer far behind) and in 8.
            let late = if seq == 9 { vec![(2, one(3)), (8, one(1))] } else { vec![] };
            parts_tx.send(Part { worker: 0, seq, stats: RunStats::default(), late, in_flight: 0, last: seq == 9, first_request: None }).unwrap();
        }
        let mut last = None;
        while let Some(i) = out_rx.recv().await {
            last = Some(i);
        }
        let late = last.unwrap().late;
        assert_eq!(late.keys().copied().collect::<Vec<_>>(), vec![7, 8], "filed two intervals back at most");
        assert_eq!(late[&7].summarize(|_| true).requests, 3);
    }

    #[test]
    fn authorities() {
        assert_eq!(authority("http://127.0.0.1:8080/").unwrap(), "127.0.0.1:8080");
        assert_eq!(authority("https://x").unwrap(), "x");
        assert!(authority("ftp://x").is_err());
        assert!(authority("http://x/y").is_err());
    }
}
