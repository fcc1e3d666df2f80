//! The `tls:` section of a plan: how the agents talk TLS to an `https://`
//! target (docs/plan.md, "TLS"). The files are read by each agent on its own
//! node when its share starts (`agent/src/connect.rs`), never by the
//! coordinator: a client key never travels, and never reaches a report.

use serde::{Deserialize, Serialize};

/// `tls: { ca, cert, key, insecure_skip_verify }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetTls {
    /// A CA certificate file (PEM, one or more certificates) trusted on top
    /// of the system's roots: a private CA, a staging CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// A client certificate (PEM chain) for targets that want mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// The private key of `cert` (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Accept any certificate, for any name. Encrypted but not
    /// authenticated: the report says so in its warnings.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
}

/// The warning report.json (`warnings`) and report.md carry for a run
/// that did not verify its target's certificate.
pub const INSECURE_SKIP_VERIFY_WARNING: &str =
    "tls.insecure_skip_verify: the target's certificate was not verified (any certificate, any name was accepted); the numbers are real, the endpoint's identity is not";

/// `Err((field path, message))` for the first problem.
pub(super) fn validate_tls(plan: &super::Plan) -> Result<(), (String, String)> {
    let https = plan.target.starts_with("https://");
    if let Some(b) = &plan.builtin_target {
        if b.tls != https {
            let msg = if b.tls { "the built-in target serves TLS: write `target: https://…`" } else { "an https:// target needs `builtin_target: { tls: true }` to serve TLS" };
            return Err((if b.tls { "target" } else { "builtin_target.tls" }.into(), msg.into()));
        }
        if b.require_client_cert && !b.tls {
            return Err(("builtin_target.require_client_cert".into(), "needs `tls: true`".into()));
        }
    }
    let Some(t) = &plan.tls else { return Ok(()) };
    let at = |field: &str| format!("tls.{field}");
    if !https {
        return Err(("tls".into(), "applies to https:// targets only; this target is plain http://".into()));
    }
    for (field, value) in [("ca", &t.ca), ("cert", &t.cert), ("key", &t.key)] {
        if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
            return Err((at(field), "must be a file path, not empty".into()));
        }
    }
    match (&t.cert, &t.key) {
        (Some(_), None) => return Err((at("key"), "a client certificate (`cert`) needs its private key (`key`)".into())),
        (None, Some(_)) => return Err((at("cert"), "a private key (`key`) needs its client certificate (`cert`)".into())),
        _ => {}
    }
    if t.insecure_skip_verify && t.ca.is_some() {
        return Err((at("insecure_skip_verify"), "verifies nothing, so `ca` would be ignored: keep one of the two".into()));
    }
    Ok(())
}
