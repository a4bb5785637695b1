//! Line-protocol encoding of one telemetry row (contract section 6): measurement,
//! tags `collector`, `detection_label`, `device_id`, every numeric reading as a float
//! field, `seq` as an integer, the two times as float seconds, and the reading's own
//! time in nanoseconds so a redelivery overwrites its point.
//!
//! Whatever a payload holds, an encoded row is exactly one line with the tags and
//! fields it was given: every name and tag value is escaped, control characters
//! become spaces, backslashes `/`, and what cannot be written (an empty key, `time`)
//! is left out.

use crate::store::TelemetryRow;
use serde_json::{Map, Value};
use std::fmt::Write as _;

/// Payload keys that are not readings: they become tags, the integer `seq` or the
/// point's time; the last two are the collector's own fields and win over a payload's.
const NOT_READINGS: [&str; 6] = [
    "device_id",
    "seq",
    "timestamp",
    "detection_label",
    "publish_timestamp",
    "collector_receive_time",
];

/// InfluxQL refuses a field named `time` (the whole point would be refused).
const FORBIDDEN_KEYS: [&str; 1] = ["time"];

/// One row as a line (no trailing newline), its time in nanoseconds.
pub fn encode(row: &TelemetryRow, measurement: &str, collector: &str) -> String {
    let obj = match serde_json::from_str::<Value>(&row.payload) {
        Ok(Value::Object(obj)) => obj,
        // Validation let only objects through; a row made elsewhere still gets its times.
        _ => Map::new(),
    };
    let mut line = String::with_capacity(64 + row.payload.len());
    escape_into(&mut line, measurement, &[',', ' ']);

    // Sorted by key, as InfluxDB prefers.
    let label = lookup(&obj, "detection_label").and_then(Value::as_str);
    let tags = [
        ("collector", Some(collector)),
        ("detection_label", label),
        ("device_id", Some(row.device_id.as_str())),
    ];
    for (key, value) in tags {
        // An empty tag value is a parse error; an absent tag says the same thing.
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            continue;
        };
        line.push(',');
        line.push_str(key);
        line.push('=');
        escape_into(&mut line, value, &[',', '=', ' ']);
    }

    let mut sep = ' ';
    let mut field = |line: &mut String, key: &str, value: &str| {
        line.push(sep);
        sep = ',';
        escape_into(line, key, &[',', '=', ' ']);
        line.push('=');
        line.push_str(value);
    };
    for (key, value) in readings(&obj) {
        field(&mut line, key, &float(value));
    }
    if let Some(seq) = row.seq {
        field(&mut line, "seq", &format!("{seq}i"));
    }
    if let Some(ts) = row.publish_ts {
        field(&mut line, "publish_timestamp", &float(ts));
    }
    field(&mut line, "collector_receive_time", &float(row.receive_ts));

    let _ = write!(line, " {}", nanos(row.publish_ts.unwrap_or(row.receive_ts)));
    line
}

/// Unix seconds to nanoseconds, rounded to whole microseconds: an `f64` near 1.7e9
/// resolves only some 0.2 µs, so finer digits would be noise (`.25` would come out
/// as `.249999872`). The same seconds always give the same nanoseconds, which is
/// what makes a redelivered reading land on its own point.
pub fn nanos(secs: f64) -> i64 {
    let micros = secs.trunc() as i64 * 1_000_000 + (secs.fract() * 1e6).round() as i64;
    micros.saturating_mul(1000)
}

/// A field of the payload: at the top level, else in an object nested one level
/// deep, looked up in the same order as `validate::field` does.
fn lookup<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| {
        obj.values().find_map(|v| match v {
            Value::Object(inner) => inner.get(name),
            _ => None,
        })
    })
}

/// Every numeric reading, top level first, then the nested ones whose name is not
/// taken yet (so a name maps to the value [`lookup`] finds). Strings, booleans,
/// arrays and deeper objects are not readings.
fn readings(obj: &Map<String, Value>) -> Vec<(&str, f64)> {
    let mut out: Vec<(&str, f64)> = Vec::new();
    let wanted = |key: &str, v: &Value| -> Option<f64> {
        if key.is_empty() || NOT_READINGS.contains(&key) || FORBIDDEN_KEYS.contains(&key) {
            return None;
        }
        v.as_f64().filter(|f| f.is_finite())
    };
    for (key, v) in obj {
        if let Some(f) = wanted(key, v) {
            out.push((key, f));
        }
    }
    for inner in obj.values().filter_map(Value::as_object) {
        for (key, v) in inner {
            if obj.contains_key(key) || out.iter().any(|(k, _)| k == key) {
                continue;
            }
            if let Some(f) = wanted(key, v) {
                out.push((key, f));
            }
        }
    }
    out
}

/// A float the way both InfluxDB and VictoriaMetrics parse it: `3.0`, `1e300`.
fn float(f: f64) -> String {
    format!("{f:?}")
}

/// Appends `s` with a backslash before each of `special`. Control characters become
/// a space (then escaped like one): a newline would end the line and start an
/// injected point, and a space still shows where it was. A backslash becomes `/`:
/// servers disagree on it (InfluxDB 1.x keeps `\\` as two characters and refuses a
/// value ending in one; 2.x and VictoriaMetrics read `\\` as one), so no escaping of
/// it reads back the same everywhere, and a bare one could swallow the separator.
fn escape_into(out: &mut String, s: &str, special: &[char]) {
    for c in s.chars() {
        let c = match c {
            c if c.is_control() => ' ',
            '\\' => '/',
            c => c,
        };
        if special.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(payload: &str, seq: Option<i64>, publish_ts: Option<f64>) -> TelemetryRow {
        TelemetryRow {
            device_id: "v1".into(),
            seq,
            topic: "device/data/v1".into(),
            publish_ts,
            receive_ts: 1_700_000_001.5,
            payload: payload.into(),
        }
    }

    #[test]
    fn a_reading_becomes_one_point_at_its_own_time() {
        let r = row(
            r#"{"device_id":"v1","timestamp":1700000000.25,"seq":7,"speed":42.5,"cpu_usage":3,"detection_label":"car"}"#,
            Some(7),
            Some(1_700_000_000.25),
        );
        assert_eq!(
            encode(&r, "device_data", "col-1"),
            "device_data,collector=col-1,detection_label=car,device_id=v1 \
             cpu_usage=3.0,speed=42.5,seq=7i,publish_timestamp=1700000000.25,\
             collector_receive_time=1700000001.5 1700000000250000000"
        );
    }

    #[test]
    fn without_a_timestamp_the_receive_time_is_the_point_time() {
        let line = encode(&row(r#"{"speed":1}"#, None, None), "m", "c");
        assert_eq!(
            line,
            "m,collector=c,device_id=v1 speed=1.0,collector_receive_time=1700000001.5 1700000001500000000"
        );
    }

    #[test]
    fn nested_readings_are_fields_and_the_top_level_wins() {
        let r = row(
            r#"{"device_id":"v1","speed":1,"data":{"speed":9,"ram_usage":2.5,"ok":true,"name":"x","deep":{"a":1}},"tags":[1,2]}"#,
            None,
            None,
        );
        let line = encode(&r, "m", "c");
        assert!(
            line.contains(" speed=1.0,ram_usage=2.5,collector_receive_time="),
            "{line}"
        );
        assert!(
            !line.contains("ok=") && !line.contains("name=") && !line.contains("a="),
            "{line}"
        );
    }

    #[test]
    fn a_nested_label_is_a_tag_and_non_string_labels_are_not() {
        let nested = encode(
            &row(
                r#"{"data":{"detection_label":"bus","speed":1}}"#,
                None,
                None,
            ),
            "m",
            "c",
        );
        assert!(nested.contains(",detection_label=bus,"), "{nested}");
        let number = encode(&row(r#"{"detection_label":5}"#, None, None), "m", "c");
        assert!(!number.contains("detection_label"), "{number}");
        let empty = encode(&row(r#"{"detection_label":""}"#, None, None), "m", "c");
        assert!(!empty.contains("detection_label"), "{empty}");
    }

    #[test]
    fn a_hostile_label_stays_one_tag_value() {
        let r = row(
            &serde_json::json!({"detection_label": "a b,c=d\n\"x\" y=1", "speed": 1}).to_string(),
            None,
            None,
        );
        let line = encode(&r, "device_data", "c");
        assert!(!line.contains('\n'));
        assert!(
            line.starts_with(
                r#"device_data,collector=c,detection_label=a\ b\,c\=d\ "x"\ y\=1,device_id=v1 speed=1.0,"#
            ),
            "{line}"
        );
    }

    #[test]
    fn names_and_backslashes_are_escaped() {
        let r = row(
            r#"{"a b":1,"x,y=z":2,"":3,"time":4,"t\\":5,"publish_timestamp":6,"detection_label":"end\\"}"#,
            None,
            None,
        );
        let line = encode(&r, "my meas,x", "c\tol");
        assert!(
            line.starts_with(r#"my\ meas\,x,collector=c\ ol,detection_label=end/,device_id=v1 "#),
            "{line}"
        );
        assert!(
            line.contains(r#" a\ b=1.0,t/=5.0,x\,y\=z=2.0,collector_receive_time="#),
            "{line}"
        );
        assert!(!line.contains("time=4") && !line.contains("=3.0"), "{line}");
    }

    #[test]
    fn floats_stay_parseable_at_any_size() {
        assert_eq!(float(1e300), "1e300");
        assert_eq!(float(-0.5), "-0.5");
        assert_eq!(float(3.0), "3.0");
        assert_eq!(float(1e-7), "1e-7");
        assert_eq!(nanos(1_700_000_000.25), 1_700_000_000_250_000_000);
        assert_eq!(nanos(1_700_000_000.123456), 1_700_000_000_123_456_000);
        assert_eq!(nanos(1_700_000_000.9999999), 1_700_000_001_000_000_000);
    }

    #[test]
    fn a_payload_that_is_not_an_object_still_gets_its_times() {
        let line = encode(&row("[1]", Some(3), Some(2.0)), "m", "c");
        assert_eq!(
            line,
            "m,collector=c,device_id=v1 seq=3i,publish_timestamp=2.0,collector_receive_time=1700000001.5 2000000000"
        );
    }
}
