//! The InfluxDB store against real servers: influxd 1.x through the v1 `/write` API
//! (read back with InfluxQL) and VictoriaMetrics through `/api/v2/write` (read back
//! with `/api/v1/export`). Rows are made by the collector's own validation, as ingest
//! makes them.

use collector::store::influx::{line::nanos, InfluxConfig, InfluxStore};
use collector::store::{Record, RejectedRow, Store, StoreError, TelemetryRow, WriteOutcome};
use collector::validate::{validate, DEFAULT_MAX_PAYLOAD};
use serde_json::{json, Value};
use std::io::Write;
use std::sync::{Arc, Mutex};
use testkit::{InfluxDb, VictoriaMetrics};

const DB: &str = "telemetry";
const COLLECTOR: &str = "collector-test";
/// A fixed reading time with a fraction, 2025-11-24.
const T0: f64 = 1_764_000_000.125;

/// A telemetry record for `payload` on `device/data/{device}`, as ingest builds it.
fn record(device: &str, payload: &Value) -> Record {
    let topic = format!("device/data/{device}");
    let bytes = payload.to_string();
    let ok = validate(&topic, bytes.as_bytes(), DEFAULT_MAX_PAYLOAD).expect("a valid payload");
    Record::Telemetry(TelemetryRow {
        device_id: ok.device_id,
        seq: ok.seq,
        topic,
        publish_ts: ok.publish_ts,
        receive_ts: T0 + 100.0,
        payload: ok.payload,
    })
}

fn reading(device: &str, seq: i64) -> Record {
    record(
        device,
        &json!({
            "device_id": device,
            "timestamp": T0 + seq as f64,
            "seq": seq,
            "speed": 40.5 + seq as f64,
            "cpu_usage": 12,
            "detection_label": "car",
            "data": {"ram_usage": 55.25},
        }),
    )
}

fn rejected() -> Record {
    Record::Rejected(RejectedRow {
        topic: "device/data/x".into(),
        receive_ts: T0,
        reason: "not a JSON object".into(),
        payload: b"nope".to_vec(),
    })
}

fn v1_store(db: &InfluxDb, name: &str) -> InfluxStore {
    InfluxStore::new(InfluxConfig::v1(db.url(), name, COLLECTOR)).expect("a valid configuration")
}

/// The rows of one InfluxQL result as column name -> value maps.
fn rows(result: &Value) -> Vec<serde_json::Map<String, Value>> {
    let Some(series) = result["results"][0]["series"].as_array() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for s in series {
        let cols: Vec<&str> = s["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        for v in s["values"].as_array().unwrap() {
            let map = cols
                .iter()
                .zip(v.as_array().unwrap())
                .map(|(c, v)| (c.to_string(), v.clone()))
                .collect();
            out.push(map);
        }
    }
    out
}

fn count_points(db: &InfluxDb) -> u64 {
    let out = db.query(DB, "SELECT count(collector_receive_time) FROM device_data");
    rows(&out)
        .first()
        .map(|r| r["count"].as_u64().unwrap())
        .unwrap_or(0)
}

#[test]
fn v1_points_carry_the_fields_tags_and_the_reading_time() {
    let db = InfluxDb::start(None);
    db.create_db(DB);
    let mut store = v1_store(&db, DB);
    let batch = vec![
        reading("v01", 1),
        rejected(),
        reading("v01", 2),
        reading("v02", 1),
    ];
    let out = store.write_batch(&batch).unwrap();
    assert_eq!(
        out,
        WriteOutcome {
            stored: 3,
            duplicates: 0,
            rejected: 1
        }
    );

    let got = rows(&db.query(
        DB,
        "SELECT * FROM device_data WHERE device_id = 'v01' ORDER BY time",
    ));
    assert_eq!(got.len(), 2, "{got:?}");
    let p = &got[1];
    assert_eq!(p["time"], json!(nanos(T0 + 2.0)));
    assert_eq!(p["time"], json!(1_764_000_002_125_000_000u64));
    assert_eq!(p["device_id"], "v01");
    assert_eq!(p["collector"], COLLECTOR);
    assert_eq!(p["detection_label"], "car");
    assert_eq!(p["speed"].as_f64(), Some(42.5));
    // InfluxDB prints the float 12.0 as `12`; its type is checked below.
    assert_eq!(p["cpu_usage"].as_f64(), Some(12.0));
    assert_eq!(p["ram_usage"].as_f64(), Some(55.25));
    assert_eq!(p["seq"], json!(2));
    assert_eq!(p["publish_timestamp"].as_f64(), Some(T0 + 2.0));
    assert_eq!(p["collector_receive_time"].as_f64(), Some(T0 + 100.0));

    let types = rows(&db.query(DB, "SHOW FIELD KEYS FROM device_data"));
    let type_of = |k: &str| {
        types
            .iter()
            .find(|r| r["fieldKey"] == k)
            .map(|r| r["fieldType"].clone())
    };
    assert_eq!(type_of("seq"), Some(json!("integer")));
    assert_eq!(type_of("speed"), Some(json!("float")));
    assert_eq!(type_of("publish_timestamp"), Some(json!("float")));
    assert_eq!(
        type_of("timestamp"),
        None,
        "the time is the point's, not a field"
    );
}

#[test]
fn the_same_batch_twice_leaves_one_point_per_reading() {
    let db = InfluxDb::start(None);
    db.create_db(DB);
    let mut store = v1_store(&db, DB);
    let batch: Vec<Record> = (1..=20).map(|s| reading("v01", s)).collect();
    assert_eq!(store.write_batch(&batch).unwrap().stored, 20);
    assert_eq!(store.write_batch(&batch).unwrap().stored, 20);
    assert_eq!(count_points(&db), 20);
}

#[test]
fn a_stopped_server_is_unavailable_and_the_same_batch_succeeds_after_restart() {
    let mut db = InfluxDb::start(None);
    db.create_db(DB);
    let mut store = v1_store(&db, DB);
    let batch: Vec<Record> = (1..=5).map(|s| reading("v01", s)).collect();
    assert_eq!(store.write_batch(&batch[..2]).unwrap().stored, 2);
    db.stop();
    let err = store.write_batch(&batch).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Unavailable {
                store: "InfluxDB",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_transient());
    db.start_again();
    assert_eq!(store.write_batch(&batch).unwrap().stored, 5);
    assert_eq!(count_points(&db), 5);
}

#[test]
fn a_wrong_password_is_refused_without_showing_it() {
    let db = InfluxDb::start(Some(("admin", "right-pw")));
    db.create_db(DB);
    let cfg = InfluxConfig::v1(db.url(), DB, COLLECTOR).with_credentials("admin", "wrong-pw-123");
    let mut store = InfluxStore::new(cfg).unwrap();
    let err = store.write_batch(&[reading("v01", 1)]).unwrap_err();
    assert!(err.is_refusal(), "{err:?}");
    let msg = err.to_string();
    assert!(!msg.contains("wrong-pw-123"), "{msg}");
    assert!(msg.contains("password"), "{msg}");

    let no_credentials = v1_store(&db, DB).write_batch(&[reading("v01", 1)]);
    assert!(no_credentials.unwrap_err().is_refusal());

    let cfg = InfluxConfig::v1(db.url(), DB, COLLECTOR).with_credentials("admin", "right-pw");
    let out = InfluxStore::new(cfg)
        .unwrap()
        .write_batch(&[reading("v01", 1)])
        .unwrap();
    assert_eq!(out.stored, 1);
}

#[test]
fn a_missing_database_is_refused_by_name() {
    let db = InfluxDb::start(None);
    let err = v1_store(&db, "no_such_db")
        .write_batch(&[reading("v01", 1)])
        .unwrap_err();
    assert!(err.is_refusal(), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("no_such_db") && msg.contains("create database"),
        "{msg}"
    );
}

#[test]
fn a_hostile_label_is_one_tag_value_and_injects_nothing() {
    let db = InfluxDb::start(None);
    db.create_db(DB);
    let label = "a b,c=d\n\"x\" y=1";
    let hostile = record(
        "v01",
        &json!({"device_id": "v01", "timestamp": T0, "speed": 1.5, "detection_label": label}),
    );
    let trailing = record(
        "v02",
        &json!({"device_id": "v02", "timestamp": T0, "speed": 2.5, "detection_label": "end\\"}),
    );
    let out = v1_store(&db, DB).write_batch(&[hostile, trailing]).unwrap();
    assert_eq!(out.stored, 2);
    assert_eq!(count_points(&db), 2);

    let got = rows(&db.query(DB, "SELECT * FROM device_data WHERE device_id = 'v01'"));
    assert_eq!(got.len(), 1, "{got:?}");
    // The newline became a space; everything else is kept as written.
    assert_eq!(got[0]["detection_label"], "a b,c=d \"x\" y=1");
    assert_eq!(got[0]["speed"].as_f64(), Some(1.5));
    let fields: Vec<Value> = rows(&db.query(DB, "SHOW FIELD KEYS FROM device_data"))
        .iter()
        .map(|r| r["fieldKey"].clone())
        .collect();
    assert_eq!(
        fields,
        json!(["collector_receive_time", "publish_timestamp", "speed"])
            .as_array()
            .unwrap()
            .clone()
    );
    let tags: Vec<Value> = rows(&db.query(DB, "SHOW TAG KEYS FROM device_data"))
        .iter()
        .map(|r| r["tagKey"].clone())
        .collect();
    assert_eq!(
        tags,
        vec![
            json!("collector"),
            json!("detection_label"),
            json!("device_id")
        ]
    );
    let measurements = rows(&db.query(DB, "SHOW MEASUREMENTS"));
    assert_eq!(measurements.len(), 1, "{measurements:?}");

    let other = rows(&db.query(DB, "SELECT * FROM device_data WHERE device_id = 'v02'"));
    assert_eq!(
        other.len(),
        1,
        "a trailing backslash swallowed the separator: {other:?}"
    );
    assert_eq!(other[0]["speed"].as_f64(), Some(2.5));
    assert_eq!(other[0]["detection_label"], "end/");
}

/// Log lines of the store, captured for this thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_field_type_conflict_rejects_that_point_and_stores_the_rest() {
    let db = InfluxDb::start(None);
    db.create_db(DB);
    // An earlier writer made `odometer` an integer in this shard.
    let legacy = format!("device_data,device_id=legacy odometer=5i {}", nanos(T0));
    assert_eq!(db.write_lines(DB, &legacy).0, 204);

    let mut batch: Vec<Record> = (1..=7).map(|s| reading("v01", s)).collect();
    batch.insert(
        3,
        record(
            "v09",
            &json!({"device_id": "v09", "timestamp": T0 + 0.5, "seq": 1, "odometer": 12.5}),
        ),
    );
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, || {
        v1_store(&db, DB).write_batch(&batch).unwrap()
    });
    assert_eq!(
        out,
        WriteOutcome {
            stored: 7,
            duplicates: 0,
            rejected: 1
        }
    );
    // The legacy point has no collector_receive_time: not counted.
    assert_eq!(count_points(&db), 7);
    let v09 = rows(&db.query(DB, "SELECT * FROM device_data WHERE device_id = 'v09'"));
    assert!(v09.is_empty(), "{v09:?}");

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("refused a point"))
        .unwrap_or_else(|| panic!("no WARN line: {text}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("field type conflict"), "{line}");
    assert!(
        line.contains("device/data/v09") && line.contains("v09"),
        "{line}"
    );
}

#[test]
fn v2_write_to_victoria_metrics_is_exported_with_labels_and_time() {
    let vm = VictoriaMetrics::start();
    let cfg = InfluxConfig::v2(vm.url(), "bucket", "org", "any-token", COLLECTOR);
    let mut store = InfluxStore::new(cfg).unwrap();
    let batch = vec![reading("v01", 1), reading("v01", 2), rejected()];
    let out = store.write_batch(&batch).unwrap();
    assert_eq!((out.stored, out.rejected), (2, 1));
    // Twice: the same readings land on the same samples.
    store.write_batch(&batch).unwrap();

    let series = vm.export(r#"{__name__="device_data_speed"}"#);
    assert_eq!(series.len(), 1, "{series:?}");
    let s = &series[0];
    assert_eq!(s["metric"]["device_id"], "v01");
    assert_eq!(s["metric"]["collector"], COLLECTOR);
    assert_eq!(s["metric"]["detection_label"], "car");
    assert_eq!(s["values"], json!([41.5, 42.5]));
    let millis = |t: f64| json!((nanos(t) / 1_000_000) as u64);
    assert_eq!(s["timestamps"], json!([millis(T0 + 1.0), millis(T0 + 2.0)]));

    let seq = vm.export(r#"{__name__="device_data_seq"}"#);
    assert_eq!(seq[0]["values"], json!([1, 2]), "{seq:?}");
}

#[test]
fn https_needs_the_right_ca_and_plain_http_to_it_is_refused() {
    let pki = testkit::Pki::new();
    let db = InfluxDb::start_tls(None, &pki);
    db.create_db(DB);
    let https = |ca: &std::path::Path| {
        let mut cfg = InfluxConfig::v1(db.url(), DB, COLLECTOR);
        cfg.ca_file = Some(ca.to_path_buf());
        InfluxStore::new(cfg).unwrap()
    };
    let out = https(&pki.ca_crt)
        .write_batch(&[reading("v01", 1)])
        .unwrap();
    assert_eq!(out.stored, 1);
    assert_eq!(count_points(&db), 1);

    let stranger = testkit::Pki::new();
    let err = https(&stranger.ca_crt)
        .write_batch(&[reading("v01", 2)])
        .unwrap_err();
    assert!(err.is_refusal(), "{err:?}");
    assert!(err.to_string().contains("TLS"), "{err}");

    let plain = InfluxConfig::v1(format!("http://127.0.0.1:{}", db.port), DB, COLLECTOR);
    let err = InfluxStore::new(plain)
        .unwrap()
        .write_batch(&[reading("v01", 2)])
        .unwrap_err();
    assert!(err.is_refusal(), "{err:?}");
    assert!(err.to_string().contains("https://"), "{err}");
    assert_eq!(count_points(&db), 1);
}
