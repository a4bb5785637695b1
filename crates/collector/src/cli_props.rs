//! Property tests of the command line (run in CI): any value of any flag, and any
//! `MQTT_TOPICS`, parses or is refused with a message; nothing panics.

use crate::cli::{db_path, ready_file, topics, Cli};
use clap::Parser;
use mqtt_core::Env;
use proptest::prelude::*;

const FLAGS: &[&[&str]] = &[
    &["--db"],
    &["--topic"],
    &["--batch-size"],
    &["--pipeline"],
    &["--flush-interval"],
    &["--sync"],
    &["--max-payload"],
    &["--status-interval"],
    &["--ready-file"],
    &["--broker-host"],
    &["--broker-port"],
    &["stats", "--db"],
    &["certgen", "--days"],
    &["certgen", "--host"],
    &["certgen", "--client"],
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
        let mut args = vec!["collector".to_string()];
        args.extend(FLAGS[index].iter().map(|s| s.to_string()));
        args.push(v.clone());
        match Cli::try_parse_from(&args) {
            Ok(cli) => {
                let env = Env::default();
                let _ = topics(&cli.run.topics, &env);
                let _ = db_path(cli.run.db.as_ref(), &env);
                let _ = ready_file(cli.run.ready_file.as_ref(), &env);
                // The durations are usable as deadlines.
                let _ = std::time::Instant::now() + cli.run.flush_interval + cli.run.status_interval;
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn any_topic_list_is_accepted_or_explained(v in any::<String>()) {
        if let Err(e) = topics(&[], &Env::from_pairs([("MQTT_TOPICS", v.as_str())])) {
            prop_assert!(!e.is_empty());
        }
    }
}
