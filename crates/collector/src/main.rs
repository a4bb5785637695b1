//! `collector`: tracing, argument parsing, then one of run / stats / certgen / probe, with
//! the outcome mapped to the contract's exit codes (section 6). The work happens in
//! the library.

use clap::Parser;
use collector::cli::{Cli, Command};
use collector::command::{self, CommandError};
use collector::{ingest, shutdown};
use mqtt_core::exit;
use std::process::ExitCode;
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
    let outcome = match cli.command {
        Some(Command::Stats(args)) => command::stats(&args).map(|report| print!("{report}")),
        Some(Command::Certgen(args)) => command::certgen(&args),
        Some(Command::Probe(args)) => command::probe(&args).map(|body| print!("{body}")),
        Some(Command::Drain(args)) => command::prepare_drain(*args).and_then(run),
        None => command::prepare_run(cli.run).and_then(run),
    };
    match outcome {
        Ok(()) => code(exit::OK),
        Err(e) => {
            error!("{e}");
            code(e.exit_code())
        }
    }
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(c as u8)
}

fn run(plan: command::RunPlan) -> Result<(), CommandError> {
    info!(stores = %plan.stores, "stores open");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CommandError::Failure(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async move {
        let cancel = plan.cancel;
        shutdown::cancel_on_signals(cancel.clone())
            .map_err(|e| CommandError::Failure(format!("cannot listen for signals: {e}")))?;
        // ingest::run cancels the token when it ends, which stops the endpoint too.
        if let Some(endpoint) = plan.endpoint {
            tokio::spawn(endpoint.serve(plan.cfg.ready_state.clone(), cancel.clone()));
        }
        ingest::run(&plan.settings, plan.cfg, plan.store, cancel).await?;
        info!("stopped: everything read was stored and acknowledged");
        Ok(())
    })
}
