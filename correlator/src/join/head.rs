//! A session's head: the fields of an encoded [`Session`] the join reads to place a view, read
//! in place from the encoding, without decoding the rest.
//!
//! Nearly every view a collector sends opens an exchange of its own (the collector's local join
//! already merged what its probe saw) and waits a join window before anything reads its decoded
//! fields. Decoded whole on arrival, it held a few dozen strings for that second — most of the
//! correlator's memory — and was read again, cold, when its window closed. So a view is read by
//! its head first — ids, client address, each observation's point, times and sequence number,
//! trace context, whether a pod is at either end, the attributes and transport its wire key
//! reads — borrowing from the encoding, without allocating. A view that opens an exchange and
//! expects no other ([`Head::awaits_views`]) is held as it arrived and decoded whole once, when
//! its window closes; any other is decoded whole at once, as before (one that joins an exchange
//! held as it arrived decodes that one too, so holding pays only for views nothing joins).
//!
//! Only the head is checked on arrival: a view whose whole decoding fails when its window
//! closes is dropped then, and counted. The wire format is read by the rules the collector's
//! record decoder follows too ([`clovisor_proto::wire`]); anything unusual in the head (bytes
//! that are not protobuf, a field of an unexpected wire type, an endpoint given twice, more
//! observations or ids than it has room for) makes [`Head::read`] give up, and the view is
//! decoded whole at once.

use clovisor_proto::common::v1::{PointKind, Side};
use clovisor_proto::join::key::{
    self, ClientAddr, WireKey, MESSAGE_POSITION_ATTRIBUTE, PIPELINE_POSITION_ATTRIBUTE,
};
use clovisor_proto::session::v1::DnsTransport;
use clovisor_proto::wire;
use prost::encoding::WireType;

/// Observations a head has room for (a session the local join merged on a single host has four).
const MAX_OBSERVATIONS: usize = 8;
/// Ids of views merged into it a head has room for.
const MAX_MERGED_IDS: usize = 8;

/// [`Session`](clovisor_proto::session::v1::Session)'s field numbers, and those of the messages
/// in it the head reads.
mod tag {
    pub const ID: u32 = 1;
    pub const CLIENT: u32 = 3;
    pub const SERVER: u32 = 4;
    pub const OBSERVATIONS: u32 = 5;
    pub const TRACE: u32 = 11;
    pub const ATTRIBUTES: u32 = 13;
    pub const DNS: u32 = 15;
    pub const MERGED_IDS: u32 = 21;

    pub const ENDPOINT_IP: u32 = 1;
    pub const ENDPOINT_PORT: u32 = 2;
    pub const ENDPOINT_POD: u32 = 3;

    pub const OBSERVATION_KIND: u32 = 1;
    pub const OBSERVATION_NODE: u32 = 3;
    pub const OBSERVATION_REQUEST_START: u32 = 6;
    pub const OBSERVATION_REQUEST_END: u32 = 7;
    pub const OBSERVATION_RESPONSE_END: u32 = 9;
    pub const OBSERVATION_REQUEST_SEQ: u32 = 10;
    pub const OBSERVATION_NETNS: u32 = 14;
    pub const OBSERVATION_SIDE: u32 = 15;

    pub const TRACE_ID: u32 = 2;
    pub const TRACE_PARENT_SPAN_ID: u32 = 3;

    pub const MAP_KEY: u32 = 1;
    pub const MAP_VALUE: u32 = 2;

    pub const DNS_TRANSPORT: u32 = 8;
}

/// prost's recursion budget for a session's fields (`Session.decode`'s, one level per message).
const DEPTH: u32 = 100;

/// Every field of one message, read with prost's wire rules ([`wire`]): a value of the wire type
/// each field number has, unknown fields skipped (groups included); `None` when the bytes are
/// not protobuf or `each` gives up.
fn fields<'a>(
    mut buf: &'a [u8],
    depth: u32,
    mut each: impl FnMut(u32, Value<'a>) -> Option<()>,
) -> Option<()> {
    while !buf.is_empty() {
        let (number, wire_type) = wire::read_key(&mut buf).ok()?;
        let value = match wire_type {
            WireType::Varint => Value::Varint(wire::varint(&mut buf).ok()?),
            WireType::SixtyFourBit => Value::Fixed(wire::fixed64(&mut buf).ok()?),
            WireType::LengthDelimited => Value::Bytes(wire::delimited(&mut buf).ok()?),
            _ => {
                wire::skip(number, wire_type, &mut buf, depth).ok()?;
                Value::Other
            }
        };
        each(number, value)?;
    }
    Some(())
}

#[derive(Clone, Copy)]
enum Value<'a> {
    Varint(u64),
    Fixed(u64),
    Bytes(&'a [u8]),
    /// A fixed 32-bit value or a group, skipped.
    Other,
}

impl<'a> Value<'a> {
    fn varint(self) -> Option<u64> {
        match self {
            Self::Varint(v) => Some(v),
            _ => None,
        }
    }

    fn fixed(self) -> Option<u64> {
        match self {
            Self::Fixed(v) => Some(v),
            _ => None,
        }
    }

    fn bytes(self) -> Option<&'a [u8]> {
        match self {
            Self::Bytes(b) => Some(b),
            _ => None,
        }
    }

    fn str(self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }
}

/// What the head reads of one observation.
#[derive(Debug, Clone, Copy, Default)]
struct ObservationHead<'a> {
    kind: i32,
    node: &'a str,
    side: i32,
    request_start: u64,
    request_end: u64,
    response_end: u64,
    request_seq: u32,
    netns_inode: u64,
}

impl<'a> ObservationHead<'a> {
    fn read(bytes: &'a [u8]) -> Option<Self> {
        let mut o = Self::default();
        fields(bytes, DEPTH - 1, |number, value| {
            // Integers as prost reads them: the varint cut to the field's width.
            match number {
                tag::OBSERVATION_KIND => o.kind = value.varint()? as i32,
                tag::OBSERVATION_NODE => o.node = value.str()?,
                tag::OBSERVATION_SIDE => o.side = value.varint()? as i32,
                tag::OBSERVATION_REQUEST_START => o.request_start = value.fixed()?,
                tag::OBSERVATION_REQUEST_END => o.request_end = value.fixed()?,
                tag::OBSERVATION_RESPONSE_END => o.response_end = value.fixed()?,
                tag::OBSERVATION_REQUEST_SEQ => o.request_seq = value.varint()? as u32,
                tag::OBSERVATION_NETNS => o.netns_inode = value.varint()?,
                _ => {}
            }
            Some(())
        })?;
        Some(o)
    }
}

/// An endpoint as the head reads it.
#[derive(Debug, Clone, Copy, Default)]
struct EndpointHead<'a> {
    ip: &'a [u8],
    port: u32,
    is_pod: bool,
}

impl<'a> EndpointHead<'a> {
    fn read(bytes: &'a [u8]) -> Option<Self> {
        let mut e = Self::default();
        fields(bytes, DEPTH - 1, |number, value| {
            match number {
                tag::ENDPOINT_IP => e.ip = value.bytes()?,
                tag::ENDPOINT_PORT => e.port = value.varint()? as u32,
                tag::ENDPOINT_POD => e.is_pod = !value.bytes()?.is_empty(),
                _ => {}
            }
            Some(())
        })?;
        Some(e)
    }
}

/// The head of one encoded session, borrowing from its encoding. Of its observations it keeps
/// what the join reads: each one's interval, the sequence numbers of those that carry one, the
/// sides they were seen from, and the first one's network namespace.
#[derive(Debug, Default)]
pub struct Head<'a> {
    id: &'a str,
    merged_ids: [&'a str; MAX_MERGED_IDS],
    merged_len: usize,
    client: Option<EndpointHead<'a>>,
    /// The server endpoint's bytes, when the session has a server: read only when
    /// [`Head::awaits_views`] needs to know whether it is a pod (rarely: most views were seen
    /// at their server's side), and checked, like the rest, when the view is decoded whole.
    server: Option<&'a [u8]>,
    intervals: [(u64, u64); MAX_OBSERVATIONS],
    observations: usize,
    seqs: [u32; MAX_OBSERVATIONS],
    seqs_len: usize,
    seen_at_client: bool,
    seen_at_server: bool,
    /// Node and network namespace inode of the first observation that names a namespace.
    namespace: Option<(&'a str, u64)>,
    trace: Option<(&'a [u8], &'a [u8])>,
    pipeline_position: Option<&'a str>,
    message_position: Option<&'a str>,
    /// Whether its DNS part says UDP, when it has one.
    datagram: Option<bool>,
}

impl<'a> Head<'a> {
    /// The head of the session encoded in `bytes`; `None` when anything in it is not as a
    /// collector writes it (decode it whole: that tells what is wrong, if anything is).
    pub fn read(bytes: &'a [u8]) -> Option<Self> {
        let mut h = Head::default();
        fields(bytes, DEPTH, |number, value| {
            match number {
                tag::ID => h.id = value.str()?,
                tag::CLIENT if h.client.is_none() => {
                    h.client = Some(EndpointHead::read(value.bytes()?)?);
                }
                tag::SERVER if h.server.is_none() => h.server = Some(value.bytes()?),
                tag::OBSERVATIONS => h.observe(ObservationHead::read(value.bytes()?)?)?,
                tag::TRACE if h.trace.is_none() => h.trace = Some(trace(value.bytes()?)?),
                tag::ATTRIBUTES => {
                    let (k, v) = map_entry(value.bytes()?)?;
                    if k == PIPELINE_POSITION_ATTRIBUTE {
                        h.pipeline_position = Some(v);
                    } else if k == MESSAGE_POSITION_ATTRIBUTE {
                        h.message_position = Some(v);
                    }
                }
                tag::DNS if h.datagram.is_none() => h.datagram = Some(datagram(value.bytes()?)?),
                tag::MERGED_IDS => {
                    let slot = h.merged_ids.get_mut(h.merged_len)?;
                    *slot = value.str()?;
                    h.merged_len += 1;
                }
                // Given twice, prost merges the two: rare enough to leave to it.
                tag::CLIENT | tag::SERVER | tag::TRACE | tag::DNS => return None,
                _ => {}
            }
            Some(())
        })?;
        Some(h)
    }

    /// Takes in one observation; `None` when there is no room for it.
    fn observe(&mut self, o: ObservationHead<'a>) -> Option<()> {
        let interval = self.intervals.get_mut(self.observations)?;
        *interval = key::interval_of(o.request_start, o.request_end, o.response_end);
        self.observations += 1;
        let kind = PointKind::try_from(o.kind).unwrap_or_default();
        if key::carries_tcp_seq(kind, o.request_seq) {
            // As many as observations: there is room.
            let seq = self.seqs.get_mut(self.seqs_len)?;
            *seq = o.request_seq;
            self.seqs_len += 1;
        }
        self.seen_at_client |= o.side == Side::Client as i32;
        self.seen_at_server |= o.side == Side::Server as i32;
        if self.namespace.is_none() && o.netns_inode != 0 {
            self.namespace = Some((o.node, o.netns_inode));
        }
        Some(())
    }

    /// The session's id (empty when the collector gave none).
    pub fn id(&self) -> &'a str {
        self.id
    }

    /// The ids of the views the collector merged into it.
    pub fn merged_ids(&self) -> &[&'a str] {
        self.merged_ids.get(..self.merged_len).unwrap_or_default()
    }

    fn seqs(&self) -> &[u32] {
        self.seqs.get(..self.seqs_len).unwrap_or_default()
    }

    /// [`ClientAddr::of`] the session.
    pub fn client(&self) -> Option<ClientAddr> {
        let c = self.client?;
        ClientAddr::from_parts(c.ip, c.port, || self.namespace)
    }

    /// [`key::wire_key`] of the session, its client being `client`.
    pub fn wire_key(&self, client: ClientAddr) -> Option<WireKey> {
        key::wire_key_of(
            client,
            self.datagram == Some(true),
            self.seqs().iter().copied(),
            self.pipeline_position.or(self.message_position),
        )
    }

    /// Whether a point with TCP sequence numbers saw it ([`key::has_tcp_seq`]).
    pub fn keyed(&self) -> bool {
        self.seqs_len > 0
    }

    /// Each observation's [`key::interval`].
    pub fn intervals(&self) -> &[(u64, u64)] {
        self.intervals.get(..self.observations).unwrap_or_default()
    }

    /// The trace context's trace id and parent span id bytes, if it has a context.
    pub fn trace(&self) -> Option<(&'a [u8], &'a [u8])> {
        self.trace
    }

    /// Whether another probe may still send a view of this exchange: one of its ends is a pod,
    /// and no observation is at that side (that pod's own veth and socket, traced by the probe
    /// of its node, would be). Only a guess at what is cheaper: the join's result is the same
    /// either way.
    pub fn awaits_views(&self) -> bool {
        let client_is_pod = self.client.is_some_and(|c| c.is_pod);
        let server_is_pod = || {
            self.server
                .and_then(EndpointHead::read)
                .is_some_and(|s| s.is_pod)
        };
        (client_is_pod && !self.seen_at_client) || (!self.seen_at_server && server_is_pod())
    }
}

fn trace(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (mut trace_id, mut parent): (&[u8], &[u8]) = (&[], &[]);
    fields(bytes, DEPTH - 1, |number, value| {
        match number {
            tag::TRACE_ID => trace_id = value.bytes()?,
            tag::TRACE_PARENT_SPAN_ID => parent = value.bytes()?,
            _ => {}
        }
        Some(())
    })?;
    Some((trace_id, parent))
}

fn map_entry(bytes: &[u8]) -> Option<(&str, &str)> {
    let (mut k, mut v) = ("", "");
    fields(bytes, DEPTH - 1, |number, value| {
        match number {
            tag::MAP_KEY => k = value.str()?,
            tag::MAP_VALUE => v = value.str()?,
            _ => {}
        }
        Some(())
    })?;
    Some((k, v))
}

fn datagram(bytes: &[u8]) -> Option<bool> {
    let mut transport = 0;
    fields(bytes, DEPTH - 1, |number, value| {
        if number == tag::DNS_TRANSPORT {
            transport = value.varint()? as i32;
        }
        Some(())
    })?;
    Some(transport == DnsTransport::Udp as i32)
}

#[cfg(test)]
mod tests;
