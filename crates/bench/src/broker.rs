//! The benchmark's own Mosquitto, started by testkit's launcher: a configuration
//! with deliberate limits, free loopback ports (plain and TLS), a raised open-file
//! limit, and where clients find it ([`Endpoint`]).

use anyhow::{Context, Result};
use mqtt_core::{Env, Settings};
use std::path::{Path, PathBuf};
use testkit::{BrokerConfig, Pki};

/// The broker limits that shape the figures; printed with every run.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `max_inflight_messages`: unacknowledged QoS 1 messages per subscriber.
    pub max_inflight: u32,
    /// `max_queued_messages`: messages held per offline persistent session.
    pub max_queued: u32,
    /// `set_tcp_nodelay`: Mosquitto's default (false) leaves Nagle's algorithm on.
    pub tcp_nodelay: bool,
}

impl Limits {
    /// The configuration lines these limits become.
    pub fn conf_lines(&self) -> Vec<String> {
        vec![
            format!("max_inflight_messages {}", self.max_inflight),
            format!("max_queued_messages {}", self.max_queued),
            "max_queued_bytes 0".into(),
            format!("set_tcp_nodelay {}", self.tcp_nodelay),
        ]
    }
}

/// Where and how a client reaches the broker.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Port.
    pub port: u16,
    /// CA to trust when this is the TLS listener.
    pub tls_ca: Option<PathBuf>,
}

impl Endpoint {
    /// The host every client uses (the server certificate names it).
    pub const HOST: &'static str = "127.0.0.1";

    /// `plain` or `TLS`.
    pub fn label(&self) -> &'static str {
        if self.tls_ca.is_some() {
            "TLS"
        } else {
            "plain"
        }
    }

    /// MQTT_* variables for a child process (collector, device-sim) with this client id.
    pub fn env(&self, client_id: Option<&str>) -> Vec<(String, String)> {
        let mut env = vec![
            ("MQTT_BROKER_HOST".to_string(), Self::HOST.to_string()),
            ("MQTT_BROKER_PORT".to_string(), self.port.to_string()),
            (
                "MQTT_USE_TLS".to_string(),
                self.tls_ca.is_some().to_string(),
            ),
            ("MQTT_RECONNECT_MIN_DELAY".to_string(), "0.1".to_string()),
            ("MQTT_RECONNECT_MAX_DELAY".to_string(), "0.5".to_string()),
            ("MQTT_KEEPALIVE".to_string(), "30".to_string()),
        ];
        if let Some(ca) = &self.tls_ca {
            env.push(("MQTT_CA_CERTS".to_string(), ca.display().to_string()));
        }
        if let Some(id) = client_id {
            env.push(("MQTT_CLIENT_ID".to_string(), id.to_string()));
        }
        env
    }

    /// Validated settings for the benchmark's own Rust clients.
    pub fn settings(&self) -> Result<Settings> {
        Ok(Settings::from_env(&Env::from_pairs(self.env(None)))?)
    }

    /// The same as shell words, to print a command line anyone can rerun.
    pub fn env_words(&self, client_id: Option<&str>) -> String {
        self.env(client_id)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Connection arguments of the mosquitto clients.
    pub fn mosquitto_args(&self) -> Vec<String> {
        let mut a = vec![
            "-h".to_string(),
            Self::HOST.to_string(),
            "-p".to_string(),
            self.port.to_string(),
        ];
        if let Some(ca) = &self.tls_ca {
            a.push("--cafile".into());
            a.push(ca.display().to_string());
        }
        a
    }
}

/// A Mosquitto process with its configuration; killed on drop.
pub struct Broker {
    inner: testkit::Broker,
    /// The CA clients trust for the TLS listener.
    ca: PathBuf,
    /// The open-file limit the broker actually got.
    pub nofile: Option<u64>,
}

impl Broker {
    /// Writes a configuration into `dir` and starts Mosquitto on fresh ports.
    pub fn start(dir: &Path, pki: &Pki, limits: Limits) -> Result<Broker> {
        Self::start_with(BrokerConfig::new(), dir, pki, limits)
    }

    /// Like [`Broker::start`], on given ports (to come up where clients already wait).
    pub fn start_on(
        dir: &Path,
        pki: &Pki,
        limits: Limits,
        plain_port: u16,
        tls_port: u16,
    ) -> Result<Broker> {
        let cfg = BrokerConfig::new().port(plain_port).tls_port(tls_port);
        Self::start_with(cfg, dir, pki, limits)
    }

    fn start_with(cfg: BrokerConfig, dir: &Path, pki: &Pki, limits: Limits) -> Result<Broker> {
        let mut cfg = cfg
            .dir(dir)
            .tls(pki)
            // Logging every connection of 10,000 devices would measure the log, not the broker.
            .quiet()
            // 10,000 devices need more descriptors than the usual 1,024.
            .open_files(65_536)
            .conf("sys_interval 1");
        for line in limits.conf_lines() {
            cfg = cfg.conf(&line);
        }
        let inner = testkit::Broker::try_start(cfg).context("starting the benchmark's broker")?;
        let nofile = inner.pid().and_then(crate::procstat::open_file_limit);
        Ok(Broker {
            inner,
            ca: pki.ca_crt.clone(),
            nofile,
        })
    }

    /// The command that starts it, for the report.
    pub fn command_line(&self) -> String {
        self.inner.command_line()
    }

    /// The configuration text.
    pub fn config_text(&self) -> String {
        self.inner.config_text()
    }

    /// The broker's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.inner.pid()
    }

    /// The plain or the TLS listener.
    pub fn endpoint(&self, tls: bool) -> Endpoint {
        if tls {
            Endpoint {
                port: self
                    .inner
                    .tls_port
                    .expect("the benchmark's broker has a TLS listener"),
                tls_ca: Some(self.ca.clone()),
            }
        } else {
            Endpoint {
                port: self.inner.plain_port,
                tls_ca: None,
            }
        }
    }
}
