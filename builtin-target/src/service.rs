//! Per-request handling: routing, injected delays and errors, counters.
//!
//! Routes: `/health` (always 200 "ok", immediately), `/bytes/N` (N filler bytes),
//! anything else (GET/HEAD: `body_size` bytes or "ok"; other methods: "ok").
//! Request bodies are always read and discarded so the connection stays usable
//! for keep-alive.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper::{Method, Request, Response, StatusCode};

use crate::arrivals::ArrivalLog;
use crate::behaviour::Behaviour;
use crate::body::RepeatBody;
use crate::stats::Counters;

/// State shared by every connection of one server.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) behaviour: Behaviour,
    /// Cached `behaviour.delays()`: the hot path checks one bool.
    delays: bool,
    /// Origin of the stall windows.
    pub(crate) started_at: Instant,
    pub(crate) counters: Counters,
    /// `--arrivals FILE`: the first request per peer IP.
    pub(crate) arrivals: Option<ArrivalLog>,
}

impl Shared {
    pub(crate) fn new(behaviour: Behaviour, started_at: Instant, arrivals: Option<ArrivalLog>) -> Self {
        let delays = behaviour.delays();
        Self {
            behaviour,
            delays,
            started_at,
            counters: Counters::default(),
            arrivals,
        }
    }

    /// When a request that arrived at `arrival` may be answered: end of the stall
    /// it arrived in (if any), plus the sampled latency.
    fn deadline(&self, arrival: Instant) -> Instant {
        let stall_wait = self
            .behaviour
            .stall
            .map(|s| s.wait_for(arrival.saturating_duration_since(self.started_at)))
            .unwrap_or_default();
        arrival + stall_wait + self.behaviour.sample_latency()
    }

    /// The success body for a load request, or `None` for an unparsable `/bytes/N`.
    fn ok_body(&self, method: &Method, path: &str) -> Option<RepeatBody> {
        if let Some(n) = path.strip_prefix("/bytes/") {
            return n.parse().ok().map(RepeatBody::filler);
        }
        // HEAD mirrors GET so its content-length describes what GET would send.
        let sized = *method == Method::GET || *method == Method::HEAD;
        Some(match self.behaviour.body_size {
            n if sized && n > 0 => RepeatBody::filler(n as u64),
            _ => RepeatBody::text(b"ok"),
        })
    }
}

/// Answers one request. Never fails: every outcome is an HTTP response.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<RepeatBody>, Infallible> {
    let counters = &shared.counters;
    if req.uri().path() == "/health" {
        Counters::bump(&counters.health_checks);
        drain(req.into_body()).await;
        return Ok(Response::new(RepeatBody::text(b"ok")));
    }
    Counters::bump(&counters.requests);
    // Arrival = head parsed; read the clock only when something may wait.
    let deadline = shared.delays.then(|| shared.deadline(Instant::now()));
    let ok_body = shared.ok_body(req.method(), req.uri().path());
    // Draining overlaps with the wait: an upload's transfer time counts toward it.
    drain(req.into_body()).await;
    if let Some(deadline) = deadline {
        // Skips timer registration when the body transfer already used up the wait.
        if deadline > Instant::now() {
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
    let (status, body) = match ok_body {
        None => {
            Counters::bump(&counters.client_errors_4xx);
            (StatusCode::BAD_REQUEST, RepeatBody::text(b"bad /bytes/N"))
        }
        Some(_) if shared.behaviour.sample_error() => {
            Counters::bump(&counters.errors_500);
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                RepeatBody::text(b"error"),
            )
        }
        Some(body) => {
            Counters::bump(&counters.ok_2xx);
            (StatusCode::OK, body)
        }
    };
    // Response::new + status_mut: no builder, no header map allocation.
    let mut response = Response::new(body);
    *response.status_mut() = status;
    Ok(response)
}

/// Reads and discards a request body; stops quietly if the client goes away
/// (hyper then fails the write and closes the connection itself).
async fn drain(mut body: Incoming) {
    while !body.is_end_stream() {
        match body.frame().await {
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
}
