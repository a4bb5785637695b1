//! `collector stats --postgres URL`: the same figures as for SQLite, read from the
//! PostgreSQL tables and computed by the same code (`crate::stats::Raw`).

use super::config::{ConfigError, PostgresUrl};
use super::connection::{Session, StoreRuntime};
use super::error::{Failure, STORE};
use super::{schema, tls, DEFAULT_TIMEOUT};
use crate::stats::{DeviceRow, Raw, ReasonCount, Stats, GAPS_SQL};
use crate::store::StoreError;
use tokio_postgres::Client;

/// Connects to `url`, reads the report, disconnects. Creates nothing: a database
/// without the collector's tables is refused with a message saying so.
pub fn read(url: &str) -> Result<Stats, StoreError> {
    let refuse = |e: ConfigError| StoreError::Refused {
        store: STORE,
        reason: e.to_string(),
    };
    let url = PostgresUrl::parse(url).map_err(refuse)?;
    let tls = tls::connector(&url).map_err(refuse)?;
    let rt = StoreRuntime::new().map_err(|f| f.into_store_error(&url))?;
    let (u, t) = (&url, tls.as_ref());
    let session = rt
        .run(
            DEFAULT_TIMEOUT,
            async move { Ok(Session::open(u, t).await?) },
        )
        .map_err(|f| f.into_store_error(&url))?;
    let client = &session.client;
    let report = rt.run(DEFAULT_TIMEOUT, async move { read_raw(client).await });
    rt.close(session);
    Ok(report.map_err(|f| f.into_store_error(&url))?.into_stats())
}

async fn read_raw(client: &Client) -> Result<Raw, Failure> {
    schema::check_columns(client, true).await?;
    // One snapshot for every figure, as SQLite's reader has.
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let devices = client
        .query(
            "SELECT device_id, count(*), extract(epoch FROM min(receive_ts))::float8,
                    extract(epoch FROM max(receive_ts))::float8, min(seq), max(seq)
             FROM telemetry GROUP BY device_id",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(DeviceRow {
                device_id: r.try_get(0)?,
                count: r.try_get::<_, i64>(1)? as u64,
                first_seen: r.try_get(2)?,
                last_seen: r.try_get(3)?,
                seq_min: r.try_get(4)?,
                seq_max: r.try_get(5)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()?;
    let gaps = client
        .query(GAPS_SQL, &[])
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect::<Result<_, tokio_postgres::Error>>()?;
    // Subtracted here, not in SQL, so the figures are SQLite's to the last bit.
    let latencies = client
        .query(
            "SELECT extract(epoch FROM receive_ts)::float8, extract(epoch FROM publish_ts)::float8
             FROM telemetry WHERE publish_ts IS NOT NULL",
            &[],
        )
        .await?
        .iter()
        .map(|r| Ok(r.try_get::<_, f64>(0)? - r.try_get::<_, f64>(1)?))
        .collect::<Result<_, tokio_postgres::Error>>()?;
    let duplicates = match client
        .query_opt("SELECT value FROM counters WHERE name = 'duplicates'", &[])
        .await?
    {
        Some(r) => r.try_get::<_, i64>(0)? as u64,
        None => 0,
    };
    let reasons = client
        .query(
            "SELECT coalesce(reason, ''), count(*) FROM rejected GROUP BY reason",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(ReasonCount {
                reason: r.try_get(0)?,
                count: r.try_get::<_, i64>(1)? as u64,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()?;
    client.batch_execute("COMMIT").await?;
    Ok(Raw {
        devices,
        gaps,
        latencies,
        duplicates,
        reasons,
    })
}
