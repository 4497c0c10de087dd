//! Protocol decoding: one seam, and a folder per protocol behind it.
//!
//! The flow table ([`crate::flows`]) knows ordering and lifetimes, not protocols. For each flow it
//! asks the [`Decoders`] which protocol the flow speaks, from its first bytes
//! ([`Decoder::detect`]; the traced port's [`ProtocolHint`] is only a hint). The decoder that
//! claims the flow makes a [`FlowDecoder`] for it, which from then on takes the flow's messages
//! in order and reports what it finds to an [`Output`]: [`Exchange`]s (a request and its
//! response, protocol-neutral, with the protocol's typed [`Fields`]), decode errors, messages it
//! could not pair, and desyncs. A flow no decoder claims is *opaque*: it still yields connection
//! and byte metrics, no exchanges.
//!
//! Decoders see only the first `snaplen` bytes of each message ([`Message::payload`]), so every
//! decoder must cope with input cut anywhere, and must never panic on what the network sent. At
//! the socket point, connections of multiplexed or multi-write protocols (HTTP/2 and gRPC,
//! PostgreSQL, MySQL) are captured call by call: each write or read's bytes (up to a bound per
//! call, then its last bytes), stitched here into the message's first bytes and its later
//! captured runs
//! ([`Message::later`], [`Captured`]), so a decoder can follow its framing past the first call.
//!
//! Adding a protocol means a folder here (`mod.rs` with the [`Decoder`], its parsing, its per-flow
//! state, `tests.rs`) and one line in [`Decoders::default`]; the flow table does not change. A
//! user analyzer (Wasm, `clovisor_proto_cfg`, [`analyzer`]) is one more [`Decoder`]: its
//! `clovisor_parse(session_key, direction, data)` maps onto [`FlowDecoder::on_message`] (the
//! session key is [`FlowInfo`]'s probe and flow id) and its fields become the session's
//! `analyzer` part ([`Fields::Analyzer`]). Analyzers are not in the fixed list: they come and go
//! while flows run ([`analyzer::Analyzers`]), and [`Decoders::detect`] tries those that claim a
//! port before the built-in decoders and those that detect by content after them.

pub mod analyzer;
pub mod dns;
pub mod http1;
pub mod http2;
pub mod kafka;
pub mod limits;
pub mod mysql;
pub mod postgresql;
pub mod redact;
pub mod redis;
pub mod sql;
#[cfg(test)]
pub(crate) mod testing;
pub mod trace_context;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use clovisor_proto::capture::v1::{self as capture, FlowKey, ProtocolHint};
use clovisor_proto::session::v1::{
    Analyzer as AnalyzerFields, Database, Dns, Grpc, Http, Kafka, Protocol, TraceContext,
};

pub use trace_context::TraceContextError;

/// Which way a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client (the end whose port is not traced) to the server.
    ClientToServer,
    /// From the server to the client.
    ServerToClient,
}

impl Direction {
    /// The direction of a `capture.v1` message; `None` when unspecified or unknown.
    pub fn from_wire(direction: i32) -> Option<Self> {
        match capture::Direction::try_from(direction) {
            Ok(capture::Direction::ClientToServer) => Some(Self::ClientToServer),
            Ok(capture::Direction::ServerToClient) => Some(Self::ServerToClient),
            _ => None,
        }
    }

    /// The index of this direction in per-direction arrays: 0 client to server, 1 back.
    pub fn index(self) -> usize {
        match self {
            Self::ClientToServer => 0,
            Self::ServerToClient => 1,
        }
    }
}

/// Timings and counters of one message: what is kept of it once its payload is decoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageStats {
    /// 0-based position of the message in its flow.
    pub index: u32,
    /// First byte seen, Unix nanoseconds.
    pub start: u64,
    /// Last byte seen, Unix nanoseconds.
    pub end: u64,
    /// TCP sequence number of the first byte.
    pub tcp_seq: u32,
    /// Payload bytes of the whole message (not only the captured prefix).
    pub bytes: u64,
    /// Packets of the whole message.
    pub packets: u32,
    /// Retransmitted packets.
    pub retransmits: u32,
    /// What the flow's second point (its pod's veth, `FlowStart.wire_point`) counted of the
    /// message, when the message carried it (`Message.wire`).
    pub wire: Option<WireStats>,
}

impl MessageStats {
    /// The stats of a `capture.v1` message.
    pub fn of(m: &capture::Message) -> Self {
        Self {
            index: m.index,
            start: m.start_unix_nanos,
            end: m.end_unix_nanos,
            tcp_seq: m.tcp_seq,
            bytes: m.bytes,
            packets: m.packets,
            retransmits: m.retransmits,
            wire: m.wire.as_ref().map(WireStats::of),
        }
    }

    /// Extends `self` by a later message of the same side (a request body after
    /// `100 Continue`): the end moves, the counters add up — the wire's too, when both carry
    /// them (a part the veth did not count leaves its counters as they were).
    pub fn extend(&mut self, later: &MessageStats) {
        grow(
            (
                &mut self.end,
                &mut self.bytes,
                &mut self.packets,
                &mut self.retransmits,
            ),
            (later.end, later.bytes, later.packets, later.retransmits),
        );
        if let (Some(w), Some(l)) = (&mut self.wire, &later.wire) {
            grow(
                (&mut w.end, &mut w.bytes, &mut w.packets, &mut w.retransmits),
                (l.end, l.bytes, l.packets, l.retransmits),
            );
        }
    }
}

/// A message's end, bytes, packets and retransmissions grown by a later part's.
fn grow(
    (end, bytes, packets, retransmits): (&mut u64, &mut u64, &mut u32, &mut u32),
    later: (u64, u64, u32, u32),
) {
    *end = (*end).max(later.0);
    *bytes = bytes.saturating_add(later.1);
    *packets = packets.saturating_add(later.2);
    *retransmits = retransmits.saturating_add(later.3);
}

/// A message as its flow's second point (its pod's veth) counted it on the wire
/// (`capture.v1.WireCounters`): what its own counters-only view would have carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireStats {
    /// First and last packet, Unix nanoseconds.
    pub start: u64,
    pub end: u64,
    /// TCP sequence number of the first byte.
    pub tcp_seq: u32,
    /// Payload bytes, packets (GSO segments one by one) and retransmitted packets.
    pub bytes: u64,
    pub packets: u32,
    pub retransmits: u32,
}

impl WireStats {
    /// The stats of a message's `wire`.
    pub fn of(w: &capture::WireCounters) -> Self {
        Self {
            start: w.start_unix_nanos,
            end: w.end_unix_nanos,
            tcp_seq: w.tcp_seq,
            bytes: w.bytes,
            packets: w.packets,
            retransmits: w.retransmits,
        }
    }
}

/// Bytes of a message captured past its first bytes: a run of `bytes` at `offset` from the
/// message's first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span<'a> {
    /// Offset of `bytes[0]` in the message.
    pub offset: u64,
    /// The captured bytes.
    pub bytes: &'a [u8],
}

/// A message's captured bytes as runs: the first (from offset 0, possibly empty) and the later
/// ones, in order, none touching another. Built from a `capture.v1` message's payload and its
/// segments (captured call by call, possibly overlapping, in any order).
#[derive(Debug, Default)]
pub struct Captured {
    first: Vec<u8>,
    later: Vec<(u64, Vec<u8>)>,
}

impl Captured {
    /// Stitches `payload` (at offset 0) and `segments` into runs. Overlapping bytes are taken
    /// from the piece that comes first in offset order.
    pub fn stitch(payload: &[u8], segments: &[capture::Segment]) -> Self {
        let mut pieces: Vec<(u64, &[u8])> = Vec::with_capacity(segments.len() + 1);
        if !payload.is_empty() {
            pieces.push((0, payload));
        }
        pieces.extend(
            segments
                .iter()
                .filter(|s| !s.payload.is_empty())
                .map(|s| (s.offset, &s.payload[..])),
        );
        pieces.sort_by_key(|p| p.0);
        let mut runs: Vec<(u64, Vec<u8>)> = Vec::new();
        for (offset, bytes) in pieces {
            if let Some((start, run)) = runs.last_mut() {
                let end = start.saturating_add(run.len() as u64);
                if offset <= end {
                    // Touching or overlapping: the part past the run's end extends it.
                    let skip = usize::try_from(end - offset).unwrap_or(usize::MAX);
                    if let Some(rest) = bytes.get(skip..) {
                        run.extend_from_slice(rest);
                    }
                    continue;
                }
            }
            runs.push((offset, bytes.to_vec()));
        }
        let mut first = Vec::new();
        let mut later = Vec::new();
        for (offset, run) in runs {
            if offset == 0 {
                first = run;
            } else {
                later.push((offset, run));
            }
        }
        Self { first, later }
    }

    /// The run from offset 0 (empty when the message's start was not captured).
    pub fn first(&self) -> &[u8] {
        &self.first
    }

    /// The later runs, as [`Span`]s.
    pub fn later(&self) -> Vec<Span<'_>> {
        self.later
            .iter()
            .map(|(offset, bytes)| Span {
                offset: *offset,
                bytes,
            })
            .collect()
    }
}

/// One message of a flow, in order, as a decoder sees it: everything one side sent before the
/// other side sent anything.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// Which way it went.
    pub direction: Direction,
    /// Its timings and counters.
    pub stats: MessageStats,
    /// The first bytes of the message: all of it, or cut at the probe's snaplen
    /// ([`Message::is_cut`]).
    pub payload: &'a [u8],
    /// The counters were read before the message was over (the probe flushed it early). Only a
    /// decoder that asked to wait for the final counters ([`FlowDecoder::awaits_final`]) and did
    /// not get them in time sees a partial message.
    pub partial: bool,
    /// Bytes captured past [`Message::payload`], after a gap (the socket point captures
    /// multiplexed and multi-write protocols call by call), in order; empty otherwise.
    pub later: &'a [Span<'a>],
}

impl<'a> Message<'a> {
    /// The captured bytes from `offset` on, up to the end of the run that holds `offset`;
    /// empty when `offset` was not captured.
    pub fn captured_at(&self, offset: u64) -> &'a [u8] {
        if let Some(rest) = usize::try_from(offset)
            .ok()
            .and_then(|o| self.payload.get(o..))
            .filter(|r| !r.is_empty())
        {
            return rest;
        }
        self.later
            .iter()
            .find(|s| offset >= s.offset && offset - s.offset < s.bytes.len() as u64)
            .and_then(|s| {
                usize::try_from(offset - s.offset)
                    .ok()
                    .and_then(|o| s.bytes.get(o..))
            })
            .unwrap_or(&[])
    }

    /// The end of the last captured byte (0 when nothing was).
    pub fn captured_end(&self) -> u64 {
        self.later.last().map_or(self.payload.len() as u64, |s| {
            s.offset.saturating_add(s.bytes.len() as u64)
        })
    }
}

impl Message<'_> {
    /// Whether [`Message::payload`] is only a prefix: the message had more bytes than captured.
    pub fn is_cut(&self) -> bool {
        u64::try_from(self.payload.len()).is_ok_and(|n| n < self.stats.bytes)
    }
}

/// What a decoder may know about its flow. Set once when the flow is created.
#[derive(Debug, Clone, Copy)]
pub struct FlowInfo<'a> {
    /// The probe the flow was seen by.
    pub probe_id: &'a str,
    /// The flow's id at that probe (one connection at one observation point).
    pub flow_id: u64,
    /// Client and server address and port, and the transport.
    pub key: &'a FlowKey,
    /// What the traced port is configured for (Istio port name, `appProtocol`): a hint only.
    pub hint: ProtocolHint,
}

/// A decoder's verdict on a flow's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detection {
    /// The bytes are this protocol's: the flow is decoded by it, starting with this message.
    Claim,
    /// Not this protocol.
    No,
    /// The hint names this protocol but the bytes do not (or not yet) look like it: the message
    /// is counted as a decode error with `reason` and the flow stays undecided.
    HintMismatch {
        /// Label of `clovisor_collector_decode_errors_total`.
        reason: &'static str,
    },
}

/// Where a decoder needs bytes captured beyond each message's prefix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Within {
    /// The prefix is enough (HTTP/1.x: the head is at the start).
    #[default]
    Nothing,
    /// The header of every frame inside a message (multiplexed framing: HTTP/2, Kafka, the
    /// PostgreSQL and MySQL wire protocols), with `bytes` bytes each.
    FrameHeaders {
        /// Bytes of one frame header (HTTP/2: 9).
        bytes: u16,
    },
}

/// What a decoder needs captured of each flow it claims.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureNeeds {
    /// Bytes at the start of each message the decoder makes use of (beyond that, a larger
    /// snaplen only costs).
    pub prefix: u32,
    /// Beyond the prefix.
    pub within: Within,
}

/// The typed part of an exchange: what the session carries for its protocol family.
#[derive(Debug, Clone, PartialEq)]
// Moved once per exchange into its session: a box would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Fields {
    /// HTTP (HTTP/1.x and HTTP/2): the session's `http` part.
    Http(Http),
    /// A gRPC call: its HTTP/2 exchange (`http`) and the call (`grpc`).
    Grpc {
        /// The session's `http` part.
        http: Http,
        /// The session's `grpc` part.
        grpc: Grpc,
    },
    /// DNS: the session's `dns` part.
    Dns(Dns),
    /// Redis, PostgreSQL, MySQL: the session's `database` part.
    Database(Database),
    /// A user analyzer's: the session's `analyzer` part.
    Analyzer(AnalyzerFields),
    /// Kafka: the session's `kafka` part.
    Kafka(Kafka),
    /// No typed fields (a protocol known only by its attributes, e.g. a user analyzer's).
    None,
}

/// One request and its response (or the request alone, when the response was never seen), in
/// terms every protocol shares. The flow table turns it into a `session.v1.Session` with the
/// flow's endpoints and observation point.
#[derive(Debug, Clone, PartialEq)]
pub struct Exchange {
    /// The session's protocol.
    pub protocol: Protocol,
    /// Timings and counters of the request message (or messages: a body after
    /// `100 Continue`). Its index names the exchange.
    pub request: MessageStats,
    /// Timings and counters of the response message(s), when seen.
    pub response: Option<MessageStats>,
    /// Position among the exchanges of one request message (pipelining), 0 for the first. Only
    /// the first carries the messages' byte and packet counts, which cannot be split.
    pub position: u32,
    /// The response was never seen (the flow ended, or the next request came first).
    pub incomplete: bool,
    /// The protocol's typed fields.
    pub fields: Fields,
    /// Trace context found in the request.
    pub trace: Option<TraceContext>,
    /// Free-form fields (`clovisor.<protocol>.*`, an analyzer's prefix).
    pub attributes: HashMap<String, String>,
}

/// Where a [`FlowDecoder`] reports what it found.
pub trait Output {
    /// An exchange is complete (or given up on, [`Exchange::incomplete`]).
    fn exchange(&mut self, exchange: Exchange);
    /// A message could not be decoded (`clovisor_collector_decode_errors_total{reason}`).
    fn decode_error(&mut self, reason: &'static str);
    /// A message was taken in but pairs with nothing, e.g. `response_without_request`
    /// (`clovisor_collector_messages_dropped_total{reason}`).
    fn unpaired(&mut self, reason: &'static str);
    /// The decoder is out of step with the flow (framing lost, compression state missing)
    /// (`clovisor_collector_decoder_desyncs_total{protocol, reason}`).
    fn desync(&mut self, reason: &'static str);
}

/// What the flow table does with a flow after a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Keep giving this decoder the flow's messages.
    Continue,
    /// The decoder lost the flow: detect the protocol afresh from the next message.
    Redetect,
    /// Decode nothing more of this flow; it keeps yielding connection and byte metrics.
    Stop,
    /// The flow changed protocol in the middle (HTTP/1.1 `Upgrade: h2c` accepted with `101`):
    /// from the next message on, the decoder [`FlowDecoder::successor`] hands over decodes it,
    /// with the state the handover left (what is still open moves with it). Without a successor
    /// this is [`Step::Redetect`].
    Handover,
}

/// A protocol's decoder for one flow: its state between messages (open requests, compression
/// tables, a parser's leftover bytes).
pub trait FlowDecoder: Send + fmt::Debug {
    /// Takes the flow's next message in order.
    fn on_message(&mut self, message: &Message<'_>, out: &mut dyn Output) -> Step;

    /// A message the probe flushed early (`partial`): whether to hold it until its final
    /// counters arrive (or the next message, or the flow table's grace period) before
    /// [`FlowDecoder::on_message`]. `false` (the default) takes it at once, as it is.
    fn awaits_final(&self, message: &Message<'_>) -> bool {
        let _ = message;
        false
    }

    /// Whether the decoder follows each direction as a byte stream across that direction's
    /// messages (a frame begun in one goes on in the next), so that what an early-flushed
    /// message grew by after it was taken can come as a message of its own: its final version's
    /// growth is then handed on (at a socket point capturing call by call, the bytes of the
    /// calls made after the flush). `false` (the default): a final version after the partial
    /// one was taken is dropped (`duplicate`).
    fn continues_messages(&self) -> bool {
        false
    }

    /// The flow ended or was evicted: report what is still open, as incomplete.
    fn on_close(&mut self, out: &mut dyn Output);

    /// After [`Step::Handover`]: the decoder that takes the flow over, and its name (the
    /// metrics' `protocol` label).
    fn successor(&mut self) -> Option<(&'static str, Box<dyn FlowDecoder>)> {
        None
    }
}

/// A protocol: detects it, says what it needs captured, decodes its flows.
pub trait Decoder: Send + Sync + fmt::Debug {
    /// Stable name: a metric label, and in logs (`http1`).
    fn name(&self) -> &'static str;

    /// What this protocol needs captured of each flow.
    fn capture_needs(&self) -> CaptureNeeds;

    /// Whether the flow speaks this protocol, from the first message seen of it (and again
    /// from each next message while no decoder has claimed the flow). Detection is by content,
    /// as the peers themselves do; the hint may only break a tie or explain a mismatch.
    fn detect(&self, flow: &FlowInfo<'_>, first: &Message<'_>) -> Detection;

    /// State for one flow this decoder claimed.
    fn new_flow(&self, flow: &FlowInfo<'_>) -> Box<dyn FlowDecoder>;
}

/// The outcome of asking every decoder about a flow's message.
#[derive(Debug, Clone)]
pub enum Detected {
    /// This decoder claimed the flow.
    Claimed(Arc<dyn Decoder>),
    /// None claimed it; the hint's decoder counts the message as a decode error (`reason`).
    HintMismatch(&'static str),
    /// None claimed it.
    Unclaimed,
}

/// The decoders a flow table tries, in order: the first to claim a flow decodes it; and the
/// user analyzers, which change while it runs.
#[derive(Debug, Clone)]
pub struct Decoders {
    list: Arc<[Arc<dyn Decoder>]>,
    analyzers: analyzer::Analyzers,
}

impl Default for Decoders {
    /// Every built-in protocol.
    fn default() -> Self {
        Self::new(vec![
            Arc::new(http1::Http1),
            Arc::new(http2::Http2),
            Arc::new(redis::Redis),
            Arc::new(postgresql::Postgresql),
            Arc::new(mysql::Mysql),
            Arc::new(dns::Dns),
            // Last: its header check is the loosest of all.
            Arc::new(kafka::Kafka::default()),
        ])
    }
}

impl Decoders {
    /// Exactly `list`, tried in this order.
    pub fn new(list: Vec<Arc<dyn Decoder>>) -> Self {
        Self {
            list: list.into(),
            analyzers: analyzer::Analyzers::default(),
        }
    }

    /// The same decoders with the user analyzers of `analyzers` (a set shared with whatever
    /// loads them, e.g. [`analyzer::live::follow`]).
    pub fn with_analyzers(mut self, analyzers: analyzer::Analyzers) -> Self {
        self.analyzers = analyzers;
        self
    }

    /// The same decoders plus the analyzer `module` (`.wasm` or `.wat` bytes) under the
    /// protocol name `name`: how `clovisor decode --analyzer NAME=MODULE` runs one offline.
    pub fn with_analyzer(
        self,
        name: &str,
        module: &[u8],
    ) -> Result<Self, analyzer::runtime::LoadError> {
        self.analyzers.load(name, module)?;
        Ok(self)
    }

    /// The user analyzers.
    pub fn analyzers(&self) -> &analyzer::Analyzers {
        &self.analyzers
    }

    /// Which decoder claims the flow from `message`: an analyzer claiming the server port,
    /// else the first built-in decoder to claim it, else an analyzer recognising the bytes.
    pub fn detect(&self, flow: &FlowInfo<'_>, message: &Message<'_>) -> Detected {
        if let Some(a) = self.analyzers.by_port(flow) {
            return Detected::Claimed(a);
        }
        let mut mismatch = None;
        for d in self.list.iter() {
            match d.detect(flow, message) {
                Detection::Claim => return Detected::Claimed(Arc::clone(d)),
                Detection::HintMismatch { reason } => {
                    mismatch.get_or_insert(reason);
                }
                Detection::No => {}
            }
        }
        if let Some(a) = self.analyzers.by_content(flow, message) {
            return Detected::Claimed(a);
        }
        match mismatch {
            Some(reason) => Detected::HintMismatch(reason),
            None => Detected::Unclaimed,
        }
    }

    /// What all decoders together need captured: the longest prefix, and frame headers when
    /// any needs them (the largest).
    pub fn capture_needs(&self) -> CaptureNeeds {
        self.list
            .iter()
            .map(|d| d.capture_needs())
            .fold(CaptureNeeds::default(), |acc, n| CaptureNeeds {
                prefix: acc.prefix.max(n.prefix),
                within: match (acc.within, n.within) {
                    (Within::FrameHeaders { bytes: a }, Within::FrameHeaders { bytes: b }) => {
                        Within::FrameHeaders { bytes: a.max(b) }
                    }
                    (Within::Nothing, w) | (w, Within::Nothing) => w,
                },
            })
    }

    /// The decoders' names, in order.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.list.iter().map(|d| d.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Framed(u16);

    impl Decoder for Framed {
        fn name(&self) -> &'static str {
            "framed"
        }
        fn capture_needs(&self) -> CaptureNeeds {
            CaptureNeeds {
                prefix: 64,
                within: Within::FrameHeaders { bytes: self.0 },
            }
        }
        fn detect(&self, _: &FlowInfo<'_>, first: &Message<'_>) -> Detection {
            if first.payload.starts_with(b"FRAMED") {
                Detection::Claim
            } else {
                Detection::No
            }
        }
        fn new_flow(&self, _: &FlowInfo<'_>) -> Box<dyn FlowDecoder> {
            unimplemented!("not used by these tests")
        }
    }

    fn detect(decoders: &Decoders, payload: &[u8], hint: ProtocolHint) -> Detected {
        let key = FlowKey::default();
        let flow = FlowInfo {
            probe_id: "p",
            flow_id: 1,
            key: &key,
            hint,
        };
        let m = Message {
            direction: Direction::ClientToServer,
            stats: MessageStats::default(),
            payload,
            partial: false,
            later: &[],
        };
        decoders.detect(&flow, &m)
    }

    #[test]
    fn the_first_decoder_to_claim_wins_and_a_hint_only_explains_a_mismatch() {
        let d = Decoders::new(vec![Arc::new(http1::Http1), Arc::new(Framed(9))]);
        assert!(
            matches!(detect(&d, b"GET / HTTP/1.1\r\n\r\n", ProtocolHint::Tcp), Detected::Claimed(c) if c.name() == "http1"),
            "HTTP/1 by its bytes, whatever the port says"
        );
        assert!(
            matches!(detect(&d, b"FRAMED...", ProtocolHint::Http), Detected::Claimed(c) if c.name() == "framed"),
            "a port named http speaking another protocol is that protocol"
        );
        assert!(matches!(
            detect(&d, b"\x16\x03\x01", ProtocolHint::Http),
            Detected::HintMismatch("not_http")
        ));
        assert!(matches!(
            detect(&d, b"\x16\x03\x01", ProtocolHint::Tcp),
            Detected::Unclaimed
        ));
        assert_eq!(d.names().collect::<Vec<_>>(), ["http1", "framed"]);
    }

    #[test]
    fn capture_needs_combine_to_the_largest() {
        let d = Decoders::new(vec![
            Arc::new(http1::Http1),
            Arc::new(Framed(9)),
            Arc::new(Framed(5)),
        ]);
        let needs = d.capture_needs();
        assert_eq!(
            needs,
            CaptureNeeds {
                prefix: needs.prefix.max(64),
                within: Within::FrameHeaders { bytes: 9 },
            }
        );
        assert!(needs.prefix >= 64);
        assert_eq!(
            Decoders::new(vec![Arc::new(http1::Http1)])
                .capture_needs()
                .within,
            Within::Nothing,
            "HTTP/1.x needs only the prefix"
        );
        assert_eq!(
            Decoders::default().capture_needs().within,
            Within::FrameHeaders { bytes: 9 },
            "HTTP/2 needs its frame headers"
        );
    }

    #[test]
    fn a_message_knows_whether_its_payload_was_cut() {
        let m = |len: usize, bytes: u64| Message {
            direction: Direction::ServerToClient,
            stats: MessageStats {
                bytes,
                ..MessageStats::default()
            },
            payload: &[0; 8][..len],
            partial: false,
            later: &[],
        };
        assert!(m(8, 100).is_cut());
        assert!(!m(8, 8).is_cut());
        assert!(!m(0, 0).is_cut());
    }

    /// Messages captured call by call with hostile segments (offsets anywhere up to `u64::MAX`,
    /// overlapping, out of order, random or real-looking bytes) go through every decoder
    /// without a panic.
    #[test]
    fn hostile_segments_never_panic_any_decoder() {
        let mut rng = testing::Rng(0x5eed_cafe_f00d_1234);
        let seeds: [&[u8]; 4] = [
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
            b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
            b"Q\x00\x00\x00\x0dSELECT 1\x00C\x00\x00\x00\x0dSELECT 1\x00Z\x00\x00\x00\x05I",
            b"\x00\x00\x00\x10\x00\x01\x00\x10\x00\x00\x00\x01\x00\x02ab",
        ];
        let decoders = Decoders::default();
        let key = FlowKey::default();
        for round in 0..400u32 {
            let info = FlowInfo {
                probe_id: "p",
                flow_id: u64::from(round),
                key: &key,
                hint: ProtocolHint::Unspecified,
            };
            let seed = seeds[rng.below(seeds.len())];
            let mut flow: Option<Box<dyn FlowDecoder>> = None;
            for index in 0..6u32 {
                let segments: Vec<capture::Segment> = (0..rng.below(6))
                    .map(|_| {
                        let offset = match rng.below(4) {
                            0 => u64::MAX - rng.below(64) as u64,
                            1 => rng.next_u64(),
                            _ => rng.below(200) as u64,
                        };
                        let bytes: Vec<u8> = if rng.below(2) == 0 {
                            seed[rng.below(seed.len())..].to_vec()
                        } else {
                            (0..rng.below(80)).map(|_| rng.next_u64() as u8).collect()
                        };
                        capture::Segment {
                            offset,
                            payload: bytes.into(),
                        }
                    })
                    .collect();
                let first = if index == 0 { seed } else { &[][..] };
                let captured = Captured::stitch(first, &segments);
                let later = captured.later();
                let m = Message {
                    direction: if index % 2 == 0 {
                        Direction::ClientToServer
                    } else {
                        Direction::ServerToClient
                    },
                    stats: MessageStats {
                        index,
                        bytes: rng.next_u64() % 100_000,
                        ..MessageStats::default()
                    },
                    payload: captured.first(),
                    partial: false,
                    later: &later,
                };
                let _ = m.captured_end();
                let _ = m.captured_at(rng.next_u64());
                let mut out = testing::Recorded::default();
                if flow.is_none() {
                    if let Detected::Claimed(d) = decoders.detect(&info, &m) {
                        flow = Some(d.new_flow(&info));
                    }
                }
                if let Some(f) = flow.as_mut() {
                    f.on_message(&m, &mut out);
                }
            }
            if let Some(mut f) = flow {
                f.on_close(&mut testing::Recorded::default());
            }
        }
    }
}
