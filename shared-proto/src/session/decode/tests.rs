use super::*;
use crate::session::v1::{Analyzer, Database, Dns, Grpc, Kafka, Protocol};
use proptest::prelude::*;

/// Both decoders on the same bytes: equal sessions, or both refusing.
fn agree(bytes: &[u8]) -> std::result::Result<(), TestCaseError> {
    let ours = decode(bytes);
    let theirs = Session::decode(bytes);
    match (ours, theirs) {
        (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
        (Err(_), Err(_)) => {}
        (a, b) => prop_assert!(false, "ours {:?}, prost's {:?}", a, b),
    }
    Ok(())
}

fn observation(i: u64) -> Observation {
    Observation {
        kind: 1,
        interface: "vb1-s".into(),
        node: "node-a".into(),
        probe_id: "0123456789abcdef".into(),
        side: 2,
        request_start_unix_nanos: 1_700_000_000_000_000_000 + i,
        request_end_unix_nanos: 2 + i,
        response_start_unix_nanos: 3 + i,
        response_end_unix_nanos: u64::MAX - i,
        request_tcp_seq: 123_456_789,
        response_tcp_seq: u32::MAX,
        request_bytes: 40,
        response_bytes: 240,
        request_packets: 1,
        response_packets: 2,
        retransmits: 3,
        pid: 1234,
        comm: "nginx".into(),
        netns_inode: 4_026_532_000,
    }
}

/// A session with every field set, the rarely used ones too.
fn full() -> Session {
    Session {
        id: "0123456789abcdef/1f/42".into(),
        protocol: Protocol::Http1 as i32,
        client: Some(Endpoint {
            ip: vec![10, 0, 0, 2],
            port: 40000,
            pod: "client-0".into(),
            namespace: "shop".into(),
            node: "node-a".into(),
            workload: "client".into(),
            service: "client-svc".into(),
        }),
        server: Some(Endpoint {
            ip: vec![0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            port: 80,
            ..Endpoint::default()
        }),
        observations: vec![observation(0), observation(7)],
        start_unix_nanos: 11,
        end_unix_nanos: 12,
        bytes: Some(Counters {
            request: 40,
            response: 240,
        }),
        packets: Some(Counters {
            request: 1,
            response: 0,
        }),
        http: Some(Http {
            method: "GET".into(),
            target: "/cart?id=ü".into(),
            host: "shop".into(),
            user_agent: "curl/8".into(),
            status_code: 200,
            version: "HTTP/1.1".into(),
            request_id: "r-1".into(),
            envoy_decorator: "shop:80/*".into(),
            reason: "OK".into(),
            request_content_length: 5,
            response_content_length: 100,
            response_chunked: true,
        }),
        trace: Some(TraceContext {
            format: 1,
            trace_id: vec![7; 16],
            parent_span_id: vec![9; 8],
            sampled: true,
            tracestate: "vendor=x".into(),
        }),
        incomplete: true,
        attributes: [("clovisor.pipeline_position".to_owned(), "2".to_owned())].into(),
        grpc: Some(Box::new(Grpc {
            service: "shop.Cart".into(),
            method: "Get".into(),
            status_code: Some(0),
            message: String::new(),
        })),
        dns: Some(Box::new(Dns {
            question_name: "shop.svc".into(),
            answer_addresses: vec![vec![10, 0, 0, 9]],
            ..Dns::default()
        })),
        database: Some(Box::new(Database {
            system: "redis".into(),
            rows: Some(3),
            ..Database::default()
        })),
        kafka: Some(Box::new(Kafka {
            topic: "orders".into(),
            error_code: Some(-1),
            ..Kafka::default()
        })),
        analyzer: Some(Box::new(Analyzer {
            name: "mine".into(),
            fields: [("k".to_owned(), "v".to_owned())].into(),
        })),
        merged_ids: vec!["0123456789abcdef/2a/42".into(), String::new()],
    }
}

#[test]
fn a_full_session_decodes_as_prost_decodes_it() {
    let s = full();
    let bytes = s.encode_to_vec();
    assert_eq!(decode(&bytes).expect("decodes"), s);
    assert_eq!(decode(&[]).expect("empty"), Session::default());
}

#[test]
fn a_message_field_given_twice_is_merged_and_a_scalar_given_twice_is_the_last() {
    let first = Session {
        id: "a".into(),
        client: Some(Endpoint {
            ip: vec![1, 2, 3, 4],
            pod: "p".into(),
            ..Endpoint::default()
        }),
        ..Session::default()
    };
    let second = Session {
        id: "b".into(),
        client: Some(Endpoint {
            port: 9,
            ..Endpoint::default()
        }),
        ..Session::default()
    };
    let mut bytes = first.encode_to_vec();
    bytes.extend(second.encode_to_vec());
    let s = decode(&bytes).expect("decodes");
    assert_eq!(s, Session::decode(bytes.as_slice()).expect("prost decodes"));
    assert_eq!(s.id, "b");
    let client = s.client.expect("client");
    assert_eq!(
        (client.ip, client.port, client.pod.as_str()),
        (vec![1, 2, 3, 4], 9, "p")
    );
}

#[test]
fn unknown_and_reserved_fields_are_skipped_and_bad_bytes_refused() {
    // Observation field 5 (reserved) and 99 (unknown), a session field 30 (unknown), a group.
    let mut obs = vec![0x28, 0x01]; // 5: varint 1
    obs.extend([0x98, 0x06, 0x02]); // 99: varint 2
    obs.extend([0x1a, 0x01, b'n']); // 3 (node): "n"
    let mut bytes = vec![0x2a, obs.len() as u8];
    bytes.extend(&obs);
    bytes.extend([0xf2, 0x01, 0x00]); // 30: empty bytes
    bytes.extend([0xa3, 0x02, 0x08, 0x01, 0xa4, 0x02]); // 36: a group holding a varint
    let s = decode(&bytes).expect("decodes");
    assert_eq!(s, Session::decode(bytes.as_slice()).expect("prost decodes"));
    assert_eq!(s.observations.first().map(|o| o.node.as_str()), Some("n"));

    for bad in [
        &[0x0a, 0x02, 0xff, 0xfe][..], // id: not UTF-8
        &[0x08, 0x01],                 // id as a varint
        &[0x31, 0x01],                 // start: cut short
        &[0x2a, 0x05, 0x08],           // an observation past the end
        &[0x2a, 0x02, 0x12, 0x05],     // an observation's string past its message
        &[0x00],                       // field 0
        &[0x72, 0x02, 0x0a, 0xff],     // grpc (prost's part): cut short
    ] {
        assert!(decode(bad).is_err(), "{bad:x?}");
        assert!(Session::decode(bad).is_err(), "{bad:x?}");
    }
}

fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), ".{0,12}"]
}

fn arb_endpoint() -> impl Strategy<Value = Option<Endpoint>> {
    proptest::option::of(
        (
            proptest::collection::vec(any::<u8>(), 0..17),
            any::<u32>(),
            [
                arb_string(),
                arb_string(),
                arb_string(),
                arb_string(),
                arb_string(),
            ],
        )
            .prop_map(
                |(ip, port, [pod, namespace, node, workload, service])| Endpoint {
                    ip,
                    port,
                    pod,
                    namespace,
                    node,
                    workload,
                    service,
                },
            ),
    )
}

fn arb_observation() -> impl Strategy<Value = Observation> {
    (
        (
            any::<i32>(),
            any::<i32>(),
            [arb_string(), arb_string(), arb_string(), arb_string()],
        ),
        [any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()],
        [any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()],
        [
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        ],
    )
        .prop_map(
            |((kind, side, [interface, node, probe_id, comm]), times, small, counts)| Observation {
                kind,
                interface,
                node,
                probe_id,
                side,
                request_start_unix_nanos: times[0],
                request_end_unix_nanos: times[1],
                response_start_unix_nanos: times[2],
                response_end_unix_nanos: times[3],
                request_tcp_seq: small[0],
                response_tcp_seq: small[1],
                retransmits: small[2],
                pid: small[3],
                request_bytes: counts[0],
                response_bytes: counts[1],
                request_packets: counts[2],
                response_packets: counts[3],
                netns_inode: counts[4],
                comm,
            },
        )
}

fn arb_http() -> impl Strategy<Value = Option<Http>> {
    proptest::option::of(
        (
            [
                arb_string(),
                arb_string(),
                arb_string(),
                arb_string(),
                arb_string(),
            ],
            [arb_string(), arb_string(), arb_string()],
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<bool>(),
        )
            .prop_map(
                |(
                    [method, target, host, user_agent, version],
                    [request_id, envoy_decorator, reason],
                    status_code,
                    req,
                    resp,
                    chunked,
                )| Http {
                    method,
                    target,
                    host,
                    user_agent,
                    status_code,
                    version,
                    request_id,
                    envoy_decorator,
                    reason,
                    request_content_length: req,
                    response_content_length: resp,
                    response_chunked: chunked,
                },
            ),
    )
}

fn arb_session() -> impl Strategy<Value = Session> {
    (
        (arb_string(), any::<i32>(), arb_endpoint(), arb_endpoint()),
        proptest::collection::vec(arb_observation(), 0..4),
        (any::<u64>(), any::<u64>(), any::<bool>()),
        proptest::option::of((any::<u64>(), any::<u64>())),
        arb_http(),
        proptest::option::of((
            any::<i32>(),
            proptest::collection::vec(any::<u8>(), 0..20),
            proptest::collection::vec(any::<u8>(), 0..10),
            any::<bool>(),
            arb_string(),
        )),
        proptest::collection::vec(arb_string(), 0..3),
        proptest::option::of((arb_string(), proptest::option::of(any::<u32>()))),
        proptest::collection::hash_map(arb_string(), arb_string(), 0..3),
    )
        .prop_map(
            |(
                (id, protocol, client, server),
                observations,
                (start, end, incomplete),
                bytes,
                http,
                trace,
                merged_ids,
                grpc,
                attributes,
            )| {
                Session {
                    id,
                    protocol,
                    client,
                    server,
                    observations,
                    start_unix_nanos: start,
                    end_unix_nanos: end,
                    bytes: bytes.map(|(request, response)| Counters { request, response }),
                    packets: None,
                    http,
                    trace: trace.map(|(format, trace_id, parent_span_id, sampled, tracestate)| {
                        TraceContext {
                            format,
                            trace_id,
                            parent_span_id,
                            sampled,
                            tracestate,
                        }
                    }),
                    incomplete,
                    attributes,
                    grpc: grpc.map(|(service, status_code)| {
                        Box::new(Grpc {
                            service,
                            status_code,
                            ..Grpc::default()
                        })
                    }),
                    merged_ids,
                    ..Session::default()
                }
            },
        )
}

proptest! {
    #[test]
    fn any_session_decodes_as_prost_decodes_it(s in arb_session()) {
        let bytes = s.encode_to_vec();
        prop_assert_eq!(decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?, s);
    }

    #[test]
    fn damaged_sessions_are_refused_or_decoded_as_prost_does(
        s in arb_session(),
        cut in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let mut bytes = s.encode_to_vec();
        for (at, byte) in flips {
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
        }
        agree(&bytes)?;
        let end = cut.index(bytes.len() + 1);
        agree(&bytes[..end])?;
    }

    #[test]
    fn any_bytes_are_refused_or_decoded_as_prost_does(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        agree(&bytes)?;
    }
}
