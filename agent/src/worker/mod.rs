//! One load worker: a thread with its own current_thread tokio runtime.
//!
//! Everything a request touches lives on this thread — connection pool,
//! recorder, step picker — behind `Rc`/`RefCell`, so the hot path has no
//! locks, no atomics, no channel hop and no timer shared with other threads.
//! The open model's pacer wakes at each arrival's instant on a timerfd
//! (`pacer.rs`; tokio's own timer rounds up to 1 ms), starts every arrival
//! that came due (each on an idle pooled connection, or a new one), and
//! sleeps again; latency counts from each arrival's *intended* instant, so a
//! late start shows in the numbers instead of hiding (coordinated omission).
//! Measurements leave the thread once per interval, as a whole recorder.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stampede_common::plan::{Model, Plan};
use stampede_common::stats::RunStats;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;

use crate::connect::{Addrs, Dialer, Stream};
use crate::data::StepRows;
use crate::flow::CompiledFlow;
use crate::http::{Conn, RequestTemplate};
use crate::pacer::PreciseTimer;
use crate::recorder::Recorder;

mod loops;
mod open;
mod picker;
mod request;

use picker::StepPicker;

/// How long before the common start a worker leaves tokio's timer (1 ms
/// ticks, deadlines rounded up to the next tick) for the kernel's.
const START_KERNEL_SLEEP: Duration = Duration::from_millis(2);

/// What one worker is told to do.
pub struct WorkerPlan {
    pub index: usize,
    pub workers: usize,
    pub plan: Arc<Plan>,
    /// The target's addresses (every one its name resolves to, kept up to
    /// date by the engine): new connections take each in turn.
    pub addrs: tokio::sync::watch::Receiver<Arc<[SocketAddr]>>,
    /// Where this worker starts in that list (spreads single connections).
    pub addr_offset: usize,
    /// TCP, or TCP and TLS for an `https://` target.
    pub dialer: Dialer,
    pub templates: Arc<Vec<RequestTemplate>>,
    /// Per step: its flow, compiled once (`flow.rs`), or `None` (most steps).
    pub flows: Arc<Vec<Option<CompiledFlow>>>,
    /// Per step: its data rows on this agent (`data.rs`), or `None`.
    pub data: Arc<Vec<Option<StepRows>>>,
    /// This agent's share of every open-model rate, and its stagger offset.
    pub rate_share: f64,
    pub arrival_offset: f64,
    /// This worker's closed-model and iterations connections, per phase.
    pub connections: Vec<u32>,
    /// The agent's iterations left to start, per phase, shared by its
    /// workers (see `engine.rs`).
    pub iterations: Arc<Vec<AtomicU64>>,
    /// The agent's templated requests so far, shared by its workers: `n` of
    /// `{{seq}}` (see [`Fleet`]).
    pub seq: Arc<AtomicU64>,
    pub fleet: Fleet,
    /// How many connections this process may hold (its open-files limit
    /// less a reserve): the default in-flight bound never goes past it.
    pub max_connections: u32,
    pub run_start: Instant,
    pub parts: UnboundedSender<Part>,
    pub cancel: CancellationToken,
}

/// This agent's place in the run, which makes `{{seq}}` and `{{worker}}`
/// unique across the fleet: agent `index` of `count` takes the numbers
/// `index + count × n` (docs/plan.md, "Templates").
#[derive(Debug, Clone, Copy)]
pub struct Fleet {
    pub index: u64,
    pub count: u64,
}

impl Fleet {
    fn unique(self, n: u64) -> u64 {
        self.index + self.count.max(1) * n
    }
}

/// Who sends a request, for `{{worker}}` and `{{iteration}}`: the agent's
/// virtual user (a closed or iterations connection loop, or in an open
/// phase the worker thread) and its request count in the phase.
#[derive(Debug, Clone, Copy)]
struct User {
    local: u64,
    iteration: u64,
}

/// A worker's measurements for interval `seq`.
pub struct Part {
    pub worker: usize,
    pub seq: u64,
    /// Requests due in interval `seq`.
    pub stats: RunStats,
    /// Requests due in earlier intervals that finished since their flush.
    pub late: Vec<(u64, RunStats)>,
    /// Requests sent and not yet answered at the flush.
    pub in_flight: u64,
    /// The worker's last part: it has finished the run.
    pub last: bool,
    /// On the last part: when this worker's schedule began, as measured by
    /// its first request (see [`Worker::note_first_request`]).
    pub first_request: Option<Instant>,
}

pub fn spawn(plan: WorkerPlan) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name(format!("stampede-worker-{}", plan.index)).spawn(move || {
        // The default 50 µs timer slack would make every precise sleep of
        // this thread (the start, the open-model pacer) up to 50 µs late.
        if let Err(error) = nix::sys::prctl::set_timerslack(1) {
            tracing::debug!(message = "Could not lower the timer slack; sleeps may end up to 50 µs late.", %error);
        }
        // Before the first request: see `keep_timestamping_on`.
        crate::rxstamp::keep_timestamping_on();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a current_thread runtime builds");
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, run(plan));
    })
}

/// The state every task of this worker shares.
struct Worker {
    plan: WorkerPlan,
    recorder: RefCell<Recorder>,
    pool: RefCell<Vec<Conn<Stream>>>,
    addrs: RefCell<Addrs>,
    /// Open-model requests started and not finished, plus running closed loops: the in-flight bound.
    in_flight: Cell<u32>,
    /// Requests on the wire (sent, not yet answered, failed or aborted), for progress.
    requests_in_flight: Cell<u64>,
    /// `run_start` + how late the first request started (see [`Worker::note_first_request`]).
    first_request: Cell<Option<Instant>>,
    /// Per phase: its own step mix (`phases[i].steps`) or every step.
    pickers: Vec<StepPicker>,
    timeout: Duration,
    /// The pacer's and the phase starts' clock. One wait at a time: only
    /// `run` and the `pace` it awaits use it.
    timer: PreciseTimer,
    /// `Plan::longest_request`: a flow may outlast one timeout.
    longest: Duration,
    /// Whether requests now stamp their connection's reads with the
    /// kernel's receive time (`rxstamp.rs`): set by an open phase whose
    /// pacer sleeps through responses (`open.rs`).
    stamp_reads: Cell<bool>,
}

impl Worker {
    /// Keeps, from this worker's first request, `run_start` plus how late
    /// that request started against its intended time (a closed loop's
    /// intended time is its phase's start). The agent's start skew is then
    /// this instant minus the common start: the lateness of its schedule,
    /// without the arrival stagger that spreads the agents' first arrivals
    /// over the first inter-arrival gap on purpose (a 2/s plan on 2 agents
    /// starts the second one 0.5 s in, and that is not skew).
    fn note_first_request(&self, intended: Instant, started: Instant) {
        if self.first_request.get().is_none() {
            self.first_request.set(Some(self.plan.run_start + started.saturating_duration_since(intended)));
        }
    }

    /// The agent-wide number of this worker's connection loop `j`: loops
    /// are dealt to workers in turn (`engine::split`), so `j × workers +
    /// index` numbers the agent's loops 0, 1, ... without a gap.
    fn user_of_loop(&self, j: u32) -> u64 {
        j as u64 * self.plan.workers as u64 + self.plan.index as u64
    }
}

impl Worker {
    fn new(plan: WorkerPlan) -> Worker {
        let phases = plan.plan.phases.len();
        Worker {
            recorder: RefCell::new({
                // A plan with flows also records its flow requests (contract F).
                let (recorded, steps) = plan.plan.recorded_shape();
                Recorder::new(recorded, phases, steps, plan.run_start, plan.plan.interval.as_duration())
            }),
            pool: RefCell::new(Vec::new()),
            addrs: RefCell::new(Addrs::new(plan.addrs.clone(), plan.addr_offset)),
            in_flight: Cell::new(0),
            requests_in_flight: Cell::new(0),
            first_request: Cell::new(None),
            pickers: (0..phases).map(|i| StepPicker::new(plan.plan.phase_steps(i).into_iter(), plan.index as u64 ^ ((i as u64) << 32))).collect(),
            timeout: plan.plan.timeout.as_duration(),
            timer: PreciseTimer::new(),
            longest: plan.plan.longest_request(),
            stamp_reads: Cell::new(false),
            plan,
        }
    }
}

async fn run(plan: WorkerPlan) {
    let w = Rc::new(Worker::new(plan));
    let finished = Rc::new(tokio::sync::Notify::new());
    let flusher = tokio::task::spawn_local(flush_intervals(w.clone(), finished.clone()));

    if w.plan.plan.phases.first().is_some_and(|p| p.load.model == Model::Open) {
        if let Some(deadline) = w.plan.run_start.checked_sub(START_KERNEL_SLEEP) {
            open::warm_up(&w, 0, deadline).await;
        }
    }
    wait_for_start(&w.plan).await;
    let offsets = w.plan.plan.phase_offsets();
    for (i, phase) in w.plan.plan.phases.iter().enumerate() {
        let start = w.plan.run_start + offsets[i];
        let end = start + phase.length();
        // On the precise timer: a closed phase's connections start at its
        // instant, not up to a tokio tick (1 ms) after it.
        if start > Instant::now() {
            tokio::select! {
                _ = w.timer.sleep_until(start) => {}
                _ = w.plan.cancel.cancelled() => break,
            }
        } else if w.plan.cancel.is_cancelled() {
            break;
        }
        if run_phase(&w, i, start, end).await.is_break() {
            break;
        }
    }
    drain(&w).await;
    finished.notify_one();
    let _ = flusher.await;
}

/// Runs phase `i`, `start` to `end`; `Break` when the run was cancelled.
async fn run_phase(w: &Rc<Worker>, i: usize, start: Instant, end: Instant) -> ControlFlow<()> {
    match w.plan.plan.phases[i].load.model {
        Model::Open => {
            tokio::select! {
                _ = open::run_phase(w, i, start) => {}
                _ = w.plan.cancel.cancelled() => return ControlFlow::Break(()),
            }
        }
        Model::Closed => {
            for j in 0..w.plan.connections[i] {
                tokio::task::spawn_local(loops::closed_loop(w.clone(), i, start, end, w.user_of_loop(j)));
            }
            tokio::select! {
                _ = sleep_until(end.into()) => {}
                _ = w.plan.cancel.cancelled() => return ControlFlow::Break(()),
            }
        }
        Model::Iterations => return iterations_phase(w, i, start, end).await,
    }
    ControlFlow::Continue(())
}

/// An iterations phase: its loops until each has done its count, or the
/// phase's end.
async fn iterations_phase(w: &Rc<Worker>, i: usize, start: Instant, end: Instant) -> ControlFlow<()> {
    let per_worker = w.plan.plan.phases[i].load.per_worker;
    let loops: Vec<_> = (0..w.plan.connections[i])
        .map(|j| tokio::task::spawn_local(loops::iterations_loop(w.clone(), i, start, end, per_worker, w.user_of_loop(j))))
        .collect();
    let all_done = async {
        for l in loops {
            let _ = l.await;
        }
    };
    tokio::select! {
        _ = all_done => {}
        _ = sleep_until(end.into()) => {}
        _ = w.plan.cancel.cancelled() => return ControlFlow::Break(()),
    }
    // Done early: the next phase still starts at its planned offset (the
    // caller sleeps until then), so every agent agrees on the timeline.
    // After the last phase the run ends now, unless faults are planned on
    // that timeline: then it keeps its length, so no window is cut or left
    // unapplied.
    let last = i + 1 == w.plan.plan.phases.len();
    if last && !w.plan.plan.faults.is_empty() && Instant::now() < end {
        tokio::select! {
            _ = sleep_until(end.into()) => {}
            _ = w.plan.cancel.cancelled() => return ControlFlow::Break(()),
        }
    }
    ControlFlow::Continue(())
}

/// Returns at the run's common start instant (or on cancellation).
///
/// tokio's timer cannot hit an instant closer than its 1 ms tick, so the
/// worker sleeps in tokio only until shortly before, then hands the rest to
/// the kernel: `std::thread::sleep` is a nanosleep on a high-resolution
/// timer, which wakes the thread within the timer slack (50 µs by default)
/// after the instant. Spinning instead is precise only while the spinning
/// thread keeps its core: with several agents' workers (plus the target and
/// coordinator) spinning on 2 cores, the scheduler preempts them for whole
/// time slices — milliseconds — right at the start. Blocking this thread is
/// harmless: nothing else of this worker runs before the start. Measured at
/// the target with 3 agents in namespaces on 2 busy cores (`fleet_sync.rs`):
/// spinning spread first arrivals over up to 4 ms, this over 0.1–0.45 ms.
async fn wait_for_start(plan: &WorkerPlan) {
    let start = plan.run_start;
    if let Some(early) = start.checked_sub(START_KERNEL_SLEEP) {
        tokio::select! {
            _ = sleep_until(early.into()) => {}
            _ = plan.cancel.cancelled() => return,
        }
    }
    let left = start.saturating_duration_since(Instant::now());
    if !left.is_zero() {
        std::thread::sleep(left);
    }
}

/// Waits for requests in flight to finish, at most the longest a request
/// may last (one timeout; a flow's: `Plan::longest_request`).
/// After an abort that is at once: every request still in flight ends as
/// `aborted` as soon as its task sees the cancellation ([`run_or_abort`]),
/// and must be recorded before the last part leaves.
async fn drain(w: &Worker) {
    let deadline = Instant::now() + w.longest + Duration::from_millis(100);
    while w.in_flight.get() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Sends the recorder's content at every interval boundary, and once more
/// (marked last) when the worker has finished.
async fn flush_intervals(w: Rc<Worker>, finished: Rc<tokio::sync::Notify>) {
    let interval = w.plan.plan.interval.as_duration();
    let mut seq = 0u64;
    loop {
        let boundary = w.plan.run_start + interval * (seq as u32 + 1);
        let last = tokio::select! {
            _ = sleep_until(boundary.into()) => false,
            _ = finished.notified() => true,
        };
        let taken = w.recorder.borrow_mut().take(seq, last);
        let first_request = if last { w.first_request.get() } else { None };
        let in_flight = w.requests_in_flight.get();
        let _ = w.plan.parts.send(Part { worker: w.plan.index, seq, stats: taken.stats, late: taken.late, in_flight, last, first_request });
        if last {
            return;
        }
        seq += 1;
    }
}
