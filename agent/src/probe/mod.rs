//! Probes (docs/plan.md "Probes"): requests on a fixed cadence beside the
//! load, run by the first `agents` agents of the run, from the assignment
//! (about a second before the common start) until after the last fault
//! window; and the steady state, the same requests tried once on demand.
//!
//! Probe i is recorded under `StepKey { phase: phases, step: steps + i }`
//! (contract P), so its numbers travel in the agent's snapshots, and merge
//! on the coordinator, like a step's. The runner hands its measurements to
//! the engine as one more worker's parts, so an interval is complete only
//! with them, and the run's last interval is the probes' last when they
//! outlast the load.

mod checks;
pub mod client;
pub mod steady;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stampede_common::histogram::record_us;
use stampede_common::plan::{Plan, Probe};
use stampede_common::stats::{ErrorKind, RunStats, StepKey, StepRecord};
use stampede_common::units::StatusSet;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use self::checks::ProbeChecks;
use crate::connect::{Addrs, Dialer};
use crate::template::{Ctx, Dynamic};
use crate::worker::Part;

/// One probe of the plan, ready to send.
#[derive(Clone)]
pub struct CompiledProbe {
    pub index: usize,
    pub name: String,
    request: Vec<u8>,
    /// A probe with `{{...}}`: rendered per attempt instead of `request`,
    /// `{{seq}}` and `{{iteration}}` from `attempts` (docs/plan.md, "Templates").
    dynamic: Option<Arc<Dynamic>>,
    attempts: Arc<AtomicU64>,
    head: bool,
    expect: StatusSet,
    timeout: Duration,
    checks: ProbeChecks,
}

impl CompiledProbe {
    /// Probe `index` of a validated `plan` (its checks compile).
    pub fn new(plan: &Plan, index: usize, authority: &str) -> Result<CompiledProbe, String> {
        let p: &Probe = &plan.probes[index];
        let mut request = client::serialize(&p.request, authority);
        let dynamic = match Dynamic::new(&p.request, authority, client::PROBE_HEADERS, Default::default()) {
            None => None,
            // Only `\{{` escapes: the same bytes every time.
            Some(d) if d.is_static() => {
                request = d.render(Ctx::default());
                None
            }
            Some(d) => Some(Arc::new(d)),
        };
        Ok(CompiledProbe {
            index,
            name: p.name.clone(),
            request,
            dynamic,
            attempts: Arc::new(AtomicU64::new(0)),
            head: p.request.method == "HEAD",
            expect: p.expect.as_ref().map(|e| e.status.clone()).unwrap_or_default(),
            timeout: p.timeout.unwrap_or(plan.timeout).as_duration(),
            checks: ProbeChecks::new(&p.checks, plan.probe_check_base(index)).map_err(|e| format!("probe {}: {e}", p.name))?,
        })
    }
}

/// What one probe request found.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// `None` when it succeeded: the failed request's kind otherwise.
    pub error: Option<ErrorKind>,
    /// 0 when no response arrived.
    pub status: u16,
    /// Why it failed, in words; empty when it succeeded.
    pub detail: String,
    pub started: Instant,
    pub done: Instant,
    pub sent: u64,
    pub received: u64,
    /// Each check's plan-wide index and whether it passed (none without a response).
    pub checks: Vec<(u32, bool)>,
}

impl Attempt {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// Sends `probe` once, on a new connection to `addr`, and judges the
/// response by its success rule.
pub async fn attempt(probe: &CompiledProbe, dialer: &Dialer, addr: SocketAddr) -> Attempt {
    let rendered = probe.dynamic.as_ref().map(|d| {
        let n = probe.attempts.fetch_add(1, Ordering::Relaxed);
        d.render(Ctx { seq: n, worker: 0, iteration: n })
    });
    let request = rendered.as_deref().unwrap_or(&probe.request);
    let started = Instant::now();
    let result = client::fetch(dialer, addr, request, probe.head, probe.timeout).await;
    let done = Instant::now();
    let mut a = Attempt { error: None, status: 0, detail: String::new(), started, done, sent: request.len() as u64, received: 0, checks: Vec::new() };
    match result {
        Err(kind) => {
            a.error = Some(kind);
            a.detail = match kind {
                ErrorKind::Timeout => format!("no response within {:?}", probe.timeout),
                ErrorKind::Connect => format!("cannot connect to {addr}"),
                ErrorKind::Tls => format!("the TLS handshake with {addr} failed"),
                other => format!("no valid response ({})", other.as_str()),
            };
        }
        Ok(r) => {
            a.status = r.status;
            a.received = r.received;
            let checked = probe.checks.evaluate(&r);
            a.checks = checked.results;
            if !probe.expect.contains(r.status) {
                a.error = Some(ErrorKind::for_status(r.status));
                a.detail = format!("status {} is not one the probe accepts ({})", r.status, String::from(probe.expect.clone()));
            } else if let Some(failed) = checked.failed {
                // Accepted by status, refused by a check: a failure of kind `check`.
                a.error = Some(ErrorKind::Check);
                a.detail = failed;
            }
        }
    }
    a
}

/// Indices of the probes this agent runs: probe p runs on the run's first
/// `p.agents` agents by index.
pub fn assigned(plan: &Plan, agent_index: u32) -> Vec<usize> {
    plan.probes.iter().enumerate().filter(|(_, p)| agent_index < p.agents).map(|(i, _)| i).collect()
}

/// Adds one attempt of probe `index` (intended at `due`) to `stats`.
fn record(stats: &mut RunStats, plan: &Plan, index: usize, due: Instant, a: &Attempt) {
    let key = StepKey { phase: plan.probe_phase(), step: plan.probe_step(index), ok: a.ok() };
    let r: &mut StepRecord = stats.steps.entry(key).or_default();
    let micros = |d: Duration| d.as_micros() as u64;
    record_us(&mut r.latency, micros(a.done.saturating_duration_since(due)));
    record_us(&mut r.service, micros(a.done - a.started));
    record_us(&mut r.dispatch, micros(a.started.saturating_duration_since(due)));
    r.requests += 1;
    if let Some(kind) = a.error {
        r.errors[kind as usize] += 1;
    }
    r.bytes_sent += a.sent;
    r.bytes_received += a.received;
    if a.status > 0 {
        *r.statuses.entry(a.status).or_default() += 1;
    }
    for &(check, passed) in &a.checks {
        let c = r.checks.entry(check).or_default();
        if passed {
            c.passed += 1;
        } else {
            c.failed += 1;
        }
    }
}

/// Where the probe runner delivers its parts, as one more worker.
pub struct RunnerSetup {
    pub plan: Arc<Plan>,
    /// The target's addresses: each probe request takes the next one.
    pub addrs: tokio::sync::watch::Receiver<Arc<[SocketAddr]>>,
    pub dialer: Dialer,
    pub authority: String,
    pub probes: Vec<usize>,
    /// The common start in this process's monotonic clock.
    pub run_start: Instant,
    /// The worker index its parts carry.
    pub worker: usize,
    pub parts: UnboundedSender<Part>,
    pub cancel: CancellationToken,
}

/// What the probes measured and not yet handed over, by the interval each
/// request was due in (the timeline's rule, docs/plan.md "Timeline and
/// intervals"), and how many are on the wire now.
#[derive(Default)]
struct Book {
    by_due: BTreeMap<u64, RunStats>,
    in_flight: u64,
}

/// Runs this agent's probes until each one's end (`Plan::probe_end`) or the
/// run's cancellation, sending what they measured at every interval
/// boundary like a worker, the last part marked `last`.
pub fn spawn_runner(s: RunnerSetup) {
    let stats = Arc::new(Mutex::new(Book::default()));
    let mut tasks = tokio::task::JoinSet::new();
    for &i in &s.probes {
        let probe = match CompiledProbe::new(&s.plan, i, &s.authority) {
            Ok(p) => p,
            Err(e) => {
                // The plan was validated, so its checks compile; say so if not.
                tracing::warn!(message = "Probe not run: its checks do not compile.", error = %e);
                continue;
            }
        };
        let end = s.run_start + s.plan.probe_end(&s.plan.probes[i]);
        let every = s.plan.probes[i].every.as_duration();
        let (plan, stats, cancel, run_start) = (s.plan.clone(), stats.clone(), s.cancel.clone(), s.run_start);
        let (mut addrs, dialer) = (Addrs::new(s.addrs.clone(), i), s.dialer.clone());
        let interval = s.plan.interval.as_duration();
        tasks.spawn(async move {
            let mut due = Instant::now();
            while due < end && !cancel.is_cancelled() {
                tokio::select! {
                    _ = tokio::time::sleep_until(due.into()) => {}
                    _ = cancel.cancelled() => break,
                }
                let lock = || stats.lock().unwrap_or_else(|e| e.into_inner());
                lock().in_flight += 1;
                let a = tokio::select! {
                    a = attempt(&probe, &dialer, addrs.pick()) => Some(a),
                    _ = cancel.cancelled() => None,
                };
                let mut book = lock();
                book.in_flight -= 1;
                let Some(a) = a else { break };
                // Before the start (the assignment's lead): interval 0.
                let seq = (due.saturating_duration_since(run_start).as_nanos() / interval.as_nanos().max(1)) as u64;
                record(book.by_due.entry(seq).or_default(), &plan, i, due, &a);
                drop(book);
                // A probe slower than its cadence skips the beats it missed.
                due += every;
                let now = Instant::now();
                while due < now {
                    due += every;
                }
            }
        });
    }
    tokio::spawn(flush(s, stats, tasks));
}

/// Hands the probes' measurements over at every interval boundary, and
/// once more, marked last, when every probe has ended.
async fn flush(s: RunnerSetup, stats: Arc<Mutex<Book>>, mut tasks: tokio::task::JoinSet<()>) {
    let interval = s.plan.interval.as_duration();
    let mut seq = 0u64;
    let mut running = true;
    loop {
        let boundary = s.run_start + interval * (seq as u32 + 1);
        if running {
            tokio::select! {
                _ = tokio::time::sleep_until(boundary.into()) => {}
                next = tasks.join_next() => {
                    match next {
                        Some(_) => continue,
                        None => running = false,
                    }
                }
            }
        }
        let (taken, late, in_flight) = {
            let mut book = stats.lock().unwrap_or_else(|e| e.into_inner());
            // Due now, and late completions of earlier intervals; anything
            // due later (a probe past the boundary already) waits its turn.
            let later = book.by_due.split_off(&(seq + 1));
            let mut upto = std::mem::replace(&mut book.by_due, later);
            let taken = upto.remove(&seq).unwrap_or_default();
            (taken, upto.into_iter().collect(), book.in_flight)
        };
        let last = !running;
        if s.parts.send(Part { worker: s.worker, seq, stats: taken, late, in_flight, last, first_request: None }).is_err() || last {
            return;
        }
        seq += 1;
    }
}
