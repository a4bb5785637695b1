//! Scenario 6, the stores (issue 11): the throughput scenario's drain (plain TCP) into
//! the collector with SQLite, with PostgreSQL only and with InfluxDB only, next to
//! mosquitto_sub on the same load in the same rounds. The database servers are real
//! ones started by testkit on this machine; every run's store is counted afterwards.

use super::drain::{self, Entrant, SinkMaker, LOAD_CONNECTIONS, LOAD_WINDOW};
use super::{guarded, Ctx};
use crate::broker::Broker;
use crate::consumers::{Consumer, Sink};
use crate::report::Section;
use anyhow::{anyhow, Context, Result};
use serde_json::Value;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::time::Duration;
use testkit::influx::InfluxDb;
use testkit::postgres::{Postgres, PostgresConfig};

/// PostgreSQL's own defaults where testkit's test servers trade safety for speed:
/// the benchmark measures what a deployment gets.
pub(crate) const PG_SETTINGS: [&str; 3] = [
    "fsync = on",
    "full_page_writes = on",
    "shared_buffers = 128MB",
];

/// The collector's default InfluxDB measurement.
const MEASUREMENT: &str = "device_data";

/// The ratio to SQLite the issue asks of each server store.
const GOAL: f64 = 0.7;

/// Runs the scenario.
pub fn run(ctx: &Ctx) -> Section {
    let mut s = Section::new(
        "stores",
        "drain of N queued QoS 1 messages into the collector with SQLite, PostgreSQL, InfluxDB",
    );
    guarded(&mut s, "stores", |s| run_all(ctx, s));
    s
}

fn run_all(ctx: &Ctx, s: &mut Section) -> Result<()> {
    let n = ctx.messages;
    let rounds = if ctx.quick { 1 } else { 3 };
    let dir = ctx.subdir("stores");
    let broker = Broker::start(&dir.join("broker"), &ctx.pki, ctx.limits)?;
    s.command(broker.command_line());
    let ep = broker.endpoint(false);

    // Declared before the entrants, whose stores borrow them.
    let pg = start_postgres(s);
    let influx = start_influx(s);

    let mut entrants = vec![
        Entrant::new("mosquitto_sub", Consumer::MosquittoSub),
        Entrant::new("collector, SQLite", Consumer::Collector),
        // Issue 13's question: what serving /metrics costs the drain.
        Entrant::new("collector, SQLite, metrics on", Consumer::Collector)
            .with_sink("metrics", metrics_on_sink(&dir)),
    ];
    if let Some(pg) = &pg {
        entrants.push(
            Entrant::new("collector, PostgreSQL", Consumer::Collector)
                .with_sink("postgres", postgres_sink(ctx, pg, n, "postgres", false))
                .watch(SERVER, pg.pid()),
        );
        entrants.push(
            Entrant::new(
                "collector, PostgreSQL, synchronous_commit off",
                Consumer::Collector,
            )
            .with_sink("postgres-async", postgres_sink(ctx, pg, n, "async", true))
            .watch(SERVER, pg.pid()),
        );
    }
    if let Some(influx) = &influx {
        entrants.push(
            Entrant::new("collector, InfluxDB", Consumer::Collector)
                .with_sink("influx", influx_sink(influx, n))
                .watch(SERVER, influx.pid()),
        );
    }
    // Where the CPU goes: with every core busy, it is what bounds each rate.
    let mut entrants: Vec<Entrant> = entrants
        .into_iter()
        .map(|e| e.watch("broker", broker.pid()))
        .collect();
    s.note(format!(
        "N = {n} messages per drain over plain TCP; load generator: {LOAD_CONNECTIONS} connections, window {LOAD_WINDOW} each, QoS 1, contract payloads (as in throughput); {rounds} round(s), consumers interleaved within a round; msg/s = best round, median msg/s = median round, ratios = median of the per-round ratios; elapsed = process start to the Nth message stored (connect and schema creation included)"
    ));
    s.note(format!(
        "the database servers run on this same {}-core machine as the broker, the collector and the load generator (loopback): their CPU is taken from the same cores",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    ));
    s.note(format!(
        "SQLite: the collector's default (--sync normal, WAL: no fsync per commit); PostgreSQL: {} (fsync per commit unless synchronous_commit off), a new database per run; InfluxDB 1.x: its defaults (WAL fsync per write), v1 /write, a new database per run",
        PG_SETTINGS.join(", ")
    ));

    let publishes = drain::run_rounds(ctx, s, &ep, &drain::load(n), &dir, &mut entrants, rounds);

    let rates = |label: &str| {
        entrants
            .iter()
            .find(|e| e.label == label)
            .map(|e| e.rates.clone())
    };
    let (sqlite, sub) = (rates("collector, SQLite"), rates("mosquitto_sub"));
    let mut notes = Vec::new();
    for e in &entrants {
        let Some(mut row) = e.row() else { continue };
        for (name, peer) in [("SQLite", &sqlite), ("mosquitto_sub", &sub)] {
            if e.consumer == Consumer::MosquittoSub || e.label.ends_with(name) {
                continue;
            }
            let Some((ratio, each)) = peer.as_ref().and_then(|p| drain::ratios(&e.rates, p)) else {
                continue;
            };
            row = row.set(&format!("/ {name}"), ratio);
            let goal = match (name, e.label.as_str()) {
                ("SQLite", "collector, PostgreSQL" | "collector, InfluxDB") => format!(
                    " (goal >= {GOAL:.2}: {})",
                    if ratio >= GOAL { "met" } else { "MISSED" }
                ),
                ("SQLite", "collector, SQLite, metrics on") => format!(
                    " (goal >= {METRICS_GOAL:.2}: {})",
                    if ratio >= METRICS_GOAL {
                        "met"
                    } else {
                        "MISSED"
                    }
                ),
                _ => String::new(),
            };
            notes.push(format!(
                "{} / {name} = {ratio:.2} (per round: {each}){goal}",
                e.label
            ));
        }
        s.row(row);
    }
    if let Some(row) = drain::load_row("load generator", &publishes) {
        s.row(row);
    }
    for note in notes {
        s.note(note);
    }
    if let Some(note) = cpu_note(s) {
        s.note(note);
    }
    let incomplete: Vec<String> = entrants
        .iter()
        .filter(|e| e.consumer != Consumer::MosquittoSub)
        .filter(|e| e.stored.iter().any(|k| *k != Some(n)))
        .map(|e| e.label.clone())
        .collect();
    if incomplete.is_empty() {
        s.note(format!(
            "every collector run stored all {n} messages (SQLite count(*), PostgreSQL count(*), InfluxDB count(seq), after the collector stopped)"
        ));
    } else {
        s.note(format!(
            "FAILED: not every run stored all {n} messages: {} (see \"stored\" and the skipped lines)",
            incomplete.join("; ")
        ));
    }
    Ok(())
}

/// The column of the database server's CPU.
const SERVER: &str = "server";

/// CPU per message of the whole drain (collector, broker, database server) per
/// store, and the rate ratio to SQLite that it allows when the cores are the limit.
fn cpu_note(s: &Section) -> Option<String> {
    let total = |label: &str| -> Option<f64> {
        let row = s.find(label)?;
        Some(
            row.num("cpu us/msg")?
                + row.num("broker cpu us/msg")?
                + row.num(&format!("{SERVER} cpu us/msg")).unwrap_or(0.0),
        )
    };
    let sqlite = total("collector, SQLite")?;
    let parts: Vec<String> = ["collector, PostgreSQL", "collector, InfluxDB"]
        .iter()
        .filter_map(|label| {
            let t = total(label)?;
            Some(format!(
                "{} {t:.1} us (at most {:.2} of SQLite's rate while the cores are the limit)",
                label.trim_start_matches("collector, "),
                sqlite / t
            ))
        })
        .collect();
    Some(format!(
        "CPU per message of collector + broker + database server, all on these cores: SQLite {sqlite:.1} us; {}",
        parts.join("; ")
    ))
}

/// Issue 13: the drain with the metrics endpoint on, as a share of the drain without.
const METRICS_GOAL: f64 = 0.97;

/// SQLite as in the plain entrant, with `--metrics-addr` on a free loopback port: the
/// counters and histograms are updated whether or not anyone scrapes.
fn metrics_on_sink<'a>(dir: &std::path::Path) -> SinkMaker<'a> {
    let dir = dir.join("collector-metrics-on");
    Box::new(move |round| {
        std::fs::create_dir_all(&dir)?;
        let mut sink = crate::consumers::Sink::sqlite(&dir.join(format!("round-{}.db", round + 1)));
        sink.args.extend([
            "--metrics-addr".to_string(),
            format!("127.0.0.1:{}", testkit::free_port()),
        ]);
        Ok(sink)
    })
}

pub(crate) fn start_postgres(s: &mut Section) -> Option<Postgres> {
    let cfg = PG_SETTINGS
        .iter()
        .fold(PostgresConfig::new(), |c, line| c.setting(line));
    match Postgres::try_start(cfg) {
        Ok(pg) => {
            let version = pg.try_psql("SHOW server_version").unwrap_or_default();
            s.command(format!(
                "postgres -D {}/data   # PostgreSQL {version}, port {}, by testkit (initdb as the postgres user)",
                pg.dir().display(),
                pg.port
            ));
            Some(pg)
        }
        Err(e) => {
            s.skip(format!("PostgreSQL: {e}"));
            None
        }
    }
}

fn start_influx(s: &mut Section) -> Option<InfluxDb> {
    match unpanic(|| InfluxDb::start(None)) {
        Ok(db) => {
            s.command(format!(
                "influxd run -config …/influxdb.conf   # InfluxDB 1.x at {}, by testkit",
                db.url()
            ));
            Some(db)
        }
        Err(e) => {
            s.skip(format!("InfluxDB: {e:#}"));
            None
        }
    }
}

/// testkit's launchers panic with the server's own words; here that is a skipped part.
fn unpanic<T>(f: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let text = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".into());
        anyhow!(text)
    })
}

/// The database of round `round` (0-based) of the PostgreSQL sink named `name`.
pub(crate) fn round_db(name: &str, round: usize) -> String {
    format!("bench_{name}_{}", round + 1)
}

/// A new database per round; `--postgres URL`; the drain polled by the largest
/// `id` (one index probe; never below the row count), counted once it reaches `n`.
pub(crate) fn postgres_sink<'a>(
    ctx: &'a Ctx,
    pg: &'a Postgres,
    n: u64,
    name: &'a str,
    async_commit: bool,
) -> SinkMaker<'a> {
    Box::new(move |round| {
        let db = round_db(name, round);
        pg.try_psql(&format!("CREATE DATABASE {db}"))?;
        if async_commit {
            pg.try_psql(&format!("ALTER DATABASE {db} SET synchronous_commit = off"))?;
        }
        let url = pg.url_with("postgres", &pg.password, &db, "");
        let client = Rc::new(ctx.rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .with_context(|| format!("connecting to {db}"))?;
            tokio::spawn(conn);
            anyhow::Ok(client)
        })?);
        let count = {
            let client = client.clone();
            move || -> Result<u64> {
                let row = ctx
                    .rt
                    .block_on(client.query_one("SELECT count(*) FROM telemetry", &[]))?;
                Ok(row.get::<_, i64>(0).max(0) as u64)
            }
        };
        let top = move || {
            // An error is the table not created yet.
            ctx.rt
                .block_on(client.query_one("SELECT coalesce(max(id), 0) FROM telemetry", &[]))
                .map(|r| r.get::<_, i64>(0).max(0) as u64)
                .unwrap_or(0)
        };
        Ok(Sink {
            args: vec!["--postgres".into(), url],
            progress: bounded(n, top, count.clone()),
            count: Box::new(count),
            poll: Duration::from_millis(5),
        })
    })
}

/// A new database per round; `--influx URL --influx-db DB`; the drain polled by the
/// sum over devices of the last `seq` (never below the point count, as each device
/// counts from 1), counted with count(seq) once it reaches `n`.
fn influx_sink<'a>(influx: &'a InfluxDb, n: u64) -> SinkMaker<'a> {
    Box::new(move |round| {
        let db = format!("bench_{}", round + 1);
        unpanic(|| influx.create_db(&db))?;
        let count = {
            let db = db.clone();
            move || -> Result<u64> {
                let v = unpanic(|| {
                    influx.query(&db, &format!("SELECT count(seq) FROM {MEASUREMENT}"))
                })?;
                Ok(series_sum(&v))
            }
        };
        let last = format!("SELECT last(seq) FROM {MEASUREMENT} GROUP BY device_id");
        let top = {
            let db = db.clone();
            move || {
                unpanic(|| influx.query(&db, &last))
                    .map(|v| series_sum(&v))
                    .unwrap_or(0)
            }
        };
        let progress = bounded(n, top, count.clone());
        Ok(Sink {
            args: vec![
                "--influx".into(),
                influx.url(),
                "--influx-db".into(),
                db.clone(),
            ],
            progress,
            count: Box::new(count),
            poll: Duration::from_millis(10),
        })
    })
}

/// A sink's progress: `top`, a cheap figure never below the stored count, while it
/// is under `n`; from there the `exact` count.
fn bounded<'a>(
    n: u64,
    mut top: impl FnMut() -> u64 + 'a,
    mut exact: impl FnMut() -> Result<u64> + 'a,
) -> Box<dyn FnMut() -> u64 + 'a> {
    Box::new(move || match top() {
        t if t < n => t,
        _ => exact().unwrap_or(0),
    })
}

/// The sum of the first value column over every series of an InfluxQL answer.
fn series_sum(v: &Value) -> u64 {
    v["results"][0]["series"]
        .as_array()
        .map(|series| {
            series
                .iter()
                .filter_map(|s| s["values"][0][1].as_u64())
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_summed() {
        let v: Value = serde_json::from_str(
            r#"{"results":[{"statement_id":0,"series":[
                {"name":"device_data","tags":{"device_id":"a"},"columns":["time","last"],"values":[[1,25000]]},
                {"name":"device_data","tags":{"device_id":"b"},"columns":["time","last"],"values":[[2,24999]]}]}]}"#,
        )
        .unwrap();
        assert_eq!(series_sum(&v), 49999);
        assert_eq!(
            series_sum(&serde_json::json!({"results":[{"statement_id":0}]})),
            0
        );
    }
}
