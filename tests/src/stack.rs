//! A whole installation for fault tests: a persistent broker, a collector on an
//! SQLite file and a simulator queue, with helpers to compare what was generated
//! with what was stored.

use crate::{command, spawn, wait_until, Broker, BrokerConfig, ChildGuard};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;
use tempfile::TempDir;

/// A broker with persistence, a collector on an SQLite file, and a simulator queue.
pub struct Stack {
    /// Working directory of the binaries.
    pub dir: TempDir,
    /// The broker.
    pub broker: Broker,
    /// The running collector.
    pub collector: Option<ChildGuard>,
    /// The collector's database.
    pub db: PathBuf,
    /// The simulator's queue.
    pub queue: PathBuf,
    /// Variables for both binaries.
    pub env: Vec<(String, String)>,
}

impl Stack {
    pub fn new(cfg: BrokerConfig) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::start(cfg.persistence(true).conf("autosave_interval 1"));
        let mut env = broker.env_plain();
        env.push(("MQTT_KEEPALIVE".into(), "2".into()));
        Stack {
            db: dir.path().join("collector.db"),
            queue: dir.path().join("queue.db"),
            dir,
            broker,
            collector: None,
            env,
        }
    }

    pub fn subscriptions(&self) -> usize {
        self.broker
            .log()
            .matches("Received SUBSCRIBE from mqtt-collector")
            .count()
    }

    /// Starts the collector and returns once its subscription reached the broker.
    pub fn start_collector(&mut self) {
        self.start_collector_with(|_| {});
    }

    pub fn start_collector_with(&mut self, adjust: impl FnOnce(&mut Command)) {
        let before = self.subscriptions();
        let mut cmd = command("collector", self.dir.path(), &self.env);
        cmd.arg("--db")
            .arg(&self.db)
            .args(["--status-interval", "1s"]);
        adjust(&mut cmd);
        let mut child = spawn(&mut cmd);
        let ok = wait_until(Duration::from_secs(15), || {
            self.subscriptions() > before || !child.is_running()
        });
        assert!(
            child.is_running() && ok,
            "collector did not subscribe: {:?}",
            child
                .wait_output(Duration::from_secs(1))
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        );
        self.collector = Some(child);
    }

    pub fn kill_collector(&mut self) {
        if let Some(mut c) = self.collector.take() {
            c.kill();
        }
    }

    pub fn stop_collector(&mut self) -> Output {
        let mut c = self.collector.take().expect("collector running");
        c.signal(libc::SIGTERM);
        c.wait_output(Duration::from_secs(20)).unwrap()
    }

    pub fn sim(&self, args: &[&str]) -> ChildGuard {
        let mut cmd = command("device-sim", self.dir.path(), &self.env);
        cmd.arg("--queue").arg(&self.queue).args(args);
        spawn(&mut cmd)
    }

    /// (device_id, seq) of every stored row, and the number of rows.
    pub fn stored(&self) -> (BTreeMap<String, BTreeSet<u64>>, usize) {
        let Ok(conn) = rusqlite::Connection::open_with_flags(
            &self.db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        ) else {
            return (BTreeMap::new(), 0);
        };
        let mut out: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        let mut rows = 0;
        let Ok(mut stmt) = conn.prepare("SELECT device_id, seq FROM telemetry") else {
            return (out, 0);
        };
        let iter = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?))
            })
            .unwrap();
        for row in iter.flatten() {
            rows += 1;
            if let (id, Some(seq)) = row {
                out.entry(id).or_default().insert(seq as u64);
            }
        }
        (out, rows)
    }

    /// The highest seq the simulator has given each device (from its queue file).
    pub fn last_seqs(&self) -> BTreeMap<String, u64> {
        let Ok(conn) = rusqlite::Connection::open_with_flags(
            &self.queue,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        ) else {
            return BTreeMap::new();
        };
        let Ok(mut stmt) = conn.prepare("SELECT device_id, last_seq FROM device_seq") else {
            return BTreeMap::new();
        };
        stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })
        .map(|rows| rows.flatten().collect())
        .unwrap_or_default()
    }

    /// After a fault is lifted: how long until the collector stores again (rows beyond `rows_before`).
    pub fn recovered_after(&self, rows_before: usize) -> Duration {
        let start = std::time::Instant::now();
        assert!(
            wait_until(Duration::from_secs(60), || self.stored().1 > rows_before),
            "nothing was stored within 60 s of the fault being lifted"
        );
        start.elapsed()
    }

    /// One line of figures for the closing note (`cargo test -- --nocapture | grep FAULT`).
    pub fn report(&self, fault: &str, recoveries: &[Duration]) {
        let generated: u64 = self.last_seqs().values().sum();
        let (_, rows) = self.stored();
        let dups: i64 = rusqlite::Connection::open_with_flags(
            &self.db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .and_then(|c| {
            c.query_row(
                "SELECT value FROM counters WHERE name = 'duplicates'",
                [],
                |r| r.get(0),
            )
        })
        .unwrap_or(-1);
        let worst = recoveries.iter().max().copied().unwrap_or_default();
        eprintln!(
            "FAULT {fault}: generated {generated}, stored {rows}, duplicates suppressed {dups}, \
             faults {}, slowest recovery {} ms",
            recoveries.len(),
            worst.as_millis()
        );
    }

    /// Waits until the collector has stored `n` distinct (device, seq) pairs.
    pub fn wait_stored(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.stored().0.values().map(BTreeSet::len).sum::<usize>() >= n
        })
    }
}

/// `vehicle_01..` with the seqs `seqs(index)`.
pub fn expected(
    devices: usize,
    seqs: impl Fn(usize) -> std::ops::RangeInclusive<u64>,
) -> BTreeMap<String, BTreeSet<u64>> {
    (1..=devices)
        .map(|i| (format!("vehicle_{i:02}"), seqs(i).collect()))
        .collect()
}

/// A process's stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every stored seq of each device, with the number of rows: no pair may be stored twice.
pub fn assert_complete(stack: &Stack, want: &BTreeMap<String, BTreeSet<u64>>) {
    let total: usize = want.values().map(BTreeSet::len).sum();
    let ok = stack.wait_stored(total, Duration::from_secs(30));
    let (got, rows) = stack.stored();
    let missing: Vec<_> = want
        .iter()
        .flat_map(|(d, s)| {
            s.iter()
                .filter(|q| !got.get(d).is_some_and(|g| g.contains(q)))
                .map(move |q| (d.clone(), *q))
        })
        .collect();
    assert!(
        ok && missing.is_empty(),
        "missing {} of {total}: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    assert_eq!(&got, want, "stored set differs");
    assert_eq!(rows, total, "a (device_id, seq) was stored twice");
}
