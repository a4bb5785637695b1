//! Real time-series servers for the InfluxDB store's tests, on free loopback ports
//! with their data in a temporary directory, stopped and started again on demand
//! (same ports, same data) and killed on drop:
//! [`InfluxDb`] (influxd 1.x, the v1 `/write` API, optional authentication and HTTPS) and
//! [`VictoriaMetrics`] (the v2 `/api/v2/write` API, read back with `/api/v1/export`).

use crate::dir::Dir;
use crate::pki::Pki;
use crate::process::{die_with_parent, free_port, wait_until, ChildGuard};
use serde_json::Value;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long a server may take to answer its health check after a start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running (or stopped) influxd 1.x with its directory and ports.
pub struct InfluxDb {
    /// Port of the HTTP API.
    pub port: u16,
    /// The admin user and password, when authentication is on.
    pub auth: Option<(String, String)>,
    /// The CA that signed the server certificate, when it serves HTTPS.
    pub ca_crt: Option<PathBuf>,
    dir: Dir,
    conf_path: PathBuf,
    child: Option<ChildGuard>,
}

impl InfluxDb {
    /// Starts influxd from a generated configuration (reporting off, the internal
    /// monitor off, HTTP and RPC on free loopback ports) and waits until `/ping`
    /// answers 204. With `auth`, authentication is on and that admin user exists.
    pub fn start(auth: Option<(&str, &str)>) -> InfluxDb {
        Self::launch(auth, None)
    }

    /// [`InfluxDb::start`] serving HTTPS only, with `pki`'s server certificate (it
    /// names `localhost` and `127.0.0.1`).
    pub fn start_tls(auth: Option<(&str, &str)>, pki: &Pki) -> InfluxDb {
        Self::launch(auth, Some(pki))
    }

    fn launch(auth: Option<(&str, &str)>, pki: Option<&Pki>) -> InfluxDb {
        let dir = Dir::temp().expect("a temporary directory");
        let port = free_port();
        let rpc_port = free_port();
        let conf_path = dir.path().join("influxdb.conf");
        let tls = pki.map(|p| (p.server_crt.as_path(), p.server_key.as_path()));
        let text = influx_config(dir.path(), port, rpc_port, auth.is_some(), tls);
        std::fs::write(&conf_path, text).expect("writing influxdb.conf");
        let mut db = InfluxDb {
            port,
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
            ca_crt: pki.map(|p| p.ca_crt.clone()),
            dir,
            conf_path,
            child: None,
        };
        db.start_again();
        if let Some((user, password)) = db.auth.clone() {
            // With no user yet, influxd lets anyone create the first admin.
            let q =
                format!("CREATE USER \"{user}\" WITH PASSWORD '{password}' WITH ALL PRIVILEGES");
            let (status, body) = db.post("query", &[("q", &q)], "");
            assert_eq!(status, 200, "creating the admin user: {body}");
        }
        db
    }

    /// Starts the stopped server again: same configuration, ports and data.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "influxd already running");
        let log = self.dir.path().join("influxd.log");
        let log_file = File::create(&log).expect("creating influxd.log");
        let mut cmd = Command::new("influxd");
        cmd.arg("run").arg("-config").arg(&self.conf_path);
        let child = die_with_parent(&mut cmd)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run influxd: {e}; install it (apt-get install influxdb)")
            });
        self.child = Some(ChildGuard { child: Some(child) });
        let (agent, url) = (
            agent(self.ca_crt.as_deref()),
            format!("{}/ping", self.url()),
        );
        assert!(
            answers(&mut self.child, &agent, &url, 204),
            "influxd did not answer /ping within {START_TIMEOUT:?}; log:\n{}",
            self.log()
        );
    }

    /// SIGTERM and wait: the port is closed when this returns.
    pub fn stop(&mut self) {
        stop(&mut self.child);
    }

    /// True while influxd runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(ChildGuard::is_running)
    }

    /// influxd's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child
            .as_ref()?
            .child
            .as_ref()
            .map(std::process::Child::id)
    }

    /// `http://127.0.0.1:PORT`, or `https://localhost:PORT` with TLS.
    pub fn url(&self) -> String {
        match self.ca_crt {
            Some(_) => format!("https://localhost:{}", self.port),
            None => format!("http://127.0.0.1:{}", self.port),
        }
    }

    fn post(&self, path: &str, query: &[(&str, &str)], body: &str) -> (u16, String) {
        let agent = agent(self.ca_crt.as_deref());
        post(&agent, &format!("{}/{path}", self.url()), query, body)
    }

    /// `CREATE DATABASE name`.
    pub fn create_db(&self, name: &str) {
        self.query("", &format!("CREATE DATABASE \"{name}\""));
    }

    /// Runs InfluxQL (as the admin when authentication is on), times as epoch
    /// nanoseconds; panics unless influxd answers 200.
    pub fn query(&self, db: &str, influxql: &str) -> Value {
        let mut params = vec![("db", db), ("q", influxql), ("epoch", "ns")];
        if let Some((u, p)) = &self.auth {
            params.extend([("u", u.as_str()), ("p", p.as_str())]);
        }
        let (status, body) = self.post("query", &params, "");
        assert_eq!(status, 200, "{influxql}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{influxql}: {e}: {body}"))
    }

    /// Writes raw line protocol (precision ns) as the admin; returns status and body.
    pub fn write_lines(&self, db: &str, lines: &str) -> (u16, String) {
        let mut params = vec![("db", db), ("precision", "ns")];
        if let Some((u, p)) = &self.auth {
            params.extend([("u", u.as_str()), ("p", p.as_str())]);
        }
        self.post("write", &params, lines)
    }

    /// What influxd logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("influxd.log")).unwrap_or_default()
    }
}

/// The configuration text: everything under `dir`, HTTP (HTTPS with `tls`, a
/// certificate and a key file) on `port`, RPC on `rpc_port`.
fn influx_config(
    dir: &Path,
    port: u16,
    rpc_port: u16,
    auth: bool,
    tls: Option<(&Path, &Path)>,
) -> String {
    let d = dir.display();
    let https = match tls {
        Some((crt, key)) => format!(
            "  https-enabled = true\n  https-certificate = \"{}\"\n  https-private-key = \"{}\"\n",
            crt.display(),
            key.display()
        ),
        None => String::new(),
    };
    format!(
        "reporting-disabled = true\n\
         bind-address = \"127.0.0.1:{rpc_port}\"\n\
         [meta]\n  dir = \"{d}/meta\"\n  logging-enabled = false\n\
         [data]\n  dir = \"{d}/data\"\n  wal-dir = \"{d}/wal\"\n  query-log-enabled = false\n\
         [monitor]\n  store-enabled = false\n\
         [subscriber]\n  enabled = false\n\
         [continuous_queries]\n  enabled = false\n\
         [http]\n  bind-address = \"127.0.0.1:{port}\"\n  auth-enabled = {auth}\n  log-enabled = false\n{https}"
    )
}

/// A running (or stopped) VictoriaMetrics single node.
pub struct VictoriaMetrics {
    /// Port of the HTTP API.
    pub port: u16,
    dir: Dir,
    child: Option<ChildGuard>,
}

impl VictoriaMetrics {
    /// Starts victoria-metrics on a free loopback port (data kept 100 years, so old
    /// test timestamps are kept too; samples of one series at one time deduplicated)
    /// and waits until `/health` answers.
    pub fn start() -> VictoriaMetrics {
        let mut vm = VictoriaMetrics {
            port: free_port(),
            dir: Dir::temp().expect("a temporary directory"),
            child: None,
        };
        vm.start_again();
        vm
    }

    /// Starts the stopped server again: same port and data.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "victoria-metrics already running");
        let log = self.dir.path().join("victoria-metrics.log");
        let log_file = File::create(&log).expect("creating victoria-metrics.log");
        let mut cmd = Command::new("victoria-metrics");
        cmd.arg(format!(
            "-storageDataPath={}",
            self.dir.path().join("data").display()
        ))
        .arg(format!("-httpListenAddr=127.0.0.1:{}", self.port))
        .arg("-retentionPeriod=100y")
        .arg("-search.latencyOffset=0s")
        .arg("-search.disableCache")
        // Without it a point written twice is kept twice; with it, once (as InfluxDB does).
        .arg("-dedup.minScrapeInterval=1ms");
        let child = die_with_parent(&mut cmd)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run victoria-metrics: {e}; install it (apt-get install victoria-metrics)")
            });
        self.child = Some(ChildGuard { child: Some(child) });
        let (agent, url) = (agent(None), format!("{}/health", self.url()));
        assert!(
            answers(&mut self.child, &agent, &url, 200),
            "victoria-metrics did not answer /health within {START_TIMEOUT:?}; log:\n{}",
            self.log()
        );
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        stop(&mut self.child);
    }

    /// True while it runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(ChildGuard::is_running)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every series matching the selector `matcher` (`{__name__=~"device_data_.*"}`),
    /// as `/api/v1/export` gives them: `{"metric": {..}, "values": [..], "timestamps": [..]}`.
    /// Flushes first, so points written just before are there.
    pub fn export(&self, matcher: &str) -> Vec<Value> {
        let agent = agent(None);
        let (status, body) = get(&agent, &format!("{}/internal/force_flush", self.url()), &[]);
        assert_eq!(status, 200, "force_flush: {body}");
        let (status, body) = get(
            &agent,
            &format!("{}/api/v1/export", self.url()),
            &[("match[]", matcher)],
        );
        assert_eq!(status, 200, "export {matcher}: {body}");
        body.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// What victoria-metrics logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("victoria-metrics.log")).unwrap_or_default()
    }
}

/// A client for the test servers, trusting `ca` (PEM) for HTTPS; never through a proxy.
/// Waits until the server in `child` answers `url` with `status`; false if it
/// exits first or does not answer in time.
fn answers(child: &mut Option<ChildGuard>, agent: &ureq::Agent, url: &str, status: u16) -> bool {
    let mut running = || child.as_mut().is_some_and(ChildGuard::is_running);
    wait_until(START_TIMEOUT, || {
        !running() || get(agent, url, &[]).0 == status
    }) && running()
}

/// SIGTERM and wait: the port is closed when this returns.
fn stop(child: &mut Option<ChildGuard>) {
    if let Some(mut guard) = child.take() {
        guard.signal(libc::SIGTERM);
        guard.wait_output(Duration::from_secs(20));
    }
}

fn agent(ca: Option<&Path>) -> ureq::Agent {
    use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
    let mut config = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .proxy(None);
    if let Some(ca) = ca {
        let der = mqtt_core::tls::load_certs("CA", ca).unwrap_or_else(|e| panic!("{e}"));
        let roots = der
            .iter()
            .map(|c| Certificate::from_der(c.as_ref()).to_owned())
            .collect::<Vec<_>>();
        config = config.tls_config(
            TlsConfig::builder()
                .provider(TlsProvider::Rustls)
                .root_certs(RootCerts::Specific(std::sync::Arc::new(roots)))
                .unversioned_rustls_crypto_provider(mqtt_core::tls::provider())
                .build(),
        );
    }
    config.build().new_agent()
}

/// GET with query parameters: status and body, or status 0 when nothing answered.
fn get(agent: &ureq::Agent, url: &str, query: &[(&str, &str)]) -> (u16, String) {
    let mut req = agent.get(url);
    for (k, v) in query {
        req = req.query(*k, *v);
    }
    answer(req.call())
}

/// POST with query parameters and a text body.
fn post(agent: &ureq::Agent, url: &str, query: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut req = agent.post(url);
    for (k, v) in query {
        req = req.query(*k, *v);
    }
    answer(req.send(body))
}

fn answer(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, String) {
    match r {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            (status, resp.body_mut().read_to_string().unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn influxd_starts_stops_and_keeps_its_data() {
        let mut db = InfluxDb::start(None);
        db.create_db("t");
        let (status, body) = db.write_lines("t", "m,k=v f=1.5 1700000000000000000");
        assert_eq!(status, 204, "{body}");
        db.stop();
        assert_eq!(get(&agent(None), &format!("{}/ping", db.url()), &[]).0, 0);
        db.start_again();
        let out = db.query("t", "SELECT f FROM m");
        assert_eq!(
            out["results"][0]["series"][0]["values"][0],
            serde_json::json!([1_700_000_000_000_000_000u64, 1.5])
        );
    }

    #[test]
    fn influxd_with_auth_refuses_strangers() {
        let db = InfluxDb::start(Some(("admin", "s3cret")));
        db.create_db("t");
        let (status, _) = post(
            &agent(None),
            &format!("{}/write", db.url()),
            &[("db", "t"), ("u", "admin"), ("p", "wrong")],
            "m f=1",
        );
        assert_eq!(status, 401);
        assert_eq!(db.write_lines("t", "m f=1").0, 204);
    }

    #[test]
    fn victoria_metrics_exports_what_it_was_sent() {
        let mut vm = VictoriaMetrics::start();
        let (status, body) = post(
            &agent(None),
            &format!("{}/api/v2/write", vm.url()),
            &[("bucket", "b"), ("org", "o"), ("precision", "ns")],
            "m,k=v f=2.5 1700000000000000000",
        );
        assert!(status == 204 || status == 200, "{status}: {body}");
        vm.stop();
        vm.start_again();
        let series = vm.export("{__name__=\"m_f\"}");
        assert_eq!(series.len(), 1, "{series:?}");
        assert_eq!(series[0]["metric"]["k"], "v");
        assert_eq!(series[0]["values"][0], 2.5);
        assert_eq!(series[0]["timestamps"][0], 1_700_000_000_000u64);
    }

    #[test]
    fn influxd_serves_https_with_the_test_ca() {
        let pki = Pki::new();
        let db = InfluxDb::start_tls(None, &pki);
        assert!(db.url().starts_with("https://localhost:"));
        db.create_db("t");
        assert_eq!(db.write_lines("t", "m f=1").0, 204);
        let plain = format!("http://127.0.0.1:{}/ping", db.port);
        assert_eq!(
            get(&agent(None), &plain, &[]).0,
            400,
            "plain HTTP on the TLS port"
        );
    }
}
