//! What the operator sees: fleet-wide counters, a status line every few seconds
//! (a live line on a terminal, plain log lines otherwise) and the summary at the end.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Counters shared by every device task; plain atomics, cheap to bump.
#[derive(Debug, Default)]
pub struct Stats {
    /// Devices in the run.
    pub devices: AtomicU64,
    /// Devices connected now.
    pub connected: AtomicI64,
    /// Devices that have finished (`--messages` reached and their queue empty).
    pub finished: AtomicU64,
    /// Messages generated in this run.
    pub generated: AtomicU64,
    /// Publishes written to the network (resends included).
    pub published: AtomicU64,
    /// Messages acknowledged by the broker and removed from the queue.
    pub acked: AtomicU64,
    /// Messages in the queue now (leftovers included).
    pub queued: AtomicI64,
    /// Messages evicted by `--queue-limit`.
    pub evicted: AtomicU64,
    /// Connections re-established after a loss.
    pub reconnects: AtomicU64,
    /// Readings skipped because the queue writer was behind.
    pub skipped: AtomicU64,
    /// Failed connection attempts since the last status line, reported together.
    pub failures: Failures,
    /// From a publish to its acknowledgement.
    pub publish_to_ack: AckLatency,
}

/// The `device_sim_publish_to_ack_seconds` histogram.
#[derive(Debug, Clone)]
pub struct AckLatency(pub Histogram);

impl Default for AckLatency {
    fn default() -> Self {
        // 1 ms .. ~33 s: a local broker answers in a millisecond, one under load or
        // behind a slow link in seconds.
        AckLatency(Histogram::new(exponential_buckets(0.001, 2.0, 16)))
    }
}

/// The fleet's Prometheus metrics (contract section 8): the [`Stats`] counters,
/// read at each scrape, and the publish-to-ack histogram.
pub fn registry(stats: &std::sync::Arc<Stats>) -> Registry {
    let mut r = Registry::default();
    r.register(
        "device_sim_publish_to_ack_seconds",
        "From a publish to the broker's acknowledgement",
        stats.publish_to_ack.0.clone(),
    );
    r.register_collector(Box::new(StatsCollector(stats.clone())));
    r
}

/// Reads [`Stats`] at scrape time: the devices keep bumping plain atomics.
#[derive(Debug)]
struct StatsCollector(std::sync::Arc<Stats>);

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.snapshot();
        let gauges = [
            (
                "device_sim_devices_connected",
                "Devices connected to the broker now",
                s.connected,
            ),
            (
                "device_sim_queue_depth",
                "Messages in the offline queue now (leftovers of earlier runs included)",
                s.queued,
            ),
        ];
        for (name, help, value) in gauges {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        let counters = [
            (
                "device_sim_messages_generated",
                "Messages generated in this run",
                s.generated,
            ),
            (
                "device_sim_messages_acked",
                "Messages acknowledged by the broker and removed from the queue",
                s.acked,
            ),
            (
                "device_sim_messages_evicted",
                "Messages dropped from the queue by --queue-limit",
                s.evicted,
            ),
            (
                "device_sim_reconnects",
                "Connections re-established after a loss",
                s.reconnects,
            ),
        ];
        for (name, help, value) in counters {
            let c = ConstCounter::new(value);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        Ok(())
    }
}

/// Failed connection attempts, grouped by reason: with many devices and no broker,
/// one line per status interval instead of a warning per device per attempt.
#[derive(Debug, Default)]
pub struct Failures(std::sync::Mutex<BTreeMap<String, (u64, BTreeSet<u32>)>>);

impl Failures {
    /// Device `idx` lost its connection, or an attempt failed, for `reason`.
    pub fn record(&self, idx: u32, reason: &str) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(reason.to_string()).or_default();
        entry.0 += 1;
        entry.1.insert(idx);
    }

    /// The line for what was recorded since the last call, if anything was.
    pub fn take_line(&self, elapsed: Duration) -> Option<String> {
        let map = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        if map.is_empty() {
            return None;
        }
        let attempts: u64 = map.values().map(|(n, _)| n).sum();
        let devices: BTreeSet<u32> = map.values().flat_map(|(_, d)| d.iter().copied()).collect();
        let mut reasons: Vec<(String, u64)> = map.into_iter().map(|(r, (n, _))| (r, n)).collect();
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let shown = reasons.len().min(3);
        let mut text = reasons[..shown]
            .iter()
            .map(|(r, n)| format!("{r} ({n}x)"))
            .collect::<Vec<_>>()
            .join("; ");
        if reasons.len() > shown {
            text.push_str(&format!("; and {} other reasons", reasons.len() - shown));
        }
        Some(format!(
            "{attempts} connection attempts of {} devices failed in the last {:.0}s, retrying with backoff: {text}",
            devices.len(),
            elapsed.as_secs_f64()
        ))
    }
}

/// A point-in-time copy of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// See [`Stats::devices`].
    pub devices: u64,
    /// See [`Stats::connected`].
    pub connected: i64,
    /// See [`Stats::finished`].
    pub finished: u64,
    /// See [`Stats::generated`].
    pub generated: u64,
    /// See [`Stats::published`].
    pub published: u64,
    /// See [`Stats::acked`].
    pub acked: u64,
    /// See [`Stats::queued`].
    pub queued: i64,
    /// See [`Stats::evicted`].
    pub evicted: u64,
    /// See [`Stats::reconnects`].
    pub reconnects: u64,
    /// See [`Stats::skipped`].
    pub skipped: u64,
}

impl Stats {
    /// Reads every counter.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            devices: self.devices.load(Relaxed),
            connected: self.connected.load(Relaxed),
            finished: self.finished.load(Relaxed),
            generated: self.generated.load(Relaxed),
            published: self.published.load(Relaxed),
            acked: self.acked.load(Relaxed),
            queued: self.queued.load(Relaxed),
            evicted: self.evicted.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            skipped: self.skipped.load(Relaxed),
        }
    }
}

/// One status line from two snapshots `elapsed` apart.
pub fn status_line(now: &Snapshot, before: &Snapshot, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    format!(
        "connected {}/{}, published {:.0}/s, acked {:.0}/s, queued {}, evicted {}, reconnects {}",
        now.connected,
        now.devices,
        (now.published - before.published) as f64 / secs,
        (now.acked - before.acked) as f64 / secs,
        now.queued,
        now.evicted,
        now.reconnects,
    )
}

/// The summary printed at the end of a run.
pub fn summary(s: &Snapshot, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let skipped = if s.skipped > 0 {
        format!(
            ", readings skipped while the queue was behind {}",
            s.skipped
        )
    } else {
        String::new()
    };
    format!(
        "summary: {} devices, {} finished, generated {}, acknowledged {} ({:.0}/s over {:.1}s), published {} (resends included), evicted {}, still queued {}, reconnects {}{skipped}",
        s.devices,
        s.finished,
        s.generated,
        s.acked,
        s.acked as f64 / secs,
        secs,
        s.published,
        s.evicted,
        s.queued,
        s.reconnects,
    )
}

/// Prints the status every `every` until `done` fires.
pub async fn report(stats: std::sync::Arc<Stats>, every: Duration, done: CancellationToken) {
    let live = std::io::stderr().is_terminal();
    let mut before = stats.snapshot();
    let mut at = Instant::now();
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = done.cancelled() => break,
        }
        let now = stats.snapshot();
        let line = status_line(&now, &before, at.elapsed());
        if let Some(failed) = stats.failures.take_line(at.elapsed()) {
            if live {
                // Clear the live line so the warning starts on a clean one.
                eprint!("\r\x1b[2K");
            }
            tracing::warn!("{failed}");
        }
        if live {
            // \r and "erase line": the line updates in place.
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
        } else {
            tracing::info!("status: {line}");
        }
        before = now;
        at = Instant::now();
    }
    if live {
        eprintln!();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_shows_every_counter_under_its_contract_name() {
        let stats = std::sync::Arc::new(Stats::default());
        stats.connected.store(2, Relaxed);
        stats.generated.store(10, Relaxed);
        stats.acked.store(9, Relaxed);
        stats.evicted.store(1, Relaxed);
        stats.queued.store(3, Relaxed);
        stats.reconnects.store(4, Relaxed);
        stats.publish_to_ack.0.observe(0.004);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry(&stats)).unwrap();
        for line in [
            "device_sim_devices_connected 2",
            "device_sim_messages_generated_total 10",
            "device_sim_messages_acked_total 9",
            "device_sim_messages_evicted_total 1",
            "device_sim_queue_depth 3",
            "device_sim_reconnects_total 4",
            "device_sim_publish_to_ack_seconds_count 1",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn failures_make_one_line_per_interval() {
        let f = Failures::default();
        assert_eq!(f.take_line(Duration::from_secs(5)), None);
        for idx in 0..500 {
            for _ in 0..4 {
                f.record(idx, "connection refused");
            }
        }
        f.record(7, "timed out");
        assert_eq!(
            f.take_line(Duration::from_secs(5)).unwrap(),
            "2001 connection attempts of 500 devices failed in the last 5s, retrying with backoff: \
             connection refused (2000x); timed out (1x)"
        );
        assert_eq!(f.take_line(Duration::from_secs(5)), None, "taken");
    }

    #[test]
    fn rates_are_per_second_over_the_interval() {
        let before = Snapshot {
            published: 100,
            acked: 50,
            ..Default::default()
        };
        let now = Snapshot {
            devices: 10,
            connected: 9,
            published: 300,
            acked: 250,
            queued: 7,
            evicted: 1,
            reconnects: 2,
            ..Default::default()
        };
        assert_eq!(
            status_line(&now, &before, Duration::from_secs(2)),
            "connected 9/10, published 100/s, acked 100/s, queued 7, evicted 1, reconnects 2"
        );
    }
}
