//! Signals: SIGINT or SIGTERM cancels the token the run loop races against, so it
//! commits, acknowledges and disconnects; a second signal ends the process at once.
//! The library's loops never listen for signals themselves.

use mqtt_core::exit;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// The target these lines had when `main.rs` logged them, so log readers see no change.
const LOG_TARGET: &str = "collector";

/// Cancels `cancel` on the first SIGINT or SIGTERM; exits the process on the second.
/// Call it inside the runtime.
pub fn cancel_on_signals(cancel: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!(target: LOG_TARGET, "SIGTERM: finishing the current batch, then leaving"),
            _ = int.recv() => info!(target: LOG_TARGET, "SIGINT: finishing the current batch, then leaving"),
        }
        cancel.cancel();
        // Leaving at once loses nothing: what is not acknowledged stays with the broker.
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        error!(target: LOG_TARGET, "second signal: leaving now without finishing; unacknowledged messages stay with the broker");
        std::process::exit(exit::FAILURE);
    });
    Ok(())
}
