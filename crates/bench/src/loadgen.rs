//! The load generator: several rumqttc connections publishing telemetry in the
//! contract's format at QoS 1, each with a bounded window of unacknowledged
//! messages, as fast as the broker acknowledges them; plus the small MQTT chores
//! of the scenarios (prime a persistent session, publish one probe, time connects).

use crate::broker::Endpoint;
use crate::wire::{Counters, Snapshot};
use anyhow::{bail, Context, Result};
use mqtt_core::message::{data_topic, unix_now, Telemetry};
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, Outgoing, QoS, SubscribeReasonCode};
use std::time::{Duration, Instant};

/// What to publish.
#[derive(Debug, Clone)]
pub struct Load {
    /// Messages in all.
    pub messages: u64,
    /// Connections, each one device id `{prefix}{index}` publishing its share.
    pub connections: usize,
    /// Unacknowledged messages allowed per connection.
    pub window: u16,
    /// Device id prefix.
    pub prefix: String,
}

/// What publishing took.
#[derive(Debug, Clone)]
pub struct Published {
    /// Messages acknowledged by the broker.
    pub messages: u64,
    /// From the first publish to the last PUBACK.
    pub elapsed: Duration,
    /// Broker-side socket counters over the same span.
    pub wire: Counters,
}

impl Published {
    /// Messages per second.
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A reading in the contract's payload format.
pub fn telemetry(device_id: &str, seq: u64) -> Telemetry {
    let s = seq as f64;
    Telemetry {
        device_id: device_id.to_string(),
        seq: Some(seq),
        timestamp: unix_now(),
        speed: (s * 7.0) % 120.0,
        cpu_usage: 10.0 + (s % 50.0),
        ram_usage: 40.0 + (s % 20.0),
        memory_total: 8_589_934_592,
        memory_used: 4_294_967_296 + seq * 4096,
        memory_available: 4_294_967_296 - seq * 4096,
        memory_percent: 50.0,
        disk_total: 256_000_000_000,
        disk_used: 128_000_000_000,
        disk_free: 128_000_000_000,
        disk_percent: 50.0,
        network_bytes_sent: seq * 512,
        network_bytes_recv: seq * 2048,
        detection_label: ["car", "pedestrian", "bicycle", "truck"][(seq % 4) as usize].to_string(),
        detection_confidence: 0.5 + (s % 50.0) / 100.0,
    }
}

async fn connect(
    ep: &Endpoint,
    client_id: &str,
    clean: bool,
    window: u16,
) -> Result<(AsyncClient, EventLoop)> {
    let settings = ep.settings()?;
    let mut o = settings.mqtt_options(client_id);
    o.set_clean_session(clean);
    o.set_inflight(window.max(1));
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = AsyncClient::new(o, usize::from(window.max(1)) * 2);
    el.network_options.set_tcp_nodelay(true);
    let connected = async {
        loop {
            if let Event::Incoming(Incoming::ConnAck(_)) = el.poll().await? {
                return anyhow::Ok(());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), connected)
        .await
        .with_context(|| format!("{client_id}: no CONNACK within 20 s"))?
        .with_context(|| format!("{client_id}: connecting to {}", ep.port))?;
    Ok((client, el))
}

async fn disconnect(client: AsyncClient, mut el: EventLoop) {
    if client.try_disconnect().is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match el.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// Publishes `load` through `ep` and waits for every PUBACK.
pub async fn publish(ep: &Endpoint, load: &Load) -> Result<Published> {
    let n = load.connections.max(1) as u64;
    let mut conns = Vec::new();
    for i in 0..n {
        let id = format!("{}{:02}", load.prefix, i + 1);
        let share = load.messages / n + u64::from(i < load.messages % n);
        let (client, el) = connect(ep, &format!("{id}-pub"), true, load.window).await?;
        conns.push((id, share, client, el));
    }
    let before = Snapshot::take(ep.port)?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (id, share, client, el) in conns {
        tasks.push(tokio::spawn(run_connection(id, share, client, el)));
    }
    let mut ended = Vec::new();
    let mut acked = 0;
    for t in tasks {
        let (count, client, el) = t.await.context("publisher task")??;
        acked += count;
        ended.push((client, el));
    }
    let elapsed = start.elapsed();
    let after = Snapshot::take(ep.port)?;
    for (client, el) in ended {
        disconnect(client, el).await;
    }
    Ok(Published {
        messages: acked,
        elapsed,
        wire: before.delta(&after),
    })
}

async fn run_connection(
    device_id: String,
    count: u64,
    client: AsyncClient,
    mut el: EventLoop,
) -> Result<(u64, AsyncClient, EventLoop)> {
    let topic = data_topic(&device_id);
    let publisher = client.clone();
    let id = device_id.clone();
    let producer = tokio::spawn(async move {
        for seq in 1..=count {
            let payload = telemetry(&id, seq).to_json();
            if publisher
                .publish(topic.as_str(), QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut acked = 0;
    while acked < count {
        match el.poll().await {
            Ok(Event::Incoming(Incoming::PubAck(_))) => acked += 1,
            Ok(_) => {}
            Err(e) => {
                producer.abort();
                bail!("{device_id}: connection lost after {acked} of {count} PUBACKs: {e}");
            }
        }
    }
    let _ = producer.await;
    Ok((acked, client, el))
}

/// Creates a fresh persistent session of `client_id` with a QoS 1 subscription to
/// `filter` (a `$share/GROUP/...` filter too), then leaves, so the broker queues what
/// arrives for it. A clean-session connect first ends any earlier session: otherwise
/// it would still hold the loads published meanwhile for the other consumers, and a
/// drain would start behind them.
pub async fn prime_session(ep: &Endpoint, client_id: &str, filter: &str) -> Result<()> {
    end_session(ep, client_id).await?;
    let (client, mut el) = connect(ep, client_id, false, 10).await?;
    client.subscribe(filter, QoS::AtLeastOnce).await?;
    let granted = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Incoming::SubAck(ack)) = el.poll().await? {
                return anyhow::Ok(ack.return_codes);
            }
        }
    })
    .await
    .context("no SUBACK within 10 s")??;
    disconnect(client, el).await;
    // A broker that refuses the filter (or downgrades it to QoS 0) would queue
    // nothing, and the drain would only time out.
    if granted != [SubscribeReasonCode::Success(QoS::AtLeastOnce)] {
        bail!("{client_id}: SUBSCRIBE {filter} at QoS 1 answered with {granted:?}");
    }
    Ok(())
}

/// Ends the session the broker keeps for `client_id` with a clean-session connect,
/// so nothing more is queued for it (a share group's member would otherwise keep
/// taking its turn of the messages).
pub async fn end_session(ep: &Endpoint, client_id: &str) -> Result<()> {
    let (client, el) = connect(ep, client_id, true, 10).await?;
    disconnect(client, el).await;
    Ok(())
}

/// Publishes reading `seq` 1 of `device_id` at QoS 1 and waits for its PUBACK.
pub async fn publish_one(ep: &Endpoint, device_id: &str) -> Result<()> {
    let (client, el) = connect(ep, &format!("{device_id}-probe"), true, 1).await?;
    let (_, client, el) = tokio::time::timeout(
        Duration::from_secs(10),
        run_connection(device_id.to_string(), 1, client, el),
    )
    .await
    .context("no PUBACK within 10 s")??;
    disconnect(client, el).await;
    Ok(())
}

/// Times `count` connects one after another (TCP, TLS when `ep` is TLS, CONNECT to
/// CONNACK), each a fresh client; returns each duration in milliseconds.
pub async fn connect_times(ep: &Endpoint, count: usize) -> Result<Vec<f64>> {
    let mut times = Vec::with_capacity(count);
    for i in 0..count {
        let start = Instant::now();
        let (client, el) = connect(ep, &format!("bench-connect-{i}"), true, 1).await?;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        disconnect(client, el).await;
    }
    Ok(times)
}

/// Follows `$SYS/broker/clients/connected` and `$SYS/broker/publish/messages/received`
/// (both updated every `sys_interval`).
pub struct ConnectedWatcher {
    rx: tokio::sync::watch::Receiver<u64>,
    received: std::sync::Arc<std::sync::Mutex<(u64, Instant)>>,
    task: tokio::task::JoinHandle<()>,
}

impl ConnectedWatcher {
    /// Subscribes through `ep` (this watcher is itself one connected client).
    pub async fn start(ep: &Endpoint) -> Result<ConnectedWatcher> {
        const CONNECTED: &str = "$SYS/broker/clients/connected";
        const RECEIVED: &str = "$SYS/broker/publish/messages/received";
        let (client, mut el) = connect(ep, "bench-sys-watcher", true, 10).await?;
        client.subscribe(CONNECTED, QoS::AtMostOnce).await?;
        client.subscribe(RECEIVED, QoS::AtMostOnce).await?;
        let (tx, rx) = tokio::sync::watch::channel(0);
        let received = std::sync::Arc::new(std::sync::Mutex::new((0, Instant::now())));
        let count = received.clone();
        let task = tokio::spawn(async move {
            let _client = client;
            while let Ok(ev) = el.poll().await {
                if let Event::Incoming(Incoming::Publish(p)) = ev {
                    let Some(v) = std::str::from_utf8(&p.payload)
                        .ok()
                        .and_then(|s| s.trim().parse().ok())
                    else {
                        continue;
                    };
                    if p.topic == CONNECTED {
                        let _ = tx.send(v);
                    } else if p.topic == RECEIVED {
                        if let Ok(mut c) = count.lock() {
                            *c = (v, Instant::now());
                        }
                    }
                }
            }
        });
        Ok(ConnectedWatcher { rx, received, task })
    }

    /// The latest count the broker reported.
    pub fn connected(&self) -> u64 {
        *self.rx.borrow()
    }

    /// PUBLISH packets the broker has received since it started, as last reported,
    /// and when that report arrived.
    pub fn messages_received(&self) -> (u64, Instant) {
        self.received
            .lock()
            .map(|c| *c)
            .unwrap_or((0, Instant::now()))
    }

    /// Waits for the next report, at most `timeout`.
    pub async fn changed(&mut self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.rx.changed()).await;
    }
}

impl Drop for ConnectedWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_are_contract_payloads() {
        let t = telemetry("load_01", 7);
        let v: serde_json::Value = serde_json::from_slice(&t.to_json()).unwrap();
        assert_eq!(v["device_id"], "load_01");
        assert_eq!(v["seq"], 7);
        assert!(v["timestamp"].as_f64().unwrap() > 1e9);
        let speed = v["speed"].as_f64().unwrap();
        assert!((0.0..=120.0).contains(&speed));
    }
}
