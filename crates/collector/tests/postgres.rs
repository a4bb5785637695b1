//! The PostgreSQL store against a real PostgreSQL (testkit starts one per test):
//! schema, the duplicate rules side by side with the SQLite store, a server that
//! stops and comes back, TLS modes, refusals, and `stats` equal to SQLite's.

use collector::stats::{self, Stats};
use collector::store::postgres::{self, PostgresStore};
use collector::store::{
    open_read_only, Record, RejectedRow, SqliteStore, Store, StoreError, SyncMode, TelemetryRow,
    WriteOutcome,
};
use std::time::{Duration, Instant};
use testkit::{Pki, Postgres, PostgresConfig};

fn reading(device: &str, seq: Option<i64>, ts: f64, speed: f64, receive: f64) -> Record {
    let seq_field = seq.map(|s| format!(r#","seq":{s}"#)).unwrap_or_default();
    Record::Telemetry(TelemetryRow {
        device_id: device.into(),
        seq,
        topic: format!("device/data/{device}"),
        publish_ts: Some(ts),
        receive_ts: receive,
        payload: format!(
            r#"{{"device_id":"{device}"{seq_field},"timestamp":{ts},"speed":{speed}}}"#
        ),
    })
}

fn rejected(topic: &str, reason: &str, payload: &[u8]) -> Record {
    Record::Rejected(RejectedRow {
        topic: topic.into(),
        receive_ts: 1_700_000_050.5,
        reason: reason.into(),
        payload: payload.to_vec(),
    })
}

fn outcome(stored: usize, duplicates: usize, rejected: usize) -> WriteOutcome {
    WriteOutcome {
        stored,
        duplicates,
        rejected,
    }
}

/// Every case of contract section 4 in one batch.
fn mixed_batch() -> Vec<Record> {
    let t = 1_700_000_000.0;
    vec![
        reading("a", Some(1), t, 1.0, t + 0.012),
        reading("a", Some(2), t + 1.0, 2.0, t + 1.007),
        // A resend: same reading, a new publish time.
        reading("a", Some(1), t + 5.0, 1.0, t + 5.004),
        // Another reading under a used seq, twice (the second is the same bytes).
        reading("a", Some(2), t + 6.0, 9.5, t + 6.001),
        reading("a", Some(2), t + 6.0, 9.5, t + 6.002),
        reading("a", Some(5), t + 9.0, 5.0, t + 9.25),
        // Seq-less: the same bytes from one device are one message.
        reading("b", None, t, 3.0, t + 0.1),
        reading("b", None, t, 3.0, t + 0.2),
        reading("c", None, t, 3.0, t + 0.003),
        reading("c", Some(3), t + 2.0, 4.0, t + 2.5),
        rejected("device/data/x", "not a JSON object", b"\xff"),
        rejected("device/data/x", "not a JSON object", b"\xff"),
        rejected("device/data/y", "not a JSON object", b"\xff"),
        rejected("device/data/x", "payload exceeds 262144 bytes", b"big"),
    ]
}

fn later_batch() -> Vec<Record> {
    let t = 1_700_000_100.0;
    let mut batch = mixed_batch();
    batch.extend([
        reading("a", Some(3), t, 3.0, t + 0.03),
        // seq 1 again, now with another reading.
        reading("a", Some(1), t, 77.0, t + 0.001),
        reading("b", None, t, 3.5, t + 0.11),
        reading("d", Some(10), t, 1.0, t + 0.5),
    ]);
    batch
}

fn sqlite(dir: &tempfile::TempDir) -> (SqliteStore, std::path::PathBuf) {
    let path = dir.path().join("c.db");
    (SqliteStore::open(&path, SyncMode::Normal).unwrap(), path)
}

fn count(pg: &Postgres, sql: &str) -> i64 {
    pg.psql(sql).parse().unwrap()
}

#[test]
fn schema_is_created_once_and_found_again() {
    let pg = Postgres::start(PostgresConfig::new());
    let mut first = PostgresStore::connect(&pg.url(), "collector-1").unwrap();
    let mut second = PostgresStore::connect(&pg.url(), "collector-2").unwrap();
    assert_eq!(
        pg.psql(
            "select string_agg(tablename, ',' order by tablename) from pg_tables where schemaname = 'public'"
        ),
        "counters,rejected,telemetry"
    );
    let t = 1_700_000_000.0;
    first
        .write_batch(&[reading("a", Some(1), t, 1.0, t)])
        .unwrap();
    second
        .write_batch(&[reading("a", Some(2), t, 1.0, t)])
        .unwrap();
    assert_eq!(
        pg.psql("select string_agg(collector, ',' order by seq) from telemetry"),
        "collector-1,collector-2"
    );
    assert_eq!(
        pg.psql("select payload->>'speed' from telemetry where seq = 1"),
        "1"
    );
    drop((first, second));
    let _third = PostgresStore::connect(&pg.url(), "collector-3").unwrap();
    assert_eq!(count(&pg, "select count(*) from telemetry"), 2);
}

#[test]
fn duplicate_rules_give_the_exact_outcome_and_match_sqlite() {
    let pg = Postgres::start(PostgresConfig::new());
    let mut store = PostgresStore::connect(&pg.url(), "c1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut lite, _) = sqlite(&dir);

    let batch = mixed_batch();
    let out = store.write_batch(&batch).unwrap();
    // Stored: a1 a2 a5 b c c3; rejected: a2's other reading, x, y, x's other payload.
    assert_eq!(out, outcome(6, 4, 4));
    assert_eq!(lite.write_batch(&batch).unwrap(), out);

    // The same batch again (a redelivery): nothing new.
    let again = store.write_batch(&batch).unwrap();
    assert_eq!(again, outcome(0, batch.len(), 0));
    assert_eq!(lite.write_batch(&batch).unwrap(), again);

    let later = later_batch();
    let out = store.write_batch(&later).unwrap();
    assert_eq!(out, outcome(3, 14, 1));
    assert_eq!(lite.write_batch(&later).unwrap(), out);

    assert_eq!(count(&pg, "select count(*) from telemetry"), 9);
    assert_eq!(count(&pg, "select count(*) from rejected"), 5);
    assert_eq!(
        count(&pg, "select value from counters where name = 'duplicates'"),
        4 + 14 + 14
    );
    assert_eq!(
        pg.psql("select reason from rejected where payload_hash is not null and topic = 'device/data/a' order by id limit 1"),
        "seq 2 of device \"a\" is already stored with a different reading (did the device's numbering restart?)"
    );
    // The first of each key is the one kept.
    assert_eq!(
        pg.psql("select payload->>'speed' from telemetry where device_id = 'a' and seq = 2"),
        "2"
    );
    assert_eq!(
        count(&pg, "select count(*) from telemetry where seq is null"),
        3
    );
    assert_eq!(
        count(
            &pg,
            "select count(*) from telemetry where publish_ts is null or collector <> 'c1'"
        ),
        0
    );
}

#[test]
fn two_collectors_writing_the_same_messages_store_each_once() {
    let pg = Postgres::start(PostgresConfig::new());
    let batches: Vec<Vec<Record>> = (0..4)
        .map(|k| {
            (0..200)
                .map(|i| {
                    let seq = (i * 7 + k * 13) % 300 + 1;
                    reading("shared", Some(seq), 1.0 + seq as f64, 1.0, 2.0 + seq as f64)
                })
                .collect()
        })
        .collect();
    let totals: Vec<WriteOutcome> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|c| {
                let (url, batches) = (pg.url(), &batches);
                s.spawn(move || {
                    let mut store = PostgresStore::connect(&url, &format!("c{c}")).unwrap();
                    let mut sum = WriteOutcome::default();
                    for batch in batches {
                        let out = store.write_batch(batch).unwrap();
                        sum.stored += out.stored;
                        sum.duplicates += out.duplicates;
                        sum.rejected += out.rejected;
                    }
                    sum
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let rows = count(&pg, "select count(*) from telemetry");
    assert_eq!(totals.iter().map(|t| t.stored as i64).sum::<i64>(), rows);
    assert_eq!(
        totals.iter().map(|t| t.duplicates).sum::<usize>(),
        2 * 800 - rows as usize
    );
    assert_eq!(
        count(&pg, "select count(distinct seq) from telemetry"),
        rows
    );
}

#[test]
fn a_stopped_server_is_unavailable_and_the_same_batch_is_stored_once_after() {
    let mut pg = Postgres::start(PostgresConfig::new());
    let mut store = PostgresStore::connect(&pg.url(), "c1").unwrap();
    let t = 1_700_000_000.0;
    store
        .write_batch(&[reading("a", Some(1), t, 1.0, t)])
        .unwrap();

    pg.stop();
    let batch: Vec<Record> = (2..12).map(|s| reading("a", Some(s), t, 1.0, t)).collect();
    for _ in 0..2 {
        let e = store.write_batch(&batch).unwrap_err();
        assert!(e.is_transient(), "{e}");
        assert!(
            matches!(
                e,
                StoreError::Unavailable {
                    store: "PostgreSQL",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(!e.to_string().contains(&pg.password), "{e}");
    }
    // A store made while the server is down connects at its first batch.
    let e = PostgresStore::connect(&pg.url(), "c2").err().unwrap();
    assert!(e.is_transient(), "{e}");
    let mut late = PostgresStore::new(&pg.url(), "c2").unwrap();

    pg.start_again();
    assert_eq!(store.write_batch(&batch).unwrap(), outcome(10, 0, 0));
    assert_eq!(late.write_batch(&batch).unwrap(), outcome(0, 10, 0));
    assert_eq!(count(&pg, "select count(*) from telemetry"), 11);

    // Killed and back: the kept connection is dead, the next batch reconnects.
    pg.kill();
    pg.start_again();
    let out = store
        .write_batch(&[reading("a", Some(12), t, 1.0, t)])
        .unwrap();
    assert_eq!(out, outcome(1, 0, 0));
}

#[test]
fn a_stalled_server_times_out_as_unavailable() {
    let pg = Postgres::start(PostgresConfig::new());
    let mut store = PostgresStore::connect(&pg.url(), "c1")
        .unwrap()
        .with_timeout(Duration::from_secs(2));
    let t = 1_700_000_000.0;
    let batch = [reading("a", Some(1), t, 1.0, t)];
    pg.pause();
    let started = Instant::now();
    let e = store.write_batch(&batch).unwrap_err();
    let waited = started.elapsed();
    pg.resume();
    assert!(e.is_transient(), "{e}");
    assert!(e.to_string().contains("no answer"), "{e}");
    assert!(waited < Duration::from_secs(8), "{waited:?}");
    assert_eq!(store.write_batch(&batch).unwrap(), outcome(1, 0, 0));
    assert_eq!(count(&pg, "select count(*) from telemetry"), 1);
}

/// The collector builds its stores on an async worker and writes through the
/// store thread: neither may hit tokio's nested-runtime panic.
#[tokio::test]
async fn usable_from_async_code_and_the_store_thread() {
    let pg = Postgres::start(PostgresConfig::new());
    let store = PostgresStore::connect(&pg.url(), "c1").unwrap();
    let worker = collector::store::StoreWorker::spawn(Box::new(store));
    let t = 1_700_000_000.0;
    let out = worker
        .write(vec![reading("a", Some(1), t, 1.0, t)])
        .await
        .unwrap()
        .result
        .unwrap();
    assert_eq!(out, outcome(1, 0, 0));
    drop(worker);
    assert_eq!(postgres::stats::read(&pg.url()).unwrap().total, 1);
    // Dropped on the async worker itself.
    drop(PostgresStore::connect(&pg.url(), "c2").unwrap());
}

#[test]
fn tls_verify_full_works_and_a_wrong_host_name_is_refused() {
    let pki = Pki::new();
    let pg = Postgres::start(PostgresConfig::new().tls(&pki));
    let ca = pki.ca_crt.display().to_string();
    let url = pg.url_with(
        "postgres",
        &pg.password,
        "postgres",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let mut store = PostgresStore::connect(&url, "c1").unwrap();
    let t = 1_700_000_000.0;
    assert_eq!(
        store
            .write_batch(&[reading("a", Some(1), t, 1.0, t)])
            .unwrap(),
        outcome(1, 0, 0)
    );
    assert_eq!(
        pg.psql("select bool_and(ssl) from pg_stat_ssl join pg_stat_activity using (pid) where application_name like 'mqtt-collector%'"),
        "t"
    );

    // A certificate naming only localhost, dialled as 127.0.0.1.
    let local_only = Pki::with_server_names(&["localhost"]);
    let pg = Postgres::start(PostgresConfig::new().tls(&local_only));
    let ca = local_only.ca_crt.display().to_string();
    let with = |params: &str| pg.url_with("postgres", &pg.password, "postgres", params);
    let e = PostgresStore::connect(
        &with(&format!("sslmode=verify-full&sslrootcert={ca}")),
        "c1",
    )
    .err()
    .unwrap();
    assert!(e.is_refusal(), "{e}");
    let text = e.to_string();
    assert!(text.contains("does not name the host"), "{text}");
    assert!(!text.contains(&pg.password), "{text}");
    // verify-ca checks the chain only; require does not check at all.
    PostgresStore::connect(&with(&format!("sslmode=verify-ca&sslrootcert={ca}")), "c1").unwrap();
    PostgresStore::connect(&with("sslmode=require"), "c1").unwrap();
    // Another CA: the chain fails, whatever the name.
    let other = Pki::new();
    let e = PostgresStore::connect(
        &with(&format!(
            "sslmode=verify-ca&sslrootcert={}",
            other.ca_crt.display()
        )),
        "c1",
    )
    .err()
    .unwrap();
    assert!(e.is_refusal(), "{e}");
    assert!(e.to_string().contains("not signed by the CA"), "{e}");
}

#[test]
fn tls_required_of_a_server_without_it_is_refused() {
    let pg = Postgres::start(PostgresConfig::new());
    let url = pg.url_with("postgres", &pg.password, "postgres", "sslmode=require");
    let e = PostgresStore::connect(&url, "c1").err().unwrap();
    assert!(e.is_refusal(), "{e}");
    assert!(e.to_string().contains("does not accept TLS"), "{e}");
    // prefer falls back to plain TCP, as libpq does.
    let url = pg.url_with("postgres", &pg.password, "postgres", "sslmode=prefer");
    PostgresStore::connect(&url, "c1").unwrap();
}

#[test]
fn wrong_credentials_and_missing_databases_are_refused_with_a_fix() {
    let pg = Postgres::start(PostgresConfig::new());
    let secret = "not-the-Password-42";
    let e = PostgresStore::connect(&pg.url_with("postgres", secret, "postgres", ""), "c1")
        .err()
        .unwrap();
    assert!(
        matches!(
            e,
            StoreError::Refused {
                store: "PostgreSQL",
                ..
            }
        ),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains("password authentication failed for user \"postgres\"")
            && text.contains("check the password in --postgres / COLLECTOR_POSTGRES"),
        "{text}"
    );
    assert!(
        !text.contains(secret) && !format!("{e:?}").contains(secret),
        "{text}"
    );
    assert!(text.contains("postgres:***@127.0.0.1"), "{text}");

    let e = PostgresStore::connect(&pg.url_with("postgres", &pg.password, "nodb", ""), "c1")
        .err()
        .unwrap();
    assert!(e.is_refusal(), "{e}");
    assert!(
        e.to_string().contains("database \"nodb\" does not exist"),
        "{e}"
    );
    assert!(e.to_string().contains("CREATE DATABASE"), "{e}");

    let e = PostgresStore::connect(&pg.url_with("nobody", "pw", "postgres", ""), "c1")
        .err()
        .unwrap();
    assert!(e.is_refusal(), "{e}");

    for bad in [
        "",
        "postgresql://",
        "http://x",
        "postgresql://u:p@h:99999/d",
    ] {
        let e = PostgresStore::connect(bad, "c1").err().unwrap();
        assert!(e.is_refusal(), "{bad}: {e}");
    }
}

#[test]
fn someone_elses_tables_are_refused() {
    let pg = Postgres::start(PostgresConfig::new());
    pg.psql("create table telemetry (id int, reading text)");
    let e = PostgresStore::connect(&pg.url(), "c1").err().unwrap();
    assert!(e.is_refusal(), "{e}");
    assert!(
        e.to_string().contains("table telemetry has no column"),
        "{e}"
    );
}

#[test]
fn stats_equal_the_sqlite_figures() {
    let pg = Postgres::start(PostgresConfig::new());
    let mut store = PostgresStore::connect(&pg.url(), "c1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut lite, path) = sqlite(&dir);
    for batch in [mixed_batch(), mixed_batch(), later_batch()] {
        store.write_batch(&batch).unwrap();
        lite.write_batch(&batch).unwrap();
    }
    drop(lite);
    let want: Stats = stats::read(&open_read_only(&path).unwrap()).unwrap();
    let got = postgres::stats::read(&pg.url()).unwrap();
    assert_eq!(got, want);
    assert!(want.devices[0].gaps == vec![[4, 4]], "{want:?}");
    assert_eq!(stats::render(&got), stats::render(&want));

    let e = postgres::stats::read(&pg.url_with("postgres", &pg.password, "nodb", "")).unwrap_err();
    assert!(e.is_refusal(), "{e}");
    pg.psql("create database empty");
    let e = postgres::stats::read(&pg.url_with("postgres", &pg.password, "empty", "")).unwrap_err();
    assert!(e.to_string().contains("no table telemetry"), "{e}");
}

#[test]
fn every_lane_connects_at_start_and_a_connection_limit_is_refused_with_the_fix() {
    use clap::Parser;
    let pg = Postgres::start(PostgresConfig::new());
    // The tables made by a superuser, used by a role allowed two connections.
    drop(PostgresStore::connect(&pg.url(), "setup").unwrap());
    pg.psql(
        "CREATE ROLE lanes LOGIN PASSWORD 'lanes-pw' CONNECTION LIMIT 2; \
         GRANT SELECT, INSERT, UPDATE ON telemetry, rejected, counters TO lanes; \
         GRANT USAGE ON SEQUENCE telemetry_id_seq, rejected_id_seq TO lanes",
    );
    let url = pg.url_with("lanes", "lanes-pw", "postgres", "");
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join("empty.env");
    std::fs::write(&env, "").unwrap();
    let plan = |pipeline: &str| {
        let cli = collector::cli::Cli::try_parse_from([
            "collector",
            "--env-file",
            env.to_str().unwrap(),
            "--postgres",
            &url,
            "--pipeline",
            pipeline,
        ])
        .unwrap();
        collector::command::prepare_run(cli.run)
    };

    let ok = plan("2").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ok.store.lanes(), 2);
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'lanes'"
        ),
        2,
        "both lanes connected before the collector subscribes"
    );
    drop(ok);

    let deadline = Instant::now() + Duration::from_secs(10);
    while count(
        &pg,
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'lanes'",
    ) > 0
    {
        assert!(
            Instant::now() < deadline,
            "the lanes' connections never closed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let err = plan("4").err().expect("4 lanes exceed the role's limit");
    assert_eq!(err.exit_code(), mqtt_core::exit::PERMANENT, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("too many connections") && text.contains("lower --pipeline"),
        "{text}"
    );
}
