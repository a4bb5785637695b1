//! [`Retrying`]: a server-backed store that goes down is tried again with the same
//! batch, with jittered backoff, until it comes back, refuses for good, or the
//! collector stops. Meanwhile nothing is acknowledged: the batch is not done, so
//! ingest reads no further than a full batch, and the broker keeps the rest.

use super::{Record, Store, StoreError, WriteOutcome};
use mqtt_core::Backoff;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Whether every store accepted its last write: false while any one is being
/// retried. Each [`Retrying`] (one per store and lane) counts itself in while it
/// fails, so one lane's success cannot hide another store's outage. Ingest reads
/// it for readiness.
#[derive(Debug, Clone, Default)]
pub struct StoreHealth(Arc<AtomicUsize>);

impl StoreHealth {
    /// True unless a store is failing now.
    pub fn writable(&self) -> bool {
        self.0.load(Ordering::Relaxed) == 0
    }
}

/// Retries transient failures of `inner`.
pub struct Retrying {
    inner: Box<dyn Store>,
    name: &'static str,
    backoff: Backoff,
    stop: CancellationToken,
    health: StoreHealth,
    /// Counted in `health` now.
    failing: bool,
}

impl Retrying {
    /// Wraps `inner` (called `name` in the log), with delays between `min` and `max`.
    pub fn new(
        inner: Box<dyn Store>,
        name: &'static str,
        (min, max): (Duration, Duration),
        stop: CancellationToken,
        health: StoreHealth,
    ) -> Retrying {
        Retrying {
            inner,
            name,
            backoff: Backoff::new(min, max),
            stop,
            health,
            failing: false,
        }
    }

    fn set_failing(&mut self, failing: bool) {
        if failing != std::mem::replace(&mut self.failing, failing) {
            if failing {
                self.health.0.fetch_add(1, Ordering::Relaxed);
            } else {
                self.health.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl Store for Retrying {
    fn write_batch(&mut self, batch: &[Record]) -> Result<WriteOutcome, StoreError> {
        loop {
            match self.inner.write_batch(batch) {
                Err(e) if e.is_transient() => {
                    self.set_failing(true);
                    let delay = self.backoff.next_delay();
                    tracing::warn!(
                        store = self.name,
                        attempt = self.backoff.attempts(),
                        "{e}; retrying the batch of {} messages in {:.1}s (nothing is acknowledged meanwhile; the broker keeps the messages)",
                        batch.len(),
                        delay.as_secs_f64()
                    );
                    if wait_or_stop(&self.stop, delay) {
                        return Err(StoreError::Stopped);
                    }
                }
                Err(e) => return Err(e),
                Ok(outcome) => {
                    if self.backoff.attempts() > 0 {
                        tracing::info!(
                            store = self.name,
                            "{} is back: the batch is stored",
                            self.name
                        );
                        self.backoff.reset();
                    }
                    self.set_failing(false);
                    return Ok(outcome);
                }
            }
        }
    }
}

/// Sleeps `delay` on this (store) thread; true when `stop` fired meanwhile.
fn wait_or_stop(stop: &CancellationToken, delay: Duration) -> bool {
    let step = Duration::from_millis(50);
    let mut left = delay;
    while !left.is_zero() {
        if stop.is_cancelled() {
            return true;
        }
        let d = left.min(step);
        std::thread::sleep(d);
        left -= d;
    }
    stop.is_cancelled()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A FAKE store that answers from a script, then succeeds.
    struct Scripted(VecDeque<Result<WriteOutcome, StoreError>>, usize);

    impl Store for Scripted {
        fn write_batch(&mut self, _: &[Record]) -> Result<WriteOutcome, StoreError> {
            self.1 += 1;
            self.0.pop_front().unwrap_or(Ok(WriteOutcome {
                stored: 1,
                ..WriteOutcome::default()
            }))
        }
    }

    fn down() -> Result<WriteOutcome, StoreError> {
        Err(StoreError::Unavailable {
            store: "PostgreSQL",
            reason: "connection refused".into(),
        })
    }

    const FAST: (Duration, Duration) = (Duration::from_millis(1), Duration::from_millis(5));

    #[test]
    fn a_store_that_comes_back_gets_the_same_batch_and_health_follows() {
        let health = StoreHealth::default();
        let mut s = Retrying::new(
            Box::new(Scripted(VecDeque::from([down(), down(), down()]), 0)),
            "PostgreSQL",
            FAST,
            CancellationToken::new(),
            health.clone(),
        );
        assert_eq!(s.write_batch(&[]).unwrap().stored, 1);
        assert!(health.writable());
    }

    #[test]
    fn one_store_coming_back_does_not_hide_another_still_down() {
        let health = StoreHealth::default();
        let stop = CancellationToken::new();
        let endless = VecDeque::from_iter((0..10_000).map(|_| down()));
        let mut down_for_good = Retrying::new(
            Box::new(Scripted(endless, 0)),
            "InfluxDB",
            FAST,
            stop.clone(),
            health.clone(),
        );
        let t = std::thread::spawn(move || down_for_good.write_batch(&[]));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while health.writable() {
            assert!(std::time::Instant::now() < deadline, "never unhealthy");
            std::thread::yield_now();
        }
        // Another lane's store fails once, then commits: still unhealthy overall.
        let mut flaky = Retrying::new(
            Box::new(Scripted(VecDeque::from([down()]), 0)),
            "PostgreSQL",
            FAST,
            stop.clone(),
            health.clone(),
        );
        assert_eq!(flaky.write_batch(&[]).unwrap().stored, 1);
        assert!(!health.writable(), "InfluxDB is still being retried");
        stop.cancel();
        assert!(matches!(t.join().unwrap(), Err(StoreError::Stopped)));
    }

    #[test]
    fn a_refusal_is_not_retried() {
        let mut s = Retrying::new(
            Box::new(Scripted(
                VecDeque::from([Err(StoreError::Refused {
                    store: "PostgreSQL",
                    reason: "password authentication failed".into(),
                })]),
                0,
            )),
            "PostgreSQL",
            FAST,
            CancellationToken::new(),
            StoreHealth::default(),
        );
        assert!(s.write_batch(&[]).unwrap_err().is_refusal());
    }

    #[test]
    fn stopping_ends_the_retries_and_leaves_the_store_unhealthy() {
        let stop = CancellationToken::new();
        let health = StoreHealth::default();
        let endless = VecDeque::from_iter((0..10_000).map(|_| down()));
        let mut s = Retrying::new(
            Box::new(Scripted(endless, 0)),
            "InfluxDB",
            FAST,
            stop.clone(),
            health.clone(),
        );
        let t = std::thread::spawn(move || s.write_batch(&[]));
        std::thread::sleep(Duration::from_millis(30));
        stop.cancel();
        assert!(matches!(t.join().unwrap(), Err(StoreError::Stopped)));
        assert!(!health.writable());
    }
}
