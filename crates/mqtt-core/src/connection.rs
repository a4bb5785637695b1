//! One MQTT connection: a rumqttc event loop in its own task that reconnects with
//! backoff and tells its owner what happened through a channel of [`ConnectionEvent`]s.
//!
//! rumqttc keeps QoS 1 messages of its own across reconnects, but drops them when
//! the broker has no stored session, and `publish()` returns no packet id. So this
//! driver makes rumqttc forget everything at each disconnect and leaves resending
//! to the owner, which keeps every message until it sees the matching
//! [`ConnectionEvent::Acked`]. Packet ids are reported in the order the requests
//! were written ([`ConnectionEvent::Sent`]), so the owner can pair them with its own.

use crate::backoff::Backoff;
use crate::settings::Settings;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Incoming, Outgoing, Publish,
    QoS, SubscribeFilter, SubscribeReasonCode,
};
use rustls::{AlertDescription, CertificateError};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// What one connection needs beyond the shared [`Settings`].
#[derive(Debug, Clone)]
pub struct ConnectionOptions {
    /// Client id (stable, for persistent sessions).
    pub client_id: String,
    /// Topic filters to subscribe to with the settings' QoS; renewed whenever the broker has no session.
    pub subscriptions: Vec<String>,
    /// Acknowledge incoming QoS 1/2 publishes only when the owner calls `client.ack()`.
    pub manual_acks: bool,
    /// Capacity of rumqttc's request channel.
    pub request_capacity: usize,
    /// rumqttc's outgoing in-flight limit (keep the owner's own window below it).
    pub inflight: u16,
    /// Largest incoming packet accepted, in bytes.
    pub max_incoming_packet: usize,
    /// Largest outgoing packet, in bytes.
    pub max_outgoing_packet: usize,
    /// Log failed attempts at debug level only: an owner of many connections
    /// (device-sim) reports them together instead of one warning per connection.
    pub quiet_failures: bool,
}

impl ConnectionOptions {
    /// Defaults for a client with this id: payloads up to 1 MiB both ways.
    pub fn new(client_id: impl Into<String>) -> Self {
        ConnectionOptions {
            client_id: client_id.into(),
            subscriptions: Vec::new(),
            manual_acks: false,
            request_capacity: 64,
            inflight: 100,
            max_incoming_packet: 1 << 20,
            max_outgoing_packet: 1 << 20,
            quiet_failures: false,
        }
    }
}

/// What the connection task reports, in order.
#[derive(Debug)]
pub enum ConnectionEvent {
    /// CONNACK accepted.
    Connected {
        /// The broker resumed a stored session.
        session_present: bool,
    },
    /// The connection was lost (or an attempt failed). rumqttc will forget every
    /// request queued or in flight once `resume` is sent or dropped: stop
    /// publishing, treat everything unacknowledged as unsent, then drop `resume`.
    Disconnected {
        /// Why, in plain words.
        reason: String,
        /// Drop (or send) once nothing more will be published until `Connected`.
        resume: oneshot::Sender<()>,
    },
    /// The broker confirmed (SUBACK) every subscription on the current connection,
    /// or resumed a session in which it had confirmed them. Until this event, messages
    /// published to the filters may be dropped by the broker.
    Subscribed,
    /// An incoming publish (acknowledge it with `client.ack()` when `manual_acks`).
    Message(Publish),
    /// A publish was written with this packet id (0 for QoS 0), in request order.
    Sent(u16),
    /// The broker acknowledged this packet id (PUBACK for QoS 1, PUBCOMP for QoS 2).
    Acked(u16),
    /// The connection cannot succeed without a change of configuration; the task has ended.
    Failed(PermanentFailure),
}

/// A connection failure that retrying will not fix (contract section 2, exit code 3).
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot connect to the broker at {broker}: {cause}")]
pub struct PermanentFailure {
    /// `host:port`.
    pub broker: String,
    /// The cause and how to fix it.
    pub cause: String,
}

/// A running connection.
pub struct Connection {
    /// Sends requests to the event loop.
    pub client: AsyncClient,
    /// What happens on the connection.
    pub events: mpsc::UnboundedReceiver<ConnectionEvent>,
    /// The event loop task; it ends after a permanent failure, a sent DISCONNECT, or cancellation.
    pub task: JoinHandle<()>,
}

/// Starts the event loop of one connection in its own task.
///
/// The task stops reconnecting once `cancel` fires; to leave cleanly, the owner calls
/// `client.disconnect()` and awaits `task`.
pub fn spawn_connection(
    settings: &Settings,
    opts: ConnectionOptions,
    cancel: CancellationToken,
) -> Connection {
    let mut mqtt = settings.mqtt_options(&opts.client_id);
    mqtt.set_manual_acks(opts.manual_acks);
    mqtt.set_inflight(opts.inflight.max(1));
    mqtt.set_max_packet_size(opts.max_incoming_packet, opts.max_outgoing_packet);
    let (client, mut eventloop) = AsyncClient::new(mqtt, opts.request_capacity.max(1));
    eventloop.network_options.set_tcp_nodelay(true);
    eventloop
        .network_options
        .set_connection_timeout(settings.keepalive.as_secs().clamp(5, 30));
    let (tx, events) = mpsc::unbounded_channel();
    let driver = Driver {
        client: client.clone(),
        backoff: Backoff::new(settings.reconnect_min, settings.reconnect_max),
        ctx: FailureContext::new(settings),
        subscriptions: opts
            .subscriptions
            .iter()
            .map(|t| SubscribeFilter::new(t.clone(), settings.qos))
            .collect(),
        qos: settings.qos,
        client_id: opts.client_id,
        tx,
        cancel,
        keepalive: settings.keepalive,
        clean_session: settings.clean_session,
        quiet: opts.quiet_failures,
        subscribed: false,
        suback_due: None,
        connected_at: None,
        had_session: false,
        quick_drops: 0,
    };
    let task = tokio::spawn(async move { driver.run(&mut eventloop).await });
    Connection {
        client,
        events,
        task,
    }
}

/// A SUBSCRIBE queued on the current connection whose SUBACK has not arrived yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubackDue {
    /// Queued, not yet written (its packet id is not known yet).
    Queued,
    /// Written with this packet id.
    Sent(u16),
}

struct Driver {
    client: AsyncClient,
    backoff: Backoff,
    ctx: FailureContext,
    subscriptions: Vec<SubscribeFilter>,
    qos: QoS,
    client_id: String,
    tx: mpsc::UnboundedSender<ConnectionEvent>,
    cancel: CancellationToken,
    keepalive: Duration,
    clean_session: bool,
    quiet: bool,
    /// The broker holds our subscriptions: it confirmed them with a SUBACK in the
    /// session it still has. Only then can nothing published to them be dropped.
    /// False at start, since a stored session may hold an earlier configuration's filters.
    subscribed: bool,
    suback_due: Option<SubackDue>,
    /// When the current connection was accepted.
    connected_at: Option<Instant>,
    /// A CONNACK of this process already opened a persistent session.
    had_session: bool,
    /// Connections in a row that the broker closed within a keepalive of accepting them.
    quick_drops: u32,
}

/// What happened to one event.
enum Handled {
    Continue,
    /// The connection is finished (DISCONNECT sent, or a permanent failure reported).
    Finished,
}

impl Driver {
    async fn run(mut self, el: &mut EventLoop) {
        loop {
            let connecting = el.network.is_none();
            let polled = if connecting {
                // Nothing half-read can be lost while connecting, so cancellation may interrupt it.
                tokio::select! {
                    r = el.poll() => r,
                    _ = self.cancel.cancelled() => return,
                }
            } else {
                el.poll().await
            };
            match polled {
                Ok(event) => {
                    if let Handled::Finished = self.handle(event) {
                        return;
                    }
                }
                Err(e) => {
                    // rumqttc may still hold events it read before the failure (a PUBACK,
                    // a publish, the packet id of a held-back publish). They belong to the
                    // old connection, so the owner must see them before `Disconnected`,
                    // never after the next `Connected`.
                    while let Some(event) = el.state.events.pop_front() {
                        if let Handled::Finished = self.handle(event) {
                            return;
                        }
                    }
                    match classify(&e, &self.ctx, connecting) {
                        Failure::Permanent(cause) => {
                            self.fail(cause);
                            return;
                        }
                        Failure::Transient(reason) => {
                            if self.cancel.is_cancelled() || !self.pause(el, reason).await {
                                return;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Reports a failure that retrying cannot fix; the owner logs it.
    fn fail(&self, cause: String) {
        let failure = PermanentFailure {
            broker: self.ctx.broker.clone(),
            cause,
        };
        debug!(client_id = %self.client_id, "{failure}");
        let _ = self.tx.send(ConnectionEvent::Failed(failure));
    }

    /// Passes one event on to the owner.
    fn handle(&mut self, event: Event) -> Handled {
        match event {
            Event::Incoming(Incoming::ConnAck(ack)) => self.on_connack(ack.session_present),
            Event::Incoming(Incoming::Publish(p)) => {
                let _ = self.tx.send(ConnectionEvent::Message(p));
            }
            Event::Incoming(Incoming::PubAck(a)) => {
                let _ = self.tx.send(ConnectionEvent::Acked(a.pkid));
            }
            Event::Incoming(Incoming::PubComp(c)) => {
                let _ = self.tx.send(ConnectionEvent::Acked(c.pkid));
            }
            Event::Outgoing(Outgoing::Subscribe(pkid))
                if self.suback_due == Some(SubackDue::Queued) =>
            {
                self.suback_due = Some(SubackDue::Sent(pkid));
            }
            Event::Incoming(Incoming::SubAck(s)) => {
                if self.suback_due != Some(SubackDue::Sent(s.pkid)) {
                    return Handled::Continue;
                }
                self.suback_due = None;
                let refused: Vec<&str> = self
                    .subscriptions
                    .iter()
                    .zip(&s.return_codes)
                    .filter(|(_, c)| matches!(c, SubscribeReasonCode::Failure))
                    .map(|(f, _)| f.path.as_str())
                    .collect();
                if !refused.is_empty() {
                    self.fail(format!(
                        "the broker refused the subscription to {}{}: the broker's ACL does not let this user read {}; \
                         grant read access in the ACL or change the topic filters (--topic, MQTT_TOPICS)",
                        refused.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>().join(", "),
                        self.ctx.user_phrase(),
                        if refused.len() == 1 { "it" } else { "them" },
                    ));
                    return Handled::Finished;
                }
                self.subscribed = true;
                info!(client_id = %self.client_id, filters = ?self.filter_names(), "subscribed: the broker confirmed every subscription");
                let _ = self.tx.send(ConnectionEvent::Subscribed);
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                let pkid = if self.qos == QoS::AtMostOnce { 0 } else { pkid };
                let _ = self.tx.send(ConnectionEvent::Sent(pkid));
            }
            Event::Outgoing(Outgoing::Disconnect) => {
                debug!(client_id = %self.client_id, "disconnect sent");
                return Handled::Finished;
            }
            _ => {}
        }
        Handled::Continue
    }

    fn filter_names(&self) -> Vec<&str> {
        self.subscriptions.iter().map(|f| f.path.as_str()).collect()
    }

    fn on_connack(&mut self, session_present: bool) {
        self.connected_at = Some(Instant::now());
        info!(client_id = %self.client_id, broker = %self.ctx.broker, session_present, "connected");
        if !session_present {
            if self.had_session && !self.clean_session && !self.subscriptions.is_empty() {
                warn!(
                    client_id = %self.client_id,
                    broker = %self.ctx.broker,
                    "the broker no longer has the session it kept for this client: every message it was holding for us \
                     while we were away is lost (the broker restarted without persistence, or the session expired); \
                     `collector stats` shows the gaps; subscribing again"
                );
            }
            self.subscribed = false;
        }
        self.had_session |= !self.clean_session;
        if !self.subscriptions.is_empty() {
            if self.subscribed {
                let _ = self.tx.send(ConnectionEvent::Connected { session_present });
                let _ = self.tx.send(ConnectionEvent::Subscribed);
                return;
            }
            match self.client.try_subscribe_many(self.subscriptions.clone()) {
                Ok(()) => self.suback_due = Some(SubackDue::Queued),
                Err(e) => {
                    warn!(client_id = %self.client_id, "cannot queue the subscription: {e}");
                }
            }
        }
        let _ = self.tx.send(ConnectionEvent::Connected { session_present });
    }

    /// After a transient failure: let the owner stop publishing, make rumqttc
    /// forget its queued requests, wait out the backoff. False when cancelled.
    async fn pause(&mut self, el: &mut EventLoop, reason: String) -> bool {
        let reason = reason + &self.after_drop();
        let (resume_tx, resume_rx) = oneshot::channel();
        let _ = self.tx.send(ConnectionEvent::Disconnected {
            reason: reason.clone(),
            resume: resume_tx,
        });
        tokio::select! {
            _ = resume_rx => {}
            _ = self.cancel.cancelled() => return false,
        }
        // Everything rumqttc still holds was (or will be) re-sent by the owner; a
        // collision left over from the old session would otherwise hang the new one.
        el.clean();
        el.pending.clear();
        el.state.events.clear();
        el.state.collision = None;
        // A SUBSCRIBE without its SUBACK may or may not have reached the broker: renew it.
        self.suback_due = None;
        let delay = self.backoff.next_delay();
        let line = format!(
            "connection failed: {reason}; retrying in {:.1}s",
            delay.as_secs_f64()
        );
        if self.quiet {
            debug!(client_id = %self.client_id, broker = %self.ctx.broker, attempt = self.backoff.attempts(), "{line}");
        } else {
            warn!(client_id = %self.client_id, broker = %self.ctx.broker, attempt = self.backoff.attempts(), "{line}");
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = self.cancel.cancelled() => false,
        }
    }

    /// Resets the backoff after a connection that lasted a keepalive interval; counts
    /// the ones the broker dropped sooner, which is what two clients with one client id
    /// do to each other (a connect-then-kicked loop must not retry at the minimum delay).
    fn after_drop(&mut self) -> String {
        let Some(since) = self.connected_at.take() else {
            return String::new();
        };
        if since.elapsed() >= self.keepalive {
            self.backoff.reset();
            self.quick_drops = 0;
            return String::new();
        }
        self.quick_drops += 1;
        if self.quick_drops < 2 {
            return String::new();
        }
        format!(
            " ({} times in a row within {}s of being accepted: another client is probably connected with the same client id {:?}, \
             and each new connection makes the broker drop the older one; give every client its own MQTT_CLIENT_ID)",
            self.quick_drops,
            self.keepalive.as_secs(),
            self.client_id
        )
    }
}

/// What an error message needs to know about the configuration.
#[derive(Debug, Clone)]
struct FailureContext {
    broker: String,
    host: String,
    port: u16,
    user: Option<String>,
    password: bool,
    tls: bool,
    client_cert: bool,
}

impl FailureContext {
    fn new(s: &Settings) -> Self {
        FailureContext {
            broker: s.broker(),
            host: s.host.clone(),
            port: s.port,
            user: s.username.clone(),
            password: s.password.is_some(),
            tls: s.tls.is_some(),
            client_cert: s.tls.as_ref().is_some_and(|t| t.client_auth.is_some()),
        }
    }

    fn user_phrase(&self) -> String {
        match (&self.user, self.password) {
            (Some(u), true) => format!(" (user {u:?})"),
            (Some(u), false) => {
                format!(" (user {u:?}; no password was sent: MQTT_PASSWORD is not set)")
            }
            (None, _) => " (no user name was sent: MQTT_USERNAME is not set)".into(),
        }
    }
}

/// Transient failures are retried; permanent ones end the connection.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    Transient(String),
    Permanent(String),
}

fn classify(e: &ConnectionError, ctx: &FailureContext, connecting: bool) -> Failure {
    use Failure::*;
    match e {
        ConnectionError::ConnectionRefused(code) => match code {
            ConnectReturnCode::BadUserNamePassword => Permanent(format!(
                "the broker refused the user name or password{}; check MQTT_USERNAME and MQTT_PASSWORD",
                ctx.user_phrase()
            )),
            ConnectReturnCode::NotAuthorized => Permanent(format!(
                "the broker says this client is not authorised{}: wrong password, unknown user, \
                 or anonymous access is off; check MQTT_USERNAME and MQTT_PASSWORD against the broker's password file",
                ctx.user_phrase()
            )),
            ConnectReturnCode::BadClientId => Permanent(
                "the broker refused the client id; set MQTT_CLIENT_ID to a shorter id of plain characters".into(),
            ),
            ConnectReturnCode::RefusedProtocolVersion => Permanent(
                "the broker does not speak MQTT 3.1.1".into(),
            ),
            ConnectReturnCode::ServiceUnavailable => Transient("the broker is unavailable".into()),
            ConnectReturnCode::Success => Transient("unexpected CONNACK".into()),
        },
        ConnectionError::Tls(rumqttc::TlsError::DNSName(_)) => Permanent(format!(
            "MQTT_BROKER_HOST={:?} is not a valid host name for TLS",
            ctx.host
        )),
        // Garbage instead of a CONNACK: a TLS listener answers a plain CONNECT with a
        // TLS alert record, which parses as a broken MQTT packet.
        ConnectionError::MqttState(rumqttc::StateError::Deserialization(d))
            if connecting && !ctx.tls && !matches!(d, rumqttc::mqttbytes::Error::Io(_)) =>
        {
            Transient(format!(
                "the broker answered CONNECT with data that is not MQTT ({d}); port {} is probably a TLS listener: set MQTT_USE_TLS=true (8883 usually is TLS, 1883 plain MQTT)",
                ctx.port
            ))
        }
        ConnectionError::NotConnAck(_) if connecting && !ctx.tls => Transient(format!(
            "the broker answered CONNECT with something other than a CONNACK; if port {} is a TLS listener, set MQTT_USE_TLS=true",
            ctx.port
        )),
        // Some brokers wait in silence for the rest of a protocol they do not speak.
        ConnectionError::NetworkTimeout if connecting => Transient(if ctx.tls {
            format!(
                "no answer within the connection timeout during the TLS handshake or CONNECT; if this repeats, check that port {} is a TLS listener (8883 usually is, 1883 is plain MQTT)",
                ctx.port
            )
        } else {
            format!(
                "no CONNACK within the connection timeout; if this repeats, check that the broker is up and that port {} is a plain MQTT listener (if it is TLS, set MQTT_USE_TLS=true)",
                ctx.port
            )
        }),
        _ => match find_rustls_error(e) {
            // The handshake decides what is permanent; a TLS error on an established
            // session (a reset, a bad record on a flaky link) is a lost connection.
            Some(tls) if !connecting => Transient(format!("TLS: {tls}")),
            Some(tls) => classify_tls(tls, ctx),
            // A listener that does not speak TLS hangs up on our ClientHello without an
            // alert; so does a broker at max_connections, which is why this is retried.
            None if closed_during_handshake(e) => Transient(format!(
                "the broker closed the connection during the TLS handshake; if this repeats, check that port {} is a TLS listener (8883 usually is, 1883 is plain MQTT)",
                ctx.port
            )),
            None => Transient(plain_reason(e, ctx, connecting)),
        },
    }
}

fn closed_during_handshake(e: &ConnectionError) -> bool {
    use std::io::ErrorKind::*;
    matches!(e, ConnectionError::Tls(rumqttc::TlsError::Io(io))
        if matches!(io.kind(), UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe))
}

fn classify_tls(e: &rustls::Error, ctx: &FailureContext) -> Failure {
    use Failure::*;
    let fix_ca = "set MQTT_CA_CERTS to the CA certificate that signed the broker's certificate (ca.crt from `collector certgen`)";
    match e {
        rustls::Error::InvalidCertificate(ce) => Permanent(match ce {
            CertificateError::NotValidForNameContext { presented, .. } => format!(
                "TLS: the broker's certificate is not valid for {:?} (it names {}); set MQTT_BROKER_HOST to one of those or, in development only, MQTT_TLS_INSECURE=true",
                ctx.host,
                if presented.is_empty() { "no host at all".to_string() } else { presented.iter().map(|n| plain_name(n)).collect::<Vec<_>>().join(", ") }
            ),
            CertificateError::NotValidForName => format!(
                "TLS: the broker's certificate is not valid for {:?}; set MQTT_BROKER_HOST to a name the certificate carries or, in development only, MQTT_TLS_INSECURE=true",
                ctx.host
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "TLS: the broker's certificate has expired; renew it (for development certificates: `collector certgen --force`) and restart the broker".to_string()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "TLS: the broker's certificate is not valid yet; check the clock here and where the certificate was made".to_string()
            }
            CertificateError::UnknownIssuer => format!(
                "TLS: the broker's certificate is signed by a CA we do not trust; {fix_ca}"
            ),
            CertificateError::BadSignature => format!(
                "TLS: the broker's certificate has a bad signature; {fix_ca}"
            ),
            CertificateError::Revoked => "TLS: the broker's certificate has been revoked".to_string(),
            other => format!("TLS: the broker's certificate was refused ({other:?}); {fix_ca}"),
        }),
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::CertificateRequired | AlertDescription::HandshakeFailure
                if !ctx.client_cert =>
            {
                Permanent("TLS: the broker requires a client certificate and none is configured; set MQTT_CERTFILE and MQTT_KEYFILE".into())
            }
            AlertDescription::CertificateRequired => {
                Permanent("TLS: the broker requires a client certificate and refused ours; check MQTT_CERTFILE and MQTT_KEYFILE".into())
            }
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::DecryptError
            | AlertDescription::AccessDenied
                if ctx.client_cert =>
            {
                Permanent(format!(
                    "TLS: the broker rejected our client certificate ({alert:?}); MQTT_CERTFILE must be signed by the CA the broker trusts and not expired"
                ))
            }
            AlertDescription::HandshakeFailure | AlertDescription::ProtocolVersion => Permanent(format!(
                "TLS: the broker refused the handshake ({alert:?}); check its TLS version and cipher settings"
            )),
            other => Transient(format!("TLS alert from the broker: {other:?}")),
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } | rustls::Error::InappropriateHandshakeMessage { .. } => {
            Permanent(format!(
                "TLS: the broker did not answer with TLS; is port {} a TLS listener? (8883 usually is, 1883 is plain MQTT)",
                ctx.port
            ))
        }
        other if ctx.tls => Permanent(format!("TLS: {other}")),
        other => Transient(other.to_string()),
    }
}

/// rustls errors arrive wrapped in `io::Error`s at varying depths.
fn find_rustls_error(e: &ConnectionError) -> Option<&rustls::Error> {
    fn from_io(io: &std::io::Error) -> Option<&rustls::Error> {
        let inner = io.get_ref()?;
        if let Some(r) = inner.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        inner.downcast_ref::<std::io::Error>().and_then(from_io)
    }
    match e {
        ConnectionError::Tls(rumqttc::TlsError::TLS(r)) => Some(r),
        ConnectionError::Tls(rumqttc::TlsError::Io(io)) => from_io(io),
        ConnectionError::Io(io) => from_io(io),
        ConnectionError::MqttState(rumqttc::StateError::Io(io)) => from_io(io),
        // A TLS alert that arrives while reading the CONNACK surfaces as a decoding error.
        ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::Io(io),
        )) => from_io(io),
        _ => None,
    }
}

/// webpki names what the certificate presents in Debug form (`DnsName("a.b")`,
/// `IpAddress(127.0.0.1)`); the message shows only the name.
fn plain_name(presented: &str) -> &str {
    match presented.split_once('(') {
        Some((_, rest)) if rest.ends_with(')') => rest[..rest.len() - 1].trim_matches('"'),
        _ => presented,
    }
}

fn plain_reason(e: &ConnectionError, ctx: &FailureContext, connecting: bool) -> String {
    use rumqttc::StateError;
    use std::io::ErrorKind::*;
    let io = match e {
        ConnectionError::Io(io)
        | ConnectionError::MqttState(StateError::Io(io))
        | ConnectionError::MqttState(StateError::Deserialization(rumqttc::mqttbytes::Error::Io(
            io,
        )))
        | ConnectionError::Tls(rumqttc::TlsError::Io(io)) => Some(io.kind()),
        ConnectionError::MqttState(StateError::ConnectionAborted) => Some(UnexpectedEof),
        _ => None,
    };
    match (e, io) {
        (_, Some(ConnectionRefused)) => {
            "connection refused (is the broker running and listening on this port?)".into()
        }
        // A TLS listener hangs up on a plain CONNECT before any CONNACK.
        (_, Some(ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof))
            if connecting && !ctx.tls =>
        {
            format!(
                "the broker closed the connection before answering CONNECT; if this repeats, port {} may be a TLS listener: set MQTT_USE_TLS=true",
                ctx.port
            )
        }
        (_, Some(ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof)) => {
            "the broker closed the connection".into()
        }
        (_, Some(TimedOut)) | (ConnectionError::NetworkTimeout, _) => "timed out".into(),
        (ConnectionError::MqttState(StateError::AwaitPingResp), _) => {
            "no answer to keepalive ping: the connection is dead".into()
        }
        _ => e.to_string(),
    }
}

/// Waits for the next event, giving up after `timeout` (helper for owners and tests).
pub async fn next_event(
    events: &mut mpsc::UnboundedReceiver<ConnectionEvent>,
    timeout: Duration,
) -> Option<ConnectionEvent> {
    tokio::time::timeout(timeout, events.recv())
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(client_cert: bool) -> FailureContext {
        FailureContext {
            broker: "localhost:8883".into(),
            host: "mqtt.example.com".into(),
            port: 8883,
            user: Some("alice".into()),
            password: true,
            tls: true,
            client_cert,
        }
    }

    #[test]
    fn refusals_are_permanent_with_a_hint() {
        let Failure::Permanent(m) = classify(
            &ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword),
            &ctx(false),
            false,
        ) else {
            panic!()
        };
        assert!(m.contains("MQTT_PASSWORD") && m.contains("alice"), "{m}");
        let Failure::Permanent(m) = classify(
            &ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized),
            &ctx(false),
            false,
        ) else {
            panic!()
        };
        assert!(m.contains("not authorised"), "{m}");
        assert!(matches!(
            classify(
                &ConnectionError::ConnectionRefused(ConnectReturnCode::ServiceUnavailable),
                &ctx(false),
                false
            ),
            Failure::Transient(_)
        ));
    }

    #[test]
    fn network_errors_are_transient() {
        let e = ConnectionError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(
            matches!(classify(&e, &ctx(false), false), Failure::Transient(m) if m.contains("refused"))
        );
        assert!(matches!(
            classify(&ConnectionError::NetworkTimeout, &ctx(false), false),
            Failure::Transient(_)
        ));
    }

    #[test]
    fn closed_connections_say_what_to_check() {
        let reset = || {
            ConnectionError::MqttState(rumqttc::StateError::Deserialization(
                rumqttc::mqttbytes::Error::Io(std::io::Error::from(
                    std::io::ErrorKind::ConnectionReset,
                )),
            ))
        };
        let mut plain = ctx(false);
        plain.tls = false;
        let Failure::Transient(m) = classify(&reset(), &plain, false) else {
            panic!()
        };
        assert_eq!(m, "the broker closed the connection");
        let Failure::Transient(m) = classify(&reset(), &plain, true) else {
            panic!()
        };
        assert!(m.contains("MQTT_USE_TLS=true"), "{m}");
        let aborted = ConnectionError::MqttState(rumqttc::StateError::ConnectionAborted);
        assert!(
            matches!(classify(&aborted, &plain, false), Failure::Transient(m) if m == "the broker closed the connection")
        );
    }

    #[test]
    fn certificate_errors_name_the_cause() {
        let wrap = |r: rustls::Error| {
            ConnectionError::Tls(rumqttc::TlsError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                r,
            )))
        };
        let name = rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected: rustls::pki_types::ServerName::try_from("mqtt.example.com")
                .unwrap()
                .to_owned(),
            presented: vec!["localhost".into(), "127.0.0.1".into()],
        });
        let Failure::Permanent(m) = classify(&wrap(name), &ctx(false), true) else {
            panic!()
        };
        assert_eq!(m, "TLS: the broker's certificate is not valid for \"mqtt.example.com\" (it names localhost, 127.0.0.1); set MQTT_BROKER_HOST to one of those or, in development only, MQTT_TLS_INSECURE=true");
        let Failure::Permanent(m) = classify(
            &wrap(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
            &ctx(false),
            true,
        ) else {
            panic!()
        };
        assert!(m.contains("MQTT_CA_CERTS"), "{m}");
        let Failure::Permanent(m) = classify(
            &wrap(rustls::Error::AlertReceived(
                AlertDescription::CertificateRequired,
            )),
            &ctx(false),
            true,
        ) else {
            panic!()
        };
        assert!(m.contains("requires a client certificate"), "{m}");
        let Failure::Permanent(m) = classify(
            &wrap(rustls::Error::AlertReceived(AlertDescription::UnknownCA)),
            &ctx(true),
            true,
        ) else {
            panic!()
        };
        assert!(m.contains("rejected our client certificate"), "{m}");
    }
    #[test]
    fn tls_errors_on_an_established_session_are_transient() {
        let wrap = || {
            ConnectionError::Tls(rumqttc::TlsError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
            )))
        };
        assert!(matches!(
            classify(&wrap(), &ctx(false), true),
            Failure::Permanent(_)
        ));
        let Failure::Transient(m) = classify(&wrap(), &ctx(false), false) else {
            panic!("a TLS error after the handshake must be retried")
        };
        assert!(m.starts_with("TLS: "), "{m}");
        let bad_record = ConnectionError::MqttState(rumqttc::StateError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::DecryptError,
        )));
        assert!(matches!(
            classify(&bad_record, &ctx(false), false),
            Failure::Transient(_)
        ));
    }

    #[test]
    fn the_wrong_kind_of_port_gets_a_hint_at_once() {
        let mut plain = ctx(false);
        plain.tls = false;
        // What RabbitMQ's TLS port sends back to a plain CONNECT parses as a broken packet.
        let garbage = ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::BoundaryCrossed(256),
        ));
        let Failure::Transient(m) = classify(&garbage, &plain, true) else {
            panic!()
        };
        assert!(m.contains("MQTT_USE_TLS=true") && m.contains("8883"), "{m}");
        // A plain port that waits in silence for a CONNECT gets a TLS client's hello.
        let Failure::Transient(m) = classify(&ConnectionError::NetworkTimeout, &ctx(false), true)
        else {
            panic!()
        };
        assert!(m.contains("TLS listener") && m.contains("port 8883"), "{m}");
        let Failure::Transient(m) = classify(&ConnectionError::NetworkTimeout, &plain, true) else {
            panic!()
        };
        assert!(m.contains("MQTT_USE_TLS=true"), "{m}");
    }

    #[test]
    fn a_refused_password_says_when_none_was_sent() {
        let mut no_password = ctx(false);
        no_password.password = false;
        let Failure::Permanent(m) = classify(
            &ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized),
            &no_password,
            true,
        ) else {
            panic!()
        };
        assert!(m.contains("MQTT_PASSWORD is not set"), "{m}");
        let Failure::Permanent(m) = classify(
            &ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized),
            &ctx(false),
            true,
        ) else {
            panic!()
        };
        assert!(!m.contains("is not set"), "{m}");
    }
}
