use super::*;
use clovisor_proto::capture::v1::Direction;
use clovisor_proto::capture::v1::{
    EndpointUpdate, FlowEnd, FlowEndReason, FlowKey, Message, ObservationPoint, Record,
};
use clovisor_proto::common::v1::Side;
use clovisor_proto::session::v1::Session;
use prometheus_client::registry::Registry;

const CLIENT: [u8; 4] = [10, 0, 0, 1];
const SERVER: [u8; 4] = [10, 0, 0, 2];

fn key() -> FlowKey {
    FlowKey {
        client_ip: CLIENT.to_vec(),
        server_ip: SERVER.to_vec(),
        client_port: 40000,
        server_port: 80,
        transport: capture::Transport::Tcp as i32,
    }
}

fn point() -> ObservationPoint {
    ObservationPoint {
        kind: PointKind::Pod as i32,
        ifindex: 7,
        interface: "veth-server".into(),
        node: "node-a".into(),
        ..ObservationPoint::default()
    }
}

fn msg(flow_id: u64, index: u32, dir: Direction, payload: &[u8]) -> Record {
    let t = 1_000_000 * u64::from(index + 1);
    Record {
        kind: Some(record::Kind::Message(Message {
            flow: Some(key()),
            point: Some(point()),
            flow_id,
            index,
            direction: dir as i32,
            to_pod: dir == Direction::ClientToServer,
            start_unix_nanos: t,
            end_unix_nanos: t + 500,
            tcp_seq: 1000 + index,
            bytes: payload.len() as u64 + 1000,
            packets: 3,
            retransmits: 0,
            payload: payload.to_vec().into(),
            protocol: ProtocolHint::Http as i32,
            partial: false,
            wire: None,
            segments: Vec::new(),
        })),
    }
}

/// Message record `r`, changed by `f`.
fn edit(mut r: Record, f: impl FnOnce(&mut Message)) -> Record {
    match r.kind.as_mut() {
        Some(record::Kind::Message(m)) => f(m),
        other => panic!("expected a message, got {other:?}"),
    }
    r
}

fn end(flow_id: u64) -> Record {
    Record {
        kind: Some(record::Kind::FlowEnd(FlowEnd {
            flow: Some(key()),
            point: Some(point()),
            flow_id,
            reason: FlowEndReason::Fin as i32,
            unix_nanos: 99,
            messages: 0,
            srtt_us: 0,
            total_retransmits: 0,
        })),
    }
}

const REQ: &[u8] = b"GET /a HTTP/1.1\r\nHost: svc\r\n\r\n";
const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

fn table() -> (FlowTable, Arc<CollectorMetrics>) {
    let m = Arc::new(CollectorMetrics::new());
    (
        FlowTable::new(FlowTableConfig::default(), Arc::clone(&m)),
        m,
    )
}

/// A table of at most `max_flows` flows that go idle after `idle_secs` seconds.
fn bounded_table(max_flows: usize, idle_secs: u64) -> (FlowTable, Arc<CollectorMetrics>) {
    let m = Arc::new(CollectorMetrics::new());
    let cfg = FlowTableConfig {
        max_flows,
        idle_timeout: Duration::from_secs(idle_secs),
        ..FlowTableConfig::default()
    };
    (FlowTable::new(cfg, Arc::clone(&m)), m)
}

/// The `FlowStart` of flow `flow_id` with the test key and point, traced as HTTP.
fn announced(flow_id: u64) -> capture::FlowStart {
    capture::FlowStart {
        flow_id,
        flow: Some(key()),
        point: Some(point()),
        protocol: ProtocolHint::Http as i32,
        counters_only: false,
        wire_point: None,
    }
}

fn feed(t: &mut FlowTable, recs: Vec<Record>) -> Vec<Session> {
    let mut out = Vec::new();
    for r in recs {
        t.ingest("probe-1", r, Instant::now(), &mut out);
    }
    out.into_iter().map(Collected::into_session).collect()
}

#[test]
fn pairs_keep_alive_exchanges_and_fills_session() {
    let (mut t, m) = table();
    let out = feed(
        &mut t,
        vec![
            Record {
                kind: Some(record::Kind::Endpoint(EndpointUpdate {
                    ip: SERVER.to_vec(),
                    pod: "web-0".into(),
                    namespace: "default".into(),
                    node: "node-a".into(),
                    workload: "web".into(),
                    ifindex: 7,
                    interface: "veth-server".into(),
                    removed: false,
                    ..EndpointUpdate::default()
                })),
            },
            msg(1, 0, Direction::ClientToServer, REQ),
            msg(1, 1, Direction::ServerToClient, RESP),
            msg(
                1,
                2,
                Direction::ClientToServer,
                b"POST /b HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            ),
            msg(
                1,
                3,
                Direction::ServerToClient,
                b"HTTP/1.1 201 Created\r\n\r\n",
            ),
        ],
    );
    assert_eq!(
        out.len(),
        2,
        "two exchanges on one connection, got {out:#?}"
    );
    let s = &out[0];
    let http = s.http.as_ref().expect("http fields");
    assert_eq!(
        (http.method.as_str(), http.target.as_str(), http.status_code),
        ("GET", "/a", 200)
    );
    assert_eq!(http.host, "svc");
    assert_eq!(s.id, "probe-1/1/0");
    assert_eq!(out[1].id, "probe-1/1/2", "ids differ per exchange");
    assert!(!s.incomplete);
    let server = s.server.as_ref().expect("server endpoint");
    assert_eq!(
        (server.pod.as_str(), server.namespace.as_str(), server.port),
        ("web-0", "default", 80)
    );
    let obs = &s.observations[0];
    assert_eq!(
        obs.side(),
        Side::Server,
        "the veth belongs to the server pod"
    );
    assert_eq!(obs.probe_id, "probe-1");
    assert_eq!(obs.node, "node-a");
    assert_eq!(obs.request_start_unix_nanos, 1_000_000);
    assert_eq!(obs.response_end_unix_nanos, 2_000_500);
    assert_eq!(s.start_unix_nanos, 1_000_000);
    assert_eq!(s.end_unix_nanos, 2_000_500);
    assert_eq!(
        s.bytes.as_ref().map(|b| (b.request, b.response)),
        Some((REQ.len() as u64 + 1000, RESP.len() as u64 + 1000))
    );
    assert_eq!(
        s.packets.as_ref().map(|p| (p.request, p.response)),
        Some((3, 3))
    );
    assert_eq!(
        (
            obs.request_bytes,
            obs.response_bytes,
            obs.request_packets,
            obs.response_packets,
            obs.request_tcp_seq,
        ),
        (
            REQ.len() as u64 + 1000,
            RESP.len() as u64 + 1000,
            3,
            3,
            1000
        ),
        "the observation carries its own point's counters and the request's sequence number"
    );
    assert_eq!(out[1].http.as_ref().map(|h| h.status_code), Some(201));
    assert_eq!(m.sessions_emitted_for("complete"), 2);
    assert_eq!(t.len(), 1, "the connection stays open");
}

#[test]
fn out_of_order_indexes_are_reordered() {
    let (mut t, m) = table();
    let out = feed(
        &mut t,
        vec![
            msg(1, 1, Direction::ServerToClient, RESP),
            msg(
                1,
                3,
                Direction::ServerToClient,
                b"HTTP/1.1 404 Not Found\r\n\r\n",
            ),
            msg(1, 0, Direction::ClientToServer, REQ),
            msg(
                1,
                2,
                Direction::ClientToServer,
                b"GET /missing HTTP/1.1\r\n\r\n",
            ),
        ],
    );
    let got: Vec<(String, u32)> = out
        .iter()
        .filter_map(|s| s.http.as_ref().map(|h| (h.target.clone(), h.status_code)))
        .collect();
    assert_eq!(
        got,
        vec![("/a".to_owned(), 200), ("/missing".to_owned(), 404)]
    );
    assert_eq!(m.messages_dropped_for("gap"), 0);
    // A re-sent old message is a duplicate.
    let out = feed(&mut t, vec![msg(1, 1, Direction::ServerToClient, RESP)]);
    assert!(out.is_empty());
    assert_eq!(m.messages_dropped_for("duplicate"), 1);
}

#[test]
fn gap_is_skipped_after_timeout() {
    let (mut t, m) = table();
    let mut out = Vec::new();
    let t0 = Instant::now();
    // Indexes 0 and 1 (an exchange) never arrive.
    t.ingest(
        "probe-1",
        msg(1, 2, Direction::ClientToServer, REQ),
        t0,
        &mut out,
    );
    t.ingest(
        "probe-1",
        msg(1, 3, Direction::ServerToClient, RESP),
        t0,
        &mut out,
    );
    assert!(out.is_empty(), "waits for the gap");
    t.flush(t0 + Duration::from_secs(3), &mut out);
    assert_eq!(
        m.messages_dropped_for("gap"),
        2,
        "indexes 0 and 1 never came: two messages missing"
    );
    assert_eq!(
        out.len(),
        1,
        "after the timeout the buffered exchange is emitted: {out:#?}"
    );
}

#[test]
fn connection_ends_are_counted_by_point_and_reason() {
    let (mut t, m) = table();
    let mut reset = end(8);
    if let Some(record::Kind::FlowEnd(e)) = reset.kind.as_mut() {
        e.reason = FlowEndReason::Rst as i32;
    }
    feed(
        &mut t,
        vec![
            msg(7, 0, Direction::ClientToServer, REQ),
            end(7),
            msg(8, 0, Direction::ClientToServer, REQ),
            reset,
        ],
    );
    assert_eq!(
        (
            m.connections_ended_for("pod", "fin"),
            m.connections_ended_for("pod", "rst")
        ),
        (1, 1),
        "one FIN and one RST at the pod veth"
    );
}

#[test]
fn connection_ends_between_workloads_carry_where_they_were_seen_and_the_socket_rtt() {
    let (mut t, m) = table();
    let endpoint = |ip: [u8; 4], pod: &str, workload: &str, ifindex: u32, interface: &str| Record {
        kind: Some(record::Kind::Endpoint(EndpointUpdate {
            ip: ip.to_vec(),
            pod: pod.into(),
            namespace: "shop".into(),
            node: "node-a".into(),
            workload: workload.into(),
            ifindex,
            interface: interface.into(),
            removed: false,
            ..EndpointUpdate::default()
        })),
    };
    let socket_end = |flow_id: u64, side: Side, srtt_us: u32, client: [u8; 4]| Record {
        kind: Some(record::Kind::FlowEnd(FlowEnd {
            flow: Some(FlowKey {
                client_ip: client.to_vec(),
                ..key()
            }),
            point: Some(ObservationPoint {
                kind: PointKind::Socket as i32,
                node: "node-a".into(),
                side: side as i32,
                pid: 42,
                comm: "app".into(),
                ..ObservationPoint::default()
            }),
            flow_id,
            reason: FlowEndReason::Fin as i32,
            unix_nanos: 99,
            messages: 2,
            srtt_us,
            total_retransmits: 3,
        })),
    };
    let mut reset = end(9);
    if let Some(record::Kind::FlowEnd(e)) = reset.kind.as_mut() {
        e.reason = FlowEndReason::Rst as i32;
    }
    feed(
        &mut t,
        vec![
            endpoint(CLIENT, "cart-1", "cart", 6, "veth-client"),
            endpoint(SERVER, "web-0", "web", 7, "veth-server"),
            // The server's veth sees a reset; both sockets see an orderly close with their RTT.
            reset,
            socket_end(1 << 63 | 1, Side::Client, 250, CLIENT),
            socket_end(1 << 63 | 2, Side::Server, 40_000, CLIENT),
            // An app talking to its sidecar over loopback: no flow between workloads.
            socket_end(1 << 63 | 3, Side::Client, 10, [127, 0, 0, 1]),
        ],
    );
    let mut registry = Registry::default();
    m.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .unwrap_or_else(|e| panic!("encoding metrics: {e}"));
    let pair = r#"client_namespace="shop",client_workload="cart",server_namespace="shop",server_workload="web""#;
    for series in [
        format!(
            r#"clovisor_flow_connections_total{{{pair},observed_at="server_veth",reason="rst"}} 1"#
        ),
        format!(
            r#"clovisor_flow_connections_total{{{pair},observed_at="client_socket",reason="fin"}} 1"#
        ),
        format!(
            r#"clovisor_flow_connections_total{{{pair},observed_at="server_socket",reason="fin"}} 1"#
        ),
        format!(
            r#"clovisor_flow_connection_retransmits_total{{{pair},observed_at="client_socket"}} 3"#
        ),
        format!(
            r#"clovisor_flow_rtt_seconds_bucket{{le="0.00025",{pair},observed_at="client_socket"}} 1"#
        ),
        format!(
            r#"clovisor_flow_rtt_seconds_bucket{{le="0.025",{pair},observed_at="server_socket"}} 0"#
        ),
        format!(
            r#"clovisor_flow_rtt_seconds_bucket{{le="0.05",{pair},observed_at="server_socket"}} 1"#
        ),
    ] {
        assert!(text.contains(&series), "missing {series} in:\n{text}");
    }
    assert!(
        !text.contains("client_namespace=\"outside\""),
        "loopback is no flow between workloads:\n{text}"
    );
    assert_eq!(
        m.connections_ended_for("socket", "fin"),
        3,
        "every end still counts per point"
    );
}

#[test]
fn flow_end_emits_open_request_incomplete() {
    let (mut t, m) = table();
    let out = feed(
        &mut t,
        vec![
            msg(5, 0, Direction::ClientToServer, REQ),
            msg(5, 1, Direction::ServerToClient, RESP),
            msg(
                5,
                2,
                Direction::ClientToServer,
                b"GET /slow HTTP/1.1\r\n\r\n",
            ),
            end(5),
        ],
    );
    assert_eq!(out.len(), 2);
    let last = &out[1];
    assert!(
        last.incomplete,
        "request without response must be incomplete: {last:#?}"
    );
    assert_eq!(last.http.as_ref().map(|h| h.target.as_str()), Some("/slow"));
    assert_eq!(
        last.end_unix_nanos,
        last.observations[0].request_end_unix_nanos
    );
    assert_eq!(m.sessions_emitted_for("incomplete"), 1);
    assert!(t.is_empty(), "flow removed at its end");
}

#[test]
fn capacity_and_idle_eviction_are_bounded_and_counted() {
    let (mut t, m) = bounded_table(3, 10);
    let mut out = Vec::new();
    let t0 = Instant::now();
    for f in 0..5u64 {
        t.ingest("p", msg(f, 0, Direction::ClientToServer, REQ), t0, &mut out);
    }
    assert_eq!(t.len(), 3, "never more than max_flows");
    assert_eq!(m.flows_evicted_for("capacity"), 2);
    assert_eq!(out.len(), 2, "evicted open requests are emitted incomplete");
    assert!(out.iter().all(|s| s.session.incomplete));
    t.flush(t0 + Duration::from_secs(11), &mut out);
    assert!(t.is_empty(), "idle flows dropped");
    assert_eq!(m.flows_evicted_for("idle"), 3);
    assert_eq!(out.len(), 5);
}

#[test]
fn sniffing_overrides_tcp_hint_and_non_http_is_skipped() {
    let (mut t, m) = table();
    let mut r = msg(1, 0, Direction::ClientToServer, REQ);
    if let Some(record::Kind::Message(mm)) = r.kind.as_mut() {
        mm.protocol = ProtocolHint::Tcp as i32;
    }
    let out = feed(&mut t, vec![r, msg(1, 1, Direction::ServerToClient, RESP)]);
    assert_eq!(out.len(), 1, "HTTP on a port marked TCP is still decoded");

    let mut r = msg(2, 0, Direction::ClientToServer, b"*1\r\n$4\r\nPING\r\n");
    if let Some(record::Kind::Message(mm)) = r.kind.as_mut() {
        mm.protocol = ProtocolHint::Redis as i32;
    }
    let out = feed(
        &mut t,
        vec![r, msg(2, 1, Direction::ServerToClient, b"+PONG\r\n")],
    );
    assert_eq!(
        out.iter()
            .map(|s| s.database.as_ref().map(|d| d.operation.as_str()))
            .collect::<Vec<_>>(),
        [Some("PING")],
        "Redis is decoded into the session's database part"
    );

    let mut r = msg(
        3,
        0,
        Direction::ClientToServer,
        b"\x16\x03\x01\x00\x05hello",
    );
    if let Some(record::Kind::Message(mm)) = r.kind.as_mut() {
        mm.protocol = ProtocolHint::Tcp as i32;
    }
    let out = feed(
        &mut t,
        vec![
            r,
            msg(3, 1, Direction::ServerToClient, b"\x16\x03\x03\x00\x01x"),
        ],
    );
    assert!(out.is_empty());
    assert_eq!(m.flows_unsupported.get(), 1);
    assert_eq!(
        m.messages_dropped_for("response_without_request"),
        0,
        "unsupported flows are not errors"
    );
}

#[test]
fn pipelined_requests_pair_with_pipelined_responses() {
    let (mut t, _) = table();
    let out = feed(
        &mut t,
        vec![
            msg(1, 0, Direction::ClientToServer, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n"),
            msg(1, 1, Direction::ServerToClient, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n"),
        ],
    );
    let got: Vec<(String, u32, String)> = out
        .iter()
        .map(|s| {
            let h = s.http.clone().unwrap_or_default();
            (h.target, h.status_code, s.id.clone())
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("/1".to_owned(), 200, "probe-1/1/0".to_owned()),
            ("/2".to_owned(), 500, "probe-1/1/0.1".to_owned())
        ]
    );
}

#[test]
fn expect_continue_waits_for_final_response() {
    let (mut t, _) = table();
    let head: &[u8] = b"PUT /up HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
    let out = feed(
        &mut t,
        vec![
            msg(1, 0, Direction::ClientToServer, head),
            msg(
                1,
                1,
                Direction::ServerToClient,
                b"HTTP/1.1 100 Continue\r\n\r\n",
            ),
            msg(1, 2, Direction::ClientToServer, b"data"),
            msg(
                1,
                3,
                Direction::ServerToClient,
                b"HTTP/1.1 204 No Content\r\n\r\n",
            ),
        ],
    );
    assert_eq!(out.len(), 1, "one exchange: {out:#?}");
    assert_eq!(out[0].http.as_ref().map(|h| h.status_code), Some(204));
    assert_eq!(
        out[0].bytes.as_ref().map(|b| b.request),
        Some(head.len() as u64 + 1000 + 4 + 1000),
        "request counts headers and body"
    );
}

#[test]
fn partial_response_is_updated_or_emitted_after_grace() {
    let (mut t, _) = table();
    let mut out = Vec::new();
    let t0 = Instant::now();
    let mut partial = msg(1, 1, Direction::ServerToClient, RESP);
    if let Some(record::Kind::Message(mm)) = partial.kind.as_mut() {
        mm.partial = true;
        mm.bytes = 10;
    }
    t.ingest("p", msg(1, 0, Direction::ClientToServer, REQ), t0, &mut out);
    t.ingest("p", partial.clone(), t0, &mut out);
    assert!(out.is_empty(), "a partial response may still grow");
    t.ingest(
        "p",
        msg(1, 1, Direction::ServerToClient, RESP),
        t0,
        &mut out,
    );
    assert_eq!(out.len(), 1, "the final version completes the exchange");
    assert_eq!(
        out[0].session.bytes.as_ref().map(|b| b.response),
        Some(RESP.len() as u64 + 1000),
        "final counters win"
    );

    let mut out = Vec::new();
    let mut p3 = partial;
    if let Some(record::Kind::Message(mm)) = p3.kind.as_mut() {
        mm.index = 3;
    }
    t.ingest("p", msg(1, 2, Direction::ClientToServer, REQ), t0, &mut out);
    t.ingest("p", p3, t0, &mut out);
    t.flush(t0 + Duration::from_secs(1), &mut out);
    assert!(out.is_empty());
    t.flush(t0 + Duration::from_secs(3), &mut out);
    assert_eq!(
        out.len(),
        1,
        "emitted with the partial counters after the grace period"
    );
    assert_eq!(out[0].session.bytes.as_ref().map(|b| b.response), Some(10));
}

#[test]
fn a_partial_response_already_whole_is_emitted_at_once() {
    let (mut t, _) = table();
    let mut out = Vec::new();
    let t0 = Instant::now();
    let mut whole = msg(1, 1, Direction::ServerToClient, RESP);
    let mut short = msg(2, 1, Direction::ServerToClient, RESP);
    for (r, bytes) in [
        (&mut whole, RESP.len() as u64),
        (&mut short, RESP.len() as u64 - 1),
    ] {
        if let Some(record::Kind::Message(mm)) = r.kind.as_mut() {
            mm.partial = true;
            mm.bytes = bytes;
        }
    }
    t.ingest("p", msg(1, 0, Direction::ClientToServer, REQ), t0, &mut out);
    t.ingest("p", whole, t0, &mut out);
    assert_eq!(
        out.len(),
        1,
        "head + Content-Length == bytes seen: nothing more can come, no grace period"
    );
    t.ingest("p", msg(2, 0, Direction::ClientToServer, REQ), t0, &mut out);
    t.ingest("p", short, t0, &mut out);
    assert_eq!(
        out.len(),
        1,
        "one byte missing: still waiting for the final counters"
    );
}

#[test]
fn undecodable_request_counts_error_and_emits_nothing() {
    let (mut t, m) = table();
    let out = feed(
        &mut t,
        vec![
            msg(1, 0, Direction::ClientToServer, REQ),
            msg(1, 1, Direction::ServerToClient, RESP),
            msg(1, 2, Direction::ClientToServer, b"GET /x HTTP/7.0\r\n\r\n"),
            msg(1, 3, Direction::ServerToClient, RESP),
        ],
    );
    assert_eq!(out.len(), 1);
    assert_eq!(m.decode_errors_for("malformed"), 1);
}

#[test]
fn forget_probe_drops_its_flows_and_counts_their_open_requests() {
    let (mut t, m) = table();
    let out = feed(
        &mut t,
        vec![
            // Flow 1: one exchange done, a second request open.
            msg(1, 0, Direction::ClientToServer, REQ),
            msg(1, 1, Direction::ServerToClient, RESP),
            msg(1, 2, Direction::ClientToServer, REQ),
            // Flow 2: a request open.
            msg(2, 0, Direction::ClientToServer, REQ),
            // Flow 3: nothing open.
            msg(3, 0, Direction::ClientToServer, REQ),
            msg(3, 1, Direction::ServerToClient, RESP),
        ],
    );
    assert_eq!(out.len(), 2, "the two complete exchanges");
    assert_eq!(t.len(), 3);
    let decoder =
        |m: &CollectorMetrics| m.drops.get(crate::metrics::STAGE_DECODER, "probe_restart");
    assert_eq!(decoder(&m), 0);
    t.forget_probe("probe-1");
    assert!(t.is_empty());
    assert_eq!(m.flows_evicted_for("probe_restart"), 3);
    assert_eq!(
        decoder(&m),
        2,
        "flow 1's and flow 2's open requests, lost with the probe's state"
    );
    assert_eq!(
        m.drops
            .get(crate::metrics::STAGE_FLOW_TABLE, "probe_restart"),
        0,
        "nothing waited in the flow table"
    );
    let mut after = Vec::new();
    t.flush(Instant::now() + Duration::from_secs(3600), &mut after);
    assert!(
        after.is_empty(),
        "nothing of them is emitted later: {after:?}"
    );
}

/// The same exchange seen at a veth and at the client's socket (flow ids apart, as the probe
/// makes them) yields two sessions; the socket one names its side, process and namespace.
#[test]
fn socket_observations_decode_beside_veth_ones_with_their_process() {
    let (mut t, _m) = table();
    let socket_point = ObservationPoint {
        kind: PointKind::Socket as i32,
        node: "node-a".into(),
        pid: 4242,
        comm: "curl".into(),
        netns_inode: 4026532001,
        side: Side::Client as i32,
        ..ObservationPoint::default()
    };
    let at_socket = |r: Record| {
        edit(r, |m| {
            m.point = Some(socket_point.clone());
            m.flow_id |= 1 << 63;
        })
    };
    let out = feed(
        &mut t,
        vec![
            msg(1, 0, Direction::ClientToServer, REQ),
            at_socket(msg(1, 0, Direction::ClientToServer, REQ)),
            msg(1, 1, Direction::ServerToClient, RESP),
            at_socket(msg(1, 1, Direction::ServerToClient, RESP)),
        ],
    );
    assert_eq!(out.len(), 2, "one session per point, got {out:#?}");
    let socket = out
        .iter()
        .find(|s| s.observations[0].kind == PointKind::Socket as i32)
        .unwrap_or_else(|| panic!("no socket session in {out:#?}"));
    let obs = &socket.observations[0];
    assert_eq!(
        (obs.side(), obs.pid, obs.comm.as_str(), obs.netns_inode),
        (Side::Client, 4242, "curl", 4026532001),
        "socket observation must carry side, pid, comm and netns: {obs:?}"
    );
    let http = socket
        .http
        .as_ref()
        .unwrap_or_else(|| panic!("no http in {socket:?}"));
    assert_eq!(
        (http.method.as_str(), http.target.as_str(), http.status_code),
        ("GET", "/a", 200),
        "decoded from the socket's payload"
    );
    let veth = out
        .iter()
        .find(|s| s.observations[0].kind == PointKind::Pod as i32)
        .unwrap_or_else(|| panic!("no veth session in {out:#?}"));
    assert_eq!(veth.observations[0].pid, 0, "a veth has no process");
}

fn metrics_text(m: &CollectorMetrics) -> String {
    let mut registry = Registry::default();
    m.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .unwrap_or_else(|e| panic!("encoding metrics: {e}"));
    text
}

#[test]
fn a_flow_no_decoder_claims_still_counts_its_bytes_between_workloads() {
    let (mut t, m) = table();
    let endpoint = endpoint_record;
    let tls = |index: u32, dir: Direction| {
        let r = msg(
            3,
            index,
            dir,
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        );
        edit(r, |m| m.protocol = ProtocolHint::Tcp as i32)
    };
    let out = feed(
        &mut t,
        vec![
            endpoint(CLIENT, "cart", 6, "veth-client"),
            endpoint(SERVER, "web", 7, "veth-server"),
            tls(0, Direction::ClientToServer),
            tls(1, Direction::ServerToClient),
            tls(2, Direction::ClientToServer),
        ],
    );
    assert!(out.is_empty(), "nothing decoded: {out:#?}");
    assert_eq!(m.flows_unsupported.get(), 1);
    let mut out = Vec::new();
    t.flush(Instant::now(), &mut out);
    let text = metrics_text(&m);
    let pair = r#"client_namespace="shop",client_workload="cart",server_namespace="shop",server_workload="web",observed_at="server_veth""#;
    // Each test message counts its payload plus 1000 bytes the capture did not keep.
    for series in [
        format!(
            r#"clovisor_flow_connection_bytes_total{{{pair},direction="client_to_server"}} 2022"#
        ),
        format!(
            r#"clovisor_flow_connection_bytes_total{{{pair},direction="server_to_client"}} 1011"#
        ),
    ] {
        assert!(text.contains(&series), "missing {series} in:\n{text}");
    }
    // Counted once: the flow's end adds only what came since.
    feed(&mut t, vec![tls(3, Direction::ServerToClient), end(3)]);
    let text = metrics_text(&m);
    assert!(
        text.contains(&format!(
            r#"clovisor_flow_connection_bytes_total{{{pair},direction="server_to_client"}} 2022"#
        )),
        "{text}"
    );
}

/// A decoder for these tests: claims flows starting with `SYNC`, makes one exchange per
/// request/response pair, and loses step on `LOST` (then asks for detection afresh), gives
/// up on `STOP`, or hands the flow over on `SWAP` to a successor that keeps its open request.
#[derive(Debug)]
struct Sync;

#[derive(Debug, Default)]
struct SyncFlow {
    request: Option<crate::decode::MessageStats>,
    successor: Option<Box<dyn crate::decode::FlowDecoder>>,
}

impl crate::decode::Decoder for Sync {
    fn name(&self) -> &'static str {
        "sync"
    }
    fn capture_needs(&self) -> crate::decode::CaptureNeeds {
        crate::decode::CaptureNeeds::default()
    }
    fn detect(
        &self,
        _: &crate::decode::FlowInfo<'_>,
        first: &crate::decode::Message<'_>,
    ) -> crate::decode::Detection {
        if first.payload.starts_with(b"SYNC") {
            crate::decode::Detection::Claim
        } else {
            crate::decode::Detection::No
        }
    }
    fn new_flow(&self, _: &crate::decode::FlowInfo<'_>) -> Box<dyn crate::decode::FlowDecoder> {
        Box::new(SyncFlow::default())
    }
}

impl crate::decode::FlowDecoder for SyncFlow {
    fn on_message(
        &mut self,
        m: &crate::decode::Message<'_>,
        out: &mut dyn crate::decode::Output,
    ) -> crate::decode::Step {
        use crate::decode::{Exchange, Fields, Step};
        if m.payload.starts_with(b"LOST") {
            out.desync("lost_framing");
            return Step::Redetect;
        }
        if m.payload.starts_with(b"STOP") {
            return Step::Stop;
        }
        if m.payload.starts_with(b"SWAP") {
            self.successor = Some(Box::new(SyncFlow {
                request: self.request.take(),
                successor: None,
            }));
            return Step::Handover;
        }
        match (m.direction, self.request.take()) {
            (crate::decode::Direction::ClientToServer, _) => self.request = Some(m.stats),
            (crate::decode::Direction::ServerToClient, Some(request)) => out.exchange(Exchange {
                protocol: clovisor_proto::session::v1::Protocol::Unspecified,
                request,
                response: Some(m.stats),
                position: 0,
                incomplete: false,
                fields: Fields::None,
                trace: None,
                attributes: [("sync.payload".to_owned(), "seen".to_owned())].into(),
            }),
            (crate::decode::Direction::ServerToClient, None) => {
                out.unpaired("response_without_request")
            }
        }
        Step::Continue
    }
    fn on_close(&mut self, _: &mut dyn crate::decode::Output) {}
    fn successor(&mut self) -> Option<(&'static str, Box<dyn crate::decode::FlowDecoder>)> {
        self.successor.take().map(|f| ("sync2", f))
    }
}

#[test]
fn a_decoder_hands_its_flow_over_with_what_is_open() {
    let m = Arc::new(CollectorMetrics::new());
    let decoders = crate::decode::Decoders::new(vec![Arc::new(Sync)]);
    let mut t = FlowTable::with_decoders(FlowTableConfig::default(), Arc::clone(&m), decoders);
    let out = feed(
        &mut t,
        vec![
            msg(1, 0, Direction::ClientToServer, b"SYNC hello"),
            // The server switches protocol; the request stays open in the successor.
            msg(1, 1, Direction::ServerToClient, b"SWAP"),
            msg(1, 2, Direction::ClientToServer, b"SWAP again"),
            msg(1, 3, Direction::ServerToClient, b"SYNC ok"),
        ],
    );
    let ids: Vec<&str> = out.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        ["probe-1/1/0"],
        "the request before the hand-over pairs after it"
    );
    assert_eq!(
        m.messages_dropped_for("response_without_request"),
        0,
        "nothing closed or lost at the hand-over"
    );
}

#[test]
fn a_new_protocol_plugs_in_without_the_flow_table_knowing_it() {
    let m = Arc::new(CollectorMetrics::new());
    let decoders =
        crate::decode::Decoders::new(vec![Arc::new(crate::decode::http1::Http1), Arc::new(Sync)]);
    let mut t = FlowTable::with_decoders(FlowTableConfig::default(), Arc::clone(&m), decoders);
    let out = feed(
        &mut t,
        vec![
            msg(1, 0, Direction::ClientToServer, b"SYNC hello"),
            msg(1, 1, Direction::ServerToClient, b"SYNC ok"),
            // Lost step: the flow is detected afresh, and here turns out to be HTTP/1.
            msg(1, 2, Direction::ClientToServer, b"LOST"),
            msg(1, 3, Direction::ServerToClient, b"???"),
            msg(1, 4, Direction::ClientToServer, REQ),
            msg(1, 5, Direction::ServerToClient, RESP),
            msg(2, 0, Direction::ClientToServer, b"SYNC a"),
            msg(2, 1, Direction::ServerToClient, b"STOP"),
            msg(2, 2, Direction::ClientToServer, b"SYNC b"),
            msg(2, 3, Direction::ServerToClient, b"SYNC c"),
        ],
    );
    let got: Vec<(&str, i32, bool)> = out
        .iter()
        .map(|s| (s.id.as_str(), s.protocol, s.http.is_some()))
        .collect();
    assert_eq!(
        got,
        [
            ("probe-1/1/0", 0, false),
            (
                "probe-1/1/4",
                clovisor_proto::session::v1::Protocol::Http1 as i32,
                true
            ),
        ],
        "one exchange of the new protocol, then HTTP/1 after the resync; nothing after STOP"
    );
    assert_eq!(
        out[0].attributes.get("sync.payload").map(String::as_str),
        Some("seen"),
        "a decoder's own fields reach the session"
    );
    assert!(
        metrics_text(&m).contains(
            r#"clovisor_collector_decoder_desyncs_total{protocol="sync",reason="lost_framing"} 1"#
        ),
        "the desync is counted"
    );
    assert_eq!(
        m.messages_dropped_for("response_without_request"),
        1,
        "the server's message after the resync pairs with nothing"
    );
}

#[test]
fn messages_after_the_first_need_neither_flow_key_nor_point() {
    let (mut t, _) = table();
    let bare = |r: Record| {
        edit(r, |m| {
            m.flow = None;
            m.point = None;
        })
    };
    let out = feed(
        &mut t,
        vec![
            msg(1, 0, Direction::ClientToServer, REQ),
            bare(msg(1, 1, Direction::ServerToClient, RESP)),
        ],
    );
    let [s] = out.as_slice() else {
        panic!("one session expected: {out:#?}");
    };
    assert_eq!(
        (
            s.server.as_ref().map(|e| e.port),
            s.observations[0].interface.as_str()
        ),
        (Some(80), "veth-server"),
        "the flow's key and point are the first message's"
    );
}

#[test]
fn an_early_flushed_continue_then_the_body_make_one_exchange() {
    let (mut t, m) = table();
    let mut out = Vec::new();
    let t0 = Instant::now();
    let head: &[u8] = b"PUT /up HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
    let interim = msg(
        1,
        1,
        Direction::ServerToClient,
        b"HTTP/1.1 100 Continue\r\n\r\n",
    );
    let interim = edit(interim, |m| m.partial = true);
    t.ingest(
        "p",
        msg(1, 0, Direction::ClientToServer, head),
        t0,
        &mut out,
    );
    t.ingest("p", interim, t0, &mut out);
    // The body comes after the probe's idle flush: the interim response is over.
    t.ingest(
        "p",
        msg(1, 2, Direction::ClientToServer, b"data"),
        t0,
        &mut out,
    );
    t.ingest(
        "p",
        msg(
            1,
            3,
            Direction::ServerToClient,
            b"HTTP/1.1 201 Created\r\n\r\n",
        ),
        t0,
        &mut out,
    );
    let [s] = out.as_slice() else {
        panic!("one exchange expected: {out:#?}");
    };
    assert_eq!(
        s.session
            .http
            .as_ref()
            .map(|h| (h.method.as_str(), h.status_code)),
        Some(("PUT", 201))
    );
    assert_eq!(m.decode_errors_for("not_http"), 0, "the body is no request");
}

#[test]
fn busy_flows_and_new_ones_all_keep_their_place_in_the_activity_order() {
    // However many stale entries a busy flow left behind (a compaction may fall on any touch,
    // a new flow's included), every flow can still be evicted, in activity order.
    for busy in 0..140 {
        let m = Arc::new(CollectorMetrics::new());
        let cfg = FlowTableConfig {
            max_flows: 2,
            idle_timeout: Duration::from_secs(10),
            ..FlowTableConfig::default()
        };
        let mut t = FlowTable::new(cfg, Arc::clone(&m));
        let mut out = Vec::new();
        let t0 = Instant::now();
        // Re-sent messages count as activity.
        for _ in 0..=busy {
            t.ingest("p", msg(1, 0, Direction::ClientToServer, REQ), t0, &mut out);
        }
        t.ingest("p", msg(2, 0, Direction::ClientToServer, REQ), t0, &mut out);
        t.ingest("p", msg(3, 0, Direction::ClientToServer, REQ), t0, &mut out);
        assert_eq!(
            (t.len(), m.flows_evicted_for("capacity")),
            (2, 1),
            "after {busy} re-sends, the least recently active flow (1) made room"
        );
        t.flush(t0 + Duration::from_secs(11), &mut out);
        assert!(
            t.is_empty(),
            "after {busy} re-sends, every flow is found idle, new ones too"
        );
        assert_eq!(m.flows_evicted_for("idle"), 2);
        assert_eq!(out.len(), 3, "each flow's open request, once: {out:#?}");
    }
}

#[test]
fn a_flow_start_gives_the_flow_its_identity_once() {
    let (mut t, m) = table();
    let start = |flow_id: u64, hint: ProtocolHint| Record {
        kind: Some(record::Kind::FlowStart(capture::FlowStart {
            flow_id,
            flow: Some(key()),
            point: Some(point()),
            protocol: hint as i32,
            counters_only: false,
            wire_point: None,
        })),
    };
    let bare = |flow_id: u64, index: u32, dir: Direction, payload: &[u8]| {
        edit(msg(flow_id, index, dir, payload), |m| {
            m.flow = None;
            m.point = None;
            m.protocol = 0;
        })
    };
    let out = feed(
        &mut t,
        vec![
            start(1, ProtocolHint::Http),
            bare(1, 0, Direction::ClientToServer, REQ),
            // Announced again (a reconnect's table of open flows): nothing changes.
            start(1, ProtocolHint::Http),
            bare(1, 1, Direction::ServerToClient, RESP),
            // The hint came with the start: a port named for HTTP speaking something else.
            start(2, ProtocolHint::Http),
            bare(2, 0, Direction::ClientToServer, b"\x16\x03\x01"),
            // No identity anywhere: dropped at the door.
            Record {
                kind: Some(record::Kind::FlowStart(capture::FlowStart {
                    flow_id: 3,
                    ..capture::FlowStart::default()
                })),
            },
            bare(3, 0, Direction::ClientToServer, REQ),
        ],
    );
    let [s] = out.as_slice() else {
        panic!("one session expected: {out:#?}");
    };
    assert_eq!(
        (
            s.id.as_str(),
            s.server.as_ref().map(|e| e.port),
            s.observations[0].interface.as_str()
        ),
        ("probe-1/1/0", Some(80), "veth-server")
    );
    assert_eq!(m.decode_errors_for("not_http"), 1);
    assert_eq!(m.messages_dropped_for("no_flow_key"), 2);
    assert_eq!(t.len(), 2, "flows 1 and 2");
}

#[test]
fn a_flow_dropped_idle_keeps_its_identity_for_its_next_bare_message() {
    let (mut t, m) = bounded_table(2, 10);
    let mut out = Vec::new();
    let t0 = Instant::now();
    let bare = |flow_id: u64, index: u32, dir: Direction, payload: &[u8]| {
        edit(msg(flow_id, index, dir, payload), |m| {
            m.flow = None;
            m.point = None;
        })
    };
    for f in [1, 2, 3] {
        t.start_flow("p", announced(f), t0, &mut out);
    }
    assert_eq!(
        (t.len(), m.flows_evicted_for("capacity")),
        (2, 1),
        "flow 1 made room"
    );
    t.flush(t0 + Duration::from_secs(11), &mut out);
    assert!(t.is_empty(), "2 and 3 went idle");
    // A quiet keep-alive connection speaks again, its messages naming only the flow id.
    for f in [2, 3] {
        t.ingest(
            "p",
            bare(f, 0, Direction::ClientToServer, REQ),
            t0,
            &mut out,
        );
        t.ingest(
            "p",
            bare(f, 1, Direction::ServerToClient, RESP),
            t0,
            &mut out,
        );
    }
    let servers: Vec<Option<u32>> = out
        .iter()
        .map(|s| s.session.server.as_ref().map(|e| e.port))
        .collect();
    assert_eq!(
        servers,
        [Some(80), Some(80)],
        "both flows known again by their identity"
    );
    assert_eq!(m.messages_dropped_for("no_flow_key"), 0);
    // An ended flow is forgotten with its identity.
    t.ingest("p", end(3), t0, &mut out);
    t.ingest(
        "p",
        bare(3, 2, Direction::ClientToServer, REQ),
        t0,
        &mut out,
    );
    assert_eq!(m.messages_dropped_for("no_flow_key"), 1);
}

#[test]
fn a_flow_end_naming_only_its_id_counts_where_the_flow_was_announced() {
    let (mut t, m) = bounded_table(FlowTableConfig::default().max_flows, 10);
    let mut out = Vec::new();
    let t0 = Instant::now();
    let bare_end = |flow_id: u64| {
        let mut r = end(flow_id);
        if let Some(record::Kind::FlowEnd(e)) = r.kind.as_mut() {
            e.flow = None;
            e.point = None;
        }
        r
    };
    for f in [1, 2] {
        t.start_flow("p", announced(f), t0, &mut out);
    }
    // Flow 1 ends while in the table; flow 2 after it went idle (its identity kept dormant).
    t.ingest("p", bare_end(1), t0, &mut out);
    t.flush(t0 + Duration::from_secs(11), &mut out);
    assert!(t.is_empty(), "flow 2 went idle");
    t.ingest("p", bare_end(2), t0, &mut out);
    assert_eq!(
        (
            m.connections_ended_for("pod", "fin"),
            m.connections_ended_for("unspecified", "fin")
        ),
        (2, 0),
        "both ends counted at the pod veth they were announced at"
    );
    // Its identity is gone with its end: a later end of the same id knows no point.
    t.ingest("p", bare_end(2), t0, &mut out);
    assert_eq!(m.connections_ended_for("unspecified", "fin"), 1);
}

#[test]
fn an_accepted_h2c_upgrade_hands_the_flow_to_http2_and_its_losses_count_as_http2s() {
    let (mut t, m) = table();
    let out = feed(
        &mut t,
        vec![
            msg(
                1,
                0,
                Direction::ClientToServer,
                b"GET /up HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
            ),
            // The 101 head, then the start of a frame header: the rest was not captured.
            msg(
                1,
                1,
                Direction::ServerToClient,
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n\x00\x00\x18",
            ),
            end(1),
        ],
    );
    assert_eq!(out.len(), 1, "{out:#?}");
    let s = &out[0];
    assert_eq!(
        s.protocol,
        clovisor_proto::session::v1::Protocol::Http2 as i32,
        "the upgrade request is stream 1 of HTTP/2, not an HTTP/1.1 exchange with status 101"
    );
    let http = s.http.as_ref().expect("http fields");
    assert_eq!((http.method.as_str(), http.target.as_str()), ("GET", "/up"));
    assert!(s.incomplete, "its response was never seen");
    assert_eq!(m.desyncs_for("http2", "frames_beyond_capture"), 1);
    assert_eq!(m.desyncs_for("http1", "frames_beyond_capture"), 0);
}

#[test]
fn oversized_or_malformed_endpoint_updates_are_refused_and_counted() {
    let (mut t, m) = table();
    let update = |ip: Vec<u8>, workload: String| Record {
        kind: Some(record::Kind::Endpoint(EndpointUpdate {
            ip,
            pod: "web-0".into(),
            namespace: "default".into(),
            node: "node-a".into(),
            workload,
            ifindex: 7,
            interface: "veth-server".into(),
            removed: false,
            ..EndpointUpdate::default()
        })),
    };
    let out = feed(
        &mut t,
        vec![
            update(SERVER.to_vec(), "w".repeat(1 << 20)),
            update(vec![1, 2, 3], "web".into()),
            msg(1, 0, Direction::ClientToServer, REQ),
            msg(1, 1, Direction::ServerToClient, RESP),
        ],
    );
    let rejected = |reason| {
        m.endpoints_rejected
            .get_or_create(&crate::metrics::ReasonLabel { reason })
            .get()
    };
    assert_eq!((rejected("too_long"), rejected("bad_ip")), (1, 1));
    let server = out
        .first()
        .and_then(|s| s.server.clone())
        .unwrap_or_default();
    assert!(
        server.workload.is_empty() && server.pod.is_empty(),
        "nothing of the refused updates kept: {server:?}"
    );
    let out = feed(
        &mut t,
        vec![
            update(SERVER.to_vec(), "w".repeat(MAX_ENDPOINT_NAME_BYTES)),
            msg(1, 2, Direction::ClientToServer, REQ),
            msg(1, 3, Direction::ServerToClient, RESP),
        ],
    );
    let server = out
        .first()
        .and_then(|s| s.server.clone())
        .unwrap_or_default();
    assert_eq!(
        server.workload.len(),
        MAX_ENDPOINT_NAME_BYTES,
        "a name at the limit is kept"
    );
}

#[test]
fn a_content_length_at_u64_max_through_the_flow_table_is_one_exchange() {
    for cl in ["18446744073709551615", "18446744073709551616"] {
        let (mut t, _m) = table();
        let req = format!(
            "POST /up HTTP/1.1\r\nContent-Length: {cl}\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n"
        );
        let resp =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {cl}\r\n\r\nHTTP/1.1 200 OK\r\n\r\n");
        let out = feed(
            &mut t,
            vec![
                msg(3, 0, Direction::ClientToServer, req.as_bytes()),
                msg(3, 1, Direction::ServerToClient, resp.as_bytes()),
                end(3),
            ],
        );
        let targets: Vec<&str> = out
            .iter()
            .filter_map(|s| s.http.as_ref().map(|h| h.target.as_str()))
            .collect();
        assert_eq!(
            targets,
            ["/up"],
            "Content-Length {cl}: one exchange, nothing smuggled"
        );
    }
}

/// The `flow_table` stage's (received, emitted, dropped by reason, buffered) as the shared loss
/// accounting has them.
fn flow_stage(m: &CollectorMetrics) -> (u64, u64, Vec<(&'static str, u64)>, i64) {
    use crate::metrics::STAGE_FLOW_TABLE as S;
    let d = &m.drops;
    let reasons = [
        "duplicate",
        "response_without_request",
        "hint_mismatch",
        "probe_restart",
        "no_probe",
        "no_direction",
    ]
    .into_iter()
    .map(|r| (r, d.get(S, r)))
    .filter(|(_, n)| *n > 0)
    .collect();
    (
        d.received_count(S),
        d.emitted_count(S),
        reasons,
        d.buffered_count(S),
    )
}

/// received = emitted + dropped + buffered for the `flow_table` stage, from counters each path
/// moves on its own (not derived from one another).
fn assert_flow_balance(m: &CollectorMetrics, when: &str) {
    let (received, emitted, dropped, buffered) = flow_stage(m);
    let lost: u64 = dropped.iter().map(|(_, n)| n).sum();
    assert_eq!(
        i128::from(received),
        i128::from(emitted) + i128::from(lost) + i128::from(buffered),
        "{when}: received {received} = emitted {emitted} + dropped {dropped:?} + buffered {buffered}"
    );
}

#[test]
fn every_message_taken_into_a_flow_is_handed_on_counted_lost_or_waiting() {
    let (mut t, m) = bounded_table(2, 120);
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut ingest = |t: &mut FlowTable, r: Record, at: Instant| {
        t.ingest("probe-1", r, at, &mut out);
    };

    // Flow 1: a response first (a flow picked up mid-way): lost, counted.
    ingest(&mut t, msg(1, 0, Direction::ServerToClient, RESP), t0);
    assert_eq!(
        flow_stage(&m).2,
        vec![("response_without_request", 1)],
        "a response before any request"
    );
    assert_flow_balance(&m, "after a response without request");

    // Flow 2: index 0 never arrives; 2 waits, a second copy of 2 replaces it (lost as a
    // duplicate), 3 waits.
    ingest(&mut t, msg(2, 2, Direction::ClientToServer, REQ), t0);
    ingest(&mut t, msg(2, 2, Direction::ClientToServer, REQ), t0);
    ingest(&mut t, msg(2, 3, Direction::ServerToClient, RESP), t0);
    assert_eq!(flow_stage(&m).3, 2, "two messages wait behind the gap");
    assert_flow_balance(&m, "with messages waiting");

    // Flow 3 evicts flow 1 (capacity 2): nothing of flow 1 waits. Flow 4 evicts flow 2: its
    // waiting messages are taken (the gap skipped) as its state is ended.
    ingest(&mut t, msg(3, 0, Direction::ClientToServer, REQ), t0);
    ingest(&mut t, msg(4, 0, Direction::ClientToServer, REQ), t0);
    assert_eq!(m.flows_evicted_for("capacity"), 2, "two evictions");
    assert_eq!(
        m.drops.get(crate::metrics::STAGE_FLOW_ORDER, "gap"),
        2,
        "the two missing messages of flow 2, counted where the gap was skipped"
    );
    assert_eq!(flow_stage(&m).3, 0, "nothing waits after the eviction");
    assert_flow_balance(&m, "after capacity evictions");

    // Flow 4: a response flushed early is held for its final counters; then its probe
    // restarts: the held message and one waiting out of order are lost with it.
    let partial = edit(msg(4, 1, Direction::ServerToClient, RESP), |mm| {
        mm.partial = true;
        mm.bytes = 10;
    });
    ingest(&mut t, partial, t0);
    ingest(&mut t, msg(4, 5, Direction::ClientToServer, REQ), t0);
    assert_eq!(flow_stage(&m).3, 2, "a held message and one out of order");
    assert_flow_balance(&m, "with a held message");
    t.forget_probe("probe-1");
    assert_eq!(
        m.drops.get(crate::metrics::STAGE_DECODER, "probe_restart"),
        2,
        "flow 3's and flow 4's requests, handed on and open in their decoders, lost with them"
    );
    let (received, emitted, dropped, buffered) = flow_stage(&m);
    assert_eq!(
        dropped,
        vec![
            ("duplicate", 1),
            ("response_without_request", 1),
            ("probe_restart", 2)
        ],
        "every loss by its reason"
    );
    assert_eq!(buffered, 0, "nothing waits in a forgotten probe's flows");
    assert_eq!(
        (received, emitted),
        (8, 4),
        "8 messages taken in; handed on: flow 2's two, flow 3's and flow 4's requests"
    );
    assert_flow_balance(&m, "after the probe restarted");
}

#[test]
fn a_held_message_replaced_by_its_final_version_is_handed_on_once_merged() {
    let (mut t, m) = table();
    let partial = edit(msg(1, 1, Direction::ServerToClient, RESP), |mm| {
        mm.partial = true;
        mm.bytes = 10;
    });
    let out = feed(
        &mut t,
        vec![
            msg(1, 0, Direction::ClientToServer, REQ),
            partial,
            msg(1, 1, Direction::ServerToClient, RESP),
        ],
    );
    assert_eq!(out.len(), 1, "one exchange: {out:#?}");
    let (received, emitted, dropped, buffered) = flow_stage(&m);
    assert_eq!(
        (received, emitted, dropped, buffered),
        (3, 3, vec![], 0),
        "request, partial and final response all handed on"
    );
}

#[test]
fn a_pod_is_named_by_its_first_service_and_a_cluster_ip_by_its_service() {
    let (mut t, m) = table();
    const CLUSTER_IP: [u8; 4] = [10, 96, 0, 10];
    let out = feed(
        &mut t,
        vec![
            // The client's pod is in two Services: the first by name names it.
            Record {
                kind: Some(record::Kind::Endpoint(EndpointUpdate {
                    ip: CLIENT.to_vec(),
                    pod: "cart-0".into(),
                    namespace: "shop".into(),
                    workload: "cart".into(),
                    services: vec!["cart".into(), "checkout".into()],
                    ..EndpointUpdate::default()
                })),
            },
            Record {
                kind: Some(record::Kind::Endpoint(EndpointUpdate {
                    ip: CLUSTER_IP.to_vec(),
                    namespace: "shop".into(),
                    services: vec!["web".into()],
                    service_address: true,
                    ..EndpointUpdate::default()
                })),
            },
            // A Service address naming two Services is no update a probe makes.
            Record {
                kind: Some(record::Kind::Endpoint(EndpointUpdate {
                    ip: SERVER.to_vec(),
                    namespace: "shop".into(),
                    services: vec!["a".into(), "b".into()],
                    service_address: true,
                    ..EndpointUpdate::default()
                })),
            },
            // Seen at the client's socket, before kube-proxy's DNAT: addressed to the ClusterIP.
            edit(msg(1, 0, Direction::ClientToServer, REQ), |m| {
                if let Some(k) = m.flow.as_mut() {
                    k.server_ip = CLUSTER_IP.to_vec();
                }
            }),
            edit(msg(1, 1, Direction::ServerToClient, RESP), |m| {
                if let Some(k) = m.flow.as_mut() {
                    k.server_ip = CLUSTER_IP.to_vec();
                }
            }),
        ],
    );
    assert_eq!(out.len(), 1, "{out:#?}");
    let (client, server) = (
        out[0].client.clone().unwrap_or_default(),
        out[0].server.clone().unwrap_or_default(),
    );
    assert_eq!(
        (client.service.as_str(), client.workload.as_str()),
        ("cart", "cart"),
        "{client:?}"
    );
    assert_eq!(
        (
            server.service.as_str(),
            server.namespace.as_str(),
            server.pod.as_str()
        ),
        ("web", "shop", ""),
        "the ClusterIP is the Service's: {server:?}"
    );
    assert_eq!(
        m.endpoints_rejected
            .get_or_create(&crate::metrics::ReasonLabel {
                reason: "bad_service_address"
            })
            .get(),
        1
    );
}

#[test]
fn commands_pipelined_in_one_message_join_command_by_command_across_points() {
    use clovisor_proto::join::key::{wire_key, ClientAddr, MESSAGE_POSITION_ATTRIBUTE};
    // Redis: three commands in one write, their replies in one. The exchanges share the
    // message's sequence number, so the join tells them apart by their position: at every point
    // the same three wire keys, one per command.
    const COMMANDS: &[u8] = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n0\r\n*2\r\n$4\r\nINCR\r\n$1\r\nk\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
    const REPLIES: &[u8] = b"+OK\r\n:1\r\n$1\r\n1\r\n";
    let (mut t, _) = table();
    let at = |flow_id: u64, interface: &'static str| {
        let tcp = |r| {
            edit(r, |m| {
                m.protocol = ProtocolHint::Tcp as i32;
                if let Some(p) = m.point.as_mut() {
                    p.interface = interface.to_owned();
                }
            })
        };
        vec![
            tcp(msg(flow_id, 0, Direction::ClientToServer, COMMANDS)),
            tcp(msg(flow_id, 1, Direction::ServerToClient, REPLIES)),
        ]
    };
    let keys = |sessions: &[Session]| -> Vec<(Option<String>, Option<u32>, Option<String>)> {
        sessions
            .iter()
            .map(|s| {
                (
                    s.database.as_ref().map(|d| d.operation.clone()),
                    ClientAddr::of(s)
                        .and_then(|c| wire_key(s, c))
                        .map(|k| k.position),
                    s.attributes.get(MESSAGE_POSITION_ATTRIBUTE).cloned(),
                )
            })
            .collect()
    };
    let server_side = keys(&feed(&mut t, at(1, "veth-server")));
    let client_side = keys(&feed(&mut t, at(2, "veth-client")));
    let op = |o: &str| Some(o.to_owned());
    assert_eq!(
        server_side,
        vec![
            (op("SET"), Some(0), None),
            (op("INCR"), Some(1), Some("1".to_owned())),
            (op("GET"), Some(2), Some("2".to_owned())),
        ]
    );
    assert_eq!(client_side, server_side, "the same keys at both points");
}

#[test]
fn observations_name_the_probe_and_its_node_unless_the_point_names_another() {
    let (mut t, _) = table();
    t.register_probe("probe-1", "node-b");
    let mut out = Vec::new();
    for (flow_id, node) in [(1, ""), (2, "node-b"), (3, "node-c")] {
        let on_node = |r: Record| {
            edit(r, |m| {
                if let Some(p) = m.point.as_mut() {
                    p.node = node.into();
                }
            })
        };
        let mut start = announced(flow_id);
        if let Some(p) = start.point.as_mut() {
            p.node = node.into();
        }
        let recs = [
            Record {
                kind: Some(record::Kind::FlowStart(start)),
            },
            on_node(msg(flow_id, 0, Direction::ClientToServer, REQ)),
            on_node(msg(flow_id, 1, Direction::ServerToClient, RESP)),
        ];
        for r in recs {
            t.ingest("probe-1", r, Instant::now(), &mut out);
        }
    }
    assert_eq!(out.len(), 3, "{out:#?}");
    // Left to be written in: the id, the probe's id, and its node where the point is on it.
    let left: Vec<_> = out
        .iter()
        .map(|c| {
            let o = &c.session.observations[0];
            (c.session.id.as_str(), o.probe_id.as_str(), o.node.as_str())
        })
        .collect();
    assert_eq!(left, [("", "", ""), ("", "", ""), ("", "", "node-c")]);
    let mut encoder = clovisor_proto::hops::SessionEncoder::new();
    let sessions: Vec<Session> = out
        .iter()
        .map(|c| {
            let sent = c.encode(&mut encoder).decode().expect("decodes");
            assert_eq!(sent, c.clone().into_session(), "encoded as it is named");
            sent
        })
        .collect();
    let named: Vec<_> = sessions
        .iter()
        .map(|s| {
            let o = &s.observations[0];
            (s.id.as_str(), o.probe_id.as_str(), o.node.as_str())
        })
        .collect();
    assert_eq!(
        named,
        [
            ("probe-1/1/0", "probe-1", "node-b"),
            ("probe-1/2/0", "probe-1", "node-b"),
            ("probe-1/3/0", "probe-1", "node-c"),
        ]
    );
}

/// An HTTP/2 frame: its 9-byte header, then `payload`.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("a small frame");
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

#[test]
fn a_message_flushed_early_then_grown_goes_on_in_its_decoder() {
    // The socket point captures HTTP/2 call by call. The client's SETTINGS ACK is flushed early
    // (the client went quiet for the probe's idle flush), then the same message grows by the
    // request's HEADERS before the server answers: its final version carries them as a segment.
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const END_STREAM_HEADERS: u8 = 0x1 | 0x4;
    let settings = h2_frame(4, 0, 0, &[]);
    let ack = h2_frame(4, 1, 0, &[]);
    // :method POST, :scheme http, :path /, :authority "svc" (literal, not indexed).
    let request = h2_frame(
        1,
        END_STREAM_HEADERS,
        1,
        &[0x83, 0x86, 0x84, 0x01, 3, b's', b'v', b'c'],
    );
    // :status 200, ending the stream.
    let response = h2_frame(1, END_STREAM_HEADERS, 1, &[0x88]);
    let whole = |r: Record| {
        edit(r, |mm| {
            mm.bytes = mm.payload.len() as u64;
            mm.protocol = ProtocolHint::Tcp as i32;
        })
    };
    let opening = whole(msg(
        7,
        0,
        Direction::ClientToServer,
        &[PREFACE, &settings].concat(),
    ));
    let server_settings = whole(msg(
        7,
        1,
        Direction::ServerToClient,
        &[settings.clone(), ack.clone()].concat(),
    ));
    let flushed = edit(whole(msg(7, 2, Direction::ClientToServer, &ack)), |mm| {
        mm.partial = true;
    });
    let grown = edit(whole(msg(7, 2, Direction::ClientToServer, &[])), |mm| {
        mm.bytes = (ack.len() + request.len()) as u64;
        mm.packets = 5;
        mm.segments = vec![
            capture::Segment {
                offset: 0,
                payload: ack.clone().into(),
            },
            capture::Segment {
                offset: ack.len() as u64,
                payload: request.clone().into(),
            },
        ];
    });
    let answer = whole(msg(7, 3, Direction::ServerToClient, &response));
    let (mut t, m) = table();
    let out = feed(
        &mut t,
        vec![opening, server_settings, flushed, grown, answer, end(7)],
    );
    assert_eq!(out.len(), 1, "one exchange: {out:#?}");
    let s = &out[0];
    assert!(!s.incomplete, "{s:#?}");
    let http = s.http.as_ref().expect("http fields");
    assert_eq!((http.method.as_str(), http.target.as_str()), ("POST", "/"));
    assert_eq!(http.status_code, 200);
    assert_eq!(m.messages_dropped_for("duplicate"), 0);
    assert_eq!(m.messages_dropped_for("response_without_request"), 0);
    assert_eq!(m.desyncs_for("http2", "frames_beyond_capture"), 0);
    assert_flow_balance(&m, "after the grown message");

    // A later version that did not grow is merged into the one taken: nothing is decoded twice.
    let (mut t, m) = table();
    let flushed_request = edit(
        whole(msg(
            8,
            2,
            Direction::ClientToServer,
            &[ack.clone(), request.clone()].concat(),
        )),
        |mm| mm.partial = true,
    );
    let same = whole(msg(
        8,
        2,
        Direction::ClientToServer,
        &[ack.clone(), request].concat(),
    ));
    let out = feed(
        &mut t,
        vec![
            whole(msg(
                8,
                0,
                Direction::ClientToServer,
                &[PREFACE, &settings].concat(),
            )),
            whole(msg(
                8,
                1,
                Direction::ServerToClient,
                &[settings, ack].concat(),
            )),
            flushed_request,
            same,
            whole(msg(8, 3, Direction::ServerToClient, &response)),
            end(8),
        ],
    );
    assert_eq!(out.len(), 1, "one exchange: {out:#?}");
    assert_eq!(m.messages_dropped_for("duplicate"), 0);
    assert_flow_balance(&m, "after a version that did not grow");
}

/// A server socket's flow and its pod veth's: the same keep-alive exchanges, the veth's messages
/// with their own timings, packets and retransmits. With `carried`, the veth sends no flow of
/// its own: its counters ride in the socket's messages (`Message.wire`) and the socket's
/// `FlowStart` names it (`wire_point`). With `client_socket`, the client's socket (a pod on the
/// same node, all-in-one) carries the bytes and the server's socket sends counters only.
fn socket_with_its_veth(carried: bool, client_socket: bool) -> Vec<Record> {
    let socket_point = |side: Side, comm: &str| ObservationPoint {
        kind: PointKind::Socket as i32,
        node: "node-a".into(),
        pid: 4242,
        comm: comm.into(),
        netns_inode: 4026532001,
        side: side as i32,
        ..ObservationPoint::default()
    };
    let (server_flow, client_flow) = (1 | 1 << 63, 2 | 1 << 63);
    let start = |flow_id, point, counters_only, wire_point| Record {
        kind: Some(record::Kind::FlowStart(capture::FlowStart {
            flow_id,
            flow: Some(key()),
            point: Some(point),
            protocol: ProtocolHint::Http as i32,
            counters_only,
            wire_point,
        })),
    };
    let bare = |r: Record| {
        edit(r, |m| {
            m.flow = None;
            m.point = None;
            m.protocol = 0;
        })
    };
    let mut server = Vec::new();
    let mut veth = Vec::new();
    let mut client = Vec::new();
    for i in 0..3u32 {
        for (index, dir, payload) in [
            (2 * i, Direction::ClientToServer, REQ),
            (2 * i + 1, Direction::ServerToClient, RESP),
        ] {
            let mut s = bare(msg(server_flow, index, dir, payload));
            if client_socket {
                // The client's socket carries the bytes; the server's sends counters only.
                client.push(edit(s.clone(), |m| m.flow_id = client_flow));
                s = edit(s, |m| m.payload = bytes::Bytes::new());
            }
            // The veth saw each message a little earlier (requests) or later (responses), in
            // more packets, one retransmitted.
            let w = edit(bare(msg(1, index, dir, b"")), |m| {
                m.start_unix_nanos -= 40;
                m.end_unix_nanos += 70;
                m.packets = 4 + index;
                m.retransmits = index % 2;
                m.bytes = payload.len() as u64 + 1000;
            });
            if carried {
                let Some(record::Kind::Message(wm)) = &w.kind else {
                    unreachable!("a message");
                };
                let wire = capture::WireCounters {
                    start_unix_nanos: wm.start_unix_nanos,
                    end_unix_nanos: wm.end_unix_nanos,
                    tcp_seq: wm.tcp_seq,
                    bytes: wm.bytes,
                    packets: wm.packets,
                    retransmits: wm.retransmits,
                };
                server.push(edit(s, |m| m.wire = Some(wire)));
            } else {
                server.push(s);
                veth.push(w);
            }
        }
    }
    let mut records = vec![
        endpoint_record(SERVER, "web", 7, "veth-server"),
        endpoint_record(CLIENT, "cart", 6, "veth-client"),
        start(
            server_flow,
            socket_point(Side::Server, "nginx"),
            client_socket,
            carried.then(point),
        ),
    ];
    if client_socket {
        records.push(start(
            client_flow,
            socket_point(Side::Client, "curl"),
            false,
            None,
        ));
    }
    if !carried {
        records.push(start(1, point(), true, None));
    }
    // Interleaved, as rings drained in turn would hand them over.
    let mut veth = veth.into_iter();
    let mut client = client.into_iter();
    for s in server {
        records.extend(client.next());
        records.push(s);
        records.extend(veth.next());
    }
    records
}

/// Pod `pod` (namespace `shop`, node `node-a`, its own workload) at `ip`, its host veth
/// `interface` (`ifindex`).
fn endpoint_record(ip: [u8; 4], pod: &str, ifindex: u32, interface: &str) -> Record {
    Record {
        kind: Some(record::Kind::Endpoint(EndpointUpdate {
            ip: ip.to_vec(),
            pod: pod.into(),
            namespace: "shop".into(),
            node: "node-a".into(),
            workload: pod.into(),
            ifindex,
            interface: interface.into(),
            removed: false,
            ..EndpointUpdate::default()
        })),
    }
}

/// `records` through a flow table that keeps counters-only views apart and the local join, as
/// the collector's service takes them: the sessions that leave, and the table's metrics.
fn joined(records: Vec<Record>) -> (Vec<Session>, Arc<CollectorMetrics>) {
    let (mut table, metrics) = table();
    table.keep_counter_views_apart();
    let mut sessions = Vec::new();
    for r in records {
        table.ingest("probe-1", r, Instant::now(), &mut sessions);
    }
    table.flush(Instant::now(), &mut sessions);
    let mut views = Vec::new();
    table.take_counter_views(&mut views);
    let mut join = crate::local_join::LocalJoin::new(Duration::ZERO);
    let mut out = Vec::new();
    join.offer_with_views(sessions, views, Instant::now(), |s| {
        out.push(std::mem::take(s))
    });
    join.flush(|s| out.push(std::mem::take(s)));
    (
        out.into_iter().map(Collected::into_session).collect(),
        metrics,
    )
}

/// The `clovisor_flow_connection_bytes_total` lines counted at the server's veth.
fn server_veth_bytes(m: &CollectorMetrics) -> Vec<String> {
    let mut lines: Vec<String> = metrics_text(m)
        .lines()
        .filter(|l| {
            l.starts_with("clovisor_flow_connection_bytes_total")
                && l.contains("observed_at=\"server_veth\"")
        })
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

#[test]
fn a_veths_counters_carried_by_its_sockets_messages_make_the_session_the_local_join_made() {
    for client_socket in [false, true] {
        let case = format!("client socket traced too: {client_socket}");
        let (apart, apart_metrics) = joined(socket_with_its_veth(false, client_socket));
        let (carried, carried_metrics) = joined(socket_with_its_veth(true, client_socket));
        assert_eq!(
            carried.len(),
            3,
            "{case}: one session per exchange: {carried:#?}"
        );
        for s in &carried {
            let veth = s
                .observations
                .iter()
                .find(|o| o.kind() == PointKind::Pod)
                .unwrap_or_else(|| panic!("{case}: no veth observation in {s:#?}"));
            assert_eq!(
                (
                    veth.side(),
                    veth.interface.as_str(),
                    veth.pid,
                    veth.comm.as_str()
                ),
                (Side::Server, "veth-server", 0, ""),
                "{case}: the server pod's veth, without a process: {veth:?}"
            );
            assert!(
                veth.request_packets > 0 && veth.response_packets > 0,
                "{case}: the veth's own packets: {veth:?}"
            );
            let sockets = s
                .observations
                .iter()
                .filter(|o| o.kind() == PointKind::Socket)
                .count();
            assert_eq!(sockets, 1 + usize::from(client_socket), "{case}: {s:#?}");
            assert_eq!(s.http.as_ref().map(|h| h.status_code), Some(200), "{case}");
        }
        assert_eq!(
            carried, apart,
            "{case}: the same sessions as the local join made of the veth's own views"
        );
        // The veth's bytes count where the veth is, in both ways.
        let counted = server_veth_bytes(&carried_metrics);
        assert_eq!(counted.len(), 2, "{case}: both directions: {counted:?}");
        assert_eq!(counted, server_veth_bytes(&apart_metrics), "{case}");
    }
}
