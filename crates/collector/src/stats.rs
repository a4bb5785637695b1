//! `collector stats`: what a collector database holds, per device and overall —
//! counts, first/last seen, `seq` gaps, end-to-end latency percentiles, duplicates
//! and rejections by reason — as a table for people or JSON for scripts.

use rusqlite::Connection;
use serde::Serialize;
use std::fmt::Write as _;

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    /// Rows in `telemetry`.
    pub total: u64,
    /// One entry per device id, sorted by id.
    pub devices: Vec<DeviceStats>,
    /// receive_ts - publish_ts over every row with a publish time.
    pub latency: Option<Latency>,
    /// Messages received again after being stored (acknowledged, not stored twice).
    pub duplicates: u64,
    /// Rows in `rejected`.
    pub rejected: u64,
    /// Rejections grouped by reason, most frequent first.
    pub rejected_by_reason: Vec<ReasonCount>,
}

/// One device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceStats {
    /// Device id.
    pub device_id: String,
    /// Rows stored.
    pub count: u64,
    /// Earliest receive time, Unix seconds.
    pub first_seen: f64,
    /// Latest receive time, Unix seconds.
    pub last_seen: f64,
    /// Smallest `seq`, if any row has one.
    pub seq_min: Option<i64>,
    /// Largest `seq`.
    pub seq_max: Option<i64>,
    /// Missing `seq` ranges `[first, last]`, counted from 1 (where every device starts).
    pub gaps: Vec<[i64; 2]>,
    /// How many `seq` values the gaps hold.
    pub missing: u64,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latency {
    /// Rows measured.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

/// One rejection reason.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReasonCount {
    /// The reason as stored.
    pub reason: String,
    /// How often.
    pub count: u64,
}

/// One device's aggregates as a backend reads them (gaps come separately).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeviceRow {
    pub device_id: String,
    pub count: u64,
    pub first_seen: f64,
    pub last_seen: f64,
    pub seq_min: Option<i64>,
    pub seq_max: Option<i64>,
}

/// The `seq` gaps, in SQL that SQLite and PostgreSQL both run: each row is a run
/// of values `[from, to]` missing before a stored one, counting from 1 (where
/// every device starts). The typed default keeps `lag` valid on PostgreSQL 12.
pub(crate) const GAPS_SQL: &str = "SELECT device_id, prev + 1, seq - 1 FROM (
         SELECT device_id, seq,
                lag(seq, 1, CAST(0 AS BIGINT)) OVER (PARTITION BY device_id ORDER BY seq) AS prev
         FROM telemetry WHERE seq IS NOT NULL
     ) AS runs WHERE seq > prev + 1 ORDER BY device_id, seq";

/// What each backend reads from its tables; [`Raw::into_stats`] makes the report
/// from it, so SQLite and PostgreSQL report by the same rules.
#[derive(Debug, Default)]
pub(crate) struct Raw {
    /// Per device, in any order.
    pub devices: Vec<DeviceRow>,
    /// `(device_id, from, to)` rows of [`GAPS_SQL`], in any order.
    pub gaps: Vec<(String, i64, i64)>,
    /// receive - publish in seconds, for every row with a publish time.
    pub latencies: Vec<f64>,
    /// The duplicates counter.
    pub duplicates: u64,
    /// Rejections per reason, in any order.
    pub reasons: Vec<ReasonCount>,
}

impl Raw {
    /// The report: devices sorted by id (byte order, whatever the database's
    /// collation), gaps by `seq`, reasons by count then text.
    pub fn into_stats(mut self) -> Stats {
        self.devices
            .sort_by(|a, b| a.device_id.as_bytes().cmp(b.device_id.as_bytes()));
        let mut devices: Vec<DeviceStats> = self
            .devices
            .into_iter()
            .map(|d| DeviceStats {
                device_id: d.device_id,
                count: d.count,
                first_seen: d.first_seen,
                last_seen: d.last_seen,
                seq_min: d.seq_min,
                seq_max: d.seq_max,
                gaps: Vec::new(),
                missing: 0,
            })
            .collect();
        self.gaps
            .sort_by(|a, b| (a.0.as_bytes(), a.1).cmp(&(b.0.as_bytes(), b.1)));
        for (id, from, to) in self.gaps {
            if let Ok(i) = devices.binary_search_by(|d| d.device_id.as_bytes().cmp(id.as_bytes())) {
                devices[i].gaps.push([from, to]);
                devices[i].missing += (to - from + 1) as u64;
            }
        }
        self.reasons.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.reason.as_bytes().cmp(b.reason.as_bytes()))
        });
        Stats {
            total: devices.iter().map(|d| d.count).sum(),
            devices,
            latency: percentiles(&mut self.latencies),
            duplicates: self.duplicates,
            rejected: self.reasons.iter().map(|r| r.count).sum(),
            rejected_by_reason: self.reasons,
        }
    }
}

/// Reads the report from a collector database (SQLite; PostgreSQL's is
/// `store::postgres::stats::read`).
pub fn read(conn: &Connection) -> rusqlite::Result<Stats> {
    let devices: Vec<DeviceRow> = conn
        .prepare(
            "SELECT device_id, count(*), min(receive_ts), max(receive_ts), min(seq), max(seq)
             FROM telemetry GROUP BY device_id",
        )?
        .query_map([], |r| {
            Ok(DeviceRow {
                device_id: r.get(0)?,
                count: r.get::<_, i64>(1)? as u64,
                first_seen: r.get(2)?,
                last_seen: r.get(3)?,
                seq_min: r.get(4)?,
                seq_max: r.get(5)?,
            })
        })?
        .collect::<Result<_, _>>()?;

    let gaps: Vec<(String, i64, i64)> = conn
        .prepare(GAPS_SQL)?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;

    let latencies: Vec<f64> = conn
        .prepare("SELECT receive_ts - publish_ts FROM telemetry WHERE publish_ts IS NOT NULL")?
        .query_map([], |r| r.get::<_, f64>(0))?
        .collect::<Result<_, _>>()?;

    let duplicates = conn
        .query_row(
            "SELECT value FROM counters WHERE name = 'duplicates'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(0),
            rusqlite::Error::SqliteFailure(..) if e.to_string().contains("no such table") => Ok(0),
            e => Err(e),
        })? as u64;

    let reasons: Vec<ReasonCount> = conn
        .prepare("SELECT coalesce(reason, ''), count(*) FROM rejected GROUP BY reason")?
        .query_map([], |r| {
            Ok(ReasonCount {
                reason: r.get(0)?,
                count: r.get::<_, i64>(1)? as u64,
            })
        })?
        .collect::<Result<_, _>>()?;

    Ok(Raw {
        devices,
        gaps,
        latencies,
        duplicates,
        reasons,
    }
    .into_stats())
}

/// p50/p95/p99/max of latencies in seconds (sorted in place), in milliseconds.
pub fn percentiles(secs: &mut [f64]) -> Option<Latency> {
    if secs.is_empty() {
        return None;
    }
    secs.sort_by(f64::total_cmp);
    let at = |p: f64| {
        let rank = ((p / 100.0) * secs.len() as f64).ceil() as usize;
        secs[rank.clamp(1, secs.len()) - 1] * 1000.0
    };
    Some(Latency {
        count: secs.len() as u64,
        p50_ms: at(50.0),
        p95_ms: at(95.0),
        p99_ms: at(99.0),
        max_ms: secs[secs.len() - 1] * 1000.0,
    })
}

/// The report as a readable table.
pub fn render(stats: &Stats) -> String {
    let mut out = String::new();
    let id_width = stats
        .devices
        .iter()
        .map(|d| d.device_id.len())
        .max()
        .unwrap_or(0)
        .max("device".len());
    let _ = writeln!(
        out,
        "{:<id_width$}  {:>8}  {:<23}  {:<23}  {:>10}  gaps",
        "device", "count", "first seen (UTC)", "last seen (UTC)", "seq"
    );
    for d in &stats.devices {
        let seq = match (d.seq_min, d.seq_max) {
            (Some(a), Some(b)) => format!("{a}..{b}"),
            _ => "-".into(),
        };
        let gaps = if d.seq_max.is_none() {
            "-".to_string()
        } else if d.gaps.is_empty() {
            "none".to_string()
        } else {
            let shown: Vec<String> = d
                .gaps
                .iter()
                .take(10)
                .map(|[a, b]| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}-{b}")
                    }
                })
                .collect();
            let more = if d.gaps.len() > 10 {
                format!(" (+{} more ranges)", d.gaps.len() - 10)
            } else {
                String::new()
            };
            format!("{} missing: {}{more}", d.missing, shown.join(", "))
        };
        let _ = writeln!(
            out,
            "{:<id_width$}  {:>8}  {:<23}  {:<23}  {:>10}  {gaps}",
            d.device_id,
            d.count,
            utc(d.first_seen),
            utc(d.last_seen),
            seq
        );
    }
    let _ = writeln!(
        out,
        "\n{} messages from {} devices",
        stats.total,
        stats.devices.len()
    );
    match &stats.latency {
        Some(l) => {
            let _ = writeln!(
                out,
                "latency (receive - publish) over {} messages: p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                l.count, l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms
            );
        }
        None => {
            let _ = writeln!(out, "latency: no message carries a publish time");
        }
    }
    let _ = writeln!(out, "duplicates: {}", stats.duplicates);
    let _ = writeln!(out, "rejected: {}", stats.rejected);
    for r in &stats.rejected_by_reason {
        let _ = writeln!(out, "  {:>8}  {}", r.count, r.reason);
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS.mmm` in UTC, without a date library.
fn utc(ts: f64) -> String {
    if !ts.is_finite() || ts < 0.0 {
        return format!("{ts}");
    }
    let ms_total = (ts * 1000.0).round() as i64;
    let (days, ms_of_day) = (
        ms_total.div_euclid(86_400_000),
        ms_total.rem_euclid(86_400_000),
    );
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let s = ms_of_day / 1000;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        ms_of_day % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Record, RejectedRow, SqliteStore, Store, SyncMode, TelemetryRow};

    fn row(device: &str, seq: Option<i64>, publish: f64, receive: f64) -> Record {
        Record::Telemetry(TelemetryRow {
            device_id: device.into(),
            seq,
            topic: format!("device/data/{device}"),
            publish_ts: Some(publish),
            receive_ts: receive,
            payload: "{}".into(),
        })
    }

    #[test]
    fn gaps_latency_duplicates_and_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let mut store = SqliteStore::open(&path, SyncMode::Normal).unwrap();
        let mut batch = Vec::new();
        for seq in [1, 2, 3, 5, 9, 10, 3] {
            batch.push(row("a", Some(seq), 100.0, 100.0 + seq as f64 / 1000.0));
        }
        for seq in [3, 4] {
            batch.push(row("b", Some(seq), 200.0, 200.002));
        }
        batch.push(row("c", None, 300.0, 300.001));
        for (i, reason) in [
            "not a JSON object",
            "not a JSON object",
            "payload exceeds 262144 bytes",
        ]
        .into_iter()
        .enumerate()
        {
            batch.push(Record::Rejected(RejectedRow {
                topic: "device/data/x".into(),
                receive_ts: 1.0,
                reason: reason.into(),
                payload: vec![i as u8],
            }));
        }
        store.write_batch(&batch).unwrap();
        drop(store);

        let conn = crate::store::open_read_only(&path).unwrap();
        let s = read(&conn).unwrap();
        assert_eq!(s.total, 9);
        let a = &s.devices[0];
        assert_eq!((a.device_id.as_str(), a.count), ("a", 6));
        assert_eq!(a.gaps, vec![[4, 4], [6, 8]]);
        assert_eq!(a.missing, 4);
        assert_eq!((a.first_seen, a.last_seen), (100.001, 100.01));
        assert_eq!(s.devices[1].gaps, vec![[1, 2]]);
        assert_eq!(s.devices[2].seq_max, None);
        assert!(s.devices[2].gaps.is_empty());
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.rejected, 3);
        assert_eq!(s.rejected_by_reason[0].reason, "not a JSON object");
        assert_eq!(s.rejected_by_reason[0].count, 2);
        let l = s.latency.as_ref().unwrap();
        assert_eq!(l.count, 9);
        assert!((l.max_ms - 10.0).abs() < 1e-6, "{l:?}");

        let text = render(&s);
        assert!(text.contains("4 missing: 4, 6-8"), "{text}");
        assert!(text.contains("duplicates: 1"), "{text}");
        assert!(text.contains("1970-01-01 00:01:40.001"), "{text}");
        let json: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json["devices"][0]["gaps"],
            serde_json::json!([[4, 4], [6, 8]])
        );
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(|i| i as f64 / 1000.0).collect();
        v.reverse();
        let l = percentiles(&mut v).unwrap();
        assert!((l.p50_ms - 50.0).abs() < 1e-9);
        assert!((l.p95_ms - 95.0).abs() < 1e-9);
        assert!((l.p99_ms - 99.0).abs() < 1e-9);
        assert!((l.max_ms - 100.0).abs() < 1e-9);
        assert!(percentiles(&mut []).is_none());
    }

    #[test]
    fn utc_formats_dates() {
        assert_eq!(utc(0.0), "1970-01-01 00:00:00.000");
        assert_eq!(utc(1_700_000_000.5), "2023-11-14 22:13:20.500");
        assert_eq!(utc(951_782_400.0), "2000-02-29 00:00:00.000");
    }
}
