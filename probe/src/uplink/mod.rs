//! gRPC uplink to the collector: records are framed into numbered batches and delivered at least
//! once through the shared delivery protocol (bounded replay buffer, acks, reconnect with backoff).

use std::sync::Arc;
use std::time::Duration;

use clovisor_proto::capture::v1::Hello;
use clovisor_proto::delivery::{DeliveryConfig, DeliveryStats, Sender};
use clovisor_proto::hops::{CaptureConnector, CaptureHop, RecordChunk};
use tokio::sync::mpsc;

/// Who this probe is, told to the collector at the start of every stream.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Unique for this process's life.
    pub probe_id: String,
    /// Kubernetes node (or host) name.
    pub node: String,
    /// Bytes of each message the kernel copies.
    pub snaplen: u32,
}

impl Identity {
    /// An identity with a fresh random probe id.
    pub fn new(node: impl Into<String>, snaplen: u32) -> Self {
        Self {
            probe_id: format!("{:016x}", rand::random::<u64>()),
            node: node.into(),
            snaplen,
        }
    }
}

/// How the probe delivers: the shared protocol's defaults, with batches of up to 4096 records (an
/// exchange makes two or three records at each point: fewer, larger batches mean fewer HTTP/2
/// frames, acknowledgements and wake-ups per exchange) or the shared 1 MiB, which leaves the
/// receivers' 4 MiB room for the chunk that crosses it (a chunk's messages captured call by call
/// carry up to 64 KiB each), sealed after 20 ms when not full, and a replay buffer of 16 MiB
/// (about 100k records — seconds of a busy node — kept for a collector that restarts; the
/// probe's whole resident memory budget is 50 MiB).
///
/// The views of one exchange reach the probe through two ring buffers (the tc programs' and the
/// socket point's), each drained every 10 ms ([`crate::capture::RING_POLL`]): a batch that spans
/// more than 10 ms of records (1 MiB is about 17 ms of all-in-one's under load) puts them in one
/// batch or the next, where the collector's local join (which holds a batch until the next one,
/// 30 ms at most) merges them. Batches of 1024 records, 5 ms of an all-in-one node under load,
/// left 13 % of its exchanges with a view two batches away, joined by the correlator instead, at
/// a higher cost; a 50 ms flush outlasted the local join's hold at lower rates.
pub fn delivery_config() -> DeliveryConfig {
    DeliveryConfig {
        max_batch_items: 4096,
        flush_interval: Duration::from_millis(20),
        replay_bytes: 16 << 20,
        ..DeliveryConfig::default()
    }
}

/// Records per chunk handed to the uplink at most, so that a chunk-bounded queue stays bounded
/// in records.
pub const CHUNK_RECORDS: usize = 256;

/// The uplink: takes records from a channel and delivers them to the collector `collector`
/// reaches.
pub struct Uplink {
    sender: Sender<CaptureHop, CaptureConnector>,
}

impl Uplink {
    /// An uplink for `identity` through `collector`, remembering up to `max_flows` open flows to
    /// announce again to a collector that restarted, presenting the token in `token_file` (the
    /// pod's projected service account token for the collector's audience) on every stream.
    pub fn new(
        identity: &Identity,
        collector: CaptureConnector,
        config: DeliveryConfig,
        max_flows: usize,
        token_file: Option<std::path::PathBuf>,
    ) -> Self {
        let hello = Hello {
            probe_id: identity.probe_id.clone(),
            node: identity.node.clone(),
            snaplen: identity.snaplen,
        };
        let hop = CaptureHop::new(&hello, max_flows);
        Self {
            sender: Sender::new(hop, collector.with_token_file(token_file), config),
        }
    }

    /// Delivery counters, readable while the uplink runs.
    pub fn stats(&self) -> Arc<DeliveryStats> {
        self.sender.stats()
    }

    /// Runs until `records` closes (then drains what is buffered) or `shutdown` resolves.
    /// Records come encoded, in chunks: one channel send per turn of a producer, not per record.
    pub async fn run(
        self,
        records: mpsc::Receiver<RecordChunk>,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) {
        self.sender.run(records, shutdown).await;
    }
}
