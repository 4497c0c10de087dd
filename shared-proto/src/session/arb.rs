//! Sessions for the codec's tests: one with every field set, and any session.

use proptest::prelude::*;

use super::v1::{
    Analyzer, Counters, Database, Dns, Endpoint, Grpc, Http, Kafka, Observation, Protocol, Session,
    TraceContext,
};

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
pub(crate) fn full() -> Session {
    Session {
        id: "0123456789abcdef/1f/42".into(),
        protocol: Protocol::Http1 as i32,
        client: Some(Endpoint {
            ip: vec![10, 0, 0, 2].into(),
            port: 40000,
            pod: "client-0".into(),
            namespace: "shop".into(),
            node: "node-a".into(),
            workload: "client".into(),
            service: "client-svc".into(),
        }),
        server: Some(Endpoint {
            ip: vec![0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1].into(),
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
                    ip: ip.into(),
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

pub(crate) fn arb_observation() -> impl Strategy<Value = Observation> {
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

pub(crate) fn arb_session() -> impl Strategy<Value = Session> {
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
