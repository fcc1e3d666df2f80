//! One request (or one flow execution) on a pooled or new connection:
//! rendering, the timeout, the run's cancellation, the stale-connection
//! retry, and what the request sent and when its response arrived.

use std::cell::Cell;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use stampede_common::stats::ErrorKind;
use tokio::time::sleep_until;

use super::{User, Worker};
use crate::connect::Stream;
use crate::data::StepRows;
use crate::flow::{CompiledFlow, Kept};
use crate::http::{Conn, RequestError, RequestTemplate, Response};
use crate::recorder::Outcome;
use crate::template::Ctx;

/// How a request (or a flow execution) ended.
pub(super) struct Done {
    pub outcome: Outcome,
    /// The connection, when it can be reused.
    pub conn: Option<Conn<Stream>>,
    /// The TLS handshake of the connection this request opened, if any.
    pub handshake: Option<Duration>,
    /// The request's bytes on the wire.
    pub sent: u64,
    /// When the response arrived, from the kernel's receive timestamp: only
    /// on a connection whose reads are stamped (`Worker::stamp_reads`).
    pub arrived: Option<Instant>,
}

/// One request of `step`, or for a flow step one execution of its flow
/// (boxed: the plain step's future stays the size it was).
pub(super) async fn run_step(w: &Worker, conn: Option<Conn<Stream>>, phase: usize, step: usize, user: User, intended: Instant) -> Done {
    // A step with a data file: one row for the whole execution, or, its
    // `unique` rows used up, nothing sent (kind `data`).
    let row = match w.plan.data[step].as_ref().map(StepRows::take) {
        None => &[][..],
        Some(Some(row)) => row,
        Some(None) => return Done { outcome: Outcome::Failed(ErrorKind::Data), conn, handshake: None, sent: 0, arrived: None },
    };
    match &w.plan.flows[step] {
        None => run_or_abort(w, conn, step, user, row).await,
        Some(flow) => {
            let (outcome, conn, sent) = Box::pin(run_flow(w, flow, conn, phase, user, row, intended)).await;
            // Handshakes are recorded with the flow's requests.
            Done { outcome, conn, handshake: None, sent, arrived: None }
        }
    }
}

/// One execution of a flow: its requests recorded under their flow slots
/// in the flow phase of `phase` (contract F), sent like any request.
async fn run_flow(w: &Worker, flow: &CompiledFlow, conn: Option<Conn<Stream>>, phase: usize, user: User, row: &[String], intended: Instant) -> (Outcome, Option<Conn<Stream>>, u64) {
    let io = FlowIo { w, phase: w.plan.plan.flow_phase(phase) as usize };
    let fleet = w.plan.fleet;
    let ctx = || Ctx { seq: fleet.unique(w.plan.seq.fetch_add(1, Ordering::Relaxed)), worker: fleet.unique(user.local), iteration: user.iteration };
    crate::flow::run(&io, flow, conn, ctx, row, intended).await
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
            (outcome, conn, handshake, _) = execute(w, conn, template, Some(wire), Some(kept)) => Some((outcome, conn, handshake)),
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
async fn run_or_abort(w: &Worker, conn: Option<Conn<Stream>>, step: usize, user: User, row: &[String]) -> Done {
    w.requests_in_flight.set(w.requests_in_flight.get() + 1);
    let template = &w.plan.templates[step];
    // A templated step is rendered here, once per request (a retry on a
    // fresh connection resends the same bytes); every other step sends
    // the bytes serialized once, as before templates existed.
    let rendered = template.dynamic().map(|d| {
        let fleet = w.plan.fleet;
        let n = w.plan.seq.fetch_add(1, Ordering::Relaxed);
        d.render_with(Ctx { seq: fleet.unique(n), worker: fleet.unique(user.local), iteration: user.iteration }, &[], row)
    });
    let sent = rendered.as_ref().map_or(template.wire_len(), Vec::len) as u64;
    let done = tokio::select! {
        (outcome, conn, handshake, arrived) = execute(w, conn, template, rendered.as_deref(), None) => Done { outcome, conn, handshake, sent, arrived },
        _ = w.plan.cancel.cancelled() => Done { outcome: Outcome::Failed(ErrorKind::Aborted), conn: None, handshake: None, sent, arrived: None },
    };
    w.requests_in_flight.set(w.requests_in_flight.get() - 1);
    done
}

/// A new connection to the target's next address, and its TLS handshake time.
pub(super) async fn dial(w: &Worker) -> Result<(Conn<Stream>, Option<Duration>), ErrorKind> {
    let addr = w.addrs.borrow_mut().pick();
    let (stream, handshake) = w.plan.dialer.dial(addr).await?;
    Ok((Conn::new(stream), handshake))
}

/// Runs one request on `conn` (or a new connection) within the timeout.
/// Returns the connection when it can be reused, and the TLS handshake of
/// the connection this request opened, if it opened one that completed it,
/// and when the response arrived if the connection's reads are stamped.
/// A flow request passes `kept`: the response's head and kept body are
/// swapped into it before the connection may be dropped.
async fn execute(w: &Worker, conn: Option<Conn<Stream>>, template: &RequestTemplate, rendered: Option<&[u8]>, kept: Option<&mut Kept>) -> (Outcome, Option<Conn<Stream>>, Option<Duration>, Option<Instant>) {
    // Outside the timed future: a handshake that completed counts even
    // when the request then times out.
    let handshake = Cell::new(None);
    let arrived = Cell::new(None);
    // Once per connection a setsockopt, then a flag test per request.
    let stamp = |c: &mut Conn<Stream>| {
        if w.stamp_reads.get() {
            c.stream_mut().stamp_reads();
        }
    };
    // The dials are boxed: a dial's state (a TLS handshake's) inline made
    // every open-model request's task 2 560 bytes, allocated and copied per
    // arrival; boxed, 1 568, and the box is paid only when dialing.
    let attempt = async {
        let mut conn = match conn {
            Some(c) => c,
            None => {
                let (c, h) = Box::pin(dial(w)).await?;
                handshake.set(h);
                c
            }
        };
        stamp(&mut conn);
        let result = match send(&mut conn, template, rendered).await {
            Err(RequestError::Stale) => {
                // The server closed the idle connection; one retry on a fresh one.
                let (c, h) = Box::pin(dial(w)).await?;
                handshake.set(h);
                conn = c;
                stamp(&mut conn);
                send(&mut conn, template, rendered).await
            }
            other => other,
        };
        if result.is_ok() {
            // The last read was this response's last bytes.
            arrived.set(conn.stream().last_rx());
        }
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
    (outcome, conn, handshake.get(), arrived.get())
}

/// Sends `template`'s serialized bytes (the lean path, as before templates
/// existed), or the bytes rendered for this request of a templated step.
async fn send(conn: &mut Conn<Stream>, template: &RequestTemplate, rendered: Option<&[u8]>) -> Result<(Response, bool), RequestError> {
    match rendered {
        None => conn.round_trip(template).await,
        Some(wire) => conn.round_trip_with(template, wire).await,
    }
}
