//! The harness itself: brokers start with each feature and a real client gets through.

use e2e::{Broker, BrokerConfig, Pki, Subscriber};
use std::process::Command;
use std::time::Duration;

#[test]
fn tls_and_password_broker_passes_a_message_from_mosquitto_pub() {
    let pki = Pki::new();
    let broker = Broker::start(BrokerConfig::new().tls(&pki).user("u", "p"));
    let sub = Subscriber::start_with(&broker, &["t/#"], &["-u", "u", "-P", "p"]);
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            "localhost",
            "-p",
            &broker.tls_port.unwrap().to_string(),
        ])
        .arg("--cafile")
        .arg(&pki.ca_crt)
        .args(["-u", "u", "-P", "p", "-q", "1", "-t", "t/1", "-m", "hello"])
        .status()
        .unwrap();
    assert!(status.success());
    let msgs = sub.wait_for(1, Duration::from_secs(5));
    assert_eq!(msgs, vec![("t/1".to_string(), "hello".to_string())]);
}

#[test]
fn binaries_are_built_on_demand() {
    for name in ["collector", "device-sim"] {
        let out = Command::new(e2e::bin(name)).arg("--help").output().unwrap();
        assert!(out.status.success(), "{name} --help failed");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{name}"
        );
    }
}
