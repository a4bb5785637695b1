//! device-sim: a fleet of simulated vehicles, each its own MQTT connection, that
//! publish telemetry through an offline queue so nothing is lost while the broker
//! is away. The `device-sim` binary parses its arguments and hands them to these
//! modules:
//!
//! - [`cli`] is the command line (its doc comments are the help text) and how it
//!   becomes connection settings and a [`fleet::FleetConfig`];
//! - [`fleet`] runs the devices: connection ramp, one loop per device, the end of
//!   the run, and the exit code of each failure;
//! - [`vehicle`] is the seeded model behind each reading;
//! - [`queue`] is the offline queue file and the one thread that writes it;
//! - [`outbox`] is one device's view of its queued messages and packet ids;
//! - [`status`] holds the fleet's counters, their Prometheus registry, the status
//!   line and the summary;
//! - [`shutdown`] turns SIGINT and SIGTERM into cancellation.
#![deny(missing_docs)]

pub mod cli;
pub mod fleet;
pub mod outbox;
pub mod queue;
pub mod shutdown;
pub mod status;
pub mod vehicle;

#[cfg(test)]
mod cli_props;
