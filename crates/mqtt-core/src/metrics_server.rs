//! The metrics and health endpoint both binaries serve with `--metrics-addr`
//! (contract section 8): `/metrics` (a Prometheus registry in the OpenMetrics text
//! format), `/healthz` (200 while the process runs) and `/readyz` (200 when the
//! binary's readiness callback says so, else 503 with its reason).
//!
//! [`bind`] runs before the runtime starts, so an address that cannot be bound is a
//! configuration error of the flag; [`serve`] then answers on the binary's runtime
//! until the run's cancellation fires.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Answers whether the process is ready: `Err` carries the reason `/readyz` returns.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// prometheus-client writes OpenMetrics, served as it is to clients that ask for it
/// (Prometheus does, in its Accept header).
const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Everyone else (promtool, curl, older scrapers) gets the Prometheus text format.
const PROMETHEUS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// A client that sends nothing for this long is dropped; a scrape takes milliseconds.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the endpoint cannot start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The address is not `HOST:PORT` or the host does not resolve.
    #[error("{flag} {addr:?}: not a HOST:PORT address that resolves ({reason})")]
    Address {
        /// The flag (and variable) that gave the address.
        flag: &'static str,
        /// The address as given.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// No resolved address could be bound (in use, not local, no permission).
    #[error("{flag} {addr:?}: cannot listen there ({reason}); choose a free port on an address of this host")]
    Bind {
        /// The flag (and variable) that gave the address.
        flag: &'static str,
        /// The address as given.
        addr: String,
        /// What went wrong.
        reason: String,
    },
}

/// Binds `addr` (`HOST:PORT`, a name or an IP) for the endpoint; `flag` names the
/// option in errors. A non-loopback address is logged as a warning: whoever reaches
/// it sees the metrics.
pub fn bind(addr: &str, flag: &'static str) -> Result<TcpListener, BindError> {
    let resolved: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| BindError::Address {
            flag,
            addr: addr.to_string(),
            reason: e.to_string(),
        })?
        .collect();
    let mut last = String::from("the name resolves to no address");
    for candidate in resolved {
        match TcpListener::bind(candidate) {
            Ok(listener) => {
                listener
                    .set_nonblocking(true)
                    .map_err(|e| BindError::Bind {
                        flag,
                        addr: addr.to_string(),
                        reason: e.to_string(),
                    })?;
                let local = listener.local_addr().unwrap_or(candidate);
                if !local.ip().is_loopback() {
                    tracing::warn!(
                        "the metrics endpoint listens on {local}, not a loopback address: anyone who can reach it sees the metrics and readiness ({flag})"
                    );
                }
                tracing::info!(
                    "metrics and health endpoint on http://{local} (/metrics, /healthz, /readyz)"
                );
                return Ok(listener);
            }
            Err(e) => last = format!("{candidate}: {e}"),
        }
    }
    Err(BindError::Bind {
        flag,
        addr: addr.to_string(),
        reason: last,
    })
}

/// Serves the endpoint on `listener` until `cancel` fires. Must run on a tokio runtime.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    ready: Readiness,
    cancel: CancellationToken,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("the metrics endpoint cannot start: {e}");
            return;
        }
    };
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, usually: pause instead of spinning.
                    tracing::debug!("metrics endpoint: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (registry, ready, cancel) = (registry.clone(), ready.clone(), cancel.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = answer(&req, &registry, &ready);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = cancel.cancelled() => {}
            }
        });
    }
}

/// The answer to one request.
fn answer(
    req: &Request<Incoming>,
    registry: &Registry,
    ready: &Readiness,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => {
                    let openmetrics = req
                        .headers()
                        .get(hyper::header::ACCEPT)
                        .and_then(|a| a.to_str().ok())
                        .is_some_and(|a| a.contains("application/openmetrics-text"));
                    let (body, kind) = if openmetrics {
                        (body, OPENMETRICS_TYPE)
                    } else {
                        (to_prometheus_text(&body), PROMETHEUS_TYPE)
                    };
                    let mut r = text(StatusCode::OK, body);
                    r.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static(kind));
                    r
                }
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot encode the metrics\n".into(),
                ),
            }
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match ready() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

/// OpenMetrics text as the Prometheus text format (0.0.4): the two differ, for
/// what prometheus-client writes, only in a counter's HELP and TYPE naming the
/// family (`x`) where 0.0.4 names the sample (`x_total`), and in `# EOF`/`# UNIT`.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let comment = ["# HELP ", "# TYPE "]
            .into_iter()
            .find(|p| line.starts_with(p));
        if let Some(prefix) = comment {
            let rest = &line[prefix.len()..];
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) && !name.ends_with("_total") {
                out.push_str(&format!("{prefix}{name}_total {tail}\n"));
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// One raw HTTP/1.0 GET, so the test needs no client crate.
    fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out[9..12].parse().unwrap();
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
        (status, body.unwrap_or_default())
    }

    #[test]
    fn counters_are_named_by_their_sample_in_the_prometheus_format() {
        let om = "# HELP a_things Things.\n# TYPE a_things counter\na_things_total 3\n\
                  # HELP b_up Up.\n# TYPE b_up gauge\nb_up 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a_things_total Things.\n# TYPE a_things_total counter\na_things_total 3\n\
             # HELP b_up Up.\n# TYPE b_up gauge\nb_up 1\n"
        );
    }

    #[test]
    fn bad_addresses_name_the_flag() {
        let e = bind("no-port", "--metrics-addr").unwrap_err().to_string();
        assert!(
            e.contains("--metrics-addr") && e.contains("HOST:PORT"),
            "{e}"
        );
        let taken = bind("127.0.0.1:0", "--metrics-addr").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let e = bind(&addr, "--metrics-addr").unwrap_err().to_string();
        assert!(e.contains("cannot listen"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn routes_answer_and_readiness_follows_the_callback() {
        let listener = bind("127.0.0.1:0", "--metrics-addr").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut registry = Registry::default();
        let c = Counter::<u64>::default();
        registry.register("demo_things", "things seen", c.clone());
        c.inc_by(3);
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        let ready: Readiness = Arc::new(move || {
            if f.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("not connected".into())
            }
        });
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(listener, Arc::new(registry), ready, cancel.clone()));
        let r = tokio::task::spawn_blocking(move || {
            let metrics = get(addr, "/metrics");
            let health = get(addr, "/healthz");
            let before = get(addr, "/readyz");
            flag.store(true, Ordering::Relaxed);
            let after = get(addr, "/readyz");
            let missing = get(addr, "/nope");
            (metrics, health, before, after, missing)
        })
        .await
        .unwrap();
        assert_eq!(r.0 .0, 200);
        assert!(r.0 .1.contains("demo_things_total 3"), "{}", r.0 .1);
        assert_eq!(r.1, (200, "ok\n".to_string()));
        assert_eq!(r.2, (503, "not ready: not connected\n".to_string()));
        assert_eq!(r.3 .0, 200);
        assert_eq!(r.4 .0, 404);
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(2), server)
            .await
            .unwrap()
            .unwrap();
    }
}
