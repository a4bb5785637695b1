//! The benchmark's own Mosquitto: a generated configuration with deliberate limits,
//! free loopback ports (plain and TLS), a raised open-file limit, and where clients
//! find it ([`Endpoint`]).

use anyhow::{bail, Context, Result};
use mqtt_core::certgen::DevCertificates;
use mqtt_core::{Env, Settings};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// The development CA and server certificate the broker's TLS listener uses.
#[derive(Debug, Clone)]
pub struct Pki {
    /// CA certificate clients trust.
    pub ca: PathBuf,
    /// Server certificate (names localhost and 127.0.0.1).
    pub server_crt: PathBuf,
    /// Server key.
    pub server_key: PathBuf,
}

impl Pki {
    /// Generates a CA and a server certificate into `dir`.
    pub fn generate(dir: &Path) -> Result<Pki> {
        let certs = DevCertificates::generate(&[], &[], 2).context("generating certificates")?;
        certs.write(dir, true).context("writing certificates")?;
        Ok(Pki {
            ca: dir.join("ca.crt"),
            server_crt: dir.join("server.crt"),
            server_key: dir.join("server.key"),
        })
    }
}

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

/// A port nobody listens on right now.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind(("127.0.0.1", 0)).context("binding a loopback port")?;
    Ok(l.local_addr()?.port())
}

/// A Mosquitto process with its configuration; killed on drop.
pub struct Broker {
    /// Plain listener.
    pub plain_port: u16,
    /// TLS listener.
    pub tls_port: u16,
    /// The CA clients trust for the TLS listener.
    pub ca: PathBuf,
    conf_path: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    /// The open-file limit the broker actually got.
    pub nofile: Option<u64>,
}

impl Broker {
    /// Writes a configuration into `dir` and starts Mosquitto on fresh ports.
    pub fn start(dir: &Path, pki: &Pki, limits: Limits) -> Result<Broker> {
        Self::start_on(dir, pki, limits, free_port()?, free_port()?)
    }

    /// Like [`Broker::start`], on given ports (to come up where clients already wait).
    pub fn start_on(
        dir: &Path,
        pki: &Pki,
        limits: Limits,
        plain_port: u16,
        tls_port: u16,
    ) -> Result<Broker> {
        std::fs::create_dir_all(dir)?;
        let log_path = dir.join("mosquitto.log");
        let mut conf = vec![
            // The benchmark runs as root; Mosquitto would otherwise drop to a user that cannot read the keys.
            "user root".to_string(),
            "allow_anonymous true".into(),
            "persistence false".into(),
            format!("log_dest file {}", log_path.display()),
            // Logging every connection of 10,000 devices would measure the log, not the broker.
            "log_type error".into(),
            "log_type warning".into(),
            "connection_messages false".into(),
            "sys_interval 1".into(),
        ];
        conf.extend(limits.conf_lines());
        conf.push(format!("listener {plain_port} 127.0.0.1"));
        conf.push(format!("listener {tls_port} 127.0.0.1"));
        conf.push(format!("cafile {}", pki.ca.display()));
        conf.push(format!("certfile {}", pki.server_crt.display()));
        conf.push(format!("keyfile {}", pki.server_key.display()));
        let conf_path = dir.join("mosquitto.conf");
        std::fs::write(&conf_path, conf.join("\n") + "\n")?;
        let mut b = Broker {
            plain_port,
            tls_port,
            ca: pki.ca.clone(),
            conf_path,
            log_path,
            child: None,
            nofile: None,
        };
        b.run()?;
        Ok(b)
    }

    /// The command that starts it, for the report.
    pub fn command_line(&self) -> String {
        format!(
            "sh -c 'ulimit -n 65536 || ulimit -n $(ulimit -Hn); exec mosquitto -c {}'",
            self.conf_path.display()
        )
    }

    /// The configuration text.
    pub fn config_text(&self) -> String {
        std::fs::read_to_string(&self.conf_path).unwrap_or_default()
    }

    fn run(&mut self) -> Result<()> {
        // 10,000 devices need more descriptors than the usual 1,024; a container may cap
        // the hard limit lower than 65,536, so fall back to the hard limit.
        let script = format!(
            "ulimit -n 65536 2>/dev/null || ulimit -n $(ulimit -Hn); exec mosquitto -c '{}'",
            self.conf_path.display()
        );
        let child = crate::procstat::child_command("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting mosquitto (apt-get install mosquitto)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!(
                    "mosquitto exited at start ({status}); log:\n{}\nconfig:\n{}",
                    std::fs::read_to_string(&self.log_path).unwrap_or_default(),
                    self.config_text()
                );
            }
            let up = [self.plain_port, self.tls_port]
                .iter()
                .all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok());
            if up {
                break;
            }
            if Instant::now() > deadline {
                bail!("mosquitto did not listen within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.nofile = self.pid().and_then(crate::procstat::open_file_limit);
        Ok(())
    }

    /// The broker's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The plain or the TLS listener.
    pub fn endpoint(&self, tls: bool) -> Endpoint {
        if tls {
            Endpoint {
                port: self.tls_port,
                tls_ca: Some(self.ca.clone()),
            }
        } else {
            Endpoint {
                port: self.plain_port,
                tls_ca: None,
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
