//! The command line of `collector` (clap derive; the doc comments are the help text)
//! and its resolution, with `COLLECTOR_DB` and `MQTT_TOPICS`, into an ingest config.

use clap::{Args, Parser, Subcommand, ValueEnum};
use mqtt_core::settings::parse_duration;
use mqtt_core::{ConnectionArgs, Env};
use std::path::PathBuf;
use std::time::Duration;

/// Subscribes to device telemetry over MQTT (QoS 1 by default, persistent session),
/// validates every message, stores it (SQLite, PostgreSQL, InfluxDB) and acknowledges
/// it only once every store has committed it.
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
    /// GET a URL (e.g. http://127.0.0.1:9464/readyz) and print the answer; exit 0 on 200, else 1: a container healthcheck without curl
    Probe(ProbeArgs),
    /// Retire a member of a share group for good: unsubscribe, store and acknowledge what the broker still holds for its client id, then end its session. Takes the same flags and variables as the collector itself
    Drain(Box<RunArgs>),
}

/// Arguments of `collector probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The http:// URL to GET
    #[arg(value_name = "URL")]
    pub url: String,
    /// Give up after this long
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
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
    /// Batches committed at the same time when PostgreSQL or InfluxDB is a store, each on its own connection to each server, so the server works on one while the next is on its way (acknowledgements still go out in arrival order); always 1 with only SQLite
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub pipeline: u32,
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
    /// Serve /metrics (Prometheus), /healthz and /readyz over HTTP on HOST:PORT, e.g. 127.0.0.1:9464 (off by default; a non-loopback address is logged as exposed) [env: COLLECTOR_METRICS_ADDR]
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
    /// The stores besides SQLite.
    #[command(flatten)]
    pub stores: StoreArgs,
    /// Share the work with the other collectors of this group: every topic filter is subscribed as $share/NAME/FILTER, so the broker gives each message to one member; every member needs its own stable MQTT_CLIENT_ID (default mqtt-collector-HOSTNAME) and a store they all share (--postgres or --influx) [env: COLLECTOR_SHARE_GROUP]
    #[arg(long, value_name = "NAME")]
    pub share_group: Option<String>,
    /// Allow a share group with only a local SQLite file (each member then keeps just its share, and a reading redelivered to another member is stored there again)
    #[arg(long)]
    pub allow_local_store: bool,
}

/// Stores beside (or instead of) SQLite; a message is acknowledged only once every
/// configured store has committed it.
#[derive(Debug, Clone, Default, Args)]
pub struct StoreArgs {
    /// PostgreSQL to write to, e.g. postgresql://user:password@host:5432/db?sslmode=verify-full&sslrootcert=ca.crt (with it, SQLite is used only when --db or COLLECTOR_DB is given) [env: COLLECTOR_POSTGRES]
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,
    /// InfluxDB to write line protocol to, e.g. http://localhost:8086; give --influx-db (v1 /write) or --influx-bucket, --influx-org and --influx-token (/api/v2/write) [env: INFLUXDB_URL]
    #[arg(long, value_name = "URL")]
    pub influx: Option<String>,
    /// InfluxDB 1.x database (v1 /write); INFLUXDB_USERNAME and INFLUXDB_PASSWORD when it wants them [env: INFLUXDB_DB]
    #[arg(long, value_name = "DB")]
    pub influx_db: Option<String>,
    /// Bucket (v2 /api/v2/write) [env: INFLUXDB_BUCKET]
    #[arg(long, value_name = "BUCKET")]
    pub influx_bucket: Option<String>,
    /// Organisation (v2) [env: INFLUXDB_ORG]
    #[arg(long, value_name = "ORG")]
    pub influx_org: Option<String>,
    /// API token (v2); prefer the variable, which does not show in the process list [env: INFLUXDB_TOKEN]
    #[arg(long, value_name = "TOKEN")]
    pub influx_token: Option<String>,
    /// Measurement of every point [default: device_data]
    #[arg(long, value_name = "NAME")]
    pub influx_measurement: Option<String>,
    /// Value of the `collector` tag [env: INFLUXDB_COLLECTOR_TAG; default: the collector's client id]
    #[arg(long, value_name = "VALUE")]
    pub influx_collector_tag: Option<String>,
}

/// Where the InfluxDB points go, resolved from flags and variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InfluxTarget {
    /// `/write?db=` of InfluxDB 1.x, with optional credentials.
    V1 {
        /// The database.
        db: String,
        /// `INFLUXDB_USERNAME`.
        username: Option<String>,
        /// `INFLUXDB_PASSWORD`.
        password: Option<String>,
    },
    /// `/api/v2/write` (InfluxDB 1.8+, 2.x, 3.x, VictoriaMetrics, QuestDB).
    V2 {
        /// The bucket.
        bucket: String,
        /// The organisation.
        org: String,
        /// The token.
        token: String,
    },
}

/// The stores to open, as plain values (built into stores by `command`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreChoice {
    /// SQLite, when it is to be written (the default store, or asked for explicitly).
    pub sqlite: Option<PathBuf>,
    /// PostgreSQL URL.
    pub postgres: Option<String>,
    /// InfluxDB URL, target, measurement and collector tag.
    pub influx: Option<(String, InfluxTarget, String, Option<String>)>,
}

/// Resolves the stores: flags win over variables; SQLite is the store when no other
/// is configured, and is used beside the others only when given explicitly.
pub fn stores(args: &StoreArgs, db: Option<&PathBuf>, env: &Env) -> Result<StoreChoice, String> {
    let pick = |flag: &Option<String>, var: &str| {
        flag.clone().or_else(|| env.get(var).map(str::to_string))
    };
    let postgres = pick(&args.postgres, "COLLECTOR_POSTGRES");
    let influx = match pick(&args.influx, "INFLUXDB_URL") {
        None => {
            for (flag, var) in [
                (&args.influx_db, "INFLUXDB_DB"),
                (&args.influx_bucket, "INFLUXDB_BUCKET"),
                (&args.influx_org, "INFLUXDB_ORG"),
                (&args.influx_token, "INFLUXDB_TOKEN"),
            ] {
                if pick(flag, var).is_some() {
                    return Err(format!(
                        "{var} (or its flag) is set but no InfluxDB URL: give --influx URL or INFLUXDB_URL"
                    ));
                }
            }
            None
        }
        Some(url) => {
            let db = pick(&args.influx_db, "INFLUXDB_DB");
            let v2 = (
                pick(&args.influx_bucket, "INFLUXDB_BUCKET"),
                pick(&args.influx_org, "INFLUXDB_ORG"),
                pick(&args.influx_token, "INFLUXDB_TOKEN"),
            );
            let target = match (db, v2) {
                (Some(db), (None, None, None)) => InfluxTarget::V1 {
                    db,
                    username: env.get("INFLUXDB_USERNAME").map(str::to_string),
                    password: env.get("INFLUXDB_PASSWORD").map(str::to_string),
                },
                (None, (Some(bucket), Some(org), Some(token))) => {
                    InfluxTarget::V2 { bucket, org, token }
                }
                (Some(_), _) => {
                    return Err("--influx-db (v1) and --influx-bucket/--influx-org/--influx-token (v2) exclude each other: give one kind".into())
                }
                (None, (None, None, None)) => {
                    return Err("--influx needs --influx-db (INFLUXDB_DB) for the v1 /write, or --influx-bucket, --influx-org and --influx-token for /api/v2/write".into())
                }
                (None, _) => {
                    return Err("/api/v2/write needs all three of --influx-bucket, --influx-org and --influx-token (INFLUXDB_BUCKET, INFLUXDB_ORG, INFLUXDB_TOKEN)".into())
                }
            };
            let measurement = args
                .influx_measurement
                .clone()
                .unwrap_or_else(|| "device_data".to_string());
            let tag = pick(&args.influx_collector_tag, "INFLUXDB_COLLECTOR_TAG");
            Some((url, target, measurement, tag))
        }
    };
    let explicit_db = db
        .cloned()
        .or_else(|| env.get("COLLECTOR_DB").map(PathBuf::from));
    let sqlite = if postgres.is_none() && influx.is_none() {
        Some(explicit_db.unwrap_or_else(|| PathBuf::from("collector.db")))
    } else {
        explicit_db
    };
    Ok(StoreChoice {
        sqlite,
        postgres,
        influx,
    })
}

/// Variables the collector reads besides the connection's `MQTT_*` ones.
pub const VARIABLES: &[&str] = &[
    "MQTT_TOPICS",
    "COLLECTOR_DB",
    "COLLECTOR_READY_FILE",
    "COLLECTOR_METRICS_ADDR",
    "COLLECTOR_POSTGRES",
    "INFLUXDB_URL",
    "INFLUXDB_DB",
    "INFLUXDB_USERNAME",
    "INFLUXDB_PASSWORD",
    "INFLUXDB_BUCKET",
    "INFLUXDB_ORG",
    "INFLUXDB_TOKEN",
    "INFLUXDB_COLLECTOR_TAG",
    "INFLUXDB_CA_CERTS",
    "COLLECTOR_SHARE_GROUP",
];

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
        (
            "COLLECTOR_METRICS_ADDR",
            "HOST:PORT of /metrics, /healthz, /readyz (--metrics-addr wins) [off]",
        ),
        (
            "COLLECTOR_POSTGRES",
            "PostgreSQL URL (--postgres wins) [none]",
        ),
        ("INFLUXDB_URL", "InfluxDB URL (--influx wins) [none]"),
        (
            "INFLUXDB_DB",
            "InfluxDB 1.x database, v1 /write (--influx-db wins)",
        ),
        (
            "INFLUXDB_USERNAME",
            "InfluxDB 1.x user name, when it wants one",
        ),
        ("INFLUXDB_PASSWORD", "InfluxDB 1.x password (never logged)"),
        (
            "INFLUXDB_BUCKET",
            "bucket for /api/v2/write (--influx-bucket wins)",
        ),
        (
            "INFLUXDB_ORG",
            "organisation for /api/v2/write (--influx-org wins)",
        ),
        ("INFLUXDB_TOKEN", "token for /api/v2/write (never logged)"),
        (
            "INFLUXDB_COLLECTOR_TAG",
            "value of the collector tag [the client id]",
        ),
        (
            "INFLUXDB_CA_CERTS",
            "PEM file of the CA of an https InfluxDB [system roots]",
        ),
        (
            "COLLECTOR_SHARE_GROUP",
            "shared-subscription group (--share-group wins) [none]",
        ),
    ])
}

/// The readiness file: the flag, else `COLLECTOR_READY_FILE`.
pub fn ready_file(flag: Option<&PathBuf>, env: &Env) -> Option<PathBuf> {
    flag.cloned()
        .or_else(|| env.get("COLLECTOR_READY_FILE").map(PathBuf::from))
}

/// The metrics endpoint's address: the flag, else `COLLECTOR_METRICS_ADDR`; an
/// empty value is off.
pub fn metrics_addr(flag: Option<&String>, env: &Env) -> Option<String> {
    flag.cloned()
        .or_else(|| env.get("COLLECTOR_METRICS_ADDR").map(str::to_string))
        .filter(|a| !a.trim().is_empty())
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
    /// Read the PostgreSQL store at this URL instead of SQLite [env: COLLECTOR_POSTGRES, when --db is not given]
    #[arg(long, value_name = "URL", conflicts_with = "db")]
    pub postgres: Option<String>,
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

/// The shared-subscription group: the flag, else `COLLECTOR_SHARE_GROUP`; a name the
/// broker cannot take is refused.
pub fn share_group(flag: Option<&String>, env: &Env) -> Result<Option<String>, String> {
    let Some(name) = flag
        .cloned()
        .or_else(|| env.get("COLLECTOR_SHARE_GROUP").map(str::to_string))
    else {
        return Ok(None);
    };
    if name.is_empty()
        || name.contains(['/', '+', '#'])
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "--share-group (COLLECTOR_SHARE_GROUP) {name:?} is not a share name: use letters, digits, '-', '_' or '.' (no '/', '+', '#' or spaces)"
        ));
    }
    Ok(Some(name))
}

/// Each filter as the member of `group` subscribes to it.
pub fn shared_filters(group: &str, topics: &[String]) -> Vec<String> {
    topics
        .iter()
        .map(|t| format!("$share/{group}/{t}"))
        .collect()
}

#[cfg(test)]
mod share_tests {
    use super::*;

    #[test]
    fn share_groups_are_named_and_filters_prefixed() {
        let env = Env::from_pairs([("COLLECTOR_SHARE_GROUP", "collectors")]);
        assert_eq!(
            share_group(None, &env).unwrap().as_deref(),
            Some("collectors")
        );
        assert_eq!(
            share_group(Some(&"g1".to_string()), &env)
                .unwrap()
                .as_deref(),
            Some("g1")
        );
        assert_eq!(share_group(None, &Env::default()).unwrap(), None);
        for bad in ["a/b", "a+", "#", "a b"] {
            let err = share_group(Some(&bad.to_string()), &Env::default()).unwrap_err();
            assert!(err.contains("--share-group"), "{err}");
        }
        assert_eq!(
            shared_filters("g", &["device/data/+".into(), "vehicle/speed/+".into()]),
            ["$share/g/device/data/+", "$share/g/vehicle/speed/+"]
        );
    }
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
    fn stores_resolve_from_flags_and_variables() {
        let none = StoreArgs::default();
        // SQLite alone by default.
        let c = stores(&none, None, &Env::default()).unwrap();
        assert_eq!(c.sqlite, Some(PathBuf::from("collector.db")));
        assert_eq!((c.postgres, c.influx), (None, None));
        // PostgreSQL replaces SQLite unless SQLite is asked for.
        let env = Env::from_pairs([("COLLECTOR_POSTGRES", "postgresql://u@h/db")]);
        let c = stores(&none, None, &env).unwrap();
        assert_eq!(
            (c.sqlite, c.postgres.as_deref()),
            (None, Some("postgresql://u@h/db"))
        );
        let c = stores(&none, Some(&PathBuf::from("x.db")), &env).unwrap();
        assert_eq!(c.sqlite, Some(PathBuf::from("x.db")));
        // InfluxDB v1 and v2.
        let env = Env::from_pairs([
            ("INFLUXDB_URL", "http://i:8086"),
            ("INFLUXDB_DB", "telemetry"),
            ("INFLUXDB_USERNAME", "w"),
        ]);
        let (url, target, measurement, tag) = stores(&none, None, &env).unwrap().influx.unwrap();
        assert_eq!(
            (url.as_str(), measurement.as_str(), tag),
            ("http://i:8086", "device_data", None)
        );
        assert_eq!(
            target,
            InfluxTarget::V1 {
                db: "telemetry".into(),
                username: Some("w".into()),
                password: None
            }
        );
        let v2 = StoreArgs {
            influx: Some("http://vm:8428".into()),
            influx_bucket: Some("b".into()),
            influx_org: Some("o".into()),
            influx_token: Some("t".into()),
            ..StoreArgs::default()
        };
        assert!(matches!(
            stores(&v2, None, &Env::default())
                .unwrap()
                .influx
                .unwrap()
                .1,
            InfluxTarget::V2 { .. }
        ));
        // Half a configuration is an error that says what is missing.
        for (args, env, needle) in [
            (
                StoreArgs {
                    influx: Some("http://i".into()),
                    ..StoreArgs::default()
                },
                Env::default(),
                "--influx-db",
            ),
            (
                StoreArgs {
                    influx: Some("http://i".into()),
                    influx_bucket: Some("b".into()),
                    ..StoreArgs::default()
                },
                Env::default(),
                "all three",
            ),
            (
                StoreArgs::default(),
                Env::from_pairs([("INFLUXDB_DB", "x")]),
                "INFLUXDB_URL",
            ),
        ] {
            let err = stores(&args, None, &env).unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
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
