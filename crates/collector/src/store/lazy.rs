//! [`Lazy`]: a server-backed store whose server may be down when the collector
//! starts. A refusal at start (a wrong password, a missing database) still ends the
//! collector at once; a server that is merely down is connected to at the first
//! write, inside the retries, so the collector runs and subscribes meanwhile.

use super::{Record, Store, StoreError, WriteOutcome};

/// Connects with `connect` now if it can, else at the first write.
pub struct Lazy<S, F> {
    store: Option<S>,
    connect: F,
}

impl<S: Store, F: FnMut() -> Result<S, StoreError> + Send> Lazy<S, F> {
    /// Tries `connect` once; only a transient failure is put off.
    pub fn new(name: &str, mut connect: F) -> Result<Self, StoreError> {
        let store = match connect() {
            Ok(s) => Some(s),
            Err(e) if e.is_transient() => {
                tracing::warn!("{e}; {name} will be connected to when the first batch is written (nothing is acknowledged before)");
                None
            }
            Err(e) => return Err(e),
        };
        Ok(Lazy { store, connect })
    }

    /// Connects at the first write only.
    pub fn later(connect: F) -> Self {
        Lazy {
            store: None,
            connect,
        }
    }

    /// True once connected.
    pub fn is_connected(&self) -> bool {
        self.store.is_some()
    }
}

impl<S: Store, F: FnMut() -> Result<S, StoreError> + Send> Store for Lazy<S, F> {
    fn write_batch(&mut self, batch: &[Record]) -> Result<WriteOutcome, StoreError> {
        let store = match &mut self.store {
            Some(s) => s,
            None => self.store.insert((self.connect)()?),
        };
        store.write_batch(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FAKE store that stores everything.
    struct Ok1;

    impl Store for Ok1 {
        fn write_batch(&mut self, b: &[Record]) -> Result<WriteOutcome, StoreError> {
            Ok(WriteOutcome {
                stored: b.len(),
                ..WriteOutcome::default()
            })
        }
    }

    fn down() -> StoreError {
        StoreError::Unavailable {
            store: "PostgreSQL",
            reason: "connection refused".into(),
        }
    }

    #[test]
    fn a_server_down_at_start_is_connected_to_at_the_first_write() {
        let mut tries = 0;
        let mut lazy = Lazy::new("PostgreSQL", move || {
            tries += 1;
            if tries < 3 {
                Err(down())
            } else {
                Ok(Ok1)
            }
        })
        .unwrap();
        assert!(lazy.write_batch(&[]).unwrap_err().is_transient());
        assert_eq!(lazy.write_batch(&[]).unwrap().stored, 0);
    }

    #[test]
    fn a_refusal_at_start_is_reported_at_once() {
        let r = Lazy::new("PostgreSQL", || -> Result<Ok1, StoreError> {
            Err(StoreError::Refused {
                store: "PostgreSQL",
                reason: "password authentication failed".into(),
            })
        });
        assert!(r.err().unwrap().is_refusal());
    }
}
