//! Abuse and security (issue 7): hostile payloads, refused certificates and
//! credentials with the contract's exit code, no plain-text fallback, and
//! passwords that never reach a log line or a database.

use e2e::stack::{stderr, Stack};
use e2e::{command, env_with, run_with_timeout, wait_until, Broker, BrokerConfig, Pki, Subscriber};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn publish_file(broker: &Broker, topic: &str, payload: &[u8]) {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), payload).unwrap();
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.plain_port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
        ])
        .arg("-f")
        .arg(f.path())
        .status()
        .unwrap();
    assert!(status.success(), "mosquitto_pub {topic}");
}

fn count(stack: &Stack, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open_with_flags(
        &stack.db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap_or(-1)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn hostile_payloads_are_rejected_and_the_collector_keeps_running() {
    let mut stack = Stack::new(BrokerConfig::new());
    stack.start_collector();
    let deep = format!(
        "{{\"device_id\":\"deep\",\"a\":{}{}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let mut huge = b"{\"device_id\":\"big\",\"x\":\"".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 10 * 1024 * 1024));
    huge.extend(b"\"}");
    // (topic, payload, the reason must contain this; None: stored or rejected, either is safe)
    let cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        (
            "device/data/big",
            huge,
            Some("payload exceeds 262144 bytes"),
        ),
        (
            "device/data/deep",
            deep.into_bytes(),
            Some("not a JSON object"),
        ),
        (
            "device/data/utf",
            b"{\"device_id\":\"utf\",\"x\":\"\xff\xfe\"}".to_vec(),
            Some("UTF-8"),
        ),
        (
            "device/data/nan",
            b"{\"device_id\":\"nan\",\"speed\":NaN}".to_vec(),
            Some("not a JSON object"),
        ),
        (
            "device/data/inf",
            b"{\"device_id\":\"inf\",\"speed\":Infinity}".to_vec(),
            Some("not a JSON object"),
        ),
        (
            "device/data/arr",
            b"[1,2,3]".to_vec(),
            Some("not a JSON object"),
        ),
        (
            "device/data/x",
            br#"{"device_id":"a/b"}"#.to_vec(),
            Some(r#"device_id "a/b" has characters outside [A-Za-z0-9_.-]"#),
        ),
        (
            "device/data/x",
            br#"{"device_id":"a+b"}"#.to_vec(),
            Some("has characters outside"),
        ),
        (
            "device/data/x",
            br#"{"device_id":"a#b"}"#.to_vec(),
            Some("has characters outside"),
        ),
        (
            "device/data/x",
            br#"{"device_id":"a\"b"}"#.to_vec(),
            Some("has characters outside"),
        ),
        (
            "device/data/x",
            br#"{"device_id":"x'); DROP TABLE telemetry;--"}"#.to_vec(),
            Some("has characters outside"),
        ),
        (
            "device/data/x",
            b"{\"device_id\":\"a\\u0000\\u0007b\"}".to_vec(),
            Some("has characters outside"),
        ),
        (
            "device/data/q'uote",
            b"{\"speed\":1}".to_vec(),
            Some("has characters outside"),
        ),
        (
            "device/data/y",
            br#"{"device_id":"x"}"#.to_vec(),
            Some(r#"device_id "x" does not match topic device/data/y"#),
        ),
        (
            "device/data/hugenum",
            br#"{"device_id":"hugenum","speed":1e400}"#.to_vec(),
            None,
        ),
        (
            "device/data/hugeseq",
            br#"{"device_id":"hugeseq","seq":123456789012345678901234567890}"#.to_vec(),
            None,
        ),
    ];
    let pid = stack.collector.as_ref().unwrap().pid();
    for (topic, payload, _) in &cases {
        publish_file(&stack.broker, topic, payload);
    }
    publish_file(
        &stack.broker,
        "device/data/good",
        br#"{"device_id":"good","seq":1,"timestamp":1700000000.5,"speed":3.5}"#,
    );
    let total = cases.len() as i64 + 1;
    let accounted = || {
        count(
            &stack,
            "SELECT (SELECT count(*) FROM telemetry) + (SELECT count(*) FROM rejected)",
        )
    };
    assert!(
        wait_until(Duration::from_secs(30), || accounted() >= total),
        "only {} of {total} messages were stored or rejected",
        accounted()
    );
    assert_eq!(accounted(), total, "a message was counted twice");
    assert_eq!(
        count(
            &stack,
            "SELECT count(*) FROM telemetry WHERE device_id = 'good'"
        ),
        1
    );
    let conn = rusqlite::Connection::open_with_flags(
        &stack.db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut reasons: Vec<(String, String)> = conn
        .prepare("SELECT topic, reason FROM rejected ORDER BY rowid")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (topic, _, want) in &cases {
        let Some(want) = want else { continue };
        let pos = reasons
            .iter()
            .position(|(t, r)| t == topic && r.contains(want))
            .unwrap_or_else(|| {
                panic!("no rejection on {topic} containing {want:?}; have {reasons:?}")
            });
        reasons.remove(pos);
    }
    // The collector is alive, its memory bounded, and the SQL text did nothing.
    assert!(
        stack.collector.as_mut().unwrap().is_running(),
        "collector died"
    );
    let rss = rss_kib(pid);
    assert!(
        rss < 200 * 1024,
        "collector holds {rss} KiB after a 10 MB payload"
    );
    assert!(count(&stack, "SELECT count(*) FROM telemetry") >= 1);
    let out = stack.stop_collector();
    assert!(out.status.success(), "{}", stderr(&out));
}

fn sim_once(env: &[(String, String)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command("device-sim", dir.path(), env);
    cmd.args(["--count", "1", "--messages", "2", "--interval", "20ms"]);
    run_with_timeout(&mut cmd, Duration::from_secs(20))
}

fn assert_refused(out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(3), "expected exit 3: {err}");
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
}

#[test]
fn not_yet_valid_server_certificate_is_refused() {
    let pki = Pki::not_yet_valid_server();
    let broker = Broker::start(BrokerConfig::new().tls(&pki));
    assert_refused(&sim_once(&broker.env_tls(&pki)), "not valid yet");
}

#[test]
fn client_certificate_from_another_ca_is_refused() {
    let pki = Pki::new();
    let foreign = Pki::new();
    let (crt, key) = foreign.client("intruder");
    let broker = Broker::start(BrokerConfig::new().tls(&pki).require_certificate(true));
    let env = env_with(
        broker.env_tls(&pki),
        &[
            ("MQTT_CERTFILE", crt.to_str().unwrap()),
            ("MQTT_KEYFILE", key.to_str().unwrap()),
        ],
    );
    assert_refused(&sim_once(&env), "rejected our client certificate");
}

#[test]
fn revoked_password_is_refused_after_the_broker_reloads() {
    let broker = Broker::start(BrokerConfig::new().user("fleet", "pw-before-revocation"));
    let env = env_with(
        broker.env_plain(),
        &[
            ("MQTT_USERNAME", "fleet"),
            ("MQTT_PASSWORD", "pw-before-revocation"),
        ],
    );
    let out = sim_once(&env);
    assert!(out.status.success(), "{}", stderr(&out));
    let reloads = broker.log().matches("Reloading config").count();
    broker.set_users(&[("someone-else", "x")]);
    broker.reload();
    assert!(wait_until(Duration::from_secs(10), || broker
        .log()
        .matches("Reloading config")
        .count()
        > reloads));
    assert_refused(&sim_once(&env), "user \"fleet\"");
}

#[test]
fn tls_never_falls_back_to_plain_text() {
    let pki = Pki::new();
    let broker = Broker::start(BrokerConfig::new().tls(&pki));
    // TLS on, but pointed at the plain listener: keep trying TLS with a hint, never
    // speak MQTT in clear. (A broker at max_connections hangs up the same way, so
    // this is retried rather than fatal.)
    let env = env_with(
        broker.env_tls(&pki),
        &[("MQTT_BROKER_PORT", &broker.plain_port.to_string())],
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command("device-sim", dir.path(), &env);
    cmd.args(["--count", "1", "--messages", "1", "--duration", "2s"]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(20));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "check that port {} is a TLS listener",
            broker.plain_port
        )),
        "no hint: {err}"
    );
    assert!(
        !err.contains("INFO mqtt_core::connection: connected"),
        "{err}"
    );
    assert!(
        !broker.log().contains("as vehicle_01"),
        "a plain CONNECT reached the broker:\n{}",
        broker.log()
    );
}

#[test]
fn collector_exits_3_on_a_certificate_it_cannot_trust() {
    let pki = Pki::new();
    let other = Pki::new();
    let broker = Broker::start(BrokerConfig::new().tls(&pki));
    let dir = tempfile::tempdir().unwrap();
    e2e::bin("collector"); // built before the clock starts
    let start = Instant::now();
    let mut cmd = command("collector", dir.path(), &broker.env_tls(&other));
    cmd.arg("--db").arg(dir.path().join("c.db"));
    let out = run_with_timeout(&mut cmd, Duration::from_secs(20));
    assert_refused(&out, "MQTT_CA_CERTS");
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn passwords_never_reach_logs_or_databases() {
    const PASSWORD: &str = "Zq9-unmistakable-secret-41x";
    let pki = Pki::new();
    let mut stack = Stack::new(BrokerConfig::new().tls(&pki).user("mqtt-user", PASSWORD));
    stack.env = env_with(
        stack.broker.env_tls(&pki),
        &[
            ("MQTT_USERNAME", "mqtt-user"),
            ("MQTT_PASSWORD", PASSWORD),
            ("RUST_LOG", "trace"),
        ],
    );
    stack.start_collector();
    let mut sim = stack.sim(&["--count", "2", "--messages", "5", "--interval", "20ms"]);
    let sim_out = sim.wait_output(Duration::from_secs(30)).unwrap();
    assert!(sim_out.status.success(), "{}", stderr(&sim_out));
    assert!(stack.wait_stored(10, Duration::from_secs(15)));
    let col_out = stack.stop_collector();
    for (what, bytes) in [
        ("device-sim stdout", &sim_out.stdout),
        ("device-sim stderr", &sim_out.stderr),
        ("collector stdout", &col_out.stdout),
        ("collector stderr", &col_out.stderr),
    ] {
        assert!(
            !bytes.is_empty() || what.ends_with("stdout"),
            "{what} is empty: was RUST_LOG=trace honoured?"
        );
        assert!(
            !String::from_utf8_lossy(bytes).contains(PASSWORD),
            "password in {what}"
        );
    }
    for entry in std::fs::read_dir(stack.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes
                    .windows(PASSWORD.len())
                    .any(|w| w == PASSWORD.as_bytes()),
                "password in {}",
                path.display()
            );
        }
    }
}

fn pub_as(broker: &Broker, user: &str, pass: &str, id: &str, topic: &str, msg: &str) {
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.plain_port.to_string()])
        .args([
            "-u", user, "-P", pass, "-i", id, "-q", "1", "-t", topic, "-m", msg,
        ])
        .status()
        .unwrap();
    assert!(status.success(), "mosquitto_pub as {id} to {topic}");
}

#[test]
fn shipped_acl_lets_a_device_write_only_its_own_topics_and_read_nothing() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let acl = std::fs::read_to_string(root.join("docker/mosquitto/config/acl")).unwrap();
    let broker = Broker::start(
        BrokerConfig::new()
            .user("collector", "collector-pw")
            .user("device", "device-pw")
            .acl(&acl),
    );
    let collector = Subscriber::start_with(
        &broker,
        &["device/data/+", "vehicle/speed/+"],
        &["-u", "collector", "-P", "collector-pw"],
    );
    // A device with valid credentials tries to read everything.
    let spy = Subscriber::start_with(
        &broker,
        &["#"],
        &["-u", "device", "-P", "device-pw", "-i", "vehicle_09"],
    );
    pub_as(
        &broker,
        "device",
        "device-pw",
        "vehicle_01",
        "device/data/vehicle_02",
        "forged",
    );
    pub_as(
        &broker,
        "device",
        "device-pw",
        "vehicle_01",
        "vehicle/speed/vehicle_02",
        "forged-legacy",
    );
    pub_as(
        &broker,
        "device",
        "device-pw",
        "vehicle_01",
        "device/data/vehicle_01",
        "own",
    );
    // Published in this order by the same broker loop: once "own" is in, the forged
    // ones would have been too.
    let got = collector.wait_for(1, Duration::from_secs(10));
    assert_eq!(
        got,
        vec![("device/data/vehicle_01".to_string(), "own".to_string())]
    );
    assert!(
        !spy.wait_until(Duration::from_millis(500), |m| !m.is_empty()),
        "a device read other devices' data: {:?} (granted {:?})",
        spy.messages(),
        spy.granted()
    );
}
