//! Development certificates: a CA, a server certificate for the local names and
//! any extra hosts, and client certificates for mutual TLS. Used by
//! `collector certgen` and by the tests, so both exercise the same certificates.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// Names every server certificate carries, so a local broker is reachable by any of them.
pub const LOCAL_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// Why certificates could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertgenError {
    /// rcgen refused the parameters (for example a host name that is not a valid DNS name).
    #[error("cannot create the certificate for {what}: {source}")]
    Generate {
        /// Which certificate.
        what: String,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// A `--client` name that cannot be a certificate's file name.
    #[error("cannot use {name:?} as a client name: {reason}")]
    ClientName {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: String,
    },
    /// A file exists and `force` was not given.
    #[error("{0} already exists; pass --force to overwrite the whole set (nothing was written)")]
    Exists(PathBuf),
    /// Writing failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The PKCS#8 private key.
    pub key_pem: String,
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// Start.
    pub not_before: OffsetDateTime,
    /// End.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clock skew) for `days` days.
    pub fn days(days: u32) -> Self {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(days.into()),
        }
    }

    /// Expired yesterday (for tests of expiry handling).
    pub fn expired() -> Self {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::days(30),
            not_after: now - Duration::days(1),
        }
    }

    /// Valid only from tomorrow.
    pub fn not_yet_valid() -> Self {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now + Duration::days(1),
            not_after: now + Duration::days(30),
        }
    }
}

/// A certificate authority that can issue server and client certificates.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    issued: Issued,
}

fn gen_err(what: &str) -> impl FnOnce(rcgen::Error) -> CertgenError + '_ {
    move |source| CertgenError::Generate {
        what: what.to_string(),
        source,
    }
}

/// The organisational unit of each kind of certificate: it keeps the subjects of
/// the CA, the server and the clients distinct even when a client is named like
/// the server (`--client localhost`), so no certificate can pass for another kind.
const UNIT_CA: &str = "certificate authority";
const UNIT_SERVER: &str = "broker";
const UNIT_CLIENT: &str = "client";

fn base_params(
    sans: Vec<String>,
    unit: &str,
    common_name: &str,
    validity: Validity,
    what: &str,
) -> Result<CertificateParams, CertgenError> {
    let mut params = CertificateParams::new(sans).map_err(gen_err(what))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "mqtt-telemetry");
    dn.push(DnType::OrganizationalUnitName, unit);
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let serial: [u8; 16] = rand::random();
    let mut serial = serial.to_vec();
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok(params)
}

impl CertificateAuthority {
    /// A new self-signed CA.
    pub fn new(common_name: &str, validity: Validity) -> Result<Self, CertgenError> {
        let mut params = base_params(vec![], UNIT_CA, common_name, validity, "the CA")?;
        // The CA signs leaf certificates only; no intermediate CA can hang below it.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().map_err(gen_err("the CA"))?;
        let cert = params.self_signed(&key).map_err(gen_err("the CA"))?;
        let issued = Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok(CertificateAuthority {
            issuer: Issuer::new(params, key),
            issued,
        })
    }

    /// The CA's own certificate and key.
    pub fn issued(&self) -> &Issued {
        &self.issued
    }

    /// A server certificate naming [`LOCAL_NAMES`] and `hosts`.
    pub fn issue_server(
        &self,
        hosts: &[String],
        validity: Validity,
    ) -> Result<Issued, CertgenError> {
        let mut sans: Vec<String> = LOCAL_NAMES.iter().map(|s| s.to_string()).collect();
        for h in hosts {
            if !sans.contains(h) {
                sans.push(h.clone());
            }
        }
        self.issue_server_exact(&sans, validity)
    }

    /// A server certificate naming exactly `names` (tests use it for a certificate of another host).
    pub fn issue_server_exact(
        &self,
        names: &[String],
        validity: Validity,
    ) -> Result<Issued, CertgenError> {
        let cn = names.first().map(String::as_str).unwrap_or("mqtt-broker");
        let mut params = base_params(names.to_vec(), UNIT_SERVER, cn, validity, "the server")?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        self.sign(params, "the server")
    }

    /// A client certificate whose common name is `name` (Mosquitto's `use_identity_as_username` reads it).
    pub fn issue_client(&self, name: &str, validity: Validity) -> Result<Issued, CertgenError> {
        let what = format!("client {name:?}");
        let key = KeyPair::generate().map_err(gen_err(&what))?;
        self.issue_client_for(name, key, validity)
    }

    /// A client certificate for a key made elsewhere (PKCS#8 PEM, e.g. an RSA key
    /// from openssl), so other key types and encodings can be tried against a broker.
    pub fn issue_client_with_key(
        &self,
        name: &str,
        key_pem: &str,
        validity: Validity,
    ) -> Result<Issued, CertgenError> {
        let what = format!("client {name:?}");
        let key = KeyPair::from_pem(key_pem).map_err(gen_err(&what))?;
        self.issue_client_for(name, key, validity)
    }

    fn issue_client_for(
        &self,
        name: &str,
        key: KeyPair,
        validity: Validity,
    ) -> Result<Issued, CertgenError> {
        let what = format!("client {name:?}");
        let mut params = base_params(vec![], UNIT_CLIENT, name, validity, &what)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign_with(params, key, &what)
    }

    fn sign(&self, params: CertificateParams, what: &str) -> Result<Issued, CertgenError> {
        let key = KeyPair::generate().map_err(gen_err(what))?;
        self.sign_with(params, key, what)
    }

    fn sign_with(
        &self,
        params: CertificateParams,
        key: KeyPair,
        what: &str,
    ) -> Result<Issued, CertgenError> {
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(gen_err(what))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A complete development set: CA, server and clients.
pub struct DevCertificates {
    /// The CA.
    pub ca: Issued,
    /// The server certificate.
    pub server: Issued,
    /// One certificate per client name.
    pub clients: Vec<(String, Issued)>,
}

impl DevCertificates {
    /// Generates a CA, a server certificate for [`LOCAL_NAMES`] plus `hosts`, and the clients.
    /// A client name must be a valid device id (the contract's rule, so it is also
    /// a safe file name) and must not collide with the CA's or the server's files.
    pub fn generate(hosts: &[String], clients: &[String], days: u32) -> Result<Self, CertgenError> {
        for (i, name) in clients.iter().enumerate() {
            check_client_name(name)?;
            if clients[..i].contains(name) {
                return Err(CertgenError::ClientName {
                    name: name.clone(),
                    reason: "it is given twice".into(),
                });
            }
        }
        let validity = Validity::days(days);
        let ca = CertificateAuthority::new("mqtt-telemetry development CA", validity)?;
        let server = ca.issue_server(hosts, validity)?;
        let clients = clients
            .iter()
            .map(|name| Ok((name.clone(), ca.issue_client(name, validity)?)))
            .collect::<Result<Vec<_>, CertgenError>>()?;
        Ok(DevCertificates {
            ca: ca.issued().clone(),
            server,
            clients,
        })
    }

    /// The files of this set: (file name, contents, is a private key).
    pub fn files(&self) -> Vec<(String, &str, bool)> {
        let mut files = vec![
            ("ca.crt".to_string(), self.ca.cert_pem.as_str(), false),
            ("ca.key".to_string(), self.ca.key_pem.as_str(), true),
            (
                "server.crt".to_string(),
                self.server.cert_pem.as_str(),
                false,
            ),
            ("server.key".to_string(), self.server.key_pem.as_str(), true),
        ];
        for (name, issued) in &self.clients {
            files.push((format!("{name}.crt"), issued.cert_pem.as_str(), false));
            files.push((format!("{name}.key"), issued.key_pem.as_str(), true));
        }
        files
    }

    /// Writes the set into `dir` (created if missing): keys 0600, certificates 0644.
    /// Without `force`, an existing file stops the write before anything is written.
    pub fn write(&self, dir: &Path, force: bool) -> Result<Vec<PathBuf>, CertgenError> {
        let files = self.files();
        if !force {
            if let Some((name, _, _)) = files.iter().find(|(n, _, _)| dir.join(n).exists()) {
                return Err(CertgenError::Exists(dir.join(name)));
            }
        }
        std::fs::create_dir_all(dir).map_err(|source| CertgenError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut written = Vec::new();
        for (name, contents, secret) in files {
            let path = dir.join(&name);
            write_file(
                &path,
                contents.as_bytes(),
                if secret { 0o600 } else { 0o644 },
            )
            .map_err(|source| CertgenError::Write {
                path: path.clone(),
                source,
            })?;
            written.push(path);
        }
        Ok(written)
    }
}

fn check_client_name(name: &str) -> Result<(), CertgenError> {
    let refuse = |reason: String| CertgenError::ClientName {
        name: name.to_string(),
        reason,
    };
    crate::message::validate_device_id(name).map_err(|e| refuse(e.to_string()))?;
    if matches!(name, "ca" | "server") || name.starts_with('.') {
        return Err(refuse(format!(
            "its files would be {name}.crt and {name}.key, which clash with the CA's or the server's files or are hidden"
        )));
    }
    Ok(())
}

/// Writes a file with the given Unix mode, replacing it atomically so a reader
/// never sees a half-written key and a key is never world-readable, not even briefly.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // The umask may have narrowed a certificate's 0644; set the mode explicitly.
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_keys_private_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let set = DevCertificates::generate(&["broker.example".into()], &["vehicle_01".into()], 10)
            .unwrap();
        let written = set.write(dir.path(), false).unwrap();
        assert_eq!(written.len(), 6);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for p in &written {
                let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
                let want = if p.extension().unwrap() == "key" {
                    0o600
                } else {
                    0o644
                };
                assert_eq!(mode, want, "{}", p.display());
            }
        }
        let before = std::fs::read(dir.path().join("ca.crt")).unwrap();
        let again = DevCertificates::generate(&[], &[], 10).unwrap();
        let err = again.write(dir.path(), false).unwrap_err();
        assert!(matches!(err, CertgenError::Exists(_)), "{err}");
        assert_eq!(std::fs::read(dir.path().join("ca.crt")).unwrap(), before);
        again.write(dir.path(), true).unwrap();
        assert_ne!(std::fs::read(dir.path().join("ca.crt")).unwrap(), before);
    }

    #[test]
    fn client_names_that_clash_or_escape_are_refused() {
        for bad in ["ca", "server", "../evil", "a/b", "", ".hidden"] {
            let err = DevCertificates::generate(&[], &[bad.to_string()], 1)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} was accepted"));
            assert!(matches!(err, CertgenError::ClientName { .. }), "{err}");
        }
        let twice = vec!["v1".to_string(), "v1".to_string()];
        assert!(DevCertificates::generate(&[], &twice, 1).is_err());
        assert!(DevCertificates::generate(&[], &["vehicle_01".into()], 1).is_ok());
    }
}
