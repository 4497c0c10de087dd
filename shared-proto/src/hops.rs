//! The two hops of the pipeline framed for [`crate::delivery`]: probe -> collector
//! ([`CaptureHop`]) and collector -> correlator ([`SessionHop`]), each with a connector over a
//! tonic [`Channel`].

use std::future::Future;
use std::pin::Pin;

use futures::StreamExt;
use prost::Message as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::capture::v1 as capture;
use crate::delivery::{BatchContract, Connector, Inbound};
use crate::session::v1 as session;

/// Probe -> collector: `Record`s in `RecordBatch`es, opened by a `Hello`.
#[derive(Debug, Clone)]
pub struct CaptureHop {
    /// Sent first on every stream.
    pub hello: capture::Hello,
}

impl BatchContract for CaptureHop {
    type Item = capture::Record;
    type Outbound = capture::ProbeMessage;
    type Inbound = capture::CollectorMessage;

    fn hello(&self) -> Option<Self::Outbound> {
        Some(capture::ProbeMessage {
            kind: Some(capture::probe_message::Kind::Hello(self.hello.clone())),
        })
    }

    fn batch(&self, seq: u64, records: Vec<Self::Item>) -> Self::Outbound {
        capture::ProbeMessage {
            kind: Some(capture::probe_message::Kind::Batch(capture::RecordBatch {
                seq,
                records,
            })),
        }
    }

    fn size(msg: &Self::Outbound) -> usize {
        msg.encoded_len()
    }

    fn ack(msg: &Self::Inbound) -> Option<u64> {
        let Some(capture::collector_message::Kind::Ack(ack)) = &msg.kind else {
            return None;
        };
        Some(ack.seq)
    }
}

/// Collector -> correlator: `Session`s in `SessionBatch`es tagged with the sender's id.
#[derive(Debug, Clone)]
pub struct SessionHop {
    /// Stable for the life of the sending process.
    pub sender: String,
}

impl BatchContract for SessionHop {
    type Item = session::Session;
    type Outbound = session::SessionBatch;
    type Inbound = session::SessionAck;

    fn hello(&self) -> Option<Self::Outbound> {
        None
    }

    fn batch(&self, seq: u64, sessions: Vec<Self::Item>) -> Self::Outbound {
        session::SessionBatch {
            seq,
            sessions,
            sender: self.sender.clone(),
        }
    }

    fn size(msg: &Self::Outbound) -> usize {
        msg.encoded_len()
    }

    fn ack(msg: &Self::Inbound) -> Option<u64> {
        Some(msg.seq)
    }
}

/// Opens `Capture.Stream` on a channel.
#[derive(Debug, Clone)]
pub struct CaptureConnector(pub Channel);

impl Connector<CaptureHop> for CaptureConnector {
    fn open(
        &mut self,
        outbound: ReceiverStream<capture::ProbeMessage>,
    ) -> Pin<Box<dyn Future<Output = Result<Inbound<CaptureHop>, tonic::Status>> + Send + '_>> {
        let mut client = capture::capture_client::CaptureClient::new(self.0.clone());
        Box::pin(async move {
            let inbound = client.stream(outbound).await?.into_inner();
            Ok(inbound.boxed())
        })
    }
}

/// Opens `SessionIngest.Push` on a channel.
#[derive(Debug, Clone)]
pub struct SessionConnector(pub Channel);

impl Connector<SessionHop> for SessionConnector {
    fn open(
        &mut self,
        outbound: ReceiverStream<session::SessionBatch>,
    ) -> Pin<Box<dyn Future<Output = Result<Inbound<SessionHop>, tonic::Status>> + Send + '_>> {
        let mut client = session::session_ingest_client::SessionIngestClient::new(self.0.clone());
        Box::pin(async move {
            let inbound = client.push(outbound).await?.into_inner();
            Ok(inbound.boxed())
        })
    }
}

/// A lazily connecting channel to `url` (`http://host:port`): connection errors surface per
/// stream and the delivery protocol retries them.
pub fn lazy_channel(url: &str) -> Result<Channel, InvalidUrl> {
    Ok(Channel::from_shared(url.to_owned())
        .map_err(|_| InvalidUrl(url.to_owned()))?
        .tcp_nodelay(true)
        .http2_keep_alive_interval(std::time::Duration::from_secs(20))
        .connect_lazy())
}

/// A peer address that is not a valid `http://host:port` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidUrl(pub String);

impl std::fmt::Display for InvalidUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not a valid http://host:port URL: {:?}", self.0)
    }
}

impl std::error::Error for InvalidUrl {}
