//! MQTT_TLS_SETUP.md's quick start without Docker, followed literally: its shell
//! blocks run as they are written (only the port and the binaries' directory are
//! replaced) as the user running the tests, with a real Mosquitto.

use crate::kit::{mode, repo, section, text};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

/// The fenced `sh` blocks of a Markdown text, in order.
fn sh_blocks(md: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in md.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(b), "```") => {
                blocks.push(std::mem::take(b));
                current = None;
            }
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

#[test]
fn tls_guide_quick_start_without_docker_works_as_written() {
    let root = repo();
    let guide = std::fs::read_to_string(root.join("MQTT_TLS_SETUP.md")).unwrap();
    let part = section(&guide, "### Without Docker");
    let blocks = sh_blocks(part);
    assert_eq!(
        blocks.len(),
        2,
        "expected a start block and a stop block:\n{part}"
    );
    let (start, stop) = (&blocks[0], &blocks[1]);
    assert!(start.contains("P=8883") && start.contains("target/release/"));
    // Keys only where git ignores them.
    assert!(start.contains("D=\"$PWD/tls-dev\""), "{start}");
    let ignored = Command::new("git")
        .args(["check-ignore", "-q", "tls-dev/certs/server.key"])
        .current_dir(&root)
        .status()
        .unwrap();
    assert!(ignored.success(), "git does not ignore tls-dev/");
    // The collector before any device: started, then waited for.
    let collector_at = start.find("target/release/collector --db").unwrap();
    let ready_at = start.find("[ ! -f \"$D/collector.ready\" ]").unwrap();
    let devices_at = start.find("target/release/device-sim").unwrap();
    assert!(collector_at < ready_at && ready_at < devices_at, "{start}");

    let bin_dir = e2e::bin("collector")
        .parent()
        .unwrap()
        .display()
        .to_string();
    let port = e2e::free_port();
    let script = format!("set -eu\n{start}\n{stop}")
        .replace("P=8883", &format!("P={port}"))
        .replace("target/release/", &format!("{bin_dir}/"));
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(&script).current_dir(dir.path());
    for (k, _) in std::env::vars() {
        if k.starts_with("MQTT_") || k.starts_with("COLLECTOR_") {
            cmd.env_remove(k);
        }
    }
    // Its own process group, so whatever it started in the background can be stopped.
    cmd.process_group(0);
    let mut child = e2e::spawn(&mut cmd);
    let pgid = child.pid() as i32;
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        child.wait_output(Duration::from_secs(120))
    }));
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
    let out = waited
        .unwrap_or_else(|_| panic!("the guide's commands did not finish within 120 s"))
        .unwrap();
    let d = dir.path().join("tls-dev");
    let log = |f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_default();
    let context = format!(
        "{}\nmosquitto.log:\n{}\ncollector.log:\n{}",
        text(&out),
        log("mosquitto.log"),
        log("collector.log")
    );
    assert!(out.status.success(), "the guide's commands: {context}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("15 messages from 3 devices"),
        "{context}"
    );
    assert_eq!(mode(&d.join("certs/server.key")), 0o600);
    assert!(
        log("mosquitto.log").contains(&format!("on port {port}")),
        "{context}"
    );
    let conn = rusqlite::Connection::open(d.join("collector.db")).unwrap();
    let rows: Vec<(String, i64, i64, i64)> = conn
        .prepare(
            "SELECT device_id, count(*), min(seq), max(seq) FROM telemetry GROUP BY device_id ORDER BY device_id",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        rows,
        ["vehicle_01", "vehicle_02", "vehicle_03"]
            .map(|d| (d.to_string(), 5, 1, 5))
            .to_vec(),
        "{context}"
    );
    assert!(
        !d.join("collector.ready").exists(),
        "the ready file outlived the collector"
    );
}
