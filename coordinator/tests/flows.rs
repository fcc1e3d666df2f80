//! Flows end to end (docs/plan.md, "Flows"): `stampede run` with local
//! agents against a small login and job service this test serves itself
//! (the built-in target's own job API is another branch's work):
//! login → token (captured from JSON) and cookie → calls that need each;
//! submit → id → poll until done, some jobs never finishing → `stuck`
//! counted exactly; a capture that finds nothing fails as `capture`.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    fn answer(&self, method: &str, path: &str, head: &str) -> (u16, Vec<String>, String) {
        let header = |name: &str| head.lines().find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_string()));
        match (method, path) {
            ("POST", "/login") => {
                let n = self.next_id.fetch_add(1, Ordering::Relaxed);
                let (token, session) = (format!("tok-secret-{n}"), format!("s{n}"));
                self.tokens.lock().unwrap().insert(token.clone());
                self.sessions.lock().unwrap().insert(session.clone());
                (200, vec![format!("Set-Cookie: session={session}; Path=/; HttpOnly")], format!(r#"{{"token":"{token}"}}"#))
            }
            ("GET", "/me") => {
                let ok = header("authorization").and_then(|v| v.strip_prefix("Bearer ").map(str::to_string)).is_some_and(|t| self.tokens.lock().unwrap().contains(&t));
                if ok { (200, vec![], r#"{"user":"u"}"#.into()) } else { (401, vec![], String::new()) }
            }
            ("GET", "/session") => {
                let ok = header("cookie").and_then(|c| c.split("; ").find_map(|kv| kv.strip_prefix("session=").map(str::to_string))).is_some_and(|s| self.sessions.lock().unwrap().contains(&s));
                if ok { (200, vec![], "{}".into()) } else { (401, vec![], String::new()) }
            }
            ("POST", "/jobs") => {
                let mut jobs = self.jobs.lock().unwrap();
                jobs.push(Instant::now());
                (202, vec![], format!(r#"{{"id":"{}"}}"#, jobs.len() - 1))
            }
            ("GET", p) if p.starts_with("/jobs/") => {
                let id: usize = p["/jobs/".len()..].parse().unwrap_or(usize::MAX);
                match self.jobs.lock().unwrap().get(id) {
                    None => (404, vec![], String::new()),
                    Some(at) => {
                        let done = !id.is_multiple_of(4) && at.elapsed() >= DONE_AFTER;
                        (200, vec![], format!(r#"{{"id":"{id}","status":"{}"}}"#, if done { "done" } else { "pending" }))
                    }
                }
            }
            _ => (404, vec![], String::new()),
        }
    }
}

/// A keep-alive HTTP/1.1 server for `service` on 127.0.0.1, on its own runtime.
struct Server {
    rt: tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    service: Arc<Service>,
}

impl Server {
    fn start() -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let service = Arc::new(Service::default());
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let s = service.clone();
        rt.spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, s.clone()));
            }
        });
        Server { rt, addr, service }
    }
}

async fn serve(mut conn: tokio::net::TcpStream, service: Arc<Service>) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let length: usize = head.lines().find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("content-length")).and_then(|(_, v)| v.trim().parse().ok())).unwrap_or(0);
        while buf.len() < end + length {
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..end + length);
        let mut line = head.lines().next().unwrap_or("").split(' ');
        let (method, path) = (line.next().unwrap_or(""), line.next().unwrap_or(""));
        let (status, headers, body) = service.answer(method, path, &head);
        let mut out = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
        for h in headers {
            out.push_str(&h);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        out.push_str(&body);
        if conn.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Dropping the runtime ends the accept loop and every connection.
        let _ = &self.rt;
    }
}

/// `stampede run PLAN --local-agents N --out DIR`: exit code, stderr, report.
fn run(plan: &str, agents: &str) -> (i32, String, Value) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plan.yaml");
    std::fs::write(&file, plan).unwrap();
    let out_dir = dir.path().join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_stampede")).args(["run", "--local-agents", agents]).arg(&file).arg("--out").arg(&out_dir).output().expect("stampede runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let text = std::fs::read_to_string(Path::new(&out_dir).join("report.json")).unwrap_or_else(|_| panic!("no report; stderr:\n{stderr}"));
    (output.status.code().unwrap_or(-1), stderr, serde_json::from_str(&text).unwrap())
}

fn step<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["steps"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("no step {name} in {}", report["steps"]))
}

/// 12 flows over 2 agents: each logs in, calls `/me` with the captured
/// token and `/session` with the cookie it was given; every call is
/// accepted, each request is reported under `STEP/REQUEST`, the flow once
/// under its step, and the token (a secret) is in no output.
#[test]
fn login_then_token_and_cookie_calls() {
    let server = Server::start();
    let plan = format!(
        r#"
name: login
target: http://{}
phases:
  - {{ name: users, load: {{ model: iterations, count: 12, concurrency: 3, max_duration: 30s }} }}
steps:
  - name: user
    flow:
      - name: login
        request: {{ method: POST, path: /login, body: '{{"user":"u{{{{worker}}}}"}}' }}
        capture: {{ token: {{ json: "$.token" }} }}
      - name: me
        request: {{ path: /me, headers: {{ authorization: "Bearer {{{{token}}}}" }} }}
        expect: {{ status: 200 }}
        checks: [{{ name: is-user, json: '$.user == "u"' }}]
      - name: session
        request: {{ path: /session }}
        expect: {{ status: 200 }}
slos:
  - {{ metric: error_rate, scope: step:user, pass: "< 0.1%" }}
  - {{ metric: error_rate, scope: step:user/me, pass: "< 0.1%" }}
  - {{ metric: check:is-user, pass: "> 99%" }}
"#,
        server.addr
    );
    let (code, stderr, report) = run(&plan, "2");
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
    let plan = format!(
        r#"
name: jobs
target: http://{}
# A stuck flow (2 s of polls) outlasts many timeouts and intervals: its
# record, due at its start, is still accepted and final.
interval: 200ms
timeout: 500ms
phases:
  - {{ name: submit, load: {{ model: iterations, count: 20, concurrency: 4, max_duration: 60s }} }}
steps:
  - name: job
    flow:
      - name: submit
        request: {{ method: POST, path: /jobs, body: "{{}}" }}
        expect: {{ status: 202 }}
        capture: {{ id: {{ json: "$.id" }} }}
      - name: poll
        request: {{ path: "/jobs/{{{{id}}}}" }}
        repeat_until: {{ checks: {{ name: done, json: '$.status == "done"' }}, every: 200ms, for: 2s }}
slos:
  - {{ metric: "errors:stuck", scope: step:job, pass: "< 1" }}
  - {{ metric: "errors:stuck", scope: step:job/poll, pass: "< 1" }}
"#,
        server.addr
    );
    let (code, stderr, report) = run(&plan, "2");
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
    let plan = format!(
        r#"
name: nocapture
target: http://{}
phases:
  - {{ name: p, load: {{ model: iterations, count: 3, concurrency: 1, max_duration: 30s }} }}
steps:
  - name: f
    flow:
      - {{ name: submit, request: {{ method: POST, path: /jobs }}, capture: {{ id: {{ json: "$.job_id" }} }} }}
      - {{ name: poll, request: {{ path: "/jobs/{{{{id}}}}" }} }}
"#,
        server.addr
    );
    let (_, stderr, report) = run(&plan, "1");
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
    let plan = format!(
        r#"
name: models
target: http://{}
phases:
  - {{ name: open, duration: 1s, load: {{ model: open, rate: 10/s }} }}
  - {{ name: closed, duration: 1s, load: {{ model: closed, concurrency: 2 }} }}
steps:
  - name: user
    flow:
      - {{ name: login, request: {{ method: POST, path: /login }}, capture: {{ token: {{ json: "$.token" }} }} }}
      - {{ name: me, request: {{ path: /me, headers: {{ authorization: "Bearer {{{{token}}}}" }} }}, expect: {{ status: 200 }} }}
"#,
        server.addr
    );
    let (code, stderr, report) = run(&plan, "1");
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
