//! Connection settings from `MQTT_*` variables, validated once, before any connection.
//!
//! Precedence: command-line flag, then the process environment, then `.env` (or the
//! file named by `--env-file`). Every error names the variable and the value it
//! had (never a password) and says what would be accepted.

use crate::tls;
use rumqttc::{MqttOptions, QoS, TlsConfiguration, Transport};
use secrecy::{ExposeSecret, SecretString};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Every variable the connection layer reads; the binaries read a few more of their own.
pub const VARIABLES: &[&str] = &[
    "MQTT_BROKER_HOST",
    "MQTT_BROKER_PORT",
    "MQTT_CLIENT_ID",
    "MQTT_USE_TLS",
    "MQTT_TLS_INSECURE",
    "MQTT_CA_CERTS",
    "MQTT_CERTFILE",
    "MQTT_KEYFILE",
    "MQTT_USERNAME",
    "MQTT_PASSWORD",
    "MQTT_KEEPALIVE",
    "MQTT_QOS",
    "MQTT_CLEAN_SESSION",
    "MQTT_RECONNECT_MIN_DELAY",
    "MQTT_RECONNECT_MAX_DELAY",
];

/// Why the settings cannot be used. Each message names the variable and how to fix it.
// The #[error] text of each variant says what every field holds.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A variable has a value that cannot be parsed or is out of range.
    #[error("{var}={value:?} is not valid: expected {expected}")]
    Invalid {
        var: &'static str,
        value: String,
        expected: &'static str,
    },
    /// The env file named on the command line is missing or malformed.
    #[error("cannot load the env file {path}: {reason}")]
    EnvFile { path: PathBuf, reason: String },
    /// Only one of a pair of variables that go together is set.
    #[error("{given} is set but {missing} is not: {why}")]
    Incomplete {
        given: &'static str,
        missing: &'static str,
        why: &'static str,
    },
    /// The TLS files or configuration cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Variables from `.env` (or `--env-file`) overlaid by the process environment.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    /// Loads `env_file` if given (it must exist), else `./.env` if present, then the process environment.
    pub fn load(env_file: Option<&Path>) -> Result<Env, SettingsError> {
        let mut env = Env::default();
        let file = match env_file {
            Some(p) => Some(p.to_path_buf()),
            None => Some(PathBuf::from(".env")).filter(|p| p.is_file()),
        };
        if let Some(path) = file {
            let iter = dotenvy::from_path_iter(&path).map_err(|e| SettingsError::EnvFile {
                path: path.clone(),
                reason: env_file_reason(&e, &path),
            })?;
            for item in iter {
                let (k, v) = item.map_err(|e| SettingsError::EnvFile {
                    path: path.clone(),
                    reason: env_file_reason(&e, &path),
                })?;
                env.vars.insert(k, v);
            }
        }
        env.vars.extend(std::env::vars());
        Ok(env)
    }

    /// An environment made of the given pairs only (for tests and embedding).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Env {
        Env {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The value of `key`; an empty value counts as unset, as Docker env files write them.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// Sets `key`, as a command-line flag does over the environment.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.vars.insert(key.to_string(), value.into());
    }

    /// A boolean variable: `true/false/1/0/yes/no/on/off`, any case.
    pub fn bool(&self, var: &'static str, default: bool) -> Result<bool, SettingsError> {
        match self.get(var) {
            None => Ok(default),
            Some(v) => parse_bool(v).ok_or_else(|| SettingsError::Invalid {
                var,
                value: v.to_string(),
                expected: "true/false, 1/0, yes/no or on/off",
            }),
        }
    }

    /// A parsed variable, with `expected` describing valid values in the error.
    pub fn parse<T: std::str::FromStr>(
        &self,
        var: &'static str,
        expected: &'static str,
    ) -> Result<Option<T>, SettingsError> {
        self.get(var)
            .map(|v| {
                v.parse::<T>().map_err(|_| SettingsError::Invalid {
                    var,
                    value: v.to_string(),
                    expected,
                })
            })
            .transpose()
    }
}

fn env_file_reason(e: &dotenvy::Error, path: &Path) -> String {
    match e {
        dotenvy::Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
            "the file does not exist".to_string()
        }
        // dotenvy quotes the whole line, which may hold a password: name the line
        // by its number and its key only.
        // dotenvy quotes the part of the line it could not parse, which may be a
        // password: name the line by its number and its key only.
        dotenvy::Error::LineParse(fragment, _) => {
            let first = fragment.lines().next().unwrap_or_default().trim();
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let found = text
                .lines()
                .enumerate()
                .find(|(_, l)| !l.trim_start().starts_with('#') && l.contains(first));
            let Some((index, line)) = found else {
                return "a line is not KEY=value: quote values that hold spaces or special characters (KEY=\"a b\"), and start comments with #".into();
            };
            let key = line
                .split_once('=')
                .map(|(k, _)| k.trim().trim_start_matches("export ").trim())
                .filter(|k| !k.is_empty() && !k.contains(char::is_whitespace));
            format!(
                "line {}{} is not KEY=value: quote values that hold spaces or special characters (KEY=\"a b\"), and start comments with #",
                index + 1,
                key.map(|k| format!(" ({k})")).unwrap_or_default()
            )
        }
        other => other.to_string(),
    }
}

/// Keys that look like ours but are read by nobody, each with the closest known
/// name when there is one (`MQTT_BROKER_HOTS` -> `MQTT_BROKER_HOST`): a typo in
/// `.env` would otherwise silently leave the default in force.
pub fn unknown_variables(
    env: &Env,
    prefixes: &[&str],
    known: &[&'static str],
) -> Vec<(String, Option<&'static str>)> {
    env.vars
        .keys()
        .filter(|k| prefixes.iter().any(|p| k.starts_with(p)))
        .filter(|k| !known.contains(&k.as_str()))
        .map(|k| {
            let closest = known
                .iter()
                .map(|c| (strsim::damerau_levenshtein(k, c), *c))
                .filter(|(d, c)| *d <= (c.len() / 4).max(2))
                .min_by_key(|(d, _)| *d)
                .map(|(_, c)| c);
            (k.clone(), closest)
        })
        .collect()
}

/// Logs a warning for every key [`unknown_variables`] finds.
pub fn warn_unknown_variables(env: &Env, prefixes: &[&str], known: &[&'static str]) {
    for (key, closest) in unknown_variables(env, prefixes, known) {
        match closest {
            Some(c) => tracing::warn!("{key} is set but no setting has that name: did you mean {c}? (it is ignored)"),
            None => tracing::warn!("{key} is set but no setting has that name (it is ignored); `--help` lists the variables"),
        }
    }
}

/// Parses the contract's booleans.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// The longest duration any flag or variable takes: longer ones are typing errors,
/// and far larger ones would overflow the clock arithmetic.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Parses a duration written like `50ms`, `1s`, `2m`, `1h30m` (humantime's syntax;
/// a bare number is seconds), up to [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let too_long = || format!("{s:?} is too long (at most 100 years)");
    let d = match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => {
            if secs > MAX_DURATION.as_secs_f64() {
                return Err(too_long());
            }
            Duration::from_secs_f64(secs)
        }
        Ok(_) => return Err(format!("{s:?} is not a duration")),
        Err(_) => humantime::parse_duration(s).map_err(|e| match e {
            humantime::DurationError::NumberOverflow => too_long(),
            humantime::DurationError::UnknownUnit { unit, .. } if !unit.is_empty() => {
                format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")
            }
            _ => format!("{s:?} is not a duration like 500ms, 2s, 1m or 1h30m"),
        })?,
    };
    if d > MAX_DURATION {
        return Err(too_long());
    }
    Ok(d)
}

/// The TLS part of the settings.
#[derive(Clone)]
pub struct TlsSettings {
    /// Skip only the host name check (dev); the chain is still verified.
    pub insecure: bool,
    /// CA file, or `None` for the system roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    pub client_auth: Option<(PathBuf, PathBuf)>,
    /// The built rustls configuration.
    pub config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("insecure", &self.insecure)
            .field("ca_file", &self.ca_file)
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

/// Validated connection settings (contract section 1).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Broker host name or IP.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// `MQTT_CLIENT_ID`, if set; each binary has its own default.
    pub client_id: Option<String>,
    /// TLS, when `MQTT_USE_TLS` is on.
    pub tls: Option<TlsSettings>,
    /// User name.
    pub username: Option<String>,
    /// Password, never printed.
    pub password: Option<SecretString>,
    /// Keepalive interval.
    pub keepalive: Duration,
    /// QoS of publishes and subscriptions.
    pub qos: QoS,
    /// Start a clean session instead of resuming the stored one.
    pub clean_session: bool,
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Largest reconnect delay.
    pub reconnect_max: Duration,
}

impl Settings {
    /// Reads and validates every connection variable from `env`.
    pub fn from_env(env: &Env) -> Result<Settings, SettingsError> {
        let use_tls = env.bool("MQTT_USE_TLS", false)?;
        let insecure = env.bool("MQTT_TLS_INSECURE", false)?;
        let host = env
            .get("MQTT_BROKER_HOST")
            .unwrap_or("localhost")
            .to_string();
        if host.contains(char::is_whitespace) || host.contains('/') {
            return Err(SettingsError::Invalid {
                var: "MQTT_BROKER_HOST",
                value: host,
                expected: "a host name or IP address, without scheme or port",
            });
        }
        let port = match env.parse::<u16>("MQTT_BROKER_PORT", "a port number from 1 to 65535")? {
            Some(0) => {
                return Err(SettingsError::Invalid {
                    var: "MQTT_BROKER_PORT",
                    value: "0".into(),
                    expected: "a port number from 1 to 65535",
                })
            }
            Some(p) => p,
            None if use_tls => 8883,
            None => 1883,
        };
        const KEEPALIVE: &str =
            "whole seconds from 1 to 65535 (0, which turns keepalive off, is refused: \
                                 a dead connection would then never be noticed)";
        let keepalive = match env.parse::<u16>("MQTT_KEEPALIVE", KEEPALIVE)? {
            Some(0) => {
                return Err(SettingsError::Invalid {
                    var: "MQTT_KEEPALIVE",
                    value: "0".into(),
                    expected: KEEPALIVE,
                })
            }
            Some(k) => k,
            None => 60,
        };
        let qos = match env.parse::<u8>("MQTT_QOS", "0, 1 or 2")? {
            None | Some(1) => QoS::AtLeastOnce,
            Some(0) => QoS::AtMostOnce,
            Some(2) => {
                // rumqttc forgets half-done QoS 2 handshakes at a reconnect (a resumed
                // PUBREL then breaks the connection again and again), and a resent
                // publish may reuse a packet id the broker still holds as incomplete.
                // QoS 1 with the collector's (device_id, seq) check stores each reading once.
                tracing::warn!(
                    "MQTT_QOS=2 is used as QoS 1: exactly-once handshakes do not survive a reconnect \
                     in this client; readings are still stored once, since the collector drops \
                     repeated (device_id, seq) pairs"
                );
                QoS::AtLeastOnce
            }
            Some(other) => {
                return Err(SettingsError::Invalid {
                    var: "MQTT_QOS",
                    value: other.to_string(),
                    expected: "0, 1 or 2",
                })
            }
        };
        let clean_session = env.bool("MQTT_CLEAN_SESSION", false)?;
        let reconnect_min = seconds(env, "MQTT_RECONNECT_MIN_DELAY", 1.0)?;
        let reconnect_max = seconds(env, "MQTT_RECONNECT_MAX_DELAY", 120.0)?;
        if reconnect_max < reconnect_min {
            return Err(SettingsError::Invalid {
                var: "MQTT_RECONNECT_MAX_DELAY",
                value: env
                    .get("MQTT_RECONNECT_MAX_DELAY")
                    .unwrap_or("120")
                    .to_string(),
                expected: "a number of seconds not smaller than MQTT_RECONNECT_MIN_DELAY",
            });
        }

        let username = env.get("MQTT_USERNAME").map(str::to_string);
        let password = env
            .get("MQTT_PASSWORD")
            .map(|p| SecretString::from(p.to_string()));
        if password.is_some() && username.is_none() {
            return Err(SettingsError::Incomplete {
                given: "MQTT_PASSWORD",
                missing: "MQTT_USERNAME",
                why: "MQTT sends a password only together with a user name",
            });
        }

        let ca_file = env.get("MQTT_CA_CERTS").map(PathBuf::from);
        let certfile = env.get("MQTT_CERTFILE").map(PathBuf::from);
        let keyfile = env.get("MQTT_KEYFILE").map(PathBuf::from);
        let client_auth = match (certfile, keyfile) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(SettingsError::Incomplete {
                    given: "MQTT_CERTFILE",
                    missing: "MQTT_KEYFILE",
                    why: "mutual TLS needs the client certificate and its private key",
                })
            }
            (None, Some(_)) => {
                return Err(SettingsError::Incomplete {
                    given: "MQTT_KEYFILE",
                    missing: "MQTT_CERTFILE",
                    why: "mutual TLS needs the client certificate and its private key",
                })
            }
        };

        let tls = if use_tls {
            let config = tls::client_config(ca_file.as_deref(), client_auth.as_ref(), insecure)?;
            Some(TlsSettings {
                insecure,
                ca_file,
                client_auth,
                config,
            })
        } else {
            for var in ["MQTT_CA_CERTS", "MQTT_CERTFILE", "MQTT_KEYFILE"] {
                if env.get(var).is_some() {
                    tracing::warn!("{var} is set but MQTT_USE_TLS is off: the connection is plain TCP and {var} is not used");
                }
            }
            None
        };

        Ok(Settings {
            host,
            port,
            client_id: env.get("MQTT_CLIENT_ID").map(str::to_string),
            tls,
            username,
            password,
            keepalive: Duration::from_secs(keepalive.into()),
            qos,
            clean_session,
            reconnect_min,
            reconnect_max,
        })
    }

    /// `host:port`, as error messages name the broker.
    pub fn broker(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// rumqttc options for one connection with this client id.
    pub fn mqtt_options(&self, client_id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(client_id, self.host.clone(), self.port);
        o.set_keep_alive(self.keepalive);
        o.set_clean_session(self.clean_session);
        if let Some(user) = &self.username {
            let pass = self
                .password
                .as_ref()
                .map(|p| p.expose_secret())
                .unwrap_or("");
            o.set_credentials(user.clone(), pass.to_string());
        }
        if let Some(tls) = &self.tls {
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.config.clone(),
            )));
        }
        o
    }
}

fn seconds(env: &Env, var: &'static str, default: f64) -> Result<Duration, SettingsError> {
    let secs = env
        .parse::<f64>(var, "a number of seconds greater than 0")?
        .unwrap_or(default);
    if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0) {
        return Err(SettingsError::Invalid {
            var,
            value: env.get(var).unwrap_or_default().to_string(),
            expected: "a number of seconds greater than 0 and at most 86400",
        });
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Connection flags both binaries embed with `#[command(flatten)]`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConnectionArgs {
    /// Read settings from this file instead of ./.env (the process environment still wins)
    #[arg(long, value_name = "PATH")]
    pub env_file: Option<PathBuf>,
    /// Broker host name or IP [overrides MQTT_BROKER_HOST]
    #[arg(long, value_name = "HOST")]
    pub broker_host: Option<String>,
    /// Broker port [overrides MQTT_BROKER_PORT; default 1883, or 8883 with TLS]
    #[arg(long, value_name = "PORT")]
    pub broker_port: Option<u16>,
}

impl ConnectionArgs {
    /// Loads the environment with these flags applied over it.
    pub fn env(&self) -> Result<Env, SettingsError> {
        let mut env = Env::load(self.env_file.as_deref())?;
        if let Some(h) = &self.broker_host {
            env.set("MQTT_BROKER_HOST", h.clone());
        }
        if let Some(p) = self.broker_port {
            env.set("MQTT_BROKER_PORT", p.to_string());
        }
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        Settings::from_env(&Env::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn defaults_match_the_contract() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.host, "localhost");
        assert_eq!(s.port, 1883);
        assert_eq!(s.keepalive, Duration::from_secs(60));
        assert_eq!(s.qos, QoS::AtLeastOnce);
        assert!(!s.clean_session);
        assert!(s.tls.is_none());
        assert_eq!(s.reconnect_min, Duration::from_secs(1));
        assert_eq!(s.reconnect_max, Duration::from_secs(120));
    }

    #[test]
    fn booleans_accept_every_contract_spelling() {
        for (v, want) in [
            ("TRUE", true),
            ("1", true),
            ("Yes", true),
            ("on", true),
            ("false", false),
            ("0", false),
            ("NO", false),
            ("Off", false),
        ] {
            assert_eq!(parse_bool(v), Some(want), "{v}");
        }
        let err = settings(&[("MQTT_USE_TLS", "maybe")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("MQTT_USE_TLS") && err.contains("maybe"),
            "{err}"
        );
    }

    #[test]
    fn qos_2_is_used_as_qos_1() {
        assert_eq!(
            settings(&[("MQTT_QOS", "2")]).unwrap().qos,
            QoS::AtLeastOnce
        );
        assert_eq!(settings(&[("MQTT_QOS", "0")]).unwrap().qos, QoS::AtMostOnce);
    }

    #[test]
    fn invalid_values_name_variable_and_value() {
        for (var, value) in [
            ("MQTT_BROKER_PORT", "abc"),
            ("MQTT_BROKER_PORT", "70000"),
            ("MQTT_KEEPALIVE", "-1"),
            ("MQTT_QOS", "3"),
            ("MQTT_CLEAN_SESSION", "perhaps"),
            ("MQTT_RECONNECT_MIN_DELAY", "0"),
        ] {
            let err = settings(&[(var, value)]).unwrap_err().to_string();
            assert!(err.contains(var) && err.contains(value), "{err}");
        }
    }

    #[test]
    fn password_never_appears_in_errors_or_debug() {
        let err = settings(&[("MQTT_PASSWORD", "s3cr3t")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("MQTT_USERNAME") && !err.contains("s3cr3t"),
            "{err}"
        );
        let s = settings(&[("MQTT_USERNAME", "u"), ("MQTT_PASSWORD", "s3cr3t")]).unwrap();
        assert!(!format!("{s:?}").contains("s3cr3t"));
    }

    #[test]
    fn half_client_auth_is_rejected() {
        let err = settings(&[("MQTT_USE_TLS", "1"), ("MQTT_CERTFILE", "/x.crt")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("MQTT_KEYFILE"), "{err}");
    }

    #[test]
    fn missing_ca_file_is_reported_with_its_variable() {
        let err = settings(&[("MQTT_USE_TLS", "on"), ("MQTT_CA_CERTS", "/no/such/ca.crt")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("MQTT_CA_CERTS") && err.contains("/no/such/ca.crt"),
            "{err}"
        );
    }

    #[test]
    fn tls_moves_the_default_port() {
        let dir = tempfile::tempdir().unwrap();
        let set = crate::certgen::DevCertificates::generate(&[], &[], 30).unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, &set.ca.cert_pem).unwrap();
        let s = settings(&[
            ("MQTT_USE_TLS", "yes"),
            ("MQTT_CA_CERTS", ca.to_str().unwrap()),
        ])
        .unwrap();
        assert_eq!(s.port, 8883);
        assert!(s.tls.is_some());
    }

    #[test]
    fn durations_parse_like_the_contract() {
        assert_eq!(parse_duration("50ms").unwrap(), Duration::from_millis(50));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("ms").is_err());
    }

    #[test]
    fn env_file_missing_is_an_error_and_environment_wins() {
        let err = Env::load(Some(Path::new("/no/such/.env")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/no/such/.env"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.env");
        std::fs::write(&f, "MQTT_TEST_ONLY_VAR=from-file\nPATH=from-file\n").unwrap();
        let env = Env::load(Some(&f)).unwrap();
        assert_eq!(env.get("MQTT_TEST_ONLY_VAR"), Some("from-file"));
        assert_ne!(env.get("PATH"), Some("from-file"));
    }
    #[test]
    fn keepalive_zero_is_refused() {
        let err = settings(&[("MQTT_KEEPALIVE", "0")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("MQTT_KEEPALIVE") && err.contains("never be noticed"),
            "{err}"
        );
        assert_eq!(
            settings(&[("MQTT_KEEPALIVE", "1")]).unwrap().keepalive,
            Duration::from_secs(1)
        );
    }

    #[test]
    fn absurd_durations_are_errors_not_panics() {
        for s in [
            "99999999999999999h",
            "1e300",
            "18446744073709551616s",
            "101y",
            "1000000h",
            "9999999999999999999999999999ms",
        ] {
            assert!(parse_duration(s).is_err(), "{s}");
        }
        let err = parse_duration("99999999999999999h").unwrap_err();
        assert!(err.contains("too long"), "{err}");
        assert_eq!(
            parse_duration("876000h").unwrap(),
            Duration::from_secs(876_000 * 3600)
        );
    }

    #[test]
    fn unknown_variables_get_a_did_you_mean() {
        let env = Env::from_pairs([
            ("MQTT_BROKER_HOTS", "x"),
            ("MQTT_BROKER_HOST", "y"),
            ("MQTT_SOMETHING_ELSE_ENTIRELY", "z"),
            ("COLLECTOR_DBB", "w"),
            ("HOME", "/root"),
        ]);
        let known: Vec<&'static str> = VARIABLES.iter().copied().chain(["COLLECTOR_DB"]).collect();
        let found = unknown_variables(&env, &["MQTT_", "COLLECTOR_"], &known);
        assert_eq!(
            found,
            [
                ("COLLECTOR_DBB".to_string(), Some("COLLECTOR_DB")),
                ("MQTT_BROKER_HOTS".to_string(), Some("MQTT_BROKER_HOST")),
                ("MQTT_SOMETHING_ELSE_ENTIRELY".to_string(), None),
            ]
        );
    }

    #[test]
    fn a_malformed_env_line_is_named_by_number_without_its_value() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bad.env");
        std::fs::write(
            &f,
            "# comment\nMQTT_BROKER_HOST=localhost\n\nMQTT_PASSWORD=two words s3cr3t\n",
        )
        .unwrap();
        let err = Env::load(Some(&f)).unwrap_err().to_string();
        assert!(err.contains("line 4"), "{err}");
        assert!(err.contains("MQTT_PASSWORD"), "{err}");
        assert!(!err.contains("s3cr3t"), "{err}");
    }
}
