//! Where the load's connections go and how they are made: the target URL
//! ([`Endpoint`]), its addresses ([`Addrs`], every address the name
//! resolves to, resolved again every [`RESOLVE_EVERY`]), and the dialer
//! ([`Dialer`]): TCP, then for an `https://` target a rustls handshake
//! (ring provider, SNI from the URL's host, the system's roots plus the
//! plan's `tls.ca`, a client certificate from `tls.cert`/`tls.key`, or no
//! verification with `tls.insecure_skip_verify`).
//!
//! The connection's stream is a [`Stream`]: plain TCP or TLS over it. The
//! HTTP client (`http.rs`) is generic over its stream; the worker uses this
//! enum so that one worker type serves both schemes. Its cost on the plain
//! path is one predictable branch per read or write (measured: see
//! benchmarks/README.md, "HTTPS").

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use stampede_common::plan::TargetTls;
use stampede_common::stats::ErrorKind;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use crate::rxstamp::StampedTcp;

/// How often the target's name is resolved again during a run, so that a
/// load balancer's addresses that change (or are added) get load too.
/// k6 re-resolves every 5 min by default (`dns.ttl`); a load test is
/// short, so stampede does it more often. An IP-address target is not
/// resolved again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(30);

/// An `http://` or `https://` base URL, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    /// The host as written (a name, an IPv4 address, or `[v6]`).
    pub host: String,
    pub port: u16,
    /// `host[:port]` as written: the `Host` header.
    pub authority: String,
}

impl Endpoint {
    /// Parses `http(s)://host[:port][/]`; `Err` says what is wrong.
    pub fn parse(target: &str) -> Result<Endpoint, String> {
        let bad = || format!("target `{target}` is not an http://host:port or https://host:port URL");
        let (tls, rest) = match (target.strip_prefix("http://"), target.strip_prefix("https://")) {
            (Some(r), _) => (false, r),
            (_, Some(r)) => (true, r),
            _ => return Err(bad()),
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(bad());
        }
        let default = if tls { 443 } else { 80 };
        let (host, port) = match authority.rsplit_once(':') {
            // `[::1]` alone has colons but no port after its bracket.
            Some((h, p)) if !p.contains(']') => (h, p.parse::<u16>().map_err(|_| bad())?),
            _ => (authority, default),
        };
        Ok(Endpoint { tls, host: host.to_string(), port, authority: authority.to_string() })
    }

    /// `host:port` for the resolver (brackets kept for IPv6).
    pub fn host_port(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The host without IPv6 brackets: the certificate's expected name.
    fn bare_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// Resolves `host:port` to addresses; blocking (it runs on tokio's
/// blocking pool). Injectable so that tests can make a name resolve to
/// several loopback addresses without touching /etc/hosts.
pub type Resolver = Arc<dyn Fn(&str) -> io::Result<Vec<SocketAddr>> + Send + Sync>;

/// The system's resolver (getaddrinfo: /etc/hosts, DNS).
pub fn system_resolver() -> Resolver {
    Arc::new(|host_port: &str| host_port.to_socket_addrs().map(Iterator::collect))
}

/// Every address `host_port` resolves to, each once, in the resolver's order.
pub async fn resolve(resolver: &Resolver, host_port: &str) -> Result<Vec<SocketAddr>, String> {
    let (r, hp) = (resolver.clone(), host_port.to_string());
    let found = tokio::task::spawn_blocking(move || r(&hp)).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    let mut addrs = Vec::with_capacity(found.len());
    for a in found {
        if !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    if addrs.is_empty() {
        return Err("no address".into());
    }
    Ok(addrs)
}

/// Resolves `endpoint` again every [`RESOLVE_EVERY`] until `cancel` or until
/// every receiver is gone, publishing each new list; a failed resolution
/// keeps the last good list. An IP-address target gets no task.
pub fn watch_addresses(resolver: Resolver, endpoint: &Endpoint, first: Vec<SocketAddr>, cancel: CancellationToken) -> watch::Receiver<Arc<[SocketAddr]>> {
    let (tx, rx) = watch::channel(Arc::<[SocketAddr]>::from(first));
    if endpoint.bare_host().parse::<std::net::IpAddr>().is_ok() {
        return rx;
    }
    let host_port = endpoint.host_port();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RESOLVE_EVERY) => {}
                _ = cancel.cancelled() => return,
                _ = tx.closed() => return,
            }
            match resolve(&resolver, &host_port).await {
                Ok(addrs) => {
                    tx.send_if_modified(|current| {
                        let changed = current[..] != addrs[..];
                        if changed {
                            tracing::info!(message = "The target's addresses changed.", target = %host_port, addresses = ?addrs);
                            *current = addrs.into();
                        }
                        changed
                    });
                }
                Err(error) => tracing::warn!(message = "Cannot resolve the target again; keeping its last addresses.", target = %host_port, %error),
            }
        }
    });
    rx
}

/// Addresses and a dialer for an agent that never connects (fault-only,
/// no probe): one placeholder address, and a dialer that read no file.
pub fn never_dialed() -> (watch::Receiver<Arc<[SocketAddr]>>, Dialer) {
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    (watch::channel(Arc::<[SocketAddr]>::from(vec![unspecified])).1, Dialer { tls: None })
}

/// One worker's view of the target's addresses: new connections go to each
/// in turn, so connections spread evenly over all of them. Checked for a
/// new list at each connect (not per request).
pub struct Addrs {
    rx: watch::Receiver<Arc<[SocketAddr]>>,
    current: Arc<[SocketAddr]>,
    next: usize,
}

impl Addrs {
    /// `offset`: where this worker starts in the list, so that workers (and
    /// agents) with one connection each do not all pick the first address.
    pub fn new(mut rx: watch::Receiver<Arc<[SocketAddr]>>, offset: usize) -> Addrs {
        let current = rx.borrow_and_update().clone();
        Addrs { rx, current, next: offset }
    }

    /// The address for the next new connection.
    pub fn pick(&mut self) -> SocketAddr {
        if self.rx.has_changed().unwrap_or(false) {
            self.current = self.rx.borrow_and_update().clone();
        }
        let a = self.current[self.next % self.current.len()];
        self.next = self.next.wrapping_add(1);
        a
    }
}

/// A connection's byte stream: plain TCP, or TLS over TCP (boxed: a rustls
/// connection is large, and the plain variant stays small).
pub enum Stream {
    Plain(StampedTcp),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// Makes reads keep the kernel's receive time (`rxstamp.rs`); `false`
    /// when they cannot (TLS, or the option refused).
    pub fn stamp_reads(&mut self) -> bool {
        match self {
            Stream::Plain(s) => s.enable(),
            Stream::Tls(_) => false,
        }
    }

    /// When the last read's data arrived, on a stream whose reads are stamped.
    pub fn last_rx(&self) -> Option<Instant> {
        match self {
            Stream::Plain(s) => s.last_rx(),
            Stream::Tls(_) => None,
        }
    }
}

impl AsyncRead for Stream {
    #[inline]
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    #[inline]
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// Whether an I/O error is TLS's (a rustls error: a refused certificate,
/// an alert from the server), to count it as kind `tls` rather than `io`.
/// tokio-rustls wraps rustls' errors in `io::Error`; plain TCP never does.
pub fn error_kind(e: &io::Error) -> ErrorKind {
    if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
        ErrorKind::Tls
    } else {
        ErrorKind::Io
    }
}

/// Makes connections to the target: TCP, plus TLS for `https://`.
#[derive(Clone)]
pub struct Dialer {
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Dialer {
    /// For `endpoint`, with the plan's `tls` section (read from this node's
    /// files now: a missing file fails the run's start, not each request).
    pub fn new(endpoint: &Endpoint, tls: Option<&TargetTls>) -> Result<Dialer, String> {
        if !endpoint.tls {
            return Ok(Dialer { tls: None });
        }
        let name = ServerName::try_from(endpoint.bare_host().to_string()).map_err(|e| format!("`{}` is not a TLS server name: {e}", endpoint.host))?;
        let config = client_config(tls.cloned().unwrap_or_default())?;
        Ok(Dialer { tls: Some((TlsConnector::from(Arc::new(config)), name)) })
    }

    /// Whether connections are TLS (an `https://` target).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A new connection to `addr`, and how long its TLS handshake took
    /// (`None` for plain HTTP).
    pub async fn dial(&self, addr: SocketAddr) -> Result<(Stream, Option<Duration>), ErrorKind> {
        let tcp = TcpStream::connect(addr).await.map_err(|_| ErrorKind::Connect)?;
        tcp.set_nodelay(true).map_err(|_| ErrorKind::Connect)?;
        match &self.tls {
            None => Ok((Stream::Plain(StampedTcp::new(tcp)), None)),
            Some((connector, name)) => {
                let started = Instant::now();
                // A handshake the server breaks off (it refuses us, or is
                // not TLS at all) is a TLS failure too.
                let tls = connector.connect(name.clone(), tcp).await.map_err(|_| ErrorKind::Tls)?;
                Ok((Stream::Tls(Box::new(tls)), Some(started.elapsed())))
            }
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_pem(path: &str, field: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("tls.{field}: cannot read {path}: {e}"))
}

fn certificates(path: &str, field: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem(path, field)?;
    let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| format!("tls.{field}: {path} is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("tls.{field}: no PEM certificate in {path}"));
    }
    Ok(certs)
}

/// The system's roots (best effort: a node without any still trusts
/// `tls.ca`) plus `tls.ca`.
fn roots(ca: Option<&str>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if added == 0 && ca.is_none() {
        tracing::warn!(message = "No system root certificates found on this node; an https target needs tls.ca.", errors = native.errors.len());
    }
    if let Some(path) = ca {
        for cert in certificates(path, "ca")? {
            roots.add(cert).map_err(|e| format!("tls.ca: {path}: {e}"))?;
        }
    }
    Ok(roots)
}

/// The rustls client configuration for the plan's `tls` section.
pub fn client_config(tls: TargetTls) -> Result<rustls::ClientConfig, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().map_err(|e| e.to_string())?;
    let builder = if tls.insecure_skip_verify {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
    } else {
        builder.with_root_certificates(roots(tls.ca.as_deref())?)
    };
    let mut config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain = certificates(cert, "cert")?;
            let key_der = PrivateKeyDer::from_pem_slice(&read_pem(key, "key")?).map_err(|e| format!("tls.key: no PEM private key in {key}: {e}"))?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| format!("tls.cert {cert} with tls.key {key}: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// `tls.insecure_skip_verify`: any certificate, any name. The handshake's
/// signatures are still checked (the peer holds the key of what it sent).
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(&self, _: &CertificateDer<'_>, _: &[CertificateDer<'_>], _: &ServerName<'_>, _: &[u8], _: UnixTime) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_default_ports() {
        let e = Endpoint::parse("https://api.example.test/").unwrap();
        assert_eq!((e.tls, e.host.as_str(), e.port, e.authority.as_str()), (true, "api.example.test", 443, "api.example.test"));
        let e = Endpoint::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!((e.tls, e.port, e.host_port().as_str()), (false, 8080, "127.0.0.1:8080"));
        let e = Endpoint::parse("https://[::1]:8443").unwrap();
        assert_eq!((e.bare_host(), e.port), ("::1", 8443));
        assert_eq!(Endpoint::parse("http://[::1]").unwrap().port, 80);
        assert!(Endpoint::parse("ftp://x").is_err());
        assert!(Endpoint::parse("http://x/y").is_err());
        assert!(Endpoint::parse("http://x:99999").is_err());
    }

    #[tokio::test]
    async fn new_connections_take_every_address_in_turn() {
        let a: Vec<SocketAddr> = vec!["127.0.0.1:1".parse().unwrap(), "127.0.0.2:1".parse().unwrap()];
        let (tx, rx) = watch::channel(Arc::<[SocketAddr]>::from(a.clone()));
        let mut addrs = Addrs::new(rx, 1);
        assert_eq!([addrs.pick(), addrs.pick(), addrs.pick()], [a[1], a[0], a[1]]);
        // A new list is taken at the next connect.
        let b: SocketAddr = "127.0.0.3:1".parse().unwrap();
        tx.send(Arc::from(vec![b])).unwrap();
        assert_eq!(addrs.pick(), b);
    }
}
