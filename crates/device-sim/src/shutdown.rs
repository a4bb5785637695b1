//! Signals: SIGINT or SIGTERM cancels the token the fleet races against; every
//! device stops generating and keeps what is unacknowledged in the queue. The
//! library's loops never listen for signals themselves.

use tokio_util::sync::CancellationToken;

/// The target these lines had when `main.rs` logged them, so log readers see no change.
const LOG_TARGET: &str = "device_sim";

/// Cancels `cancel` on the first SIGINT or SIGTERM (the run then exits 0).
pub async fn cancel_on_signals(cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!(target: LOG_TARGET, "cannot listen for SIGINT/SIGTERM");
        return;
    };
    tokio::select! {
        _ = int.recv() => tracing::info!(target: LOG_TARGET, "SIGINT: stopping; unacknowledged messages stay queued"),
        _ = term.recv() => tracing::info!(target: LOG_TARGET, "SIGTERM: stopping; unacknowledged messages stay queued"),
    }
    cancel.cancel();
}
