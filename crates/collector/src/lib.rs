//! collector: subscribes to device telemetry, stores it in SQLite, and acknowledges
//! each message only once it is committed. The `collector` binary parses its
//! arguments and hands them to these modules:
//!
//! - [`cli`] is the command line (its doc comments are the help text) and how it
//!   resolves against `COLLECTOR_*` and `MQTT_TOPICS`;
//! - [`command`] wires the commands from parsed arguments and gives every failure
//!   its exit code;
//! - [`ingest`] is the run loop: connection events in, validated batches to the
//!   store, acknowledgements out after each commit; its `metrics` module holds the
//!   Prometheus metrics it counts per batch;
//! - [`validate`] turns one message into a telemetry row or a rejection;
//! - [`store`] is the storage boundary, its SQLite backend, and the thread it runs on;
//! - [`ready`] is the readiness condition, read by the readiness file and `/readyz`;
//! - [`shutdown`] turns SIGINT and SIGTERM into cancellation;
//! - [`stats`] summarises a database (`collector stats`);
//! - [`certgen`] writes development certificates (`collector certgen`);
//! - [`command`] also holds `collector probe`, the healthcheck client for `/readyz`.
#![deny(missing_docs)]

pub mod certgen;
pub mod cli;
pub mod command;
pub mod ingest;
pub mod ready;
pub mod shutdown;
pub mod stats;
pub mod store;
pub mod validate;

#[cfg(test)]
mod cli_props;
#[cfg(test)]
mod validate_props;
