//! Exponential reconnect backoff with jitter, between two bounds.
//!
//! The n-th delay after a failure is drawn uniformly from `[base/2, base]` where
//! `base = min(max, min * 2^n)`, and is never below `min`. Jitter keeps a fleet
//! that lost the broker at the same moment from reconnecting in lockstep.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

/// Reconnect delays: doubling from `min` up to `max`, with jitter; reset after a successful connect.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    rng: SmallRng,
}

impl Backoff {
    /// A backoff between `min` and `max` (`max` is raised to `min` if smaller).
    pub fn new(min: Duration, max: Duration) -> Self {
        Self::with_rng(min, max, SmallRng::from_rng(&mut rand::rng()))
    }

    /// The same with a fixed seed, for reproducible schedules in tests.
    pub fn seeded(min: Duration, max: Duration, seed: u64) -> Self {
        Self::with_rng(min, max, SmallRng::seed_from_u64(seed))
    }

    fn with_rng(min: Duration, max: Duration, rng: SmallRng) -> Self {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
            rng,
        }
    }

    /// The ceiling of the next delay, before jitter.
    pub fn current_base(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.min
            .checked_mul(factor)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// The delay to wait before the next attempt; each call doubles the base.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current_base();
        self.attempt = self.attempt.saturating_add(1);
        let low = (base / 2).max(self.min);
        if low >= base {
            return base;
        }
        let nanos = self
            .rng
            .random_range(low.as_nanos() as u64..=base.as_nanos() as u64);
        Duration::from_nanos(nanos)
    }

    /// Number of failed attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Called after a successful connect: the next failure starts again at `min`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn doubles_from_min_to_max_within_jitter() {
        let mut b = Backoff::seeded(S, 120 * S, 7);
        let bases = [1u64, 2, 4, 8, 16, 32, 64, 120, 120, 120];
        for base in bases {
            let base = Duration::from_secs(base);
            assert_eq!(b.current_base(), base);
            let d = b.next_delay();
            assert!(d <= base, "{d:?} above base {base:?}");
            assert!(d >= (base / 2).max(S), "{d:?} below half of {base:?}");
        }
    }

    #[test]
    fn first_delay_is_exactly_min_and_never_below_it() {
        let mut b = Backoff::seeded(S, 120 * S, 1);
        assert_eq!(b.next_delay(), S);
        for _ in 0..100 {
            assert!(b.next_delay() >= S);
        }
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..50 {
            let mut b = Backoff::seeded(S, 120 * S, seed);
            b.next_delay();
            b.next_delay();
            b.next_delay();
            seen.insert(b.next_delay().as_millis() / 100);
        }
        // base 8 s: delays lie in [4 s, 8 s]; 50 seeds must not all agree.
        assert!(seen.len() > 5, "{seen:?}");
        assert!(seen.iter().all(|d| (40..=80).contains(d)), "{seen:?}");
    }

    #[test]
    fn reset_returns_to_min() {
        let mut b = Backoff::seeded(S, 120 * S, 3);
        for _ in 0..10 {
            b.next_delay();
        }
        assert_eq!(b.current_base(), 120 * S);
        assert_eq!(b.attempts(), 10);
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.next_delay(), S);
    }

    #[test]
    fn max_below_min_is_raised_and_huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::seeded(5 * S, S, 0);
        assert_eq!(b.next_delay(), 5 * S);
        let mut b = Backoff::seeded(S, 120 * S, 0);
        for _ in 0..1000 {
            assert!(b.next_delay() <= 120 * S);
        }
    }
}
