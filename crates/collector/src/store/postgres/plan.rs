//! The duplicate rules of contract section 4, worked out for a whole batch at once
//! so that each table gets one statement: which records to offer to `telemetry`,
//! which to compare with the row already stored under their `(device_id, seq)`,
//! and which to offer to `rejected`. The outcome is the one the SQLite store
//! reaches record by record, in batch order.

use crate::store::{payload_hash, Record};
use std::collections::{HashMap, HashSet};

/// The unique key a telemetry row is stored under.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Key {
    /// `(device_id, seq)`.
    Seq(String, i64),
    /// `(device_id, payload_hash)` of a seq-less row.
    Hash(String, Vec<u8>),
}

/// A telemetry row offered to the database.
#[derive(Debug)]
pub(crate) struct Candidate<'a> {
    pub key: Key,
    pub topic: String,
    pub publish_ts: Option<f64>,
    pub receive_ts: f64,
    pub payload: &'a str,
}

/// A row offered to `rejected`.
#[derive(Debug)]
pub(crate) struct Rejection<'a> {
    pub topic: String,
    pub receive_ts: f64,
    pub reason: String,
    pub payload: &'a [u8],
    pub hash: Vec<u8>,
    /// Another reading under a `seq` already used: logged when it is kept.
    pub reused_seq: bool,
}

/// What a batch offers and how the answers become a [`crate::store::WriteOutcome`].
#[derive(Debug)]
pub(crate) struct Plan<'a> {
    batch: &'a [Record],
    /// The first record of each key, sorted by key (every collector locks keys in
    /// the same order, so concurrent batches cannot deadlock).
    pub telemetry: Vec<Candidate<'a>>,
    /// Batch index of each candidate's record, by key.
    first: HashMap<Key, usize>,
    /// Telemetry records whose payload PostgreSQL cannot hold, with the reason.
    unstorable: HashMap<usize, String>,
    /// Seq-less records whose key an earlier record of the batch has.
    pub seqless_repeats: usize,
}

impl<'a> Plan<'a> {
    pub fn new(batch: &'a [Record]) -> Plan<'a> {
        let mut first = HashMap::new();
        let mut telemetry = Vec::new();
        let mut unstorable = HashMap::new();
        let mut seqless_repeats = 0;
        for (i, record) in batch.iter().enumerate() {
            let Record::Telemetry(t) = record else {
                continue;
            };
            if has_nul_escape(&t.payload) {
                unstorable.insert(
                    i,
                    "the payload holds a \\u0000 character, which a PostgreSQL jsonb value cannot store"
                        .to_string(),
                );
                continue;
            }
            let device = text(&t.device_id);
            let key = match t.seq {
                Some(seq) => Key::Seq(device, seq),
                None => Key::Hash(device, payload_hash(t.payload.as_bytes())),
            };
            if first.contains_key(&key) {
                if t.seq.is_none() {
                    seqless_repeats += 1;
                }
                continue;
            }
            first.insert(key.clone(), i);
            telemetry.push(Candidate {
                key,
                topic: text(&t.topic),
                publish_ts: t.publish_ts.filter(|ts| in_range(*ts)),
                receive_ts: receive_time(t.receive_ts),
                payload: &t.payload,
            });
        }
        telemetry.sort_by(|a, b| a.key.cmp(&b.key));
        Plan {
            batch,
            telemetry,
            first,
            unstorable,
            seqless_repeats,
        }
    }

    /// After the insert: the records with a `seq` whose key holds another record's
    /// row (stored before, or just now by an earlier record of the batch). Each is
    /// a duplicate when it is the same reading, else a rejection. `(index, device, seq)`.
    pub fn to_compare(&self, inserted: &HashSet<Key>) -> Vec<(usize, String, i64)> {
        let mut out = Vec::new();
        for (i, record) in self.batch.iter().enumerate() {
            let Record::Telemetry(t) = record else {
                continue;
            };
            let Some(seq) = t.seq else { continue };
            if self.unstorable.contains_key(&i) {
                continue;
            }
            let key = Key::Seq(text(&t.device_id), seq);
            if self.first.get(&key) == Some(&i) && inserted.contains(&key) {
                continue;
            }
            out.push((i, text(&t.device_id), seq));
        }
        out
    }

    /// Seq-less candidates the database already held.
    pub fn seqless_conflicts(&self, inserted: &HashSet<Key>) -> usize {
        self.telemetry
            .iter()
            .filter(|c| matches!(c.key, Key::Hash(..)) && !inserted.contains(&c.key))
            .count()
    }

    /// The rows to offer to `rejected`, first of each `(topic, payload)` only, in
    /// batch order, and how many repeats were left out (duplicates). `different`
    /// holds the indexes [`Plan::to_compare`] found to be another reading.
    pub fn rejections(&self, different: &HashSet<usize>) -> (Vec<Rejection<'a>>, usize) {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut repeats = 0;
        for (i, record) in self.batch.iter().enumerate() {
            let rejection = match record {
                Record::Rejected(r) => Rejection {
                    topic: text(&r.topic),
                    receive_ts: receive_time(r.receive_ts),
                    reason: text(&r.reason),
                    payload: &r.payload,
                    hash: payload_hash(&r.payload),
                    reused_seq: false,
                },
                Record::Telemetry(t) => {
                    let reason = match (self.unstorable.get(&i), different.contains(&i)) {
                        (Some(why), _) => why.clone(),
                        (None, true) => format!(
                            "seq {} of device {:?} is already stored with a different reading (did the device's numbering restart?)",
                            t.seq.unwrap_or_default(),
                            t.device_id
                        ),
                        (None, false) => continue,
                    };
                    Rejection {
                        topic: text(&t.topic),
                        receive_ts: receive_time(t.receive_ts),
                        reason: text(&reason),
                        payload: t.payload.as_bytes(),
                        hash: payload_hash(t.payload.as_bytes()),
                        reused_seq: different.contains(&i),
                    }
                }
            };
            if seen.insert((rejection.topic.clone(), rejection.hash.clone())) {
                out.push(rejection);
            } else {
                repeats += 1;
            }
        }
        (out, repeats)
    }
}

/// PostgreSQL text cannot hold NUL; MQTT forbids it in topics, but a record
/// may come from elsewhere, and one bad character must not fail every retry.
fn text(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s.to_string()
    }
}

/// Whether the JSON text holds the escape `\u0000` in a string or key (jsonb
/// refuses it; serde_json and SQLite accept it).
fn has_nul_escape(payload: &str) -> bool {
    if !payload.contains("\\u0000") {
        return false;
    }
    fn walk(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::String(s) => s.contains('\0'),
            serde_json::Value::Array(a) => a.iter().any(walk),
            serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || walk(v)),
            _ => false,
        }
    }
    serde_json::from_str::<serde_json::Value>(payload).is_ok_and(|v| walk(&v))
}

/// Within what `to_timestamp()` accepts (about 4700 BC to 294000 AD).
fn in_range(ts: f64) -> bool {
    ts.is_finite() && (-2.1e11..9.2e12).contains(&ts)
}

/// The receive time is the collector's clock; a value PostgreSQL cannot hold
/// (a broken record) becomes now rather than failing the batch forever.
fn receive_time(ts: f64) -> f64 {
    if in_range(ts) {
        ts
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RejectedRow, TelemetryRow};

    fn t(device: &str, seq: Option<i64>, payload: &str) -> Record {
        Record::Telemetry(TelemetryRow {
            device_id: device.into(),
            seq,
            topic: format!("device/data/{device}"),
            publish_ts: Some(1.0),
            receive_ts: 2.0,
            payload: payload.into(),
        })
    }

    fn r(topic: &str, payload: &[u8]) -> Record {
        Record::Rejected(RejectedRow {
            topic: topic.into(),
            receive_ts: 2.0,
            reason: "bad".into(),
            payload: payload.to_vec(),
        })
    }

    #[test]
    fn first_of_each_key_is_offered_in_key_order() {
        let batch = vec![
            t("b", Some(2), "{}"),
            t("a", None, r#"{"x":1}"#),
            t("a", Some(1), "{}"),
            t("b", Some(2), r#"{"other":1}"#),
            t("a", None, r#"{"x":1}"#),
            r("x", b"1"),
        ];
        let plan = Plan::new(&batch);
        let keys: Vec<&Key> = plan.telemetry.iter().map(|c| &c.key).collect();
        assert!(matches!(keys[0], Key::Seq(d, 1) if d == "a"));
        assert!(matches!(keys[1], Key::Seq(d, 2) if d == "b"));
        assert!(matches!(keys[2], Key::Hash(d, _) if d == "a"));
        assert_eq!(keys.len(), 3);
        assert_eq!(plan.seqless_repeats, 1);

        // Everything inserted: only the repeat of (b, 2) is compared.
        let all: HashSet<Key> = keys.into_iter().cloned().collect();
        assert_eq!(plan.to_compare(&all), vec![(3, "b".into(), 2)]);
        assert_eq!(plan.seqless_conflicts(&all), 0);
        // Nothing inserted: both (b, 2) records and (a, 1) are compared.
        let none = HashSet::new();
        let cmp: Vec<usize> = plan.to_compare(&none).iter().map(|c| c.0).collect();
        assert_eq!(cmp, vec![0, 2, 3]);
        assert_eq!(plan.seqless_conflicts(&none), 1);

        let (rej, repeats) = plan.rejections(&HashSet::from([3]));
        assert_eq!(repeats, 0);
        assert_eq!(rej.len(), 2);
        assert!(rej[0].reused_seq && rej[0].reason.starts_with("seq 2 of device \"b\""));
        assert_eq!(rej[1].topic, "x");
    }

    #[test]
    fn repeated_rejections_and_unstorable_payloads() {
        let batch = vec![
            r("x", b"1"),
            r("x", b"1"),
            r("y", b"1"),
            t("a", Some(1), r#"{"s":"nul\u0000"}"#),
            t("a", Some(2), r#"{"s":"not nul \\u0000"}"#),
        ];
        let plan = Plan::new(&batch);
        assert_eq!(plan.telemetry.len(), 1);
        assert!(plan.to_compare(&HashSet::new()).iter().all(|c| c.0 == 4));
        let (rej, repeats) = plan.rejections(&HashSet::new());
        assert_eq!(repeats, 1);
        assert_eq!(rej.len(), 3);
        assert!(rej[2].reason.contains("\\u0000"), "{}", rej[2].reason);
    }

    #[test]
    fn text_and_times_postgres_cannot_hold_are_mended() {
        assert_eq!(text("a\0b"), "a\u{FFFD}b");
        let mut batch = vec![t("a", Some(1), "{}")];
        if let Record::Telemetry(row) = &mut batch[0] {
            row.publish_ts = Some(f64::NAN);
            row.receive_ts = f64::INFINITY;
        }
        let plan = Plan::new(&batch);
        assert_eq!(plan.telemetry[0].publish_ts, None);
        assert!(plan.telemetry[0].receive_ts.is_finite());
    }
}
