//! Faults on purpose (issue 7): the broker, the collector and the simulator are
//! restarted, killed, frozen and starved of disk while a fleet publishes, and every
//! test ends by comparing what was generated with what was stored.

use e2e::stack::{assert_complete, expected, stderr, Stack};
use e2e::{wait_until, BrokerConfig};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

#[test]
fn broker_restarted_three_times_loses_nothing() {
    let mut stack = Stack::new(BrokerConfig::new());
    stack.start_collector();
    let mut sim = stack.sim(&["--count", "20", "--messages", "40", "--interval", "100ms"]);
    let mut recoveries = Vec::new();
    for _ in 0..3 {
        let before = stack.stored().1;
        // Restart only once messages are flowing, so each restart interrupts real traffic.
        assert!(wait_until(Duration::from_secs(20), || stack.stored().1 > before + 20));
        stack.broker.stop();
        let rows = stack.stored().1;
        stack.broker.start_again();
        recoveries.push(stack.recovered_after(rows));
    }
    let out = sim.wait_output(Duration::from_secs(60)).unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_complete(&stack, &expected(20, |_| 1..=40));
    stack.report("broker restarted 3 times (SIGTERM)", &recoveries);
    let out = stack.stop_collector();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn collector_killed_five_times_loses_nothing_and_stores_nothing_twice() {
    let mut stack = Stack::new(BrokerConfig::new());
    stack.start_collector();
    let mut sim = stack.sim(&["--count", "5", "--messages", "80", "--interval", "50ms"]);
    let mut recoveries = Vec::new();
    let mut rng = 0x9e3779b97f4a7c15u64;
    for _ in 0..5 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let before = stack.stored().1;
        let after = before + 10 + (rng % 40) as usize;
        assert!(wait_until(Duration::from_secs(20), || stack.stored().1 >= after));
        stack.kill_collector();
        let rows = stack.stored().1;
        stack.start_collector();
        recoveries.push(stack.recovered_after(rows));
    }
    let out = sim.wait_output(Duration::from_secs(60)).unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_complete(&stack, &expected(5, |_| 1..=80));
    stack.report("collector SIGKILLed 5 times", &recoveries);
}

#[test]
fn simulator_killed_and_restarted_continues_without_gap_or_reuse() {
    let mut stack = Stack::new(BrokerConfig::new());
    stack.start_collector();
    let mut sim = stack.sim(&["--count", "3", "--messages", "1000", "--interval", "20ms"]);
    assert!(wait_until(Duration::from_secs(20), || stack.stored().1 >= 60));
    sim.kill();
    let rows = stack.stored().1;
    let mut sim = stack.sim(&["--count", "3", "--messages", "30", "--interval", "20ms"]);
    let recovery = stack.recovered_after(rows);
    let out = sim.wait_output(Duration::from_secs(60)).unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // Every device's seqs are 1..=max with nothing missing, and the second run added 30 each.
    let (got, _) = stack.stored();
    let want = expected(3, |i| 1..=*got[&format!("vehicle_{i:02}")].last().unwrap());
    assert!(want.values().all(|s| s.len() >= 50), "{want:?}");
    assert_complete(&stack, &want);
    stack.report("device-sim SIGKILLed and restarted", &[recovery]);
}

#[test]
fn frozen_broker_is_detected_by_keepalive_and_everything_arrives() {
    let mut stack = Stack::new(BrokerConfig::new());
    stack.start_collector();
    let mut sim = stack.sim(&["--count", "3", "--messages", "100", "--interval", "50ms"]);
    assert!(wait_until(Duration::from_secs(20), || stack.stored().1 >= 30));
    // The sockets stay open but nothing answers: only keepalive can tell.
    stack.broker.pause();
    let frozen = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let rows = stack.stored().1;
    stack.broker.resume();
    let recovery = stack.recovered_after(rows);
    let out = sim.wait_output(Duration::from_secs(60)).unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("retrying in"),
        "the simulator never noticed the dead connection: {err}"
    );
    assert_complete(&stack, &expected(3, |_| 1..=100));
    let out = stack.stop_collector();
    assert!(
        stderr(&out).contains("retrying in"),
        "the collector never noticed: {}",
        stderr(&out)
    );
    assert!(frozen.elapsed() < Duration::from_secs(60));
    stack.report("broker frozen 5 s (SIGSTOP), keepalive 2 s", &[recovery]);
}

#[test]
fn outage_longer_than_the_queue_loses_exactly_the_evicted_messages() {
    let mut stack = Stack::new(BrokerConfig::new());
    stack.start_collector();
    stack.broker.stop();
    let mut sim = stack.sim(&[
        "--count",
        "2",
        "--messages",
        "20",
        "--interval",
        "20ms",
        "--queue-limit",
        "5",
    ]);
    // Every message is generated into the queue while the broker is away.
    assert!(wait_until(Duration::from_secs(10), || {
        let last = stack.last_seqs();
        last.len() == 2 && last.values().all(|&s| s == 20)
    }));
    stack.broker.start_again();
    let recovery = stack.recovered_after(0);
    let out = sim.wait_output(Duration::from_secs(60)).unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_complete(&stack, &expected(2, |_| 16..=20));
    stack.report("outage past --queue-limit 5 (30 evicted)", &[recovery]);
    // Exactly the missing ones were reported: 15 per device.
    for d in ["vehicle_01", "vehicle_02"] {
        assert!(err.contains(&format!("{d}: 15 messages evicted")), "{err}");
    }
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("evicted 30"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn unwritable_database_stops_acknowledging_and_nothing_is_lost() {
    let mut stack = Stack::new(BrokerConfig::new());
    // The database may grow to 256 KiB, then every write fails as on a full disk.
    stack.start_collector_with(|cmd| {
        use std::os::unix::process::CommandExt;
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let lim = libc::rlimit {
                    rlim_cur: 256 * 1024,
                    rlim_max: libc::RLIM_INFINITY,
                };
                libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
                Ok(())
            });
        }
    });
    let mut sim = stack.sim(&["--count", "4", "--messages", "300", "--interval", "5ms"]);
    let mut collector = stack.collector.take().unwrap();
    let out = collector.wait_output(Duration::from_secs(60)).unwrap();
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "collector kept running on a full disk: {err}"
    );
    assert!(
        err.to_lowercase().contains("database"),
        "no clear message: {err}"
    );
    // Fault removed: a collector without the limit gets everything the broker kept.
    let rows = stack.stored().1;
    stack.start_collector();
    let recovery = stack.recovered_after(rows);
    let out = sim.wait_output(Duration::from_secs(90)).unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_complete(&stack, &expected(4, |_| 1..=300));
    stack.report("database unwritable (file size limit 256 KiB)", &[recovery]);
}

#[test]
fn broker_killed_loses_only_what_stats_reports_as_gaps() {
    let mut stack = Stack::new(BrokerConfig::new());
    stack.start_collector();
    let mut sim = stack.sim(&["--count", "10", "--messages", "60", "--interval", "50ms"]);
    assert!(wait_until(Duration::from_secs(20), || stack.stored().1 >= 100));
    stack.broker.kill();
    let rows = stack.stored().1;
    stack.broker.start_again();
    let recovery = stack.recovered_after(rows);
    let out = sim.wait_output(Duration::from_secs(60)).unwrap();
    let sim_err = stderr(&out);
    assert!(out.status.success(), "{sim_err}");
    assert!(
        sim_err.contains("retrying in"),
        "devices did not reconnect: {sim_err}"
    );
    // Each device's last message was published after the restart; once every one is
    // stored, whatever is still missing is lost for good.
    assert!(wait_until(Duration::from_secs(30), || {
        let (got, _) = stack.stored();
        got.len() == 10 && got.values().all(|s| s.contains(&60))
    }));
    let (got, rows) = stack.stored();
    let want = expected(10, |_| 1..=60);
    let missing: BTreeSet<(String, u64)> = want
        .iter()
        .flat_map(|(d, s)| {
            s.iter()
                .filter(|q| !got[d].contains(q))
                .map(move |q| (d.clone(), *q))
        })
        .collect();
    assert_eq!(
        rows,
        got.values().map(BTreeSet::len).sum::<usize>(),
        "stored twice"
    );

    let mut cmd = e2e::command("collector", stack.dir.path(), &[]);
    cmd.args(["stats", "--json", "--db"]).arg(&stack.db);
    let stats = e2e::run_with_timeout(&mut cmd, Duration::from_secs(20));
    assert!(stats.status.success(), "{}", stderr(&stats));
    let v: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    let mut reported = BTreeSet::new();
    for d in v["devices"].as_array().unwrap() {
        let id = d["device_id"].as_str().unwrap().to_string();
        for gap in d["gaps"].as_array().unwrap() {
            let (a, b) = (gap[0].as_u64().unwrap(), gap[1].as_u64().unwrap());
            reported.extend((a..=b).map(|q| (id.clone(), q)));
        }
    }
    eprintln!(
        "FAULT broker SIGKILLed: {} generated and not stored, all reported as gaps",
        missing.len()
    );
    stack.report("broker SIGKILLed", &[recovery]);
    assert_eq!(
        reported, missing,
        "stats gaps differ from what was generated and not stored"
    );
    let out = stack.stop_collector();
    assert!(
        stderr(&out).contains("retrying in"),
        "the collector did not reconnect: {}",
        stderr(&out)
    );
}

#[test]
fn fake_broker_acks_out_of_order_then_drops_and_no_unacknowledged_message_is_deleted() {
    // A FAKE broker (crates/testkit/src/fake_broker/out_of_order.rs): Mosquitto
    // acknowledges in order, so it cannot make rumqttc hold a publish back on a
    // packet-id collision and then drop.
    let fake = e2e::fake_broker::OutOfOrderBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("q.db");
    let env: Vec<(String, String)> = [
        ("MQTT_BROKER_HOST", "127.0.0.1".to_string()),
        ("MQTT_BROKER_PORT", fake.port.to_string()),
        ("MQTT_RECONNECT_MIN_DELAY", "0.3".to_string()),
        ("MQTT_RECONNECT_MAX_DELAY", "0.3".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut cmd = e2e::command("device-sim", dir.path(), &env);
    cmd.arg("--queue")
        .arg(&queue)
        .args(["--count", "1", "--interval", "20ms"]);
    let mut sim = e2e::spawn(&mut cmd);
    assert!(
        wait_until(Duration::from_secs(20), || fake.later_publishes() >= 5),
        "the simulator never published on a second connection"
    );
    sim.signal(libc::SIGINT);
    let out = sim.wait_output(Duration::from_secs(20)).unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let conn = rusqlite::Connection::open(&queue).unwrap();
    let last: i64 = conn
        .query_row("SELECT last_seq FROM device_seq", [], |r| r.get(0))
        .unwrap();
    let queued: BTreeSet<u64> = conn
        .prepare("SELECT seq FROM outbox")
        .unwrap()
        .query_map([], |r| r.get::<_, i64>(0))
        .unwrap()
        .map(|s| s.unwrap() as u64)
        .collect();
    let acked = fake.acked();
    let lost: Vec<u64> = (1..=last as u64)
        .filter(|s| !acked.contains(s) && !queued.contains(s))
        .collect();
    assert!(
        lost.is_empty(),
        "deleted without a PUBACK: {lost:?}; acked {acked:?}; log: {err}"
    );
    let kept_acked: Vec<_> = queued.intersection(&acked).collect();
    assert!(
        kept_acked.is_empty(),
        "acknowledged but still queued: {kept_acked:?}"
    );
    assert!(
        !err.contains("no requested publish"),
        "packet ids were mis-paired: {err}"
    );
}
