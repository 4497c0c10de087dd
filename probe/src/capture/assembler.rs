//! Turns the kernel's MSG_START / FLOW_END events into complete `Message` records.
//!
//! The kernel sends one event when a message starts; its final counters arrive with the
//! next event of the same flow (the next MSG_START carries them as `prev`, FLOW_END as
//! `last`). Until then the message is *pending* here. When nothing arrives for a pending
//! message for `idle_flush` (typically the last response on a keep-alive connection), its
//! current counters are read from the kernel's connection map and the message is emitted with
//! `partial = true`; should the counters still grow afterwards, the final record with the
//! same `(flow_id, index)` and `partial = false` follows and supersedes it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use clovisor_proto::capture::v1::{record, FlowEnd as FlowEndRecord, Message, Record};

use clovisor_proto::capture::v1::PointKind;

use super::raw::{
    point, socket_point, ConnectionState, Event, FlowEnd, MsgCounters, MsgStart, SocketOwner,
};
use crate::clock::BootClock;

/// How long a flushed message whose flow went quiet is kept before checking that the
/// flow still exists in the kernel.
const STALE_FACTOR: u32 = 50;

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
    }
}

#[derive(Debug)]
struct Pending {
    start: MsgStart,
    last_event: Instant,
    /// Counters of the partial record sent, if one was.
    flushed: Option<MsgCounters>,
}

/// Pairs message starts with their end counters.
#[derive(Debug)]
pub struct Assembler {
    pending: HashMap<u64, Pending>,
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
            pending: HashMap::new(),
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
    pub fn on_event(&mut self, event: Event, now: Instant, out: &mut Vec<Record>) {
        match event {
            Event::MsgStart(start) => self.on_start(start, now, out),
            Event::FlowEnd(end) => self.on_end(end, out),
        }
    }

    fn on_start(&mut self, start: MsgStart, now: Instant, out: &mut Vec<Record>) {
        match (self.pending.remove(&start.flow_id), &start.prev) {
            (Some(p), Some(prev)) => self.complete(p, prev, out),
            (Some(p), None) => {
                // A new first message for a known flow id: the kernel lost the connection
                // (LRU eviction) and restarted it; the old message is as good as it gets.
                self.stats.lost_messages += 1;
                self.emit_first_packet_only(p, out);
            }
            (None, Some(_)) => self.stats.orphans += 1,
            (None, None) => {}
        }
        if self.pending.len() >= self.max_pending {
            self.evict_oldest(out);
        }
        self.pending.insert(
            start.flow_id,
            Pending {
                start,
                last_event: now,
                flushed: None,
            },
        );
    }

    fn on_end(&mut self, end: FlowEnd, out: &mut Vec<Record>) {
        match (self.pending.remove(&end.flow_id), &end.last) {
            (Some(p), Some(last)) => self.complete(p, last, out),
            (Some(p), None) => self.emit_first_packet_only(p, out),
            (None, Some(_)) => self.stats.orphans += 1,
            (None, None) => {}
        }
        let point = self.point(end.key.ifindex, end.socket.as_ref());
        out.push(Record {
            kind: Some(record::Kind::FlowEnd(FlowEndRecord {
                flow: Some(end.key.to_flow_key()),
                point: Some(point),
                flow_id: end.flow_id,
                reason: end.reason as i32,
                unix_nanos: self.clock.to_unix_ns(end.ts_ns),
                messages: end.last.map_or(0, |l| l.index.saturating_add(1)),
                srtt_us: end.tcp.map_or(0, |t| t.srtt_us),
                total_retransmits: end.tcp.map_or(0, |t| t.total_retransmits),
            })),
        });
        self.stats.flow_ends += 1;
    }

    /// Emits `p` with its final counters `fin`.
    fn complete(&mut self, mut p: Pending, fin: &MsgCounters, out: &mut Vec<Record>) {
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
                let payload = std::mem::take(&mut p.start.payload);
                out.push(self.message(&p.start, payload, fin, false));
            }
            None => {
                let payload = std::mem::take(&mut p.start.payload);
                out.push(self.message(&p.start, payload, fin, false));
            }
        }
    }

    /// Emits a message of which only the first packet's counters are known.
    fn emit_first_packet_only(&mut self, mut p: Pending, out: &mut Vec<Record>) {
        if p.flushed.is_none() {
            let payload = std::mem::take(&mut p.start.payload);
            let first = p.start.msg;
            out.push(self.message(&p.start, payload, &first, true));
        }
    }

    fn evict_oldest(&mut self, out: &mut Vec<Record>) {
        let oldest = self
            .pending
            .iter()
            .min_by_key(|(_, p)| p.last_event)
            .map(|(id, _)| *id);
        if let Some(p) = oldest.and_then(|id| self.pending.remove(&id)) {
            self.stats.pending_evicted += 1;
            self.emit_first_packet_only(p, out);
        }
    }

    /// Emits pending messages idle for `idle_flush` as partial records, with counters read
    /// through `source`; forgets flushed messages whose flow vanished.
    pub fn flush_idle(
        &mut self,
        now: Instant,
        source: &(impl ConnectionSource + ?Sized),
        out: &mut Vec<Record>,
    ) {
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
                }
                continue;
            }
            let cur = state
                .and_then(|s| s.cur)
                .filter(|c| c.index == p.start.msg.index);
            match cur {
                Some(c) => {
                    out.push(self.message(&p.start, p.start.payload.clone(), &c, true));
                    self.stats.partial_flushes += 1;
                    p.flushed = Some(c);
                    p.last_event = now;
                    self.pending.insert(id, p);
                }
                None => {
                    // The kernel no longer has it (or moved on and the event is still in
                    // the ring): send what we know; the next event, if any, is an orphan.
                    let payload = if state.is_some() {
                        p.start.payload.clone()
                    } else {
                        std::mem::take(&mut p.start.payload)
                    };
                    let first = p.start.msg;
                    out.push(self.message(&p.start, payload, &first, true));
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
    pub fn flush_all(&mut self, source: &(impl ConnectionSource + ?Sized), out: &mut Vec<Record>) {
        let mut all: Vec<Pending> = self.pending.drain().map(|(_, p)| p).collect();
        all.sort_by_key(|p| p.last_event);
        for mut p in all {
            if p.flushed.is_some() {
                continue;
            }
            let cur = source
                .lookup(&p.start)
                .filter(|s| s.flow_id == p.start.flow_id)
                .and_then(|s| s.cur)
                .filter(|c| c.index == p.start.msg.index)
                .unwrap_or(p.start.msg);
            let payload = std::mem::take(&mut p.start.payload);
            out.push(self.message(&p.start, payload, &cur, true));
            self.stats.partial_flushes += 1;
        }
    }

    fn point(
        &self,
        ifindex: u32,
        socket: Option<&SocketOwner>,
    ) -> clovisor_proto::capture::v1::ObservationPoint {
        if let Some(owner) = socket {
            return socket_point(owner, &self.node);
        }
        let (name, kind) = self
            .interfaces
            .read()
            .ok()
            .and_then(|m| m.get(&ifindex).map(|i| (i.name.clone(), i.kind)))
            // Detached meanwhile (its last events still arrive): pods are the common case.
            .unwrap_or((String::new(), PointKind::Pod));
        point(kind, ifindex, &name, &self.node)
    }

    /// The record of message `start` with its final (or current) counters `fin`; `payload` is
    /// `start`'s, moved out when `start` is not needed again.
    fn message(
        &mut self,
        start: &MsgStart,
        payload: Vec<u8>,
        fin: &MsgCounters,
        partial: bool,
    ) -> Record {
        self.stats.messages += 1;
        Record {
            kind: Some(record::Kind::Message(Message {
                flow: Some(start.key.to_flow_key()),
                point: Some(self.point(start.key.ifindex, start.socket.as_ref())),
                flow_id: start.flow_id,
                index: start.msg.index,
                direction: start.msg.direction as i32,
                to_pod: start.msg.to_pod,
                start_unix_nanos: self.clock.to_unix_ns(start.msg.start_ns),
                end_unix_nanos: self.clock.to_unix_ns(fin.last_ns.max(start.msg.start_ns)),
                tcp_seq: start.msg.tcp_seq,
                bytes: fin.bytes,
                packets: fin.packets,
                retransmits: fin.retransmits,
                payload,
                protocol: start.protocol as i32,
                partial,
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use clovisor_proto::capture::v1::{Direction, FlowEndReason, ProtocolHint};

    use super::super::raw::testing::{counters, v4_key};
    use super::super::raw::ConnectionKey;
    use super::*;

    /// Fake kernel connection map.
    #[derive(Default)]
    struct FakeConnections(RefCell<HashMap<ConnectionKey, ConnectionState>>);

    impl ConnectionSource for FakeConnections {
        fn lookup(&self, start: &MsgStart) -> Option<ConnectionState> {
            self.0.borrow().get(&start.key).copied()
        }
    }

    fn names() -> InterfaceNames {
        let mut m = BTreeMap::new();
        m.insert(
            7,
            AttachedInterface {
                name: "veth-test".to_owned(),
                kind: PointKind::Pod,
            },
        );
        Arc::new(RwLock::new(m))
    }

    fn assembler(max_pending: usize) -> Assembler {
        Assembler::new(
            Duration::from_millis(200),
            max_pending,
            "node-a".into(),
            BootClock::with_offset(1_000_000),
            names(),
        )
    }

    fn start(flow_id: u64, msg: MsgCounters, prev: Option<MsgCounters>, payload: &[u8]) -> Event {
        Event::MsgStart(MsgStart {
            key: v4_key(),
            flow_id,
            msg,
            prev,
            protocol: ProtocolHint::Http,
            payload: payload.to_vec(),
            socket: None,
        })
    }

    fn messages(out: &[Record]) -> Vec<&Message> {
        out.iter()
            .filter_map(|r| match &r.kind {
                Some(record::Kind::Message(m)) => Some(m),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn request_response_fin_yields_two_messages_then_flow_end() {
        let mut a = assembler(16);
        let t = Instant::now();
        let mut out = Vec::new();
        let req_first = counters(0, Direction::ClientToServer, 78);
        let mut req_final = req_first;
        req_final.last_ns += 5;
        let resp_first = counters(1, Direction::ServerToClient, 1448);
        let mut resp_final = resp_first;
        resp_final.bytes = 1_048_576;
        resp_final.packets = 40;
        a.on_event(
            start(1, req_first, None, b"GET / HTTP/1.1\r\n"),
            t,
            &mut out,
        );
        assert!(
            out.is_empty(),
            "nothing is complete after the first MSG_START, got {out:?}"
        );
        a.on_event(
            start(1, resp_first, Some(req_final), b"HTTP/1.1 200 OK\r\n"),
            t,
            &mut out,
        );
        a.on_event(
            Event::FlowEnd(FlowEnd {
                key: v4_key(),
                flow_id: 1,
                reason: FlowEndReason::Fin,
                ts_ns: 9_999,
                last: Some(resp_final),
                socket: None,
                tcp: None,
            }),
            t,
            &mut out,
        );
        let msgs = messages(&out);
        assert_eq!(msgs.len(), 2, "request and response expected, got {msgs:?}");
        assert_eq!(
            (msgs[0].index, msgs[0].direction),
            (0, Direction::ClientToServer as i32),
            "first is the request"
        );
        assert_eq!(msgs[0].payload, b"GET / HTTP/1.1\r\n", "request payload");
        assert_eq!(
            msgs[0].end_unix_nanos,
            req_final.last_ns + 1_000_000,
            "request end from prev counters"
        );
        assert_eq!(
            (msgs[1].index, msgs[1].bytes, msgs[1].packets),
            (1, 1_048_576, 40),
            "response counters from FLOW_END"
        );
        assert!(
            !msgs[1].partial && !msgs[0].partial,
            "final records must not be partial"
        );
        let point = msgs[1]
            .point
            .as_ref()
            .map(|p| (p.interface.clone(), p.node.clone()));
        assert_eq!(
            point,
            Some(("veth-test".into(), "node-a".into())),
            "observation point"
        );
        match out.last().and_then(|r| r.kind.as_ref()) {
            Some(record::Kind::FlowEnd(fe)) => assert_eq!(
                (fe.messages, fe.reason),
                (2, FlowEndReason::Fin as i32),
                "flow end"
            ),
            other => panic!("last record must be the FlowEnd, got {other:?}"),
        }
        assert_eq!(a.pending_len(), 0, "nothing pending after FLOW_END");
    }

    #[test]
    fn idle_flush_reads_kernel_counters_and_final_supersedes_only_if_grown() {
        let mut a = assembler(16);
        let fake = FakeConnections::default();
        let t0 = Instant::now();
        let mut out = Vec::new();
        let req = counters(0, Direction::ClientToServer, 78);
        let resp = counters(1, Direction::ServerToClient, 1448);
        a.on_event(start(5, req, None, b"GET /a"), t0, &mut out);
        a.on_event(start(5, resp, Some(req), b"HTTP/1.1 200"), t0, &mut out);
        assert_eq!(messages(&out).len(), 1, "request complete");
        out.clear();

        let mut grown = resp;
        grown.bytes = 5000;
        grown.packets = 4;
        fake.0.borrow_mut().insert(
            v4_key(),
            ConnectionState {
                flow_id: 5,
                cur: Some(grown),
            },
        );
        a.flush_idle(t0 + Duration::from_millis(100), &fake, &mut out);
        assert!(
            out.is_empty(),
            "no flush before idle_flush (200 ms), got {out:?}"
        );
        a.flush_idle(t0 + Duration::from_millis(250), &fake, &mut out);
        let msgs = messages(&out);
        assert_eq!(msgs.len(), 1, "one partial flush expected, got {msgs:?}");
        assert!(msgs[0].partial, "idle flush must mark the record partial");
        assert_eq!(
            msgs[0].bytes, 5000,
            "flushed counters come from the kernel map"
        );
        out.clear();
        a.flush_idle(t0 + Duration::from_millis(500), &fake, &mut out);
        assert!(out.is_empty(), "a message is flushed once, got {out:?}");

        // Next request carries the same counters as flushed: no duplicate.
        let req2 = counters(2, Direction::ClientToServer, 70);
        a.on_event(start(5, req2, Some(grown), b"GET /b"), t0, &mut out);
        assert!(
            messages(&out).is_empty(),
            "unchanged counters after a flush must not re-emit, got {out:?}"
        );
        // Flush the second request, then its final differs: a superseding final record.
        fake.0.borrow_mut().insert(
            v4_key(),
            ConnectionState {
                flow_id: 5,
                cur: Some(req2),
            },
        );
        a.flush_idle(t0 + Duration::from_secs(1), &fake, &mut out);
        out.clear();
        let mut req2_final = req2;
        req2_final.bytes = 140;
        a.on_event(
            start(
                5,
                counters(3, Direction::ServerToClient, 10),
                Some(req2_final),
                b"HTTP",
            ),
            t0,
            &mut out,
        );
        let msgs = messages(&out);
        assert_eq!(
            msgs.len(),
            1,
            "grown counters after a flush must send a final record, got {msgs:?}"
        );
        assert!(
            !msgs[0].partial && msgs[0].bytes == 140 && msgs[0].index == 2,
            "final record supersedes: {:?}",
            msgs[0]
        );
        assert_eq!(a.stats().finals_after_flush, 1, "counted");
    }

    #[test]
    fn flushed_message_of_vanished_flow_expires() {
        let mut a = assembler(16);
        let fake = FakeConnections::default();
        let t0 = Instant::now();
        let mut out = Vec::new();
        a.on_event(
            start(9, counters(0, Direction::ClientToServer, 10), None, b"x"),
            t0,
            &mut out,
        );
        a.flush_idle(t0 + Duration::from_millis(300), &fake, &mut out);
        assert_eq!(
            messages(&out).len(),
            1,
            "flow missing from the kernel: first-packet counters flushed"
        );
        assert_eq!(
            a.pending_len(),
            0,
            "and forgotten, since the kernel has no such connection"
        );
        assert!(messages(&out)[0].partial, "partial");
    }

    #[test]
    fn flush_all_emits_unflushed_pending_once() {
        let mut a = assembler(16);
        let fake = FakeConnections::default();
        let t0 = Instant::now();
        let mut out = Vec::new();
        let mut grown = counters(0, Direction::ClientToServer, 10);
        a.on_event(start(1, grown, None, b"GET"), t0, &mut out);
        grown.bytes = 30;
        fake.0.borrow_mut().insert(
            v4_key(),
            ConnectionState {
                flow_id: 1,
                cur: Some(grown),
            },
        );
        a.flush_all(&fake, &mut out);
        let msgs = messages(&out);
        assert_eq!(
            msgs.len(),
            1,
            "the pending message must be emitted on shutdown, got {msgs:?}"
        );
        assert!(
            msgs[0].partial && msgs[0].bytes == 30,
            "with kernel counters, partial: {:?}",
            msgs[0]
        );
        assert_eq!(a.pending_len(), 0, "nothing pending after flush_all");
    }

    #[test]
    fn pending_is_bounded_and_evictions_counted() {
        let mut a = assembler(2);
        let t0 = Instant::now();
        let mut out = Vec::new();
        for id in 1..=3u64 {
            a.on_event(
                start(id, counters(0, Direction::ClientToServer, 1), None, b"q"),
                t0 + Duration::from_millis(id),
                &mut out,
            );
        }
        assert_eq!(a.pending_len(), 2, "pending bounded at 2");
        assert_eq!(a.stats().pending_evicted, 1, "one eviction counted");
        let msgs = messages(&out);
        assert_eq!(msgs.len(), 1, "evicted message still emitted");
        assert_eq!(msgs[0].flow_id, 1, "the oldest (flow 1) is evicted");
    }

    #[test]
    fn orphans_and_lost_messages_are_counted() {
        let mut a = assembler(16);
        let t0 = Instant::now();
        let mut out = Vec::new();
        let prev = counters(0, Direction::ClientToServer, 5);
        a.on_event(
            start(
                3,
                counters(1, Direction::ServerToClient, 5),
                Some(prev),
                b"r",
            ),
            t0,
            &mut out,
        );
        assert_eq!(
            a.stats().orphans,
            1,
            "prev counters for an unknown flow are an orphan"
        );
        // Index 1 pending; the next event says message 3's prev (index 2) ended: 1 was lost-ended.
        a.on_event(
            start(
                3,
                counters(3, Direction::ServerToClient, 5),
                Some(counters(2, Direction::ClientToServer, 5)),
                b"r",
            ),
            t0,
            &mut out,
        );
        assert_eq!(
            a.stats().lost_messages,
            1,
            "one message between known ones was lost"
        );
        let msgs = messages(&out);
        assert_eq!(
            msgs.len(),
            1,
            "the pending message is still sent, got {msgs:?}"
        );
        assert!(
            msgs[0].partial && msgs[0].index == 1,
            "sent as partial with first-packet counters: {:?}",
            msgs[0]
        );
    }

    #[test]
    fn socket_events_become_socket_points_with_their_process() {
        use super::super::raw::testing::owner;
        use super::super::raw::SocketSide;
        use clovisor_proto::capture::v1::PointKind;

        let mut a = assembler(16);
        let t = Instant::now();
        let mut out = Vec::new();
        let req = counters(0, Direction::ClientToServer, 78);
        let resp = counters(1, Direction::ServerToClient, 100);
        let sock = |e: Event| match e {
            Event::MsgStart(mut m) => {
                m.socket = Some(owner(SocketSide::Server));
                Event::MsgStart(m)
            }
            other => other,
        };
        a.on_event(
            sock(start(5, req, None, b"GET / HTTP/1.1\r\n")),
            t,
            &mut out,
        );
        a.on_event(
            sock(start(5, resp, Some(req), b"HTTP/1.1 200 OK\r\n")),
            t,
            &mut out,
        );
        a.on_event(
            Event::FlowEnd(FlowEnd {
                key: v4_key(),
                flow_id: 5,
                reason: FlowEndReason::Fin,
                ts_ns: 9_999,
                last: Some(resp),
                socket: Some(owner(SocketSide::Server)),
                tcp: None,
            }),
            t,
            &mut out,
        );
        let msgs = messages(&out);
        assert_eq!(msgs.len(), 2, "request and response expected, got {msgs:?}");
        for m in &msgs {
            let p = m
                .point
                .as_ref()
                .unwrap_or_else(|| panic!("no point in {m:?}"));
            assert_eq!(
                (
                    p.kind,
                    p.pid,
                    p.comm.as_str(),
                    p.side.as_str(),
                    p.interface.as_str()
                ),
                (PointKind::Socket as i32, 4242, "nginx", "server", ""),
                "socket point, not the veth of ifindex 7: {p:?}"
            );
        }
        let end = out
            .iter()
            .find_map(|r| match &r.kind {
                Some(record::Kind::FlowEnd(fe)) => Some(fe),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no flow end in {out:?}"));
        assert_eq!(
            end.point.as_ref().map(|p| p.kind),
            Some(PointKind::Socket as i32),
            "flow end at the socket point"
        );
    }
}
