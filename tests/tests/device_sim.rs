//! device-sim's offline queue end to end (issue 3): a real Mosquitto that is down,
//! killed or restarted, a real subscriber, the real binary killed with SIGKILL,
//! and the queue file read back after each run.

use e2e::{command, seqs, spawn, wait_until, Broker, BrokerConfig, ChildGuard, Subscriber};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

/// A working directory and queue file for device-sim runs against one broker.
struct Sim {
    dir: tempfile::TempDir,
    queue: PathBuf,
    env: Vec<(String, String)>,
}

impl Sim {
    fn new(broker: &Broker) -> Sim {
        let dir = tempfile::tempdir().unwrap();
        Sim {
            queue: dir.path().join("queue.db"),
            dir,
            env: broker.env_plain(),
        }
    }

    fn spawn(&self, args: &[&str]) -> ChildGuard {
        let mut cmd = command("device-sim", self.dir.path(), &self.env);
        cmd.arg("--queue")
            .arg(&self.queue)
            .args(["--status-interval", "500ms"])
            .args(args);
        spawn(&mut cmd)
    }

    /// (device_id, seq) of every row still queued.
    fn queued(&self) -> Vec<(String, u64)> {
        self.query("SELECT device_id, seq FROM outbox ORDER BY device_id, seq")
    }

    /// The highest seq each device was ever given.
    fn last_seqs(&self) -> BTreeMap<String, u64> {
        self.query("SELECT device_id, last_seq FROM device_seq")
            .into_iter()
            .collect()
    }

    fn query(&self, sql: &str) -> Vec<(String, u64)> {
        let Ok(conn) = rusqlite::Connection::open(&self.queue) else {
            return Vec::new();
        };
        let Ok(mut stmt) = conn.prepare(sql) else {
            return Vec::new();
        };
        stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })
        .map(|rows| rows.flatten().collect())
        .unwrap_or_default()
    }
}

fn text(o: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Per device, the set of seqs received.
fn seq_sets(msgs: &[(String, String)]) -> BTreeMap<String, BTreeSet<u64>> {
    seqs(msgs)
        .into_iter()
        .map(|(d, v)| (d, v.into_iter().collect()))
        .collect()
}

/// `vehicle_01..` each with the seqs of `range(index)`.
fn want(
    devices: usize,
    range: impl Fn(usize) -> std::ops::RangeInclusive<u64>,
) -> BTreeMap<String, BTreeSet<u64>> {
    (1..=devices)
        .map(|i| (format!("vehicle_{i:02}"), range(i).collect()))
        .collect()
}

/// A subscriber with a persistent session (`-c -i ID`): when the broker restarts
/// from its persistence file, messages published before the subscriber is back are
/// kept for it, so it sees everything device-sim delivered.
fn durable_subscriber(broker: &Broker, id: &str) -> Subscriber {
    Subscriber::start_with(broker, &["device/data/+"], &["-c", "-i", id])
}

/// Waits until every wanted seq arrived; returns the seqs that arrived.
fn wait_for_all(
    sub: &Subscriber,
    want: &BTreeMap<String, BTreeSet<u64>>,
    timeout: Duration,
) -> BTreeMap<String, BTreeSet<u64>> {
    sub.wait_until(timeout, |msgs| {
        let got = seq_sets(msgs);
        want.iter()
            .all(|(d, s)| got.get(d).is_some_and(|g| g.is_superset(s)))
    });
    seq_sets(&sub.messages())
}

/// Every copy of a (device, seq) must be the same reading: a resend, never a new
/// reading that reused the number. Only the timestamp, the time of each publish,
/// may differ between copies.
fn assert_no_reuse(msgs: &[(String, String)]) {
    let mut seen: BTreeMap<(String, u64), serde_json::Value> = BTreeMap::new();
    for (_, payload) in msgs {
        let mut v: serde_json::Value = serde_json::from_str(payload).unwrap();
        let key = (
            v["device_id"].as_str().unwrap().to_string(),
            v["seq"].as_u64().unwrap(),
        );
        assert!(v["timestamp"].as_f64().is_some(), "no timestamp: {payload}");
        v.as_object_mut().unwrap().remove("timestamp");
        if let Some(before) = seen.insert(key.clone(), v.clone()) {
            assert_eq!(before, v, "{key:?} was used for two different readings");
        }
    }
}

fn wait_exit(sim: &mut ChildGuard, timeout: Duration) -> Output {
    let out = sim.wait_output(timeout).expect("device-sim output");
    assert!(out.status.success(), "device-sim failed: {}", text(&out));
    out
}

#[test]
fn device_sim_plain_3x5_with_legacy_topic_delivers_everything_and_empties_the_queue() {
    let broker = Broker::start(BrokerConfig::new());
    let sub = Subscriber::start(&broker, &["device/data/+", "vehicle/speed/+"]);
    let sim = Sim::new(&broker);
    let mut run = sim.spawn(&[
        "--count",
        "3",
        "--messages",
        "5",
        "--interval",
        "20ms",
        "--legacy-topic",
    ]);
    let out = wait_exit(&mut run, Duration::from_secs(20));
    let msgs = sub.wait_for(30, Duration::from_secs(10));
    let (data, legacy): (Vec<_>, Vec<_>) = msgs
        .iter()
        .cloned()
        .partition(|(t, _)| t.starts_with("device/data/"));
    for part in [&data, &legacy] {
        let got = seqs(part);
        let expect: BTreeMap<String, Vec<u64>> = want(3, |_| 1..=5)
            .into_iter()
            .map(|(d, s)| (d, s.into_iter().collect()))
            .collect();
        assert_eq!(got, expect, "{part:?}");
    }
    for (topic, payload) in &legacy {
        let v: serde_json::Value = serde_json::from_str(payload).unwrap();
        assert_eq!(
            topic,
            &format!("vehicle/speed/{}", v["device_id"].as_str().unwrap())
        );
    }
    assert_eq!(
        sim.queued(),
        vec![],
        "acknowledged messages left in the queue"
    );
    let last: Vec<u64> = sim.last_seqs().into_values().collect();
    assert_eq!(last, vec![5, 5, 5]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("acknowledged 15 "), "{}", text(&out));
}

#[test]
fn device_sim_broker_down_at_start_delivers_the_queue_when_it_comes_up() {
    let mut broker = Broker::start(BrokerConfig::new().persistence(true));
    let sub = durable_subscriber(&broker, "e2e-down-at-start");
    // SIGTERM: Mosquitto saves the subscriber's session and goes away.
    broker.stop();
    let sim = Sim::new(&broker);
    let mut run = sim.spawn(&["--count", "3", "--messages", "20", "--interval", "50ms"]);
    // Everything is generated into the queue while the broker is down.
    assert!(
        wait_until(Duration::from_secs(10), || sim.queued().len() == 60),
        "queue: {:?}",
        sim.queued()
    );
    assert!(
        run.is_running(),
        "device-sim gave up while the broker was down"
    );
    broker.start_again();
    let out = wait_exit(&mut run, Duration::from_secs(20));
    let expect = want(3, |_| 1..=20);
    assert_eq!(wait_for_all(&sub, &expect, Duration::from_secs(10)), expect);
    assert_no_reuse(&sub.messages());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("retrying in"),
        "{}",
        text(&out)
    );
    assert_eq!(sim.queued(), vec![], "the queue is not empty at the end");
}

#[test]
fn device_sim_broker_killed_mid_run_loses_nothing() {
    let mut broker = Broker::start(BrokerConfig::new().persistence(true));
    let sub = durable_subscriber(&broker, "e2e-broker-killed");
    // Make sure the subscriber's session is on disk before the broker is killed.
    broker.stop();
    broker.start_again();
    let sim = Sim::new(&broker);
    let mut run = sim.spawn(&["--count", "3", "--messages", "60", "--interval", "50ms"]);
    assert!(
        wait_until(Duration::from_secs(10), || sub.messages().len() >= 45),
        "messages did not start flowing: {}",
        sub.messages().len()
    );
    broker.kill();
    let killed_at = sub.messages().len();
    broker.start_again();
    let out = wait_exit(&mut run, Duration::from_secs(20));
    let expect = want(3, |_| 1..=60);
    assert_eq!(wait_for_all(&sub, &expect, Duration::from_secs(10)), expect);
    assert_no_reuse(&sub.messages());
    assert!(
        killed_at < 180,
        "the kill came after everything was delivered"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let reconnects: u64 = stdout
        .split("reconnects ")
        .nth(1)
        .and_then(|s| s.trim().split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no reconnect count in the summary: {}", text(&out)));
    assert!(
        reconnects >= 3,
        "every device must have reconnected: {}",
        text(&out)
    );
    assert_eq!(sim.queued(), vec![]);
}

#[test]
fn device_sim_killed_and_restarted_continues_numbering_without_gap_or_reuse() {
    let broker = Broker::start(BrokerConfig::new());
    let sub = Subscriber::start(&broker, &["device/data/+"]);
    let sim = Sim::new(&broker);
    let mut first = sim.spawn(&["--count", "3", "--messages", "1000", "--interval", "20ms"]);
    assert!(
        wait_until(Duration::from_secs(10), || sub.messages().len() >= 60),
        "messages did not start flowing"
    );
    first.kill();
    let last_before = sim.last_seqs();
    assert_eq!(last_before.len(), 3, "{last_before:?}");
    let leftovers = sim.queued();

    let mut second = sim.spawn(&["--count", "3", "--messages", "10", "--interval", "20ms"]);
    let out = wait_exit(&mut second, Duration::from_secs(20));
    // Every number of the first run, then exactly ten new ones right after it.
    let expect: BTreeMap<String, BTreeSet<u64>> = last_before
        .iter()
        .map(|(d, last)| (d.clone(), (1..=last + 10).collect()))
        .collect();
    let got = sub.wait_until(Duration::from_secs(10), |m| {
        let got = seq_sets(m);
        expect
            .iter()
            .all(|(d, s)| got.get(d).is_some_and(|g| g.is_superset(s)))
    });
    let msgs = sub.messages();
    assert!(
        got,
        "leftovers {leftovers:?}, received {:?}",
        seq_sets(&msgs)
    );
    assert_eq!(seq_sets(&msgs), expect, "{}", text(&out));
    assert_no_reuse(&msgs);
    let last_after = sim.last_seqs();
    for (d, last) in &last_before {
        assert_eq!(last_after[d], last + 10, "{d}");
    }
    assert_eq!(sim.queued(), vec![]);
}

#[test]
fn device_sim_queue_limit_keeps_only_the_newest_messages() {
    let mut broker = Broker::start(BrokerConfig::new().persistence(true));
    let sub = durable_subscriber(&broker, "e2e-queue-limit");
    broker.stop();
    let sim = Sim::new(&broker);
    let mut run = sim.spawn(&[
        "--count",
        "3",
        "--messages",
        "20",
        "--interval",
        "20ms",
        "--queue-limit",
        "5",
    ]);
    let generated = wait_until(Duration::from_secs(10), || {
        sim.last_seqs().values().filter(|&&s| s == 20).count() == 3
    });
    assert!(generated, "{:?}", sim.last_seqs());
    let newest: Vec<(String, u64)> = (1..=3)
        .flat_map(|i| (16..=20).map(move |s| (format!("vehicle_{i:02}"), s)))
        .collect();
    assert_eq!(sim.queued(), newest);
    broker.start_again();
    let out = wait_exit(&mut run, Duration::from_secs(20));
    let expect = want(3, |_| 16..=20);
    let got = wait_for_all(&sub, &expect, Duration::from_secs(10));
    assert_eq!(got, expect, "only the newest 5 per device may arrive");
    let err = String::from_utf8_lossy(&out.stderr);
    for i in 1..=3 {
        let line = format!("vehicle_{i:02}: 15 messages evicted");
        assert!(err.contains(&line), "no {line:?} in {}", text(&out));
    }
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("evicted 45"),
        "{}",
        text(&out)
    );
    assert_eq!(sim.queued(), vec![]);
}

#[test]
fn device_sim_sigterm_keeps_unacknowledged_messages_and_exits_0() {
    let mut broker = Broker::start(BrokerConfig::new());
    broker.stop();
    let sim = Sim::new(&broker);
    let mut run = sim.spawn(&["--count", "2", "--interval", "20ms"]);
    assert!(wait_until(Duration::from_secs(10), || sim.queued().len() >= 20));
    let signalled = Instant::now();
    run.signal(libc::SIGTERM);
    let out = wait_exit(&mut run, Duration::from_secs(10));
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "{}",
        text(&out)
    );
    // Nothing was acknowledged, so every generated message is still queued, numbered from 1.
    let queued = sim.queued();
    let last = sim.last_seqs();
    for (d, last) in &last {
        let mine: Vec<u64> = queued
            .iter()
            .filter(|(q, _)| q == d)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(mine, (1..=*last).collect::<Vec<_>>(), "{d}");
    }
    assert_eq!(last.len(), 2);
}

#[test]
fn device_sim_bad_arguments_exit_2_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["--queue", "/nonexistent/dir/queue.db"][..],
        &["--id-prefix", "bad/prefix"],
        &["--interval", "soon"],
        &["--count", "0"],
    ] {
        let mut cmd = command("device-sim", dir.path(), &[]);
        cmd.args(["--messages", "1"]).args(args);
        let out = e2e::run_with_timeout(&mut cmd, Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(args[0]) || err.contains(args[1]),
            "{args:?}: the message names neither the flag nor the value: {err}"
        );
        assert!(!err.contains("connected"), "{err}");
    }
}
