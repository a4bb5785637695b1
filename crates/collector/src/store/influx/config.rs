//! [`InfluxConfig`]: where the InfluxDB store writes (v1 `/write` or v2
//! `/api/v2/write`), as whom, and under which measurement and collector tag; checked
//! once before the store is built. Secrets print as `***`.

use super::STORE;
use crate::store::StoreError;
use secrecy::{ExposeSecret, SecretString};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The measurement of the replaced system's dashboards.
pub const DEFAULT_MEASUREMENT: &str = "device_data";

/// How long one write request may take, connect to last byte.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Which write API, with its database or bucket and its credentials.
#[derive(Clone)]
pub enum InfluxTarget {
    /// InfluxDB 1.x `/write?db=…` (also served by 1.8+, 2.x compatibility, VictoriaMetrics).
    V1 {
        /// The database.
        db: String,
        /// User name, when the server has authentication on.
        username: Option<String>,
        /// Its password (given with `username`, or not at all).
        password: Option<SecretString>,
    },
    /// `/api/v2/write?bucket=…&org=…` with `Authorization: Token …`.
    V2 {
        /// The bucket.
        bucket: String,
        /// The organisation.
        org: String,
        /// The API token.
        token: SecretString,
    },
}

impl fmt::Debug for InfluxTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InfluxTarget::V1 {
                db,
                username,
                password,
            } => f
                .debug_struct("V1")
                .field("db", db)
                .field("username", username)
                .field("password", &password.as_ref().map(|_| Masked))
                .finish(),
            InfluxTarget::V2 { bucket, org, .. } => f
                .debug_struct("V2")
                .field("bucket", bucket)
                .field("org", org)
                .field("token", &Masked)
                .finish(),
        }
    }
}

/// Prints `***` wherever a secret would be.
struct Masked;

impl fmt::Debug for Masked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Everything the InfluxDB store needs (contract section 6).
#[derive(Clone, Debug)]
pub struct InfluxConfig {
    /// Base URL of the HTTP API, `http://host:8086` or `https://host/prefix`; no
    /// credentials in it (they go in the target).
    pub url: String,
    /// v1 or v2 write API.
    pub target: InfluxTarget,
    /// Measurement name, [`DEFAULT_MEASUREMENT`] unless changed.
    pub measurement: String,
    /// Value of the `collector` tag: the collector's client id unless changed.
    pub collector_tag: String,
    /// CA certificates (PEM) for an `https` URL; the system's roots when `None`.
    pub ca_file: Option<PathBuf>,
    /// Limit of one request, [`DEFAULT_TIMEOUT`] unless changed.
    pub timeout: Duration,
}

impl InfluxConfig {
    /// A configuration with the default measurement and timeout.
    pub fn new(
        url: impl Into<String>,
        target: InfluxTarget,
        collector_tag: impl Into<String>,
    ) -> InfluxConfig {
        InfluxConfig {
            url: url.into(),
            target,
            measurement: DEFAULT_MEASUREMENT.to_string(),
            collector_tag: collector_tag.into(),
            ca_file: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// v1 `/write` to `db`, without credentials.
    pub fn v1(url: impl Into<String>, db: impl Into<String>, collector_tag: &str) -> InfluxConfig {
        let target = InfluxTarget::V1 {
            db: db.into(),
            username: None,
            password: None,
        };
        InfluxConfig::new(url, target, collector_tag)
    }

    /// v2 `/api/v2/write` to `bucket` of `org` with `token`.
    pub fn v2(
        url: impl Into<String>,
        bucket: impl Into<String>,
        org: impl Into<String>,
        token: impl Into<String>,
        collector_tag: &str,
    ) -> InfluxConfig {
        let target = InfluxTarget::V2 {
            bucket: bucket.into(),
            org: org.into(),
            token: SecretString::from(token.into()),
        };
        InfluxConfig::new(url, target, collector_tag)
    }

    /// The same configuration with v1 credentials (ignored for a v2 target).
    pub fn with_credentials(mut self, username: &str, password: &str) -> InfluxConfig {
        if let InfluxTarget::V1 {
            username: u,
            password: p,
            ..
        } = &mut self.target
        {
            *u = Some(username.to_string());
            *p = Some(SecretString::from(password.to_string()));
        }
        self
    }

    /// The base URL without a trailing slash, checked: http or https, a host, no
    /// credentials, no query. Errors never repeat what stood before an `@`.
    pub(super) fn base_url(&self) -> Result<String, StoreError> {
        let url = self.url.trim().trim_end_matches('/');
        let shown = redact_userinfo(url);
        let refuse = |why: &str| {
            Err(StoreError::Refused {
                store: STORE,
                reason: format!("the URL {shown:?} {why}"),
            })
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            return refuse("has no scheme: write http://host:8086 or https://host:8086");
        };
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return refuse("is neither http:// nor https://");
        }
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.contains('@') {
            return refuse(
                "holds credentials: give them as the user name and password (v1) or the token (v2) instead",
            );
        }
        if authority.is_empty() {
            return refuse("has no host");
        }
        if rest.contains('?') || rest.contains('#') {
            return refuse("has a query or fragment: give only the base address of the HTTP API");
        }
        Ok(url.to_string())
    }

    /// True when requests go over TLS.
    pub(super) fn is_https(&self) -> bool {
        self.url.trim().to_ascii_lowercase().starts_with("https://")
    }

    /// Checks what [`InfluxConfig::base_url`] does not: names present, credentials
    /// complete, a measurement line protocol can carry.
    pub(super) fn check(&self) -> Result<(), StoreError> {
        self.base_url()?;
        let refuse = |reason: String| {
            Err(StoreError::Refused {
                store: STORE,
                reason,
            })
        };
        match &self.target {
            InfluxTarget::V1 {
                db,
                username,
                password,
            } => {
                if db.trim().is_empty() {
                    return refuse("the database name is empty".into());
                }
                if username.is_some() != password.is_some() {
                    return refuse(
                        "a user name without a password (or the reverse): give both or neither"
                            .into(),
                    );
                }
            }
            InfluxTarget::V2 { bucket, org, token } => {
                if bucket.trim().is_empty() || org.trim().is_empty() {
                    return refuse("the v2 API needs a bucket and an org".into());
                }
                if token.expose_secret().trim().is_empty() {
                    return refuse("the v2 API needs a token".into());
                }
            }
        }
        // A line starting with `#` is a comment: every point would vanish silently.
        if self.measurement.is_empty()
            || self.measurement.starts_with('#')
            || self.measurement.chars().any(char::is_control)
        {
            return refuse(format!(
                "measurement {:?} cannot be written: it must be non-empty, not start with '#' and hold no control characters",
                self.measurement
            ));
        }
        if self.collector_tag.trim().is_empty() {
            return refuse("the collector tag is empty".into());
        }
        Ok(())
    }

    /// What the target is, for messages: `database "x"` or `bucket "b" of org "o"`.
    pub(super) fn target_name(&self) -> String {
        match &self.target {
            InfluxTarget::V1 { db, .. } => format!("database {db:?}"),
            InfluxTarget::V2 { bucket, org, .. } => format!("bucket {bucket:?} of org {org:?}"),
        }
    }
}

/// One line for logs: URL, API, target, user; `***` for the password or token.
impl fmt::Display for InfluxConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = redact_userinfo(self.url.trim());
        match &self.target {
            InfluxTarget::V1 { db, username, .. } => {
                write!(f, "{url} (v1 /write, database {db:?}")?;
                if let Some(u) = username {
                    write!(f, ", user {u:?}, password ***")?;
                }
            }
            InfluxTarget::V2 { bucket, org, .. } => write!(
                f,
                "{url} (v2 /api/v2/write, bucket {bucket:?}, org {org:?}, token ***"
            )?,
        }
        write!(
            f,
            ", measurement {:?}, collector tag {:?})",
            self.measurement, self.collector_tag
        )
    }
}

/// `scheme://***@host…` for a URL with user info, so a password typed into the URL
/// never reaches a message.
fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find('/').unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_masks_the_password_and_the_token() {
        let v1 = InfluxConfig::v1("http://h:8086", "db", "c").with_credentials("u", "hunter2");
        let text = format!("{v1:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("***") && text.contains("\"u\""), "{text}");
        let v2 = InfluxConfig::v2("http://h:8086", "b", "o", "tok-secret", "c");
        let text = format!("{v2:?}");
        assert!(
            !text.contains("tok-secret") && text.contains("***"),
            "{text}"
        );
        assert_eq!(
            v1.to_string(),
            "http://h:8086 (v1 /write, database \"db\", user \"u\", password ***, \
             measurement \"device_data\", collector tag \"c\")"
        );
        assert_eq!(
            v2.to_string(),
            "http://h:8086 (v2 /api/v2/write, bucket \"b\", org \"o\", token ***, \
             measurement \"device_data\", collector tag \"c\")"
        );
    }

    #[test]
    fn urls_are_checked_without_repeating_credentials() {
        let ok = InfluxConfig::v1("http://127.0.0.1:8086/", "db", "c");
        assert_eq!(ok.base_url().unwrap(), "http://127.0.0.1:8086");
        let prefixed = InfluxConfig::v1("https://h/influx", "db", "c");
        assert_eq!(prefixed.base_url().unwrap(), "https://h/influx");
        assert!(prefixed.is_https());
        for bad in ["h:8086", "ftp://h", "http://", "http://h:1/write?db=x"] {
            let err = InfluxConfig::v1(bad, "db", "c").check().unwrap_err();
            assert!(err.is_refusal(), "{bad}: {err}");
        }
        let err = InfluxConfig::v1("http://u:hunter2@h:8086", "db", "c")
            .base_url()
            .unwrap_err()
            .to_string();
        assert!(
            !err.contains("hunter2") && err.contains("***@h:8086"),
            "{err}"
        );
    }

    #[test]
    fn incomplete_targets_are_refused() {
        let mut half = InfluxConfig::v1("http://h", "db", "c");
        half.target = InfluxTarget::V1 {
            db: "db".into(),
            username: Some("u".into()),
            password: None,
        };
        assert!(half.check().is_err());
        assert!(InfluxConfig::v1("http://h", " ", "c").check().is_err());
        assert!(InfluxConfig::v2("http://h", "b", "o", "", "c")
            .check()
            .is_err());
        let mut comment = InfluxConfig::v1("http://h", "db", "c");
        comment.measurement = "#m".into();
        assert!(comment.check().is_err());
        assert!(InfluxConfig::v1("http://h", "db", "").check().is_err());
        InfluxConfig::v2("http://h", "b", "o", "t", "c")
            .check()
            .unwrap();
    }
}
