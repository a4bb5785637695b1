//! Test certificates on disk, made by mqtt-core's own generator: a CA, a server
//! certificate for the local names (or chosen names, or an expired or not yet valid
//! one), and client certificates on demand.

use crate::dir::Dir;
use crate::error::{write_err, Result};
use mqtt_core::certgen::{CertgenError, CertificateAuthority, Issued, Validity};
use std::path::{Path, PathBuf};

/// A CA with a server certificate, and client certificates on demand.
pub struct Pki {
    /// Holds every file.
    pub dir: Dir,
    /// The CA certificate.
    pub ca_crt: PathBuf,
    /// The server certificate.
    pub server_crt: PathBuf,
    /// The server key.
    pub server_key: PathBuf,
    ca: CertificateAuthority,
}

fn write(dir: &Path, name: &str, issued: &Issued) -> Result<(PathBuf, PathBuf)> {
    let crt = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&crt, &issued.cert_pem).map_err(write_err(&crt))?;
    mqtt_core::certgen::write_file(&key, issued.key_pem.as_bytes(), 0o600)
        .map_err(write_err(&key))?;
    Ok((crt, key))
}

fn local_server(ca: &CertificateAuthority) -> Result<Issued, CertgenError> {
    ca.issue_server(&[], Validity::days(30))
}

impl Pki {
    /// A CA and a server certificate for localhost, 127.0.0.1 and ::1, in a temporary directory.
    pub fn new() -> Pki {
        Self::build(local_server)
    }

    /// The same certificates written into `dir` (created, and kept): `ca.crt`,
    /// `server.crt`, `server.key`.
    pub fn try_in(dir: &Path) -> Result<Pki> {
        Self::try_build(Dir::given(dir).map_err(write_err(dir))?, local_server)
    }

    /// A server certificate naming only `names`.
    pub fn with_server_names(names: &[&str]) -> Pki {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        Self::build(|ca| ca.issue_server_exact(&names, Validity::days(30)))
    }

    /// A server certificate for the local names that expired yesterday.
    pub fn expired_server() -> Pki {
        Self::build(|ca| ca.issue_server(&[], Validity::expired()))
    }

    /// A server certificate for the local names valid only from tomorrow.
    pub fn not_yet_valid_server() -> Pki {
        Self::build(|ca| ca.issue_server(&[], Validity::not_yet_valid()))
    }

    fn build(server: impl FnOnce(&CertificateAuthority) -> Result<Issued, CertgenError>) -> Pki {
        Dir::temp()
            .map_err(write_err(std::env::temp_dir()))
            .and_then(|dir| Self::try_build(dir, server))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_build(
        dir: Dir,
        server: impl FnOnce(&CertificateAuthority) -> Result<Issued, CertgenError>,
    ) -> Result<Pki> {
        let ca = CertificateAuthority::new("testkit CA", Validity::days(30))?;
        let ca_crt = dir.path().join("ca.crt");
        std::fs::write(&ca_crt, &ca.issued().cert_pem).map_err(write_err(&ca_crt))?;
        let (server_crt, server_key) = write(dir.path(), "server", &server(&ca)?)?;
        Ok(Pki {
            dir,
            ca_crt,
            server_crt,
            server_key,
            ca,
        })
    }

    /// A client certificate with common name `name`, signed by this CA: (cert, key).
    pub fn client(&self, name: &str) -> (PathBuf, PathBuf) {
        let issued = self.ca.issue_client(name, Validity::days(30)).unwrap();
        write(self.dir.path(), name, &issued).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A client certificate for a key made elsewhere (PKCS#8 PEM); returns the certificate path.
    pub fn client_for_key(&self, name: &str, key_pem: &str) -> PathBuf {
        let issued = self
            .ca
            .issue_client_with_key(name, key_pem, Validity::days(30))
            .unwrap();
        let crt = self.dir.path().join(format!("{name}.crt"));
        std::fs::write(&crt, &issued.cert_pem).unwrap();
        crt
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}
