//! Scenario 3, device scale: one device-sim process with 1,000 and 10,000 TLS
//! devices at one message per device per second: time until the broker counts them
//! all connected, resident memory per device, CPU.

use super::{guarded, Ctx};
use crate::broker::Broker;
use crate::consumers::spawn_device_sim;
use crate::loadgen::ConnectedWatcher;
use crate::procstat::{self, Sample};
use crate::report::{Row, Section};
use anyhow::{anyhow, Context, Result};
use std::time::{Duration, Instant};

/// Runs the scenario.
pub fn run(ctx: &Ctx) -> Section {
    let mut s = Section::new(
        "scale",
        "one device-sim, N TLS devices, 1 msg/device/s (no subscriber)",
    );
    // (devices, --connect-rate): device-sim's default rate (500/s) first; then a faster
    // ramp, to see what limits the connect time when device-sim's pacing does not.
    let counts: &[(u32, Option<u32>)] = if ctx.quick {
        &[(1000, None)]
    } else {
        &[(1000, None), (10_000, None), (10_000, Some(2000))]
    };
    s.note("connected = $SYS/broker/clients/connected (published every second, so connect times are +-1 s); memory = VmRSS of device-sim after the steady window / N; cpu% = utime+stime over the steady window, percent of one core; device-sim paces new connections with --connect-rate (default 500/s, so 10,000 take at least 20 s)");
    guarded(&mut s, "scale", |s| {
        let sim = ctx.programs.device_sim.clone().map_err(|e| anyhow!(e))?;
        for &(n, rate) in counts {
            let dir = ctx.subdir(&format!("scale-{n}-{}", rate.unwrap_or(0)));
            let broker = Broker::start(&dir.join("broker"), &ctx.pki, ctx.limits)?;
            s.command(broker.command_line());
            if let Some(nofile) = broker.nofile {
                s.note(format!("broker open-file limit: {nofile}"));
            }
            let label = label(n, rate);
            if let Err(e) = one(ctx, s, &broker, &sim, n, rate, &dir) {
                s.skip(format!("{label}: {e:#}"));
            }
        }
        Ok(())
    });
    s
}

fn one(
    ctx: &Ctx,
    s: &mut Section,
    broker: &Broker,
    sim: &std::path::Path,
    n: u32,
    rate: Option<u32>,
    dir: &std::path::Path,
) -> Result<()> {
    let tls = broker.endpoint(true);
    let mut watcher = ctx
        .rt
        .block_on(ConnectedWatcher::start(&broker.endpoint(false)))?;
    // Wait for the first report, which counts the watcher itself.
    let first = Instant::now();
    while watcher.connected() == 0 && first.elapsed() < Duration::from_secs(5) {
        ctx.rt.block_on(watcher.changed(Duration::from_secs(2)));
    }
    let base = watcher.connected();
    let broker_pid = broker.pid().context("broker not running")?;
    let mut args: Vec<String> = vec![
        "--count".into(),
        n.to_string(),
        "--interval".into(),
        "1s".into(),
        "--queue".into(),
        dir.join("queue.db").display().to_string(),
    ];
    if let Some(r) = rate {
        args.push("--connect-rate".into());
        args.push(r.to_string());
    }
    s.command(format!(
        "{} {} {}",
        tls.env_words(None),
        sim.display(),
        args.join(" ")
    ));
    let start = Instant::now();
    let child = spawn_device_sim(sim, dir, &tls.env(None), &args)?;
    let result = (|| -> Result<()> {
        let limit = Duration::from_secs(if n > 5000 { 120 } else { 60 });
        let mut connected_at = None;
        let mut seen = 0;
        while start.elapsed() < limit {
            ctx.rt
                .block_on(watcher.changed(Duration::from_millis(1500)));
            seen = watcher.connected().saturating_sub(base);
            if seen >= u64::from(n) {
                connected_at = Some(start.elapsed());
                break;
            }
            if let Some(e) = procstat::wait_until(&child, Instant::now())? {
                anyhow::bail!(
                    "device-sim exited with code {} after {seen} connected",
                    e.code
                );
            }
        }
        let window = Duration::from_secs(if ctx.quick { 5 } else { 10 });
        // Align the window on the broker's once-a-second $SYS reports, so its count of
        // received PUBLISH packets spans the same seconds as the CPU samples.
        ctx.rt
            .block_on(watcher.changed(Duration::from_millis(1500)));
        let m0 = watcher.messages_received();
        let sim0 = Sample::take(child.id());
        let b0 = Sample::take(broker_pid);
        std::thread::sleep(window);
        ctx.rt
            .block_on(watcher.changed(Duration::from_millis(1500)));
        let m1 = watcher.messages_received();
        let sim1 = Sample::take(child.id());
        let b1 = Sample::take(broker_pid);
        let published =
            m1.0.saturating_sub(m0.0) as f64 / m1.1.duration_since(m0.1).as_secs_f64().max(1e-3);
        let rss = procstat::rss_kib(child.id()).unwrap_or(0);
        let broker_rss = procstat::rss_kib(broker_pid).unwrap_or(0);
        let still = watcher.connected().saturating_sub(base);
        let pct = |a: Option<Sample>, b: Option<Sample>| match (a, b) {
            (Some(a), Some(b)) => a.cpu_percent_until(&b),
            _ => f64::NAN,
        };
        let per_device = rss as f64 / f64::from(n);
        s.row(
            Row::new(label(n, rate))
                .set("connected", seen)
                .set(
                    "all connected s",
                    connected_at.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN),
                )
                .set("connected after window", still)
                .set("broker received msg/s", published)
                .set("sim RSS MiB", rss as f64 / 1024.0)
                .set("KiB/device", per_device)
                .set("cpu% sim", pct(sim0, sim1))
                .set("cpu% broker", pct(b0, b1))
                .set("broker RSS MiB", broker_rss as f64 / 1024.0),
        );
        match connected_at {
            Some(d) => s.note(format!(
                "{}: connected in {:.0} s (goal for 10,000: < 30 s{}); {per_device:.0} KiB/device (goal <= 100 KiB: {})",
                label(n, rate),
                d.as_secs_f64(),
                if n == 10_000 { if d.as_secs_f64() < 30.0 { ": met" } else { ": MISSED" } } else { "" },
                if per_device <= 100.0 { "met" } else { "MISSED" }
            )),
            None => s.note(format!(
                "{}: only {seen} connected within {} s",
                label(n, rate),
                limit.as_secs()
            )),
        }
        Ok(())
    })();
    let _ = procstat::terminate(&child, Duration::from_secs(20));
    result
}

fn label(n: u32, rate: Option<u32>) -> String {
    match rate {
        Some(r) => format!("{n} TLS devices, --connect-rate {r}"),
        None => format!("{n} TLS devices"),
    }
}
