//! The rustls client configuration: CA file or system roots, optional client
//! certificate, and the development mode that skips only the host name check.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the TLS files or configuration cannot be used. Each message names the
/// variable and the file, and says what would be accepted.
// The #[error] text of each variant says what every field holds.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file named by a variable cannot be read.
    #[error("{var}={path:?}: cannot read the file: {source}; check the path and its permissions")]
    File {
        var: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A PEM file holds no certificate.
    #[error(
        "{var}={path:?} contains no PEM certificate (expected \"-----BEGIN CERTIFICATE-----\")"
    )]
    NoCertificate { var: &'static str, path: PathBuf },
    /// A PEM file holds no private key.
    #[error(
        "{var}={path:?} contains no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {reason}"
    )]
    NoKey {
        var: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// The client certificate and key were read but rustls refuses them together.
    #[error("MQTT_CERTFILE={cert:?} and MQTT_KEYFILE={key:?} cannot be used together: {reason}")]
    ClientAuth {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    /// No CA file was given and the system has no trusted roots.
    #[error("MQTT_USE_TLS is on, MQTT_CA_CERTS is not set and no system CA certificates were found; set MQTT_CA_CERTS to the CA file that signed the broker's certificate")]
    NoSystemRoots,
    /// rustls refused to build the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The one crypto provider of this workspace (ring; no aws-lc build).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file; an empty result is an error naming `var`.
pub fn load_certs(
    var: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::File {
        var,
        path: path.to_path_buf(),
        source,
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            var,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn load_key(var: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::File {
        var,
        path: path.to_path_buf(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::NoKey {
        var,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Builds the client configuration. Verification is always on; `insecure` only
/// forgives a certificate that does not name the host we dialled.
pub fn client_config(
    ca_file: Option<&Path>,
    client_auth: Option<&(PathBuf, PathBuf)>,
    insecure: bool,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = server_verifier(ca_file, insecure)?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match client_auth {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = load_certs("MQTT_CERTFILE", cert)?;
            let key_der = load_key("MQTT_KEYFILE", key)?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| TlsError::ClientAuth {
                    cert: cert.clone(),
                    key: key.clone(),
                    reason: e.to_string(),
                })?
        }
    };
    Ok(Arc::new(config))
}

/// The verifier of the broker's certificate: webpki against the CA file (or the
/// system roots), wrapped so that `insecure` forgives only a host name mismatch.
pub fn server_verifier(
    ca_file: Option<&Path>,
    insecure: bool,
) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = load_certs("MQTT_CA_CERTS", path)?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TlsError::NoCertificate {
                    var: "MQTT_CA_CERTS",
                    path: path.to_path_buf(),
                });
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(TlsError::NoSystemRoots);
            }
        }
    }
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(if insecure {
        tracing::warn!(
            "MQTT_TLS_INSECURE=true: the broker's certificate chain is still verified against the CA, \
             but its HOST NAME IS NOT CHECKED. Development only: never use this in production."
        );
        Arc::new(SkipHostnameVerifier { inner: webpki })
    } else {
        webpki
    })
}

/// Verifies the chain like webpki does and forgives only a name mismatch.
/// webpki checks the chain, validity dates and revocation before the name, so a
/// name error means everything else passed. Public for the stores whose URLs say
/// so themselves (PostgreSQL's `sslmode=verify-ca`).
#[derive(Debug)]
pub struct SkipHostnameVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl SkipHostnameVerifier {
    /// Wraps `inner`, which checks everything; only its name errors are forgiven.
    pub fn new(inner: Arc<WebPkiServerVerifier>) -> SkipHostnameVerifier {
        SkipHostnameVerifier { inner }
    }
}

impl ServerCertVerifier for SkipHostnameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certgen::DevCertificates;

    fn verify(
        insecure: bool,
        name: &str,
        ca_pem: &str,
        server_pem: &str,
    ) -> Result<(), rustls::Error> {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, ca_pem).unwrap();
        let verifier = server_verifier(Some(&ca), insecure).unwrap();
        let leaf = CertificateDer::from_pem_slice(server_pem.as_bytes()).unwrap();
        let name = ServerName::try_from(name.to_string()).unwrap();
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn insecure_skips_only_the_name() {
        let set = DevCertificates::generate(&[], &[], 30).unwrap();
        let other = DevCertificates::generate(&[], &[], 30).unwrap();
        assert!(verify(false, "localhost", &set.ca.cert_pem, &set.server.cert_pem).is_ok());
        let err = verify(
            false,
            "mqtt.example.com",
            &set.ca.cert_pem,
            &set.server.cert_pem,
        )
        .unwrap_err();
        assert!(matches!(
            err,
            rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })
        ));
        assert!(verify(
            true,
            "mqtt.example.com",
            &set.ca.cert_pem,
            &set.server.cert_pem
        )
        .is_ok());
        // A certificate from another CA is refused even in insecure mode.
        // A certificate from another CA (same name, other key) is refused even in insecure mode.
        assert!(verify(true, "localhost", &other.ca.cert_pem, &set.server.cert_pem).is_err());
    }

    #[test]
    fn pem_without_certificate_names_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("empty.pem");
        std::fs::write(&f, "not a certificate").unwrap();
        let err = client_config(Some(&f), None, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("MQTT_CA_CERTS") && err.contains("no PEM certificate"),
            "{err}"
        );
    }

    #[test]
    fn client_keys_in_every_supported_encoding_load() {
        let set = DevCertificates::generate(&[], &["dev1".into()], 30).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        let cert = dir.path().join("c.crt");
        let key = dir.path().join("c.key");
        std::fs::write(&ca, &set.ca.cert_pem).unwrap();
        std::fs::write(&cert, &set.clients[0].1.cert_pem).unwrap();
        // PKCS#8 from rcgen.
        std::fs::write(&key, &set.clients[0].1.key_pem).unwrap();
        client_config(Some(&ca), Some(&(cert.clone(), key.clone())), false).unwrap();
        // A key file that holds no key is named.
        std::fs::write(&key, "garbage").unwrap();
        let err = client_config(Some(&ca), Some(&(cert, key)), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("MQTT_KEYFILE"), "{err}");
    }
}
