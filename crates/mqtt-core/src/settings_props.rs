//! Property tests of every parser of variables, with a fixed budget (run in CI):
//! whatever the text, the answer is a value or an error naming the variable, never
//! a panic.

use crate::settings::{parse_duration, Env, Settings, MAX_DURATION, VARIABLES};
use proptest::prelude::*;

/// Text that is sometimes a number, sometimes a duration, sometimes anything.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9.eE+-]{1,40}",
        "[0-9]{1,30}(ms|s|m|h|y)?([0-9]{1,25}(ms|s|m|h))?",
        Just("1e309".to_string()),
        Just("-0".to_string()),
        Just("NaN".to_string()),
        Just("inf".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    #[test]
    fn durations_parse_or_explain(s in value()) {
        match parse_duration(&s) {
            Ok(d) => prop_assert!(d <= MAX_DURATION),
            Err(e) => prop_assert!(!e.is_empty()),
        }
    }

    #[test]
    fn every_variable_takes_any_text(index in 0..VARIABLES.len(), v in value()) {
        let var = VARIABLES[index];
        // TLS on, so the TLS variables are read too.
        let env = Env::from_pairs([(var, v.as_str()), ("MQTT_USE_TLS", "true")]);
        if let Err(e) = Settings::from_env(&env) {
            let msg = e.to_string();
            prop_assert!(!msg.is_empty());
            if var == "MQTT_PASSWORD" && v.trim().len() > 3 {
                prop_assert!(!msg.contains(v.trim()), "the password leaked: {}", msg);
            }
        }
    }

    #[test]
    fn any_env_file_loads_or_explains(text in any::<String>()) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join(".env");
        std::fs::write(&f, &text).unwrap();
        if let Err(e) = Env::load(Some(&f)) {
            prop_assert!(e.to_string().contains(".env"));
        }
    }
}
