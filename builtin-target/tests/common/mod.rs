//! Minimal raw HTTP/1.1 client over a TcpStream, so the tests exercise the
//! target's wire behaviour (keep-alive, content-length) without an HTTP client crate.
// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound for any single network step, so a broken server fails a test
/// instead of hanging it.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Awaits `fut`, panicking with `what` if it takes longer than `limit`.
pub async fn within<F: std::future::Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what} did not finish within {limit:?}"),
    }
}

#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

pub struct RawClient {
    pub stream: TcpStream,
    /// Bytes read past the previous response (pipelining).
    buf: Vec<u8>,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = within(STEP_TIMEOUT, "connect", TcpStream::connect(addr))
            .await
            .expect("connect");
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, raw: &[u8]) {
        within(STEP_TIMEOUT, "write", self.stream.write_all(raw))
            .await
            .expect("write");
    }

    /// Sends one request with a content-length body and reads its response.
    pub async fn request(&mut self, method: &str, path: &str, body: &[u8]) -> RawResponse {
        let mut raw = format!(
            "{method} {path} HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(body);
        self.send(&raw).await;
        self.read_response(method == "HEAD").await
    }

    pub async fn get(&mut self, path: &str) -> RawResponse {
        self.request("GET", path, b"").await
    }

    /// Reads one content-length-delimited response (`head_only` for HEAD requests).
    pub async fn read_response(&mut self, head_only: bool) -> RawResponse {
        within(
            STEP_TIMEOUT,
            "read response",
            self.read_response_inner(head_only),
        )
        .await
    }

    async fn read_response_inner(&mut self, head_only: bool) -> RawResponse {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await;
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec()).expect("utf-8 head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        assert!(
            status_line.starts_with("HTTP/1.1 "),
            "status line {status_line:?}"
        );
        let status = status_line[9..12].parse().expect("status code");
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').expect("header line");
                (n.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.parse().expect("content-length value"))
            .expect("target responses carry content-length");
        let body_len = if head_only { 0 } else { len };
        while self.buf.len() < head_end + body_len {
            self.fill().await;
        }
        let body = self.buf[head_end..head_end + body_len].to_vec();
        self.buf.drain(..head_end + body_len);
        RawResponse {
            status,
            headers,
            body,
        }
    }

    async fn fill(&mut self) {
        // Straight into the Vec: a large stack buffer would bloat every future
        // that awaits a request (debug builds copy them around the stack).
        self.buf.reserve(64 * 1024);
        let n = self.stream.read_buf(&mut self.buf).await.expect("read");
        assert!(n > 0, "server closed the connection mid-response");
    }

    /// True once the server has closed (EOF or reset) within `limit`.
    pub async fn closed_within(&mut self, limit: Duration) -> bool {
        let mut chunk = Vec::with_capacity(1024);
        let read = tokio::time::timeout(limit, self.stream.read_buf(&mut chunk)).await;
        matches!(read, Ok(Ok(0) | Err(_)))
    }
}
