//! A real Mosquitto on free loopback ports, started from a [`BrokerConfig`] (or a
//! complete configuration text), stopped, killed, paused, resumed or restarted on
//! demand, and killed when dropped.

use crate::config::{mosquitto_passwd, BrokerConfig};
use crate::dir::Dir;
use crate::error::{write_err, Error, Result};
use crate::pki::Pki;
use crate::process::{die_with_parent, free_port, wait_until};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running (or stopped) Mosquitto with its directory, ports and configuration.
pub struct Broker {
    /// Port of the plain listener (always present).
    pub plain_port: u16,
    /// Port of the TLS listener, when configured.
    pub tls_port: Option<u16>,
    dir: Dir,
    conf_path: PathBuf,
    ports: Vec<u16>,
    open_files: Option<u64>,
    child: Option<Child>,
}

impl Broker {
    /// Starts Mosquitto with `cfg` and waits until every listener accepts connections;
    /// panics with Mosquitto's own words when it cannot.
    pub fn start(cfg: BrokerConfig) -> Broker {
        Self::try_start(cfg).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Broker::start`] that returns the failure instead of panicking.
    pub fn try_start(cfg: BrokerConfig) -> Result<Broker> {
        let dir = match &cfg.dir {
            Some(d) => Dir::given(d).map_err(write_err(d))?,
            None => Dir::temp().map_err(write_err(std::env::temp_dir()))?,
        };
        let plain_port = cfg.plain_port.unwrap_or_else(free_port);
        let tls_port = cfg
            .has_tls()
            .then(|| cfg.tls_port.unwrap_or_else(free_port));
        let text = cfg.render(dir.path(), plain_port, tls_port)?;
        let mut ports = vec![plain_port];
        ports.extend(tls_port);
        Self::launch(dir, &text, &ports, cfg.open_files)
    }

    /// Starts Mosquitto from a complete configuration text that listens on `ports`
    /// (the first is taken as the plain port, the second as the TLS port).
    pub fn start_raw(conf_text: &str, ports: &[u16]) -> Broker {
        Dir::temp()
            .map_err(write_err(std::env::temp_dir()))
            .and_then(|dir| Self::launch(dir, conf_text, ports, None))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn launch(dir: Dir, conf_text: &str, ports: &[u16], open_files: Option<u64>) -> Result<Broker> {
        let conf_path = dir.path().join("mosquitto.conf");
        std::fs::write(&conf_path, conf_text).map_err(write_err(&conf_path))?;
        let mut b = Broker {
            plain_port: ports[0],
            tls_port: ports.get(1).copied(),
            dir,
            conf_path,
            ports: ports.to_vec(),
            open_files,
            child: None,
        };
        b.try_start_again()?;
        Ok(b)
    }

    /// (Re)starts the broker with the same configuration, ports and persistence.
    pub fn start_again(&mut self) {
        self.try_start_again().unwrap_or_else(|e| panic!("{e}"));
    }

    /// [`Broker::start_again`] that returns the failure instead of panicking.
    pub fn try_start_again(&mut self) -> Result<()> {
        assert!(self.child.is_none(), "broker already running");
        let (program, mut cmd) = match self.open_files {
            Some(n) => {
                let mut cmd = Command::new("sh");
                cmd.arg("-c").arg(self.ulimit_script(n));
                ("sh", cmd)
            }
            None => {
                let mut cmd = Command::new("mosquitto");
                cmd.arg("-c").arg(&self.conf_path);
                ("mosquitto", cmd)
            }
        };
        let child = die_with_parent(&mut cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| Error::Spawn {
                program: program.into(),
                source,
            })?;
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
            return Err(Error::Exited {
                status,
                stderr,
                log: self.log(),
                config: self.config_text(),
            });
        }
        if !up {
            self.kill();
            return Err(Error::NotListening {
                ports: self.ports.clone(),
                log: self.log(),
            });
        }
        Ok(())
    }

    /// Raises the open-file limit, then becomes Mosquitto (same pid).
    fn ulimit_script(&self, limit: u64) -> String {
        format!(
            "ulimit -n {limit} 2>/dev/null || ulimit -n $(ulimit -Hn); exec mosquitto -c \"{}\"",
            self.conf_path.display()
        )
    }

    /// The command that starts the broker, as a shell line anyone can rerun.
    pub fn command_line(&self) -> String {
        match self.open_files {
            Some(n) => format!("sh -c '{}'", self.ulimit_script(n)),
            None => format!("mosquitto -c {}", self.conf_path.display()),
        }
    }

    /// The configuration text.
    pub fn config_text(&self) -> String {
        std::fs::read_to_string(&self.conf_path).unwrap_or_default()
    }

    /// The broker's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) has no memory effects; the pid is our own child's.
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

    /// [`Broker::stop`] then [`Broker::start_again`]: same ports, same persistence.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
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
        mosquitto_passwd(&self.dir.path().join("passwd"), &users).unwrap_or_else(|e| panic!("{e}"));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// (soft, hard) open-file limits of a process (`self` for this one).
    fn limits_of(pid: &str) -> (String, String) {
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        let f: Vec<&str> = line.split_whitespace().collect();
        (f[3].to_string(), f[4].to_string())
    }

    #[test]
    fn a_raised_open_file_limit_survives_a_restart_on_the_same_port() {
        let mut b = Broker::start(BrokerConfig::new().quiet().open_files(2048));
        assert!(b.command_line().starts_with("sh -c 'ulimit -n 2048 "));
        let (port, pid) = (b.plain_port, b.pid().unwrap());
        let hard = limits_of("self").1;
        let want = match hard.parse::<u64>() {
            Ok(h) if h < 2048 => hard,
            _ => "2048".to_string(),
        };
        assert_eq!(limits_of(&pid.to_string()).0, want);
        b.restart();
        assert_ne!(b.pid().unwrap(), pid);
        assert_eq!(b.plain_port, port);
        assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
        b.kill();
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    }

    #[test]
    fn a_bad_line_is_an_error_with_the_config() {
        let err = match Broker::try_start(BrokerConfig::new().conf("no_such_option 1")) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("mosquitto accepted an unknown option"),
        };
        assert!(err.contains("no_such_option 1"), "{err}");
    }
}
