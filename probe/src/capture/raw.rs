//! The one place where ring buffer bytes and map values become typed values (and typed values
//! the map keys and values user space writes). Building `capture.v1` records from them is the
//! assembler's ([`super::assembler::records`]).
//!
//! Every record is size-checked and read through zerocopy (no `unsafe`, no hand-mirrored
//! layout); enum values the kernel sent are checked, never trusted.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use bytes::Bytes;
use clovisor_proto::capture::v1::{Direction, FlowEndReason, ProtocolHint};
use clovisor_proto::common::v1::Side;
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
    /// The kernel's key bytes, for looking the connection up in the LRU map.
    pub fn to_raw(&self) -> RawConnectionKey {
        let mut raw = abi::clovisor_conn_key::new_zeroed();
        raw.client_ip = ip16(self.client.ip());
        raw.server_ip = ip16(self.server.ip());
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
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
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

/// What a socket's pod veth counted of the connection's latest messages, as the veth's tc
/// program kept them when the socket's record was written (`struct clovisor_wire`): the veth's
/// connection is *carried* — it sends no messages of its own — and these are its counters of
/// the socket's messages, each found by direction and sequence number ([`Wire::find`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wire {
    /// The veth (host side).
    pub ifindex: u32,
    /// Up to three messages: the one before the latest request, that request, the current one.
    pub msgs: [Option<MsgCounters>; abi::CLOVISOR_WIRE_MSGS as usize],
}

impl Wire {
    /// The veth's counters of the socket's message `msg`: the same direction, from the same
    /// sequence number.
    pub fn find(&self, msg: &MsgCounters) -> Option<MsgCounters> {
        self.msgs
            .iter()
            .flatten()
            .find(|m| m.direction == msg.direction && m.tcp_seq == msg.tcp_seq)
            .copied()
    }

    fn parse(raw: &abi::clovisor_wire) -> Self {
        let mut msgs = [None; abi::CLOVISOR_WIRE_MSGS as usize];
        let count = usize::from(raw.count).min(msgs.len());
        for (slot, m) in msgs.iter_mut().zip(&raw.msgs[..count]) {
            // An entry without a direction is not a message: left out, not the record.
            *slot = MsgCounters::try_from(m).ok();
        }
        Self {
            ifindex: raw.ifindex,
            msgs,
        }
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
    pub payload: Bytes,
    /// Seen at a socket: who sent or received the message; `None` at an interface.
    pub socket: Option<SocketOwner>,
    /// A pod veth's view of a connection the pod's socket point captures: no payload, by
    /// design (`CLOVISOR_EV_COUNTERS_ONLY`).
    pub counters_only: bool,
    /// At a socket whose pod veth is carried: the veth's counters as the record found them.
    pub wire: Option<Wire>,
}

/// A UDP datagram with payload, seen at an interface: a whole message on its own. The kernel
/// keeps no state for UDP, so it has neither a flow id nor a position: the assembler numbers
/// UDP flows and their datagrams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// Client (the side whose port is not traced) and server, and the interface.
    pub key: ConnectionKey,
    /// Counters of the datagram: its payload length, one packet, when it was seen, its
    /// direction. Index, sequence number and retransmissions are 0.
    pub msg: MsgCounters,
    /// Configured protocol of the server port.
    pub protocol: ProtocolHint,
    /// The first bytes of the datagram.
    pub payload: Bytes,
}

/// A request and the start of its response, sent by the kernel as one record (the request's
/// first bytes were held until the response started).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// The connection.
    pub key: ConnectionKey,
    /// Connection instance id.
    pub flow_id: u64,
    /// Configured protocol of the server port.
    pub protocol: ProtocolHint,
    /// Seen at a socket: who moved the bytes; `None` at an interface.
    pub socket: Option<SocketOwner>,
    /// The message before the request, final.
    pub before: Option<MsgCounters>,
    /// The request, final.
    pub request: MsgCounters,
    /// The first bytes of the request; empty when `head_lost`.
    pub request_payload: Bytes,
    /// The response, counters as of its first packet.
    pub response: MsgCounters,
    /// The first bytes of the response.
    pub response_payload: Bytes,
    /// The request's held bytes were evicted before its response came.
    pub head_lost: bool,
    /// As [`MsgStart::counters_only`].
    pub counters_only: bool,
    /// As [`MsgStart::wire`].
    pub wire: Option<Wire>,
}

impl Exchange {
    /// The two message starts the record stands for: the request (with the message before it
    /// as its `prev`) and the response (with the request, final, as its `prev`).
    pub fn into_starts(self) -> (MsgStart, MsgStart) {
        let request = MsgStart {
            key: self.key,
            flow_id: self.flow_id,
            msg: self.request,
            prev: self.before,
            protocol: self.protocol,
            payload: self.request_payload,
            socket: self.socket,
            counters_only: self.counters_only,
            wire: self.wire,
        };
        let response = MsgStart {
            key: self.key,
            flow_id: self.flow_id,
            msg: self.response,
            prev: Some(self.request),
            protocol: self.protocol,
            payload: self.response_payload,
            socket: self.socket,
            counters_only: self.counters_only,
            wire: self.wire,
        };
        (request, response)
    }
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
    /// As [`MsgStart::wire`].
    pub wire: Option<Wire>,
}

/// What the kernel knew about a connection's health when it closed (socket point).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpHealth {
    /// Smoothed round-trip time, µs; 0 if never measured.
    pub srtt_us: u32,
    /// Segments retransmitted over the connection's life.
    pub total_retransmits: u32,
}

/// Bytes of a message on a socket connection captured call by call (HTTP/2 and gRPC,
/// PostgreSQL, MySQL): up to a snaplen of one call's bytes, at their offset in the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Connection instance id.
    pub flow_id: u64,
    /// The message's position in its flow.
    pub index: u32,
    /// Offset in the message of `bytes`.
    pub offset: u64,
    /// The bytes.
    pub bytes: Bytes,
}

/// A ring buffer record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// See [`MsgStart`].
    MsgStart(MsgStart),
    /// See [`Datagram`].
    Datagram(Datagram),
    /// See [`Exchange`].
    Exchange(Exchange),
    /// See [`FlowEnd`].
    FlowEnd(FlowEnd),
    /// See [`Segment`].
    Segment(Segment),
}

/// Bytes of a MSG_START before its payload.
pub(crate) const MSG_START_HEADER: usize = std::mem::offset_of!(abi::clovisor_msg_start, payload);
/// Bytes of an EXCHANGE before its payload.
pub(crate) const EXCHANGE_HEADER: usize = std::mem::offset_of!(abi::clovisor_exchange, payload);

/// Bytes of a SEGMENT before its payload.
pub(crate) const SEGMENT_HEADER: usize = std::mem::offset_of!(abi::clovisor_segment, payload);

/// The traced_ports map value back into a ProtocolHint.
pub fn protocol_hint(raw: u8) -> ProtocolHint {
    // Unknown values (a newer BPF object) degrade to "unspecified" rather than failing
    // the record: the collector sniffs the protocol anyway.
    ProtocolHint::try_from(i32::from(raw)).unwrap_or(ProtocolHint::Unspecified)
}

/// What every record's header says, checked.
struct Header {
    key: ConnectionKey,
    flow_id: u64,
    protocol: ProtocolHint,
    flags: u8,
    reason: u8,
    socket: Option<SocketOwner>,
}

impl TryFrom<&abi::clovisor_event_hdr> for Header {
    type Error = Error;

    fn try_from(h: &abi::clovisor_event_hdr) -> Result<Self> {
        let socket = match u32::from(h.point) {
            abi::CLOVISOR_POINT_TC => None,
            abi::CLOVISOR_POINT_SOCKET => Some(SocketOwner::try_from(&h.owner)?),
            other => return Err(bad(format!("unknown observation point {other}"))),
        };
        Ok(Self {
            key: ConnectionKey::try_from(&h.key)?,
            flow_id: h.flow_id,
            protocol: protocol_hint(h.protocol),
            flags: h.flags,
            reason: h.reason,
            socket,
        })
    }
}

impl Header {
    fn has(&self, flag: u32) -> bool {
        u32::from(self.flags) & flag != 0
    }

    /// `raw` when the header's HAS_WIRE flag says it is valid.
    fn wire(&self, raw: &abi::clovisor_wire) -> Option<Wire> {
        self.has(abi::CLOVISOR_EV_HAS_WIRE)
            .then(|| Wire::parse(raw))
    }

    /// `raw` when the header's HAS_PREV flag says it is valid.
    fn optional(&self, raw: &abi::clovisor_msg) -> Result<Option<MsgCounters>> {
        if self.has(abi::CLOVISOR_EV_HAS_PREV) {
            MsgCounters::try_from(raw).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// The `T` at byte `offset` of a record (records are sent only as far as their payload was
/// captured, so the whole struct is never read at once: field by field, without copying the
/// record).
fn field<T: FromBytes>(bytes: &[u8], offset: usize, what: &str) -> Result<T> {
    bytes
        .get(offset..)
        .and_then(|b| T::read_from_prefix(b).ok())
        .map(|(v, _)| v)
        .ok_or_else(|| bad(format!("{what} of {} bytes: cut at {offset}", bytes.len())))
}

/// `len` payload bytes at `from` of a record, checked against what the record holds, copied out
/// of the ring buffer (whose record is released right after).
fn payload(bytes: &[u8], from: usize, len: u32, what: &str) -> Result<Bytes> {
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    from.checked_add(len)
        .and_then(|end| bytes.get(from..end))
        .map(Bytes::copy_from_slice)
        .ok_or_else(|| {
            bad(format!(
                "{what} claims {len} payload bytes at {from}, record has {}",
                bytes.len()
            ))
        })
}

impl TryFrom<&[u8]> for Event {
    type Error = Error;

    fn try_from(bytes: &[u8]) -> Result<Self> {
        let (raw, _) = abi::clovisor_event_hdr::read_from_prefix(bytes)
            .map_err(|_| bad(format!("{} bytes: too short for a header", bytes.len())))?;
        match raw.kind {
            abi::CLOVISOR_EVENT_MSG_START => {
                use abi::clovisor_msg_start as M;
                const W: &str = "MSG_START";
                let h = Header::try_from(&raw)?;
                let snap_len: u32 = field(bytes, std::mem::offset_of!(M, snap_len), W)?;
                if snap_len > abi::CLOVISOR_MAX_SNAPLEN {
                    return Err(bad(format!("{W} snap_len {snap_len}")));
                }
                let msg: abi::clovisor_msg = field(bytes, std::mem::offset_of!(M, msg), W)?;
                if h.has(abi::CLOVISOR_EV_DATAGRAM) {
                    return Ok(Event::Datagram(Datagram {
                        key: h.key,
                        msg: MsgCounters::try_from(&msg)?,
                        protocol: h.protocol,
                        payload: payload(bytes, MSG_START_HEADER, snap_len, W)?,
                    }));
                }
                let prev: abi::clovisor_msg = field(bytes, std::mem::offset_of!(M, prev), W)?;
                let wire: abi::clovisor_wire = field(bytes, std::mem::offset_of!(M, wire), W)?;
                Ok(Event::MsgStart(MsgStart {
                    key: h.key,
                    flow_id: h.flow_id,
                    msg: MsgCounters::try_from(&msg)?,
                    prev: h.optional(&prev)?,
                    protocol: h.protocol,
                    payload: payload(bytes, MSG_START_HEADER, snap_len, W)?,
                    socket: h.socket,
                    counters_only: h.has(abi::CLOVISOR_EV_COUNTERS_ONLY),
                    wire: h.wire(&wire),
                }))
            }
            abi::CLOVISOR_EVENT_EXCHANGE => {
                use abi::clovisor_exchange as X;
                const W: &str = "EXCHANGE";
                let h = Header::try_from(&raw)?;
                let request_len: u32 = field(bytes, std::mem::offset_of!(X, request_len), W)?;
                let response_len: u32 = field(bytes, std::mem::offset_of!(X, response_len), W)?;
                let max = abi::CLOVISOR_MAX_SNAPLEN;
                if request_len > max || response_len > max {
                    return Err(bad(format!(
                        "{W} of {request_len} + {response_len} payload bytes"
                    )));
                }
                let before: abi::clovisor_msg = field(bytes, std::mem::offset_of!(X, before), W)?;
                let request: abi::clovisor_msg = field(bytes, std::mem::offset_of!(X, request), W)?;
                let response: abi::clovisor_msg =
                    field(bytes, std::mem::offset_of!(X, response), W)?;
                let wire: abi::clovisor_wire = field(bytes, std::mem::offset_of!(X, wire), W)?;
                // Each payload copied alone: two buffers owned outright cost less than one
                // shared by two slices (a reference count, taken and dropped three times, and
                // its own allocation), and the request's goes as soon as its record is made.
                let request_payload = payload(bytes, EXCHANGE_HEADER, request_len, W)?;
                let response_from = EXCHANGE_HEADER + request_len as usize;
                let response_payload = payload(bytes, response_from, response_len, W)?;
                Ok(Event::Exchange(Exchange {
                    key: h.key,
                    flow_id: h.flow_id,
                    protocol: h.protocol,
                    socket: h.socket,
                    before: h.optional(&before)?,
                    request: MsgCounters::try_from(&request)?,
                    request_payload,
                    response: MsgCounters::try_from(&response)?,
                    response_payload,
                    head_lost: h.has(abi::CLOVISOR_EV_HEAD_LOST),
                    counters_only: h.has(abi::CLOVISOR_EV_COUNTERS_ONLY),
                    wire: h.wire(&wire),
                }))
            }
            abi::CLOVISOR_EVENT_SEGMENT => {
                use abi::clovisor_segment as S;
                const W: &str = "SEGMENT";
                let h = Header::try_from(&raw)?;
                let len: u32 = field(bytes, std::mem::offset_of!(S, len), W)?;
                if len > abi::CLOVISOR_MAX_SNAPLEN {
                    return Err(bad(format!("{W} of {len} payload bytes")));
                }
                let offset: u64 = field(bytes, std::mem::offset_of!(S, offset), W)?;
                let index: u32 = field(bytes, std::mem::offset_of!(S, index), W)?;
                Ok(Event::Segment(Segment {
                    flow_id: h.flow_id,
                    index,
                    offset,
                    bytes: payload(bytes, SEGMENT_HEADER, len, W)?,
                }))
            }
            abi::CLOVISOR_EVENT_FLOW_END => {
                let (ev, _) = abi::clovisor_flow_end::read_from_prefix(bytes).map_err(|_| {
                    bad(format!(
                        "FLOW_END of {} bytes, expected {}",
                        bytes.len(),
                        std::mem::size_of::<abi::clovisor_flow_end>()
                    ))
                })?;
                let h = Header::try_from(&raw)?;
                let reason = match u32::from(h.reason) {
                    abi::CLOVISOR_END_FIN => FlowEndReason::Fin,
                    abi::CLOVISOR_END_RST => FlowEndReason::Rst,
                    other => return Err(bad(format!("unknown flow end reason {other}"))),
                };
                Ok(Event::FlowEnd(FlowEnd {
                    key: h.key,
                    flow_id: h.flow_id,
                    reason,
                    ts_ns: ev.ts_ns,
                    last: h.optional(&ev.last)?,
                    tcp: h.socket.map(|_| TcpHealth {
                        srtt_us: ev.srtt_us,
                        total_retransmits: ev.total_retrans,
                    }),
                    wire: h.wire(&ev.wire),
                    socket: h.socket,
                }))
            }
            other => Err(bad(format!("unknown event kind {other}"))),
        }
    }
}

/// Which end of the connection a traced socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocketSide {
    /// The remote port is traced: this socket made the call.
    Client,
    /// The local port is traced: this socket answers.
    Server,
}

impl From<SocketSide> for Side {
    /// The side as the wire contracts type it.
    fn from(side: SocketSide) -> Self {
        match side {
            SocketSide::Client => Side::Client,
            SocketSide::Server => Side::Server,
        }
    }
}

/// A process's command name as the kernel keeps it: at most 15 bytes, NUL-padded. Kept as
/// bytes (no allocation per event) and read as text only where it is shown.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Comm([u8; abi::CLOVISOR_COMM_LEN as usize]);

impl Comm {
    /// The name's bytes, without the padding.
    pub fn as_bytes(&self) -> &[u8] {
        let len = self.0.iter().position(|b| *b == 0).unwrap_or(self.0.len());
        &self.0[..len]
    }

    /// The name as text (lossy UTF-8).
    pub fn to_string_lossy(&self) -> String {
        String::from_utf8_lossy(self.as_bytes()).into_owned()
    }
}

impl From<&str> for Comm {
    fn from(s: &str) -> Self {
        let mut out = [0u8; abi::CLOVISOR_COMM_LEN as usize];
        let n = s.len().min(out.len() - 1);
        out[..n].copy_from_slice(&s.as_bytes()[..n]);
        Self(out)
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// The process behind a socket observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketOwner {
    /// Key of the kernel's socket connection map (the `struct sock` address); stays in the probe.
    pub sock_id: u64,
    /// Thread group id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Network namespace inode.
    pub netns: u32,
    /// Command name.
    pub comm: Comm,
    /// Client or server end.
    pub side: SocketSide,
}

impl TryFrom<&abi::clovisor_owner> for SocketOwner {
    type Error = Error;

    fn try_from(raw: &abi::clovisor_owner) -> Result<Self> {
        let side = match u32::from(raw.side) {
            abi::CLOVISOR_SIDE_CLIENT => SocketSide::Client,
            abi::CLOVISOR_SIDE_SERVER => SocketSide::Server,
            other => return Err(bad(format!("unknown socket side {other}"))),
        };
        Ok(Self {
            sock_id: raw.sock_id,
            pid: raw.pid,
            tid: raw.tid,
            netns: raw.netns,
            comm: Comm(raw.comm),
            side,
        })
    }
}

/// A connection as currently held in the kernel's LRU map (for idle flushes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionState {
    /// Connection instance id.
    pub flow_id: u64,
    /// The message in progress; `None` before the first payload.
    pub cur: Option<MsgCounters>,
    /// While `cur` is a request whose first bytes the kernel holds: the message before it,
    /// final (the kernel sends it with the request, once the response starts).
    pub before: Option<MsgCounters>,
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
        Self::of(
            raw.flow_id,
            &raw.cur,
            raw.held != 0 && raw.has_before != 0,
            &raw.before,
        )
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
        Self::of(
            raw.flow_id,
            &raw.cur,
            raw.held != 0 && raw.has_before != 0,
            &raw.before,
        )
    }

    /// Either connection kind's flow id, message in progress (none before the first payload)
    /// and, while a request is held, the message before it.
    fn of(
        flow_id: u64,
        cur: &abi::clovisor_msg,
        has_before: bool,
        before: &abi::clovisor_msg,
    ) -> Result<Self> {
        Ok(Self {
            flow_id,
            cur: if u32::from(cur.direction) == abi::CLOVISOR_DIR_NONE {
                None
            } else {
                Some(MsgCounters::try_from(cur)?)
            },
            before: if has_before {
                Some(MsgCounters::try_from(before)?)
            } else {
                None
            },
        })
    }
}

/// Size of a socket connection map value.
pub const SOCK_CONNECTION_LEN: usize = std::mem::size_of::<abi::clovisor_sock_conn>();
/// Raw socket connection map value.
pub type RawSockConnection = [u8; SOCK_CONNECTION_LEN];

/// Turns ProtocolHint into the traced_ports map value.
pub fn hint_value(hint: ProtocolHint) -> u8 {
    // ProtocolHint values are 0..=5 by contract; anything larger cannot be represented
    // by the kernel side and is sent as unspecified.
    u8::try_from(hint as i32).unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests;
