//! A templated request (docs/plan.md, "Templates"), compiled once per run:
//! its whole wire form as literal bytes and the `{{...}}` between them,
//! rendered per request into fresh bytes.
//!
//! Only requests with a template come here: [`Dynamic::new`] is `None` for
//! every other one, and those keep the bytes `http::RequestTemplate`
//! serialized once. A rendered request allocates its buffer; against an
//! HTTP round trip that is noise, and it keeps the lean path untouched.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use stampede_common::plan::template::{self, Columns, Names, Piece, Var};
use stampede_common::plan::{Request, Text};

/// What the variables of one request stand for (their fleet-wide meaning is
/// made by the caller: see `worker.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ctx {
    pub seq: u64,
    pub worker: u64,
    pub iteration: u64,
}

/// Its literal pieces may hold a secret header's value: `Debug` prints none of them.
pub struct Dynamic {
    /// Request line and headers, without `Content-Length` and the blank line.
    head: Vec<Piece>,
    body: Vec<Piece>,
    /// `Content-Length: 0` even for an empty body (POST, PUT, PATCH).
    always_length: bool,
}

impl Dynamic {
    /// `request` as sent, `extra` header lines (each ending in CRLF) after
    /// `Host`, `data` its step's data file's columns; `None` when no `{{` is
    /// in it (see [`Dynamic::is_static`] for a request with only `\{{`).
    /// The plan was validated, so every value parses; a secret's value is
    /// never parsed.
    pub fn new(request: &Request, authority: &str, extra: &str, data: Columns<'_>) -> Option<Dynamic> {
        let plain = |t: &Text| matches!(t, Text::Plain(s) if s.contains("{{"));
        if !request.path.contains("{{") && !request.headers.values().any(plain) && !request.body.as_ref().is_some_and(plain) {
            return None;
        }
        Some(Dynamic::with_names(request, authority, extra, &Names { captures: &[], data }))
    }

    /// A flow request (`flow.rs`), always rendered per request: `{{NAME}}`
    /// of `names.captures` (the flow's capture names) is a captured value.
    pub fn with_names(request: &Request, authority: &str, extra: &str, names: &Names<'_>) -> Dynamic {
        let parse = |s: &str| template::parse_with(s, names).unwrap_or_else(|_| vec![Piece::Lit(s.to_string())]);
        let text = |t: &Text| match t {
            Text::Plain(s) => parse(s),
            secret => vec![Piece::Lit(secret.sent().to_string())],
        };
        let mut head = vec![Piece::Lit(format!("{} ", request.method))];
        head.extend(parse(&request.path));
        head.push(Piece::Lit(format!(" HTTP/1.1\r\nHost: {authority}\r\n{extra}")));
        for (name, value) in &request.headers {
            head.push(Piece::Lit(format!("{name}: ")));
            head.extend(text(value));
            head.push(Piece::Lit("\r\n".into()));
        }
        let body = request.body.as_ref().map(text).unwrap_or_default();
        Dynamic { head, body, always_length: matches!(request.method.as_str(), "POST" | "PUT" | "PATCH") }
    }

    /// No variable, only escaped `\{{`: the same bytes every time, to be
    /// rendered once.
    pub fn is_static(&self) -> bool {
        !template::is_templated(&self.head) && !template::is_templated(&self.body)
    }

    /// The request's bytes for `ctx`.
    pub fn render(&self, ctx: Ctx) -> Vec<u8> {
        self.render_with(ctx, &[], &[])
    }

    /// The request's bytes for `ctx`, a flow's `captures` values so far and
    /// the execution's data `row` (empty for a step without data).
    pub fn render_with(&self, ctx: Ctx, captures: &[String], row: &[String]) -> Vec<u8> {
        let mut vars = Vars { ctx, captures, row, uuid: None, now_ms: None };
        let mut body = Vec::new();
        for p in &self.body {
            vars.put(&mut body, p);
        }
        let mut out = Vec::with_capacity(256 + body.len());
        for p in &self.head {
            vars.put(&mut out, p);
        }
        if !body.is_empty() || self.always_length {
            let _ = write!(out, "Content-Length: {}\r\n", body.len());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
        out
    }
}

impl std::fmt::Debug for Dynamic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dynamic").field("pieces", &(self.head.len() + self.body.len())).finish_non_exhaustive()
    }
}

/// One request's values: `uuid` and `now_ms` are taken once per request,
/// so every occurrence in it agrees; `random_int` is drawn per occurrence.
struct Vars<'a> {
    ctx: Ctx,
    captures: &'a [String],
    row: &'a [String],
    uuid: Option<uuid::Uuid>,
    now_ms: Option<u128>,
}

impl Vars<'_> {
    fn put(&mut self, out: &mut Vec<u8>, piece: &Piece) {
        // Writing to a Vec cannot fail.
        let _ = match piece {
            Piece::Lit(s) => out.write_all(s.as_bytes()),
            Piece::Var(Var::Seq) => write!(out, "{}", self.ctx.seq),
            Piece::Var(Var::Worker) => write!(out, "{}", self.ctx.worker),
            Piece::Var(Var::Iteration) => write!(out, "{}", self.ctx.iteration),
            // The OS's randomness (getrandom): ids must not collide across
            // workers and agents, which a per-thread seeded generator risks.
            Piece::Var(Var::Uuid) => write!(out, "{}", self.uuid.get_or_insert_with(uuid::Uuid::new_v4).hyphenated()),
            Piece::Var(Var::RandomInt(lo, hi)) => write!(out, "{}", fastrand::i64(*lo..=*hi)),
            // Validation made sure it was captured before; a secret value, never logged.
            Piece::Var(Var::Capture(i)) => out.write_all(self.captures.get(*i).map_or(&b""[..], |v| v.as_bytes())),
            // A data file's value (maybe a password): sent, never logged.
            Piece::Var(Var::Data(i)) => out.write_all(self.row.get(*i).map_or(&b""[..], |v| v.as_bytes())),
            Piece::Var(Var::NowMs) => {
                let now = *self.now_ms.get_or_insert_with(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis()));
                write!(out, "{now}")
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Request {
        Request {
            method: if body.is_some() { "POST".into() } else { "GET".into() },
            path: path.into(),
            headers: headers.iter().map(|(n, v)| (n.to_string(), Text::from(*v))).collect(),
            body: body.map(Text::from),
        }
    }

    fn text(d: &Dynamic, ctx: Ctx) -> String {
        String::from_utf8(d.render(ctx)).unwrap()
    }

    const CTX: Ctx = Ctx { seq: 42, worker: 3, iteration: 7 };

    #[test]
    fn a_request_without_templates_is_not_dynamic() {
        assert!(Dynamic::new(&request("/a", &[("x-a", "1")], Some(r#"{"a":{"b":1}}"#)), "h:1", "", Columns::None).is_none());
        let escaped = Dynamic::new(&request(r"/a/\{{seq}}", &[], None), "h:1", "", Columns::None).unwrap();
        assert!(escaped.is_static());
        assert!(text(&escaped, CTX).starts_with("GET /a/{{seq}} HTTP/1.1\r\n"));
    }

    #[test]
    fn renders_path_headers_and_body_with_the_right_length() {
        let r = request("/items/{{seq}}?w={{worker}}&i={{iteration}}", &[("x-id", "id-{{seq}}")], Some(r#"{"id":{{seq}},"r":{{random_int(5,5)}}}"#));
        let d = Dynamic::new(&r, "h:1", "User-Agent: t\r\n", Columns::None).unwrap();
        let body = r#"{"id":42,"r":5}"#;
        let want = format!("POST /items/42?w=3&i=7 HTTP/1.1\r\nHost: h:1\r\nUser-Agent: t\r\nx-id: id-42\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        assert_eq!(text(&d, CTX), want);
    }

    #[test]
    fn uuid_is_one_per_request_and_new_for_the_next() {
        let d = Dynamic::new(&request("/{{uuid}}", &[("x-u", "{{uuid}}")], None), "h", "", Columns::None).unwrap();
        let ids = |s: String| -> (String, String) {
            let path = s.split(' ').nth(1).unwrap()[1..].to_string();
            let header = s.lines().find_map(|l| l.strip_prefix("x-u: ")).unwrap().to_string();
            (path, header)
        };
        let (a, a2) = ids(text(&d, CTX));
        let (b, _) = ids(text(&d, CTX));
        assert_eq!(a, a2, "one uuid per request");
        assert_ne!(a, b, "a new uuid per request");
        assert!(uuid::Uuid::parse_str(&a).is_ok());
    }

    #[test]
    fn random_int_stays_in_its_bounds_and_now_ms_is_now() {
        let d = Dynamic::new(&request("/{{random_int(-2,2)}}/{{now_ms}}", &[], None), "h", "", Columns::None).unwrap();
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis();
        for _ in 0..200 {
            let s = text(&d, CTX);
            let path = s.split(' ').nth(1).unwrap();
            let mut parts = path[1..].split('/');
            let n: i64 = parts.next().unwrap().parse().unwrap();
            let t: u128 = parts.next().unwrap().parse().unwrap();
            assert!((-2..=2).contains(&n));
            assert!(t >= before && t <= before + 60_000);
        }
    }

    #[test]
    fn a_data_row_fills_its_columns() {
        let columns = ["user".to_string(), "password".to_string()];
        let r = request("/login/{{data.user}}", &[("x-p", "{{data.password}}")], None);
        let d = Dynamic::new(&r, "h", "", Columns::Known(&columns)).unwrap();
        let row = ["alice".to_string(), "s3cret".to_string()];
        let s = String::from_utf8(d.render_with(CTX, &[], &row)).unwrap();
        assert!(s.starts_with("GET /login/alice HTTP/1.1\r\n"), "{s}");
        assert!(s.contains("x-p: s3cret\r\n"), "{s}");
    }

    #[test]
    fn a_secret_value_is_sent_as_is() {
        let yaml = r#"
name: t
target: http://127.0.0.1:1
phases: [{ name: p, duration: 1s, load: { model: closed, concurrency: 1 } }]
steps:
  - name: s
    request: { path: "/{{seq}}", headers: { authorization: { secret_env: T } } }
"#;
        let mut plan = stampede_common::plan::load_str(yaml, stampede_common::plan::Format::Yaml, std::path::Path::new("t.yaml")).unwrap();
        let values = [("env:T".to_string(), "tok{{seq}}en".to_string())].into_iter().collect();
        stampede_common::plan::fill_agent_secrets(&mut plan, &values, true, |_| false).unwrap();
        let d = Dynamic::new(&plan.steps[0].request, "h", "", Columns::None).unwrap();
        let s = text(&d, CTX);
        assert!(s.starts_with("GET /42 "), "{s}");
        assert!(s.contains("authorization: tok{{seq}}en\r\n"), "a secret is never templated: {s}");
    }
}
