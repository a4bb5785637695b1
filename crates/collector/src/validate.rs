//! Payload parsing and validation (contract section 3): turns one received MQTT
//! message into a telemetry row or a rejection with a reason a person understands.
//!
//! Never panics, whatever the bytes: invalid UTF-8, deep nesting (serde_json stops
//! at 128 levels and says so), `NaN` text and numbers beyond `f64` all end as a
//! rejection or, for an unusable timestamp, a row without a publish time.

use mqtt_core::message::{validate_device_id, DATA_PREFIX, LEGACY_PREFIX};
use serde_json::{Map, Value};

/// Default largest payload accepted, in bytes (256 KiB).
pub const DEFAULT_MAX_PAYLOAD: usize = 256 * 1024;

/// Timestamps above this are milliseconds (1e12 s is some 30,000 years away).
const MS_THRESHOLD: f64 = 1e12;

/// Largest plausible publish time in seconds (year 5138); beyond it the value is
/// kept in the payload but not used as a publish time.
const MAX_PLAUSIBLE_TS: f64 = 1e11;

/// A message that passed validation, ready to be stored in `telemetry`.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    /// From the payload, or the topic's last level when the payload has none.
    pub device_id: String,
    /// Per-device sequence number, when the publisher sends one.
    pub seq: Option<i64>,
    /// Unix seconds of the publish, converted from milliseconds when needed.
    pub publish_ts: Option<f64>,
    /// The payload exactly as received (valid UTF-8 JSON).
    pub payload: String,
}

/// Validates one payload received on `topic`; `Err` is the rejection reason.
pub fn validate(topic: &str, payload: &[u8], max_payload: usize) -> Result<Accepted, String> {
    if payload.len() > max_payload {
        return Err(format!("payload exceeds {max_payload} bytes"));
    }
    let text = std::str::from_utf8(payload).map_err(|e| {
        format!(
            "not a JSON object: the payload is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        )
    })?;
    let value: Value = serde_json::from_str(text).map_err(json_reason)?;
    let Value::Object(obj) = value else {
        return Err("not a JSON object".to_string());
    };

    let topic_id = topic.rsplit('/').next().unwrap_or(topic);
    let checks_topic = [DATA_PREFIX, LEGACY_PREFIX].iter().any(|prefix| {
        topic
            .strip_prefix(prefix)
            .is_some_and(|rest| !rest.contains('/'))
    });
    let device_id = match field(&obj, "device_id") {
        None | Some(Value::Null) => topic_id.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(format!("device_id must be a string, found {}", kind(other))),
    };
    validate_device_id(&device_id).map_err(|e| e.to_string())?;
    if checks_topic && device_id != topic_id {
        return Err(format!(
            "device_id {device_id:?} does not match topic {}",
            shorten(topic)
        ));
    }

    let seq = match field(&obj, "seq") {
        None | Some(Value::Null) => None,
        Some(v) => Some(seq_value(v).ok_or_else(|| {
            format!(
                "seq must be a whole number from 0 to 2^63-1, found {}",
                shorten(&v.to_string())
            )
        })?),
    };

    let publish_ts = field(&obj, "timestamp").and_then(timestamp_value);

    Ok(Accepted {
        device_id,
        seq,
        publish_ts,
        payload: text.to_string(),
    })
}

/// A field at the top level, else in an object nested one level deep.
fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| {
        obj.values().find_map(|v| match v {
            Value::Object(inner) => inner.get(name),
            _ => None,
        })
    })
}

fn seq_value(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                (i >= 0).then_some(i)
            } else if n.is_u64() {
                None
            } else {
                let f = n.as_f64()?;
                (f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f < 9.2e18).then_some(f as i64)
            }
        }
        _ => None,
    }
}

/// Seconds, from seconds or milliseconds, as a number or a numeric string;
/// `None` when it cannot be a publish time (the row is still stored).
fn timestamp_value(v: &Value) -> Option<f64> {
    let raw = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    if !raw.is_finite() || raw < 0.0 {
        return None;
    }
    let secs = if raw > MS_THRESHOLD {
        raw / 1000.0
    } else {
        raw
    };
    (secs <= MAX_PLAUSIBLE_TS).then_some(secs)
}

fn json_reason(e: serde_json::Error) -> String {
    let msg = e.to_string();
    if msg.contains("recursion limit") {
        "not a JSON object: nested deeper than serde_json's limit of 128 levels".to_string()
    } else {
        format!("not a JSON object: invalid JSON ({msg})")
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Keeps reasons readable when a hostile topic or value is very long.
fn shorten(s: &str) -> String {
    const MAX: usize = 200;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head}...")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(topic: &str, payload: &str) -> Accepted {
        validate(topic, payload.as_bytes(), DEFAULT_MAX_PAYLOAD).unwrap()
    }

    fn reject(topic: &str, payload: &[u8]) -> String {
        validate(topic, payload, DEFAULT_MAX_PAYLOAD).unwrap_err()
    }

    #[test]
    fn flat_payload_of_the_replaced_system() {
        let a = ok(
            "device/data/vehicle_01",
            r#"{"device_id":"vehicle_01","seq":7,"timestamp":1700000000.25,"speed":42.5}"#,
        );
        assert_eq!(a.device_id, "vehicle_01");
        assert_eq!(a.seq, Some(7));
        assert_eq!(a.publish_ts, Some(1700000000.25));
    }

    #[test]
    fn legacy_payload_milliseconds_nested_and_id_from_topic() {
        let a = ok(
            "vehicle/speed/truck-9",
            r#"{"timestamp":1700000000123,"data":{"speed":3.2}}"#,
        );
        assert_eq!(a.device_id, "truck-9");
        assert_eq!(a.seq, None);
        assert!((a.publish_ts.unwrap() - 1700000000.123).abs() < 1e-6);

        let nested = ok(
            "device/data/v1",
            r#"{"device_id":"v1","data":{"timestamp":1700000001,"seq":4,"speed":3.2}}"#,
        );
        assert_eq!(nested.seq, Some(4));
        assert_eq!(nested.publish_ts, Some(1700000001.0));
    }

    #[test]
    fn reasons_match_the_issue() {
        assert_eq!(reject("device/data/x", b"[1,2]"), "not a JSON object");
        assert!(reject("device/data/x", b"hello").starts_with("not a JSON object"));
        assert_eq!(
            reject("device/data/x", &vec![b' '; DEFAULT_MAX_PAYLOAD + 1]),
            "payload exceeds 262144 bytes"
        );
        assert_eq!(
            reject("custom/topic", br#"{"device_id":"a/b"}"#),
            r#"device_id "a/b" has characters outside [A-Za-z0-9_.-]"#
        );
        assert_eq!(
            reject("device/data/y", br#"{"device_id":"x"}"#),
            r#"device_id "x" does not match topic device/data/y"#
        );
        assert_eq!(
            reject("vehicle/speed/y", br#"{"device_id":"x"}"#),
            r#"device_id "x" does not match topic vehicle/speed/y"#
        );
        assert_eq!(
            reject("device/data/x", br#"{"device_id":7}"#),
            "device_id must be a string, found a number"
        );
        assert!(reject("device/data/x", br#"{"seq":"abc"}"#).starts_with("seq must be"));
        assert!(reject("device/data/x", br#"{"seq":-1}"#).starts_with("seq must be"));
        assert_eq!(
            reject("device/data/", br#"{"speed":1}"#),
            "device_id is empty"
        );
    }

    #[test]
    fn hostile_input_is_a_clean_reject() {
        assert!(reject("device/data/x", b"\xff\xfe{}").contains("UTF-8"));
        assert!(reject("device/data/x", b"{\"a\":\"\xc3\x28\"}").contains("UTF-8"));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(reject("device/data/x", deep.as_bytes()).contains("128 levels"));
        let deep_obj = format!(
            "{{\"device_id\":\"x\",\"d\":{}{}}}",
            "{\"a\":".repeat(10_000),
            "}".repeat(10_000)
        );
        assert!(reject("device/data/x", deep_obj.as_bytes()).contains("128 levels"));
        assert!(reject("device/data/x", br#"{"timestamp":NaN}"#).starts_with("not a JSON object"));
        assert!(reject("device/data/x", br#"{"timestamp":1e400}"#).starts_with("not a JSON object"));
        assert!(reject("device/data/x", b"").starts_with("not a JSON object"));
        assert!(reject("device/data/x", b"\0").starts_with("not a JSON object"));
        let long_id = "x".repeat(129);
        assert!(reject(&format!("device/data/{long_id}"), b"{}").contains("129 characters"));
    }

    #[test]
    fn odd_values_never_panic_and_keep_the_row() {
        let a = ok("device/data/x", r#"{"timestamp":"NaN","seq":null}"#);
        assert_eq!(a.publish_ts, None);
        assert_eq!(a.seq, None);
        let a = ok("device/data/x", r#"{"timestamp":1e300,"speed":1e308}"#);
        assert_eq!(a.publish_ts, None);
        let a = ok("device/data/x", r#"{"timestamp":-5}"#);
        assert_eq!(a.publish_ts, None);
        let a = ok("device/data/x", r#"{"timestamp":"1700000000.5"}"#);
        assert_eq!(a.publish_ts, Some(1700000000.5));
        let a = ok("device/data/x", r#"{"seq":12.0}"#);
        assert_eq!(a.seq, Some(12));
        assert!(reject("device/data/x", br#"{"seq":18446744073709551615}"#).starts_with("seq"));
        assert!(reject("device/data/x", br#"{"seq":1.5}"#).starts_with("seq"));
        let a = ok("device/data/x", r#"{"a":{"b":{"seq":3}}}"#);
        assert_eq!(a.seq, None, "only one level of nesting is read");
    }

    #[test]
    fn unicode_topic_and_payload() {
        let a = ok("device/data/x", r#"{"detection_label":"café 🚗"}"#);
        assert!(a.payload.contains("café"));
        assert!(reject("device/data/é", b"{}").contains("characters outside"));
    }
}
