//! Metrics and health (contract section 8, issue 13) with the real binaries: a
//! real Prometheus scrapes the collector and its stored count equals the rows in
//! SQLite; promtool accepts both binaries' /metrics; /readyz follows the broker
//! while /healthz stays up; `collector probe`; an address that cannot be bound.

use e2e::stack::{stderr, Stack};
use e2e::{command, free_port, run_with_timeout, wait_until, BrokerConfig};
use std::time::Duration;
use testkit::prometheus::{http_get, promtool_check_metrics, Prometheus};

fn url(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}{path}")
}

/// Starts the stack's collector with a metrics endpoint; returns its port.
fn collector_with_metrics(stack: &mut Stack) -> u16 {
    let port = free_port();
    stack.start_collector_with(|c| {
        c.args(["--metrics-addr", &format!("127.0.0.1:{port}")]);
    });
    port
}

#[test]
fn prometheus_sees_the_stored_count_that_sqlite_holds() {
    let mut stack = Stack::new(BrokerConfig::new());
    let port = collector_with_metrics(&mut stack);
    let prometheus = Prometheus::start(&[format!("127.0.0.1:{port}")]);
    let mut sim = stack.sim(&["--count", "3", "--messages", "40", "--interval", "10ms"]);
    let out = sim.wait_output(Duration::from_secs(60)).unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stack.wait_stored(120, Duration::from_secs(30)));
    let rows = stack.stored().1;
    assert_eq!(rows, 120);

    let mut seen = None;
    let agreed = wait_until(Duration::from_secs(30), || {
        seen = prometheus.value("mqtt_collector_messages_stored_total");
        seen == Some(rows as f64)
    });
    assert!(
        agreed,
        "Prometheus says {seen:?} stored, SQLite holds {rows}; log:\n{}",
        prometheus.log()
    );
    assert_eq!(
        prometheus.value("mqtt_collector_connected"),
        Some(1.0),
        "connected"
    );
    assert_eq!(
        prometheus.value("sum(mqtt_collector_messages_rejected_total)"),
        Some(0.0)
    );
    let received = prometheus
        .value("mqtt_collector_messages_received_total")
        .unwrap();
    assert!(received >= rows as f64, "received {received} < {rows}");
    assert!(
        prometheus
            .value("mqtt_collector_commit_duration_seconds_count")
            .unwrap()
            >= 1.0
    );
    assert_eq!(
        prometheus.value("mqtt_collector_publish_to_commit_seconds_count"),
        Some(rows as f64)
    );

    let (status, text) = http_get(&url(port, "/metrics"));
    assert_eq!(status, 200);
    promtool_check_metrics(&text).unwrap_or_else(|e| panic!("promtool: {e}\n{text}"));
    for forbidden in ["vehicle_01", "password", "speed"] {
        assert!(
            !text.contains(forbidden),
            "{forbidden} in /metrics:\n{text}"
        );
    }
    let out = stack.stop_collector();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn readiness_follows_the_broker_while_health_stays_up() {
    let mut stack = Stack::new(BrokerConfig::new());
    let port = collector_with_metrics(&mut stack);
    let ready = url(port, "/readyz");
    let health = url(port, "/healthz");
    assert!(wait_until(Duration::from_secs(15), || http_get(&ready).0 == 200));
    let probe_dir = tempfile::tempdir().unwrap();
    let probe = |u: &str| {
        run_with_timeout(
            command("collector", probe_dir.path(), &[]).args(["probe", u]),
            Duration::from_secs(20),
        )
    };
    let out = probe(&ready);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ready\n");

    stack.broker.kill();
    let mut last = (0, String::new());
    let down = wait_until(Duration::from_secs(15), || {
        last = http_get(&ready);
        last.0 == 503
    });
    assert!(down, "/readyz still answers {last:?} with the broker dead");
    assert!(last.1.contains("not connected"), "{}", last.1);
    assert_eq!(http_get(&health).0, 200);
    let out = probe(&ready);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("503"), "{}", stderr(&out));
    let (_, text) = http_get(&url(port, "/metrics"));
    assert!(text.contains("mqtt_collector_connected 0"), "{text}");

    stack.broker.start_again();
    let back = wait_until(Duration::from_secs(30), || {
        assert_eq!(http_get(&health).0, 200, "/healthz while reconnecting");
        http_get(&ready).0 == 200
    });
    assert!(back, "/readyz did not come back: {:?}", http_get(&ready));
    let (_, text) = http_get(&url(port, "/metrics"));
    assert!(text.contains("mqtt_collector_connected 1"), "{text}");
    assert!(text.contains("mqtt_collector_reconnects_total 1"), "{text}");
    let out = stack.stop_collector();
    assert!(out.status.success(), "{}", stderr(&out));

    // Nothing listens any more: the probe fails without an answer.
    let out = probe(&ready);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let out = probe("ftp://127.0.0.1/readyz");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn device_sim_is_ready_once_a_device_connects_and_promtool_accepts_its_metrics() {
    let mut stack = Stack::new(BrokerConfig::new());
    stack.broker.stop();
    let port = free_port();
    let mut sim = stack.sim(&[
        "--count",
        "2",
        "--interval",
        "50ms",
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
    ]);
    let ready = url(port, "/readyz");
    let mut last = (0, String::new());
    assert!(wait_until(Duration::from_secs(15), || {
        last = http_get(&ready);
        last.0 != 0
    }));
    assert_eq!(last.0, 503, "{last:?}");
    assert!(last.1.contains("no device is connected"), "{}", last.1);
    assert_eq!(http_get(&url(port, "/healthz")).0, 200);

    stack.broker.start_again();
    assert!(
        wait_until(Duration::from_secs(30), || http_get(&ready).0 == 200),
        "{:?}",
        http_get(&ready)
    );
    let mut text = String::new();
    assert!(wait_until(Duration::from_secs(15), || {
        text = http_get(&url(port, "/metrics")).1;
        text.contains("device_sim_devices_connected 2")
            && !text.contains("device_sim_messages_acked_total 0\n")
    }));
    promtool_check_metrics(&text).unwrap_or_else(|e| panic!("promtool: {e}\n{text}"));
    for name in [
        "device_sim_messages_generated_total",
        "device_sim_messages_evicted_total",
        "device_sim_queue_depth",
        "device_sim_reconnects_total",
        "device_sim_publish_to_ack_seconds_bucket",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    assert!(
        !text.contains("vehicle_01"),
        "a device id as a label:\n{text}"
    );
    sim.signal(libc::SIGTERM);
    let out = sim.wait_output(Duration::from_secs(20)).unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_metrics_address_that_cannot_be_bound_exits_2_naming_the_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    for (bin, args) in [
        ("collector", vec!["--db", "c.db", "--metrics-addr", &addr]),
        (
            "device-sim",
            vec!["--queue", "q.db", "--metrics-addr", &addr],
        ),
        (
            "collector",
            vec!["--db", "c.db", "--metrics-addr", "no-port"],
        ),
    ] {
        let out = run_with_timeout(
            command(bin, dir.path(), &[]).args(&args),
            Duration::from_secs(20),
        );
        assert_eq!(
            out.status.code(),
            Some(2),
            "{bin} {args:?}: {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains("--metrics-addr"), "{}", stderr(&out));
    }
    // The variable is read too.
    let env = vec![("COLLECTOR_METRICS_ADDR".to_string(), addr.clone())];
    let out = run_with_timeout(
        command("collector", dir.path(), &env).args(["--db", "c.db"]),
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("COLLECTOR_METRICS_ADDR"),
        "{}",
        stderr(&out)
    );
}
