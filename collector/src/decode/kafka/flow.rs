//! Pairing Kafka requests with responses on one flow, by correlation id.
//!
//! A client message holds one or more size-prefixed requests (clients pipeline them); each is
//! queued with its header and, for Produce, Fetch and Metadata, its first topic. A server
//! message holds responses, each starting with the correlation id of its request. A broker
//! answers a connection's requests in order, so a response pairs with the queued request of its
//! id, and the requests queued before it that it passed over were never answered (a Produce
//! with `acks=0` has no response): they leave as incomplete exchanges.
//!
//! Cut messages (the capture keeps a message's first snaplen bytes): a request cut before its
//! topic keeps its header, marked `request_truncated`; the requests beyond the cut are unknown
//! (`decode_errors_total{reason="kafka_request_cut"}`). A response cut before its error code
//! pairs with its request, marked `response_truncated`; the requests still waiting that were sent
//! before the cut response message began are answered by its uncaptured rest, and pair with it,
//! marked the same (`kafka_response_cut`). A size that cannot be a Kafka frame means the decoder
//! lost the framing: `decoder_desyncs_total{protocol="kafka",reason="bad_frame"}`, and the flow
//! is detected afresh.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use clovisor_proto::session::v1::{Kafka, Protocol};

use super::topic_ids::TopicIds;
use super::wire::{self, Reader, RequestHeader, Short};
use super::MAX_FRAME_BYTES;
use crate::decode::{
    Direction, Exchange, Fields, FlowDecoder, Message, MessageStats, Output, Step,
};

/// Requests waiting for responses at most; beyond, the oldest is given up (incomplete).
pub const MAX_PENDING: usize = 256;

#[derive(Debug)]
struct Pending {
    request: MessageStats,
    /// Position among the requests of its message.
    position: u32,
    kafka: Kafka,
    /// The first topic's id, while its name is not known.
    topic_id: Option<[u8; 16]>,
}

/// The Kafka state of one flow.
#[derive(Debug, Default)]
pub struct KafkaFlow {
    pending: VecDeque<Pending>,
    /// Topic names by id, shared with the decoder's other flows.
    topic_ids: Arc<TopicIds>,
}

/// One size-prefixed frame of a message: its bytes as captured, and whether it was cut.
struct Frame<'a> {
    bytes: &'a [u8],
    cut: bool,
}

/// The frames of `payload`, in order, until the captured bytes end; `Err` on a size that
/// cannot be a frame.
fn frames(payload: &[u8]) -> Result<(Vec<Frame<'_>>, bool), ()> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < payload.len() {
        let Some(size) = payload.get(at..at + 4) else {
            // The size itself is cut.
            return Ok((out, true));
        };
        let size = i32::from_be_bytes([size[0], size[1], size[2], size[3]]);
        let size = usize::try_from(size).map_err(|_| ())?;
        if size > MAX_FRAME_BYTES {
            return Err(());
        }
        let start = at + 4;
        let end = start.checked_add(size).ok_or(())?;
        match payload.get(start..end) {
            Some(bytes) => out.push(Frame { bytes, cut: false }),
            None => {
                out.push(Frame {
                    bytes: &payload[start.min(payload.len())..],
                    cut: true,
                });
                return Ok((out, true));
            }
        }
        at = end;
    }
    Ok((out, false))
}

impl FlowDecoder for KafkaFlow {
    fn on_message(&mut self, m: &Message<'_>, out: &mut dyn Output) -> Step {
        match m.direction {
            Direction::ClientToServer => self.on_requests(m, out),
            Direction::ServerToClient => self.on_responses(m, out),
        }
    }

    fn on_close(&mut self, out: &mut dyn Output) {
        while let Some(p) = self.pending.pop_front() {
            out.exchange(exchange(p, None));
        }
    }
}

impl KafkaFlow {
    /// A flow whose topic ids are named from `topic_ids`.
    pub fn new(topic_ids: Arc<TopicIds>) -> Self {
        Self {
            pending: VecDeque::new(),
            topic_ids,
        }
    }

    fn on_requests(&mut self, m: &Message<'_>, out: &mut dyn Output) -> Step {
        let Ok((frames, cut)) = frames(m.payload) else {
            out.desync("bad_frame");
            return Step::Redetect;
        };
        let mut position = 0u32;
        for frame in frames {
            let mut r = Reader::new(frame.bytes);
            let header = match RequestHeader::read(&mut r) {
                Ok(h) => h,
                Err(Short) if frame.cut => {
                    out.decode_error("kafka_request_cut");
                    break;
                }
                Err(_) => {
                    out.desync("bad_frame");
                    return Step::Redetect;
                }
            };
            let (topics, truncated) =
                match wire::request_topics(header.api_key, header.api_version, &mut r) {
                    Ok(t) => {
                        let cut = t_cut(&t);
                        (t, cut)
                    }
                    Err(_) if frame.cut => (wire::Topics::default(), true),
                    Err(_) => {
                        out.decode_error("kafka_malformed_request");
                        (wire::Topics::default(), false)
                    }
                };
            if truncated {
                out.decode_error("kafka_request_cut");
            }
            if self.pending.len() >= MAX_PENDING {
                if let Some(oldest) = self.pending.pop_front() {
                    out.exchange(exchange(oldest, None));
                }
            }
            // A topic named by id: its name when a Metadata response gave it already, else
            // looked up again when the response comes.
            let by_id = topics.first_id.filter(|_| topics.first.is_none());
            let named = by_id.and_then(|id| self.topic_ids.name(&id));
            let topic_id = by_id.filter(|_| named.is_none());
            let topic = topics.first.map(|t| t.text).or(named).unwrap_or_default();
            self.pending.push_back(Pending {
                request: m.stats,
                position,
                topic_id,
                kafka: Kafka {
                    api_key: u32::from(header.api_key.unsigned_abs()),
                    api_version: u32::from(header.api_version.unsigned_abs()),
                    correlation_id: header.correlation_id,
                    client_id: header.client_id.map(|c| c.text).unwrap_or_default(),
                    topic,
                    topic_count: topics.count,
                    error_code: None,
                    request_truncated: truncated,
                    response_truncated: false,
                },
            });
            position = position.saturating_add(1);
        }
        if cut || m.is_cut() {
            // What lies past the captured bytes (the rest of a cut request, further requests)
            // is unknown; counted once per message.
            if position == 0
                || !self
                    .pending
                    .back()
                    .is_some_and(|p| p.kafka.request_truncated)
            {
                out.decode_error("kafka_request_cut");
            }
        }
        Step::Continue
    }

    fn on_responses(&mut self, m: &Message<'_>, out: &mut dyn Output) -> Step {
        let Ok((frames, cut)) = frames(m.payload) else {
            out.desync("bad_frame");
            self.answer_sent_before(m.stats, out);
            return Step::Redetect;
        };
        for frame in frames {
            let mut r = Reader::new(frame.bytes);
            let Ok(correlation_id) = r.i32() else {
                break;
            };
            let Some(at) = self
                .pending
                .iter()
                .position(|p| p.kafka.correlation_id == correlation_id)
            else {
                out.unpaired("response_without_request");
                continue;
            };
            // Requests before it were never answered.
            for _ in 0..at {
                if let Some(p) = self.pending.pop_front() {
                    out.exchange(exchange(p, None));
                }
            }
            let Some(mut p) = self.pending.pop_front() else {
                continue;
            };
            let key = i16::try_from(p.kafka.api_key).unwrap_or(i16::MAX);
            let version = i16::try_from(p.kafka.api_version).unwrap_or(i16::MAX);
            // Response header v1 (tagged fields) when flexible; ApiVersions always answers v0.
            let header = if wire::flexible(key, version) && key != 18 {
                r.tagged_fields()
            } else {
                Ok(())
            };
            if key == 3 && header.is_ok() {
                // Metadata: what it says of topic ids serves every flow's Fetch and Produce.
                self.topic_ids
                    .learn(wire::metadata_topic_ids(version, &mut r.clone()));
            }
            if let Some(id) = p.topic_id.take() {
                match self.topic_ids.name(&id) {
                    Some(name) => p.kafka.topic = name,
                    None => out.decode_error("kafka_topic_id_unknown"),
                }
            }
            match header.and_then(|()| wire::response_error(key, version, &mut r)) {
                Ok(code) => p.kafka.error_code = code.map(i32::from),
                Err(_) if frame.cut => {
                    out.decode_error("kafka_response_cut");
                    p.kafka.response_truncated = true;
                }
                Err(_) => out.decode_error("kafka_malformed_response"),
            }
            out.exchange(exchange(p, Some(m.stats)));
        }
        if cut || m.is_cut() {
            self.answer_sent_before(m.stats, out);
        }
        Step::Continue
    }

    /// Pairs the requests still waiting that were sent before `response` began with it: a
    /// cut response message answers them in its uncaptured rest.
    fn answer_sent_before(&mut self, response: MessageStats, out: &mut dyn Output) {
        let mut counted = false;
        while self
            .pending
            .front()
            .is_some_and(|p| p.request.start <= response.start)
        {
            let Some(mut p) = self.pending.pop_front() else {
                break;
            };
            if !counted {
                out.decode_error("kafka_response_cut");
                counted = true;
            }
            p.kafka.response_truncated = true;
            out.exchange(exchange(p, Some(response)));
        }
    }
}

/// Whether reading the topics stopped at a cut string.
fn t_cut(t: &wire::Topics) -> bool {
    t.first.as_ref().is_some_and(|f| f.truncated)
}

fn exchange(p: Pending, response: Option<MessageStats>) -> Exchange {
    Exchange {
        protocol: Protocol::Kafka,
        request: p.request,
        incomplete: response.is_none(),
        response,
        position: p.position,
        fields: Fields::Kafka(p.kafka),
        trace: None,
        attributes: HashMap::new(),
    }
}
