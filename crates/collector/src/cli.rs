//! The command line of `collector` (clap derive; the doc comments are the help text)
//! and its resolution, with `COLLECTOR_DB` and `MQTT_TOPICS`, into an ingest config.

use clap::{Args, Parser, Subcommand, ValueEnum};
use mqtt_core::settings::parse_duration;
use mqtt_core::{ConnectionArgs, Env};
use std::path::PathBuf;
use std::time::Duration;

/// Subscribes to device telemetry over MQTT (QoS 1 by default, persistent session),
/// validates every message, stores it in SQLite and acknowledges it only once it is
/// committed.
///
/// Connection settings come from MQTT_* variables (process environment over ./.env),
/// listed below; docs/reference.md describes each, env.example shows a working file.
#[derive(Debug, Parser)]
#[command(
    name = "collector",
    version,
    about,
    long_about,
    after_help = after_help(),
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// The subcommand; none runs the collector.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The arguments of the collector itself.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands; without one, the collector runs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Summarise a collector database: per device count, first/last seen, seq gaps; latency; duplicates; rejections
    Stats(StatsArgs),
    /// Write a development CA, server and client certificates for TLS
    Certgen(crate::certgen::CertgenArgs),
}

/// Arguments of the collector itself.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// `--env-file` and the other connection arguments both binaries share.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// SQLite database to write (created if missing) [env: COLLECTOR_DB; default collector.db]
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// Topic filter to subscribe to (repeatable); replaces the default device/data/+ and vehicle/speed/+ [env: MQTT_TOPICS, comma separated]
    #[arg(long = "topic", value_name = "FILTER")]
    pub topics: Vec<String>,
    /// Most messages committed in one transaction
    #[arg(long, value_name = "N", default_value_t = 250, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
    /// Longest time a batch stays open while messages keep arriving (a batch is committed at once when no more input is waiting)
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = parse_duration)]
    pub flush_interval: Duration,
    /// Durability of each commit: normal survives a crash of the collector, full also a power loss (slower)
    #[arg(long, value_enum, default_value_t = SyncArg::Normal)]
    pub sync: SyncArg,
    /// Largest payload accepted, in bytes; larger ones are rejected
    #[arg(long, value_name = "BYTES", default_value_t = crate::validate::DEFAULT_MAX_PAYLOAD)]
    pub max_payload: usize,
    /// How often to log a status line
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub status_interval: Duration,
    /// Create this file while the broker has confirmed the subscriptions on a live connection, and remove it otherwise: start devices once it exists, or use it as a healthcheck [env: COLLECTOR_READY_FILE]
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
}

/// Variables the collector reads besides the connection's `MQTT_*` ones.
pub const VARIABLES: &[&str] = &["MQTT_TOPICS", "COLLECTOR_DB", "COLLECTOR_READY_FILE"];

/// The end of `--help`: every variable, the exit codes, logging.
pub fn after_help() -> String {
    mqtt_core::help::after_help(&[
        (
            "MQTT_TOPICS",
            "topic filters, comma separated (--topic wins) [device/data/+,vehicle/speed/+]",
        ),
        ("COLLECTOR_DB", "SQLite database (--db wins) [collector.db]"),
        (
            "COLLECTOR_READY_FILE",
            "readiness file (--ready-file wins) [none]",
        ),
    ])
}

/// The readiness file: the flag, else `COLLECTOR_READY_FILE`.
pub fn ready_file(flag: Option<&PathBuf>, env: &Env) -> Option<PathBuf> {
    flag.cloned()
        .or_else(|| env.get("COLLECTOR_READY_FILE").map(PathBuf::from))
}

/// `--sync` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SyncArg {
    /// synchronous=NORMAL: a commit survives a crash of the process
    Normal,
    /// synchronous=FULL: a commit survives a power loss too
    Full,
}

/// Arguments of `collector stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Database to read [env: COLLECTOR_DB; default collector.db]
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// Read COLLECTOR_DB from this file instead of ./.env
    #[arg(long, value_name = "PATH")]
    pub env_file: Option<PathBuf>,
}

/// The database path: the flag, else `COLLECTOR_DB`, else `collector.db`.
pub fn db_path(flag: Option<&PathBuf>, env: &Env) -> PathBuf {
    flag.cloned()
        .or_else(|| env.get("COLLECTOR_DB").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("collector.db"))
}

/// The topic filters: the flags, else `MQTT_TOPICS`, else the contract's default.
pub fn topics(flags: &[String], env: &Env) -> Result<Vec<String>, String> {
    let list: Vec<String> = if !flags.is_empty() {
        flags.iter().map(|t| t.trim().to_string()).collect()
    } else if let Some(v) = env.get("MQTT_TOPICS") {
        v.split(',')
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect()
    } else {
        mqtt_core::message::DEFAULT_TOPICS
            .iter()
            .map(|t| t.to_string())
            .collect()
    };
    if list.is_empty() {
        return Err("MQTT_TOPICS names no topic filter".into());
    }
    for t in &list {
        if !valid_filter(t) {
            return Err(format!(
                "{t:?} is not a valid MQTT topic filter (+ and # must fill a whole level, # only at the end)"
            ));
        }
    }
    Ok(list)
}

fn valid_filter(f: &str) -> bool {
    if f.is_empty() || f.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = f.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| match *l {
        "#" => i == levels.len() - 1,
        "+" => true,
        l => !l.contains('#') && !l.contains('+'),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_lists_every_variable_the_exit_codes_and_rust_log() {
        let help = Cli::command().render_help().to_string();
        for var in mqtt_core::settings::VARIABLES.iter().chain(VARIABLES) {
            assert!(help.contains(var), "{var} missing from --help:\n{help}");
        }
        for needle in ["RUST_LOG", "Exit codes", "0 ", "1 ", "2 ", "3 "] {
            assert!(
                help.contains(needle),
                "{needle:?} missing from --help:\n{help}"
            );
        }
    }

    #[test]
    fn topics_from_flags_env_or_default() {
        let env = Env::from_pairs([("MQTT_TOPICS", "a/+, b/#")]);
        assert_eq!(topics(&[], &env).unwrap(), ["a/+", "b/#"]);
        assert_eq!(topics(&["x/y".into()], &env).unwrap(), ["x/y"]);
        let empty = Env::default();
        assert_eq!(
            topics(&[], &empty).unwrap(),
            ["device/data/+", "vehicle/speed/+"]
        );
        assert!(topics(&["a/#/b".into()], &empty).is_err());
        assert!(topics(&["a+".into()], &empty).is_err());
        assert!(topics(&[], &Env::from_pairs([("MQTT_TOPICS", " , ")])).is_err());
    }

    #[test]
    fn db_from_flag_env_or_default() {
        let env = Env::from_pairs([("COLLECTOR_DB", "/data/c.db")]);
        assert_eq!(db_path(None, &env), PathBuf::from("/data/c.db"));
        assert_eq!(
            db_path(Some(&PathBuf::from("x.db")), &env),
            PathBuf::from("x.db")
        );
        assert_eq!(
            db_path(None, &Env::default()),
            PathBuf::from("collector.db")
        );
    }

    #[test]
    fn parses_durations_and_subcommands() {
        let cli = Cli::try_parse_from(["collector", "--flush-interval", "50ms", "--sync", "full"])
            .unwrap();
        assert_eq!(cli.run.flush_interval, Duration::from_millis(50));
        assert_eq!(cli.run.sync, SyncArg::Full);
        assert!(Cli::try_parse_from(["collector", "--flush-interval", "soon"]).is_err());
        let cli = Cli::try_parse_from(["collector", "stats", "--db", "x.db", "--json"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Stats(StatsArgs { json: true, .. }))
        ));
        let cli = Cli::try_parse_from(["collector", "certgen", "--out", "/tmp/x"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Certgen(_))));
    }
}
