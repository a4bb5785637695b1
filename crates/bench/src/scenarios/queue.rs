//! Scenario 5, the offline queue: device-sim generates with the broker down, so
//! every message lands in its SQLite queue (enqueue rate); then the broker comes up
//! on the port device-sim keeps trying, and the queue is drained (drain rate).

use super::{guarded, queued_rows, Ctx};
use crate::broker::{Broker, Endpoint};
use crate::consumers::spawn_device_sim;
use crate::procstat;
use crate::report::{Row, Section};
use anyhow::{anyhow, bail, Result};
use std::time::{Duration, Instant};

/// Runs the scenario.
pub fn run(ctx: &Ctx) -> Section {
    let mut s = Section::new(
        "queue",
        "device-sim offline queue: enqueue with the broker down, drain when it is up",
    );
    let total: u64 = if ctx.quick { 20_000 } else { 100_000 };
    // 100 devices: few connections, each draining a long queue; 1,000 devices: generation
    // (each device paced by --interval) outruns the queue's writer, and the drain is spread thin.
    let fleets: &[u64] = if ctx.quick { &[100] } else { &[100, 1000] };
    for &devices in fleets {
        guarded(&mut s, &format!("queue, {devices} devices"), |s| {
            one(ctx, s, total, devices)
        });
    }
    s.note("enqueue time runs from process start (generation is bounded by --interval 1ms: at most 1,000 msg/s per device); drain time from the broker's start to an empty queue, including device-sim's reconnect delay (MQTT_RECONNECT_MAX_DELAY=0.5); drain goal >= 20,000 msg/s");
    s
}

fn one(ctx: &Ctx, s: &mut Section, total: u64, devices: u64) -> Result<()> {
    let sim = ctx.programs.device_sim.clone().map_err(|e| anyhow!(e))?;
    let per_device = total / devices;
    let dir = ctx.subdir(&format!("queue-{devices}"));
    let (plain_port, tls_port) = (testkit::free_port(), testkit::free_port());
    let ep = Endpoint {
        port: plain_port,
        tls_ca: None,
    };
    let queue = dir.join("queue.db");
    let args: Vec<String> = vec![
        "--count".into(),
        devices.to_string(),
        "--messages".into(),
        per_device.to_string(),
        "--interval".into(),
        "1ms".into(),
        "--queue".into(),
        queue.display().to_string(),
        "--queue-limit".into(),
        (per_device * 2).to_string(),
        "--connect-rate".into(),
        "5000".into(),
    ];
    s.command(format!(
        "{} {} {}   # broker down",
        ep.env_words(None),
        sim.display(),
        args.join(" ")
    ));
    let start = Instant::now();
    let child = spawn_device_sim(&sim, &dir, &ep.env(None), &args)?;
    let result = (|| -> Result<()> {
        let mut first_row = None;
        let full_at;
        loop {
            let rows = queued_rows(&queue);
            if rows > 0 && first_row.is_none() {
                first_row = Some(Instant::now());
            }
            if rows >= total {
                full_at = Instant::now();
                break;
            }
            if let Some(e) = procstat::wait_until(&child, Instant::now())? {
                bail!("device-sim exited with code {} with {rows} queued", e.code);
            }
            if start.elapsed() > Duration::from_secs(120) {
                bail!("only {rows} of {total} messages queued after 120 s");
            }
            // count(*) over a 100,000-row queue costs CPU the device-sim under test would miss.
            std::thread::sleep(Duration::from_millis(50));
        }
        let enqueue_s = full_at.duration_since(start).as_secs_f64();
        let broker = Broker::start_on(
            &dir.join("broker"),
            &ctx.pki,
            ctx.limits,
            plain_port,
            tls_port,
        )?;
        let up = Instant::now();
        s.command(broker.command_line() + "   # once the queue is full");
        let mut empty_at = None;
        let ended = loop {
            let rows = queued_rows(&queue);
            if rows == 0 && empty_at.is_none() {
                empty_at = Some(Instant::now());
            }
            if let Some(e) = procstat::wait_until(&child, Instant::now())? {
                break e;
            }
            if up.elapsed() > Duration::from_secs(180) {
                bail!("{rows} messages still queued 180 s after the broker came up");
            }
            // count(*) over a 100,000-row queue costs CPU the device-sim under test would miss.
            std::thread::sleep(Duration::from_millis(50));
        };
        let left = queued_rows(&queue);
        if ended.code != 0 || left != 0 {
            bail!(
                "device-sim exited with code {} leaving {left} queued",
                ended.code
            );
        }
        let empty_at = empty_at.unwrap_or(ended.at);
        let drain_s = empty_at.duration_since(up).as_secs_f64();
        s.row(
            Row::new(format!("{total} messages, {devices} devices"))
                .set("enqueue msg/s", total as f64 / enqueue_s)
                .set("enqueue s", enqueue_s)
                .set("drain msg/s", total as f64 / drain_s)
                .set("drain s", drain_s)
                .set("sim cpu s", ended.cpu)
                .set("sim max RSS MiB", ended.max_rss_kib as f64 / 1024.0),
        );
        let rate = total as f64 / drain_s;
        s.note(format!(
            "{devices} devices: drain {rate:.0} msg/s (goal >= 20,000: {})",
            if rate >= 20_000.0 { "met" } else { "MISSED" }
        ));
        Ok(())
    })();
    let _ = procstat::terminate(&child, Duration::from_secs(10));
    result
}
