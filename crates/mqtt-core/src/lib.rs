//! mqtt-core: everything the collector and the device simulator share.
//!
//! Data flows one way through these modules:
//!
//! - [`settings`] reads `MQTT_*` variables (process environment over `.env`) and
//!   validates them once, up front, into a [`Settings`] value;
//! - [`tls`] turns the TLS part of those settings into a rustls client config
//!   (CA file or system roots, client certificate, the dev "insecure" mode);
//! - [`connection`] owns one rumqttc event loop per connection in its own task,
//!   reconnects with [`backoff`], and classifies failures as transient or permanent;
//! - [`message`] is the telemetry payload both binaries speak, and the device id rules;
//! - [`help`] is the end of both binaries' `--help` and their log setup;
//! - `metrics_server` (feature `metrics`) serves `/metrics`, `/healthz` and `/readyz`;
//! - `certgen` (feature `certgen`) makes a development CA, server and client certificates.
//!
//! # The owner's side of a connection
//!
//! rumqttc forgets what it holds at every disconnect, so the owner keeps every
//! message until its PUBACK and sends again what was not acknowledged:
//!
//! ```no_run
//! use mqtt_core::connection::ConnectionOptions;
//! use mqtt_core::{spawn_connection, ConnectionEvent, Env, Settings};
//! use rumqttc::QoS;
//! use std::collections::VecDeque;
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn owner() -> Result<(), Box<dyn std::error::Error>> {
//! let settings = Settings::from_env(&Env::load(None)?)?;
//! let mut conn = spawn_connection(
//!     &settings,
//!     ConnectionOptions::new("sensor-1"),
//!     CancellationToken::new(),
//! );
//! let mut unsent: VecDeque<Vec<u8>> = VecDeque::from([b"{\"seq\":1}".to_vec()]);
//! let mut in_flight: VecDeque<(u16, Vec<u8>)> = VecDeque::new();
//! let mut written: VecDeque<Vec<u8>> = VecDeque::new();
//! while let Some(event) = conn.events.recv().await {
//!     match event {
//!         ConnectionEvent::Connected { .. } => {
//!             for payload in unsent.drain(..) {
//!                 conn.client.try_publish("device/data/sensor-1", QoS::AtLeastOnce, false, payload.clone())?;
//!                 written.push_back(payload);
//!             }
//!         }
//!         // Packet ids come in the order the publishes were queued.
//!         ConnectionEvent::Sent(pkid) => {
//!             if let Some(p) = written.pop_front() {
//!                 in_flight.push_back((pkid, p));
//!             }
//!         }
//!         // Only now is the message the broker's: drop our copy.
//!         ConnectionEvent::Acked(pkid) => in_flight.retain(|(id, _)| *id != pkid),
//!         ConnectionEvent::Disconnected { reason, resume } => {
//!             eprintln!("lost the broker: {reason}");
//!             // Everything unacknowledged is unsent again; then let the driver go on.
//!             unsent.extend(in_flight.drain(..).map(|(_, p)| p));
//!             unsent.extend(written.drain(..));
//!             drop(resume);
//!         }
//!         ConnectionEvent::Failed(failure) => return Err(failure.into()),
//!         ConnectionEvent::Subscribed | ConnectionEvent::Message(_) => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod backoff;
#[cfg(feature = "certgen")]
pub mod certgen;
pub mod connection;
pub mod help;
pub mod message;
#[cfg(feature = "metrics")]
pub mod metrics_server;
pub mod settings;
#[cfg(test)]
mod settings_props;
pub mod tls;

pub use backoff::Backoff;
pub use connection::{spawn_connection, Connection, ConnectionEvent, PermanentFailure};
pub use settings::{ConnectionArgs, Env, Settings, SettingsError};

/// Exit codes of the contract (section 6), shared by both binaries.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// Unexpected failure.
    pub const FAILURE: i32 = 1;
    /// Invalid configuration or arguments.
    pub const CONFIG: i32 = 2;
    /// Permanent connection failure: credentials, authorisation, certificates.
    pub const PERMANENT: i32 = 3;
}
