//! `stampede certs`: a private CA for one fleet, the certificates it signs
//! — each with one role (issue 8, item 11): a coordinator's is a server
//! certificate only, an agent's or an operator's a client certificate only,
//! and each carries its role as a SAN URI (`stampede_common::tls::role`) —
//! and the agents' enrollment token.
//!
//! A certificate names NAME and the `--san`s, nothing else: 127.0.0.1 or
//! localhost in a coordinator's certificate would let it pass for any
//! host's loopback, so they are there only when asked for.
//!
//! Keys are ECDSA P-256 (rcgen's default, with ring). Private keys and the
//! token are written readable by their owner only (0600); nothing is ever
//! overwritten.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use stampede_common::tls::{Role, Token};
use time::{Duration, OffsetDateTime};

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a CA: DIR/ca.pem and DIR/ca-key.pem (refuses to overwrite them).
    Init {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue NAME.pem and NAME-key.pem, signed by the CA in DIR, for one
    /// role: a coordinator (server only), an agent or an operator (client only).
    Issue {
        /// Where the CA is (`certs init --dir`).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// What the certificate may do: `coordinator` (serves agents and
        /// operators), `agent` (registers and runs load), `operator`
        /// (`stampede run/agents --coordinator`).
        #[arg(long, value_enum)]
        role: Role,
        /// The certificate's common name and file name; also a SAN.
        #[arg(long)]
        name: String,
        /// A DNS name or IP address the certificate is valid for, besides
        /// NAME; repeat for several. A coordinator's needs every name or
        /// address agents dial it by; 127.0.0.1 and localhost only if asked.
        #[arg(long = "san", value_name = "DNS-or-IP")]
        sans: Vec<String>,
        /// Write the files here instead of DIR.
        #[arg(long, value_name = "DIR2")]
        out: Option<PathBuf>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Write a random enrollment token (32 bytes as hex) to FILE, readable by its owner only.
    Token {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

pub fn main(cmd: CertsCommand) -> anyhow::Result<i32> {
    match cmd {
        CertsCommand::Init { dir, days } => {
            let (cert, key) = init(&dir, days)?;
            println!("wrote {} and {} (valid {days} days)", cert.display(), key.display());
            println!("keep {} secret: it signs every certificate this fleet trusts", key.display());
        }
        CertsCommand::Issue { dir, role, name, sans, out, days } => {
            let issued = issue(&dir, role, &name, &sans, out.as_deref(), days)?;
            println!("wrote {} and {} (role {role}, CN {name}, SANs {}, valid {days} days)", issued.cert.display(), issued.key.display(), issued.sans.join(", "));
        }
        CertsCommand::Token { out } => {
            token(&out)?;
            println!("wrote {} (mode 0600): give it to the coordinator and the agents with --token-file", out.display());
        }
    }
    Ok(0)
}

fn validity(params: &mut CertificateParams, days: u32) -> anyhow::Result<()> {
    if days == 0 {
        bail!("--days must be at least 1");
    }
    let now = OffsetDateTime::now_utc();
    // An hour back, for peers whose clock is a little behind.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(days));
    Ok(())
}

/// Creates the CA in `dir`; returns the paths of its certificate and key.
pub fn init(dir: &Path, days: u32) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    for p in [&cert_path, &key_path] {
        if p.exists() {
            bail!("{} already exists; refusing to overwrite a CA (remove it first, or use another --dir)", p.display());
        }
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "stampede");
    // A name of its own: a peer trusting another stampede CA then fails
    // with "unknown issuer", not with a bad signature from a namesake.
    dn.push(DnType::CommonName, format!("stampede CA {}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    params.distinguished_name = dn;
    // Signs end-entity certificates only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, days)?;
    let key = KeyPair::generate().context("generating the CA key")?;
    let cert = params.self_signed(&key).context("signing the CA certificate")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok((cert_path, key_path))
}

#[derive(Debug)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub sans: Vec<String>,
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty() && !name.starts_with(['.', '-']) && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !ok {
        bail!("--name `{name}`: use letters, digits, `.`, `-` and `_` (it names the files), not starting with `.` or `-`");
    }
    Ok(())
}

/// Issues `NAME.pem` and `NAME-key.pem` for `role`, signed by the CA in `dir`.
pub fn issue(dir: &Path, role: Role, name: &str, sans: &[String], out: Option<&Path>, days: u32) -> anyhow::Result<Issued> {
    check_name(name)?;
    let out = out.unwrap_or(dir);
    let (cert_path, key_path) = (out.join(format!("{name}.pem")), out.join(format!("{name}-key.pem")));
    for p in [&cert_path, &key_path] {
        if p.exists() {
            bail!("{} already exists; refusing to overwrite it (remove it first)", p.display());
        }
    }
    let (ca_cert, ca_key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    let ca_pem = std::fs::read_to_string(&ca_cert).with_context(|| format!("reading the CA certificate {} (create one with `stampede certs init --dir {}`)", ca_cert.display(), dir.display()))?;
    let ca_key_pem = std::fs::read_to_string(&ca_key).with_context(|| format!("reading the CA key {}", ca_key.display()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).with_context(|| format!("{}: not a PEM private key", ca_key.display()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).with_context(|| format!("{}: not a PEM certificate", ca_cert.display()))?;

    let mut names = vec![name.to_string()];
    names.extend(sans.iter().cloned());
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    let mut params = CertificateParams::new(names.clone()).context("--san: each must be a DNS name or an IP address")?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "stampede");
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // The purpose rustls checks in every handshake: a client's certificate
    // never passes as a server's, nor the other way round.
    params.extended_key_usages = vec![match role {
        Role::Coordinator => ExtendedKeyUsagePurpose::ServerAuth,
        Role::Agent | Role::Operator => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    // The role our code reads: tells an agent from an operator.
    let marker = role.uri().try_into().context("the role marker is a valid URI")?;
    params.subject_alt_names.push(SanType::URI(marker));
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days)?;
    let key = KeyPair::generate().context("generating the key")?;
    let cert = params.signed_by(&key, &issuer).context("signing the certificate")?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(Issued { cert: cert_path, key: key_path, sans: names })
}

/// Writes a fresh enrollment token to `out`.
pub fn token(out: &Path) -> anyhow::Result<()> {
    let token = Token::generate()?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    write_new(out, format!("{token}\n").as_bytes(), 0o600)
}

/// Creates `path` with `mode` and writes `data`; never replaces a file.
fn write_new(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut f = match OpenOptions::new().write(true).create_new(true).mode(mode).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!("{} already exists; refusing to overwrite it", path.display()),
        Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
    };
    f.write_all(data).and_then(|()| f.sync_all()).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_issue_token_write_what_they_say_and_never_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        init(&ca, 30).unwrap();
        assert!(init(&ca, 30).unwrap_err().to_string().contains("refusing to overwrite"));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&ca.join("ca-key.pem")), 0o600);

        let issued = issue(&ca, Role::Agent, "agent1", &[], None, 30).unwrap();
        assert_eq!(issued.sans, ["agent1"]);
        assert_eq!(mode(&issued.key), 0o600);
        assert!(issue(&ca, Role::Agent, "agent1", &[], None, 30).is_err(), "no overwrite");
        let other = dir.path().join("elsewhere");
        let issued = issue(&ca, Role::Coordinator, "coord", &["10.1.2.3".into(), "coord.example".into()], Some(&other), 30).unwrap();
        assert_eq!(issued.sans, ["coord", "10.1.2.3", "coord.example"]);
        assert!(other.join("coord.pem").exists() && other.join("coord-key.pem").exists());
        assert!(issue(&ca, Role::Agent, "../x", &[], None, 30).is_err());
        assert!(issue(&dir.path().join("nope"), Role::Agent, "x", &[], None, 30).unwrap_err().to_string().contains("certs init"));

        let t = dir.path().join("token");
        token(&t).unwrap();
        assert_eq!(mode(&t), 0o600);
        assert_eq!(std::fs::read_to_string(&t).unwrap().trim().len(), 64);
        assert!(token(&t).is_err(), "no overwrite");
    }

    #[test]
    fn each_role_is_written_into_its_certificate_and_only_a_coordinator_serves() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), 30).unwrap();
        let files = |name: &str| stampede_common::tls::TlsFiles { ca: dir.path().join("ca.pem"), cert: dir.path().join(format!("{name}.pem")), key: dir.path().join(format!("{name}-key.pem")) };
        for (role, name) in [(Role::Coordinator, "coord"), (Role::Agent, "agent"), (Role::Operator, "ci")] {
            issue(dir.path(), role, name, &[], None, 30).unwrap();
            let pem = std::fs::read(dir.path().join(format!("{name}.pem"))).unwrap();
            let der = <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::from_pem_slice(&pem).unwrap();
            let holder = stampede_common::tls::role::holder(&der).unwrap();
            assert_eq!((holder.role, holder.name.as_str()), (role, name));
            stampede_common::tls::ClientTls::load(&files(name)).unwrap();
            let served = stampede_common::tls::ServerTls::load(&files(name));
            assert_eq!(served.is_ok(), role == Role::Coordinator, "{name}: {:?}", served.err());
        }
        let e = stampede_common::tls::ServerTls::load(&files("agent")).unwrap_err().to_string();
        assert!(e.contains("agent agent's certificate (role agent)") && e.contains("--role coordinator"), "{e}");
    }

    #[test]
    fn a_certificate_without_one_role_has_none() {
        use stampede_common::tls::role::{holder, RoleError};
        let key = KeyPair::generate().unwrap();
        // As `certs issue` made them before roles: no marker.
        let old = CertificateParams::new(vec!["old".to_string()]).unwrap().self_signed(&key).unwrap();
        assert!(matches!(holder(old.der()), Err(RoleError::NoRole(_))));
        let mut two = CertificateParams::new(vec!["two".to_string()]).unwrap();
        for role in [Role::Agent, Role::Operator] {
            two.subject_alt_names.push(SanType::URI(role.uri().try_into().unwrap()));
        }
        let two = two.self_signed(&key).unwrap();
        assert!(matches!(holder(two.der()), Err(RoleError::Several(..))));
    }
}
