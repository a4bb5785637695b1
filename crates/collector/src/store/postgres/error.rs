//! What a PostgreSQL failure means for the collector: [`StoreError::Unavailable`]
//! when waiting and retrying the same batch can help (the server is down,
//! restarting, overloaded, unreachable, slow), [`StoreError::Refused`] when a
//! person must change something first (credentials, database, role, privileges,
//! certificates, someone else's tables), each with what to change.

use super::config::PostgresUrl;
use crate::store::StoreError;
use std::time::Duration;
use tokio_postgres::error::SqlState;

/// The store's name in every message.
pub const STORE: &str = "PostgreSQL";

const WHERE: &str = "--postgres / COLLECTOR_POSTGRES";

/// Why a step against the server failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The server or the connection said so.
    Pg(tokio_postgres::Error),
    /// `BEGIN` failed: on a connection kept from an earlier batch, the server may
    /// have closed it meanwhile, and a new connection may well work at once.
    Begin(tokio_postgres::Error),
    /// No answer in time.
    Timeout(Duration),
    /// The tables exist but are not the collector's: what to do.
    Schema(String),
    /// The store's own runtime could not be built.
    Runtime(std::io::Error),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Failure::Pg(e)
    }
}

impl Failure {
    /// As the collector reports it.
    pub fn into_store_error(self, url: &PostgresUrl) -> StoreError {
        let at = url.redacted();
        match self {
            Failure::Pg(e) | Failure::Begin(e) => classify(&e, url),
            Failure::Timeout(d) => unavailable(format!(
                "no answer from {at} within {}s; the server or the network is stalled",
                d.as_secs()
            )),
            Failure::Schema(reason) => refused(format!("{reason} ({at})")),
            Failure::Runtime(e) => unavailable(format!("cannot start the store's runtime: {e}")),
        }
    }
}

fn unavailable(reason: String) -> StoreError {
    StoreError::Unavailable {
        store: STORE,
        reason,
    }
}

fn refused(reason: String) -> StoreError {
    StoreError::Refused {
        store: STORE,
        reason,
    }
}

/// Sorts a client error into retry or refuse, with the server's words and a fix.
pub(crate) fn classify(e: &tokio_postgres::Error, url: &PostgresUrl) -> StoreError {
    let at = url.redacted();
    if let Some(db) = e.as_db_error() {
        let msg = db.message();
        let code = db.code();
        let fix = if *code == SqlState::INVALID_PASSWORD {
            Some(format!("check the password in {WHERE}"))
        } else if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION {
            Some(if msg.contains("does not exist") {
                format!("create the role on the server, or fix the user name in {WHERE}")
            } else if msg.contains("pg_hba.conf") {
                format!(
                    "allow this host, user and database in the server's pg_hba.conf, or change sslmode in {WHERE}"
                )
            } else {
                format!("check the user and password in {WHERE}")
            })
        } else if *code == SqlState::INVALID_CATALOG_NAME {
            Some(format!(
                "create it (CREATE DATABASE \"{}\"), or fix the database name in {WHERE}",
                url.dbname()
            ))
        } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
            Some(format!(
                "grant user \"{}\" SELECT, INSERT and UPDATE on telemetry, rejected and counters (and CREATE on the schema for the first run)",
                url.user()
            ))
        } else if *code == SqlState::TOO_MANY_CONNECTIONS {
            // Retrying would keep one lane, and so every acknowledgement, waiting forever.
            Some(
                "each collector opens one connection per --pipeline lane (default 4); lower --pipeline, or raise max_connections on the server (or the role's CONNECTION LIMIT)"
                    .to_string(),
            )
        } else if *code == SqlState::INVALID_SQL_STATEMENT_NAME {
            Some(format!(
                "the collector prepares its statements once per connection, which a pooler in transaction mode (PgBouncer pool_mode = transaction) does not keep; connect to PostgreSQL directly or through session pooling ({WHERE})"
            ))
        } else if *code == SqlState::SYNTAX_ERROR || *code == SqlState::UNDEFINED_FUNCTION {
            Some("the collector needs PostgreSQL 12 or later".to_string())
        } else if *code == SqlState::UNDEFINED_TABLE
            || *code == SqlState::UNDEFINED_COLUMN
            || *code == SqlState::DATATYPE_MISMATCH
        {
            Some(
                "the tables are not the ones the collector makes (contract section 6); point the URL at another database or schema"
                    .to_string(),
            )
        } else {
            None
        };
        let said = format!("{msg} ({at})");
        return match fix {
            Some(fix) => refused(format!("{said}: {fix}")),
            // Connection loss, shutdown, start-up, overload, lock or serialisation
            // conflicts, disk full, and any other server error: worth a retry.
            None => unavailable(format!("{said} [SQLSTATE {}]", code.code())),
        };
    }
    if let Some(tls) = rustls_error(e) {
        return refused(certificate_reason(tls, url));
    }
    let top = e.to_string();
    let cause = std::error::Error::source(e)
        .map(|c| format!(": {c}"))
        .unwrap_or_default();
    let said = format!("{top}{cause}");
    match top.as_str() {
        "error performing TLS handshake" if cause.contains("server does not support TLS") => {
            refused(format!(
                "{at} does not accept TLS: turn ssl on in the server's postgresql.conf, or set sslmode=disable in {WHERE}"
            ))
        }
        "invalid configuration" if cause.contains("password missing") => refused(format!(
            "the server at {at} asks for a password and the URL has none: write postgresql://{}:PASSWORD@... in {WHERE}",
            url.user()
        )),
        "authentication error" | "invalid configuration" | "invalid connection string" => {
            refused(format!("{said} ({at}): check {WHERE}"))
        }
        t if t.starts_with("error serializing")
            || t.starts_with("error deserializing")
            || t.starts_with("invalid column")
            || t.starts_with("query returned") =>
        {
            refused(format!(
                "{said} ({at}): the tables are not the ones the collector makes; point the URL at another database or schema"
            ))
        }
        // Refused, reset, closed, timed out, unreachable, a name not resolved
        // (DNS may come back), a garbled answer: retried with backoff.
        _ => unavailable(format!("{said} ({at})")),
    }
}

/// The rustls error under a TLS failure, if any (tokio-rustls wraps it in io::Error).
fn rustls_error(e: &tokio_postgres::Error) -> Option<&rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = next {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(r) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(r);
        }
        next = err.source();
    }
    None
}

fn certificate_reason(e: &rustls::Error, url: &PostgresUrl) -> String {
    use rustls::CertificateError as C;
    let at = url.redacted();
    let mode = url.ssl_mode().as_str();
    let ca = match url.root_cert() {
        Some(super::config::RootCert::File(p)) => format!("sslrootcert={}", p.display()),
        _ => "the system's trusted roots".to_string(),
    };
    let fix = match e {
        rustls::Error::InvalidCertificate(C::NotValidForName)
        | rustls::Error::InvalidCertificate(C::NotValidForNameContext { .. }) => format!(
            "the server's certificate does not name the host in the URL (sslmode={mode}): connect with a name the certificate holds, or use sslmode=verify-ca to check the chain only"
        ),
        rustls::Error::InvalidCertificate(C::UnknownIssuer)
        | rustls::Error::InvalidCertificate(C::BadSignature) => format!(
            "the server's certificate is not signed by the CA in {ca}: give the CA that signed it"
        ),
        rustls::Error::InvalidCertificate(C::Expired)
        | rustls::Error::InvalidCertificate(C::ExpiredContext { .. }) => {
            "the server's certificate has expired: renew it".to_string()
        }
        rustls::Error::InvalidCertificate(C::NotValidYet)
        | rustls::Error::InvalidCertificate(C::NotValidYetContext { .. }) => {
            "the server's certificate is not valid yet: check the clocks".to_string()
        }
        _ => format!("check the server's TLS setup and sslmode/sslrootcert in {WHERE}"),
    };
    format!("TLS with {at} failed: {e}; {fix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_and_config_errors_keep_the_password_out() {
        let url = PostgresUrl::parse("postgresql://u:hunter2@h/d").unwrap();
        let e = Failure::Timeout(Duration::from_secs(60)).into_store_error(&url);
        assert!(e.is_transient(), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = Failure::Schema("there is no table telemetry".into()).into_store_error(&url);
        assert!(e.is_refusal(), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn certificate_errors_say_what_to_fix() {
        let url = PostgresUrl::parse(
            "postgresql://u:hunter2@h/d?sslmode=verify-full&sslrootcert=/ca.crt",
        )
        .unwrap();
        let name = certificate_reason(
            &rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName),
            &url,
        );
        assert!(name.contains("verify-ca"), "{name}");
        let issuer = certificate_reason(
            &rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
            &url,
        );
        assert!(issuer.contains("sslrootcert=/ca.crt"), "{issuer}");
        assert!(!issuer.contains("hunter2"));
    }
}
