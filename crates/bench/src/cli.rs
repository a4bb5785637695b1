//! The command line of `bench` (clap derive; the doc comments are the help text).

use clap::{Parser, ValueEnum};
use std::path::PathBuf;

/// Measures collector and device-sim against peers on a Mosquitto it starts itself
/// on free loopback ports: ingest throughput (vs mosquitto_sub and a paho-mqtt
/// stand-in), end-to-end latency, device scale, the cost of TLS, the offline queue,
/// the collector's stores (SQLite, PostgreSQL, InfluxDB) and 1 to 3 collectors in
/// one share group.
///
/// Needs mosquitto, mosquitto_sub, python3 with paho-mqtt (`pip install paho-mqtt`)
/// and ss on the PATH. Builds the release binaries of collector and device-sim
/// first unless --no-build. Never run in CI: figures are noisy on a shared machine,
/// so every scenario compares against peers measured in the same run.
#[derive(Debug, Parser)]
#[command(name = "bench", version, about, long_about)]
pub struct Cli {
    /// Small loads so the whole run takes under two minutes
    #[arg(long)]
    pub quick: bool,
    /// Run only this scenario (repeatable); default all
    #[arg(long = "scenario", value_enum, value_name = "NAME")]
    pub scenarios: Vec<Scenario>,
    /// Also write the results as JSON to this file
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Mosquitto's max_inflight_messages (its default is 20): how many unacknowledged
    /// QoS 1 messages it sends one subscriber before waiting for PUBACKs
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub max_inflight: u32,
    /// Start every broker with `set_tcp_nodelay true` (Mosquitto's default is false: Nagle's algorithm on)
    #[arg(long)]
    pub tcp_nodelay: bool,
    /// Messages per consumer in the throughput, stores and scale-out scenarios [default 100000, 20000 with --quick]
    #[arg(long, value_name = "N")]
    pub messages: Option<u64>,
    /// Use the collector and device-sim found next to this binary without running cargo build
    #[arg(long)]
    pub no_build: bool,
    /// Keep the working directory (broker configs, logs, databases) and print its path
    #[arg(long)]
    pub keep: bool,
}

/// The scenarios of issue 6, of issue 11 (stores) and of issue 12 (scale-out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Scenario {
    /// 1. Drain of a queued persistent session: collector vs mosquitto_sub vs paho, plain and TLS
    Throughput,
    /// 2. device-sim into the collector at 100, 1,000 and 10,000 msg/s: publish-to-store latency
    Latency,
    /// 3. 1,000 and 10,000 TLS devices in one device-sim: connect time, memory, CPU
    Scale,
    /// 4. Plain vs TLS: latency, bytes on the wire per message, connect time per device
    Tls,
    /// 5. device-sim's offline queue: enqueue with the broker down, drain when it is back
    Queue,
    /// 6. The throughput drain into the collector with SQLite, PostgreSQL and InfluxDB (servers started here)
    Stores,
    /// 7. The PostgreSQL drain by 1, 2 and 3 collectors in one share group (one broker, one PostgreSQL)
    ScaleOut,
}

impl Scenario {
    /// Every scenario, in the order they run.
    pub const ALL: [Scenario; 7] = [
        Scenario::Throughput,
        Scenario::Latency,
        Scenario::Scale,
        Scenario::Tls,
        Scenario::Queue,
        Scenario::Stores,
        Scenario::ScaleOut,
    ];

    /// The name used on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Throughput => "throughput",
            Scenario::Latency => "latency",
            Scenario::Scale => "scale",
            Scenario::Tls => "tls",
            Scenario::Queue => "queue",
            Scenario::Stores => "stores",
            Scenario::ScaleOut => "scale-out",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "bench",
            "--quick",
            "--scenario",
            "latency",
            "--scenario",
            "tls",
        ])
        .unwrap();
        assert!(cli.quick);
        assert_eq!(cli.scenarios, [Scenario::Latency, Scenario::Tls]);
        assert!(Cli::try_parse_from(["bench", "--scenario", "nope"]).is_err());
    }
}
