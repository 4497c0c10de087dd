//! Forwarding of decoded sessions to the correlator, delivered at least once through the shared
//! delivery protocol (numbered batches, acks, bounded replay, reconnect with backoff).

use std::sync::Arc;

use clovisor_proto::delivery::{DeliveryConfig, DeliveryStats, Sender};
use clovisor_proto::hops::{EncodedSession, SessionConnector, SessionHop};
use tokio::sync::mpsc;

/// Delivers sessions from a channel to the correlator a [`SessionConnector`] reaches (a gRPC
/// channel, or a correlator in this process).
pub struct Forwarder {
    sender: Sender<SessionHop, SessionConnector>,
}

impl Forwarder {
    /// A forwarder identifying itself as `sender_id` (unique per collector process).
    pub fn new(
        sender_id: impl Into<String>,
        correlator: SessionConnector,
        config: DeliveryConfig,
    ) -> Self {
        let hop = SessionHop {
            sender: sender_id.into(),
        };
        Self {
            sender: Sender::new(hop, correlator, config),
        }
    }

    /// Delivery counters, readable while the forwarder runs.
    pub fn stats(&self) -> Arc<DeliveryStats> {
        self.sender.stats()
    }

    /// Runs until `sessions` closes (then drains what is buffered) or `shutdown` resolves.
    pub async fn run(
        self,
        sessions: mpsc::Receiver<EncodedSession>,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) {
        self.sender.run(sessions, shutdown).await;
    }
}
