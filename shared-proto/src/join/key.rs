//! What identifies one exchange across observation points.
//!
//! - [`WireKey`]: client address and port, the TCP sequence number of the request's first byte,
//!   and the position of the request among those pipelined in that message. Every point reports
//!   the same sequence number for the same request: pod veths and node interfaces read it from
//!   the segments, sockets from the socket (`write_seq` when sending, `copied_seq` when
//!   receiving). Service DNAT rewrites only the server side, so the key survives the path. Two
//!   different exchanges share it only if a client reuses its port and its new random initial
//!   sequence number lands on the old request's byte within the join window.
//! - [`ClientAddr`] alone, for views without a sequence number (a socket view whose sequence
//!   number could not be read reports 0; every view of an exchange over UDP, which has none):
//!   such a view joins only when exactly one exchange of that client overlaps it in time and
//!   agrees on every decoded field (see [`super::merge::compatible`]; for DNS the id and
//!   question).
//!
//! Loopback connections exist once per network namespace: a loopback client address is scoped
//! by the node and namespace inode the socket point reported, so two pods' connections to their
//! own sidecars never share a key.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use crate::common::v1::PointKind;
use crate::session::v1::{DnsTransport, Observation, Session};

/// Attribute the collector sets on the second and later requests pipelined in one message.
pub const PIPELINE_POSITION_ATTRIBUTE: &str = "clovisor.http.pipeline_position";

/// The same for the protocols other than HTTP whose exchanges pipelined in one message share
/// its sequence number (Redis, PostgreSQL, MySQL, Kafka): their position in the message.
pub const MESSAGE_POSITION_ATTRIBUTE: &str = "clovisor.pipeline_position";

/// The client end of a connection, IPv4 normalised (a v4-mapped IPv6 address is IPv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr {
    /// Client IP.
    pub ip: IpAddr,
    /// Client port.
    pub port: u16,
    /// 0 for routable addresses; for loopback ones, a hash of the node and network namespace
    /// the connection lives in.
    pub scope: u64,
}

impl ClientAddr {
    /// The client of `session`; `None` when the session has no usable client address.
    pub fn of(session: &Session) -> Option<Self> {
        let client = session.client.as_ref()?;
        Self::from_parts(&client.ip, client.port, || {
            session
                .observations
                .iter()
                .find(|o| o.netns_inode != 0)
                .map(|o| (o.node.as_str(), o.netns_inode))
        })
    }

    /// [`ClientAddr::of`] a session whose client has address bytes `ip` and port `port`;
    /// `namespace` (asked for a loopback address only) gives the node and network namespace
    /// inode of its first observation that names a namespace.
    pub fn from_parts<'a>(
        ip: &[u8],
        port: u32,
        namespace: impl FnOnce() -> Option<(&'a str, u64)>,
    ) -> Option<Self> {
        // IPv4-mapped IPv6 reads as IPv4, so both spellings are one client.
        let ip = crate::addr::ip(ip)?;
        let port = u16::try_from(port).ok().filter(|p| *p != 0)?;
        let scope = if ip.is_loopback() {
            // Only a socket sees loopback; without its namespace the address means nothing.
            let (node, netns_inode) = namespace()?;
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (node, netns_inode).hash(&mut h);
            h.finish().max(1)
        } else {
            0
        };
        Some(Self { ip, port, scope })
    }
}

/// Identity of one request on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WireKey {
    /// Who sent the request.
    pub client: ClientAddr,
    /// TCP sequence number of the request message's first byte.
    pub request_seq: u32,
    /// 0 for the first request of the message, n for the n-th pipelined after it.
    pub position: u32,
}

/// Whether this view reports TCP sequence numbers: tc points always (they read the segments),
/// sockets when they could read the socket's (0 means they could not).
pub fn has_tcp_seq(o: &Observation) -> bool {
    carries_tcp_seq(o.kind(), o.request_tcp_seq)
}

/// [`has_tcp_seq`] of an observation from a point of `kind` that reported `request_tcp_seq`.
pub fn carries_tcp_seq(kind: PointKind, request_tcp_seq: u32) -> bool {
    match kind {
        PointKind::Pod | PointKind::Node => true,
        PointKind::Socket => request_tcp_seq != 0,
        PointKind::Unspecified => false,
    }
}

/// Whether the exchange went over UDP (DNS over UDP today): its views carry no sequence number,
/// whatever point they come from, so one client port's exchanges would all share key 0.
pub fn is_datagram(session: &Session) -> bool {
    session
        .dns
        .as_ref()
        .is_some_and(|d| d.transport == DnsTransport::Udp as i32)
}

/// The wire key of a session from points that see TCP segments: its one observation's, or —
/// for views the collector merged already — the sequence number all its sequence-carrying
/// observations agree on (none when they disagree).
pub fn wire_key(session: &Session, client: ClientAddr) -> Option<WireKey> {
    let position = session
        .attributes
        .get(PIPELINE_POSITION_ATTRIBUTE)
        .or_else(|| session.attributes.get(MESSAGE_POSITION_ATTRIBUTE));
    wire_key_of(
        client,
        is_datagram(session),
        session
            .observations
            .iter()
            .filter(|o| has_tcp_seq(o))
            .map(|o| o.request_tcp_seq),
        position.map(String::as_str),
    )
}

/// [`wire_key`] of a session whose client is `client`: over UDP when `datagram`, with the
/// request sequence numbers `seqs` of its sequence-carrying observations and the value of its
/// position attribute (the HTTP pipeline's, else the message's).
pub fn wire_key_of(
    client: ClientAddr,
    datagram: bool,
    seqs: impl IntoIterator<Item = u32>,
    position: Option<&str>,
) -> Option<WireKey> {
    if datagram {
        return None;
    }
    let mut seqs = seqs.into_iter();
    let request_seq = seqs.next()?;
    if seqs.any(|s| s != request_seq) {
        return None;
    }
    let position = match position {
        Some(p) => p.parse().ok()?,
        None => 0,
    };
    Some(WireKey {
        client,
        request_seq,
        position,
    })
}

/// The time an observation covers: first request byte to last byte seen.
pub fn interval(o: &Observation) -> (u64, u64) {
    interval_of(
        o.request_start_unix_nanos,
        o.request_end_unix_nanos,
        o.response_end_unix_nanos,
    )
}

/// [`interval`] of an observation with these request start, request end and response end times.
pub fn interval_of(request_start: u64, request_end: u64, response_end: u64) -> (u64, u64) {
    (
        request_start,
        response_end.max(request_end).max(request_start),
    )
}

/// Whether two closed intervals share a point.
pub fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}
