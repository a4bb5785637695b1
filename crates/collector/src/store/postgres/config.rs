//! The `--postgres` URL (contract section 6): libpq style
//! `postgresql://user:password@host:port/dbname?sslmode=verify-full&sslrootcert=ca.crt`,
//! parsed once into plain values; the TLS configuration and the connection are
//! built from them later. Also the redacted form every message shows.

use std::path::PathBuf;
use std::time::Duration;

/// How much TLS, as libpq's `sslmode` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, unverified (libpq's default).
    Prefer,
    /// TLS, unverified unless `sslrootcert` is given (then as [`SslMode::VerifyCa`]).
    Require,
    /// TLS, the chain verified against `sslrootcert`, the host name not checked.
    VerifyCa,
    /// TLS, the chain and the host name verified.
    VerifyFull,
}

impl SslMode {
    /// The URL spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where the CA certificates for `verify-ca`/`verify-full` come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file (`sslrootcert=PATH`).
    File(PathBuf),
    /// The system's trusted roots (`sslrootcert=system`, as in libpq 16).
    System,
}

/// A URL that cannot be used; the message says what to write instead (never the password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--postgres / COLLECTOR_POSTGRES {url}: {reason}")]
pub struct ConfigError {
    /// The URL with its password replaced by `***`.
    pub url: String,
    /// What is wrong and what to write.
    pub reason: String,
}

/// A parsed `--postgres` URL.
#[derive(Clone)]
pub struct PostgresUrl {
    pub(crate) pg: tokio_postgres::Config,
    ssl_mode: SslMode,
    root_cert: Option<RootCert>,
    redacted: String,
}

/// Prints the redacted URL only: the password must never reach a log line.
impl std::fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PostgresUrl").field(&self.redacted).finish()
    }
}

impl std::fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// A connection attempt that hangs (a dropped SYN, a stopped server) ends after this
/// unless the URL sets `connect_timeout`.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Written data not acknowledged by the peer for this long ends the connection
/// (a dead network) unless the URL sets `tcp_user_timeout`.
const DEFAULT_TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

impl PostgresUrl {
    /// Parses `url`; fails on anything libpq would refuse or that this client cannot honour.
    pub fn parse(url: &str) -> Result<PostgresUrl, ConfigError> {
        let redacted = redact(url);
        let err = |reason: String| ConfigError {
            url: redacted.clone(),
            reason,
        };
        let trimmed = url.trim();
        if !(trimmed.starts_with("postgresql://") || trimmed.starts_with("postgres://")) {
            return Err(err(
                "expected a URL like postgresql://user:password@host:5432/dbname?sslmode=verify-full&sslrootcert=ca.crt"
                    .into(),
            ));
        }
        // tokio-postgres knows only disable/prefer/require and no sslrootcert, so
        // those two are taken out here and the rest is handed over.
        let (base, query) = match trimmed.split_once('?') {
            Some((b, q)) => (b, q),
            None => (trimmed, ""),
        };
        if !base.contains('@') && query.contains('@') {
            // Else the password's tail would be read as a parameter and could
            // show up in a message.
            return Err(err(
                "the password holds a '?': percent-encode it (? is %3F, @ is %40, / is %2F, # is %23)"
                    .into(),
            ));
        }
        let mut ssl_mode = None;
        let mut root_cert = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value).map_err(|e| err(format!("{key}: {e}")))?;
            match key {
                "sslmode" => {
                    ssl_mode = Some(match value.as_str() {
                        "disable" => SslMode::Disable,
                        "prefer" => SslMode::Prefer,
                        "require" => SslMode::Require,
                        "verify-ca" => SslMode::VerifyCa,
                        "verify-full" => SslMode::VerifyFull,
                        other => {
                            return Err(err(format!(
                                "sslmode={other:?} is not supported; use disable, prefer, require, verify-ca or verify-full"
                            )))
                        }
                    })
                }
                "sslrootcert" if value.is_empty() => {
                    return Err(err(
                        "sslrootcert is empty; give the path of the CA certificate (PEM) or \"system\"".into(),
                    ))
                }
                "sslrootcert" if value == "system" => root_cert = Some(RootCert::System),
                "sslrootcert" => root_cert = Some(RootCert::File(PathBuf::from(value))),
                "sslcert" | "sslkey" | "sslpassword" | "sslcrl" | "sslcrldir" | "sslsni"
                | "requiressl" | "gssencmode" | "krbsrvname" | "service" | "passfile" => {
                    return Err(err(format!(
                        "the parameter {key} is not supported by the collector; remove it"
                    )))
                }
                _ => kept.push(pair),
            }
        }
        let ssl_mode = ssl_mode.unwrap_or(SslMode::Prefer);
        if root_cert == Some(RootCert::System) && ssl_mode != SslMode::VerifyFull {
            return Err(err(
                "sslrootcert=system needs sslmode=verify-full (as in libpq): the system's roots vouch for names, not for a private CA".into(),
            ));
        }
        if matches!(ssl_mode, SslMode::VerifyCa | SslMode::VerifyFull) && root_cert.is_none() {
            return Err(err(format!(
                "sslmode={} needs sslrootcert=PATH, the CA certificate (PEM) that signed the server's certificate (or sslrootcert=system with verify-full)",
                ssl_mode.as_str()
            )));
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut pg: tokio_postgres::Config = rest.parse().map_err(|e: tokio_postgres::Error| {
            let cause = std::error::Error::source(&e)
                .map(|c| format!(": {c}"))
                .unwrap_or_default();
            err(format!("{e}{cause}"))
        })?;
        if pg.get_hosts().is_empty() && pg.get_hostaddrs().is_empty() {
            return Err(err(
                "the URL names no host; write postgresql://user:password@HOST:5432/dbname".into(),
            ));
        }
        if pg.get_user().is_none_or(str::is_empty) {
            return Err(err(
                "the URL names no user; write postgresql://USER:password@host:5432/dbname".into(),
            ));
        }
        pg.ssl_mode(match ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        if pg.get_tcp_user_timeout().is_none() {
            pg.tcp_user_timeout(DEFAULT_TCP_USER_TIMEOUT);
        }
        if pg.get_application_name().is_none() {
            pg.application_name("mqtt-collector");
        }
        Ok(PostgresUrl {
            pg,
            ssl_mode,
            root_cert,
            redacted,
        })
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The `sslmode`.
    pub fn ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }

    /// The `sslrootcert`, if given.
    pub fn root_cert(&self) -> Option<&RootCert> {
        self.root_cert.as_ref()
    }

    /// The user name.
    pub fn user(&self) -> &str {
        self.pg.get_user().unwrap_or_default()
    }

    /// The database (the user name when the URL names none, as in libpq).
    pub fn dbname(&self) -> &str {
        self.pg.get_dbname().unwrap_or_else(|| self.user())
    }

    /// Sets `application_name` (shown in `pg_stat_activity`) unless the URL set one.
    pub(crate) fn default_application_name(&mut self, name: &str) {
        if self.pg.get_application_name() == Some("mqtt-collector") {
            self.pg.application_name(format!("mqtt-collector {name}"));
        }
    }
}

/// `url` with the password (in the user part or a `password=` parameter) replaced
/// by `***`. Works on any text, parsable or not, so error messages can use it.
pub fn redact(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    // The last '@' ends the user part even when a password holds an unencoded
    // '@', '/' or '?'; an '@' in the query hides the host too, which is the safe
    // side of the ambiguity.
    let at = rest.rfind('@');
    let (head, tail) = match (scheme, at) {
        (Some(_), Some(at)) => {
            let userinfo = &rest[..at];
            let shown = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => userinfo.to_string(),
            };
            (format!("{shown}@"), &rest[at + 1..])
        }
        _ => (String::new(), rest),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some(("password", _)) => "password=***".to_string(),
                    _ => p.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    match scheme {
        Some(s) => format!("{s}://{head}{tail}"),
        None => format!("{head}{tail}"),
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libpq_urls() {
        let u = PostgresUrl::parse(
            "postgresql://collector:s3cret@db.example:6543/telemetry?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.crt&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(u.ssl_mode(), SslMode::VerifyFull);
        assert_eq!(
            u.root_cert(),
            Some(&RootCert::File(PathBuf::from("/etc/ca.crt")))
        );
        assert_eq!((u.user(), u.dbname()), ("collector", "telemetry"));
        assert_eq!(u.pg.get_ports(), &[6543]);
        assert_eq!(u.pg.get_password(), Some(&b"s3cret"[..]));
        assert_eq!(u.pg.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(
            u.redacted(),
            "postgresql://collector:***@db.example:6543/telemetry?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.crt&connect_timeout=3"
        );
        assert!(!format!("{u:?} {u}").contains("s3cret"));

        let u = PostgresUrl::parse("postgres://me@localhost").unwrap();
        assert_eq!(u.ssl_mode(), SslMode::Prefer);
        assert_eq!(u.dbname(), "me");
        assert_eq!(u.pg.get_connect_timeout(), Some(&DEFAULT_CONNECT_TIMEOUT));
        let u = PostgresUrl::parse("postgresql://me@h/db?sslmode=require").unwrap();
        assert_eq!(u.ssl_mode(), SslMode::Require);
        assert_eq!(u.root_cert(), None);
    }

    #[test]
    fn refuses_what_cannot_work_without_showing_the_password() {
        for (url, says) in [
            ("mysql://u:pw1@h/db", "expected a URL like"),
            (
                "postgresql://u:pw1@h/db?sslmode=verify",
                "sslmode=\"verify\"",
            ),
            (
                "postgresql://u:pw1@h/db?sslmode=verify-full",
                "needs sslrootcert",
            ),
            (
                "postgresql://u:pw1@h/db?sslmode=verify-ca&sslrootcert=system",
                "needs sslmode=verify-full",
            ),
            (
                "postgresql://u:pw1@h/db?sslcert=c.crt",
                "sslcert is not supported",
            ),
            ("postgresql://u:pw1@h:notaport/db", "invalid"),
            ("postgresql://u:pw1@h/db?bogus=1", "bogus"),
            ("postgresql://u:pw1@/db", "names no host"),
            (
                "postgresql://u:pw1@h/db?sslrootcert=%zz",
                "percent-encoding",
            ),
            ("", "expected a URL like"),
            ("postgresql://u:pw1?x@h/db", "percent-encode"),
        ] {
            let e = PostgresUrl::parse(url).unwrap_err().to_string();
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains("pw1"), "{url}: {e}");
        }
    }

    #[test]
    fn redaction_hides_every_password_form() {
        for (url, want) in [
            ("postgresql://u:p@h/d", "postgresql://u:***@h/d"),
            ("postgresql://u@h/d", "postgresql://u@h/d"),
            (
                "postgresql://h/d?password=p&x=1",
                "postgresql://h/d?password=***&x=1",
            ),
            ("postgresql://u:p@q?x@h/d?a=b", "postgresql://u:***@h/d?a=b"),
            ("postgresql://u:p/q@h/d", "postgresql://u:***@h/d"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact(url), want, "{url}");
        }
    }

    #[test]
    fn never_panics_on_odd_input() {
        for url in [
            "postgresql://",
            "postgresql://@",
            "postgresql://:@:/?&=&",
            "postgresql://u:p@h/d?%",
            "postgresql://u:p@h/d?sslmode",
            "postgresql://u:p@[::1/d",
            "postgresql://é:ü@ß/∂?sslrootcert=%C3",
        ] {
            let _ = PostgresUrl::parse(url);
            let _ = redact(url);
        }
    }
}
