//! One write request: a gzipped body of lines POSTed to the v1 or v2 write endpoint
//! with a timeout, over rustls on the workspace's ring provider; and what its answer
//! means for the batch (stored, points refused, retry later, or stop).

use super::config::{InfluxConfig, InfluxTarget};
use super::STORE;
use crate::store::StoreError;
use base64::Engine as _;
use flate2::write::GzEncoder;
use flate2::Compression;
use secrecy::{ExposeSecret, SecretString};
use std::io::Write as _;
use std::sync::Arc;
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

/// What to check when the TLS handshake fails.
const TLS_FIX: &str =
    "check the CA certificate and that the server's certificate names the host of the URL";

/// Longest server message kept in an error or a log line.
const MAX_REASON: usize = 400;

/// Why a write did not store its points.
#[derive(Debug)]
pub(super) enum Failure {
    /// The server refused the points themselves (400, 413, 422): a malformed point, a
    /// field type conflict, a point outside the retention period, a body too large.
    /// Other points may go through when written without the refused ones.
    Points(String),
    /// The whole store is unusable for now (retry) or for good (stop).
    Store(StoreError),
}

/// A configured write endpoint.
pub(super) struct Writer {
    agent: ureq::Agent,
    url: String,
    query: Vec<(&'static str, String)>,
    auth: Option<SecretString>,
    target: String,
    v2: bool,
}

impl Writer {
    pub(super) fn new(cfg: &InfluxConfig) -> Result<Writer, StoreError> {
        let base = cfg.base_url()?;
        let mut builder = ureq::Agent::config_builder()
            .timeout_global(Some(cfg.timeout))
            // Statuses are classified here, with the server's message read from the body.
            .http_status_as_error(false)
            // A redirected POST may lose its body; say where the API is instead.
            .max_redirects(0)
            .user_agent(concat!(
                "mqtt-telemetry-collector/",
                env!("CARGO_PKG_VERSION")
            ));
        if cfg.is_https() {
            builder = builder.tls_config(tls_config(cfg)?);
        }
        let agent = builder.build().new_agent();
        let (url, query, auth, v2) = match &cfg.target {
            InfluxTarget::V1 {
                db,
                username,
                password,
            } => {
                let auth = match (username, password) {
                    (Some(u), Some(p)) => {
                        let pair = format!("{u}:{}", p.expose_secret());
                        let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
                        Some(SecretString::from(format!("Basic {encoded}")))
                    }
                    _ => None,
                };
                (
                    format!("{base}/write"),
                    vec![("db", db.clone())],
                    auth,
                    false,
                )
            }
            InfluxTarget::V2 { bucket, org, token } => {
                let auth = SecretString::from(format!("Token {}", token.expose_secret()));
                let query = vec![("bucket", bucket.clone()), ("org", org.clone())];
                (format!("{base}/api/v2/write"), query, Some(auth), true)
            }
        };
        Ok(Writer {
            agent,
            url,
            query,
            auth,
            target: cfg.target_name(),
            v2,
        })
    }

    /// POSTs `lines` (newline-separated) gzipped; `Ok` once the server answered 2xx.
    pub(super) fn post(&self, lines: &str) -> Result<(), Failure> {
        let body = gzip(lines.as_bytes());
        let mut req = self
            .agent
            .post(&self.url)
            .query("precision", "ns")
            .header("Content-Type", "text/plain; charset=utf-8")
            .header("Content-Encoding", "gzip");
        for (k, v) in &self.query {
            req = req.query(*k, v);
        }
        if let Some(auth) = &self.auth {
            req = req.header("Authorization", auth.expose_secret());
        }
        let mut resp = req
            .send(&body[..])
            .map_err(|e| Failure::Store(self.transport_error(e)))?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .unwrap_or_default();
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Err(self.classify(status, &server_message(&text), location))
    }

    /// What an answer other than 2xx means (pure, so every branch has a unit test).
    fn classify(&self, status: u16, message: &str, location: Option<String>) -> Failure {
        let (url, target) = (&self.url, &self.target);
        let unavailable = |reason: String| {
            Failure::Store(StoreError::Unavailable {
                store: STORE,
                reason,
            })
        };
        let refused = |reason: String| {
            Failure::Store(StoreError::Refused {
                store: STORE,
                reason,
            })
        };
        let lower = message.to_ascii_lowercase();
        // InfluxDB 2.x names a missing org the way it names a missing bucket.
        let missing_bucket_or_org = lower.contains("not found")
            && (lower.contains("bucket") || lower.contains("organization"));
        match status {
            // Go's answer to plain HTTP on a TLS port: no point is at fault.
            400 if lower.contains("http request to an https server") => refused(format!(
                "{url} answered that it speaks HTTPS: use an https:// URL"
            )),
            400 | 413 | 422 => Failure::Points(format!("{status}: {message}")),
            401 | 403 if self.v2 => refused(format!(
                "{url} refused the token ({status}: {message}): check the token and that it may write to {target}"
            )),
            401 | 403 => refused(format!(
                "{url} refused the credentials ({status}: {message}): check the user name and password and that the user may write to {target}"
            )),
            404 if lower.contains("database not found") => refused(format!(
                "{target} does not exist ({message}): create database {} on the server, or fix the database name",
                self.query.first().map(|(_, db)| db.as_str()).unwrap_or_default()
            )),
            404 if missing_bucket_or_org => refused(format!(
                "{target} does not exist ({message}): create the bucket, or fix the bucket and org names"
            )),
            404 => refused(format!(
                "{url} answered 404 ({message}): check that the URL is the base address of the InfluxDB HTTP API"
            )),
            300..=399 => refused(format!(
                "{url} redirects ({status}) to {}: give that address as the URL",
                location.as_deref().unwrap_or("another address")
            )),
            408 | 429 | 500..=599 => unavailable(format!("{url} answered {status}: {message}")),
            _ => refused(format!("{url} answered {status}: {message}")),
        }
    }

    /// A request that got no HTTP answer: the server is down or slow (retry), unless
    /// TLS or the address itself is wrong (stop: retrying cannot fix it).
    fn transport_error(&self, e: ureq::Error) -> StoreError {
        let url = &self.url;
        match e {
            ureq::Error::Timeout(t) => StoreError::Unavailable {
                store: STORE,
                reason: format!("{url}: no answer in time ({t})"),
            },
            // rustls reports a refused certificate through the stream, as an I/O error.
            ureq::Error::Io(io) if io.get_ref().is_some_and(|e| e.is::<rustls::Error>()) => {
                StoreError::Refused {
                    store: STORE,
                    reason: format!("{url}: TLS failed ({io}): {TLS_FIX}"),
                }
            }
            ureq::Error::Io(io) => StoreError::Unavailable {
                store: STORE,
                reason: format!("{url}: {io}"),
            },
            ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => StoreError::Unavailable {
                store: STORE,
                reason: format!("{url}: {e}"),
            },
            ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_) => {
                StoreError::Refused {
                    store: STORE,
                    reason: format!("{url}: TLS failed ({e}): {TLS_FIX}"),
                }
            }
            ureq::Error::BadUri(_) | ureq::Error::Http(_) | ureq::Error::InvalidProxyUrl => {
                StoreError::Refused {
                    store: STORE,
                    reason: format!("{url}: {e}"),
                }
            }
            other => StoreError::Unavailable {
                store: STORE,
                reason: format!("{url}: {other}"),
            },
        }
    }
}

/// The root certificates for an https URL: the CA file, else the system's.
fn tls_config(cfg: &InfluxConfig) -> Result<TlsConfig, StoreError> {
    let der = match &cfg.ca_file {
        Some(path) => mqtt_core::tls::load_certs("INFLUXDB_CA_CERTS", path).map_err(|e| {
            StoreError::Refused {
                store: STORE,
                reason: e.to_string(),
            }
        })?,
        None => rustls_native_certs::load_native_certs().certs,
    };
    if der.is_empty() {
        return Err(StoreError::Refused {
            store: STORE,
            reason: "an https URL, but no CA certificate given and none found on the system".into(),
        });
    }
    let roots: Vec<Certificate<'static>> = der
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    Ok(TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(RootCerts::Specific(Arc::new(roots)))
        .unversioned_rustls_crypto_provider(mqtt_core::tls::provider())
        .build())
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(
        Vec::with_capacity(bytes.len() / 4 + 64),
        Compression::fast(),
    );
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(bytes);
    enc.finish().unwrap_or_default()
}

/// The message of an error body: `{"error": …}` (1.x), `{"message": …}` (2.x), else
/// the text itself; on one line, cut to [`MAX_REASON`] characters.
fn server_message(body: &str) -> String {
    let parsed = serde_json::from_str::<serde_json::Value>(body).ok();
    let text = parsed
        .as_ref()
        .and_then(|v| v.get("error").or_else(|| v.get("message")))
        .and_then(|v| v.as_str())
        .unwrap_or(body)
        .trim();
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_REASON)
        .collect();
    if one_line.is_empty() {
        "no message".into()
    } else {
        one_line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(cfg: InfluxConfig) -> Writer {
        Writer::new(&cfg).unwrap()
    }

    fn kind(f: Failure) -> (&'static str, String) {
        match f {
            Failure::Points(r) => ("points", r),
            Failure::Store(e @ StoreError::Unavailable { .. }) => ("unavailable", e.to_string()),
            Failure::Store(e @ StoreError::Refused { .. }) => ("refused", e.to_string()),
            Failure::Store(e) => ("other", e.to_string()),
        }
    }

    #[test]
    fn statuses_are_classified() {
        let w = writer(InfluxConfig::v1("http://h:8086", "telemetry", "c"));
        let c = |s, m: &str| kind(w.classify(s, m, None));
        assert_eq!(c(400, "partial write: field type conflict").0, "points");
        assert_eq!(c(413, "too large").0, "points");
        assert_eq!(c(422, "outside retention").0, "points");
        for s in [408, 429, 500, 502, 503, 504] {
            assert_eq!(c(s, "x").0, "unavailable", "{s}");
        }
        let (k, msg) = c(401, "authorization failed");
        assert_eq!(k, "refused");
        assert!(msg.contains("password"), "{msg}");
        let (k, msg) = c(404, "database not found: \"telemetry\"");
        assert_eq!(k, "refused");
        assert!(msg.contains("create database telemetry"), "{msg}");
        let (k, msg) = c(404, "page not found");
        assert_eq!(k, "refused");
        assert!(msg.contains("base address"), "{msg}");
        assert_eq!(
            c(400, "Client sent an HTTP request to an HTTPS server.").0,
            "refused"
        );
        let (k, msg) = kind(w.classify(301, "", Some("https://h:8086/write".into())));
        assert_eq!(k, "refused");
        assert!(msg.contains("https://h:8086/write"), "{msg}");
        assert_eq!(c(405, "method not allowed").0, "refused");
    }

    #[test]
    fn v2_refusals_name_the_token_and_the_bucket() {
        let w = writer(InfluxConfig::v2("http://h", "b", "o", "t0k", "c"));
        let (k, msg) = kind(w.classify(401, "unauthorized access", None));
        assert_eq!(k, "refused");
        assert!(msg.contains("token") && !msg.contains("t0k"), "{msg}");
        let (k, msg) = kind(w.classify(404, "bucket \"b\" not found", None));
        assert_eq!(k, "refused");
        assert!(msg.contains("create the bucket"), "{msg}");
        let (k, msg) = kind(w.classify(404, "organization name \"o\" not found", None));
        assert_eq!(k, "refused");
        assert!(msg.contains("org names"), "{msg}");
    }

    #[test]
    fn server_messages_are_read_from_both_json_shapes() {
        assert_eq!(server_message(r#"{"error":"timeout"}"#), "timeout");
        assert_eq!(
            server_message(r#"{"code":"invalid","message":"bad line"}"#),
            "bad line"
        );
        assert_eq!(server_message("plain\ntext "), "plain text");
        assert_eq!(server_message(""), "no message");
        assert_eq!(server_message(&"x".repeat(5000)).len(), MAX_REASON);
    }

    #[test]
    fn a_refused_connection_is_unavailable() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let w = writer(InfluxConfig::v1(
            format!("http://127.0.0.1:{port}"),
            "db",
            "c",
        ));
        match w.post("m f=1 1") {
            Err(Failure::Store(e)) => assert!(e.is_transient(), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_server_that_never_answers_times_out_as_unavailable() {
        // Connections complete in the backlog, but nothing ever reads or answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let mut cfg = InfluxConfig::v1(format!("http://127.0.0.1:{port}"), "db", "c");
        cfg.timeout = std::time::Duration::from_millis(300);
        let started = std::time::Instant::now();
        match writer(cfg).post("m f=1 1") {
            Err(Failure::Store(e)) => {
                assert!(e.is_transient(), "{e}");
                assert!(e.to_string().contains("no answer in time"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read;
        let mut out = String::new();
        flate2::read::GzDecoder::new(&gzip(b"m f=1 1\n")[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "m f=1 1\n");
    }
}
