//! Certificates: the local CA made on first start, the TLS configuration
//! built from the data directory, and the role a client certificate names.
//!
//! A client's role is a DNS subject alternative name
//! `<role>.role.sls.invalid` in its certificate (`.invalid` can never be a
//! real host). The role check uses webpki's name matching, the same code
//! that checks server names, so no certificate parser is added for it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::engine::Role;
use crate::wire::ALPN;

/// The DNS name that carries a role in a client certificate.
pub fn role_name(role: Role) -> String {
    format!("{}.role.sls.invalid", role.as_str())
}

/// Why the certificates could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a PEM {what}")]
    Pem { path: PathBuf, what: &'static str },
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// Where the certificate files of a data directory are.
#[derive(Debug, Clone)]
pub struct PkiPaths {
    dir: PathBuf,
}

impl PkiPaths {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    /// The client certificate of `role`.
    pub fn client_cert(&self, role: Role) -> PathBuf {
        self.dir.join(format!("{}.pem", role.as_str()))
    }

    /// The client key of `role`.
    pub fn client_key(&self, role: Role) -> PathBuf {
        self.dir.join(format!("{}.key", role.as_str()))
    }

    /// Creates the CA, the server certificate and one client certificate
    /// per role, unless the CA already exists. Keys are written mode 0600.
    /// Returns whether anything was created.
    pub fn ensure(&self) -> Result<bool, PkiError> {
        if self.ca_cert().exists() {
            return Ok(false);
        }
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "sls local CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, &ca_key);

        let mut leaves = vec![(
            vec![
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
                "::1".to_owned(),
            ],
            "sls server".to_owned(),
            self.server_cert(),
            self.server_key(),
        )];
        for role in Role::ALL {
            leaves.push((
                vec![role_name(role)],
                format!("sls {}", role.as_str()),
                self.client_cert(role),
                self.client_key(role),
            ));
        }
        for (names, common_name, cert_path, key_path) in leaves {
            let mut params = CertificateParams::new(names)?;
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &issuer)?;
            write_private(&key_path, &key.serialize_pem())?;
            write_public(&cert_path, &cert.pem())?;
        }
        write_private(&self.ca_key(), &ca_key.serialize_pem())?;
        // The CA certificate last: its presence means the set is complete.
        write_public(&self.ca_cert(), &ca_cert.pem())?;
        Ok(true)
    }
}

fn write_public(path: &Path, text: &str) -> Result<(), PkiError> {
    std::fs::write(path, text).map_err(|source| PkiError::Io {
        path: path.into(),
        source,
    })
}

fn write_private(path: &Path, text: &str) -> Result<(), PkiError> {
    use std::io::Write;
    let io = |source| PkiError::Io {
        path: path.into(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)
}

/// Reads a PEM certificate chain.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|_| PkiError::Pem {
            path: path.into(),
            what: "certificate",
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| PkiError::Pem {
            path: path.into(),
            what: "certificate",
        })?;
    if certs.is_empty() {
        return Err(PkiError::Pem {
            path: path.into(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// Reads a PEM private key.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_file(path).map_err(|_| PkiError::Pem {
        path: path.into(),
        what: "private key",
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &Path) -> Result<rustls::RootCertStore, PkiError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert).map_err(|e| PkiError::Tls(e.to_string()))?;
    }
    Ok(roots)
}

/// The server's TLS 1.3 configuration: its certificate, client
/// certificates required and checked against the CA, ALPN `sls/1`.
pub fn server_tls(paths: &PkiPaths) -> Result<rustls::ServerConfig, PkiError> {
    let tls = |e: rustls::Error| PkiError::Tls(e.to_string());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(&paths.ca_cert())?),
        provider(),
    )
    .build()
    .map_err(|e| PkiError::Tls(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            load_certs(&paths.server_cert())?,
            load_key(&paths.server_key())?,
        )
        .map_err(tls)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// A client's TLS configuration: trust `ca`, present `cert` and `key`.
pub fn client_tls(ca: &Path, cert: &Path, key: &Path) -> Result<rustls::ClientConfig, PkiError> {
    let tls = |e: rustls::Error| PkiError::Tls(e.to_string());
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
        .map_err(tls)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The role a verified client certificate names, if exactly one.
pub fn role_of(leaf: &CertificateDer<'_>) -> Option<Role> {
    let cert = webpki::EndEntityCert::try_from(leaf).ok()?;
    let mut named = Role::ALL.into_iter().filter(|role| {
        ServerName::try_from(role_name(*role))
            .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
    });
    match (named.next(), named.next()) {
        (Some(role), None) => Some(role),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_makes_a_ca_and_a_certificate_per_role() {
        let dir = tempfile::tempdir().unwrap();
        let paths = PkiPaths::new(dir.path());
        assert!(paths.ensure().unwrap());
        assert!(!paths.ensure().unwrap(), "second start reuses the files");
        for role in Role::ALL {
            let cert = load_certs(&paths.client_cert(role)).unwrap();
            assert_eq!(role_of(&cert[0]), Some(role));
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(paths.client_key(role))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600);
            }
        }
        let server = load_certs(&paths.server_cert()).unwrap();
        assert_eq!(
            role_of(&server[0]),
            None,
            "the server certificate names no role"
        );
        assert!(server_tls(&paths).is_ok());
        assert!(
            client_tls(
                &paths.ca_cert(),
                &paths.client_cert(Role::Gateway),
                &paths.client_key(Role::Gateway)
            )
            .is_ok()
        );
    }
}
