//! A probe's stream messages as the service decodes them: a `RecordBatch` is kept as the bytes
//! it arrived in and its records are decoded one at a time, as the flow table takes them.
//!
//! prost would decode a batch into a `Vec<Record>`: grown by doubling, so each record (a few
//! hundred bytes) is moved once per growth and once more out of it, and every record of the batch
//! is alive at once. Here only the batch's framing is read first (its number, where each record
//! is, and whether the lengths add up: a batch whose framing does not is refused as a whole, as
//! before); then each record is decoded from the received buffer (payloads stay slices of it)
//! into one place the flow table takes it from ([`Records::next_into`]).
//!
//! The records themselves are decoded by hand (`decoder`): message records, flow starts and
//! flow ends — all but a few records of a probe's stream — in one loop per message type over
//! the bytes, each field read straight into the `Message` the slot already holds, where prost's
//! generic field loop went through a call per field, its oneof's merge and its `Buf`
//! abstraction. Endpoint and stats records (a few a minute) are still prost's. The decoder has
//! prost's semantics on every input, checked by property tests against prost and in the
//! `capture-records` fuzz target; only its error type ([`RecordError`]) is its own.
//!
//! The wire format is `capture.v1`'s, unchanged: a probe cannot tell this decoder from prost's.
//! A record whose own bytes do not decode is dropped alone and counted
//! (`records_received{kind="malformed"}`, and
//! `clovisor_dropped_total{stage="collector",reason="malformed"}`), where prost would have failed
//! the whole stream.

use bytes::{Buf, Bytes};
use clovisor_proto::capture::v1::{
    probe_message, CollectorMessage, FlowTable, Hello, ProbeMessage, Record, RecordBatch,
};
use clovisor_proto::wire;
use prost::encoding::{check_wire_type, decode_key, decode_varint, skip_field, WireType};
use prost::{DecodeError, Message as _};

pub use self::decoder::DecodeError as RecordError;
use self::decoder::Decoded;

mod decoder;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// Field numbers of `capture.v1` read here (see `capture.proto`).
mod field {
    /// `ProbeMessage.batch`.
    pub const PROBE_BATCH: u32 = 2;
    /// `RecordBatch.seq`.
    pub const BATCH_SEQ: u32 = 1;
    /// `RecordBatch.records`.
    pub const BATCH_RECORDS: u32 = 2;
}

/// One message of a probe's stream (`capture.v1.ProbeMessage`).
#[derive(Debug)]
pub enum Inbound {
    /// `hello`
    Hello(Hello),
    /// `batch`, its records still encoded.
    Batch(Batch),
    /// `flows`
    Flows(FlowTable),
    /// No kind set.
    Empty,
}

impl Inbound {
    /// Decodes a `ProbeMessage`. A message that is one `batch` field (what probes send) keeps the
    /// batch's bytes; any other encoding goes through prost, with its merge rules.
    pub fn decode(mut buf: Bytes) -> Result<Self, DecodeError> {
        let whole = buf.clone();
        if let Ok((field::PROBE_BATCH, WireType::LengthDelimited)) = decode_key(&mut buf) {
            let len = decode_varint(&mut buf)?;
            if usize::try_from(len).is_ok_and(|len| len == buf.remaining()) {
                return Batch::decode(buf).map(Self::Batch);
            }
        }
        Ok(match ProbeMessage::decode(whole)?.kind {
            Some(probe_message::Kind::Hello(h)) => Self::Hello(h),
            Some(probe_message::Kind::Flows(f)) => Self::Flows(f),
            Some(probe_message::Kind::Batch(b)) => {
                Self::Batch(Batch::decode(b.encode_to_vec().into())?)
            }
            None => Self::Empty,
        })
    }
}

/// A `RecordBatch` whose framing was read: its number and how many records it holds; the
/// records themselves are decoded by [`Batch::records`].
#[derive(Debug, Clone)]
pub struct Batch {
    seq: u64,
    records: usize,
    body: Bytes,
}

impl Batch {
    /// Reads the framing of an encoded `RecordBatch`: every field's key and length, the batch
    /// number, the records counted. Fails where prost's decoding of the batch would fail on the
    /// framing (a length past the end, a bad key or wire type of a known field).
    pub fn decode(body: Bytes) -> Result<Self, DecodeError> {
        let mut buf = body.clone();
        let mut seq = 0;
        let mut records = 0usize;
        while buf.has_remaining() {
            let (tag, wire_type) = decode_key(&mut buf)?;
            match tag {
                field::BATCH_SEQ => {
                    check_wire_type(WireType::Varint, wire_type)?;
                    seq = decode_varint(&mut buf)?;
                }
                field::BATCH_RECORDS => {
                    check_wire_type(WireType::LengthDelimited, wire_type)?;
                    // A length that fits in what is left is stepped over here; any other goes
                    // through prost's skip_field, which refuses it as prost's decoding would.
                    let chunk = buf.chunk();
                    let mut rest = chunk;
                    match wire::delimited(&mut rest) {
                        Ok(_) => {
                            let step = chunk.len() - rest.len();
                            buf.advance(step);
                        }
                        Err(_) => skip_field(wire_type, tag, &mut buf, Default::default())?,
                    }
                    records += 1;
                }
                _ => skip_field(wire_type, tag, &mut buf, Default::default())?,
            }
        }
        Ok(Self { seq, records, body })
    }

    /// The batch of `records` encoded (tests and tools).
    pub fn of(seq: u64, records: Vec<Record>) -> Self {
        let encoded = RecordBatch { seq, records }.encode_to_vec();
        // Our own encoding: its framing is sound.
        Self::decode(encoded.into()).unwrap_or(Self {
            seq,
            records: 0,
            body: Bytes::new(),
        })
    }

    /// The batch's number (`RecordBatch.seq`).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Records in the batch.
    pub fn len(&self) -> usize {
        self.records
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// The records, decoded one at a time, in order; each from its slice of the batch's bytes.
    pub fn records(&self) -> Records {
        Records {
            body: self.body.clone(),
            pos: 0,
        }
    }
}

/// The records of a [`Batch`], decoded one at a time.
#[derive(Debug)]
pub struct Records {
    body: Bytes,
    /// Where the next field of the batch starts.
    pos: usize,
}

impl Iterator for Records {
    type Item = Result<Record, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut record = Record::default();
        self.next_into(&mut record)
            .map(|decoded| decoded.map(|()| record))
    }
}

impl Records {
    /// Decodes the next record into `slot` (whatever it held is replaced); `None` after the
    /// last. The service decodes every record of a batch into one `slot` and hands it to the
    /// flow table in place ([`crate::flows::FlowTable::ingest_in_place`]): a message record is
    /// decoded into the message `slot` already holds, reset, so no record is moved on its way
    /// from the batch's bytes to its decoder, and its segments' room is reused.
    pub fn next_into(&mut self, slot: &mut Record) -> Option<Result<(), RecordError>> {
        let body: &[u8] = &self.body;
        let mut buf = body.get(self.pos..).unwrap_or_default();
        // The framing was read whole by `Batch::decode`: these steps cannot fail, but a failure
        // still ends the walk rather than spinning.
        while !buf.is_empty() {
            let mut prefix = 0;
            let step = wire::read_key(&mut buf).and_then(|(tag, wire_type)| {
                if tag == field::BATCH_RECORDS && wire_type == WireType::LengthDelimited {
                    // Where the record's length prefix starts (prost's fallback reads it).
                    prefix = body.len() - buf.len();
                    wire::delimited(&mut buf).map(Some)
                } else {
                    wire::skip(tag, wire_type, &mut buf, decoder::BATCH_DEPTH).map(|()| None)
                }
            });
            match step {
                Ok(Some(bytes)) => {
                    let end = body.len() - buf.len();
                    self.pos = end;
                    let decoded = match decoder::decode_into(&self.body, bytes, slot) {
                        Ok(Decoded::Done) => Ok(()),
                        // Endpoint and stats records: prost's, from a fresh record.
                        Ok(Decoded::Prost) => {
                            slot.kind = None;
                            slot.merge_length_delimited(self.body.slice(prefix..end))
                                .map_err(RecordError::from)
                        }
                        Err(e) => Err(e),
                    };
                    return Some(decoded);
                }
                Ok(None) => {}
                Err(e) => {
                    self.pos = body.len();
                    return Some(Err(e.into()));
                }
            }
        }
        self.pos = body.len();
        None
    }
}

/// The service's codec: [`Inbound`] from the probe, `CollectorMessage`s (prost) to it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProbeCodec;

impl Codec for ProbeCodec {
    type Encode = CollectorMessage;
    type Decode = Inbound;
    type Encoder = ProbeCodec;
    type Decoder = ProbeCodec;

    fn encoder(&mut self) -> Self::Encoder {
        ProbeCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProbeCodec
    }
}

impl Encoder for ProbeCodec {
    type Item = CollectorMessage;
    type Error = Status;

    fn encode(&mut self, item: CollectorMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding an acknowledgement: {e}")))
    }
}

impl Decoder for ProbeCodec {
    type Item = Inbound;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Inbound>, Status> {
        // The received frame's own buffer: no copy.
        let bytes = src.copy_to_bytes(src.remaining());
        Inbound::decode(bytes)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clovisor_proto::capture::v1::{record, FlowEnd, Message};

    fn records() -> Vec<Record> {
        (0..5u32)
            .map(|i| Record {
                kind: Some(if i % 2 == 0 {
                    record::Kind::Message(Message {
                        flow_id: 7,
                        index: i,
                        payload: Bytes::from(vec![b'x'; i as usize * 100]),
                        ..Message::default()
                    })
                } else {
                    record::Kind::FlowEnd(FlowEnd {
                        flow_id: u64::from(i),
                        ..FlowEnd::default()
                    })
                }),
            })
            .collect()
    }

    #[test]
    fn a_batch_decodes_record_by_record_as_prost_decodes_it_whole() {
        let batch = RecordBatch {
            seq: 42,
            records: records(),
        };
        let msg = ProbeMessage {
            kind: Some(probe_message::Kind::Batch(batch.clone())),
        };
        let Ok(Inbound::Batch(b)) = Inbound::decode(msg.encode_to_vec().into()) else {
            panic!("a ProbeMessage with a batch should decode as a batch");
        };
        assert_eq!((b.seq(), b.len()), (42, 5));
        let got: Vec<Record> = b
            .records()
            .collect::<Result<_, _>>()
            .expect("records decode");
        assert_eq!(got, batch.records);
    }

    #[test]
    fn records_decoded_into_one_slot_are_each_as_prost_decodes_them() {
        let mut all = records();
        // An empty record (no kind) after a message, and a message with fewer fields set.
        all.insert(1, Record::default());
        all.push(Record {
            kind: Some(record::Kind::Message(Message {
                flow_id: 9,
                ..Message::default()
            })),
        });
        let b = Batch::of(1, all.clone());
        let mut it = b.records();
        let mut slot = Record::default();
        let mut got = Vec::new();
        while let Some(decoded) = it.next_into(&mut slot) {
            decoded.expect("records decode");
            got.push(slot.clone());
        }
        assert_eq!(got, all);
    }

    #[test]
    fn other_messages_decode_as_prost_decodes_them() {
        let hello = Hello {
            probe_id: "p".into(),
            node: "n".into(),
            snaplen: 9,
        };
        let msg = ProbeMessage {
            kind: Some(probe_message::Kind::Hello(hello.clone())),
        };
        match Inbound::decode(msg.encode_to_vec().into()) {
            Ok(Inbound::Hello(h)) => assert_eq!(h, hello),
            other => panic!("expected the Hello back, got {other:?}"),
        }
        assert!(matches!(Inbound::decode(Bytes::new()), Ok(Inbound::Empty)));
        // The batch field twice: prost merges the two batches (records appended, last seq).
        let first = ProbeMessage {
            kind: Some(probe_message::Kind::Batch(RecordBatch {
                seq: 1,
                records: records()[..2].to_vec(),
            })),
        };
        let second = ProbeMessage {
            kind: Some(probe_message::Kind::Batch(RecordBatch {
                seq: 2,
                records: records()[2..].to_vec(),
            })),
        };
        let mut both = first.encode_to_vec();
        both.extend(second.encode_to_vec());
        let Ok(Inbound::Batch(b)) = Inbound::decode(both.into()) else {
            panic!("two batch fields should decode as one merged batch");
        };
        assert_eq!((b.seq(), b.len()), (2, 5));
        let got: Vec<Record> = b
            .records()
            .collect::<Result<_, _>>()
            .expect("records decode");
        assert_eq!(got, records());
    }

    #[test]
    fn broken_framing_is_refused_and_a_broken_record_fails_alone() {
        let good = RecordBatch {
            seq: 3,
            records: records(),
        }
        .encode_to_vec();
        // Cut inside the last record: its length runs past the end.
        let cut = Bytes::from(good[..good.len() - 1].to_vec());
        assert!(Batch::decode(cut).is_err(), "a length past the end");
        // A record whose own bytes are not a Record (field 1 of Record with a varint wire type).
        let mut odd = RecordBatch {
            seq: 3,
            records: records()[..1].to_vec(),
        }
        .encode_to_vec();
        odd.extend([0x12, 0x02, 0x08, 0x01]);
        odd.extend(
            RecordBatch {
                seq: 0,
                records: records()[1..2].to_vec(),
            }
            .encode_to_vec(),
        );
        let b = Batch::decode(odd.into()).expect("the framing is sound");
        assert_eq!(b.len(), 3);
        let got: Vec<bool> = b.records().map(|r| r.is_ok()).collect();
        assert_eq!(got, [true, false, true], "only the broken record fails");
    }

    /// A batch as prost decodes it with its records left as bytes: prost's own reading of the
    /// framing (its refusals, its batch number, its records counted).
    #[derive(Clone, PartialEq, prost::Message)]
    struct Framing {
        #[prost(uint64, tag = "1")]
        seq: u64,
        #[prost(bytes = "bytes", repeated, tag = "2")]
        records: Vec<Bytes>,
    }

    /// Pieces of a batch's framing, sound and not: record keys with short, long, overlong and
    /// past-the-end lengths, a batch number, another field, stray bytes.
    const PIECES: &[&[u8]] = &[
        &[0x12, 0x00],
        &[0x12, 0x03, 1, 2, 3],
        &[0x12, 0x05, 1, 2],
        &[0x12, 0x03, 1, 2],
        &[0x12, 0x80, 0x01],
        &[
            0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ],
        &[
            0x12, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
        ],
        &[0x12],
        &[0x08, 0x2a],
        &[0x08, 0x96, 0x01],
        &[0x0a, 0x01, 0x00],
        &[0x1a, 0x02, 7, 7],
        &[0x20, 0x01],
        &[0x00],
        &[0x80],
        &[0x05],
    ];

    proptest::proptest! {
        #[test]
        fn the_framing_is_read_and_refused_as_prost_steps_over_it(
            pieces in proptest::collection::vec(proptest::sample::select(PIECES), 0..12),
        ) {
            let body = Bytes::from(pieces.concat());
            let ours = Batch::decode(body.clone()).map(|b| (b.seq(), b.len()));
            let prost = Framing::decode(body).map(|f| (f.seq, f.records.len()));
            proptest::prop_assert_eq!(ours.is_ok(), prost.is_ok(), "{:?} vs {:?}", ours, prost);
            if let (Ok(o), Ok(p)) = (ours, prost) {
                proptest::prop_assert_eq!(o, p);
            }
        }
    }
}
