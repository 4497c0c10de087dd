//! Merging what several points saw of one exchange into one session.

use bytes::Bytes;

use crate::common::v1::{PointKind, Side};
use crate::session::encode::EndpointNames;
use crate::session::v1::{Counters, Endpoint, Http, Observation, Protocol, Session};

/// Whether `a` and `b` can be the same exchange: every field both decoded agrees. Used as a
/// guard on key matches too, so a key collision never merges two different requests.
pub fn compatible(a: &Session, b: &Session) -> bool {
    if a.protocol != b.protocol
        && !http2_and_grpc(a.protocol, b.protocol)
        && !counters_only(a)
        && !counters_only(b)
    {
        return false;
    }
    let same = |x: &str, y: &str| x.is_empty() || y.is_empty() || x == y;
    if let (Some(x), Some(y)) = (&a.http, &b.http) {
        if !(same(&x.method, &y.method)
            && same(&x.target, &y.target)
            && same(&x.request_id, &y.request_id)
            && (x.status_code == 0 || y.status_code == 0 || x.status_code == y.status_code))
        {
            return false;
        }
    }
    if let (Some(x), Some(y)) = (&a.database, &b.database) {
        if !(same(&x.operation, &y.operation) && same(&x.statement, &y.statement)) {
            return false;
        }
    }
    // DNS: the same query (id and question) and, when both saw the answer, the same answer. A
    // client's A and AAAA queries on one UDP flow differ here.
    if let (Some(x), Some(y)) = (&a.dns, &b.dns) {
        if !(x.id == y.id
            && x.question_type == y.question_type
            && x.question_class == y.question_class
            && x.question_name.eq_ignore_ascii_case(&y.question_name)
            && (a.incomplete || b.incomplete || x.response_code == y.response_code))
        {
            return false;
        }
    }
    if let (Some(x), Some(y)) = (&a.trace, &b.trace) {
        if !x.trace_id.is_empty() && !y.trace_id.is_empty() && x.trace_id != y.trace_id {
            return false;
        }
    }
    true
}

/// Whether `s` is a counters-only view (a pod veth's view of a connection its pod's socket
/// point captures, `FlowStart.counters_only`): timings and counters, no protocol, nothing
/// decoded. It agrees with any view and adds its observation to the decoded one; on its own it
/// is not an exchange anyone can use, so it never leaves the collector unmerged.
pub fn counters_only(s: &Session) -> bool {
    s.protocol == Protocol::Unspecified as i32
        && s.http.is_none()
        && s.grpc.is_none()
        && s.dns.is_none()
        && s.database.is_none()
        && s.kafka.is_none()
        && s.analyzer.is_none()
}

/// A gRPC call and an HTTP/2 exchange may be the same: a point whose HPACK table was out of
/// step cannot always tell a call from its headers.
fn http2_and_grpc(a: i32, b: i32) -> bool {
    let (h2, grpc) = (Protocol::Http2 as i32, Protocol::Grpc as i32);
    (a == h2 && b == grpc) || (a == grpc && b == h2)
}

/// Whether `session` already holds an observation from the point that made `o`: the same point
/// cannot see one exchange twice, so a second one means a different exchange.
pub fn has_point(session: &Session, o: &Observation) -> bool {
    session.observations.iter().any(|p| {
        // The integers first: a single host's four points differ in kind or side.
        p.kind == o.kind
            && p.side == o.side
            && p.interface == o.interface
            && p.node == o.node
            && p.probe_id == o.probe_id
    })
}

/// Whether `add` can join `into`: every field both decoded agrees ([`compatible`]) and none of
/// `add`'s points is already in `into` ([`has_point`]). The guard of every merge, the collector's
/// local join's and the correlator's alike.
pub fn fits(into: &Session, add: &Session) -> bool {
    compatible(into, add) && !add.observations.iter().any(|o| has_point(into, o))
}

/// [`fits`] of a view that decoded nothing and whose one observation is `o` (a
/// [`PointView`]'s session): such a view agrees with any ([`compatible`]), so only its point
/// can keep it out.
pub fn fits_point(into: &Session, o: &Observation) -> bool {
    !has_point(into, o)
}

/// Rank of an observation as the source of the session's counters and endpoints: the client's
/// own veth first (what the caller experienced on the wire), then the server's, node interfaces,
/// sockets.
fn rank(o: &Observation) -> u8 {
    match (o.kind(), o.side()) {
        (PointKind::Pod, Side::Client) => 0,
        (PointKind::Pod, Side::Server) => 1,
        (PointKind::Pod, _) => 2,
        (PointKind::Node, _) => 3,
        (PointKind::Socket, _) => 4,
        (PointKind::Unspecified, _) => 5,
    }
}

/// Where on the request's path a point sits: the client's socket, the client's veth, the
/// nodes' interfaces, the server's veth, the server's socket. Timestamps alone cannot order
/// them: a socket times a send when the call returns, after its packets have already crossed
/// the local veths.
fn path_position(o: &Observation) -> u8 {
    match (o.kind(), o.side()) {
        (PointKind::Socket, Side::Client) => 0,
        (PointKind::Pod, Side::Client) => 1,
        (PointKind::Pod, Side::Server) => 3,
        (PointKind::Socket, Side::Server) => 4,
        _ => 2,
    }
}

fn best_rank(s: &Session) -> u8 {
    s.observations.iter().map(rank).min().unwrap_or(u8::MAX)
}

fn fill(into: &mut String, from: &str) {
    if into.is_empty() && !from.is_empty() {
        *into = from.to_owned();
    }
}

fn fill_endpoint(into: &mut Endpoint, from: &Endpoint) {
    EndpointNames::of(from).fill(into);
}

fn fill_http(into: &mut Http, from: &Http) {
    fill(&mut into.method, &from.method);
    fill(&mut into.target, &from.target);
    fill(&mut into.host, &from.host);
    fill(&mut into.user_agent, &from.user_agent);
    fill(&mut into.version, &from.version);
    fill(&mut into.request_id, &from.request_id);
    fill(&mut into.envoy_decorator, &from.envoy_decorator);
    fill(&mut into.reason, &from.reason);
    if into.status_code == 0 {
        into.status_code = from.status_code;
    }
    if into.request_content_length == 0 {
        into.request_content_length = from.request_content_length;
    }
    if into.response_content_length == 0 {
        into.response_content_length = from.response_content_length;
    }
    into.response_chunked |= from.response_chunked;
}

/// Whether [`merge`] takes the server end from `add` (filled from `into`'s) rather than keeping
/// `into`'s (filled from `add`'s): the server as the server's own veth or socket saw it is the
/// real pod (after any service DNAT); elsewhere it may be a service address.
pub fn takes_server_from(into: &Session, add: &Session) -> bool {
    at_server(&add.observations) && !at_server(&into.observations)
}

fn at_server(observations: &[Observation]) -> bool {
    observations.iter().any(|o| o.side() == Side::Server)
}

/// Adds what `add` saw to `into`; returns `add`'s id. The caller has checked [`compatible`].
pub fn merge(into: &mut Session, mut add: Session) -> String {
    if !counters_only(&add) {
        merge_fields(into, &mut add);
    }
    exact_room(&mut into.observations, add.observations.len());
    merge_counters(into, &mut add);
    add.id
}

/// What a decoded view `add` adds to `into` beyond its point's counters and times
/// ([`merge_counters`]): protocol, completeness and decoded fields.
fn merge_fields(into: &mut Session, add: &mut Session) {
    // A counters-only view decoded nothing: the decoded view's protocol and completeness are
    // the exchange's, whichever came first. (A veth that saw the response while the socket did
    // not still knows no status.)
    if counters_only(into) {
        into.protocol = add.protocol;
        into.incomplete = add.incomplete;
    }
    // A response seen anywhere completes the exchange (seen where it was decoded).
    if into.incomplete && !add.incomplete {
        into.incomplete = false;
        if let (Some(h), Some(a)) = (into.http.as_mut(), add.http.as_ref()) {
            h.status_code = a.status_code;
            h.reason = a.reason.clone();
        }
        if add.database.is_some() {
            // The complete view's result (rows, error) wins.
            into.database.clone_from(&add.database);
        }
        // The answer's fields come with the view that saw it.
        if add.dns.is_some() {
            into.dns.clone_from(&add.dns);
        }
        if add.analyzer.is_some() {
            into.analyzer.clone_from(&add.analyzer);
        }
    }
    if into.analyzer.is_none() {
        into.analyzer = add.analyzer.take();
    }
    // A result decoded whole (a socket point capturing call by call) wins over one cut at a
    // point that kept only the first bytes.
    if let (Some(d), Some(a)) = (into.database.as_mut(), add.database.as_ref()) {
        if d.response_truncated && !a.response_truncated && !add.incomplete {
            d.clone_from(a);
        }
    }
    if into.database.is_none() {
        into.database = add.database.take();
    }
    if into.dns.is_none() {
        into.dns = add.dns.take();
    }
    match (into.http.as_mut(), add.http.take()) {
        (Some(h), Some(a)) => fill_http(h, &a),
        (None, a) => into.http = a,
        (Some(_), None) => {}
    }
    if into.grpc.is_none() && add.grpc.is_some() {
        // The point that told the call apart decides: it is a gRPC call.
        into.grpc = add.grpc.take();
        into.protocol = Protocol::Grpc as i32;
    }
}

/// Exactly the room for `more` observations after those there: the correlator keeps an exchange
/// for the retention time, and the spare capacity of a grown vector would hold empty
/// observations all that while.
fn exact_room(observations: &mut Vec<Observation>, more: usize) {
    let needed = observations.len() + more;
    if observations.capacity() != needed {
        let mut all = Vec::with_capacity(needed);
        all.append(observations);
        *observations = all;
    }
}

/// Path order: by place on the path, then (between node interfaces, or points whose end is
/// unknown) by when the request was seen.
fn sort_observations(observations: &mut [Observation]) {
    observations.sort_by_key(path_order);
}

/// Observations a view adds that [`add_observations`] puts in place one by one, at most: a
/// single host's points are four.
const FEW_OBSERVATIONS: usize = 4;

fn path_order(o: &Observation) -> (u8, u64, u8) {
    (path_position(o), o.request_start_unix_nanos, rank(o))
}

/// Moves `add`'s observations into `into`'s in path order ([`sort_observations`]): each put
/// after those it does not precede, where `add` brings a few ([`FEW_OBSERVATIONS`]) and
/// `into`'s are in that order already (every view a merge made is) — a view adds one or two to
/// a handful, and sorting the whole vector again for each was most of a counters-only merge's
/// time; else appended and all sorted (no insertion costs more than a sort, whatever a session
/// from the wire holds).
fn add_observations(into: &mut Vec<Observation>, add: impl ExactSizeIterator<Item = Observation>) {
    if add.len() > FEW_OBSERVATIONS || !into.is_sorted_by_key(path_order) {
        into.extend(add);
        sort_observations(into);
        return;
    }
    into.reserve(add.len());
    for o in add {
        let key = path_order(&o);
        let at = into.partition_point(|p| path_order(p) <= key);
        into.insert(at, o);
    }
}

/// What any view `add` adds to `into` as a point of the exchange — its observations, its server
/// end when it is the server's, its counters when its point ranks better, its times, its trace
/// and attributes where `into` lacks them — and all a counters-only view ([`counters_only`])
/// adds. Takes from `add` and leaves it where it is: the collector's local join merges three
/// counters-only views into each decoded one on a single host, and moving a session of nearly a
/// kilobyte in and out was a good part of that. A counters-only view adds no id. The
/// observations vector grows as a vector does: [`merge`] sizes it first, where the session is
/// kept.
pub fn merge_counters(into: &mut Session, add: &mut Session) {
    Counted {
        ranks_better: best_rank(add) < best_rank(into),
        server_from_add: takes_server_from(into, add),
        bytes: add.bytes,
        packets: add.packets,
        client: add.client.take(),
        server: add.server.take(),
        start_unix_nanos: add.start_unix_nanos,
        end_unix_nanos: add.end_unix_nanos,
    }
    .add_to(into);
    if into.trace.is_none() {
        into.trace = add.trace.take();
    }
    for (k, v) in std::mem::take(&mut add.attributes) {
        into.attributes.entry(k).or_insert(v);
    }
    add_observations(&mut into.observations, add.observations.drain(..));
}

/// One point's view of an exchange that decoded nothing — a counters-only view
/// ([`counters_only`]) before it is made a session: its observation, its ends (addresses and
/// ports), counters and times. What the collector's flow table makes of a covered pod veth's
/// exchange, so that the local join can add it to the decoded view of its exchange without
/// building, moving and dropping a session of nearly a kilobyte for it.
#[derive(Debug, Clone, PartialEq)]
pub struct PointView {
    /// The point's observation.
    pub observation: Observation,
    /// The client end as the point saw it: address and port (its names are beside the view).
    pub client: (Bytes, u32),
    /// The server end as the point saw it.
    pub server: (Bytes, u32),
    /// Bytes of the request and the response.
    pub bytes: Counters,
    /// Packets of the request and the response.
    pub packets: Counters,
    /// The session's start.
    pub start_unix_nanos: u64,
    /// The session's end.
    pub end_unix_nanos: u64,
    /// Whether the point saw no response.
    pub incomplete: bool,
}

impl PointView {
    /// The counters-only session of this one view: what [`merge_point`] adds is what
    /// [`merge_counters`] adds of it.
    pub fn into_session(self) -> Session {
        Session {
            protocol: Protocol::Unspecified as i32,
            client: Some(unnamed(self.client)),
            server: Some(unnamed(self.server)),
            observations: vec![self.observation],
            start_unix_nanos: self.start_unix_nanos,
            end_unix_nanos: self.end_unix_nanos,
            bytes: Some(self.bytes),
            packets: Some(self.packets),
            incomplete: self.incomplete,
            ..Session::default()
        }
    }

    /// Whether a merge into `into` takes the server end from this view
    /// ([`takes_server_from`] of its session).
    pub fn takes_server_from(&self, into: &Session) -> bool {
        self.observation.side() == Side::Server && !at_server(&into.observations)
    }
}

/// An end known by its address and port alone.
fn unnamed((ip, port): (Bytes, u32)) -> Endpoint {
    Endpoint {
        ip,
        port,
        ..Endpoint::default()
    }
}

/// [`merge_counters`] of `add`'s session ([`PointView::into_session`]), without making it.
pub fn merge_point(into: &mut Session, mut add: PointView) {
    // A view between the session's very ends (another point of the same connection: a socket's
    // pod veth carried in its records, the peer's socket) adds nothing of them: its ends are
    // not made as endpoints only to find that.
    let (client, server) = if at_end(&into.client, &add.client) && at_end(&into.server, &add.server)
    {
        (None, None)
    } else {
        (
            Some(unnamed(std::mem::take(&mut add.client))),
            Some(unnamed(std::mem::take(&mut add.server))),
        )
    };
    Counted {
        ranks_better: rank(&add.observation) < best_rank(into),
        server_from_add: add.takes_server_from(into),
        bytes: Some(add.bytes),
        packets: Some(add.packets),
        client,
        server,
        start_unix_nanos: add.start_unix_nanos,
        end_unix_nanos: add.end_unix_nanos,
    }
    .add_to(into);
    add_observations(&mut into.observations, std::iter::once(add.observation));
}

/// Whether `end` is at `(ip, port)`.
fn at_end(end: &Option<Endpoint>, (ip, port): &(Bytes, u32)) -> bool {
    end.as_ref().is_some_and(|e| e.ip == *ip && e.port == *port)
}

/// What [`merge_counters`] takes from a view besides its observations, trace and attributes.
struct Counted {
    /// Whether the view's best point ranks better than the session's ([`rank`]): its counters
    /// are taken.
    ranks_better: bool,
    /// [`takes_server_from`].
    server_from_add: bool,
    bytes: Option<Counters>,
    packets: Option<Counters>,
    client: Option<Endpoint>,
    server: Option<Endpoint>,
    start_unix_nanos: u64,
    end_unix_nanos: u64,
}

impl Counted {
    fn add_to(self, into: &mut Session) {
        if self.ranks_better {
            into.bytes = self.bytes;
            into.packets = self.packets;
        }
        match (into.server.as_mut(), self.server) {
            (Some(s), Some(mut a)) if self.server_from_add => {
                fill_endpoint(&mut a, s);
                *s = a;
            }
            (Some(s), Some(a)) => fill_endpoint(s, &a),
            (None, a) => into.server = a,
            (Some(_), None) => {}
        }
        match (into.client.as_mut(), self.client) {
            (Some(c), Some(a)) => fill_endpoint(c, &a),
            (None, a @ Some(_)) => into.client = a,
            _ => {}
        }
        let start = self.start_unix_nanos;
        if start != 0 && (into.start_unix_nanos == 0 || start < into.start_unix_nanos) {
            into.start_unix_nanos = start;
        }
        into.end_unix_nanos = into.end_unix_nanos.max(self.end_unix_nanos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::arb::{arb_observation, arb_session};
    use proptest::prelude::*;

    fn observation((kind, side, start, tag): (u8, u8, u8, u8)) -> Observation {
        let kinds = [PointKind::Pod, PointKind::Node, PointKind::Socket];
        let sides = [Side::Client, Side::Server, Side::Unspecified];
        Observation {
            kind: kinds[usize::from(kind) % kinds.len()] as i32,
            side: sides[usize::from(side) % sides.len()] as i32,
            request_start_unix_nanos: u64::from(start % 4),
            // Tells apart observations the order ranks alike.
            pid: u32::from(tag),
            ..Observation::default()
        }
    }

    fn arb_end() -> impl Strategy<Value = (Bytes, u32)> {
        (proptest::collection::vec(any::<u8>(), 0..17), any::<u32>())
            .prop_map(|(ip, port)| (ip.into(), port))
    }

    fn observations() -> impl Strategy<Value = Vec<Observation>> {
        proptest::collection::vec(any::<(u8, u8, u8, u8)>().prop_map(observation), 0..8)
    }

    proptest! {
        /// Whether `into` was in path order or not, the merged observations are those of both
        /// in the order a stable sort of `into`'s followed by `add`'s gives.
        #[test]
        fn observations_are_added_in_the_order_a_stable_sort_gives(
            mut into in observations(),
            mut add in observations(),
            sorted in any::<bool>(),
        ) {
            if sorted {
                sort_observations(&mut into);
            }
            let mut expected = into.clone();
            expected.extend(add.iter().cloned());
            sort_observations(&mut expected);
            add_observations(&mut into, add.drain(..));
            prop_assert!(add.is_empty());
            prop_assert_eq!(into, expected);
        }

        /// A point's view merged as it is adds exactly what its session merged would.
        #[test]
        fn a_point_view_merges_as_its_session_does(
            into in arb_session(),
            observation in arb_observation(),
            (client, server) in (arb_end(), arb_end()),
            (a, b, c, d) in any::<(u64, u64, u64, u64)>(),
            (start_unix_nanos, end_unix_nanos, incomplete) in any::<(u64, u64, bool)>(),
        ) {
            let (bytes, packets) = (
                Counters { request: a, response: b },
                Counters { request: c, response: d },
            );
            let view = PointView {
                observation,
                client,
                server,
                bytes,
                packets,
                start_unix_nanos,
                end_unix_nanos,
                incomplete,
            };
            let mut by_session = into.clone();
            let mut session = view.clone().into_session();
            prop_assert!(counters_only(&session));
            prop_assert_eq!(fits_point(&into, &view.observation), fits(&into, &session));
            merge_counters(&mut by_session, &mut session);
            let mut by_view = into;
            merge_point(&mut by_view, view);
            prop_assert_eq!(by_view, by_session);
        }

        /// A point's view between the very ends of the session it merges into (named there or
        /// not: another point of the same connection) adds exactly what its session would,
        /// though its ends are not made.
        #[test]
        fn a_view_between_the_same_ends_merges_as_its_session_does(
            mut into in arb_session(),
            observation in arb_observation(),
            (client, server) in (arb_end(), arb_end()),
            (a, b) in any::<(u64, u64)>(),
            (start_unix_nanos, end_unix_nanos) in any::<(u64, u64)>(),
        ) {
            let end = |e: &mut Option<Endpoint>, (ip, port): (Bytes, u32)| {
                let e = e.get_or_insert_with(Endpoint::default);
                (e.ip, e.port) = (ip, port);
                (e.ip.clone(), e.port)
            };
            let (client, server) = (end(&mut into.client, client), end(&mut into.server, server));
            let view = PointView {
                observation,
                client,
                server,
                bytes: Counters { request: a, response: b },
                packets: Counters { request: b, response: a },
                start_unix_nanos,
                end_unix_nanos,
                incomplete: false,
            };
            let mut by_session = into.clone();
            merge_counters(&mut by_session, &mut view.clone().into_session());
            merge_point(&mut into, view);
            prop_assert_eq!(into, by_session);
        }
    }
}
