//! Why a connection to the coordinator failed or was refused, in an
//! operator's words: the coordinator's log line for a refused handshake
//! ([`explain_server`]), and the client's message ([`describe`],
//! [`describe_call`]) — the dial's own finding ([`DialError`]), the TLS
//! reason, or a connection that broke.

use std::error::Error as StdError;
use std::io;

use rustls::{AlertDescription, CertificateError};

use super::DialError;

/// The first error of type `E` in an error's chain, looking inside
/// `io::Error`s (whose `source` skips the error they wrap).
pub(super) fn find<'a, E: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a E> {
    let mut next: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(r) = e.downcast_ref::<E>() {
            return Some(r);
        }
        if let Some(inner) = e.downcast_ref::<io::Error>().and_then(io::Error::get_ref) {
            if let Some(r) = find::<E>(inner) {
                return Some(r);
            }
        }
        next = e.source();
    }
    None
}

pub(super) fn rustls_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    find::<rustls::Error>(err)
}

pub(super) fn is_not_tls(e: &rustls::Error) -> bool {
    matches!(e, rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } | rustls::Error::InappropriateHandshakeMessage { .. })
}

/// Why the coordinator refused a handshake, in an operator's words.
pub(super) fn explain_server(e: &rustls::Error) -> String {
    match e {
        rustls::Error::NoCertificatesPresented => "the client presented no certificate (it needs --cert and --key signed by this coordinator's --ca)".into(),
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            "the client's certificate is not signed by this coordinator's --ca".into()
        }
        rustls::Error::InvalidCertificate(CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. }) => {
            "the client's certificate is not a client certificate (a coordinator's?)".into()
        }
        rustls::Error::InvalidCertificate(c) => format!("the client's certificate is not acceptable: {c:?}"),
        rustls::Error::AlertReceived(AlertDescription::UnknownCA | AlertDescription::BadCertificate | AlertDescription::DecryptError) => {
            "the client refused this coordinator's certificate (is its --ca another CA?)".into()
        }
        e if is_not_tls(e) => "the client does not speak TLS (plain-text --insecure against a TLS coordinator?)".into(),
        e => e.to_string(),
    }
}

/// Why a connection to the coordinator failed, in an operator's words, when
/// the cause is TLS; `None` for anything else.
pub fn explain_client(err: &(dyn StdError + 'static)) -> Option<String> {
    let Some(e) = rustls_error(err) else {
        // Some layers keep only the text of the rustls error.
        let text = chain_text(err);
        let alert = text.split("received fatal alert: ").nth(1).map(|rest| rest.split(|c: char| !c.is_ascii_alphanumeric()).next().unwrap_or(""));
        return match alert {
            Some(name) => Some(refused_by_alert(name).map_or_else(|| format!("TLS: {text}"), str::to_string)),
            None if text.contains("invalid peer certificate") => Some(format!("TLS: {text}")),
            None => None,
        };
    };
    Some(match e {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            "the coordinator's certificate is not signed by our --ca: this is not the coordinator we trust".into()
        }
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }) => {
            "the coordinator's certificate does not name the URL's host (issue it with --san HOST)".into()
        }
        rustls::Error::InvalidCertificate(CertificateError::Other(why)) => why.0.to_string(),
        rustls::Error::InvalidCertificate(CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. }) => {
            "the server's certificate is not a server certificate (an agent's or an operator's?): this is not a coordinator".into()
        }
        rustls::Error::InvalidCertificate(c) => format!("the coordinator's certificate is not acceptable: {c:?}"),
        rustls::Error::AlertReceived(a) => refused_by_alert(&format!("{a:?}")).map_or_else(|| format!("TLS: the coordinator sent the alert {a:?}"), str::to_string),
        e if is_not_tls(e) => "the coordinator does not speak TLS (is it running with --insecure? then use http:// and --insecure)".into(),
        e => format!("TLS: {e}"),
    })
}

/// What the coordinator's alert (by its rustls name) says about our certificate.
fn refused_by_alert(name: &str) -> Option<&'static str> {
    Some(match name {
        "CertificateRequired" => "the coordinator requires a client certificate",
        "UnknownCA" | "DecryptError" => "the coordinator refused our certificate: it is not signed by the coordinator's --ca",
        "UnsupportedCertificate" => "the coordinator refused our certificate: it is not a client certificate (a coordinator's certificate cannot dial; use an agent's or an operator's)",
        "CertificateExpired" => "the coordinator refused our certificate: it has expired or is not valid yet (check the clocks)",
        "BadCertificate" => "the coordinator refused our certificate (its log says why)",
        _ => return None,
    })
}

/// An error's whole chain on one line, looking inside `io::Error`s.
fn chain_text(err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source().or_else(|| e.downcast_ref::<io::Error>().and_then(io::Error::get_ref).map(|i| i as &(dyn StdError + 'static)));
    }
    parts.join(": ")
}

/// What went wrong with a connection to the coordinator, in an operator's
/// words: the dial's own finding (refused, unreachable, timed out, the TLS
/// handshake and why, the wrong protocol), a TLS refusal, or a connection
/// that broke; else the error's whole chain (tonic's own top line is a bare
/// "transport error").
pub fn describe(err: &(dyn StdError + 'static)) -> String {
    if let Some(dial) = find::<DialError>(err) {
        return dial.to_string();
    }
    let chain = chain_text(err);
    if let Some(why) = explain_client(err) {
        return format!("{why} ({chain})");
    }
    let broke = find::<io::Error>(err).is_some_and(|e| {
        matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::UnexpectedEof)
    });
    // h2 keeps only the text of the I/O error that ended a stream.
    let text = chain.to_ascii_lowercase();
    let broke = broke || ["broken pipe", "connection reset", "connection closed", "connection aborted"].iter().any(|t| text.contains(t));
    if broke {
        return format!("the connection broke: the coordinator stopped, restarted or crashed, or the network between us failed ({chain})");
    }
    chain
}

/// Why a call failed: the coordinator's own answer when it gave one (a
/// refused token or role says so itself), else what happened to the
/// connection ([`describe`]).
pub fn describe_call(status: &tonic::Status) -> String {
    if StdError::source(status).is_none() {
        return status.message().to_string();
    }
    describe(status)
}
