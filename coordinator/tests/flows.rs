//! Flows end to end (docs/plan.md, "Flows"): `stampede run` with local
//! agents against a small login and job service this test serves itself
//! (the built-in target's own job API is another branch's work):
//! login → token (captured from JSON) and cookie → calls that need each;
//! submit → id → poll until done, some jobs never finishing → `stuck`
//! counted exactly; a capture that finds nothing fails as `capture`.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::http::{HttpServer, Reply, Request};
use support::{run_plan, step};

/// Every 4th job (ids 0, 4, 8, ...) never finishes; the others are done
/// 200 ms after their submission.
#[derive(Default)]
struct Service {
    next_id: AtomicU64,
    jobs: Mutex<Vec<Instant>>,
    tokens: Mutex<HashSet<String>>,
    sessions: Mutex<HashSet<String>>,
}

const DONE_AFTER: Duration = Duration::from_millis(200);

impl Service {
    fn answer(&self, r: &Request) -> Reply {
        match (r.method, r.path) {
            ("POST", "/login") => {
                let n = self.next_id.fetch_add(1, Ordering::Relaxed);
                let (token, session) = (format!("tok-secret-{n}"), format!("s{n}"));
                self.tokens.lock().unwrap().insert(token.clone());
                self.sessions.lock().unwrap().insert(session.clone());
                Reply::new(200, format!(r#"{{"token":"{token}"}}"#)).header(format!("Set-Cookie: session={session}; Path=/; HttpOnly"))
            }
            ("GET", "/me") => {
                let ok = r.header("authorization").and_then(|v| v.strip_prefix("Bearer ").map(str::to_string)).is_some_and(|t| self.tokens.lock().unwrap().contains(&t));
                if ok { Reply::new(200, r#"{"user":"u"}"#) } else { Reply::new(401, "") }
            }
            ("GET", "/session") => {
                let ok = r.header("cookie").and_then(|c| c.split("; ").find_map(|kv| kv.strip_prefix("session=").map(str::to_string))).is_some_and(|s| self.sessions.lock().unwrap().contains(&s));
                if ok { Reply::new(200, "{}") } else { Reply::new(401, "") }
            }
            ("POST", "/jobs") => {
                let mut jobs = self.jobs.lock().unwrap();
                jobs.push(Instant::now());
                Reply::new(202, format!(r#"{{"id":"{}"}}"#, jobs.len() - 1))
            }
            ("GET", p) if p.starts_with("/jobs/") => {
                let id: usize = p["/jobs/".len()..].parse().unwrap_or(usize::MAX);
                match self.jobs.lock().unwrap().get(id) {
                    None => Reply::new(404, ""),
                    Some(at) => {
                        let done = !id.is_multiple_of(4) && at.elapsed() >= DONE_AFTER;
                        Reply::new(200, format!(r#"{{"id":"{id}","status":"{}"}}"#, if done { "done" } else { "pending" }))
                    }
                }
            }
            _ => Reply::new(404, ""),
        }
    }
}

/// The service on a server of its own (`support/http.rs`).
struct Server {
    http: HttpServer,
    service: Arc<Service>,
}

impl Server {
    fn start() -> Server {
        let service = Arc::new(Service::default());
        let s = service.clone();
        Server { http: HttpServer::start(move |r| s.answer(r)), service }
    }
}

/// 12 flows over 2 agents: each logs in, calls `/me` with the captured
/// token and `/session` with the cookie it was given; every call is
/// accepted, each request is reported under `STEP/REQUEST`, the flow once
/// under its step, and the token (a secret) is in no output.
#[test]
fn login_then_token_and_cookie_calls() {
    let server = Server::start();
    let plan = server.http.plan(
        r#"
name: login
target: http://TARGET
phases:
  - { name: users, load: { model: iterations, count: 12, concurrency: 3, max_duration: 30s } }
steps:
  - name: user
    flow:
      - name: login
        request: { method: POST, path: /login, body: '{"user":"u{{worker}}"}' }
        capture: { token: { json: "$.token" } }
      - name: me
        request: { path: /me, headers: { authorization: "Bearer {{token}}" } }
        expect: { status: 200 }
        checks: [{ name: is-user, json: '$.user == "u"' }]
      - name: session
        request: { path: /session }
        expect: { status: 200 }
slos:
  - { metric: error_rate, scope: step:user, pass: "< 0.1%" }
  - { metric: error_rate, scope: step:user/me, pass: "< 0.1%" }
  - { metric: check:is-user, pass: "> 99%" }
"#,
    );
    let (code, stderr, report) = run_plan(&plan, 2);
    assert_eq!(code, 0, "{stderr}\n{}", report["slos"]);
    assert_eq!(report["totals"]["requests"], 12, "the run counts flows: {}", report["totals"]);
    assert_eq!(report["totals"]["errors"], 0);
    assert_eq!(step(&report, "user")["requests"], 12);
    for r in ["user/login", "user/me", "user/session"] {
        assert_eq!(step(&report, r)["requests"], 12, "{r}");
        assert_eq!(step(&report, r)["errors"], 0, "{r}: {}", step(&report, r));
    }
    assert_eq!(report["checks"]["is-user"]["passed"], 12);
    assert_eq!(server.service.next_id.load(Ordering::Relaxed), 12, "one login per flow");
    assert!(!stderr.contains("tok-secret"), "a captured token reached the log");
    assert!(!report.to_string().contains("tok-secret"), "a captured token reached the report");
}

/// 20 jobs at concurrency 4: each flow submits one and polls it every
/// 200 ms for at most 2 s. Jobs 0, 4, 8, 12, 16 never finish: exactly 5
/// flows are `stuck`, and `errors:stuck` says so (an SLO of 0 stuck fails);
/// the other 15 end `done`. The polls themselves are successful requests.
#[test]
fn submit_then_poll_counts_the_stuck_jobs_exactly() {
    let server = Server::start();
    let plan = server.http.plan(
        r#"
name: jobs
target: http://TARGET
# A stuck flow (2 s of polls) outlasts many timeouts and intervals: its
# record, due at its start, is still accepted and final.
interval: 200ms
timeout: 500ms
phases:
  - { name: submit, load: { model: iterations, count: 20, concurrency: 4, max_duration: 60s } }
steps:
  - name: job
    flow:
      - name: submit
        request: { method: POST, path: /jobs, body: "{}" }
        expect: { status: 202 }
        capture: { id: { json: "$.id" } }
      - name: poll
        request: { path: "/jobs/{{id}}" }
        repeat_until: { checks: { name: done, json: '$.status == "done"' }, every: 200ms, for: 2s }
slos:
  - { metric: "errors:stuck", scope: step:job, pass: "< 1" }
  - { metric: "errors:stuck", scope: step:job/poll, pass: "< 1" }
"#,
    );
    let (code, stderr, report) = run_plan(&plan, 2);
    assert_eq!(code, 1, "0 stuck does not hold: {stderr}");
    let job = step(&report, "job");
    assert_eq!(job["requests"], 20);
    assert_eq!(job["errors"], 5, "{job}");
    assert_eq!(report["totals"]["errors_by_kind"], serde_json::json!({ "stuck": 5 }));
    let slos = report["slos"].as_array().unwrap();
    assert_eq!(slos[0]["observed"], 5.0, "{}", slos[0]);
    assert_eq!(slos[0]["status"], "fail");
    // A poll that did not hold yet is a successful request of its own.
    assert_eq!(slos[1]["observed"], 0.0, "{}", slos[1]);
    let poll = step(&report, "job/poll");
    assert_eq!(poll["errors"], 0);
    // 15 jobs polled until done (≥ 2 polls: done after 200 ms), 5 for 2 s (~11 polls each).
    let polls = poll["requests"].as_u64().unwrap();
    assert!((15 * 2 + 5 * 9..=15 * 5 + 5 * 12).contains(&polls), "{polls} polls");
    assert_eq!(report["verdict"], "fail", "failed by the SLO, every number in (not incomplete): {}", report["verdict_reasons"]);
    assert_eq!(step(&report, "job/submit")["requests"], 20);
    assert_eq!(server.service.jobs.lock().unwrap().len(), 20);
}

/// A capture that finds nothing fails the flow as `capture`, and the
/// requests after it are not sent.
#[test]
fn a_capture_that_finds_nothing_fails_the_flow() {
    let server = Server::start();
    let plan = server.http.plan(
        r#"
name: nocapture
target: http://TARGET
phases:
  - { name: p, load: { model: iterations, count: 3, concurrency: 1, max_duration: 30s } }
steps:
  - name: f
    flow:
      - { name: submit, request: { method: POST, path: /jobs }, capture: { id: { json: "$.job_id" } } }
      - { name: poll, request: { path: "/jobs/{{id}}" } }
"#,
    );
    let (_, stderr, report) = run_plan(&plan, 1);
    assert_eq!(report["totals"]["errors_by_kind"], serde_json::json!({ "capture": 3 }), "{stderr}");
    assert_eq!(step(&report, "f/submit")["requests"], 3);
    assert_eq!(step(&report, "f/poll")["requests"], 0);
}

/// The open and closed models count flows too: an open arrival is one
/// flow (10/s for 1 s: exactly 10), a closed connection's turn is one. The
/// flow's latency runs from the arrival's intended time to its last
/// response, so it is at least the sum of its requests' service times.
#[test]
fn open_arrivals_and_closed_turns_are_flows() {
    let server = Server::start();
    let plan = server.http.plan(
        r#"
name: models
target: http://TARGET
phases:
  - { name: open, duration: 1s, load: { model: open, rate: 10/s } }
  - { name: closed, duration: 1s, load: { model: closed, concurrency: 2 } }
steps:
  - name: user
    flow:
      - { name: login, request: { method: POST, path: /login }, capture: { token: { json: "$.token" } } }
      - { name: me, request: { path: /me, headers: { authorization: "Bearer {{token}}" } }, expect: { status: 200 } }
"#,
    );
    let (code, stderr, report) = run_plan(&plan, 1);
    assert_eq!(code, 0, "{stderr}");
    let phases = report["phases"].as_array().unwrap();
    assert_eq!(phases[0]["requests"], 10, "{}", phases[0]);
    let closed = phases[1]["requests"].as_u64().unwrap();
    assert!(closed >= 2, "{}", phases[1]);
    let user = step(&report, "user");
    assert_eq!(user["requests"].as_u64().unwrap(), 10 + closed);
    assert_eq!(user["errors"], 0, "{user}");
    for r in ["user/login", "user/me"] {
        assert_eq!(step(&report, r)["requests"].as_u64().unwrap(), 10 + closed, "{r}");
    }
    let p50 = |name: &str| step(&report, name)["latency_ms"]["p50"].as_f64().unwrap();
    assert!(p50("user") >= p50("user/me"), "a flow lasts at least its last request");
}
