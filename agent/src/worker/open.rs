//! The open model: arrivals at their scheduled instants, whatever the
//! responses do, each on an idle pooled connection or a new one.

use std::rc::Rc;
use std::time::{Duration, Instant};

use stampede_common::plan::default_max_in_flight;
use stampede_common::stats::ErrorKind;
use tokio::time::sleep_until;

use super::request::{dial, run_step, Done};
use super::{User, Worker};
use crate::recorder::Outcome;
use crate::schedule::ArrivalSchedule;

/// Most arrivals the pacer starts or drops before it yields to its runtime.
/// Small, so that a pacer catching up (after a preemption, at 50 000/s a
/// few ms are hundreds of arrivals) lets its requests write and the
/// responses that came back return their connections to the pool between
/// batches: with 1024, every arrival of a backlog was spawned before any
/// ran, found the pool empty and dialed, and the dials made the backlog
/// grow (issue 11, item 1). A yield costs well under a µs.
const PACE_BATCH: u32 = 16;
/// How long after its phase's end a pacer that fell behind still starts
/// due arrivals; the rest are counted as dropped. A healthy pacer is done
/// within a timer tick of the end (its last arrivals are due just before it).
const PACE_GRACE: Duration = Duration::from_millis(100);

/// The longest gap to the next arrival that the pacer sleeps through with
/// the thread blocked (see [`pace`]); a longer one is slept on the timerfd,
/// where responses are read as they arrive. While the thread is blocked
/// its tokio timers (request timeouts, the interval flush) and its
/// cancellation wait too, by at most this long.
const SLEEP_THROUGH_UP_TO: Duration = Duration::from_millis(1);

/// Most requests in flight on this worker in open phase `phase`.
fn in_flight_limit(w: &Worker, phase: usize) -> u32 {
    let p = &w.plan.plan.phases[phase];
    let per_agent = p.load.max_in_flight.unwrap_or_else(|| {
        let wanted = default_max_in_flight(peak_rate(w, phase), w.longest);
        if wanted > w.plan.max_connections && w.plan.index == 0 {
            tracing::warn!(
                message = "The open-files limit is below the default in-flight bound: a stalled target will show as dropped arrivals. Raise `ulimit -n` (LimitNOFILE) or set max_in_flight.",
                phase = %p.name, wanted, allowed = w.plan.max_connections
            );
        }
        wanted.min(w.plan.max_connections)
    });
    per_agent.div_ceil(w.plan.workers as u32).max(1)
}

/// This agent's peak arrival rate in open phase `phase`, per second.
fn peak_rate(w: &Worker, phase: usize) -> f64 {
    let load = &w.plan.plan.phases[phase].load;
    let r0 = load.rate.map_or(0.0, |r| r.as_per_second());
    let r1 = load.to.map_or(r0, |r| r.as_per_second());
    r0.max(r1) * w.plan.rate_share
}

/// Whether the pacer sleeps through responses in open phase `phase`:
/// plain TCP reads are stamped (`rxstamp.rs`); TLS records and flows
/// (which time their own requests) are not, so they keep the timerfd.
fn sleeps_through(w: &Worker, phase: usize) -> bool {
    !w.plan.dialer.is_tls() && w.pickers[phase].steps.iter().all(|&s| w.plan.flows[s].is_none())
}

/// Arrivals of this long at the phase's peak rate get a connection opened
/// ahead of the phase (see [`warm_up`]).
const WARM_SPAN: Duration = Duration::from_millis(1);
/// Most connections a worker opens ahead of an open phase.
const MAX_WARM: u32 = 64;

/// Opens, before open phase `phase` starts (by `deadline`), as many idle
/// connections as the phase's arrivals in [`WARM_SPAN`] at its peak rate,
/// per worker (at most [`MAX_WARM`] and the in-flight bound; plain TCP
/// without flows only, see [`sleeps_through`]), so its first arrivals do not
/// each dial.
///
/// Why (issue 11, item 1; `benchmarks/pacing.py` at 50 000/s, one agent on
/// one core): arrivals 20 µs apart leave no time for a connect (~30–100 µs
/// on loopback, with the target's accept). Starting with an empty pool,
/// every early arrival dialed, the pacer fell behind, the arrivals due
/// meanwhile found every connection busy and dialed too: 16 000 connects in
/// 2 s, 30–78 % of arrivals dropped and the dispatch lag in seconds. With
/// connections waiting, an arrival takes an idle one, as it does at any
/// lower rate in the steady state. The target sees the connections open
/// before the phase starts; no request is sent on them before it.
pub(super) async fn warm_up(w: &Worker, phase: usize, deadline: Instant) {
    if !sleeps_through(w, phase) {
        return;
    }
    let per_worker = peak_rate(w, phase) / w.plan.workers as f64;
    let want = ((per_worker * WARM_SPAN.as_secs_f64()).ceil() as u32).min(MAX_WARM).min(in_flight_limit(w, phase)) as usize;
    while w.pool.borrow().len() < want {
        match tokio::time::timeout_at(deadline.into(), dial(w)).await {
            Ok(Ok((conn, _))) => w.pool.borrow_mut().push(conn),
            // A target not up yet, or no time left: the phase dials as usual.
            _ => return,
        }
    }
}

/// Runs open phase `phase` (starting at `start`) to its end.
pub(super) async fn run_phase(w: &Rc<Worker>, phase: usize, start: Instant) {
    let p = &w.plan.plan.phases[phase];
    let schedule = {
        let load = &p.load;
        let r0 = load.rate.map_or(0.0, |r| r.as_per_second());
        let r1 = load.to.map_or(r0, |r| r.as_per_second());
        ArrivalSchedule::new(r0, r1, p.length(), w.plan.rate_share, w.plan.arrival_offset)
    };
    let limit = in_flight_limit(w, phase);
    // Sleeping through responses needs their arrival from the kernel.
    let sleep_through = sleeps_through(w, phase);
    w.stamp_reads.set(sleep_through);
    let window = p.load.batch_window.map_or(Duration::ZERO, |d| d.as_duration());
    pace(w, phase, start, schedule, Pacing { limit, sleep_through, window }).await;
    w.stamp_reads.set(false);
}

/// The open-model pacer: this worker takes every `workers`-th arrival of the
/// agent's schedule, starting with its own index. Arrivals still unstarted
/// [`PACE_GRACE`] after the phase's end are counted as dropped at once: the
/// pacer never runs on past its phase.
///
/// How it waits for the next arrival (issue 11, item 2: its CPU per request).
/// Measured on this 2-core VM: a wake-up from idle costs 20–27 µs of CPU,
/// the largest item in a request's cost, and a request in the open model
/// used to cost two — the timerfd for its arrival, then epoll for its
/// response — where the closed model, never idle, pays none. With
/// `sleep_through` (plain TCP, no flows) and the next arrival at most
/// [`SLEEP_THROUGH_UP_TO`] away, the pacer lets the runtime run once (the
/// requests just started write, responses already here are read, timers
/// fire: `yield_now` polls epoll without blocking) and then blocks the
/// thread in `nanosleep` until the instant (1 ns timer slack, set at the
/// worker's start; woken early by its usual lateness, see [`WakeLead`]).
/// A response that arrives meanwhile does not wake the
/// thread; it is read at the next arrival, and its latency still ends at
/// its arrival: the kernel's receive timestamp of its last bytes
/// (`rxstamp.rs`). One wake-up per arrival instead of two, and no epoll
/// wait that blocks. A gap longer than that keeps the timerfd (one wake-up
/// per arrival and one per response, as before), so that at low rates a
/// response is not held for long and the runtime stays responsive.
///
/// With a batch window (`load.batch_window`), the pacer wakes once for the
/// arrivals due within the window (see [`batch_wake`]) instead of once
/// each: on this VM a timed wake-up costs ~16 µs of CPU even in C
/// (`benchmarks/wake_cost.c`), more than a whole request in the closed
/// model, so at 5 000/s precision is most of the open model's cost. The
/// lateness a window adds is measured like any other (dispatch lag, and
/// latency from the intended instant); the wait is a plain `nanosleep`
/// without the spin, since the batch's instant need not be precise.
async fn pace(w: &Rc<Worker>, phase: usize, start: Instant, schedule: ArrivalSchedule, pacing: Pacing) {
    let Pacing { limit, sleep_through, window } = pacing;
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
    let mut lead = WakeLead::default();
    // A batch's wake-up is up to a window past its first arrival's instant.
    let sleep_through_up_to = SLEEP_THROUGH_UP_TO + window;
    while k < total {
        let due = start + schedule.time_of(k);
        let now = Instant::now();
        if due > now {
            let wake = batch_wake(&schedule, start, k, stride, total, window).unwrap_or(due);
            if sleep_through && wake - now <= sleep_through_up_to {
                tokio::task::yield_now().await;
                if window.is_zero() {
                    lead.sleep_until(due);
                } else {
                    std::thread::sleep(wake.saturating_duration_since(Instant::now()));
                }
            } else {
                w.timer.sleep_until(wake).await;
            }
            if Instant::now() < due {
                continue;
            }
        }
        let now = Instant::now();
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

/// How an open phase's pacer runs: its in-flight bound (this worker's
/// share), whether it may sleep through responses, and its batch window.
#[derive(Clone, Copy)]
struct Pacing {
    limit: u32,
    sleep_through: bool,
    window: Duration,
}

/// With a batch window, when the pacer wakes for arrival `k`: at the last
/// of this worker's arrivals due within `window` of arrival `k`'s instant,
/// so one wake-up starts them all, none later than `window`, and the last
/// on time. A lone arrival (the next one is further than `window` away) is
/// woken for at its own instant. `None` without a window.
///
/// Walks the arrivals the batch then starts, so it costs O(1) per arrival.
fn batch_wake(schedule: &ArrivalSchedule, start: Instant, k: u64, stride: u64, total: u64, window: Duration) -> Option<Instant> {
    if window.is_zero() {
        return None;
    }
    let first = schedule.time_of(k);
    let mut last = first;
    let mut j = k + stride;
    while j < total {
        let t = schedule.time_of(j);
        if t > first + window {
            break;
        }
        last = t;
        j += stride;
    }
    Some(start + last)
}

/// Most the sleep-through pacer wakes before an arrival, to spin the rest.
const MAX_LEAD: Duration = Duration::from_micros(50);

/// The sleep-through pacer's wake-up, early by what waking usually takes.
///
/// A `nanosleep` on this VM ends ~20 µs after its instant (`pacer.rs`,
/// `what_a_wait_costs`: lag p50 21 µs with a 1 ns timer slack), and that
/// is the arrival's dispatch lag (issue 11: p50 ≤ 20 µs). So the pacer
/// sleeps until the instant less the mean lateness of its recent wake-ups
/// (an average over ~8), and spins the remainder: when the wake-up is as
/// late as usual the spin is a few µs — the CPU price of precision — and
/// the lead never exceeds [`MAX_LEAD`], so a thread preempted for
/// milliseconds does not turn into a long spin.
#[derive(Default)]
struct WakeLead {
    lead: Duration,
}

impl WakeLead {
    fn sleep_until(&mut self, due: Instant) {
        let wake_at = due.checked_sub(self.lead).unwrap_or(due);
        let left = wake_at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left);
        let late = Instant::now().saturating_duration_since(wake_at).min(MAX_LEAD);
        // lead += (late − lead) / 8, in whole nanoseconds.
        let (l, x) = (self.lead.as_nanos() as i64, late.as_nanos() as i64);
        self.lead = Duration::from_nanos((l + (x - l) / 8).max(0) as u64);
        while Instant::now() < due {
            std::hint::spin_loop();
        }
    }
}

async fn open_request(w: Rc<Worker>, phase: usize, intended: Instant, user: User) {
    let started = Instant::now();
    w.note_first_request(intended, started);
    w.recorder.borrow_mut().arrival(phase, Some(started.saturating_duration_since(intended)));
    let step = w.pickers[phase].pick();
    let conn = w.pool.borrow_mut().pop();
    let Done { outcome, conn, handshake, sent, arrived } = run_step(&w, conn, phase, step, user, intended).await;
    // When the response arrived: the kernel's stamp on its last bytes, if
    // the read was stamped (the pacer may read it up to one inter-arrival
    // after it came), else now. Never before the send nor after now.
    let now = Instant::now();
    let done = arrived.map_or(now, |t| t.clamp(started, now));
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

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_batch_wakes_at_the_last_arrival_within_its_window() {
        // 1 000/s for 1 s, one worker: arrivals at 0, 1, 2 … ms.
        let s = ArrivalSchedule::new(1000.0, 1000.0, Duration::from_secs(1), 1.0, 0.0);
        let t0 = Instant::now();
        assert_eq!(batch_wake(&s, t0, 0, 1, s.count(), Duration::ZERO), None);
        assert_eq!(batch_wake(&s, t0, 0, 1, s.count(), 3 * MS), Some(t0 + 3 * MS));
        assert_eq!(batch_wake(&s, t0, 10, 1, s.count(), 2500 * Duration::from_micros(1)), Some(t0 + 12 * MS));
        // The phase's last arrival ends the batch.
        assert_eq!(batch_wake(&s, t0, 998, 1, s.count(), 5 * MS), Some(t0 + 999 * MS));
        // A worker taking every second arrival: 0, 2, 4 ms within 5 ms.
        assert_eq!(batch_wake(&s, t0, 0, 2, s.count(), 5 * MS), Some(t0 + 4 * MS));
    }

    #[test]
    fn a_lone_arrival_is_woken_for_at_its_own_instant() {
        // 100/s: 10 ms apart, more than the window.
        let s = ArrivalSchedule::new(100.0, 100.0, Duration::from_secs(1), 1.0, 0.0);
        let t0 = Instant::now();
        assert_eq!(batch_wake(&s, t0, 5, 1, s.count(), 5 * MS), Some(t0 + 50 * MS));
    }
}
