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
//! - [`certgen`] makes a development CA, server and client certificates.
#![deny(missing_docs)]

pub mod backoff;
#[cfg(feature = "certgen")]
pub mod certgen;
pub mod connection;
pub mod help;
pub mod message;
pub mod secret;
pub mod settings;
#[cfg(test)]
mod settings_props;
pub mod tls;

pub use backoff::Backoff;
pub use connection::{spawn_connection, Connection, ConnectionEvent, PermanentFailure};
pub use secret::Secret;
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
