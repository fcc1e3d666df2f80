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
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stampede_common::plan::{default_max_in_flight, Model, Plan};
use stampede_common::stats::{ErrorKind, RunStats};
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;

use crate::connect::{Addrs, Dialer, Stream};
use crate::flow::{CompiledFlow, Kept};
use crate::http::{Conn, RequestError, RequestTemplate, Response};
use crate::template::Ctx;
use crate::pacer::PreciseTimer;
use crate::recorder::{Outcome, Recorder};
use crate::schedule::ArrivalSchedule;

/// How long before the common start a worker leaves tokio's timer (1 ms
/// ticks, deadlines rounded up to the next tick) for the kernel's.
const START_KERNEL_SLEEP: Duration = Duration::from_millis(2);

/// Most arrivals the pacer starts or drops before it yields to its runtime.
const PACE_BATCH: u32 = 1024;
/// How long after its phase's end a pacer that fell behind still starts
/// due arrivals; the rest are counted as dropped. A healthy pacer is done
/// within a timer tick of the end (its last arrivals are due just before it).
const PACE_GRACE: Duration = Duration::from_millis(100);

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

async fn run(plan: WorkerPlan) {
    let phases = plan.plan.phases.len();
    let w = Rc::new(Worker {
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
        plan,
    });
    let finished = Rc::new(tokio::sync::Notify::new());
    let flusher = tokio::task::spawn_local(flush_intervals(w.clone(), finished.clone()));

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
        match phase.load.model {
            Model::Open => {
                let load = &phase.load;
                let r0 = load.rate.map_or(0.0, |r| r.as_per_second());
                let r1 = load.to.map_or(r0, |r| r.as_per_second());
                let schedule = ArrivalSchedule::new(r0, r1, phase.length(), w.plan.rate_share, w.plan.arrival_offset);
                let peak = r0.max(r1) * w.plan.rate_share;
                let per_agent = load.max_in_flight.unwrap_or_else(|| {
                    let wanted = default_max_in_flight(peak, w.longest);
                    if wanted > w.plan.max_connections && w.plan.index == 0 {
                        tracing::warn!(
                            message = "The open-files limit is below the default in-flight bound: a stalled target will show as dropped arrivals. Raise `ulimit -n` (LimitNOFILE) or set max_in_flight.",
                            phase = %phase.name, wanted, allowed = w.plan.max_connections
                        );
                    }
                    wanted.min(w.plan.max_connections)
                });
                let limit = per_agent.div_ceil(w.plan.workers as u32).max(1);
                tokio::select! {
                    _ = pace(&w, i, start, schedule, limit) => {}
                    _ = w.plan.cancel.cancelled() => break,
                }
            }
            Model::Closed => {
                for j in 0..w.plan.connections[i] {
                    tokio::task::spawn_local(closed_loop(w.clone(), i, start, end, w.user_of_loop(j)));
                }
                tokio::select! {
                    _ = sleep_until(end.into()) => {}
                    _ = w.plan.cancel.cancelled() => break,
                }
            }
            Model::Iterations => {
                let per_worker = phase.load.per_worker;
                let loops: Vec<_> = (0..w.plan.connections[i])
                    .map(|j| tokio::task::spawn_local(iterations_loop(w.clone(), i, start, end, per_worker, w.user_of_loop(j))))
                    .collect();
                let all_done = async {
                    for l in loops {
                        let _ = l.await;
                    }
                };
                tokio::select! {
                    _ = all_done => {}
                    _ = sleep_until(end.into()) => {}
                    _ = w.plan.cancel.cancelled() => break,
                }
                // Done early: the next phase still starts at its planned
                // offset (the loop above sleeps until then), so every agent
                // agrees on the timeline. After the last phase the run ends
                // now, unless faults are planned on that timeline: then it
                // keeps its length, so no window is cut or left unapplied.
                let last = i + 1 == w.plan.plan.phases.len();
                if last && !w.plan.plan.faults.is_empty() && Instant::now() < end {
                    tokio::select! {
                        _ = sleep_until(end.into()) => {}
                        _ = w.plan.cancel.cancelled() => break,
                    }
                }
            }
        }
    }
    drain(&w).await;
    finished.notify_one();
    let _ = flusher.await;
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

/// The open-model pacer: this worker takes every `workers`-th arrival of the
/// agent's schedule, starting with its own index. Arrivals still unstarted
/// [`PACE_GRACE`] after the phase's end are counted as dropped at once: the
/// pacer never runs on past its phase.
async fn pace(w: &Rc<Worker>, phase: usize, start: Instant, schedule: ArrivalSchedule, limit: u32) {
    let phase_end = start + w.plan.plan.phases[phase].length();
    let total = schedule.count();
    let stride = w.plan.workers as u64;
    let mut k = w.plan.index as u64;
    if k >= total {
        // No arrival of this phase is this worker's (a fault-only agent's
        // share is 0): it idles to the phase's end rather than ending the
        // agent's run early, so its intervals reach the run's end like
        // everyone's and its faults keep their windows.
        sleep_until(phase_end.into()).await;
        return;
    }
    while k < total {
        let due = start + schedule.time_of(k);
        let now = Instant::now();
        if due > now {
            w.timer.sleep_until(due).await;
            continue;
        }
        // Start what came due while we slept, in batches: an await between
        // them lets the requests run and the abort be seen. A worker that
        // started every due arrival in one loop never returned to its
        // runtime once more were due than it could start (`1e12/s`), and
        // outlived its run at 100 % CPU (issue 8, item 10).
        if now >= phase_end + PACE_GRACE {
            let left = (total - k).div_ceil(stride);
            w.recorder.borrow_mut().dropped(phase, w.pickers[phase].pick(), left);
            return;
        }
        let mut batch = 0;
        while k < total && batch < PACE_BATCH {
            batch += 1;
            let intended = start + schedule.time_of(k);
            if intended > now {
                break;
            }
            if w.in_flight.get() >= limit {
                // Not sent, and still a user who was not served: a failed
                // request as well as a schedule miss.
                let mut recorder = w.recorder.borrow_mut();
                recorder.arrival(phase, None);
                recorder.request(phase, w.pickers[phase].pick(), Outcome::Failed(ErrorKind::Dropped), intended, now, now, 0);
            } else {
                w.in_flight.set(w.in_flight.get() + 1);
                let user = User { local: w.plan.index as u64, iteration: k };
                tokio::task::spawn_local(open_request(w.clone(), phase, intended, user));
            }
            k += stride;
        }
        if batch == PACE_BATCH {
            tokio::task::yield_now().await;
        }
    }
}

async fn open_request(w: Rc<Worker>, phase: usize, intended: Instant, user: User) {
    let started = Instant::now();
    w.note_first_request(intended, started);
    w.recorder.borrow_mut().arrival(phase, Some(started.saturating_duration_since(intended)));
    let step = w.pickers[phase].pick();
    let conn = w.pool.borrow_mut().pop();
    let (outcome, conn, handshake, sent) = run_step(&w, conn, phase, step, user, intended).await;
    let done = Instant::now();
    {
        let mut recorder = w.recorder.borrow_mut();
        recorder.request(phase, step, outcome, intended, started, done, sent);
        if let Some(h) = handshake {
            recorder.handshake(phase, step, outcome, intended, h);
        }
    }
    if let Some(c) = conn {
        w.pool.borrow_mut().push(c);
    }
    w.in_flight.set(w.in_flight.get() - 1);
}

/// One closed-model connection: the next request goes out when the previous
/// one answered, until the phase ends.
async fn closed_loop(w: Rc<Worker>, phase: usize, phase_start: Instant, end: Instant, user: u64) {
    connection_loop(w, phase, phase_start, end, user, || true).await;
}

/// One iterations connection: like a closed one, but each request first
/// takes an iteration — one of its own `per_worker`, or one of the agent's
/// shared count — and the loop ends when none is left (or at `end`, the
/// phase's `max_duration`: what is left then does not run).
async fn iterations_loop(w: Rc<Worker>, phase: usize, phase_start: Instant, end: Instant, per_worker: Option<u32>, user: u64) {
    let shared = w.plan.iterations.clone();
    let mut own = per_worker.unwrap_or(0);
    let take = move || match per_worker {
        Some(_) => own.checked_sub(1).map(|left| own = left).is_some(),
        // One atomic per request, against an HTTP round trip: nothing.
        None => shared[phase].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok(),
    };
    connection_loop(w, phase, phase_start, end, user, take).await;
}

/// A connection sending one request after the other while `next()` allows
/// and the phase lasts; `user` is the loop's agent-wide number.
async fn connection_loop(w: Rc<Worker>, phase: usize, phase_start: Instant, end: Instant, user: u64, mut next: impl FnMut() -> bool) {
    w.in_flight.set(w.in_flight.get() + 1);
    let mut conn = w.pool.borrow_mut().pop();
    let mut iteration = 0u64;
    while Instant::now() < end && !w.plan.cancel.is_cancelled() && next() {
        let step = w.pickers[phase].pick();
        let started = Instant::now();
        w.note_first_request(phase_start, started);
        let (outcome, back, handshake, sent) = run_step(&w, conn.take(), phase, step, User { local: user, iteration }, started).await;
        iteration += 1;
        let done = Instant::now();
        {
            let mut recorder = w.recorder.borrow_mut();
            recorder.request(phase, step, outcome, started, started, done, sent);
            if let Some(h) = handshake {
                recorder.handshake(phase, step, outcome, started, h);
            }
        }
        conn = back;
        if matches!(outcome, Outcome::Failed(ErrorKind::Connect | ErrorKind::Tls)) {
            // A refused connection (or certificate) fails in microseconds;
            // without a pause a down server turns the loop into a busy spin
            // of errors.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    if let Some(c) = conn {
        w.pool.borrow_mut().push(c);
    }
    w.in_flight.set(w.in_flight.get() - 1);
}

/// One request of `step`, or for a flow step one execution of its flow
/// (boxed: the plain step's future stays the size it was).
async fn run_step(w: &Worker, conn: Option<Conn<Stream>>, phase: usize, step: usize, user: User, intended: Instant) -> (Outcome, Option<Conn<Stream>>, Option<Duration>, u64) {
    match &w.plan.flows[step] {
        None => run_or_abort(w, conn, step, user).await,
        Some(flow) => {
            let (outcome, conn, sent) = Box::pin(run_flow(w, flow, conn, phase, user, intended)).await;
            // Handshakes are recorded with the flow's requests.
            (outcome, conn, None, sent)
        }
    }
}

/// One execution of a flow: its requests recorded under their flow slots
/// in the flow phase of `phase` (contract F), sent like any request.
async fn run_flow(w: &Worker, flow: &CompiledFlow, conn: Option<Conn<Stream>>, phase: usize, user: User, intended: Instant) -> (Outcome, Option<Conn<Stream>>, u64) {
    let io = FlowIo { w, phase: w.plan.plan.flow_phase(phase) as usize };
    let fleet = w.plan.fleet;
    let ctx = || Ctx { seq: fleet.unique(w.plan.seq.fetch_add(1, Ordering::Relaxed)), worker: fleet.unique(user.local), iteration: user.iteration };
    crate::flow::run(&io, flow, conn, ctx, intended).await
}

struct FlowIo<'a> {
    w: &'a Worker,
    phase: usize,
}

impl crate::flow::Send1 for FlowIo<'_> {
    async fn send(&self, conn: Option<Conn<Stream>>, template: &RequestTemplate, wire: &[u8], kept: &mut Kept) -> Option<(Outcome, Option<Conn<Stream>>, Option<Duration>)> {
        let w = self.w;
        w.requests_in_flight.set(w.requests_in_flight.get() + 1);
        let done = tokio::select! {
            done = execute(w, conn, template, Some(wire), Some(kept)) => Some(done),
            _ = w.plan.cancel.cancelled() => None,
        };
        w.requests_in_flight.set(w.requests_in_flight.get() - 1);
        done
    }

    fn record(&self, slot: usize, outcome: Outcome, intended: Instant, started: Instant, done: Instant, sent: u64, handshake: Option<Duration>) {
        let mut recorder = self.w.recorder.borrow_mut();
        recorder.request(self.phase, slot, outcome, intended, started, done, sent);
        if let Some(h) = handshake {
            recorder.handshake(self.phase, slot, outcome, intended, h);
        }
    }

    async fn wait(&self, at: Instant) -> bool {
        tokio::select! {
            _ = sleep_until(at.into()) => true,
            _ = self.w.plan.cancel.cancelled() => false,
        }
    }
}

/// [`execute`], cut short by the run's cancellation: a request in flight
/// when the run is stopped early fails as `aborted` (the connection, mid
/// request, is not reused). Without this an interrupted run's report
/// silently lost every request it had sent and not yet seen answered.
/// The last value is the request's bytes on the wire.
async fn run_or_abort(w: &Worker, conn: Option<Conn<Stream>>, step: usize, user: User) -> (Outcome, Option<Conn<Stream>>, Option<Duration>, u64) {
    w.requests_in_flight.set(w.requests_in_flight.get() + 1);
    let template = &w.plan.templates[step];
    // A templated step is rendered here, once per request (a retry on a
    // fresh connection resends the same bytes); every other step sends
    // the bytes serialized once, as before templates existed.
    let rendered = template.dynamic().map(|d| {
        let fleet = w.plan.fleet;
        let n = w.plan.seq.fetch_add(1, Ordering::Relaxed);
        d.render(Ctx { seq: fleet.unique(n), worker: fleet.unique(user.local), iteration: user.iteration })
    });
    let sent = rendered.as_ref().map_or(template.wire_len(), Vec::len) as u64;
    let done = tokio::select! {
        (outcome, conn, handshake) = execute(w, conn, template, rendered.as_deref(), None) => (outcome, conn, handshake, sent),
        _ = w.plan.cancel.cancelled() => (Outcome::Failed(ErrorKind::Aborted), None, None, sent),
    };
    w.requests_in_flight.set(w.requests_in_flight.get() - 1);
    done
}

/// A new connection to the target's next address, and its TLS handshake time.
async fn dial(w: &Worker) -> Result<(Conn<Stream>, Option<Duration>), ErrorKind> {
    let addr = w.addrs.borrow_mut().pick();
    let (stream, handshake) = w.plan.dialer.dial(addr).await?;
    Ok((Conn::new(stream), handshake))
}

/// Runs one request on `conn` (or a new connection) within the timeout.
/// Returns the connection when it can be reused, and the TLS handshake of
/// the connection this request opened, if it opened one that completed it.
/// A flow request passes `kept`: the response's head and kept body are
/// swapped into it before the connection may be dropped.
async fn execute(w: &Worker, conn: Option<Conn<Stream>>, template: &RequestTemplate, rendered: Option<&[u8]>, kept: Option<&mut Kept>) -> (Outcome, Option<Conn<Stream>>, Option<Duration>) {
    // Outside the timed future: a handshake that completed counts even
    // when the request then times out.
    let handshake = Cell::new(None);
    let attempt = async {
        let mut conn = match conn {
            Some(c) => c,
            None => {
                let (c, h) = dial(w).await?;
                handshake.set(h);
                c
            }
        };
        let result = match send(&mut conn, template, rendered).await {
            Err(RequestError::Stale) => {
                // The server closed the idle connection; one retry on a fresh one.
                let (c, h) = dial(w).await?;
                handshake.set(h);
                conn = c;
                send(&mut conn, template, rendered).await
            }
            other => other,
        };
        if let (Ok(_), Some(kept)) = (&result, kept) {
            conn.swap_response(&mut kept.head, &mut kept.body);
        }
        match result {
            Ok((response, keep_alive)) => Ok((response, keep_alive.then_some(conn))),
            Err(RequestError::Stale) => Err(ErrorKind::Io),
            Err(RequestError::Failed(kind)) => Err(kind),
        }
    };
    let (outcome, conn) = match tokio::time::timeout(w.timeout, attempt).await {
        Err(_) => (Outcome::Failed(ErrorKind::Timeout), None),
        Ok(Err(kind)) => (Outcome::Failed(kind), None),
        Ok(Ok((Response { status, received, success, checks }, conn))) => (Outcome::Response { status, success, received, checks }, conn),
    };
    (outcome, conn, handshake.get())
}

/// Sends `template`'s serialized bytes (the lean path, as before templates
/// existed), or the bytes rendered for this request of a templated step.
async fn send(conn: &mut Conn<Stream>, template: &RequestTemplate, rendered: Option<&[u8]>) -> Result<(Response, bool), RequestError> {
    match rendered {
        None => conn.round_trip(template).await,
        Some(wire) => conn.round_trip_with(template, wire).await,
    }
}

/// Chooses a phase's steps by weight with a per-worker generator (no
/// shared state); gives the plan's index of the step.
struct StepPicker {
    steps: Vec<usize>,
    cumulative: Vec<u32>,
    rng: RefCell<fastrand::Rng>,
}

impl StepPicker {
    /// `choices`: (step index, weight), as `Plan::phase_steps` gives them.
    fn new(choices: impl Iterator<Item = (usize, u32)>, seed: u64) -> Self {
        let mut total = 0;
        let (steps, cumulative) = choices
            .map(|(step, w)| {
                total += w;
                (step, total)
            })
            .unzip();
        StepPicker { steps, cumulative, rng: RefCell::new(fastrand::Rng::with_seed(0x5eed ^ seed)) }
    }

    #[inline]
    fn pick(&self) -> usize {
        if self.cumulative.len() == 1 {
            return self.steps[0];
        }
        let total = *self.cumulative.last().expect("a phase has steps");
        let x = self.rng.borrow_mut().u32(0..total);
        self.steps[self.cumulative.partition_point(|&c| c <= x)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_picked_by_weight() {
        let p = StepPicker::new([(0, 40), (1, 60)].into_iter(), 1);
        let mut counts = [0u32; 2];
        for _ in 0..100_000 {
            counts[p.pick()] += 1;
        }
        let share = counts[0] as f64 / 100_000.0;
        assert!((share - 0.4).abs() < 0.01, "{share}");
    }

    #[test]
    fn a_phase_mix_picks_only_its_steps() {
        // A phase naming steps 2 (weight 3) and 0 (weight 1) of a plan.
        let p = StepPicker::new([(2, 3), (0, 1)].into_iter(), 7);
        let mut counts = [0u32; 3];
        for _ in 0..40_000 {
            counts[p.pick()] += 1;
        }
        assert_eq!(counts[1], 0);
        let share = counts[2] as f64 / 40_000.0;
        assert!((share - 0.75).abs() < 0.015, "{share}");
        assert_eq!(StepPicker::new([(4, 1)].into_iter(), 1).pick(), 4);
    }
}
