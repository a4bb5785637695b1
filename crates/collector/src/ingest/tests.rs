//! The ingest loop without a broker: connection events fed through a channel, a
//! FAKE store behind the real [`StoreWorker`] (it records batches and can be held
//! or told to fail), a recording [`Acker`], and paused tokio time.
//!
//! The fake store runs on the worker's OS thread, where paused time cannot see it:
//! the runtime would move the clock to the next timer whenever it idles waiting for
//! a commit. So these tests arm no tokio timer of their own (the status line is off
//! and the hang guard is a plain thread), and the clock moves only when a test
//! advances it.

use super::*;
use crate::store::{Store, WriteOutcome};
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// What the fake store has done, published to the test.
#[derive(Debug, Default)]
struct Seen {
    /// Batches handed to `write_batch` (including one that is held or failed).
    started: usize,
    /// Batches committed, in order.
    committed: Vec<Vec<Record>>,
}

impl Seen {
    fn committed_records(&self) -> usize {
        self.committed.iter().map(Vec::len).sum()
    }
}

#[derive(Debug, Default)]
struct Control {
    /// While set, batch `n` (from 0) waits until `allowed > n`.
    hold: bool,
    allowed: usize,
    /// Batch `n` waits while this is `Some(n)`, whatever `hold` says.
    hold_only: Option<usize>,
    /// Batch `n` and every later one fail.
    fail_from: Option<usize>,
}

/// Each lane of the worker has one; they share what they report.
struct FakeStore {
    control: Arc<(Mutex<Control>, Condvar)>,
    seen: Arc<watch::Sender<Seen>>,
}

impl Store for FakeStore {
    fn write_batch(&mut self, batch: &[Record]) -> Result<WriteOutcome, StoreError> {
        let mut n = 0;
        self.seen.send_modify(|s| {
            n = s.started;
            s.started += 1;
        });
        let (lock, cv) = &*self.control;
        let mut control = lock.lock().unwrap();
        while (control.hold && control.allowed <= n) || control.hold_only == Some(n) {
            control = cv.wait(control).unwrap();
        }
        if control.fail_from.is_some_and(|k| n >= k) {
            return Err(StoreError::Write {
                path: "fake.db".into(),
                source: rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                    Some("database or disk is full".into()),
                ),
            });
        }
        self.seen.send_modify(|s| s.committed.push(batch.to_vec()));
        Ok(WriteOutcome {
            stored: batch.len(),
            ..WriteOutcome::default()
        })
    }
}

/// The test's handle on the fake store.
struct Fake {
    control: Arc<(Mutex<Control>, Condvar)>,
    seen: watch::Receiver<Seen>,
}

impl Fake {
    fn new(lanes: usize) -> (Fake, StoreWorker) {
        let control = Arc::new((Mutex::new(Control::default()), Condvar::new()));
        let (tx, seen) = watch::channel(Seen::default());
        let tx = Arc::new(tx);
        let stores = (0..lanes)
            .map(|_| {
                Box::new(FakeStore {
                    control: control.clone(),
                    seen: tx.clone(),
                }) as Box<dyn Store>
            })
            .collect();
        (Fake { control, seen }, StoreWorker::spawn_lanes(stores))
    }

    fn change(&self, f: impl FnOnce(&mut Control)) {
        let (lock, cv) = &*self.control;
        f(&mut lock.lock().unwrap());
        cv.notify_all();
    }

    /// Batches wait in `write_batch` until allowed.
    fn hold(&self) {
        self.change(|c| c.hold = true);
    }

    /// Lets every batch through, now and later.
    fn release(&self) {
        self.change(|c| {
            c.hold = false;
            c.hold_only = None;
        });
    }

    /// Only batch `n` (from 0) waits, until [`Fake::release`].
    fn hold_only(&self, n: usize) {
        self.change(|c| c.hold_only = Some(n));
    }

    fn fail_from(&self, batch: usize) {
        self.change(|c| c.fail_from = Some(batch));
    }

    async fn started(&self, n: usize) {
        let mut seen = self.seen.clone();
        within(
            &format!("{n} batches started"),
            seen.wait_for(|s| s.started >= n),
        )
        .await
        .unwrap();
    }

    fn committed(&self) -> Vec<Vec<Record>> {
        self.seen.borrow().committed.clone()
    }
}

/// One acknowledgement, with how many records the store had committed when it went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Acked {
    pkid: u16,
    committed: usize,
}

struct FakeAcker {
    acks: watch::Sender<Vec<Acked>>,
    seen: watch::Receiver<Seen>,
}

impl Acker for FakeAcker {
    async fn ack(&mut self, pkid: u16, qos: QoS) -> Result<(), AckLost> {
        assert_eq!(qos, QoS::AtLeastOnce);
        let committed = self.seen.borrow().committed_records();
        self.acks.send_modify(|a| a.push(Acked { pkid, committed }));
        Ok(())
    }
}

/// Fails the test after 20 s of real time: paused time cannot time out a commit
/// that runs on another thread.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(20));
        let _ = tx.send(());
    });
    tokio::select! {
        v = fut => v,
        _ = rx => panic!("waited 20 s for {what}"),
    }
}

/// Lets the loop, on this single-threaded runtime, read everything already sent.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn config(batch_size: usize) -> IngestConfig {
    IngestConfig {
        client_id: "test".into(),
        topics: vec!["device/data/+".into()],
        batch_size,
        flush_interval: Duration::from_secs(3600),
        max_payload: 4096,
        status_interval: None,
        ready_file: None,
        ready_state: crate::ready::ReadyState::default(),
        metrics: super::Metrics::default(),
        drain: None,
    }
}

/// A valid reading of `v01` with this `seq`, received with this packet id.
fn msg(pkid: u16, seq: i64) -> ConnectionEvent {
    let payload = format!(r#"{{"device_id":"v01","seq":{seq},"timestamp":1700000000.5}}"#);
    let mut p = Publish::new("device/data/v01", QoS::AtLeastOnce, payload);
    p.pkid = pkid;
    ConnectionEvent::Message(p)
}

fn disconnected() -> (ConnectionEvent, oneshot::Receiver<()>) {
    let (resume, resumed) = oneshot::channel();
    let event = ConnectionEvent::Disconnected {
        reason: "connection reset".into(),
        resume,
    };
    (event, resumed)
}

fn seqs(batch: &[Record]) -> Vec<i64> {
    batch
        .iter()
        .map(|r| match r {
            Record::Telemetry(t) => t.seq.expect("test readings have a seq"),
            Record::Rejected(r) => panic!("unexpected rejection: {}", r.reason),
        })
        .collect()
}

/// An ingest loop running in its own task, and the test's ends of everything it touches.
struct Running {
    events: mpsc::UnboundedSender<ConnectionEvent>,
    cancel: CancellationToken,
    store: Fake,
    acks: watch::Receiver<Vec<Acked>>,
    task: JoinHandle<Result<(), IngestError>>,
}

impl Running {
    /// Starts the loop; events sent before the test's next `.await` are all waiting
    /// when the loop first reads.
    fn start(cfg: IngestConfig, prepare: impl FnOnce(&Fake)) -> Running {
        Running::start_lanes(cfg, 1, prepare)
    }

    /// Starts the loop on a store of `lanes` lanes.
    fn start_lanes(cfg: IngestConfig, lanes: usize, prepare: impl FnOnce(&Fake)) -> Running {
        let (store, worker) = Fake::new(lanes);
        prepare(&store);
        let (acks_tx, acks) = watch::channel(Vec::new());
        let acker = FakeAcker {
            acks: acks_tx,
            seen: store.seen.clone(),
        };
        let mut ingest = Ingest::new(cfg, ReadyFile::new(None).unwrap(), acker, worker);
        let (events, mut rx) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        let task = tokio::spawn(async move { ingest.consume(&mut rx, &token).await });
        Running {
            events,
            cancel,
            store,
            acks,
            task,
        }
    }

    fn send(&self, event: ConnectionEvent) {
        self.events.send(event).unwrap();
    }

    async fn acked(&mut self, n: usize) -> Vec<Acked> {
        within(
            &format!("{n} acknowledgements"),
            self.acks.wait_for(|a| a.len() >= n),
        )
        .await
        .unwrap()
        .clone()
    }

    /// Cancels and waits for the loop to drain and return.
    async fn stop(self) -> (Result<(), IngestError>, Vec<Acked>, Fake) {
        self.cancel.cancel();
        let outcome = within("the loop to end", self.task).await.unwrap();
        let acks = self.acks.borrow().clone();
        (outcome, acks, self.store)
    }

    async fn outcome(self) -> (Result<(), IngestError>, Vec<Acked>, Fake) {
        let outcome = within("the loop to end", self.task).await.unwrap();
        let acks = self.acks.borrow().clone();
        (outcome, acks, self.store)
    }
}

#[tokio::test(start_paused = true)]
async fn acks_go_out_in_arrival_order_and_only_after_the_commit() {
    let mut run = Running::start(config(2), Fake::hold);
    for i in 1..=5 {
        run.send(msg(i, i.into()));
    }
    run.store.started(1).await;
    settle().await;
    assert!(
        run.acks.borrow().is_empty(),
        "nothing is acknowledged while its transaction runs"
    );
    run.store.release();
    let acks = run.acked(5).await;
    let pkids: Vec<u16> = acks.iter().map(|a| a.pkid).collect();
    assert_eq!(pkids, [1, 2, 3, 4, 5], "arrival order");
    for (i, a) in acks.iter().enumerate() {
        assert!(
            a.committed > i,
            "message {} was acknowledged before its commit: {acks:?}",
            i + 1
        );
    }
    let (outcome, _, _) = run.stop().await;
    outcome.unwrap();
}

#[tokio::test(start_paused = true)]
async fn with_lanes_a_later_batch_may_commit_first_but_acks_keep_arrival_order() {
    let mut run = Running::start_lanes(config(2), 2, |f| f.hold_only(0));
    for i in 1..=4 {
        run.send(msg(i, i.into()));
    }
    let mut seen = run.store.seen.clone();
    within(
        "the second batch to commit",
        seen.wait_for(|s| s.started == 2 && s.committed.len() == 1),
    )
    .await
    .unwrap();
    assert_eq!(
        seqs(&run.store.committed()[0]),
        [3, 4],
        "the second batch, beside the held first"
    );
    settle().await;
    assert!(
        run.acks.borrow().is_empty(),
        "nothing is acknowledged while an earlier batch is still committing: {:?}",
        run.acks.borrow()
    );
    run.store.release();
    let acks = run.acked(4).await;
    let pkids: Vec<u16> = acks.iter().map(|a| a.pkid).collect();
    assert_eq!(pkids, [1, 2, 3, 4], "arrival order");
    assert!(
        acks.iter().all(|a| a.committed == 4),
        "the first batch's acks wait for its commit: {acks:?}"
    );
    let (outcome, _, _) = run.stop().await;
    outcome.unwrap();
}

#[tokio::test(start_paused = true)]
async fn batches_hold_at_most_batch_size_and_take_what_is_waiting() {
    let mut run = Running::start(config(3), |_| {});
    for i in 1..=8 {
        run.send(msg(i, i.into()));
    }
    run.acked(8).await;
    let (outcome, _, store) = run.stop().await;
    outcome.unwrap();
    let batches = store.committed();
    assert!(
        batches.iter().all(|b| !b.is_empty() && b.len() <= 3),
        "{batches:?}"
    );
    assert_eq!(
        batches[0].len(),
        3,
        "input already waiting fills the first batch"
    );
    let all: Vec<i64> = batches.iter().flat_map(|b| seqs(b)).collect();
    assert_eq!(
        all,
        (1..=8).collect::<Vec<_>>(),
        "stored once each, in order"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lone_message_is_committed_at_once() {
    let cfg = config(100);
    let flush = cfg.flush_interval;
    let mut run = Running::start(cfg, |_| {});
    let start = Instant::now();
    run.send(msg(7, 1));
    let acks = run.acked(1).await;
    // A loop that waited for more input, or for the flush interval, would have let
    // the paused clock run to a timer.
    assert!(start.elapsed() < flush, "waited {:?}", start.elapsed());
    assert_eq!(
        acks,
        [Acked {
            pkid: 7,
            committed: 1
        }]
    );
    let (outcome, _, store) = run.stop().await;
    outcome.unwrap();
    assert_eq!(store.committed().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_flush_interval_closes_a_batch_to_waiting_input() {
    let mut cfg = config(100);
    cfg.flush_interval = Duration::from_millis(500);
    let (store, worker) = Fake::new(1);
    let (acks, _) = watch::channel(Vec::new());
    let acker = FakeAcker {
        acks,
        seen: store.seen.clone(),
    };
    let mut ingest = Ingest::new(cfg, ReadyFile::new(None).unwrap(), acker, worker);
    let (tx, mut rx) = mpsc::unbounded_channel();

    // A young batch takes everything waiting.
    ingest.on_event(msg(1, 1)).unwrap();
    tokio::time::advance(Duration::from_millis(499)).await;
    tx.send(msg(2, 2)).unwrap();
    tx.send(msg(3, 3)).unwrap();
    ingest.take_waiting(&mut rx).unwrap();
    assert_eq!(ingest.open.len(), 3);

    // One open for the flush interval takes nothing more: it is committed as it is.
    tokio::time::advance(Duration::from_millis(1)).await;
    tx.send(msg(4, 4)).unwrap();
    ingest.take_waiting(&mut rx).unwrap();
    assert_eq!(ingest.open.len(), 3);
    assert_eq!(rx.len(), 1, "left for the next batch");

    // The next batch starts young again.
    ingest.open = Batch::default();
    ingest.on_event(rx.try_recv().unwrap()).unwrap();
    tx.send(msg(5, 5)).unwrap();
    ingest.take_waiting(&mut rx).unwrap();
    assert_eq!(ingest.open.len(), 2);
}

#[tokio::test]
async fn a_disconnect_bumps_the_epoch_and_releases_the_driver() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("collector.ready");
    let (store, worker) = Fake::new(1);
    let (acks, _) = watch::channel(Vec::new());
    let acker = FakeAcker {
        acks,
        seen: store.seen.clone(),
    };
    let ready = ReadyFile::new(Some(path.clone())).unwrap();
    let mut ingest = Ingest::new(config(10), ready, acker, worker);

    ingest.on_event(ConnectionEvent::Subscribed).unwrap();
    assert!(path.exists(), "ready once subscribed");
    ingest.on_event(msg(1, 1)).unwrap();
    assert_eq!(ingest.open.acks[0].epoch, 0);

    let (event, mut resumed) = disconnected();
    ingest.on_event(event).unwrap();
    assert_eq!(ingest.epoch, 1);
    assert!(
        resumed.try_recv().is_err(),
        "`resume` is dropped at once: rumqttc may forget its requests"
    );
    assert!(!path.exists(), "not ready without a connection");

    ingest
        .on_event(ConnectionEvent::Connected {
            session_present: true,
        })
        .unwrap();
    assert_eq!(ingest.epoch, 1, "only a disconnect starts an epoch");
    ingest.on_event(msg(1, 2)).unwrap();
    assert_eq!(ingest.open.acks[1].epoch, 1);
    let (event, _resumed) = disconnected();
    ingest.on_event(event).unwrap();
    assert_eq!(ingest.epoch, 2);
}

#[tokio::test(start_paused = true)]
async fn acks_of_an_older_connection_are_dropped() {
    let mut run = Running::start(config(10), Fake::hold);
    run.send(msg(1, 1));
    run.store.started(1).await;
    // The first message's transaction runs while the connection drops; the new
    // connection reuses packet id 1.
    let (event, _resumed) = disconnected();
    run.send(event);
    run.send(ConnectionEvent::Connected {
        session_present: true,
    });
    run.send(msg(1, 2));
    run.send(msg(2, 3));
    // The loop must see the disconnect while the old transaction still runs.
    settle().await;
    run.store.release();
    let acks = run.acked(2).await;
    let (outcome, after, store) = run.stop().await;
    outcome.unwrap();
    assert_eq!(
        acks,
        [
            Acked {
                pkid: 1,
                committed: 3
            },
            Acked {
                pkid: 2,
                committed: 3
            }
        ],
        "only the second connection's messages, after their own commit"
    );
    assert_eq!(after, acks, "nothing more at shutdown");
    let stored: Vec<i64> = store.committed().iter().flat_map(|b| seqs(b)).collect();
    assert_eq!(
        stored,
        [1, 2, 3],
        "the unacknowledged message is stored all the same"
    );
}

#[tokio::test(start_paused = true)]
async fn a_store_failure_stops_acks_and_ends_run_with_the_store_error() {
    for fail_from in [0, 1] {
        let run = Running::start(config(2), |s| s.fail_from(fail_from));
        for i in 1..=5 {
            run.send(msg(i, i.into()));
        }
        let (outcome, acks, store) = run.outcome().await;
        let err = outcome.unwrap_err();
        assert!(matches!(err, IngestError::Store(_)), "{err}");
        assert!(err.to_string().contains("disk is full"), "{err}");
        let pkids: Vec<u16> = acks.iter().map(|a| a.pkid).collect();
        let committed: Vec<u16> = (1..=2 * fail_from as u16).collect();
        assert_eq!(
            pkids, committed,
            "only what was committed before the failure"
        );
        assert_eq!(
            store.seen.borrow().started,
            fail_from + 1,
            "no batch after the failed one"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_commits_and_acknowledges_what_was_read() {
    let mut run = Running::start(config(2), Fake::hold);
    for i in 1..=3 {
        run.send(msg(i, i.into()));
    }
    run.store.started(1).await;
    run.cancel.cancel();
    run.store.release();
    let acks = run.acked(3).await;
    let (outcome, _, store) = run.stop().await;
    outcome.unwrap();
    assert_eq!(acks.iter().map(|a| a.pkid).collect::<Vec<_>>(), [1, 2, 3]);
    let batches: Vec<Vec<i64>> = store.committed().iter().map(|b| seqs(b)).collect();
    assert_eq!(batches, [vec![1, 2], vec![3]]);
}

#[tokio::test(start_paused = true)]
async fn a_permanent_failure_stores_what_was_read_without_acknowledging_it() {
    let run = Running::start(config(10), |_| {});
    run.send(msg(1, 1));
    run.send(ConnectionEvent::Failed(PermanentFailure {
        broker: "localhost:8883".into(),
        cause: "not authorised".into(),
    }));
    let (outcome, acks, store) = run.outcome().await;
    assert!(matches!(outcome, Err(IngestError::Connection(_))));
    assert!(
        acks.is_empty(),
        "nobody is there to acknowledge to: {acks:?}"
    );
    assert_eq!(store.committed().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_invalid_message_is_stored_as_a_rejection_and_acknowledged() {
    let mut run = Running::start(config(10), |_| {});
    let mut p = Publish::new("device/data/v01", QoS::AtLeastOnce, "not json");
    p.pkid = 9;
    run.send(ConnectionEvent::Message(p));
    assert_eq!(run.acked(1).await[0].pkid, 9);
    let (outcome, _, store) = run.stop().await;
    outcome.unwrap();
    match &store.committed()[0][..] {
        [Record::Rejected(r)] => assert!(r.reason.contains("JSON"), "{}", r.reason),
        other => panic!("{other:?}"),
    }
}
