//! The HTTP/2 state of one connection: per direction, an HPACK decoder and what is left of a
//! frame begun in an earlier message; per stream, the exchange being assembled.
//!
//! Each message is walked frame by frame as far as the capture goes. What lies past the
//! capture is unknown: if it may hold a header block, that direction's HPACK table is out of
//! step (counted once, `Output::desync`), and from then on only fields that do not refer to the
//! dynamic table are known. A stream's exchange is reported when the server ends it
//! (`END_STREAM`) or either side resets it; streams still open at the end are incomplete.

use std::collections::{BTreeMap, HashMap};

use clovisor_proto::session::v1::{Http, Protocol, TraceContext};

use super::frame::{self, FrameHeader, Kind, END_HEADERS, END_STREAM, HEADER_LEN, PREFACE};
use super::headers::{RequestHeaders, ResponseHeaders};
use super::{grpc, hpack};
use crate::decode::http1::RequestHead;
use crate::decode::{
    Direction, Exchange, Fields, FlowDecoder, Message, MessageStats, Output, Step,
};

/// Streams tracked at once per connection; a stream beyond is not reported
/// (`messages_dropped_total{reason="http2_too_many_streams"}`).
pub const MAX_STREAMS: usize = 256;

/// Bytes of one header block held while it is assembled from several frames or messages.
pub const MAX_BLOCK: usize = hpack::MAX_HEADER_LIST;

/// A header block whose `CONTINUATION` frames are still to come.
#[derive(Debug)]
struct PendingBlock {
    stream: u32,
    /// TCP sequence number of the block's first frame.
    seq: u32,
    kind: Kind,
    end_stream: bool,
    bytes: Vec<u8>,
}

/// The part of a frame that lies in the next message of the same direction.
#[derive(Debug, Default)]
enum Carry {
    #[default]
    Nothing,
    /// Bytes to pass over (a frame whose rest does not matter, or is lost).
    Skip(u64),
    /// A header block frame, all of it so far captured: its payload is completed from the next
    /// message.
    Frame {
        header: FrameHeader,
        /// TCP sequence number of the frame's first byte.
        seq: u32,
        payload: Vec<u8>,
        remaining: u64,
    },
}

/// One direction of the connection.
#[derive(Debug, Default)]
struct Side {
    hpack: hpack::Decoder,
    carry: Carry,
    block: Option<PendingBlock>,
}

/// One stream's exchange as far as seen.
#[derive(Debug)]
struct Stream {
    /// The message that opened the stream.
    request: MessageStats,
    /// Position among the streams opened in that message.
    position: u32,
    /// The request's header block was seen (decoded, or lost and counted).
    request_seen: bool,
    req: RequestHeaders,
    /// Trace context already parsed (a stream upgraded from HTTP/1.1).
    trace: Option<TraceContext>,
    resp: Option<ResponseHeaders>,
    /// The first message with the response's headers; its end moves to the message that
    /// ended the stream.
    response: Option<MessageStats>,
    /// `RST_STREAM` error code.
    reset: Option<u32>,
}

impl Stream {
    fn new(request: MessageStats, position: u32) -> Self {
        Self {
            request,
            position,
            request_seen: false,
            req: RequestHeaders::default(),
            trace: None,
            resp: None,
            response: None,
            reset: None,
        }
    }
}

/// Where the fields of a header block go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Request,
    Response,
    Ignore,
}

/// The HTTP/2 state of one flow.
#[derive(Debug)]
pub struct Http2Flow {
    sides: [Side; 2],
    streams: HashMap<u32, Stream>,
    /// The client's next message starts with the connection preface.
    preface_pending: bool,
    /// Frames that came before this decoder took the flow over (after a `101`), decoded with
    /// its first message so that what they report is reported as HTTP/2's.
    backlog: Option<Backlog>,
}

/// A message (the part of it after an HTTP/1.1 `101` head) waiting for the HTTP/2 decoder.
#[derive(Debug)]
struct Backlog {
    direction: Direction,
    stats: MessageStats,
    payload: Vec<u8>,
    partial: bool,
}

impl Default for Http2Flow {
    fn default() -> Self {
        Self {
            sides: Default::default(),
            streams: HashMap::new(),
            preface_pending: true,
            backlog: None,
        }
    }
}

/// What a frame handler needs of the message it is in.
struct At<'m> {
    side: usize,
    stats: &'m MessageStats,
    /// Streams opened in this message so far.
    opened: u32,
    /// TCP sequence number of the frame being handled: what names a stream's request (and
    /// response) at every observation point, however each point split the bytes into messages.
    frame_seq: u32,
}

impl FlowDecoder for Http2Flow {
    fn on_message(&mut self, m: &Message<'_>, out: &mut dyn Output) -> Step {
        self.drain_backlog(out);
        let mut at = At {
            side: m.direction.index(),
            stats: &m.stats,
            opened: 0,
            frame_seq: m.stats.tcp_seq,
        };
        self.walk(m, &mut at, out);
        Step::Continue
    }

    /// Each direction is walked frame by frame across its messages.
    fn continues_messages(&self) -> bool {
        true
    }

    fn on_close(&mut self, out: &mut dyn Output) {
        self.drain_backlog(out);
        let open: BTreeMap<u32, Stream> = self.streams.drain().collect();
        for (id, s) in open {
            out.exchange(exchange(id, s, true));
        }
    }
}

impl Http2Flow {
    /// The state after an HTTP/1.1 `Upgrade: h2c` was accepted (`101`): stream 1 is the
    /// upgrade request, already sent in `request`; the server's HTTP/2 frames follow the `101`
    /// head in its message, and the client's next message starts with the preface.
    pub fn upgraded(head: &RequestHead, request: MessageStats) -> Self {
        let mut req = RequestHeaders {
            method: Some(head.method.clone()),
            path: Some(head.target.clone()),
            authority: head.host.clone(),
            scheme: Some("http".to_owned()),
            user_agent: head.user_agent.clone(),
            request_id: head.request_id.clone(),
            envoy_decorator: head.envoy_decorator.clone(),
            content_length: head.content_length,
            ..RequestHeaders::default()
        };
        req.incomplete = head.truncated;
        let mut stream = Stream::new(request, 0);
        stream.req = req;
        stream.request_seen = true;
        stream.trace = head.trace.clone();
        let mut flow = Self::default();
        flow.streams.insert(1, stream);
        flow
    }

    /// Frames the flow carried before this decoder took it over: the rest of a message whose
    /// start (an HTTP/1.1 `101` head) another decoder read. Decoded before the next message.
    pub fn take_over_with(&mut self, rest: &Message<'_>) {
        self.backlog = Some(Backlog {
            direction: rest.direction,
            stats: rest.stats,
            payload: rest.payload.to_vec(),
            partial: rest.partial,
        });
    }

    fn drain_backlog(&mut self, out: &mut dyn Output) {
        if let Some(b) = self.backlog.take() {
            let m = Message {
                direction: b.direction,
                stats: b.stats,
                payload: &b.payload,
                partial: b.partial,
                later: &[],
            };
            let mut at = At {
                side: m.direction.index(),
                stats: &m.stats,
                opened: 0,
                frame_seq: m.stats.tcp_seq,
            };
            self.walk(&m, &mut at, out);
        }
    }

    /// Walks the frames of message `m` as far as they were captured. A frame cut by a gap in
    /// the capture is passed over by its length: the walk goes on at the next frame when that
    /// was captured (a message captured call by call at the socket point).
    fn walk(&mut self, m: &Message<'_>, at: &mut At<'_>, out: &mut dyn Output) {
        let buf = m.payload;
        let captured = buf.len() as u64;
        let total = m.stats.bytes.max(m.captured_end());
        let mut pos: u64 = 0;
        match std::mem::take(&mut self.sides[at.side].carry) {
            Carry::Nothing => {}
            Carry::Skip(n) => {
                if n > total {
                    self.sides[at.side].carry = Carry::Skip(n - total);
                    return;
                }
                pos = n;
            }
            Carry::Frame {
                header,
                seq,
                mut payload,
                remaining,
            } => {
                at.frame_seq = seq;
                let avail = captured.min(remaining);
                payload.extend_from_slice(&buf[..avail as usize]);
                if avail == remaining {
                    self.frame(&header, &payload, true, at, out);
                } else if remaining > total && captured == total {
                    self.sides[at.side].carry = Carry::Frame {
                        header,
                        seq,
                        payload,
                        remaining: remaining - total,
                    };
                    return;
                } else {
                    self.frame(&header, &payload, false, at, out);
                    if remaining > total {
                        self.sides[at.side].carry = Carry::Skip(remaining - total);
                        return;
                    }
                }
                pos = remaining;
            }
        }
        if m.direction == Direction::ClientToServer && self.preface_pending && pos == 0 {
            self.preface_pending = false;
            if buf.starts_with(PREFACE)
                || (captured < PREFACE.len() as u64 && PREFACE.starts_with(buf))
            {
                pos = PREFACE.len() as u64;
            }
        }
        while pos < total {
            let here = m.captured_at(pos);
            let Some(h) = FrameHeader::parse(here) else {
                // This part of the message was not captured.
                self.lose(at.side, "frames_beyond_capture", out);
                return;
            };
            // Sequence numbers wrap: the offset is taken modulo 2^32 on purpose.
            at.frame_seq = m.stats.tcp_seq.wrapping_add(pos as u32);
            // Offsets of later runs come from the wire: saturating, never wrapping.
            let start = pos.saturating_add(HEADER_LEN as u64);
            let end = start.saturating_add(u64::from(h.length));
            let body = here.get(HEADER_LEN..).unwrap_or_default();
            // The run holding the header reaches the end of the message.
            let run_to_end = pos.saturating_add(here.len() as u64) == total;
            let length = usize::try_from(h.length).unwrap_or(usize::MAX);
            let payload = &body[..length.min(body.len())];
            if payload.len() == length {
                self.frame(&h, payload, true, at, out);
            } else if end > total && run_to_end {
                // The frame goes on in this side's next message.
                let remaining = end - total;
                if h.is_header_block() && u64::from(h.length) <= MAX_BLOCK as u64 {
                    self.sides[at.side].carry = Carry::Frame {
                        header: h,
                        seq: at.frame_seq,
                        payload: payload.to_vec(),
                        remaining,
                    };
                } else {
                    self.frame(&h, payload, false, at, out);
                    self.sides[at.side].carry = Carry::Skip(remaining);
                }
                return;
            } else {
                // The capture cut this frame: its rest is passed over.
                self.frame(&h, payload, false, at, out);
                if end > total {
                    self.sides[at.side].carry = Carry::Skip(end - total);
                    return;
                }
            }
            pos = end;
        }
    }

    /// Marks a direction's HPACK table out of step, counted once per loss of step.
    fn lose(&mut self, side: usize, reason: &'static str, out: &mut dyn Output) {
        let s = &mut self.sides[side];
        if s.hpack.is_in_step() {
            out.desync(reason);
        }
        s.hpack.lose_step();
        s.block = None;
    }

    /// One frame; `whole` when its whole payload was captured.
    fn frame(
        &mut self,
        h: &FrameHeader,
        payload: &[u8],
        whole: bool,
        at: &mut At<'_>,
        out: &mut dyn Output,
    ) {
        match h.kind {
            Kind::Headers | Kind::PushPromise => {
                if self.sides[at.side].block.take().is_some() {
                    // A header block interrupted: its fields are lost, the table with them.
                    out.decode_error("http2_header_block_interrupted");
                    self.lose(at.side, "header_block_lost", out);
                }
                let fragment = match frame::header_fragment(h, payload) {
                    Ok(f) => f,
                    Err(_) => {
                        out.decode_error("http2_bad_padding");
                        self.lose(at.side, "header_block_lost", out);
                        return;
                    }
                };
                let block = PendingBlock {
                    stream: h.stream,
                    seq: at.frame_seq,
                    kind: h.kind,
                    end_stream: h.has(END_STREAM),
                    bytes: Vec::new(),
                };
                if !whole || h.has(END_HEADERS) {
                    self.header_block(block, fragment, whole, at, out);
                } else {
                    let mut block = block;
                    block.bytes.extend_from_slice(fragment);
                    self.sides[at.side].block = Some(block);
                }
            }
            Kind::Continuation => {
                let Some(mut block) = self.sides[at.side].block.take() else {
                    if self.sides[at.side].hpack.is_in_step() {
                        out.decode_error("http2_continuation_without_headers");
                    }
                    self.lose(at.side, "header_block_lost", out);
                    return;
                };
                if block.stream != h.stream
                    || block.bytes.len().saturating_add(payload.len()) > MAX_BLOCK
                {
                    out.decode_error("http2_bad_continuation");
                    self.lose(at.side, "header_block_lost", out);
                    return;
                }
                if !whole || h.has(END_HEADERS) {
                    let bytes = std::mem::take(&mut block.bytes);
                    let mut all = bytes;
                    all.extend_from_slice(payload);
                    self.header_block(block, &all, whole, at, out);
                } else {
                    block.bytes.extend_from_slice(payload);
                    self.sides[at.side].block = Some(block);
                }
            }
            Kind::Data => {
                if h.has(END_STREAM) {
                    self.end_stream(h.stream, at, out);
                }
            }
            Kind::RstStream => {
                let code = payload
                    .get(..4)
                    .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                if let Some(mut s) = self.streams.remove(&h.stream) {
                    s.reset = Some(code.unwrap_or(u32::MAX));
                    let incomplete = s.resp.is_none();
                    out.exchange(exchange(h.stream, s, incomplete));
                }
            }
            Kind::Other => {}
        }
    }

    /// A header block, complete or (`whole` false) cut by the capture.
    fn header_block(
        &mut self,
        block: PendingBlock,
        bytes: &[u8],
        whole: bool,
        at: &mut At<'_>,
        out: &mut dyn Output,
    ) {
        let id = block.stream;
        let client = at.side == Direction::ClientToServer.index();
        let is_headers = block.kind == Kind::Headers;
        if client && is_headers && id % 2 == 1 && !self.streams.contains_key(&id) {
            if self.streams.len() >= MAX_STREAMS {
                out.unpaired("http2_too_many_streams");
            } else {
                let request = MessageStats {
                    tcp_seq: block.seq,
                    ..*at.stats
                };
                self.streams.insert(id, Stream::new(request, at.opened));
                at.opened = at.opened.saturating_add(1);
            }
        }
        let target = match self.streams.get(&id) {
            _ if !is_headers => Target::Ignore,
            Some(s) if client && !s.request_seen => Target::Request,
            // Request trailers, or a stream not tracked.
            _ if client => Target::Ignore,
            Some(_) => Target::Response,
            None => {
                if id != 0 {
                    out.unpaired("response_without_request");
                }
                Target::Ignore
            }
        };
        let Http2Flow { sides, streams, .. } = self;
        let hpack = &mut sides[at.side].hpack;
        let was_in_step = hpack.is_in_step();
        let stream = streams.get_mut(&id);
        let (result, incomplete) = match (target, stream) {
            (Target::Request, Some(s)) => {
                s.request_seen = true;
                let r = hpack.decode(bytes, &mut |n, v| s.req.take(n, v));
                (r, Some(&mut s.req.incomplete))
            }
            (Target::Response, Some(s)) => {
                if s.response.is_none() {
                    s.response = Some(MessageStats {
                        tcp_seq: block.seq,
                        ..*at.stats
                    });
                }
                let resp = s.resp.get_or_insert_with(ResponseHeaders::default);
                let r = hpack.decode(bytes, &mut |n, v| resp.take(n, v));
                (r, Some(&mut resp.incomplete))
            }
            _ => (hpack.decode(bytes, &mut |_, _| {}), None),
        };
        let mut unknown = !whole;
        // Why the table is out of step after this block, if it is.
        let mut lost = (!whole).then_some("header_block_cut");
        match result {
            Ok(b) => unknown |= b.unknown > 0,
            // The capture cut the block: expected.
            Err(hpack::HpackError::Truncated) if !whole => {}
            Err(e) => {
                unknown = true;
                out.decode_error(e.as_label());
                lost = Some("hpack_error");
            }
        }
        if let Some(flag) = incomplete {
            *flag |= unknown;
        }
        if let Some(reason) = lost {
            // The decoder already dropped its table on an error: count the loss of step here,
            // once, from what it was before the block.
            if was_in_step {
                out.desync(reason);
            }
            let side = &mut self.sides[at.side];
            side.hpack.lose_step();
            side.block = None;
        }
        if target == Target::Request {
            if let Some(e) = self.streams.get(&id).and_then(|s| s.req.trace.pick().1) {
                out.decode_error(e.as_label());
            }
        }
        if block.end_stream {
            self.end_stream(id, at, out);
        }
    }

    fn end_stream(&mut self, id: u32, at: &At<'_>, out: &mut dyn Output) {
        if at.side != Direction::ServerToClient.index() {
            return;
        }
        if let Some(mut s) = self.streams.remove(&id) {
            if let Some(r) = s.response.as_mut() {
                r.end = r.end.max(at.stats.end);
            } else {
                s.response = Some(*at.stats);
            }
            out.exchange(exchange(id, s, false));
        }
    }
}

/// The exchange of stream `id`.
fn exchange(id: u32, s: Stream, incomplete: bool) -> Exchange {
    let req = s.req;
    let resp = s.resp;
    let mut attributes = HashMap::new();
    attributes.insert("clovisor.http2.stream_id".to_owned(), id.to_string());
    if req.incomplete || !s.request_seen {
        attributes.insert(
            "clovisor.http2.request_headers_incomplete".to_owned(),
            "true".to_owned(),
        );
    }
    if resp.as_ref().is_some_and(|r| r.incomplete) {
        attributes.insert(
            "clovisor.http2.response_headers_incomplete".to_owned(),
            "true".to_owned(),
        );
    }
    if let Some(code) = s.reset {
        attributes.insert("clovisor.http2.reset_code".to_owned(), code.to_string());
    }
    if let Some(scheme) = &req.scheme {
        attributes.insert("clovisor.http.scheme".to_owned(), scheme.clone());
    }
    let trace = s.trace.or_else(|| req.trace.pick().0);
    let is_grpc = req.is_grpc() || resp.as_ref().is_some_and(ResponseHeaders::is_grpc);
    let path = req.path.unwrap_or_default();
    let grpc = is_grpc.then(|| grpc::fields(&path, resp.as_ref()));
    let http = Http {
        method: req.method.unwrap_or_default(),
        target: path,
        host: req.authority.unwrap_or_default(),
        user_agent: req.user_agent.unwrap_or_default(),
        status_code: resp
            .as_ref()
            .and_then(|r| r.status)
            .map(u32::from)
            .unwrap_or_default(),
        version: "2".to_owned(),
        request_id: req.request_id.unwrap_or_default(),
        envoy_decorator: req.envoy_decorator.unwrap_or_default(),
        reason: String::new(),
        request_content_length: req.content_length.unwrap_or_default(),
        response_content_length: resp
            .as_ref()
            .and_then(|r| r.content_length)
            .unwrap_or_default(),
        response_chunked: false,
    };
    let (protocol, fields) = match grpc {
        Some(grpc) => (Protocol::Grpc, Fields::Grpc { http, grpc }),
        None => (Protocol::Http2, Fields::Http(http)),
    };
    Exchange {
        protocol,
        request: s.request,
        response: s.response,
        position: s.position,
        incomplete,
        fields,
        trace,
        attributes,
    }
}
