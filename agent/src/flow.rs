//! A flow step (docs/plan.md, "Flows"; model in `common/src/plan/flow.rs`):
//! its requests compiled once per run, and one execution of it — the
//! requests in order on one connection, with a cookie jar and the captured
//! values of this execution only (k6 resets both per iteration).
//!
//! Only flow steps come here: every other step keeps `worker.rs`'s path.
//! Each request is recorded under its own flow slot (contract F); the
//! caller records the whole flow under the step.
//!
//! Captured values may be secrets (a token): they are kept in this
//! execution's memory, rendered into its requests, and never logged.

use std::time::{Duration, Instant};

use regex::bytes::Regex;
use stampede_common::plan::template::Names;
use stampede_common::plan::{capture_names, CaptureKind, Plan, Segment};
use stampede_common::stats::ErrorKind;

use crate::check::{CheckBits, CompiledChecks, Received};
use crate::connect::Stream;
use crate::http::{Conn, RequestTemplate};
use crate::recorder::Outcome;
use crate::template::{Ctx, Dynamic};

/// A flow step's requests, compiled once per run.
#[derive(Debug)]
pub struct CompiledFlow {
    requests: Vec<FlowRequest>,
    /// How many values an execution captures (`Var::Capture` indexes them).
    captures: usize,
}

#[derive(Debug)]
struct FlowRequest {
    /// The step index this request is recorded under.
    slot: usize,
    /// Its expect and checks; sent as rendered by `dynamic`.
    template: RequestTemplate,
    dynamic: Dynamic,
    /// (index among the flow's captured values, how to find it).
    captures: Vec<(usize, Extract)>,
    until: Option<Until>,
}

#[derive(Debug)]
enum Extract {
    Json(Vec<Segment>),
    Header(String),
    Regex(Regex),
}

#[derive(Debug)]
struct Until {
    checks: CompiledChecks,
    every: Duration,
    within: Duration,
}

impl CompiledFlow {
    /// Step `step`'s flow (`None` for a plain step). `extra`: the header
    /// lines every request carries after `Host` (the `User-Agent`).
    pub fn new(plan: &Plan, step: usize, authority: &str, extra: &str) -> Result<Option<CompiledFlow>, String> {
        let Some(flow) = &plan.steps[step].flow else { return Ok(None) };
        let names = capture_names(flow);
        let first = plan.first_flow_slot(step);
        let mut requests = Vec::with_capacity(flow.len());
        for (j, r) in flow.iter().enumerate() {
            let slot = first + j;
            let checks = CompiledChecks::new(&r.checks, plan.flow_check_base(slot)).map_err(|e| format!("{}: {e}", r.name))?;
            let template = RequestTemplate::for_request(&r.request, r.expect.as_ref(), authority).with_checks(checks).keeping_response();
            let mut captures = Vec::new();
            for (name, c) in &r.capture {
                let index = names.iter().position(|n| n == name).expect("every capture is named in the flow");
                let extract = match c.kind().map_err(|e| format!("{}: capture {name}: {e}", r.name))? {
                    CaptureKind::Json(j) => Extract::Json(j.path),
                    CaptureKind::Header(h) => Extract::Header(h),
                    CaptureKind::Regex(re) => Extract::Regex(Regex::new(&re).map_err(|e| e.to_string())?),
                };
                captures.push((index, extract));
            }
            let until = match &r.repeat_until {
                None => None,
                // Conditions, not checks: not counted in any check tally.
                Some(u) => Some(Until { checks: CompiledChecks::new(u.checks.as_slice(), 0)?, every: u.every.as_duration(), within: u.within.as_duration() }),
            };
            let dynamic = Dynamic::with_names(&r.request, authority, extra, &Names { captures: &names, data: plan.steps[step].data_columns() });
            requests.push(FlowRequest { slot: plan.flow_slot_base() + slot, template, dynamic, captures, until });
        }
        Ok(Some(CompiledFlow { requests, captures: names.len() }))
    }
}

/// What the worker gives one request of a flow: send it on `conn` (or a
/// new connection), return the outcome, the connection if reusable, the
/// TLS handshake of a connection it opened, and put the response's head
/// and kept body into `kept`. `None`: the run was cancelled (aborted).
pub(crate) trait Send1 {
    async fn send(&self, conn: Option<Conn<Stream>>, template: &RequestTemplate, wire: &[u8], kept: &mut Kept) -> Option<(Outcome, Option<Conn<Stream>>, Option<Duration>)>;
    /// Records one flow request under its slot.
    #[allow(clippy::too_many_arguments)]
    fn record(&self, slot: usize, outcome: Outcome, intended: Instant, started: Instant, done: Instant, sent: u64, handshake: Option<Duration>);
    /// Waits until `at`; false when the run was cancelled meanwhile.
    async fn wait(&self, at: Instant) -> bool;
}

/// The last response's head and kept body (swapped out of the connection).
#[derive(Debug, Default)]
pub struct Kept {
    pub head: Vec<u8>,
    pub body: Vec<u8>,
}

/// One execution of `flow`: returns the flow's outcome (a response with
/// the last status when every request succeeded, else the first failure's
/// kind, `capture` or `stuck`), the connection, and the bytes sent.
/// `intended` is the first request's intended start (open model: the
/// arrival's); each later request's is its own start. `row` is the
/// execution's data row (the step's `data:`), the same for every request.
pub async fn run(io: &impl Send1, flow: &CompiledFlow, mut conn: Option<Conn<Stream>>, mut ctx: impl FnMut() -> Ctx, row: &[String], intended: Instant) -> (Outcome, Option<Conn<Stream>>, u64) {
    let mut values = vec![String::new(); flow.captures];
    let mut jar = Jar::default();
    let mut kept = Kept::default();
    let (mut sent, mut received, mut last_status) = (0u64, 0u64, 0u16);
    let mut first = true;
    for r in &flow.requests {
        let begun = Instant::now();
        loop {
            let started = Instant::now();
            let due = if first { intended } else { started };
            first = false;
            let mut wire = r.dynamic.render_with(ctx(), &values, row);
            jar.add_header(&mut wire);
            sent += wire.len() as u64;
            let Some((outcome, back, handshake)) = io.send(conn.take(), &r.template, &wire, &mut kept).await else {
                io.record(r.slot, Outcome::Failed(ErrorKind::Aborted), due, started, Instant::now(), wire.len() as u64, None);
                return (Outcome::Failed(ErrorKind::Aborted), None, sent);
            };
            io.record(r.slot, outcome, due, started, Instant::now(), wire.len() as u64, handshake);
            conn = back;
            let status = match outcome {
                Outcome::Failed(kind) => return (Outcome::Failed(kind), conn, sent),
                Outcome::Response { status, success: false, .. } => return (Outcome::Failed(ErrorKind::for_status(status)), conn, sent),
                Outcome::Response { checks, .. } if !checks.all_passed() => return (Outcome::Failed(ErrorKind::Check), conn, sent),
                Outcome::Response { status, received: n, .. } => {
                    received += n;
                    status
                }
            };
            last_status = status;
            jar.store(&kept.head, &request_path(&wire));
            let Some(u) = &r.until else { break };
            let seen = Received { status, head: &kept.head, body: &kept.body, body_len: kept.body.len() as u64 };
            if u.checks.evaluate(&seen).all_passed() {
                break;
            }
            let next = started + u.every;
            if next > begun + u.within {
                return (Outcome::Failed(ErrorKind::Stuck), conn, sent);
            }
            if !io.wait(next).await {
                return (Outcome::Failed(ErrorKind::Aborted), None, sent);
            }
        }
        for (index, how) in &r.captures {
            match extract(how, &kept) {
                Some(v) => values[*index] = v,
                None => return (Outcome::Failed(ErrorKind::Capture), conn, sent),
            }
        }
    }
    (Outcome::Response { status: last_status, success: true, received, checks: CheckBits::default() }, conn, sent)
}

/// A captured value: a JSON string as is (any other JSON value as its
/// text), a header's value, a regex's first group; `None` when absent.
fn extract(how: &Extract, kept: &Kept) -> Option<String> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match how {
        Extract::Json(path) => {
            let doc: serde_json::Value = serde_json::from_slice(&kept.body).ok()?;
            let mut at = &doc;
            for seg in path {
                at = match seg {
                    Segment::Member(m) => at.get(m.as_str())?,
                    Segment::Index(i) => at.get(*i)?,
                };
            }
            Some(match at {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => return None,
                v => v.to_string(),
            })
        }
        Extract::Header(name) => headers(&kept.head).find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| text(v)),
        Extract::Regex(re) => re.captures(&kept.body).and_then(|c| c.get(1)).map(|m| text(m.as_bytes())),
    }
}

/// Every header of a response head, in order.
fn headers(head: &[u8]) -> impl Iterator<Item = (String, &[u8])> {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut slots);
    let parsed = resp.parse(head).is_ok();
    let list: Vec<(String, &[u8])> = if parsed { resp.headers.iter().map(|h| (h.name.to_string(), h.value)).collect() } else { Vec::new() };
    list.into_iter()
}

/// One flow execution's cookies: `Set-Cookie` from any response, sent back
/// on the later requests whose path matches (RFC 6265 §5.1.4).
///
/// Written here rather than with `cookie_store`: every request of a plan
/// goes to one origin (the plan's `target`), so the domain rules, the
/// public-suffix list and `Secure` (the target's scheme is the same for all)
/// decide nothing; what is left is name=value, `Path`, and removal by
/// `Max-Age <= 0` — a few dozen lines, against a crate with `url`,
/// `publicsuffix` and `time` behind it on the agent's hot path. `Expires`
/// is not read: a flow lasts seconds, so a cookie outliving it is the
/// norm; a past date (a removal) is read as one when the value is empty.
#[derive(Debug, Default)]
pub struct Jar {
    /// (name, value, path), in the order first set.
    cookies: Vec<(String, String, String)>,
}

impl Jar {
    /// Keeps every `Set-Cookie` of a response head.
    pub fn store(&mut self, head: &[u8], request_path: &str) {
        let path = default_path(request_path);
        for (name, value) in headers(head) {
            if name.eq_ignore_ascii_case("set-cookie") {
                self.set(&String::from_utf8_lossy(value), &path);
            }
        }
    }

    /// One `Set-Cookie` value; `default_path` is the request's directory.
    fn set(&mut self, line: &str, default_path: &str) {
        let mut parts = line.split(';');
        let Some((name, value)) = parts.next().and_then(|nv| nv.split_once('=')) else { return };
        let (name, value) = (name.trim().to_string(), value.trim().to_string());
        if name.is_empty() {
            return;
        }
        let mut path = default_path.to_string();
        let mut remove = false;
        for attr in parts {
            let (k, v) = attr.split_once('=').map_or((attr.trim(), ""), |(k, v)| (k.trim(), v.trim()));
            if k.eq_ignore_ascii_case("path") && v.starts_with('/') {
                path = v.to_string();
            } else if k.eq_ignore_ascii_case("max-age") {
                remove = v.parse::<i64>().is_ok_and(|s| s <= 0);
            } else if k.eq_ignore_ascii_case("expires") && value.is_empty() {
                remove = true;
            }
        }
        self.cookies.retain(|(n, _, p)| !(n == &name && p == &path));
        if !remove {
            self.cookies.push((name, value, path));
        }
    }

    /// The `Cookie` header's value for a request to `path`, if any cookie matches.
    pub fn header_for(&self, path: &str) -> Option<String> {
        let path = path.split(['?', '#']).next().unwrap_or("/");
        let matching: Vec<String> = self.cookies.iter().filter(|(_, _, p)| path_matches(path, p)).map(|(n, v, _)| format!("{n}={v}")).collect();
        (!matching.is_empty()).then(|| matching.join("; "))
    }

    /// Adds the `Cookie` line after the request line of a rendered request.
    fn add_header(&self, wire: &mut Vec<u8>) {
        if self.cookies.is_empty() {
            return;
        }
        let Some(line_end) = wire.windows(2).position(|w| w == b"\r\n") else { return };
        if let Some(value) = self.header_for(&request_path(wire)) {
            let line = format!("Cookie: {value}\r\n");
            wire.splice(line_end + 2..line_end + 2, line.into_bytes());
        }
    }
}

/// RFC 6265 §5.1.4: the same path, or `cookie` a prefix of it ending at a `/`.
fn path_matches(path: &str, cookie: &str) -> bool {
    path == cookie || (path.starts_with(cookie) && (cookie.ends_with('/') || path[cookie.len()..].starts_with('/')))
}

/// The path of a rendered request (its request line's target).
fn request_path(wire: &[u8]) -> String {
    let line = wire.split(|b| *b == b'\r').next().unwrap_or_default();
    let path = line.split(|b| *b == b' ').nth(1).unwrap_or(b"/");
    String::from_utf8_lossy(path).into_owned()
}

/// RFC 6265 §5.1.4's default path: the request path's directory.
fn default_path(request_path: &str) -> String {
    let path = request_path.split(['?', '#']).next().unwrap_or("/");
    match path.rfind('/') {
        Some(0) | None => "/".to_string(),
        Some(i) => path[..i].to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nSet-Cookie: session=abc; Path=/; HttpOnly\r\nSet-Cookie: pref=x; Path=/app\r\nLocation: /jobs/7\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn the_jar_sends_cookies_back_by_path_and_forgets_removed_ones() {
        let mut jar = Jar::default();
        jar.store(HEAD, "/login");
        assert_eq!(jar.header_for("/session").as_deref(), Some("session=abc"));
        assert_eq!(jar.header_for("/app/x?q=1").as_deref(), Some("session=abc; pref=x"));
        assert_eq!(jar.header_for("/apple").as_deref(), Some("session=abc"));
        jar.store(b"HTTP/1.1 200 OK\r\nSet-Cookie: session=def\r\n\r\n", "/x");
        jar.store(b"HTTP/1.1 200 OK\r\nSet-Cookie: deep=1\r\n\r\n", "/a/b?q");
        assert_eq!(jar.header_for("/a/c").as_deref(), Some("session=def; deep=1"));
        assert_eq!(jar.header_for("/").as_deref(), Some("session=def"));
        jar.store(b"HTTP/1.1 200 OK\r\nSet-Cookie: session=; Max-Age=0\r\n\r\n", "/");
        assert_eq!(jar.header_for("/"), None);
    }

    #[test]
    fn the_cookie_line_goes_after_the_request_line() {
        let mut jar = Jar::default();
        let mut wire = b"GET /session HTTP/1.1\r\nHost: h\r\n\r\n".to_vec();
        jar.add_header(&mut wire);
        assert_eq!(wire, b"GET /session HTTP/1.1\r\nHost: h\r\n\r\n");
        jar.store(HEAD, "/login");
        jar.add_header(&mut wire);
        assert_eq!(String::from_utf8(wire).unwrap(), "GET /session HTTP/1.1\r\nCookie: session=abc\r\nHost: h\r\n\r\n");
    }

    #[test]
    fn captures_find_json_headers_and_regex_groups_or_nothing() {
        let kept = Kept { head: HEAD.to_vec(), body: br#"{"token":"t-1","id":42,"job":{"n":null}} id=77"#.to_vec() };
        let json = |p: &str| Extract::Json(stampede_common::plan::JsonCheck::parse(p).unwrap().path);
        assert_eq!(extract(&json("$.token"), &kept).as_deref(), None, "the body with a regex tail is not JSON");
        let kept_json = Kept { body: br#"{"token":"t-1","id":42,"job":{"n":null}}"#.to_vec(), ..Kept::default() };
        assert_eq!(extract(&json("$.token"), &kept_json).as_deref(), Some("t-1"));
        assert_eq!(extract(&json("$.id"), &kept_json).as_deref(), Some("42"));
        assert_eq!(extract(&json("$.job.n"), &kept_json), None);
        assert_eq!(extract(&json("$.nope"), &kept_json), None);
        assert_eq!(extract(&Extract::Header("location".into()), &kept).as_deref(), Some("/jobs/7"));
        assert_eq!(extract(&Extract::Header("x-none".into()), &kept), None);
        assert_eq!(extract(&Extract::Regex(Regex::new(r"id=(\d+)").unwrap()), &kept).as_deref(), Some("77"));
        assert_eq!(extract(&Extract::Regex(Regex::new(r"zz=(\d+)").unwrap()), &kept), None);
    }
}
