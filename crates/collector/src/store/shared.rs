//! [`Shared`]: one store written by every lane of a [`super::StoreWorker`]. SQLite
//! takes one writer at a time, so the lanes take turns on one connection, while
//! their server stores (each lane's own connection) work side by side.

use super::{Record, Store, StoreError, WriteOutcome};
use std::sync::{Arc, Mutex};

/// A store behind a lock; clones share it.
#[derive(Clone)]
pub struct Shared(Arc<Mutex<Box<dyn Store>>>);

impl Shared {
    /// Shares `store`.
    pub fn new(store: Box<dyn Store>) -> Shared {
        Shared(Arc::new(Mutex::new(store)))
    }
}

impl Store for Shared {
    fn write_batch(&mut self, batch: &[Record]) -> Result<WriteOutcome, StoreError> {
        // Poisoned: a lane panicked inside the store, whose state is then unknown.
        let mut store = self.0.lock().map_err(|_| StoreError::WorkerGone)?;
        store.write_batch(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{open_read_only, test_row, SqliteStore, StoreWorker, SyncMode};

    #[tokio::test]
    async fn lanes_share_one_sqlite_file_without_losing_a_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let shared = Shared::new(Box::new(
            SqliteStore::open(&path, SyncMode::Normal).unwrap(),
        ));
        let worker = StoreWorker::spawn_lanes(
            (0..4)
                .map(|_| Box::new(shared.clone()) as Box<dyn Store>)
                .collect(),
        );
        assert_eq!(worker.lanes(), 4);
        // 40 batches of 10, every seq twice: each stored once, each repeat a duplicate.
        let replies: Vec<_> = (0..40)
            .map(|b| {
                worker.write(
                    ((b % 20) * 10..(b % 20) * 10 + 10)
                        .map(|seq| test_row("d", Some(seq)))
                        .collect(),
                )
            })
            .collect();
        let (mut stored, mut duplicates) = (0, 0);
        for r in replies {
            let out = r.await.unwrap().result.unwrap();
            stored += out.stored;
            duplicates += out.duplicates;
        }
        assert_eq!((stored, duplicates), (200, 200));
        drop(worker);
        let conn = open_read_only(&path).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(DISTINCT seq) FROM telemetry", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(n, 200);
    }
}
