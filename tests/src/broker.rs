//! A real Mosquitto per test, on free loopback ports, stopped when the test ends.

use crate::pki::Pki;
use crate::process::{free_port, wait_until};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// What the broker should offer. Start from [`BrokerConfig::new`] and add.
#[derive(Clone, Default)]
pub struct BrokerConfig {
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
    require_certificate: bool,
    use_identity_as_username: bool,
    users: Vec<(String, String)>,
    acl: Option<String>,
    persistence: bool,
    extra: Vec<String>,
    plain_port: Option<u16>,
}

impl BrokerConfig {
    /// A plain listener on a free loopback port, anonymous access allowed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a TLS listener with the PKI's CA and server certificate.
    pub fn tls(mut self, pki: &Pki) -> Self {
        self.tls = Some((
            pki.ca_crt.clone(),
            pki.server_crt.clone(),
            pki.server_key.clone(),
        ));
        self
    }

    /// The TLS listener demands a client certificate signed by the CA.
    pub fn require_certificate(mut self, on: bool) -> Self {
        self.require_certificate = on;
        self
    }

    /// The client certificate's common name becomes the user name (for ACLs).
    pub fn use_identity_as_username(mut self, on: bool) -> Self {
        self.use_identity_as_username = on;
        self
    }

    /// Adds a user to the password file; anonymous access is then off.
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.users.push((name.into(), password.into()));
        self
    }

    /// An ACL file with this text.
    pub fn acl(mut self, text: &str) -> Self {
        self.acl = Some(text.into());
        self
    }

    /// Persistence on, in the broker's own directory (kept across restarts).
    pub fn persistence(mut self, on: bool) -> Self {
        self.persistence = on;
        self
    }

    /// Listen on this plain port instead of a fresh one (to start a broker where clients already wait).
    pub fn port(mut self, port: u16) -> Self {
        self.plain_port = Some(port);
        self
    }

    /// Any other global configuration line.
    pub fn conf(mut self, line: &str) -> Self {
        self.extra.push(line.into());
        self
    }
}

/// A running (or stopped) Mosquitto with its directory, ports and configuration.
pub struct Broker {
    /// Port of the plain listener (always present).
    pub plain_port: u16,
    /// Port of the TLS listener, when configured.
    pub tls_port: Option<u16>,
    dir: TempDir,
    conf_path: PathBuf,
    ports: Vec<u16>,
    child: Option<Child>,
}

fn mosquitto_passwd(file: &Path, users: &[(String, String)]) {
    let text: String = users.iter().map(|(u, p)| format!("{u}:{p}\n")).collect();
    std::fs::write(file, text).unwrap();
    let status = Command::new("mosquitto_passwd")
        .arg("-U")
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("mosquitto_passwd is installed (apt-get install mosquitto)");
    assert!(status.success(), "mosquitto_passwd -U failed");
}

impl Broker {
    /// Starts Mosquitto with `cfg` and waits until every listener accepts connections.
    pub fn start(cfg: BrokerConfig) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let plain_port = cfg.plain_port.unwrap_or_else(free_port);
        let tls_port = cfg.tls.as_ref().map(|_| free_port());
        let mut conf = vec![
            "user root".to_string(),
            format!("log_dest file {}", d.join("mosquitto.log").display()),
            "log_type all".into(),
            "connection_messages true".into(),
            format!("allow_anonymous {}", cfg.users.is_empty()),
            format!("persistence {}", cfg.persistence),
            format!("persistence_location {}/", d.display()),
        ];
        if !cfg.users.is_empty() {
            let f = d.join("passwd");
            mosquitto_passwd(&f, &cfg.users);
            conf.push(format!("password_file {}", f.display()));
        }
        if let Some(acl) = &cfg.acl {
            let f = d.join("acl");
            std::fs::write(&f, acl).unwrap();
            conf.push(format!("acl_file {}", f.display()));
        }
        conf.extend(cfg.extra.iter().cloned());
        conf.push(format!("listener {plain_port} 127.0.0.1"));
        if let (Some(port), Some((ca, crt, key))) = (tls_port, &cfg.tls) {
            conf.push(format!("listener {port} 127.0.0.1"));
            conf.push(format!("cafile {}", ca.display()));
            conf.push(format!("certfile {}", crt.display()));
            conf.push(format!("keyfile {}", key.display()));
            conf.push(format!("require_certificate {}", cfg.require_certificate));
            if cfg.use_identity_as_username {
                conf.push("use_identity_as_username true".into());
            }
        }
        let conf_path = d.join("mosquitto.conf");
        std::fs::write(&conf_path, conf.join("\n") + "\n").unwrap();
        let mut ports = vec![plain_port];
        ports.extend(tls_port);
        let mut b = Broker {
            plain_port,
            tls_port,
            dir,
            conf_path,
            ports,
            child: None,
        };
        b.start_again();
        b
    }

    /// Starts Mosquitto from a complete configuration text that listens on `ports`.
    pub fn start_raw(conf_text: &str, ports: &[u16]) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let conf_path = dir.path().join("mosquitto.conf");
        std::fs::write(&conf_path, conf_text).unwrap();
        let mut b = Broker {
            plain_port: ports[0],
            tls_port: ports.get(1).copied(),
            dir,
            conf_path,
            ports: ports.to_vec(),
            child: None,
        };
        b.start_again();
        b
    }

    /// (Re)starts the broker with the same configuration, ports and persistence.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto is installed (apt-get install mosquitto)");
        self.child = Some(child);
        let ports = self.ports.clone();
        let up = wait_until(Duration::from_secs(10), || {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return true;
            }
            ports
                .iter()
                .all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok())
        });
        if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
            let mut stderr = String::new();
            if let Some(mut e) = self.child.take().and_then(|mut c| c.stderr.take()) {
                use std::io::Read;
                let _ = e.read_to_string(&mut stderr);
            }
            panic!(
                "mosquitto exited at start ({status}): {stderr}\nlog:\n{}\nconfig:\n{}",
                self.log(),
                std::fs::read_to_string(&self.conf_path).unwrap_or_default()
            );
        }
        assert!(
            up,
            "mosquitto did not listen on {:?} within 10 s; log:\n{}",
            self.ports,
            self.log()
        );
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    fn reap(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait: Mosquitto saves its persistence file on the way out.
    pub fn stop(&mut self) {
        self.signal(libc::SIGTERM);
        self.reap();
    }

    /// SIGKILL and wait: whatever was not saved is gone.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        self.reap();
    }

    /// SIGSTOP: the sockets stay open but nothing answers (a dead network, for keepalive tests).
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`Broker::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// SIGHUP: re-reads the password and ACL files.
    pub fn reload(&self) {
        self.signal(libc::SIGHUP);
    }

    /// Rewrites the password file with these users (takes effect on [`Broker::reload`]).
    pub fn set_users(&self, users: &[(&str, &str)]) {
        let users: Vec<(String, String)> = users
            .iter()
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .collect();
        mosquitto_passwd(&self.dir.path().join("passwd"), &users);
    }

    /// The broker's directory (config, log, persistence).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What Mosquitto logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    fn fast_reconnect() -> Vec<(String, String)> {
        vec![
            ("MQTT_RECONNECT_MIN_DELAY".into(), "0.2".into()),
            ("MQTT_RECONNECT_MAX_DELAY".into(), "1".into()),
            ("MQTT_KEEPALIVE".into(), "5".into()),
        ]
    }

    /// Variables that point a client at the plain listener, with fast reconnects.
    pub fn env_plain(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("MQTT_BROKER_HOST".into(), "127.0.0.1".into()),
            ("MQTT_BROKER_PORT".into(), self.plain_port.to_string()),
            ("MQTT_USE_TLS".into(), "false".into()),
        ];
        env.extend(Self::fast_reconnect());
        env
    }

    /// Variables that point a client at the TLS listener (host `localhost`) trusting `pki`'s CA.
    pub fn env_tls(&self, pki: &Pki) -> Vec<(String, String)> {
        let mut env = vec![
            ("MQTT_BROKER_HOST".into(), "localhost".into()),
            (
                "MQTT_BROKER_PORT".into(),
                self.tls_port.expect("a TLS listener").to_string(),
            ),
            ("MQTT_USE_TLS".into(), "true".into()),
            ("MQTT_CA_CERTS".into(), pki.ca_crt.display().to_string()),
        ];
        env.extend(Self::fast_reconnect());
        env
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}
