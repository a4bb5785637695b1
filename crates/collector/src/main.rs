//! `collector`: tracing, argument parsing, settings, then one of run / stats / certgen,
//! with the outcome mapped to the contract's exit codes (section 6).

mod certgen;
mod cli;
mod ingest;
mod ready;
mod stats;
mod store;
mod validate;

use clap::Parser;
use cli::{Cli, Command, RunArgs, StatsArgs};
use mqtt_core::{exit, Env, Settings};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

fn main() -> ExitCode {
    mqtt_core::help::init_logging();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return code(if e.use_stderr() {
                exit::CONFIG
            } else {
                exit::OK
            });
        }
    };
    code(match cli.command {
        Some(Command::Stats(args)) => stats_command(&args),
        Some(Command::Certgen(args)) => match certgen::run(&args) {
            Ok(()) => exit::OK,
            Err(e) => {
                error!("{e:#}");
                certgen_exit_code(&e)
            }
        },
        None => run_command(cli.run),
    })
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(c as u8)
}

fn certgen_exit_code(e: &anyhow::Error) -> i32 {
    use mqtt_core::certgen::CertgenError;
    match e.downcast_ref::<CertgenError>() {
        Some(CertgenError::Write { .. }) | None => exit::FAILURE,
        Some(_) => exit::CONFIG,
    }
}

fn stats_command(args: &StatsArgs) -> i32 {
    let env = match Env::load(args.env_file.as_deref()) {
        Ok(env) => env,
        Err(e) => {
            error!("{e}");
            return exit::CONFIG;
        }
    };
    let path = cli::db_path(args.db.as_ref(), &env);
    let conn = match store::open_read_only(&path) {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            return exit::CONFIG;
        }
    };
    let report = match stats::read(&conn) {
        Ok(r) => r,
        Err(e) => {
            error!("cannot read {}: {e}", path.display());
            return exit::FAILURE;
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                error!("{e}");
                return exit::FAILURE;
            }
        }
    } else {
        print!("{}", stats::render(&report));
    }
    exit::OK
}

fn run_command(args: RunArgs) -> i32 {
    let env = match args.connection.env() {
        Ok(env) => env,
        Err(e) => {
            error!("{e}");
            return exit::CONFIG;
        }
    };
    let mut known: Vec<&'static str> = mqtt_core::settings::VARIABLES.to_vec();
    known.extend(cli::VARIABLES);
    mqtt_core::settings::warn_unknown_variables(&env, &["MQTT_", "COLLECTOR_"], &known);
    let settings = match Settings::from_env(&env) {
        Ok(s) => s,
        Err(e) => {
            error!("{e}");
            return exit::CONFIG;
        }
    };
    let topics = match cli::topics(&args.topics, &env) {
        Ok(t) => t,
        Err(e) => {
            error!("{e}");
            return exit::CONFIG;
        }
    };
    let client_id = settings
        .client_id
        .clone()
        .unwrap_or_else(|| "mqtt-collector".to_string());
    let db = cli::db_path(args.db.as_ref(), &env);
    let sync = match args.sync {
        cli::SyncArg::Normal => store::SyncMode::Normal,
        cli::SyncArg::Full => store::SyncMode::Full,
    };
    let sqlite = match store::SqliteStore::open(&db, sync) {
        Ok(s) => s,
        // An unusable --db is a bad argument (contract section 6), as device-sim's --queue is.
        Err(e) => {
            error!("{e}");
            return exit::CONFIG;
        }
    };
    info!(db = %db.display(), sync = ?sync, "database open");
    let worker = store::StoreWorker::spawn(Box::new(sqlite));
    let cfg = ingest::IngestConfig {
        client_id,
        topics,
        batch_size: args.batch_size as usize,
        flush_interval: args.flush_interval,
        max_payload: args.max_payload,
        status_interval: args
            .status_interval
            .max(std::time::Duration::from_millis(100)),
        ready_file: cli::ready_file(args.ready_file.as_ref(), &env),
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return exit::FAILURE;
        }
    };
    runtime.block_on(async move {
        let cancel = CancellationToken::new();
        if let Err(e) = cancel_on_signals(cancel.clone()) {
            error!("cannot listen for signals: {e}");
            return exit::FAILURE;
        }
        match ingest::run(&settings, cfg, worker, cancel).await {
            Ok(()) => {
                info!("stopped: everything read was stored and acknowledged");
                exit::OK
            }
            Err(ingest::IngestError::Connection(f)) => {
                error!("{f}");
                exit::PERMANENT
            }
            Err(e) => {
                error!("{e}");
                exit::FAILURE
            }
        }
    })
}

/// SIGINT or SIGTERM cancels the run loop, which then commits, acknowledges and disconnects;
/// a second one ends the process at once.
fn cancel_on_signals(cancel: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: finishing the current batch, then leaving"),
            _ = int.recv() => info!("SIGINT: finishing the current batch, then leaving"),
        }
        cancel.cancel();
        // Leaving at once loses nothing: what is not acknowledged stays with the broker.
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        error!("second signal: leaving now without finishing; unacknowledged messages stay with the broker");
        std::process::exit(exit::FAILURE);
    });
    Ok(())
}

#[cfg(test)]
mod cli_props;
#[cfg(test)]
mod validate_props;
