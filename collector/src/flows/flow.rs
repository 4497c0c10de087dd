//! One flow: its identity (set once, when it is created), its messages put in order, the
//! decoder that claimed it, and its byte counts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use clovisor_proto::capture::v1::{self as capture, FlowKey, ObservationPoint, ProtocolHint};

use super::counters;
use super::endpoints::{Endpoints, Ends};
use super::session::{self, Collected, CounterView, FlowNames, FlowParts, ProbeNames};
use crate::decode::{
    Captured, Decoders, Detected, Direction, Exchange, FlowDecoder, FlowInfo, Message,
    MessageStats, Output, Step,
};
use crate::metrics::CollectorMetrics;

/// Which decoder, if any, takes the flow's messages.
#[derive(Debug)]
enum Decoding {
    /// No decoder has claimed the flow yet: each message is offered to all.
    Undecided,
    /// Claimed by the decoder `name`.
    By {
        name: &'static str,
        flow: Box<dyn FlowDecoder>,
    },
    /// No decoder claimed it, or its decoder gave up: bytes are counted, nothing decoded.
    Opaque,
}

/// One connection instance at one observation point.
#[derive(Debug)]
pub(super) struct Flow {
    /// Position in the table's activity order.
    pub tick: u64,
    pub last_seen: Instant,
    /// Index of the next message to take in order.
    next_index: u32,
    /// Messages that arrived ahead of `next_index`, with when they arrived.
    pending: BTreeMap<u32, (capture::Message, Instant)>,
    /// A message the probe flushed early, taken in order but held for its final counters
    /// because its decoder asked to ([`FlowDecoder::awaits_final`]), with when it came.
    held: Option<(capture::Message, Instant)>,
    decoding: Decoding,
    key: FlowKey,
    point: ObservationPoint,
    /// The point whose counters its messages carry besides their own (`FlowStart.wire_point`:
    /// the pod's veth of a socket point's flow), which its sessions observe too.
    wire_point: Option<Box<ObservationPoint>>,
    /// What its sessions are named by.
    names: FlowNames,
    /// Whether `point` came with the flow; until it has, a later message may supply it.
    point_known: bool,
    hint: ProtocolHint,
    /// A counters-only view (`FlowStart.counters_only`): its exchanges carry no fields.
    counters_only: bool,
    /// Payload bytes taken in, per direction, and how many of them the metrics have.
    bytes: [u64; 2],
    published: [u64; 2],
    /// The same of the bytes `wire_point` counted (`Message.wire`).
    wire_bytes: [u64; 2],
    wire_published: [u64; 2],
    /// The last message taken, when it was flushed early and its decoder continues messages
    /// ([`FlowDecoder::continues_messages`]): its final version's growth is handed on.
    continued: Option<Continued>,
}

/// An early-flushed message its decoder took as it was: what the decoder saw of it.
#[derive(Debug, Clone, Copy)]
struct Continued {
    index: u32,
    direction: i32,
    /// Where the decoder's walk of the message ended (its bytes, or its last captured byte's
    /// end when that lies further): the growth starts there.
    walked: u64,
    /// The counters of the version taken.
    bytes: u64,
    wire_bytes: u64,
    packets: u32,
    retransmits: u32,
    end_unix_nanos: u64,
}

impl Continued {
    fn of(m: &capture::Message) -> Self {
        let captured_end = m
            .segments
            .iter()
            .map(|s| s.offset.saturating_add(s.payload.len() as u64))
            .fold(m.payload.len() as u64, u64::max);
        Self {
            index: m.index,
            direction: m.direction,
            walked: m.bytes.max(captured_end),
            bytes: m.bytes,
            wire_bytes: wire_bytes(m),
            packets: m.packets,
            retransmits: m.retransmits,
            end_unix_nanos: m.end_unix_nanos,
        }
    }

    /// The part of `m` (a later version of the message taken) past what was walked, as a
    /// message of its own: its bytes and counters the growth, its captured bytes those past
    /// the walk's end at their offsets from there. `None` when it did not grow.
    fn growth(&self, m: &capture::Message) -> Option<capture::Message> {
        let bytes = m.bytes.checked_sub(self.walked).filter(|&n| n > 0)?;
        let base = self.walked;
        let pieces = std::iter::once((0u64, &m.payload))
            .chain(m.segments.iter().map(|s| (s.offset, &s.payload)));
        let segments = pieces
            .filter_map(|(offset, payload)| {
                let end = offset.saturating_add(payload.len() as u64);
                if end <= base || payload.is_empty() {
                    return None;
                }
                let from = base.max(offset);
                let skip = usize::try_from(from - offset).ok()?;
                Some(capture::Segment {
                    offset: from - base,
                    payload: payload.slice(skip..),
                })
            })
            .collect();
        Some(capture::Message {
            index: m.index,
            direction: m.direction,
            to_pod: m.to_pod,
            // The growth came after the version taken.
            start_unix_nanos: self.end_unix_nanos,
            end_unix_nanos: m.end_unix_nanos,
            // Sequence numbers wrap: the offset is taken modulo 2^32 on purpose.
            tcp_seq: m.tcp_seq.wrapping_add(base as u32),
            bytes,
            packets: m.packets.saturating_sub(self.packets),
            retransmits: m.retransmits.saturating_sub(self.retransmits),
            partial: m.partial,
            segments,
            ..capture::Message::default()
        })
    }
}

/// A flow's identity as its probe announced it: its key, where it is observed, what its port is
/// configured for.
#[derive(Debug, Clone)]
pub(super) struct Identity {
    pub key: FlowKey,
    pub point: Option<ObservationPoint>,
    pub hint: ProtocolHint,
    /// A pod veth's view of a connection its pod's socket point captures: timings and counters
    /// only, decoded by [`super::counters::CountersOnly`].
    pub counters_only: bool,
    /// `FlowStart.wire_point`: the veth whose counters the messages carry (`Message.wire`).
    pub wire_point: Option<Box<ObservationPoint>>,
}

/// What a flow's processing needs from the table: the probe, its endpoints, where sessions go.
pub(super) struct Ctx<'a> {
    pub probe: &'a Arc<ProbeNames>,
    pub flow_id: u64,
    pub endpoints: &'a Endpoints,
    pub decoders: &'a Decoders,
    pub metrics: &'a CollectorMetrics,
    /// Where the counts made for every message and exchange go ([`super::tally`]).
    pub tally: &'a super::tally::Tally,
    pub out: &'a mut Vec<Collected>,
    /// Where counters-only views go when kept apart from sessions
    /// ([`super::FlowTable::keep_counter_views_apart`]).
    pub counter_views: Option<&'a mut Vec<CounterView>>,
}

impl Flow {
    /// A new flow `flow_id` of `probe_id` at `tick`, known by its key and point from now on.
    pub fn new((probe_id, flow_id): (&str, u64), tick: u64, now: Instant, id: Identity) -> Self {
        let Identity {
            key,
            point,
            hint,
            counters_only,
            wire_point,
        } = id;
        // A counters-only view has nothing to detect a protocol from: its decoder is set.
        let decoding = if counters_only {
            Decoding::By {
                name: counters::NAME,
                flow: Box::new(counters::CountersOnly::default()),
            }
        } else {
            Decoding::Undecided
        };
        Self {
            tick,
            last_seen: now,
            next_index: 0,
            pending: BTreeMap::new(),
            held: None,
            decoding,
            names: FlowNames::new(probe_id, flow_id, &key),
            key,
            point_known: point.is_some(),
            point: point.unwrap_or_default(),
            wire_point,
            hint,
            counters_only,
            bytes: [0; 2],
            published: [0; 2],
            wire_bytes: [0; 2],
            wire_published: [0; 2],
            continued: None,
        }
    }

    pub fn key(&self) -> &FlowKey {
        &self.key
    }

    pub fn point(&self) -> &ObservationPoint {
        &self.point
    }

    /// What identifies the flow, for when its state goes but its probe may still have it open.
    pub fn into_identity(self) -> Identity {
        Identity {
            key: self.key,
            point: self.point_known.then_some(self.point),
            hint: self.hint,
            counters_only: self.counters_only,
            wire_point: self.wire_point,
        }
    }

    /// Takes the point from a message when the flow was created without one.
    pub fn learn_point(&mut self, m: &mut capture::Message) {
        if !self.point_known {
            if let Some(p) = m.point.take() {
                self.point = p;
                self.point_known = true;
            }
        }
    }

    /// Whether `index` is the message held for its final counters.
    pub fn holds(&self, index: u32) -> bool {
        self.held.as_ref().is_some_and(|(m, _)| m.index == index)
    }

    pub fn next_index(&self) -> u32 {
        self.next_index
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// When the oldest message waiting for a gap to close arrived.
    pub fn oldest_pending(&self) -> Option<Instant> {
        self.pending.first_key_value().map(|(_, (_, at))| *at)
    }

    /// When the held message came, if one is held.
    pub fn held_since(&self) -> Option<Instant> {
        self.held.as_ref().map(|(_, at)| *at)
    }

    /// Buffers a message that arrived ahead of its turn; a second copy of a message already
    /// waiting replaces it, and the first is counted lost as a `duplicate`.
    pub fn buffer(&mut self, m: capture::Message, now: Instant, metrics: &CollectorMetrics) {
        if self.pending.insert(m.index, (m, now)).is_some() {
            metrics.flow_messages_lost("duplicate", 1);
        } else {
            metrics.flow_buffered(1);
        }
    }

    /// Messages waiting in the flow: out of order, or held for their final counters.
    pub fn waiting(&self) -> u64 {
        (self.pending.len() as u64).saturating_add(u64::from(self.held.is_some()))
    }

    /// The flow's state is let go without being closed: what waits in it is counted lost for
    /// `reason`.
    pub fn discard(&mut self, metrics: &CollectorMetrics, reason: &'static str) {
        let n = self.waiting();
        self.pending.clear();
        self.held = None;
        metrics.flow_messages_lost(reason, n);
        metrics.flow_buffered(-i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The flow's state is let go without being closed and without emitting anything: what
    /// waits in it is counted lost for `reason` (as [`Flow::discard`]), and so is every
    /// exchange its decoder still holds open — a request awaiting its response, handed on by
    /// the flow table and now never to make a session — in the `decoder` stage, one per
    /// exchange.
    pub fn abandon(&mut self, metrics: &CollectorMetrics, reason: &'static str) {
        self.discard(metrics, reason);
        if let Decoding::By { name, ref mut flow } = self.decoding {
            flow.on_close(&mut Abandoned {
                metrics,
                reason,
                protocol: name,
            });
        }
        self.decoding = Decoding::Opaque;
    }

    /// The final version of the held message replaces it: the held copy is handed on merged
    /// into it.
    pub fn update_held(&mut self, m: &mut capture::Message, now: Instant, ctx: &mut Ctx<'_>) {
        if let Some((old, _)) = self.held.take() {
            ctx.metrics.flow_buffered(-1);
            ctx.tally.flow_message_out();
            if let Some(dir) = Direction::from_wire(m.direction) {
                let grown = m.bytes.saturating_sub(old.bytes);
                self.bytes[dir.index()] = self.bytes[dir.index()].saturating_add(grown);
                let grown = wire_bytes(m).saturating_sub(wire_bytes(&old));
                self.wire_bytes[dir.index()] = self.wire_bytes[dir.index()].saturating_add(grown);
            }
        }
        self.decode(m, now, ctx, true);
    }

    /// Takes message `m`, which is next in order, then whatever buffered messages follow it.
    /// `m` is left to the caller, emptied if the flow kept it.
    pub fn take_next(&mut self, m: &mut capture::Message, now: Instant, ctx: &mut Ctx<'_>) {
        self.take(m, now, ctx);
        self.next_index = self.next_index.saturating_add(1);
        self.drain_pending(now, ctx);
    }

    /// Gives up on the next missing index: continues at the first buffered message.
    pub fn skip_gap(&mut self, now: Instant, ctx: &mut Ctx<'_>) {
        if let Some((&idx, _)) = self.pending.first_key_value() {
            if idx > self.next_index {
                ctx.metrics
                    .messages_skipped(u64::from(idx.saturating_sub(self.next_index)));
                self.next_index = idx;
            }
        }
        self.drain_pending(now, ctx);
    }

    fn drain_pending(&mut self, now: Instant, ctx: &mut Ctx<'_>) {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() != self.next_index {
                break;
            }
            let (mut m, _) = entry.remove();
            ctx.metrics.flow_buffered(-1);
            self.take(&mut m, now, ctx);
            self.next_index = self.next_index.saturating_add(1);
        }
    }

    /// One message in order: a held message before it is over, so it goes first.
    fn take(&mut self, m: &mut capture::Message, now: Instant, ctx: &mut Ctx<'_>) {
        self.release_held(ctx);
        if let Some(dir) = Direction::from_wire(m.direction) {
            self.bytes[dir.index()] = self.bytes[dir.index()].saturating_add(m.bytes);
            self.wire_bytes[dir.index()] =
                self.wire_bytes[dir.index()].saturating_add(wire_bytes(m));
        }
        let taken = m.partial.then(|| Continued::of(m));
        self.decode(m, now, ctx, true);
        self.continued = taken.filter(|_| self.continues_messages());
    }

    /// Whether `index` is the early-flushed message last taken, whose growth its decoder takes
    /// as a message of its own.
    pub fn continues(&self, index: u32) -> bool {
        self.continued.is_some_and(|c| c.index == index)
    }

    /// A later version of the early-flushed message last taken (its final counters, and at a
    /// socket point capturing call by call the bytes of the calls made since): what it grew by
    /// is handed to the decoder as the message's continuation, which its walk of the direction
    /// goes on with. A version that did not grow is merged into the one taken.
    pub fn take_growth(&mut self, m: &capture::Message, now: Instant, ctx: &mut Ctx<'_>) {
        let Some(taken) = self.continued.take() else {
            return;
        };
        if m.direction != taken.direction {
            // Not a version of the message taken: its index names another.
            ctx.metrics.flow_messages_lost("duplicate", 1);
            return;
        }
        if let Some(dir) = Direction::from_wire(m.direction) {
            let grown = m.bytes.saturating_sub(taken.bytes);
            self.bytes[dir.index()] = self.bytes[dir.index()].saturating_add(grown);
            let grown = wire_bytes(m).saturating_sub(taken.wire_bytes);
            self.wire_bytes[dir.index()] = self.wire_bytes[dir.index()].saturating_add(grown);
        }
        let Some(mut rest) = taken.growth(m) else {
            ctx.tally.flow_message_out();
            return;
        };
        self.decode(&mut rest, now, ctx, false);
        if m.partial {
            // Flushed early again: a later version may still grow.
            self.continued = Some(Continued::of(m)).filter(|_| self.continues_messages());
        }
    }

    /// Whether the flow's decoder takes a message's growth as a message of its own.
    fn continues_messages(&self) -> bool {
        matches!(&self.decoding, Decoding::By { flow, .. } if flow.continues_messages())
    }

    /// Hands the held message to its decoder as it is: its final version did not come in
    /// time, or the flow moved on.
    pub fn release_held(&mut self, ctx: &mut Ctx<'_>) {
        if let Some((mut m, at)) = self.held.take() {
            ctx.metrics.flow_buffered(-1);
            self.decode(&mut m, at, ctx, false);
        }
    }

    /// The flow is over: everything buffered is taken (gaps skipped), the held message
    /// released, and what its decoder still holds open is reported incomplete.
    pub fn close(&mut self, now: Instant, ctx: &mut Ctx<'_>) {
        while !self.pending.is_empty() {
            self.skip_gap(now, ctx);
        }
        self.release_held(ctx);
        let Flow {
            decoding,
            key,
            point,
            wire_point,
            names,
            ..
        } = self;
        if let Decoding::By { name, flow } = decoding {
            let points = (&*point, wire_point.as_deref());
            flow.on_close(&mut Sink::new(ctx, key, points, names, name));
        }
    }

    /// Offers `m` to the flow's decoder, finding one first if none has claimed the flow. Every
    /// message ends here counted: handed on (`flow_message_out`), lost with a reason, or held
    /// (waiting, until released or replaced). A message held is taken out of `m`; the decoders
    /// only borrow it, so a message is not moved on its way through (it is a few hundred bytes).
    fn decode(
        &mut self,
        m: &mut capture::Message,
        now: Instant,
        ctx: &mut Ctx<'_>,
        may_hold: bool,
    ) {
        let Some(direction) = Direction::from_wire(m.direction) else {
            ctx.metrics.flow_messages_lost("no_direction", 1);
            return;
        };
        // Captured call by call: the segments stitched into runs (only then a copy).
        let captured = (!m.segments.is_empty()).then(|| Captured::stitch(&m.payload, &m.segments));
        let later = captured.as_ref().map(Captured::later).unwrap_or_default();
        let message = Message {
            direction,
            stats: MessageStats::of(m),
            payload: captured.as_ref().map_or(&m.payload[..], Captured::first),
            partial: m.partial,
            later: &later,
        };
        if matches!(self.decoding, Decoding::Undecided) {
            let info = FlowInfo {
                probe_id: &ctx.probe.id,
                flow_id: ctx.flow_id,
                key: &self.key,
                hint: self.hint,
            };
            match ctx.decoders.detect(&info, &message) {
                Detected::Claimed(d) => {
                    self.decoding = Decoding::By {
                        name: d.name(),
                        flow: d.new_flow(&info),
                    };
                }
                Detected::HintMismatch(reason) => {
                    ctx.metrics.decode_error(reason);
                    ctx.metrics.flow_messages_lost("hint_mismatch", 1);
                    return;
                }
                // A client's bytes nobody recognises: the flow is of a protocol not decoded.
                Detected::Unclaimed if direction == Direction::ClientToServer => {
                    ctx.metrics.flows_unsupported.inc();
                    ctx.tally.flow_message_out();
                    self.decoding = Decoding::Opaque;
                    return;
                }
                // A server's bytes first: a flow picked up mid-way; its next request decides.
                Detected::Unclaimed => {
                    ctx.metrics.message_dropped("response_without_request");
                    ctx.metrics
                        .flow_messages_lost("response_without_request", 1);
                    return;
                }
            }
        }
        let Flow {
            decoding,
            key,
            point,
            wire_point,
            names,
            held,
            ..
        } = self;
        let Decoding::By { name, flow } = decoding else {
            // Opaque: its bytes are counted, nothing is decoded.
            ctx.tally.flow_message_out();
            return;
        };
        if may_hold && message.partial && flow.awaits_final(&message) {
            *held = Some((std::mem::take(m), now));
            ctx.metrics.flow_buffered(1);
            return;
        }
        ctx.tally.flow_message_out();
        let mut sink = Sink::new(ctx, key, (point, wire_point.as_deref()), names, name);
        let step = flow.on_message(&message, &mut sink);
        let step = match step {
            Step::Handover => match flow.successor() {
                // What is open moved to the successor: nothing to close.
                Some((name, next)) => {
                    *decoding = Decoding::By { name, flow: next };
                    return;
                }
                None => Step::Redetect,
            },
            other => other,
        };
        match step {
            Step::Continue | Step::Handover => {}
            Step::Redetect | Step::Stop => {
                flow.on_close(&mut sink);
                *decoding = if step == Step::Redetect {
                    Decoding::Undecided
                } else {
                    Decoding::Opaque
                };
            }
        }
    }

    /// Bytes taken in since the last call, per direction.
    pub fn unpublished_bytes(&mut self) -> [u64; 2] {
        let new = [
            self.bytes[0].saturating_sub(self.published[0]),
            self.bytes[1].saturating_sub(self.published[1]),
        ];
        self.published = self.bytes;
        new
    }

    /// The point whose counters its messages carry (`FlowStart.wire_point`), with the bytes it
    /// counted since the last call, per direction.
    pub fn unpublished_wire_bytes(&mut self) -> Option<(&ObservationPoint, [u64; 2])> {
        let new = [
            self.wire_bytes[0].saturating_sub(self.wire_published[0]),
            self.wire_bytes[1].saturating_sub(self.wire_published[1]),
        ];
        self.wire_published = self.wire_bytes;
        self.wire_point.as_deref().map(|p| (p, new))
    }
}

/// The bytes a message's wire point counted of it (`Message.wire`), 0 without.
fn wire_bytes(m: &capture::Message) -> u64 {
    m.wire.as_ref().map_or(0, |w| w.bytes)
}

/// The [`Output`] of a flow let go without a session ([`Flow::abandon`]): each exchange the
/// decoder still reports is counted lost for `reason`; the rest goes into metrics as usual.
struct Abandoned<'m> {
    metrics: &'m CollectorMetrics,
    reason: &'static str,
    protocol: &'static str,
}

impl Output for Abandoned<'_> {
    fn exchange(&mut self, _exchange: Exchange) {
        self.metrics.unpaired(self.reason);
    }

    fn decode_error(&mut self, reason: &'static str) {
        self.metrics.decode_error(reason);
    }

    fn unpaired(&mut self, reason: &'static str) {
        self.metrics.unpaired(reason);
    }

    fn desync(&mut self, reason: &'static str) {
        self.metrics.desync(self.protocol, reason);
    }
}

/// A flow decoder's [`Output`]: sessions into the context's output, the rest into metrics.
struct Sink<'c, 'a> {
    ctx: &'c mut Ctx<'a>,
    key: &'c FlowKey,
    point: &'c ObservationPoint,
    wire_point: Option<&'c ObservationPoint>,
    names: &'c FlowNames,
    protocol: &'static str,
}

impl<'c, 'a> Sink<'c, 'a> {
    /// `points`: the flow's point, and the one its messages' `wire` counters are of.
    fn new(
        ctx: &'c mut Ctx<'a>,
        key: &'c FlowKey,
        (point, wire_point): (&'c ObservationPoint, Option<&'c ObservationPoint>),
        names: &'c FlowNames,
        protocol: &'static str,
    ) -> Self {
        Self {
            ctx,
            key,
            point,
            wire_point,
            names,
            protocol,
        }
    }
}

impl Output for Sink<'_, '_> {
    fn exchange(&mut self, mut exchange: Exchange) {
        let parts = FlowParts {
            probe: self.ctx.probe,
            names: self.names,
            key: self.key,
            point: self.point,
            wire_point: self.wire_point,
            ends: Ends::of(self.ctx.endpoints, self.key),
            counters_only: self.protocol == counters::NAME,
        };
        self.ctx.tally.session_emitted(exchange.incomplete);
        if self.wire_point.is_some() && exchange.request.wire.is_some() {
            self.ctx.metrics.veth_views_carried.inc();
        }
        match &mut self.ctx.counter_views {
            Some(views) if parts.counters_only => {
                views.push(session::counter_view(&parts, &exchange))
            }
            _ => session::build_into(&parts, &mut exchange, self.ctx.out),
        }
    }

    fn decode_error(&mut self, reason: &'static str) {
        self.ctx.metrics.decode_error(reason);
    }

    fn unpaired(&mut self, reason: &'static str) {
        self.ctx.metrics.unpaired(reason);
    }

    fn desync(&mut self, reason: &'static str) {
        self.ctx.metrics.desync(self.protocol, reason);
    }
}
