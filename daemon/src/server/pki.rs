//! Certificates: the local CA made on first start, the TLS configuration
//! built from the data directory, and the role a client certificate names.
//!
//! A client's role is a DNS subject alternative name
//! `<role>.role.sls.invalid` in its certificate (`.invalid` can never be a
//! real host), and a certificate issued to one client (`slsd cert issue`)
//! names it as `<name>.client.sls.invalid`. The role check uses webpki's
//! name matching, the same code that checks server names, and the name and
//! serial number come from webpki's parse, so no certificate parser is
//! added for them.
//!
//! Validity: the CA 10 years, the server and client certificates 1 year
//! (`slsd cert issue --days` for another length); the server certificate
//! is for serverAuth only, client certificates for clientAuth only.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::Rng;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::engine::Role;
use crate::wire::alpn_protocols;

/// The DNS name that carries a role in a client certificate.
pub fn role_name(role: Role) -> String {
    format!("{}.role.sls.invalid", role.as_str())
}

const CLIENT_NAME_SUFFIX: &str = ".client.sls.invalid";

/// How long the local CA is valid.
pub const CA_DAYS: u32 = 3650;
/// How long server and client certificates are valid unless asked.
pub const LEAF_DAYS: u32 = 365;

/// Whether `name` can name a client: 1 to 63 of `a-z 0-9 -`, not starting
/// or ending with `-` (one DNS label).
pub fn valid_client_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Who a verified client certificate is: its role, its name (the issued
/// client's, or the role's for the certificates made at first start) and
/// its serial number (what a revocation list names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub role: Role,
    pub name: String,
    pub serial: Vec<u8>,
}

/// The peer a verified client certificate names; `None` unless it names
/// exactly one role.
pub fn peer_of(leaf: &CertificateDer<'_>) -> Option<Peer> {
    let role = role_of(leaf)?;
    let cert = webpki::EndEntityCert::try_from(leaf).ok()?;
    let name = cert
        .valid_dns_names()
        .find_map(|dns| dns.strip_suffix(CLIENT_NAME_SUFFIX))
        .filter(|name| valid_client_name(name))
        .map_or_else(|| role.as_str().to_owned(), str::to_owned);
    Some(Peer {
        role,
        name,
        serial: trimmed_serial(cert.serial()).to_vec(),
    })
}

/// A serial number without the leading zero bytes DER may put before it.
fn trimmed_serial(serial: &[u8]) -> &[u8] {
    let start = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
    serial.get(start..).unwrap_or_default()
}

/// The serial numbers a revocation list names: one per line in hex
/// (colons allowed, `#` starts a comment). An error names the line.
pub fn parse_revoked(text: &str) -> Result<HashSet<Vec<u8>>, String> {
    let mut revoked = HashSet::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let digits: String = line.chars().filter(|c| *c != ':').collect();
        let serial = hex::decode(&digits)
            .ok()
            .filter(|s| !s.is_empty() && s.len() <= 20)
            .ok_or_else(|| {
                format!(
                    "line {}: not a serial number (hex, at most 20 bytes)",
                    number + 1
                )
            })?;
        revoked.insert(trimmed_serial(&serial).to_vec());
    }
    Ok(revoked)
}

/// Reads a revocation list file (see [`parse_revoked`]).
pub fn load_revoked(path: &Path) -> Result<HashSet<Vec<u8>>, PkiError> {
    let text = std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.into(),
        source,
    })?;
    parse_revoked(&text).map_err(|problem| PkiError::Revoked {
        path: path.into(),
        problem,
    })
}

/// Whether `cert` verifies against the data directory's CA for `usage` at
/// `at` (seconds since the epoch), as webpki checks it.
fn valid_at(paths: &PkiPaths, cert: &Path, usage: webpki::KeyUsage, at: u64) -> bool {
    let (Ok(leaf), Ok(ca)) = (load_certs(cert), load_certs(&paths.ca_cert())) else {
        return false;
    };
    let (Some(leaf), Some(ca)) = (leaf.first(), ca.first()) else {
        return false;
    };
    let (Ok(anchor), Ok(cert)) = (
        webpki::anchor_from_trusted_cert(ca),
        webpki::EndEntityCert::try_from(leaf),
    ) else {
        return false;
    };
    cert.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(at)),
        usage,
        None,
        None,
    )
    .is_ok()
}

/// The data directory's certificates that will still be valid in two
/// years: made by a version before certificates expired (valid until
/// 4096). Each should be replaced (`slsd cert server`, `slsd cert issue`).
pub fn long_lived(paths: &PkiPaths, now: u64) -> Vec<PathBuf> {
    let later = now + 2 * 366 * 86_400;
    let server = (paths.server_cert(), webpki::KeyUsage::server_auth());
    let clients = Role::ALL.map(|role| (paths.client_cert(role), webpki::KeyUsage::client_auth()));
    std::iter::once(server)
        .chain(clients)
        .filter(|(path, usage)| path.exists() && valid_at(paths, path, *usage, later))
        .map(|(path, _)| path)
        .collect()
}

/// The local CA's parameters: what its certificate says and what
/// certificates it signs name as their issuer (so a CA made earlier signs
/// new certificates without its certificate being parsed).
fn ca_params(days: u32) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "sls local CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    valid_for(&mut params, days);
    Ok(params)
}

/// Valid from an hour ago (clocks differ) for `days`, with a random
/// positive serial number.
fn valid_for(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
    let mut serial = [0u8; 16];
    rand::rng().fill_bytes(&mut serial);
    serial[0] = serial[0] & 0x7f | 0x01;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
}

/// A leaf certificate's parameters: `names` as DNS (or IP) names, `purpose`
/// its only extended key usage.
fn leaf_params(
    names: Vec<String>,
    common_name: &str,
    purpose: ExtendedKeyUsagePurpose,
    days: u32,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![purpose];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    valid_for(&mut params, days);
    Ok(params)
}

/// The server certificate's parameters: `localhost`, the loopback
/// addresses and `server_name`.
fn server_params(server_name: &str, days: u32) -> Result<CertificateParams, PkiError> {
    let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    if !names.iter().any(|n| n == server_name) {
        names.push(server_name.to_owned());
    }
    leaf_params(
        names,
        "sls server",
        ExtendedKeyUsagePurpose::ServerAuth,
        days,
    )
}

/// What `slsd cert issue` made.
#[derive(Debug)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The serial number in hex, as a revocation list names it.
    pub serial: String,
    pub days: u32,
}

/// Issues a client certificate for `role` naming the client `name`, valid
/// `days`, signed by the CA key at `ca_key` (which need not be in the data
/// directory); writes `<name>.pem` and `<name>.key` (0600) to `out`.
pub fn issue_client(
    ca_key: &Path,
    role: Role,
    name: &str,
    days: u32,
    out: &Path,
) -> Result<Issued, PkiError> {
    if !valid_client_name(name) {
        return Err(PkiError::Name(name.to_owned()));
    }
    let params = leaf_params(
        vec![role_name(role), format!("{name}{CLIENT_NAME_SUFFIX}")],
        name,
        ExtendedKeyUsagePurpose::ClientAuth,
        days,
    )?;
    let (cert, key) = (
        out.join(format!("{name}.pem")),
        out.join(format!("{name}.key")),
    );
    sign(ca_key, params, &cert, &key, days)
}

/// A new server certificate for `server_name` (and `localhost`, the
/// loopback addresses), valid `days`, signed by the CA key at `ca_key`,
/// written over the data directory's; a running daemon takes it on SIGHUP.
pub fn renew_server(
    ca_key: &Path,
    paths: &PkiPaths,
    server_name: &str,
    days: u32,
) -> Result<Issued, PkiError> {
    let params = server_params(server_name, days)?;
    sign(
        ca_key,
        params,
        &paths.server_cert(),
        &paths.server_key(),
        days,
    )
}

/// Signs `params` with a new key by the CA key at `ca_key`; writes the
/// key (0600) then the certificate.
fn sign(
    ca_key: &Path,
    params: CertificateParams,
    cert_path: &Path,
    key_path: &Path,
    days: u32,
) -> Result<Issued, PkiError> {
    let pem = std::fs::read_to_string(ca_key).map_err(|source| PkiError::Io {
        path: ca_key.into(),
        source,
    })?;
    let ca_key = KeyPair::from_pem(&pem)?;
    let issuer = Issuer::new(ca_params(CA_DAYS)?, &ca_key);
    let serial = params
        .serial_number
        .as_ref()
        .map(|s| hex::encode(trimmed_serial(s.as_ref())))
        .unwrap_or_default();
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write_private(key_path, &key.serialize_pem())?;
    write_public(cert_path, &cert.pem())?;
    Ok(Issued {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
        serial,
        days,
    })
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
    #[error("{path}: {problem}")]
    Revoked { path: PathBuf, problem: String },
    #[error("{0:?}: a client name is 1 to 63 of a-z, 0-9 and '-', not starting or ending with '-'")]
    Name(String),
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

    /// Where the CA key is made on first start. The daemon never reads it
    /// again: move it elsewhere and pass it to `slsd cert issue --ca-key`.
    pub fn ca_key(&self) -> PathBuf {
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

    /// Creates the CA, the server certificate (for `localhost`, the
    /// loopback addresses and `server_name`) and one client certificate
    /// per role, unless the CA already exists. Keys are written mode 0600.
    /// Returns whether anything was created.
    pub fn ensure(&self, server_name: &str) -> Result<bool, PkiError> {
        if self.ca_cert().exists() {
            return Ok(false);
        }
        let ca_params = ca_params(CA_DAYS)?;
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, &ca_key);

        let mut leaves = vec![(
            server_params(server_name, LEAF_DAYS)?,
            self.server_cert(),
            self.server_key(),
        )];
        for role in Role::ALL {
            leaves.push((
                leaf_params(
                    vec![role_name(role)],
                    &format!("sls {}", role.as_str()),
                    ExtendedKeyUsagePurpose::ClientAuth,
                    LEAF_DAYS,
                )?,
                self.client_cert(role),
                self.client_key(role),
            ));
        }
        for (params, cert_path, key_path) in leaves {
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
/// certificates required and checked against the CA, the ALPN ids of
/// [`PROTOCOLS`](crate::wire::PROTOCOLS).
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
    config.alpn_protocols = alpn_protocols();
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
    config.alpn_protocols = alpn_protocols();
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
        assert!(paths.ensure("sls.example").unwrap());
        assert!(
            !paths.ensure("sls.example").unwrap(),
            "second start reuses the files"
        );
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

    fn verifies(paths: &PkiPaths, cert: &Path, usage: webpki::KeyUsage, at: u64) -> bool {
        valid_at(paths, cert, usage, at)
    }

    #[test]
    fn certificates_of_earlier_versions_are_found_long_lived() {
        let dir = tempfile::tempdir().unwrap();
        let paths = PkiPaths::new(dir.path());
        paths.ensure("localhost").unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
        assert_eq!(long_lived(&paths, now), Vec::<PathBuf>::new());
        // What an earlier version made: rcgen's default validity (to 4096).
        let pem = std::fs::read_to_string(paths.ca_key()).unwrap();
        let ca_key = KeyPair::from_pem(&pem).unwrap();
        let issuer = Issuer::new(ca_params(CA_DAYS).unwrap(), &ca_key);
        let params = CertificateParams::new(vec![role_name(Role::Phone)]).unwrap();
        let cert = params
            .signed_by(&KeyPair::generate().unwrap(), &issuer)
            .unwrap();
        write_public(&paths.client_cert(Role::Phone), &cert.pem()).unwrap();
        assert_eq!(
            long_lived(&paths, now),
            vec![paths.client_cert(Role::Phone)]
        );
    }

    #[test]
    fn certificates_expire_and_serve_one_purpose() {
        let dir = tempfile::tempdir().unwrap();
        let paths = PkiPaths::new(dir.path());
        paths.ensure("localhost").unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
        let day = 86_400;
        let client = paths.client_cert(Role::Gateway);
        let server = paths.server_cert();
        let (client_auth, server_auth) = (
            webpki::KeyUsage::client_auth(),
            webpki::KeyUsage::server_auth(),
        );
        assert!(verifies(&paths, &client, client_auth, now));
        assert!(verifies(&paths, &server, server_auth, now));
        // One purpose each: a client certificate cannot serve, nor the
        // server's log in.
        assert!(!verifies(&paths, &client, server_auth, now));
        assert!(!verifies(&paths, &server, client_auth, now));
        // A year, not forever.
        assert!(verifies(&paths, &client, client_auth, now + 360 * day));
        assert!(!verifies(&paths, &client, client_auth, now + 370 * day));
        assert!(!verifies(&paths, &server, server_auth, now + 370 * day));
    }

    #[test]
    fn an_issued_certificate_names_its_client_and_serial() {
        let dir = tempfile::tempdir().unwrap();
        let paths = PkiPaths::new(dir.path());
        paths.ensure("localhost").unwrap();
        // The CA key elsewhere: issuing reads it from there.
        let vault = tempfile::tempdir().unwrap();
        let moved = vault.path().join("ca.key");
        std::fs::rename(paths.ca_key(), &moved).unwrap();
        let issued = issue_client(&moved, Role::Carrier, "bridge-1", 30, dir.path()).unwrap();
        let leaf = load_certs(&issued.cert).unwrap().remove(0);
        let peer = peer_of(&leaf).unwrap();
        assert_eq!(peer.role, Role::Carrier);
        assert_eq!(peer.name, "bridge-1");
        assert_eq!(hex::encode(&peer.serial), issued.serial);
        let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
        let usage = webpki::KeyUsage::client_auth();
        assert!(verifies(&paths, &issued.cert, usage, now));
        assert!(!verifies(&paths, &issued.cert, usage, now + 31 * 86_400));
        // The certificates made at first start are named by their role.
        let gateway = load_certs(&paths.client_cert(Role::Gateway))
            .unwrap()
            .remove(0);
        assert_eq!(peer_of(&gateway).unwrap().name, "gateway");
        assert!(matches!(
            issue_client(&moved, Role::Carrier, "Bridge_1", 30, dir.path()),
            Err(PkiError::Name(_))
        ));
    }

    #[test]
    fn a_revocation_list_is_hex_serials_one_a_line() {
        let list = parse_revoked("# lost\n00:1a:2B # with colons\n\n7f\n").unwrap();
        assert_eq!(list.len(), 2);
        assert!(
            list.contains(&vec![0x1a, 0x2b]),
            "leading zeros do not matter"
        );
        assert!(list.contains(&vec![0x7f]));
        assert_eq!(
            parse_revoked("7f\nnot hex\n"),
            Err("line 2: not a serial number (hex, at most 20 bytes)".to_owned())
        );
    }
}
