//! [`StoreWorker`]: a [`Store`] on its own OS thread, fed through a channel, so a
//! commit (and its fsync) never blocks an async worker.

use super::{Record, Store, StoreError, WriteOutcome};
use std::sync::mpsc;
use std::thread::JoinHandle;
use tokio::sync::oneshot;

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
    use crate::store::{open_read_only, SqliteStore, SyncMode, TelemetryRow};

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

    fn count(conn: &rusqlite::Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap()
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
}
