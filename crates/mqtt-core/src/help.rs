//! The end of both binaries' `--help`: every variable they read, the exit codes
//! and logging, written once so the two cannot drift apart.

use crate::settings::VARIABLES;

/// One line per connection variable, in the order of [`VARIABLES`].
const CONNECTION: &[(&str, &str)] = &[
    ("MQTT_BROKER_HOST", "broker host name or IP [localhost]"),
    ("MQTT_BROKER_PORT", "broker port [1883, or 8883 with TLS]"),
    (
        "MQTT_CLIENT_ID",
        "client id, stable for persistent sessions",
    ),
    ("MQTT_USE_TLS", "TLS on/off [false]"),
    (
        "MQTT_TLS_INSECURE",
        "development only: skip the host name check, still verify the chain [false]",
    ),
    (
        "MQTT_CA_CERTS",
        "PEM file of the CA that signed the broker's certificate [system roots]",
    ),
    ("MQTT_CERTFILE", "client certificate (PEM) for mutual TLS"),
    (
        "MQTT_KEYFILE",
        "its private key (PEM: PKCS#8, PKCS#1 or SEC1)",
    ),
    ("MQTT_USERNAME", "user name"),
    ("MQTT_PASSWORD", "password (never logged)"),
    (
        "MQTT_KEEPALIVE",
        "seconds between keepalive pings, 1 to 65535 [60]",
    ),
    ("MQTT_QOS", "0 or 1 (2 is used as 1) [1]"),
    (
        "MQTT_CLEAN_SESSION",
        "start a clean session instead of resuming the stored one [false]",
    ),
    (
        "MQTT_RECONNECT_MIN_DELAY",
        "first reconnect delay, seconds [1]",
    ),
    (
        "MQTT_RECONNECT_MAX_DELAY",
        "largest reconnect delay, seconds [120]",
    ),
];

/// The text after the options: the connection variables, then `extra` (the
/// binary's own), the exit codes and `RUST_LOG`.
pub fn after_help(extra: &[(&str, &str)]) -> String {
    debug_assert!(CONNECTION
        .iter()
        .map(|(v, _)| *v)
        .eq(VARIABLES.iter().copied()));
    let width = CONNECTION
        .iter()
        .chain(extra)
        .map(|(v, _)| v.len())
        .max()
        .unwrap_or(0);
    let mut out = String::from(
        "Variables (from the environment, or ./.env; the environment wins, a flag wins over both):\n",
    );
    for (var, what) in CONNECTION.iter().chain(extra) {
        out.push_str(&format!("  {var:<width$}  {what}\n"));
    }
    out.push_str(
        "\nExit codes:\n  0  success\n  1  unexpected failure\n  2  invalid configuration or arguments\n  \
         3  permanent failure of the broker connection or of a store (credentials, authorisation,\n     \
         certificates, a missing database)\n\
         \nLogging: RUST_LOG sets the level (error, warn, info, debug, trace) [info], \
         e.g. RUST_LOG=debug or RUST_LOG=mqtt_core=debug.\nReference: docs/reference.md",
    );
    out
}

/// Installs the log subscriber both binaries use: `RUST_LOG` (default `info`), on
/// stderr, coloured only on a terminal.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_connection_variable_has_a_line() {
        let text = super::after_help(&[("X_EXTRA", "extra")]);
        for var in super::VARIABLES {
            assert!(text.contains(var), "{var}");
        }
        assert!(text.contains("X_EXTRA") && text.contains("RUST_LOG"));
    }
}
