//! HTTPS for the built-in target: a CA generated at start (rcgen, ECDSA
//! P-256), a server certificate it signs for the names the target is
//! reached by, and, when asked, a client certificate it signs too, for
//! targets that require one (mutual TLS). Nothing is kept beyond the
//! process: [`TlsMaterial::write`] puts the CA (and the client certificate)
//! where a plan can point `tls.ca` (and `tls.cert`/`tls.key`).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The generated certificates, in PEM.
#[derive(Clone)]
pub struct TlsMaterial {
    pub ca_pem: String,
    pub server_cert_pem: String,
    server_key_pem: String,
    pub client_cert_pem: String,
    client_key_pem: String,
    /// Whether the server refuses clients without a certificate of the CA.
    pub require_client_cert: bool,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial").field("require_client_cert", &self.require_client_cert).finish_non_exhaustive()
    }
}

/// Where [`TlsMaterial::write`] put the files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn name(common: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "stampede built-in target");
    dn.push(DnType::CommonName, common);
    dn
}

impl TlsMaterial {
    /// A new CA, and a server certificate for `names` (DNS names or IP
    /// addresses, e.g. `localhost`, `127.0.0.1`) signed by it, and a client
    /// certificate signed by it.
    pub fn generate(names: &[String], require_client_cert: bool) -> io::Result<TlsMaterial> {
        let mut ca = CertificateParams::default();
        // A name of its own per run: another run's CA fails as "unknown issuer".
        ca.distinguished_name = name(&format!("stampede target CA {:08x}", fastrand::u32(..)));
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca_key = KeyPair::generate().map_err(other)?;
        let ca_cert = ca.self_signed(&ca_key).map_err(other)?;
        let ca_pem = ca_cert.pem();
        let issuer = Issuer::new(ca, ca_key);

        let leaf = |names: Vec<String>, common: &str, purpose| -> io::Result<(String, String)> {
            let mut p = CertificateParams::new(names).map_err(other)?;
            p.distinguished_name = name(common);
            p.is_ca = IsCa::ExplicitNoCa;
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = vec![purpose];
            let key = KeyPair::generate().map_err(other)?;
            let cert = p.signed_by(&key, &issuer).map_err(other)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_cert_pem, server_key_pem) = leaf(names.to_vec(), "stampede built-in target", ExtendedKeyUsagePurpose::ServerAuth)?;
        let (client_cert_pem, client_key_pem) = leaf(Vec::new(), "stampede load client", ExtendedKeyUsagePurpose::ClientAuth)?;
        Ok(TlsMaterial { ca_pem, server_cert_pem, server_key_pem, client_cert_pem, client_key_pem, require_client_cert })
    }

    /// The server's rustls configuration (ring provider; ALPN http/1.1).
    pub fn server_config(&self) -> io::Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = |pem: &str| CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(other);
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().map_err(other)?;
        let builder = if self.require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(&self.ca_pem)? {
                roots.add(c).map_err(other)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().map_err(other)?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes()).map_err(other)?;
        let mut config = builder.with_single_cert(certs(&self.server_cert_pem)?, key).map_err(other)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Writes `ca.pem`, `client.pem` and `client-key.pem` into `dir` (made
    /// if missing; the key readable by its owner only).
    pub fn write(&self, dir: &Path) -> io::Result<TlsFiles> {
        std::fs::create_dir_all(dir)?;
        let files = TlsFiles { ca: dir.join("ca.pem"), client_cert: dir.join("client.pem"), client_key: dir.join("client-key.pem") };
        std::fs::write(&files.ca, &self.ca_pem)?;
        std::fs::write(&files.client_cert, &self.client_cert_pem)?;
        write_private(&files.client_key, &self.client_key_pem)?;
        Ok(files)
    }
}

fn write_private(path: &Path, text: &str) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())
}
