//! Dialing the coordinator: agents and `stampede run/agents --coordinator`.
//!
//! The TCP connection and the TLS handshake are made here rather than by
//! tonic (which then speaks HTTP/2 over what this returns), for two reasons:
//! - the coordinator's certificate must chain to `--ca`, name the URL's host
//!   *and* carry the coordinator role ([`CoordinatorOnly`]), so that an
//!   agent's or an operator's certificate served by someone else never
//!   receives the enrollment token (issue 8, item 11); tonic's
//!   `ClientTlsConfig` has no place for the last check;
//! - each failure says what happened (issue 8, item 13) — refused,
//!   unreachable, timed out, the TLS handshake failed and why, the server
//!   speaks TLS to a plain-text client or plain text to a TLS one
//!   ([`DialError`]) — where tonic says "transport error".

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::role::{self, Role};

/// How long the TCP connection, and then the TLS handshake, may take.
const TCP_TIMEOUT: Duration = Duration::from_secs(5);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the connection to the coordinator could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("cannot resolve `{host}`: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("`{host}` resolves to no address")]
    NoAddress { host: String },
    #[error("connection refused by {addr}: nothing listens there (is the coordinator running, on this port?)")]
    Refused { addr: SocketAddr },
    #[error("{addr} is unreachable: {source} (no route to it from here)")]
    Unreachable { addr: SocketAddr, source: io::Error },
    #[error("connecting to {addr} timed out after {after:?}: no answer (a firewall drops the packets, or the host is down)")]
    TcpTimeout { addr: SocketAddr, after: Duration },
    #[error("connecting to {addr} failed: {source}")]
    Tcp { addr: SocketAddr, source: io::Error },
    #[error("the TLS handshake with {addr} timed out after {after:?}: the server accepted the connection but never answered")]
    HandshakeTimeout { addr: SocketAddr, after: Duration },
    #[error("the server at {addr} speaks plain text, but we dialed TLS: if the coordinator runs with --insecure, use an http:// URL and --insecure")]
    ServerSpeaksPlainText { addr: SocketAddr },
    #[error("the server at {addr} speaks TLS, but we dialed plain text: use an https:// URL with --ca, --cert and --key")]
    ServerSpeaksTls { addr: SocketAddr },
    #[error("the server at {addr} closed the connection at once, before any greeting (it refuses us, or is shutting down)")]
    ClosedAtOnce { addr: SocketAddr },
    #[error("the server at {addr} accepted the connection but did not greet within {after:?} as an HTTP/2 (gRPC) server does: it is not a stampede coordinator, or it is overloaded")]
    NoGreeting { addr: SocketAddr, after: Duration },
    #[error("the TLS handshake with {addr} failed: {reason}")]
    Handshake { addr: SocketAddr, reason: String },
    #[error("the server at {addr} does not speak gRPC over TLS (it did not agree to HTTP/2): it is not a stampede coordinator")]
    NoHttp2 { addr: SocketAddr },
}

/// Refusal of a server certificate that is not a coordinator's.
#[derive(Debug, thiserror::Error)]
#[error("the server's certificate is not a coordinator's certificate: {0}; this is not the coordinator we trust")]
pub struct NotCoordinator(String);

/// The rustls verifier of agents and operators: webpki's (chains to `--ca`,
/// names the host, `serverAuth`), and the certificate carries the
/// coordinator role.
#[derive(Debug)]
pub(super) struct CoordinatorOnly {
    pub(super) inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for CoordinatorOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The role first: for a client's certificate served as a server's,
        // "it is agent X's certificate" says more than webpki's "invalid purpose".
        let refuse = |why: String| rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(NotCoordinator(why)))));
        match role::holder(end_entity) {
            Ok(h) if h.role == Role::Coordinator => {}
            Ok(h) => return Err(refuse(format!("it is {h}'s certificate (role {})", h.role))),
            Err(e) => return Err(refuse(e.to_string())),
        }
        self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Anything a connection can be: TCP, or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The connector tonic calls for each (re)connection.
#[derive(Clone)]
pub(super) struct Dial {
    pub(super) host: String,
    pub(super) port: u16,
    /// With TLS: the connector and the name the certificate must carry.
    pub(super) tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Dial {
    async fn dial(self) -> Result<Box<dyn Io>, DialError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port)).await.map_err(|source| DialError::Resolve { host: self.host.clone(), source })?.collect();
        let mut last = DialError::NoAddress { host: self.host.clone() };
        for addr in addrs {
            match tokio::time::timeout(TCP_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => {
                    let _ = tcp.set_nodelay(true);
                    return self.secure(addr, tcp).await;
                }
                Ok(Err(e)) => last = tcp_error(addr, e),
                Err(_) => last = DialError::TcpTimeout { addr, after: TCP_TIMEOUT },
            }
        }
        Err(last)
    }

    async fn secure(&self, addr: SocketAddr, tcp: TcpStream) -> Result<Box<dyn Io>, DialError> {
        let Some((connector, name)) = &self.tls else {
            return plain(addr, tcp).await;
        };
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name.clone(), tcp)).await {
            Err(_) => return Err(DialError::HandshakeTimeout { addr, after: HANDSHAKE_TIMEOUT }),
            Ok(Err(e)) => return Err(handshake_error(addr, &e)),
            Ok(Ok(tls)) => tls,
        };
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(DialError::NoHttp2 { addr });
        }
        greeted(addr, tls).await
    }
}

/// Waits for the coordinator's first bytes over TLS. With TLS 1.3 the
/// client's side of the handshake ends before the server has checked the
/// client's certificate: a refusal comes as an alert after it, which
/// HTTP/2 would report only as "connection closed". A coordinator that
/// accepts greets at once (its HTTP/2 SETTINGS); what it sent is replayed
/// to tonic. Silence past [`GREETING`] is not an error here: the server may
/// just be slow.
async fn greeted(addr: SocketAddr, mut tls: tokio_rustls::client::TlsStream<TcpStream>) -> Result<Box<dyn Io>, DialError> {
    let mut first = vec![0u8; 4096];
    match tokio::time::timeout(GREETING, tls.read(&mut first)).await {
        Ok(Ok(0)) => Err(DialError::Handshake { addr, reason: "the server closed the connection right after the handshake (it refused our certificate? its log says why)".into() }),
        Ok(Ok(n)) => {
            first.truncate(n);
            Ok(Box::new(Replay { first, at: 0, inner: tls, skip: &[] }))
        }
        Ok(Err(e)) => Err(handshake_error(addr, &e)),
        Err(_) => Ok(Box::new(tls)),
    }
}

/// A stream whose first bytes were already read: they are read again first.
/// `skip` is what we already wrote for the client (the HTTP/2 preface sent
/// to a silent server): the client's own copy of it is checked and dropped.
struct Replay<T> {
    first: Vec<u8>,
    at: usize,
    inner: T,
    skip: &'static [u8],
}

impl<T> Replay<T> {
    /// Consumes from `buf` what `skip` still expects; `None` when nothing is left to skip.
    fn skipped(&mut self, buf: &[u8]) -> Option<io::Result<usize>> {
        if self.skip.is_empty() || buf.is_empty() {
            return None;
        }
        let n = self.skip.len().min(buf.len());
        if buf[..n] != self.skip[..n] {
            return Some(Err(io::Error::new(io::ErrorKind::InvalidData, "the client did not open with the HTTP/2 preface already sent for it")));
        }
        self.skip = &self.skip[n..];
        Some(Ok(n))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Replay<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.at < self.first.len() {
            let n = (self.first.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.first[at..at + n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Replay<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(done) = self.skipped(buf) {
            return Poll::Ready(done);
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        if let Some(done) = bufs.iter().find(|b| !b.is_empty()).and_then(|b| self.skipped(b)) {
            return Poll::Ready(done);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

fn tcp_error(addr: SocketAddr, e: io::Error) -> DialError {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => DialError::Refused { addr },
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => DialError::Unreachable { addr, source: e },
        io::ErrorKind::TimedOut => DialError::TcpTimeout { addr, after: TCP_TIMEOUT },
        _ => DialError::Tcp { addr, source: e },
    }
}

fn handshake_error(addr: SocketAddr, e: &io::Error) -> DialError {
    if super::explain::rustls_error(e).is_some_and(super::explain::is_not_tls) {
        return DialError::ServerSpeaksPlainText { addr };
    }
    let reason = match super::explain_client(e) {
        Some(why) => format!("{why} ({e})"),
        None if e.kind() == io::ErrorKind::UnexpectedEof => "the server closed the connection during the handshake".to_string(),
        None => e.to_string(),
    };
    DialError::Handshake { addr, reason }
}

impl tonic::codegen::Service<tonic::transport::Uri> for Dial {
    type Response = TokioIo<Box<dyn Io>>;
    type Error = DialError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, DialError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), DialError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: tonic::transport::Uri) -> Self::Future {
        let dial = self.clone();
        Box::pin(async move { dial.dial().await.map(TokioIo::new) })
    }
}

/// An HTTP/2 server greets first (its SETTINGS frame, at once); a TLS
/// server says nothing until the client's hello. How long a plain-text
/// dial waits for the greeting before it finds out which it is.
const GREETING: Duration = Duration::from_secs(1);

/// The HTTP/2 client preface: what a plain-text client says first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a server's first bytes are a TLS record (an alert or a
/// handshake message). An HTTP/2 frame never starts so: its first byte is
/// the high byte of a 24-bit length, 0 for any frame under 64 KiB.
fn looks_like_tls(first: &[u8]) -> bool {
    matches!(first, [0x15 | 0x16, ..])
}

/// A plain-text connection, checked to be HTTP/2 before tonic gets it:
/// against a TLS server, HTTP/2 would only report `FRAME_SIZE_ERROR` (the
/// TLS alert read as a frame header) or "connection closed".
async fn plain(addr: SocketAddr, mut tcp: TcpStream) -> Result<Box<dyn Io>, DialError> {
    let mut first = [0u8; 2];
    match tokio::time::timeout(GREETING, tcp.peek(&mut first)).await {
        Ok(Ok(0)) => Err(DialError::ClosedAtOnce { addr }),
        Ok(Ok(n)) if looks_like_tls(&first[..n]) => Err(DialError::ServerSpeaksTls { addr }),
        // The greeting stays in the socket for tonic (peek does not consume it).
        Ok(Ok(_)) => Ok(Box::new(tcp)),
        Ok(Err(source)) => Err(DialError::Tcp { addr, source }),
        Err(_) => {
            // Silent: speak first, as HTTP/2 would, and see what answers. A
            // TLS server answers the preface with an alert; a slow HTTP/2
            // server with its SETTINGS, and then the connection is handed
            // to tonic with the preface counted as sent.
            let mut reply = [0u8; 8];
            let answered = async {
                tcp.write_all(PREFACE).await?;
                tcp.read(&mut reply).await
            };
            match tokio::time::timeout(GREETING, answered).await {
                Ok(Ok(0)) => Err(DialError::ClosedAtOnce { addr }),
                Ok(Ok(n)) if looks_like_tls(&reply[..n]) => Err(DialError::ServerSpeaksTls { addr }),
                Ok(Ok(n)) => Ok(Box::new(Replay { first: reply[..n].to_vec(), at: 0, inner: tcp, skip: PREFACE })),
                Ok(Err(source)) => Err(DialError::Tcp { addr, source }),
                Err(_) => Err(DialError::NoGreeting { addr, after: GREETING * 2 }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_records_are_told_from_http2_frames() {
        // A TLS alert and a ServerHello; an HTTP/2 SETTINGS frame and a GOAWAY.
        assert!(looks_like_tls(&[0x15, 0x03, 0x03, 0x00, 0x02]));
        assert!(looks_like_tls(&[0x16]));
        assert!(!looks_like_tls(&[0x00, 0x00, 0x12, 0x04, 0x00]));
        assert!(!looks_like_tls(&[0x00, 0x00, 0x08, 0x07]));
    }

    #[test]
    fn connect_errors_are_told_apart() {
        let addr: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let kind = |k: io::ErrorKind| tcp_error(addr, io::Error::from(k));
        assert!(matches!(kind(io::ErrorKind::ConnectionRefused), DialError::Refused { .. }));
        assert!(matches!(kind(io::ErrorKind::HostUnreachable), DialError::Unreachable { .. }));
        assert!(matches!(kind(io::ErrorKind::NetworkUnreachable), DialError::Unreachable { .. }));
        assert!(matches!(kind(io::ErrorKind::TimedOut), DialError::TcpTimeout { .. }));
        assert!(matches!(kind(io::ErrorKind::PermissionDenied), DialError::Tcp { .. }));
    }

    /// A listener that never accepts: the kernel completes the TCP
    /// handshake, and then nobody speaks.
    #[tokio::test]
    async fn a_silent_server_is_not_taken_for_a_coordinator() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let dial = Dial { host: "127.0.0.1".into(), port, tls: None };
        let e = dial.dial().await.err().expect("a silent server is refused");
        assert!(matches!(e, DialError::NoGreeting { .. }), "{e}");
        drop(listener);
    }

    /// Issue 8 item 13: a plain-text HTTP/2 server that is slow to greet
    /// (busy past [`GREETING`]) was refused as "did not greet", though it
    /// answered our preface with its SETTINGS. It is now dialed: it gets
    /// the preface once, and the client sees its SETTINGS first.
    #[tokio::test]
    async fn a_slow_plain_text_server_is_still_dialed() {
        const SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            tokio::time::sleep(GREETING + Duration::from_millis(300)).await;
            let mut got = vec![0u8; PREFACE.len() + SETTINGS.len()];
            tcp.read_exact(&mut got[..PREFACE.len()]).await.unwrap();
            tcp.write_all(&SETTINGS).await.unwrap();
            tcp.read_exact(&mut got[PREFACE.len()..]).await.unwrap();
            got
        });
        let dial = Dial { host: "127.0.0.1".into(), port, tls: None };
        let mut io = tokio::time::timeout(Duration::from_secs(5), dial.dial()).await.unwrap().expect("a slow HTTP/2 server is dialed");
        // What the HTTP/2 client does: its preface, then its SETTINGS.
        io.write_all(&[PREFACE, &SETTINGS[..]].concat()).await.unwrap();
        let mut greeting = [0u8; 9];
        io.read_exact(&mut greeting).await.unwrap();
        assert_eq!(greeting, SETTINGS);
        let got = tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap();
        assert_eq!(got, [PREFACE, &SETTINGS[..]].concat(), "the server gets the preface once, then the client's frames");
    }

    #[tokio::test]
    async fn a_refused_port_says_refused() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dial = Dial { host: "127.0.0.1".into(), port, tls: None };
        let e = dial.dial().await.err().expect("nothing listens");
        assert!(matches!(e, DialError::Refused { .. }), "{e}");
    }
}
