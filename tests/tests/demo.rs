//! scripts/demo.sh, the README's quick start, run for real: its own Mosquitto with
//! TLS and passwords, the collector, and device-sim once the collector is ready.

use crate::kit::{repo, text};
use e2e::{free_port, run_with_timeout};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

/// `scripts/demo.sh` with the test's binaries, `dir` as DEMO_DIR, and `extra` set;
/// nothing of the developer's MQTT_* or COLLECTOR_* settings is inherited.
fn demo(dir: &Path, extra: &[(&str, &str)]) -> Output {
    let bin_dir = e2e::bin("collector").parent().unwrap().to_path_buf();
    assert!(bin_dir.join("device-sim").is_file());
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("scripts/demo.sh")).current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("MQTT_") || k.starts_with("COLLECTOR_") || k.starts_with("DEMO_") {
            cmd.env_remove(&k);
        }
    }
    cmd.env("DEMO_BIN", &bin_dir)
        .env("DEMO_DIR", dir.join("demo"))
        .env("DEMO_READY_TIMEOUT", "30");
    cmd.envs(extra.iter().copied());
    run_with_timeout(&mut cmd, Duration::from_secs(180))
}

/// The `seq` values stored per device.
fn seqs_in(db: &Path) -> BTreeMap<String, Vec<i64>> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("{}: {e}", db.display()));
    let mut stmt = conn
        .prepare("SELECT device_id, seq FROM telemetry ORDER BY device_id, seq")
        .unwrap();
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .unwrap();
    for row in rows {
        let (d, s) = row.unwrap();
        out.entry(d).or_default().push(s);
    }
    out
}

#[test]
fn demo_script_delivers_every_reading_of_every_device_from_seq_1() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let metrics_port = free_port().to_string();
    let out = demo(
        tmp.path(),
        &[
            ("DEMO_PORT", &port),
            ("DEMO_DEVICES", "3"),
            ("DEMO_MESSAGES", "5"),
            ("DEMO_METRICS_PORT", &metrics_port),
        ],
    );
    assert!(out.status.success(), "demo.sh: {}", text(&out));
    let d = tmp.path().join("demo");
    let seqs = seqs_in(&d.join("collector.db"));
    let want: BTreeMap<String, Vec<i64>> = ["vehicle_01", "vehicle_02", "vehicle_03"]
        .iter()
        .map(|id| (id.to_string(), (1..=5).collect()))
        .collect();
    assert_eq!(
        seqs,
        want,
        "stored seq per device (seq 1 lost = devices started before the collector subscribed): {}",
        text(&out)
    );
    // The stats printed at the end, and the collector's log in its own file.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("15 messages from 3 devices"),
        "no stats at the end: {}",
        text(&out)
    );
    let log = std::fs::read_to_string(d.join("collector.log")).unwrap();
    assert!(
        log.contains("subscribed"),
        "the collector's log is not in demo/collector.log: {log}"
    );
    // The collector served its metrics where the script says.
    let metrics = format!("http://127.0.0.1:{metrics_port}");
    assert!(
        stdout.contains(&format!("collector metrics: {metrics}/metrics")),
        "the demo does not say where the metrics are: {}",
        text(&out)
    );
    assert!(
        log.contains(&format!("metrics and health endpoint on {metrics}")),
        "the collector did not serve metrics on {metrics}: {log}"
    );
    assert!(
        !d.join("collector.ready").exists(),
        "the ready file outlived the collector"
    );

    // The README's export commands, run on this database.
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let db = d.join("collector.db");
    let csv_line = readme
        .lines()
        .find(|l| {
            l.starts_with("sqlite3 -header -csv demo/collector.db") && l.contains("json_extract")
        })
        .expect("README gives a sqlite3 command with json_extract");
    // The query itself runs on the bundled SQLite, the same engine the collector uses.
    let sql = csv_line
        .split_once(" \"")
        .and_then(|(_, rest)| rest.rsplit_once('"'))
        .map(|(sql, _)| sql.to_string())
        .expect("the sqlite3 command quotes its query");
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn.prepare(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let header: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
    assert_eq!(&header[..2], &["device_id", "seq"], "{sql}");
    let speed = header
        .iter()
        .position(|h| h == "speed")
        .expect("a speed column");
    let rows: Vec<(Option<f64>, Option<String>)> = stmt
        .query_map([], |r| Ok((r.get(speed)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 15, "{sql}");
    for (speed, published) in &rows {
        assert!(speed.is_some(), "json_extract gave no speed: {rows:?}");
        assert!(
            published.as_deref().is_some_and(|p| p.starts_with("20")),
            "publish time not a date: {rows:?}"
        );
    }
    // The whole command line, where the sqlite3 shell is installed (README
    // Prerequisites; .ci/run does not install it): said by name when it is not.
    let has_sqlite3 = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("sqlite3").is_file()));
    if has_sqlite3 {
        let cmd_line = csv_line
            .replace("demo/collector.db", &db.display().to_string())
            .split(" > ")
            .next()
            .unwrap()
            .to_string();
        let out = run_with_timeout(
            Command::new("sh").arg("-c").arg(&cmd_line),
            Duration::from_secs(30),
        );
        assert!(out.status.success(), "{cmd_line}: {}", text(&out));
        let csv = String::from_utf8_lossy(&out.stdout);
        let mut lines = csv.lines();
        assert_eq!(lines.next().unwrap(), header.join(","), "{csv}");
        assert_eq!(lines.count(), 15, "{csv}");
    } else {
        eprintln!("SKIPPED in demo: sqlite3 is not installed, README's sqlite3 command line not run (its query was)");
    }
    let stats_line = readme
        .lines()
        .find(|l| l.contains("collector stats --db demo/collector.db --json"))
        .expect("README gives collector stats --json");
    let bin_dir = e2e::bin("collector")
        .parent()
        .unwrap()
        .display()
        .to_string();
    let cmd_line = stats_line
        .replace("target/release", &bin_dir)
        .replace("demo/collector.db", &db.display().to_string());
    let out = run_with_timeout(
        Command::new("sh").arg("-c").arg(&cmd_line),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{cmd_line}: {}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["total"], 15, "{json}");
}

#[test]
fn demo_script_fails_when_its_port_is_taken() {
    let tmp = tempfile::tempdir().unwrap();
    // Another listener on the port (as another Mosquitto would be).
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = other.local_addr().unwrap().port().to_string();
    let out = demo(
        tmp.path(),
        &[
            ("DEMO_PORT", &port),
            ("DEMO_DEVICES", "1"),
            ("DEMO_MESSAGES", "1"),
        ],
    );
    assert!(
        !out.status.success(),
        "demo.sh succeeded with its port taken: {}",
        text(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("port {port}")) && err.contains("in use"),
        "no clear message: {}",
        text(&out)
    );
    assert!(
        !tmp.path().join("demo/collector.db").exists(),
        "the collector ran against the other listener"
    );
}
