//! A [`Session`] decoded by hand, with prost's semantics: what the correlator does with every
//! exchange it receives.
//!
//! prost decodes each field through a generic loop (wire type checks, a `Buf` taken for each
//! length-delimited value, strings grown from empty), about a microsecond for a typical
//! 400-byte session, of which the allocations and copies a decoded session needs are not half.
//! The fields every session has — its id, ends, observations, counters, HTTP fields and trace
//! context — are read here with [`crate::wire`] instead, each string allocated once at its
//! size, or written over one of a session decoded before ([`decode_into`]); the rest
//! (attributes, gRPC, DNS, database, Kafka and analyzer fields, and fields this version does not
//! know) is left to prost's own per-field code ([`Message::merge_field`]), so nothing can be
//! decoded differently there. Bytes prost refuses are refused here too, and what
//! both accept decodes to equal sessions (property tests and the `correlator-sessions` fuzz
//! target hold the two to it).

use prost::encoding::{DecodeContext, WireType};
use prost::Message;

use super::v1::{Counters, Endpoint, Http, Observation, Session, TraceContext};
use crate::wire::{self, WireError};

/// Why bytes are not a [`Session`] (prost refuses the same bytes).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not protobuf: see [`WireError`].
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A known field with a value of another wire type.
    #[error("field {tag}: wire type {actual:?} where {expected:?} is expected")]
    WireType {
        /// The field number.
        tag: u32,
        /// The field's wire type.
        expected: WireType,
        /// The wire type found.
        actual: WireType,
    },
    /// A string field whose bytes are not UTF-8.
    #[error("field {tag}: a string that is not UTF-8")]
    Utf8 {
        /// The field number.
        tag: u32,
    },
    /// A field left to prost that it refused.
    #[error(transparent)]
    Prost(#[from] prost::DecodeError),
}

type Result<T> = std::result::Result<T, DecodeError>;

/// prost's recursion budget at a session's own fields (`Session::decode`'s); a message's fields
/// have one less.
const DEPTH: u32 = 100;

/// The session encoded in `buf`, decoded as `Session::decode` decodes it.
pub fn decode(buf: &[u8]) -> Result<Session> {
    decode_keeping(buf, true)
}

/// [`decode`] without the ids of the views merged into the session (`merged_ids` left empty,
/// though checked as [`decode`] checks them): for a reader that holds those ids already, and
/// would allocate each only to drop it.
pub fn decode_without_merged_ids(buf: &[u8]) -> Result<Session> {
    decode_keeping(buf, false)
}

fn decode_keeping(buf: &[u8], merged_ids: bool) -> Result<Session> {
    let mut s = Session::default();
    decode_into(buf, &mut s, merged_ids)?;
    Ok(s)
}

/// [`decode`] (or, without `merged_ids`, [`decode_without_merged_ids`]) into `into`, a session
/// decoded before or a default one: every field is replaced as those give it — what the bytes
/// do not set is left at its default, nothing of the previous session remains — while the
/// blocks its strings, observations and messages hold are written over instead of freed and
/// allocated again. For a reader that decodes session after session and is done with each
/// before the next (the correlator, as each exchange's window closes). On an error `into` holds
/// a mix of the two sessions: decode into it again or drop it.
pub fn decode_into(mut buf: &[u8], into: &mut Session, merged_ids: bool) -> Result<()> {
    let s = into;
    let mut seen = Seen::default();
    clear_unreused(s);
    while !buf.is_empty() {
        let (tag, wire_type) = wire::read_key(&mut buf)?;
        let v = Value {
            tag,
            wire_type,
            depth: DEPTH,
        };
        match tag {
            1 => v.string(&mut buf, &mut s.id)?,
            2 => s.protocol = v.int32(&mut buf)?,
            3 => v.part(
                &mut buf,
                &mut s.client,
                &mut seen.client,
                clear_endpoint,
                endpoint,
            )?,
            4 => v.part(
                &mut buf,
                &mut s.server,
                &mut seen.server,
                clear_endpoint,
                endpoint,
            )?,
            5 => {
                let o = next(
                    &mut s.observations,
                    &mut seen.observations,
                    clear_observation,
                );
                let given = v.message(&mut buf, o, observation)?;
                clear_observation_ungiven(o, given);
            }
            6 => s.start_unix_nanos = v.fixed64(&mut buf)?,
            7 => s.end_unix_nanos = v.fixed64(&mut buf)?,
            8 => v.part(
                &mut buf,
                &mut s.bytes,
                &mut seen.bytes,
                clear_counters,
                counters,
            )?,
            9 => v.part(
                &mut buf,
                &mut s.packets,
                &mut seen.packets,
                clear_counters,
                counters,
            )?,
            10 => v.part(&mut buf, &mut s.http, &mut seen.http, clear_http, http)?,
            11 => v.part(&mut buf, &mut s.trace, &mut seen.trace, clear_trace, trace)?,
            12 => s.incomplete = v.bool(&mut buf)?,
            21 => {
                let id = v.str(&mut buf)?;
                if merged_ids {
                    next(&mut s.merged_ids, &mut seen.merged_ids, String::clear).push_str(id);
                }
            }
            // Attributes, gRPC, DNS, database, Kafka, analyzer, and fields unknown here: prost's
            // own code, with the context `Session::decode` gives a session's fields.
            _ => s.merge_field(tag, wire_type, &mut buf, DecodeContext::default())?,
        }
    }
    seen.finish(s);
    Ok(())
}

/// The bytes held by the blocks [`decode_into`] writes over in `s` (its strings, byte vectors
/// and observation vector, by capacity): what keeping `s` to decode into holds beyond its own
/// size — a reader keeping sessions for it can leave out those grown large by one big session.
pub fn reused_capacity(s: &Session) -> usize {
    fn endpoint(e: &Endpoint) -> usize {
        e.pod.capacity()
            + e.namespace.capacity()
            + e.node.capacity()
            + e.workload.capacity()
            + e.service.capacity()
    }
    let observations: usize = s
        .observations
        .iter()
        .map(|o| {
            o.interface.capacity() + o.node.capacity() + o.probe_id.capacity() + o.comm.capacity()
        })
        .sum();
    let http = s.http.as_ref().map_or(0, |h| {
        h.method.capacity()
            + h.target.capacity()
            + h.host.capacity()
            + h.user_agent.capacity()
            + h.version.capacity()
            + h.request_id.capacity()
            + h.envoy_decorator.capacity()
            + h.reason.capacity()
    });
    let trace = s.trace.as_ref().map_or(0, |t| {
        t.trace_id.capacity() + t.parent_span_id.capacity() + t.tracestate.capacity()
    });
    s.id.capacity()
        + s.client.as_ref().map_or(0, endpoint)
        + s.server.as_ref().map_or(0, endpoint)
        + s.observations.capacity() * std::mem::size_of::<Observation>()
        + observations
        + http
        + trace
        + s.merged_ids.iter().map(String::capacity).sum::<usize>()
}

/// Which of a reused session's parts the bytes gave: the others go back to their defaults once
/// the bytes are read.
#[derive(Default)]
struct Seen {
    client: Part,
    server: Part,
    bytes: Part,
    packets: Part,
    http: Part,
    trace: Part,
    /// How many observations (and merged ids) the bytes gave so far.
    observations: usize,
    merged_ids: usize,
}

impl Seen {
    fn finish(self, s: &mut Session) {
        // A part the bytes never gave goes; one they gave has its strings they left out cleared.
        fn finish_part<M>(part: Part, m: &mut Option<M>, clear_ungiven: fn(&mut M, Given)) {
            match m.as_mut() {
                Some(m) if part.seen => clear_ungiven(m, part.given),
                _ => *m = None,
            }
        }
        finish_part(self.client, &mut s.client, clear_endpoint_ungiven);
        finish_part(self.server, &mut s.server, clear_endpoint_ungiven);
        finish_part(self.bytes, &mut s.bytes, |_, _| {});
        finish_part(self.packets, &mut s.packets, |_, _| {});
        finish_part(self.http, &mut s.http, clear_http_ungiven);
        finish_part(self.trace, &mut s.trace, clear_trace_ungiven);
        s.observations.truncate(self.observations);
        s.merged_ids.truncate(self.merged_ids);
    }
}

/// One message field of a reused session: whether the bytes gave it, and which of its fields they
/// gave ([`Given`]), over every time they gave it (a message given twice is merged).
#[derive(Debug, Default, Clone, Copy)]
struct Part {
    seen: bool,
    given: Given,
}

/// Sets every field of `s` that [`decode_into`] does not reuse to its default, and leaves
/// those it reuses (each emptied when the bytes first give it, or dropped when they never do).
/// Named one by one, so that a field added to the message fails to compile here rather than
/// carrying one session's value into the next.
fn clear_unreused(s: &mut Session) {
    let Session {
        id,
        protocol,
        client: _,
        server: _,
        observations: _,
        start_unix_nanos,
        end_unix_nanos,
        bytes: _,
        packets: _,
        http: _,
        trace: _,
        incomplete,
        attributes,
        grpc,
        dns,
        database,
        kafka,
        analyzer,
        merged_ids: _,
    } = s;
    id.clear();
    *protocol = 0;
    *start_unix_nanos = 0;
    *end_unix_nanos = 0;
    *incomplete = false;
    attributes.clear();
    *grpc = None;
    *dns = None;
    *database = None;
    *kafka = None;
    *analyzer = None;
}
/// The message of field `m` to merge the bytes' value into: the one `m` holds, emptied the first
/// time the bytes give the field (a message given twice is merged, as prost does), else a new
/// one.
fn reused<'m, M: Default>(m: &'m mut Option<M>, seen: &mut bool, clear: fn(&mut M)) -> &'m mut M {
    if !*seen {
        *seen = true;
        if let Some(m) = m.as_mut() {
            clear(m);
        }
    }
    m.get_or_insert_with(M::default)
}

/// The next element of a repeated field decoded into a vector used before: the one at that
/// place, emptied, else a new one; `count` counts those given so far (truncate the vector to it
/// once done). (`count` never passes the vector's length: it grows by one, and so does the
/// vector when it reaches it.) For [`decode_into`] and readers reusing their own lists the same
/// way (the correlator's constituent ids).
pub fn next<'v, T: Default>(v: &'v mut Vec<T>, count: &mut usize, clear: fn(&mut T)) -> &'v mut T {
    let at = *count;
    *count += 1;
    if at < v.len() {
        clear(&mut v[at]);
    } else {
        v.push(T::default());
    }
    let last = v.len() - 1;
    &mut v[at.min(last)]
}

fn clear_endpoint(e: &mut Endpoint) {
    let Endpoint {
        ip,
        port,
        pod,
        namespace,
        node,
        workload,
        service,
    } = e;
    // Its address and names are kept until the bytes are read: each is written over only where
    // the bytes give another ([`Value::string`]), and cleared where they give none
    // ([`clear_endpoint_ungiven`]).
    let _ = (ip, pod, namespace, node, workload, service);
    *port = 0;
}

/// Clears the address and names of `e` the bytes did not give (see [`Given`]).
fn clear_endpoint_ungiven(e: &mut Endpoint, given: Given) {
    if !given.has(1) {
        e.ip.clear();
    }
    clear_ungiven(
        [
            (3, &mut e.pod),
            (4, &mut e.namespace),
            (5, &mut e.node),
            (6, &mut e.workload),
            (7, &mut e.service),
        ],
        given,
    );
}

/// Clears each of `strings` (field number, string) the bytes did not give.
fn clear_ungiven<const N: usize>(strings: [(u32, &mut String); N], given: Given) {
    for (tag, s) in strings {
        if !given.has(tag) {
            s.clear();
        }
    }
}

fn clear_observation(o: &mut Observation) {
    let Observation {
        kind,
        interface,
        node,
        probe_id,
        side,
        request_start_unix_nanos,
        request_end_unix_nanos,
        response_start_unix_nanos,
        response_end_unix_nanos,
        request_tcp_seq,
        response_tcp_seq,
        request_bytes,
        response_bytes,
        request_packets,
        response_packets,
        retransmits,
        pid,
        comm,
        netns_inode,
    } = o;
    // Its strings are kept until the bytes are read, as an endpoint's ([`clear_endpoint`]).
    let _ = (interface, node, probe_id, comm);
    for n in [kind, side] {
        *n = 0;
    }
    for n in [
        request_start_unix_nanos,
        request_end_unix_nanos,
        response_start_unix_nanos,
        response_end_unix_nanos,
        request_bytes,
        response_bytes,
        request_packets,
        response_packets,
        netns_inode,
    ] {
        *n = 0;
    }
    for n in [request_tcp_seq, response_tcp_seq, retransmits, pid] {
        *n = 0;
    }
}

/// Clears the strings of `o` the bytes did not give (see [`Given`]).
fn clear_observation_ungiven(o: &mut Observation, given: Given) {
    clear_ungiven(
        [
            (2, &mut o.interface),
            (3, &mut o.node),
            (4, &mut o.probe_id),
            (13, &mut o.comm),
        ],
        given,
    );
}

fn clear_counters(c: &mut Counters) {
    let Counters { request, response } = c;
    *request = 0;
    *response = 0;
}

fn clear_http(h: &mut Http) {
    let Http {
        method,
        target,
        host,
        user_agent,
        status_code,
        version,
        request_id,
        envoy_decorator,
        reason,
        request_content_length,
        response_content_length,
        response_chunked,
    } = h;
    // Its strings are kept until the bytes are read, as an endpoint's ([`clear_endpoint`]).
    let _ = (
        method,
        target,
        host,
        user_agent,
        version,
        request_id,
        envoy_decorator,
        reason,
    );
    *status_code = 0;
    *request_content_length = 0;
    *response_content_length = 0;
    *response_chunked = false;
}

/// Clears the strings of `h` the bytes did not give (see [`Given`]).
fn clear_http_ungiven(h: &mut Http, given: Given) {
    clear_ungiven(
        [
            (1, &mut h.method),
            (2, &mut h.target),
            (3, &mut h.host),
            (4, &mut h.user_agent),
            (6, &mut h.version),
            (7, &mut h.request_id),
            (8, &mut h.envoy_decorator),
            (9, &mut h.reason),
        ],
        given,
    );
}

fn clear_trace(t: &mut TraceContext) {
    let TraceContext {
        format,
        trace_id,
        parent_span_id,
        sampled,
        tracestate,
    } = t;
    *format = 0;
    trace_id.clear();
    parent_span_id.clear();
    *sampled = false;
    // Kept until the bytes are read, as an endpoint's strings ([`clear_endpoint`]).
    let _ = tracestate;
}

/// Clears the trace state of `t` unless the bytes gave it (see [`Given`]).
fn clear_trace_ungiven(t: &mut TraceContext, given: Given) {
    clear_ungiven([(5, &mut t.tracestate)], given);
}

/// The field numbers below 64 a message's bytes gave, one bit each: which of the strings a
/// reused message kept (written over only where the bytes give another value, compared first:
/// the same pod, service or method as the session decoded there before is neither checked as
/// UTF-8 again nor copied) must be cleared once its bytes are read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Given(u64);

impl Given {
    fn add(&mut self, tag: u32) {
        if let Some(bit) = 1u64.checked_shl(tag) {
            self.0 |= bit;
        }
    }

    fn has(self, tag: u32) -> bool {
        1u64.checked_shl(tag).is_some_and(|bit| self.0 & bit != 0)
    }
}

impl std::ops::BitOrAssign for Given {
    fn bitor_assign(&mut self, other: Self) {
        self.0 |= other.0;
    }
}

/// A field's key, and the recursion budget at its message.
#[derive(Clone, Copy)]
struct Value {
    tag: u32,
    wire_type: WireType,
    depth: u32,
}

impl Value {
    fn expect(self, expected: WireType) -> Result<()> {
        if self.wire_type == expected {
            Ok(())
        } else {
            Err(DecodeError::WireType {
                tag: self.tag,
                expected,
                actual: self.wire_type,
            })
        }
    }

    fn varint(self, buf: &mut &[u8]) -> Result<u64> {
        self.expect(WireType::Varint)?;
        Ok(wire::varint(buf)?)
    }

    /// prost's `int32` (and enum) rule: the varint's low 32 bits.
    fn int32(self, buf: &mut &[u8]) -> Result<i32> {
        Ok(self.varint(buf)? as i32)
    }

    fn uint32(self, buf: &mut &[u8]) -> Result<u32> {
        Ok(self.varint(buf)? as u32)
    }

    fn bool(self, buf: &mut &[u8]) -> Result<bool> {
        Ok(self.varint(buf)? != 0)
    }

    fn fixed64(self, buf: &mut &[u8]) -> Result<u64> {
        self.expect(WireType::SixtyFourBit)?;
        Ok(wire::fixed64(buf)?)
    }

    fn delimited<'a>(self, buf: &mut &'a [u8]) -> Result<&'a [u8]> {
        self.expect(WireType::LengthDelimited)?;
        Ok(wire::delimited(buf)?)
    }

    /// Replaces `into`, written over where it has room (else allocated once, at its size) —
    /// unless it holds these bytes already (a string kept from the session decoded there
    /// before: see [`Given`]), which are then valid UTF-8 and need neither check nor copy.
    fn string(self, buf: &mut &[u8], into: &mut String) -> Result<()> {
        let bytes = self.delimited(buf)?;
        if into.as_bytes() == bytes {
            return Ok(());
        }
        let s = std::str::from_utf8(bytes).map_err(|_| DecodeError::Utf8 { tag: self.tag })?;
        into.clear();
        into.push_str(s);
        Ok(())
    }

    /// A string field, checked and borrowed.
    fn str<'b>(self, buf: &mut &'b [u8]) -> Result<&'b str> {
        let bytes = self.delimited(buf)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::Utf8 { tag: self.tag })
    }

    fn bytes<B: OwnedBytes>(self, buf: &mut &[u8], into: &mut B) -> Result<()> {
        into.replace_with(self.delimited(buf)?);
        Ok(())
    }

    /// Merges a message's fields into `into` (a message field given twice is merged, as prost
    /// does), with one level less of recursion budget.
    fn message<M>(
        self,
        buf: &mut &[u8],
        into: &mut M,
        field: fn(&mut M, Value, &mut &[u8]) -> Result<()>,
    ) -> Result<Given> {
        let mut inner = self.delimited(buf)?;
        let depth = self.depth.checked_sub(1).ok_or(WireError::TooDeep)?;
        let mut given = Given::default();
        while !inner.is_empty() {
            let (tag, wire_type) = wire::read_key(&mut inner)?;
            given.add(tag);
            field(
                into,
                Value {
                    tag,
                    wire_type,
                    depth,
                },
                &mut inner,
            )?;
        }
        Ok(given)
    }

    /// A message field of the session decoded into `m`, the one it holds reused
    /// ([`reused`], emptied by `clear` the first time the bytes give it), noting in `part`
    /// that the bytes gave it and which of its fields.
    fn part<M: Default>(
        self,
        buf: &mut &[u8],
        m: &mut Option<M>,
        part: &mut Part,
        clear: fn(&mut M),
        field: fn(&mut M, Value, &mut &[u8]) -> Result<()>,
    ) -> Result<()> {
        let into = reused(m, &mut part.seen, clear);
        part.given |= self.message(buf, into, field)?;
        Ok(())
    }

    /// A field this message does not know (or no longer uses), skipped as prost skips it.
    fn skip(self, buf: &mut &[u8]) -> Result<()> {
        Ok(wire::skip(self.tag, self.wire_type, buf, self.depth)?)
    }
}

fn endpoint(e: &mut Endpoint, v: Value, buf: &mut &[u8]) -> Result<()> {
    match v.tag {
        1 => v.bytes(buf, &mut e.ip),
        2 => v.uint32(buf).map(|p| e.port = p),
        3 => v.string(buf, &mut e.pod),
        4 => v.string(buf, &mut e.namespace),
        5 => v.string(buf, &mut e.node),
        6 => v.string(buf, &mut e.workload),
        7 => v.string(buf, &mut e.service),
        _ => v.skip(buf),
    }
}

fn observation(o: &mut Observation, v: Value, buf: &mut &[u8]) -> Result<()> {
    match v.tag {
        1 => v.int32(buf).map(|k| o.kind = k),
        2 => v.string(buf, &mut o.interface),
        3 => v.string(buf, &mut o.node),
        4 => v.string(buf, &mut o.probe_id),
        6 => v.fixed64(buf).map(|t| o.request_start_unix_nanos = t),
        7 => v.fixed64(buf).map(|t| o.request_end_unix_nanos = t),
        8 => v.fixed64(buf).map(|t| o.response_start_unix_nanos = t),
        9 => v.fixed64(buf).map(|t| o.response_end_unix_nanos = t),
        10 => v.uint32(buf).map(|s| o.request_tcp_seq = s),
        11 => v.uint32(buf).map(|s| o.response_tcp_seq = s),
        12 => v.uint32(buf).map(|p| o.pid = p),
        13 => v.string(buf, &mut o.comm),
        14 => v.varint(buf).map(|i| o.netns_inode = i),
        15 => v.int32(buf).map(|s| o.side = s),
        20 => v.varint(buf).map(|n| o.request_bytes = n),
        21 => v.varint(buf).map(|n| o.response_bytes = n),
        22 => v.varint(buf).map(|n| o.request_packets = n),
        23 => v.varint(buf).map(|n| o.response_packets = n),
        24 => v.uint32(buf).map(|n| o.retransmits = n),
        _ => v.skip(buf),
    }
}

fn counters(c: &mut Counters, v: Value, buf: &mut &[u8]) -> Result<()> {
    match v.tag {
        1 => v.varint(buf).map(|n| c.request = n),
        2 => v.varint(buf).map(|n| c.response = n),
        _ => v.skip(buf),
    }
}

fn http(h: &mut Http, v: Value, buf: &mut &[u8]) -> Result<()> {
    match v.tag {
        1 => v.string(buf, &mut h.method),
        2 => v.string(buf, &mut h.target),
        3 => v.string(buf, &mut h.host),
        4 => v.string(buf, &mut h.user_agent),
        5 => v.uint32(buf).map(|s| h.status_code = s),
        6 => v.string(buf, &mut h.version),
        7 => v.string(buf, &mut h.request_id),
        8 => v.string(buf, &mut h.envoy_decorator),
        9 => v.string(buf, &mut h.reason),
        10 => v.varint(buf).map(|n| h.request_content_length = n),
        11 => v.varint(buf).map(|n| h.response_content_length = n),
        12 => v.bool(buf).map(|c| h.response_chunked = c),
        _ => v.skip(buf),
    }
}

fn trace(t: &mut TraceContext, v: Value, buf: &mut &[u8]) -> Result<()> {
    match v.tag {
        1 => v.int32(buf).map(|f| t.format = f),
        2 => v.bytes(buf, &mut t.trace_id),
        3 => v.bytes(buf, &mut t.parent_span_id),
        4 => v.bool(buf).map(|s| t.sampled = s),
        5 => v.string(buf, &mut t.tracestate),
        _ => v.skip(buf),
    }
}

/// A bytes field's type in the generated messages: a vector, or shared bytes where the build
/// asks for them (`Endpoint.ip`).
trait OwnedBytes {
    /// Replaces the bytes with a copy of `b` (the session's bytes are the caller's, not kept).
    fn replace_with(&mut self, b: &[u8]);
}

impl OwnedBytes for Vec<u8> {
    /// Written over where it has room.
    fn replace_with(&mut self, b: &[u8]) {
        self.clear();
        self.extend_from_slice(b);
    }
}

impl OwnedBytes for bytes::Bytes {
    /// Shared bytes are not written over: another holder may read them. The same bytes (an
    /// address kept from the session decoded here before) are kept as they are.
    fn replace_with(&mut self, b: &[u8]) {
        if self.as_ref() != b {
            *self = bytes::Bytes::copy_from_slice(b);
        }
    }
}

#[cfg(test)]
mod tests;
