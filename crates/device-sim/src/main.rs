//! device-sim: parse the command line, build the settings, run the fleet, map the
//! outcome to the contract's exit code. The work happens in the library.

use clap::Parser;
use device_sim::{cli::Cli, fleet, shutdown};
use mqtt_core::exit;
use tokio_util::sync::CancellationToken;

fn main() {
    let cli = Cli::parse();
    mqtt_core::help::init_logging();
    std::process::exit(run(cli));
}

fn run(cli: Cli) -> i32 {
    let settings = match cli.settings() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return exit::CONFIG;
        }
    };
    // Bound before the runtime starts: an address that cannot be bound is a bad flag.
    let endpoint = match cli.metrics_addr() {
        Ok(None) => None,
        Ok(Some(addr)) => {
            match mqtt_core::metrics_server::bind(&addr, "--metrics-addr (DEVICE_SIM_METRICS_ADDR)")
            {
                Ok(listener) => Some(listener),
                Err(e) => {
                    tracing::error!("{e}");
                    return exit::CONFIG;
                }
            }
        }
        Err(e) => {
            tracing::error!("{e}");
            return exit::CONFIG;
        }
    };
    let config = cli.fleet_config();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return exit::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let cancel = CancellationToken::new();
        tokio::spawn(shutdown::cancel_on_signals(cancel.clone()));
        fleet::run(settings, config, endpoint, cancel).await
    });
    // Connection tasks that are still closing must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(_) => exit::OK,
        Err(e) => {
            tracing::error!("{e}");
            e.exit_code()
        }
    }
}
