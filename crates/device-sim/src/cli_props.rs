//! Property tests of the command line (run in CI): any value of any flag parses or
//! is refused with a message, and what parses can be run: deadlines that do not
//! overflow, device ids that are valid or refused. Nothing panics.

use crate::cli::Cli;
use crate::fleet::device_ids;
use clap::Parser;
use proptest::prelude::*;

const FLAGS: &[&str] = &[
    "--count",
    "--id-prefix",
    "--interval",
    "--messages",
    "--duration",
    "--queue",
    "--queue-limit",
    "--seed",
    "--connect-rate",
    "--window",
    "--status-interval",
    "--broker-port",
];

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[^\u{0}]{0,40}",
        "[0-9.eE+-]{1,40}",
        "[0-9]{1,30}(ms|s|m|h)",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    #[test]
    fn any_flag_value_parses_or_is_refused(index in 0..FLAGS.len(), v in value()) {
        match Cli::try_parse_from(["device-sim", FLAGS[index], v.as_str()]) {
            Ok(cli) => {
                let now = std::time::Instant::now();
                let _ = now + cli.interval + cli.status_interval;
                let _ = now + cli.duration.unwrap_or_default();
                // The ramp's last start: count / rate seconds away.
                let _ = std::time::Duration::from_secs_f64(cli.count as f64 / cli.connect_rate);
                let _ = device_ids(&cli.id_prefix, cli.count.min(100));
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}
