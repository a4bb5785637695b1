//! The first run and hardening (issue 14): readiness only once the broker confirmed
//! the subscription, a lost session said at WARN, seq-less messages stored once,
//! two clients with one client id settling, one failure line per interval for a
//! fleet without a broker, and no input that makes a binary panic.

use e2e::{
    command, env_with, free_port, run_with_timeout, spawn, wait_until, Broker, BrokerConfig,
};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn rows(db: &Path, sql: &str) -> i64 {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn readiness_follows_the_confirmed_subscription_and_a_lost_session_is_a_warning() {
    // No persistence: a restart loses the session the broker held for the collector.
    let mut broker = Broker::start(BrokerConfig::new());
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("collector.ready");
    let env = env_with(broker.env_plain(), &[("MQTT_KEEPALIVE", "2")]);
    let mut collector = spawn(
        command("collector", dir.path(), &env)
            .args(["--db", "c.db", "--ready-file"])
            .arg(&ready),
    );
    assert!(
        wait_until(Duration::from_secs(15), || ready.exists()),
        "never ready"
    );
    assert!(broker
        .log()
        .contains("Received SUBSCRIBE from mqtt-collector"));

    broker.stop();
    assert!(
        wait_until(Duration::from_secs(15), || !ready.exists()),
        "still ready with the broker gone"
    );
    broker.start_again();
    assert!(
        wait_until(Duration::from_secs(15), || ready.exists()),
        "not ready again after the broker came back"
    );
    collector.signal(libc::SIGTERM);
    let out = collector.wait_output(Duration::from_secs(20)).unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(!ready.exists(), "the readiness file outlived the collector");
    let warning = err
        .lines()
        .find(|l| l.contains("no longer has the session"))
        .unwrap_or_else(|| panic!("no lost-session line:\n{err}"));
    assert!(
        warning.contains("WARN") && warning.contains("lost"),
        "{warning}"
    );
    // The first start, with no session yet, is no loss: only the restart warns.
    assert_eq!(err.matches("no longer has the session").count(), 1, "{err}");
}

#[test]
fn a_retained_message_without_seq_is_stored_once_across_collector_starts() {
    let broker = Broker::start(BrokerConfig::new().persistence(true));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let ready = dir.path().join("ready");
    let payload = r#"{"device_id":"legacy_1","timestamp":1700000000.5,"speed":42.0}"#;
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.plain_port.to_string()])
        .args(["-q", "1", "-r", "-t", "device/data/legacy_1", "-m", payload])
        .output()
        .unwrap();
    assert!(out.status.success());
    for start in 1..=3 {
        let mut c = spawn(
            command("collector", dir.path(), &broker.env_plain())
                .arg("--db")
                .arg(&db)
                .arg("--ready-file")
                .arg(&ready),
        );
        assert!(wait_until(Duration::from_secs(15), || ready.exists()));
        // The retained message arrives right after the SUBACK; a duplicate is counted.
        let want_dups = start - 1;
        assert!(
            wait_until(Duration::from_secs(10), || {
                db.exists()
                    && rows(&db, "SELECT count(*) FROM telemetry") == 1
                    && rows(&db, "SELECT value FROM counters WHERE name = 'duplicates'")
                        == want_dups
            }),
            "start {start}: rows {} duplicates {}",
            rows(&db, "SELECT count(*) FROM telemetry"),
            rows(&db, "SELECT value FROM counters WHERE name = 'duplicates'")
        );
        c.signal(libc::SIGTERM);
        assert!(c
            .wait_output(Duration::from_secs(20))
            .unwrap()
            .status
            .success());
    }
    assert_eq!(rows(&db, "SELECT count(*) FROM telemetry"), 1);
}

#[test]
fn two_collectors_with_one_client_id_back_off_and_say_why() {
    let broker = Broker::start(BrokerConfig::new());
    let env = env_with(
        broker.env_plain(),
        &[
            ("MQTT_CLIENT_ID", "twin"),
            ("MQTT_KEEPALIVE", "10"),
            ("MQTT_RECONNECT_MIN_DELAY", "0.2"),
            ("MQTT_RECONNECT_MAX_DELAY", "30"),
        ],
    );
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut twins: Vec<_> = dirs
        .iter()
        .map(|d| spawn(command("collector", d.path(), &env).args(["--db", "c.db"])))
        .collect();
    std::thread::sleep(Duration::from_secs(6));
    let connects = broker.log().matches(" as twin ").count();
    let mut err = String::new();
    for t in &mut twins {
        t.signal(libc::SIGTERM);
        err += &stderr(&t.wait_output(Duration::from_secs(20)).unwrap());
    }
    // Reset at every CONNACK, each retried after 0.2 s: about 50 connects in 6 s.
    assert!(connects <= 16, "{connects} connects in 6 s:\n{err}");
    assert!(connects >= 3, "they never fought: {connects}");
    assert!(
        err.contains("another client is probably connected with the same client id \"twin\""),
        "{err}"
    );
}

#[test]
fn a_fleet_without_a_broker_logs_one_failure_line_per_interval() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let env = vec![
        ("MQTT_BROKER_HOST".to_string(), "127.0.0.1".to_string()),
        ("MQTT_BROKER_PORT".to_string(), port),
        ("MQTT_RECONNECT_MIN_DELAY".to_string(), "0.2".to_string()),
        ("MQTT_RECONNECT_MAX_DELAY".to_string(), "0.5".to_string()),
    ];
    let out = run_with_timeout(
        command("device-sim", dir.path(), &env).args([
            "--count",
            "200",
            "--connect-rate",
            "100000",
            "--status-interval",
            "1s",
            "--duration",
            "3500ms",
            "--queue",
            "q.db",
        ]),
        Duration::from_secs(30),
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("connection attempts of"))
        .collect();
    assert!(
        (2..=4).contains(&lines.len()),
        "{} aggregated lines:\n{err}",
        lines.len()
    );
    assert!(
        lines[0].contains("of 200 devices") && lines[0].contains("refused"),
        "{}",
        lines[0]
    );
    assert!(
        !err.contains("connection failed"),
        "per-device warnings are still printed:\n{err}"
    );
}

#[test]
fn absurd_values_exit_2_with_a_message_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let base = vec![
        ("MQTT_BROKER_HOST".to_string(), "127.0.0.1".to_string()),
        ("MQTT_BROKER_PORT".to_string(), free_port().to_string()),
    ];
    // (binary, flags, variables, what the message must say)
    type Case<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            "device-sim",
            &["--interval", "99999999999999999h"],
            &[],
            "too long",
        ),
        (
            "device-sim",
            &["--duration", "99999999999999999h"],
            &[],
            "too long",
        ),
        (
            "device-sim",
            &["--connect-rate", "1e-300"],
            &[],
            "connections per second",
        ),
        (
            "collector",
            &["--flush-interval", "99999999999999999h"],
            &[],
            "too long",
        ),
        (
            "collector",
            &["--status-interval", "1e400"],
            &[],
            "not a duration",
        ),
        (
            "collector",
            &[],
            &[("MQTT_KEEPALIVE", "0")],
            "MQTT_KEEPALIVE",
        ),
        (
            "device-sim",
            &[],
            &[("MQTT_KEEPALIVE", "0")],
            "MQTT_KEEPALIVE",
        ),
        (
            "collector",
            &[],
            &[("MQTT_RECONNECT_MAX_DELAY", "1e309")],
            "MQTT_RECONNECT_MAX_DELAY",
        ),
        (
            "device-sim",
            &[],
            &[("MQTT_BROKER_PORT", "99999999999999999999")],
            "MQTT_BROKER_PORT",
        ),
    ];
    for (bin, args, vars, expect) in cases {
        let env = env_with(base.clone(), vars);
        let out = run_with_timeout(
            command(bin, dir.path(), &env).args(*args),
            Duration::from_secs(20),
        );
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{bin} {args:?} {vars:?}:\n{err}"
        );
        assert!(!err.contains("panicked"), "{bin} {args:?}:\n{err}");
        assert!(
            err.contains(expect),
            "{bin} {args:?} {vars:?}: no {expect:?} in\n{err}"
        );
    }
}

#[test]
fn a_misspelt_variable_gets_a_did_you_mean_and_a_bad_env_line_its_number() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "MQTT_BROKER_HOTS=mqtt.example.com\nMQTT_QOS=7\n",
    )
    .unwrap();
    for bin in ["collector", "device-sim"] {
        let out = run_with_timeout(&mut command(bin, dir.path(), &[]), Duration::from_secs(20));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("MQTT_BROKER_HOTS is set but no setting has that name: did you mean MQTT_BROKER_HOST?"),
            "{bin}:\n{err}"
        );
    }
    std::fs::write(
        dir.path().join(".env"),
        "# broker\nMQTT_BROKER_HOST=localhost\nMQTT_PASSWORD=two words s3cr3t\n",
    )
    .unwrap();
    for bin in ["collector", "device-sim"] {
        let out = run_with_timeout(&mut command(bin, dir.path(), &[]), Duration::from_secs(20));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("line 3 (MQTT_PASSWORD)"), "{bin}:\n{err}");
        assert!(
            !err.contains("s3cr3t"),
            "{bin} printed the password:\n{err}"
        );
    }
}
