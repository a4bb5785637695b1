//! The command line of device-sim (clap derive; the doc comments are the `--help` text)
//! and its resolution into connection settings and a fleet config.

use crate::fleet::FleetConfig;
use clap::Parser;
use mqtt_core::settings::parse_duration;
use mqtt_core::{ConnectionArgs, Settings, SettingsError};
use std::path::PathBuf;
use std::time::Duration;

/// Simulates a fleet of vehicles that send telemetry to an MQTT broker.
///
/// Every vehicle is its own MQTT connection (client id = device id) inside this one
/// process and publishes a JSON reading to device/data/{device_id} with QoS 1. Each
/// message is first written to an offline queue (SQLite) and removed only when the
/// broker acknowledges it, so nothing is lost while the broker is down or when the
/// simulator is stopped: the next run delivers the rest first.
///
/// Connection settings (broker, TLS, user name, ...) come from MQTT_* variables in
/// the environment or in ./.env, listed below; docs/reference.md describes each.
#[derive(Debug, Parser)]
#[command(name = "device-sim", version, about, long_about, after_help = mqtt_core::help::after_help(&[
    ("DEVICE_SIM_METRICS_ADDR", "HOST:PORT of /metrics, /healthz, /readyz (--metrics-addr wins) [off]"),
]))]
pub struct Cli {
    /// `--env-file` and the other connection arguments both binaries share.
    #[command(flatten)]
    pub connection: ConnectionArgs,

    /// How many vehicles to simulate, each with its own connection
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub count: u32,

    /// Device ids are this prefix plus a number from 1, at least two digits (vehicle_01, vehicle_02, ...)
    #[arg(long, default_value = "vehicle_", value_name = "P")]
    pub id_prefix: String,

    /// Time between two messages of one vehicle, like 200ms, 1s or 2m
    #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = positive_duration)]
    pub interval: Duration,

    /// Each vehicle stops after it has generated M messages in this run and none of them
    /// is left in the queue (each acknowledged by the broker, or evicted by --queue-limit);
    /// without it: run until --duration or Ctrl-C
    #[arg(long, value_name = "M")]
    pub messages: Option<u64>,

    /// Stop the whole run after this time, like 30s or 1h; unacknowledged messages stay
    /// queued for the next run
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// The offline queue: an SQLite file shared by all vehicles, created if missing
    #[arg(long, default_value = "device-sim-queue.db", value_name = "PATH")]
    pub queue: PathBuf,

    /// Most undelivered messages kept per vehicle; past it the oldest are dropped
    /// (counted and logged)
    #[arg(long, default_value_t = 10_000, value_name = "L",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub queue_limit: u64,

    /// Seed of the vehicle model: the same seed gives the same readings (default: random, logged at start)
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,

    /// Also publish every message on the legacy topic vehicle/speed/{device_id}
    #[arg(long)]
    pub legacy_topic: bool,

    /// New connections per second at start, so a large fleet does not hit the broker all at once
    #[arg(long, default_value_t = 500.0, value_name = "R", value_parser = positive_rate)]
    pub connect_rate: f64,

    /// Most messages per vehicle sent and waiting for the broker's acknowledgement
    #[arg(long, default_value_t = 10, value_name = "W",
          value_parser = clap::value_parser!(u16).range(1..=40))]
    pub window: u16,

    /// Time between two status lines
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = positive_duration)]
    pub status_interval: Duration,

    /// Serve /metrics (Prometheus), /healthz and /readyz over HTTP on HOST:PORT, e.g. 127.0.0.1:9465 (off by default; a non-loopback address is logged as exposed) [env: DEVICE_SIM_METRICS_ADDR]
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
}

/// Variables device-sim reads besides the connection's `MQTT_*` ones.
pub const VARIABLES: &[&str] = &["DEVICE_SIM_METRICS_ADDR"];

/// The target these lines had when `main.rs` logged them, so log readers see no change.
const LOG_TARGET: &str = "device_sim";

impl Cli {
    /// The connection settings: `MQTT_*` from the environment over the `.env` file.
    pub fn settings(&self) -> Result<Settings, SettingsError> {
        let env = self.connection.env()?;
        // MQTT_TOPICS is the collector's; one .env may serve both binaries.
        let mut known = mqtt_core::settings::VARIABLES.to_vec();
        known.push("MQTT_TOPICS");
        known.extend(VARIABLES);
        mqtt_core::settings::warn_unknown_variables(&env, &["MQTT_", "DEVICE_SIM_"], &known);
        if env.get("MQTT_CLIENT_ID").is_some() {
            tracing::warn!(target: LOG_TARGET, "MQTT_CLIENT_ID is ignored by device-sim: each device connects with its device id as client id");
        }
        Settings::from_env(&env)
    }

    /// The metrics endpoint's address: the flag, else `DEVICE_SIM_METRICS_ADDR`; an
    /// empty value is off.
    pub fn metrics_addr(&self) -> Result<Option<String>, SettingsError> {
        let flag = self.metrics_addr.clone();
        let addr = match flag {
            Some(a) => Some(a),
            None => self
                .connection
                .env()?
                .get("DEVICE_SIM_METRICS_ADDR")
                .map(str::to_string),
        };
        Ok(addr.filter(|a| !a.trim().is_empty()))
    }

    /// What the fleet is asked to do; without `--seed`, a random one.
    pub fn fleet_config(self) -> FleetConfig {
        FleetConfig {
            count: self.count,
            id_prefix: self.id_prefix,
            interval: self.interval,
            messages: self.messages,
            duration: self.duration,
            queue: self.queue,
            queue_limit: self.queue_limit,
            seed: self.seed.unwrap_or_else(rand::random),
            legacy_topic: self.legacy_topic,
            connect_rate: self.connect_rate,
            window: self.window,
            status_interval: self.status_interval,
        }
    }
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

fn positive_rate(s: &str) -> Result<f64, String> {
    // Below one connection in 1000 s the ramp would outlast any run; above a
    // million per second it is no ramp at all.
    match s.trim().parse::<f64>() {
        Ok(r) if (0.001..=1_000_000.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "{s:?} is not a number of connections per second from 0.001 to 1000000"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_lists_every_variable_the_exit_codes_and_rust_log() {
        let help = Cli::command().render_help().to_string();
        for var in mqtt_core::settings::VARIABLES.iter().chain(VARIABLES) {
            assert!(help.contains(var), "{var} missing from --help:\n{help}");
        }
        for needle in ["RUST_LOG", "Exit codes", "3  permanent"] {
            assert!(
                help.contains(needle),
                "{needle:?} missing from --help:\n{help}"
            );
        }
    }

    #[test]
    fn defaults_match_the_contract() {
        let cli = Cli::parse_from(["device-sim"]);
        assert_eq!(cli.count, 1);
        assert_eq!(cli.id_prefix, "vehicle_");
        assert_eq!(cli.interval, Duration::from_secs(1));
        assert_eq!(cli.queue, PathBuf::from("device-sim-queue.db"));
        assert_eq!(cli.queue_limit, 10_000);
        assert_eq!(cli.window, 10);
    }

    #[test]
    fn the_fleet_config_takes_every_flag() {
        let cli = Cli::parse_from([
            "device-sim",
            "--count",
            "3",
            "--seed",
            "7",
            "--messages",
            "5",
            "--legacy-topic",
            "--window",
            "4",
        ]);
        let cfg = cli.fleet_config();
        assert_eq!((cfg.count, cfg.seed, cfg.messages), (3, 7, Some(5)));
        assert!(cfg.legacy_topic);
        assert_eq!(cfg.window, 4);
        assert_eq!(cfg.status_interval, Duration::from_secs(5));
    }

    #[test]
    fn bad_values_are_refused() {
        for args in [
            &["device-sim", "--count", "0"][..],
            &["device-sim", "--interval", "0s"],
            &["device-sim", "--interval", "soon"],
            &["device-sim", "--connect-rate", "-1"],
            &["device-sim", "--connect-rate", "1e-300"],
            &["device-sim", "--interval", "99999999999999999h"],
            &["device-sim", "--duration", "99999999999999999h"],
            &["device-sim", "--window", "1000"],
            &["device-sim", "--queue-limit", "0"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }
}
