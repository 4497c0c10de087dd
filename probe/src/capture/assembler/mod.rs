//! Turns the kernel's MSG_START / FLOW_END events into complete `Message` records.
//!
//! The kernel sends one event when a message starts; its final counters arrive with the
//! next event of the same flow (the next MSG_START carries them as `prev`, FLOW_END as
//! `last`). Until then the message is *pending* here. When nothing arrives for a pending
//! message for `idle_flush` (typically the last response on a keep-alive connection), its
//! current counters are read from the kernel's connection map and the message is emitted with
//! `partial = true`; should the counters still grow afterwards, the final record with the
//! same `(flow_id, index)` and `partial = false` follows and supersedes it.
//!
//! A flow's identity (connection, observation point, protocol) is announced once, in a
//! `FlowStart` record before its first message or end; messages and ends carry only the flow
//! id. The records go to a [`RecordSink`]: a `Vec<Record>` gets them built ([`records`]); the
//! event loop's sink, a [`ChunkBuilder`], encodes each `Message` from its fields as it comes.
//!
//! A socket connection captured call by call (HTTP/2 and gRPC, PostgreSQL, MySQL) sends its
//! messages' bytes as SEGMENT events after their MSG_START: they are kept with the pending
//! message (at most [`MAX_SEGMENT_BYTES`] a message, the rest counted) and travel in its record.
//!
//! UDP datagrams come whole, one event each, with no kernel state: [`udp`] numbers their flows
//! and positions; a UDP flow ends (`FlowEnd`, idle) after [`udp::UDP_IDLE`] without a datagram.

pub mod records;
pub mod udp;

use std::collections::BTreeMap;

use bytes::Bytes;
use rustc_hash::{FxHashMap, FxHashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use clovisor_proto::capture::v1::{
    FlowEndReason, ObservationPoint, ProtocolHint, Record, Transport,
};
use clovisor_proto::common::v1::PointKind;

use super::raw::{
    ConnectionKey, ConnectionState, Datagram, Event, FlowEnd, MsgCounters, MsgStart, Segment,
    SocketOwner, Wire,
};
use crate::clock::BootClock;
use clovisor_proto::capture::v1::Segment as SegmentRecord;
use clovisor_proto::hops::ChunkBuilder;
use records::FlowTraits;

/// How long a flushed message whose flow went quiet is kept before checking that the
/// flow still exists in the kernel.
const STALE_FACTOR: u32 = 50;

/// Captured bytes kept of one message captured call by call: a bound on the probe's memory per
/// pending message (a long server-streaming response is one message). Past it, the oldest
/// segments but the first make room, counted (`segments_over_bound`); the collector sees a gap.
pub const MAX_SEGMENT_BYTES: usize = 64 * 1024;

/// Where the assembler's records go. A `Vec<Record>` collects them as records (tests, tools); the
/// event loop's sink encodes them into chunks as they come, `Message`s straight from the pending
/// message (no record built, the payload copied once, into the chunk).
pub trait RecordSink {
    /// A record (`FlowStart`, `FlowEnd`).
    fn record(&mut self, record: Record);

    /// The `Message` record of `start` with the counters `(fin, wire)` (its own final ones and its
    /// pod veth's), as [`records::message`] makes it of `payload` and `segments` (`start`'s).
    fn message(
        &mut self,
        start: &MsgStart,
        payload: &Bytes,
        segments: &[SegmentRecord],
        counters: (&MsgCounters, Option<&MsgCounters>),
        partial: bool,
        clock: &BootClock,
    );
}

impl RecordSink for Vec<Record> {
    fn record(&mut self, record: Record) {
        self.push(record);
    }

    fn message(
        &mut self,
        start: &MsgStart,
        payload: &Bytes,
        segments: &[SegmentRecord],
        counters: (&MsgCounters, Option<&MsgCounters>),
        partial: bool,
        clock: &BootClock,
    ) {
        self.push(records::message(
            start,
            payload.clone(),
            segments.to_vec(),
            counters,
            partial,
            clock,
        ));
    }
}

/// Encodes the records as they come, `Message`s by hand from the pending message's fields.
impl RecordSink for ChunkBuilder {
    fn record(&mut self, record: Record) {
        self.push(&record);
    }

    fn message(
        &mut self,
        start: &MsgStart,
        payload: &Bytes,
        segments: &[SegmentRecord],
        counters: (&MsgCounters, Option<&MsgCounters>),
        partial: bool,
        clock: &BootClock,
    ) {
        self.push_message(&records::message_fields(
            start, payload, segments, counters, partial, clock,
        ));
    }
}

/// Reads a connection's current state from the kernel (the LRU map), or a fake in tests.
pub trait ConnectionSource {
    /// The connection `start` belongs to, `None` if the kernel has none (ended or evicted).
    fn lookup(&self, start: &MsgStart) -> Option<ConnectionState>;
}

/// An interface the capture is attached to: its name and which observation point it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedInterface {
    /// Interface name.
    pub name: String,
    /// `Pod` for a pod's host veth, `Node` for a node interface.
    pub kind: PointKind,
}

/// Attached interfaces by ifindex, shared with the attach side.
pub type InterfaceNames = Arc<RwLock<BTreeMap<u32, AttachedInterface>>>;

/// Counters of the assembler, cumulative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AssemblerStats {
    /// Message records emitted (final and partial).
    pub messages: u64,
    /// Messages emitted by an idle flush (`partial = true`).
    pub partial_flushes: u64,
    /// Final records sent after a partial one because the counters grew.
    pub finals_after_flush: u64,
    /// FlowEnd records emitted.
    pub flow_ends: u64,
    /// Events about a flow whose MSG_START was never seen (lost in the ring buffer or
    /// sent before the loop started).
    pub orphans: u64,
    /// Messages known to be lost: the next event's index skipped over them.
    pub lost_messages: u64,
    /// Pending messages pushed out because `max_pending` was reached.
    pub pending_evicted: u64,
    /// Flushed messages dropped because their flow vanished from the kernel without a
    /// FLOW_END (LRU eviction or a lost event).
    pub pending_expired: u64,
    /// FlowStart records emitted.
    pub flow_starts: u64,
    /// UDP datagrams taken in (each a message record).
    pub datagrams: u64,
    /// UDP flows ended early to make room for a new one (their next datagram starts a new flow).
    pub udp_flows_evicted: u64,
    /// Segments kept with their message.
    pub segments: u64,
    /// Segments whose message was not pending (its MSG_START lost, or already emitted).
    pub segments_orphaned: u64,
    /// Segments dropped to keep a message within [`MAX_SEGMENT_BYTES`].
    pub segments_over_bound: u64,
}

impl AssemblerStats {
    /// Adds another assembler's counters to these.
    pub fn add(&mut self, o: &Self) {
        self.messages += o.messages;
        self.partial_flushes += o.partial_flushes;
        self.finals_after_flush += o.finals_after_flush;
        self.flow_ends += o.flow_ends;
        self.orphans += o.orphans;
        self.lost_messages += o.lost_messages;
        self.pending_evicted += o.pending_evicted;
        self.pending_expired += o.pending_expired;
        self.flow_starts += o.flow_starts;
        self.datagrams += o.datagrams;
        self.udp_flows_evicted += o.udp_flows_evicted;
        self.segments += o.segments;
        self.segments_orphaned += o.segments_orphaned;
        self.segments_over_bound += o.segments_over_bound;
    }
}

#[derive(Debug)]
struct Pending {
    start: MsgStart,
    last_event: Instant,
    /// Counters of the partial record sent, if one was.
    flushed: Option<MsgCounters>,
    /// The message's bytes, call by call, when its connection is captured so.
    segments: Vec<SegmentRecord>,
    /// Bytes in `segments`.
    segment_bytes: usize,
    /// What the socket's pod veth counted of the message, as the latest record that had it
    /// said (`MsgStart::wire`).
    wire: Option<MsgCounters>,
}

impl Pending {
    fn new(start: MsgStart, now: Instant) -> Self {
        let wire = own_wire(&start);
        Self {
            start,
            last_event: now,
            flushed: None,
            segments: Vec::new(),
            segment_bytes: 0,
            wire,
        }
    }

    /// Takes the veth's counters of this message from `wire` (a later record's), if it has
    /// them: they only grow until the message is over.
    fn see_wire(&mut self, wire: Option<&Wire>) {
        if let Some(w) = wire.and_then(|w| w.find(&self.start.msg)) {
            self.wire = Some(w);
        }
    }

    /// Starts `start` in this message's place at `now`, as [`Pending::new`] would make it, and
    /// returns what the message it replaces needs to be emitted ([`Pending::done`]'s parts,
    /// owned): only the message start is moved, not the whole entry.
    fn restart(&mut self, start: MsgStart, now: Instant) -> Replaced {
        // The record that starts the next message has the veth's latest counters of this one.
        self.see_wire(start.wire.as_ref());
        let new_wire = own_wire(&start);
        // Named one by one, so that a field added to `Pending` fails to compile here.
        let Self {
            start: old,
            last_event,
            flushed,
            segments,
            segment_bytes,
            wire,
        } = self;
        *last_event = now;
        *segment_bytes = 0;
        Replaced {
            start: std::mem::replace(old, start),
            flushed: flushed.take(),
            segments: std::mem::take(segments),
            wire: std::mem::replace(wire, new_wire),
        }
    }

    fn done(&self) -> Done<'_> {
        Done {
            start: &self.start,
            flushed: self.flushed,
            segments: &self.segments,
            wire: self.wire,
        }
    }
}

/// The veth's counters of message `start` as its own record found them.
fn own_wire(start: &MsgStart) -> Option<MsgCounters> {
    start.wire.and_then(|w| w.find(&start.msg))
}

/// A pending message [`Pending::restart`] replaced: what emitting it needs, owned.
struct Replaced {
    start: MsgStart,
    flushed: Option<MsgCounters>,
    segments: Vec<SegmentRecord>,
    wire: Option<MsgCounters>,
}

/// What emitting a pending message needs of it, borrowed: a message replaced in its place by
/// its flow's next one is emitted from its parts, not moved out whole.
struct Done<'a> {
    start: &'a MsgStart,
    flushed: Option<MsgCounters>,
    segments: &'a [SegmentRecord],
    /// The pod veth's counters of the message, when its socket carries them.
    wire: Option<MsgCounters>,
}

/// Pairs message starts with their end counters.
#[derive(Debug)]
pub struct Assembler {
    pending: FxHashMap<u64, Pending>,
    /// Flows whose `FlowStart` was emitted and that have not ended (nor been forgotten).
    announced: FxHashSet<u64>,
    /// UDP flows, numbered here.
    udp: udp::UdpFlows,
    idle_flush: Duration,
    max_pending: usize,
    node: String,
    clock: BootClock,
    interfaces: InterfaceNames,
    stats: AssemblerStats,
}

impl Assembler {
    /// An assembler that keeps at most `max_pending` open messages.
    pub fn new(
        idle_flush: Duration,
        max_pending: usize,
        node: String,
        clock: BootClock,
        interfaces: InterfaceNames,
    ) -> Self {
        Self {
            pending: FxHashMap::default(),
            announced: FxHashSet::default(),
            udp: udp::UdpFlows::new(max_pending.max(1)),
            idle_flush,
            max_pending: max_pending.max(1),
            node,
            clock,
            interfaces,
            stats: AssemblerStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> AssemblerStats {
        self.stats
    }

    /// Messages waiting for their end.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Resamples the boot -> Unix clock offset.
    pub fn resync_clock(&mut self) {
        self.clock.resync();
    }

    /// Handles one kernel event; completed records are appended to `out`.
    pub fn on_event(&mut self, event: Event, now: Instant, out: &mut impl RecordSink) {
        match event {
            Event::MsgStart(start) => self.on_start(start, now, out),
            Event::Exchange(exchange) => {
                // One kernel record for a request and the start of its response: the same
                // as the two message starts it stands for, in order.
                let (request, response) = exchange.into_starts();
                self.on_start(request, now, out);
                self.on_start(response, now, out);
            }
            Event::FlowEnd(end) => self.on_end(end, out),
            Event::Datagram(d) => self.on_datagram(d, now, out),
            Event::Segment(seg) => self.on_segment(seg, now),
        }
    }

    /// Bytes of a call of a pending message: kept with it, within [`MAX_SEGMENT_BYTES`].
    fn on_segment(&mut self, seg: Segment, now: Instant) {
        let Some(p) = self
            .pending
            .get_mut(&seg.flow_id)
            .filter(|p| p.start.msg.index == seg.index)
        else {
            self.stats.segments_orphaned += 1;
            return;
        };
        p.last_event = now;
        let payload = seg.bytes;
        if payload.is_empty() {
            return;
        }
        // Over the bound, the oldest segments after the message's first go: its start and its
        // latest bytes (where the end of a long answer is) are what decoders use most.
        while p.segment_bytes.saturating_add(payload.len()) > MAX_SEGMENT_BYTES
            && p.segments.len() > 1
        {
            let gone = p.segments.remove(1);
            p.segment_bytes = p.segment_bytes.saturating_sub(gone.payload.len());
            self.stats.segments_over_bound += 1;
        }
        if p.segment_bytes.saturating_add(payload.len()) > MAX_SEGMENT_BYTES {
            self.stats.segments_over_bound += 1;
            return;
        }
        p.segment_bytes += payload.len();
        p.segments.push(SegmentRecord {
            offset: seg.offset,
            payload,
        });
        self.stats.segments += 1;
    }

    /// A UDP datagram: one message record at once, in its flow (announced when new).
    fn on_datagram(&mut self, d: Datagram, now: Instant, out: &mut impl RecordSink) {
        let (placed, evicted) = self.udp.place(d.key, &d.msg, now);
        if let Some((key, flow)) = evicted {
            self.stats.udp_flows_evicted += 1;
            self.end_udp(key, flow, out);
        }
        // A no-op once announced; always made here so that it says UDP.
        self.announce(
            placed.flow_id,
            &d.key,
            None,
            FlowTraits {
                protocol: d.protocol,
                transport: Transport::Udp,
                counters_only: false,
                wire_ifindex: None,
            },
            out,
        );
        self.stats.datagrams += 1;
        let msg = MsgCounters {
            index: placed.index,
            ..d.msg
        };
        let start = MsgStart {
            key: d.key,
            flow_id: placed.flow_id,
            msg,
            prev: None,
            protocol: d.protocol,
            payload: d.payload,
            socket: None,
            counters_only: false,
            wire: None,
        };
        let done = Done {
            start: &start,
            flushed: None,
            segments: &[],
            wire: None,
        };
        self.message(&done, &msg, false, out);
    }

    /// A UDP flow went quiet (or made room): its end, named by id.
    fn end_udp(&mut self, key: ConnectionKey, flow: udp::UdpFlow, out: &mut impl RecordSink) {
        self.announced.remove(&flow.flow_id);
        let end = FlowEnd {
            key,
            flow_id: flow.flow_id,
            reason: FlowEndReason::Idle,
            ts_ns: flow.last.last_ns,
            last: Some(flow.last),
            socket: None,
            tcp: None,
            wire: None,
        };
        out.record(records::flow_end(&end, &self.clock));
        self.stats.flow_ends += 1;
    }

    fn on_start(&mut self, start: MsgStart, now: Instant, out: &mut impl RecordSink) {
        let (flow_id, prev) = (start.flow_id, start.prev);
        // The flow's pending message gives way to the new one in its place: one look-up, not a
        // removal and an insertion (twice per exchange and point), and only the message start
        // moved in and out (the pending message whole, moved out, replaced and handed on, was
        // a tenth of the probe's time in copies).
        if let Some(slot) = self.pending.get_mut(&flow_id) {
            let old = slot.restart(start, now);
            let done = Done {
                start: &old.start,
                flushed: old.flushed,
                segments: &old.segments,
                wire: old.wire,
            };
            match prev {
                Some(prev) => self.complete(done, &prev, out),
                None => {
                    // A new first message for a known flow id: the kernel lost the connection
                    // (LRU eviction) and restarted it; the old message is as good as it gets.
                    self.stats.lost_messages += 1;
                    self.emit_first_packet_only(done, out);
                }
            }
            return;
        }
        if prev.is_some() {
            self.stats.orphans += 1;
        }
        if self.pending.len() >= self.max_pending {
            self.evict_oldest(out);
        }
        self.pending.insert(flow_id, Pending::new(start, now));
    }

    fn on_end(&mut self, end: FlowEnd, out: &mut impl RecordSink) {
        let pending = self.pending.remove(&end.flow_id).map(|mut p| {
            p.see_wire(end.wire.as_ref());
            p
        });
        match (pending, &end.last) {
            (Some(p), Some(last)) => self.complete(p.done(), last, out),
            (Some(p), None) => self.emit_first_packet_only(p.done(), out),
            (None, Some(_)) => self.stats.orphans += 1,
            (None, None) => {}
        }
        self.announce(
            end.flow_id,
            &end.key,
            end.socket.as_ref(),
            FlowTraits {
                protocol: ProtocolHint::Unspecified,
                transport: Transport::Tcp,
                counters_only: false,
                wire_ifindex: end.wire.map(|w| w.ifindex),
            },
            out,
        );
        self.announced.remove(&end.flow_id);
        out.record(records::flow_end(&end, &self.clock));
        self.stats.flow_ends += 1;
    }

    /// Emits `p` with its final counters `fin`.
    fn complete(&mut self, p: Done<'_>, fin: &MsgCounters, out: &mut impl RecordSink) {
        if fin.index != p.start.msg.index {
            // Events in between were lost; `fin` belongs to a message we never saw start.
            self.stats.lost_messages += u64::from(fin.index.saturating_sub(p.start.msg.index));
            if p.flushed.is_none() {
                self.emit_first_packet_only(p, out);
            }
            return;
        }
        match p.flushed {
            Some(sent) if sent == *fin => {}
            Some(_) => {
                self.stats.finals_after_flush += 1;
                self.message(&p, fin, false, out);
            }
            None => self.message(&p, fin, false, out),
        }
    }

    /// Emits a message of which only the first packet's counters are known.
    fn emit_first_packet_only(&mut self, p: Done<'_>, out: &mut impl RecordSink) {
        if p.flushed.is_none() {
            self.message(&p, &p.start.msg, true, out);
        }
    }

    fn evict_oldest(&mut self, out: &mut impl RecordSink) {
        let oldest = self
            .pending
            .iter()
            .min_by_key(|(_, p)| p.last_event)
            .map(|(id, _)| *id);
        if let Some(p) = oldest.and_then(|id| self.pending.remove(&id)) {
            self.stats.pending_evicted += 1;
            self.emit_first_packet_only(p.done(), out);
        }
    }

    /// Emits pending messages idle for `idle_flush` as partial records, with counters read
    /// through `source`; forgets flushed messages whose flow vanished.
    pub fn flush_idle(
        &mut self,
        now: Instant,
        source: &(impl ConnectionSource + ?Sized),
        out: &mut impl RecordSink,
    ) {
        for (key, flow) in self.udp.take_idle(now, udp::UDP_IDLE) {
            self.end_udp(key, flow, out);
        }
        let stale_after = self.idle_flush * STALE_FACTOR;
        let due: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                let idle = now.saturating_duration_since(p.last_event);
                (p.flushed.is_none() && idle >= self.idle_flush)
                    || (p.flushed.is_some() && idle >= stale_after)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(mut p) = self.pending.remove(&id) else {
                continue;
            };
            let state = source
                .lookup(&p.start)
                .filter(|s| s.flow_id == p.start.flow_id);
            if p.flushed.is_some() {
                if state.is_some() {
                    // Still alive, just quiet (an idle keep-alive connection).
                    p.last_event = now;
                    self.pending.insert(id, p);
                } else {
                    self.stats.pending_expired += 1;
                    self.announced.remove(&id);
                }
                continue;
            }
            // The message is still in progress (cur), or a request after it is held in the
            // kernel and the message's final counters wait there with it (before).
            let cur = state.and_then(|s| {
                s.cur
                    .filter(|c| c.index == p.start.msg.index)
                    .or(s.before.filter(|b| b.index == p.start.msg.index))
            });
            match cur {
                Some(c) => {
                    self.message(&p.done(), &c, true, out);
                    self.stats.partial_flushes += 1;
                    p.flushed = Some(c);
                    p.last_event = now;
                    self.pending.insert(id, p);
                }
                None => {
                    // The kernel no longer has it (or moved on and the event is still in
                    // the ring): send what we know; the next event, if any, is an orphan.
                    self.message(&p.done(), &p.start.msg, true, out);
                    self.stats.partial_flushes += 1;
                    if state.is_some() {
                        p.flushed = Some(p.start.msg);
                        p.last_event = now;
                        self.pending.insert(id, p);
                    }
                }
            }
        }
    }

    /// Emits every pending message that has not been flushed yet, with the kernel's
    /// current counters when it still has them (`partial`), and forgets them all: the
    /// event loop is stopping.
    pub fn flush_all(
        &mut self,
        source: &(impl ConnectionSource + ?Sized),
        out: &mut impl RecordSink,
    ) {
        let mut all: Vec<Pending> = self.pending.drain().map(|(_, p)| p).collect();
        all.sort_by_key(|p| p.last_event);
        for p in all {
            if p.flushed.is_some() {
                continue;
            }
            let cur = source
                .lookup(&p.start)
                .filter(|s| s.flow_id == p.start.flow_id)
                .and_then(|s| s.cur)
                .filter(|c| c.index == p.start.msg.index)
                .unwrap_or(p.start.msg);
            self.message(&p.done(), &cur, true, out);
            self.stats.partial_flushes += 1;
        }
    }

    /// Where an event was seen: at a socket (its process), else at the interface `ifindex`.
    fn point(&self, ifindex: u32, socket: Option<&SocketOwner>) -> ObservationPoint {
        if let Some(owner) = socket {
            return records::socket_point(owner, &self.node);
        }
        let (name, kind) = self
            .interfaces
            .read()
            .ok()
            .and_then(|m| m.get(&ifindex).map(|i| (i.name.clone(), i.kind)))
            // Detached meanwhile (its last events still arrive): pods are the common case.
            .unwrap_or((String::new(), PointKind::Pod));
        records::interface_point(kind, ifindex, &name, &self.node)
    }

    /// Emits the `FlowStart` of flow `flow_id` unless it was announced already.
    fn announce(
        &mut self,
        flow_id: u64,
        key: &super::raw::ConnectionKey,
        socket: Option<&SocketOwner>,
        traits: FlowTraits,
        out: &mut impl RecordSink,
    ) {
        if self.announced.contains(&flow_id) {
            return;
        }
        // Flows that vanished without an end are forgotten with their pending message; should
        // that ever leave too many behind, forget them all: each is announced again, once,
        // with its next record.
        if self.announced.len() >= self.max_pending.saturating_mul(2) {
            self.announced.clear();
        }
        self.announced.insert(flow_id);
        let point = self.point(key.ifindex, socket);
        // The veth whose counters the socket's messages carry, named as its own flows are.
        let wire_point = traits.wire_ifindex.map(|i| self.point(i, None));
        out.record(records::flow_start(flow_id, key, point, wire_point, traits));
        self.stats.flow_starts += 1;
    }

    /// Emits the record of message `p` with its final (or current) counters `fin` (and its pod
    /// veth's, `p.wire`), after its flow's `FlowStart` if that was not sent yet.
    fn message(
        &mut self,
        p: &Done<'_>,
        fin: &MsgCounters,
        partial: bool,
        out: &mut impl RecordSink,
    ) {
        let start = p.start;
        self.announce(
            start.flow_id,
            &start.key,
            start.socket.as_ref(),
            FlowTraits {
                protocol: start.protocol,
                transport: Transport::Tcp,
                counters_only: start.counters_only,
                wire_ifindex: start.wire.map(|w| w.ifindex),
            },
            out,
        );
        self.stats.messages += 1;
        out.message(
            start,
            &start.payload,
            p.segments,
            (fin, p.wire.as_ref()),
            partial,
            &self.clock,
        );
    }
}

#[cfg(test)]
mod tests;
