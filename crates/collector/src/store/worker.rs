//! [`StoreWorker`]: a [`Store`] on its own OS thread, fed through a channel, so a
//! commit (and its fsync) never blocks an async worker. With several lanes, each
//! lane is a thread with a store of its own (its own connection to each server),
//! and the next batch goes to whichever lane is free: a database server works on
//! one batch while the next is on its way, instead of waiting a round trip for each.

use super::{Record, Store, StoreError, WriteOutcome};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use tokio::sync::oneshot;

/// What a lane answers for one batch.
#[derive(Debug)]
pub struct Written {
    /// The store's outcome.
    pub result: Result<WriteOutcome, StoreError>,
    /// How long the store took, from the moment a lane took the batch: without
    /// the time it waited behind other batches.
    pub took: std::time::Duration,
}

type Reply = oneshot::Sender<Written>;
type Job = (Vec<Record>, Reply);

/// Runs [`Store`]s on OS threads of their own. With one lane, batches are written
/// in the order sent; with more, they may commit in any order, and the caller
/// decides what to wait for.
pub struct StoreWorker {
    tx: Option<mpsc::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl StoreWorker {
    /// Moves `store` to a new thread: one lane.
    pub fn spawn(store: Box<dyn Store>) -> StoreWorker {
        StoreWorker::spawn_lanes(vec![store])
    }

    /// One thread per store, all taking batches from one queue.
    pub fn spawn_lanes(stores: Vec<Box<dyn Store>>) -> StoreWorker {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let threads = stores
            .into_iter()
            .enumerate()
            .map(|(i, mut store)| {
                let rx = Arc::clone(&rx);
                std::thread::Builder::new()
                    .name(format!("store-{i}"))
                    .spawn(move || loop {
                        // Only the lane holding the lock waits for a job; the others
                        // queue behind it, so each job goes to exactly one free lane.
                        let job = rx
                            .lock()
                            .map_err(|_| ())
                            .and_then(|rx| rx.recv().map_err(|_| ()));
                        let Ok((batch, reply)) = job else { return };
                        let start = std::time::Instant::now();
                        let result = store.write_batch(&batch);
                        let _ = reply.send(Written {
                            result,
                            took: start.elapsed(),
                        });
                    })
                    .expect("cannot start a store thread")
            })
            .collect();
        StoreWorker {
            tx: Some(tx),
            threads,
        }
    }

    /// How many batches can be written at the same time.
    pub fn lanes(&self) -> usize {
        self.threads.len().max(1)
    }

    /// Queues a batch; the receiver resolves once it is committed (or failed).
    pub fn write(&self, batch: Vec<Record>) -> oneshot::Receiver<Written> {
        let (reply, rx) = oneshot::channel();
        if let Some(tx) = &self.tx {
            // If the thread is gone, `reply` is dropped and the receiver reports it.
            let _ = tx.send((batch, reply));
        }
        rx
    }
}

impl Drop for StoreWorker {
    /// Lets the threads finish what they were given, then waits for them (closing the databases).
    fn drop(&mut self) {
        self.tx.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{open_read_only, test_row as row, SqliteStore, SyncMode};

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
        assert_eq!(first.await.unwrap().result.unwrap().stored, 1);
        let out = second.await.unwrap().result.unwrap();
        assert_eq!((out.stored, out.duplicates), (1, 1));
        drop(worker);
        let conn = open_read_only(&path).unwrap();
        assert_eq!(count(&conn, "SELECT count(*) FROM telemetry"), 2);
    }

    /// A FAKE store that says when a batch starts and finishes it only when told.
    struct Gate {
        started: std::sync::mpsc::Sender<usize>,
        go: Arc<Mutex<std::sync::mpsc::Receiver<()>>>,
    }

    impl Store for Gate {
        fn write_batch(&mut self, batch: &[Record]) -> Result<WriteOutcome, StoreError> {
            self.started.send(batch.len()).unwrap();
            self.go.lock().unwrap().recv().unwrap();
            Ok(WriteOutcome {
                stored: batch.len(),
                ..WriteOutcome::default()
            })
        }
    }

    #[tokio::test]
    async fn lanes_write_batches_at_the_same_time() {
        let (started, starts) = std::sync::mpsc::channel();
        let (release, go) = std::sync::mpsc::channel();
        let go = Arc::new(Mutex::new(go));
        let gates: Vec<Box<dyn Store>> = (0..3)
            .map(|_| {
                Box::new(Gate {
                    started: started.clone(),
                    go: go.clone(),
                }) as Box<dyn Store>
            })
            .collect();
        let worker = StoreWorker::spawn_lanes(gates);
        let replies: Vec<_> = (1..=3)
            .map(|n| worker.write(vec![row("a", Some(n)); n as usize]))
            .collect();
        // All three are being written before any of them finishes.
        let mut sizes: Vec<usize> = (0..3)
            .map(|_| {
                starts
                    .recv_timeout(std::time::Duration::from_secs(10))
                    .expect("a lane never started")
            })
            .collect();
        sizes.sort();
        assert_eq!(sizes, [1, 2, 3]);
        for _ in 0..3 {
            release.send(()).unwrap();
        }
        for (n, r) in replies.into_iter().enumerate() {
            assert_eq!(r.await.unwrap().result.unwrap().stored, n + 1);
        }
    }

    #[tokio::test]
    async fn the_time_taken_leaves_out_the_wait_behind_earlier_batches() {
        let (started, starts) = std::sync::mpsc::channel();
        let (release, go) = std::sync::mpsc::channel();
        let worker = StoreWorker::spawn(Box::new(Gate {
            started,
            go: Arc::new(Mutex::new(go)),
        }));
        let first = worker.write(vec![row("a", Some(1))]);
        let second = worker.write(vec![row("a", Some(2))]);
        starts
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        // The first batch is held for this long; the second waits behind it.
        let hold = std::time::Duration::from_millis(300);
        std::thread::sleep(hold);
        release.send(()).unwrap();
        release.send(()).unwrap();
        let (first, second) = (first.await.unwrap(), second.await.unwrap());
        assert!(first.took >= hold, "{:?}", first.took);
        assert!(second.took < hold, "{:?}", second.took);
    }
}
