//! Scale-out (issue 12) with the real binaries: collectors in one shared-subscription
//! group on one Mosquitto, all writing to one real PostgreSQL. A member SIGKILLed
//! mid-stream and brought back, every (device_id, seq) stored once, every member did
//! part of the work; `collector drain` retires a member without stranding its queue.

use e2e::stack::{expected, stderr, Stack};
use e2e::{command, spawn, wait_until, BrokerConfig, ChildGuard};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;
use testkit::postgres::{Postgres, PostgresConfig};

fn member(stack: &Stack, pg: &Postgres, id: &str, ready: &Path) -> ChildGuard {
    let env = e2e::env_with(stack.env.clone(), &[("MQTT_CLIENT_ID", id)]);
    let mut c = spawn(
        command("collector", stack.dir.path(), &env)
            .args(["--share-group", "g", "--postgres", &pg.url()])
            .args(["--status-interval", "1s", "--ready-file"])
            .arg(ready),
    );
    assert!(
        wait_until(Duration::from_secs(20), || ready.exists()
            || !c.is_running()),
        "{id} never became ready"
    );
    assert!(
        c.is_running(),
        "{id} exited: {:?}",
        c.wait_output(Duration::from_secs(1)).map(|o| stderr(&o))
    );
    c
}

fn rows(pg: &Postgres) -> usize {
    pg.try_psql("SELECT count(*) FROM telemetry")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// (device_id -> seqs) and the number of rows; rows per collector.
fn stored(
    pg: &Postgres,
) -> (
    BTreeMap<String, BTreeSet<u64>>,
    usize,
    BTreeMap<String, usize>,
) {
    let mut by_device: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut n = 0;
    for line in pg
        .psql("SELECT device_id || ' ' || seq FROM telemetry")
        .lines()
    {
        let (d, s) = line.split_once(' ').unwrap();
        by_device
            .entry(d.into())
            .or_default()
            .insert(s.parse().unwrap());
        n += 1;
    }
    let by_member = pg
        .psql("SELECT collector || ' ' || count(*) FROM telemetry GROUP BY collector")
        .lines()
        .map(|l| {
            let (c, n) = l.split_once(' ').unwrap();
            (c.to_string(), n.parse().unwrap())
        })
        .collect();
    (by_device, n, by_member)
}

#[test]
fn three_members_one_killed_and_back_store_every_reading_once() {
    let pg = Postgres::start(PostgresConfig::new());
    let stack = Stack::new(BrokerConfig::new().conf("max_queued_messages 100000"));
    let ready = |i: usize| stack.dir.path().join(format!("ready-{i}"));
    let mut members: Vec<ChildGuard> = (1..=3)
        .map(|i| member(&stack, &pg, &format!("c{i}"), &ready(i)))
        .collect();
    let mut sim = stack.sim(&["--count", "3", "--messages", "200", "--interval", "10ms"]);
    assert!(wait_until(Duration::from_secs(30), || rows(&pg) >= 120));
    members[1].kill();
    // Its share keeps being queued to its persistent session meanwhile.
    assert!(wait_until(Duration::from_secs(30), || rows(&pg) >= 300));
    std::fs::remove_file(ready(2)).ok();
    members[1] = member(&stack, &pg, "c2", &ready(2));
    let out = sim.wait_output(Duration::from_secs(90)).unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        wait_until(Duration::from_secs(60), || rows(&pg) >= 600),
        "PostgreSQL holds {} of 600 rows",
        rows(&pg)
    );
    let (by_device, n, by_member) = stored(&pg);
    assert_eq!(by_device, expected(3, |_| 1..=200));
    assert_eq!(n, 600, "a reading was stored twice");
    assert_eq!(
        by_member.len(),
        3,
        "not every member did part of the work: {by_member:?}"
    );
    eprintln!("FAULT share group, member c2 SIGKILLed and back: generated 600, stored {n}, by member {by_member:?}");
    for m in &mut members {
        m.signal(libc::SIGTERM);
        assert!(m
            .wait_output(Duration::from_secs(20))
            .unwrap()
            .status
            .success());
    }
}

#[test]
fn drain_retires_a_member_without_stranding_its_queue() {
    let pg = Postgres::start(PostgresConfig::new());
    let stack = Stack::new(BrokerConfig::new().conf("max_queued_messages 100000"));
    let (r1, r2) = (stack.dir.path().join("r1"), stack.dir.path().join("r2"));
    let mut c1 = member(&stack, &pg, "c1", &r1);
    let mut c2 = member(&stack, &pg, "c2", &r2);
    // c2 stops; its persistent session keeps receiving its share.
    c2.signal(libc::SIGTERM);
    assert!(c2
        .wait_output(Duration::from_secs(20))
        .unwrap()
        .status
        .success());
    let mut sim = stack.sim(&["--count", "2", "--messages", "50", "--interval", "10ms"]);
    assert!(sim
        .wait_output(Duration::from_secs(60))
        .unwrap()
        .status
        .success());
    assert!(wait_until(Duration::from_secs(10), || rows(&pg) >= 40));
    std::thread::sleep(Duration::from_millis(500));
    let before = rows(&pg);
    assert!(
        before < 100,
        "nothing was queued for the stopped member ({before} of 100 stored)"
    );

    let env = e2e::env_with(stack.env.clone(), &[("MQTT_CLIENT_ID", "c2")]);
    let out = e2e::run_with_timeout(
        command("collector", stack.dir.path(), &env).args([
            "drain",
            "--share-group",
            "g",
            "--postgres",
            &pg.url(),
        ]),
        Duration::from_secs(60),
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("no longer keeps a session"), "{err}");
    let (by_device, n, by_member) = stored(&pg);
    assert_eq!(by_device, expected(2, |_| 1..=50), "{err}");
    assert_eq!(n, 100);
    let drained = by_member.get("c2").copied().unwrap_or(0);
    assert!(drained > 0, "{by_member:?}");

    // The group is c1 alone now: nothing more is queued for c2. (The simulator's
    // queue file keeps the numbering: this run sends seq 51 to 110.)
    let mut sim = stack.sim(&["--count", "2", "--messages", "60", "--interval", "10ms"]);
    assert!(sim
        .wait_output(Duration::from_secs(60))
        .unwrap()
        .status
        .success());
    assert!(wait_until(Duration::from_secs(30), || rows(&pg) >= 220));
    let (by_device, n, by_member) = stored(&pg);
    assert_eq!(by_device, expected(2, |_| 1..=110));
    assert_eq!(n, 220);
    assert_eq!(
        by_member.get("c2").copied().unwrap_or(0),
        drained,
        "{by_member:?}"
    );
    c1.signal(libc::SIGTERM);
    assert!(c1
        .wait_output(Duration::from_secs(20))
        .unwrap()
        .status
        .success());
}
