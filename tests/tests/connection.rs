//! The connection layer through the real device-sim: plain, TLS, mutual TLS,
//! passwords, the insecure mode, permanent failures and their exit codes,
//! reconnect with backoff, and configuration errors.

use e2e::stack::stderr;
use e2e::{command, env_with, seqs, Broker, BrokerConfig, Pki, Subscriber};
use std::collections::BTreeMap;
use std::process::Output;
use std::time::{Duration, Instant};

/// Runs device-sim to completion in a fresh directory.
fn run_sim(args: &[&str], env: &[(String, String)], timeout: Duration) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command("device-sim", dir.path(), env);
    cmd.args(args);
    e2e::run_with_timeout(&mut cmd, timeout)
}

/// 3 devices x 5 messages; a real subscriber must see exactly seq 1..5 of each.
fn delivers_3x5(broker: &Broker, env: Vec<(String, String)>, sub_args: &[&str]) {
    let sub = Subscriber::start_with(broker, &["device/data/+"], sub_args);
    let out = run_sim(
        &["--count", "3", "--messages", "5", "--interval", "20ms"],
        &env,
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "device-sim failed: {}", stderr(&out));
    let msgs = sub.wait_for(15, Duration::from_secs(10));
    let want: BTreeMap<String, Vec<u64>> = ["vehicle_01", "vehicle_02", "vehicle_03"]
        .iter()
        .map(|d| (d.to_string(), (1..=5).collect()))
        .collect();
    assert_eq!(seqs(&msgs), want, "received: {msgs:?}");
    for (topic, payload) in &msgs {
        let v: serde_json::Value = serde_json::from_str(payload).unwrap();
        assert_eq!(
            topic,
            &format!("device/data/{}", v["device_id"].as_str().unwrap())
        );
        assert!(v["timestamp"].as_f64().unwrap() > 1.7e9);
        assert!(v["speed"].is_number() && v["detection_label"].is_string());
    }
}

#[test]
fn plain_tcp_delivers_every_message() {
    let broker = Broker::start(BrokerConfig::new());
    delivers_3x5(&broker, broker.env_plain(), &[]);
}

#[test]
fn tls_with_ca_delivers_every_message() {
    let pki = Pki::new();
    let broker = Broker::start(BrokerConfig::new().tls(&pki));
    delivers_3x5(&broker, broker.env_tls(&pki), &[]);
}

#[test]
fn mutual_tls_delivers_every_message() {
    let pki = Pki::new();
    let (crt, key) = pki.client("fleet");
    let broker = Broker::start(BrokerConfig::new().tls(&pki).require_certificate(true));
    let env = env_with(
        broker.env_tls(&pki),
        &[
            ("MQTT_CERTFILE", crt.to_str().unwrap()),
            ("MQTT_KEYFILE", key.to_str().unwrap()),
        ],
    );
    delivers_3x5(&broker, env, &[]);
}

fn openssl(args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed");
    assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
}

#[test]
fn mutual_tls_accepts_sec1_and_pkcs1_keys() {
    let pki = Pki::new();
    let broker = Broker::start(BrokerConfig::new().tls(&pki).require_certificate(true));
    let dir = pki.dir.path();
    // SEC1: the EC key of a generated client, rewritten by openssl.
    let (ec_crt, ec_key) = pki.client("sec1-device");
    let sec1 = dir.join("sec1.key");
    openssl(&[
        "ec",
        "-in",
        ec_key.to_str().unwrap(),
        "-out",
        sec1.to_str().unwrap(),
    ]);
    // PKCS#1: an RSA key, certified by the same CA, written in the traditional form.
    let rsa8 = dir.join("rsa8.key");
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        rsa8.to_str().unwrap(),
    ]);
    let rsa_crt = pki.client_for_key("pkcs1-device", &std::fs::read_to_string(&rsa8).unwrap());
    let pkcs1 = dir.join("pkcs1.key");
    openssl(&[
        "rsa",
        "-in",
        rsa8.to_str().unwrap(),
        "-traditional",
        "-out",
        pkcs1.to_str().unwrap(),
    ]);
    for (crt, key, header) in [
        (&ec_crt, &sec1, "-----BEGIN EC PRIVATE KEY-----"),
        (&rsa_crt, &pkcs1, "-----BEGIN RSA PRIVATE KEY-----"),
    ] {
        assert!(std::fs::read_to_string(key).unwrap().starts_with(header));
        let env = env_with(
            broker.env_tls(&pki),
            &[
                ("MQTT_CERTFILE", crt.to_str().unwrap()),
                ("MQTT_KEYFILE", key.to_str().unwrap()),
            ],
        );
        let out = run_sim(
            &["--count", "1", "--messages", "2", "--interval", "20ms"],
            &env,
            Duration::from_secs(20),
        );
        assert!(out.status.success(), "{header}: {}", stderr(&out));
    }
}

#[test]
fn username_and_password_over_tls_deliver_every_message() {
    let pki = Pki::new();
    let broker = Broker::start(
        BrokerConfig::new()
            .tls(&pki)
            .user("fleet", "fleet-pass")
            .user("watcher", "watch-pass"),
    );
    let env = env_with(
        broker.env_tls(&pki),
        &[("MQTT_USERNAME", "fleet"), ("MQTT_PASSWORD", "fleet-pass")],
    );
    delivers_3x5(&broker, env, &["-u", "watcher", "-P", "watch-pass"]);
}

/// Runs device-sim against a setup that must fail permanently: exit 3, fast, with `needle`.
fn fails_permanently(env: Vec<(String, String)>, needle: &str) -> String {
    e2e::bin("device-sim"); // built before the clock starts
    let start = Instant::now();
    let out = run_sim(
        &["--count", "1", "--messages", "1"],
        &env,
        Duration::from_secs(20),
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "expected exit 3; stderr: {err}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}: {err}",
        start.elapsed()
    );
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    err
}

#[test]
fn hostname_mismatch_fails_but_insecure_mode_connects() {
    let pki = Pki::with_server_names(&["mqtt.example.com"]);
    let broker = Broker::start(BrokerConfig::new().tls(&pki));
    let err = fails_permanently(
        broker.env_tls(&pki),
        "TLS: the broker's certificate is not valid for \"localhost\" (it names mqtt.example.com)",
    );
    assert!(err.contains("MQTT_TLS_INSECURE"), "{err}");

    let env = env_with(broker.env_tls(&pki), &[("MQTT_TLS_INSECURE", "true")]);
    let out = run_sim(
        &["--count", "1", "--messages", "2", "--interval", "20ms"],
        &env,
        Duration::from_secs(20),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("HOST NAME IS NOT CHECKED"),
        "no loud warning: {}",
        stderr(&out)
    );
}

#[test]
fn insecure_mode_still_verifies_the_chain() {
    let pki = Pki::new();
    let other = Pki::new();
    let broker = Broker::start(BrokerConfig::new().tls(&pki));
    let env = env_with(broker.env_tls(&other), &[("MQTT_TLS_INSECURE", "true")]);
    fails_permanently(env, "TLS: the broker's certificate");
}

#[test]
fn wrong_ca_fails_permanently() {
    let pki = Pki::new();
    let other = Pki::new();
    let broker = Broker::start(BrokerConfig::new().tls(&pki));
    fails_permanently(broker.env_tls(&other), "MQTT_CA_CERTS");
}

#[test]
fn expired_server_certificate_fails_permanently() {
    let pki = Pki::expired_server();
    let broker = Broker::start(BrokerConfig::new().tls(&pki));
    fails_permanently(broker.env_tls(&pki), "has expired");
}

#[test]
fn wrong_password_and_unknown_user_fail_permanently() {
    let broker = Broker::start(BrokerConfig::new().user("fleet", "right"));
    let wrong = env_with(
        broker.env_plain(),
        &[
            ("MQTT_USERNAME", "fleet"),
            ("MQTT_PASSWORD", "wrong-pass-123"),
        ],
    );
    let err = fails_permanently(wrong, "user \"fleet\"");
    assert!(!err.contains("wrong-pass-123"), "password leaked: {err}");
    let unknown = env_with(
        broker.env_plain(),
        &[("MQTT_USERNAME", "nobody"), ("MQTT_PASSWORD", "x")],
    );
    fails_permanently(unknown, "user \"nobody\"");
    let anonymous = broker.env_plain();
    fails_permanently(anonymous, "MQTT_USERNAME is not set");
}

#[test]
fn missing_client_certificate_fails_permanently() {
    let pki = Pki::new();
    let broker = Broker::start(BrokerConfig::new().tls(&pki).require_certificate(true));
    fails_permanently(broker.env_tls(&pki), "requires a client certificate");
}

#[test]
fn broker_down_at_start_is_retried_with_growing_delays() {
    // A persistent subscriber session exists before the outage, so every message
    // published after the broker comes back is kept for it however fast it arrives.
    let mut broker = Broker::start(BrokerConfig::new().persistence(true));
    let sub = Subscriber::start_with(&broker, &["device/data/+"], &["-c", "-i", "e2e-watcher"]);
    broker.stop();
    let env = env_with(broker.env_plain(), &[("MQTT_RECONNECT_MAX_DELAY", "2")]);
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command("device-sim", dir.path(), &env);
    cmd.args(["--count", "2", "--messages", "3", "--interval", "20ms"]);
    let mut sim = e2e::spawn(&mut cmd);
    // The scenario itself: the broker comes back three seconds after the devices start.
    std::thread::sleep(Duration::from_secs(3));
    let up = mqtt_core::message::unix_now();
    broker.start_again();
    let out = sim.wait_output(Duration::from_secs(30)).unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let delays: Vec<f64> = err
        .lines()
        .filter(|l| l.contains("vehicle_01") && l.contains("retrying in"))
        .filter_map(|l| l.split("retrying in ").nth(1))
        .filter_map(|s| s.split('s').next()?.parse().ok())
        .collect();
    // Bounds 0.2 s to 2 s: the base doubles (0.2, 0.4, 0.8, 1.6, 2) and jitter keeps
    // each delay within [base/2, base], so the fourth is at least four times the first.
    assert!(
        delays.len() >= 4,
        "expected several retries of vehicle_01: {err}"
    );
    assert_eq!(delays[0], 0.2, "{delays:?}");
    assert!(delays[3] >= 0.8, "delays do not grow: {delays:?}");
    assert!(
        delays.iter().all(|d| *d <= 2.0),
        "above the maximum: {delays:?}"
    );
    let msgs = sub.wait_for(6, Duration::from_secs(15));
    let want: BTreeMap<String, Vec<u64>> = ["vehicle_01", "vehicle_02"]
        .iter()
        .map(|d| (d.to_string(), (1..=3).collect()))
        .collect();
    let mut got = seqs(&msgs);
    got.values_mut().for_each(|v| v.dedup());
    assert_eq!(got, want);
    // Readings queued during the outage carry the time of their publish, not of their making.
    for (_, payload) in &msgs {
        let v: serde_json::Value = serde_json::from_str(payload).unwrap();
        assert!(
            v["timestamp"].as_f64().unwrap() >= up,
            "{payload} published before {up}"
        );
    }
}

#[test]
fn invalid_configuration_exits_2_before_connecting() {
    let pki = Pki::new();
    let (crt, _key) = pki.client("c");
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (vec![("MQTT_BROKER_PORT", "abc".into())], "MQTT_BROKER_PORT"),
        (vec![("MQTT_USE_TLS", "maybe".into())], "MQTT_USE_TLS"),
        (
            vec![
                ("MQTT_USE_TLS", "true".into()),
                ("MQTT_CA_CERTS", "/no/such/ca.crt".into()),
            ],
            "MQTT_CA_CERTS",
        ),
        (
            vec![
                ("MQTT_USE_TLS", "true".into()),
                ("MQTT_CA_CERTS", pki.ca_crt.display().to_string()),
                ("MQTT_CERTFILE", crt.display().to_string()),
            ],
            "MQTT_KEYFILE",
        ),
    ];
    // A port where nothing listens: any connection attempt would show up as a retry.
    let port = e2e::free_port().to_string();
    e2e::bin("device-sim");
    for (vars, needle) in cases {
        let mut env = vec![("MQTT_BROKER_PORT".to_string(), port.clone())];
        env = env_with(
            env,
            &vars
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<Vec<_>>(),
        );
        let start = Instant::now();
        let out = run_sim(
            &["--count", "1", "--messages", "1"],
            &env,
            Duration::from_secs(10),
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{vars:?}: {err}");
        assert!(
            err.contains(needle),
            "{vars:?}: stderr lacks {needle}: {err}"
        );
        assert!(
            !err.contains("retrying"),
            "{vars:?} tried to connect: {err}"
        );
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
