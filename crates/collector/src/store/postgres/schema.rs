//! The tables of contract section 6, created if missing, and a check that tables
//! found under those names are the collector's. Nothing is created when
//! everything is there already, so a role without CREATE works on tables a DBA made.

use super::error::Failure;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS telemetry (
    id           bigserial PRIMARY KEY,
    device_id    text NOT NULL,
    seq          bigint,
    topic        text NOT NULL,
    publish_ts   timestamptz,
    receive_ts   timestamptz NOT NULL,
    collector    text NOT NULL,
    payload      jsonb NOT NULL,
    payload_hash bytea
);
CREATE UNIQUE INDEX IF NOT EXISTS telemetry_device_seq ON telemetry (device_id, seq);
CREATE UNIQUE INDEX IF NOT EXISTS telemetry_device_payload
    ON telemetry (device_id, payload_hash) WHERE seq IS NULL;
CREATE TABLE IF NOT EXISTS rejected (
    id           bigserial PRIMARY KEY,
    topic        text,
    receive_ts   timestamptz,
    reason       text,
    payload      bytea,
    collector    text,
    payload_hash bytea
);
CREATE UNIQUE INDEX IF NOT EXISTS rejected_topic_payload ON rejected (topic, payload_hash);
CREATE TABLE IF NOT EXISTS counters (
    name  text PRIMARY KEY,
    value bigint NOT NULL
);
";

/// The relations [`SCHEMA`] makes, looked up through the search path as the
/// statements will be.
const PRESENT: &str = "SELECT to_regclass('telemetry') IS NOT NULL AND to_regclass('telemetry_device_seq') IS NOT NULL
    AND to_regclass('telemetry_device_payload') IS NOT NULL AND to_regclass('rejected') IS NOT NULL
    AND to_regclass('rejected_topic_payload') IS NOT NULL AND to_regclass('counters') IS NOT NULL";

/// Serialises the DDL of collectors starting together: two concurrent
/// `CREATE TABLE IF NOT EXISTS` may both try to create the table and one fail.
const DDL_LOCK: i64 = 0x6d71_7474_7363_6865; // "mqttsche"

/// The columns each table must have (more are fine).
pub(crate) const COLUMNS: &[(&str, &[&str])] = &[
    (
        "telemetry",
        &[
            "device_id",
            "seq",
            "topic",
            "publish_ts",
            "receive_ts",
            "collector",
            "payload",
            "payload_hash",
        ],
    ),
    (
        "rejected",
        &[
            "topic",
            "receive_ts",
            "reason",
            "payload",
            "collector",
            "payload_hash",
        ],
    ),
    ("counters", &["name", "value"]),
];

/// Creates what is missing, then checks the columns.
pub(crate) async fn ensure(client: &mut Client) -> Result<(), Failure> {
    let present: bool = client.query_one(PRESENT, &[]).await?.try_get(0)?;
    if !present {
        // Before any DDL, so a foreign table is named as such, not by the first
        // index that fails on it.
        check_columns(client, false).await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&DDL_LOCK])
            .await?;
        tx.batch_execute(SCHEMA).await.map_err(|e| {
            if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                Failure::Schema(
                    "table telemetry already holds the same (device_id, seq) more than once (or rejected the same topic and payload), \
                     so the unique index that removes duplicates cannot be created; remove the repeats or use another database"
                        .into(),
                )
            } else {
                Failure::Pg(e)
            }
        })?;
        tx.commit().await?;
    }
    check_columns(client, true).await?;
    client
        .execute(
            "INSERT INTO counters (name, value) VALUES ('duplicates', 0) ON CONFLICT DO NOTHING",
            &[],
        )
        .await?;
    Ok(())
}

/// Fails when a table exists without one of its columns (another program's
/// table), or, when `all_present`, when one is missing.
pub(crate) async fn check_columns(client: &Client, all_present: bool) -> Result<(), Failure> {
    for (table, columns) in COLUMNS {
        let have: Vec<String> = client
            .query(
                "SELECT attname::text FROM pg_attribute
                 WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
                &[table],
            )
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        if have.is_empty() && !all_present {
            continue;
        }
        if have.is_empty() {
            return Err(Failure::Schema(format!(
                "there is no table {table}: is this the database the collector writes to?"
            )));
        }
        if let Some(missing) = columns.iter().find(|c| !have.iter().any(|h| h == *c)) {
            return Err(Failure::Schema(format!(
                "table {table} has no column {missing}: it is not a collector table; point the URL at another database or schema (options=-c search_path=...)"
            )));
        }
    }
    Ok(())
}
