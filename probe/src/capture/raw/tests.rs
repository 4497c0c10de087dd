//! Kernel bytes to typed values: round trips, and malformed input rejected without a panic.

use super::testing::*;
use super::*;

fn start_event(payload: &[u8], prev: Option<MsgCounters>) -> MsgStart {
    MsgStart {
        key: v4_key(),
        flow_id: 0x0100_0000_0000_0001,
        msg: counters(1, Direction::ServerToClient, 17),
        prev,
        protocol: ProtocolHint::Http,
        payload: Bytes::copy_from_slice(payload),
        socket: None,
        counters_only: false,
        wire: None,
    }
}

#[test]
fn msg_start_round_trips_with_prev_and_payload() {
    let ev = start_event(
        b"HTTP/1.1 200 OK\r\n",
        Some(counters(0, Direction::ClientToServer, 80)),
    );
    let bytes = msg_start_bytes(&ev);
    assert_eq!(
        bytes.len(),
        MSG_START_HEADER + 17,
        "kernel sends header + snap only"
    );
    let parsed =
        Event::try_from(&bytes[..]).unwrap_or_else(|e| panic!("valid MSG_START rejected: {e}"));
    assert_eq!(
        parsed,
        Event::MsgStart(ev),
        "MSG_START must parse back to what was encoded"
    );
}

#[test]
fn ipv6_keys_round_trip_and_v4_keys_are_mapped() {
    let v6 = v6_key();
    let back = ConnectionKey::try_from(&raw_key(&v6)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, v6, "IPv6 key must round-trip");
    let raw4 = v4_key().to_raw();
    assert_eq!(
        &raw4[..12],
        &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff],
        "IPv4 client stored v4-mapped, got {:?}",
        &raw4[..16]
    );
    assert_eq!(&raw4[12..16], &[10, 0, 0, 2], "v4 client address bytes");
}

#[test]
fn v4_family_with_unmapped_address_is_rejected() {
    let mut raw = raw_key(&v4_key());
    raw.client_ip = [0xfd; 16];
    let err = ConnectionKey::try_from(&raw);
    assert!(
        err.is_err(),
        "IPv4 key with a non-mapped address must be rejected, got {err:?}"
    );
}

#[test]
fn short_and_garbage_buffers_are_errors_not_panics() {
    let full = msg_start_bytes(&start_event(b"GET / HTTP/1.1\r\n", None));
    for len in [0, 1, 3, 4, 8, MSG_START_HEADER - 1] {
        assert!(
            Event::try_from(&full[..len]).is_err(),
            "{len}-byte prefix of a MSG_START must be rejected"
        );
    }
    // Header fine, but the payload claimed is longer than what arrived.
    let cut = &full[..full.len() - 1];
    assert!(
        Event::try_from(cut).is_err(),
        "truncated payload must be rejected"
    );
    let fe = flow_end_bytes(&FlowEnd {
        key: v4_key(),
        flow_id: 9,
        reason: FlowEndReason::Fin,
        ts_ns: 5,
        last: None,
        socket: None,
        tcp: None,
        wire: None,
    });
    assert!(
        Event::try_from(&fe[..fe.len() - 1]).is_err(),
        "short FLOW_END must be rejected"
    );
    let mut unknown = fe.clone();
    unknown[0] = 99;
    assert!(
        Event::try_from(&unknown[..]).is_err(),
        "unknown kind 99 must be rejected"
    );
    // Pseudo-random garbage of every length up to 300 bytes: never a panic.
    let mut x: u32 = 0x1234_5678;
    for len in 0..300 {
        let buf: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x.to_le_bytes()[0]
            })
            .collect();
        let _ = Event::try_from(&buf[..]);
    }
}

#[test]
fn bad_direction_and_snap_len_are_rejected() {
    let ev = start_event(b"abc", None);
    let mut bytes = msg_start_bytes(&ev);
    let dir_off = std::mem::offset_of!(abi::clovisor_msg_start, msg)
        + std::mem::offset_of!(abi::clovisor_msg, direction);
    bytes[dir_off] = 7;
    assert!(
        Event::try_from(&bytes[..]).is_err(),
        "direction 7 must be rejected"
    );
    let mut bytes = msg_start_bytes(&ev);
    let snap_off = std::mem::offset_of!(abi::clovisor_msg_start, snap_len);
    bytes[snap_off..snap_off + 4].copy_from_slice(&5000u32.to_ne_bytes());
    assert!(
        Event::try_from(&bytes[..]).is_err(),
        "snap_len 5000 > MAX_SNAPLEN must be rejected"
    );
}

#[test]
fn flow_end_round_trips() {
    let ev = FlowEnd {
        key: v4_key(),
        flow_id: 77,
        reason: FlowEndReason::Rst,
        ts_ns: 123,
        last: Some(counters(3, Direction::ServerToClient, 1_000_000)),
        socket: None,
        tcp: None,
        wire: None,
    };
    let parsed = Event::try_from(&flow_end_bytes(&ev)[..]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(parsed, Event::FlowEnd(ev), "FLOW_END must parse back");
}

#[test]
fn connection_state_reads_current_message() {
    let c = counters(2, Direction::ClientToServer, 99);
    let s = ConnectionState::try_from(&connection_bytes(5, Some(&c))[..])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        s,
        ConnectionState {
            flow_id: 5,
            cur: Some(c),
            before: None,
        },
        "connection value must parse"
    );
    let empty =
        ConnectionState::try_from(&connection_bytes(6, None)[..]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        empty.cur, None,
        "a connection before any payload has no current message"
    );
    assert!(
        ConnectionState::try_from(&[0u8; 3][..]).is_err(),
        "3-byte connection value must be rejected"
    );
}

fn socket_start(payload: &[u8], side: SocketSide) -> MsgStart {
    MsgStart {
        key: ConnectionKey {
            ifindex: 0,
            ..v4_key()
        },
        flow_id: abi::CLOVISOR_SOCK_FLOW_ID_BIT as u64 | 0x0100_0000_0000_0007,
        socket: Some(owner(side)),
        ..start_event(payload, Some(counters(0, Direction::ClientToServer, 80)))
    }
}

#[test]
fn socket_msg_start_round_trips_with_its_owner() {
    let ev = socket_start(b"HTTP/1.1 200 OK\r\n", SocketSide::Server);
    let bytes = msg_start_bytes(&ev);
    assert_eq!(
        bytes.len(),
        MSG_START_HEADER + 17,
        "kernel sends header (with the owner) + snap only"
    );
    let parsed = Event::try_from(&bytes[..])
        .unwrap_or_else(|e| panic!("valid socket MSG_START rejected: {e}"));
    assert_eq!(
        parsed,
        Event::MsgStart(ev),
        "must parse back with its owner"
    );
}

fn exchange(socket: Option<SocketOwner>) -> Exchange {
    Exchange {
        key: v4_key(),
        flow_id: 0x0100_0000_0000_0009,
        protocol: ProtocolHint::Http,
        socket,
        before: Some(counters(1, Direction::ServerToClient, 300)),
        request: counters(2, Direction::ClientToServer, 40),
        request_payload: Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"),
        response: counters(3, Direction::ServerToClient, 200),
        response_payload: Bytes::from_static(b"HTTP/1.1 200 OK\r\n"),
        head_lost: false,
        counters_only: false,
        wire: None,
    }
}

#[test]
fn exchange_round_trips_and_stands_for_two_message_starts() {
    for socket in [None, Some(owner(SocketSide::Server))] {
        let ev = exchange(socket);
        let bytes = exchange_bytes(&ev);
        assert_eq!(
            bytes.len(),
            EXCHANGE_HEADER + 18 + 17,
            "kernel sends header + both snaps only"
        );
        let parsed =
            Event::try_from(&bytes[..]).unwrap_or_else(|e| panic!("valid EXCHANGE rejected: {e}"));
        assert_eq!(
            parsed,
            Event::Exchange(ev.clone()),
            "EXCHANGE must parse back"
        );
        let (req, resp) = ev.clone().into_starts();
        assert_eq!(
            (req.msg, req.prev, &req.payload[..]),
            (ev.request, ev.before, &ev.request_payload[..]),
            "the request starts after the message before it"
        );
        assert_eq!(
            (resp.msg, resp.prev, &resp.payload[..]),
            (ev.response, Some(ev.request), &ev.response_payload[..]),
            "the response starts after the request, final"
        );
    }
}

#[test]
fn bad_exchanges_are_errors_not_panics() {
    let good = exchange_bytes(&exchange(None));
    for len in [4, 8, EXCHANGE_HEADER - 1, good.len() - 1] {
        assert!(
            Event::try_from(&good[..len]).is_err(),
            "{len}-byte prefix of an EXCHANGE must be rejected"
        );
    }
    let len_off = std::mem::offset_of!(abi::clovisor_exchange, request_len);
    let mut too_long = good.clone();
    too_long[len_off..len_off + 4].copy_from_slice(&5000u32.to_ne_bytes());
    assert!(
        Event::try_from(&too_long[..]).is_err(),
        "request_len 5000 > MAX_SNAPLEN must be rejected"
    );
}

#[test]
fn socket_flow_end_round_trips_with_its_owner() {
    let ev = FlowEnd {
        key: v4_key(),
        flow_id: abi::CLOVISOR_SOCK_FLOW_ID_BIT as u64 | 3,
        reason: FlowEndReason::Fin,
        ts_ns: 77,
        last: Some(counters(1, Direction::ServerToClient, 500)),
        socket: Some(owner(SocketSide::Client)),
        tcp: Some(TcpHealth {
            srtt_us: 1234,
            total_retransmits: 2,
        }),
        wire: None,
    };
    let parsed = Event::try_from(&flow_end_bytes(&ev)[..])
        .unwrap_or_else(|e| panic!("valid socket FLOW_END rejected: {e}"));
    assert_eq!(parsed, Event::FlowEnd(ev), "must parse back with its owner");
}

#[test]
fn bad_socket_events_are_errors_not_panics() {
    let good = msg_start_bytes(&socket_start(b"GET / HTTP/1.1\r\n", SocketSide::Client));
    let owner_off = std::mem::offset_of!(abi::clovisor_event_hdr, owner);
    for len in [
        4,
        8,
        owner_off + 10,
        MSG_START_HEADER - 1,
        MSG_START_HEADER + 3,
    ] {
        assert!(
            Event::try_from(&good[..len]).is_err(),
            "{len}-byte prefix of a socket MSG_START must be rejected"
        );
    }
    let side_off = owner_off + std::mem::offset_of!(abi::clovisor_owner, side);
    let mut bad_side = good.clone();
    bad_side[side_off] = 9;
    assert!(
        Event::try_from(&bad_side[..]).is_err(),
        "socket side 9 must be rejected"
    );
    let point_off = std::mem::offset_of!(abi::clovisor_event_hdr, point);
    let mut bad_point = good.clone();
    bad_point[point_off] = 7;
    assert!(
        Event::try_from(&bad_point[..]).is_err(),
        "observation point 7 must be rejected"
    );
}

#[test]
fn comm_is_cut_at_its_nul_and_non_utf8_survives() {
    let mut raw = raw_owner(&owner(SocketSide::Server));
    raw.comm = *b"curl\0garbage\0\0\0\0";
    let o = SocketOwner::try_from(&raw).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(o.comm.as_bytes(), b"curl", "comm ends at the first NUL");
    raw.comm = [0xff; 16];
    let o = SocketOwner::try_from(&raw).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        o.comm.to_string_lossy().chars().count(),
        16,
        "16 bytes without NUL, lossy: {:?}",
        o.comm
    );
}

#[test]
fn socket_connection_state_reads_current_message() {
    let c = counters(4, Direction::ServerToClient, 1234);
    let mut raw = abi::clovisor_sock_conn::new_zeroed();
    raw.flow_id = 99;
    raw.cur = raw_msg(&c);
    let s = ConnectionState::from_sock_connection(raw.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        s,
        ConnectionState {
            flow_id: 99,
            cur: Some(c),
            before: None,
        },
        "socket connection value"
    );
    assert!(
        ConnectionState::from_sock_connection(&raw.as_bytes()[..10]).is_err(),
        "short socket connection value must be rejected"
    );
}

#[test]
fn protocol_hint_numbering_matches_the_proto() {
    for (c, p) in [
        (abi::CLOVISOR_PROTO_UNSPECIFIED, ProtocolHint::Unspecified),
        (abi::CLOVISOR_PROTO_HTTP, ProtocolHint::Http),
        (abi::CLOVISOR_PROTO_HTTP2, ProtocolHint::Http2),
        (abi::CLOVISOR_PROTO_GRPC, ProtocolHint::Grpc),
        (abi::CLOVISOR_PROTO_TCP, ProtocolHint::Tcp),
        (abi::CLOVISOR_PROTO_REDIS, ProtocolHint::Redis),
    ] {
        assert_eq!(c, p as u32, "C value {c} must equal ProtocolHint::{p:?}");
        assert_eq!(
            protocol_hint(hint_value(p)),
            p,
            "{p:?} must survive the map value"
        );
    }
    assert_eq!(
        abi::CLOVISOR_END_FIN,
        FlowEndReason::Fin as u32,
        "FIN numbering"
    );
    assert_eq!(
        abi::CLOVISOR_END_RST,
        FlowEndReason::Rst as u32,
        "RST numbering"
    );
}

/// A socket record of a pod whose veth is carried brings the veth's counters: parsed back
/// whole in every kind of record that has them; a wire entry that is no message (no
/// direction) is left out, not the record; without the flag there is no wire.
#[test]
fn socket_records_carry_their_veths_counters() {
    let seq = |tcp_seq: u32, m: MsgCounters| MsgCounters { tcp_seq, ..m };
    let wire = Wire {
        ifindex: 7,
        msgs: [
            Some(seq(500, counters(1, Direction::ServerToClient, 300))),
            Some(seq(100, counters(2, Direction::ClientToServer, 40))),
            None,
        ],
    };
    let ex = Exchange {
        wire: Some(wire),
        ..exchange(Some(owner(SocketSide::Server)))
    };
    let parsed = Event::try_from(&exchange_bytes(&ex)[..])
        .unwrap_or_else(|e| panic!("EXCHANGE with wire rejected: {e}"));
    assert_eq!(parsed, Event::Exchange(ex.clone()));
    let (req, resp) = ex.into_starts();
    assert_eq!(
        (req.wire, resp.wire),
        (Some(wire), Some(wire)),
        "both starts have it"
    );
    assert_eq!(
        wire.find(&seq(100, counters(5, Direction::ClientToServer, 999))),
        wire.msgs[1],
        "found by direction and sequence number, whatever the socket counted"
    );
    assert_eq!(
        wire.find(&seq(100, counters(2, Direction::ServerToClient, 40))),
        None,
        "another direction is another message"
    );

    let start = MsgStart {
        wire: Some(wire),
        ..socket_start(b"GET / HTTP/1.1\r\n", SocketSide::Server)
    };
    let bytes = msg_start_bytes(&start);
    let parsed = Event::try_from(&bytes[..]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(parsed, Event::MsgStart(start.clone()));
    // The third entry counted but without a direction: dropped alone.
    let count_off = std::mem::offset_of!(abi::clovisor_msg_start, wire)
        + std::mem::offset_of!(abi::clovisor_wire, count);
    let mut bad = bytes.clone();
    bad[count_off] = 3;
    assert_eq!(
        Event::try_from(&bad[..]).ok(),
        Some(Event::MsgStart(start.clone())),
        "an entry that is no message is left out"
    );
    let flags_off = std::mem::offset_of!(abi::clovisor_event_hdr, flags);
    let mut unflagged = bytes;
    unflagged[flags_off] &= !(abi::CLOVISOR_EV_HAS_WIRE as u8);
    assert_eq!(
        Event::try_from(&unflagged[..]).ok(),
        Some(Event::MsgStart(MsgStart {
            wire: None,
            ..start
        })),
        "without the flag, no wire"
    );

    let end = FlowEnd {
        key: v4_key(),
        flow_id: abi::CLOVISOR_SOCK_FLOW_ID_BIT as u64 | 3,
        reason: FlowEndReason::Fin,
        ts_ns: 77,
        last: Some(counters(3, Direction::ServerToClient, 500)),
        socket: Some(owner(SocketSide::Server)),
        tcp: Some(TcpHealth::default()),
        wire: Some(wire),
    };
    let parsed = Event::try_from(&flow_end_bytes(&end)[..]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(parsed, Event::FlowEnd(end));
}
