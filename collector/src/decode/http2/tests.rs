//! HTTP/2 and gRPC on real captures (`collector/tests/data/http2/`, made as its README says)
//! replayed into messages as the probe would send them, plus cut, garbage and hostile input.

use std::path::PathBuf;

use clovisor_proto::capture::v1::record;
use clovisor_proto::session::v1::{Protocol, TraceFormat};

use super::*;
use crate::decode::testing::{message, Recorded};
use crate::decode::{Exchange, Fields, MessageStats};
use crate::replay::pcap::{replay_file, ReplayConfig};

/// A message as the decoder gets it, owned.
struct Owned {
    direction: Direction,
    stats: MessageStats,
    payload: Vec<u8>,
}

impl Owned {
    fn message(&self) -> Message<'_> {
        Message {
            direction: self.direction,
            stats: self.stats,
            payload: &self.payload,
            partial: false,
            later: &[],
        }
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/http2")
        .join(name)
}

/// The messages of the one flow in capture `name`, on traced `port`, cut at `snaplen`.
fn messages(name: &str, port: u16, snaplen: u32) -> Vec<Owned> {
    let cfg = ReplayConfig {
        traced_ports: [port].into_iter().collect(),
        snaplen,
        ..ReplayConfig::default()
    };
    let replay =
        replay_file(&fixture(name), &cfg).unwrap_or_else(|e| panic!("replaying {name}: {e}"));
    replay
        .records
        .into_iter()
        .filter_map(|r| match r.kind {
            Some(record::Kind::Message(m)) => Some(Owned {
                direction: Direction::from_wire(m.direction)?,
                stats: MessageStats::of(&m),
                payload: m.payload.to_vec(),
            }),
            _ => None,
        })
        .collect()
}

/// Detects and decodes `msgs` as the flow table would, then closes the flow.
fn decode(msgs: &[Owned]) -> Recorded {
    let mut out = Recorded::default();
    let key = Default::default();
    let info = FlowInfo {
        probe_id: "p",
        flow_id: 1,
        key: &key,
        hint: ProtocolHint::Tcp,
    };
    let mut flow: Option<Box<dyn FlowDecoder>> = None;
    for m in msgs {
        let m = m.message();
        if flow.is_none() && Http2.detect(&info, &m) == Detection::Claim {
            flow = Some(Http2.new_flow(&info));
        }
        if let Some(f) = flow.as_mut() {
            assert_eq!(f.on_message(&m, &mut out), crate::decode::Step::Continue);
        }
    }
    if let Some(f) = flow.as_mut() {
        f.on_close(&mut out);
    }
    out
}

fn http(e: &Exchange) -> &clovisor_proto::session::v1::Http {
    match &e.fields {
        Fields::Http(h) | Fields::Grpc { http: h, .. } => h,
        Fields::Dns(_)
        | Fields::Database(_)
        | Fields::Analyzer(_)
        | Fields::Kafka(_)
        | Fields::None => {
            panic!("an HTTP/2 exchange has HTTP fields: {e:?}")
        }
    }
}

const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// tonic client and server: two calls that succeed, one that fails with a trailers-only
/// response (`INVALID_ARGUMENT`, a percent-encoded message); W3C trace context as metadata.
#[test]
fn grpc_unary_calls_from_a_real_tonic_capture() {
    let out = decode(&messages("grpc_unary.pcapng", 50051, 1024));
    assert_eq!(out.errors, Vec::<&str>::new());
    assert_eq!(
        out.desyncs,
        Vec::<&str>::new(),
        "all frames fit in 1024 bytes"
    );
    assert_eq!(out.exchanges.len(), 3, "{:#?}", out.exchanges);
    for (e, status) in out.exchanges.iter().zip([0, 0, 3]) {
        assert_eq!(e.protocol, Protocol::Grpc);
        assert!(!e.incomplete, "{e:?}");
        let Fields::Grpc { http, grpc } = &e.fields else {
            panic!("gRPC fields expected: {e:?}");
        };
        assert_eq!(
            (http.method.as_str(), http.target.as_str(), http.status_code),
            ("POST", GRPC_PATH, 200)
        );
        assert_eq!(http.version, "2");
        assert_eq!(http.host, "127.0.0.1:50051");
        assert_eq!(http.user_agent, "tonic/0.14.9");
        assert_eq!(
            grpc.service,
            "opentelemetry.proto.collector.trace.v1.TraceService"
        );
        assert_eq!(grpc.method, "Export");
        assert_eq!(grpc.status_code, Some(status), "{e:?}");
        let tc = e.trace.as_ref().expect("traceparent metadata");
        assert_eq!(tc.format, TraceFormat::W3c as i32);
        assert_eq!(
            tc.parent_span_id,
            [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]
        );
        assert!(e.response.is_some_and(|r| r.end >= e.request.start));
    }
    let Fields::Grpc { grpc, .. } = &out.exchanges[2].fields else {
        unreachable!("checked above")
    };
    assert_eq!(grpc.message, "no spans: nothing to export");
    let streams: Vec<&str> = out
        .exchanges
        .iter()
        .map(|e| e.attributes["clovisor.http2.stream_id"].as_str())
        .collect();
    assert_eq!(streams, ["1", "3", "5"]);
    // Each stream is named by the sequence number of its own HEADERS frame, the same at every
    // observation point whatever their message boundaries.
    let mut seqs: Vec<u32> = out.exchanges.iter().map(|e| e.request.tcp_seq).collect();
    seqs.dedup();
    assert_eq!(seqs.len(), 3, "{seqs:?}");
}

/// nghttp to nghttpd, prior knowledge: three streams multiplexed on one connection, one of
/// them an 8000-byte response, far beyond a 1024-byte capture.
#[test]
fn h2c_prior_knowledge_multiplexed_from_a_real_nghttp_capture() {
    let out = decode(&messages("h2c_prior.pcapng", 8080, 1024));
    assert_eq!(out.errors, Vec::<&str>::new());
    let mut got: Vec<(String, String, u32, bool)> = out
        .exchanges
        .iter()
        .map(|e| {
            let h = http(e);
            (
                h.method.clone(),
                h.target.clone(),
                h.status_code,
                e.incomplete,
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("GET".into(), "/big.bin".into(), 200, false),
            ("GET".into(), "/index.html".into(), 200, false),
            ("GET".into(), "/missing?token=secret&q=1".into(), 404, false),
        ]
    );
    for e in &out.exchanges {
        assert_eq!(e.protocol, Protocol::Http2);
        let h = http(e);
        assert_eq!(
            (h.version.as_str(), h.host.as_str()),
            ("2", "127.0.0.1:8080")
        );
        assert_eq!(h.request_id, "req-h2-1");
        assert_eq!(
            e.trace.as_ref().map(|t| t.format),
            Some(TraceFormat::W3c as i32)
        );
    }
    let positions: Vec<u32> = out.exchanges.iter().map(|e| e.position).collect();
    assert!(
        positions.contains(&0) && positions.contains(&1) && positions.contains(&2),
        "three streams opened in one message take positions 0, 1, 2: {positions:?}"
    );
}

/// The same connection captured with only 100 bytes per message: header blocks are cut, the
/// tables fall out of step and say so; every field reported is still a true one.
#[test]
fn a_small_snaplen_desyncs_and_never_reports_wrong_fields() {
    let full = decode(&messages("h2c_prior.pcapng", 8080, 4096));
    let truth: Vec<(String, String, u32)> = full
        .exchanges
        .iter()
        .map(|e| {
            let h = http(e);
            (h.method.clone(), h.target.clone(), h.status_code)
        })
        .collect();
    for snaplen in [40, 64, 100, 200, 300, 500] {
        let cut = decode(&messages("h2c_prior.pcapng", 8080, snaplen));
        if snaplen <= 64 {
            assert!(
                !cut.desyncs.is_empty(),
                "snaplen {snaplen}: a cut header block must be a desync"
            );
        }
        assert!(
            cut.exchanges.len() <= truth.len(),
            "snaplen {snaplen}: never more exchanges than streams"
        );
        for e in &cut.exchanges {
            let h = http(e);
            let right = truth.iter().any(|(m, t, s)| {
                (h.method.is_empty() || &h.method == m)
                    && (h.target.is_empty() || h.target == *t)
                    && (h.status_code == 0 || h.status_code == *s)
            });
            assert!(right, "snaplen {snaplen}: {h:?} is not what was sent");
            if h.method.is_empty() || h.target.is_empty() {
                assert_eq!(
                    e.attributes
                        .get("clovisor.http2.request_headers_incomplete")
                        .map(String::as_str),
                    Some("true"),
                    "{e:?}"
                );
            }
        }
    }
}

/// Every message of both captures cut at every length, and garbage after a real preface: no
/// panic, and the flow never reports more streams than were opened.
#[test]
fn input_cut_anywhere_or_garbage_never_panics() {
    for (name, port) in [("grpc_unary.pcapng", 50051), ("h2c_prior.pcapng", 8080)] {
        let msgs = messages(name, port, 65535);
        for i in 0..msgs.len() {
            for cut in 0..msgs[i].payload.len().min(600) {
                let mut copy: Vec<Owned> = msgs
                    .iter()
                    .map(|m| Owned {
                        direction: m.direction,
                        stats: m.stats,
                        payload: m.payload.clone(),
                    })
                    .collect();
                copy[i].payload.truncate(cut);
                let out = decode(&copy);
                assert!(out.exchanges.len() <= 3, "{name} message {i} cut at {cut}");
            }
        }
    }
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..3000 {
        let mut flow = Http2Flow::default();
        let mut out = Recorded::default();
        for i in 0..6u32 {
            let len = (next() % 300) as usize;
            let mut payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if i == 0 {
                payload.splice(0..0, frame::PREFACE.iter().copied());
            }
            let dir = if i % 2 == 0 {
                Direction::ClientToServer
            } else {
                Direction::ServerToClient
            };
            let mut m = message(i, dir, &payload);
            // Sometimes the message was longer than captured.
            if next() % 3 == 0 {
                m.stats.bytes += next() % 100_000;
            }
            flow.on_message(&m, &mut out);
        }
        flow.on_close(&mut out);
        assert!(out.exchanges.len() <= flow::MAX_STREAMS);
    }
}

/// Frames as a peer would send them.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const HEADERS: u8 = 1;

#[test]
fn hostile_hpack_fails_cleanly_is_counted_and_resyncs_only_on_a_table_reset() {
    let mut flow = Http2Flow::default();
    let mut out = Recorded::default();
    // GET / on stream 1, then a huge table size update on stream 3.
    let mut c = frame::PREFACE.to_vec();
    c.extend(frame(HEADERS, 0x5, 1, &[0x82, 0x84, 0x86]));
    c.extend(frame(HEADERS, 0x5, 3, &[0x3f, 0xe1, 0xff, 0xff, 0x0f]));
    flow.on_message(&message(0, Direction::ClientToServer, &c), &mut out);
    assert_eq!(out.errors, ["hpack_table_size_too_large"]);
    assert_eq!(out.desyncs, ["hpack_error"]);
    // Out of step: a dynamic reference is unknown, a static one still known.
    let mut c = frame(HEADERS, 0x5, 5, &[0x82, 0xbe]);
    // A table reset brings it back: size 0 then 4096, a literal and its dynamic reference.
    c.extend(frame(
        HEADERS,
        0x5,
        7,
        &[0x20, 0x3f, 0xe1, 0x1f, 0x83, 0x44, 0x02, b'/', b'x', 0xbe],
    ));
    flow.on_message(&message(1, Direction::ClientToServer, &c), &mut out);
    // Responses: :status 200 to each, ending the streams.
    let mut s = Vec::new();
    for id in [1, 3, 5, 7] {
        s.extend(frame(HEADERS, 0x5, id, &[0x88]));
    }
    flow.on_message(&message(2, Direction::ServerToClient, &s), &mut out);
    let by_stream = |id: &str| {
        out.exchanges
            .iter()
            .find(|e| e.attributes["clovisor.http2.stream_id"] == id)
            .unwrap_or_else(|| panic!("stream {id}: {:#?}", out.exchanges))
    };
    assert_eq!(http(by_stream("1")).target, "/");
    assert_eq!(
        http(by_stream("3")).method,
        "",
        "nothing decoded before the error"
    );
    let five = by_stream("5");
    assert_eq!(
        (http(five).method.as_str(), http(five).target.as_str()),
        ("GET", "")
    );
    assert_eq!(
        five.attributes
            .get("clovisor.http2.request_headers_incomplete")
            .map(String::as_str),
        Some("true")
    );
    let seven = by_stream("7");
    assert_eq!(
        (http(seven).method.as_str(), http(seven).target.as_str()),
        ("POST", "/x")
    );
    assert!(!seven
        .attributes
        .contains_key("clovisor.http2.request_headers_incomplete"));
    assert!(out.exchanges.iter().all(|e| http(e).status_code == 200));
    assert_eq!(out.desyncs.len(), 1, "one loss of step, counted once");
}

#[test]
fn a_header_block_split_across_messages_is_put_back_together() {
    let block = [0x83, 0x44, 0x02, b'/', b'y', 0x86];
    let mut c = frame::PREFACE.to_vec();
    c.extend(frame(HEADERS, 0x4, 1, &block));
    c.extend(frame(0, 0x1, 1, b"body"));
    // The client's bytes arrive in two messages (the server spoke in between: SETTINGS).
    let (a, b) = c.split_at(frame::PREFACE.len() + 12);
    let mut flow = Http2Flow::default();
    let mut out = Recorded::default();
    flow.on_message(&message(0, Direction::ClientToServer, a), &mut out);
    flow.on_message(
        &message(1, Direction::ServerToClient, &frame(4, 0, 0, &[])),
        &mut out,
    );
    flow.on_message(&message(2, Direction::ClientToServer, b), &mut out);
    flow.on_message(
        &message(
            3,
            Direction::ServerToClient,
            &frame(HEADERS, 0x5, 1, &[0x8d]),
        ),
        &mut out,
    );
    assert_eq!(out.desyncs, Vec::<&str>::new());
    assert_eq!(out.exchanges.len(), 1);
    let h = http(&out.exchanges[0]);
    assert_eq!(
        (h.method.as_str(), h.target.as_str(), h.status_code),
        ("POST", "/y", 404)
    );
}

#[test]
fn streams_never_answered_are_incomplete_at_close_and_credentials_never_kept() {
    let mut c = frame::PREFACE.to_vec();
    // authorization: secret (literal, never indexed, static name 23).
    let mut block = vec![0x82, 0x84, 0x1f, 0x08, 0x06];
    block.extend_from_slice(b"secret");
    c.extend(frame(HEADERS, 0x5, 1, &block));
    let mut flow = Http2Flow::default();
    let mut out = Recorded::default();
    flow.on_message(&message(0, Direction::ClientToServer, &c), &mut out);
    flow.on_close(&mut out);
    assert_eq!(out.exchanges.len(), 1);
    assert!(out.exchanges[0].incomplete);
    assert!(!format!("{:?}", out.exchanges).contains("secret"));
}

/// curl to nghttpx, HTTP/1.1 `Upgrade: h2c`: the HTTP/1 decoder claims the flow, hands it over
/// on `101`, and the upgrade request is stream 1 of the HTTP/2 connection.
#[test]
fn h2c_upgrade_from_http1_is_handed_over_from_a_real_curl_capture() {
    use crate::decode::{Decoders, Detected, Step};
    let msgs = messages("h2c_upgrade.pcapng", 8082, 1024);
    let key = Default::default();
    let info = FlowInfo {
        probe_id: "p",
        flow_id: 1,
        key: &key,
        hint: ProtocolHint::Http,
    };
    let decoders = Decoders::default();
    let mut out = Recorded::default();
    let mut flow: Option<(&str, Box<dyn FlowDecoder>)> = None;
    let mut names = Vec::new();
    for m in &msgs {
        let m = m.message();
        if flow.is_none() {
            if let Detected::Claimed(d) = decoders.detect(&info, &m) {
                flow = Some((d.name(), d.new_flow(&info)));
            }
        }
        let Some((name, f)) = flow.as_mut() else {
            continue;
        };
        names.push(*name);
        if f.on_message(&m, &mut out) == Step::Handover {
            let next = f.successor().expect("a handover names its successor");
            flow = Some(next);
        }
    }
    if let Some((_, f)) = flow.as_mut() {
        f.on_close(&mut out);
    }
    assert_eq!(names.first(), Some(&"http1"));
    assert_eq!(names.last(), Some(&"http2"), "{names:?}");
    assert_eq!(out.errors, Vec::<&str>::new());
    assert_eq!(out.desyncs, Vec::<&str>::new());
    let mut got: Vec<(String, String, u32, String, bool)> = out
        .exchanges
        .iter()
        .map(|e| {
            let h = http(e);
            (
                h.method.clone(),
                h.target.clone(),
                h.status_code,
                e.attributes["clovisor.http2.stream_id"].clone(),
                e.incomplete,
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            (
                "GET".into(),
                "/index.html?via=upgrade".into(),
                200,
                "1".into(),
                false
            ),
            ("GET".into(), "/missing".into(), 404, "3".into(), false),
        ]
    );
    for e in &out.exchanges {
        assert_eq!(e.protocol, Protocol::Http2);
        assert_eq!(http(e).version, "2");
        assert_eq!(http(e).request_id, "req-upgrade");
        assert_eq!(
            e.trace.as_ref().map(|t| t.format),
            Some(TraceFormat::W3c as i32)
        );
    }
}

/// Real messages with bytes flipped, dropped or repeated (seeded): never a panic, never more
/// exchanges than streams a connection may hold, HPACK tables within their cap.
#[test]
fn mutated_real_traffic_never_panics() {
    let runs: usize = std::env::var("CLOVISOR_FUZZ_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let captures = [
        messages("grpc_unary.pcapng", 50051, 65535),
        messages("h2c_prior.pcapng", 8080, 65535),
    ];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for run in 0..runs {
        let msgs = &captures[run % captures.len()];
        let mut copy: Vec<Owned> = msgs
            .iter()
            .map(|m| Owned {
                direction: m.direction,
                stats: m.stats,
                payload: m.payload.clone(),
            })
            .collect();
        for _ in 0..(1 + next() % 4) {
            let i = (next() as usize) % copy.len();
            let p = &mut copy[i].payload;
            if p.is_empty() {
                continue;
            }
            let at = (next() as usize) % p.len();
            match next() % 4 {
                0 => p[at] ^= 1 << (next() % 8),
                1 => p[at] = next() as u8,
                2 => {
                    p.remove(at);
                }
                _ => {
                    let b = p[at];
                    p.insert(at, b);
                }
            }
        }
        let out = decode(&copy);
        assert!(out.exchanges.len() <= flow::MAX_STREAMS, "run {run}");
    }
}

/// `msg` as the socket point captures a connection call by call when each call (write or read)
/// carries whole frames, here one frame a call, and calls are longer than what is copied of
/// one: each call's first and last `snaplen` bytes at their offsets (the socket point copies 16
/// snaplens of a call, then its last; one here, to make gaps), stitched as the flow table does.
fn captured_call_by_call(msg: &Owned, snaplen: usize) -> (Vec<u8>, Vec<(u64, Vec<u8>)>) {
    let mut segments = Vec::new();
    let mut pos = 0usize;
    let all = &msg.payload;
    // The preface is its own call.
    let mut calls = Vec::new();
    if all.starts_with(frame::PREFACE) {
        calls.push((0, frame::PREFACE.len()));
        pos = frame::PREFACE.len();
    }
    while let Some(h) = all.get(pos..).and_then(frame::FrameHeader::parse) {
        let end = (pos + frame::HEADER_LEN + h.length as usize).min(all.len());
        calls.push((pos, end));
        pos = end;
    }
    assert_eq!(pos, all.len(), "the capture holds whole frames");
    for (start, end) in calls {
        let head = (end - start).min(snaplen);
        segments.push(clovisor_proto::capture::v1::Segment {
            offset: start as u64,
            payload: all[start..start + head].to_vec().into(),
        });
        let tail = (end - start - head).min(snaplen);
        if tail > 0 {
            segments.push(clovisor_proto::capture::v1::Segment {
                offset: (end - tail) as u64,
                payload: all[end - tail..end].to_vec().into(),
            });
        }
    }
    let c = crate::decode::Captured::stitch(&[], &segments);
    let later = c
        .later()
        .iter()
        .map(|s| (s.offset, s.bytes.to_vec()))
        .collect();
    (c.first().to_vec(), later)
}

/// The multiplexed connection (three streams in one message, an 8000-byte response) captured
/// call by call with 256 bytes a call: no table falls out of step, every stream is decoded as
/// from the whole capture - while the first 256 bytes of each message lose step.
#[test]
fn call_by_call_capture_keeps_hpack_in_step_across_gaps() {
    let whole = messages("h2c_prior.pcapng", 8080, 65535);
    let truth = decode(&whole);
    assert!(truth.desyncs.is_empty(), "{:?}", truth.desyncs);
    let first_bytes = decode(&messages("h2c_prior.pcapng", 8080, 256));
    assert!(
        !first_bytes.desyncs.is_empty(),
        "the first 256 bytes of each message lose frames"
    );
    let mut out = Recorded::default();
    let mut flow = Http2.new_flow(&FlowInfo {
        probe_id: "p",
        flow_id: 1,
        key: &Default::default(),
        hint: ProtocolHint::Http2,
    });
    for m in &whole {
        let (first, later) = captured_call_by_call(m, 256);
        assert!(
            !later.is_empty() || first.len() == m.payload.len(),
            "the test must have gaps"
        );
        let spans: Vec<crate::decode::Span<'_>> = later
            .iter()
            .map(|(offset, bytes)| crate::decode::Span {
                offset: *offset,
                bytes,
            })
            .collect();
        let msg = Message {
            direction: m.direction,
            stats: m.stats,
            payload: &first,
            partial: false,
            later: &spans,
        };
        flow.on_message(&msg, &mut out);
    }
    flow.on_close(&mut out);
    assert_eq!(out.desyncs, Vec::<&str>::new());
    assert_eq!(out.errors, Vec::<&str>::new());
    assert_eq!(out.exchanges, truth.exchanges);
}

/// Stitching: touching and overlapping pieces make one run, in any order; a gap starts another.
#[test]
fn captured_pieces_stitch_into_runs() {
    let seg = |offset: u64, bytes: &[u8]| clovisor_proto::capture::v1::Segment {
        offset,
        payload: bytes.to_vec().into(),
    };
    let c = crate::decode::Captured::stitch(
        b"",
        &[
            seg(10, b"klm"),
            seg(0, b"abc"),
            seg(3, b"def"),
            seg(5, b"fgh"),
            seg(11, b"lmno"),
            seg(20, b""),
        ],
    );
    assert_eq!(c.first(), b"abcdefgh");
    let later: Vec<(u64, &[u8])> = c.later().iter().map(|s| (s.offset, s.bytes)).collect();
    assert_eq!(later, [(10, &b"klmno"[..])]);
    let m = Message {
        direction: Direction::ClientToServer,
        stats: MessageStats {
            bytes: 16,
            ..MessageStats::default()
        },
        payload: c.first(),
        partial: false,
        later: &c.later(),
    };
    assert_eq!(m.captured_at(2), b"cdefgh");
    assert_eq!(m.captured_at(8), b"");
    assert_eq!(m.captured_at(12), b"mno");
    assert_eq!(m.captured_at(15), b"");
    assert_eq!(m.captured_end(), 15);
    let none = crate::decode::Captured::stitch(b"xy", &[seg(4, b"z")]);
    assert_eq!(none.first(), b"xy");
}
