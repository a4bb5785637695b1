//! The stores of issue 11 with the real binaries and real servers: PostgreSQL and
//! InfluxDB 1.x started by testkit on free loopback ports. Exactly once across a
//! collector SIGKILL, a database stopped and started mid-stream, TLS with
//! verify-full, a refused password, and hostile tag values.

use e2e::stack::{expected, stderr, Stack};
use e2e::{command, run_with_timeout, wait_until, BrokerConfig, Pki};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use testkit::influx::InfluxDb;
use testkit::postgres::{Postgres, PostgresConfig};

/// Every (device_id, seq) PostgreSQL holds, and the number of rows.
fn pg_stored(pg: &Postgres) -> (BTreeMap<String, BTreeSet<u64>>, usize) {
    let text = pg
        .try_psql("SELECT device_id || ' ' || seq FROM telemetry")
        .unwrap_or_default();
    let mut out: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut rows = 0;
    for line in text.lines().filter(|l| !l.is_empty()) {
        rows += 1;
        let (id, seq) = line.split_once(' ').unwrap();
        out.entry(id.to_string())
            .or_default()
            .insert(seq.parse().unwrap());
    }
    (out, rows)
}

fn assert_pg_complete(pg: &Postgres, want: &BTreeMap<String, BTreeSet<u64>>) {
    let total: usize = want.values().map(BTreeSet::len).sum();
    assert!(
        wait_until(Duration::from_secs(60), || pg_stored(pg).1 >= total),
        "PostgreSQL holds {} of {total} rows",
        pg_stored(pg).1
    );
    let (got, rows) = pg_stored(pg);
    assert_eq!(&got, want);
    assert_eq!(rows, total, "a reading is stored twice");
}

#[test]
fn postgres_stores_exactly_once_across_a_collector_sigkill() {
    let pg = Postgres::start(PostgresConfig::new());
    let mut stack = Stack::new(BrokerConfig::new());
    let url = pg.url();
    stack.start_collector_with(|c| {
        c.args(["--postgres", &url]);
    });
    let mut sim = stack.sim(&["--count", "3", "--messages", "150", "--interval", "10ms"]);
    assert!(wait_until(Duration::from_secs(30), || pg_stored(&pg).1 >= 100));
    stack.kill_collector();
    let url = pg.url();
    stack.start_collector_with(|c| {
        c.args(["--postgres", &url]);
    });
    let out = sim.wait_output(Duration::from_secs(60)).unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_pg_complete(&pg, &expected(3, |_| 1..=150));
    // Every row names the collector that stored it.
    assert_eq!(
        pg.psql("SELECT DISTINCT collector FROM telemetry"),
        "mqtt-collector"
    );
    let out = stack.stop_collector();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn postgres_stopped_mid_stream_loses_nothing_and_stores_nothing_twice() {
    let mut pg = Postgres::start(PostgresConfig::new());
    let mut stack = Stack::new(BrokerConfig::new());
    let url = pg.url();
    stack.start_collector_with(|c| {
        c.args(["--postgres", &url]);
    });
    let mut sim = stack.sim(&["--count", "3", "--messages", "100", "--interval", "20ms"]);
    assert!(wait_until(Duration::from_secs(30), || pg_stored(&pg).1 >= 50));
    pg.stop();
    std::thread::sleep(Duration::from_secs(2));
    pg.start_again();
    let out = sim.wait_output(Duration::from_secs(90)).unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_pg_complete(&pg, &expected(3, |_| 1..=100));
    let out = stack.stop_collector();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("retrying the batch"), "{err}");
}

#[test]
fn postgres_over_tls_with_verify_full() {
    let pki = Pki::new();
    let pg = Postgres::start(PostgresConfig::new().tls(&pki));
    let mut stack = Stack::new(BrokerConfig::new());
    // The server certificate names localhost: verify-full needs that host name.
    let url = pg
        .url_with(
            "postgres",
            &pg.password,
            "postgres",
            &format!("sslmode=verify-full&sslrootcert={}", pki.ca_crt.display()),
        )
        .replace("@127.0.0.1:", "@localhost:");
    stack.start_collector_with(|c| {
        c.args(["--postgres", &url]);
    });
    let mut sim = stack.sim(&["--count", "2", "--messages", "20", "--interval", "10ms"]);
    assert!(sim
        .wait_output(Duration::from_secs(60))
        .unwrap()
        .status
        .success());
    assert_pg_complete(&pg, &expected(2, |_| 1..=20));
    // One connection per lane (--pipeline), each made when its lane first writes.
    let conns = pg.psql(
        "SELECT count(*) FILTER (WHERE s.ssl) || ' ' || count(*) FILTER (WHERE NOT s.ssl) \
         FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name LIKE 'mqtt-collector%'",
    );
    let (encrypted, plain) = conns.split_once(' ').unwrap();
    assert!(
        encrypted.parse::<u32>().unwrap() >= 1 && plain == "0",
        "the collector's connections, encrypted and not: {conns}"
    );
    stack.stop_collector();
}

#[test]
fn a_wrong_postgres_password_exits_3_without_printing_it() {
    let pg = Postgres::start(PostgresConfig::new());
    let stack = Stack::new(BrokerConfig::new());
    let url = pg.url_with("postgres", "n0t-the-Passw0rd", "postgres", "");
    let out = run_with_timeout(
        command("collector", stack.dir.path(), &stack.env).args(["--postgres", &url]),
        Duration::from_secs(30),
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("password"), "{err}");
    assert!(
        !err.contains("n0t-the-Passw0rd"),
        "the password leaked: {err}"
    );
}

#[test]
fn influxdb_down_and_back_loses_nothing_and_keeps_hostile_tags_in_their_place() {
    let mut influx = InfluxDb::start(None);
    influx.create_db("telemetry");
    let mut stack = Stack::new(BrokerConfig::new());
    let url = influx.url();
    stack.start_collector_with(|c| {
        c.args(["--influx", &url, "--influx-db", "telemetry"]);
    });
    let count = |influx: &InfluxDb| -> u64 {
        let v = influx.query(
            "telemetry",
            "SELECT count(seq) FROM device_data WHERE device_id =~ /vehicle_/",
        );
        v["results"][0]["series"][0]["values"][0][1]
            .as_u64()
            .unwrap_or(0)
    };
    let mut sim = stack.sim(&["--count", "2", "--messages", "80", "--interval", "20ms"]);
    assert!(wait_until(Duration::from_secs(30), || count(&influx) >= 30));
    influx.stop();
    std::thread::sleep(Duration::from_secs(2));
    influx.start_again();
    let out = sim.wait_output(Duration::from_secs(90)).unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        wait_until(Duration::from_secs(30), || count(&influx) == 160),
        "InfluxDB holds {} points of 160",
        count(&influx)
    );
    // A label that would break a line or inject a field stays one tag value.
    let hostile = r#"{"device_id":"evil_1","seq":1,"timestamp":1700000000.25,"speed":1.5,"detection_label":"a b,c=d \"x\" y=1"}"#;
    let out = std::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &stack.broker.plain_port.to_string(),
        ])
        .args(["-q", "1", "-t", "device/data/evil_1", "-m", hostile])
        .output()
        .unwrap();
    assert!(out.status.success());
    let q = "SELECT speed, detection_label FROM device_data WHERE device_id = 'evil_1'";
    assert!(wait_until(Duration::from_secs(20), || {
        influx.query("telemetry", q)["results"][0]["series"].is_array()
    }));
    let v = influx.query("telemetry", q);
    let series = &v["results"][0]["series"][0];
    assert_eq!(series["values"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(series["values"][0][2], "a b,c=d \"x\" y=1", "{v}");
    let fields = influx.query("telemetry", "SHOW FIELD KEYS FROM device_data");
    assert!(
        !fields.to_string().contains("\"y\""),
        "a field was injected: {fields}"
    );
    let out = stack.stop_collector();
    let err = stderr(&out);
    assert!(err.contains("retrying the batch"), "{err}");
}
