//! The one place where ring buffer bytes and map values become typed values.
//!
//! Every record is size-checked and read through zerocopy (no `unsafe`, no hand-mirrored
//! layout); enum values the kernel sent are checked, never trusted.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use clovisor_proto::capture::v1::{
    Direction, FlowEndReason, FlowKey, ObservationPoint, PointKind, ProtocolHint, Transport,
};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use super::abi;
use crate::error::{Error, Result};

/// Size of a connection map key, as the kernel lays it out.
pub const CONNECTION_KEY_LEN: usize = std::mem::size_of::<abi::clovisor_conn_key>();
/// Size of a connection map value.
pub const CONNECTION_LEN: usize = std::mem::size_of::<abi::clovisor_conn>();
/// Raw connection map key, the unit aya reads and writes.
pub type RawConnectionKey = [u8; CONNECTION_KEY_LEN];
/// Raw connection map value.
pub type RawConnection = [u8; CONNECTION_LEN];

fn bad(reason: impl Into<String>) -> Error {
    Error::RawEvent {
        reason: reason.into(),
    }
}

/// One TCP connection at one interface, oriented by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionKey {
    /// The side whose port is not traced.
    pub client: SocketAddr,
    /// The side whose port is traced.
    pub server: SocketAddr,
    /// Interface the packets were seen on.
    pub ifindex: u32,
}

impl ConnectionKey {
    /// The flow key of the wire contract.
    pub fn to_flow_key(&self) -> FlowKey {
        FlowKey {
            client_ip: ip_bytes(self.client.ip()),
            server_ip: ip_bytes(self.server.ip()),
            client_port: u32::from(self.client.port()),
            server_port: u32::from(self.server.port()),
            transport: Transport::Tcp as i32,
        }
    }

    /// The kernel's key bytes, for looking the connection up in the LRU map.
    pub fn to_raw(&self) -> RawConnectionKey {
        let mut raw = abi::clovisor_conn_key::new_zeroed();
        raw.client_ip = mapped(self.client.ip());
        raw.server_ip = mapped(self.server.ip());
        raw.ifindex = self.ifindex;
        raw.client_port = self.client.port();
        raw.server_port = self.server.port();
        raw.family = match self.client.ip() {
            IpAddr::V4(_) => abi::CLOVISOR_FAMILY_IPV4 as u8,
            IpAddr::V6(_) => abi::CLOVISOR_FAMILY_IPV6 as u8,
        };
        let mut out = [0u8; CONNECTION_KEY_LEN];
        out.copy_from_slice(raw.as_bytes());
        out
    }
}

/// An address as the kernel keys it: 16 bytes in network order, IPv4 v4-mapped.
pub fn ip16(ip: IpAddr) -> [u8; 16] {
    mapped(ip)
}

pub(crate) fn mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

impl TryFrom<&abi::clovisor_conn_key> for ConnectionKey {
    type Error = Error;

    fn try_from(raw: &abi::clovisor_conn_key) -> Result<Self> {
        let ip = |b: [u8; 16]| -> Result<IpAddr> {
            match u32::from(raw.family) {
                abi::CLOVISOR_FAMILY_IPV4 => {
                    let v6 = Ipv6Addr::from(b);
                    v6.to_ipv4_mapped().map(IpAddr::V4).ok_or_else(|| {
                        bad(format!("IPv4 connection with non-v4-mapped address {v6}"))
                    })
                }
                abi::CLOVISOR_FAMILY_IPV6 => Ok(IpAddr::V6(Ipv6Addr::from(b))),
                other => Err(bad(format!("unknown address family {other}"))),
            }
        };
        Ok(Self {
            client: SocketAddr::new(ip(raw.client_ip)?, raw.client_port),
            server: SocketAddr::new(ip(raw.server_ip)?, raw.server_port),
            ifindex: raw.ifindex,
        })
    }
}

/// Counters of one message, as the kernel kept them (boot-time ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsgCounters {
    /// First packet, boot-time ns.
    pub start_ns: u64,
    /// Latest packet, boot-time ns.
    pub last_ns: u64,
    /// Payload bytes, retransmissions not counted.
    pub bytes: u64,
    /// Packets (GSO segments counted one by one).
    pub packets: u32,
    /// Retransmitted packets.
    pub retransmits: u32,
    /// TCP sequence number of the first byte.
    pub tcp_seq: u32,
    /// 0-based position in the flow.
    pub index: u32,
    /// Client->server or server->client.
    pub direction: Direction,
    /// The bytes travelled towards the pod.
    pub to_pod: bool,
}

impl TryFrom<&abi::clovisor_msg> for MsgCounters {
    type Error = Error;

    fn try_from(raw: &abi::clovisor_msg) -> Result<Self> {
        let direction = match u32::from(raw.direction) {
            abi::CLOVISOR_DIR_CLIENT_TO_SERVER => Direction::ClientToServer,
            abi::CLOVISOR_DIR_SERVER_TO_CLIENT => Direction::ServerToClient,
            other => return Err(bad(format!("unknown message direction {other}"))),
        };
        Ok(Self {
            start_ns: raw.start_ns,
            last_ns: raw.last_ns,
            bytes: raw.bytes,
            packets: raw.packets,
            retransmits: raw.retransmits,
            tcp_seq: raw.tcp_seq,
            index: raw.index,
            direction,
            to_pod: raw.to_pod != 0,
        })
    }
}

/// The first packet of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsgStart {
    /// The connection.
    pub key: ConnectionKey,
    /// Connection instance id.
    pub flow_id: u64,
    /// The new message, counters as of its first packet.
    pub msg: MsgCounters,
    /// The previous message of the flow, final.
    pub prev: Option<MsgCounters>,
    /// Configured protocol of the server port.
    pub protocol: ProtocolHint,
    /// The first bytes of the message.
    pub payload: Vec<u8>,
    /// Seen at a socket: who sent or received the message; `None` at an interface.
    pub socket: Option<SocketOwner>,
}

/// A flow ended (FIN or RST).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowEnd {
    /// The connection.
    pub key: ConnectionKey,
    /// Connection instance id.
    pub flow_id: u64,
    /// FIN or RST.
    pub reason: FlowEndReason,
    /// When, boot-time ns.
    pub ts_ns: u64,
    /// The last message, final.
    pub last: Option<MsgCounters>,
    /// Seen at a socket: the owner of the socket; `None` at an interface.
    pub socket: Option<SocketOwner>,
    /// Seen at a socket: the kernel's smoothed RTT (µs) and retransmitted segments at close.
    pub tcp: Option<TcpHealth>,
}

/// What the kernel knew about a connection's health when it closed (socket point).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpHealth {
    /// Smoothed round-trip time, µs; 0 if never measured.
    pub srtt_us: u32,
    /// Segments retransmitted over the connection's life.
    pub total_retransmits: u32,
}

/// A ring buffer record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// See [`MsgStart`].
    MsgStart(MsgStart),
    /// See [`FlowEnd`].
    FlowEnd(FlowEnd),
}

/// Bytes of a MSG_START before its payload.
const MSG_START_HEADER: usize = std::mem::offset_of!(abi::clovisor_msg_start, payload);

/// The traced_ports map value back into a ProtocolHint.
pub fn protocol_hint(raw: u8) -> ProtocolHint {
    // Unknown values (a newer BPF object) degrade to "unspecified" rather than failing
    // the record: the collector sniffs the protocol anyway.
    ProtocolHint::try_from(i32::from(raw)).unwrap_or(ProtocolHint::Unspecified)
}

impl TryFrom<&[u8]> for Event {
    type Error = Error;

    fn try_from(bytes: &[u8]) -> Result<Self> {
        let (kind, _) = u32::read_from_prefix(bytes)
            .map_err(|_| bad(format!("{} bytes: too short for a kind", bytes.len())))?;
        match kind {
            abi::CLOVISOR_EVENT_MSG_START => {
                if bytes.len() < MSG_START_HEADER {
                    return Err(bad(format!(
                        "MSG_START of {} bytes, header alone is {MSG_START_HEADER}",
                        bytes.len()
                    )));
                }
                // The kernel sends only the captured part of payload[]: pad the rest so
                // the fixed-size struct can be read.
                let mut full = abi::clovisor_msg_start::new_zeroed();
                let n = bytes
                    .len()
                    .min(std::mem::size_of::<abi::clovisor_msg_start>());
                full.as_mut_bytes()[..n].copy_from_slice(&bytes[..n]);
                let snap = usize::try_from(full.snap_len).unwrap_or(usize::MAX);
                if snap > full.payload.len() || MSG_START_HEADER + snap > bytes.len() {
                    return Err(bad(format!(
                        "MSG_START claims {snap} payload bytes, record has {}",
                        bytes.len().saturating_sub(MSG_START_HEADER)
                    )));
                }
                Ok(Event::MsgStart(MsgStart {
                    key: ConnectionKey::try_from(&full.key)?,
                    flow_id: full.flow_id,
                    msg: MsgCounters::try_from(&full.msg)?,
                    prev: if full.has_prev != 0 {
                        Some(MsgCounters::try_from(&full.prev)?)
                    } else {
                        None
                    },
                    protocol: protocol_hint(full.protocol),
                    payload: full.payload[..snap].to_vec(),
                    socket: None,
                }))
            }
            abi::CLOVISOR_EVENT_FLOW_END => {
                let (raw, _) = abi::clovisor_flow_end::read_from_prefix(bytes).map_err(|_| {
                    bad(format!(
                        "FLOW_END of {} bytes, expected {}",
                        bytes.len(),
                        std::mem::size_of::<abi::clovisor_flow_end>()
                    ))
                })?;
                let reason = match u32::from(raw.reason) {
                    abi::CLOVISOR_END_FIN => FlowEndReason::Fin,
                    abi::CLOVISOR_END_RST => FlowEndReason::Rst,
                    other => return Err(bad(format!("unknown flow end reason {other}"))),
                };
                Ok(Event::FlowEnd(FlowEnd {
                    key: ConnectionKey::try_from(&raw.key)?,
                    flow_id: raw.flow_id,
                    reason,
                    ts_ns: raw.ts_ns,
                    last: if raw.has_last != 0 {
                        Some(MsgCounters::try_from(&raw.last)?)
                    } else {
                        None
                    },
                    socket: None,
                    tcp: None,
                }))
            }
            abi::CLOVISOR_EVENT_SOCK_MSG_START => {
                socket_event(bytes, SOCK_MSG_START_INNER, abi::CLOVISOR_EVENT_MSG_START)
            }
            abi::CLOVISOR_EVENT_SOCK_FLOW_END => {
                socket_event(bytes, SOCK_FLOW_END_INNER, abi::CLOVISOR_EVENT_FLOW_END)
            }
            other => Err(bad(format!("unknown event kind {other}"))),
        }
    }
}

/// Offset of the tc-shaped event inside a SOCK_MSG_START.
const SOCK_MSG_START_INNER: usize = std::mem::offset_of!(abi::clovisor_sock_msg_start, start);
/// Offset of the tc-shaped event inside a SOCK_FLOW_END.
const SOCK_FLOW_END_INNER: usize = std::mem::offset_of!(abi::clovisor_sock_flow_end, end);
const SOCK_OWNER_OFFSET: usize = std::mem::offset_of!(abi::clovisor_sock_msg_start, owner);

/// Which end of the connection a traced socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocketSide {
    /// The remote port is traced: this socket made the call.
    Client,
    /// The local port is traced: this socket answers.
    Server,
}

impl SocketSide {
    /// `client` or `server`, as the wire contracts spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            SocketSide::Client => "client",
            SocketSide::Server => "server",
        }
    }
}

/// The process behind a socket observation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SocketOwner {
    /// Key of the kernel's socket connection map (the `struct sock` address); stays in the probe.
    pub sock_id: u64,
    /// Thread group id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Network namespace inode.
    pub netns: u32,
    /// Command name (at most 15 bytes, lossy UTF-8).
    pub comm: String,
    /// Client or server end.
    pub side: SocketSide,
}

impl TryFrom<&abi::clovisor_sock_owner> for SocketOwner {
    type Error = Error;

    fn try_from(raw: &abi::clovisor_sock_owner) -> Result<Self> {
        let side = match u32::from(raw.side) {
            abi::CLOVISOR_SIDE_CLIENT => SocketSide::Client,
            abi::CLOVISOR_SIDE_SERVER => SocketSide::Server,
            other => return Err(bad(format!("unknown socket side {other}"))),
        };
        let len = raw
            .comm
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(raw.comm.len());
        Ok(Self {
            sock_id: raw.sock_id,
            pid: raw.pid,
            tid: raw.tid,
            netns: raw.netns,
            comm: String::from_utf8_lossy(&raw.comm[..len]).into_owned(),
            side,
        })
    }
}

/// Parses a socket event: the owner, then the tc-shaped event at `inner` (which must be of
/// kind `inner_kind`), tagged with the owner.
fn socket_event(bytes: &[u8], inner: usize, inner_kind: u32) -> Result<Event> {
    let owner_bytes = bytes.get(SOCK_OWNER_OFFSET..).unwrap_or_default();
    let (owner, _) = abi::clovisor_sock_owner::read_from_prefix(owner_bytes)
        .map_err(|_| bad(format!("socket event of {} bytes: no owner", bytes.len())))?;
    let owner = SocketOwner::try_from(&owner)?;
    let rest = bytes
        .get(inner..)
        .ok_or_else(|| bad(format!("socket event of {} bytes: no body", bytes.len())))?;
    let (kind, _) = u32::read_from_prefix(rest)
        .map_err(|_| bad(format!("socket event of {} bytes: no body", bytes.len())))?;
    if kind != inner_kind {
        return Err(bad(format!(
            "socket event wraps kind {kind}, expected {inner_kind}"
        )));
    }
    let mut event = Event::try_from(rest)?;
    match &mut event {
        Event::MsgStart(m) => m.socket = Some(owner),
        Event::FlowEnd(f) => {
            f.socket = Some(owner);
            let (head, _) = abi::clovisor_sock_flow_end::read_from_prefix(bytes)
                .map_err(|_| bad(format!("socket flow end of {} bytes", bytes.len())))?;
            f.tcp = Some(TcpHealth {
                srtt_us: head.srtt_us,
                total_retransmits: head.total_retrans,
            });
        }
    }
    Ok(event)
}

/// A connection as currently held in the kernel's LRU map (for idle flushes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionState {
    /// Connection instance id.
    pub flow_id: u64,
    /// The message in progress; `None` before the first payload.
    pub cur: Option<MsgCounters>,
}

impl TryFrom<&[u8]> for ConnectionState {
    type Error = Error;

    fn try_from(bytes: &[u8]) -> Result<Self> {
        let (raw, _) = abi::clovisor_conn::read_from_prefix(bytes).map_err(|_| {
            bad(format!(
                "connection value of {} bytes, expected {CONNECTION_LEN}",
                bytes.len()
            ))
        })?;
        Self::of(raw.flow_id, &raw.cur)
    }
}

impl ConnectionState {
    /// Reads a value of the socket program's `sock_connections` map.
    pub fn from_sock_connection(bytes: &[u8]) -> Result<Self> {
        let (raw, _) = abi::clovisor_sock_conn::read_from_prefix(bytes).map_err(|_| {
            bad(format!(
                "socket connection value of {} bytes, expected {SOCK_CONNECTION_LEN}",
                bytes.len()
            ))
        })?;
        Self::of(raw.flow_id, &raw.cur)
    }

    /// Either connection kind's flow id and message in progress (none before the first payload).
    fn of(flow_id: u64, cur: &abi::clovisor_msg) -> Result<Self> {
        Ok(Self {
            flow_id,
            cur: if u32::from(cur.direction) == abi::CLOVISOR_DIR_NONE {
                None
            } else {
                Some(MsgCounters::try_from(cur)?)
            },
        })
    }
}

/// Size of a socket connection map value.
pub const SOCK_CONNECTION_LEN: usize = std::mem::size_of::<abi::clovisor_sock_conn>();
/// Raw socket connection map value.
pub type RawSockConnection = [u8; SOCK_CONNECTION_LEN];

/// A socket observation point.
pub fn socket_point(owner: &SocketOwner, node: &str) -> ObservationPoint {
    ObservationPoint {
        kind: PointKind::Socket as i32,
        node: node.to_owned(),
        pid: owner.pid,
        comm: owner.comm.clone(),
        netns_inode: u64::from(owner.netns),
        side: owner.side.as_str().to_owned(),
        ..ObservationPoint::default()
    }
}

/// A tc observation point (pod veth or node interface).
pub fn point(kind: PointKind, ifindex: u32, interface: &str, node: &str) -> ObservationPoint {
    ObservationPoint {
        kind: kind as i32,
        ifindex,
        interface: interface.to_owned(),
        node: node.to_owned(),
        ..ObservationPoint::default()
    }
}

/// Turns ProtocolHint into the traced_ports map value.
pub fn hint_value(hint: ProtocolHint) -> u8 {
    // ProtocolHint values are 0..=5 by contract; anything larger cannot be represented
    // by the kernel side and is sent as unspecified.
    u8::try_from(hint as i32).unwrap_or(0)
}

/// Test helpers that build kernel-shaped records.
#[cfg(test)]
pub(crate) mod testing {
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

    /// MSG_START bytes as the kernel sends them (header + captured payload only).
    pub fn msg_start_bytes(ev: &MsgStart) -> Vec<u8> {
        let mut r = abi::clovisor_msg_start::new_zeroed();
        r.kind = abi::CLOVISOR_EVENT_MSG_START;
        r.snap_len = u32::try_from(ev.payload.len()).unwrap_or(u32::MAX);
        r.key = raw_key(&ev.key);
        r.flow_id = ev.flow_id;
        r.msg = raw_msg(&ev.msg);
        if let Some(p) = &ev.prev {
            r.prev = raw_msg(p);
            r.has_prev = 1;
        }
        r.protocol = hint_value(ev.protocol);
        r.payload[..ev.payload.len()].copy_from_slice(&ev.payload);
        r.as_bytes()[..MSG_START_HEADER + ev.payload.len()].to_vec()
    }

    pub fn flow_end_bytes(ev: &FlowEnd) -> Vec<u8> {
        let mut r = abi::clovisor_flow_end::new_zeroed();
        r.kind = abi::CLOVISOR_EVENT_FLOW_END;
        r.reason = match ev.reason {
            FlowEndReason::Rst => abi::CLOVISOR_END_RST as u8,
            _ => abi::CLOVISOR_END_FIN as u8,
        };
        r.key = raw_key(&ev.key);
        r.flow_id = ev.flow_id;
        r.ts_ns = ev.ts_ns;
        if let Some(l) = &ev.last {
            r.last = raw_msg(l);
            r.has_last = 1;
        }
        r.as_bytes().to_vec()
    }

    pub fn raw_owner(o: &SocketOwner) -> abi::clovisor_sock_owner {
        let mut r = abi::clovisor_sock_owner::new_zeroed();
        r.sock_id = o.sock_id;
        r.pid = o.pid;
        r.tid = o.tid;
        r.netns = o.netns;
        r.side = match o.side {
            SocketSide::Client => abi::CLOVISOR_SIDE_CLIENT as u8,
            SocketSide::Server => abi::CLOVISOR_SIDE_SERVER as u8,
        };
        let n = o.comm.len().min(r.comm.len() - 1);
        r.comm[..n].copy_from_slice(&o.comm.as_bytes()[..n]);
        r
    }

    /// SOCK_MSG_START bytes as the kernel sends them: the owner, then a MSG_START.
    pub fn sock_msg_start_bytes(ev: &MsgStart) -> Vec<u8> {
        let owner = ev
            .socket
            .as_ref()
            .unwrap_or_else(|| panic!("a socket event needs an owner"));
        let mut head = abi::clovisor_sock_msg_start::new_zeroed();
        head.kind = abi::CLOVISOR_EVENT_SOCK_MSG_START;
        head.owner = raw_owner(owner);
        let mut out = head.as_bytes()[..SOCK_MSG_START_INNER].to_vec();
        out.extend(msg_start_bytes(ev));
        out
    }

    /// SOCK_FLOW_END bytes as the kernel sends them.
    pub fn sock_flow_end_bytes(ev: &FlowEnd) -> Vec<u8> {
        let owner = ev
            .socket
            .as_ref()
            .unwrap_or_else(|| panic!("a socket event needs an owner"));
        let mut head = abi::clovisor_sock_flow_end::new_zeroed();
        head.kind = abi::CLOVISOR_EVENT_SOCK_FLOW_END;
        head.owner = raw_owner(owner);
        let tcp = ev.tcp.unwrap_or_default();
        head.srtt_us = tcp.srtt_us;
        head.total_retrans = tcp.total_retransmits;
        let mut out = head.as_bytes()[..SOCK_FLOW_END_INNER].to_vec();
        out.extend(flow_end_bytes(ev));
        out
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
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    fn start_event(payload: &[u8], prev: Option<MsgCounters>) -> MsgStart {
        MsgStart {
            key: v4_key(),
            flow_id: 0x0100_0000_0000_0001,
            msg: counters(1, Direction::ServerToClient, 17),
            prev,
            protocol: ProtocolHint::Http,
            payload: payload.to_vec(),
            socket: None,
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
        let v6 = ConnectionKey {
            client: "[fd00::2]:50000".parse().unwrap_or_else(|e| panic!("{e}")),
            server: "[fd00::1]:80".parse().unwrap_or_else(|e| panic!("{e}")),
            ifindex: 3,
        };
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
        let fk = v6.to_flow_key();
        assert_eq!(fk.client_ip.len(), 16, "IPv6 flow key carries 16 bytes");
        assert_eq!(
            v4_key().to_flow_key().server_ip,
            vec![10, 0, 0, 1],
            "IPv4 flow key carries 4 bytes"
        );
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
        bytes[4..8].copy_from_slice(&5000u32.to_ne_bytes());
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
                cur: Some(c)
            },
            "connection value must parse"
        );
        let empty = ConnectionState::try_from(&connection_bytes(6, None)[..])
            .unwrap_or_else(|e| panic!("{e}"));
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
        let bytes = sock_msg_start_bytes(&ev);
        assert_eq!(
            bytes.len(),
            SOCK_MSG_START_INNER + MSG_START_HEADER + 17,
            "kernel sends owner + header + snap only"
        );
        let parsed = Event::try_from(&bytes[..])
            .unwrap_or_else(|e| panic!("valid SOCK_MSG_START rejected: {e}"));
        assert_eq!(
            parsed,
            Event::MsgStart(ev),
            "must parse back with its owner"
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
        };
        let parsed = Event::try_from(&sock_flow_end_bytes(&ev)[..])
            .unwrap_or_else(|e| panic!("valid SOCK_FLOW_END rejected: {e}"));
        assert_eq!(parsed, Event::FlowEnd(ev), "must parse back with its owner");
    }

    #[test]
    fn bad_socket_events_are_errors_not_panics() {
        let good = sock_msg_start_bytes(&socket_start(b"GET / HTTP/1.1\r\n", SocketSide::Client));
        for len in [
            4,
            8,
            SOCK_OWNER_OFFSET + 10,
            SOCK_MSG_START_INNER,
            SOCK_MSG_START_INNER + 3,
        ] {
            assert!(
                Event::try_from(&good[..len]).is_err(),
                "{len}-byte prefix of a SOCK_MSG_START must be rejected"
            );
        }
        let side_off = SOCK_OWNER_OFFSET + std::mem::offset_of!(abi::clovisor_sock_owner, side);
        let mut bad_side = good.clone();
        bad_side[side_off] = 9;
        assert!(
            Event::try_from(&bad_side[..]).is_err(),
            "socket side 9 must be rejected"
        );
        // A socket wrapper around a FLOW_END where a MSG_START belongs.
        let mut wrong_inner = good.clone();
        wrong_inner[SOCK_MSG_START_INNER..SOCK_MSG_START_INNER + 4]
            .copy_from_slice(&abi::CLOVISOR_EVENT_FLOW_END.to_ne_bytes());
        assert!(
            Event::try_from(&wrong_inner[..]).is_err(),
            "a SOCK_MSG_START must wrap a MSG_START"
        );
        // A wrapper around another wrapper: never recursion on kernel input.
        let mut nested = good.clone();
        nested[SOCK_MSG_START_INNER..SOCK_MSG_START_INNER + 4]
            .copy_from_slice(&abi::CLOVISOR_EVENT_SOCK_MSG_START.to_ne_bytes());
        assert!(
            Event::try_from(&nested[..]).is_err(),
            "nested socket events must be rejected"
        );
    }

    #[test]
    fn comm_is_cut_at_its_nul_and_non_utf8_survives() {
        let mut raw = raw_owner(&owner(SocketSide::Server));
        raw.comm = *b"curl\0garbage\0\0\0\0";
        let o = SocketOwner::try_from(&raw).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o.comm, "curl", "comm ends at the first NUL");
        raw.comm = [0xff; 16];
        let o = SocketOwner::try_from(&raw).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            o.comm.chars().count(),
            16,
            "16 bytes without NUL, lossy: {:?}",
            o.comm
        );
    }

    #[test]
    fn socket_connection_state_and_point() {
        let c = counters(4, Direction::ServerToClient, 1234);
        let mut raw = abi::clovisor_sock_conn::new_zeroed();
        raw.flow_id = 99;
        raw.cur = raw_msg(&c);
        let s =
            ConnectionState::from_sock_connection(raw.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            s,
            ConnectionState {
                flow_id: 99,
                cur: Some(c)
            },
            "socket connection value"
        );
        assert!(
            ConnectionState::from_sock_connection(&raw.as_bytes()[..10]).is_err(),
            "short socket connection value must be rejected"
        );
        let p = socket_point(&owner(SocketSide::Server), "node-a");
        assert_eq!(
            (
                p.kind,
                p.pid,
                p.comm.as_str(),
                p.netns_inode,
                p.side.as_str(),
                p.node.as_str()
            ),
            (
                PointKind::Socket as i32,
                4242,
                "nginx",
                4_026_532_001,
                "server",
                "node-a"
            ),
            "socket point fields: {p:?}"
        );
        assert_eq!(p.ifindex, 0, "a socket point has no interface");
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
}
