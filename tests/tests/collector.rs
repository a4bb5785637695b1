//! The collector against a real Mosquitto and a real SQLite file (issue 4): a fleet
//! stored completely, legacy payloads, rejections with reasons, SIGKILL and
//! restart, a stopped collector catching up, SIGTERM, and `collector stats`.

use e2e::stack::{assert_complete, expected, stderr, Stack};
use e2e::{command, run_with_timeout, wait_until, BrokerConfig};
use rusqlite::{Connection, OpenFlags};
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// `mosquitto_pub` one message at QoS 1 on the stack's broker; returns once the broker acknowledged it.
fn publish(stack: &Stack, topic: &str, payload: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("payload");
    std::fs::write(&file, payload).unwrap();
    let out = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &stack.broker.plain_port.to_string(),
        ])
        .args(["-q", "1", "-t", topic, "-f"])
        .arg(&file)
        .output()
        .expect("mosquitto_pub is installed");
    assert!(
        out.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One `mosquitto_pub -l` per device, fed a line every `interval`: a steady stream
/// of `{"device_id", "seq", "timestamp", "speed"}` with seq 1..=n per device.
struct Stream {
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Stream {
    fn start(stack: &Stack, devices: usize, n: u64, interval: Duration) -> Stream {
        let threads = (1..=devices)
            .map(|i| {
                let id = format!("vehicle_{i:02}");
                let mut child: Child = Command::new("mosquitto_pub")
                    .args([
                        "-h",
                        "127.0.0.1",
                        "-p",
                        &stack.broker.plain_port.to_string(),
                    ])
                    .args(["-q", "1", "-i", &format!("stream-{id}"), "-l"])
                    .args(["-t", &format!("device/data/{id}")])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("mosquitto_pub is installed");
                std::thread::spawn(move || {
                    let mut stdin = child.stdin.take().unwrap();
                    for seq in 1..=n {
                        let ts = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            .as_secs_f64();
                        writeln!(
                            stdin,
                            r#"{{"device_id":"{id}","seq":{seq},"timestamp":{ts},"speed":{}}}"#,
                            seq as f64 * 1.5
                        )
                        .unwrap();
                        stdin.flush().unwrap();
                        std::thread::sleep(interval);
                    }
                    drop(stdin);
                    // mosquitto_pub leaves once every QoS 1 message has its PUBACK.
                    let status = child.wait().unwrap();
                    assert!(status.success(), "mosquitto_pub -l for {id} failed");
                })
            })
            .collect();
        Stream { threads }
    }

    fn finish(self) {
        for t in self.threads {
            t.join().expect("publisher thread");
        }
    }
}

fn open(stack: &Stack) -> Connection {
    Connection::open_with_flags(&stack.db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
}

fn count(stack: &Stack, table: &str) -> usize {
    let Ok(conn) = Connection::open_with_flags(&stack.db, OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        return 0;
    };
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|n| n as usize)
    .unwrap_or(0)
}

fn stats(stack: &Stack, json: bool) -> String {
    let mut cmd = command("collector", stack.dir.path(), &[]);
    cmd.arg("stats").arg("--db").arg(&stack.db);
    if json {
        cmd.arg("--json");
    }
    let out = run_with_timeout(&mut cmd, Duration::from_secs(20));
    assert!(out.status.success(), "stats failed: {}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn device_sim_fleet_of_5x50_is_stored_completely_without_gaps() {
    let mut stack = Stack::new(BrokerConfig::new());
    stack.start_collector();
    let mut sim = stack.sim(&["--count", "5", "--messages", "50", "--interval", "20ms"]);
    let out = sim.wait_output(Duration::from_secs(60)).unwrap();
    assert!(out.status.success(), "device-sim failed: {}", stderr(&out));
    assert_complete(&stack, &expected(5, |_| 1..=50));

    let report: serde_json::Value = serde_json::from_str(&stats(&stack, true)).unwrap();
    assert_eq!(report["total"], 250, "{report}");
    let devices = report["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 5, "{report}");
    for d in devices {
        assert_eq!(d["count"], 50, "{d}");
        assert_eq!(d["seq_min"], 1, "{d}");
        assert_eq!(d["seq_max"], 50, "{d}");
        assert_eq!(d["gaps"], serde_json::json!([]), "{d}");
    }
    assert_eq!(report["latency"]["count"], 250, "{report}");
    assert_eq!(report["rejected"], 0, "{report}");
    let table = stats(&stack, false);
    assert!(table.contains("250 messages from 5 devices"), "{table}");
    assert_eq!(
        table.matches("none").count(),
        5,
        "every device without gaps:\n{table}"
    );

    let out = stack.stop_collector();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn legacy_payloads_are_stored_with_device_id_and_publish_time() {
    let mut stack = Stack::new(BrokerConfig::new());
    stack.start_collector();
    let sent: &[(&str, &str, &str, f64)] = &[
        // ms timestamp, no seq, device id only in the topic, legacy topic
        (
            "vehicle/speed/truck_7",
            r#"{"timestamp": 1700000000123, "speed": 55.5}"#,
            "truck_7",
            1_700_000_000.123,
        ),
        // nested readings
        (
            "device/data/car-2",
            r#"{"device_id": "car-2", "timestamp": 1700000001.5, "data": {"speed": 3.2, "cpu_usage": 4.0}}"#,
            "car-2",
            1_700_000_001.5,
        ),
        // the flat format of the replaced system, without seq
        (
            "device/data/bus.3",
            r#"{"device_id": "bus.3", "timestamp": 1700000002, "speed": 10, "cpu_usage": 1.5, "ram_usage": 2.5, "memory_total": 8000, "detection_label": "car", "detection_confidence": 0.9}"#,
            "bus.3",
            1_700_000_002.0,
        ),
        // nested readings, ms time inside the nested object, id from the topic
        (
            "device/data/van_4",
            r#"{"data": {"timestamp": 1700000003500, "speed": 1}}"#,
            "van_4",
            1_700_000_003.5,
        ),
    ];
    for (topic, payload, _, _) in sent {
        publish(&stack, topic, payload.as_bytes());
    }
    assert!(
        wait_until(Duration::from_secs(15), || count(&stack, "telemetry")
            >= sent.len()),
        "stored {} of {}",
        count(&stack, "telemetry"),
        sent.len()
    );
    let conn = open(&stack);
    for (topic, payload, device, ts) in sent {
        let (stored_device, seq, publish_ts, stored_payload): (String, Option<i64>, f64, String) =
            conn.query_row(
                "SELECT device_id, seq, publish_ts, payload FROM telemetry WHERE topic = ?1",
                [topic],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap_or_else(|e| panic!("{topic}: {e}"));
        assert_eq!(&stored_device, device);
        assert_eq!(seq, None);
        assert!(
            (publish_ts - ts).abs() < 1e-6,
            "{topic}: {publish_ts} != {ts}"
        );
        assert_eq!(&stored_payload, payload, "the JSON is kept as received");
    }
    assert_eq!(count(&stack, "rejected"), 0);
    let out = stack.stop_collector();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn each_bad_payload_is_rejected_with_its_reason_and_good_ones_around_are_stored() {
    let mut stack = Stack::new(BrokerConfig::new());
    stack.start_collector();
    let good = |seq: u64| format!(r#"{{"device_id":"good_1","seq":{seq},"timestamp":1700000000}}"#);
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_obj = format!(
        r#"{{"device_id":"y","data":{}1{}}}"#,
        r#"{"a":"#.repeat(10_000),
        "}".repeat(10_000)
    );
    let huge = vec![b'x'; 2 * 1024 * 1024];
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        ("device/data/y", b"hello".to_vec(), "not a JSON object"),
        ("device/data/y", b"[1, 2, 3]".to_vec(), "not a JSON object"),
        (
            "device/data/y",
            b"\xff\xfe\x00garbage".to_vec(),
            "not a JSON object",
        ),
        ("device/data/y", deep.into_bytes(), "not a JSON object"),
        ("device/data/y", deep_obj.into_bytes(), "not a JSON object"),
        (
            "device/data/y",
            br#"{"timestamp": NaN}"#.to_vec(),
            "not a JSON object",
        ),
        (
            "device/data/y",
            vec![b' '; 262_145],
            "payload exceeds 262144 bytes",
        ),
        ("device/data/y", huge, "payload exceeds 262144 bytes"),
        (
            "device/data/y",
            br#"{"device_id": "a/b"}"#.to_vec(),
            r#"device_id "a/b" has characters outside [A-Za-z0-9_.-]"#,
        ),
        (
            "device/data/y",
            br#"{"device_id": "x", "speed": 1}"#.to_vec(),
            r#"device_id "x" does not match topic device/data/y"#,
        ),
        (
            "vehicle/speed/bad$id",
            br#"{"speed": 1}"#.to_vec(),
            r#"device_id "bad$id" has characters outside [A-Za-z0-9_.-]"#,
        ),
        (
            "device/data/y",
            br#"{"seq": "three"}"#.to_vec(),
            "seq must be",
        ),
    ];
    publish(&stack, "device/data/good_1", good(1).as_bytes());
    for (topic, payload, _) in &bad {
        publish(&stack, topic, payload);
    }
    publish(&stack, "device/data/good_1", good(2).as_bytes());

    assert!(
        wait_until(Duration::from_secs(20), || count(&stack, "rejected")
            >= bad.len()
            && count(&stack, "telemetry") >= 2),
        "rejected {} of {}, stored {}",
        count(&stack, "rejected"),
        bad.len(),
        count(&stack, "telemetry")
    );
    assert!(
        stack.collector.as_mut().unwrap().is_running(),
        "the collector must survive every bad payload"
    );
    let conn = open(&stack);
    let rows: Vec<(String, String, usize)> = conn
        .prepare("SELECT topic, reason, length(payload) FROM rejected ORDER BY id")
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as usize))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), bad.len(), "{rows:?}");
    for ((topic, payload, reason), (got_topic, got_reason, got_len)) in bad.iter().zip(&rows) {
        assert_eq!(topic, got_topic);
        assert!(
            got_reason.starts_with(reason),
            "{got_reason:?} should start with {reason:?}"
        );
        assert_eq!(*got_len, payload.len().min(262_144));
    }
    let seqs: Vec<i64> = conn
        .prepare("SELECT seq FROM telemetry WHERE device_id = 'good_1' ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(seqs, vec![1, 2]);
    assert_eq!(count(&stack, "telemetry"), 2);

    let report: serde_json::Value = serde_json::from_str(&stats(&stack, true)).unwrap();
    assert_eq!(report["rejected"], bad.len(), "{report}");
    let table = stats(&stack, false);
    assert!(table.contains("payload exceeds 262144 bytes"), "{table}");

    let out = stack.stop_collector();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn sigkill_during_a_stream_then_restart_stores_every_message_exactly_once() {
    let mut stack = Stack::new(BrokerConfig::new());
    stack.start_collector();
    let stream = Stream::start(&stack, 3, 150, Duration::from_millis(10));
    assert!(
        wait_until(Duration::from_secs(20), || stack.stored().1 >= 60),
        "the stream did not reach the collector"
    );
    stack.kill_collector();
    let at_kill = stack.stored().1;
    stack.start_collector();
    stream.finish();
    assert_complete(&stack, &expected(3, |_| 1..=150));
    assert!(at_kill < 450, "the kill must interrupt the stream");
    let out = stack.stop_collector();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn messages_published_while_the_collector_is_stopped_are_stored_when_it_returns() {
    let mut stack = Stack::new(BrokerConfig::new());
    stack.start_collector();
    let out = stack.stop_collector();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for seq in 1..=20 {
        let payload = format!(r#"{{"device_id":"vehicle_01","seq":{seq},"timestamp":1700000000}}"#);
        publish(&stack, "device/data/vehicle_01", payload.as_bytes());
    }
    assert_eq!(
        stack.stored().1,
        0,
        "nothing can be stored while it is stopped"
    );
    stack.start_collector();
    assert_complete(&stack, &expected(1, |_| 1..=20));
    let out = stack.stop_collector();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn sigterm_during_a_stream_exits_0_and_every_acknowledged_message_is_stored() {
    let mut stack = Stack::new(BrokerConfig::new());
    stack.start_collector();
    let stream = Stream::start(&stack, 3, 150, Duration::from_millis(10));
    assert!(
        wait_until(Duration::from_secs(20), || stack.stored().1 >= 60),
        "the stream did not reach the collector"
    );
    let out = stack.stop_collector();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let at_stop = stack.stored().1;
    assert!(at_stop < 450, "the stop must interrupt the stream");
    assert!(
        stack
            .broker
            .log()
            .contains("Received DISCONNECT from mqtt-collector"),
        "the collector must leave with a DISCONNECT"
    );
    // What the broker no longer holds was acknowledged; what it holds comes now.
    // A message acknowledged but not stored would be missing for good.
    stack.start_collector();
    stream.finish();
    assert_complete(&stack, &expected(3, |_| 1..=150));
    let out = stack.stop_collector();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn bad_arguments_exit_2_and_stats_of_a_missing_database_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_with_timeout(
        command("collector", dir.path(), &[]).args(["--flush-interval", "soon"]),
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = run_with_timeout(
        command(
            "collector",
            dir.path(),
            &[("MQTT_TOPICS".to_string(), "a/#/b".to_string())],
        )
        .args(["--db", "x.db"]),
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("a/#/b"), "{}", stderr(&out));
    // A database path that cannot be used (a directory) is a bad argument too.
    std::fs::create_dir(dir.path().join("adir.db")).unwrap();
    let out = run_with_timeout(
        command("collector", dir.path(), &[]).args(["--db", "adir.db"]),
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("adir.db"), "{}", stderr(&out));
    let out = run_with_timeout(
        command("collector", dir.path(), &[]).args(["stats", "--db", "missing.db"]),
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("missing.db"), "{}", stderr(&out));
    assert!(
        !dir.path().join("missing.db").exists(),
        "stats must not create a database"
    );
}

#[test]
fn nothing_is_acknowledged_before_its_transaction_commits() {
    let mut stack = Stack::new(BrokerConfig::new());
    stack.start_collector();
    // Another writer holds the database: the collector's commit has to wait for it.
    let blocker = Connection::open(&stack.db).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    for seq in 1..=5 {
        let payload = format!(r#"{{"device_id":"vehicle_01","seq":{seq},"timestamp":1700000000}}"#);
        publish(&stack, "device/data/vehicle_01", payload.as_bytes());
    }
    let delivered = |stack: &Stack| {
        stack
            .broker
            .log()
            .matches("Sending PUBLISH to mqtt-collector")
            .count()
    };
    let acked = |stack: &Stack| {
        stack
            .broker
            .log()
            .matches("Received PUBACK from mqtt-collector")
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(10), || delivered(&stack) >= 5),
        "the broker did not deliver the messages"
    );
    // Give a collector that acknowledges on arrival every chance to show it.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(acked(&stack), 0, "acknowledged before the commit");
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);
    assert!(
        wait_until(Duration::from_secs(10), || acked(&stack) >= 5),
        "acknowledged {} of 5 after the commit",
        acked(&stack)
    );
    assert_complete(&stack, &expected(1, |_| 1..=5));
    let out = stack.stop_collector();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn mqtt_topics_replaces_the_default_subscription_and_sync_full_stores() {
    let mut stack = Stack::new(BrokerConfig::new());
    stack
        .env
        .push(("MQTT_TOPICS".into(), "fleet/+/telemetry, other/#".into()));
    stack.start_collector_with(|cmd| {
        cmd.args(["--sync", "full"]);
    });
    publish(
        &stack,
        "device/data/vehicle_09",
        br#"{"device_id":"vehicle_09","seq":1}"#,
    );
    publish(
        &stack,
        "fleet/vehicle_01/telemetry",
        br#"{"device_id":"vehicle_01","seq":1}"#,
    );
    publish(&stack, "other/a/b/vehicle_02", br#"{"seq":7}"#);
    assert!(
        wait_until(Duration::from_secs(10), || count(&stack, "telemetry") >= 2),
        "stored {}",
        count(&stack, "telemetry")
    );
    let (got, rows) = stack.stored();
    assert_eq!(rows, 2, "{got:?}");
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        ["vehicle_01", "vehicle_02"],
        "device/data/+ is no longer subscribed; the id comes from the last topic level"
    );
    let out = stack.stop_collector();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn broker_restarted_without_persistence_gets_a_new_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = e2e::Broker::start(BrokerConfig::new());
    let db = dir.path().join("c.db");
    let subscribes = |b: &e2e::Broker| {
        b.log()
            .matches("Received SUBSCRIBE from mqtt-collector")
            .count()
    };
    let mut cmd = command("collector", dir.path(), &broker.env_plain());
    cmd.arg("--db").arg(&db);
    let mut collector = e2e::spawn(&mut cmd);
    assert!(wait_until(Duration::from_secs(15), || subscribes(&broker) >= 1));
    // Without persistence the broker forgets the session and its subscriptions.
    broker.stop();
    broker.start_again();
    assert!(
        wait_until(Duration::from_secs(15), || subscribes(&broker) >= 2),
        "the collector did not subscribe again after the broker lost its session"
    );
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.plain_port.to_string()])
        .args(["-q", "1", "-t", "device/data/vehicle_01"])
        .args(["-m", r#"{"seq":1,"timestamp":1700000000}"#])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stored = || {
        Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| c.query_row("SELECT count(*) FROM telemetry", [], |r| r.get::<_, i64>(0)))
            .unwrap_or(0)
    };
    assert!(wait_until(Duration::from_secs(10), || stored() == 1));
    collector.signal(libc::SIGTERM);
    let out = collector.wait_output(Duration::from_secs(20)).unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn collector_over_mutual_tls_stores_what_arrives() {
    let pki = e2e::Pki::new();
    let mut stack = Stack::new(BrokerConfig::new().tls(&pki).require_certificate(true));
    let (crt, key) = pki.client("mqtt-collector");
    let mut env = stack.broker.env_tls(&pki);
    env.push(("MQTT_CERTFILE".into(), crt.display().to_string()));
    env.push(("MQTT_KEYFILE".into(), key.display().to_string()));
    stack.env = env;
    stack.start_collector();
    for seq in 1..=10 {
        let payload = format!(r#"{{"device_id":"vehicle_01","seq":{seq},"timestamp":1700000000}}"#);
        publish(&stack, "device/data/vehicle_01", payload.as_bytes());
    }
    assert_complete(&stack, &expected(1, |_| 1..=10));
    let out = stack.stop_collector();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
