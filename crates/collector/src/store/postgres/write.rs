//! One batch, one transaction: an `INSERT ... SELECT FROM unnest(...) ON CONFLICT
//! DO NOTHING RETURNING` into `telemetry`, one comparison of the records whose
//! `seq` was already taken, one insert into `rejected`, one counter update. The
//! round trips do not grow with the batch: a batch of new readings costs two
//! (`BEGIN` sent together with the insert, then `COMMIT`), on statements prepared
//! once per connection ([`Prepared`]) so the server does not parse and plan them
//! for every batch.

use super::error::Failure;
use super::plan::{Key, Plan};
use crate::store::{Record, WriteOutcome};
use std::collections::HashSet;
use tokio_postgres::{Client, Statement};

const INSERT_TELEMETRY: &str = "
INSERT INTO telemetry (device_id, seq, topic, publish_ts, receive_ts, collector, payload, payload_hash)
SELECT d, s, t, to_timestamp(p), to_timestamp(r), $8, j::jsonb, h
FROM unnest($1::text[], $2::int8[], $3::text[], $4::float8[], $5::float8[], $6::text[], $7::bytea[])
    AS u(d, s, t, p, r, j, h)
ON CONFLICT DO NOTHING
RETURNING device_id, seq, payload_hash";

/// Same reading = equal but for `timestamp`, the time of each publish (as the
/// SQLite store decides). jsonb equality ignores key order and spacing.
const SAME_READING: &str = "
SELECT u.i,
       CASE WHEN jsonb_typeof(t.payload) = 'object' THEN t.payload - 'timestamp' ELSE t.payload END
     = CASE WHEN jsonb_typeof(u.j::jsonb) = 'object' THEN u.j::jsonb - 'timestamp' ELSE u.j::jsonb END
FROM unnest($1::int8[], $2::text[], $3::int8[], $4::text[]) AS u(i, d, s, j)
JOIN telemetry t ON t.device_id = u.d AND t.seq = u.s";

const INSERT_REJECTED: &str = "
INSERT INTO rejected (topic, receive_ts, reason, payload, collector, payload_hash)
SELECT t, to_timestamp(r), w, p, $6, h
FROM unnest($1::text[], $2::float8[], $3::text[], $4::bytea[], $5::bytea[]) AS u(t, r, w, p, h)
ON CONFLICT DO NOTHING
RETURNING topic, payload_hash";

const ADD_DUPLICATES: &str = "UPDATE counters SET value = value + $1 WHERE name = 'duplicates'";

/// The statements of a batch, prepared on one connection (they live as long as it).
pub(crate) struct Prepared {
    insert_telemetry: Statement,
    same_reading: Statement,
    insert_rejected: Statement,
    add_duplicates: Statement,
}

impl Prepared {
    /// Prepares every statement; the tables must exist.
    pub async fn new(client: &Client) -> Result<Prepared, tokio_postgres::Error> {
        let (insert_telemetry, same_reading, insert_rejected, add_duplicates) = tokio::try_join!(
            client.prepare(INSERT_TELEMETRY),
            client.prepare(SAME_READING),
            client.prepare(INSERT_REJECTED),
            client.prepare(ADD_DUPLICATES),
        )?;
        Ok(Prepared {
            insert_telemetry,
            same_reading,
            insert_rejected,
            add_duplicates,
        })
    }
}

/// Writes `batch` in one transaction and counts what it did. A failure leaves the
/// transaction open: the caller drops the connection, and the server rolls it back.
pub(crate) async fn write_batch(
    tx: &Client,
    prepared: &Prepared,
    collector: &str,
    batch: &[Record],
) -> Result<WriteOutcome, Failure> {
    let plan = Plan::new(batch);
    // Sent back to back, BEGIN first (each future hands its message to the
    // connection on its first poll, and `biased` polls in this order): the server
    // answers both in one round trip.
    let (begun, inserted) = tokio::join!(
        biased;
        tx.batch_execute("BEGIN"),
        insert_telemetry(tx, &prepared.insert_telemetry, collector, &plan)
    );
    begun.map_err(Failure::Begin)?;
    let inserted = inserted?;
    let compare = plan.to_compare(&inserted);
    let different = different_readings(tx, &prepared.same_reading, batch, &compare).await?;
    let (mut rejections, rejection_repeats) = plan.rejections(&different);
    // The same key order in every transaction (as for telemetry), so concurrent
    // batches cannot deadlock on rejected rows either.
    rejections.sort_by(|a, b| (&a.topic, &a.hash).cmp(&(&b.topic, &b.hash)));

    let kept_rejections: HashSet<(String, Vec<u8>)> = if rejections.is_empty() {
        HashSet::new()
    } else {
        let topics: Vec<&str> = rejections.iter().map(|r| r.topic.as_str()).collect();
        let times: Vec<f64> = rejections.iter().map(|r| r.receive_ts).collect();
        let reasons: Vec<&str> = rejections.iter().map(|r| r.reason.as_str()).collect();
        let payloads: Vec<&[u8]> = rejections.iter().map(|r| r.payload).collect();
        let hashes: Vec<&[u8]> = rejections.iter().map(|r| r.hash.as_slice()).collect();
        tx.query(
            &prepared.insert_rejected,
            &[&topics, &times, &reasons, &payloads, &hashes, &collector],
        )
        .await?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()?
    };
    for r in rejections.iter().filter(|r| r.reused_seq) {
        if kept_rejections.contains(&(r.topic.clone(), r.hash.clone())) {
            tracing::warn!(target: "collector::store::postgres", "{}", r.reason);
        }
    }

    let out = WriteOutcome {
        stored: inserted.len(),
        duplicates: plan.seqless_repeats
            + plan.seqless_conflicts(&inserted)
            + (compare.len() - different.len())
            + rejection_repeats
            + (rejections.len() - kept_rejections.len()),
        rejected: kept_rejections.len(),
    };
    if out.duplicates > 0 {
        tx.execute(&prepared.add_duplicates, &[&(out.duplicates as i64)])
            .await?;
    }
    tx.batch_execute("COMMIT").await?;
    Ok(out)
}

/// Offers the plan's candidates; the keys the database took.
async fn insert_telemetry(
    tx: &Client,
    statement: &Statement,
    collector: &str,
    plan: &Plan<'_>,
) -> Result<HashSet<Key>, Failure> {
    let rows = &plan.telemetry;
    if rows.is_empty() {
        return Ok(HashSet::new());
    }
    let mut devices = Vec::with_capacity(rows.len());
    let mut seqs = Vec::with_capacity(rows.len());
    let mut hashes: Vec<Option<&[u8]>> = Vec::with_capacity(rows.len());
    for c in rows {
        match &c.key {
            Key::Seq(d, s) => {
                devices.push(d.as_str());
                seqs.push(Some(*s));
                hashes.push(None);
            }
            Key::Hash(d, h) => {
                devices.push(d.as_str());
                seqs.push(None);
                hashes.push(Some(h.as_slice()));
            }
        }
    }
    let topics: Vec<&str> = rows.iter().map(|c| c.topic.as_str()).collect();
    let published: Vec<Option<f64>> = rows.iter().map(|c| c.publish_ts).collect();
    let received: Vec<f64> = rows.iter().map(|c| c.receive_ts).collect();
    let payloads: Vec<&str> = rows.iter().map(|c| c.payload).collect();
    let returned = tx
        .query(
            statement,
            &[
                &devices, &seqs, &topics, &published, &received, &payloads, &hashes, &collector,
            ],
        )
        .await?;
    Ok(returned
        .iter()
        .map(|row| {
            let device: String = row.try_get(0)?;
            Ok(match row.try_get::<_, Option<i64>>(1)? {
                Some(seq) => Key::Seq(device, seq),
                None => Key::Hash(
                    device,
                    row.try_get::<_, Option<Vec<u8>>>(2)?.unwrap_or_default(),
                ),
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()?)
}

/// The batch indexes among `compare` that carry another reading than the row
/// stored under their `(device_id, seq)`. A row that vanished meanwhile counts
/// as the same reading, as in the SQLite store.
async fn different_readings(
    tx: &Client,
    statement: &Statement,
    batch: &[Record],
    compare: &[(usize, String, i64)],
) -> Result<HashSet<usize>, Failure> {
    if compare.is_empty() {
        return Ok(HashSet::new());
    }
    let indexes: Vec<i64> = compare.iter().map(|c| c.0 as i64).collect();
    let devices: Vec<&str> = compare.iter().map(|c| c.1.as_str()).collect();
    let seqs: Vec<i64> = compare.iter().map(|c| c.2).collect();
    let payloads: Vec<&str> = compare
        .iter()
        .map(|c| match &batch[c.0] {
            Record::Telemetry(t) => t.payload.as_str(),
            Record::Rejected(_) => "null",
        })
        .collect();
    let mut different = HashSet::new();
    for row in tx
        .query(statement, &[&indexes, &devices, &seqs, &payloads])
        .await?
    {
        // NULL (jsonb that cannot be compared) counts as the same reading.
        if row.try_get::<_, Option<bool>>(1)? == Some(false) {
            different.insert(row.try_get::<_, i64>(0)? as usize);
        }
    }
    Ok(different)
}
