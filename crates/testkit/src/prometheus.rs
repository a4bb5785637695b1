//! A real Prometheus server for the metrics tests: it scrapes the given targets
//! every second, keeps its data in a temporary directory, listens on a free
//! loopback port and is killed on drop. Also a plain HTTP GET and
//! `promtool check metrics`, for the endpoints themselves.

use crate::dir::Dir;
use crate::process::{die_with_parent, free_port, wait_until, ChildGuard};
use serde_json::Value;
use std::fs::File;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long Prometheus may take to say it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running Prometheus.
pub struct Prometheus {
    /// Port of its web UI and HTTP API.
    pub port: u16,
    // Before `dir`: fields drop in order, and the process must end before its
    // directory goes.
    child: ChildGuard,
    dir: Dir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`HOST:PORT`, path `/metrics`) every
    /// second, and waits until `/-/ready` answers 200.
    pub fn start(targets: &[String]) -> Prometheus {
        let dir = Dir::temp().expect("a temporary directory");
        let port = free_port();
        let list = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: telemetry\n    static_configs:\n      - targets: [{list}]\n"
            ),
        )
        .expect("writing prometheus.yml");
        let log = File::create(dir.path().join("prometheus.log")).expect("prometheus.log");
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        let child = die_with_parent(&mut cmd)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run prometheus: {e}; install it (apt-get install prometheus)")
            });
        let mut p = Prometheus {
            port,
            child: ChildGuard { child: Some(child) },
            dir,
        };
        let url = format!("{}/-/ready", p.url());
        let up = wait_until(START_TIMEOUT, || {
            !p.child.is_running() || http_get(&url).0 == 200
        });
        assert!(
            up && p.child.is_running(),
            "prometheus was not ready within {START_TIMEOUT:?}; log:\n{}",
            p.log()
        );
        p
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The `data` of `/api/v1/query?query=PROMQL` (an instant query, now).
    pub fn query(&self, promql: &str) -> Value {
        let (status, body) = get_query(&format!("{}/api/v1/query", self.url()), promql);
        assert_eq!(status, 200, "query {promql}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        v["data"].clone()
    }

    /// The value of the first series `promql` returns, if any.
    pub fn value(&self, promql: &str) -> Option<f64> {
        let data = self.query(promql);
        data["result"].get(0)?["value"][1].as_str()?.parse().ok()
    }

    /// What Prometheus logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .into()
}

fn answer(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, String) {
    match r {
        Ok(mut r) => (
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap_or_default(),
        ),
        // Not listening (yet, or any more): a status no server sends.
        Err(e) => (0, e.to_string()),
    }
}

/// GET `url` (plain HTTP): the status (0 when nothing answers) and the body.
pub fn http_get(url: &str) -> (u16, String) {
    answer(agent().get(url).call())
}

fn get_query(url: &str, promql: &str) -> (u16, String) {
    answer(agent().get(url).query("query", promql).call())
}

/// `promtool check metrics` over `text`: `Err` with promtool's complaints.
pub fn promtool_check_metrics(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool: {e}; install it (apt-get install prometheus)")
        });
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(text.as_bytes())
        .expect("writing to promtool");
    drop(stdin);
    let out = child.wait_with_output().expect("promtool ran");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
