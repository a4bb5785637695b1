//! Scenario 2, end-to-end latency: device-sim publishes at a fixed total rate into
//! the collector through the broker; latency is the collector's receive_ts minus
//! the payload's publish timestamp, read from its database afterwards. Also the
//! run that scenario 4 repeats over plain and TLS, with CPU and bytes on the wire.

use super::{guarded, Ctx};
use crate::broker::Broker;
use crate::consumers::{open_reader, our_command, spawn_device_sim, stored_rows, wait_for_rows};
use crate::loadgen;
use crate::procstat::{self, Sample};
use crate::report::{percentile, Row, Section};
use crate::wire::Snapshot;
use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A device-sim load: `count` devices, one message each per `interval_ms`.
#[derive(Debug, Clone, Copy)]
pub struct SimLoad {
    /// Devices.
    pub count: u32,
    /// Milliseconds between two messages of one device.
    pub interval_ms: u32,
    /// Seconds device-sim runs.
    pub seconds: u32,
}

impl SimLoad {
    /// Messages per second in all.
    pub fn rate(&self) -> f64 {
        f64::from(self.count) * 1000.0 / f64::from(self.interval_ms)
    }
}

/// What one device-sim-into-collector run measured.
#[derive(Debug, Clone)]
pub struct SimRun {
    /// Rows stored from device-sim.
    pub rows: u64,
    /// Rows per second over the publish span.
    pub achieved: f64,
    /// Latency percentiles in ms after the first second (p50, p95, p99, max).
    pub steady: [f64; 4],
    /// p99 and max over every message, the first second included.
    pub all_p99_max: [f64; 2],
    /// CPU percent of one core: device-sim, collector, broker.
    pub cpu: [f64; 3],
    /// From the collector's status lines: the median and the worst of the
    /// per-interval publish-to-commit p99, ms.
    pub commit_p99: Option<[f64; 2]>,
    /// device-sim peak RSS, KiB.
    pub sim_rss_kib: u64,
    /// Broker-side TCP payload bytes per message over the steady window (both hops), and with IP headers.
    pub wire_per_msg: Option<(f64, f64)>,
    /// The command lines.
    pub commands: Vec<String>,
}

const PROBE: &str = "bench_probe";

/// Runs device-sim with `load` into a fresh collector on `broker` (plain or TLS).
pub fn sim_into_collector(
    ctx: &Ctx,
    broker: &Broker,
    tls: bool,
    load: SimLoad,
    dir: &Path,
) -> Result<SimRun> {
    let collector = ctx.programs.collector.clone().map_err(|e| anyhow!(e))?;
    let sim = ctx.programs.device_sim.clone().map_err(|e| anyhow!(e))?;
    let ep = broker.endpoint(tls);
    let broker_pid = broker.pid().context("broker not running")?;
    let mut commands = Vec::new();

    // The session exists before the collector runs, so nothing published meanwhile is lost.
    let id = "bench-latency-collector";
    ctx.rt
        .block_on(loadgen::prime_session(&ep, id, "device/data/+"))?;
    let db = dir.join("collector.db");
    let env = ep.env(Some(id));
    let mut cmd = our_command(&collector, dir, &env);
    // Its status lines carry publish-to-commit percentiles per interval.
    cmd.env("RUST_LOG", "info")
        .arg("--db")
        .arg(&db)
        .args(["--status-interval", "2s"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("collector.log"))?);
    commands.push(format!(
        "RUST_LOG=info {} {} --db {} --status-interval 2s",
        ep.env_words(Some(id)),
        collector.display(),
        db.display()
    ));
    let coll = cmd.spawn().context("starting the collector")?;
    let result = (|| {
        // One stored probe proves the collector is connected, subscribed and writing.
        ctx.rt.block_on(loadgen::publish_one(&ep, PROBE))?;
        wait_for_rows(&coll, &db, 1, Instant::now() + Duration::from_secs(20))
            .context("the collector did not store a probe message")?;
        let reader = open_reader(&db).context("opening the collector database")?;

        let queue = dir.join("queue.db");
        let args: Vec<String> = vec![
            "--count".into(),
            load.count.to_string(),
            "--interval".into(),
            format!("{}ms", load.interval_ms),
            "--duration".into(),
            format!("{}s", load.seconds),
            "--queue".into(),
            queue.display().to_string(),
        ];
        commands.push(format!(
            "{} {} {}",
            ep.env_words(None),
            sim.display(),
            args.join(" ")
        ));
        let coll_cpu0 = Sample::take(coll.id());
        let broker_cpu0 = Sample::take(broker_pid);
        let start = Instant::now();
        let child = spawn_device_sim(&sim, dir, &ep.env(None), &args)?;
        let steady_from =
            start + Duration::from_secs(1).min(Duration::from_secs(u64::from(load.seconds) / 3));
        let steady_to = start + Duration::from_secs_f64(f64::from(load.seconds) * 0.9);
        let deadline = start + Duration::from_secs(u64::from(load.seconds) + 60);
        let mut w0: Option<(Snapshot, u64)> = None;
        let mut wire = None;
        let ended = loop {
            if let Some(e) = procstat::wait_until(&child, Instant::now())? {
                break e;
            }
            let now = Instant::now();
            if w0.is_none() && now >= steady_from {
                w0 = Some((Snapshot::take(ep.port)?, stored_rows(&reader)));
            }
            if wire.is_none() && now >= steady_to {
                if let Some((s0, r0)) = &w0 {
                    let s1 = Snapshot::take(ep.port)?;
                    let r1 = stored_rows(&reader);
                    if r1 > *r0 {
                        let d = s0.delta_common(&s1);
                        let m = (r1 - r0) as f64;
                        wire = Some((d.payload_bytes() as f64 / m, d.ip_bytes() as f64 / m));
                    }
                }
            }
            if now > deadline {
                let _ = procstat::terminate(&child, Duration::from_secs(5));
                bail!("device-sim did not end within {} s", load.seconds + 60);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if ended.code != 0 {
            bail!(
                "device-sim exited with code {} (see {})",
                ended.code,
                dir.join("device-sim.log").display()
            );
        }
        let sim_wall = ended.at.duration_since(start).as_secs_f64();
        // Let the collector store what is still in flight: until nothing new for a second.
        let mut last = stored_rows(&reader);
        let mut still = Instant::now();
        while still.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_millis(100));
            let now = stored_rows(&reader);
            if now != last {
                last = now;
                still = Instant::now();
            }
        }
        let coll_cpu1 = Sample::take(coll.id());
        let broker_cpu1 = Sample::take(broker_pid);
        let pct = |a: Option<Sample>, b: Option<Sample>| match (a, b) {
            (Some(a), Some(b)) => a.cpu_percent_until(&b),
            _ => f64::NAN,
        };
        let cpu = [
            100.0 * ended.cpu / sim_wall.max(1e-9),
            pct(coll_cpu0, coll_cpu1),
            pct(broker_cpu0, broker_cpu1),
        ];
        let lat = latencies(&reader)?;
        Ok(SimRun {
            rows: lat.rows,
            achieved: lat.achieved,
            steady: lat.steady,
            all_p99_max: lat.all_p99_max,
            commit_p99: None,
            cpu,
            sim_rss_kib: ended.max_rss_kib,
            wire_per_msg: wire,
            commands: commands.clone(),
        })
    })();
    let _ = procstat::terminate(&coll, Duration::from_secs(10));
    let log = std::fs::read_to_string(dir.join("collector.log")).unwrap_or_default();
    result.map(|mut r| {
        r.commit_p99 = commit_p99(&log);
        r
    })
}

/// The per-interval publish-to-commit p99 the collector logs ("... p99 8.1 ms ..."):
/// their median and worst, over intervals that stored something.
fn commit_p99(log: &str) -> Option<[f64; 2]> {
    let mut p99: Vec<f64> = log
        .lines()
        .filter_map(|l| l.split("publish-to-commit").nth(1))
        .filter_map(|rest| rest.split("p99 ").nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    if p99.is_empty() {
        return None;
    }
    p99.sort_by(f64::total_cmp);
    Some([p99[p99.len() / 2], p99[p99.len() - 1]])
}

struct Latencies {
    rows: u64,
    achieved: f64,
    steady: [f64; 4],
    all_p99_max: [f64; 2],
}

fn latencies(conn: &rusqlite::Connection) -> Result<Latencies> {
    let mut stmt = conn.prepare(
        "SELECT publish_ts, receive_ts FROM telemetry WHERE device_id <> ?1 AND publish_ts IS NOT NULL",
    )?;
    let pairs: Vec<(f64, f64)> = stmt
        .query_map([PROBE], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    if pairs.is_empty() {
        bail!("the collector stored no message from device-sim");
    }
    let first = pairs.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let last = pairs.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let mut all: Vec<f64> = pairs.iter().map(|(p, r)| (r - p) * 1000.0).collect();
    all.sort_by(f64::total_cmp);
    let mut steady: Vec<f64> = pairs
        .iter()
        .filter(|(p, _)| *p >= first + 1.0)
        .map(|(p, r)| (r - p) * 1000.0)
        .collect();
    steady.sort_by(f64::total_cmp);
    if steady.is_empty() {
        steady = all.clone();
    }
    Ok(Latencies {
        rows: pairs.len() as u64,
        achieved: pairs.len() as f64 / (last - first).max(1e-3),
        steady: [
            percentile(&steady, 50.0),
            percentile(&steady, 95.0),
            percentile(&steady, 99.0),
            *steady.last().unwrap_or(&f64::NAN),
        ],
        all_p99_max: [percentile(&all, 99.0), *all.last().unwrap_or(&f64::NAN)],
    })
}

/// The loads of the scenario: 100, 1,000 and 10,000 messages/s in all.
pub fn loads(quick: bool) -> Vec<SimLoad> {
    let seconds = if quick { 6 } else { 20 };
    vec![
        SimLoad {
            count: 10,
            interval_ms: 100,
            seconds,
        },
        SimLoad {
            count: 100,
            interval_ms: 100,
            seconds,
        },
        SimLoad {
            count: 100,
            interval_ms: 10,
            seconds,
        },
    ]
}

/// A table row for one run.
pub fn row(label: String, load: &SimLoad, r: &SimRun) -> Row {
    Row::new(label)
        .set("target msg/s", load.rate())
        .set("got msg/s", r.achieved)
        .set("rows", r.rows)
        .set("p50 ms", r.steady[0])
        .set("p95 ms", r.steady[1])
        .set("p99 ms", r.steady[2])
        .set("max ms", r.steady[3])
        .set("p99 all ms", r.all_p99_max[0])
        .set_opt("commit p99 med ms", r.commit_p99.map(|c| c[0]))
        .set_opt("commit p99 worst ms", r.commit_p99.map(|c| c[1]))
        .set("cpu% sim", r.cpu[0])
        .set("cpu% coll", r.cpu[1])
        .set("cpu% broker", r.cpu[2])
        .set("sim max RSS MiB", r.sim_rss_kib as f64 / 1024.0)
        .set_opt("wire B/msg", r.wire_per_msg.map(|w| w.0))
        .set_opt("wire+IP B/msg", r.wire_per_msg.map(|w| w.1))
}

/// Runs the scenario.
pub fn run(ctx: &Ctx) -> Section {
    let mut s = Section::new(
        "latency",
        "device-sim -> broker -> collector, publish timestamp to collector receive_ts",
    );
    s.note("p50..max: receive_ts - publish_ts from the collector's database, over messages published after the first second (connect ramp excluded); 'p99 all' includes it; 'commit p99': publish-to-commit p99 of each 2 s status interval the collector logs, median and worst interval; cpu% is percent of one core");
    guarded(&mut s, "latency", |s| {
        let dir = ctx.subdir("latency");
        let broker = Broker::start(&dir.join("broker"), &ctx.pki, ctx.limits)?;
        s.command(broker.command_line());
        for load in loads(ctx.quick) {
            let label = format!("{:.0} msg/s plain", load.rate());
            let d = ctx.subdir(&format!("latency/{:.0}", load.rate()));
            match sim_into_collector(ctx, &broker, false, load, &d) {
                Ok(r) => {
                    for c in &r.commands {
                        s.command(c.clone());
                    }
                    if load.rate() == 1000.0 {
                        // The goal is publish-to-commit; the collector logs that per interval.
                        let judged = r.commit_p99.map(|c| c[1]).unwrap_or(r.steady[2]);
                        s.note(format!(
                            "p99 at 1,000 msg/s: {:.1} ms to receive_ts, {} to commit (goal < 20 ms: {})",
                            r.steady[2],
                            r.commit_p99
                                .map(|c| format!("{:.1} ms (median 2 s interval), {:.1} ms (worst)", c[0], c[1]))
                                .unwrap_or_else(|| "not logged".into()),
                            if judged < 20.0 { "met" } else { "MISSED" }
                        ));
                    }
                    s.row(row(label, &load, &r));
                }
                Err(e) => s.skip(format!("{label}: {e:#}")),
            }
        }
        Ok(())
    });
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_commit_percentiles_from_status_lines() {
        let log = "2026-11-26T12:00:00Z INFO collector::ingest: stored 10 (5.0 msg/s), 2 batches (avg 5.0, max 6), 0 duplicates, 0 rejected, publish-to-commit p50 1.2 ms, p99 8.5 ms, max 9.0 ms\n\
                   other line\n\
                   INFO stored 0 (0.0 msg/s), 0 batches, no latency sample\n\
                   INFO stored 9, publish-to-commit p50 1.0 ms, p99 3.0 ms, max 4.0 ms\n\
                   INFO stored 9, publish-to-commit p50 1.0 ms, p99 5.0 ms, max 6.0 ms\n";
        assert_eq!(commit_p99(log), Some([5.0, 8.5]));
        assert_eq!(commit_p99("nothing"), None);
    }
}
