//! What a test broker offers ([`BrokerConfig`]) and the Mosquitto configuration text
//! it becomes, with its password and ACL files.

use crate::error::{write_err, Error, Result};
use crate::pki::Pki;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What the broker should offer. Start from [`BrokerConfig::new`] and add.
#[derive(Clone, Debug, Default)]
pub struct BrokerConfig {
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
    require_certificate: bool,
    use_identity_as_username: bool,
    users: Vec<(String, String)>,
    acl: Option<String>,
    persistence: bool,
    quiet: bool,
    extra: Vec<String>,
    pub(crate) plain_port: Option<u16>,
    pub(crate) tls_port: Option<u16>,
    pub(crate) dir: Option<PathBuf>,
    pub(crate) open_files: Option<u64>,
}

impl BrokerConfig {
    /// A plain listener on a free loopback port, anonymous access allowed, everything logged.
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

    /// The TLS listener (see [`BrokerConfig::tls`]) on this port instead of a fresh one.
    pub fn tls_port(mut self, port: u16) -> Self {
        self.tls_port = Some(port);
        self
    }

    /// Any other global configuration line (limits, `autosave_interval 1`, ...).
    pub fn conf(mut self, line: &str) -> Self {
        self.extra.push(line.into());
        self
    }

    /// Logs only errors and warnings, no connection messages: under load, logging
    /// every connection would measure the log, not the broker. Tests that read the
    /// log ([`crate::Broker::log`]) leave this off.
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    /// Writes configuration, log and persistence into `dir` (created, and kept after
    /// the broker ends) instead of a temporary directory.
    pub fn dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// Starts Mosquitto with this soft open-file limit, or the hard limit when that is
    /// lower (a container may cap it): thousands of clients need more than the usual 1,024.
    pub fn open_files(mut self, limit: u64) -> Self {
        self.open_files = Some(limit);
        self
    }

    /// Whether a TLS listener is configured.
    pub(crate) fn has_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The configuration text for a broker in `dir` on these ports; writes the
    /// password and ACL files it names into `dir`.
    pub(crate) fn render(
        &self,
        dir: &Path,
        plain_port: u16,
        tls_port: Option<u16>,
    ) -> Result<String> {
        let mut conf = vec![
            // Tests run as root; Mosquitto would otherwise drop to a user that cannot read the keys.
            "user root".to_string(),
            format!("log_dest file {}", dir.join("mosquitto.log").display()),
        ];
        if self.quiet {
            conf.push("log_type error".into());
            conf.push("log_type warning".into());
            conf.push("connection_messages false".into());
        } else {
            conf.push("log_type all".into());
            conf.push("connection_messages true".into());
        }
        conf.push(format!("allow_anonymous {}", self.users.is_empty()));
        conf.push(format!("persistence {}", self.persistence));
        conf.push(format!("persistence_location {}/", dir.display()));
        if !self.users.is_empty() {
            let f = dir.join("passwd");
            mosquitto_passwd(&f, &self.users)?;
            conf.push(format!("password_file {}", f.display()));
        }
        if let Some(acl) = &self.acl {
            let f = dir.join("acl");
            std::fs::write(&f, acl).map_err(write_err(&f))?;
            conf.push(format!("acl_file {}", f.display()));
        }
        conf.extend(self.extra.iter().cloned());
        conf.push(format!("listener {plain_port} 127.0.0.1"));
        if let (Some(port), Some((ca, crt, key))) = (tls_port, &self.tls) {
            conf.push(format!("listener {port} 127.0.0.1"));
            conf.push(format!("cafile {}", ca.display()));
            conf.push(format!("certfile {}", crt.display()));
            conf.push(format!("keyfile {}", key.display()));
            conf.push(format!("require_certificate {}", self.require_certificate));
            if self.use_identity_as_username {
                conf.push("use_identity_as_username true".into());
            }
        }
        Ok(conf.join("\n") + "\n")
    }
}

/// Writes `users` to `file` and hashes it in place with `mosquitto_passwd -U`.
pub(crate) fn mosquitto_passwd(file: &Path, users: &[(String, String)]) -> Result<()> {
    let text: String = users.iter().map(|(u, p)| format!("{u}:{p}\n")).collect();
    std::fs::write(file, text).map_err(write_err(file))?;
    let status = Command::new("mosquitto_passwd")
        .arg("-U")
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|source| Error::Spawn {
            program: "mosquitto_passwd".into(),
            source,
        })?;
    if !status.success() {
        return Err(Error::Passwd {
            file: file.to_path_buf(),
            status,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_tls_config_logs_only_problems_and_lists_both_listeners() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::try_in(&dir.path().join("certs")).unwrap();
        let text = BrokerConfig::new()
            .tls(&pki)
            .quiet()
            .conf("max_inflight_messages 7")
            .render(dir.path(), 1883, Some(8883))
            .unwrap();
        assert!(!text.contains("log_type all"), "{text}");
        assert!(
            text.contains("log_type error\nlog_type warning\n"),
            "{text}"
        );
        assert!(text.contains("connection_messages false"), "{text}");
        assert!(text.contains("allow_anonymous true"), "{text}");
        let extra = text.find("max_inflight_messages 7").unwrap();
        let plain = text.find("listener 1883 127.0.0.1").unwrap();
        let tls = text.find("listener 8883 127.0.0.1").unwrap();
        assert!(extra < plain && plain < tls, "{text}");
        assert!(text.contains(&format!("cafile {}", pki.ca_crt.display())));
        assert!(text.contains("require_certificate false"), "{text}");
    }

    #[test]
    fn plain_config_logs_everything_and_has_no_tls_listener() {
        let dir = tempfile::tempdir().unwrap();
        let text = BrokerConfig::new()
            .persistence(true)
            .render(dir.path(), 1883, None)
            .unwrap();
        assert!(
            text.contains("log_type all\nconnection_messages true\n"),
            "{text}"
        );
        assert!(text.contains("persistence true"), "{text}");
        assert_eq!(text.matches("listener ").count(), 1, "{text}");
        assert!(!text.contains("cafile"), "{text}");
    }
}
