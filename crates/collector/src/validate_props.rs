//! Property tests of the payload validator with a fixed budget (run in CI): whatever
//! the bytes and the topic, it returns, and the answer is either a row that obeys
//! the contract or a rejection with a reason.

use crate::validate::{validate, DEFAULT_MAX_PAYLOAD};
use mqtt_core::message::validate_device_id;
use proptest::prelude::*;
use serde_json::{Map, Number, Value};

fn check(topic: &str, payload: &[u8]) {
    match validate(topic, payload, DEFAULT_MAX_PAYLOAD) {
        Ok(a) => {
            validate_device_id(&a.device_id).expect("an accepted device id obeys the rules");
            assert_eq!(
                a.payload.as_bytes(),
                payload,
                "the payload is kept as received"
            );
            assert!(a.seq.is_none_or(|s| s >= 0));
            assert!(a.publish_ts.is_none_or(|t| t.is_finite() && t >= 0.0));
            let v: Value = serde_json::from_str(&a.payload).unwrap();
            assert!(v.is_object(), "only objects are accepted");
        }
        Err(reason) => {
            assert!(!reason.trim().is_empty(), "a rejection always has a reason");
            assert!(
                reason.len() < 1024,
                "reasons stay short: {} bytes",
                reason.len()
            );
        }
    }
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        any::<u64>().prop_map(|n| Value::Number(n.into())),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        ".{0,40}".prop_map(Value::String),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("device_id".to_string()),
                    Just("seq".to_string()),
                    Just("timestamp".to_string()),
                    Just("data".to_string()),
                    "[a-z_]{1,12}",
                ],
                inner,
                0..8
            )
            .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn topic() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_.-]{1,20}".prop_map(|id| format!("device/data/{id}")),
        "[A-Za-z0-9_.-]{1,20}".prop_map(|id| format!("vehicle/speed/{id}")),
        ".{0,30}".prop_map(|t| format!("device/data/{t}")),
        "[a-z/]{0,30}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_are_stored_or_rejected(topic in topic(), payload in prop::collection::vec(any::<u8>(), 0..512)) {
        check(&topic, &payload);
    }

    #[test]
    fn arbitrary_json_is_stored_or_rejected(topic in topic(), value in json()) {
        check(&topic, &serde_json::to_vec(&value).unwrap());
    }

    #[test]
    fn well_formed_readings_are_always_stored(
        id in "[A-Za-z0-9_.-]{1,64}",
        seq in 0u64..1u64 << 53,
        ts in 1.0e9f64..4.0e9,
        millis in any::<bool>(),
        nested in any::<bool>(),
        speed in 0.0f64..120.0,
    ) {
        let timestamp = if millis { ts * 1000.0 } else { ts };
        let readings = serde_json::json!({"speed": speed, "seq": seq, "timestamp": timestamp});
        let payload = if nested {
            serde_json::json!({"device_id": id, "data": readings})
        } else {
            let mut v = readings;
            v["device_id"] = Value::String(id.clone());
            v
        };
        let bytes = serde_json::to_vec(&payload).unwrap();
        let a = validate(&format!("device/data/{id}"), &bytes, DEFAULT_MAX_PAYLOAD).unwrap();
        prop_assert_eq!(a.device_id, id);
        prop_assert_eq!(a.seq, Some(seq as i64));
        let got = a.publish_ts.unwrap();
        prop_assert!((got - ts).abs() < 1e-3, "{} vs {}", got, ts);
    }
}
