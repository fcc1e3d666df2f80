//! A minimal HTTP/1.1 keep-alive client, written for the hot path.
//!
//! Why not hyper's client: oha (hyper) spends ~5 µs of user time per request
//! against wrk's ~1.2 µs; the difference is per-request allocation and
//! dispatch layers a load generator does not need. Here a request is bytes
//! serialized once per step ([`RequestTemplate`]), sent with one write; the
//! response head is parsed by `httparse` into a stack array of headers, and
//! the body is counted, not stored, in a buffer owned by the connection.
//! Nothing is allocated per request. Measured in `benchmarks/`.
//!
//! A step with checks ([`crate::check`]) keeps its response's head and up to
//! 1 MiB of body in buffers the connection owns and reuses; a step without
//! checks takes none of those paths.
//!
//! [`Conn`] is generic over its byte stream: TCP, or TLS over TCP for an
//! `https://` target (`connect.rs` makes both). A TLS error (an alert from
//! the server, such as "certificate required" after a TLS 1.3 handshake)
//! fails the request with kind `tls`, other stream errors with `io`.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use stampede_common::plan::template::Columns;
use stampede_common::plan::{Expect, Request, Step, Text};
use stampede_common::stats::ErrorKind;
use stampede_common::units::StatusSet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::check::{keep_body, CheckBits, CompiledChecks, Received};
use crate::connect::error_kind;
use crate::template::{Ctx, Dynamic};

/// A step's request, serialized once.
#[derive(Debug, Clone)]
pub struct RequestTemplate {
    bytes: Bytes,
    expect: StatusSet,
    /// HEAD responses carry a Content-Length but no body.
    head: bool,
    /// The step's checks; `None` (most steps) keeps the lean path.
    checks: Option<Arc<CompiledChecks>>,
    /// A step with `{{...}}` in its path, headers or body: rendered per
    /// request (`template.rs`) instead of `bytes`. `None` (most steps)
    /// keeps the lean path.
    dynamic: Option<Arc<Dynamic>>,
    /// A flow request (`flow.rs`): the connection keeps its response's head
    /// and body for captures and `repeat_until`. False for every step.
    keep_response: bool,
}

impl RequestTemplate {
    pub fn new(step: &Step, authority: &str) -> Self {
        Self::for_request_in(&step.request, step.expect.as_ref(), authority, step.data_columns())
    }

    /// A request with its `expect`: a step's, or a flow request's.
    pub fn for_request(r: &Request, expect: Option<&Expect>, authority: &str) -> Self {
        Self::for_request_in(r, expect, authority, Columns::None)
    }

    /// [`RequestTemplate::for_request`] of a step with a data file of `data`'s columns.
    fn for_request_in(r: &Request, expect: Option<&Expect>, authority: &str, data: Columns<'_>) -> Self {
        let body = r.body.as_ref().map_or("", Text::sent);
        let user_agent = concat!("User-Agent: stampede/", env!("CARGO_PKG_VERSION"), "\r\n");
        let mut s = format!("{} {} HTTP/1.1\r\nHost: {authority}\r\n{user_agent}", r.method, r.path);
        for (name, value) in &r.headers {
            s.push_str(&format!("{name}: {}\r\n", value.sent()));
        }
        if !body.is_empty() || matches!(r.method.as_str(), "POST" | "PUT" | "PATCH") {
            s.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        s.push_str("\r\n");
        s.push_str(body);
        let mut t = RequestTemplate {
            bytes: Bytes::from(s),
            expect: expect.map(|e| e.status.clone()).unwrap_or_default(),
            head: r.method == "HEAD",
            checks: None,
            dynamic: None,
            keep_response: false,
        };
        // Only a request with `{{` goes further; every other one is done.
        match Dynamic::new(r, authority, user_agent, data) {
            None => {}
            // Only `\{{` escapes: unescaped once, then as lean as any.
            Some(d) if d.is_static() => t.bytes = Bytes::from(d.render(Ctx::default())),
            Some(d) => t.dynamic = Some(Arc::new(d)),
        }
        t
    }

    /// The templated request, when the step has templates.
    pub fn dynamic(&self) -> Option<&Dynamic> {
        self.dynamic.as_deref()
    }

    /// The same request, its responses judged by `checks` (none: no change).
    pub fn with_checks(mut self, checks: CompiledChecks) -> Self {
        self.checks = (!checks.is_empty()).then(|| Arc::new(checks));
        self
    }

    /// Bytes this request puts on the wire.
    pub fn wire_len(&self) -> usize {
        self.bytes.len()
    }

    /// The same request, its whole response (head, and body up to 1 MiB)
    /// kept by the connection after each round trip: a flow request's.
    pub fn keeping_response(mut self) -> Self {
        self.keep_response = true;
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Response bytes read, head and body.
    pub received: u64,
    /// Whether the status is one the step accepts.
    pub success: bool,
    /// The step's checks over this response (count 0 when it has none).
    pub checks: CheckBits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// A reused connection was already closed by the server before it read
    /// our request: safe to retry once on a fresh connection.
    Stale,
    Failed(ErrorKind),
}

const HEADER_SLOTS: usize = 64;
const READ_CHUNK: usize = 16 * 1024;

pub struct Conn<S> {
    stream: S,
    buf: Vec<u8>,
    /// Requests served on this connection, to tell a stale keep-alive
    /// connection from a server that refuses the first request.
    served: u64,
    /// For steps with checks only: the last response's head, and its body
    /// up to the kept bound (empty unless a check reads it).
    head: Vec<u8>,
    body: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// A connection over `stream`, already connected (and, for TLS, past its handshake).
    pub fn new(stream: S) -> Conn<S> {
        Conn { stream, buf: Vec::with_capacity(READ_CHUNK), served: 0, head: Vec::new(), body: Vec::new() }
    }

    /// The byte stream, e.g. to ask when the last response arrived.
    pub fn stream(&self) -> &S {
        &self.stream
    }

    pub fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Sends `req` and reads the whole response. On `Ok`, the connection can
    /// be reused only if `keep_alive` came back true.
    pub async fn round_trip(&mut self, req: &RequestTemplate) -> Result<(Response, bool), RequestError> {
        self.round_trip_with(req, &req.bytes).await
    }

    /// [`Conn::round_trip`], sending `wire` (a templated request rendered
    /// for this one time) instead of `req`'s serialized bytes.
    pub async fn round_trip_with(&mut self, req: &RequestTemplate, wire: &[u8]) -> Result<(Response, bool), RequestError> {
        let reused = self.served > 0;
        self.served += 1;
        let stale_or = |kind| if reused { RequestError::Stale } else { RequestError::Failed(kind) };
        if let Err(e) = self.stream.write_all(wire).await {
            return Err(stale_or(error_kind(&e)));
        }
        self.buf.clear();
        let (status, head_len, body, keep_alive) = self.read_head(req, reused).await?;
        let mut received = self.buf.len() as u64;
        // Whether to keep the body's bytes for checks (only when one reads them).
        let keep = req.keep_response || req.checks.as_ref().is_some_and(|c| c.reads_body());
        if req.checks.is_some() || req.keep_response {
            self.head.clear();
            self.head.extend_from_slice(&self.buf[..head_len]);
            self.body.clear();
        }
        let (extra, body_len, keep_alive) = match body {
            BodyLength::Fixed(n) => {
                let (extra, body_len, whole) = self.read_fixed_body(head_len, n, keep).await?;
                // Bytes beyond the body would mean the server answered twice;
                // the connection's framing can no longer be trusted.
                (extra, body_len, keep_alive && whole)
            }
            BodyLength::Chunked => {
                self.buf.drain(..head_len);
                let (extra, len) = self.read_chunked(keep).await?;
                (extra, len, keep_alive)
            }
            BodyLength::UntilClose => {
                let (extra, len) = self.read_until_close(head_len, keep).await?;
                (extra, len, false)
            }
        };
        received += extra;
        let checks = match &req.checks {
            None => CheckBits::default(),
            Some(c) => c.evaluate(&Received { status, head: &self.head, body: &self.body, body_len }),
        };
        Ok((Response { status, received, success: req.expect.contains(status), checks }, keep_alive))
    }

    /// Reads until a final (non-1xx) response head parses; returns its
    /// status, head length, body framing and keep-alive. The head and any
    /// body bytes read with it stay in `buf`.
    async fn read_head(&mut self, req: &RequestTemplate, reused: bool) -> Result<(u16, usize, BodyLength, bool), RequestError> {
        let stale_or = |kind| if reused { RequestError::Stale } else { RequestError::Failed(kind) };
        loop {
            match self.read_more().await {
                Ok(0) if self.buf.is_empty() => return Err(stale_or(ErrorKind::Io)),
                Ok(0) => return Err(RequestError::Failed(ErrorKind::Io)),
                Ok(_) => {}
                // A TLS alert is never a stale connection: the server said why.
                Err(e) if self.buf.is_empty() && error_kind(&e) == ErrorKind::Io => return Err(stale_or(ErrorKind::Io)),
                Err(e) => return Err(RequestError::Failed(error_kind(&e))),
            }
            match parse_head(&self.buf, req.head) {
                Ok(Some(h)) if h.0 < 200 => {
                    // An interim 1xx response: drop it and read the real one.
                    self.buf.drain(..h.1);
                }
                Ok(Some(h)) => return Ok(h),
                Ok(None) => {}
                Err(()) => return Err(RequestError::Failed(ErrorKind::Parse)),
            }
        }
    }

    /// Reads a `Content-Length: n` body whose first bytes follow the head in
    /// `buf`. Returns the bytes read beyond `buf`, the body's length, and
    /// whether exactly `n` bytes came.
    async fn read_fixed_body(&mut self, head_len: usize, n: u64, keep: bool) -> Result<(u64, u64, bool), RequestError> {
        let mut have = (self.buf.len() - head_len) as u64;
        let mut extra = 0;
        if keep {
            keep_body(&mut self.body, &self.buf[head_len..]);
        }
        while have < n {
            self.buf.clear();
            let got = self.read_more().await.map_err(|e| RequestError::Failed(error_kind(&e)))?;
            if got == 0 {
                return Err(RequestError::Failed(ErrorKind::Io));
            }
            if keep {
                keep_body(&mut self.body, &self.buf);
            }
            have += got as u64;
            extra += got as u64;
        }
        let body_len = have.min(n);
        if keep {
            self.body.truncate(body_len.min(self.body.len() as u64) as usize);
        }
        Ok((extra, body_len, have == n))
    }

    /// Reads a body delimited by the connection's close. Returns the bytes
    /// read beyond `buf` and the body's length.
    async fn read_until_close(&mut self, head_len: usize, keep: bool) -> Result<(u64, u64), RequestError> {
        let mut body_len = (self.buf.len() - head_len) as u64;
        let mut extra = 0;
        if keep {
            keep_body(&mut self.body, &self.buf[head_len..]);
        }
        loop {
            self.buf.clear();
            match self.read_more().await {
                Ok(0) => return Ok((extra, body_len)),
                Ok(n) => {
                    extra += n as u64;
                    body_len += n as u64;
                    if keep {
                        keep_body(&mut self.body, &self.buf);
                    }
                }
                Err(e) => return Err(RequestError::Failed(error_kind(&e))),
            }
        }
    }

    /// Swaps the last response's head and kept body (a request that keeps
    /// them: checks, or a flow request's [`RequestTemplate::keeping_response`])
    /// with `head` and `body`: no copy, and the connection's buffers are
    /// cleared by its next round trip anyway.
    pub fn swap_response(&mut self, head: &mut Vec<u8>, body: &mut Vec<u8>) {
        std::mem::swap(&mut self.head, head);
        std::mem::swap(&mut self.body, body);
    }

    async fn read_more(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        self.stream.read_buf(&mut self.buf).await
    }

    /// Consumes a chunked body whose first bytes are in `buf` (keeping its
    /// data for checks when `keep`); returns the number of bytes read from
    /// the socket on top of what `buf` held, and the body's data length.
    async fn read_chunked(&mut self, keep: bool) -> Result<(u64, u64), RequestError> {
        let mut extra = 0u64;
        let mut data_len = 0u64;
        let io_err = RequestError::Failed(ErrorKind::Io);
        loop {
            // Need a complete chunk-size line.
            let (consumed, size) = loop {
                match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete(c)) => break c,
                    Ok(httparse::Status::Partial) => {
                        let n = self.read_more().await.map_err(|e| RequestError::Failed(error_kind(&e)))?;
                        if n == 0 {
                            return Err(io_err);
                        }
                        extra += n as u64;
                    }
                    Err(_) => return Err(RequestError::Failed(ErrorKind::Parse)),
                }
            };
            self.buf.drain(..consumed);
            if size == 0 {
                // Trailers (rare) end with an empty line; without them the
                // empty line follows at once.
                loop {
                    if let Some(end) = find_trailer_end(&self.buf) {
                        self.buf.drain(..end);
                        return Ok((extra, data_len));
                    }
                    let n = self.read_more().await.map_err(|e| RequestError::Failed(error_kind(&e)))?;
                    if n == 0 {
                        return Err(io_err);
                    }
                    extra += n as u64;
                }
            }
            // Skip the chunk's data and its CRLF (keeping the data for checks).
            data_len += size;
            let mut data_left = size;
            let mut skip = size + 2;
            loop {
                let take = skip.min(self.buf.len() as u64) as usize;
                if keep && data_left > 0 {
                    let data = (take as u64).min(data_left) as usize;
                    keep_body(&mut self.body, &self.buf[..data]);
                    data_left -= data as u64;
                }
                self.buf.drain(..take);
                skip -= take as u64;
                if skip == 0 {
                    break;
                }
                let n = self.read_more().await.map_err(|e| RequestError::Failed(error_kind(&e)))?;
                if n == 0 {
                    return Err(io_err);
                }
                extra += n as u64;
            }
        }
    }
}

fn find_trailer_end(buf: &[u8]) -> Option<usize> {
    if buf.starts_with(b"\r\n") {
        return Some(2);
    }
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyLength {
    Fixed(u64),
    Chunked,
    UntilClose,
}

/// `Ok(None)` when the head is incomplete; `Ok(Some((status, head length,
/// body length, keep-alive)))` once it parsed.
fn parse_head(buf: &[u8], head_request: bool) -> Result<Option<(u16, usize, BodyLength, bool)>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; HEADER_SLOTS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let status = resp.code.ok_or(())?;
    let mut keep_alive = resp.version == Some(1);
    let mut length = None;
    let mut chunked = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value).map_err(|_| ())?;
            length = Some(v.trim().parse::<u64>().map_err(|_| ())?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h.value.windows(7).any(|w| w.eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            if h.value.eq_ignore_ascii_case(b"close") {
                keep_alive = false;
            } else if h.value.eq_ignore_ascii_case(b"keep-alive") {
                keep_alive = true;
            }
        }
    }
    let body = if head_request || status < 200 || status == 204 || status == 304 {
        BodyLength::Fixed(0)
    } else if chunked {
        BodyLength::Chunked
    } else if let Some(n) = length {
        BodyLength::Fixed(n)
    } else {
        BodyLength::UntilClose
    };
    Ok(Some((status, head_len, body, keep_alive)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse() {
        let r = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false).unwrap().unwrap();
        assert_eq!(r, (200, 38, BodyLength::Fixed(2), true));
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le", false).unwrap(), None);
        let r = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n", false).unwrap().unwrap();
        assert_eq!((r.2, r.3), (BodyLength::Chunked, false));
        let r = parse_head(b"HTTP/1.0 200 OK\r\n\r\n", false).unwrap().unwrap();
        assert_eq!((r.2, r.3), (BodyLength::UntilClose, false));
        let r = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true).unwrap().unwrap();
        assert_eq!(r.2, BodyLength::Fixed(0));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false).is_err());
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n", false).is_err());
    }

    #[test]
    fn templates_are_serialized_once_with_length() {
        let step: Step = serde_json::from_str(
            r#"{"name":"w","request":{"method":"POST","path":"/items","body":"{}","headers":{"content-type":"application/json"}}}"#,
        )
        .unwrap();
        let t = RequestTemplate::new(&step, "127.0.0.1:8080");
        let text = std::str::from_utf8(&t.bytes).unwrap();
        assert!(text.starts_with("POST /items HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
        assert!(text.contains("content-type: application/json\r\nContent-Length: 2\r\n\r\n{}"));
    }

    /// The lean path stays as it was: a step without `{{` is serialized once,
    /// byte for byte as before templates existed, and never rendered.
    #[test]
    fn a_step_without_templates_keeps_its_bytes_serialized_once() {
        let step: Step = serde_json::from_str(r#"{"name":"w","request":{"method":"PUT","path":"/a?b=c","body":"{\"a\":{\"b\":1}}","headers":{"x-a":"1"}}}"#).unwrap();
        let t = RequestTemplate::new(&step, "h:1");
        assert!(t.dynamic().is_none());
        let want = format!("PUT /a?b=c HTTP/1.1\r\nHost: h:1\r\nUser-Agent: stampede/{}\r\nx-a: 1\r\nContent-Length: 13\r\n\r\n{{\"a\":{{\"b\":1}}}}", env!("CARGO_PKG_VERSION"));
        assert_eq!(std::str::from_utf8(&t.bytes).unwrap(), want);
    }

    #[test]
    fn a_templated_step_renders_per_request_and_an_escaped_one_does_not() {
        let step: Step = serde_json::from_str(r#"{"name":"w","request":{"path":"/i/{{seq}}"}}"#).unwrap();
        let t = RequestTemplate::new(&step, "h:1");
        let wire = t.dynamic().expect("templated").render(Ctx { seq: 9, worker: 0, iteration: 0 });
        assert!(wire.starts_with(b"GET /i/9 HTTP/1.1\r\n"));
        let step: Step = serde_json::from_str(r#"{"name":"w","request":{"path":"/i/\\{{seq}}"}}"#).unwrap();
        let t = RequestTemplate::new(&step, "h:1");
        assert!(t.dynamic().is_none());
        assert!(t.bytes.starts_with(b"GET /i/{{seq}} HTTP/1.1\r\n"));
    }
}
