//! Two FAKE brokers, in-process, for the faults a real Mosquitto does not produce
//! on demand. Each speaks just enough MQTT 3.1.1 for the client it faces; neither is
//! a broker to test anything else against.
//!
//! - [`FakeBroker`] (tokio, [`scripted`]): each connection follows a [`Plan`]: a
//!   CONNACK that claims a session, a cut between CONNACK and SUBACK, a refused
//!   SUBSCRIBE. Used by mqtt-core's reliability tests of the connection driver.
//! - [`OutOfOrderBroker`] (a plain thread, [`out_of_order`]): PUBACKs out of order,
//!   then the held PUBACK and a dropped connection at once. Used by an e2e fault
//!   test of device-sim's queue.

pub mod out_of_order;
pub mod scripted;

pub use out_of_order::OutOfOrderBroker;
pub use scripted::{FakeBroker, OnSubscribe, Plan, Seen};
