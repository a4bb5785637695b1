//! The storage boundary: the [`Store`] trait ingest writes batches through, the
//! SQLite implementation (contract section 4), and [`StoreWorker`], which runs a
//! store on its own thread so no blocking I/O ever happens on the async workers.
//!
//! A batch is one transaction: when [`Store::write_batch`] returns `Ok`, every
//! record of it is durable (to the process crash with `synchronous=NORMAL`, to a
//! power loss with `FULL`), and only then may ingest acknowledge the messages.

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, MAIN_DB};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use tokio::sync::oneshot;

/// One message to keep: a telemetry row or a rejection.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A valid message, for the `telemetry` table.
    Telemetry(TelemetryRow),
    /// A message that failed validation, for the `rejected` table.
    Rejected(RejectedRow),
}

/// A row of `telemetry`.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryRow {
    /// Device id.
    pub device_id: String,
    /// Sequence number, when the payload has one.
    pub seq: Option<i64>,
    /// The topic it arrived on.
    pub topic: String,
    /// Unix seconds of the publish, from the payload.
    pub publish_ts: Option<f64>,
    /// Unix seconds when the collector read it.
    pub receive_ts: f64,
    /// The JSON as received.
    pub payload: String,
}

/// A row of `rejected`.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedRow {
    /// The topic it arrived on.
    pub topic: String,
    /// Unix seconds when the collector read it.
    pub receive_ts: f64,
    /// Why it was rejected.
    pub reason: String,
    /// The payload (cut at the size limit when it was larger).
    pub payload: Vec<u8>,
}

/// What a committed batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// New rows in `telemetry`.
    pub stored: usize,
    /// Telemetry records whose `(device_id, seq)` was already stored.
    pub duplicates: usize,
    /// New rows in `rejected`.
    pub rejected: usize,
}

/// Why the store cannot be opened or written. Each message names the file and a fix.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be opened or prepared.
    #[error("cannot open the database {path}: {reason}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why, with a fix.
        reason: String,
    },
    /// A transaction failed: nothing of the batch is stored.
    #[error("cannot write to the database {path}: {source}; check free disk space and that the file and its directory are writable")]
    Write {
        /// The file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The store thread has ended (it panicked or was shut down).
    #[error("the store thread has stopped")]
    WorkerGone,
}

/// Where telemetry is kept. SQLite now; other databases later, without touching ingest.
pub trait Store: Send {
    /// Writes every record in one transaction, or nothing.
    fn write_batch(&mut self, batch: &[Record]) -> Result<WriteOutcome, StoreError>;
}

/// How hard SQLite flushes at each commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// `synchronous=NORMAL` in WAL mode: a commit survives a crash of the process.
    #[default]
    Normal,
    /// `synchronous=FULL`: a commit survives a power loss too.
    Full,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS telemetry (
    id           INTEGER PRIMARY KEY,
    device_id    TEXT NOT NULL,
    seq          INTEGER,
    topic        TEXT NOT NULL,
    publish_ts   REAL,
    receive_ts   REAL NOT NULL,
    payload      TEXT NOT NULL,
    payload_hash BLOB
);
CREATE UNIQUE INDEX IF NOT EXISTS telemetry_device_seq ON telemetry (device_id, seq);
CREATE TABLE IF NOT EXISTS rejected (
    id           INTEGER PRIMARY KEY,
    topic        TEXT,
    receive_ts   REAL,
    reason       TEXT,
    payload      BLOB,
    payload_hash BLOB
);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO counters (name, value) VALUES ('duplicates', 0);
";

/// The keys of the messages that have no `(device_id, seq)`: a seq-less reading
/// is the same message when its device already has a row with the same payload
/// bytes; a rejected one when its topic already has a rejected row with the same
/// payload bytes. `payload_hash` is the SHA-256 of those bytes (NULL on rows that
/// have a `seq`). Created after [`migrate`] has added the column to older files.
const HASH_INDEXES: &str = "
CREATE UNIQUE INDEX IF NOT EXISTS telemetry_device_payload
    ON telemetry (device_id, payload_hash) WHERE seq IS NULL;
CREATE UNIQUE INDEX IF NOT EXISTS rejected_topic_payload ON rejected (topic, payload_hash);
";

/// SHA-256 of a payload: the dedup key of messages without `seq`.
pub fn payload_hash(payload: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, payload)
        .as_ref()
        .to_vec()
}

/// Brings a database of an earlier version up to [`SCHEMA`] in place, inside the
/// caller's transaction: adds `payload_hash`, fills it, and folds the repeated
/// rows that the missing key let in (counted as duplicates, the first row kept).
fn migrate(conn: &Connection) -> rusqlite::Result<usize> {
    let mut folded = 0;
    for (table, rows_needing_hash, same_key) in [
        (
            "telemetry",
            "SELECT id, payload FROM telemetry WHERE seq IS NULL AND payload_hash IS NULL",
            "DELETE FROM telemetry WHERE seq IS NULL AND id NOT IN \
             (SELECT min(id) FROM telemetry WHERE seq IS NULL GROUP BY device_id, payload_hash)",
        ),
        (
            "rejected",
            "SELECT id, payload FROM rejected WHERE payload_hash IS NULL",
            "DELETE FROM rejected WHERE id NOT IN \
             (SELECT min(id) FROM rejected GROUP BY topic, payload_hash)",
        ),
    ] {
        let has_column: bool = conn.query_row(
            &format!(
                "SELECT count(*) FROM pragma_table_info('{table}') WHERE name = 'payload_hash'"
            ),
            [],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if has_column {
            continue;
        }
        conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN payload_hash BLOB"))?;
        let rows: Vec<(i64, Vec<u8>)> = conn
            .prepare(rows_needing_hash)?
            .query_map([], |r| {
                let bytes = match r.get_ref(1)? {
                    rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                        t.to_vec()
                    }
                    _ => Vec::new(),
                };
                Ok((r.get(0)?, bytes))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut set = conn.prepare(&format!(
            "UPDATE {table} SET payload_hash = ?1 WHERE id = ?2"
        ))?;
        for (id, payload) in &rows {
            set.execute(params![payload_hash(payload), id])?;
        }
        let n = conn.execute(same_key, [])?;
        if n > 0 {
            tracing::warn!(
                "{table}: removed {n} repeated rows that an earlier version stored twice (same payload bytes, \
                 no seq); they are counted as duplicates"
            );
            folded += n;
        }
    }
    if folded > 0 {
        conn.execute(
            "UPDATE counters SET value = value + ?1 WHERE name = 'duplicates'",
            [folded as i64],
        )?;
    }
    Ok(folded)
}

const TELEMETRY_COLUMNS: &[&str] = &[
    "device_id",
    "seq",
    "topic",
    "publish_ts",
    "receive_ts",
    "payload",
];
const REJECTED_COLUMNS: &[&str] = &["topic", "receive_ts", "reason", "payload"];

/// The SQLite store: WAL mode, one transaction per batch, dedup by a unique index.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    _checkpointer: Checkpointer,
}

/// Copies the WAL back into the database file on its own thread and connection.
///
/// SQLite's automatic checkpoint runs inside the commit that crosses its threshold,
/// with two fsyncs; meanwhile no batch can commit, so no message can be acknowledged,
/// and the broker's small in-flight window stalls. Here the commit path only appends
/// to the WAL. Stops (and joins) when dropped.
struct Checkpointer {
    stop: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    const EVERY: std::time::Duration = std::time::Duration::from_millis(500);

    fn spawn(path: &Path) -> rusqlite::Result<Checkpointer> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let stop = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                let (lock, cv) = &*flag;
                let mut stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    let (guard, _) = cv
                        .wait_timeout(stopped, Self::EVERY)
                        .unwrap_or_else(|e| e.into_inner());
                    stopped = guard;
                    // PASSIVE never waits for the writer; a final one runs at stop.
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!("WAL checkpoint failed (the commits go on in the WAL): {e}");
                    }
                    if *stopped {
                        return;
                    }
                }
            })
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl SqliteStore {
    /// Opens `path`, creating it with the schema if missing; an existing database
    /// from an earlier run is used as it is (missing tables or indexes are added).
    pub fn open(path: &Path, sync: SyncMode) -> Result<SqliteStore, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: path.to_path_buf(),
            reason,
        };
        let conn = Connection::open(path).map_err(|e| {
            open_err(format!(
                "{e}; check that the directory exists and is writable"
            ))
        })?;
        if conn.is_readonly(MAIN_DB).unwrap_or(false) {
            return Err(open_err(
                "the file is read-only; the collector must be able to write to it and its directory"
                    .into(),
            ));
        }
        let sql_err = |e: rusqlite::Error| match &e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::NotADatabase => {
                open_err(
                    "the file is not an SQLite database; point --db (COLLECTOR_DB) at another file"
                        .into(),
                )
            }
            _ => open_err(e.to_string()),
        };
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(sql_err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(sql_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(open_err(format!(
                "SQLite refused WAL mode (journal_mode is {mode}); is the file on a network file system?"
            )));
        }
        let sync_pragma = match sync {
            SyncMode::Normal => "PRAGMA synchronous=NORMAL",
            SyncMode::Full => "PRAGMA synchronous=FULL",
        };
        conn.execute_batch(sync_pragma).map_err(sql_err)?;
        check_columns(&conn, "telemetry", TELEMETRY_COLUMNS).map_err(open_err)?;
        check_columns(&conn, "rejected", REJECTED_COLUMNS).map_err(open_err)?;
        conn.execute_batch("BEGIN")
            .and_then(|()| conn.execute_batch(SCHEMA))
            .and_then(|()| migrate(&conn))
            .and_then(|_| conn.execute_batch(HASH_INDEXES))
            .and_then(|()| conn.execute_batch("COMMIT"))
            .map_err(|e| {
                let _ = conn.execute_batch("ROLLBACK");
                if e.to_string().contains("UNIQUE") {
                    open_err("table telemetry already holds the same (device_id, seq) more than once, so the unique index that removes duplicates cannot be created; remove the duplicates or use a new file".into())
                } else {
                    sql_err(e)
                }
            })?;
        // Checkpoints happen on their own thread (see Checkpointer), not in a commit.
        conn.execute_batch("PRAGMA wal_autocheckpoint=0")
            .map_err(sql_err)?;
        let checkpointer = Checkpointer::spawn(path).map_err(sql_err)?;
        Ok(SqliteStore {
            conn,
            path: path.to_path_buf(),
            _checkpointer: checkpointer,
        })
    }

    fn write_tx(&mut self, batch: &[Record]) -> rusqlite::Result<WriteOutcome> {
        let tx = self.conn.transaction()?;
        let mut out = WriteOutcome::default();
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO telemetry (device_id, seq, topic, publish_ts, receive_ts, payload, payload_hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut reject = tx.prepare_cached(
                "INSERT OR IGNORE INTO rejected (topic, receive_ts, reason, payload, payload_hash)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            // A redelivered rejection is a duplicate too (same topic, same bytes).
            let mut reject = |topic: &str, ts: f64, reason: &str, payload: &[u8]| {
                reject
                    .execute(params![topic, ts, reason, payload, payload_hash(payload)])
                    .map(|n| n > 0)
            };
            for record in batch {
                match record {
                    Record::Telemetry(t) => {
                        let hash = t.seq.is_none().then(|| payload_hash(t.payload.as_bytes()));
                        let n = insert.execute(params![
                            t.device_id,
                            t.seq,
                            t.topic,
                            t.publish_ts,
                            t.receive_ts,
                            t.payload,
                            hash
                        ])?;
                        if n > 0 {
                            out.stored += 1;
                            continue;
                        }
                        if t.seq.is_none() {
                            // The same device already sent these very bytes.
                            out.duplicates += 1;
                            continue;
                        }
                        let stored: Option<String> = tx
                            .prepare_cached(
                                "SELECT payload FROM telemetry WHERE device_id = ?1 AND seq = ?2",
                            )?
                            .query_row(params![t.device_id, t.seq], |r| r.get(0))
                            .optional()?;
                        if stored.is_none_or(|p| same_reading(&p, &t.payload)) {
                            out.duplicates += 1;
                        } else {
                            // Not a resend but another reading under a number already used:
                            // the device's numbering restarted (a new queue file, a reflashed
                            // device). Keep it where a person will see it.
                            let reason = format!(
                                "seq {} of device {:?} is already stored with a different reading (did the device's numbering restart?)",
                                t.seq.unwrap_or_default(),
                                t.device_id
                            );
                            if reject(&t.topic, t.receive_ts, &reason, t.payload.as_bytes())? {
                                tracing::warn!("{reason}");
                                out.rejected += 1;
                            } else {
                                out.duplicates += 1;
                            }
                        }
                    }
                    Record::Rejected(r) => {
                        if reject(&r.topic, r.receive_ts, &r.reason, &r.payload)? {
                            out.rejected += 1;
                        } else {
                            out.duplicates += 1;
                        }
                    }
                }
            }
        }
        if out.duplicates > 0 {
            tx.execute(
                "UPDATE counters SET value = value + ?1 WHERE name = 'duplicates'",
                [out.duplicates as i64],
            )?;
        }
        tx.commit()?;
        Ok(out)
    }
}

/// Whether two payloads are the same reading: equal but for the `timestamp`, which
/// is the time of each publish and so differs between a message and its resend.
fn same_reading(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let strip = |s: &str| {
        serde_json::from_str::<serde_json::Value>(s)
            .ok()
            .map(|mut v| {
                if let Some(o) = v.as_object_mut() {
                    o.remove("timestamp");
                }
                v
            })
    };
    matches!((strip(a), strip(b)), (Some(x), Some(y)) if x == y)
}

impl Store for SqliteStore {
    fn write_batch(&mut self, batch: &[Record]) -> Result<WriteOutcome, StoreError> {
        self.write_tx(batch).map_err(|source| StoreError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

/// Fails when `table` exists without one of `columns` (a file of another program).
fn check_columns(conn: &Connection, table: &str, columns: &[&str]) -> Result<(), String> {
    let exists: Option<String> = conn
        .query_row(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| e.to_string())?;
    if exists.is_none() {
        return Ok(());
    }
    let mut stmt = conn
        .prepare(&format!("PRAGMA table_info({table})"))
        .map_err(|e| e.to_string())?;
    let have: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(1))
        .and_then(|rows| rows.collect())
        .map_err(|e| e.to_string())?;
    for col in columns {
        if !have.iter().any(|h| h == col) {
            return Err(format!(
                "table {table} has no column {col}: this is not a collector database; point --db (COLLECTOR_DB) at another file"
            ));
        }
    }
    Ok(())
}

/// Opens a collector database for reading only (for `collector stats`).
pub fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
    let open_err = |reason: String| StoreError::Open {
        path: path.to_path_buf(),
        reason,
    };
    if !path.exists() {
        return Err(open_err(
            "the file does not exist; pass --db (or COLLECTOR_DB) the collector writes to".into(),
        ));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| open_err(e.to_string()))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(|e| open_err(e.to_string()))?;
    for (table, cols) in [
        ("telemetry", TELEMETRY_COLUMNS),
        ("rejected", REJECTED_COLUMNS),
    ] {
        let found: Option<String> = conn
            .query_row(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [table],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| match &e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::NotADatabase =>
                {
                    open_err("the file is not an SQLite database".into())
                }
                _ => open_err(e.to_string()),
            })?;
        if found.is_none() {
            return Err(open_err(format!(
                "there is no table {table}: this is not a collector database"
            )));
        }
        check_columns(&conn, table, cols).map_err(open_err)?;
    }
    Ok(conn)
}

type Reply = oneshot::Sender<Result<WriteOutcome, StoreError>>;

/// Runs a [`Store`] on its own OS thread; batches are written in the order sent.
pub struct StoreWorker {
    tx: Option<mpsc::Sender<(Vec<Record>, Reply)>>,
    thread: Option<JoinHandle<()>>,
}

impl StoreWorker {
    /// Moves `store` to a new thread.
    pub fn spawn(mut store: Box<dyn Store>) -> StoreWorker {
        let (tx, rx) = mpsc::channel::<(Vec<Record>, Reply)>();
        let thread = std::thread::Builder::new()
            .name("store".into())
            .spawn(move || {
                while let Ok((batch, reply)) = rx.recv() {
                    let _ = reply.send(store.write_batch(&batch));
                }
            })
            .expect("cannot start the store thread");
        StoreWorker {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    /// Queues a batch; the receiver resolves once it is committed (or failed).
    pub fn write(&self, batch: Vec<Record>) -> oneshot::Receiver<Result<WriteOutcome, StoreError>> {
        let (reply, rx) = oneshot::channel();
        if let Some(tx) = &self.tx {
            // If the thread is gone, `reply` is dropped and the receiver reports it.
            let _ = tx.send((batch, reply));
        }
        rx
    }
}

impl Drop for StoreWorker {
    /// Lets the thread finish what it was given, then waits for it (closing the database).
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(device: &str, seq: Option<i64>) -> Record {
        Record::Telemetry(TelemetryRow {
            device_id: device.into(),
            seq,
            topic: format!("device/data/{device}"),
            publish_ts: Some(1.0),
            receive_ts: 1.5,
            payload: "{}".into(),
        })
    }

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
                payload: format!(
                    r#"{{"device_id":"v1","seq":7,"timestamp":{ts},"speed":{speed}}}"#
                ),
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

    #[tokio::test]
    async fn worker_commits_in_order_on_its_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let worker = StoreWorker::spawn(Box::new(
            SqliteStore::open(&path, SyncMode::Normal).unwrap(),
        ));
        let first = worker.write(vec![row("a", Some(1))]);
        let second = worker.write(vec![row("a", Some(1)), row("a", Some(2))]);
        assert_eq!(first.await.unwrap().unwrap().stored, 1);
        let out = second.await.unwrap().unwrap();
        assert_eq!((out.stored, out.duplicates), (1, 1));
        drop(worker);
        let conn = open_read_only(&path).unwrap();
        assert_eq!(count(&conn, "SELECT count(*) FROM telemetry"), 2);
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
}
