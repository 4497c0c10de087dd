//! The assembler against scripted kernel events and a fake connection map.

use std::cell::RefCell;
use std::collections::HashMap;

use clovisor_proto::capture::v1::{Direction, FlowEndReason, ProtocolHint};

use clovisor_proto::capture::v1::{record, Message};

use super::*;
use crate::capture::raw::testing::{counters, v4_key};
use crate::capture::raw::ConnectionKey;

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
        payload: Bytes::copy_from_slice(payload),
        socket: None,
        counters_only: false,
        wire: None,
    })
}

/// The observation point the flow `flow_id` was announced with (its `FlowStart`): messages and
/// ends name their flow by id only.
fn announced_point(out: &[Record], flow_id: u64) -> Option<&ObservationPoint> {
    out.iter().find_map(|r| match &r.kind {
        Some(record::Kind::FlowStart(fs)) if fs.flow_id == flow_id => fs.point.as_ref(),
        _ => None,
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
            wire: None,
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
    assert_eq!(
        &msgs[0].payload[..],
        b"GET / HTTP/1.1\r\n",
        "request payload"
    );
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
    assert!(
        msgs.iter().all(|m| m.flow.is_none() && m.point.is_none()),
        "messages name their flow by id only"
    );
    let point = announced_point(&out, 1).map(|p| (p.interface.clone(), p.node.clone()));
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
            before: None,
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
            before: None,
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
            before: None,
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
    use crate::capture::raw::testing::owner;
    use crate::capture::raw::SocketSide;
    use clovisor_proto::common::v1::Side;

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
            wire: None,
        }),
        t,
        &mut out,
    );
    let msgs = messages(&out);
    assert_eq!(msgs.len(), 2, "request and response expected, got {msgs:?}");
    {
        let p = announced_point(&out, 5).unwrap_or_else(|| panic!("no FlowStart in {out:?}"));
        assert_eq!(
            (
                p.kind,
                p.pid,
                p.comm.as_str(),
                p.side(),
                p.interface.as_str()
            ),
            (PointKind::Socket as i32, 4242, "nginx", Side::Server, ""),
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
        (end.flow_id, end.point.as_ref()),
        (5, None),
        "the flow end names its flow (announced at the socket point) by id"
    );
}

#[test]
fn an_exchange_record_completes_the_request_at_once_and_holds_the_response() {
    let mut a = assembler(16);
    let t = Instant::now();
    let mut out = Vec::new();
    let before = counters(1, Direction::ServerToClient, 300);
    let request = counters(2, Direction::ClientToServer, 40);
    let response = counters(3, Direction::ServerToClient, 200);
    // The response before this exchange is pending from an earlier record.
    a.on_event(
        start(
            5,
            counters(1, Direction::ServerToClient, 100),
            None,
            b"HTTP/1.1 200 OK\r\n",
        ),
        t,
        &mut out,
    );
    a.on_event(
        Event::Exchange(crate::capture::raw::Exchange {
            key: v4_key(),
            flow_id: 5,
            protocol: ProtocolHint::Http,
            socket: None,
            before: Some(before),
            request,
            request_payload: Bytes::from_static(b"GET /x HTTP/1.1\r\n\r\n"),
            response,
            response_payload: Bytes::from_static(b"HTTP/1.1 204 No Content\r\n"),
            head_lost: false,
            counters_only: false,
            wire: None,
        }),
        t,
        &mut out,
    );
    let msgs = messages(&out);
    assert_eq!(
        msgs.iter().map(|m| (m.index, m.bytes)).collect::<Vec<_>>(),
        [(1, 300), (2, 40)],
        "the earlier response with its final counters, then the request, final: {msgs:?}"
    );
    assert_eq!(
        &msgs[1].payload[..],
        b"GET /x HTTP/1.1\r\n\r\n",
        "request bytes"
    );
    assert!(
        msgs.iter().all(|m| !m.partial),
        "both final, not partial: {msgs:?}"
    );
    assert_eq!(
        a.pending_len(),
        1,
        "the response waits for its final counters"
    );
}

fn segment(flow_id: u64, index: u32, offset: u64, bytes: &[u8]) -> Event {
    Event::Segment(crate::capture::raw::Segment {
        flow_id,
        index,
        offset,
        bytes: Bytes::copy_from_slice(bytes),
    })
}

/// A connection captured call by call: each call's bytes travel with their message, in call
/// order; a segment of a message not pending is counted, never attached to another.
#[test]
fn segments_travel_with_their_message_and_orphans_are_counted() {
    let mut a = assembler(16);
    let t = Instant::now();
    let mut out = Vec::new();
    let req = counters(0, Direction::ClientToServer, 30);
    a.on_event(start(5, req, None, b""), t, &mut out);
    a.on_event(segment(5, 0, 0, b"PRI * HTTP/2.0"), t, &mut out);
    a.on_event(segment(5, 0, 14, b"frame-head"), t, &mut out);
    a.on_event(segment(5, 0, 4000, b"frame-tail"), t, &mut out);
    // Message 3 was never started here.
    a.on_event(segment(5, 3, 0, b"stray"), t, &mut out);
    let mut req_final = req;
    req_final.bytes = 4010;
    let resp = counters(1, Direction::ServerToClient, 9);
    a.on_event(start(5, resp, Some(req_final), b""), t, &mut out);
    let msgs = messages(&out);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let got: Vec<(u64, &[u8])> = msgs[0]
        .segments
        .iter()
        .map(|s| (s.offset, &s.payload[..]))
        .collect();
    assert_eq!(
        got,
        [
            (0, &b"PRI * HTTP/2.0"[..]),
            (14, &b"frame-head"[..]),
            (4000, &b"frame-tail"[..]),
        ]
    );
    assert_eq!(msgs[0].bytes, 4010);
    let stats = a.stats();
    assert_eq!((stats.segments, stats.segments_orphaned), (3, 1));
}

/// A message past MAX_SEGMENT_BYTES keeps its first segment and its latest ones; what made
/// room is counted.
#[test]
fn segments_of_one_message_are_bounded_keeping_its_start_and_end() {
    let mut a = assembler(16);
    let t = Instant::now();
    let mut out = Vec::new();
    let resp = counters(0, Direction::ServerToClient, 100);
    a.on_event(start(9, resp, None, b""), t, &mut out);
    let chunk = vec![7u8; 1024];
    let calls = 2 * MAX_SEGMENT_BYTES / chunk.len();
    for i in 0..calls {
        a.on_event(segment(9, 0, (i * 8192) as u64, &chunk), t, &mut out);
    }
    a.on_event(
        Event::FlowEnd(FlowEnd {
            key: v4_key(),
            flow_id: 9,
            reason: FlowEndReason::Fin,
            ts_ns: 1,
            last: Some(resp),
            socket: None,
            tcp: None,
            wire: None,
        }),
        t,
        &mut out,
    );
    let msgs = messages(&out);
    let kept: usize = msgs[0].segments.iter().map(|s| s.payload.len()).sum();
    assert!(kept <= MAX_SEGMENT_BYTES, "{kept}");
    assert_eq!(msgs[0].segments.first().map(|s| s.offset), Some(0));
    assert_eq!(
        msgs[0].segments.last().map(|s| s.offset),
        Some(((calls - 1) * 8192) as u64),
        "the latest call is kept"
    );
    let stats = a.stats();
    assert_eq!(
        stats.segments_over_bound as usize + msgs[0].segments.len(),
        calls,
        "every segment kept or counted"
    );
}

/// A server socket whose pod veth is carried: each record brings the veth's counters of the
/// connection's latest messages; each message leaves with the veth's counters of the same
/// message (found by direction and sequence number), the latest the records brought, and the
/// flow is announced with the veth as its wire point.
#[test]
fn a_carried_veths_counters_leave_with_the_socket_message_they_belong_to() {
    use crate::capture::raw::testing::owner;
    use crate::capture::raw::{SocketSide, Wire};
    let mut a = assembler(16);
    let t = Instant::now();
    let mut out = Vec::new();
    let msg = |index: u32, dir: Direction, seq: u32, bytes: u64| MsgCounters {
        tcp_seq: seq,
        ..counters(index, dir, bytes)
    };
    // The socket's view: requests at sequence 1000 + 10 i, responses at 5000 + 10 i.
    let req = |i: u32| msg(2 * i, Direction::ClientToServer, 1000 + 10 * i, 78);
    let resp = |i: u32| msg(2 * i + 1, Direction::ServerToClient, 5000 + 10 * i, 300);
    // The veth's: the same messages, its own numbering, timings and packets.
    let veth = |m: MsgCounters, packets: u32| MsgCounters {
        index: m.index + 7,
        start_ns: m.start_ns - 3,
        last_ns: m.last_ns + 9,
        packets,
        ..m
    };
    let wire = |msgs: [Option<MsgCounters>; 3]| Some(Wire { ifindex: 7, msgs });
    let exchange = |i: u32, before: Option<MsgCounters>, w| {
        Event::Exchange(crate::capture::raw::Exchange {
            key: v4_key(),
            flow_id: 9,
            protocol: ProtocolHint::Http,
            socket: Some(owner(SocketSide::Server)),
            before,
            request: req(i),
            request_payload: Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"),
            response: resp(i),
            response_payload: Bytes::from_static(b"HTTP/1.1 200 OK\r\n"),
            head_lost: false,
            counters_only: false,
            wire: w,
        })
    };
    // Exchange 0: the veth has the request (final) and the response's first packet.
    a.on_event(
        exchange(
            0,
            None,
            wire([Some(veth(req(0), 2)), Some(veth(resp(0), 1)), None]),
        ),
        t,
        &mut out,
    );
    // Exchange 1: the veth's response 0, final (more packets), before request 1; the current
    // message is request 1 (its response not started at the veth yet).
    a.on_event(
        exchange(
            1,
            Some(resp(0)),
            wire([Some(veth(resp(0), 5)), Some(veth(req(1), 3)), None]),
        ),
        t,
        &mut out,
    );
    // The end: the veth's response 1, final; a record without it changes nothing.
    a.on_event(
        Event::FlowEnd(FlowEnd {
            key: v4_key(),
            flow_id: 9,
            reason: FlowEndReason::Fin,
            ts_ns: 9_999,
            last: Some(resp(1)),
            socket: Some(owner(SocketSide::Server)),
            tcp: None,
            wire: wire([Some(veth(req(1), 3)), Some(veth(resp(1), 4)), None]),
        }),
        t,
        &mut out,
    );
    let clock = BootClock::with_offset(1_000_000);
    let msgs = messages(&out);
    let got: Vec<_> = msgs
        .iter()
        .map(|m| (m.index, m.wire.map(|w| (w.tcp_seq, w.packets))))
        .collect();
    assert_eq!(
        got,
        [
            (0, Some((1000, 2))),
            (1, Some((5000, 5))),
            (2, Some((1010, 3))),
            (3, Some((5010, 4))),
        ],
        "each message with the veth's latest counters of it: {msgs:?}"
    );
    let w = msgs[1].wire.unwrap_or_default();
    assert_eq!(
        (w.start_unix_nanos, w.end_unix_nanos, w.bytes),
        (
            clock.to_unix_ns(resp(0).start_ns - 3),
            clock.to_unix_ns(resp(0).last_ns + 9),
            300
        ),
        "the veth's own timings, on the Unix clock"
    );
    let wire_point = out.iter().find_map(|r| match &r.kind {
        Some(record::Kind::FlowStart(fs)) if fs.flow_id == 9 => Some(fs.wire_point.clone()),
        _ => None,
    });
    assert_eq!(
        wire_point
            .flatten()
            .map(|p| (p.kind(), p.ifindex, p.interface)),
        Some((PointKind::Pod, 7, "veth-test".to_owned())),
        "the flow names the veth its messages' wire counters are of"
    );
}

/// Messages of a socket whose veth is not carried, and of the veth itself, carry no wire.
#[test]
fn without_a_carried_veth_no_message_has_wire_counters() {
    let mut a = assembler(16);
    let t = Instant::now();
    let mut out = Vec::new();
    a.on_event(
        start(1, counters(0, Direction::ClientToServer, 78), None, b"GET"),
        t,
        &mut out,
    );
    let mut req = counters(0, Direction::ClientToServer, 78);
    req.last_ns += 1;
    a.on_event(
        start(
            1,
            counters(1, Direction::ServerToClient, 9),
            Some(req),
            b"HTTP",
        ),
        t,
        &mut out,
    );
    let msgs = messages(&out);
    assert_eq!(msgs.len(), 1);
    assert!(msgs.iter().all(|m| m.wire.is_none()), "{msgs:?}");
    assert!(
        out.iter().all(|r| !matches!(&r.kind,
            Some(record::Kind::FlowStart(fs)) if fs.wire_point.is_some())),
        "no wire point announced: {out:?}"
    );
}
