//! Test support, written once for every crate that needs a broker: the e2e tests
//! (`tests/`), the benchmark (`crates/bench`) and mqtt-core's reliability tests.
//!
//! - [`broker`]: a real Mosquitto started from a [`BrokerConfig`] (plain, TLS, mutual
//!   TLS, passwords, ACL, persistence, extra lines, a raised open-file limit) on free
//!   loopback ports; stopped, killed, paused, resumed or restarted on demand, killed on drop.
//! - [`config`]: the [`BrokerConfig`] builder and the configuration text it becomes.
//! - [`pki`]: a CA, a server certificate and client certificates on disk, made by
//!   `mqtt_core::certgen`.
//! - [`process`]: [`free_port`], [`wait_until`], child processes killed on drop
//!   ([`ChildGuard`]) or when their parent dies ([`die_with_parent`]).
//! - [`postgres`]: a real PostgreSQL on a free loopback port ([`Postgres`]), with a
//!   password and optional TLS; stopped, started again or killed on demand.
//! - [`fake_broker`]: two FAKE brokers for the faults Mosquitto does not produce on
//!   demand; one on tokio, one on a plain thread.
//! - [`influx`]: a real influxd 1.x ([`InfluxDb`]) and a real VictoriaMetrics
//!   ([`VictoriaMetrics`]) for the InfluxDB store's tests.
//! - [`prometheus`]: a real Prometheus scraping given targets, and `promtool check metrics`.
//! - [`error`]: why a broker or the certificates could not be set up.
//!
//! Test code calls the panicking functions ([`Broker::start`], [`Pki::new`]): a test
//! fails with the message. Programs (the benchmark) call the `try_` forms, which
//! return [`Error`].

#![deny(missing_docs)]

pub mod broker;
pub mod config;
mod dir;
pub mod error;
pub mod fake_broker;
pub mod influx;
pub mod pki;
pub mod postgres;
pub mod process;
pub mod prometheus;

pub use broker::Broker;
pub use config::BrokerConfig;
pub use dir::Dir;
pub use error::Error;
pub use influx::{InfluxDb, VictoriaMetrics};
pub use pki::Pki;
pub use postgres::{Postgres, PostgresConfig};
pub use process::{
    die_with_parent, env_with, free_port, run_with_timeout, spawn, wait_until, ChildGuard,
};
