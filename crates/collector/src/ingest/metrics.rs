//! The collector's Prometheus metrics (contract section 8): what ingest counts per
//! batch, and [`Counted`], the store wrapper that counts failed writes per store.
//! Labels are fixed sets (a reason class, a store name): never device ids,
//! payloads or credentials.

use crate::store::{Record, Store, StoreError, WriteOutcome};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// The reason classes of `mqtt_collector_messages_rejected_total{reason}`.
pub const REASONS: &[&str] = &["too_large", "not_json", "device_id", "seq", "other"];
/// The store names of `mqtt_collector_store_errors_total{store}`.
pub const STORES: &[&str] = &["sqlite", "postgresql", "influxdb"];

/// Every collector metric; clones share the values (cheap atomic updates).
#[derive(Debug, Clone)]
pub struct Metrics {
    connected: Gauge,
    received: Counter,
    stored: Counter,
    duplicate: Counter,
    rejected: Family<Labels, Counter>,
    store_errors: Family<Labels, Counter>,
    commit_duration: Histogram,
    publish_to_commit: Histogram,
    reconnects: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            connected: Gauge::default(),
            received: Counter::default(),
            stored: Counter::default(),
            duplicate: Counter::default(),
            rejected: Family::default(),
            store_errors: Family::default(),
            // 100 µs .. ~13 s: an SQLite commit is sub-millisecond, a retried server
            // store can take seconds.
            commit_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            // 1 ms .. ~33 s: the batch wait plus the commit, and clock skew.
            publish_to_commit: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            reconnects: Counter::default(),
        };
        // Every class shows up as 0 from the start, so rate() works before the first one.
        for reason in REASONS {
            let _ = m.rejected.get_or_create(&vec![("reason", *reason)]);
        }
        m
    }
}

impl Metrics {
    /// Adds every metric to `registry` under its contract name.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "mqtt_collector_connected",
            "1 while connected to the broker, else 0",
            self.connected.clone(),
        );
        registry.register(
            "mqtt_collector_messages_received",
            "Messages read from the broker (redeliveries included)",
            self.received.clone(),
        );
        registry.register(
            "mqtt_collector_messages_stored",
            "Telemetry rows committed by this process",
            self.stored.clone(),
        );
        registry.register(
            "mqtt_collector_messages_duplicate",
            "Messages already stored (acknowledged, not stored again)",
            self.duplicate.clone(),
        );
        registry.register(
            "mqtt_collector_messages_rejected",
            "Messages the validator refused, by reason class",
            self.rejected.clone(),
        );
        registry.register(
            "mqtt_collector_store_errors",
            "Failed writes by store (each retry counts)",
            self.store_errors.clone(),
        );
        registry.register(
            "mqtt_collector_commit_duration_seconds",
            "Time to commit one batch to every store, retries included",
            self.commit_duration.clone(),
        );
        registry.register(
            "mqtt_collector_publish_to_commit_seconds",
            "From the payload's timestamp to the commit of its batch",
            self.publish_to_commit.clone(),
        );
        registry.register(
            "mqtt_collector_reconnects",
            "Connections to the broker re-established after a loss",
            self.reconnects.clone(),
        );
    }

    /// Shows `store` in `mqtt_collector_store_errors_total` from the start (at 0).
    pub fn add_store(&self, store: &'static str) {
        let _ = self.store_errors.get_or_create(&vec![("store", store)]);
    }

    pub(super) fn connected(&self, up: bool, again: bool) {
        self.connected.set(i64::from(up));
        if again {
            self.reconnects.inc();
        }
    }

    pub(super) fn received(&self) {
        self.received.inc();
    }

    /// One committed batch: its outcome, its rejected reason classes, how long the
    /// commit took and the publish-to-commit delay of each reading.
    pub(super) fn committed(
        &self,
        outcome: &WriteOutcome,
        rejected: &[&'static str],
        seconds: f64,
        publish_to_commit: impl Iterator<Item = f64>,
    ) {
        self.stored.inc_by(outcome.stored as u64);
        self.duplicate.inc_by(outcome.duplicates as u64);
        for reason in rejected {
            self.rejected
                .get_or_create(&vec![("reason", *reason)])
                .inc();
        }
        self.commit_duration.observe(seconds);
        for d in publish_to_commit {
            // A device clock ahead of ours would give a negative delay.
            self.publish_to_commit.observe(d.max(0.0));
        }
    }

    fn store_error(&self, store: &'static str) {
        self.store_errors
            .get_or_create(&vec![("store", store)])
            .inc();
    }
}

/// The class of a validator's reason: a short fixed label, not the free text.
pub fn reason_class(reason: &str) -> &'static str {
    if reason.starts_with("payload exceeds") {
        "too_large"
    } else if reason.starts_with("not a JSON object") {
        "not_json"
    } else if reason.starts_with("device_id") {
        "device_id"
    } else if reason.starts_with("seq") {
        "seq"
    } else {
        "other"
    }
}

/// A store whose failed writes are counted as `store` (inside a retry wrapper, each
/// failed attempt counts).
pub struct Counted {
    inner: Box<dyn Store>,
    store: &'static str,
    metrics: Metrics,
}

impl Counted {
    /// Counts the failures of `inner` under the label `store` (one of [`STORES`]).
    pub fn new(inner: Box<dyn Store>, store: &'static str, metrics: Metrics) -> Counted {
        metrics.add_store(store);
        Counted {
            inner,
            store,
            metrics,
        }
    }
}

impl Store for Counted {
    fn write_batch(&mut self, batch: &[Record]) -> Result<WriteOutcome, StoreError> {
        let result = self.inner.write_batch(batch);
        if result.is_err() {
            self.metrics.store_error(self.store);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &Metrics) -> String {
        let mut r = Registry::default();
        m.register(&mut r);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        out
    }

    #[test]
    fn every_validator_reason_has_a_class() {
        let cases = [
            ("payload exceeds 262144 bytes", "too_large"),
            ("not a JSON object", "not_json"),
            ("not a JSON object: invalid JSON (x)", "not_json"),
            (r#"device_id "x" does not match topic a/y"#, "device_id"),
            ("device_id is empty", "device_id"),
            ("seq must be a whole number", "seq"),
            ("something new", "other"),
        ];
        for (reason, class) in cases {
            assert_eq!(reason_class(reason), class, "{reason}");
            assert!(REASONS.contains(&class));
        }
    }

    struct Failing;
    impl Store for Failing {
        fn write_batch(&mut self, _: &[Record]) -> Result<WriteOutcome, StoreError> {
            Err(StoreError::Unavailable {
                store: "PostgreSQL",
                reason: "down".into(),
            })
        }
    }

    #[test]
    fn counters_follow_batches_and_store_failures() {
        let m = Metrics::default();
        let mut s = Counted::new(Box::new(Failing), "postgresql", m.clone());
        assert!(s.write_batch(&[]).is_err());
        m.received();
        m.received();
        m.connected(true, false);
        m.connected(false, false);
        m.connected(true, true);
        let outcome = WriteOutcome {
            stored: 5,
            duplicates: 2,
            rejected: 1,
        };
        m.committed(&outcome, &["not_json"], 0.002, [0.5, -1.0].into_iter());
        let t = text(&m);
        for line in [
            "mqtt_collector_connected 1",
            "mqtt_collector_messages_received_total 2",
            "mqtt_collector_messages_stored_total 5",
            "mqtt_collector_messages_duplicate_total 2",
            "mqtt_collector_messages_rejected_total{reason=\"not_json\"} 1",
            "mqtt_collector_messages_rejected_total{reason=\"seq\"} 0",
            "mqtt_collector_store_errors_total{store=\"postgresql\"} 1",
            "mqtt_collector_commit_duration_seconds_count 1",
            "mqtt_collector_publish_to_commit_seconds_count 2",
            "mqtt_collector_reconnects_total 1",
        ] {
            assert!(t.contains(line), "{line} missing:\n{t}");
        }
    }
}
