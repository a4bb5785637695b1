//! device-sim: parse the command line, build the settings, run the fleet, map the
//! outcome to the contract's exit code. The work happens in the modules.

mod cli;
mod fleet;
mod outbox;
mod queue;
mod status;
mod vehicle;

#[cfg(test)]
mod cli_props;

use clap::Parser;
use mqtt_core::{exit, Settings};
use tokio_util::sync::CancellationToken;

fn main() {
    let cli = cli::Cli::parse();
    mqtt_core::help::init_logging();
    std::process::exit(run(cli));
}

fn run(cli: cli::Cli) -> i32 {
    let settings = match cli.connection.env().and_then(|env| {
        mqtt_core::settings::warn_unknown_variables(
            &env,
            &["MQTT_", "DEVICE_SIM_"],
            mqtt_core::settings::VARIABLES,
        );
        if env.get("MQTT_CLIENT_ID").is_some() {
            tracing::warn!("MQTT_CLIENT_ID is ignored by device-sim: each device connects with its device id as client id");
        }
        Settings::from_env(&env)
    }) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return exit::CONFIG;
        }
    };
    let config = fleet::FleetConfig {
        count: cli.count,
        id_prefix: cli.id_prefix,
        interval: cli.interval,
        messages: cli.messages,
        duration: cli.duration,
        queue: cli.queue,
        queue_limit: cli.queue_limit,
        seed: cli.seed.unwrap_or_else(rand::random),
        legacy_topic: cli.legacy_topic,
        connect_rate: cli.connect_rate,
        window: cli.window,
        status_interval: cli.status_interval,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return exit::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let cancel = CancellationToken::new();
        tokio::spawn(cancel_on_signals(cancel.clone()));
        fleet::run(settings, config, cancel).await
    });
    // Connection tasks that are still closing must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(_) => exit::OK,
        Err(e) => {
            tracing::error!("{e}");
            match e {
                fleet::FleetError::Permanent(_) => exit::PERMANENT,
                fleet::FleetError::Config(_) => exit::CONFIG,
                fleet::FleetError::Queue(_) | fleet::FleetError::Internal(_) => exit::FAILURE,
            }
        }
    }
}

/// SIGINT or SIGTERM: stop generating, keep what is unacknowledged, exit 0.
async fn cancel_on_signals(cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!("cannot listen for SIGINT/SIGTERM");
        return;
    };
    tokio::select! {
        _ = int.recv() => tracing::info!("SIGINT: stopping; unacknowledged messages stay queued"),
        _ = term.recv() => tracing::info!("SIGTERM: stopping; unacknowledged messages stay queued"),
    }
    cancel.cancel();
}
