//! The rustls connector for each `sslmode`, on the workspace's one crypto provider
//! (ring, `mqtt_core::tls::provider`): `prefer`/`require` encrypt without checking
//! the certificate (as libpq does), `verify-ca` checks the chain only, `verify-full`
//! the chain and the host name.

use super::config::{ConfigError, PostgresUrl, RootCert, SslMode};
use mqtt_core::tls::{load_certs, provider, server_verifier, SkipHostnameVerifier};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;
use tokio_postgres_rustls::MakeRustlsConnect;

/// Builds the connector `url` asks for; `None` for `sslmode=disable`.
pub(crate) fn connector(url: &PostgresUrl) -> Result<Option<MakeRustlsConnect>, ConfigError> {
    let err = |reason: String| ConfigError {
        url: url.redacted().to_string(),
        reason,
    };
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match (url.ssl_mode(), url.root_cert()) {
        (SslMode::Disable, _) => return Ok(None),
        (SslMode::Prefer | SslMode::Require, None) => Arc::new(NoCertificateCheck {
            provider: provider.clone(),
        }),
        // libpq verifies the chain under `require` when a root certificate is given.
        (SslMode::Prefer | SslMode::Require | SslMode::VerifyCa, Some(RootCert::File(path))) => {
            Arc::new(SkipHostnameVerifier::new(webpki(path, &provider).map_err(err)?))
        }
        (SslMode::VerifyFull, Some(RootCert::File(path))) => {
            webpki(path, &provider).map_err(err)?
        }
        (SslMode::VerifyFull, Some(RootCert::System)) => server_verifier(None, false).map_err(|_| {
            err("sslrootcert=system: this system has no trusted CA certificates; give sslrootcert=PATH of the CA that signed the server's certificate".into())
        })?,
        (mode, root) => {
            // PostgresUrl::parse refuses these; kept as an error rather than a panic.
            return Err(err(format!(
                "sslmode={} cannot be used with sslrootcert={root:?}",
                mode.as_str()
            )));
        }
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(format!("TLS configuration: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Some(MakeRustlsConnect::new(config)))
}

fn webpki(
    path: &std::path::Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, String> {
    let certs = load_certs("sslrootcert", path).map_err(|e| e.to_string())?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!(
            "sslrootcert={path:?} holds no usable CA certificate; give the PEM file of the CA that signed the server's certificate"
        ));
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("sslrootcert={path:?}: {e}"))
}

/// `sslmode=prefer/require` without `sslrootcert`: any certificate is accepted, as
/// libpq does; the handshake signatures are still checked, so the session is
/// encrypted to whoever holds the certificate's key.
#[derive(Debug)]
struct NoCertificateCheck {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NoCertificateCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disable_needs_no_connector_and_a_missing_ca_file_is_named() {
        let url = PostgresUrl::parse("postgresql://u:pw@h/d?sslmode=disable").unwrap();
        assert!(connector(&url).unwrap().is_none());
        let url = PostgresUrl::parse("postgresql://u:pw@h/d?sslmode=require").unwrap();
        assert!(connector(&url).unwrap().is_some());
        let url = PostgresUrl::parse(
            "postgresql://u:pw@h/d?sslmode=verify-full&sslrootcert=/nonexistent/ca.crt",
        )
        .unwrap();
        let e = connector(&url).err().unwrap().to_string();
        assert!(
            e.contains("sslrootcert") && e.contains("/nonexistent/ca.crt"),
            "{e}"
        );
        assert!(!e.contains("pw@"), "{e}");
    }
}
