//! The InfluxDB store (contract section 6): each telemetry record becomes one point
//! in line protocol ([`mod@line`]), POSTed in gzipped batches to the v1 `/write` or the
//! v2 `/api/v2/write` endpoint (`http`) as [`InfluxConfig`] says ([`config`]).
//!
//! A point's time is the reading's own timestamp, so writing a batch again (a retry
//! after [`StoreError::Unavailable`], a redelivery from the broker) overwrites the
//! same points instead of adding new ones. Points the server refuses (HTTP 400:
//! a field type conflict, a malformed value) are found by splitting the batch, the
//! rest is written, and each refused point is counted as rejected and logged, so
//! one bad reading never blocks the stream.

pub mod config;
mod http;
pub mod line;

pub use config::{InfluxConfig, InfluxTarget, DEFAULT_MEASUREMENT, DEFAULT_TIMEOUT};

use super::{Record, Store, StoreError, WriteOutcome};
use http::{Failure, Writer};

/// The name errors and logs use for this store.
pub(crate) const STORE: &str = "InfluxDB";

/// Most points in one request, as InfluxDB's documentation advises.
const MAX_POINTS_PER_REQUEST: usize = 5000;

/// Writes telemetry to InfluxDB (or anything that speaks its write API). Blocking:
/// run it on its own thread ([`crate::store::StoreWorker`]).
pub struct InfluxStore {
    writer: Writer,
    measurement: String,
    collector: String,
}

/// One encoded record, with what a log line about it needs.
struct Point<'a> {
    line: String,
    device_id: &'a str,
    topic: &'a str,
}

impl InfluxStore {
    /// Checks `config` and builds the HTTP client; no request is made yet, so a
    /// server that is down shows at the first write as [`StoreError::Unavailable`].
    /// A configuration that cannot work is [`StoreError::Refused`].
    pub fn new(config: InfluxConfig) -> Result<InfluxStore, StoreError> {
        config.check()?;
        Ok(InfluxStore {
            writer: Writer::new(&config)?,
            measurement: config.measurement,
            collector: config.collector_tag,
        })
    }

    /// Writes `points`, splitting around the ones the server refuses. Returns how
    /// many were refused. A store-wide failure aborts the whole batch, maybe after
    /// some points were written: unlike a transaction, but the retry of the batch
    /// overwrites them with the same values.
    fn write_points(&self, points: &[Point<'_>]) -> Result<usize, StoreError> {
        if points.is_empty() {
            return Ok(0);
        }
        let body = points
            .iter()
            .map(|p| p.line.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        match self.writer.post(&body) {
            Ok(()) => Ok(0),
            Err(Failure::Store(e)) => Err(e),
            Err(Failure::Points(reason)) => {
                if let [p] = points {
                    tracing::warn!(
                        target: "collector::store",
                        topic = p.topic,
                        device_id = p.device_id,
                        "InfluxDB refused a point, counted as rejected: {reason}"
                    );
                    return Ok(1);
                }
                // InfluxDB 1.x may have kept the good points of this request already;
                // writing them again overwrites them, so halving stays exact.
                let (a, b) = points.split_at(points.len() / 2);
                Ok(self.write_points(a)? + self.write_points(b)?)
            }
        }
    }
}

impl Store for InfluxStore {
    fn write_batch(&mut self, batch: &[Record]) -> Result<WriteOutcome, StoreError> {
        let mut outcome = WriteOutcome::default();
        let mut points = Vec::with_capacity(batch.len());
        for record in batch {
            match record {
                Record::Telemetry(row) => points.push(Point {
                    line: line::encode(row, &self.measurement, &self.collector),
                    device_id: &row.device_id,
                    topic: &row.topic,
                }),
                Record::Rejected(r) => {
                    tracing::debug!(
                        target: "collector::store",
                        topic = r.topic,
                        "rejected message not written to InfluxDB: {}",
                        r.reason
                    );
                    outcome.rejected += 1;
                }
            }
        }
        let mut refused = 0;
        for chunk in points.chunks(MAX_POINTS_PER_REQUEST) {
            refused += self.write_points(chunk)?;
        }
        outcome.stored = points.len() - refused;
        outcome.rejected += refused;
        // InfluxDB cannot tell a new point from one it overwrote, so a redelivery
        // counts as stored and `duplicates` stays 0.
        outcome.duplicates = 0;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RejectedRow, TelemetryRow};

    #[test]
    fn only_rejected_records_make_no_request() {
        // Port 9 (discard) is never an InfluxDB: a request would fail the test.
        let mut store =
            InfluxStore::new(InfluxConfig::v1("http://127.0.0.1:9", "db", "c")).unwrap();
        let rejected = Record::Rejected(RejectedRow {
            topic: "device/data/x".into(),
            receive_ts: 1.0,
            reason: "not a JSON object".into(),
            payload: b"x".to_vec(),
        });
        let out = store.write_batch(&[rejected.clone(), rejected]).unwrap();
        assert_eq!(
            out,
            WriteOutcome {
                stored: 0,
                duplicates: 0,
                rejected: 2
            }
        );
        assert_eq!(store.write_batch(&[]).unwrap(), WriteOutcome::default());
    }

    #[test]
    fn a_server_that_is_down_fails_the_batch_as_unavailable() {
        let mut store =
            InfluxStore::new(InfluxConfig::v1("http://127.0.0.1:9", "db", "c")).unwrap();
        let row = Record::Telemetry(TelemetryRow {
            device_id: "v1".into(),
            seq: Some(1),
            topic: "device/data/v1".into(),
            publish_ts: Some(1.0),
            receive_ts: 1.5,
            payload: r#"{"speed":1}"#.into(),
        });
        let err = store.write_batch(&[row]).unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(err.to_string().starts_with("InfluxDB: "), "{err}");
    }

    #[test]
    fn a_bad_configuration_is_refused_at_once() {
        let err = InfluxStore::new(InfluxConfig::v1("127.0.0.1:8086", "db", "c"))
            .err()
            .unwrap();
        assert!(err.is_refusal(), "{err}");
    }
}
