//! Transport security shared by both binaries: mutual TLS between the
//! coordinator and everyone who dials it (agents and control clients), the
//! enrollment token agents present, and the explicit `--insecure` opt-out.
//!
//! - The coordinator serves TLS with its own acceptor ([`incoming`]) rather
//!   than tonic's `ServerTlsConfig`, for one reason: tonic logs a refused
//!   handshake at debug level without the peer, and an operator needs to see
//!   "who was refused and why" at the default level. The rustls config is
//!   the same one tonic would build (ring provider, ALPN h2, client
//!   certificates required and verified against `--ca`).
//! - Clients (the agent, `stampede run/agents --coordinator`) dial with
//!   [`dial`]: the server's certificate must chain to `--ca`, name the URL's
//!   host and carry the coordinator role; the client presents `--cert`/`--key`.
//! - Every certificate has one role ([`role`]): coordinator, agent or
//!   operator. The coordinator serves only with a coordinator certificate,
//!   and its services check the role of each caller (`coordinator/src/caller.rs`).
//! - The enrollment token travels as `authorization: Bearer TOKEN` on the
//!   agent's `Session` call and is compared in constant time ([`Token::matches`]).
//!
//! Certificates and keys are read once, when a process starts: a bad file
//! fails at once with its path, and rotating one means restarting.

pub mod role;
mod dial;
mod explain;

pub use dial::{DialError, NotCoordinator};
pub use explain::{describe, describe_call, explain_client};
use explain::{explain_server, rustls_error};
pub use role::{Holder, Role, RoleError};

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::ServerName;
use tonic::transport::{Channel, Endpoint};
use tracing::warn;

/// Logged by every process that runs with `--insecure`.
pub const INSECURE_WARNING: &str = "Plain-text gRPC: no TLS, no client certificates. Use only on a trusted network.";

/// How long a peer may take over its TLS handshake before it is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A refused handshake is logged once per peer address and reason in this
/// window; repeats are counted into the next line. With TLS 1.3 a client
/// learns that its certificate was refused only after its side of the
/// handshake, and tonic's channel then reconnects at once, many times —
/// without this, one misconfigured agent floods the coordinator's log.
const REFUSAL_LOG_WINDOW: Duration = Duration::from_secs(10);

/// The flags that choose the transport, the same on every command that
/// serves or dials gRPC: `--ca --cert --key` for mutual TLS, or `--insecure`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// CA certificate (PEM): the peer's certificate must be signed by it
    /// (`stampede certs init`).
    #[arg(long, value_name = "PATH")]
    pub ca: Option<PathBuf>,
    /// This process's certificate (PEM), signed by the CA (`stampede certs issue`).
    #[arg(long, value_name = "PATH")]
    pub cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, value_name = "PATH")]
    pub key: Option<PathBuf>,
    /// Plain-text gRPC: no TLS, no client certificates. Only on a trusted network.
    #[arg(long, conflicts_with_all = ["ca", "cert", "key"])]
    pub insecure: bool,
}

/// The three files of mutual TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What the flags chose.
#[derive(Debug, Clone)]
pub enum Mode {
    Tls(TlsFiles),
    Insecure,
}

/// The message of a usage error when neither TLS nor `--insecure` is chosen.
pub fn choose_message(token: bool) -> String {
    let token = if token { " --token-file PATH" } else { "" };
    format!("choose the transport: --ca PATH --cert PATH --key PATH{token} for mutual TLS, or --insecure for plain text on a trusted network")
}

impl TlsArgs {
    /// Which transport the flags choose. `Err` is a usage message naming the
    /// flags; `token` says whether this command also takes `--token-file`.
    pub fn mode(&self, token: bool) -> Result<Mode, String> {
        if self.insecure {
            return Ok(Mode::Insecure);
        }
        let given = [("--ca", &self.ca), ("--cert", &self.cert), ("--key", &self.key)];
        let missing: Vec<&str> = given.iter().filter(|(_, v)| v.is_none()).map(|(n, _)| *n).collect();
        match (&self.ca, &self.cert, &self.key) {
            (Some(ca), Some(cert), Some(key)) => Ok(Mode::Tls(TlsFiles { ca: ca.clone(), cert: cert.clone(), key: key.clone() })),
            (None, None, None) => Err(choose_message(token)),
            _ => Err(format!("--ca, --cert and --key go together; missing: {} (or use --insecure instead of all three)", missing.join(", "))),
        }
    }

    /// `mode`, and the URL's scheme must match it: `https://` with TLS,
    /// `http://` with `--insecure`.
    pub fn mode_for(&self, url: &str, token: bool) -> Result<Mode, String> {
        let mode = self.mode(token)?;
        check_scheme(url, matches!(mode, Mode::Tls(_)))?;
        Ok(mode)
    }

    /// Whether any transport flag was given (for commands where they do not apply).
    pub fn any(&self) -> bool {
        self.insecure || self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))
}

fn certificates(pem: &[u8], path: &Path, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().with_context(|| format!("{what} {}: not a PEM certificate", path.display()))?;
    if certs.is_empty() {
        bail!("{what} {}: no PEM certificate in it", path.display());
    }
    Ok(certs)
}

fn private_key(pem: &[u8], path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).with_context(|| format!("--key {}: no PEM private key in it", path.display()))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The coordinator's side: its certificate, and the CA every client
/// certificate must chain to.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

impl ServerTls {
    pub fn load(files: &TlsFiles) -> anyhow::Result<Self> {
        let ca = certificates(&read(&files.ca, "--ca")?, &files.ca, "--ca")?;
        let chain = certificates(&read(&files.cert, "--cert")?, &files.cert, "--cert")?;
        let key = private_key(&read(&files.key, "--key")?, &files.key)?;
        // Clients accept only a coordinator's certificate: say so now, not
        // at every agent's refused handshake.
        match role::holder(&chain[0]) {
            Ok(h) if h.role == Role::Coordinator => {}
            Ok(h) => bail!("--cert {}: this is {h}'s certificate (role {}); a coordinator serves a coordinator certificate (`stampede certs issue --role coordinator`)", files.cert.display(), h.role),
            Err(e) => bail!("--cert {}: {e}", files.cert.display()),
        }
        let roots = roots(ca, &files.ca)?;
        // Every client must present a certificate signed by the CA: agents
        // and control clients alike.
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider()).build().context("building the client-certificate verifier")?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .with_context(|| format!("--cert {} with --key {}", files.cert.display(), files.key.display()))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ServerTls { config: Arc::new(config) })
    }
}

/// Accepts TCP connections on `listener` and completes each TLS handshake in
/// its own task (a slow peer holds up nobody); yields the connections whose
/// handshake succeeded, and logs every refused one with its peer and reason.
/// Ends when the returned stream is dropped (the server shut down).
pub fn incoming(listener: TcpListener, tls: ServerTls) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(tls.config);
    let refusals = Arc::new(RefusalLog::default());
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(error) => {
                    // Out of file descriptors and the like: pause, do not spin.
                    warn!(message = "Accepting a connection failed.", %error);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (acceptor, tx, refusals) = (acceptor.clone(), tx.clone(), refusals.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(error)) => {
                        let reason = rustls_error(&error).map_or_else(|| error.to_string(), explain_server);
                        match refusals.should_log(peer.ip(), &reason) {
                            Some(0) => warn!(message = "TLS handshake refused; connection dropped.", %peer, %reason, %error),
                            Some(repeats) => warn!(message = "TLS handshake refused; connection dropped.", %peer, %reason, %error, repeats),
                            None => {}
                        }
                    }
                    Err(_) => warn!(message = "TLS handshake timed out; connection dropped.", %peer, timeout = ?HANDSHAKE_TIMEOUT),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// When each (peer address, reason) was last logged, and how many refusals
/// went unlogged since.
#[derive(Default)]
struct RefusalLog {
    seen: std::sync::Mutex<std::collections::HashMap<(std::net::IpAddr, String), (std::time::Instant, u64)>>,
}

impl RefusalLog {
    /// `Some(repeats not logged since the last line)` when this refusal is to be logged.
    fn should_log(&self, ip: std::net::IpAddr, reason: &str) -> Option<u64> {
        let now = std::time::Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > 4096 {
            seen.retain(|_, (at, _)| now.duration_since(*at) < REFUSAL_LOG_WINDOW);
        }
        match seen.get_mut(&(ip, reason.to_string())) {
            Some((at, repeats)) if now.duration_since(*at) < REFUSAL_LOG_WINDOW => {
                *repeats += 1;
                None
            }
            Some((at, repeats)) => {
                let r = std::mem::take(repeats);
                *at = now;
                Some(r)
            }
            None => {
                seen.insert((ip, reason.to_string()), (now, 0));
                Some(0)
            }
        }
    }
}

fn roots(ca: Vec<CertificateDer<'static>>, path: &Path) -> anyhow::Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for c in ca {
        roots.add(c).with_context(|| format!("--ca {}: not a usable CA certificate", path.display()))?;
    }
    Ok(Arc::new(roots))
}

/// A dialing side's certificate and the CA the coordinator's must chain to.
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
}

impl ClientTls {
    /// Reads and checks the three files; the coordinator's certificate will
    /// have to chain to `--ca` and carry the coordinator role.
    pub fn load(files: &TlsFiles) -> anyhow::Result<Self> {
        let ca = certificates(&read(&files.ca, "--ca")?, &files.ca, "--ca")?;
        let chain = certificates(&read(&files.cert, "--cert")?, &files.cert, "--cert")?;
        let key = private_key(&read(&files.key, "--key")?, &files.key)?;
        let inner = WebPkiServerVerifier::builder_with_provider(roots(ca, &files.ca)?, provider()).build().context("building the server-certificate verifier")?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(dial::CoordinatorOnly { inner }))
            .with_client_auth_cert(chain, key)
            .with_context(|| format!("--cert {} with --key {}", files.cert.display(), files.key.display()))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ClientTls { config: Arc::new(config) })
    }
}

/// `https://` with TLS, `http://` without; `Err` is a usage message.
pub fn check_scheme(url: &str, tls: bool) -> Result<(), String> {
    match (tls, url.split_once("://").map(|(scheme, _)| scheme)) {
        (true, Some("https")) | (false, Some("http")) => Ok(()),
        (true, _) => Err(format!("with --ca/--cert/--key the coordinator URL must be https://HOST:PORT (got {url})")),
        (false, Some("https")) => Err(format!("an https:// coordinator needs --ca, --cert and --key; --insecure takes an http:// URL (got {url})")),
        (false, _) => Err(format!("the coordinator URL must be http://HOST:PORT with --insecure, https://HOST:PORT with TLS (got {url})")),
    }
}

/// How to reach the coordinator at a URL: the gRPC endpoint, and the
/// connector that makes its connections ([`dial`]).
pub struct Dialing {
    endpoint: Endpoint,
    dial: dial::Dial,
}

impl std::fmt::Debug for Dialing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialing").field("host", &self.dial.host).field("port", &self.dial.port).field("tls", &self.dial.tls.is_some()).finish()
    }
}

impl Dialing {
    /// Connects now; a failure's chain holds the [`DialError`] that says why.
    pub async fn connect(self) -> Result<Channel, tonic::transport::Error> {
        self.endpoint.connect_with_connector(self.dial).await
    }
}

/// How to reach `url`: `https://` with TLS, `http://` without.
pub fn endpoint(url: &str, tls: Option<&ClientTls>) -> anyhow::Result<Dialing> {
    check_scheme(url, tls.is_some()).map_err(anyhow::Error::msg)?;
    let endpoint = Endpoint::from_shared(url.to_string()).with_context(|| format!("`{url}` is not a URL"))?;
    let uri = endpoint.uri().clone();
    let authority = uri.authority().with_context(|| format!("`{url}` has no host"))?.clone();
    // The certificate must name the host as written in the URL.
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
    let port = authority.port_u16().unwrap_or(if tls.is_some() { 443 } else { 80 });
    let Some(tls) = tls else {
        return Ok(Dialing { endpoint, dial: dial::Dial { host, port, tls: None } });
    };
    let name = ServerName::try_from(host.clone()).with_context(|| format!("`{host}` is not a host name or an IP address"))?;
    // Our connector does the TLS; tonic would insist on its own for an
    // https:// endpoint, so it gets the http:// form, and the https:// URL
    // as the requests' origin.
    let endpoint = Endpoint::from_shared(format!("http://{authority}")).with_context(|| format!("`{url}` is not a URL"))?.origin(uri);
    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
    Ok(Dialing { endpoint, dial: dial::Dial { host, port, tls: Some((connector, name.to_owned())) } })
}

/// The shared secret an agent must present to be enrolled.
#[derive(Clone)]
pub struct Token {
    /// `Bearer TOKEN`, exactly as it travels.
    bearer: Arc<str>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// The gRPC metadata key the token travels in.
pub const AUTHORIZATION: &str = "authorization";

impl Token {
    /// A token from text: surrounding whitespace is ignored; it must be
    /// visible ASCII (it travels in a header).
    pub fn new(text: &str) -> anyhow::Result<Self> {
        let t = text.trim();
        if t.is_empty() {
            bail!("the token is empty");
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            bail!("the token must be visible ASCII without spaces (`stampede certs token` writes 64 hex digits)");
        }
        Ok(Token { bearer: format!("Bearer {t}").into() })
    }

    /// Reads `--token-file`; warns when other users can read it.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading --token-file {}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    warn!(message = "The token file is readable by other users; chmod 600 it.", path = %path.display());
                }
            }
        }
        Token::new(&text).with_context(|| format!("--token-file {}", path.display()))
    }

    /// 32 random bytes from the OS, as 64 hex digits.
    pub fn generate() -> anyhow::Result<String> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("the OS random source failed: {e}"))?;
        Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The `authorization` metadata value.
    pub fn metadata(&self) -> MetadataValue<Ascii> {
        MetadataValue::try_from(&*self.bearer).expect("Token::new allows only visible ASCII")
    }

    /// Whether `presented` (the whole `authorization` value) is this token.
    ///
    /// Constant time in the content (`subtle`): a byte-by-byte `==` returns
    /// at the first difference, and timing it would let a client guess the
    /// token one byte at a time. `subtle` rather than a hand-written XOR
    /// fold because its fold goes through an optimization barrier, so the
    /// compiler cannot turn it back into an early exit. Only the length
    /// may leak, and every token `certs token` writes has the same one.
    pub fn matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.bearer.as_bytes().ct_eq(presented).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_matches_only_itself() {
        let t = Token::new(" abc123\n").unwrap();
        assert!(t.matches(b"Bearer abc123"));
        assert!(!t.matches(b"Bearer abc124"));
        assert!(!t.matches(b"Bearer abc12"));
        assert!(!t.matches(b"abc123"));
        assert!(!t.matches(b""));
        assert_eq!(t.metadata().to_str().unwrap(), "Bearer abc123");
        assert!(Token::new("  ").is_err());
        assert!(Token::new("a b").is_err());
        assert!(!format!("{t:?}").contains("abc"));
    }

    #[test]
    fn generated_tokens_are_64_hex_digits_and_differ() {
        let (a, b) = (Token::generate().unwrap(), Token::generate().unwrap());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn mode_names_the_flags() {
        let none = TlsArgs::default();
        let e = none.mode(true).unwrap_err();
        for flag in ["--ca", "--cert", "--key", "--token-file", "--insecure"] {
            assert!(e.contains(flag), "{e}");
        }
        let partial = TlsArgs { ca: Some("ca.pem".into()), ..Default::default() };
        let e = partial.mode(false).unwrap_err();
        assert!(e.contains("missing: --cert, --key"), "{e}");
        assert!(matches!(TlsArgs { insecure: true, ..Default::default() }.mode(true), Ok(Mode::Insecure)));
    }

    #[test]
    fn endpoint_matches_scheme_to_transport() {
        assert!(endpoint("http://127.0.0.1:7000", None).is_ok());
        let e = endpoint("https://127.0.0.1:7000", None).unwrap_err().to_string();
        assert!(e.contains("--ca"), "{e}");
        assert!(endpoint("127.0.0.1:7000", None).is_err());
    }
}
