//! The offline queue (outbox): one SQLite file for every device of the run, written
//! by ONE thread that batches the inserts and deletes of all devices into one
//! transaction per batch.
//!
//! A message is inserted (and committed) before it is published and deleted when
//! its PUBACK arrives, so whatever is in the file after a crash, a kill or a long
//! broker outage is exactly what still has to be delivered. The highest `seq` ever
//! given to each device is kept in its own table, so numbering continues across
//! restarts even after the queue has been drained.
//!
//! Devices talk to the writer through [`QueueHandle`] (non-blocking sends) and hear
//! back through their own notice channel: [`Notice::Committed`] once their rows are
//! durable, [`Notice::Loaded`] with older rows they asked for.

use rusqlite::{params, Connection};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

/// Most commands applied in one transaction.
const MAX_BATCH: usize = 20_000;

/// Why the queue cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// SQLite refused an operation.
    #[error("offline queue {path}: {source}")]
    Sqlite {
        /// The queue file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The writer thread stopped.
    #[error("offline queue {path}: the writer thread stopped: {reason}")]
    Writer {
        /// The queue file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A queued message as read back from the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The device's sequence number.
    pub seq: u64,
    /// Also publish on the legacy topic.
    pub legacy: bool,
    /// The JSON payload.
    pub payload: Vec<u8>,
}

/// What the writer tells one device.
#[derive(Debug)]
pub enum Notice {
    /// Every row of this device up to this `seq` is committed.
    Committed(u64),
    /// The rows asked for with [`QueueHandle::load`], oldest first.
    Loaded(Vec<Row>),
}

/// What the file holds for one device at start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceStart {
    /// The first `seq` of this run.
    pub next_seq: u64,
    /// Messages an earlier run left undelivered.
    pub queued: u64,
}

enum Command {
    Insert {
        device: u32,
        seq: u64,
        legacy: bool,
        payload: Vec<u8>,
        created: f64,
    },
    Delete {
        device: u32,
        seq: u64,
    },
    Load {
        device: u32,
        after_seq: u64,
        limit: u32,
    },
    #[cfg(test)]
    Flush(std_mpsc::Sender<()>),
}

/// Cheap, cloneable sender of queue commands; never blocks.
#[derive(Clone)]
pub struct QueueHandle {
    tx: std_mpsc::Sender<Command>,
}

impl QueueHandle {
    /// Queues a new message for `device`; a [`Notice::Committed`] follows once it is durable.
    pub fn insert(&self, device: u32, seq: u64, legacy: bool, payload: Vec<u8>, created: f64) {
        let _ = self.tx.send(Command::Insert {
            device,
            seq,
            legacy,
            payload,
            created,
        });
    }

    /// Removes a message: acknowledged by the broker, or evicted.
    pub fn delete(&self, device: u32, seq: u64) {
        let _ = self.tx.send(Command::Delete { device, seq });
    }

    /// Asks for up to `limit` rows of `device` with a `seq` above `after_seq`, oldest first.
    pub fn load(&self, device: u32, after_seq: u64, limit: u32) {
        let _ = self.tx.send(Command::Load {
            device,
            after_seq,
            limit,
        });
    }
}

/// The open queue and its writer thread.
pub struct Queue {
    path: PathBuf,
    handle: QueueHandle,
    thread: Option<JoinHandle<Result<(), QueueError>>>,
}

// Rows are appended in arrival order (rowid), so a batch that interleaves thousands
// of devices touches a few pages at the end of the table, plus small index entries.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    device_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    also_legacy INTEGER NOT NULL DEFAULT 0,
    payload TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS outbox_device_seq ON outbox (device_id, seq);
CREATE TABLE IF NOT EXISTS device_seq (
    device_id TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
) WITHOUT ROWID;
";

impl Queue {
    /// Opens (or creates) the queue file for the devices `ids` (index = position).
    ///
    /// `notices[i]` receives what the writer has to tell device `i`. When the writer
    /// fails it cancels `failed`; [`Queue::close`] then returns the error.
    pub fn open(
        path: &Path,
        ids: Vec<Arc<str>>,
        notices: Vec<UnboundedSender<Notice>>,
        failed: CancellationToken,
    ) -> Result<(Queue, Vec<DeviceStart>), QueueError> {
        let sqlite = |source| QueueError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(sqlite)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(sqlite)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sqlite)?;
        // FULL: a committed seq must survive a power cut too, or a restart could reuse it.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sqlite)?;
        conn.execute_batch(SCHEMA).map_err(sqlite)?;
        let starts = read_starts(&conn, &ids).map_err(sqlite)?;
        let (tx, rx) = std_mpsc::channel();
        let writer = Writer {
            conn,
            topics: ids
                .iter()
                .map(|id| mqtt_core::message::data_topic(id))
                .collect(),
            ids,
            notices,
        };
        let thread_path = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("queue-writer".into())
            .spawn(move || {
                let r = writer.run(rx).map_err(|source| QueueError::Sqlite {
                    path: thread_path,
                    source,
                });
                if let Err(e) = &r {
                    tracing::error!("{e}");
                    failed.cancel();
                }
                r
            })
            .map_err(|e| QueueError::Writer {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok((
            Queue {
                path: path.to_path_buf(),
                handle: QueueHandle { tx },
                thread: Some(thread),
            },
            starts,
        ))
    }

    /// A sender for the devices.
    pub fn handle(&self) -> QueueHandle {
        self.handle.clone()
    }

    /// Waits until everything sent before is committed.
    #[cfg(test)]
    pub fn flush(&self) -> Result<(), QueueError> {
        let (tx, rx) = std_mpsc::channel();
        let _ = self.handle.tx.send(Command::Flush(tx));
        rx.recv().map_err(|_| QueueError::Writer {
            path: self.path.clone(),
            reason: "it ended before the last commit".into(),
        })
    }

    /// Commits what is left and stops the writer (every [`QueueHandle`] must be dropped first).
    pub fn close(mut self) -> Result<(), QueueError> {
        let Queue {
            path,
            handle,
            thread,
        } = &mut self;
        drop(std::mem::replace(
            handle,
            QueueHandle {
                tx: std_mpsc::channel().0,
            },
        ));
        match thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(QueueError::Writer {
                path: path.clone(),
                reason: "it panicked".into(),
            }),
            None => Ok(()),
        }
    }
}

fn read_starts(conn: &Connection, ids: &[Arc<str>]) -> rusqlite::Result<Vec<DeviceStart>> {
    let index: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, id)| (&**id, i)).collect();
    let mut starts = vec![
        DeviceStart {
            next_seq: 1,
            queued: 0
        };
        ids.len()
    ];
    let mut stmt = conn.prepare("SELECT device_id, last_seq FROM device_seq")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let id: String = row.get(0)?;
        let last: i64 = row.get(1)?;
        if let Some(&i) = index.get(id.as_str()) {
            starts[i].next_seq = starts[i].next_seq.max(last as u64 + 1);
        }
    }
    let mut stmt =
        conn.prepare("SELECT device_id, COUNT(*), MAX(seq) FROM outbox GROUP BY device_id")?;
    let mut rows = stmt.query([])?;
    let (mut other_devices, mut other_rows) = (0u64, 0u64);
    while let Some(row) = rows.next()? {
        let id: String = row.get(0)?;
        let count: i64 = row.get(1)?;
        let max: i64 = row.get(2)?;
        match index.get(id.as_str()) {
            Some(&i) => {
                starts[i].queued = count as u64;
                starts[i].next_seq = starts[i].next_seq.max(max as u64 + 1);
            }
            None => {
                other_devices += 1;
                other_rows += count as u64;
            }
        }
    }
    if other_rows > 0 {
        tracing::warn!(
            "the offline queue also holds {other_rows} messages of {other_devices} devices that are not part of this run; they stay queued until a run includes those devices"
        );
    }
    Ok(starts)
}

struct Writer {
    conn: Connection,
    ids: Vec<Arc<str>>,
    topics: Vec<String>,
    notices: Vec<UnboundedSender<Notice>>,
}

impl Writer {
    fn run(mut self, rx: std_mpsc::Receiver<Command>) -> rusqlite::Result<()> {
        let mut batch = Vec::new();
        let mut last_seq: HashMap<u32, u64> = HashMap::new();
        let mut loaded: Vec<(u32, Vec<Row>)> = Vec::new();
        let mut flushed: Vec<std_mpsc::Sender<()>> = Vec::new();
        while let Ok(first) = rx.recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            let tx = self.conn.transaction()?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT OR REPLACE INTO outbox (device_id, seq, topic, also_legacy, payload, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                let mut delete =
                    tx.prepare_cached("DELETE FROM outbox WHERE device_id = ?1 AND seq = ?2")?;
                let mut load = tx.prepare_cached(
                    "SELECT seq, also_legacy, payload FROM outbox WHERE device_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                )?;
                for cmd in batch.drain(..) {
                    match cmd {
                        Command::Insert {
                            device,
                            seq,
                            legacy,
                            payload,
                            created,
                        } => {
                            let d = device as usize;
                            // serde_json writes UTF-8; TEXT keeps the file readable with sqlite3.
                            let text = String::from_utf8_lossy(&payload);
                            insert.execute(params![
                                &*self.ids[d],
                                seq as i64,
                                self.topics[d],
                                legacy,
                                text,
                                created
                            ])?;
                            let e = last_seq.entry(device).or_default();
                            *e = (*e).max(seq);
                        }
                        Command::Delete { device, seq } => {
                            delete.execute(params![&*self.ids[device as usize], seq as i64])?;
                        }
                        Command::Load {
                            device,
                            after_seq,
                            limit,
                        } => {
                            let rows = load
                                .query_map(
                                    params![&*self.ids[device as usize], after_seq as i64, limit],
                                    |r| {
                                        Ok(Row {
                                            seq: r.get::<_, i64>(0)? as u64,
                                            legacy: r.get(1)?,
                                            payload: r.get::<_, String>(2)?.into_bytes(),
                                        })
                                    },
                                )?
                                .collect::<rusqlite::Result<Vec<_>>>()?;
                            loaded.push((device, rows));
                        }
                        #[cfg(test)]
                        Command::Flush(reply) => flushed.push(reply),
                    }
                }
                let mut seq_stmt = tx.prepare_cached(
                    "INSERT INTO device_seq (device_id, last_seq) VALUES (?1, ?2)
                     ON CONFLICT (device_id) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)",
                )?;
                for (&device, &seq) in &last_seq {
                    seq_stmt.execute(params![&*self.ids[device as usize], seq as i64])?;
                }
            }
            tx.commit()?;
            // Only now are the rows durable: tell the devices they may publish them.
            for (device, seq) in last_seq.drain() {
                let _ = self.notices[device as usize].send(Notice::Committed(seq));
            }
            for (device, rows) in loaded.drain(..) {
                let _ = self.notices[device as usize].send(Notice::Loaded(rows));
            }
            for reply in flushed.drain(..) {
                let _ = reply.send(());
            }
        }
        Ok(())
    }
}

/// Rows left for `device_id`, oldest first.
#[cfg(test)]
pub fn queued_seqs(path: &Path, device_id: &str) -> rusqlite::Result<Vec<u64>> {
    let conn = Connection::open(path)?;
    let mut stmt = conn.prepare("SELECT seq FROM outbox WHERE device_id = ?1 ORDER BY seq")?;
    let seqs = stmt
        .query_map([device_id], |r| r.get::<_, i64>(0))?
        .map(|r| r.map(|s| s as u64))
        .collect();
    seqs
}

/// The highest seq ever given to `device_id`, if any.
#[cfg(test)]
pub fn last_seq(path: &Path, device_id: &str) -> rusqlite::Result<Option<u64>> {
    use rusqlite::OptionalExtension;
    let conn = Connection::open(path)?;
    conn.query_row(
        "SELECT last_seq FROM device_seq WHERE device_id = ?1",
        [device_id],
        |r| r.get::<_, i64>(0),
    )
    .optional()
    .map(|o| o.map(|s| s as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    fn open(path: &Path, n: usize) -> (Queue, Vec<DeviceStart>, Vec<UnboundedReceiver<Notice>>) {
        let ids = (1..=n)
            .map(|i| Arc::from(format!("v{i:02}").as_str()))
            .collect();
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| unbounded_channel()).unzip();
        let (q, starts) = Queue::open(path, ids, txs, CancellationToken::new()).unwrap();
        (q, starts, rxs)
    }

    fn drain(rx: &mut UnboundedReceiver<Notice>) -> Vec<Notice> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[test]
    fn insert_commit_ack_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let (q, starts, mut rx) = open(&path, 2);
        assert_eq!(
            starts,
            vec![
                DeviceStart {
                    next_seq: 1,
                    queued: 0
                };
                2
            ]
        );
        let h = q.handle();
        for seq in 1..=3 {
            h.insert(
                0,
                seq,
                false,
                format!("{{\"seq\":{seq}}}").into_bytes(),
                1.0,
            );
        }
        h.insert(1, 1, true, b"{}".to_vec(), 1.0);
        q.flush().unwrap();
        let n0 = drain(&mut rx[0]);
        assert!(matches!(n0.last(), Some(Notice::Committed(3))), "{n0:?}");
        assert!(matches!(
            drain(&mut rx[1]).last(),
            Some(Notice::Committed(1))
        ));
        h.delete(0, 2);
        h.load(0, 0, 10);
        q.flush().unwrap();
        let Some(Notice::Loaded(rows)) = drain(&mut rx[0]).pop() else {
            panic!("no rows loaded")
        };
        assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(rows[1].payload, b"{\"seq\":3}");
        h.load(0, 1, 1);
        q.flush().unwrap();
        let Some(Notice::Loaded(rows)) = drain(&mut rx[0]).pop() else {
            panic!()
        };
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].seq, 3);
        drop(h);
        q.close().unwrap();
        assert_eq!(queued_seqs(&path, "v01").unwrap(), vec![1, 3]);
        assert_eq!(queued_seqs(&path, "v02").unwrap(), vec![1]);
    }

    #[test]
    fn restart_continues_seq_even_after_the_queue_is_drained() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        {
            let (q, _, _rx) = open(&path, 2);
            let h = q.handle();
            for seq in 1..=5 {
                h.insert(0, seq, false, b"{}".to_vec(), 1.0);
                h.insert(1, seq, false, b"{}".to_vec(), 1.0);
            }
            // Device 0 gets everything acknowledged, device 1 keeps 4 and 5.
            for seq in 1..=5 {
                h.delete(0, seq);
            }
            for seq in 1..=3 {
                h.delete(1, seq);
            }
            drop(h);
            q.close().unwrap();
        }
        let (q, starts, _rx) = open(&path, 3);
        assert_eq!(
            starts,
            vec![
                DeviceStart {
                    next_seq: 6,
                    queued: 0
                },
                DeviceStart {
                    next_seq: 6,
                    queued: 2
                },
                DeviceStart {
                    next_seq: 1,
                    queued: 0
                },
            ]
        );
        q.close().unwrap();
        assert_eq!(last_seq(&path, "v01").unwrap(), Some(5));
        assert_eq!(last_seq(&path, "v03").unwrap(), None);
    }

    #[test]
    fn evicting_is_deleting_the_oldest() {
        // The device decides what to evict (it knows its limit and order); the queue
        // must then hold exactly the newest rows.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let (q, _, _rx) = open(&path, 1);
        let h = q.handle();
        let limit = 5;
        for seq in 1..=20u64 {
            h.insert(0, seq, false, b"{}".to_vec(), 1.0);
            if seq > limit {
                h.delete(0, seq - limit);
            }
        }
        drop(h);
        q.close().unwrap();
        assert_eq!(queued_seqs(&path, "v01").unwrap(), vec![16, 17, 18, 19, 20]);
    }

    #[test]
    fn a_file_that_is_not_sqlite_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        std::fs::write(
            &path,
            "this is not a database, just some text that is long enough",
        )
        .unwrap();
        let (tx, _rx) = unbounded_channel();
        let err = Queue::open(
            &path,
            vec![Arc::from("v1")],
            vec![tx],
            CancellationToken::new(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("q.db"), "{err}");
    }
}
