//! A keep-alive HTTP/1.1 server of a test's own on 127.0.0.1, answering
//! with a handler the test writes (`flows.rs`'s login and job service,
//! `probes.rs`'s health endpoint): for the behaviour the built-in target
//! does not have. Bodies are read by `Content-Length`; `Connection: close`
//! ends the connection after its answer.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request as the handler sees it.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// The request line and headers, as received.
    pub head: &'a str,
}

impl Request<'_> {
    /// The value of the first header called `name` (any case), trimmed.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| l.split_once(':').filter(|(n, _)| n.trim().eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_string()))
    }
}

/// An answer: status, extra header lines (`Name: value`), body.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<String>,
    pub body: String,
}

impl Reply {
    pub fn new(status: u16, body: impl Into<String>) -> Reply {
        Reply { status, headers: Vec::new(), body: body.into() }
    }

    pub fn header(mut self, line: impl Into<String>) -> Reply {
        self.headers.push(line.into());
        self
    }
}

type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// The server, on a runtime of its own: dropping it ends the accept loop
/// and every connection.
pub struct HttpServer {
    _rt: tokio::runtime::Runtime,
    pub addr: SocketAddr,
}

impl HttpServer {
    pub fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> HttpServer {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let handler: Handler = Arc::new(handler);
        rt.spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, handler.clone()));
            }
        });
        HttpServer { _rt: rt, addr }
    }

    /// `yaml` with `http://TARGET` pointing at this server.
    pub fn plan(&self, yaml: &str) -> String {
        yaml.replace("http://TARGET", &format!("http://{}", self.addr))
    }
}

async fn serve(mut conn: tokio::net::TcpStream, handler: Handler) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !read_more(&mut conn, &mut buf).await {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let mut line = head.lines().next().unwrap_or("").split(' ');
        let (method, path) = (line.next().unwrap_or(""), line.next().unwrap_or(""));
        let request = Request { method, path, head: &head };
        let length: usize = request.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let close = request.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        while buf.len() < end + length {
            if !read_more(&mut conn, &mut buf).await {
                return;
            }
        }
        buf.drain(..end + length);
        let reply = handler(&request);
        let mut out = format!("HTTP/1.1 {} {}\r\nContent-Length: {}\r\n", reply.status, reason(reply.status), reply.body.len());
        for h in reply.headers {
            out.push_str(&h);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        out.push_str(&reply.body);
        if conn.write_all(out.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

/// Reads what is there into `buf`; false when the peer closed or failed.
async fn read_more(conn: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match conn.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Status",
    }
}
