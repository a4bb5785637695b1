//! The end-to-end harness: one place that starts Mosquitto (plain, TLS, mutual TLS,
//! passwords, ACLs, persistence) on free loopback ports, makes certificates with
//! mqtt-core's generator, finds the built binaries, and watches what a real
//! subscriber receives. No test writes its own broker setup.

pub mod bins;
pub mod broker;
pub mod fake_broker;
pub mod pki;
pub mod process;
pub mod stack;
pub mod subscriber;

pub use bins::{bin, command};
pub use broker::{Broker, BrokerConfig};
pub use pki::Pki;
pub use process::{env_with, free_port, run_with_timeout, spawn, wait_until, ChildGuard};
pub use subscriber::{seqs, Subscriber};
