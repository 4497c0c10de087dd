//! Kernel-shaped bytes built from typed values: what the BPF programs would send, for tests.

use super::*;

pub fn raw_key(key: &ConnectionKey) -> abi::clovisor_conn_key {
    let bytes = key.to_raw();
    match abi::clovisor_conn_key::read_from_bytes(&bytes[..]) {
        Ok(k) => k,
        Err(_) => panic!("key of {} bytes must read back", bytes.len()),
    }
}

pub fn raw_msg(m: &MsgCounters) -> abi::clovisor_msg {
    let mut r = abi::clovisor_msg::new_zeroed();
    r.start_ns = m.start_ns;
    r.last_ns = m.last_ns;
    r.bytes = m.bytes;
    r.packets = m.packets;
    r.retransmits = m.retransmits;
    r.tcp_seq = m.tcp_seq;
    r.index = m.index;
    r.direction = match m.direction {
        Direction::ClientToServer => abi::CLOVISOR_DIR_CLIENT_TO_SERVER as u8,
        Direction::ServerToClient => abi::CLOVISOR_DIR_SERVER_TO_CLIENT as u8,
        Direction::Unspecified => 0,
    };
    r.to_pod = u8::from(m.to_pod);
    r
}

/// A record header as the kernel writes it.
pub fn raw_hdr(
    kind: u32,
    key: &ConnectionKey,
    flow_id: u64,
    protocol: ProtocolHint,
    flags: u32,
    socket: Option<&SocketOwner>,
) -> abi::clovisor_event_hdr {
    let mut h = abi::clovisor_event_hdr::new_zeroed();
    h.kind = kind;
    h.point = if socket.is_some() {
        abi::CLOVISOR_POINT_SOCKET as u8
    } else {
        abi::CLOVISOR_POINT_TC as u8
    };
    h.protocol = hint_value(protocol);
    h.flags = flags as u8;
    h.flow_id = flow_id;
    h.key = raw_key(key);
    if let Some(o) = socket {
        h.owner = raw_owner(o);
    }
    h
}

/// A socket record's `wire` as the kernel writes it, and its header flag.
pub fn raw_wire(w: Option<&Wire>) -> (abi::clovisor_wire, u32) {
    let mut r = abi::clovisor_wire::new_zeroed();
    let Some(w) = w else {
        return (r, 0);
    };
    r.ifindex = w.ifindex;
    let mut n = 0;
    for m in w.msgs.iter().flatten() {
        r.msgs[n] = raw_msg(m);
        n += 1;
    }
    r.count = n as u8;
    (r, abi::CLOVISOR_EV_HAS_WIRE)
}

/// MSG_START bytes as the kernel sends them (header + captured payload only).
pub fn msg_start_bytes(ev: &MsgStart) -> Vec<u8> {
    let mut r = abi::clovisor_msg_start::new_zeroed();
    let flags = if ev.prev.is_some() {
        abi::CLOVISOR_EV_HAS_PREV
    } else {
        0
    };
    r.hdr = raw_hdr(
        abi::CLOVISOR_EVENT_MSG_START,
        &ev.key,
        ev.flow_id,
        ev.protocol,
        flags,
        ev.socket.as_ref(),
    );
    r.snap_len = u32::try_from(ev.payload.len()).unwrap_or(u32::MAX);
    let (wire, flag) = raw_wire(ev.wire.as_ref());
    r.wire = wire;
    r.hdr.flags |= flag as u8;
    r.msg = raw_msg(&ev.msg);
    if let Some(p) = &ev.prev {
        r.prev = raw_msg(p);
    }
    r.payload[..ev.payload.len()].copy_from_slice(&ev.payload);
    r.as_bytes()[..MSG_START_HEADER + ev.payload.len()].to_vec()
}

/// EXCHANGE bytes as the kernel sends them (header + both captured payloads only).
pub fn exchange_bytes(ev: &Exchange) -> Vec<u8> {
    let mut r = abi::clovisor_exchange::new_zeroed();
    let mut flags = 0;
    if ev.before.is_some() {
        flags |= abi::CLOVISOR_EV_HAS_PREV;
    }
    if ev.head_lost {
        flags |= abi::CLOVISOR_EV_HEAD_LOST;
    }
    r.hdr = raw_hdr(
        abi::CLOVISOR_EVENT_EXCHANGE,
        &ev.key,
        ev.flow_id,
        ev.protocol,
        flags,
        ev.socket.as_ref(),
    );
    if let Some(b) = &ev.before {
        r.before = raw_msg(b);
    }
    r.request = raw_msg(&ev.request);
    r.response = raw_msg(&ev.response);
    let (wire, flag) = raw_wire(ev.wire.as_ref());
    r.wire = wire;
    r.hdr.flags |= flag as u8;
    let (req, resp) = (ev.request_payload.len(), ev.response_payload.len());
    r.request_len = u32::try_from(req).unwrap_or(u32::MAX);
    r.response_len = u32::try_from(resp).unwrap_or(u32::MAX);
    r.payload[..req].copy_from_slice(&ev.request_payload);
    r.payload[req..req + resp].copy_from_slice(&ev.response_payload);
    r.as_bytes()[..EXCHANGE_HEADER + req + resp].to_vec()
}

pub fn flow_end_bytes(ev: &FlowEnd) -> Vec<u8> {
    let mut r = abi::clovisor_flow_end::new_zeroed();
    let flags = if ev.last.is_some() {
        abi::CLOVISOR_EV_HAS_PREV
    } else {
        0
    };
    r.hdr = raw_hdr(
        abi::CLOVISOR_EVENT_FLOW_END,
        &ev.key,
        ev.flow_id,
        ProtocolHint::Unspecified,
        flags,
        ev.socket.as_ref(),
    );
    r.hdr.reason = match ev.reason {
        FlowEndReason::Rst => abi::CLOVISOR_END_RST as u8,
        _ => abi::CLOVISOR_END_FIN as u8,
    };
    r.ts_ns = ev.ts_ns;
    if let Some(l) = &ev.last {
        r.last = raw_msg(l);
    }
    let tcp = ev.tcp.unwrap_or_default();
    r.srtt_us = tcp.srtt_us;
    r.total_retrans = tcp.total_retransmits;
    let (wire, flag) = raw_wire(ev.wire.as_ref());
    r.wire = wire;
    r.hdr.flags |= flag as u8;
    r.as_bytes().to_vec()
}

pub fn raw_owner(o: &SocketOwner) -> abi::clovisor_owner {
    let mut r = abi::clovisor_owner::new_zeroed();
    r.sock_id = o.sock_id;
    r.pid = o.pid;
    r.tid = o.tid;
    r.netns = o.netns;
    r.side = match o.side {
        SocketSide::Client => abi::CLOVISOR_SIDE_CLIENT as u8,
        SocketSide::Server => abi::CLOVISOR_SIDE_SERVER as u8,
    };
    let n = o.comm.as_bytes().len();
    r.comm[..n].copy_from_slice(o.comm.as_bytes());
    r
}

pub fn owner(side: SocketSide) -> SocketOwner {
    SocketOwner {
        sock_id: 0xffff_8880_1234_5678,
        pid: 4242,
        tid: 4243,
        netns: 4_026_532_001,
        comm: "nginx".into(),
        side,
    }
}

pub fn connection_bytes(flow_id: u64, cur: Option<&MsgCounters>) -> RawConnection {
    let mut r = abi::clovisor_conn::new_zeroed();
    r.flow_id = flow_id;
    if let Some(c) = cur {
        r.cur = raw_msg(c);
    }
    let mut out = [0u8; CONNECTION_LEN];
    out.copy_from_slice(r.as_bytes());
    out
}

pub fn v4_key() -> ConnectionKey {
    ConnectionKey {
        client: "10.0.0.2:40000".parse().unwrap_or_else(|e| panic!("{e}")),
        server: "10.0.0.1:8080".parse().unwrap_or_else(|e| panic!("{e}")),
        ifindex: 7,
    }
}

pub fn v6_key() -> ConnectionKey {
    ConnectionKey {
        client: "[fd00::2]:50000".parse().unwrap_or_else(|e| panic!("{e}")),
        server: "[fd00::1]:80".parse().unwrap_or_else(|e| panic!("{e}")),
        ifindex: 3,
    }
}

pub fn counters(index: u32, direction: Direction, bytes: u64) -> MsgCounters {
    MsgCounters {
        start_ns: 1_000 + u64::from(index) * 100,
        last_ns: 1_050 + u64::from(index) * 100,
        bytes,
        packets: 1,
        retransmits: 0,
        tcp_seq: 42,
        index,
        direction,
        to_pod: direction == Direction::ClientToServer,
    }
}
