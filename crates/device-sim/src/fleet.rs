//! The fleet: N simulated vehicles in one tokio process, each its own MQTT
//! connection (client id = device id), started along a connection ramp, all
//! sharing one offline queue writer and one set of counters.
//!
//! Every device runs the same loop: generate a reading each interval into the
//! queue, publish what the queue has committed (oldest first, a bounded window in
//! flight), delete what the broker acknowledged, and on a lost connection put
//! everything in flight back to unsent. The run ends when every device is done
//! (`--messages`), at `--duration`, on cancellation (signals), or at the first
//! permanent connection failure of any device.

use crate::outbox::{Outbox, DATA, LEGACY};
use crate::queue::{DeviceStart, Notice, Queue, QueueError, QueueHandle};
use crate::status::{self, Snapshot, Stats};
use crate::vehicle::Vehicle;
use mqtt_core::connection::ConnectionOptions;
use mqtt_core::message::{
    data_topic, legacy_topic, unix_now, validate_device_id, with_publish_time,
};
use mqtt_core::{exit, spawn_connection, ConnectionEvent, PermanentFailure, Settings};
use rumqttc::QoS;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Messages of one device kept in memory, per message of the window (at least 16);
/// newer ones wait in the queue file, so a long outage costs disk, not memory.
const MEM_PER_WINDOW: usize = 3;
/// Messages of one device written to the queue writer but not yet committed; past
/// it the device skips ticks, so a slow disk slows generation instead of filling memory.
const MAX_UNCOMMITTED: u64 = 16;
/// How long a leaving device waits for its connection to close.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(3);
/// File descriptors kept free for SQLite, the runtime and logging.
const SPARE_FILES: u64 = 256;
/// Up to this many devices, each failed attempt is logged with its device and delay;
/// a larger fleet gets one line per status interval (500 devices without a broker
/// would otherwise print hundreds of lines a second).
const PER_DEVICE_FAILURE_LOGS: u32 = 10;

/// What the run is asked to do (the command line, validated).
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Number of devices.
    pub count: u32,
    /// Device id prefix.
    pub id_prefix: String,
    /// Time between two messages of one device.
    pub interval: Duration,
    /// Messages per device in this run, if bounded.
    pub messages: Option<u64>,
    /// End of the run, if bounded.
    pub duration: Option<Duration>,
    /// The queue file.
    pub queue: PathBuf,
    /// Messages kept per device.
    pub queue_limit: u64,
    /// Seed of the vehicle model.
    pub seed: u64,
    /// Also publish on `vehicle/speed/{id}`.
    pub legacy_topic: bool,
    /// New connections per second at start.
    pub connect_rate: f64,
    /// Publishes in flight per device.
    pub window: u16,
    /// Time between status lines.
    pub status_interval: Duration,
}

/// Why the run failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// A device cannot connect without a change of configuration (exit code 3).
    #[error(transparent)]
    Permanent(#[from] PermanentFailure),
    /// The offline queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The request cannot be met as configured (exit code 2).
    #[error("{0}")]
    Config(String),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

impl FleetError {
    /// The process exit code for this failure (contract section 6).
    pub fn exit_code(&self) -> i32 {
        match self {
            FleetError::Permanent(_) => exit::PERMANENT,
            FleetError::Config(_) => exit::CONFIG,
            FleetError::Queue(_) | FleetError::Internal(_) => exit::FAILURE,
        }
    }
}

/// The device ids of a run: `{prefix}{index}` from 1, at least two digits.
pub fn device_ids(prefix: &str, count: u32) -> Result<Vec<Arc<str>>, FleetError> {
    let ids: Vec<Arc<str>> = (1..=count)
        .map(|i| Arc::from(format!("{prefix}{i:02}").as_str()))
        .collect();
    for id in [ids.first(), ids.last()].into_iter().flatten() {
        validate_device_id(id)
            .map_err(|e| FleetError::Config(format!("--id-prefix {prefix:?}: {e}")))?;
    }
    Ok(ids)
}

/// Runs the fleet until it is done, stopped or failed; returns the final counters.
/// With `endpoint` (a bound `--metrics-addr`), serves the metrics and readiness
/// (at least one device connected) there until the run ends.
pub async fn run(
    settings: Settings,
    cfg: FleetConfig,
    endpoint: Option<std::net::TcpListener>,
    cancel: CancellationToken,
) -> Result<Snapshot, FleetError> {
    let ids = device_ids(&cfg.id_prefix, cfg.count)?;
    raise_open_file_limit(cfg.count as u64)?;
    let stop = cancel.child_token();
    let (notice_txs, notice_rxs): (Vec<_>, Vec<_>) =
        ids.iter().map(|_| mpsc::unbounded_channel()).unzip();
    let (queue, starts) = {
        let (path, ids, failed) = (cfg.queue.clone(), ids.clone(), stop.clone());
        tokio::task::spawn_blocking(move || Queue::open(&path, ids, notice_txs, failed))
            .await
            .map_err(|e| FleetError::Internal(format!("opening the queue: {e}")))?
            // A queue that cannot be opened is a bad --queue argument (exit code 2).
            .map_err(|e| FleetError::Config(format!("{e}; check --queue")))?
    };
    let stats = Arc::new(Stats::default());
    stats.devices.store(ids.len() as u64, Relaxed);
    let leftovers: u64 = starts.iter().map(|s| s.queued).sum();
    stats.queued.store(leftovers as i64, Relaxed);
    if let Some(listener) = endpoint {
        let s = stats.clone();
        let ready: mqtt_core::metrics_server::Readiness = Arc::new(move || {
            if s.connected.load(Relaxed) > 0 {
                Ok(())
            } else {
                Err("no device is connected to the broker".to_string())
            }
        });
        tokio::spawn(mqtt_core::metrics_server::serve(
            listener,
            Arc::new(status::registry(&stats)),
            ready,
            stop.clone(),
        ));
    }
    if leftovers > 0 {
        info!(
            "the queue {} holds {leftovers} undelivered messages of an earlier run; they go first",
            cfg.queue.display()
        );
    }
    info!(
        devices = ids.len(),
        seed = cfg.seed,
        "starting {} devices at {} connections/s (pass --seed {} to get the same readings again)",
        ids.len(),
        cfg.connect_rate,
        cfg.seed
    );

    let (fail_tx, mut fail_rx) = mpsc::unbounded_channel();
    if let Some(d) = cfg.duration {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(d) => {
                    info!("--duration of {d:?} reached; stopping (unacknowledged messages stay queued)");
                    stop.cancel();
                }
                _ = stop.cancelled() => {}
            }
        });
    }
    let status_done = CancellationToken::new();
    let status_task = tokio::spawn(status::report(
        stats.clone(),
        cfg.status_interval,
        status_done.clone(),
    ));

    let ctx = Arc::new(Ctx {
        qos: settings.qos,
        settings,
        queue: queue.handle(),
        stats: stats.clone(),
        stop: stop.clone(),
        failure: fail_tx,
        cfg,
    });
    let started = Instant::now();
    let mut devices = tokio::task::JoinSet::new();
    for (i, ((id, start), notices)) in ids.into_iter().zip(starts).zip(notice_rxs).enumerate() {
        let at = started + Duration::from_secs_f64(i as f64 / ctx.cfg.connect_rate);
        devices.spawn(device(ctx.clone(), i as u32, id, start, notices, at));
    }
    let mut panicked = None;
    while let Some(r) = devices.join_next().await {
        if let Err(e) = r {
            stop.cancel();
            panicked.get_or_insert_with(|| e.to_string());
        }
    }
    let elapsed = started.elapsed();
    stop.cancel();
    status_done.cancel();
    let _ = status_task.await;
    drop(ctx);
    let closed = tokio::task::spawn_blocking(move || queue.close())
        .await
        .map_err(|e| FleetError::Internal(format!("closing the queue: {e}")))?;
    let snap = stats.snapshot();
    println!("{}", status::summary(&snap, elapsed));
    if let Ok(failure) = fail_rx.try_recv() {
        return Err(FleetError::Permanent(failure));
    }
    closed?;
    if let Some(p) = panicked {
        return Err(FleetError::Internal(format!("a device task failed: {p}")));
    }
    Ok(snap)
}

/// What every device task shares.
struct Ctx {
    settings: Settings,
    queue: QueueHandle,
    stats: Arc<Stats>,
    stop: CancellationToken,
    failure: mpsc::UnboundedSender<PermanentFailure>,
    qos: QoS,
    cfg: FleetConfig,
}

async fn device(
    ctx: Arc<Ctx>,
    idx: u32,
    id: Arc<str>,
    start: DeviceStart,
    notices: mpsc::UnboundedReceiver<Notice>,
    at: Instant,
) {
    tokio::select! {
        _ = tokio::time::sleep_until(at) => {}
        _ = ctx.stop.cancelled() => return,
    }
    let mut d = Device::new(&ctx, idx, id, start);
    d.run(&ctx, notices).await;
}

struct Device {
    idx: u32,
    id: Arc<str>,
    data_topic: String,
    legacy_topic: String,
    topics: u8,
    vehicle: Vehicle,
    next_seq: u64,
    committed_seq: u64,
    generated: u64,
    outbox: Outbox,
    connected: bool,
    ever_connected: bool,
    /// When each message in flight was published, oldest first, for the
    /// publish-to-ack histogram.
    sent_at: std::collections::VecDeque<(u64, Instant)>,
}

impl Device {
    fn new(ctx: &Ctx, idx: u32, id: Arc<str>, start: DeviceStart) -> Self {
        let cfg = &ctx.cfg;
        Device {
            idx,
            data_topic: data_topic(&id),
            legacy_topic: legacy_topic(&id),
            topics: if cfg.legacy_topic {
                DATA | LEGACY
            } else {
                DATA
            },
            vehicle: Vehicle::new(cfg.seed, idx as u64),
            next_seq: start.next_seq,
            committed_seq: start.next_seq - 1,
            generated: 0,
            outbox: Outbox::new(
                start.queued,
                cfg.window as usize * if cfg.legacy_topic { 2 } else { 1 },
                cfg.queue_limit,
                (cfg.window as usize * MEM_PER_WINDOW).max(16),
            ),
            connected: false,
            ever_connected: false,
            sent_at: std::collections::VecDeque::new(),
            id,
        }
    }

    async fn run(&mut self, ctx: &Ctx, mut notices: mpsc::UnboundedReceiver<Notice>) {
        let cfg = &ctx.cfg;
        let window = cfg.window as usize * if cfg.legacy_topic { 2 } else { 1 };
        let mut opts = ConnectionOptions::new(self.id.to_string());
        // Small on purpose: thousands of connections live in this process.
        opts.request_capacity = window + 2;
        opts.inflight = (window + 2) as u16;
        opts.max_incoming_packet = 64 * 1024;
        opts.quiet_failures = cfg.count > PER_DEVICE_FAILURE_LOGS;
        let leave = ctx.stop.child_token();
        let mut conn = spawn_connection(&ctx.settings, opts, leave.clone());
        let mut ticker = tokio::time::interval(cfg.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        self.load_more(ctx);

        loop {
            let generating = !matches!(cfg.messages, Some(m) if self.generated >= m);
            if !generating && self.outbox.is_empty() {
                debug!(device = %self.id, "all messages acknowledged");
                ctx.stats.finished.fetch_add(1, Relaxed);
                break;
            }
            tokio::select! {
                biased;
                _ = ctx.stop.cancelled() => break,
                ev = conn.events.recv() => match ev {
                    Some(ev) => {
                        if !self.on_event(ctx, ev) {
                            break;
                        }
                    }
                    None => break,
                },
                Some(n) = notices.recv() => self.on_notice(ctx, n),
                _ = ticker.tick(), if generating => self.generate(ctx),
            }
            self.pump(ctx, &conn.client);
            self.load_more(ctx);
        }

        // Leave: a clean DISCONNECT when connected; late PUBACKs still delete their rows.
        if self.connected {
            // Waits for room in the request channel, which may be full of publishes.
            let _ = tokio::time::timeout(LEAVE_TIMEOUT, conn.client.disconnect()).await;
        }
        leave.cancel();
        let _ = tokio::time::timeout(LEAVE_TIMEOUT, async {
            while let Some(ev) = conn.events.recv().await {
                if let ConnectionEvent::Acked(_) | ConnectionEvent::Sent(_) = ev {
                    self.on_event(ctx, ev);
                } else if let ConnectionEvent::Disconnected { .. } = ev {
                    break;
                }
            }
        })
        .await;
        conn.task.abort();
        if self.connected {
            ctx.stats.connected.fetch_sub(1, Relaxed);
        }
        if self.outbox.evicted() > 0 {
            warn!(
                device = %self.id,
                "{}: {} messages evicted: the queue limit of {} per device was reached",
                self.id,
                self.outbox.evicted(),
                cfg.queue_limit
            );
        }
    }

    /// Handles one connection event; false when the device must stop.
    fn on_event(&mut self, ctx: &Ctx, ev: ConnectionEvent) -> bool {
        match ev {
            ConnectionEvent::Connected { .. } => {
                self.connected = true;
                ctx.stats.connected.fetch_add(1, Relaxed);
                if self.ever_connected {
                    ctx.stats.reconnects.fetch_add(1, Relaxed);
                }
                self.ever_connected = true;
            }
            ConnectionEvent::Disconnected { resume, reason } => {
                if ctx.cfg.count > PER_DEVICE_FAILURE_LOGS {
                    ctx.stats.failures.record(self.idx, &reason);
                }
                if self.connected {
                    self.connected = false;
                    ctx.stats.connected.fetch_sub(1, Relaxed);
                }
                self.outbox.disconnected();
                // Resent after the reconnect: timed from the resend.
                self.sent_at.clear();
                drop(resume);
            }
            ConnectionEvent::Sent(pkid) => {
                ctx.stats.published.fetch_add(1, Relaxed);
                self.outbox.sent(pkid);
                if ctx.qos == QoS::AtMostOnce {
                    self.acked(ctx, pkid);
                }
            }
            ConnectionEvent::Acked(pkid) => self.acked(ctx, pkid),
            ConnectionEvent::Failed(failure) => {
                let _ = ctx.failure.send(failure);
                ctx.stop.cancel();
                return false;
            }
            ConnectionEvent::Message(_) | ConnectionEvent::Subscribed => {}
        }
        true
    }

    fn acked(&mut self, ctx: &Ctx, pkid: u16) {
        if let Some(seq) = self.outbox.acked(pkid) {
            if let Some(i) = self.sent_at.iter().position(|(s, _)| *s == seq) {
                let at = self.sent_at[i].1;
                ctx.stats
                    .publish_to_ack
                    .0
                    .observe(at.elapsed().as_secs_f64());
                self.sent_at.retain(|(s, _)| *s != seq);
            }
            ctx.queue.delete(self.idx, seq);
            ctx.stats.acked.fetch_add(1, Relaxed);
            ctx.stats.queued.fetch_sub(1, Relaxed);
        }
    }

    fn on_notice(&mut self, ctx: &Ctx, n: Notice) {
        match n {
            Notice::Committed(seq) => {
                self.committed_seq = self.committed_seq.max(seq);
                self.outbox.committed(seq);
            }
            Notice::Loaded(rows) => {
                let evict = self.outbox.loaded(rows);
                self.evicted(ctx, &evict);
            }
        }
    }

    fn generate(&mut self, ctx: &Ctx) {
        if self.next_seq - 1 - self.committed_seq >= MAX_UNCOMMITTED {
            if ctx.stats.skipped.fetch_add(1, Relaxed) == 0 {
                warn!("the offline queue cannot store messages as fast as they are generated; devices skip readings until it catches up (counted in the summary)");
            }
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.generated += 1;
        let reading = self.vehicle.telemetry(&self.id, seq, unix_now());
        let payload = reading.to_json();
        ctx.queue.insert(
            self.idx,
            seq,
            self.topics & LEGACY != 0,
            payload.clone(),
            reading.timestamp,
        );
        ctx.stats.generated.fetch_add(1, Relaxed);
        ctx.stats.queued.fetch_add(1, Relaxed);
        let evict = self.outbox.push(seq, self.topics, payload);
        self.evicted(ctx, &evict);
    }

    fn evicted(&mut self, ctx: &Ctx, seqs: &[u64]) {
        if seqs.is_empty() {
            return;
        }
        if self.outbox.evicted() == seqs.len() as u64 {
            warn!(
                device = %self.id,
                "{}: the queue limit of {} messages is reached; the oldest are evicted from now on",
                self.id,
                ctx.cfg.queue_limit
            );
        }
        for &seq in seqs {
            debug!(device = %self.id, seq, "evicted");
            ctx.queue.delete(self.idx, seq);
        }
        ctx.stats.evicted.fetch_add(seqs.len() as u64, Relaxed);
        ctx.stats.queued.fetch_sub(seqs.len() as i64, Relaxed);
    }

    /// Publishes what the window allows, oldest first.
    fn pump(&mut self, ctx: &Ctx, client: &rumqttc::AsyncClient) {
        if !self.connected {
            return;
        }
        while let Some((seq, topic, payload)) = self.outbox.next_publish() {
            let t = if topic == LEGACY {
                &self.legacy_topic
            } else {
                &self.data_topic
            };
            // The contract's timestamp is the time of the publish, also for a message
            // that waited in the queue through an outage (and for each resend).
            let payload =
                with_publish_time(payload, unix_now()).unwrap_or_else(|| payload.to_vec());
            if client
                .try_publish(t.as_str(), ctx.qos, false, payload)
                .is_err()
            {
                // The request channel is full; the next event will try again.
                break;
            }
            self.outbox.requested(seq, topic);
            // Bounded by the window, and kept so even if an ack never matches.
            if self.sent_at.len() >= 4 * ctx.cfg.window as usize + 8 {
                self.sent_at.pop_front();
            }
            self.sent_at.push_back((seq, Instant::now()));
        }
    }

    fn load_more(&mut self, ctx: &Ctx) {
        if let Some((after, limit)) = self.outbox.want_load() {
            ctx.queue.load(self.idx, after, limit);
        }
    }
}

/// Raises the soft open-file limit as far as the hard limit allows; an error when
/// `devices` connections cannot fit.
pub fn raise_open_file_limit(devices: u64) -> Result<(), FleetError> {
    let needed = devices + SPARE_FILES;
    let nofile = rlimit::Resource::NOFILE;
    // Unknown limits: let the connections find out.
    let Ok((old, hard)) = nofile.get() else {
        return Ok(());
    };
    if old >= needed {
        return Ok(());
    }
    let ok = nofile.set(hard, hard).is_ok();
    if ok && hard >= needed {
        info!("raised the open-file limit from {old} to {hard} for {devices} connections");
        return Ok(());
    }
    let have = if ok { hard } else { old };
    Err(FleetError::Config(format!(
        "--count {devices} needs about {needed} open files (one per connection plus {SPARE_FILES} spare), but this process may open at most {have}; \
         raise the hard limit (`ulimit -Hn {needed}` as root, LimitNOFILE= for systemd, `ulimits: nofile:` in docker compose) or lower --count to at most {}",
        have.saturating_sub(SPARE_FILES)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_are_padded_to_two_digits_from_one() {
        let ids = device_ids("vehicle_", 12).unwrap();
        assert_eq!(&*ids[0], "vehicle_01");
        assert_eq!(&*ids[11], "vehicle_12");
        assert_eq!(&*device_ids("v", 100).unwrap()[99], "v100");
        let err = device_ids("bad/prefix", 1).unwrap_err().to_string();
        assert!(err.contains("--id-prefix"), "{err}");
    }

    #[test]
    fn each_failure_has_its_exit_code() {
        assert_eq!(FleetError::Config("x".into()).exit_code(), exit::CONFIG);
        assert_eq!(FleetError::Internal("x".into()).exit_code(), exit::FAILURE);
        let f = PermanentFailure {
            broker: "b:1883".into(),
            cause: "not authorised".into(),
        };
        assert_eq!(FleetError::Permanent(f).exit_code(), exit::PERMANENT);
    }

    #[test]
    fn a_modest_fleet_fits_the_open_file_limit() {
        raise_open_file_limit(10).unwrap();
        let err = raise_open_file_limit(u64::MAX / 4).unwrap_err().to_string();
        assert!(err.contains("open files"), "{err}");
    }
}
