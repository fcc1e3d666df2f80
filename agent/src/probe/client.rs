//! The probes' HTTP client: one fresh connection per request, the whole
//! response kept (status, headers, body up to [`MAX_BODY`]) so that checks
//! can read it. Not the load's client (`http.rs`), which counts bodies and
//! never stores them: a probe is a few requests a second at most, and
//! measures what a new client of the service sees, not a warm pool.

use std::net::SocketAddr;
use std::time::Duration;

use stampede_common::plan::Request;
use stampede_common::stats::ErrorKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::connect::{error_kind, Dialer};

/// The most body a probe keeps; the rest is read and dropped.
pub const MAX_BODY: usize = 1 << 20;
/// The most head a probe accepts.
const MAX_HEAD: usize = 64 << 10;
const HEADER_SLOTS: usize = 64;

/// A response as a check sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeResponse {
    pub status: u16,
    /// Names as sent; compare them ignoring case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Bytes read from the socket, head and body.
    pub received: u64,
    /// The body was longer than [`MAX_BODY`]: `body` is its beginning.
    pub truncated: bool,
}

/// The header lines every probe request has after `Host`.
pub const PROBE_HEADERS: &str = concat!("User-Agent: stampede-probe/", env!("CARGO_PKG_VERSION"), "\r\nConnection: close\r\n");

/// `request`, serialized once per probe (a templated one is rendered per
/// attempt from `template.rs`, with the same head); `Connection: close` so the
/// server ends the response by closing.
pub fn serialize(request: &Request, authority: &str) -> Vec<u8> {
    let body = request.body.as_ref().map_or("", stampede_common::plan::Text::sent);
    let mut s = format!("{} {} HTTP/1.1\r\nHost: {authority}\r\n{PROBE_HEADERS}", request.method, request.path);
    for (name, value) in &request.headers {
        s.push_str(&format!("{name}: {}\r\n", value.sent()));
    }
    if !body.is_empty() || matches!(request.method.as_str(), "POST" | "PUT" | "PATCH") {
        s.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    s.push_str("\r\n");
    s.push_str(body);
    s.into_bytes()
}

/// Sends `request` on a new connection and reads the whole response,
/// within `timeout`; the error is the kind the load would record.
pub async fn fetch(dialer: &Dialer, addr: SocketAddr, request: &[u8], head_only: bool, timeout: Duration) -> Result<ProbeResponse, ErrorKind> {
    match tokio::time::timeout(timeout, exchange(dialer, addr, request, head_only)).await {
        Ok(result) => result,
        Err(_) => Err(ErrorKind::Timeout),
    }
}

async fn exchange(dialer: &Dialer, addr: SocketAddr, request: &[u8], head_only: bool) -> Result<ProbeResponse, ErrorKind> {
    let (mut stream, _) = dialer.dial(addr).await?;
    stream.write_all(request).await.map_err(|e| error_kind(&e))?;
    let mut buf = Vec::with_capacity(4096);
    let mut received = 0u64;
    loop {
        let mut chunk = [0u8; 8192];
        let n = match stream.read(&mut chunk).await {
            Ok(n) => n,
            // A server that closes without TLS's close_notify (common with
            // `Connection: close`) has still sent the whole response.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => 0,
            Err(e) => return Err(error_kind(&e)),
        };
        if n == 0 {
            break;
        }
        received += n as u64;
        // Keep the head and at most MAX_BODY of body; read the rest to the end.
        if buf.len() < MAX_HEAD + MAX_BODY {
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    let mut response = parse(&buf, head_only)?;
    response.truncated |= received > buf.len() as u64;
    response.received = received;
    Ok(response)
}

/// Parses a complete response (the server closed after it).
fn parse(buf: &[u8], head_only: bool) -> Result<ProbeResponse, ErrorKind> {
    let mut start = 0;
    loop {
        let mut slots = [httparse::EMPTY_HEADER; HEADER_SLOTS];
        let mut head = httparse::Response::new(&mut slots);
        let len = match head.parse(&buf[start..]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() == start => return Err(ErrorKind::Io),
            _ => return Err(ErrorKind::Parse),
        };
        let status = head.code.ok_or(ErrorKind::Parse)?;
        if status < 200 {
            // An interim 1xx: the real response follows.
            start += len;
            continue;
        }
        let headers: Vec<(String, String)> = head.headers.iter().map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned())).collect();
        let rest = &buf[start + len..];
        let chunked = headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked"));
        let length = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("content-length")).and_then(|(_, v)| v.trim().parse::<usize>().ok());
        let body = if head_only || status == 204 || status == 304 {
            Vec::new()
        } else if chunked {
            dechunk(rest)?
        } else if let Some(n) = length {
            rest[..n.min(rest.len())].to_vec()
        } else {
            rest.to_vec()
        };
        let truncated = body.len() > MAX_BODY;
        return Ok(ProbeResponse { status, headers, body: body.into_iter().take(MAX_BODY).collect(), received: 0, truncated });
    }
}

/// The data of a chunked body (trailers dropped).
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, ErrorKind> {
    let mut body = Vec::new();
    loop {
        let (used, size) = match httparse::parse_chunk_size(rest) {
            Ok(httparse::Status::Complete(c)) => c,
            // Cut short past MAX_BODY: what was kept is the body.
            Ok(httparse::Status::Partial) => return Ok(body),
            Err(_) => return Err(ErrorKind::Parse),
        };
        rest = &rest[used..];
        if size == 0 {
            return Ok(body);
        }
        let take = (size as usize).min(rest.len());
        body.extend_from_slice(&rest[..take]);
        rest = rest.get(take + 2..).unwrap_or(&[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_with_their_bodies() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}", false).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{\"ok\":true}"[..]));
        assert_eq!(r.headers[0], ("Content-Type".to_string(), "application/json".to_string()));
        let r = parse(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"ok\r\n8\r\n\":false}\r\n0\r\n\r\n", false).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (503, &b"{\"ok\":false}"[..]));
        let r = parse(b"HTTP/1.0 200 OK\r\n\r\nuntil close", false).unwrap();
        assert_eq!(r.body, b"until close");
        assert_eq!(parse(b"", false), Err(ErrorKind::Io));
        assert_eq!(parse(b"SSH-2.0-OpenSSH\r\n\r\n", false), Err(ErrorKind::Parse));
    }
}
