//! Kafka on a real capture (`collector/tests/data/kafka/`, made as its README says: kafka-python
//! against a Tansu broker) replayed into messages as the probe would send them and held to
//! tshark's `kafka` dissector; flexible versions on hand-assembled frames; cut, garbage and
//! mutated input.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use clovisor_proto::capture::v1::{record, FlowKey, ProtocolHint};
use clovisor_proto::session::v1::Kafka as KafkaFields;

use super::*;
use crate::decode::testing::{cut_message, decode_flow, message, Recorded, Rng};
use crate::decode::{Detection, Exchange, Fields, Message, MessageStats};
use crate::replay::pcap::{replay_file, ReplayConfig};

const KAFKA_PYTHON: &str = "kafka_python.pcapng";
const LIBRDKAFKA: &str = "librdkafka.pcapng";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/kafka")
        .join(name)
}

/// The connections of capture `name`: each its messages in order, whole (snaplen 64 KiB).
fn connections(name: &str) -> Vec<Vec<(Direction, Vec<u8>)>> {
    let cfg = ReplayConfig {
        traced_ports: [9092].into_iter().collect(),
        snaplen: 65_535,
        ..ReplayConfig::default()
    };
    let replay = replay_file(&fixture(name), &cfg).expect("the Kafka capture replays");
    let mut flows: BTreeMap<u64, Vec<(Direction, Vec<u8>)>> = BTreeMap::new();
    for r in replay.records {
        if let Some(record::Kind::Message(m)) = r.kind {
            let direction = Direction::from_wire(m.direction).expect("a direction");
            flows
                .entry(m.flow_id)
                .or_default()
                .push((direction, m.payload.to_vec()));
        }
    }
    flows.into_values().collect()
}

fn kafka(e: &Exchange) -> &KafkaFields {
    match &e.fields {
        Fields::Kafka(k) => k,
        other => panic!("expected Kafka fields, got {other:?}"),
    }
}

fn info(key: &FlowKey) -> FlowInfo<'_> {
    FlowInfo {
        probe_id: "p",
        flow_id: 1,
        key,
        hint: ProtocolHint::Unspecified,
    }
}

/// Every exchange of capture `name` at `snaplen`, with what the decoder counted.
fn decode_all(name: &str, snaplen: usize) -> (Vec<Exchange>, Recorded) {
    let mut all = Recorded::default();
    let mut exchanges = Vec::new();
    // One decoder for every connection, as in the collector: topic ids learnt on one serve all.
    let decoder = Kafka::default();
    for conn in connections(name) {
        let key = FlowKey {
            server_port: 9092,
            ..FlowKey::default()
        };
        let (direction, first) = &conn[0];
        assert_eq!(
            decoder.detect(&info(&key), &message(0, *direction, first)),
            Detection::Claim,
            "a kafka-python connection is claimed by its first request"
        );
        let r = decode_flow(&decoder, &conn, snaplen);
        exchanges.extend(r.exchanges);
        all.errors.extend(r.errors);
        all.desyncs.extend(r.desyncs);
        all.unpaired.extend(r.unpaired);
    }
    (exchanges, all)
}

/// (api key, version, correlation id, topic, error code) per request, as tshark dissects them:
/// the request's fields and its response's first error code, for the APIs whose error we read.
type Row = (u32, u32, i32, String, Option<i32>);

fn tshark(name: &str) -> Vec<Row> {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(fixture(name))
        .args(["-Y", "kafka", "-T", "fields", "-E", "separator=\t"])
        .args(["-E", "occurrence=f"])
        .args([
            "-e",
            "tcp.srcport",
            "-e",
            "kafka.request_key",
            "-e",
            "kafka.api_version",
        ])
        .args([
            "-e",
            "kafka.correlation_id",
            "-e",
            "kafka.topic_name",
            "-e",
            "kafka.error",
        ])
        .args(["-e", "tcp.dstport"])
        .output()
        .expect("tshark is required (Debian package `tshark`, scripts/install-deps.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut requests: BTreeMap<(String, i32), Row> = BTreeMap::new();
    let mut rows = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let correlation: i32 = f[3].parse().expect("correlation id");
        if f[0] != "9092" {
            let key = (f[0].to_owned(), correlation);
            let row = (
                f[1].parse().expect("api key"),
                f[2].parse().expect("api version"),
                correlation,
                f[4].to_owned(),
                None,
            );
            requests.insert(key, row);
        } else if let Some(mut row) = requests.remove(&(f[6].to_owned(), correlation)) {
            if matches!(row.0, 0 | 1 | 3 | 18 | 19) {
                row.4 = Some(f[5].parse().unwrap_or(0));
            }
            rows.push(row);
        }
    }
    rows.sort();
    rows
}

#[test]
fn a_real_session_decodes_as_tshark_dissects_it() {
    let want = tshark(KAFKA_PYTHON);
    assert!(want.len() >= 15, "tshark dissected the capture: {want:?}");
    let (exchanges, counted) = decode_all(KAFKA_PYTHON, 65_535);
    let mut got: Vec<Row> = exchanges
        .iter()
        .map(|e| {
            let k = kafka(e);
            assert!(!e.incomplete, "every request was answered: {e:?}");
            (
                k.api_key,
                k.api_version,
                k.correlation_id,
                k.topic.clone(),
                k.error_code,
            )
        })
        .collect();
    got.sort();
    assert_eq!(got, want, "left: ours, right: tshark");
    assert!(
        counted.errors.is_empty() && counted.desyncs.is_empty() && counted.unpaired.is_empty(),
        "{counted:?}"
    );
    let failed: Vec<&KafkaFields> = exchanges
        .iter()
        .map(kafka)
        .filter(|k| k.error_code.is_some_and(|c| c != 0))
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(
        (
            failed[0].api_key,
            failed[0].error_code,
            failed[0].topic.as_str()
        ),
        (19, Some(36), "orders"),
        "creating the topic again: TOPIC_ALREADY_EXISTS"
    );
    let produce = exchanges
        .iter()
        .map(kafka)
        .find(|k| k.api_key == 0)
        .expect("a Produce");
    assert_eq!(
        (
            produce.client_id.as_str(),
            produce.topic.as_str(),
            produce.topic_count
        ),
        ("clv-producer", "orders", Some(1))
    );
}

#[test]
fn cut_at_any_snaplen_the_headers_still_pair() {
    let whole = decode_all(KAFKA_PYTHON, 65_535).0;
    for snaplen in [1, 4, 8, 12, 20, 40, 64, 100, 200] {
        let (cut, _) = decode_all(KAFKA_PYTHON, snaplen);
        let ids = |v: &[Exchange]| {
            let mut ids: Vec<(u32, i32)> = v
                .iter()
                .map(|e| (kafka(e).api_key, kafka(e).correlation_id))
                .collect();
            ids.sort();
            ids
        };
        if snaplen >= 40 {
            // Every request header of this capture (size, API, version, correlation id, a client
            // id of at most 12 bytes) is within its message's first 40 bytes, one request per
            // message: every exchange is still found.
            assert_eq!(ids(&cut), ids(&whole), "snaplen {snaplen}");
        }
        for e in &cut {
            let k = kafka(e);
            if k.error_code.is_none() && matches!(k.api_key, 0 | 1 | 3 | 18 | 19) {
                assert!(
                    k.response_truncated || e.incomplete,
                    "snaplen {snaplen}: an error code not read is said to be cut: {e:?}"
                );
            }
        }
    }
}

#[test]
fn real_flexible_versions_from_librdkafka_pair_and_read_topics() {
    // tshark 4.0 dissects these versions' headers but not every body (Produce v10's topics):
    // the headers are held to it, the bodies to what the client did (README).
    let mut want: Vec<(u32, u32, i32)> = tshark(LIBRDKAFKA)
        .into_iter()
        .map(|(key, version, correlation, _, _)| (key, version, correlation))
        .collect();
    let (exchanges, counted) = decode_all(LIBRDKAFKA, 65_535);
    let mut got: Vec<(u32, u32, i32)> = exchanges
        .iter()
        .filter(|e| !e.incomplete)
        .map(|e| {
            let k = kafka(e);
            (k.api_key, k.api_version, k.correlation_id)
        })
        .collect();
    // One FindCoordinator was answered after the client had sent its FIN: the probe (and so the
    // replay) ends a flow at its first FIN, so that answer is not seen.
    let after_fin = (10, 2, 3);
    let at = want
        .iter()
        .position(|r| *r == after_fin)
        .expect("tshark pairs the answer sent after the client's FIN");
    want.remove(at);
    want.sort();
    got.sort();
    assert_eq!(got, want, "answered requests (left: ours, right: tshark)");
    assert!(
        counted.errors.is_empty() && counted.desyncs.is_empty(),
        "{counted:?}"
    );
    let find = |key: u32| -> Vec<&KafkaFields> {
        exchanges
            .iter()
            .map(kafka)
            .filter(|k| k.api_key == key)
            .collect()
    };
    let produce = find(0);
    assert_eq!(produce.len(), 1);
    assert_eq!(
        (
            produce[0].api_version,
            produce[0].client_id.as_str(),
            produce[0].topic.as_str(),
            produce[0].error_code
        ),
        (10, "rd-producer", "events", Some(0)),
        "a flexible Produce: compact topic name, tagged fields"
    );
    let fetch = find(1);
    assert!(
        !fetch.is_empty()
            && fetch
                .iter()
                .all(|k| k.api_version == 16 && k.topic == "events" && k.topic_count == Some(1)),
        "Fetch v13+ names its topic by id only: named from the Metadata v12 response: {fetch:?}"
    );
    // Each connection decoded on its own: the consumer's Fetch connection never saw a Metadata
    // response, so its topic id stays unnamed, and counted.
    let mut unnamed = 0;
    for conn in connections(LIBRDKAFKA) {
        let r = decode_flow(&Kafka::default(), &conn, 65_535);
        for e in &r.exchanges {
            let k = kafka(e);
            if k.api_key == 1 && !e.incomplete {
                assert_eq!(k.topic, "", "{k:?}");
                unnamed += 1;
            }
        }
        assert_eq!(
            r.errors
                .iter()
                .filter(|e| **e == "kafka_topic_id_unknown")
                .count(),
            r.exchanges
                .iter()
                .filter(|e| kafka(e).api_key == 1 && !e.incomplete)
                .count(),
            "every answered Fetch whose topic id is unknown is counted"
        );
    }
    assert!(
        unnamed > 0,
        "the Fetch connection has no Metadata of its own"
    );
    let creates: Vec<Option<i32>> = find(19).iter().map(|k| k.error_code).collect();
    assert_eq!(creates, [Some(0), Some(36)]);
    let metadata = find(3);
    assert!(
        metadata
            .iter()
            .any(|k| k.api_version == 12 && k.topic == "events"),
        "a flexible Metadata v12 names its topic after the topic id: {metadata:?}"
    );
    // The long-poll Fetch still waiting when the consumer closed, and that FindCoordinator:
    // incomplete, not paired with anything else.
    let mut incomplete: Vec<(u32, i32)> = exchanges
        .iter()
        .filter(|e| e.incomplete)
        .map(|e| (kafka(e).api_key, kafka(e).correlation_id))
        .collect();
    incomplete.sort();
    assert_eq!(incomplete, [(1, 6), (10, 3)]);
}

/// A flexible (v9) Produce request to `topic` and its response with `error`, as Kafka 3.x
/// clients send them: request header v2 (tagged fields), compact strings and arrays.
fn flexible_produce(correlation: i32, topic: &str, error: i16) -> (Vec<u8>, Vec<u8>) {
    let mut req = Vec::new();
    req.extend_from_slice(&0i16.to_be_bytes()); // Produce
    req.extend_from_slice(&9i16.to_be_bytes());
    req.extend_from_slice(&correlation.to_be_bytes());
    req.extend_from_slice(&(7i16).to_be_bytes());
    req.extend_from_slice(b"rdkafka");
    req.push(0); // header tagged fields
    req.push(0); // transactional_id: null
    req.extend_from_slice(&(-1i16).to_be_bytes()); // acks=all
    req.extend_from_slice(&30_000i32.to_be_bytes());
    req.push(2); // one topic
    req.push(u8::try_from(topic.len() + 1).expect("short topic"));
    req.extend_from_slice(topic.as_bytes());
    req.push(1); // no partitions
    req.push(0); // topic tagged fields
    req.push(0); // body tagged fields
    let mut resp = Vec::new();
    resp.extend_from_slice(&correlation.to_be_bytes());
    resp.push(0); // response header v1 tagged fields
    resp.push(2); // one topic
    resp.push(u8::try_from(topic.len() + 1).expect("short topic"));
    resp.extend_from_slice(topic.as_bytes());
    resp.push(2); // one partition
    resp.extend_from_slice(&0i32.to_be_bytes());
    resp.extend_from_slice(&error.to_be_bytes());
    resp.extend_from_slice(&(-1i64).to_be_bytes());
    resp.extend_from_slice(&(-1i64).to_be_bytes());
    resp.extend_from_slice(&(-1i64).to_be_bytes());
    resp.push(1); // no record errors
    resp.push(0); // error message: null
    resp.push(0); // partition tagged fields
    resp.push(0); // topic tagged fields
    resp.extend_from_slice(&0i32.to_be_bytes()); // throttle
    resp.push(0);
    let framed = |body: Vec<u8>| {
        let mut f = u32::try_from(body.len())
            .expect("small")
            .to_be_bytes()
            .to_vec();
        f.extend(body);
        f
    };
    (framed(req), framed(resp))
}

#[test]
fn flexible_versions_and_pipelined_requests_pair_by_correlation_id() {
    let (a, ra) = flexible_produce(7, "payments", 0);
    let (b, rb) = flexible_produce(8, "nosuchtopic", 3);
    let (c, _) = flexible_produce(9, "lost", 0);
    // Three requests pipelined in one message; the broker answers 7 and 8, never 9 (acks=0
    // would do that).
    let requests = [a, b, c].concat();
    let responses = [ra, rb].concat();
    let conn = vec![
        (Direction::ClientToServer, requests),
        (Direction::ServerToClient, responses),
    ];
    let key = FlowKey::default();
    assert_eq!(
        Kafka::default().detect(
            &info(&key),
            &message(0, Direction::ClientToServer, &conn[0].1)
        ),
        Detection::Claim
    );
    let r = decode_flow(&Kafka::default(), &conn, 65_535);
    let got: Vec<(i32, String, Option<i32>, bool, u32)> = r
        .exchanges
        .iter()
        .map(|e| {
            let k = kafka(e);
            (
                k.correlation_id,
                k.topic.clone(),
                k.error_code,
                e.incomplete,
                e.position,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (7, "payments".to_owned(), Some(0), false, 0),
            (8, "nosuchtopic".to_owned(), Some(3), false, 1),
            (9, "lost".to_owned(), None, true, 2),
        ]
    );
    assert_eq!(kafka(&r.exchanges[0]).client_id, "rdkafka");
}

#[test]
fn detection_wants_a_request_header_and_the_port_admits_unknown_keys() {
    let key = FlowKey::default();
    let on_9092 = FlowKey {
        server_port: 9092,
        ..FlowKey::default()
    };
    let no = |payload: &[u8]| {
        Kafka::default().detect(&info(&key), &message(0, Direction::ClientToServer, payload))
            == Detection::No
    };
    assert!(no(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert!(no(b"*1\r\n$4\r\nPING\r\n"));
    assert!(
        no(&[0, 0, 0, 8, 0, 3, 0, 0, 0, 0]),
        "too short for a header"
    );
    // A PostgreSQL startup packet (length, protocol 3.0, parameters) is no Kafka request.
    assert!(no(
        b"\x00\x00\x00\x29\x00\x03\x00\x00user\x00postgres\x00database\x00db\x00\x00"
    ));
    // API key 90 at version 0: unknown, claimed only on Kafka's port.
    // (Flexible, as every API added since Kafka 2.4 is: the header ends with tagged fields.)
    let odd = [0, 0, 0, 13, 0, 90, 0, 0, 0, 0, 0, 1, 0, 2, b'i', b'd', 0];
    assert!(no(&odd));
    assert_eq!(
        Kafka::default().detect(
            &info(&on_9092),
            &message(0, Direction::ClientToServer, &odd)
        ),
        Detection::Claim
    );
    let server_first = cut_message(0, Direction::ServerToClient, &odd, 100);
    assert_eq!(
        Kafka::default().detect(&info(&on_9092), &server_first),
        Detection::No
    );
}

#[test]
fn garbage_and_cuts_anywhere_never_panic() {
    let mut rng = Rng(0x5eed_cafe_f00d_1234);
    let real: Vec<Vec<(Direction, Vec<u8>)>> = [KAFKA_PYTHON, LIBRDKAFKA]
        .iter()
        .flat_map(|name| connections(name))
        .collect();
    let (flex, flex_resp) = flexible_produce(1, "t", 0);
    let mut samples: Vec<Vec<u8>> = real
        .iter()
        .flatten()
        .map(|(_, b)| b.clone())
        .chain([flex, flex_resp])
        .collect();
    for _ in 0..200 {
        let n = rng.below(64);
        samples.push((0..n).map(|_| rng.next_u64() as u8).collect());
    }
    let key = FlowKey {
        server_port: 9092,
        ..FlowKey::default()
    };
    for round in 0..3000 {
        let base = &samples[rng.below(samples.len())];
        let mut bytes = base.clone();
        for _ in 0..rng.below(6) {
            if !bytes.is_empty() {
                let i = rng.below(bytes.len());
                bytes[i] = rng.next_u64() as u8;
            }
        }
        let cut = rng.below(bytes.len() + 1);
        let direction = if round % 2 == 0 {
            Direction::ClientToServer
        } else {
            Direction::ServerToClient
        };
        let m = Message {
            direction,
            stats: MessageStats {
                bytes: bytes.len() as u64,
                ..MessageStats::default()
            },
            payload: &bytes[..cut],
            partial: false,
            later: &[],
        };
        let _ = Kafka::default().detect(&info(&key), &m);
        let mut flow = KafkaFlow::default();
        let mut out = Recorded::default();
        // A request, then this message either way, then a mutated response.
        let _ = flow.on_message(
            &message(0, Direction::ClientToServer, &samples[0]),
            &mut out,
        );
        let _ = flow.on_message(&m, &mut out);
        let _ = flow.on_message(&message(2, Direction::ServerToClient, &bytes), &mut out);
        flow.on_close(&mut out);
    }
}
