//! The one place where ring buffer bytes and map values become typed values (and typed values
//! the map keys and values user space writes). Building `capture.v1` records from them is the
//! assembler's ([`super::assembler::records`]).
//!
//! Every record is size-checked and read through zerocopy (no `unsafe`, no hand-mirrored
//! layout); enum values the kernel sent are checked, never trusted.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

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

impl From<SocketSide> for Side {
    /// The side as the wire contracts type it.
    fn from(side: SocketSide) -> Self {
        match side {
            SocketSide::Client => Side::Client,
            SocketSide::Server => Side::Server,
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
