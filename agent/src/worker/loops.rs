//! The closed model's and the iterations model's connection loops: each
//! sends its next request when the previous one answered.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use stampede_common::stats::ErrorKind;

use super::request::{run_step, Done};
use super::{User, Worker};
use crate::recorder::Outcome;

/// One closed-model connection: the next request goes out when the previous
/// one answered, until the phase ends.
pub(super) async fn closed_loop(w: Rc<Worker>, phase: usize, phase_start: Instant, end: Instant, user: u64) {
    connection_loop(w, phase, phase_start, end, user, || true).await;
}

/// One iterations connection: like a closed one, but each request first
/// takes an iteration — one of its own `per_worker`, or one of the agent's
/// shared count — and the loop ends when none is left (or at `end`, the
/// phase's `max_duration`: what is left then does not run).
pub(super) async fn iterations_loop(w: Rc<Worker>, phase: usize, phase_start: Instant, end: Instant, per_worker: Option<u32>, user: u64) {
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
        let Done { outcome, conn: back, handshake, sent, .. } = run_step(&w, conn.take(), phase, step, User { local: user, iteration }, started).await;
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
        if matches!(outcome, Outcome::Failed(ErrorKind::Data)) {
            // Its step's `unique` rows are used up on this agent: this
            // user is done for the phase (Gatling's empty queue feeder),
            // rather than spinning through failures.
            break;
        }
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
