//! The commands of `collector`, wired from their parsed arguments: [`prepare_run`]
//! turns the run arguments into settings, an open store and an ingest config;
//! [`stats`] reads a database into the text to print; [`certgen`] writes
//! certificates. Every failure is a [`CommandError`] that knows its exit code.

use crate::cli::{self, ProbeArgs, RunArgs, StatsArgs, SyncArg};
use crate::ingest::{Counted, IngestConfig, IngestError, Metrics};
use crate::ready::ReadyState;
use crate::store::influx;
use crate::store::postgres::PostgresStore;
use crate::store::{
    self, Fanout, Lazy, Retrying, Shared, Store, StoreError, StoreHealth, StoreWorker, SyncMode,
};
use crate::{certgen as certs, stats as report};
use mqtt_core::{exit, PermanentFailure, Settings};
use secrecy::SecretString;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why a command failed, by the exit code of the contract (section 6). The message
/// is complete: the binary prints it once, as it is.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Invalid configuration or arguments: exit code 2.
    #[error("{0}")]
    Config(String),
    /// Credentials, authorisation or certificates: exit code 3.
    #[error(transparent)]
    Permanent(PermanentFailure),
    /// A store refused for a reason retrying cannot fix (authentication, a missing
    /// database): exit code 3.
    #[error("{0}")]
    StoreRefused(String),
    /// Anything else: exit code 1.
    #[error("{0}")]
    Failure(String),
}

impl CommandError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            CommandError::Config(_) => exit::CONFIG,
            CommandError::Permanent(_) | CommandError::StoreRefused(_) => exit::PERMANENT,
            CommandError::Failure(_) => exit::FAILURE,
        }
    }
}

impl From<IngestError> for CommandError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Connection(f) => CommandError::Permanent(f),
            IngestError::Store(e) if e.is_refusal() => {
                CommandError::StoreRefused(IngestError::Store(e).to_string())
            }
            other => CommandError::Failure(other.to_string()),
        }
    }
}

fn config(e: impl std::fmt::Display) -> CommandError {
    CommandError::Config(e.to_string())
}

/// Everything `collector` needs to run, built and validated before any connection.
pub struct RunPlan {
    /// The connection settings.
    pub settings: Settings,
    /// The ingest loop's configuration.
    pub cfg: IngestConfig,
    /// The stores (one, or a fan-out), on their own thread.
    pub store: StoreWorker,
    /// What the stores are, for the start-up log line.
    pub stores: String,
    /// Cancels the run: the signal handler fires it, and store retries watch it.
    pub cancel: CancellationToken,
    /// The bound `--metrics-addr` and what it serves, when asked for.
    pub endpoint: Option<Endpoint>,
}

/// The metrics endpoint, bound before the run so a bad address exits 2.
pub struct Endpoint {
    /// Bound and listening.
    pub listener: std::net::TcpListener,
    /// Every collector metric.
    pub registry: prometheus_client::registry::Registry,
}

impl Endpoint {
    /// Serves `/metrics`, `/healthz` and `/readyz` (from `ready`) until `cancel` fires.
    pub async fn serve(self, ready: ReadyState, cancel: CancellationToken) {
        let readiness: mqtt_core::metrics_server::Readiness =
            std::sync::Arc::new(move || ready.check().map_err(str::to_string));
        mqtt_core::metrics_server::serve(
            self.listener,
            std::sync::Arc::new(self.registry),
            readiness,
            cancel,
        )
        .await
    }
}

/// Delays between two attempts at a store that is down.
const STORE_RETRY: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));

/// Reads the variables, validates the settings and the topics, and opens the stores.
pub fn prepare_run(args: RunArgs) -> Result<RunPlan, CommandError> {
    let env = args.connection.env().map_err(config)?;
    let mut known: Vec<&'static str> = mqtt_core::settings::VARIABLES.to_vec();
    known.extend(cli::VARIABLES);
    mqtt_core::settings::warn_unknown_variables(
        &env,
        &["MQTT_", "COLLECTOR_", "INFLUXDB_"],
        &known,
    );
    let settings = Settings::from_env(&env).map_err(config)?;
    let topics = cli::topics(&args.topics, &env).map_err(config)?;
    let group = cli::share_group(args.share_group.as_ref(), &env).map_err(config)?;
    let topics = match &group {
        Some(g) => cli::shared_filters(g, &topics),
        None => topics,
    };
    // Members of a group must never share a client id: each would kick the other
    // off, and the broker keeps one session per id.
    let client_id = settings.client_id.clone().unwrap_or_else(|| match &group {
        Some(_) => format!("mqtt-collector-{}", hostname()),
        None => "mqtt-collector".to_string(),
    });
    let choice = cli::stores(&args.stores, args.db.as_ref(), &env).map_err(config)?;
    if group.is_some()
        && choice.postgres.is_none()
        && choice.influx.is_none()
        && !args.allow_local_store
    {
        return Err(CommandError::Config(
            "--share-group with only a local SQLite file: each member would keep just its share, and a reading \
             the broker redelivers to another member would be stored twice; give the group a store all members \
             share (--postgres or --influx), or pass --allow-local-store"
                .into(),
        ));
    }
    let sync = match args.sync {
        SyncArg::Normal => SyncMode::Normal,
        SyncArg::Full => SyncMode::Full,
    };
    let endpoint = match cli::metrics_addr(args.metrics_addr.as_ref(), &env) {
        Some(addr) => Some(Endpoint {
            listener: mqtt_core::metrics_server::bind(
                &addr,
                "--metrics-addr (COLLECTOR_METRICS_ADDR)",
            )
            .map_err(config)?,
            registry: prometheus_client::registry::Registry::default(),
        }),
        None => None,
    };
    let metrics = Metrics::default();
    let cancel = CancellationToken::new();
    let health = StoreHealth::default();
    let mut names = Vec::new();
    let sqlite = match &choice.sqlite {
        Some(db) => {
            // An unusable --db is a bad argument (contract section 6), as device-sim's --queue is.
            let sqlite = store::SqliteStore::open(db, sync).map_err(config)?;
            names.push(format!("SQLite {} (sync {sync:?})", db.display()));
            Some(Shared::new(Box::new(Counted::new(
                Box::new(sqlite),
                "sqlite",
                metrics.clone(),
            ))))
        }
        None => None,
    };
    // Counted inside Retrying: every failed attempt is a store error.
    let retrying = |s: Box<dyn Store>, name: &'static str, label: &'static str| -> Box<dyn Store> {
        Box::new(Retrying::new(
            Box::new(Counted::new(s, label, metrics.clone())),
            name,
            STORE_RETRY,
            cancel.clone(),
            health.clone(),
        ))
    };
    if let Some(url) = &choice.postgres {
        // A malformed URL is a bad argument (exit 2), not a refusing server.
        store::postgres::PostgresUrl::parse(url).map_err(config)?;
        names.push("PostgreSQL".to_string());
    }
    let influx = match choice.influx {
        Some((url, target, measurement, tag)) => {
            let target = match target {
                cli::InfluxTarget::V1 {
                    db,
                    username,
                    password,
                } => influx::InfluxTarget::V1 {
                    db,
                    username,
                    password: password.map(SecretString::from),
                },
                cli::InfluxTarget::V2 { bucket, org, token } => influx::InfluxTarget::V2 {
                    bucket,
                    org,
                    token: SecretString::from(token),
                },
            };
            let mut cfg =
                influx::InfluxConfig::new(url, target, tag.unwrap_or_else(|| client_id.clone()));
            cfg.measurement = measurement;
            names.push(format!("InfluxDB {}", cfg.url));
            cfg.ca_file = env.get("INFLUXDB_CA_CERTS").map(std::path::PathBuf::from);
            Some(cfg)
        }
        None => None,
    };
    // SQLite takes one writer at a time: lanes pay off only with a server store.
    let lanes = if choice.postgres.is_some() || influx.is_some() {
        args.pipeline.max(1)
    } else {
        1
    };
    let mut lane_stores = Vec::new();
    // Whether the server answered the first lane: then every lane connects now, so
    // a limit (max_connections) shows before the collector subscribes; a server that
    // is down is connected to by each lane at its first batch.
    let mut pg_up = false;
    for lane in 0..lanes {
        let mut stores: Vec<Box<dyn Store>> = Vec::new();
        if let Some(sqlite) = &sqlite {
            stores.push(Box::new(sqlite.clone()));
        }
        if let Some(url) = choice.postgres.clone() {
            let id = client_id.clone();
            let connect = move || PostgresStore::connect(&url, &id);
            let pg = if lane == 0 || pg_up {
                Lazy::new("PostgreSQL", connect).map_err(store_refused)?
            } else {
                Lazy::later(connect)
            };
            pg_up = pg.is_connected();
            stores.push(retrying(Box::new(pg), "PostgreSQL", "postgresql"));
        }
        if let Some(cfg) = &influx {
            // new() sends nothing: whatever it refuses is the configuration (exit 2).
            let store = influx::InfluxStore::new(cfg.clone()).map_err(config)?;
            stores.push(retrying(Box::new(store), "InfluxDB", "influxdb"));
        }
        lane_stores.push(if stores.len() == 1 {
            stores.pop().expect("one store")
        } else {
            Box::new(Fanout::new(stores)) as Box<dyn Store>
        });
    }
    let cfg = IngestConfig {
        client_id,
        topics,
        batch_size: args.batch_size as usize,
        flush_interval: args.flush_interval,
        max_payload: args.max_payload,
        status_interval: Some(args.status_interval.max(Duration::from_millis(100))),
        ready_file: cli::ready_file(args.ready_file.as_ref(), &env),
        ready_state: ReadyState::new(health),
        metrics: metrics.clone(),
        drain: None,
    };
    let mut endpoint = endpoint;
    if let Some(e) = endpoint.as_mut() {
        metrics.register(&mut e.registry);
    }
    Ok(RunPlan {
        settings,
        cfg,
        store: StoreWorker::spawn_lanes(lane_stores),
        stores: if lanes > 1 {
            format!("{} ({lanes} batches at a time)", names.join(", "))
        } else {
            names.join(", ")
        },
        cancel,
        endpoint,
    })
}

/// `collector drain`: the plan of the collector itself, ending once what the broker
/// holds for this client id is stored and acknowledged, then ending its session.
pub fn prepare_drain(args: RunArgs) -> Result<RunPlan, CommandError> {
    let mut plan = prepare_run(args)?;
    plan.cfg.drain = Some(DRAIN_QUIET);
    // A member being retired is never ready for devices.
    plan.cfg.ready_file = None;
    Ok(plan)
}

/// How long nothing may arrive before the session counts as drained: the broker
/// sends a session's backlog right after the CONNACK, limited only by its in-flight window.
const DRAIN_QUIET: Duration = Duration::from_secs(3);

/// This machine's name, for a client id that differs between hosts.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".to_string())
}

/// A store that refuses at start: exit 3 when retrying cannot help, else 2.
fn store_refused(e: StoreError) -> CommandError {
    if e.is_refusal() {
        CommandError::StoreRefused(e.to_string())
    } else {
        CommandError::Config(e.to_string())
    }
}

/// `collector stats`: the report to print (a table, or JSON with `--json`).
pub fn stats(args: &StatsArgs) -> Result<String, CommandError> {
    let env = mqtt_core::Env::load(args.env_file.as_deref()).map_err(config)?;
    let postgres = args.postgres.clone().or_else(|| {
        (args.db.is_none() && env.get("COLLECTOR_DB").is_none())
            .then(|| env.get("COLLECTOR_POSTGRES").map(str::to_string))
            .flatten()
    });
    let stats = match postgres {
        Some(url) => {
            store::postgres::PostgresUrl::parse(&url).map_err(config)?;
            store::postgres::stats::read(&url).map_err(|e| {
                if e.is_refusal() {
                    CommandError::StoreRefused(e.to_string())
                } else {
                    CommandError::Failure(e.to_string())
                }
            })?
        }
        None => {
            let path = cli::db_path(args.db.as_ref(), &env);
            let conn = store::open_read_only(&path).map_err(config)?;
            report::read(&conn).map_err(|e| {
                CommandError::Failure(format!("cannot read {}: {e}", path.display()))
            })?
        }
    };
    if args.json {
        serde_json::to_string_pretty(&stats)
            .map(|s| s + "\n")
            .map_err(|e| CommandError::Failure(e.to_string()))
    } else {
        Ok(report::render(&stats))
    }
}

/// `collector probe`: GETs the URL; `Ok(body)` on 200, else the failure to print
/// (exit 1; exit 2 for a URL that is not http://).
pub fn probe(args: &ProbeArgs) -> Result<String, CommandError> {
    let url = args.url.trim();
    if !url
        .get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
    {
        return Err(CommandError::Config(format!(
            "probe {url:?}: only http:// URLs are probed (the metrics endpoint has no TLS)"
        )));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(args.timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let mut response = agent
        .get(url)
        .call()
        .map_err(|e| CommandError::Failure(format!("probe {url}: {e}")))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_string()
        .unwrap_or_default();
    if status == 200 {
        Ok(body)
    } else {
        Err(CommandError::Failure(format!(
            "probe {url}: HTTP {status}: {}",
            body.trim_end()
        )))
    }
}

/// `collector certgen`: a refused argument is a configuration error, a failed write is not.
pub fn certgen(args: &certs::CertgenArgs) -> Result<(), CommandError> {
    use mqtt_core::certgen::CertgenError;
    certs::run(args).map_err(|e| {
        let text = format!("{e:#}");
        match e.downcast_ref::<CertgenError>() {
            Some(CertgenError::Write { .. }) | None => CommandError::Failure(text),
            Some(_) => CommandError::Config(text),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// A temporary folder with an empty env file (so no ./.env or variable of the
    /// developer's leaks in) and a database path in it.
    fn scratch() -> (tempfile::TempDir, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let env = dir.path().join("empty.env");
        std::fs::write(&env, "").unwrap();
        let db = dir.path().join("c.db");
        let (env, db) = (env.display().to_string(), db.display().to_string());
        (dir, env, db)
    }

    fn run_args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["collector"];
        argv.extend_from_slice(extra);
        crate::cli::Cli::try_parse_from(argv).unwrap().run
    }

    #[test]
    fn a_share_group_needs_a_shared_store_and_gets_a_per_host_client_id() {
        let (_dir, env, db) = scratch();
        let (env, db) = (env.as_str(), db.as_str());
        let err = prepare_run(run_args(&[
            "--env-file",
            env,
            "--share-group",
            "g",
            "--db",
            db,
        ]))
        .err()
        .unwrap();
        assert_eq!(err.exit_code(), exit::CONFIG, "{err}");
        assert!(err.to_string().contains("--allow-local-store"), "{err}");
        let plan = prepare_run(run_args(&[
            "--env-file",
            env,
            "--share-group",
            "g",
            "--db",
            db,
            "--allow-local-store",
        ]))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            plan.cfg.topics,
            ["$share/g/device/data/+", "$share/g/vehicle/speed/+"]
        );
        assert_eq!(plan.cfg.client_id, format!("mqtt-collector-{}", hostname()));
        assert_ne!(hostname(), "");
    }

    #[test]
    fn a_malformed_store_configuration_is_a_configuration_error() {
        let (_dir, env, _) = scratch();
        let env = env.as_str();
        for args in [
            &["--postgres", "mysql://nope"][..],
            &["--influx", "http://127.0.0.1:1"],
            &["--influx-db", "x"],
        ] {
            let mut all = vec!["--env-file", env];
            all.extend_from_slice(args);
            let err = prepare_run(run_args(&all)).err().unwrap();
            assert_eq!(err.exit_code(), exit::CONFIG, "{args:?}: {err}");
        }
    }

    #[test]
    fn a_bad_topic_or_database_is_a_configuration_error() {
        let (dir, env, db) = scratch();
        let (env, db) = (env.as_str(), db.as_str());
        let err = prepare_run(run_args(&[
            "--env-file",
            env,
            "--db",
            db,
            "--topic",
            "a/#/b",
        ]))
        .err()
        .unwrap();
        assert_eq!(err.exit_code(), exit::CONFIG, "{err}");
        let not_a_dir = dir.path().join("missing").join("c.db");
        let err = prepare_run(run_args(&[
            "--env-file",
            env,
            "--db",
            not_a_dir.to_str().unwrap(),
        ]))
        .err()
        .unwrap();
        assert_eq!(err.exit_code(), exit::CONFIG, "{err}");
        assert!(
            err.to_string().contains("cannot open the database"),
            "{err}"
        );

        let plan = prepare_run(run_args(&["--env-file", env, "--db", db])).unwrap();
        assert_eq!(plan.cfg.client_id, "mqtt-collector");
        assert_eq!(plan.cfg.status_interval, Some(Duration::from_secs(5)));
    }

    #[test]
    fn lanes_only_with_a_server_store() {
        let (_dir, env, db) = scratch();
        let (env, db) = (env.as_str(), db.as_str());
        let influx = ["--influx", "http://127.0.0.1:1", "--influx-db", "x"];
        let lanes = |extra: &[&str]| {
            let mut all = vec!["--env-file", env, "--pipeline", "3"];
            all.extend_from_slice(extra);
            let plan = prepare_run(run_args(&all)).unwrap_or_else(|e| panic!("{e}"));
            (plan.store.lanes(), plan.stores)
        };
        assert_eq!(lanes(&["--db", db]).0, 1, "SQLite takes one writer");
        let (n, stores) = lanes(&influx);
        assert_eq!(n, 3);
        assert!(stores.contains("3 batches at a time"), "{stores}");
        let mut both = influx.to_vec();
        both.extend(["--db", db]);
        assert_eq!(
            lanes(&both).0,
            3,
            "SQLite shared by the lanes of a server store"
        );
        assert_eq!(run_args(&[]).pipeline, 4);
    }

    #[test]
    fn stats_of_a_missing_database_is_a_configuration_error() {
        let dir = tempfile::tempdir().unwrap();
        let args = StatsArgs {
            db: Some(dir.path().join("none.db")),
            json: false,
            env_file: None,
            postgres: None,
        };
        let err = stats(&args).unwrap_err();
        assert_eq!(err.exit_code(), exit::CONFIG, "{err}");
    }

    #[test]
    fn a_permanent_connection_failure_exits_3() {
        let f = PermanentFailure {
            broker: "b:8883".into(),
            cause: "bad password".into(),
        };
        let err = CommandError::from(IngestError::Connection(f.clone()));
        assert_eq!(err.exit_code(), exit::PERMANENT);
        assert_eq!(err.to_string(), f.to_string());
        let err = CommandError::from(IngestError::ConnectionGone);
        assert_eq!(err.exit_code(), exit::FAILURE);
    }
}
