//! Kafka (the binary protocol over TCP, classic and flexible versions): detected by a request
//! header at the start of a client message — a size that fits the message, a known API key at a
//! plausible version, a client id of printable characters; the port 9092 admits API keys not in
//! our table. Each request pairs with the response carrying its correlation id.
//!
//! - [`wire`]: the primitive types, headers and the bodies read (Produce, Fetch, Metadata,
//!   ApiVersions), from bytes cut anywhere.
//! - [`flow`]: the per-flow queue that pairs them into [`Exchange`](super::Exchange)s.
//!
//! - [`topic_ids`]: topic names by id, learnt from Metadata responses, for Fetch and Produce
//!   v13+ which name topics by id only.
//!
//! What leaves the collector of a request is its API key and version, correlation id, client
//! id and first topic; of a response its error code. Record keys and values never do.

pub mod flow;
pub mod topic_ids;
pub mod wire;

use std::sync::Arc;

pub use flow::KafkaFlow;

use super::{CaptureNeeds, Decoder, Detection, Direction, FlowDecoder, FlowInfo, Message, Within};
use wire::{Reader, RequestHeader};

/// Bytes of a message Kafka makes use of: the request header and the start of its body (the
/// topic), or the response's error codes.
pub const USEFUL_PREFIX: u32 = 512;

/// The largest frame believed (the broker's default `socket.request.max.bytes`, 100 MiB).
pub const MAX_FRAME_BYTES: usize = 100 * 1024 * 1024;

/// The port Kafka brokers listen on by convention.
pub const KAFKA_PORT: u32 = 9092;

/// Highest request version believed (Fetch, the most revised API, is at 17).
const MAX_VERSION: i16 = 30;

/// The Kafka [`Decoder`]; its flows share what Metadata responses said of topic ids.
#[derive(Debug, Clone, Default)]
pub struct Kafka {
    topic_ids: Arc<topic_ids::TopicIds>,
}

/// Whether `payload`, a client message of `total` bytes in all, starts with a Kafka request.
pub fn looks_like_request(payload: &[u8], total: u64, on_kafka_port: bool) -> bool {
    let mut r = Reader::new(payload);
    let Ok(size) = r.i32() else {
        return false;
    };
    // The smallest request: a v1 header with a null client id and an empty body.
    let Ok(size) = usize::try_from(size) else {
        return false;
    };
    if !(10..=MAX_FRAME_BYTES).contains(&size) {
        return false;
    }
    // The frame fits in the message (which may hold more frames).
    let fits = u64::try_from(size)
        .ok()
        .and_then(|s| s.checked_add(4))
        .is_some_and(|end| end <= total);
    if !fits {
        return false;
    }
    let Ok(header) = RequestHeader::read(&mut r) else {
        return false;
    };
    let known = u32::try_from(header.api_key)
        .ok()
        .is_some_and(|k| clovisor_proto::kafka::api_name(k).is_some());
    let plausible_key = known || (on_kafka_port && (0..100).contains(&header.api_key));
    let printable = header
        .client_id
        .as_ref()
        .is_none_or(|c| c.text.bytes().all(|b| b.is_ascii_graphic() || b == b' '));
    plausible_key && (0..=MAX_VERSION).contains(&header.api_version) && printable
}

impl Decoder for Kafka {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn capture_needs(&self) -> CaptureNeeds {
        CaptureNeeds {
            prefix: USEFUL_PREFIX,
            // The size and correlation id of every request and response of a message.
            within: Within::FrameHeaders { bytes: 8 },
        }
    }

    fn detect(&self, flow: &FlowInfo<'_>, first: &Message<'_>) -> Detection {
        if first.direction != Direction::ClientToServer {
            return Detection::No;
        }
        if looks_like_request(
            first.payload,
            first.stats.bytes.max(first.payload.len() as u64),
            flow.key.server_port == KAFKA_PORT,
        ) {
            Detection::Claim
        } else {
            Detection::No
        }
    }

    fn new_flow(&self, _: &FlowInfo<'_>) -> Box<dyn FlowDecoder> {
        Box::new(KafkaFlow::new(Arc::clone(&self.topic_ids)))
    }
}

#[cfg(test)]
mod tests;
