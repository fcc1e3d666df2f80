//! Counters of what the target received, for tests to assert on.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

/// Snapshot of the target's counters (see [`crate::TargetHandle::stats`]).
///
/// `requests` counts load requests when they arrive, before any delay, so it can
/// exceed `ok_2xx + client_errors_4xx + errors_500` while responses are pending or
/// if a connection dies mid-request. `/health` probes are counted apart so that
/// readiness checks do not disturb assertions on load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetStats {
    /// Load requests received (every path but `/health`).
    pub requests: u64,
    /// Responses with status 2xx (excluding `/health`).
    pub ok_2xx: u64,
    /// Responses with status 400 (unparsable `/bytes/N`).
    pub client_errors_4xx: u64,
    /// Injected 500 responses.
    pub errors_500: u64,
    /// `/health` requests answered.
    pub health_checks: u64,
    /// TCP connections accepted.
    pub connections: u64,
    /// TLS handshakes that failed or timed out (HTTPS targets).
    #[serde(default)]
    pub tls_failures: u64,
    /// The most load requests (every path but `/health`) the target was
    /// handling at once: from the parsed head to the response handed back
    /// (or the client gone). How a test checks a client's concurrency.
    pub max_in_flight: u64,
    /// `POST /login` answered (each issued a token and a session cookie).
    #[serde(default)]
    pub logins: u64,
    /// `POST /jobs` answered.
    #[serde(default)]
    pub jobs_submitted: u64,
    /// Of those, the jobs that stay `pending` forever (`jobs.never_finish`).
    #[serde(default)]
    pub jobs_never_finishing: u64,
    /// `GET /jobs/N` answered (200 or 404).
    #[serde(default)]
    pub job_polls: u64,
}

/// Live counters shared by the accept loop and every connection.
///
/// Relaxed ordering: each counter is independent and readers only need eventual
/// totals, so no cross-counter ordering is paid for on the hot path.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) ok_2xx: AtomicU64,
    pub(crate) client_errors_4xx: AtomicU64,
    pub(crate) errors_500: AtomicU64,
    pub(crate) health_checks: AtomicU64,
    pub(crate) connections: AtomicU64,
    pub(crate) tls_failures: AtomicU64,
    /// Load requests being handled now, and the most at once.
    pub(crate) in_flight: AtomicU64,
    pub(crate) max_in_flight: AtomicU64,
    pub(crate) logins: AtomicU64,
    pub(crate) jobs_submitted: AtomicU64,
    pub(crate) jobs_never_finishing: AtomicU64,
    pub(crate) job_polls: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Counts one load request in flight until the guard drops (answered,
    /// or its connection gone mid-wait).
    pub(crate) fn enter(&self) -> InFlight<'_> {
        let now = self.in_flight.fetch_add(1, Relaxed) + 1;
        self.max_in_flight.fetch_max(now, Relaxed);
        InFlight(self)
    }

    pub(crate) fn snapshot(&self) -> TargetStats {
        TargetStats {
            requests: self.requests.load(Relaxed),
            ok_2xx: self.ok_2xx.load(Relaxed),
            client_errors_4xx: self.client_errors_4xx.load(Relaxed),
            errors_500: self.errors_500.load(Relaxed),
            health_checks: self.health_checks.load(Relaxed),
            connections: self.connections.load(Relaxed),
            tls_failures: self.tls_failures.load(Relaxed),
            max_in_flight: self.max_in_flight.load(Relaxed),
            logins: self.logins.load(Relaxed),
            jobs_submitted: self.jobs_submitted.load(Relaxed),
            jobs_never_finishing: self.jobs_never_finishing.load(Relaxed),
            job_polls: self.job_polls.load(Relaxed),
        }
    }
}

/// One load request being handled (see [`Counters::enter`]).
pub(crate) struct InFlight<'a>(&'a Counters);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}
