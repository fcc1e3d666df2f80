//! One simulated agent: on the wire it behaves as `agent/src/session.rs`
//! does — Register (its own id and node, capacity 1, one worker, this
//! build's version, a random instance, a lease), echo the clock probes,
//! heartbeat, take the Assignment, and from the common start send one
//! Snapshot per interval and then RunFinished, through the agent's own
//! resend buffer (`stampede_agent::outbox::Outbox`): every run message is
//! numbered, kept until `Delivered` covers it, and sent again, in order, on
//! the next session after a reconnect. It sends no HTTP request: what it
//! reports comes from [`crate::payload`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use stampede_agent::outbox::{self, Outbox};
use stampede_proto::convert::unix_nanos;
use stampede_proto::v1::agent_message::Msg as Up;
use stampede_proto::v1::agent_service_client::AgentServiceClient;
use stampede_proto::v1::coordinator_message::Msg as Down;
use stampede_proto::v1::{AgentMessage, Assignment, ClockEcho, Heartbeat, Register, RunFinished, Snapshot};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::payload::{Pool, Tally};

/// As the agent: heartbeats every second, a session silent for 3 s is dead,
/// one attempt to open a session may take 3 s, backoff from 100 ms, at most
/// 1 s while a run goes on.
const HEARTBEAT: Duration = Duration::from_secs(1);
const SILENCE: Duration = Duration::from_secs(3);
const CONNECT_LIMIT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX_IN_RUN: Duration = Duration::from_secs(1);
const LEASE: Duration = Duration::from_secs(10);
/// How long after an interval's end the storm hits.
const STORM_AFTER_END: Duration = Duration::from_millis(5);

/// What every simulated agent of one measurement shares.
pub struct Fleet {
    pub url: String,
    pub pool: Pool,
    pub interval: Duration,
    pub intervals: u64,
    /// Intervals of the first phase (the rest are the second).
    pub warmup_intervals: u64,
    /// Drop every session at once this far into the run (a fraction of
    /// its duration, moved to the middle of an interval), then resume.
    pub storm_at: Option<f64>,
    pub shutdown: CancellationToken,
    /// Bounds the first connections (a fleet coming up); a storm's
    /// reconnections are not bounded.
    pub first_connect: Semaphore,
    /// The run's common start (the coordinator's clock, unix nanoseconds).
    pub start: std::sync::OnceLock<i64>,
}

/// What one simulated agent did, for the totals check and the lag figures.
#[derive(Debug, Default)]
pub struct Outcome {
    pub id: String,
    pub tally: Tally,
    pub snapshots_sent: u64,
    pub finished_sent: bool,
    /// Sessions opened (1 without any reconnect).
    pub sessions: u32,
    /// Sessions that ended without being asked to (silence, a broken stream).
    pub unplanned_drops: u32,
    pub last_drop: Option<String>,
    /// Run messages unacknowledged when a later session opened: sent again.
    pub resent: u64,
    /// Run messages still unacknowledged at the end.
    pub unacknowledged: usize,
    /// Per snapshot: its interval end (the agent's clock) to the
    /// `Delivered` that covered it, microseconds.
    pub ack_lags_us: Vec<u64>,
    pub aborted: Option<String>,
}

enum SessionEnd {
    Shutdown,
    /// The storm: this agent dropped its session on purpose.
    Storm,
}

struct Run {
    id: String,
    task: tokio::task::JoinHandle<(Tally, u64)>,
    storm: Option<Instant>,
    /// Snapshots pushed so far (an aborted run's task returns nothing).
    pushed: Arc<AtomicU64>,
}

/// Delivery numbers not yet acknowledged, with their interval's end.
type Pending = Mutex<VecDeque<(u64, i64)>>;

struct State {
    index: usize,
    id: String,
    instance: u64,
    outbox: Arc<Outbox>,
    pending: Arc<Pending>,
    run: Option<Run>,
    stormed: bool,
    out: Outcome,
}

pub async fn run(fleet: Arc<Fleet>, index: usize) -> Outcome {
    let id = format!("sim-{index:05}");
    let mut st = State {
        index,
        id: id.clone(),
        instance: uuid::Uuid::new_v4().as_u128() as u64,
        outbox: Arc::new(Outbox::new(outbox::DEFAULT_LIMIT_BYTES)),
        pending: Arc::default(),
        run: None,
        stormed: false,
        out: Outcome { id, ..Outcome::default() },
    };
    let mut backoff = BACKOFF_MIN;
    loop {
        match session(&fleet, &mut st).await {
            Ok(SessionEnd::Shutdown) => break,
            Ok(SessionEnd::Storm) => backoff = BACKOFF_MIN,
            Err(e) => {
                st.out.unplanned_drops += 1;
                st.out.last_drop = Some(format!("{e:#}"));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = fleet.shutdown.cancelled() => break,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX_IN_RUN);
    }
    if let Some(r) = st.run.take() {
        let pushed = r.pushed.clone();
        match r.task.await {
            Ok((tally, sent)) => {
                st.out.tally = tally;
                st.out.snapshots_sent = sent;
                st.out.finished_sent = true;
            }
            Err(e) => {
                st.out.snapshots_sent = pushed.load(Ordering::Relaxed);
                let why = st.out.aborted.take().unwrap_or_default();
                st.out.aborted = Some(format!("{why} (its run task: {e})"));
            }
        }
    }
    st.out.unacknowledged = st.outbox.pending();
    st.out
}

fn message(msg: Up) -> AgentMessage {
    AgentMessage { msg: Some(msg), delivery: 0 }
}

async fn session(fleet: &Arc<Fleet>, st: &mut State) -> anyhow::Result<SessionEnd> {
    let (tx, rx) = mpsc::channel::<AgentMessage>(1024);
    let active_run_id = st.run.as_ref().filter(|r| !r.task.is_finished()).map(|r| r.id.clone()).unwrap_or_default();
    tx.send(message(Up::Register(Register {
        agent_id: st.id.clone(),
        labels: Default::default(),
        capacity: 1,
        capabilities: Vec::new(),
        clock_unix_nanos: unix_nanos(SystemTime::now()),
        version: env!("CARGO_PKG_VERSION").to_string(),
        workers: 1,
        node: st.id.clone(),
        instance: st.instance,
        active_run_id,
        lease_ms: LEASE.as_millis() as u64,
        recovered: Vec::new(),
        max_connections: 0,
    })))
    .await?;
    let open = async {
        let channel = tonic::transport::Endpoint::from_shared(fleet.url.clone())?.connect().await?;
        let inbound = AgentServiceClient::new(channel).session(ReceiverStream::new(rx)).await?.into_inner();
        anyhow::Ok(inbound)
    };
    let mut inbound = if st.out.sessions == 0 {
        let _permit = fleet.first_connect.acquire().await?;
        tokio::time::timeout(CONNECT_LIMIT, open).await??
    } else {
        tokio::time::timeout(CONNECT_LIMIT, open).await??
    };
    if st.out.sessions > 0 {
        st.out.resent += st.outbox.pending() as u64;
    }
    st.out.sessions += 1;
    let mut last_contact = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let pump = AbortOnDrop(tokio::spawn(pump(st.outbox.clone(), tx.clone(), sent.clone())));
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    // As the agent: a beat only when the pump sent nothing since the last tick.
    let mut seen = u64::MAX;
    let end = loop {
        let storm = st.run.as_ref().and_then(|r| r.storm).filter(|_| !st.stormed);
        tokio::select! {
            _ = fleet.shutdown.cancelled() => break SessionEnd::Shutdown,
            _ = heartbeat.tick() => {
                let last = sent.load(Ordering::Acquire);
                if last == seen {
                    let _ = tx.try_send(message(Up::Heartbeat(Heartbeat { clock_unix_nanos: unix_nanos(SystemTime::now()) })));
                }
                seen = last;
            }
            _ = tokio::time::sleep_until(storm.unwrap_or_else(Instant::now)), if storm.is_some() => {
                st.stormed = true;
                break SessionEnd::Storm;
            }
            _ = tokio::time::sleep_until(last_contact + SILENCE) => anyhow::bail!("no word from the coordinator for {SILENCE:?}"),
            msg = inbound.message() => match msg? {
                None => anyhow::bail!("the coordinator closed the session"),
                Some(m) => {
                    last_contact = Instant::now();
                    match m.msg {
                        Some(Down::Assignment(a)) => assign(fleet, st, a),
                        Some(Down::ClockProbe(p)) => {
                            let t2 = unix_nanos(SystemTime::now());
                            let echo = ClockEcho { t1_unix_nanos: p.t1_unix_nanos, t2_unix_nanos: t2, t3_unix_nanos: unix_nanos(SystemTime::now()) };
                            let _ = tx.try_send(message(Up::ClockEcho(echo)));
                        }
                        Some(Down::Delivered(d)) => delivered(st, d.upto),
                        Some(Down::Abort(a)) => {
                            st.out.aborted = Some(a.reason);
                            if let Some(r) = &st.run {
                                r.task.abort();
                            }
                        }
                        Some(Down::SteadyState(_)) | Some(Down::Registered(_)) | Some(Down::Heartbeat(_)) | None => {}
                    }
                }
            },
        }
    };
    drop(pump);
    Ok(end)
}

/// `Delivered { upto }`: the resend buffer forgets everything up to it,
/// and each snapshot it covers gets its lag from its interval's end.
fn delivered(st: &mut State, upto: u64) {
    st.outbox.ack(upto);
    let now = unix_nanos(SystemTime::now());
    let mut pending = st.pending.lock().unwrap_or_else(|e| e.into_inner());
    while pending.front().is_some_and(|(d, _)| *d <= upto) {
        if let Some((_, end)) = pending.pop_front() {
            st.out.ack_lags_us.push(u64::try_from(now.saturating_sub(end) / 1000).unwrap_or(0));
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// As the agent's pump: everything unacknowledged first, then each new
/// message, in delivery order.
async fn pump(outbox: Arc<Outbox>, tx: mpsc::Sender<AgentMessage>, sent: Arc<AtomicU64>) {
    let mut pushed = outbox.subscribe();
    let mut cursor = 0;
    loop {
        for m in outbox.after(cursor) {
            cursor = m.delivery;
            if tx.send(m).await.is_err() {
                return;
            }
            sent.store(cursor, Ordering::Release);
        }
        if pushed.changed().await.is_err() {
            return;
        }
    }
}

fn assign(fleet: &Arc<Fleet>, st: &mut State, a: Assignment) {
    if st.run.as_ref().is_some_and(|r| r.id == a.run_id) {
        return; // resent: the run goes on
    }
    let _ = fleet.start.set(a.start_unix_nanos);
    // The common start in this agent's clock.
    let start = a.start_unix_nanos.saturating_add(a.clock_offset_nanos);
    let storm = fleet.storm_at.map(|f| {
        let iv = fleet.interval.as_nanos() as i64;
        // Just after an interval's end: the fleet's snapshots of it are on
        // their way, some merged and acknowledged, some received and not yet
        // acknowledged, some not yet sent — every path of the resend.
        let k = (f * fleet.intervals as f64).floor() as i64;
        instant_of(start + k * iv + STORM_AFTER_END.as_nanos() as i64)
    });
    let pushed = Arc::new(AtomicU64::new(0));
    let ctx = RunCtx { fleet: fleet.clone(), index: st.index, id: st.id.clone(), outbox: st.outbox.clone(), pending: st.pending.clone(), start, pushed: pushed.clone() };
    st.run = Some(Run { id: a.run_id.clone(), task: tokio::spawn(execute(ctx, a.run_id)), storm, pushed });
}

/// A wall-clock instant (unix nanoseconds) as a tokio instant.
fn instant_of(unix: i64) -> Instant {
    let now = unix_nanos(SystemTime::now());
    Instant::now() + Duration::from_nanos(u64::try_from(unix.saturating_sub(now)).unwrap_or(0))
}

struct RunCtx {
    fleet: Arc<Fleet>,
    index: usize,
    id: String,
    outbox: Arc<Outbox>,
    pending: Arc<Pending>,
    start: i64,
    pushed: Arc<AtomicU64>,
}

/// The run: one snapshot at each interval's end, then the totals.
async fn execute(c: RunCtx, run_id: String) -> (Tally, u64) {
    let iv = c.fleet.interval.as_nanos() as i64;
    let mut tally = Tally::default();
    let mut sent = 0;
    for seq in 0..c.fleet.intervals {
        let (from, to) = (c.start + seq as i64 * iv, c.start + (seq as i64 + 1) * iv);
        tokio::time::sleep_until(instant_of(to)).await;
        let phase = u32::from(seq >= c.fleet.warmup_intervals);
        let p = c.fleet.pool.pick(phase, c.index, seq);
        let last_done_us = u64::try_from((to - c.start) / 1000).unwrap_or(0).saturating_sub(fastrand::u64(0..2000));
        let snapshot = Snapshot {
            run_id: run_id.clone(),
            agent_id: c.id.clone(),
            seq,
            interval_start_unix_nanos: from,
            interval_end_unix_nanos: to,
            steps: p.steps.clone(),
            phases: p.phases(phase, last_done_us),
            last: seq + 1 == c.fleet.intervals,
            in_flight: p.in_flight,
        };
        {
            // Under the lock: an acknowledgement cannot overtake the record.
            let mut pending = c.pending.lock().unwrap_or_else(|e| e.into_inner());
            let delivery = c.outbox.push(Up::Snapshot(snapshot));
            pending.push_back((delivery, to));
        }
        tally.add(&p.tally);
        sent += 1;
        c.pushed.store(sent, Ordering::Relaxed);
    }
    c.outbox.push(Up::Finished(RunFinished {
        run_id,
        agent_id: c.id.clone(),
        snapshots_sent: sent,
        requests: tally.requests,
        errors: tally.errors,
        error: String::new(),
        first_request_unix_nanos: c.start + 20_000,
        not_started: false,
        evicted: c.outbox.evicted(),
    }));
    (tally, sent)
}
