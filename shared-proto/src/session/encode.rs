//! A [`Session`] encoded by hand, byte for byte as prost encodes it: what the collector does
//! with every exchange it sends.
//!
//! prost writes each byte of a varint through `BufMut::put_u8` (a capacity check per byte) and
//! walks every nested message twice through its generic length and encoding code. Here the
//! fields every session has — its id, ends, observations, counters, HTTP fields and trace
//! context — are written as they are measured, each nested message measured by the
//! same field list that writes it ([`Fields`] over [`Len`] and [`Write`]); the rest (attributes,
//! gRPC, DNS, database, Kafka and analyzer fields) by prost's own encoding functions. Fields go
//! in prost's order (by field number) and defaults are left out as prost leaves them out, so
//! the bytes are prost's (property tests hold the two to it).

use bytes::{BufMut, BytesMut};
use prost::encoding::{self as pe, encoded_len_varint, key_len, WireType};

use super::v1::{Counters, Endpoint, Http, Observation, Session, TraceContext};
use crate::wire::Out;

/// The names of one end of a session given beside it rather than in it: the collector keeps
/// each address's pod metadata once, shared by every session of that address, and has it
/// written here instead of copying five strings into every session. Each is written where the
/// session's own endpoint leaves that name empty.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointNames<'a> {
    pub pod: &'a str,
    pub namespace: &'a str,
    pub node: &'a str,
    pub workload: &'a str,
    pub service: &'a str,
}

/// What a session is named by, given beside it rather than in it: the pod metadata of both ends
/// ([`EndpointNames`]), its id ([`IdParts`]) and the probe that observed it
/// ([`ObservationNames`]). The collector keeps each once — per address, per flow, per probe —
/// and has them written here instead of copying them into every session: each a block the
/// allocator hands out, and the encoder reads, cold under load. Empty names by default; an
/// end's names are written only when the session has that end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionNames<'a> {
    pub client: EndpointNames<'a>,
    pub server: EndpointNames<'a>,
    /// The session's id, written when the session leaves its own empty.
    pub id: Option<IdParts<'a>>,
    /// Written into each observation that leaves its probe id or node empty.
    pub observations: ObservationNames<'a>,
}

impl SessionNames<'_> {
    /// `s` with these names written into it, as [`encode_raw_named`] encodes it.
    pub fn applied_to(&self, mut s: Session) -> Session {
        if let Some(e) = s.client.as_mut() {
            self.client.fill(e);
        }
        if let Some(e) = s.server.as_mut() {
            self.server.fill(e);
        }
        if let Some(id) = self.id.filter(|_| s.id.is_empty()) {
            s.id = id.to_text();
        }
        for o in &mut s.observations {
            self.observations.fill(o);
        }
        s
    }
}

/// A session's id given in parts: `<prefix><index>`, then `.<position>` when the position is
/// not 0 — how the collector names the exchanges of a flow (`probe-1/1f/4`, `probe-1/1f/4.1`:
/// the probe, the flow, the request message's index and the exchange's position among those
/// pipelined in that message).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdParts<'a> {
    pub prefix: &'a str,
    pub index: u32,
    pub position: u32,
}

impl IdParts<'_> {
    /// The id as one string.
    pub fn to_text(&self) -> String {
        self.with_parts(|parts| {
            let mut id = String::with_capacity(parts.iter().map(|p| p.len()).sum());
            for p in parts {
                id.push_str(p);
            }
            id
        })
    }

    /// Calls `f` with the id's parts, in order.
    fn with_parts<R>(&self, f: impl FnOnce(&[&str]) -> R) -> R {
        let mut index = itoa::Buffer::new();
        let index = index.format(self.index);
        if self.position == 0 {
            f(&[self.prefix, index])
        } else {
            let mut position = itoa::Buffer::new();
            f(&[self.prefix, index, ".", position.format(self.position)])
        }
    }
}

/// The probe that observed a session, given beside it: written into each observation that leaves
/// its own probe id or node empty (the collector leaves them empty for its probe's own).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObservationNames<'a> {
    pub probe_id: &'a str,
    pub node: &'a str,
}

impl ObservationNames<'_> {
    /// Writes each of these names into `o` where `o`'s is empty.
    pub fn fill(&self, o: &mut Observation) {
        for (own, given) in [(&mut o.probe_id, self.probe_id), (&mut o.node, self.node)] {
            if own.is_empty() && !given.is_empty() {
                given.clone_into(own);
            }
        }
    }
}

/// `own`, or `given` where `own` is empty.
fn first<'a>(own: &'a str, given: &'a str) -> &'a str {
    if own.is_empty() {
        given
    } else {
        own
    }
}

impl<'a> EndpointNames<'a> {
    /// The names `e` carries itself.
    pub fn of(e: &'a Endpoint) -> Self {
        Self {
            pod: &e.pod,
            namespace: &e.namespace,
            node: &e.node,
            workload: &e.workload,
            service: &e.service,
        }
    }

    /// Each of these names, or `other`'s where this one is empty.
    pub fn or(self, other: Self) -> Self {
        Self {
            pod: first(self.pod, other.pod),
            namespace: first(self.namespace, other.namespace),
            node: first(self.node, other.node),
            workload: first(self.workload, other.workload),
            service: first(self.service, other.service),
        }
    }

    /// Writes each of these names into `e` where `e`'s is empty.
    pub fn fill(&self, e: &mut Endpoint) {
        for (own, given) in [
            (&mut e.pod, self.pod),
            (&mut e.namespace, self.namespace),
            (&mut e.node, self.node),
            (&mut e.workload, self.workload),
            (&mut e.service, self.service),
        ] {
            if own.is_empty() && !given.is_empty() {
                given.clone_into(own);
            }
        }
    }
}

/// Appends `s`'s encoding (its fields, without a length prefix: `Message::encode_raw`'s bytes)
/// to `buf`.
pub fn encode_raw(s: &Session, buf: &mut BytesMut) {
    encode_raw_with(s, buf, &mut Vec::new());
}

/// [`encode_raw`], the lengths of the session's messages measured into `lens` (its room kept
/// from one session to the next by a caller that encodes many: [`crate::hops::SessionEncoder`]).
pub fn encode_raw_with(s: &Session, buf: &mut BytesMut, lens: &mut Vec<usize>) {
    encode_raw_named(s, &SessionNames::default(), buf, lens);
}

/// [`encode_raw_with`], with `names` written into the session where it leaves them empty
/// ([`SessionNames`]): the bytes of `names.applied_to(s)`.
pub fn encode_raw_named(
    s: &Session,
    names: &SessionNames<'_>,
    buf: &mut BytesMut,
    lens: &mut Vec<usize>,
) {
    encode_framed(s, names, buf, lens, |_, _| {});
}

/// [`encode_raw_named`], after `frame(len, buf)` has written what precedes the session's
/// `len` bytes — the key and length of the field that holds it, where the session is written
/// straight into its place in a larger message (a `SessionBatch`'s `sessions`,
/// [`crate::hops::SessionEncoder`]). Returns `len`.
pub fn encode_framed(
    s: &Session,
    names: &SessionNames<'_>,
    buf: &mut BytesMut,
    lens: &mut Vec<usize>,
    frame: impl Fn(usize, &mut BytesMut),
) -> usize {
    lens.clear();
    let mut len = Len { total: 0, lens };
    head(s, names, &mut len);
    tail(s, &mut len);
    let total = len.total + rare_len(s);
    let framed = buf.len();
    frame(total, buf);
    let start = buf.len();
    buf.resize(start + total, 0);
    let written = buf.get_mut(start..).map(|out| {
        let mut w = Write {
            out: Out::new(out),
            lens: lens.iter(),
        };
        head(s, names, &mut w);
        let mut rest = w.out.rest();
        let room = rest.len();
        rare(s, &mut rest);
        let rare_written = room - rest.len();
        w.out.advance(rare_written);
        tail(s, &mut w);
        w.out.written()
    });
    if written == Some(total) {
        return total;
    }
    // Measured and written by the same field lists, so never; but were they ever to
    // disagree, the session is still sent right.
    buf.truncate(framed);
    let named = names.applied_to(s.clone());
    let total = prost::Message::encoded_len(&named);
    frame(total, buf);
    prost::Message::encode_raw(&named, buf);
    total
}

/// The fields before the attributes (1 to 12).
fn head<F: Fields>(s: &Session, names: &SessionNames<'_>, f: &mut F) {
    match names.id.filter(|_| s.id.is_empty()) {
        Some(id) => id.with_parts(|parts| f.parts(1, parts)),
        None => f.bytes(1, s.id.as_bytes()),
    }
    f.int32(2, s.protocol);
    if let Some(e) = &s.client {
        f.message(3, &Named(e, &names.client));
    }
    if let Some(e) = &s.server {
        f.message(4, &Named(e, &names.server));
    }
    for o in &s.observations {
        f.message(5, &Observed(o, &names.observations));
    }
    f.fixed64(6, s.start_unix_nanos);
    f.fixed64(7, s.end_unix_nanos);
    if let Some(c) = &s.bytes {
        f.message(8, c);
    }
    if let Some(c) = &s.packets {
        f.message(9, c);
    }
    if let Some(h) = &s.http {
        f.message(10, h);
    }
    if let Some(t) = &s.trace {
        f.message(11, t);
    }
    f.bool(12, s.incomplete);
}

/// The fields after the analyzer's (21).
fn tail<F: Fields>(s: &Session, f: &mut F) {
    for id in &s.merged_ids {
        f.repeated_bytes(21, id.as_bytes());
    }
}

/// The attributes, gRPC, DNS, database, Kafka and analyzer fields (13 to 18), by prost.
fn rare(s: &Session, buf: &mut impl BufMut) {
    pe::hash_map::encode(
        pe::string::encode,
        pe::string::encoded_len,
        pe::string::encode,
        pe::string::encoded_len,
        13,
        &s.attributes,
        buf,
    );
    boxed(14, s.grpc.as_deref(), buf);
    boxed(15, s.dns.as_deref(), buf);
    boxed(16, s.database.as_deref(), buf);
    boxed(17, s.kafka.as_deref(), buf);
    boxed(18, s.analyzer.as_deref(), buf);
}

/// [`rare`]'s length.
fn rare_len(s: &Session) -> usize {
    pe::hash_map::encoded_len(
        pe::string::encoded_len,
        pe::string::encoded_len,
        13,
        &s.attributes,
    ) + boxed_len(14, s.grpc.as_deref())
        + boxed_len(15, s.dns.as_deref())
        + boxed_len(16, s.database.as_deref())
        + boxed_len(17, s.kafka.as_deref())
        + boxed_len(18, s.analyzer.as_deref())
}

/// A message field left to prost, when present.
fn boxed(tag: u32, m: Option<&impl prost::Message>, buf: &mut impl BufMut) {
    if let Some(m) = m {
        pe::message::encode(tag, m, buf);
    }
}

/// [`boxed`]'s length.
fn boxed_len(tag: u32, m: Option<&impl prost::Message>) -> usize {
    m.map_or(0, |m| pe::message::encoded_len(tag, m))
}

/// Where a message's fields go: measured ([`Len`]) or written ([`Write`]). A field at its
/// default value (empty, zero, false) is left out, as proto3 has it.
trait Fields {
    /// A string field given in parts, written as their concatenation: there even when empty.
    fn parts(&mut self, tag: u32, parts: &[&str]);
    /// An element of a repeated string or bytes field: there even when empty.
    fn repeated_bytes(&mut self, tag: u32, v: &[u8]);
    /// A varint field, left out when 0.
    fn varint(&mut self, tag: u32, v: u64);
    /// A fixed 64-bit field, left out when 0.
    fn fixed64(&mut self, tag: u32, v: u64);
    /// A message field: its key, its length, its fields (all by [`Nested::fields`]).
    fn message(&mut self, tag: u32, m: &impl Nested);

    /// A string or bytes field, left out when empty.
    fn bytes(&mut self, tag: u32, v: &[u8]) {
        if !v.is_empty() {
            self.repeated_bytes(tag, v);
        }
    }

    /// An `int32` or enum field: negative values take ten bytes, as prost writes them.
    fn int32(&mut self, tag: u32, v: i32) {
        self.varint(tag, i64::from(v) as u64);
    }

    fn uint32(&mut self, tag: u32, v: u32) {
        self.varint(tag, u64::from(v));
    }

    fn bool(&mut self, tag: u32, v: bool) {
        self.varint(tag, u64::from(v));
    }
}

/// Measures the fields given (`total`), and each message's length in `lens`, in the order
/// [`Write`] writes them (a message before the messages in it): measured once, written once.
struct Len<'a> {
    total: usize,
    lens: &'a mut Vec<usize>,
}

impl Fields for Len<'_> {
    fn parts(&mut self, tag: u32, parts: &[&str]) {
        let n = parts.iter().map(|p| p.len()).sum::<usize>();
        self.total += key_len(tag) + encoded_len_varint(n as u64) + n;
    }

    fn repeated_bytes(&mut self, tag: u32, v: &[u8]) {
        self.total += key_len(tag) + encoded_len_varint(v.len() as u64) + v.len();
    }

    fn varint(&mut self, tag: u32, v: u64) {
        if v != 0 {
            self.total += key_len(tag) + encoded_len_varint(v);
        }
    }

    fn fixed64(&mut self, tag: u32, v: u64) {
        if v != 0 {
            self.total += key_len(tag) + 8;
        }
    }

    fn message(&mut self, tag: u32, m: &impl Nested) {
        let slot = self.lens.len();
        self.lens.push(0);
        let outer = std::mem::take(&mut self.total);
        m.fields(self);
        let n = std::mem::replace(&mut self.total, outer);
        if let Some(l) = self.lens.get_mut(slot) {
            *l = n;
        }
        self.total += key_len(tag) + encoded_len_varint(n as u64) + n;
    }
}

/// Writes the fields given into room measured for them ([`Out`]). Each message's length is the
/// next of `lens`.
struct Write<'a> {
    out: Out<'a>,
    lens: std::slice::Iter<'a, usize>,
}

impl Fields for Write<'_> {
    fn parts(&mut self, tag: u32, parts: &[&str]) {
        self.out.key(tag, WireType::LengthDelimited);
        self.out
            .put_varint(parts.iter().map(|p| p.len()).sum::<usize>() as u64);
        for p in parts {
            self.out.put_slice(p.as_bytes());
        }
    }

    fn repeated_bytes(&mut self, tag: u32, v: &[u8]) {
        self.out.key(tag, WireType::LengthDelimited);
        self.out.put_varint(v.len() as u64);
        self.out.put_slice(v);
    }

    fn varint(&mut self, tag: u32, v: u64) {
        if v != 0 {
            self.out.key(tag, WireType::Varint);
            self.out.put_varint(v);
        }
    }

    fn fixed64(&mut self, tag: u32, v: u64) {
        if v != 0 {
            self.out.key(tag, WireType::SixtyFourBit);
            self.out.put_slice(&v.to_le_bytes());
        }
    }

    fn message(&mut self, tag: u32, m: &impl Nested) {
        // Measured by the same field lists in the same order, so always there; were it not,
        // measured here (and the messages in it too, the list being used up).
        let n = self.lens.next().copied().unwrap_or_else(|| {
            let mut lens = Vec::new();
            let mut l = Len {
                total: 0,
                lens: &mut lens,
            };
            m.fields(&mut l);
            l.total
        });
        self.out.key(tag, WireType::LengthDelimited);
        self.out.put_varint(n as u64);
        m.fields(self);
    }
}

/// A nested message the session holds, given by one field list that both measures ([`Len`]) and
/// writes ([`Write`]) it.
trait Nested {
    fn fields<F: Fields>(&self, f: &mut F);
}

/// An endpoint with the names given beside it where its own are empty.
struct Named<'a>(&'a Endpoint, &'a EndpointNames<'a>);

impl Nested for Named<'_> {
    fn fields<F: Fields>(&self, f: &mut F) {
        let e = self.0;
        let n = EndpointNames::of(e).or(*self.1);
        f.bytes(1, &e.ip);
        f.uint32(2, e.port);
        f.bytes(3, n.pod.as_bytes());
        f.bytes(4, n.namespace.as_bytes());
        f.bytes(5, n.node.as_bytes());
        f.bytes(6, n.workload.as_bytes());
        f.bytes(7, n.service.as_bytes());
    }
}

/// An observation with the probe's names given beside it where its own are empty.
struct Observed<'a>(&'a Observation, &'a ObservationNames<'a>);

impl Nested for Observed<'_> {
    fn fields<F: Fields>(&self, f: &mut F) {
        let (o, n) = (self.0, self.1);
        f.int32(1, o.kind);
        f.bytes(2, o.interface.as_bytes());
        f.bytes(3, first(&o.node, n.node).as_bytes());
        f.bytes(4, first(&o.probe_id, n.probe_id).as_bytes());
        f.fixed64(6, o.request_start_unix_nanos);
        f.fixed64(7, o.request_end_unix_nanos);
        f.fixed64(8, o.response_start_unix_nanos);
        f.fixed64(9, o.response_end_unix_nanos);
        f.uint32(10, o.request_tcp_seq);
        f.uint32(11, o.response_tcp_seq);
        f.uint32(12, o.pid);
        f.bytes(13, o.comm.as_bytes());
        f.varint(14, o.netns_inode);
        f.int32(15, o.side);
        f.varint(20, o.request_bytes);
        f.varint(21, o.response_bytes);
        f.varint(22, o.request_packets);
        f.varint(23, o.response_packets);
        f.uint32(24, o.retransmits);
    }
}

impl Nested for Counters {
    fn fields<F: Fields>(&self, f: &mut F) {
        f.varint(1, self.request);
        f.varint(2, self.response);
    }
}

impl Nested for Http {
    fn fields<F: Fields>(&self, f: &mut F) {
        f.bytes(1, self.method.as_bytes());
        f.bytes(2, self.target.as_bytes());
        f.bytes(3, self.host.as_bytes());
        f.bytes(4, self.user_agent.as_bytes());
        f.uint32(5, self.status_code);
        f.bytes(6, self.version.as_bytes());
        f.bytes(7, self.request_id.as_bytes());
        f.bytes(8, self.envoy_decorator.as_bytes());
        f.bytes(9, self.reason.as_bytes());
        f.varint(10, self.request_content_length);
        f.varint(11, self.response_content_length);
        f.bool(12, self.response_chunked);
    }
}

impl Nested for TraceContext {
    fn fields<F: Fields>(&self, f: &mut F) {
        f.int32(1, self.format);
        f.bytes(2, &self.trace_id);
        f.bytes(3, &self.parent_span_id);
        f.bool(4, self.sampled);
        f.bytes(5, self.tracestate.as_bytes());
    }
}

#[cfg(test)]
mod tests;
