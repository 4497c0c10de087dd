//! Mutation fuzzing that runs on stable Rust, coverage-guided when built for it.
//!
//! cargo-fuzz's libFuzzer needs a nightly compiler for its sanitizers, which these machines
//! cannot fetch; this harness needs nothing but the workspace. Each [`Target`] feeds bytes to
//! one parser the network (or Redis) reaches: every decoder through the real flow table (so
//! detection, reordering, holding and session building run too), the capture protocol's
//! messages, the probe's ring buffer records, the Redis configuration parsers. Inputs are made
//! by stacking random mutations on seeds — bit flips, interesting bytes, integers at their
//! boundaries (0, 1, `u16`/`u32`/`u64` max, sign bits) written in either byte order, decimal
//! numbers at and past `u32`/`u64` max, insertions, deletions, splices of two inputs.
//!
//! Built with SanitizerCoverage (`scripts/fuzz-coverage.sh`, stable codegen flags; see
//! [`coverage`]) the fuzzer keeps every input that reaches an edge, or an edge's hit-count
//! class, no input reached before, and mutates those: a corpus that grows into the decoders'
//! deeper states. Built plainly it runs coverage-free, a random walk away from the seeds: what
//! that buys is volume and the boundary values length fields break on.
//!
//! Debug builds keep overflow checks on, so an unchecked length overflow is a panic, and a
//! panic is a finding: the input is kept and the run fails.

#![deny(unsafe_code)]

pub mod coverage;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clovisor_collector::flows::{FlowTable, FlowTableConfig};
use clovisor_collector::server::inbound::{Batch, Inbound};
use clovisor_collector::CollectorMetrics;
use clovisor_proto::capture::v1::{
    self as capture, record, FlowEnd, FlowEndReason, FlowKey, Message, ObservationPoint,
    ProtocolHint, Record,
};
use prost::Message as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What is fuzzed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// HTTP/1.x through the flow table (port 80, hinted `http`).
    Http1,
    /// HTTP/2 and gRPC through the flow table (hinted `grpc`).
    Http2,
    /// DNS over UDP and TCP through the flow table (port 53).
    Dns,
    /// Redis (RESP) through the flow table (hinted `redis`).
    Redis,
    /// PostgreSQL through the flow table (port 5432, detected by its first bytes).
    Postgresql,
    /// MySQL through the flow table (port 3306, detected by its first bytes).
    Mysql,
    /// Protobuf `ProbeMessage`/`RecordBatch` bytes as a probe's stream carries them, decoded and
    /// ingested by the flow table.
    CaptureRecords,
    /// Ring buffer records as the BPF programs write them (`probe::capture::raw::Event`).
    RingRecords,
    /// Redis configuration entries: every key's parser, the allow-lists, entry bytes to text.
    Config,
    /// One encoded session as a collector's batch to the correlator carries it: read by its
    /// head, offered to the join, its window closed, read back by id; where both read it, the
    /// head must agree with prost.
    CorrelatorSessions,
}

impl Target {
    /// Every target.
    pub const ALL: [Target; 10] = [
        Target::Http1,
        Target::Http2,
        Target::Dns,
        Target::Redis,
        Target::Postgresql,
        Target::Mysql,
        Target::CaptureRecords,
        Target::RingRecords,
        Target::Config,
        Target::CorrelatorSessions,
    ];

    /// Runs one input.
    pub fn run(self, input: &[u8]) {
        let _ = self.sessions(input);
    }

    /// Runs one input; for the flow targets, how many sessions the flow table made of it.
    pub fn sessions(self, input: &[u8]) -> usize {
        match self {
            Target::Http1 => flow(input, 80, ProtocolHint::Http, capture::Transport::Tcp),
            Target::Http2 => flow(input, 50051, ProtocolHint::Grpc, capture::Transport::Tcp),
            Target::Dns => {
                let transport = if input.first().is_some_and(|b| b & 0x80 != 0) {
                    capture::Transport::Tcp
                } else {
                    capture::Transport::Udp
                };
                flow(input, 53, ProtocolHint::Unspecified, transport)
            }
            Target::Redis => flow(input, 6379, ProtocolHint::Redis, capture::Transport::Tcp),
            Target::Postgresql => flow(input, 5432, ProtocolHint::Tcp, capture::Transport::Tcp),
            Target::Mysql => flow(input, 3306, ProtocolHint::Tcp, capture::Transport::Tcp),
            Target::CaptureRecords => capture_records(input),
            Target::RingRecords => {
                usize::from(clovisor_probe::capture::raw::Event::try_from(input).is_ok())
            }
            Target::Config => config(input),
            Target::CorrelatorSessions => correlator_sessions(input),
        }
    }

    /// Inputs mutations start from: well-formed messages of the protocol, in the framing
    /// [`Target::run`] reads.
    pub fn seeds(self) -> Vec<Vec<u8>> {
        let exchange = |req: &[u8], resp: &[u8]| frame(&[(0, req), (1, resp)]);
        match self {
            Target::Http1 => vec![
                exchange(
                    b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\nUser-Agent: u\r\n\r\n",
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                ),
                exchange(
                    b"POST /p HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\nxx",
                    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
                ),
                exchange(
                    b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                ),
            ],
            Target::Http2 => {
                let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
                let mut client = preface.to_vec();
                // SETTINGS (empty), then HEADERS on stream 1 with an indexed :method GET.
                client.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]);
                client.extend([0, 0, 4, 1, 4, 0, 0, 0, 1, 0x82, 0x86, 0x84, 0x41]);
                let server = [0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 1, 1, 5, 0, 0, 0, 1, 0x88];
                vec![exchange(&client, &server)]
            }
            Target::Dns => {
                let query = [
                    0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'w', b'w', b'w', 0, 0, 1, 0, 1,
                ];
                let mut answer = query.to_vec();
                answer[2] = 0x81;
                answer[3] = 0x80;
                answer[7] = 1;
                answer.extend([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 1]);
                let mut tcp = vec![0x80];
                tcp.extend(exchange(
                    &[&[0, query.len() as u8][..], &query[..]].concat(),
                    &[&[0, answer.len() as u8][..], &answer[..]].concat(),
                ));
                vec![exchange(&query, &answer), tcp]
            }
            Target::Redis => vec![
                exchange(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n", b"+OK\r\n"),
                exchange(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", b"$-1\r\n"),
                exchange(b"*1\r\n$18446744073709551615\r\n", b"*4294967296\r\n:1\r\n"),
            ],
            Target::Postgresql => {
                let startup = [
                    0, 0, 0, 23, 0, 3, 0, 0, b'u', b's', b'e', b'r', 0, b'a', 0, b'd', b'a', b't',
                    b'a', b'b', b'a', b's', b'e',
                ];
                let query = b"Q\0\0\0\x0dSELECT 1\0";
                let ready = b"R\0\0\0\x08\0\0\0\0Z\0\0\0\x05I";
                vec![frame(&[(0, &startup), (1, ready), (0, query), (1, ready)])]
            }
            Target::Mysql => {
                let greeting = b"\x0a\0\0\0\x0a8.0.0\0\x01\0\0\0abcdefgh\0\xff\xf7";
                let login = b"\x20\0\0\x01\x85\xa6\xff\x01\0\0\0\x01\x21\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0root\0";
                let ok = b"\x07\0\0\x02\0\0\0\x02\0\0\0";
                let query = b"\x09\0\0\0\x03SELECT 1";
                vec![frame(&[
                    (1, &greeting[..]),
                    (0, &login[..]),
                    (1, &ok[..]),
                    (0, &query[..]),
                    (1, &ok[..]),
                ])]
            }
            Target::CaptureRecords => vec![capture_seed()],
            Target::RingRecords => (1u8..=3)
                .map(|kind| {
                    let mut b = vec![0u8; 256];
                    b[0] = kind;
                    b[4] = 1;
                    b
                })
                .collect(),
            Target::Config => [
                "shop",
                "shop:app:web",
                "10.0.0.7:80:cart-",
                "[2001:db8::1]:443",
                "https://jaeger.tracing:4317",
                "jaeger-agent:6831",
                "2048",
                "x-api-key",
                "http=http-analyzer",
            ]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect(),
            Target::CorrelatorSessions => [false, true]
                .into_iter()
                .map(|client_is_pod| session_seed(client_is_pod).encode_to_vec())
                .collect(),
        }
    }
}

/// An HTTP exchange as a collector's local join sends it: the server pod's veth and socket
/// merged; a client that is a pod of ours (another node's probe may send its view) or not.
fn session_seed(client_is_pod: bool) -> clovisor_proto::session::v1::Session {
    use clovisor_proto::common::v1::{PointKind, Side};
    use clovisor_proto::session::v1::{Endpoint, Http, Observation, Protocol, Session};
    let observation = |kind: PointKind, interface: &str| Observation {
        kind: kind as i32,
        interface: interface.into(),
        node: "node-a".into(),
        probe_id: "probe-a".into(),
        side: Side::Server as i32,
        request_start_unix_nanos: 1_700_000_000_000_000_000,
        request_end_unix_nanos: 1_700_000_000_000_100_000,
        response_start_unix_nanos: 1_700_000_000_000_800_000,
        response_end_unix_nanos: 1_700_000_000_001_000_000,
        request_tcp_seq: 1000,
        response_tcp_seq: 2000,
        request_bytes: 120,
        response_bytes: 612,
        netns_inode: 4026532000,
        ..Observation::default()
    };
    Session {
        id: "probe-a/1f/0".into(),
        protocol: Protocol::Http1 as i32,
        client: Some(Endpoint {
            ip: vec![10, 0, 0, 1].into(),
            port: 40000,
            pod: if client_is_pod {
                "client-0".into()
            } else {
                String::new()
            },
            ..Endpoint::default()
        }),
        server: Some(Endpoint {
            ip: vec![10, 0, 0, 2].into(),
            port: 80,
            pod: "web-0".into(),
            namespace: "shop".into(),
            ..Endpoint::default()
        }),
        observations: vec![
            observation(PointKind::Pod, "veth-web0"),
            observation(PointKind::Socket, ""),
        ],
        http: Some(Http {
            method: "GET".into(),
            target: "/index.html".into(),
            status_code: 200,
            version: "HTTP/1.1".into(),
            ..Http::default()
        }),
        merged_ids: vec!["probe-a/2e/0".into()],
        ..Session::default()
    }
}

/// Messages in [`flow`]'s framing: for each, a control byte (bit 0: server to client) and a
/// two-byte little-endian length.
fn frame(messages: &[(u8, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (control, payload) in messages {
        let len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
        out.push(*control);
        out.extend(len.to_le_bytes());
        out.extend(&payload[..usize::from(len)]);
    }
    out
}

/// One flow at a pod veth made of `input`: messages framed as [`frame`] writes them, where
/// control bits also mark the message partial (2), give it a byte count near `u64::MAX` (4),
/// skip an index (8), repeat the previous one (16), flush the table with time passed (32) or
/// end the flow (64).
fn flow(input: &[u8], port: u32, hint: ProtocolHint, transport: capture::Transport) -> usize {
    let metrics = Arc::new(CollectorMetrics::new());
    let mut table = FlowTable::new(FlowTableConfig::default(), metrics);
    let key = FlowKey {
        client_ip: vec![10, 0, 0, 1],
        server_ip: vec![10, 0, 0, 2],
        client_port: 40000,
        server_port: port,
        transport: transport as i32,
    };
    let start = capture::FlowStart {
        flow_id: 1,
        flow: Some(key),
        point: Some(ObservationPoint::default()),
        protocol: hint as i32,
        counters_only: false,
        wire_point: None,
    };
    let t0 = Instant::now();
    let mut out = Vec::new();
    ingest(&mut table, record::Kind::FlowStart(start), t0, &mut out);
    let mut rest = input;
    let mut index: u32 = 0;
    let mut now = t0;
    while let [control, a, b, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*a, *b])).min(tail.len());
        let (payload, next) = tail.split_at(len);
        rest = next;
        if control & 8 != 0 {
            index = index.wrapping_add(1);
        }
        if control & 16 != 0 {
            index = index.wrapping_sub(1);
        }
        let direction = if control & 1 == 0 {
            capture::Direction::ClientToServer
        } else {
            capture::Direction::ServerToClient
        };
        let bytes = if control & 4 != 0 {
            u64::MAX - u64::from(*a)
        } else {
            payload.len() as u64
        };
        let m = Message {
            flow_id: 1,
            index,
            direction: direction as i32,
            start_unix_nanos: u64::from(index).wrapping_mul(1_000_000),
            end_unix_nanos: u64::from(index).wrapping_mul(1_000_000).wrapping_add(500),
            tcp_seq: index,
            bytes,
            packets: 1,
            payload: payload.to_vec().into(),
            partial: control & 2 != 0,
            ..Message::default()
        };
        ingest(&mut table, record::Kind::Message(m), now, &mut out);
        index = index.wrapping_add(1);
        if control & 32 != 0 {
            now += Duration::from_secs(3);
            table.flush(now, &mut out);
        }
        if control & 64 != 0 {
            let end = FlowEnd {
                flow_id: 1,
                reason: FlowEndReason::Fin as i32,
                ..FlowEnd::default()
            };
            ingest(&mut table, record::Kind::FlowEnd(end), now, &mut out);
        }
    }
    table.flush(now + Duration::from_secs(300), &mut out);
    out.len()
}

/// One record of probe `fuzz` into `table`.
fn ingest(
    table: &mut FlowTable,
    kind: record::Kind,
    now: Instant,
    out: &mut Vec<clovisor_collector::flows::Collected>,
) {
    table.ingest("fuzz", Record { kind: Some(kind) }, now, out);
}

/// A probe's stream message (`ProbeMessage`, or a bare `RecordBatch`), decoded as the
/// collector's service decodes it (`server::inbound`: the batch's framing, then each record by
/// the collector's own decoder into one slot) and ingested. Each record is checked against
/// prost's decoding of the same bytes: the batch decodes with prost exactly when every record
/// decodes with ours, to the same records; a difference is a finding, as a panic is.
fn capture_records(input: &[u8]) -> usize {
    let bytes = Bytes::copy_from_slice(input);
    let (batch, reference) = match Inbound::decode(bytes.clone()) {
        Ok(Inbound::Batch(b)) => (
            b,
            capture::ProbeMessage::decode(input).map(|m| match m.kind {
                Some(capture::probe_message::Kind::Batch(b)) => b.records,
                _ => Vec::new(),
            }),
        ),
        _ => match Batch::decode(bytes) {
            Ok(b) => (b, capture::RecordBatch::decode(input).map(|b| b.records)),
            Err(_) => return 0,
        },
    };
    let metrics = Arc::new(CollectorMetrics::new());
    let mut table = FlowTable::new(FlowTableConfig::default(), metrics);
    let mut out = Vec::new();
    let now = Instant::now();
    let mut ours = Vec::with_capacity(batch.len());
    let mut records = batch.records();
    let mut slot = Record::default();
    while let Some(decoded) = records.next_into(&mut slot) {
        match decoded {
            Ok(()) => {
                ours.push(Some(slot.clone()));
                table.ingest_in_place("fuzz", &mut slot, now, &mut out);
            }
            Err(_) => {
                ours.push(None);
                table.malformed_record();
            }
        }
    }
    match reference {
        Ok(expected) => {
            let expected: Vec<Option<Record>> = expected.into_iter().map(Some).collect();
            assert!(
                ours == expected,
                "the collector's decoder disagrees with prost: {ours:?}\nprost: {expected:?}"
            );
        }
        Err(e) => assert!(
            ours.iter().any(Option::is_none),
            "prost refuses the batch ({e}), the collector's decoder decodes every record"
        ),
    }
    table.flush(now + Duration::from_secs(300), &mut out);
    out.len()
}

fn capture_seed() -> Vec<u8> {
    let key = FlowKey {
        client_ip: vec![10, 0, 0, 1],
        server_ip: vec![10, 0, 0, 2],
        client_port: 40000,
        server_port: 80,
        transport: capture::Transport::Tcp as i32,
    };
    let message = |index: u32, direction: capture::Direction, payload: &[u8]| Record {
        kind: Some(record::Kind::Message(Message {
            flow: Some(key.clone()),
            flow_id: 7,
            index,
            direction: direction as i32,
            bytes: payload.len() as u64,
            payload: payload.to_vec().into(),
            protocol: ProtocolHint::Http as i32,
            ..Message::default()
        })),
    };
    let endpoint = Record {
        kind: Some(record::Kind::Endpoint(capture::EndpointUpdate {
            ip: vec![10, 0, 0, 2],
            pod: "web-0".into(),
            namespace: "shop".into(),
            ..capture::EndpointUpdate::default()
        })),
    };
    capture::ProbeMessage {
        kind: Some(capture::probe_message::Kind::Batch(capture::RecordBatch {
            seq: 1,
            records: vec![
                endpoint,
                message(
                    0,
                    capture::Direction::ClientToServer,
                    b"GET / HTTP/1.1\r\n\r\n",
                ),
                message(
                    1,
                    capture::Direction::ServerToClient,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                ),
                // As probes since `FlowStart` send a flow: announced once, then named by id; a
                // socket point's message in segments; its end.
                Record {
                    kind: Some(record::Kind::FlowStart(capture::FlowStart {
                        flow_id: 8,
                        flow: Some(key.clone()),
                        point: Some(ObservationPoint {
                            kind: clovisor_proto::common::v1::PointKind::Socket as i32,
                            node: "node-a".into(),
                            comm: "nginx".into(),
                            pid: 42,
                            ..ObservationPoint::default()
                        }),
                        protocol: ProtocolHint::Http as i32,
                        counters_only: false,
                        wire_point: None,
                    })),
                },
                Record {
                    kind: Some(record::Kind::Message(Message {
                        flow_id: 8,
                        direction: capture::Direction::ClientToServer as i32,
                        bytes: 18,
                        segments: vec![capture::Segment {
                            offset: 0,
                            payload: b"GET / HTTP/1.1\r\n\r\n"[..].into(),
                        }],
                        ..Message::default()
                    })),
                },
                Record {
                    kind: Some(record::Kind::FlowEnd(FlowEnd {
                        flow_id: 8,
                        reason: FlowEndReason::Fin as i32,
                        ..FlowEnd::default()
                    })),
                },
            ],
        })),
    }
    .encode_to_vec()
}

/// A session with every part [`clovisor_proto::session::decode::decode_into`] reuses filled:
/// [`session_seed`]'s, with a process, a third observation, a trace context, an attribute.
fn fuzz_full_session() -> clovisor_proto::session::v1::Session {
    use clovisor_proto::session::v1::TraceContext;
    let mut s = session_seed(true);
    if let Some(o) = s.observations.first_mut() {
        o.comm = "nginx".into();
        o.pid = 42;
    }
    s.observations.extend(s.observations.first().cloned());
    s.trace = Some(TraceContext {
        format: 1,
        trace_id: vec![1; 16],
        parent_span_id: vec![2; 8],
        sampled: true,
        tracestate: "a=b".into(),
    });
    s.attributes.insert("k".into(), "v".into());
    s.incomplete = true;
    s
}

/// A session offered to the correlator as a batch carries it (twice: the second is a duplicate
/// or joins the first), its window closed; returns how many exchanges were made ready.
fn correlator_sessions(input: &[u8]) -> usize {
    use clovisor_correlator::ingest::IngestService;
    use clovisor_correlator::join::head::Head;
    use clovisor_correlator::join::JoinConfig;
    use clovisor_proto::session::v1::{Session, SessionBatch};
    // The correlator's own decoder refuses what prost refuses and agrees with it on the rest.
    match (
        clovisor_proto::session::decode(input),
        Session::decode(input),
    ) {
        (Ok(ours), Ok(prost)) => assert_eq!(ours, prost, "the session decoder"),
        (Err(_), Err(_)) => {}
        (ours, prost) => panic!("the session decoder: {ours:?}, prost: {prost:?}"),
    }
    // Decoded into a session that held another (as the correlator decodes ready exchanges into
    // finished ones): the same result, nothing of the other left.
    let mut used = fuzz_full_session();
    match (
        clovisor_proto::session::decode::decode_into(input, &mut used, true),
        Session::decode(input),
    ) {
        (Ok(()), Ok(prost)) => assert_eq!(used, prost, "decoding into a used session"),
        (Err(_), Err(_)) => {}
        (ours, prost) => panic!("decoding into a used session: {ours:?}, prost: {prost:?}"),
    }
    if let (Some(head), Ok(whole)) = (Head::read(input), Session::decode(input)) {
        let client = clovisor_proto::join::key::ClientAddr::of(&whole);
        assert_eq!(head.client(), client, "the head's client");
        assert_eq!(
            client.and_then(|c| head.wire_key(c)),
            client.and_then(|c| clovisor_proto::join::key::wire_key(&whole, c)),
            "the head's wire key"
        );
        assert_eq!(head.id(), whole.id, "the head's id");
    }
    let store = Arc::new(clovisor_correlator::store::Store::new(16));
    let metrics = Arc::new(clovisor_correlator::metrics::Metrics::new());
    let svc = IngestService::with_join(
        Arc::clone(&store),
        Arc::clone(&metrics),
        None,
        JoinConfig {
            window: Duration::from_millis(10),
            max_entries: 64,
            ..JoinConfig::default()
        },
    );
    let t0 = Instant::now();
    let session = Bytes::copy_from_slice(input);
    svc.accept_batch_at(
        SessionBatch {
            seq: 1,
            sender: "fuzz".into(),
            sessions: vec![session.clone(), session],
        },
        t0,
    );
    svc.tick_at(t0 + Duration::from_millis(20));
    let ready = metrics
        .drops()
        .emitted_count(clovisor_correlator::metrics::STAGE_JOIN);
    if let Ok(whole) = Session::decode(input) {
        let _ = store.get(&whole.id);
    }
    usize::try_from(ready).unwrap_or(usize::MAX)
}

/// Redis entries: the bytes as text (or rejected), then every parser on the text and on each
/// of its lines, and the allow-list parser.
fn config(input: &[u8]) -> usize {
    use clovisor_config::parse;
    let mut rejected = Vec::new();
    let Some(text) = parse::text(clovisor_config::keys::LABELS, input.to_vec(), &mut rejected)
    else {
        return 0;
    };
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for entry in std::iter::once(text.as_str()).chain(lines.iter().map(String::as_str)) {
        let _ = parse::parse_label(entry);
        let _ = parse::parse_egress(entry);
        let _ = parse::parse_otlp_endpoint(entry);
        let _ = parse::parse_jaeger(entry);
        let _ = parse::parse_snaplen(entry);
        let _ = parse::parse_header_name(entry);
        if let Some((p, a)) = entry.split_once('=') {
            let _ = parse::parse_proto_entry(p, a);
        }
    }
    let _ = parse::Policy::parse(Some(&text), Some(&text));
    let snap = parse::Snapshot {
        labels: lines.clone(),
        egress: lines.clone(),
        redact_headers: lines.clone(),
        otlp_endpoint: lines.first().cloned(),
        snaplen: lines.last().cloned(),
        proto_cfg: lines
            .iter()
            .filter_map(|l| l.split_once('='))
            .map(|(p, a)| (p.to_owned(), a.to_owned()))
            .collect(),
        ..parse::Snapshot::default()
    };
    parse::build(&snap, &parse::Policy::default())
        .0
        .labels
        .len()
}

/// Integers at their boundaries, written by [`mutate`] in either byte order.
const INTERESTING: [u64; 12] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

/// Decimal numbers at and past the limits of `u32`/`u64`, for text protocols' lengths.
const DECIMALS: [&str; 9] = [
    "0",
    "-1",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999",
    "-9223372036854775808",
];

/// Bytes that often mean something to a parser.
const SPECIAL_BYTES: [u8; 12] = [
    0, 0xff, 0x7f, 0x80, b'\r', b'\n', b':', b' ', b'$', b'*', b'%', b'0',
];

/// Longest input made.
pub const MAX_INPUT: usize = 8192;

/// Stacks 1 to 8 random mutations on `input`, splicing from `others` now and then.
pub fn mutate(rng: &mut StdRng, input: &mut Vec<u8>, others: &[Vec<u8>]) {
    let rounds = rng.random_range(1..=8);
    for _ in 0..rounds {
        let len = input.len();
        match rng.random_range(0..10) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                input[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                input[i] = SPECIAL_BYTES[rng.random_range(0..SPECIAL_BYTES.len())];
            }
            2 => {
                let at = rng.random_range(0..=len);
                let n = rng.random_range(1..=16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                input.splice(at..at, bytes);
            }
            3 if len > 0 => {
                let from = rng.random_range(0..len);
                let to = rng.random_range(from..=len.min(from + 64));
                input.drain(from..to);
            }
            4 if len > 0 => {
                let from = rng.random_range(0..len);
                let to = rng.random_range(from..=len.min(from + 64));
                let copy = input[from..to].to_vec();
                let at = rng.random_range(0..=input.len());
                input.splice(at..at, copy);
            }
            5 => {
                let value = INTERESTING[rng.random_range(0..INTERESTING.len())];
                let width = [1usize, 2, 4, 8][rng.random_range(0..4)];
                // The low `width` bytes of the value, in either byte order.
                let bytes = if rng.random() {
                    value.to_le_bytes()[..width].to_vec()
                } else {
                    value.to_be_bytes()[8 - width..].to_vec()
                };
                let at = rng.random_range(0..=len);
                let end = (at + bytes.len()).min(len);
                input.splice(at..end, bytes);
            }
            6 => {
                let number = DECIMALS[rng.random_range(0..DECIMALS.len())].as_bytes();
                let at = rng.random_range(0..=len);
                // Replace a run of digits when there is one here, else insert.
                let digits = input[at..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                input.splice(at..at + digits, number.iter().copied());
            }
            7 if !others.is_empty() => {
                let other = &others[rng.random_range(0..others.len())];
                let at = rng.random_range(0..=len);
                let from = rng.random_range(0..=other.len());
                input.truncate(at);
                input.extend_from_slice(&other[from..]);
            }
            8 if len > 0 => input.truncate(rng.random_range(0..len)),
            _ => {
                let at = rng.random_range(0..=len);
                input.insert(at, rng.random());
            }
        }
    }
    input.truncate(MAX_INPUT);
}

/// How a run went.
#[derive(Debug)]
pub struct Report {
    /// Inputs run.
    pub inputs: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// The first input that panicked, and the panic's message.
    pub crash: Option<(Vec<u8>, String)>,
    /// With coverage (an instrumented build): edges the run's inputs hit, of how many.
    pub edges: Option<(usize, usize)>,
    /// Inputs kept to mutate further: the corpus (coverage-guided), or the random walk's pool.
    pub kept: usize,
}

impl Report {
    /// Inputs per second.
    pub fn rate(&self) -> f64 {
        self.inputs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// How the next input is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feedback {
    /// Mutate the inputs that reached new coverage (when the build is instrumented; else as
    /// [`Feedback::None`]).
    Coverage,
    /// Mutate any earlier input: a random walk away from the seeds. Coverage, when there is
    /// some, is still measured (to compare).
    None,
}

/// Inputs the coverage-guided corpus keeps at most (then new finds replace random ones).
const MAX_CORPUS: usize = 4096;
/// Inputs the random walk's pool keeps.
const MAX_POOL: usize = 512;

/// Runs `target` until `max_inputs` inputs or `max_time` (whichever first), from RNG seed
/// `seed`, coverage-guided when the build is instrumented; stops at the first panic.
pub fn fuzz(target: Target, seed: u64, max_inputs: u64, max_time: Duration) -> Report {
    fuzz_with(target, seed, max_inputs, max_time, Feedback::Coverage)
}

/// [`fuzz`], choosing inputs by `feedback`.
pub fn fuzz_with(
    target: Target,
    seed: u64,
    max_inputs: u64,
    max_time: Duration,
    feedback: Feedback,
) -> Report {
    let mut rng = StdRng::seed_from_u64(seed);
    let seeds = target.seeds();
    let mut coverage = coverage::Coverage::attach();
    let guided = feedback == Feedback::Coverage && coverage.is_some();
    // Inputs mutated further: the corpus (guided: seeds, then inputs that found coverage), or
    // a random walk away from the seeds (bounded).
    let mut pool: Vec<Vec<u8>> = seeds.clone();
    let started = Instant::now();
    let mut inputs = 0;
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut crash = None;
    // Every seed as it is first.
    let mut queue: Vec<Vec<u8>> = seeds.clone();
    while inputs < max_inputs && started.elapsed() < max_time {
        let input = queue.pop().unwrap_or_else(|| {
            let mut input = pool[rng.random_range(0..pool.len())].clone();
            mutate(&mut rng, &mut input, if guided { &pool } else { &seeds });
            input
        });
        inputs += 1;
        if let Some(c) = coverage.as_mut() {
            c.reset();
        }
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| target.run(&input))) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic without a message".to_owned());
            crash = Some((input, message));
            break;
        }
        let new = coverage.as_mut().is_some_and(coverage::Coverage::collect);
        if guided {
            if new && pool.len() < MAX_CORPUS {
                pool.push(input);
            } else if new {
                let i = rng.random_range(seeds.len()..pool.len());
                pool[i] = input;
            }
        } else if pool.len() < MAX_POOL {
            pool.push(input);
        } else if rng.random_range(0..8) == 0 {
            let i = rng.random_range(0..pool.len());
            pool[i] = input;
        }
    }
    std::panic::set_hook(hook);
    Report {
        inputs,
        elapsed: started.elapsed(),
        crash,
        edges: coverage.map(|c| (c.edges(), c.counters())),
        kept: pool.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Part of the test command: every target, a bounded number of inputs each (boundary
    /// integers and decimals among the mutations), none may panic.
    #[test]
    fn every_target_survives_a_bounded_run() {
        for target in Target::ALL {
            let report = fuzz(target, 0x5eed, 3000, Duration::from_secs(20));
            if let Some((input, message)) = &report.crash {
                panic!(
                    "{target:?} panicked after {} inputs: {message}\ninput ({} bytes): {}",
                    report.inputs,
                    input.len(),
                    input.escape_ascii()
                );
            }
            assert!(report.inputs > 0, "{target:?} ran nothing");
        }
    }

    #[test]
    fn each_protocols_first_seed_reaches_its_decoder_and_makes_a_session() {
        // Else the framing or the flow set-up would be wrong and the run would fuzz nothing.
        for target in [
            Target::Http1,
            Target::Http2,
            Target::Dns,
            Target::Redis,
            Target::Postgresql,
            Target::Mysql,
            Target::CaptureRecords,
            Target::Config,
            Target::CorrelatorSessions,
        ] {
            let seed = &target.seeds()[0];
            assert!(
                target.sessions(seed) > 0,
                "{target:?}: its first seed makes no session (or selector)"
            );
        }
    }

    #[test]
    fn overflow_checks_are_on_so_an_unchecked_length_is_a_finding() {
        // The harness itself: a panic in the code under test is caught and kept.
        let report = {
            let hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(|_| {}));
            let r = catch_unwind(|| {
                let n: u32 = u32::MAX;
                let bump = std::hint::black_box(1u32);
                n + bump
            });
            std::panic::set_hook(hook);
            r
        };
        assert!(
            report.is_err(),
            "debug builds check overflow: an unchecked length overflow is a finding"
        );
    }
}
