//! The small application API a flow can be tested against: log in, use a
//! bearer token or a session cookie, submit a job and poll it until done.
//!
//! Routes (any other method or path falls through to the plain load routes):
//! - `POST /login` → 200 `{"token":"T"}` and `Set-Cookie: session=S; Path=/; HttpOnly`.
//! - `GET /me` → 200 `{"user":"user-N"}` with `Authorization: Bearer T`, else 401.
//! - `GET /session` → 200 `{"user":"user-N"}` with the cookie `session=S`, else 401.
//! - `POST /jobs` → 202 `{"id":"N"}`; `GET /jobs/N` → 200
//!   `{"id":"N","status":"pending"|"done"}`, 404 for an id never issued or forgotten.
//!
//! Tokens and session ids are not stored: each is `N.MAC` with N the login's
//! number and MAC a keyed SipHash (std's `RandomState`, keyed at random per
//! server) of the kind and N, so the target recognises what it issued, with
//! no memory per login, and rejects anything else. (Not a cryptographic MAC:
//! this is a test target, the point is "issued here", not security.)
//!
//! Jobs are stored: their submit instant in a ring of [`JOB_CAPACITY`]
//! slots indexed by id, so memory is bounded (24 MiB at most: the ring
//! grows with use) and a job is
//! forgotten (404) once `JOB_CAPACITY` newer jobs were submitted.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, COOKIE, SET_COOKIE};
use hyper::{Method, Response, StatusCode};

use crate::body::RepeatBody;
use crate::stats::Counters;

/// How many jobs the target remembers (the newest ones).
pub const JOB_CAPACITY: usize = 1 << 20;

/// The job API's knobs (`builtin_target.jobs`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Jobs {
    /// A job is `done` once this long has passed since it was submitted.
    pub done_after: Duration,
    /// Share `0.0..=1.0` of jobs that stay `pending` forever: job N (from 1)
    /// never finishes when `floor(N * share)` > `floor((N - 1) * share)`,
    /// so of the first N jobs exactly `floor(N * share)` never finish
    /// (25%: jobs 4, 8, 12, …).
    pub never_finish: f64,
}

impl Default for Jobs {
    fn default() -> Self {
        Jobs { done_after: Duration::from_secs(1), never_finish: 0.0 }
    }
}

impl Jobs {
    /// Whether job `n` (numbered from 1) is one that never finishes.
    pub fn never_finishes(&self, n: u64) -> bool {
        let share = self.never_finish.clamp(0.0, 1.0);
        // Exact for the shares a plan can write (whole or decimal percents)
        // up to far more jobs than JOB_CAPACITY.
        (n as f64 * share).floor() > ((n - 1) as f64 * share).floor()
    }
}

/// The API's state: the MAC key, the login and job numbers, the job ring.
#[derive(Debug)]
pub(crate) struct Api {
    key: std::collections::hash_map::RandomState,
    logins: AtomicU64,
    /// `(id, submitted)` at `id % JOB_CAPACITY`; id 0 = empty slot.
    jobs: Mutex<Vec<(u64, Instant)>>,
    next_job: AtomicU64,
}

impl Default for Api {
    fn default() -> Self {
        Api { key: Default::default(), logins: AtomicU64::new(0), jobs: Mutex::new(Vec::new()), next_job: AtomicU64::new(0) }
    }
}

/// What a request asks of the API, decided from its head before its body is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    Login,
    Me,
    Session,
    Submit,
    Status(String),
}

pub(crate) fn route(method: &Method, path: &str) -> Option<Route> {
    match (method, path) {
        (&Method::POST, "/login") => Some(Route::Login),
        (&Method::GET, "/me") => Some(Route::Me),
        (&Method::GET, "/session") => Some(Route::Session),
        (&Method::POST, "/jobs") => Some(Route::Submit),
        (&Method::GET, p) => p.strip_prefix("/jobs/").filter(|id| !id.contains('/')).map(|id| Route::Status(id.to_string())),
        _ => None,
    }
}

fn json(status: StatusCode, body: String) -> Response<RepeatBody> {
    let mut response = Response::new(RepeatBody::owned(body.into_bytes()));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn unauthorized(counters: &Counters) -> Response<RepeatBody> {
    Counters::bump(&counters.client_errors_4xx);
    json(StatusCode::UNAUTHORIZED, r#"{"error":"unauthorized"}"#.to_string())
}

impl Api {
    fn mac(&self, kind: &str, n: u64) -> u64 {
        let mut h = self.key.build_hasher();
        h.write(kind.as_bytes());
        h.write_u64(n);
        h.finish()
    }

    fn issue(&self, kind: &str, n: u64) -> String {
        format!("{n}.{:016x}", self.mac(kind, n))
    }

    /// The login number of a credential this target issued as `kind`.
    fn verify(&self, kind: &str, credential: &str) -> Option<u64> {
        let (n, mac) = credential.split_once('.')?;
        let n: u64 = n.parse().ok()?;
        (mac.len() == 16 && u64::from_str_radix(mac, 16).ok()? == self.mac(kind, n)).then_some(n)
    }

    /// Answers an API request (its body already drained).
    pub(crate) fn answer(&self, route: Route, headers: &HeaderMap, jobs: &Jobs, counters: &Counters) -> Response<RepeatBody> {
        match route {
            Route::Login => {
                let n = self.logins.fetch_add(1, Relaxed) + 1;
                Counters::bump(&counters.logins);
                Counters::bump(&counters.ok_2xx);
                let mut response = json(StatusCode::OK, format!(r#"{{"token":"{}"}}"#, self.issue("token", n)));
                let cookie = format!("session={}; Path=/; HttpOnly", self.issue("session", n));
                if let Ok(v) = HeaderValue::from_str(&cookie) {
                    response.headers_mut().insert(SET_COOKIE, v);
                }
                response
            }
            Route::Me => {
                let token = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
                match token.and_then(|t| self.verify("token", t.trim())) {
                    Some(n) => user(n, counters),
                    None => unauthorized(counters),
                }
            }
            Route::Session => {
                let session = headers
                    .get_all(COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .filter_map(|c| c.trim().strip_prefix("session="))
                    .find_map(|s| self.verify("session", s));
                match session {
                    Some(n) => user(n, counters),
                    None => unauthorized(counters),
                }
            }
            Route::Submit => {
                let id = self.next_job.fetch_add(1, Relaxed) + 1;
                {
                    let mut ring = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
                    let slot = (id % JOB_CAPACITY as u64) as usize;
                    if ring.len() <= slot {
                        // Grows with use, up to JOB_CAPACITY slots.
                        ring.resize(slot + 1, (0, Instant::now()));
                    }
                    ring[slot] = (id, Instant::now());
                }
                Counters::bump(&counters.jobs_submitted);
                if jobs.never_finishes(id) {
                    Counters::bump(&counters.jobs_never_finishing);
                }
                Counters::bump(&counters.ok_2xx);
                json(StatusCode::ACCEPTED, format!(r#"{{"id":"{id}"}}"#))
            }
            Route::Status(id) => {
                let submitted = id.parse::<u64>().ok().filter(|&n| n > 0).and_then(|n| {
                    let ring = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
                    ring.get((n % JOB_CAPACITY as u64) as usize).filter(|(stored, _)| *stored == n).map(|&(_, at)| (n, at))
                });
                Counters::bump(&counters.job_polls);
                match submitted {
                    Some((n, at)) => {
                        let done = !jobs.never_finishes(n) && at.elapsed() >= jobs.done_after;
                        let status = if done { "done" } else { "pending" };
                        Counters::bump(&counters.ok_2xx);
                        json(StatusCode::OK, format!(r#"{{"id":"{n}","status":"{status}"}}"#))
                    }
                    None => {
                        Counters::bump(&counters.client_errors_4xx);
                        json(StatusCode::NOT_FOUND, r#"{"error":"no such job"}"#.to_string())
                    }
                }
            }
        }
    }
}

fn user(n: u64, counters: &Counters) -> Response<RepeatBody> {
    Counters::bump(&counters.ok_2xx);
    json(StatusCode::OK, format!(r#"{{"user":"user-{n}"}}"#))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quarter_never_finishes_every_fourth() {
        let jobs = Jobs { never_finish: 0.25, ..Jobs::default() };
        let stuck: Vec<u64> = (1..=12).filter(|&n| jobs.never_finishes(n)).collect();
        assert_eq!(stuck, [4, 8, 12]);
        let none = Jobs::default();
        assert!((1..=1000).all(|n| !none.never_finishes(n)));
        let all = Jobs { never_finish: 1.0, ..Jobs::default() };
        assert!((1..=1000).all(|n| all.never_finishes(n)));
        let third = Jobs { never_finish: 1.0 / 3.0, ..Jobs::default() };
        assert_eq!((1..=300).filter(|&n| third.never_finishes(n)).count(), 100);
    }

    #[test]
    fn credentials_verify_only_as_issued() {
        let api = Api::default();
        let token = api.issue("token", 7);
        assert_eq!(api.verify("token", &token), Some(7));
        assert_eq!(api.verify("session", &token), None, "a token is not a session id");
        assert_eq!(api.verify("token", "7.0000000000000000"), None);
        assert_eq!(api.verify("token", "garbage"), None);
        assert_eq!(Api::default().verify("token", &token), None, "another server's token");
    }

    #[test]
    fn routes() {
        assert_eq!(route(&Method::POST, "/login"), Some(Route::Login));
        assert_eq!(route(&Method::GET, "/login"), None);
        assert_eq!(route(&Method::GET, "/jobs/12"), Some(Route::Status("12".into())));
        assert_eq!(route(&Method::GET, "/jobs/1/x"), None);
        assert_eq!(route(&Method::GET, "/"), None);
    }
}
