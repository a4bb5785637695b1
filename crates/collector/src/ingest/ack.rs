//! [`Acker`]: how ingest acknowledges a message once it is committed. The MQTT
//! client in production; a recorder in the tests, so the loop runs without a broker.

use rumqttc::{AsyncClient, Publish, QoS};
use std::future::Future;

/// The connection is gone: the acknowledgement was not written, and the broker
/// keeps the message to send it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the MQTT connection is gone; the message was not acknowledged")]
pub struct AckLost;

/// Sends the acknowledgement (PUBACK for QoS 1, PUBREC for QoS 2) of a received publish.
pub trait Acker: Send {
    /// Acknowledges the publish with this packet id, received with this QoS.
    fn ack(&mut self, pkid: u16, qos: QoS) -> impl Future<Output = Result<(), AckLost>> + Send;
}

impl Acker for AsyncClient {
    async fn ack(&mut self, pkid: u16, qos: QoS) -> Result<(), AckLost> {
        // rumqttc reads only the packet id and the QoS of the publish it acknowledges.
        let mut p = Publish::new("", qos, Vec::new());
        p.pkid = pkid;
        AsyncClient::ack(self, &p).await.map_err(|_| AckLost)
    }
}
