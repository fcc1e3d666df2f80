//! Per-request handling: routing, injected delays and errors, counters.
//!
//! Routes: the API of `crate::api` (`/login`, `/me`, `/session`, `/jobs`,
//! `/jobs/N`: load requests like any other, so latency, stalls, windows,
//! errors and `require_header` apply to them too), `/health` (immediately: 200 `{"ok": true, "queue": {"max": N},
//! "in_flight": {"max": M}}`, or
//! 503 `{"ok": false}` while a status or refuse window or the recovery after a
//! pause is on), `/bytes/N` (N filler bytes),
//! anything else (GET/HEAD: `body_size` bytes or "ok"; other methods: "ok";
//! 401 "unauthorized" without the `require_header` value, when one is set).
//! Request bodies are always read and discarded so the connection stays usable
//! for keep-alive.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper::{Method, Request, Response, StatusCode};

use crate::arrivals::ArrivalLog;
use crate::behaviour::{Behaviour, Verdict};
use crate::body::RepeatBody;
use crate::stats::Counters;

/// State shared by every connection of one server.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) behaviour: Behaviour,
    /// Cached `behaviour.delays()`: the hot path checks one bool.
    delays: bool,
    /// Cached `behaviour.timed()`: windows or after_pause need the clock.
    timed: bool,
    /// When the process last resumed from a pause, in nanoseconds after
    /// `started_at`, plus one (0: never). Written by the pause ticker.
    pub(crate) resumed_nanos: AtomicU64,
    /// Connections open now, and the most ever open at once: `/health`
    /// reports the latter as `queue.max` (counted per connection, not per request).
    pub(crate) open_connections: AtomicU64,
    pub(crate) max_connections: AtomicU64,
    /// Origin of the stall windows.
    pub(crate) started_at: Instant,
    pub(crate) counters: Counters,
    /// `--arrivals FILE`: the first request per peer IP.
    pub(crate) arrivals: Option<ArrivalLog>,
    /// With `behaviour.record_paths`: every load request's path and query.
    pub(crate) paths: std::sync::Mutex<Vec<String>>,
    /// The login/job API's state.
    api: crate::api::Api,
}

impl Shared {
    pub(crate) fn new(behaviour: Behaviour, started_at: Instant, arrivals: Option<ArrivalLog>) -> Self {
        let delays = behaviour.delays();
        let timed = behaviour.timed();
        Self {
            behaviour,
            delays,
            timed,
            resumed_nanos: AtomicU64::new(0),
            open_connections: AtomicU64::new(0),
            max_connections: AtomicU64::new(0),
            started_at,
            counters: Counters::default(),
            arrivals,
            paths: std::sync::Mutex::new(Vec::new()),
            api: crate::api::Api::default(),
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

    /// The timed rules (windows, recovery after a pause) for a request now.
    fn verdict(&self) -> Verdict {
        let since = self.started_at.elapsed();
        let resumed = match self.resumed_nanos.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n - 1)),
        };
        self.behaviour.verdict(since, resumed)
    }

    /// Whether a new connection is to be closed unanswered (a refuse window).
    pub(crate) fn refusing(&self) -> bool {
        self.timed && self.verdict() == Verdict::Refuse
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

/// A refuse window: hyper closes the connection without answering.
#[derive(Debug, thiserror::Error)]
#[error("the target refuses requests (a refuse window is on)")]
pub(crate) struct Refused;

fn with_status(status: u16, body: RepeatBody) -> Response<RepeatBody> {
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    response
}

/// Answers one request; fails (closing the connection) only in a refuse window.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<RepeatBody>, Refused> {
    let counters = &shared.counters;
    let verdict = if shared.timed { shared.verdict() } else { Verdict::Normal };
    if verdict == Verdict::Refuse {
        return Err(Refused);
    }
    if req.uri().path() == "/health" {
        Counters::bump(&counters.health_checks);
        drain(req.into_body()).await;
        let mut response = if matches!(verdict, Verdict::Status(_)) {
            with_status(503, RepeatBody::text(br#"{"ok": false}"#))
        } else {
            let max = shared.max_connections.load(Ordering::Relaxed);
            let in_flight = counters.max_in_flight.load(Ordering::Relaxed);
            Response::new(RepeatBody::owned(format!(r#"{{"ok": true, "queue": {{"max": {max}}}, "in_flight": {{"max": {in_flight}}}}}"#).into_bytes()))
        };
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
        return Ok(response);
    }
    Counters::bump(&counters.requests);
    if shared.behaviour.record_paths {
        let path = req.uri().path_and_query().map_or("", |p| p.as_str()).to_string();
        shared.paths.lock().unwrap_or_else(|e| e.into_inner()).push(path);
    }
    let _in_flight = counters.enter();
    if let Some(h) = &shared.behaviour.require_header {
        if req.headers().get(h.name.as_str()).map(|v| v.as_bytes()) != Some(h.value.as_slice()) {
            drain(req.into_body()).await;
            Counters::bump(&counters.client_errors_4xx);
            return Ok(with_status(401, RepeatBody::text(b"unauthorized")));
        }
    }
    if let Verdict::Status(status) = verdict {
        drain(req.into_body()).await;
        Counters::bump(if status >= 500 { &counters.errors_500 } else if status >= 400 { &counters.client_errors_4xx } else { &counters.ok_2xx });
        return Ok(with_status(status, RepeatBody::text(b"unavailable")));
    }
    // Arrival = head parsed; read the clock only when something may wait.
    let mut deadline = shared.delays.then(|| shared.deadline(Instant::now()));
    if let Verdict::Hold(wait) = verdict {
        deadline = Some(deadline.unwrap_or_else(Instant::now) + wait);
    }
    let ok_body = shared.ok_body(req.method(), req.uri().path());
    let api = crate::api::route(req.method(), req.uri().path());
    let (head, body) = req.into_parts();
    // Draining overlaps with the wait: an upload's transfer time counts toward it.
    drain(body).await;
    if let Some(deadline) = deadline {
        // Skips timer registration when the body transfer already used up the wait.
        if deadline > Instant::now() {
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
    let (status, body) = match (ok_body, api) {
        (None, _) => {
            Counters::bump(&counters.client_errors_4xx);
            (StatusCode::BAD_REQUEST, RepeatBody::text(b"bad /bytes/N"))
        }
        (Some(_), _) if shared.behaviour.sample_error() => {
            Counters::bump(&counters.errors_500);
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                RepeatBody::text(b"error"),
            )
        }
        (Some(_), Some(route)) => return Ok(shared.api.answer(route, &head.headers, &shared.behaviour.jobs, counters)),
        (Some(body), None) => {
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
