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

    /// Who, in a sentence's words: the certificate's subject name, or the
    /// plain-text client's address.
    pub fn subject(&self) -> String {
        match self {
            Caller::Certified { holder, .. } => holder.name.clone(),
            Caller::Insecure { peer } => format!("an insecure (plain-text) client at {}", peer.map_or_else(|| "an unknown address".to_string(), |p| p.to_string())),
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
        // Plain text only when tonic says the connection is plain TCP: a
        // request whose transport cannot be told (a TLS stream wrapped in
        // another type, a call made in-process) is refused, never waved
        // through as insecure.
        if request.extensions().get::<TcpConnectInfo>().is_some() {
            return Ok(Caller::Insecure { peer });
        }
        let refusal = format!("{service} cannot tell how this caller connected (neither TLS nor plain TCP); refused");
        warn!(message = "Caller refused: unknown transport.", service, reason = %refusal);
        return Err(Status::permission_denied(refusal));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 8 item 11: the role check must fail closed. A request that
    /// carries no connect info (its transport unknown) used to pass as an
    /// insecure caller, so any change to how TLS connections reach tonic
    /// would have silently switched the role check off.
    #[test]
    fn a_caller_of_unknown_transport_is_refused_not_insecure() {
        let bare = Request::new(());
        let e = authorize(&bare, "the control API", Role::Operator).expect_err("no connect info is refused");
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("cannot tell how this caller connected"), "{}", e.message());

        let mut plain = Request::new(());
        plain.extensions_mut().insert(TcpConnectInfo { local_addr: None, remote_addr: Some("127.0.0.1:9".parse().unwrap()) });
        assert!(matches!(authorize(&plain, "the control API", Role::Operator), Ok(Caller::Insecure { .. })));
    }
}
