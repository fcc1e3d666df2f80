//! Who is calling the coordinator, and whether they may (issue 8, item 11).
//!
//! With TLS, every connection carries the client certificate rustls
//! verified against `--ca` (tonic puts it into each request's extensions);
//! its role decides which service the caller may use: `AgentService` takes
//! agents, `ControlService` operators. A plain-text connection (`--insecure`,
//! or the in-process agents of `--local-agents`) has no certificate: the
//! caller is known only by its address, and nothing is checked here.

use std::fmt;
use std::net::SocketAddr;

use stampede_common::tls::{role, Holder, Role};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Request, Status};
use tracing::warn;

/// The caller of one request.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A verified certificate with the role the service takes.
    Certified { holder: Holder, peer: Option<SocketAddr> },
    /// A plain-text connection.
    Insecure { peer: Option<SocketAddr> },
}

impl Caller {
    fn peer(&self) -> Option<SocketAddr> {
        match self {
            Caller::Certified { peer, .. } | Caller::Insecure { peer } => *peer,
        }
    }

    /// For the run store: `{transport, role, name, peer}`.
    pub fn to_json(&self) -> serde_json::Value {
        let peer = self.peer().map(|p| p.to_string());
        match self {
            Caller::Certified { holder, .. } => serde_json::json!({ "transport": "mtls", "role": holder.role.as_str(), "name": holder.name, "peer": peer }),
            Caller::Insecure { .. } => serde_json::json!({ "transport": "insecure", "role": null, "name": null, "peer": peer }),
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let peer = self.peer().map_or_else(|| "an unknown address".to_string(), |p| p.to_string());
        match self {
            Caller::Certified { holder, .. } => write!(f, "{holder} at {peer}"),
            Caller::Insecure { .. } => write!(f, "an insecure (plain-text) client at {peer}"),
        }
    }
}

/// The caller of `request` if its certificate has role `wanted`; else
/// PERMISSION_DENIED naming the role found, and a warning in the log.
/// `service` names the service in both.
pub fn authorize<T>(request: &Request<T>, service: &str, wanted: Role) -> Result<Caller, Status> {
    let peer = request.remote_addr();
    let Some(tls) = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>() else {
        return Ok(Caller::Insecure { peer });
    };
    let found = match tls.peer_certs() {
        Some(certs) if !certs.is_empty() => role::holder(&certs[0]),
        // The handshake requires a certificate; this is only defence in depth.
        _ => Err(role::RoleError::NoRole(" (none presented)".into())),
    };
    let refusal = match found {
        Ok(holder) if holder.role == wanted => return Ok(Caller::Certified { holder, peer }),
        Ok(holder) => format!("{service} takes only {wanted} certificates; this certificate ({}) has the role {}", holder.name, holder.role),
        Err(e) => format!("{service} takes only {wanted} certificates: {e}"),
    };
    let peer_text = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
    warn!(message = "Caller refused: wrong certificate role.", peer = %peer_text, service, reason = %refusal);
    Err(Status::permission_denied(refusal))
}
