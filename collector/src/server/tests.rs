//! The service over the in-process HTTP/2 transport (`clovisor_proto::inproc`), as in tonic's
//! `examples/src/mock`.

use super::*;
use clovisor_proto::capture::v1::capture_client::CaptureClient;
use clovisor_proto::capture::v1::{
    self as capture, probe_message, record, Direction, FlowKey, FlowStart, Message,
    ObservationPoint, ProbeMessage, ProtocolHint, Record, RecordBatch,
};
use clovisor_proto::inproc;
use clovisor_proto::session::v1::Session;
use tonic::transport::{Channel, Server};

/// Starts the service; every connect opens a fresh in-memory connection to it.
async fn start(
    config: ServiceConfig,
) -> anyhow::Result<(Channel, mpsc::Receiver<Session>, Arc<CollectorMetrics>)> {
    start_with(config, None, None).await
}

/// Like [`start`], acknowledging after `downstream` (a stand-in forwarder's counters) and
/// following `live` if given.
async fn start_with(
    config: ServiceConfig,
    downstream: Option<Arc<DeliveryStats>>,
    live: Option<watch::Receiver<LiveConfig>>,
) -> anyhow::Result<(Channel, mpsc::Receiver<Session>, Arc<CollectorMetrics>)> {
    let metrics = Arc::new(CollectorMetrics::new());
    let (out_tx, out_rx) = mpsc::channel(64);
    let out_rx = decoded(out_rx);
    let mut svc = CaptureService::with_config(out_tx, Arc::clone(&metrics), config);
    if let Some(stats) = downstream {
        svc = svc.ack_after_downstream(stats);
    }
    if let Some(live) = live {
        svc = svc.with_live_config(live);
    }
    let svc = svc.into_server();
    let (channel, incoming) = inproc::pair();
    tokio::spawn(async move {
        let _ = Server::builder()
            .add_service(svc)
            .serve_with_incoming(incoming)
            .await;
    });
    Ok((channel, out_rx, metrics))
}

/// The service's output as sessions again (it hands the forwarder encoded ones); a session
/// that does not decode ends the channel.
fn decoded(mut encoded: mpsc::Receiver<EncodedSession>) -> mpsc::Receiver<Session> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        while let Some(e) = encoded.recv().await {
            let Ok(s) = e.decode() else { return };
            if tx.send(s).await.is_err() {
                return;
            }
        }
    });
    rx
}

fn hello(probe: &str, node: &str) -> ProbeMessage {
    ProbeMessage {
        kind: Some(probe_message::Kind::Hello(Hello {
            probe_id: probe.into(),
            node: node.into(),
            snaplen: 256,
        })),
    }
}

fn message(index: u32, dir: Direction, payload: &[u8]) -> Record {
    Record {
        kind: Some(record::Kind::Message(Message {
            flow: Some(FlowKey {
                client_ip: vec![10, 0, 0, 1],
                server_ip: vec![10, 0, 0, 2],
                client_port: 5555,
                server_port: 80,
                transport: 1,
            }),
            point: Some(ObservationPoint::default()),
            flow_id: 9,
            index,
            direction: dir as i32,
            payload: payload.to_vec().into(),
            protocol: ProtocolHint::Http as i32,
            ..Message::default()
        })),
    }
}

fn batch(seq: u64, records: Vec<Record>) -> ProbeMessage {
    ProbeMessage {
        kind: Some(probe_message::Kind::Batch(RecordBatch { seq, records })),
    }
}

/// Sends `msgs` on a new gRPC stream and collects `acks` acknowledgements.
async fn exchange(
    channel: &Channel,
    msgs: Vec<ProbeMessage>,
    acks: usize,
) -> anyhow::Result<Vec<u64>> {
    through(
        clovisor_proto::hops::CaptureConnector::new(channel.clone()),
        msgs,
        acks,
    )
    .await
}

/// Sends `msgs` through `connector` as a probe's sender does (each message as it was encoded)
/// and collects `acks` acknowledgements.
async fn through(
    mut connector: clovisor_proto::hops::CaptureConnector,
    msgs: Vec<ProbeMessage>,
    acks: usize,
) -> anyhow::Result<Vec<u64>> {
    use clovisor_proto::delivery::Connector as _;
    use prost::Message as _;
    let (tx, rx) = mpsc::channel::<clovisor_proto::hops::HopMessage>(16);
    for m in msgs {
        tx.send(bytes::Bytes::from(m.encode_to_vec()).into())
            .await?;
    }
    let mut inbound = connector.open(ReceiverStream::new(rx)).await?;
    let mut got = Vec::new();
    while got.len() < acks {
        let msg = tokio::time::timeout(Duration::from_secs(5), inbound.next())
            .await
            .map_err(|_| anyhow::anyhow!("no ack within 5s; got {got:?}"))?
            .ok_or_else(|| anyhow::anyhow!("stream ended after acks {got:?}"))??;
        match msg.kind {
            Some(collector_message::Kind::Ack(a)) => got.push(a.seq),
            None => anyhow::bail!("a message of no kind after acks {got:?}"),
        }
    }
    drop(tx);
    Ok(got)
}

const REQ: &[u8] = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n";
const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

#[tokio::test]
async fn first_message_must_be_hello() -> anyhow::Result<()> {
    let (channel, _out, _m) = start(ServiceConfig::default()).await?;
    let (tx, rx) = mpsc::channel(4);
    tx.send(batch(1, vec![])).await?;
    let res = CaptureClient::new(channel)
        .stream(ReceiverStream::new(rx))
        .await;
    match res {
        Err(status) => assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "want InvalidArgument, got {status:?}"
        ),
        Ok(_) => panic!("a stream without Hello must be refused, it was accepted"),
    }
    Ok(())
}

#[tokio::test]
async fn acks_every_batch_and_processes_resent_ones_once() -> anyhow::Result<()> {
    let (channel, mut out, metrics) = start(ServiceConfig::default()).await?;
    let acks = exchange(
        &channel,
        vec![
            hello("p1", "node-a"),
            batch(1, vec![message(0, Direction::ClientToServer, REQ)]),
            batch(2, vec![message(1, Direction::ServerToClient, RESP)]),
        ],
        2,
    )
    .await?;
    assert_eq!(acks, vec![1, 2]);
    let s = tokio::time::timeout(Duration::from_secs(5), out.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("output closed"))?;
    assert_eq!(s.http.as_ref().map(|h| h.status_code), Some(200));

    // Reconnect: batch 2 is re-sent (unacked from the probe's view), then new batches.
    let acks = exchange(
        &channel,
        vec![
            hello("p1", "node-a"),
            batch(2, vec![message(1, Direction::ServerToClient, RESP)]),
            batch(3, vec![message(2, Direction::ClientToServer, REQ)]),
            batch(4, vec![message(3, Direction::ServerToClient, RESP)]),
        ],
        3,
    )
    .await?;
    assert_eq!(
        acks,
        vec![2, 3, 4],
        "every batch is acknowledged, duplicates too"
    );
    assert_eq!(
        metrics.batches_duplicate.get(),
        1,
        "batch 2 was a duplicate"
    );
    let s = tokio::time::timeout(Duration::from_secs(5), out.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("output closed"))?;
    assert_eq!(
        s.id, "p1/9/2",
        "the next session is the new exchange, not a replay"
    );
    assert!(out.try_recv().is_err(), "no duplicate session");
    assert_eq!(
        metrics.messages_dropped_for("duplicate"),
        0,
        "dedupe happened at batch level"
    );
    Ok(())
}

#[tokio::test]
async fn a_record_that_does_not_decode_is_dropped_alone_and_counted() -> anyhow::Result<()> {
    use clovisor_proto::delivery::Connector as _;
    use futures::StreamExt as _;
    use prost::encoding::{encode_key, encode_varint, WireType};
    use prost::Message as _;

    let (channel, mut out, metrics) = start(ServiceConfig::default()).await?;
    // A batch as a probe frames it, with a record between the request and the response whose
    // `message` field has the wrong wire type.
    let mut body = Vec::new();
    encode_key(1, WireType::Varint, &mut body);
    encode_varint(1, &mut body);
    prost::encoding::message::encode(2, &message(0, Direction::ClientToServer, REQ), &mut body);
    body.extend([0x12, 0x02, 0x08, 0x01]);
    prost::encoding::message::encode(2, &message(1, Direction::ServerToClient, RESP), &mut body);
    let mut frame = Vec::new();
    encode_key(2, WireType::LengthDelimited, &mut frame);
    encode_varint(body.len() as u64, &mut frame);
    frame.extend(body);

    let (tx, rx) = mpsc::channel::<clovisor_proto::hops::HopMessage>(4);
    tx.send(bytes::Bytes::from(hello("p1", "node-a").encode_to_vec()).into())
        .await?;
    tx.send(bytes::Bytes::from(frame).into()).await?;
    let mut inbound = clovisor_proto::hops::CaptureConnector::new(channel)
        .open(ReceiverStream::new(rx))
        .await?;
    let ack = tokio::time::timeout(Duration::from_secs(5), inbound.next())
        .await?
        .ok_or_else(|| anyhow::anyhow!("stream ended without an ack"))??;
    assert!(
        matches!(ack.kind, Some(collector_message::Kind::Ack(Ack { seq: 1 }))),
        "the batch is acknowledged: {ack:?}"
    );
    let s = tokio::time::timeout(Duration::from_secs(5), out.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("output closed"))?;
    assert_eq!(
        s.http.as_ref().map(|h| h.status_code),
        Some(200),
        "the records around the broken one make their session"
    );
    assert_eq!(
        (
            metrics.records_received_for("malformed"),
            metrics.records_received_for("message"),
            metrics.messages_dropped_for("malformed"),
        ),
        (1, 2, 1)
    );
    drop(tx);
    Ok(())
}

#[tokio::test]
async fn new_probe_id_on_same_node_forgets_old_flows() -> anyhow::Result<()> {
    let (channel, _out, metrics) = start(ServiceConfig::default()).await?;
    exchange(
        &channel,
        vec![
            hello("old", "node-a"),
            batch(1, vec![message(0, Direction::ClientToServer, REQ)]),
        ],
        1,
    )
    .await?;
    let acks = exchange(
        &channel,
        vec![
            hello("new", "node-a"),
            batch(1, vec![message(0, Direction::ClientToServer, REQ)]),
        ],
        1,
    )
    .await?;
    assert_eq!(
        acks,
        vec![1],
        "the new incarnation starts its numbering afresh"
    );
    assert_eq!(metrics.probe_restarts.get(), 1);
    assert_eq!(metrics.flows_evicted_for("probe_restart"), 1);
    assert_eq!(
        metrics
            .drops
            .get(crate::metrics::STAGE_DECODER, "probe_restart"),
        1,
        "the old incarnation's open request, counted lost"
    );
    Ok(())
}

/// A service whose flows go idle after 50 ms, flushed every 20 ms.
fn flushing_soon() -> ServiceConfig {
    ServiceConfig {
        flows: FlowTableConfig {
            idle_timeout: Duration::from_millis(50),
            ..FlowTableConfig::default()
        },
        flush_interval: Duration::from_millis(20),
        ..ServiceConfig::default()
    }
}

#[tokio::test]
async fn periodic_flush_emits_idle_flows() -> anyhow::Result<()> {
    let (channel, mut out, metrics) = start(flushing_soon()).await?;
    exchange(
        &channel,
        vec![
            hello("p", "n"),
            batch(1, vec![message(0, Direction::ClientToServer, REQ)]),
        ],
        1,
    )
    .await?;
    let s = tokio::time::timeout(Duration::from_secs(5), out.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("output closed"))?;
    assert!(
        s.incomplete,
        "an idle open request is emitted incomplete: {s:?}"
    );
    assert_eq!(metrics.flows_evicted_for("idle"), 1);
    Ok(())
}

#[tokio::test]
async fn with_downstream_acks_a_batch_waits_for_its_sessions_to_be_delivered() -> anyhow::Result<()>
{
    let forwarder = Arc::new(DeliveryStats::default());
    let (channel, mut out, _m) =
        start_with(ServiceConfig::default(), Some(Arc::clone(&forwarder)), None).await?;
    let (tx, rx) = mpsc::channel(16);
    tx.send(hello("p1", "node-a")).await?;
    tx.send(batch(
        1,
        vec![
            message(0, Direction::ClientToServer, REQ),
            message(1, Direction::ServerToClient, RESP),
        ],
    ))
    .await?;
    let mut inbound = CaptureClient::new(channel)
        .stream(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let session = tokio::time::timeout(Duration::from_secs(5), out.recv()).await?;
    assert!(
        session.is_some(),
        "expected the batch's session on the output"
    );
    let early = tokio::time::timeout(Duration::from_millis(300), inbound.message()).await;
    assert!(
        early.is_err(),
        "expected no ack while the session is not delivered, got {early:?}"
    );
    forwarder
        .items_acked
        .store(1, std::sync::atomic::Ordering::Relaxed);
    let msg = tokio::time::timeout(Duration::from_secs(5), inbound.message())
        .await
        .map_err(|_| anyhow::anyhow!("no ack after the session was delivered"))??;
    match msg.and_then(|m| m.kind) {
        Some(collector_message::Kind::Ack(a)) => {
            assert_eq!(a.seq, 1, "expected batch 1 acknowledged, got {}", a.seq)
        }
        other => anyhow::bail!("expected an ack, got {other:?}"),
    }
    drop(tx);
    Ok(())
}

#[tokio::test]
async fn the_live_redaction_list_applies_to_sessions_leaving_the_collector() -> anyhow::Result<()> {
    let (live_tx, live_rx) = watch::channel(LiveConfig::default());
    let (channel, mut out, _) = start_with(ServiceConfig::default(), None, Some(live_rx)).await?;
    const REQ_UA: &[u8] =
        b"GET /x HTTP/1.1\r\nHost: shop.internal\r\nUser-Agent: secret-client/1\r\n\r\n";
    // One request/response exchange as messages `index` and `index + 1`; its (host, user agent).
    let mut round = async |index: u32| -> anyhow::Result<(String, String)> {
        let seq = u64::from(index) + 1;
        exchange(
            &channel,
            vec![
                hello("p1", "node-a"),
                batch(seq, vec![message(index, Direction::ClientToServer, REQ_UA)]),
                batch(
                    seq + 1,
                    vec![message(index + 1, Direction::ServerToClient, RESP)],
                ),
            ],
            2,
        )
        .await?;
        let s = tokio::time::timeout(Duration::from_secs(5), out.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("output closed"))?;
        let http = s.http.unwrap_or_default();
        Ok((http.host, http.user_agent))
    };
    assert_eq!(
        round(0).await?,
        ("shop.internal".into(), "secret-client/1".into()),
        "not listed: kept"
    );
    live_tx.send_modify(|c| c.redacted_headers.push("user-agent".into()));
    assert_eq!(
        round(2).await?,
        (
            "shop.internal".into(),
            crate::decode::redact::REDACTED.into()
        ),
        "listed from now on: redacted"
    );
    Ok(())
}

/// A probe with `FlowStart` sends a flow's identity once: in its table of open flows after Hello
/// (what a restarted collector learns back), then messages with the flow id alone.
#[tokio::test]
async fn flows_announced_after_hello_are_known_to_their_bare_messages() -> anyhow::Result<()> {
    let (channel, mut out, metrics) = start(ServiceConfig::default()).await?;
    let bare = |index: u32, dir: Direction, payload: &[u8]| match message(index, dir, payload).kind
    {
        Some(record::Kind::Message(m)) => Record {
            kind: Some(record::Kind::Message(Message {
                flow: None,
                point: None,
                protocol: 0,
                ..m
            })),
        },
        other => panic!("expected a message, got {other:?}"),
    };
    let start = FlowStart {
        flow_id: 9,
        flow: Some(FlowKey {
            client_ip: vec![10, 0, 0, 1],
            server_ip: vec![10, 0, 0, 2],
            client_port: 5555,
            server_port: 80,
            transport: 1,
        }),
        point: Some(ObservationPoint {
            interface: "veth-web".into(),
            ..ObservationPoint::default()
        }),
        protocol: ProtocolHint::Http as i32,
        counters_only: false,
        wire_point: None,
    };
    let table = ProbeMessage {
        kind: Some(probe_message::Kind::Flows(capture::FlowTable {
            flows: vec![start.clone(), start],
        })),
    };
    exchange(
        &channel,
        vec![
            hello("p", "node-a"),
            table,
            batch(
                1,
                vec![
                    bare(0, Direction::ClientToServer, REQ),
                    bare(1, Direction::ServerToClient, RESP),
                ],
            ),
        ],
        1,
    )
    .await?;
    let s = tokio::time::timeout(Duration::from_secs(5), out.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("no session"))?;
    assert_eq!(
        (
            s.server.as_ref().map(|e| e.port),
            s.observations[0].interface.as_str(),
            s.http.as_ref().map(|h| h.status_code)
        ),
        (Some(80), "veth-web", Some(200)),
        "the session has the announced key and point: {s:?}"
    );
    assert_eq!(metrics.messages_dropped_for("no_flow_key"), 0);
    Ok(())
}

mod admission;

/// A request whose target and user agent are longer than kept leaves the collector with both cut
/// to their limits, marked and counted — after redaction, so a credential before the cut is
/// still redacted.
#[tokio::test]
async fn over_long_strings_from_the_wire_are_cut_marked_and_counted() -> anyhow::Result<()> {
    use crate::decode::limits::{MAX_FIELD_BYTES, MAX_LONG_FIELD_BYTES, TRUNCATION_MARK};
    let (channel, mut out, metrics) = start(ServiceConfig::default()).await?;
    let target = format!("/x?X-Amz-Signature=secret&pad={}", "a".repeat(20_000));
    let agent = "b".repeat(3_000);
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: shop.internal\r\nUser-Agent: {agent}\r\n\r\n");
    exchange(
        &channel,
        vec![
            hello("p1", "node-a"),
            batch(
                1,
                vec![message(0, Direction::ClientToServer, request.as_bytes())],
            ),
            batch(2, vec![message(1, Direction::ServerToClient, RESP)]),
        ],
        2,
    )
    .await?;
    let s = tokio::time::timeout(Duration::from_secs(5), out.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("output closed"))?;
    let http = s.http.unwrap_or_default();
    assert!(
        http.target.len() <= MAX_LONG_FIELD_BYTES && http.target.ends_with(TRUNCATION_MARK),
        "target of {} bytes, ending {:?}",
        http.target.len(),
        http.target.get(http.target.len().saturating_sub(8)..)
    );
    assert!(
        http.target
            .starts_with("/x?X-Amz-Signature=REDACTED&pad=aaa"),
        "redacted before the cut: {:?}",
        http.target.get(..40)
    );
    assert!(
        http.user_agent.len() <= MAX_FIELD_BYTES && http.user_agent.ends_with(TRUNCATION_MARK),
        "user agent of {} bytes",
        http.user_agent.len()
    );
    for field in ["http.target", "http.user_agent"] {
        let counted = metrics
            .fields_truncated
            .get_or_create(&crate::metrics::FieldLabel { field })
            .get();
        assert_eq!(counted, 1, "cuts of {field} counted");
    }
    Ok(())
}

/// Two points' views of one exchange (a pod's veth and its socket, one probe) leave as one
/// session, redacted and cut once: the local join merges them first, then the session is
/// finished as it leaves — one cut counted, not one per view.
#[tokio::test]
async fn views_merged_here_are_redacted_and_cut_once_as_one_session() -> anyhow::Result<()> {
    use crate::decode::limits::{MAX_LONG_FIELD_BYTES, TRUNCATION_MARK};
    use clovisor_proto::common::v1::{PointKind, Side};
    let (channel, mut out, metrics) = start(ServiceConfig::default()).await?;
    let target = format!("/x?X-Amz-Signature=secret&pad={}", "a".repeat(20_000));
    let request = format!("GET {target} HTTP/1.1\r\nHost: shop.internal\r\n\r\n");
    // The same exchange at two points: the same wire key (client address and port, the
    // request's sequence number), each point's flow of its own.
    let at = |flow_id, point: &ObservationPoint, index, dir, payload: &[u8], seq| {
        let mut r = message(index, dir, payload);
        if let Some(record::Kind::Message(m)) = r.kind.as_mut() {
            m.flow_id = flow_id;
            m.point = Some(point.clone());
            m.tcp_seq = seq;
        }
        r
    };
    let veth = ObservationPoint {
        kind: PointKind::Pod as i32,
        interface: "veth-web".into(),
        ..ObservationPoint::default()
    };
    let socket = ObservationPoint {
        kind: PointKind::Socket as i32,
        side: Side::Server as i32,
        pid: 7,
        comm: "nginx".into(),
        ..ObservationPoint::default()
    };
    let mut records = Vec::new();
    for (flow_id, point) in [(9, &veth), (10, &socket)] {
        records.push(at(
            flow_id,
            point,
            0,
            Direction::ClientToServer,
            request.as_bytes(),
            1000,
        ));
        records.push(at(flow_id, point, 1, Direction::ServerToClient, RESP, 5000));
    }
    exchange(&channel, vec![hello("p1", "node-a"), batch(1, records)], 1).await?;
    let s = tokio::time::timeout(Duration::from_secs(5), out.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("output closed"))?;
    assert_eq!(s.observations.len(), 2, "one session of both views: {s:?}");
    let http = s.http.unwrap_or_default();
    assert!(
        http.target.len() <= MAX_LONG_FIELD_BYTES
            && http.target.ends_with(TRUNCATION_MARK)
            && http
                .target
                .starts_with("/x?X-Amz-Signature=REDACTED&pad=aaa"),
        "redacted, then cut: {:?}",
        http.target.get(..40)
    );
    let counted = metrics
        .fields_truncated
        .get_or_create(&crate::metrics::FieldLabel {
            field: "http.target",
        })
        .get();
    assert_eq!(counted, 1, "one session left, one cut counted");
    assert_eq!(metrics.views_merged.get(), 1);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), out.recv())
            .await
            .is_err(),
        "nothing else leaves"
    );
    Ok(())
}

#[tokio::test]
async fn a_message_over_the_configured_size_ends_the_stream_and_is_counted() -> anyhow::Result<()> {
    let (channel, _out, metrics) = start(ServiceConfig {
        max_message_bytes: 64 << 10,
        ..ServiceConfig::default()
    })
    .await?;
    // Within the limit: acknowledged.
    let small = batch(
        1,
        vec![message(0, Direction::ClientToServer, &[b'a'; 60_000])],
    );
    assert_eq!(
        exchange(&channel, vec![hello("p", "n"), small], 1).await?,
        vec![1]
    );
    // Past it: the stream ends with `out of range`, nothing acknowledged, counted.
    let big = batch(
        2,
        vec![message(1, Direction::ClientToServer, &[b'a'; 70_000])],
    );
    let err = exchange(&channel, vec![hello("p", "n"), big], 1)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("too large"),
        "want a size refusal, got {err:?}"
    );
    let counted = metrics
        .probes_refused
        .get_or_create(&crate::metrics::ReasonLabel {
            reason: "message_too_large",
        })
        .get();
    assert_eq!(counted, 1);
    Ok(())
}

fn endpoint(ip: [u8; 4], pod: &str, service: &str) -> Record {
    Record {
        kind: Some(record::Kind::Endpoint(capture::EndpointUpdate {
            ip: ip.to_vec(),
            pod: pod.into(),
            namespace: "shop".into(),
            node: "node-a".into(),
            workload: pod.trim_end_matches("-0").into(),
            services: vec![service.into()],
            ..capture::EndpointUpdate::default()
        })),
    }
}

/// The ends' metadata travels beside each session inside the collector and is written into it
/// when it is encoded: on the local join's way out and on the timed flush's.
#[tokio::test]
async fn sessions_leave_with_their_ends_named_by_the_probes_metadata() -> anyhow::Result<()> {
    let (channel, mut out, _metrics) = start(flushing_soon()).await?;
    exchange(
        &channel,
        vec![
            hello("p", "node-a"),
            batch(
                1,
                vec![
                    endpoint([10, 0, 0, 1], "client-0", ""),
                    endpoint([10, 0, 0, 2], "web-0", "web"),
                    message(0, Direction::ClientToServer, REQ),
                    message(1, Direction::ServerToClient, RESP),
                ],
            ),
            // Left open: the timed flush hands it on.
            batch(2, vec![message(2, Direction::ClientToServer, REQ)]),
        ],
        2,
    )
    .await?;
    let mut got = Vec::new();
    for _ in 0..2 {
        let s = tokio::time::timeout(Duration::from_secs(5), out.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("output closed"))?;
        got.push(s);
    }
    got.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        got.iter().map(|s| s.incomplete).collect::<Vec<_>>(),
        [false, true],
        "the exchange, then the open request flushed: {got:#?}"
    );
    for s in &got {
        let (c, srv) = (
            s.client.clone().unwrap_or_default(),
            s.server.clone().unwrap_or_default(),
        );
        assert_eq!(
            (c.pod.as_str(), c.workload.as_str(), c.namespace.as_str()),
            ("client-0", "client", "shop"),
            "{s:#?}"
        );
        assert_eq!(
            (srv.pod.as_str(), srv.service.as_str(), srv.node.as_str()),
            ("web-0", "web", "node-a"),
            "{s:#?}"
        );
        assert_eq!((srv.ip.to_vec(), srv.port), (vec![10, 0, 0, 2], 80));
    }
    Ok(())
}

#[tokio::test]
async fn a_probe_in_this_process_streams_directly_as_over_grpc() -> anyhow::Result<()> {
    // Two exchanges in two batches.
    let msgs = || {
        vec![
            hello("p1", "node-a"),
            batch(
                1,
                vec![
                    message(0, Direction::ClientToServer, REQ),
                    message(1, Direction::ServerToClient, RESP),
                ],
            ),
            batch(
                2,
                vec![
                    message(2, Direction::ClientToServer, REQ),
                    message(3, Direction::ServerToClient, RESP),
                ],
            ),
        ]
    };
    let (channel, mut grpc_out, grpc_metrics) = start(ServiceConfig::default()).await?;
    let grpc_acks = through(
        clovisor_proto::hops::CaptureConnector::new(channel),
        msgs(),
        2,
    )
    .await?;

    let metrics = Arc::new(CollectorMetrics::new());
    let (out_tx, out_rx) = mpsc::channel(64);
    let mut direct_out = decoded(out_rx);
    let svc = CaptureService::with_config(out_tx, Arc::clone(&metrics), ServiceConfig::default());
    let direct = clovisor_proto::hops::CaptureConnector::direct(Arc::new(svc.clone()));
    let direct_acks = through(direct.clone(), msgs(), 2).await?;
    assert_eq!(direct_acks, vec![1, 2]);
    assert_eq!(
        direct_acks, grpc_acks,
        "the same acknowledgements either way"
    );
    for _ in 0..2 {
        let want = tokio::time::timeout(Duration::from_secs(5), grpc_out.recv()).await?;
        let got = tokio::time::timeout(Duration::from_secs(5), direct_out.recv()).await?;
        assert!(got.is_some(), "a session for each exchange");
        assert_eq!(got, want, "the same sessions either way");
    }
    assert_eq!(
        metrics.records_received_for("message"),
        grpc_metrics.records_received_for("message")
    );

    // The same admission: a stream whose first message is not a Hello is refused.
    let refused = through(direct, vec![batch(1, Vec::new())], 1).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("Hello")),
        "{refused:?}"
    );
    Ok(())
}
