//! `capture.v1.Record` decoded by hand, straight into the place the flow table takes it from.
//!
//! prost decodes a record through its generic field loop: a `merge_field` call per field, each
//! through the oneof's `merge`, a wire type check and a `Buf` of its own kind (varints read
//! through `Buf::chunk`, payloads through `copy_to_bytes`). Here a message record is one loop
//! over a byte slice, each key matched whole (field number and wire type in one comparison), each
//! value read into its field of the `Message` the slot already holds; payloads are slices of the
//! received buffer (`Bytes::slice_ref`), as with prost.
//!
//! The semantics are prost's on every input, valid or not (the property tests in `tests.rs`
//! check them against prost on random and mutated records):
//!
//! - fields in any order; a scalar, string or bytes field given twice keeps its last value; a
//!   message field given twice (the legacy `flow` and `point`) merges the second into the first;
//!   each `segments` field appends a segment; a field left out is its proto3 default;
//! - the oneof: a kind given twice merges, another kind replaces the one set;
//! - unknown fields (reserved `ObservationPoint` field 8 among them) are skipped, groups
//!   included, with prost's recursion limit;
//! - a record prost refuses is refused: bad varints (more than ten bytes, or past `u64`), keys
//!   past `u32`, wire types 6 and 7, field number 0, a known field with another wire type, a
//!   length past its message's end, strings that are not UTF-8, unmatched end-group keys.
//!
//! Records of the other kinds (`EndpointUpdate`, `ProbeStats`: a few per probe per minute) are
//! handed to prost whole ([`Decoded::Prost`]).

use bytes::Bytes;
use clovisor_proto::capture::v1::{
    record, FlowEnd, FlowKey, FlowStart, Message, ObservationPoint, Record, Segment, WireCounters,
};
use clovisor_proto::wire::{delimited, fixed64, skip, split_key, varint, WireError};
use prost::encoding::WireType;

#[cfg(test)]
mod tests;

/// Why a record (or the batch framing around it) did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not protobuf: a bad varint, key, wire type or length, a misplaced end group.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A known field with another wire type than its own.
    #[error("{field}: wire type {found:?}, expected {expected:?}")]
    WireType {
        /// `Message.field`.
        field: &'static str,
        /// The field's wire type.
        expected: WireType,
        /// What the key said.
        found: WireType,
    },
    /// A string field that is not UTF-8.
    #[error("{field}: not UTF-8")]
    NotUtf8 {
        /// `Message.field`.
        field: &'static str,
    },
    /// A record of a kind decoded by prost (endpoint, stats) that prost refused.
    #[error(transparent)]
    Prost(#[from] prost::DecodeError),
}

type Result<T, E = DecodeError> = std::result::Result<T, E>;

/// prost's recursion budget left where the fields of a `RecordBatch` (as the service decodes it,
/// one level below a `ProbeMessage`'s fields... or at top level) are read: each message level
/// spends one, each group level of an unknown field one (`prost::encoding::DecodeContext`).
pub(super) const BATCH_DEPTH: u32 = 100;
/// The budget of a record's fields (decoded as a length-delimited message: one level down).
const RECORD_DEPTH: u32 = BATCH_DEPTH - 1;

/// What [`decode_into`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decoded {
    /// The record is in the slot.
    Done,
    /// The record has an endpoint or stats field: decode it with prost, whole.
    Prost,
}

/// A message type's known fields, for the keys that matched none of its own: a known field
/// number with another wire type is an error, an unknown one is skipped.
pub(super) struct Fields {
    /// (number, `Message.field`, wire type)
    known: &'static [(u32, &'static str, WireType)],
}

/// Declares each message type's fields once: a constant per field, its key (number and wire
/// type, as encoded: what the decoders match), and the message's [`Fields`].
macro_rules! fields {
    ($($table:ident $message:literal { $($key:ident = $tag:literal $wire:ident $name:literal,)* })*) => {
        $(
            $(pub const $key: u64 = key($tag, WireType::$wire);)*
            pub const $table: Fields = Fields {
                known: &[$(($tag, concat!($message, ".", $name), WireType::$wire),)*],
            };
        )*
    };
}

/// Field keys of the fields read here, and each message's [`Fields`].
mod key {
    use super::Fields;
    use prost::encoding::WireType;

    const fn key(tag: u32, wire_type: WireType) -> u64 {
        ((tag as u64) << 3) | wire_type as u64
    }

    fields! {
        RECORD "Record" {
            RECORD_MESSAGE = 1 LengthDelimited "message",
            RECORD_FLOW_END = 2 LengthDelimited "flow_end",
            RECORD_FLOW_START = 5 LengthDelimited "flow_start",
        }
        MESSAGE "Message" {
            MSG_FLOW = 1 LengthDelimited "flow",
            MSG_POINT = 2 LengthDelimited "point",
            MSG_FLOW_ID = 3 Varint "flow_id",
            MSG_INDEX = 4 Varint "index",
            MSG_DIRECTION = 5 Varint "direction",
            MSG_TO_POD = 6 Varint "to_pod",
            MSG_START = 7 SixtyFourBit "start_unix_nanos",
            MSG_END = 8 SixtyFourBit "end_unix_nanos",
            MSG_TCP_SEQ = 9 Varint "tcp_seq",
            MSG_BYTES = 10 Varint "bytes",
            MSG_PACKETS = 11 Varint "packets",
            MSG_RETRANSMITS = 12 Varint "retransmits",
            MSG_PAYLOAD = 13 LengthDelimited "payload",
            MSG_PROTOCOL = 14 Varint "protocol",
            MSG_PARTIAL = 15 Varint "partial",
            MSG_WIRE = 16 LengthDelimited "wire",
            MSG_SEGMENTS = 30 LengthDelimited "segments",
        }
        WIRE "WireCounters" {
            WIRE_START = 1 SixtyFourBit "start_unix_nanos",
            WIRE_END = 2 SixtyFourBit "end_unix_nanos",
            WIRE_TCP_SEQ = 3 Varint "tcp_seq",
            WIRE_BYTES = 4 Varint "bytes",
            WIRE_PACKETS = 5 Varint "packets",
            WIRE_RETRANSMITS = 6 Varint "retransmits",
        }
        SEGMENT "Segment" {
            SEG_OFFSET = 1 Varint "offset",
            SEG_PAYLOAD = 2 LengthDelimited "payload",
        }
        FLOW_KEY "FlowKey" {
            KEY_CLIENT_IP = 1 LengthDelimited "client_ip",
            KEY_SERVER_IP = 2 LengthDelimited "server_ip",
            KEY_CLIENT_PORT = 3 Varint "client_port",
            KEY_SERVER_PORT = 4 Varint "server_port",
            KEY_TRANSPORT = 5 Varint "transport",
        }
        POINT "ObservationPoint" {
            POINT_KIND = 1 Varint "kind",
            POINT_IFINDEX = 2 Varint "ifindex",
            POINT_INTERFACE = 3 LengthDelimited "interface",
            POINT_NODE = 4 LengthDelimited "node",
            POINT_PID = 5 Varint "pid",
            POINT_COMM = 6 LengthDelimited "comm",
            POINT_NETNS = 7 Varint "netns_inode",
            POINT_SIDE = 9 Varint "side",
        }
        FLOW_END "FlowEnd" {
            END_FLOW = 1 LengthDelimited "flow",
            END_POINT = 2 LengthDelimited "point",
            END_FLOW_ID = 3 Varint "flow_id",
            END_REASON = 4 Varint "reason",
            END_NANOS = 5 SixtyFourBit "unix_nanos",
            END_MESSAGES = 6 Varint "messages",
            END_SRTT = 7 Varint "srtt_us",
            END_RETRANSMITS = 8 Varint "total_retransmits",
        }
        FLOW_START "FlowStart" {
            START_FLOW_ID = 1 Varint "flow_id",
            START_FLOW = 2 LengthDelimited "flow",
            START_POINT = 3 LengthDelimited "point",
            START_PROTOCOL = 4 Varint "protocol",
            START_COUNTERS_ONLY = 5 Varint "counters_only",
            START_WIRE_POINT = 6 LengthDelimited "wire_point",
        }
    }
}

impl Fields {
    /// A key none of the message's own matched: an error for a known field number (its wire
    /// type is wrong), else the field skipped.
    fn other(&self, key: u64, buf: &mut &[u8], depth: u32) -> Result<()> {
        let (tag, wire_type) = split_key(key)?;
        match self.known.iter().find(|(number, _, _)| *number == tag) {
            Some(&(_, field, expected)) => Err(DecodeError::WireType {
                field,
                expected,
                found: wire_type,
            }),
            None => Ok(skip(tag, wire_type, buf, depth)?),
        }
    }
}

/// A string field's new value (prost keeps the last one), reusing the string's allocation.
fn string(dst: &mut String, buf: &mut &[u8], field: &'static str) -> Result<()> {
    let value = std::str::from_utf8(delimited(buf)?).map_err(|_| DecodeError::NotUtf8 { field })?;
    dst.clear();
    dst.push_str(value);
    Ok(())
}

/// A `bytes` field held as `Vec<u8>`: its new value.
fn bytes_vec(dst: &mut Vec<u8>, buf: &mut &[u8]) -> Result<()> {
    let value = delimited(buf)?;
    dst.clear();
    dst.extend_from_slice(value);
    Ok(())
}

// prost's conversions of a varint to each scalar type: truncation, and bool for any non-zero.
#[inline(always)]
fn uint32(buf: &mut &[u8]) -> Result<u32> {
    Ok(varint(buf)? as u32)
}
#[inline(always)]
fn enumeration(buf: &mut &[u8]) -> Result<i32> {
    Ok(varint(buf)? as i32)
}
#[inline(always)]
fn boolean(buf: &mut &[u8]) -> Result<bool> {
    Ok(varint(buf)? != 0)
}

/// Decodes the record `bytes` (its length prefix read; a slice of `src`) into `slot`, replacing
/// what it held: a message record into the `Message` the slot holds, reset, keeping its
/// allocations. `Decoded::Prost` when the record has a kind left to prost; then `slot` is to be
/// decoded again by prost.
pub(super) fn decode_into(src: &Bytes, bytes: &[u8], slot: &mut Record) -> Result<Decoded> {
    let mut buf = bytes;
    // The kind this record has set so far (by its key); `None`: the slot still holds the
    // previous record.
    let mut set = None;
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        match key {
            key::RECORD_MESSAGE => {
                let value = delimited(&mut buf)?;
                match &mut slot.kind {
                    Some(record::Kind::Message(m)) => {
                        if set != Some(key) {
                            reset_message(m);
                        }
                        merge_message(m, value, src, RECORD_DEPTH - 1)?;
                    }
                    kind => {
                        let mut m = Message::default();
                        merge_message(&mut m, value, src, RECORD_DEPTH - 1)?;
                        *kind = Some(record::Kind::Message(m));
                    }
                }
            }
            key::RECORD_FLOW_END => {
                let value = delimited(&mut buf)?;
                match &mut slot.kind {
                    Some(record::Kind::FlowEnd(e)) => {
                        if set != Some(key) {
                            *e = FlowEnd::default();
                        }
                        merge_flow_end(e, value, RECORD_DEPTH - 1)?;
                    }
                    kind => {
                        let mut e = FlowEnd::default();
                        merge_flow_end(&mut e, value, RECORD_DEPTH - 1)?;
                        *kind = Some(record::Kind::FlowEnd(e));
                    }
                }
            }
            key::RECORD_FLOW_START => {
                let value = delimited(&mut buf)?;
                match &mut slot.kind {
                    Some(record::Kind::FlowStart(s)) => {
                        if set != Some(key) {
                            *s = FlowStart::default();
                        }
                        merge_flow_start(s, value, RECORD_DEPTH - 1)?;
                    }
                    kind => {
                        let mut s = FlowStart::default();
                        merge_flow_start(&mut s, value, RECORD_DEPTH - 1)?;
                        *kind = Some(record::Kind::FlowStart(s));
                    }
                }
            }
            // Endpoint (3) and stats (4), whatever their wire type: prost's.
            _ if matches!(key >> 3, 3 | 4) => return Ok(Decoded::Prost),
            _ => {
                key::RECORD.other(key, &mut buf, RECORD_DEPTH)?;
                continue;
            }
        }
        set = Some(key);
    }
    if set.is_none() {
        slot.kind = None;
    }
    Ok(Decoded::Done)
}

/// A message as prost's `Message::clear` leaves it, its segments' room kept.
fn reset_message(m: &mut Message) {
    let mut segments = std::mem::take(&mut m.segments);
    segments.clear();
    *m = Message {
        segments,
        ..Message::default()
    };
}

/// Merges the encoded `capture.v1.Message` `buf` (a slice of `src`) into `m`; `depth`: prost's
/// recursion budget for its fields.
fn merge_message(m: &mut Message, mut buf: &[u8], src: &Bytes, depth: u32) -> Result<()> {
    let buf = &mut buf;
    while !buf.is_empty() {
        match varint(buf)? {
            key::MSG_FLOW_ID => m.flow_id = varint(buf)?,
            key::MSG_INDEX => m.index = uint32(buf)?,
            key::MSG_DIRECTION => m.direction = enumeration(buf)?,
            key::MSG_TO_POD => m.to_pod = boolean(buf)?,
            key::MSG_START => m.start_unix_nanos = fixed64(buf)?,
            key::MSG_END => m.end_unix_nanos = fixed64(buf)?,
            key::MSG_TCP_SEQ => m.tcp_seq = uint32(buf)?,
            key::MSG_BYTES => m.bytes = varint(buf)?,
            key::MSG_PACKETS => m.packets = uint32(buf)?,
            key::MSG_RETRANSMITS => m.retransmits = uint32(buf)?,
            key::MSG_PAYLOAD => m.payload = src.slice_ref(delimited(buf)?),
            key::MSG_PROTOCOL => m.protocol = enumeration(buf)?,
            key::MSG_PARTIAL => m.partial = boolean(buf)?,
            key::MSG_WIRE => merge_wire(
                m.wire.get_or_insert_with(WireCounters::default),
                delimited(buf)?,
                depth - 1,
            )?,
            key::MSG_SEGMENTS => {
                let value = delimited(buf)?;
                let mut segment = Segment::default();
                merge_segment(&mut segment, value, src, depth - 1)?;
                m.segments.push(segment);
            }
            key::MSG_FLOW => merge_flow_key(
                m.flow.get_or_insert_with(FlowKey::default),
                delimited(buf)?,
                depth - 1,
            )?,
            key::MSG_POINT => merge_point(
                m.point.get_or_insert_with(ObservationPoint::default),
                delimited(buf)?,
                depth - 1,
            )?,
            key => key::MESSAGE.other(key, buf, depth)?,
        }
    }
    Ok(())
}

fn merge_wire(w: &mut WireCounters, mut buf: &[u8], depth: u32) -> Result<()> {
    let buf = &mut buf;
    while !buf.is_empty() {
        match varint(buf)? {
            key::WIRE_START => w.start_unix_nanos = fixed64(buf)?,
            key::WIRE_END => w.end_unix_nanos = fixed64(buf)?,
            key::WIRE_TCP_SEQ => w.tcp_seq = uint32(buf)?,
            key::WIRE_BYTES => w.bytes = varint(buf)?,
            key::WIRE_PACKETS => w.packets = uint32(buf)?,
            key::WIRE_RETRANSMITS => w.retransmits = uint32(buf)?,
            key => key::WIRE.other(key, buf, depth)?,
        }
    }
    Ok(())
}

fn merge_segment(s: &mut Segment, mut buf: &[u8], src: &Bytes, depth: u32) -> Result<()> {
    let buf = &mut buf;
    while !buf.is_empty() {
        match varint(buf)? {
            key::SEG_OFFSET => s.offset = varint(buf)?,
            key::SEG_PAYLOAD => s.payload = src.slice_ref(delimited(buf)?),
            key => key::SEGMENT.other(key, buf, depth)?,
        }
    }
    Ok(())
}

fn merge_flow_key(k: &mut FlowKey, mut buf: &[u8], depth: u32) -> Result<()> {
    let buf = &mut buf;
    while !buf.is_empty() {
        match varint(buf)? {
            key::KEY_CLIENT_IP => bytes_vec(&mut k.client_ip, buf)?,
            key::KEY_SERVER_IP => bytes_vec(&mut k.server_ip, buf)?,
            key::KEY_CLIENT_PORT => k.client_port = uint32(buf)?,
            key::KEY_SERVER_PORT => k.server_port = uint32(buf)?,
            key::KEY_TRANSPORT => k.transport = enumeration(buf)?,
            key => key::FLOW_KEY.other(key, buf, depth)?,
        }
    }
    Ok(())
}

fn merge_point(p: &mut ObservationPoint, mut buf: &[u8], depth: u32) -> Result<()> {
    let buf = &mut buf;
    while !buf.is_empty() {
        match varint(buf)? {
            key::POINT_KIND => p.kind = enumeration(buf)?,
            key::POINT_IFINDEX => p.ifindex = uint32(buf)?,
            key::POINT_INTERFACE => string(&mut p.interface, buf, "ObservationPoint.interface")?,
            key::POINT_NODE => string(&mut p.node, buf, "ObservationPoint.node")?,
            key::POINT_PID => p.pid = uint32(buf)?,
            key::POINT_COMM => string(&mut p.comm, buf, "ObservationPoint.comm")?,
            key::POINT_NETNS => p.netns_inode = varint(buf)?,
            key::POINT_SIDE => p.side = enumeration(buf)?,
            key => key::POINT.other(key, buf, depth)?,
        }
    }
    Ok(())
}

fn merge_flow_end(e: &mut FlowEnd, mut buf: &[u8], depth: u32) -> Result<()> {
    let buf = &mut buf;
    while !buf.is_empty() {
        match varint(buf)? {
            key::END_FLOW_ID => e.flow_id = varint(buf)?,
            key::END_REASON => e.reason = enumeration(buf)?,
            key::END_NANOS => e.unix_nanos = fixed64(buf)?,
            key::END_MESSAGES => e.messages = uint32(buf)?,
            key::END_SRTT => e.srtt_us = uint32(buf)?,
            key::END_RETRANSMITS => e.total_retransmits = uint32(buf)?,
            key::END_FLOW => merge_flow_key(
                e.flow.get_or_insert_with(FlowKey::default),
                delimited(buf)?,
                depth - 1,
            )?,
            key::END_POINT => merge_point(
                e.point.get_or_insert_with(ObservationPoint::default),
                delimited(buf)?,
                depth - 1,
            )?,
            key => key::FLOW_END.other(key, buf, depth)?,
        }
    }
    Ok(())
}

fn merge_flow_start(s: &mut FlowStart, mut buf: &[u8], depth: u32) -> Result<()> {
    let buf = &mut buf;
    while !buf.is_empty() {
        match varint(buf)? {
            key::START_FLOW_ID => s.flow_id = varint(buf)?,
            key::START_PROTOCOL => s.protocol = enumeration(buf)?,
            key::START_COUNTERS_ONLY => s.counters_only = boolean(buf)?,
            key::START_FLOW => merge_flow_key(
                s.flow.get_or_insert_with(FlowKey::default),
                delimited(buf)?,
                depth - 1,
            )?,
            key::START_POINT => merge_point(
                s.point.get_or_insert_with(ObservationPoint::default),
                delimited(buf)?,
                depth - 1,
            )?,
            key::START_WIRE_POINT => merge_point(
                s.wire_point.get_or_insert_with(ObservationPoint::default),
                delimited(buf)?,
                depth - 1,
            )?,
            key => key::FLOW_START.other(key, buf, depth)?,
        }
    }
    Ok(())
}
