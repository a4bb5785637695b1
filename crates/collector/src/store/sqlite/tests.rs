//! Tests of the SQLite store on temporary files.

use super::*;
use crate::store::{test_row as row, RejectedRow, TelemetryRow};

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get::<_, f64>(0)).unwrap() as i64
}

#[test]
fn creates_schema_in_wal_and_dedups() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let mut store = SqliteStore::open(&path, SyncMode::Normal).unwrap();
    let out = store
        .write_batch(&[
            row("a", Some(1)),
            row("a", Some(2)),
            row("a", Some(1)),
            row("b", None),
            row("b", None),
            Record::Rejected(RejectedRow {
                topic: "device/data/x".into(),
                receive_ts: 2.0,
                reason: "not a JSON object".into(),
                payload: b"\xff".to_vec(),
            }),
        ])
        .unwrap();
    // Without seq, the same device sending the same bytes again is a duplicate.
    assert_eq!(
        out,
        WriteOutcome {
            stored: 3,
            duplicates: 2,
            rejected: 1
        }
    );
    let out = store.write_batch(&[row("a", Some(2))]).unwrap();
    assert_eq!(out.duplicates, 1);
    drop(store);

    let conn = Connection::open(&path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(count(&conn, "SELECT count(*) FROM telemetry"), 3);
    assert_eq!(
        count(&conn, "SELECT value FROM counters WHERE name='duplicates'"),
        3
    );
    let blob: Vec<u8> = conn
        .query_row("SELECT payload FROM rejected", [], |r| r.get(0))
        .unwrap();
    assert_eq!(blob, b"\xff");
}

#[test]
fn a_reused_seq_with_another_reading_is_kept_in_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(&dir.path().join("c.db"), SyncMode::Normal).unwrap();
    let reading = |speed: f64, ts: f64| {
        Record::Telemetry(TelemetryRow {
            device_id: "v1".into(),
            seq: Some(7),
            topic: "device/data/v1".into(),
            publish_ts: Some(ts),
            receive_ts: ts + 0.1,
            payload: format!(r#"{{"device_id":"v1","seq":7,"timestamp":{ts},"speed":{speed}}}"#),
        })
    };
    assert_eq!(
        store.write_batch(&[reading(10.0, 100.0)]).unwrap().stored,
        1
    );
    // A resend carries its own publish time: still the same reading.
    let out = store.write_batch(&[reading(10.0, 105.0)]).unwrap();
    assert_eq!((out.stored, out.duplicates, out.rejected), (0, 1, 0));
    // Another reading under the same number is not thrown away.
    let out = store.write_batch(&[reading(55.5, 200.0)]).unwrap();
    assert_eq!((out.stored, out.duplicates, out.rejected), (0, 0, 1));
    let reason: String = store
        .conn
        .query_row("SELECT reason FROM rejected", [], |r| r.get(0))
        .unwrap();
    assert!(
        reason.contains("already stored with a different reading"),
        "{reason}"
    );
}

#[test]
fn the_wal_is_copied_back_off_the_commit_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let mut store = SqliteStore::open(&path, SyncMode::Normal).unwrap();
    let auto: i64 = store
        .conn
        .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
        .unwrap();
    assert_eq!(auto, 0, "commits must not checkpoint");
    let size = || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let empty = size();
    for b in 0..100 {
        let batch: Vec<Record> = (0..20).map(|i| row("dev", Some(b * 20 + i))).collect();
        store.write_batch(&batch).unwrap();
    }
    // The checkpointer thread moves the pages into the database file by itself.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while size() <= empty && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        size() > empty,
        "no checkpoint within 10 s ({} bytes)",
        size()
    );
    drop(store);
    let conn = Connection::open(&path).unwrap();
    assert_eq!(count(&conn, "SELECT count(*) FROM telemetry"), 2000);
}

#[test]
fn reopens_an_existing_database_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    SqliteStore::open(&path, SyncMode::Full)
        .unwrap()
        .write_batch(&[row("a", Some(1))])
        .unwrap();
    let mut store = SqliteStore::open(&path, SyncMode::Normal).unwrap();
    let out = store
        .write_batch(&[row("a", Some(1)), row("a", Some(2))])
        .unwrap();
    assert_eq!((out.stored, out.duplicates), (1, 1));
}

#[test]
fn refuses_files_of_other_programs() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(
        &text,
        "this is not a database, just text that is long enough",
    )
    .unwrap();
    let err = SqliteStore::open(&text, SyncMode::Normal)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not an SQLite database"), "{err}");

    let other = dir.path().join("other.db");
    Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE telemetry (x INTEGER)")
        .unwrap();
    let err = SqliteStore::open(&other, SyncMode::Normal)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no column device_id"), "{err}");
    assert!(open_read_only(&dir.path().join("missing.db")).is_err());
}

#[test]
fn a_failed_write_stores_nothing_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let mut store = SqliteStore::open(&path, SyncMode::Normal).unwrap();
    // Another writer holding the lock past the busy timeout is one way a commit fails.
    store.conn.busy_timeout(std::time::Duration::ZERO).unwrap();
    let other = Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let err = store.write_batch(&[row("a", Some(1))]).unwrap_err();
    assert!(
        err.to_string().contains("cannot write to the database"),
        "{err}"
    );
    other.execute_batch("ROLLBACK").unwrap();
    assert_eq!(count(&other, "SELECT count(*) FROM telemetry"), 0);
}

fn legacy(device: &str, payload: &str, receive_ts: f64) -> Record {
    Record::Telemetry(TelemetryRow {
        device_id: device.into(),
        seq: None,
        topic: format!("device/data/{device}"),
        publish_ts: Some(1.0),
        receive_ts,
        payload: payload.into(),
    })
}

#[test]
fn seq_less_messages_and_rejections_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let mut store = SqliteStore::open(&path, SyncMode::Normal).unwrap();
    let retained = r#"{"device_id":"v1","timestamp":1.0,"speed":3}"#;
    let bad = Record::Rejected(RejectedRow {
        topic: "device/data/v1".into(),
        receive_ts: 2.0,
        reason: "not a JSON object".into(),
        payload: b"oops".to_vec(),
    });
    // A retained message sent again at each of six collector starts.
    for start in 0..6 {
        let out = store
            .write_batch(&[legacy("v1", retained, start as f64), bad.clone()])
            .unwrap();
        let want = if start == 0 {
            WriteOutcome {
                stored: 1,
                duplicates: 0,
                rejected: 1,
            }
        } else {
            WriteOutcome {
                stored: 0,
                duplicates: 2,
                rejected: 0,
            }
        };
        assert_eq!(out, want, "start {start}");
    }
    // Another device, or other bytes, are other messages.
    let out = store
        .write_batch(&[
            legacy("v2", retained, 9.0),
            legacy("v1", r#"{"device_id":"v1","timestamp":2.0,"speed":3}"#, 9.0),
        ])
        .unwrap();
    assert_eq!(out.stored, 2);
    drop(store);
    let conn = Connection::open(&path).unwrap();
    assert_eq!(count(&conn, "SELECT count(*) FROM telemetry"), 3);
    assert_eq!(count(&conn, "SELECT count(*) FROM rejected"), 1);
    assert_eq!(
        count(&conn, "SELECT value FROM counters WHERE name='duplicates'"),
        10
    );
}

#[test]
fn an_older_database_is_migrated_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        // The schema of the previous version, with the repeats it let in.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE telemetry (id INTEGER PRIMARY KEY, device_id TEXT NOT NULL, seq INTEGER,
                 topic TEXT NOT NULL, publish_ts REAL, receive_ts REAL NOT NULL, payload TEXT NOT NULL);
             CREATE UNIQUE INDEX telemetry_device_seq ON telemetry (device_id, seq);
             CREATE TABLE rejected (id INTEGER PRIMARY KEY, topic TEXT, receive_ts REAL, reason TEXT, payload BLOB);
             CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
             INSERT INTO counters VALUES ('duplicates', 5);
             INSERT INTO telemetry (device_id, seq, topic, receive_ts, payload) VALUES
                 ('v1', NULL, 't/v1', 1, '{\"a\":1}'), ('v1', NULL, 't/v1', 2, '{\"a\":1}'),
                 ('v1', NULL, 't/v1', 3, '{\"a\":1}'), ('v1', NULL, 't/v1', 4, '{\"a\":2}'),
                 ('v1', 1, 't/v1', 5, '{\"a\":1}'), ('v2', NULL, 't/v2', 6, '{\"a\":1}');
             INSERT INTO rejected (topic, receive_ts, reason, payload) VALUES
                 ('t/x', 1, 'bad', X'FF'), ('t/x', 2, 'bad', X'FF'), ('t/y', 3, 'bad', X'FF');",
        )
        .unwrap();
    }
    let mut store = SqliteStore::open(&path, SyncMode::Normal).unwrap();
    let out = store
        .write_batch(&[legacy("v1", r#"{"a":2}"#, 7.0)])
        .unwrap();
    assert_eq!(
        out.duplicates, 1,
        "the key holds for rows of the old version"
    );
    drop(store);
    let conn = Connection::open(&path).unwrap();
    assert_eq!(count(&conn, "SELECT count(*) FROM telemetry"), 4);
    assert_eq!(
        count(&conn, "SELECT min(receive_ts) FROM telemetry WHERE payload = '{\"a\":1}' AND seq IS NULL AND device_id = 'v1'"),
        1,
        "the first row is the one kept"
    );
    assert_eq!(count(&conn, "SELECT count(*) FROM rejected"), 2);
    // 5 before, 2 + 1 folded repeats, 1 new duplicate.
    assert_eq!(
        count(&conn, "SELECT value FROM counters WHERE name='duplicates'"),
        9
    );
    // Opening again changes nothing.
    drop(conn);
    drop(SqliteStore::open(&path, SyncMode::Normal).unwrap());
    let conn = Connection::open(&path).unwrap();
    assert_eq!(count(&conn, "SELECT count(*) FROM telemetry"), 4);
}
