//! The storage boundary: the [`Store`] trait ingest writes batches through, the
//! records it writes and the errors it reports. Each backend is a module of its own
//! ([`sqlite`], [`postgres`], [`influx`]); [`Retrying`], [`Lazy`], [`Fanout`] and
//! [`Shared`] wrap them, and [`StoreWorker`] runs them on threads of their own (one
//! per lane) so no blocking I/O ever happens on the async workers.
//!
//! A batch is one transaction: when [`Store::write_batch`] returns `Ok`, every
//! record of it is durable (to the process crash with `synchronous=NORMAL`, to a
//! power loss with `FULL`), and only then may ingest acknowledge the messages.

mod fanout;
pub mod influx;
mod lazy;
pub mod postgres;
mod retry;
mod shared;
pub mod sqlite;
mod worker;

pub use fanout::Fanout;
pub use lazy::Lazy;
pub use retry::{Retrying, StoreHealth};
pub use shared::Shared;
pub use sqlite::{open_read_only, payload_hash, SqliteStore, SyncMode};
pub use worker::{StoreWorker, Written};

use std::path::PathBuf;

/// One message to keep: a telemetry row or a rejection.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A valid message, for the `telemetry` table.
    Telemetry(TelemetryRow),
    /// A message that failed validation, for the `rejected` table.
    Rejected(RejectedRow),
}

/// A row of `telemetry`.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryRow {
    /// Device id.
    pub device_id: String,
    /// Sequence number, when the payload has one.
    pub seq: Option<i64>,
    /// The topic it arrived on.
    pub topic: String,
    /// Unix seconds of the publish, from the payload.
    pub publish_ts: Option<f64>,
    /// Unix seconds when the collector read it.
    pub receive_ts: f64,
    /// The JSON as received.
    pub payload: String,
}

/// A row of `rejected`.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedRow {
    /// The topic it arrived on.
    pub topic: String,
    /// Unix seconds when the collector read it.
    pub receive_ts: f64,
    /// Why it was rejected.
    pub reason: String,
    /// The payload (cut at the size limit when it was larger).
    pub payload: Vec<u8>,
}

/// What a committed batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// New rows in `telemetry`.
    pub stored: usize,
    /// Telemetry records whose `(device_id, seq)` was already stored.
    pub duplicates: usize,
    /// New rows in `rejected`.
    pub rejected: usize,
}

/// Why the store cannot be opened or written. Each message names the file and a fix.
// The #[error] text of each variant says what every field holds.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be opened or prepared.
    #[error("cannot open the database {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    /// A transaction failed: nothing of the batch is stored.
    #[error("cannot write to the database {path}: {source}; check free disk space and that the file and its directory are writable")]
    Write {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// The store thread has ended (it panicked or was shut down).
    #[error("the store thread has stopped")]
    WorkerGone,
    /// A database server is down, restarting, timed out or answered with a server
    /// error: nothing of the batch is stored, and the same batch is tried again
    /// with backoff (the collector keeps running and acknowledges nothing meanwhile).
    #[error("{store}: {reason}")]
    Unavailable { store: &'static str, reason: String },
    /// A database server refused for a reason retrying cannot fix (authentication,
    /// a missing database or bucket, a refused TLS certificate): exit code 3.
    #[error("{store}: {reason}")]
    Refused { store: &'static str, reason: String },
    /// The collector is stopping while a store was being retried.
    #[error("stopped while waiting for a store to come back; what was not stored was not acknowledged and stays with the broker")]
    Stopped,
}

impl StoreError {
    /// True for the failures worth retrying with the same batch.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }

    /// True for the failures that end the collector with exit code 3.
    pub fn is_refusal(&self) -> bool {
        matches!(self, StoreError::Refused { .. })
    }
}

/// Where telemetry is kept. SQLite now; other databases later, without touching ingest.
pub trait Store: Send {
    /// Writes every record in one transaction, or nothing.
    fn write_batch(&mut self, batch: &[Record]) -> Result<WriteOutcome, StoreError>;
}

/// A reading of `device` with `seq` and an empty payload, for the stores' tests.
#[cfg(test)]
pub(crate) fn test_row(device: &str, seq: Option<i64>) -> Record {
    Record::Telemetry(TelemetryRow {
        device_id: device.into(),
        seq,
        topic: format!("device/data/{device}"),
        publish_ts: Some(1.0),
        receive_ts: 1.5,
        payload: "{}".into(),
    })
}
