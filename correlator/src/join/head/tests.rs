use super::*;
use clovisor_proto::session::v1::{
    Dns, Endpoint, Http, Observation, Protocol, Session, TraceContext,
};
use proptest::prelude::*;
use prost::Message as _;

/// Everything the join reads of a view, from the whole session.
fn from_whole(s: &Session) -> Derived {
    let client = ClientAddr::of(s);
    Derived {
        id: s.id.clone(),
        merged_ids: s.merged_ids.clone(),
        client,
        wire_key: client.and_then(|c| key::wire_key(s, c)),
        keyed: s.observations.iter().any(key::has_tcp_seq),
        intervals: s.observations.iter().map(key::interval).collect(),
        trace: s
            .trace
            .as_ref()
            .map(|t| (t.trace_id.clone(), t.parent_span_id.clone())),
    }
}

/// The same, from the head.
fn from_head(h: &Head<'_>) -> Derived {
    let client = h.client();
    Derived {
        id: h.id().to_owned(),
        merged_ids: h.merged_ids().iter().map(|s| (*s).to_owned()).collect(),
        client,
        wire_key: client.and_then(|c| h.wire_key(c)),
        keyed: h.keyed(),
        intervals: h.intervals().to_vec(),
        trace: h.trace().map(|(t, p)| (t.to_vec(), p.to_vec())),
    }
}

#[derive(Debug, PartialEq)]
struct Derived {
    id: String,
    merged_ids: Vec<String>,
    client: Option<ClientAddr>,
    wire_key: Option<WireKey>,
    keyed: bool,
    intervals: Vec<(u64, u64)>,
    trace: Option<(Vec<u8>, Vec<u8>)>,
}

fn observation(kind: PointKind, side: Side, seq: u32, start: u64) -> Observation {
    Observation {
        kind: kind as i32,
        interface: "veth1".into(),
        node: "node-a".into(),
        probe_id: "probe-a".into(),
        side: side as i32,
        request_start_unix_nanos: start,
        request_end_unix_nanos: start + 10,
        response_start_unix_nanos: start + 20,
        response_end_unix_nanos: start + 30,
        request_tcp_seq: seq,
        response_tcp_seq: seq + 7,
        request_bytes: 80,
        comm: "nginx".into(),
        netns_inode: 4026531840,
        ..Observation::default()
    }
}

/// A view as a collector sends it: a merged veth and socket view at the server, with trace
/// context, a pipeline position and the id of the view merged into it.
fn full(client_ip: [u8; 4]) -> Session {
    Session {
        id: "probe-a/1f/3".into(),
        protocol: Protocol::Redis as i32,
        client: Some(Endpoint {
            ip: client_ip.to_vec().into(),
            port: 41000,
            pod: "client-0".into(),
            namespace: "shop".into(),
            ..Endpoint::default()
        }),
        server: Some(Endpoint {
            ip: vec![10, 0, 0, 9].into(),
            port: 6379,
            pod: "redis-0".into(),
            ..Endpoint::default()
        }),
        observations: vec![
            observation(PointKind::Pod, Side::Server, 1000, 5_000),
            observation(PointKind::Socket, Side::Server, 1000, 5_005),
        ],
        start_unix_nanos: 5_000,
        end_unix_nanos: 5_035,
        http: Some(Http {
            method: "GET".into(),
            target: "/a".into(),
            ..Http::default()
        }),
        trace: Some(TraceContext {
            trace_id: vec![7; 16],
            parent_span_id: vec![9; 8],
            tracestate: "k=v".into(),
            ..TraceContext::default()
        }),
        attributes: [(MESSAGE_POSITION_ATTRIBUTE.to_owned(), "2".to_owned())].into(),
        merged_ids: vec!["probe-a/2a/3".into()],
        ..Session::default()
    }
}

fn head_of(s: &Session) -> Derived {
    let bytes = s.encode_to_vec();
    match Head::read(&bytes) {
        Some(h) => from_head(&h),
        None => panic!("no head read from {s:?}"),
    }
}

#[test]
fn a_head_places_a_view_as_its_whole_session_does() {
    let whole = full([10, 0, 0, 2]);
    let head = head_of(&whole);
    assert_eq!(head, from_whole(&whole));
    assert_eq!(head.wire_key.map(|k| k.position), Some(2), "position read");
    assert_eq!(head.trace, Some((vec![7; 16], vec![9; 8])));
}

#[test]
fn a_loopback_client_is_scoped_by_node_and_namespace_from_the_head_too() {
    let whole = full([127, 0, 0, 1]);
    let head = head_of(&whole);
    assert_eq!(head, from_whole(&whole));
    assert_ne!(head.client.map(|c| c.scope), Some(0));
}

#[test]
fn a_datagram_has_no_wire_key_from_its_head_either() {
    let mut whole = full([10, 0, 0, 2]);
    whole.dns = Some(Box::new(Dns {
        transport: DnsTransport::Udp as i32,
        question_name: "example.com".into(),
        ..Dns::default()
    }));
    let head = head_of(&whole);
    assert_eq!(head.wire_key, None);
    assert_eq!(head, from_whole(&whole));
}

#[test]
fn the_pipeline_position_wins_over_the_message_position() {
    let mut whole = full([10, 0, 0, 2]);
    whole
        .attributes
        .insert(PIPELINE_POSITION_ATTRIBUTE.to_owned(), "5".to_owned());
    let head = head_of(&whole);
    assert_eq!(head.wire_key.map(|k| k.position), Some(5));
    assert_eq!(head, from_whole(&whole));
}

#[test]
fn a_view_awaits_others_while_a_pod_at_one_end_was_not_seen_from_its_side() {
    let awaits = |s: &Session| {
        let bytes = s.encode_to_vec();
        Head::read(&bytes).map(|h| h.awaits_views())
    };
    let mut s = full([10, 0, 0, 2]);
    assert_eq!(
        awaits(&s),
        Some(true),
        "the client pod's node may send its view"
    );
    s.observations[1].side = Side::Client as i32;
    assert_eq!(awaits(&s), Some(false), "both sides seen");
    let mut s = full([10, 0, 0, 2]);
    if let Some(c) = s.client.as_mut() {
        c.pod.clear();
    }
    assert_eq!(
        awaits(&s),
        Some(false),
        "a client that is no pod has no probe of ours"
    );
    s.observations
        .iter_mut()
        .for_each(|o| o.side = Side::Client as i32);
    assert_eq!(
        awaits(&s),
        Some(true),
        "the server pod's node may send its view"
    );
}

#[test]
fn a_server_endpoint_is_read_only_when_the_hint_needs_it() {
    // Seen at both sides: whether the server is a pod is never asked, so its endpoint is not
    // read on arrival, and one that is not protobuf is found when the view is decoded whole.
    let mut s = full([10, 0, 0, 2]);
    s.server = None;
    s.observations[1].side = Side::Client as i32;
    let mut bytes = s.encode_to_vec();
    // Field 4 (`server`), length-delimited, one byte that starts no field (field number 0).
    bytes.extend_from_slice(&[4 << 3 | 2, 1, 0]);
    let h = Head::read(&bytes).expect("the head does not read the server endpoint");
    assert!(!h.awaits_views());
    assert!(Session::decode(bytes.as_slice()).is_err());
    // Seen only at the client's side, a malformed server endpoint is taken for no pod (the
    // hint is only a guess at what is cheaper), a well-formed pod for one.
    s.observations[0].side = Side::Client as i32;
    let mut malformed = s.encode_to_vec();
    malformed.extend_from_slice(&[4 << 3 | 2, 1, 0]);
    assert_eq!(
        Head::read(&malformed).map(|h| h.awaits_views()),
        Some(false)
    );
    s.server = full([10, 0, 0, 2]).server;
    assert_eq!(
        Head::read(&s.encode_to_vec()).map(|h| h.awaits_views()),
        Some(true)
    );
}

#[test]
fn what_the_head_has_no_room_for_is_left_to_the_whole_decoding() {
    let mut s = full([10, 0, 0, 2]);
    s.observations = (0..=MAX_OBSERVATIONS as u64)
        .map(|i| observation(PointKind::Pod, Side::Server, 1000, i))
        .collect();
    assert!(Head::read(&s.encode_to_vec()).is_none());
    let mut s = full([10, 0, 0, 2]);
    s.merged_ids = (0..=MAX_MERGED_IDS).map(|i| format!("p/{i}/0")).collect();
    assert!(Head::read(&s.encode_to_vec()).is_none());
    // An endpoint given twice: prost merges them.
    let mut bytes = full([10, 0, 0, 2]).encode_to_vec();
    let client = Endpoint {
        port: 42,
        ..Endpoint::default()
    };
    prost::encoding::message::encode(tag::CLIENT, &client, &mut bytes);
    assert!(Head::read(&bytes).is_none());
}

#[test]
fn a_truncated_session_has_no_head() {
    let bytes = full([10, 0, 0, 2]).encode_to_vec();
    for cut in 1..bytes.len() {
        // Every cut either ends inside a field (no head) or between fields (a shorter head).
        let _ = Head::read(&bytes[..cut]);
    }
    assert!(Head::read(&bytes[..bytes.len() - 3]).is_none());
}

fn arb_endpoint() -> impl Strategy<Value = Option<Endpoint>> {
    proptest::option::of(
        (
            prop_oneof![
                Just(vec![]),
                Just(vec![10, 0, 0, 2]),
                Just(vec![127, 0, 0, 1]),
                Just(vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1]),
                proptest::collection::vec(any::<u8>(), 0..20),
            ],
            prop_oneof![Just(0u32), Just(41000), any::<u32>()],
            prop_oneof![Just(String::new()), Just("pod-a".to_owned())],
        )
            .prop_map(|(ip, port, pod)| Endpoint {
                ip: ip.into(),
                port,
                pod,
                namespace: "ns".into(),
                ..Endpoint::default()
            }),
    )
}

fn arb_observation() -> impl Strategy<Value = Observation> {
    (
        (
            0i32..5,
            0i32..4,
            any::<bool>(),
            prop_oneof![Just(0u32), Just(1000), any::<u32>()],
        ),
        (any::<u64>(), any::<u64>(), any::<u64>()),
        prop_oneof![Just(0u64), Just(7), any::<u64>()],
        prop_oneof![Just(String::new()), Just("node-a".to_owned()), ".{0,8}"],
    )
        .prop_map(
            |((kind, side, _, seq), (start, end, resp_end), netns, node)| Observation {
                kind,
                side,
                request_tcp_seq: seq,
                request_start_unix_nanos: start,
                request_end_unix_nanos: end,
                response_end_unix_nanos: resp_end,
                netns_inode: netns,
                node,
                interface: "eth0".into(),
                ..Observation::default()
            },
        )
}

fn arb_session() -> impl Strategy<Value = Session> {
    (
        (".{0,12}", arb_endpoint(), arb_endpoint()),
        proptest::collection::vec(arb_observation(), 0..10),
        proptest::option::of((
            proptest::collection::vec(any::<u8>(), 0..20),
            proptest::collection::vec(any::<u8>(), 0..10),
        )),
        (
            proptest::option::of(prop_oneof![
                Just("1".to_owned()),
                Just("x".to_owned()),
                "[0-9]{0,11}"
            ]),
            proptest::option::of(prop_oneof![Just("3".to_owned()), "[0-9]{0,3}"]),
            proptest::option::of(0i32..3),
        ),
        proptest::collection::vec(".{0,6}", 0..10),
    )
        .prop_map(
            |((id, client, server), observations, trace, (pipeline, message, dns), merged_ids)| {
                let mut attributes = std::collections::HashMap::new();
                if let Some(p) = pipeline {
                    attributes.insert(PIPELINE_POSITION_ATTRIBUTE.to_owned(), p);
                }
                if let Some(m) = message {
                    attributes.insert(MESSAGE_POSITION_ATTRIBUTE.to_owned(), m);
                }
                attributes.insert("other".to_owned(), "value".to_owned());
                Session {
                    id,
                    client,
                    server,
                    observations,
                    trace: trace.map(|(trace_id, parent_span_id)| TraceContext {
                        trace_id,
                        parent_span_id,
                        ..TraceContext::default()
                    }),
                    attributes,
                    dns: dns.map(|transport| {
                        Box::new(Dns {
                            transport,
                            ..Dns::default()
                        })
                    }),
                    merged_ids,
                    http: Some(Http::default()),
                    ..Session::default()
                }
            },
        )
}

proptest! {
    /// Any session a collector can send: the head reads what the whole decoding gives, or
    /// leaves it to the whole decoding when it has no room.
    #[test]
    fn the_head_agrees_with_the_whole_session(s in arb_session()) {
        let bytes = s.encode_to_vec();
        let whole = Session::decode(bytes.as_slice()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        match Head::read(&bytes) {
            Some(h) => {
                prop_assert_eq!(from_head(&h), from_whole(&whole));
                let awaits = |e: &Option<Endpoint>, side: Side| {
                    e.as_ref().is_some_and(|e| !e.pod.is_empty())
                        && !whole.observations.iter().any(|o| o.side == side as i32)
                };
                prop_assert_eq!(
                    h.awaits_views(),
                    awaits(&whole.client, Side::Client) || awaits(&whole.server, Side::Server)
                );
            }
            None => prop_assert!(
                s.observations.len() > MAX_OBSERVATIONS || s.merged_ids.len() > MAX_MERGED_IDS
            ),
        }
    }

    /// Any bytes at all: no panic, and where both read them, the head agrees with prost.
    #[test]
    fn any_bytes_are_read_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let head = Head::read(&bytes);
        if let (Some(h), Ok(whole)) = (head, Session::decode(bytes.as_slice())) {
            prop_assert_eq!(from_head(&h), from_whole(&whole));
        }
    }
}
