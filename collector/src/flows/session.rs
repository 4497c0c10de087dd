//! Building a [`Session`] from a decoder's [`Exchange`]: the exchange's own parts, plus what the
//! flow knows (its endpoints, its observation point, the probe).

use std::sync::Arc;

use bytes::Bytes;
use clovisor_proto::capture::v1 as capture;
use clovisor_proto::common::v1::Side;
use clovisor_proto::hops::{EncodedSession, SessionEncoder};
use clovisor_proto::join::key::{
    has_tcp_seq, wire_key_of, ClientAddr, WireKey, MESSAGE_POSITION_ATTRIBUTE,
};
use clovisor_proto::join::merge::{merge_point, PointView};
use clovisor_proto::session::encode::{IdParts, ObservationNames, SessionNames};
use clovisor_proto::session::v1::{Counters, Endpoint, Observation, Protocol, Session};

use super::endpoints::{EndpointMeta, Ends};
use crate::decode::{Exchange, Fields, MessageStats, WireStats};

/// The part of its sessions' ids a flow fixes: `<probe id>/<flow id in hex>/`, as
/// `format!("{probe_id}/{flow_id:x}/")` writes it, without the formatting machinery (once per
/// flow, which for short connections is once every exchange or two).
pub(super) fn id_prefix(probe_id: &str, flow_id: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Hex digits of flow_id, without leading zeros (one for 0).
    let digits = (u64::BITS - flow_id.leading_zeros()).div_ceil(4).max(1);
    let mut s = String::with_capacity(probe_id.len() + digits as usize + 2);
    s.push_str(probe_id);
    s.push('/');
    for i in (0..digits).rev() {
        s.push(char::from(HEX[((flow_id >> (4 * i)) & 0xf) as usize]));
    }
    s.push('/');
    s
}

/// What every session of one flow is named by: its ids' prefix ([`id_prefix`]) and its ends'
/// addresses, made once per flow and shared with each session rather than copied into it: the
/// prefix by reference count, written into the session's id only when it is encoded ([`Origin`]),
/// the addresses as static bytes ([`super::addresses`]), whose copies count nothing. Three
/// allocations fewer per view, each a block the allocator hands out cold under load.
#[derive(Debug)]
pub(super) struct FlowNames {
    pub id_prefix: Arc<str>,
    pub client_ip: Bytes,
    pub server_ip: Bytes,
}

impl FlowNames {
    /// The names of flow `flow_id` of probe `probe_id`, whose key is `key`.
    pub fn new(probe_id: &str, flow_id: u64, key: &capture::FlowKey) -> Self {
        Self {
            id_prefix: id_prefix(probe_id, flow_id).into(),
            client_ip: super::addresses::shared(&key.client_ip),
            server_ip: super::addresses::shared(&key.server_ip),
        }
    }
}

/// A probe as its sessions name it: its id and its node (from its `Hello`), kept once and
/// shared by every session it makes ([`Origin`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeNames {
    pub id: String,
    pub node: String,
}

/// Where a session came from, written into it when it is encoded rather than copied into each
/// ([`SessionNames`]): its id (`<probe>/<flow>/<message index>[.<position>]`, while the session
/// leaves its own empty) and its probe's id and node (into each observation leaving them empty:
/// the collector leaves them empty for the probe's own, and the node too where the point is on
/// the probe's node).
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    /// The flow's id prefix ([`id_prefix`]).
    pub id_prefix: Arc<str>,
    /// The request message's index in its flow.
    pub index: u32,
    /// The exchange's position among those pipelined in its request message.
    pub position: u32,
    pub probe: Arc<ProbeNames>,
}

impl Origin {
    fn id(&self) -> IdParts<'_> {
        IdParts {
            prefix: &self.id_prefix,
            index: self.index,
            position: self.position,
        }
    }

    /// Whether both name the same probe.
    pub fn same_probe(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.probe, &other.probe) || self.probe == other.probe
    }

    fn observations(&self) -> ObservationNames<'_> {
        ObservationNames {
            probe_id: &self.probe.id,
            node: &self.probe.node,
        }
    }
}

/// Whether the join must tell the exchange from the others of its request message by its
/// position ([`MESSAGE_POSITION_ATTRIBUTE`]): the second and later commands, queries or requests
/// pipelined in one message share its TCP sequence number, so without it they all had the first
/// one's wire key and every point's view stayed a session of its own. Not for HTTP/1.x (its
/// decoder names the position itself), nor HTTP/2 and gRPC, whose streams carry the sequence
/// number of their own `HEADERS` frame — and whose position in a message differs between points
/// that captured different frames of it.
fn keyed_by_position(protocol: Protocol, position: u32) -> bool {
    position != 0 && !matches!(protocol, Protocol::Http1 | Protocol::Http2 | Protocol::Grpc)
}

/// What a session needs to know about its flow.
pub(super) struct FlowParts<'a> {
    /// The probe: its id, and its node for points that do not name theirs.
    pub probe: &'a Arc<ProbeNames>,
    pub names: &'a FlowNames,
    pub key: &'a capture::FlowKey,
    pub point: &'a capture::ObservationPoint,
    /// The point whose counters the flow's messages carry besides their own
    /// (`FlowStart.wire_point`: the pod's veth of a socket point's flow).
    pub wire_point: Option<&'a capture::ObservationPoint>,
    pub ends: Ends<'a>,
    /// A counters-only view's (`FlowStart.counters_only`): it is only useful joined with a
    /// decoded view of its exchange, which carries both ends' metadata, so it gets only its own
    /// pod's (which the join's server endpoint rule may need).
    pub counters_only: bool,
}

/// A session the flow table made, and what names it by reference: the pod metadata of its ends
/// (shared with every other session of their addresses and with their metric series), its id's
/// parts and its probe ([`Origin`]), written into the session when it is encoded
/// ([`Collected::names`]) rather than copied into each — five strings per end, and the id, the
/// probe id and the node per view, twice per exchange where a counters-only view comes along.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Collected {
    /// The session; its ends' names are empty unless a merge gave it some, its id empty and
    /// its observations' probe ids and nodes empty where `origin` gives them.
    pub session: Session,
    /// The client's pod metadata, when known (and, for a counters-only view, its own end).
    pub client_meta: Option<Arc<EndpointMeta>>,
    /// The server's.
    pub server_meta: Option<Arc<EndpointMeta>>,
    /// Its id and probe, when the session leaves them to be written in.
    pub origin: Option<Origin>,
}

impl Collected {
    /// A session with no metadata beside it.
    pub fn bare(session: Session) -> Self {
        Self {
            session,
            ..Self::default()
        }
    }

    /// The names the encoder writes into the session.
    pub fn names(&self) -> SessionNames<'_> {
        names(&self.client_meta, &self.server_meta, &self.origin)
    }

    /// Writes into the session what its origin gives: its id (when `id`) and its probe's names
    /// (when `observations`) — before it is merged into a session that will not know them.
    pub fn write_origin(&mut self, id: bool, observations: bool) {
        let Some(origin) = &self.origin else {
            return;
        };
        if id && self.session.id.is_empty() {
            self.session.id = origin.id().to_text();
        }
        if observations {
            let names = origin.observations();
            for o in &mut self.session.observations {
                names.fill(o);
            }
        }
    }

    /// Whether `self` and `other` came from the same probe (their observations leave the same
    /// names to be written in), as far as is known.
    pub fn same_probe(&self, other: &Self) -> bool {
        match (&self.origin, &other.origin) {
            (Some(a), Some(b)) => a.same_probe(b),
            (None, None) => true,
            _ => false,
        }
    }

    /// The session encoded with its ends' names written in, as it leaves the collector.
    pub fn encode(&self, encoder: &mut SessionEncoder) -> EncodedSession {
        encoder.encode_named(&self.session, &self.names())
    }

    /// The session with its names written in: what the correlator receives.
    pub fn into_session(self) -> Session {
        let Self {
            session,
            client_meta,
            server_meta,
            origin,
        } = self;
        names(&client_meta, &server_meta, &origin).applied_to(session)
    }
}

fn names<'a>(
    client: &'a Option<Arc<EndpointMeta>>,
    server: &'a Option<Arc<EndpointMeta>>,
    origin: &'a Option<Origin>,
) -> SessionNames<'a> {
    SessionNames {
        id: origin.as_ref().map(Origin::id),
        observations: origin
            .as_ref()
            .map(Origin::observations)
            .unwrap_or_default(),
        client: client
            .as_deref()
            .map(EndpointMeta::names)
            .unwrap_or_default(),
        server: server
            .as_deref()
            .map(EndpointMeta::names)
            .unwrap_or_default(),
    }
}

fn endpoint(ip: &Bytes, port: u32) -> Endpoint {
    Endpoint {
        ip: ip.clone(),
        port,
        ..Endpoint::default()
    }
}

/// The points of one host that can see an exchange: both pods' veths and sockets.
const POINTS_PER_HOST: usize = 4;

/// One point's part of exchange `ex` on flow `f`: its observation, counters and times.
struct Point {
    observation: Observation,
    bytes: Counters,
    packets: Counters,
    start_unix_nanos: u64,
    end_unix_nanos: u64,
}

impl Point {
    /// The point's part as a view of its own ([`PointView`]), between flow `f`'s ends.
    fn into_view(self, f: &FlowParts<'_>, incomplete: bool) -> PointView {
        PointView {
            observation: self.observation,
            client: (f.names.client_ip.clone(), f.key.client_port),
            server: (f.names.server_ip.clone(), f.key.server_port),
            bytes: self.bytes,
            packets: self.packets,
            start_unix_nanos: self.start_unix_nanos,
            end_unix_nanos: self.end_unix_nanos,
            incomplete,
        }
    }
}

fn point(f: &FlowParts<'_>, ex: &Exchange) -> Point {
    point_at(f, f.point, &ex.request, ex.response.as_ref(), ex.position)
}

/// `point`'s part of an exchange whose request and response it counted as `request` and
/// `response`; `position` as [`Exchange::position`].
fn point_at(
    f: &FlowParts<'_>,
    point: &capture::ObservationPoint,
    request: &MessageStats,
    response: Option<&MessageStats>,
    position: u32,
) -> Point {
    let resp = response.copied().unwrap_or_default();
    // Counters cannot be split between pipelined exchanges: the first carries the message's.
    let first = position == 0;
    let (req_bytes, req_packets, resp_bytes, resp_packets) = if first {
        (request.bytes, request.packets, resp.bytes, resp.packets)
    } else {
        (0, 0, 0, 0)
    };
    // The probe's own node and id are written in when the session is encoded (`Origin`).
    let node = if point.node.is_empty() || point.node == f.probe.node {
        String::new()
    } else {
        point.node.clone()
    };
    let observation = Observation {
        kind: point.kind() as i32,
        interface: point.interface.clone(),
        node,
        probe_id: String::new(),
        side: f.ends.side(point) as i32,
        request_start_unix_nanos: request.start,
        request_end_unix_nanos: request.end,
        response_start_unix_nanos: resp.start,
        response_end_unix_nanos: resp.end,
        request_tcp_seq: request.tcp_seq,
        response_tcp_seq: resp.tcp_seq,
        request_bytes: req_bytes,
        response_bytes: resp_bytes,
        request_packets: u64::from(req_packets),
        response_packets: u64::from(resp_packets),
        retransmits: if first {
            request.retransmits.saturating_add(resp.retransmits)
        } else {
            0
        },
        pid: point.pid,
        comm: point.comm.clone(),
        netns_inode: point.netns_inode,
    };
    Point {
        observation,
        bytes: Counters {
            request: req_bytes,
            response: resp_bytes,
        },
        packets: Counters {
            request: u64::from(req_packets),
            response: u64::from(resp_packets),
        },
        start_unix_nanos: request.start,
        end_unix_nanos: if response.is_some() {
            resp.end
        } else {
            request.end
        },
    }
}

/// The wire point's part of exchange `ex` ([`FlowParts::wire_point`], its counters in the
/// messages' [`MessageStats::wire`]), as the point's own counters-only view would have been
/// (its session made by [`PointView::into_session`]): `None` when the flow has no such point
/// or the point did not see the request.
fn wire_view(f: &FlowParts<'_>, ex: &Exchange) -> Option<PointView> {
    let wire_point = f.wire_point?;
    let as_stats = |w: WireStats, index: u32| MessageStats {
        index,
        start: w.start,
        end: w.end,
        tcp_seq: w.tcp_seq,
        bytes: w.bytes,
        packets: w.packets,
        retransmits: w.retransmits,
        wire: None,
    };
    let request = as_stats(ex.request.wire?, ex.request.index);
    let response = ex
        .response
        .and_then(|r| r.wire.map(|w| as_stats(w, r.index)));
    let p = point_at(f, wire_point, &request, response.as_ref(), ex.position);
    Some(p.into_view(f, ex.incomplete))
}

fn origin(f: &FlowParts<'_>, ex: &Exchange) -> Origin {
    Origin {
        id_prefix: Arc::clone(&f.names.id_prefix),
        index: ex.request.index,
        position: ex.position,
        probe: Arc::clone(f.probe),
    }
}

/// A counters-only view ([`FlowParts::counters_only`]) as the flow table hands it to the local
/// join when asked to keep such views apart ([`super::FlowTable::keep_counter_views_apart`]):
/// its point's part of the exchange ([`PointView`]) and its wire key, not a session. The local
/// join adds it to the decoded view of its exchange
/// ([`clovisor_proto::join::merge::merge_point`]); only one that
/// finds none becomes a session ([`CounterView::into_collected`]). Three of a single host's four
/// views of an exchange are counters-only, and building, moving and dropping a session of nearly
/// a kilobyte for each was a tenth of all-in-one's time.
#[derive(Debug, Clone, PartialEq)]
pub struct CounterView {
    pub view: PointView,
    /// The wire key of its session: its client's address and port and its
    /// request's sequence number, when it has one
    /// ([`clovisor_proto::join::key::wire_key`]).
    pub key: Option<WireKey>,
    /// Its own end's pod metadata, as its session would carry it ([`Collected::client_meta`]).
    pub client_meta: Option<Arc<EndpointMeta>>,
    pub server_meta: Option<Arc<EndpointMeta>>,
    pub origin: Origin,
    /// Its flow's wire point's part of the exchange ([`FlowParts::wire_point`]: a counters-only
    /// server socket's pod veth, carried), merged wherever `view` is.
    pub wire: Option<Box<PointView>>,
}

impl CounterView {
    /// Writes its probe's id and node into its observations ([`Collected::write_origin`]):
    /// before it is merged into a view of another probe, which will not know them.
    pub fn write_probe_names(&mut self) {
        let names = self.origin.observations();
        names.fill(&mut self.view.observation);
        if let Some(w) = &mut self.wire {
            names.fill(&mut w.observation);
        }
    }

    /// The view as a session, exactly as the flow table makes it when views are not kept apart.
    pub fn into_collected(self) -> Collected {
        let mut session = self.view.into_session();
        if let Some(w) = self.wire {
            merge_point(&mut session, *w);
        }
        Collected {
            session,
            client_meta: self.client_meta,
            server_meta: self.server_meta,
            origin: Some(self.origin),
        }
    }
}

/// The counters-only view of exchange `ex` on flow `f`.
pub(super) fn counter_view(f: &FlowParts<'_>, ex: &Exchange) -> CounterView {
    let key = f.key;
    let point = point(f, ex);
    let (client_meta, server_meta) = match f.ends.side(f.point) {
        Side::Server => (None, f.ends.server),
        Side::Client => (f.ends.client, None),
        _ => (None, None),
    };
    let o = &point.observation;
    let client = ClientAddr::from_parts(&f.names.client_ip, key.client_port, || {
        (o.netns_inode != 0).then_some((o.node.as_str(), o.netns_inode))
    });
    let wire_key = client.and_then(|client| {
        wire_key_of(
            client,
            false,
            has_tcp_seq(o).then_some(o.request_tcp_seq),
            None,
        )
    });
    let origin = origin(f, ex);
    CounterView {
        wire: wire_view(f, ex).map(Box::new),
        view: point.into_view(f, ex.incomplete),
        key: wire_key,
        client_meta: client_meta.cloned(),
        server_meta: server_meta.cloned(),
        origin,
    }
}

/// The session of exchange `ex` on flow `f`, added to `out`; what it takes of `ex` is taken
/// out of it (its typed fields, trace context and attributes).
///
/// Written field by field in its place at the end of `out`: made whole and then pushed, the
/// session (some 900 bytes with what names it) was copied two or three times on its way there,
/// and the exchange's parts once more into it. The exchange is taken by reference for the same
/// reason: by value, each call that is not inlined copies its 600 bytes.
pub(super) fn build_into(f: &FlowParts<'_>, ex: &mut Exchange, out: &mut Vec<Collected>) {
    if f.counters_only {
        out.push(counter_view(f, ex).into_collected());
        return;
    }
    // Made in place (`extend` writes what the closure makes into room it reserved first; a
    // `push` makes its argument on the stack before it looks for room, then copies it).
    out.extend(std::iter::once_with(Collected::default));
    let Some(c) = out.last_mut() else {
        return;
    };
    fill(c, f, ex);
}

/// Writes the session of exchange `ex` on flow `f` (not counters-only) into `c`, which is
/// empty ([`Collected::default`]), taking from `ex` what it keeps.
fn fill(c: &mut Collected, f: &FlowParts<'_>, ex: &mut Exchange) {
    let key = f.key;
    let point = point(f, ex);
    let wire = wire_view(f, ex);
    c.origin = Some(origin(f, ex));
    c.client_meta = f.ends.client.cloned();
    c.server_meta = f.ends.server.cloned();
    let (protocol, position, incomplete) = (ex.protocol, ex.position, ex.incomplete);
    let fields = std::mem::replace(&mut ex.fields, Fields::None);
    let trace = ex.trace.take();
    let mut attributes = std::mem::take(&mut ex.attributes);
    if keyed_by_position(protocol, position) {
        attributes.insert(MESSAGE_POSITION_ATTRIBUTE.to_owned(), position.to_string());
    }
    let s = &mut c.session;
    match fields {
        Fields::Http(h) => s.http = Some(h),
        Fields::Grpc { http, grpc } => {
            s.http = Some(http);
            s.grpc = Some(Box::new(grpc));
        }
        Fields::Dns(d) => s.dns = Some(Box::new(d)),
        Fields::Database(d) => s.database = Some(Box::new(d)),
        Fields::Analyzer(a) => s.analyzer = Some(Box::new(a)),
        Fields::Kafka(k) => s.kafka = Some(Box::new(k)),
        Fields::None => {}
    }
    s.protocol = protocol as i32;
    s.client = Some(endpoint(&f.names.client_ip, key.client_port));
    s.server = Some(endpoint(&f.names.server_ip, key.server_port));
    // Room in a decoded view's vector for the views of its exchange a single host's points make
    // (both veths, both sockets): the local join merges the others into it, which otherwise
    // grows the vector once or twice per exchange (an allocation, a copy and a free each time).
    s.observations.reserve_exact(POINTS_PER_HOST);
    s.observations.push(point.observation);
    s.start_unix_nanos = point.start_unix_nanos;
    s.end_unix_nanos = point.end_unix_nanos;
    s.bytes = Some(point.bytes);
    s.packets = Some(point.packets);
    s.trace = trace;
    s.incomplete = incomplete;
    s.attributes = attributes;
    if let Some(view) = wire {
        // As the local join would have merged the point's own view into this one (of this
        // flow: its ends are the session's, which `merge_point` leaves as they are).
        merge_point(s, view);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exchanges_sharing_their_message_sequence_number_are_keyed_by_position() {
        assert!(keyed_by_position(Protocol::Redis, 1));
        assert!(keyed_by_position(Protocol::Postgresql, 2));
        assert!(keyed_by_position(Protocol::Kafka, 1));
        assert!(
            !keyed_by_position(Protocol::Redis, 0),
            "the first needs none"
        );
        assert!(
            !keyed_by_position(Protocol::Http1, 1),
            "HTTP/1 names its own"
        );
        assert!(
            !keyed_by_position(Protocol::Http2, 1),
            "a stream has its own sequence number"
        );
        assert!(!keyed_by_position(Protocol::Grpc, 1));
    }

    #[test]
    fn ids_name_the_probe_the_flow_the_message_and_the_position() {
        let id = |prefix: String, index, position| {
            let origin = Origin {
                id_prefix: prefix.into(),
                index,
                position,
                probe: Arc::default(),
            };
            origin.id().to_text()
        };
        for flow in [
            0,
            1,
            0xf,
            0x10,
            0x1f,
            0xabc,
            1 << 63,
            u64::MAX - 1,
            u64::MAX,
        ] {
            assert_eq!(id_prefix("probe-1", flow), format!("probe-1/{flow:x}/"));
        }
        assert_eq!(id_prefix("", 0), "/0/");
        assert_eq!(id(id_prefix("probe-1", 0x1f), 4, 0), "probe-1/1f/4");
        assert_eq!(id(id_prefix("probe-1", 0x1f), 4, 1), "probe-1/1f/4.1");
        assert_eq!(
            id(id_prefix("p", u64::MAX), u32::MAX, u32::MAX),
            format!("p/{:x}/{}.{}", u64::MAX, u32::MAX, u32::MAX)
        );
    }
}
