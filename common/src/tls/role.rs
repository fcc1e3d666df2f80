//! Certificate roles (issue 8, item 11): what a certificate may do in a
//! fleet. `stampede certs issue --role ROLE` writes the role twice:
//!
//! - as the Extended Key Usage, which rustls/webpki check during every
//!   handshake: a coordinator's certificate is `serverAuth` only, an agent's
//!   or an operator's `clientAuth` only. A client's certificate therefore
//!   never passes as a server's (an agent's key cannot impersonate the
//!   coordinator), and a coordinator's never as a client's.
//! - as a SAN URI `urn:stampede:role:ROLE`, which our code reads ([`holder`]):
//!   it tells an agent from an operator (both are clients), and a stampede
//!   coordinator from any other server certificate the CA may have signed.
//!
//! The coordinator's services take one role each (`AgentService` agents,
//! `ControlService` operators); agents and the `stampede` client accept only
//! a server certificate with the coordinator role.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The SAN URI prefix of a role marker.
pub const ROLE_URI_PREFIX: &str = "urn:stampede:role:";

/// What a certificate's holder may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Role {
    /// Serves agents and operators (a server certificate only).
    Coordinator,
    /// Registers with the coordinator and runs what it assigns (a client certificate).
    Agent,
    /// Submits runs and lists agents: `stampede run/agents --coordinator` (a client certificate).
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Agent => "agent",
            Role::Operator => "operator",
        }
    }

    /// The SAN URI that marks it: `urn:stampede:role:agent`.
    pub fn uri(self) -> String {
        format!("{ROLE_URI_PREFIX}{}", self.as_str())
    }

    fn from_name(name: &str) -> Option<Role> {
        [Role::Coordinator, Role::Agent, Role::Operator].into_iter().find(|r| r.as_str() == name)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a certificate has no usable role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    #[error("the certificate cannot be parsed: {0}")]
    Unparsable(String),
    #[error("the certificate{0} has no stampede role (issued before roles existed? issue a new one with `stampede certs issue --role ...`)")]
    NoRole(String),
    #[error("the certificate{0} claims several roles ({1}); stampede issues one role per certificate")]
    Several(String, String),
    #[error("the certificate{0} has an unknown role `{1}`")]
    Unknown(String, String),
}

/// Who holds a certificate: its subject's common name and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub name: String,
    pub role: Role,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.role, self.name)
    }
}

/// Reads the holder of a DER certificate. This parses, it does not verify:
/// call it on a certificate rustls has verified, or only to explain a refusal.
pub fn holder(der: &[u8]) -> Result<Holder, RoleError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| RoleError::Unparsable(e.to_string()))?;
    let name = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).unwrap_or("").to_string();
    let of = if name.is_empty() { String::new() } else { format!(" of {name}") };
    let san = cert.subject_alternative_name().map_err(|e| RoleError::Unparsable(e.to_string()))?;
    let markers: Vec<&str> = san
        .iter()
        .flat_map(|s| s.value.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::URI(uri) => uri.strip_prefix(ROLE_URI_PREFIX),
            _ => None,
        })
        .collect();
    match markers.as_slice() {
        [] => Err(RoleError::NoRole(of)),
        [one] => Role::from_name(one).map(|role| Holder { name, role }).ok_or_else(|| RoleError::Unknown(of, one.to_string())),
        several => Err(RoleError::Several(of, several.join(", "))),
    }
}
