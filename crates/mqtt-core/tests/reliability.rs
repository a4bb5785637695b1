//! Reliability of the connection driver against an in-process FAKE broker (named
//! so: it produces on demand the faults a real Mosquitto does not; it lives in
//! `crates/testkit/src/fake_broker/scripted.rs`), in the manner of rumqttc's own
//! `tests/reliability.rs`.

use mqtt_core::connection::{next_event, ConnectionOptions};
use mqtt_core::{spawn_connection, ConnectionEvent, Env, Settings};
use std::time::{Duration, Instant};
use testkit::fake_broker::{FakeBroker, OnSubscribe, Plan};
use tokio_util::sync::CancellationToken;

fn settings(port: u16, extra: &[(&str, &str)]) -> Settings {
    let port = port.to_string();
    let mut pairs = vec![
        ("MQTT_BROKER_HOST", "127.0.0.1"),
        ("MQTT_BROKER_PORT", port.as_str()),
        ("MQTT_RECONNECT_MIN_DELAY", "0.05"),
        ("MQTT_RECONNECT_MAX_DELAY", "5"),
        ("MQTT_KEEPALIVE", "5"),
    ];
    pairs.extend_from_slice(extra);
    Settings::from_env(&Env::from_pairs(pairs)).unwrap()
}

fn subscriber(filters: &[&str]) -> ConnectionOptions {
    ConnectionOptions {
        subscriptions: filters.iter().map(|f| f.to_string()).collect(),
        ..ConnectionOptions::new("reliability-test")
    }
}

/// The names of the events until `until` matches one, releasing every `Disconnected`.
async fn events_until(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<ConnectionEvent>,
    until: impl Fn(&ConnectionEvent) -> bool,
) -> Vec<String> {
    let mut names = Vec::new();
    loop {
        let ev = next_event(events, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("no event within 10 s; so far {names:?}"));
        let done = until(&ev);
        names.push(match &ev {
            ConnectionEvent::Connected { session_present } => {
                format!("Connected({session_present})")
            }
            ConnectionEvent::Subscribed => "Subscribed".into(),
            ConnectionEvent::Disconnected { .. } => "Disconnected".into(),
            ConnectionEvent::Failed(f) => format!("Failed({f})"),
            ConnectionEvent::Message(_) => "Message".into(),
            ConnectionEvent::Sent(_) => "Sent".into(),
            ConnectionEvent::Acked(_) => "Acked".into(),
        });
        drop(ev);
        if done {
            return names;
        }
    }
}

#[tokio::test]
async fn the_subscription_is_renewed_until_the_broker_confirms_it() {
    // Connection 1 is cut at the SUBSCRIBE; connection 2 claims the session the
    // broker created on connection 1, which holds no subscription.
    let broker = FakeBroker::start(|n| Plan {
        on_subscribe: if n == 1 {
            OnSubscribe::Cut
        } else {
            OnSubscribe::Grant
        },
        ..Plan::normal(n > 1)
    })
    .await;
    let cancel = CancellationToken::new();
    let mut conn = spawn_connection(
        &settings(broker.port, &[]),
        subscriber(&["device/data/+"]),
        cancel.clone(),
    );
    let names = events_until(&mut conn.events, |e| {
        matches!(e, ConnectionEvent::Subscribed | ConnectionEvent::Failed(_))
    })
    .await;
    assert_eq!(
        names,
        [
            "Connected(false)",
            "Disconnected",
            "Connected(true)",
            "Subscribed"
        ]
    );
    let seen = broker.seen();
    assert_eq!(
        seen.subscribes,
        [
            (1, vec!["device/data/+".to_string()]),
            (2, vec!["device/data/+".to_string()])
        ]
    );
    cancel.cancel();
}

#[tokio::test]
async fn a_confirmed_subscription_is_not_renewed_on_a_resumed_session() {
    let broker = FakeBroker::start(|n| Plan {
        close_after_suback: n == 1,
        ..Plan::normal(n > 1)
    })
    .await;
    let cancel = CancellationToken::new();
    let mut conn = spawn_connection(
        &settings(broker.port, &[]),
        subscriber(&["a/+"]),
        cancel.clone(),
    );
    let names = events_until(&mut conn.events, |e| {
        matches!(
            e,
            ConnectionEvent::Connected {
                session_present: true
            }
        )
    })
    .await;
    assert_eq!(
        names,
        [
            "Connected(false)",
            "Subscribed",
            "Disconnected",
            "Connected(true)"
        ]
    );
    // The resumed session still holds the confirmed subscription: ready at once.
    let names = events_until(&mut conn.events, |e| {
        matches!(e, ConnectionEvent::Subscribed)
    })
    .await;
    assert_eq!(names, ["Subscribed"]);
    assert_eq!(broker.seen().subscribes.len(), 1);
    cancel.cancel();
}

#[tokio::test]
async fn a_refused_subscription_is_a_permanent_failure_naming_filter_and_user() {
    let broker = FakeBroker::start(|_| Plan {
        on_subscribe: OnSubscribe::Refuse,
        ..Plan::normal(false)
    })
    .await;
    let mut conn = spawn_connection(
        &settings(
            broker.port,
            &[("MQTT_USERNAME", "reader"), ("MQTT_PASSWORD", "pw")],
        ),
        subscriber(&["secret/+"]),
        CancellationToken::new(),
    );
    let names = events_until(&mut conn.events, |e| {
        matches!(e, ConnectionEvent::Subscribed | ConnectionEvent::Failed(_))
    })
    .await;
    let last = names.last().unwrap();
    assert!(
        last.starts_with("Failed") && last.contains("\"secret/+\"") && last.contains("\"reader\""),
        "{names:?}"
    );
    assert!(!last.contains("pw\""), "{last}");
    // The task ends after a permanent failure.
    tokio::time::timeout(Duration::from_secs(5), conn.task)
        .await
        .expect("the connection task ends")
        .unwrap();
}

#[tokio::test]
async fn a_broker_that_drops_every_new_connection_is_retried_with_growing_delays() {
    // What two clients with one client id do to each other: each is accepted, then dropped.
    let broker = FakeBroker::start(|_| Plan {
        close_after_connack: true,
        ..Plan::normal(false)
    })
    .await;
    let cancel = CancellationToken::new();
    let mut conn = spawn_connection(
        &settings(broker.port, &[]),
        ConnectionOptions::new("twin"),
        cancel.clone(),
    );
    let start = Instant::now();
    let mut gaps = Vec::new();
    let mut last = None;
    while start.elapsed() < Duration::from_secs(3) {
        match next_event(&mut conn.events, Duration::from_secs(3)).await {
            Some(ConnectionEvent::Connected { .. }) => {
                let now = Instant::now();
                if let Some(prev) = last.replace(now) {
                    gaps.push(now - prev);
                }
            }
            Some(_) => {}
            None => break,
        }
    }
    cancel.cancel();
    // Reset at every CONNACK, the delay would stay at the 50 ms minimum (about 60
    // connects in 3 s); doubling, it passes 1.6 s by the seventh attempt.
    let connects = broker.seen().connects;
    assert!(connects <= 8, "{connects} connects in 3 s; gaps {gaps:?}");
    assert!(
        gaps.windows(2).filter(|w| w[1] > w[0]).count() >= 2,
        "the delays do not grow: {gaps:?}"
    );
}

#[tokio::test]
async fn events_keep_their_order_around_a_reconnect() {
    let broker = FakeBroker::start(|n| Plan {
        close_after_connack: n == 1,
        ..Plan::normal(n > 1)
    })
    .await;
    let cancel = CancellationToken::new();
    let mut conn = spawn_connection(
        &settings(broker.port, &[]),
        subscriber(&["t/+"]),
        cancel.clone(),
    );
    let names = events_until(&mut conn.events, |e| {
        matches!(e, ConnectionEvent::Subscribed)
    })
    .await;
    // Dropped before its SUBACK, so connection 2 subscribes again although it resumes a session.
    assert_eq!(
        names,
        [
            "Connected(false)",
            "Disconnected",
            "Connected(true)",
            "Subscribed"
        ]
    );
    assert_eq!(broker.seen().subscribes.len(), 1);
    cancel.cancel();
}

/// A FAKE TLS listener: answers whatever it is sent with a fatal TLS alert
/// (protocol_version), as RabbitMQ's TLS port does to a plain CONNECT.
async fn tls_alert_listener() -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46])
                    .await;
            });
        }
    });
    port
}

/// A FAKE plain listener that never answers, as amqtt's does to a TLS ClientHello.
async fn silent_listener() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    port
}

async fn first_disconnect_reason(settings: &Settings) -> String {
    let cancel = CancellationToken::new();
    let mut conn = spawn_connection(
        settings,
        ConnectionOptions::new("wrong-port"),
        cancel.clone(),
    );
    let reason = loop {
        match next_event(&mut conn.events, Duration::from_secs(20)).await {
            Some(ConnectionEvent::Disconnected { reason, .. }) => break reason,
            Some(ConnectionEvent::Failed(f)) => break f.to_string(),
            Some(_) => {}
            None => panic!("no failure within 20 s"),
        }
    };
    cancel.cancel();
    reason
}

#[tokio::test]
async fn a_plain_client_at_a_tls_port_is_told_at_once() {
    let port = tls_alert_listener().await;
    let reason = first_disconnect_reason(&settings(port, &[])).await;
    assert!(reason.contains("MQTT_USE_TLS=true"), "{reason}");
}

#[tokio::test]
async fn a_tls_client_at_a_silent_plain_port_is_told_on_the_first_timeout() {
    let port = silent_listener().await;
    let dir = tempfile::tempdir().unwrap();
    let set = mqtt_core::certgen::DevCertificates::generate(&[], &[], 1).unwrap();
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, &set.ca.cert_pem).unwrap();
    let s = settings(
        port,
        &[
            ("MQTT_USE_TLS", "true"),
            ("MQTT_CA_CERTS", ca.to_str().unwrap()),
            ("MQTT_KEEPALIVE", "1"),
        ],
    );
    let started = Instant::now();
    let reason = first_disconnect_reason(&s).await;
    assert!(
        reason.contains("TLS listener") && reason.contains(&format!("port {port}")),
        "{reason}"
    );
    // The connection timeout is the keepalive, at least 5 s.
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[tokio::test]
async fn an_ack_read_together_with_the_end_of_the_connection_comes_before_disconnected() {
    let broker = FakeBroker::start(|n| Plan {
        close_after_puback: n == 1,
        ..Plan::normal(n > 1)
    })
    .await;
    let cancel = CancellationToken::new();
    let mut conn = spawn_connection(
        &settings(broker.port, &[]),
        ConnectionOptions::new("ack-then-close"),
        cancel.clone(),
    );
    let names = events_until(&mut conn.events, |e| {
        matches!(e, ConnectionEvent::Connected { .. })
    })
    .await;
    assert_eq!(names, ["Connected(false)"]);
    conn.client
        .try_publish("t/1", rumqttc::QoS::AtLeastOnce, false, b"{}".to_vec())
        .unwrap();
    let names = events_until(&mut conn.events, |e| {
        matches!(e, ConnectionEvent::Disconnected { .. })
    })
    .await;
    // The PUBACK belongs to the old connection: seen after, its packet id would
    // be paired with a publish of the next one.
    assert_eq!(names, ["Sent", "Acked", "Disconnected"]);
    assert_eq!(broker.seen().publishes, [1]);
    cancel.cancel();
}

#[tokio::test]
async fn a_packet_id_collision_does_not_hang_the_next_connection() {
    use std::collections::{BTreeMap, HashMap, VecDeque};
    // Connection 1 holds the first PUBACK back, so the fourth publish reuses its
    // packet id (inflight 3) and rumqttc parks it; then the held PUBACK and the end
    // of the connection arrive together.
    let broker = tokio::task::spawn_blocking(testkit::fake_broker::OutOfOrderBroker::start)
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let opts = ConnectionOptions {
        inflight: 3,
        ..ConnectionOptions::new("collision")
    };
    let mut conn = spawn_connection(&settings(broker.port, &[]), opts, cancel.clone());
    let mut unacked: BTreeMap<u64, Vec<u8>> = (1..=4)
        .map(|seq| (seq, format!(r#"{{"seq":{seq}}}"#).into_bytes()))
        .collect();
    let mut written: VecDeque<u64> = VecDeque::new();
    let mut in_flight: HashMap<u16, u64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !unacked.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = next_event(&mut conn.events, left)
            .await
            .unwrap_or_else(|| panic!("stuck with {unacked:?} unacknowledged"));
        match event {
            ConnectionEvent::Connected { .. } => {
                for (seq, payload) in &unacked {
                    conn.client
                        .try_publish(
                            "device/data/c",
                            rumqttc::QoS::AtLeastOnce,
                            false,
                            payload.clone(),
                        )
                        .unwrap();
                    written.push_back(*seq);
                }
            }
            ConnectionEvent::Sent(pkid) => {
                if let Some(seq) = written.pop_front() {
                    in_flight.insert(pkid, seq);
                }
            }
            ConnectionEvent::Acked(pkid) => {
                if let Some(seq) = in_flight.remove(&pkid) {
                    unacked.remove(&seq);
                }
            }
            ConnectionEvent::Disconnected { resume, .. } => {
                written.clear();
                in_flight.clear();
                drop(resume);
            }
            _ => {}
        }
    }
    cancel.cancel();
    assert_eq!(broker.acked(), (1..=4).collect());
    assert!(
        broker.later_publishes() >= 1,
        "nothing reached the second connection"
    );
}
