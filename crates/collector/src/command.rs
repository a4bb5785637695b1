//! The commands of `collector`, wired from their parsed arguments: [`prepare_run`]
//! turns the run arguments into settings, an open store and an ingest config;
//! [`stats`] reads a database into the text to print; [`certgen`] writes
//! certificates. Every failure is a [`CommandError`] that knows its exit code.

use crate::cli::{self, RunArgs, StatsArgs, SyncArg};
use crate::ingest::{IngestConfig, IngestError};
use crate::store::{self, StoreWorker, SyncMode};
use crate::{certgen as certs, stats as report};
use mqtt_core::{exit, PermanentFailure, Settings};
use std::path::PathBuf;
use std::time::Duration;

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
    /// Anything else: exit code 1.
    #[error("{0}")]
    Failure(String),
}

impl CommandError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            CommandError::Config(_) => exit::CONFIG,
            CommandError::Permanent(_) => exit::PERMANENT,
            CommandError::Failure(_) => exit::FAILURE,
        }
    }
}

impl From<IngestError> for CommandError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Connection(f) => CommandError::Permanent(f),
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
    /// The open database, on its own thread.
    pub store: StoreWorker,
    /// The database file.
    pub db: PathBuf,
    /// How hard each commit flushes.
    pub sync: SyncMode,
}

/// Reads the variables, validates the settings and the topics, and opens the database.
pub fn prepare_run(args: RunArgs) -> Result<RunPlan, CommandError> {
    let env = args.connection.env().map_err(config)?;
    let mut known: Vec<&'static str> = mqtt_core::settings::VARIABLES.to_vec();
    known.extend(cli::VARIABLES);
    mqtt_core::settings::warn_unknown_variables(&env, &["MQTT_", "COLLECTOR_"], &known);
    let settings = Settings::from_env(&env).map_err(config)?;
    let topics = cli::topics(&args.topics, &env).map_err(config)?;
    let client_id = settings
        .client_id
        .clone()
        .unwrap_or_else(|| "mqtt-collector".to_string());
    let db = cli::db_path(args.db.as_ref(), &env);
    let sync = match args.sync {
        SyncArg::Normal => SyncMode::Normal,
        SyncArg::Full => SyncMode::Full,
    };
    // An unusable --db is a bad argument (contract section 6), as device-sim's --queue is.
    let sqlite = store::SqliteStore::open(&db, sync).map_err(config)?;
    let cfg = IngestConfig {
        client_id,
        topics,
        batch_size: args.batch_size as usize,
        flush_interval: args.flush_interval,
        max_payload: args.max_payload,
        status_interval: Some(args.status_interval.max(Duration::from_millis(100))),
        ready_file: cli::ready_file(args.ready_file.as_ref(), &env),
        store_health: store::StoreHealth::default(),
    };
    Ok(RunPlan {
        settings,
        cfg,
        store: StoreWorker::spawn(Box::new(sqlite)),
        db,
        sync,
    })
}

/// `collector stats`: the report to print (a table, or JSON with `--json`).
pub fn stats(args: &StatsArgs) -> Result<String, CommandError> {
    let env = mqtt_core::Env::load(args.env_file.as_deref()).map_err(config)?;
    let path = cli::db_path(args.db.as_ref(), &env);
    let conn = store::open_read_only(&path).map_err(config)?;
    let stats = report::read(&conn)
        .map_err(|e| CommandError::Failure(format!("cannot read {}: {e}", path.display())))?;
    if args.json {
        serde_json::to_string_pretty(&stats)
            .map(|s| s + "\n")
            .map_err(|e| CommandError::Failure(e.to_string()))
    } else {
        Ok(report::render(&stats))
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

    fn run_args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["collector"];
        argv.extend_from_slice(extra);
        crate::cli::Cli::try_parse_from(argv).unwrap().run
    }

    #[test]
    fn a_bad_topic_or_database_is_a_configuration_error() {
        let dir = tempfile::tempdir().unwrap();
        let env = dir.path().join("empty.env");
        std::fs::write(&env, "").unwrap();
        let env = env.to_str().unwrap();
        let db = dir.path().join("c.db");
        let db = db.to_str().unwrap();
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
    fn stats_of_a_missing_database_is_a_configuration_error() {
        let dir = tempfile::tempdir().unwrap();
        let args = StatsArgs {
            db: Some(dir.path().join("none.db")),
            json: false,
            env_file: None,
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
