//! The end-to-end harness. The broker setup shared with the benchmark and
//! mqtt-core's tests lives in `crates/testkit` (Mosquitto on free loopback ports,
//! certificates from mqtt-core's generator, child-process guards, the FAKE
//! brokers) and is re-exported here under its old names; this crate adds what only
//! the e2e tests need: the built binaries ([`bins`]), a whole installation for fault
//! tests ([`stack`]) and a real subscriber ([`subscriber`]). No test writes its own
//! broker setup.

pub mod bins;
pub mod stack;
pub mod subscriber;

pub use bins::{bin, command};
pub use subscriber::{seqs, Subscriber};
pub use testkit::{
    broker, env_with, fake_broker, free_port, pki, process, run_with_timeout, spawn, wait_until,
    Broker, BrokerConfig, ChildGuard, Pki,
};
