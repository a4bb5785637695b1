//! [`Fanout`]: several stores written as one. A batch counts as committed only when
//! every store has committed it, so a message is acknowledged only then. A store
//! that already committed a batch is not written again while another one is
//! retried (each store is wrapped in [`super::Retrying`] and retries by itself).

use super::{Record, Store, StoreError, WriteOutcome};

/// Writes each batch to every store, in order.
pub struct Fanout {
    stores: Vec<Box<dyn Store>>,
}

impl Fanout {
    /// The stores; the first one's outcome is the one reported (counted and logged).
    pub fn new(stores: Vec<Box<dyn Store>>) -> Fanout {
        Fanout { stores }
    }
}

impl Store for Fanout {
    fn write_batch(&mut self, batch: &[Record]) -> Result<WriteOutcome, StoreError> {
        let mut first = None;
        for store in &mut self.stores {
            let outcome = store.write_batch(batch)?;
            first.get_or_insert(outcome);
        }
        Ok(first.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A FAKE store that records how many batches it was given.
    struct Counting(Arc<Mutex<usize>>, Option<StoreError>, usize);

    impl Store for Counting {
        fn write_batch(&mut self, b: &[Record]) -> Result<WriteOutcome, StoreError> {
            *self.0.lock().unwrap() += 1;
            match self.1.take() {
                Some(e) => Err(e),
                None => Ok(WriteOutcome {
                    stored: b.len() + self.2,
                    ..WriteOutcome::default()
                }),
            }
        }
    }

    #[test]
    fn every_store_commits_and_the_first_outcome_is_reported() {
        let (a, b) = (Arc::new(Mutex::new(0)), Arc::new(Mutex::new(0)));
        let mut f = Fanout::new(vec![
            Box::new(Counting(a.clone(), None, 0)),
            Box::new(Counting(b.clone(), None, 100)),
        ]);
        assert_eq!(f.write_batch(&[]).unwrap().stored, 0);
        assert_eq!((*a.lock().unwrap(), *b.lock().unwrap()), (1, 1));
    }

    #[test]
    fn a_failing_store_fails_the_batch() {
        let (a, b) = (Arc::new(Mutex::new(0)), Arc::new(Mutex::new(0)));
        let mut f = Fanout::new(vec![
            Box::new(Counting(a.clone(), None, 0)),
            Box::new(Counting(
                b.clone(),
                Some(StoreError::Refused {
                    store: "InfluxDB",
                    reason: "database not found".into(),
                }),
                0,
            )),
        ]);
        assert!(f.write_batch(&[]).unwrap_err().is_refusal());
        assert_eq!(*b.lock().unwrap(), 1);
    }
}
