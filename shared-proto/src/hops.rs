//! The two hops of the pipeline framed for [`crate::delivery`]: probe -> collector
//! ([`CaptureHop`]) and collector -> correlator ([`SessionHop`]), each with a connector over a
//! tonic [`Channel`] (made by [`crate::tls::ClientTransport`]).
//!
//! Batches are encoded once, when they are sealed, and kept encoded ([`Bytes`]) in the replay
//! buffer: sending or re-sending one copies nothing but its reference count, and the receiver
//! decodes the same protobuf messages as ever. The probe encodes its records as it makes them
//! and hands them over in chunks ([`RecordChunk`], one per turn of its event loop): a batch is
//! then its framing and a copy of its chunks. `Message` records, the bulk of them, are encoded by
//! hand from their fields ([`MessageFields`], [`ChunkBuilder::push_message`]): the bytes prost
//! would write for the same record, without building it first.

use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::pin::Pin;

use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use prost::Message as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

use crate::capture::v1 as capture;
use crate::delivery::{BatchContract, Connector, DeliveryConfig, Opening};
use crate::session::encode::SessionNames;
use crate::session::v1 as session;
use crate::wire::Out;

/// Field numbers the hand-framed messages use (see the `.proto` files).
mod field {
    /// `ProbeMessage.batch`.
    pub const PROBE_BATCH: u32 = 2;
    /// `ProbeMessage.flows`.
    pub const PROBE_FLOWS: u32 = 3;
    /// `RecordBatch.seq`.
    pub const BATCH_SEQ: u32 = 1;
    /// `RecordBatch.records`.
    pub const BATCH_RECORDS: u32 = 2;
    /// `Record.message`.
    pub const RECORD_MESSAGE: u32 = 1;
    /// `FlowTable.flows`.
    pub const TABLE_FLOWS: u32 = 1;
    /// `SessionBatch.seq`.
    pub const SESSION_BATCH_SEQ: u32 = 1;
    /// `SessionBatch.sessions`.
    pub const SESSION_BATCH_SESSIONS: u32 = 2;
    /// `SessionBatch.sender`.
    pub const SESSION_BATCH_SENDER: u32 = 3;
}

/// Records already encoded, each as a `RecordBatch.records` field, ready to be copied into a
/// batch as they are; with what the hop must know of the flows they start and end. Made by a
/// [`ChunkBuilder`]; the probe's records are encoded once, right after they are made.
#[derive(Debug, Clone, Default)]
pub struct RecordChunk {
    body: Bytes,
    records: u64,
    /// Flows started in this chunk: id and the encoded `FlowStart`.
    starts: Vec<(u64, Bytes)>,
    /// Flows ended in this chunk.
    ends: Vec<u64>,
}

impl RecordChunk {
    /// Records in the chunk.
    pub fn len(&self) -> u64 {
        self.records
    }

    /// Whether the chunk holds no record.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// The chunk's records, encoded: a run of `RecordBatch.records` fields.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The chunk's records, decoded (tests and tools; the pipeline never decodes them).
    pub fn decode(&self) -> Result<Vec<capture::Record>, prost::DecodeError> {
        // A run of `records` fields is a `RecordBatch` without its `seq`.
        Ok(capture::RecordBatch::decode(self.body.clone())?.records)
    }
}

/// Encodes records into [`RecordChunk`]s. One buffer is reused across chunks: a chunk takes the
/// bytes written since the last one, the rest of the allocation stays for the next.
#[derive(Debug, Default)]
pub struct ChunkBuilder {
    buf: BytesMut,
    records: u64,
    starts: Vec<(u64, Bytes)>,
    ends: Vec<u64>,
}

/// Bytes a [`ChunkBuilder`] allocates at a time: small enough to be reused from the allocator's
/// free lists (and reclaimed in place once its chunks are gone), large enough for a turn of
/// the event loop at a high rate.
const CHUNK_BUFFER_BYTES: usize = 64 << 10;

impl ChunkBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `record`.
    pub fn push(&mut self, record: &capture::Record) {
        match &record.kind {
            Some(capture::record::Kind::FlowStart(start)) => {
                self.starts
                    .push((start.flow_id, Bytes::from(start.encode_to_vec())));
            }
            Some(capture::record::Kind::FlowEnd(end)) => self.ends.push(end.flow_id),
            Some(capture::record::Kind::Message(m)) => {
                if let Some(fields) = MessageFields::of(m) {
                    self.push_message(&fields);
                    return;
                }
            }
            _ => {}
        }
        let len = prost::encoding::message::encoded_len(field::BATCH_RECORDS, record);
        if self.buf.capacity() - self.buf.len() < len {
            self.buf.reserve(len.max(CHUNK_BUFFER_BYTES));
        }
        prost::encoding::message::encode(field::BATCH_RECORDS, record, &mut self.buf);
        self.records += 1;
    }

    /// Appends the `Message` record `m`, encoded by hand: the bytes prost writes for
    /// `Record { kind: Message(m.to_message()) }`, with each length computed once and each
    /// payload copied once, straight from where it is.
    pub fn push_message(&mut self, m: &MessageFields<'_>) {
        let body = m.body_len();
        let record = 1 + encoded_len_varint(body as u64) + body;
        let len = 1 + encoded_len_varint(record as u64) + record;
        if self.buf.capacity() - self.buf.len() < len {
            self.buf.reserve(len.max(CHUNK_BUFFER_BYTES));
        }
        // Written into room measured first, not through `BufMut` (a capacity check per byte of
        // every varint: 6.5 % of the probe's time in its profile).
        let start = self.buf.len();
        self.buf.resize(start + len, 0);
        let written = self.buf.get_mut(start..).map(|room| {
            let mut out = Out::new(room);
            out.put(key_byte(field::BATCH_RECORDS, WireType::LengthDelimited));
            out.put_varint(record as u64);
            out.put(key_byte(field::RECORD_MESSAGE, WireType::LengthDelimited));
            out.put_varint(body as u64);
            m.write_body(&mut out);
            out.written()
        });
        if written != Some(len) {
            // Measured and written by the same field list, so never; were they ever to
            // disagree, the record is still sent right.
            self.buf.truncate(start);
            let record = capture::Record {
                kind: Some(capture::record::Kind::Message(m.to_message())),
            };
            prost::encoding::message::encode(field::BATCH_RECORDS, &record, &mut self.buf);
        }
        self.records += 1;
    }

    /// Records pushed since the last chunk.
    pub fn len(&self) -> u64 {
        self.records
    }

    /// Whether nothing was pushed since the last chunk.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// The records pushed since the last chunk.
    pub fn take(&mut self) -> RecordChunk {
        RecordChunk {
            body: self.buf.split().freeze(),
            records: std::mem::take(&mut self.records),
            starts: std::mem::take(&mut self.starts),
            ends: std::mem::take(&mut self.ends),
        }
    }

    /// One chunk of `records`.
    pub fn chunk_of<'a>(records: impl IntoIterator<Item = &'a capture::Record>) -> RecordChunk {
        let mut b = Self::new();
        for r in records {
            b.push(r);
        }
        b.take()
    }
}

/// The fields of a `capture.v1.Message` record as a probe that announces its flows
/// (`FlowStart`) sets them, borrowed from where they are: [`ChunkBuilder::push_message`] encodes
/// them without building the `Message` (nor copying its payload into one first). `flow`, `point`
/// and `protocol` travel in the flow's `FlowStart` and are never set here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageFields<'a> {
    /// `Message.flow_id`.
    pub flow_id: u64,
    /// `Message.index`.
    pub index: u32,
    /// `Message.direction` (a `Direction`).
    pub direction: i32,
    /// `Message.to_pod`.
    pub to_pod: bool,
    /// `Message.start_unix_nanos`.
    pub start_unix_nanos: u64,
    /// `Message.end_unix_nanos`.
    pub end_unix_nanos: u64,
    /// `Message.tcp_seq`.
    pub tcp_seq: u32,
    /// `Message.bytes`.
    pub bytes: u64,
    /// `Message.packets`.
    pub packets: u32,
    /// `Message.retransmits`.
    pub retransmits: u32,
    /// `Message.payload`.
    pub payload: &'a [u8],
    /// `Message.partial`.
    pub partial: bool,
    /// `Message.wire`.
    pub wire: Option<capture::WireCounters>,
    /// `Message.segments`.
    pub segments: &'a [capture::Segment],
}

/// Field numbers of `capture.v1.Message` (and of its `Segment`s) as [`MessageFields`] writes them.
mod message_field {
    pub const FLOW_ID: u32 = 3;
    pub const INDEX: u32 = 4;
    pub const DIRECTION: u32 = 5;
    pub const TO_POD: u32 = 6;
    pub const START_UNIX_NANOS: u32 = 7;
    pub const END_UNIX_NANOS: u32 = 8;
    pub const TCP_SEQ: u32 = 9;
    pub const BYTES: u32 = 10;
    pub const PACKETS: u32 = 11;
    pub const RETRANSMITS: u32 = 12;
    pub const PAYLOAD: u32 = 13;
    pub const PARTIAL: u32 = 15;
    pub const WIRE: u32 = 16;
    pub const SEGMENTS: u32 = 30;
    pub const SEGMENT_OFFSET: u32 = 1;
    pub const SEGMENT_PAYLOAD: u32 = 2;
    /// The counters' fields of a `Message` and of its `WireCounters`, in field order: start,
    /// end, TCP sequence number, bytes, packets, retransmits.
    pub const COUNTERS: [u32; 6] = [
        START_UNIX_NANOS,
        END_UNIX_NANOS,
        TCP_SEQ,
        BYTES,
        PACKETS,
        RETRANSMITS,
    ];
    pub const WIRE_COUNTERS: [u32; 6] = [1, 2, 3, 4, 5, 6];
}

/// A message's counters as `Message` and `WireCounters` both carry them, the timings fixed64.
#[derive(Debug, Clone, Copy)]
struct Counters {
    start_unix_nanos: u64,
    end_unix_nanos: u64,
    tcp_seq: u32,
    bytes: u64,
    packets: u32,
    retransmits: u32,
}

fn wire_counters(w: &capture::WireCounters) -> Counters {
    Counters {
        start_unix_nanos: w.start_unix_nanos,
        end_unix_nanos: w.end_unix_nanos,
        tcp_seq: w.tcp_seq,
        bytes: w.bytes,
        packets: w.packets,
        retransmits: w.retransmits,
    }
}

/// The encoded length of `c`'s fields.
fn counters_len(c: Counters) -> usize {
    fixed64_field_len(c.start_unix_nanos)
        + fixed64_field_len(c.end_unix_nanos)
        + varint_field_len(u64::from(c.tcp_seq))
        + varint_field_len(c.bytes)
        + varint_field_len(u64::from(c.packets))
        + varint_field_len(u64::from(c.retransmits))
}

/// Writes `c`'s fields under the field numbers `tags` (in [`message_field::COUNTERS`]'s order).
fn put_counters(tags: &[u32; 6], c: Counters, out: &mut Out<'_>) {
    put_fixed64_field(tags[0], c.start_unix_nanos, out);
    put_fixed64_field(tags[1], c.end_unix_nanos, out);
    put_varint_field(tags[2], u64::from(c.tcp_seq), out);
    put_varint_field(tags[3], c.bytes, out);
    put_varint_field(tags[4], u64::from(c.packets), out);
    put_varint_field(tags[5], u64::from(c.retransmits), out);
}

/// The key of field `tag` (< 16: one byte).
const fn key_byte(tag: u32, wire_type: WireType) -> u8 {
    ((tag << 3) | wire_type as u32) as u8
}

/// Bytes of a varint field holding `v` with a one-byte key, 0 when `v` is proto3's default.
fn varint_field_len(v: u64) -> usize {
    if v == 0 {
        0
    } else {
        1 + encoded_len_varint(v)
    }
}

/// Bytes of a bytes field of `len` bytes with a one-byte key, 0 when empty.
fn bytes_field_len(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        1 + encoded_len_varint(len as u64) + len
    }
}

/// Writes a varint field with a one-byte key, nothing when `v` is proto3's default.
fn put_varint_field(tag: u32, v: u64, out: &mut Out<'_>) {
    if v != 0 {
        out.put(key_byte(tag, WireType::Varint));
        out.put_varint(v);
    }
}

/// Bytes of a fixed64 field with a one-byte key, 0 when `v` is proto3's default.
fn fixed64_field_len(v: u64) -> usize {
    if v == 0 {
        0
    } else {
        9
    }
}

/// Writes a fixed64 field with a one-byte key, nothing when `v` is proto3's default.
fn put_fixed64_field(tag: u32, v: u64, out: &mut Out<'_>) {
    if v != 0 {
        out.put(key_byte(tag, WireType::SixtyFourBit));
        out.put_slice(&v.to_le_bytes());
    }
}

/// Writes a bytes field with a one-byte key, nothing when empty.
fn put_bytes_field(tag: u32, bytes: &[u8], out: &mut Out<'_>) {
    if !bytes.is_empty() {
        out.put(key_byte(tag, WireType::LengthDelimited));
        out.put_varint(bytes.len() as u64);
        out.put_slice(bytes);
    }
}

/// An `int32` (an enum) as protobuf carries it: negative values sign-extended to 64 bits.
fn int32_varint(v: i32) -> u64 {
    i64::from(v) as u64
}

impl<'a> MessageFields<'a> {
    /// The fields of `m`, or `None` when it sets what a probe that announces its flows never
    /// does (`flow`, `point`, `protocol`): prost encodes that one.
    pub fn of(m: &'a capture::Message) -> Option<Self> {
        if m.flow.is_some() || m.point.is_some() || m.protocol != 0 {
            return None;
        }
        Some(Self {
            flow_id: m.flow_id,
            index: m.index,
            direction: m.direction,
            to_pod: m.to_pod,
            start_unix_nanos: m.start_unix_nanos,
            end_unix_nanos: m.end_unix_nanos,
            tcp_seq: m.tcp_seq,
            bytes: m.bytes,
            packets: m.packets,
            retransmits: m.retransmits,
            payload: &m.payload,
            partial: m.partial,
            wire: m.wire,
            segments: &m.segments,
        })
    }

    /// The `Message` these fields stand for (its payload and segments copied).
    pub fn to_message(&self) -> capture::Message {
        capture::Message {
            flow: None,
            point: None,
            flow_id: self.flow_id,
            index: self.index,
            direction: self.direction,
            to_pod: self.to_pod,
            start_unix_nanos: self.start_unix_nanos,
            end_unix_nanos: self.end_unix_nanos,
            tcp_seq: self.tcp_seq,
            bytes: self.bytes,
            packets: self.packets,
            retransmits: self.retransmits,
            payload: Bytes::copy_from_slice(self.payload),
            protocol: 0,
            partial: self.partial,
            wire: self.wire,
            segments: self.segments.to_vec(),
        }
    }

    /// The encoded length of a `Segment`.
    fn segment_len(s: &capture::Segment) -> usize {
        varint_field_len(s.offset) + bytes_field_len(s.payload.len())
    }

    /// The encoded length of a `WireCounters`.
    fn wire_len(w: &capture::WireCounters) -> usize {
        counters_len(wire_counters(w))
    }

    /// The message's own counters, in field order.
    fn counters(&self) -> Counters {
        Counters {
            start_unix_nanos: self.start_unix_nanos,
            end_unix_nanos: self.end_unix_nanos,
            tcp_seq: self.tcp_seq,
            bytes: self.bytes,
            packets: self.packets,
            retransmits: self.retransmits,
        }
    }

    /// The encoded length of the `Message`.
    fn body_len(&self) -> usize {
        let wire = self.wire.as_ref().map_or(0, |w| {
            let len = Self::wire_len(w);
            // Field 16's key takes two bytes.
            2 + encoded_len_varint(len as u64) + len
        });
        let segments: usize = self
            .segments
            .iter()
            .map(|s| {
                let len = Self::segment_len(s);
                // Field 30's key takes two bytes.
                2 + encoded_len_varint(len as u64) + len
            })
            .sum();
        varint_field_len(self.flow_id)
            + varint_field_len(u64::from(self.index))
            + varint_field_len(int32_varint(self.direction))
            + 2 * usize::from(self.to_pod)
            + counters_len(self.counters())
            + bytes_field_len(self.payload.len())
            + 2 * usize::from(self.partial)
            + wire
            + segments
    }

    /// Writes the `Message`'s fields, in field order (as prost does).
    fn write_body(&self, out: &mut Out<'_>) {
        use message_field as f;
        put_varint_field(f::FLOW_ID, self.flow_id, out);
        put_varint_field(f::INDEX, u64::from(self.index), out);
        put_varint_field(f::DIRECTION, int32_varint(self.direction), out);
        if self.to_pod {
            out.put_slice(&[key_byte(f::TO_POD, WireType::Varint), 1]);
        }
        put_counters(&f::COUNTERS, self.counters(), out);
        put_bytes_field(f::PAYLOAD, self.payload, out);
        if self.partial {
            out.put_slice(&[key_byte(f::PARTIAL, WireType::Varint), 1]);
        }
        if let Some(w) = &self.wire {
            out.key(f::WIRE, WireType::LengthDelimited);
            out.put_varint(Self::wire_len(w) as u64);
            put_counters(&f::WIRE_COUNTERS, wire_counters(w), out);
        }
        for s in self.segments {
            out.key(f::SEGMENTS, WireType::LengthDelimited);
            out.put_varint(Self::segment_len(s) as u64);
            put_varint_field(f::SEGMENT_OFFSET, s.offset, out);
            put_bytes_field(f::SEGMENT_PAYLOAD, &s.payload, out);
        }
    }
}

/// The flows a probe has announced and not yet ended (their `FlowStart`s, encoded), sent after
/// every `Hello` so a collector that lost them (a restart) learns them back. A flow leaves the
/// table once the batch carrying its end is acknowledged; beyond `max` flows the oldest
/// announced are forgotten (a flow that vanished from the kernel without an end).
#[derive(Debug)]
struct FlowRegistry {
    starts: HashMap<u64, Bytes>,
    /// Announcement order, for the bound; ids of flows already gone are skipped lazily.
    order: VecDeque<u64>,
    /// Ends seen, with the batch number that carries them.
    ended: VecDeque<(u64, u64)>,
    max: usize,
}

impl FlowRegistry {
    fn new(max: usize) -> Self {
        Self {
            starts: HashMap::new(),
            order: VecDeque::new(),
            ended: VecDeque::new(),
            max: max.max(1),
        }
    }

    fn observe(&mut self, chunk: &RecordChunk, seq: u64) {
        for (id, start) in &chunk.starts {
            if self.starts.insert(*id, start.clone()).is_none() {
                self.order.push_back(*id);
            }
        }
        for id in &chunk.ends {
            self.ended.push_back((seq, *id));
        }
        while self.starts.len() > self.max {
            match self.order.pop_front() {
                Some(id) => {
                    self.starts.remove(&id);
                }
                None => break,
            }
        }
        // Ids of flows gone meanwhile: keep the order queue from outgrowing the map.
        if self.order.len() > 2 * self.starts.len() + 64 {
            let starts = &self.starts;
            self.order.retain(|id| starts.contains_key(id));
        }
    }

    fn acked(&mut self, seq: u64) {
        while self.ended.front().is_some_and(|(s, _)| *s <= seq) {
            if let Some((_, id)) = self.ended.pop_front() {
                self.starts.remove(&id);
            }
        }
    }

    /// The table as `ProbeMessage`s of at most about `max_bytes` each.
    fn messages(&self, max_bytes: usize) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut body = BytesMut::new();
        for start in self.starts.values() {
            if !body.is_empty() && body.len() + start.len() + 16 > max_bytes {
                out.push(frame(field::PROBE_FLOWS, &body));
                body.clear();
            }
            encode_key(field::TABLE_FLOWS, WireType::LengthDelimited, &mut body);
            encode_varint(start.len() as u64, &mut body);
            body.put_slice(start);
        }
        if !body.is_empty() {
            out.push(frame(field::PROBE_FLOWS, &body));
        }
        out
    }
}

/// `body` as the length-delimited field `tag` of an otherwise empty message.
fn frame(tag: u32, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + 16);
    encode_key(tag, WireType::LengthDelimited, &mut out);
    encode_varint(body.len() as u64, &mut out);
    out.put_slice(body);
    out.freeze()
}

/// The largest `FlowTable` message sent at once (well under tonic's 4 MiB decode limit).
const FLOW_TABLE_MESSAGE_BYTES: usize = 1 << 20;

/// Probe -> collector: `Record`s in `RecordBatch`es, opened by a `Hello` and the open flows.
#[derive(Debug)]
pub struct CaptureHop {
    hello: Bytes,
    flows: FlowRegistry,
}

impl CaptureHop {
    /// A hop that greets with `hello` and remembers up to `max_flows` open flows for the
    /// greeting of a new stream.
    pub fn new(hello: &capture::Hello, max_flows: usize) -> Self {
        let msg = capture::ProbeMessage {
            kind: Some(capture::probe_message::Kind::Hello(hello.clone())),
        };
        Self {
            hello: Bytes::from(msg.encode_to_vec()),
            flows: FlowRegistry::new(max_flows),
        }
    }
}

impl BatchContract for CaptureHop {
    type Item = RecordChunk;
    type Outbound = HopMessage;
    type Inbound = capture::CollectorMessage;

    fn hello(&self) -> Vec<HopMessage> {
        let mut out = vec![HopMessage::from(self.hello.clone())];
        out.extend(
            self.flows
                .messages(FLOW_TABLE_MESSAGE_BYTES)
                .into_iter()
                .map(HopMessage::from),
        );
        out
    }

    fn batch(&self, seq: u64, chunks: Vec<RecordChunk>) -> HopMessage {
        // The `RecordBatch` as field 2 of a `ProbeMessage`; its records are already encoded as
        // `records` fields, in the chunks: the batch is its head followed by them, not a copy
        // of them (the transport copies each once, into its own buffer).
        let records: usize = chunks.iter().map(|c| c.body.len()).sum();
        let body_len = 1 + encoded_len_varint(seq) + records;
        let mut head = BytesMut::with_capacity(24);
        encode_key(field::PROBE_BATCH, WireType::LengthDelimited, &mut head);
        encode_varint(body_len as u64, &mut head);
        encode_key(field::BATCH_SEQ, WireType::Varint, &mut head);
        encode_varint(seq, &mut head);
        let mut parts = Vec::with_capacity(chunks.len() + 1);
        parts.push(head.freeze());
        parts.extend(chunks.into_iter().map(|c| c.body));
        HopMessage(parts)
    }

    fn size(msg: &HopMessage) -> usize {
        msg.len()
    }

    fn ack(msg: &Self::Inbound) -> Option<u64> {
        let Some(capture::collector_message::Kind::Ack(ack)) = &msg.kind else {
            return None;
        };
        Some(ack.seq)
    }

    fn count(chunk: &RecordChunk) -> u64 {
        chunk.records
    }

    fn item_bytes(chunk: &RecordChunk) -> usize {
        chunk.body.len()
    }

    fn observe(&mut self, chunk: &RecordChunk, seq: u64) {
        self.flows.observe(chunk, seq);
    }

    fn acked(&mut self, seq: u64) {
        self.flows.acked(seq);
    }
}

/// Collector -> correlator: `Session`s in `SessionBatch`es tagged with the sender's id. Each
/// session is encoded once, by the probe stream that made it ([`SessionEncoder`]), framed as the
/// batch's field; a batch is then its head, those bytes as they are, and its sender.
#[derive(Debug, Clone)]
pub struct SessionHop {
    /// Stable for the life of the sending process.
    pub sender: String,
}

impl BatchContract for SessionHop {
    type Item = EncodedSession;
    type Outbound = HopMessage;
    type Inbound = session::SessionAck;

    fn hello(&self) -> Vec<HopMessage> {
        Vec::new()
    }

    fn batch(&self, seq: u64, sessions: Vec<Self::Item>) -> HopMessage {
        // The `SessionBatch`'s sequence number, its sessions as they were encoded (each already
        // framed as a `sessions` field), then its sender: the transport copies each part once,
        // into its own buffer.
        let mut parts = Vec::with_capacity(sessions.len() + 2);
        let mut head = BytesMut::with_capacity(key_len(field::SESSION_BATCH_SEQ) + 10);
        put_batch_seq(seq, &mut head);
        parts.push(head.freeze());
        parts.extend(sessions.into_iter().map(|s| s.framed));
        let mut tail =
            BytesMut::with_capacity(key_len(field::SESSION_BATCH_SENDER) + 10 + self.sender.len());
        put_batch_sender(&self.sender, &mut tail);
        parts.push(tail.freeze());
        HopMessage(parts)
    }

    fn item_bytes(session: &Self::Item) -> usize {
        session.framed_len()
    }

    fn size(msg: &HopMessage) -> usize {
        msg.len()
    }

    fn ack(msg: &Self::Inbound) -> Option<u64> {
        Some(msg.seq)
    }
}

/// A message sent on a hop, already encoded, in parts the transport writes one after another:
/// a probe's batch is its head followed by its chunks of records as they were encoded, so its
/// bytes are copied once on the way out (into the transport's buffer) rather than first joined
/// into one buffer of their own. Parts are shared (`Bytes`), so a batch kept for re-sending
/// costs no copy either.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HopMessage(Vec<Bytes>);

impl HopMessage {
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }

    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(Bytes::is_empty)
    }

    /// Its bytes in one buffer (tests, and readers of a whole message).
    pub fn to_bytes(&self) -> Bytes {
        match self.0.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            parts => {
                let mut out = BytesMut::with_capacity(self.len());
                for p in parts {
                    out.put_slice(p);
                }
                out.freeze()
            }
        }
    }
}

impl From<Bytes> for HopMessage {
    fn from(b: Bytes) -> Self {
        Self(vec![b])
    }
}

/// One `Session`, protobuf-encoded: what the collector hands its forwarder. Held as it will
/// sit in a `SessionBatch` — the `sessions` field's key and length, then the session — so a
/// batch is its sessions' bytes as they were encoded, not a copy of them ([`SessionHop`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedSession {
    framed: Bytes,
    /// Where the session's own bytes start in `framed`.
    at: usize,
}

impl EncodedSession {
    /// `session` encoded on its own (tests, and senders of a few sessions).
    pub fn of(session: &session::Session) -> Self {
        let len = session.encoded_len();
        let mut framed = BytesMut::with_capacity(key_len(field::SESSION_BATCH_SESSIONS) + 10 + len);
        put_session_key(len, &mut framed);
        let at = framed.len();
        session.encode_raw(&mut framed);
        Self {
            framed: framed.freeze(),
            at,
        }
    }

    /// The session's encoding.
    pub fn session_bytes(&self) -> &[u8] {
        self.framed.get(self.at..).unwrap_or_default()
    }

    /// The session again.
    pub fn decode(&self) -> Result<session::Session, prost::DecodeError> {
        session::Session::decode(self.session_bytes())
    }

    /// Bytes it takes in a `SessionBatch`: its field's key, length and encoding.
    fn framed_len(&self) -> usize {
        self.framed.len()
    }
}

/// Encodes sessions one after another into a shared buffer, each taking its bytes as an
/// [`EncodedSession`] (framed as a `SessionBatch`'s `sessions` field): one allocation for many
/// sessions, and no length walk before encoding (the buffer grows when a session does not fit
/// what is left).
#[derive(Debug, Default)]
pub struct SessionEncoder {
    buf: BytesMut,
    /// The lengths of a session's messages, measured before it is written (room kept).
    lens: Vec<usize>,
}

/// Room a [`SessionEncoder`] makes at a time.
const SESSION_BUFFER_BYTES: usize = 32 << 10;

impl SessionEncoder {
    /// An encoder with no buffer yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// `session`, encoded.
    pub fn encode(&mut self, session: &session::Session) -> EncodedSession {
        self.encode_named(session, &SessionNames::default())
    }

    /// `session` with `names` written into its ends where it leaves them empty, encoded
    /// ([`crate::session::encode::encode_framed`]).
    pub fn encode_named(
        &mut self,
        session: &session::Session,
        names: &SessionNames<'_>,
    ) -> EncodedSession {
        // Most sessions take a few hundred bytes; a larger one grows the buffer as it is written.
        if self.buf.capacity() - self.buf.len() < SESSION_BUFFER_BYTES / 8 {
            self.buf.reserve(SESSION_BUFFER_BYTES);
        }
        // By hand: prost's bytes in about two thirds of its time (`session::encode`).
        let len = crate::session::encode::encode_framed(
            session,
            names,
            &mut self.buf,
            &mut self.lens,
            put_session_key,
        );
        let framed = self.buf.split().freeze();
        EncodedSession {
            at: framed.len().saturating_sub(len),
            framed,
        }
    }
}

fn put_session_key(len: usize, buf: &mut BytesMut) {
    encode_key(
        field::SESSION_BATCH_SESSIONS,
        WireType::LengthDelimited,
        buf,
    );
    encode_varint(len as u64, buf);
}

/// A `SessionBatch`: `seq`, the sessions `put_sessions` writes (`body` bytes with their keys),
/// then `sender`.
fn session_batch(
    seq: u64,
    sender: &str,
    body: usize,
    put_sessions: impl FnOnce(&mut BytesMut),
) -> Bytes {
    let mut buf = BytesMut::with_capacity(
        body + key_len(field::SESSION_BATCH_SEQ)
            + encoded_len_varint(seq)
            + key_len(field::SESSION_BATCH_SENDER)
            + encoded_len_varint(sender.len() as u64)
            + sender.len(),
    );
    put_batch_seq(seq, &mut buf);
    put_sessions(&mut buf);
    put_batch_sender(sender, &mut buf);
    buf.freeze()
}

/// A `SessionBatch`'s sequence number field (none for 0, prost's default).
fn put_batch_seq(seq: u64, buf: &mut BytesMut) {
    if seq != 0 {
        encode_key(field::SESSION_BATCH_SEQ, WireType::Varint, buf);
        encode_varint(seq, buf);
    }
}

/// A `SessionBatch`'s sender field (none when empty, prost's default).
fn put_batch_sender(sender: &str, buf: &mut BytesMut) {
    if !sender.is_empty() {
        encode_key(field::SESSION_BATCH_SENDER, WireType::LengthDelimited, buf);
        encode_varint(sender.len() as u64, buf);
        buf.put_slice(sender.as_bytes());
    }
}

/// Encodes a `SessionBatch` of `sessions`, each encoded straight into the batch (its
/// `sessions` field is a session's encoding: see `session.proto`).
pub fn encode_session_batch(seq: u64, sender: &str, sessions: &[session::Session]) -> Bytes {
    let lens: Vec<usize> = sessions.iter().map(|s| s.encoded_len()).collect();
    let body = lens
        .iter()
        .map(|&l| key_len(field::SESSION_BATCH_SESSIONS) + encoded_len_varint(l as u64) + l)
        .sum();
    session_batch(seq, sender, body, |buf| {
        for (s, len) in sessions.iter().zip(lens) {
            put_session_key(len, buf);
            s.encode_raw(buf);
        }
    })
}

impl session::SessionBatch {
    /// A batch of `sessions`, each encoded.
    pub fn of(seq: u64, sender: &str, sessions: &[session::Session]) -> Self {
        Self {
            seq,
            sessions: sessions
                .iter()
                .map(|s| Bytes::from(s.encode_to_vec()))
                .collect(),
            sender: sender.to_owned(),
        }
    }
}

/// A codec that sends messages already encoded and decodes replies with prost.
struct Encoded<D>(PhantomData<fn() -> D>);

impl<D> Default for Encoded<D> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

/// Writes an encoded message as it is.
struct PassThrough;

impl Encoder for PassThrough {
    type Item = HopMessage;
    type Error = tonic::Status;

    fn encode(&mut self, item: HopMessage, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.reserve(item.len());
        for part in &item.0 {
            dst.put_slice(part);
        }
        Ok(())
    }
}

/// Decodes with prost.
struct ProstReply<D>(PhantomData<fn() -> D>);

impl<D: prost::Message + Default> Decoder for ProstReply<D> {
    type Item = D;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, tonic::Status> {
        D::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl<D: prost::Message + Default + Send + 'static> Codec for Encoded<D> {
    type Encode = HopMessage;
    type Decode = D;
    type Encoder = PassThrough;
    type Decoder = ProstReply<D>;

    fn encoder(&mut self) -> PassThrough {
        PassThrough
    }

    fn decoder(&mut self) -> ProstReply<D> {
        ProstReply(PhantomData)
    }
}

/// The receiving end of a hop in this process (`clovisor all-in-one`): it takes the sender's
/// messages as they were encoded and answers with its own, with nothing between them — no
/// HTTP/2 framing, no copy into a transport's buffers and out again, no tasks of a connection.
/// The messages and the delivery protocol (numbered batches, acknowledgements, replay) are the
/// hop's own, as over gRPC; only the transport is left out.
pub trait DirectReceiver<C: BatchContract<Outbound = HopMessage>>: Send + Sync + 'static {
    /// Opens one stream: `outbound` yields the sender's messages; the returned stream, the
    /// receiver's answers.
    fn open(&self, outbound: ReceiverStream<HopMessage>) -> Opening<'static, C>;
}

/// How a connector reaches its receiver.
enum Via<C: BatchContract<Outbound = HopMessage>> {
    /// gRPC over a channel (TCP, TLS, or the in-process pipes of [`crate::inproc`]).
    Grpc(Channel),
    /// A receiver in this process, called directly.
    Direct(std::sync::Arc<dyn DirectReceiver<C>>),
}

impl<C: BatchContract<Outbound = HopMessage>> Clone for Via<C> {
    fn clone(&self) -> Self {
        match self {
            Self::Grpc(channel) => Self::Grpc(channel.clone()),
            Self::Direct(receiver) => Self::Direct(std::sync::Arc::clone(receiver)),
        }
    }
}

impl<C: BatchContract<Outbound = HopMessage>> std::fmt::Debug for Via<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Grpc(channel) => f.debug_tuple("Grpc").field(channel).finish(),
            Self::Direct(_) => f.write_str("Direct"),
        }
    }
}

/// Opens `Capture.Stream` on a channel, presenting the probe's service account token when one
/// is configured ([`CaptureConnector::with_token_file`]) — or, in one process, streams to the
/// collector directly ([`CaptureConnector::direct`]).
#[derive(Debug, Clone)]
pub struct CaptureConnector {
    via: Via<CaptureHop>,
    token_file: Option<std::path::PathBuf>,
}

impl CaptureConnector {
    /// Streams over `channel`, with no token.
    pub fn new(channel: Channel) -> Self {
        Self {
            via: Via::Grpc(channel),
            token_file: None,
        }
    }

    /// Streams to `receiver`, a collector in this process (no token: nothing crosses a
    /// process boundary).
    pub fn direct(receiver: std::sync::Arc<dyn DirectReceiver<CaptureHop>>) -> Self {
        Self {
            via: Via::Direct(receiver),
            token_file: None,
        }
    }

    /// Sends the token in `path` as `authorization: Bearer …` metadata of every stream. The
    /// file is read at each (re)connect, so the kubelet's rotation of a projected token applies
    /// on the next stream; one that cannot be read fails the attempt (retried with backoff).
    pub fn with_token_file(mut self, path: Option<std::path::PathBuf>) -> Self {
        self.token_file = path;
        self
    }
}

impl Connector<CaptureHop> for CaptureConnector {
    fn open(&mut self, outbound: ReceiverStream<HopMessage>) -> Opening<'_, CaptureHop> {
        let channel = match &self.via {
            Via::Grpc(channel) => channel.clone(),
            Via::Direct(receiver) => return receiver.open(outbound),
        };
        let token_file = self.token_file.clone();
        Box::pin(async move {
            let mut request = tonic::Request::new(outbound);
            if let Some(path) = token_file {
                let value = bearer_metadata(&path).await?;
                request.metadata_mut().insert("authorization", value);
            }
            open_request::<capture::CollectorMessage>(
                channel,
                "/clovisor.capture.v1.Capture/Stream",
                request,
            )
            .await
        })
    }
}

/// `Bearer <the token in path>`, marked sensitive (never logged by the HTTP/2 stack).
async fn bearer_metadata(
    path: &std::path::Path,
) -> Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>, tonic::Status> {
    let text = tokio::fs::read_to_string(path).await.map_err(|e| {
        tonic::Status::failed_precondition(format!(
            "token file {} not readable: {e}",
            path.display()
        ))
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(tonic::Status::failed_precondition(format!(
            "token file {} is empty",
            path.display()
        )));
    }
    let mut value: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
        format!("Bearer {token}").parse().map_err(|_| {
            tonic::Status::failed_precondition(format!(
                "token file {} holds no valid header value",
                path.display()
            ))
        })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Opens `SessionIngest.Push` on a channel — or, in one process, streams to the correlator
/// directly ([`SessionConnector::direct`]).
#[derive(Debug, Clone)]
pub struct SessionConnector(Via<SessionHop>);

impl SessionConnector {
    /// Streams over `channel`.
    pub fn new(channel: Channel) -> Self {
        Self(Via::Grpc(channel))
    }

    /// Streams to `receiver`, a correlator in this process.
    pub fn direct(receiver: std::sync::Arc<dyn DirectReceiver<SessionHop>>) -> Self {
        Self(Via::Direct(receiver))
    }
}

impl Connector<SessionHop> for SessionConnector {
    fn open(&mut self, outbound: ReceiverStream<HopMessage>) -> Opening<'_, SessionHop> {
        let channel = match &self.0 {
            Via::Grpc(channel) => channel.clone(),
            Via::Direct(receiver) => return receiver.open(outbound),
        };
        Box::pin(async move {
            open_raw::<session::SessionAck>(
                channel,
                "/clovisor.session.v1.SessionIngest/Push",
                outbound,
            )
            .await
        })
    }
}

/// Opens the bidirectional stream `path` on `channel`, sending `outbound` as encoded and
/// decoding the replies as `D`.
async fn open_raw<D: prost::Message + Default + Send + Sync + 'static>(
    channel: Channel,
    path: &'static str,
    outbound: ReceiverStream<HopMessage>,
) -> Result<Pin<Box<dyn futures::Stream<Item = Result<D, tonic::Status>> + Send>>, tonic::Status> {
    open_request(channel, path, tonic::Request::new(outbound)).await
}

/// [`open_raw`] with a request carrying metadata.
async fn open_request<D: prost::Message + Default + Send + Sync + 'static>(
    channel: Channel,
    path: &'static str,
    request: tonic::Request<ReceiverStream<HopMessage>>,
) -> Result<Pin<Box<dyn futures::Stream<Item = Result<D, tonic::Status>> + Send>>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("not ready: {e}")))?;
    let inbound = grpc
        .streaming(
            request,
            tonic::codegen::http::uri::PathAndQuery::from_static(path),
            Encoded::<D>::default(),
        )
        .await?
        .into_inner();
    Ok(inbound.boxed())
}

/// How a collector delivers sessions to the correlator ([`SessionHop`]): the protocol's defaults,
/// with batches of up to 1024 sessions (and still at most `max_batch_bytes`). The correlator pays
/// for each batch as a whole — its sender's state, the join's lock, the metrics and analytics of
/// what became ready — so fewer, larger batches cost it less per exchange (about 7 % less than
/// batches of 256: docs/benchmarks.md); a batch fills in tens of milliseconds at tens of thousands
/// of exchanges per second, and leaves after `flush_interval` at lower rates, well inside the join
/// window the correlator waits anyway.
pub fn session_delivery_config() -> DeliveryConfig {
    DeliveryConfig {
        max_batch_items: 1024,
        ..DeliveryConfig::default()
    }
}

/// Largest message a hop's server decodes (tonic's default, stated): a probe's batches and flow
/// tables (1 MiB at most) and a collector's session batches stay well under it.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// Largest HTTP/2 frame a hop's server accepts (the protocol's default is 16 KiB). A batch of
/// sessions or records (tens to hundreds of KiB) then crosses as one frame, written by the
/// sender in one system call, instead of as one frame and one write per 16 KiB.
pub const MAX_FRAME_BYTES: u32 = 1 << 20;

/// The gRPC server a hop's receiving end (the collector's, the correlator's) is built on.
pub fn server_builder() -> tonic::transport::Server {
    tonic::transport::Server::builder().max_frame_size(MAX_FRAME_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(id: u64) -> capture::Record {
        capture::Record {
            kind: Some(capture::record::Kind::FlowStart(capture::FlowStart {
                flow_id: id,
                flow: Some(capture::FlowKey {
                    client_ip: vec![10, 0, 0, 2],
                    server_ip: vec![10, 0, 0, 3],
                    client_port: 40000,
                    server_port: 80,
                    transport: capture::Transport::Tcp as i32,
                }),
                point: Some(capture::ObservationPoint {
                    interface: "veth0".into(),
                    ..Default::default()
                }),
                protocol: capture::ProtocolHint::Http as i32,
                counters_only: false,
                wire_point: None,
            })),
        }
    }

    fn message(id: u64, payload: &'static [u8]) -> capture::Record {
        capture::Record {
            kind: Some(capture::record::Kind::Message(capture::Message {
                flow_id: id,
                payload: Bytes::from_static(payload),
                ..Default::default()
            })),
        }
    }

    fn end(id: u64) -> capture::Record {
        capture::Record {
            kind: Some(capture::record::Kind::FlowEnd(capture::FlowEnd {
                flow_id: id,
                ..Default::default()
            })),
        }
    }

    fn chunk(records: &[capture::Record]) -> RecordChunk {
        ChunkBuilder::chunk_of(records)
    }

    fn decode(bytes: &Bytes) -> capture::ProbeMessage {
        capture::ProbeMessage::decode(bytes.clone())
            .unwrap_or_else(|e| panic!("a hand-framed message must decode: {e}"))
    }

    #[test]
    fn a_batch_of_chunks_decodes_as_the_record_batch_it_stands_for() {
        let hop = CaptureHop::new(&capture::Hello::default(), 16);
        let first = vec![start(1), message(1, b"GET / HTTP/1.1")];
        let second = vec![message(1, b"HTTP/1.1 200 OK"), end(1)];
        let msg = hop.batch(7, vec![chunk(&first), chunk(&second)]);
        assert_eq!(
            msg.0.len(),
            3,
            "the head, then each chunk as it was encoded"
        );
        let bytes = msg.to_bytes();
        assert_eq!(msg.len(), bytes.len());
        let expected = capture::ProbeMessage {
            kind: Some(capture::probe_message::Kind::Batch(capture::RecordBatch {
                seq: 7,
                records: first.into_iter().chain(second).collect(),
            })),
        };
        assert_eq!(decode(&bytes), expected, "framing by hand = prost's");
        assert_eq!(
            bytes,
            Bytes::from(expected.encode_to_vec()),
            "byte for byte what prost encodes"
        );
        assert_eq!(CaptureHop::count(&chunk(&[start(1), end(1)])), 2);
        assert_eq!(
            chunk(&[start(3), message(3, b"x")]).decode().ok(),
            Some(vec![start(3), message(3, b"x")]),
            "a chunk decodes back to its records"
        );
    }

    /// A value near the edges of a varint's byte counts, or anything.
    fn edgy(rng: &mut impl rand::Rng, max: u64) -> u64 {
        match rng.random_range(0..6) {
            0 => 0,
            1 => max,
            2 => 1,
            // Just below and at a 7-bit boundary.
            3 => {
                let bits = rng.random_range(1..=63u32);
                ((1u64 << bits) - u64::from(rng.random_bool(0.5))).min(max)
            }
            _ => rng.random_range(0..=max),
        }
    }

    fn bytes_of(rng: &mut impl rand::Rng) -> Vec<u8> {
        let len = match rng.random_range(0..4) {
            0 => 0,
            1 => rng.random_range(126..=129),
            2 => rng.random_range(16_380..=16_390),
            _ => rng.random_range(0..600),
        };
        (0..len).map(|_| rng.random()).collect()
    }

    #[test]
    fn hand_encoded_messages_are_what_prost_encodes() {
        use rand::{Rng, SeedableRng};
        let seed: u64 = rand::random();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for case in 0..3000 {
            let payload = bytes_of(&mut rng);
            let segments: Vec<capture::Segment> = (0..rng.random_range(0..4usize))
                .map(|_| capture::Segment {
                    offset: edgy(&mut rng, u64::MAX),
                    payload: Bytes::from(bytes_of(&mut rng)),
                })
                .collect();
            let u32_of = |rng: &mut rand::rngs::StdRng| edgy(rng, u64::from(u32::MAX)) as u32;
            let fields = MessageFields {
                flow_id: edgy(&mut rng, u64::MAX),
                index: u32_of(&mut rng),
                // Negative (unknown) enum values too: ten bytes on the wire.
                direction: [0, 1, 2, -1, i32::MIN, i32::MAX][rng.random_range(0..6)],
                to_pod: rng.random(),
                start_unix_nanos: edgy(&mut rng, u64::MAX),
                end_unix_nanos: edgy(&mut rng, u64::MAX),
                tcp_seq: u32_of(&mut rng),
                bytes: edgy(&mut rng, u64::MAX),
                packets: u32_of(&mut rng),
                retransmits: u32_of(&mut rng),
                payload: &payload,
                partial: rng.random(),
                wire: rng.random_bool(0.5).then(|| capture::WireCounters {
                    start_unix_nanos: edgy(&mut rng, u64::MAX),
                    end_unix_nanos: edgy(&mut rng, u64::MAX),
                    tcp_seq: u32_of(&mut rng),
                    bytes: edgy(&mut rng, u64::MAX),
                    packets: u32_of(&mut rng),
                    retransmits: u32_of(&mut rng),
                }),
                segments: &segments,
            };
            let record = capture::Record {
                kind: Some(capture::record::Kind::Message(fields.to_message())),
            };
            let mut b = ChunkBuilder::new();
            // Twice, so that the second starts where the first ended.
            b.push_message(&fields);
            b.push_message(&fields);
            let chunk = b.take();
            let prost_bytes = capture::RecordBatch {
                seq: 0,
                records: vec![record.clone(), record.clone()],
            }
            .encode_to_vec();
            assert_eq!(
                &chunk.body[..],
                &prost_bytes[..],
                "case {case} (seed {seed}): hand-encoded {fields:?} differs from prost's bytes"
            );
            assert_eq!(
                chunk.decode().ok(),
                Some(vec![record.clone(), record.clone()]),
                "case {case} (seed {seed}): decodes to the record"
            );
            assert_eq!(chunk.len(), 2);
            let via_push = ChunkBuilder::chunk_of([&record]);
            assert_eq!(
                via_push.body,
                Bytes::from(record_field(&record)),
                "case {case} (seed {seed}): push of a Message record takes the same path"
            );
        }
    }

    /// `record` as a `RecordBatch.records` field, encoded by prost.
    fn record_field(record: &capture::Record) -> Vec<u8> {
        let mut out = Vec::new();
        prost::encoding::message::encode(field::BATCH_RECORDS, record, &mut out);
        out
    }

    #[test]
    fn messages_with_a_flow_key_or_point_are_encoded_by_prost() {
        let mut m = capture::Message {
            flow_id: 9,
            payload: Bytes::from_static(b"GET /"),
            protocol: capture::ProtocolHint::Http as i32,
            ..Default::default()
        };
        assert!(MessageFields::of(&m).is_none(), "protocol set");
        m.protocol = 0;
        assert!(MessageFields::of(&m).is_some());
        m.point = Some(capture::ObservationPoint::default());
        assert!(MessageFields::of(&m).is_none(), "point set");
        let record = capture::Record {
            kind: Some(capture::record::Kind::Message(m)),
        };
        assert_eq!(
            ChunkBuilder::chunk_of([&record]).body,
            Bytes::from(record_field(&record)),
            "an old-style message still encodes as prost does"
        );
    }

    #[test]
    fn a_batch_of_encoded_sessions_is_byte_for_byte_prosts() {
        let sessions: Vec<session::Session> = [10usize, 0, 40_000, 300]
            .iter()
            .enumerate()
            .map(|(i, &target)| session::Session {
                id: format!("s{i}"),
                http: Some(session::Http {
                    method: "GET".into(),
                    target: "/".repeat(target),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        // One encoder for all: the 40 kB one does not fit the buffer's room and grows it.
        let mut encoder = SessionEncoder::new();
        let encoded: Vec<EncodedSession> = sessions.iter().map(|s| encoder.encode(s)).collect();
        for (e, s) in encoded.iter().zip(&sessions) {
            assert_eq!(
                e,
                &EncodedSession::of(s),
                "the shared buffer changes no byte"
            );
            assert_eq!(e.decode().ok().as_ref(), Some(s));
        }
        let hop = SessionHop {
            sender: "collector-1".into(),
        };
        let framed: usize = encoded.iter().map(SessionHop::item_bytes).sum();
        let own: Vec<*const u8> = encoded.iter().map(|e| e.framed.as_ptr()).collect();
        let msg = hop.batch(9, encoded);
        assert_eq!(
            msg.0
                .iter()
                .skip(1)
                .take(own.len())
                .map(|p| p.as_ptr())
                .collect::<Vec<_>>(),
            own,
            "the batch is the sessions' bytes as encoded, not a copy"
        );
        let bytes = msg.to_bytes();
        let expected = session::SessionBatch::of(9, "collector-1", &sessions);
        assert_eq!(
            bytes,
            Bytes::from(expected.encode_to_vec()),
            "framing by hand = prost's"
        );
        assert_eq!(bytes, encode_session_batch(9, "collector-1", &sessions));
        let overhead = expected.encoded_len() - framed;
        assert_eq!(
            overhead,
            1 + 1 + 1 + 1 + "collector-1".len(),
            "item bytes are exact"
        );
    }

    #[test]
    fn the_greeting_lists_open_flows_until_their_end_is_acknowledged() {
        let hello = capture::Hello {
            probe_id: "p".into(),
            ..Default::default()
        };
        let mut hop = CaptureHop::new(&hello, 16);
        hop.observe(&chunk(&[start(1), start(2)]), 1);
        hop.observe(&chunk(&[end(1)]), 2);
        let ids = |hop: &CaptureHop| -> Vec<u64> {
            let msgs = hop.hello();
            assert_eq!(
                decode(&msgs[0].to_bytes()).kind,
                Some(capture::probe_message::Kind::Hello(hello.clone())),
                "Hello first"
            );
            let mut ids: Vec<u64> = msgs[1..]
                .iter()
                .flat_map(|m| match decode(&m.to_bytes()).kind {
                    Some(capture::probe_message::Kind::Flows(t)) => t.flows,
                    other => panic!("a FlowTable after the Hello, got {other:?}"),
                })
                .map(|f| f.flow_id)
                .collect();
            ids.sort_unstable();
            ids
        };
        assert_eq!(ids(&hop), [1, 2], "flow 1's end is not acknowledged yet");
        hop.acked(1);
        assert_eq!(ids(&hop), [1, 2], "its end travels in batch 2");
        hop.acked(2);
        assert_eq!(ids(&hop), [2], "ended and acknowledged: gone");
    }

    #[test]
    fn the_flow_table_is_bounded_and_split() {
        let mut hop = CaptureHop::new(&capture::Hello::default(), 3);
        let starts: Vec<capture::Record> = (1..=5).map(start).collect();
        hop.observe(&chunk(&starts), 1);
        let table = hop.flows.messages(usize::MAX);
        let kept: usize = table
            .iter()
            .map(|m| match decode(m).kind {
                Some(capture::probe_message::Kind::Flows(t)) => t.flows.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(kept, 3, "at most max flows, the newest");
        assert!(
            hop.flows.messages(64).len() >= 2,
            "a table larger than a message is split"
        );
    }
}
