//! The decoder against prost: the same records from the same bytes, the same refusals.
//!
//! The reference is prost decoding the record as an element of a `RecordBatch` (as the collector
//! decoded batches before, and at the same recursion depth); ours is the service's path
//! ([`Batch::decode`], then [`Records::next_into`] into a slot that held another record).

use std::collections::HashMap;

use bytes::Bytes;
use clovisor_proto::capture::v1::{
    record, EndpointUpdate, FlowEnd, FlowKey, FlowStart, Message, ObservationPoint, ProbeStats,
    Record, RecordBatch, Segment, WireCounters,
};
use proptest::prelude::*;
use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message as _;

use super::DecodeError;
use crate::server::inbound::{Batch, RecordError};
use clovisor_proto::wire::WireError;

/// `record` framed as the only record of a batch.
fn framed(record: &[u8]) -> Bytes {
    let mut body = Vec::with_capacity(record.len() + 11);
    encode_key(2, WireType::LengthDelimited, &mut body);
    encode_varint(record.len() as u64, &mut body);
    body.extend_from_slice(record);
    body.into()
}

/// prost's decoding of the record bytes `record`.
fn prost_decodes(record: &[u8]) -> Result<Record, prost::DecodeError> {
    let mut batch = RecordBatch::decode(framed(record))?;
    assert_eq!(batch.records.len(), 1, "one record framed");
    Ok(batch.records.remove(0))
}

/// Ours, into `slot`.
fn we_decode(record: &[u8], slot: &mut Record) -> Result<(), RecordError> {
    let batch = Batch::decode(framed(record)).expect("our own framing");
    let mut records = batch.records();
    let decoded = records.next_into(slot).expect("one record");
    assert!(records.next_into(slot).is_none(), "one record only");
    decoded
}

/// Ours and prost's agree on `record`, decoded into a slot holding `previous`: both fail, or
/// both give the same record.
fn agree(record: &[u8], previous: &Record) -> Result<(), TestCaseError> {
    let mut slot = previous.clone();
    let ours = we_decode(record, &mut slot);
    match prost_decodes(record) {
        Ok(expected) => {
            prop_assert!(
                ours.is_ok(),
                "prost decodes {expected:?}, we fail: {ours:?}\nbytes: {record:02x?}"
            );
            prop_assert_eq!(&slot, &expected, "bytes: {:02x?}", record);
        }
        Err(e) => prop_assert!(
            ours.is_err(),
            "prost fails ({e}), we decode {slot:?}\nbytes: {record:02x?}"
        ),
    }
    Ok(())
}

fn agree_fresh(record: &[u8]) {
    if let Err(e) = agree(record, &Record::default()) {
        panic!("{e}");
    }
}

// --- strategies -------------------------------------------------------------------------------

/// Integers at their boundaries (where varints change length or types truncate) and anywhere.
fn u64_edge() -> impl Strategy<Value = u64> {
    prop_oneof![
        prop::sample::select(vec![
            0,
            1,
            0x7f,
            0x80,
            0x3fff,
            0x4000,
            u64::from(u32::MAX >> 1),
            u64::from(u32::MAX >> 1) + 1,
            u64::from(u32::MAX),
            u64::from(u32::MAX) + 1,
            u64::MAX >> 1,
            (u64::MAX >> 1) + 1,
            u64::MAX - 1,
            u64::MAX,
        ]),
        any::<u64>(),
    ]
}

fn u32_edge() -> impl Strategy<Value = u32> {
    u64_edge().prop_map(|v| v as u32)
}

fn enum_edge() -> impl Strategy<Value = i32> {
    prop_oneof![0..4i32, u64_edge().prop_map(|v| v as i32)]
}

fn payload() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..40).prop_map(Bytes::from)
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9-]{1,12}",
        any::<String>().prop_map(|s| s.chars().take(8).collect()),
    ]
}

fn flow_key() -> impl Strategy<Value = FlowKey> {
    (
        prop::collection::vec(any::<u8>(), 0..17),
        prop::collection::vec(any::<u8>(), 0..17),
        u32_edge(),
        u32_edge(),
        enum_edge(),
    )
        .prop_map(
            |(client_ip, server_ip, client_port, server_port, transport)| FlowKey {
                client_ip,
                server_ip,
                client_port,
                server_port,
                transport,
            },
        )
}

fn point() -> impl Strategy<Value = ObservationPoint> {
    (
        enum_edge(),
        u32_edge(),
        text(),
        text(),
        u32_edge(),
        text(),
        u64_edge(),
        enum_edge(),
    )
        .prop_map(
            |(kind, ifindex, interface, node, pid, comm, netns_inode, side)| ObservationPoint {
                kind,
                ifindex,
                interface,
                node,
                pid,
                comm,
                netns_inode,
                side,
            },
        )
}

fn wire_counters() -> impl Strategy<Value = WireCounters> {
    (
        u64_edge(),
        u64_edge(),
        u32_edge(),
        u64_edge(),
        u32_edge(),
        u32_edge(),
    )
        .prop_map(
            |(start_unix_nanos, end_unix_nanos, tcp_seq, bytes, packets, retransmits)| {
                WireCounters {
                    start_unix_nanos,
                    end_unix_nanos,
                    tcp_seq,
                    bytes,
                    packets,
                    retransmits,
                }
            },
        )
}

fn message() -> impl Strategy<Value = Message> {
    (
        (
            prop::option::weighted(0.2, flow_key()),
            prop::option::weighted(0.2, point()),
            u64_edge(),
            u32_edge(),
            enum_edge(),
            any::<bool>(),
            u64_edge(),
            u64_edge(),
        ),
        (
            u32_edge(),
            u64_edge(),
            u32_edge(),
            u32_edge(),
            payload(),
            enum_edge(),
            any::<bool>(),
            prop::collection::vec(
                (u64_edge(), payload()).prop_map(|(offset, payload)| Segment { offset, payload }),
                0..4,
            ),
        ),
        prop::option::weighted(0.3, wire_counters()),
    )
        .prop_map(
            |(
                (flow, point, flow_id, index, direction, to_pod, start, end),
                (tcp_seq, bytes, packets, retransmits, payload, protocol, partial, segments),
                wire,
            )| Message {
                flow,
                point,
                flow_id,
                index,
                direction,
                to_pod,
                start_unix_nanos: start,
                end_unix_nanos: end,
                tcp_seq,
                bytes,
                packets,
                retransmits,
                payload,
                protocol,
                partial,
                wire,
                segments,
            },
        )
}

fn flow_end() -> impl Strategy<Value = FlowEnd> {
    (
        prop::option::weighted(0.3, flow_key()),
        prop::option::weighted(0.3, point()),
        u64_edge(),
        enum_edge(),
        u64_edge(),
        u32_edge(),
        u32_edge(),
        u32_edge(),
    )
        .prop_map(
            |(flow, point, flow_id, reason, unix_nanos, messages, srtt_us, total_retransmits)| {
                FlowEnd {
                    flow,
                    point,
                    flow_id,
                    reason,
                    unix_nanos,
                    messages,
                    srtt_us,
                    total_retransmits,
                }
            },
        )
}

fn flow_start() -> impl Strategy<Value = FlowStart> {
    (
        u64_edge(),
        prop::option::of(flow_key()),
        prop::option::of(point()),
        enum_edge(),
        any::<bool>(),
        prop::option::weighted(0.3, point()),
    )
        .prop_map(
            |(flow_id, flow, point, protocol, counters_only, wire_point)| FlowStart {
                flow_id,
                flow,
                point,
                protocol,
                counters_only,
                wire_point,
            },
        )
}

fn record() -> impl Strategy<Value = Record> {
    let kind = prop_oneof![
        8 => message().prop_map(record::Kind::Message),
        2 => flow_end().prop_map(record::Kind::FlowEnd),
        2 => flow_start().prop_map(record::Kind::FlowStart),
        1 => (prop::collection::vec(any::<u8>(), 0..17), text(), any::<bool>(), prop::collection::vec(text(), 0..3))
            .prop_map(|(ip, pod, removed, services)| record::Kind::Endpoint(EndpointUpdate {
                ip,
                pod,
                removed,
                services,
                ..EndpointUpdate::default()
            })),
        1 => prop::collection::hash_map(text(), u64_edge(), 0..3)
            .prop_map(|counters: HashMap<String, u64>| record::Kind::Stats(ProbeStats { counters })),
    ];
    prop::option::weighted(0.95, kind).prop_map(|kind| Record { kind })
}

/// A protobuf field of any shape: what a record's bytes may hold besides what prost writes.
#[derive(Debug, Clone)]
enum Field {
    Varint(u32, u64),
    Fixed64(u32, u64),
    Fixed32(u32, u32),
    Bytes(u32, Vec<u8>),
    Nested(u32, Vec<Field>),
    Group(u32, Vec<Field>),
    /// A bare end-group key.
    EndGroup(u32),
}

impl Field {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Field::Varint(tag, v) => {
                encode_key(*tag, WireType::Varint, out);
                encode_varint(*v, out);
            }
            Field::Fixed64(tag, v) => {
                encode_key(*tag, WireType::SixtyFourBit, out);
                out.extend(v.to_le_bytes());
            }
            Field::Fixed32(tag, v) => {
                encode_key(*tag, WireType::ThirtyTwoBit, out);
                out.extend(v.to_le_bytes());
            }
            Field::Bytes(tag, b) => {
                encode_key(*tag, WireType::LengthDelimited, out);
                encode_varint(b.len() as u64, out);
                out.extend(b);
            }
            Field::Nested(tag, fields) => {
                let inner = encode_fields(fields);
                encode_key(*tag, WireType::LengthDelimited, out);
                encode_varint(inner.len() as u64, out);
                out.extend(inner);
            }
            Field::Group(tag, fields) => {
                encode_key(*tag, WireType::StartGroup, out);
                for f in fields {
                    f.encode(out);
                }
                encode_key(*tag, WireType::EndGroup, out);
            }
            Field::EndGroup(tag) => encode_key(*tag, WireType::EndGroup, out),
        }
    }
}

fn encode_fields(fields: &[Field]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fields {
        f.encode(&mut out);
    }
    out
}

/// Field numbers of every message read here (1–15, 30), the reserved 8, and unknown ones.
fn tag() -> impl Strategy<Value = u32> {
    prop_oneof![
        6 => 1..=15u32,
        2 => Just(30u32),
        1 => prop::sample::select(vec![16u32, 29, 31, 100, (1 << 29) - 1]),
    ]
}

/// Random fields, nested up to three levels (a record, its message, the message's key).
fn fields(depth: u32) -> BoxedStrategy<Vec<Field>> {
    let leaf = prop_oneof![
        (tag(), u64_edge()).prop_map(|(t, v)| Field::Varint(t, v)),
        (tag(), u64_edge()).prop_map(|(t, v)| Field::Fixed64(t, v)),
        (tag(), any::<u32>()).prop_map(|(t, v)| Field::Fixed32(t, v)),
        (tag(), prop::collection::vec(any::<u8>(), 0..12)).prop_map(|(t, b)| Field::Bytes(t, b)),
        (tag(), "[a-z]{0,6}").prop_map(|(t, s)| Field::Bytes(t, s.into_bytes())),
        tag().prop_map(Field::EndGroup),
    ];
    if depth == 0 {
        return prop::collection::vec(leaf, 0..6).boxed();
    }
    let field = prop_oneof![
        4 => leaf,
        3 => (tag(), fields(depth - 1)).prop_map(|(t, f)| Field::Nested(t, f)),
        1 => (tag(), fields(depth - 1)).prop_map(|(t, f)| Field::Group(t, f)),
    ];
    prop::collection::vec(field, 0..6).boxed()
}

/// One change to encoded bytes.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(usize, u8),
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Truncate(usize),
    /// A varint at its boundaries written over the bytes at an offset.
    Varint(usize, u64),
}

impl Mutation {
    fn apply(&self, b: &mut Vec<u8>) {
        let at = |i: usize, b: &Vec<u8>| if b.is_empty() { 0 } else { i % b.len() };
        match self {
            Mutation::FlipBit(i, bit) => {
                let i = at(*i, b);
                if let Some(x) = b.get_mut(i) {
                    *x ^= 1 << (bit % 8);
                }
            }
            Mutation::Set(i, v) => {
                let i = at(*i, b);
                if let Some(x) = b.get_mut(i) {
                    *x = *v;
                }
            }
            Mutation::Insert(i, bytes) => {
                let i = at(*i, b);
                b.splice(i..i, bytes.iter().copied());
            }
            Mutation::Remove(i, n) => {
                let i = at(*i, b);
                let end = (i + n).min(b.len());
                b.drain(i..end);
            }
            Mutation::Truncate(n) => b.truncate(at(*n, b)),
            Mutation::Varint(i, v) => {
                let i = at(*i, b);
                let mut enc = Vec::new();
                encode_varint(*v, &mut enc);
                let end = (i + enc.len()).min(b.len());
                b.splice(i..end, enc);
            }
        }
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, bit)| Mutation::FlipBit(i, bit)),
        (
            any::<usize>(),
            prop::sample::select(vec![0u8, 1, 2, 0x7f, 0x80, 0xff, 0x0a, 0x12, 0x6a, 0xf2])
        )
            .prop_map(|(i, v)| Mutation::Set(i, v)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..6))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), 1..8usize).prop_map(|(i, n)| Mutation::Remove(i, n)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), u64_edge()).prop_map(|(i, v)| Mutation::Varint(i, v)),
    ]
}

// --- properties -------------------------------------------------------------------------------

/// Runs property `test` on values of `strategy` (made on the thread) on a thread with a larger
/// stack: these strategies' value trees overflow a test thread's 2 MiB in debug builds.
/// Failures are shrunk and reported by proptest.
fn property<S: Strategy>(
    strategy: impl FnOnce() -> S + Send + 'static,
    test: impl Fn(S::Value) -> Result<(), TestCaseError> + Send + 'static,
) {
    let run = move || {
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(512));
        runner.run(&strategy(), test).map_err(|e| e.to_string())
    };
    let outcome = std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(run)
        .expect("a test thread")
        .join()
        .expect("the property does not panic");
    if let Err(e) = outcome {
        panic!("{e}");
    }
}

/// A batch of random records encoded by prost decodes, record by record into one slot, to exactly
/// the records.
#[test]
fn records_encoded_by_prost_decode_to_the_same_records() {
    property(
        || (prop::collection::vec(record(), 0..8), u64_edge()),
        |(records, seq)| {
            let batch = RecordBatch { seq, records };
            let b = Batch::decode(batch.encode_to_vec().into()).expect("prost's encoding");
            prop_assert_eq!((b.seq(), b.len()), (seq, batch.records.len()));
            let mut it = b.records();
            let mut slot = Record::default();
            for expected in &batch.records {
                let decoded = it.next_into(&mut slot);
                prop_assert!(matches!(decoded, Some(Ok(()))), "{:?}", decoded);
                prop_assert_eq!(&slot, expected);
            }
            prop_assert!(it.next_into(&mut slot).is_none());
            Ok(())
        },
    );
}

/// Mutated encodings: never a panic; we fail exactly when prost fails, else decode what it
/// decodes — whatever the slot held before.
#[test]
fn mutated_records_decode_as_prost_decodes_them_or_fail_as_it_fails() {
    property(
        || (record(), record(), prop::collection::vec(mutation(), 1..4)),
        |(r, previous, mutations)| {
            let mut bytes = r.encode_to_vec();
            for m in &mutations {
                m.apply(&mut bytes);
            }
            agree(&bytes, &previous)
        },
    );
}

/// Arbitrary protobuf on the known field numbers (duplicates, other wire types, unknown fields
/// and groups, nested messages of any content): as prost.
#[test]
fn any_protobuf_decodes_as_prost_decodes_it() {
    property(
        || (fields(3), record()),
        |(fields, previous)| agree(&encode_fields(&fields), &previous),
    );
}

/// Two records' encodings concatenated (prost merges them field by field), or a message's
/// fields in reverse order.
#[test]
fn merged_and_reordered_records_decode_as_prost_decodes_them() {
    property(
        || (record(), record(), record()),
        |(a, b, previous)| {
            let mut both = a.encode_to_vec();
            both.extend(b.encode_to_vec());
            agree(&both, &previous)?;
            if let Some(record::Kind::Message(m)) = &a.kind {
                let reversed = reversed_fields(&m.encode_to_vec());
                let mut rec = Vec::new();
                encode_key(1, WireType::LengthDelimited, &mut rec);
                encode_varint(reversed.len() as u64, &mut rec);
                rec.extend(&reversed);
                agree(&rec, &previous)?;
            }
            Ok(())
        },
    );
}

/// Random bytes: as prost.
#[test]
fn random_bytes_fail_as_prost_fails() {
    property(
        || (prop::collection::vec(any::<u8>(), 0..64), record()),
        |(bytes, previous)| agree(&bytes, &previous),
    );
}

/// The top-level fields of an encoded message in reverse order (each field's bytes kept).
fn reversed_fields(mut buf: &[u8]) -> Vec<u8> {
    let mut fields = Vec::new();
    while !buf.is_empty() {
        let start = buf;
        let (tag, wire_type) = clovisor_proto::wire::read_key(&mut buf).expect("prost's key");
        super::skip(tag, wire_type, &mut buf, 100).expect("prost's field");
        fields.push(&start[..start.len() - buf.len()]);
    }
    fields.into_iter().rev().flatten().copied().collect()
}

// --- edge cases -------------------------------------------------------------------------------

/// A message record of `fields` (the message's own).
fn message_record(fields: &[Field]) -> Vec<u8> {
    encode_fields(&[Field::Nested(1, fields.to_vec())])
}

fn decoded(record: &[u8]) -> Result<Record, RecordError> {
    let mut slot = Record::default();
    we_decode(record, &mut slot).map(|()| slot)
}

fn decoded_message(record: &[u8]) -> Message {
    match decoded(record) {
        Ok(Record {
            kind: Some(record::Kind::Message(m)),
        }) => m,
        other => panic!("expected a message record, got {other:?}"),
    }
}

#[test]
fn a_scalar_given_twice_keeps_the_last_value_and_order_does_not_matter() {
    let rec = message_record(&[
        Field::Bytes(13, b"late".to_vec()),
        Field::Varint(3, 7),
        Field::Varint(4, 2),
        Field::Varint(3, 9),
        Field::Bytes(13, b"payload".to_vec()),
    ]);
    let m = decoded_message(&rec);
    assert_eq!(
        (m.flow_id, m.index, &m.payload[..]),
        (9, 2, &b"payload"[..])
    );
    agree_fresh(&rec);
}

#[test]
fn scalars_convert_as_prost_converts_them() {
    // uint32 and enums truncate a 64-bit varint; a bool is any non-zero value.
    let rec = message_record(&[
        Field::Varint(4, u64::MAX),
        Field::Varint(5, (1 << 32) | 2),
        Field::Varint(6, 1 << 40),
    ]);
    let m = decoded_message(&rec);
    assert_eq!((m.index, m.direction, m.to_pod), (u32::MAX, 2, true));
    agree_fresh(&rec);
}

#[test]
fn unknown_fields_are_skipped_at_every_level() {
    let unknown = || {
        vec![
            Field::Varint(99, u64::MAX),
            Field::Fixed32(100, 1),
            Field::Fixed64(101, 2),
            Field::Bytes(102, b"x".to_vec()),
            Field::Group(103, vec![Field::Varint(1, 1), Field::Group(2, vec![])]),
        ]
    };
    let mut point = unknown();
    // `ObservationPoint` field 8 (`side` as a string before the enum) is reserved.
    point.push(Field::Bytes(8, b"client".to_vec()));
    point.push(Field::Bytes(4, b"node-a".to_vec()));
    let mut key = unknown();
    key.push(Field::Varint(3, 40000));
    let mut msg = unknown();
    msg.extend([
        Field::Nested(1, key),
        Field::Nested(2, point),
        Field::Varint(3, 5),
    ]);
    let mut rec = unknown();
    rec.push(Field::Nested(1, msg));
    let rec = encode_fields(&rec);
    let m = decoded_message(&rec);
    assert_eq!(m.flow_id, 5);
    assert_eq!(m.flow.as_ref().map(|k| k.client_port), Some(40000));
    assert_eq!(m.point.as_ref().map(|p| p.node.as_str()), Some("node-a"));
    agree_fresh(&rec);
}

#[test]
fn legacy_key_and_point_are_read_and_merge_when_repeated() {
    let rec = message_record(&[
        Field::Nested(
            1,
            vec![Field::Bytes(1, vec![10, 0, 0, 1]), Field::Varint(3, 1)],
        ),
        Field::Nested(2, vec![Field::Bytes(3, b"eth0".to_vec())]),
        Field::Nested(1, vec![Field::Varint(4, 80)]),
        Field::Nested(2, vec![Field::Varint(5, 42)]),
    ]);
    let m = decoded_message(&rec);
    let key = m.flow.expect("the key");
    assert_eq!(
        (key.client_ip, key.client_port, key.server_port),
        (vec![10, 0, 0, 1], 1, 80)
    );
    let point = m.point.expect("the point");
    assert_eq!((point.interface.as_str(), point.pid), ("eth0", 42));
    agree_fresh(&rec);
    // Present but empty is present.
    let m = decoded_message(&message_record(&[Field::Nested(1, vec![])]));
    assert_eq!(m.flow, Some(FlowKey::default()));
}

#[test]
fn each_segment_field_appends_a_segment_of_the_received_buffer() {
    let rec = message_record(&[
        Field::Nested(30, vec![Field::Bytes(2, b"first".to_vec())]),
        Field::Varint(3, 1),
        Field::Nested(
            30,
            vec![Field::Varint(1, 500), Field::Bytes(2, b"last".to_vec())],
        ),
        Field::Nested(30, vec![]),
    ]);
    let batch = framed(&rec);
    let b = Batch::decode(batch.clone()).expect("framing");
    let mut slot = Record::default();
    b.records()
        .next_into(&mut slot)
        .expect("a record")
        .expect("decodes");
    let Some(record::Kind::Message(m)) = &slot.kind else {
        panic!("a message record, got {slot:?}");
    };
    let got: Vec<(u64, &[u8])> = m
        .segments
        .iter()
        .map(|s| (s.offset, &s.payload[..]))
        .collect();
    assert_eq!(got, [(0, &b"first"[..]), (500, b"last"), (0, b"")]);
    // No copy: the payloads point into the batch's buffer.
    let range = batch.as_ptr_range();
    assert!(
        range.contains(&m.segments[1].payload.as_ptr()),
        "a slice of the batch"
    );
    agree_fresh(&rec);
}

#[test]
fn proto3_defaults_and_an_empty_record() {
    assert_eq!(decoded(&[]).expect("empty"), Record::default());
    assert_eq!(decoded_message(&message_record(&[])), Message::default());
    // Explicit zeros are the defaults too.
    let rec = message_record(&[Field::Varint(3, 0), Field::Bytes(13, vec![])]);
    assert_eq!(decoded_message(&rec), Message::default());
}

#[test]
fn a_reused_slot_keeps_nothing_of_the_previous_record() {
    let full = Record {
        kind: Some(record::Kind::Message(Message {
            flow: Some(FlowKey::default()),
            point: Some(ObservationPoint::default()),
            flow_id: 1,
            payload: Bytes::from_static(b"x"),
            segments: vec![Segment::default(); 3],
            ..Message::default()
        })),
    };
    let sparse = message_record(&[Field::Varint(4, 3)]);
    let mut slot = full.clone();
    we_decode(&sparse, &mut slot).expect("decodes");
    assert_eq!(
        slot,
        Record {
            kind: Some(record::Kind::Message(Message {
                index: 3,
                ..Message::default()
            }))
        }
    );
    // Other kinds replace it; a record with no kind leaves none.
    for (previous, rec) in [
        (
            full.clone(),
            encode_fields(&[Field::Nested(2, vec![Field::Varint(3, 4)])]),
        ),
        (
            full.clone(),
            encode_fields(&[Field::Nested(5, vec![Field::Varint(1, 4)])]),
        ),
        (full.clone(), encode_fields(&[Field::Varint(99, 1)])),
        (
            Record {
                kind: Some(record::Kind::FlowEnd(FlowEnd {
                    reason: 2,
                    ..FlowEnd::default()
                })),
            },
            encode_fields(&[Field::Nested(2, vec![Field::Varint(3, 4)])]),
        ),
    ] {
        if let Err(e) = agree(&rec, &previous) {
            panic!("{e}");
        }
    }
}

#[test]
fn the_oneof_merges_a_kind_given_twice_and_replaces_another() {
    let twice = encode_fields(&[
        Field::Nested(1, vec![Field::Varint(3, 1)]),
        Field::Nested(1, vec![Field::Varint(4, 2)]),
    ]);
    let m = decoded_message(&twice);
    assert_eq!((m.flow_id, m.index), (1, 2));
    let replaced = encode_fields(&[
        Field::Nested(1, vec![Field::Varint(3, 1)]),
        Field::Nested(2, vec![Field::Varint(3, 5)]),
        Field::Nested(1, vec![Field::Varint(4, 2)]),
    ]);
    let m = decoded_message(&replaced);
    assert_eq!(
        (m.flow_id, m.index),
        (0, 2),
        "the third field starts a new message"
    );
    agree_fresh(&twice);
    agree_fresh(&replaced);
}

#[test]
fn endpoint_and_stats_records_are_prosts() {
    for kind in [
        record::Kind::Endpoint(EndpointUpdate {
            ip: vec![10, 0, 0, 2],
            pod: "web-0".into(),
            services: vec!["web".into()],
            ..EndpointUpdate::default()
        }),
        record::Kind::Stats(ProbeStats {
            counters: [("ringbuf_full".to_owned(), 3)].into(),
        }),
    ] {
        let r = Record { kind: Some(kind) };
        let enc = r.encode_to_vec();
        assert_eq!(decoded(&enc).expect("decodes"), r);
        // Mixed with a message field first: prost's merge of the whole record.
        let mut mixed = message_record(&[Field::Varint(3, 1)]);
        mixed.extend(&enc);
        agree_fresh(&mixed);
    }
}

#[test]
fn a_packed_or_otherwise_mistyped_singular_field_is_refused_as_by_prost() {
    // `flow_id` (a varint) sent length-delimited, as a packed repeated field would be.
    for rec in [
        message_record(&[Field::Bytes(3, vec![1, 2])]),
        message_record(&[Field::Fixed64(4, 1)]),
        message_record(&[Field::Varint(13, 1)]),
        message_record(&[Field::Fixed32(7, 1)]),
        message_record(&[Field::Nested(1, vec![Field::Varint(1, 1)])]),
        message_record(&[Field::Nested(2, vec![Field::Fixed64(3, 1)])]),
        encode_fields(&[Field::Varint(1, 1)]),
    ] {
        let ours = decoded(&rec);
        assert!(
            matches!(ours, Err(DecodeError::WireType { .. })),
            "expected a wire type error, got {ours:?}"
        );
        assert!(prost_decodes(&rec).is_err());
    }
}

#[test]
fn malformed_records_are_refused_as_by_prost() {
    let msg = |bytes: &[u8]| {
        let mut r = vec![0x0a, bytes.len() as u8];
        r.extend_from_slice(bytes);
        r
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "an eleven-byte varint",
            msg(&[
                0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x80, 0x01,
            ]),
        ),
        (
            "a tenth varint byte past u64",
            msg(&[
                0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
            ]),
        ),
        ("a varint cut short", msg(&[0x18, 0xff])),
        ("a key past u32", msg(&[0x80, 0x80, 0x80, 0x80, 0x10, 0x00])),
        ("wire type 6", msg(&[0x1e, 0x00])),
        ("wire type 7", msg(&[0x1f, 0x00])),
        ("field number 0", msg(&[0x00, 0x00])),
        ("a payload past the message", msg(&[0x6a, 0x05, b'a'])),
        ("a fixed64 past the message", msg(&[0x39, 1, 2, 3])),
        ("a fixed32 unknown field cut", msg(&[0x7d, 1, 2])),
        ("a key past its message, within the record", {
            let mut r = msg(&[0x12, 0x02, 0x22, 0x05]);
            r.extend(b"node-");
            r
        }),
        (
            "a node that is not UTF-8",
            msg(&[0x12, 0x04, 0x22, 0x02, 0xc3, 0x28]),
        ),
        ("an end group with no group", msg(&[0x7c])),
        ("a group closed by another", msg(&[0x7b, 0x84, 0x01])),
        ("a group never closed", msg(&[0x7b, 0x08, 0x01])),
        (
            "a message record length past the record",
            vec![0x0a, 0x09, 0x18, 0x01],
        ),
    ];
    for (what, rec) in cases {
        let ours = decoded(&rec);
        assert!(ours.is_err(), "{what}: expected an error, decoded {ours:?}");
        assert!(prost_decodes(&rec).is_err(), "{what}: prost refuses it too");
        agree_fresh(&rec);
    }
    // Valid edges: a ten-byte varint of u64::MAX, and an overlong encoding of a small one.
    let ok = msg(&[
        0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
    ]);
    assert_eq!(decoded_message(&ok).flow_id, u64::MAX);
    let overlong = msg(&[0x98, 0x00, 0x85, 0x80, 0x00]);
    assert_eq!(decoded_message(&overlong).flow_id, 5);
    agree_fresh(&overlong);
}

#[test]
fn groups_nest_as_deep_as_prosts_recursion_limit_allows() {
    // Unknown groups nested `n` deep inside a message: prost refuses past its limit.
    let nested = |n: usize| {
        let mut fields = Vec::new();
        // Field 17 (unknown in `Message`): start-group and end-group keys.
        for _ in 0..n {
            fields.extend([0x8b, 0x01]);
        }
        for _ in 0..n {
            fields.extend([0x8c, 0x01]);
        }
        let mut r = Vec::new();
        encode_key(1, WireType::LengthDelimited, &mut r);
        encode_varint(fields.len() as u64, &mut r);
        r.extend(fields);
        r
    };
    let mut limit = None;
    for n in 90..=100 {
        let rec = nested(n);
        agree_fresh(&rec);
        if limit.is_none() && decoded(&rec).is_err() {
            limit = Some(n);
            assert_eq!(decoded(&rec), Err(DecodeError::Wire(WireError::TooDeep)));
        }
    }
    assert!(limit.is_some(), "some depth below 100 is refused");
}

#[test]
fn a_broken_record_between_good_ones_fails_alone() {
    let good = Record {
        kind: Some(record::Kind::Message(Message {
            flow_id: 3,
            ..Message::default()
        })),
    };
    let mut body = RecordBatch {
        seq: 1,
        records: vec![good.clone()],
    }
    .encode_to_vec();
    // A record whose message's payload runs past the message.
    let bad = message_record(&[Field::Varint(3, 4)]);
    let mut bad = bad;
    bad.extend([0x6a, 0x03]);
    bad[1] += 2;
    body.extend(framed(&bad));
    body.extend(framed(&good.encode_to_vec()));
    let b = Batch::decode(body.into()).expect("the framing is sound");
    let got: Vec<Result<Record, RecordError>> = b.records().collect();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].as_ref().ok(), Some(&good));
    assert_eq!(got[1], Err(DecodeError::Wire(WireError::Underflow)));
    assert_eq!(got[2].as_ref().ok(), Some(&good));
}
