//! The run loop: read messages from the MQTT connection, validate them, commit them
//! in batches through the [`StoreWorker`], and acknowledge each one (PUBACK) only
//! after the transaction holding it has committed, in arrival order.
//!
//! Batching: as many transactions are in flight as the store has lanes (one for
//! SQLite alone; `--pipeline` for server stores). While they commit, the next
//! batch fills (up to `batch_size`); when a lane is free, the open batch is
//! committed at once. A batch never waits to fill up: a broker may cap the
//! unacknowledged messages a subscriber holds (Mosquitto's `max_inflight_messages`),
//! so waiting for more could only stall it. Batches are acknowledged in the order
//! they were read, each only once it and every batch before it has committed.
//!
//! Acknowledgements of messages that arrived on an earlier connection are dropped:
//! a packet id belongs to one connection, and the broker sends those messages again
//! on the resumed session, where the unique `(device_id, seq)` index absorbs them.
//!
//! [`run`] spawns the connection and hands its events to [`Ingest`], the loop
//! itself, which needs no broker: it reads an event channel and acknowledges
//! through an [`Acker`].

mod ack;
pub mod metrics;
#[cfg(test)]
mod tests;

use crate::ready::{ReadyFile, ReadyState};
use crate::stats::percentiles;
use crate::store::{Record, RejectedRow, StoreError, StoreWorker, TelemetryRow, Written};
use crate::validate::validate;
pub use ack::{AckLost, Acker};
pub use metrics::{Counted, Metrics};
use mqtt_core::connection::ConnectionOptions;
use mqtt_core::message::unix_now;
use mqtt_core::{spawn_connection, ConnectionEvent, PermanentFailure, Settings};
use rumqttc::{Publish, QoS};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::oneshot;
// tokio's clock, so that paused time in the tests drives the flush interval too.
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// What the run loop needs beyond the connection settings.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// MQTT client id (stable, so the broker keeps the session).
    pub client_id: String,
    /// Topic filters.
    pub topics: Vec<String>,
    /// Most messages in one transaction.
    pub batch_size: usize,
    /// Longest time an open batch may wait while more input keeps arriving.
    pub flush_interval: Duration,
    /// Largest payload accepted.
    pub max_payload: usize,
    /// How often the status line is logged; never when `None`.
    pub status_interval: Option<Duration>,
    /// Present while the subscription is confirmed on a live connection.
    pub ready_file: Option<std::path::PathBuf>,
    /// The readiness condition (the stores' health included), shared with `/readyz`.
    pub ready_state: ReadyState,
    /// Where the loop counts (registered by the caller when it serves them).
    pub metrics: Metrics,
    /// `collector drain`: unsubscribe instead of subscribing, stop once nothing has
    /// arrived for this long with everything committed and acknowledged, then end
    /// the session.
    pub drain: Option<Duration>,
}

/// Why the run loop ended with a failure.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Credentials, authorisation or certificates: exit code 3.
    #[error(transparent)]
    Connection(#[from] PermanentFailure),
    /// The database cannot be written; nothing more was acknowledged.
    #[error("{0}; messages not yet stored were not acknowledged and stay with the broker")]
    Store(#[from] StoreError),
    /// The connection task stopped on its own (it should never).
    #[error("the MQTT connection task ended unexpectedly")]
    ConnectionGone,
    /// The readiness file cannot be replaced.
    #[error("cannot remove the readiness file {0}; check --ready-file (COLLECTOR_READY_FILE) and its directory")]
    ReadyFile(String),
}

/// Enough of a received publish to acknowledge it later.
#[derive(Debug, Clone, Copy)]
struct Ack {
    pkid: u16,
    qos: QoS,
    epoch: u64,
}

/// Messages read but not yet committed.
#[derive(Default)]
struct Batch {
    records: Vec<Record>,
    acks: Vec<Ack>,
    opened: Option<Instant>,
    /// The reason class of each rejected record, counted once the batch commits.
    rejected: Vec<&'static str>,
}

impl Batch {
    fn len(&self) -> usize {
        self.records.len()
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn expired(&self, flush_interval: Duration) -> bool {
        self.opened.is_some_and(|t| t.elapsed() >= flush_interval)
    }
}

/// A batch whose transaction is running.
struct InFlight {
    result: oneshot::Receiver<Written>,
    acks: Vec<Ack>,
    publish_ts: Vec<f64>,
    size: usize,
    rejected: Vec<&'static str>,
}

/// What happened since the last status line.
#[derive(Default)]
struct Interval {
    stored: usize,
    duplicates: usize,
    rejected: usize,
    batches: usize,
    largest_batch: usize,
    latencies: Vec<f64>,
    first_reject: Option<String>,
    dropped_acks: usize,
}

/// Runs until `cancel` fires (then commits, acknowledges, disconnects: `Ok`), or
/// a permanent connection failure or a store failure ends it.
///
/// `store` may wrap any [`Store`](crate::store::Store); the connection is the only
/// part that needs a broker, and [`Ingest`] runs without it.
pub async fn run(
    settings: &Settings,
    cfg: IngestConfig,
    store: StoreWorker,
    cancel: CancellationToken,
) -> Result<(), IngestError> {
    let opts = ConnectionOptions {
        // A member being drained must not take new messages of its group.
        subscriptions: if cfg.drain.is_some() {
            Vec::new()
        } else {
            cfg.topics.clone()
        },
        manual_acks: true,
        // A packet id is unique among the broker's unacknowledged messages, so at
        // most 65535 acknowledgements can ever be queued: the queue never blocks us
        // while the driver waits for us to notice a disconnect.
        request_capacity: 65_535 + 1024,
        // A huge hostile payload must be read whole and rejected; refusing it
        // would drop the connection and the broker would send it again forever.
        max_incoming_packet: 268_435_455,
        ..ConnectionOptions::new(cfg.client_id.clone())
    };
    info!(
        client_id = %cfg.client_id,
        broker = %settings.broker(),
        topics = ?cfg.topics,
        batch_size = cfg.batch_size,
        "collector starting"
    );
    // Checked before connecting, so a bad --ready-file fails before any session opens.
    let ready =
        ReadyFile::with_state(cfg.ready_file.clone(), cfg.ready_state.clone()).map_err(|e| {
            IngestError::ReadyFile(format!(
                "{}: {e}",
                cfg.ready_file
                    .as_deref()
                    .unwrap_or_else(|| std::path::Path::new(""))
                    .display()
            ))
        })?;
    let drain = cfg.drain.is_some();
    let (client_id, topics) = (cfg.client_id.clone(), cfg.topics.clone());
    let mut conn = spawn_connection(settings, opts, cancel.clone());
    if drain {
        // Queued now, written right after the CONNACK: from then on the group's
        // messages go to the other members, and only what the session holds comes here.
        for t in &topics {
            if let Err(e) = conn.client.try_unsubscribe(t.clone()) {
                warn!("cannot queue the unsubscribe from {t}: {e}");
            }
        }
    }
    let mut ingest = Ingest::new(cfg, ready, conn.client.clone(), store);
    let outcome = ingest.consume(&mut conn.events, &cancel).await;

    // Leave cleanly: pending acknowledgements are written before the DISCONNECT.
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.client.disconnect()).await;
    cancel.cancel();
    match tokio::time::timeout(Duration::from_secs(5), &mut conn.task).await {
        Ok(_) => debug!("connection closed"),
        Err(_) => {
            warn!("the connection did not close within 5 s; leaving anyway");
            conn.task.abort();
        }
    }
    drop(ingest);
    if drain && outcome.is_ok() {
        end_session(settings, &client_id).await;
    }
    outcome
}

/// Connects once more with a clean session and leaves: the broker drops the session
/// it kept for `client_id`, so nothing is queued for a member that is gone for good.
async fn end_session(settings: &Settings, client_id: &str) {
    let mut clean = settings.clone();
    clean.clean_session = true;
    let cancel = CancellationToken::new();
    let mut conn = spawn_connection(&clean, ConnectionOptions::new(client_id), cancel.clone());
    let connected = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = conn.events.recv().await {
            match ev {
                ConnectionEvent::Connected { .. } => return true,
                ConnectionEvent::Failed(f) => {
                    warn!("{f}");
                    return false;
                }
                _ => {}
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    if connected {
        let _ = conn.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut conn.task).await;
        info!(
            client_id,
            "drained: the broker no longer keeps a session for this client id"
        );
    } else {
        warn!(client_id, "drained, but the clean reconnect that ends the session failed; run `collector drain` again");
    }
    cancel.cancel();
    conn.task.abort();
}

/// The loop itself, without the connection: it reads [`ConnectionEvent`]s, commits
/// batches through the store and acknowledges through `A`, so it runs in a test
/// with a fake store, a recording acker and paused time.
pub struct Ingest<A: Acker> {
    ready: ReadyFile,
    cfg: IngestConfig,
    acker: A,
    store: StoreWorker,
    /// Bumped on every disconnect; acks of older epochs are dropped.
    epoch: u64,
    open: Batch,
    /// Oldest first: acknowledged in this order.
    in_flight: VecDeque<InFlight>,
    interval: Interval,
    interval_start: Instant,
    idle_logged: bool,
    ever_connected: bool,
    /// Connected now (for the drain's quiet period).
    connected: bool,
    /// When the last message (or the CONNACK) arrived.
    last_activity: Instant,
}

impl<A: Acker> Ingest<A> {
    /// A loop over `store` that acknowledges through `acker` and keeps `ready` up to date.
    pub fn new(cfg: IngestConfig, ready: ReadyFile, acker: A, store: StoreWorker) -> Self {
        Ingest {
            ready,
            cfg,
            acker,
            store,
            epoch: 0,
            open: Batch::default(),
            in_flight: VecDeque::new(),
            interval: Interval::default(),
            interval_start: Instant::now(),
            idle_logged: false,
            ever_connected: false,
            connected: false,
            last_activity: Instant::now(),
        }
    }

    /// Consumes `events` until `cancel` fires, then commits and acknowledges what was
    /// read (`Ok`). A store failure ends it at once, acknowledging nothing more; a
    /// permanent connection failure ends it after storing (not acknowledging) what was read.
    pub async fn consume(
        &mut self,
        events: &mut UnboundedReceiver<ConnectionEvent>,
        cancel: &CancellationToken,
    ) -> Result<(), IngestError> {
        let outcome = self.read_loop(events, cancel).await;
        // Leaving: devices must not be told to start on our account any more.
        self.ready.set(false);
        self.cfg.metrics.connected(false, false);
        let outcome = match outcome {
            Ok(()) => self.drain().await.map_err(IngestError::from),
            Err(IngestError::Store(e)) => {
                error!("{e}; stopping without acknowledging anything more");
                Err(IngestError::Store(e))
            }
            Err(other) => {
                // Keep what was read (unacknowledged: the broker sends it again later).
                if let Err(e) = self.drain_without_acks().await {
                    error!("{e}");
                }
                Err(other)
            }
        };
        self.log_status();
        outcome
    }

    async fn read_loop(
        &mut self,
        events: &mut UnboundedReceiver<ConnectionEvent>,
        cancel: &CancellationToken,
    ) -> Result<(), IngestError> {
        let mut status = self.cfg.status_interval.map(|every| {
            let mut status = tokio::time::interval_at(Instant::now() + every, every);
            status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            status
        });
        loop {
            let can_read = self.open.len() < self.cfg.batch_size;
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                // Draining: the session's backlog has stopped coming and all of it is committed.
                _ = tokio::time::sleep_until(self.last_activity + self.cfg.drain.unwrap_or_default()),
                    if self.cfg.drain.is_some() && self.connected && self.in_flight.is_empty() && self.open.is_empty() => {
                    if self.last_activity.elapsed() >= self.cfg.drain.unwrap_or_default() {
                        info!("nothing more arrived for {:?}: the session is drained", self.cfg.drain.unwrap_or_default());
                        return Ok(());
                    }
                }
                result = async { (&mut self.in_flight.front_mut().expect("guarded").result).await }, if !self.in_flight.is_empty() => {
                    let done = self.in_flight.pop_front().expect("guarded");
                    self.finish(done, result, true).await?;
                    self.ready.refresh();
                }
                event = events.recv(), if can_read => {
                    let Some(event) = event else { return Err(IngestError::ConnectionGone) };
                    self.on_event(event)?;
                    self.take_waiting(events)?;
                }
                _ = async { status.as_mut().expect("guarded").tick().await }, if status.is_some() => {
                    self.ready.refresh();
                    self.log_status();
                }
            }
            // No input waiting, the batch full or old enough: commit now, unless every
            // lane is busy (then this batch goes as soon as the oldest returns).
            self.commit_if_a_lane_is_free();
        }
    }

    /// Takes whatever else is already waiting, up to a full batch or the flush
    /// interval (a commit is never held back waiting for more).
    fn take_waiting(
        &mut self,
        events: &mut UnboundedReceiver<ConnectionEvent>,
    ) -> Result<(), IngestError> {
        while self.open.len() < self.cfg.batch_size && !self.open.expired(self.cfg.flush_interval) {
            match events.try_recv() {
                Ok(event) => self.on_event(event)?,
                Err(_) => break,
            }
        }
        Ok(())
    }

    fn on_event(&mut self, event: ConnectionEvent) -> Result<(), IngestError> {
        match event {
            ConnectionEvent::Message(p) => {
                self.last_activity = Instant::now();
                self.on_message(p)
            }
            ConnectionEvent::Connected { session_present } => {
                self.connected = true;
                self.last_activity = Instant::now();
                if self.cfg.drain.is_some() && !session_present {
                    warn!(
                        "the broker holds no session for this client id: there is nothing to drain"
                    );
                }
                self.ready.connected();
                self.cfg.metrics.connected(true, self.ever_connected);
                self.ever_connected = true;
                if !session_present && self.cfg.drain.is_none() {
                    info!("the broker holds no session for this client id yet: subscribing");
                }
            }
            ConnectionEvent::Subscribed => self.ready.set(true),
            ConnectionEvent::Disconnected { reason, resume } => {
                self.connected = false;
                self.ready.set(false);
                self.cfg.metrics.connected(false, false);
                self.epoch += 1;
                let unacked =
                    self.open.len() + self.in_flight.iter().map(|f| f.size).sum::<usize>();
                if unacked > 0 {
                    info!(
                        "connection lost ({reason}) with {unacked} messages not yet acknowledged; they are stored and the broker will send them again"
                    );
                }
                drop(resume);
            }
            ConnectionEvent::Failed(f) => return Err(IngestError::Connection(f)),
            ConnectionEvent::Sent(_) | ConnectionEvent::Acked(_) => {}
        }
        Ok(())
    }

    fn on_message(&mut self, p: Publish) {
        let receive_ts = unix_now();
        self.cfg.metrics.received();
        let record = match validate(&p.topic, &p.payload, self.cfg.max_payload) {
            Ok(a) => Record::Telemetry(TelemetryRow {
                device_id: a.device_id,
                seq: a.seq,
                topic: p.topic.clone(),
                publish_ts: a.publish_ts,
                receive_ts,
                payload: a.payload,
            }),
            Err(reason) => {
                debug!(topic = %p.topic, "rejected: {reason}");
                self.open.rejected.push(metrics::reason_class(&reason));
                if self.interval.first_reject.is_none() {
                    self.interval.first_reject = Some(format!("{}: {reason}", p.topic));
                }
                // An oversized payload is kept only up to the limit.
                let keep = p.payload.len().min(self.cfg.max_payload);
                Record::Rejected(RejectedRow {
                    topic: p.topic.clone(),
                    receive_ts,
                    reason,
                    payload: p.payload[..keep].to_vec(),
                })
            }
        };
        if self.open.is_empty() {
            self.open.opened = Some(Instant::now());
        }
        self.open.records.push(record);
        self.open.acks.push(Ack {
            pkid: p.pkid,
            qos: p.qos,
            epoch: self.epoch,
        });
    }

    fn commit_if_a_lane_is_free(&mut self) {
        if !self.open.is_empty() && self.in_flight.len() < self.store.lanes() {
            self.commit();
        }
    }

    /// Hands the open batch to the store thread.
    fn commit(&mut self) {
        let batch = std::mem::take(&mut self.open);
        let publish_ts = batch
            .records
            .iter()
            .filter_map(|r| match r {
                Record::Telemetry(t) => t.publish_ts,
                Record::Rejected(_) => None,
            })
            .collect();
        let size = batch.records.len();
        self.in_flight.push_back(InFlight {
            result: self.store.write(batch.records),
            acks: batch.acks,
            publish_ts,
            size,
            rejected: batch.rejected,
        });
    }

    /// A transaction returned: count it and, if it committed, acknowledge its messages.
    async fn finish(
        &mut self,
        done: InFlight,
        result: Result<Written, oneshot::error::RecvError>,
        ack: bool,
    ) -> Result<(), IngestError> {
        let written = result.map_err(|_| StoreError::WorkerGone)?;
        let outcome = written.result?;
        let now = unix_now();
        self.cfg.metrics.committed(
            &outcome,
            &done.rejected,
            written.took.as_secs_f64(),
            done.publish_ts.iter().map(|p| now - p),
        );
        let i = &mut self.interval;
        i.stored += outcome.stored;
        i.duplicates += outcome.duplicates;
        i.rejected += outcome.rejected;
        i.batches += 1;
        i.largest_batch = i.largest_batch.max(done.size);
        i.latencies.extend(done.publish_ts.iter().map(|p| now - p));
        if !ack {
            return Ok(());
        }
        for a in done.acks {
            if a.epoch != self.epoch {
                self.interval.dropped_acks += 1;
                continue;
            }
            if self.acker.ack(a.pkid, a.qos).await.is_err() {
                // The event loop is gone; the broker keeps the message and sends it again.
                self.interval.dropped_acks += 1;
            }
        }
        Ok(())
    }

    /// After cancellation: commit what was read and acknowledge it.
    async fn drain(&mut self) -> Result<(), StoreError> {
        self.drain_inner(true).await
    }

    /// After a permanent failure: store what was read; nobody is there to acknowledge it.
    async fn drain_without_acks(&mut self) -> Result<(), StoreError> {
        self.drain_inner(false).await
    }

    async fn drain_inner(&mut self, ack: bool) -> Result<(), StoreError> {
        loop {
            self.commit_if_a_lane_is_free();
            let Some(mut done) = self.in_flight.pop_front() else {
                return Ok(());
            };
            let result = (&mut done.result).await;
            match self.finish(done, result, ack).await {
                Ok(()) => {}
                Err(IngestError::Store(e)) => return Err(e),
                Err(_) => return Err(StoreError::WorkerGone),
            }
        }
    }

    fn log_status(&mut self) {
        let i = std::mem::take(&mut self.interval);
        let idle = i.batches == 0 && i.dropped_acks == 0;
        // One line says the collector is idle; repeating it every interval says nothing.
        if idle && std::mem::replace(&mut self.idle_logged, true) {
            self.interval_start = Instant::now();
            return;
        }
        self.idle_logged = idle;
        let secs = self.interval_start.elapsed().as_secs_f64().max(1e-3);
        self.interval_start = Instant::now();
        let mut lat = i.latencies;
        let latency = match percentiles(&mut lat) {
            Some(l) => format!(
                "publish-to-commit p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                l.p50_ms, l.p99_ms, l.max_ms
            ),
            None => "no latency sample".to_string(),
        };
        let avg_batch = if i.batches > 0 {
            (i.stored + i.duplicates + i.rejected) as f64 / i.batches as f64
        } else {
            0.0
        };
        info!(
            "stored {} ({:.1} msg/s), {} batches (avg {:.1}, max {}), {} duplicates, {} rejected, {}{}",
            i.stored,
            i.stored as f64 / secs,
            i.batches,
            avg_batch,
            i.largest_batch,
            i.duplicates,
            i.rejected,
            latency,
            if i.dropped_acks > 0 {
                format!(
                    ", {} acknowledgements skipped after a reconnect (the broker sends those again)",
                    i.dropped_acks
                )
            } else {
                String::new()
            }
        );
        if let Some(r) = i.first_reject {
            warn!("rejected message, for example {r}");
        }
    }
}
