//! The SQLite store: schema, in-place migration of older files, WAL mode with a
//! checkpointer off the commit path, one transaction per batch, dedup by unique
//! indexes, and the read-only opening `collector stats` uses.

use super::{Record, Store, StoreError, WriteOutcome};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, MAIN_DB};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

/// The target these lines had before the store became a folder, so `RUST_LOG` filters and
/// log readers see no change.
const LOG_TARGET: &str = "collector::store";

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
                target: LOG_TARGET,
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
                        tracing::warn!(target: LOG_TARGET, "WAL checkpoint failed (the commits go on in the WAL): {e}");
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
                                tracing::warn!(target: LOG_TARGET, "{reason}");
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

#[cfg(test)]
mod tests;
